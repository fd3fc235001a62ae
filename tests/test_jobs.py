"""Exclusive jobs (``locks.exclusive``, ``quorumlock.jobs``) against real nodes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from quorumlock import LockLost, LockManager
from quorumlock.aio import LockManager as AsyncLockManager
from quorumlock.jobs import JobSkipped, current_lock

from _engine_fixtures import sync_core, clusters, core, run, _shared_clusters  # noqa: F401



def test_skip_when_held_and_key_template(sync_core, clusters, caplog):
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=0.5, metrics=True, _core=sync_core) as locks:
        running = threading.Event()
        release = threading.Event()

        @locks.exclusive("report:{day}", wait=False, skip_result="skipped")
        def report(day, fmt="pdf"):
            assert current_lock().key == f"report:{day}"
            running.set()
            release.wait(5)
            return f"{day}.{fmt}"

        assert report.key_for("mon") == "report:mon"
        results = {}
        t = threading.Thread(target=lambda: results.setdefault("a", report("mon")))
        t.start()
        assert running.wait(5)
        time.sleep(0.8)                  # longer than the TTL: auto-extended
        with caplog.at_level(logging.INFO, logger="quorumlock.jobs"):
            assert report("mon") == "skipped"
        assert "skipped" in caplog.text and "report:mon" in caplog.text
        release.set()
        assert report("tue") == "tue.pdf"   # another day: its own key
        t.join(5)
        assert results["a"] == "mon.pdf"
        assert report.stats == {"run": 2, "skipped": 1, "lost": 0}
        assert locks.metrics()["jobs"] == {"run": 2, "skipped": 1, "lost": 0}
        assert current_lock() is None


def test_wait_runs_one_at_a_time(sync_core, clusters):
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=1.0, notify=True, _core=sync_core) as locks:
        spans = []
        mu = threading.Lock()

        @locks.exclusive("serial", wait=True)
        def job(i):
            t0 = time.monotonic()
            time.sleep(0.05)
            with mu:
                spans.append((t0, time.monotonic()))
            return i

        threads = [threading.Thread(target=job, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        spans.sort()
        assert len(spans) == 6
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert a1 <= b0
        assert job.stats["run"] == 6 and job.stats["skipped"] == 0

        @locks.exclusive("serial", wait=0.2, raise_on_skip=True)
        def bounded():
            return 1

        h = locks.acquire("serial")
        with pytest.raises(JobSkipped):
            bounded()
        h.release()
        assert bounded() == 1


def test_sync_job_lost_lease_raises(sync_core, clusters):
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=0.4, _core=sync_core) as locks:
        @locks.exclusive("lost-job", max_hold=0.5)
        def job():
            lk = current_lock()
            assert lk.lost.wait(3)
            with pytest.raises(LockLost):
                lk.check()
            return "done anyway"

        with pytest.raises(LockLost, match="max_hold"):
            job()
        assert job.stats["lost"] == 1
        with pytest.raises(TypeError):
            @locks.exclusive("x")
            async def coro():
                pass


def test_async_exclusive(run, core, clusters):
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=0.4, _core=core) as locks:
            @locks.exclusive(lambda n: f"aj:{n % 2}")
            async def job(n):
                await asyncio.sleep(0.6)     # longer than the TTL
                return n

            r = await asyncio.gather(job(1), job(3), job(2))
            assert sorted(x for x in r if x is not None) == [1, 2] or sorted(x for x in r if x is not None) == [2, 3]
            assert r.count(None) == 1
            assert job.stats == {"run": 2, "skipped": 1, "lost": 0}

            cancelled = {}

            @locks.exclusive("aj:hold", max_hold=0.5)
            async def long_job():
                try:
                    await asyncio.sleep(5)
                except asyncio.CancelledError:
                    cancelled["validity"] = current_lock().validity
                    raise

            t0 = time.monotonic()
            with pytest.raises(LockLost):
                await long_job()
            assert time.monotonic() - t0 < 1.0
            assert cancelled["validity"] > 0
            with pytest.raises(TypeError):
                @locks.exclusive("x")
                def plain():
                    pass

    run(body())
