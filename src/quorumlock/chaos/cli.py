"""``quorumlock chaos``: run one fault scenario, or the whole expected matrix.

    quorumlock chaos --mode unsafe --fault crash-targeted
    quorumlock chaos --mode volatile --fault mixed --fencing --clients 8 --keys 4 --duration 60
    quorumlock chaos --matrix --quick

One run prints a verdict table and the path of its JSONL history (schema in
docs/safety.md) and exits 0 when the checker found nothing, 1 when it found a
violation (or, with ``--expect LABEL``, 0 exactly when it observed LABEL).
``--matrix`` runs the rows of docs/faults.md and prints expected and observed
side by side; it exits 1 if any row differs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, List, Optional

__all__ = ["add_parser", "main"]

NODE_MODES = ("unsafe", "volatile", "fsync")


def _out(*args: Any) -> None:
    print(*args, flush=True)


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from . import fence_offsets  # noqa: F401  (registers row 30's faults)
    from . import semaphores as _semaphores  # noqa: F401  (registers the semaphore/rwlock scenarios)
    from .faulty import BUGS
    from .scenarios import FAULTS

    p = sub.add_parser(
        "chaos",
        help="fault-injection safety checker (one scenario, or the expected matrix)",
        description="Run client processes against local Redis nodes, inject a fault, record every "
        "operation, and check the history for overlapping holders, lost updates, fence "
        "regressions, stale writes and leftover keys.  --matrix runs the expected results "
        "of docs/faults.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="faults:\n" + "\n".join(f"  {n:26s} {s.kind:8s} {s.help}" for n, s in sorted(FAULTS.items())),
    )
    p.add_argument("--mode", choices=NODE_MODES, default="volatile",
                   help="lock node mode (docs/node-modes.md; default volatile)")
    p.add_argument("--fault", default="none", choices=sorted(FAULTS), metavar="NAME",
                   help="the fault to inject (list below; default none)")
    p.add_argument("--fencing", nargs="?", const="on", default="off", choices=("off", "on", "write-only"),
                   help="storage access: off (plain), on (fenced read + fenced CAS; the default of a bare "
                        "--fencing), write-only (plain read, fenced write: a negative control)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--guard", dest="guard", action="store_true", default=None,
                   help="clients use the restart guard (default: on, except in unsafe mode)")
    g.add_argument("--no-guard", dest="guard", action="store_false", help="clients do not use the restart guard")
    p.add_argument("--clients", type=int, default=8, help="client processes (random faults; default 8)")
    p.add_argument("--keys", type=int, default=4, help="lock keys they contend for (default 4)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds (random faults; default 30)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the schedule and the clients")
    p.add_argument("--ttl", type=float, default=1.0, help="lock TTL in seconds (default 1.0)")
    p.add_argument("--nodes", type=int, default=3, help="lock nodes (default 3)")
    p.add_argument("--drift-factor", type=float, default=0.01, help="clients' drift_factor (default 0.01)")
    p.add_argument("--client-bug", action="append", default=[], choices=BUGS, metavar="BUG",
                   help=f"run the deliberately broken client with this bug ({', '.join(BUGS)}); repeatable")
    p.add_argument("--expect", default=None, metavar="LABEL",
                   help="exit 0 exactly when the observed label is LABEL (SAFE, VIOL, ME-only, ...)")
    p.add_argument("--matrix", action="store_true", help="run the expected-results matrix")
    p.add_argument("--quick", action="store_true", help="with --matrix: the CI subset, random rows 5 s")
    p.add_argument("--rows", default=None, metavar="IDS",
                   help="with --matrix: only these row ids or docs/faults.md row numbers (comma-separated)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="keep the run directories (histories, client logs) under DIR (default: temp dir)")
    p.add_argument("--plot", default=None, metavar="PATH", help="write a PNG timeline of the run (matplotlib)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the full report(s) as JSON")
    p.set_defaults(func=main)


def _fmt_ms(ns: int, t0: int) -> str:
    return f"{(ns - t0) / 1e9:.3f}s"


def _verdict_rows(res: Any) -> List[List[str]]:
    rep = res.report
    if rep is None:
        return [["run", "ERROR" if res.label == "ERROR" else res.label, (res.error or "").splitlines()[0][:100]
                 if res.error else "; ".join(res.notes)[:100]]]
    rows = []
    ov = rep.overlaps
    if ov:
        o = ov[0]
        rows.append(["mutual exclusion", "VIOLATED",
                     f"{len(ov)} overlap(s); e.g. {o['key']}: {o['first']['client']} ({o['first']['lock']}, "
                     f"fence {o['first']['fence']}) and {o['second']['client']} ({o['second']['lock']}, "
                     f"fence {o['second']['fence']}), {o['overlap_ms']} ms"])
    else:
        rows.append(["mutual exclusion", "ok", f"{len(rep.intervals)} holder intervals, none overlap"])
    if rep.lost_updates:
        lu = rep.lost_updates[0]
        lost = sum(x["lost"] for x in rep.lost_updates)
        rows.append(["lost updates", "VIOLATED", f"{lost} lost; e.g. {lu['skey']}: {lu['accepted']} accepted "
                     f"increments, final {lu['final']}"])
    else:
        rows.append(["lost updates", "ok", f"{rep.stats.get('writes_accepted', 0)} accepted increments, all counted"])
    rows.append(["fence order", "VIOLATED" if rep.fence_regressions else "ok",
                 f"{len(rep.fence_regressions)} regression(s)"])
    rows.append(["stale writes accepted", "VIOLATED" if rep.stale_accepted else "ok", str(len(rep.stale_accepted))])
    rows.append(["stale writes rejected", "-", str(len(rep.stale_rejected))])
    immortal = len(rep.immortal)
    rows.append(["leftover lock keys", "VIOLATED" if immortal else "-",
                 f"{len(rep.leftover)} at the end ({immortal} without expiry)"])
    st = rep.stats
    rows.append(["operations", "-", f"{st.get('ops')} ops, {st.get('acquired')}/{st.get('acquire_attempts')} "
                 f"acquisitions, {st.get('faults')} fault events"])
    return rows


def _table(rows: List[List[str]], header: Optional[List[str]] = None) -> str:
    allrows = ([header] if header else []) + rows
    widths = [max(len(str(r[i])) for r in allrows) for i in range(len(allrows[0]))]
    lines = []
    for j, r in enumerate(allrows):
        lines.append("  ".join(str(c).ljust(widths[i]) if i < len(r) - 1 else str(c) for i, c in enumerate(r)))
        if header and j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _run_one(args: argparse.Namespace) -> int:
    from .history import read_history
    from .scenarios import FAULTS, Scenario, default_guard, run_scenario

    sc = Scenario(fault=args.fault, mode=args.mode, fencing=args.fencing, guard=args.guard, clients=args.clients,
                  keys=args.keys, duration=args.duration, ttl=args.ttl, seed=args.seed,
                  bugs=tuple(args.client_bug), drift_factor=args.drift_factor, n=args.nodes)
    spec = FAULTS[sc.fault]
    guard = default_guard(sc.mode) if sc.guard is None else sc.guard
    who = f"{sc.clients} clients x {sc.keys} keys, {sc.duration:g} s" if spec.kind == "random" else "clients A, B"
    _out(f"quorumlock chaos: fault={sc.fault} ({spec.kind}) mode={sc.mode} fencing={sc.fencing} "
         f"guard={'on' if guard else 'off'} ttl={sc.ttl:g}s {who}"
         + (f" bug={','.join(sc.bugs)}" if sc.bugs else ""))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    res = run_scenario(sc, base_dir=args.out, keep=True)
    _out("")
    _out(_table(_verdict_rows(res), ["property", "result", "detail"]))
    for note in res.notes:
        _out(f"  note: {note}")
    for k, v in res.checks.items():
        _out(f"  check: {k} = {v}")
    _out("")
    label = res.label
    _out(f"verdict: {label}  ({'no violation found' if label in ('SAFE', 'REJECTED') else 'see above'}; "
         f"{res.wall:.1f} s)")
    if res.error:
        _out(f"error: {res.error}")
    if res.history:
        _out(f"history: {res.history}")
    if args.plot and res.report is not None and res.history and res.history.endswith(".jsonl"):
        from .plot import plot_timeline

        try:
            plot_timeline(read_history(res.history), res.report, args.plot, title=f"{sc.describe()} -> {label}")
            _out(f"plot: {args.plot}")
        except RuntimeError as exc:
            _out(f"plot: skipped ({exc})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res.to_dict(), f, indent=1, default=str)
    if args.expect is not None:
        return 0 if label == args.expect else 1
    if label == "ERROR":
        return 2
    return 0 if (res.report is None or res.report.safe) else 1


def _run_matrix(args: argparse.Namespace) -> int:
    from .matrix import run_matrix, select_rows

    only = [s.strip() for s in args.rows.split(",")] if args.rows else None
    rows = select_rows(quick=args.quick, only=only, seed=args.seed)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    header = ["id", "row", "fault", "mode", "fencing", "expected", "observed", "match", "ov", "lost", "rej",
              "left", "s", "note"]
    _out(f"quorumlock chaos --matrix{' --quick' if args.quick else ''}: {len(rows)} rows")
    _out("  ".join(header))
    t0 = time.monotonic()
    table: List[List[str]] = []

    def show(rr: Any) -> None:
        res = rr.result
        sc = rr.row.scenario
        s = res.report.summary() if res.report is not None else {}
        fencing = sc.fencing + ("" if not sc.bugs else f" bug={'+'.join(sc.bugs)}")
        if sc.drift_factor != 0.01:
            fencing += f" drift={sc.drift_factor:g}"
        if sc.guard:
            fencing += " guard"
        note = rr.why or ("; ".join(res.notes[-1:])[:60] if res.label == "SKIP" else "")
        if rr.tries > 1:
            note = f"(try {rr.tries}) " + note
        line = [rr.row.id, rr.row.faults_row, sc.fault, sc.mode, fencing, rr.row.expected, res.label,
                "yes" if rr.ok else "NO", str(s.get("overlaps", "-")), str(s.get("lost", "-")),
                str(s.get("stale_rejected", "-")), str(s.get("leftover", "-")), f"{res.wall:.1f}", note]
        table.append(line)
        _out("  ".join(line))

    results = run_matrix(rows, base_dir=args.out, keep=bool(args.out), on_result=show)
    wall = time.monotonic() - t0
    _out("")
    _out(_table(table, header))
    bad = [rr for rr in results if not rr.ok]
    _out("")
    _out(f"{len(results) - len(bad)}/{len(results)} rows as expected "
         f"({sum(1 for r in results if r.result.label == 'SKIP')} skipped); wall time {wall:.0f} s")
    for rr in bad:
        _out(f"  DIFFERS {rr.row.id}: expected {rr.row.expected}, observed {rr.result.label}: "
             f"{rr.why or rr.result.error or ''}  history: {rr.result.history}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall": wall, "rows": [dict(id=r.row.id, expected=r.row.expected, ok=r.ok, tries=r.tries,
                                                    **r.result.to_dict()) for r in results]},
                      f, indent=1, default=str)
    return 1 if bad else 0


def main(args: argparse.Namespace) -> int:
    if args.matrix:
        return _run_matrix(args)
    return _run_one(args)


# --------------------------------------------------------------------------
# rows 22-29: the client-process scenarios, and their findings in the table
# --------------------------------------------------------------------------

def _register_client_faults() -> None:
    from .client_faults import register
    from .scenarios import FAULTS

    register(FAULTS)


_add_parser_base = add_parser
_verdict_rows_base = _verdict_rows


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:  # noqa: F811
    _register_client_faults()
    _add_parser_base(sub)


def _verdict_rows(res: Any) -> List[List[str]]:  # noqa: F811
    rows = _verdict_rows_base(res)
    rep = res.report
    if rep is not None:
        found = rep.client
        detail = "; ".join(f["what"] for f in found[:2])[:160] if found else "no leftover, stall, late op, " \
            "double count or memory growth over its bound"
        rows.insert(len(rows) - 1, ["client process", "VIOLATED" if found else "ok",
                                    (f"{len(found)} finding(s): " if found else "") + detail])
    return rows
