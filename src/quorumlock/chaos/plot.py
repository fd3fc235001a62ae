"""A PNG of one run's timeline: who held which key when, and the faults.

One lane per (key, client); each holder interval the checker derived is a bar
(red where it overlaps another holder of the same key); rejected stale writes
are black crosses, accepted writes small ticks; faults are vertical lines
labelled at the top.  Needs matplotlib (the ``bench`` extra); without it
:func:`plot_timeline` raises ``RuntimeError`` saying so.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List

from .checker import Report

__all__ = ["plot_timeline"]

_FAULT_COLOURS = {
    "node": "tab:red", "clock": "tab:purple", "client": "tab:orange", "link": "tab:blue", "script": "tab:green",
}


def _category(name: str) -> str:
    head = name.split("-")[0]
    return {"node": "nodes", "clock": "clocks", "client": "clients", "link": "links",
            "script": "nodes"}.get(head, "other")


def plot_timeline(events: List[Dict[str, Any]], report: Report, path: str, title: str = "") -> str:
    """Write the PNG to ``path``; return ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(f"--plot needs matplotlib ({exc}); pip install matplotlib") from None
    meta = next((e for e in events if e.get("type") == "meta"), {})
    t0 = int(meta.get("t_start") or min((iv.start for iv in report.intervals), default=0))

    def x(ns: int) -> float:
        return (ns - t0) / 1e9

    lanes: Dict[tuple, List[Any]] = defaultdict(list)
    for iv in report.intervals:
        lanes[(iv.key, iv.client)].append(iv)
    overl = set()
    for ov in report.overlaps:
        overl.add(ov["first"]["lock"])
        overl.add(ov["second"]["lock"])
    order = sorted(lanes)
    ypos = {lane: i for i, lane in enumerate(order)}
    faults = [e for e in events if e.get("type") == "fault"
              and not (e.get("source") == "cluster" and e.get("name") == "node-up" and x(int(e["t"])) < 0.5)]
    cats = sorted({_category(e.get("name", "")) for e in faults})
    few = len(faults) <= 40
    height = max(3.0, 0.28 * len(order) + 1.8) + (0.35 * len(cats) + 0.6 if cats else 0)
    if cats:
        fig, (fx, ax) = plt.subplots(2, 1, figsize=(12, height), sharex=True,
                                     gridspec_kw={"height_ratios": [max(1, len(cats)), max(2, len(order))]})
    else:
        fig, ax = plt.subplots(figsize=(12, height))
        fx = None
    for lane, ivs in lanes.items():
        y = ypos[lane]
        ok = [(x(iv.start), max(x(iv.end) - x(iv.start), 1e-4)) for iv in ivs if iv.lock not in overl]
        bad = [(x(iv.start), max(x(iv.end) - x(iv.start), 1e-4)) for iv in ivs if iv.lock in overl]
        if ok:
            ax.broken_barh(ok, (y - 0.35, 0.7), facecolors="tab:gray", edgecolor="none")
        if bad:
            ax.broken_barh(bad, (y - 0.4, 0.8), facecolors="tab:red", edgecolor="black", linewidth=0.5)
    for op in events:
        if op.get("type") != "op" or op.get("op") != "write":
            continue
        lane = (op["key"], op.get("client"))
        if lane not in ypos:
            continue
        t = x(int(op.get("complete") or op["invoke"]))
        if op.get("status") == "stale":
            ax.plot([t], [ypos[lane]], marker="x", color="black", markersize=8)
        elif op.get("status") == "ok" and len(report.intervals) < 400:
            ax.plot([t], [ypos[lane]], marker="|", color="tab:green", markersize=8)
    if fx is not None:
        cy = {c: i for i, c in enumerate(cats)}
        for ev in faults:
            name = ev.get("name", "")
            c = _category(name)
            colour = _FAULT_COLOURS.get(name.split("-")[0], "tab:brown")
            t = x(int(ev["t"]))
            fx.plot([t], [cy[c]], marker="|", color=colour, markersize=10)
            if few:
                fx.annotate(f"{name} {ev.get('target', '')}", (t, cy[c]), xytext=(2, 4), textcoords="offset points",
                            fontsize=6, rotation=20, color=colour)
                ax.axvline(t, color=colour, linewidth=0.7, alpha=0.5)
        fx.set_yticks(range(len(cats)))
        fx.set_yticklabels(cats, fontsize=7)
        fx.set_ylim(-0.6, len(cats) - 0.2)
        fx.set_title(title or "faults (top); holders per key over time (red: overlapping holders; "
                     "x: stale write rejected)", fontsize=9)
        fx.grid(axis="x", alpha=0.3)
    else:
        ax.set_title(title, fontsize=9)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([f"{k} / {c}" for k, c in order], fontsize=7)
    ax.set_xlabel("seconds (host CLOCK_MONOTONIC, from the start of the run)")
    ax.set_ylabel("key / client")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
