"""arq (``quorumlock.integrations.arq``) with real ``arq`` worker processes
(``examples/arq_worker.py``): three lock nodes, one more local node as arq's
Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from quorumlock import LockManager

from _engine_fixtures import clusters, core, run, _shared_clusters  # noqa: F401
from _sched_common import examples_module, finished, overlaps, stop_all, take_over, wait_until

arq = pytest.importorskip("arq", reason="arq is not installed (pip install quorumlock[arq])")


@pytest.fixture
def env(make_cluster, tmp_path):
    mod = examples_module("arq_worker")
    nodes = make_cluster(n=3, mode="volatile", max_ttl=2.0)
    broker = make_cluster(n=1, mode="unsafe")
    return mod, nodes, broker.urls[0], str(tmp_path / "spans")


def test_arq_duplicates_run_one_at_a_time_and_plain_jobs_overlap(env):
    """Two workers (10 concurrent jobs each) get 9 plain jobs, the same
    exclusive job 9 times (duplicates deferred with arq's Retry) and 5 that
    skip: the exclusive runs never overlap (checker's interval analysis) and
    all 9 run; the plain ones overlap (the negative: 36 overlapping pairs
    of 9 here), so the check can fail."""
    mod, nodes, url, spans = env

    async def send():
        await mod.enqueue(url, "plain_report", "plain", 0.15, n=9)
        await mod.enqueue(url, "report", "mon", 0.15, n=9)
        await mod.enqueue(url, "report_once", "x", 0.5, n=5)

    asyncio.run(send())
    workers = [mod.start_worker(nodes.urls, url, spans) for _ in range(2)]
    try:
        def enough():
            got = finished(mod.read_spans(spans))
            return sum(s[0] == "mon" for s in got) >= 9 and sum(s[0] == "plain" for s in got) >= 9
        ok = wait_until(enough, 40, step=0.1)
        time.sleep(0.5)
    finally:
        errs = stop_all(workers)
    assert ok, errs
    got = finished(mod.read_spans(spans))
    runs = {k: [s for s in got if s[0] == k] for k in ("plain", "mon", "x")}
    assert len(runs["mon"]) == 9 and len(runs["plain"]) == 9, runs
    assert overlaps(runs["mon"]) == [] and overlaps(runs["x"]) == []
    assert 1 <= len(runs["x"]) < 5, runs["x"]
    n = len(overlaps(runs["plain"]))
    print(f"arq: {n} overlapping pairs among 9 plain runs")
    assert n >= 1, runs["plain"]


def test_arq_worker_sigkilled_mid_job_frees_the_key_within_ttl(env):
    """A worker SIGKILLed in the middle of a 30 s exclusive job with ttl=1:
    the key is held while it runs (2.5 s, auto-extended), and free again
    within the TTL of the kill (measured 0.85-0.86 s here)."""
    mod, nodes, url, spans = env
    asyncio.run(mod.enqueue(url, "report", "kill", 30.0))
    w = mod.start_worker(nodes.urls, url, spans)
    try:
        started = wait_until(lambda: [s for s in mod.read_spans(spans) if s[0] == "start:kill"], 20)
        assert started, stop_all([w])
        time.sleep(2.5)
        with LockManager(nodes.urls) as locks:
            assert locks.try_acquire("report:kill", 1.0) is None          # renewed past 2x its ttl
            os.killpg(w.pid, signal.SIGKILL)
            t_kill = time.monotonic()
            got = wait_until(lambda: locks.try_acquire("report:kill", 1.0), 5.0, step=0.01)
            freed = time.monotonic() - t_kill
            assert got is not None
            got.release()
    finally:
        stop_all([w])
    print(f"arq: key free {freed:.3f} s after the SIGKILL")
    assert freed <= 1.0 + 0.5, freed          # the TTL, plus the polling and a loaded machine


def _tick(span):
    """The tick a cron run was for: its score (ms) is the tick (x.500 s) when
    arq deferred the job to it, a little later when the enqueue was late."""
    return (int(span[0].split(":")[1]) - 500) // 1000


def _cron_runs(mod, env, kind, seconds, kill_at=None):
    _, nodes, url, spans = env
    workers = [mod.start_worker(nodes.urls, url, spans, cron=kind) for _ in range(2)]
    victim = t_kill = None
    try:
        assert wait_until(lambda: finished(mod.read_spans(spans)), 20, step=0.05), stop_all(workers)
        t0 = time.monotonic()
        if kill_at is not None:
            time.sleep(kill_at)
            victim = max(finished(mod.read_spans(spans)), key=lambda s: s[1])[3]
            os.killpg(victim, signal.SIGKILL)
            t_kill = time.monotonic_ns()
            # A bounded wait for 3 cron runs after the kill (a loaded machine
            # can stall the survivor for seconds), at least until `seconds`.
            wait_until(lambda: sum(s[0].startswith("cron:") and s[1] > t_kill
                                   for s in finished(mod.read_spans(spans))) >= 3, 20, step=0.1)
        time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    finally:
        errs = stop_all(workers)
    return [s for s in finished(mod.read_spans(spans)) if s[0].startswith("cron:")], victim, t_kill, errs


def test_arq_cron_two_workers_each_tick_once(env):
    """Two workers with the same every-second cron job, unique=False (each
    worker enqueues every tick: arq's own job-id dedupe is off): with the
    quorum tick claim every tick ran once; the worker that ran the latest
    tick is SIGKILLed after 2.5 s and the ticks go on, once each, on the
    other one."""
    mod = examples_module("arq_worker")
    runs, victim, t_kill, errs = _cron_runs(mod, env, "quorum", 5.0, kill_at=2.5)
    per_tick = Counter(_tick(s) for s in runs)
    assert len(per_tick) >= 4, (runs, errs)
    assert set(per_tick.values()) == {1}, per_tick
    after = [s for s in runs if s[1] > t_kill]
    assert len(after) >= 2 and victim not in {s[3] for s in after}, runs
    ticks = sorted(per_tick)
    missing = set(range(ticks[0], ticks[-1] + 1)) - set(ticks)
    assert len(missing - _folded(runs)) <= 1, missing   # liveness: ticks go on (the victim's may be lost)


def _folded(runs):
    """Ticks a stalled worker skipped: when its cron loop comes back after
    missing ticks, arq enqueues the missed ones late (score = now, not the
    x.500 tick), and with ``unique=False`` nothing tells which tick such a job
    was for, so they all claim the current tick and run once.  The ticks of a
    gap that ends at such a late run are those.  (Seen once under load:
    6 consecutive ticks; a worker SIGSTOPped for 4 s shows the same.)  A gap
    ending at an on-time run is a tick really lost, and still fails."""
    scores = {_tick(s): int(s[0].split(":")[1]) for s in runs}
    out = set()
    for tick, score in scores.items():
        if score % 1000 != 500:            # enqueued late: the ticks before it were folded into it
            t = tick - 1
            while t not in scores and t > min(scores):
                out.add(t)
                t -= 1
    return out


def test_arq_cron_folded_ticks_only_before_a_late_run():
    """The liveness check's allowance: a gap in the ticks is forgiven only when
    the run that ends it was enqueued late (a worker SIGSTOPped for 4 s here
    ran ticks ..347, 348, 349, then one run scored 352.792 s: 350 and 351 were
    folded into it); a gap ending at an on-time run is not."""
    def runs(*scores):
        return [(f"cron:{sc}", 0, 1, 1) for sc in scores]

    assert _folded(runs(347500, 348500, 349500, 352792, 353500)) == {350, 351}
    assert _folded(runs(347500, 348500, 349500, 352500, 353500)) == set()


def test_arq_cron_without_the_claim_runs_ticks_twice(env):
    """The negative: the same two workers with plain ``arq.cron(unique=False)``
    run every tick twice (2 runs of each of 3-4 ticks here), so the check
    above can fail."""
    mod = examples_module("arq_worker")
    runs, _, _, errs = _cron_runs(mod, env, "plain", 3.0)
    per_tick = Counter(_tick(s) for s in runs)
    print(f"arq cron without the claim: runs per tick {dict(Counter(per_tick.values()))}")
    assert per_tick and max(per_tick.values()) >= 2, (runs, errs)


def test_arq_latest_tick():
    """latest_tick: the schedule's last time at or before a moment."""
    from quorumlock.integrations.arq import latest_tick

    job = arq.cron(_noop, minute={0, 30},
                   second=0, microsecond=0)
    at = datetime(2026, 5, 1, 10, 17, 3, tzinfo=timezone.utc)
    assert latest_tick(job, at) == datetime(2026, 5, 1, 10, 0, 0, tzinfo=timezone.utc)
    assert latest_tick(job, datetime(2026, 5, 1, 10, 30, 0, tzinfo=timezone.utc)) == \
        datetime(2026, 5, 1, 10, 30, 0, tzinfo=timezone.utc)
    every = arq.cron(_noop, second=set(range(60)), microsecond=500_000)
    assert latest_tick(every, at) == datetime(2026, 5, 1, 10, 17, 2, 500_000, tzinfo=timezone.utc)


async def _noop(ctx):
    return None


# -- in-process: lost lease, busy duplicates, start-up (both builds, both loops)




def test_arq_lost_lease_cancels_the_job(run, core, clusters):
    """Another token takes the key on every node 0.3 s into a 1.5 s job:
    the job's task is cancelled at the guard moment and the job fails with
    LockLost (0.34 s after its start here, instead of 1.5 s)."""
    from quorumlock import LockLost
    from quorumlock.integrations import arq as qlarq

    cluster = clusters(3)

    @qlarq.exclusive("lost:{n}", ttl=1.0)
    async def job(ctx, n):
        await asyncio.sleep(1.5)
        return n

    async def body():
        ctx = {}
        await qlarq.startup(cluster.urls, _core=core)(ctx)
        try:
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, take_over, cluster.ports, "lost:1")
            t0 = time.monotonic()
            with pytest.raises(LockLost):
                await job(ctx, 1)
            return time.monotonic() - t0
        finally:
            await qlarq.shutdown(ctx)
            assert "quorumlock" not in ctx

    took = run(body())
    print(f"arq lost lease: LockLost {took:.3f} s after the start")
    assert took < 1.2, took


def test_arq_busy_duplicate_skips_or_retries(run, core, clusters):
    """A duplicate finds the key held: on_busy='skip' returns skip_result,
    on_busy='retry' raises arq's Retry with the defer; no manager in the
    context is a clear error; bad arguments."""
    from arq.worker import Retry

    from quorumlock.integrations import arq as qlarq

    cluster = clusters(3)

    @qlarq.exclusive(skip_result="busy")
    async def skip(ctx, a):
        return a

    @qlarq.exclusive("r:{a}", on_busy="retry", defer=2.5)
    async def retry(ctx, a):
        return a

    async def body():
        ctx = {}
        await qlarq.startup(cluster.urls, _core=core)(ctx)
        locks = ctx["quorumlock"]
        try:
            assert await skip(ctx, 1) == 1
            held = await locks.acquire(qlarq.default_key(skip.__qualname__, (1,), {}))
            assert await skip(ctx, 1) == "busy" and await skip(ctx, 2) == 2
            await held.release()
            held = await locks.acquire("r:3")
            with pytest.raises(Retry) as e:
                await retry(ctx, 3)
            assert e.value.defer_score == 2500
            await held.release()
            assert await retry(ctx, 3) == 3
        finally:
            await qlarq.shutdown(ctx)
        with pytest.raises(RuntimeError, match="on_startup"):
            await skip({}, 1)

    run(body())
    with pytest.raises(ValueError, match="on_busy"):
        qlarq.exclusive(on_busy="later")
    with pytest.raises(TypeError, match="coroutine"):
        qlarq.exclusive()(lambda ctx: None)
    with pytest.raises(TypeError, match="coroutine"):
        qlarq.cron(lambda ctx: None)
    with pytest.raises(TypeError, match="nodes"):
        qlarq.startup("redis://127.0.0.1:1")


# -- limit=k: at most k concurrent runs per key (a real arq Worker, 10 concurrent jobs)

def _peak(spans):
    from quorumlock.chaos.checker import Interval, peak_holders

    return peak_holders(Interval(s[0], f"run{i}", str(s[3]), s[1], s[2], None) for i, s in enumerate(spans))[0]


def test_arq_limit_two_runs_at_most_two_at_once_and_plain_jobs_exceed_it(run, core, clusters, make_cluster):
    """An arq Worker (burst, ``max_jobs=10``) gets 6 jobs of one key with
    ``exclusive(..., limit=2, wait=20)`` and 6 plain jobs: the limited runs
    are never more than 2 at once and reach 2 (peak of the host-monotonic run
    intervals, ``peak_holders``); the plain ones reach more than 2 (the
    negative control).  With ``limit`` ignored (a plain lock) the peak was 1."""
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    from quorumlock.integrations import arq as qlarq

    cluster = clusters(3)
    broker = make_cluster(n=1, mode="unsafe")
    spans = []

    async def record(name):
        t0 = time.monotonic_ns()
        await asyncio.sleep(0.3)
        spans.append((name, t0, time.monotonic_ns(), 0))

    @qlarq.exclusive("lim:{name}", ttl=1.0, wait=20, limit=2)
    async def limited(ctx, name):
        await record(name)

    async def plain(ctx, name):
        await record(name)

    settings = RedisSettings(host="127.0.0.1", port=broker.ports[0])

    async def body():
        pool = await create_pool(settings)
        try:
            for _ in range(6):
                await pool.enqueue_job("limited", "lim")
                await pool.enqueue_job("plain", "plain")
        finally:
            await getattr(pool, "aclose", pool.close)()
        worker = Worker(functions=[func(limited, name="limited"), func(plain, name="plain")],
                        redis_settings=settings, burst=True, max_jobs=10, poll_delay=0.05,
                        on_startup=qlarq.startup(cluster.urls, _core=core), on_shutdown=qlarq.shutdown,
                        handle_signals=False)
        try:
            await worker.main()
        finally:
            await worker.close()
        return worker

    worker = run(body(), timeout=60)
    runs = {k: [s for s in spans if s[0] == k] for k in ("lim", "plain")}
    assert len(runs["lim"]) == 6 and len(runs["plain"]) == 6, (runs, worker.jobs_failed)
    peak_lim, peak_plain = _peak(runs["lim"]), _peak(runs["plain"])
    print(f"arq limit=2: peak {peak_lim} of 6 limited runs, peak {peak_plain} of 6 plain runs")
    assert peak_lim == 2, runs["lim"]
    assert peak_plain > 2, runs["plain"]
    for bad, exc in ((0, ValueError), ("2", TypeError)):
        with pytest.raises(exc, match="limit"):
            qlarq.exclusive(limit=bad)
