"""The asyncio API.

```python
from quorumlock.aio import LockManager

async with LockManager(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002",
                        "redis://127.0.0.1:7003"], ttl=10.0) as locks:
    lock = await locks.try_acquire("job:42")           # one quorum attempt -> Lock | None
    lock = await locks.acquire("job:42", timeout=5.0)  # retries with jitter -> Lock, else LockTimeout
    await lock.extend()
    await lock.release()
    async with locks.lock("job:42", ttl=30.0) as lock:
        ...
```

``Lock.release`` and ``release_many`` return the engine's future directly.
``try_acquire`` and ``acquire_many`` return a coroutine instead: a lock is
taken only once the call is awaited (an un-awaited call warns "never awaited"
and sends nothing), and a caller cancelled after the engine granted the lock
(``asyncio.timeout`` close to the round trip, a failing ``TaskGroup``
sibling) never leaves the key set: the lock nobody will receive is released
in the background.  Connections, the handshake, reconnects and retries are
here, in plain Python, shared by both engine builds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from functools import partial
from typing import Any, Awaitable, Iterable, List, Optional, Sequence

from . import _handshake, _health, _policy
from . import metrics as _metrics_mod
from ._backend import IMPLEMENTATION, core
from ._clock import now_ns as _now_ns
from ._manager import ManagerBase
from ._config import MAX_SECONDS, check_int, check_keys_arg, check_seconds
from .blocking import _check_commands, _check_same_process, check_px
from .errors import ConfigurationError, DuplicateNode, LockNotOwned, LockTimeout
from .leases import _async as _lease_async
from .leases import close_manager as _close_leases

__all__ = ["LockManager", "Lock", "IMPLEMENTATION"]

Lock = core.Lock
log = logging.getLogger("quorumlock")

_RECONNECT_MIN = 0.05
_RECONNECT_MAX = 0.5  # a restarted node must not wait long to count again


class LockManager(ManagerBase):
    """Redlock over N independent Redis masters, on the running event loop.

    Parameters
    ----------
    nodes:
        URLs (``redis://[user[:password]@]host[:port][/db]``, ``rediss://...``,
        ``unix:///path``) or redis-py clients (only their connection settings are
        used).  Duplicates are refused; so are replicas.
    ttl:
        Default lease in seconds (float allowed, rounded up to whole ms).
    drift_factor:
        Clock-drift allowance: validity = ttl - elapsed - (ttl * drift_factor + 2 ms).
    retry_count:
        Attempts ``acquire`` makes when no ``timeout`` is given (default 3).
    retry_delay:
        Seconds between attempts: a ``(low, high)`` range to draw from uniformly
        (default 0.1-0.3 s), or one number ``d`` meaning ``(d/2, 3d/2)``.
    node_timeout:
        Per-node reply deadline; a node that misses it counts as failed for that
        attempt.  Default ``10 ms + 5 % of ttl``, at most 1 s.
    connect_timeout:
        Deadline of each connection attempt, handshake included.
    max_key_length, max_ttl:
        Caps on a key's length (bytes) and a TTL (seconds).
    restart_guard:
        ``True`` (default): a node seen to restart (new ``run_id``) while this
        manager runs is not counted in quorums until it has been up for
        ``guard_window`` seconds; nodes found at the first connect are trusted.
        ``"strict"``: also distrust nodes that have been up for less than
        ``guard_window`` at the first connect.  ``False``: off.
    guard_window:
        Default ``max(ttl, longest ttl used) * (1 + drift_factor)``.
    fencing:
        Give every lock a ``fence``: an int strictly larger than the fence of
        every earlier holder of the key whose fence was committed (a second,
        pipelined round trip; docs/fencing.md).
    lock_delay:
        Seconds (Chubby's lock-delay): after a lease ends without a release
        (the holder crashed or paused), nobody can acquire the key for this
        long; a clean release lifts it at once.
    ssl_context:
        For ``rediss://`` nodes, instead of the URL's ``ssl_*`` options.
    notify:
        Releases PUBLISH on ``ql:released:<key>`` (the notify form of the
        release script), and ``acquire`` waits for those messages (and for
        keyspace notifications, when the server has them) instead of only
        polling: ``wait="notify"`` by default (``quorumlock.leases.notify``).
    metrics:
        Count operations and time them (``metrics()``; ``quorumlock.metrics``).
        Off by default: no per-operation Python work is added.
    max_pending:
        Requests in flight per node connection (default 65536).  A node at
        the bound, or one whose connection stopped taking writes, fails new
        operations at once (per-node outcome ``error``, naming the bound).
    max_reply_bytes:
        Largest reply accepted (default 64 MiB); a larger one drops the
        connection (docs/engine.md, "Memory bounds").
    native_commands:
        Release with the node's own compare-and-delete (``DELIFEQ`` on
        Valkey >= 9.0, ``DELEX ... IFEQ`` on Redis >= 8.4) and extend with
        ``SET ... IFEQ ... PX`` (Valkey >= 8.1, Redis >= 8.4) on the nodes
        that have them, detected at each connect (default True).  Plain locks
        only: fencing, lock-delay and notify keep the scripts, as do batches
        and the nodes without the commands.  False: scripts everywhere.
    allow_same_server:
        Accept entries that reach one server (two databases of it, two
        addresses), with a ``UserWarning`` instead of a ``ConfigurationError``
        at connect: that server's votes fall together, so the quorum is weaker
        than it looks.  Off by default; the pottery and aioredlock drop-ins
        turn it on because those libraries accept it.
    """

    #: The face (quorumlock._faces): operations return awaitables.
    is_async = True

    def _init_api(self) -> None:
        self._engine: Any = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closing = False
        self._reconnecting: dict = {}
        self._dup_logged: set = set()
        self._forked_loop: Any = None   # the parent's loop, in a forked child

    def _after_fork_child(self) -> None:
        """In a forked child: forget the inherited engine without touching
        it.  Its transports, and the event loop's selector, are shared with
        the parent: closing or reading them here would break the parent's
        connections or steal its replies.  The child must ``await
        connect()`` on an event loop of its own (``asyncio.run`` in the
        child); reusing the inherited loop object is refused."""
        self._pid = os.getpid()
        if self._loop is not None:
            self._forked_loop = self._loop
        self._engine = None
        self._loop = None
        self._reconnecting = {}
        self.lease_renewer = None
        self.release_subscriber = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def engine(self) -> Any:
        """The engine (compiled or pure-Python twin) once connected."""
        return self._engine

    def current_engine(self) -> Any:
        """The engine, or None when not connected (no error, no connect)."""
        return self._engine

    def engines_in_use(self) -> List[Any]:
        """The engine, as a list (empty when not connected)."""
        return [] if self._engine is None else [self._engine]

    async def connect(self) -> "LockManager":
        """Connect to every node.  A node that is down only costs its vote (it
        is retried in the background); a configuration error (wrong password,
        a replica, two URLs reaching one server) raises ``ConfigurationError``."""
        if os.getpid() != self._pid:
            self._after_fork_child()
        if self._engine is not None:
            return self
        loop = asyncio.get_running_loop()
        if self._forked_loop is not None and loop is self._forked_loop:
            raise RuntimeError(
                "this LockManager was connected before fork(): in the child, connect it on a new "
                "event loop (e.g. asyncio.run(...) in the child), not on the loop inherited from the parent")
        self._loop = loop
        self._closing = False
        self._engine = self.core.Engine(
            loop,
            [s.name for s in self.node_specs],
            self,
            self._opts.node_timeout,
            self._opts.drift_factor,
            self._opts.max_key_length,
            self._opts.batch_chunk,
        )
        self._configure(self._engine)
        results = await asyncio.gather(
            *(self._connect_node(i, initial=True) for i in range(self.n)), return_exceptions=True
        )
        config_errors = [r for r in results if isinstance(r, ConfigurationError)]
        if not config_errors:
            try:
                _handshake.check_unique(self.node_specs, [nd.run_id for nd in self._engine.nodes],
                                        self._allow_same_server)
            except ConfigurationError as exc:
                config_errors.append(exc)
        if config_errors:
            await self.close()
            raise config_errors[0]
        for i, r in enumerate(results):
            if isinstance(r, BaseException) and not isinstance(r, ConfigurationError):
                log.warning("%s unreachable at connect (%r); retrying in the background",
                            self.node_specs[i].name, r)
                self._schedule_reconnect(i)
        return self

    async def close(self) -> None:
        """Close every connection (queued releases are written first)."""
        if os.getpid() != self._pid:
            self._after_fork_child()   # never close the parent's transports
        self._closing = True
        _close_leases(self)
        for t in list(self._reconnecting.values()):
            t.cancel()
        self._reconnecting.clear()
        eng = self._engine
        if eng is None:
            return
        # Wait (briefly) for the replies still owed: closing a connection with
        # unread replies resets it, and the node drops the commands it had
        # not read yet, e.g. the releases just sent.
        eng.flush()
        deadline = time.monotonic() + min(2.0, max(0.1, 2 * self._opts.node_timeout))
        while time.monotonic() < deadline and any(nd.pending and nd.connected for nd in eng.nodes):
            await asyncio.sleep(0.001)
        eng.close()
        # Let the transports finish closing (and their connection_lost run).
        for _ in range(3):
            await asyncio.sleep(0)
        self._engine = None

    async def __aenter__(self) -> "LockManager":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _open(self, i: int) -> None:
        spec = self.node_specs[i]
        await _handshake.open_async(self._loop, spec, self._engine.make_protocol(i), spec.connect_timeout)

    async def _connect_node(self, i: int, initial: bool) -> None:
        spec = self.node_specs[i]
        eng = self._engine
        node = eng.nodes[i]
        try:
            await self._open(i)
            await asyncio.wait_for(self._handshake(i, initial), spec.connect_timeout)
        except ConfigurationError:
            node.abort()
            raise
        except BaseException:
            node.abort()
            raise
        if not initial and not self._allow_same_server:
            # Identity on every reconnect (the first connect checks all nodes
            # at once, check_unique): the same server under another spelling,
            # already counted, must not vote a second time.  Checked right
            # before ``ready`` with no await in between, so two reconnects
            # cannot both pass.
            dup = _handshake.duplicate_of(i, node.run_id, eng.nodes)
            if dup is not None:
                text = _handshake.duplicate_text(self.node_specs, i, dup)
                eng.down_detail[i] = text
                node.abort()
                raise DuplicateNode(text)
        eng.down_detail[i] = None
        node.ready = True
        # Clean-up releases that could not reach it while it was away.
        eng.node_ready(i)

    async def _handshake(self, i: int, initial: bool) -> None:
        spec = self.node_specs[i]
        eng = self._engine
        t = spec.connect_timeout
        futs = [(name, eng.call(i, args, t)) for name, args in _handshake.commands(spec, self._opts.native_commands)]
        for _name, fut in futs:
            # If the handshake fails midway, the later futures fail with
            # nobody awaiting them: retrieve their exceptions so the loop
            # does not report "Future exception was never retrieved".
            fut.add_done_callback(_retrieve)
        replies = [(name, await fut) for name, fut in futs]
        info = _handshake.check(spec, replies)
        node = eng.nodes[i]
        eng.set_native(i, *_handshake.native_support(replies))
        node.info = info
        node.run_id = info.get("run_id")
        node.counted_after = self.guard_state.on_connect(
            i, spec, info, initial, self._opts.restart_guard, self.guard_window, self.core.monotonic_ns()
        )


    def node_lost(self, i: int, exc: Any) -> None:
        """The engine lost its connection to node ``i`` (LockOwner)."""
        if not self._closing:
            self._schedule_reconnect(i)

    def _schedule_reconnect(self, i: int) -> None:
        if self._closing or i in self._reconnecting or self._loop is None:
            return
        self._reconnecting[i] = self._loop.create_task(self._reconnect_loop(i))

    async def _reconnect_loop(self, i: int) -> None:
        delay = _RECONNECT_MIN
        try:
            while not self._closing:
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                if self._closing or self._engine is None:
                    return
                try:
                    await self._connect_node(i, initial=False)
                    log.info("reconnected to %s", self.node_specs[i].name)
                    return
                except DuplicateNode as exc:
                    # Retried slowly: it counts again only if the node it
                    # duplicates goes away.  Said once, not at every retry.
                    if i not in self._dup_logged:
                        self._dup_logged.add(i)
                        log.error("%s", exc)
                    delay = max(delay, 0.5)
                except ConfigurationError as exc:
                    log.error("%s: %s", self.node_specs[i].name, exc)
                except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                    log.debug("reconnect to %s failed: %r", self.node_specs[i].name, exc)
                delay = min(delay * 2, _RECONNECT_MAX)
        finally:
            self._reconnecting.pop(i, None)

    def checkout(self) -> Any:
        """The engine (``RuntimeError`` when not connected, or in a forked child before ``connect()``)."""
        if os.getpid() != self._pid:
            self._after_fork_child()
        eng = self._engine
        if eng is None:
            if self._forked_loop is not None:
                raise RuntimeError(
                    "this LockManager was connected before fork(): the child must await connect() "
                    "on its own event loop first (inherited connections are never used)")
            raise RuntimeError("LockManager is not connected: use 'async with LockManager(...)' or await connect()")
        return eng


    # -- locks -------------------------------------------------------------

    def try_acquire(self, key: Any, ttl: Optional[float] = None) -> Awaitable[Optional[Any]]:
        """One quorum attempt: a coroutine of a ``Lock``, or None if a majority
        was not reached with validity left.  A failed attempt releases on every
        node.  Nothing is sent until it is awaited (a forgotten ``await`` warns
        and takes no lock); cancelling the await never leaves the key set."""
        coro = _try_acquire(self.checkout(), key, self.ttl_ms(ttl))
        obs = self.observer
        return coro if obs is None else _observed_try(coro, obs)

    async def attempt_token(self, key: Any, token: bytes, px: Optional[int] = None, *,
                            timeout: Optional[float] = None) -> Any:
        """One quorum attempt to acquire ``key`` with a token the caller chose:
        ``SET key token NX PX px`` on every node (no ``PX`` when ``px`` is
        None or 0: no expiry).  As ``quorumlock.LockManager.attempt_token``:
        decided as ``try_acquire``, released everywhere on failure, returns
        the decided operation (``.result``: the ``Lock`` or None;
        ``.outcomes()``; ``timeout``: the per-node reply deadline, s).
        Cancelling the await never leaves the key set."""
        eng = self.checkout()
        ms = check_px(px, self._opts.drift_factor, self._opts.max_ttl)
        t = 0.0 if timeout is None else check_seconds("timeout", timeout)
        if ms > self._max_ttl_used_ms:
            self._max_ttl_used_ms = ms
        op = eng.attempt_token(key, token, ms, t)
        await receive(eng, op.waiter)
        return op

    async def acquire(
        self,
        key: Any,
        ttl: Optional[float] = None,
        *,
        timeout: Optional[float] = None,
        retry_count: Optional[int] = None,
        wait: Optional[str] = None,
        reentrant: bool = False,
    ) -> Any:
        """Acquire ``key``, retrying with jittered delays.

        With ``timeout`` (seconds), retries until it has passed; otherwise makes
        ``retry_count`` attempts (the manager's default: 3).  Raises
        ``LockTimeout`` with the per-node outcome of the last attempt.
        ``wait="notify"`` (the default with ``notify=True``) retries as soon as
        a majority of nodes report the key released, with the jittered delay
        as the bound of every wait; ``wait="poll"`` only polls."""
        if reentrant:  # the same task may re-acquire (quorumlock.reentrant)
            return await _reentrant().aacquire(self, key, ttl, timeout=timeout, retry_count=retry_count, wait=wait)
        if wait is not None or self._notify or self.meter is not None:
            return await _lease_async.acquire(self, key, ttl, timeout=timeout, retry_count=retry_count, wait=wait)
        eng = self.checkout()
        ttl_ms = self.ttl_ms(ttl)
        retry = _policy.from_options(self._opts, timeout=timeout, retry_count=retry_count, now=time.monotonic())
        last: Any = None

        async def attempt() -> Optional[Any]:
            nonlocal last
            last = eng.attempt(key, ttl_ms)
            return await receive(eng, last.waiter)

        lock = await _policy.run_async(attempt, retry)
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
        cancel: bool = True,
        renew_fraction: float = 1.0 / 3.0,
        reentrant: bool = False,
    ) -> Any:
        """``async with locks.lock(key, ttl=30.0) as lock:`` acquires (as
        ``acquire``) and releases at the end of the block.

        With ``auto_extend=True`` the lease is renewed every ``ttl *
        renew_fraction`` while the block runs, at most for ``max_hold``
        seconds.  Any of ``auto_extend``, ``max_hold``, ``on_lost``, ``margin``
        guards the lease: when it is lost (renewals failed to reach a quorum
        in time, ``max_hold`` reached, validity ran out), the task running the
        block is cancelled ``margin`` seconds before validity ends (unless
        ``cancel=False``), ``lock.lost`` is set, ``on_lost(lock, reason)`` is
        called, and the block raises ``LockLost`` (``quorumlock.leases``)."""
        if reentrant:  # counted per owner (quorumlock.reentrant)
            return _reentrant().AsyncLockContext(self, key, ttl, timeout, retry_count, wait, auto_extend=auto_extend,
                                       max_hold=max_hold, on_lost=on_lost, margin=margin, cancel=cancel,
                                       renew_fraction=renew_fraction)
        if auto_extend or max_hold is not None or on_lost is not None or margin is not None:
            return _lease_async.AsyncLeaseContext(
                self, key, ttl, timeout, retry_count, wait, auto_extend=bool(auto_extend), max_hold=max_hold,
                on_lost=on_lost, margin=margin, cancel=bool(cancel), renew_fraction=renew_fraction)
        if wait is not None:
            return _lease_async.AsyncLeaseContext(self, key, ttl, timeout, retry_count, wait, _guarded=False)
        return _LockContext(self, key, ttl, timeout, retry_count)

    def acquire_many(self, keys: Iterable[Any], ttl: Optional[float] = None) -> Awaitable[List[Optional[Any]]]:
        """One attempt per key, all pipelined (one script call per node per
        chunk of keys): a coroutine of a list of ``Lock`` or None, in order.
        ``keys`` is an iterable of keys, never one str/bytes (``TypeError``).
        As with ``try_acquire``, nothing is sent until it is awaited and a
        cancelled await releases whatever was granted."""
        eng = self.checkout()
        check_keys_arg(keys)
        ttl_ms = self.ttl_ms(ttl)
        coro = _acquire_many(eng, keys, ttl_ms, bool(self._opts.fencing or self._opts.lock_delay_ms))
        obs = self.observer
        return coro if obs is None else _observed_many(coro, obs)

    def release_many(self, locks: Iterable[Any]) -> Awaitable[List[bool]]:
        """Release many locks at once: an awaitable of a list of bools (True
        where the lock was still ours on a majority)."""
        locks = list(locks)
        lock_cls = self.core.Lock
        for lk in locks:
            if not isinstance(lk, lock_cls):
                raise TypeError(f"release_many takes Lock objects, got {type(lk).__name__}")
            _check_same_process(lk, "release")
        eng = self.checkout()
        obs = self.observer
        held = 0 if obs is None else sum(1 for lk in locks if not lk.released)
        t0 = 0 if obs is None else _now_ns()
        if self._opts.lock_delay_ms or self._notify:
            # The batch script neither lifts lock-delays nor publishes.
            fut: Any = asyncio.gather(*[eng.release(lk) for lk in locks])
        else:
            fut = eng.release_many(locks)
        if obs is not None:
            fut = asyncio.ensure_future(fut)
            fut.add_done_callback(partial(_observed_release_many, obs, t0, held))
        return fut

    async def release_op(self, lock: Any) -> Any:
        """``await lock.release()`` returning the decided operation:
        ``.result`` is True if our token was deleted on a majority,
        ``.outcomes()`` says what each node answered (``quorumlock.compat``)."""
        op = self.checkout().release_op(lock)
        await op.waiter
        return op

    async def release(self, lock: Any) -> bool:
        """Same as ``await lock.release()``."""
        return await self.release_lock(lock)

    async def release_token(self, key: Any, token: bytes, *, signal: Optional[Any] = None, signal_ms: int = 1000,
                            timeout: Optional[float] = None) -> Any:
        """Release ``key`` where it holds the caller's ``token``, decided at a
        majority, with an optional wake-up pushed on the list ``signal``
        (``signal_ms``: its expiry).  As ``quorumlock.LockManager.release_token``:
        returns the decided operation (``.result``, ``.outcomes()``)."""
        eng = self.checkout()
        t = 0.0 if timeout is None else check_seconds("timeout", timeout)
        op = eng.release_token(key, token, signal, signal_ms, t)
        await op.waiter
        return op

    async def call_nodes(
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
        eng = self.checkout()
        if lease_ms is not None:
            lease_ms = check_int("lease_ms", lease_ms, minimum=0, maximum=int(MAX_SECONDS * 1000))
        if lease_ms is not None and lease_ms > self._max_ttl_used_ms:
            self._max_ttl_used_ms = int(lease_ms)
        now = self.core.monotonic_ns()
        results: List[Any] = [None] * self.n
        waiting = []
        for i, args in enumerate(cmds):
            nd = eng.nodes[i]
            if args is None:
                continue
            if not nd.ready:
                results[i] = ConnectionError(f"{self.node_specs[i].name}: not connected")
            elif guarded and eng.guard and nd.counted_after > now:
                results[i] = ConnectionError(f"{self.node_specs[i].name}: restart guard: node restarted recently")
            else:
                fut = eng.call(i, args, t)
                # Replies still due when the caller is cancelled are retrieved
                # here, never reported to the loop as unretrieved exceptions.
                fut.add_done_callback(_retrieve)
                waiting.append((i, fut))
        for i, fut in waiting:
            try:
                results[i] = await fut
            except (TimeoutError, ConnectionError) as exc:
                results[i] = exc
        return results

    # -- leases, jobs, metrics ----------------------------------------------

    def guard(
        self,
        lock: Any,
        *,
        auto_extend: bool = True,
        max_hold: Optional[float] = None,
        on_lost: Any = None,
        margin: Optional[float] = None,
        cancel: bool = False,
        renew_fraction: float = 1.0 / 3.0,
    ) -> Any:
        """Watch a held ``lock`` (and renew it with ``auto_extend``) until it is
        released; see ``lock()``.  ``cancel=True`` cancels the current task
        when the lease is lost.  Returns the lock."""
        _check_same_process(lock, "guard")
        _lease_async.guard(self, lock, auto_extend=auto_extend, max_hold=max_hold, on_lost=on_lost,
                           margin=margin, cancel=cancel, renew_fraction=renew_fraction)
        return lock

    def exclusive(self, key: Any, ttl: Optional[float] = None, **options: Any) -> Any:
        """Decorator: run a coroutine function only while holding ``key`` (a
        ``str.format`` template of its arguments); see ``quorumlock.jobs``."""
        from .jobs import exclusive

        return exclusive(self, key, ttl, **options)

    def metrics(self) -> dict:
        """Counters and latency histograms as plain data (``quorumlock.metrics``)."""
        return _metrics_mod.snapshot(self)

    def health(self, timeout: Optional[float] = None) -> Awaitable["_health.Health"]:
        """Every node's reachability, role, run_id (and how long this manager has
        known it), uptime, clock offset, version, lock commands and latency; a
        down or paused node is reported, not raised (docs/configuration.md)."""
        return _health.health_async(self, timeout)

    def lock_lost_event(self, lock: Any) -> Any:
        """The event set when ``lock``'s lease is lost (``lock.lost``; LockOwner)."""
        return _lease_async.lost_event(self, lock)

    def check_lock(self, lock: Any) -> float:
        """``lock.check()`` (LockOwner): the validity left, or ``LockLost`` / ``LockNotOwned``."""
        return _lease_async.check(self, lock)

    # -- callbacks used by Lock --------------------------------------------

    def release_lock(self, lock: Any) -> Awaitable[bool]:
        """``lock.release()`` (LockOwner): the engine's future of True if our
        token was deleted on a majority."""
        _check_same_process(lock, "release")
        obs = self.observer
        if obs is None or lock.released:
            return self.checkout().release(lock)
        t0 = _now_ns()
        fut = self.checkout().release(lock)
        obs.on_release_start()
        fut.add_done_callback(partial(_observed_release, obs, t0))
        return fut

    async def extend_lock(self, lock: Any, ttl: Optional[float]) -> bool:
        """``await lock.extend(ttl)`` (LockOwner): True, or ``LockNotOwned``."""
        obs = self.observer
        if obs is None:
            return await self._extend_now(lock, ttl)
        t0 = _now_ns()
        try:
            r = await self._extend_now(lock, ttl)
        except Exception:
            obs.on_extend((_now_ns() - t0) / 1e9, False)
            raise
        obs.on_extend((_now_ns() - t0) / 1e9, True)
        return r

    async def _extend_now(self, lock: Any, ttl: Optional[float]) -> bool:
        _check_same_process(lock, "extend")
        ttl_ms = self.ttl_ms(ttl) if ttl is not None else int(round(lock.ttl * 1000))
        ok = await self.checkout().extend(lock, ttl_ms)
        if not ok:
            raise LockNotOwned(f"could not extend {lock.key!r}: not held on a majority with validity left")
        return True

    async def aenter_lock(self, lock: Any) -> Any:
        """``async with lock:`` (LockOwner)."""
        return lock

    async def aexit_lock(self, lock: Any, exc_type: Any) -> None:
        """The end of ``async with lock:`` (LockOwner)."""
        await self.release_lock(lock)

    def enter_lock(self, lock: Any) -> Any:
        """``with lock:`` (LockOwner)."""
        raise TypeError("this lock belongs to an asyncio LockManager: use 'async with'")

    def exit_lock(self, lock: Any, exc_type: Any) -> None:
        """The end of ``with lock:`` (LockOwner)."""
        raise TypeError("this lock belongs to an asyncio LockManager: use 'async with'")

    def __repr__(self) -> str:
        state = "connected" if self._engine is not None else "not connected"
        return f"<quorumlock.aio.LockManager {self.n} nodes quorum={self.quorum} {state} [{self.core.IMPLEMENTATION}]>"

    # -- semaphores and read-write locks (quorumlock.semaphore, quorumlock.rwlock) --

    def semaphore(self, name: Any, permits: int, ttl: Optional[float] = None) -> Any:
        """At most ``permits`` holders of ``name`` at once: ``permits`` permit
        keys, all tried in one pipelined round (docs/semaphores.md)."""
        from .semaphore import AsyncSemaphore

        return AsyncSemaphore(self, name, permits, ttl)

    def rwlock(self, name: Any, max_readers: int = 16, ttl: Optional[float] = None) -> Any:
        """Shared readers (at most ``max_readers``), exclusive writers, no
        writer starvation (docs/semaphores.md)."""
        from .rwlock import AsyncRWLock

        return AsyncRWLock(self, name, max_readers, ttl)


async def _observed_try(coro: Any, obs: Any) -> Any:
    t0 = _now_ns()
    ok = False
    try:
        lock = await coro
        ok = lock is not None
        return lock
    finally:
        obs.on_acquire((_now_ns() - t0) / 1e9, ok)


async def _observed_many(coro: Any, obs: Any) -> Any:
    t0 = _now_ns()
    res = await coro
    got = sum(1 for x in res if x is not None)
    obs.on_batch("acquire", (_now_ns() - t0) / 1e9, got, len(res), got)
    return res


def _observed_release(obs: Any, t0: int, fut: "asyncio.Future[Any]") -> None:
    ok = not fut.cancelled() and fut.exception() is None and bool(fut.result())
    obs.on_release((_now_ns() - t0) / 1e9, ok)


def _observed_release_many(obs: Any, t0: int, held: int, fut: "asyncio.Future[Any]") -> None:
    if fut.cancelled() or fut.exception() is not None:
        return
    res = fut.result()
    obs.on_batch("release", (_now_ns() - t0) / 1e9, sum(1 for x in res if x), len(res), -held)


def _retrieve(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled():
        fut.exception()


def abandon(eng: Any, waiter: "asyncio.Future[Any]") -> None:
    """The caller awaiting an acquire's ``waiter`` was cancelled.

    Still pending: the future is cancelled with the task, and the engine, on
    deciding, releases a lock nobody will receive.  Already resolved (the
    cancellation landed between the decision and the caller resuming): the
    Lock (or the batch's Locks) in it will never reach anyone, so release
    them now, in the background."""
    if not waiter.done():
        waiter.cancel()
        return
    if waiter.cancelled() or waiter.exception() is not None:
        return
    result = waiter.result()
    for lock in (result if isinstance(result, list) else (result,)):
        if lock is not None and not lock.released:
            eng.release(lock).add_done_callback(_retrieve)


async def receive(eng: Any, waiter: "asyncio.Future[Any]") -> Any:
    """``await waiter`` (an acquire's future), releasing what it granted if
    the await is cancelled (see ``abandon``)."""
    try:
        return await waiter
    except asyncio.CancelledError:
        abandon(eng, waiter)
        raise


async def _try_acquire(eng: Any, key: Any, ttl_ms: int) -> Optional[Any]:
    # ``receive`` inlined: one coroutine per call on the hot path.
    waiter = eng.try_acquire(key, ttl_ms)
    try:
        return await waiter
    except asyncio.CancelledError:
        abandon(eng, waiter)
        raise


async def _acquire_many(eng: Any, keys: Iterable[Any], ttl_ms: int, per_key: bool) -> List[Optional[Any]]:
    if not per_key:
        return await receive(eng, eng.acquire_many(keys, ttl_ms))
    # The batch scripts issue neither fences nor lock-delays: one single-key
    # attempt per key (still one write per node per iteration, thanks to
    # auto-pipelining).
    keys = list(keys)
    # Validate every key before sending any: a bad key halfway would leave
    # the earlier attempts' locks held by nobody.
    ids = [eng.check_key(k) for k in keys]
    if len(set(ids)) != len(ids):
        raise ValueError("keys: the same key appears twice in one batch")
    futs = [eng.try_acquire(k, ttl_ms) for k in keys]
    try:
        return list(await asyncio.gather(*futs))
    except asyncio.CancelledError:
        for f in futs:
            abandon(eng, f)
        raise


class _LockContext:
    __slots__ = ("_mgr", "_key", "_ttl", "_timeout", "_retry", "_lock")

    def __init__(self, mgr: LockManager, key: Any, ttl: Any, timeout: Any, retry: Any) -> None:
        self._mgr = mgr
        self._key = key
        self._ttl = ttl
        self._timeout = timeout
        self._retry = retry
        self._lock = None

    async def __aenter__(self) -> Any:
        self._lock = await self._mgr.acquire(self._key, self._ttl, timeout=self._timeout, retry_count=self._retry)
        return self._lock

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            # Shielded: a cancelled block still releases (the release is already
            # queued on every connection when the await starts).
            await asyncio.shield(self._mgr.release_lock(lock))


def _reentrant() -> Any:
    from . import reentrant

    return reentrant
