"""The recovery side: SIGKILL one node, time its way back, and check whether
a lock was granted twice.

One scenario per mode, on its own ``LocalCluster`` of N (default 3) nodes:

1. node 0 is preloaded with ``preload`` lock-like keys (something for an
   ``fsync`` node to replay; a ``volatile`` node loses them);
2. client A acquires ``key`` with ``try_acquire``; the key is then deleted on
   every node past the quorum, so A holds it on a *bare majority* (nodes
   ``0 .. N//2``);
3. client B connects (a long-lived client that sees the restart);
4. node 0 is killed with SIGKILL (``LocalCluster.kill``); the supervisor
   restarts it per the mode (volatile: after ``ttl * (1 + drift) + margin``;
   fsync / unsafe: at once);
5. every ``poll`` seconds until everything is known: a raw probe
   ``DBSIZE; GET key; SET probe NX PX`` on node 0 (the first ``+OK`` is when it
   serves locks again), ``B.try_acquire(key)`` (B holding ``key`` while A's
   lock is still valid by A's monotonic clock = *granted twice*), and
   ``B.try_acquire`` of a fresh key until B's quorum counts all N nodes again.

The ``crash`` / ``restart`` / ``up`` times come from ``LocalCluster.history``.
``unsafe`` is the negative control: the node comes back empty at once, B's
quorum is node 0 plus the node A never held, and the lock is granted twice.
``unsafe + restart_guard`` shows the client-side delayed restart of
docs/node-modes.md: B leaves the restarted node out of its quorums for the guard window.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Dict, List, Optional, Tuple

from .progress import LogCapture

__all__ = ["default_scenarios", "run_scenario"]


def default_scenarios(modes: List[str]) -> List[Tuple[str, bool]]:
    """``(mode, restart_guard)`` pairs: each benchmarked mode without the
    client guard, then ``unsafe`` without and with it, for contrast."""
    out = [(m, False) for m in modes if m != "unsafe"]
    out += [("unsafe", False), ("unsafe", True)]
    return out


def _probe(host: str, port: int, key: str, probe_key: str, timeout: float = 0.1) -> Optional[Tuple[int, Any, bool]]:
    """``(dbsize, value of key, SET NX ok)`` from node ``port``, or None if it
    does not answer (down, loading, refused)."""
    import hiredis

    def bulk(s: str) -> bytes:
        b = s.encode()
        return b"$%d\r\n%s\r\n" % (len(b), b)

    req = (b"*1\r\n$6\r\nDBSIZE\r\n"
           + b"*2\r\n$3\r\nGET\r\n" + bulk(key)
           + b"*6\r\n$3\r\nSET\r\n" + bulk(probe_key) + bulk("1") + bulk("NX") + bulk("PX") + bulk("1000"))  # fmt: skip
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(req)
            reader = hiredis.Reader()
            replies: List[Any] = []
            deadline = time.monotonic() + timeout
            while len(replies) < 3:
                if time.monotonic() > deadline:
                    return None
                data = s.recv(65536)
                if not data:
                    return None
                reader.feed(data)
                while True:
                    r = reader.gets()
                    if r is False:
                        break
                    replies.append(r)
    except OSError:
        return None
    if any(isinstance(r, hiredis.ReplyError) for r in replies):
        return None  # LOADING and the like: not serving yet
    dbsize, value, ok = replies[:3]
    return int(dbsize), value, ok == b"OK"


def _counted(mgr: Any, i: int, old_run_id: Any) -> bool:
    """Whether the blocking manager ``mgr`` counts node ``i`` in its quorums
    again, on a new server process (its pooled engines' node state)."""
    from .._backend import core

    now = core.monotonic_ns()
    engines = getattr(mgr, "_engines", None)
    engines = list(engines.values()) if isinstance(engines, dict) else list(getattr(mgr, "_pool", ()))
    for eng in engines:
        try:
            nd = eng.nodes[i]
            rid = nd.run_id.decode() if isinstance(nd.run_id, bytes) else nd.run_id
            if nd.ready and rid != old_run_id and nd.counted_after <= now:
                return True
        except (AttributeError, IndexError):
            return False
    return False


def _preload(client: Any, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"preload:{i}", b"x" * 20, px=600_000)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def run_scenario(
    mode: str,
    *,
    restart_guard: bool = False,
    n: int = 3,
    ttl: float = 3.0,
    preload: int = 0,
    server: Optional[str] = None,
    base_dir: Optional[str] = None,
    poll: float = 0.005,
) -> Dict[str, Any]:
    """Run one kill/restart scenario; return its result row (see module doc)."""
    import redis

    from ..blocking import LockManager
    from ..nodes import LocalCluster

    if n < 3:
        raise ValueError(f"the recovery scenario needs n >= 3 (a bare majority and a free node), got {n}")
    cluster = LocalCluster(n=n, mode=mode, max_ttl=ttl, server=server, base_dir=base_dir)
    managers: List[Any] = []
    log = LogCapture()
    clients: List[Any] = []
    try:
        host = cluster.host
        clients = [redis.Redis(host=host, port=p, socket_timeout=2) for p in cluster.ports]
        if preload:
            _preload(clients[0], preload)
        keys_before = clients[0].dbsize()
        key = f"recovery:{mode}:{int(restart_guard)}"
        a = LockManager(cluster.urls, ttl=ttl, restart_guard=False, retry_count=1)
        managers.append(a)
        lock_a = a.try_acquire(key)
        if lock_a is None:
            raise RuntimeError("client A could not acquire the lock on healthy nodes")
        quorum = n // 2 + 1
        for c in clients[quorum:]:
            c.delete(key)  # A now holds nodes 0 .. quorum-1: a bare majority
        b = LockManager(cluster.urls, ttl=ttl, restart_guard=restart_guard, retry_count=1)
        managers.append(b)
        b.connect()
        node = cluster.nodes[0]
        old_run_id = clients[0].info("server").get("run_id")
        if not cluster.kill(0):
            raise RuntimeError("node 0 was not running")
        t_crash = node.crash_times[-1]
        deadline = t_crash + cluster.restart_delay + ttl * 2 + 5.0
        served_at: Optional[float] = None
        keys_after: Optional[int] = None
        survived: Optional[bool] = None
        b_at: Optional[float] = None
        twice: Optional[bool] = None
        a_validity_then: Optional[float] = None
        counted_at: Optional[float] = None
        i = 0
        while time.monotonic() < deadline and (served_at is None or b_at is None or counted_at is None):
            i += 1
            now = time.monotonic()
            if served_at is None:
                r = _probe(host, node.port, key, f"probe:{i}")
                if r is not None and r[2]:
                    served_at = now
                    keys_after = r[0]
                    survived = r[1] == lock_a.token
            if b_at is None:
                lk = b.try_acquire(key)
                if lk is not None:
                    b_at = time.monotonic()
                    a_validity_then = lock_a.validity
                    twice = lock_a.valid
            if counted_at is None:
                # Keep B's connections busy so that it notices the restart.
                lk2 = b.try_acquire(f"{key}:probe:{i}")
                if lk2 is not None:
                    lk2.release()
                if _counted(b, 0, old_run_id):
                    counted_at = time.monotonic()
            time.sleep(poll)
        hist = [(ev, t) for idx, ev, t in cluster.history if idx == 0 and t >= t_crash]
        restart_t = next((t for ev, t in hist if ev == "restart"), None)
        up_t = next((t for ev, t in hist if ev == "up"), None)

        def rel(t: Optional[float]) -> Optional[float]:
            return None if t is None else round(t - t_crash, 4)

        return {
            "mode": mode,
            "n": n,
            "restart_guard": bool(restart_guard),
            "ttl_s": ttl,
            "restart_delay_s": round(cluster.restart_delay, 4),
            "preload_keys": preload,
            "keys_before": int(keys_before),
            "keys_after": keys_after,
            "lock_survived": survived,
            "restart_after_s": rel(restart_t),
            "up_after_s": rel(up_t),
            "serves_after_s": rel(served_at),
            "counted_again_after_s": rel(counted_at),
            "second_acquired_after_s": rel(b_at),
            "first_validity_left_s": None if a_validity_then is None else round(a_validity_then, 4),
            "granted_twice": bool(twice),
            "client_log": log.messages[:5],
        }
    finally:
        log.close()
        for m in managers:
            try:
                m.close()
            except Exception:
                pass
        for c in clients:
            c.close()
        cluster.stop()
