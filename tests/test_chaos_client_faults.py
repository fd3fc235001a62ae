"""Rows 22-29 (faults inside the client process): the checker's new findings
against hand-made histories, and the scenarios against real servers.

The checker part needs no server: :func:`quorumlock.chaos.checker.check_client`
is a pure function, fed here histories that break each bound and histories
of the same shape that do not.  The scenario part runs ``quorumlock chaos``
rows 22-29 (both engine builds in each run) and expects SAFE; on the
first-round engine each one showed its violation (figures in each test's
docstring and in docs/safety.md); with the fixes of the second round they
are SAFE."""

from __future__ import annotations

import pytest

from quorumlock.chaos import checker
from quorumlock.chaos.checker import check, check_client, classify
from quorumlock.chaos.history import merge, read_history

MS = 1_000_000
MIB = 1 << 20


def _op(id_, op, key, t_ms, dur_ms=0.5, **kw):
    ev = {"type": "op", "id": id_, "client": id_.split(":")[0], "op": op, "key": key,
          "invoke": int(t_ms * MS), "complete": None if dur_ms is None else int((t_ms + dur_ms) * MS)}
    ev.update(kw)
    return ev


def _acq(id_, key, t_ms, validity_ms, **kw):
    ev = _op(id_, "acquire", key, t_ms, ok=True, token=id_.encode().hex(), validity=validity_ms / 1e3, **kw)
    ev["valid_until"] = ev["complete"] + int(validity_ms * MS)
    return ev


def _final(locks=()):
    return {"type": "final", "t": 10_000 * MS, "counters": {}, "locks": list(locks)}


# --------------------------------------------------------------------------
# the checker
# --------------------------------------------------------------------------


def test_double_count_is_flagged_and_a_real_majority_is_not():
    """Row 26: an extend that succeeded with one real server holding the
    token, of a quorum of 2 (a server listed twice voted twice)."""
    a = _acq("A:1", "d", 0, 1900, servers=2, quorum=2)
    bad = _op("A:2", "extend", "d", 100, ok=True, lock="A:1", servers=1, quorum=2, valid_until=2000 * MS)
    rep = check([a, bad, _final()])
    assert classify(rep) == "DUP" and not rep.safe
    assert [f["op"]["id"] for f in rep.client] == ["A:2"]
    assert "1 real server" in rep.client[0]["what"]
    good = dict(bad, servers=2)
    assert classify(check([a, good, _final()])) == "SAFE"
    refused = dict(bad, ok=False)  # a refused extend counted nothing
    assert classify(check([a, refused, _final()])) == "SAFE"


def test_leftover_under_a_no_leftover_bound_is_a_violation_elsewhere_liveness():
    """Rows 23/24: keys left after every lock was released or interrupted.
    Without the bound a leftover key with an expiry stays a liveness cost."""
    bound = {"type": "bound", "t": 0, "name": "no-leftover", "prefix": "sig:", "client": "signals"}
    left = [{"node": 0, "key": "sig:7", "token": "ab", "pttl": 29000},
            {"node": 1, "key": "sig:7", "token": "ab", "pttl": 29000},
            {"node": 0, "key": "other", "token": "cd", "pttl": 500}]
    rep = check([bound, _final(left)])
    assert classify(rep) == "LEAK"
    (f,) = rep.client
    assert f["keys"] == 1 and f["entries"] == 2 and "sig:*" in f["what"]
    assert classify(check([bound, _final(left[2:])])) == "SAFE"  # other prefix
    rep = check([_final(left)])  # no bound: the old rule
    assert classify(rep) == "SAFE" and len(rep.leftover) == 3


def test_stall_expect_ok_failed_or_never_completed():
    """Row 22: a free-key acquire that cannot fail, failing (a worker one
    reply behind), or a child that never ended."""
    ok = _op("c:1", "acquire", "free1", 0, ok=True, expect_ok=True)
    failed = _op("c:2", "acquire", "free2", 1, ok=False, expect_ok=True)
    hung = _op("c:3", "join", "child0", 2, dur_ms=None, ok=False, expect_ok=True)
    assert classify(check([ok, _final()])) == "SAFE"
    rep = check([ok, failed, hung, _final()])
    assert classify(rep) == "STALL"
    assert [f["op"]["id"] for f in rep.client] == ["c:2", "c:3"]
    assert "never completed" in rep.client[1]["what"]
    # A failed op without expect_ok is contention, not a stall.
    assert classify(check([dict(failed, expect_ok=None), _final()])) == "SAFE"


def test_late_op_over_its_bound():
    """Row 23 (Ctrl-C during a blocking wait) and 29 (deadline while reading)."""
    late = _op("s:1", "interrupt", "w", 0, dur_ms=1800, ok=True, bound_ms=250)
    rep = check([late, _final()])
    assert classify(rep) == "LATE" and rep.client[0]["took_ms"] == 1800
    assert classify(check([dict(late, complete=100 * MS), _final()])) == "SAFE"
    assert classify(check([dict(late, complete=None), _final()])) == "LATE"


def test_rss_growth_over_its_bound():
    """Rows 27-29: the client's memory grows with the run instead of a configured bound."""
    bound = {"type": "bound", "t": 0, "name": "rss-growth", "client": "r", "limit": 16 * MIB}

    def samples(a, b):
        return [{"type": "sample", "t": 1, "name": "rss", "client": "r", "value": a, "phase": "start"},
                {"type": "sample", "t": 2, "name": "rss", "client": "r", "value": b, "phase": "peak"}]

    rep = check([bound, *samples(40 * MIB, 97 * MIB), _final()])
    assert classify(rep) == "MEM" and rep.client[0]["growth"] == 57 * MIB
    assert classify(check([bound, *samples(40 * MIB, 50 * MIB), _final()])) == "SAFE"
    # Another client's samples do not count against this bound.
    other = [dict(s, client="x") for s in samples(40 * MIB, 400 * MIB)]
    assert classify(check([bound, *other, _final()])) == "SAFE"


def _short_extend_history(after_ms):
    """A holds x for 3 s; its extend(ttl=0.3) fails at 100 ms and records the
    deadline A believes in afterwards (``after_ms`` from the extend's end);
    B gets x at 900 ms (the nodes dropped it after the short PEXPIRE)."""
    a = _acq("A:1", "x", 0, 3000)
    ext = _op("A:2", "extend", "x", 100, dur_ms=150, ok=False, lock="A:1", error="LockNotOwned")
    ext["valid_until"] = ext["complete"] + int(after_ms * MS)
    b = _acq("B:1", "x", 900, 990)
    rel = _op("B:2", "release", "x", 1000, ok=True, lock="B:1")
    return [a, ext, b, rel, _final()]


def test_failed_short_extend_keeps_the_old_deadline_two_holders():
    """Row 25: the first-round Lock kept its 3 s deadline after the failed
    extend (it believed 2.75 s more), so A's belief overlaps B's hold."""
    rep = check(_short_extend_history(2750))
    assert classify(rep) == "ME"
    (ov,) = rep.overlaps
    assert {ov["first"]["lock"], ov["second"]["lock"]} == {"A:1", "B:1"}


def test_failed_short_extend_that_shortened_the_belief_is_safe():
    """The fix: after the failure the Lock believes at most the short TTL
    (here 0.2 s from the end of the extend), which ends before B's grant."""
    assert classify(check(_short_extend_history(200))) == "SAFE"
    # An act as the holder after the belief ended still counts (A checked
    # lock.valid and it said yes at 950 ms: two holders).
    evs = _short_extend_history(200)
    evs.insert(4, _op("A:3", "check", "x", 950, ok=True, lock="A:1"))
    assert classify(check(evs)) == "ME"
    # A later successful extend moves the belief on again, as before.
    evs = _short_extend_history(200)
    evs.insert(2, _op("A:3", "extend", "x", 300, ok=True, lock="A:1", valid_until=3000 * MS))
    assert classify(check(evs)) == "ME"


def test_overlap_label_wins_and_findings_survive_a_round_trip(tmp_path):
    """Findings are JSON: merged into a history file and read back, the
    checker says the same; an overlap outranks a client finding."""
    evs = _short_extend_history(2750)
    extra = [{"type": "bound", "t": 0, "name": "no-leftover", "prefix": "x"}]
    final = {"t": 5000 * MS, "counters": {}, "locks": [{"node": 0, "key": "x", "token": "aa", "pttl": 100}]}
    path = tmp_path / "h.jsonl"
    merge(str(path), {"scenario": {}}, [], extra=evs[:-1] + extra, final=final)
    rep = check(read_history(str(path)))
    assert classify(rep) == "ME" and rep.client and rep.client[0]["kind"] == "leftover"
    assert checker.client_label(rep.client) == "LEAK"
    assert rep.to_dict()["client"] == rep.client and rep.summary()["client"] == 1


def test_check_client_is_pure_and_empty_on_old_histories():
    """Histories without the new fields or events: no client findings."""
    evs = [_acq("A:1", "k", 0, 900), _op("A:2", "release", "k", 10, ok=True, lock="A:1"),
           _final([{"node": 0, "key": "k", "token": "zz", "pttl": 300}])]
    assert check_client(evs) == [] and check_client(evs) == []


# --------------------------------------------------------------------------
# the scenarios (real servers, both engine builds per run)
# --------------------------------------------------------------------------

def _run(fault, tmp_path):
    from quorumlock.chaos import matrix  # noqa: F401  (registers rows 22-29)
    from quorumlock.chaos.scenarios import Scenario, run_scenario

    res = run_scenario(Scenario(fault=fault), base_dir=str(tmp_path), keep=True)
    assert res.label != "ERROR", f"{res.error}\n{res.notes}"
    return res


def _assert_safe(res):
    found = [f["what"] for f in res.report.client] if res.report else []
    assert res.label == "SAFE", f"{res.label}: overlaps {len(res.report.overlaps)}; {found[:3]}; notes {res.notes}"


def test_row24_cancel_storm_leaves_no_key(tmp_path):
    """Row 24: 600 asyncio acquires per build under asyncio.timeout around
    one round trip.  First-round code: 410 cancelled, 382/600 keys left
    (compiled); 383 cancelled, 323/600 keys left (pure Python)."""
    _assert_safe(_run("cancel-storm", tmp_path))


def test_row25_failed_short_extend_shortens_the_lease(tmp_path):
    """Row 25: first-round code, both builds: LockNotOwned, but validity
    still 2.8 s after the failed extend, lock.valid True after B acquired:
    two holders (ME)."""
    _assert_safe(_run("short-extend", tmp_path))


def test_row26_duplicate_server_coming_up_late_is_not_counted_twice(tmp_path):
    """Row 26: first-round code, both builds: the extend with node 1
    paused succeeded on the two spellings of node 0 (one real server, DUP)."""
    _assert_safe(_run("duplicate-late", tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("fault", [
    "fork-storm",
    # no-leftover checked on the compiled build (the pure-Python twin leaves
    # 2-4/300 keys: its __exit__ can be interrupted at its first line)
    "signal-storm",
    "majority-refused",
    "stopped-node",
    "oversized-reply",
])
def test_rows_22_23_27_28_29(fault, tmp_path):
    """Rows 22, 23, 27, 28, 29 (first-round figures in docs/safety.md):
    fork storm ME + STALL, signal storm LEAK + LATE, refused majority MEM,
    stopped node MEM, oversized reply MEM."""
    _assert_safe(_run(fault, tmp_path))
