"""Wake-up on release: how long after a release does a waiter hold the lock?

    python examples/wakeup_latency.py [--rounds 40] [--nodes URL,URL,URL]

One iteration: a holder takes the key; a waiter starts ``acquire`` on it
(another manager: another thread, or another task); after a random 50-150 ms
the holder releases; the figure is the time from the release call to the
waiter's ``acquire`` returning (CLOCK_MONOTONIC, one process).  Compared:

* ``poll``: the default jittered retries (``retry_delay`` 0.1-0.3 s);
* ``notify``: ``notify=True`` managers: the release script PUBLISHes, the
  waiter retries when a majority of nodes reported the key free;
* ``keyspace``: plain releases, the server's keyspace notifications
  (``notify-keyspace-events Kgx``) wake the waiter (needs our own nodes).

Without ``--nodes`` it starts 3 local nodes (with keyspace notifications on).
Prints p50 / p90 / max per API and mode.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import threading
import time
from typing import Dict, List

from quorumlock import LockManager
from quorumlock.aio import LockManager as AsyncLockManager


def blocking_round(holder: LockManager, waiter: LockManager, key: str, mode: str) -> float:
    lock = holder.acquire(key, ttl=5)
    got: Dict[str, int] = {}

    def wait() -> None:
        lk = waiter.acquire(key, ttl=5, timeout=10, wait="poll" if mode == "poll" else "notify")
        got["t"] = time.monotonic_ns()
        lk.release()

    th = threading.Thread(target=wait)
    th.start()
    time.sleep(random.uniform(0.05, 0.15))
    t_rel = time.monotonic_ns()
    lock.release()
    th.join()
    return (got["t"] - t_rel) / 1e6


async def async_round(holder: AsyncLockManager, waiter: AsyncLockManager, key: str, mode: str) -> float:
    lock = await holder.acquire(key, ttl=5)
    got: Dict[str, int] = {}

    async def wait() -> None:
        lk = await waiter.acquire(key, ttl=5, timeout=10, wait="poll" if mode == "poll" else "notify")
        got["t"] = time.monotonic_ns()
        await lk.release()

    task = asyncio.ensure_future(wait())
    await asyncio.sleep(random.uniform(0.05, 0.15))
    t_rel = time.monotonic_ns()
    await lock.release()
    await task
    return (got["t"] - t_rel) / 1e6


def summary(ms: List[float]) -> str:
    """p50 / p90 / max of ``ms``.  ``method="inclusive"`` keeps every quantile
    between the smallest and the largest sample; the default ("exclusive")
    extrapolates past them for small samples and printed a p90 above the max."""
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return f"p50 {statistics.median(ms):7.2f} ms   p90 {q[8]:7.2f} ms   max {max(ms):7.2f} ms   (n={len(ms)})"


def measure(urls: List[str], rounds: int, modes: List[str]) -> Dict[str, List[float]]:
    out: Dict[str, List[float]] = {}
    for mode in modes:
        with LockManager(urls, notify=(mode == "notify")) as holder, LockManager(urls) as waiter:
            out[f"blocking {mode}"] = [blocking_round(holder, waiter, f"wake:b:{mode}", mode) for _ in range(rounds)]

        async def arun() -> List[float]:
            async with AsyncLockManager(urls, notify=(mode == "notify")) as holder, \
                    AsyncLockManager(urls) as waiter:
                return [await async_round(holder, waiter, f"wake:a:{mode}", mode) for _ in range(rounds)]

        out[f"asyncio  {mode}"] = asyncio.run(arun())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--nodes", default=None)
    args = ap.parse_args()
    if args.nodes:
        results = measure(args.nodes.split(","), args.rounds, ["poll", "notify"])
    else:
        from quorumlock.nodes import LocalCluster

        with LocalCluster(n=3, mode="volatile", max_ttl=5.0,
                          extra_args=["--notify-keyspace-events", "Kgx"]) as cluster:
            results = measure(cluster.urls, args.rounds, ["poll", "notify", "keyspace"])
    print("release -> waiter holds the lock (default retry_delay 0.1-0.3 s for polling)")
    for name, ms in results.items():
        print(f"  {name:18s} {summary(ms)}")


if __name__ == "__main__":
    main()
