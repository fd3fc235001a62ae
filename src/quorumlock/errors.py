"""Exceptions.  They subclass redis-py's lock exceptions, so code that already
catches ``redis.exceptions.LockError`` keeps working after switching to quorumlock."""

from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence

from redis.exceptions import LockError as _RedisLockError
from redis.exceptions import LockNotOwnedError as _RedisLockNotOwnedError

__all__ = [
    "QuorumLockError",
    "ConfigurationError",
    "DuplicateNode",
    "QuorumError",
    "LockTimeout",
    "LockNotOwned",
    "LockLost",
    "NodeOutcome",
    "scrub_text",
]

# Redis echoes a rejected command's arguments ("ERR unknown command 'SET', with
# args beginning with: 'key' '<token>' ..."): everything after that is cut.
_ECHOED_ARGS = re.compile(r"(with args beginning with:).*", re.S)
# A quoted argument holding bytes that are not printable text (a random token,
# decoded with replacement characters) is elided wherever it appears.
_BINARY_QUOTED = re.compile(r"'[^']*[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f][^']*'")
_MAX_TEXT = 300


def scrub_text(text: object, secrets: Iterable[bytes] = ()) -> str:
    """A server's error text (or any reply-derived text) made safe for an
    exception message, a per-node outcome or a log line: no lock token or
    other secret in it.

    Every form of each of ``secrets`` (raw, hex, as the server's reply would
    decode it) is replaced by ``<elided>``, echoed command arguments are cut,
    quoted binary arguments are elided, and the text is capped at 300
    characters."""
    t = text if isinstance(text, str) else str(text)
    for sec in secrets:
        if not sec:
            continue
        forms = {sec.hex(), sec.decode("latin-1"), sec.decode("utf-8", "replace"), repr(sec)[2:-1]}
        for f in forms:
            if f and f in t:
                t = t.replace(f, "<elided>")
    t = _ECHOED_ARGS.sub(r"\1 (arguments elided)", t)
    t = _BINARY_QUOTED.sub("'<elided>'", t)
    if len(t) > _MAX_TEXT:
        t = t[:_MAX_TEXT] + "..."
    return t


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


class DuplicateNode(ConfigurationError):
    """A node reconnected to a server that another listed node already
    reaches (same ``run_id``): it is left out of quorums, and its per-node
    outcome says "duplicate of node X"."""


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
