"""arq with quorumlock: exclusive job coroutines, and cron ticks that run on one
worker only.

Needs the ``arq`` extra: ``pip install 'quorumlock[arq]'``.

    python examples/arq_worker.py
        starts 3 local lock nodes and a broker node, runs two arq workers
        (``arq arq_worker.WorkerSettings``) with a cron job every second
        (``unique=False``: each worker enqueues every tick), enqueues
        ``report("mon")`` 6 times, and prints who ran what: the report runs
        one at a time, each tick on one worker.

    arq arq_worker.WorkerSettings   (from examples/, with QL_NODES and QL_BROKER set)
        a worker for your own experiments.

Environment: ``QL_NODES`` (comma-separated lock node URLs), ``QL_BROKER``
(Redis URL of arq's queue), ``QL_SPANS`` (a file the jobs append ``<name>
<start ns> <end ns> <pid>`` lines to, host CLOCK_MONOTONIC; cron runs as
``cron:<score>``), ``QL_CRON`` (``quorum``: the cron job with quorumlock;
``plain``: the same with plain arq; unset: none).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List

try:
    import arq
    from arq.connections import RedisSettings
except ImportError:  # pragma: no cover
    raise SystemExit("this example needs the arq extra: pip install 'quorumlock[arq]'")

from quorumlock.integrations import arq as qlarq

HERE = os.path.dirname(os.path.abspath(__file__))
BROKER = os.environ.get("QL_BROKER", "redis://127.0.0.1:6379/0")


def _note(name: str, t0: int, t1: int) -> None:
    with open(os.environ["QL_SPANS"], "a") as f:      # O_APPEND: one write per line
        f.write(f"{name} {t0} {t1} {os.getpid()}\n")


async def _record(name: str, seconds: float) -> None:
    t0 = time.monotonic_ns()
    _note(f"start:{name}", t0, 0)
    await asyncio.sleep(seconds)
    _note(name, t0, time.monotonic_ns())


@qlarq.exclusive("report:{day}", ttl=1.0, on_busy="retry", defer=0.1)
async def report(ctx: Dict[str, Any], day: str, seconds: float = 0.2) -> str:
    """One run per day at a time: a duplicate is retried 0.1 s later (arq Retry)."""
    await _record(day, seconds)
    return day


@qlarq.exclusive("report-once:{day}", ttl=1.0)
async def report_once(ctx: Dict[str, Any], day: str, seconds: float = 0.2) -> str:
    """Skipped while a duplicate runs."""
    await _record(day, seconds)
    return day


async def plain_report(ctx: Dict[str, Any], day: str, seconds: float = 0.2) -> str:
    """The same job with no lock."""
    await _record(day, seconds)
    return day


async def cron_tick(ctx: Dict[str, Any]) -> None:
    await _record(f"cron:{ctx['score']}", 0.05)


async def plain_cron_tick(ctx: Dict[str, Any]) -> None:
    await _record(f"cron:{ctx['score']}", 0.05)


def _cron_jobs() -> List[Any]:
    every_second = dict(second=set(range(60)), microsecond=500_000, unique=False)
    kind = os.environ.get("QL_CRON")
    if kind == "quorum":
        return [qlarq.cron(cron_tick, tick_ttl=30, **every_second)]
    if kind == "plain":
        return [arq.cron(plain_cron_tick, **every_second)]
    return []


def _nodes() -> List[str]:
    return [u for u in os.environ.get("QL_NODES", "").split(",") if u]


class WorkerSettings:
    functions = [report, report_once, plain_report]
    cron_jobs = _cron_jobs()
    on_startup = qlarq.startup(_nodes() or ["redis://127.0.0.1:1"], ttl=1.0, notify=True)
    on_shutdown = qlarq.shutdown
    redis_settings = RedisSettings.from_dsn(BROKER)
    poll_delay = 0.1
    max_tries = 100
    handle_signals = True


async def enqueue(broker: str, function: str, *args: Any, n: int = 1) -> None:
    pool = await arq.create_pool(RedisSettings.from_dsn(broker))
    try:
        for _ in range(n):
            await pool.enqueue_job(function, *args)
    finally:
        await pool.aclose()


def start_worker(nodes: List[str], broker: str, spans: str, cron: str = "") -> subprocess.Popen:
    env = dict(os.environ, QL_NODES=",".join(nodes), QL_BROKER=broker, QL_SPANS=spans, QL_CRON=cron)
    paths = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([HERE] + paths)
    return subprocess.Popen([sys.executable, "-m", "arq", "arq_worker.WorkerSettings"], cwd=HERE, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


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
    from collections import Counter

    from quorumlock.nodes import LocalCluster

    with LocalCluster(n=3, mode="volatile", max_ttl=2.0) as nodes, LocalCluster(n=1, mode="unsafe") as b, \
            tempfile.TemporaryDirectory() as tmp:
        spans = os.path.join(tmp, "spans")
        workers = [start_worker(nodes.urls, b.urls[0], spans, cron="quorum") for _ in range(2)]
        try:
            asyncio.run(enqueue(b.urls[0], "report", "mon", 0.2, n=6))
            time.sleep(5)
        finally:
            for w in workers:
                os.killpg(w.pid, signal.SIGTERM)
            for w in workers:
                w.communicate(timeout=30)
        got = [s for s in read_spans(spans) if not s[0].startswith("start:")]
        runs = sorted((a, c, pid) for name, a, c, pid in got if name == "mon")
        for a, c, pid in runs:
            print(f"report(mon) {(a - runs[0][0]) / 1e9:6.3f} -> {(c - runs[0][0]) / 1e9:6.3f} s  (worker {pid})")
        overlap = any(x[1] > y[0] for x, y in zip(runs, runs[1:]))
        print(f"{len(runs)} runs of report(mon), {'overlapping!' if overlap else 'one at a time'}")
        ticks = Counter(name for name, *_ in got if name.startswith("cron:"))
        who = Counter(pid for name, _, _, pid in got if name.startswith("cron:"))
        print(f"{len(ticks)} cron ticks, runs per tick: {sorted(set(ticks.values()))}, runs per worker: {dict(who)}")


if __name__ == "__main__":
    tour()
