# Type stubs of quorumlock.blocking (the blocking API).
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Literal, TypeVar

from typing_extensions import ParamSpec

from ._health import Health
from ._manager import ManagerBase
from .rwlock import RWLock
from .semaphore import Semaphore

__all__ = ["LockManager", "Lock"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
#: A key: str (UTF-8 encoded) or bytes.
_Key = str | bytes
_Wait = Literal["poll", "notify"]

class Lock:
    """A held lease, from a blocking ``LockManager``.

    At run time this is the engine's lock class, which the asyncio API shares
    (``quorumlock.aio.Lock``); to a type checker the two faces are distinct,
    since ``release()`` and ``extend()`` return values here and awaitables
    there."""
    @property
    def key(self) -> _Key: ...
    @property
    def token(self) -> bytes: ...
    fence: int | None
    nodes: int
    released: bool
    @property
    def validity(self) -> float: ...
    @property
    def valid(self) -> bool: ...
    @property
    def ttl(self) -> float: ...
    @property
    def key_bytes(self) -> bytes: ...
    @property
    def deadline_ns(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def lost(self) -> threading.Event: ...
    def release(self) -> bool: ...
    def extend(self, ttl: float | None = None) -> bool: ...
    def check(self) -> float: ...
    def __enter__(self) -> Lock: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

class LockManager(ManagerBase):
    def connect(self) -> LockManager: ...
    def close(self) -> None: ...
    def __enter__(self) -> LockManager: ...
    def __exit__(self, *exc: object) -> None: ...
    def try_acquire(self, key: _Key, ttl: float | None = None) -> Lock | None: ...
    def acquire(
        self,
        key: _Key,
        ttl: float | None = None,
        *,
        timeout: float | None = None,
        retry_count: int | None = None,
        wait: _Wait | None = None,
        reentrant: bool = False,
    ) -> Lock: ...
    def lock(
        self,
        key: _Key,
        ttl: float | None = None,
        *,
        timeout: float | None = None,
        retry_count: int | None = None,
        wait: _Wait | None = None,
        auto_extend: bool = False,
        max_hold: float | None = None,
        on_lost: Callable[[Lock, str], object] | None = None,
        margin: float | None = None,
        renew_fraction: float = ...,
        reentrant: bool = False,
    ) -> AbstractContextManager[Lock, None]: ...
    def acquire_many(self, keys: Iterable[_Key], ttl: float | None = None) -> list[Lock | None]: ...
    def release_many(self, locks: Iterable[Lock]) -> list[bool]: ...
    def release(self, lock: Lock) -> bool: ...
    def call_nodes(
        self,
        commands: Sequence[Sequence[str | bytes | int | float] | None],
        timeout: float | None = None,
        *,
        guarded: bool = True,
        lease_ms: int | None = None,
    ) -> list[Any]: ...
    def guard(
        self,
        lock: Lock,
        *,
        auto_extend: bool = True,
        max_hold: float | None = None,
        on_lost: Callable[[Lock, str], object] | None = None,
        margin: float | None = None,
        renew_fraction: float = ...,
    ) -> Lock: ...
    def exclusive(
        self,
        key: str,
        ttl: float | None = None,
        *,
        wait: bool | float = False,
        auto_extend: bool = True,
        max_hold: float | None = None,
        margin: float | None = None,
        skip_result: object = None,
        raise_on_skip: bool = False,
        on_skip: Callable[[str], object] | None = None,
        on_lost: Callable[[Lock, str], object] | None = None,
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R | None]]: ...
    def metrics(self) -> dict[str, Any]: ...
    def health(self, timeout: float | None = None) -> Health: ...
    def attempt_token(self, key: _Key, token: bytes, px: int | None = None, *, timeout: float | None = None) -> Lock | None: ...
    def release_op(self, lock: Lock) -> Any: ...
    def semaphore(self, name: _Key, permits: int, ttl: float | None = None) -> Semaphore: ...
    def rwlock(self, name: _Key, max_readers: int = 16, ttl: float | None = None) -> RWLock: ...
    # The LockOwner protocol: what a Lock and the engine call on their manager.
    def release_lock(self, lock: Lock) -> bool: ...
    def extend_lock(self, lock: Lock, ttl: float | None) -> bool: ...
    def lock_lost_event(self, lock: Lock) -> Any: ...
    def check_lock(self, lock: Lock) -> float: ...
    def enter_lock(self, lock: Lock) -> Any: ...
    def exit_lock(self, lock: Lock, exc_type: Any) -> None: ...
    def aenter_lock(self, lock: Lock) -> Any: ...
    def aexit_lock(self, lock: Lock, exc_type: Any) -> Any: ...
    def node_lost(self, i: int, exc: Any) -> None: ...
