"""Exclusive jobs: run a function only while holding a lock.

```python
locks = quorumlock.LockManager(urls)

@locks.exclusive("report:{day}", ttl=60, wait=False)
def build_report(day):
    ...                      # runs in one process at a time per day

build_report("2024-05-01")   # -> its result, or None (skip_result) when another
                             #    process is building that day's report
```

and the same for coroutine functions with ``quorumlock.aio.LockManager``.

* ``key``: a ``str.format`` template over the function's arguments (by
  name, defaults applied), or a callable taking the same arguments.
* ``wait``: ``False`` (default): no waiting: skip if another runner holds
  the key (a ``claim``: retried only while simultaneous callers split the
  votes, so that a key nobody holds is never skipped by everybody);
  ``True``: wait until the lock is free; a number: wait at most that many
  seconds, then skip.  Waiting uses release notifications when the manager
  has ``notify=True``.
* While the body runs the lock is auto-extended (every ``ttl/3``; off with
  ``auto_extend=False``), at most for ``max_hold`` seconds.
* ``limit=k``: run at most ``k`` calls at once per key instead of one: the
  key names a quorum semaphore of ``k`` permits (``quorumlock.semaphore``;
  its keys are ``{key}:permit:0..k-1``, so ``limit=1`` does not share keys
  with the plain form).  ``wait`` as above; a skip means all ``k`` permits
  were held.

Skips are reported three ways: the call returns ``skip_result`` (default
None; ``raise_on_skip=True`` raises ``JobSkipped`` instead), one INFO line is
logged on the ``quorumlock.jobs`` logger, and ``wrapper.stats["skipped"]``
(and the manager's ``metrics()["jobs"]``, with ``metrics=True``) counts it;
``on_skip(key)`` is called if given.

A lost lease is never silent: a coroutine body is cancelled before validity
runs out and the call raises ``LockLost``; a plain function's body cannot be
interrupted, so the call raises ``LockLost`` when it returns (the body can
poll ``quorumlock.jobs.current_lock().check()`` to stop early).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import math
import time
from typing import Any, Callable, Dict, Optional

from . import _faces, _policy
from . import metrics as _metrics
from .errors import LockTimeout, QuorumLockError

__all__ = ["exclusive", "current_lock", "claim", "aclaim", "JobSkipped"]

log = logging.getLogger("quorumlock.jobs")

_current: "contextvars.ContextVar[Any]" = contextvars.ContextVar("quorumlock_job_lock", default=None)

#: ``acquire`` timeout of one round of an unbounded wait (``wait=True``).
_WAIT_ROUND = 3600.0


class JobSkipped(QuorumLockError):
    """An exclusive job did not run: its lock is held elsewhere
    (``raise_on_skip=True``)."""

    def __init__(self, key: Any) -> None:
        self.key = key
        super().__init__(f"skipped: {key!r} is held by another runner")


def current_lock() -> Any:
    """The lock held by the exclusive job running in this context (None
    outside one): ``current_lock().check()`` raises ``LockLost`` once the
    lease is lost."""
    return _current.get()


#: Attempts of a claim while the votes are split (nobody holds a majority).
CLAIM_ATTEMPTS = 6
#: Seconds: the range of the first wait after a split vote (the n-th: n times it).
SPLIT_DELAY = (0.002, 0.02)


def _split(op: Any, quorum: int) -> bool:
    """The attempt failed without anyone else holding a majority: simultaneous
    claimers split the votes (or nodes did not answer).  Worth a retry."""
    return sum(1 for o in op.outcomes() if o.status == "held") < quorum


def claim(locks: Any, key: Any, ttl: Optional[float] = None) -> Any:
    """Take ``key`` if nobody else holds it: a ``Lock``, or None when another
    holder has it on a majority.

    Plain ``try_acquire`` can fail for everybody when several processes try
    the same key at the same moment (each gets a minority of the votes, all
    release): a scheduler tick would then run nowhere.  A claim retries after a
    short random delay while the votes were split, and gives up at once when
    the replies show another holder on a majority (blocking manager)."""
    ttl_ms = locks.ttl_ms(ttl)
    retry = _split_retry(CLAIM_ATTEMPTS)

    def attempt() -> Any:
        t0 = time.monotonic_ns()
        op = locks.attempt_op(key, ttl_ms)
        _metrics.record(locks, "acquire", (time.monotonic_ns() - t0) / 1e9, op.result is not None)
        if op.result is not None:
            _metrics.bump(locks, "held")
            return op.result
        if not _split(op, locks.quorum):
            retry.give_up()
        return None

    return _policy.run_blocking(attempt, retry)


def _split_retry(attempts: int) -> _policy.Retry:
    """Quick retries while simultaneous callers split the votes of a free
    key: the n-th wait is drawn from n * SPLIT_DELAY."""
    return _policy.Retry(attempts=attempts, timeout=None, delay=SPLIT_DELAY, now=0.0, linear=True)


async def aclaim(locks: Any, key: Any, ttl: Optional[float] = None) -> Any:
    """``claim`` for a ``quorumlock.aio.LockManager``."""
    eng = locks.checkout()
    ttl_ms = locks.ttl_ms(ttl)
    retry = _split_retry(CLAIM_ATTEMPTS)

    async def attempt() -> Any:
        t0 = time.monotonic_ns()
        op = eng.attempt(key, ttl_ms)
        lock = await op.waiter
        _metrics.record(locks, "acquire", (time.monotonic_ns() - t0) / 1e9, lock is not None)
        if lock is not None:
            _metrics.bump(locks, "held")
            return lock
        if not _split(op, locks.quorum):
            retry.give_up()
        return None

    return await _policy.run_async(attempt, retry)


def _key_function(key: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    if callable(key):
        return key
    if not isinstance(key, (str, bytes)):
        raise TypeError(f"key must be a str template or a callable, got {key!r}")
    if isinstance(key, bytes) or "{" not in key:
        return lambda *a, **kw: key
    sig = inspect.signature(fn)

    def key_for(*args: Any, **kwargs: Any) -> str:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return key.format(*bound.args, **bound.arguments)

    return key_for


def _check_wait(wait: Any) -> Optional[float]:
    """None: no wait; inf: unbounded; else seconds."""
    if wait is False or wait is None:
        return None
    if wait is True:
        return math.inf
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait >= 0:
        return float(wait)
    raise ValueError(f"wait must be False, True or a number of seconds >= 0, got {wait!r}")


def exclusive(
    locks: Any,
    key: Any,
    ttl: Optional[float] = None,
    *,
    wait: Any = False,
    auto_extend: bool = True,
    max_hold: Optional[float] = None,
    margin: Optional[float] = None,
    skip_result: Any = None,
    raise_on_skip: bool = False,
    on_skip: Optional[Callable[[Any], Any]] = None,
    on_lost: Optional[Callable[..., Any]] = None,
    limit: Optional[int] = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator factory: see the module docstring.  ``locks`` is an asyncio
    manager for coroutine functions, a blocking one for plain functions."""
    wait_s = _check_wait(wait)
    is_aio = _faces.is_async(locks, "exclusive")
    if limit is not None:
        from .semaphore import check_permits

        limit = check_permits(limit, "limit")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        is_coro = inspect.iscoroutinefunction(fn)
        if is_coro and not is_aio:
            raise TypeError(f"{fn.__qualname__} is a coroutine function: use a quorumlock.aio.LockManager")
        if not is_coro and is_aio:
            raise TypeError(f"{fn.__qualname__} is not a coroutine function: use a blocking quorumlock.LockManager")
        key_for = _key_function(key, fn)
        stats: Dict[str, int] = {"run": 0, "skipped": 0, "lost": 0}
        name = getattr(fn, "__qualname__", repr(fn))

        def skipped(k: Any) -> Any:
            stats["skipped"] += 1
            _metrics.bump(locks, "jobs_skipped")
            log.info("skipped %s: %r is held by another runner", name, k)
            if on_skip is not None:
                on_skip(k)
            if raise_on_skip:
                raise JobSkipped(k)
            return skip_result

        def lost(k: Any, lease: Any) -> None:
            stats["lost"] += 1
            _metrics.bump(locks, "jobs_lost")
            log.error("%s lost its lock %r while running: %s", name, k, lease.reason)

        if is_coro:
            async def acquire_async(k: Any) -> Any:
                if limit is not None:
                    return await _sem_acquire_async(locks.semaphore(k, limit, ttl), wait_s)
                if wait_s is None:
                    return await aclaim(locks, k, ttl)
                if wait_s == math.inf:
                    while True:
                        try:
                            return await locks.acquire(k, ttl, timeout=_WAIT_ROUND)
                        except LockTimeout:
                            continue
                try:
                    return await locks.acquire(k, ttl, timeout=wait_s)
                except LockTimeout:
                    return None

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                k = key_for(*args, **kwargs)
                lock = await acquire_async(k)
                if lock is None:
                    return skipped(k)
                lease = None
                token = _current.set(lock)
                try:
                    from .leases import _async as la

                    lease = la.guard(locks, lock, auto_extend=auto_extend, max_hold=max_hold, margin=margin,
                                     on_lost=on_lost, cancel=True)
                    stats["run"] += 1
                    _metrics.bump(locks, "jobs_run")
                    try:
                        result = await fn(*args, **kwargs)
                    except asyncio.CancelledError as exc:
                        if lease.reason is not None and lease.cancelled:
                            lease.in_body = False
                            task = asyncio.current_task()
                            uncancel = getattr(task, "uncancel", None)
                            if uncancel is None or uncancel() == 0:
                                lost(k, lease)
                                from .leases._lease import lost_error

                                raise lost_error(lock, lease) from exc
                        raise
                    lease.in_body = False
                    if lease.reason is not None:
                        lost(k, lease)
                        from .leases._lease import lost_error

                        raise lost_error(lock, lease)
                    return result
                finally:
                    _current.reset(token)
                    if lease is not None:
                        lease.in_body = False
                        if locks.lease_renewer is not None:
                            locks.lease_renewer.discard(lease)
                    await asyncio.shield(locks.release_lock(lock))

            awrapper.stats = stats  # type: ignore[attr-defined]
            awrapper.key_for = key_for  # type: ignore[attr-defined]
            return awrapper

        def acquire_sync(k: Any) -> Any:
            if limit is not None:
                return _sem_acquire(locks.semaphore(k, limit, ttl), wait_s)
            if wait_s is None:
                return claim(locks, k, ttl)
            if wait_s == math.inf:
                while True:
                    try:
                        return locks.acquire(k, ttl, timeout=_WAIT_ROUND)
                    except LockTimeout:
                        continue
            try:
                return locks.acquire(k, ttl, timeout=wait_s)
            except LockTimeout:
                return None

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            k = key_for(*args, **kwargs)
            lock = acquire_sync(k)
            if lock is None:
                return skipped(k)
            lease = None
            token = _current.set(lock)
            try:
                from .leases import _thread as lt

                lease = lt.guard(locks, lock, auto_extend=auto_extend, max_hold=max_hold, margin=margin,
                                 on_lost=on_lost)
                stats["run"] += 1
                _metrics.bump(locks, "jobs_run")
                result = fn(*args, **kwargs)
                if lease.reason is not None:
                    lost(k, lease)
                    from .leases._lease import lost_error

                    raise lost_error(lock, lease)
                return result
            finally:
                _current.reset(token)
                if lease is not None:
                    lease.in_body = False
                    if locks.lease_renewer is not None:
                        locks.lease_renewer.discard(lease)
                locks.release_lock(lock)

        wrapper.stats = stats  # type: ignore[attr-defined]
        wrapper.key_for = key_for  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _sem_acquire(sem: Any, wait_s: Optional[float]) -> Any:
    """A permit of ``sem`` for ``exclusive(..., limit=k)``, or None (skip)."""
    try:
        if wait_s is None:
            # A few quick attempts: simultaneous callers can split the votes
            # of a free permit (as in ``claim``).
            return _policy.run_blocking(sem.try_acquire, _split_retry(3))
        if wait_s == math.inf:
            while True:
                try:
                    return sem.acquire(timeout=_WAIT_ROUND)
                except LockTimeout:
                    continue
        return sem.acquire(timeout=wait_s)
    except LockTimeout:
        return None


async def _sem_acquire_async(sem: Any, wait_s: Optional[float]) -> Any:
    try:
        if wait_s is None:
            return await _policy.run_async(sem.try_acquire, _split_retry(3))
        if wait_s == math.inf:
            while True:
                try:
                    return await sem.acquire(timeout=_WAIT_ROUND)
                except LockTimeout:
                    continue
        return await sem.acquire(timeout=wait_s)
    except LockTimeout:
        return None
