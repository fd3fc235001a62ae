# One connection to one Redis node: the asyncio protocol, its output buffer,
# and the FIFO of operations waiting for a reply.
#
# RESP replies arrive in request order on a connection, so the n-th reply
# belongs to the n-th pending slot.  Slots are C structs in a ring buffer (one
# strong reference to the operation each), not Python objects per reply.

ctypedef struct Slot:
    PyObject *op
    int32_t aux         # which part of the operation (a batch's chunk offset)
    uint8_t expired     # its deadline passed and the operation was told
    uint64_t deadline   # CLOCK_MONOTONIC ns


cdef class NodeConn:
    """The engine's side of one node connection (asyncio BufferedProtocol)."""

    cdef:
        readonly int idx
        readonly str name
        Engine engine
        object transport
        object _write
        object reader
        object _feed
        object _gets
        bytearray inbuf
        object inview
        WriteBuffer out
        Slot *ring
        Py_ssize_t ring_cap
        Py_ssize_t head
        Py_ssize_t count
        object timer
        uint64_t timer_at
        object _timer_cb
        public bint connected   # a transport is attached
        public bint ready       # connected and the handshake passed: counts in quorums
        public bint paused      # the transport asked us to stop writing (pause_writing)
        public bint suspect     # a reply is overdue: no new requests until a probe answers (blocking)
        Py_ssize_t partial      # bytes received of the reply still being parsed
        public object run_id
        public object info      # dict of the last handshake's INFO fields
        public uint64_t counted_after  # restart guard: not counted before this monotonic ns
        public long long sent
        public long long errors
        public long long timeouts

    def __cinit__(self):
        self.ring = <Slot *>PyMem_Malloc(RING_INITIAL * sizeof(Slot))
        if self.ring is NULL:
            raise MemoryError()
        self.ring_cap = RING_INITIAL
        self.head = 0
        self.count = 0

    def __init__(self, Engine engine, int idx, str name):
        self.engine = engine
        self.idx = idx
        self.name = name
        self.out = WriteBuffer(16384)
        self.inbuf = bytearray(INBUF_SIZE)
        self.inview = memoryview(self.inbuf)
        self.transport = None
        self.timer = None
        self._timer_cb = self._on_timer
        self.connected = False
        self.ready = False
        self.paused = False
        self.suspect = False
        self.partial = 0
        self.run_id = None
        self.info = None
        self.counted_after = 0
        self._new_reader()

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.ring is not NULL:
            for i in range(self.count):
                Py_XDECREF(self.ring[(self.head + i) & (self.ring_cap - 1)].op)
            PyMem_Free(self.ring)
            self.ring = NULL

    cdef _new_reader(self):
        self.partial = 0
        self.reader = Reader()
        self._feed = self.reader.feed
        self._gets = self.reader.gets

    # -- pending slots ---------------------------------------------------

    cdef int _grow_ring(self) except -1:
        cdef Py_ssize_t cap = self.ring_cap * 2
        cdef Slot *nr = <Slot *>PyMem_Malloc(cap * sizeof(Slot))
        cdef Py_ssize_t i
        if nr is NULL:
            raise MemoryError()
        for i in range(self.count):
            nr[i] = self.ring[(self.head + i) & (self.ring_cap - 1)]
        PyMem_Free(self.ring)
        self.ring = nr
        self.ring_cap = cap
        self.head = 0
        return 0

    cdef int push(self, Op op, int32_t aux, uint64_t deadline) except -1:
        cdef Slot *s
        if self.count == self.ring_cap:
            self._grow_ring()
        s = &self.ring[(self.head + self.count) & (self.ring_cap - 1)]
        Py_INCREF(op)
        s.op = <PyObject *>op
        s.aux = aux
        s.expired = 0
        s.deadline = deadline
        self.count += 1
        if self.timer is None:
            self._arm(deadline)
        elif deadline < self.timer_at:
            # The armed check is later than this slot's deadline (it was set
            # for a stall check): bring it forward.
            self._disarm()
            self._arm(deadline)
        return 0

    cdef int send(self, WriteBuffer cmd, Op op, int32_t aux, uint64_t deadline) except -1:
        """Queue one encoded command; its reply goes to ``op``."""
        self.out.write(cmd.buf, cmd.len)
        self.push(op, aux, deadline)
        self.sent += 1
        return 0

    cdef object overloaded(self):
        """None if the connection can take one more request, else why not:
        the transport paused writing (its buffer is over the high-water mark:
        the node is not reading), or ``max_pending`` requests are in flight.
        Either way the caller fails this node at once instead of queueing."""
        if self.paused:
            return "write buffer full (the node is not reading): failing fast"
        if self.count >= self.engine.max_pending:
            return f"{self.count} requests in flight (max_pending={self.engine.max_pending}): failing fast"
        return None

    cdef inline void _disarm(self):
        if self.timer is not None and self.timer is not True:
            self.timer.cancel()
        self.timer = None

    cdef int _arm(self, uint64_t deadline) except -1:
        cdef uint64_t now
        if self.engine.sync:
            # The blocking engine's wait loop checks timer_at itself.
            self.timer_at = deadline
            self.timer = True
            return 0
        now = now_ns()
        cdef double delay = 0.0
        if deadline > now:
            delay = <double>(deadline - now) / 1e9
        self.timer_at = deadline
        # +0.5 ms: uvloop timers have millisecond resolution; never fire early.
        self.timer = self.engine.loop.call_later(delay + 0.0005, self._timer_cb)
        return 0

    def _on_timer(self):
        """Per-node deadline check.  One timer per connection (not per
        operation), left armed while requests flow and re-armed lazily."""
        cdef uint64_t now = now_ns()
        cdef uint64_t nxt = 0xFFFFFFFFFFFFFFFFULL
        cdef Py_ssize_t i
        cdef Slot *s
        cdef list expired = None
        self.timer = None
        if self.count == 0:
            return
        for i in range(self.count):
            s = &self.ring[(self.head + i) & (self.ring_cap - 1)]
            if s.deadline <= now:
                if not s.expired:
                    s.expired = 1
                    if expired is None:
                        expired = []
                    expired.append((<object>s.op, s.aux))
            elif s.deadline < nxt:
                nxt = s.deadline
        s = &self.ring[self.head]
        if s.deadline + self.engine.stall_ns <= now:
            # The oldest request is far overdue: the node hangs or the path is
            # blackholed.  Drop the connection (pending operations fail as
            # down) and reconnect with backoff.
            self.abort()
        elif nxt != 0xFFFFFFFFFFFFFFFFULL:
            self._arm(nxt)
        else:
            self._arm(s.deadline + self.engine.stall_ns)
        if expired is not None:
            self.timeouts += len(expired)
            for op, aux in expired:
                (<Op>op).on_fail(self.idx, <int32_t>aux, ST_TIMEOUT, None)
            if self.engine.sync and self.transport is not None:
                # A reply that did not come may never come (a process that
                # shares the socket read it, or the node lost it), and every
                # later reply would then be credited to the wrong request.
                # The blocking engine reads what has arrived before it checks
                # deadlines, so the connection is suspect: it takes no new
                # requests until a probe proves it in step (SyncEngine).
                (<object>self.engine)._on_overdue(self.idx)

    cdef list _take_all(self):
        cdef list pending = []
        cdef Slot *s
        cdef Py_ssize_t i
        for i in range(self.count):
            s = &self.ring[(self.head + i) & (self.ring_cap - 1)]
            pending.append((<object>s.op, s.aux))
            Py_XDECREF(s.op)
            s.op = NULL
        self.head = 0
        self.count = 0
        return pending

    # -- asyncio protocol ------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self._write = transport.write
        self.connected = True
        self._new_reader()

    def get_buffer(self, sizehint):
        return self.inview

    def buffer_updated(self, Py_ssize_t nbytes):
        self._feed(self.inbuf, 0, nbytes)
        self._received(nbytes)

    def data_received(self, data):
        self._feed(data)
        self._received(len(data))

    def eof_received(self):
        return False

    def pause_writing(self):
        # The transport's buffer is over its high-water mark: new requests
        # fail this node fast (overloaded()) until it drains.
        self.paused = True

    def resume_writing(self):
        self.paused = False

    def connection_lost(self, exc):
        self.connected = False
        self.ready = False
        self.paused = False
        self.suspect = False
        self.transport = None
        self._write = None
        self.out.clear()
        self._disarm()
        pending = self._take_all()
        detail = str(exc) if exc is not None else "connection closed"
        for op, aux in pending:
            (<Op>op).on_fail(self.idx, <int32_t>aux, ST_DOWN, detail)
        self.engine._node_lost(self.idx, exc)

    cdef int _received(self, Py_ssize_t nbytes) except -1:
        """``nbytes`` were just fed to the parser: dispatch the complete
        replies, then enforce ``max_reply_bytes`` on the one still arriving
        (a node streaming a huge reply is cut off, not buffered whole)."""
        if self._drain():
            # A reply completed: what the parser still holds belongs to the next.
            self.partial = self.reader.len() if self.transport is not None else 0
        else:
            self.partial += nbytes
        if self.partial > self.engine.max_reply_bytes and self.transport is not None:
            self.engine._log_error(
                self.name, "reply too large, dropping the connection",
                f"over {self.partial} bytes (max_reply_bytes={self.engine.max_reply_bytes})")
            self.abort()
        return 0

    cdef int _drain(self) except -1:
        """Dispatch every complete reply; 1 if there was at least one."""
        cdef int got = 0
        cdef object reply
        cdef Slot *s
        cdef Op op
        cdef int32_t aux
        gets = self._gets
        while True:
            try:
                reply = gets()
            except Exception as exc:   # hiredis.ProtocolError: the stream is corrupt
                self.engine._log_error(self.name, "protocol error", exc)
                self.abort()
                return 0
            if reply is False:
                return got
            got = 1
            if self.count == 0:
                # A reply nobody asked for: the stream is out of step, and every
                # later reply would be matched to the wrong request.
                self.engine._log_error(self.name, "unexpected reply", reply)
                self.abort()
                return 0
            s = &self.ring[self.head]
            op = <Op>s.op
            aux = s.aux
            Py_XDECREF(s.op)
            s.op = NULL
            self.head = (self.head + 1) & (self.ring_cap - 1)
            self.count -= 1
            try:
                op.on_reply(self, reply, aux)
            except Exception as exc:
                # Never raise into the event loop: a bug in one operation must
                # not kill the connection's other operations.
                self.engine._log_error(self.name, "error handling reply", exc)

    def abort(self):
        if self.transport is not None:
            self.transport.abort()

    def forget(self):
        """Drop the connection without I/O (after fork(): see
        SyncEngine.discard); pending operations are not told."""
        t = self.transport
        self.connected = False
        self.ready = False
        self.paused = False
        self.suspect = False
        self.transport = None
        self._write = None
        self.out.clear()
        self._disarm()
        self._take_all()
        self._new_reader()
        if t is not None and hasattr(t, "discard"):
            t.discard()

    def close(self):
        if self.transport is not None:
            self.transport.close()

    @property
    def pending(self):
        return self.count

    def __repr__(self):
        return f"<NodeConn {self.idx} {self.name} ready={self.ready} pending={self.count}>"


class NodeProtocol(NodeConn, asyncio.BufferedProtocol):
    """NodeConn as a real ``asyncio.BufferedProtocol`` subclass: the default
    loop checks ``isinstance`` to use ``get_buffer``/``buffer_updated`` (the
    asyncpg pattern of a Python class over a cdef class)."""
