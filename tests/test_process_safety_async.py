"""Safety inside the client process (asyncio side and the engine under both
APIs): cancellation after the decision, failed short extends, one server
listed twice, and the smaller engine items.  Real servers only; every test
runs on both engine builds (and the asyncio ones on both loops).

Each docstring records what the test caught on the first-round code."""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import threading
import time
import warnings

import pytest
import redis

from quorumlock import LockManager as SyncLockManager
from quorumlock import LockNotOwned
from quorumlock.aio import LockManager

from _engine_fixtures import clusters, core, free_port, run, sync_core, _shared_clusters  # noqa: F401


def _dbsizes(cluster):
    out = []
    for p in cluster.ports:
        c = redis.Redis(port=p)
        out.append(c.dbsize())
        c.close()
    return out


def _keys(cluster, pattern="*"):
    out = set()
    for p in cluster.ports:
        c = redis.Redis(port=p)
        out.update(c.keys(pattern))
        c.close()
    return out


async def _wait_empty(cluster, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_dbsizes(cluster)):
        await asyncio.sleep(0.05)
    return _dbsizes(cluster)


# -- row 24: cancellation after the decision ---------------------------------


async def _rtt(locks, rounds=50):
    samples = []
    for i in range(rounds):
        t = time.perf_counter()
        lk = await locks.try_acquire(f"rtt:{i}")
        samples.append(time.perf_counter() - t)
        await lk.release()
    return statistics.median(samples)


def test_cancellation_storm_leaves_no_key(run, core, clusters):
    """2,000 acquires (``try_acquire`` and ``acquire``, 20 at a time) under
    ``asyncio.timeout`` jittered around the measured round trip, plus
    TaskGroups whose sibling fails at that moment: not one key may be left.

    First-round code: 725 (asyncio, compiled), 591 (asyncio, twin), 176
    (uvloop, compiled) and 99 (uvloop, twin) of 2,000 keys left for the full
    TTL: the future had resolved with a Lock, the task was cancelled before
    it resumed, and nobody released the lock."""
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            # The timeout is jittered around an estimate of the round trip at
            # this concurrency, nudged so that about half the calls time out.
            est = [await _rtt(locks)]
            rng = random.Random(7)
            granted = timed_out = 0

            async def one(i):
                nonlocal granted, timed_out
                key = f"cx:{i}"
                try:
                    async with asyncio.timeout(est[0] * rng.uniform(0.5, 1.5)):
                        if i % 2:
                            lk = await locks.try_acquire(key)
                        else:
                            lk = await locks.acquire(key, retry_count=1)
                except TimeoutError:
                    timed_out += 1
                    est[0] *= 1.03
                    return
                granted += 1
                est[0] *= 0.97
                await lk.release()

            for start in range(0, 1600, 20):
                await asyncio.gather(*(one(i) for i in range(start, start + 20)))

            class Boom(Exception):
                pass

            async def sibling(delay):
                await asyncio.sleep(delay)
                raise Boom()

            async def child(key):
                lk = await locks.try_acquire(key)
                if lk is not None:
                    # Queued at once: a cancellation of this await cannot stop it.
                    await lk.release()

            for i in range(1600, 2000, 4):
                try:
                    async with asyncio.TaskGroup() as tg:
                        for k in range(i, i + 4):
                            tg.create_task(child(f"cx:{k}"))
                        tg.create_task(sibling(est[0] * rng.uniform(0.5, 1.5)))
                except* Boom:
                    pass
            left = await _wait_empty(cluster, timeout=2.0)
            assert timed_out > 0 and granted > 0, (timed_out, granted)
            return left, _keys(cluster, "cx:*")

    left, stray = run(body(), timeout=120)
    assert left == [0, 0, 0], f"{len(stray)} keys left by cancelled acquires: {sorted(stray)[:5]}"


@pytest.mark.parametrize("fencing", [False, True])
def test_cancelled_acquire_many_leaves_no_key(run, core, clusters, fencing):
    """300 ``acquire_many`` batches of 4 keys (one script call per node; with
    fencing one attempt per key) under ``asyncio.timeout`` jittered around
    their round trip: no key may be left.

    First-round code: acquire_many returned a bare future; a cancellation
    that landed after it resolved lost the whole batch's Locks: 156 to 472 of
    1,200 keys left, in each of the 8 runs (both builds, both loops, with and
    without fencing)."""
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, fencing=fencing, _core=core) as locks:
            samples = []
            for i in range(20):
                t = time.perf_counter()
                held = await locks.acquire_many([f"am:rtt:{i}:{k}" for k in range(4)])
                samples.append(time.perf_counter() - t)
                await locks.release_many([h for h in held if h is not None])
            est = [statistics.median(samples)]
            rng = random.Random(11)
            timed_out = 0
            for b in range(300):
                keys = [f"am:{b}:{k}" for k in range(4)]
                try:
                    async with asyncio.timeout(est[0] * rng.uniform(0.5, 1.5)):
                        held = await locks.acquire_many(keys)
                except TimeoutError:
                    timed_out += 1
                    est[0] *= 1.03
                    continue
                est[0] *= 0.97
                await locks.release_many([h for h in held if h is not None])
            assert timed_out > 0
            # (fence counters stay by design: only lock keys are counted)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and _keys(cluster, "am:*"):
                await asyncio.sleep(0.05)
            return _keys(cluster, "am:*")

    stray = run(body(), timeout=120)
    assert stray == set(), f"{len(stray)} keys left by cancelled batches: {sorted(stray)[:5]}"


def test_unawaited_try_acquire_warns_and_takes_nothing(run, core, clusters):
    """A forgotten ``await``: ``try_acquire`` is a coroutine, so nothing is
    sent, and Python warns "never awaited".  ``acquire_many`` likewise.

    First-round code: ``try_acquire`` returned the engine's future, the SET
    went out anyway, no warning, and the key stayed held for its whole TTL
    (1 key on each of the 3 nodes)."""
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                locks.try_acquire("forgot:a")
                locks.acquire_many(["forgot:b", "forgot:c"])
                await asyncio.sleep(0.2)
                gc.collect()
            texts = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
            assert sum("never awaited" in t for t in texts) >= 2, texts
            return _dbsizes(cluster)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sizes = run(body())
    assert sizes == [0, 0, 0]


def test_try_acquire_is_a_coroutine(run, core, clusters):
    cluster = clusters(1)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            c = locks.try_acquire("co:a")
            assert asyncio.iscoroutine(c)
            lk = await c
            assert lk is not None
            await lk.release()
            with pytest.raises(TypeError, match="keys"):
                locks.acquire_many("abc")
            with pytest.raises(TypeError, match="keys"):
                locks.acquire_many(b"abc")

    run(body())


# -- row 25: a failed extend with a shorter TTL ----------------------------


def _pause_all(cluster):
    for i in range(len(cluster)):
        cluster.pause(i)


def _resume_all(cluster):
    for i in range(len(cluster)):
        cluster.resume(i)


def test_failed_short_extend_aio_no_two_holders(run, core, make_cluster):
    """Holder A (ttl 10 s) calls ``extend(ttl=0.3)`` while every node is
    SIGSTOPped for longer than its node timeout: ``LockNotOwned``.  The nodes
    then run the queued PEXPIRE and drop the key 0.3 s later, and B acquires
    it.  A's lock must no longer claim validity by then.

    First-round code (both builds): A's ``lock.valid`` stayed True with ~9 s
    of validity while B held the key: two holders, every run."""
    cluster = make_cluster(n=3, mode="volatile", max_ttl=10.0)

    async def body():
        async with LockManager(cluster.urls, ttl=10.0, node_timeout=0.1, _core=core) as a, \
                LockManager(cluster.urls, ttl=10.0, _core=core) as b:
            lock = await a.try_acquire("ext:a")
            assert lock is not None and lock.validity > 9
            _pause_all(cluster)
            try:
                with pytest.raises(LockNotOwned):
                    await lock.extend(ttl=0.3)
            finally:
                await asyncio.sleep(0.2)
                _resume_all(cluster)
            await asyncio.sleep(0.6)   # the nodes applied PEXPIRE 300 ms, then dropped the key
            other = await b.try_acquire("ext:a")
            assert other is not None, "the nodes should have dropped the key"
            both = lock.valid and other.valid
            a_validity = lock.validity
            await other.release()
            return both, a_validity

    both, a_validity = run(body())
    assert not both, f"two holders: A still believed in {a_validity:.2f} s of validity"
    assert a_validity == 0.0


def test_failed_short_extend_blocking_no_two_holders(sync_core, make_cluster):
    """The blocking API, same scenario as the asyncio test above.

    First-round code (both builds): two holders (A valid for ~9 s more)."""
    cluster = make_cluster(n=3, mode="volatile", max_ttl=10.0)
    with SyncLockManager(cluster.urls, ttl=10.0, node_timeout=0.1, _core=sync_core) as a, \
            SyncLockManager(cluster.urls, ttl=10.0, _core=sync_core) as b:
        lock = a.try_acquire("ext:b")
        assert lock is not None
        _pause_all(cluster)
        timer = threading.Timer(0.3, _resume_all, args=(cluster,))
        timer.start()
        try:
            with pytest.raises(LockNotOwned):
                lock.extend(ttl=0.3)
        finally:
            timer.join()
        time.sleep(0.6)
        other = b.try_acquire("ext:b")
        assert other is not None
        both = lock.valid and other.valid
        a_validity = lock.validity
        other.release()
    assert not both, f"two holders: A still believed in {a_validity:.2f} s of validity"


def test_failed_longer_extend_keeps_no_more_than_before(run, core, clusters):
    """A failed extend never lengthens the deadline, and one refused by a
    majority (our token gone) ends the lease at once."""
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, ttl=2.0, _core=core) as locks:
            lock = await locks.try_acquire("ext:c")
            before = lock.deadline_ns
            for p in cluster.ports:   # somebody deleted our key everywhere
                c = redis.Redis(port=p)
                c.delete("ext:c")
                c.close()
            with pytest.raises(LockNotOwned):
                await lock.extend(ttl=5.0)
            assert lock.deadline_ns <= before
            assert not lock.valid and lock.validity == 0.0

    run(body())


# -- row 26: one server listed twice, down at the first connect --------------


def _two_spellings(make_cluster, tmp_path_factory):
    """S1 (plain) and S2 reachable as ``unix://`` and ``redis://`` (spellings
    the spelling check cannot tie together), S2 down when the manager
    connects and up a second later."""
    s1 = make_cluster(n=1, mode="volatile", max_ttl=4.0)
    sock = str(tmp_path_factory.mktemp("dup") / "s2.sock")
    s2 = make_cluster(n=1, mode="volatile", max_ttl=0.8, extra_args=["--unixsocket", sock])
    s2.kill(0)   # back ~0.9 s later (volatile restart delay), same port and socket
    return s1, s2, [s1.urls[0], f"unix://{sock}", s2.urls[0]]


def test_duplicate_spelling_down_at_connect_aio(run, core, make_cluster, tmp_path_factory):
    """First-round code (both builds, both loops, 4/4 runs): once S2 came up
    it was counted twice, and after S1 was killed ``extend`` still succeeded
    with S2 alone ("2 votes of 3" from one server)."""
    s1, s2, urls = _two_spellings(make_cluster, tmp_path_factory)

    async def body():
        async with LockManager(urls, ttl=5.0, restart_guard=False, node_timeout=0.1, _core=core) as locks:
            eng = locks.engine
            s2.wait_up(0, timeout=10)
            deadline = time.monotonic() + 5
            # until one spelling counts and the other was seen (and refused)
            while time.monotonic() < deadline and not (
                    (eng.nodes[1].ready or eng.nodes[2].ready)
                    and any(d and "duplicate of node" in d for d in getattr(eng, "down_detail", ()))
                    or (eng.nodes[1].ready and eng.nodes[2].ready)):
                await asyncio.sleep(0.02)
            lock = await locks.try_acquire("dup:a")
            assert lock is not None
            s1.kill(0)
            await asyncio.sleep(0.05)
            with pytest.raises(LockNotOwned):
                await lock.extend()
            op = eng.attempt("dup:b", 5000)
            assert await op.waiter is None
            details = [o.detail or "" for o in op.outcomes()]
            assert sum("duplicate of node" in d for d in details) == 1, details

    run(body())


def test_duplicate_spelling_down_at_connect_blocking(sync_core, make_cluster, tmp_path_factory):
    """The blocking API, same servers.  First-round code (both builds, 2/2
    runs): ``extend`` succeeded with S2 alone, counted twice."""
    s1, s2, urls = _two_spellings(make_cluster, tmp_path_factory)
    with SyncLockManager(urls, ttl=5.0, restart_guard=False, node_timeout=0.1, _core=sync_core) as locks:
        s2.wait_up(0, timeout=10)
        lock = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            # Reconnects happen at checkout; give both spellings their chance.
            lock = locks.try_acquire("dup:c")
            eng = locks.checkout()
            notes = getattr(eng, "down_detail", [None] * 3)   # (absent in the first round)
            seen = [nd.ready or bool(d) for nd, d in zip(eng.nodes, notes)]
            if lock is not None and seen[1] and seen[2]:
                break
            if lock is not None:
                lock.release()
            time.sleep(0.05)
        assert lock is not None
        s1.kill(0)
        time.sleep(0.05)
        with pytest.raises(LockNotOwned):
            lock.extend()
        op = eng.attempt_sync("dup:d", 5000)
        details = [o.detail or "" for o in op.outcomes()]
        assert sum("duplicate of node" in d for d in details) == 1, details


# -- smaller engine items ------------------------------------------------------


def test_cleanup_release_reaches_a_node_that_dropped_after_the_set(run, core, clusters):
    """Node 0 holds the key for someone else, node 1 grants, node 2 (behind a
    proxy) receives the SET but its reply is lost, then the connection is
    reset: the attempt fails, and node 2 was down when the clean-up release
    was due.  Once node 2 is back, the held-back release must reach it.

    First-round code (both builds, both loops): node 2 kept our key for the
    whole TTL (1 orphan key per run)."""
    from quorumlock.chaos.proxy import FaultProxy

    cluster = clusters(3)

    async def body():
        proxy = FaultProxy("127.0.0.1", cluster.ports[2])
        try:
            urls = cluster.urls[:2] + [proxy.url]
            async with LockManager(urls, ttl=5.0, node_timeout=0.5, restart_guard=False, _core=core) as locks:
                r0 = redis.Redis(port=cluster.ports[0])
                r0.set("cl:a", b"someone-else", px=5000)
                proxy.set_mode("half-reply")
                op = locks.engine.attempt("cl:a", 5000)
                await asyncio.sleep(0.05)      # the SET reached node 2; its reply was dropped
                r2 = redis.Redis(port=cluster.ports[2])
                assert r2.get("cl:a") is not None
                proxy.set_mode("reset")        # node 2's connection drops: the attempt fails
                assert await op.waiter is None
                await asyncio.sleep(0.1)
                proxy.set_mode("pass")         # node 2 comes back
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and not locks.engine.nodes[2].ready:
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)
                left = r2.get("cl:a")
                r0.close()
                r2.close()
                return left
        finally:
            proxy.close()

    assert run(body()) is None, "node 2 kept the failed attempt's key"


def test_noscript_after_the_decision_is_not_resent(run, core, clusters):
    """A node that lost its scripts (SCRIPT FLUSH) and answers slowly: the
    NOSCRIPT of a fenced acquire arrives after the acquire was decided (by the
    two fast nodes) and after the lock was released there.  Re-sending it
    then would set a key no release follows.

    First-round code (both builds, both loops): the slow node kept the
    released lock's key for its whole TTL (1 orphan per run)."""
    from quorumlock.chaos.proxy import FaultProxy

    cluster = clusters(3)

    async def body():
        proxy = FaultProxy("127.0.0.1", cluster.ports[2])
        try:
            urls = cluster.urls[:2] + [proxy.url]
            async with LockManager(urls, ttl=5.0, fencing=True, node_timeout=1.0, _core=core) as locks:
                r2 = redis.Redis(port=cluster.ports[2])
                r2.script_flush()
                # The proxy delays each chunk by 0.2 s, one after the other in
                # each direction: a's NOSCRIPT is back at ~0.4 s (and reloads
                # the scripts), x's at ~0.6 s; x is released at ~0.5 s, after
                # the reload on the wire and before x's NOSCRIPT arrives.
                proxy.set_mode("latency", 0.2)
                t0 = time.monotonic()
                a = await locks.try_acquire("ns:a")
                await asyncio.sleep(0.05)
                x = await locks.try_acquire("ns:x")
                assert a is not None and x is not None
                await asyncio.sleep(max(0.0, t0 + 0.5 - time.monotonic()))
                await x.release()
                await a.release()
                await asyncio.sleep(1.2)
                left = r2.get("ns:x")
                r2.close()
                return left
        finally:
            proxy.close()

    assert run(body()) is None, "the slow node kept a key nobody releases"


def test_reserved_prefix_and_user_keys(run, core, clusters):
    """A fence counter must never block a user key.  First-round code: once
    "job" was fenced, the user key "ql:fence:job" could never be locked (the
    counter lived there); both builds, both loops."""
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, fencing=True, lock_delay=0.1, _core=core) as locks:
            lk = await locks.try_acquire("job")
            await lk.release()
            for user_key in ("ql:fence:job", "ql:delay:job"):
                other = await locks.try_acquire(user_key)
                assert other is not None, f"{user_key!r} could not be locked"
                await other.release()
            with pytest.raises(ValueError, match="reserved"):
                await locks.try_acquire(b"\xffql:fence:job")

    run(body())


def test_lock_delay_survives_a_volatile_restart_window(clusters):
    """The restart guard keeps a restarted node out for ttl + lock_delay, so
    a lost delay marker cannot shorten the delay.  First-round code: the
    window was ttl only (1.01 s here instead of 3.03 s)."""
    cluster = clusters(3)
    m = LockManager(cluster.urls, ttl=1.0, lock_delay=2.0)
    assert m.guard_window == pytest.approx(3.0 * 1.01)


def test_config_bounds_name_the_argument(clusters):
    """First-round code: ``redis://host:0`` became port 6379,
    ``node_timeout=1e-12`` was accepted, ``max_ttl=1e300`` with ``ttl=1e20``
    raised a bare OverflowError at the first acquire, ``ttl=10**400``
    raised OverflowError (int too large to convert to float)."""
    cluster = clusters(1)
    url = cluster.urls[0]
    for mgr in (LockManager, SyncLockManager):
        with pytest.raises(ValueError, match="port"):
            mgr(["redis://127.0.0.1:0"])
        with pytest.raises(ValueError, match="node_timeout"):
            mgr([url], node_timeout=1e-12)
        with pytest.raises(ValueError, match="max_ttl"):
            mgr([url], max_ttl=1e300, ttl=1e20)
        with pytest.raises(ValueError, match="ttl"):
            mgr([url], ttl=10**400)
        with pytest.raises(ValueError, match="max_key_length"):
            mgr([url], max_key_length=2**70)
        with pytest.raises(ValueError, match="batch_chunk"):
            mgr([url], batch_chunk=2**70)
        with pytest.raises(ValueError, match="guard_window"):
            mgr([url], guard_window=1e300)
        with pytest.raises(ValueError, match="retry_delay"):
            mgr([url], retry_delay=1e300)
        mgr([url], node_timeout=0.001)   # the minimum is accepted


def test_long_ttl_validity_does_not_wrap(run, core, clusters):
    """The longest allowed TTL keeps a sane validity.  First-round code:
    ``max_ttl=1e14`` was accepted, and ``ttl=1e13`` then gave a lock whose
    validity had wrapped in the compiled core's 64-bit ns arithmetic
    (1.86e9 s left instead of 9.9e12); now max_ttl is capped at 1e9 s."""
    cluster = clusters(1)
    with pytest.raises(ValueError, match="max_ttl"):
        LockManager(cluster.urls, max_ttl=1e14, _core=core)

    async def body():
        async with LockManager(cluster.urls, ttl=10.0, max_ttl=1e9, _core=core) as locks:
            lk = await locks.try_acquire("long:a", ttl=1e9)
            assert lk is not None
            assert 0.98e9 < lk.validity <= 1e9
            await lk.release()

    run(body())


def test_acquire_many_refuses_one_string(sync_core, clusters):
    """First-round code: ``acquire_many("abc")`` locked 'a', 'b' and 'c'."""
    cluster = clusters(1)
    with SyncLockManager(cluster.urls, _core=sync_core) as locks:
        for bad in ("abc", b"abc"):
            with pytest.raises(TypeError, match="keys"):
                locks.acquire_many(bad)
    assert _dbsizes(cluster) == [0]


def test_lease_clock_is_boottime(core):
    """Both builds read one lease clock, CLOCK_BOOTTIME (it counts system
    suspend; CLOCK_MONOTONIC stops).  On a machine that never suspended the
    two clocks agree to within microseconds, so this cannot tell them apart
    here; it checks that every reader of lease deadlines uses the same
    clock as the engine (the first round mixed none, but read MONOTONIC)."""
    import quorumlock._clock as qclock
    from quorumlock.leases import _async as la, _thread as lt

    if not hasattr(time, "CLOCK_BOOTTIME"):
        pytest.skip("no CLOCK_BOOTTIME on this platform")
    assert qclock.CLOCK_NAME == "CLOCK_BOOTTIME"
    for read in (core.monotonic_ns, qclock.now_ns, la._now_ns, lt._now_ns):
        b0 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        x = read()
        b1 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        assert b0 <= x <= b1


def test_call_nodes_bounds_name_the_argument(sync_core, clusters):
    """First-round code: ``call_nodes(..., lease_ms=10**30)`` raised a bare
    OverflowError at the next reconnect (the restart guard's window in
    uint64 ns), and ``timeout=1e300`` was cast to uint64 unchecked."""
    cluster = clusters(1)
    with SyncLockManager(cluster.urls, _core=sync_core) as locks:
        with pytest.raises(ValueError, match="lease_ms"):
            locks.call_nodes([("PING",)], lease_ms=10**30)
        with pytest.raises(ValueError, match="timeout"):
            locks.call_nodes([("PING",)], timeout=1e300)
        assert locks.call_nodes([("PING",)]) == [b"PONG"]
