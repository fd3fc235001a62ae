"""``quorumlock.compat.aioredlock``: the drop-in for aioredlock 0.7's
``Aioredlock``, against real nodes (N = 1 and N = 3), on both engine builds
and both event loops.

aioredlock's own acceptance suite runs against it with
``tests/peer_suites/run_peer_suites.py --aioredlock DIR``; the tests here are ours."""

from __future__ import annotations

import asyncio
import warnings

import pytest
import redis

from quorumlock import ConfigurationError, compat
from quorumlock.aio import LockManager as AioLockManager
from quorumlock.compat.aioredlock import (
    Aioredlock,
    Lock,
    LockAcquiringError,
    LockError,
    LockRuntimeError,
)

from _engine_fixtures import clusters, core, free_port, run, _shared_clusters  # noqa: F401


@pytest.fixture
def aio_core(core):
    compat.set_manager_options(_core=core)
    yield core
    compat.set_manager_options()


def _on_nodes(cluster, command, *args):
    out = []
    for p in cluster.ports:
        c = redis.Redis(port=p)
        out.append(c.execute_command(command, *args))
        c.close()
    return out


def _conns(cluster):
    return [{"host": "127.0.0.1", "port": p} for p in cluster.ports]


@pytest.mark.parametrize("n", [1, 3])
def test_lock_extend_unlock(run, aio_core, clusters, n):
    cluster = clusters(n)

    async def body():
        manager = Aioredlock(_conns(cluster), retry_count=2, retry_delay_min=0.01, retry_delay_max=0.02)
        assert await manager.is_locked("res") is False
        lock = await manager.lock("res", lock_timeout=5)
        assert isinstance(lock, Lock) and lock.valid is True and lock.lock_timeout == 5
        assert len(lock.id) == 36  # str(uuid4()), as aioredlock
        assert _on_nodes(cluster, "GET", "res") == [lock.id.encode()] * n
        assert all(4500 < ms <= 5000 for ms in _on_nodes(cluster, "PTTL", "res"))
        assert await manager.is_locked("res") is True and await manager.is_locked(lock) is True
        with pytest.raises(LockAcquiringError):
            await manager.lock("res", lock_timeout=5)  # held by another identifier: retried, then raised
        assert _on_nodes(cluster, "GET", "res") == [lock.id.encode()] * n
        await asyncio.sleep(0.3)
        await manager.extend(lock, lock_timeout=10)
        assert all(9500 < ms <= 10000 for ms in _on_nodes(cluster, "PTTL", "res"))
        again = await manager.get_lock("res", lock.id)
        assert again.id == lock.id and again.valid and 9 <= again.lock_timeout <= 10
        assert await manager.get_active_locks() == [lock]
        await manager.unlock(lock)
        assert lock.valid is False and _on_nodes(cluster, "EXISTS", "res") == [0] * n
        assert await manager.get_active_locks() == []
        with pytest.raises(RuntimeError, match="not valid"):
            await manager.extend(lock)
        with pytest.raises(LockError):
            await manager.get_lock("res", lock.id)
        async with await manager.lock("ctx", lock_timeout=5) as held:
            assert await held.is_locked()
        assert _on_nodes(cluster, "EXISTS", "ctx") == [0] * n
        await manager.destroy()

    run(body())


def test_auto_extension_and_destroy(run, aio_core, clusters):
    """A lock taken without a lock_timeout is extended every 0.6 x
    internal_lock_timeout: still held after three times its lease."""
    cluster = clusters(3)

    async def body():
        manager = Aioredlock(_conns(cluster), internal_lock_timeout=0.3)
        lock = await manager.lock("auto")
        await asyncio.sleep(0.9)
        assert await manager.is_locked("auto") is True and lock.valid
        other = await manager.lock("other", lock_timeout=5)
        await manager.destroy()  # unlocks both, stops the extension
        assert not lock.valid and not other.valid
        assert _on_nodes(cluster, "EXISTS", "auto", "other") == [0] * 3
        await asyncio.sleep(0.4)
        assert _on_nodes(cluster, "EXISTS", "auto") == [0] * 3  # no extension after destroy

    run(body())


def test_databases_of_one_server_warn(run, aio_core, clusters):
    """aioredlock accepts two databases of one server as two instances (its own
    tests do): the drop-in accepts them with a UserWarning; the native API
    still refuses them unless told to allow them.  First-round code: the
    drop-in did not exist; pottery's drop-in raised ConfigurationError here."""
    cluster = clusters(1)
    port = cluster.ports[0]

    async def body():
        manager = Aioredlock([{"host": "127.0.0.1", "port": port, "db": db} for db in (0, 1, 2)])
        with pytest.warns(UserWarning, match="weaker than it looks"):
            lock = await manager.lock("two-dbs", lock_timeout=5)
        assert len({redis.Redis(port=port, db=db).get("two-dbs") for db in (0, 1, 2)}) == 1
        await manager.unlock(lock)
        urls = [f"redis://127.0.0.1:{port}/{db}" for db in (0, 1, 2)]
        native = AioLockManager(urls, _core=aio_core)
        with pytest.raises(ConfigurationError, match="same server"):
            await native.connect()
        allowed = AioLockManager(urls, allow_same_server=True, _core=aio_core)
        with pytest.warns(UserWarning, match="weaker than it looks"):
            await allowed.connect()
        try:
            assert await allowed.try_acquire("k", 1.0) is not None
        finally:
            await allowed.close()

    run(body())


def test_runtime_errors_and_bad_input(run, aio_core, clusters, free_port):
    cluster = clusters(1)

    async def body():
        conns = [{"host": "127.0.0.1", "port": cluster.ports[0]}, ("127.0.0.1", free_port),
                 f"redis://127.0.0.1:{free_port + 1}/0"]
        manager = Aioredlock(conns, retry_count=1)
        with pytest.raises(LockRuntimeError):
            await manager.lock("down", lock_timeout=5)
        await asyncio.sleep(0.05)  # the background clean-up
        assert _on_nodes(cluster, "EXISTS", "down") == [0]
        with pytest.raises(TypeError):
            await manager.is_locked(42)

    run(body())
    for kwargs, text in (({"retry_count": 0}, "Retry count"), ({"retry_delay_min": 0}, "Retry delay"),
                         ({"internal_lock_timeout": -1}, "lock_timeout")):
        with pytest.raises(ValueError, match=text):
            Aioredlock([{"port": cluster.ports[0]}], **kwargs)
    with pytest.raises(TypeError):
        Aioredlock([object()])
    secret = Aioredlock([{"host": "h", "port": 1, "password": "hunter2"}, "redis://:hunter2@h:2/0"])
    assert "hunter2" not in repr(secret)


def test_cancelled_lock_leaves_no_key(run, aio_core, clusters):
    cluster = clusters(3)

    async def body():
        manager = Aioredlock(_conns(cluster))
        task = asyncio.ensure_future(manager.lock("cancel", lock_timeout=5))
        await asyncio.sleep(0)
        task.cancel()
        with warnings.catch_warnings():
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.1)
        assert _on_nodes(cluster, "EXISTS", "cancel") == [0] * 3

    run(body())
