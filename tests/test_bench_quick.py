"""The benchmark suite end to end: ``python -m quorumlock.bench`` in a reduced
quick configuration on N=1 (not timed: this checks that the outputs exist and
agree with each other, not how fast anything is).

One run (module fixture, well under 30 s) feeds every check: the JSON
validates against ``schema.json`` (with the package's small validator and,
when installed, with ``jsonschema``), the counts are consistent (cycles =
acquisitions = successful releases; every node counted exactly as many SETs as
the driver made attempts), the rates follow from the counts, the plots are
PNG files, and the markdown table is printed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict

import psutil
import pytest

from quorumlock.bench import schema as bench_schema
from quorumlock.bench.plots import PLOT_FILES
from quorumlock.bench.stats import summarize

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None  # type: ignore[assignment]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOADS = ",".join([
    "quorumlock/async-c64",
    "quorumlock/async-batch1000",
    "quorumlock/blocking-seq",
    "quorumlock/contended",
    "quorumlock/async-fencing-c64",
    "redis-py.Lock/blocking-seq",
    "pottery.Redlock/blocking-t8",
    "quorumlock/async-c1024-native-off",
    "postgresql.advisory/blocking-seq",
    "postgresql.advisory/blocking-t8",
])  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: Any, request: Any) -> Dict[str, Any]:
    from quorumlock.nodes import find_server

    try:
        find_server()
    except RuntimeError as exc:
        pytest.skip(f"no Redis server: {exc}")
    d = tmp_path_factory.mktemp("bench")
    nodes_dir = d / "nodes"
    nodes_dir.mkdir()
    paths = {"json": str(d / "out.json"), "plots": str(d / "plots"), "md": str(d / "out.md")}
    cmd = [
        sys.executable, "-m", "quorumlock.bench", "--quick", "--nodes", "1", "--modes", "volatile",
        "--duration", "0.3", "--warmup", "0.05", "--workloads", WORKLOADS,
        "--ceiling-requests", "30000", "--recovery-modes", "unsafe", "--recovery-ttl", "2",
        "--recovery-preload", "1000", "--base-dir", str(nodes_dir), "--no-progress",
        "--json", paths["json"], "--plots", paths["plots"], "--markdown", paths["md"],
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, cwd=REPO,
                          check=False)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    with open(paths["json"], encoding="utf-8") as f:
        doc = json.load(f)
    return {"doc": doc, "stdout": proc.stdout, "stderr": proc.stderr, "elapsed": elapsed, "nodes_dir": str(nodes_dir),
            **paths}  # fmt: skip


def _ran(doc: Dict[str, Any]) -> list:
    return [r for r in doc["rows"] if not r["skipped"]]


def test_finishes_quickly(quick_run: Dict[str, Any]) -> None:
    assert quick_run["elapsed"] < 30, f"the reduced quick run took {quick_run['elapsed']:.1f} s"


def test_json_validates(quick_run: Dict[str, Any]) -> None:
    doc = quick_run["doc"]
    assert bench_schema.mini_errors(doc) == []
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        return
    assert bench_schema.errors(doc, use_jsonschema=True) == []


def test_rows_cover_the_selection(quick_run: Dict[str, Any]) -> None:
    doc = quick_run["doc"]
    ids = {r["id"] for r in doc["rows"]}
    assert set(WORKLOADS.split(",")) == ids
    assert all(r["n"] == 1 and r["mode"] == "volatile" for r in doc["rows"])
    for r in doc["rows"]:
        if r["skipped"]:
            assert r["note"], f"{r['id']} skipped without a reason"
    # the workloads that must run here (no optional peer involved)
    must = {"quorumlock/async-c64", "quorumlock/async-batch1000", "quorumlock/blocking-seq",
            "quorumlock/contended", "redis-py.Lock/blocking-seq", "quorumlock/async-c1024-native-off"}  # fmt: skip
    from quorumlock.bench import postgres

    if postgres.skip_reason() is None:  # binaries and psycopg here: the rows must run
        must |= {"postgresql.advisory/blocking-seq", "postgresql.advisory/blocking-t8"}
    assert must <= {r["id"] for r in _ran(doc)}


def _check_rates(r: Dict[str, Any]) -> None:
    """The rates of a row follow from its counts and times, as reported."""
    rid = r["id"]
    assert math.isclose(r["cycles_per_s"], r["cycles"] / r["wall_s"], rel_tol=1e-3), rid
    assert math.isclose(r["lock_ops_per_s"], (r["attempts"] + r["cycles"]) / r["wall_s"], rel_tol=1e-3), rid
    assert math.isclose(r["cpu_us_per_cycle"], r["cpu_s"] / r["cycles"] * 1e6, rel_tol=1e-3), rid


def test_rates_of_a_slow_short_row_follow_from_its_counts() -> None:
    """A row a loaded machine makes slow and short (3 cycles in 0.7 s, 0.21 ms
    of CPU): its rates still agree with its counts to 1e-3.  First-round code
    (fixed decimals: cycles_per_s to 0.1, cpu_s to 1 us) gave cycles_per_s
    4.3 for 4.2857 (3.3e-3 off) and cpu_us_per_cycle 71.133 for 71.0 (1.9e-3)."""
    from quorumlock.bench.runner import _row
    from quorumlock.bench.workloads import Measurement, Workload

    w = Workload(library="quorumlock", name="async-c64", api="async", run=lambda ctx: Measurement())
    m = Measurement(attempts=5, acquisitions=3, cycles=3, releases_ok=3, wall_s=0.7000001, cpu_s=0.0002134)
    m.latencies_ns.extend([1000, 2000, 3000, 4000, 5000])
    r = _row(w, "volatile", 1, m, 0, [5])
    _check_rates(r)
    assert r["wall_s"] == 0.7000001 and r["cpu_s"] == 0.0002134   # 7 significant digits kept


def test_counts_are_consistent(quick_run: Dict[str, Any]) -> None:
    for r in _ran(quick_run["doc"]):
        rid = r["id"]
        assert r["cycles"] > 0, rid
        # every acquired lock was released, and every release succeeded
        assert r["cycles"] == r["acquisitions"] == r["releases_ok"], rid
        assert r["failed"] == r["attempts"] - r["acquisitions"], rid
        _check_rates(r)
        lat = r["latency"]
        if lat["unit"] == "call":
            assert lat["count"] == r["attempts"], rid
        else:  # one latency per acquire_many of r["batch"] keys
            assert lat["count"] * r["batch"] == r["attempts"], rid
        assert sum(c for _, c in lat["hist"]) == lat["count"], rid
        assert lat["p50_us"] <= lat["p99_us"] <= lat["p999_us"] <= lat["max_us"], rid
        if r["library"] == "quorumlock" and r["batch"] == 1 and "fencing" not in r["workload"]:
            # the server saw exactly one SET per attempt (warm-up included)
            assert r["consistent"] is True, (rid, r["server_set_calls"], r["warmup_attempts"], r["attempts"])
            assert r["server_set_calls"] == [r["warmup_attempts"] + r["attempts"]], rid
        if r["library"] == "quorumlock" and "fencing" not in r["workload"]:
            assert r["keys_left"] == 0, rid
        if r["library"] == "postgresql.advisory":
            # its own server: no node columns; keys left = advisory locks still held
            assert r["nodes_used"] == 0 and r["server_set_calls"] is None, rid
            assert r["keys_left"] == 0 and r["extra"]["advisory_locks_left"] == 0, rid
            assert r["extra"]["settings"]["fsync"] == "off", rid  # volatile
        assert r["overlaps"] == 0, rid
    contended = next(r for r in quick_run["doc"]["rows"] if r["id"] == "quorumlock/contended")
    assert contended["failed"] > 0  # 256 tasks on 4 keys: most attempts lose


def test_every_row_next_to_its_ceiling(quick_run: Dict[str, Any]) -> None:
    doc = quick_run["doc"]
    if not doc["ceilings"]:
        pytest.skip("redis-benchmark not installed")
    (c,) = doc["ceilings"]
    assert c["n"] == 1 and c["nodes_used"] == 1
    assert math.isclose(c["ceiling_cycles_per_s"], c["set_total_rps"] / 2, rel_tol=1e-3)
    for r in _ran(doc):
        if r["nodes_used"] == 0:  # PostgreSQL: the nodes' ceiling is not its ceiling
            assert r["ceiling_cycles_per_s"] is None and r["pct_of_ceiling"] is None, r["id"]
            continue
        assert r["ceiling_cycles_per_s"] == c["ceiling_cycles_per_s"], r["id"]
        assert math.isclose(r["pct_of_ceiling"], 100 * r["cycles_per_s"] / r["ceiling_cycles_per_s"], abs_tol=0.1)


def test_recovery_shows_the_unsafe_violation(quick_run: Dict[str, Any]) -> None:
    (rec,) = quick_run["doc"]["recovery"]
    assert rec["mode"] == "unsafe" and rec["restart_guard"] is False
    assert "error" not in rec, rec
    assert rec["keys_before"] >= 1000 and rec["keys_after"] == 0  # came back empty
    assert rec["serves_after_s"] is not None and rec["serves_after_s"] < 2.0
    assert rec["granted_twice"] is True


def test_targets_need_n3(quick_run: Dict[str, Any]) -> None:
    targets = quick_run["doc"]["targets"]
    assert targets and all(t["status"] == "N/A" for t in targets)  # N=3 was not run


def test_plots_are_pngs(quick_run: Dict[str, Any]) -> None:
    for name in PLOT_FILES:
        path = os.path.join(quick_run["plots"], name)
        assert os.path.isfile(path), name
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
        assert os.path.getsize(path) < 400_000, f"{name} is not small"


def test_markdown_table(quick_run: Dict[str, Any]) -> None:
    with open(quick_run["md"], encoding="utf-8") as f:
        md = f.read()
    assert md == quick_run["stdout"]
    assert "| N | library | workload |" in md
    assert "### Recovery" in md and "### Ceilings" in md
    for r in _ran(quick_run["doc"]):
        assert f"| {r['workload']} |" in md


def test_no_server_left_behind(quick_run: Dict[str, Any]) -> None:
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(quick_run["nodes_dir"] in (a or "") for a in p.info["cmdline"] or ()):
                left.append(p.info["pid"])
        except psutil.Error:
            continue
    assert not left, f"server processes still running: {left}"
    assert os.listdir(quick_run["nodes_dir"]) == []


def test_from_json_renders_the_same(quick_run: Dict[str, Any], tmp_path: Any) -> None:
    proc = subprocess.run([sys.executable, "-m", "quorumlock.bench", "--from-json", quick_run["json"],
                           "--plots", str(tmp_path)], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == quick_run["stdout"]
    assert sorted(os.listdir(tmp_path)) == sorted(PLOT_FILES)


# -- pieces that need no servers ------------------------------------------------


def test_mini_validator_rejects() -> None:
    schema = bench_schema.load_schema()
    good = {"mode": "x", "n": 3, "restart_guard": False, "ttl_s": 1.0, "restart_delay_s": 0.0,
            "serves_after_s": None, "granted_twice": True}  # fmt: skip
    sub = {"$defs": schema["$defs"], **schema["$defs"]["recovery"]}
    assert bench_schema.mini_errors(good, sub) == []
    bad = dict(good, n=2)
    assert any("minimum" in e for e in bench_schema.mini_errors(bad, sub))
    bad = {k: v for k, v in good.items() if k != "granted_twice"}
    assert any("granted_twice" in e for e in bench_schema.mini_errors(bad, sub))
    bad = dict(good, n=True)  # a bool is not an integer
    assert bench_schema.mini_errors(bad, sub)
    tsub = {"$defs": schema["$defs"], **schema["$defs"]["target"]}
    t = {"id": "x", "mode": "m", "description": "d", "value": 1.0, "reference": None, "ratio": None,
         "threshold": "t", "status": "MAYBE", "detail": ""}  # fmt: skip
    assert any("one of" in e for e in bench_schema.mini_errors(t, tsub))
    assert any("unexpected property" in e for e in bench_schema.mini_errors(dict(t, status="PASS", extra=1), tsub))
    with pytest.raises(ValueError, match="not supported"):
        bench_schema.mini_errors({}, {"type": "object", "patternProperties": {}})


def test_percentiles() -> None:
    s = summarize([i * 1000 for i in range(1, 1001)])  # 1..1000 µs
    assert (s["p50_us"], s["p99_us"], s["p999_us"], s["max_us"]) == (500.0, 990.0, 999.0, 1000.0)
    assert sum(c for _, c in s["hist"]) == 1000
    assert summarize([])["p50_us"] is None


def test_cli_lists_workloads(capsys: Any) -> None:
    from quorumlock import cli

    assert cli.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "quorumlock/async-c1024" in out and "pottery.Redlock/blocking-t8" in out


def test_default_run_does_not_collect_bench() -> None:
    """``python -m pytest`` from the root runs ``tests/`` only: the timed
    micro benchmarks in ``bench/`` are run on purpose (``python -m pytest bench/``)."""
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        cfg = tomllib.load(f)
    assert cfg["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert not os.path.exists(os.path.join(REPO, "bench", "__init__.py"))


# -- PostgreSQL advisory locks and the native on/off pair -----------------------


def _fake_row(rid: str, cycles_per_s: float, p50: float, extra: Any = None) -> Dict[str, Any]:
    lib, name = rid.split("/")
    r = {"id": rid, "library": lib, "workload": name, "mode": "volatile", "n": 3, "skipped": False, "cycles": 1,
         "cycles_per_s": cycles_per_s, "latency": {"p50_us": p50}, "cpu_us_per_cycle": 1.0, "pct_of_ceiling": None,
         "ceiling_cycles_per_s": None}  # fmt: skip
    if extra is not None:
        r["extra"] = extra
    return r


def _targets(rows: list) -> Dict[str, Dict[str, Any]]:
    from quorumlock.bench.report import evaluate_targets

    return {t["id"]: t for t in evaluate_targets({"config": {"modes": ["volatile"]}, "rows": rows})}


def test_postgres_and_native_targets() -> None:
    """The issue-14 ratios: blocking 8 threads / PostgreSQL 8 threads (>= 2),
    sequential p50 / PostgreSQL p50 (<= 0.5), native on / off at 1,024 tasks
    (>= 1.25, only where the "on" row really used a native release)."""
    rows = [
        _fake_row("quorumlock/blocking-t8", 20_000, 900),
        _fake_row("postgresql.advisory/blocking-t8", 9_000, 800),
        _fake_row("quorumlock/blocking-seq", 10_000, 60),
        _fake_row("postgresql.advisory/blocking-seq", 8_000, 100),
        _fake_row("quorumlock/async-c1024", 130_000, 9_000, {"release_path": ["DELIFEQ"] * 3}),
        _fake_row("quorumlock/async-c1024-native-off", 100_000, 9_000, {"release_path": ["script"] * 3}),
    ]
    t = _targets(rows)
    assert t["blocking-t8-vs-postgres"]["status"] == "PASS" and t["blocking-t8-vs-postgres"]["ratio"] == 2.222
    assert t["blocking-p50-vs-postgres"]["status"] == "FAIL" and t["blocking-p50-vs-postgres"]["ratio"] == 0.6
    assert t["native-on-off-c1024"]["status"] == "PASS" and t["native-on-off-c1024"]["ratio"] == 1.3
    rows[1]["cycles_per_s"] = 10_001  # just under 2x
    rows[4]["extra"] = {"release_path": ["DELIFEQ", "script", "DELIFEQ"]}  # one node without DELIFEQ
    t = _targets(rows)
    assert t["blocking-t8-vs-postgres"]["status"] == "FAIL"
    assert t["native-on-off-c1024"]["status"] == "N/A" and "no native release" in t["native-on-off-c1024"]["detail"]
    t = _targets(rows[:4])
    assert t["native-on-off-c1024"]["status"] == "N/A" and t["native-on-off-c1024"]["detail"] == "missing row"


def test_postgres_rows_skip_with_a_note(monkeypatch: Any) -> None:
    from quorumlock.bench import postgres

    monkeypatch.setattr(postgres, "find_bindir", lambda: None)
    reason = postgres.skip_reason()
    assert reason is not None and "initdb/pg_ctl" in reason
    assert all(w.skip_reason() == reason for w in postgres.PG_WORKLOADS)
    with pytest.raises(RuntimeError, match="no PostgreSQL binaries"):
        postgres.PostgresServer("volatile")


def test_postgres_server_bad_mode() -> None:
    from quorumlock.bench import postgres

    with pytest.raises(ValueError, match="mode"):
        postgres.PostgresServer("durable")


def test_postgres_server_settings_and_cleanup(tmp_path: Any) -> None:
    """The fsync mode's server really runs with fsync and synchronous_commit on,
    its socket directory is under the base dir, and stop() removes it all."""
    from quorumlock.bench import postgres

    if postgres.skip_reason():
        pytest.skip(postgres.skip_reason())
    import psycopg

    srv = postgres.PostgresServer("fsync", base_dir=str(tmp_path))
    try:
        if os.geteuid() != 0:  # as root, postgres cannot enter pytest's 0700 tmp dirs
            assert os.path.dirname(srv.dir) == str(tmp_path)
        with psycopg.connect(**srv.conninfo, autocommit=True) as conn:
            got = {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in ("fsync", "synchronous_commit",
                                                                          "unix_socket_directories")}  # fmt: skip
        assert got == {"fsync": "on", "synchronous_commit": "on", "unix_socket_directories": srv.dir}
    finally:
        srv.stop()
    assert os.listdir(tmp_path) == [] and not os.path.exists(srv.dir)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**srv.conninfo, connect_timeout=2)
