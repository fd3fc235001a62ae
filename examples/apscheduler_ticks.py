"""Three APScheduler processes, one interval job: every tick runs exactly once.

    python examples/apscheduler_ticks.py [--seconds 20] [--kill-at 8]
        starts 3 local lock nodes and a store node, then 3 scheduler processes
        with the same job (every second); SIGKILLs one of them mid-run; counts,
        per scheduled tick, how many times the job ran (in the store).

    python examples/apscheduler_ticks.py worker --nodes URL,URL,URL --store URL
            [--seconds S] [--interval S] [--job-id ID]
        one scheduler process (what the tour starts three of).

The job records ``HINCRBY ql:ticks <tick µs> 1`` and ``RPUSH ql:runs "<tick>
<pid>"`` in the store; ``quorumlock.integrations.apscheduler`` makes each tick
run in one process only (tests/test_integrations.py checks the counts).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Tuple

import redis


def worker(args: argparse.Namespace) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    from quorumlock import LockManager
    from quorumlock.integrations.apscheduler import ThreadPoolExecutor, interval_trigger, scheduled_run_time

    store = redis.Redis.from_url(args.store)
    pid = os.getpid()

    def job() -> None:
        us = int(scheduled_run_time().timestamp() * 1_000_000)
        store.hincrby("ql:ticks", str(us), 1)
        store.rpush("ql:runs", f"{us} {pid}")

    with LockManager(args.nodes.split(","), ttl=5.0) as locks:
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(locks, max_workers=4)},
            job_defaults={"misfire_grace_time": 1, "coalesce": False, "max_instances": 1},
            timezone="UTC",
        )
        scheduler.add_job(job, interval_trigger(seconds=args.interval), id=args.job_id)
        scheduler.start()
        print(f"worker {pid} started", flush=True)
        try:
            time.sleep(args.seconds)
        finally:
            scheduler.shutdown(wait=True)


def run_schedulers(nodes: List[str], store_url: str, seconds: float, kill_at: float,
                   interval: float = 1.0, job_id: str = "tick") -> Tuple[Dict[int, int], float, float, float]:
    """Start three workers, SIGKILL at ``kill_at`` seconds the one that ran
    the latest tick, wait for the others; return ({tick µs: runs}, start, kill and end wall-clock times)."""
    here = os.path.abspath(__file__)
    cmd = [sys.executable, here, "worker", "--nodes", ",".join(nodes), "--store", store_url,
           "--seconds", str(seconds), "--interval", str(interval), "--job-id", job_id]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for p in procs:        # wait until every scheduler runs
            assert p.stdout is not None
            p.stdout.readline()
        t_start = time.time()
        time.sleep(kill_at)
        # Kill the process that ran the latest tick: the active runner.
        last = redis.Redis.from_url(store_url).lindex("ql:runs", -1)
        victim = procs[0]
        if last is not None:
            victim = next((p for p in procs if p.pid == int(last.split()[1])), procs[0])
        victim.send_signal(signal.SIGKILL)
        t_kill = time.time()
        for p in procs:
            if p is not victim:
                p.wait(seconds + 30)
        t_end = time.time()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    store = redis.Redis.from_url(store_url)
    ticks = {int(k): int(v) for k, v in store.hgetall("ql:ticks").items()}
    return ticks, t_start, t_kill, t_end


def tour(args: argparse.Namespace) -> None:
    from quorumlock.nodes import LocalCluster

    with LocalCluster(n=3, mode="volatile", max_ttl=5.0) as cluster, LocalCluster(n=1, mode="unsafe") as store:
        ticks, t_start, t_kill, t_end = run_schedulers(cluster.urls, store.urls[0], args.seconds, args.kill_at)
        for us in sorted(ticks):
            t = us / 1e6
            mark = "  <- after the SIGKILL" if t > t_kill and t - 1 <= t_kill else ""
            print(f"tick {time.strftime('%H:%M:%S', time.gmtime(t))}: ran {ticks[us]}x{mark}")
        counts = sorted(set(ticks.values()))
        span = (max(ticks) - min(ticks)) // 1_000_000 + 1
        print(f"{len(ticks)} ticks over {span} s, run counts {counts}: "
              + ("every tick ran exactly once" if counts == [1] and span == len(ticks) else "NOT exactly once"))


def main() -> None:
    import importlib.util

    if importlib.util.find_spec("apscheduler") is None:  # one line naming the extra, not a traceback
        raise SystemExit("examples/apscheduler_ticks.py needs APScheduler 3.x: "
                         "python -m pip install 'quorumlock[integrations]'")  # fmt: skip
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", nargs="?", default="tour", choices=["tour", "worker"])
    ap.add_argument("--nodes")
    ap.add_argument("--store")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--kill-at", type=float, default=8.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--job-id", default="tick")
    args = ap.parse_args()
    if args.cmd == "worker":
        worker(args)
    else:
        tour(args)


if __name__ == "__main__":
    main()
