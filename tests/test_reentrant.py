"""``reentrant=True`` (``quorumlock.reentrant``) against real servers, on both
engine builds: the same thread / task re-acquires without I/O, counted; the
last release releases; another owner is refused meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from quorumlock import LockLost, LockManager, LockTimeout
from quorumlock.aio import LockManager as AsyncLockManager

from _engine_fixtures import sync_core, clusters, core, run, _shared_clusters  # noqa: F401


def _held(cluster, key):
    out = []
    for p in cluster.ports:
        c = redis.Redis(port=p)
        out.append(c.get(key))
        c.close()
    return out


def test_nested_blocks_count_and_last_release_frees(sync_core, clusters):
    """Nested ``with locks.lock(key, reentrant=True)`` in one thread: one
    token on the nodes, depth counted, the key still held after the inner
    block, released after the outer one; another thread is refused while the
    owner holds it.  Caught: a wrapper that releases at the first release
    (no count) freed the key under the outer block — another thread then got
    it; on the first-round code ``reentrant=`` is a TypeError."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
        with locks.lock("re:k", reentrant=True) as outer:
            tok = outer.token
            with locks.lock("re:k", reentrant=True) as inner:
                assert inner.token == tok and inner.depth == 2 and inner.lock is outer.lock
                h3 = locks.acquire("re:k", reentrant=True, timeout=0.1)
                assert h3.depth == 3
                h3.release()
                assert h3.release() is False       # one handle counts once
                assert inner.depth == 2
                other = []
                t = threading.Thread(target=lambda: other.append(locks.try_acquire("re:k")))
                t.start()
                t.join(5)
                assert other == [None]
                with pytest.raises(LockTimeout):
                    r = []
                    t = threading.Thread(target=lambda: r.append(_try_reentrant(locks)))
                    t.start()
                    t.join(5)
                    raise r[0]
            assert outer.depth == 1 and _held(cluster, "re:k") == [tok] * 3
        assert outer.released and _held(cluster, "re:k") == [None] * 3


def _try_reentrant(locks):
    try:
        locks.acquire("re:k", reentrant=True, timeout=0.2)
    except LockTimeout as exc:
        return exc
    return AssertionError("another thread re-entered a lock it does not own")


def test_reentry_after_the_lease_ran_out_raises(sync_core, clusters):
    """Re-entering a lock whose lease expired raises ``LockLost`` instead of
    pretending the owner still holds it."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=0.3, _core=sync_core) as locks:
        h = locks.acquire("re:exp", reentrant=True)
        time.sleep(0.4)
        with pytest.raises(LockLost):
            locks.acquire("re:exp", reentrant=True)
        h.release()
        h2 = locks.acquire("re:exp", reentrant=True)   # the entry is gone: a fresh acquire
        assert h2.depth == 1 and h2.valid
        h2.release()


def test_reentrant_auto_extend(sync_core, clusters):
    """Lease options apply to the owner's first acquisition: renewed past the
    TTL through nested blocks."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=0.4, _core=sync_core) as locks:
        with locks.lock("re:ae", reentrant=True, auto_extend=True) as h:
            with locks.lock("re:ae", reentrant=True):
                time.sleep(0.9)
            assert h.valid and h.depth == 1
        assert _held(cluster, "re:ae") == [None] * 3


def test_async_reentrant_per_task(run, core, clusters):
    """asyncio: the owner is the task.  The same task nests; another task
    waits until the owner's last release."""
    cluster = clusters(3)

    async def body():
        async with AsyncLockManager(cluster.urls, ttl=5.0, retry_delay=(0.01, 0.03), _core=core) as locks:
            order = []

            async def other():
                h = await locks.acquire("are:k", reentrant=True, timeout=3.0)
                order.append(("other", h.depth))
                await h.release()

            async with locks.lock("are:k", reentrant=True) as outer:
                async with locks.lock("are:k", reentrant=True) as inner:
                    assert inner.depth == 2 and inner.token == outer.token
                    t = asyncio.ensure_future(other())
                    await asyncio.sleep(0.2)
                    assert not t.done()
                assert outer.depth == 1
                await asyncio.sleep(0.1)
                assert not t.done()
                order.append(("owner", outer.depth))
            await asyncio.wait_for(t, 3.0)
            assert order == [("owner", 1), ("other", 1)]
        assert _held(cluster, "are:k") == [None] * 3

    run(body())


def test_plain_lock_unchanged(sync_core, clusters):
    """Without ``reentrant`` a second acquire by the same thread is refused,
    as before."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
        lk = locks.acquire("re:plain")
        assert locks.try_acquire("re:plain") is None
        with pytest.raises(LockTimeout):
            locks.acquire("re:plain", retry_count=1)
        lk.release()


def test_reentry_racing_the_last_release_from_another_thread(sync_core, clusters, monkeypatch):
    """The owner re-enters just as another thread releases the owner's last
    handle (the interleaving is forced: the owner finds its entry, then the
    other thread's release drops the count to 0 and is on its way to the
    nodes).  The re-entry must then acquire afresh (it waits for that
    release), not revive the dying entry.  Caught: the first-round code
    counted the entry back up from 0 to 1 and returned a handle of depth 1
    while the key was released on 3/3 nodes."""
    from quorumlock import reentrant

    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
        h = locks.acquire("re:race", reentrant=True)
        inside, go = threading.Event(), threading.Event()
        real_release = locks.release_lock

        def slow_release(lock):
            inside.set()
            go.wait(5)
            return real_release(lock)

        real_lookup = reentrant._lookup
        other = threading.Thread(target=h.release)

        def racing_lookup(mgr, key, aio):
            found = real_lookup(mgr, key, aio)
            if not other.is_alive() and not inside.is_set():
                other.start()                   # the last release, from another thread
                assert inside.wait(5)
                threading.Timer(0.05, go.set).start()
            return found

        monkeypatch.setattr(locks, "release_lock", slow_release)
        monkeypatch.setattr(reentrant, "_lookup", racing_lookup)
        h2 = locks.acquire("re:race", reentrant=True, timeout=2.0)
        other.join(5)
        monkeypatch.undo()
        try:
            assert h2.depth == 1
            assert _held(cluster, "re:race") == [h2.token] * 3
        finally:
            h2.release()
        assert _held(cluster, "re:race") == [None] * 3
