"""RQ: exclusive job functions, and a quorum leader lock for rq-scheduler.

```python
from quorumlock.integrations.rq import exclusive_job, Scheduler

NODES = ["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]

@exclusive_job(NODES, "report:{day}", ttl=30)          # in the module the workers import
def build_report(day):
    ...

queue.enqueue(build_report, "2024-05-01")             # as usual, as often as you like
```

**Exclusive jobs.**  While one worker (any host) runs ``build_report(day)``,
another ``build_report(day)`` does not start.  The lock is taken in the work
horse when the job starts and auto-extended while it runs (every ``ttl/3``);
a worker SIGKILLed mid-job frees the key within ``ttl``.  The key is a
``str.format`` template over the job's arguments, a callable, or by default
``rq:<module.function>:<digest of the arguments>``.

A duplicate that finds the key held (``on_busy``):

* ``"skip"`` (default): the job finishes without running the body; its
  result is ``skip_result``, ``job.meta["quorumlock"]`` is ``"skipped"`` (and
  ``job.meta["quorumlock_key"]`` the key), one INFO line goes to the
  ``quorumlock.rq`` logger;
* ``"fail"``: the job raises ``JobSkipped`` and lands in the
  ``FailedJobRegistry``; enqueue it with ``retry=rq.Retry(max=..., interval=...)``
  and RQ re-schedules it: RQ's own way to defer a job;
* ``wait=<seconds>`` (or ``True``): wait for the running one first (the
  worker is busy meanwhile), then ``on_busy`` if still held.

A lost lease (renewals failed to reach a majority before the guard moment):
with ``interrupt=True`` (default) ``LockLost`` is raised inside the job
function, in the thread that runs it, at its next Python instruction (a
blocking C call such as a long ``time.sleep`` finishes first); in any case
the job ends with ``LockLost`` (failed, retried if it has a ``Retry``).

Each process makes its own ``LockManager`` on first use (RQ forks a work
horse per job; a manager is never shared across a fork).  ``nodes`` is the
node URLs (``LockManager`` options as keywords: ``manager_options``) or a
callable returning a manager.

**One scheduler at a time.**  rq-scheduler (``rqscheduler``) takes a
single-node ``SET NX`` lock for each pass.  ``Scheduler`` here is its
subclass whose passes run only on the leader of a ``quorumlock.LeaderElection``
(key ``leader:rq-scheduler:<name>``): run one in every process that may
schedule; exactly one moves due jobs to their queues; when it dies another
takes over within ``leader_ttl``.  A leader re-checks its lease before each
job it moves, so a demoted leader stops in the middle of a pass.

RQ's built-in scheduler (``rq worker --with-scheduler``) keeps its own
single-node lock per queue; use rq-scheduler with this class when the
at-most-one-scheduler property must survive the loss of a Redis node.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Optional, Sequence

from ..errors import LockLost
from ..jobs import JobSkipped, current_lock, exclusive
from ._shared import ProcessManagers, args_digest, raise_in_thread

__all__ = ["exclusive_job", "Scheduler", "default_key", "JobSkipped"]

log = logging.getLogger("quorumlock.rq")

_ON_BUSY = ("skip", "fail")


def default_key(func_name: str, args: Any, kwargs: Any) -> str:
    """``rq:<module.function>:<digest of the arguments>``."""
    return f"rq:{func_name}:{args_digest(args, kwargs)}"


def _current_rq_job() -> Any:
    try:
        from rq import get_current_job
    except ImportError:  # pragma: no cover - rq is what calls us
        return None
    return get_current_job()


def exclusive_job(
    nodes: Any,
    key: Any = None,
    ttl: float = 30.0,
    *,
    on_busy: str = "skip",
    wait: Any = False,
    skip_result: Any = None,
    max_hold: Optional[float] = None,
    interrupt: bool = True,
    manager_options: Optional[Dict[str, Any]] = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for RQ job functions: see the module docstring.

    ``nodes``: node URLs, or a callable returning a blocking ``LockManager``;
    ``key``: template/callable (default ``default_key``); ``ttl``: the lease
    (auto-extended, the bound on how long a killed worker keeps the key);
    ``on_busy``: ``"skip"`` or ``"fail"``; ``wait``: seconds (or True) to wait
    for a running duplicate first; ``max_hold``: longest auto-extension."""
    if on_busy not in _ON_BUSY:
        raise ValueError(f"on_busy must be one of {_ON_BUSY}, got {on_busy!r}")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    managers = ProcessManagers(nodes, manager_options)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        func_name = f"{fn.__module__}.{fn.__qualname__}"
        if key is None:
            key_spec: Any = lambda *a, **kw: default_key(func_name, a, kw)  # noqa: E731
        else:
            key_spec = key
        threads: Dict[int, int] = {}
        wrapped: Dict[int, Callable[..., Any]] = {}   # per manager (per process)
        stats: Dict[str, int] = {"run": 0, "skipped": 0, "lost": 0}

        def on_skip(k: Any) -> None:
            stats["skipped"] += 1
            job = _current_rq_job()
            if job is not None:
                job.meta["quorumlock"] = "skipped"
                job.meta["quorumlock_key"] = str(k)
                try:
                    job.save_meta()
                except Exception:  # pragma: no cover - best effort
                    log.debug("quorumlock: could not save the meta of job %s", job.id, exc_info=True)
            log.info("quorumlock: skipped job %s%s: %r is held by another run",
                     func_name, "" if job is None else f" ({job.id})", k)

        mutex = threading.Lock()

        def on_lost(lock: Any, reason: Any) -> None:
            stats["lost"] += 1
            log.error("quorumlock: job %s lost its lock %r: %s", func_name, lock.key, reason)
            # Under the mutex: once the body has ended, the thread runs RQ's
            # code and must not get the exception.
            with mutex:
                tid = threads.get(id(lock))
                if interrupt and tid is not None:
                    raise_in_thread(tid, LockLost)

        @functools.wraps(fn)     # the key template binds against fn's signature
        def body(*args: Any, **kwargs: Any) -> Any:
            lock = current_lock()
            with mutex:
                threads[id(lock)] = threading.get_ident()
            stats["run"] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with mutex:
                    threads.pop(id(lock), None)

        def runner() -> Callable[..., Any]:
            locks = managers.get()
            w = wrapped.get(id(locks))
            if w is None:
                w = exclusive(locks, key_spec, ttl, wait=wait, max_hold=max_hold, skip_result=skip_result,
                              raise_on_skip=on_busy == "fail", on_skip=on_skip, on_lost=on_lost)(body)
                wrapped.clear()
                wrapped[id(locks)] = w
            return w

        @functools.wraps(fn)
        def job_function(*args: Any, **kwargs: Any) -> Any:
            return runner()(*args, **kwargs)

        job_function.stats = stats  # type: ignore[attr-defined]
        job_function.managers = managers  # type: ignore[attr-defined]
        return job_function

    return decorate


try:
    from rq_scheduler import Scheduler as _RQScheduler
except ImportError:  # pragma: no cover - the rq extra installs it
    _RQScheduler = object  # type: ignore[assignment,misc]


class Scheduler(_RQScheduler):  # type: ignore[misc,valid-type]
    """rq-scheduler's ``Scheduler`` whose passes run only on the elected
    leader among all the scheduler processes that share the lock nodes.

    Extra keyword arguments: ``nodes`` (URLs, or a callable returning a
    blocking ``LockManager``), ``leader_ttl`` (failover bound, seconds;
    default 10), ``election_name`` (default ``"rq-scheduler:<lock key>"``),
    ``manager_options``.  ``leader`` is the ``LeaderElection``."""

    def __init__(self, *args: Any, nodes: Any = None, leader_ttl: float = 10.0,
                 election_name: Optional[str] = None, manager_options: Optional[Dict[str, Any]] = None,
                 **kwargs: Any) -> None:
        if _RQScheduler is object:  # pragma: no cover
            raise ImportError("rq-scheduler is not installed (pip install quorumlock[rq])")
        if nodes is None:
            raise TypeError("Scheduler needs nodes= (lock node URLs or a LockManager factory)")
        super().__init__(*args, **kwargs)
        self._managers = ProcessManagers(nodes, manager_options)
        self.leader_ttl = leader_ttl
        self.election_name = election_name or f"rq-scheduler:{self.scheduler_lock_key}"
        self.leader: Any = None
        self.moved = 0          # jobs this process moved to a queue

    def _election(self) -> Any:
        if self.leader is None:
            from ..leader import LeaderElection

            self.leader = LeaderElection(self._managers.get(), self.election_name, ttl=self.leader_ttl,
                                         identity=f"{self.name}")
            self.leader.start()
        return self.leader

    def acquire_lock(self) -> bool:
        """True while this process is the leader (no I/O: the election thread
        holds and renews the lease)."""
        self._lock_acquired = self._election().is_leader
        return self._lock_acquired

    def remove_lock(self) -> None:
        """Leadership is kept across passes; it ends with ``stop()`` (or the
        end of ``run()``)."""
        self._lock_acquired = False

    def enqueue_jobs(self) -> Sequence[Any]:
        jobs = list(self.get_jobs_to_queue())
        done = []
        for job in jobs:
            if not self._election().is_leader:
                self.log.warning("quorumlock: lost the scheduler lease in a pass; %d job(s) left to the next "
                                 "leader", len(jobs) - len(done))
                break
            self.enqueue_job(job)
            self.moved += 1
            done.append(job)
        return done

    def stop(self) -> None:
        """Step down and release the lease (another scheduler takes over)."""
        if self.leader is not None:
            self.leader.stop()
            self.leader = None

    def run(self, burst: bool = False) -> None:
        if burst:
            # One pass: wait for the election to settle (a leader may exist elsewhere).
            self._election().wait_elected(self.leader_ttl)
        try:
            super().run(burst=burst)
        finally:
            self.stop()
            self._managers.close()
