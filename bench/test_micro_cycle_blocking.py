"""One blocking cycle.  One iteration = ``try_acquire`` + ``release`` of one
key with the blocking API (``quorumlock.LockManager``) on N = 1, 3, 5 local
volatile nodes; redis-py's single-node ``Lock`` on node 0 is the reference
(``acquire(blocking=False)`` + ``release``).

Every figure is a round-trip latency on loopback: compare within one run."""

from __future__ import annotations

import pytest
import redis

from quorumlock import LockManager


@pytest.mark.benchmark(group="cycle-blocking")
@pytest.mark.parametrize("n", [1, 3, 5])
def test_quorumlock_cycle(benchmark, cluster, n):
    c = cluster(n)
    with LockManager(c.urls, ttl=10.0) as locks:
        key = f"micro:blocking:{n}"

        def cycle():
            lock = locks.try_acquire(key)
            lock.release()

        benchmark(cycle)
    benchmark.extra_info["nodes"] = n


@pytest.mark.benchmark(group="cycle-blocking")
def test_redis_py_lock_cycle(benchmark, cluster):
    c = cluster(1)
    r = redis.Redis(port=c.ports[0])
    lock = r.lock("micro:redis-py", timeout=10)

    def cycle():
        assert lock.acquire(blocking=False)
        lock.release()

    try:
        benchmark(cycle)
    finally:
        r.close()
    benchmark.extra_info["nodes"] = 1
