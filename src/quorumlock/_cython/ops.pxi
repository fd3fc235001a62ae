# Quorum operations.  Each node's reply bumps C counters on the operation; the
# waiter (one future per operation, or none) resolves the moment the outcome is
# decided; replies that arrive later only update the counters.


# Operations are not tracked by the cyclic GC (@cython.no_gc): they are made
# and dropped at the rate of the lock traffic, and tracking them made gen-0
# collections ~18 % of the client's CPU at 1,024 concurrent callers (perf).
# They take part in no lasting cycle: op -> waiter future -> task -> frame ->
# op exists only while the future is pending, and the loop breaks it when the
# future completes or is cancelled.


NOSCRIPT_LATE = "NOSCRIPT after the operation was decided: not re-sent"

# The deadline of a lease whose key has no expiry (a caller-token acquire
# without PX, Engine.attempt_token): never reached.
cdef uint64_t NO_EXPIRY = 0xFFFFFFFFFFFFFFFFULL

# Caller tokens (Engine.attempt_token): bytes, 1 to MAX_TOKEN_LEN long.
MAX_TOKEN_LEN = 512


cdef bytes caller_token(object token):
    """``token`` checked as a caller-chosen lock token: bytes of 1 to
    MAX_TOKEN_LEN bytes (TypeError / ValueError naming ``token``, without its
    value: a token is a secret)."""
    if type(token) is not bytes:
        if isinstance(token, (bytearray, memoryview)) or (isinstance(token, bytes)):
            token = bytes(token)
        else:
            raise TypeError(f"token must be bytes, got {type(token).__name__}")
    if PyBytes_GET_SIZE(token) == 0 or PyBytes_GET_SIZE(token) > MAX_TOKEN_LEN:
        raise ValueError(f"token must be 1 to {MAX_TOKEN_LEN} bytes long, got {PyBytes_GET_SIZE(token)} bytes")
    return <bytes>token


cdef inline bint is_reply_error(object reply):
    return isinstance(reply, ReplyError)


cdef inline bint is_noscript(object reply):
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")


@cython.no_gc
cdef class Op:
    cdef:
        Engine engine
        public object waiter
        readonly object result
        uint64_t t0
        int n
        int quorum
        int n_ok
        int n_bad
        bint decided
        uint32_t sent           # nodes the command was queued to (fanout)
        public bint complete    # the result is set (decided, and any second round done)
        unsigned char status[MAX_NODES]
        list details

    cdef inline int _init(self, Engine engine, object waiter) except -1:
        self.engine = engine
        self.waiter = waiter
        self.n = engine.n
        self.quorum = engine.quorum
        self.t0 = now_ns()
        memset(self.status, 0, MAX_NODES)
        return 0

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        raise NotImplementedError

    cdef int on_fail(self, int idx, int32_t aux, int st, object detail) except -1:
        return self.mark(idx, st, detail)

    cdef int mark(self, int idx, int st, object detail) except -1:
        if self.status[idx] != ST_PENDING:
            return 0
        self.status[idx] = <unsigned char>st
        if st == ST_OK:
            self.n_ok += 1
        else:
            self.n_bad += 1
            if detail is not None:
                if self.details is None:
                    self.details = [None] * self.n
                self.details[idx] = detail
        if not self.decided and (self.n_ok >= self.quorum or self.n_bad > self.n - self.quorum):
            self.decided = True
            self.decide()
        return 0

    cdef int mark_error(self, NodeConn node, object reply) except -1:
        # The server's text may echo our arguments (a token): scrubbed.
        node.errors += 1
        return self.mark(node.idx, ST_ERROR, scrub_text(reply, self.secrets()))

    cdef tuple secrets(self):
        """Tokens this operation sends (kept out of error texts)."""
        return ()

    cdef int decide(self) except -1:
        return 0

    cdef int resend_eval(self, NodeConn node, int32_t aux, uint64_t deadline) except -1:
        raise NotImplementedError

    cdef int finish(self, object result) except -1:
        self.result = result
        self.complete = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(result)
        return 0

    def outcomes(self):
        """Per-node result of this operation: a list of ``NodeOutcome``."""
        out = []
        for i in range(self.n):
            d = self.details[i] if self.details is not None else None
            out.append(NodeOutcome(self.engine.node_names[i], STATUS_NAMES[self.status[i]], d))
        return out

    @property
    def ok_count(self):
        return self.n_ok

    @property
    def done(self):
        return self.decided

    @property
    def elapsed(self):
        return <double>(now_ns() - self.t0) / 1e9


@cython.no_gc
cdef class AcquireOp(Op):
    """SET key token NX PX ttl on every node; success on a majority with
    validity left (docs/algorithm.md)."""

    cdef:
        object key
        bytes key_b
        bytes token
        long long ttl_ms
        uint64_t drift_ns

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        if reply is None:
            return self.mark(node.idx, ST_HELD, None)
        if type(reply) is bytes and reply == b"OK":
            return self.mark(node.idx, ST_OK, None)
        if is_reply_error(reply):
            return self.mark_error(node, reply)
        return self.mark(node.idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r}", self.secrets()))

    cdef tuple secrets(self):
        return (self.token,)

    cdef int decide(self) except -1:
        # Elapsed time is read here, after the deciding reply was parsed, never
        # before reading: a pause between sending and reading must count
        # against validity (docs/faults.md row 12).
        cdef uint64_t now = now_ns()
        cdef uint64_t expiry = self.t0 + <uint64_t>self.ttl_ms * 1000000ULL
        cdef uint64_t end = expiry - self.drift_ns
        cdef Lock lock
        if self.ttl_ms == 0:
            # A caller-token acquire without PX (Engine.attempt_token): the
            # key never expires, so neither does the lease.
            expiry = end = NO_EXPIRY
        if self.n_ok >= self.quorum and now < end:
            lock = new_lock()
            lock._owner = self.engine.owner
            lock.key = self.key
            lock.key_b = self.key_b
            lock.token = self.token
            lock.ttl_ms = self.ttl_ms
            lock.deadline = end
            lock.nodes = self.n_ok
            w = self.waiter
            if w is not None and w.done():
                # The caller was cancelled while we waited: it will never see
                # this lock, so it must not stay on the nodes.
                lock.released = True
                self.engine.send_release(self.key_b, self.token, None, NULL, self.sent, expiry)
                return 0
            return self.finish(lock)
        # Failed: release everywhere the SET may have landed, including nodes
        # that timed out or have not answered yet (their SET is ahead of the
        # release on the same ordered connection), and nodes whose connection
        # dropped after the SET was written (released when they are back).
        self.engine.send_release(self.key_b, self.token, None, self.status, self.sent, expiry)
        return self.finish(None)


@cython.no_gc
cdef class FencedAcquireOp(AcquireOp):
    """The acquire script (fence and/or lock-delay).  With fencing, a success
    starts a second, pipelined round that commits the fence (docs/fencing.md):
    the fence is the maximum counter over the nodes that said yes, and it is
    valid once a majority accepted the commit.  A node refuses the commit
    when the fence is further ahead of its clock than ``slack_us`` (the
    attempt's TTL; docs/fencing.md), so a yes whose counter is further ahead
    of a majority's measured clocks than that is not counted: that fence
    would be refused."""

    cdef:
        long long delay_ms
        bint fencing
        long long fence
        int fence_from          # the node whose counter gave the fence
        long long slack_us      # D of the commit round (FENCE_COMMIT's ARGV[3])
        long long ahead_limit_us  # a yes above this would be refused by a majority (Engine.ahead_limit)

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        if type(reply) is int:
            if reply > 1 or (reply == 1 and not self.fencing):
                # A fence is at least the node's TIME in us, never 1: a 1
                # under fencing is some other command's reply, not a vote.
                if self.fencing and reply > self.ahead_limit_us:
                    return self.mark(node.idx, ST_EXCLUDED, self.engine.ahead_detail(node.idx, reply, self.slack_us))
                # Only replies before the decision count: the commit round
                # carries the fence as it was then.
                if reply > self.fence and not self.decided:
                    self.fence = reply
                    self.fence_from = node.idx
                return self.mark(node.idx, ST_OK, None)
            if reply == 0:
                return self.mark(node.idx, ST_HELD, None)
            return self.mark(node.idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r} to a fenced acquire", self.secrets()))
        if is_noscript(reply):
            return self.resend_eval(node, aux, now_ns() + self.engine.node_timeout_ns)
        if is_reply_error(reply):
            return self.mark_error(node, reply)
        return self.mark(node.idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r}", self.secrets()))

    cdef int resend_eval(self, NodeConn node, int32_t aux, uint64_t deadline) except -1:
        cdef WriteBuffer b = self.engine.scratch2
        if self.decided:
            # The script never ran on this node, and its vote can no longer
            # count: re-sending would only set a key that a release queued
            # since the decision may already have passed (an orphan until
            # its TTL).  Reload the scripts for the next calls, send nothing.
            self.engine.script_missing(node)
            return self.mark(node.idx, ST_ERROR, NOSCRIPT_LATE)
        b.clear()
        b.write_command((b"EVAL", S_ACQUIRE_EX.body, S_ACQUIRE_EX.numkeys, self.key_b, FENCE_PREFIX + self.key_b,
                         DELAY_PREFIX + self.key_b, self.token, self.ttl_ms, self.delay_ms,
                         b"1" if self.fencing else b"0"))
        node.send(b, self, aux, deadline)
        self.engine.script_missing(node)
        return 0

    cdef int decide(self) except -1:
        cdef uint64_t now = now_ns()
        cdef uint64_t end = self.t0 + <uint64_t>self.ttl_ms * 1000000ULL - self.drift_ns
        if self.n_ok >= self.quorum and now < end and self.fencing:
            self.engine.send_commit(self, end)
            return 0
        return AcquireOp.decide(self)

    cdef int take_outcomes(self, Op c) except -1:
        """A failed commit round: this attempt's per-node outcome becomes the
        commit round's (what each node did with the fence), so the error
        names the node that refused and why."""
        cdef int i
        memcpy(self.status, c.status, MAX_NODES)
        self.details = [None] * self.n
        for i in range(self.n):
            d = c.details[i] if c.details is not None else None
            self.details[i] = self.engine.commit_detail(i, c.status[i], d, self.fence, self.fence_from)
        self.engine.log_refusal(self)
        return 0

    cdef int commit_done(self, bint ok, uint64_t end) except -1:
        cdef Lock lock
        if ok and now_ns() < end:
            lock = new_lock()
            lock._owner = self.engine.owner
            lock.key = self.key
            lock.key_b = self.key_b
            lock.token = self.token
            lock.ttl_ms = self.ttl_ms
            lock.deadline = end
            lock.nodes = self.n_ok
            lock.fence = self.fence
            w = self.waiter
            if w is not None and w.done():
                lock.released = True
                self.engine.send_release(self.key_b, self.token, None, NULL)
                return 0
            return self.finish(lock)
        self.engine.send_release(self.key_b, self.token, None, NULL)
        return self.finish(None)


@cython.no_gc
cdef class CommitOp(Op):
    """Second round of a fenced acquire: raise the counters to the fence where
    our token still holds the key and the node's clock covers it.  Every
    reply carries the node's TIME: a free sample of its clock offset."""

    cdef:
        FencedAcquireOp acq
        uint64_t end

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        cdef long long r
        if type(reply) is int:
            r = reply
            if r > 1:
                self.engine.clock_sample(node.idx, r, self.t0)
                return self.mark(node.idx, ST_OK, None)
            if r == 0:
                return self.mark(node.idx, ST_HELD, None)
            if r < 0:
                self.engine.clock_sample(node.idx, -r, self.t0)
                return self.mark(node.idx, ST_REFUSED,
                                 self.engine.refusal_detail(node.idx, -r, self.acq.fence, self.acq.slack_us))
            return self.mark(node.idx, ST_ERROR, f"unexpected reply {reply!r} to a fence commit")
        if is_noscript(reply):
            return self.resend_eval(node, aux, now_ns() + self.engine.node_timeout_ns)
        if is_reply_error(reply):
            return self.mark_error(node, reply)
        return self.mark(node.idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r}", self.secrets()))

    cdef int resend_eval(self, NodeConn node, int32_t aux, uint64_t deadline) except -1:
        cdef WriteBuffer b = self.engine.scratch2
        b.clear()
        b.write_command((b"EVAL", S_FENCE_COMMIT.body, S_FENCE_COMMIT.numkeys, self.acq.key_b, FENCE_PREFIX + self.acq.key_b,
                         self.acq.token, self.acq.fence, self.acq.slack_us))
        node.send(b, self, aux, deadline)
        self.engine.script_missing(node)
        return 0

    cdef int decide(self) except -1:
        self.complete = True
        if self.n_ok < self.quorum:
            self.acq.take_outcomes(self)
        return self.acq.commit_done(self.n_ok >= self.quorum, self.end)


@cython.no_gc
cdef class ClockProbeOp(Op):
    """``TIME`` on one node: a sample of its wall-clock offset from this
    client's, bounded by the round trip (docs/fencing.md)."""

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        cdef long long us
        if type(reply) is list and len(reply) == 2:
            try:
                us = int(reply[0]) * 1000000 + int(reply[1])
            except (TypeError, ValueError):
                return 0
            self.engine.clock_sample(node.idx, us, self.t0)
            self.engine.update_clocks()
        return 0

    cdef int on_fail(self, int idx, int32_t aux, int st, object detail) except -1:
        return 0


@cython.no_gc
cdef class ReleaseOp(Op):
    """Compare-and-delete on every node.  Result: True if our token was deleted
    on a majority (the lease was still ours), else False."""

    cdef:
        bytes key_b
        bytes token
        bint ex       # lock-delay form (also lifts the delay marker)

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        if type(reply) is int:
            return self.mark(node.idx, ST_OK if reply == 1 else ST_HELD, None)
        if is_noscript(reply):
            return self.resend_eval(node, aux, now_ns() + self.engine.node_timeout_ns)
        if is_reply_error(reply):
            return self.mark_error(node, reply)
        return self.mark(node.idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r}", self.secrets()))

    cdef int resend_eval(self, NodeConn node, int32_t aux, uint64_t deadline) except -1:
        cdef WriteBuffer b = self.engine.scratch2
        b.clear()
        if self.ex:
            b.write_command((b"EVAL", self.engine.release_ex_script, RELEASE_EX_NUMKEYS, self.key_b, DELAY_PREFIX + self.key_b,
                             self.token))
        else:
            b.write_command((b"EVAL", self.engine.release_script, RELEASE_NUMKEYS, self.key_b, self.token))
        node.send(b, self, aux, deadline)
        self.engine.script_missing(node)
        return 0

    cdef tuple secrets(self):
        return (self.token,)

    cdef int decide(self) except -1:
        return self.finish(self.n_ok >= self.quorum)


@cython.no_gc
cdef class MultiReleaseOp(Op):
    """The releases of one loop iteration, sent as one RELEASE_MANY call per
    node; each key's reply is handed to its own ReleaseOp (which decides)."""

    cdef list ops

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        cdef Py_ssize_t i
        cdef list lst
        cdef int idx = node.idx
        cdef ReleaseOp op
        if type(reply) is list and len(<list>reply) == len(self.ops):
            lst = <list>reply
            for i in range(len(lst)):
                (<ReleaseOp>self.ops[i]).mark(idx, ST_OK if lst[i] == 1 else ST_HELD, None)
            return 0
        if is_noscript(reply):
            return self.resend_eval(node, aux, now_ns() + self.engine.node_timeout_ns)
        node.errors += 1
        text = str(reply) if is_reply_error(reply) else f"unexpected reply {reply!r}"
        text = scrub_text(text, [op.token for op in self.ops])
        for op in self.ops:
            op.mark(idx, ST_ERROR, text)
        return 0

    cdef int on_fail(self, int idx, int32_t aux, int st, object detail) except -1:
        cdef ReleaseOp op
        for op in self.ops:
            op.on_fail(idx, 0, st, detail)
        return 0

    cdef int resend_eval(self, NodeConn node, int32_t aux, uint64_t deadline) except -1:
        cdef WriteBuffer b = self.engine.scratch2
        cdef ReleaseOp op
        b.clear()
        b.write_command((b"EVAL", RELEASE_MANY_SCRIPT, len(self.ops))
                        + tuple([op.key_b for op in self.ops]) + tuple([op.token for op in self.ops]))
        node.send(b, self, aux, deadline)
        self.engine.script_missing(node)
        return 0


@cython.no_gc
cdef class ExtendOp(Op):
    """Compare-and-pexpire on every node.  Success only on a majority and with
    a fresh validity computed from this operation's own start (§2.5)."""

    cdef:
        Lock lock
        long long ttl_ms
        uint64_t drift_ns
        long long delay_ms    # > 0: lock-delay form

    cdef tuple secrets(self):
        return (self.lock.token,)

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        if type(reply) is int:
            return self.mark(node.idx, ST_OK if reply == 1 else ST_HELD, None)
        # The native form (SET ... IFEQ ... PX): +OK where it was ours, nil
        # where the key is gone or holds another token.
        if reply is None:
            return self.mark(node.idx, ST_HELD, None)
        if type(reply) is bytes and reply == b"OK":
            return self.mark(node.idx, ST_OK, None)
        if is_noscript(reply):
            return self.resend_eval(node, aux, now_ns() + self.engine.node_timeout_ns)
        if is_reply_error(reply):
            return self.mark_error(node, reply)
        return self.mark(node.idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r}", self.secrets()))

    cdef int resend_eval(self, NodeConn node, int32_t aux, uint64_t deadline) except -1:
        cdef WriteBuffer b = self.engine.scratch2
        b.clear()
        if self.delay_ms > 0:
            b.write_command((b"EVAL", S_EXTEND_EX.body, S_EXTEND_EX.numkeys, self.lock.key_b, DELAY_PREFIX + self.lock.key_b,
                             self.lock.token, self.ttl_ms, self.delay_ms))
        else:
            b.write_command((b"EVAL", S_EXTEND.body, S_EXTEND.numkeys, self.lock.key_b, self.lock.token, self.ttl_ms))
        node.send(b, self, aux, deadline)
        self.engine.script_missing(node)
        return 0

    cdef int decide(self) except -1:
        cdef uint64_t now = now_ns()
        cdef uint64_t end = self.t0 + <uint64_t>self.ttl_ms * 1000000ULL - self.drift_ns
        cdef int i, n_held = 0
        if self.n_ok >= self.quorum and now < end and not self.lock.released:
            self.lock.deadline = end
            self.lock.ttl_ms = self.ttl_ms
            self.lock.nodes = self.n_ok
            return self.finish(True)
        # Failed (or too late).  Nodes that applied the PEXPIRE, including
        # ones that timed out or have not answered yet, now drop the key
        # ``ttl_ms`` after this operation started; the others keep the old
        # expiry.  So the lease the lock may still believe in ends at the
        # earlier of the two: a failed extend only ever shortens it.
        if end < self.lock.deadline:
            self.lock.deadline = end
        for i in range(self.n):
            if self.status[i] == ST_HELD:
                n_held += 1
        if n_held > self.n - self.quorum and self.t0 < self.lock.deadline:
            # A majority answered that our token is gone: the lease is lost.
            self.lock.deadline = self.t0
        return self.finish(False)


@cython.no_gc
cdef class CallOp(Op):
    """One command to one node (handshake, admin): the future gets the raw
    reply (a ``hiredis.ReplyError`` object for an error reply), or an
    exception if the node timed out or went down."""

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        self.decided = True
        return self.finish(reply)

    cdef int on_fail(self, int idx, int32_t aux, int st, object detail) except -1:
        if self.decided:
            return 0
        self.decided = True
        name = self.engine.node_names[idx]
        if st == ST_TIMEOUT:
            exc = TimeoutError(f"{name}: no reply before the deadline")
        else:
            exc = ConnectionError(f"{name}: {detail or 'not connected'}")
        self.result = exc   # the blocking engine raises it
        self.complete = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(exc)
        return 0


@cython.no_gc
cdef class SinkOp(Op):
    """Receives replies nobody waits for (the releases after a failed or
    abandoned attempt).  Keeps the EVAL form of its command for NOSCRIPT."""

    cdef tuple eval_args

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        if is_noscript(reply):
            return self.resend_eval(node, aux, now_ns() + self.engine.node_timeout_ns)
        if is_reply_error(reply):
            node.errors += 1
        return 0

    cdef int on_fail(self, int idx, int32_t aux, int st, object detail) except -1:
        return 0

    cdef int resend_eval(self, NodeConn node, int32_t aux, uint64_t deadline) except -1:
        cdef WriteBuffer b = self.engine.scratch2
        if self.eval_args is None:   # a SCRIPT LOAD has no EVAL form
            node.errors += 1
            return 0
        b.clear()
        b.write_command(self.eval_args)
        node.send(b, self, aux, deadline)
        self.engine.script_missing(node)
        return 0


@cython.no_gc
cdef class BatchOp(Op):
    """A quorum operation over many keys at once: one script call per node
    per chunk of keys, per-key C counters, one waiter for the whole batch."""

    cdef:
        list keys_b
        list tokens
        Py_ssize_t m
        Py_ssize_t undecided
        Py_ssize_t chunk
        uint16_t *ok
        uint16_t *bad
        uint8_t *st          # m * n statuses
        uint8_t *kdone
        long long ttl_ms
        uint64_t drift_ns

    def __dealloc__(self):
        PyMem_Free(self.ok)
        PyMem_Free(self.bad)
        PyMem_Free(self.st)
        PyMem_Free(self.kdone)

    cdef int _alloc(self, Py_ssize_t m) except -1:
        self.m = m
        self.undecided = m
        self.ok = <uint16_t *>PyMem_Malloc(m * sizeof(uint16_t) + 1)
        self.bad = <uint16_t *>PyMem_Malloc(m * sizeof(uint16_t) + 1)
        self.st = <uint8_t *>PyMem_Malloc(m * self.n + 1)
        self.kdone = <uint8_t *>PyMem_Malloc(m + 1)
        if self.ok is NULL or self.bad is NULL or self.st is NULL or self.kdone is NULL:
            raise MemoryError()
        memset(self.ok, 0, m * sizeof(uint16_t))
        memset(self.bad, 0, m * sizeof(uint16_t))
        memset(self.st, 0, m * self.n)
        memset(self.kdone, 0, m)
        return 0

    cdef inline void mark_key(self, Py_ssize_t k, int idx, int s) noexcept:
        cdef Py_ssize_t j = k * self.n + idx
        if self.st[j] != ST_PENDING:
            return
        self.st[j] = <uint8_t>s
        if s == ST_OK:
            self.ok[k] += 1
        else:
            self.bad[k] += 1
        if not self.kdone[k] and (self.ok[k] >= self.quorum or self.bad[k] > self.n - self.quorum):
            self.kdone[k] = 1
            self.undecided -= 1

    cdef int _check(self) except -1:
        if not self.decided and self.undecided == 0:
            self.decided = True
            self.decide()
        return 0

    cdef int on_reply(self, NodeConn node, object reply, int32_t aux) except -1:
        cdef Py_ssize_t end = min(<Py_ssize_t>aux + self.chunk, self.m)
        cdef Py_ssize_t k
        cdef int idx = node.idx
        cdef list lst
        if type(reply) is list and len(<list>reply) == end - aux:
            lst = <list>reply
            for k in range(aux, end):
                self.mark_key(k, idx, ST_OK if lst[k - aux] == 1 else ST_HELD)
            if self.status[idx] == ST_PENDING:
                self.status[idx] = ST_OK
        elif is_noscript(reply):
            return self.resend_eval(node, aux, now_ns() + self.engine.node_timeout_ns)
        else:
            node.errors += 1
            text = str(reply) if is_reply_error(reply) else f"unexpected reply {reply!r}"
            self._fail_chunk(idx, aux, ST_ERROR, scrub_text(text, self.tokens[aux:aux + self.chunk]))
            return 0
        return self._check()

    cdef int _fail_chunk(self, int idx, int32_t aux, int s, object detail) except -1:
        cdef Py_ssize_t end = min(<Py_ssize_t>aux + self.chunk, self.m)
        cdef Py_ssize_t k
        for k in range(aux, end):
            self.mark_key(k, idx, s)
        if self.status[idx] == ST_PENDING or self.status[idx] == ST_OK:
            self.status[idx] = <unsigned char>s
            if detail is not None:
                if self.details is None:
                    self.details = [None] * self.n
                self.details[idx] = detail
        return self._check()

    cdef int on_fail(self, int idx, int32_t aux, int st, object detail) except -1:
        return self._fail_chunk(idx, aux, st, detail)


@cython.no_gc
cdef class AcquireManyOp(BatchOp):
    cdef list keys

    cdef int resend_eval(self, NodeConn node, int32_t aux, uint64_t deadline) except -1:
        cdef Py_ssize_t end = min(<Py_ssize_t>aux + self.chunk, self.m)
        cdef WriteBuffer b = self.engine.scratch2
        if self.decided:
            # As FencedAcquireOp.resend_eval: never re-send a decided acquire.
            self.engine.script_missing(node)
            return self._fail_chunk(node.idx, aux, ST_ERROR, NOSCRIPT_LATE)
        b.clear()
        b.write_command((b"EVAL", ACQUIRE_MANY_SCRIPT, end - aux) + tuple(self.keys_b[aux:end])
                        + (self.ttl_ms,) + tuple(self.tokens[aux:end]))
        node.send(b, self, aux, deadline)
        self.engine.script_missing(node)
        return 0

    cdef int decide(self) except -1:
        cdef uint64_t now = now_ns()
        cdef uint64_t end = self.t0 + <uint64_t>self.ttl_ms * 1000000ULL - self.drift_ns
        cdef bint in_time = now < end
        cdef Py_ssize_t k
        cdef int i
        cdef Lock lock
        cdef list results = [None] * self.m
        cdef list rel_keys = None
        cdef list rel_tokens
        cdef list per_node
        w = self.waiter
        cdef bint abandoned = w is not None and w.done()
        owner = self.engine.owner
        for k in range(self.m):
            if in_time and self.ok[k] >= self.quorum and not abandoned:
                lock = new_lock()
                lock._owner = owner
                lock.key = self.keys[k]
                lock.key_b = <bytes>self.keys_b[k]
                lock.token = <bytes>self.tokens[k]
                lock.ttl_ms = self.ttl_ms
                lock.deadline = end
                lock.nodes = self.ok[k]
                results[k] = lock
        # Release every key we did not get, on every node where it may have
        # been set (not where the node said it is held by someone else).
        for i in range(self.n):
            per_node = None
            for k in range(self.m):
                if results[k] is None and self.st[k * self.n + i] != ST_HELD:
                    if per_node is None:
                        per_node = []
                    per_node.append(k)
            if per_node is not None:
                self.engine.send_release_many_to(i, [self.keys_b[k] for k in per_node],
                                                 [self.tokens[k] for k in per_node])
        return self.finish(results)


@cython.no_gc
cdef class ReleaseManyOp(BatchOp):
    cdef int resend_eval(self, NodeConn node, int32_t aux, uint64_t deadline) except -1:
        cdef Py_ssize_t end = min(<Py_ssize_t>aux + self.chunk, self.m)
        cdef WriteBuffer b = self.engine.scratch2
        b.clear()
        b.write_command((b"EVAL", RELEASE_MANY_SCRIPT, end - aux) + tuple(self.keys_b[aux:end])
                        + tuple(self.tokens[aux:end]))
        node.send(b, self, aux, deadline)
        self.engine.script_missing(node)
        return 0

    cdef int decide(self) except -1:
        cdef Py_ssize_t k
        return self.finish([self.ok[k] >= self.quorum for k in range(self.m)])
