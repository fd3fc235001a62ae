"""Async cycles.  One iteration = 100 sequential ``try_acquire`` + ``release``
cycles of one key with the asyncio API on N = 1, 3, 5 local volatile nodes,
in one ``run_until_complete`` on uvloop (so the loop's own start/stop is
amortized): divide the time by 100 for one cycle (``extra_info``)."""

from __future__ import annotations

import pytest

from quorumlock.aio import LockManager

CYCLES = 100


@pytest.mark.benchmark(group="cycle-async")
@pytest.mark.parametrize("n", [1, 3, 5])
def test_quorumlock_async_cycles(benchmark, cluster, uvloop_loop, n):
    c = cluster(n)
    loop = uvloop_loop
    locks = LockManager(c.urls, ttl=10.0)
    loop.run_until_complete(locks.connect())
    key = f"micro:async:{n}"

    async def cycles():
        ta = locks.try_acquire
        for _ in range(CYCLES):
            lock = await ta(key)
            await lock.release()

    try:
        benchmark(lambda: loop.run_until_complete(cycles()))
    finally:
        loop.run_until_complete(locks.close())
    benchmark.extra_info.update(nodes=n, cycles_per_iteration=CYCLES)
