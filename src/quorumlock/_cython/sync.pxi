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

from libc.errno cimport errno, EINTR
from cpython.exc cimport PyErr_CheckSignals

cdef extern from "ql_net.h" nogil:
    int ql_would_block(int e) noexcept
from cpython.bytearray cimport PyByteArray_AS_STRING


cdef enum:
    MAX_READS = 16          # recv() calls per read_ready (16 x 64 KiB)
    MAX_POLL_MS = 50        # a wait wakes at least this often (signals, deadlines)
    SYNC_BACKLOG = 256      # replies owed by one node before a blocking call waits for them


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
        cdef int reads = 0
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
                node._received(r)
                reads += 1
                if not self.sock.pending() or reads >= MAX_READS:
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
            node._received(r)
            reads += 1
            # Bounded: a node streaming without end must not keep this loop
            # away from the deadlines (the wait loop comes back for more).
            if r < INBUF_SIZE or reads >= MAX_READS:
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

    def discard(self):
        """Close the file descriptor without any I/O and without telling the
        node (a forked child dropping a socket it shares with its parent)."""
        if self.closed:
            return
        self.closed = True
        self.pending = None
        try:
            self.sock.close()
        except OSError:
            pass

    def close(self):
        if self.pending is not None and not self.closed:
            self.flush_pending()
        self._lost(None)


@cython.no_gc
cdef class ProbeOp(Op):
    """``ECHO <nonce>`` on a suspect connection (a reply was overdue).  Its
    own nonce back, in its own slot, proves the connection in step; anything
    else (another reply, no reply in time) resets the connection."""

    cdef:
        bytes nonce
        NodeConn node

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        self.decided = True
        self.complete = True
        if self.node.transport is None:
            return 0
        if type(reply) is bytes and reply == self.nonce:
            node.suspect = False
            return 0
        self.engine._log_error(node.name, "connection out of step (probe got another reply), resetting", None)
        node.abort()
        return 0

    cdef int on_fail(self, int idx, int32_t aux, int st, object detail) except -1:
        if self.decided:
            return 0
        self.decided = True
        self.complete = True
        if st == ST_TIMEOUT and self.node.transport is not None and self.node.suspect:
            self.engine._log_error(self.node.name, "probe unanswered, resetting the connection", None)
            self.node.abort()
        return 0


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
        public object granted        # the Lock last granted to the caller (see blocking._LockContext)
        bint just_read               # the entry read already ran for this call
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
        self.granted = None
        self.just_read = False
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

    def _on_overdue(self, int idx):
        """Node ``idx`` missed a deadline: suspect its connection and probe it."""
        self.check_index(idx)
        cdef NodeConn node = <NodeConn>self.nodes[idx]
        cdef ProbeOp op
        if node.suspect or node.transport is None:
            return
        node.suspect = True
        op = ProbeOp.__new__(ProbeOp)
        op._init(self, None)
        op.node = node
        op.nonce = b"ql-probe-" + random_bytes(8).hex().encode()
        self.scratch2.clear()
        self.scratch2.write_command((b"ECHO", op.nonce))
        # Behind every overdue request: allow the node a few more deadlines.
        node.send(self.scratch2, op, 0, now_ns() + 4 * self.node_timeout_ns + 50000000ULL)

    def _node_lost(self, int idx, exc):
        cdef double b = self.backoff[idx]
        self.all_ready = False
        self.reconnect_at[idx] = now_ns() + <uint64_t>(b * 1e9)
        # Capped at 0.5 s: a restarted node must not wait long to count again.
        self.backoff[idx] = min(b * 2, 0.5)

    cdef int _poll_ready(self, int timeout_ms, bint only_pending) except -1:
        """One poll() over the connected sockets (``only_pending``: those with
        replies owed or bytes to send), then read/write what is ready.  An
        interrupted poll runs the signal handlers, which may raise
        (KeyboardInterrupt): the caller then abandons its operation."""
        cdef NodeConn node
        cdef SyncSocket t
        cdef int i, nf = 0, rc
        cdef int idx_of[MAX_NODES]
        cdef short ev
        for i in range(self.n):
            node = <NodeConn>self.nodes[i]
            if not node.connected or node.transport is None:
                continue
            t = <SyncSocket>node.transport
            if only_pending and not node.count and t.pending is None:
                continue
            self.fds[nf].fd = t.fd
            self.fds[nf].events = POLLIN
            if t.pending is not None:
                self.fds[nf].events = POLLIN | POLLOUT
            self.fds[nf].revents = 0
            idx_of[nf] = i
            nf += 1
        if nf == 0:
            if only_pending:
                return 0
            # Nothing can answer: every node is down.  The operation was
            # already failed by fanout; only a deadline can be waiting.
            if timeout_ms > 0:
                if self.green_poll is not None:
                    self.green_poll([], timeout_ms)
                    return 0
                with nogil:
                    rc = poll(NULL, 0, timeout_ms)
                if rc < 0 and errno == EINTR:
                    PyErr_CheckSignals()
            return 0
        if self.green_poll is not None:
            rc = self._green_wait(nf, timeout_ms)
        else:
            with nogil:
                rc = poll(self.fds, nf, timeout_ms)
        if rc < 0:
            if errno == EINTR:
                PyErr_CheckSignals()
            return 0
        if rc == 0:
            return 0
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
        return 0

    cdef inline int _entry_read(self) except -1:
        self._poll_ready(0, True)
        self.just_read = True    # the wait that follows need not read again
        return 0

    cdef int _wait(self, Op op, uint64_t until) except -1:
        """Drive the sockets until ``op`` is decided or ``until`` (monotonic
        ns, 0 = none) passes; queued writes are always flushed first.

        Replies that have already arrived are read before any deadline is
        checked (a reply sitting in the socket is not a missing reply), and
        once more when ``op`` is decided, so that replies nobody waits for
        (the last node's, the releases') never pile up.  Signals are checked
        on every round and poll() never sleeps longer than MAX_POLL_MS."""
        cdef NodeConn node
        cdef uint64_t now, next_t
        cdef int i, timeout_ms
        if self.just_read:
            self.just_read = False
        else:
            self._poll_ready(0, True)
        while True:
            # Flush before the signal check: a release asked for goes out
            # even if a handler raises now.
            self._flush()
            PyErr_CheckSignals()
            if op.complete:
                self._poll_ready(0, True)
                self._bound_backlog()
                self._drain_writes()
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
            now = now_ns()
            timeout_ms = 0
            if next_t > now:
                timeout_ms = <int>((next_t - now + 999999ULL) // 1000000ULL)
            if timeout_ms > MAX_POLL_MS:
                timeout_ms = MAX_POLL_MS
            self._poll_ready(timeout_ms, False)

    cdef int _bound_backlog(self) except -1:
        """Backpressure for the blocking API: a caller may not run ahead of a
        node by more than SYNC_BACKLOG unanswered requests (replies nobody
        waits for: a failed attempt's release, the last node's SET).  It
        waits for that node's replies; a node that stops answering is made
        suspect by its deadline instead, and then gets no new requests."""
        cdef NodeConn node
        cdef bint heavy
        cdef uint64_t now
        while True:
            heavy = False
            now = now_ns()
            for node in self.nodes:
                if node.connected and node.count > SYNC_BACKLOG:
                    if node.timer is not None and node.timer_at <= now:
                        node._on_timer()
                    if node.connected and node.count > SYNC_BACKLOG and not node.suspect:
                        heavy = True
            if not heavy:
                return 0
            self._poll_ready(1, True)
            PyErr_CheckSignals()

    cdef bint _any_pending_write(self):
        cdef NodeConn node
        for node in self.nodes:
            if node.connected and node.transport is not None and (<SyncSocket>node.transport).pending is not None:
                return True
        return False

    cdef int _drain_writes(self) except -1:
        """Bytes still in a user-space send buffer when an operation is
        decided (a slow node, a big batch) go out now, for up to
        max(1 s, node_timeout), not whenever this thread calls again."""
        cdef uint64_t now, limit = 0
        while self._any_pending_write():
            now = now_ns()
            if limit == 0:
                limit = now + max(<uint64_t>1000000000ULL, self.node_timeout_ns)
            elif now >= limit:
                return 0
            self._poll_ready(MAX_POLL_MS, True)
            PyErr_CheckSignals()
        return 0

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

    cdef int _abandon(self, Op op) except -1:
        """The caller leaves with an exception (a signal handler raised, e.g.
        KeyboardInterrupt) while ``op`` may have taken keys on some nodes:
        release them now, before the exception propagates.  The release is
        queued behind the SET on every ordered connection, so it cannot
        overtake it, whatever the operation would have decided."""
        cdef AcquireOp a
        cdef AcquireManyOp m
        cdef int i
        if isinstance(op, AcquireOp):
            a = <AcquireOp>op
            if isinstance(a.result, Lock):
                (<Lock>a.result).released = True
            self.send_release(a.key_b, a.token, None, NULL)
        elif isinstance(op, AcquireManyOp):
            m = <AcquireManyOp>op
            if type(m.result) is list:
                for x in m.result:
                    if isinstance(x, Lock):
                        (<Lock>x).released = True
            for i in range(self.n):
                self.send_release_many_to(i, m.keys_b, m.tokens)
        self._flush()
        return 0

    cdef object _run_acquire(self, Op op):
        try:
            self._wait(op, 0)
        except BaseException:
            self._abandon(op)
            raise
        if isinstance(op.result, Lock):
            self.granted = op.result
        return op.result

    cdef object _run_release(self, Op op):
        try:
            self._wait(op, 0)
        except BaseException:
            self._flush()   # the release goes out even when the wait is interrupted
            raise
        return op.result

    def try_acquire_sync(self, key, long long ttl_ms):
        self._entry_read()   # late replies first: a probe may clear a suspect node
        return self._run_acquire(self._attempt(key, ttl_ms))

    def attempt_sync(self, key, long long ttl_ms):
        self._entry_read()
        cdef AcquireOp op = self._attempt(key, ttl_ms)
        self._run_acquire(op)
        return op

    def release_sync(self, Lock lock not None):
        return self._run_release(self._release(lock))

    def extend_sync(self, Lock lock not None, long long ttl_ms):
        self._entry_read()
        return self._run(self._extend(lock, ttl_ms))

    def acquire_many_sync(self, keys, long long ttl_ms):
        self._entry_read()
        return self._run_acquire(self._acquire_many(keys, ttl_ms))

    def acquire_each_sync(self, keys, long long ttl_ms):
        """One attempt per key with the single-key operation (fenced or
        lock-delay acquires), all sent before the first wait."""
        self._entry_read()
        cdef list ops = [self._attempt(k, ttl_ms) for k in keys]
        cdef Op op
        try:
            for op in ops:
                self._wait(op, 0)
        except BaseException:
            for op in ops:
                self._abandon(op)
            raise
        return [op.result for op in ops]

    def release_each_sync(self, locks):
        cdef list ops = [self._release(lk) for lk in locks]
        cdef Op op
        for op in ops:
            self._run_release(op)
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
        return self._run_release(self._release_many(locks))

    def discard(self):
        """Forget every connection without any I/O: close the descriptors,
        drop what is queued and pending, tell no operation.  For a forked
        child, whose inherited sockets are shared with its parent: reading
        or writing them would steal or interleave the parent's replies."""
        cdef NodeConn node
        self.rel_queue = []
        for node in self.nodes:
            node.forget()
        self.all_ready = False

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
        """Wait for the replies still owed (``drain_timeout`` s without progress, at most 30 times that), then
        close.  Closing a socket with unread replies makes the kernel send a
        reset, and the node drops the commands it had not read yet: releases
        sent just before would be lost and their keys left until the TTL."""
        cdef NodeConn node
        cdef Op waiter = Op.__new__(Op)
        cdef uint64_t until, step, cap, window
        cdef Py_ssize_t owed, last_owed = -1
        waiter._init(self, None)
        window = <uint64_t>(drain_timeout * 1e9)
        until = now_ns() + window
        # While the nodes keep answering, keep waiting (a big batch's
        # releases take longer than the window to drain), up to 30 windows.
        cap = now_ns() + 30 * window
        while True:
            self._flush()
            owed = 0
            for node in self.nodes:
                if node.connected:
                    owed += node.count
            if owed == 0:
                break
            step = now_ns()
            if last_owed >= 0 and owed < last_owed:
                until = min(step + window, cap)
            last_owed = owed
            step += 1000000ULL
            if step >= until:
                break
            self._wait(waiter, step)
        for node in self.nodes:
            node.ready = False
            if node.transport is not None:
                node.transport.close()


cdef class SyncLockContext:
    """``with locks.lock(key):`` for the blocking manager, written in C so
    that a signal-raised exception (KeyboardInterrupt, a timer's) cannot land
    between the grant and the hand-over, or between ``__exit__`` starting and
    the release being queued: compiled code never runs signal handlers on its
    own, while a Python ``__exit__`` can be interrupted at its first line.

    ``__enter__``: any exit by exception releases what was granted (the
    engine's ``granted`` holds the lock it granted last to this thread until
    it is stored here).  ``__exit__``: the release is queued before any
    handler can run; if one raises in the release's wait, the release has
    already been written."""

    cdef object mgr, key, ttl, timeout, retry
    cdef object lock

    def __init__(self, mgr, key, ttl, timeout, retry):
        self.mgr = mgr
        self.key = key
        self.ttl = ttl
        self.timeout = timeout
        self.retry = retry
        self.lock = None

    def __enter__(self):
        eng = self.mgr.checkout()
        eng.granted = None
        try:
            self.lock = self.mgr.acquire(self.key, self.ttl, timeout=self.timeout, retry_count=self.retry)
        except BaseException:
            lock = self.lock if self.lock is not None else eng.granted
            self.lock = None
            eng.granted = None
            if lock is not None:
                self._release(lock)
            raise
        return self.lock

    cdef _release(self, lock):
        try:
            self.mgr.release_lock(lock)
        except BaseException:
            # Interrupted before the release was queued: queue it again.
            if not lock.released:
                try:
                    self.mgr.release_lock(lock)
                except Exception:
                    pass
            raise

    def __exit__(self, exc_type, exc, tb):
        lock = self.lock
        if lock is not None:
            self.lock = None
            self._release(lock)
        return None
