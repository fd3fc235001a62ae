# The lock a caller holds.


cdef extern from "Python.h":
    int PyObject_GC_IsTracked(object o)
    void PyObject_GC_Track(object o)
    void PyObject_GC_UnTrack(object o)


cdef class Lock:
    """A held lease.

    ``key`` as given, ``token`` (20 random bytes), ``validity`` (seconds left,
    from the lease clock, CLOCK_BOOTTIME: never from the wall clock), ``valid``, ``nodes`` (how
    many nodes said OK when the quorum was decided), ``fence`` (an int when the
    manager uses fencing, else None).  ``release()`` and ``extend()`` go
    through the manager that made the lock (awaitables in ``quorumlock.aio``,
    plain calls in the blocking API)."""

    cdef:
        readonly object key
        readonly bytes token
        public object fence
        public int nodes
        public object _owner
        object state             # used by the owner (auto-extension, lost-lease events)
        bytes key_b
        uint64_t deadline
        long long ttl_ms
        public bint released
        readonly int pid         # the process that acquired it (see _lock_pid)

    @property
    def _state(self):
        """Owner data (auto-extension, lost-lease events); may refer back to the lock."""
        return self.state

    @_state.setter
    def _state(self, value):
        # A fresh lock is not tracked by the cyclic GC (see new_lock): it refers
        # only to its manager and to bytes.  Owner state can refer back to the
        # lock (a lease), so from then on the GC must see it.
        if value is not None and not PyObject_GC_IsTracked(self):
            PyObject_GC_Track(self)
        self.state = value

    @property
    def validity(self):
        """Seconds of validity left (0.0 once expired or released; ``inf``
        for a lock acquired without expiry, ``attempt_token`` without PX)."""
        cdef uint64_t now
        if self.released:
            return 0.0
        if self.deadline == NO_EXPIRY:
            return float("inf")
        now = now_ns()
        if now >= self.deadline:
            return 0.0
        return <double>(self.deadline - now) / 1e9

    @property
    def valid(self):
        """True while the lease is ours by the client's monotonic clock."""
        return not self.released and now_ns() < self.deadline

    @property
    def ttl(self):
        """The TTL (seconds) of the last successful acquire or extend."""
        return self.ttl_ms / 1000.0

    @property
    def key_bytes(self):
        return self.key_b

    @property
    def deadline_ns(self):
        """Lease-clock ns (``monotonic_ns()``, CLOCK_BOOTTIME) at which validity ends."""
        return self.deadline

    def _set_deadline_ns(self, uint64_t deadline):
        self.deadline = deadline

    def release(self):
        """Release the lock on every node (compare-and-delete)."""
        return self._owner.release_lock(self)

    def extend(self, ttl=None):
        """Extend the lease on a majority (compare-and-pexpire), with a fresh validity."""
        return self._owner.extend_lock(self, ttl)

    @property
    def lost(self):
        """An event (``asyncio.Event`` / ``threading.Event``) set when the
        lease is known to be lost: a renewal failed to reach a quorum in time,
        ``max_hold`` was reached, or validity ran out while held
        (``quorumlock.leases``).  Reading it starts watching the lock."""
        return self._owner.lock_lost_event(self)

    def check(self):
        """Raise ``LockLost`` if the lease is lost (or its validity ran out
        before a release); otherwise return the seconds of validity left."""
        return self._owner.check_lock(self)

    def __aenter__(self):
        return self._owner.aenter_lock(self)

    def __aexit__(self, exc_type, exc, tb):
        return self._owner.aexit_lock(self, exc_type)

    def __enter__(self):
        return self._owner.enter_lock(self)

    def __exit__(self, exc_type, exc, tb):
        return self._owner.exit_lock(self, exc_type)

    def __repr__(self):
        state = "released" if self.released else ("valid %.3fs" % self.validity if self.valid else "expired")
        if not self.released and self.deadline == NO_EXPIRY:
            state = "held, no expiry"
        fence = "" if self.fence is None else f" fence={self.fence}"
        return f"<Lock {self.key!r} {state} nodes={self.nodes}{fence}>"

    def __reduce__(self):
        raise TypeError("a Lock cannot be pickled: it is bound to the manager that acquired it")


# The pid stamped on every new Lock: a forked child inherits its parent's
# Lock objects, and the managers refuse to release or extend those there (the
# parent still holds them).  Cached, refreshed at fork: no syscall per lock.
cdef int _lock_pid = os.getpid()


def _refresh_lock_pid():
    global _lock_pid
    _lock_pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh_lock_pid)


cdef inline Lock new_lock():
    """A Lock, untracked by the cyclic GC until owner state is attached.

    Locks are made at the rate of the lock traffic; tracked, their allocations
    drive gen-0 collections (the same reason the operations are no_gc)."""
    cdef Lock lock = Lock.__new__(Lock)
    PyObject_GC_UnTrack(lock)
    lock.pid = _lock_pid
    return lock
