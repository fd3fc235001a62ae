"""Same-run cost of one blocking acquire+release cycle: the drop-in classes of
``quorumlock.compat`` vs the engine API (``LockManager``), same three local
nodes, sequential (one thread), rounds interleaved so that machine load hits
every variant alike.

    PYTHONPATH=src python bench/scripts/compat_vs_engine.py [--cycles 2000] [--rounds 5]

Prints one Markdown table row per variant: the median over rounds of the
wall-clock µs per cycle, its fastest round, its ratio to the engine API's
(median and fastest), and the client's CPU µs per cycle (median; the wait for
replies in poll() costs none, so this is the Python/C work per cycle, the
least load-sensitive figure on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from typing import Any, Callable, Dict, List

import redis

from quorumlock import LockManager
from quorumlock.nodes import LocalCluster


def engine_cycle(urls: List[str], notify: bool = False) -> Callable[[int], None]:
    """``notify=True``: the release script also publishes (one more write per
    node, decided at a majority as ever): what a drop-in release that signals
    its waiters would cost as one engine operation."""
    mgr = LockManager(urls, ttl=10.0, notify=notify).connect()

    def run(n: int) -> None:
        for _ in range(n):
            lk = mgr.try_acquire("bench:engine")
            assert lk is not None
            lk.release()

    return run


def redis_py_cycle(clients: List[Any], fresh: bool) -> Callable[[int], None]:
    from quorumlock.compat.redis_py import Lock

    lock = Lock(clients, "bench:redis-py", timeout=10)

    def run(n: int) -> None:
        lk = lock
        for _ in range(n):
            if fresh:  # r.lock(...) per use, as most code does
                lk = Lock(clients, "bench:redis-py", timeout=10)
            assert lk.acquire(blocking=False)
            lk.release()

    return run


def pottery_cycle(clients: List[Any]) -> Callable[[int], None]:
    from quorumlock.compat.pottery import Redlock

    lock = Redlock(key="bench:pottery", masters=set(clients), auto_release_time=10)

    def run(n: int) -> None:
        for _ in range(n):
            assert lock.acquire(blocking=False)
            lock.release()

    return run


def redis_lock_cycle(clients: List[Any]) -> Callable[[int], None]:
    from quorumlock.compat import redis_lock

    lock = redis_lock.Lock(clients, "bench:redis-lock", expire=10)

    def run(n: int) -> None:
        for _ in range(n):
            assert lock.acquire(blocking=False)
            lock.release()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    with LocalCluster(n=3, mode="volatile", max_ttl=10.0) as cluster:
        clients = [redis.Redis(port=p) for p in cluster.ports]
        variants: Dict[str, Callable[[int], None]] = {
            "engine API: `LockManager.try_acquire` + `release`": engine_cycle(cluster.urls),
            "engine API, releases that notify (`notify=True`)": engine_cycle(cluster.urls, notify=True),
            "redis-py drop-in `Lock`, one object": redis_py_cycle(clients, fresh=False),
            "redis-py drop-in `Lock`, new object per cycle": redis_py_cycle(clients, fresh=True),
            "pottery drop-in `Redlock`": pottery_cycle(clients),
        }
        try:
            variants["python-redis-lock drop-in `Lock`"] = redis_lock_cycle(clients)
        except ImportError:
            pass
        for run in variants.values():  # warm up: connect, load scripts
            run(200)
        us: Dict[str, List[float]] = {k: [] for k in variants}
        cpu: Dict[str, List[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, run in variants.items():
                c = time.process_time()
                t = time.perf_counter()
                run(args.cycles)
                us[name].append((time.perf_counter() - t) / args.cycles * 1e6)
                cpu[name].append((time.process_time() - c) / args.cycles * 1e6)
        first = next(iter(us))
        base, base_min = statistics.median(us[first]), min(us[first])
        base_cpu = statistics.median(cpu[first])
        load = os.getloadavg()[0]
        print(f"N=3, {args.rounds} rounds x {args.cycles} cycles, load average {load:.1f}")
        print("| variant | µs/cycle (median) | fastest round | vs engine (median / fastest) "
              "| client CPU µs/cycle | vs engine |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, xs in us.items():
            med, lo, c = statistics.median(xs), min(xs), statistics.median(cpu[name])
            print(f"| {name} | {med:.0f} | {lo:.0f} | {med / base:.2f} / {lo / base_min:.2f} "
                  f"| {c:.1f} | {c / base_cpu:.2f} |")
        for c in clients:
            c.close()


if __name__ == "__main__":
    main()
