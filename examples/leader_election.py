"""Leader election across processes, with a leader killed mid-run.

    python examples/leader_election.py
        starts 3 local Redis nodes and 3 candidate processes (ttl 2 s), SIGKILLs
        the leader after a few seconds, stops the next one cleanly (hand-over),
        and prints the timeline: who led when, and how long each failover took.

    python examples/leader_election.py candidate --nodes URL,URL,URL [--name N]
            [--ttl S] [--log FILE] [--notify]
        one candidate; it appends lines "<CLOCK_MONOTONIC ns> <pid> <event>
        <lease_until ns>" to FILE (or stdout), where event is elected, leading
        (every 50 ms while it is leader), demoted:<reason>, or exit.  SIGTERM
        stops it cleanly (it steps down and releases: hand-over).

All processes on one host share CLOCK_MONOTONIC, so the lines of different
candidates can be compared: tests/test_leader.py checks from them that there
was exactly one leader at a time.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from quorumlock import LeaderElection, LockManager


def candidate(args: argparse.Namespace) -> None:
    fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if args.log else 1
    pid = os.getpid()

    def log(event: str, until: object = "-") -> None:
        # One write(2) per line: nothing is lost in a buffer when SIGKILLed.
        os.write(fd, f"{time.monotonic_ns()} {pid} {event} {until}\n".encode())

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    with LockManager(args.nodes.split(","), notify=args.notify, node_timeout=0.05, restart_guard=False) as locks:
        election = LeaderElection(
            locks, args.name, ttl=args.ttl,
            on_elected=lambda: log("elected", election.lease_until_ns),
            on_demoted=lambda why: log("demoted:" + why.replace(" ", "_")),
        )
        election.start()
        log("started")
        while not stop.wait(0.05):
            until = election.lease_until_ns
            if election.is_leader:
                log("leading", until)
        election.stop()
        log("exit")


def tour() -> None:
    from quorumlock.nodes import LocalCluster

    ttl = 2.0
    here = os.path.abspath(__file__)
    with LocalCluster(n=3, mode="volatile", max_ttl=ttl) as cluster:
        log = os.path.join(cluster.dir, "leader.log")
        procs = [subprocess.Popen([sys.executable, here, "candidate", "--nodes", ",".join(cluster.urls),
                                   "--ttl", str(ttl), "--log", log, "--notify"]) for _ in range(3)]
        try:
            def leader_pid() -> int:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    current = None
                    for line in open(log):
                        t, pid, ev, _ = line.split()
                        if ev == "elected":
                            current = int(pid)
                        elif ev.startswith("demoted") and current == int(pid):
                            current = None
                    alive = {p.pid for p in procs if p.poll() is None}
                    if current in alive:
                        return current
                    time.sleep(0.05)
                raise RuntimeError("no leader")

            time.sleep(3)
            first = leader_pid()
            t_kill = time.monotonic_ns()
            os.kill(first, signal.SIGKILL)
            print(f"SIGKILL leader {first}")
            time.sleep(3)
            second = leader_pid()
            print(f"SIGTERM leader {second} (clean hand-over)")
            t_term = time.monotonic_ns()
            os.kill(second, signal.SIGTERM)
            time.sleep(2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                p.wait(10)
        t0 = None
        for line in open(log):
            t, pid, ev, until = line.split()
            if ev == "leading":
                continue
            t0 = t0 or int(t)
            print(f"{(int(t) - t0) / 1e9:8.3f} s  pid {pid}  {ev}")
            if ev == "elected" and int(t) > t_kill and int(pid) != first and t_kill:
                print(f"           failover after SIGKILL: {(int(t) - t_kill) / 1e9:.3f} s (ttl {ttl} s)")
                t_kill = 0
            if ev == "elected" and int(t) > t_term and int(pid) != second and t_term:
                print(f"           hand-over after SIGTERM: {(int(t) - t_term) / 1e3 / 1e3:.1f} ms")
                t_term = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("candidate")
    c.add_argument("--nodes", required=True)
    c.add_argument("--name", default="example")
    c.add_argument("--ttl", type=float, default=2.0)
    c.add_argument("--log", default=None)
    c.add_argument("--notify", action="store_true")
    args = ap.parse_args()
    if args.cmd == "candidate":
        candidate(args)
    else:
        tour()


if __name__ == "__main__":
    main()
