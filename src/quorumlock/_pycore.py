"""Pure-Python twin of the compiled core ``quorumlock._core``.

Same names, same behaviour, slower.  Selected by ``QUORUMLOCK_NO_EXTENSIONS=1``
or when the extension is not built (see ``quorumlock._backend``).

Same decisions and the same bytes on the wire as the ``_cython/*.pxi`` files
(compare with ``quorumlock._core.encode_command``); the C structures become
Python ones: the ring of pending-reply slots is a ``deque`` of
``[op, aux, expired, deadline]`` lists, the output buffers are ``bytearray``
objects, per-key batch counters are lists.  Where the compiled core would crash
on a bad argument (a node index out of range, ``None`` where a ``Lock`` is
typed), the twin raises ``IndexError``/``TypeError``.  The status numbers
(``ST_*``, a C enum in the compiled core) are module ints here."""

from __future__ import annotations

import asyncio
import logging
import operator
import os
import select
import ssl
import threading
import time
from collections import deque

from hiredis import ProtocolError, Reader, ReplyError

from quorumlock._clock import now_ns as _clock_now_ns
from quorumlock.errors import NodeOutcome, scrub_text
from quorumlock._scripts import (
    S_RELEASE, S_EXTEND, S_ACQUIRE_MANY, S_RELEASE_MANY, S_ACQUIRE_EX, S_FENCE_COMMIT,
    S_RELEASE_EX, S_EXTEND_EX, S_RELEASE_NOTIFY, S_RELEASE_EX_NOTIFY,
    RELEASE as RELEASE_SCRIPT, RELEASE_SHA, EXTEND as EXTEND_SCRIPT, EXTEND_SHA,
    ACQUIRE_MANY as ACQUIRE_MANY_SCRIPT, ACQUIRE_MANY_SHA,
    RELEASE_MANY as RELEASE_MANY_SCRIPT, RELEASE_MANY_SHA, ALL as SCRIPTS,
    ACQUIRE_EX as ACQUIRE_EX_SCRIPT, ACQUIRE_EX_SHA, FENCE_COMMIT as FENCE_COMMIT_SCRIPT, FENCE_COMMIT_SHA,
    RELEASE_EX as RELEASE_EX_SCRIPT, RELEASE_EX_SHA, EXTEND_EX as EXTEND_EX_SCRIPT, EXTEND_EX_SHA,
    FENCE_PREFIX, DELAY_PREFIX, RESERVED_PREFIX,
    RELEASE_NOTIFY as RELEASE_NOTIFY_SCRIPT, RELEASE_NOTIFY_SHA,
    RELEASE_EX_NOTIFY as RELEASE_EX_NOTIFY_SCRIPT, RELEASE_EX_NOTIFY_SHA, S_RELEASE_SIGNAL,
)

IMPLEMENTATION = "python"
_RELEASE_NUMKEYS = S_RELEASE.numkeys        # every release carries its EVAL fallback
_RELEASE_EX_NUMKEYS = S_RELEASE_EX.numkeys
# The release by caller token with a wake-up signal (Engine.release_token).
_RELEASE_SIGNAL_SCRIPT = S_RELEASE_SIGNAL.body
_RELEASE_SIGNAL_NUMKEYS = S_RELEASE_SIGNAL.numkeys
_RELEASE_SIGNAL_HEADER = S_RELEASE_SIGNAL.evalsha_header
TOKEN_SIZE = 20
_POOL_SIZE = 4096


def monotonic_ns() -> int:
    """The lease clock in integer nanoseconds: CLOCK_BOOTTIME where available
    (it keeps counting during system suspend), else CLOCK_MONOTONIC; the
    compiled core reads the same clock (quorumlock._clock)."""
    return _clock_now_ns()


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


# ---------------------------------------------------------------------------
# The engine: the same names, decision rules and bytes on the wire as the
# compiled core (``_cython/{consts,buffer,node,ops,lock,engine,sync}.pxi``).
# ---------------------------------------------------------------------------

_now_ns = _clock_now_ns

# -- constants (consts.pxi) ---------------------------------------------------

MAX_NODES = 32          # also quorumlock._config.MAX_NODES
INBUF_SIZE = 65536      # read buffer handed to the transport (BufferedProtocol)
_BATCH_NS_PER_KEY = 20000  # reply deadline allowance per key and node of a batch (ns)

# What one node answered for one key of one operation (the compiled core's
# ``cdef enum NodeStatus``, same numbers).
ST_PENDING = 0
ST_OK = 1
ST_HELD = 2             # SET NX found the key held / compare-and-* found another token
ST_ERROR = 3            # an error reply (OOM, READONLY, WRONGTYPE, BUSY, LOADING, ...)
ST_TIMEOUT = 4          # no reply before the per-node deadline
ST_DOWN = 5             # not connected when the operation was sent, or the connection died
ST_EXCLUDED = 6         # left out by the restart guard (or, fenced, a clock ahead of a majority's)
ST_REFUSED = 7          # fence commit refused: the fence is further ahead of this node's clock than D

STATUS_NAMES = ("pending", "ok", "held", "error", "timeout", "down", "excluded", "refused")

# Fence commits with the clock check off (the first-round rule, kept only as
# the checker's negative control): a slack no clock offset reaches (31 years).
UNCHECKED_SLACK_US = 1000000000000000
_CLOCK_PROBE_EVERY_NS = 1000000000     # look for stale clock samples at most once a second
_CLOCK_SAMPLE_MAX_AGE_NS = 3000000000  # probe a node whose last sample is older
_NO_LIMIT = 1 << 62                    # FencedAcquireOp.ahead_limit_us before clocks are measured

_NEVER = 0xFFFFFFFFFFFFFFFF
_LL_MIN = -(1 << 63)
_LL_MAX = (1 << 63) - 1
_GUARD_DETAIL = "restart guard: node restarted recently"


# -- argument conversion: what Cython does for C-typed parameters --------------

def _c_int(v, lo=_LL_MIN, hi=_LL_MAX):
    """A C integer parameter (``int``/``long long``/``Py_ssize_t``): ints as they
    are, floats truncated (Cython converts through ``__int__``), anything else
    a TypeError; out of range an OverflowError."""
    if type(v) is not int:
        if isinstance(v, (int, float)):
            v = int(v)
        else:
            try:
                v = operator.index(v)
            except TypeError:
                raise TypeError("an integer is required") from None
    if v < lo or v > hi:
        raise OverflowError("Python int too large to convert to C long")
    return v


def _c_double(v):
    if type(v) is float:
        return v
    if isinstance(v, (str, bytes, bytearray)) or v is None:
        raise TypeError(f"must be real number, not {type(v).__name__}")
    return float(v)


#: Caller tokens (Engine.attempt_token): bytes, 1 to MAX_TOKEN_LEN long.
MAX_TOKEN_LEN = 512


def _caller_token(token):
    """``token`` checked as a caller-chosen lock token: bytes of 1 to
    MAX_TOKEN_LEN bytes (TypeError / ValueError naming ``token``, without its
    value: a token is a secret)."""
    if type(token) is not bytes:
        if isinstance(token, (bytes, bytearray, memoryview)):
            token = bytes(token)
        else:
            raise TypeError(f"token must be bytes, got {type(token).__name__}")
    if len(token) == 0 or len(token) > MAX_TOKEN_LEN:
        raise ValueError(f"token must be 1 to {MAX_TOKEN_LEN} bytes long, got {len(token)} bytes")
    return token


def _check_lock(lock):
    if type(lock) is not Lock and not isinstance(lock, Lock):
        if lock is None:
            raise TypeError("Argument 'lock' must not be None")
        raise TypeError(
            f"Argument 'lock' has incorrect type (expected {__name__}.Lock, got {type(lock).__name__})")


# -- RESP encoding (buffer.pxi) ------------------------------------------------

def _arg_bytes(arg):
    t = type(arg)
    if t is bytes:
        return arg
    if t is int:
        if arg < _LL_MIN or arg > _LL_MAX:
            raise OverflowError("Python int too large to convert to C long")
        return b"%d" % arg
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        # int/float subclasses (IntEnum, ...): their value, never their repr.
        return (str(int(arg)) if isinstance(arg, int) else repr(float(arg))).encode()
    raise TypeError(f"cannot encode command argument of type {type(arg).__name__}")


def _write_command(out, args):
    """Append the RESP encoding of ``args`` (a tuple) to the bytearray ``out``."""
    out += b"*%d\r\n" % len(args)
    for a in args:
        b = _arg_bytes(a)
        out += b"$%d\r\n" % len(b)
        out += b
        out += b"\r\n"


def _bulk_int(v):
    d = b"%d" % v
    return b"$%d\r\n%b\r\n" % (len(d), d)


def encode_command(*args):
    """RESP-encode one command (bytes, str, int or float arguments)."""
    out = bytearray()
    _write_command(out, args)
    return bytes(out)


class WriteBuffer(bytearray):
    """A growable byte buffer with the RESP encoder (the compiled core's
    ``WriteBuffer``; here a ``bytearray``)."""

    __slots__ = ()

    def __init__(self, cap=4096):
        super().__init__()

    def write_command(self, args):
        _write_command(self, tuple(args))

    def take(self):
        out = bytes(self)
        self.clear()
        return out


# -- one node connection (node.pxi) ---------------------------------------------

class NodeConn:
    """The engine's side of one node connection (asyncio BufferedProtocol).

    Pending requests are a FIFO (``deque``) of slots ``[op, aux, expired,
    deadline]``: RESP replies arrive in request order, so the n-th reply
    belongs to the n-th slot."""

    __slots__ = (
        "_idx", "_name", "engine", "transport", "_write", "reader", "_feed", "_gets",
        "inbuf", "inview", "out", "slots", "timer", "timer_at", "_timer_cb",
        "connected", "ready", "run_id", "info", "counted_after", "sent", "errors", "timeouts",
        "paused", "partial", "suspect",
    )

    def __init__(self, engine, idx, name):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"Argument 'name' has incorrect type (expected str, got {type(name).__name__})")
        self.engine = engine
        self._idx = _c_int(idx, -(1 << 31), (1 << 31) - 1)
        self._name = name
        self.out = bytearray()
        self.inbuf = bytearray(INBUF_SIZE)
        self.inview = memoryview(self.inbuf)
        self.slots = deque()
        self.transport = None
        self._write = None
        self.timer = None
        self.timer_at = 0
        self._timer_cb = self._on_timer
        self.connected = False
        self.ready = False
        self.paused = False     # the transport asked us to stop writing (pause_writing)
        self.suspect = False    # a reply is overdue: no new requests until a probe answers (blocking)
        self.partial = 0        # bytes received of the reply still being parsed
        self.run_id = None
        self.info = None
        self.counted_after = 0
        self.sent = 0
        self.errors = 0
        self.timeouts = 0
        self._new_reader()

    @property
    def idx(self):
        return self._idx

    @property
    def name(self):
        return self._name

    def _new_reader(self):
        self.partial = 0
        self.reader = Reader()
        self._feed = self.reader.feed
        self._gets = self.reader.gets

    # -- pending slots ---------------------------------------------------

    def push(self, op, aux, deadline):
        self.slots.append([op, aux, False, deadline])
        if self.timer is None:
            self._arm(deadline)
        elif deadline < self.timer_at:
            # The armed check is later than this slot's deadline (it was set
            # for a stall check): bring it forward.
            self._disarm()
            self._arm(deadline)

    def send(self, cmd, op, aux, deadline):
        """Queue one encoded command; its reply goes to ``op``."""
        # The bytes and their slot with no call in between: a signal handler
        # (which runs only at calls and loops) cannot leave one without the
        # other, i.e. an extra or a missing reply.
        self.out += cmd
        self.slots.append([op, aux, False, deadline])
        self.sent += 1
        if self.timer is None:
            self._arm(deadline)
        elif deadline < self.timer_at:
            self._disarm()
            self._arm(deadline)

    def overloaded(self):
        """None if the connection can take one more request, else why not:
        the transport paused writing (its buffer is over the high-water mark:
        the node is not reading), or ``max_pending`` requests are in flight.
        Either way the caller fails this node at once instead of queueing."""
        if self.paused:
            return "write buffer full (the node is not reading): failing fast"
        n = len(self.slots)
        if n >= self.engine.max_pending:
            return f"{n} requests in flight (max_pending={self.engine.max_pending}): failing fast"
        return None

    def _disarm(self):
        timer = self.timer
        if timer is not None and timer is not True:
            timer.cancel()
        self.timer = None

    def _arm(self, deadline):
        if self.engine._sync:
            # The blocking engine's wait loop checks timer_at itself.
            self.timer_at = deadline
            self.timer = True
            return
        now = _now_ns()
        delay = (deadline - now) / 1e9 if deadline > now else 0.0
        self.timer_at = deadline
        # +0.5 ms: uvloop timers have millisecond resolution; never fire early.
        self.timer = self.engine.loop.call_later(delay + 0.0005, self._timer_cb)

    def _on_timer(self):
        """Per-node deadline check.  One timer per connection (not per
        operation), left armed while requests flow and re-armed lazily."""
        now = _now_ns()
        nxt = _NEVER
        expired = None
        self.timer = None
        slots = self.slots
        if not slots:
            return
        for s in slots:
            d = s[3]
            if d <= now:
                if not s[2]:
                    s[2] = True
                    if expired is None:
                        expired = []
                    expired.append((s[0], s[1]))
            elif d < nxt:
                nxt = d
        head = slots[0][3]
        stall_ns = self.engine.stall_ns
        if head + stall_ns <= now:
            # The oldest request is far overdue: the node hangs or the path is
            # blackholed.  Drop the connection (pending operations fail as
            # down) and reconnect with backoff.
            self.abort()
        elif nxt != _NEVER:
            self._arm(nxt)
        else:
            self._arm(head + stall_ns)
        if expired is not None:
            self.timeouts += len(expired)
            idx = self._idx
            for op, aux in expired:
                op.on_fail(idx, aux, ST_TIMEOUT, None)
            if self.engine._sync and self.transport is not None:
                # A missing reply may never come (a process sharing the socket
                # read it, or the node lost it): the blocking engine reads
                # what has arrived before checking deadlines, so the
                # connection is suspect until a probe answers (see node.pxi).
                self.engine._on_overdue(self._idx)

    def _take_all(self):
        pending = [(s[0], s[1]) for s in self.slots]
        self.slots.clear()
        return pending

    # -- asyncio protocol ------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self._write = transport.write
        self.connected = True
        self._new_reader()

    def get_buffer(self, sizehint):
        return self.inview

    def buffer_updated(self, nbytes):
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
        idx = self._idx
        for op, aux in pending:
            op.on_fail(idx, aux, ST_DOWN, detail)
        self.engine._node_lost(idx, exc)

    def _received(self, nbytes):
        """``nbytes`` were just fed to the parser: dispatch the complete
        replies, then enforce ``max_reply_bytes`` on the one still arriving
        (a node streaming a huge reply is cut off, not buffered whole)."""
        if self._drain():
            # A reply completed: what the parser still holds belongs to the next.
            self.partial = self.reader.len() if self.transport is not None else 0
        else:
            self.partial += nbytes
        cap = self.engine.max_reply_bytes
        if self.partial > cap and self.transport is not None:
            self.engine._log_error(
                self._name, "reply too large, dropping the connection",
                f"over {self.partial} bytes (max_reply_bytes={cap})")
            self.abort()

    def _drain(self):
        """Dispatch every complete reply; True if there was at least one."""
        got = False
        gets = self._gets
        slots = self.slots
        popleft = slots.popleft
        while True:
            try:
                reply = gets()
            except Exception as exc:   # hiredis.ProtocolError: the stream is corrupt
                if self.engine._sync and not isinstance(exc, ProtocolError):
                    raise   # a signal handler's exception: the caller's (see below)
                self.engine._log_error(self._name, "protocol error", exc)
                self.abort()
                return
            if reply is False:
                return got
            got = True
            if not slots:
                # A reply nobody asked for: the stream is out of step, and every
                # later reply would be matched to the wrong request.
                self.engine._log_error(self._name, "unexpected reply", reply)
                self.abort()
                return
            s = popleft()
            try:
                s[0].on_reply(self, reply, s[1])
            except Exception as exc:
                if self.engine._sync:
                    # The blocking engine runs in the caller's thread: an
                    # exception here is most likely a signal handler's, and
                    # the caller must see it (its wait abandons the operation,
                    # releasing what it may hold) instead of a half-updated
                    # operation that never completes.
                    raise
                # Never raise into the event loop: a bug in one operation must
                # not kill the connection's other operations.
                self.engine._log_error(self._name, "error handling reply", exc)

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
        self.slots.clear()
        self._new_reader()
        if t is not None and hasattr(t, "discard"):
            t.discard()

    def close(self):
        if self.transport is not None:
            self.transport.close()

    @property
    def pending(self):
        return len(self.slots)

    def __repr__(self):
        return f"<NodeConn {self._idx} {self._name} ready={self.ready} pending={len(self.slots)}>"


class NodeProtocol(NodeConn, asyncio.BufferedProtocol):
    """NodeConn as a real ``asyncio.BufferedProtocol`` subclass: the default
    loop checks ``isinstance`` to use ``get_buffer``/``buffer_updated``."""

    __slots__ = ()


# -- quorum operations (ops.pxi) -------------------------------------------------

_HELD_BACK_MAX = 4096   # clean-up releases kept per down node for its reconnect
_NOSCRIPT_LATE = "NOSCRIPT after the operation was decided: not re-sent"


def _is_noscript(reply):
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")


class Op:
    """One quorum operation: per-node statuses and counters, one waiter (or
    none).  The waiter resolves the moment the outcome is decided; later
    replies only update the counters."""

    __slots__ = ("engine", "waiter", "result", "t0", "n", "quorum", "n_ok", "n_bad",
                 "decided", "complete", "status", "details", "sent")

    def __init__(self, engine=None, waiter=None):
        self.engine = engine
        self.waiter = waiter
        self.result = None
        if engine is not None:
            self.n = engine.n
            self.quorum = engine.quorum
        else:
            self.n = 0
            self.quorum = 0
        self.t0 = _now_ns()
        self.n_ok = 0
        self.n_bad = 0
        self.decided = False
        self.complete = False   # the result is set (decided, and any second round done)
        self.sent = 0           # bit i: the command was queued to node i (fanout)
        self.status = bytearray(self.n)
        self.details = None

    def on_reply(self, node, reply, aux):
        raise NotImplementedError

    def on_fail(self, idx, aux, st, detail):
        return self.mark(idx, st, detail)

    def mark(self, idx, st, detail):
        status = self.status
        if status[idx] != ST_PENDING:
            return
        status[idx] = st
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

    def mark_error(self, node, reply):
        # The server's text may echo our arguments (a token): scrubbed.
        node.errors += 1
        return self.mark(node._idx, ST_ERROR, scrub_text(reply, self.secrets()))

    def secrets(self):
        """Tokens this operation sends (kept out of error texts)."""
        return ()

    def decide(self):
        pass

    def resend_eval(self, node, aux, deadline):
        raise NotImplementedError

    def finish(self, result):
        self.result = result
        self.complete = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(result)

    def outcomes(self):
        """Per-node result of this operation: a list of ``NodeOutcome``."""
        out = []
        names = self.engine.node_names if self.engine is not None else ()
        details = self.details
        for i in range(self.n):
            d = details[i] if details is not None else None
            out.append(NodeOutcome(names[i], STATUS_NAMES[self.status[i]], d))
        return out

    @property
    def ok_count(self):
        return self.n_ok

    @property
    def done(self):
        return self.decided

    @property
    def elapsed(self):
        return (_now_ns() - self.t0) / 1e9


class AcquireOp(Op):
    """SET key token NX PX ttl on every node; success on a majority with
    validity left (docs/algorithm.md)."""

    __slots__ = ("key", "key_b", "token", "ttl_ms", "drift_ns")

    def secrets(self):
        return (self.token,)

    def on_reply(self, node, reply, aux):
        if reply is None:
            return self.mark(node._idx, ST_HELD, None)
        if type(reply) is bytes and reply == b"OK":
            return self.mark(node._idx, ST_OK, None)
        if isinstance(reply, ReplyError):
            return self.mark_error(node, reply)
        return self.mark(node._idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r}", self.secrets()))

    def decide(self):
        # Elapsed time is read here, after the deciding reply was parsed, never
        # before reading: a pause between sending and reading must count
        # against validity (docs/faults.md row 12).
        now = _now_ns()
        expiry = self.t0 + self.ttl_ms * 1000000
        end = expiry - self.drift_ns
        if self.ttl_ms == 0:
            # A caller-token acquire without PX (Engine.attempt_token): the
            # key never expires, so neither does the lease.
            expiry = end = _NEVER
        if self.n_ok >= self.quorum and now < end:
            lock = _new_lock(self.engine.owner, self.key, self.key_b, self.token,
                             self.ttl_ms, end, self.n_ok)
            w = self.waiter
            if w is not None and w.done():
                # The caller was cancelled while we waited: it will never see
                # this lock, so it must not stay on the nodes.
                lock._released = True
                self.engine.send_release(self.key_b, self.token, None, None, self.sent, expiry)
                return
            self.finish(lock)
            return
        # Failed: release everywhere the SET may have landed, including nodes
        # that timed out or have not answered yet (their SET is ahead of the
        # release on the same ordered connection), and nodes whose connection
        # dropped after the SET was written (released when they are back).
        self.engine.send_release(self.key_b, self.token, None, self.status, self.sent, expiry)
        self.finish(None)


class FencedAcquireOp(AcquireOp):
    """The acquire script (fence and/or lock-delay).  With fencing, a success
    starts a second, pipelined round that commits the fence (docs/fencing.md):
    the fence is the maximum counter over the nodes that said yes, and it is
    valid once a majority accepted the commit.  A node refuses the commit
    when the fence is further ahead of its clock than ``slack_us`` (the
    attempt's TTL; docs/fencing.md), so a yes whose counter is further ahead
    of a majority's measured clocks than that is not counted: that fence
    would be refused."""

    __slots__ = ("delay_ms", "fencing", "fence", "fence_from", "slack_us", "ahead_limit_us")

    def on_reply(self, node, reply, aux):
        if type(reply) is int:
            if reply > 1 or (reply == 1 and not self.fencing):
                # A fence is at least the node's TIME in us, never 1: a 1
                # under fencing is some other command's reply, not a vote.
                idx = node._idx
                if self.fencing and reply > self.ahead_limit_us:
                    return self.mark(idx, ST_EXCLUDED, self.engine.ahead_detail(idx, reply, self.slack_us))
                # Only replies before the decision count: the commit round
                # carries the fence as it was then.
                if reply > self.fence and not self.decided:
                    self.fence = reply
                    self.fence_from = idx
                return self.mark(idx, ST_OK, None)
            if reply == 0:
                return self.mark(node._idx, ST_HELD, None)
            return self.mark(node._idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r} to a fenced acquire", self.secrets()))
        if _is_noscript(reply):
            return self.resend_eval(node, aux, _now_ns() + self.engine.node_timeout_ns)
        if isinstance(reply, ReplyError):
            return self.mark_error(node, reply)
        return self.mark(node._idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r}", self.secrets()))

    def resend_eval(self, node, aux, deadline):
        if self.decided:
            # The script never ran on this node, and its vote can no longer
            # count: re-sending would only set a key that a release queued
            # since the decision may already have passed (an orphan until
            # its TTL).  Reload the scripts for the next calls, send nothing.
            self.engine.script_missing(node)
            return self.mark(node._idx, ST_ERROR, _NOSCRIPT_LATE)
        kb = self.key_b
        node.send(encode_command(b"EVAL", S_ACQUIRE_EX.body, S_ACQUIRE_EX.numkeys, kb, FENCE_PREFIX + kb, DELAY_PREFIX + kb,
                                 self.token, self.ttl_ms, self.delay_ms, b"1" if self.fencing else b"0"),
                  self, aux, deadline)
        self.engine.script_missing(node)

    def decide(self):
        now = _now_ns()
        end = self.t0 + self.ttl_ms * 1000000 - self.drift_ns
        if self.n_ok >= self.quorum and now < end and self.fencing:
            self.engine.send_commit(self, end)
            return
        AcquireOp.decide(self)

    def take_outcomes(self, c):
        """A failed commit round: this attempt's per-node outcome becomes the
        commit round's (what each node did with the fence), so the error
        names the node that refused and why."""
        self.status[:] = c.status
        eng = self.engine
        self.details = [eng.commit_detail(i, c.status[i], c.details[i] if c.details is not None else None,
                                          self.fence, self.fence_from) for i in range(self.n)]
        eng.log_refusal(self)

    def commit_done(self, ok, end):
        if ok and _now_ns() < end:
            lock = _new_lock(self.engine.owner, self.key, self.key_b, self.token, self.ttl_ms, end, self.n_ok)
            lock.fence = self.fence
            w = self.waiter
            if w is not None and w.done():
                lock._released = True
                self.engine.send_release(self.key_b, self.token, None, None)
                return
            self.finish(lock)
            return
        self.engine.send_release(self.key_b, self.token, None, None)
        self.finish(None)


class CommitOp(Op):
    """Second round of a fenced acquire: raise the counters to the fence where
    our token still holds the key and the node's clock covers it.  Every
    reply carries the node's TIME: a free sample of its clock offset."""

    __slots__ = ("acq", "end")

    def on_reply(self, node, reply, aux):
        if type(reply) is int:
            idx = node._idx
            if reply > 1:
                self.engine.clock_sample(idx, reply, self.t0)
                return self.mark(idx, ST_OK, None)
            if reply == 0:
                return self.mark(idx, ST_HELD, None)
            if reply < 0:
                self.engine.clock_sample(idx, -reply, self.t0)
                return self.mark(idx, ST_REFUSED,
                                 self.engine.refusal_detail(idx, -reply, self.acq.fence, self.acq.slack_us))
            return self.mark(idx, ST_ERROR, f"unexpected reply {reply!r} to a fence commit")
        if _is_noscript(reply):
            return self.resend_eval(node, aux, _now_ns() + self.engine.node_timeout_ns)
        if isinstance(reply, ReplyError):
            return self.mark_error(node, reply)
        return self.mark(node._idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r}", self.secrets()))

    def resend_eval(self, node, aux, deadline):
        acq = self.acq
        node.send(encode_command(b"EVAL", S_FENCE_COMMIT.body, S_FENCE_COMMIT.numkeys, acq.key_b, FENCE_PREFIX + acq.key_b,
                                 acq.token, acq.fence, acq.slack_us), self, aux, deadline)
        self.engine.script_missing(node)

    def decide(self):
        self.complete = True
        if self.n_ok < self.quorum:
            self.acq.take_outcomes(self)
        self.acq.commit_done(self.n_ok >= self.quorum, self.end)


class ClockProbeOp(Op):
    """``TIME`` on one node: a sample of its wall-clock offset from this
    client's, bounded by the round trip (docs/fencing.md)."""

    __slots__ = ()

    def on_reply(self, node, reply, aux):
        if type(reply) is list and len(reply) == 2:
            try:
                us = int(reply[0]) * 1000000 + int(reply[1])
            except (TypeError, ValueError):
                return
            self.engine.clock_sample(node._idx, us, self.t0)
            self.engine.update_clocks()

    def on_fail(self, idx, aux, st, detail):
        pass


class ReleaseOp(Op):
    """Compare-and-delete on every node.  Result: True if our token was deleted
    on a majority (the lease was still ours), else False."""

    __slots__ = ("key_b", "token", "ex")    # ex: lock-delay form (also lifts the delay marker)

    def secrets(self):
        return (self.token,)

    def on_reply(self, node, reply, aux):
        if type(reply) is int:
            return self.mark(node._idx, ST_OK if reply == 1 else ST_HELD, None)
        if _is_noscript(reply):
            return self.resend_eval(node, aux, _now_ns() + self.engine.node_timeout_ns)
        if isinstance(reply, ReplyError):
            return self.mark_error(node, reply)
        return self.mark(node._idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r}", self.secrets()))

    def resend_eval(self, node, aux, deadline):
        if self.ex:
            cmd = encode_command(b"EVAL", self.engine.release_ex_script, _RELEASE_EX_NUMKEYS, self.key_b,
                                 DELAY_PREFIX + self.key_b, self.token)
        else:
            cmd = encode_command(b"EVAL", self.engine.release_script, _RELEASE_NUMKEYS, self.key_b, self.token)
        node.send(cmd, self, aux, deadline)
        self.engine.script_missing(node)

    def decide(self):
        self.finish(self.n_ok >= self.quorum)


#: Signal list expiry of Engine.release_token, ms: 1 ms to 2^31 - 1 ms (24 days).
MAX_SIGNAL_MS = 2147483647


def _signal_expiry(signal_ms):
    """``signal_ms`` checked: an int (not bool) of 1 to MAX_SIGNAL_MS ms."""
    if type(signal_ms) is bool or not isinstance(signal_ms, int):
        raise TypeError(f"signal_ms must be int (ms), got {type(signal_ms).__name__}")
    if not 1 <= signal_ms <= MAX_SIGNAL_MS:
        raise ValueError(f"signal_ms must be 1 to {MAX_SIGNAL_MS} ms, got {signal_ms}")
    return int(signal_ms)


class SignalReleaseOp(ReleaseOp):
    """Compare-and-delete by the caller's token that pushes one element on a
    signal list where it deleted (RELEASE_SIGNAL, python-redis-lock's
    unlock).  Decided as ReleaseOp: True if deleted on a majority."""

    __slots__ = ("signal_b", "signal_ms", "notify")    # notify b"1": the script also PUBLISHes

    def resend_eval(self, node, aux, deadline):
        node.send(encode_command(b"EVAL", _RELEASE_SIGNAL_SCRIPT, _RELEASE_SIGNAL_NUMKEYS, self.key_b, self.signal_b,
                                 self.token, self.signal_ms, self.notify), self, aux, deadline)
        self.engine.script_missing(node)


class MultiReleaseOp(Op):
    """The releases of one loop iteration, sent as one RELEASE_MANY call per
    node; each key's reply is handed to its own ReleaseOp (which decides)."""

    __slots__ = ("ops",)

    def on_reply(self, node, reply, aux):
        idx = node._idx
        ops = self.ops
        if type(reply) is list and len(reply) == len(ops):
            for op, r in zip(ops, reply):
                op.mark(idx, ST_OK if r == 1 else ST_HELD, None)
            return
        if _is_noscript(reply):
            return self.resend_eval(node, aux, _now_ns() + self.engine.node_timeout_ns)
        node.errors += 1
        text = str(reply) if isinstance(reply, ReplyError) else f"unexpected reply {reply!r}"
        text = scrub_text(text, [o.token for o in ops])
        for op in ops:
            op.mark(idx, ST_ERROR, text)

    def on_fail(self, idx, aux, st, detail):
        for op in self.ops:
            op.on_fail(idx, 0, st, detail)

    def resend_eval(self, node, aux, deadline):
        ops = self.ops
        cmd = encode_command(b"EVAL", RELEASE_MANY_SCRIPT, len(ops), *[o.key_b for o in ops],
                             *[o.token for o in ops])
        node.send(cmd, self, aux, deadline)
        self.engine.script_missing(node)


class ExtendOp(Op):
    """Compare-and-pexpire on every node.  Success only on a majority and with
    a fresh validity computed from this operation's own start (§2.5)."""

    __slots__ = ("lock", "ttl_ms", "drift_ns", "delay_ms")   # delay_ms > 0: lock-delay form

    def secrets(self):
        return (self.lock._token,)

    def on_reply(self, node, reply, aux):
        if type(reply) is int:
            return self.mark(node._idx, ST_OK if reply == 1 else ST_HELD, None)
        # The native form (SET ... IFEQ ... PX): +OK where it was ours, nil
        # where the key is gone or holds another token.
        if reply is None:
            return self.mark(node._idx, ST_HELD, None)
        if type(reply) is bytes and reply == b"OK":
            return self.mark(node._idx, ST_OK, None)
        if _is_noscript(reply):
            return self.resend_eval(node, aux, _now_ns() + self.engine.node_timeout_ns)
        if isinstance(reply, ReplyError):
            return self.mark_error(node, reply)
        return self.mark(node._idx, ST_ERROR, scrub_text(f"unexpected reply {reply!r}", self.secrets()))

    def resend_eval(self, node, aux, deadline):
        lock = self.lock
        if self.delay_ms > 0:
            cmd = encode_command(b"EVAL", S_EXTEND_EX.body, S_EXTEND_EX.numkeys, lock._key_b, DELAY_PREFIX + lock._key_b,
                                 lock._token, self.ttl_ms, self.delay_ms)
        else:
            cmd = encode_command(b"EVAL", S_EXTEND.body, S_EXTEND.numkeys, lock._key_b, lock._token, self.ttl_ms)
        node.send(cmd, self, aux, deadline)
        self.engine.script_missing(node)

    def decide(self):
        now = _now_ns()
        end = self.t0 + self.ttl_ms * 1000000 - self.drift_ns
        lock = self.lock
        if self.n_ok >= self.quorum and now < end and not lock._released:
            lock._deadline = end
            lock._ttl_ms = self.ttl_ms
            lock._nodes = self.n_ok
            self.finish(True)
            return
        # Failed (or too late).  Nodes that applied the PEXPIRE, including
        # ones that timed out or have not answered yet, now drop the key
        # ``ttl_ms`` after this operation started; the others keep the old
        # expiry.  So the lease the lock may still believe in ends at the
        # earlier of the two: a failed extend only ever shortens it.
        if end < lock._deadline:
            lock._deadline = end
        n_held = sum(1 for i in range(self.n) if self.status[i] == ST_HELD)
        if n_held > self.n - self.quorum and self.t0 < lock._deadline:
            # A majority answered that our token is gone: the lease is lost.
            lock._deadline = self.t0
        self.finish(False)


class CallOp(Op):
    """One command to one node (handshake, admin): the future gets the raw
    reply (a ``hiredis.ReplyError`` object for an error reply), or an
    exception if the node timed out or went down."""

    __slots__ = ()

    def on_reply(self, node, reply, aux):
        self.decided = True
        self.finish(reply)

    def on_fail(self, idx, aux, st, detail):
        if self.decided:
            return
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


class SinkOp(Op):
    """Receives replies nobody waits for (the releases after a failed or
    abandoned attempt).  Keeps the EVAL form of its command for NOSCRIPT."""

    __slots__ = ("eval_args",)

    def on_reply(self, node, reply, aux):
        if _is_noscript(reply):
            return self.resend_eval(node, aux, _now_ns() + self.engine.node_timeout_ns)
        if isinstance(reply, ReplyError):
            node.errors += 1

    def on_fail(self, idx, aux, st, detail):
        pass

    def resend_eval(self, node, aux, deadline):
        if self.eval_args is None:  # a SCRIPT LOAD has no EVAL form
            node.errors += 1
            return
        node.send(encode_command(*self.eval_args), self, aux, deadline)
        self.engine.script_missing(node)


class BatchOp(Op):
    """A quorum operation over many keys at once: one script call per node
    per chunk of keys, per-key counters, one waiter for the whole batch."""

    __slots__ = ("keys_b", "tokens", "m", "undecided", "chunk", "ok", "bad", "st", "kdone",
                 "ttl_ms", "drift_ns")

    def _alloc(self, m):
        self.m = m
        self.undecided = m
        self.ok = [0] * m
        self.bad = [0] * m
        self.st = bytearray(m * self.n)     # m * n statuses
        self.kdone = bytearray(m)

    def mark_key(self, k, idx, s):
        j = k * self.n + idx
        if self.st[j] != ST_PENDING:
            return
        self.st[j] = s
        if s == ST_OK:
            self.ok[k] += 1
        else:
            self.bad[k] += 1
        if not self.kdone[k] and (self.ok[k] >= self.quorum or self.bad[k] > self.n - self.quorum):
            self.kdone[k] = 1
            self.undecided -= 1

    def _check(self):
        if not self.decided and self.undecided == 0:
            self.decided = True
            self.decide()

    def on_reply(self, node, reply, aux):
        end = min(aux + self.chunk, self.m)
        idx = node._idx
        if type(reply) is list and len(reply) == end - aux:
            # mark_key inlined: this loop runs once per key per node.
            n = self.n
            quorum = self.quorum
            max_bad = n - quorum
            st = self.st
            ok = self.ok
            bad = self.bad
            kdone = self.kdone
            j = aux * n + idx
            k = aux
            for r in reply:
                if st[j] == ST_PENDING:
                    if r == 1:
                        st[j] = ST_OK
                        ok[k] += 1
                    else:
                        st[j] = ST_HELD
                        bad[k] += 1
                    if not kdone[k] and (ok[k] >= quorum or bad[k] > max_bad):
                        kdone[k] = 1
                        self.undecided -= 1
                j += n
                k += 1
            if self.status[idx] == ST_PENDING:
                self.status[idx] = ST_OK
        elif _is_noscript(reply):
            return self.resend_eval(node, aux, _now_ns() + self.engine.node_timeout_ns)
        else:
            node.errors += 1
            text = str(reply) if isinstance(reply, ReplyError) else f"unexpected reply {reply!r}"
            self._fail_chunk(idx, aux, ST_ERROR, scrub_text(text, self.tokens[aux:aux + self.chunk]))
            return
        self._check()

    def _fail_chunk(self, idx, aux, s, detail):
        end = min(aux + self.chunk, self.m)
        for k in range(aux, end):
            self.mark_key(k, idx, s)
        if self.status[idx] == ST_PENDING or self.status[idx] == ST_OK:
            self.status[idx] = s
            if detail is not None:
                if self.details is None:
                    self.details = [None] * self.n
                self.details[idx] = detail
        self._check()

    def on_fail(self, idx, aux, st, detail):
        self._fail_chunk(idx, aux, st, detail)


class AcquireManyOp(BatchOp):
    __slots__ = ("keys",)

    def resend_eval(self, node, aux, deadline):
        if self.decided:
            # As FencedAcquireOp.resend_eval: never re-send a decided acquire.
            self.engine.script_missing(node)
            return self._fail_chunk(node._idx, aux, ST_ERROR, _NOSCRIPT_LATE)
        end = min(aux + self.chunk, self.m)
        node.send(encode_command(b"EVAL", ACQUIRE_MANY_SCRIPT, end - aux, *self.keys_b[aux:end],
                                 self.ttl_ms, *self.tokens[aux:end]), self, aux, deadline)
        self.engine.script_missing(node)

    def decide(self):
        now = _now_ns()
        end = self.t0 + self.ttl_ms * 1000000 - self.drift_ns
        in_time = now < end
        m = self.m
        n = self.n
        quorum = self.quorum
        results = [None] * m
        w = self.waiter
        abandoned = w is not None and w.done()
        engine = self.engine
        owner = engine.owner
        if in_time and not abandoned:
            ok = self.ok
            keys = self.keys
            keys_b = self.keys_b
            tokens = self.tokens
            ttl_ms = self.ttl_ms
            for k in range(m):
                if ok[k] >= quorum:
                    results[k] = _new_lock(owner, keys[k], keys_b[k], tokens[k], ttl_ms, end, ok[k])
        # Release every key we did not get, on every node where it may have
        # been set (not where the node said it is held by someone else).
        st = self.st
        for i in range(n):
            per_node = [k for k in range(m) if results[k] is None and st[k * n + i] != ST_HELD]
            if per_node:
                engine.send_release_many_to(i, [self.keys_b[k] for k in per_node],
                                            [self.tokens[k] for k in per_node])
        self.finish(results)


class ReleaseManyOp(BatchOp):
    __slots__ = ()

    def resend_eval(self, node, aux, deadline):
        end = min(aux + self.chunk, self.m)
        node.send(encode_command(b"EVAL", RELEASE_MANY_SCRIPT, end - aux, *self.keys_b[aux:end],
                                 *self.tokens[aux:end]), self, aux, deadline)
        self.engine.script_missing(node)

    def decide(self):
        quorum = self.quorum
        self.finish([c >= quorum for c in self.ok])


# -- the lock a caller holds (lock.pxi) ------------------------------------------

class Lock:
    """A held lease.

    ``key`` as given, ``token`` (20 random bytes), ``validity`` (seconds left,
    from the lease clock, CLOCK_BOOTTIME: never from the wall clock), ``valid``, ``nodes`` (how
    many nodes said OK when the quorum was decided), ``fence`` (an int when the
    manager uses fencing, else None).  ``release()`` and ``extend()`` go
    through the manager that made the lock (awaitables in ``quorumlock.aio``,
    plain calls in the blocking API)."""

    __slots__ = ("_key", "_token", "fence", "_nodes", "_owner", "_state", "_key_b",
                 "_deadline", "_ttl_ms", "_released", "_pid")

    def __init__(self):
        self._key = None
        self._token = None
        self.fence = None
        self._nodes = 0
        self._owner = None
        self._state = None      # used by the owner (auto-extension, lost-lease events)
        self._key_b = None
        self._deadline = 0
        self._ttl_ms = 0
        self._released = False
        self._pid = _lock_pid

    @property
    def pid(self):
        """The process that acquired the lock (a forked child inherits the
        object, not the lease: its manager refuses to release or extend it)."""
        return self._pid

    @property
    def key(self):
        return self._key

    # ``nodes`` and ``released`` are C fields in the compiled core: assignments
    # are converted (to a C int, to a bool) the same way here.
    @property
    def nodes(self):
        return self._nodes

    @nodes.setter
    def nodes(self, value):
        self._nodes = _c_int(value, -(1 << 31), (1 << 31) - 1)

    @property
    def released(self):
        return self._released

    @released.setter
    def released(self, value):
        self._released = True if value else False

    @property
    def token(self):
        return self._token

    @property
    def validity(self):
        """Seconds of validity left (0.0 once expired or released; ``inf``
        for a lock acquired without expiry, ``attempt_token`` without PX)."""
        if self._released:
            return 0.0
        if self._deadline == _NEVER:
            return float("inf")
        now = _now_ns()
        if now >= self._deadline:
            return 0.0
        return (self._deadline - now) / 1e9

    @property
    def valid(self):
        """True while the lease is ours by the client's monotonic clock."""
        return not self._released and _now_ns() < self._deadline

    @property
    def ttl(self):
        """The TTL (seconds) of the last successful acquire or extend."""
        return self._ttl_ms / 1000.0

    @property
    def key_bytes(self):
        return self._key_b

    @property
    def deadline_ns(self):
        """Lease-clock ns (``monotonic_ns()``, CLOCK_BOOTTIME) at which validity ends."""
        return self._deadline

    def _set_deadline_ns(self, deadline):
        self._deadline = _c_int(deadline, 0, _NEVER)

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
        state = "released" if self._released else ("valid %.3fs" % self.validity if self.valid else "expired")
        if not self._released and self._deadline == _NEVER:
            state = "held, no expiry"
        fence = "" if self.fence is None else f" fence={self.fence}"
        return f"<Lock {self._key!r} {state} nodes={self._nodes}{fence}>"

    def __reduce__(self):
        raise TypeError("a Lock cannot be pickled: it is bound to the manager that acquired it")


_lock_new = Lock.__new__


def _new_lock(owner, key, key_b, token, ttl_ms, deadline, nodes):
    lock = _lock_new(Lock)
    lock._owner = owner
    lock._key = key
    lock._key_b = key_b
    lock._token = token
    lock._ttl_ms = ttl_ms
    lock._deadline = deadline
    lock._nodes = nodes
    lock.fence = None
    lock._state = None
    lock._released = False
    lock._pid = _lock_pid
    return lock


# The pid stamped on every new Lock, refreshed at fork (no syscall per lock).
_lock_pid = os.getpid()


def _refresh_lock_pid():
    global _lock_pid
    _lock_pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh_lock_pid)


# -- the engine (engine.pxi) --------------------------------------------------------

class Engine:
    """Quorum fan-out over N node connections on one event loop (or, with
    ``loop=None``, driven by the blocking ``SyncEngine``).

    The engine does not connect by itself: the API layer attaches transports
    (``make_protocol(i)``), runs the handshake with ``call()``, and marks a
    node ``ready``.  Every request made during one loop iteration is appended
    to its node's buffer; one ``_flush`` per iteration writes each buffer with a
    single ``transport.write``."""

    __slots__ = ("loop", "owner", "nodes", "node_names", "n", "quorum", "node_timeout_ns",
                 "stall_ns", "drift_factor", "max_pending", "max_reply_bytes", "max_key_len", "batch_chunk", "guard", "fencing",
                 "lock_delay_ms", "_sync", "flush_scheduled", "_flush_cb", "_call_soon", "_create_future",
                 "pre_release", "pre_extend", "pre_release_ex", "pre_extend_ex", "pre_acquire_ex",
                 "pre_commit", "pre_acquire_many", "pre_release_many", "logger",
                 "rel_queue", "coalesce_releases",
                 "release_notify", "release_script", "release_ex_script", "down_detail", "held_back",
                 # fenced acquisition under clock offsets (docs/fencing.md)
                 "fence_clock_check", "clock_off_ns", "clock_err_ns", "clock_at", "clock_ahead_ns",
                 "clock_behind_ns", "clock_warned", "clock_tr", "clock_ref_ok", "clock_hi_ref_ns", "clock_probe_at", "refuse_log_at",
                 "last_slack_us", "nat_delifeq", "nat_delex", "nat_setifeq")

    def __init__(self, loop, names, owner, node_timeout, drift_factor,
                 max_key_len=1024, batch_chunk=500, stall_timeout=None):
        node_timeout = _c_double(node_timeout)
        drift_factor = _c_double(drift_factor)
        max_key_len = _c_int(max_key_len)
        batch_chunk = _c_int(batch_chunk)
        self.loop = loop
        self.owner = owner
        self.node_names = list(names)
        self.n = len(self.node_names)
        if self.n < 1 or self.n > MAX_NODES:
            raise ValueError(f"between 1 and {MAX_NODES} nodes are supported, got {self.n}")
        self.quorum = self.n // 2 + 1
        self.node_timeout_ns = int(node_timeout * 1e9)
        if stall_timeout is None:
            stall_timeout = max(2.0, 10 * node_timeout)
        self.stall_ns = int(stall_timeout * 1e9)
        self.drift_factor = drift_factor
        self.max_pending = 65536                 # requests in flight per node connection
        self.max_reply_bytes = 64 * 1024 * 1024  # a larger reply drops the connection
        self.max_key_len = max_key_len
        self.batch_chunk = batch_chunk
        self.guard = True
        self.flush_scheduled = False
        self._flush_cb = self._flush
        self._sync = loop is None
        if self._sync:
            self._call_soon = None
            self._create_future = None
        else:
            self._call_soon = loop.call_soon
            self._create_future = loop.create_future
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
        # Native conditional commands, per node (bit i: node i has it; set by
        # the API layer from each connect's handshake, set_native).
        self.nat_delifeq = 0             # DELIFEQ key token (Valkey >= 9.0)
        self.nat_delex = 0               # DELEX key IFEQ token (Redis >= 8.4)
        self.nat_setifeq = 0             # SET key token IFEQ token PX ttl
        self.rel_queue = []              # releases asked for this iteration, not yet encoded
        self.coalesce_releases = True    # False: one script call per release
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
        self.held_back = [deque(maxlen=_HELD_BACK_MAX) for _ in range(self.n)]
        self.fence_clock_check = True     # False: the first-round commit rule (negative control only)
        n = self.n
        self.clock_off_ns = [0] * n       # node TIME - this client's wall clock, ns (midpoint estimate)
        self.clock_err_ns = [0] * n       # its bound: half the round trip, + 1 us of TIME resolution
        self.clock_at = [0] * n           # monotonic ns of the sample (0: never measured)
        self.clock_ahead_ns = [0] * n     # how far ahead of a majority's clocks, surely (else <= 0)
        self.clock_behind_ns = [0] * n    # how far behind a majority's clocks, surely (else <= 0)
        self.clock_warned = [0] * n
        self.clock_tr = [None] * n        # the transport each sample was taken on (reconnect: re-probe)
        self.clock_ref_ok = False         # a quorum of nodes measured: clock_hi_ref_ns is meaningful
        self.clock_hi_ref_ns = 0          # the quorum-th largest offset, plus twice the widest bound
        self.clock_probe_at = 0
        self.refuse_log_at = 0
        self.last_slack_us = 0
        self.nodes = [NodeProtocol(self, i, self.node_names[i]) for i in range(n)]

    @property
    def sync(self):
        """True for the blocking engine (no event loop)."""
        return self._sync

    # -- plumbing ----------------------------------------------------------

    def _node_index(self, idx):
        idx = _c_int(idx, -(1 << 31), (1 << 31) - 1)
        if idx < 0 or idx >= self.n:
            raise IndexError(f"node index {idx} out of range (0..{self.n - 1})")
        return idx

    def make_protocol(self, idx):
        """The protocol object for node ``idx`` (reused across reconnects)."""
        return self.nodes[self._node_index(idx)]

    def _flush(self):
        self.flush_scheduled = False
        if self.rel_queue:
            self.materialize_releases()
        for node in self.nodes:
            out = node.out
            if out:
                # bytes, not the bytearray: a transport may keep what it was
                # given (SSL backlog), and ``out`` is reused.  Taken before
                # the write: an interrupted write must not send it twice.
                data = bytes(out)
                del out[:]
                if node.connected:
                    node._write(data)

    def schedule_flush(self):
        # The blocking engine flushes in its own wait loop.
        if not self.flush_scheduled and not self._sync:
            self.flush_scheduled = True
            self._call_soon(self._flush_cb)

    def flush(self):
        """Write everything queued now (normally done once per loop iteration)."""
        self._flush()

    def drift_ns_for(self, ttl_ms):
        # drift = ttl * drift_factor + 2 ms (the Redlock specification's allowance)
        return int(ttl_ms * 1e6 * self.drift_factor) + 2000000

    def key_bytes(self, key):
        if type(key) is bytes:
            kb = key
        elif type(key) is str:
            try:
                kb = key.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"key {key!r} cannot be encoded as UTF-8: {exc}") from None
        elif isinstance(key, bytes):
            kb = bytes(key)
        elif isinstance(key, str):
            kb = str(key).encode("utf-8")
        else:
            raise TypeError(f"key must be str or bytes, got {type(key).__name__} {key!r}")
        if len(kb) == 0:
            raise ValueError("key must not be empty")
        if len(kb) > self.max_key_len:
            raise ValueError(f"key is {len(kb)} bytes long; max_key_length is {self.max_key_len}")
        if kb[:1] == b"\xff" and kb.startswith(RESERVED_PREFIX):
            raise ValueError(f"key {key!r} starts with {RESERVED_PREFIX!r}, reserved for quorumlock's fence counters and lock-delay markers")
        return kb

    def check_key(self, key):
        """Validate ``key`` as an operation would; return its bytes."""
        return self.key_bytes(key)

    def set_native(self, idx, release_kind, set_ifeq):
        """Node ``idx``'s native conditional commands, from its handshake:
        ``release_kind`` 0 (scripts), 1 (``DELIFEQ``) or 2 (``DELEX ... IFEQ``);
        ``set_ifeq``: ``SET ... IFEQ`` (extend).  Used only where the
        operation's rules allow (native_allowed)."""
        idx = self._node_index(idx)
        release_kind = _c_int(release_kind, -(1 << 31), (1 << 31) - 1)
        if release_kind not in (0, 1, 2):
            raise ValueError(f"release_kind must be 0, 1 or 2, got {release_kind!r}")
        bit = 1 << idx
        self.nat_delifeq = (self.nat_delifeq & ~bit) | (bit if release_kind == 1 else 0)
        self.nat_delex = (self.nat_delex & ~bit) | (bit if release_kind == 2 else 0)
        self.nat_setifeq = (self.nat_setifeq & ~bit) | (bit if set_ifeq else 0)

    def native_allowed(self):
        # Plain locks only: fencing, lock-delay and notify need their scripts.
        return not self.fencing and self.lock_delay_ms == 0 and not self.release_notify

    def native_paths(self):
        """Per node, the command each plain operation uses now:
        ``{"release": "DELIFEQ" | "DELEX" | "script", "extend": "SET IFEQ" | "script"}``."""
        ok = self.native_allowed()
        out = []
        for i in range(self.n):
            rel = "script"
            if ok and self.nat_delifeq & (1 << i):
                rel = "DELIFEQ"
            elif ok and self.nat_delex & (1 << i):
                rel = "DELEX"
            out.append({"release": rel, "extend": "SET IFEQ" if ok and self.nat_setifeq & (1 << i) else "script"})
        return out

    @staticmethod
    def native_release_cmds(key_b, token):
        """``(DELIFEQ key token, DELEX key IFEQ token)``, encoded."""
        return (b"*3\r\n$7\r\nDELIFEQ\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key_b), key_b, len(token), token),
                b"*4\r\n$5\r\nDELEX\r\n$%d\r\n%b\r\n$4\r\nIFEQ\r\n$%d\r\n%b\r\n"
                % (len(key_b), key_b, len(token), token))

    def fanout(self, cmd, op, aux, deadline, guarded, alt1=None, mask1=0, alt2=None, mask2=0, only=-1):
        """Queue ``cmd`` on every node; nodes that cannot take it fail at once.
        Nodes in ``mask1`` get ``alt1`` instead, in ``mask2`` ``alt2`` (the
        native forms); nodes outside ``only`` are left alone."""
        if self.rel_queue:
            # Earlier releases go on the wire first: order is what it was asked.
            self.materialize_releases()
        now = op.t0
        failed = None
        cap = self.max_pending
        for node in self.nodes:
            if not only & (1 << node._idx):
                continue
            detail = None
            if not node.ready:
                st = ST_DOWN
            elif guarded and node.counted_after > now:
                st = ST_EXCLUDED
                detail = _GUARD_DETAIL
            elif node.suspect and not isinstance(op, (ReleaseOp, MultiReleaseOp, ReleaseManyOp)):
                # A reply is overdue on this connection: only releases (which
                # must follow the SETs they undo) go out until a probe answers.
                st = ST_DOWN
            elif node.paused or len(node.slots) >= cap:
                # Bounded memory: a node that is not keeping up fails fast.
                st = ST_ERROR
                detail = node.overloaded()
            else:
                bit = 1 << node._idx
                node.send(alt1 if mask1 & bit else alt2 if mask2 & bit else cmd, op, aux, deadline)
                op.sent |= bit
                continue
            if failed is None:
                failed = []
            failed.append((node._idx, st, detail))
        self.schedule_flush()
        if failed is not None:
            for i, st, detail in failed:
                if st == ST_DOWN and detail is None:
                    detail = self.down_detail[i]
                op.on_fail(i, aux, st, detail)

    def _release_cmd(self, key_b, token):
        """The compare-and-delete of ``key_b``/``token`` and the SinkOp that
        drains its replies (EVAL form for NOSCRIPT)."""
        op = SinkOp(self, None)
        if self.lock_delay_ms > 0:
            dk = DELAY_PREFIX + key_b
            cmd = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
                self.pre_release_ex, len(key_b), key_b, len(dk), dk, len(token), token)
            op.eval_args = (b"EVAL", self.release_ex_script, _RELEASE_EX_NUMKEYS, key_b, dk, token)
        else:
            cmd = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n" % (self.pre_release, len(key_b), key_b, len(token), token)
            op.eval_args = (b"EVAL", self.release_script, _RELEASE_NUMKEYS, key_b, token)
        return cmd, op

    def send_release(self, key_b, token, waiter, skip, sent=0, expiry=0):
        """Compare-and-delete on every ready node (except where ``skip`` says
        the key is held by someone else).  No waiter: replies are drained.
        Nodes in ``sent`` (the SET went out to them) that are not ready now
        get the release when they are back, if before ``expiry``."""
        if self.rel_queue:
            self.materialize_releases()
        cmd, op = self._release_cmd(key_b, token)
        deadline = op.t0 + self.node_timeout_ns
        any_sent = False
        m1 = m2 = 0
        if (self.nat_delifeq | self.nat_delex) and self.native_allowed():
            m1, m2 = self.nat_delifeq, self.nat_delex
            n1, n2 = self.native_release_cmds(key_b, token)
        for i, node in enumerate(self.nodes):
            if skip is not None and skip[i] == ST_HELD:
                continue
            if node.ready and not node.paused and len(node.slots) < self.max_pending:
                # (An overloaded node gets no release: it is not reading, and
                # the key expires by its TTL.)
                bit = 1 << i
                node.send(n1 if m1 & bit else n2 if m2 & bit else cmd, op, 0, deadline)
                any_sent = True
            elif sent & (1 << i) and expiry > op.t0:
                self.held_back[i].append((expiry, key_b, token))
        if any_sent:
            self.schedule_flush()

    def node_ready(self, idx):
        """Node ``idx`` is connected and ready again: send the clean-up
        releases held back for it whose key may still be alive.  Returns how
        many were sent."""
        idx = self._node_index(idx)
        node = self.nodes[idx]
        q = self.held_back[idx]
        if not q or not node.ready:
            return 0
        now = _now_ns()
        items = list(q)
        q.clear()
        sent = 0
        for expiry, key_b, token in items:
            if expiry <= now:
                continue
            cmd, op = self._release_cmd(key_b, token)
            if (self.nat_delifeq | self.nat_delex) & (1 << idx) and self.native_allowed():
                n1, n2 = self.native_release_cmds(key_b, token)
                cmd = n1 if self.nat_delifeq & (1 << idx) else n2
            node.send(cmd, op, 0, now + self.node_timeout_ns)
            sent += 1
        if sent:
            self.schedule_flush()
        return sent

    def send_release_many_to(self, idx, keys_b, tokens):
        if self.rel_queue:
            self.materialize_releases()
        node = self.nodes[idx]
        m = len(keys_b)
        if not node.ready:
            return
        chunk = self.batch_chunk
        for start in range(0, m, chunk):
            if node.paused or len(node.slots) >= self.max_pending:
                break
            end = min(start + chunk, m)
            op = SinkOp(self, None)
            op.eval_args = (b"EVAL", RELEASE_MANY_SCRIPT, end - start) + tuple(keys_b[start:end]) + tuple(tokens[start:end])
            node.send(encode_command(b"EVALSHA", RELEASE_MANY_SHA, *op.eval_args[2:]), op, 0,
                      op.t0 + self.node_timeout_ns)
        self.schedule_flush()

    def script_missing(self, node):
        # The node forgot our scripts (restart or SCRIPT FLUSH): reload them
        # once, so later calls go back to EVALSHA.
        now = _now_ns()
        self.schedule_flush()   # the caller's EVAL must go out even when the reload is throttled
        if node.info is not None and node.info.get("_script_load_at", 0) + 100000000 > now:
            return
        if node.info is None:
            node.info = {}
        node.info["_script_load_at"] = now
        for body, _sha in SCRIPTS:
            op = SinkOp(self, None)
            op.eval_args = None
            node.send(encode_command(b"SCRIPT", b"LOAD", body), op, 0, now + self.node_timeout_ns)
        self.schedule_flush()

    def _node_lost(self, idx, exc):
        self.owner.node_lost(idx, exc)

    def _log_error(self, name, what, obj):
        # A stray reply may carry a token: never log it verbatim.
        self.logger.warning("%s: %s: %s", name, what, scrub_text(repr(obj)))

    # -- operations (each returns its Op; the waiter is a future, or None
    #    for the blocking engine) ----------------------------------------

    def _attempt(self, key, ttl_ms):
        if type(ttl_ms) is not int or ttl_ms < _LL_MIN or ttl_ms > _LL_MAX:
            ttl_ms = _c_int(ttl_ms)
        kb = self.key_bytes(key)
        if self.fencing or self.lock_delay_ms > 0:
            return self._attempt_ex(key, kb, ttl_ms)
        op = AcquireOp(self, self.new_waiter())
        op.key = key
        op.key_b = kb
        op.token = token = new_token()
        op.ttl_ms = ttl_ms
        op.drift_ns = self.drift_ns_for(ttl_ms)
        # SET key token NX PX ttl
        cmd = b"*6\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$20\r\n%b\r\n$2\r\nNX\r\n$2\r\nPX\r\n%b" % (
            len(kb), kb, token, _bulk_int(ttl_ms))
        self.fanout(cmd, op, 0, op.t0 + self.node_timeout_ns, self.guard)
        return op

    def _attempt_token(self, key, token, ttl_ms, timeout=0.0):
        """``SET key token NX [PX ttl_ms]`` on every node with the caller's
        ``token``; ``ttl_ms`` 0: no PX (the key and the lease never expire).
        ``timeout`` > 0: the per-node reply deadline in seconds (else
        ``node_timeout``).  Decided by AcquireOp exactly as ``_attempt``."""
        if type(ttl_ms) is not int or ttl_ms < _LL_MIN or ttl_ms > _LL_MAX:
            ttl_ms = _c_int(ttl_ms)
        kb = self.key_bytes(key)
        tok = _caller_token(token)
        if ttl_ms < 0:
            raise ValueError(f"px must be >= 0 ms (0: no expiry), got {ttl_ms}")
        if ttl_ms > 0 and ttl_ms * 1000000 <= self.drift_ns_for(ttl_ms) + 1000000:
            raise ValueError(f"px={ttl_ms} ms is too short: the drift allowance alone is "
                             f"{self.drift_ns_for(ttl_ms) / 1e6:.1f} ms (ttl*drift_factor + 2 ms), "
                             f"so no acquisition could be valid")
        if self.fencing or self.lock_delay_ms > 0:
            raise ValueError("caller-token acquires issue no fence and no lock-delay: "
                             "use a manager without fencing/lock_delay")
        timeout = _c_double(timeout)
        if not (0.0 <= timeout <= 1e9):
            raise ValueError(f"timeout must be > 0 and <= 1e9 seconds (0: node_timeout), got {timeout!r}")
        wait_ns = int(timeout * 1e9) if timeout > 0 else self.node_timeout_ns
        op = AcquireOp(self, self.new_waiter())
        op.key = key
        op.key_b = kb
        op.token = tok
        op.ttl_ms = ttl_ms
        op.drift_ns = self.drift_ns_for(ttl_ms) if ttl_ms > 0 else 0
        if ttl_ms > 0:
            cmd = b"*6\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nNX\r\n$2\r\nPX\r\n%b" % (
                len(kb), kb, len(tok), tok, _bulk_int(ttl_ms))
        else:
            cmd = b"*4\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nNX\r\n" % (
                len(kb), kb, len(tok), tok)
        self.fanout(cmd, op, 0, op.t0 + wait_ns, self.guard)
        return op

    def _attempt_ex(self, key, kb, ttl_ms):
        op = FencedAcquireOp(self, self.new_waiter())
        op.key = key
        op.key_b = kb
        op.token = token = new_token()
        op.ttl_ms = ttl_ms
        op.drift_ns = self.drift_ns_for(ttl_ms)
        op.delay_ms = delay = self.lock_delay_ms
        op.fencing = fencing = True if self.fencing else False
        op.fence = 0
        op.fence_from = -1
        if fencing:
            # D = the TTL: no lease outlives it, and a volatile node stays
            # down longer than the longest TTL (docs/fencing.md).
            op.slack_us = ttl_ms * 1000 if self.fence_clock_check else UNCHECKED_SLACK_US
            self.last_slack_us = ttl_ms * 1000
            if op.t0 >= self.clock_probe_at:
                self.probe_clocks(op.t0)   # queued ahead of the acquire: its sample is in first
            op.ahead_limit_us = self.ahead_limit(op.slack_us)
        else:
            op.slack_us = 0
            op.ahead_limit_us = _NO_LIMIT
        fk = FENCE_PREFIX + kb
        dk = DELAY_PREFIX + kb
        cmd = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n%b%b%b" % (
            self.pre_acquire_ex, len(kb), kb, len(fk), fk, len(dk), dk, len(token), token,
            _bulk_int(ttl_ms), _bulk_int(delay), b"$1\r\n1\r\n" if fencing else b"$1\r\n0\r\n")
        self.fanout(cmd, op, 0, op.t0 + self.node_timeout_ns, self.guard)
        return op

    def send_commit(self, acq, end):
        op = CommitOp(self, None)
        op.acq = acq
        op.end = end
        kb = acq.key_b
        fk = FENCE_PREFIX + kb
        tok = acq.token
        cmd = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n%b%b" % (
            self.pre_commit, len(kb), kb, len(fk), fk, len(tok), tok, _bulk_int(acq.fence),
            _bulk_int(acq.slack_us))
        self.fanout(cmd, op, 0, op.t0 + self.node_timeout_ns, self.guard)

    # -- clock offsets (fenced acquisition; engine.pxi) ---------------------

    def probe_clocks(self, now):
        """``TIME`` to every ready node never measured on its current
        connection or measured too long ago (commit replies are samples too,
        so a busy fenced manager rarely sends one)."""
        self.clock_probe_at = now + _CLOCK_PROBE_EVERY_NS
        for i, node in enumerate(self.nodes):
            if not node.ready:
                continue
            if (self.clock_at[i] != 0 and now - self.clock_at[i] < _CLOCK_SAMPLE_MAX_AGE_NS
                    and self.clock_tr[i] is node.transport):
                continue
            node.send(b"*1\r\n$4\r\nTIME\r\n", ClockProbeOp(self, None), 0, now + self.node_timeout_ns)
        self.schedule_flush()
        self.update_clocks()

    def clock_sample(self, idx, node_us, t0):
        """Node ``idx`` read ``node_us`` (its TIME) between ``t0`` and now."""
        mono = _now_ns()
        half = (mono - t0) // 2 if mono > t0 else 0
        if (self.clock_at[idx] != 0 and mono - self.clock_at[idx] < _CLOCK_SAMPLE_MAX_AGE_NS // 3
                and half + 1000 > 4 * self.clock_err_ns[idx]):
            return   # keep a recent sample that is much tighter
        wall = time.time_ns()
        self.clock_off_ns[idx] = node_us * 1000 + 500 - (wall - half)
        self.clock_err_ns[idx] = half + 1000
        self.clock_at[idx] = mono
        self.clock_tr[idx] = self.nodes[idx].transport

    def update_clocks(self):
        """Recompute how far each node's clock is ahead of / behind a
        majority's (the quorum-th largest / smallest offset), and log a node
        whose spread exceeds what the last fenced attempt's D covers."""
        n = self.n
        offs = sorted(self.clock_off_ns[i] for i in range(n) if self.clock_at[i] != 0)
        m = len(offs)
        if m < self.quorum:
            self.clock_ahead_ns = [0] * n
            self.clock_behind_ns = [0] * n
            self.clock_ref_ok = False
            return
        hi_ref = offs[m - self.quorum]
        lo_ref = offs[self.quorum - 1]
        err = max(self.clock_err_ns[i] for i in range(n) if self.clock_at[i] != 0)
        # Doubt goes to counting the vote: excluding is only for liveness (the
        # nodes refuse a fence their clock cannot cover), so a wide sample --
        # a blocking thread that read the TIME reply late -- must not make
        # every node look ahead.
        self.clock_hi_ref_ns = hi_ref + 2 * err
        self.clock_ref_ok = True
        d = self.last_slack_us * 1000
        for i in range(n):
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
                self.clock_warned[i] = state
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

    def clock_text(self, idx):
        if self.clock_at[idx] == 0:
            return "clock offset not measured"
        return (f"clock offset {self.clock_off_ns[idx] / 1e9:+.3f} s "
                f"(+/- {self.clock_err_ns[idx] / 1e6:.2f} ms) from this client's")

    def ahead_limit(self, slack_us):
        """The largest counter value a majority would accept as a fence now:
        ``slack_us`` ahead of the quorum-th fastest measured clock (the
        measurement's bounds taken in the node's favour); no limit before a
        quorum of nodes is measured.  Read once per attempt: a value above
        it is not counted as a yes."""
        if not self.clock_ref_ok:
            return _NO_LIMIT
        return (time.time_ns() + self.clock_hi_ref_ns) // 1000 + slack_us

    def ahead_detail(self, idx, value_us, slack_us):
        ref = (time.time_ns() + self.clock_hi_ref_ns) // 1000
        return (f"its counter {value_us} is {(value_us - ref) / 1e6:.3f} s "
                f"ahead of a majority of the nodes' clocks, more than the {slack_us / 1e6:.3f} s a delayed "
                f"restart covers: they would refuse it as a fence, so this node is not counted in fenced "
                f"quorums; {self.clock_text(idx)}")

    def refusal_detail(self, idx, node_us, fence, slack_us):
        return (f"refused fence {fence}: it is {(fence - node_us) / 1e6:.3f} s ahead of this node's clock "
                f"(clock ahead of this node by more than the restart delay covers: {slack_us / 1e6:.3f} s)")

    def commit_detail(self, idx, st, d, fence, fence_from):
        parts = ["commit round"]
        if d is not None:
            parts.append(str(d))
        elif st == ST_OK:
            parts.append(f"counter now >= {fence}")
        if idx == fence_from:
            parts.append("the fence came from this node's counter")
        parts.append(self.clock_text(idx))
        return "; ".join(parts)

    def log_refusal(self, op):
        if ST_REFUSED not in op.status:
            return
        now = _now_ns()
        if now < self.refuse_log_at:
            return
        self.refuse_log_at = now + 1000000000
        self.logger.warning("fenced acquire of %r refused in the commit round: %s",
                            op.key, "; ".join(map(repr, op.outcomes())))

    def clock_offsets(self):
        """Per node: None (not measured yet) or a dict: ``offset`` (s, the
        node's ``TIME`` minus this client's ``time.time()``), ``uncertainty``
        (s, half the round trip of the sample), ``age`` (s), ``ahead`` /
        ``behind`` (s by which it is surely ahead of / behind a majority's
        clocks, 0 if not)."""
        now = _now_ns()
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

    def materialize_releases(self):
        """Encode the releases queued since the last flush: one plain release
        script call for a single one, else one RELEASE_MANY call per node per
        chunk (the compiled core's materialize_releases)."""
        q = self.rel_queue
        self.rel_queue = []
        m = len(q)
        if m == 0:
            return
        if m == 1:
            op = q[0]
            kb, tok = op.key_b, op.token
            cmd = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n" % (self.pre_release, len(kb), kb, len(tok), tok)
            if (self.nat_delifeq | self.nat_delex) and self.native_allowed():
                n1, n2 = self.native_release_cmds(kb, tok)
                self.fanout(cmd, op, 0, op.t0 + self.node_timeout_ns, False, n1, self.nat_delifeq, n2, self.nat_delex)
            else:
                self.fanout(cmd, op, 0, op.t0 + self.node_timeout_ns, False)
            return
        nat = (self.nat_delifeq | self.nat_delex) if self.native_allowed() else 0
        if nat:
            # Nodes with a native compare-and-delete get one per release
            # (pipelined, each answered to its own ReleaseOp); the others one
            # RELEASE_MANY script call per chunk below.
            for op in q:
                n1, n2 = self.native_release_cmds(op.key_b, op.token)
                self.fanout(n1, op, 0, op.t0 + self.node_timeout_ns + m * 1000, False,
                            n1, self.nat_delifeq, n2, self.nat_delex, nat)
            if nat == (1 << self.n) - 1:
                return
        chunk = self.batch_chunk
        for start in range(0, m, chunk):
            ops = q[start:start + chunk]
            mop = MultiReleaseOp(self, None)
            mop.ops = ops
            cmd = encode_command(b"EVALSHA", RELEASE_MANY_SHA, len(ops), *[o.key_b for o in ops],
                                 *[o.token for o in ops])
            self.fanout(cmd, mop, 0, mop.t0 + self.node_timeout_ns + len(ops) * 2000, False,
                        None, 0, None, 0, ~nat)

    def _release(self, lock):
        _check_lock(lock)
        if lock._released:
            return self._done(False)
        op = ReleaseOp(self, self.new_waiter())
        op.key_b = kb = lock._key_b
        op.token = tok = lock._token
        op.ex = False
        if self.lock_delay_ms == 0 and not self.release_notify and self.coalesce_releases:
            # Coalesced: every release asked for in this loop iteration goes
            # out as one RELEASE_MANY script call per node (materialize_releases).
            # ``released`` is set once the release is queued: a signal-raised
            # exception in between leaves the lock releasable, never lost.
            self.rel_queue.append(op)
            lock._released = True
            self.schedule_flush()
            return op
        lock._released = True
        if self.lock_delay_ms > 0:
            op.ex = True
            dk = DELAY_PREFIX + kb
            cmd = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
                self.pre_release_ex, len(kb), kb, len(dk), dk, len(tok), tok)
        else:
            op.ex = False
            cmd = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n" % (self.pre_release, len(kb), kb, len(tok), tok)
            if (self.nat_delifeq | self.nat_delex) and self.native_allowed():
                n1, n2 = self.native_release_cmds(kb, tok)
                self.fanout(cmd, op, 0, op.t0 + self.node_timeout_ns, False, n1, self.nat_delifeq, n2, self.nat_delex)
                return op
        self.fanout(cmd, op, 0, op.t0 + self.node_timeout_ns, False)
        return op

    def _release_token(self, key, token, signal, signal_ms, timeout):
        """Compare-and-delete ``key`` if it holds the caller's ``token``, on
        every node; with ``signal`` (a list key), where it deleted, also
        ``DEL signal``, ``LPUSH signal 1``, ``PEXPIRE signal signal_ms`` in
        the same script call.  Decided by ReleaseOp (True on a majority)."""
        timeout = _c_double(timeout)
        kb = self.key_bytes(key)
        tok = _caller_token(token)
        sms = _signal_expiry(signal_ms)
        if self.lock_delay_ms > 0:
            raise ValueError("caller-token releases lift no lock-delay: use a manager without lock_delay")
        if not (0.0 <= timeout <= 1e9):
            raise ValueError(f"timeout must be > 0 and <= 1e9 seconds (0: node_timeout), got {timeout!r}")
        wait_ns = int(timeout * 1e9) if timeout > 0 else self.node_timeout_ns
        if signal is None:
            # The engine's own release, with the caller's key and token.
            op = ReleaseOp(self, self.new_waiter())
            op.key_b = kb
            op.token = tok
            op.ex = False
            cmd = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n" % (self.pre_release, len(kb), kb, len(tok), tok)
            if (self.nat_delifeq | self.nat_delex) and self.native_allowed():
                n1, n2 = self.native_release_cmds(kb, tok)
                self.fanout(cmd, op, 0, op.t0 + wait_ns, False, n1, self.nat_delifeq, n2, self.nat_delex)
            else:
                self.fanout(cmd, op, 0, op.t0 + wait_ns, False)
            return op
        if not isinstance(signal, (str, bytes)):
            raise TypeError(f"signal must be str or bytes (a list key) or None, got {type(signal).__name__}")
        if len(signal) == 0:
            raise ValueError("signal must not be empty")
        try:
            sb = self.key_bytes(signal)
        except ValueError as exc:
            raise ValueError(f"signal: {exc}") from None
        op = SignalReleaseOp(self, self.new_waiter())
        op.key_b = kb
        op.token = tok
        op.ex = False
        op.signal_b = sb
        op.signal_ms = sms
        op.notify = b"1" if self.release_notify else b"0"
        ms_b = b"%d" % sms
        cmd = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$1\r\n%b\r\n" % (
            _RELEASE_SIGNAL_HEADER, len(kb), kb, len(sb), sb, len(tok), tok, len(ms_b), ms_b, op.notify)
        self.fanout(cmd, op, 0, op.t0 + wait_ns, False)
        return op

    def _extend(self, lock, ttl_ms):
        _check_lock(lock)
        if type(ttl_ms) is not int or ttl_ms < _LL_MIN or ttl_ms > _LL_MAX:
            ttl_ms = _c_int(ttl_ms)
        if ttl_ms <= 0:
            # PEXPIRE 0 would delete the key.  Only a lock without expiry
            # (attempt_token without PX) has no TTL to renew with by default.
            raise ValueError(f"ttl must be > 0 to extend {lock.key!r} (a lock acquired without expiry "
                             f"needs an explicit ttl), got {ttl_ms} ms")
        if lock._released:
            return self._done(False)
        op = ExtendOp(self, self.new_waiter())
        op.lock = lock
        op.ttl_ms = ttl_ms
        op.drift_ns = self.drift_ns_for(ttl_ms)
        op.delay_ms = delay = self.lock_delay_ms
        kb = lock._key_b
        tok = lock._token
        if delay > 0:
            dk = DELAY_PREFIX + kb
            cmd = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n%b%b" % (
                self.pre_extend_ex, len(kb), kb, len(dk), dk, len(tok), tok, _bulk_int(ttl_ms), _bulk_int(delay))
        else:
            cmd = b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n%b" % (self.pre_extend, len(kb), kb, len(tok), tok,
                                                          _bulk_int(ttl_ms))
            if self.nat_setifeq and self.native_allowed():
                # SET key token IFEQ token PX ttl: rewrites our own token with
                # a new expiry only where it is still ours (nil: gone or
                # another's).  PX is always given: without it SET would drop
                # the expiry.
                nat = b"*7\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$4\r\nIFEQ\r\n$%d\r\n%b\r\n$2\r\nPX\r\n%b" % (
                    len(kb), kb, len(tok), tok, len(tok), tok, _bulk_int(ttl_ms))
                self.fanout(cmd, op, 0, op.t0 + self.node_timeout_ns, self.guard, nat, self.nat_setifeq)
                return op
        self.fanout(cmd, op, 0, op.t0 + self.node_timeout_ns, self.guard)
        return op

    def _acquire_many(self, keys, ttl_ms):
        ttl_ms = _c_int(ttl_ms)
        if self.fencing or self.lock_delay_ms > 0:
            raise NotImplementedError("batch scripts do not issue fences or lock-delays; acquire per key")
        keys_l = list(keys)
        m = len(keys_l)
        key_bytes = self.key_bytes
        keys_b = [key_bytes(k) for k in keys_l]
        if m == 0:
            return self._done([])
        if len(set(keys_b)) != m:
            raise ValueError("keys: the same key appears twice in one batch")
        op = AcquireManyOp(self, self.new_waiter())
        op.keys = keys_l
        op.keys_b = keys_b
        op.tokens = tokens = [new_token() for _ in range(m)]
        op.ttl_ms = ttl_ms
        op.drift_ns = self.drift_ns_for(ttl_ms)
        op.chunk = chunk = self.batch_chunk
        op._alloc(m)
        # A node works through a batch at roughly 1-2 us per key, but this one
        # thread also reads every node's replies: allow _BATCH_NS_PER_KEY per
        # key per node (a 10^6-key batch on 3 nodes gets 60 s), see engine.pxi.
        deadline = op.t0 + self.node_timeout_ns + m * self.n * _BATCH_NS_PER_KEY
        pre = self.pre_acquire_many
        ttl_b = _bulk_int(ttl_ms)
        for start in range(0, m, chunk):
            end = min(start + chunk, m)
            c = end - start
            parts = [b"*%d\r\n" % (4 + 2 * c), pre, _bulk_int(c)]
            parts += [b"$%d\r\n%b\r\n" % (len(kb), kb) for kb in keys_b[start:end]]
            parts.append(ttl_b)
            parts += [b"$20\r\n%b\r\n" % tok for tok in tokens[start:end]]
            self.fanout(b"".join(parts), op, start, deadline, self.guard)
        return op

    def _release_many(self, locks):
        locks_l = list(locks)
        m = len(locks_l)
        if m == 0:
            return self._done([])
        for lk in locks_l:
            if not isinstance(lk, Lock):
                raise TypeError(f"Cannot convert {type(lk).__name__} to {__name__}.Lock")
        op = ReleaseManyOp(self, self.new_waiter())
        for lk in locks_l:
            lk._released = True
        op.keys_b = keys_b = [lk._key_b for lk in locks_l]
        op.tokens = tokens = [lk._token for lk in locks_l]
        op.chunk = chunk = self.batch_chunk
        op._alloc(m)
        # A node works through a batch at roughly 1-2 us per key, but this one
        # thread also reads every node's replies: allow _BATCH_NS_PER_KEY per
        # key per node (a 10^6-key batch on 3 nodes gets 60 s), see engine.pxi.
        deadline = op.t0 + self.node_timeout_ns + m * self.n * _BATCH_NS_PER_KEY
        pre = self.pre_release_many
        for start in range(0, m, chunk):
            end = min(start + chunk, m)
            c = end - start
            parts = [b"*%d\r\n" % (3 + 2 * c), pre, _bulk_int(c)]
            parts += [b"$%d\r\n%b\r\n" % (len(kb), kb) for kb in keys_b[start:end]]
            parts += [b"$%d\r\n%b\r\n" % (len(tok), tok) for tok in tokens[start:end]]
            self.fanout(b"".join(parts), op, start, deadline, False)
        return op

    def _call(self, idx, args, timeout):
        if type(args) is not tuple:
            raise TypeError(f"Argument 'args' has incorrect type (expected tuple, got {type(args).__name__})")
        idx = self._node_index(idx)
        if timeout is not None and not (0 < timeout <= 1e9):
            raise ValueError(f"timeout must be > 0 and <= 1e9 seconds, got {timeout!r}")
        node = self.nodes[idx]
        op = CallOp(self, self.new_waiter())
        if self.rel_queue:
            self.materialize_releases()
        if not node.connected:
            op.on_fail(idx, 0, ST_DOWN, None)
            return op
        if node.paused or len(node.slots) >= self.max_pending:
            op.on_fail(idx, 0, ST_ERROR, node.overloaded())
            return op
        t = self.node_timeout_ns if timeout is None else int(timeout * 1e9)
        node.send(encode_command(*args), op, 0, op.t0 + t)
        self.schedule_flush()
        return op

    def _done(self, result):
        op = Op(self, self.new_waiter())
        op.decided = True
        op.finish(result)
        return op

    def new_waiter(self):
        if self._sync:
            return None
        return self._create_future()

    # -- the asyncio face: each returns a future ---------------------------

    def attempt(self, key, ttl_ms):
        """One quorum attempt to acquire ``key``.  Returns the operation; its
        ``waiter`` future resolves to a ``Lock`` or None, and ``outcomes()``
        says what each node answered."""
        return self._attempt(key, ttl_ms)

    def try_acquire(self, key, ttl_ms):
        """One quorum attempt: a future of ``Lock`` or None."""
        return self._attempt(key, ttl_ms).waiter

    def attempt_token(self, key, token, ttl_ms, timeout=0.0):
        """One quorum attempt to acquire ``key`` with the caller's ``token``
        (bytes): ``SET key token NX PX ttl_ms``, or without ``PX`` when
        ``ttl_ms`` is 0 (the lease then has no end: ``validity`` is ``inf``).
        Decided as ``attempt`` (a majority, with validity left when there is
        a TTL), released on every node where it may have landed when it
        fails.  ``timeout`` (s, > 0): the per-node reply deadline instead of
        ``node_timeout``.  Returns the operation, as ``attempt``."""
        return self._attempt_token(key, token, ttl_ms, timeout)

    def release(self, lock):
        """Compare-and-delete on every node: a future of True if our token was
        still there on a majority.  A second release does no I/O (False)."""
        return self._release(lock).waiter

    def extend(self, lock, ttl_ms):
        """Compare-and-pexpire on every node: a future of True on success (the
        lock's validity renewed from this operation's start), else False."""
        return self._extend(lock, ttl_ms).waiter

    def release_op(self, lock):
        """``release`` returning the operation (like ``attempt``): its
        ``waiter`` resolves to True/False and ``outcomes()`` says what each
        node answered (the drop-ins tell "not ours any more" from "nodes out
        of reach")."""
        return self._release(lock)

    def release_token(self, key, token, signal=None, signal_ms=1000, timeout=0.0):
        """Compare-and-delete ``key`` where it holds the caller's ``token``
        (bytes, as ``attempt_token``), decided at a majority like
        ``release_op``; returns the operation (``waiter``: True if deleted on
        a majority).  ``signal`` (a list key, or None): where the key was
        deleted, the same script call also deletes the list, pushes ``1`` on
        it and gives it ``signal_ms`` ms of life, which wakes a client
        blocked in ``BLPOP signal`` (python-redis-lock's unlock).
        ``timeout`` (s, > 0): the per-node reply deadline instead of
        ``node_timeout``."""
        return self._release_token(key, token, signal, signal_ms, timeout)

    def extend_op(self, lock, ttl_ms):
        """``extend`` returning the operation (like ``attempt``): its
        ``waiter`` resolves to True/False and ``outcomes()`` says what each
        node answered (the auto-extension tells "held by another token"
        from "no reply")."""
        return self._extend(lock, ttl_ms)

    def set_release_notify(self, on):
        """Opt-in: every release (also the clean-up after a failed attempt)
        runs the notify form of the release script, which PUBLISHes on
        ``ql:released:<key>`` when it deleted our token, so that waiters
        (``quorumlock.leases.notify``) retry at once instead of polling.
        Same arity as the plain scripts: only the SHA changes."""
        on = True if on else False
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

    def acquire_many(self, keys, ttl_ms):
        """One attempt per key, all keys in one script call per node per
        chunk: a future of a list of ``Lock`` or None, in key order."""
        return self._acquire_many(keys, ttl_ms).waiter

    def release_many(self, locks):
        """Compare-and-delete many locks with one script call per node per
        chunk: a future of a list of bools (True where our token was deleted
        on a majority)."""
        return self._release_many(locks).waiter

    def call(self, idx, args, timeout=None):
        """Send one command to node ``idx`` (connected, not necessarily
        ready): a future of the raw reply."""
        return self._call(idx, args, timeout).waiter

    def close(self):
        """Flush what is queued and close every connection."""
        self._flush()
        for node in self.nodes:
            node.ready = False
            node.close()


# -- the blocking engine (sync.pxi) ---------------------------------------------

class SyncSocket:
    """A minimal transport over a non-blocking socket for the blocking engine
    (plain TCP, unix or TLS: here always through the socket's methods)."""

    __slots__ = ("node", "sock", "fd", "tls", "pending", "closed")

    def __init__(self, node, sock, tls):
        self.node = node
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = True if tls else False
        self.pending = None
        self.closed = False

    def write(self, data):
        if type(data) is not bytes:
            raise TypeError(f"Argument 'data' has incorrect type (expected bytes, got {type(data).__name__})")
        if self.closed:
            return
        if self.pending is not None:
            self.pending += data
            return
        n = self._send(data)
        if n < 0:
            return
        if n < len(data):
            self.pending = bytearray(data[n:])

    def _send(self, data):
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except OSError as exc:
            self._lost(exc if self.tls else OSError(exc.errno, "send failed"))
            return -1

    def flush_pending(self):
        if self.pending is None or self.closed:
            return
        n = self._send(self.pending)
        if n < 0:
            return
        if n >= len(self.pending):
            self.pending = None
        else:
            del self.pending[:n]

    def wants_write(self):
        return self.pending is not None

    def read_ready(self):
        """Read what the socket has, feed it to the node's parser."""
        node = self.node
        if self.closed:
            return
        recv_into = self.sock.recv_into
        reads = 0
        if self.tls:
            while not self.closed:
                try:
                    r = recv_into(node.inbuf)
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return
                except OSError as exc:
                    self._lost(exc)
                    return
                if r == 0:
                    self._lost(None)
                    return
                self._deliver(r)
                reads += 1
                if not self.sock.pending() or reads >= _MAX_READS:
                    return
            return
        while not self.closed:
            try:
                r = recv_into(node.inbuf, INBUF_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lost(OSError(exc.errno, "recv failed"))
                return
            if r == 0:
                self._lost(None)
                return
            self._deliver(r)
            reads += 1
            # Bounded: a node streaming without end must not keep this loop
            # away from the deadlines (the wait loop comes back for more).
            if r < INBUF_SIZE or reads >= _MAX_READS:
                return

    def _deliver(self, r):
        """Feed ``r`` bytes to the parser and dispatch the complete replies.

        Pure Python only: CPython runs a signal handler right after a C call
        returns, so a handler's exception can land after the parser handed a
        reply over and before it reached its slot.  That reply is then gone
        and every later one would be credited to the request before its own
        (a later batch was granted keys held elsewhere).  Whatever escapes
        here, the connection is made suspect: no new requests until an
        ``ECHO`` probe comes back in its own slot, else it is reset.  (The
        compiled core never runs handlers inside this path.)"""
        node = self.node
        try:
            node._feed(node.inbuf, 0, r)
            node._received(r)
        except BaseException:
            if not self.closed and node.transport is self:
                node.engine._on_overdue(node._idx)
            raise

    def _lost(self, exc):
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


_MAX_READS = 16         # recv() calls per read_ready (16 x 64 KiB)
_MAX_POLL_MS = 50       # a wait wakes at least this often (signals, deadlines)
_SYNC_BACKLOG = 256     # replies owed by one node before a blocking call waits for them
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_POLL_READ = select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLNVAL


class ProbeOp(Op):
    """``ECHO <nonce>`` on a suspect connection (a reply was overdue).  Its
    own nonce back, in its own slot, proves the connection in step; anything
    else (another reply, no reply in time) resets the connection."""

    __slots__ = ("nonce", "node")

    def on_reply(self, node, reply, aux):
        self.decided = True
        self.complete = True
        if self.node.transport is None:
            return
        if type(reply) is bytes and reply == self.nonce:
            node.suspect = False
            return
        self.engine._log_error(node._name, "connection out of step (probe got another reply), resetting", None)
        node.abort()

    def on_fail(self, idx, aux, st, detail):
        if self.decided:
            return
        self.decided = True
        self.complete = True
        if st == ST_TIMEOUT and self.node.transport is not None and self.node.suspect:
            self.engine._log_error(self.node._name, "probe unanswered, resetting the connection", None)
            self.node.abort()


class SyncEngine(Engine):
    """One set of N blocking connections, driven by ``poll()`` in the calling
    thread.  A blocking LockManager keeps a pool of these, one checked out per
    calling thread, so threads never share a socket."""

    __slots__ = ("reconnect_at", "backoff", "maintenance_epoch", "all_ready", "granted", "just_read", "green_poll")

    def __init__(self, names, owner, node_timeout, drift_factor,
                 max_key_len=1024, batch_chunk=500, stall_timeout=None):
        Engine.__init__(self, None, names, owner, node_timeout, drift_factor, max_key_len,
                        batch_chunk, stall_timeout)
        self.reconnect_at = [0] * self.n    # monotonic ns when node i may be retried
        self.backoff = [0.05] * self.n      # seconds of the next reconnect backoff
        self.maintenance_epoch = -1
        self.all_ready = False
        self.granted = None     # the Lock last granted to the caller (see blocking._LockContext)
        self.just_read = False  # the entry read already ran for this call
        # None: wait in poll().  Else green_poll(want, timeout_ms) -> ready,
        # lists of (fd, events): the cooperative wait chosen by blocking.py
        # under gevent/eventlet monkey-patching.
        self.green_poll = None

    def attach(self, idx, sock, tls):
        """Use the connected socket ``sock`` (made non-blocking here) for node ``idx``."""
        node = self.nodes[self._node_index(idx)]
        sock.setblocking(False)
        node.connection_made(SyncSocket(node, sock, tls))

    def _on_overdue(self, idx):
        """Node ``idx`` missed a deadline: suspect its connection and probe it."""
        node = self.nodes[self._node_index(idx)]
        if node.suspect or node.transport is None:
            return
        node.suspect = True
        op = ProbeOp(self, None)
        op.node = node
        op.nonce = b"ql-probe-" + random_bytes(8).hex().encode()
        # Behind every overdue request: allow the node a few more deadlines.
        node.send(encode_command(b"ECHO", op.nonce), op, 0, _now_ns() + 4 * self.node_timeout_ns + 50000000)

    def _node_lost(self, idx, exc):
        b = self.backoff[idx]
        self.all_ready = False
        self.reconnect_at[idx] = _now_ns() + int(b * 1e9)
        self.backoff[idx] = min(b * 2, 0.5)

    def _poll_ready(self, timeout_ms, only_pending):
        """One poll() over the connected sockets (``only_pending``: those with
        replies owed or bytes to send), then read/write what is ready.  A
        signal handler that raises (KeyboardInterrupt) raises out of poll():
        the caller then abandons its operation."""
        want = []
        by_fd = {}
        for node in self.nodes:
            t = node.transport
            if not node.connected or t is None:
                continue
            if only_pending and not node.slots and t.pending is None:
                continue
            want.append((t.fd, _POLLIN | _POLLOUT if t.pending is not None else _POLLIN))
            by_fd[t.fd] = node
        green = self.green_poll
        if not want:
            if not only_pending and timeout_ms > 0:
                # Nothing can answer: every node is down.  The operation was
                # already failed by fanout; only a deadline can be waiting.
                if green is not None:
                    green([], timeout_ms)
                else:
                    time.sleep(timeout_ms / 1000.0)
            return
        if green is not None:
            # gevent/eventlet: wait through the patched select (blocking.py)
            ready = green(want, timeout_ms)
        else:
            poller = select.poll()
            for fd, ev in want:
                poller.register(fd, ev)
            ready = poller.poll(timeout_ms)
        for fd, ev in ready:
            node = by_fd.get(fd)
            if node is None or node.transport is None:
                continue
            t = node.transport
            if ev & _POLLOUT:
                t.flush_pending()
            if ev & _POLL_READ:
                t.read_ready()

    def _entry_read(self):
        self._poll_ready(0, True)
        self.just_read = True    # the wait that follows need not read again

    def _wait(self, op, until):
        """Drive the sockets until ``op`` is decided or ``until`` (monotonic
        ns, 0 = none) passes; queued writes are always flushed first.
        Replies that have arrived are read before any deadline is checked,
        and once more when ``op`` is decided (see the compiled core)."""
        nodes = self.nodes
        if self.just_read:
            self.just_read = False
        else:
            self._poll_ready(0, True)
        while True:
            self._flush()
            if op.complete:
                self._poll_ready(0, True)
                self._bound_backlog()
                self._drain_writes()
                return
            now = _now_ns()
            if until and now >= until:
                return
            next_t = until if until else now + 1000000000
            for node in nodes:
                if node.slots and node.timer is not None:
                    if node.timer_at <= now:
                        node._on_timer()
                    if node.timer is not None and node.timer_at < next_t:
                        next_t = node.timer_at
            if op.complete:
                continue
            now = _now_ns()
            timeout_ms = (next_t - now + 999999) // 1000000 if next_t > now else 0
            self._poll_ready(min(timeout_ms, _MAX_POLL_MS), False)

    def _bound_backlog(self):
        """Backpressure for the blocking API: a caller may not run ahead of a
        node by more than _SYNC_BACKLOG unanswered requests; a node that
        stops answering is made suspect by its deadline instead."""
        while True:
            heavy = False
            now = _now_ns()
            for node in self.nodes:
                if node.connected and len(node.slots) > _SYNC_BACKLOG:
                    if node.timer is not None and node.timer_at <= now:
                        node._on_timer()
                    if node.connected and len(node.slots) > _SYNC_BACKLOG and not node.suspect:
                        heavy = True
            if not heavy:
                return
            self._poll_ready(1, True)

    def _drain_writes(self):
        """Bytes still in a user-space send buffer when an operation is
        decided (a slow node, a big batch) go out now, for up to
        max(1 s, node_timeout), not whenever this thread calls again."""
        limit = 0
        while any(nd.connected and nd.transport is not None and nd.transport.pending is not None
                  for nd in self.nodes):
            now = _now_ns()
            if not limit:
                limit = now + max(1000000000, self.node_timeout_ns)
            elif now >= limit:
                return
            self._poll_ready(_MAX_POLL_MS, True)

    def wait(self, op, timeout=None):
        """Wait for ``op`` (at most ``timeout`` seconds); return its result."""
        until = 0
        if timeout is not None:
            until = _now_ns() + int(timeout * 1e9)
        self._wait(op, until)
        return op.result

    # -- the blocking face: each returns the result -----------------------

    def _run(self, op):
        self._wait(op, 0)
        return op.result

    def _abandon(self, op):
        """The caller leaves with an exception (a signal handler raised)
        while ``op`` may have taken keys: release them now, before the
        exception propagates (queued behind the SET on every connection)."""
        if isinstance(op, AcquireOp):
            if isinstance(op.result, Lock):
                op.result._released = True
            self.send_release(op.key_b, op.token, None, None)
        elif isinstance(op, AcquireManyOp):
            if type(op.result) is list:
                for x in op.result:
                    if isinstance(x, Lock):
                        x._released = True
            for i in range(self.n):
                self.send_release_many_to(i, op.keys_b, op.tokens)
        self._flush()

    def _run_acquire(self, op):
        try:
            self._wait(op, 0)
            if isinstance(op.result, Lock):
                self.granted = op.result
        except BaseException:
            self._abandon(op)
            raise
        return op.result

    def _run_release(self, op):
        try:
            self._wait(op, 0)
        except BaseException:
            self._flush()   # the release goes out even when the wait is interrupted
            raise
        return op.result

    def try_acquire_sync(self, key, ttl_ms):
        self._entry_read()   # late replies first: a probe may clear a suspect node
        return self._run_acquire(self._attempt(key, ttl_ms))

    def attempt_sync(self, key, ttl_ms):
        self._entry_read()
        op = self._attempt(key, ttl_ms)
        self._run_acquire(op)
        return op

    def release_sync(self, lock):
        return self._run_release(self._release(lock))

    def extend_sync(self, lock, ttl_ms):
        self._entry_read()
        return self._run(self._extend(lock, ttl_ms))

    def acquire_many_sync(self, keys, ttl_ms):
        self._entry_read()
        return self._run_acquire(self._acquire_many(keys, ttl_ms))

    def acquire_each_sync(self, keys, ttl_ms):
        """One attempt per key with the single-key operation (fenced or
        lock-delay acquires), all sent before the first wait."""
        self._entry_read()
        ops = [self._attempt(k, ttl_ms) for k in keys]
        try:
            for op in ops:
                self._wait(op, 0)
        except BaseException:
            for op in ops:
                self._abandon(op)
            raise
        return [op.result for op in ops]

    def release_each_sync(self, locks):
        ops = [self._release(lk) for lk in locks]
        for op in ops:
            self._run_release(op)
        return [op.result for op in ops]

    def extend_each_sync(self, locks, ttls_ms):
        """Extend every lock in ``locks`` (``ttls_ms[i]`` ms for ``locks[i]``):
        all extends are queued before the first wait, so each node gets them
        in one write.  Returns the decided operations (``op.result`` is
        True/False, ``op.outcomes()`` the per-node answers).  Used by the
        auto-extension thread (``quorumlock.leases``)."""
        ops = [self._extend(lk, t) for lk, t in zip(locks, ttls_ms)]
        for op in ops:
            self._wait(op, 0)
        return ops

    def release_many_sync(self, locks):
        return self._run_release(self._release_many(locks))

    def discard(self):
        """Forget every connection without any I/O: close the descriptors,
        drop what is queued and pending, tell no operation (a forked child's
        inherited sockets are shared with its parent)."""
        self.rel_queue = []
        for node in self.nodes:
            node.forget()
        self.all_ready = False

    def call_op(self, idx, args, timeout=None):
        """Queue one command to one node; ``wait(op)`` gives its reply."""
        return self._call(idx, args, timeout)

    def call_sync(self, idx, args, timeout=None):
        """One command to one node; raises TimeoutError/ConnectionError.
        An error reply is returned, as by the compiled core."""
        op = self._call(idx, args, timeout)
        self._wait(op, 0)
        if isinstance(op.result, (TimeoutError, ConnectionError)):
            raise op.result
        return op.result

    def close(self, drain_timeout=0.5):
        """Wait for the replies still owed (``drain_timeout`` s without progress, at most 30 times that), then
        close (see the compiled core: unread replies make close() a reset)."""
        waiter = Op(self, None)
        window = int(drain_timeout * 1e9)
        until = monotonic_ns() + window
        # While the nodes keep answering, keep waiting (a big batch's
        # releases take longer than the window to drain), up to 30 windows.
        cap = monotonic_ns() + 30 * window
        last_owed = -1
        while True:
            self._flush()
            owed = sum(len(node.slots) for node in self.nodes if node.connected)
            if owed == 0:
                break
            step = monotonic_ns()
            if last_owed >= 0 and owed < last_owed:
                until = min(step + window, cap)
            last_owed = owed
            step += 1_000_000
            if step >= until:
                break
            self._wait(waiter, step)
        for node in self.nodes:
            node.ready = False
            if node.transport is not None:
                node.transport.close()
