"""The safety checker against hand-made histories.

A checker that never fails proves nothing (docs/faults.md): every negative
control of docs/faults.md is written here as the history it produces, and the
checker must flag it, naming the offending operations; a valid history of
the same shape must come out clean.  No servers: the checker is a pure
function of the events."""

from __future__ import annotations

import copy
import json
import random

import pytest

from quorumlock.chaos import checker
from quorumlock.chaos.checker import check, classify
from quorumlock.chaos.history import merge, read_history

MS = 1_000_000  # ns


class H:
    """A tiny history builder: times in ms, one client per name."""

    def __init__(self):
        self.events = []
        self.seq = {}
        self.final = {"counters": {}, "locks": []}

    def _id(self, client):
        self.seq[client] = self.seq.get(client, 0) + 1
        return f"{client}:{self.seq[client]}"

    def op(self, client, op, key, t, dur=0.2, **kw):
        ev = {"type": "op", "id": self._id(client), "client": client, "op": op, "key": key,
              "invoke": int(t * MS), "complete": int((t + dur) * MS)}
        ev.update(kw)
        self.events.append(ev)
        return ev

    def acquire(self, client, key, t, validity_ms=980, fence=None, ok=True, token=None, dur=0.3):
        ev = self.op(client, "acquire", key, t, dur=dur, ok=ok, fence=fence,
                     token=token or f"{client}{t:.0f}".encode().hex())
        if ok:
            ev["validity"] = validity_ms / 1000
            ev["valid_until"] = ev["complete"] + validity_ms * MS
        return ev

    def read(self, client, lock, t, value, fence=None, fenced=False, status="ok"):
        return self.op(client, "read", lock["key"], t, lock=lock["id"], skey="ctr:" + lock["key"],
                       fence=fence if fence is not None else lock.get("fence"), fenced=fenced, status=status,
                       value=value if status == "ok" else None, ok=status == "ok")

    def check(self, client, lock, t, ok=True):
        return self.op(client, "check", lock["key"], t, dur=0.0, lock=lock["id"], ok=ok)

    def write(self, client, lock, t, value, status="ok", kind="plain", fence=None, dur=0.2):
        return self.op(client, "write", lock["key"], t, dur=dur, lock=lock["id"], skey="ctr:" + lock["key"],
                       fence=fence if fence is not None else lock.get("fence"), kind=kind, value=value,
                       expected=value - 1, status=status, ok=status == "ok")

    def release(self, client, lock, t, ok=True):
        return self.op(client, "release", lock["key"], t, lock=lock["id"], token=lock["token"], ok=ok)

    def extend(self, client, lock, t, ok=True, validity_ms=980):
        ev = self.op(client, "extend", lock["key"], t, lock=lock["id"], token=lock["token"], ok=ok)
        if ok:
            ev["validity"] = validity_ms / 1000
            ev["valid_until"] = ev["complete"] + validity_ms * MS
        return ev

    def fault(self, t, name, target=""):
        self.events.append({"type": "fault", "t": int(t * MS), "name": name, "target": target})

    def rmw(self, client, lock, t, value, **kw):
        """read value-1, check, write value, release: 1 ms apart from t."""
        self.read(client, lock, t, value - 1, fenced=kw.get("fenced", False))
        self.check(client, lock, t + 1)
        self.write(client, lock, t + 2, value, kind=kw.get("kind", "plain"), status=kw.get("status", "ok"))
        self.release(client, lock, t + 3)

    def history(self, counters=None):
        fin = dict(self.final)
        if counters is not None:
            fin["counters"] = counters
        return [{"type": "meta", "t_start": 0}] + list(self.events) + [dict(fin, type="final")]


# --------------------------------------------------------------------------
# a valid history
# --------------------------------------------------------------------------


def _valid_history(n=20, fenced=True):
    h = H()
    t = 10.0
    fence = 1000
    for i in range(n):
        client = "ABC"[i % 3]
        fence += random.Random(i).randint(1, 5)
        lk = h.acquire(client, "k", t, fence=fence if fenced else None)
        h.rmw(client, lk, t + 1, i + 1, fenced=fenced, kind="cas" if fenced else "plain")
        # failed attempts by another client while the lock is held
        h.acquire("D", "k", t + 1.5, ok=False)
        t += 6
    return h.history({"ctr:k": n})


def test_valid_history_is_safe():
    rep = check(_valid_history())
    assert rep.safe
    assert classify(rep) == "SAFE"
    assert rep.overlaps == rep.lost_updates == rep.fence_regressions == rep.stale_accepted == []
    assert rep.stats["acquired"] == 20 and rep.stats["writes_accepted"] == 20
    assert len(rep.intervals) == 20


def test_valid_history_in_any_order_and_untouched():
    events = _valid_history()
    shuffled = copy.deepcopy(events)
    random.Random(7).shuffle(shuffled)
    before = copy.deepcopy(shuffled)
    rep = check(shuffled)
    assert rep.safe
    assert shuffled == before  # a pure function: the input is not modified


def test_back_to_back_holders_do_not_overlap():
    """B acquires right after A invoked its release (the release reached a
    majority first): [A acquire, A release invoked] and B's interval touch,
    but do not overlap."""
    h = H()
    a = h.acquire("A", "k", 0, fence=1)
    h.rmw("A", a, 1, 1)  # release invoked at t=4
    b = h.acquire("B", "k", 3.9, dur=0.1, fence=2)  # completes at 4.0
    h.rmw("B", b, 5, 2)
    assert check(h.history({"ctr:k": 2})).safe


# --------------------------------------------------------------------------
# the negative controls of docs/faults.md
# --------------------------------------------------------------------------


def test_row1_unsafe_restart_two_holders_and_a_lost_update():
    """Row 1 in unsafe mode: A holds k on a bare majority, the node restarts
    empty, B gets k while A's lease runs; both read 0 and write 1."""
    h = H()
    a = h.acquire("A", "k", 0)
    h.read("A", a, 1, 0)
    h.check("A", a, 2)
    h.fault(3, "node-crash", "node 0")
    h.fault(40, "node-up", "node 0")
    b = h.acquire("B", "k", 45)  # while A's lease (until ~980 ms) runs
    h.rmw("B", b, 46, 1)
    h.write("A", a, 60, 1)
    h.release("A", a, 61, ok=False)
    rep = check(h.history({"ctr:k": 1}))
    assert classify(rep) == "VIOL"
    ov = rep.overlaps[0]
    assert {ov["first"]["lock"], ov["second"]["lock"]} == {a["id"], b["id"]}
    lu = rep.lost_updates[0]
    assert lu["accepted"] == 2 and lu["final"] == 1 and lu["lost"] == 1
    assert {w["id"] for w in lu["same_value_writes"][0]} == {"A:4", "B:4"}


def test_row11_client_pause_without_fencing():
    """Kleppmann's GC pause: A checks its lease, pauses past it, writes.
    A's interval stretches to the write it issued as the holder."""
    h = H()
    a = h.acquire("A", "k", 0)
    h.read("A", a, 1, 0)
    h.check("A", a, 2)
    h.fault(3, "client-pause", "client A")
    b = h.acquire("B", "k", 1001)  # after A's lease ended on the nodes
    h.rmw("B", b, 1002, 1)
    h.fault(1010, "client-resume", "client A")
    h.write("A", a, 1011, 1)
    rep = check(h.history({"ctr:k": 1}))
    assert classify(rep) == "VIOL"
    assert rep.overlaps and rep.lost_updates


def test_row11_with_fencing_is_me_only():
    """The same schedule with a fenced CAS: A's stale write is rejected."""
    h = H()
    a = h.acquire("A", "k", 0, fence=100)
    h.read("A", a, 1, 0, fenced=True)
    h.check("A", a, 2)
    b = h.acquire("B", "k", 1001, fence=200)
    h.rmw("B", b, 1002, 1, fenced=True, kind="cas")
    h.write("A", a, 1011, 1, status="stale", kind="cas")
    rep = check(h.history({"ctr:k": 1}))
    assert classify(rep) == "ME-only"
    assert rep.overlaps and not rep.lost_updates and not rep.stale_accepted
    assert [r["id"] for r in rep.stale_rejected] == ["A:4"]


def test_release_with_plain_del_lets_a_third_client_in():
    """A's lease expired, B holds k, A 'releases' with DEL (it succeeds: it
    deleted B's key), C acquires while B holds."""
    h = H()
    a = h.acquire("A", "k", 0)
    b = h.acquire("B", "k", 1001)
    h.read("B", b, 1002, 0)
    h.check("B", b, 1003)
    h.release("A", a, 1010, ok=True)
    c = h.acquire("C", "k", 1012)
    h.rmw("C", c, 1013, 1)
    h.write("B", b, 1020, 1)
    h.release("B", b, 1021, ok=False)
    rep = check(h.history({"ctr:k": 1}))
    assert classify(rep) == "VIOL"
    ov = rep.overlaps[0]
    assert {ov["first"]["client"], ov["second"]["client"]} == {"B", "C"}


@pytest.mark.parametrize("how", ["pexpire", "set-xx"])
def test_extend_after_expiry_with_plain_command(how):
    """A extends with plain PEXPIRE / SET XX after B took the lock: the
    extend 'succeeds' and A believes again."""
    h = H()
    a = h.acquire("A", "k", 0)
    h.read("A", a, 1, 0)
    b = h.acquire("B", "k", 1001)
    h.read("B", b, 1002, 0)
    h.extend("A", a, 1005, ok=True)
    h.check("A", a, 1006)
    h.write("A", a, 1007, 1)
    h.write("B", b, 1010, 1)
    rep = check(h.history({"ctr:k": 1}))
    assert classify(rep) == "VIOL"


def test_extend_refused_after_expiry_is_safe():
    h = H()
    a = h.acquire("A", "k", 0)
    h.read("A", a, 1, 0)
    b = h.acquire("B", "k", 1001)
    h.read("B", b, 1002, 0)
    h.extend("A", a, 1005, ok=False)
    h.check("A", a, 1006, ok=False)  # A sees it lost the lease and does not write
    h.write("B", b, 1010, 1)
    h.release("B", b, 1011)
    assert classify(check(h.history({"ctr:k": 1}))) == "SAFE"


def test_set_without_nx_two_holders():
    h = H()
    a = h.acquire("A", "k", 0)
    h.read("A", a, 1, 0)
    b = h.acquire("B", "k", 5)  # SET without NX took a held key
    h.rmw("B", b, 6, 1)
    h.write("A", a, 12, 1)
    assert classify(check(h.history({"ctr:k": 1}))) == "VIOL"


def test_drift_factor_zero_overlap_of_a_few_ms():
    """A node clock 1 % fast and drift_factor=0: the key on A's quorum
    expires ~18 ms before A's lease; B gets in for those last ms."""
    h = H()
    a = h.acquire("A", "k", 0, validity_ms=1998)
    h.read("A", a, 1, 0)
    b = h.acquire("B", "k", 1981)
    h.rmw("B", b, 1982, 1)
    h.check("A", a, 1994)
    h.write("A", a, 1994.5, 1)
    rep = check(h.history({"ctr:k": 1}))
    assert classify(rep) == "VIOL"
    assert 1 < rep.overlaps[0]["overlap_ms"] < 20


def test_write_only_fencing_loses_an_update_without_a_stale_write():
    """Write-only fencing in a read-modify-write: A (fence 5) and B (fence 6)
    both read 0 unfenced; A writes 1 (accepted: 5 is the highest so far),
    then B writes 1 (accepted: 6 > 5).  No stale write was accepted, yet an
    update is lost: only the lost-update check catches it."""
    h = H()
    a = h.acquire("A", "k", 0, fence=5)
    h.read("A", a, 1, 0)
    b = h.acquire("B", "k", 1001, fence=6)
    h.read("B", b, 1002, 0)
    h.write("A", a, 1010, 1, kind="write")
    h.write("B", b, 1012, 1, kind="write")
    rep = check(h.history({"ctr:k": 1}))
    assert classify(rep) == "VIOL"
    assert rep.stale_accepted == []
    assert rep.lost_updates[0]["lost"] == 1


def test_duplicate_node_counted_twice():
    """A client that lists node 0 twice holds k on {0, 0'} while B holds it on {1, 2}."""
    h = H()
    b = h.acquire("B", "k", 0)
    h.read("B", b, 1, 0)
    a = h.acquire("A", "k", 3)
    h.rmw("A", a, 4, 1)
    h.write("B", b, 10, 1)
    assert classify(check(h.history({"ctr:k": 1}))) == "VIOL"


def test_row12_client_that_took_t1_early():
    """The client measured its attempt before reading the replies: it
    believes a lease the nodes already expired and B holds."""
    h = H()
    b = h.acquire("B", "k", 1160)
    h.read("B", b, 1161, 0)
    a = h.acquire("A", "k", 0, dur=1190)  # invoked at 0, completed after the pause at 1190
    a["valid_until"] = a["complete"] + 980 * MS  # the bug: validity counted from now
    h.rmw("A", a, 1191, 1)
    h.write("B", b, 1200, 1)
    assert classify(check(h.history({"ctr:k": 1}))) == "VIOL"


# --------------------------------------------------------------------------
# the other properties
# --------------------------------------------------------------------------


def test_lost_update_from_the_final_count_alone():
    """Distinct values written, but the final counter is below the number of
    accepted increments (e.g. a write that went backwards)."""
    h = H()
    for i, t in enumerate((0, 10, 20)):
        lk = h.acquire("A", "k", t)
        h.rmw("A", lk, t + 1, i + 1)
    rep = check(h.history({"ctr:k": 2}))
    assert classify(rep) == "LOST"
    assert rep.lost_updates[0]["lost"] == 1 and rep.lost_updates[0]["same_value_writes"] == []


def test_unknown_writes_do_not_count_as_accepted():
    h = H()
    lk = h.acquire("A", "k", 0)
    h.read("A", lk, 1, 0)
    h.write("A", lk, 2, 1, status="unknown")
    h.release("A", lk, 3)
    assert check(h.history({"ctr:k": 0})).safe
    assert check(h.history({"ctr:k": 1})).safe


def test_fence_regression():
    h = H()
    a = h.acquire("A", "k", 0, fence=500)
    h.release("A", a, 5)
    b = h.acquire("B", "k", 10, fence=400)  # after A completed, smaller fence
    h.release("B", b, 15)
    c = h.acquire("C", "k", 20, fence=500)  # equal is a regression too
    h.release("C", c, 25)
    rep = check(h.history())
    assert classify(rep) == "REGRESS"
    assert [(r["earlier"]["id"], r["later"]["id"]) for r in rep.fence_regressions] == [("A:1", "B:1"), ("A:1", "C:1")]


def test_concurrent_acquisitions_are_not_ordered():
    """Acquisitions that overlap in real time have no order to keep (only
    the overlap itself is reported)."""
    h = H()
    h.acquire("A", "k", 0, fence=500, dur=5)
    h.acquire("B", "k", 1, fence=400, dur=5, ok=False)
    assert check(h.history()).fence_regressions == []


def test_stale_write_accepted_by_unfenced_storage():
    h = H()
    a = h.acquire("A", "k", 0, fence=100)
    h.read("A", a, 1, 0)
    b = h.acquire("B", "k", 1001, fence=200)
    h.rmw("B", b, 1002, 1)
    h.write("A", a, 1010, 2)  # plain storage accepts the older fence
    rep = check(h.history({"ctr:k": 2}))
    assert [s["write"]["id"] for s in rep.stale_accepted] == ["A:3"]
    assert rep.stale_accepted[0]["newer"]["id"] == "B:4"  # B's write


def test_a_fenced_read_raises_the_bar():
    h = H()
    a = h.acquire("A", "k", 0, fence=100)
    b = h.acquire("B", "k", 1001, fence=200)
    h.read("B", b, 1002, 0, fenced=True)
    h.read("A", a, 1, 0)
    h.write("A", a, 1010, 1, kind="write")  # accepted after B's fenced read: stale
    rep = check(h.history({"ctr:k": 1}))
    assert [s["write"]["id"] for s in rep.stale_accepted] == ["A:3"]


def test_leftover_keys_are_attributed_and_immortal_ones_flagged():
    h = H()
    a = h.acquire("A", "k", 0, token="aa")
    h.release("A", a, 5)
    h.acquire("B", "k", 6, ok=False, token="bb")
    h.acquire("C", "k", 7, token="cc")
    h.final["locks"] = [
        {"node": 0, "key": "k", "token": "aa", "pttl": 500},
        {"node": 1, "key": "k", "token": "bb", "pttl": 600},
        {"node": 2, "key": "k", "token": "cc", "pttl": -1},
        {"node": 2, "key": "j", "token": "dd", "pttl": 10},
    ]
    rep = check(h.history())
    why = {lo["token"]: lo["why"] for lo in rep.leftover}
    assert why["aa"].startswith("released")
    assert why["bb"].startswith("failed attempt")
    assert why["cc"].startswith("never released")
    assert why["dd"] == "foreign"
    assert [i["token"] for i in rep.immortal] == ["cc"]
    assert not rep.safe


def test_incomplete_operations():
    """A client stopped mid-operation leaves ops without ``complete``."""
    h = H()
    a = h.acquire("A", "k", 0)
    w = h.write("A", a, 1, 1)
    w["complete"] = None
    ev = h.op("A", "acquire", "k", 5, ok=False)
    ev["complete"] = None
    rep = check(h.history({"ctr:k": 1}))
    assert rep.safe


def test_labels():
    rep = checker.Report()
    assert classify(rep) == "SAFE"
    rep.overlaps = [{}]
    assert classify(rep) == "ME"
    rep.stale_rejected = [{}]
    assert classify(rep) == "ME-only"
    rep.lost_updates = [{"lost": 1}]
    assert classify(rep) == "VIOL"


def test_jsonl_round_trip(tmp_path):
    events = _valid_history(5)
    meta = events[0]
    final = events[-1]
    part = tmp_path / "c.jsonl"
    part.write_text("".join(json.dumps(e) + "\n" for e in events[1:-1]) + '{"type": "op", "torn')
    out = tmp_path / "h.jsonl"
    merged = merge(str(out), meta, [str(part)], final={k: v for k, v in final.items() if k != "type"})
    back = read_history(str(out))
    assert back == merged
    assert back[0]["type"] == "meta" and back[-1]["type"] == "final"
    assert check(back).safe


# --------------------------------------------------------------------------
# one analysis per property: each finds its violation, and only it does
# --------------------------------------------------------------------------


def _two_holders():
    h = H()
    h.acquire("A", "k", 0)
    h.acquire("B", "k", 100)  # while A's lease (to ~980 ms) runs
    return h.history()


def _fence_regression():
    h = H()
    a = h.acquire("A", "k", 0, fence=500)
    h.release("A", a, 5)
    b = h.acquire("B", "k", 10, fence=400)
    h.release("B", b, 15)
    return h.history()


def _stale_write_accepted():
    h = H()
    a = h.acquire("A", "k", 0, fence=100)
    b = h.acquire("B", "k", 1001, fence=200)
    h.rmw("B", b, 1002, 1)
    h.write("A", a, 1010, 2)
    return h.history({"ctr:k": 2})


def _count_lost():
    h = H()
    a = h.acquire("A", "k", 0)
    h.rmw("A", a, 1, 1)
    b = h.acquire("B", "k", 10)
    h.rmw("B", b, 11, 2)
    return h.history({"ctr:k": 1})


def _immortal_key():
    h = H()
    h.acquire("A", "k", 0, token="aa")
    h.final["locks"] = [{"node": 0, "key": "k", "token": "aa", "pttl": -1}]
    return h.history()


def _double_count():
    h = H()
    ev = h.acquire("A", "k", 0)
    ev.update(servers=1, quorum=2)
    return h.history()


# (analysis in checker, its "nothing found" value, history, Report field it fills)
ANALYSES = [
    ("holder_intervals", [], _two_holders, "overlaps"),
    ("find_overlaps", [], _two_holders, "overlaps"),
    ("find_fence_regressions", [], _fence_regression, "fence_regressions"),
    ("find_stale_writes", ([], []), _stale_write_accepted, "stale_accepted"),
    ("find_lost_updates", ([], 0), _count_lost, "lost_updates"),
    ("find_leftover_keys", ([], []), _immortal_key, "immortal"),
    ("check_client", [], _double_count, "client"),
]


@pytest.mark.parametrize("name,empty,make,field", ANALYSES, ids=[a[0] for a in ANALYSES])
def test_each_analysis_flags_its_violation(name, empty, make, field):
    rep = check(make())
    assert getattr(rep, field), (name, rep.to_dict())
    assert not rep.safe and classify(rep) != "SAFE"


@pytest.mark.parametrize("name,empty,make,field", ANALYSES, ids=[a[0] for a in ANALYSES])
def test_the_violation_is_found_by_that_analysis(monkeypatch, name, empty, make, field):
    """With the analysis replaced by one that finds nothing, its violation goes
    unseen: the test above depends on that analysis and no other."""
    monkeypatch.setattr(checker, name, lambda *a, **k: copy.deepcopy(empty))
    rep = check(make())
    assert not getattr(rep, field)


def test_analyses_can_be_called_on_their_own():
    acquires, by_lock = checker._index_acquires([e for e in _two_holders() if e.get("type") == "op"])
    ivs = checker.holder_intervals(acquires, by_lock)
    assert [iv.client for iv in ivs] == ["A", "B"]
    (ov,) = checker.find_overlaps(ivs, acquires)
    assert ov["key"] == "k" and ov["first"]["client"] == "A" and ov["second"]["client"] == "B"
    assert checker.find_fence_regressions(acquires) == []
