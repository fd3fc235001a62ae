"""Drop-in for python-redis-lock's ``redis_lock`` module, held by a majority of
N Redis masters.

```python
from redis import StrictRedis
from quorumlock.compat import redis_lock      # was: import redis_lock

conn = StrictRedis()
with redis_lock.Lock(conn, "name-of-the-lock", expire=60, auto_renewal=True):
    ...
with redis_lock.Lock([conn1, conn2, conn3], "name-of-the-lock", expire=60):   # a quorum
    ...
```

The same constructor, methods, exceptions (names and bases), key names
(``lock:<name>`` holds the id, ``lock-signal:<name>`` is the wake-up list),
logger names and log lines as python-redis-lock 4.0, and the same wake-up on
release: a waiter blocks in ``BLPOP lock-signal:<name>`` and ``release()`` /
``reset()`` / ``reset_all()`` push one element to it (expiring after
``signal_expire`` ms).

``redis_client`` may be a list of clients (or ``redis://`` URLs): the lock is
then held when a majority of them set the key, with time to spare
(``expire - elapsed - drift > 0``).  A waiter waits on every node's signal list
at once and retries on the first wake-up.  The lock commands go through
quorumlock's own connections, shared by every lock on the same nodes; the
``BLPOP`` waits use connections of their own, made with the clients' settings (a wait may last long
and must not hold the shared ones).  ``docs/migrating.md`` lists every difference.
"""

from __future__ import annotations

import os
import selectors
import threading
import time
import weakref
from base64 import b64encode
from logging import getLogger
from os import urandom
from typing import Any, List, Optional

import redis
from redis import StrictRedis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._backend import core
from . import (SharedManager, Script, Tally, describe, drift_ns, failed_count, lease_timeout, node_list, noscript_retry,
               run_script, script_commands, sync_manager)
from .redis_py import QuorumUnavailable

__all__ = [
    "Lock",
    "reset_all",
    "AlreadyAcquired",
    "NotAcquired",
    "AlreadyStarted",
    "TimeoutNotUsable",
    "InvalidTimeout",
    "TimeoutTooLarge",
    "NotExpirable",
    "QuorumUnavailable",
]

# python-redis-lock's logger names (its module is ``redis_lock``), so logging
# configured for them keeps working.
logger_for_acquire = getLogger("redis_lock.acquire")
logger_for_refresh_thread = getLogger("redis_lock.refresh.thread")
logger_for_refresh_start = getLogger("redis_lock.refresh.start")
logger_for_refresh_shutdown = getLogger("redis_lock.refresh.shutdown")
logger_for_refresh_exit = getLogger("redis_lock.refresh.exit")
logger_for_release = getLogger("redis_lock.release")


class AlreadyAcquired(RuntimeError):
    """``acquire()`` of a lock whose id already holds it."""


class NotAcquired(RuntimeError):
    """``release()`` / ``extend()`` of a lock that its id does not hold."""


class AlreadyStarted(RuntimeError):
    """The renewal thread of this lock is already running."""


class TimeoutNotUsable(RuntimeError):
    """``acquire(blocking=False, timeout=...)``."""


class InvalidTimeout(RuntimeError):
    """A negative ``acquire`` timeout."""


class TimeoutTooLarge(RuntimeError):
    """An ``acquire`` timeout longer than ``expire`` (without auto-renewal)."""


class NotExpirable(RuntimeError):
    """``extend()`` of a lock whose key has no expiry."""


# KEYS[1] lock key, KEYS[2] signal list; ARGV[1] id, ARGV[2] signal expiry ms.
# 0: deleted and signalled; 1: the key does not hold this id.
_UNLOCK = Script("""if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1], KEYS[2])
  redis.call('lpush', KEYS[2], 1)
  redis.call('pexpire', KEYS[2], ARGV[2])
  return 0
end
return 1""")

# KEYS[1] lock key; ARGV[1] id, ARGV[2] seconds.
# 0: expiry set; 1: not this id's; 2: the key has no expiry.
_EXTEND = Script("""if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return 1
end
if redis.call('pttl', KEYS[1]) < 0 then
  return 2
end
redis.call('expire', KEYS[1], ARGV[2])
return 0""")

# KEYS[1] lock key, KEYS[2] signal list; ARGV[1] signal expiry ms.
# Deletes the lock whoever holds it and signals; returns DEL's count.
_RESET = Script("""redis.call('del', KEYS[2])
redis.call('lpush', KEYS[2], 1)
redis.call('pexpire', KEYS[2], ARGV[1])
return redis.call('del', KEYS[1])""")

# Every ``lock:*`` key of the database: deleted, its signal list pushed
# (expiring after 1 s, as python-redis-lock does).  Returns the count.
_RESET_ALL = Script("""local found = redis.call('keys', 'lock:*')
for _, key in ipairs(found) do
  local signal = 'lock-signal:' .. string.sub(key, 6)
  redis.call('del', signal, key)
  redis.call('lpush', signal, 1)
  redis.call('expire', signal, 1)
end
return #found""")

#: Per-node reply deadline of a command without a lease on one node, in
#: seconds.  With one node there is no majority to decide sooner: giving up
#: after the manager's ``node_timeout`` would only turn a busy server into an
#: error (python-redis-lock waits as long as its client does: forever by default).
SINGLE_NODE_TIMEOUT = 10.0


def _deadline(sh: SharedManager, ttl_ms: Optional[int] = None) -> float:
    """The per-node deadline of one operation.  Several nodes: the quorum
    rule's (``lease_timeout``).  One node: as long as the lease can still be
    valid when the reply comes (half the TTL, at most ``SINGLE_NODE_TIMEOUT``)."""
    base = lease_timeout(sh, ttl_ms)
    if sh.n > 1:
        return base
    if not ttl_ms:
        return max(base, SINGLE_NODE_TIMEOUT)
    return max(base, min(ttl_ms / 2000.0, SINGLE_NODE_TIMEOUT))


#: Connect timeout (seconds, at most) of a wait connection: a node that does
#: not answer must not delay the waits on the others for long.
WAIT_CONNECT_TIMEOUT = 0.5


def _wait_connection(client: Any) -> Any:
    """A new connection with ``client``'s settings for one BLPOP wait:
    outside the client's pool (it is closed after the wait), without retries,
    and a short connect timeout."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    connect = kwargs.get("socket_connect_timeout")
    kwargs["socket_connect_timeout"] = WAIT_CONNECT_TIMEOUT if connect is None else min(connect, WAIT_CONNECT_TIMEOUT)
    return pool.connection_class(**kwargs)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value


def _check_client(client: Any, strict: bool) -> None:
    if not strict:
        return
    items = client if isinstance(client, (list, tuple)) else [client]
    if isinstance(client, (list, tuple)) and not items:
        raise ValueError("redis_client: an empty list of nodes")
    for c in items:
        if not isinstance(c, (StrictRedis, str)):
            raise ValueError(
                "redis_client must be instance of StrictRedis (or a list of them, or of redis:// URLs). "
                "Use strict=False if you know what you're doing."
            )


class Lock(object):
    """
    A Lock context manager implemented via redis SETNX/BLPOP, held by a
    majority of the nodes in ``redis_client`` (one client: exactly
    python-redis-lock's behaviour).
    """

    # Kept for the shape of python-redis-lock's class: the scripts run on every
    # node through quorumlock's connections, not as a client's Script objects.
    unlock_script = None
    extend_script = None
    reset_script = None
    reset_all_script = None
    blocking: Optional[bool] = None

    _lock_renewal_interval: Optional[float]
    _lock_renewal_thread: Optional[threading.Thread]

    def __init__(self, redis_client: Any, name: str, expire: Any = None, id: Any = None, auto_renewal: bool = False,
                 strict: bool = True, signal_expire: int = 1000, blocking: bool = True) -> None:
        """
        :param redis_client:
            An instance of :class:`~StrictRedis`, or a list of them (or of
            ``redis://`` URLs): the lock is then held on a majority of them.
        :param name:
            The name (redis key) the lock should have.
        :param expire:
            The lock expiry time in seconds. If left at the default (None)
            the lock will not expire.
        :param id:
            The ID (redis value) the lock should have. A random value is
            generated when left at the default.

            Note that if you specify this then the lock is marked as "held". Acquires
            won't be possible.
        :param auto_renewal:
            If set to ``True``, Lock will automatically renew the lock so that it
            doesn't expire for as long as the lock is held (acquire() called
            or running in a context manager).

            Renewal happens in a daemon thread every ``expire*2/3`` seconds;
            a subclass may set ``self._lock_renewal_interval`` after
            ``super().__init__()``.
        :param strict:
            If set ``True`` then the ``redis_client`` needs to be an instance of
            ``redis.StrictRedis`` (or a list of them, or of URLs).
        :param signal_expire:
            Advanced option to override signal list expiration in milliseconds.
            Increase it for very slow clients. Default: ``1000``.
        :param blocking:
            Whether the context manager's ``acquire`` blocks. Default: ``True``.
        """
        _check_client(redis_client, strict)
        if auto_renewal and expire is None:
            raise ValueError("Expire may not be None when auto_renewal is set")
        self._client = redis_client
        if expire:
            expire = int(expire)
            if expire < 0:
                raise ValueError("A negative expire is not acceptable.")
        else:
            expire = None
        self._expire = expire
        self._signal_expire = signal_expire
        if id is None:
            self._id = b64encode(urandom(18)).decode("ascii")
        elif isinstance(id, bytes):
            try:
                self._id = id.decode("ascii")
            except UnicodeDecodeError:
                self._id = b64encode(id).decode("ascii")
        elif isinstance(id, str):
            self._id = id
        else:
            raise TypeError(f"Incorrect type for `id`. Must be bytes/str not {type(id)}.")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self._name = "lock:" + name
        self._signal = "lock-signal:" + name
        self._lock_renewal_interval = float(expire) * 2 / 3 if auto_renewal else None
        self._lock_renewal_thread = None
        self.blocking = blocking
        self._nodes: Optional[List[Any]] = None
        self._shared_mgr: Optional[SharedManager] = None
        self._wait_clients: Optional[List[Any]] = None
        # Whether the id may hold the key already: an id given by the caller
        # (python-redis-lock marks such a lock as held), an id read through
        # ``.id`` (handed to another object, which may hold it), or this object
        # acquired it and has not released or reset it since.  Only then does
        # ``acquire()`` read the owner before it tries (see ``acquire``).
        self._id_out = id is not None
        self._may_hold = self._id_out
        # Built once: the keys and the unlock command every release sends.
        self._key_b = self._name.encode()
        self._signal_b = self._signal.encode()
        self._unlock_args = [self._id.encode(), signal_expire]
        self._unlock_cmds: Optional[List[Any]] = None
        self.register_scripts(redis_client)

    @classmethod
    def register_scripts(cls, redis_client: Any) -> None:
        """Nothing to register: the scripts go to every node as ``EVALSHA``,
        with ``EVAL`` where a node does not know them yet."""

    # -- nodes -----------------------------------------------------------------

    def _shared(self) -> SharedManager:
        # Resolved at the first operation, so that ``strict=False`` with an
        # object that is not a client can still be constructed (as in the original).
        sh = self._shared_mgr
        if sh is None or sh.pid != os.getpid():  # first use, or a forked child: its own connections
            self._nodes = node_list(self._client)
            sh = self._shared_mgr = sync_manager(self._nodes)
        return sh

    @property
    def _held(self) -> bool:
        return self._id == self.get_owner_id()

    @property
    def id(self) -> str:
        """The value this lock stores in ``lock:<name>``.  Once read, this
        object's ``acquire()`` reads the owner before it tries, as for a
        given ``id``: another object given this id may hold the lock."""
        self._id_out = self._may_hold = True
        return self._id

    def _keys(self) -> List[bytes]:
        return [self._key_b, self._signal_b]

    def _unavailable(self, sh: SharedManager, tally: Tally, what: str) -> None:
        if tally.failed > sh.n - sh.quorum:
            raise QuorumUnavailable(
                f"cannot {what} Lock({self._name!r}): a majority of {sh.quorum} of {sh.n} nodes is out of reach: "
                f"{tally.describe()}",
                tally.outcomes,
                self._name,
            )

    def get_owner_id(self) -> Optional[str]:
        """The id that holds the lock on a majority of the nodes, or None."""
        sh = self._shared()
        results = sh.manager.call_nodes([(b"GET", self._keys()[0])] * sh.n, _deadline(sh))
        tally = Tally(sh.manager.nodes, results, lambda r: r is not None)
        self._unavailable(sh, tally, "read")
        values = [r for r, st in zip(results, tally.statuses) if st == "ok"]
        for v in set(values):
            if values.count(v) >= sh.quorum:
                return _decode(v)
        return None

    def reset(self) -> None:
        """
        Forcibly deletes the lock. Use this with care.
        """
        sh = self._shared()
        results = run_script(sh, _RESET, self._keys(), [self._signal_expire], _deadline(sh), guarded=False)
        self._unavailable(sh, Tally(sh.manager.nodes, results, lambda r: isinstance(r, int)), "reset")
        self._may_hold = self._id_out

    # -- acquire ---------------------------------------------------------------

    def _try_set(self) -> bool:
        """One quorum attempt: ``SET lock:<name> <id> NX [PX expire]`` on
        every node, through the engine (``LockManager.attempt_token``: decided
        at a majority by the engine's rule, taken back everywhere on failure)."""
        sh = self._shared()
        ttl_ms = self._expire * 1000 if self._expire else None
        op = sh.manager.attempt_token(self._keys()[0], self._id.encode(), ttl_ms, timeout=_deadline(sh, ttl_ms))
        if op.result is not None:
            return True
        outcomes = op.outcomes()
        if failed_count(outcomes) > sh.n - sh.quorum:
            raise QuorumUnavailable(
                f"cannot acquire Lock({self._name!r}): a majority of {sh.quorum} of {sh.n} nodes is out of reach: "
                f"{describe(outcomes)}",
                outcomes,
                self._name,
            )
        return False

    def acquire(self, blocking: bool = True, timeout: Any = None) -> bool:
        """
        :param blocking:
            Boolean value specifying whether lock should be blocking or not.
        :param timeout:
            An integer value specifying the maximum number of seconds to block.
        """
        logger_for_acquire.debug("Acquiring Lock(%r) ...", self._name)
        # python-redis-lock reads the owner first (``AlreadyAcquired`` before
        # any other check).  Here the owner is read first only when this id
        # may hold the lock (see ``_may_hold``) or the arguments are wrong;
        # otherwise the first SET NX decides, and only when it fails is the
        # owner read (once): the same exceptions and results, one round
        # fewer on the common path.
        bad = self._bad_timeout(blocking, timeout)
        if bad is not None or self._may_hold:
            if self._held:
                raise AlreadyAcquired("Already acquired from this Lock instance.")
            if bad is not None:
                raise bad
            checked = True
        else:
            checked = False
        if timeout:
            timeout = int(timeout)
        # Each wait lasts the time left of ``timeout``, else ``expire`` (the key
        # may expire without a signal), else until a signal comes.
        wait_for = timeout or self._expire or 0
        deadline = time.monotonic() + timeout if timeout else None
        timed_out = False
        while not self._try_set():
            if not checked:
                checked = True
                if self._held:
                    raise AlreadyAcquired("Already acquired from this Lock instance.")
            if timed_out:
                return False
            if not blocking:
                logger_for_acquire.warning("Failed to acquire Lock(%r).", self._name)
                return False
            if deadline is not None:
                wait_for = max(deadline - time.monotonic(), 0.001)
            timed_out = not self._wait_signal(wait_for) and bool(timeout)
        self._may_hold = True
        logger_for_acquire.info("Acquired Lock(%r).", self._name)
        if self._lock_renewal_interval is not None:
            self._start_lock_renewer()
        return True

    def _bad_timeout(self, blocking: bool, timeout: Any) -> Optional[Exception]:
        """The exception python-redis-lock raises for these ``acquire``
        arguments, or None when they are usable."""
        if not blocking and timeout is not None:
            return TimeoutNotUsable("Timeout cannot be used if blocking=False")
        if timeout:
            try:
                timeout = int(timeout)
            except (TypeError, ValueError) as exc:
                return exc  # type: ignore[return-value]
            if timeout < 0:
                return InvalidTimeout(f"Timeout ({timeout}) cannot be less than or equal to 0")
            if self._expire and not self._lock_renewal_interval and timeout > self._expire:
                return TimeoutTooLarge(f"Timeout ({timeout}) cannot be greater than expire ({self._expire})")
        return None

    # -- the wake-up -------------------------------------------------------------

    def _clients_for_wait(self) -> List[Any]:
        clients = self._wait_clients
        if clients is None:
            clients = []
            for nd in self._nodes or node_list(self._client):
                if isinstance(nd, str):
                    clients.append(redis.Redis.from_url(nd))
                elif hasattr(getattr(nd, "connection_pool", None), "connection_kwargs"):
                    clients.append(nd)
                else:  # a NodeSpec: rebuild a client from its settings
                    clients.append(redis.Redis.from_url(nd.name) if getattr(nd, "name", None) else None)
            self._wait_clients = clients
        return clients

    def _wait_signal(self, seconds: float) -> bool:
        """``BLPOP lock-signal:<name> seconds`` on every node at once (0: no
        limit); True at the first element popped, False when the time ran
        out.  Each wait has a connection of its own, made with the client's
        settings and closed at the end, so the other nodes' waits are cut off.
        A node that cannot be reached is skipped (no retries)."""
        signal = self._keys()[1]
        waits = []
        sel = selectors.DefaultSelector()
        try:
            for client in self._clients_for_wait():
                if client is None:
                    continue
                conn = _wait_connection(client)
                try:
                    conn.send_command("BLPOP", signal, seconds)
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                    conn.disconnect()
                    continue
                waits.append(conn)
                sock = getattr(conn, "_sock", None)
                if sock is not None:
                    sel.register(sock, selectors.EVENT_READ, len(waits) - 1)
            if not waits:
                # No node to wait on: do not spin; the next attempt reports the outage.
                time.sleep(min(seconds, 0.1) if seconds else 0.1)
                return False
            limit = None if not seconds else time.monotonic() + seconds + 1.0
            done: set = set()
            while len(done) < len(waits):
                if not sel.get_map():  # every node answered with nothing, or failed
                    return False
                left = None if limit is None else limit - time.monotonic()
                if left is not None and left <= 0:
                    return False
                for key, _ in sel.select(left):
                    i = key.data
                    if i in done:
                        continue
                    done.add(i)
                    sel.unregister(key.fileobj)
                    try:
                        reply = waits[i].read_response()
                    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                        continue
                    if reply:
                        return True
            return False
        finally:
            sel.close()
            for conn in waits:
                conn.disconnect()  # a BLPOP still blocked is cut off with its connection

    # -- extend, renewal -------------------------------------------------------

    def extend(self, expire: Any = None) -> None:
        """
        Extends expiration time of the lock.

        :param expire:
            New expiration time. If ``None`` - `expire` provided during
            lock initialization will be taken.
        """
        if expire:
            expire = int(expire)
            if expire < 0:
                raise ValueError("A negative expire is not acceptable.")
        elif self._expire is not None:
            expire = self._expire
        else:
            raise TypeError(
                "To extend a lock 'expire' must be provided as an argument to extend() method or at initialization time."
            )
        sh = self._shared()
        ms = expire * 1000
        t0 = core.monotonic_ns()
        results = run_script(sh, _EXTEND, self._keys()[:1], [self._id.encode(), expire], _deadline(sh, ms),
                             lease_ms=ms)
        tally = Tally(sh.manager.nodes, results, lambda r: r == 0)
        if tally.ok >= sh.quorum and core.monotonic_ns() < t0 + ms * 1_000_000 - drift_ns(sh, ms):
            return
        self._unavailable(sh, tally, "extend")
        if sum(1 for r in results if r == 2) >= sh.quorum:
            raise NotExpirable(f"Lock {self._name} has no assigned expiration time")
        raise NotAcquired(f"Lock {self._name} is not acquired or it already expired.")

    @staticmethod
    def _lock_renewer(name: str, lockref: Any, interval: float, stop: threading.Event) -> None:
        """
        Renew the lock key in redis every `interval` seconds for as long
        as `stop` is not set and the lock object is alive.
        """
        while not stop.wait(timeout=interval):
            logger_for_refresh_thread.debug("Refreshing Lock(%r).", name)
            lock: Optional[Lock] = lockref()
            if lock is None:
                logger_for_refresh_thread.debug("Stopping loop because Lock(%r) was garbage collected.", name)
                break
            try:
                lock.extend(expire=lock._expire)
            except Exception as exc:
                logger_for_refresh_thread.error("Renewal of Lock(%r) failed, stopping: %r", name, exc)
                break
            finally:
                del lock
        logger_for_refresh_thread.debug("Exiting renewal thread for Lock(%r).", name)

    def _start_lock_renewer(self) -> None:
        """
        Starts the lock refresher thread.
        """
        if self._lock_renewal_thread is not None:
            raise AlreadyStarted("Lock refresh thread already started")
        logger_for_refresh_start.debug(
            "Starting renewal thread for Lock(%r). Refresh interval: %s seconds.", self._name,
            self._lock_renewal_interval,
        )
        self._lock_renewal_stop = threading.Event()
        self._lock_renewal_thread = threading.Thread(
            target=self._lock_renewer,
            kwargs={
                "name": self._name,
                "lockref": weakref.ref(self),
                "interval": self._lock_renewal_interval,
                "stop": self._lock_renewal_stop,
            },
            daemon=True,
        )
        self._lock_renewal_thread.start()

    def _stop_lock_renewer(self) -> None:
        """
        Stop the lock renewer.

        This signals the renewal thread and waits for its exit.
        """
        if self._lock_renewal_thread is None or not self._lock_renewal_thread.is_alive():
            return
        logger_for_refresh_shutdown.debug("Signaling renewal thread for Lock(%r) to exit.", self._name)
        self._lock_renewal_stop.set()
        self._lock_renewal_thread.join()
        self._lock_renewal_thread = None
        logger_for_refresh_exit.debug("Renewal thread for Lock(%r) exited.", self._name)

    # -- context manager, release ----------------------------------------------

    def __enter__(self) -> "Lock":
        acquired = self.acquire(blocking=bool(self.blocking))
        if not acquired:
            if self.blocking:
                raise AssertionError(f"Lock({self._name}) wasn't acquired, but blocking=True was used!")
            raise NotAcquired(f"Lock({self._name}) is not acquired or it already expired.")
        return self

    def __exit__(self, exc_type: Any = None, exc_value: Any = None, traceback: Any = None) -> None:
        self.release()

    def release(self) -> None:
        """Releases the lock, that was acquired with the same object.

        .. note::

            If you want to release a lock that you acquired in a different place you have two choices:

            * Use ``Lock("name", id=id_from_other_place).release()``
            * Use ``Lock("name").reset()``
        """
        if self._lock_renewal_thread is not None:
            self._stop_lock_renewer()
        logger_for_release.debug("Releasing Lock(%r).", self._name)
        sh = self._shared()
        # One round: the unlock script (compare, delete, signal) on every node.
        cmds = self._unlock_cmds
        if cmds is None or len(cmds) != sh.n:
            cmds = self._unlock_cmds = script_commands(_UNLOCK, self._keys(), self._unlock_args, sh.n)
        results = sh.manager.call_nodes(cmds, _deadline(sh), guarded=False)
        redo = noscript_retry(_UNLOCK, self._keys(), self._unlock_args, results)
        if redo is not None:
            again = sh.manager.call_nodes(redo, _deadline(sh), guarded=False)
            results = [a if c is not None else r for r, a, c in zip(results, again, redo)]
        if sum(1 for r in results if type(r) is int and r == 0) >= sh.quorum:
            self._may_hold = self._id_out
            return
        tally = Tally(sh.manager.nodes, results, lambda r: r == 0)
        self._unavailable(sh, tally, "release")
        self._may_hold = self._id_out
        raise NotAcquired(f"Lock({self._name}) is not acquired or it already expired.")

    def locked(self) -> bool:
        """
        Return true if the lock is acquired (the key exists on a majority of
        the nodes), whatever id holds it.
        """
        sh = self._shared()
        results = sh.manager.call_nodes([(b"EXISTS", self._keys()[0])] * sh.n, _deadline(sh))
        tally = Tally(sh.manager.nodes, results, lambda r: r == 1)
        if tally.ok >= sh.quorum:
            return True
        self._unavailable(sh, tally, "read")
        return False

    def __repr__(self) -> str:
        n = len(self._client) if isinstance(self._client, (list, tuple)) else 1
        return f"<{type(self).__module__}.Lock {self._name!r} on {n} node(s)>"


reset_all_script = None


def reset_all(redis_client: Any) -> None:
    """
    Forcibly deletes all locks if its remains (like a crash reason). Use this with care.

    :param redis_client:
        An instance of :class:`~StrictRedis` (or a list of them, or of URLs):
        every ``lock:*`` key of each node's database is deleted and its waiters
        signalled.
    """
    sh = sync_manager(node_list(redis_client))
    results = run_script(sh, _RESET_ALL, [], [], _deadline(sh), guarded=False)
    tally = Tally(sh.manager.nodes, results, lambda r: isinstance(r, int))
    if tally.failed > sh.n - sh.quorum:
        raise QuorumUnavailable(
            f"cannot reset the locks: a majority of {sh.quorum} of {sh.n} nodes is out of reach: {tally.describe()}",
            tally.outcomes,
        )
