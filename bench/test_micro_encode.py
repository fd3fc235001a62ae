"""RESP command encoding.  One iteration = encoding one command to bytes.

The commands of one cycle: the acquire ``SET key token NX PX ttl`` and the
release ``EVALSHA sha 1 key token``.  redis-py's ``Connection.pack_command``
(what pottery and redis-py's Lock go through) is the reference."""

from __future__ import annotations

import pytest
import redis.connection

from quorumlock import _pycore
from quorumlock._scripts import RELEASE_SHA

try:
    from quorumlock import _core
except ImportError:  # not built
    _core = None

KEY = b"job:000042"
TOKEN = bytes(range(20))
COMMANDS = {
    "set-nx-px": (b"SET", KEY, TOKEN, b"NX", b"PX", 10000),
    "evalsha-release": (b"EVALSHA", RELEASE_SHA, b"1", KEY, TOKEN),
}
_conn = redis.connection.Connection()


def _redis_py(*args):
    return b"".join(_conn.pack_command(*args))


IMPLS = {
    "quorumlock._core.encode_command": getattr(_core, "encode_command", None),
    "quorumlock._pycore.encode_command": getattr(_pycore, "encode_command", None),
    "redis-py pack_command": _redis_py,
}


@pytest.mark.benchmark(group="encode")
@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_encode(benchmark, impl, command):
    fn = IMPLS[impl]
    if fn is None:
        pytest.skip(f"{impl} not available")
    args = COMMANDS[command]
    out = benchmark(fn, *args)
    assert out == _redis_py(*args)
