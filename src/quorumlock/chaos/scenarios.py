"""Scenarios: what the clients do and which fault is injected when.

Three kinds of scenario (``FAULTS[name].kind``):

``targeted``  a deterministic schedule driven step by step (docs/faults.md marks
              these rows): client A is driven onto a *bare* majority by
              blackholing one node for A through A's own proxy, read its
              counter and checked its lease; then the fault is injected; then
              client B tries, and A carries on as a client that still believes
              it holds the lock would.
``random``    N clients contend for K keys for the run's duration while a
              fault injector thread fires at random times (seeded).
``config``    a configuration the engine must refuse (a duplicate node).

:func:`run_scenario` runs one and returns a :class:`Result` with the checker's
report and the path of the history.
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import checker
from .harness import Env, ScenarioError, Worker, _direct, now

__all__ = ["Scenario", "Result", "FAULTS", "FaultSpec", "run_scenario", "default_guard"]

S = 1_000_000_000  # ns per second
KEY = "k0"


@dataclass
class Scenario:
    """One run: a fault, a node mode, and how the clients use the lock."""

    fault: str = "none"
    mode: str = "volatile"
    fencing: str = "off"  # off | on | write-only
    guard: Optional[bool] = None  # the clients' restart guard; None: on unless mode is unsafe
    clients: int = 8
    keys: int = 4
    duration: float = 30.0
    ttl: float = 1.0
    seed: int = 0
    bugs: Tuple[str, ...] = ()  # a faulty client (quorumlock.chaos.faulty) for client A
    drift_factor: float = 0.01
    n: int = 3

    def describe(self) -> str:
        parts = [self.fault, self.mode, f"fencing={self.fencing}"]
        if self.bugs:
            parts.append("bug=" + "+".join(self.bugs))
        if self.drift_factor != 0.01:
            parts.append(f"drift={self.drift_factor:g}")
        if self.guard is not None:
            parts.append("guard" if self.guard else "no-guard")
        return " ".join(parts)


@dataclass
class Result:
    scenario: Scenario
    label: str
    report: Optional[checker.Report] = None
    history: Optional[str] = None
    wall: float = 0.0
    error: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    checks: Dict[str, Any] = field(default_factory=dict)  # row-specific observations (liveness, leftovers)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "scenario": asdict(self.scenario),
            "label": self.label,
            "history": self.history,
            "wall": round(self.wall, 2),
            "error": self.error,
            "notes": self.notes,
            "checks": self.checks,
            "report": self.report.to_dict() if self.report is not None else None,
        }


def default_guard(mode: str) -> bool:
    """The clients' restart guard unless asked: on, except in ``unsafe`` mode,
    which exists to show what happens without any protection (the matrix's U
    column; G is unsafe *with* the guard)."""
    return mode != "unsafe"


@dataclass
class FaultSpec:
    kind: str  # targeted | random | config
    fn: Callable[..., Any]
    help: str
    clock: bool = False  # needs the clock shim on the lock nodes
    proxy: bool = False  # random: every client behind its own proxies
    faketime: Optional[str] = None  # random: every client under faketime with this spec


# --------------------------------------------------------------------------
# targeted schedules
# --------------------------------------------------------------------------


def _cfg(sc: Scenario, guard: bool, **kw: Any) -> Dict[str, Any]:
    cfg = {"fencing": sc.fencing, "guard": guard, "drift_factor": sc.drift_factor}
    cfg.update(kw)
    return cfg


def _client_a(env: Env, sc: Scenario, guard: bool, **kw: Any) -> Worker:
    """Client A: the faulty client if the scenario names bugs, else quorumlock."""
    if sc.bugs:
        kw.setdefault("engine", "faulty")
        kw.setdefault("bugs", list(sc.bugs))
    return env.worker("A", **_cfg(sc, guard, **kw))


def _require_ok(msg: Dict[str, Any], what: str) -> Dict[str, Any]:
    if msg.get("event") == "acquired" and (msg.get("op") or {}).get("ok"):
        return msg["op"]
    if msg.get("event") == "done":
        return msg["acquire"]
    raise ScenarioError(f"{what}: expected success, got {msg}")


def _bare_majority(env: Env, a: Worker, drop: int = 2) -> Dict[str, Any]:
    """Drive A onto the nodes other than ``drop`` (a bare majority of 3), by
    blackholing A's own link to ``drop``; return A's acquire op."""
    env.link(a.name, drop, "blackhole")
    op = _require_ok(a.call("acquire", key=KEY, until=now() + 3 * S), "A's acquire")
    assert env.cluster is not None
    if _direct(env.cluster.ports[drop]).get(KEY) is not None:
        raise ScenarioError("A's key reached the blackholed node: not a bare majority")
    env.notes.append(f"A holds {KEY} on a bare majority (node {drop} blackholed for A), fence {op.get('fence')}")
    return op


def _wait_key(env: Env, count: int, timeout: float = 5.0) -> List[int]:
    """Wait until ``KEY`` exists on at least ``count`` lock nodes (a request
    in flight has landed); return the nodes that hold it."""
    assert env.cluster is not None
    deadline = time.monotonic() + timeout
    while True:
        held = [i for i, p in enumerate(env.cluster.ports) if _direct(p).exists(KEY)]
        if len(held) >= count or time.monotonic() > deadline:
            return held
        time.sleep(0.002)


def _a_reads(a: Worker) -> None:
    a.call("read", key=KEY)
    a.call("check", key=KEY)


def _b_tries(env: Env, b: Worker, until_ns: int, **kw: Any) -> Dict[str, Any]:
    """B: acquire (retrying until ``until_ns``), read, check, write, release."""
    msg = b.call("rmw", key=KEY, until=until_ns, timeout=(until_ns - now()) / S + 15, **kw)
    env.notes.append("B acquired during the schedule" if msg["event"] == "done" else "B never acquired")
    return msg


def _node_fault_schedule(fault: Callable[[Env], None], before: Optional[Callable[[Env], None]] = None):
    """A on a bare majority {0, 1}; read; check; ``fault``; B tries until A's
    validity ends; A writes if its lease is still valid by its own clock."""

    def run(env: Env, sc: Scenario, guard: bool) -> None:
        a = _client_a(env, sc, guard, via_proxy=True)
        b = env.worker("B", **_cfg(sc, guard))
        env.ready(a, b)
        if before is not None:
            before(env)
        acq = _bare_majority(env, a)
        _a_reads(a)
        fault(env)
        _b_tries(env, b, int(acq["valid_until"]) + S // 5)
        a.call("write", key=KEY, if_valid=True)
        a.call("release", key=KEY)

    return run


def _crash_node0(env: Env) -> None:
    env.crash(0)  # per the mode: at once (unsafe, fsync), or after the delay (volatile)


def _jump_node0(env: Env) -> None:
    env.jump(0, 5 * env.ttl)  # more than any remaining validity


def _rate_node0(rate: float) -> Callable[[Env], None]:
    def before(env: Env) -> None:
        env.rate(0, rate)

    return before


def t_rate_drift(env: Env, sc: Scenario, guard: bool) -> None:
    """Node 0's clock runs 1 % fast (the key on it expires TTL/101 early);
    B polls for the key; A writes as soon as B is done, if its lease is
    still valid by its own clock.  With the default drift_factor (0.01) the
    allowance covers the 1 %: B gets the key only after A's lease ended.  With
    drift_factor=0 B gets it ~TTL/100 - 2 ms before (27 ms for TTL 3 s)."""
    a = _client_a(env, sc, guard, via_proxy=True)
    b = env.worker("B", **_cfg(sc, guard))
    env.ready(a, b)
    env.rate(0, 1.01)
    acq = _bare_majority(env, a)
    a.call("read", key=KEY)
    _b_tries(env, b, int(acq["valid_until"]), gap=0.0003)
    a.call("write", key=KEY, if_valid=True)
    a.call("release", key=KEY)


def t_clock_back_restart(env: Env, sc: Scenario, guard: bool) -> None:
    """Row 6's fence regression: node 2's clock is 10 s behind; A holds the
    key on the bare majority {0, 1} and commits its fence there (from node
    0's and 1's TIME); node 0 crashes, its clock is stepped back 10 s, and it
    comes back after the volatile delay with its counter lost.  B, on {0, 2},
    gets fences from two clocks 10 s behind: smaller than A's.  The fenced
    storage then rejects B, the legitimate holder (a liveness failure, never
    a stale write accepted); the checker must flag the regression."""
    assert env.cluster is not None
    env.jump(2, -10.0)
    a = _client_a(env, sc, guard, via_proxy=True)
    env.ready(a)
    _bare_majority(env, a, drop=2)
    a.call("read", key=KEY)
    a.call("check", key=KEY)
    a.call("write", key=KEY, if_valid=True)
    a.call("release", key=KEY)
    env.crash(0)
    env.jump(0, -10.0)
    env.cluster.wait_up(0, timeout=env.cluster.restart_delay + 10)
    b = env.worker("B", via_proxy=True, **_cfg(sc, guard))  # started after the restart: trusts node 0
    env.ready(b)
    env.link("B", 1, "blackhole")  # B's quorum: {0, 2}, both 10 s behind
    got = b.call("rmw", key=KEY, until=now() + 3 * S, timeout=20)
    env.notes.append(f"B's fence {got.get('acquire', got.get('op', {})).get('fence')}; "
                     f"read {((got.get('read') or {}).get('status'))}")


def _pause_a(env: Env, a: Worker) -> None:
    """SIGSTOP A while it sleeps between its lease check and its write."""
    a.send("sleep", seconds=0.3)
    a.expect("sleeping")
    a.stop()


def t_client_pause(env: Env, sc: Scenario, guard: bool) -> None:
    """Kleppmann's GC pause (row 11): A checks its lease, then stops for
    longer than the lease; B takes the lock and updates; A wakes and writes."""
    a = _client_a(env, sc, guard)
    b = env.worker("B", **_cfg(sc, guard))
    env.ready(a, b)
    acq = _require_ok(a.call("acquire", key=KEY, until=now() + 3 * S), "A's acquire")
    _a_reads(a)
    _pause_a(env, a)
    _b_tries(env, b, int(acq["valid_until"]) + 2 * S)
    a.cont()
    a.expect("slept")
    a.call("write", key=KEY)  # the check was before the pause
    a.call("release", key=KEY)


def t_pause_interleaved(env: Env, sc: Scenario, guard: bool) -> None:
    """A reads, pauses past its lease; B acquires and reads; A wakes and
    writes; B writes.  Write-only fencing accepts both writes (A's fence is
    still the highest the storage has seen when A writes): a lost update.  A
    fenced read by B raises the fence first, so A's write is rejected."""
    a = _client_a(env, sc, guard)
    b = env.worker("B", **_cfg(sc, guard))
    env.ready(a, b)
    acq = _require_ok(a.call("acquire", key=KEY, until=now() + 3 * S), "A's acquire")
    _a_reads(a)
    _pause_a(env, a)
    _require_ok(b.call("acquire", key=KEY, until=int(acq["valid_until"]) + 2 * S, timeout=15), "B's acquire")
    b.call("read", key=KEY)
    b.call("check", key=KEY)
    a.cont()
    a.expect("slept")
    a.call("write", key=KEY)
    b.call("write", key=KEY, if_valid=True)
    b.call("release", key=KEY)
    a.call("release", key=KEY)


def t_client_clock_slow(env: Env, sc: Scenario, guard: bool) -> None:
    """Row 9: A's own clock runs at half speed (faketime), so it believes
    its lease lasts twice as long as the nodes keep the key."""
    a = _client_a(env, sc, guard, faketime="+0 x0.5")
    b = env.worker("B", **_cfg(sc, guard))
    env.ready(a, b)
    _require_ok(a.call("acquire", key=KEY, until=now() + 3 * S), "A's acquire")
    _a_reads(a)
    a.send("sleep", seconds=0.7 * sc.ttl)  # by A's clock: 1.4 TTL of real time
    a.expect("sleeping")
    _b_tries(env, b, now() + int(1.3 * sc.ttl * S))
    a.expect("slept", timeout=sc.ttl * 3 + 10)
    a.call("write", key=KEY, if_valid=True)
    a.call("release", key=KEY)


def t_pause_in_flight(env: Env, sc: Scenario, guard: bool) -> None:
    """Row 12: A is paused after sending its SETs and before reading the
    replies, for longer than the TTL (the replies are held back by a 150 ms
    latency on A's links, and A is SIGSTOPped 30 ms after it sent).  A client
    that measures the attempt after reading the replies finds no validity
    left; one that took t1 early believes it holds the lock."""
    a = _client_a(env, sc, guard, via_proxy=True, node_timeout=0.9 * sc.ttl)
    b = env.worker("B", **_cfg(sc, guard))
    env.ready(a, b)
    for i in range(env.n):
        env.link("A", i, "latency", 0.15)
    a.send("acquire", key=KEY, once=True, announce=True)
    a.expect("invoking")
    time.sleep(0.03)
    a.stop()
    # B starts once A's SETs have landed: it gets the key when A's expires.
    if len(_wait_key(env, env.n)) < env.n:
        raise ScenarioError("A's SETs did not land on every node")
    _require_ok(b.call("acquire", key=KEY, until=now() + 3 * S, timeout=15), "B's acquire")
    b.call("read", key=KEY)
    b.call("check", key=KEY)
    a.cont()
    got = a.expect("acquired", "failed", timeout=10)
    if got["event"] == "acquired":
        env.notes.append("A believed it acquired after the pause")
        for i in range(env.n):
            env.link("A", i, "pass")
        _a_reads(a)
        a.call("write", key=KEY, if_valid=True)
    else:
        env.notes.append("A found no validity left after the pause and gave up")
    b.call("write", key=KEY, if_valid=True)
    b.call("release", key=KEY)


def t_lock_latency(env: Env, sc: Scenario, guard: bool) -> None:
    """Row 13: A's replies take longer than the TTL; B keeps trying."""
    a = _client_a(env, sc, guard, via_proxy=True, node_timeout=sc.ttl)
    b = env.worker("B", **_cfg(sc, guard))
    env.ready(a, b)
    for i in range(env.n):
        env.link("A", i, "latency", 0.6 * sc.ttl)
    a.send("acquire", key=KEY, once=True)
    _wait_key(env, env.n // 2 + 1)  # A's SETs landed: now B competes with A's (unknown) lease
    _b_tries(env, b, now() + int(2.5 * sc.ttl * S))
    got = a.expect("acquired", "failed", timeout=10)
    env.notes.append(f"A's attempt through the slow links: {got['event']}")
    if got["event"] == "acquired":
        _a_reads(a)
        a.call("write", key=KEY, if_valid=True)
    # A's release of its failed attempt is still in the slow links: let it land.
    time.sleep(0.6 * sc.ttl + 0.2)


def t_storage_latency(env: Env, sc: Scenario, guard: bool) -> None:
    """Row 14: A's write to the storage is delayed past its lease (proxy
    latency on A's storage link); B takes the lock and updates meanwhile."""
    a = _client_a(env, sc, guard, storage_proxy=True, storage_timeout=8 * sc.ttl + 5)
    b = env.worker("B", **_cfg(sc, guard))
    env.ready(a, b)
    _require_ok(a.call("acquire", key=KEY, until=now() + 3 * S), "A's acquire")
    _a_reads(a)
    env.link("A", "storage", "latency", 1.5 * sc.ttl)
    a.send("write", key=KEY)
    _b_tries(env, b, now() + int(2 * sc.ttl * S))
    a.expect("written", timeout=8 * sc.ttl + 10)
    env.link("A", "storage", "pass")
    a.call("release", key=KEY)


def t_half_reply(env: Env, sc: Scenario, guard: bool) -> None:
    """Row 17: two of A's nodes apply A's SET but the replies are lost; A
    must fail and release on all nodes, so B can take the key at once."""
    a = _client_a(env, sc, guard, via_proxy=True)
    b = env.worker("B", **_cfg(sc, guard))
    env.ready(a, b)
    env.link("A", 1, "half-reply")
    env.link("A", 2, "half-reply")
    got = a.call("acquire", key=KEY, once=True)
    env.notes.append(f"A's attempt with two replies lost: {got['event']}")
    time.sleep(0.05)
    assert env.cluster is not None
    present = [i for i, p in enumerate(env.cluster.ports) if _direct(p).get(KEY) is not None]
    env.extra_checks["keys_left_after_A"] = present
    b_got = b.call("acquire", key=KEY, once=True)
    env.extra_checks["B_acquired_at_once"] = b_got["event"] == "acquired"
    if b_got["event"] == "acquired":
        b.call("release", key=KEY)
    for i in (1, 2):
        env.link("A", i, "pass")
    if got["event"] == "acquired":
        a.call("release", key=KEY)


def t_release_del(env: Env, sc: Scenario, guard: bool) -> None:
    """Negative control: A releases with a plain DEL after its lease ran out
    (paused), deleting B's lock; C then acquires while B holds it."""
    a = _client_a(env, sc, guard)
    b = env.worker("B", **_cfg(sc, guard))
    c = env.worker("C", **_cfg(sc, guard))
    env.ready(a, b, c)
    acq = _require_ok(a.call("acquire", key=KEY, until=now() + 3 * S), "A's acquire")
    _pause_a(env, a)
    _require_ok(b.call("acquire", key=KEY, until=int(acq["valid_until"]) + 2 * S, timeout=15), "B's acquire")
    b.call("read", key=KEY)
    b.call("check", key=KEY)
    a.cont()
    a.expect("slept")
    a.call("release", key=KEY)
    msg = c.call("rmw", key=KEY, until=now() + int(0.2 * sc.ttl * S), timeout=15)
    env.notes.append("C acquired while B held the lock" if msg["event"] == "done" else "C was refused")
    b.call("write", key=KEY, if_valid=True)
    b.call("release", key=KEY)


def t_extend_after_expiry(env: Env, sc: Scenario, guard: bool) -> None:
    """Negative control: A extends after its lease ran out (paused) and B
    took the lock.  A compare-and-pexpire refuses; plain PEXPIRE or SET XX
    "succeed" on B's key."""
    a = _client_a(env, sc, guard)
    b = env.worker("B", **_cfg(sc, guard))
    env.ready(a, b)
    acq = _require_ok(a.call("acquire", key=KEY, until=now() + 3 * S), "A's acquire")
    _a_reads(a)
    _pause_a(env, a)
    _require_ok(b.call("acquire", key=KEY, until=int(acq["valid_until"]) + 2 * S, timeout=15), "B's acquire")
    b.call("read", key=KEY)
    b.call("check", key=KEY)
    a.cont()
    a.expect("slept")
    ext = a.call("extend", key=KEY, ttl=sc.ttl)
    env.notes.append(f"A's extend after expiry: {'succeeded' if ext['op'].get('ok') else 'refused'}")
    a.call("write", key=KEY, if_valid=True)
    b.call("write", key=KEY, if_valid=True)
    b.call("release", key=KEY)
    a.call("release", key=KEY)


def t_set_without_nx(env: Env, sc: Scenario, guard: bool) -> None:
    """Negative control: B (the faulty client with no-nx) takes a lock A holds."""
    a = env.worker("A", **_cfg(sc, guard))
    b = env.worker("B", **_cfg(sc, guard, engine="faulty", bugs=list(sc.bugs)))
    env.ready(a, b)
    _require_ok(a.call("acquire", key=KEY, until=now() + 3 * S), "A's acquire")
    _a_reads(a)
    _b_tries(env, b, now() + int(0.3 * sc.ttl * S))
    a.call("write", key=KEY, if_valid=True)
    a.call("release", key=KEY)


def t_duplicate_faulty(env: Env, sc: Scenario, guard: bool) -> None:
    """Row 20 negative control: A lists node 0 twice (once through an alias
    address) and counts it twice; B holds the lock on nodes {1, 2}."""
    from .proxy import FaultProxy

    assert env.cluster is not None
    b = env.worker("B", via_proxy=True, **_cfg(sc, guard))
    alias = FaultProxy("127.0.0.1", env.cluster.ports[0], hub=env.hub)
    urls = [env.cluster.urls[0], alias.url, env.cluster.urls[1]]
    a = _client_a(env, sc, guard, urls=urls, engine="faulty", bugs=list(sc.bugs))
    env.ready(a, b)
    env.link("B", 0, "blackhole")
    _require_ok(b.call("acquire", key=KEY, until=now() + 3 * S), "B's acquire")
    b.call("read", key=KEY)
    b.call("check", key=KEY)
    msg = a.call("rmw", key=KEY, until=now() + int(0.3 * sc.ttl * S), timeout=15)
    env.notes.append("A (node 0 listed twice) acquired while B held the lock" if msg["event"] == "done"
                     else "A was refused")
    b.call("write", key=KEY, if_valid=True)
    b.call("release", key=KEY)


def c_duplicate_engine(env: Env, sc: Scenario, guard: bool) -> str:
    """Row 20: quorumlock must refuse a node list with one server twice, by
    spelling ([a, a, b], localhost vs 127.0.0.1) and by run_id (an alias
    address that reaches the same server)."""
    from ..blocking import LockManager
    from ..errors import ConfigurationError
    from .proxy import FaultProxy

    assert env.cluster is not None
    u = env.cluster.urls
    port0 = env.cluster.ports[0]
    alias = FaultProxy("127.0.0.1", port0, hub=env.hub)
    cases = {
        "same URL twice": [u[0], u[0], u[1]],
        "localhost vs 127.0.0.1": [u[0], f"redis://localhost:{port0}", u[1]],
        "alias address (same run_id)": [u[0], alias.url, u[1]],
    }
    refused = {}
    for name, urls in cases.items():
        try:
            with LockManager(urls, ttl=sc.ttl):
                refused[name] = "ACCEPTED"
        except (ValueError, ConfigurationError) as exc:
            refused[name] = f"{type(exc).__name__}: {exc}"[:160]
    env.extra_checks["duplicate_configs"] = refused
    for name, why in refused.items():
        env.notes.append(f"{name}: {why}")
    return "REJECTED" if all(v != "ACCEPTED" for v in refused.values()) else "ACCEPTED"


# --------------------------------------------------------------------------
# random fault injectors
# --------------------------------------------------------------------------


def _every(stop: threading.Event, rng: random.Random, lo: float, hi: float) -> bool:
    """Wait a random interval; False once the run is over."""
    return not stop.wait(rng.uniform(lo, hi))


def r_none(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    stop.wait()


def r_crash(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """SIGKILL a random node; it restarts per the mode; one node down at a time."""
    assert env.cluster is not None
    while _every(stop, rng, 0.5 * sc.ttl, 2.0 * sc.ttl):
        i = rng.randrange(env.n)
        with env.node_lock:  # one node-level fault at a time (with r_node_pause)
            env.crash(i)
            deadline = time.monotonic() + env.cluster.restart_delay + 10
            while time.monotonic() < deadline and not env.cluster.nodes[i].up:
                time.sleep(0.02)


def r_node_pause(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """SIGSTOP a random node for 0.1-1.5 TTL."""
    while _every(stop, rng, 0.3, 1.0):
        i = rng.randrange(env.n)
        with env.node_lock:
            env.node_pause(i)
            stop.wait(rng.uniform(0.1, 1.5) * sc.ttl)
            env.node_resume(i)


def r_client_pause(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """SIGSTOP a random client for 0.05-2 TTL (a GC pause at a random point)."""
    while _every(stop, rng, 0.3, 1.0):
        w = rng.choice(workers)
        if w.proc.poll() is not None:
            continue
        w.stop()
        stop.wait(rng.uniform(0.05, 2.0) * sc.ttl)
        w.cont()


def r_clock_jump(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """Row 5: small forward steps (2-20 % of the TTL) of node 0's clock only."""
    while _every(stop, rng, 0.3, 1.0):
        env.jump(0, rng.uniform(0.02, 0.2) * sc.ttl)


def r_clock_back(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """Row 6: backward steps (10-100 % of the TTL) of a random node's clock."""
    while _every(stop, rng, 0.5, 1.5):
        env.jump(rng.randrange(env.n), -rng.uniform(0.1, 1.0) * sc.ttl)


def r_clock_rate(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """Row 8: node 0's clock runs 0.5 % fast (inside drift_factor 0.01), the
    others within +-0.3 %."""
    env.rate(0, 1.005)
    for i in range(1, env.n):
        env.rate(i, 1.0 + rng.uniform(-0.003, 0.003))
    stop.wait()


def _links(workers: List[Worker]) -> List[Worker]:
    return [w for w in workers if w.proc.poll() is None]


def r_latency(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """Latency of 1-150 ms on a random client's link to a random node."""
    while _every(stop, rng, 0.1, 0.5):
        w, i = rng.choice(_links(workers) or workers), rng.randrange(env.n)
        env.link(w.name, i, "latency", rng.uniform(0.001, 0.15))
        stop.wait(rng.uniform(0.2, 1.5))
        env.link(w.name, i, "pass")


def r_partition(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """Row 16: cut a random client off a random minority or majority of the nodes."""
    while _every(stop, rng, 0.2, 0.8):
        w = rng.choice(workers)
        size = rng.choice([1, env.n // 2 + 1])
        cut = rng.sample(range(env.n), size)
        # blackhole: bytes lost, the connection is reset when it heals (a long
        # partition); stall: bytes held and delivered late (TCP retransmits).
        how = rng.choice(["blackhole", "stall"])
        for i in cut:
            env.link(w.name, i, how)
        stop.wait(rng.uniform(0.3, 2.0) * sc.ttl)
        for i in cut:
            env.link(w.name, i, "pass")


def _flap_links(env: Env, stop: threading.Event, rng: random.Random, workers: List[Worker], mode: str,
                every: Tuple[float, float], hold: Tuple[float, float]) -> None:
    """Until ``stop``: every ``every`` seconds, put a random client's link to
    a random node in ``mode`` for ``hold`` seconds, then heal it."""
    while _every(stop, rng, *every):
        w, i = rng.choice(workers), rng.randrange(env.n)
        env.link(w.name, i, mode)
        stop.wait(rng.uniform(*hold))
        env.link(w.name, i, "pass")


def r_half_reply(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """Row 17 at random: a link applies requests but loses replies for a while."""
    _flap_links(env, stop, rng, workers, "half-reply", (0.2, 0.8), (0.05, 0.5))


def r_reset(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """Row 18: RST a random link mid-operation."""
    _flap_links(env, stop, rng, workers, "reset", (0.05, 0.4), (0.005, 0.1))


def r_script_flush(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """Row 19: SCRIPT FLUSH a random node (the clients must fall back to EVAL)."""
    while _every(stop, rng, 0.05, 0.4):
        env.script_flush(rng.randrange(env.n))


_MIXED = ("node-pause", "latency", "partition", "half-reply", "reset", "script-flush", "crash")


def r_mixed(env: Env, sc: Scenario, stop: threading.Event, rng: random.Random, workers: List[Worker]) -> None:
    """Every fault of the mode's model at once (one injector thread each, the
    crash injector only when the mode survives crashes, i.e. not unsafe):
    the long soak runs."""
    names = [n for n in _MIXED if n != "crash" or sc.mode != "unsafe"]
    threads = []
    for name in names:
        spec = FAULTS[name]
        t = threading.Thread(target=_guarded, args=(spec.fn, env, sc, stop, random.Random(rng.random()), workers),
                             name=f"chaos-inject-{name}", daemon=True)
        t.start()
        threads.append(t)
    stop.wait()
    for t in threads:
        t.join(30)


def _guarded(fn: Callable[..., None], env: Env, sc: Scenario, stop: threading.Event, rng: random.Random,
             workers: List[Worker]) -> None:
    try:
        fn(env, sc, stop, rng, workers)
    except Exception as exc:  # an injector failing must show, not kill the run silently
        env.fault("injector-error", fn.__name__, error=repr(exc)[:300])
        env.notes.append(f"injector {fn.__name__} failed: {exc!r}")


FAULTS: Dict[str, FaultSpec] = {
    # targeted (docs/faults.md rows marked targeted)
    "crash-targeted": FaultSpec("targeted", _node_fault_schedule(_crash_node0),
                                "row 1: SIGKILL a node of A's bare majority; restart per the mode"),
    "clock-jump-targeted": FaultSpec("targeted", _node_fault_schedule(_jump_node0),
                                     "row 4: step the wall clock of a node of A's bare majority forward by 5 TTL",
                                     clock=True),
    "clock-rate-targeted": FaultSpec("targeted", _node_fault_schedule(lambda env: None, before=_rate_node0(2.0)),
                                     "row 7: a node of A's bare majority runs its wall clock at x2", clock=True),
    "clock-rate-drift": FaultSpec("targeted", t_rate_drift,
                                  "a node of A's bare majority runs 1 % fast; A writes late in its lease "
                                  "(with --drift-factor 0: the negative control)", clock=True),
    "clock-back-restart": FaultSpec("targeted", t_clock_back_restart,
                                    "row 6: clocks 10 s behind plus a restart of the intersection node: "
                                    "a fence regression (use --fencing)", clock=True),
    "client-clock-slow": FaultSpec("targeted", t_client_clock_slow,
                                   "row 9: client A runs under faketime x0.5"),
    "client-pause-targeted": FaultSpec("targeted", t_client_pause,
                                       "row 11: SIGSTOP client A after its lease check, past the lease"),
    "client-pause-interleaved": FaultSpec("targeted", t_pause_interleaved,
                                          "row 11, reads interleaved: A reads, pauses; B reads; A writes; B writes"),
    "pause-in-flight": FaultSpec("targeted", t_pause_in_flight,
                                 "row 12: SIGSTOP client A between sending its SETs and reading the replies"),
    "lock-latency": FaultSpec("targeted", t_lock_latency, "row 13: latency > TTL on A's lock links"),
    "storage-latency": FaultSpec("targeted", t_storage_latency,
                                 "row 14: A's storage write delayed past its lease"),
    "half-reply-targeted": FaultSpec("targeted", t_half_reply,
                                     "row 17: two of A's nodes apply its SET but the replies are lost"),
    "release-del": FaultSpec("targeted", t_release_del,
                             "negative control: A releases after expiry (use --client-bug del-release)"),
    "extend-after-expiry": FaultSpec("targeted", t_extend_after_expiry,
                                     "negative control: A extends after expiry "
                                     "(--client-bug pexpire-extend / setxx-extend)"),
    "set-without-nx": FaultSpec("targeted", t_set_without_nx,
                                "negative control: B acquires with SET without NX (--client-bug no-nx)"),
    "duplicate-node": FaultSpec("config", c_duplicate_engine,
                                "row 20: quorumlock must refuse a node listed twice"),
    "duplicate-node-faulty": FaultSpec("targeted", t_duplicate_faulty,
                                       "row 20 negative control: a client that counts a node twice"),
    # random
    "none": FaultSpec("random", r_none, "no fault: contention only"),
    "crash": FaultSpec("random", r_crash, "SIGKILL random nodes; restart per the mode"),
    "node-pause": FaultSpec("random", r_node_pause, "row 15: SIGSTOP random nodes"),
    "client-pause": FaultSpec("random", r_client_pause, "row 11 at random: SIGSTOP random clients"),
    "clock-jump": FaultSpec("random", r_clock_jump, "row 5: small forward steps of one node's clock", clock=True),
    "clock-jump-back": FaultSpec("random", r_clock_back, "row 6: backward steps of node clocks", clock=True),
    "clock-rate": FaultSpec("random", r_clock_rate, "row 8: node clocks within +-0.5 %", clock=True),
    "client-clock-fast": FaultSpec("random", r_none, "row 10: every client under faketime x2",
                                   faketime="+0 x2"),
    "latency": FaultSpec("random", r_latency, "random latency on client links", proxy=True),
    "partition": FaultSpec("random", r_partition, "row 16: cut clients off minorities/majorities", proxy=True),
    "half-reply": FaultSpec("random", r_half_reply, "row 17 at random: lost replies", proxy=True),
    "reset": FaultSpec("random", r_reset, "row 18: connection resets", proxy=True),
    "script-flush": FaultSpec("random", r_script_flush, "row 19: SCRIPT FLUSH"),
    "mixed": FaultSpec("random", r_mixed, "all of the mode's faults at once (soak)", proxy=True),
}


# --------------------------------------------------------------------------
# running one scenario
# --------------------------------------------------------------------------


def _run_random(env: Env, sc: Scenario, spec: FaultSpec, guard: bool) -> None:
    rng = random.Random(sc.seed)
    start_allowance = 1.5
    end_at = now() + int((sc.duration + start_allowance) * S)
    workers = []
    for i in range(sc.clients):
        workers.append(env.worker(
            f"c{i}", mode="auto", via_proxy=spec.proxy, faketime=spec.faketime, end_at=end_at,
            seed=rng.randrange(2**31), **_cfg(sc, guard, engine="faulty" if sc.bugs else "quorumlock",
                                               bugs=list(sc.bugs))))
    stop = threading.Event()
    time.sleep(start_allowance)
    inj = threading.Thread(target=_guarded, args=(spec.fn, env, sc, stop, rng, workers),
                           name="chaos-injector", daemon=True)
    inj.start()
    while now() < end_at:
        time.sleep(min(0.2, max(0.0, (end_at - now()) / S)))
    stop.set()
    inj.join(60)
    _heal(env, workers)
    for w in workers:
        try:
            w.proc.wait(timeout=max(5.0, 3 * sc.ttl + 5))
        except Exception:
            pass


def _heal(env: Env, workers: List[Worker]) -> None:
    """Undo the faults that would stop the clients from finishing."""
    for w in workers:
        if w.stopped:
            w.cont()
    for name, ps in env.proxies.items():
        for i, p in enumerate(ps):
            if p.mode != "pass":
                env.link(name, i, "pass")
    if env.cluster is not None:
        for i, nd in enumerate(env.cluster.nodes):
            if nd.paused:
                env.node_resume(i)


def run_scenario(sc: Scenario, base_dir: Optional[str] = None, keep: bool = True,
                 name: Optional[str] = None) -> Result:
    """Run one scenario end to end and check its history."""
    t0 = time.monotonic()
    spec = FAULTS.get(sc.fault)
    if spec is None:
        raise ValueError(f"unknown fault {sc.fault!r}; known: {', '.join(sorted(FAULTS))}")
    guard = default_guard(sc.mode) if sc.guard is None else sc.guard
    keys = [KEY] if spec.kind != "random" else [f"k{i}" for i in range(sc.keys)]
    ttl = sc.ttl
    if spec.kind == "targeted" and sc.fault == "clock-rate-drift" and ttl < 3.0:
        ttl = 3.0  # a 1 % rate against 2 ms of fixed drift needs a long lease to show
    sc = Scenario(**dict(asdict(sc), ttl=ttl))
    env = None
    try:
        env = Env(mode=sc.mode, n=sc.n, ttl=sc.ttl, clock_faults=spec.clock, keys=keys, base_dir=base_dir,
                  name=name or sc.fault, keep=keep)
        meta = {"scenario": asdict(sc), "kind": spec.kind, "guard": guard, "fault_help": spec.help}
        label_override = None
        if spec.kind == "targeted":
            spec.fn(env, sc, guard)
        elif spec.kind == "random":
            _run_random(env, sc, spec, guard)
        else:
            label_override = spec.fn(env, sc, guard)
        path, events, report = env.finish(meta)
        label = label_override or checker.classify(report)
        res = Result(sc, label, report, path, time.monotonic() - t0, notes=list(env.notes),
                     checks=dict(env.extra_checks))
        return res
    except ScenarioError as exc:
        return Result(sc, "ERROR", None, env.dir if env else None, time.monotonic() - t0,
                      error=str(exc), notes=list(env.notes) if env else [])
    except Exception as exc:
        return Result(sc, "ERROR", None, env.dir if env else None, time.monotonic() - t0,
                      error=f"{exc!r}\n{traceback.format_exc()[-2000:]}", notes=list(env.notes) if env else [])
    finally:
        if env is not None:
            env.close()
