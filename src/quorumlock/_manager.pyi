# Type stubs of quorumlock._manager: what both LockManager classes share.
import ssl
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, TypeVar, Union

from typing_extensions import Self, TypeAlias

from typing import Any

from ._config import NodeSpec, Options
from ._faces import Observer

class _RedisClient(Protocol):
    """A redis-py client (``redis.Redis``, ``redis.asyncio.Redis``): only its
    connection settings are used."""
    @property
    def connection_pool(self) -> object: ...

#: One node: a ``redis://`` / ``rediss://`` / ``unix://`` URL, a NodeSpec, or a redis-py client.
_NodeLike: TypeAlias = Union[str, NodeSpec, _RedisClient]
#: The node list (a single redis-py client is a one-node list).
_Nodes: TypeAlias = Union[Sequence[_NodeLike], _RedisClient]
#: ``retry_delay``: seconds, or a ``(low, high)`` range.
_RetryDelay: TypeAlias = Union[float, tuple[float, float], list[float]]
#: ``restart_guard``: on, off, or strict.
_RestartGuard: TypeAlias = Union[bool, Literal["strict"]]

class ManagerBase:
    def __init__(
        self,
        nodes: _Nodes,
        *,
        ttl: float = 10.0,
        drift_factor: float = 0.01,
        retry_count: int = 3,
        retry_delay: _RetryDelay = (0.1, 0.3),
        node_timeout: float | None = None,
        connect_timeout: float = 2.0,
        max_key_length: int = 1024,
        max_ttl: float = 86400.0,
        batch_chunk: int = 500,
        restart_guard: _RestartGuard = True,
        guard_window: float | None = None,
        fencing: bool = False,
        lock_delay: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        notify: bool = False,
        metrics: bool = False,
        max_pending: int = 65536,
        max_reply_bytes: int = 67108864,
        allow_same_server: bool = False,
        native_commands: bool = True,
    ) -> None: ...
    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        nodes: _Nodes = ...,
        ttl: float = ...,
        drift_factor: float = ...,
        retry_count: int = ...,
        retry_delay: _RetryDelay = ...,
        node_timeout: float | None = ...,
        connect_timeout: float = ...,
        max_key_length: int = ...,
        max_ttl: float = ...,
        batch_chunk: int = ...,
        restart_guard: _RestartGuard = ...,
        guard_window: float | None = ...,
        fencing: bool = ...,
        lock_delay: float | None = ...,
        ssl_context: ssl.SSLContext | None = ...,
        notify: bool = ...,
        metrics: bool = ...,
        max_pending: int = ...,
        max_reply_bytes: int = ...,
        allow_same_server: bool = ...,
        native_commands: bool = ...,
    ) -> Self: ...
    @property
    def n(self) -> int: ...
    @property
    def quorum(self) -> int: ...
    @property
    def nodes(self) -> list[str]: ...
    @property
    def ttl(self) -> float: ...
    @property
    def options(self) -> Options: ...
    @property
    def guard_window(self) -> float: ...
    @property
    def notify(self) -> bool: ...
    # The face (quorumlock._faces): for the package's own modules.
    is_async: bool
    core: Any
    node_specs: list[NodeSpec]
    guard_state: Any
    lease_renewer: Any
    release_subscriber: Any
    meter: Any
    observer: Observer | None
    def ttl_ms(self, ttl: float | None) -> int: ...
