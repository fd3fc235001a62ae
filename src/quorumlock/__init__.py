"""quorumlock: Redlock with a compiled core.

A lease held by a majority of N independent Redis masters, acquired with one
pipelined fan-out to all nodes, timed with CLOCK_MONOTONIC, with 20-byte kernel
random tokens.  ``quorumlock.LockManager`` is the blocking API,
``quorumlock.aio.LockManager`` the asyncio one (``quorumlock.Lock`` and
``quorumlock.aio.Lock`` the types of their locks), and ``quorumlock.nodes`` runs
local nodes."""

from ._backend import IMPLEMENTATION
from ._health import Health, NodeHealth
from .blocking import Lock, LockManager
from .errors import (
    ConfigurationError,
    LockLost,
    LockNotOwned,
    LockTimeout,
    NodeOutcome,
    QuorumError,
    QuorumLockError,
)
from .leader import AsyncLeaderElection, LeaderElection

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION",
    "LockManager",
    "Lock",
    "Health",
    "NodeHealth",
    "LeaderElection",
    "AsyncLeaderElection",
    "ConfigurationError",
    "LockLost",
    "LockNotOwned",
    "LockTimeout",
    "NodeOutcome",
    "QuorumError",
    "QuorumLockError",
    "__version__",
]
