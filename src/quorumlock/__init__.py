"""quorumlock: Redlock with a compiled core.

A lease held by a majority of N independent Redis masters, acquired with one
pipelined fan-out to all nodes, timed with CLOCK_MONOTONIC, with 20-byte kernel
random tokens.  See ``quorumlock.aio`` for the asyncio API and ``quorumlock.nodes``
to run local nodes."""

from ._backend import IMPLEMENTATION
from .errors import (
    ConfigurationError,
    LockLost,
    LockNotOwned,
    LockTimeout,
    NodeOutcome,
    QuorumError,
    QuorumLockError,
)

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION",
    "ConfigurationError",
    "LockLost",
    "LockNotOwned",
    "LockTimeout",
    "NodeOutcome",
    "QuorumError",
    "QuorumLockError",
    "__version__",
]
