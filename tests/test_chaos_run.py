"""``quorumlock chaos`` end to end: the clock shim on a real redis-server, one
short targeted scenario through the CLI, and (slow) the quick matrix."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis

from quorumlock.chaos import clock
from quorumlock.chaos.history import read_history
from quorumlock.cli import main


def _shim_or_skip() -> str:
    try:
        return clock.build_shim()
    except RuntimeError as exc:
        pytest.skip(f"clock shim not available: {exc}")


def test_host_clock_is_clock_monotonic():
    a = time.monotonic_ns()
    h = clock.host_monotonic_ns()
    b = time.monotonic_ns()
    assert a <= h <= b


def test_clock_shim_jump_and_rate_on_redis_server(make_cluster, redis_server, tmp_path):
    """Under the shim, a forward step of the wall clock frees a PX key at
    once (Redis expires by the wall clock: docs/faults.md), and a rate of 2
    expires a 1 s key in about half a second.  CLOCK_MONOTONIC is untouched."""
    shim = _shim_or_skip()
    server = clock.shim_server(redis_server, str(tmp_path), shim)
    cluster = make_cluster(n=1, mode="volatile", max_ttl=1.0, server=server, start=False)
    ctl = clock.node_control(cluster.nodes[0].dir)
    cluster.start()
    r = redis.Redis(port=cluster.ports[0])
    assert abs(int(r.time()[0]) - time.time()) < 5  # no offset: passes the real time through
    assert r.set("lock", "A", px=10_000)
    assert 9_000 < r.pttl("lock") <= 10_000
    ctl.jump(20.0)
    assert r.get("lock") is None  # gone 10 s early
    assert r.set("lock", "B", nx=True, px=10_000)  # and a second client gets it
    assert abs(int(r.time()[0]) - time.time() - 20) < 5
    ctl.jump(-20.0)
    ctl.set_rate(2.0)
    r.set("fast", "x", px=1000)
    t0 = time.monotonic()
    while r.exists("fast") and time.monotonic() - t0 < 3:
        time.sleep(0.005)
    took = time.monotonic() - t0
    assert 0.35 < took < 0.8, took
    ctl.close()


def test_proxy_heals_like_tcp(make_cluster):
    """A stream that lost bytes is reset when the link heals (TCP never
    delivers a stream with a hole: reusing it would pair later replies with
    the wrong requests); a stalled link delivers what it held."""
    from quorumlock.chaos.proxy import FaultProxy, ProxyHub

    cluster = make_cluster(n=1, mode="volatile", max_ttl=1.0)
    with ProxyHub() as hub:
        p = FaultProxy("127.0.0.1", cluster.ports[0], hub=hub, reset_on_heal=True)
        r = redis.Redis(port=p.port, socket_timeout=0.3, retry=None, protocol=2)
        assert r.ping()
        p.set_mode("half-reply")
        with pytest.raises(redis.TimeoutError):
            r.set("k", "v")
        assert redis.Redis(port=cluster.ports[0]).get("k") == b"v"  # applied, reply lost
        p.set_mode("pass")
        time.sleep(0.05)
        # redis-py dropped its timed-out connection; a new one works, and the
        # proxy reset the old one rather than reuse a stream with a hole.
        assert r.ping()
        assert not p._lost
        s = redis.Redis(port=p.port, socket_timeout=2.0, retry=None, protocol=2)
        assert s.ping()
        p.set_mode("stall")
        t0 = time.monotonic()
        threading.Timer(0.3, p.set_mode, args=("pass",)).start()
        assert s.get("k") == b"v"  # held for the stall, then delivered on the same connection
        assert time.monotonic() - t0 >= 0.25


def test_faulty_client_is_correct_without_bugs(make_cluster):
    """The negative-control client: a correct Redlock with no bug switched
    on, so that a control row differs from its negative control by the bug alone."""
    from quorumlock.chaos.faulty import FaultyLockManager

    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0)
    with FaultyLockManager(cluster.urls, ttl=1.0) as a, FaultyLockManager(cluster.urls, ttl=1.0) as b, \
            FaultyLockManager(cluster.urls, ttl=1.0, bugs=("no-nx", "del-release")) as bad:
        lk = a.try_acquire("f:k")
        assert lk is not None and lk.valid and lk.nodes == 3
        assert b.try_acquire("f:k") is None  # held
        assert lk.extend(1.0) and 0.9 < lk.validity <= 1.0
        stolen = bad.try_acquire("f:k")  # SET without NX takes it
        assert stolen is not None
        assert lk.extend(1.0) is False  # compare-and-pexpire: not ours any more
        assert lk.release() is False  # compare-and-delete leaves the other token
        assert redis.Redis(port=cluster.ports[0]).get("f:k") == stolen.token
        assert stolen.release()  # plain DEL
        assert b.try_acquire("f:k") is not None


def test_chaos_targeted_end_to_end(tmp_path, capsys):
    """Row 1 (targeted): unsafe nodes with immediate restart lose a held lock
    (VIOL); the same schedule with a fenced storage only lets the lock-level
    overlap through (ME-only: the stale write is rejected); volatile nodes
    with delayed restart keep it (SAFE)."""
    out = tmp_path / "runs"
    rep_path = tmp_path / "report.json"
    cases = [
        (["--mode", "unsafe"], "VIOL"),
        (["--mode", "unsafe", "--fencing"], "ME-only"),
        (["--mode", "volatile"], "SAFE"),
    ]
    t0 = time.monotonic()
    for extra, label in cases:
        code = main(["chaos", "--fault", "crash-targeted", *extra, "--out", str(out), "--json", str(rep_path),
                     "--expect", label])
        text = capsys.readouterr().out
        assert code == 0, text
        assert f"verdict: {label}" in text
        report = json.loads(rep_path.read_text())
        hist = report["history"]
        events = read_history(hist)
        assert events[0]["type"] == "meta" and events[-1]["type"] == "final"
        ops = [e for e in events if e["type"] == "op"]
        assert all(isinstance(e["invoke"], int) for e in ops)
        assert any(e["type"] == "fault" and e["name"] == "node-crash" for e in events)
        if label == "VIOL":
            assert report["report"]["overlaps"] and report["report"]["lost_updates"]
        if label == "ME-only":
            assert report["report"]["stale_rejected"] and not report["report"]["lost_updates"]
    assert time.monotonic() - t0 < 20


def test_chaos_cli_rejects_unknown_fault(capsys):
    with pytest.raises(SystemExit):
        main(["chaos", "--fault", "no-such-fault"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_matrix():
    """``quorumlock chaos --matrix --quick``: every row as expected (~2 min on 2 cores)."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler for the clock shim")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "quorumlock", "chaos", "--matrix", "--quick"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        # SIGINT, not SIGKILL: the harness then stops the nodes it started.
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"the quick matrix did not finish in 540 s:\n{out[-4000:]}")
    print(out[-6000:])
    assert proc.returncode == 0, out[-4000:] + err[-2000:]
    assert "rows as expected" in out
    assert time.monotonic() - t0 < 420
