"""Pure-Python twin of the compiled core ``quorumlock._core``.

Same names, same behaviour, slower.  Selected by ``QUORUMLOCK_NO_EXTENSIONS=1``
or when the extension is not built (see ``quorumlock._backend``)."""

from __future__ import annotations

import os
import threading
import time

IMPLEMENTATION = "python"
TOKEN_SIZE = 20
_POOL_SIZE = 4096


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC in integer nanoseconds."""
    return time.monotonic_ns()


class _Pool:
    __slots__ = ("buf", "pos", "lock")

    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0
        self.lock = threading.Lock()

    def forget(self) -> None:
        self.buf = b""
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n > _POOL_SIZE:
            return os.urandom(n)
        with self.lock:
            if len(self.buf) - self.pos < n:
                self.buf = os.urandom(_POOL_SIZE)
                self.pos = 0
            out = self.buf[self.pos : self.pos + n]
            self.pos += n
            return out


_pool = _Pool()
if hasattr(os, "register_at_fork"):
    # A child must not hand out the tokens its parent is about to use.
    os.register_at_fork(after_in_child=_pool.forget)


def new_token() -> bytes:
    """Return a fresh 20-byte lock token from the kernel's random source."""
    return _pool.take(TOKEN_SIZE)


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the kernel's random source."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return _pool.take(n) if n else b""
