"""Safety inside the client process, blocking side (and the asyncio manager
across fork()): a forked child never uses an inherited connection, a
desynchronised connection is detected, and signal-raised exceptions leave no
key behind.  Real servers, real ``os.fork()``, real signals; both engine
builds."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import select
import signal
import threading
import time
from typing import Any, Callable, List

import psutil
import pytest
import redis

from quorumlock import LockManager
from quorumlock.errors import LockTimeout
from quorumlock import aio

from _engine_fixtures import sync_core, clusters, core, free_port, _shared_clusters  # noqa: F401

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _fork(fn: Callable[[], Any]) -> tuple:
    """Run ``fn`` in a forked child; its JSON result comes back on a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            try:
                out = {"ok": fn()}
            except BaseException as exc:  # report, never run the parent's code
                out = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(w, json.dumps(out).encode())
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _collect(pid: int, r: int, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    chunks: List[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError("forked child did not finish in time")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"error": "child wrote nothing"}')


def _hold_everywhere(cluster, key: str) -> None:
    for p in cluster.ports:
        c = redis.Redis(port=p)
        c.set(key, b"someone-else", px=60000)
        c.close()


def _clear(cluster, *keys: str) -> None:
    for p in cluster.ports:
        c = redis.Redis(port=p)
        c.delete(*keys)
        c.close()


def _keys(cluster, pattern: str) -> list:
    out = []
    for i, p in enumerate(cluster.ports):
        c = redis.Redis(port=p)
        out += [(i, k) for k in c.scan_iter(match=pattern, count=1000)]
        c.close()
    return sorted(out)


def _count_keys(cluster, pattern: str) -> int:
    n = 0
    for p in cluster.ports:
        c = redis.Redis(port=p)
        n += sum(1 for _ in c.scan_iter(match=pattern, count=1000))
        c.close()
    return n


# -- fork() after connect: blocking ------------------------------------------


def test_forked_child_never_gets_a_key_held_elsewhere(sync_core, clusters):
    """Fork after connect.  The parent keeps acquiring free keys on its connections while
    forked children try a key that another client holds on *every* node: a
    child must always get None.

    First-round code: the child picked the parent's engine by thread id and
    read replies meant for the parent.  The review's script saw a child get
    the held key; this test, re-run there, failed on the parent's side: 3
    (cython) and 2 (python) of the parent's keys were left on the nodes,
    their release replies read by children."""
    cluster = clusters(3)
    _hold_everywhere(cluster, "f:held")
    try:
        with LockManager(cluster.urls, ttl=5.0, node_timeout=0.2, _core=sync_core) as locks:
            assert locks.try_acquire("f:held") is None

            def child() -> int:
                got = 0
                for _ in range(150):
                    if locks.try_acquire("f:held") is not None:
                        got += 1
                return got

            children = [_fork(child) for _ in range(4)]
            # The parent works its connections hard while the children run.
            end = time.monotonic() + 1.0
            i = 0
            while time.monotonic() < end:
                lk = locks.try_acquire(f"f:free:{i}")
                if lk is not None:
                    lk.release()
                i += 1
            results = [_collect(pid, r) for pid, r in children]
            assert results == [{"ok": 0}] * 4, results
            # ... and the parent itself is still in step.
            lk = locks.try_acquire("f:after")
            assert lk is not None and lk.release() is True
            assert locks.try_acquire("f:held") is None
    finally:
        _clear(cluster, "f:held", "f:after")
    assert _count_keys(cluster, "f:free:*") == 0


def test_forked_workers_keep_working(sync_core, clusters):
    """Fork after connect (pre-fork servers).  Four workers forked from one connected
    manager, and the parent, each run 60 acquire/release cycles at once:
    every cycle succeeds and none stalls.

    First-round code: workers shared the parent's sockets: a worker got 4
    (cython) and 5 (python) of its 60 cycles through."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, node_timeout=1.0, _core=sync_core) as locks:
        locks.try_acquire("w:warm").release()

        def worker(tag: str) -> dict:
            ok = 0
            worst = 0.0
            for j in range(60):
                t0 = time.monotonic()
                lk = locks.try_acquire(f"w:{tag}:{j}")
                if lk is not None and lk.release():
                    ok += 1
                worst = max(worst, time.monotonic() - t0)
            return {"ok": ok, "worst": worst}

        kids = [_fork(lambda t=f"c{k}": worker(t)) for k in range(4)]
        mine = worker("parent")
        results = [_collect(pid, r) for pid, r in kids]
        for res in results:
            assert "ok" in res, res
            assert res["ok"]["ok"] == 60, res
            assert res["ok"]["worst"] < 0.9, res   # below node_timeout: no stall
        assert mine["ok"] == 60 and mine["worst"] < 0.9, mine
    assert _count_keys(cluster, "w:*") == 0


def test_at_fork_hook_resets_before_any_call(sync_core, clusters):
    """The reset happens at fork() itself (os.register_at_fork), not only at
    the child's first checkout: right after the fork the child's manager
    holds no connection set, and the inherited descriptors are closed.

    First-round code: the child still had the parent's set (1) and its 3
    sockets to the nodes open until its first call."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
        locks.try_acquire("h:warm").release()
        ports = set(cluster.ports)

        def child() -> list:
            conns = sum(1 for c in psutil.Process().net_connections(kind="tcp")
                        if c.raddr and c.raddr.port in ports)
            return [len(locks._engines), conns]

        assert _collect(*_fork(child)) == {"ok": [0, 0]}


def test_fork_from_a_thread_other_threads_sets_are_dropped(sync_core, clusters):
    """A fork from a second thread: the child inherits the manager with the
    main thread's set in it (whose thread does not exist in the child).  The
    child connects afresh; the parent's sets still work afterwards."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
        locks.try_acquire("t:main").release()
        box: dict = {}

        def forker() -> None:
            pid, r = _fork(lambda: [locks.try_acquire("t:child") is not None, len(locks._engines)])
            box["res"] = _collect(pid, r)

        t = threading.Thread(target=forker)
        t.start()
        t.join(60)
        assert box["res"] == {"ok": [True, 1]}, box
        lk = locks.try_acquire("t:main2")
        assert lk is not None and lk.release() is True
    _clear(cluster, "t:child")  # the child exits holding it (its TTL would do)


def test_desynchronised_connection_is_reset(sync_core, clusters):
    """Missing replies are detected, not only extra ones.  A reply is read
    away behind the engine's back on nodes 0 and 1 (as a process sharing the
    socket would): the next reply on each is then credited to the wrong
    request.  The overdue slot makes the connection suspect, a probe finds it
    out of step and resets it, and attempts succeed again within seconds.

    First-round code: the connections stayed one reply behind for good:
    0 of 40 attempts over 4 s succeeded (python build; on the cython build
    the stolen read got a release's ``:1`` left unread by an earlier call)."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, node_timeout=0.1, _core=sync_core) as locks:
        eng = locks.checkout()
        locks.try_acquire("d:warm").release()
        locks.call_nodes([("PING",)] * 3)   # every reply owed is in: nothing else to read
        conns = psutil.Process().net_connections(kind="tcp")
        for i in (0, 1):
            fds = [c.fd for c in conns if c.raddr and c.raddr.port == cluster.ports[i] and c.fd >= 0]
            assert len(fds) == 1, fds
            eng.call_op(i, ("PING",))
            eng.flush()
            select.select([fds[0]], [], [], 1.0)
            assert os.read(fds[0], 100) == b"+PONG\r\n"   # the engine never sees it
        results = []
        end = time.monotonic() + 4.0
        j = 0
        while time.monotonic() < end and results[-5:] != [True] * 5:
            lk = locks.try_acquire(f"d:free:{j}")
            results.append(lk is not None and lk.release())
            j += 1
            time.sleep(0.1)
        assert results[-5:] == [True] * 5, results
    time.sleep(0.2)
    assert _count_keys(cluster, "d:*") == 0


# -- fork() after connect: asyncio ------------------------------------------


def test_forked_child_cannot_release_the_parents_lock(sync_core, clusters):
    """Fork while holding a lock.  The child inherits the Lock object, not
    the lease: ``release()``, ``release_many()``, ``extend()`` and a
    ``with locks.lock()`` block the child runs out of (and ``guard()``, which
    would renew it from the child) all raise RuntimeError
    in the child and leave the parent's key on every node; the parent then
    releases it itself.

    Before the fix: the child's ``release()`` returned True and deleted the
    parent's key on 3 of 3 nodes (the ``with`` block's exit did the same),
    while the parent's ``lock.valid`` stayed True: the key was free for
    anyone else (both builds)."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=10.0, node_timeout=0.5, _core=sync_core) as locks:
        lk = locks.try_acquire("pf:held")
        assert lk is not None and lk.pid == os.getpid()

        def child() -> list:
            out = []
            for call in (lk.release, lambda: locks.release_many([lk]), lambda: lk.extend(5.0),
                         lambda: locks.guard(lk)):
                try:
                    call()
                    out.append("no error")
                except RuntimeError as exc:
                    out.append("acquired by process" in str(exc))
            mine = locks.try_acquire("pf:child")   # the child's own locks still work
            out.append(mine is not None and mine.pid == os.getpid() and mine.release())
            return out

        res = _collect(*_fork(child))
        assert res == {"ok": [True, True, True, True, True]}, res
        assert _count_keys(cluster, "pf:held") == 3
        assert lk.valid and lk.release() is True

        cm = locks.lock("pf:with")
        cm.__enter__()

        def child_with() -> str:
            try:
                cm.__exit__(None, None, None)
            except RuntimeError:
                return "refused"
            return "released"

        res = _collect(*_fork(child_with))
        assert res == {"ok": "refused"}, res
        assert _count_keys(cluster, "pf:with") == 3
        cm.__exit__(None, None, None)
        assert _count_keys(cluster, "pf:with") == 0


def test_aio_forked_child_cannot_release_the_parents_lock(core, clusters):
    """The same for an asyncio manager: in a forked child (its own loop), the
    parent's Lock is refused by ``release()``/``extend()``; the key stays on
    every node.  Before the fix: the child's release deleted it on 3 of 3
    nodes (both builds)."""
    cluster = clusters(3)
    loop = asyncio.new_event_loop()
    locks = aio.LockManager(cluster.urls, ttl=10.0, _core=core)
    try:
        loop.run_until_complete(locks.connect())
        lk = loop.run_until_complete(locks.try_acquire("pfa:held"))
        assert lk is not None

        def child() -> list:
            async def main() -> list:
                await locks.connect()
                out = []
                for call in (lk.release, lambda: lk.extend(5.0), lambda: locks.release_many([lk])):
                    try:
                        await call()
                        out.append("no error")
                    except RuntimeError as exc:
                        out.append("acquired by process" in str(exc))
                await locks.close()
                return out
            return asyncio.run(main())

        res = _collect(*_fork(child))
        assert res == {"ok": [True, True, True]}, res
        assert _count_keys(cluster, "pfa:held") == 3
        assert loop.run_until_complete(lk.release()) is True
    finally:
        loop.run_until_complete(locks.close())
        loop.close()


def test_aio_forked_child_connects_afresh(core, clusters):
    """Fork after connect, asyncio.  A child of a process whose asyncio manager is
    connected runs its own loop (``asyncio.run``): ``connect()`` there opens
    fresh connections, and a key held elsewhere is refused; reusing the
    inherited loop object raises a clear RuntimeError instead of writing to
    the parent's transports.  The parent keeps working.

    First-round code: ``connect()`` in the child returned the inherited
    engine at once, bound to the parent's transports and loop: the child's
    ``try_acquire`` raised "got Future attached to a different loop" (both
    builds)."""
    cluster = clusters(3)
    _hold_everywhere(cluster, "a:held")
    loop = asyncio.new_event_loop()
    locks = aio.LockManager(cluster.urls, ttl=5.0, _core=core)
    try:
        loop.run_until_complete(locks.connect())

        def child_new_loop() -> list:
            async def main() -> list:
                await locks.connect()
                a = await locks.try_acquire("a:held")
                b = await locks.try_acquire("a:child")
                ok = b is not None and await b.release()
                await locks.close()
                return [a is None, ok]
            return asyncio.run(main())

        def child_same_loop() -> str:
            try:
                loop.run_until_complete(locks.connect())
            except RuntimeError as exc:
                return str(exc)
            return "no error"

        res1 = _collect(*_fork(child_new_loop))
        res2 = _collect(*_fork(child_same_loop))
        assert res1 == {"ok": [True, True]}, res1
        assert "fork" in res2.get("ok", ""), res2

        async def parent() -> bool:
            lk = await locks.try_acquire("a:parent")
            return lk is not None and await lk.release()

        assert loop.run_until_complete(parent()) is True
    finally:
        loop.run_until_complete(locks.close())
        loop.close()
        _clear(cluster, "a:held")


# -- signals ------------------------------------------------------------------


class _Interrupt(Exception):
    pass


def test_python_build_interrupt_between_parse_and_dispatch(clusters):
    """Pure-Python build only.  CPython runs a signal handler right after a C
    call returns, so a handler's exception can land after the reply parser
    handed a reply over and before it reached its request's slot (injected
    here at exactly that point: the parser's ``gets`` raises
    KeyboardInterrupt after returning a reply, once, on nodes 0 and 1; a
    real ``setitimer`` storm produced "connection out of step" resets the
    same way).  The reply is lost; no later reply may be credited to the
    wrong request.

    Before the fix: the next 2-chunk ``acquire_many`` got chunk 2's replies
    for chunk 1 on both nodes and granted 500 of 500 keys another client
    held on every node (two holders).  Now the interrupted connections are
    suspect until a probe answers: 0 granted, and the free keys are granted
    once the nodes are back."""
    from quorumlock import _pycore
    cluster = clusters(3)
    held = [f"ip:held:{i}" for i in range(500)]
    free = [f"ip:free:{i}" for i in range(500)]
    for p in cluster.ports:
        c = redis.Redis(port=p)
        c.mset({k: b"someone-else" for k in held})
        c.close()
    log = logging.getLogger("quorumlock")
    level = log.level
    log.setLevel(logging.CRITICAL)   # the two expected "out of step" resets
    try:
        with LockManager(cluster.urls, ttl=10.0, node_timeout=0.5, _core=_pycore) as locks:
            eng = locks.checkout()
            locks.try_acquire("ip:warm").release()
            for idx in (0, 1):
                node = eng.nodes[idx]
                orig, armed = node._gets, [True]

                def gets(orig=orig, armed=armed):
                    r = orig()
                    if r is not False and armed[0]:
                        armed[0] = False
                        raise KeyboardInterrupt
                    return r
                node._gets = gets
                with pytest.raises(KeyboardInterrupt):
                    locks.try_acquire(f"ip:w{idx}")
            got = locks.acquire_many(held + free)
            assert sum(1 for g in got[:500] if g is not None) == 0
            locks.release_many([g for g in got if g is not None])
            end = time.monotonic() + 10.0
            while time.monotonic() < end:
                got = locks.acquire_many(free)
                n = sum(1 for g in got if g is not None)
                locks.release_many([g for g in got if g is not None])
                if n == 500:
                    break
                time.sleep(0.1)
            assert n == 500
    finally:
        log.setLevel(level)
        _clear(cluster, *held, "ip:w0", "ip:w1")
    assert _count_keys(cluster, "ip:free:*") == 0


def test_ctrl_c_during_a_long_node_wait(sync_core, clusters):
    """Ctrl-C.  SIGINT during a blocking wait on a node that never answers
    (a 3 s ``call_nodes`` to a paused node) raises KeyboardInterrupt within
    1 s (milliseconds here; the bound leaves a loaded machine's scheduling
    delays room and still fails the 3 s of an ignored EINTR).

    First-round code: the compiled poll loop ignored EINTR, so the handler
    ran only when the whole wait ended (KeyboardInterrupt after 3.00 s); the
    pure-Python build's poll() already raised (PEP 475)."""
    cluster = clusters(3)
    with LockManager(cluster.urls, ttl=5.0, _core=sync_core) as locks:
        locks.call_nodes([("PING",)] * 3)
        eng = locks.checkout()
        # A command the node holds for a while: BLPOP on an empty list.
        sent = []

        def interrupt() -> None:
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

        t = threading.Timer(0.3, interrupt)
        t.start()
        with pytest.raises(KeyboardInterrupt):
            locks.call_nodes([("BLPOP", "sig:empty", "3")] + [None] * 2, timeout=3.0)
        took = time.monotonic() - sent[0]
        t.join()
        assert took < 1.0, took


def test_interrupts_inside_with_lock_leave_no_key(sync_core, clusters):
    """Signal storm.  300 ``with locks.lock(k): pass`` blocks, each hit by one
    exception raised from a SIGALRM handler at a random moment (setitimer);
    afterwards no key is left on any node.

    First-round code: 144 key copies left after 300 interrupts (cython
    build; the review's run: 151 of 300 blocks left a key).

    The compiled build must leave none.  The pure-Python build cannot be
    made fully signal-safe: CPython runs handlers at the first line of any
    Python function, including ``__exit__`` and the engine's own methods, so
    it is held to a small bound (measured 0-7 copies per run) instead."""
    cluster = clusters(3)
    fired = []

    def handler(signum: int, frame: Any) -> None:
        fired.append(1)
        raise _Interrupt()

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with LockManager(cluster.urls, ttl=30.0, _core=sync_core) as locks:
            # How long one block takes here, to aim the interrupts inside it.
            t0 = time.perf_counter()
            for i in range(20):
                with locks.lock(f"s:warm:{i}"):
                    pass
            per = (time.perf_counter() - t0) / 20
            rng = random.Random(23)
            interrupted = 0
            for i in range(300):
                fired.clear()
                try:
                    signal.setitimer(signal.ITIMER_REAL, max(1e-6, rng.uniform(0, 1.2 * per)))
                    with locks.lock(f"s:k:{i}"):
                        pass
                    # Not yet fired: wait for it out here (counts as a miss).
                    while not fired:
                        time.sleep(0.0001)
                except _Interrupt:
                    interrupted += 1
                except LockTimeout:
                    # Python build only: an interrupt while a reply was being
                    # dispatched makes that connection suspect, and until it is
                    # probed or reset the next blocks may find a majority down
                    # (liveness, docs/engine.md).  What this test checks is
                    # that nothing is left behind.
                    if sync_core.IMPLEMENTATION == "cython":
                        raise
                    try:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                    except _Interrupt:
                        pass
            signal.setitimer(signal.ITIMER_REAL, 0)
            assert interrupted > 100   # most landed inside the block
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # close() drained the releases; nothing may be left.
    left = _keys(cluster, "s:*")
    # Python build: a statistical bound (0-7 measured alone, 16 once in a
    # loaded full-suite run, where the blocks and so the landing spots of the
    # interrupts shift); the first-round code left ~150.
    bound = 0 if sync_core.IMPLEMENTATION == "cython" else 30
    assert len(left) <= bound, f"{len(left)} keys left after {interrupted} interrupts: {left[:10]}"
