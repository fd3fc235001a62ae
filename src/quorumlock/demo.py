"""``quorumlock demo``: a tour against real nodes started on this machine.

Starts N local Redis nodes (``quorumlock.nodes``), then shows, with real
output: a lock and its validity, contention between threads, a node crash
that costs only its vote, fencing tokens, and a quick throughput figure next
to the nodes' own command rate.  Everything it starts is stopped at the end."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable, List

from . import IMPLEMENTATION, LockManager
from .aio import LockManager as AsyncLockManager
from .nodes import LocalCluster


def _say(out: Callable[[str], Any], text: str = "") -> None:
    out(text)


def run_demo(n: int = 3, mode: str = "volatile", seconds: float = 1.0, out: Callable[[str], Any] = print) -> dict:
    """Run the tour; return the figures it printed (for tests)."""
    figures: dict = {}
    _say(out, f"quorumlock demo: engine = {IMPLEMENTATION}")
    with LocalCluster(n=n, mode=mode, max_ttl=2.0) as cluster:
        _say(out, f"started {n} {mode} nodes: {', '.join(cluster.urls)}")
        with LockManager(cluster.urls, ttl=2.0) as locks:
            _say(out, "\n1. one lock")
            lock = locks.acquire("demo:report")
            _say(out, f"   {lock!r}: token {lock.token.hex()[:16]}..., held on {lock.nodes}/{n} nodes, "
                      f"validity {lock.validity * 1000:.1f} ms of {lock.ttl * 1000:.0f} ms")
            other = locks.try_acquire("demo:report")
            _say(out, f"   a second try_acquire while it is held -> {other}")
            _say(out, f"   release -> {lock.release()}, again -> {lock.release()}")

            _say(out, "\n2. eight threads, two keys, 200 attempts each")
            holder: dict = {}
            stats = {"acquired": 0, "busy": 0, "overlaps": 0}
            mutex = threading.Lock()

            def worker(w: int) -> None:
                for i in range(200):
                    key = f"demo:shared:{i % 2}"
                    lk = locks.try_acquire(key)
                    if lk is None:
                        with mutex:
                            stats["busy"] += 1
                        continue
                    with mutex:
                        if holder.get(key) is not None:
                            stats["overlaps"] += 1
                        holder[key] = w
                        stats["acquired"] += 1
                    with mutex:
                        holder[key] = None
                    lk.release()

            threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            _say(out, f"   acquired {stats['acquired']}, found busy {stats['busy']}, "
                      f"overlapping holders {stats['overlaps']}")
            figures["overlaps"] = stats["overlaps"]

            if n >= 3:
                _say(out, "\n3. a node crashes (SIGKILL)")
                cluster.kill(0)
                time.sleep(0.05)
                t0 = time.monotonic()
                lk = locks.acquire("demo:after-crash", timeout=2.0)
                _say(out, f"   still acquired in {(time.monotonic() - t0) * 1000:.1f} ms "
                          f"with {lk.nodes}/{n} nodes; the crashed node only cost its vote")
                lk.release()
                if mode == "volatile":
                    _say(out, f"   (volatile mode: the supervisor restarts it only after "
                              f"{cluster.restart_delay:.2f} s, longer than any lease it granted)")

        _say(out, "\n4. fencing tokens")
        with LockManager(cluster.urls, ttl=2.0, fencing=True) as fenced:
            fences = []
            for _ in range(3):
                lk = fenced.acquire("demo:fenced", timeout=2.0)
                fences.append(lk.fence)
                lk.release()
            _say(out, f"   three successive holders got fences {fences}: each larger than the last,")
            _say(out, "   so a storage that remembers the highest fence rejects a paused, stale holder")
        figures["fences"] = fences

        _say(out, f"\n5. throughput for {seconds:.1f} s (asyncio, uvloop when available)")
        rate = _throughput(cluster.urls, seconds)
        figures.update(rate)
        _say(out, f"   per call, 256 concurrent tasks: {rate['per_call']:,.0f} acquire+release cycles/s")
        _say(out, f"   batches of 1,000 keys:          {rate['batch']:,.0f} cycles/s "
                  f"({rate['batch_cpu_us']:.2f} us of client CPU per cycle)")
        _say(out, "   (each cycle is 2N commands; `quorumlock bench` compares these with the nodes' ceiling)")
    _say(out, "\nall nodes stopped.")
    return figures


def _throughput(urls: List[str], seconds: float) -> dict:
    async def main() -> dict:
        async with AsyncLockManager(urls, ttl=10.0) as locks:
            stop = time.monotonic() + seconds / 2
            count = 0

            async def task(i: int) -> None:
                nonlocal count
                key = f"demo:tp:{i}"
                while time.monotonic() < stop:
                    lk = await locks.try_acquire(key)
                    if lk is not None:
                        await lk.release()
                        count += 1

            t0 = time.monotonic()
            await asyncio.gather(*(task(i) for i in range(256)))
            per_call = count / (time.monotonic() - t0)
            keys = [f"demo:batch:{i}" for i in range(1000)]
            stop = time.monotonic() + seconds / 2
            cycles = 0
            t0, c0 = time.monotonic(), time.process_time()
            while time.monotonic() < stop:
                held = await locks.acquire_many(keys)
                await locks.release_many([h for h in held if h is not None])
                cycles += sum(1 for h in held if h is not None)
            dt, cpu = time.monotonic() - t0, time.process_time() - c0
            return {"per_call": per_call, "batch": cycles / dt, "batch_cpu_us": cpu / max(cycles, 1) * 1e6}

    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:  # pragma: no cover
        return asyncio.run(main())


def add_parser(sub: Any) -> None:
    """Register ``quorumlock demo`` on the CLI's subparsers."""
    p = sub.add_parser("demo", help="start local nodes and show quorumlock at work",
                       description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--mode", default="volatile", choices=("volatile", "fsync", "unsafe"),
                   help="node mode (default volatile)")
    p.add_argument("--seconds", type=float, default=1.0, help="length of the throughput run (default 1 s)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: Any) -> int:
    if args.n < 1:
        print(f"quorumlock demo: error: -n must be >= 1, got {args.n}")
        return 2
    run_demo(n=args.n, mode=args.mode, seconds=args.seconds)
    return 0
