"""What the asyncio and the blocking LockManager share: option checking, the
node list, TTL conversion, the restart guard's state and engine settings.
Each API adds only its own way of connecting and waiting."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from . import _handshake
from . import metrics as _metrics_mod
from ._backend import core
from ._config import NodeSpec, Options, make_options, parse_nodes, ttl_to_ms


class ManagerBase:
    """Options and nodes of a lock manager (see ``quorumlock.aio.LockManager``
    for every argument)."""

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
        allow_same_server: bool = False,
        _core: Any = None,
    ) -> None:
        self._core = core if _core is None else _core
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
        )
        self._specs: List[NodeSpec] = parse_nodes(nodes, ssl_context, self._opts.connect_timeout)
        self._guard = _handshake.GuardState(len(self._specs))
        self._max_ttl_used_ms = self._opts.ttl_ms
        self._ttl_cache: dict = {}
        self._notify = bool(notify)
        # Two entries that reach one server (two databases, two addresses) are
        # refused at connect unless the caller opts in: the quorum is then
        # weaker than it looks (a UserWarning says so).  For the drop-ins of
        # libraries that accept it (pottery, aioredlock).
        self._allow_same_server = bool(allow_same_server)
        self._metrics: Any = None
        self._leases: Any = None       # quorumlock.leases: the renewer (made on first use)
        self._subscriber: Any = None   # quorumlock.leases.notify: release subscriptions
        self._init_api()
        if metrics:
            _metrics_mod.instrument(self)

    def _init_api(self) -> None:
        """The API's own state (called by ``__init__`` before metrics wrap methods)."""

    # -- properties --------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of nodes."""
        return len(self._specs)

    @property
    def quorum(self) -> int:
        """Votes needed: ``n // 2 + 1``."""
        return len(self._specs) // 2 + 1

    @property
    def nodes(self) -> List[str]:
        """The node addresses (no passwords)."""
        return [s.name for s in self._specs]

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

    def _ttl_ms(self, ttl: Any) -> int:
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
        if self._notify:
            eng.set_release_notify(True)
        return eng
