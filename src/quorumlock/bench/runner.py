"""``quorumlock bench``: start nodes, measure, report.

For every mode and every N the runner starts a fresh ``LocalCluster``,
measures the ceiling with ``redis-benchmark`` (before the workloads, and
again after them in a full run), runs every selected workload on those nodes
(FLUSHALL + ``CONFIG RESETSTAT`` before each row, DBSIZE and
``INFO commandstats`` after it), and stops the cluster.  Then the recovery
scenarios run, each on its own cluster.  The result is one document (the
JSON of ``schema.json``) from which the markdown table, the targets and the
plots are all derived.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from . import ceiling as _ceiling
from . import peers as _peers  # noqa: F401  (registers the peer workloads)
from . import postgres as _postgres  # registers the PostgreSQL advisory-lock rows
from .progress import LogCapture, Progress
from .stats import summarize
from .workloads import Context, Measurement, Workload, select

__all__ = ["BenchConfig", "add_arguments", "config_from_args", "main", "run", "run_from_args"]

_MODES = ("volatile", "fsync", "everysec", "unsafe")
_SETTLE = 0.2  # seconds between the end of a row and its DBSIZE


@dataclass
class BenchConfig:
    """Everything a run depends on (the CLI flags, resolved)."""

    modes: List[str] = field(default_factory=lambda: ["volatile", "fsync"])
    nodes: List[int] = field(default_factory=lambda: [1, 3, 5])
    duration: float = 4.0
    warmup: float = 0.5
    ttl: float = 10.0
    loop: str = "uvloop"
    workloads: Optional[List[str]] = None
    peers: bool = True
    quick: bool = False
    ceiling: bool = True
    ceiling_requests: int = 1_000_000
    ceiling_rounds: int = 2
    pipeline: int = 64
    recovery: bool = True
    recovery_modes: Optional[List[str]] = None  # None: default_scenarios(modes)
    recovery_nodes: int = 3
    recovery_ttl: float = 3.0
    recovery_preload: int = 100_000
    server: Optional[str] = None
    redis_benchmark: Optional[str] = None
    base_dir: Optional[str] = None
    progress: bool = True
    command: str = "quorumlock bench"


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def _csv(kind: Any) -> Any:
    def parse(s: str) -> List[Any]:
        try:
            return [kind(x.strip()) for x in s.split(",") if x.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


#: Where a measuring run writes its plots unless ``--plots DIR`` or ``--no-plots``.
DEFAULT_PLOTS_DIR = "quorumlock-bench-plots"

#: What ``quorumlock bench`` suggests installing for the peers and the plots.
BENCH_EXTRA_HINT = "python -m pip install 'quorumlock[bench]'"


def _bench_extra() -> List[str]:
    """Distribution names of the ``bench`` extra, from the installed metadata."""
    try:
        from importlib.metadata import PackageNotFoundError, requires
    except ImportError:  # pragma: no cover - Python < 3.8
        return []
    try:
        reqs = requires("quorumlock") or []
    except PackageNotFoundError:
        return []
    names = []
    for r in reqs:
        if "extra ==" in r and ("'bench'" in r or '"bench"' in r):
            names.append(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0])
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``quorumlock bench`` / ``python -m quorumlock.bench``."""
    p.add_argument("--quick", action="store_true",
                   help="about a minute: N=1,3, 0.5 s rows, fewer workloads and peers, one ceiling round")  # fmt: skip
    p.add_argument("--modes", type=_csv(str), default=None, metavar="M,M",
                   help="node modes, of volatile,fsync,everysec,unsafe (default: volatile,fsync)")  # fmt: skip
    p.add_argument("--nodes", type=_csv(int), default=None, metavar="N,N",
                   help="cluster sizes (default: 1,3,5; quick: 1,3)")  # fmt: skip
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="measured seconds per row (default 4; quick 0.5)")  # fmt: skip
    p.add_argument("--warmup", type=float, default=None, metavar="S",
                   help="unmeasured seconds before each row (default 0.5; quick 0.1)")  # fmt: skip
    p.add_argument("--ttl", type=float, default=10.0, metavar="S", help="lock TTL of the workloads (default 10)")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default=None,
                   help="event loop of the async workloads (default: uvloop if installed)")  # fmt: skip
    p.add_argument("--workloads", type=_csv(str), default=None, metavar="PAT,PAT",
                   help="library/workload globs (e.g. 'quorumlock/*,redis-py.Lock/blocking-seq'); a bare "
                        "name matches any library; see --list")  # fmt: skip
    p.add_argument("--no-peers", dest="peers", action="store_false", help="quorumlock only")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false", help="skip redis-benchmark")
    p.add_argument("--ceiling-requests", type=int, default=None, metavar="K",
                   help="requests per node per ceiling command (default 1000000; quick 150000)")  # fmt: skip
    p.add_argument("--ceiling-rounds", type=int, default=None, choices=(1, 2),
                   help="1: before the workloads; 2: before and after (default 2; quick 1)")  # fmt: skip
    p.add_argument("--pipeline", type=int, default=64, metavar="P", help="redis-benchmark -P (default 64)")
    p.add_argument("--redis-benchmark", default=None, metavar="PATH", help="redis-benchmark binary")
    p.add_argument("--no-recovery", dest="recovery", action="store_false", help="skip the kill/restart scenarios")
    p.add_argument("--recovery-modes", type=_csv(str), default=None, metavar="M,M",
                   help="modes of the recovery scenarios (default: the --modes, then unsafe without and "
                        "with the client restart guard); 'unsafe+guard' names the last")  # fmt: skip
    p.add_argument("--recovery-nodes", type=int, default=3, metavar="N", help="nodes in each scenario (>= 3)")
    p.add_argument("--recovery-ttl", type=float, default=None, metavar="S",
                   help="TTL of the scenario's locks and max_ttl of its nodes (default 3; quick 1)")  # fmt: skip
    p.add_argument("--recovery-preload", type=int, default=None, metavar="K",
                   help="keys written to the killed node first (default 100000; quick 10000)")  # fmt: skip
    p.add_argument("--server", default=None, metavar="PATH", help="redis-server binary (default: found on PATH)")
    p.add_argument("--base-dir", default=None, metavar="DIR", help="parent directory of the nodes' directories")
    p.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                   help="write the results (schema: quorumlock/bench/schema.json)")  # fmt: skip
    p.add_argument("--markdown", dest="markdown_path", default=None, metavar="PATH",
                   help="also write the markdown report to PATH")  # fmt: skip
    p.add_argument("--plots", dest="plots_dir", default=None, metavar="DIR",
                   help=f"write PNG plots into DIR (default for a measuring run: ./{DEFAULT_PLOTS_DIR}; "
                        "needs matplotlib, in the 'bench' extra)")  # fmt: skip
    p.add_argument("--no-plots", dest="plots", action="store_false", help="write no plots")
    p.add_argument("--from-json", dest="from_json", default=None, metavar="PATH",
                   help="render the table/plots of an earlier --json file instead of measuring")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")


def _default_loop() -> str:
    try:
        import uvloop  # noqa: F401

        return "uvloop"
    except ImportError:
        return "asyncio"


def config_from_args(args: argparse.Namespace, command: str = "quorumlock bench") -> BenchConfig:
    q = bool(args.quick)

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if q else full)

    modes = pick(args.modes, ["volatile", "fsync"], ["volatile", "fsync"])
    for m in modes:
        if m not in _MODES:
            raise ValueError(f"--modes: unknown mode {m!r} (choose from {', '.join(_MODES)})")
    nodes = pick(args.nodes, [1, 3, 5], [1, 3])
    if not nodes or any(n < 1 for n in nodes):
        raise ValueError(f"--nodes must be positive integers, got {nodes}")
    rmodes = args.recovery_modes
    if rmodes:
        for m in rmodes:
            if m.replace("+guard", "") not in _MODES:
                raise ValueError(f"--recovery-modes: unknown mode {m!r}")
    if args.recovery_nodes < 3:
        raise ValueError("--recovery-nodes must be >= 3")
    return BenchConfig(
        modes=list(modes),
        nodes=list(nodes),
        duration=pick(args.duration, 4.0, 0.5),
        warmup=pick(args.warmup, 0.5, 0.1),
        ttl=args.ttl,
        loop=args.loop or _default_loop(),
        workloads=args.workloads,
        peers=args.peers,
        quick=q,
        ceiling=args.ceiling,
        ceiling_requests=pick(args.ceiling_requests, 1_000_000, 150_000),
        ceiling_rounds=pick(args.ceiling_rounds, 2, 1),
        pipeline=args.pipeline,
        recovery=args.recovery,
        recovery_modes=rmodes,
        recovery_nodes=args.recovery_nodes,
        recovery_ttl=pick(args.recovery_ttl, 3.0, 1.0),
        recovery_preload=pick(args.recovery_preload, 100_000, 10_000),
        server=args.server,
        redis_benchmark=args.redis_benchmark,
        base_dir=args.base_dir,
        progress=args.progress,
        command=command,
    )


# --------------------------------------------------------------------------
# machine and versions
# --------------------------------------------------------------------------


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _machine() -> Dict[str, Any]:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "nproc": os.cpu_count() or 1,
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": load,
    }


def _server_version(server: str) -> Optional[str]:
    try:
        out = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip() or None


# --------------------------------------------------------------------------
# one row
# --------------------------------------------------------------------------


def _nodes_used(w: Workload, n: int) -> int:
    """How many of the cluster's nodes a row drives (0: a server of its own)."""
    return 0 if w.external else (1 if w.single_node else n)


def _skipped_row(w: Workload, mode: str, n: int, note: str) -> Dict[str, Any]:
    return {
        "id": w.id, "library": w.library, "workload": w.name, "api": w.api, "description": w.description,
        "mode": mode, "n": n, "nodes_used": _nodes_used(w, n),
        "concurrency": w.concurrency, "batch": w.batch, "skipped": True, "note": note,
        "cycles": None, "acquisitions": None, "attempts": None, "failed": None, "releases_ok": None,
        "warmup_attempts": None, "wall_s": None, "cpu_s": None, "cycles_per_s": None, "lock_ops_per_s": None,
        "cpu_us_per_cycle": None, "latency": None, "keys_left": None, "overlaps": None,
        "ceiling_cycles_per_s": None, "pct_of_ceiling": None, "mix_ceiling_cycles_per_s": None,
        "pct_of_mix_ceiling": None, "server_set_calls": None, "consistent": None,
    }  # fmt: skip


def _sig(x: float, digits: int = 7) -> float:
    """``x`` rounded to ``digits`` significant digits (0.0 stays 0.0)."""
    if not x or not math.isfinite(x):
        return float(x)
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def _row(w: Workload, mode: str, n: int, m: Measurement, keys_left: int, set_calls: List[int]) -> Dict[str, Any]:
    row = _skipped_row(w, mode, n, None)  # type: ignore[arg-type]
    # The rates are derived from the times as reported, and every figure keeps
    # 7 significant digits (not a fixed number of decimals): a slow or short
    # row (a few cycles/s, well under a millisecond of CPU) then still agrees
    # with its own counts, which fixed decimals broke (cycles_per_s to 0.1 is
    # off by more than 1e-3 below 50 cycles/s, cpu_s to 1 us below 0.5 ms).
    wall_s = _sig(m.wall_s)
    cpu_s = _sig(m.cpu_s)
    wall = wall_s or 1e-9
    row.update(
        skipped=False,
        cycles=m.cycles,
        acquisitions=m.acquisitions,
        attempts=m.attempts,
        failed=m.attempts - m.acquisitions,
        releases_ok=m.releases_ok,
        warmup_attempts=m.warmup_attempts,
        wall_s=wall_s,
        cpu_s=cpu_s,
        cycles_per_s=_sig(m.cycles / wall),
        lock_ops_per_s=_sig((m.attempts + m.cycles) / wall),
        cpu_us_per_cycle=_sig(cpu_s / m.cycles * 1e6) if m.cycles else None,
        latency=summarize(m.latencies_ns, m.latency_unit),
        keys_left=keys_left,
        overlaps=m.overlaps,
        server_set_calls=set_calls,
    )
    # Every quorumlock per-call attempt sends one SET to every node: what the
    # servers counted must be what the driver counted.
    if w.library == "quorumlock" and w.batch == 1 and "fencing" not in w.name:
        row["consistent"] = all(c == m.warmup_attempts + m.attempts for c in set_calls)
    if m.extra:
        row["extra"] = dict(m.extra)
    notes = []
    if m.cycles != m.acquisitions:
        notes.append(f"{m.acquisitions - m.cycles} acquired locks were not released")
    if m.overlaps:
        notes.append(f"MUTUAL EXCLUSION: {m.overlaps} overlapping holders seen in process")
    if row["consistent"] is False:
        notes.append(f"server SET counts {set_calls} != attempts {m.warmup_attempts + m.attempts}")
    drain = m.extra.get("drain_s") or 0.0
    if drain > 0.05:
        notes.append(f"the slowest node was {drain:.2f} s behind at the end (drained inside the window)")
    if "fencing" in w.name and keys_left:
        notes.append("keys left include the per-key fence counters, kept by design (docs/fencing.md)")
    lost = [m.warmup_attempts + m.attempts - c for c in set_calls]
    if row["consistent"] is False and any(x > 0 for x in lost):
        notes.append("a node missed SETs: the client had dropped that connection (see extra.client_log)")
    row["note"] = "; ".join(notes) or None
    return row


def _cpu_budget(row: Dict[str, Any], m: Measurement, node_cpu: float) -> None:
    """Node CPU per cycle, and the cycles/s this machine could do if it did
    nothing but this row's client and nodes (nproc / total CPU per cycle):
    a row close to that limit is CPU-bound; far below it, latency-bound."""
    done = m.warmup_attempts + m.attempts
    if not (done and m.cycles):
        row["server_cpu_us_per_cycle"] = None
        row["cpu_bound_cycles_per_s"] = None
        return
    # INFO cpu covers warm-up + window; scale to the window by attempts.
    node = node_cpu * (m.attempts / done) / m.cycles
    row["server_cpu_us_per_cycle"] = round(node * 1e6, 3)
    total = node + m.cpu_s / m.cycles
    row["cpu_bound_cycles_per_s"] = round((os.cpu_count() or 1) / total, 1) if total > 0 else None


def _server_cpu(clients: Sequence[Any]) -> float:
    """user+sys CPU seconds of the nodes so far (INFO cpu), summed."""
    total = 0.0
    for c in clients:
        st = c.info("cpu")
        total += float(st.get("used_cpu_user", 0.0)) + float(st.get("used_cpu_sys", 0.0))
    return total


def _set_calls(clients: Sequence[Any]) -> List[int]:
    out = []
    for c in clients:
        st = c.info("commandstats")
        out.append(int(st.get("cmdstat_set", {}).get("calls", 0)))
    return out


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


def _ceiling_entry(mode: str, n: int, used: int, rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    sets = [r["set"]["total_rps"] for r in rounds]
    evs = [r["evalsha"]["total_rps"] for r in rounds if "evalsha" in r]
    set_total = sum(sets) / len(sets)
    ev_total = sum(evs) / len(evs) if evs else None
    mix = None
    if evs:
        # Per node: one SET and one EVALSHA per cycle, rates averaged over rounds.
        per_node = []
        for i in range(used):
            s = sum(r["set"]["per_node_rps"][i] for r in rounds) / len(rounds)
            e = sum(r["evalsha"]["per_node_rps"][i] for r in rounds if "evalsha" in r) / len(evs)
            per_node.append(1.0 / (1.0 / s + 1.0 / e) if s and e else 0.0)
        mix = round(sum(per_node) / used, 1)
    spread = (max(sets) - min(sets)) / set_total if len(sets) > 1 and set_total else None
    return {
        "mode": mode,
        "n": n,
        "nodes_used": used,
        "rounds": rounds,
        "set_total_rps": round(set_total, 1),
        "evalsha_total_rps": None if ev_total is None else round(ev_total, 1),
        "ceiling_cycles_per_s": round(set_total / (2 * used), 1),
        "mix_ceiling_cycles_per_s": mix,
        "spread": None if spread is None else round(spread, 4),
    }


def _measure_ceiling(cfg: BenchConfig, binary: str, host: str, ports: Sequence[int], clients: Sequence[Any],
                     mode: str, when: str) -> Dict[str, Any]:  # fmt: skip
    r = _ceiling.measure(binary, host, ports, clients, requests=cfg.ceiling_requests, pipeline=cfg.pipeline)
    _ceiling.reset_nodes(clients, mode)
    r["when"] = when
    return r


class _ClusterBench:
    """The rows and ceilings of one (mode, N) cluster."""

    def __init__(self, cfg: BenchConfig, mode: str, n: int, cluster: Any, clients: List[Any],
                 binary: Optional[str], progress: Progress, separate_node0: bool) -> None:  # fmt: skip
        self.cfg = cfg
        self.mode = mode
        self.n = n
        self.cluster = cluster
        self.clients = clients
        self.binary = binary
        self.progress = progress
        self.separate_node0 = separate_node0
        self.rounds_all: List[Dict[str, Any]] = []
        self.rounds_one: List[Dict[str, Any]] = []
        self.rows: List[Dict[str, Any]] = []

    def ceiling_round(self, when: str) -> None:
        if not self.binary:
            return
        c, prog = self.cluster, self.progress
        prog.step(f"{self.mode} N={self.n}: ceiling ({when})")
        self.rounds_all.append(_measure_ceiling(self.cfg, self.binary, c.host, c.ports, self.clients, self.mode, when))
        prog.advance()
        if self.separate_node0:
            prog.step(f"{self.mode} N={self.n}: ceiling node 0 ({when})")
            self.rounds_one.append(_measure_ceiling(self.cfg, self.binary, c.host, c.ports[:1], self.clients[:1],
                                                    self.mode, when))  # fmt: skip
            prog.advance()

    def run_row(self, w: Workload, key_prefix: str) -> None:
        cfg, mode, n, cluster = self.cfg, self.mode, self.n, self.cluster
        self.progress.step(f"{mode} N={n}: {w.id}")
        try:
            reason = w.skip_reason()
            if reason is not None:
                self.rows.append(_skipped_row(w, mode, n, reason))
                return
            k = _nodes_used(w, n)
            used = self.clients[:k]
            _ceiling.reset_nodes(used, mode)
            for c in used:
                c.config_resetstat()
            ctx = Context(urls=cluster.urls[:k], ports=cluster.ports[:k], host=cluster.host, mode=mode, n=n,
                          ttl=cfg.ttl, duration=cfg.duration, warmup=cfg.warmup, loop=cfg.loop,
                          key_prefix=key_prefix, base_dir=cfg.base_dir)  # fmt: skip
            gc.collect()
            cpu0 = _server_cpu(used)
            log = LogCapture()
            try:
                m = w.run(ctx)
            except Exception as exc:  # one broken peer must not end the run
                self.rows.append(_skipped_row(w, mode, n, f"failed: {exc!r}"[:300]))
                self.progress.write(f"# {mode} N={n} {w.id} failed: {exc!r}")
                return
            finally:
                log.close()
            node_cpu = _server_cpu(used) - cpu0
            # Releases of a decided quorum may still be in flight to the last
            # node: let them land, then count what stays (orphans).
            time.sleep(_SETTLE)
            keys_left = sum(int(c.dbsize()) for c in used)
            row = _row(w, mode, n, m, keys_left, _set_calls(used))
            if w.external:  # the nodes' CPU and keys say nothing about its own server
                row["server_cpu_us_per_cycle"] = row["cpu_bound_cycles_per_s"] = None
                row["keys_left"] = m.extra.get("advisory_locks_left")
                row["server_set_calls"] = None
            else:
                _cpu_budget(row, m, node_cpu)
            if log.messages:
                row.setdefault("extra", {})["client_log"] = log.messages[:5]
            self.rows.append(row)
        finally:
            self.progress.advance()

    def finish(self) -> List[Dict[str, Any]]:
        """The ceiling entries; fills every row's ceiling columns."""
        if not self.rounds_all:
            return []
        ce = _ceiling_entry(self.mode, self.n, self.n, self.rounds_all)
        out = [ce]
        c1 = _ceiling_entry(self.mode, self.n, 1, self.rounds_one) if self.rounds_one else None
        if c1 is not None:
            out.append(c1)
        elif self.n == 1:
            c1 = ce
        for r in self.rows:
            c = c1 if r["nodes_used"] == 1 else ce
            if r["skipped"] or c is None or r["nodes_used"] == 0:
                continue
            r["ceiling_cycles_per_s"] = c["ceiling_cycles_per_s"]
            r["pct_of_ceiling"] = round(100.0 * r["cycles_per_s"] / c["ceiling_cycles_per_s"], 1)
            if c["mix_ceiling_cycles_per_s"]:
                r["mix_ceiling_cycles_per_s"] = c["mix_ceiling_cycles_per_s"]
                r["pct_of_mix_ceiling"] = round(100.0 * r["cycles_per_s"] / c["mix_ceiling_cycles_per_s"], 1)
        return out


def run(cfg: BenchConfig) -> Dict[str, Any]:
    """Measure everything ``cfg`` asks for; return the result document."""
    import redis

    from .. import __version__
    from .._backend import IMPLEMENTATION
    from ..nodes import LocalCluster, find_server
    from .recovery import default_scenarios, run_scenario
    from .report import evaluate_targets

    t_start = time.monotonic()
    load0 = _loadavg()
    server = find_server(cfg.server)
    binary = _ceiling.find_redis_benchmark(cfg.redis_benchmark) if cfg.ceiling else None
    workloads = select(cfg.workloads, quick=cfg.quick, peers=cfg.peers)
    notes: List[str] = [
        ("client CPU = user+sys of the whole benchmark process (time.process_time) over the measured window, "
         "divided by the cycles in it; the nodes and redis-benchmark are other processes"),
        ("shared, noisy 2-core machines: compare figures within one run (ratios to the ceiling and to peers), "
         "not across runs"),
    ]  # fmt: skip
    if cfg.ceiling and binary is None:
        notes.append("redis-benchmark not found: no ceiling, no % of ceiling")
    if cfg.recovery_modes:
        scenarios = [(m.replace("+guard", ""), m.endswith("+guard")) for m in cfg.recovery_modes]
    else:
        scenarios = default_scenarios(cfg.modes)
    if not cfg.recovery:
        scenarios = []

    any_single = any(w.single_node and w.skip_reason() is None for w in workloads)
    total = len(scenarios)
    for n in cfg.nodes:
        per_cluster = len(workloads) + 1
        if binary:
            per_cluster += cfg.ceiling_rounds * (2 if any_single and n > 1 else 1)
        total += per_cluster * len(cfg.modes)
    progress = Progress(total, enabled=cfg.progress)

    libraries: Dict[str, Optional[str]] = {}
    for w in workloads:
        if w.version is not None and w.library not in libraries:
            try:
                libraries[w.library] = w.version()
            except Exception:
                libraries[w.library] = None

    rows: List[Dict[str, Any]] = []
    ceilings: List[Dict[str, Any]] = []
    try:
        for mode in cfg.modes:
            for n in cfg.nodes:
                progress.step(f"{mode} N={n}: starting nodes")
                cluster = LocalCluster(n=n, mode=mode, max_ttl=cfg.ttl, server=server, base_dir=cfg.base_dir)
                clients = [redis.Redis(host=cluster.host, port=p, socket_timeout=30) for p in cluster.ports]
                progress.advance()
                try:
                    bench = _ClusterBench(cfg, mode, n, cluster, clients, binary, progress,
                                          separate_node0=any_single and n > 1)  # fmt: skip
                    bench.ceiling_round("before")
                    for w in workloads:
                        bench.run_row(w, key_prefix=f"qb:{len(rows) + len(bench.rows) + 1}")
                    if cfg.ceiling_rounds >= 2:
                        bench.ceiling_round("after")
                    ceilings.extend(bench.finish())
                    rows.extend(bench.rows)
                finally:
                    for c in clients:
                        c.close()
                    cluster.stop()

        recovery: List[Dict[str, Any]] = []
        for mode, guard in scenarios:
            progress.step(f"recovery: {mode}{' + guard' if guard else ''}")
            try:
                recovery.append(run_scenario(mode, restart_guard=guard, n=cfg.recovery_nodes, ttl=cfg.recovery_ttl,
                                             preload=cfg.recovery_preload, server=server,
                                             base_dir=cfg.base_dir))  # fmt: skip
            except Exception as exc:
                recovery.append({"mode": mode, "n": cfg.recovery_nodes, "restart_guard": guard,
                                 "ttl_s": cfg.recovery_ttl, "restart_delay_s": 0.0, "serves_after_s": None,
                                 "granted_twice": None, "error": repr(exc)[:300]})  # fmt: skip
            progress.advance()
    finally:
        _postgres.stop_all()
        progress.close()

    notes.append(f"load average (1/5/15 min) at the start: {load0}, at the end: {_loadavg()}")
    if any(r.get("consistent") is False for r in rows):
        notes.append("some rows' server-side SET counts disagree with the driver's attempt counts (see their notes)")
    doc: Dict[str, Any] = {
        "schema": "quorumlock-bench/1",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": cfg.command,
        "quick": cfg.quick,
        "machine": _machine(),
        "versions": {
            "quorumlock": __version__,
            "implementation": IMPLEMENTATION,
            "server": _server_version(server),
            "redis_benchmark": _ceiling.benchmark_version(binary) if binary else None,
            "loop": cfg.loop,
            "libraries": libraries,
        },
        "config": {
            "modes": cfg.modes,
            "nodes": cfg.nodes,
            "duration_s": cfg.duration,
            "warmup_s": cfg.warmup,
            "ttl_s": cfg.ttl,
            "loop": cfg.loop,
            "workloads": [w.id for w in workloads],
            "ceiling_requests": cfg.ceiling_requests if binary else 0,
            "ceiling_rounds": cfg.ceiling_rounds if binary else 0,
            "pipeline": cfg.pipeline,
            "recovery": {
                "scenarios": [f"{m}{'+guard' if g else ''}" for m, g in scenarios],
                "nodes": cfg.recovery_nodes,
                "ttl_s": cfg.recovery_ttl,
                "preload": cfg.recovery_preload,
            },
        },
        "ceilings": ceilings,
        "rows": rows,
        "recovery": recovery,
        "targets": [],
        "notes": notes,
        "elapsed_s": 0.0,
    }
    doc["targets"] = evaluate_targets(doc)
    doc["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return doc


def emit(doc: Dict[str, Any], *, json_path: Optional[str], markdown_path: Optional[str],
         plots_dir: Optional[str], out: Any = None) -> int:  # fmt: skip
    """Print the markdown, write the JSON (validated) and the plots; exit code."""
    from .report import markdown
    from .schema import errors

    out = out or sys.stdout
    text = markdown(doc)
    out.write(text)
    out.flush()
    rc = 0
    if markdown_path:
        with open(markdown_path, "w", encoding="utf-8") as f:
            f.write(text)
    errs = errors(doc)
    if errs:
        sys.stderr.write("quorumlock bench: the results do not match schema.json:\n  " + "\n  ".join(errs[:20]) + "\n")
        rc = 1
    if json_path:
        d = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(d, exist_ok=True)
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    if plots_dir:
        try:
            from .plots import make_plots

            paths = make_plots(doc, plots_dir)
            sys.stderr.write("plots: " + ", ".join(paths) + "\n")
        except ImportError as exc:
            sys.stderr.write(f"quorumlock bench: no plots ({exc}); {BENCH_EXTRA_HINT} installs matplotlib\n")
    return rc


def _plots_dir(args: argparse.Namespace) -> Optional[str]:
    """``--plots DIR``; else the default directory, unless ``--no-plots``."""
    if args.plots_dir:
        return args.plots_dir
    return DEFAULT_PLOTS_DIR if getattr(args, "plots", True) else None


def _command(prog: str, argv: Optional[Sequence[str]]) -> str:
    return " ".join([prog, *(shlex.quote(a) for a in (argv or []))])


def run_from_args(args: argparse.Namespace, prog: str = "quorumlock bench",
                  argv: Optional[Sequence[str]] = None) -> int:  # fmt: skip
    """Entry point shared by the CLI subcommand and ``python -m quorumlock.bench``."""
    if args.list:
        from .workloads import WORKLOADS

        for w in WORKLOADS:
            flags = []
            if w.quick:
                flags.append("quick")
            if w.single_node:
                flags.append("node 0 only")
            reason = w.skip_reason()
            if reason:
                flags.append(f"skip: {reason}")
            print(f"{w.id:<40} {w.api:<8} c={w.concurrency:<5} {w.description}"
                  + (f"  [{'; '.join(flags)}]" if flags else ""))  # fmt: skip
        missing = sorted({w.library for w in WORKLOADS if w.skip_reason()})
        if missing:
            extra = _bench_extra()
            print(f"\nskipped for missing libraries: {', '.join(missing)}.")
            print(f"{BENCH_EXTRA_HINT} installs the peers and matplotlib for the plots"
                  + (f" ({', '.join(extra)})." if extra else "."))  # fmt: skip
            rest = [m for m in missing if extra and m.split(".")[0] not in extra]
            if rest:
                print(f"not in the extra (install by name): {', '.join(rest)}")
        return 0
    if args.from_json:
        from .report import evaluate_targets

        with open(args.from_json, encoding="utf-8") as f:
            doc = json.load(f)
        doc["targets"] = evaluate_targets(doc)
        return emit(doc, json_path=args.json_path, markdown_path=args.markdown_path, plots_dir=args.plots_dir)
    if argv is None:
        argv = sys.argv[1:]
        if argv and argv[0] == "bench":
            argv = argv[1:]
    try:
        cfg = config_from_args(args, _command(prog, argv))
    except ValueError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return 2
    doc = run(cfg)
    return emit(doc, json_path=args.json_path, markdown_path=args.markdown_path, plots_dir=_plots_dir(args))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m quorumlock.bench [flags]``."""
    p = argparse.ArgumentParser(
        prog="python -m quorumlock.bench",
        description="Benchmark quorumlock and its peers on local nodes it starts; "
        "every throughput next to the redis-benchmark ceiling of the same nodes.",
    )
    add_arguments(p)
    args = p.parse_args(argv)
    return run_from_args(args, prog="python -m quorumlock.bench", argv=sys.argv[1:] if argv is None else argv)

