"""Leader election over a quorum lock.

```python
election = quorumlock.LeaderElection(locks, "scheduler", ttl=10,
                                     on_elected=start_work, on_demoted=stop_work)
election.start()          # a background thread campaigns and holds the lease
...
if election.is_leader:    # cheap: no I/O
    ...
election.stop()           # steps down and releases at once: clean hand-over
```

``quorumlock.AsyncLeaderElection`` is the asyncio twin (callbacks may be
coroutine functions; ``async with`` starts and stops it).

``ttl`` is the failover bound: when the leader dies, another candidate is
leader within ``ttl`` seconds.  To keep that promise the lease on the nodes
is ``lease_fraction * ttl`` (0.6 by default), renewed every third of that,
and candidates try again every ``retry_fraction * ttl`` (0.2, jittered
between half and all of it), or at once on a release or expiry notification
when the manager has ``notify=True``.  Worst case: the leader died just after
a renewal (0.6 ttl until the key expires) plus one retry interval (0.2 ttl).

Exactly one leader at a time: a leader steps down (``is_leader`` turns False,
then ``on_demoted(reason)`` runs) at the guard moment, a safety margin before
its lease's validity ends, and ``is_leader`` is also computed against the
validity, so it turns False in time even if the renewal thread is held up.
The next leader can only be elected once the key expired or was released on a
majority, after that moment.  ``stop()`` calls ``on_demoted("stopped")``
*before* the release, so the work of the old leader ends before a new one can
start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import threading
from typing import Any, Callable, Optional

from . import _faces
from .errors import LockTimeout

__all__ = ["LeaderElection", "AsyncLeaderElection"]

log = logging.getLogger("quorumlock.leader")
from ._clock import now_ns as _now_ns  # the lease clock (CLOCK_BOOTTIME)


def _check(ttl: Any, lease_fraction: Any, retry_fraction: Any) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    for name, v in (("lease_fraction", lease_fraction), ("retry_fraction", retry_fraction)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"{name} must be in (0, 1), got {v!r}")
    if lease_fraction + retry_fraction > 1.0:
        raise ValueError("lease_fraction + retry_fraction must be <= 1 (the failover bound is ttl)")


class _Base:
    def __init__(self, locks: Any, name: str, ttl: float, *, on_elected: Optional[Callable[..., Any]],
                 on_demoted: Optional[Callable[..., Any]], lease_fraction: float, retry_fraction: float,
                 margin: Optional[float], key_prefix: str, identity: Optional[str]) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        _check(ttl, lease_fraction, retry_fraction)
        self.locks = locks
        self.name = name
        self.key = key_prefix + name
        self.ttl = float(ttl)
        self.lease_ttl = self.ttl * lease_fraction
        self.retry_interval = self.ttl * retry_fraction
        self.margin = margin
        self.on_elected = on_elected
        self.on_demoted = on_demoted
        self.identity = identity or f"{socket.gethostname()}:{os.getpid()}"
        self.terms = 0               # how many times this candidate was elected
        self._lock: Any = None
        self._lease: Any = None

    @property
    def is_leader(self) -> bool:
        """True while this candidate holds the lease, with its safety margin
        (no I/O: the monotonic clock against the lease's validity)."""
        lease = self._lease
        lock = self._lock
        if lease is None or lock is None or lease.reason is not None or lock.released:
            return False
        return _now_ns() < lock.deadline_ns - lease.margin_ns

    @property
    def lock(self) -> Any:
        """The held ``Lock`` while leader (for fencing tokens), else None."""
        return self._lock if self.is_leader else None

    @property
    def lease_until_ns(self) -> Optional[int]:
        """Monotonic ns at which this leader steps down unless renewed."""
        lease, lock = self._lease, self._lock
        if lease is None or lock is None:
            return None
        return lock.deadline_ns - lease.margin_ns

    def _jitter(self) -> float:
        return random.uniform(0.5, 1.0) * self.retry_interval


class LeaderElection(_Base):
    """Leader election for threads and plain programs (blocking manager).
    Callbacks run in the election thread: ``on_elected()`` and
    ``on_demoted(reason)``."""

    def __init__(self, locks: Any, name: str, ttl: float = 10.0, *,
                 on_elected: Optional[Callable[[], Any]] = None,
                 on_demoted: Optional[Callable[[str], Any]] = None,
                 lease_fraction: float = 0.6, retry_fraction: float = 0.2, margin: Optional[float] = None,
                 key_prefix: str = "leader:", identity: Optional[str] = None) -> None:
        if _faces.is_async(locks, "LeaderElection"):
            raise TypeError("LeaderElection needs a blocking quorumlock.LockManager; "
                            "use AsyncLeaderElection with quorumlock.aio")
        super().__init__(locks, name, ttl, on_elected=on_elected, on_demoted=on_demoted,
                         lease_fraction=lease_fraction, retry_fraction=retry_fraction, margin=margin,
                         key_prefix=key_prefix, identity=identity)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._elected = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "LeaderElection":
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"quorumlock-leader-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = 10.0) -> None:
        """Stop campaigning; a leader steps down (``on_demoted("stopped")``)
        and releases the lease so that another candidate takes over at once."""
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def wait_elected(self, timeout: Optional[float] = None) -> bool:
        """Block until this candidate is leader (True) or ``timeout`` passes."""
        return self._elected.wait(timeout) and self.is_leader

    def __enter__(self) -> "LeaderElection":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _campaign(self) -> Any:
        locks = self.locks
        if locks.notify:
            try:
                return locks.acquire(self.key, self.lease_ttl, timeout=self._jitter(), wait="notify")
            except LockTimeout:
                return None
        lock = locks.try_acquire(self.key, self.lease_ttl)
        if lock is None:
            self._stop.wait(self._jitter())
        return lock

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                lock = self._campaign()
            except Exception as exc:  # nodes down, manager closed ...
                log.warning("%s: campaign for %r failed: %r", self.identity, self.name, exc)
                if self._stop.wait(self._jitter()):
                    break
                continue
            if lock is None:
                continue
            if self._stop.is_set():
                self.locks.release(lock)
                break
            self._wake.clear()
            self._lock = lock
            self._lease = self.locks.guard(lock, auto_extend=True, margin=self.margin,
                                           on_lost=lambda lk, why: self._wake.set())._state
            self.terms += 1
            self._elected.set()
            log.info("%s elected leader of %r (term %d)", self.identity, self.name, self.terms)
            _call(self.on_elected)
            # Hold until the lease is lost or we are asked to stop; also wake
            # at the guard moment in case the renewal thread is held up.
            while not self._stop.is_set() and self.is_leader:
                left = (lock.deadline_ns - self._lease.margin_ns - _now_ns()) / 1e9
                self._wake.wait(max(0.0, min(left, 1.0)))
                self._wake.clear()
            reason = "stopped" if self._stop.is_set() and self._lease.reason is None else (
                self._lease.reason or "validity ran out")
            self._elected.clear()
            self._lease = None
            log.info("%s stepped down as leader of %r: %s", self.identity, self.name, reason)
            _call(self.on_demoted, reason)
            self._lock = None
            # Release after on_demoted: the old leader's work has ended before
            # a successor can be elected.
            try:
                self.locks.release(lock)
            except Exception:  # pragma: no cover - best effort
                pass


def _call(cb: Optional[Callable[..., Any]], *args: Any) -> None:
    if cb is None:
        return
    try:
        cb(*args)
    except Exception:
        log.exception("leader election callback %r raised", cb)


class AsyncLeaderElection(_Base):
    """The asyncio twin: ``start()`` makes a task on the running loop;
    ``await stop()``.  Callbacks may be plain or coroutine functions (awaited
    in the election task)."""

    def __init__(self, locks: Any, name: str, ttl: float = 10.0, *,
                 on_elected: Optional[Callable[[], Any]] = None,
                 on_demoted: Optional[Callable[[str], Any]] = None,
                 lease_fraction: float = 0.6, retry_fraction: float = 0.2, margin: Optional[float] = None,
                 key_prefix: str = "leader:", identity: Optional[str] = None) -> None:
        if not _faces.is_async(locks, "AsyncLeaderElection"):
            raise TypeError("AsyncLeaderElection needs a quorumlock.aio.LockManager")
        super().__init__(locks, name, ttl, on_elected=on_elected, on_demoted=on_demoted,
                         lease_fraction=lease_fraction, retry_fraction=retry_fraction, margin=margin,
                         key_prefix=key_prefix, identity=identity)
        self._task: Optional[asyncio.Task] = None
        self._stopping = False
        self._wake: Optional[asyncio.Event] = None
        self._elected: Optional[asyncio.Event] = None

    def start(self) -> "AsyncLeaderElection":
        if self._task is not None and not self._task.done():
            return self
        self._stopping = False
        self._wake = asyncio.Event()
        self._elected = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task

    async def wait_elected(self, timeout: Optional[float] = None) -> bool:
        assert self._elected is not None, "start() first"
        try:
            await asyncio.wait_for(self._elected.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return self.is_leader

    async def __aenter__(self) -> "AsyncLeaderElection":
        return self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _campaign(self) -> Any:
        locks = self.locks
        if locks.notify:
            try:
                return await locks.acquire(self.key, self.lease_ttl, timeout=self._jitter(), wait="notify")
            except LockTimeout:
                return None
        lock = await locks.try_acquire(self.key, self.lease_ttl)
        if lock is None:
            await self._sleep(self._jitter())
        return lock

    async def _run(self) -> None:
        assert self._wake is not None and self._elected is not None
        while not self._stopping:
            try:
                lock = await self._campaign()
            except Exception as exc:
                log.warning("%s: campaign for %r failed: %r", self.identity, self.name, exc)
                await self._sleep(self._jitter())
                continue
            if lock is None:
                continue
            if self._stopping:
                await self.locks.release(lock)
                break
            self._wake.clear()
            wake = self._wake
            self._lock = lock
            self._lease = self.locks.guard(lock, auto_extend=True, margin=self.margin,
                                           on_lost=lambda lk, why: wake.set())._state
            self.terms += 1
            self._elected.set()
            log.info("%s elected leader of %r (term %d)", self.identity, self.name, self.terms)
            await _acall(self.on_elected)
            while not self._stopping and self.is_leader:
                left = (lock.deadline_ns - self._lease.margin_ns - _now_ns()) / 1e9
                await self._sleep(max(0.0, min(left, 1.0)))
            reason = "stopped" if self._stopping and self._lease.reason is None else (
                self._lease.reason or "validity ran out")
            self._elected.clear()
            self._lease = None
            log.info("%s stepped down as leader of %r: %s", self.identity, self.name, reason)
            await _acall(self.on_demoted, reason)
            self._lock = None
            await asyncio.shield(self.locks.release(lock))


async def _acall(cb: Optional[Callable[..., Any]], *args: Any) -> None:
    if cb is None:
        return
    try:
        r = cb(*args)
        if r is not None and hasattr(r, "__await__"):
            await r
    except Exception:
        log.exception("leader election callback %r raised", cb)
