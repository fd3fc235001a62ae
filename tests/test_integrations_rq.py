"""RQ (``quorumlock.integrations.rq``) with real RQ worker processes and real
rq-scheduler processes (``examples/rq_jobs.py``): three lock nodes, and one
more local node as RQ's Redis."""

from __future__ import annotations

import os
from collections import Counter
import signal
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis

from quorumlock import LockManager

from _engine_fixtures import sync_core, clusters, core, _shared_clusters  # noqa: F401
from _sched_common import examples_module, finished, overlaps, stop_all, take_over, wait_until

rq = pytest.importorskip("rq", reason="rq is not installed (pip install quorumlock[rq])")
rq_scheduler = pytest.importorskip("rq_scheduler", reason="rq-scheduler is not installed (pip install quorumlock[rq])")


@pytest.fixture
def env(make_cluster, tmp_path):
    mod = examples_module("rq_jobs")
    nodes = make_cluster(n=3, mode="volatile", max_ttl=2.0)
    broker = make_cluster(n=1, mode="unsafe")
    conn = redis.Redis.from_url(broker.urls[0])
    yield mod, nodes, broker.urls[0], conn, str(tmp_path / "spans"), str(tmp_path / "moves")
    conn.close()


def test_rq_duplicates_run_one_at_a_time_and_plain_jobs_overlap(env):
    """Three burst workers (separate processes, a forked work horse per job)
    get 9 plain jobs, then the same exclusive job 9 times, then 5 duplicates
    of a skipping one.  The exclusive runs never overlap (checker's interval
    analysis) while the plain ones do (so the check can fail: 11-15
    overlapping pairs of 9 plain runs here); the skipped duplicates say so in job.meta."""
    mod, nodes, url, conn, spans, _ = env
    q = rq.Queue("default", connection=conn)
    for _ in range(9):
        q.enqueue(mod.plain_report, "plain", 0.15)
    for _ in range(9):
        q.enqueue(mod.report, "mon", 0.15)
    once = [q.enqueue(mod.report_once, "x", 0.5) for _ in range(5)]
    workers = [mod.start("worker", url, nodes.urls, spans, extra=["--burst"]) for _ in range(3)]
    for w in workers:
        w.wait(60)
    errs = stop_all(workers)
    got = finished(mod.read_spans(spans))
    runs = {k: [s for s in got if s[0] == k] for k in ("plain", "mon", "x")}
    assert len(runs["plain"]) == 9 and len(runs["mon"]) == 9, (runs, errs)
    assert len({s[3] for s in runs["mon"]}) >= 3                     # in many processes
    assert overlaps(runs["mon"]) == []
    assert overlaps(runs["x"]) == []
    print(f"rq: {len(overlaps(runs['plain']))} overlapping pairs among 9 plain runs")
    assert len(overlaps(runs["plain"])) >= 1, runs["plain"]         # the negative: the check does fire
    metas = [rq.job.Job.fetch(j.id, connection=conn).meta for j in once]
    skipped = [m for m in metas if m.get("quorumlock") == "skipped"]
    assert 1 <= len(runs["x"]) and len(runs["x"]) + len(skipped) == 5, (runs["x"], metas)
    assert all(m["quorumlock_key"] == "report-once:x" for m in skipped)


def test_rq_worker_sigkilled_mid_job_frees_the_key_within_ttl(env):
    """A worker and its work horse (RQ puts the horse in a session of its
    own) SIGKILLed in the middle of a 30 s exclusive job with ttl=1: the key
    stays held while the job runs (2.5 s, auto-extended), and is free again
    within the TTL of the kill (measured 0.82-0.85 s here)."""
    mod, nodes, url, conn, spans, _ = env
    q = rq.Queue("default", connection=conn)
    q.enqueue(mod.report, "kill", 30.0, job_timeout=60)
    w = mod.start("worker", url, nodes.urls, spans)
    try:
        started = wait_until(lambda: [s for s in mod.read_spans(spans) if s[0] == "start:kill"], 20)
        assert started, stop_all([w])
        horse = started[0][3]
        time.sleep(2.5)
        with LockManager(nodes.urls) as locks:
            assert locks.try_acquire("report:kill", 1.0) is None          # renewed past 2x its ttl
            os.kill(horse, signal.SIGKILL)
            os.killpg(w.pid, signal.SIGKILL)
            t_kill = time.monotonic()
            got = wait_until(lambda: locks.try_acquire("report:kill", 1.0), 5.0, step=0.01)
            freed = time.monotonic() - t_kill
            assert got is not None
            got.release()
    finally:
        stop_all([w])
    print(f"rq: key free {freed:.3f} s after the SIGKILL")
    assert freed <= 1.0 + 0.5, freed          # the TTL, plus the polling and a loaded machine


def _schedule_burst(conn, mod, n, delay):
    s = rq_scheduler.Scheduler(connection=conn)
    at = datetime.now(timezone.utc) + timedelta(seconds=delay)
    return [s.enqueue_at(at, mod.tick, i).id for i in range(n)]


def _queued(conn):
    return [x.decode() for x in conn.lrange("rq:queue:default", 0, -1)]


def _moves(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [tuple(line.split()) for line in f]


def test_rq_scheduler_two_processes_one_leader_and_failover(env):
    """Two rq-scheduler processes with the quorum leader lock: 100 jobs due
    at once are moved to the queue exactly once; the leader (the last mover)
    is SIGKILLed, and the next 100 are moved exactly once by the other,
    within the leader TTL (1 s) plus a pass (1.0-1.4 s here)."""
    mod, nodes, url, conn, _, moves = env
    scheds = [mod.start("scheduler", url, nodes.urls, moves=moves,
                        extra=["--interval", "0.1", "--leader-ttl", "1.0"]) for _ in range(2)]
    try:
        first = _schedule_burst(conn, mod, 100, 1.5)
        assert wait_until(lambda: len(_queued(conn)) >= 100, 10), stop_all(scheds)
        time.sleep(0.5)                    # a second mover would have shown up by now
        q1 = _queued(conn)
        assert sorted(q1) == sorted(first), (len(q1), len(set(q1)))
        # Usually one process moved them all; under heavy load a lease can
        # change hands between passes (safe: the queue check above holds).
        last = _moves(moves)[-1][1]
        leader = next(p for p in scheds if str(p.pid) == last)
        os.killpg(leader.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        second = _schedule_burst(conn, mod, 100, 0.0)
        assert wait_until(lambda: len(_queued(conn)) >= 200, 10), stop_all(scheds)
        failover = time.monotonic() - t_kill
        time.sleep(0.5)
        q2 = _queued(conn)
        assert sorted(q2) == sorted(first + second), (len(q2), len(set(q2)))
        after = {pid for _, pid in _moves(moves)[100:]}
        assert after == {str(p.pid) for p in scheds if p is not leader}, after
    finally:
        stop_all(scheds)
    print(f"rq-scheduler: next burst moved {failover:.3f} s after the leader's SIGKILL")
    assert failover < 5.0, failover           # the bound: leader_ttl (1 s) + a pass; margin for load


def test_rq_scheduler_without_a_lock_moves_jobs_twice(env):
    """The negative: two rq-scheduler processes with no lock both move the
    same due jobs (the count the test above checks goes over 100: 150-174
    entries here), so that test can fail."""
    mod, nodes, url, conn, _, moves = env
    scheds = [mod.start("scheduler", url, nodes.urls, moves=moves, extra=["--interval", "0.05", "--no-lock"])
              for _ in range(2)]
    try:
        time.sleep(1.0)
        ids = _schedule_burst(conn, mod, 100, 0.5)
        assert wait_until(lambda: len(_queued(conn)) >= 100, 10), stop_all(scheds)
        time.sleep(1.0)
        q = _queued(conn)
    finally:
        stop_all(scheds)
    print(f"rq-scheduler without a lock: {len(q)} queue entries for 100 jobs")
    assert set(q) == set(ids)
    assert len(q) > 100, len(q)


# -- in-process: lost leases, busy duplicates, bad arguments (both engine builds)




def _timed_job(sync_core, cluster, **options):
    from quorumlock.integrations.rq import exclusive_job

    @exclusive_job(lambda: LockManager(cluster.urls, _core=sync_core), "lost:{n}", ttl=1.0, **options)
    def job(n):
        for _ in range(150):            # 1.5 s of Python-level work
            time.sleep(0.01)
        return n

    return job


@pytest.mark.parametrize("interrupt", [True, False])
def test_rq_lost_lease_is_raised_in_the_job(sync_core, clusters, interrupt):
    """Another token takes the key on every node 0.3 s into a 1.5 s job: with
    interrupt (default) LockLost is raised inside the job about a renewal
    later (0.35-0.37 s after the start here); with interrupt=False the job runs
    to its end and then fails with LockLost (1.5 s), which is what the first
    assertion tells apart."""
    import threading

    from quorumlock import LockLost

    cluster = clusters(3)
    job = _timed_job(sync_core, cluster, interrupt=interrupt)
    timer = threading.Timer(0.3, take_over, (cluster.ports, "lost:1"))
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(LockLost):
            job(1)
    finally:
        timer.cancel()
    took = time.monotonic() - t0
    print(f"rq lost lease (interrupt={interrupt}): LockLost {took:.3f} s after the start")
    if interrupt:
        assert took < 1.2, took
    else:
        assert took >= 1.5, took
    assert job.stats["lost"] == 1
    job.managers.close()


def test_rq_busy_duplicate_skips_or_fails(sync_core, clusters):
    """A duplicate of a running job (key held elsewhere): on_busy='skip'
    returns skip_result and counts it; on_busy='fail' raises JobSkipped (RQ
    then fails the job, and its Retry re-schedules it)."""
    from quorumlock.integrations.rq import JobSkipped, default_key, exclusive_job

    cluster = clusters(3)
    factory = lambda: LockManager(cluster.urls, _core=sync_core)  # noqa: E731

    @exclusive_job(factory, skip_result="busy")
    def skip(a, b=2):
        return a + b

    @exclusive_job(factory, "k:{a}", on_busy="fail")
    def fail(a):
        return a

    key = default_key(f"{skip.__module__}.{skip.__qualname__}", (1,), {})
    assert skip(1) == 3
    with LockManager(cluster.urls, _core=sync_core) as locks:
        held = locks.acquire(key)
        assert skip(1) == "busy" and skip.stats["skipped"] == 1
        assert skip(2) == 4                       # other arguments, other key
        held.release()
        held = locks.acquire("k:7")
        with pytest.raises(JobSkipped):
            fail(7)
        held.release()
        assert fail(7) == 7
    skip.managers.close()
    fail.managers.close()


def test_rq_bad_arguments():
    from quorumlock.integrations.rq import Scheduler, exclusive_job

    with pytest.raises(ValueError, match="on_busy"):
        exclusive_job(["redis://127.0.0.1:1"], on_busy="later")
    with pytest.raises(ValueError, match="ttl"):
        exclusive_job(["redis://127.0.0.1:1"], ttl=0)
    with pytest.raises(TypeError, match="nodes"):
        exclusive_job("redis://127.0.0.1:1")
    with pytest.raises(TypeError, match="nodes"):
        Scheduler(connection=redis.Redis(port=1))


# -- RQ's built-in scheduler (rq worker --with-scheduler) ---------------------------


def _schedule_builtin(conn, mod, n, delay):
    q = rq.Queue("default", connection=conn)
    at = datetime.now(timezone.utc) + timedelta(seconds=delay)
    return [q.enqueue_at(at, mod.tick_job).id for _ in range(n)]


def _job_runs(mod, spans):
    return Counter(s[0][4:] for s in mod.read_spans(spans) if s[0].startswith("job:"))


def test_rq_builtin_scheduler_two_workers_one_leader_and_failover(env):
    """Two ``rq worker --with-scheduler`` processes with the quorum worker
    class (a LeaderElection per queue in each scheduler process): 40 jobs due
    at once each run exactly once; the process that moved them is SIGKILLed
    (worker and scheduler process), and the next 40 each run exactly once,
    moved by the other within the leader TTL (1 s) plus a pass of the kill
    (0.5-1.1 s here)."""
    mod, nodes, url, conn, spans, moves = env
    workers = [mod.start("worker", url, nodes.urls, spans, moves,
                         extra=["--with-scheduler", "--worker-class", "quorum"]) for _ in range(2)]
    try:
        first = _schedule_builtin(conn, mod, 40, 2.0)
        assert wait_until(lambda: len(_job_runs(mod, spans)) >= 40, 20), stop_all(workers)
        time.sleep(0.5)                   # a second move of a job would have run by now
        runs = _job_runs(mod, spans)
        assert set(runs) == set(first) and set(runs.values()) == {1}, runs
        leader = int(_moves(moves)[-1][1])
        os.killpg(os.getpgid(leader), signal.SIGKILL)
        t_kill = time.monotonic_ns()
        second = _schedule_builtin(conn, mod, 40, 0.0)
        assert wait_until(lambda: len(_job_runs(mod, spans)) >= 80, 30), stop_all(workers)
        time.sleep(0.5)
        runs = _job_runs(mod, spans)
        after = [m for m in _moves(moves) if int(m[2]) > t_kill]
    finally:
        stop_all(workers)
    assert set(runs) == set(first + second) and set(runs.values()) == {1}, runs
    assert after and str(leader) not in {m[1] for m in after}, after
    failover = (int(after[0][2]) - t_kill) / 1e9
    print(f"rq built-in scheduler: jobs moved {failover:.3f} s after the leader's SIGKILL")
    assert failover < 5.0, failover           # the bound: leader_ttl (1 s) + a pass; margin for load


def test_rq_builtin_scheduler_without_a_lock_runs_jobs_twice(env):
    """The negative: two workers whose scheduler processes take no lock move
    the same due jobs, so some of 60 jobs run twice (15-27 of 60 here): the
    count check above can fail."""
    mod, nodes, url, conn, spans, moves = env
    workers = [mod.start("worker", url, nodes.urls, spans, moves,
                         extra=["--with-scheduler", "--worker-class", "nolock"]) for _ in range(2)]
    try:
        ids = _schedule_builtin(conn, mod, 60, 2.0)
        assert wait_until(lambda: len(_job_runs(mod, spans)) >= 60, 20), stop_all(workers)
        time.sleep(1.0)
        runs = _job_runs(mod, spans)
    finally:
        stop_all(workers)
    twice = sum(1 for v in runs.values() if v > 1)
    print(f"rq built-in scheduler without a lock: {twice} of 60 jobs ran more than once")
    assert set(runs) == set(ids)
    assert twice >= 1, runs


# -- limit=k: at most k concurrent runs per key, real worker processes ---------

def _limit_locks():
    # Called in each work horse (the worker imports this module to run the job).
    return LockManager(os.environ["QL_NODES"].split(","), ttl=1.0, notify=True)


def _limited_report(day, seconds=0.2):
    examples_module("rq_jobs")._record(day, seconds)
    return day


from quorumlock.integrations.rq import exclusive_job as _exclusive_job  # noqa: E402

#: At most 2 runs per day at once; a third waits for a permit.
limited_report = _exclusive_job(_limit_locks, "limited:{day}", ttl=1.0, wait=30, limit=2)(_limited_report)


def _peak(spans):
    from quorumlock.chaos.checker import Interval, peak_holders

    return peak_holders(Interval(s[0], f"run{i}", str(s[3]), s[1], s[2], None) for i, s in enumerate(spans))[0]


def test_rq_limit_two_runs_at_most_two_at_once_and_plain_jobs_exceed_it(env, monkeypatch):
    """Four burst workers (separate processes) get 8 jobs of one key with
    ``limit=2``: all 8 run, never more than 2 at once (peak of the
    host-monotonic run intervals, ``peak_holders``), and 2 at once is reached;
    8 plain jobs on the same workers reach a peak above 2 (the negative
    control: the check can fail).  With the limit option ignored
    (``exclusive`` called without ``limit``) the peak was 1, not 2."""
    mod, nodes, url, conn, spans, _ = env
    here = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p]))
    q = rq.Queue("default", connection=conn)
    for _ in range(8):
        q.enqueue(mod.plain_report, "plain", 0.4)
    for _ in range(8):
        q.enqueue(f"{__name__}.limited_report", "lim", 0.4)
    workers = [mod.start("worker", url, nodes.urls, spans, extra=["--burst"]) for _ in range(4)]
    for w in workers:
        w.wait(90)
    errs = stop_all(workers)
    got = finished(mod.read_spans(spans))
    runs = {k: [s for s in got if s[0] == k] for k in ("plain", "lim")}
    assert len(runs["plain"]) == 8 and len(runs["lim"]) == 8, (runs, errs)
    peak_lim, peak_plain = _peak(runs["lim"]), _peak(runs["plain"])
    print(f"rq limit=2: peak {peak_lim} of 8 limited runs, peak {peak_plain} of 8 plain runs")
    assert peak_lim == 2, runs["lim"]
    assert peak_plain > 2, runs["plain"]


def test_rq_limit_bad_argument():
    for bad, exc in ((0, ValueError), (True, TypeError), (2.0, TypeError)):
        with pytest.raises(exc, match="limit"):
            _exclusive_job(["redis://127.0.0.1:1"], limit=bad)


def test_rq_limit_lost_permit_is_raised_in_the_job(sync_core, clusters):
    """``limit=2``: another token takes both permit keys on every node 0.3 s
    into a 1.5 s job: LockLost is raised inside the job about a renewal later
    (0.3-0.4 s after the start here), as on the single-lock path.  With the
    limit ignored the job held the plain key, the take-over missed it and the
    job ran its full 1.5 s."""
    import threading

    from quorumlock import LockLost

    cluster = clusters(3)
    job = _timed_job(sync_core, cluster, limit=2)
    timer = threading.Timer(0.3, lambda: [take_over(cluster.ports, f"lost:1:permit:{i}") for i in range(2)])
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(LockLost):
            job(1)
    finally:
        timer.cancel()
    took = time.monotonic() - t0
    print(f"rq limit=2 lost permit: LockLost {took:.3f} s after the start")
    assert took < 1.2, took
    assert job.stats["lost"] == 1
    job.managers.close()
