"""Dramatiq with quorumlock: actors whose duplicates never run at the same time.

Needs the ``dramatiq`` extra: ``pip install 'quorumlock[dramatiq]'``.

    python examples/dramatiq_actors.py
        starts 3 local lock nodes and a broker node, sends ``report("mon")``
        8 times, runs ``dramatiq dramatiq_actors`` (2 processes x 4 threads),
        and prints each run's span: they never overlap.

    dramatiq dramatiq_actors      (from examples/, with QL_NODES and QL_BROKER set)
        a worker for your own experiments.

Environment: ``QL_NODES`` (comma-separated lock node URLs), ``QL_BROKER``
(Redis broker URL), ``QL_SPANS`` (a file the actors append ``<name> <start ns>
<end ns> <pid>`` lines to; host CLOCK_MONOTONIC).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

try:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
except ImportError:  # pragma: no cover
    raise SystemExit("this example needs the dramatiq extra: pip install 'quorumlock[dramatiq]'")

from quorumlock import LockManager
from quorumlock.integrations.dramatiq import QuorumLock

HERE = os.path.dirname(os.path.abspath(__file__))

broker = RedisBroker(url=os.environ.get("QL_BROKER", "redis://127.0.0.1:6379/0"))


def _locks() -> LockManager:
    # Called in each worker process on first use.
    return LockManager(os.environ["QL_NODES"].split(","), ttl=1.0, notify=True)


broker.add_middleware(QuorumLock(_locks, ttl=1.0, retry_delay=100))
dramatiq.set_broker(broker)


def _record(name: str, seconds: float) -> None:
    t0 = time.monotonic_ns()
    with open(os.environ["QL_SPANS"], "a") as f:      # O_APPEND: one write per line
        f.write(f"start:{name} {t0} 0 {os.getpid()}\n")
    time.sleep(seconds)
    t1 = time.monotonic_ns()
    with open(os.environ["QL_SPANS"], "a") as f:
        f.write(f"{name} {t0} {t1} {os.getpid()}\n")


@dramatiq.actor(exclusive_key="report:{0}", max_retries=200)
def report(day: str, seconds: float = 0.2) -> None:
    """One run per day at a time: a duplicate is retried 100 ms later."""
    _record(day, seconds)


@dramatiq.actor(exclusive_key="report-wait:{0}", exclusive_wait=30)
def report_wait(day: str, seconds: float = 0.2) -> None:
    """One run per day at a time: a duplicate waits (in its worker thread)."""
    _record(day, seconds)


@dramatiq.actor(exclusive=True, exclusive_on_busy="skip")
def report_once(day: str, seconds: float = 0.2) -> None:
    """Skipped (acknowledged without running) while a duplicate runs."""
    _record(day, seconds)


@dramatiq.actor(max_retries=0)
def plain_report(day: str, seconds: float = 0.2) -> None:
    """The same actor with no lock."""
    _record(day, seconds)


def send(broker_url: str, actor_name: str, *args, **options) -> None:  # type: ignore[no-untyped-def]
    """Send a message without importing this module's broker setup."""
    b = RedisBroker(url=broker_url)
    b.enqueue(dramatiq.Message(queue_name="default", actor_name=actor_name, args=args, kwargs={},
                               options=options))
    b.close()


def start_worker(nodes, broker_url: str, spans: str, processes: int = 2, threads: int = 4) -> subprocess.Popen:
    env = dict(os.environ, QL_NODES=",".join(nodes), QL_BROKER=broker_url, QL_SPANS=spans)
    paths = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([HERE] + paths)
    return subprocess.Popen([sys.executable, "-m", "dramatiq", "dramatiq_actors", "--processes", str(processes),
                             "--threads", str(threads)], cwd=HERE, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


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
    import signal
    import tempfile

    from quorumlock.nodes import LocalCluster

    with LocalCluster(n=3, mode="volatile", max_ttl=2.0) as nodes, LocalCluster(n=1, mode="unsafe") as b, \
            tempfile.TemporaryDirectory() as tmp:
        spans = os.path.join(tmp, "spans")
        for _ in range(8):
            send(b.urls[0], "report", "mon", 0.2)
        worker = start_worker(nodes.urls, b.urls[0], spans)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.poll() is None:
            got = [s for s in read_spans(spans) if not s[0].startswith("start:")]
            if len(got) >= 8:
                break
            time.sleep(0.1)
        os.killpg(worker.pid, signal.SIGTERM)
        worker.communicate(timeout=30)
        t0 = min(s[1] for s in got)
        for name, a, c, pid in sorted(got, key=lambda s: s[1]):
            print(f"{name}  {(a - t0) / 1e9:6.3f} -> {(c - t0) / 1e9:6.3f} s  (worker process {pid})")
        runs = sorted((a, c) for _, a, c, _ in got)
        overlap = any(x[1] > y[0] for x, y in zip(runs, runs[1:]))
        print(f"{len(runs)} runs, {'overlapping!' if overlap else 'one at a time'}")


if __name__ == "__main__":
    tour()
