"""Drop-in classes for the Python lock APIs people already use.

* ``quorumlock.compat.redis_py``: ``Lock`` and ``AsyncLock``, for
  ``redis.lock.Lock`` and ``redis.asyncio.lock.Lock``
  (``r.lock("name", lock_class=Lock)``);
* ``quorumlock.compat.pottery``: ``Redlock``, ``AIORedlock``, ``synchronize``
  and pottery's exceptions;
* ``quorumlock.compat.redis_lock``: python-redis-lock's ``Lock``, ``reset_all``
  and exceptions;
* ``quorumlock.compat.aioredlock``: aioredlock's ``Aioredlock``, ``Lock`` and
  exceptions.

pottery and aioredlock accept several databases (or addresses) of one server
as their masters, so their drop-ins do too, with a ``UserWarning`` that the
quorum is weaker than it looks; the other classes and the native API refuse
it (``LockManager(..., allow_same_server=True)`` opts in).

``docs/migrating.md`` lists every difference from the originals.

This module holds what both share:

* **one manager per set of nodes.**  A drop-in lock is created per use
  (``r.lock(...)`` in a loop), so it must not connect each time.  Locks on the
  same nodes share one ``LockManager`` (blocking) or one
  ``quorumlock.aio.LockManager`` per event loop, found in a cache keyed by the
  nodes' connection settings.  The cache keeps the 32 most recently used sets;
  an evicted manager is closed when the last lock using it goes away.  The
  asyncio managers of a loop are closed when the loop shuts down its
  asynchronous generators (``asyncio.run``, ``asyncio.Runner`` and
  pytest-asyncio all do).
* **acquisition through the engine.**  Every drop-in acquires with
  ``LockManager.attempt_token`` (``SET key token NX [PX ttl]`` with the
  class's own token, no ``PX`` for locks without expiry): the engine's quorum
  rule decides, at a majority, and takes back a failed attempt everywhere.
  redis-py's and pottery's locks acquired that way are released with the
  engine's release too (``release_op``).
* **per-node commands with quorum counting** for what the engine's operations
  do not do: redis-py's "add to the remaining TTL" extension,
  python-redis-lock's signalled release, aioredlock's set-if-ours extension,
  reads (``GET``, ``PTTL``).  They go through ``LockManager.call_nodes`` (the
  engine's connections, pipelined, one per-node deadline, the restart guard
  applied) and the replies are counted here.  Scripts go as ``EVALSHA`` with an
  ``EVAL`` fallback on ``NOSCRIPT``.

``set_manager_options(...)`` sets the ``LockManager`` options of managers made
from then on (``node_timeout``, ``connect_timeout``, ``restart_guard``, ...).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import redis.exceptions as _rexc
from hiredis import ReplyError

from .._backend import core
from .._config import NodeSpec, make_options
from ..aio import LockManager as AioLockManager
from ..blocking import LockManager, check_px
from ..errors import ConfigurationError, NodeOutcome

__all__ = ["set_manager_options", "manager_options"]

#: Most recently used node sets whose manager the cache keeps (per event loop
#: for the asyncio managers).
CACHE_SIZE = 32

#: Token length in random bytes; tokens are sent as lowercase hex (32
#: characters, the length and alphabet of redis-py's ``uuid1().hex`` tokens, so
#: code that decodes or logs them keeps working), but all 128 bits are random.
TOKEN_BYTES = 16

# The connection settings that make two clients reach "the same nodes".
_CONN_KEYS = (
    "host", "port", "path", "db", "username", "password",
    "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data",
    "ssl_check_hostname",
)

_options: Dict[str, Any] = {}
_MANAGER_PARAMS = tuple(
    name for name, p in inspect.signature(LockManager.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and not name.startswith("_")
)


def set_manager_options(**options: Any) -> None:
    """Options (keyword arguments of ``LockManager``) for the managers the
    drop-in classes create from now on, e.g. ``node_timeout=0.05``,
    ``restart_guard=False``, ``connect_timeout=1.0``.  Checked at once;
    managers already made keep their options.  No arguments: back to the
    defaults."""
    unknown = sorted(set(options) - set(_MANAGER_PARAMS) - {"_core"})
    if "allow_same_server" in options:
        raise TypeError("allow_same_server is not a drop-in option: the pottery and aioredlock classes allow "
                        "one server's databases (as those libraries do), the others refuse them")  # _core: the engine build, for tests
    if unknown:
        raise TypeError(f"unknown LockManager option(s) {unknown}; valid: {list(_MANAGER_PARAMS)}")
    make_options(**{k: v for k, v in options.items() if k not in ("ssl_context", "_core")})
    _options.clear()
    _options.update(options)
    with _sync_mutex:
        _sync_cache.clear()
    for reg in list(_loops.values()):
        reg.managers.clear()


def manager_options() -> Dict[str, Any]:
    """The options given to ``set_manager_options`` (a copy)."""
    return dict(_options)


def new_token() -> bytes:
    """A fresh token: 16 bytes from the kernel's random source, as 32 hex characters."""
    return core.random_bytes(TOKEN_BYTES).hex().encode()


# --------------------------------------------------------------------------
# nodes and the manager cache
# --------------------------------------------------------------------------


def node_list(redis: Any) -> List[Any]:
    """A client, a URL, or a collection of them -> a list of nodes."""
    if isinstance(redis, (str, NodeSpec)) or hasattr(redis, "connection_pool"):
        return [redis]
    if isinstance(redis, (list, tuple, set, frozenset)):
        nodes = list(redis)
        if not nodes:
            raise ValueError("no nodes: give a redis-py client, a URL, or a list of them")
        return nodes
    raise TypeError(
        "redis must be a redis-py client, a redis:// URL, or a list of them (a quorum), "
        f"got {type(redis).__name__}"
    )


def _hashable(v: Any) -> Any:
    try:
        hash(v)
    except TypeError:
        return repr(v)
    return v


def _node_key(node: Any) -> Tuple[Any, ...]:
    if isinstance(node, str):
        return ("url", node)
    if isinstance(node, NodeSpec):
        return ("spec", node.identity, node.username, node.password, id(node.ssl) if node.ssl else None)
    pool = getattr(node, "connection_pool", None)
    kw = getattr(pool, "connection_kwargs", None)
    if kw is None:
        raise TypeError(
            "each node must be a redis-py client (Redis or redis.asyncio.Redis; not a cluster client) "
            f"or a redis:// URL, got {type(node).__name__}"
        )
    cls = getattr(pool, "connection_class", None)
    return ("client", getattr(cls, "__name__", "")) + tuple(_hashable(kw.get(k)) for k in _CONN_KEYS)


# A client's key and its sort text, computed once per client object: a drop-in
# lock is made per use (``r.lock(...)`` in a loop), and reading a client's
# thirteen connection settings each time cost about 25 µs per lock at N=3.
# Keyed by id() and checked with a weak reference (a new object at a recycled
# id is not mistaken for the old one); a client's settings are taken as fixed
# once it is made.
_client_keys: Dict[int, Tuple[Any, Tuple[Any, ...], str]] = {}
_CLIENT_KEYS_MAX = 1024


def _cached_key(node: Any) -> Tuple[Tuple[Any, ...], str]:
    hit = _client_keys.get(id(node))
    if hit is not None and hit[0]() is node:
        return hit[1], hit[2]
    key = _node_key(node)
    text = repr(key)
    if isinstance(node, (str, NodeSpec)):
        return key, text
    try:
        ref = weakref.ref(node)
    except TypeError:  # pragma: no cover - redis-py clients take weak references
        return key, text
    if len(_client_keys) >= _CLIENT_KEYS_MAX:
        _client_keys.clear()
    _client_keys[id(node)] = (ref, key, text)
    return key, text


def _ordered(nodes: List[Any]) -> Tuple[Tuple[Any, ...], List[Any]]:
    """Cache key of a node set and the nodes in the key's order: the same
    nodes given in another order (a pottery ``masters`` set) share a manager."""
    triples = sorted(((*_cached_key(nd), nd) for nd in nodes), key=lambda t: t[1])
    return tuple(t[0] for t in triples), [t[2] for t in triples]


class SharedManager:
    """A blocking ``LockManager`` shared by every drop-in lock on the same
    nodes.  Closed when evicted from the cache and no lock uses it any more."""

    __slots__ = ("manager", "n", "quorum", "drift_factor", "node_timeout", "pid", "__weakref__")

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.pid = os.getpid()  # the process whose connections these are
        self.n = manager.n
        self.quorum = manager.quorum
        self.drift_factor = manager.options.drift_factor
        self.node_timeout = manager.options.node_timeout

    def __del__(self) -> None:
        try:
            self.manager.close()
        except Exception:  # pragma: no cover - best effort at garbage collection
            pass


_sync_cache: "OrderedDict[Tuple[Any, ...], SharedManager]" = OrderedDict()
_sync_mutex = threading.Lock()

# Managers inherited from the parent by a forked child: their sockets are
# the parent's.  The child must neither use them (replies would go to whichever
# process reads first) nor close them (closing drains owed replies: it would
# read the parent's); they are kept here, untouched, for the child's lifetime.
_inherited: List[SharedManager] = []


def _after_fork_in_child() -> None:
    global _sync_mutex
    _inherited.extend(_sync_cache.values())
    _sync_cache.clear()
    _sync_mutex = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _manager_kwargs(allow_same_server: bool) -> Dict[str, Any]:
    return dict(_options, allow_same_server=True) if allow_same_server else dict(_options)


def sync_manager(nodes: List[Any], allow_same_server: bool = False) -> SharedManager:
    """The shared blocking manager of ``nodes`` (made on first use; it
    connects on its first operation).  ``allow_same_server``: accept several
    databases or addresses of one server, with a ``UserWarning`` (pottery)."""
    key, ordered = _ordered(nodes)
    key = (allow_same_server,) + key
    with _sync_mutex:
        sh = _sync_cache.get(key)
        if sh is not None:
            _sync_cache.move_to_end(key)
            return sh
    sh = SharedManager(LockManager(ordered, **_manager_kwargs(allow_same_server)))
    with _sync_mutex:
        other = _sync_cache.get(key)
        if other is not None:  # another thread made it meanwhile: use theirs
            _sync_cache.move_to_end(key)
            return other
        _sync_cache[key] = sh
        while len(_sync_cache) > CACHE_SIZE:
            _sync_cache.popitem(last=False)
    return sh


class AioSharedManager(SharedManager):
    """An asyncio ``LockManager`` shared by the drop-in locks of one event loop
    on the same nodes.  ``connected()`` connects it once, whoever asks first."""

    __slots__ = ("loop", "_connecting")

    def __init__(self, manager: Any, loop: Any) -> None:
        super().__init__(manager)
        self.loop = loop
        self._connecting: Optional["asyncio.Task[Any]"] = None

    async def connected(self) -> Any:
        while True:
            task = self._connecting
            if task is None:
                task = self._connecting = self.loop.create_task(self.manager.connect())
                task.add_done_callback(_retrieve)
            if not task.done():
                # Shielded: one caller's cancellation must not cancel the
                # connect that other callers wait for.
                await asyncio.shield(task)
            if task.cancelled() or task.exception() is not None:
                self._connecting = None
                return task.result()  # raises
            if self.manager.engine is not None:
                return self.manager
            self._connecting = None  # closed since (loop shutdown): connect again

    def __del__(self) -> None:
        mgr, loop = self.manager, self.loop
        if mgr.engine is None:
            return
        try:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_close_later, mgr)
        except Exception:  # pragma: no cover - best effort at garbage collection
            pass


_closing: set = set()


def _close_later(mgr: Any) -> None:
    task = asyncio.ensure_future(mgr.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def _retrieve(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled():
        fut.exception()


class _LoopManagers:
    __slots__ = ("managers", "closer", "closed")

    def __init__(self) -> None:
        self.managers: "OrderedDict[Tuple[Any, ...], AioSharedManager]" = OrderedDict()
        self.closer: Any = None
        self.closed = False


_loops: "weakref.WeakKeyDictionary[Any, _LoopManagers]" = weakref.WeakKeyDictionary()


async def _close_at_shutdown(reg: _LoopManagers) -> Any:
    # An asynchronous generator started on the loop: the loop's
    # shutdown_asyncgens() closes it, and this closes the loop's managers while
    # the loop still runs (there is no other hook at loop shutdown).
    try:
        yield
    finally:
        reg.closed = True
        managers = list(reg.managers.values())
        reg.managers.clear()
        for sh in managers:
            try:
                await sh.manager.close()
            except Exception:  # pragma: no cover - closing is best effort
                pass


async def aio_manager(nodes: List[Any], allow_same_server: bool = False) -> AioSharedManager:
    """The shared asyncio manager of ``nodes`` on the running loop, connected
    (``allow_same_server`` as in ``sync_manager``)."""
    loop = asyncio.get_running_loop()
    reg = _loops.get(loop)
    if reg is None or reg.closed:
        reg = _LoopManagers()
        _loops[loop] = reg
        reg.closer = _close_at_shutdown(reg)
        await reg.closer.asend(None)
    key, ordered = _ordered(nodes)
    key = (allow_same_server,) + key
    sh = reg.managers.get(key)
    if sh is None:
        sh = AioSharedManager(AioLockManager(ordered, **_manager_kwargs(allow_same_server)), loop)
        reg.managers[key] = sh
        while len(reg.managers) > CACHE_SIZE:
            reg.managers.popitem(last=False)
    else:
        reg.managers.move_to_end(key)
    await sh.connected()
    return sh


# --------------------------------------------------------------------------
# scripts and replies
# --------------------------------------------------------------------------


class Script:
    """A Lua script sent as ``EVALSHA``, with ``EVAL`` when a node answers
    ``NOSCRIPT`` (a restarted node forgot it; EVAL also caches it again)."""

    __slots__ = ("body", "sha")

    def __init__(self, body: str) -> None:
        self.body = body.encode()
        self.sha = hashlib.sha1(self.body).hexdigest().encode()

    def evalsha(self, keys: Sequence[bytes], args: Sequence[Any]) -> tuple:
        return (b"EVALSHA", self.sha, len(keys), *keys, *args)

    def eval(self, keys: Sequence[bytes], args: Sequence[Any]) -> tuple:
        return (b"EVAL", self.body, len(keys), *keys, *args)


def is_noscript(reply: Any) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")


def script_commands(script: Script, keys: Sequence[bytes], args: Sequence[Any], n: int,
                    only: Optional[Sequence[int]] = None) -> List[Optional[tuple]]:
    cmd = script.evalsha(keys, args)
    if only is None:
        return [cmd] * n
    return [cmd if i in only else None for i in range(n)]


def noscript_retry(script: Script, keys: Sequence[bytes], args: Sequence[Any], results: List[Any]
                   ) -> Optional[List[Optional[tuple]]]:
    """The EVAL commands to resend where a node answered NOSCRIPT, or None."""
    redo = [i for i, r in enumerate(results) if is_noscript(r)]
    if not redo:
        return None
    cmd = script.eval(keys, args)
    return [cmd if i in redo else None for i in range(len(results))]


def run_script(sh: SharedManager, script: Script, keys: Sequence[bytes], args: Sequence[Any],
               timeout: Optional[float] = None, *, only: Optional[Sequence[int]] = None,
               guarded: bool = True, lease_ms: Optional[int] = None) -> List[Any]:
    """Run ``script`` on every node (or the nodes in ``only``): one result per node."""
    mgr = sh.manager
    results = mgr.call_nodes(script_commands(script, keys, args, sh.n, only), timeout,
                             guarded=guarded, lease_ms=lease_ms)
    redo = noscript_retry(script, keys, args, results)
    if redo is not None:
        again = mgr.call_nodes(redo, timeout, guarded=guarded, lease_ms=lease_ms)
        results = [a if c is not None else r for r, a, c in zip(results, again, redo)]
    return results


async def run_script_async(sh: AioSharedManager, script: Script, keys: Sequence[bytes], args: Sequence[Any],
                           timeout: Optional[float] = None, *, only: Optional[Sequence[int]] = None,
                           guarded: bool = True, lease_ms: Optional[int] = None) -> List[Any]:
    """``run_script`` for an asyncio manager."""
    mgr = sh.manager
    results = await mgr.call_nodes(script_commands(script, keys, args, sh.n, only), timeout,
                                   guarded=guarded, lease_ms=lease_ms)
    redo = noscript_retry(script, keys, args, results)
    if redo is not None:
        again = await mgr.call_nodes(redo, timeout, guarded=guarded, lease_ms=lease_ms)
        results = [a if c is not None else r for r, a, c in zip(results, again, redo)]
    return results


def lease_timeout(sh: SharedManager, ttl_ms: Optional[int]) -> float:
    """Per-node reply deadline of a command that sets a lease: much smaller
    than the TTL (docs/algorithm.md), at most the manager's ``node_timeout``."""
    if not ttl_ms:
        return sh.node_timeout
    return max(0.001, min(sh.node_timeout, 0.010 + ttl_ms / 1000.0 * 0.05))


def usable_ttl_ms(sh: SharedManager, ttl_ms: Optional[int], name: str, given: Any, what: str) -> Optional[int]:
    """``ttl_ms`` (None: no expiry) checked with the engine's own rule for a
    caller-token acquire (``quorumlock.blocking.check_px``): too short to ever
    leave validity after the drift allowance, or over the manager's
    ``max_ttl``, raises ``ConfigurationError`` (a ``ValueError`` and a
    ``redis.exceptions.LockError``) naming the drop-in's own argument
    (``name``, shown as the caller gave it: ``given``) and the lock (``what``)."""
    if ttl_ms is None:
        return None
    try:
        check_px(ttl_ms, sh.drift_factor, sh.manager.options.max_ttl, name=name, given=given)
    except ValueError as exc:
        raise ConfigurationError(f"{exc}: {what} could never be acquired; use a longer {name}, "
                                 "or none for no expiry") from None
    return ttl_ms


# The per-node statuses of an outcome that are failures of the node (not an
# answer about the key): what makes a majority out of reach.
_FAILED = frozenset(("error", "timeout", "down", "excluded", "refused"))


def failed_count(outcomes: Sequence[NodeOutcome]) -> int:
    """How many nodes of an engine operation's ``outcomes()`` failed (down,
    timed out, error reply, left out by the restart guard)."""
    return sum(1 for o in outcomes if o.status in _FAILED)


def describe(outcomes: Sequence[NodeOutcome]) -> str:
    """``"2 ok, 1 held [redis://...: ok; ...]"``: for error messages."""
    counts: Dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    return f"{summary} [" + "; ".join(map(repr, outcomes)) + "]"


def redis_errors(outcomes: Sequence[NodeOutcome]) -> List[_rexc.RedisError]:
    """The failed nodes of ``outcomes`` as redis-py exceptions (pottery's
    ``redis_errors``)."""
    out: List[_rexc.RedisError] = []
    for o in outcomes:
        if o.status == "error":
            out.append(_rexc.ResponseError(f"{o.node}: {o.detail}"))
        elif o.status == "timeout":
            out.append(_rexc.TimeoutError(f"{o.node}: no reply before the deadline"))
        elif o.status in _FAILED:
            out.append(_rexc.ConnectionError(f"{o.node}: {o.detail or 'not connected'}"))
    return out


def drift_ns(sh: SharedManager, ttl_ms: int) -> int:
    """The Redlock clock-drift allowance: ``ttl * drift_factor + 2 ms``."""
    return int(ttl_ms * 1e6 * sh.drift_factor) + 2_000_000


class Tally:
    """What the nodes answered to one per-node command: counts, a
    ``NodeOutcome`` per node, and the failures as redis-py exceptions."""

    __slots__ = ("ok", "held", "failed", "outcomes", "errors", "statuses")

    def __init__(self, names: Sequence[str], results: Sequence[Any], ok: Callable[[Any], bool]) -> None:
        self.ok = self.held = self.failed = 0
        self.outcomes: List[NodeOutcome] = []
        self.errors: List[_rexc.RedisError] = []
        self.statuses: List[str] = []
        for name, r in zip(names, results):
            detail = None
            if isinstance(r, ReplyError):
                status, detail = "error", str(r)
                self.errors.append(_rexc.ResponseError(f"{name}: {r}"))
            elif isinstance(r, TimeoutError):
                status, detail = "timeout", None
                self.errors.append(_rexc.TimeoutError(f"{name}: no reply before the deadline"))
            elif isinstance(r, ConnectionError):
                text = str(r)
                status = "excluded" if "restart guard" in text else "down"
                detail = text if status == "excluded" else None
                self.errors.append(_rexc.ConnectionError(text))
            elif isinstance(r, BaseException):  # pragma: no cover - call_nodes returns only the above
                status, detail = "error", repr(r)
                self.errors.append(_rexc.RedisError(repr(r)))
            elif ok(r):
                status = "ok"
            else:
                status = "held"
            if status == "ok":
                self.ok += 1
            elif status == "held":
                self.held += 1
            else:
                self.failed += 1
            self.statuses.append(status)
            self.outcomes.append(NodeOutcome(name, status, detail))

    def describe(self) -> str:
        """``"2 ok, 1 held [redis://...: ok; ...]"``: for error messages."""
        counts: Dict[str, int] = {}
        for st in self.statuses:
            counts[st] = counts.get(st, 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in counts.items())
        return f"{summary} [" + "; ".join(map(repr, self.outcomes)) + "]"



_tasks: set = set()


def background(coro: Any) -> None:
    """Run ``coro`` to completion in the background (a cancelled async
    acquire's clean-up release): a strong reference keeps the task alive,
    and its exception is retrieved so the loop does not report it."""
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_background_done)


def _background_done(task: Any) -> None:
    _tasks.discard(task)
    if not task.cancelled():
        task.exception()
