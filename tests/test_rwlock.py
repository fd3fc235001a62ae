"""Quorum read-write locks (``quorumlock.rwlock``) against real servers, on
both engine builds: readers share, writers exclude everybody, a waiting
writer is not starved by a stream of readers, and all of it under node
faults (host-monotonic histories checked by ``checker.check_rw``)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from quorumlock import LockManager, LockNotOwned, LockTimeout
from quorumlock.aio import LockManager as AsyncLockManager
from quorumlock.chaos import semaphores as cs

from _engine_fixtures import sync_core, clusters, core, run, _shared_clusters  # noqa: F401


def _keys(cluster, pattern):
    out = []
    for p in cluster.ports:
        c = redis.Redis(port=p)
        out.append(sorted(k.decode() for k in c.keys(pattern)))
        c.close()
    return out


def test_readers_share_writer_excludes(sync_core, clusters):
    """max_readers readers at once, one more is refused; a writer is refused
    while any reader holds, and holds every reader key plus the intent key
    once they left; while it holds, readers and other writers are refused."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as a, \
            LockManager(cluster.urls, ttl=5.0, _core=sync_core) as b:
        ra, rb = a.rwlock("rw:t", max_readers=3), b.rwlock("rw:t", max_readers=3)
        readers = [ra.try_read(), rb.try_read(), ra.try_read()]
        assert all(readers) and len({r.key for r in readers}) == 3
        assert rb.try_read() is None
        assert rb.try_write() is None
        # the failed write kept nothing: no node holds any key but the readers',
        # and every reader key is on a majority (a reader may be granted by two
        # nodes while the third refused or has not answered yet)
        held = _keys(cluster, "rw:t:*")
        mine = sorted(r.key for r in readers)
        assert all(set(ks) <= set(mine) for ks in held), held
        assert all(sum(k in ks for ks in held) >= 2 for k in mine), held
        for r in readers:
            r.release()
        w = rb.acquire_write(timeout=2.0)
        assert sorted(lk.key for lk in w.locks) == ["rw:t:read:0", "rw:t:read:1", "rw:t:read:2", "rw:t:write"]
        assert ra.try_read() is None and ra.try_write() is None
        with pytest.raises(LockTimeout):
            ra.acquire_write(timeout=0.3)
        w.extend()
        assert w.valid and w.validity > 4.0
        assert w.release() is True and w.released
        assert _keys(cluster, "rw:t:*") == [[]] * 3
        with pytest.raises(LockNotOwned):
            w.extend()
        r = ra.acquire_read(timeout=1.0)
        r.release()


def test_intent_makes_new_readers_back_off(sync_core, clusters):
    """No writer starvation: readers keep coming (each holds 0.2 s, there is
    always one in), yet a writer gets in: once it holds the intent key, new
    readers back off, and it collects each reader key as its reader leaves.
    Caught: with the intent check removed from try_read (readers ignore a
    waiting writer), the writer timed out after 142 attempts in 3 s."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, retry_delay=(0.01, 0.03), _core=sync_core) as locks:
        rw = locks.rwlock("rw:starve", max_readers=2)
        stop = threading.Event()
        refused = []

        def reader(offset):
            time.sleep(offset)
            while not stop.is_set():
                p = rw.try_read()
                if p is None:
                    refused.append(1)
                    time.sleep(0.02)
                    continue
                time.sleep(0.2)
                p.release()

        ts = [threading.Thread(target=reader, args=(i * 0.1,)) for i in range(2)]
        for t in ts:
            t.start()
        time.sleep(0.5)
        try:
            w = rw.acquire_write(timeout=3.0)
            assert rw.try_read() is None
            w.release()
        finally:
            stop.set()
            for t in ts:
                t.join(5)
        assert refused, "no reader ever backed off"


def test_write_context_and_fence(sync_core, clusters):
    """``with rw.write(auto_extend=True)`` outlives its TTL; the write lock's
    fence is the intent key's and grows from writer to writer."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=0.4, fencing=True, _core=sync_core) as locks:
        rw = locks.rwlock("rw:ctx", max_readers=2)
        with rw.write(timeout=2.0, auto_extend=True) as w:
            time.sleep(1.0)
            assert w.valid and not w.lost.is_set()
            f1 = w.fence
            assert rw.try_read() is None
        assert w.released and _keys(cluster, "rw:ctx:*") == [[]] * 3
        with rw.write(timeout=2.0) as w2:
            assert isinstance(f1, int) and w2.fence > f1
        with rw.read(timeout=1.0) as r:
            assert r.key.startswith("rw:ctx:read:")


def test_async_rwlock(run, core, clusters):
    """The asyncio face: readers share, a writer waits for them (new readers
    back off meanwhile), then excludes them."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=5.0, retry_delay=(0.01, 0.03), _core=core) as locks:
            rw = locks.rwlock("arw", max_readers=2)
            r1 = await rw.acquire_read(timeout=1.0)
            r2 = await rw.try_read()
            assert r1 and r2 and await rw.try_read() is None
            wt = asyncio.ensure_future(rw.acquire_write(timeout=3.0))
            await asyncio.sleep(0.2)
            await r1.release()
            await asyncio.sleep(0.1)
            assert await rw.try_read() is None       # the writer's intent turns readers away
            await r2.release()
            w = await wt
            assert await rw.try_read() is None
            assert await w.release() is True
            async with rw.write(timeout=1.0) as w2:
                assert len(w2.locks) == 3
            async with rw.read(timeout=1.0) as r:
                assert r.valid
        assert _keys(cluster, "arw:*") == [[]] * 3

    run(body())


def _rw_run(cluster, core, fault, duration=3.0, clients=12, writers=3, readers_max=3):
    rec, v, counts = cs.faulted_run(cluster, kind="rwlock", permits=readers_max, clients=clients,
                                    duration=duration, ttl=1.0, fault=fault, core=core, managers=3,
                                    writers=writers)
    n_w = sum(1 for e in rec.events if e.get("op") == "acquire" and e.get("mode") == "write")
    return v, counts, n_w


def test_readers_and_writers_under_a_node_kill(sync_core, make_cluster):
    """3 writers and 9 readers (3 reader slots) while nodes are killed and
    restarted: readers overlap each other (peak > 1), never a writer; writers
    never overlap; writers did get in."""
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0)
    v, counts, n_w = _rw_run(cluster, sync_core, "crash")
    assert v["ok"] and not v["writer_overlaps"] and v["key_overlaps"] == 0, v
    (peak,) = v["reader_peak"].values()
    assert peak >= 2, v
    assert n_w >= 1 and counts["errors"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["crash", "node-pause", "client-pause"])
def test_rw_faults_slow(make_cluster, fault):
    """The same at N=5 for every fault kind, longer (default engine build)."""
    cluster = make_cluster(n=5, mode="volatile", max_ttl=1.0)
    v, counts, n_w = _rw_run(cluster, None, fault, duration=6.0, clients=16, writers=4)
    assert v["ok"], v
    assert max(v["reader_peak"].values()) >= 2 and n_w >= 1


def test_async_lost_write_lock_cancels_the_block(run, core, clusters):
    """asyncio: when a key of a guarded write lock is taken away, the block is
    cancelled and raises ``LockLost`` (and the task is not left cancelling);
    the same for a guarded reader.  Caught: the first-round contexts raised
    LockLost but left the task's cancel request counted (cancelling() == 1)."""
    from quorumlock import LockLost

    cluster = clusters(3)

    def delete(key):
        for p in cluster.ports:
            c = redis.Redis(port=p)
            c.delete(key)
            c.close()

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=0.4, _core=core) as locks:
            rw = locks.rwlock("arw:lost", max_readers=2)
            for mode, victim in (("write", "arw:lost:read:0"), ("read", None)):
                t0 = time.monotonic()
                with pytest.raises(LockLost):
                    ctx = rw.write(timeout=1.0, auto_extend=True) if mode == "write" else \
                        rw.read(timeout=1.0, auto_extend=True)
                    async with ctx as held:
                        delete(victim or held.key)
                        await asyncio.sleep(5)
                assert time.monotonic() - t0 < 3.0
                task = asyncio.current_task()
                if hasattr(task, "cancelling"):
                    assert task.cancelling() == 0
        assert _keys(cluster, "arw:lost*") == [[]] * 3

    run(body())


def test_reader_attempt_cost(sync_core, clusters):
    """A reader attempt is one permit batch plus one ``EXISTS`` of the intent
    key per node, whatever max_readers (counted on the servers)."""
    cluster = clusters(3)

    def stats():
        out = []
        for p in cluster.ports:
            c = redis.Redis(port=p)
            st = c.info("commandstats")
            c.close()
            out.append((st.get("cmdstat_exists", {}).get("calls", 0), st.get("cmdstat_evalsha", {}).get("calls", 0)))
        return out

    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
        for m in (2, 30):
            rw = locks.rwlock(f"rw:cost{m}", max_readers=m)
            held = [rw.try_read() for _ in range(m)]      # all reader permits held
            before = stats()
            assert rw.try_read() is None
            after = stats()
            for (e0, s0), (e1, s1) in zip(before, after):
                assert e1 - e0 == 1 and 1 <= s1 - s0 <= 2, (m, before, after)
            locks.release_many(held)


def test_waiting_writer_outlives_its_ttl(sync_core, clusters):
    """A writer that waits longer than its TTL for a reader keeps what it
    collected (the intent key and the free permits are extended while it
    waits): new readers stay out the whole time, and it gets in when the
    reader leaves.  Caught: without the extension the intent key expired
    after 0.5 s and new readers got in 20 times while the writer waited."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=0.5, retry_delay=(0.02, 0.05), _core=sync_core) as locks, \
            LockManager(cluster.urls, ttl=0.5, _core=sync_core) as other:
        rw, rw2 = locks.rwlock("rw:wait", max_readers=2), other.rwlock("rw:wait", max_readers=2)
        reader = rw2.acquire_read(timeout=1.0)
        other.guard(reader, auto_extend=True)
        got = []
        t = threading.Thread(target=lambda: got.append(rw.acquire_write(timeout=5.0)))
        t.start()
        for _ in range(100):      # until the writer holds the intent key
            if all(c == [b"rw:wait:write"] for c in
                   [sorted(k.encode() for k in ks if k.endswith("write")) for ks in _keys(cluster, "rw:wait:*")]):
                break
            time.sleep(0.01)
        intruders = 0
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            r = rw2.try_read()
            if r is not None:
                intruders += 1
                r.release()
            time.sleep(0.05)
        reader.release()
        t.join(10)
        assert intruders == 0
        assert got and got[0].valid
        got[0].release()


def test_async_write_lock_lost_whole_raises_lock_lost(run, core, clusters):
    """asyncio: a guarded write lock whose components are lost *together*
    (``max_hold`` dooms every component at the same moment; or all of its
    keys are taken away) still turns the block into ``LockLost``, leaves the
    task not cancelling, and runs an ``async def`` ``on_lost`` once.
    Caught: every component's lease cancelled the task on its own, so the
    block raised CancelledError with ``task.cancelling() == 2`` (2 reader
    permits + the intent key: 3 cancels, one uncancelled), and a coroutine
    ``on_lost`` was called but never awaited (0 runs)."""
    from quorumlock import LockLost

    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=0.4, _core=core) as locks:
            rw = locks.rwlock("arw:whole", max_readers=2)
            for how in ("max_hold", "delete_all"):
                calls = []

                async def on_lost(wl, reason):
                    calls.append(reason)

                async def block():
                    ctx = rw.write(timeout=1.0, auto_extend=True, on_lost=on_lost,
                                   max_hold=0.5 if how == "max_hold" else None)
                    try:
                        async with ctx as wl:
                            if how == "delete_all":
                                for p in cluster.ports:
                                    c = redis.Redis(port=p)
                                    c.delete(*[lk.key for lk in wl.locks])
                                    c.close()
                            await asyncio.sleep(5)
                    except LockLost:
                        return "LockLost", asyncio.current_task().cancelling()
                    except asyncio.CancelledError:
                        return "CancelledError", asyncio.current_task().cancelling()
                    return "no error", 0

                t0 = time.monotonic()
                got = await asyncio.ensure_future(block())
                await asyncio.sleep(0.05)   # the on_lost task runs
                assert got == ("LockLost", 0), (how, got)
                assert time.monotonic() - t0 < 3.0
                assert len(calls) == 1, (how, calls)
        assert _keys(cluster, "arw:whole*") == [[]] * 3

    run(body())


def test_write_lock_is_valid_when_returned(sync_core, clusters):
    """``acquire_write`` never returns a write lock whose lease already ran
    out.  The writer holds the intent key and reader permit 0 and waits for a
    reader on permit 1; a majority of nodes stalls (SIGSTOP) for 0.8 s of its
    1 s TTL, so its next round (started while the intent key had more than
    half its TTL left, hence not extended) completes after the intent key
    expired.  Caught: the first-round writer returned that round's write
    lock anyway, with validity 0.000 and ``valid`` False (the intent key had
    expired on the nodes; a new reader then took permit 1)."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=1.0, node_timeout=1.0, retry_delay=(0.01, 0.03), _core=sync_core) as locks, \
            LockManager(cluster.urls, ttl=0.6, _core=sync_core) as other:
        rw, rw2 = locks.rwlock("rw:stale", max_readers=2), other.rwlock("rw:stale", max_readers=2)
        reader = rw2.acquire_read(timeout=1.0)     # expires during the stall: nobody renews it
        got = []
        t = threading.Thread(target=lambda: got.append(rw.acquire_write(timeout=5.0)))
        t.start()
        time.sleep(0.3)
        try:
            cluster.pause(1)
            cluster.pause(2)
            time.sleep(0.8)
        finally:
            cluster.resume(1)
            cluster.resume(2)
        t.join(10)
        assert got, "the writer did not get in"
        wl = got[0]
        try:
            assert wl.valid and wl.validity > 0, [(lk.key, round(lk.validity, 3)) for lk in wl.locks]
            assert rw2.try_read() is None
        finally:
            wl.release()
            reader.release()


def _wait_for_intent(cluster, name, timeout=3.0):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if all(f"{name}:write" in ks for ks in _keys(cluster, f"{name}:*")):
            return
        time.sleep(0.01)
    raise AssertionError("the writer never took the intent key")


def _take_away(cluster, key):
    for p in cluster.ports:
        c = redis.Redis(port=p)
        c.delete(key)
        c.close()


def test_waiting_writer_that_loses_a_permit_starts_over(sync_core, clusters):
    """A waiting writer whose collected permit was taken away (deleted on the
    nodes, then locked by a plain holder of the same key, which checks no
    intent) must not get in while that holder holds it, and gets in once it
    leaves.  Caught (mutation: the writer ignores a failed extension of its
    collection and keeps the lost permit): it never asked for read:0 again
    and timed out after the plain holder had left."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=0.4, retry_delay=(0.01, 0.03), _core=sync_core) as locks, \
            LockManager(cluster.urls, ttl=5.0, _core=sync_core) as other:
        rw, rw2 = locks.rwlock("rw:lose", max_readers=2), other.rwlock("rw:lose", max_readers=2)
        reader = rw2.acquire_read(timeout=1.0)
        free = "rw:lose:read:0" if reader.key.endswith(":1") else "rw:lose:read:1"
        got = []
        t = threading.Thread(target=lambda: got.append(rw.acquire_write(timeout=4.0)))
        t.start()
        try:
            _wait_for_intent(cluster, "rw:lose")
            time.sleep(0.05)                    # it has collected the free permit too
            _take_away(cluster, free)
            squatter = other.acquire(free, timeout=1.0)
            time.sleep(0.4)                     # the writer's extension fails: it starts over
            reader.release()
            time.sleep(0.4)
            assert not got, "the writer got in while another client held one of its permits"
            squatter.release()
            t.join(6)
            assert got and got[0].valid
            assert rw2.try_read() is None
            got[0].release()
        finally:
            t.join(6)


def test_async_writer_intent_and_start_over(run, core, clusters):
    """asyncio: (1) while a writer holds the intent key, a reader backs off
    even with a reader permit free; (2) a waiting writer that loses a
    collected permit starts over (as in the blocking test above).  Caught
    (mutations): with the asyncio reader's intent check a no-op, the reader
    got the free permit under the writer's intent; with the asyncio
    writer's start-over removed, it timed out after the permit came free."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=0.4, retry_delay=(0.01, 0.03), _core=core) as locks, \
                AsyncLockManager(cluster.urls, ttl=5.0, _core=core) as other:
            rw, rw2 = locks.rwlock("arw:lose", max_readers=2), other.rwlock("arw:lose", max_readers=2)
            wl = await rw.acquire_write(timeout=1.0)
            await locks.release_many([wl.permits[0]])         # a permit free, the intent held
            assert await rw2.try_read() is None
            await wl.release()

            reader = await rw2.acquire_read(timeout=1.0)
            free = "arw:lose:read:0" if reader.key.endswith(":1") else "arw:lose:read:1"
            wt = asyncio.ensure_future(rw.acquire_write(timeout=4.0))
            for _ in range(300):
                if all("arw:lose:write" in ks for ks in _keys(cluster, "arw:lose:*")):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            _take_away(cluster, free)
            squatter = await other.acquire(free, timeout=1.0)
            await asyncio.sleep(0.4)
            await reader.release()
            await asyncio.sleep(0.4)
            assert not wt.done(), "the writer got in while another client held one of its permits"
            await squatter.release()
            w = await wt
            assert w.valid and await rw2.try_read() is None
            await w.release()
        assert _keys(cluster, "arw:lose*") == [[]] * 3

    run(body())


def test_async_with_on_a_blocking_rwlock_refuses_before_acquiring(sync_core, clusters):
    """``async with`` on a blocking manager's ``rw.read()`` / ``rw.write()``
    is a TypeError raised before any acquisition (as for the semaphore's
    context).  Caught: the first-round contexts acquired first and then
    failed to await the result: a reader permit and a whole write lock
    (intent key + both permits: 3 keys on 3/3 nodes) were left behind until
    their TTL, shutting every writer out meanwhile."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
        rw = locks.rwlock("rw:wrongface", max_readers=2)

        async def body():
            for ctx in (rw.read(timeout=1.0), rw.write(timeout=1.0)):
                with pytest.raises(TypeError, match="async with|blocking"):
                    async with ctx:
                        pass

        asyncio.run(body())
        assert _keys(cluster, "rw:wrongface*") == [[]] * 3


def test_async_reader_cancelled_while_the_intent_probe_is_out(run, core, clusters):
    """asyncio: a reader cancelled after its permit batch completed but while
    its intent probe is still out (the probe is slowed down: a fault a
    loopback server does not produce by itself) gives its permit back.
    Caught (mutation: no release on that path): the permit stayed held on
    3/3 nodes for the TTL."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            rw = locks.rwlock("arw:probe", max_readers=2)
            real = locks.call_nodes

            async def slow_probe(*a, **kw):
                await asyncio.sleep(0.3)
                return await real(*a, **kw)

            locks.call_nodes = slow_probe
            try:
                t = asyncio.ensure_future(rw.try_read())
                for _ in range(200):     # until the permit is on the nodes
                    if all(ks for ks in _keys(cluster, "arw:probe:read:*")):
                        break
                    await asyncio.sleep(0.005)
                t.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await t
            finally:
                locks.call_nodes = real
            await asyncio.sleep(0.1)
            assert _keys(cluster, "arw:probe:*") == [[]] * 3

    run(body())


def test_async_writer_timeout_gives_everything_back(run, core, clusters):
    """asyncio: a writer that times out waiting for a reader releases the
    intent key and the permits it collected: only the reader's permit is
    left.  Caught (mutation: no release when the wait ends): the intent key
    and the free permit stayed on 3/3 nodes for the TTL."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=5.0, retry_delay=(0.01, 0.03), _core=core) as locks:
            rw = locks.rwlock("arw:timeout", max_readers=2)
            reader = await rw.acquire_read(timeout=1.0)
            with pytest.raises(LockTimeout):
                await rw.acquire_write(timeout=0.3)
            assert _keys(cluster, "arw:timeout:*") == [[reader.key]] * 3
            await reader.release()

    run(body())
