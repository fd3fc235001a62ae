"""The engine's caller-token fast path (``LockManager.attempt_token``), the
acquire the drop-in classes of ``quorumlock.compat`` use: the caller's token,
an optional PX (None/0: no expiry), decided at a majority exactly as
``try_acquire``.  Real servers, both engine builds, both APIs (the asyncio
ones on both loops).

On the first-round code none of these could run: there was no
``attempt_token`` (AttributeError on every test), and the drop-ins counted
per-node replies themselves; each docstring says what else the test caught.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest
import redis

from quorumlock import LockManager as SyncLockManager
from quorumlock.aio import LockManager

from _engine_fixtures import clusters, core, free_port, run, sync_core, _shared_clusters  # noqa: F401

TOKEN = b"0123456789abcdef0123456789abcdef"   # a redis-py-style uuid hex token


def _clients(cluster):
    return [redis.Redis(port=p) for p in cluster.ports]


def _statuses(op):
    """{status: count} of an operation's per-node outcomes."""
    out = {}
    for o in op.outcomes():
        out[o.status] = out.get(o.status, 0) + 1
    return out


def _close(cs):
    for c in cs:
        c.close()


def _wait_gone(cs, key, timeout=3.0):
    """Poll until ``key`` is absent on every client's node; the values left."""
    deadline = time.monotonic() + timeout
    while True:
        vals = [c.get(key) for c in cs]
        if not any(v is not None for v in vals) or time.monotonic() > deadline:
            return vals
        time.sleep(0.02)


# -- granted on a majority ------------------------------------------------------


def test_sync_caller_token_granted(sync_core, clusters):
    """The caller's token is what every node holds, with PX as given; the
    lock released through the normal op deletes it everywhere."""
    cluster = clusters(3)
    cs = _clients(cluster)
    try:
        with SyncLockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
            op = locks.attempt_token("fp:a", TOKEN, 5000)
            lock = op.result
            assert lock is not None and lock.token == TOKEN
            assert _statuses(op).get("ok", 0) >= 2     # decided at a majority; the third may be pending
            assert 3.0 < lock.validity <= 5.0
            assert [c.get("fp:a") for c in cs] == [TOKEN] * 3
            assert all(3000 < c.pttl("fp:a") <= 5000 for c in cs)
            # Another token while held: refused everywhere, and its clean-up
            # (none: every node said "held") leaves our key alone.
            op2 = locks.attempt_token("fp:a", b"other-token", 5000)
            assert op2.result is None
            assert _statuses(op2).get("held", 0) >= 2
            assert [c.get("fp:a") for c in cs] == [TOKEN] * 3
            assert lock.release() is True
            assert [c.get("fp:a") for c in cs] == [None] * 3
    finally:
        _close(cs)


def test_async_caller_token_granted(run, core, clusters):
    """The asyncio twin of the test above."""
    cluster = clusters(3)
    cs = _clients(cluster)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            op = await locks.attempt_token("fp:b", TOKEN, 5000)
            lock = op.result
            assert lock is not None and lock.token == TOKEN
            assert _statuses(op).get("ok", 0) >= 2     # decided at a majority; the third may be pending
            assert [c.get("fp:b") for c in cs] == [TOKEN] * 3
            assert all(3000 < c.pttl("fp:b") <= 5000 for c in cs)
            assert await lock.extend(8.0) is True
            assert all(5000 < c.pttl("fp:b") <= 8000 for c in cs)
            assert await lock.release() is True
            assert [c.get("fp:b") for c in cs] == [None] * 3

    try:
        run(body())
    finally:
        _close(cs)


# -- a held key: refused, and our SETs cleaned up --------------------------------


def test_sync_held_key_refused_and_cleaned_up(sync_core, clusters):
    """Another holder on two of three nodes: no quorum, and the SET that
    landed on the third node is released by the engine (no orphan).  Negative
    control: with the engine's clean-up release disabled (``send_release``
    made a no-op in _pycore), node 2 kept our token (the whole 5 s PX; the
    asyncio twin's key, without PX, for good)."""
    cluster = clusters(3)
    cs = _clients(cluster)
    try:
        for c in cs[:2]:
            c.set("fp:held", b"someone-else", px=5000)
        with SyncLockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
            op = locks.attempt_token("fp:held", TOKEN, 5000)
            assert op.result is None
            assert _statuses(op).get("held") == 2
            assert _wait_gone(cs[2:], "fp:held", timeout=1.0) == [None]
            assert [c.get("fp:held") for c in cs[:2]] == [b"someone-else"] * 2
    finally:
        _close(cs)


def test_async_held_key_refused_and_cleaned_up(run, core, clusters):
    """The asyncio twin of the test above (no PX this time: an orphan would
    never expire)."""
    cluster = clusters(3)
    cs = _clients(cluster)
    for c in cs[1:]:
        c.set("fp:held2", b"someone-else", px=900)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            op = await locks.attempt_token("fp:held2", TOKEN)
            assert op.result is None
            assert _statuses(op).get("held") == 2
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and cs[0].get("fp:held2") is not None:
                await asyncio.sleep(0.02)

    try:
        run(body())
        assert cs[0].get("fp:held2") is None, "node 0 kept the failed attempt's key (no expiry)"
        assert [c.get("fp:held2") for c in cs[1:]] == [b"someone-else"] * 2
    finally:
        _close(cs)


# -- no PX: no expiry ------------------------------------------------------------


def test_sync_no_px_has_no_ttl(sync_core, clusters):
    """px None (and 0): ``SET key token NX`` without PX -- every node's PTTL is
    -1 (redis-py's ``timeout=None`` locks); the lease has validity ``inf``
    and stays valid until released.  ``extend()`` with no ttl is refused
    (PEXPIRE 0 would delete the key; before the guard, the engine sent it
    and the key was gone on every node), ``extend(ttl)`` gives it a TTL."""
    cluster = clusters(3)
    cs = _clients(cluster)
    try:
        with SyncLockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
            for px, key in ((None, "fp:nopx"), (0, "fp:nopx0")):
                lock = locks.attempt_token(key, TOKEN, px).result
                assert lock is not None
                assert [c.pttl(key) for c in cs] == [-1] * 3
                assert lock.validity == math.inf and lock.valid
                assert "no expiry" in repr(lock) and TOKEN.decode() not in repr(lock)
                with pytest.raises(ValueError, match="ttl"):
                    lock.extend()
                assert [c.get(key) for c in cs] == [TOKEN] * 3
                assert lock.extend(5.0) is True
                assert all(3000 < c.pttl(key) <= 5000 for c in cs)
                assert 3.0 < lock.validity <= 5.0
                assert lock.release() is True
                assert [c.get(key) for c in cs] == [None] * 3
    finally:
        _close(cs)


def test_async_no_px_has_no_ttl(run, core, clusters):
    """The asyncio twin of the test above."""
    cluster = clusters(3)
    cs = _clients(cluster)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            lock = (await locks.attempt_token("fp:nopx", TOKEN)).result
            assert lock is not None
            assert [c.pttl("fp:nopx") for c in cs] == [-1] * 3
            assert lock.validity == math.inf
            with pytest.raises(ValueError, match="ttl"):
                await lock.extend()
            assert await lock.release() is True
            assert [c.get("fp:nopx") for c in cs] == [None] * 3

    try:
        run(body())
    finally:
        _close(cs)


# -- a node down -------------------------------------------------------------------


def test_sync_one_node_down_still_granted_two_down_refused(sync_core, clusters, free_port):
    """One of three nodes unreachable: granted on the other two, the per-node
    outcome says "down".  Two of three unreachable: refused, and the SET that
    landed on the live node is released."""
    cluster = clusters(3)
    cs = _clients(cluster)
    dead = f"redis://127.0.0.1:{free_port}"
    try:
        with SyncLockManager(cluster.urls[:2] + [dead], ttl=5.0, connect_timeout=0.5,
                             _core=sync_core) as locks:
            op = locks.attempt_token("fp:down", TOKEN, 900)
            assert op.result is not None
            assert [o.status for o in op.outcomes()] == ["ok", "ok", "down"]
            assert [c.get("fp:down") for c in cs[:2]] == [TOKEN] * 2
            op.result.release()
        with SyncLockManager(cluster.urls[:1] + [dead, f"redis://127.0.0.1:{free_port + 1}"], ttl=5.0,
                             connect_timeout=0.5, _core=sync_core) as locks:
            op = locks.attempt_token("fp:down2", TOKEN, 900)
            assert op.result is None
            assert [o.status for o in op.outcomes()][1:] == ["down", "down"]
            assert _wait_gone(cs[:1], "fp:down2") == [None]
    finally:
        _close(cs)


def test_async_one_node_down_still_granted(run, core, clusters, free_port):
    """The asyncio twin of the first half of the test above."""
    cluster = clusters(3)
    cs = _clients(cluster)
    dead = f"redis://127.0.0.1:{free_port}"

    async def body():
        async with LockManager(cluster.urls[:2] + [dead], ttl=5.0, connect_timeout=0.5, _core=core) as locks:
            op = await locks.attempt_token("fp:down", TOKEN, 900)
            assert op.result is not None
            assert [o.status for o in op.outcomes()] == ["ok", "ok", "down"]
            assert await op.result.release() is True

    try:
        run(body())
        assert [c.get("fp:down") for c in cs] == [None] * 3
    finally:
        _close(cs)


# -- bad input: at once, naming the argument ------------------------------------------


def test_sync_too_short_px_and_bad_tokens_raise_at_once(sync_core, clusters):
    """A PX too short to ever leave validity after the drift allowance
    (``px*0.01 + 2 ms``, + 1 ms) raises ValueError naming ``px`` at once,
    sending nothing -- the first-round redis-py drop-in retried such a lock
    forever (``Lock(r, "x", timeout=0.001).acquire()`` never returned).
    Tokens that are not bytes, empty or over 512 bytes, and a PX that is
    not an int, raise naming the argument, never echoing the token."""
    cluster = clusters(3)
    cs = _clients(cluster)
    try:
        with SyncLockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
            t = time.monotonic()
            for px in (1, 2, 3):
                with pytest.raises(ValueError, match=r"px=.*too short"):
                    locks.attempt_token("fp:short", TOKEN, px)
                with pytest.raises(ValueError, match=r"px=.*too short"):
                    locks.checkout().attempt_token("fp:short", TOKEN, px)   # the engine itself
            assert time.monotonic() - t < 1.0
            locks.attempt_token("fp:short", TOKEN, 4)   # 4 ms: possible, so no error
            with pytest.raises(TypeError, match="token"):
                locks.attempt_token("fp:x", "a-str-token", 500)
            with pytest.raises(ValueError, match="token"):
                locks.attempt_token("fp:x", b"", 500)
            with pytest.raises(ValueError, match="token") as ei:
                locks.attempt_token("fp:x", b"s3cret" * 100, 500)
            assert "s3cret" not in str(ei.value)
            with pytest.raises(TypeError, match="px"):
                locks.attempt_token("fp:x", TOKEN, 0.5)
            with pytest.raises(TypeError, match="px"):
                locks.attempt_token("fp:x", TOKEN, True)
            with pytest.raises(ValueError, match="px"):
                locks.attempt_token("fp:x", TOKEN, -5)
            with pytest.raises(ValueError, match="max_ttl"):
                locks.attempt_token("fp:x", TOKEN, 10**12)
            assert [c.get("fp:x") for c in cs] == [None] * 3
    finally:
        _close(cs)


def test_async_too_short_px_raises_at_once(run, core, clusters):
    """The asyncio twin: ValueError naming ``px`` before anything is sent."""
    cluster = clusters(3)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            t = time.monotonic()
            with pytest.raises(ValueError, match=r"px=.*too short"):
                await locks.attempt_token("fp:short", TOKEN, 2)
            with pytest.raises(TypeError, match="token"):
                await locks.attempt_token("fp:short", 12345, 500)
            assert time.monotonic() - t < 1.0

    run(body())


def test_fenced_manager_refuses_caller_tokens(sync_core, clusters):
    """A fencing manager's acquires go through the fence script; a plain
    caller-token SET would hand out a lock without a fence, so it is refused."""
    cluster = clusters(3)
    with SyncLockManager(cluster.urls, ttl=5.0, fencing=True, _core=sync_core) as locks:
        with pytest.raises(ValueError, match="fence"):
            locks.attempt_token("fp:f", TOKEN, 900)


# -- cancellation ---------------------------------------------------------------------------


def test_async_cancelled_attempt_leaves_no_key(run, core, clusters):
    """An attempt cancelled while the SETs (without PX: nothing would ever
    expire them) are out leaves no key once the replies are in."""
    cluster = clusters(3)
    cs = _clients(cluster)

    async def body():
        async with LockManager(cluster.urls, ttl=5.0, _core=core) as locks:
            for i in range(20):
                task = asyncio.ensure_future(locks.attempt_token(f"fp:c{i}", TOKEN))
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                task.cancel()
                try:
                    op = await task
                except asyncio.CancelledError:
                    pass
                else:
                    await op.result.release()
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and any(c.dbsize() for c in cs):
                await asyncio.sleep(0.05)

    try:
        run(body())
        assert [c.dbsize() for c in cs] == [0] * 3
    finally:
        _close(cs)


# -- the drop-ins on the fast path ---------------------------------------------------------


@pytest.fixture
def compat_core(core):
    """The drop-ins' shared managers on the engine build under test."""
    from quorumlock import compat

    compat.set_manager_options(_core=core)
    yield core
    compat.set_manager_options()


def _in_thread(fn, wait=3.0):
    """Run ``fn`` in a daemon thread: ``(finished, result or exception)``."""
    import threading

    out = []

    def body():
        try:
            out.append(fn())
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(wait)
    return (not t.is_alive()), (out[0] if out else None)


def test_pottery_blocking_acquire_too_short_raises_at_once(compat_core, clusters):
    """pottery's ``Redlock(..., auto_release_time=0.001).acquire()`` (blocking,
    and ``with redlock:``) can never be valid: it raises ValueError naming
    ``auto_release_time`` at once; the non-blocking attempt stays False, as
    pottery's own suite expects.  First-round code (h19-dropin's drop-in):
    the blocking acquire was still retrying after 3 s."""
    from quorumlock.compat.pottery import Redlock

    cluster = clusters(3)
    cs = _clients(cluster)
    try:
        tiny = Redlock(key="fp:tiny", masters=set(cs), auto_release_time=0.001)
        finished, result = _in_thread(tiny.acquire)
        assert finished, "blocking acquire with auto_release_time=0.001 still running after 3 s"
        assert isinstance(result, ValueError) and "auto_release_time=0.001" in str(result), result
        assert tiny.acquire(blocking=False) is False
        finished, result = _in_thread(lambda: tiny.__enter__())
        assert finished and isinstance(result, ValueError), result
        assert [c.exists("redlock:fp:tiny") for c in cs] == [0] * 3
    finally:
        _close(cs)


def test_drop_ins_take_the_engine_path(compat_core, clusters, monkeypatch):
    """Every drop-in's acquire goes through ``attempt_token`` (and redis-py's
    and pottery's release through ``release_op``, python-redis-lock's through
    ``release_token`` with its wake-up list), with the class's own token on
    the nodes.  First-round code: 0 calls (the drop-ins sent per-node
    commands through ``call_nodes`` and counted the replies themselves);
    python-redis-lock's release went through ``call_nodes`` until
    ``release_token`` (0 calls)."""
    from quorumlock.compat import pottery, redis_lock, redis_py

    cluster = clusters(3)
    cs = _clients(cluster)
    calls = {"attempt_token": 0, "release_op": 0, "release_token": 0}
    for name in calls:
        orig = getattr(SyncLockManager, name, None)
        if orig is None:
            continue

        def counted(self, *a, _orig=orig, _name=name, **k):
            calls[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(SyncLockManager, name, counted)
    try:
        lk = redis_py.Lock(cs, "fp:rp", timeout=5)
        assert lk.acquire(blocking=False)
        assert [c.get("fp:rp") for c in cs] == [lk.local.token] * 3
        lk.release()
        rl = pottery.Redlock(key="fp:po", masters=set(cs), auto_release_time=5)
        assert rl.acquire(blocking=False)
        rl.release()
        nl = redis_lock.Lock(cs, "fp:rl", expire=5)
        assert nl.acquire(blocking=False)
        assert [c.get("lock:fp:rl") for c in cs] == [nl.id.encode()] * 3
        nl.release()
        assert calls == {"attempt_token": 3, "release_op": 2, "release_token": 1}
        for c in cs:
            assert set(c.keys()) <= {b"lock-signal:fp:rl"}   # python-redis-lock's wake-up list
    finally:
        _close(cs)


def test_aioredlock_too_short_lock_timeout_raises_at_once(run, compat_core, clusters):
    """aioredlock's ``lock(resource, lock_timeout=0.001)``: ValueError naming
    ``lock_timeout`` before anything is sent.  First-round code (h19-dropin's
    drop-in): three attempts (SETs on every node) and ``LockError('Lock
    timeout')``."""
    from quorumlock.compat.aioredlock import Aioredlock

    cluster = clusters(3)
    cs = _clients(cluster)

    async def body():
        manager = Aioredlock([{"host": "127.0.0.1", "port": p} for p in cluster.ports],
                             retry_delay_min=0.01, retry_delay_max=0.02)
        try:
            with pytest.raises(ValueError, match="lock_timeout=0.001"):
                await manager.lock("fp:aio-tiny", lock_timeout=0.001)
            lock = await manager.lock("fp:aio", lock_timeout=2)
            assert [c.get("fp:aio") for c in cs] == [lock.id.encode()] * 3
            await manager.unlock(lock)
        finally:
            await manager.destroy()

    try:
        run(body())
        assert [c.get("fp:aio") for c in cs] == [None] * 3
    finally:
        _close(cs)
