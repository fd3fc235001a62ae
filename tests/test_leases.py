"""Auto-extension, the lost-lease guard and waiting on release notifications
(``quorumlock.leases``), against real nodes, on both engine builds (and both
event loops for the asyncio API)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from quorumlock import LockLost, LockManager, LockNotOwned, LockTimeout
from quorumlock.aio import LockManager as AsyncLockManager

from _engine_fixtures import sync_core, clusters, core, run, _shared_clusters  # noqa: F401



def _holders(cluster, key):
    out = []
    for p in cluster.ports:
        c = redis.Redis(port=p)
        out.append(c.get(key))
        c.close()
    return out


# -- asyncio -------------------------------------------------------------------


def test_async_auto_extend_outlives_ttl_then_max_hold(run, core, clusters):
    """A job three times longer than its TTL keeps its lock; with max_hold the
    guard cancels it at max_hold, before validity ran out, and the block
    raises LockLost."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=0.5, _core=core) as locks, \
                AsyncLockManager(cluster.urls, ttl=0.5, _core=core) as rival:
            async with locks.lock("le:long", auto_extend=True) as lock:
                for _ in range(6):          # 1.5 s = 3 TTLs
                    await asyncio.sleep(0.25)
                    assert lock.valid
                    assert await rival.try_acquire("le:long") is None
                assert lock.lost.is_set() is False
                assert lock.check() > 0.2
            assert lock.released and _holders(cluster, "le:long") == [None] * 3
            assert locks.metrics()["leases"]["renewals"] >= 3

            fired = []
            seen = {}
            t0 = time.monotonic()
            with pytest.raises(LockLost, match="max_hold"):
                async with locks.lock("le:hold", auto_extend=True, max_hold=1.0,
                                      on_lost=lambda lk, why: fired.append((time.monotonic(), why))) as lock:
                    try:
                        await asyncio.sleep(10)
                    except asyncio.CancelledError:
                        seen["t"] = time.monotonic()
                        seen["validity"] = lock.validity
                        raise
            held_for = seen["t"] - t0
            assert 0.95 <= held_for < 1.3, held_for
            assert seen["validity"] > 0.02, seen   # cancelled before validity ran out
            assert fired and fired[0][1] == "max_hold reached"
            assert lock.lost.is_set()
            # the task was uncancelled: it goes on normally
            await asyncio.sleep(0)

    run(body())


def test_async_lost_majority_cancels_before_validity(run, core, make_cluster):
    """A lease lost because a majority of nodes was killed: the guarded task
    is cancelled before validity ran out (the margin is measured), on_lost
    fires, the block raises LockLost."""
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=1.0, restart_guard=False, _core=core) as locks:
            fired = []
            seen = {}
            with pytest.raises(LockLost) as info:
                async with locks.lock("le:maj", auto_extend=True,
                                      on_lost=lambda lk, why: fired.append(why)) as lock:
                    await asyncio.sleep(0.1)
                    cluster.kill(0)
                    cluster.kill(1)
                    try:
                        await asyncio.sleep(5)
                    except asyncio.CancelledError:
                        seen["validity"] = lock.validity
                        seen["deadline_left"] = (lock.deadline_ns - time.monotonic_ns()) / 1e9
                        raise
            margin = lock._state.margin_ns / 1e9
            # cancelled at validity end - margin: the measured margin is close to it
            assert seen["validity"] > 0.5 * margin, (seen, margin)
            assert seen["deadline_left"] > 0
            assert fired and "quorum" in fired[0], fired
            assert "lost" in str(info.value)

    run(body())


def test_async_lost_event_without_auto_extend(run, core, clusters):
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, _core=core) as locks:
            lock = await locks.try_acquire("le:ev", ttl=0.4)
            ev = lock.lost                  # starts watching
            assert not ev.is_set()
            t0 = time.monotonic()
            await asyncio.wait_for(ev.wait(), 2.0)
            dt = time.monotonic() - t0
            assert dt < 0.4 and lock.valid  # set before validity ran out (the margin)
            with pytest.raises(LockLost):
                lock.check()
            await lock.release()
            lock2 = await locks.try_acquire("le:ev2", ttl=5)
            assert 4 < lock2.check() <= 5
            await lock2.release()
            with pytest.raises(LockNotOwned):
                lock2.check()

    run(body())


def test_async_renewals_share_one_round(run, core, clusters):
    """200 auto-extended locks of one manager: every renewal round extends all
    of them in one loop iteration (the engine writes them once per node).

    Timing margins for a loaded machine: the 200-key batch must complete
    inside its TTL or the engine (rightly) grants none of it, which a stalled
    process did once with ttl 0.6 s; so the batch is retried (a few times,
    releasing whatever it got) and the TTL is 0.9 s (renewals every 0.3 s,
    0.6 s of slack before a lease would be lost)."""
    cluster = clusters(3)
    keys = [f"le:many{i}" for i in range(200)]

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=0.9, _core=core) as locks:
            for _ in range(5):
                held = await locks.acquire_many(keys)
                if all(held):
                    break
                await locks.release_many([lk for lk in held if lk is not None])
            assert all(held)
            for lk in held:
                locks.guard(lk, auto_extend=True)
            r = locks.lease_renewer
            rounds = []
            orig = r._tick

            def tick():
                before = sum(1 for ls in r.leases if ls.inflight)
                orig()
                issued = sum(1 for ls in r.leases if ls.inflight) - before
                if issued:
                    rounds.append(issued)

            r._tick = tick
            r.timer.cancel()
            r.timer = None
            r._arm(time.monotonic_ns())
            await asyncio.sleep(1.8)
            assert all(lk.valid for lk in held)
            # one renewal every ttl/3 = 0.3 s (6 in 1.8 s; fewer when the loop
            # is starved), all 200 locks in each round
            # (once a round may split in two ticks: a few leases whose last
            # renewal answered late are planned a tick later; seen in CI as
            # [200, 200, 200, 197, 3, 200] on the pure build)
            whole = rounds.count(200)
            split = [(a, b) for a, b in zip(rounds, rounds[1:]) if a < 200 and b < 200 and a + b == 200]
            assert rounds and max(rounds) == 200 and whole + 2 * min(len(split), 1) >= len(rounds) - 1, rounds
            assert 3 <= len(rounds) <= 9, rounds
            assert await locks.release_many(held) == [True] * 200

    run(body())


def test_async_renewal_groups_split_by_a_stall_merge(run, core, clusters):
    """40 auto-extended locks whose renewals a stall split into two groups
    0.45 of an interval apart (as a loaded machine did: 178 + 22 of 200):
    within a few rounds all 40 are renewed in one round again.  First-round
    code (coalescing window a third of the interval): the groups never merged,
    rounds [20, 20, 20, 20, ...]."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=0.9, _core=core) as locks:
            for _ in range(5):
                held = await locks.acquire_many([f"le:split{i}" for i in range(40)])
                if all(held):
                    break
                await locks.release_many([lk for lk in held if lk is not None])
            assert all(held)
            for lk in held:
                locks.guard(lk, auto_extend=True)
            r = locks.lease_renewer
            rounds = []
            orig = r._tick

            def tick():
                before = sum(1 for ls in r.leases if ls.inflight)
                orig()
                issued = sum(1 for ls in r.leases if ls.inflight) - before
                if issued:
                    rounds.append(issued)

            r._tick = tick
            late = {id(lk) for lk in held[:20]}
            for ls in r.leases:
                if id(ls.lock) in late:
                    ls.next_renew_ns += int(0.45 * ls.renew_every_ns)
            r.timer.cancel()
            r.timer = None
            r._arm(time.monotonic_ns())
            await asyncio.sleep(1.8)
            assert all(lk.valid for lk in held)
            assert rounds[-2:] == [40, 40], rounds
            assert await locks.release_many(held) == [True] * 40

    run(body())


@pytest.mark.parametrize("publish", [True, False])
def test_async_wait_notify_wakes_on_release(run, core, make_cluster, publish):
    """wait="notify": the waiter acquires right after the release, far sooner
    than its polling delay.  publish=True: the release script publishes;
    False: the server's keyspace notifications (a DEL) do it."""
    extra = [] if publish else ["--notify-keyspace-events", "Kgx"]
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0, extra_args=extra)

    async def body():
        async with AsyncLockManager(cluster.urls, notify=publish, _core=core) as holder, \
                AsyncLockManager(cluster.urls, retry_delay=(1.0, 1.0), _core=core) as waiter:
            lock = await holder.acquire("le:wake", ttl=5)
            got = {}

            async def wait():
                lk = await waiter.acquire("le:wake", ttl=5, timeout=10, wait="notify")
                got["t"] = time.monotonic()
                await lk.release()

            w = asyncio.ensure_future(wait())
            await asyncio.sleep(0.3)       # the waiter is subscribed and waiting
            t_rel = time.monotonic()
            await lock.release()
            await w
            latency = got["t"] - t_rel
            # polling: the next attempt 1 s after the first, 0.7 s after the
            # release; 0.5 leaves a loaded machine room and still fails that
            assert latency < 0.5, latency

    run(body())


def test_async_notify_missed_message_still_bounded(run, core, clusters):
    """No message ever comes (plain release, no keyspace events): the waiter
    still gets the lock at its next poll."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, _core=core) as holder, \
                AsyncLockManager(cluster.urls, retry_delay=(0.2, 0.3), _core=core) as waiter:
            lock = await holder.acquire("le:miss", ttl=5)
            asyncio.get_running_loop().call_later(0.2, lambda: asyncio.ensure_future(lock.release()))
            t0 = time.monotonic()
            lk = await waiter.acquire("le:miss", ttl=5, timeout=3, wait="notify")
            assert time.monotonic() - t0 < 1.0
            await lk.release()
            with pytest.raises(LockTimeout):
                await _held_timeout(holder, waiter)

    async def _held_timeout(holder, waiter):
        h = await holder.acquire("le:miss2", ttl=5)
        try:
            await waiter.acquire("le:miss2", ttl=5, timeout=0.5, wait="notify")
        finally:
            await h.release()

    run(body())


# -- blocking ------------------------------------------------------------------


def test_blocking_auto_extend_and_max_hold(sync_core, clusters):
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=0.5, _core=sync_core) as locks, \
            LockManager(cluster.urls, ttl=0.5, _core=sync_core) as rival:
        with locks.lock("lb:long", auto_extend=True) as lock:
            for _ in range(6):
                time.sleep(0.25)
                assert lock.valid and lock.check() > 0
                assert rival.try_acquire("lb:long") is None
        assert lock.released and _holders(cluster, "lb:long") == [None] * 3
        assert locks.metrics()["leases"]["renewals"] >= 3

        fired = []
        t0 = time.monotonic()
        with pytest.raises(LockLost, match="max_hold"):
            with locks.lock("lb:hold", auto_extend=True, max_hold=1.0,
                            on_lost=lambda lk, why: fired.append((time.monotonic(), why))) as lock:
                assert lock.lost.wait(5)
                t_lost = time.monotonic()
                v = lock.validity
                with pytest.raises(LockLost):
                    lock.check()
        assert 0.95 <= t_lost - t0 < 1.3
        assert v > 0.02
        assert fired and fired[0][1] == "max_hold reached"


def test_blocking_lost_majority(sync_core, make_cluster):
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0)
    fired = []
    with LockManager(cluster.urls, ttl=1.0, restart_guard=False, _core=sync_core) as locks:
        with pytest.raises(LockLost):
            with locks.lock("lb:maj", auto_extend=True, on_lost=lambda lk, why: fired.append(why)) as lock:
                time.sleep(0.1)
                cluster.kill(0)
                cluster.kill(1)
                assert lock.lost.wait(5)
                left = (lock.deadline_ns - time.monotonic_ns()) / 1e9
                # declared lost before validity ran out (the margin aims for
                # more; a loaded 2-core CI machine can eat part of it)
                assert left > 0
        assert fired and "quorum" in fired[0]


def test_blocking_renewal_thread_batches(sync_core, clusters):
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=0.6, _core=sync_core) as locks:
        held = locks.acquire_many([f"lb:many{i}" for i in range(200)])
        for lk in held:
            locks.guard(lk)
        threads = {t.name for t in threading.enumerate()}
        assert "quorumlock-renewer" in threads
        time.sleep(1.5)
        assert all(lk.valid for lk in held)
        st = locks.metrics()["leases"]
        assert st["auto_extended"] == 200 and st["renewals"] >= 400
        assert locks.release_many(held) == [True] * 200
    assert not any(t.name == "quorumlock-renewer" and t.is_alive() for t in threading.enumerate())


def test_blocking_wait_notify(sync_core, clusters):
    cluster = clusters(3)
    with LockManager(cluster.urls, notify=True, _core=sync_core) as holder, \
            LockManager(cluster.urls, retry_delay=(1.0, 1.0), _core=sync_core) as waiter:
        lock = holder.acquire("lb:wake", ttl=5)
        got = {}

        def wait():
            lk = waiter.acquire("lb:wake", ttl=5, timeout=10, wait="notify")
            got["t"] = time.monotonic()
            lk.release()

        th = threading.Thread(target=wait)
        th.start()
        time.sleep(0.3)
        t_rel = time.monotonic()
        lock.release()
        th.join(5)
        assert got["t"] - t_rel < 0.3, got["t"] - t_rel
        # release_many publishes too (one release per key with notify)
        assert holder.release_many([holder.acquire("lb:rm", ttl=5)]) == [True]


def test_lease_option_errors(sync_core, clusters):
    cluster = clusters(1)
    with LockManager(cluster.urls, ttl=1.0, _core=sync_core) as locks:
        with pytest.raises(ValueError, match="max_hold"):
            with locks.lock("lb:bad", max_hold=-1):
                pass
        with pytest.raises(ValueError, match="margin"):
            with locks.lock("lb:bad", margin=5.0):
                pass
        with pytest.raises(TypeError, match="on_lost"):
            with locks.lock("lb:bad", on_lost=3):
                pass
        with pytest.raises(ValueError, match="wait"):
            locks.acquire("lb:bad", wait="sometimes")
        assert locks.try_acquire("lb:bad") is not None   # every failed block released


def test_notify_subscriber_authenticates_through_the_handshake(run, core, make_cluster):
    """The release subscriber opens its connections and sends AUTH through
    ``quorumlock._handshake`` (open_async, auth_command), as the lock
    connections do: on password-protected nodes every node confirms the
    subscription.  Without the AUTH the SUBSCRIBE gets NOAUTH and no node
    confirms."""
    from quorumlock import _handshake
    from quorumlock.leases.notify import async_subscriber

    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0, password="pw-notify-1")

    async def body():
        async with AsyncLockManager(cluster.urls, notify=True, _core=core) as locks:
            assert all(_handshake.auth_command(s) == ("AUTH", "pw-notify-1") for s in locks.node_specs)
            sub = async_subscriber(locks)
            w = await sub.watch(b"le:auth", lambda: None)
            try:
                assert all(p is not None for p in sub.protos)
                assert all(set(sub.channels(i, b"le:auth")) <= sub.confirmed[i] for i in range(3))
            finally:
                sub.unwatch(w)

    run(body())
