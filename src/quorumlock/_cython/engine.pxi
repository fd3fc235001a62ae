# The engine: fan-out of every operation to all nodes at once, auto-pipelined.

from quorumlock._scripts import (
    S_RELEASE, S_EXTEND, S_ACQUIRE_MANY, S_RELEASE_MANY, S_ACQUIRE_EX, S_FENCE_COMMIT,
    S_RELEASE_EX, S_EXTEND_EX, S_RELEASE_NOTIFY, S_RELEASE_EX_NOTIFY,
    RELEASE_NOTIFY as RELEASE_NOTIFY_SCRIPT, RELEASE_NOTIFY_SHA,
    RELEASE_EX_NOTIFY as RELEASE_EX_NOTIFY_SCRIPT, RELEASE_EX_NOTIFY_SHA,
)
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

# Fence commits with the clock check off (the first-round rule, kept only as
# the checker's negative control): a slack no clock offset reaches (31 years).
DEF UNCHECKED_SLACK_US = 1000000000000000
DEF CLOCK_PROBE_EVERY_NS = 1000000000     # look for stale clock samples at most once a second
DEF CLOCK_SAMPLE_MAX_AGE_NS = 3000000000  # probe a node whose last sample is older


cdef class Engine:
    """Quorum fan-out over N node connections on one event loop.

    The engine does not connect by itself: the API layer attaches transports
    (``make_protocol(i)``), runs the handshake with ``call()``, and marks a
    node ``ready``.  Every request made during one loop iteration is appended
    to its node's buffer; one ``_flush`` per iteration writes each buffer with a
    single ``transport.write``."""

    cdef:
        public object loop
        public object owner
        public list nodes
        public list node_names
        public int n
        public int quorum
        public uint64_t node_timeout_ns
        public uint64_t stall_ns
        public double drift_factor
        public Py_ssize_t max_pending      # requests in flight per node connection
        public Py_ssize_t max_reply_bytes  # largest reply accepted; a larger one drops the connection
        public Py_ssize_t max_key_len
        public Py_ssize_t batch_chunk
        public bint guard
        public bint fencing
        public long long lock_delay_ms
        readonly bint release_notify   # releases PUBLISH to waiters (set_release_notify)
        list rel_queue                 # releases asked for this iteration, not yet encoded
        public bint coalesce_releases  # default True; False: one script call per release
        WriteBuffer scratch_mat
        readonly bint sync
        bint flush_scheduled
        object _flush_cb
        object _call_soon
        object _create_future
        WriteBuffer scratch
        WriteBuffer scratch2
        WriteBuffer scratch_rel
        WriteBuffer scratch_batch
        bytes pre_release
        bytes pre_extend
        # Native conditional commands, per node (bit i: node i has it; set by
        # the API layer from each connect's handshake, set_native).
        uint32_t nat_delifeq            # DELIFEQ key token (Valkey >= 9.0)
        uint32_t nat_delex              # DELEX key IFEQ token (Redis >= 8.4)
        uint32_t nat_setifeq            # SET key token IFEQ token PX ttl (Valkey >= 8.1, Redis >= 8.4)
        WriteBuffer scratch_nat1
        WriteBuffer scratch_nat2
        bytes pre_release_ex
        bytes pre_extend_ex
        bytes pre_acquire_ex
        bytes pre_commit
        bytes pre_acquire_many
        bytes pre_release_many
        object release_script       # EVAL fallbacks of the release in use
        object release_ex_script
        object logger
        public list down_detail        # why node i is not ready (per-node outcome detail), or None
        public list held_back          # per node: deque of (expiry_ns, key_b, token) releases for its reconnect
        # Fenced acquisition under clock offsets (docs/fencing.md).
        public bint fence_clock_check     # False: the first-round commit rule (negative control only)
        int64_t clock_off_ns[MAX_NODES]   # node TIME - this client's wall clock, ns (midpoint estimate)
        int64_t clock_err_ns[MAX_NODES]   # its bound: half the round trip, + 1 us of TIME resolution
        uint64_t clock_at[MAX_NODES]      # monotonic ns of the sample (0: never measured)
        int64_t clock_ahead_ns[MAX_NODES]   # how far ahead of a majority's clocks, surely (else <= 0)
        int64_t clock_behind_ns[MAX_NODES]  # how far behind a majority's clocks, surely (else <= 0)
        unsigned char clock_warned[MAX_NODES]
        public bint clock_ref_ok          # a quorum of nodes measured: clock_hi_ref_ns is meaningful
        int64_t clock_hi_ref_ns           # the quorum-th largest offset, plus twice the widest bound
        list clock_tr                     # the transport each sample was taken on (reconnect: re-probe)
        uint64_t clock_probe_at
        uint64_t refuse_log_at
        long long last_slack_us

    def __init__(self, loop, names, owner, double node_timeout, double drift_factor,
                 Py_ssize_t max_key_len=1024, Py_ssize_t batch_chunk=500, stall_timeout=None):
        cdef int i
        self.loop = loop
        self.owner = owner
        self.node_names = list(names)
        self.n = len(self.node_names)
        if self.n < 1 or self.n > MAX_NODES:
            raise ValueError(f"between 1 and {MAX_NODES} nodes are supported, got {self.n}")
        self.quorum = self.n // 2 + 1
        self.node_timeout_ns = <uint64_t>(node_timeout * 1e9)
        if stall_timeout is None:
            stall_timeout = max(2.0, 10 * node_timeout)
        self.stall_ns = <uint64_t>(stall_timeout * 1e9)
        self.drift_factor = drift_factor
        self.max_pending = 65536
        self.max_reply_bytes = 64 * 1024 * 1024
        self.max_key_len = max_key_len
        self.batch_chunk = batch_chunk
        self.guard = True
        self.flush_scheduled = False
        self._flush_cb = self._flush
        self.sync = loop is None
        if not self.sync:
            self._call_soon = loop.call_soon
            self._create_future = loop.create_future
        self.scratch = WriteBuffer(4096)
        self.scratch2 = WriteBuffer(4096)
        self.scratch_rel = WriteBuffer(4096)
        self.scratch_batch = WriteBuffer(65536)
        self.scratch_nat1 = WriteBuffer(4096)
        self.scratch_nat2 = WriteBuffer(4096)
        self.nat_delifeq = 0
        self.nat_delex = 0
        self.nat_setifeq = 0
        self.pre_release = S_RELEASE.evalsha_header
        self.pre_extend = S_EXTEND.evalsha_header
        self.pre_release_ex = S_RELEASE_EX.evalsha_header
        self.pre_extend_ex = S_EXTEND_EX.evalsha_header
        self.pre_acquire_ex = S_ACQUIRE_EX.evalsha_header
        self.pre_commit = S_FENCE_COMMIT.evalsha_header
        self.fencing = False
        self.lock_delay_ms = 0
        self.pre_acquire_many = S_ACQUIRE_MANY.evalsha_header
        self.pre_release_many = S_RELEASE_MANY.evalsha_header
        self.release_notify = False
        self.rel_queue = []
        self.coalesce_releases = True
        self.scratch_mat = WriteBuffer(65536)
        self.release_script = RELEASE_SCRIPT
        self.release_ex_script = RELEASE_EX_SCRIPT
        self.logger = logging.getLogger("quorumlock")
        # Why node i is not ready, when the API layer knows better than "down"
        # (e.g. "duplicate of node 0 (...)"): the per-node outcome's detail.
        self.down_detail = [None] * self.n
        # Clean-up releases for nodes that were down when they were due, but
        # may hold the key (the SET was written before the connection
        # dropped): sent when the node is back (node_ready), while the key's
        # TTL still runs.  Bounded per node; the oldest go first.
        self.held_back = [deque(maxlen=HELD_BACK_MAX) for _ in range(self.n)]
        self.fence_clock_check = True
        memset(self.clock_off_ns, 0, sizeof(self.clock_off_ns))
        memset(self.clock_err_ns, 0, sizeof(self.clock_err_ns))
        memset(self.clock_at, 0, sizeof(self.clock_at))
        memset(self.clock_ahead_ns, 0, sizeof(self.clock_ahead_ns))
        memset(self.clock_behind_ns, 0, sizeof(self.clock_behind_ns))
        memset(self.clock_warned, 0, sizeof(self.clock_warned))
        self.clock_tr = [None] * self.n
        self.clock_ref_ok = False
        self.clock_hi_ref_ns = 0
        self.clock_probe_at = 0
        self.refuse_log_at = 0
        self.last_slack_us = 0
        self.nodes = [NodeProtocol(self, i, self.node_names[i]) for i in range(self.n)]

    # -- plumbing ----------------------------------------------------------

    cdef int check_index(self, int idx) except -1:
        if idx < 0 or idx >= self.n:
            raise IndexError(f"node index {idx} out of range for {self.n} nodes")
        return 0

    def make_protocol(self, int idx):
        """The protocol object for node ``idx`` (reused across reconnects)."""
        self.check_index(idx)
        return self.nodes[idx]

    def _flush(self):
        cdef NodeConn node
        self.flush_scheduled = False
        if self.rel_queue:
            self.materialize_releases()
        for node in self.nodes:
            if node.out.len:
                if node.connected:
                    node._write(node.out.take())
                else:
                    node.out.clear()

    cdef inline void schedule_flush(self):
        # The blocking engine flushes in its own wait loop.
        if not self.flush_scheduled and not self.sync:
            self.flush_scheduled = True
            self._call_soon(self._flush_cb)

    def flush(self):
        """Write everything queued now (normally done once per loop iteration)."""
        self._flush()

    def set_release_notify(self, bint on):
        """Opt-in: every release (also the clean-up after a failed attempt)
        runs the notify form of the release script, which PUBLISHes on
        ``ql:released:<key>`` when it deleted our token, so that waiters
        (``quorumlock.leases.notify``) retry at once instead of polling.
        Same arity as the plain scripts: only the SHA changes."""
        self.release_notify = on
        if on:
            self.pre_release = S_RELEASE_NOTIFY.evalsha_header
            self.pre_release_ex = S_RELEASE_EX_NOTIFY.evalsha_header
            self.release_script = RELEASE_NOTIFY_SCRIPT
            self.release_ex_script = RELEASE_EX_NOTIFY_SCRIPT
        else:
            self.pre_release = S_RELEASE.evalsha_header
            self.pre_release_ex = S_RELEASE_EX.evalsha_header
            self.release_script = RELEASE_SCRIPT
            self.release_ex_script = RELEASE_EX_SCRIPT

    cdef inline uint64_t drift_ns_for(self, long long ttl_ms):
        # drift = ttl * drift_factor + 2 ms (the Redlock specification's allowance)
        return <uint64_t>(<double>ttl_ms * 1e6 * self.drift_factor) + 2000000ULL

    cdef bytes key_bytes(self, object key):
        cdef bytes kb
        if type(key) is bytes:
            kb = <bytes>key
        elif type(key) is str:
            try:
                kb = (<str>key).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"key {key!r} cannot be encoded as UTF-8: {exc}") from None
        elif isinstance(key, bytes):
            kb = bytes(key)
        elif isinstance(key, str):
            kb = str(key).encode("utf-8")
        else:
            raise TypeError(f"key must be str or bytes, got {type(key).__name__} {key!r}")
        if PyBytes_GET_SIZE(kb) == 0:
            raise ValueError("key must not be empty")
        if PyBytes_GET_SIZE(kb) > self.max_key_len:
            raise ValueError(
                f"key is {PyBytes_GET_SIZE(kb)} bytes long; max_key_length is {self.max_key_len}")
        if PyBytes_AS_STRING(kb)[0] == b'\xff' and kb.startswith(RESERVED_PREFIX):
            raise ValueError(f"key {key!r} starts with {RESERVED_PREFIX!r}, reserved for quorumlock's fence counters and lock-delay markers")
        return kb

    def check_key(self, key):
        """Validate ``key`` as an operation would; return its bytes."""
        return self.key_bytes(key)

    def set_native(self, int idx, int release_kind, bint set_ifeq):
        """Node ``idx``'s native conditional commands, from its handshake:
        ``release_kind`` 0 (scripts), 1 (``DELIFEQ``) or 2 (``DELEX ... IFEQ``);
        ``set_ifeq``: ``SET ... IFEQ`` (extend).  Used only where the
        operation's rules allow (native_allowed)."""
        self.check_index(idx)
        if release_kind not in (0, 1, 2):
            raise ValueError(f"release_kind must be 0, 1 or 2, got {release_kind!r}")
        cdef uint32_t bit = 1u << idx
        self.nat_delifeq = (self.nat_delifeq & ~bit) | (bit if release_kind == 1 else 0)
        self.nat_delex = (self.nat_delex & ~bit) | (bit if release_kind == 2 else 0)
        self.nat_setifeq = (self.nat_setifeq & ~bit) | (bit if set_ifeq else 0)

    cdef inline bint native_allowed(self):
        # Plain locks only: fencing, lock-delay and notify need their scripts.
        return not self.fencing and self.lock_delay_ms == 0 and not self.release_notify

    def native_paths(self):
        """Per node, the command each plain operation uses now:
        ``{"release": "DELIFEQ" | "DELEX" | "script", "extend": "SET IFEQ" | "script"}``."""
        cdef int i
        cdef bint ok = self.native_allowed()
        out = []
        for i in range(self.n):
            rel = "script"
            if ok and self.nat_delifeq & (1u << i):
                rel = "DELIFEQ"
            elif ok and self.nat_delex & (1u << i):
                rel = "DELEX"
            out.append({"release": rel,
                        "extend": "SET IFEQ" if ok and self.nat_setifeq & (1u << i) else "script"})
        return out

    cdef int encode_native_release(self, bytes key_b, bytes token) except -1:
        """``DELIFEQ key token`` into scratch_nat1, ``DELEX key IFEQ token``
        into scratch_nat2."""
        cdef WriteBuffer b = self.scratch_nat1
        b.clear()
        b.write_bytes(b"*3\r\n$7\r\nDELIFEQ\r\n")
        b.write_bulk_bytes(key_b)
        b.write_bulk_bytes(token)
        b = self.scratch_nat2
        b.clear()
        b.write_bytes(b"*4\r\n$5\r\nDELEX\r\n")
        b.write_bulk_bytes(key_b)
        b.write_bytes(b"$4\r\nIFEQ\r\n")
        b.write_bulk_bytes(token)
        return 0

    cdef int fanout(self, WriteBuffer cmd, Op op, int32_t aux, uint64_t deadline, bint guarded,
                    WriteBuffer alt1=None, uint32_t mask1=0, WriteBuffer alt2=None, uint32_t mask2=0,
                    uint32_t only=0xFFFFFFFFu) except -1:
        """Queue ``cmd`` on every node; nodes that cannot take it fail at once.
        Nodes in ``mask1`` get ``alt1`` instead, in ``mask2`` ``alt2`` (the
        native forms); nodes outside ``only`` are left alone."""
        cdef NodeConn node
        cdef int i
        cdef uint32_t down = 0, excluded = 0, full = 0
        cdef uint64_t now = op.t0
        cdef list why = None
        if self.rel_queue:
            # Earlier releases go on the wire first: order is what it was asked.
            self.materialize_releases()
        for i in range(self.n):
            if not only & (1u << i):
                continue
            node = <NodeConn>self.nodes[i]
            if not node.ready:
                down |= (1u << i)
            elif guarded and node.counted_after > now:
                excluded |= (1u << i)
            elif node.suspect and not (isinstance(op, ReleaseOp) or isinstance(op, MultiReleaseOp)
                                       or isinstance(op, ReleaseManyOp)):
                # A reply is overdue on this connection: only releases (which
                # must follow the SETs they undo) go out until a probe answers.
                down |= (1u << i)
            elif node.paused or node.count >= self.max_pending:
                # Bounded memory: a node that is not keeping up fails fast.
                full |= (1u << i)
                if why is None:
                    why = [None] * self.n
                why[i] = node.overloaded()
            else:
                if mask1 & (1u << i):
                    node.send(alt1, op, aux, deadline)
                elif mask2 & (1u << i):
                    node.send(alt2, op, aux, deadline)
                else:
                    node.send(cmd, op, aux, deadline)
                op.sent |= (1u << i)
        self.schedule_flush()
        if down | excluded | full:
            for i in range(self.n):
                if down & (1u << i):
                    op.on_fail(i, aux, ST_DOWN, self.down_detail[i])
                elif excluded & (1u << i):
                    op.on_fail(i, aux, ST_EXCLUDED, "restart guard: node restarted recently")
                elif full & (1u << i):
                    op.on_fail(i, aux, ST_ERROR, why[i])
        return 0

    cdef SinkOp _release_cmd(self, WriteBuffer b, bytes key_b, bytes token):
        """Encode the compare-and-delete of ``key_b``/``token`` into ``b``;
        return the SinkOp that drains its replies (EVAL form for NOSCRIPT)."""
        cdef SinkOp op = SinkOp.__new__(SinkOp)
        op._init(self, None)
        b.clear()
        if self.lock_delay_ms > 0:
            b.write_bytes(self.pre_release_ex)
            b.write_bulk_bytes(key_b)
            b.write_bulk_bytes(DELAY_PREFIX + key_b)
            op.eval_args = (b"EVAL", self.release_ex_script, RELEASE_EX_NUMKEYS, key_b, DELAY_PREFIX + key_b, token)
        else:
            b.write_bytes(self.pre_release)
            b.write_bulk_bytes(key_b)
            op.eval_args = (b"EVAL", self.release_script, RELEASE_NUMKEYS, key_b, token)
        b.write_bulk_bytes(token)
        return op

    cdef int send_release(self, bytes key_b, bytes token, object waiter, unsigned char *skip,
                          uint32_t sent=0, uint64_t expiry=0) except -1:
        """Compare-and-delete on every ready node (except where ``skip`` says
        the key is held by someone else).  No waiter: replies are drained.
        Nodes in ``sent`` (the SET went out to them) that are not ready now
        get the release when they are back, if before ``expiry``."""
        cdef WriteBuffer b = self.scratch_rel
        cdef NodeConn node
        if self.rel_queue:
            self.materialize_releases()
        cdef SinkOp op
        cdef int i
        cdef bint any_sent = False
        op = self._release_cmd(b, key_b, token)
        cdef uint64_t deadline = op.t0 + self.node_timeout_ns
        cdef uint32_t m1 = 0, m2 = 0
        if self.native_allowed() and (self.nat_delifeq | self.nat_delex):
            m1 = self.nat_delifeq
            m2 = self.nat_delex
            self.encode_native_release(key_b, token)
        for i in range(self.n):
            if skip is not NULL and skip[i] == ST_HELD:
                continue
            node = <NodeConn>self.nodes[i]
            if node.ready and not node.paused and node.count < self.max_pending:
                # (An overloaded node gets no release: it is not reading, and
                # the key expires by its TTL.)
                if m1 & (1u << i):
                    node.send(self.scratch_nat1, op, 0, deadline)
                elif m2 & (1u << i):
                    node.send(self.scratch_nat2, op, 0, deadline)
                else:
                    node.send(b, op, 0, deadline)
                any_sent = True
            elif sent & (1u << i) and expiry > op.t0:
                (<object>self.held_back[i]).append((expiry, key_b, token))
        if any_sent:
            self.schedule_flush()
        return 0

    def node_ready(self, int idx):
        """Node ``idx`` is connected and ready again: send the clean-up
        releases held back for it whose key may still be alive.  Returns how
        many were sent."""
        self.check_index(idx)
        cdef NodeConn node = <NodeConn>self.nodes[idx]
        q = self.held_back[idx]
        if not q or not node.ready:
            return 0
        cdef uint64_t now = now_ns()
        cdef int sent = 0
        cdef SinkOp op
        items = list(q)
        q.clear()
        for expiry, key_b, token in items:
            if <uint64_t>expiry <= now:
                continue
            op = self._release_cmd(self.scratch_rel, key_b, token)
            if self.native_allowed() and (self.nat_delifeq | self.nat_delex) & (1u << idx):
                self.encode_native_release(key_b, token)
                node.send(self.scratch_nat1 if self.nat_delifeq & (1u << idx) else self.scratch_nat2,
                          op, 0, now + self.node_timeout_ns)
            else:
                node.send(self.scratch_rel, op, 0, now + self.node_timeout_ns)
            sent += 1
        if sent:
            self.schedule_flush()
        return sent

    cdef int send_release_many_to(self, int idx, list keys_b, list tokens) except -1:
        cdef NodeConn node = <NodeConn>self.nodes[idx]
        cdef Py_ssize_t m = len(keys_b), start, end
        cdef WriteBuffer b = self.scratch_rel
        if self.rel_queue:
            self.materialize_releases()
        cdef SinkOp op
        if not node.ready:
            return 0
        for start in range(0, m, self.batch_chunk):
            if node.paused or node.count >= self.max_pending:
                break
            end = min(start + self.batch_chunk, m)
            op = SinkOp.__new__(SinkOp)
            op._init(self, None)
            op.eval_args = (b"EVAL", RELEASE_MANY_SCRIPT, end - start) + tuple(keys_b[start:end]) + tuple(tokens[start:end])
            b.clear()
            b.write_command((b"EVALSHA", RELEASE_MANY_SHA) + op.eval_args[2:])
            node.send(b, op, 0, op.t0 + self.node_timeout_ns)
        self.schedule_flush()
        return 0

    cdef int script_missing(self, NodeConn node) except -1:
        # The node forgot our scripts (restart or SCRIPT FLUSH): reload them
        # once, so later calls go back to EVALSHA.
        cdef SinkOp op
        cdef uint64_t now = now_ns()
        self.schedule_flush()   # the caller's EVAL must go out even when the reload is throttled
        if node.info is not None and node.info.get("_script_load_at", 0) + 100000000 > now:
            return 0
        if node.info is None:
            node.info = {}
        node.info["_script_load_at"] = now
        for body, sha in SCRIPTS:
            op = SinkOp.__new__(SinkOp)
            op._init(self, None)
            op.eval_args = None
            self.scratch2.clear()
            self.scratch2.write_command((b"SCRIPT", b"LOAD", body))
            node.send(self.scratch2, op, 0, now + self.node_timeout_ns)
        self.schedule_flush()
        return 0

    def _node_lost(self, int idx, exc):
        self.owner.node_lost(idx, exc)

    def _log_error(self, name, what, obj):
        # A stray reply may carry a token: never log it verbatim.
        self.logger.warning("%s: %s: %s", name, what, scrub_text(repr(obj)))

    # -- operations ------------------------------------------------------

    cdef AcquireOp _attempt(self, object key, long long ttl_ms):
        cdef bytes kb = self.key_bytes(key)
        cdef AcquireOp op
        cdef WriteBuffer b = self.scratch
        if self.fencing or self.lock_delay_ms > 0:
            return self._attempt_ex(key, kb, ttl_ms)
        op = AcquireOp.__new__(AcquireOp)
        op._init(self, self.new_waiter())
        op.key = key
        op.key_b = kb
        op.token = new_token_c()
        op.ttl_ms = ttl_ms
        op.drift_ns = self.drift_ns_for(ttl_ms)
        # SET key token NX PX ttl
        b.clear()
        b.write(b"*6\r\n$3\r\nSET\r\n", 13)
        b.write_bulk_bytes(kb)
        b.write(b"$20\r\n", 5)
        b.write(PyBytes_AS_STRING(op.token), 20)
        b.write(b"\r\n$2\r\nNX\r\n$2\r\nPX\r\n", 18)
        b.write_bulk_int(ttl_ms)
        self.fanout(b, op, 0, op.t0 + self.node_timeout_ns, self.guard)
        return op

    cdef AcquireOp _attempt_token(self, object key, object token, long long ttl_ms, double timeout):
        """``SET key token NX [PX ttl_ms]`` on every node with the caller's
        ``token``; ``ttl_ms`` 0: no PX (the key and the lease never expire).
        ``timeout`` > 0: the per-node reply deadline in seconds (else
        ``node_timeout``).  Decided by AcquireOp exactly as ``_attempt``."""
        cdef bytes kb = self.key_bytes(key)
        cdef bytes tok = caller_token(token)
        cdef AcquireOp op
        cdef WriteBuffer b = self.scratch
        if ttl_ms < 0:
            raise ValueError(f"px must be >= 0 ms (0: no expiry), got {ttl_ms}")
        if ttl_ms > 0 and <uint64_t>ttl_ms * 1000000ULL <= self.drift_ns_for(ttl_ms) + 1000000ULL:
            raise ValueError(f"px={ttl_ms} ms is too short: the drift allowance alone is "
                             f"{self.drift_ns_for(ttl_ms) / 1e6:.1f} ms (ttl*drift_factor + 2 ms), "
                             f"so no acquisition could be valid")
        if self.fencing or self.lock_delay_ms > 0:
            raise ValueError("caller-token acquires issue no fence and no lock-delay: "
                             "use a manager without fencing/lock_delay")
        if not (0.0 <= timeout <= 1e9):
            raise ValueError(f"timeout must be > 0 and <= 1e9 seconds (0: node_timeout), got {timeout!r}")
        cdef uint64_t wait_ns = <uint64_t>(timeout * 1e9) if timeout > 0 else self.node_timeout_ns
        op = AcquireOp.__new__(AcquireOp)
        op._init(self, self.new_waiter())
        op.key = key
        op.key_b = kb
        op.token = tok
        op.ttl_ms = ttl_ms
        op.drift_ns = self.drift_ns_for(ttl_ms) if ttl_ms > 0 else 0
        b.clear()
        if ttl_ms > 0:
            b.write(b"*6\r\n$3\r\nSET\r\n", 13)
        else:
            b.write(b"*4\r\n$3\r\nSET\r\n", 13)
        b.write_bulk_bytes(kb)
        b.write_bulk_bytes(tok)
        b.write(b"$2\r\nNX\r\n", 8)
        if ttl_ms > 0:
            b.write(b"$2\r\nPX\r\n", 8)
            b.write_bulk_int(ttl_ms)
        self.fanout(b, op, 0, op.t0 + wait_ns, self.guard)
        return op

    cdef AcquireOp _attempt_ex(self, object key, bytes kb, long long ttl_ms):
        cdef FencedAcquireOp op = FencedAcquireOp.__new__(FencedAcquireOp)
        cdef WriteBuffer b = self.scratch
        op._init(self, self.new_waiter())
        op.key = key
        op.key_b = kb
        op.token = new_token_c()
        op.ttl_ms = ttl_ms
        op.drift_ns = self.drift_ns_for(ttl_ms)
        op.delay_ms = self.lock_delay_ms
        op.fencing = self.fencing
        op.fence_from = -1
        if self.fencing:
            # D = the TTL: no lease outlives it, and a volatile node stays
            # down longer than the longest TTL (docs/fencing.md).
            op.slack_us = ttl_ms * 1000 if self.fence_clock_check else UNCHECKED_SLACK_US
            self.last_slack_us = ttl_ms * 1000
            if op.t0 >= self.clock_probe_at:
                self.probe_clocks(op.t0)   # queued ahead of the acquire: its sample is in first
            op.ahead_limit_us = self.ahead_limit(op.slack_us)
        b.clear()
        b.write_bytes(self.pre_acquire_ex)
        b.write_bulk_bytes(kb)
        b.write_bulk_bytes(FENCE_PREFIX + kb)
        b.write_bulk_bytes(DELAY_PREFIX + kb)
        b.write_bulk_bytes(op.token)
        b.write_bulk_int(ttl_ms)
        b.write_bulk_int(self.lock_delay_ms)
        b.write_bulk(b"1" if self.fencing else b"0", 1)
        self.fanout(b, op, 0, op.t0 + self.node_timeout_ns, self.guard)
        return op

    cdef int send_commit(self, FencedAcquireOp acq, uint64_t end) except -1:
        cdef CommitOp op = CommitOp.__new__(CommitOp)
        cdef WriteBuffer b = self.scratch_rel
        op._init(self, None)
        op.acq = acq
        op.end = end
        b.clear()
        b.write_bytes(self.pre_commit)
        b.write_bulk_bytes(acq.key_b)
        b.write_bulk_bytes(FENCE_PREFIX + acq.key_b)
        b.write_bulk_bytes(acq.token)
        b.write_bulk_int(acq.fence)
        b.write_bulk_int(acq.slack_us)
        self.fanout(b, op, 0, op.t0 + self.node_timeout_ns, self.guard)
        return 0

    # -- clock offsets (fenced acquisition) --------------------------------

    cdef int probe_clocks(self, uint64_t now) except -1:
        """``TIME`` to every ready node never measured on its current
        connection or measured too long ago (commit replies are samples too,
        so a busy fenced manager rarely sends one)."""
        cdef NodeConn node
        cdef ClockProbeOp op
        cdef int i
        self.clock_probe_at = now + CLOCK_PROBE_EVERY_NS
        for i in range(self.n):
            node = <NodeConn>self.nodes[i]
            if not node.ready:
                continue
            if (self.clock_at[i] != 0 and now - self.clock_at[i] < CLOCK_SAMPLE_MAX_AGE_NS
                    and self.clock_tr[i] is node.transport):
                continue
            op = ClockProbeOp.__new__(ClockProbeOp)
            op._init(self, None)
            self.scratch2.clear()
            self.scratch2.write(b"*1\r\n$4\r\nTIME\r\n", 14)
            node.send(self.scratch2, op, 0, now + self.node_timeout_ns)
        self.schedule_flush()
        self.update_clocks()
        return 0

    cdef int clock_sample(self, int idx, long long node_us, uint64_t t0) except -1:
        """Node ``idx`` read ``node_us`` (its TIME) between ``t0`` and now."""
        cdef timespec ts
        cdef uint64_t mono = now_ns()
        cdef int64_t half = <int64_t>((mono - t0) // 2) if mono > t0 else 0
        cdef int64_t wall
        if (self.clock_at[idx] != 0 and mono - self.clock_at[idx] < CLOCK_SAMPLE_MAX_AGE_NS // 3
                and half + 1000 > 4 * self.clock_err_ns[idx]):
            return 0   # keep a recent sample that is much tighter
        clock_gettime(CLOCK_REALTIME, &ts)
        wall = <int64_t>ts.tv_sec * 1000000000 + <int64_t>ts.tv_nsec
        self.clock_off_ns[idx] = <int64_t>node_us * 1000 + 500 - (wall - half)
        self.clock_err_ns[idx] = half + 1000
        self.clock_at[idx] = mono
        self.clock_tr[idx] = (<NodeConn>self.nodes[idx]).transport
        return 0

    cdef int update_clocks(self) except -1:
        """Recompute how far each node's clock is ahead of / behind a
        majority's (the quorum-th largest / smallest offset), and log a node
        whose spread exceeds what the last fenced attempt's D covers."""
        cdef int i, m
        cdef list offs = [self.clock_off_ns[i] for i in range(self.n) if self.clock_at[i] != 0]
        cdef int64_t hi_ref, lo_ref, err = 0, ahead, behind, d
        m = len(offs)
        if m < self.quorum:
            memset(self.clock_ahead_ns, 0, sizeof(self.clock_ahead_ns))
            memset(self.clock_behind_ns, 0, sizeof(self.clock_behind_ns))
            self.clock_ref_ok = False
            return 0
        offs.sort()
        hi_ref = offs[m - self.quorum]
        lo_ref = offs[self.quorum - 1]
        for i in range(self.n):
            if self.clock_at[i] != 0 and self.clock_err_ns[i] > err:
                err = self.clock_err_ns[i]
        # Doubt goes to counting the vote: excluding is only for liveness (the
        # nodes refuse a fence their clock cannot cover), so a wide sample --
        # a blocking thread that read the TIME reply late -- must not make
        # every node look ahead.
        self.clock_hi_ref_ns = hi_ref + 2 * err
        self.clock_ref_ok = True
        d = self.last_slack_us * 1000
        for i in range(self.n):
            if self.clock_at[i] == 0:
                self.clock_ahead_ns[i] = 0
                self.clock_behind_ns[i] = 0
                continue
            ahead = self.clock_off_ns[i] - hi_ref - 2 * err
            behind = lo_ref - self.clock_off_ns[i] - 2 * err
            self.clock_ahead_ns[i] = ahead
            self.clock_behind_ns[i] = behind
            if d <= 0 or m < self.n:   # log only what all the nodes' clocks say
                continue
            state = 1 if ahead > d else (2 if behind > d else 0)
            if state != self.clock_warned[i]:
                self.clock_warned[i] = <unsigned char>state
                if state == 1:
                    self.logger.warning(
                        "%s: wall clock %+.3f s from this client's, ahead of a majority of the "
                        "nodes by %.3f s, more than the %.3f s a delayed restart covers: not counted in "
                        "fenced quorums", self.node_names[i], self.clock_off_ns[i] / 1e9, ahead / 1e9, d / 1e9)
                elif state == 2:
                    self.logger.warning(
                        "%s: wall clock %+.3f s from this client's, behind a majority of the "
                        "nodes by %.3f s, more than the %.3f s a delayed restart covers: it refuses their "
                        "fences", self.node_names[i], self.clock_off_ns[i] / 1e9, behind / 1e9, d / 1e9)
                else:
                    self.logger.info("%s: wall clock back within %.3f s of a majority's",
                                     self.node_names[i], d / 1e9)
        return 0

    cdef str clock_text(self, int idx):
        if self.clock_at[idx] == 0:
            return "clock offset not measured"
        return (f"clock offset {self.clock_off_ns[idx] / 1e9:+.3f} s "
                f"(+/- {self.clock_err_ns[idx] / 1e6:.2f} ms) from this client's")

    cdef long long ahead_limit(self, long long slack_us):
        """The largest counter value a majority would accept as a fence now:
        ``slack_us`` ahead of the quorum-th fastest measured clock (the
        measurement's bounds taken in the node's favour); no limit before a
        quorum of nodes is measured.  Read once per attempt: a value above
        it is not counted as a yes."""
        cdef timespec ts
        cdef int64_t wall
        if not self.clock_ref_ok:
            return 4611686018427387904   # 2**62: none
        clock_gettime(CLOCK_REALTIME, &ts)
        wall = <int64_t>ts.tv_sec * 1000000000 + <int64_t>ts.tv_nsec
        return (wall + self.clock_hi_ref_ns) // 1000 + slack_us

    cdef str ahead_detail(self, int idx, long long value_us, long long slack_us):
        cdef timespec ts
        clock_gettime(CLOCK_REALTIME, &ts)
        cdef int64_t wall = <int64_t>ts.tv_sec * 1000000000 + <int64_t>ts.tv_nsec
        return (f"its counter {value_us} is {(value_us - (wall + self.clock_hi_ref_ns) // 1000) / 1e6:.3f} s "
                f"ahead of a majority of the nodes' clocks, more than the {slack_us / 1e6:.3f} s a delayed "
                f"restart covers: they would refuse it as a fence, so this node is not counted in fenced "
                f"quorums; {self.clock_text(idx)}")

    cdef str refusal_detail(self, int idx, long long node_us, long long fence, long long slack_us):
        return (f"refused fence {fence}: it is {(fence - node_us) / 1e6:.3f} s ahead of this node's clock "
                f"(clock ahead of this node by more than the restart delay covers: {slack_us / 1e6:.3f} s)")

    cdef str commit_detail(self, int idx, int st, object d, long long fence, int fence_from):
        parts = ["commit round"]
        if d is not None:
            parts.append(str(d))
        elif st == ST_OK:
            parts.append(f"counter now >= {fence}")
        if idx == fence_from:
            parts.append("the fence came from this node's counter")
        parts.append(self.clock_text(idx))
        return "; ".join(parts)

    cdef int log_refusal(self, FencedAcquireOp op) except -1:
        cdef int i
        cdef uint64_t now
        for i in range(self.n):
            if op.status[i] == ST_REFUSED:
                break
        else:
            return 0
        now = now_ns()
        if now < self.refuse_log_at:
            return 0
        self.refuse_log_at = now + 1000000000ULL
        self.logger.warning("fenced acquire of %r refused in the commit round: %s",
                            op.key, "; ".join(map(repr, op.outcomes())))
        return 0

    def clock_offsets(self):
        """Per node: None (not measured yet) or a dict: ``offset`` (s, the
        node's ``TIME`` minus this client's ``time.time()``), ``uncertainty``
        (s, half the round trip of the sample), ``age`` (s), ``ahead`` /
        ``behind`` (s by which it is surely ahead of / behind a majority's
        clocks, 0 if not)."""
        cdef uint64_t now = now_ns()
        cdef int i
        out = []
        for i in range(self.n):
            if self.clock_at[i] == 0:
                out.append(None)
                continue
            out.append({"offset": self.clock_off_ns[i] / 1e9, "uncertainty": self.clock_err_ns[i] / 1e9,
                        "age": (now - self.clock_at[i]) / 1e9,
                        "ahead": max(0, self.clock_ahead_ns[i]) / 1e9,
                        "behind": max(0, self.clock_behind_ns[i]) / 1e9})
        return out

    cdef int materialize_releases(self) except -1:
        """Encode the releases queued since the last flush: one plain release
        script call for a single one, else one RELEASE_MANY call per node per
        chunk.  A node runs one script call for a whole iteration's releases
        (a script call costs a node about two SETs, bench/RESULTS.md)."""
        cdef list q = self.rel_queue
        cdef ReleaseOp op
        cdef MultiReleaseOp mop
        cdef WriteBuffer b = self.scratch_mat
        cdef Py_ssize_t m = len(q), start, end, k
        self.rel_queue = []
        if m == 0:
            return 0
        if m == 1:
            op = <ReleaseOp>q[0]
            b.clear()
            b.write_bytes(self.pre_release)
            b.write_bulk_bytes(op.key_b)
            b.write_bulk_bytes(op.token)
            if self.native_allowed() and (self.nat_delifeq | self.nat_delex):
                self.encode_native_release(op.key_b, op.token)
                self.fanout(b, op, 0, op.t0 + self.node_timeout_ns, False,
                            self.scratch_nat1, self.nat_delifeq, self.scratch_nat2, self.nat_delex)
            else:
                self.fanout(b, op, 0, op.t0 + self.node_timeout_ns, False)
            return 0
        cdef uint32_t nat = 0
        cdef uint64_t dl
        if self.native_allowed():
            nat = self.nat_delifeq | self.nat_delex
        if nat:
            # Nodes with a native compare-and-delete get one per release
            # (pipelined, each answered to its own ReleaseOp); the others one
            # RELEASE_MANY script call per chunk below.
            for k in range(m):
                op = <ReleaseOp>q[k]
                self.encode_native_release(op.key_b, op.token)
                self.fanout(self.scratch_nat1, op, 0, op.t0 + self.node_timeout_ns + <uint64_t>m * 1000ULL,
                            False, self.scratch_nat1, self.nat_delifeq, self.scratch_nat2, self.nat_delex, nat)
            if nat == (0xFFFFFFFFu >> (32 - self.n)):
                return 0
        for start in range(0, m, self.batch_chunk):
            end = min(start + self.batch_chunk, m)
            mop = MultiReleaseOp.__new__(MultiReleaseOp)
            mop._init(self, None)
            mop.ops = q[start:end]
            b.clear()
            b.write_prefixed_int(c'*', 3 + 2 * (end - start))
            b.write_bytes(self.pre_release_many)
            b.write_bulk_int(end - start)
            for k in range(start, end):
                b.write_bulk_bytes((<ReleaseOp>q[k]).key_b)
            for k in range(start, end):
                b.write_bulk_bytes((<ReleaseOp>q[k]).token)
            self.fanout(b, mop, 0, mop.t0 + self.node_timeout_ns + <uint64_t>(end - start) * 2000ULL, False,
                        None, 0, None, 0, ~nat)
        return 0

    cdef Op _release(self, Lock lock):
        cdef ReleaseOp op
        cdef WriteBuffer b = self.scratch
        if lock.released:
            return self._done(False)
        lock.released = True
        op = ReleaseOp.__new__(ReleaseOp)
        op._init(self, self.new_waiter())
        op.key_b = lock.key_b
        op.token = lock.token
        if self.lock_delay_ms == 0 and not self.release_notify and self.coalesce_releases:
            # Coalesced: every release asked for in this loop iteration goes
            # out as one RELEASE_MANY script call per node (materialize_releases).
            self.rel_queue.append(op)
            self.schedule_flush()
            return op
        b.clear()
        if self.lock_delay_ms > 0:
            op.ex = True
            b.write_bytes(self.pre_release_ex)
            b.write_bulk_bytes(lock.key_b)
            b.write_bulk_bytes(DELAY_PREFIX + lock.key_b)
        else:
            b.write_bytes(self.pre_release)
            b.write_bulk_bytes(lock.key_b)
        b.write_bulk_bytes(lock.token)
        if self.native_allowed() and (self.nat_delifeq | self.nat_delex):
            self.encode_native_release(lock.key_b, lock.token)
            self.fanout(b, op, 0, op.t0 + self.node_timeout_ns, False,
                        self.scratch_nat1, self.nat_delifeq, self.scratch_nat2, self.nat_delex)
            return op
        self.fanout(b, op, 0, op.t0 + self.node_timeout_ns, False)
        return op

    cdef Op _extend(self, Lock lock, long long ttl_ms):
        cdef ExtendOp op
        cdef WriteBuffer b = self.scratch
        if ttl_ms <= 0:
            # PEXPIRE 0 would delete the key.  Only a lock without expiry
            # (attempt_token without PX) has no TTL to renew with by default.
            raise ValueError(f"ttl must be > 0 to extend {lock.key!r} (a lock acquired without expiry "
                             f"needs an explicit ttl), got {ttl_ms} ms")
        if lock.released:
            return self._done(False)
        op = ExtendOp.__new__(ExtendOp)
        op._init(self, self.new_waiter())
        op.lock = lock
        op.ttl_ms = ttl_ms
        op.drift_ns = self.drift_ns_for(ttl_ms)
        op.delay_ms = self.lock_delay_ms
        b.clear()
        if self.lock_delay_ms > 0:
            b.write_bytes(self.pre_extend_ex)
            b.write_bulk_bytes(lock.key_b)
            b.write_bulk_bytes(DELAY_PREFIX + lock.key_b)
            b.write_bulk_bytes(lock.token)
            b.write_bulk_int(ttl_ms)
            b.write_bulk_int(self.lock_delay_ms)
        else:
            b.write_bytes(self.pre_extend)
            b.write_bulk_bytes(lock.key_b)
            b.write_bulk_bytes(lock.token)
            b.write_bulk_int(ttl_ms)
        cdef WriteBuffer nb
        if self.nat_setifeq and self.native_allowed():
            # SET key token IFEQ token PX ttl: rewrites our own token with a
            # new expiry only where it is still ours (nil: gone or another's).
            # PX is always given: without it SET would drop the expiry.
            nb = self.scratch_nat1
            nb.clear()
            nb.write_bytes(b"*7\r\n$3\r\nSET\r\n")
            nb.write_bulk_bytes(lock.key_b)
            nb.write_bulk_bytes(lock.token)
            nb.write_bytes(b"$4\r\nIFEQ\r\n")
            nb.write_bulk_bytes(lock.token)
            nb.write_bytes(b"$2\r\nPX\r\n")
            nb.write_bulk_int(ttl_ms)
            self.fanout(b, op, 0, op.t0 + self.node_timeout_ns, self.guard, nb, self.nat_setifeq)
            return op
        self.fanout(b, op, 0, op.t0 + self.node_timeout_ns, self.guard)
        return op

    cdef Op _acquire_many(self, object keys, long long ttl_ms):
        if self.fencing or self.lock_delay_ms > 0:
            raise NotImplementedError("batch scripts do not issue fences or lock-delays; acquire per key")
        cdef list keys_l = list(keys)
        cdef Py_ssize_t m = len(keys_l), start, end, k
        cdef list keys_b = [self.key_bytes(k_) for k_ in keys_l]
        cdef AcquireManyOp op = AcquireManyOp.__new__(AcquireManyOp)
        cdef WriteBuffer b = self.scratch_batch
        cdef bytes tok
        if m == 0:
            return self._done([])
        if len(set(keys_b)) != m:
            raise ValueError("keys: the same key appears twice in one batch")
        op._init(self, self.new_waiter())
        op.keys = keys_l
        op.keys_b = keys_b
        op.tokens = [new_token_c() for k in range(m)]
        op.ttl_ms = ttl_ms
        op.drift_ns = self.drift_ns_for(ttl_ms)
        op.chunk = self.batch_chunk
        op._alloc(m)
        # A node works through a batch at roughly 1-2 us per key, but the one
        # client thread also reads every node's replies (the pure-Python twin
        # at ~6 us per key and node alone, several times that on a loaded
        # machine): allow BATCH_NS_PER_KEY per key per node (a 10^6-key batch
        # on 3 nodes gets 60 s), so that a big batch is not failed by its size.
        cdef uint64_t deadline = op.t0 + self.node_timeout_ns + <uint64_t>m * <uint64_t>self.n * BATCH_NS_PER_KEY
        for start in range(0, m, self.batch_chunk):
            end = min(start + self.batch_chunk, m)
            b.clear()
            b.write_prefixed_int(c'*', 4 + 2 * (end - start))
            b.write_bytes(self.pre_acquire_many)
            b.write_bulk_int(end - start)
            for k in range(start, end):
                b.write_bulk_bytes(<bytes>keys_b[k])
            b.write_bulk_int(ttl_ms)
            for k in range(start, end):
                tok = <bytes>op.tokens[k]
                b.write(b"$20\r\n", 5)
                b.write(PyBytes_AS_STRING(tok), 20)
                b.write(b"\r\n", 2)
            self.fanout(b, op, <int32_t>start, deadline, self.guard)
        return op

    cdef Op _release_many(self, object locks):
        cdef list locks_l = list(locks)
        for obj in locks_l:
            if not isinstance(obj, Lock):
                raise TypeError(f"release_many takes Lock objects, got {type(obj).__name__}")
        cdef Py_ssize_t m = len(locks_l), start, end, k
        cdef Lock lk
        cdef ReleaseManyOp op = ReleaseManyOp.__new__(ReleaseManyOp)
        cdef WriteBuffer b = self.scratch_batch
        if m == 0:
            return self._done([])
        op._init(self, self.new_waiter())
        for lk in locks_l:
            lk.released = True
        op.keys_b = [(<Lock>lk).key_b for lk in locks_l]
        op.tokens = [(<Lock>lk).token for lk in locks_l]
        op.chunk = self.batch_chunk
        op._alloc(m)
        # A node works through a batch at roughly 1-2 us per key, but the one
        # client thread also reads every node's replies (the pure-Python twin
        # at ~6 us per key and node alone, several times that on a loaded
        # machine): allow BATCH_NS_PER_KEY per key per node (a 10^6-key batch
        # on 3 nodes gets 60 s), so that a big batch is not failed by its size.
        cdef uint64_t deadline = op.t0 + self.node_timeout_ns + <uint64_t>m * <uint64_t>self.n * BATCH_NS_PER_KEY
        for start in range(0, m, self.batch_chunk):
            end = min(start + self.batch_chunk, m)
            b.clear()
            b.write_prefixed_int(c'*', 3 + 2 * (end - start))
            b.write_bytes(self.pre_release_many)
            b.write_bulk_int(end - start)
            for k in range(start, end):
                b.write_bulk_bytes(<bytes>op.keys_b[k])
            for k in range(start, end):
                b.write_bulk_bytes(<bytes>op.tokens[k])
            self.fanout(b, op, <int32_t>start, deadline, False)
        return op

    cdef Op _call(self, int idx, tuple args, object timeout):
        self.check_index(idx)
        if args is None:
            raise TypeError("args must be a tuple of command arguments")
        cdef NodeConn node = <NodeConn>self.nodes[idx]
        cdef CallOp op = CallOp.__new__(CallOp)
        cdef uint64_t t
        if timeout is not None and not (0 < timeout <= 1e9):
            raise ValueError(f"timeout must be > 0 and <= 1e9 seconds, got {timeout!r}")
        if self.rel_queue:
            self.materialize_releases()
        op._init(self, self.new_waiter())
        if not node.connected:
            op.on_fail(idx, 0, ST_DOWN, None)
            return op
        if node.paused or node.count >= self.max_pending:
            op.on_fail(idx, 0, ST_ERROR, node.overloaded())
            return op
        t = self.node_timeout_ns if timeout is None else <uint64_t>(timeout * 1e9)
        self.scratch2.clear()
        self.scratch2.write_command(args)
        node.send(self.scratch2, op, 0, op.t0 + t)
        self.schedule_flush()
        return op

    cdef Op _done(self, object result):
        cdef Op op = Op.__new__(Op)
        op._init(self, self.new_waiter())
        op.decided = True
        op.finish(result)
        return op

    cdef inline object new_waiter(self):
        if self.sync:
            return None
        return self._create_future()

    # -- the asyncio face: each returns a future ---------------------------

    def attempt(self, key, long long ttl_ms):
        """One quorum attempt to acquire ``key``.  Returns the operation; its
        ``waiter`` future resolves to a ``Lock`` or None, and ``outcomes()``
        says what each node answered."""
        return self._attempt(key, ttl_ms)

    def try_acquire(self, key, long long ttl_ms):
        """One quorum attempt: a future of ``Lock`` or None."""
        return self._attempt(key, ttl_ms).waiter

    def attempt_token(self, key, token, long long ttl_ms, double timeout=0.0):
        """One quorum attempt to acquire ``key`` with the caller's ``token``
        (bytes): ``SET key token NX PX ttl_ms``, or without ``PX`` when
        ``ttl_ms`` is 0 (the lease then has no end: ``validity`` is ``inf``).
        Decided as ``attempt`` (a majority, with validity left when there is
        a TTL), released on every node where it may have landed when it
        fails.  ``timeout`` (s, > 0): the per-node reply deadline instead of
        ``node_timeout``.  Returns the operation, as ``attempt``."""
        return self._attempt_token(key, token, ttl_ms, timeout)

    def release(self, Lock lock not None):
        """Compare-and-delete on every node: a future of True if our token was
        still there on a majority.  A second release does no I/O (False)."""
        return self._release(lock).waiter

    def extend(self, Lock lock not None, long long ttl_ms):
        """Compare-and-pexpire on every node: a future of True on success (the
        lock's validity renewed from this operation's start), else False."""
        return self._extend(lock, ttl_ms).waiter

    def release_op(self, Lock lock not None):
        """``release`` returning the operation (like ``attempt``): its
        ``waiter`` resolves to True/False and ``outcomes()`` says what each
        node answered (the drop-ins tell "not ours any more" from "nodes out
        of reach")."""
        return self._release(lock)

    def extend_op(self, Lock lock not None, long long ttl_ms):
        """``extend`` returning the operation (like ``attempt``): its
        ``waiter`` resolves to True/False and ``outcomes()`` says what each
        node answered (the auto-extension tells "held by another token"
        from "no reply")."""
        return self._extend(lock, ttl_ms)

    def acquire_many(self, keys, long long ttl_ms):
        """One attempt per key, all keys in one script call per node per
        chunk: a future of a list of ``Lock`` or None, in key order."""
        return self._acquire_many(keys, ttl_ms).waiter

    def release_many(self, locks):
        """Compare-and-delete many locks with one script call per node per
        chunk: a future of a list of bools (True where our token was deleted
        on a majority)."""
        return self._release_many(locks).waiter

    def call(self, int idx, tuple args, timeout=None):
        """Send one command to node ``idx`` (connected, not necessarily
        ready): a future of the raw reply."""
        return self._call(idx, args, timeout).waiter

    def close(self):
        """Flush what is queued and close every connection."""
        cdef NodeConn node
        self._flush()
        for node in self.nodes:
            node.ready = False
            node.close()
