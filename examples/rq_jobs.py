"""RQ with quorumlock: exclusive job functions and one rq-scheduler at a time.

Needs the ``rq`` extra: ``pip install 'quorumlock[rq]'`` (rq and rq-scheduler).

    python examples/rq_jobs.py
        starts 3 local lock nodes and a broker node, enqueues ``report("mon")``
        8 times, runs 3 RQ worker processes, and prints each run's span: they
        never overlap (the duplicates wait for the running one).

    python examples/rq_jobs.py worker --broker URL [--burst] [--with-scheduler
            --worker-class quorum|nolock]
    python examples/rq_jobs.py scheduler --broker URL [--interval S] [--no-lock]
        one RQ worker (with RQ's scheduler process under quorum leases, or
        under no lock at all) / one rq-scheduler process (``--no-lock``: with
        no lock at all, to see what the lock prevents).

Environment: ``QL_NODES`` (comma-separated lock node URLs), ``QL_SPANS`` (a
file the jobs append ``<name> <start ns> <end ns> <pid>`` lines to, host
CLOCK_MONOTONIC), ``QL_MOVES`` (a file the schedulers append ``<job id>
<pid>`` to for each job they move to a queue; RQ's own scheduler under the
quorum leases appends ``<count> <pid> <monotonic ns>`` per pass).
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime
import subprocess
import sys
import time
from typing import List

import redis

try:
    import rq
    import rq.scheduler
    import rq_scheduler
except ImportError:  # pragma: no cover
    raise SystemExit("this example needs the rq extra: pip install 'quorumlock[rq]'")

from quorumlock import LockManager
from quorumlock.integrations.rq import RQScheduler as QuorumRQScheduler, Scheduler as QuorumScheduler
from quorumlock.integrations.rq import Worker as QuorumRQWorker, exclusive_job

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


def tick_job() -> None:
    """A job scheduled with enqueue_at: records one line per run."""
    job = rq.get_current_job()
    t = time.monotonic_ns()
    with open(os.environ["QL_SPANS"], "a") as f:
        f.write(f"job:{job.id} {t} {t} {os.getpid()}\n")


class RecordingRQScheduler(QuorumRQScheduler):
    """RQ's built-in scheduler with the quorum leases, noting its moves."""

    def enqueue_scheduled_jobs(self) -> None:
        before = self.moved
        super().enqueue_scheduled_jobs()
        if self.moved > before:
            with open(os.environ["QL_MOVES"], "a") as f:
                f.write(f"{self.moved - before} {os.getpid()} {time.monotonic_ns()}\n")


class QuorumWorker(QuorumRQWorker):
    """``rq worker --with-scheduler -w rq_jobs.QuorumWorker``."""

    quorumlock_nodes = [u for u in os.environ.get("QL_NODES", "").split(",") if u] or None
    quorumlock_leader_ttl = 1.0
    quorumlock_scheduler_interval = 0.1
    quorumlock_options = {"notify": True}
    scheduler_class = RecordingRQScheduler


class NoLockRQScheduler(rq.scheduler.RQScheduler):
    """RQ's built-in scheduler with no lock at all."""

    def acquire_locks(self, auto_start: bool = False) -> set:
        self._acquired_locks = set(self._queue_names)
        self.lock_acquisition_time = datetime.now()
        if auto_start and (not self._process or not self._process.is_alive()):
            self.start()
        return self._acquired_locks

    def heartbeat(self) -> None:
        pass

    def save(self, pipeline=None) -> None:  # type: ignore[no-untyped-def]
        pass                                  # (RQ's expiry wants whole seconds)


class NoLockWorker(rq.Worker):
    def _start_scheduler(self, burst=False, logging_level="INFO", *args, **kwargs):  # type: ignore[no-untyped-def]
        self.scheduler = NoLockRQScheduler(self.queues, connection=self.connection, interval=0.01,
                                           serializer=self.serializer)
        self.scheduler.acquire_locks()
        self.scheduler.start()


def _note_move(job) -> None:  # type: ignore[no-untyped-def]
    path = os.environ.get("QL_MOVES")
    if path:
        with open(path, "a") as f:
            f.write(f"{job.id} {os.getpid()}\n")


def run_worker(args: argparse.Namespace) -> None:
    conn = redis.Redis.from_url(args.broker)
    cls = {"plain": rq.Worker, "quorum": QuorumWorker, "nolock": NoLockWorker}[args.worker_class]
    w = cls(["default"], connection=conn)
    w.work(burst=args.burst, logging_level="WARNING", with_scheduler=args.with_scheduler)


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
    paths = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([HERE] + paths)
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
    w.add_argument("--with-scheduler", action="store_true", help="also run RQ's scheduler process")
    w.add_argument("--worker-class", choices=("plain", "quorum", "nolock"), default="plain",
                   help="quorum: RQ's scheduler under quorum leases; nolock: with no lock at all")
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
