"""``quorumlock.compat.redis_py``: the drop-in ``Lock`` / ``AsyncLock`` for
redis-py's locks, against real nodes (N = 1 and N = 3), on both engine builds
and, for ``AsyncLock``, both event loops.

redis-py's own lock suites run against these classes with
``tests/peer_suites/run_peer_suites.py``; the tests here are ours."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
import redis
import redis.lock
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError, LockNotOwnedError

from quorumlock import compat
from quorumlock.chaos.proxy import FaultProxy
from quorumlock.compat import redis_py
from quorumlock.compat.redis_py import AsyncLock, Lock, QuorumUnavailable

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


def _clients(cluster):
    return [redis.Redis(port=p) for p in cluster.ports]


def _on_nodes(cluster, command, *args):
    out = []
    for c in _clients(cluster):
        out.append(c.execute_command(command, *args))
        c.close()
    return out


def _nodes_arg(cluster, n, kind=redis.Redis):
    """N = 1: one client, as redis-py is used; N > 1: a list of clients."""
    clients = [kind(port=p) for p in cluster.ports]
    return clients[0] if n == 1 else clients


# -- state on the nodes, tokens, N = 1 and 3 ----------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_state_on_every_node(sync_core, clusters, n):
    cluster = clusters(n)
    r = _nodes_arg(cluster, n)
    if n == 1:
        lock = r.lock("cp:foo", lock_class=Lock)  # the one-line change
    else:
        lock = Lock(r, "cp:foo")
    assert isinstance(lock, Lock) and lock.local.token is None
    assert lock.locked() is False and lock.owned() is False
    assert lock.acquire(blocking=False) is True
    token = lock.local.token
    # 32 hex characters, as long as redis-py's uuid1().hex, all random
    assert isinstance(token, bytes) and len(token) == 32 and int(token, 16) >= 0
    assert _on_nodes(cluster, "GET", "cp:foo") == [token] * n
    assert _on_nodes(cluster, "TTL", "cp:foo") == [-1] * n  # timeout=None: no expiry at all
    assert lock.locked() is True and lock.owned() is True
    assert lock.release() is None
    assert lock.local.token is None
    assert _on_nodes(cluster, "EXISTS", "cp:foo") == [0] * n
    assert lock.locked() is False

    timed = Lock(r, b"cp:bar", timeout=9.5)
    assert timed.acquire(blocking=False)
    assert all(9000 < ms <= 9500 for ms in _on_nodes(cluster, "PTTL", "cp:bar"))
    timed.release()

    other = Lock(r, "cp:tok")
    assert other.acquire(blocking=False, token="mine") is True
    assert other.local.token == b"mine"
    assert _on_nodes(cluster, "GET", "cp:tok") == [b"mine"] * n
    assert other.owned()
    other.release()
    assert other.acquire(blocking=False, token=b"\x00bytes") and _on_nodes(cluster, "GET", "cp:tok")[0] == b"\x00bytes"
    other.release()


@pytest.mark.parametrize("n", [1, 3])
def test_competition_extend_reacquire(sync_core, clusters, n):
    cluster = clusters(n)
    r = _nodes_arg(cluster, n)
    a, b = Lock(r, "cp:c", timeout=10), Lock(r, "cp:c", timeout=10)
    assert a.acquire(blocking=False) and not b.acquire(blocking=False)
    assert b.locked() is True and b.owned() is False
    # extend adds to the TTL left (redis-py semantics) ...
    assert a.extend(10) is True
    assert all(19000 < ms <= 20000 for ms in _on_nodes(cluster, "PTTL", "cp:c"))
    # ... or replaces it
    assert a.extend(5, replace_ttl=True) is True
    assert all(4000 < ms <= 5000 for ms in _on_nodes(cluster, "PTTL", "cp:c"))
    assert a.extend(0.5) is True
    assert all(5000 < ms <= 5500 for ms in _on_nodes(cluster, "PTTL", "cp:c"))
    _on_nodes(cluster, "PEXPIRE", "cp:c", 3000)
    assert a.reacquire() is True
    assert all(9000 < ms <= 10000 for ms in _on_nodes(cluster, "PTTL", "cp:c"))
    a.release()
    assert b.acquire(blocking=False)
    b.release()
    # errors, as redis-py's
    with pytest.raises(LockError, match="unlocked"):
        a.extend(1)
    with pytest.raises(LockError, match="unlocked"):
        a.reacquire()
    with pytest.raises(LockError, match="not owned"):
        a.release()
    forever = Lock(r, "cp:forever")
    assert forever.acquire(blocking=False)
    with pytest.raises(LockError, match="no timeout"):
        forever.extend(1)
    with pytest.raises(LockError, match="no timeout"):
        forever.reacquire()
    forever.release()
    # a timeout of 0 means "no timeout" in redis-py (it is falsy): SET without
    # PX, and extend then finds no TTL to extend
    zero = Lock(r, "cp:zero", timeout=0)
    assert zero.acquire(blocking=False) and _on_nodes(cluster, "TTL", "cp:zero") == [-1] * n
    with pytest.raises(LockNotOwnedError):
        zero.extend(1)
    zero.release()


@pytest.mark.parametrize("n", [1, 3])
def test_not_owned_any_more(sync_core, clusters, n):
    cluster = clusters(n)
    r = _nodes_arg(cluster, n)
    lock = Lock(r, "cp:gone", timeout=0.1)
    assert lock.acquire(blocking=False)
    time.sleep(0.15)
    assert lock.owned() is False and lock.locked() is False
    with pytest.raises(LockNotOwnedError) as ei:
        lock.release()  # the key expired: not ours any more
    assert ei.value.lock_name == "cp:gone"
    assert lock.local.token is None  # cleared anyway, as redis-py does

    lock = Lock(r, "cp:taken", timeout=10)
    assert lock.acquire(blocking=False)
    for c in _clients(cluster):  # someone else's token on every node
        c.set("cp:taken", "theirs")
    with pytest.raises(LockNotOwnedError):
        lock.extend(1)
    with pytest.raises(LockNotOwnedError):
        lock.reacquire()
    with pytest.raises(LockNotOwnedError):
        lock.release()
    assert _on_nodes(cluster, "GET", "cp:taken") == [b"theirs"] * n  # never deleted someone else's


def test_context_manager_and_release_errors(sync_core, clusters, caplog):
    cluster = clusters(1)
    r = redis.Redis(port=cluster.ports[0])
    with r.lock("cp:cm", blocking_timeout=0.2, lock_class=Lock) as lock:
        assert r.get("cp:cm") == lock.local.token
    assert r.get("cp:cm") is None
    r.set("cp:cm", "other")
    with pytest.raises(LockError, match="Unable to acquire") as ei:
        with Lock(r, "cp:cm", blocking_timeout=0.05, sleep=0.01):
            pass  # pragma: no cover
    assert ei.value.lock_name == "cp:cm"
    assert [o.status for o in ei.value.outcomes] == ["held"]  # which node said what
    r.delete("cp:cm")
    with pytest.raises(LockNotOwnedError):
        with Lock(r, "cp:cm", timeout=0.05):
            time.sleep(0.08)
    with caplog.at_level(logging.WARNING, logger="redis.lock"):
        with Lock(r, "cp:cm", timeout=0.05, raise_on_release_error=False):
            time.sleep(0.08)
    assert "no longer owned" in caplog.text


def test_thread_local_tokens(sync_core, clusters):
    cluster = clusters(1)
    r = redis.Redis(port=cluster.ports[0])
    lock = Lock(r, "cp:tl")
    assert lock.acquire(blocking=False)
    seen = []
    t = threading.Thread(target=lambda: seen.append(getattr(lock.local, "token", "unset")))
    t.start()
    t.join()
    assert seen == ["unset"]  # another thread does not see this thread's token (as in redis-py)
    lock.release()
    shared = Lock(r, "cp:tl", thread_local=False)
    assert shared.acquire(blocking=False)
    t = threading.Thread(target=shared.release)  # acquired here, released there
    t.start()
    t.join()
    assert r.get("cp:tl") is None


# -- quorum semantics ----------------------------------------------------------


def test_quorum_majority_and_cleanup(sync_core, clusters):
    cluster = clusters(3)
    clients = _clients(cluster)
    clients[0].set("cp:q", "stale")  # one node of three held by someone else
    lock = Lock(clients, "cp:q", timeout=5)
    assert lock.acquire(blocking=False)  # two of three: held
    assert lock.locked() and lock.owned()
    lock.release()
    assert _on_nodes(cluster, "GET", "cp:q") == [b"stale", None, None]
    clients[1].set("cp:q", "stale")  # now two of three are held: no majority
    assert not lock.acquire(blocking=False)
    # the one node where our SET landed was released at once: nothing left
    assert _on_nodes(cluster, "GET", "cp:q") == [b"stale", b"stale", None]
    assert lock.locked() is True  # one value on a majority
    clients[1].set("cp:q", "another")
    assert lock.locked() is False  # two different values: nobody holds a majority


def test_quorum_unavailable_is_a_connection_error(sync_core, clusters, free_port):
    cluster = clusters(1)
    down = [f"redis://127.0.0.1:{free_port}", f"redis://127.0.0.1:{free_port + 1}"]
    lock = Lock([cluster.urls[0]] + down, "cp:down", timeout=5)
    with pytest.raises(QuorumUnavailable) as ei:
        lock.acquire()  # blocking: redis-py raises at once when its server is down; so do we
    assert isinstance(ei.value, RedisConnectionError) and not isinstance(ei.value, LockError)
    # Decided by the engine as soon as two nodes are known down: the live
    # node's reply may not be in yet ("pending").
    assert [o.status for o in ei.value.outcomes][1:] == ["down", "down"]
    assert ei.value.outcomes[0].status in ("ok", "pending")
    assert _on_nodes(cluster, "EXISTS", "cp:down") == [0]  # the one SET that landed was undone
    with pytest.raises(QuorumUnavailable):
        lock.locked()
    with pytest.warns(UserWarning, match="even"):
        one_down = Lock(cluster.urls[:1] + [down[0]], "cp:down2")  # two nodes: the quorum is both
    with pytest.raises(QuorumUnavailable):
        one_down.acquire(blocking=False)


def test_paused_node_costs_one_vote(sync_core, make_cluster):
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0)
    compat.set_manager_options(_core=sync_core, node_timeout=0.1)
    clients = _clients(cluster)
    lock = Lock(clients, "cp:paused", timeout=10)
    assert lock.acquire(blocking=False)  # connect while all are up
    lock.release()
    cluster.pause(2)
    try:
        t0 = time.monotonic()
        assert lock.acquire(blocking=False)
        assert time.monotonic() - t0 < 1.0  # bounded by the per-node deadline
        assert lock.owned()
        lock.release()
    finally:
        cluster.resume(2)


def test_one_manager_per_node_set(sync_core, clusters):
    cluster = clusters(3)
    clients = _clients(cluster)
    first = Lock(clients, "cp:m0")
    assert first.acquire(blocking=False)
    first.release()

    def connections():
        return sum(1 for c in clients[0].client_list() if c.get("cmd") != "client|list")

    before = connections()
    for i in range(200):
        lk = Lock(list(reversed(clients)), f"cp:m{i}", timeout=5)  # other order, other objects
        assert lk._shared is first._shared
        assert lk.acquire(blocking=False)
        lk.release()
    # no connection per lock (other tests' managers may close meanwhile on
    # these shared nodes, so compare with slack far below 200)
    assert connections() - before < 10
    urls_lock = Lock(cluster.urls, "cp:m")
    assert urls_lock._shared is not first._shared  # URLs are another spelling: another manager


def test_noscript_fallback(sync_core, clusters):
    cluster = clusters(1)
    r = redis.Redis(port=cluster.ports[0])
    lock = Lock(r, "cp:ns", timeout=10)
    assert lock.acquire(blocking=False)
    r.script_flush()  # the node forgets every script (as after a restart)
    assert lock.extend(1) is True
    r.script_flush()
    lock.release()
    assert r.get("cp:ns") is None


def test_bad_input(sync_core, clusters):
    cluster = clusters(1)
    with pytest.raises(TypeError):
        Lock(42, "cp:x")
    with pytest.raises(ValueError):
        Lock([], "cp:x")
    lock = Lock(cluster.urls[0], "cp:x", timeout=0.0001)
    with pytest.raises(LockError, match="at least 1 ms"):
        lock.acquire(blocking=False)


def test_ttl_too_short_to_acquire_raises_at_once(sync_core, aio_core, clusters, run):
    """``Lock(r, "x", timeout=0.001).acquire()``: 1 ms is less than the
    clock-drift allowance (2.01 ms), so no attempt can ever be valid.  It
    raises at once, naming the timeout (a ValueError and a LockError).
    First-round code: the blocking acquire never returned (still running
    after 5 s here), and the non-blocking one returned False silently."""
    cluster = clusters(1)
    r = redis.Redis(port=cluster.ports[0])
    outcome = []

    def attempt():
        try:
            outcome.append(Lock(r, "cp:tiny", timeout=0.001).acquire())
        except Exception as exc:  # noqa: BLE001 - recorded and checked below
            outcome.append(exc)

    t = threading.Thread(target=attempt, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(5)
    assert not t.is_alive(), "acquire() with timeout=0.001 still running after 5 s"
    assert time.monotonic() - t0 < 2
    exc = outcome[0]
    assert isinstance(exc, ValueError) and isinstance(exc, LockError), exc
    assert "timeout=0.001" in str(exc) and "too short" in str(exc)
    with pytest.raises(ValueError, match="too short"):
        Lock(r, "cp:tiny", timeout=0.002).acquire(blocking=False)
    assert r.exists("cp:tiny") == 0  # nothing was sent
    assert Lock(r, "cp:tiny", timeout=0.05).acquire(blocking=False)  # long enough: works

    async def body():
        with pytest.raises(ValueError, match="timeout=0.001"):
            await AsyncLock(redis.asyncio.Redis(port=cluster.ports[0]), "cp:tiny2", timeout=0.001).acquire()

    run(body())


# -- the blocking arithmetic, on a fake clock ----------------------------------


class FakeClock:
    """``monotonic()`` and ``sleep()`` that only count."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []
        self.reads = 0

    def monotonic(self):
        self.reads += 1
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def _fake_run(monkeypatch, module, cls, r, **kwargs):
    clock = FakeClock()
    monkeypatch.setattr(module, "mod_time", clock)
    lock = cls(r, "cp:fake", **kwargs)
    result = lock.acquire()
    monkeypatch.undo()
    return result, clock


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sleep=0.05, blocking_timeout=0.4),  # eight sleeps, then give up
        dict(sleep=0.1, blocking_timeout=0.35),  # a partial last period is not slept
        dict(sleep=60, blocking_timeout=1),  # the first sleep would overshoot: none
        dict(sleep=0.05, blocking_timeout=0),
        dict(sleep=0.05, blocking=False),
    ],
)
def test_blocking_arithmetic_matches_redis_py(sync_core, clusters, monkeypatch, kwargs):
    cluster = clusters(1)
    r = redis.Redis(port=cluster.ports[0])
    holder = Lock(r, "cp:fake")
    assert holder.acquire(blocking=False)
    ours, ours_clock = _fake_run(monkeypatch, redis_py, Lock, r, **kwargs)
    theirs, theirs_clock = _fake_run(monkeypatch, redis.lock, redis.lock.Lock, r, **kwargs)
    assert ours is theirs is False
    # the same sleeps, and not one more read of the clock than redis-py makes
    assert ours_clock.sleeps == theirs_clock.sleeps
    assert ours_clock.reads == theirs_clock.reads
    assert ours_clock.now == theirs_clock.now
    holder.release()


def test_blocking_acquire_succeeds_when_freed(sync_core, clusters, monkeypatch):
    cluster = clusters(1)
    r = redis.Redis(port=cluster.ports[0])
    holder = Lock(r, "cp:fake")
    assert holder.acquire(blocking=False)

    class Clock(FakeClock):
        def sleep(self, seconds):  # the holder lets go during the third sleep
            super().sleep(seconds)
            if len(self.sleeps) == 3:
                holder.release()

    clock = Clock()
    monkeypatch.setattr(redis_py, "mod_time", clock)
    waiter = Lock(r, "cp:fake", sleep=0.25)
    assert waiter.acquire() is True  # no blocking_timeout: forever
    assert clock.sleeps == [0.25] * 3 and clock.reads == 3
    waiter.release()


# -- AsyncLock ------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_async_roundtrip(run, aio_core, clusters, n):
    cluster = clusters(n)

    async def body():
        import redis.asyncio as aredis

        clients = [aredis.Redis(port=p) for p in cluster.ports]
        r = clients[0] if n == 1 else clients
        lock = clients[0].lock("cp:a", timeout=10, lock_class=AsyncLock) if n == 1 else AsyncLock(r, "cp:a", timeout=10)
        assert lock.blocking is True and AsyncLock(r, "x", blocking=False).blocking is False
        assert await lock.locked() is False
        assert await lock.acquire(blocking=False) is True
        assert _on_nodes(cluster, "GET", "cp:a") == [lock.local.token] * n
        assert await lock.owned() and await lock.locked()
        other = AsyncLock(r, "cp:a")
        assert await other.acquire(blocking=False) is False
        assert await lock.extend(5) is True
        # 10 s + 5 s, read a while later (a loaded machine: > 1 s once); not 5 s
        assert all(11000 < ms <= 15000 for ms in _on_nodes(cluster, "PTTL", "cp:a"))
        assert await lock.reacquire() is True
        await lock.release()
        assert lock.local.token is None
        assert await other.acquire(blocking=False, token="t") and _on_nodes(cluster, "GET", "cp:a") == [b"t"] * n
        with pytest.raises(LockError):
            await other.extend(1)  # no timeout
        await other.release()
        async with AsyncLock(r, "cp:b", timeout=1) as held:
            assert await held.owned()
        with pytest.raises(LockNotOwnedError):
            async with AsyncLock(r, "cp:b", timeout=0.05):
                await asyncio.sleep(0.08)
        with pytest.raises(LockError):
            await AsyncLock(r, "cp:b").release()
        for c in clients:
            await c.aclose()

    run(body())


def test_async_fake_clock_matches_redis_py(run, aio_core, clusters, monkeypatch):
    import redis.asyncio.lock as aio_lock_module

    cluster = clusters(1)

    class FakeLoopTime:
        def __init__(self):
            self.now = 0.0
            self.sleeps = []
            self.reads = 0

        def get_running_loop(self):
            return self

        def time(self):
            self.reads += 1
            return self.now

        async def sleep(self, seconds):
            self.sleeps.append(seconds)
            self.now += seconds

    async def body():
        import redis.asyncio as aredis

        r = aredis.Redis(port=cluster.ports[0])
        holder = AsyncLock(r, "cp:af")
        assert await holder.acquire(blocking=False)
        clocks = []
        for module, cls in ((redis_py, AsyncLock), (aio_lock_module, aio_lock_module.Lock)):
            clock = FakeLoopTime()
            monkeypatch.setattr(module, "asyncio", clock)
            try:
                assert await cls(r, "cp:af", sleep=0.05, blocking_timeout=0.2).acquire() is False
                assert await cls(r, "cp:af", sleep=60, blocking_timeout=1).acquire() is False
            finally:
                monkeypatch.undo()
            clocks.append(clock)
        ours, theirs = clocks
        assert ours.sleeps == theirs.sleeps == [0.05] * 4
        assert ours.reads == theirs.reads and ours.now == theirs.now
        await holder.release()
        await r.aclose()

    run(body())


def test_async_cancelled_release_keeps_the_token(run, aio_core, clusters):
    cluster = clusters(1)
    proxy = FaultProxy("127.0.0.1", cluster.ports[0])

    async def body():
        lock = AsyncLock(proxy.url, "cp:cancel")
        assert await lock.acquire(blocking=False)
        token = lock.local.token
        # cancelled before it ran: nothing was sent, the key is held, the token stays
        task = asyncio.ensure_future(lock.release())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert lock.local.token == token and await lock.owned()
        # cancelled while the release is in flight: the token stays until we
        # know the key is gone
        proxy.set_mode("latency", 0.2)
        task = asyncio.ensure_future(lock.release())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert lock.local.token == token
        await asyncio.sleep(0.5)  # the release lands
        proxy.set_mode("pass")
        assert _on_nodes(cluster, "EXISTS", "cp:cancel") == [0]
        with pytest.raises(LockNotOwnedError):
            await lock.release()
        assert lock.local.token is None

    try:
        run(body())
    finally:
        proxy.close()


def test_async_cancelled_acquire_leaves_no_key(run, aio_core, clusters):
    cluster = clusters(1)
    proxy = FaultProxy("127.0.0.1", cluster.ports[0])

    async def body():
        lock = AsyncLock(proxy.url, "cp:cacq", timeout=10)
        assert await lock.acquire(blocking=False)  # connect first
        await lock.release()
        proxy.set_mode("latency", 0.1)
        task = asyncio.ensure_future(lock.acquire(blocking=False))
        await asyncio.sleep(0.03)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)
        assert lock.local.token is None
        assert _on_nodes(cluster, "EXISTS", "cp:cacq") == [0]  # the SET landed and was undone

    try:
        run(body())
    finally:
        proxy.close()


def test_async_shared_manager_per_loop(run, aio_core, clusters):
    cluster = clusters(3)
    seen = []

    async def body():
        lock = AsyncLock(cluster.urls, "cp:loop")
        assert await lock.acquire(blocking=False)
        await lock.release()
        seen.append((lock._aio, asyncio.get_running_loop()))
        for i in range(50):
            other = AsyncLock(cluster.urls, f"cp:loop{i}")
            assert await other.acquire(blocking=False)
            assert other._aio is lock._aio
            await other.release()

    run(body())
    run(body())  # a new loop: a new manager, the first one closed at loop shutdown
    (first, loop1), (second, loop2) = seen
    assert first is not second and first.manager.engine is None
