"""Same-run A/B: plain vs restart_guard=False vs fencing=True, asyncio, 64 tasks, N=3."""
import asyncio, time, uvloop, redis
from quorumlock.aio import LockManager
from quorumlock.nodes import LocalCluster

async def run(locks, secs=2.0, C=64):
    count = 0; stop = time.monotonic() + secs
    async def task(i):
        nonlocal count
        key = f"g:{i}"
        while time.monotonic() < stop:
            lk = await locks.try_acquire(key)
            if lk is not None:
                await lk.release(); count += 1
    c0 = time.process_time(); t0 = time.monotonic()
    await asyncio.gather(*(task(i) for i in range(C)))
    return count / (time.monotonic() - t0), (time.process_time() - c0) / count * 1e6

async def main(urls):
    variants = {"plain (guard on, default)": {}, "restart_guard=False": {"restart_guard": False},
                "fencing=True": {"fencing": True}}
    res = {k: [] for k in variants}
    for rnd in range(3):
        for name, kw in variants.items():
            async with LockManager(urls, ttl=10.0, **kw) as locks:
                res[name].append(await run(locks))
    base = sum(r[0] for r in res["plain (guard on, default)"]) / 3
    for name, rs in res.items():
        rate = sum(r[0] for r in rs) / 3; cpu = sum(r[1] for r in rs) / 3
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f} | {cpu:.2f} |")

with LocalCluster(n=3, mode="volatile", max_ttl=10.0) as c:
    uvloop.run(main(c.urls))
