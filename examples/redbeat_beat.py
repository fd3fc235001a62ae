"""Celery beat with RedBeat and a quorum leader lease: run several beats, each
tick is sent by one of them.

Needs the ``redbeat`` extra: ``pip install 'quorumlock[redbeat]'`` (celery,
celery-redbeat).

    python examples/redbeat_beat.py [--seconds 6]
        starts 3 local lock nodes and a broker node (also RedBeat's store),
        runs two ``celery beat`` processes with a one-second schedule,
        SIGKILLs the one that sends halfway, and prints who sent each tick.

    celery -A redbeat_beat beat     (from examples/, with QL_NODES and QL_BROKER set)
        one beat for your own experiments.

Environment: ``QL_NODES`` (comma-separated lock node URLs), ``QL_BROKER``
(broker URL, also RedBeat's store), ``QL_FIRES`` (a file each beat appends
``<task> <pid> <monotonic ns>`` to when it sends a task), ``QL_PLAIN=1``
(plain RedBeat with its lock switched off: to see what the lease prevents).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import List, Tuple

try:
    from celery import Celery
    from celery.signals import before_task_publish
    import redbeat  # noqa: F401
except ImportError:  # pragma: no cover
    raise SystemExit("this example needs the redbeat extra: pip install 'quorumlock[redbeat]'")

from quorumlock.integrations.celery import configure

HERE = os.path.dirname(os.path.abspath(__file__))
BROKER = os.environ.get("QL_BROKER", "redis://127.0.0.1:6379/0")

app = Celery("redbeat_beat", broker=BROKER)
app.conf.update(
    redbeat_redis_url=BROKER,
    beat_schedule={"tick": {"task": "redbeat_beat.tick", "schedule": 1.0}},
    beat_max_loop_interval=0.2,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
)
if os.environ.get("QL_PLAIN"):
    app.conf.beat_scheduler = "redbeat:RedBeatScheduler"
    app.conf.redbeat_lock_key = None
else:
    app.conf.beat_scheduler = "quorumlock.integrations.redbeat:RedBeatScheduler"
    app.conf.quorumlock_beat_ttl = float(os.environ.get("QL_BEAT_TTL", "1.0"))
    if os.environ.get("QL_NODES"):
        configure(app, os.environ["QL_NODES"].split(","), notify=True)


@app.task
def tick() -> None:
    """The scheduled task (no worker is needed to see who sent it)."""


@before_task_publish.connect
def _record(sender=None, **kwargs) -> None:  # type: ignore[no-untyped-def]
    path = os.environ.get("QL_FIRES")
    if path:
        with open(path, "a") as f:      # O_APPEND: one write per line
            f.write(f"{sender} {os.getpid()} {time.monotonic_ns()}\n")


def start_beat(nodes: List[str], broker: str, fires: str, plain: bool = False) -> subprocess.Popen:
    env = dict(os.environ, QL_NODES=",".join(nodes), QL_BROKER=broker, QL_FIRES=fires)
    paths = [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([HERE] + paths)
    if plain:
        env["QL_PLAIN"] = "1"
    else:
        env.pop("QL_PLAIN", None)
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "redbeat_beat", "beat", "--loglevel=WARNING",
                             "--pidfile=", "--schedule", os.devnull],
                            cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def read_fires(path: str) -> List[Tuple[str, int, int]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(t, int(pid), int(ns)) for t, pid, ns in (line.split() for line in f)]


def tour(seconds: float) -> None:
    import tempfile

    from quorumlock.nodes import LocalCluster

    with LocalCluster(n=3, mode="volatile", max_ttl=2.0) as nodes, LocalCluster(n=1, mode="unsafe") as b, \
            tempfile.TemporaryDirectory() as tmp:
        fires = os.path.join(tmp, "fires")
        beats = [start_beat(nodes.urls, b.urls[0], fires) for _ in range(2)]
        try:
            time.sleep(seconds / 2)
            got = read_fires(fires)
            if got:
                victim = next((p for p in beats if p.pid == got[-1][1]), None)
                if victim is not None:
                    os.killpg(victim.pid, signal.SIGKILL)
                    print(f"SIGKILLed beat {victim.pid}")
            time.sleep(seconds / 2)
        finally:
            for p in beats:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in beats:
                p.communicate(timeout=30)
        got = read_fires(fires)
        if not got:
            raise SystemExit("no tick was sent")
        t0 = got[0][2]
        for task, pid, ns in got:
            print(f"{(ns - t0) / 1e9:6.3f} s  {task}  sent by beat {pid}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=6.0)
    tour(p.parse_args().seconds)
