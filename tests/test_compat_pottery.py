"""``quorumlock.compat.pottery``: the drop-in ``Redlock`` / ``AIORedlock`` /
``synchronize`` for pottery 3, against real nodes (N = 1 and N = 3), on both
engine builds and, for ``AIORedlock``, both event loops.

pottery's own suites run against these classes with
``tests/peer_suites/run_peer_suites.py``; the tests here are ours."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time

import pytest
import redis
import redis.asyncio as aredis
from redis.exceptions import RedisError

from quorumlock import ConfigurationError, LockManager, compat
from quorumlock.compat.pottery import (
    AIORedlock,
    ExtendUnlockedLock,
    PrimitiveError,
    QuorumIsImpossible,
    QuorumNotAchieved,
    Redlock,
    ReleaseUnlockedLock,
    TooManyExtensions,
    synchronize,
)

from _engine_fixtures import clusters, core, free_port, run, _shared_clusters  # noqa: F401


@pytest.fixture
def sync_core(core):
    if not hasattr(core, "SyncEngine"):
        pytest.skip(f"{core.IMPLEMENTATION} engine has no blocking driver yet")
    compat.set_manager_options(_core=core)
    yield core
    compat.set_manager_options()


@pytest.fixture
def aio_core(core):
    compat.set_manager_options(_core=core)
    yield core
    compat.set_manager_options()


def _clients(cluster, kind=redis.Redis):
    return [kind(port=p) for p in cluster.ports]


def _on_nodes(cluster, command, *args):
    out = []
    for c in _clients(cluster):
        out.append(c.execute_command(command, *args))
        c.close()
    return out


# -- the API surface ------------------------------------------------------------


def test_surface(sync_core, clusters):
    cluster = clusters(1)
    masters = {redis.Redis(port=cluster.ports[0])}
    lock = Redlock(key="printer", masters=masters, auto_release_time=0.2)
    assert lock.key == "redlock:printer"
    assert lock.masters == frozenset(masters) and isinstance(lock.masters, frozenset)
    assert repr(lock) == "<Redlock key=redlock:printer>"
    with pytest.raises(AttributeError):
        lock.__dict__  # __slots__, as pottery
    with pytest.raises(TypeError):
        Redlock("printer", masters)  # keyword-only
    with pytest.raises(ValueError, match="non-blocking"):
        Redlock(key="p", masters=masters, context_manager_blocking=False, context_manager_timeout=1)
    with pytest.raises(ValueError, match="non-blocking"):
        lock.acquire(blocking=False, timeout=1)
    assert (Redlock._AUTO_RELEASE_TIME, Redlock._NUM_EXTENSIONS, Redlock._RETRY_DELAY) == (10, 3, 0.2)
    aio = AIORedlock(key="shower", masters={aredis.Redis(port=cluster.ports[0])})
    assert repr(aio) == "<AIORedlock key=redlock:shower>"
    with pytest.raises(AttributeError):
        aio.__dict__
    with pytest.raises(ValueError):
        AIORedlock(key="shower", masters=set())


def test_exception_classes_are_potterys():
    pottery_exceptions = pytest.importorskip("pottery.exceptions")
    for ours, name in ((QuorumNotAchieved, "QuorumNotAchieved"), (QuorumIsImpossible, "QuorumIsImpossible"),
                       (TooManyExtensions, "TooManyExtensions"), (ExtendUnlockedLock, "ExtendUnlockedLock"),
                       (ReleaseUnlockedLock, "ReleaseUnlockedLock"), (PrimitiveError, "PrimitiveError")):
        assert ours is getattr(pottery_exceptions, name)  # the same classes: every except clause works
        assert issubclass(ours, PrimitiveError)
        if ours is not PrimitiveError:
            assert issubclass(ours, RuntimeError) and not issubclass(ours, ValueError)


# -- behaviour, N = 1 and 3 --------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_acquire_locked_extend_release(sync_core, clusters, n):
    cluster = clusters(n)
    masters = set(_clients(cluster))
    lock = Redlock(key="printer", masters=masters, auto_release_time=1)
    assert lock.locked() == 0
    assert lock.acquire() is True
    token = _on_nodes(cluster, "GET", "redlock:printer")[0]
    assert len(token) == 32 and _on_nodes(cluster, "GET", "redlock:printer") == [token] * n
    # margins for a loaded machine: the TTL is the 1 s asked for, read a while later
    assert all(500 < ms <= 1000 for ms in _on_nodes(cluster, "PTTL", "redlock:printer"))
    validity = lock.locked()
    assert isinstance(validity, float) and 0.4 < validity < 1.0  # seconds left, drift deducted
    other = Redlock(key="printer", masters=masters, auto_release_time=1)
    assert other.acquire(blocking=False) is False
    assert other.locked() == 0  # held, but not by other
    assert other.acquire(timeout=0.05) is False
    time.sleep(0.2)
    assert lock.extend() is None  # back to the full auto_release_time
    assert all(900 < ms <= 1000 for ms in _on_nodes(cluster, "PTTL", "redlock:printer"))
    assert 0.7 < lock.locked() < 1.0
    lock.extend()
    lock.extend()
    with pytest.raises(TooManyExtensions) as ei:
        lock.extend()
    assert ei.value.key == "redlock:printer" and ei.value.masters == frozenset(masters)
    assert lock.release() is None
    assert _on_nodes(cluster, "EXISTS", "redlock:printer") == [0] * n
    assert lock.locked() == 0
    with pytest.raises(ReleaseUnlockedLock):
        lock.release()
    with pytest.raises(TooManyExtensions):
        lock.extend()  # as in pottery, the count is reset by the next acquire, not by release
    with pytest.raises(ExtendUnlockedLock):
        other.extend()


@pytest.mark.parametrize("n", [1, 3])
def test_expiry_and_context_manager(sync_core, clusters, n):
    cluster = clusters(n)
    masters = _clients(cluster)  # a list works too
    lock = Redlock(key="cm", masters=masters, auto_release_time=0.1)
    with lock:
        assert lock.locked() > 0
    assert lock.locked() == 0 and _on_nodes(cluster, "EXISTS", "redlock:cm") == [0] * n
    with pytest.raises(ReleaseUnlockedLock):
        with lock:
            time.sleep(0.15)  # the lease ran out inside the block
            assert lock.locked() == 0
    assert lock.acquire()
    waiter = Redlock(key="cm", masters=masters, auto_release_time=0.1, context_manager_blocking=False)
    with pytest.raises(QuorumNotAchieved) as ei:
        with waiter:
            pass  # pragma: no cover
    assert ei.value.key == "redlock:cm"
    lock.release()
    # too short to be valid after the drift allowance: never acquired, as in pottery
    tiny = Redlock(key="tiny", masters=masters, auto_release_time=0.001)
    assert tiny._acquire_masters() is False and tiny.acquire(blocking=False) is False
    assert _on_nodes(cluster, "EXISTS", "redlock:tiny") == [0] * n


def test_not_reentrant_and_one_info_record(sync_core, clusters, caplog):
    cluster = clusters(1)
    masters = {redis.Redis(port=cluster.ports[0])}
    lock = Redlock(key="printer", masters=masters, auto_release_time=0.2)
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pottery"):
        assert lock.acquire()
        assert not caplog.records  # did not wait: no record
        assert lock.acquire()  # waits for its own lease to run out
    assert time.monotonic() - t0 >= 0.18
    records = [r for r in caplog.records if r.name == "pottery"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert records[0].getMessage().startswith("source=pottery sample#redlock.enqueued.printer=")
    assert records[0].getMessage().endswith("sample#redlock.acquired.printer=1")
    lock.release()


def test_quorum_with_a_stale_minority(sync_core, clusters):
    cluster = clusters(3)
    clients = _clients(cluster)
    clients[2].set("redlock:q", "someone-else")
    lock = Redlock(key="q", masters=clients, auto_release_time=1)
    assert lock.acquire(blocking=False)  # two of three
    assert 0.7 < lock.locked() < 1.0
    lock.release()
    clients[1].set("redlock:q", "someone-else")
    assert lock.acquire(blocking=False) is False
    assert _on_nodes(cluster, "GET", "redlock:q") == [None, b"someone-else", b"someone-else"]


def test_redis_errors_and_quorum_is_impossible(sync_core, clusters, free_port):
    cluster = clusters(3)
    masters = [redis.Redis(port=cluster.ports[0]), redis.Redis(port=free_port), redis.Redis(port=free_port + 1)]
    lock = Redlock(key="down", masters=masters, auto_release_time=1)
    assert lock.acquire(blocking=False) is False  # two masters down: counted, not raised
    with pytest.raises(QuorumIsImpossible) as ei:
        lock.acquire(blocking=False, raise_on_redis_errors=True)
    assert len(ei.value.redis_errors) == 2 and all(isinstance(e, RedisError) for e in ei.value.redis_errors)
    assert _on_nodes(cluster, "EXISTS", "redlock:down") == [0, 0, 0]  # the SET that landed was undone
    strict = Redlock(key="down", masters=masters, raise_on_redis_errors=True)
    with pytest.raises(QuorumIsImpossible):
        strict.acquire(blocking=False)
    # one master down of three: still a quorum
    live = [redis.Redis(port=cluster.ports[0]), redis.Redis(port=cluster.ports[1]), redis.Redis(port=free_port)]
    one_down = Redlock(key="down", masters=live, auto_release_time=1, raise_on_redis_errors=True)
    assert one_down.acquire(blocking=False) is True
    assert one_down.locked() > 0.7
    one_down.release()


def test_databases_of_one_server(sync_core, aio_core, clusters, run):
    """pottery takes five databases of one server as five masters (its own
    contention test does): the drop-ins accept them, with a UserWarning that
    the quorum is weaker than it looks, and still let one holder in at a time.
    The native API keeps refusing them unless told to allow them.  First-round
    code: ConfigurationError ("are the same server") at the first acquire."""
    cluster = clusters(1)
    port = cluster.ports[0]
    masters = {redis.Redis(port=port, db=db) for db in range(1, 6)}
    with pytest.warns(UserWarning, match="weaker than it looks") as caught:
        locks = [Redlock(key="dbs", masters=masters, auto_release_time=1) for _ in range(6)]
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            won = list(pool.map(lambda lk: lk.acquire(blocking=False), locks))
    # (pytest.warns records every warning: an unrelated ResourceWarning from
    # the garbage collector may come first)
    assert any("counted 5 times" in str(w.message) for w in caught), [str(w.message) for w in caught]
    # At most one holder; none is possible too, when six simultaneous
    # attempts split the five votes so that nobody reaches three.
    assert won.count(True) <= 1
    if not any(won):
        won[0] = locks[0].acquire(blocking=True, timeout=5)
        assert won[0]
    values = [redis.Redis(port=port, db=db).get("redlock:dbs") for db in range(1, 6)]
    assert max(values.count(v) for v in values if v) >= 3  # the winner's token on a majority of the databases
    locks[won.index(True)].release()

    async def body():
        aio = AIORedlock(key="dbs", masters={aredis.Redis(port=port, db=db) for db in range(1, 4)},
                         auto_release_time=1)
        with pytest.warns(UserWarning, match="weaker than it looks"):
            assert await aio.acquire(blocking=False)
        await aio.release()

    run(body())
    urls = [f"redis://127.0.0.1:{port}/{db}" for db in range(1, 4)]
    with pytest.raises(ConfigurationError, match="same server"):
        with LockManager(urls, _core=sync_core):
            pass  # pragma: no cover
    with pytest.warns(UserWarning, match="weaker than it looks"):
        with LockManager(urls, allow_same_server=True, _core=sync_core) as mgr:
            assert mgr.try_acquire("k", 1.0) is not None
    with pytest.raises(TypeError, match="allow_same_server"):
        compat.set_manager_options(allow_same_server=True)


def test_contention_across_threads(sync_core, clusters):
    cluster = clusters(3)
    masters = _clients(cluster)
    locks = [Redlock(key="contended", masters=masters, auto_release_time=1) for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda lk: lk.acquire(blocking=False), locks))
    assert won.count(True) <= 1
    for lk, w in zip(locks, won):
        if w:
            lk.release()
    assert _on_nodes(cluster, "EXISTS", "redlock:contended") == [0, 0, 0]


def test_synchronize(sync_core, clusters, caplog):
    cluster = clusters(1)
    masters = {redis.Redis(port=cluster.ports[0])}
    inside = []

    @synchronize(key="sync-func", masters=masters, auto_release_time=1)
    def func(i):
        inside.append(i)
        assert len(inside) == 1, "two callers inside at once"
        time.sleep(0.03)
        inside.pop()
        return i

    with caplog.at_level(logging.INFO, logger="pottery"):
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            assert sorted(pool.map(func, range(3))) == [0, 1, 2]
    assert any("func() waited for redlock:sync-func for" in r.getMessage() for r in caplog.records)

    @synchronize(key="sync-func", masters=masters, auto_release_time=0.001, blocking=False)
    def never():
        raise AssertionError("not reached")  # pragma: no cover

    with pytest.raises(QuorumNotAchieved):
        never()


# -- AIORedlock --------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_aio_redlock(run, aio_core, clusters, n):
    cluster = clusters(n)

    async def body():
        masters = set(_clients(cluster, aredis.Redis))
        lock = AIORedlock(key="shower", masters=masters, auto_release_time=0.3)
        assert await lock.locked() == 0
        with pytest.raises(ExtendUnlockedLock):
            await lock.extend()
        async with lock:
            assert 0.15 < await lock.locked() < 0.3
            for _ in range(3):
                await lock.extend()
            with pytest.raises(TooManyExtensions):
                await lock.extend()
            other = AIORedlock(key="shower", masters=masters, auto_release_time=0.3)
            assert await other.acquire(blocking=False) is False
            assert await other.acquire(timeout=0.05) is False
        assert await lock.locked() == 0
        with pytest.raises(ReleaseUnlockedLock):
            await lock.release()
        # enqueued: a second lock waits until the first one's lease runs out
        assert await lock.acquire()
        t0 = time.monotonic()
        assert await other.acquire()
        assert time.monotonic() - t0 > 0.2
        await other.release()
        with pytest.raises(ValueError):
            await lock.acquire(blocking=False, timeout=0.1)
        lock.auto_release_time = 0.001
        assert await lock.acquire(blocking=False) is False
        lock.context_manager_blocking = False
        with pytest.raises(QuorumNotAchieved):
            async with lock:
                pass  # pragma: no cover
        for c in masters:
            await c.aclose()

    run(body())


def test_aio_contention_and_errors(run, aio_core, clusters, free_port):
    cluster = clusters(3)

    async def body():
        masters = _clients(cluster, aredis.Redis)
        locks = [AIORedlock(key="race", masters=masters, auto_release_time=1) for _ in range(10)]
        won = await asyncio.gather(*(lk.acquire(blocking=False) for lk in locks))
        assert won.count(True) == 1  # one winner: the others found it held
        await locks[won.index(True)].release()
        down = [masters[0], aredis.Redis(port=free_port), aredis.Redis(port=free_port + 1)]
        lock = AIORedlock(key="race", masters=down, auto_release_time=1)
        assert await lock.acquire(blocking=False) is False
        with pytest.raises(QuorumIsImpossible):
            await lock.acquire(blocking=False, raise_on_redis_errors=True)
        assert await lock.locked() == 0

    run(body())
