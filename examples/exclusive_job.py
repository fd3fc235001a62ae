"""Exclusive jobs: a function that runs in one place at a time per key.

    python examples/exclusive_job.py

Starts 3 local nodes; four threads call ``build_report("mon")`` at once: one
runs it, the others are skipped (they return None and log one line); then
``wait=True`` makes them run one after the other.
"""

from __future__ import annotations

import logging
import threading
import time

from quorumlock import LockManager
from quorumlock.nodes import LocalCluster

logging.basicConfig(level=logging.INFO, format="%(threadName)s %(name)s: %(message)s")

with LocalCluster(n=3, mode="volatile", max_ttl=2.0) as cluster, \
        LockManager(cluster.urls, ttl=2.0, notify=True, metrics=True) as locks:

    @locks.exclusive("report:{day}", wait=False)
    def build_report(day):
        time.sleep(0.5)
        return f"report {day} built by {threading.current_thread().name}"

    @locks.exclusive("report:{day}", wait=True)
    def build_report_waiting(day):
        time.sleep(0.2)
        return f"report {day} built by {threading.current_thread().name}"

    for fn in (build_report, build_report_waiting):
        results = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, fn("mon")), name=f"worker-{i}")
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"{fn.__name__}: {results}")
        print(f"  stats {fn.stats}")
    print("manager metrics, jobs:", locks.metrics()["jobs"])
