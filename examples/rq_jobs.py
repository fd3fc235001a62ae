"""RQ with quorumlock: exclusive job functions and one rq-scheduler at a time.

Needs the ``rq`` extra: ``pip install 'quorumlock[rq]'`` (rq and rq-scheduler).

    python examples/rq_jobs.py
        starts 3 local lock nodes and a broker node, enqueues ``report("mon")``
        8 times, runs 3 RQ worker processes, and prints each run's span: they
        never overlap (the duplicates wait for the running one).

    python examples/rq_jobs.py worker --broker URL [--burst]
    python examples/rq_jobs.py scheduler --broker URL [--interval S] [--no-lock]
        one RQ worker / one rq-scheduler process (``--no-lock``: rq-scheduler
        with no lock at all, to see what the lock prevents).

Environment: ``QL_NODES`` (comma-separated lock node URLs), ``QL_SPANS`` (a
file the jobs append ``<name> <start ns> <end ns> <pid>`` lines to, host
CLOCK_MONOTONIC), ``QL_MOVES`` (a file the schedulers append ``<job id>
<pid>`` to for each job they move to a queue).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import List

import redis

try:
    import rq
    import rq_scheduler
except ImportError:  # pragma: no cover
    raise SystemExit("this example needs the rq extra: pip install 'quorumlock[rq]'")

from quorumlock import LockManager
from quorumlock.integrations.rq import Scheduler as QuorumScheduler, exclusive_job

HERE = os.path.dirname(os.path.abspath(__file__))


def _locks() -> LockManager:
    # Called in each worker process (work horse) on first use.
    return LockManager(os.environ["QL_NODES"].split(","), ttl=1.0, notify=True)


def _record(name: str, seconds: float) -> None:
    t0 = time.monotonic_ns()
    with open(os.environ["QL_SPANS"], "a") as f:      # O_APPEND: one write per line
        f.write(f"start:{name} {t0} 0 {os.getpid()}\n")
    time.sleep(seconds)
    t1 = time.monotonic_ns()
    with open(os.environ["QL_SPANS"], "a") as f:
        f.write(f"{name} {t0} {t1} {os.getpid()}\n")


@exclusive_job(_locks, "report:{day}", ttl=1.0, wait=30)
def report(day: str, seconds: float = 0.2) -> str:
    """At most one run per day at a time: duplicates wait for it."""
    _record(day, seconds)
    return day


@exclusive_job(_locks, "report-once:{day}", ttl=1.0)
def report_once(day: str, seconds: float = 0.2) -> str:
    """Skipped (job.meta["quorumlock"] == "skipped") while a duplicate runs."""
    _record(day, seconds)
    return day


def plain_report(day: str, seconds: float = 0.2) -> str:
    """The same job with no lock."""
    _record(day, seconds)
    return day


def tick(n: int = 0) -> int:
    """A scheduled job."""
    return n


class RecordingScheduler(QuorumScheduler):
    def enqueue_job(self, job):  # type: ignore[no-untyped-def]
        super().enqueue_job(job)
        _note_move(job)


class NoLockScheduler(rq_scheduler.Scheduler):
    """rq-scheduler with no lock at all: every process moves the due jobs."""

    def acquire_lock(self) -> bool:
        return True

    def enqueue_job(self, job):  # type: ignore[no-untyped-def]
        super().enqueue_job(job)
        _note_move(job)


def _note_move(job) -> None:  # type: ignore[no-untyped-def]
    path = os.environ.get("QL_MOVES")
    if path:
        with open(path, "a") as f:
            f.write(f"{job.id} {os.getpid()}\n")


def run_worker(args: argparse.Namespace) -> None:
    conn = redis.Redis.from_url(args.broker)
    w = rq.Worker(["default"], connection=conn)
    w.work(burst=args.burst, logging_level="WARNING")


def run_scheduler(args: argparse.Namespace) -> None:
    conn = redis.Redis.from_url(args.broker)
    if args.no_lock:
        s = NoLockScheduler(connection=conn, interval=args.interval)
    else:
        s = RecordingScheduler(connection=conn, interval=args.interval, leader_ttl=args.leader_ttl,
                               nodes=os.environ["QL_NODES"].split(","),
                               manager_options={"notify": True})
    print(f"scheduler {os.getpid()} started", flush=True)
    s.run()


def start(kind: str, broker: str, nodes: List[str], spans: str = "", moves: str = "",
          extra: List[str] = ()) -> subprocess.Popen:  # type: ignore[assignment]
    """A worker or scheduler process (its own process group, for SIGKILL)."""
    env = dict(os.environ, QL_NODES=",".join(nodes), QL_SPANS=spans, QL_MOVES=moves)
    env["PYTHONPATH"] = os.pathsep.join([HERE] + [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.Popen([sys.executable, os.path.join(HERE, "rq_jobs.py"), kind, "--broker", broker, *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def read_spans(path: str) -> list:
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            name, a, b, pid = line.split()
            out.append((name, int(a), int(b), int(pid)))
    return out


def tour() -> None:
    import tempfile

    from quorumlock.nodes import LocalCluster

    sys.path.insert(0, HERE)
    import rq_jobs as mod       # enqueue under the name the workers import

    with LocalCluster(n=3, mode="volatile", max_ttl=2.0) as nodes, LocalCluster(n=1, mode="unsafe") as broker, \
            tempfile.TemporaryDirectory() as tmp:
        spans = os.path.join(tmp, "spans")
        q = rq.Queue("default", connection=redis.Redis.from_url(broker.urls[0]))
        for _ in range(8):
            q.enqueue(mod.report, "mon", 0.2)
        workers = [start("worker", broker.urls[0], nodes.urls, spans, extra=["--burst"]) for _ in range(3)]
        for w in workers:
            w.wait(60)
        got = [s for s in read_spans(spans) if not s[0].startswith("start:")]
        t0 = min(s[1] for s in got)
        for name, a, b, pid in sorted(got, key=lambda s: s[1]):
            print(f"{name}  {(a - t0) / 1e9:6.3f} -> {(b - t0) / 1e9:6.3f} s  (worker process {pid})")
        runs = sorted((a, b) for _, a, b, _ in got)
        overlap = any(x[1] > y[0] for x, y in zip(runs, runs[1:]))
        print(f"{len(runs)} runs in {len({s[3] for s in got})} processes, "
              f"{'overlapping!' if overlap else 'one at a time'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--broker", required=True)
    w.add_argument("--burst", action="store_true")
    s = sub.add_parser("scheduler")
    s.add_argument("--broker", required=True)
    s.add_argument("--interval", type=float, default=0.1)
    s.add_argument("--leader-ttl", type=float, default=1.0)
    s.add_argument("--no-lock", action="store_true")
    args = p.parse_args()
    if args.cmd == "worker":
        run_worker(args)
    elif args.cmd == "scheduler":
        run_scheduler(args)
    else:
        tour()


if __name__ == "__main__":
    main()
