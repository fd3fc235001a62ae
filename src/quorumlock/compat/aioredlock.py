"""Drop-in for aioredlock 0.7's ``Aioredlock``, ``Lock`` and exceptions,
held by a majority of N Redis masters on quorumlock's connections.

```python
from quorumlock.compat.aioredlock import Aioredlock, LockError   # was: from aioredlock import ...

lock_manager = Aioredlock([{"host": "localhost", "port": 6379, "db": 0}])
lock = await lock_manager.lock("resource_name", lock_timeout=10)
await lock_manager.unlock(lock)
async with await lock_manager.lock("resource_name") as lock:    # auto-extended, released at the end
    ...
```

The same constructor (``redis_connections``, ``retry_count``,
``retry_delay_min``, ``retry_delay_max``, ``internal_lock_timeout``, with the
same ``ValueError`` checks), the same methods (``lock``, ``extend``,
``unlock``, ``is_locked``, ``get_active_locks``, ``get_lock``, ``destroy``),
the same ``Lock`` object and exception classes, and the same state on every
node: the key is the resource name verbatim, its value the lock identifier
(``str(uuid4())`` by default), with ``PX``.  A lock taken without a
``lock_timeout`` is extended every ``0.6 * internal_lock_timeout`` until
unlocked, as in aioredlock.

A connection may be a dict (``host``, ``port``, ``db``, ``password``; other
keys are aioredis pool options and are not used), a ``(host, port)`` tuple, a
``redis://`` URL, a unix socket path, a redis-py client, or an aioredis 1.x
connection/pool (its address, database and password are used).  Several
databases of one server are accepted (aioredlock's own tests use them), with a
``UserWarning``: that server's votes fall together.  ``docs/migrating.md``
lists every difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional
from urllib.parse import quote, urlsplit, urlunsplit

from .. import _policy
from . import (AioSharedManager, Script, Tally, aio_manager, background, describe, failed_count, lease_timeout,
               node_list, run_script_async, usable_ttl_ms)

__all__ = ["Aioredlock", "Lock", "AioredlockError", "LockError", "LockAcquiringError", "LockRuntimeError"]

log = logging.getLogger("aioredlock.algorithm")


class AioredlockError(Exception):
    """Base exception for aioredlock."""


class LockError(AioredlockError):
    """Error in acquiring or releasing the lock."""


class LockAcquiringError(LockError):
    """Error in acquiring the lock during normal operation (held by another
    identifier on too many nodes)."""


class LockRuntimeError(LockError):
    """Error in acquiring or releasing the lock due to an unexpected event
    (nodes down, timed out, answering with errors)."""


# KEYS[1] resource; ARGV[1] identifier, ARGV[2] ms.  Sets the key when it is
# free or already ours (so extending is the same call); an error reply when
# another identifier holds it.
_SET_LOCK = Script("""local current = redis.call('get', KEYS[1])
if current and current ~= ARGV[1] then
  return redis.error_reply('ERROR')
end
return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])""")

# The scripts' "held by another identifier" reply, as servers word it.
_HELD = ("ERROR", "ERR ERROR")

# KEYS[1] resource; ARGV[1] identifier.  OK when absent, 1 when ours and
# deleted, an error reply when another identifier holds it.
_UNSET_LOCK = Script("""local current = redis.call('get', KEYS[1])
if not current then
  return redis.status_reply('OK')
end
if current ~= ARGV[1] then
  return redis.error_reply('ERROR')
end
return redis.call('del', KEYS[1])""")

# KEYS[1] resource; ARGV[1] identifier.  The key's TTL in seconds when ours,
# else an error reply.
_GET_LOCK_TTL = Script("""if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('ERROR')
end
return redis.call('ttl', KEYS[1])""")


def _clean_password(details: Any) -> Any:
    """A copy of connection details with every password masked (for reprs)."""
    if isinstance(details, (list, tuple)) and not (len(details) == 2 and isinstance(details[1], int)):
        return type(details)(_clean_password(d) for d in details)
    if isinstance(details, dict):
        return {k: ("*******" if k == "password" and v else v) for k, v in details.items()}
    if isinstance(details, str) and "://" in details:
        parts = urlsplit(details)
        if parts.password:
            netloc = parts.netloc.rsplit("@", 1)[1]
            user = parts.username or ""
            return urlunsplit((parts.scheme, f"{user}:*******@{netloc}", parts.path, parts.query, parts.fragment))
    return details


def _node(conn: Any) -> Any:
    """One aioredlock connection spec -> a node quorumlock takes (URL or client)."""
    if isinstance(conn, dict):
        kw = dict(conn)
        host = kw.pop("host", "localhost")
        port = int(kw.pop("port", 6379))
        db = int(kw.pop("db", 0) or 0)
        password = kw.pop("password", None)
        auth = f":{quote(str(password), safe='')}@" if password else ""
        scheme = "rediss" if kw.get("ssl") else "redis"
        return f"{scheme}://{auth}{host}:{port}/{db}"
    if isinstance(conn, tuple) and len(conn) == 2:
        return f"redis://{conn[0]}:{int(conn[1])}/0"
    if isinstance(conn, str):
        if conn.startswith("/"):
            return f"unix://{conn}"
        parts = urlsplit(conn)
        if parts.scheme in ("redis", "rediss", "unix") and parts.query:
            # aioredis URL options (encoding=..., ...): only db and password matter here.
            keep = "&".join(q for q in parts.query.split("&") if q.split("=", 1)[0] in ("db", "password"))
            return urlunsplit((parts.scheme, parts.netloc, parts.path, keep, ""))
        return conn
    if hasattr(conn, "connection_pool"):  # redis-py client
        return conn
    address = getattr(conn, "address", None)
    if address is not None:  # aioredis 1.x Redis / pool / connection
        db = int(getattr(conn, "db", 0) or 0)
        inner = getattr(conn, "connection", conn)
        password = getattr(inner, "_password", None) or getattr(conn, "_password", None)
        auth = f":{quote(str(password), safe='')}@" if password else ""
        if isinstance(address, str):
            return f"unix://{address}?db={db}" + (f"&password={quote(str(password), safe='')}" if password else "")
        return f"redis://{auth}{address[0]}:{int(address[1])}/{db}"
    raise TypeError(
        "each redis connection must be a dict (host, port, db, password), a (host, port) tuple, a redis:// URL, "
        f"a unix socket path, a redis-py client or an aioredis connection, got {type(conn).__name__}"
    )


@dataclass
class Lock:
    """A lock taken by ``Aioredlock.lock`` (aioredlock's ``Lock``):
    ``valid`` is True until it is unlocked or an extension failed."""

    lock_manager: Any
    resource: str
    id: str
    lock_timeout: Optional[float] = 10.0
    valid: bool = False

    async def __aenter__(self) -> "Lock":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.lock_manager.unlock(self)

    async def extend(self) -> None:
        await self.lock_manager.extend(self)

    async def release(self) -> None:
        await self.lock_manager.unlock(self)

    async def is_locked(self) -> bool:
        return await self.lock_manager.is_locked(self)


def _check_positive(name: str, value: Any, message: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not v > 0:
        raise ValueError(message)
    return v


class Aioredlock:
    """The Redlock algorithm over ``redis_connections`` (aioredlock's lock manager)."""

    def __init__(self, redis_connections: Any = None, retry_count: Any = 3, retry_delay_min: Any = 0.1,
                 retry_delay_max: Any = 0.3, internal_lock_timeout: Any = 10.0) -> None:
        if redis_connections is None:
            redis_connections = [{"host": "localhost", "port": 6379}]
        self.redis_connections = redis_connections
        try:
            self.retry_count = int(retry_count)
        except (TypeError, ValueError):
            raise ValueError(f"retry_count must be an integer, got {retry_count!r}") from None
        if self.retry_count < 1:
            raise ValueError("Retry count must be greater or equal 1.")
        self.retry_delay_min = _check_positive("retry_delay_min", retry_delay_min,
                                               "Retry delay must be greater than 0 seconds.")
        self.retry_delay_max = _check_positive("retry_delay_max", retry_delay_max,
                                               "Retry delay must be greater than 0 seconds.")
        self.internal_lock_timeout = _check_positive("internal_lock_timeout", internal_lock_timeout,
                                                     "Internal lock_timeout must be greater than 0 seconds.")
        if isinstance(redis_connections, (str, dict)) or not hasattr(redis_connections, "__iter__"):
            raise TypeError("redis_connections must be a list of connections (dicts, (host, port) tuples, URLs, "
                            f"clients), got {type(redis_connections).__name__}")
        self._nodes = node_list([_node(c) for c in redis_connections])
        self._watchdogs: Dict[str, "asyncio.Future[Any]"] = {}
        self._locks: Dict[str, Lock] = {}
        self._aio: Optional[AioSharedManager] = None

    def __repr__(self) -> str:
        return (f"Aioredlock(redis_connections={_clean_password(self.redis_connections)!r}, "
                f"retry_count={self.retry_count!r}, retry_delay_min={self.retry_delay_min!r}, "
                f"retry_delay_max={self.retry_delay_max!r}, internal_lock_timeout={self.internal_lock_timeout!r})")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return repr(self) == repr(other)

    __hash__ = None  # type: ignore[assignment]  # as attrs makes it: mutable, compared by value

    @property
    def log(self) -> logging.Logger:
        return log

    async def _manager(self) -> AioSharedManager:
        sh = self._aio
        if sh is not None and sh.loop is asyncio.get_running_loop() and sh.manager.engine is not None:
            return sh
        sh = self._aio = await aio_manager(self._nodes, allow_same_server=True)
        return sh

    # -- per-node operations, counted ---------------------------------------------

    @staticmethod
    def _error(sh: AioSharedManager, tally: Tally, message: str) -> LockError:
        # aioredlock's precedence: a runtime failure (node down, timeout, a
        # Redis error) first, then "held by another identifier".
        errors = [s for s in tally.statuses if s in ("down", "timeout", "excluded")]
        if errors or any(st == "error" and o.detail not in _HELD for st, o in zip(tally.statuses, tally.outcomes)):
            return LockRuntimeError(f"{message}: {tally.describe()}")
        if any(st == "error" for st in tally.statuses):
            return LockAcquiringError(f"{message}: {tally.describe()}")
        return LockError(f"{message}: {tally.describe()}")

    async def _set_once(self, resource: str, identifier: str, lease_time: float) -> float:
        sh = await self._manager()
        ms = int(lease_time * 1000)
        t0 = time.monotonic()
        results = await run_script_async(sh, _SET_LOCK, [resource.encode()], [identifier.encode(), ms],
                                         lease_timeout(sh, ms), lease_ms=ms)
        elapsed = time.monotonic() - t0
        tally = Tally(sh.manager.nodes, results, lambda r: r == b"OK")
        log.debug('Lock "%s" is set on %d/%d instances in %s seconds', resource, tally.ok, sh.n, elapsed)
        if tally.ok < sh.quorum:
            raise self._error(sh, tally, f'Can not acquire the lock "{resource}"')
        return elapsed

    async def _acquire_once(self, resource: str, identifier: str, lease_time: float) -> None:
        """One new acquisition through the engine (``attempt_token``: ``SET
        resource identifier NX PX``, decided at a majority with validity left,
        taken back everywhere when it fails); LockError when it failed."""
        sh = await self._manager()
        ms = usable_ttl_ms(sh, int(lease_time * 1000), "lock_timeout", lease_time, f"lock {resource!r}")
        t0 = time.monotonic()
        op = await sh.manager.attempt_token(resource.encode(), identifier.encode(), ms,
                                            timeout=lease_timeout(sh, ms))
        log.debug('Lock "%s" is set on %d/%d instances in %s seconds', resource, op.ok_count, sh.n,
                  time.monotonic() - t0)
        if op.result is not None:
            return
        outcomes = op.outcomes()
        message = f'Can not acquire the lock "{resource}": {describe(outcomes)}'
        # aioredlock's precedence: a runtime failure first, then "held by
        # another identifier", else the lease ran out while acquiring.
        if failed_count(outcomes):
            raise LockRuntimeError(message)
        if any(o.status == "held" for o in outcomes):
            raise LockAcquiringError(message)
        log.debug('Timeout in acquiring the lock "%s"', resource)
        raise LockError("Lock timeout")

    async def _unset(self, resource: str, identifier: str) -> None:
        sh = await self._manager()
        results = await run_script_async(sh, _UNSET_LOCK, [resource.encode()], [identifier.encode()], guarded=False)
        tally = Tally(sh.manager.nodes, results, lambda r: r == b"OK" or r == 1)
        log.debug('Lock "%s" is unset on %d/%d instances', resource, tally.ok, sh.n)
        if tally.ok < sh.quorum:
            raise self._error(sh, tally, "Can not release the lock")

    async def _set_lock(self, resource: str, lock_identifier: str, lease_time: float, *, new: bool = False) -> None:
        """``retry_count`` attempts: a new acquisition (``new``: through the
        engine, which takes back its own failed attempts) or an extension
        (the set-if-free-or-ours script, taken back here on failure)."""
        error: Optional[BaseException] = RuntimeError("Retry count less then one")
        # Proportional drift time to the length of the lock (the Redlock rule).
        drift = lease_time * 0.01 + 0.002
        try:
            if self.retry_count < 1:
                raise error
            lo, hi = self.retry_delay_min, self.retry_delay_max
            retry = _policy.Retry(attempts=self.retry_count, timeout=None, delay=(min(lo, hi), max(lo, hi)),
                                  now=0.0)

            async def attempt() -> Optional[bool]:
                nonlocal error
                log.debug('Acquiring lock "%s" try %d/%d', resource, retry.attempts + 1, self.retry_count)
                try:
                    if new:
                        await self._acquire_once(resource, lock_identifier, lease_time)
                        return True
                    elapsed = await self._set_once(resource, lock_identifier, lease_time)
                except LockError as exc:
                    error = exc
                    return None
                if lease_time - elapsed - drift <= 0:
                    error = LockError("Lock timeout")
                    log.debug('Timeout in acquiring the lock "%s"', resource)
                    return None
                return True

            if await _policy.run_async(attempt, retry) is None:
                assert error is not None
                raise error
        except (Exception, asyncio.CancelledError):
            if new:
                raise  # the engine released its failed (or cancelled) attempts itself
            # Fault or cancellation: take the key back wherever it landed, in the background.
            async def cleanup() -> None:
                log.debug('Cleaning up lock "%s"', resource)
                with contextlib.suppress(LockError):
                    await self._unset(resource, lock_identifier)

            background(cleanup())
            raise

    async def _auto_extend(self, lock: Lock) -> None:
        """Extend ``lock`` every ``0.6 * internal_lock_timeout`` until it is unlocked."""
        while True:
            await asyncio.sleep(0.6 * self.internal_lock_timeout)
            try:
                await self.extend(lock)
            except Exception:
                log.debug('Error in extending the lock "%s"', lock.resource)
                if not lock.valid:
                    return

    # -- the API ------------------------------------------------------------------

    async def lock(self, resource: str, lock_timeout: Optional[float] = None,
                   lock_identifier: Optional[str] = None) -> Lock:
        """
        Tries to acquire the lock.
        If the lock is correctly acquired, the valid property of
        the returned lock is True.
        In case of fault the LockError exception will be raised

        :param resource str: The string identifier of the resource to lock
        :param lock_timeout int: Lock's lifetime (None: ``internal_lock_timeout``,
            extended automatically until unlocked)
        :param lock_identifier str: identifier for the instance of the lock
        :return: :class:`Lock`
        :raises: LockError in case of fault
        """
        if not isinstance(resource, str):
            raise TypeError(f"resource must be a str, got {type(resource).__name__}")
        lock_identifier = lock_identifier or str(uuid.uuid4())
        if lock_timeout is not None and lock_timeout <= 0:
            raise ValueError("Lock timeout must be greater than 0 seconds.")
        lease_time = lock_timeout or self.internal_lock_timeout
        await self._set_lock(resource, lock_identifier, lease_time, new=True)
        lock = Lock(self, resource, lock_identifier, lock_timeout, valid=True)
        if lock_timeout is None:
            self._watchdogs[lock.resource] = asyncio.ensure_future(self._auto_extend(lock))
        self._locks[resource] = lock
        return lock

    async def extend(self, lock: Lock, lock_timeout: Optional[float] = None) -> None:
        """
        Tries to reset the lock's lifetime to lock_timeout
        In case of fault the LockError exception will be raised (and the
        lock is released).

        :raises: RuntimeError if lock is not valid
        :raises: LockError in case of fault
        """
        log.debug('Extending lock "%s"', lock.resource)
        if not lock.valid:
            raise RuntimeError("Lock is not valid")
        if lock_timeout is not None and lock_timeout <= 0:
            raise ValueError("Lock timeout must be greater than 0 seconds.")
        new_lease_time = lock_timeout or lock.lock_timeout or self.internal_lock_timeout
        try:
            await self._set_lock(lock.resource, lock.id, new_lease_time)
        except Exception:
            with contextlib.suppress(LockError):
                await self.unlock(lock)
            raise

    async def unlock(self, lock: Lock) -> None:
        """
        Release the lock and sets it's validity to False.
        In case of fault the LockError exception will be raised
        """
        log.debug('Releasing lock "%s"', lock.resource)
        lock.valid = False
        task = self._watchdogs.pop(lock.resource, None)
        if task is not None and task is not _current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:
                    log.exception('Can not unlock "%s"', lock.resource)
        await self._unset(lock.resource, lock.id)
        self._locks.pop(lock.resource, None)

    async def is_locked(self, resource_or_lock: Any) -> bool:
        """
        Checks if the resource or the lock is locked by any redlock instance
        (a value on a majority of the nodes).
        """
        if isinstance(resource_or_lock, Lock):
            resource = resource_or_lock.resource
        elif isinstance(resource_or_lock, str):
            resource = resource_or_lock
        else:
            raise TypeError(
                f"Argument should be ether aioredlock.Lock instance or string, {type(resource_or_lock)} is given."
            )
        sh = await self._manager()
        results = await sh.manager.call_nodes([(b"GET", resource.encode())] * sh.n)
        return sum(1 for r in results if r and not isinstance(r, BaseException)) >= sh.quorum

    async def destroy(self) -> None:
        """
        Cancel every auto-extension, unlock every lock (connections are
        shared, and closed when the event loop shuts down).
        """
        log.debug("Destroying %s", repr(self))
        for resource, lock in self._locks.copy().items():
            if lock.valid:
                try:
                    await self.unlock(lock)
                except Exception:
                    log.exception('Can not unlock "%s"', resource)
        for task in self._watchdogs.values():
            task.cancel()
        self._locks.clear()
        self._watchdogs.clear()

    async def get_active_locks(self) -> List[Lock]:
        """
        Return all stored locks that are valid (and still locked).
        """
        ret = []
        for lock in list(self._locks.values()):
            if lock.valid is True and await lock.is_locked():
                ret.append(lock)
        return ret

    async def get_lock(self, resource: str, lock_identifier: str) -> Lock:
        """
        Recreate a ``Lock`` from the given resource and identifier, with the
        TTL (seconds) the nodes report; raises LockError unless a majority
        hold it with one TTL.
        """
        sh = await self._manager()
        results = await run_script_async(sh, _GET_LOCK_TTL, [resource.encode()], [lock_identifier.encode()])
        tally = Tally(sh.manager.nodes, results, lambda r: isinstance(r, int) and not isinstance(r, bool))
        ttls = [r for r, st in zip(results, tally.statuses) if st == "ok"]
        if tally.ok < sh.quorum or len(set(ttls)) != 1:
            raise self._error(sh, tally, f'Could not fetch the TTL for lock "{resource}"')
        return Lock(self, resource, lock_identifier, ttls[0], valid=True)


def _current_task() -> Any:
    try:
        return asyncio.current_task()
    except RuntimeError:  # pragma: no cover - no running loop
        return None

