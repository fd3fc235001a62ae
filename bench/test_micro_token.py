"""Token generation.  One iteration = one 20-byte token.

quorumlock takes tokens from a pool filled by one ``getrandom()`` call
(``csrc/ql_random.h``); the pure-Python twin and the stdlib calls are the
references (``os.urandom`` is one syscall per call)."""

from __future__ import annotations

import os
import secrets

import pytest

from quorumlock import _pycore

try:
    from quorumlock import _core
except ImportError:  # not built
    _core = None

CASES = {
    "quorumlock._core.new_token": getattr(_core, "new_token", None),
    "quorumlock._pycore.new_token": _pycore.new_token,
    "os.urandom(20)": lambda: os.urandom(20),
    "secrets.token_bytes(20)": lambda: secrets.token_bytes(20),
}


@pytest.mark.benchmark(group="token")
@pytest.mark.parametrize("impl", list(CASES))
def test_new_token(benchmark, impl):
    fn = CASES[impl]
    if fn is None:
        pytest.skip("compiled core not built")
    tok = benchmark(fn)
    assert type(tok) is bytes and len(tok) == 20
