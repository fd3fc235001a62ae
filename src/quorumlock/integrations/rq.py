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
a worker SIGKILLed mid-job frees the key within ``ttl``.  ``limit=k`` allows
up to ``k`` concurrent runs per key instead of one (a quorum semaphore of
``k`` permits, ``quorumlock.semaphore``; a duplicate is busy when all ``k``
are held; lost leases as below, per permit).  The key is a
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

**One scheduler at a time, RQ's own.**  ``rq worker --with-scheduler`` forks
a scheduler process that moves due jobs (``enqueue_at`` / ``enqueue_in``) to
their queues under a single-node lock per queue.  ``Worker`` here starts
``RQScheduler`` instead, which holds a ``LeaderElection`` per queue
(``leader:rq-scheduler:<queue>``): subclass ``Worker`` with
``quorumlock_nodes = [...]`` and run ``rq worker --with-scheduler -w
mymodule.MyWorker`` everywhere.  Only the leader of a queue moves its jobs; it
re-checks its lease before each queue's move, and a clean stop hands over at
once.

**rq-scheduler.**  rq-scheduler (``rqscheduler``) takes a
single-node ``SET NX`` lock for each pass.  ``Scheduler`` here is its
subclass whose passes run only on the leader of a ``quorumlock.LeaderElection``
(key ``leader:rq-scheduler:<name>``): run one in every process that may
schedule; exactly one moves due jobs to their queues; when it dies another
takes over within ``leader_ttl``.  A leader re-checks its lease before each
job it moves, so a demoted leader stops in the middle of a pass.

"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import datetime
from typing import Any, Callable, Dict, Optional, Sequence

from ..errors import LockLost
from ..jobs import JobSkipped, current_lock, exclusive
from ._shared import ProcessManagers, args_digest, raise_in_thread

__all__ = ["exclusive_job", "Scheduler", "RQScheduler", "Worker", "default_key", "JobSkipped"]

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
    limit: Optional[int] = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for RQ job functions: see the module docstring.

    ``nodes``: node URLs, or a callable returning a blocking ``LockManager``;
    ``key``: template/callable (default ``default_key``); ``ttl``: the lease
    (auto-extended, the bound on how long a killed worker keeps the key);
    ``on_busy``: ``"skip"`` or ``"fail"``; ``wait``: seconds (or True) to wait
    for a running duplicate first; ``max_hold``: longest auto-extension;
    ``limit=k``: at most ``k`` runs at once per key (a quorum semaphore of
    ``k`` permits) instead of one."""
    if limit is not None:
        from ..semaphore import check_permits

        limit = check_permits(limit, "limit")
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
                    log.debug("could not save the meta of job %s", job.id, exc_info=True)
            log.info("skipped job %s%s: %r is held by another run",
                     func_name, "" if job is None else f" ({job.id})", k)

        mutex = threading.Lock()

        def on_lost(lock: Any, reason: Any) -> None:
            stats["lost"] += 1
            log.error("job %s lost its lock %r: %s", func_name, lock.key, reason)
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
                              raise_on_skip=on_busy == "fail", on_skip=on_skip, on_lost=on_lost,
                              limit=limit)(body)
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
                self.log.warning("lost the scheduler lease in a pass; %d job(s) left to the next "
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


# -- RQ's built-in scheduler (rq worker --with-scheduler) ------------------------

try:
    from rq import Worker as _RQWorker
    from rq.job import Job
    from rq.queue import Queue
    from rq.scheduler import RQScheduler as _RQBuiltinScheduler
    from rq.utils import current_timestamp, now, utcformat
except ImportError:  # pragma: no cover - the rq extra installs it
    _RQWorker = _RQBuiltinScheduler = object  # type: ignore[assignment,misc]


class RQScheduler(_RQBuiltinScheduler):  # type: ignore[misc,valid-type]
    """RQ's built-in scheduler (the process ``rq worker --with-scheduler``
    forks) with one ``LeaderElection`` per queue (``leader:rq-scheduler:<queue>``)
    in place of its single-node lock per queue: only the leader of a queue
    moves that queue's due jobs.  The scheduler process campaigns by itself;
    ``Worker`` below is the worker class that starts it.

    Extra keyword arguments: ``nodes`` (URLs, or a callable returning a
    blocking ``LockManager``), ``leader_ttl`` (failover bound, default 10 s),
    ``manager_options``."""

    def __init__(self, queues: Any, connection: Any, *, nodes: Any = None, leader_ttl: float = 10.0,
                 manager_options: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        if _RQBuiltinScheduler is object:  # pragma: no cover
            raise ImportError("rq is not installed (pip install quorumlock[rq])")
        if nodes is None:
            raise TypeError("RQScheduler needs nodes= (lock node URLs or a LockManager factory)")
        super().__init__(queues, connection, **kwargs)
        self._managers = ProcessManagers(nodes, manager_options)
        self.leader_ttl = leader_ttl
        self._elections: Dict[str, Any] = {}
        self.moved = 0

    def _elect(self) -> Dict[str, Any]:
        if not self._elections:
            from ..leader import LeaderElection

            locks = self._managers.get()
            for name in sorted(self._queue_names):
                self._elections[name] = LeaderElection(locks, f"rq-scheduler:{name}", ttl=self.leader_ttl,
                                                       identity=self.name).start()
        return self._elections

    def acquire_locks(self, auto_start: bool = False) -> set:
        """The queues this process leads.  In the worker (no election of its
        own): start the scheduler process if it is not running, which then
        campaigns for every queue."""
        if not self._elections and auto_start:
            if not self._process or not self._process.is_alive():
                self.start()
            return set()
        led = {q for q, e in self._elect().items() if e.is_leader}
        if led != self._acquired_locks:
            if led - self._acquired_locks:
                self.log.info("scheduler %s leads %s", self.name, ", ".join(sorted(led)))
            self._scheduled_job_registries = []
        self._acquired_locks = led
        self.lock_acquisition_time = datetime.now()
        return led

    def _hash_ttl(self) -> int:
        # RQ's own expiry of the metadata hash, whole seconds (the interval
        # may be a fraction of a second here).
        return int(math.ceil(self.interval)) + 60

    def save(self, pipeline: Any = None) -> None:
        connection = pipeline if pipeline is not None else self.connection.pipeline()
        connection.hset(self.key, mapping=self.to_dict())
        connection.expire(self.key, self._hash_ttl())
        if pipeline is None:
            connection.execute()

    def heartbeat(self) -> None:
        """Refresh the scheduler's metadata hash; leadership is the
        elections' (renewed by their threads)."""
        self.last_heartbeat = now()
        with self.connection.pipeline() as pipe:
            pipe.hset(self.key, "last_heartbeat", utcformat(self.last_heartbeat))
            pipe.expire(self.key, self._hash_ttl())
            pipe.execute()
        self.acquire_locks()

    def enqueue_scheduled_jobs(self) -> None:
        self._status = self.Status.WORKING
        if not self._scheduled_job_registries and self._acquired_locks:
            self.prepare_registries()
        for registry in self._scheduled_job_registries:
            election = self._elections.get(registry.name)
            if election is None or not election.is_leader:
                continue        # demoted since the registries were prepared
            job_ids = registry.get_jobs_to_schedule(current_timestamp())
            if not job_ids:
                continue
            queue = Queue(registry.name, connection=self.connection, serializer=self.serializer)
            with self.connection.pipeline() as pipeline:
                jobs = Job.fetch_many(job_ids, connection=self.connection, serializer=self.serializer)
                for job in jobs:
                    if job is not None:
                        queue._enqueue_job(job, pipeline=pipeline, at_front=job.should_enqueue_at_front())
                for job_id in job_ids:
                    registry.remove(job_id, pipeline=pipeline)
                if not election.is_leader:
                    self.log.warning("lost the lease of %s in a pass; left to the next leader",
                                     registry.name)
                    continue
                pipeline.execute()
                self.moved += len(job_ids)
        self._status = self.Status.STARTED

    def release_locks(self) -> None:
        """Step down everywhere (another scheduler takes over at once)."""
        elections, self._elections = self._elections, {}
        for e in elections.values():
            e.stop()
        self._acquired_locks = set()

    def work(self) -> None:
        self._install_signal_handlers()
        self.register_birth()
        self._elect()
        try:
            while not self._stop_requested:
                self.heartbeat()
                self.enqueue_scheduled_jobs()
                time.sleep(self.interval)
        finally:
            self.stop()
            self._managers.close()


class Worker(_RQWorker):  # type: ignore[misc,valid-type]
    """An RQ worker whose ``--with-scheduler`` process is ``RQScheduler``.
    Subclass it with the nodes and use it as the worker class::

        class MyWorker(quorumlock.integrations.rq.Worker):
            quorumlock_nodes = ["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]

        rq worker --with-scheduler -w mymodule.MyWorker
    """

    #: Lock node URLs (or a callable returning a blocking LockManager).
    quorumlock_nodes: Any = None
    #: The scheduler's failover bound, seconds.
    quorumlock_leader_ttl: float = 10.0
    #: Options of the scheduler process's LockManager.
    quorumlock_options: Optional[Dict[str, Any]] = None
    #: How often the scheduler process looks for due jobs, seconds.
    quorumlock_scheduler_interval: float = 1.0
    #: The scheduler class (an ``RQScheduler`` subclass).
    scheduler_class: Any = RQScheduler

    def _start_scheduler(self, burst: bool = False, logging_level: Optional[str] = "INFO",
                         date_format: Any = None, log_format: Any = None) -> None:
        if self.quorumlock_nodes is None:
            raise TypeError(f"{type(self).__name__}.quorumlock_nodes is not set (lock node URLs)")
        extra = {k: v for k, v in (("date_format", date_format), ("log_format", log_format)) if v is not None}
        self.scheduler = self.scheduler_class(
            self.queues, connection=self.connection, nodes=self.quorumlock_nodes,
            leader_ttl=self.quorumlock_leader_ttl, manager_options=self.quorumlock_options,
            interval=self.quorumlock_scheduler_interval,
            logging_level=logging_level if logging_level is not None else self.log.level,
            serializer=self.serializer, **extra)
        if not burst:
            self.scheduler.start()           # the process campaigns for its queues
            return
        s = self.scheduler
        try:
            for e in s._elect().values():
                e.wait_elected(s.leader_ttl)
            if s.acquire_locks():
                s.register_birth()
                s.enqueue_scheduled_jobs()
        finally:
            s.release_locks()
            s.register_death()
            s._managers.close()
