"""The package's inner interface: what its modules may call on a manager.

Two typed protocols, checked by tests/test_faces.py:

* ``Face``: a lock manager as the rest of the package sees it (jobs, leader,
  leases, semaphores, read-write locks, integrations, metrics, health).
  ``is_async`` tells the asyncio face (operations return awaitables) from
  the blocking one; ``checkout()`` gives the engine (the asyncio manager's
  one engine, or the calling thread's connection set).  Nothing outside
  ``aio.py``, ``blocking.py`` and ``_manager.py`` touches a manager's private
  members.
* ``LockOwner``: what a ``Lock`` and the engine call on the manager that
  issued the lock.
* ``Observer``: what a manager tells of each decided operation (metrics).
"""

from __future__ import annotations

from typing import Any, List, Optional, Protocol, runtime_checkable

from ._config import NodeSpec, Options

__all__ = ["Face", "LockOwner", "Observer", "is_async"]


def is_async(locks: Any, what: str) -> bool:
    """The face of ``locks``: True for ``quorumlock.aio.LockManager``, False
    for ``quorumlock.LockManager``; ``TypeError`` naming ``what`` (the
    caller) for anything else."""
    face = getattr(locks, "is_async", None)
    if not isinstance(face, bool):
        raise TypeError(f"{what} takes a quorumlock LockManager (blocking or quorumlock.aio), "
                        f"got {type(locks).__name__}")
    return face


@runtime_checkable
class Observer(Protocol):
    """Told by a manager of every operation it decides (``manager.observer``;
    ``quorumlock.metrics.MetricsObserver`` is the one the package registers).
    Durations are seconds; called on the caller's thread or the event loop,
    and must not block."""

    def on_acquire(self, seconds: float, ok: bool) -> None: ...

    def on_release_start(self) -> None: ...

    def on_release(self, seconds: float, ok: bool) -> None: ...

    def on_extend(self, seconds: float, ok: bool) -> None: ...

    def on_batch(self, op: str, seconds: float, done: int, total: int, held_change: int) -> None: ...


@runtime_checkable
class LockOwner(Protocol):
    """The callbacks of a lock's manager (``Lock.release()`` calls
    ``release_lock``, ``async with lock`` calls ``aenter_lock`` ...).  On the
    asyncio face ``release_lock``, ``extend_lock`` and ``aexit_lock`` return
    awaitables; on the blocking face, results."""

    def release_lock(self, lock: Any) -> Any: ...

    def extend_lock(self, lock: Any, ttl: Optional[float]) -> Any: ...

    def lock_lost_event(self, lock: Any) -> Any: ...

    def check_lock(self, lock: Any) -> float: ...

    def enter_lock(self, lock: Any) -> Any: ...

    def exit_lock(self, lock: Any, exc_type: Any) -> None: ...

    def aenter_lock(self, lock: Any) -> Any: ...

    def aexit_lock(self, lock: Any, exc_type: Any) -> Any: ...

    def node_lost(self, i: int, exc: Any) -> None: ...


@runtime_checkable
class Face(LockOwner, Protocol):
    """A lock manager as the package's own modules use it."""

    #: True: ``quorumlock.aio`` (awaitables); False: ``quorumlock.LockManager``.
    is_async: bool
    #: The engine module in use (compiled or pure-Python twin).
    core: Any
    #: The parsed node list, in node order.
    node_specs: List[NodeSpec]
    #: The restart guard's per-node state (``_handshake.GuardState``).
    guard_state: Any
    #: The lease renewer (``quorumlock.leases``), made on first use.
    lease_renewer: Any
    #: The release-notification subscriber (``quorumlock.leases.notify``).
    release_subscriber: Any
    #: The metrics (``quorumlock.metrics.Metrics``), None when off.
    meter: Any
    #: The ``Observer`` told of every decided operation, or None.
    observer: Optional[Observer]

    @property
    def n(self) -> int: ...

    @property
    def quorum(self) -> int: ...

    @property
    def options(self) -> Options: ...

    def checkout(self) -> Any:
        """The engine to use now; ``RuntimeError`` when not connected / closed."""

    def ttl_ms(self, ttl: Any) -> int:
        """``ttl`` seconds (None: the default) as checked whole milliseconds."""

    def acquire(self, key: Any, ttl: Optional[float] = None, **options: Any) -> Any: ...

    def try_acquire(self, key: Any, ttl: Optional[float] = None) -> Any: ...
