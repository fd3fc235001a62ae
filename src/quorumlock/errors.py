"""Exceptions.  They subclass redis-py's lock exceptions, so code that already
catches ``redis.exceptions.LockError`` keeps working after switching to quorumlock."""

from __future__ import annotations

from typing import Optional, Sequence

from redis.exceptions import LockError as _RedisLockError
from redis.exceptions import LockNotOwnedError as _RedisLockNotOwnedError

__all__ = [
    "QuorumLockError",
    "ConfigurationError",
    "QuorumError",
    "LockTimeout",
    "LockNotOwned",
    "LockLost",
    "NodeOutcome",
]


class NodeOutcome:
    """What one node answered in one quorum attempt.

    ``status`` is one of ``"ok"``, ``"held"`` (the key is held by someone else),
    ``"error"`` (the node replied with an error: ``detail`` has its text),
    ``"timeout"`` (no reply before the per-node deadline), ``"down"`` (not
    connected), ``"excluded"`` (left out of the quorum by the restart guard,
    or, in a fenced acquire, a yes whose counter is too far ahead of a
    majority's clocks: ``detail`` says which), ``"refused"`` (the node would
    not raise its fence counter that far ahead of its own clock:
    docs/fencing.md) or ``"pending"`` (the attempt was decided before this
    node answered)."""

    __slots__ = ("node", "status", "detail")

    def __init__(self, node: str, status: str, detail: Optional[str] = None) -> None:
        self.node = node
        self.status = status
        self.detail = detail

    def __repr__(self) -> str:
        if self.detail:
            return f"{self.node}: {self.status} ({self.detail})"
        return f"{self.node}: {self.status}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeOutcome):
            return NotImplemented
        return (self.node, self.status, self.detail) == (other.node, other.status, other.detail)


def _describe(outcomes: Sequence[NodeOutcome]) -> str:
    counts: dict = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    return f"{summary} [" + "; ".join(map(repr, outcomes)) + "]"


class QuorumLockError(_RedisLockError):
    """Base class of every quorumlock error (a ``redis.exceptions.LockError``)."""


class ConfigurationError(QuorumLockError, ValueError):
    """The nodes or options cannot work: wrong password, a replica given as a
    master, two URLs that reach the same server, ..."""


class QuorumError(QuorumLockError):
    """A quorum operation did not reach a majority.  ``outcomes`` says what
    every node answered in the attempt."""

    def __init__(self, message: str, outcomes: Sequence[NodeOutcome] = ()) -> None:
        self.outcomes = list(outcomes)
        if self.outcomes:
            message = f"{message}: {_describe(self.outcomes)}"
        super().__init__(message)


class LockTimeout(QuorumError):
    """``acquire`` gave up: the timeout or retry count ran out.  ``outcomes``
    is the per-node result of the last attempt; ``attempts`` how many were made."""

    def __init__(self, key, attempts: int, outcomes: Sequence[NodeOutcome] = ()) -> None:
        self.key = key
        self.attempts = attempts
        super().__init__(f"could not acquire {key!r} after {attempts} attempt(s)", outcomes)


class LockNotOwned(QuorumLockError, _RedisLockNotOwnedError):
    """Extend or release of a lock this client does not hold (any more)."""


class LockLost(LockNotOwned):
    """A held lease ran out or a renewal failed: the work it guarded is no
    longer protected."""
