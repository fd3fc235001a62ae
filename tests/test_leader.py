"""Leader election (``quorumlock.LeaderElection`` / ``AsyncLeaderElection``)
against real nodes: in one process, and across three processes with the leader
SIGKILLed (``examples/leader_election.py`` is the candidate)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from quorumlock import AsyncLeaderElection, LeaderElection, LockManager
from quorumlock.aio import LockManager as AsyncLockManager

from _engine_fixtures import sync_core, clusters, core, run, _shared_clusters  # noqa: F401

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                       "leader_election.py")



def test_one_leader_and_clean_handover(sync_core, clusters):
    cluster = clusters(3)
    events = []
    mu = threading.Lock()

    def cb(name, what):
        def f(*a):
            with mu:
                events.append((time.monotonic(), name, what, a))
        return f

    with LockManager(cluster.urls, notify=True, _core=sync_core) as l1, \
            LockManager(cluster.urls, notify=True, _core=sync_core) as l2:
        a = LeaderElection(l1, "svc", ttl=1.0, on_elected=cb("a", "elected"), on_demoted=cb("a", "demoted"))
        b = LeaderElection(l2, "svc", ttl=1.0, on_elected=cb("b", "elected"), on_demoted=cb("b", "demoted"))
        with a:
            assert a.wait_elected(2.0)
            b.start()
            time.sleep(1.5)        # several renewals: a stays leader, b waits
            assert a.is_leader and not b.is_leader
            assert a.lock is not None and b.lock is None
            t_stop = time.monotonic()
        # a stopped: demoted first, then released; b takes over at once (notify)
        assert b.wait_elected(2.0)
        t_b = [t for t, n, w, _ in events if n == "b" and w == "elected"][0]
        assert t_b - t_stop < 0.5, t_b - t_stop
        assert not a.is_leader and b.is_leader
        b.stop()
        assert [(n, w) for _, n, w, _ in events] == [("a", "elected"), ("a", "demoted"), ("b", "elected"),
                                                     ("b", "demoted")]
        assert events[1][3] == ("stopped",)
        with pytest.raises(TypeError):
            LeaderElection(AsyncLockManager(cluster.urls), "x")
        with pytest.raises(ValueError):
            LeaderElection(l1, "x", ttl=0)


def test_async_leader_steps_down_on_loss(run, core, clusters):
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, _core=core) as l1, \
                AsyncLockManager(cluster.urls, _core=core) as l2:
            demoted = []
            a = AsyncLeaderElection(l1, "asvc", ttl=1.0, on_demoted=demoted.append)
            b = AsyncLeaderElection(l2, "asvc", ttl=1.0)
            async with a:
                assert await a.wait_elected(2.0)
                async with b:
                    await asyncio.sleep(0.3)
                    assert a.is_leader and not b.is_leader
                    # Another token takes the key on every node (as after a
                    # lease expired during a long pause): a's next renewal is
                    # refused by a majority and a steps down before its
                    # validity ends; nobody leads while the foreign key lives.
                    import redis.asyncio as aredis
                    for p in cluster.ports:
                        r = aredis.Redis(port=p)
                        await r.set("leader:asvc", b"someone-else", px=800)
                        await r.aclose()
                    t0 = time.monotonic()
                    while a.is_leader:
                        assert time.monotonic() - t0 < 1.0
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(0.05)
                    assert demoted and "refused" in demoted[0], demoted
                    assert not b.is_leader
                    # the foreign key expires: one of them is elected again
                    t1 = time.monotonic()
                    while not (a.is_leader or b.is_leader):
                        assert time.monotonic() - t1 < 2.0
                        await asyncio.sleep(0.02)
                    assert a.is_leader != b.is_leader

    run(body())


def _parse(path):
    rows = []
    with open(path) as f:
        for line in f:
            t, pid, ev, until = line.split()
            rows.append((int(t), int(pid), ev, None if until == "-" else int(until)))
    return rows


def _terms(rows, killed):
    """Per process: leadership intervals [elected, end]; end = demoted time,
    or the kill time for the killed process."""
    terms = []
    open_terms = {}
    for t, pid, ev, until in rows:
        if ev == "elected":
            open_terms[pid] = [t, None, until]
        elif ev.startswith("demoted") and pid in open_terms:
            term = open_terms.pop(pid)
            term[1] = t
            terms.append((pid, term))
        elif ev == "leading" and pid in open_terms:
            open_terms[pid][2] = until          # its latest lease end
    for pid, term in open_terms.items():
        assert pid in killed, f"pid {pid} still leader at the end"
        term[1] = killed[pid]
        terms.append((pid, term))
    return sorted(terms, key=lambda x: x[1][0])


def test_three_processes_leader_killed(make_cluster, tmp_path):
    """Three candidate processes: exactly one leader at a time (from their
    logs, CLOCK_MONOTONIC timestamps), a new leader within one TTL after the
    leader is SIGKILLed, and a clean hand-over when the next one is stopped."""
    ttl = 2.0
    cluster = make_cluster(n=3, mode="volatile", max_ttl=ttl)
    log = str(tmp_path / "leader.log")
    procs = [subprocess.Popen([sys.executable, EXAMPLE, "candidate", "--nodes", ",".join(cluster.urls),
                               "--ttl", str(ttl), "--log", log, "--name", "t3"]) for _ in range(3)]
    killed = {}
    try:
        def current_leader(timeout=8.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                cur = {}
                if os.path.exists(log):
                    for t, pid, ev, _ in _parse(log):
                        if ev == "elected":
                            cur[pid] = True
                        elif ev.startswith("demoted"):
                            cur.pop(pid, None)
                alive = [p for p in cur if p not in killed]
                if len(alive) == 1:
                    return alive[0]
                time.sleep(0.02)
            raise AssertionError("no single leader")

        first = current_leader()
        time.sleep(1.1)                 # a few renewals
        os.kill(first, signal.SIGKILL)
        killed[first] = time.monotonic_ns()
        second = current_leader()
        time.sleep(0.7)
        t_term = time.monotonic_ns()
        os.kill(second, signal.SIGTERM)  # clean stop: hand-over to the third
        third = None
        deadline = time.monotonic() + 5
        while third is None and time.monotonic() < deadline:
            for t, pid, ev, _ in _parse(log):
                if ev == "elected" and t > t_term and pid not in (first, second):
                    third = pid
            time.sleep(0.02)
        assert third is not None
        time.sleep(0.3)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            p.wait(10)
    rows = _parse(log)
    terms = _terms(rows, killed)
    assert [pid for pid, _ in terms] == [first, second, third], terms
    # exactly one leader at a time: the terms do not overlap
    for (_, (s1, e1, _u1)), (_, (s2, _e2, _u2)) in zip(terms, terms[1:]):
        assert e1 < s2, (e1, s2)
    # the killed leader's last lease had ended before the next was elected
    (_, (_s, _e, last_until)), (_, (s_second, _, _)) = terms[0], terms[1]
    assert last_until is not None and last_until <= s_second
    failover = (s_second - killed[first]) / 1e9
    assert failover < ttl, failover
    handover = (terms[2][1][0] - t_term) / 1e9
    assert handover < 0.5 * ttl, handover   # released on stop: the next poll gets it
