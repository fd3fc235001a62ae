# The blocking engine: the same operations, driven by poll() over the N node
# sockets instead of an event loop.  No background thread, no loop hop: the
# calling thread sends, then waits in poll() with the GIL released, parses the
# replies as they come and returns the moment the quorum is decided.


cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, nfds_t nfds, int timeout)
    enum:
        POLLIN
        POLLOUT
        POLLERR
        POLLHUP
        POLLNVAL

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int sockfd, const void *buf, size_t len, int flags)
    ssize_t recv(int sockfd, void *buf, size_t len, int flags)
    enum:
        MSG_DONTWAIT

cdef extern from *:
    """
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    """
    enum:
        MSG_NOSIGNAL

from libc.errno cimport errno

cdef extern from "ql_net.h" nogil:
    int ql_would_block(int e) noexcept
from cpython.bytearray cimport PyByteArray_AS_STRING


cdef class SyncSocket:
    """A minimal transport over a non-blocking socket for the blocking engine.

    Plain TCP and unix sockets are read and written with the C calls on the
    file descriptor; TLS sockets go through the ``ssl`` module's methods."""

    cdef:
        NodeConn node
        object sock
        int fd
        bint tls
        bytearray pending
        public bint closed

    def __init__(self, NodeConn node, sock, bint tls):
        self.node = node
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = tls
        self.pending = None
        self.closed = False

    def write(self, bytes data):
        cdef Py_ssize_t n
        if self.closed:
            return
        if self.pending is not None:
            self.pending += data
            return
        n = self._send(data)
        if n < 0:
            return
        if n < PyBytes_GET_SIZE(data):
            self.pending = bytearray(data[n:])

    cdef Py_ssize_t _send(self, object data) except -2:
        cdef ssize_t r
        cdef const char *buf
        cdef Py_ssize_t length
        if self.tls:
            try:
                return self.sock.send(data)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return 0
            except OSError as exc:
                self._lost(exc)
                return -1
        if type(data) is bytes:
            buf = PyBytes_AS_STRING(data)
            length = PyBytes_GET_SIZE(data)
        else:
            buf = PyByteArray_AS_STRING(data)
            length = len(data)
        with nogil:
            r = send(self.fd, buf, length, MSG_DONTWAIT | MSG_NOSIGNAL)
        if r < 0:
            if ql_would_block(errno):
                return 0
            self._lost(OSError(errno, "send failed"))
            return -1
        return r

    cdef int flush_pending(self) except -1:
        cdef Py_ssize_t n
        if self.pending is None or self.closed:
            return 0
        n = self._send(self.pending)
        if n < 0:
            return 0
        if n >= len(self.pending):
            self.pending = None
        else:
            del self.pending[:n]
        return 0

    cdef bint wants_write(self):
        return self.pending is not None

    cdef int read_ready(self) except -1:
        """Read what the socket has, feed it to the node's parser."""
        cdef ssize_t r
        cdef NodeConn node = self.node
        cdef char *buf
        if self.closed:
            return 0
        if self.tls:
            while not self.closed:
                try:
                    r = self.sock.recv_into(node.inbuf)
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return 0
                except OSError as exc:
                    self._lost(exc)
                    return 0
                if r == 0:
                    self._lost(None)
                    return 0
                node._feed(node.inbuf, 0, r)
                node._drain()
                if not self.sock.pending():
                    return 0
            return 0
        buf = PyByteArray_AS_STRING(node.inbuf)
        while not self.closed:
            with nogil:
                r = recv(self.fd, buf, INBUF_SIZE, MSG_DONTWAIT)
            if r < 0:
                if ql_would_block(errno):
                    return 0
                self._lost(OSError(errno, "recv failed"))
                return 0
            if r == 0:
                self._lost(None)
                return 0
            node._feed(node.inbuf, 0, r)
            node._drain()
            if r < INBUF_SIZE:
                return 0
        return 0

    cdef _lost(self, exc):
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        self.node.connection_lost(exc)

    def abort(self):
        self._lost(ConnectionAbortedError("connection aborted by the client"))

    def close(self):
        if self.pending is not None and not self.closed:
            self.flush_pending()
        self._lost(None)


cdef class SyncEngine(Engine):
    """One set of N blocking connections.  A blocking LockManager keeps a pool
    of these, one checked out per calling thread, so threads never share a
    socket and no lock is held while waiting on the network."""

    cdef:
        pollfd *fds
        public object reconnect_at   # list: monotonic ns when node i may be retried
        public object backoff        # list: seconds of the next reconnect backoff
        public object maintenance_epoch
        public bint all_ready
        # None: wait in C poll().  Else green_poll(want, timeout_ms) -> ready,
        # with want/ready lists of (fd, events): the cooperative wait chosen by
        # blocking.py under gevent/eventlet monkey-patching.
        public object green_poll

    def __cinit__(self, *args, **kwargs):
        self.fds = NULL

    def __init__(self, names, owner, double node_timeout, double drift_factor,
                 Py_ssize_t max_key_len=1024, Py_ssize_t batch_chunk=500, stall_timeout=None):
        Engine.__init__(self, None, names, owner, node_timeout, drift_factor, max_key_len,
                        batch_chunk, stall_timeout)
        self.fds = <pollfd *>PyMem_Malloc(self.n * sizeof(pollfd))
        if self.fds is NULL:
            raise MemoryError()
        self.reconnect_at = [0] * self.n
        self.backoff = [0.05] * self.n
        self.maintenance_epoch = -1
        self.all_ready = False
        self.green_poll = None

    def __dealloc__(self):
        PyMem_Free(self.fds)
        self.fds = NULL

    def attach(self, int idx, sock, bint tls):
        """Use the connected socket ``sock`` (made non-blocking here) for node ``idx``."""
        self.check_index(idx)
        cdef NodeConn node = <NodeConn>self.nodes[idx]
        sock.setblocking(False)
        node.connection_made(SyncSocket(node, sock, tls))

    def _node_lost(self, int idx, exc):
        cdef double b = self.backoff[idx]
        self.all_ready = False
        self.reconnect_at[idx] = now_ns() + <uint64_t>(b * 1e9)
        # Capped at 0.5 s: a restarted node must not wait long to count again.
        self.backoff[idx] = min(b * 2, 0.5)

    cdef int _wait(self, Op op, uint64_t until) except -1:
        """Drive the sockets until ``op`` is decided or ``until`` (monotonic
        ns, 0 = none) passes; queued writes are always flushed first."""
        cdef NodeConn node
        cdef SyncSocket t
        cdef uint64_t now, next_t
        cdef int i, nf, rc, timeout_ms
        cdef int idx_of[MAX_NODES]
        cdef short ev
        while True:
            self._flush()
            if op.complete:
                return 0
            now = now_ns()
            if until and now >= until:
                return 0
            next_t = until if until else now + 1000000000ULL
            for i in range(self.n):
                node = <NodeConn>self.nodes[i]
                if node.count and node.timer is not None:
                    if node.timer_at <= now:
                        node._on_timer()
                    if node.timer is not None and node.timer_at < next_t:
                        next_t = node.timer_at
            if op.complete:
                continue
            nf = 0
            for i in range(self.n):
                node = <NodeConn>self.nodes[i]
                if not node.connected or node.transport is None:
                    continue
                t = <SyncSocket>node.transport
                self.fds[nf].fd = t.fd
                self.fds[nf].events = POLLIN
                if t.pending is not None:
                    self.fds[nf].events = POLLIN | POLLOUT
                self.fds[nf].revents = 0
                idx_of[nf] = i
                nf += 1
            now = now_ns()
            timeout_ms = 0
            if next_t > now:
                timeout_ms = <int>((next_t - now + 999999ULL) // 1000000ULL)
            if nf == 0:
                # Nothing can answer: every node is down.  The operation was
                # already failed by fanout; only a deadline can be waiting.
                if timeout_ms > 0:
                    if self.green_poll is not None:
                        self.green_poll([], timeout_ms)
                    else:
                        with nogil:
                            poll(NULL, 0, timeout_ms)
                continue
            if self.green_poll is not None:
                rc = self._green_wait(nf, timeout_ms)
            else:
                with nogil:
                    rc = poll(self.fds, nf, timeout_ms)
            if rc <= 0:
                continue
            for i in range(nf):
                ev = self.fds[i].revents
                if not ev:
                    continue
                node = <NodeConn>self.nodes[idx_of[i]]
                if node.transport is None:
                    continue
                t = <SyncSocket>node.transport
                if ev & POLLOUT:
                    t.flush_pending()
                if ev & (POLLIN | POLLERR | POLLHUP | POLLNVAL):
                    t.read_ready()

    cdef int _green_wait(self, int nf, int timeout_ms) except -1:
        """``poll()`` through ``green_poll``: the fds' revents set, the count returned."""
        cdef int i, rc = 0
        want = [(self.fds[i].fd, self.fds[i].events) for i in range(nf)]
        got = dict(self.green_poll(want, timeout_ms))
        for i in range(nf):
            self.fds[i].revents = got.get(self.fds[i].fd, 0)
            if self.fds[i].revents:
                rc += 1
        return rc

    def wait(self, Op op, timeout=None):
        """Wait for ``op`` (at most ``timeout`` seconds); return its result."""
        cdef uint64_t until = 0
        if timeout is not None:
            until = now_ns() + <uint64_t>(timeout * 1e9)
        self._wait(op, until)
        return op.result

    # -- the blocking face: each returns the result -----------------------

    cdef inline object _run(self, Op op):
        self._wait(op, 0)
        return op.result

    def try_acquire_sync(self, key, long long ttl_ms):
        return self._run(self._attempt(key, ttl_ms))

    def attempt_sync(self, key, long long ttl_ms):
        cdef AcquireOp op = self._attempt(key, ttl_ms)
        self._wait(op, 0)
        return op

    def release_sync(self, Lock lock not None):
        return self._run(self._release(lock))

    def extend_sync(self, Lock lock not None, long long ttl_ms):
        return self._run(self._extend(lock, ttl_ms))

    def acquire_many_sync(self, keys, long long ttl_ms):
        return self._run(self._acquire_many(keys, ttl_ms))

    def acquire_each_sync(self, keys, long long ttl_ms):
        """One attempt per key with the single-key operation (fenced or
        lock-delay acquires), all sent before the first wait."""
        cdef list ops = [self._attempt(k, ttl_ms) for k in keys]
        cdef Op op
        for op in ops:
            self._wait(op, 0)
        return [op.result for op in ops]

    def release_each_sync(self, locks):
        cdef list ops = [self._release(lk) for lk in locks]
        cdef Op op
        for op in ops:
            self._wait(op, 0)
        return [op.result for op in ops]

    def extend_each_sync(self, locks, ttls_ms):
        """Extend every lock in ``locks`` (``ttls_ms[i]`` ms for ``locks[i]``):
        all extends are queued before the first wait, so each node gets them
        in one write.  Returns the decided operations (``op.result`` is
        True/False, ``op.outcomes()`` the per-node answers).  Used by the
        auto-extension thread (``quorumlock.leases``)."""
        cdef list ops = [self._extend(<Lock?>lk, <long long>t) for lk, t in zip(locks, ttls_ms)]
        cdef Op op
        for op in ops:
            self._wait(op, 0)
        return ops

    def release_many_sync(self, locks):
        return self._run(self._release_many(locks))

    def call_op(self, int idx, tuple args not None, timeout=None):
        """Queue one command to one node; ``wait(op)`` gives its reply."""
        return self._call(idx, args, timeout)

    def call_sync(self, int idx, tuple args not None, timeout=None):
        """One command to one node; raises TimeoutError/ConnectionError."""
        cdef Op op = self._call(idx, args, timeout)
        self._wait(op, 0)
        if isinstance(op.result, (TimeoutError, ConnectionError)):
            raise op.result
        return op.result

    def close(self, double drain_timeout=0.5):
        """Wait (at most ``drain_timeout`` s) for the replies still owed, then
        close.  Closing a socket with unread replies makes the kernel send a
        reset, and the node drops the commands it had not read yet: releases
        sent just before would be lost and their keys left until the TTL."""
        cdef NodeConn node
        cdef Op waiter = Op.__new__(Op)
        cdef uint64_t until, step
        waiter._init(self, None)
        until = now_ns() + <uint64_t>(drain_timeout * 1e9)
        while True:
            self._flush()
            if not any((<NodeConn>node).count and (<NodeConn>node).connected for node in self.nodes):
                break
            step = now_ns() + 1000000ULL
            if step >= until:
                break
            self._wait(waiter, step)
        for node in self.nodes:
            node.ready = False
            if node.transport is not None:
                node.transport.close()
