"""What the asyncio and the blocking LockManager share: option checking, the
node list, TTL conversion, the restart guard's state and engine settings.
Each API adds only its own way of connecting and waiting."""

from __future__ import annotations

import inspect
import os
import types
import weakref
from typing import Any, List, Mapping, Optional, Sequence

from . import _env, _handshake
from . import metrics as _metrics_mod
from ._backend import core
from ._config import NodeSpec, Options, make_options, parse_nodes, ttl_to_ms


class ManagerBase:
    """Options and nodes of a lock manager (see ``quorumlock.aio.LockManager``
    for every argument)."""

    #: True on the asyncio face (``quorumlock.aio``), False on the blocking one.
    is_async: bool = False

    def __init__(
        self,
        nodes: Sequence[Any],
        *,
        ttl: float = 10.0,
        drift_factor: float = 0.01,
        retry_count: int = 3,
        retry_delay: Any = (0.1, 0.3),
        node_timeout: Optional[float] = None,
        connect_timeout: float = 2.0,
        max_key_length: int = 1024,
        max_ttl: float = 86400.0,
        batch_chunk: int = 500,
        restart_guard: Any = True,
        guard_window: Optional[float] = None,
        fencing: bool = False,
        lock_delay: Optional[float] = None,
        ssl_context: Any = None,
        notify: bool = False,
        metrics: bool = False,
        max_pending: int = 65536,
        max_reply_bytes: int = 64 * 1024 * 1024,
        native_commands: bool = True,
        allow_same_server: bool = False,
        _core: Any = None,
    ) -> None:
        self.core = core if _core is None else _core
        self._opts: Options = make_options(
            ttl=ttl,
            drift_factor=drift_factor,
            retry_count=retry_count,
            retry_delay=retry_delay,
            node_timeout=node_timeout,
            connect_timeout=connect_timeout,
            max_key_length=max_key_length,
            max_ttl=max_ttl,
            batch_chunk=batch_chunk,
            restart_guard=restart_guard,
            guard_window=guard_window,
            fencing=fencing,
            lock_delay=lock_delay,
            max_pending=max_pending,
            max_reply_bytes=max_reply_bytes,
            native_commands=native_commands,
        )
        self.node_specs: List[NodeSpec] = parse_nodes(nodes, ssl_context, self._opts.connect_timeout)
        self.guard_state = _handshake.GuardState(len(self.node_specs))
        self._max_ttl_used_ms = self._opts.ttl_ms
        self._ttl_cache: dict = {}
        self._notify = bool(notify)
        # Two entries that reach one server (two databases, two addresses) are
        # refused at connect unless the caller opts in: the quorum is then
        # weaker than it looks (a UserWarning says so).  For the drop-ins of
        # libraries that accept it (pottery, aioredlock).
        self._allow_same_server = bool(allow_same_server)
        self.meter: Any = None           # quorumlock.metrics.Metrics, when metrics are on
        self.observer: Any = None        # quorumlock._faces.Observer: told of every decided operation
        self.lease_renewer: Any = None       # quorumlock.leases: the renewer (made on first use)
        self.release_subscriber: Any = None   # quorumlock.leases.notify: release subscriptions
        self._pid = os.getpid()
        self._init_api()
        _LIVE.add(self)
        if metrics:
            _metrics_mod.instrument(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            cls.__init__ = _public_init(cls)  # type: ignore[method-assign]

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> Any:
        """A manager configured by ``QUORUMLOCK_NODES`` (comma-separated URLs)
        and ``QUORUMLOCK_<OPTION>`` variables (docs/configuration.md); keyword
        arguments override them.  ``environ``: default ``os.environ``."""
        return _env.from_env(cls, environ, overrides)

    def _init_api(self) -> None:
        """The API's own state (called by ``__init__`` before metrics wrap methods)."""

    def _after_fork_child(self) -> None:
        """Called in a forked child (os.register_at_fork, and by the pid check
        on every checkout): forget every inherited connection without I/O."""

    # -- properties --------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of nodes."""
        return len(self.node_specs)

    @property
    def quorum(self) -> int:
        """Votes needed: ``n // 2 + 1``."""
        return len(self.node_specs) // 2 + 1

    @property
    def nodes(self) -> List[str]:
        """The node addresses (no passwords)."""
        return [s.name for s in self.node_specs]

    @property
    def notify(self) -> bool:
        """True when releases publish and ``acquire`` waits for them (``notify=True``)."""
        return self._notify

    @property
    def ttl(self) -> float:
        """The default lease, seconds."""
        return self._opts.ttl

    @property
    def options(self) -> Options:
        return self._opts

    @property
    def guard_window(self) -> float:
        """Seconds a restarted node stays out of quorums (restart guard)."""
        if self._opts.guard_window is not None:
            return self._opts.guard_window
        # With lock_delay, a marker outlives its lease by the delay: a node
        # that lost it in a volatile restart must stay out for that long too,
        # or its missing marker would shorten the delay.
        return (self._max_ttl_used_ms + self._opts.lock_delay_ms) / 1000.0 * (1.0 + self._opts.drift_factor)

    # -- helpers -----------------------------------------------------------

    def ttl_ms(self, ttl: Any) -> int:
        """Seconds -> whole ms (checked, cached for plain numbers); remembers
        the longest TTL used, which sizes the restart guard's window."""
        if ttl is None:
            return self._opts.ttl_ms
        ms = self._ttl_cache.get(ttl) if type(ttl) in (int, float) else None
        if ms is None:
            ms = ttl_to_ms("ttl", ttl, self._opts.drift_factor, self._opts.max_ttl)
            if type(ttl) in (int, float) and len(self._ttl_cache) < 64:
                self._ttl_cache[ttl] = ms
        if ms > self._max_ttl_used_ms:
            self._max_ttl_used_ms = ms
        return ms

    def _configure(self, eng: Any) -> Any:
        """Apply the manager's options to a new engine."""
        eng.guard = self._opts.restart_guard is not False
        eng.fencing = self._opts.fencing
        eng.lock_delay_ms = self._opts.lock_delay_ms
        eng.max_pending = self._opts.max_pending
        eng.max_reply_bytes = self._opts.max_reply_bytes
        if self._notify:
            eng.set_release_notify(True)
        return eng


# Every manager alive in this process: a forked child resets them all at once
# (its inherited sockets are shared with the parent; see docs/engine.md).
_LIVE: "weakref.WeakSet[ManagerBase]" = weakref.WeakSet()


def _reset_after_fork() -> None:
    for mgr in list(_LIVE):
        try:
            mgr._after_fork_child()
        except Exception:  # pragma: no cover - never fail a fork
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _public_init(cls: type) -> Any:
    """A copy of ``ManagerBase.__init__`` named after ``cls``: a mistyped
    keyword reports ``LockManager.__init__()``, not ``ManagerBase.__init__()``,
    and ``help()`` shows no private parameter."""
    base: Any = ManagerBase.__init__
    qualname = f"{cls.__qualname__}.__init__"
    code = base.__code__
    if hasattr(code, "co_qualname"):  # Python 3.11+: messages use the code's qualname
        code = code.replace(co_qualname=qualname)
    fn: Any = types.FunctionType(code, base.__globals__, "__init__", base.__defaults__, base.__closure__)
    fn.__kwdefaults__ = base.__kwdefaults__
    fn.__qualname__ = qualname
    fn.__module__ = cls.__module__
    fn.__doc__ = base.__doc__
    fn.__annotations__ = dict(base.__annotations__)
    sig = inspect.signature(base)
    params = [p.replace(annotation=_SHOWN_TYPES.get(p.name, p.annotation))
              for p in sig.parameters.values() if not p.name.startswith("_")]
    fn.__signature__ = sig.replace(parameters=params)
    return fn


#: The types ``help()`` shows for the options the code annotates loosely (as
#: in the stubs, _manager.pyi, which type checkers read).
_SHOWN_TYPES = {
    "nodes": "Sequence[str | NodeSpec | redis.Redis] | redis.Redis",
    "retry_delay": "float | tuple[float, float]",
    "restart_guard": "bool | Literal['strict']",
    "ssl_context": "ssl.SSLContext | None",
}
