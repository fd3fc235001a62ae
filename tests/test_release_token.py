"""The engine's release by caller token (``LockManager.release_token``), the
release of the python-redis-lock drop-in: compare-and-delete of the caller's
token, decided at a majority like ``release_op``, and, with ``signal``, a
wake-up pushed on that list in the same script call where the key was
deleted.  Real servers, both engine builds, both APIs.

Before this op existed every test here failed with AttributeError; the
drop-in's release went through ``call_nodes`` (every node waited for)."""

from __future__ import annotations

import pytest
import redis

from quorumlock import LockManager as SyncLockManager
from quorumlock.aio import LockManager

from _engine_fixtures import clusters, core, free_port, run, sync_core, _shared_clusters  # noqa: F401

TOKEN = b"our-token-0123456789"
OTHER = b"their-token-9876543210"


def _clients(cluster):
    return [redis.Redis(port=p) for p in cluster.ports]


def _close(cs):
    for c in cs:
        c.close()


def test_sync_releases_only_our_token_and_signals_only_when_deleted(sync_core, clusters):
    """Another token's key is left alone and no signal is pushed (False);
    our own key is deleted everywhere, the list then holds one ``1`` with
    the expiry asked for (True).  Checked to fail with the script's token
    comparison removed (the other token's key was deleted)."""
    cluster = clusters(3)
    cs = _clients(cluster)
    try:
        with SyncLockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
            for c in cs:
                c.set("rt:a", OTHER, px=5000)
            op = locks.release_token("rt:a", TOKEN, signal="rt:a:signal", signal_ms=700)
            assert op.result is False
            assert [o.status for o in op.outcomes()].count("held") >= 2
            assert [c.get("rt:a") for c in cs] == [OTHER] * 3
            assert [c.exists("rt:a:signal") for c in cs] == [0] * 3
            for c in cs:
                c.set("rt:a", TOKEN, px=5000)
                c.rpush("rt:a:signal", "stale", "stale")   # deleted before the push, as python-redis-lock does
            op = locks.release_token("rt:a", TOKEN, signal="rt:a:signal", signal_ms=700)
            assert op.result is True
            assert [o.status for o in op.outcomes()].count("ok") >= 2
            locks.release_token("rt:none", TOKEN)            # settles: the late third reply came before this
            assert [c.get("rt:a") for c in cs] == [None] * 3
            assert [c.lrange("rt:a:signal", 0, -1) for c in cs] == [[b"1"]] * 3
            assert all(0 < c.pttl("rt:a:signal") <= 700 for c in cs)
    finally:
        _close(cs)


def test_sync_not_held_is_false_without_signal(sync_core, clusters):
    """No key at all: False, nothing pushed; without ``signal`` it is the
    engine's own release with the caller's token."""
    cluster = clusters(3)
    cs = _clients(cluster)
    try:
        with SyncLockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
            op = locks.release_token("rt:b", TOKEN, signal=b"rt:b:signal")
            assert op.result is False
            assert [c.exists("rt:b:signal") for c in cs] == [0] * 3
            op = locks.attempt_token("rt:b", TOKEN, 5000)
            assert op.result is not None
            op = locks.release_token("rt:b", TOKEN)
            assert op.result is True
            locks.release_token("rt:none", TOKEN)
            assert [c.get("rt:b") for c in cs] == [None] * 3
            assert [c.exists("rt:b:signal") for c in cs] == [0] * 3
    finally:
        _close(cs)


def test_sync_decided_at_a_majority_with_one_node_down(sync_core, clusters, free_port):
    """One of three nodes unreachable: True on the other two, "down" for the
    third; two of three unreachable: False (no majority deleted)."""
    cluster = clusters(3)
    cs = _clients(cluster)
    dead = f"redis://127.0.0.1:{free_port}"
    try:
        with SyncLockManager(cluster.urls[:2] + [dead], ttl=5.0, connect_timeout=0.5, _core=sync_core) as locks:
            for c in cs[:2]:
                c.set("lock:rt", TOKEN, px=5000)
            op = locks.release_token("lock:rt", TOKEN, signal="lock-signal:rt")
            assert op.result is True
            assert [o.status for o in op.outcomes()] == ["ok", "ok", "down"]
            assert [c.lrange("lock-signal:rt", 0, -1) for c in cs[:2]] == [[b"1"]] * 2
        with SyncLockManager(cluster.urls[:1] + [dead, f"redis://127.0.0.1:{free_port + 1}"], ttl=5.0,
                             connect_timeout=0.5, _core=sync_core) as locks:
            cs[0].set("lock:rt2", TOKEN, px=5000)
            op = locks.release_token("lock:rt2", TOKEN, signal="lock-signal:rt2")
            assert op.result is False
            assert [o.status for o in op.outcomes()][1:] == ["down", "down"]   # decided at once: no majority left
    finally:
        _close(cs)


def test_sync_noscript_falls_back_to_eval(sync_core, clusters):
    """After SCRIPT FLUSH on every node the EVALSHA gets NOSCRIPT; the op
    re-sends the script body (EVAL) and still deletes and signals."""
    cluster = clusters(3)
    cs = _clients(cluster)
    try:
        with SyncLockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
            for c in cs:
                c.set("rt:c", TOKEN, px=5000)
                c.script_flush()
            op = locks.release_token("rt:c", TOKEN, signal="rt:c:signal", signal_ms=900)
            assert op.result is True
            locks.release_token("rt:none", TOKEN)
            assert [c.get("rt:c") for c in cs] == [None] * 3
            assert [c.lrange("rt:c:signal", 0, -1) for c in cs] == [[b"1"]] * 3
    finally:
        _close(cs)


def test_sync_bad_arguments_raise_naming_them(sync_core, clusters):
    """Bad input raises at once, naming the argument, and sends nothing."""
    cluster = clusters(3)
    cs = _clients(cluster)
    try:
        with SyncLockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
            for c in cs:
                c.set("rt:d", TOKEN, px=5000)
            cases = [
                (dict(key=1, token=TOKEN), TypeError, "key"),
                (dict(key="", token=TOKEN), ValueError, "key"),
                (dict(key="rt:d", token="str"), TypeError, "token"),
                (dict(key="rt:d", token=b""), ValueError, "token"),
                (dict(key="rt:d", token=b"x" * 513), ValueError, "token"),
                (dict(key="rt:d", token=TOKEN, signal=5), TypeError, "signal"),
                (dict(key="rt:d", token=TOKEN, signal=""), ValueError, "signal"),
                (dict(key="rt:d", token=TOKEN, signal=b"\xffql:x"), ValueError, "signal"),
                (dict(key="rt:d", token=TOKEN, signal="s", signal_ms=0), ValueError, "signal_ms"),
                (dict(key="rt:d", token=TOKEN, signal="s", signal_ms=-5), ValueError, "signal_ms"),
                (dict(key="rt:d", token=TOKEN, signal="s", signal_ms=2 ** 31), ValueError, "signal_ms"),
                (dict(key="rt:d", token=TOKEN, signal="s", signal_ms=1.5), TypeError, "signal_ms"),
                (dict(key="rt:d", token=TOKEN, signal="s", signal_ms=True), TypeError, "signal_ms"),
                (dict(key="rt:d", token=TOKEN, timeout=-1.0), ValueError, "timeout"),
            ]
            for kw, exc, name in cases:
                key = kw.pop("key")
                token = kw.pop("token")
                with pytest.raises(exc, match=name):
                    locks.release_token(key, token, **kw)
            assert [c.get("rt:d") for c in cs] == [TOKEN] * 3
            assert [c.exists("s") for c in cs] == [0] * 3
    finally:
        _close(cs)


def test_async_release_token(run, core, clusters, free_port):
    """The asyncio twin: only our token, the signal only where deleted, a
    majority with one node down, bad input raising."""
    cluster = clusters(3)
    cs = _clients(cluster)
    dead = f"redis://127.0.0.1:{free_port}"

    async def body():
        async with LockManager(cluster.urls[:2] + [dead], ttl=5.0, connect_timeout=0.5, _core=core) as locks:
            for c in cs:
                c.set("rt:e", OTHER, px=5000)
            op = await locks.release_token("rt:e", TOKEN, signal="rt:e:signal")
            assert op.result is False
            assert [c.get("rt:e") for c in cs] == [OTHER] * 3
            assert [c.exists("rt:e:signal") for c in cs] == [0] * 3
            for c in cs:
                c.set("rt:e", TOKEN, px=5000)
            op = await locks.release_token("rt:e", TOKEN, signal="rt:e:signal", signal_ms=800)
            assert op.result is True
            assert [o.status for o in op.outcomes()] == ["ok", "ok", "down"]
            assert [c.lrange("rt:e:signal", 0, -1) for c in cs[:2]] == [[b"1"]] * 2
            assert all(0 < c.pttl("rt:e:signal") <= 800 for c in cs[:2])
            with pytest.raises(TypeError, match="token"):
                await locks.release_token("rt:e", "not-bytes")
            with pytest.raises(ValueError, match="signal_ms"):
                await locks.release_token("rt:e", TOKEN, signal="x", signal_ms=0)

    try:
        run(body())
    finally:
        _close(cs)


def test_sync_notify_manager_also_publishes_and_lock_delay_refused(sync_core, clusters):
    """On a ``notify=True`` manager the signalled release also publishes on
    ``ql:released:<key>`` (the engine's own waiters are told too); on a
    ``lock_delay`` manager a release by token is refused at once (it would
    leave the delay marker)."""
    cluster = clusters(3)
    cs = _clients(cluster)
    ps = cs[0].pubsub()
    try:
        ps.subscribe("ql:released:rt:f")
        assert ps.get_message(timeout=1.0)["type"] == "subscribe"
        with SyncLockManager(cluster.urls, ttl=5.0, notify=True, _core=sync_core) as locks:
            for c in cs:
                c.set("rt:f", TOKEN, px=5000)
            assert locks.release_token("rt:f", TOKEN, signal="rt:f:signal").result is True
            msg = ps.get_message(timeout=2.0)
            assert msg is not None and msg["type"] == "message" and msg["data"] == b"1"
        with SyncLockManager(cluster.urls, ttl=5.0, lock_delay=0.2, _core=sync_core) as locks:
            cs[0].set("rt:g", TOKEN, px=5000)
            with pytest.raises(ValueError, match="lock_delay"):
                locks.release_token("rt:g", TOKEN, signal="rt:g:signal")
            assert cs[0].get("rt:g") == TOKEN
    finally:
        ps.close()
        _close(cs)


def test_script_loaded_at_connect(sync_core, clusters):
    """The signalled release script is loaded on every node at connect (so
    the first release goes out as EVALSHA and is not answered NOSCRIPT)."""
    from quorumlock import _scripts

    cluster = clusters(3)
    cs = _clients(cluster)
    try:
        for c in cs:
            c.script_flush()
        with SyncLockManager(cluster.urls, ttl=5.0, _core=sync_core):
            assert [c.script_exists(_scripts.RELEASE_SIGNAL_SHA.decode()) for c in cs] == [[True]] * 3
    finally:
        _close(cs)
