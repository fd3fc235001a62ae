# Clock and tokens: the two primitives every operation starts with.

TOKEN_SIZE = 20


cdef inline uint64_t now_ns() noexcept nogil:
    return ql_monotonic_ns()


def monotonic_ns():
    """The lease clock in integer nanoseconds: CLOCK_BOOTTIME where available
    (it keeps counting during system suspend), else CLOCK_MONOTONIC.  The
    clock of every validity and deadline in quorumlock; never the wall clock
    (the pure-Python twin reads the same one, quorumlock._clock)."""
    return ql_monotonic_ns()


cdef bytes new_token_c():
    cdef unsigned char buf[20]
    if ql_random_take(buf, 20) != 0:
        PyErr_SetFromErrno(OSError)
    return PyBytes_FromStringAndSize(<char *>buf, 20)


def new_token():
    """Return a fresh 20-byte lock token from the kernel's random source.

    Tokens are handed out from a pool filled by one ``getrandom()`` call; the pool
    is discarded in a forked child, so parent and child never share a token."""
    return new_token_c()


def random_bytes(Py_ssize_t n):
    """``n`` bytes from the kernel's random source (pooled like tokens)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cdef bytearray out = bytearray(n)
    if n and ql_random_take(<unsigned char *><char *>out, <size_t>n) != 0:
        PyErr_SetFromErrno(OSError)
    return bytes(out)
