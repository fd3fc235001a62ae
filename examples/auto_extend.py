"""Long work under a short lease: auto-extension, max_hold, and a lost lease.

    python examples/auto_extend.py

Starts 3 local nodes, then (asyncio API):

1. holds a 1 s lease for 3 s of work: renewed every third of the TTL;
2. the same with ``max_hold=1.5``: the guard cancels the work at 1.5 s,
   a safety margin before the lease ends, and the block raises ``LockLost``;
3. kills 2 of the 3 nodes under a held lease: renewals cannot reach a quorum,
   the work is cancelled before validity runs out, ``on_lost`` reports why.
"""

from __future__ import annotations

import asyncio
import time

from quorumlock import LockLost
from quorumlock.aio import LockManager
from quorumlock.nodes import LocalCluster


async def main(cluster: LocalCluster) -> None:
    async with LockManager(cluster.urls, ttl=1.0, restart_guard=False, metrics=True) as locks:
        t0 = time.monotonic()
        async with locks.lock("report", auto_extend=True) as lock:
            for _ in range(3):
                await asyncio.sleep(1.0)
                print(f"1. {time.monotonic() - t0:4.1f} s of work, lease valid for {lock.validity:.3f} s more")
        print(f"   renewals so far: {locks.metrics()['leases']['renewals']}")

        t0 = time.monotonic()
        try:
            async with locks.lock("report", auto_extend=True, max_hold=1.5) as lock:
                await asyncio.sleep(10)
        except LockLost as exc:
            print(f"2. after {time.monotonic() - t0:.3f} s: {exc}")

        def on_lost(lock, reason):
            print(f"3. on_lost: {reason}; validity left {lock.validity * 1000:.0f} ms")

        try:
            async with locks.lock("report", auto_extend=True, on_lost=on_lost) as lock:
                await asyncio.sleep(0.2)
                print("   killing 2 of 3 nodes")
                cluster.kill(0)
                cluster.kill(1)
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    print(f"   work cancelled with {lock.validity * 1000:.0f} ms of validity left")
                    raise
        except LockLost as exc:
            print(f"   the block raised LockLost: {exc}")


if __name__ == "__main__":
    with LocalCluster(n=3, mode="volatile", max_ttl=1.0) as cluster:
        asyncio.run(main(cluster))
