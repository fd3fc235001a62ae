"""Celery beat with RedBeat: one beat fires each tick, under a quorum lease.

```python
from celery import Celery
from quorumlock.integrations.celery import configure

app = Celery("jobs", broker="redis://127.0.0.1:6379/0")
app.conf.redbeat_redis_url = "redis://127.0.0.1:6379/1"     # RedBeat's schedule store, as usual
configure(app, ["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"])
app.conf.beat_scheduler = "quorumlock.integrations.redbeat:RedBeatScheduler"
app.conf.quorumlock_beat_ttl = 10                          # failover bound, seconds
```

and run ``celery -A jobs beat`` on as many hosts as you like.

celery-redbeat keeps one beat active with a redis-py ``Lock`` on its single
schedule node, taken at start-up and extended every tick.  This scheduler
switches that lock off (``lock_key = None``) and uses instead:

* a ``quorumlock.LeaderElection`` (key ``leader:redbeat:<redbeat key
  prefix>``, ``ttl`` = ``quorumlock_beat_ttl``, default 10 s): only the leader
  ticks; the others wake every ``0.1-0.2 * ttl`` and check again.  When the
  leader dies another beat is leader within ``ttl``; a clean shutdown hands
  over at once.
* a **tick claim** before each send: ``redbeat:tick:<entry>:<last run µs>``
  (``quorumlock.jobs.claim``), left to expire after ``quorumlock_beat_tick_ttl``
  seconds (default 60).  The tick an entry is due for is named by the
  ``last_run_at`` that RedBeat stored for it, the same in every beat; a beat
  that lost its lease while paused (after its leader check) cannot send the
  same tick again, nor can one that read an old ``last_run_at``.

``leader``, ``fired`` and ``skipped`` (ticks claimed elsewhere) are there to
look at; ``is_leader`` is False until the election has settled.

Node URLs and ``LockManager`` options come from ``app.conf.quorumlock_nodes`` /
``quorumlock_options`` (``quorumlock.integrations.celery.configure``).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from redbeat import RedBeatScheduler as _RedBeatScheduler

from ..jobs import claim
from ._shared import ProcessManagers

__all__ = ["RedBeatScheduler", "tick_key"]

log = logging.getLogger("quorumlock.redbeat")


def tick_key(entry: Any) -> str:
    """``redbeat:tick:<entry name>:<last_run_at in µs, or "first">``."""
    last = entry.last_run_at
    mark = "first" if last is None else str(int(last.timestamp() * 1_000_000))
    return f"redbeat:tick:{entry.name}:{mark}"


class RedBeatScheduler(_RedBeatScheduler):
    """RedBeat's scheduler with a quorum leader lease instead of its
    single-node lock, and a quorum claim per tick: see the module docstring."""

    def __init__(self, app: Any, lock_key: Optional[str] = None, lock_timeout: Optional[float] = None,
                 **kwargs: Any) -> None:
        super().__init__(app, lock_key=lock_key, lock_timeout=lock_timeout, **kwargs)
        # RedBeat's own lock off: its beat_init handler returns at once, tick()
        # extends nothing.
        self.lock_key = None
        conf = app.conf
        nodes = conf.get("quorumlock_nodes")
        if not nodes:
            raise RuntimeError("no lock nodes: call quorumlock.integrations.celery.configure(app, nodes) "
                               "or set app.conf.quorumlock_nodes")
        self._managers = ProcessManagers(nodes, conf.get("quorumlock_options") or {})
        self.leader_ttl = float(conf.get("quorumlock_beat_ttl") or 10.0)
        self.tick_ttl = float(conf.get("quorumlock_beat_tick_ttl") or max(60.0, 2 * self.leader_ttl))
        self.leader: Any = None
        self.fired = 0
        self.skipped = 0

    @property
    def locks(self) -> Any:
        return self._managers.get()

    def _election(self) -> Any:
        if self.leader is None:
            from ..leader import LeaderElection

            name = f"redbeat:{self.app.redbeat_conf.key_prefix.rstrip(':')}"
            self.leader = LeaderElection(self.locks, name, ttl=self.leader_ttl)
            self.leader.start()
        return self.leader

    @property
    def is_leader(self) -> bool:
        return self.leader is not None and self.leader.is_leader

    def tick(self, min: Any = min, **kwargs: Any) -> float:
        election = self._election()
        if not election.is_leader:
            # Not the leader: check again soon (the election thread campaigns).
            return min(election.retry_interval, self.max_interval)
        return super().tick(min=min, **kwargs)

    def maybe_due(self, entry: Any, **kwargs: Any) -> Any:
        is_due, next_time_to_run = entry.is_due()
        if not is_due:
            return next_time_to_run
        if not self.is_leader:
            log.warning("beat lease lost before %s was sent; leaving it to the next leader", entry.name)
            return min(next_time_to_run, self.leader_ttl)
        key = tick_key(entry)
        lock = claim(self.locks, key, self.tick_ttl)
        if lock is None:
            self.skipped += 1
            log.info("tick %s of %s was already sent by another beat", key, entry.name)
            return next_time_to_run
        # The claim is kept (never released): it expires after tick_ttl.
        self.fired += 1
        return super().maybe_due(entry, **kwargs)

    def close(self) -> None:
        if self.leader is not None:
            self.leader.stop()
            self.leader = None
        try:
            super().close()
        finally:
            self._managers.close()

    @property
    def info(self) -> str:
        lines = [super().info, f"       . quorum lease -> leader:redbeat:{self.app.redbeat_conf.key_prefix} "
                               f"({self.leader_ttl:g}s failover)"]
        return "\n".join(lines)
