"""Fixtures for the engine tests: both builds, both loops, shared clusters."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, Callable, Dict, Iterator

import pytest
import redis

from quorumlock import _pycore
from quorumlock.nodes import LocalCluster

try:
    from quorumlock import _core as _compiled
except ImportError:  # not built
    _compiled = None

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None


@pytest.fixture(params=["cython", "python"])
def core(request: Any) -> Any:
    """The engine build under test (tests run on both)."""
    if request.param == "cython":
        if _compiled is None:
            if os.environ.get("QUORUMLOCK_REQUIRE_EXTENSIONS"):
                pytest.fail("the compiled core is required but did not load")
            pytest.skip("compiled core not built")
        return _compiled
    if not hasattr(_pycore, "Engine"):
        pytest.skip("pure-Python engine twin not available")
    return _pycore


@pytest.fixture
def sync_core(core: Any) -> Any:
    """The engine build under test, for the blocking API (both builds have
    a blocking driver; the fixture skips one that would not)."""
    if not hasattr(core, "SyncEngine"):
        pytest.skip(f"{core.IMPLEMENTATION} engine has no blocking driver")
    return core


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: Any) -> Iterator[Callable[..., Any]]:
    """``run(coro, timeout=60)`` runs a coroutine on a fresh loop of the
    parametrized kind; an exception reported to the loop's exception handler
    (an unhandled error in a callback, a destroyed pending task) fails the test."""
    if request.param == "uvloop":
        if uvloop is None:
            pytest.skip("uvloop not installed")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    errors = []

    def runner(coro: Any, timeout: float = 60.0) -> Any:
        loop = factory()
        loop.set_exception_handler(lambda l, ctx: errors.append(ctx))
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(asyncio.wait_for(coro, timeout))
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
        
    yield runner
    assert not errors, f"unhandled errors on the event loop: {errors}"


@pytest.fixture(scope="session")
def _shared_clusters(redis_server: str) -> Iterator[Dict[int, LocalCluster]]:
    made: Dict[int, LocalCluster] = {}
    yield made
    for c in made.values():
        c.stop()


@pytest.fixture
def clusters(_shared_clusters: Dict[int, LocalCluster], redis_server: str) -> Callable[[int], LocalCluster]:
    """``clusters(n)``: a session-wide volatile cluster of n nodes, emptied
    (FLUSHALL, SCRIPT FLUSH is left to the tests) before the test gets it."""

    def get(n: int) -> LocalCluster:
        c = _shared_clusters.get(n)
        if c is None or c.stopped:
            c = LocalCluster(n=n, mode="volatile", max_ttl=1.0, server=redis_server)
            _shared_clusters[n] = c
        for port in c.ports:
            r = redis.Redis(port=port)
            r.flushall()
            r.close()
        return c

    return get


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (and the next one)."""
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        ok = True
        for p in (port, port + 1):
            t = socket.socket()
            try:
                t.settimeout(0.2)
                if t.connect_ex(("127.0.0.1", p)) == 0:
                    ok = False
            finally:
                t.close()
        if ok:
            return port
    raise RuntimeError("no free port pair")
