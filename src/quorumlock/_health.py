"""``locks.health()``: what every node looks like from this client, now.

One probe per node, sent on the manager's own connections (pipelined behind
whatever lock traffic is in flight, which it neither waits for nor changes):

* ``TIME``: the node's wall clock against this process's ``time.time()``,
  read before the command is queued and after its reply arrives, so the
  measured offset is exact to within half that round trip;
* ``INFO``: role, ``run_id``, uptime, server name and version,
  ``maxmemory-policy``;
* ``COMMAND INFO DELIFEQ DELEX`` and ``COMMAND DOCS SET``: whether the server
  has the compare-and-delete commands and ``SET ... IFEQ``.

A node that is down, or does not answer within ``timeout``, is reported
(``reachable=False`` and the reason) instead of raising; the whole call takes
about one ``timeout`` at most, whatever the number of slow nodes.  Health
commands skip the restart guard (a guarded node is still probed; ``counted``
says whether it counts in quorums now).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._config import check_seconds, parse_info

#: Default seconds a node has to answer every health command.
DEFAULT_TIMEOUT = 1.0

#: The commands reported in ``NodeHealth.commands`` (name -> supported).
PROBED_COMMANDS = ("DELIFEQ", "DELEX", "SET IFEQ")

#: The probes of the native conditional commands (also run by every connect's
#: handshake, quorumlock._handshake): ``COMMAND INFO`` of the compare-and-delete
#: commands, and ``COMMAND DOCS SET`` (whose arguments list ``IFEQ`` or not).
PROBES_NATIVE: Tuple[Tuple[Any, ...], ...] = (
    ("COMMAND", "INFO", "DELIFEQ", "DELEX"),
    ("COMMAND", "DOCS", "SET"),
)

_PROBES: Tuple[Tuple[Any, ...], ...] = (("TIME",), ("INFO",)) + PROBES_NATIVE


@dataclass(frozen=True)
class NodeHealth:
    """One node, as seen by one manager at one moment.

    Every field but ``name``, ``reachable``, ``counted`` and ``error`` is None
    when the node did not answer (or did not answer that part)."""

    #: The node's address (no password).
    name: str
    #: True when the node answered the probe's ``TIME`` within the timeout.
    reachable: bool
    #: True when the node counts in quorums right now: connected, handshake
    #: done, and not excluded by the restart guard.
    counted: bool
    #: Why the node is not reachable (or why part of the probe failed).
    error: Optional[str] = None
    #: ``"master"`` (anything else is refused at connect).
    role: Optional[str] = None
    #: The server's ``run_id``: a new one means the process restarted.
    run_id: Optional[str] = None
    #: Seconds this manager has known this ``run_id`` (None: it has not seen
    #: it yet, e.g. the node restarted and has not been reconnected).
    run_id_age: Optional[float] = None
    #: The server's ``uptime_in_seconds``.
    uptime: Optional[float] = None
    #: Node wall clock minus this host's ``time.time()``, seconds.
    clock_offset: Optional[float] = None
    #: Bound of ``clock_offset``'s error: half the ``TIME`` round trip.
    clock_offset_error: Optional[float] = None
    #: Seconds from queuing ``TIME`` to reading its reply (an upper bound of
    #: the network round trip; the blocking API reads replies in node order).
    latency: Optional[float] = None
    #: ``"redis"``, ``"valkey"``, ...: the server's own name for itself.
    server: Optional[str] = None
    #: The server's version string (``redis_version``, or ``valkey_version``).
    version: Optional[str] = None
    #: The node's ``maxmemory-policy`` (locks need ``noeviction``).
    maxmemory_policy: Optional[str] = None
    #: Each of ``PROBED_COMMANDS`` -> whether the server has it (empty when
    #: unknown).
    commands: Dict[str, bool] = field(default_factory=dict)
    #: The command this manager's plain locks use on the node now:
    #: ``{"release": "DELIFEQ" | "DELEX" | "script", "extend": "SET IFEQ" |
    #: "script"}`` (native commands detected at connect; the scripts with
    #: ``native_commands=False``, fencing, lock-delay or notify).  Empty when
    #: the node is not connected.
    paths: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    """The result of ``locks.health()``."""

    #: One entry per node, in the manager's order.
    nodes: Tuple[NodeHealth, ...]
    #: Votes a lock needs (``n // 2 + 1``).
    quorum: int

    @property
    def reachable(self) -> int:
        """How many nodes answered."""
        return sum(1 for nd in self.nodes if nd.reachable)

    @property
    def counted(self) -> int:
        """How many nodes answered and count in quorums now."""
        return sum(1 for nd in self.nodes if nd.reachable and nd.counted)

    @property
    def quorum_reachable(self) -> bool:
        """True when at least ``quorum`` nodes answered and count in quorums:
        a lock can be granted now."""
        return self.counted >= self.quorum

    @property
    def max_clock_offset(self) -> Optional[float]:
        """The largest ``|clock_offset|`` among the nodes that answered."""
        offs = [abs(nd.clock_offset) for nd in self.nodes if nd.clock_offset is not None]
        return max(offs) if offs else None


def check_timeout(timeout: Any) -> float:
    """The ``timeout`` argument of ``health()``, checked (default 1 s)."""
    if timeout is None:
        return DEFAULT_TIMEOUT
    return check_seconds("timeout", timeout, maximum=3600.0)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _error_text(reply: Any) -> Optional[str]:
    """The reason a reply is not an answer, or None for a real reply."""
    if isinstance(reply, BaseException):
        return str(reply) or type(reply).__name__
    return None


def _has_token(reply: Any, token: bytes) -> bool:
    """Whether ``token`` appears as an argument token in a ``COMMAND DOCS`` reply."""
    stack = [reply]
    seen = 0
    while stack and seen < 100000:
        seen += 1
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (bytes, str)):
            b = item.encode() if isinstance(item, str) else item
            if b.upper() == token:
                return True
    return False


def native_commands(info_reply: Any, docs_reply: Any) -> Dict[str, bool]:
    """Which of ``PROBED_COMMANDS`` a node has, from the replies of
    ``PROBES_NATIVE`` (a missing or error reply: that entry is left out)."""
    out: Dict[str, bool] = {}
    if isinstance(info_reply, list) and len(info_reply) == 2:
        # COMMAND INFO: one entry per name asked, None for an unknown command.
        out["DELIFEQ"] = info_reply[0] is not None
        out["DELEX"] = info_reply[1] is not None
    if _error_text(docs_reply) is None and not _is_reply_error(docs_reply) and docs_reply is not None:
        out["SET IFEQ"] = _has_token(docs_reply, b"IFEQ")
    return out


def _is_reply_error(reply: Any) -> bool:
    from hiredis import ReplyError

    return isinstance(reply, ReplyError)


def build(
    mgr: Any,
    replies: Sequence[Optional[Sequence[Any]]],
    times: Sequence[Optional[Tuple[float, float, float]]],
    counted: Sequence[bool],
    errors: Sequence[Optional[str]],
    now_ns: int,
) -> Health:
    """Assemble the result from each node's replies to ``_PROBES`` (None for a
    node not probed) and ``(wall_sent, wall_received, rtt)`` of its TIME."""
    out: List[NodeHealth] = []
    guard = mgr.guard_state
    paths = native_paths(mgr)
    for i, spec in enumerate(mgr.node_specs):
        rs = replies[i]
        err = errors[i]
        if rs is None or err is not None:
            out.append(NodeHealth(spec.name, False, False, error=err or "not probed"))
            continue
        time_r, info_r, cinfo_r, docs_r = rs
        problems: List[str] = []
        offset = offset_err = latency = None
        t = times[i]
        if isinstance(time_r, list) and len(time_r) == 2 and t is not None:
            server_now = int(time_r[0]) + int(time_r[1]) / 1e6
            sent, received, latency = t
            offset = server_now - (sent + received) / 2.0
            offset_err = (received - sent) / 2.0
        else:
            problems.append(f"TIME: {_text(time_r)}")
        info: Dict[str, str] = {}
        if isinstance(info_r, (bytes, str)):
            info = parse_info(info_r)
        else:
            problems.append(f"INFO: {_error_text(info_r) or _text(info_r)}")
        run_id = info.get("run_id")
        age = None
        if run_id is not None and guard.run_ids[i] == run_id and guard.known_since[i]:
            age = max(0.0, (now_ns - guard.known_since[i]) / 1e9)
        uptime: Optional[float]
        try:
            uptime = float(info["uptime_in_seconds"]) if "uptime_in_seconds" in info else None
        except ValueError:
            uptime = None
        server = info.get("server_name") or ("redis" if "redis_version" in info else None)
        version = info.get(f"{server}_version") if server else None
        version = version or info.get("redis_version")
        out.append(NodeHealth(
            name=spec.name,
            reachable=True,
            counted=counted[i],
            error="; ".join(problems) or None,
            role=info.get("role"),
            run_id=run_id,
            run_id_age=age,
            uptime=uptime,
            clock_offset=offset,
            clock_offset_error=offset_err,
            latency=latency,
            server=server,
            version=version,
            maxmemory_policy=info.get("maxmemory_policy"),
            commands=native_commands(cinfo_r, docs_r),
            paths=paths[i] if paths is not None and mgr_ready(mgr, i) else {},
        ))
    return Health(tuple(out), mgr.quorum)


def native_paths(mgr: Any) -> Optional[List[Dict[str, str]]]:
    """Per node, the release and extend command of plain locks (the
    engine's ``native_paths()``), or None without an engine."""
    eng = mgr.current_engine()
    if eng is None or not hasattr(eng, "native_paths"):
        return None
    return list(eng.native_paths())


def mgr_ready(mgr: Any, i: int) -> bool:
    eng = mgr.current_engine()
    return eng is not None and bool(eng.nodes[i].ready)


def _counted(eng: Any, i: int, now_ns: int) -> bool:
    nd = eng.nodes[i]
    return bool(nd.ready) and not (eng.guard and nd.counted_after > now_ns)


def health_sync(mgr: Any, timeout: Any = None) -> Health:
    """``quorumlock.LockManager.health``: probe every node at once on this
    thread's connection set and wait (at most about ``timeout``)."""
    t = check_timeout(timeout)
    eng = mgr.checkout()
    core = mgr.core
    n = mgr.n
    now = core.monotonic_ns()
    counted = [_counted(eng, i, now) for i in range(n)]
    errors: List[Optional[str]] = [None] * n
    ops: List[Optional[List[Any]]] = [None] * n
    sent_wall = [0.0] * n
    sent_mono = [0.0] * n
    for i in range(n):
        if not eng.nodes[i].ready:
            errors[i] = f"{mgr.node_specs[i].name}: not connected"
            continue
        sent_mono[i] = time.monotonic()
        sent_wall[i] = time.time()
        ops[i] = [eng.call_op(i, args, t) for args in _PROBES]
    deadline = time.monotonic() + t
    replies: List[Optional[List[Any]]] = [None] * n
    times: List[Optional[Tuple[float, float, float]]] = [None] * n
    for i in range(n):
        node_ops = ops[i]
        if node_ops is None:
            continue
        first = _wait(eng, node_ops[0], deadline)
        times[i] = (sent_wall[i], time.time(), time.monotonic() - sent_mono[i])
        if _error_text(first) is not None:
            errors[i] = _error_text(first)
            continue
        rest = [_wait(eng, op, deadline) for op in node_ops[1:]]
        replies[i] = [first, *rest]
    return build(mgr, replies, times, counted, errors, core.monotonic_ns())


def _wait(eng: Any, op: Any, deadline: float) -> Any:
    # The engine fails each command at its own deadline; the bound here only
    # guards against waiting past it.
    r = eng.wait(op, max(0.0, deadline - time.monotonic()) + 0.05)
    if not op.complete:
        return TimeoutError("no reply before the deadline")
    return r


async def health_async(mgr: Any, timeout: Any = None) -> Health:
    """``quorumlock.aio.LockManager.health``: probe every node at once on the
    manager's connections and await the replies (at most about ``timeout``)."""
    t = check_timeout(timeout)
    eng = mgr.checkout()
    core = mgr.core
    n = mgr.n
    now = core.monotonic_ns()
    counted = [_counted(eng, i, now) for i in range(n)]
    errors: List[Optional[str]] = [None] * n
    futs: List[Optional[List[Any]]] = [None] * n
    times: List[Optional[Tuple[float, float, float]]] = [None] * n

    def timed(i: int, wall0: float, mono0: float) -> Any:
        def done(_fut: Any) -> None:
            times[i] = (wall0, time.time(), time.monotonic() - mono0)
        return done

    for i in range(n):
        if not eng.nodes[i].ready:
            errors[i] = f"{mgr.node_specs[i].name}: not connected"
            continue
        mono0, wall0 = time.monotonic(), time.time()
        fs = [eng.call(i, args, t) for args in _PROBES]
        for f in fs:
            f.add_done_callback(_retrieve)
        fs[0].add_done_callback(timed(i, wall0, mono0))
        futs[i] = fs
    flat = [f for fs in futs if fs is not None for f in fs]
    if flat:
        # The engine's per-command deadline bounds each future; the outer
        # bound only guards against an engine that never fails them.
        await asyncio.wait(flat, timeout=t + 0.5)
    replies: List[Optional[List[Any]]] = [None] * n
    for i, node_futs in enumerate(futs):
        if node_futs is None:
            continue
        got = [_result(f) for f in node_futs]
        if _error_text(got[0]) is not None:
            errors[i] = _error_text(got[0])
            continue
        replies[i] = got
    return build(mgr, replies, times, counted, errors, core.monotonic_ns())


def _retrieve(fut: Any) -> None:
    if not fut.cancelled():
        fut.exception()


def _result(fut: Any) -> Any:
    if not fut.done():
        return TimeoutError("no reply before the deadline")
    if fut.cancelled():
        return ConnectionError("cancelled")
    exc = fut.exception()
    return exc if exc is not None else fut.result()
