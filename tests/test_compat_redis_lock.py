"""``quorumlock.compat.redis_lock``: the drop-in for python-redis-lock's
``redis_lock`` module, against real nodes (N = 1 and N = 3), on both engine
builds.

python-redis-lock's own suite runs against it with
``tests/peer_suites/run_peer_suites.py --redis-lock DIR``; the tests here are ours."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis

from quorumlock import compat
from quorumlock.compat import redis_lock
from quorumlock.compat.redis_lock import (
    AlreadyAcquired,
    InvalidTimeout,
    Lock,
    NotAcquired,
    NotExpirable,
    QuorumUnavailable,
    TimeoutNotUsable,
    TimeoutTooLarge,
    reset_all,
)

from _engine_fixtures import clusters, core, free_port, _shared_clusters  # noqa: F401


@pytest.fixture
def sync_core(core):
    if not hasattr(core, "SyncEngine"):
        pytest.skip(f"{core.IMPLEMENTATION} engine has no blocking driver yet")
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


def _nodes_arg(cluster, n):
    clients = _clients(cluster)
    return clients[0] if n == 1 else clients


def test_exceptions_and_loggers():
    """The exception names and bases, and the logger names, of python-redis-lock."""
    for exc in (AlreadyAcquired, NotAcquired, redis_lock.AlreadyStarted, TimeoutNotUsable, InvalidTimeout,
                TimeoutTooLarge, NotExpirable):
        assert exc.__bases__ == (RuntimeError,)
    assert issubclass(QuorumUnavailable, redis.exceptions.ConnectionError)
    assert redis_lock.logger_for_acquire.name == "redis_lock.acquire"
    assert redis_lock.logger_for_release.name == "redis_lock.release"
    assert redis_lock.logger_for_refresh_thread.name == "redis_lock.refresh.thread"


@pytest.mark.parametrize("n", [1, 3])
def test_state_on_every_node(sync_core, clusters, n, caplog):
    """The keys (``lock:<name>`` = id with the expiry, ``lock-signal:<name>``
    pushed at release) on every node, the methods' results, and the log lines."""
    cluster = clusters(n)
    nodes = _nodes_arg(cluster, n)
    lock = Lock(nodes, "job", expire=30)
    assert len(lock.id) == 24  # b64 of 18 random bytes, as in the original
    with caplog.at_level(logging.DEBUG, logger="redis_lock"):
        assert lock.acquire() is True
    assert _on_nodes(cluster, "GET", "lock:job") == [lock.id.encode()] * n
    assert all(28 <= t <= 30 for t in _on_nodes(cluster, "TTL", "lock:job"))
    assert lock.locked() is True and lock.get_owner_id() == lock.id
    other = Lock(nodes, "job")
    assert other.locked() is True  # whoever holds it
    with caplog.at_level(logging.DEBUG, logger="redis_lock"):
        assert other.acquire(blocking=False) is False
    with pytest.raises(AlreadyAcquired):
        lock.acquire()
    with pytest.raises(NotAcquired):
        other.release()
    with pytest.raises(NotAcquired):
        other.extend(100)
    lock.extend(1000)
    assert all(990 < t <= 1000 for t in _on_nodes(cluster, "TTL", "lock:job"))
    with caplog.at_level(logging.DEBUG, logger="redis_lock"):
        lock.release()
    assert _on_nodes(cluster, "EXISTS", "lock:job") == [0] * n
    assert _on_nodes(cluster, "LLEN", "lock-signal:job") == [1] * n
    assert all(0 < t <= 1000 for t in _on_nodes(cluster, "PTTL", "lock-signal:job"))
    assert lock.locked() is False and lock.get_owner_id() is None
    with pytest.raises(NotAcquired):
        lock.release()
    lines = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("redis_lock")]
    assert lines == [
        ("redis_lock.acquire", "DEBUG", "Acquiring Lock('lock:job') ..."),
        ("redis_lock.acquire", "INFO", "Acquired Lock('lock:job')."),
        ("redis_lock.acquire", "DEBUG", "Acquiring Lock('lock:job') ..."),
        ("redis_lock.acquire", "WARNING", "Failed to acquire Lock('lock:job')."),
        ("redis_lock.release", "DEBUG", "Releasing Lock('lock:job')."),
    ]
    # no expiry: TTL -1 on the nodes, extend needs an expire and finds none
    forever = Lock(nodes, "forever", id=b"me")
    assert forever.acquire()
    assert _on_nodes(cluster, "TTL", "lock:forever") == [-1] * n
    with pytest.raises(NotExpirable):
        forever.extend(expire=10)
    with pytest.raises(TypeError):
        forever.extend()
    Lock(nodes, "forever", id="me").release()  # another object with the same id may release it
    with pytest.raises(NotAcquired):
        forever.release()


def _calls(cluster, command):
    """How many times every node ran ``command`` since its last CONFIG RESETSTAT
    (``"get"``: the clients' GETs, without those that scripts ran: the
    release scripts read the key once per call)."""
    out = []
    for c in _clients(cluster):
        stats = c.info("commandstats")
        count = stats.get(f"cmdstat_{command}", {}).get("calls", 0)
        if command == "get":
            count -= sum(stats.get(f"cmdstat_{s}", {}).get("calls", 0) for s in ("evalsha", "eval"))
        out.append(count)
        c.close()
    return out


@pytest.mark.parametrize("n", [1, 3])
def test_acquire_reads_the_owner_only_when_needed(sync_core, clusters, n):
    """``acquire()`` sends no ``GET`` when the SET NX decides (a fresh lock, or
    one released since), reads the owner once after a failed SET, and reads it
    before any SET when its id may already hold the lock (given ``id``, or
    acquired by this object, or read through ``.id``): ``AlreadyAcquired``
    and the argument errors come as in python-redis-lock."""
    cluster = clusters(n)
    nodes = _nodes_arg(cluster, n)
    _on_nodes(cluster, "CONFIG", "RESETSTAT")
    lock = Lock(nodes, "fast", expire=30)
    assert lock.acquire(blocking=False) is True
    assert (_calls(cluster, "get"), _calls(cluster, "set")) == ([0] * n, [1] * n)  # no owner read
    lock.release()
    _on_nodes(cluster, "CONFIG", "RESETSTAT")
    assert lock.acquire() is True  # released since: no read either
    assert (_calls(cluster, "get"), _calls(cluster, "set")) == ([0] * n, [1] * n)
    other = Lock(nodes, "fast")
    assert other.acquire(blocking=False) is False
    assert (_calls(cluster, "get"), _calls(cluster, "set")) == ([1] * n, [2] * n)  # failed SET, one read
    with pytest.raises(TimeoutNotUsable):
        other.acquire(blocking=False, timeout=1)
    with pytest.raises(AlreadyAcquired):  # this object holds it: read first, no SET
        lock.acquire()
    with pytest.raises(AlreadyAcquired):  # the owner check comes before the argument check
        lock.acquire(blocking=False, timeout=1)
    assert _calls(cluster, "set") == [2] * n
    twin = Lock(nodes, "fast", id=lock.id)
    with pytest.raises(AlreadyAcquired):
        twin.acquire()
    lock.release()
    # An id handed out through ``.id``: the object reads the owner first, as
    # for a given id, so its failed attempt never takes the holder's key.
    first = Lock(nodes, "shared-id", expire=30)
    holder = Lock(nodes, "shared-id", expire=30, id=first.id)
    assert holder.acquire(blocking=False) is True
    _on_nodes(cluster, "CONFIG", "RESETSTAT")
    with pytest.raises(AlreadyAcquired):
        first.acquire()
    assert (_calls(cluster, "get"), _calls(cluster, "set")) == ([1] * n, [0] * n)
    assert _on_nodes(cluster, "GET", "lock:shared-id") == [holder.id.encode()] * n
    first.release()
    assert _on_nodes(cluster, "EXISTS", "lock:shared-id") == [0] * n
    # An id taken from the nodes (not through ``.id``): the object tries
    # first; AlreadyAcquired all the same, and the lock stays held on a
    # majority (the failed attempt's clean-up may reach the nodes that had not
    # answered when it was decided: docs/migrating.md).
    blind = Lock(nodes, "from-nodes", expire=30)
    copy = Lock(nodes, "from-nodes", expire=30, id=blind._id)
    assert copy.acquire(blocking=False) is True
    with pytest.raises(AlreadyAcquired):
        blind.acquire()
    values = _on_nodes(cluster, "GET", "lock:from-nodes")
    assert values.count(blind._id.encode()) >= n // 2 + 1
    copy.release()


@pytest.mark.parametrize("n", [1, 3])
def test_release_wakes_the_waiter(sync_core, clusters, n):
    """A blocked ``acquire`` waits in BLPOP on the signal list and is woken by
    ``release()``, not by its timeout.  With the push removed from the release
    script (the wake-up broken), the waiter took the full 8 s timeout; here
    it gets the lock about 0.3 s after the holder started."""
    cluster = clusters(n)
    nodes = _nodes_arg(cluster, n)
    holder = Lock(nodes, "wake")
    assert holder.acquire()
    threading.Timer(0.3, holder.release).start()
    waiter = Lock(nodes, "wake")
    t0 = time.monotonic()
    assert waiter.acquire(timeout=8) is True
    took = time.monotonic() - t0
    assert took < 4.0, f"woken after {took:.2f} s: by the timeout, not by the release"
    assert waiter.get_owner_id() == waiter.id
    # reset() wakes waiters too
    threading.Timer(0.3, Lock(nodes, "wake").reset).start()
    t0 = time.monotonic()
    third = Lock(nodes, "wake")
    assert third.acquire(timeout=8) is True and time.monotonic() - t0 < 4.0
    third.release()
    # the waits leave no connection blocked on the nodes
    time.sleep(0.05)
    blocked = [c.info("clients")["blocked_clients"] for c in _clients(cluster)]
    assert blocked == [0] * n


def test_timeouts_and_bad_input(sync_core, clusters):
    cluster = clusters(1)
    r = redis.Redis(port=cluster.ports[0])
    with Lock(r, "t"):
        waiter = Lock(r, "t")
        t0 = time.monotonic()
        assert waiter.acquire(timeout=1) is False
        assert 0.9 < time.monotonic() - t0 < 3.5
        with pytest.raises(TimeoutNotUsable):
            waiter.acquire(blocking=False, timeout=1)
        with pytest.raises(InvalidTimeout):
            waiter.acquire(timeout=-1)
        with pytest.raises(ValueError):
            waiter.acquire(timeout="soon")
    with pytest.raises(TimeoutTooLarge):
        Lock(r, "t", expire=1).acquire(timeout=2)
    with pytest.raises(ValueError, match="StrictRedis"):
        Lock(object(), "t")
    Lock(object(), "t", strict=False)  # constructed; no I/O until used
    with pytest.raises(ValueError, match="negative"):
        Lock(r, "t", expire=-1)
    with pytest.raises(ValueError, match="auto_renewal"):
        Lock(r, "t", auto_renewal=True)
    with pytest.raises(TypeError, match="id"):
        Lock(r, "t", id=object())
    with pytest.raises(TypeError, match="name"):
        Lock(r, b"t")
    assert Lock(r, "t", expire=0)._expire is None and Lock(r, "t", expire="5")._expire == 5
    # the context manager with blocking=False raises NotAcquired when it is held
    with Lock(r, "t"):
        with pytest.raises(NotAcquired):
            with Lock(r, "t", blocking=False):
                pass  # pragma: no cover


def test_auto_renewal(sync_core, clusters, caplog):
    """The renewal thread keeps a 1 s lock for 1.6 s and stops at release,
    with python-redis-lock's log lines."""
    cluster = clusters(3)
    clients = _clients(cluster)
    with caplog.at_level(logging.DEBUG, logger="redis_lock"):
        lock = Lock(clients, "renew", expire=1, auto_renewal=True)
        assert lock._lock_renewal_interval == pytest.approx(2 / 3)
        assert lock.acquire()
        time.sleep(1.6)
        assert lock.get_owner_id() == lock.id, "expired: not renewed"
        lock.release()
    assert lock._lock_renewal_thread is None
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("redis_lock.refresh")]
    assert messages[0] == "Starting renewal thread for Lock('lock:renew'). Refresh interval: 0.6666666666666666 seconds."
    assert "Refreshing Lock('lock:renew')." in messages
    assert messages[-3:] == ["Signaling renewal thread for Lock('lock:renew') to exit.",
                             "Exiting renewal thread for Lock('lock:renew').",
                             "Renewal thread for Lock('lock:renew') exited."]


def test_quorum_minority_and_undo(sync_core, clusters):
    """Held by two of three; a failed attempt takes its key back from the node
    where it landed."""
    cluster = clusters(3)
    clients = _clients(cluster)
    clients[2].set("lock:q", "someone-else")
    lock = Lock(clients, "q", expire=10)
    assert lock.acquire(blocking=False) is True
    assert lock.get_owner_id() == lock.id  # on a majority
    lock.release()
    clients[1].set("lock:q", "someone-else")
    late = Lock(clients, "q", expire=10)
    assert late.acquire(blocking=False) is False
    assert _on_nodes(cluster, "GET", "lock:q") == [None, b"someone-else", b"someone-else"]
    assert late.get_owner_id() == "someone-else" and late.locked()


def test_quorum_unavailable(sync_core, clusters, free_port):
    cluster = clusters(1)
    nodes = [redis.Redis(port=cluster.ports[0]), redis.Redis(port=free_port), redis.Redis(port=free_port + 1)]
    lock = Lock(nodes, "down", expire=5)
    with pytest.raises(QuorumUnavailable) as ei:
        lock.acquire(blocking=False)
    assert isinstance(ei.value, redis.exceptions.ConnectionError)
    assert [o.status for o in ei.value.outcomes].count("down") == 2
    assert _on_nodes(cluster, "EXISTS", "lock:down") == [0]  # the one SET that landed was taken back


@pytest.mark.parametrize("n", [1, 3])
def test_reset_all(sync_core, clusters, n):
    cluster = clusters(n)
    nodes = _nodes_arg(cluster, n)
    a, b = Lock(nodes, "a"), Lock(nodes, "b", expire=60)
    assert a.acquire(blocking=False) and b.acquire(blocking=False)
    _clients(cluster)[0].set("unrelated", "1")
    reset_all(nodes)
    assert _on_nodes(cluster, "EXISTS", "lock:a", "lock:b") == [0] * n
    assert _on_nodes(cluster, "LLEN", "lock-signal:a") == [1] * n
    assert _on_nodes(cluster, "EXISTS", "unrelated")[0] == 1
    assert Lock(nodes, "a").acquire(blocking=False)


def _child_acquires(port, result):
    lock = Lock(redis.Redis(port=port), "forked")
    result.value = 1 if lock.acquire(timeout=5) else 2
    lock.release()


def test_forked_child_gets_its_own_connections(sync_core, clusters):
    """A child forked while the parent's shared manager is connected must not
    use the parent's sockets.  Before the fork hook, the child's SET went on
    the parent's connection: the parent's next reset() read the child's reply
    or timed out (QuorumUnavailable), and the child was never woken: here its
    acquire(timeout=5) returned False (value 2); python-redis-lock's
    test_reset_signalizes failed 4 of 4."""
    import multiprocessing

    cluster = clusters(1)
    r = redis.Redis(port=cluster.ports[0])
    holder = Lock(r, "forked")
    assert holder.acquire()
    ctx = multiprocessing.get_context("fork")
    result = ctx.Value("B", 0)
    child = ctx.Process(target=_child_acquires, args=(cluster.ports[0], result))
    child.start()
    try:
        child.join(0.5)
        assert holder.get_owner_id() == holder.id  # the parent's connection still answers the parent
        holder.reset()
        child.join(5)
        assert result.value == 1, "the child was not woken / could not acquire"
        assert child.exitcode == 0
        assert Lock(r, "forked").acquire(blocking=False)  # the parent's connections still work
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def test_wakeup_with_a_node_down(sync_core, clusters, free_port):
    """Two live nodes of three: the waiter waits on the live nodes' signal
    lists (the dead one is skipped at once) and is woken by the release.
    Before the waits had connections of their own (pooled ones, with redis-py's
    retries on the dead node): 4.5 s for a release 0.3 s away."""
    cluster = clusters(2)
    nodes = _clients(cluster) + [redis.Redis(port=free_port)]
    holder = Lock(nodes, "down-wake", expire=30)
    assert holder.acquire()
    threading.Timer(0.3, holder.release).start()
    waiter = Lock(nodes, "down-wake", expire=30)
    t0 = time.monotonic()
    assert waiter.acquire(timeout=8) is True
    assert time.monotonic() - t0 < 4.0
    waiter.release()
