"""Which engine is in use, and the guard that the compiled one really loaded.

Like multidict/yarl: the compiled core and its pure-Python twin have the same
names; ``QUORUMLOCK_NO_EXTENSIONS=1`` selects the twin.  A build that has the
extension must not silently run on the twin."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

import quorumlock
from quorumlock import _backend, _pycore

PKG_DIR = os.path.dirname(quorumlock.__file__)
BUILT = bool(glob.glob(os.path.join(PKG_DIR, "_core*.so")) + glob.glob(os.path.join(PKG_DIR, "_core*.pyd")))


def test_compiled_core_loaded_when_built():
    """Fails if the extension exists (or CI requires it) but the twin is in use."""
    required = os.environ.get("QUORUMLOCK_REQUIRE_EXTENSIONS", "") not in ("", "0")
    if _backend.NO_EXTENSIONS:
        pytest.skip("QUORUMLOCK_NO_EXTENSIONS is set: the twin is selected on purpose")
    if not (BUILT or required):
        pytest.skip("the compiled core is not built here")
    assert _backend.IMPLEMENTATION == "cython"
    assert quorumlock.IMPLEMENTATION == "cython"
    from quorumlock import _core

    assert _backend.core is _core


def test_env_var_selects_the_twin():
    code = "import quorumlock; print(quorumlock.IMPLEMENTATION)"
    env = dict(os.environ, QUORUMLOCK_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "python"
    env["QUORUMLOCK_NO_EXTENSIONS"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ("cython" if BUILT else "python")


def _cores():
    cores = [_pycore]
    try:
        from quorumlock import _core

        cores.append(_core)
    except ImportError:
        pass
    return cores


@pytest.mark.parametrize("core", _cores(), ids=lambda c: c.IMPLEMENTATION)
def test_same_names_in_both_builds(core):
    for name in ("IMPLEMENTATION", "TOKEN_SIZE", "monotonic_ns", "new_token", "random_bytes",
                 "encode_command", "Engine", "Lock", "NodeProtocol", "STATUS_NAMES"):
        assert hasattr(core, name), f"{core.IMPLEMENTATION} core lacks {name}"


@pytest.mark.parametrize("core", _cores(), ids=lambda c: c.IMPLEMENTATION)
def test_tokens_and_clock(core):
    toks = {core.new_token() for _ in range(5000)}
    assert len(toks) == 5000 and all(len(t) == 20 and type(t) is bytes for t in toks)
    a = core.monotonic_ns()
    b = core.monotonic_ns()
    assert isinstance(a, int) and b >= a
    # CLOCK_MONOTONIC: the same clock as time.monotonic_ns
    import time

    assert abs(core.monotonic_ns() - time.monotonic_ns()) < 50_000_000
    assert len(core.random_bytes(5000)) == 5000
    with pytest.raises(ValueError):
        core.random_bytes(-1)


@pytest.mark.parametrize("core", _cores(), ids=lambda c: c.IMPLEMENTATION)
def test_encode_command_is_resp(core):
    assert core.encode_command(b"SET", "k", 12, -5) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$2\r\n-5\r\n"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("core", _cores(), ids=lambda c: c.IMPLEMENTATION)
def test_forked_child_gets_fresh_tokens(core):
    """The token pool is discarded in a child: parent and child never share a token."""
    core.new_token()  # fill the pool
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.write(w, b"".join(core.new_token() for _ in range(50)))
        finally:
            os._exit(0)
    os.close(w)
    child = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        child += chunk
    os.close(r)
    os.waitpid(pid, 0)
    parent = b"".join(core.new_token() for _ in range(50))
    child_tokens = {child[i:i + 20] for i in range(0, len(child), 20)}
    parent_tokens = {parent[i:i + 20] for i in range(0, len(parent), 20)}
    assert len(child_tokens) == 50
    assert not (child_tokens & parent_tokens)
