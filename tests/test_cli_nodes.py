"""``quorumlock nodes up|config`` as a user runs them: a real subprocess, real signals."""

from __future__ import annotations

import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator, List, Tuple

import psutil
import pytest

from quorumlock.cli import main


def _ping(url: str, timeout: float = 0.5) -> bool:
    m = re.fullmatch(r"redis://([\d.]+):(\d+)", url)
    assert m, url
    try:
        with socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class NodesUp:
    """``python -m quorumlock nodes up ...`` with its stdout read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "quorumlock", "nodes", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: List[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 15.0) -> str:
        """The next stdout line matching ``pattern`` (fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; saw {self.seen}") from None
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def start_info(self) -> Tuple[List[str], str]:
        """URLs and directory, from the start-up banner."""
        nodes_line = self.expect(r"^QUORUMLOCK_NODES=")
        urls = nodes_line.split("=", 1)[1].split(",")
        assert self.seen[: len(urls)] == urls  # one URL per line first
        banner = self.expect(r"Ctrl-C stops them")
        d = re.search(r"dir (\S+);", banner)
        assert d, banner
        return urls, d.group(1)

    def servers(self) -> List[psutil.Process]:
        return [p for p in psutil.Process(self.proc.pid).children() if "server" in p.name()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5)  # EOF once the process is gone
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def nodes_up(redis_server: str) -> Iterator[Callable[..., NodesUp]]:
    started: List[NodesUp] = []

    def run(*args: str) -> NodesUp:
        n = NodesUp(*args, "--server", redis_server)
        started.append(n)
        return n

    yield run
    for n in started:
        pids = [p.pid for p in n.servers()] if n.proc.poll() is None else []
        n.close()
        for pid in pids:  # a failed test must not leave servers behind
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _gone(procs: List[psutil.Process], timeout: float = 5.0) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return not alive


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_nodes_up_serves_restarts_and_stops_on_signal(nodes_up, sig: int) -> None:
    cli = nodes_up("-n", "2", "--mode", "unsafe", "--max-ttl", "1")
    urls, directory = cli.start_info()
    assert len(urls) == 2 and all(_ping(u) for u in urls)
    assert os.path.isdir(directory)
    servers = cli.servers()
    assert len(servers) == 2

    # A crash is reported and the node restarted (unsafe: at once).
    victim = next(p for p in servers if str(urls[0].rsplit(":", 1)[1]) in " ".join(p.cmdline()))
    victim.kill()
    cli.expect(r"^# node 0 .*crashed")
    cli.expect(r"^# node 0 up again")
    assert _ping(urls[0])
    servers = cli.servers()

    cli.proc.send_signal(sig)
    assert cli.proc.wait(timeout=15) == 0, cli.proc.stderr.read() if cli.proc.stderr else ""
    assert _gone(servers)
    assert not os.path.exists(directory)
    assert not any(_ping(u, timeout=0.2) for u in urls)


def test_nodes_up_volatile_prints_the_delay(nodes_up) -> None:
    cli = nodes_up("-n", "1", "--mode", "volatile", "--max-ttl", "0.5")
    urls, directory = cli.start_info()
    assert "restart 0.605 s after a crash" in cli.seen[-1]
    (server,) = cli.servers()
    server.kill()
    t0 = time.monotonic()
    cli.expect(r"crashed; restart in 0\.605 s")
    cli.expect(r"^# node 0 up again")
    assert time.monotonic() - t0 >= 0.5 * 1.01
    cli.proc.send_signal(signal.SIGINT)
    assert cli.proc.wait(timeout=15) == 0
    assert not os.path.exists(directory)


def test_nodes_up_bad_arguments_fail_cleanly(redis_server: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "quorumlock", "nodes", "up", "-n", "0", "--server", redis_server],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "n must be >= 1" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "quorumlock", "nodes", "up", "--mode", "durable"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_nodes_config_volatile(capsys: pytest.CaptureFixture) -> None:
    assert main(["nodes", "config", "--mode", "volatile", "--max-ttl", "30"]) == 0
    out = capsys.readouterr().out
    assert "appendonly no" in out and 'save ""' in out
    assert "RestartSec=32" in out  # 30 * 1.01 + 1.5 = 31.8 -> 32
    assert "[Service]" in out


def test_nodes_config_fsync_subprocess() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "quorumlock", "nodes", "config", "--mode", "fsync", "--max-ttl", "30"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "appendonly yes" in out.stdout and "appendfsync always" in out.stdout
    assert "RestartSec=" in out.stdout and "appendonly no" not in out.stdout


def test_nodes_config_rejects_bad_ttl(capsys: pytest.CaptureFixture) -> None:
    assert main(["nodes", "config", "--mode", "volatile", "--max-ttl", "0"]) == 2
    assert "max_ttl" in capsys.readouterr().err


def test_nodes_config_enforces_the_delay_on_every_start(capsys: pytest.CaptureFixture) -> None:
    """The volatile drop-in sleeps before *every* start (boot and manual start
    included), as active lines, and never lets eviction drop a lock key.

    First-round code: the ``ExecStartPre=`` / ``TimeoutStartSec=`` lines were
    printed commented out (``#ExecStartPre=/bin/sleep 32``), so a reboot or a
    ``systemctl start`` brought an empty node back at once; and no
    ``maxmemory-policy`` line was printed."""
    assert main(["nodes", "config", "--mode", "volatile", "--max-ttl", "30"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "ExecStartPre=/bin/sleep 32" in lines
    assert "TimeoutStartSec=122" in lines  # above the sleep plus a normal start-up
    assert "maxmemory-policy noeviction" in lines
    assert not [ln for ln in lines if ln.startswith(("#ExecStartPre", "#TimeoutStartSec"))]
    # fsync restarts at once (its keys survive): no sleep there.
    assert main(["nodes", "config", "--mode", "fsync", "--max-ttl", "30"]) == 0
    out = capsys.readouterr().out
    assert "ExecStartPre" not in out and "maxmemory-policy noeviction" in out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("mode", ["volatile", "fsync", "unsafe"])
def test_nodes_config_drop_in_is_valid_systemd(mode: str, tmp_path, capsys: pytest.CaptureFixture) -> None:
    """``systemd-analyze verify`` accepts the drop-in merged into a unit: no
    unknown key, no bad value (systemd would ignore those silently at boot)."""
    assert main(["nodes", "config", "--mode", mode, "--max-ttl", "30"]) == 0
    text = capsys.readouterr().out
    drop_in = text[text.index("[Unit]"):]
    unit = tmp_path / "quorumlock-node-test.service"
    unit.write_text("[Unit]\nDescription=test\n\n[Service]\nExecStart=/bin/true\n\n" + drop_in)
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [ln for ln in (res.stdout + res.stderr).splitlines() if str(unit) in ln]
    assert res.returncode == 0 and not complaints, res.stdout + res.stderr


# --------------------------------------------------------------------------
# other command-line flags: -V, bench plots and --list, the examples
# --------------------------------------------------------------------------

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version_flag(flag: str, capsys: pytest.CaptureFixture) -> None:
    """First-round code: ``-V`` was refused (exit 2)."""
    import quorumlock

    with pytest.raises(SystemExit) as exc:
        main([flag])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"quorumlock {quorumlock.__version__}"


def test_bench_writes_plots_unless_told_not_to() -> None:
    """A measuring run (``--quick`` included) writes plots by default.
    First-round code: no default (``--plots`` only), no ``--no-plots``."""
    from quorumlock.bench import runner
    from quorumlock.cli import build_parser

    parse = build_parser().parse_args
    assert runner._plots_dir(parse(["bench", "--quick"])) == runner.DEFAULT_PLOTS_DIR
    assert runner._plots_dir(parse(["bench", "--quick", "--no-plots"])) is None
    assert runner._plots_dir(parse(["bench", "--plots", "out/p"])) == "out/p"


def test_bench_list_names_the_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """With peer libraries missing, ``bench --list`` says which extra installs
    them.  First-round code: only per-row "pip install <name>" notes."""
    from quorumlock.bench import workloads

    # Fault injection: every peer library "missing", whatever is installed here.
    monkeypatch.setattr(workloads.Workload, "skip_reason",
                        lambda self: None if self.library == "quorumlock" else "not installed")  # fmt: skip
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "skipped for missing libraries: " in out and "pottery.Redlock" in out
    assert "python -m pip install 'quorumlock[bench]'" in out


def _run_example_without(module: str, script: str) -> subprocess.CompletedProcess:
    """Run examples/``script`` as ``__main__`` with ``module`` made unimportable."""
    code = (f"import runpy, sys; sys.modules[{module!r}] = None; sys.argv = [{script!r}]; "
            f"sys.path.insert(0, {EXAMPLES!r}); runpy.run_path({os.path.join(EXAMPLES, script)!r}, run_name='__main__')")  # fmt: skip
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("module,script", [("celery", "celery_app.py"), ("apscheduler", "apscheduler_ticks.py")])
def test_examples_name_their_missing_extra(module: str, script: str) -> None:
    """First-round code: a ModuleNotFoundError traceback that named no extra."""
    p = _run_example_without(module, script)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == (
        f"examples/{script} needs {'Celery' if module == 'celery' else 'APScheduler 3.x'}: "
        "python -m pip install 'quorumlock[integrations]'"
    )


def test_celery_example_reads_quorumlock_nodes() -> None:
    """``nodes up`` prints ``QUORUMLOCK_NODES=...``; the Celery example reads
    that variable.  First-round code: it read ``QL_NODES`` (printed None)."""
    pytest.importorskip("celery", reason="celery is not installed (pip install quorumlock[integrations])")
    urls = "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003"
    code = f"import sys; sys.path.insert(0, {EXAMPLES!r}); import celery_app; print(celery_app.app.conf.quorumlock_nodes)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, QUORUMLOCK_NODES=urls))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == repr(urls.split(","))


def test_wakeup_latency_quantiles_stay_within_the_samples() -> None:
    """First-round code: ``statistics.quantiles``' default method printed
    "p90 13.50 ms" above "max 10.00 ms" for the samples below."""
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    import wakeup_latency

    text = wakeup_latency.summary([1.0, 2.0, 3.0, 10.0])
    p90 = float(re.search(r"p90 +([\d.]+)", text).group(1))
    top = float(re.search(r"max +([\d.]+)", text).group(1))
    assert p90 <= top == 10.0, text
    assert "p50" in wakeup_latency.summary([4.0])


def _free_base(n: int) -> int:
    """A base port with ``n`` free ports after it, outside the ephemeral range."""
    from quorumlock.cli import _check_ports

    for _ in range(50):
        base = random.randrange(12000, 19000)
        try:
            _check_ports("127.0.0.1", base, n)
            return base
        except ValueError:
            continue
    pytest.skip("no run of free ports found")


def test_nodes_up_port_sets_the_base_port(nodes_up) -> None:
    """``--port BASE``: node i listens on BASE+i, and keeps it across a restart.
    First-round code: ``--port`` was refused (exit 2)."""
    from quorumlock.nodes import net

    original = net._pick_free_port
    base = _free_base(2)
    cli = nodes_up("-n", "2", "--mode", "unsafe", "--max-ttl", "1", "--port", str(base))
    urls, _ = cli.start_info()
    assert urls == [f"redis://127.0.0.1:{base}", f"redis://127.0.0.1:{base + 1}"]
    assert all(_ping(u) for u in urls)
    victim = next(p for p in cli.servers() if f":{base}" in " ".join(p.cmdline()))
    victim.kill()
    cli.expect(r"^# node 0 up again")
    assert _ping(urls[0])
    cli.proc.send_signal(signal.SIGINT)
    assert cli.proc.wait(timeout=15) == 0
    assert net._pick_free_port is original  # nothing patched in this process


def test_nodes_up_port_busy_or_out_of_range_is_one_line(redis_server: str) -> None:
    base = _free_base(2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 1))
        busy.listen()
        p = subprocess.run(
            [sys.executable, "-m", "quorumlock", "nodes", "up", "-n", "2", "--port", str(base), "--server", redis_server],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert p.returncode == 1 and p.stderr.strip() == (
        f"quorumlock nodes up: error: port {base + 1} on 127.0.0.1 is not free (Address already in use)"
    ), p.stderr
    p = subprocess.run([sys.executable, "-m", "quorumlock", "nodes", "up", "-n", "3", "--port", "65534"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 1 and "ports must lie in 1..65535" in p.stderr and "Traceback" not in p.stderr


def test_fixed_ports_restores_the_port_picker() -> None:
    from quorumlock.cli import _fixed_ports
    from quorumlock.nodes import net

    original = net._pick_free_port
    with pytest.raises(RuntimeError, match="was taken"):
        with _fixed_ports([41000]):
            assert net._pick_free_port("127.0.0.1") == 41000
            net._pick_free_port("127.0.0.1")
    assert net._pick_free_port is original
