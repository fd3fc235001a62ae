"""Reentrant locks: the same owner may take a key it already holds.

```python
with locks.lock("job:42", reentrant=True) as outer:      # acquires
    with locks.lock("job:42", reentrant=True) as inner:  # same thread: count 2, no I/O
        ...
    # count 1: still held
# released here, by the last release
```

The owner is the calling **thread** with the blocking manager and the current
**task** with the asyncio one (a task it starts is another owner and waits
like anybody else; so is the task ``asyncio.wait_for`` creates on Python 3.11
and older: pass ``timeout=`` instead).  Only the first acquisition talks to the nodes; later ones
by the same owner increase a count, and each ``release()`` (or block exit)
decreases it; the last one releases the key.  Every acquisition returns its
own ``ReentrantLock`` handle, so releasing one handle twice counts once.

Re-entering a key whose lease is no longer valid (it expired, was lost, or
was released behind the handles' back through the underlying ``Lock``)
raises ``LockLost``: the outer holder's protection is gone, and a silent fresh
acquire would hide that.

Only reentrant acquisitions count: a plain ``acquire`` of a key the owner
holds reentrantly is a new Redlock attempt (and fails while it is held).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Dict, Optional, Tuple

from .errors import LockLost

__all__ = ["ReentrantLock", "acquire", "aacquire", "LockContext", "AsyncLockContext", "depth"]

_LEASE = ("auto_extend", "max_hold", "on_lost", "margin", "renew_fraction", "cancel")


class _Entry:
    __slots__ = ("owner", "lock", "count", "lease")

    def __init__(self, owner: Any, lock: Any) -> None:
        self.owner = owner
        self.lock = lock
        self.count = 0
        self.lease: Any = None


# manager -> {(id(owner), key bytes): _Entry}
_tables: "weakref.WeakKeyDictionary[Any, Dict[Tuple[int, bytes], _Entry]]" = weakref.WeakKeyDictionary()
_mutex = threading.Lock()


def _kb(key: Any) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"key must be str or bytes, got {type(key).__name__}")


def _owner(aio: bool) -> Any:
    if aio:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a reentrant asyncio lock needs a running task (its owner)")
        return task
    return threading.current_thread()


def _table(mgr: Any) -> Dict[Tuple[int, bytes], _Entry]:
    with _mutex:
        t = _tables.get(mgr)
        if t is None:
            t = _tables[mgr] = {}
        return t


def _lookup(mgr: Any, key: Any, aio: bool) -> Tuple[Tuple[int, bytes], Any, Optional[_Entry]]:
    owner = _owner(aio)
    slot = (id(owner), _kb(key))
    with _mutex:
        e = _table_nolock(mgr).get(slot)
    if e is not None and e.owner is not owner:
        e = None   # a dead owner's id reused: not ours
    return slot, owner, e


def _table_nolock(mgr: Any) -> Dict[Tuple[int, bytes], _Entry]:
    t = _tables.get(mgr)
    if t is None:
        t = _tables[mgr] = {}
    return t


def depth(mgr: Any, key: Any, aio: bool = False) -> int:
    """How many reentrant acquisitions of ``key`` the calling owner holds."""
    _, _, e = _lookup(mgr, key, aio)
    return 0 if e is None else e.count


def _reenter(e: _Entry) -> bool:
    """Count one more acquisition of a held entry; False when its last
    handle was released meanwhile (by another thread: the key is on its way
    out, so the caller acquires afresh).  The count changes under ``_mutex``
    on both sides, so a release and a re-entry never interleave."""
    with _mutex:
        if e.count <= 0:
            return False
        lk = e.lock
        if lk.released or not lk.valid:
            raise LockLost(f"lease on {lk.key!r} lost while held reentrantly (depth {e.count})")
        st = lk._state
        reason = getattr(st, "reason", None)
        if reason is not None:
            raise LockLost(f"lease on {lk.key!r} lost: {reason}")
        e.count += 1
        return True


class ReentrantLock:
    """One reentrant acquisition of a key: ``lock`` (the underlying ``Lock``,
    shared by the owner's acquisitions), ``depth`` (acquisitions still held),
    ``key``, ``token``, ``fence``, ``validity``, ``valid``, ``lost``,
    ``check()``, ``extend()``; ``release()`` releases this acquisition (the
    key when it is the last)."""

    __slots__ = ("_mgr", "_slot", "_entry", "_aio", "_done")

    def __init__(self, mgr: Any, slot: Tuple[int, bytes], entry: _Entry, aio: bool) -> None:
        self._mgr = mgr
        self._slot = slot
        self._entry = entry
        self._aio = aio
        self._done = False

    lock = property(lambda self: self._entry.lock)
    key = property(lambda self: self._entry.lock.key)
    token = property(lambda self: self._entry.lock.token)
    fence = property(lambda self: self._entry.lock.fence)
    validity = property(lambda self: self._entry.lock.validity)
    valid = property(lambda self: self._entry.lock.valid)
    ttl = property(lambda self: self._entry.lock.ttl)
    lost = property(lambda self: self._entry.lock.lost)
    depth = property(lambda self: self._entry.count)

    @property
    def released(self) -> bool:
        return self._done

    def check(self) -> float:
        return self._entry.lock.check()

    def extend(self, ttl: Optional[float] = None) -> Any:
        return self._entry.lock.extend(ttl)

    def release(self) -> Any:
        """Release this acquisition: the last one releases the key (its
        result: True if it was still ours on a majority); earlier ones return
        True.  An awaitable with the asyncio manager."""
        r = self._release()
        if self._aio and not hasattr(r, "__await__"):
            return _ready(r)
        return r

    def _release(self) -> Any:
        if self._done:
            return False
        self._done = True
        e = self._entry
        with _mutex:
            e.count -= 1
            if e.count > 0:
                return True
            t = _tables.get(self._mgr)
            if t is not None and t.get(self._slot) is e:
                del t[self._slot]
        lease = e.lease
        if lease is not None:
            lease.in_body = False
            r = self._mgr.lease_renewer
            if r is not None:
                r.discard(lease)
        return self._mgr.release_lock(e.lock)

    def __enter__(self) -> "ReentrantLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._release()

    async def __aenter__(self) -> "ReentrantLock":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        r = self._release()
        if hasattr(r, "__await__"):
            await asyncio.shield(r)

    def __repr__(self) -> str:
        return f"<ReentrantLock {self.key!r} depth={self.depth} {'released' if self._done else 'held'}>"


async def _ready(v: Any) -> Any:
    return v


def _new_entry(mgr: Any, slot: Tuple[int, bytes], owner: Any, lock: Any) -> _Entry:
    e = _Entry(owner, lock)
    e.count = 1
    with _mutex:
        _table_nolock(mgr)[slot] = e
    return e


def acquire(mgr: Any, key: Any, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
            retry_count: Optional[int] = None, wait: Optional[str] = None) -> ReentrantLock:
    """``LockManager.acquire(key, reentrant=True)`` (blocking)."""
    slot, owner, e = _lookup(mgr, key, False)
    if e is not None and _reenter(e):
        return ReentrantLock(mgr, slot, e, False)
    lock = mgr.acquire(key, ttl, timeout=timeout, retry_count=retry_count, wait=wait)
    return ReentrantLock(mgr, slot, _new_entry(mgr, slot, owner, lock), False)


async def aacquire(mgr: Any, key: Any, ttl: Optional[float] = None, *, timeout: Optional[float] = None,
                   retry_count: Optional[int] = None, wait: Optional[str] = None) -> ReentrantLock:
    """``await LockManager.acquire(key, reentrant=True)`` (asyncio)."""
    slot, owner, e = _lookup(mgr, key, True)
    if e is not None and _reenter(e):
        return ReentrantLock(mgr, slot, e, True)
    lock = await mgr.acquire(key, ttl, timeout=timeout, retry_count=retry_count, wait=wait)
    # Another acquisition by this task cannot have raced in: a task does one thing at a time.
    return ReentrantLock(mgr, slot, _new_entry(mgr, slot, owner, lock), True)


def _guard_opts(opts: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    for k in opts:
        if k not in _LEASE:
            raise TypeError(f"unexpected keyword argument {k!r}")
    if any(opts.get(k) not in (None, False) for k in ("auto_extend", "max_hold", "on_lost", "margin")):
        return opts
    return None


class LockContext:
    """``with locks.lock(key, reentrant=True, ...)``: only the owner's first
    acquisition guards the lease (lease options of nested blocks are
    ignored); the outermost block raises ``LockLost`` on exit if it was lost."""

    __slots__ = ("_mgr", "_key", "_ttl", "_timeout", "_retry", "_wait", "_opts", "_held", "_guarded")

    def __init__(self, mgr: Any, key: Any, ttl: Any, timeout: Any, retry: Any, wait: Any, **opts: Any) -> None:
        self._mgr = mgr
        self._key = key
        self._ttl = ttl
        self._timeout = timeout
        self._retry = retry
        self._wait = wait
        self._opts = _guard_opts(opts)
        self._held: Optional[ReentrantLock] = None
        self._guarded = False

    def __enter__(self) -> ReentrantLock:
        h = acquire(self._mgr, self._key, self._ttl, timeout=self._timeout, retry_count=self._retry,
                    wait=self._wait)
        self._held = h
        if self._opts is not None and h.depth == 1:
            from .leases import _thread as lt

            opts = {k: v for k, v in self._opts.items() if k != "cancel"}
            try:
                h._entry.lease = lt.guard(self._mgr, h.lock, **opts)
            except BaseException:
                h._release()
                raise
            self._guarded = True
        return h

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        h, self._held = self._held, None
        if h is None:
            return
        lease = h._entry.lease if self._guarded else None
        h._release()
        if lease is not None and lease.reason is not None and exc_type is None:
            raise LockLost(f"lease on {h.key!r} lost: {lease.reason}")


class AsyncLockContext(LockContext):
    """``async with locks.lock(key, reentrant=True, ...)``."""

    __slots__ = ()

    def __enter__(self) -> ReentrantLock:
        raise TypeError("this lock belongs to an asyncio LockManager: use 'async with'")

    async def __aenter__(self) -> ReentrantLock:
        h = await aacquire(self._mgr, self._key, self._ttl, timeout=self._timeout, retry_count=self._retry,
                           wait=self._wait)
        self._held = h
        if self._opts is not None and h.depth == 1:
            from .leases import _async as la

            opts = dict(self._opts)
            opts.setdefault("cancel", True)
            try:
                h._entry.lease = la.guard(self._mgr, h.lock, **opts)
            except BaseException:
                await asyncio.shield(h._release())
                raise
            self._guarded = True
        return h

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        h, self._held = self._held, None
        if h is None:
            return
        lease = h._entry.lease if self._guarded else None
        r = h._release()
        if hasattr(r, "__await__"):
            await asyncio.shield(r)
        if lease is not None and lease.reason is not None:
            from .semaphore import raise_lost_on_exit

            if raise_lost_on_exit(exc_type, lease.cancelled):
                raise LockLost(f"lease on {h.key!r} lost: {lease.reason}") from exc
