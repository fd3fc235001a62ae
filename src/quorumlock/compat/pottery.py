"""Drop-in for pottery 3's ``Redlock``, ``AIORedlock`` and ``synchronize``.

```python
from redis import Redis
from quorumlock.compat.pottery import Redlock   # was: from pottery import Redlock

masters = {Redis(port=7001), Redis(port=7002), Redis(port=7003)}
printer_lock = Redlock(key="printer", masters=masters, auto_release_time=10)
with printer_lock:
    ...
```

Same keyword-only constructor (and its ``ValueError``), the same key on every
master (``redlock:<key>``), the same methods and return values, ``__slots__``,
``repr``, non-reentrancy, and the same INFO record on the ``pottery`` logger
when a blocking acquire had to wait.  The exceptions are pottery's own classes
when pottery is installed (so ``except pottery.QuorumNotAchieved`` keeps
working), else look-alikes with the same fields and bases.

The masters (redis-py clients) contribute only their connection settings: the
commands go through quorumlock's connections, pipelined to every master at once
and shared by every lock on the same masters, instead of one thread per master.
``docs/migrating.md`` lists every difference.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, ClassVar, FrozenSet, Iterable, List, Optional, Tuple, Type, TypeVar, cast

from redis import Redis
from redis.exceptions import RedisError

from .. import _policy, _scripts
from .._backend import core
from ..blocking import check_px
from . import (
    AioSharedManager,
    Script,
    SharedManager,
    Tally,
    aio_manager,
    failed_count,
    lease_timeout,
    new_token,
    node_list,
    redis_errors,
    run_script,
    run_script_async,
    sync_manager,
)

__all__ = [
    "Redlock",
    "AIORedlock",
    "synchronize",
    "PrimitiveError",
    "QuorumNotAchieved",
    "QuorumIsImpossible",
    "TooManyExtensions",
    "ExtendUnlockedLock",
    "ReleaseUnlockedLock",
]

#: pottery's logger: the "had to wait" records go here, as pottery sends them.
logger = logging.getLogger("pottery")

F = TypeVar("F", bound=Callable[..., Any])

try:  # pottery installed: raise its very classes, so every except clause keeps working
    from pottery.exceptions import (  # type: ignore[import-untyped]
        ExtendUnlockedLock,
        PrimitiveError,
        QuorumIsImpossible,
        QuorumNotAchieved,
        ReleaseUnlockedLock,
        TooManyExtensions,
    )
except ImportError:  # the same shape: dataclasses with (key, masters, redis_errors)

    @dataclass
    class PrimitiveError(Exception):  # type: ignore[no-redef]
        "Base exception class for distributed primitives."

        key: str
        masters: Iterable[Any]
        redis_errors: Iterable[RedisError] = tuple()

    class QuorumNotAchieved(PrimitiveError, RuntimeError):  # type: ignore[no-redef]
        "Consensus-based algorithm could not achieve quorum."

    class TooManyExtensions(PrimitiveError, RuntimeError):  # type: ignore[no-redef]
        "Redlock has been extended too many times."

    class ExtendUnlockedLock(PrimitiveError, RuntimeError):  # type: ignore[no-redef]
        "Attempting to extend an unlocked Redlock."

    class ReleaseUnlockedLock(PrimitiveError, RuntimeError):  # type: ignore[no-redef]
        "Attempting to release an unlocked Redlock."

    class QuorumIsImpossible(PrimitiveError, RuntimeError):  # type: ignore[no-redef]
        "Too many Redis masters threw RedisErrors; quorum can not be achieved."


# The lease left on one master.
# KEYS[1]: lock key; ARGV[1]: our token.
# Returns the key's TTL in ms if it holds our token and expires, else 0.
_ACQUIRED = Script("""if redis.call('get', KEYS[1]) == ARGV[1] then
  local ms = redis.call('pttl', KEYS[1])
  if ms > 0 then
    return ms
  end
end
return 0""")
# Compare-and-pexpire and compare-and-delete: the engine's own scripts, which
# every master loaded when quorumlock connected.
_EXTEND = Script(_scripts.EXTEND.decode())
_RELEASE = Script(_scripts.RELEASE.decode())

_default_masters: Optional[FrozenSet[Redis]] = None


def _default() -> FrozenSet[Redis]:
    # pottery's default master: $REDIS_URL, else redis://localhost:6379/0.
    global _default_masters
    if _default_masters is None:
        url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
        _default_masters = frozenset({Redis.from_url(url, socket_timeout=1)})
    return _default_masters


def _is_one(reply: Any) -> bool:
    return reply == 1


def _is_positive(reply: Any) -> bool:
    return type(reply) is int and reply > 0


class _RedlockBase:
    """The state and the verdicts of ``Redlock`` and ``AIORedlock`` (all but the I/O)."""

    __slots__ = (
        "_key",
        "_masters",
        "_shared",
        "raise_on_redis_errors",
        "auto_release_time",
        "num_extensions",
        "context_manager_blocking",
        "context_manager_timeout",
        "_token",
        "_held",
        "_deadline",
        "_extension_num",
    )

    _KEY_PREFIX: ClassVar[str] = "redlock"
    _AUTO_RELEASE_TIME: ClassVar[float] = 10
    _CLOCK_DRIFT_FACTOR: ClassVar[float] = 0.01
    _RETRY_DELAY: ClassVar[float] = 0.2
    _NUM_EXTENSIONS: ClassVar[int] = 3
    _LOG_NAME: ClassVar[str] = "redlock"

    def __init__(
        self,
        *,
        key: str,
        masters: Iterable[Any],
        raise_on_redis_errors: bool = False,
        auto_release_time: float = _AUTO_RELEASE_TIME,
        num_extensions: int = _NUM_EXTENSIONS,
        context_manager_blocking: bool = True,
        context_manager_timeout: float = -1,
    ) -> None:
        if not context_manager_blocking and context_manager_timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        self.key = key
        self.masters = masters  # type: ignore[assignment]
        self.raise_on_redis_errors = raise_on_redis_errors
        self.auto_release_time = auto_release_time
        self.num_extensions = num_extensions
        self.context_manager_blocking = context_manager_blocking
        self.context_manager_timeout = context_manager_timeout
        self._token: Optional[bytes] = None
        self._held: Any = None   # the engine's Lock of the current acquisition (released through the engine)
        self._deadline = 0
        self._extension_num = 0

    # -- pottery's attributes ------------------------------------------------

    @property
    def key(self) -> str:
        return self._key

    @key.setter
    def key(self, value: str) -> None:
        self._key = f"{self._KEY_PREFIX}:{value}"

    @property
    def masters(self) -> FrozenSet[Any]:
        """The clients given (a frozenset, as in pottery)."""
        return self._masters

    @masters.setter
    def masters(self, value: Iterable[Any]) -> None:
        masters = frozenset(value) or self._default_masters()
        node_list(masters)  # type check now, not at the first acquire
        self._masters = masters
        self._shared: Any = None

    @classmethod
    def _default_masters(cls) -> FrozenSet[Any]:
        return _default()

    def __repr__(self) -> str:
        return f"<{self.__class__.__qualname__} key={self.key}>"

    # -- arithmetic ----------------------------------------------------------

    def _drift(self) -> float:
        return self.auto_release_time * self._CLOCK_DRIFT_FACTOR + 0.002

    def _ttl_ms(self) -> Optional[int]:
        """The lease in ms, or None when no acquisition could be valid (pottery
        would set the key and find the validity gone: the same False) by
        pottery's rule or the engine's (``quorumlock.blocking.check_px``)."""
        ms = int(self.auto_release_time * 1000)
        if ms <= 0 or self.auto_release_time - self._drift() <= 0:
            return None
        try:
            check_px(ms, self._CLOCK_DRIFT_FACTOR, math.inf)
        except ValueError:
            return None
        return ms

    def _check_blocking_ttl(self) -> None:
        """A blocking acquire whose lease is too short to ever be valid would
        retry forever (pottery's does): ValueError at once, naming it."""
        if self._ttl_ms() is None:
            raise ValueError(
                f"auto_release_time={self.auto_release_time!r} s is too short to ever acquire {self.key}: the "
                f"clock-drift allowance alone is {self._drift() * 1000:.2f} ms (auto_release_time x "
                f"{self._CLOCK_DRIFT_FACTOR} + 2 ms, and 1 ms of validity)")

    def _key_bytes(self) -> bytes:
        return self._key.encode()

    def _valid_until(self, t0: int) -> int:
        return t0 + int((self.auto_release_time - self._drift()) * 1e9)

    def _check_enough_masters_up(self, raise_on_redis_errors: Optional[bool], redis_errors: List[RedisError]) -> None:
        if raise_on_redis_errors is None:
            raise_on_redis_errors = self.raise_on_redis_errors
        if raise_on_redis_errors and len(redis_errors) > len(self.masters) // 2:
            raise QuorumIsImpossible(self.key, self.masters, redis_errors=redis_errors)

    def _attempted(self, sh: SharedManager, op: Any, raise_on_redis_errors: Optional[bool]) -> bool:
        """The verdict of one engine attempt (``attempt_token``, decided by
        the engine's Redlock rule: a majority, and validity left after the
        time the attempt took)."""
        lock = op.result
        if lock is not None:
            self._token = lock.token
            self._held = lock
            self._deadline = lock.deadline_ns
            return True
        self._check_enough_masters_up(raise_on_redis_errors, redis_errors(op.outcomes()))
        return False

    def _validity(self, sh: SharedManager, results: List[Any], t0: int) -> Tuple[Optional[float], Tally]:
        tally = Tally(sh.manager.nodes, results, _is_positive)
        ttls = sorted((r / 1000 for r, st in zip(results, tally.statuses) if st == "ok"), reverse=True)
        if len(ttls) <= sh.n // 2:
            return None, tally
        # The lease a majority still has, less the drift allowance and the time
        # this query took; never more than our own clock says is left.
        now = core.monotonic_ns()
        server = ttls[sh.quorum - 1] - self._drift() - (now - t0) / 1e9
        local = (self._deadline - now) / 1e9
        return max(min(server, local), 0), tally

    def _extended(self, sh: SharedManager, results: List[Any], t0: int) -> Tuple[bool, Tally]:
        tally = Tally(sh.manager.nodes, results, _is_one)
        if tally.ok > sh.n // 2 and core.monotonic_ns() < self._valid_until(t0):
            self._extension_num += 1
            self._deadline = self._valid_until(t0)
            return True, tally
        return False, tally

    def _held_lock(self) -> Any:
        """The engine Lock of the current acquisition if the release can be the
        engine's (same token, same manager, not released), else None."""
        held, self._held = self._held, None
        if (held is not None and held.token == self._token and not held.released
                and self._shared is not None and held._owner is self._shared.manager):
            return held
        return None

    def _released_op(self, sh: SharedManager, op: Any, raise_on_redis_errors: Optional[bool]) -> None:
        """The verdict of the engine's release (``release_op``)."""
        if op.result:
            self._token = None
            return
        outcomes = op.outcomes()
        if failed_count(outcomes) <= sh.n - sh.quorum:
            # Not ours on a majority: the lease is gone (a retry cannot help).
            self._token = None
        errors = redis_errors(outcomes)
        self._check_enough_masters_up(raise_on_redis_errors, errors)
        raise ReleaseUnlockedLock(self.key, self.masters, redis_errors=errors)

    def _released(self, sh: SharedManager, results: List[Any], raise_on_redis_errors: Optional[bool]) -> None:
        tally = Tally(sh.manager.nodes, results, _is_one)
        if tally.ok > sh.n // 2:
            self._token = None
            return
        if tally.failed <= sh.n - sh.quorum:
            # Not ours on a majority: the lease is gone (a retry cannot help).
            self._token = None
        self._check_enough_masters_up(raise_on_redis_errors, tally.errors)
        raise ReleaseUnlockedLock(self.key, self.masters, redis_errors=tally.errors)

    def _log_time_enqueued(self, started: float, *, acquired: bool) -> None:
        key_suffix = self.key.split(":", maxsplit=1)[1]
        time_enqueued = math.ceil((time.monotonic() - started) * 1000)
        logger.info(
            f"source=pottery sample#{self._LOG_NAME}.enqueued.%s=%dms sample#{self._LOG_NAME}.acquired.%s=%d",
            key_suffix,
            time_enqueued,
            key_suffix,
            acquired,
        )


class Redlock(_RedlockBase):
    """Distributed lock held by a majority of Redis masters (pottery's API).

    Usage:

        >>> from redis import Redis
        >>> printer_lock = Redlock(key='printer', masters={Redis(port=7001)}, auto_release_time=.2)
        >>> if printer_lock.acquire():
        ...     # Critical section - print stuff here.
        ...     printer_lock.release()

    A Redlock times out (by default after 10 seconds): the critical section
    must complete well within ``auto_release_time``, or ``extend()`` it (at
    most ``num_extensions`` times).  It is not re-entrant: acquiring a held
    Redlock waits until its lease runs out.  It is a context manager
    (``with printer_lock:``), blocking as ``context_manager_blocking`` and
    ``context_manager_timeout`` say, raising ``QuorumNotAchieved`` if it could
    not acquire.
    """

    __slots__ = ()

    def __init__(
        self,
        *,
        key: str,
        masters: Iterable[Redis] = frozenset(),
        raise_on_redis_errors: bool = False,
        auto_release_time: float = _RedlockBase._AUTO_RELEASE_TIME,
        num_extensions: int = _RedlockBase._NUM_EXTENSIONS,
        context_manager_blocking: bool = True,
        context_manager_timeout: float = -1,
    ) -> None:
        """Initialize a Redlock.

        Keyword arguments:
            key -- a string that identifies your resource
            masters -- the Redis clients used to achieve quorum for this
                Redlock's state (only their connection settings are used)
            raise_on_redis_errors -- whether to raise the QuorumIsImpossible
                exception when too many Redis masters fail
            auto_release_time -- the timeout in seconds by which to
                automatically release this Redlock, unless it's already been
                released
            num_extensions -- the number of times that this Redlock's lease can
                be extended
            context_manager_blocking -- when using this Redlock as a context
                manager, whether to block when acquiring
            context_manager_timeout -- if context_manager_blocking, how long to
                wait when acquiring before giving up and raising the
                QuorumNotAchieved exception
        """
        super().__init__(
            key=key,
            masters=masters,
            raise_on_redis_errors=raise_on_redis_errors,
            auto_release_time=auto_release_time,
            num_extensions=num_extensions,
            context_manager_blocking=context_manager_blocking,
            context_manager_timeout=context_manager_timeout,
        )

    def _manager(self) -> SharedManager:
        sh = self._shared
        if sh is None:
            sh = self._shared = sync_manager(list(self._masters), allow_same_server=True)
        return sh

    def _acquire_masters(self, *, raise_on_redis_errors: Optional[bool] = None) -> bool:
        """One quorum attempt (``SET key token NX PX auto_release_time`` on
        every master), through the engine (``LockManager.attempt_token``)."""
        self._token = None
        self._held = None
        self._extension_num = 0
        ttl_ms = self._ttl_ms()
        if ttl_ms is None:
            return False
        sh = self._manager()
        op = sh.manager.attempt_token(self._key_bytes(), new_token(), ttl_ms, timeout=lease_timeout(sh, ttl_ms))
        return self._attempted(sh, op, raise_on_redis_errors)

    def acquire(self, *, blocking: bool = True, timeout: float = -1,
                raise_on_redis_errors: Optional[bool] = None) -> bool:
        """Lock the lock.

        If blocking is True and timeout is -1, then wait for as long as
        necessary to acquire the lock.  Return True.

        If blocking is True and timeout is not -1, then wait for up to timeout
        seconds to acquire the lock.  Return True if the lock was acquired;
        False if it wasn't.

        If blocking is False and timeout is -1, then try just once right now to
        acquire the lock.  Return True if the lock was acquired; False if it
        wasn't.
        """
        if blocking:
            self._check_blocking_ttl()
            started = time.monotonic()
            if timeout != -1 and timeout <= 0:
                return False
            retry = _policy.Retry.until(None if timeout == -1 else timeout, delay=(0, self._RETRY_DELAY),
                                        now=started)
            got = _policy.run_blocking(lambda: self._acquire_masters(raise_on_redis_errors=raise_on_redis_errors)
                                       or None, retry)
            if retry.attempts:   # waited in the queue
                self._log_time_enqueued(started, acquired=got is not None)
            return got is not None
        if timeout == -1:
            return self._acquire_masters(raise_on_redis_errors=raise_on_redis_errors)
        raise ValueError("can't specify a timeout for a non-blocking call")

    def locked(self, *, raise_on_redis_errors: Optional[bool] = None) -> float:
        """How much longer we'll hold the lock (unless we extend or release it),
        in seconds: 0 if we don't hold it."""
        token = self._token
        if token is None:
            return 0
        sh = self._manager()
        t0 = core.monotonic_ns()
        results = run_script(sh, _ACQUIRED, [self._key_bytes()], [token])
        validity, tally = self._validity(sh, results, t0)
        if validity is not None:
            return validity
        self._check_enough_masters_up(raise_on_redis_errors, tally.errors)
        return 0

    def extend(self, *, raise_on_redis_errors: Optional[bool] = None) -> None:
        """Extend our hold on the lock (if we currently hold it) back to
        ``auto_release_time``; at most ``num_extensions`` times per acquire."""
        if self._extension_num >= self.num_extensions:
            raise TooManyExtensions(self.key, self.masters)
        token = self._token
        ttl_ms = self._ttl_ms()
        if token is None or ttl_ms is None:
            raise ExtendUnlockedLock(self.key, self.masters, redis_errors=[])
        sh = self._manager()
        t0 = core.monotonic_ns()
        results = run_script(sh, _EXTEND, [self._key_bytes()], [token, ttl_ms], lease_timeout(sh, ttl_ms),
                             lease_ms=ttl_ms)
        extended, tally = self._extended(sh, results, t0)
        if extended:
            return
        self._check_enough_masters_up(raise_on_redis_errors, tally.errors)
        raise ExtendUnlockedLock(self.key, self.masters, redis_errors=tally.errors)

    def release(self, *, raise_on_redis_errors: Optional[bool] = None) -> None:
        """Unlock the lock (``ReleaseUnlockedLock`` if we do not hold it)."""
        token = self._token
        if token is None:
            raise ReleaseUnlockedLock(self.key, self.masters, redis_errors=[])
        sh = self._manager()
        held = self._held_lock()
        if held is not None:
            self._released_op(sh, sh.manager.release_op(held), raise_on_redis_errors)
            return
        self._released(sh, run_script(sh, _RELEASE, [self._key_bytes()], [token], guarded=False),
                       raise_on_redis_errors)

    def __enter__(self) -> "Redlock":
        if self.acquire(blocking=self.context_manager_blocking, timeout=self.context_manager_timeout):
            return self
        raise QuorumNotAchieved(self.key, self.masters)

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc_value: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> bool:
        self.release()
        return False


class AIORedlock(_RedlockBase):
    """Asynchronous distributed lock held by a majority of Redis masters
    (pottery's ``AIORedlock``: the masters are ``redis.asyncio`` clients).

    Usage:

        >>> async def main():
        ...     shower = AIORedlock(key='shower', masters={AIORedis(port=7001)})
        ...     async with shower:
        ...         ...  # no other coroutine can enter while we hold the lock
    """

    __slots__ = ()

    _LOG_NAME: ClassVar[str] = "aioredlock"

    def __init__(
        self,
        *,
        key: str,
        masters: Iterable[Any],
        raise_on_redis_errors: bool = False,
        auto_release_time: float = _RedlockBase._AUTO_RELEASE_TIME,
        num_extensions: int = _RedlockBase._NUM_EXTENSIONS,
        context_manager_blocking: bool = True,
        context_manager_timeout: float = -1,
    ) -> None:
        """Initialize an AIORedlock (the same keyword arguments as ``Redlock``;
        ``masters`` are ``redis.asyncio`` clients and must be given)."""
        super().__init__(
            key=key,
            masters=masters,
            raise_on_redis_errors=raise_on_redis_errors,
            auto_release_time=auto_release_time,
            num_extensions=num_extensions,
            context_manager_blocking=context_manager_blocking,
            context_manager_timeout=context_manager_timeout,
        )

    @classmethod
    def _default_masters(cls) -> FrozenSet[Any]:
        raise ValueError("AIORedlock needs masters: one or more redis.asyncio clients")

    async def _manager(self) -> AioSharedManager:
        sh = self._shared
        if sh is not None and sh.loop is asyncio.get_running_loop() and sh.manager.engine is not None:
            return sh
        sh = self._shared = await aio_manager(list(self._masters), allow_same_server=True)
        return sh

    async def _acquire_masters(self, *, raise_on_redis_errors: Optional[bool] = None) -> bool:
        """One quorum attempt (``SET key token NX PX auto_release_time`` on
        every master), through the engine (``LockManager.attempt_token``; a
        cancelled attempt leaves no key)."""
        self._token = None
        self._held = None
        self._extension_num = 0
        ttl_ms = self._ttl_ms()
        if ttl_ms is None:
            return False
        sh = await self._manager()
        op = await sh.manager.attempt_token(self._key_bytes(), new_token(), ttl_ms,
                                            timeout=lease_timeout(sh, ttl_ms))
        return self._attempted(sh, op, raise_on_redis_errors)

    async def acquire(self, *, blocking: bool = True, timeout: float = -1,
                      raise_on_redis_errors: Optional[bool] = None) -> bool:
        """Lock the lock (the same arguments and results as ``Redlock.acquire``)."""
        if blocking:
            self._check_blocking_ttl()
            started = time.monotonic()
            if timeout != -1 and timeout <= 0:
                return False
            retry = _policy.Retry.until(None if timeout == -1 else timeout, delay=(0, self._RETRY_DELAY),
                                        now=started)

            async def attempt() -> Optional[bool]:
                return await self._acquire_masters(raise_on_redis_errors=raise_on_redis_errors) or None

            got = await _policy.run_async(attempt, retry)
            if retry.attempts:   # waited in the queue
                self._log_time_enqueued(started, acquired=got is not None)
            return got is not None
        if timeout == -1:
            return await self._acquire_masters(raise_on_redis_errors=raise_on_redis_errors)
        raise ValueError("can't specify a timeout for a non-blocking call")

    async def locked(self, *, raise_on_redis_errors: Optional[bool] = None) -> float:
        """How much longer we'll hold the lock, in seconds: 0 if we don't hold it."""
        token = self._token
        if token is None:
            return 0
        sh = await self._manager()
        t0 = core.monotonic_ns()
        results = await run_script_async(sh, _ACQUIRED, [self._key_bytes()], [token])
        validity, tally = self._validity(sh, results, t0)
        if validity is not None:
            return validity
        self._check_enough_masters_up(raise_on_redis_errors, tally.errors)
        return 0

    async def extend(self, *, raise_on_redis_errors: Optional[bool] = None) -> None:
        """Extend our hold on the lock back to ``auto_release_time`` (at most
        ``num_extensions`` times per acquire)."""
        if self._extension_num >= self.num_extensions:
            raise TooManyExtensions(self.key, self.masters)
        token = self._token
        ttl_ms = self._ttl_ms()
        if token is None or ttl_ms is None:
            raise ExtendUnlockedLock(self.key, self.masters, redis_errors=[])
        sh = await self._manager()
        t0 = core.monotonic_ns()
        results = await run_script_async(sh, _EXTEND, [self._key_bytes()], [token, ttl_ms],
                                         lease_timeout(sh, ttl_ms), lease_ms=ttl_ms)
        extended, tally = self._extended(sh, results, t0)
        if extended:
            return
        self._check_enough_masters_up(raise_on_redis_errors, tally.errors)
        raise ExtendUnlockedLock(self.key, self.masters, redis_errors=tally.errors)

    async def release(self, *, raise_on_redis_errors: Optional[bool] = None) -> None:
        """Unlock the lock (``ReleaseUnlockedLock`` if we do not hold it)."""
        token = self._token
        if token is None:
            raise ReleaseUnlockedLock(self.key, self.masters, redis_errors=[])
        sh = await self._manager()
        held = self._held_lock()
        if held is not None:
            self._released_op(sh, await sh.manager.release_op(held), raise_on_redis_errors)
            return
        results = await run_script_async(sh, _RELEASE, [self._key_bytes()], [token], guarded=False)
        self._released(sh, results, raise_on_redis_errors)

    async def __aenter__(self) -> "AIORedlock":
        if await self.acquire(blocking=self.context_manager_blocking, timeout=self.context_manager_timeout):
            return self
        raise QuorumNotAchieved(self.key, self.masters)

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc_value: Optional[BaseException],
                        traceback: Optional[TracebackType]) -> None:
        await self.release()




def synchronize(
    *,
    key: str,
    masters: Iterable[Redis] = frozenset(),
    raise_on_redis_errors: bool = False,
    auto_release_time: float = Redlock._AUTO_RELEASE_TIME,
    blocking: bool = True,
    timeout: float = -1,
) -> Callable[[F], F]:
    """Decorator that lets one thread (in any process, on any machine) run the
    function at a time, under a ``Redlock`` on ``key`` (pottery's ``synchronize``).

        >>> @synchronize(key='synchronized-func', masters={Redis(port=7001)}, auto_release_time=1.5)
        ... def func():
        ...     return True
    """
    factory = functools.partial(
        Redlock,
        key=key,
        masters=masters,
        raise_on_redis_errors=raise_on_redis_errors,
        auto_release_time=auto_release_time,
        context_manager_blocking=blocking,
        context_manager_timeout=timeout,
    )

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            redlock = factory()
            started = time.monotonic()
            acquired_at: Optional[float] = None
            released_at: Optional[float] = None
            try:
                with redlock:
                    acquired_at = time.monotonic()
                    return_value = func(*args, **kwargs)
                released_at = time.monotonic()
            finally:
                _log_synchronize(func, redlock, started, acquired_at, released_at)
            return return_value

        return cast(F, wrapper)

    return decorator


def _log_synchronize(func: Callable[..., Any], redlock: Redlock, started: float,
                     acquired_at: Optional[float], released_at: Optional[float]) -> None:
    if acquired_at is None:
        logger.info("%s() waited for %s for %d ms; never acquired lock", func.__qualname__, redlock.key,
                    round((time.monotonic() - started) * 1000))
        return
    held = (released_at if released_at is not None else time.monotonic()) - acquired_at
    logger.info("%s() waited for %s for %d ms; held for %d ms", func.__qualname__, redlock.key,
                round((acquired_at - started) * 1000), round(held * 1000))
