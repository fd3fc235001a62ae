"""The markdown report and the engine targets (PASS / FAIL with the ratio).

Everything here works from the result document alone (what ``--json``
writes), so ``--from-json`` can render an old run again.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

__all__ = ["evaluate_targets", "fmt_rate", "markdown"]

#: The N at which the engine targets are stated.
TARGET_N = 3


def _find(doc: Dict[str, Any], mode: str, n: int, rid: str) -> Optional[Dict[str, Any]]:
    for r in doc["rows"]:
        if r["mode"] == mode and r["n"] == n and r["id"] == rid and not r["skipped"] and r["cycles"]:
            return r
    return None


def _target(tid: str, mode: str, desc: str, value: Optional[float], reference: Optional[float],
            ratio: Optional[float], threshold: str, ok: Optional[bool], detail: str) -> Dict[str, Any]:  # fmt: skip
    return {
        "id": tid,
        "mode": mode,
        "description": desc,
        "value": None if value is None else round(value, 3),
        "reference": None if reference is None else round(reference, 3),
        "ratio": None if ratio is None else round(ratio, 3),
        "threshold": threshold,
        "status": "N/A" if ok is None else ("PASS" if ok else "FAIL"),
        "detail": detail,
    }


def _versus(doc: Dict[str, Any], mode: str, n: int, tid: str, a_id: str, b_id: str, what: str, desc: str,
            threshold: str, ok: Callable[[float], bool], digits: int = 2) -> Dict[str, Any]:  # fmt: skip
    """A target comparing row ``a_id`` with row ``b_id`` of the same run:
    ``what`` is "rate" (cycles/s) or "p50" (acquire latency, µs)."""
    a = _find(doc, mode, n, a_id)
    b = _find(doc, mode, n, b_id)
    key = (lambda r: r["cycles_per_s"]) if what == "rate" else (lambda r: r["latency"]["p50_us"])
    av = a and key(a)
    bv = b and key(b)
    if not (av and bv):
        return _target(tid, mode, desc, av, bv, None, threshold, None, "missing row")
    ratio = av / bv
    if what == "rate":
        detail = f"{fmt_rate(av)} vs {fmt_rate(bv)} cycles/s = {ratio:.{digits}f}x"
    else:
        detail = f"{av:.1f} us vs {bv:.1f} us = {ratio:.{digits}f}x"
    return _target(tid, mode, desc, av, bv, ratio, threshold, ok(ratio), detail)


def evaluate_targets(doc: Dict[str, Any], n: int = TARGET_N) -> List[Dict[str, Any]]:
    """The engine issue's targets at N=``n``, one entry per target and mode."""
    out: List[Dict[str, Any]] = []
    modes = doc["config"]["modes"]
    for mode in modes:
        # 1. client CPU per cycle in batches of 1,000 <= 3 µs
        r = _find(doc, mode, n, "quorumlock/async-batch1000")
        v = r and r["cpu_us_per_cycle"]
        out.append(_target(
            "batch-cpu", mode, f"client CPU per cycle, acquire_many/release_many of 1,000 keys, N={n}",
            v, 3.0, None if v is None else v / 3.0, "<= 3 us/cycle", None if v is None else v <= 3.0,
            "no measurement" if v is None else f"{v:.2f} us/cycle = {v / 3.0:.2f} x the 3 us budget"))
        # 2. client CPU per call at concurrency 1024 <= 6 µs
        r = _find(doc, mode, n, "quorumlock/async-c1024")
        v = r and r["cpu_us_per_cycle"]
        out.append(_target(
            "percall-cpu-c1024", mode, f"client CPU per cycle, try_acquire+release at concurrency 1024, N={n}",
            v, 6.0, None if v is None else v / 6.0, "<= 6 us/cycle", None if v is None else v <= 6.0,
            "no measurement" if v is None else f"{v:.2f} us/cycle = {v / 6.0:.2f} x the 6 us budget"))
        # 3. >= 90 % of the ceiling measured in the same run: the best quorumlock row,
        #    and the per-call path at 1024 on its own.
        ql = [r for r in doc["rows"] if r["mode"] == mode and r["n"] == n and r["library"] == "quorumlock"
              and not r["skipped"] and r["pct_of_ceiling"] is not None]  # fmt: skip
        best = max(ql, key=lambda r: r["pct_of_ceiling"], default=None)
        if best is not None:
            p = best["pct_of_ceiling"]
            out.append(_target(
                "ceiling-best", mode, f"best quorumlock throughput as % of the ceiling, N={n}",
                best["cycles_per_s"], best["ceiling_cycles_per_s"], p / 100.0, ">= 90 %", p >= 90.0,
                f"{best['workload']}: {fmt_rate(best['cycles_per_s'])} cycles/s vs ceiling "
                f"{fmt_rate(best['ceiling_cycles_per_s'])} = {p:.0f} %"))
        else:
            out.append(_target("ceiling-best", mode, f"best quorumlock throughput as % of the ceiling, N={n}",
                               None, None, None, ">= 90 %", None, "no measurement or no ceiling"))
        r = _find(doc, mode, n, "quorumlock/async-c1024")
        p = r and r["pct_of_ceiling"]
        out.append(_target(
            "ceiling-percall-c1024", mode, f"try_acquire+release at concurrency 1024 as % of the ceiling, N={n}",
            r and r["cycles_per_s"], r and r["ceiling_cycles_per_s"], None if p is None else p / 100.0,
            ">= 90 %", None if p is None else p >= 90.0,
            "no measurement or no ceiling" if p is None else
            f"{fmt_rate(r['cycles_per_s'])} cycles/s vs ceiling {fmt_rate(r['ceiling_cycles_per_s'])} = {p:.0f} %"))
        # 4. blocking sequential p50 at N=3 <= redis-py Lock p50 (same run, node 0 of the same cluster)
        out.append(_versus(doc, mode, n, "blocking-p50-vs-redis-py", "quorumlock/blocking-seq",
                           "redis-py.Lock/blocking-seq", "p50",
                           f"blocking sequential acquire p50 at N={n} vs redis-py Lock p50 on node 0 of the same cluster",
                           "ratio <= 1.0", lambda r: r <= 1.0))  # fmt: skip
        # 5. 8 threads at N=3 >= 20x pottery's blocking Redlock (8 threads too)
        out.append(_versus(doc, mode, n, "blocking-t8-vs-pottery", "quorumlock/blocking-t8",
                           "pottery.Redlock/blocking-t8", "rate",
                           f"blocking, 8 threads, N={n}: cycles/s vs pottery Redlock, 8 threads",
                           "ratio >= 20", lambda r: r >= 20, digits=1))  # fmt: skip
        # 6. issue 14: what users pick instead. Blocking, 8 threads: >= 2x PostgreSQL
        #    session advisory locks with 8 threads; sequential p50 <= 0.5x PostgreSQL's.
        out.append(_versus(doc, mode, n, "blocking-t8-vs-postgres", "quorumlock/blocking-t8",
                           "postgresql.advisory/blocking-t8", "rate",
                           f"blocking, 8 threads, N={n}: cycles/s vs PostgreSQL advisory locks, 8 threads",
                           "ratio >= 2", lambda r: r >= 2))  # fmt: skip
        out.append(_versus(doc, mode, n, "blocking-p50-vs-postgres", "quorumlock/blocking-seq",
                           "postgresql.advisory/blocking-seq", "p50",
                           f"blocking sequential acquire p50 at N={n} vs PostgreSQL pg_try_advisory_lock p50",
                           "ratio <= 0.5", lambda r: r <= 0.5))  # fmt: skip
        # 7. native release commands on vs off, same nodes, same run (>= 1.25x). Only
        #    meaningful on nodes that have them: N/A when the "on" row used the script.
        a = _find(doc, mode, n, "quorumlock/async-c1024")
        b = _find(doc, mode, n, "quorumlock/async-c1024-native-off")
        paths = (a or {}).get("extra", {}).get("release_path") or []
        native = bool(paths) and all(p in ("DELIFEQ", "DELEX") for p in paths)
        av = a and a["cycles_per_s"]
        bv = b and b["cycles_per_s"]
        ok = None if not (av and bv and native) else av >= 1.25 * bv
        if not (av and bv):
            detail = "missing row"
        elif not native:
            detail = f"the nodes have no native release (release path {paths or '?'}): no comparison"
        else:
            detail = f"{fmt_rate(av)} vs {fmt_rate(bv)} cycles/s = {av / bv:.2f}x (release {paths[0]})"
        out.append(_target(
            "native-on-off-c1024", mode,
            f"try_acquire+release at concurrency 1024, N={n}: native_commands=True vs False, same nodes",
            av, bv, None if ok is None else av / bv, "ratio >= 1.25", ok, detail))
    return out


def fmt_rate(x: Optional[float]) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _f(x: Optional[float], digits: int = 1) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.0f} %"


def _s(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3f} s"


def markdown(doc: Dict[str, Any]) -> str:
    """The whole report as markdown."""
    m = doc["machine"]
    v = doc["versions"]
    lines: List[str] = []
    add = lines.append
    add(f"## quorumlock bench ({'quick' if doc['quick'] else 'full'}) - {doc['created']}")
    add("")
    add(f"`{doc['command']}`  ")
    add(f"machine: {m['nproc']} CPUs, {m.get('cpu_model') or '?'}, kernel {m['kernel']}, Python {m['python']}  ")
    libs = ", ".join(f"{k} {val}" for k, val in sorted(v["libraries"].items()) if val)
    add(f"versions: quorumlock {v['quorumlock']} [{v['implementation']}], server {v['server']}, "
        f"{v.get('redis_benchmark') or 'no redis-benchmark'}, loop {v.get('loop')}; {libs}  ")  # fmt: skip
    cfg = doc["config"]
    add(f"per row: {cfg['warmup_s']} s warm-up + {cfg['duration_s']} s measured; lock TTL {cfg['ttl_s']} s; "
        f"elapsed {doc['elapsed_s']:.0f} s")  # fmt: skip
    add("")
    add("Columns: *cycles/s* = acquire+release cycles completed per second (one non-blocking acquire attempt, "
        "and its release when it succeeded); *ceiling* = redis-benchmark SET/s over the nodes a row used / "
        "(2 x those nodes), measured in this run; *lock ops/s* = (acquire attempts + releases) / s; *client CPU* = "
        "this process's user+sys per cycle; *node CPU* = the nodes' user+sys per cycle (INFO cpu); *CPU-bound "
        "limit* = nproc / (client + node CPU per cycle), the rate if CPU were the only limit; *p50/p99/p99.9* = "
        "acquire latency (of one acquire_many call for batches); *failed* = attempts that did not acquire; *keys "
        "left* = DBSIZE over the nodes used, 0.2 s after the row ended.")  # fmt: skip
    add("")
    if doc["ceilings"]:
        add("### Ceilings (redis-benchmark on the same nodes, same run)")
        add("")
        add("| mode | N | nodes driven | SET/s total | EVALSHA/s total | ceiling cycles/s = SET/s / 2N | "
            "mix ceiling (SET+EVALSHA) | spread over rounds |")  # fmt: skip
        add("|---|---:|---:|---:|---:|---:|---:|---:|")
        for c in doc["ceilings"]:
            add(f"| {c['mode']} | {c['n']} | {c['nodes_used']} | {fmt_rate(c['set_total_rps'])} | "
                f"{fmt_rate(c['evalsha_total_rps'])} | **{fmt_rate(c['ceiling_cycles_per_s'])}** | "
                f"{fmt_rate(c['mix_ceiling_cycles_per_s'])} | "
                f"{'-' if c.get('spread') is None else format(c['spread'] * 100, '.0f') + ' %'} |")  # fmt: skip
        add("")
    for mode in cfg["modes"]:
        rows = [r for r in doc["rows"] if r["mode"] == mode]
        if not rows:
            continue
        add(f"### Throughput and latency: mode `{mode}`")
        add("")
        add("| N | library | workload | conc. | cycles/s | ceiling | % of ceiling | lock ops/s | client CPU µs/cycle "
            "| node CPU µs/cycle | CPU-bound limit | p50 µs | p99 µs | p99.9 µs | failed | keys left |")  # fmt: skip
        add("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        skipped = []
        for r in rows:
            if r["skipped"]:
                skipped.append(r)
                continue
            lat = r["latency"] or {}
            unit = " (per batch)" if lat.get("unit") == "batch" else ""
            nodes = "" if r["nodes_used"] == r["n"] else (" (own server)" if r["nodes_used"] == 0 else " (node 0)")
            add(f"| {r['n']} | {r['library']}{nodes} | {r['workload']} | {r['concurrency']} | "
                f"{fmt_rate(r['cycles_per_s'])} | {fmt_rate(r['ceiling_cycles_per_s'])} | {_pct(r['pct_of_ceiling'])} | "
                f"{fmt_rate(r['lock_ops_per_s'])} | {_f(r['cpu_us_per_cycle'], 2)} | "
                f"{_f(r.get('server_cpu_us_per_cycle'), 2)} | {fmt_rate(r.get('cpu_bound_cycles_per_s'))} | "
                f"{_f(lat.get('p50_us'))}{unit} | {_f(lat.get('p99_us'))} | {_f(lat.get('p999_us'))} | "
                f"{r['failed']} | {r['keys_left']} |")  # fmt: skip
        add("")
        if skipped:
            seen = set()
            for r in skipped:
                key = (r["id"], r["note"])
                if key in seen:
                    continue
                seen.add(key)
                add(f"- skipped `{r['id']}`: {r['note']}")
            add("")
    if doc["recovery"]:
        add("### Recovery after SIGKILL of node 0 (times from the crash, LocalCluster history + acquire loop)")
        add("")
        add("| mode | client restart guard | TTL | restart delay | restarted | serves locks again | counted in B's quorum "
            "| keys before -> after | A's lock survived | B acquired at | A's validity left then | granted twice |")  # fmt: skip
        add("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
        for r in doc["recovery"]:
            if r.get("error"):
                add(f"| {r['mode']} | {'on' if r['restart_guard'] else 'off'} | {r['ttl_s']} s | - | - | - | - | - | - "
                    f"| - | - | error: {r['error']} |")  # fmt: skip
                continue
            surv = {True: "yes", False: "no", None: "-"}[r.get("lock_survived")]
            twice = {True: "**YES**", False: "no", None: "-"}[r.get("granted_twice")]
            add(f"| {r['mode']} | {'on' if r['restart_guard'] else 'off'} | {r['ttl_s']} s | {_s(r['restart_delay_s'])} "
                f"| {_s(r.get('restart_after_s'))} | {_s(r.get('serves_after_s'))} | {_s(r.get('counted_again_after_s'))} "
                f"| {r.get('keys_before')} -> {r.get('keys_after')} | {surv} | {_s(r.get('second_acquired_after_s'))} "
                f"| {_s(r.get('first_validity_left_s'))} | {twice} |")  # fmt: skip
        add("")
    if doc["targets"]:
        add(f"### Engine targets (N={TARGET_N}, ratios within one run)")
        add("")
        for t in doc["targets"]:
            ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
            add(f"- **{t['status']}** [{t['mode']}] {t['description']} ({t['threshold']}): {t['detail']} "
                f"(ratio {ratio})")  # fmt: skip
        add("")
    for note in doc["notes"]:
        add(f"- note: {note}")
    return "\n".join(lines).rstrip() + "\n"
