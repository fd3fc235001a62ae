"""Where the client CPU of one sequential asyncio cycle goes (N=3, volatile).

One caller, one key: ``await try_acquire(key)`` then ``await lock.release()``,
on uvloop (``--loop asyncio`` for the stock loop).  Parts:

* ``cycle``: quorumlock's CPU per cycle (``time.process_time``) and wall time;
* ``floor``: the same two quorum rounds done by a minimal ``asyncio.Protocol``
  client (write one command to each of 3 sockets, wake the caller when 2
  replies are in, read the third), i.e. what the event loop and the socket
  syscalls cost with no lock logic at all; ``cycle - floor`` bounds what the
  engine, the manager and the Lock objects add;
* ``--profile``: cProfile of the quorumlock cycles (Python-level frames only;
  the compiled core and uvloop show as their Python-visible entry points).

For the kernel / libpython / uvloop / core split run it under perf::

    perf record -F 2000 -g -o /tmp/p.data -- python bench/scripts/async_cycle_profile.py --only cycle
    perf report -i /tmp/p.data --sort dso --stdio

and for syscalls per cycle under ``strace -f -c``.
Usage: PYTHONPATH=src python bench/scripts/async_cycle_profile.py [--cycles K] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import time
from typing import Any, List, Tuple

from quorumlock import aio
from quorumlock._backend import IMPLEMENTATION
from quorumlock.nodes import LocalCluster


async def quorumlock_cycles(urls: List[str], cycles: int, prof: Any = None) -> Tuple[float, float]:
    async with aio.LockManager(urls, ttl=10.0) as lm:
        ta = lm.try_acquire
        for _ in range(500):  # warm-up
            lk = await ta("prof:key")
            await lk.release()
        if prof is not None:
            prof.enable()
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(cycles):
            lk = await ta("prof:key")
            await lk.release()
        c1, t1 = time.process_time(), time.perf_counter()
        if prof is not None:
            prof.disable()
        return (c1 - c0) / cycles * 1e6, (t1 - t0) / cycles * 1e6


class _Node(asyncio.Protocol):
    """One connection; every reply here is one line (+OK, :1, $-1)."""

    def __init__(self, round_: List[Any]) -> None:
        self.round = round_
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        r = self.round
        r[0] += data.count(b"\r\n")
        if r[0] >= 2 and r[1] is not None and not r[1].done():
            r[1].set_result(None)


async def floor_cycles(host: str, ports: List[int], cycles: int) -> Tuple[float, float]:
    loop = asyncio.get_running_loop()
    round_: List[Any] = [0, None]
    nodes = []
    for p in ports:
        _, proto = await loop.create_connection(lambda: _Node(round_), host, p)
        nodes.append(proto)
    set_cmd = b"*6\r\n$3\r\nSET\r\n$8\r\nprof:key\r\n$22\r\n" + b"t" * 22 + b"\r\n$2\r\nNX\r\n$2\r\nPX\r\n$5\r\n10000\r\n"
    del_cmd = b"*2\r\n$3\r\nDEL\r\n$8\r\nprof:key\r\n"

    async def one_round(cmd: bytes) -> None:
        round_[0] = 0
        round_[1] = loop.create_future()
        for nd in nodes:
            nd.transport.write(cmd)
        await round_[1]

    async def cycle() -> None:
        await one_round(set_cmd)
        await one_round(del_cmd)

    for _ in range(500):
        await cycle()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(cycles):
        await cycle()
    c1, t1 = time.process_time(), time.perf_counter()
    for nd in nodes:
        nd.transport.close()
    return (c1 - c0) / cycles * 1e6, (t1 - t0) / cycles * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=20_000)
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--only", choices=("cycle", "floor"), default=None)
    ap.add_argument("--profile", action="store_true", help="cProfile the quorumlock cycles (top 20 by tottime)")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    else:
        run = asyncio.run
    with LocalCluster(n=3, mode="volatile", max_ttl=10.0) as c:
        if args.only in (None, "cycle"):
            cpu, wall = run(quorumlock_cycles(c.urls, args.cycles))
            print(f"quorumlock [{IMPLEMENTATION}, {args.loop}]: {cpu:.1f} us CPU, {wall:.1f} us wall per cycle")
        if args.only in (None, "floor"):
            fcpu, fwall = run(floor_cycles(c.host, c.ports, args.cycles))
            print(f"floor (bare Protocol, same 2 rounds): {fcpu:.1f} us CPU, {fwall:.1f} us wall per cycle")
        if args.profile:
            prof = cProfile.Profile()
            run(quorumlock_cycles(c.urls, args.cycles, prof))
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
            print(out.getvalue())
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
