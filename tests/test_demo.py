"""The README's first command: `quorumlock demo` runs end to end."""

import subprocess
import sys


def test_demo_runs(redis_server):
    p = subprocess.run([sys.executable, "-m", "quorumlock", "demo", "--seconds", "0.4"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for marker in ("1. one lock", "overlapping holders 0", "a node crashes", "fencing tokens",
                   "cycles/s", "all nodes stopped"):
        assert marker in out, out
