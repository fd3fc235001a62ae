"""The blocking API: the twin of ``quorumlock.aio`` without an event loop.

```python
from quorumlock import LockManager

with LockManager(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002",
                  "redis://127.0.0.1:7003"], ttl=10.0) as locks:
    lock = locks.try_acquire("job:42")            # Lock | None
    lock = locks.acquire("job:42", timeout=5.0)   # Lock, else LockTimeout
    lock.extend()
    lock.release()
    with locks.lock("job:42", ttl=30.0) as lock:
        ...
```

Each calling thread has its own set of N connections: it sends its commands
and waits in ``poll()`` (GIL released) until the quorum is decided — no
background event-loop thread, no hop, no lock held while waiting.  Many
threads can share one manager.  Keeping a thread on one connection set also
keeps its release behind its acquire on every node: an acquire returns as soon
as a majority answered, and the release must not overtake the SET still in
flight to the last node (docs/engine.md; pottery's pool of threads leaves
orphaned keys this way).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
import time
import weakref
from typing import Any, Iterable, List, Optional, Sequence

from . import _green, _handshake, _health, _policy
from . import metrics as _metrics_mod
from ._backend import core
from ._clock import now_ns as _now_ns
from ._manager import ManagerBase
from ._config import MAX_SECONDS, check_int, check_keys_arg, check_seconds
from .errors import ConfigurationError, LockNotOwned, LockTimeout
from .leases import _thread as _lease_thread
from .leases import close_manager as _close_leases

__all__ = ["LockManager", "Lock"]

Lock = core.Lock

log = logging.getLogger("quorumlock")


class LockManager(ManagerBase):
    """Redlock over N independent Redis masters, for threads and plain scripts.

    Takes the same arguments as ``quorumlock.aio.LockManager`` and has the
    same methods, returning values instead of awaitables.  Connections are
    made on first use (or by ``connect()`` / ``with``); ``close()`` closes them.
    ``notify`` and ``metrics`` as there; the auto-extension runs in one
    background thread per manager, with its own connection set
    (``quorumlock.leases``).
    """

    #: The face (quorumlock._faces): operations block and return results.
    is_async = False

    def _init_api(self) -> None:
        self._engines: dict = {}  # thread ident -> its SyncEngine
        self._local = threading.local()   # .slot: this thread's _EngineSlot
        self._retired: dict = {}  # thread ident -> set left open by close() (the thread was busy)
        self.state_mutex = threading.Lock()
        self._guard_epoch = 0
        self._closed = False
        self._connected_once = False
        self._dup_logged: set = set()   # nodes whose duplicate was already logged
        self._warned: dict = {}   # node index -> monotonic time of its last warning
        # gevent/eventlet monkey-patched: the engines wait cooperatively (quorumlock._green).
        self._green_poll = _green.wait_function()
        self._green_owners: dict = {}

    # -- connections -------------------------------------------------------

    def connect(self) -> "LockManager":
        """Open one set of connections now (configuration errors surface here)."""
        self.checkout()
        return self

    def close(self) -> None:
        """Close the connections (idempotent).

        The calling thread's set and the sets of threads that have ended are
        closed now (after a short drain of the replies still owed).  Another
        live thread may be in the middle of an operation on its own set, so
        that set is left to it: its ``release()`` of a lock it holds still
        goes out (and then closes the set); anything else raises
        ``RuntimeError("LockManager is closed")``.  A set left open is closed
        at the latest when its thread ends."""
        if os.getpid() != self._pid:
            self._after_fork_child()
        _close_leases(self)
        me = threading.get_ident()
        alive = {t.ident for t in threading.enumerate()}
        with self.state_mutex:
            self._closed = True
            engines, self._engines = self._engines, {}
            now_close = []
            for ident, eng in engines.items():
                if ident == me or ident not in alive:
                    now_close.append(eng)
                else:
                    self._retired[ident] = eng
        slot = getattr(self._local, "slot", None)
        if slot is not None:
            slot.eng = None
        for eng in now_close:
            _close_quietly(eng)

    def _after_fork_child(self) -> None:
        """In a forked child: drop every inherited connection set without
        reading or writing it (the parent still uses those sockets: a read
        would steal its replies, a write would interleave with its
        requests).  The child connects afresh on first use."""
        self._pid = os.getpid()
        self.state_mutex = threading.Lock()   # may have been held by a parent thread
        engines = list(self._engines.values()) + list(self._retired.values())
        self._engines = {}
        self._retired = {}
        self._local = threading.local()
        self.lease_renewer = None              # the renewer thread does not exist here
        self.release_subscriber = None
        for eng in engines:
            try:
                eng.discard()
            except Exception:  # pragma: no cover - never fail a fork
                pass

    def __enter__(self) -> "LockManager":
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _new_engine(self) -> Any:
        eng = self.core.SyncEngine(
            [s.name for s in self.node_specs],
            self,
            self._opts.node_timeout,
            self._opts.drift_factor,
            self._opts.max_key_length,
            self._opts.batch_chunk,
        )
        self._configure(eng)
        eng.green_poll = self._green_poll
        initial = not self._connected_once
        self._connect_nodes(eng, range(self.n), self._opts.connect_timeout, initial)
        if initial:
            try:
                _handshake.check_unique(self.node_specs, [nd.run_id for nd in eng.nodes], self._allow_same_server)
            except ConfigurationError:
                eng.close()
                raise
            self._connected_once = True
        return eng

    def _connect_nodes(self, eng: Any, which: Iterable[int], timeout: float, initial: bool) -> None:
        """Connect the given nodes in parallel (non-blocking connect + poll),
        then run every handshake pipelined."""
        socks = {}
        poller = _green.poller(self._green_poll)
        deadline = time.monotonic() + timeout
        for i in which:
            spec = self.node_specs[i]
            try:
                if spec.path:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.setblocking(False)
                    rc = s.connect_ex(spec.path)
                else:
                    infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)
                    fam, stype, proto, _, addr = infos[0]
                    s = socket.socket(fam, stype, proto)
                    s.setblocking(False)
                    rc = s.connect_ex(addr)
            except OSError as exc:
                self._warn_node(i, "unreachable", exc)
                eng._node_lost(i, exc)
                continue
            if rc not in (0, errno.EINPROGRESS, errno.EAGAIN):
                s.close()
                self._warn_node(i, "unreachable", OSError(rc, os.strerror(rc)))
                eng._node_lost(i, OSError(rc, os.strerror(rc)))
                continue
            socks[s.fileno()] = (i, s)
            poller.register(s.fileno(), select.POLLOUT)
        connected = []
        waiting = dict(socks)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, ev in poller.poll(left * 1000):
                entry = waiting.pop(fd, None)
                if entry is None:  # an fd reported twice, or one this connect does not wait on
                    continue       # (seen under eventlet's patched select): nothing to do for it
                i, s = entry
                poller.unregister(fd)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    s.close()
                    self._warn_node(i, "unreachable", OSError(err, os.strerror(err)))
                    eng._node_lost(i, OSError(err, os.strerror(err)))
                else:
                    connected.append((i, s))
        for i, s in waiting.values():
            s.close()
            exc = TimeoutError(f"{self.node_specs[i].name}: connect timed out")
            self._warn_node(i, "unreachable", exc)
            eng._node_lost(i, exc)
        ops = []
        for i, s in connected:
            spec = self.node_specs[i]
            try:
                if not spec.path:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if spec.ssl is not None:
                    s.setblocking(True)
                    s.settimeout(max(0.05, deadline - time.monotonic()))
                    s = spec.ssl.wrap_socket(s, server_hostname=spec.server_hostname)
            except (OSError, ValueError) as exc:
                s.close()
                self._warn_node(i, "TLS or socket setup failed", exc)
                eng._node_lost(i, exc)
                continue
            eng.attach(i, s, spec.ssl is not None)
            t = max(0.05, deadline - time.monotonic())
            ops.append((i, [(name, eng.call_op(i, args, t)) for name, args in _handshake.commands(spec, self._opts.native_commands)]))
        errors = []
        for i, named in ops:
            spec = self.node_specs[i]
            replies = []
            try:
                for name, op in named:
                    r = eng.wait(op)
                    if isinstance(r, (TimeoutError, ConnectionError)):
                        raise r
                    replies.append((name, r))
                info = _handshake.check(spec, replies)
            except ConfigurationError as exc:
                errors.append(exc)
                eng.nodes[i].abort()
                continue
            except (OSError, ConnectionError, TimeoutError) as exc:
                self._warn_node(i, "handshake failed", exc)
                eng.nodes[i].abort()
                continue
            node = eng.nodes[i]
            eng.set_native(i, *_handshake.native_support(replies))
            node.info = info
            node.run_id = info.get("run_id")
            if not initial and not self._allow_same_server:
                # Identity on every reconnect (see quorumlock.aio): a server
                # already counted under another spelling must not vote twice
                # (unless the user accepted one server's votes falling together).
                dup = _handshake.duplicate_of(i, node.run_id, eng.nodes)
                if dup is not None:
                    eng.down_detail[i] = _handshake.duplicate_text(self.node_specs, i, dup)
                    (log.debug if i in self._dup_logged else log.error)("%s", eng.down_detail[i])
                    self._dup_logged.add(i)
                    node.abort()
                    continue
            eng.down_detail[i] = None
            with self.state_mutex:
                before = self.guard_state.counted_after[i]
                node.counted_after = self.guard_state.on_connect(
                    i, spec, info, initial, self._opts.restart_guard, self.guard_window, self.core.monotonic_ns()
                )
                if node.counted_after != before:
                    self._guard_epoch += 1
            node.ready = True
            eng.node_ready(i)   # clean-up releases held back while it was away
            eng.backoff[i] = 0.05
            if self._warned.pop(i, None) is not None:
                log.info("reconnected to %s", spec.name)
        if errors:
            eng.close()
            raise errors[0]

    def current_engine(self) -> Any:
        """The calling thread's connection set, or None (none is made)."""
        return self._engines.get(threading.get_ident())

    def engines_in_use(self) -> List[Any]:
        """Every thread's connection set."""
        return list(self._engines.values())

    def checkout(self) -> Any:
        """This thread's connection set (made on first use)."""
        if os.getpid() != self._pid:
            # fork() without the at-fork hook (or before it ran): never use
            # a connection inherited from the parent.
            self._after_fork_child()
        slot = getattr(self._local, "slot", None)
        eng = slot.eng if slot is not None else None
        if eng is None:
            return self._new_thread_engine()
        if eng.maintenance_epoch != self._guard_epoch or not eng.all_ready:
            self._maintain(eng)
        return eng

    def _new_thread_engine(self) -> Any:
        if self._closed:
            raise RuntimeError("LockManager is closed")
        eng = self._new_engine()
        me = threading.get_ident()
        with self.state_mutex:
            if self._closed:
                eng.close()
                raise RuntimeError("LockManager is closed")
            # Close the sets of threads that have ended (normally their own
            # finaliser did it already).
            alive = {t.ident for t in threading.enumerate()}
            if self._green_poll is not None:
                _green.track(self._green_owners, me)
                alive |= _green.alive(self._green_owners)
            for ident in [i for i in self._engines if i not in alive]:
                _close_quietly(self._engines.pop(ident))
            self._engines[me] = eng
        slot = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = _EngineSlot()
            # When this thread ends, its threading.local entry goes and the
            # slot with it: close the thread's set then, not whenever some
            # other thread next checks out.
            weakref.finalize(slot, _thread_ended, weakref.ref(self), me, self._pid)
        slot.eng = eng
        eng.maintenance_epoch = self._guard_epoch
        eng.all_ready = all(nd.ready for nd in eng.nodes)
        return eng

    def _warn_node(self, i: int, what: str, exc: Any) -> None:
        """Log a node failure as a warning, at most once per node every
        ``_WARN_EVERY`` seconds (debug in between), so that "all nodes down"
        or a TLS failure never looks like "key busy"."""
        now = time.monotonic()
        last = self._warned.get(i)
        if last is None or now - last >= _WARN_EVERY:
            self._warned[i] = now
            log.warning("%s %s (%r); retrying in the background",
                        self.node_specs[i].name, what, exc)
        else:
            log.debug("%s %s: %r", self.node_specs[i].name, what, exc)

    def _maintain(self, eng: Any) -> None:
        now = self.core.monotonic_ns()
        due = [i for i, nd in enumerate(eng.nodes) if not nd.connected and eng.reconnect_at[i] <= now]
        if due:
            # Short attempt inline: a blackholed node must not stall callers
            # for the whole connect timeout on every retry.
            timeout = min(self._opts.connect_timeout, max(self._opts.node_timeout, 0.05))
            try:
                self._connect_nodes(eng, due, timeout, initial=False)
            except ConfigurationError as exc:
                log.error("%s", exc)
        with self.state_mutex:
            for i, nd in enumerate(eng.nodes):
                ca = self.guard_state.counted_after[i]
                if ca > nd.counted_after:
                    nd.counted_after = ca
            eng.maintenance_epoch = self._guard_epoch
        eng.all_ready = all(nd.ready for nd in eng.nodes)


    # -- locks -------------------------------------------------------------

    def try_acquire(self, key: Any, ttl: Optional[float] = None) -> Optional[Any]:
        """One quorum attempt: a ``Lock``, or None."""
        ttl_ms = self.ttl_ms(ttl)
        eng = self.checkout()
        obs = self.observer
        if obs is None:
            return eng.try_acquire_sync(key, ttl_ms)
        t0 = _now_ns()
        lock = eng.try_acquire_sync(key, ttl_ms)
        obs.on_acquire((_now_ns() - t0) / 1e9, lock is not None)
        return lock

    def attempt_op(self, key: Any, ttl_ms: int) -> Any:
        """One quorum attempt on this thread's connections: the decided
        operation (``.result``, ``.outcomes()``)."""
        eng = self.checkout()
        return eng.attempt_sync(key, ttl_ms)

    def attempt_token(self, key: Any, token: bytes, px: Optional[int] = None, *,
                      timeout: Optional[float] = None) -> Any:
        """One quorum attempt to acquire ``key`` with a token the caller chose
        (``bytes``, 1 to 512 bytes): ``SET key token NX PX px`` on every node,
        or without ``PX`` when ``px`` is None or 0 (no expiry).  The fast path
        of the drop-in classes (``quorumlock.compat``).

        Decided exactly as ``try_acquire``: held when a majority said OK, with
        validity left when there is a TTL (``px - elapsed - drift > 0``); a
        lock without expiry has ``validity == inf``.  A failed attempt is
        released on every node where the SET may have landed.  Returns the
        decided operation: ``.result`` is the ``Lock`` (its ``token`` is the
        caller's; ``release()`` / ``extend(ttl)`` as any lock) or None, and
        ``.outcomes()`` says what each node answered.  ``px`` (int ms) too
        short to ever leave validity after the drift allowance raises
        ``ValueError`` at once.  ``timeout``: the per-node reply deadline in
        seconds (default: the manager's ``node_timeout``)."""
        ms = check_px(px, self._opts.drift_factor, self._opts.max_ttl)
        t = 0.0 if timeout is None else check_seconds("timeout", timeout)
        if ms > self._max_ttl_used_ms:
            self._max_ttl_used_ms = ms
        eng = self.checkout()
        op = eng.attempt_token(key, token, ms, t)
        eng.wait(op)
        return op

    def acquire(
        self,
        key: Any,
        ttl: Optional[float] = None,
        *,
        timeout: Optional[float] = None,
        retry_count: Optional[int] = None,
        wait: Optional[str] = None,
        reentrant: bool = False,
    ) -> Any:
        """Acquire ``key``, retrying with jittered delays (see
        ``quorumlock.aio.LockManager.acquire``, also for ``wait``); raises
        ``LockTimeout``."""
        if reentrant:  # the same thread may re-acquire (quorumlock.reentrant)
            return _reentrant().acquire(self, key, ttl, timeout=timeout, retry_count=retry_count, wait=wait)
        if wait is not None or self._notify or self.meter is not None:
            return _lease_thread.acquire(self, key, ttl, timeout=timeout, retry_count=retry_count, wait=wait)
        ttl_ms = self.ttl_ms(ttl)
        retry = _policy.from_options(self._opts, timeout=timeout, retry_count=retry_count, now=time.monotonic())
        last: Any = None

        def attempt() -> Optional[Any]:
            nonlocal last
            last = self.attempt_op(key, ttl_ms)
            return last.result

        lock = _policy.run_blocking(attempt, retry)
        if lock is None:
            raise LockTimeout(key, retry.attempts, last.outcomes())
        return lock

    def lock(
        self,
        key: Any,
        ttl: Optional[float] = None,
        *,
        timeout: Optional[float] = None,
        retry_count: Optional[int] = None,
        wait: Optional[str] = None,
        auto_extend: bool = False,
        max_hold: Optional[float] = None,
        on_lost: Any = None,
        margin: Optional[float] = None,
        renew_fraction: float = 1.0 / 3.0,
        reentrant: bool = False,
    ) -> Any:
        """``with locks.lock(key, ttl=30.0) as lock:`` acquires and releases.

        ``auto_extend``, ``max_hold``, ``on_lost``, ``margin`` as in
        ``quorumlock.aio.LockManager.lock``, except that a thread cannot be
        cancelled: the block checks ``lock.lost`` / ``lock.check()``, and
        raises ``LockLost`` on exit if the lease was lost."""
        if reentrant:  # counted per owner (quorumlock.reentrant)
            return _reentrant().LockContext(self, key, ttl, timeout, retry_count, wait, auto_extend=auto_extend,
                                       max_hold=max_hold, on_lost=on_lost, margin=margin,
                                       renew_fraction=renew_fraction)
        if auto_extend or max_hold is not None or on_lost is not None or margin is not None:
            return _lease_thread.LeaseContext(
                self, key, ttl, timeout, retry_count, wait, auto_extend=bool(auto_extend), max_hold=max_hold,
                on_lost=on_lost, margin=margin, renew_fraction=renew_fraction)
        if wait is not None:
            return _lease_thread.LeaseContext(self, key, ttl, timeout, retry_count, wait, _guarded=False)
        return getattr(self.core, "SyncLockContext", _LockContext)(self, key, ttl, timeout, retry_count)

    def acquire_many(self, keys: Iterable[Any], ttl: Optional[float] = None) -> List[Optional[Any]]:
        """One attempt per key, pipelined: a list of ``Lock`` or None, in order."""
        obs = self.observer
        if obs is None:
            return self._acquire_many(keys, ttl)
        t0 = _now_ns()
        res = self._acquire_many(keys, ttl)
        got = sum(1 for x in res if x is not None)
        obs.on_batch("acquire", (_now_ns() - t0) / 1e9, got, len(res), got)
        return res

    def _acquire_many(self, keys: Iterable[Any], ttl: Optional[float]) -> List[Optional[Any]]:
        check_keys_arg(keys)
        ttl_ms = self.ttl_ms(ttl)
        keys = list(keys)
        eng = self.checkout()
        if self._opts.fencing or self._opts.lock_delay_ms:
            # Validate every key before sending any (see aio.acquire_many).
            if len({eng.check_key(k) for k in keys}) != len(keys):
                raise ValueError("keys: the same key appears twice in one batch")
            return eng.acquire_each_sync(keys, ttl_ms)
        return eng.acquire_many_sync(keys, ttl_ms)

    def release_many(self, locks: Iterable[Any]) -> List[bool]:
        """Release many locks at once: a list of bools."""
        locks = list(locks)
        obs = self.observer
        if obs is None:
            return self._release_many(locks)
        held = sum(1 for lk in locks if not getattr(lk, "released", True))
        t0 = _now_ns()
        res = self._release_many(locks)
        obs.on_batch("release", (_now_ns() - t0) / 1e9, sum(1 for x in res if x), len(res), -held)
        return res

    def _release_many(self, locks: List[Any]) -> List[bool]:
        lock_cls = self.core.Lock
        for lk in locks:
            if not isinstance(lk, lock_cls):
                raise TypeError(f"release_many takes Lock objects, got {type(lk).__name__}")
            _check_same_process(lk, "release")
        eng = self.checkout()
        if self._opts.lock_delay_ms or self._notify:
            # The batch script neither lifts lock-delays nor publishes.
            return eng.release_each_sync(locks)
        return eng.release_many_sync(locks)

    def release(self, lock: Any) -> bool:
        """Same as ``lock.release()``."""
        return self.release_lock(lock)

    def release_op(self, lock: Any) -> Any:
        """``lock.release()`` returning the decided operation: ``.result`` is
        True if our token was deleted on a majority, ``.outcomes()`` says what
        each node answered (used by ``quorumlock.compat``)."""
        eng = self.checkout()
        op = eng.release_op(lock)
        eng.wait(op)
        return op

    def release_token(self, key: Any, token: bytes, *, signal: Optional[Any] = None, signal_ms: int = 1000,
                      timeout: Optional[float] = None) -> Any:
        """Release ``key`` where it holds ``token`` (the caller's, as given to
        ``attempt_token``): compare-and-delete on every node, decided at a
        majority like ``release_op`` (late replies are drained, not waited
        for).  ``signal`` (a list key): where the key was deleted, the same
        script also pushes ``1`` on that list and sets its expiry to
        ``signal_ms`` ms, waking a client blocked in ``BLPOP signal`` (the
        python-redis-lock drop-in's wake-up).  Returns the decided operation:
        ``.result`` True if deleted on a majority, ``.outcomes()`` per node.
        ``timeout``: the per-node reply deadline, s (default ``node_timeout``)."""
        t = 0.0 if timeout is None else check_seconds("timeout", timeout)
        eng = self.checkout()
        op = eng.release_token(key, token, signal, signal_ms, t)
        eng.wait(op)
        return op

    def call_nodes(
        self,
        commands: Sequence[Optional[Sequence[Any]]],
        timeout: Optional[float] = None,
        *,
        guarded: bool = True,
        lease_ms: Optional[int] = None,
    ) -> List[Any]:
        """Send ``commands[i]`` to node ``i``, all at once (None skips a node),
        and wait for every answer; return one result per node.

        A result is the raw reply (a ``hiredis.ReplyError`` for an error
        reply), or a ``TimeoutError`` / ``ConnectionError`` *instance* (not
        raised) for a node that did not answer within ``timeout`` (default: the
        manager's ``node_timeout``), is down, or, with ``guarded``, is left out
        by the restart guard; None where the command was None.  ``lease_ms``:
        the TTL the commands set, so that the restart guard's window covers it.
        The building block of the drop-in classes in ``quorumlock.compat``."""
        cmds = _check_commands(commands, self.n)
        t = self._opts.node_timeout if timeout is None else check_seconds("timeout", timeout)
        if lease_ms is not None:
            lease_ms = check_int("lease_ms", lease_ms, minimum=0, maximum=int(MAX_SECONDS * 1000))
        if lease_ms is not None and lease_ms > self._max_ttl_used_ms:
            self._max_ttl_used_ms = int(lease_ms)
        eng = self.checkout()
        now = self.core.monotonic_ns()
        pending: List[Any] = []
        for i, args in enumerate(cmds):
            nd = eng.nodes[i]
            if args is None:
                pending.append(None)
            elif not nd.ready:
                pending.append(ConnectionError(f"{self.node_specs[i].name}: not connected"))
            elif guarded and eng.guard and nd.counted_after > now:
                pending.append(ConnectionError(f"{self.node_specs[i].name}: restart guard: node restarted recently"))
            else:
                pending.append(eng.call_op(i, args, t))
        return [p if p is None or isinstance(p, BaseException) else eng.wait(p) for p in pending]

    # -- leases, jobs, metrics ----------------------------------------------

    def guard(
        self,
        lock: Any,
        *,
        auto_extend: bool = True,
        max_hold: Optional[float] = None,
        on_lost: Any = None,
        margin: Optional[float] = None,
        renew_fraction: float = 1.0 / 3.0,
    ) -> Any:
        """Watch a held ``lock`` (and renew it with ``auto_extend``) until it is
        released; see ``lock()``.  Returns the lock."""
        _check_same_process(lock, "guard")
        _lease_thread.guard(self, lock, auto_extend=auto_extend, max_hold=max_hold, on_lost=on_lost,
                            margin=margin, renew_fraction=renew_fraction)
        return lock

    def exclusive(self, key: Any, ttl: Optional[float] = None, **options: Any) -> Any:
        """Decorator: run a function only while holding ``key`` (a
        ``str.format`` template of its arguments); see ``quorumlock.jobs``."""
        from .jobs import exclusive

        return exclusive(self, key, ttl, **options)

    def metrics(self) -> dict:
        """Counters and latency histograms as plain data (``quorumlock.metrics``)."""
        return _metrics_mod.snapshot(self)

    def health(self, timeout: Optional[float] = None) -> "_health.Health":
        """Every node's reachability, role, run_id (and how long this manager has
        known it), uptime, clock offset, version, lock commands and latency; a
        down or paused node is reported, not raised (docs/configuration.md)."""
        return _health.health_sync(self, timeout)

    def lock_lost_event(self, lock: Any) -> Any:
        """The event set when ``lock``'s lease is lost (``lock.lost``; LockOwner)."""
        return _lease_thread.lost_event(self, lock)

    def check_lock(self, lock: Any) -> float:
        """``lock.check()`` (LockOwner): the validity left, or ``LockLost`` / ``LockNotOwned``."""
        from .leases import check_lock

        return check_lock(lock)

    # -- callbacks used by Lock --------------------------------------------

    def release_lock(self, lock: Any) -> bool:
        """``lock.release()`` (LockOwner): True if our token was deleted on a majority."""
        _check_same_process(lock, "release")
        obs = self.observer
        if obs is None or lock.released:
            return self._release_now(lock)
        t0 = _now_ns()
        ok = self._release_now(lock)
        obs.on_release_start()
        obs.on_release((_now_ns() - t0) / 1e9, bool(ok))
        return ok

    def _release_now(self, lock: Any) -> bool:
        if self._closed:
            return self._release_after_close(lock)
        eng = self.checkout()
        return eng.release_sync(lock)

    def _release_after_close(self, lock: Any) -> bool:
        """A release asked for after ``close()`` (another thread closed the
        manager while this one held a lock): it still goes out, on this
        thread's set if close() left it open, else on a short-lived one."""
        if os.getpid() != self._pid:
            self._after_fork_child()
        me = threading.get_ident()
        with self.state_mutex:
            eng = self._retired.pop(me, None)
        slot = getattr(self._local, "slot", None)
        if slot is not None:
            slot.eng = None
        if eng is None:
            eng = self._new_engine()
        else:
            self._maintain(eng)
        try:
            return eng.release_sync(lock)
        finally:
            _close_quietly(eng)

    def extend_lock(self, lock: Any, ttl: Optional[float]) -> bool:
        """``lock.extend(ttl)`` (LockOwner): True, or ``LockNotOwned``."""
        obs = self.observer
        if obs is None:
            return self._extend_now(lock, ttl)
        t0 = _now_ns()
        try:
            r = self._extend_now(lock, ttl)
        except Exception:
            obs.on_extend((_now_ns() - t0) / 1e9, False)
            raise
        obs.on_extend((_now_ns() - t0) / 1e9, True)
        return r

    def _extend_now(self, lock: Any, ttl: Optional[float]) -> bool:
        _check_same_process(lock, "extend")
        ttl_ms = self.ttl_ms(ttl) if ttl is not None else int(round(lock.ttl * 1000))
        ok = self.checkout().extend_sync(lock, ttl_ms)
        if not ok:
            raise LockNotOwned(f"could not extend {lock.key!r}: not held on a majority with validity left")
        return True

    def enter_lock(self, lock: Any) -> Any:
        """``with lock:`` (LockOwner)."""
        return lock

    def exit_lock(self, lock: Any, exc_type: Any) -> None:
        """The end of ``with lock:`` (LockOwner)."""
        _release_surely(self, lock)

    def aenter_lock(self, lock: Any) -> Any:
        """``async with lock:`` (LockOwner)."""
        raise TypeError("this lock belongs to a blocking LockManager: use 'with', not 'async with'")

    def aexit_lock(self, lock: Any, exc_type: Any) -> Any:
        """The end of ``async with lock:`` (LockOwner)."""
        raise TypeError("this lock belongs to a blocking LockManager: use 'with', not 'async with'")

    def node_lost(self, i: int, exc: Any) -> None:
        """The engine lost its connection to node ``i`` (LockOwner); nothing
        to do: the SyncEngine tracks its own reconnects."""

    def __repr__(self) -> str:
        return (f"<quorumlock.LockManager {self.n} nodes quorum={self.quorum} "
                f"threads={len(self._engines)} [{self.core.IMPLEMENTATION}]>")

    # -- semaphores and read-write locks (quorumlock.semaphore, quorumlock.rwlock) --

    def semaphore(self, name: Any, permits: int, ttl: Optional[float] = None) -> Any:
        """At most ``permits`` holders of ``name`` at once: ``permits`` permit
        keys, all tried in one pipelined round (docs/semaphores.md)."""
        from .semaphore import Semaphore

        return Semaphore(self, name, permits, ttl)

    def rwlock(self, name: Any, max_readers: int = 16, ttl: Optional[float] = None) -> Any:
        """Shared readers (at most ``max_readers``), exclusive writers, no
        writer starvation (docs/semaphores.md)."""
        from .rwlock import RWLock

        return RWLock(self, name, max_readers, ttl)


_WARN_EVERY = 30.0   # seconds between two warnings about the same node


class _EngineSlot:
    """Holds one thread's connection set in the manager's threading.local;
    its finaliser closes the set when the thread ends."""

    __slots__ = ("eng", "__weakref__")

    def __init__(self) -> None:
        self.eng: Any = None


def _close_quietly(eng: Any) -> None:
    try:
        eng.close()
    except Exception:  # pragma: no cover - closing is best effort
        pass


def _thread_ended(mgr_ref: Any, ident: int, pid: int) -> None:
    """A thread's threading.local entry was dropped (the thread ended, or a
    fork() cleaned up the parent's other threads): close its set.  In a forked
    child the set is shared with the parent and is only discarded, no I/O."""
    mgr = mgr_ref()
    if mgr is None:
        return
    if os.getpid() != pid:
        # A forked child (CPython clears the other threads' states before the
        # at-fork hooks run): no lock, which a parent thread may have held at
        # fork time, and no I/O on the parent's sockets.
        eng = mgr._engines.pop(ident, None) or mgr._retired.pop(ident, None)
        if eng is not None:
            eng.discard()
        return
    try:
        with mgr.state_mutex:
            eng = mgr._engines.pop(ident, None) or mgr._retired.pop(ident, None)
    except Exception:  # pragma: no cover - interpreter shutdown
        return
    if eng is not None:
        _close_quietly(eng)


def _check_same_process(lock: Any, what: str) -> None:
    """Refuse to release or extend, in a forked child, a lock the parent
    acquired: the child inherited the object, not the lease.  The parent
    still holds it (a ``with`` block or a ``finally`` the child runs through
    would otherwise drop the parent's lock on the nodes)."""
    pid = getattr(lock, "pid", None)   # not a Lock: the caller's type check reports it
    if pid is not None and pid != os.getpid():
        raise RuntimeError(
            f"cannot {what} {lock.key!r} in process {os.getpid()}: it was acquired by process {pid} "
            "(this process is a fork of it); only the process that acquired a lock releases or extends it")


def _release_surely(mgr: Any, lock: Any) -> None:
    """Release ``lock``; if an exception (a signal handler's) interrupts
    before the release was queued, queue it again before re-raising."""
    try:
        mgr.release_lock(lock)
    except BaseException:
        if not lock.released:
            try:
                mgr.release_lock(lock)
            except Exception:
                pass
        raise


def check_px(px: Any, drift_factor: float, max_ttl: float, name: str = "px", given: Any = None) -> int:
    """A caller-token acquire's ``PX`` in whole ms: None or 0 -> 0 (no
    expiry); else an int in ``[1, max_ttl]`` that leaves validity after the
    drift allowance (``px*drift_factor + 2 ms``, plus 1 ms), or a
    TypeError/ValueError naming ``name`` (showing ``given`` if set, the
    caller's own spelling, e.g. redis-py's ``timeout`` in seconds)."""
    if px is None:
        return 0
    shown = f"{given!r} s ({px} ms)" if given is not None else f"{px!r} ms"
    if isinstance(px, bool) or not isinstance(px, int):
        raise TypeError(f"{name} must be an int of milliseconds or None, got {type(px).__name__}")
    if px < 0:
        raise ValueError(f"{name} must be >= 0 (0 or None: no expiry), got {shown}")
    if px == 0:
        return 0
    if px > max_ttl * 1000:
        raise ValueError(f"{name}={shown} is over max_ttl ({max_ttl} s)")
    drift_ms = px * drift_factor + 2.0
    if px <= drift_ms + 1.0:
        raise ValueError(
            f"{name}={shown} is too short: the drift allowance alone is {drift_ms:.1f} ms "
            f"(ttl*drift_factor + 2 ms), so no acquisition could be valid"
        )
    return px


def _check_commands(commands: Sequence[Optional[Sequence[Any]]], n: int) -> List[Optional[tuple]]:
    """``call_nodes`` input: exactly one command (a sequence of arguments) or None per node."""
    if isinstance(commands, (str, bytes)) or not isinstance(commands, Sequence):
        raise TypeError(f"commands must be a list with one command (or None) per node, got {type(commands).__name__}")
    if len(commands) != n:
        raise ValueError(f"commands must have one entry per node ({n}), got {len(commands)}")
    out: List[Optional[tuple]] = []
    for c in commands:
        if c is None:
            out.append(None)
        elif isinstance(c, (str, bytes)) or not isinstance(c, Sequence) or not c:
            raise TypeError(f"each command must be a non-empty sequence of arguments or None, got {c!r}")
        else:
            out.append(tuple(c))
    return out


class _LockContext:
    """``with locks.lock(key):`` in Python (the pure-Python build's; the
    compiled core has ``SyncLockContext``, which closes the last windows: a
    Python ``__exit__`` can be interrupted by a signal at its first line,
    before any code of it runs)."""

    __slots__ = ("_mgr", "_key", "_ttl", "_timeout", "_retry", "_lock")

    def __init__(self, mgr: LockManager, key: Any, ttl: Any, timeout: Any, retry: Any) -> None:
        self._mgr = mgr
        self._key = key
        self._ttl = ttl
        self._timeout = timeout
        self._retry = retry
        self._lock = None

    def __enter__(self) -> Any:
        # An exception raised by a signal handler (KeyboardInterrupt, a
        # timer's) can land anywhere here, also after the engine granted the
        # lock and before it is stored or returned; __exit__ would then never
        # run.  The engine keeps the lock it granted last to this thread
        # (``granted``, set before the engine returns), and every exit by
        # exception releases what was granted.
        mgr = self._mgr
        eng = mgr.checkout()
        eng.granted = None
        try:
            self._lock = mgr.acquire(self._key, self._ttl, timeout=self._timeout, retry_count=self._retry)
            return self._lock
        except BaseException:
            lock = self._lock or eng.granted
            self._lock = None
            eng.granted = None
            if lock is not None:
                _release_surely(mgr, lock)
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        lock = self._lock
        if lock is not None:
            try:
                self._mgr.release_lock(lock)
            except BaseException:
                if not lock.released:
                    self._mgr.release_lock(lock)
                raise
            self._lock = None


def _reentrant() -> Any:
    from . import reentrant

    return reentrant
