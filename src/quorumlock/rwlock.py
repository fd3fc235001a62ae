"""Quorum read-write locks: shared readers, exclusive writers, no writer starvation.

```python
rw = locks.rwlock("catalog", max_readers=16, ttl=30.0)
with rw.read(timeout=5.0) as permit:     # up to 16 readers at once, never with a writer
    ...
with rw.write(timeout=5.0) as wl:        # alone: no reader, no other writer
    ...
permit = rw.acquire_read(); permit.release()
wl = rw.acquire_write(); wl.release()
```

(``async with`` / ``await`` on a ``quorumlock.aio.LockManager``.)

Keys: ``max_readers`` reader-permit keys ``{name}:read:0`` .. and the
writer-intent key ``{name}:write``, each a Redlock mutex.

* A **reader** holds one reader-permit key (a semaphore of ``max_readers``
  permits, ``quorumlock.semaphore``); the permit is a ``Lock``.
* A **writer** holds the intent key *and every* reader-permit key.  Its first
  attempt asks for all of them in one pipelined round; after it holds the
  intent key it keeps the permits it got and asks, every round, only for the
  ones still held by readers, until it has them all.

Safety comes from the permits alone: a writer holds every reader-permit key,
a reader holds one, and each key is a mutex; so a reader and a writer never
hold at the same time, and two writers never do (both would hold permit 0,
and the intent key).  The intent key adds liveness: a reader's attempt also
reads it (``EXISTS``, in the same round as its permit attempt) and backs off,
releasing what it got, while a writer holds it on a majority.  So once a
writer holds the intent key, no new reader enters; the writer waits at most
for the readers already in (as long as their leases last), and writers queue
on the intent key among themselves.  See docs/semaphores.md.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable, List, Optional

from . import _policy
from .errors import LockLost, LockNotOwned, LockTimeout
from .semaphore import (
    _Base, _lease_opts, _retrieve, await_batch, raise_lost_on_exit, check_name, check_permits, permit_keys, pick,
)

__all__ = ["RWLock", "AsyncRWLock", "WriteLock"]

log = logging.getLogger("quorumlock")

#: Default number of reader permits.
DEFAULT_MAX_READERS = 16


def _intent_key(name: Any) -> Any:
    return name + b":write" if isinstance(name, bytes) else f"{name}:write"


def _intent_held(replies: List[Any], quorum: int) -> bool:
    """A writer holds (or is taking) the intent key: a majority has it."""
    return sum(1 for r in replies if r == 1) >= quorum


class WriteLock:
    """A held write lock: the intent key and every reader-permit key.

    ``key`` (the rwlock's name), ``locks`` (the component ``Lock`` objects),
    ``fence`` (the intent key's fence with ``fencing=True``: it grows with
    every writer, so a storage can refuse a stale writer), ``validity`` (the
    smallest of the components'), ``valid``, ``released``.  ``release()``,
    ``extend()`` and ``check()`` act on all components (awaitables with the
    asyncio manager); ``lost`` is an event set when any component's lease is
    lost (after ``guard()`` / ``write(auto_extend=True)``)."""

    def __init__(self, mgr: Any, name: Any, intent: Any, permits: List[Any], aio: bool) -> None:
        self._mgr = mgr
        self.key = name
        self.intent = intent
        self.permits = permits
        self.locks = [intent] + list(permits)
        self._aio = aio
        self._lost: Any = None
        self._on_lost: Optional[Callable[..., Any]] = None
        self.reason: Optional[str] = None
        # asyncio ``cancel=True``: the task to cancel, once, when the first
        # component is lost (the components' own leases never cancel it:
        # several lost together would cancel it several times).
        self._cancel_task: Any = None
        #: Whether a lost component made the guard cancel the task (asyncio).
        self.cancelled = False

    @property
    def fence(self) -> Optional[int]:
        return self.intent.fence

    @property
    def validity(self) -> float:
        return min(lk.validity for lk in self.locks)

    @property
    def valid(self) -> bool:
        return all(lk.valid for lk in self.locks)

    @property
    def released(self) -> bool:
        return all(lk.released for lk in self.locks)

    @property
    def deadline_ns(self) -> int:
        return min(lk.deadline_ns for lk in self.locks)

    def release(self) -> Any:
        """Release every component (one batch per node): True when all of
        them were still ours on a majority (an awaitable in asyncio)."""
        for lk in self.locks:
            st = lk._state
            if st is not None and self._mgr.lease_renewer is not None:
                self._mgr.lease_renewer.discard(st)
        res = self._mgr.release_many(self.locks)
        if self._aio:
            return _all_true(res)
        return all(res)

    def extend(self, ttl: Optional[float] = None) -> Any:
        """Extend every component (all extends written in one batch per
        node); ``LockNotOwned`` unless every one succeeded."""
        if self._aio:
            return self._aextend(ttl)
        mgr = self._mgr
        eng = mgr.checkout()
        ttls = [mgr.ttl_ms(ttl) if ttl is not None else int(round(lk.ttl * 1000)) for lk in self.locks]
        ops = eng.extend_each_sync(self.locks, ttls)
        if not all(op.result is True for op in ops):
            raise LockNotOwned(f"could not extend the write lock {self.key!r}: "
                               f"{sum(1 for op in ops if op.result is not True)} of {len(ops)} keys not held")
        return True

    async def _aextend(self, ttl: Optional[float]) -> bool:
        res = await asyncio.gather(*[lk.extend(ttl) for lk in self.locks], return_exceptions=True)
        bad = [r for r in res if r is not True]
        if bad:
            raise LockNotOwned(f"could not extend the write lock {self.key!r}: {len(bad)} of {len(res)} keys not held")
        return True

    def check(self) -> float:
        """``LockLost`` if any component's lease is lost; else the validity left."""
        if self.reason is not None:
            raise LockLost(f"write lock {self.key!r} lost: {self.reason}")
        return min(lk.check() for lk in self.locks)

    @property
    def lost(self) -> Any:
        """An event (``threading.Event`` / ``asyncio.Event``) set when the lease
        of any component is lost.  Reading it starts watching the components."""
        if self._lost is None:
            self.guard(auto_extend=False)
        return self._lost

    def guard(self, *, auto_extend: bool = True, max_hold: Optional[float] = None,
              on_lost: Optional[Callable[..., Any]] = None, margin: Optional[float] = None,
              renew_fraction: float = 1.0 / 3.0, cancel: bool = False) -> "WriteLock":
        """Watch (and with ``auto_extend`` renew: all components in one round)
        every component; ``on_lost(write_lock, reason)`` once, when the first
        one is lost.  ``cancel`` (asyncio): cancel the current task then."""
        if on_lost is not None and not callable(on_lost):
            raise TypeError(f"on_lost must be callable, got {on_lost!r}")
        if self._lost is None:
            self._lost = asyncio.Event() if self._aio else threading.Event()
        self._on_lost = on_lost
        if self._aio:
            from .leases import _async as impl
            kw = dict(cancel=False)
            self._cancel_task = asyncio.current_task() if cancel else None
        else:
            from .leases import _thread as impl  # type: ignore[no-redef]
            kw = {}
        leases = []
        for lk in self.locks:
            leases.append(impl.guard(self._mgr, lk, auto_extend=auto_extend, max_hold=max_hold,
                                     on_lost=self._part_lost, margin=margin, renew_fraction=renew_fraction, **kw))
        self._leases = leases
        return self

    def _part_lost(self, lock: Any, reason: str) -> Any:
        if self.reason is not None:
            return
        self.reason = f"{lock.key!r}: {reason}"
        task, self._cancel_task = self._cancel_task, None
        if task is not None and not task.done():   # cancel first, as a plain guard does
            self.cancelled = True
            task.cancel(f"quorumlock: write lock {self.key!r} lost: {self.reason}")
        ev = self._lost
        if ev is not None:
            ev.set()
        cb = self._on_lost
        if cb is not None:
            # Returned to the component's lease, which runs an awaitable
            # result (an ``async def`` on_lost) as a task.
            return cb(self, self.reason)
        return None

    def _unguard(self) -> None:
        self._cancel_task = None   # the block is over: never cancel the task now
        r = self._mgr.lease_renewer
        for lease in getattr(self, "lease_renewer", ()):
            lease.in_body = False
            if r is not None:
                r.discard(lease)

    def __repr__(self) -> str:
        state = "released" if self.released else ("valid %.3fs" % self.validity if self.valid else "expired")
        return f"<WriteLock {self.key!r} {state} keys={len(self.locks)}>"


def _least_validity(intent: Any, held: dict) -> float:
    """The validity left of a waiting writer's collection: its least valid part."""
    return min([intent.validity] + [lk.validity for lk in held.values()])


async def _all_true(fut: Any) -> bool:
    return all(await fut)


class _RWBase(_Base):
    def __init__(self, mgr: Any, name: Any, max_readers: Any, ttl: Optional[float]) -> None:
        name = check_name(name)
        max_readers = check_permits(max_readers, "max_readers")
        _Base.__init__(self, mgr, name, max_readers, ttl)
        self.max_readers = max_readers
        self.keys = permit_keys(name, max_readers, "read")
        self.intent_key = _intent_key(name)
        self._wait_opts: Any = None

    def _ttl(self, ttl: Optional[float]) -> Optional[float]:
        return self.ttl if ttl is None else ttl

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} max_readers={self.max_readers}>"


class RWLock(_RWBase):
    """A quorum read-write lock on a blocking manager
    (``locks.rwlock(name, max_readers=16, ttl=...)``); see the module docstring."""

    # -- readers -------------------------------------------------------------

    def try_read(self, ttl: Optional[float] = None) -> Optional[Any]:
        """One reader attempt (one round: the permit keys and a read of the
        intent key): a reader permit (``Lock``), or None — also when a writer
        holds the intent key."""
        mgr = self._mgr
        eng = mgr.checkout()
        t = mgr.options.node_timeout
        # Queued before the permit batch: written with it, in the same write.
        probes = [eng.call_op(i, ("EXISTS", self.intent_key), t) if nd.ready else None
                  for i, nd in enumerate(eng.nodes)]
        results = mgr.acquire_many(self._order(), self._ttl(ttl))
        self.attempts += 1
        replies = [None if op is None else eng.wait(op) for op in probes]
        keep, extras = pick(results, self._rng)
        if keep is not None and _intent_held(replies, mgr.quorum):
            extras.append(keep)
            keep = None
        if extras:
            try:
                mgr.release_many(extras)
            except Exception as exc:
                log.warning("releasing reader permits of %r failed: %r", self.name, exc)
        return keep

    def acquire_read(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
                     retry_count: Optional[int] = None) -> Any:
        """A reader permit, retrying with jitter; else ``LockTimeout``."""
        return _retry_sync(self, lambda: self.try_read(ttl), timeout, retry_count)

    def read(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
             retry_count: Optional[int] = None, **lease: Any) -> "_ReadContext":
        """``with rw.read() as permit:``; lease options (``auto_extend``,
        ``max_hold``, ``on_lost``, ``margin``, ``renew_fraction``) as in
        ``LockManager.lock``."""
        return _ReadContext(self, ttl, timeout, retry_count, _check_lease(lease))

    # -- writers -------------------------------------------------------------

    def try_write(self, ttl: Optional[float] = None) -> Optional[WriteLock]:
        """One writer attempt (one round): a ``WriteLock`` if the intent key
        and every reader permit were granted, else None (nothing kept)."""
        mgr = self._mgr
        keys = [self.intent_key] + self._order()
        res = mgr.acquire_many(keys, self._ttl(ttl))
        self.attempts += 1
        if all(r is not None for r in res):
            return WriteLock(mgr, self.name, res[0], res[1:], aio=False)
        granted = [r for r in res if r is not None]
        if granted:
            mgr.release_many(granted)
        return None

    def acquire_write(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
                      retry_count: Optional[int] = None) -> WriteLock:
        """A ``WriteLock``: take the intent key (new readers back off), then
        collect every reader permit as the readers leave; ``LockTimeout``
        (releasing what was collected) if ``timeout`` passes first."""
        mgr = self._mgr
        ttl_v = self._ttl(ttl)
        retry = self._retry(timeout, retry_count)
        intent: Any = None
        held: dict = {}
        ok = False
        try:
            while True:
                if intent is not None and _least_validity(intent, held) < intent.ttl / 2:
                    try:
                        for lk in [intent] + list(held.values()):
                            lk.extend()
                    except LockNotOwned:     # lost part of it while waiting: start over
                        mgr.release_many([intent] + list(held.values()))
                        intent, held = None, {}
                missing = [k for k in self.keys if k not in held]
                ask = ([self.intent_key] if intent is None else []) + missing
                res = mgr.acquire_many(ask, ttl_v)
                self.attempts += 1
                if intent is None:
                    if res[0] is None:
                        back = [r for r in res if r is not None]
                        if back:
                            mgr.release_many(back)
                    else:
                        intent = res[0]
                        for k, r in zip(missing, res[1:]):
                            if r is not None:
                                held[k] = r
                else:
                    for k, r in zip(missing, res):
                        if r is not None:
                            held[k] = r
                if intent is not None and len(held) == len(self.keys) and _least_validity(intent, held) > 0:
                    ok = True
                    return WriteLock(mgr, self.name, intent, [held[k] for k in self.keys], aio=False)
                # (All collected but some lease already ran out during a slow
                # round: the next turn extends them, or starts over.)
                delay = retry.failed(time.monotonic())
                if delay is None:
                    break
                time.sleep(delay)
                if not retry.woke(time.monotonic()):
                    break
        finally:
            if not ok:
                back = ([intent] if intent is not None else []) + list(held.values())
                if back:
                    try:
                        mgr.release_many(back)
                    except Exception as exc:
                        log.warning("releasing a failed write attempt on %r: %r", self.name, exc)
        raise LockTimeout(self.name, retry.attempts)

    def write(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
              retry_count: Optional[int] = None, **lease: Any) -> "_WriteContext":
        """``with rw.write() as wl:``; lease options as in ``read``."""
        return _WriteContext(self, ttl, timeout, retry_count, _check_lease(lease))


def _check_lease(lease: dict) -> Optional[dict]:
    allowed = ("auto_extend", "max_hold", "on_lost", "margin", "renew_fraction", "cancel")
    for k in lease:
        if k not in allowed:
            raise TypeError(f"unexpected keyword argument {k!r}")
    return _lease_opts(lease)


def _retry_sync(obj: Any, attempt: Callable[[], Any], timeout: Any, retry_count: Any) -> Any:
    retry = obj._retry(timeout, retry_count)
    got = _policy.run_blocking(attempt, retry)
    if got is None:
        raise LockTimeout(obj.name, retry.attempts)
    return got


async def _retry_async(obj: Any, attempt: Callable[[], Any], timeout: Any, retry_count: Any) -> Any:
    retry = obj._retry(timeout, retry_count)
    got = await _policy.run_async(attempt, retry)
    if got is None:
        raise LockTimeout(obj.name, retry.attempts)
    return got


class AsyncRWLock(_RWBase):
    """A quorum read-write lock on a ``quorumlock.aio.LockManager``; the same
    methods as ``RWLock``, returning awaitables."""

    async def try_read(self, ttl: Optional[float] = None) -> Optional[Any]:
        mgr = self._mgr
        # The probe task first, then the permit batch: both are queued in this
        # loop iteration and written together.
        probe = asyncio.ensure_future(mgr.call_nodes([("EXISTS", self.intent_key)] * mgr.n))
        try:
            results = await await_batch(mgr, mgr.acquire_many(self._order(), self._ttl(ttl)))
        except BaseException:
            probe.cancel()
            raise
        self.attempts += 1
        try:
            replies = await probe
        except BaseException:
            # Cancelled while the intent probe was out: the permits got are nobody's.
            granted = [r for r in results if r is not None]
            if granted:
                asyncio.ensure_future(mgr.release_many(granted)).add_done_callback(_retrieve)
            raise
        keep, extras = pick(results, self._rng)
        if keep is not None and _intent_held(replies, mgr.quorum):
            extras.append(keep)
            keep = None
        if extras:
            asyncio.ensure_future(mgr.release_many(extras)).add_done_callback(_retrieve)
        return keep

    def acquire_read(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
                     retry_count: Optional[int] = None) -> Any:
        return _retry_async(self, lambda: self.try_read(ttl), timeout, retry_count)

    def read(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
             retry_count: Optional[int] = None, **lease: Any) -> "_ReadContext":
        return _ReadContext(self, ttl, timeout, retry_count, _check_lease(lease))

    async def try_write(self, ttl: Optional[float] = None) -> Optional[WriteLock]:
        mgr = self._mgr
        res = await await_batch(mgr, mgr.acquire_many([self.intent_key] + self._order(), self._ttl(ttl)))
        self.attempts += 1
        if all(r is not None for r in res):
            return WriteLock(mgr, self.name, res[0], res[1:], aio=True)
        granted = [r for r in res if r is not None]
        if granted:
            await mgr.release_many(granted)
        return None

    async def acquire_write(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
                            retry_count: Optional[int] = None) -> WriteLock:
        mgr = self._mgr
        ttl_v = self._ttl(ttl)
        retry = self._retry(timeout, retry_count)
        intent: Any = None
        held: dict = {}
        ok = False
        try:
            while True:
                if intent is not None and _least_validity(intent, held) < intent.ttl / 2:
                    parts = [intent] + list(held.values())
                    res = await asyncio.gather(*[lk.extend() for lk in parts], return_exceptions=True)
                    if any(r is not True for r in res):   # lost part of it while waiting: start over
                        await asyncio.shield(mgr.release_many(parts))
                        intent, held = None, {}
                missing = [k for k in self.keys if k not in held]
                ask = ([self.intent_key] if intent is None else []) + missing
                res = await await_batch(mgr, mgr.acquire_many(ask, ttl_v))
                self.attempts += 1
                if intent is None:
                    if res[0] is None:
                        back = [r for r in res if r is not None]
                        if back:
                            await mgr.release_many(back)
                    else:
                        intent = res[0]
                        for k, r in zip(missing, res[1:]):
                            if r is not None:
                                held[k] = r
                else:
                    for k, r in zip(missing, res):
                        if r is not None:
                            held[k] = r
                if intent is not None and len(held) == len(self.keys) and _least_validity(intent, held) > 0:
                    ok = True
                    return WriteLock(mgr, self.name, intent, [held[k] for k in self.keys], aio=True)
                delay = retry.failed(time.monotonic())
                if delay is None:
                    break
                await asyncio.sleep(delay)
                if not retry.woke(time.monotonic()):
                    break
        finally:
            if not ok:
                back = ([intent] if intent is not None else []) + list(held.values())
                if back:
                    await asyncio.shield(mgr.release_many(back))
        raise LockTimeout(self.name, retry.attempts)

    def write(self, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
              retry_count: Optional[int] = None, **lease: Any) -> "_WriteContext":
        return _WriteContext(self, ttl, timeout, retry_count, _check_lease(lease))


class _ReadContext:
    """``with rw.read()`` / ``async with rw.read()``."""

    __slots__ = ("_rw", "_args", "_opts", "_held", "_lease")

    def __init__(self, rw: Any, ttl: Any, timeout: Any, retry: Any, opts: Optional[dict]) -> None:
        self._rw = rw
        self._args = (ttl, timeout, retry)
        self._opts = opts
        self._held: Any = None
        self._lease: Any = None

    def _acquire(self) -> Any:
        ttl, timeout, retry = self._args
        return self._rw.acquire_read(ttl, timeout=timeout, retry_count=retry)

    def _guard(self, held: Any, aio: bool) -> None:
        if self._opts is None:
            return
        opts = dict(self._opts)
        if aio:
            from .leases import _async as la
            opts.setdefault("cancel", True)
            self._lease = la.guard(self._rw._mgr, held, **opts)
        else:
            from .leases import _thread as lt
            opts.pop("cancel", None)
            self._lease = lt.guard(self._rw._mgr, held, **opts)

    def _cancelled(self) -> bool:
        """The guard cancelled the task (asyncio)."""
        return bool(getattr(self._lease, "cancelled", False))

    def _unguard(self) -> Optional[str]:
        lease, self._lease = self._lease, None
        if lease is None:
            return None
        lease.in_body = False
        r = self._rw._mgr.lease_renewer
        if r is not None:
            r.discard(lease)
        return lease.reason

    def _name(self, held: Any) -> Any:
        return held.key

    def __enter__(self) -> Any:
        if isinstance(self._rw, (AsyncRWLock,)):
            raise TypeError("this rwlock belongs to an asyncio LockManager: use 'async with'")
        held = self._acquire()
        self._held = held
        try:
            self._guard(held, aio=False)
        except BaseException:
            held.release()
            raise
        return held

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        reason = self._unguard()
        held.release()
        if reason is not None and exc_type is None:
            raise LockLost(f"lease on {self._name(held)!r} lost: {reason}")

    async def __aenter__(self) -> Any:
        if not isinstance(self._rw, AsyncRWLock):   # refused before acquiring anything
            raise TypeError("this rwlock belongs to a blocking LockManager: use 'with', not 'async with'")
        held = await self._acquire()
        self._held = held
        try:
            self._guard(held, aio=True)
        except BaseException:
            await asyncio.shield(held.release())
            raise
        return held

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        cancelled = self._cancelled()
        reason = self._unguard()
        await asyncio.shield(held.release())
        if reason is not None and raise_lost_on_exit(exc_type, cancelled):
            raise LockLost(f"lease on {self._name(held)!r} lost: {reason}") from exc


class _WriteContext(_ReadContext):
    """``with rw.write()`` / ``async with rw.write()``."""

    __slots__ = ()

    def _acquire(self) -> Any:
        ttl, timeout, retry = self._args
        return self._rw.acquire_write(ttl, timeout=timeout, retry_count=retry)

    def _guard(self, held: Any, aio: bool) -> None:
        if self._opts is None:
            return
        opts = dict(self._opts)
        if aio:
            opts.setdefault("cancel", True)
        else:
            opts.pop("cancel", None)
        held.guard(**opts)
        self._lease = held

    def _cancelled(self) -> bool:
        held = self._lease
        return held is not None and held.cancelled

    def _unguard(self) -> Optional[str]:
        held, self._lease = self._lease, None
        if held is None:
            return None
        held._unguard()
        return held.reason
