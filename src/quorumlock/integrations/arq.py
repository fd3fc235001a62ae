"""arq (asyncio): exclusive job coroutines, and cron jobs whose every tick runs
on one worker only, over ``quorumlock.aio``.

```python
from quorumlock.integrations import arq as qlarq

@qlarq.exclusive("report:{day}", ttl=30)
async def build_report(ctx, day):
    ...

async def tidy(ctx):
    ...

class WorkerSettings:
    functions = [build_report]
    cron_jobs = [qlarq.cron(tidy, minute={0, 30}, unique=False)]
    on_startup = qlarq.startup(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"])
    on_shutdown = qlarq.shutdown
```

``startup(nodes, **options)`` returns an ``on_startup`` coroutine function that
connects a ``quorumlock.aio.LockManager`` on the worker's loop and keeps it in
``ctx["quorumlock"]`` (``then=`` runs your own start-up after it);
``shutdown`` closes it.

**Exclusive jobs.**  ``exclusive(key, ttl, ...)`` wraps ``quorumlock.jobs.exclusive``:
while one worker runs ``build_report(ctx, day)``, another with the same
``day`` does not start its body.  The key is a ``str.format`` template over
the job's arguments by name (``ctx`` is the first argument), a callable of
them, or by default ``arq:<function>:<digest of the arguments after ctx>``.
The lock is auto-extended while the job runs; a worker SIGKILLed mid-job
frees the key within ``ttl``.  A duplicate that finds the key held
(``on_busy``): ``"skip"`` (default) returns ``skip_result`` and logs one INFO
line on ``quorumlock.arq``; ``"retry"`` raises ``arq.worker.Retry(defer=...)``,
arq's own way to run it again later (it counts against the job's
``max_tries``); ``wait=<seconds>`` waits for the running one first.  A lost
lease cancels the job's task at the guard moment, and the job fails with
``LockLost``.  ``limit=k`` allows up to ``k`` concurrent runs per key instead
of one (a quorum semaphore of ``k`` permits, ``quorumlock.semaphore``; a
duplicate is busy when all ``k`` are held).

**Cron ticks.**  Every worker runs the cron schedule; ``cron(coroutine,
**arq_cron_options)`` makes an arq ``CronJob`` whose coroutine first claims
``arq:cron:<name>:<tick in ms>`` and runs only on the worker that got it; the
claim stays until ``tick_ttl`` (default 60 s) has passed, so a late worker
cannot run the tick again.  The tick is read from the job id arq gives a
``unique`` cron job (``<name>:<tick ms>``); without ``unique`` it is the
latest tick of the schedule at or before the job's score (the time arq
deferred it to), computed in ``timezone`` (default: the system's, as arq's).
``exclusive_run=True`` also keeps consecutive ticks of a long job from
overlapping (a lock on ``arq:cron-running:<name>`` for the run, auto-extended).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from datetime import datetime, timedelta, timezone as _tz
from typing import Any, Callable, Dict, Optional

from ..jobs import aclaim, exclusive as _exclusive
from ._shared import args_digest

__all__ = ["exclusive", "cron", "startup", "shutdown", "default_key", "latest_tick", "CTX_KEY"]

log = logging.getLogger("quorumlock.arq")

#: Where ``startup`` keeps the worker's manager in the arq context.
CTX_KEY = "quorumlock"

_ON_BUSY = ("skip", "retry")


def startup(nodes: Any, *, then: Optional[Callable[[Dict[str, Any]], Any]] = None, **options: Any
            ) -> Callable[[Dict[str, Any]], Any]:
    """An arq ``on_startup`` coroutine function: connects a
    ``quorumlock.aio.LockManager(nodes, **options)`` into ``ctx["quorumlock"]``,
    then awaits ``then(ctx)`` if given."""
    from ._shared import _check_nodes

    _check_nodes(nodes)

    async def on_startup(ctx: Dict[str, Any]) -> None:
        from ..aio import LockManager

        locks = nodes() if callable(nodes) else LockManager(list(nodes), **options)
        await locks.connect()      # a no-op for a manager that is connected
        ctx[CTX_KEY] = locks
        if then is not None:
            await then(ctx)

    return on_startup


async def shutdown(ctx: Dict[str, Any]) -> None:
    """An arq ``on_shutdown``: closes ``ctx["quorumlock"]``."""
    locks = ctx.pop(CTX_KEY, None)
    if locks is not None:
        await locks.close()


def _locks_of(ctx: Any) -> Any:
    try:
        return ctx[CTX_KEY]
    except (KeyError, TypeError):
        raise RuntimeError("no lock manager in the arq context: set on_startup = "
                           "quorumlock.integrations.arq.startup(nodes) in the WorkerSettings") from None


def default_key(name: str, args: Any, kwargs: Any) -> str:
    """``arq:<function name>:<digest of the arguments after ctx>``."""
    return f"arq:{name}:{args_digest(args, kwargs)}"


def exclusive(key: Any = None, ttl: float = 30.0, *, on_busy: str = "skip", defer: float = 1.0,
              wait: Any = False, skip_result: Any = None, max_hold: Optional[float] = None,
              limit: Optional[int] = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for arq job coroutines (``async def job(ctx, ...)``): see
    the module docstring.  ``limit=k``: at most ``k`` runs at once per key
    (a quorum semaphore of ``k`` permits) instead of one."""
    if limit is not None:
        from ..semaphore import check_permits

        limit = check_permits(limit, "limit")
    if on_busy not in _ON_BUSY:
        raise ValueError(f"on_busy must be one of {_ON_BUSY}, got {on_busy!r}")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"{getattr(fn, '__qualname__', fn)!r} is not a coroutine function")
        name = fn.__qualname__
        key_spec = key if key is not None else (lambda ctx, *a, **kw: default_key(name, a, kw))
        wrapped: Dict[int, Callable[..., Any]] = {}
        stats = {"run": 0, "skipped": 0}

        def on_skip(k: Any) -> None:
            stats["skipped"] += 1
            if on_busy == "retry":
                from arq.worker import Retry

                log.info("job %s deferred %.3g s: %r is held by another run", name, defer, k)
                raise Retry(defer=defer)
            log.info("skipped job %s: %r is held by another run", name, k)

        @functools.wraps(fn)
        async def job(ctx: Any, *args: Any, **kwargs: Any) -> Any:
            locks = _locks_of(ctx)
            w = wrapped.get(id(locks))
            if w is None:
                w = _exclusive(locks, key_spec, ttl, wait=wait, max_hold=max_hold, skip_result=skip_result,
                               on_skip=on_skip, limit=limit)(fn)
                wrapped.clear()
                wrapped[id(locks)] = w
            stats["run"] += 1
            return await w(ctx, *args, **kwargs)

        job.stats = stats  # type: ignore[attr-defined]
        return job

    return decorate


def latest_tick(cron_job: Any, at: datetime) -> Optional[datetime]:
    """The latest time of ``cron_job``'s schedule at or before ``at`` (None
    if there is none within about two years)."""
    from arq.cron import next_cron

    opts = dict(month=cron_job.month, day=cron_job.day, weekday=cron_job.weekday, hour=cron_job.hour,
                minute=cron_job.minute, second=cron_job.second, microsecond=cron_job.microsecond)
    back = timedelta(seconds=2)
    while back < timedelta(days=800):
        t = next_cron(at - back, **opts)
        if t <= at:
            for _ in range(10_000):        # bounded: few ticks lie in the window
                n = next_cron(t, **opts)
                if n > at:
                    return t
                t = n
            return t
        back *= 4
    return None


_MS = re.compile(r":(\d+)$")


def cron(coroutine: Callable[..., Any], *, name: Optional[str] = None, tick_ttl: float = 60.0,
         ttl: float = 30.0, exclusive_run: bool = False, timezone: Optional[Any] = None,
         **cron_options: Any) -> Any:
    """An arq ``CronJob`` (``arq.cron(...)`` options as keywords) whose each
    tick runs on one worker only: see the module docstring."""
    from arq.cron import cron as arq_cron

    if not asyncio.iscoroutinefunction(coroutine):
        raise TypeError(f"{getattr(coroutine, '__qualname__', coroutine)!r} is not a coroutine function")
    if isinstance(tick_ttl, bool) or not isinstance(tick_ttl, (int, float)) or not tick_ttl > 0:
        raise ValueError(f"tick_ttl must be a positive number of seconds, got {tick_ttl!r}")
    job_name = name or "cron:" + coroutine.__qualname__
    tz = timezone or datetime.now().astimezone().tzinfo
    holder: Dict[str, Any] = {}
    stats = {"run": 0, "skipped": 0}

    def tick_of(ctx: Any) -> str:
        m = _MS.search(str(ctx.get("job_id") or ""))
        if m and str(ctx.get("job_id")).startswith(job_name + ":"):
            return m.group(1)
        score = ctx.get("score")
        if score is None:
            raise RuntimeError("arq gave the cron job neither a unique job id nor a score")
        at = datetime.fromtimestamp((int(score) + 1) / 1000, tz=_tz.utc).astimezone(tz)
        t = latest_tick(holder["job"], at)
        return str(int((t or at).timestamp() * 1000))

    @functools.wraps(coroutine)
    async def run_tick(ctx: Any) -> Any:
        locks = _locks_of(ctx)
        tick = tick_of(ctx)
        key = f"arq:cron:{job_name}:{tick}"
        lock = await aclaim(locks, key, max(tick_ttl, ttl))
        if lock is None:
            stats["skipped"] += 1
            log.info("tick %s of %s runs on another worker", tick, job_name)
            return None
        # The tick's claim is not released: it expires after tick_ttl.
        stats["run"] += 1
        if not exclusive_run:
            return await coroutine(ctx)
        body = _exclusive(locks, f"arq:cron-running:{job_name}", ttl, wait=False)(coroutine)
        return await body(ctx)

    job = arq_cron(run_tick, name=job_name, **cron_options)
    holder["job"] = job
    job.stats = stats  # type: ignore[attr-defined]
    return job
