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

:func:`classify` turns a report into the labels of the fault matrix.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

__all__ = ["Report", "check", "classify", "LABELS", "check_capacity", "check_rw", "peak_holders"]

#: Observed labels, in the vocabulary of docs/faults.md.
LABELS = ("SAFE", "VIOL", "ME-only", "ME", "LOST", "STALE", "REGRESS", "REJECTED", "ERROR", "SKIP")

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
    stats: Dict[str, Any] = field(default_factory=dict)
    intervals: List[Interval] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        """No safety property broken (leftover keys with an expiry are liveness only)."""
        return not (self.overlaps or self.lost_updates or self.fence_regressions
                    or self.stale_accepted or self.immortal)

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
    return "SAFE"


def _end_of(op: Dict[str, Any]) -> int:
    c = op.get("complete")
    return int(c) if c is not None else int(op["invoke"])


def check(events: Iterable[Dict[str, Any]]) -> Report:
    """Check a history (an iterable of event dicts); return a :class:`Report`."""
    evs = list(events)
    ops = [e for e in evs if e.get("type") == "op"]
    finals = [e for e in evs if e.get("type") == "final"]
    final = finals[-1] if finals else {}
    rep = Report()

    acquires: Dict[str, Dict[str, Any]] = {}
    by_lock: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for op in ops:
        kind = op.get("op")
        if kind == "acquire":
            acquires[op["id"]] = op
        elif op.get("lock") is not None:
            by_lock[op["lock"]].append(op)

    # -- holder intervals ------------------------------------------------
    intervals: List[Interval] = []
    for lid, acq in acquires.items():
        if not acq.get("ok") or acq.get("complete") is None:
            continue
        start = int(acq["complete"])
        end = int(acq.get("valid_until") or start)
        acts = 0
        release_at: Optional[int] = None
        for op in by_lock.get(lid, ()):
            kind = op.get("op")
            if kind == "release":
                t = int(op["invoke"])
                release_at = t if release_at is None else min(release_at, t)
            elif kind == "extend" and op.get("ok") and op.get("valid_until") is not None:
                end = max(end, int(op["valid_until"]))
                acts += 1
            elif kind == "check" and op.get("ok"):
                end = max(end, int(op["invoke"]))
                acts += 1
            elif kind in _STORAGE_OPS:
                end = max(end, _end_of(op))
                acts += 1
        if release_at is not None:
            end = min(end, release_at)
        end = max(end, start)
        intervals.append(Interval(acq["key"], lid, acq.get("client", "?"), start, end, acq.get("fence"), acts))
    rep.intervals = intervals

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
                rep.overlaps.append({
                    "key": key,
                    "overlap_ms": round((min(a.end, iv.end) - iv.start) / 1e6, 3),
                    "first": dict(a.to_dict(), acquire=_brief(acquires[a.lock])),
                    "second": dict(iv.to_dict(), acquire=_brief(acquires[iv.lock])),
                })
            active.append(iv)

    # -- fence regressions -----------------------------------------------
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
                rep.fence_regressions.append({"key": key, "earlier": _brief(best), "later": _brief(b)})

    # -- storage: stale writes, lost updates -----------------------------
    writes: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    raisers: Dict[str, List[Dict[str, Any]]] = defaultdict(list)  # accepted ops carrying a fence
    for op in ops:
        kind = op.get("op")
        skey = op.get("skey")
        if kind == "write":
            writes[skey].append(op)
            if op.get("status") == "stale":
                rep.stale_rejected.append(_brief(op))
        if kind == "read" and op.get("status") == "stale":
            rep.stale_rejected.append(_brief(op))
        if op.get("status") == "ok" and isinstance(op.get("fence"), int) and op.get("complete") is not None:
            if kind == "write" or (kind == "read" and op.get("fenced")):
                raisers[skey].append(op)
    for skey, lst in raisers.items():
        by_complete = sorted(lst, key=lambda o: int(o["complete"]))
        accepted_writes = sorted((o for o in lst if o["op"] == "write"), key=lambda o: int(o["invoke"]))
        i = 0
        best = None
        for w in accepted_writes:
            while i < len(by_complete) and int(by_complete[i]["complete"]) < int(w["invoke"]):
                o = by_complete[i]
                if best is None or o["fence"] > best["fence"]:
                    best = o
                i += 1
            if best is not None and best.get("lock") != w.get("lock") and w["fence"] < best["fence"]:
                rep.stale_accepted.append({"skey": skey, "write": _brief(w), "newer": _brief(best)})

    counters = final.get("counters") or {}
    skeys = set(writes) | set(counters)
    accepted_total = 0
    for skey in sorted(k for k in skeys if k is not None):
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
            rep.lost_updates.append({
                "skey": skey,
                "accepted": len(ok),
                "unknown": len(unknown),
                "final": fin,
                "lost": max(dup_lost, lost_by_count),
                "same_value_writes": [[_brief(w) for w in g] for g in dups][:20],
            })

    # -- leftover keys ---------------------------------------------------
    tokens: Dict[str, Dict[str, Any]] = {}
    for acq in acquires.values():
        if acq.get("token"):
            tokens[acq["token"]] = acq
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
        rep.leftover.append(item)
        if entry.get("pttl") == -1:
            rep.immortal.append(item)

    n_acq = sum(1 for a in acquires.values())
    rep.stats = {
        "ops": len(ops),
        "acquire_attempts": n_acq,
        "acquired": sum(1 for a in acquires.values() if a.get("ok")),
        "writes_accepted": accepted_total,
        "faults": sum(1 for e in evs if e.get("type") == "fault"),
        "keys": len(per_key),
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
