"""APScheduler 3.x: every job runs once per scheduled tick across all the
scheduler processes that share the lock nodes.

```python
from apscheduler.schedulers.background import BackgroundScheduler
from quorumlock import LockManager
from quorumlock.integrations.apscheduler import ThreadPoolExecutor, interval_trigger

locks = LockManager(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"])
scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(locks)})
scheduler.add_job(send_digest, interval_trigger(minutes=5), id="digest")
scheduler.start()        # in every process: each tick runs in exactly one of them
```

How: when a tick is due, the executor claims
``<prefix><job id>:<scheduled run time in µs>`` (``quorumlock.jobs.claim``:
no waiting, but a retry when the processes that fired the tick at the same
moment split the votes, so that the tick is never dropped by all of them).
The process that gets it runs the job, with the lock auto-extended while the
job runs; the others skip the tick.  The tick's lock is **not** released
when the job ends: it stays until the misfire window of the tick has passed
(``misfire_grace_time`` of the job plus ``skew``), so a process that fires the
same tick late (a slow start, a GC pause, clock skew between hosts) cannot run
it a second time.

What it needs:

* every process schedules the same job (same ``id``) with the same run times.
  A cron trigger, a date trigger, or an interval trigger with an explicit
  ``start_date`` give that; ``IntervalTrigger`` without one starts counting at
  each process's start, so ``interval_trigger()`` here pins ``start_date`` to a
  fixed epoch;
* wall clocks in sync within ``skew`` (default 5 s) across the hosts: the
  schedule is wall-clock based (the locks themselves never use wall time).

Guarantee: each tick runs at most once.  It runs exactly once as long as one
process that fires it stays alive from the lock until the job starts; a
runner killed in the middle of a job does not have that tick re-run by the
others (its lock holds the tick until it expires).

**At most k runs of a job at once.** APScheduler's ``max_instances`` caps
the overlapping runs of a job (a long job whose next tick comes before it
ends) in one process.  ``limit=k`` on the executor caps them across all the
processes: the process that claimed a tick also takes a permit of the quorum
semaphore ``<prefix>running:<job id>`` (``k`` permits, ``quorumlock.semaphore``)
for the run, auto-extended and released when it ends; a tick that finds all
``k`` permits held is skipped (counted in ``limited``), as a tick beyond
``max_instances`` is.  Give the job a ``max_instances`` of at least ``k``.

``scheduled_run_time()`` gives the job the tick it is running for.
``AsyncIOExecutor`` is the same for ``AsyncIOScheduler`` with a
``quorumlock.aio.LockManager``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
import sys
from datetime import datetime, timezone
from typing import Any, List, Optional

from apscheduler.executors.asyncio import AsyncIOExecutor as _AsyncIOExecutor
from apscheduler.executors.base import run_coroutine_job, run_job
from apscheduler.executors.pool import ThreadPoolExecutor as _ThreadPoolExecutor
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import iscoroutinefunction_partial

from .. import _faces
from ..jobs import _sem_acquire, _sem_acquire_async, aclaim, claim

__all__ = ["ThreadPoolExecutor", "AsyncIOExecutor", "interval_trigger", "scheduled_run_time", "tick_key", "EPOCH"]

log = logging.getLogger("quorumlock.apscheduler")

#: The fixed start of ``interval_trigger``'s schedule.
EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)

_run_time: "contextvars.ContextVar[Optional[datetime]]" = contextvars.ContextVar("quorumlock_run_time", default=None)


def scheduled_run_time() -> Optional[datetime]:
    """The scheduled run time of the tick the current job runs for (None
    outside a job run by these executors)."""
    return _run_time.get()


def interval_trigger(**kwargs: Any) -> IntervalTrigger:
    """An ``IntervalTrigger`` whose ticks are the same in every process:
    ``start_date`` defaults to ``EPOCH`` (ticks at EPOCH + k * interval);
    jitter is refused (it would make the ticks differ)."""
    if kwargs.get("jitter"):
        raise ValueError("jitter makes each process's run times differ; it cannot be used here")
    kwargs.setdefault("start_date", EPOCH)
    return IntervalTrigger(**kwargs)


def tick_key(prefix: str, job: Any, run_time: datetime) -> str:
    us = int(run_time.timestamp() * 1_000_000)
    return f"{prefix}{job.id}:{us}"


class _TickLocks:
    """What both executors share."""

    def _setup(self, locks: Any, prefix: str, ttl: Optional[float], skew: float, max_hold: Optional[float],
               limit: Optional[int] = None) -> None:
        if limit is not None:
            from ..semaphore import check_permits

            limit = check_permits(limit, "limit")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        if skew < 0:
            raise ValueError(f"skew must be >= 0, got {skew!r}")
        self.locks = locks
        self.prefix = prefix
        self.job_ttl = float(ttl) if ttl is not None else float(locks.ttl)
        self.skew = float(skew)
        self.max_hold = max_hold
        self.limit = limit
        self.ran = 0
        self.skipped = 0
        self.limited = 0

    def _running(self, job: Any) -> Any:
        """The semaphore of ``limit`` permits for the runs of ``job``."""
        return self.locks.semaphore(f"{self.prefix}running:{job.id}", self.limit, self.job_ttl)

    def _no_permit(self, job: Any, rt: datetime) -> None:
        self.skipped += 1
        self.limited += 1
        log.info("skipped tick %s of job %r: %d runs of it are in progress", rt, job.id, self.limit)

    def _drop_lease(self, lock: Any) -> None:
        leases = getattr(self.locks, "lease_renewer", None)
        st = lock._state
        if leases is not None and st is not None:
            leases.discard(st)

    def _tick_ttl(self, job: Any, run_time: datetime) -> float:
        """Seconds the tick's lock must live from now: at least the job TTL,
        and past the end of the tick's misfire window plus the skew."""
        grace = job.misfire_grace_time
        if grace is None:
            grace = 3600.0
        now = datetime.now(timezone.utc)
        window = (run_time - now).total_seconds() + grace + self.skew
        return max(self.job_ttl, math.ceil(window * 1000) / 1000.0)

    def _finish(self, lock: Any) -> None:
        # Stop renewing, keep the key: it expires at the end of the window.
        self._drop_lease(lock)


class ThreadPoolExecutor(_TickLocks, _ThreadPoolExecutor):
    """APScheduler's ``ThreadPoolExecutor`` with one run per tick across
    processes.  ``locks``: a blocking ``quorumlock.LockManager``.

    ``ttl``: lease of a running job (auto-extended; default the manager's
    ttl); ``skew``: extra seconds a tick stays locked after its misfire
    window; ``prefix``: of the tick keys; ``max_hold``: longest a job may keep
    its tick's lock by auto-extension; ``limit``: at most that many runs of
    a job at once across all processes (see the module docstring)."""

    def __init__(self, locks: Any, max_workers: int = 10, *, prefix: str = "apscheduler:",
                 ttl: Optional[float] = None, skew: float = 5.0, max_hold: Optional[float] = None,
                 pool_kwargs: Optional[dict] = None, limit: Optional[int] = None) -> None:
        if _faces.is_async(locks, "ThreadPoolExecutor"):
            raise TypeError("ThreadPoolExecutor needs a blocking quorumlock.LockManager")
        self._setup(locks, prefix, ttl, skew, max_hold, limit)
        super().__init__(max_workers, pool_kwargs)

    def _do_submit_job(self, job: Any, run_times: List[datetime]) -> None:
        def callback(f: Any) -> None:
            exc = f.exception()
            if exc is not None:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, f.result())

        f = self._pool.submit(self._run_ticks, job, job._jobstore_alias, run_times, self._logger.name)
        f.add_done_callback(callback)

    def _run_ticks(self, job: Any, alias: str, run_times: List[datetime], logger_name: str) -> List[Any]:
        events: List[Any] = []
        for rt in run_times:
            key = tick_key(self.prefix, job, rt)
            lock = claim(self.locks, key, self._tick_ttl(job, rt))
            if lock is None:
                self.skipped += 1
                log.debug("tick %s of job %r runs elsewhere", rt, job.id)
                continue
            permit = None
            if self.limit is not None:
                permit = _sem_acquire(self._running(job), None)
                if permit is None:
                    self._no_permit(job, rt)
                    continue
                self.locks.guard(permit, auto_extend=True, max_hold=self.max_hold)
            self.locks.guard(lock, auto_extend=True, max_hold=self.max_hold)
            token = _run_time.set(rt)
            try:
                self.ran += 1
                events.extend(run_job(job, alias, [rt], logger_name))
            finally:
                _run_time.reset(token)
                self._finish(lock)
                if permit is not None:
                    self._drop_lease(permit)
                    self.locks.release(permit)
        return events


class AsyncIOExecutor(_TickLocks, _AsyncIOExecutor):
    """APScheduler's ``AsyncIOExecutor`` with one run per tick across
    processes.  ``locks``: a ``quorumlock.aio.LockManager`` connected on the
    scheduler's event loop.  Plain functions run in the loop's default
    executor, as in APScheduler."""

    def __init__(self, locks: Any, *, prefix: str = "apscheduler:", ttl: Optional[float] = None,
                 skew: float = 5.0, max_hold: Optional[float] = None, limit: Optional[int] = None) -> None:
        if not _faces.is_async(locks, "AsyncIOExecutor"):
            raise TypeError("AsyncIOExecutor needs a quorumlock.aio.LockManager")
        self._setup(locks, prefix, ttl, skew, max_hold, limit)
        super().__init__()

    def _do_submit_job(self, job: Any, run_times: List[datetime]) -> None:
        def callback(f: Any) -> None:
            self._pending_futures.discard(f)
            try:
                events = f.result()
            except BaseException:
                self._run_job_error(job.id, *sys.exc_info()[1:])
            else:
                self._run_job_success(job.id, events)

        f = self._eventloop.create_task(self._run_ticks(job, job._jobstore_alias, run_times, self._logger.name))
        f.add_done_callback(callback)
        self._pending_futures.add(f)

    async def _run_ticks(self, job: Any, alias: str, run_times: List[datetime], logger_name: str) -> List[Any]:
        events: List[Any] = []
        for rt in run_times:
            key = tick_key(self.prefix, job, rt)
            lock = await aclaim(self.locks, key, self._tick_ttl(job, rt))
            if lock is None:
                self.skipped += 1
                log.debug("tick %s of job %r runs elsewhere", rt, job.id)
                continue
            permit = None
            if self.limit is not None:
                permit = await _sem_acquire_async(self._running(job), None)
                if permit is None:
                    self._no_permit(job, rt)
                    continue
                self.locks.guard(permit, auto_extend=True, max_hold=self.max_hold)
            self.locks.guard(lock, auto_extend=True, max_hold=self.max_hold)
            token = _run_time.set(rt)
            try:
                self.ran += 1
                if iscoroutinefunction_partial(job.func):
                    events.extend(await run_coroutine_job(job, alias, [rt], logger_name))
                else:
                    ctx = contextvars.copy_context()
                    call = functools.partial(ctx.run, run_job, job, alias, [rt], logger_name)
                    events.extend(await asyncio.get_running_loop().run_in_executor(None, call))
            finally:
                _run_time.reset(token)
                self._finish(lock)
                if permit is not None:
                    self._drop_lease(permit)
                    await asyncio.shield(self.locks.release(permit))
        return events
