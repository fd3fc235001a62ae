"""The asyncio API and the engine under it, against real Redis nodes.

Every test runs on both engine builds (the compiled core and its pure-Python
twin) and on both event loops (asyncio's default and uvloop), through the
``core`` and ``run`` fixtures in conftest.py."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
import redis

from quorumlock import ConfigurationError, LockNotOwned, LockTimeout, QuorumLockError
from quorumlock.aio import LockManager
from quorumlock.chaos.proxy import FaultProxy

from _engine_fixtures import clusters, core, free_port, run, _shared_clusters  # noqa: F401


def _clients(cluster):
    return [redis.Redis(port=p) for p in cluster.ports]


def _holders(cluster, key):
    out = []
    for c in _clients(cluster):
        out.append(c.get(key))
        c.close()
    return out


async def _wait_reconnected(locks, i, old_run_id, timeout=5.0):
    """Wait until the manager reconnected node i to a new server process."""
    deadline = time.monotonic() + timeout
    node = locks.engine.nodes[i]
    while not (node.ready and node.run_id != old_run_id):
        assert time.monotonic() < deadline, f"node {i} did not reconnect: {node!r}"
        await asyncio.sleep(0.02)


# -- basics, N = 1, 3, 5 ----------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 5])
def test_acquire_release_roundtrip(run, core, clusters, n):
    cluster = clusters(n)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            assert locks.quorum == n // 2 + 1
            lock = await locks.try_acquire("rt:a")
            assert lock is not None
            assert lock.key == "rt:a"
            assert isinstance(lock.token, bytes) and len(lock.token) == 20
            assert lock.valid and 4.5 < lock.validity <= 5.0
            assert lock.nodes >= locks.quorum
            # the token is on the nodes, verbatim
            assert _holders(cluster, "rt:a").count(lock.token) >= locks.quorum
            assert await locks.try_acquire("rt:a") is None
            assert await lock.release() is True
            assert not lock.valid and lock.validity == 0.0
            # double release: no-op, False, key untouched
            assert await lock.release() is False
            lock2 = await locks.try_acquire(b"rt:a")
            assert lock2 is not None and lock2.token != lock.token
            await lock2.release()
            assert _holders(cluster, "rt:a") == [None] * n

    run(body())


def test_tokens_are_unique(run, core, clusters):
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, _core=core) as locks:
            held = await locks.acquire_many([f"tok:{i}" for i in range(500)], ttl=5.0)
            tokens = {lk.token for lk in held}
            assert len(tokens) == 500
            await locks.release_many(held)

    run(body())


def test_validity_arithmetic(run, core, clusters):
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, ttl=2.0, drift_factor=0.05, _core=core) as locks:
            t0 = time.monotonic()
            lock = await locks.try_acquire("va:a")
            elapsed = time.monotonic() - t0
            drift = 2.0 * 0.05 + 0.002
            # validity = ttl - elapsed - drift, measured on the monotonic clock
            assert lock.validity <= 2.0 - drift + 1e-3
            assert lock.validity >= 2.0 - drift - elapsed - 0.05
            v1 = lock.validity
            await asyncio.sleep(0.2)
            assert v1 - lock.validity == pytest.approx(0.2, abs=0.08)
            assert await lock.extend(3.0) is True
            assert 3.0 - 3.0 * 0.05 - 0.002 - 0.05 < lock.validity <= 3.0 - 3.0 * 0.05 - 0.002
            assert lock.ttl == 3.0
            # the node TTL follows
            pttls = [c.pttl("va:a") for c in _clients(cluster)]
            assert all(2800 < p <= 3000 for p in pttls)
            await lock.release()

    run(body())


def test_ttl_expiry_frees_key_and_extend_after_expiry_fails(run, core, clusters):
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, ttl=0.2, _core=core) as locks:
            lock = await locks.try_acquire("exp:a")
            assert lock is not None
            await asyncio.sleep(0.3)
            assert not lock.valid
            with pytest.raises(LockNotOwned):
                await lock.extend()
            # never resurrected
            assert _holders(cluster, "exp:a") == [None] * 3
            other = await locks.try_acquire("exp:a", ttl=5.0)
            assert other is not None
            # release by the old (non-)owner: False, the new holder keeps it
            assert await lock.release() is False
            assert _holders(cluster, "exp:a").count(other.token) == 3
            await other.release()

    run(body())


def test_lock_context_managers(run, core, clusters):
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, _core=core) as locks:
            async with locks.lock("cm:a", ttl=3.0) as lock:
                assert lock.valid
                assert await locks.try_acquire("cm:a") is None
            assert not lock.valid
            assert _holders(cluster, "cm:a") == [None] * 3
            with pytest.raises(RuntimeError):
                async with locks.lock("cm:b") as lock:
                    raise RuntimeError("boom")
            assert _holders(cluster, "cm:b") == [None] * 3
            lock = await locks.acquire("cm:c")
            async with lock:
                pass
            assert lock.released

    run(body())


def test_acquire_retries_then_times_out_with_outcomes(run, core, clusters):
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, retry_delay=(0.01, 0.02), _core=core) as locks:
            held = await locks.try_acquire("to:a", ttl=5.0)
            t0 = time.monotonic()
            with pytest.raises(LockTimeout) as ei:
                await locks.acquire("to:a", timeout=0.15)
            assert 0.1 < time.monotonic() - t0 < 1.0
            err = ei.value
            assert err.attempts >= 2
            statuses = [o.status for o in err.outcomes]
            # decided at the second "held"; the third node may still be pending
            assert statuses.count("held") >= 2 and set(statuses) <= {"held", "pending"}
            assert "held" in str(err)
            assert isinstance(err, redis.exceptions.LockError)
            with pytest.raises(LockTimeout) as ei:
                await locks.acquire("to:a", retry_count=2)
            assert ei.value.attempts == 2
            # a waiter gets the lock once it is released
            async def later():
                await asyncio.sleep(0.05)
                await held.release()

            t = asyncio.ensure_future(later())
            lock = await locks.acquire("to:a", timeout=2.0)
            await t
            await lock.release()

    run(body())


def test_mutual_exclusion_under_contention(run, core, clusters):
    """Many tasks, few keys: never two holders of one key at once."""
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            holder = {}
            acquired = 0
            violations = []

            async def worker(w):
                nonlocal acquired
                for i in range(60):
                    key = f"mx:{i % 3}"
                    lock = await locks.try_acquire(key)
                    if lock is None:
                        await asyncio.sleep(0)
                        continue
                    if holder.get(key) is not None:
                        violations.append((key, holder[key], w))
                    holder[key] = w
                    acquired += 1
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                    holder[key] = None
                    assert await lock.release() is True

            await asyncio.gather(*(worker(w) for w in range(40)))
            assert violations == []
            assert acquired >= 30
            for k in range(3):
                assert _holders(cluster, f"mx:{k}") == [None] * 3

    run(body())


def test_two_managers_contend(run, core, clusters):
    cluster = clusters(5)

    async def body():
        async with LockManager(cluster.urls, _core=core) as a, LockManager(cluster.urls, _core=core) as b:
            la = await a.try_acquire("two:a")
            assert la is not None
            assert await b.try_acquire("two:a") is None
            await la.release()
            lb = await b.try_acquire("two:a")
            assert lb is not None
            await lb.release()

    run(body())


def test_acquire_many_release_many(run, core, clusters):
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, batch_chunk=300, _core=core) as locks:
            pre = await locks.try_acquire("bm:17")
            keys = [f"bm:{i}" for i in range(1000)]
            held = await locks.acquire_many(keys, ttl=5.0)
            assert len(held) == 1000
            assert held[17] is None
            assert all(h is not None and h.key == k for h, k in zip(held, keys) if k != "bm:17")
            # the failed key kept its holder, and nothing of ours stayed on it
            assert _holders(cluster, "bm:17").count(pre.token) == 3
            got = [h for h in held if h]
            res = await locks.release_many(got)
            assert res == [True] * 999
            assert await locks.release_many(got) == [False] * 999
            assert sum(c.dbsize() for c in _clients(cluster)) == 3  # only bm:17
            await pre.release()
            assert await locks.acquire_many([]) == []
            with pytest.raises(ValueError, match="twice"):
                await locks.acquire_many(["x", "x"])

    run(body())


# -- failures ----------------------------------------------------------------


def test_down_node_costs_only_its_vote(run, core, clusters, free_port):
    cluster = clusters(3)

    async def body():
        urls = cluster.urls[:2] + [f"redis://127.0.0.1:{free_port}"]
        async with LockManager(urls, connect_timeout=0.5, _core=core) as locks:
            lock = await locks.try_acquire("down:a")
            assert lock is not None and lock.nodes == 2
            await lock.release()
            # two down: no quorum, and the error says why
            urls2 = cluster.urls[:1] + [f"redis://127.0.0.1:{free_port}", f"redis://127.0.0.1:{free_port + 1}"]
            async with LockManager(urls2, connect_timeout=0.5, _core=core) as locks2:
                with pytest.raises(LockTimeout) as ei:
                    await locks2.acquire("down:b", retry_count=1)
                statuses = [o.status for o in ei.value.outcomes]
                # decided at the second "down": the first node may not have answered yet
                assert statuses[1:] == ["down", "down"] and statuses[0] in ("ok", "pending")
            assert _holders(cluster, "down:b")[0] is None  # released after the failed attempt

    run(body())


def test_paused_node_hits_the_deadline(run, core, make_cluster):
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0)

    async def body():
        # node_timeout 0.4 s (not 0.1): a loaded machine can take 0.1 s for
        # one acquire, and the bounds below are multiples of it.
        async with LockManager(cluster.urls, ttl=2.0, node_timeout=0.4, _core=core) as locks:
            cluster.pause(2)
            try:
                t0 = time.monotonic()
                lock = await locks.try_acquire("pause:a")
                assert lock is not None  # two nodes decide; no waiting for the paused one
                assert time.monotonic() - t0 < 0.4
                await lock.release()
                cluster.pause(1)
                t0 = time.monotonic()
                with pytest.raises(LockTimeout) as ei:
                    await locks.acquire("pause:b", retry_count=1)
                took = time.monotonic() - t0
                assert 0.39 < took < 1.5
                assert sorted(o.status for o in ei.value.outcomes) == ["ok", "timeout", "timeout"]
            finally:
                cluster.resume(1)
                cluster.resume(2)
            await asyncio.sleep(0.2)
            # the paused nodes got the SET and then the release, in order
            assert _holders(cluster, "pause:b") == [None] * 3
            lock = await locks.try_acquire("pause:c")
            assert lock is not None and lock.nodes >= 2
            await lock.release()

    run(body())


def test_half_reply_release_on_all_nodes(run, core, clusters):
    """A node that applies the SET but whose reply is lost (docs/faults.md row 17):
    the failed attempt still releases there."""
    cluster = clusters(3)

    async def body():
        proxies = [FaultProxy("127.0.0.1", p) for p in cluster.ports[1:]]
        try:
            urls = cluster.urls[:1] + [p.url for p in proxies]
            async with LockManager(urls, ttl=2.0, node_timeout=0.1, _core=core) as locks:
                for p in proxies:
                    p.set_mode("half-reply")
                lock = await locks.try_acquire("half:a")
                assert lock is None
                await asyncio.sleep(0.1)
                # the SETs landed on the proxied nodes, and so did the releases
                assert _holders(cluster, "half:a") == [None] * 3
                for p in proxies:
                    p.set_mode("pass")
        finally:
            for p in proxies:
                p.close()

    run(body())


def test_reconnect_after_node_restart(run, core, make_cluster):
    cluster = make_cluster(n=3, mode="unsafe", max_ttl=1.0)

    async def body():
        async with LockManager(cluster.urls, ttl=1.0, restart_guard=False, _core=core) as locks:
            old = locks.engine.nodes[0].run_id
            cluster.kill(0)
            cluster.wait_up(0, 5.0)
            await _wait_reconnected(locks, 0, old)
            op = locks.engine.attempt("rc:a", 1000)
            lock = await op.waiter
            await asyncio.sleep(0.05)  # late replies still update the outcome
            assert [o.status for o in op.outcomes()] == ["ok"] * 3
            await lock.release()

    run(body())


def test_restart_guard_excludes_restarted_node(run, core, make_cluster):
    cluster = make_cluster(n=3, mode="unsafe", max_ttl=1.0)

    async def body():
        async with LockManager(cluster.urls, ttl=1.0, guard_window=30.0, _core=core) as locks:
            old = locks.engine.nodes[0].run_id
            cluster.kill(0)
            cluster.wait_up(0, 5.0)
            await _wait_reconnected(locks, 0, old)
            op = locks.engine.attempt("guard:a", 1000)
            lock = await op.waiter
            assert lock is not None and lock.nodes == 2
            assert [o.status for o in op.outcomes()][0] == "excluded"
            await lock.release()

    run(body())


def test_noscript_falls_back_to_eval(run, core, clusters):
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, _core=core) as locks:
            lock = await locks.try_acquire("ns:a")
            held = await locks.acquire_many(["ns:b", "ns:c"])
            for c in _clients(cluster):
                c.script_flush()
            assert await lock.extend() is True
            assert await lock.release() is True
            assert await locks.release_many(held) == [True, True]
            # release returns at quorum: let the last node's EVAL land
            await asyncio.sleep(0.05)
            assert _holders(cluster, "ns:a") == [None] * 3
            assert _holders(cluster, "ns:b") == [None] * 3
            # the scripts were loaded again: EVALSHA works on every node
            await asyncio.sleep(0.05)
            for c in _clients(cluster):
                from quorumlock import _scripts

                assert c.script_exists(_scripts.RELEASE_SHA.decode()) == [True]

    run(body())


def test_cancelled_acquire_leaves_no_key(run, core, clusters):
    cluster = clusters(3)

    async def body():
        proxies = [FaultProxy("127.0.0.1", p) for p in cluster.ports]
        try:
            async with LockManager([p.url for p in proxies], ttl=5.0, _core=core) as locks:
                for p in proxies:
                    p.set_mode("latency", 0.15)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(locks.acquire("cx:a"), 0.05)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(locks.try_acquire("cx:b"), 0.05)
                await asyncio.sleep(0.8)
                assert _holders(cluster, "cx:a") == [None] * 3
                assert _holders(cluster, "cx:b") == [None] * 3
                # a cancelled release still completes
                for p in proxies:
                    p.set_mode("pass")
                lock = await locks.try_acquire("cx:c")
                for p in proxies:
                    p.set_mode("latency", 0.1)
                t = asyncio.ensure_future(lock.release())
                await asyncio.sleep(0)
                t.cancel()
                await asyncio.sleep(0.5)
                assert _holders(cluster, "cx:c") == [None] * 3
        finally:
            for p in proxies:
                p.close()

    run(body())


def test_error_replies_are_node_failures(run, core, clusters):
    cluster = clusters(3)

    async def body():
        c0, c1, _ = _clients(cluster)
        c0.hset("wt:a", "f", "v")  # a foreign type (e.g. a Redisson lock)
        c1.config_set("maxmemory", "1")
        c1.config_set("maxmemory-policy", "noeviction")
        try:
            async with LockManager(cluster.urls, _core=core) as locks:
                with pytest.raises(LockTimeout) as ei:
                    await locks.acquire("wt:a", retry_count=1)
                out = ei.value.outcomes
                assert out[0].status == "held"  # SET NX on a hash: nil, as Redis does
                assert out[1].status == "error" and "OOM" in out[1].detail
                assert cluster.urls[1].split("//")[1] in out[1].node
        finally:
            c1.config_set("maxmemory", "0")
            c0.delete("wt:a")

    run(body())


# -- configuration -----------------------------------------------------------


def test_tls_and_password(run, core, make_cluster):
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0, tls=True, password="s3cret")

    async def body():
        urls = [f"rediss://:s3cret@127.0.0.1:{p}?ssl_ca_certs={cluster.ca_file}" for p in cluster.ports]
        async with LockManager(urls, _core=core) as locks:
            lock = await locks.try_acquire("tls:a")
            assert lock is not None and lock.nodes >= 2
            await lock.release()
        bad = [f"rediss://:wrong@127.0.0.1:{p}?ssl_ca_certs={cluster.ca_file}" for p in cluster.ports]
        t0 = time.monotonic()
        with pytest.raises(ConfigurationError, match="authentication"):
            async with LockManager(bad, _core=core):
                pass
        assert time.monotonic() - t0 < 2.0
        nopw = [f"rediss://127.0.0.1:{p}?ssl_ca_certs={cluster.ca_file}" for p in cluster.ports]
        with pytest.raises(ConfigurationError, match="authentication"):
            async with LockManager(nopw, _core=core):
                pass

    run(body())


def test_redis_py_clients_as_nodes_and_db(run, core, clusters):
    cluster = clusters(3)

    async def body():
        clients = [redis.Redis(port=p, db=2) for p in cluster.ports]
        async with LockManager(clients, _core=core) as locks:
            lock = await locks.try_acquire("db:a")
            assert redis.Redis(port=cluster.ports[0], db=2).get("db:a") == lock.token
            assert redis.Redis(port=cluster.ports[0], db=0).get("db:a") is None
            await lock.release()

    run(body())


def test_same_server_twice_is_refused(run, core, make_cluster, tmp_path):
    sock = str(tmp_path / "r.sock")
    cluster = make_cluster(n=2, mode="volatile", max_ttl=1.0, extra_args=("--unixsocket", sock))

    async def body():
        urls = [cluster.urls[0], f"unix://{sock}"]
        with pytest.raises(ConfigurationError, match="same server"):
            async with LockManager(urls + [cluster.urls[1]], _core=core):
                pass

    run(body())


def test_replica_is_refused(run, core, make_cluster, redis_server):
    primary = make_cluster(n=1, mode="volatile", max_ttl=1.0)
    replica = make_cluster(n=1, mode="volatile", max_ttl=1.0,
                           extra_args=("--replicaof", "127.0.0.1", str(primary.ports[0])))

    async def body():
        with pytest.raises(ConfigurationError, match="not a master"):
            async with LockManager(replica.urls, _core=core):
                pass

    run(body())


def test_bad_input(run, core, clusters):
    cluster = clusters(1)
    urls = cluster.urls
    # nodes
    with pytest.raises(ValueError, match="empty"):
        LockManager([])
    with pytest.raises(TypeError):
        LockManager("redis://127.0.0.1:1")
    with pytest.raises(ValueError, match="duplicate"):
        LockManager(["redis://127.0.0.1:7000", "redis://127.0.0.1:7000"])
    with pytest.raises(ValueError, match="duplicate"):
        LockManager(["redis://localhost:7000", "redis://127.0.0.1:7000"])
    with pytest.raises(ValueError, match="duplicate"):
        LockManager(["unix:///tmp/a.sock", "unix:///tmp/a.sock"])
    with pytest.raises(TypeError):
        LockManager([42])
    with pytest.raises(ValueError, match="scheme"):
        LockManager(["http://127.0.0.1:1"])
    with pytest.warns(UserWarning, match="even"):
        LockManager(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"])
    # TTLs and options
    for bad, exc in [(0, ValueError), (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
                     (True, TypeError), ("10", TypeError), (None, TypeError), (10**12, ValueError),
                     (0.001, ValueError)]:
        with pytest.raises(exc, match="ttl"):
            LockManager(urls, ttl=bad)
    with pytest.raises(ValueError, match="drift_factor"):
        LockManager(urls, drift_factor=0.9)
    with pytest.raises(TypeError, match="retry_count"):
        LockManager(urls, retry_count=1.5)
    with pytest.raises(ValueError, match="retry_count"):
        LockManager(urls, retry_count=0)

    async def body():
        async with LockManager(urls, max_key_length=64, _core=core) as locks:
            for key in (123, None, ["a"], {"a": 1}, 1.5, True, bytearray(b"a")):
                with pytest.raises(TypeError, match="key"):
                    await locks.try_acquire(key)
            with pytest.raises(ValueError, match="empty"):
                await locks.try_acquire("")
            with pytest.raises(ValueError, match="max_key_length"):
                await locks.try_acquire("x" * 65)
            with pytest.raises(ValueError, match="UTF-8"):
                await locks.try_acquire("\udcff")
            for ttl in (0, -5, math.nan, True, 10**9):
                with pytest.raises((TypeError, ValueError), match="ttl"):
                    await locks.try_acquire("k", ttl=ttl)
            with pytest.raises(TypeError):
                await locks.release_many([object()])
            with pytest.raises(ValueError, match="timeout"):
                await locks.acquire("k", timeout=-1)
            # nothing was sent: the node holds no key
            assert redis.Redis(port=cluster.ports[0]).dbsize() == 0
        with pytest.raises(RuntimeError, match="not connected"):
            locks.try_acquire("k")

    run(body())


def test_int_key_is_not_str_key(run, core, clusters):
    """redis-py would alias 1 and "1"; quorumlock refuses non-str/bytes keys."""
    cluster = clusters(1)

    async def body():
        async with LockManager(cluster.urls, _core=core) as locks:
            with pytest.raises(TypeError):
                await locks.try_acquire(1)

    run(body())


def test_acl_user(run, core, make_cluster):
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0,
                           extra_args=("--user", "alice", "on", ">wonder", "~*", "&*", "+@all"))

    async def body():
        urls = [f"redis://alice:wonder@127.0.0.1:{p}" for p in cluster.ports]
        async with LockManager(urls, _core=core) as locks:
            lock = await locks.try_acquire("acl:a")
            assert lock is not None
            await lock.release()
        bad = [f"redis://alice:nope@127.0.0.1:{p}" for p in cluster.ports]
        with pytest.raises(ConfigurationError, match="authentication"):
            async with LockManager(bad, _core=core):
                pass

    run(body())


def test_busy_and_readonly_replies(run, core, make_cluster):
    """BUSY (a node running a long script) and READONLY (a node turned into a
    replica after we connected) are failures of that node, with its text."""
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0, extra_args=("--busy-reply-threshold", "20"))
    import threading

    def long_script():
        c = redis.Redis(port=cluster.ports[0])
        try:
            # busy for 1.5 s of the node's clock
            c.eval("local function us() local t = redis.call('time') return t[1] * 1000000 + t[2] end "
                   "local stop = us() + 1500000 while us() < stop do end return 1", 0)
        except redis.exceptions.ResponseError:
            pass

    async def body():
        async with LockManager(cluster.urls, node_timeout=0.5, _core=core) as locks:
            t = threading.Thread(target=long_script)
            t.start()
            probe = redis.Redis(port=cluster.ports[0])
            for _ in range(200):  # until the node answers BUSY
                try:
                    probe.ping()
                except redis.exceptions.ResponseError as exc:
                    if "BUSY" in str(exc):
                        break
                await asyncio.sleep(0.01)
            op = locks.engine.attempt("busy:a", 5000)
            lock = await op.waiter
            await asyncio.sleep(0.05)
            out = op.outcomes()
            assert out[0].status == "error" and "BUSY" in out[0].detail, out
            assert lock is not None  # the other two decide
            await lock.release()
            await asyncio.to_thread(t.join)
            # a node that became a replica after the handshake answers READONLY
            r1 = redis.Redis(port=cluster.ports[1])
            r1.replicaof("127.0.0.1", cluster.ports[2])
            try:
                op = locks.engine.attempt("ro:a", 5000)
                await op.waiter
                await asyncio.sleep(0.05)
                out = op.outcomes()
                assert out[1].status == "error" and "READONLY" in out[1].detail, out
            finally:
                r1.replicaof("no", "one")

    run(body())
