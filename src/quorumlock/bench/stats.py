"""Latency summaries: nearest-rank percentiles and a log-bucket histogram."""

from __future__ import annotations

import bisect
import math
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["HIST_EDGES_US", "hist_quantile", "summarize"]

#: Upper bounds (µs) of the histogram buckets: 10 per decade, 0.1 µs .. 100 s.
HIST_EDGES_US: List[float] = [round(10 ** (k / 10), 6) for k in range(-10, 81)]


def _rank(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..1) of sorted nanoseconds, in µs."""
    n = len(sorted_ns)
    i = min(n - 1, max(0, math.ceil(q * n) - 1))
    return sorted_ns[i] / 1000.0


def summarize(latencies_ns: Sequence[int], unit: str = "call") -> Dict[str, Any]:
    """``{"unit", "count", "p50_us", "p99_us", "p999_us", "mean_us", "max_us", "hist"}``."""
    s = sorted(latencies_ns)
    n = len(s)
    out: Dict[str, Any] = {"unit": unit, "count": n}
    if not n:
        out.update(p50_us=None, p99_us=None, p999_us=None, mean_us=None, max_us=None, hist=[])
        return out
    out["p50_us"] = round(_rank(s, 0.50), 2)
    out["p99_us"] = round(_rank(s, 0.99), 2)
    out["p999_us"] = round(_rank(s, 0.999), 2)
    out["mean_us"] = round(sum(s) / n / 1000.0, 2)
    out["max_us"] = round(s[-1] / 1000.0, 2)
    hist = []
    prev = 0
    for edge in HIST_EDGES_US:
        idx = bisect.bisect_right(s, edge * 1000.0)
        if idx > prev:
            hist.append([edge, idx - prev])
        prev = idx
        if prev >= n:
            break
    if prev < n:  # beyond the last edge
        hist.append([s[-1] / 1000.0, n - prev])
    out["hist"] = hist
    return out


def hist_quantile(hist: Sequence[Sequence[float]], q: float) -> Optional[float]:
    """Upper bound of the bucket holding quantile ``q`` (for plots from JSON)."""
    total = sum(c for _, c in hist)
    if not total:
        return None
    acc = 0.0
    for edge, c in hist:
        acc += c
        if acc >= q * total:
            return edge
    return hist[-1][0]
