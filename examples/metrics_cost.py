"""What metrics cost: acquire+release cycles per second with and without
``metrics=True`` (blocking API, one thread, 3 local nodes).

    python examples/metrics_cost.py [--seconds 3]

One iteration is ``try_acquire`` + ``release`` of one key.  Reported: cycles
per second and the client's CPU time per cycle (``time.process_time``: what
the metering wrappers add shows there even on a busy machine), next to the
nodes' ceiling for this workload (2 commands per node per cycle) from
``redis-benchmark`` when it is installed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

from quorumlock import LockManager
from quorumlock.nodes import LocalCluster


def cycles(urls, seconds, metrics):
    """(cycles per second of wall time, client CPU µs per cycle)."""
    with LockManager(urls, metrics=metrics) as locks:
        for _ in range(200):
            locks.try_acquire("cost").release()
        n = 0
        t0 = time.perf_counter()
        c0 = time.process_time()
        end = t0 + seconds
        while time.perf_counter() < end:
            for _ in range(100):
                locks.try_acquire("cost").release()
            n += 100
        return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with LocalCluster(n=3, mode="volatile", max_ttl=10.0) as cluster:
        rows = []
        for rep in range(5):           # interleaved, so that load changes hit both
            for m in (False, True):
                rows.append((m,) + cycles(cluster.urls, args.seconds, m))
        for m in (False, True):
            rate = statistics.median(r for mm, r, _ in rows if mm == m)
            cpu = statistics.median(c for mm, _, c in rows if mm == m)
            print(f"metrics {'on ' if m else 'off'}: {rate:8.0f} cycles/s, client CPU {cpu:6.1f} us per cycle "
                  f"(median of 5)")
        off = statistics.median(c for m, _, c in rows if not m)
        on = statistics.median(c for m, _, c in rows if m)
        print(f"cost of metrics: {on - off:+.1f} us of client CPU per acquire+release cycle")
        if shutil.which("redis-benchmark"):
            out = subprocess.run(["redis-benchmark", "-p", str(cluster.ports[0]), "-t", "set", "-n", "100000",
                                  "-q", "-P", "1"], capture_output=True, text=True).stdout
            last = out.replace("\r", "\n").strip().splitlines()[-1]
            try:
                rps = float(last.split()[1])
                print(f"node ceiling: redis-benchmark SET (50 clients, one node) {rps:.0f}/s; a cycle costs "
                      f"2 commands per node -> at most {rps / 2:.0f} cycles/s")
            except (IndexError, ValueError):
                print(f"redis-benchmark: {last}")


if __name__ == "__main__":
    main()
