"""Scheduler integrations (``quorumlock.integrations``) with real processes:
three APScheduler processes sharing three nodes, and a Celery worker pool with
a local Redis node as its broker."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from quorumlock.aio import LockManager as AsyncLockManager

from _engine_fixtures import clusters, core, run, sync_core, _shared_clusters  # noqa: F401

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

pytest.importorskip("apscheduler", reason="APScheduler 3.x is not installed (pip install quorumlock[integrations])")


def _examples_module(name):
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    return __import__(name)


def _check_ticks(ticks, t_kill, t_end, interval=1.0, after=2):
    """Every tick between the first and the last ran exactly once, and ticks
    kept running after the SIGKILL."""
    assert ticks, "no tick ran"
    assert sorted(set(ticks.values())) == [1], {k: v for k, v in ticks.items() if v != 1}
    step = int(interval * 1_000_000)
    first, last = min(ticks), max(ticks)
    missing = [t for t in range(first, last + 1, step) if t not in ticks]
    assert not missing, missing
    after_kill = [t for t in ticks if t / 1e6 > t_kill + interval]
    assert len(after_kill) >= after, (sorted(ticks), t_kill, t_end)


def _run_three(make_cluster, seconds, kill_at):
    mod = _examples_module("apscheduler_ticks")
    nodes = make_cluster(n=3, mode="volatile", max_ttl=5.0)
    store = make_cluster(n=1, mode="unsafe")
    return mod.run_schedulers(nodes.urls, store.urls[0], seconds, kill_at)


def test_apscheduler_three_processes_short(make_cluster):
    """Three scheduler processes, an interval job every second for 5 s, the
    active runner SIGKILLed after 2.5 s: every tick ran exactly once."""
    ticks, t_start, t_kill, t_end = _run_three(make_cluster, 5.0, 2.5)
    _check_ticks(ticks, t_kill, t_end, after=1)
    assert len(ticks) >= 4


@pytest.mark.slow
def test_apscheduler_three_processes_20s(make_cluster):
    """The full run: 20 s, SIGKILL after 10 s."""
    ticks, t_start, t_kill, t_end = _run_three(make_cluster, 20.0, 10.0)
    _check_ticks(ticks, t_kill, t_end)
    assert len(ticks) >= 19


def test_apscheduler_asyncio_executor(run, core, clusters):
    """Two AsyncIOSchedulers (two managers) with the same job: each tick once."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from quorumlock.integrations.apscheduler import AsyncIOExecutor, interval_trigger, scheduled_run_time

    cluster = clusters(3)

    async def body():
        runs = []
        async with AsyncLockManager(cluster.urls, ttl=2.0, _core=core) as l1, \
                AsyncLockManager(cluster.urls, ttl=2.0, _core=core) as l2:
            scheds = []
            for i, locks in enumerate((l1, l2)):
                async def job(i=i):
                    runs.append((scheduled_run_time(), i))

                s = AsyncIOScheduler(executors={"default": AsyncIOExecutor(locks)}, timezone="UTC",
                                     job_defaults={"misfire_grace_time": 1})
                s.add_job(job, interval_trigger(seconds=1), id="atick")
                s.start()
                scheds.append(s)
            await asyncio.sleep(3.2)
            for s in scheds:
                s.shutdown(wait=False)
            await asyncio.sleep(0.05)
        ticks = [rt for rt, _ in runs]
        assert len(ticks) >= 3 and len(set(ticks)) == len(ticks), runs
        ex = [s._executors["default"] for s in scheds]
        assert sum(e.ran for e in ex) == len(ticks) and sum(e.skipped for e in ex) == len(ticks)

    run(body())


def test_interval_trigger_rules():
    from quorumlock.integrations.apscheduler import EPOCH, interval_trigger

    t = interval_trigger(seconds=5)
    assert t.start_date == EPOCH
    with pytest.raises(ValueError, match="jitter"):
        interval_trigger(seconds=5, jitter=1)


# -- Celery ----------------------------------------------------------------------


@pytest.mark.slow   # a Celery worker pool takes 10-20 s to start, run and shut down here
def test_celery_worker_pool_runs_duplicates_one_at_a_time(make_cluster):
    """A prefork worker pool (4 processes) gets the same task many times at
    once: with lock_wait it runs them one at a time; without, the duplicates
    that arrive while one runs are skipped.  No two runs with the same
    arguments overlap (CLOCK_MONOTONIC spans recorded by the tasks)."""
    pytest.importorskip("celery", reason="celery is not installed (pip install quorumlock[integrations])")
    mod = _examples_module("celery_app")
    nodes = make_cluster(n=3, mode="volatile", max_ttl=2.0)
    broker = make_cluster(n=1, mode="unsafe")
    url = broker.urls[0]
    mod.STORE = url
    mod.app.conf.broker_url = url
    worker = mod.start_worker(nodes.urls, url, concurrency=4)
    try:
        for _ in range(6):
            mod.report.delay("mon", 0.15)
        for _ in range(2):
            mod.report.delay("tue", 0.15)
        got = mod.wait_for("ql:celery:report", 8, 40)
        for _ in range(5):
            mod.report_once.delay("x", 0.4)
        once = mod.wait_for("ql:celery:report_once", 1, 20)
        time.sleep(0.5)           # the skipped ones are done by now
        once = mod.spans("ql:celery:report_once")
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert len(got) == 8, err[-3000:]
    for day in ("mon", "tue"):
        runs = sorted((a, b) for d, a, b, _ in got if d == day)
        for x, y in zip(runs, runs[1:]):
            assert x[1] <= y[0], (day, runs)
    assert len({pid for *_, pid in got}) >= 2          # really several worker processes
    runs = sorted((a, b) for _, a, b, _ in once)
    assert 1 <= len(runs) < 5, runs
    for x, y in zip(runs, runs[1:]):
        assert x[1] <= y[0]


def test_celery_exclusive_task_in_process(clusters):
    """ExclusiveTask without a worker (the task called directly): a duplicate
    of a running call is skipped, or retried with lock_retry."""
    celery = pytest.importorskip("celery", reason="celery is not installed (pip install quorumlock[integrations])")
    from quorumlock.integrations.celery import ExclusiveTask, configure, default_key, manager_for

    cluster = clusters(3)
    app = celery.Celery("ql_unit", broker="memory://")
    configure(app, cluster.urls, ttl=1.0)
    calls = []

    @app.task(base=ExclusiveTask, lock_skip_result="skipped")
    def job(a, b=2):
        calls.append((a, b))
        return a + b

    @app.task(base=ExclusiveTask, lock_retry=5.0, bind=True)
    def retried(self, a):
        return a

    assert job(1) == 3 and calls == [(1, 2)]
    locks = manager_for(app)
    assert manager_for(app) is locks
    key = default_key(job.name, (1,), {})
    assert key.startswith("celery:") and default_key(job.name, (1,), {}) == key != default_key(job.name, (2,), {})
    held = locks.acquire(key)
    assert job(1) == "skipped" and calls == [(1, 2)]
    assert job(2) == 4                      # other arguments: its own key
    held.release()
    held = locks.acquire(default_key(retried.name, (7,), {}))
    with pytest.raises(celery.exceptions.Retry):
        retried.apply(args=(7,), throw=True)
    held.release()
    assert retried(7) == 7
    locks.close()


def _peak(spans):
    from quorumlock.chaos.checker import Interval, peak_holders

    return peak_holders(Interval(s[0], f"run{i}", str(s[3]), s[1], s[2], None) for i, s in enumerate(spans))[0]


def test_celery_lock_limit_two_runs_at_once(clusters):
    """ExclusiveTask with ``lock_limit=2`` called from 6 threads at once (the
    task run directly, as a worker pool's threads would): all 6 run, at most 2
    at once and 2 reached (peak of the host-monotonic run intervals,
    ``peak_holders``); without a limit (``lock_limit=None``, other arguments
    per thread so no lock is shared) the peak is above 2, the negative
    control.  With ``lock_limit`` ignored (a plain lock) the peak was 1.
    With ``lock_wait=False`` the runs beyond the 2 permits are skipped."""
    import threading

    celery = pytest.importorskip("celery", reason="celery is not installed (pip install quorumlock[integrations])")
    from quorumlock.integrations.celery import ExclusiveTask, configure, manager_for

    cluster = clusters(3)
    app = celery.Celery("ql_limit", broker="memory://")
    configure(app, cluster.urls, ttl=1.0)
    spans, mutex = [], threading.Lock()

    def record(name, seconds):
        t0 = time.monotonic_ns()
        time.sleep(seconds)
        with mutex:
            spans.append((name, t0, time.monotonic_ns(), threading.get_ident()))
        return name

    @app.task(base=ExclusiveTask, lock_limit=2, lock_wait=20, lock_key="lim")
    def limited(name):
        return record(name, 0.3)

    @app.task(base=ExclusiveTask, lock_limit=2, lock_key="lim-skip", lock_skip_result="skipped")
    def limited_skip(name):
        return record(name, 0.6)

    @app.task(base=ExclusiveTask)
    def unlimited(name, i):
        return record(name, 0.3)

    def burst(fn, *args):
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(fn(*args, i) if fn is unlimited
                                                                      else fn(*args))) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return results

    assert burst(limited, "lim") == ["lim"] * 6
    burst(unlimited, "plain")
    skip = burst(limited_skip, "skip")
    manager_for(app).close()
    runs = {k: [s for s in spans if s[0] == k] for k in ("lim", "plain")}
    peak_lim, peak_plain = _peak(runs["lim"]), _peak(runs["plain"])
    print(f"celery lock_limit=2: peak {peak_lim} of 6 limited runs, peak {peak_plain} of 6 unlimited; "
          f"skip: {sorted(map(str, skip))}")
    assert peak_lim == 2, runs["lim"]
    assert peak_plain > 2, runs["plain"]
    assert skip.count("skip") == 2 and skip.count("skipped") == 4, skip
    @app.task(base=ExclusiveTask, lock_limit=0)
    def bad():
        pass

    with pytest.raises(ValueError, match="lock_limit"):
        bad()


def _overlapping_runs(cluster, sync_core, limit, seconds=3.2):
    """Two BackgroundSchedulers (two managers) with the same job, a tick every
    0.4 s, each run 1.3 s (so about 3 runs of the job overlap): the run
    intervals, and the executors."""
    import threading

    from apscheduler.schedulers.background import BackgroundScheduler

    from quorumlock import LockManager
    from quorumlock.integrations.apscheduler import ThreadPoolExecutor, interval_trigger

    spans, mutex = [], threading.Lock()

    def job():
        t0 = time.monotonic_ns()
        time.sleep(1.3)
        with mutex:
            spans.append(("job", t0, time.monotonic_ns(), threading.get_ident()))

    managers = [LockManager(cluster.urls, ttl=1.0, _core=sync_core) for _ in range(2)]
    scheds = []
    try:
        for locks in managers:
            s = BackgroundScheduler(executors={"default": ThreadPoolExecutor(locks, limit=limit)}, timezone="UTC",
                                    job_defaults={"misfire_grace_time": 1, "max_instances": 10})
            s.add_job(job, interval_trigger(seconds=0.4), id="limited")
            s.start()
            scheds.append(s)
        time.sleep(seconds)
    finally:
        for s in scheds:
            s.shutdown(wait=True)
        for m in managers:
            m.close()
    return spans, [s._executors["default"] for s in scheds]


def test_apscheduler_limit_two_runs_of_a_job_at_once(sync_core, clusters):
    """Two schedulers, a job that runs 1.3 s every 0.4 s with
    ``ThreadPoolExecutor(locks, limit=2)``: the runs (each tick once, across
    both) are never more than 2 at once and do reach 2 (peak of the
    host-monotonic run intervals, ``peak_holders``); the ticks that found both
    permits held were skipped (``limited``).  Without ``limit`` the same
    schedule reaches more than 2 (the negative control: 4 here).  With the
    option ignored the peak was 4, not 2."""
    cluster = clusters(3)
    spans, ex = _overlapping_runs(cluster, sync_core, limit=2)
    plain, _ = _overlapping_runs(cluster, sync_core, limit=None)
    peak, peak_plain = _peak(spans), _peak(plain)
    limited = sum(e.limited for e in ex)
    print(f"apscheduler limit=2: peak {peak} of {len(spans)} runs ({limited} ticks limited); "
          f"without: peak {peak_plain} of {len(plain)}")
    assert peak == 2, spans
    assert limited >= 1 and sum(e.ran for e in ex) == len(spans)
    assert peak_plain > 2, plain
    from quorumlock import LockManager
    from quorumlock.integrations.apscheduler import ThreadPoolExecutor

    with LockManager(cluster.urls, _core=sync_core) as locks:
        with pytest.raises(ValueError, match="limit"):
            ThreadPoolExecutor(locks, limit=0)


def test_apscheduler_asyncio_executor_limit(run, core, clusters):
    """``AsyncIOExecutor(locks, limit=2)``: two AsyncIOSchedulers, a coroutine
    job of 1.3 s every 0.4 s: at most 2 runs at once and 2 reached (the
    negative control is the thread-pool test's: 4 without a limit).  With the
    option ignored the peak was 4."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from quorumlock.integrations.apscheduler import AsyncIOExecutor, interval_trigger

    cluster = clusters(3)
    spans = []

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=1.0, _core=core) as l1, \
                AsyncLockManager(cluster.urls, ttl=1.0, _core=core) as l2:
            async def job():
                t0 = time.monotonic_ns()
                await asyncio.sleep(1.3)
                spans.append(("job", t0, time.monotonic_ns(), 0))

            scheds = []
            for locks in (l1, l2):
                s = AsyncIOScheduler(executors={"default": AsyncIOExecutor(locks, limit=2)}, timezone="UTC",
                                     job_defaults={"misfire_grace_time": 1, "max_instances": 10})
                s.add_job(job, interval_trigger(seconds=0.4), id="alimited")
                s.start()
                scheds.append(s)
            await asyncio.sleep(3.2)
            for s in scheds:
                s.shutdown(wait=False)
            await asyncio.sleep(1.5)         # the runs in progress end and release their permits
            return [s._executors["default"] for s in scheds]

    ex = run(body())
    peak = _peak(spans)
    print(f"apscheduler asyncio limit=2: peak {peak} of {len(spans)} runs, {sum(e.limited for e in ex)} limited")
    assert peak == 2, spans
    assert sum(e.limited for e in ex) >= 1
