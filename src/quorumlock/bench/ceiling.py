"""The ceiling: the nodes' own command rate, measured with ``redis-benchmark``.

With N nodes one acquire+release cycle costs 2N commands, so no
client on this machine can do more than

    ceiling (cycles/s) = sum over the N nodes of SET/s  /  (2 N)

with every node driven at the same time (one ``redis-benchmark`` process per
node, all running concurrently: on a 2-core machine the nodes share the
cores, exactly as they do under the lock workloads).  Pipelining (``-P 64``)
takes the benchmark client's own overhead out of the figure.

A second, script-like command is measured the same way: ``EVALSHA`` of the
release script (compare-and-delete) on random absent keys, what a release
costs a node beyond the script lookup.  The *mix* ceiling, one ``SET`` plus one
``EVALSHA`` per node per cycle, is ``sum_i 1 / (1/set_i + 1/evalsha_i) / N``.

Every row of the report is printed next to the SET ceiling of the nodes it
used, measured on those nodes in the same run.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["benchmark_version", "find_redis_benchmark", "measure", "reset_nodes"]


def find_redis_benchmark(path: Optional[str] = None) -> Optional[str]:
    """``redis-benchmark`` (or ``valkey-benchmark``) from ``path`` or PATH, else None."""
    if path:
        return shutil.which(path) or None
    return shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")


def benchmark_version(binary: str) -> Optional[str]:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


def _parse_rps(out: str) -> float:
    """The requests/s of the last data row of ``--csv`` output."""
    rows = [r for r in csv.reader(io.StringIO(out)) if r]
    for r in reversed(rows):
        if len(r) >= 2 and r[0] != "test":
            return float(r[1])
    raise ValueError(f"no result in redis-benchmark output: {out[-300:]!r}")


def _run_concurrently(binary: str, host: str, ports: Sequence[int], args: Sequence[str],
                      timeout: float) -> List[float]:  # fmt: skip
    procs = [
        subprocess.Popen([binary, "-h", host, "-p", str(p), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for p in ports
    ]  # fmt: skip
    rps: List[float] = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"redis-benchmark failed ({p.returncode}): {err.strip()[-300:]}")
            rps.append(_parse_rps(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return rps


def reset_nodes(clients: Sequence[Any], mode: str) -> None:
    """FLUSHALL every node; for AOF modes also rewrite the AOF (so that gigabytes
    of benchmark writes do not pile up on disk) and wait for the rewrite."""
    for c in clients:
        c.flushall()
    if mode in ("fsync", "everysec"):
        for c in clients:
            try:
                c.bgrewriteaof()
            except Exception:  # a rewrite already running is fine
                pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            busy = False
            for c in clients:
                info = c.info("persistence")
                if info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled"):
                    busy = True
            if not busy:
                break
            time.sleep(0.02)


def measure(
    binary: str,
    host: str,
    ports: Sequence[int],
    clients: Sequence[Any],
    *,
    requests: int,
    pipeline: int = 64,
    connections: int = 50,
    keyspace: int = 100_000,
    script: bool = True,
) -> Dict[str, Any]:
    """One ceiling round on ``ports`` (all at once).

    Returns ``{"set": {"per_node_rps": [...], "total_rps": x}, "evalsha": {...}}``
    (``evalsha`` only with ``script``)."""
    from .._scripts import RELEASE

    base = ["-P", str(pipeline), "-c", str(connections), "-n", str(requests), "-r", str(keyspace), "-q", "--csv"]
    # Generous: even at 20k requests/s per node the run would finish.
    timeout = 60.0 + requests / 20_000
    out: Dict[str, Any] = {}
    rps = _run_concurrently(binary, host, ports, [*base, "-t", "set"], timeout)
    out["set"] = {"per_node_rps": rps, "total_rps": sum(rps)}
    if script:
        shas = {c.script_load(RELEASE) for c in clients}
        (sha,) = shas
        rps = _run_concurrently(binary, host, ports,
                                [*base, "evalsha", sha, "1", "ceiling:__rand_int__", "token"], timeout)  # fmt: skip
        out["evalsha"] = {"per_node_rps": rps, "total_rps": sum(rps)}
    return out
