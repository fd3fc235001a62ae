"""Quorum semaphores: at most ``permits`` holders at once, by construction.

```python
sem = locks.semaphore("crawl:example.org", permits=4, ttl=30.0)
permit = sem.acquire(timeout=10.0)        # a Lock on one permit key, else LockTimeout
permit = sem.try_acquire()                # one attempt: a Lock, or None
with sem.lock(auto_extend=True) as permit:
    ...                                   # at most 4 of these blocks run at once
```

(``async with`` / ``await`` with ``quorumlock.aio.LockManager``.)

A semaphore of ``k`` permits is ``k`` independent Redlock mutexes, the permit
keys ``{name}:permit:0`` .. ``{name}:permit:{k-1}``.  An attempt tries every
permit key in one pipelined round (``acquire_many``: one script call per node
per chunk of keys, whatever ``k``; with fencing or lock-delay, one single-key
attempt per key, still written in one batch per node), keeps one of the
granted permits, chosen at random, and releases the others at once.  A permit
*is* a ``Lock``: ``release()``, ``extend()``, ``fence``, ``lost``, ``check()``,
``manager.guard(permit, auto_extend=True)`` all work as for any lock.

Why at most ``k`` holders: every holder holds a permit key, every permit key
is a mutex (a majority of the nodes carry the holder's token), and a holder
holds one key; so ``k`` keys admit at most ``k`` holders.  Counting per node
(each node admits up to ``k`` holders, a holder needs a majority) does *not*
bound holders by ``k``; docs/semaphores.md has the argument and the
counter-example.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from . import _policy
from .errors import LockLost, LockTimeout

__all__ = ["Semaphore", "AsyncSemaphore", "permit_keys", "MAX_PERMITS"]

log = logging.getLogger("quorumlock")

#: The most permits a semaphore may have (each permit is a key tried in every attempt).
MAX_PERMITS = 4096

_LEASE_OPTIONS = ("auto_extend", "max_hold", "on_lost", "margin")


def check_name(name: Any, what: str = "name") -> Any:
    """A semaphore / rwlock name: a non-empty ``str`` or ``bytes``."""
    if isinstance(name, bytearray):
        name = bytes(name)
    if not isinstance(name, (str, bytes)):
        raise TypeError(f"{what} must be a str or bytes, got {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    return name


def permit_keys(name: Any, permits: int, infix: str = "permit") -> List[Any]:
    """The permit keys of a semaphore: ``{name}:{infix}:0`` .. ``{name}:{infix}:{permits-1}``
    (``bytes`` when ``name`` is bytes)."""
    if isinstance(name, bytes):
        return [name + b":%b:%d" % (infix.encode(), i) for i in range(permits)]
    return [f"{name}:{infix}:{i}" for i in range(permits)]


def check_permits(permits: Any, what: str = "permits") -> int:
    if isinstance(permits, bool) or not isinstance(permits, int):
        raise TypeError(f"{what} must be an int >= 1, got {permits!r}")
    if not 1 <= permits <= MAX_PERMITS:
        raise ValueError(f"{what} must be between 1 and {MAX_PERMITS}, got {permits!r}")
    return permits


def pick(results: Sequence[Any], rng: Any = random) -> Tuple[Any, List[Any]]:
    """From one round's results (a ``Lock`` or None per key): the permit to
    keep (chosen at random among the granted ones, to spread contention) and
    the extras to release at once."""
    granted = [lk for lk in results if lk is not None]
    if not granted:
        return None, []
    keep = granted[rng.randrange(len(granted))] if len(granted) > 1 else granted[0]
    return keep, [lk for lk in granted if lk is not keep]


def _kb(key: Any) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def _lease_opts(opts: dict) -> Optional[dict]:
    """The guard options of ``lock(...)``, or None when none asks for a guarded lease."""
    if any(opts.get(k) not in (None, False) for k in _LEASE_OPTIONS):
        return opts
    return None


class _Base:
    """What both faces share: the name, the permit keys, the TTL, the arguments."""

    def __init__(self, mgr: Any, name: Any, permits: Any, ttl: Optional[float]) -> None:
        self._mgr = mgr
        self.name = check_name(name)
        self.permits = check_permits(permits)
        self.keys: List[Any] = permit_keys(self.name, self.permits)
        for k in self.keys:  # the engine's key checks (length), before any I/O
            if len(_kb(k)) > mgr.options.max_key_length:
                raise ValueError(f"name: the permit keys would exceed max_key_length "
                                 f"({mgr.options.max_key_length} bytes)")
        self.ttl = None if ttl is None else ttl
        if ttl is not None:
            mgr.ttl_ms(ttl)  # checked now: a bad TTL raises here, naming the argument
        self._rng = random.Random()
        #: Acquire attempts made (each one pipelined round); for tests and metrics.
        self.attempts = 0

    def _order(self) -> List[Any]:
        keys = list(self.keys)
        self._rng.shuffle(keys)
        return keys

    def _retry(self, timeout: Optional[float], retry_count: Optional[int]) -> _policy.Retry:
        return _policy.from_options(self._mgr.options, timeout=timeout, retry_count=retry_count,
                                    now=time.monotonic())

    def _wait_mode(self, wait: Optional[str]) -> str:
        if wait is None:
            return "notify" if self._mgr.notify else "poll"
        if wait not in ("poll", "notify"):
            raise ValueError(f"wait must be 'poll' or 'notify', got {wait!r}")
        return wait

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} permits={self.permits}>"


class Semaphore(_Base):
    """A quorum semaphore on a blocking ``quorumlock.LockManager``
    (``locks.semaphore(name, permits=k, ttl=...)``); see the module docstring."""

    def try_acquire(self, ttl: Optional[float] = None) -> Optional[Any]:
        """One attempt (one pipelined round over every permit key): a permit
        (``Lock``), or None when no permit key reached a quorum."""
        mgr = self._mgr
        results = mgr.acquire_many(self._order(), self.ttl if ttl is None else ttl)
        self.attempts += 1
        keep, extras = pick(results, self._rng)
        if extras:
            try:
                mgr.release_many(extras)
            except Exception as exc:  # they expire on their own; never lose the kept permit
                log.warning("releasing extra permits of %r failed: %r", self.name, exc)
        return keep

    def acquire(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
                retry_count: Optional[int] = None, wait: Optional[str] = None) -> Any:
        """A permit, retrying with the manager's jittered delays until
        ``timeout`` (seconds) passes or ``retry_count`` attempts were made;
        else ``LockTimeout``.  ``wait="notify"`` (the default on a manager
        with ``notify=True``) retries as soon as a node reports a permit key
        released, the jittered delay bounding every wait."""
        retry = self._retry(timeout, retry_count)
        mode = self._wait_mode(wait)
        sub: Any = None
        watches: List[Any] = []
        woke = threading.Event()

        def attempt() -> Optional[Any]:
            woke.clear()
            return self.try_acquire(ttl)

        def wait_for_release(delay: float) -> bool:
            nonlocal sub
            if mode == "notify" and sub is None:
                from .leases.notify import thread_subscriber

                sub = thread_subscriber(self._mgr)
                try:
                    watches.extend(sub.watch(_kb(k), woke.set) for k in self.keys)
                    return True  # a release before the subscription: covered by this retry
                except Exception as exc:
                    log.debug("cannot subscribe for %r: %r; polling", self.name, exc)
            if watches:
                woke.wait(delay)
            else:
                time.sleep(delay)
            return False

        try:
            permit = _policy.run_blocking(attempt, retry, wait=wait_for_release)
        finally:
            for w in watches:
                sub.unwatch(w)
        if permit is None:
            raise LockTimeout(self.name, retry.attempts)
        return permit

    def lock(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
             retry_count: Optional[int] = None, wait: Optional[str] = None, auto_extend: bool = False,
             max_hold: Optional[float] = None, on_lost: Optional[Callable[..., Any]] = None,
             margin: Optional[float] = None, renew_fraction: float = 1.0 / 3.0) -> "_PermitContext":
        """``with sem.lock() as permit:``: acquire (as ``acquire``), release at
        the end.  ``auto_extend``, ``max_hold``, ``on_lost``, ``margin`` guard
        the lease as in ``LockManager.lock`` (a lost lease raises ``LockLost``
        on exit)."""
        opts = dict(auto_extend=auto_extend, max_hold=max_hold, on_lost=on_lost, margin=margin,
                    renew_fraction=renew_fraction)
        return _PermitContext(self, ttl, timeout, retry_count, wait, _lease_opts(opts))

    def __enter__(self) -> Any:
        raise TypeError("use 'with sem.lock() as permit:' (the permit is what the block holds)")

    def __exit__(self, *exc: Any) -> None:  # pragma: no cover - __enter__ refuses
        pass


class _PermitContext:
    __slots__ = ("_sem", "_args", "_opts", "_permit", "_lease")

    def __init__(self, sem: Any, ttl: Any, timeout: Any, retry: Any, wait: Any, opts: Optional[dict]) -> None:
        self._sem = sem
        self._args = (ttl, timeout, retry, wait)
        self._opts = opts
        self._permit: Any = None
        self._lease: Any = None

    def __enter__(self) -> Any:
        ttl, timeout, retry, wait = self._args
        permit = self._sem.acquire(ttl, timeout=timeout, retry_count=retry, wait=wait)
        self._permit = permit
        if self._opts is not None:
            from .leases import _thread as lt

            try:
                self._lease = lt.guard(self._sem._mgr, permit, **self._opts)
            except BaseException:
                self._sem._mgr.release_lock(permit)
                raise
        return permit

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        permit, self._permit = self._permit, None
        lease, self._lease = self._lease, None
        if permit is None:
            return
        mgr = self._sem._mgr
        if lease is not None:
            lease.in_body = False
            if mgr.lease_renewer is not None:
                mgr.lease_renewer.discard(lease)
        mgr.release_lock(permit)
        if lease is not None and lease.reason is not None and exc_type is None:
            raise LockLost(f"lease on {permit.key!r} lost: {lease.reason}")


class AsyncSemaphore(_Base):
    """A quorum semaphore on a ``quorumlock.aio.LockManager``; the same
    methods as ``Semaphore``, returning awaitables."""

    async def try_acquire(self, ttl: Optional[float] = None) -> Optional[Any]:
        """One attempt (one pipelined round): a permit (``Lock``) or None."""
        mgr = self._mgr
        results = await await_batch(mgr, mgr.acquire_many(self._order(), self.ttl if ttl is None else ttl))
        self.attempts += 1
        keep, extras = pick(results, self._rng)
        if extras:
            # Queued now, written with the loop's next flush; nobody needs to
            # wait for the replies (a failed release only leaves the extra
            # permit to expire).
            fut = mgr.release_many(extras)
            fut = asyncio.ensure_future(fut)
            fut.add_done_callback(_retrieve)
        return keep

    async def acquire(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
                      retry_count: Optional[int] = None, wait: Optional[str] = None) -> Any:
        """As ``Semaphore.acquire``."""
        retry = self._retry(timeout, retry_count)
        mode = self._wait_mode(wait)
        sub: Any = None
        watches: List[Any] = []
        woke = asyncio.Event()

        async def attempt() -> Optional[Any]:
            woke.clear()
            return await self.try_acquire(ttl)

        async def wait_for_release(delay: float) -> bool:
            nonlocal sub
            if mode == "notify" and sub is None:
                from .leases.notify import async_subscriber

                sub = async_subscriber(self._mgr)
                try:
                    for k in self.keys:
                        watches.append(await sub.watch(_kb(k), woke.set))
                    return True
                except Exception as exc:
                    log.debug("cannot subscribe for %r: %r; polling", self.name, exc)
            if watches:
                try:
                    await asyncio.wait_for(woke.wait(), delay)
                except asyncio.TimeoutError:
                    pass
            else:
                await asyncio.sleep(delay)
            return False

        try:
            permit = await _policy.run_async(attempt, retry, wait=wait_for_release)
        finally:
            for w in watches:
                sub.unwatch(w)
        if permit is None:
            raise LockTimeout(self.name, retry.attempts)
        return permit

    def lock(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
             retry_count: Optional[int] = None, wait: Optional[str] = None, auto_extend: bool = False,
             max_hold: Optional[float] = None, on_lost: Optional[Callable[..., Any]] = None,
             margin: Optional[float] = None, cancel: bool = True,
             renew_fraction: float = 1.0 / 3.0) -> "_AsyncPermitContext":
        """``async with sem.lock() as permit:``; lease options as in
        ``quorumlock.aio.LockManager.lock`` (a lost lease cancels the block
        unless ``cancel=False`` and raises ``LockLost``)."""
        opts = dict(auto_extend=auto_extend, max_hold=max_hold, on_lost=on_lost, margin=margin,
                    renew_fraction=renew_fraction)
        opts = _lease_opts(opts)
        if opts is not None:
            opts["cancel"] = bool(cancel)
        return _AsyncPermitContext(self, ttl, timeout, retry_count, wait, opts)


class _AsyncPermitContext(_PermitContext):
    __slots__ = ()

    async def __aenter__(self) -> Any:
        ttl, timeout, retry, wait = self._args
        permit = await self._sem.acquire(ttl, timeout=timeout, retry_count=retry, wait=wait)
        self._permit = permit
        if self._opts is not None:
            from .leases import _async as la

            try:
                self._lease = la.guard(self._sem._mgr, permit, **self._opts)
            except BaseException:
                await asyncio.shield(self._sem._mgr.release_lock(permit))
                raise
        return permit

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        permit, self._permit = self._permit, None
        lease, self._lease = self._lease, None
        if permit is None:
            return
        mgr = self._sem._mgr
        if lease is not None:
            lease.in_body = False
            if mgr.lease_renewer is not None:
                mgr.lease_renewer.discard(lease)
        await asyncio.shield(mgr.release_lock(permit))
        if lease is None or lease.reason is None:
            return
        err = LockLost(f"lease on {permit.key!r} lost: {lease.reason}")
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and lease.cancelled:
            task = asyncio.current_task()
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None and uncancel() > 0:
                return
            raise err from exc
        if exc_type is None:
            raise err

    def __enter__(self) -> Any:
        raise TypeError("this semaphore belongs to an asyncio LockManager: use 'async with'")


def raise_lost_on_exit(exc_type: Any, cancelled_by_guard: bool) -> bool:
    """asyncio blocks: should a lost lease turn the block's exit into
    ``LockLost``?  Yes when the block ended normally, or was cancelled by the
    guard (and nobody else cancelled the task: that cancellation wins)."""
    if exc_type is None:
        return True
    if issubclass(exc_type, asyncio.CancelledError) and cancelled_by_guard:
        task = asyncio.current_task()
        uncancel = getattr(task, "uncancel", None)
        return not (uncancel is not None and uncancel() > 0)
    return False


def _retrieve(fut: Any) -> None:
    if not fut.cancelled():
        fut.exception()


async def await_batch(mgr: Any, batch: Any) -> List[Any]:
    """Await an ``acquire_many`` result without ever losing its locks: if the
    waiting task is cancelled (even after the batch completed but before the
    task resumed), whatever the batch granted is released when it completes."""
    fut = asyncio.ensure_future(batch)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        def undo(f: Any) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            granted = [r for r in f.result() if r is not None]
            if granted:
                asyncio.ensure_future(mgr.release_many(granted)).add_done_callback(_retrieve)

        fut.add_done_callback(undo)
        raise
