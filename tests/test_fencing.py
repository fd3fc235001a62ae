"""Fencing tokens, the restart guard and lock-delay, against real nodes.

The argument these tests check is written down in docs/fencing.md."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from quorumlock import LockManager
from quorumlock.chaos.proxy import FaultProxy
from quorumlock._scripts import FENCE_PREFIX

from _engine_fixtures import sync_core, clusters, core, _shared_clusters  # noqa: F401

WORKER = os.path.join(os.path.dirname(__file__), "_lock_worker.py")



def test_fence_grows_and_survives_renewal(sync_core, clusters):
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=2.0, fencing=True, _core=sync_core) as locks:
        a = locks.try_acquire("f:a")
        assert isinstance(a.fence, int) and a.fence > 0
        # the fence is committed on every node that holds our token
        counters = [int(redis.Redis(port=p).get(FENCE_PREFIX + b"f:a")) for p in cluster.ports]
        assert sum(c >= a.fence for c in counters) >= 2
        f0 = a.fence
        assert a.extend(3.0) and a.fence == f0  # renewals keep the fence
        a.release()
        b = locks.try_acquire("f:a")
        assert b.fence > f0  # a re-acquisition gets a new one
        b.release()
        # batches get fences too
        held = locks.acquire_many(["f:b", "f:c"])
        assert all(h.fence > 0 for h in held)
        locks.release_many(held)
    with LockManager(cluster.urls, _core=sync_core) as plain:
        assert plain.try_acquire("f:d").fence is None


def test_a_counter_far_ahead_of_every_clock_is_never_committed(sync_core, clusters):
    """A node whose counter is far ahead of every clock (set by hand here)
    must not push that value onto the others: a majority committing it would
    hold counters that a delayed restart cannot cover (docs/fencing.md, "Clock
    offsets").  The others refuse it in the commit round; once the clocks are
    measured the client does not count that node's yes, so fences come from
    the other two and keep growing."""
    cluster = clusters(3)
    big = 4 * 10**15  # above TIME in us, below 2**53 (Lua numbers are doubles)
    redis.Redis(port=cluster.ports[0]).set(FENCE_PREFIX + b"f:big", big)
    with LockManager(cluster.urls, fencing=True, _core=sync_core) as locks:
        fences, refused = [], 0
        for _ in range(20):
            op = locks.attempt_op("f:big", locks.options.ttl_ms)
            lk = op.result
            if lk is None:
                # only before the first clock samples are in: the commit round says why
                refused += 1
                assert any(o.status == "refused" and "ahead of this node's clock" in o.detail
                           for o in op.outcomes()), op.outcomes()
                continue
            fences.append(lk.fence)
            lk.release()
        assert refused <= 1 and len(fences) >= 19
        assert all(f < big for f in fences)
        assert fences == sorted(set(fences))
        for p in cluster.ports[1:]:
            assert int(redis.Redis(port=p).get(FENCE_PREFIX + b"f:big")) < big


def _run_fence_workers(cluster, tmp_path, key, total, procs=4, kill=None, ttl=0.5):
    urls = ",".join(cluster.urls)
    outs = [str(tmp_path / f"w{i}.txt") for i in range(procs)]
    ps = [subprocess.Popen([sys.executable, WORKER, "fences", urls, key, str(total // procs), o, str(ttl)])
          for o in outs]
    try:
        if kill is not None:
            time.sleep(kill[1])
            cluster.kill(kill[0])
        for p in ps:
            assert p.wait(timeout=150) == 0
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
    rows = []
    for o in outs:
        with open(o) as f:
            rows += [tuple(map(int, line.split())) for line in f]
    rows.sort()
    return rows


def _check_monotonic(rows):
    regressions = [(a, b) for a, b in zip(rows, rows[1:]) if b[2] <= a[2]]
    overlaps = [(a, b) for a, b in zip(rows, rows[1:]) if b[0] < a[1]]
    return regressions, overlaps


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["volatile", "fsync", "unsafe"])
def test_fences_monotonic_over_10000_acquisitions_with_a_crash(mode, sync_core, make_cluster, tmp_path):
    """10,000 successive acquisitions of one key by 4 processes, node 0
    SIGKILLed after one second (volatile: restarted after the delay; fsync
    and unsafe: at once).  Fences never go backwards in volatile and fsync.
    In unsafe mode the restarted node lost its counter; its next value is its
    clock (TIME, us), which is above every fence issued before as long as the
    nodes' clocks agree (they share one clock here), so fences still do not
    regress; what unsafe mode breaks is mutual exclusion (see the guard test)."""
    if sync_core.IMPLEMENTATION != "cython":
        pytest.skip("the multi-process run uses the installed (compiled) build")
    cluster = make_cluster(n=3, mode=mode, max_ttl=0.5)
    rows = _run_fence_workers(cluster, tmp_path, "f:mono", 10_000, kill=(0, 1.0))
    assert len(rows) == 10_000
    crash = [e for e in cluster.nodes[0].history if e[0] == "crash"]
    assert crash, "node 0 was not killed"
    regressions, overlaps = _check_monotonic(rows)
    assert regressions == []
    assert overlaps == []


def test_fences_monotonic_short(sync_core, make_cluster, tmp_path):
    """The short version of the test above, in the default run."""
    if sync_core.IMPLEMENTATION != "cython":
        pytest.skip("the multi-process run uses the installed (compiled) build")
    cluster = make_cluster(n=3, mode="volatile", max_ttl=0.5)
    rows = _run_fence_workers(cluster, tmp_path, "f:mono", 1_200, procs=3, kill=(1, 0.3))
    assert len(rows) == 1_200
    regressions, overlaps = _check_monotonic(rows)
    assert regressions == [] and overlaps == []


@pytest.mark.parametrize("guard", [True, False])
def test_restart_guard_refuses_a_restarted_node(guard, sync_core, make_cluster):
    """unsafe mode (immediate restart, no persistence): A holds the lock on a
    bare majority {0, 1}; node 0 is killed and restarted at once, empty.  B,
    which was running before the restart, must be refused while the guard is
    on; with the guard off B is granted the lock A still holds (a violation)."""
    cluster = make_cluster(n=3, mode="unsafe", max_ttl=1.0)
    proxy = FaultProxy("127.0.0.1", cluster.ports[2])
    try:
        a_urls = cluster.urls[:2] + [proxy.url]
        with LockManager(a_urls, ttl=10.0, node_timeout=0.05, _core=sync_core) as a, \
                LockManager(cluster.urls, ttl=10.0, node_timeout=0.05, restart_guard=guard,
                            guard_window=30.0, _core=sync_core) as b:
            proxy.set_mode("blackhole")
            lock_a = a.try_acquire("g:k")
            assert lock_a is not None and lock_a.nodes == 2
            assert redis.Redis(port=cluster.ports[2]).get("g:k") is None  # bare majority {0, 1}
            cluster.restart(0, delay=0)
            assert redis.Redis(port=cluster.ports[0]).get("g:k") is None  # the restart lost A's key
            granted = None
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline and granted is None:
                granted = b.try_acquire("g:k")
                time.sleep(0.02)
            assert lock_a.valid
            if guard:
                assert granted is None, "the guard let a restarted node grant a held lock"
                op = b.attempt_op("g:k", 10_000)
                assert op.outcomes()[0].status == "excluded"
            else:
                assert granted is not None, "expected the violation the guard prevents"
    finally:
        proxy.close()


def test_lock_delay_after_a_crashed_holder(sync_core, clusters):
    cluster = clusters(3)
    ttl, delay = 0.4, 0.8
    p = subprocess.Popen([sys.executable, WORKER, "hold", ",".join(cluster.urls), "d:k", str(ttl), str(delay)],
                         stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().split()
        assert line[0] == "held", line
        t_held = int(line[1])
        os.kill(p.pid, signal.SIGKILL)  # the holder crashes without releasing
        p.wait(5)
        with LockManager(cluster.urls, ttl=1.0, lock_delay=delay, _core=sync_core) as locks:
            while True:
                lock = locks.try_acquire("d:k")
                if lock is not None:
                    break
                assert time.monotonic_ns() - t_held < 5e9
                time.sleep(0.01)
            waited = (time.monotonic_ns() - t_held) / 1e9
            # not before the lease (ttl) plus the delay has passed
            assert waited >= ttl + delay - 0.05, waited
            assert waited < ttl + delay + 1.0
            # a clean release lifts the delay at once
            assert lock.release() is True
            assert locks.try_acquire("d:k") is not None
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.parametrize("how", ["fenced", "plain"])
def test_kleppmann_pause_past_the_lease(how, sync_core, clusters, make_cluster):
    """Kleppmann's scenario against real nodes: client A (a separate process)
    acquires and reads the protected counter, then is SIGSTOPped past its
    lease; B acquires, reads and writes; A is resumed and writes.

    fenced: B's fence is larger, A's write is rejected, no update is lost.
    plain:  A's write lands on top of B's: two "successful" increments, the
            counter says 1 (the lost update fencing exists to prevent)."""
    if sync_core.IMPLEMENTATION != "cython":
        pytest.skip("the client process uses the installed (compiled) build")
    cluster = clusters(3)
    storage = make_cluster(n=1, mode="volatile", max_ttl=1.0)
    store_port = storage.ports[0]
    ttl = 0.4
    a = subprocess.Popen([sys.executable, WORKER, "rmw", ",".join(cluster.urls), str(store_port), "k:counter",
                          str(ttl), how], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = a.stdout.readline().split()
        assert line[0] == "read", line
        a_value = int(line[2])
        os.kill(a.pid, signal.SIGSTOP)  # the GC pause, longer than the lease
        time.sleep(ttl + 0.1)
        with LockManager(cluster.urls, ttl=2.0, fencing=(how == "fenced"), _core=sync_core) as locks:
            lock_b = locks.acquire("k:counter", timeout=2.0)
            store_client = redis.Redis(port=store_port)
            if how == "fenced":
                from quorumlock.fencing import FencedStore

                a_fence = int(line[1])
                assert lock_b.fence > a_fence
                store = FencedStore(store_client)
                b_value = int(store.read("k:counter", lock_b.fence).value or 0)
                store.write("k:counter", b_value + 1, lock_b.fence)
            else:
                b_value = int(store_client.get("k:counter") or 0)
                store_client.set("k:counter", b_value + 1)
            lock_b.release()
        assert a_value == b_value == 0
        os.kill(a.pid, signal.SIGCONT)
        a.stdin.write("go\n")
        a.stdin.flush()
        verdict = a.stdout.readline().strip()
        assert a.wait(10) == 0
        final = int(redis.Redis(port=store_port).get("k:counter") if how == "plain"
                    else FencedStore(redis.Redis(port=store_port)).get("k:counter"))
        if how == "fenced":
            assert verdict == "rejected"
            assert final == 1  # = the one accepted increment: nothing lost
        else:
            assert verdict == "wrote"
            assert final == 1  # two "successful" increments, one survives: a lost update
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
            a.kill()
