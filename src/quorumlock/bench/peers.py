"""The peer libraries, run on the same nodes, in the same process, one after
another, with the cycle of :mod:`quorumlock.bench.workloads` (one non-blocking
acquire attempt + release).

=====================  =========  ==========================================
library                API        nodes
=====================  =========  ==========================================
pottery ``Redlock``    blocking   all N (Redlock; fans out with a thread pool)
pottery ``AIORedlock`` asyncio    all N (Redlock)
aioredlock             asyncio    all N (Redlock; needs aioredis 1.x)
redis-py ``Lock``      blocking   node 0 only (single-node lock)
redis-py asyncio Lock  asyncio    node 0 only
python-redis-lock      blocking   node 0 only
=====================  =========  ==========================================

The single-node locks run on node 0 of every cluster (not only at N=1): the
blocking-latency target compares quorumlock at N=3 with redis-py's ``Lock`` on
the same nodes in the same run.  A library that is not installed (extra
``bench``: ``pip install 'quorumlock[bench]'``) becomes a skipped row.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import warnings
from typing import Any, Callable, List, Optional

from .workloads import (
    Context,
    Measurement,
    Workload,
    cycle_tasks,
    cycle_threads,
    register,
    run_async,
)

__all__ = ["PEERS"]


def _installed(module: str, dist: str) -> Callable[[], Optional[str]]:
    def check() -> Optional[str]:
        if importlib.util.find_spec(module) is None:
            return f"{dist} is not installed (pip install {dist}): skipped"
        return None

    return check


def _version(dist: str) -> Callable[[], Optional[str]]:
    def get() -> Optional[str]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return get


def _sync_clients(ctx: Context) -> List[Any]:
    import redis

    # max_connections: one per thread is all a cycle needs; the default pool grows anyway.
    return [redis.Redis.from_url(u) for u in ctx.urls]


# -- pottery -----------------------------------------------------------------


def _pottery_redlock(threads: int) -> Callable[[Context], Measurement]:
    def run(ctx: Context) -> Measurement:
        from pottery import Redlock

        clients = _sync_clients(ctx)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pottery warns about N < 3 masters
                locks = [
                    Redlock(key=f"{ctx.key_prefix}:{i}", masters=frozenset(clients), auto_release_time=ctx.ttl)
                    for i in range(threads)
                ]
            pairs = [(lambda lk=lk: lk.acquire(blocking=False), lambda h, lk=lk: lk.release()) for lk in locks]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return cycle_threads(ctx, pairs)
        finally:
            for c in clients:
                c.close()

    return run


def _pottery_aioredlock(concurrency: int) -> Callable[[Context], Measurement]:
    async def body(ctx: Context) -> Measurement:
        import redis.asyncio as aredis
        from pottery import AIORedlock

        clients = [aredis.Redis.from_url(u) for u in ctx.urls]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                locks = [
                    AIORedlock(key=f"{ctx.key_prefix}:{i}", masters=frozenset(clients), auto_release_time=ctx.ttl)
                    for i in range(concurrency)
                ]
            pairs = [(lambda lk=lk: lk.acquire(blocking=False), lambda h, lk=lk: lk.release()) for lk in locks]
            return await cycle_tasks(ctx, pairs)
        finally:
            for c in clients:
                await c.aclose()

    return lambda ctx: run_async(ctx, body)


# -- aioredlock ----------------------------------------------------------------


def _aioredlock(concurrency: int) -> Callable[[Context], Measurement]:
    async def body(ctx: Context) -> Measurement:
        import logging

        from aioredlock import Aioredlock, LockError

        # aioredlock logs every failed attempt at WARNING/ERROR level.
        logging.getLogger("aioredlock").setLevel(logging.CRITICAL)
        hosts = [{"host": ctx.host, "port": p} for p in ctx.ports]
        mgr = Aioredlock(hosts, retry_count=1)
        try:
            def pair(key: str) -> Any:
                async def acq() -> Any:
                    try:
                        return await mgr.lock(key, lock_timeout=ctx.ttl)
                    except LockError:
                        return None

                return acq, mgr.unlock

            return await cycle_tasks(ctx, [pair(f"{ctx.key_prefix}:{i}") for i in range(concurrency)])
        finally:
            await mgr.destroy()

    return lambda ctx: run_async(ctx, body)


# -- redis-py ------------------------------------------------------------------


def _redis_lock(threads: int) -> Callable[[Context], Measurement]:
    def run(ctx: Context) -> Measurement:
        (client,) = _sync_clients(ctx)
        try:
            locks = [client.lock(f"{ctx.key_prefix}:{i}", timeout=ctx.ttl) for i in range(threads)]
            pairs = [(lambda lk=lk: lk.acquire(blocking=False), lambda h, lk=lk: lk.release()) for lk in locks]
            return cycle_threads(ctx, pairs)
        finally:
            client.close()

    return run


def _redis_async_lock(concurrency: int) -> Callable[[Context], Measurement]:
    async def body(ctx: Context) -> Measurement:
        import redis.asyncio as aredis

        client = aredis.Redis.from_url(ctx.urls[0])
        try:
            locks = [client.lock(f"{ctx.key_prefix}:{i}", timeout=ctx.ttl) for i in range(concurrency)]
            pairs = [(lambda lk=lk: lk.acquire(blocking=False), lambda h, lk=lk: lk.release()) for lk in locks]
            return await cycle_tasks(ctx, pairs)
        finally:
            await client.aclose()

    return lambda ctx: run_async(ctx, body)


# -- python-redis-lock ---------------------------------------------------------


def _python_redis_lock(threads: int) -> Callable[[Context], Measurement]:
    def run(ctx: Context) -> Measurement:
        import redis_lock

        (client,) = _sync_clients(ctx)
        try:
            locks = [redis_lock.Lock(client, f"{ctx.key_prefix}:{i}", expire=max(1, round(ctx.ttl)))
                     for i in range(threads)]  # fmt: skip
            pairs = [(lambda lk=lk: lk.acquire(blocking=False), lambda h, lk=lk: lk.release()) for lk in locks]
            return cycle_threads(ctx, pairs)
        finally:
            client.close()

    return run


# -- registration ----------------------------------------------------------------


def _peer(library: str, name: str, api: str, run: Callable[[Context], Measurement], module: str, dist: str,
          **kw: Any) -> Workload:  # fmt: skip
    return register(Workload(library=library, name=name, api=api, run=run,
                             requires=_installed(module, dist), version=_version(dist), **kw))  # fmt: skip


PEERS: List[Workload] = [
    _peer("pottery.Redlock", "blocking-seq", "blocking", _pottery_redlock(1), "pottery", "pottery",
          concurrency=1, description="pottery Redlock.acquire(blocking=False) + release"),
    _peer("pottery.Redlock", "blocking-t8", "blocking", _pottery_redlock(8), "pottery", "pottery",
          concurrency=8, quick=True, description="as blocking-seq, 8 threads"),
    _peer("pottery.AIORedlock", "async-c1", "async", _pottery_aioredlock(1), "pottery", "pottery",
          concurrency=1, description="pottery AIORedlock.acquire(blocking=False) + release"),
    _peer("pottery.AIORedlock", "async-c64", "async", _pottery_aioredlock(64), "pottery", "pottery",
          concurrency=64, description="as async-c1, 64 tasks"),
    _peer("aioredlock", "async-c1", "async", _aioredlock(1), "aioredlock", "aioredlock",
          concurrency=1, description="Aioredlock(retry_count=1).lock + unlock"),
    _peer("aioredlock", "async-c64", "async", _aioredlock(64), "aioredlock", "aioredlock",
          concurrency=64, description="as async-c1, 64 tasks"),
    _peer("redis-py.Lock", "blocking-seq", "blocking", _redis_lock(1), "redis", "redis",
          concurrency=1, single_node=True, quick=True,
          description="redis.Redis.lock(...).acquire(blocking=False) + release, node 0"),
    _peer("redis-py.Lock", "blocking-t8", "blocking", _redis_lock(8), "redis", "redis",
          concurrency=8, single_node=True, description="as blocking-seq, 8 threads"),
    _peer("redis-py.asyncio.Lock", "async-c1", "async", _redis_async_lock(1), "redis", "redis",
          concurrency=1, single_node=True, description="redis.asyncio Lock, node 0"),
    _peer("redis-py.asyncio.Lock", "async-c64", "async", _redis_async_lock(64), "redis", "redis",
          concurrency=64, single_node=True, description="as async-c1, 64 tasks"),
    _peer("python-redis-lock", "blocking-seq", "blocking", _python_redis_lock(1), "redis_lock",
          "python-redis-lock", concurrency=1, single_node=True,
          description="redis_lock.Lock.acquire(blocking=False) + release, node 0"),
    _peer("python-redis-lock", "blocking-t8", "blocking", _python_redis_lock(8), "redis_lock",
          "python-redis-lock", concurrency=8, single_node=True, description="as blocking-seq, 8 threads"),
]  # fmt: skip
