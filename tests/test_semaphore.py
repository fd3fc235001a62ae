"""Quorum semaphores (``quorumlock.semaphore``) against real servers, on both
engine builds; the holder-counting checker against hand-made histories; and
the pigeonhole negative control.

Histories are host-monotonic (``quorumlock.chaos.semaphores.Recorder``): a
holder's interval runs from its acquire's completion to the validity end it
believed in, cut at its release (the rules of ``quorumlock.chaos.checker``)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from quorumlock import LockManager, LockTimeout
from quorumlock.aio import LockManager as AsyncLockManager
from quorumlock.chaos import checker
from quorumlock.chaos import semaphores as cs
from quorumlock.semaphore import pick

from _engine_fixtures import sync_core, clusters, core, run, _shared_clusters  # noqa: F401

MS = 1_000_000


def _keys(cluster, pattern):
    out = []
    for p in cluster.ports:
        c = redis.Redis(port=p)
        out.append(sorted(k.decode() for k in c.keys(pattern)))
        c.close()
    return out


def _script_calls(cluster):
    """Per node: EVALSHA + EVAL calls served so far (INFO commandstats)."""
    out = []
    for p in cluster.ports:
        c = redis.Redis(port=p)
        st = c.info("commandstats")
        c.close()
        out.append(sum(st.get(k, {}).get("calls", 0) for k in ("cmdstat_evalsha", "cmdstat_eval")))
    return out


# -- the checker: pure, hand-made histories -------------------------------------------


def _acq(lid, client, key, start, end, sem="s", mode=None):
    ev = {"type": "op", "op": "acquire", "id": lid, "client": client, "key": key, "sem": sem,
          "invoke": start * MS - 1, "complete": start * MS, "ok": True, "valid_until": end * MS}
    if mode:
        ev["mode"] = mode
    return ev


def _rel(lid, t):
    return {"type": "op", "op": "release", "lock": lid, "invoke": t * MS, "complete": t * MS + 1, "ok": True}


def test_checker_flags_three_holders_of_two_permits():
    """A violating history (the pigeonhole outcome: three holders of a k=2
    semaphore at once, each on its own key) must be flagged, naming the three
    holdings; the same holders one after another must not."""
    bad = [_acq("a", "A", "s:naive:a", 0, 100), _acq("b", "B", "s:naive:b", 10, 100),
           _acq("c", "C", "s:naive:c", 20, 100)]
    v = checker.check_capacity(bad, 2)
    assert not v["ok"] and v["peak"] == {"s": 3}
    assert sorted(iv["lock"] for iv in v["violations"][0]["intervals"]) == ["a", "b", "c"]
    assert checker.check_capacity(bad, 3)["ok"]
    # Released before the next starts (interval cut at the release): peak 1.
    seq = [_acq("a", "A", "p0", 0, 100), _rel("a", 10), _acq("b", "B", "p0", 10, 100), _rel("b", 20),
           _acq("c", "C", "p1", 20, 100)]
    v = checker.check_capacity(seq, 1)
    assert v["ok"] and v["peak"] == {"s": 1}
    # An extend moves the believed end: now A overlaps C.
    ext = [_acq("a", "A", "p0", 0, 15), _acq("c", "C", "p1", 20, 100),
           {"type": "op", "op": "extend", "lock": "a", "invoke": 14 * MS, "complete": 14 * MS, "ok": True,
            "valid_until": 40 * MS}]
    assert checker.check_capacity(ext, 1)["peak"] == {"s": 2}
    assert checker.check_capacity([_acq("a", "A", "p0", 0, 15)], 1)["peak"] == {"s": 1}
    with pytest.raises(ValueError, match="limit"):
        checker.check_capacity(bad, 0)


def test_checker_rw_exclusion():
    """Readers may overlap each other; a writer overlapping a reader or a
    writer must be flagged (both kinds), and too many readers too."""
    ok = [_acq("r1", "A", "rw:read:0", 0, 50, "rw", "read"), _acq("r2", "B", "rw:read:1", 10, 50, "rw", "read"),
          _rel("r1", 50), _rel("r2", 50), _acq("w1", "C", "rw", 60, 90, "rw", "write")]
    v = checker.check_rw(ok, max_readers=2)
    assert v["ok"] and v["reader_peak"] == {"rw": 2}
    bad = ok + [_acq("r3", "D", "rw:read:2", 70, 80, "rw", "read"), _acq("w2", "E", "rw", 85, 95, "rw", "write")]
    v = checker.check_rw(bad, max_readers=2)
    assert not v["ok"]
    kinds = sorted((o["writer"]["lock"], o["other"]["lock"], o["other_mode"]) for o in v["writer_overlaps"])
    assert kinds == [("w1", "r3", "read"), ("w1", "w2", "write")]
    three = ok[:2] + [_acq("r3", "D", "rw:read:2", 20, 40, "rw", "read")]
    assert checker.check_rw(three, max_readers=2)["too_many_readers"][0]["readers"] == 3


def test_pick_keeps_one_and_spreads():
    """The kept permit is one of the granted ones, the others are extras; the
    choice is spread over the granted permits."""
    import random

    rng = random.Random(1)
    granted = ["p0", None, "p2", "p3"]
    seen = set()
    for _ in range(200):
        keep, extras = pick(granted, rng)
        assert keep in ("p0", "p2", "p3") and sorted(extras + [keep]) == ["p0", "p2", "p3"]
        seen.add(keep)
    assert seen == {"p0", "p2", "p3"}
    assert pick([None, None]) == (None, [])


# -- arguments ------------------------------------------------------------------------


def test_bad_arguments_raise_before_io():
    locks = LockManager(["redis://127.0.0.1:1", "redis://127.0.0.1:2", "redis://127.0.0.1:3"])
    with pytest.raises(TypeError, match="permits"):
        locks.semaphore("s", permits=True)
    with pytest.raises(TypeError, match="permits"):
        locks.semaphore("s", permits=2.0)
    with pytest.raises(ValueError, match="permits"):
        locks.semaphore("s", permits=0)
    with pytest.raises(TypeError, match="name"):
        locks.semaphore(None, permits=2)
    with pytest.raises(ValueError, match="name"):
        locks.semaphore("", permits=2)
    with pytest.raises(ValueError, match="ttl"):
        locks.semaphore("s", permits=2, ttl=float("nan"))
    with pytest.raises(ValueError, match="name"):
        locks.semaphore("x" * 2000, permits=2)
    with pytest.raises(ValueError, match="max_readers"):
        locks.rwlock("rw", max_readers=0)
    assert locks._engines == {}   # nothing connected


# -- one semaphore, real nodes ----------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_k_permits_then_none(sync_core, clusters, k):
    """k holders get distinct permit keys, the (k+1)-th attempt gets None, a
    release admits one more; each attempt leaves exactly the kept permit key
    on the nodes (the extras were released at once)."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as a, \
            LockManager(cluster.urls, ttl=5.0, _core=sync_core) as b:
        sa, sb = a.semaphore("sem:t", permits=k), b.semaphore("sem:t", permits=k)
        first = sa.try_acquire()
        assert first is not None and first.key.startswith("sem:t:permit:")
        assert _keys(cluster, "sem:t:*") == [[first.key]] * 3
        held = [first] + [sb.try_acquire() for _ in range(k - 1)]
        assert all(h is not None for h in held)
        assert len({h.key for h in held}) == k
        assert sa.try_acquire() is None and sb.try_acquire() is None
        with pytest.raises(LockTimeout):
            sb.acquire(timeout=0.3)
        assert held[0].release() is True
        again = sb.acquire(timeout=2.0)
        assert again.key == held[0].key
        again.extend()
        for h in held[1:] + [again]:
            h.release()
        assert _keys(cluster, "sem:t:*") == [[]] * 3


def test_context_manager_and_auto_extend(sync_core, clusters):
    """``with sem.lock(auto_extend=True)`` keeps the permit past its TTL and
    releases it at the end; the permit's lost-lease event stays clear."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=0.4, _core=sync_core) as locks:
        sem = locks.semaphore("sem:ctx", permits=1)
        with sem.lock(auto_extend=True) as p:
            time.sleep(1.0)          # 2.5 TTLs
            assert p.valid and sem.try_acquire() is None
            assert not p.lost.is_set()
        assert p.released and _keys(cluster, "sem:ctx:*") == [[]] * 3


def test_fenced_permits(sync_core, clusters):
    """With fencing, each permit carries its permit key's fence, and a later
    holder of the same permit key gets a larger one."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=2.0, fencing=True, _core=sync_core) as locks:
        sem = locks.semaphore("sem:f", permits=1)
        p1 = sem.acquire(timeout=2.0)
        f1 = p1.fence
        p1.release()
        p2 = sem.acquire(timeout=2.0)
        assert isinstance(f1, int) and p2.fence > f1
        p2.release()


@pytest.mark.parametrize("k", [2, 5, 40])
def test_one_round_per_attempt_whatever_k(sync_core, clusters, k):
    """Cost, structurally: an attempt is one ``acquire_many`` call carrying
    all k permit keys, which is one script call per node whatever k; the
    only other script calls a node may get are two release batches (the
    extras', and the engine's cleanup of the keys that failed, sent to a node
    that had not answered when the quorum was decided) — never one per
    permit.  Counted on the manager and on the servers (INFO
    commandstats), not timed."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as a, \
            LockManager(cluster.urls, ttl=5.0, _core=sync_core) as b:
        sa, sb = a.semaphore("sem:cost", permits=k), b.semaphore("sem:cost", permits=k)
        sa.try_acquire(), sb.try_acquire()          # scripts loaded, connections made
        batches = []
        real = a.acquire_many
        a.acquire_many = lambda keys, ttl=None: batches.append(list(keys)) or real(keys, ttl)
        before = _script_calls(cluster)
        p = sa.try_acquire()                        # k-2 free permits: extras when k > 3
        calls = [m - x for m, x in zip(_script_calls(cluster), before)]
        assert len(batches) == 1 and sorted(batches[0]) == sorted(sa.keys)
        assert all(1 <= c <= 3 for c in calls), calls
        if k > 3:
            assert all(c >= 2 for c in calls), calls   # the acquire batch and the extras' release
        rest = [sb.try_acquire() for _ in range(k - 3)]
        before = _script_calls(cluster)
        assert sa.try_acquire() is None             # all k held
        calls = [m - x for m, x in zip(_script_calls(cluster), before)]
        assert len(batches) == 2 and all(1 <= c <= 2 for c in calls), calls   # acquire (+ late cleanup)
        a.release_many([x for x in [p] if x]), b.release_many([x for x in rest if x])


def test_async_semaphore(run, core, clusters):
    """The asyncio face: k permits, None beyond, ``async with``, and the
    extras' release is queued without waiting (still one acquire batch per
    node per attempt)."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            sem = locks.semaphore("asem", permits=3)
            await sem.try_acquire()   # warm up (takes 3, releases 2 without waiting)
            await asyncio.sleep(0.05)
            before = _script_calls(cluster)
            p = await sem.try_acquire()          # 2 free: keeps one, releases the other
            await asyncio.sleep(0.05)
            calls = [m - x for m, x in zip(_script_calls(cluster), before)]
            assert all(2 <= c <= 3 for c in calls), calls
            q = await sem.try_acquire()
            assert p and q and await sem.try_acquire() is None
            assert len(_keys(cluster, "asem:*")[0]) == 3
            await p.release()
            async with sem.lock(timeout=1.0) as r:
                assert r.key == p.key
                with pytest.raises(LockTimeout):
                    await sem.acquire(timeout=0.2)
        assert len(_keys(cluster, "asem:*")[0]) == 2

    run(body())


def test_notify_wakes_a_waiter(sync_core, clusters):
    """With ``notify=True`` a waiter on a full semaphore is woken by the
    release instead of sleeping out its retry delay (2 s here).  Caught:
    with the wake-up off (polling only) the waiter took 2.003 s."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, notify=True, retry_delay=(2.0, 2.0), _core=sync_core) as locks:
        sem = locks.semaphore("sem:n", permits=1)
        p = sem.acquire(timeout=1.0)
        got = []

        def waiter():
            t0 = time.monotonic()
            q = sem.acquire(timeout=10.0)
            got.append(time.monotonic() - t0)
            q.release()

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.5)   # the waiter has failed once and subscribed
        p.release()
        t.join(15)
        assert got and got[0] < 1.9, got


# -- many holders, faults -----------------------------------------------------------


def _contention(cluster, core, k, clients, duration, fault="crash", managers=4):
    rec, v, counts = cs.faulted_run(cluster, permits=k, clients=clients, duration=duration, ttl=1.0,
                                    fault=fault, core=core, managers=managers)
    crashes = sum(1 for e in rec.events if e.get("name") == "node-crash")
    return v, counts, crashes


def test_32_holders_k2_n3_node_killed(sync_core, make_cluster):
    """32 threads compete for k=2 permits on 3 nodes while a node is killed
    (and restarted by the supervisor) mid-run: simultaneous holders, from the
    host-monotonic history, never exceed 2 and do reach 2; no permit key is
    ever held twice.  Caught: a semaphore whose attempts use fresh keys
    instead of the k fixed permit keys peaked at 32 holders (of k=2)."""
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0)
    v, counts, crashes = _contention(cluster, sync_core, 2, 32, 3.0)
    assert crashes >= 1, "the injector did not kill a node"
    (peak,) = v["peak"].values()
    assert peak == 2, v
    assert v["ok"] and v["key_overlaps"] == 0
    assert counts["held"] >= 10 and counts["errors"] == 0


def test_pigeonhole_negative_control_and_semaphore(make_cluster):
    """The pigeonhole schedule (N=3, k=2, each client blackholed from a
    different node): the per-node-counting semaphore admits three holders —
    the checker flags it — while the quorum semaphore admits exactly two."""
    cluster = make_cluster(n=3, mode="volatile", max_ttl=3.0)
    _, naive = cs.pigeonhole(cluster.ports, "naive", permits=2, hold=1.0)
    assert not naive["ok"]
    assert list(naive["peak"].values()) == [3]
    rec, ours = cs.pigeonhole(cluster.ports, "quorumlock", permits=2, hold=1.0)
    assert ours["ok"] and list(ours["peak"].values()) == [2]
    assert not checker.check(rec.events).overlaps


def test_async_32_tasks_k2_node_killed(run, core, make_cluster):
    """32 asyncio tasks on one loop compete for k=2 permits while a node is
    killed mid-run: never more than 2 holders, and 2 are reached."""
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0)
    rec = cs.Recorder()

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=1.0, node_timeout=0.1, retry_delay=(0.01, 0.05),
                                    _core=core) as locks:
            sem = locks.semaphore("asem:32", permits=2)
            stop_at = time.monotonic() + 2.0

            async def holder(i):
                while time.monotonic() < stop_at:
                    t0 = cs.now()
                    try:
                        p = await sem.acquire(timeout=0.5)
                    except LockTimeout:
                        continue
                    lid = rec.acquired(f"t{i}", "asem:32", p.key, t0, cs.now(), p.deadline_ns)
                    await asyncio.sleep(0.03)
                    tr = cs.now()
                    ok = await p.release()
                    rec.released(f"t{i}", lid, tr, cs.now(), ok)

            async def killer():
                await asyncio.sleep(0.7)
                rec.fault("node-crash", "node 1")
                await asyncio.get_running_loop().run_in_executor(None, cluster.kill, 1)

            await asyncio.gather(killer(), *(holder(i) for i in range(32)))

    run(body(), timeout=60)
    v = cs.verdict_of(rec.events, "semaphore", 2)
    assert v["ok"] and v["peak"] == {"asem:32": 2}, v
    assert v["holdings"] >= 10


@pytest.mark.slow
@pytest.mark.parametrize("n,k", [(3, 5), (5, 2), (5, 5)])
def test_32_holders_slow_matrix(make_cluster, n, k):
    """The same for k=2 and k=5 at N=3 and N=5 (one node killed mid-run,
    node pauses and client pauses): never more than k, k reached.  The
    default engine build only (both builds run the default-run version)."""
    cluster = make_cluster(n=n, mode="volatile", max_ttl=1.0)
    for fault in ("crash", "node-pause", "client-pause"):
        v, counts, _ = _contention(cluster, None, k, 32, 4.0, fault=fault)
        (peak,) = v["peak"].values()
        assert v["ok"] and peak == k, (fault, v)


# -- exclusive(..., limit=k) ----------------------------------------------------------


def test_exclusive_limit(sync_core, clusters):
    """``exclusive(key, limit=3, wait=True)``: 8 threads calling at once run
    at most 3 bodies at a time, and all 8 run; with ``wait=False`` the ones
    that find 3 running skip.  On the first-round code ``limit=`` is a
    TypeError."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, retry_delay=(0.01, 0.03), _core=sync_core) as locks:
        mu = threading.Lock()
        state = {"now": 0, "peak": 0, "runs": 0}

        def body():
            with mu:
                state["now"] += 1
                state["runs"] += 1
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.15)
            with mu:
                state["now"] -= 1
            return "done"

        waiting = locks.exclusive("job:{host}", limit=3, wait=True)(lambda host: body())
        skipping = locks.exclusive("job:{host}", limit=3, wait=False)(lambda host: body())
        for fn, want_all in ((waiting, True), (skipping, False)):
            state.update(now=0, peak=0, runs=0)
            out = []
            ts = [threading.Thread(target=lambda: out.append(fn("example.org"))) for _ in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(20)
            assert state["peak"] <= 3, state
            if want_all:
                assert out == ["done"] * 8 and state["peak"] == 3
            else:
                assert 1 <= out.count("done") <= 7 and out.count(None) == 8 - out.count("done")
                assert fn.stats["skipped"] == out.count(None)
        with pytest.raises(ValueError, match="limit"):
            locks.exclusive("job", limit=0)
        with pytest.raises(TypeError, match="limit"):
            locks.exclusive("job", limit="3")


def test_exclusive_limit_async(run, core, clusters):
    """The same for coroutine functions: at most 2 of 6 at once, all run."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=5.0, retry_delay=(0.01, 0.03), _core=core) as locks:
            state = {"now": 0, "peak": 0}

            @locks.exclusive("ajob", limit=2, wait=5.0)
            async def job(i):
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
                await asyncio.sleep(0.1)
                state["now"] -= 1
                return i

            assert sorted(await asyncio.gather(*(job(i) for i in range(6)))) == list(range(6))
            assert state["peak"] == 2

    run(body())


def test_cancelled_attempts_leave_no_permit(run, core, clusters):
    """Cancelling a semaphore attempt, a reader attempt or a writer's wait at
    any point leaves no permit key behind (within the node timeout).  Caught:
    awaiting acquire_many directly lost the batch when the task was cancelled
    after the batch completed but before the task resumed: all 4 permit keys
    were left on every node (3 runs of 3)."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=5.0, retry_delay=(0.01, 0.02), _core=core) as locks:
            sem = locks.semaphore("csem", permits=4)
            rw = locks.rwlock("crw", max_readers=3)
            blocker = await rw.acquire_read(timeout=1.0)     # makes the writer wait
            for steps in range(6):
                for make in (sem.try_acquire, rw.try_read, lambda: rw.acquire_write(timeout=2.0)):
                    t = asyncio.ensure_future(make())
                    for _ in range(steps):
                        await asyncio.sleep(0)
                    t.cancel()
                    try:
                        got = await t
                    except asyncio.CancelledError:
                        got = None
                    if got is not None:
                        await got.release()
            await blocker.release()
            await asyncio.sleep(0.3)
        assert _keys(cluster, "csem:*") == [[]] * 3
        assert _keys(cluster, "crw:*") == [[]] * 3

    run(body())


@pytest.mark.slow
@pytest.mark.parametrize("n,k", [(3, 2), (3, 5), (5, 2), (5, 5)])
def test_32_holders_in_4_processes(make_cluster, tmp_path, n, k):
    """32 holders in 4 processes (8 threads each, one manager per process)
    for k permits at N nodes, one node killed mid-run and restarted by the
    supervisor: the merged host-monotonic histories never show more than k
    holders, and show k."""
    import json
    import multiprocessing

    cluster = make_cluster(n=n, mode="volatile", max_ttl=1.0)
    ctx = multiprocessing.get_context("spawn")
    name = f"psem-{n}-{k}"
    procs = []
    for p in range(4):
        out = str(tmp_path / f"h{p}.jsonl")
        procs.append((ctx.Process(target=cs.process_main, args=(cluster.urls, name, k, 8, 6.0, p, out)), out))
    for pr, _ in procs:
        pr.start()
    time.sleep(3.0)
    cluster.kill(n - 1)
    for pr, _ in procs:
        pr.join(60)
        assert pr.exitcode == 0
    events = []
    for _, out in procs:
        with open(out) as f:
            events.extend(json.loads(line) for line in f)
    v = cs.verdict_of(events, "semaphore", k)
    assert v["ok"] and v["peak"] == {name: k}, {x: v[x] for x in ("ok", "peak", "key_overlaps", "holdings")}


def test_async_notify_wakes_a_waiter(run, core, clusters):
    """asyncio with ``notify=True``: the waiter acquires soon after the
    release, not after its 2 s retry delay (polling only: 2.004 s)."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=5.0, notify=True, retry_delay=(2.0, 2.0),
                                    _core=core) as locks:
            sem = locks.semaphore("asem:n", permits=1)
            p = await sem.acquire(timeout=1.0)

            async def waiter():
                t0 = time.monotonic()
                q = await sem.acquire(timeout=10.0)
                await q.release()
                return time.monotonic() - t0

            t = asyncio.ensure_future(waiter())
            await asyncio.sleep(0.5)
            await p.release()
            waited = await asyncio.wait_for(t, 15)
            assert waited < 1.9, waited

    run(body())


def _delete_everywhere(cluster, key):
    for p in cluster.ports:
        c = redis.Redis(port=p)
        c.delete(key)
        c.close()


def test_lost_permit_is_signalled(sync_core, clusters):
    """A permit taken from under its holder (its key deleted on every node)
    is declared lost by the renewer: ``permit.lost`` is set, ``on_lost``
    called, and the block raises ``LockLost``; the same for a write lock
    whose one reader-permit key is taken away."""
    from quorumlock import LockLost

    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=0.4, _core=sync_core) as locks:
        sem = locks.semaphore("sem:lost", permits=2)
        why = []
        with pytest.raises(LockLost):
            with sem.lock(auto_extend=True, on_lost=lambda lk, r: why.append(r)) as p:
                _delete_everywhere(cluster, p.key)
                assert p.lost.wait(2.0)
        assert why and "not ours" in why[0]
        rw = locks.rwlock("rw:lost", max_readers=2)
        with pytest.raises(LockLost):
            with rw.write(timeout=1.0, auto_extend=True) as w:
                _delete_everywhere(cluster, "rw:lost:read:1")
                assert w.lost.wait(2.0)
                with pytest.raises(LockLost):
                    w.check()
