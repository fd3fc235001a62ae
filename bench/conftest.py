"""Fixtures of the micro benchmarks (``python -m pytest bench/``).

``bench/`` is outside ``testpaths``: the default ``python -m pytest`` never
collects it.  Run it on purpose::

    python -m pytest bench/                       # all groups
    python -m pytest bench/ --benchmark-group-by=group --benchmark-columns=min,median,iqr,ops
    python -m pytest bench/test_micro_encode.py   # one purpose

``cluster(n)`` starts N volatile ``redis-server`` nodes on free loopback ports
once per session (``quorumlock.nodes.LocalCluster``) and stops them at the
end; every benchmark that needs servers is skipped when none is installed.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator

import pytest

from quorumlock.nodes import LocalCluster, find_server


@pytest.fixture(scope="session")
def cluster() -> Iterator[Callable[[int], LocalCluster]]:
    """``cluster(n)``: a started LocalCluster of ``n`` volatile nodes, shared by the session."""
    try:
        server = find_server()
    except RuntimeError as exc:
        pytest.skip(f"no Redis server: {exc}")
    started: Dict[int, LocalCluster] = {}

    def get(n: int) -> LocalCluster:
        if n not in started:
            started[n] = LocalCluster(n=n, mode="volatile", max_ttl=10.0, server=server)
        return started[n]

    yield get
    for c in started.values():
        c.stop()


@pytest.fixture(scope="session")
def uvloop_loop() -> Iterator[Any]:
    """One uvloop event loop for the async benchmarks (asyncio's if no uvloop)."""
    import asyncio

    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()
