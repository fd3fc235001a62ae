"""A lock client run as a separate process by the tests.

    python tests/_lock_worker.py fences URLS KEY COUNT OUT [TTL]
        acquire KEY (fencing=True) COUNT times, recording for each acquisition
        "acquired_ns release_invoked_ns fence" (CLOCK_MONOTONIC, shared by every
        process on the host) into OUT.
    python tests/_lock_worker.py rmw URLS STORE_PORT KEY TTL fenced|plain
        acquire KEY, read the counter KEY in the storage node (a fenced read
        with fenced), print "read <fence> <value>", wait for a line on stdin
        (the test SIGSTOPs us meanwhile), then write value+1 (fenced, or
        plain) and print "wrote" or "rejected".
    python tests/_lock_worker.py hold URLS KEY TTL LOCK_DELAY
        acquire KEY with a lock-delay, print "held <monotonic_ns> <validity>",
        then wait to be killed.
"""

import os
import sys
import time

from quorumlock import LockManager


def fences(urls, key, count, out, ttl):
    rows = []
    deadline = time.monotonic() + 120
    with LockManager(urls, ttl=ttl, fencing=True, node_timeout=0.05, restart_guard=False) as locks:
        while len(rows) < count and time.monotonic() < deadline:
            lock = locks.try_acquire(key)
            if lock is None:
                time.sleep(0.0005)
                continue
            # The holding interval is [acquire returned, release invoked]: a
            # successor can acquire as soon as our release reached a majority,
            # before release() returns here.
            t_acq = time.monotonic_ns()
            fence = lock.fence
            t_rel = time.monotonic_ns()
            lock.release()
            rows.append(f"{t_acq} {t_rel} {fence}\n")
    with open(out, "w") as f:
        f.writelines(rows)


def hold(urls, key, ttl, lock_delay):
    with LockManager(urls, ttl=ttl, lock_delay=lock_delay) as locks:
        lock = locks.acquire(key, timeout=5)
        print(f"held {time.monotonic_ns()} {lock.validity}", flush=True)
        time.sleep(600)


def rmw(urls, store_port, key, ttl, how):
    import redis

    from quorumlock.fencing import FencedStore, StaleFence

    client = redis.Redis(port=store_port)
    with LockManager(urls, ttl=ttl, fencing=(how == "fenced")) as locks:
        lock = locks.acquire(key, timeout=5)
        if how == "fenced":
            store = FencedStore(client)
            value = int(store.read(key, lock.fence).value or 0)
        else:
            value = int(client.get(key) or 0)
        print(f"read {lock.fence} {value}", flush=True)
        sys.stdin.readline()  # the "GC pause" happens here (SIGSTOP/SIGCONT)
        try:
            if how == "fenced":
                store.write(key, value + 1, lock.fence)
            else:
                client.set(key, value + 1)
            print("wrote", flush=True)
        except StaleFence:
            print("rejected", flush=True)


if __name__ == "__main__":
    cmd, urls = sys.argv[1], sys.argv[2].split(",")
    if cmd == "fences":
        fences(urls, sys.argv[3], int(sys.argv[4]), sys.argv[5], float(sys.argv[6]) if len(sys.argv) > 6 else 1.0)
    elif cmd == "rmw":
        rmw(urls, int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), sys.argv[6])
    elif cmd == "hold":
        hold(urls, sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(f"unknown command {cmd}")
    os._exit(0)
