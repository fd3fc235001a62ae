"""Dramatiq (``quorumlock.integrations.dramatiq``) with a real ``dramatiq``
worker (2 processes x 4 threads, ``examples/dramatiq_actors.py``): three lock
nodes, one more local node as the Redis broker."""

from __future__ import annotations

import os
import signal
import time

import pytest

from quorumlock import LockManager

from _engine_fixtures import sync_core, clusters, core, _shared_clusters  # noqa: F401
from _sched_common import examples_module, finished, overlaps, stop_all, take_over, wait_until

dramatiq = pytest.importorskip("dramatiq", reason="dramatiq is not installed (pip install quorumlock[dramatiq])")


@pytest.fixture
def env(make_cluster, tmp_path):
    os.environ.setdefault("QL_BROKER", "redis://127.0.0.1:1/0")    # the module's own broker is not used here
    mod = examples_module("dramatiq_actors")
    nodes = make_cluster(n=3, mode="volatile", max_ttl=2.0)
    broker = make_cluster(n=1, mode="unsafe")
    return mod, nodes, broker.urls[0], str(tmp_path / "spans")


def test_dramatiq_duplicates_run_one_at_a_time_and_plain_actors_overlap(env):
    """9 plain messages, 9 duplicates deferred with Busy (a dramatiq Retry,
    100 ms), 6 that wait in their thread, 5 that skip: the exclusive runs never
    overlap (checker's interval analysis), every deferred and waiting one runs
    in the end, and the plain ones do overlap (the negative: 21-25 overlapping
    pairs here), so the check can fail."""
    mod, nodes, url, spans = env
    for _ in range(9):
        mod.send(url, "plain_report", "plain", 0.15)
    for _ in range(9):
        mod.send(url, "report", "mon", 0.15)
    for _ in range(6):
        mod.send(url, "report_wait", "tue", 0.1)
    for _ in range(5):
        mod.send(url, "report_once", "x", 0.5)
    w = mod.start_worker(nodes.urls, url, spans)
    try:
        def enough():
            got = finished(mod.read_spans(spans))
            return [s for s in got if s[0] in ("mon", "tue", "plain")] if (
                sum(s[0] == "mon" for s in got) >= 9 and sum(s[0] == "tue" for s in got) >= 6
                and sum(s[0] == "plain" for s in got) >= 9) else None
        ok = wait_until(enough, 40, step=0.1)
        time.sleep(0.5)
    finally:
        errs = stop_all([w])
    assert ok, errs
    got = finished(mod.read_spans(spans))
    runs = {k: [s for s in got if s[0] == k] for k in ("plain", "mon", "tue", "x")}
    assert len(runs["mon"]) == 9 and len(runs["tue"]) == 6 and len(runs["plain"]) == 9, runs
    for k in ("mon", "tue", "x"):
        assert overlaps(runs[k]) == [], k
    assert 1 <= len(runs["x"]) < 5, runs["x"]
    n = len(overlaps(runs["plain"]))
    print(f"dramatiq: {n} overlapping pairs among 9 plain runs")
    assert n >= 1, runs["plain"]


def test_dramatiq_worker_sigkilled_mid_message_frees_the_key_within_ttl(env):
    """The worker (main and worker processes) SIGKILLed in the middle of a
    30 s exclusive message with ttl=1: the key is held while it runs (2.5 s,
    auto-extended), and free again within the TTL of the kill (measured
    0.83-0.84 s here)."""
    mod, nodes, url, spans = env
    mod.send(url, "report", "kill", 30.0)
    w = mod.start_worker(nodes.urls, url, spans, processes=1, threads=2)
    try:
        started = wait_until(lambda: [s for s in mod.read_spans(spans) if s[0] == "start:kill"], 20)
        assert started, stop_all([w])
        time.sleep(2.5)
        with LockManager(nodes.urls) as locks:
            assert locks.try_acquire("report:kill", 1.0) is None          # renewed past 2x its ttl
            os.kill(started[0][3], signal.SIGKILL)
            os.killpg(w.pid, signal.SIGKILL)
            t_kill = time.monotonic()
            got = wait_until(lambda: locks.try_acquire("report:kill", 1.0), 5.0, step=0.01)
            freed = time.monotonic() - t_kill
            assert got is not None
            got.release()
    finally:
        stop_all([w])
    print(f"dramatiq: key free {freed:.3f} s after the SIGKILL")
    assert freed <= 1.0 + 0.5, freed          # the TTL, plus the polling and a loaded machine


# -- in-process (StubBroker, a real dramatiq Worker): lost lease, options




def _stub(sync_core, cluster, **options):
    from dramatiq.brokers.stub import StubBroker

    from quorumlock.integrations.dramatiq import QuorumLock

    broker = StubBroker()
    mw = QuorumLock(lambda: LockManager(cluster.urls, _core=sync_core), ttl=1.0, **options)
    broker.add_middleware(mw)
    return broker, mw


@pytest.mark.parametrize("interrupt", [True, False])
def test_dramatiq_lost_lease_interrupts_the_actor(sync_core, clusters, interrupt):
    """Another token takes the key on every node 0.3 s into a 1.5 s actor:
    the middleware raises LeaseLost in the worker thread about a renewal later
    (the actor saw it 0.35 s after its start here); with interrupt=False
    the actor runs to its end (1.5 s), which the assertion tells apart."""
    import threading

    from dramatiq import Worker

    from quorumlock.integrations.dramatiq import LeaseLost

    cluster = clusters(3)
    broker, mw = _stub(sync_core, cluster, interrupt=interrupt)
    seen = []

    @dramatiq.actor(broker=broker, exclusive_key="lost:{0}", max_retries=0)
    def work(n):
        t0 = time.monotonic()
        try:
            for _ in range(150):
                time.sleep(0.01)
            seen.append(("done", time.monotonic() - t0))
        except LeaseLost:
            seen.append(("lost", time.monotonic() - t0))
            raise

    worker = Worker(broker, worker_timeout=50)
    worker.start()
    timer = threading.Timer(0.3, take_over, (cluster.ports, "lost:1"))
    try:
        work.send(1)
        timer.start()
        broker.join(work.queue_name, timeout=10_000, fail_fast=False)
        worker.join()
    finally:
        timer.cancel()
        worker.stop()
        mw.managers.close()
    print(f"dramatiq lost lease (interrupt={interrupt}): {seen}")
    assert len(seen) == 1, seen
    if interrupt:
        assert seen[0][0] == "lost" and seen[0][1] < 1.2, seen
    else:
        assert seen[0][0] == "done", seen
    assert mw.stats["lost"] == 1


def test_dramatiq_options_and_busy(sync_core, clusters):
    """Keys from the options (template, callable, exclusive=True digest);
    a duplicate finds the key held: skip acknowledges it without running,
    retry raises Busy (a dramatiq Retry with the delay); bad arguments."""
    from dramatiq.middleware import SkipMessage

    from quorumlock.integrations.dramatiq import Busy, QuorumLock, default_key

    cluster = clusters(3)
    broker, mw = _stub(sync_core, cluster, retry_delay=250)

    @dramatiq.actor(broker=broker, exclusive=True)
    def a(x, y=1):
        pass

    @dramatiq.actor(broker=broker, exclusive_key=lambda x: f"cb:{x}", exclusive_on_busy="skip")
    def b(x):
        pass

    @dramatiq.actor(broker=broker)
    def c(x):
        pass

    ma, mb, mc = a.message(5), b.message(6), c.message(7)
    assert mw.key_for(ma, a) == default_key("a", (5,), {}) != default_key("a", (6,), {})
    assert mw.key_for(mb, b) == "cb:6" and mw.key_for(mc, c) is None
    assert mw.key_for(c.message_with_options(args=(7,), exclusive_key="t:{0}"), c) == "t:7"
    with LockManager(cluster.urls, _core=sync_core) as locks:
        held = [locks.acquire(mw.key_for(ma, a)), locks.acquire("cb:6")]
        with pytest.raises(Busy) as e:
            mw.before_process_message(broker, ma)
        assert isinstance(e.value, dramatiq.Retry) and e.value.delay == 250
        with pytest.raises(SkipMessage):
            mw.before_process_message(broker, mb)
        mw.before_process_message(broker, mc)          # not exclusive: nothing to do
        for h in held:
            h.release()
        mw.before_process_message(broker, ma)          # now free: taken ...
        assert locks.try_acquire(mw.key_for(ma, a)) is None
        mw.after_process_message(broker, ma)           # ... and released
        lk = locks.try_acquire(mw.key_for(ma, a))
        assert lk is not None
        lk.release()
    mw.managers.close()
    with pytest.raises(ValueError, match="on_busy"):
        QuorumLock(["redis://127.0.0.1:1"], on_busy="later")
    with pytest.raises(ValueError, match="retry_delay"):
        QuorumLock(["redis://127.0.0.1:1"], retry_delay=0.5)
    with pytest.raises(TypeError, match="nodes"):
        QuorumLock("redis://127.0.0.1:1")


# -- exclusive_limit=k: at most k messages per key at once (a real Worker, 6 threads)

def _peak(spans):
    from quorumlock.chaos.checker import Interval, peak_holders

    return peak_holders(Interval(s[0], f"run{i}", str(s[3]), s[1], s[2], None) for i, s in enumerate(spans))[0]


def test_dramatiq_exclusive_limit_two_at_once_and_plain_actors_exceed_it(sync_core, clusters):
    """A dramatiq Worker with 6 threads gets 6 messages of an actor with
    ``exclusive_limit=2`` (duplicates wait in their thread, ``exclusive_wait``)
    and 6 of the same actor without a lock: the limited runs never number more
    than 2 at once and do reach 2 (peak of the host-monotonic run intervals,
    ``peak_holders``); the plain ones reach more than 2 (the negative control).
    With the option ignored (the middleware taking a plain lock) the peak was 1."""
    import threading

    from dramatiq import Worker

    cluster = clusters(3)
    broker, mw = _stub(sync_core, cluster)
    spans, mutex = [], threading.Lock()

    def record(name):
        t0 = time.monotonic_ns()
        time.sleep(0.3)
        with mutex:
            spans.append((name, t0, time.monotonic_ns(), threading.get_ident()))

    @dramatiq.actor(broker=broker, exclusive_key="lim:{0}", exclusive_limit=2, exclusive_wait=20, max_retries=0)
    def limited(name):
        record(name)

    @dramatiq.actor(broker=broker, max_retries=0)
    def plain(name):
        record(name)

    worker = Worker(broker, worker_threads=6, worker_timeout=50)
    worker.start()
    try:
        for _ in range(6):
            limited.send("lim")
        broker.join(limited.queue_name, timeout=30_000, fail_fast=True)
        worker.join()
        for _ in range(6):
            plain.send("plain")
        broker.join(plain.queue_name, timeout=30_000, fail_fast=True)
        worker.join()
    finally:
        worker.stop()
        mw.managers.close()
    runs = {k: [s for s in spans if s[0] == k] for k in ("lim", "plain")}
    assert len(runs["lim"]) == 6 and len(runs["plain"]) == 6, runs
    peak_lim, peak_plain = _peak(runs["lim"]), _peak(runs["plain"])
    print(f"dramatiq exclusive_limit=2: peak {peak_lim} of 6 limited runs, peak {peak_plain} of 6 plain runs")
    assert peak_lim == 2, runs["lim"]
    assert peak_plain > 2, runs["plain"]
    assert mw.stats["run"] == 6


def test_dramatiq_exclusive_limit_options(sync_core, clusters):
    """``exclusive_limit`` alone makes an actor limited (default key); all k
    permits held -> busy; a bad limit is a ValueError/TypeError naming it."""
    from quorumlock.integrations.dramatiq import Busy, default_key

    cluster = clusters(3)
    broker, mw = _stub(sync_core, cluster)

    @dramatiq.actor(broker=broker, exclusive_limit=2)
    def d(x):
        pass

    m = d.message(1)
    assert mw.key_for(m, d) == default_key("d", (1,), {})
    m2, m3 = d.message(1), d.message(1)
    mw.before_process_message(broker, m)
    mw.before_process_message(broker, m2)             # two permits: both run
    with pytest.raises(Busy):
        mw.before_process_message(broker, m3)
    mw.after_process_message(broker, m)
    mw.before_process_message(broker, m3)             # a permit is free again
    for x in (m2, m3):
        mw.after_process_message(broker, x)
    for bad, exc in ((0, ValueError), ("2", TypeError)):
        with pytest.raises(exc, match="exclusive_limit"):
            mw.before_process_message(broker, d.message_with_options(args=(2,), exclusive_limit=bad))
    mw.managers.close()


def test_dramatiq_exclusive_limit_lost_permit_interrupts_the_actor(sync_core, clusters):
    """``exclusive_limit=2``: another token takes both permit keys on every
    node 0.3 s into a 1.5 s actor: the middleware raises LeaseLost in the
    worker thread about a renewal later, as for a lock (0.3-0.4 s here).
    With the option ignored the actor held the plain key and ran to its end."""
    import threading

    from dramatiq import Worker

    from quorumlock.integrations.dramatiq import LeaseLost

    cluster = clusters(3)
    broker, mw = _stub(sync_core, cluster)
    seen = []

    @dramatiq.actor(broker=broker, exclusive_key="lostlim:{0}", exclusive_limit=2, max_retries=0)
    def work(n):
        t0 = time.monotonic()
        try:
            for _ in range(150):
                time.sleep(0.01)
            seen.append(("done", time.monotonic() - t0))
        except LeaseLost:
            seen.append(("lost", time.monotonic() - t0))
            raise

    worker = Worker(broker, worker_timeout=50)
    worker.start()
    timer = threading.Timer(0.3, lambda: [take_over(cluster.ports, f"lostlim:1:permit:{i}") for i in range(2)])
    try:
        work.send(1)
        timer.start()
        broker.join(work.queue_name, timeout=10_000, fail_fast=False)
        worker.join()
    finally:
        timer.cancel()
        worker.stop()
        mw.managers.close()
    print(f"dramatiq exclusive_limit=2 lost permit: {seen}")
    assert len(seen) == 1 and seen[0][0] == "lost" and seen[0][1] < 1.2, seen
    assert mw.stats["lost"] == 1
