"""Many keys held at once through batches: 10^6 distinct keys (slow) and 10^5
(default run), acquired with ``acquire_many`` in batches of 10,000 on three
volatile nodes, every one granted, all held at the same time, then released
with ``release_many``; afterwards no node holds a key.

The client's memory per held lock is measured two ways: ``tracemalloc``
(10^6 only: it slows every allocation) -- the traced bytes still allocated
once every lock is held, minus those before the first batch, divided by the
number of locks -- and the growth of the process's RSS over the same span
(both runs; it includes allocator slack).  The key strings are made before
measuring starts (they are the caller's, not the locks'), so the figures are
what the ``Lock`` objects and the list holding them add.  They are printed
(``-s``) and stated in docs/benchmarks.md; the test checks they stay under a
generous bound (1 KiB per lock), not a speed.  Runs on both engine builds."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any, Dict, List, Tuple

import psutil
import pytest
import redis

from _engine_fixtures import core  # noqa: F401
from quorumlock import aio

BATCH = 10_000
#: Bytes per held lock above which the test fails: ~3x today's figure, so a
#: regression that copies the key or keeps the reply per lock shows.
BOUND = 1024


def _hold_all(urls: List[str], keys: List[str], trace: bool, core: Any) -> Tuple[int, int, Dict[str, Any]]:
    """Acquire every key in batches, keep them all, measure, release all.
    Returns (granted, released, {"rss": B/lock, "traced": B/lock or None, "top": lines})."""

    async def main() -> Tuple[int, int, Dict[str, Any]]:
        # node_timeout: a batch of 10^4 keys on the pure-Python build under
        # tracemalloc, on a loaded machine, once took longer than the default
        # per-node deadline (at most 1 s) and was, correctly, not granted; this
        # test is about holding many locks, not about latency.
        async with aio.LockManager(urls, ttl=600.0, node_timeout=60.0, _core=core) as lm:
            held: List[Any] = []
            proc = psutil.Process()
            gc.collect()
            if trace:
                tracemalloc.start(1)
            try:
                before = tracemalloc.take_snapshot() if trace else None
                base = tracemalloc.get_traced_memory()[0]
                rss0 = proc.memory_info().rss
                for i in range(0, len(keys), BATCH):
                    got = await lm.acquire_many(keys[i:i + BATCH])
                    held.extend(got)
                gc.collect()
                rss = (proc.memory_info().rss - rss0) / len(keys)
                used = tracemalloc.get_traced_memory()[0] - base
                after = tracemalloc.take_snapshot() if trace else None
            finally:
                if trace:
                    tracemalloc.stop()
            top = [str(s) for s in after.compare_to(before, "lineno")[:6]] if after and before else []
            granted = sum(1 for lk in held if lk is not None)
            traced = used / len(keys) if trace else None
            print(f"\n[{core.IMPLEMENTATION}] {len(keys):,} locks held: RSS +{rss:.0f} B per held lock"
                  + (f", tracemalloc {traced:.0f} B per held lock ({used / 2**20:.1f} MiB)" if trace else ""))
            for line in top:
                print("  ", line)
            locks = [lk for lk in held if lk is not None]
            released = 0
            for i in range(0, len(locks), BATCH):
                released += sum(1 for ok in await lm.release_many(locks[i:i + BATCH]) if ok)
            del held, locks
            return granted, released, {"rss": rss, "traced": traced, "top": top}

    return asyncio.run(main())


def _check(make_cluster: Any, count: int, trace: bool, core: Any) -> None:
    cluster = make_cluster(n=3, mode="volatile", max_ttl=600.0)
    keys = [f"mk:{i}" for i in range(count)]
    assert len(set(keys)) == count
    granted, released, info = _hold_all(cluster.urls, keys, trace, core)
    assert granted == count, f"{count - granted} of {count:,} keys not granted"
    assert released == count, f"{count - released} of {count:,} releases failed"
    for p in cluster.ports:
        c = redis.Redis(host=cluster.host, port=p)
        try:
            assert c.dbsize() == 0, f"node {p} still holds {c.dbsize()} keys"
        finally:
            c.close()
    assert info["rss"] < BOUND, f"RSS grew {info['rss']:.0f} B per held lock"
    if trace:
        assert info["traced"] < BOUND, f"{info['traced']:.0f} B per held lock; top allocations: {info['top']}"


def test_hundred_thousand_keys_held_at_once(make_cluster: Any, core: Any) -> None:
    _check(make_cluster, 100_000, trace=False, core=core)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # tracemalloc slows the pure-Python build's 10^6 attempts ~2x
def test_million_keys_held_at_once(make_cluster: Any, core: Any) -> None:
    _check(make_cluster, 1_000_000, trace=True, core=core)
