"""Chaos scenarios for semaphores and read-write locks.

Holders run as threads of this process (``contend``), each recording what it
believed on the host monotonic clock in the history schema of docs/safety.md
(one ``acquire`` op per holding, ``key`` = the permit key, plus ``sem`` and,
for rwlocks, ``mode``), so that :func:`quorumlock.chaos.checker.check` checks
every permit key as a mutex and :func:`~quorumlock.chaos.checker.check_capacity`
/ :func:`~quorumlock.chaos.checker.check_rw` count holders.

``NaiveSemaphore`` is the **negative control**: it counts holders per node
(each node admits up to ``k`` tokens; a holder needs a majority).  It is here
to show the pigeonhole failure (docs/semaphores.md) and must never be used
for anything else.

The scenarios are registered in ``quorumlock.chaos.scenarios.FAULTS`` (kind
``config``: they run their own clients and return the label) when this
module is imported; ``quorumlock.chaos.matrix`` has their rows.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import redis

from ..errors import LockTimeout, QuorumLockError
from . import checker
from .clock import host_monotonic_ns as now
from .proxy import FaultProxy, ProxyHub

__all__ = ["Recorder", "NaiveSemaphore", "contend", "pigeonhole", "faulted_run", "register"]

S = 1_000_000_000


class Recorder:
    """Thread-safe history of holdings (the ops of docs/safety.md)."""

    def __init__(self) -> None:
        self.events: List[Dict[str, Any]] = []
        self._mu = threading.Lock()
        self._ids = itertools.count(1)

    def _add(self, ev: Dict[str, Any]) -> None:
        with self._mu:
            self.events.append(ev)

    def acquired(self, client: str, sem: Any, key: Any, invoke: int, complete: int, deadline_ns: int,
                 mode: Optional[str] = None, fence: Optional[int] = None, token: Any = None) -> str:
        lid = f"{client}-{next(self._ids)}"
        ev = {"type": "op", "op": "acquire", "id": lid, "client": client, "key": _s(key), "sem": _s(sem),
              "invoke": invoke, "complete": complete, "ok": True, "valid_until": int(deadline_ns),
              "fence": fence}
        if mode is not None:
            ev["mode"] = mode
        if token is not None:
            ev["token"] = token.hex() if isinstance(token, bytes) else str(token)
        self._add(ev)
        return lid

    def checked(self, client: str, lid: str, invoke: int) -> None:
        self._add({"type": "op", "op": "check", "client": client, "lock": lid, "invoke": invoke,
                   "complete": invoke, "ok": True})

    def released(self, client: str, lid: str, invoke: int, complete: int, ok: bool) -> None:
        self._add({"type": "op", "op": "release", "client": client, "lock": lid, "invoke": invoke,
                   "complete": complete, "ok": bool(ok)})

    def fault(self, name: str, target: str = "") -> None:
        self._add({"type": "fault", "t": now(), "name": name, "target": target})


def _s(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


# --------------------------------------------------------------------------
# the negative control
# --------------------------------------------------------------------------

_NAIVE_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


class NaiveHold:
    __slots__ = ("sem", "token", "deadline_ns", "key", "fence")

    def __init__(self, sem: "NaiveSemaphore", token: str, deadline_ns: int) -> None:
        self.sem = sem
        self.token = token
        self.deadline_ns = deadline_ns
        self.key = f"{sem.name}:naive:{token}"   # one key per holding: the mutex check does not apply
        self.fence = None

    @property
    def valid(self) -> bool:
        return now() < self.deadline_ns

    def release(self) -> bool:
        return self.sem.release(self)


class NaiveSemaphore:
    """NEGATIVE CONTROL, deliberately wrong: every node counts its holders
    (a sorted set of tokens, at most ``permits``), and a holder needs a
    majority of nodes to admit it.  With N=3 and permits=2, three clients
    that each reach a different pair of nodes all get in."""

    def __init__(self, ports: Sequence[int], name: str, permits: int, ttl: float = 2.0,
                 timeout: float = 0.3) -> None:
        self.name = name
        self.permits = permits
        self.ttl_ms = int(ttl * 1000)
        self.key = f"{name}:naive"
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.clients = [redis.Redis(port=p, socket_timeout=timeout, socket_connect_timeout=timeout,
                                    retry=Retry(NoBackoff(), 0))
                        for p in ports]
        for c in self.clients:   # connect now: a blackhole set later must not hit the handshake
            try:
                c.ping()
            except redis.RedisError:
                pass
        self.quorum = len(self.clients) // 2 + 1

    def try_acquire(self) -> Optional[NaiveHold]:
        token = os.urandom(10).hex()
        t0 = now()
        votes = 0
        for c in self.clients:
            try:
                votes += int(c.eval(_NAIVE_ACQUIRE, 1, self.key, token, self.ttl_ms, self.permits))
            except redis.RedisError:
                pass
        deadline = t0 + int(self.ttl_ms * 1e6 * 0.99) - 2_000_000
        if votes >= self.quorum and now() < deadline:
            return NaiveHold(self, token, deadline)
        self._rem(token)
        return None

    def _rem(self, token: str) -> None:
        for c in self.clients:
            try:
                c.zrem(self.key, token)
            except redis.RedisError:
                pass

    def release(self, hold: NaiveHold) -> bool:
        self._rem(hold.token)
        return True

    def close(self) -> None:
        for c in self.clients:
            c.close()


# --------------------------------------------------------------------------
# running holders
# --------------------------------------------------------------------------

Acquire = Callable[[], Any]   # -> a holding (key, deadline_ns, fence, token?, release()), or None


def hold_once(rec: Recorder, client: str, sem: Any, acquire: Acquire, hold: float, mode: Optional[str] = None,
              pause: float = 0.0) -> bool:
    """One holding: acquire, record, hold (``pause``: then stall, as a
    paused client would), act only if the lease is still valid, release."""
    t0 = now()
    try:
        h = acquire()
    except (LockTimeout, QuorumLockError, redis.RedisError, ConnectionError, TimeoutError):
        return False
    if h is None:
        return False
    t1 = now()
    lid = rec.acquired(client, sem, h.key, t0, t1, h.deadline_ns, mode=mode, fence=h.fence,
                       token=getattr(h, "token", None))
    time.sleep(hold)
    if pause:
        time.sleep(pause)
    tc = now()
    if tc < h.deadline_ns:
        rec.checked(client, lid, tc)
    tr = now()
    try:
        ok = h.release()
    except Exception:
        ok = False
    rec.released(client, lid, tr, now(), bool(ok))
    return True


def contend(rec: Recorder, clients: int, sem: Any, acquire_for: Callable[[int], Acquire], duration: float,
            hold: Tuple[float, float] = (0.02, 0.08), mode_for: Optional[Callable[[int], Optional[str]]] = None,
            seed: int = 0, pause_p: float = 0.0, pause: float = 0.0,
            idle: Tuple[float, float] = (0.0, 0.01)) -> Dict[str, int]:
    """``clients`` threads that each, until ``duration`` passes, acquire
    (``acquire_for(i)()``), hold for a random time in ``hold``, release.
    ``pause_p``: the chance that a holding stalls ``pause`` more seconds
    (a client pause).  Returns per-outcome counts."""
    stop_at = time.monotonic() + duration
    counts = {"held": 0, "failed": 0, "errors": 0}
    mu = threading.Lock()

    def run(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        acq = acquire_for(i)
        name = f"c{i}"
        mode = mode_for(i) if mode_for is not None else None
        while time.monotonic() < stop_at:
            p = pause if pause_p and rng.random() < pause_p else 0.0
            try:
                ok = hold_once(rec, name, sem, acq, rng.uniform(*hold), mode=mode, pause=p)
            except Exception:
                with mu:
                    counts["errors"] += 1
                time.sleep(0.05)
                continue
            with mu:
                counts["held" if ok else "failed"] += 1
            time.sleep(rng.uniform(*idle))

    threads = [threading.Thread(target=run, args=(i,), name=f"sem-holder-{i}", daemon=True)
               for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 60)
    return counts


def permit_acquirer(sem: Any, timeout: float = 0.5) -> Acquire:
    """``sem.acquire(timeout=...)`` of a blocking ``Semaphore``."""
    return lambda: sem.acquire(timeout=timeout)


# --------------------------------------------------------------------------
# the pigeonhole schedule
# --------------------------------------------------------------------------


def pigeonhole(ports: Sequence[int], impl: str, permits: int = 2, ttl: float = 3.0, hold: float = 1.0,
               hub: Optional[ProxyHub] = None, core: Any = None) -> Tuple[Recorder, Dict[str, Any]]:
    """N=3 nodes, three clients, each behind its own proxies, each with a
    *different* node blackholed (client i cannot reach node i): client 0
    reaches {n1, n2}, client 1 {n0, n2}, client 2 {n0, n1}.  They acquire one
    after the other and hold for ``hold`` seconds.  ``impl``: ``"naive"``
    (the per-node counting negative control) or ``"quorumlock"`` (the shipped
    semaphore).  Returns the history and ``check_capacity``'s verdict."""
    from ..blocking import LockManager

    if len(ports) != 3:
        raise ValueError("the pigeonhole schedule needs exactly 3 nodes")
    own_hub = hub is None
    hub = hub or ProxyHub()
    rec = Recorder()
    proxies: List[List[FaultProxy]] = []
    closers: List[Callable[[], Any]] = []
    name = f"pigeon-{impl}-{os.getpid()}-{random.randrange(1 << 30)}"
    try:
        acquirers = []
        for c in range(3):
            ps = [FaultProxy("127.0.0.1", p, hub=hub) for p in ports]
            proxies.append(ps)
            if impl == "naive":
                ns = NaiveSemaphore([p.port for p in ps], name, permits, ttl)
                closers.append(ns.close)
                acquirers.append(ns.try_acquire)
            elif impl == "quorumlock":
                kw = {"_core": core} if core is not None else {}
                mgr = LockManager([p.url for p in ps], ttl=ttl, node_timeout=0.2, retry_delay=(0.05, 0.1), **kw)
                mgr.connect()
                closers.append(mgr.close)
                acquirers.append(mgr.semaphore(name, permits=permits).try_acquire)
            else:
                raise ValueError(f"impl must be 'naive' or 'quorumlock', got {impl!r}")
        for c in range(3):
            proxies[c][c].set_mode("blackhole")
            rec.fault("blackhole", f"client c{c} -> node {c}")
        results: List[bool] = []
        threads = []
        for c in range(3):
            t = threading.Thread(target=lambda c=c: results.append(
                hold_once(rec, f"c{c}", name, acquirers[c], hold + (2 - c) * 0.3)), daemon=True)
            t.start()
            threads.append(t)
            time.sleep(0.3)   # one after the other: each finds the earlier ones holding
        for t in threads:
            t.join(ttl + 10)
    finally:
        for fn in closers:
            try:
                fn()
            except Exception:
                pass
        for ps in proxies:
            for p in ps:
                p.close()
        if own_hub:
            hub.close()
    return rec, checker.check_capacity(rec.events, permits)


# --------------------------------------------------------------------------
# faulted contention runs (node kills, node pauses, client pauses)
# --------------------------------------------------------------------------


def _injector(cluster: Any, fault: str, stop: threading.Event, rng: random.Random, rec: Recorder,
              every: Tuple[float, float], env: Any = None) -> None:
    n = cluster.n
    while not stop.wait(rng.uniform(*every)):
        i = rng.randrange(n)
        if fault == "crash":
            rec.fault("node-crash", f"node {i}")
            if env is not None:
                env.crash(i)
            else:
                cluster.kill(i)   # the supervisor restarts it after the mode's delay
        elif fault == "node-pause":
            rec.fault("node-pause", f"node {i}")
            cluster.pause(i)
            if stop.wait(rng.uniform(0.2, 1.0)):
                cluster.resume(i)
                return
            cluster.resume(i)
            rec.fault("node-resume", f"node {i}")


def faulted_run(cluster: Any, *, kind: str = "semaphore", permits: int = 2, clients: int = 32,
                duration: float = 4.0, ttl: float = 1.0, fault: str = "crash", seed: int = 0,
                managers: int = 4, core: Any = None, writers: int = 4, env: Any = None,
                notify: bool = False) -> Tuple[Recorder, Dict[str, Any], Dict[str, int]]:
    """``clients`` threads (sharing ``managers`` blocking managers) contend
    for a semaphore of ``permits`` (``kind="semaphore"``) or an rwlock of
    ``permits`` reader slots with ``writers`` of the clients writing
    (``kind="rwlock"``), while ``fault`` (``none``, ``crash``, ``node-pause``,
    ``client-pause``) hits at random.  Returns the history, the verdict
    (``check_capacity`` or ``check_rw`` plus the mutex check of every key) and
    the per-outcome counts."""
    from ..blocking import LockManager

    rng = random.Random(seed)
    rec = Recorder()
    kw = {"_core": core} if core is not None else {}
    mgrs = [LockManager(cluster.urls, ttl=ttl, node_timeout=0.1, retry_delay=(0.01, 0.05), notify=notify, **kw)
            for _ in range(managers)]
    name = f"{kind}-{fault}-{seed}-{os.getpid()}"
    try:
        for m in mgrs:
            m.connect()
        if kind == "semaphore":
            sems = [m.semaphore(name, permits=permits) for m in mgrs]

            def acquire_for(i: int) -> Acquire:
                return permit_acquirer(sems[i % managers], timeout=0.5)

            mode_for = None
        elif kind == "rwlock":
            rws = [m.rwlock(name, max_readers=permits) for m in mgrs]

            def acquire_for(i: int) -> Acquire:
                rw = rws[i % managers]
                if i < writers:
                    return lambda: rw.acquire_write(timeout=1.0)
                return lambda: rw.acquire_read(timeout=0.5)

            def mode_for(i: int) -> Optional[str]:
                return "write" if i < writers else "read"
        else:
            raise ValueError(f"kind must be 'semaphore' or 'rwlock', got {kind!r}")
        stop = threading.Event()
        inj = None
        if fault in ("crash", "node-pause"):
            inj = threading.Thread(target=_injector, args=(cluster, fault, stop, rng, rec, (0.8, 1.6), env),
                                   daemon=True)
            inj.start()
        elif fault not in ("none", "client-pause"):
            raise ValueError(f"unknown fault {fault!r}")
        pause_p, pause = (0.15, ttl * 1.3) if fault == "client-pause" else (0.0, 0.0)
        counts = contend(rec, clients, name, acquire_for, duration, mode_for=mode_for, seed=seed,
                         pause_p=pause_p, pause=pause)
        stop.set()
        if inj is not None:
            inj.join(10)
        for i, nd in enumerate(cluster.nodes):
            if getattr(nd, "paused", False):
                cluster.resume(i)
    finally:
        for m in mgrs:
            m.close()
    verdict = verdict_of(rec.events, kind, permits)
    return rec, verdict, counts


def process_main(urls: List[str], name: str, permits: int, clients: int, duration: float, seed: int,
                 out_path: str, ttl: float = 1.0) -> None:
    """One holder *process* (``multiprocessing`` target): ``clients`` threads
    on one blocking manager contend for the semaphore ``name``; the history
    (host-monotonic, comparable across processes) is written to ``out_path``
    as JSON lines."""
    import json

    from ..blocking import LockManager

    rec = Recorder()
    with LockManager(urls, ttl=ttl, node_timeout=0.1, retry_delay=(0.01, 0.05)) as mgr:
        sem = mgr.semaphore(name, permits=permits)
        contend(rec, clients, name, lambda i: permit_acquirer(sem, timeout=0.5), duration, seed=seed)
    with open(out_path, "w", encoding="utf-8") as f:
        for ev in rec.events:
            ev = dict(ev, client=f"p{seed}-{ev.get('client')}")
            if "id" in ev:
                ev["id"] = f"p{seed}-{ev['id']}"
            if "lock" in ev:
                ev["lock"] = f"p{seed}-{ev['lock']}"
            f.write(json.dumps(ev) + "\n")


def verdict_of(events: List[Dict[str, Any]], kind: str, permits: int) -> Dict[str, Any]:
    """The capacity (or reader/writer) verdict plus the mutex check of every key."""
    report = checker.check(events)
    if kind == "semaphore":
        v = checker.check_capacity(events, permits)
    else:
        v = checker.check_rw(events, max_readers=permits)
    v["key_overlaps"] = len(report.overlaps)
    v["ok"] = v["ok"] and not report.overlaps
    v["holdings"] = sum(1 for e in events if e.get("op") == "acquire")
    return v


# --------------------------------------------------------------------------
# the scenarios of the fault matrix (kind "config": they run their own clients)
# --------------------------------------------------------------------------


def _label(v: Dict[str, Any]) -> str:
    return "SAFE" if v["ok"] else "VIOL"


def _record(env: Any, rec: Recorder, v: Dict[str, Any]) -> None:
    # The holdings go into the run's history (env.finish merges these events).
    env.faults.extend(rec.events)
    env.extra_checks.update({k: v[k] for k in ("ok", "peak", "reader_peak", "key_overlaps", "holdings") if k in v})


def c_pigeonhole(impl: str) -> Callable[..., str]:
    def run(env: Any, sc: Any, guard: bool) -> str:
        rec, v = pigeonhole(env.cluster.ports, impl, permits=2, ttl=max(sc.ttl, 2.0), hold=1.0, hub=env.hub)
        v = dict(v, key_overlaps=0 if impl == "naive" else len(checker.check(rec.events).overlaps))
        v["ok"] = v["ok"] and not v["key_overlaps"]
        _record(env, rec, v)
        return _label(v)

    run.__name__ = f"c_pigeonhole_{impl}"
    return run


def c_faulted(kind: str, fault: str) -> Callable[..., str]:
    def run(env: Any, sc: Any, guard: bool) -> str:
        rec, v, counts = faulted_run(env.cluster, kind=kind, permits=2 if kind == "semaphore" else 3,
                                     clients=min(sc.clients, 16), duration=sc.duration, ttl=sc.ttl,
                                     fault=fault, seed=sc.seed, env=env)
        env.extra_checks["counts"] = counts
        _record(env, rec, v)
        return _label(v)

    run.__name__ = f"c_{kind}_{fault}"
    return run


def register() -> None:
    """Add the scenarios to ``quorumlock.chaos.scenarios.FAULTS`` (idempotent)."""
    from .scenarios import FAULTS, FaultSpec

    specs = {
        "sem-pigeonhole-naive": FaultSpec("config", c_pigeonhole("naive"),
                                          "negative control: per-node counting semaphore, N=3, k=2, each "
                                          "client blackholed from a different node: three holders"),
        "sem-pigeonhole": FaultSpec("config", c_pigeonhole("quorumlock"),
                                    "the same schedule, quorum semaphore: at most k=2 holders"),
        "sem-crash": FaultSpec("config", c_faulted("semaphore", "crash"),
                               "semaphore k=2 under random node crashes"),
        "sem-node-pause": FaultSpec("config", c_faulted("semaphore", "node-pause"),
                                    "semaphore k=2 under node SIGSTOPs"),
        "sem-client-pause": FaultSpec("config", c_faulted("semaphore", "client-pause"),
                                      "semaphore k=2, holders stalling past their lease"),
        "rw-crash": FaultSpec("config", c_faulted("rwlock", "crash"),
                              "rwlock (3 readers) under random node crashes"),
        "rw-node-pause": FaultSpec("config", c_faulted("rwlock", "node-pause"), "rwlock under node SIGSTOPs"),
        "rw-client-pause": FaultSpec("config", c_faulted("rwlock", "client-pause"),
                                     "rwlock, holders stalling past their lease"),
    }
    for k, v in specs.items():
        FAULTS.setdefault(k, v)


register()
