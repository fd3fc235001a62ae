"""The expected-results matrix of docs/faults.md, runnable.

Each :class:`Row` is one scenario and the label the checker must observe
(:func:`quorumlock.chaos.checker.classify`): ``SAFE``, ``VIOL`` (overlapping
holders and a lost update), ``ME-only`` (overlapping holders, the fenced
storage rejected the stale holder, no lost update) or ``REJECTED`` (the engine
refused the configuration).  :func:`run_matrix` runs the rows and compares.

Retries: a targeted schedule races real processes, so on a loaded machine it
can miss the window it aims at.  A row that *expects* a violation and observed
none (or failed to set up) is run once more; a row that expects SAFE and
observed a violation is never retried: that is a finding.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence

from .scenarios import Result, Scenario, run_scenario

__all__ = ["Row", "ROWS", "select_rows", "run_matrix", "RowResult"]

_VIOLATIONS = ("VIOL", "ME-only", "ME", "LOST", "STALE", "REGRESS")


@dataclass
class Row:
    id: str
    faults_row: str  # the row of docs/faults.md, or "NC" for a negative control
    title: str
    scenario: Scenario
    expected: str
    quick: bool = True
    needs: Optional[str] = None  # "faketime": skipped with the reason if absent
    require: Dict[str, Any] = field(default_factory=dict)  # extra observations that must hold


def _t(fault: str, mode: str = "volatile", **kw: Any) -> Scenario:
    return Scenario(fault=fault, mode=mode, **kw)


def _r(fault: str, mode: str = "volatile", **kw: Any) -> Scenario:
    """A random row: the quick matrix shortens it (see select_rows)."""
    kw.setdefault("clients", 8)
    kw.setdefault("keys", 4)
    kw.setdefault("duration", 20.0)
    return Scenario(fault=fault, mode=mode, **kw)


ROWS: List[Row] = [
    # row 1: crash of a node of A's bare majority
    Row("1-U", "1", "node crash, immediate restart, no guard", _t("crash-targeted", "unsafe"), "VIOL"),
    Row("1-V", "1", "node crash, delayed restart", _t("crash-targeted", "volatile"), "SAFE"),
    Row("1-F", "1", "node crash, fsync=always, immediate restart", _t("crash-targeted", "fsync"), "SAFE"),
    Row("1-G", "1", "node crash, immediate restart, restart guard", _t("crash-targeted", "unsafe", guard=True), "SAFE"),
    Row("1-U+f", "1", "node crash, unsafe, fenced storage", _t("crash-targeted", "unsafe", fencing="on"), "ME-only"),
    # row 4: forward jump of a node's wall clock
    Row("4-U", "4", "clock jump forward on a node of A's quorum", _t("clock-jump-targeted", "unsafe"), "VIOL"),
    Row("4-V", "4", "clock jump forward", _t("clock-jump-targeted", "volatile"), "VIOL"),
    Row("4-F", "4", "clock jump forward", _t("clock-jump-targeted", "fsync"), "VIOL"),
    Row("4-G", "4", "clock jump forward, restart guard", _t("clock-jump-targeted", "unsafe", guard=True), "VIOL",
        quick=False),
    # fenced: the 5-TTL jump puts node 0's fences beyond what the others accept
    # (docs/fencing.md, "Clock offsets"), so B gets no fence while A's lease runs
    Row("4-V+f", "4", "clock jump forward, fenced storage", _t("clock-jump-targeted", "volatile", fencing="on"),
        "SAFE"),
    Row("4-F+f", "4", "clock jump forward, fenced storage", _t("clock-jump-targeted", "fsync", fencing="on"),
        "SAFE", quick=False),
    # row 5/6: small forward / backward steps, random
    Row("5-V", "5", "small forward clock steps (random)", _r("clock-jump", fencing="on"), "SAFE"),
    Row("5-F", "5", "small forward clock steps (random)", _r("clock-jump", "fsync"), "SAFE", quick=False),
    Row("6-V+r", "6", "clocks behind + restart of the intersection node", _t("clock-back-restart", fencing="on"),
        "REGRESS"),
    Row("6-V", "6", "backward clock steps (random)", _r("clock-jump-back", fencing="on"), "SAFE", quick=False),
    # row 7/8: clock rate
    Row("7-V", "7", "node clock x2 on A's quorum", _t("clock-rate-targeted"), "VIOL"),
    Row("7-V+f", "7", "node clock x2, fenced storage", _t("clock-rate-targeted", fencing="on"), "ME-only"),
    Row("8-V", "8", "node clocks within 0.5 % (random)", _r("clock-rate", fencing="on"), "SAFE"),
    Row("8-ctl", "8", "node clock +1 %, drift_factor 0.01, A writes late in its lease", _t("clock-rate-drift"), "SAFE"),
    Row("8-NC", "NC", "node clock +1 % with drift_factor=0", _t("clock-rate-drift", drift_factor=0.0), "VIOL"),
    # row 9/10: client clock (faketime on the client process)
    Row("9-V", "9", "client clock x0.5 (faketime)", _t("client-clock-slow"), "VIOL", needs="faketime"),
    Row("9-V+f", "9", "client clock x0.5, fenced storage", _t("client-clock-slow", fencing="on"), "ME-only",
        needs="faketime", quick=False),
    Row("10-V", "10", "client clocks x2 (faketime, random)", _r("client-clock-fast", fencing="on"), "SAFE",
        needs="faketime", quick=False),
    # row 11: the GC pause
    Row("11-V", "11", "client pause past the lease", _t("client-pause-targeted"), "VIOL"),
    Row("11-V+f", "11", "client pause past the lease, fenced storage", _t("client-pause-targeted", fencing="on"),
        "ME-only"),
    Row("11-U", "11", "client pause past the lease", _t("client-pause-targeted", "unsafe"), "VIOL", quick=False),
    Row("11-F", "11", "client pause past the lease", _t("client-pause-targeted", "fsync"), "VIOL", quick=False),
    Row("11-F+f", "11", "client pause, fenced storage", _t("client-pause-targeted", "fsync", fencing="on"),
        "ME-only", quick=False),
    # row 12: pause between sending and reading
    Row("12-V", "12", "client pause between SETs and replies", _t("pause-in-flight"), "SAFE"),
    Row("12-NC", "NC", "the same, client takes t1 before reading replies",
        _t("pause-in-flight", bugs=("early-t1",)), "VIOL"),
    # rows 13-19
    Row("13-V", "13", "lock replies slower than the TTL", _t("lock-latency"), "SAFE", require={"leftover": 0}),
    Row("14-V", "14", "storage write delayed past the lease", _t("storage-latency"), "VIOL"),
    Row("14-V+f", "14", "storage write delayed, fenced storage", _t("storage-latency", fencing="on"), "ME-only"),
    Row("15-V", "15", "node SIGSTOP (random)", _r("node-pause", fencing="on"), "SAFE"),
    Row("15-F", "15", "node SIGSTOP (random)", _r("node-pause", "fsync"), "SAFE", quick=False),
    Row("16-V", "16", "partitions client/minority, client/majority (random)", _r("partition", fencing="on"), "SAFE"),
    Row("17-V", "17", "request applied, reply lost; release on all nodes", _t("half-reply-targeted"), "SAFE",
        require={"leftover": 0, "keys_left_after_A": [], "B_acquired_at_once": True}),
    Row("17r-V", "17", "lost replies (random)", _r("half-reply", fencing="on"), "SAFE", quick=False),
    Row("18-V", "18", "connection resets (random)", _r("reset", fencing="on"), "SAFE"),
    Row("19-V", "19", "SCRIPT FLUSH (random)", _r("script-flush", fencing="on"), "SAFE"),
    Row("20", "20", "a node listed twice (3 spellings)", _t("duplicate-node"), "REJECTED"),
    Row("20-NC", "NC", "a client that counts a node twice", _t("duplicate-node-faulty"), "VIOL"),
    # negative controls with deliberately broken clients, and the engine on the same schedule
    Row("NC-del", "NC", "release with plain DEL", _t("release-del", bugs=("del-release",)), "VIOL"),
    Row("NC-del-ctl", "NC", "same schedule, compare-and-delete (engine)", _t("release-del"), "SAFE"),
    Row("NC-pexpire", "NC", "extend with plain PEXPIRE", _t("extend-after-expiry", bugs=("pexpire-extend",)), "VIOL"),
    Row("NC-setxx", "NC", "extend with SET XX", _t("extend-after-expiry", bugs=("setxx-extend",)), "VIOL"),
    Row("NC-ext-ctl", "NC", "same schedule, compare-and-pexpire (engine)", _t("extend-after-expiry"), "SAFE"),
    Row("NC-nonx", "NC", "SET without NX", _t("set-without-nx", bugs=("no-nx",)), "VIOL"),
    Row("NC-nonx-ctl", "NC", "same schedule, SET NX", _t("set-without-nx"), "SAFE"),
    Row("NC-wo", "NC", "write-only fencing in a read-modify-write",
        _t("client-pause-interleaved", fencing="write-only"), "VIOL"),
    Row("NC-wo-ctl", "NC", "same schedule, fenced read + fenced CAS",
        _t("client-pause-interleaved", fencing="on"), "ME-only"),
    # soak-style rows (full matrix only)
    Row("crash-V", "1", "random node crashes, delayed restart", _r("crash", fencing="on"), "SAFE", quick=False),
    Row("crash-F", "1", "random node crashes, fsync", _r("crash", "fsync", fencing="on"), "SAFE", quick=False),
    Row("mixed-V", "-", "every fault of the model at once", _r("mixed", fencing="on"), "SAFE", quick=False),
    Row("mixed-F", "-", "every fault of the model at once", _r("mixed", "fsync"), "SAFE", quick=False),
]


# -- semaphores and read-write locks (quorumlock.chaos.semaphores registers the scenarios) --
from . import semaphores as _semaphores  # noqa: E402,F401

ROWS += [
    Row("sem-NC", "NC", "per-node counting semaphore, N=3, k=2, each client cut from another node",
        _t("sem-pigeonhole-naive", ttl=2.0), "VIOL"),
    Row("sem-pigeon", "-", "same schedule, quorum semaphore (k permit keys)", _t("sem-pigeonhole", ttl=2.0), "SAFE"),
    Row("sem-crash", "1", "semaphore k=2, 16 holders, random node crashes", _t("sem-crash", clients=16, duration=3.0),
        "SAFE"),
    Row("sem-pause", "15", "semaphore k=2, node SIGSTOPs", _t("sem-node-pause", clients=16, duration=5.0), "SAFE",
        quick=False),
    Row("sem-cpause", "11", "semaphore k=2, holders stall past the lease", _t("sem-client-pause", clients=16,
        duration=5.0), "SAFE", quick=False),
    Row("rw-crash", "1", "rwlock, readers vs writers, random node crashes", _t("rw-crash", clients=12, duration=3.0),
        "SAFE"),
    Row("rw-pause", "15", "rwlock, node SIGSTOPs", _t("rw-node-pause", clients=12, duration=5.0), "SAFE", quick=False),
    Row("rw-cpause", "11", "rwlock, holders stall past the lease", _t("rw-client-pause", clients=12, duration=5.0),
        "SAFE", quick=False),
]


def select_rows(quick: bool = False, only: Optional[Sequence[str]] = None, seed: int = 0) -> List[Row]:
    """The rows to run: all, or the quick subset (random rows shortened to
    5 s with 4 clients on 2 keys).  ``only``: row ids, or docs/faults.md row
    numbers ("11" selects every row 11 variant), taken from the full list."""
    rows = [r for r in ROWS if r.quick or not quick]
    if only:
        rows = [r for r in ROWS if any(r.id == o or r.faults_row == o for o in only)]
    out = []
    for r in rows:
        sc = replace(r.scenario, seed=seed)
        if quick and sc.duration and _is_random(sc):
            sc = replace(sc, duration=5.0, clients=4, keys=2)
        out.append(replace(r, scenario=sc))
    return out


def _is_random(sc: Scenario) -> bool:
    from .scenarios import FAULTS

    return FAULTS[sc.fault].kind == "random"


@dataclass
class RowResult:
    row: Row
    result: Result
    tries: int
    ok: bool
    why: str = ""


def _requirements(row: Row, res: Result) -> List[str]:
    failed = []
    for k, want in row.require.items():
        if k == "leftover":
            got = len(res.report.leftover) if res.report is not None else None
        else:
            got = res.checks.get(k)
        if got != want:
            failed.append(f"{k}={got!r} (want {want!r})")
    return failed


def _skip_reason(row: Row) -> Optional[str]:
    if row.needs == "faketime" and shutil.which("faketime") is None:
        return "faketime not installed (apt-get install faketime)"
    return None


def run_matrix(rows: Sequence[Row], base_dir: Optional[str] = None, keep: bool = True,
               on_result: Optional[Callable[[RowResult], None]] = None, retries: int = 1) -> List[RowResult]:
    out = []
    for row in rows:
        reason = _skip_reason(row)
        if reason:
            res = Result(row.scenario, "SKIP", notes=[reason])
            rr = RowResult(row, res, 0, True, reason)
        else:
            tries = 0
            while True:
                tries += 1
                res = run_scenario(row.scenario, base_dir=base_dir, keep=True, name=row.id)
                missed = _requirements(row, res) if res.label == row.expected else []
                ok = res.label == row.expected and not missed
                # A schedule that missed its window: no violation, or the
                # overlap without the lost update it aims at.
                missed_window = row.expected in _VIOLATIONS and (
                    res.label == "SAFE" or (row.expected == "VIOL" and res.label == "ME"))
                retryable = not ok and tries <= retries and (res.label == "ERROR" or missed_window)
                if not retryable:
                    break
                time.sleep(0.5)
            why = "; ".join(missed) if missed else (res.error or "").splitlines()[0] if res.error else ""
            rr = RowResult(row, res, tries, ok, why)
            if ok and not keep and res.history:
                # Keep only what someone will want to read: the rows that differ.
                shutil.rmtree(os.path.dirname(res.history), ignore_errors=True)
                res.history = None
        out.append(rr)
        if on_result is not None:
            on_result(rr)
    return out


# -- row 30: fences under a constant clock offset (quorumlock.chaos.fence_offsets) --
from . import fence_offsets as _fence_offsets  # noqa: E402  (registers its faults)

ROWS += [
    Row("30-V+wo", "30", "node 0 60 s ahead, intersection node restarted, new holder writes first",
        _t("fence-offset-restart", fencing="write-only"), "SAFE", require={"A_refused": True}),
    Row("30-NC", "NC", "the same with the first-round fence commit (no clock check)",
        _t("fence-offset-restart-unchecked", fencing="write-only"), "VIOL", require={"A_refused": False}),
]

# --------------------------------------------------------------------------
# rows 22-29: faults inside the client process (quorumlock.chaos.client_faults)
# --------------------------------------------------------------------------

from .client_faults import register as _register_client_faults  # noqa: E402
from .scenarios import FAULTS as _FAULTS  # noqa: E402

_register_client_faults(_FAULTS)

ROWS += [
    Row("22", "22", "fork storm after connect (blocking)", _t("fork-storm"), "SAFE"),
    Row("23", "23", "KeyboardInterrupt storm in `with lock`; Ctrl-C in a wait", _t("signal-storm"), "SAFE"),
    Row("24", "24", "asyncio.timeout about one round trip", _t("cancel-storm"), "SAFE"),
    Row("25", "25", "failed extend(ttl=shorter), nodes paused", _t("short-extend"), "SAFE"),
    Row("26", "26", "one server listed twice, down at first connect", _t("duplicate-late"), "SAFE"),
    Row("27", "27", "majority refusing connections, blocking load", _t("majority-refused"), "SAFE"),
    Row("28", "28", "one node SIGSTOPped, asyncio load", _t("stopped-node"), "SAFE"),
    Row("29", "29", "two nodes stream a huge reply", _t("oversized-reply"), "SAFE"),
]
