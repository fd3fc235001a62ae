"""A Celery app whose tasks never run twice at once with the same arguments.

    python examples/celery_app.py
        starts 3 local lock nodes and a broker node, a Celery worker pool (4
        prefork processes), sends ``report("mon")`` 8 times and
        ``report("tue")`` 4 times at once, and prints when each run started and
        ended: the runs of one day never overlap (they queue up on the lock),
        the two days run side by side.

    celery -A celery_app worker   (from examples/, with QUORUMLOCK_NODES and QL_BROKER set)
        a worker for your own experiments.

Environment: ``QUORUMLOCK_NODES`` (comma-separated lock node URLs, as
``quorumlock nodes up`` prints them), ``QL_BROKER``
(broker URL, default ``redis://127.0.0.1:6379/0``), ``QL_STORE`` (where the
runs are recorded; default: the broker).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import redis

try:
    from celery import Celery
except ImportError:  # one line naming the extra, not a traceback
    raise SystemExit("examples/celery_app.py needs Celery: python -m pip install 'quorumlock[integrations]'") from None

from quorumlock.integrations.celery import ExclusiveTask, configure

BROKER = os.environ.get("QL_BROKER", "redis://127.0.0.1:6379/0")
STORE = os.environ.get("QL_STORE", BROKER)

app = Celery("ql_example", broker=BROKER)
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_ignore_result=True,
)
if os.environ.get("QUORUMLOCK_NODES"):
    configure(app, os.environ["QUORUMLOCK_NODES"].split(","), ttl=2.0, notify=True)


def _record(list_key: str, day: str, seconds: float) -> None:
    r = redis.Redis.from_url(STORE)
    t0 = time.monotonic_ns()
    time.sleep(seconds)
    t1 = time.monotonic_ns()
    r.rpush(list_key, f"{day} {t0} {t1} {os.getpid()}")
    r.close()


@app.task(base=ExclusiveTask, lock_wait=True, lock_ttl=1.0)
def report(day: str, seconds: float = 0.3) -> str:
    """Waits for a running duplicate (same ``day``), then runs."""
    _record("ql:celery:report", day, seconds)
    return day


@app.task(base=ExclusiveTask, lock_ttl=1.0)
def report_once(day: str, seconds: float = 0.3) -> str:
    """Skipped while a duplicate (same ``day``) runs."""
    _record("ql:celery:report_once", day, seconds)
    return day


def spans(list_key: str) -> list:
    r = redis.Redis.from_url(STORE)
    out = [line.decode().split() for line in r.lrange(list_key, 0, -1)]
    return [(day, int(t0), int(t1), int(pid)) for day, t0, t1, pid in out]


def start_worker(nodes: list, broker: str, concurrency: int = 4) -> subprocess.Popen:
    env = dict(os.environ, QUORUMLOCK_NODES=",".join(nodes), QL_BROKER=broker, QL_STORE=broker)
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=prefork",
         f"--concurrency={concurrency}", "--loglevel=WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=here, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def wait_for(list_key: str, count: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = spans(list_key)
        if len(got) >= count:
            return got
        time.sleep(0.05)
    return spans(list_key)


def tour() -> None:
    from quorumlock.nodes import LocalCluster

    # The worker knows the tasks as celery_app.*: send them under that name.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import celery_app as mod

    with LocalCluster(n=3, mode="volatile", max_ttl=2.0) as nodes, LocalCluster(n=1, mode="unsafe") as broker:
        mod.STORE = broker.urls[0]
        mod.app.conf.broker_url = broker.urls[0]
        worker = mod.start_worker(nodes.urls, broker.urls[0])
        try:
            for _ in range(8):
                mod.report.delay("mon")
            for _ in range(4):
                mod.report.delay("tue")
            got = mod.wait_for("ql:celery:report", 12, 60)
        finally:
            worker.terminate()
            _, err = worker.communicate(timeout=30)
        if not got:
            print(err)
            raise SystemExit("no task ran")
        t0 = min(s[1] for s in got)
        for day, a, b, pid in sorted(got, key=lambda s: s[1]):
            print(f"{day}  {(a - t0) / 1e9:6.3f} -> {(b - t0) / 1e9:6.3f} s  (worker process {pid})")
        for day in ("mon", "tue"):
            runs = sorted((a, b) for d, a, b, _ in got if d == day)
            overlap = any(x[1] > y[0] for x, y in zip(runs, runs[1:]))
            print(f"{day}: {len(runs)} runs, {'overlapping!' if overlap else 'one at a time'}")


if __name__ == "__main__":
    tour()
