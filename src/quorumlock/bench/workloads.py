"""Workloads: what one benchmark row runs, and the drivers that time it.

One *cycle* is the same for every library: one non-blocking acquire attempt
on a key (one quorum round for Redlock libraries, one ``SET NX PX`` for the
single-node ones) and, when it succeeded, the release of that lock.  The
acquire latency is timed around the acquire call alone (``perf_counter_ns``);
the client CPU is the whole process's user+sys time (``time.process_time``)
over the measured window, divided by the cycles completed in it.

A workload is a :class:`Workload` registered with :func:`register`; the
runner picks them by ``library/name`` pattern.  A workload that cannot run here
(a peer library that is not installed, ``fencing=True`` before the engine
has it) says why through ``requires`` and becomes a skipped row with that note,
so the list can grow before the feature does.

Drivers:

* :func:`cycle_tasks` -- ``concurrency`` asyncio tasks, each looping cycles on
  its own key (distinct keys per task: no contention);
* :func:`cycle_threads` -- the same with threads and a blocking API;
* the batch and contended workloads have their own loops below.

Each driver runs a warm-up phase (connections, script cache, allocator) that
is not counted, then the measured phase; a cycle counts if it *started* in the
measured phase, and the window ends when the last counted cycle has ended.
"""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import random
import threading
import time
from array import array
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "WORKLOADS",
    "Context",
    "Measurement",
    "Workload",
    "cycle_tasks",
    "cycle_threads",
    "loop_factory",
    "register",
    "run_async",
    "select",
]

_pc = time.perf_counter_ns


# --------------------------------------------------------------------------
# what a run produces
# --------------------------------------------------------------------------


@dataclass
class Measurement:
    """Raw counts of one measured window (the runner derives the rates)."""

    attempts: int = 0  # acquire attempts in the measured window
    acquisitions: int = 0  # of which succeeded
    cycles: int = 0  # acquired locks whose release completed
    releases_ok: int = 0  # releases that reported success (or did not raise)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    warmup_attempts: int = 0  # attempts made before the window (not counted)
    latencies_ns: array = field(default_factory=lambda: array("q"))
    latency_unit: str = "call"  # "call": one acquire; "batch": one acquire_many
    overlaps: int = 0  # contended: a key seen held by two tasks at once
    extra: Dict[str, Any] = field(default_factory=dict)

    def merge_lat(self, parts: Sequence[array]) -> None:
        for p in parts:
            self.latencies_ns.extend(p)


@dataclass
class Context:
    """What a workload gets: the nodes it may use and the timing budget."""

    urls: List[str]  # the nodes this row uses (node 0 only for single-node peers)
    ports: List[int]
    host: str
    mode: str
    n: int  # nodes in the cluster (len(urls) may be 1 for single-node peers)
    ttl: float  # seconds, for every lock taken
    duration: float  # measured seconds
    warmup: float  # seconds before the window
    loop: str  # "uvloop" or "asyncio"
    key_prefix: str  # unique per row
    base_dir: Optional[str] = None  # where a workload's own servers (PostgreSQL) put their files


@dataclass
class Workload:
    """One benchmark row definition."""

    library: str  # "quorumlock", "pottery.Redlock", ...
    name: str  # "async-c64", "blocking-seq", ...
    api: str  # "async" or "blocking"
    run: Callable[[Context], Measurement]
    concurrency: int = 1  # tasks or threads issuing cycles
    batch: int = 1  # keys per acquire call
    single_node: bool = False  # runs on node 0 only (redis-py Lock, python-redis-lock)
    external: bool = False  # uses none of the nodes (PostgreSQL advisory locks: a server of its own)
    quick: bool = False  # part of --quick
    description: str = ""
    requires: Optional[Callable[[], Optional[str]]] = None  # -> reason to skip, or None
    version: Optional[Callable[[], Optional[str]]] = None

    @property
    def id(self) -> str:
        return f"{self.library}/{self.name}"

    def skip_reason(self) -> Optional[str]:
        if self.requires is None:
            return None
        try:
            return self.requires()
        except Exception as exc:  # a broken optional install is a skip, not a crash
            return f"unavailable: {exc!r}"


#: Every registered workload, in table order.
WORKLOADS: List[Workload] = []


def register(w: Workload) -> Workload:
    """Add a workload (replacing one with the same id)."""
    for i, old in enumerate(WORKLOADS):
        if old.id == w.id:
            WORKLOADS[i] = w
            return w
    WORKLOADS.append(w)
    return w


def select(patterns: Optional[Sequence[str]], *, quick: bool, peers: bool) -> List[Workload]:
    """The workloads to run: by ``library/name`` glob patterns if given (a bare
    name without ``/`` matches any library), else the quick or full default."""
    out = []
    for w in WORKLOADS:
        if patterns:
            ok = any(
                fnmatch.fnmatchcase(w.id, p) if "/" in p else fnmatch.fnmatchcase(w.name, p)
                for p in patterns
            )
        else:
            ok = w.quick if quick else True
        if ok and (peers or w.library == "quorumlock" or (patterns and any(p == w.id for p in patterns))):
            out.append(w)
    return out


# --------------------------------------------------------------------------
# drivers
# --------------------------------------------------------------------------


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name == "asyncio":
        return asyncio.new_event_loop
    raise ValueError(f"loop must be 'uvloop' or 'asyncio', got {name!r}")


def run_async(ctx: Context, body: Callable[[Context], Awaitable[Measurement]]) -> Measurement:
    """Run ``body(ctx)`` on a fresh event loop of ``ctx.loop``'s kind."""
    loop = loop_factory(ctx.loop)()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(body(ctx))
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


Pair = Tuple[Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[Any]]]


async def cycle_tasks(ctx: Context, pairs: Sequence[Pair],
                      finish: Optional[Callable[[], Awaitable[Any]]] = None) -> Measurement:  # fmt: skip
    """One asyncio task per ``(acquire, release)`` pair, each looping cycles.

    ``acquire()`` returns an awaitable of a truthy handle (acquired) or a falsy
    value; ``release(handle)`` an awaitable whose falsy result (other than
    None) counts as a failed release.  ``finish()`` is awaited inside the
    window, after the last cycle (the drain)."""
    state = [0]  # 0 warm-up, 1 measured, 2 stop
    parts: List[Tuple[int, int, int, int, int, array]] = []

    async def one(acq: Callable[[], Awaitable[Any]], rel: Callable[[Any], Awaitable[Any]]) -> None:
        warm = 0
        while state[0] == 0:
            h = await acq()
            warm += 1
            if h:
                await rel(h)
        pc = _pc
        lat = array("q")
        add = lat.append
        att = got = cyc = ok = 0
        while state[0] == 1:
            t = pc()
            h = await acq()
            add(pc() - t)
            att += 1
            if h:
                got += 1
                r = await rel(h)
                cyc += 1
                if r is None or r:
                    ok += 1
        parts.append((warm, att, got, cyc, ok, lat))

    tasks = [asyncio.ensure_future(one(a, r)) for a, r in pairs]
    try:
        await asyncio.sleep(ctx.warmup)
        state[0] = 1
        t0 = time.perf_counter()
        c0 = time.process_time()
        await asyncio.sleep(ctx.duration)
        state[0] = 2
        await asyncio.gather(*tasks)
        drained = await finish() if finish is not None else None
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
    except BaseException:
        state[0] = 2
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    m = Measurement(wall_s=wall, cpu_s=cpu)
    if drained is not None:
        m.extra["drain_s"] = round(drained, 4)
    for warm, att, got, cyc, ok, lat in parts:
        m.warmup_attempts += warm
        m.attempts += att
        m.acquisitions += got
        m.cycles += cyc
        m.releases_ok += ok
        m.latencies_ns.extend(lat)
    return m


SyncPair = Tuple[Callable[[], Any], Callable[[Any], Any]]


def cycle_threads(ctx: Context, pairs: Sequence[SyncPair], finish: Optional[Callable[[], Any]] = None) -> Measurement:
    """One thread per ``(acquire, release)`` pair (blocking calls), each looping
    cycles; even a single pair runs in a worker thread, for uniformity.
    ``finish()`` runs in each thread after its last cycle, inside the window."""
    state = [0]
    parts: List[Tuple[int, int, int, int, int, array]] = []
    errors: List[BaseException] = []

    def one(acq: Callable[[], Any], rel: Callable[[Any], Any]) -> None:
        try:
            warm = 0
            while state[0] == 0:
                h = acq()
                warm += 1
                if h:
                    rel(h)
            pc = _pc
            lat = array("q")
            add = lat.append
            att = got = cyc = ok = 0
            while state[0] == 1:
                t = pc()
                h = acq()
                add(pc() - t)
                att += 1
                if h:
                    got += 1
                    r = rel(h)
                    cyc += 1
                    if r is None or r:
                        ok += 1
            if finish is not None:
                finish()
            parts.append((warm, att, got, cyc, ok, lat))
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)
            state[0] = 2

    threads = [threading.Thread(target=one, args=p, daemon=True, name=f"bench-{i}") for i, p in enumerate(pairs)]
    for t in threads:
        t.start()
    time.sleep(ctx.warmup)
    if state[0] == 0:
        state[0] = 1
    t0 = time.perf_counter()
    c0 = time.process_time()
    deadline = t0 + ctx.duration
    while state[0] == 1 and time.perf_counter() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.perf_counter())))
    state[0] = 2
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if errors:
        raise errors[0]
    m = Measurement(wall_s=wall, cpu_s=cpu)
    for warm, att, got, cyc, ok, lat in parts:
        m.warmup_attempts += warm
        m.attempts += att
        m.acquisitions += got
        m.cycles += cyc
        m.releases_ok += ok
        m.latencies_ns.extend(lat)
    return m


# --------------------------------------------------------------------------
# draining: the measured window ends when every node has caught up
# --------------------------------------------------------------------------
#
# quorumlock returns as soon as a majority has answered, so a node that is
# slower than the others (on 2 cores, one of three nodes always gets less
# CPU) accumulates a backlog that the client never waits for.  Without a
# drain the window would end with that work still queued: throughput would be
# overstated, and closing the connections on top of the backlog loses its
# releases (keys left behind).  A PING on each connection is answered after
# everything queued before it, so awaiting it drains the node.

_DRAIN_TIMEOUT = 30.0


async def drain_async(lm: Any) -> Optional[float]:
    """Wait until every node of an asyncio manager answered all it was sent;
    seconds waited, or None when the engine offers no way to ask."""
    eng = getattr(lm, "engine", None)
    if eng is None or not hasattr(eng, "call"):
        return None
    t0 = time.perf_counter()
    futs = []
    for i, nd in enumerate(eng.nodes):
        if getattr(nd, "ready", False):
            futs.append(eng.call(i, (b"PING",), _DRAIN_TIMEOUT))
    await asyncio.gather(*futs, return_exceptions=True)
    return time.perf_counter() - t0


def drain_blocking(lm: Any) -> None:
    """The same for the calling thread's connections of a blocking manager."""
    checkout = getattr(lm, "checkout", None)
    if checkout is None:
        return
    eng = checkout()
    try:
        for i, nd in enumerate(eng.nodes):
            if getattr(nd, "ready", False) and hasattr(eng, "call_sync"):
                try:
                    eng.call_sync(i, (b"PING",), _DRAIN_TIMEOUT)
                except (TimeoutError, ConnectionError, OSError):
                    pass
    finally:
        checkin = getattr(lm, "_checkin", None)
        if checkin is not None:
            checkin(eng)


# --------------------------------------------------------------------------
# quorumlock workloads
# --------------------------------------------------------------------------


def _aio_manager(ctx: Context, **kw: Any) -> Any:
    from ..aio import LockManager

    return LockManager(ctx.urls, ttl=ctx.ttl, **kw)


def _release_aio(lock: Any) -> Awaitable[bool]:
    return lock.release()


def _percall(concurrency: int, **manager_kw: Any) -> Callable[[Context], Measurement]:
    async def body(ctx: Context) -> Measurement:
        async with _aio_manager(ctx, **manager_kw) as lm:
            from .._backend import core

            # The unbound C method: no lambda between the driver and the engine.
            rel = core.Lock.release
            pairs = [(partial(lm.try_acquire, f"{ctx.key_prefix}:{i}"), rel) for i in range(concurrency)]
            m = await cycle_tasks(ctx, pairs, partial(drain_async, lm))
            # Which release command each node took (native DELIFEQ/DELEX or the script).
            m.extra["release_path"] = [nd.get("release") for nd in lm.metrics()["nodes"]]
            if manager_kw.get("fencing"):
                lk = await lm.try_acquire(f"{ctx.key_prefix}:fence-probe")
                m.extra["fence_type"] = type(getattr(lk, "fence", None)).__name__
                if lk:
                    await lk.release()
            return m

    return lambda ctx: run_async(ctx, body)


def _batch(size: int, batches_in_flight: int) -> Callable[[Context], Measurement]:
    async def body(ctx: Context) -> Measurement:
        async with _aio_manager(ctx) as lm:
            state = [0]
            parts: List[Tuple[int, int, int, int, int, array]] = []

            async def one(k: int) -> None:
                keys = [f"{ctx.key_prefix}:{k}:{j}" for j in range(size)]
                acquire_many, release_many = lm.acquire_many, lm.release_many
                warm = 0
                while state[0] == 0:
                    locks = await acquire_many(keys)
                    warm += len(locks)
                    await release_many([lk for lk in locks if lk is not None])
                pc = _pc
                lat = array("q")
                att = got = cyc = ok = 0
                while state[0] == 1:
                    t = pc()
                    locks = await acquire_many(keys)
                    lat.append(pc() - t)
                    held = [lk for lk in locks if lk is not None]
                    att += len(locks)
                    got += len(held)
                    res = await release_many(held)
                    cyc += len(held)
                    ok += sum(1 for r in res if r)
                parts.append((warm, att, got, cyc, ok, lat))

            tasks = [asyncio.ensure_future(one(k)) for k in range(batches_in_flight)]
            await asyncio.sleep(ctx.warmup)
            state[0] = 1
            t0 = time.perf_counter()
            c0 = time.process_time()
            await asyncio.sleep(ctx.duration)
            state[0] = 2
            await asyncio.gather(*tasks)
            drained = await drain_async(lm)
            m = Measurement(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, latency_unit="batch")
            if drained is not None:
                m.extra["drain_s"] = round(drained, 4)
            for warm, att, got, cyc, ok, lat in parts:
                m.warmup_attempts += warm
                m.attempts += att
                m.acquisitions += got
                m.cycles += cyc
                m.releases_ok += ok
                m.latencies_ns.extend(lat)
            return m

    return lambda ctx: run_async(ctx, body)


def _blocking(threads: int, **manager_kw: Any) -> Callable[[Context], Measurement]:
    def run(ctx: Context) -> Measurement:
        from ..blocking import LockManager

        with LockManager(ctx.urls, ttl=ctx.ttl, **manager_kw) as lm:
            from .._backend import core

            rel = core.Lock.release
            pairs = [(partial(lm.try_acquire, f"{ctx.key_prefix}:{i}"), rel) for i in range(threads)]
            return cycle_threads(ctx, pairs, partial(drain_blocking, lm))

    return run


def _contended(clients: int, tasks_per_client: int, keys: int, backoff: float) -> Callable[[Context], Measurement]:
    """``clients`` managers (separate connections) x ``tasks_per_client`` tasks
    competing for ``keys`` keys; a success is released at once.  Every success
    also checks, in process, that no other task holds the key (``overlaps``).

    After a failed attempt a task sleeps ``uniform(0, backoff)`` seconds (the
    jittered retry of the Redlock specification); ``backoff=0`` retries at
    once, which at N >= 3 mostly ends in split votes (every node granted the
    key to a different contender, nobody has a majority)."""

    async def body(ctx: Context) -> Measurement:
        mgrs = [_aio_manager(ctx, retry_count=1) for _ in range(clients)]
        for m_ in mgrs:
            await m_.connect()
        try:
            holder: Dict[int, Optional[int]] = {k: None for k in range(keys)}
            overlaps = [0]
            state = [0]
            parts: List[Tuple[int, int, int, int, int, array]] = []

            async def one(tid: int, lm: Any) -> None:
                k = tid % keys
                key = f"{ctx.key_prefix}:{k}"
                ta = lm.try_acquire
                sleep, uniform = asyncio.sleep, random.uniform
                warm = 0
                while state[0] == 0:
                    lk = await ta(key)
                    warm += 1
                    if lk is not None:
                        await lk.release()
                    elif backoff:
                        await sleep(uniform(0.0, backoff))
                pc = _pc
                lat = array("q")
                att = got = cyc = ok = 0
                while state[0] == 1:
                    t = pc()
                    lk = await ta(key)
                    lat.append(pc() - t)
                    att += 1
                    if lk is None:
                        if backoff:
                            await sleep(uniform(0.0, backoff))
                    else:
                        got += 1
                        if holder[k] is not None:
                            overlaps[0] += 1
                        holder[k] = tid
                        # the protected work would be here; stop using it first,
                        # then release
                        holder[k] = None
                        if await lk.release():
                            ok += 1
                        cyc += 1
                parts.append((warm, att, got, cyc, ok, lat))

            tasks = [
                asyncio.ensure_future(one(c * tasks_per_client + t, mgrs[c]))
                for c in range(clients)
                for t in range(tasks_per_client)
            ]
            await asyncio.sleep(ctx.warmup)
            state[0] = 1
            t0 = time.perf_counter()
            c0 = time.process_time()
            await asyncio.sleep(ctx.duration)
            state[0] = 2
            await asyncio.gather(*tasks)
            drained = [await drain_async(m_) for m_ in mgrs]
            m = Measurement(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
            if drained and drained[0] is not None:
                m.extra["drain_s"] = round(sum(d or 0.0 for d in drained), 4)
            for warm, att, got, cyc, ok, lat in parts:
                m.warmup_attempts += warm
                m.attempts += att
                m.acquisitions += got
                m.cycles += cyc
                m.releases_ok += ok
                m.latencies_ns.extend(lat)
            m.overlaps = overlaps[0]
            m.extra.update(clients=clients, tasks=clients * tasks_per_client, keys=keys, backoff_s=backoff)
            return m
        finally:
            for m_ in mgrs:
                await m_.close()

    return lambda ctx: run_async(ctx, body)


def _needs_fencing() -> Optional[str]:
    from ..aio import LockManager

    if "fencing" not in inspect.signature(LockManager.__init__).parameters:
        return "LockManager does not accept fencing= yet (docs/fencing.md): skipped"
    return None


def _ql_version() -> Optional[str]:
    from .. import __version__
    from .._backend import IMPLEMENTATION

    return f"{__version__} ({IMPLEMENTATION})"


def _ql(name: str, api: str, run: Callable[[Context], Measurement], **kw: Any) -> Workload:
    return register(Workload(library="quorumlock", name=name, api=api, run=run, version=_ql_version, **kw))


_ql("async-c1", "async", _percall(1), concurrency=1,
    description="asyncio try_acquire + release, 1 task")  # fmt: skip
_ql("async-c64", "async", _percall(64), concurrency=64, quick=True,
    description="asyncio try_acquire + release, 64 tasks, one key each")  # fmt: skip
_ql("async-c1024", "async", _percall(1024), concurrency=1024, quick=True,
    description="asyncio try_acquire + release, 1024 tasks, one key each")  # fmt: skip
_ql("async-c1024-native-off", "async", _percall(1024, native_commands=False), concurrency=1024, quick=True,
    description="as async-c1024 with native_commands=False: the release script on every node")  # fmt: skip
_ql("async-batch1000", "async", _batch(1000, 1), concurrency=1, batch=1000, quick=True,
    description="acquire_many + release_many of 1,000 keys, one batch in flight")  # fmt: skip
_ql("async-batch1000-x4", "async", _batch(1000, 4), concurrency=4, batch=1000,
    description="acquire_many + release_many of 1,000 keys, 4 batches in flight")  # fmt: skip
_ql("blocking-seq", "blocking", _blocking(1), concurrency=1, quick=True,
    description="blocking try_acquire + release, one thread")  # fmt: skip
_ql("blocking-seq-native-off", "blocking", _blocking(1, native_commands=False), concurrency=1,
    description="as blocking-seq with native_commands=False")  # fmt: skip
_ql("blocking-t8", "blocking", _blocking(8), concurrency=8, quick=True,
    description="blocking try_acquire + release, 8 threads sharing one manager")  # fmt: skip
_ql("contended", "async", _contended(4, 64, 4, 0.002), concurrency=256, quick=True,
    description="4 managers x 64 tasks on 4 keys, jittered retry 0-2 ms: successes and failures")  # fmt: skip
_ql("contended-spin", "async", _contended(4, 64, 4, 0.0), concurrency=256,
    description="as contended, retrying at once (no backoff): split votes at N >= 3")  # fmt: skip
_ql("async-fencing-c64", "async", _percall(64, fencing=True), concurrency=64, quick=True,
    requires=_needs_fencing,
    description="as async-c64 with fencing=True (second round trip)")  # fmt: skip


def _semaphore(concurrency: int, permits: int) -> Callable[[Context], Measurement]:
    """``concurrency`` tasks, each cycling on its own semaphore of ``permits``
    (one pipelined round over every permit key per attempt; the extras'
    release queued behind it)."""

    async def body(ctx: Context) -> Measurement:
        async with _aio_manager(ctx) as lm:
            sems = [lm.semaphore(f"{ctx.key_prefix}:{i}", permits) for i in range(concurrency)]
            pairs = [(s.try_acquire, _release_aio) for s in sems]
            return await cycle_tasks(ctx, pairs, partial(drain_async, lm))

    return lambda ctx: run_async(ctx, body)


_ql("async-semaphore-k4-c64", "async", _semaphore(64, 4), concurrency=64,
    description="semaphore(permits=4).try_acquire + release, 64 tasks, one semaphore each")  # fmt: skip
