"""The safety checker: a pure function from a recorded history to a report.

No I/O, no clock, no randomness: :func:`check` reads the events (the JSONL
schema of docs/safety.md, already parsed) and says what went wrong, naming the
operations that show it.  It checks:

* **overlapping holders** per lock key.  A holder's interval is
  ``[acquire completed, end]`` on the host monotonic clock, where ``end`` is
  the validity end the client believed in (``valid_until``, moved on by every
  successful ``extend``), stretched to cover every act the client did as the
  holder (a ``check`` that said valid, a storage read or write: until it
  completed, since that is when the storage applied it), and cut at the
  moment it invoked ``release``.  Two intervals of different acquisitions of
  the same key that intersect are a mutual-exclusion violation.
* **lost updates** on the protected counters: the final value against the
  number of accepted increments, and the accepted writes that wrote the same
  value (each such pair read the same count: one increment is lost).
* **fence regressions** per lock key: an acquisition that began after another
  one had completed must have a strictly larger fence.
* **stale writes accepted**: a write accepted with a fence lower than one the
  storage had already accepted (a write, or a fenced read) before it began.
  Stale writes *rejected* are counted too: they are the evidence that fencing
  turned an overlap into no harm ("ME-only" in docs/faults.md).
* **leftover lock keys** at the end of the run, attributed to the attempt that
  set them; a lock key without an expiry is a violation (it never frees).
* **the client process** (:func:`check_client`, rows 22-29 of docs/safety.md):
  one server counted twice, keys left under a ``no-leftover`` bound, stalls,
  ops slower than their bound, RSS growth over its bound.

:func:`classify` turns a report into the labels of the fault matrix.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

__all__ = ["Report", "check", "classify", "LABELS", "check_capacity", "check_rw", "peak_holders",
           "check_client", "CLIENT_LABELS"]

#: Observed labels, in the vocabulary of docs/faults.md.
LABELS = ("SAFE", "VIOL", "ME-only", "ME", "LOST", "STALE", "REGRESS", "REJECTED", "ERROR", "SKIP",
          "DUP", "LEAK", "STALL", "LATE", "MEM")

# Ops that show the client acting as the holder.
_STORAGE_OPS = ("read", "write")


def _brief(op: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The fields of an op worth printing in a report."""
    if op is None:
        return None
    keep = ("id", "client", "op", "key", "skey", "invoke", "complete", "ok", "status", "fence",
            "value", "expected", "kind", "valid_until", "nodes", "lock", "error")
    return {k: op[k] for k in keep if k in op and op[k] is not None}


@dataclass
class Interval:
    """What one holder believed: ``[start, end]`` in host ns, for acquisition ``lock``."""

    key: str
    lock: str
    client: str
    start: int
    end: int
    fence: Optional[int]
    acts: int = 0  # how many holder acts stretched it

    def to_dict(self) -> Dict[str, Any]:
        return {"key": self.key, "lock": self.lock, "client": self.client, "start": self.start,
                "end": self.end, "fence": self.fence}


@dataclass
class Report:
    """What :func:`check` found.  Each list holds dicts that name the ops."""

    overlaps: List[Dict[str, Any]] = field(default_factory=list)
    lost_updates: List[Dict[str, Any]] = field(default_factory=list)
    fence_regressions: List[Dict[str, Any]] = field(default_factory=list)
    stale_accepted: List[Dict[str, Any]] = field(default_factory=list)
    stale_rejected: List[Dict[str, Any]] = field(default_factory=list)
    leftover: List[Dict[str, Any]] = field(default_factory=list)
    immortal: List[Dict[str, Any]] = field(default_factory=list)
    client: List[Dict[str, Any]] = field(default_factory=list)  # check_client: rows 22-29
    stats: Dict[str, Any] = field(default_factory=dict)
    intervals: List[Interval] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        """No safety property broken (leftover keys with an expiry are liveness only)."""
        return not (self.overlaps or self.lost_updates or self.fence_regressions
                    or self.stale_accepted or self.immortal or self.client)

    def to_dict(self, intervals: bool = False) -> Dict[str, Any]:
        d = {
            "safe": self.safe,
            "label": classify(self),
            "overlaps": self.overlaps,
            "lost_updates": self.lost_updates,
            "fence_regressions": self.fence_regressions,
            "stale_accepted": self.stale_accepted,
            "stale_rejected": self.stale_rejected,
            "leftover": self.leftover,
            "immortal": self.immortal,
            "client": self.client,
            "stats": self.stats,
        }
        if intervals:
            d["intervals"] = [iv.to_dict() for iv in self.intervals]
        return d

    def summary(self) -> Dict[str, int]:
        return {
            "overlaps": len(self.overlaps),
            "lost": sum(int(x.get("lost") or 0) for x in self.lost_updates),
            "regressions": len(self.fence_regressions),
            "stale_accepted": len(self.stale_accepted),
            "stale_rejected": len(self.stale_rejected),
            "leftover": len(self.leftover),
            "immortal": len(self.immortal),
            "client": len(self.client),
        }


def classify(report: Report) -> str:
    """One label for the fault matrix.

    ``VIOL``: overlapping holders and a lost update.  ``ME-only``: overlapping
    holders, no lost update, and at least one stale write rejected by the
    fenced storage.  ``ME``: overlapping holders with no effect seen on the
    data.  ``LOST``: a lost update without overlapping holders.  ``STALE``: a
    stale write accepted.  ``REGRESS``: a fence regression (and nothing worse).
    ``SAFE``: nothing found."""
    ov, lost = bool(report.overlaps), bool(report.lost_updates)
    if ov and lost:
        return "VIOL"
    if ov:
        return "ME-only" if report.stale_rejected else "ME"
    if lost:
        return "LOST"
    if report.stale_accepted or report.immortal:
        return "STALE" if report.stale_accepted else "VIOL"
    if report.fence_regressions:
        return "REGRESS"
    if report.client:
        return client_label(report.client)
    return "SAFE"


def _end_of(op: Dict[str, Any]) -> int:
    c = op.get("complete")
    return int(c) if c is not None else int(op["invoke"])


def _index_acquires(ops: List[Dict[str, Any]]) -> tuple:
    """``(acquires by id, the other ops by the acquisition they belong to)``."""
    acquires: Dict[str, Dict[str, Any]] = {}
    by_lock: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for op in ops:
        if op.get("op") == "acquire":
            acquires[op["id"]] = op
        elif op.get("lock") is not None:
            by_lock[op["lock"]].append(op)
    return acquires, by_lock


def holder_intervals(acquires: Dict[str, Dict[str, Any]],
                     by_lock: Dict[str, List[Dict[str, Any]]]) -> List[Interval]:
    """One :class:`Interval` per successful, completed acquisition.

    From the acquire's completion to the validity end the holder believed in
    (moved on by each successful ``extend``, replaced by the deadline a failed
    one recorded), stretched to the holder's last act (a ``check`` that said
    valid, a storage op until it completed), and cut where ``release`` was
    invoked."""
    intervals: List[Interval] = []
    for lid, acq in acquires.items():
        if not acq.get("ok") or acq.get("complete") is None:
            continue
        start = int(acq["complete"])
        end = int(acq.get("valid_until") or start)
        acts = 0
        release_at: Optional[int] = None
        acted = start  # the holder's acts stretch the interval to here
        # In time order: a failed extend that recorded the deadline the
        # holder believes in afterwards (row 25) replaces the belief.
        for op in sorted(by_lock.get(lid, ()), key=lambda o: int(o["invoke"])):
            kind = op.get("op")
            if kind == "release":
                t = int(op["invoke"])
                release_at = t if release_at is None else min(release_at, t)
            elif kind == "extend" and not op.get("ok") and op.get("valid_until") is not None:
                end = int(op["valid_until"])
            elif kind == "extend" and op.get("ok") and op.get("valid_until") is not None:
                end = max(end, int(op["valid_until"]))
                acts += 1
            elif kind == "check" and op.get("ok"):
                acted = max(acted, int(op["invoke"]))
                acts += 1
            elif kind in _STORAGE_OPS:
                acted = max(acted, _end_of(op))
                acts += 1
        end = max(end, acted)
        if release_at is not None:
            end = min(end, release_at)
        end = max(end, start)
        intervals.append(Interval(acq["key"], lid, acq.get("client", "?"), start, end, acq.get("fence"), acts))
    return intervals


def find_overlaps(intervals: List[Interval], acquires: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mutual exclusion: pairs of holder intervals of one key, of different
    acquisitions, that intersect (``overlap_ms`` says by how much)."""
    out: List[Dict[str, Any]] = []
    per_key: Dict[str, List[Interval]] = defaultdict(list)
    for iv in intervals:
        per_key[iv.key].append(iv)
    for key, ivs in per_key.items():
        ivs.sort(key=lambda iv: iv.start)
        active: List[Interval] = []
        for iv in ivs:
            active = [a for a in active if a.end > iv.start]
            for a in active:
                if a.lock == iv.lock:
                    continue
                out.append({
                    "key": key,
                    "overlap_ms": round((min(a.end, iv.end) - iv.start) / 1e6, 3),
                    "first": dict(a.to_dict(), acquire=_brief(acquires[a.lock])),
                    "second": dict(iv.to_dict(), acquire=_brief(acquires[iv.lock])),
                })
            active.append(iv)
    return out


def find_fence_regressions(acquires: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Fencing monotonicity: an acquisition of a key that began after another
    one had completed must carry a strictly larger fence; each one that does
    not is reported with the largest earlier fence it should have exceeded."""
    out: List[Dict[str, Any]] = []
    fenced_acq: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for acq in acquires.values():
        if acq.get("ok") and acq.get("complete") is not None and isinstance(acq.get("fence"), int):
            fenced_acq[acq["key"]].append(acq)
    for key, lst in fenced_acq.items():
        by_complete = sorted(lst, key=lambda a: int(a["complete"]))
        by_invoke = sorted(lst, key=lambda a: int(a["invoke"]))
        i = 0
        best: Optional[Dict[str, Any]] = None
        for b in by_invoke:
            while i < len(by_complete) and int(by_complete[i]["complete"]) < int(b["invoke"]):
                a = by_complete[i]
                if best is None or a["fence"] > best["fence"]:
                    best = a
                i += 1
            if best is not None and best["id"] != b["id"] and b["fence"] <= best["fence"]:
                out.append({"key": key, "earlier": _brief(best), "later": _brief(b)})
    return out


def find_stale_writes(ops: List[Dict[str, Any]]) -> tuple:
    """``(accepted, rejected)`` stale storage ops.

    Accepted: a write the storage took with a fence below one it had already
    accepted from another acquisition (a write, or a fenced read) before the
    write began.  Rejected: every read or write the storage answered
    ``stale`` (the evidence that fencing made an overlap harmless)."""
    accepted: List[Dict[str, Any]] = []
    rejected: List[Dict[str, Any]] = []
    raisers: Dict[Any, List[Dict[str, Any]]] = defaultdict(list)  # accepted ops carrying a fence
    for op in ops:
        kind = op.get("op")
        if kind in _STORAGE_OPS and op.get("status") == "stale":
            rejected.append(_brief(op) or {})
        if op.get("status") == "ok" and isinstance(op.get("fence"), int) and op.get("complete") is not None:
            if kind == "write" or (kind == "read" and op.get("fenced")):
                raisers[op.get("skey")].append(op)
    for skey, lst in raisers.items():
        by_complete = sorted(lst, key=lambda o: int(o["complete"]))
        accepted_writes = sorted((o for o in lst if o["op"] == "write"), key=lambda o: int(o["invoke"]))
        i = 0
        best: Optional[Dict[str, Any]] = None
        for w in accepted_writes:
            while i < len(by_complete) and int(by_complete[i]["complete"]) < int(w["invoke"]):
                o = by_complete[i]
                if best is None or o["fence"] > best["fence"]:
                    best = o
                i += 1
            if best is not None and best.get("lock") != w.get("lock") and w["fence"] < best["fence"]:
                accepted.append({"skey": skey, "write": _brief(w), "newer": _brief(best)})
    return accepted, rejected


def find_lost_updates(ops: List[Dict[str, Any]], counters: Dict[str, Any]) -> tuple:
    """``(lost updates, writes accepted)`` on the protected counters.

    Per storage key: the accepted writes that wrote the same value (each
    such pair read the same count), and a final counter below the number of
    accepted increments.  Writes with an unknown outcome are not counted."""
    out: List[Dict[str, Any]] = []
    writes: Dict[Any, List[Dict[str, Any]]] = defaultdict(list)
    for op in ops:
        if op.get("op") == "write":
            writes[op.get("skey")].append(op)
    accepted_total = 0
    for skey in sorted(k for k in set(writes) | set(counters) if k is not None):
        ws = writes.get(skey, [])
        ok = [w for w in ws if w.get("status") == "ok"]
        unknown = [w for w in ws if w.get("status") in ("unknown", "error")]
        accepted_total += len(ok)
        by_value: Dict[Any, List[Dict[str, Any]]] = defaultdict(list)
        for w in ok:
            by_value[w.get("value")].append(w)
        dups = [sorted(g, key=lambda w: int(w["invoke"])) for g in by_value.values() if len(g) > 1]
        dup_lost = sum(len(g) - 1 for g in dups)
        fin = counters.get(skey) if skey in counters else None
        lost_by_count = 0
        if skey in counters:
            fv = int(fin or 0)
            if fv < len(ok):
                lost_by_count = len(ok) - fv
        if dup_lost or lost_by_count:
            out.append({
                "skey": skey,
                "accepted": len(ok),
                "unknown": len(unknown),
                "final": fin,
                "lost": max(dup_lost, lost_by_count),
                "same_value_writes": [[_brief(w) for w in g] for g in dups][:20],
            })
    return out, accepted_total


def find_leftover_keys(acquires: Dict[str, Dict[str, Any]], ops: List[Dict[str, Any]],
                       final: Dict[str, Any]) -> tuple:
    """``(leftover, immortal)`` lock keys of the ``final`` event.

    Each leftover key is attributed to the attempt whose token it holds, with
    why it stayed (liveness only while it has an expiry); a key without an
    expiry (``pttl == -1``) never frees and is also listed as immortal."""
    leftover: List[Dict[str, Any]] = []
    immortal: List[Dict[str, Any]] = []
    tokens: Dict[str, Dict[str, Any]] = {}
    for a in acquires.values():
        if a.get("token"):
            tokens[a["token"]] = a
    released = {op["lock"] for op in ops if op.get("op") == "release" and op.get("ok")}
    release_failed = {op["lock"] for op in ops if op.get("op") == "release" and not op.get("ok")}
    for entry in final.get("locks") or ():
        tok = entry.get("token")
        acq = tokens.get(tok) if tok else None
        if acq is None:
            why = "foreign"
        elif not acq.get("ok"):
            why = "failed attempt (its release did not reach this node)"
        elif acq["id"] in released:
            why = "released (the release did not reach this node)"
        elif acq["id"] in release_failed:
            why = "release failed (it did not reach a majority)"
        else:
            why = "never released (holder stopped or crashed)"
        item = dict(entry, why=why, acquire=_brief(acq))
        leftover.append(item)
        if entry.get("pttl") == -1:
            immortal.append(item)
    return leftover, immortal


def check(events: Iterable[Dict[str, Any]]) -> Report:
    """Check a history (an iterable of event dicts); return a :class:`Report`.

    Runs each analysis of this module on the same events: the holder
    intervals and :func:`find_overlaps`, :func:`find_fence_regressions`,
    :func:`find_stale_writes`, :func:`find_lost_updates`,
    :func:`find_leftover_keys` and :func:`check_client`."""
    evs = list(events)
    ops = [e for e in evs if e.get("type") == "op"]
    finals = [e for e in evs if e.get("type") == "final"]
    final = finals[-1] if finals else {}
    rep = Report()
    acquires, by_lock = _index_acquires(ops)
    rep.intervals = holder_intervals(acquires, by_lock)
    rep.overlaps = find_overlaps(rep.intervals, acquires)
    rep.fence_regressions = find_fence_regressions(acquires)
    rep.stale_accepted, rep.stale_rejected = find_stale_writes(ops)
    rep.lost_updates, accepted_total = find_lost_updates(ops, final.get("counters") or {})
    rep.leftover, rep.immortal = find_leftover_keys(acquires, ops, final)
    rep.client = check_client(evs)
    rep.stats = {
        "ops": len(ops),
        "acquire_attempts": len(acquires),
        "acquired": sum(1 for a in acquires.values() if a.get("ok")),
        "writes_accepted": accepted_total,
        "faults": sum(1 for e in evs if e.get("type") == "fault"),
        "keys": len({iv.key for iv in rep.intervals}),
    }
    return rep


def format_report(rep: Report, limit: int = 3) -> str:
    """A short human-readable account of a report."""
    lines = [f"label {classify(rep)}; " + ", ".join(f"{k} {v}" for k, v in rep.summary().items())]
    for ov in rep.overlaps[:limit]:
        a, b = ov["first"], ov["second"]
        lines.append(f"  overlap on {ov['key']!r}: {a['client']} ({a['lock']}, fence {a['fence']}) and "
                     f"{b['client']} ({b['lock']}, fence {b['fence']}) for {ov['overlap_ms']} ms")
    for lu in rep.lost_updates[:limit]:
        lines.append(f"  lost update on {lu['skey']!r}: {lu['accepted']} accepted increments, final "
                     f"{lu['final']}; {len(lu['same_value_writes'])} value(s) written twice")
    for sa in rep.stale_accepted[:limit]:
        lines.append(f"  stale write accepted on {sa['skey']!r}: {sa['write']['id']} fence {sa['write']['fence']} "
                     f"after {sa['newer']['id']} fence {sa['newer']['fence']}")
    for sr in rep.stale_rejected[:limit]:
        lines.append(f"  stale {sr.get('op')} rejected: {sr['id']} fence {sr.get('fence')}")
    for fr in rep.fence_regressions[:limit]:
        lines.append(f"  fence regression on {fr['key']!r}: {fr['later']['id']} fence {fr['later']['fence']} "
                     f"<= {fr['earlier']['id']} fence {fr['earlier']['fence']}")
    for lo in rep.leftover[:limit]:
        lines.append(f"  leftover {lo.get('key')!r} on node {lo.get('node')} pttl {lo.get('pttl')}: {lo['why']}")
    for cf in rep.client[:limit]:
        lines.append(f"  {cf['kind']}: {cf['what']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# semaphores and read-write locks: how many holders at once
# --------------------------------------------------------------------------
#
# A holder of a semaphore or rwlock is recorded as an ordinary acquisition
# (its ``key`` is the permit key it got, so :func:`check` still checks every
# permit key as a mutex) with two extra fields: ``sem`` (the semaphore or
# rwlock name) and, for rwlocks, ``mode`` ("read" or "write").  Holder
# intervals follow the rules of :func:`check` (acquire completed -> believed
# validity end, moved by extends and holder acts, cut at the release).


def _grouped_intervals(events: Iterable[Dict[str, Any]]) -> Dict[Any, List[tuple]]:
    """``sem`` -> [(interval, mode)] for every successful acquisition that names a ``sem``."""
    evs = list(events)
    acq = {e["id"]: e for e in evs if e.get("type") == "op" and e.get("op") == "acquire" and "id" in e}
    out: Dict[Any, List[tuple]] = defaultdict(list)
    for iv in check(evs).intervals:
        a = acq.get(iv.lock) or {}
        if a.get("sem") is not None:
            out[a["sem"]].append((iv, a.get("mode")))
    return out


def peak_holders(intervals: Iterable[Interval]) -> tuple:
    """The most intervals that hold at one instant, and one such set
    (intervals are half-open ``[start, end)``: a holder that ends when the
    next one starts does not overlap it)."""
    ivs = [iv for iv in intervals if iv.end > iv.start]
    points = sorted([(iv.start, 1, i) for i, iv in enumerate(ivs)] + [(iv.end, 0, i) for i, iv in enumerate(ivs)])
    active: Dict[int, Interval] = {}
    best, witness = 0, []
    for _t, kind, i in points:
        if kind == 0:
            active.pop(i, None)
            continue
        active[i] = ivs[i]
        if len(active) > best:
            best, witness = len(active), list(active.values())
    return best, witness


def check_capacity(events: Iterable[Dict[str, Any]], limit: int) -> Dict[str, Any]:
    """At most ``limit`` simultaneous holders per ``sem``: a pure function of
    the history.  Returns ``{"ok", "peak": {sem: n}, "violations": [...]}``;
    each violation names the holders that were simultaneous."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    peaks: Dict[Any, int] = {}
    violations: List[Dict[str, Any]] = []
    for sem, items in _grouped_intervals(events).items():
        n, witness = peak_holders(iv for iv, _m in items)
        peaks[sem] = n
        if n > limit:
            violations.append({"sem": sem, "holders": n, "limit": limit,
                               "intervals": [iv.to_dict() for iv in witness]})
    return {"ok": not violations, "peak": peaks, "violations": violations}


def check_rw(events: Iterable[Dict[str, Any]], max_readers: Optional[int] = None) -> Dict[str, Any]:
    """Reader/writer exclusion per ``sem``: no writer interval intersects any
    other holder's (reader or writer); with ``max_readers``, at most that many
    readers at once.  Also reports the peak of simultaneous readers (so a test
    can show that readers did share)."""
    out: Dict[str, Any] = {"ok": True, "writer_overlaps": [], "reader_peak": {}, "too_many_readers": []}
    for sem, items in _grouped_intervals(events).items():
        writers = [iv for iv, m in items if m == "write"]
        readers = [iv for iv, m in items if m != "write"]
        everyone = writers + readers
        writer_ids = {id(w) for w in writers}
        for w in writers:
            for o in everyone:
                if o is w or o.lock == w.lock:
                    continue
                if o.start < w.end and w.start < o.end:
                    kind = "write" if id(o) in writer_ids else "read"
                    if kind == "write" and (o.start, o.lock) < (w.start, w.lock):
                        continue  # reported once, from the earlier writer
                    out["writer_overlaps"].append({"sem": sem, "writer": w.to_dict(), "other": o.to_dict(),
                                                   "other_mode": kind,
                                                   "overlap_ms": round((min(w.end, o.end) - max(w.start, o.start))
                                                                       / 1e6, 3)})
        n, witness = peak_holders(readers)
        out["reader_peak"][sem] = n
        if max_readers is not None and n > max_readers:
            out["too_many_readers"].append({"sem": sem, "readers": n, "limit": max_readers,
                                            "intervals": [iv.to_dict() for iv in witness]})
    out["ok"] = not (out["writer_overlaps"] or out["too_many_readers"])
    return out


# --------------------------------------------------------------------------
# client-process faults (docs/safety.md rows 22-29)
# --------------------------------------------------------------------------

#: finding kind -> label, in order of precedence
CLIENT_LABELS = {"double-count": "DUP", "leftover": "LEAK", "stall": "STALL", "late": "LATE", "memory": "MEM"}


def client_label(findings: List[Dict[str, Any]]) -> str:
    """The label of the most serious of :func:`check_client`'s findings."""
    kinds = {f["kind"] for f in findings}
    for kind, label in CLIENT_LABELS.items():
        if kind in kinds:
            return label
    return "SAFE"


def check_client(events: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Findings about the client process itself, from a history.

    Pure, like :func:`check`.  It reads the op fields and event types the
    client-fault scenarios record (schema in docs/safety.md):

    * ``double-count``: a successful ``acquire``/``extend`` whose ``servers``
      (distinct real servers holding the token right after it) is below its
      ``quorum``: one server was counted twice.
    * ``leftover``: a ``bound`` event ``no-leftover`` with a ``prefix``, and
      a lock key with that prefix on a node in the ``final`` event (the
      client released, or was interrupted or cancelled before it could own,
      every lock it took: nothing may remain).
    * ``stall``: an op with ``expect_ok`` that failed or never completed.
    * ``late``: an op with ``bound_ms`` that took longer, or never completed.
    * ``memory``: a ``bound`` event ``rss-growth`` (``client``, ``limit``
      bytes) and ``sample`` events ``rss`` of that client whose largest value
      exceeds the first by more than the limit.
    """
    evs = list(events)
    out: List[Dict[str, Any]] = []
    finals = [e for e in evs if e.get("type") == "final"]
    final = finals[-1] if finals else {}
    bounds = [e for e in evs if e.get("type") == "bound"]
    for op in evs:
        if op.get("type") != "op":
            continue
        kind = op.get("op")
        if op.get("ok") and kind in ("acquire", "extend") and op.get("servers") is not None \
                and op.get("quorum") is not None and int(op["servers"]) < int(op["quorum"]):
            out.append({"kind": "double-count", "op": _brief(op),
                        "what": f"{op['id']} {kind} of {op.get('key')!r} succeeded with {op['servers']} real "
                                f"server(s) holding the token, quorum {op['quorum']}"})
        if op.get("expect_ok") and (not op.get("ok") or op.get("complete") is None):
            out.append({"kind": "stall", "op": _brief(op),
                        "what": f"{op['id']} {kind} of {op.get('key')!r} could not fail, yet "
                                + ("never completed" if op.get("complete") is None else "failed")
                                + (f" ({op['error']})" if op.get("error") else "")})
        if op.get("bound_ms") is not None:
            c = op.get("complete")
            took = None if c is None else (int(c) - int(op["invoke"])) / 1e6
            if took is None or took > float(op["bound_ms"]):
                out.append({"kind": "late", "op": _brief(op), "took_ms": None if took is None else round(took, 1),
                            "what": f"{op['id']} {kind} of {op.get('key')!r} took "
                                    + ("forever" if took is None else f"{took:.0f} ms")
                                    + f" (bound {op['bound_ms']} ms)"})
    locks = final.get("locks") or ()
    for b in bounds:
        if b.get("name") == "no-leftover":
            prefix = str(b.get("prefix") or "")
            left = [e for e in locks if str(e.get("key", "")).startswith(prefix)]
            if left:
                keys = sorted({e["key"] for e in left})
                out.append({"kind": "leftover", "prefix": prefix, "keys": len(keys), "entries": len(left),
                            "examples": left[:5],
                            "what": f"{len(keys)} key(s) {prefix}* left on the nodes ({len(left)} node entries) "
                                    f"by {b.get('client', 'the client')}"})
        elif b.get("name") == "rss-growth":
            who = b.get("client")
            vals = [int(e["value"]) for e in evs
                    if e.get("type") == "sample" and e.get("name") == "rss" and e.get("client") == who]
            if len(vals) >= 2:
                growth = max(vals) - vals[0]
                if growth > int(b["limit"]):
                    out.append({"kind": "memory", "client": who, "growth": growth, "limit": int(b["limit"]),
                                "what": f"{who}: RSS grew {growth / 2**20:.1f} MiB "
                                        f"(bound {int(b['limit']) / 2**20:.0f} MiB)"})
    return out
