"""PNG plots of a result document (matplotlib, Agg backend, small files).

* ``throughput_vs_concurrency.png`` -- cycles/s against tasks/threads, one
  panel per (N, mode), one line per library and API, the ceiling dashed;
* ``latency_distribution.png`` -- CDF of the acquire latency of every
  per-call row at N=3 (or the nearest N run), one panel per mode;
* ``fsync_vs_volatile.png`` -- quorumlock's workloads side by side in each
  mode, as % of that mode's ceiling (the ratio, so the modes compare even on
  a noisy machine), with cycles/s on the bars.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

__all__ = ["PLOT_FILES", "make_plots"]

PLOT_FILES = ("throughput_vs_concurrency.png", "latency_distribution.png", "fsync_vs_volatile.png")
_DPI = 72


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str) -> None:
    """PNG, reduced to a 128-colour palette: the plots are committed, keep them small."""
    import io

    buf = io.BytesIO()
    # bbox_inches="tight": a label or legend past the figure's edge is kept,
    # not cut off.
    fig.savefig(buf, dpi=_DPI, format="png", bbox_inches="tight", pad_inches=0.08)
    try:
        from PIL import Image  # a matplotlib dependency
    except ImportError:  # pragma: no cover
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        return
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(colors=128)
    img.save(path, format="PNG", optimize=True)


def _figure_legend(fig: Any, ncol: int) -> int:
    """One legend for the whole figure, below its panels (never over a
    curve); returns how many entries it has."""
    handles, labels = [], []
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    return len(labels)


def _ok_rows(doc: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [r for r in doc["rows"] if not r["skipped"] and r["cycles"]]


def _plot_n(doc: Dict[str, Any]) -> int:
    ns = sorted({r["n"] for r in _ok_rows(doc)}) or [1]
    return min(ns, key=lambda n: (abs(n - 3), n))


def _throughput(doc: Dict[str, Any], path: str) -> None:
    plt = _plt()
    rows = [r for r in _ok_rows(doc) if r["batch"] == 1 and not r["workload"].startswith("contended")]
    modes = [m for m in doc["config"]["modes"] if any(r["mode"] == m for r in rows)] or ["-"]
    ns = sorted({r["n"] for r in rows}) or [1]
    fig, axes = plt.subplots(len(ns), len(modes), figsize=(4.6 * len(modes), 3.0 * len(ns)),
                             squeeze=False, sharey=True)  # fmt: skip
    cmap = plt.get_cmap("tab20")
    colors: Dict[str, Any] = {}
    for i, n in enumerate(ns):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            sub = [r for r in rows if r["n"] == n and r["mode"] == mode]
            series: Dict[str, List[Any]] = {}
            for r in sub:
                label = f"{r['library']}{_where(r)} [{r['api']}]"
                if "fencing" in r["workload"]:
                    label += " fencing"
                series.setdefault(label, []).append((r["concurrency"], r["cycles_per_s"]))
            for label, pts in sorted(series.items()):
                pts.sort()
                style = "-o" if label.startswith("quorumlock") else "--."
                color = colors.setdefault(label, cmap(len(colors) % 20))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, markersize=4, linewidth=1.2,
                        color=color)  # fmt: skip
            ceil = next((c["ceiling_cycles_per_s"] for c in doc["ceilings"]
                         if c["mode"] == mode and c["n"] == n and c["nodes_used"] == n), None)  # fmt: skip
            if ceil:
                ax.axhline(ceil, color="k", linestyle=":", linewidth=1)
                ax.text(1, ceil, " ceiling", va="bottom", fontsize=7)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{mode}, N={n}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="both", alpha=0.25)
            if j == 0:
                ax.set_ylabel("cycles/s", fontsize=8)
            if i == len(ns) - 1:
                ax.set_xlabel("concurrency (tasks / threads)", fontsize=8)
    labels = _figure_legend(fig, ncol=3)
    fig.suptitle("acquire+release cycles/s vs concurrency\n(dotted: redis-benchmark ceiling)", fontsize=10)
    # Room below the panels for the legend rows (0.2 in each) and above for
    # the two-line title, added to the figure rather than taken from the panels.
    rows = (labels + 2) // 3
    h = 3.0 * len(ns) + 0.6 + 0.2 * rows
    fig.set_figheight(h)
    fig.tight_layout(rect=(0, (0.1 + 0.2 * rows) / h, 1, 1 - 0.5 / h))
    _save(fig, path)
    plt.close(fig)


def _latency(doc: Dict[str, Any], path: str) -> None:
    plt = _plt()
    n = _plot_n(doc)
    rows = [r for r in _ok_rows(doc) if r["n"] == n and r["latency"] and r["latency"]["unit"] == "call"]
    modes = [m for m in doc["config"]["modes"] if any(r["mode"] == m for r in rows)] or ["-"]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 3.6), squeeze=False, sharey=True)
    n_series = len({(r["library"], r["workload"]) for r in rows})
    cmap = plt.get_cmap("tab10" if n_series <= 10 else "tab20")  # no two series share a colour
    colors: Dict[str, Any] = {}  # one colour per series in every panel: one shared legend
    for j, mode in enumerate(modes):
        ax = axes[0][j]
        for r in [r for r in rows if r["mode"] == mode]:
            hist = r["latency"]["hist"]
            total = sum(c for _, c in hist)
            if not total:
                continue
            xs, ys, acc = [], [], 0
            for edge, c in hist:
                acc += c
                xs.append(edge)
                ys.append(acc / total)
            style = "-" if r["library"] == "quorumlock" else "--"
            ax.step(xs, ys, style, where="post", linewidth=1.1, label=f"{r['library']} {r['workload']}",
                    color=colors.setdefault(f"{r['library']} {r['workload']}", cmap(len(colors) % cmap.N)))
        ax.set_xscale("log")
        ax.set_title(f"acquire latency CDF, {mode}, N={n}", fontsize=9)
        ax.set_xlabel("µs (log)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].set_ylabel("fraction of acquires", fontsize=8)
    # The legend goes below the panels: inside, it covered the slowest curves
    # (the lower right of a CDF is where they rise).
    rows = (_figure_legend(fig, ncol=3) + 2) // 3
    h = 3.6 + 0.2 * rows
    fig.set_figheight(h)
    fig.tight_layout(rect=(0, (0.1 + 0.2 * rows) / h, 1, 1))
    _save(fig, path)
    plt.close(fig)


def _modes(doc: Dict[str, Any], path: str) -> None:
    plt = _plt()
    rows = [r for r in _ok_rows(doc) if r["library"] == "quorumlock"]
    modes = [m for m in doc["config"]["modes"] if any(r["mode"] == m for r in rows)] or ["-"]
    ns = sorted({r["n"] for r in rows}) or [1]
    wls: List[str] = []
    for r in rows:
        if r["workload"] not in wls:
            wls.append(r["workload"])
    fig, axes = plt.subplots(len(ns), 1, figsize=(max(6.0, 0.45 * len(wls) * len(modes) + 2), 2.9 * len(ns)),
                             squeeze=False)  # fmt: skip
    width = 0.8 / max(1, len(modes))
    for i, n in enumerate(ns):
        ax = axes[i][0]
        top_pct = 0.0
        for k, mode in enumerate(modes):
            xs, ys, labels = [], [], []
            for w_i, w in enumerate(wls):
                r = next((r for r in rows if r["n"] == n and r["mode"] == mode and r["workload"] == w), None)
                if r is None or r["pct_of_ceiling"] is None:
                    continue
                xs.append(w_i + (k - (len(modes) - 1) / 2) * width)
                ys.append(r["pct_of_ceiling"])
                labels.append(r["cycles_per_s"])
            bars = ax.bar(xs, ys, width, label=mode)
            for b, v in zip(bars, labels):
                txt = f"{v / 1000:.0f}k" if v >= 1000 else f"{v:.0f}"
                # Vertical: side by side, horizontal labels of adjacent bars overlapped.
                ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 1.5, txt, ha="center", va="bottom",
                        fontsize=6, rotation=90)  # fmt: skip
            top = max([top_pct] + ys)
            top_pct = top
        ax.set_ylim(0, max(100.0, top_pct) * 1.25)
        ax.axhline(100, color="k", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(wls)))
        ax.set_xticklabels(wls, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"quorumlock, N={n}: % of the mode's ceiling (labels: cycles/s)", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel("% of ceiling", fontsize=8)
        # Outside, to the right: inside, it sat on the tallest bars.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        ax.grid(True, axis="y", alpha=0.25)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _where(r: Dict[str, Any]) -> str:
    """A row label's note on the nodes it drove."""
    if r["nodes_used"] == 0:
        return " (own server)"
    return " (node 0)" if r["nodes_used"] != r["n"] else ""


def make_plots(doc: Dict[str, Any], directory: str) -> List[str]:
    """Write the PNGs into ``directory`` (created); return their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f) for f in PLOT_FILES]
    _throughput(doc, paths[0])
    _latency(doc, paths[1])
    _modes(doc, paths[2])
    return paths
