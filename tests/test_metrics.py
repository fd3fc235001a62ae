"""``locks.metrics()`` and its exporters (``quorumlock.metrics``)."""

from __future__ import annotations

import asyncio

import pytest

from quorumlock import LockManager, LockTimeout
from quorumlock.aio import LockManager as AsyncLockManager
from quorumlock.metrics import BUCKETS, Histogram

from _engine_fixtures import clusters, core, run, _shared_clusters  # noqa: F401


@pytest.fixture
def sync_core(core):
    if not hasattr(core, "SyncEngine"):
        pytest.skip(f"{core.IMPLEMENTATION} engine has no blocking driver")
    return core


def test_histogram():
    h = Histogram()
    for v in (0.00005, 0.0003, 0.0003, 0.02, 7.0, 100.0):
        h.observe(v)
    d = h.as_dict()
    assert d["count"] == 6 and abs(d["sum"] - 107.02065) < 1e-9
    assert d["buckets"][-1] == (float("inf"), 6)
    assert dict(d["buckets"])[0.0005] == 3
    assert h.quantile(0.5) == 0.0005 and h.quantile(1.0) == float("inf")
    assert list(BUCKETS) == sorted(BUCKETS)


def test_blocking_metrics(sync_core, clusters):
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=1.0, retry_count=2, retry_delay=0.01, metrics=True,
                     _core=sync_core) as locks:
        a = locks.try_acquire("m:a")
        assert locks.try_acquire("m:a") is None
        with pytest.raises(LockTimeout):
            locks.acquire("m:a")
        a.extend()
        assert a.release() is True
        a.release()                                  # no-op: not counted twice
        held = locks.acquire_many(["m:b", "m:c"])
        locks.release_many(held)
        with locks.lock("m:d", auto_extend=True):
            pass
        m = locks.metrics()
        assert m["enabled"] is True
        assert m["acquire"]["ok"] == 4 and m["acquire"]["failed"] == 3, m["acquire"]
        assert m["acquire_wait"]["ok"] == 1 and m["acquire_wait"]["timeout"] == 1
        assert m["waits"] == 1
        assert m["extend"]["ok"] == 1
        assert m["release"]["ok"] == 4 and m["release"]["count"] == 3
        assert m["held"] == 0
        assert m["acquire"]["p50"] is not None and m["acquire"]["p50"] < 0.1
        assert len(m["nodes"]) == 3 and all(nd["sent"] > 0 and nd["ready"] for nd in m["nodes"])

    with LockManager(cluster.urls, _core=sync_core) as plain:
        plain.try_acquire("m:z").release()
        m = plain.metrics()
        assert m["enabled"] is False and "acquire" not in m
        assert all(nd["sent"] >= 2 for nd in m["nodes"])      # the engine's own counters
        # metrics off: the class methods are the ones in use (no wrapper)
        assert "try_acquire" not in vars(plain)


def test_async_metrics(run, core, clusters):
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, metrics=True, _core=core) as locks:
            a = await locks.try_acquire("am:a")
            assert await locks.try_acquire("am:a") is None
            await a.extend()
            await a.release()
            held = await locks.acquire_many([f"am:{i}" for i in range(10)])
            await locks.release_many(held)
            await asyncio.sleep(0)
            m = locks.metrics()
            assert m["acquire"]["ok"] == 11 and m["acquire"]["failed"] == 1
            assert m["extend"]["ok"] == 1 and m["release"]["ok"] == 11
            assert m["held"] == 0 and m["batches"] == 2

    run(body())


def test_prometheus_export(sync_core, clusters):
    prometheus_client = pytest.importorskip("prometheus_client")
    from quorumlock.metrics import register_prometheus

    cluster = clusters(3)
    with LockManager(cluster.urls, metrics=True, _core=sync_core) as locks:
        locks.try_acquire("p:a").release()
        reg = prometheus_client.CollectorRegistry()
        register_prometheus(locks, name="orders", registry=reg)
        text = prometheus_client.generate_latest(reg).decode()
        assert 'quorumlock_acquire_total{manager="orders",result="ok"} 1.0' in text
        assert 'quorumlock_acquire_seconds_bucket{le="+Inf",manager="orders"} 1.0' in text
        assert "quorumlock_node_sent_total" in text and "quorumlock_locks_held" in text
        assert reg.get_sample_value("quorumlock_release_total", {"manager": "orders", "result": "ok"}) == 1.0


def test_opentelemetry_export(sync_core, clusters):
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from quorumlock.metrics import register_opentelemetry

    cluster = clusters(3)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with LockManager(cluster.urls, metrics=True, _core=sync_core) as locks:
        register_opentelemetry(locks, name="orders", meter_provider=provider)
        locks.try_acquire("o:a").release()
        data = reader.get_metrics_data()
        names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        assert {"quorumlock.operations", "quorumlock.acquire.duration", "quorumlock.node.sent",
                "quorumlock.locks_held"} <= names, names
