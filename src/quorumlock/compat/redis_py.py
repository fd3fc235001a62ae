"""Drop-in for redis-py's ``redis.lock.Lock`` and ``redis.asyncio.lock.Lock``,
held by a majority of N Redis masters.

```python
import redis
from quorumlock.compat.redis_py import Lock, AsyncLock

r = redis.Redis()
with r.lock("job:42", timeout=10, lock_class=Lock):     # the one-line change
    ...
with Lock([r1, r2, r3], "job:42", timeout=10):          # a quorum of three masters
    ...
async with redis.asyncio.Redis().lock("job:42", lock_class=AsyncLock):
    ...
```

Same constructor, methods, return types, exceptions and blocking arithmetic as
redis-py 8's locks, and the same state on every node: the key is the lock name
verbatim and its value the token, with ``PX`` = ``timeout`` (no expiry when
``timeout`` is None).  ``redis`` may be a list of clients (or URLs): the lock
is then held when a majority of them granted it, with time to spare
(``timeout - elapsed - drift > 0``).  Of each client only the connection
settings are used; the commands go through quorumlock's own connections,
shared by every lock on the same nodes (``quorumlock.compat``).

When too few nodes answer for a majority to be possible at all (down, timed
out, error replies, or left out by the restart guard), an operation raises
``QuorumUnavailable``, a ``redis.exceptions.ConnectionError``: what redis-py
raises when its one server cannot be reached.  ``docs/migrating.md`` lists
every difference.

The blocking ``Lock`` reads its clock and sleeps only through the module-level
``mod_time`` (``mod_time.monotonic()``, ``mod_time.sleep()``), and
``AsyncLock`` only through the module-level ``asyncio``
(``asyncio.get_running_loop().time()``, ``asyncio.sleep()``), as redis-py
does, so tests can drive both with a fake clock.
"""

from __future__ import annotations

import asyncio  # only get_running_loop().time() and sleep(): the fake-clock seam, as in redis-py
import asyncio as _aio  # everything else
import logging
import threading
import time as mod_time
from types import SimpleNamespace, TracebackType
from typing import Any, Awaitable, List, Literal, Optional, Sequence, Tuple, Type, Union

import redis.exceptions as _rexc
from redis.connection import Encoder
from redis.exceptions import LockError, LockNotOwnedError

from .. import _policy, _scripts
from ..errors import LockNotOwned, NodeOutcome, QuorumError, QuorumLockError
from . import (
    AioSharedManager,
    Script,
    SharedManager,
    Tally,
    aio_manager,
    describe,
    failed_count,
    lease_timeout,
    new_token,
    node_list,
    run_script,
    run_script_async,
    sync_manager,
    usable_ttl_ms,
)

__all__ = ["Lock", "AsyncLock", "QuorumUnavailable", "LockError", "LockNotOwnedError"]

Number = Union[int, float]

# The logger names of redis-py's lock modules, so logging set up for them
# keeps working.
logger = logging.getLogger("redis.lock")
aio_logger = logging.getLogger("redis.asyncio.lock")

_DEFAULT_ENCODER = Encoder("utf-8", "strict", False)


class QuorumUnavailable(_rexc.ConnectionError):
    """Too few nodes answered for a majority to be possible: they were down,
    timed out, answered with an error, or were left out by the restart guard.
    A ``redis.exceptions.ConnectionError``, as redis-py raises when its one
    server is unreachable.  ``outcomes`` says what every node answered;
    ``lock_name`` is the lock's name."""

    def __init__(self, message: str, outcomes: Sequence[NodeOutcome] = (), lock_name: Any = None) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)
        self.lock_name = lock_name


# Compare-and-delete (release) and compare-and-pexpire (reacquire) are the
# engine's own scripts (quorumlock._scripts): every node loaded them at connect.
_RELEASE = Script(_scripts.RELEASE.decode())
_REACQUIRE = Script(_scripts.EXTEND.decode())

# Extend, with redis-py's semantics.
# KEYS[1]: lock name; ARGV[1]: token; ARGV[2]: milliseconds; ARGV[3]: "0" to
# add ARGV[2] to the TTL left, "1" to replace the TTL with it.
# Returns 1 if the TTL was changed; 0 if the key is absent, holds another
# token, or has no expiry.
_EXTEND = Script("""local left = redis.call('pttl', KEYS[1])
if redis.call('get', KEYS[1]) ~= ARGV[1] or left < 0 then
  return 0
end
local ms = tonumber(ARGV[2])
if ARGV[3] == '0' then
  ms = ms + left
end
redis.call('pexpire', KEYS[1], ms)
return 1""")


def _is_one(reply: Any) -> bool:
    return reply == 1


def _encoder_of(node: Any) -> Any:
    get = getattr(node, "get_encoder", None)  # redis.Redis, clusters
    if get is None:
        get = getattr(getattr(node, "connection_pool", None), "get_encoder", None)  # redis.asyncio.Redis
    return get() if get is not None else _DEFAULT_ENCODER


def _as_bytes(value: Any) -> bytes:
    return value if type(value) is bytes else bytes(value)


class _LockBase:
    """What ``Lock`` and ``AsyncLock`` share: the constructor, encoding, and
    the commands and verdicts of every operation (everything but the I/O)."""

    # Kept for the shape of redis-py's class: the scripts run on every node
    # through quorumlock's connections, not as a client's Script objects.
    lua_release = None
    lua_extend = None
    lua_reacquire = None

    LUA_RELEASE_SCRIPT = _RELEASE.body.decode()
    LUA_EXTEND_SCRIPT = _EXTEND.body.decode()
    LUA_REACQUIRE_SCRIPT = _REACQUIRE.body.decode()

    def __init__(
        self,
        redis: Any,
        name: Any,
        timeout: Optional[Number] = None,
        sleep: Number = 0.1,
        blocking: bool = True,
        blocking_timeout: Optional[Number] = None,
        thread_local: bool = True,
        raise_on_release_error: bool = True,
    ) -> None:
        """
        Create a new Lock instance named ``name`` held on the Redis node(s)
        ``redis``: a redis-py client (as in redis-py), or a list of clients or
        ``redis://`` URLs whose majority holds the lock.

        ``timeout`` indicates a maximum life for the lock in seconds.
        By default, it will remain locked until release() is called.
        ``timeout`` can be specified as a float or integer, both representing
        the number of seconds to wait.

        ``sleep`` indicates the amount of time to sleep in seconds per loop
        iteration when the lock is in blocking mode and another client is
        currently holding the lock.

        ``blocking`` indicates whether calling ``acquire`` should block until
        the lock has been acquired or to fail immediately, causing ``acquire``
        to return False and the lock not being acquired. Defaults to True.
        Note this value can be overridden by passing a ``blocking``
        argument to ``acquire``.

        ``blocking_timeout`` indicates the maximum amount of time in seconds to
        spend trying to acquire the lock. A value of ``None`` indicates
        continue trying forever. ``blocking_timeout`` can be specified as a
        float or integer, both representing the number of seconds to wait.

        ``thread_local`` indicates whether the lock token is placed in
        thread-local storage, so that a thread only sees its own token and
        cannot release a lock that another thread acquired after this
        thread's lease ran out.  Disable it when one thread acquires and
        another releases.

        ``raise_on_release_error`` indicates whether to raise an exception when
        the lock is no longer owned when exiting the context manager. By default,
        this is True, meaning an exception will be raised. If False, the warning
        will be logged and the exception will be suppressed.
        """
        self.redis = redis
        self.name = name
        self.timeout = timeout
        self.sleep = sleep
        self.blocking = blocking
        self.blocking_timeout = blocking_timeout
        self.thread_local = bool(thread_local)
        self.raise_on_release_error = raise_on_release_error
        self.local = threading.local() if self.thread_local else SimpleNamespace()
        self.local.token = None
        self._nodes = node_list(redis)
        self._encoder = _encoder_of(self._nodes[0])
        self._last_outcomes: List[NodeOutcome] = []
        self._acquire_cache: Optional[Tuple[Any, Any, Optional[int], float]] = None
        self.register_scripts()

    def register_scripts(self) -> None:
        """Nothing to register: the scripts go to every node as ``EVALSHA``,
        with ``EVAL`` where a node does not know them yet."""

    # -- encoding ----------------------------------------------------------

    def _key(self) -> bytes:
        return _as_bytes(self._encoder.encode(self.name))

    def _encode_token(self, token: Any) -> bytes:
        return _as_bytes(self._encoder.encode(token))

    def _ttl_ms(self) -> Optional[int]:
        if not self.timeout:
            return None
        ms = int(self.timeout * 1000)
        if ms <= 0:
            raise QuorumLockError(f"timeout={self.timeout!r}: a lock timeout must be at least 1 ms (or None)",
                                  lock_name=self.name)
        return ms

    def _usable_ttl_ms(self, sh: SharedManager) -> Optional[int]:
        """``_ttl_ms()``, refused at once (``ConfigurationError``, a
        ValueError, naming ``timeout``) when it is too short to ever be
        acquired: a lease that the clock-drift allowance alone uses up would
        make every attempt fail, and a blocking ``acquire`` loop forever.
        The engine's rule (``quorumlock.blocking.check_px``)."""
        return usable_ttl_ms(sh, self._ttl_ms(), "timeout", self.timeout, f"lock {self.name!r}")

    def _acquire_args(self, sh: SharedManager) -> Tuple[Optional[int], float]:
        """``(ttl_ms, per-node deadline)`` of an attempt, checked once per
        ``timeout`` value (it is a public attribute: it may change)."""
        c = self._acquire_cache
        timeout = self.timeout
        if c is not None and c[0] is sh and c[1] == timeout and type(c[1]) is type(timeout):
            return c[2], c[3]
        ms = self._usable_ttl_ms(sh)
        self._acquire_cache = (sh, timeout, ms, lease_timeout(sh, ms))
        return ms, self._acquire_cache[3]

    # -- verdicts ----------------------------------------------------------

    def _attempted(self, sh: SharedManager, op: Any) -> bool:
        """The verdict of one engine attempt (``attempt_token``: decided by the
        engine's quorum rule): held, or False; ``QuorumUnavailable`` when too
        many nodes failed for a majority to be possible."""
        if op.result is not None:
            # The engine's Lock (our token): released through the engine.
            self.local.held = op.result
            return True
        outcomes = self._last_outcomes = op.outcomes()
        if failed_count(outcomes) > sh.n - sh.quorum:
            raise QuorumUnavailable(
                f"cannot acquire lock {self.name!r}: a majority of {sh.quorum} of {sh.n} nodes is out of "
                f"reach: {describe(outcomes)}",
                outcomes,
                self.name,
            )
        return False

    def _unavailable(self, sh: SharedManager, tally: Tally, what: str) -> None:
        if tally.failed > sh.n - sh.quorum:
            raise QuorumUnavailable(
                f"cannot {what} lock {self.name!r}: a majority of {sh.quorum} of {sh.n} nodes is out of "
                f"reach: {tally.describe()}",
                tally.outcomes,
                self.name,
            )

    def _held_lock(self, expected_token: bytes) -> Any:
        """The engine Lock that ``expected_token`` was acquired with in this
        thread (then the release is the engine's), else None."""
        held = getattr(self.local, "held", None)
        self.local.held = None
        if held is not None and held.token == expected_token and not held.released:
            return held
        return None

    def _released_result(self, sh: SharedManager, op: Any) -> None:
        """The verdict of the engine's release (``release_op``)."""
        if op.result:
            return
        outcomes = op.outcomes()
        if failed_count(outcomes) > sh.n - sh.quorum:
            raise QuorumUnavailable(
                f"cannot release lock {self.name!r}: a majority of {sh.quorum} of {sh.n} nodes is out of "
                f"reach: {describe(outcomes)}",
                outcomes,
                self.name,
            )
        raise LockNotOwned(f"Cannot release a lock that's no longer owned ({describe(outcomes)})",
                           lock_name=self.name)

    def _owned_result(self, sh: SharedManager, tally: Tally, what: str) -> Literal[True]:
        if tally.ok >= sh.quorum:
            return True
        self._unavailable(sh, tally, what)
        raise LockNotOwned(
            f"Cannot {what} a lock that's no longer owned ({tally.describe()})", lock_name=self.name
        )

    def _locked_result(self, sh: SharedManager, results: List[Any]) -> bool:
        tally = Tally(sh.manager.nodes, results, lambda r: r is not None)
        self._unavailable(sh, tally, "query")
        values = [r for r, st in zip(results, tally.statuses) if st == "ok"]
        return any(values.count(v) >= sh.quorum for v in set(values))

    def _owned_verdict(self, sh: SharedManager, results: List[Any], token: bytes) -> bool:
        tally = Tally(sh.manager.nodes, results, lambda r: r == token)
        if tally.ok >= sh.quorum:
            return True
        self._unavailable(sh, tally, "query")
        return False

    def _acquire_failed_error(self) -> QuorumError:
        exc = QuorumError("Unable to acquire lock within the time specified", self._last_outcomes)
        exc.lock_name = self.name
        return exc

    def __repr__(self) -> str:
        held = "held" if self.local.token is not None else "not held"
        return f"<{type(self).__module__}.{type(self).__qualname__} {self.name!r} {held} on {len(self._nodes)} node(s)>"


class Lock(_LockBase):
    """
    A shared, distributed Lock, held by a majority of one or more Redis
    masters.  Using Redis for locking allows the Lock to be shared across
    processes and/or machines.

    It's left to the user to resolve deadlock issues and make sure
    multiple clients play nicely together.
    """

    def __init__(
        self,
        redis: Any,
        name: Any,
        timeout: Optional[Number] = None,
        sleep: Number = 0.1,
        blocking: bool = True,
        blocking_timeout: Optional[Number] = None,
        thread_local: bool = True,
        raise_on_release_error: bool = True,
    ) -> None:
        super().__init__(redis, name, timeout, sleep, blocking, blocking_timeout, thread_local,
                         raise_on_release_error)
        self._shared = sync_manager(self._nodes)

    __init__.__doc__ = _LockBase.__init__.__doc__

    def __enter__(self) -> "Lock":
        if self.acquire():
            return self
        raise self._acquire_failed_error()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        try:
            self.release()
        except LockError:
            if self.raise_on_release_error:
                raise
            logger.warning("Lock was unlocked or no longer owned when exiting context manager.")

    def acquire(
        self,
        sleep: Optional[Number] = None,
        blocking: Optional[bool] = None,
        blocking_timeout: Optional[Number] = None,
        token: Optional[Union[str, bytes]] = None,
    ) -> bool:
        """
        Hold the lock named ``name`` on a majority of the nodes.
        Returns True once the lock is acquired.

        If ``blocking`` is False, always return immediately. If the lock
        was acquired, return True, otherwise return False.

        ``blocking_timeout`` specifies the maximum number of seconds to
        wait trying to acquire the lock.

        ``token`` specifies the token value to be used. If provided, token
        must be a bytes object or a string that can be encoded to a bytes
        object with the default encoding. If a token isn't specified, a
        random one will be generated (32 hex characters).
        """
        if sleep is None:
            sleep = self.sleep
        if token is None:
            token = new_token()
        else:
            token = self._encode_token(token)
        if blocking is None:
            blocking = self.blocking
        if blocking_timeout is None:
            blocking_timeout = self.blocking_timeout
        # The clock is read as redis-py reads it (a fake clock sees the same calls).
        now = mod_time.monotonic() if blocking_timeout is not None else 0.0
        retry = _policy.Retry.fixed(sleep, timeout=blocking_timeout, now=now, once=not blocking)
        if _policy.run_blocking(lambda: self.do_acquire(token) or None, retry,
                                wait=mod_time.sleep, clock=mod_time.monotonic) is None:
            return False
        self.local.token = token
        return True

    def do_acquire(self, token: bytes) -> bool:
        """One quorum attempt: ``SET name token NX [PX timeout]`` on every
        node, through the engine (``LockManager.attempt_token``: decided at a
        majority, released everywhere when it fails)."""
        sh = self._shared
        ttl_ms, node_timeout = self._acquire_args(sh)
        op = sh.manager.attempt_token(self._key(), token, ttl_ms, timeout=node_timeout)
        return self._attempted(sh, op)

    def locked(self) -> bool:
        """
        Returns True if this key is locked by any process (one token is held
        on a majority of the nodes), otherwise False.
        """
        sh = self._shared
        return self._locked_result(sh, sh.manager.call_nodes([(b"GET", self._key())] * sh.n))

    def owned(self) -> bool:
        """
        Returns True if this key is locked by this lock (its token is held on
        a majority of the nodes), otherwise False.
        """
        token = self.local.token
        if token is None:
            return False
        sh = self._shared
        return self._owned_verdict(sh, sh.manager.call_nodes([(b"GET", self._key())] * sh.n), token)

    def release(self) -> None:
        """
        Releases the already acquired lock
        """
        expected_token = self.local.token
        if expected_token is None:
            raise QuorumLockError(
                "Cannot release a lock that's not owned or is already unlocked.",
                lock_name=self.name,
            )
        self.local.token = None
        self.do_release(expected_token)

    def do_release(self, expected_token: bytes) -> None:
        sh = self._shared
        held = self._held_lock(expected_token)
        if held is not None and held._owner is sh.manager:
            self._released_result(sh, sh.manager.release_op(held))
            return
        results = run_script(sh, _RELEASE, [self._key()], [expected_token], guarded=False)
        self._owned_result(sh, Tally(sh.manager.nodes, results, _is_one), "release")

    def extend(self, additional_time: Number, replace_ttl: bool = False) -> Literal[True]:
        """
        Adds more time to an already acquired lock.

        ``additional_time`` can be specified as an integer or a float, both
        representing the number of seconds to add.

        ``replace_ttl`` if False (the default), add `additional_time` to
        the lock's existing ttl. If True, replace the lock's ttl with
        `additional_time`.
        """
        if self.local.token is None:
            raise QuorumLockError("Cannot extend an unlocked lock", lock_name=self.name)
        if self.timeout is None:
            raise QuorumLockError("Cannot extend a lock with no timeout", lock_name=self.name)
        return self.do_extend(additional_time, replace_ttl)

    def do_extend(self, additional_time: Number, replace_ttl: bool) -> Literal[True]:
        sh = self._shared
        ms = int(additional_time * 1000)
        lease = ms if replace_ttl else ms + int(self.timeout * 1000)
        results = run_script(sh, _EXTEND, [self._key()], [self.local.token, ms, b"1" if replace_ttl else b"0"],
                             lease_timeout(sh, ms), lease_ms=lease)
        return self._owned_result(sh, Tally(sh.manager.nodes, results, _is_one), "extend")

    def reacquire(self) -> Literal[True]:
        """
        Resets a TTL of an already acquired lock back to a timeout value.
        """
        if self.local.token is None:
            raise QuorumLockError("Cannot reacquire an unlocked lock", lock_name=self.name)
        if self.timeout is None:
            raise QuorumLockError("Cannot reacquire a lock with no timeout", lock_name=self.name)
        return self.do_reacquire()

    def do_reacquire(self) -> Literal[True]:
        sh = self._shared
        ms = int(self.timeout * 1000)
        results = run_script(sh, _REACQUIRE, [self._key()], [self.local.token, ms], lease_timeout(sh, ms),
                             lease_ms=ms)
        return self._owned_result(sh, Tally(sh.manager.nodes, results, _is_one), "reacquire")


class AsyncLock(_LockBase):
    """
    A shared, distributed Lock for asyncio, held by a majority of one or more
    Redis masters: the drop-in for ``redis.asyncio.lock.Lock``.

    It's left to the user to resolve deadlock issues and make sure
    multiple clients play nicely together.
    """

    def __init__(
        self,
        redis: Any,
        name: Any,
        timeout: Optional[float] = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: Optional[Number] = None,
        thread_local: bool = True,
        raise_on_release_error: bool = True,
    ) -> None:
        super().__init__(redis, name, timeout, sleep, blocking, blocking_timeout, thread_local,
                         raise_on_release_error)
        self._aio: Optional[AioSharedManager] = None

    __init__.__doc__ = _LockBase.__init__.__doc__

    async def _manager(self) -> AioSharedManager:
        # The manager of the running loop (a lock may be used from several loops).
        sh = self._aio
        if sh is not None and sh.loop is _aio.get_running_loop() and sh.manager.engine is not None:
            return sh
        sh = self._aio = await aio_manager(self._nodes)
        return sh

    async def __aenter__(self) -> "AsyncLock":
        if await self.acquire():
            return self
        raise self._acquire_failed_error()

    async def __aexit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        try:
            await self.release()
        except LockError:
            if self.raise_on_release_error:
                raise
            aio_logger.warning("Lock was unlocked or no longer owned when exiting context manager.")

    async def acquire(
        self,
        blocking: Optional[bool] = None,
        blocking_timeout: Optional[Number] = None,
        token: Optional[Union[str, bytes]] = None,
    ) -> bool:
        """
        Hold the lock named ``name`` on a majority of the nodes.
        Returns True once the lock is acquired.

        If ``blocking`` is False, always return immediately. If the lock
        was acquired, return True, otherwise return False.

        ``blocking_timeout`` specifies the maximum number of seconds to
        wait trying to acquire the lock.

        ``token`` specifies the token value to be used. If provided, token
        must be a bytes object or a string that can be encoded to a bytes
        object with the default encoding. If a token isn't specified, a
        random one will be generated (32 hex characters).
        """
        sleep = self.sleep
        if token is None:
            token = new_token()
        else:
            token = self._encode_token(token)
        if blocking is None:
            blocking = self.blocking
        if blocking_timeout is None:
            blocking_timeout = self.blocking_timeout
        clock = asyncio.get_running_loop().time
        now = clock() if blocking_timeout is not None else 0.0
        retry = _policy.Retry.fixed(sleep, timeout=blocking_timeout, now=now, once=not blocking)

        async def attempt() -> Optional[bool]:
            return await self.do_acquire(token) or None

        if await _policy.run_async(attempt, retry, wait=asyncio.sleep, clock=clock) is None:
            return False
        self.local.token = token
        return True

    async def do_acquire(self, token: bytes) -> bool:
        """One quorum attempt: ``SET name token NX [PX timeout]`` on every
        node, through the engine (``LockManager.attempt_token``: decided at a
        majority, released everywhere when it fails; a cancelled attempt
        leaves no key)."""
        sh = await self._manager()
        ttl_ms, node_timeout = self._acquire_args(sh)
        op = await sh.manager.attempt_token(self._key(), token, ttl_ms, timeout=node_timeout)
        return self._attempted(sh, op)

    async def locked(self) -> bool:
        """
        Returns True if this key is locked by any process (one token is held
        on a majority of the nodes), otherwise False.
        """
        sh = await self._manager()
        return self._locked_result(sh, await sh.manager.call_nodes([(b"GET", self._key())] * sh.n))

    async def owned(self) -> bool:
        """
        Returns True if this key is locked by this lock (its token is held on
        a majority of the nodes), otherwise False.
        """
        token = self.local.token
        if token is None:
            return False
        sh = await self._manager()
        return self._owned_verdict(sh, await sh.manager.call_nodes([(b"GET", self._key())] * sh.n), token)

    async def release(self) -> None:
        """Releases the already acquired lock.

        The token is only cleared after the release completed on the nodes (or
        the lock was found not owned): a cancelled release leaves the lock
        state consistent, and the release can be retried.
        """
        expected_token = self.local.token
        if expected_token is None:
            raise QuorumLockError("Cannot release a lock that's not owned or is already unlocked.",
                                  lock_name=self.name)
        try:
            await self.do_release(expected_token)
        except LockNotOwnedError:
            # Not held any more: nothing to retry.
            self.local.token = None
            raise
        self.local.token = None

    async def do_release(self, expected_token: bytes) -> None:
        sh = await self._manager()
        held = self._held_lock(expected_token)
        if held is not None and held._owner is sh.manager:
            self._released_result(sh, await sh.manager.release_op(held))
            return
        results = await run_script_async(sh, _RELEASE, [self._key()], [expected_token], guarded=False)
        self._owned_result(sh, Tally(sh.manager.nodes, results, _is_one), "release")

    def extend(self, additional_time: Number, replace_ttl: bool = False) -> Awaitable[Literal[True]]:
        """
        Adds more time to an already acquired lock.

        ``additional_time`` can be specified as an integer or a float, both
        representing the number of seconds to add.

        ``replace_ttl`` if False (the default), add `additional_time` to
        the lock's existing ttl. If True, replace the lock's ttl with
        `additional_time`.
        """
        if self.local.token is None:
            raise QuorumLockError("Cannot extend an unlocked lock", lock_name=self.name)
        if self.timeout is None:
            raise QuorumLockError("Cannot extend a lock with no timeout", lock_name=self.name)
        return self.do_extend(additional_time, replace_ttl)

    async def do_extend(self, additional_time: Number, replace_ttl: bool) -> Literal[True]:
        sh = await self._manager()
        ms = int(additional_time * 1000)
        lease = ms if replace_ttl else ms + int(self.timeout * 1000)
        results = await run_script_async(sh, _EXTEND, [self._key()],
                                         [self.local.token, ms, b"1" if replace_ttl else b"0"],
                                         lease_timeout(sh, ms), lease_ms=lease)
        return self._owned_result(sh, Tally(sh.manager.nodes, results, _is_one), "extend")

    def reacquire(self) -> Awaitable[Literal[True]]:
        """
        Resets a TTL of an already acquired lock back to a timeout value.
        """
        if self.local.token is None:
            raise QuorumLockError("Cannot reacquire an unlocked lock", lock_name=self.name)
        if self.timeout is None:
            raise QuorumLockError("Cannot reacquire a lock with no timeout", lock_name=self.name)
        return self.do_reacquire()

    async def do_reacquire(self) -> Literal[True]:
        sh = await self._manager()
        ms = int(self.timeout * 1000)
        results = await run_script_async(sh, _REACQUIRE, [self._key()], [self.local.token, ms],
                                         lease_timeout(sh, ms), lease_ms=ms)
        return self._owned_result(sh, Tally(sh.manager.nodes, results, _is_one), "reacquire")


