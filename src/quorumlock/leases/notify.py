"""Waiting for a busy lock without polling (docs/schedulers.md).

A waiter (``acquire(..., wait="notify")``) subscribes on every node to two
channels of its key:

* ``ql:released:<key>``: the notify form of the release script PUBLISHes
  there when it deleted a token (managers made with ``notify=True``; the
  default release stays one script call without a PUBLISH);
* ``__keyspace@<db>__:<key>``: the server's keyspace notifications, when it
  has them enabled (``notify-keyspace-events`` with ``K`` plus ``g`` and
  ``x``): a ``del`` or an ``expired`` event.  This one also covers a holder
  that crashed (its key expires) and releases by clients without ``notify``.

The waiter retries as soon as enough of the nodes that said "held" in its
last attempt reported the key free for a majority to be possible; the jittered
retry delay still bounds every wait, so a lost message, a node whose
subscription failed or a server without notifications cost at most one
polling interval: never a hang.

Subscriptions are not on the hot path: one pub/sub connection per node per
manager (shared by all of its waiters, reference-counted per key), a small
asyncio protocol over ``hiredis.Reader``.  The blocking API runs the same
subscriber on one background event-loop thread per process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set

import hiredis

from .. import _handshake
from .._scripts import RELEASE_CHANNEL_PREFIX

log = logging.getLogger("quorumlock")

__all__ = ["Watch", "AsyncSubscriber", "ThreadSubscriber", "async_subscriber", "thread_subscriber",
           "RELEASE_CHANNEL_PREFIX", "FREE_EVENTS"]

#: Keyspace events that mean "the key is gone".
FREE_EVENTS = frozenset((b"del", b"expired", b"evicted", b"unlink"))


class Watch:
    """One waiter's subscription to one key.  ``freed``: the nodes that
    reported the key free since the last ``mark()``; ``wake()`` is called on
    every such report (from the subscriber's event loop)."""

    __slots__ = ("key", "wake", "freed")

    def __init__(self, key: bytes, wake: Callable[[], Any]) -> None:
        self.key = key
        self.wake = wake
        self.freed: Set[int] = set()

    def mark(self) -> None:
        """Start collecting anew (call before each attempt is sent)."""
        self.freed = set()

    def _free(self, idx: int) -> None:
        self.freed.add(idx)
        try:
            self.wake()
        except Exception:  # pragma: no cover
            log.exception("waiter wake-up failed")


def _resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


def _b(v: Any) -> bytes:
    return v.encode() if isinstance(v, str) else bytes(v)


class _SubProtocol(asyncio.Protocol):
    def __init__(self, sub: "AsyncSubscriber", idx: int) -> None:
        self.sub = sub
        self.idx = idx
        self.reader = hiredis.Reader()
        self.transport: Any = None
        self.handshake: List[asyncio.Future] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                r = self.reader.gets()
            except Exception as exc:  # protocol error: drop the connection
                log.warning("pub/sub protocol error from %s: %r", self.sub.names[self.idx], exc)
                self.transport.abort()
                return
            if r is False:
                return
            if self.handshake:
                fut = self.handshake.pop(0)
                if not fut.done():
                    fut.set_result(r)
                continue
            self.sub._on_reply(self.idx, r)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        for fut in self.handshake:
            if not fut.done():
                fut.set_exception(ConnectionError("connection lost during the handshake"))
        self.handshake = []
        self.sub._on_lost(self.idx, self)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class AsyncSubscriber:
    """One pub/sub connection per node, shared by every waiter of a manager,
    on one event loop."""

    def __init__(self, specs: List[Any], loop: asyncio.AbstractEventLoop, connect_timeout: float,
                 confirm_timeout: float) -> None:
        self.specs = specs
        self.names = [s.name for s in specs]
        self.n = len(specs)
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.confirm_timeout = confirm_timeout
        self.protos: List[Optional[_SubProtocol]] = [None] * self.n
        self.connecting: List[Any] = [None] * self.n
        self.first_try = [False] * self.n          # a first connect (no backoff) is under way
        self.confirmed: List[Set[bytes]] = [set() for _ in range(self.n)]
        self.wanted: Dict[bytes, bytes] = {}       # channel -> key
        self.watches: Dict[bytes, Set[Watch]] = {}
        self.changed = asyncio.Event()
        self.backoff = [0.1] * self.n
        self.closed = False
        self.messages = 0

    def channels(self, i: int, key: bytes) -> List[bytes]:
        return [RELEASE_CHANNEL_PREFIX + key, b"__keyspace@%d__:%b" % (self.specs[i].db, key)]

    # -- waiters --------------------------------------------------------------

    async def watch(self, key: bytes, wake: Callable[[], Any]) -> Watch:
        """Subscribe ``wake`` to ``key`` on every node; returns once every
        reachable node confirmed the subscription (or ``confirm_timeout``
        passed: the waiter then relies on polling for the missing nodes)."""
        if self.closed:
            raise RuntimeError("subscriber closed")
        w = Watch(key, wake)
        ws = self.watches.get(key)
        if ws is None:
            ws = self.watches[key] = set()
            for i in range(self.n):
                chans = self.channels(i, key)
                for ch in chans:
                    self.wanted[ch] = key
                p = self.protos[i]
                if p is not None:
                    p.send(_resp(b"SUBSCRIBE", *chans))
        ws.add(w)
        self._ensure_connected()
        deadline = time.monotonic() + self.confirm_timeout
        while True:
            ev = self.changed
            missing = [i for i in range(self.n)
                       if (self.protos[i] is not None or self.first_try[i])
                       and not set(self.channels(i, key)) <= self.confirmed[i]]
            if not missing:
                return w
            left = deadline - time.monotonic()
            if left <= 0:
                log.debug("subscription to %r not confirmed by %s", key,
                          [self.names[i] for i in missing])
                return w
            try:
                await asyncio.wait_for(ev.wait(), left)
            except asyncio.TimeoutError:
                pass

    def unwatch(self, w: Watch) -> None:
        ws = self.watches.get(w.key)
        if ws is None:
            return
        ws.discard(w)
        if ws:
            return
        del self.watches[w.key]
        for i in range(self.n):
            chans = self.channels(i, w.key)
            for ch in chans:
                self.wanted.pop(ch, None)
                self.confirmed[i].discard(ch)
            p = self.protos[i]
            if p is not None:
                p.send(_resp(b"UNSUBSCRIBE", *chans))

    def close(self) -> None:
        self.closed = True
        for t in self.connecting:
            if t is not None:
                t.cancel()
        for p in self.protos:
            if p is not None and p.transport is not None:
                p.transport.close()
        self.protos = [None] * self.n

    # -- connections ----------------------------------------------------------

    def _ensure_connected(self) -> None:
        for i in range(self.n):
            if self.protos[i] is None and self.connecting[i] is None and not self.closed:
                self.first_try[i] = True
                self.connecting[i] = self.loop.create_task(self._connect(i, 0.0))

    async def _connect(self, i: int, delay: float) -> None:
        spec = self.specs[i]
        try:
            if delay:
                await asyncio.sleep(delay)
            proto = _SubProtocol(self, i)
            await _handshake.open_async(self.loop, spec, proto, self.connect_timeout)
            auth = _handshake.auth_command(spec)
            if auth is not None:
                fut = self.loop.create_future()
                proto.handshake.append(fut)
                proto.send(_resp(*(_b(a) for a in auth)))
                r = await asyncio.wait_for(fut, self.connect_timeout)
                if isinstance(r, hiredis.ReplyError):
                    log.error("pub/sub AUTH to %s failed: %s", spec.name, r)
                    proto.transport.close()
                    return
            if self.closed:
                proto.transport.close()
                return
            self.protos[i] = proto
            self.backoff[i] = 0.1
            chans = [ch for key in self.watches for ch in self.channels(i, key)]
            if chans:
                proto.send(_resp(b"SUBSCRIBE", *chans))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("pub/sub connect to %s failed: %r", spec.name, exc)
            self._retry_later(i)
        finally:
            if self.connecting[i] is asyncio.current_task():
                self.connecting[i] = None
            self.first_try[i] = False
            self._changed()

    def _retry_later(self, i: int) -> None:
        if self.closed or not self.watches:
            return
        b = self.backoff[i]
        self.backoff[i] = min(b * 2, 2.0)
        self.loop.call_soon(self._spawn_retry, i, b * random.uniform(0.5, 1.5))

    def _spawn_retry(self, i: int, delay: float) -> None:
        if self.protos[i] is None and self.connecting[i] is None and not self.closed:
            self.connecting[i] = self.loop.create_task(self._connect(i, delay))

    def _on_lost(self, i: int, proto: _SubProtocol) -> None:
        if self.protos[i] is proto:
            self.protos[i] = None
            self.confirmed[i].clear()
            self._changed()
            self._retry_later(i)

    def _changed(self) -> None:
        ev, self.changed = self.changed, asyncio.Event()
        ev.set()

    def _on_reply(self, i: int, r: Any) -> None:
        if type(r) is not list or len(r) < 3:
            return
        kind, ch = r[0], r[1]
        if kind == b"message":
            key = self.wanted.get(ch)
            if key is None:
                return
            if ch.startswith(b"__keyspace@") and r[2] not in FREE_EVENTS:
                return
            self.messages += 1
            for w in list(self.watches.get(key, ())):
                w._free(i)
        elif kind == b"subscribe":
            if ch in self.wanted:
                self.confirmed[i].add(ch)
                self._changed()
        elif kind == b"unsubscribe":
            if ch not in self.wanted:
                self.confirmed[i].discard(ch)


def _confirm_timeout(mgr: Any) -> float:
    o = mgr.options
    return min(o.connect_timeout, max(0.1, 4 * o.node_timeout))


def async_subscriber(mgr: Any) -> AsyncSubscriber:
    """The subscriber of an asyncio manager (made on first use)."""
    loop = asyncio.get_running_loop()
    sub = getattr(mgr, "release_subscriber", None)
    if sub is None or sub.closed or sub.loop is not loop:
        sub = AsyncSubscriber(mgr.node_specs, loop, mgr.options.connect_timeout, _confirm_timeout(mgr))
        mgr.release_subscriber = sub
    return sub


# -- the blocking side: the same subscriber on a background loop thread ----------


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._run, name="quorumlock-notify", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()


_loop_thread: Optional[_LoopThread] = None
_loop_mutex = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop_thread
    with _loop_mutex:
        lt = _loop_thread
        if lt is None or lt.pid != os.getpid() or not lt.thread.is_alive():
            lt = _loop_thread = _LoopThread()
        return lt.loop


class ThreadSubscriber:
    """``AsyncSubscriber`` for threads: runs on a per-process background loop;
    ``watch``/``unwatch`` are called from any thread; ``wake`` callbacks run
    in the loop thread (a ``threading.Event.set`` is the usual one)."""

    def __init__(self, mgr: Any) -> None:
        self.loop = _background_loop()
        self.pid = os.getpid()
        self.confirm_timeout = _confirm_timeout(mgr)
        specs, ct = mgr.node_specs, mgr.options.connect_timeout

        async def make() -> AsyncSubscriber:
            return AsyncSubscriber(specs, self.loop, ct, self.confirm_timeout)

        self.sub = asyncio.run_coroutine_threadsafe(make(), self.loop).result(5.0)

    @property
    def closed(self) -> bool:
        return self.sub.closed or self.pid != os.getpid()

    def watch(self, key: bytes, wake: Callable[[], Any]) -> Watch:
        fut = asyncio.run_coroutine_threadsafe(self.sub.watch(key, wake), self.loop)
        return fut.result(self.confirm_timeout + 2.0)

    def unwatch(self, w: Watch) -> None:
        if self.pid == os.getpid():
            self.loop.call_soon_threadsafe(self.sub.unwatch, w)

    def close(self) -> None:
        if self.pid == os.getpid():
            self.loop.call_soon_threadsafe(self.sub.close)


def thread_subscriber(mgr: Any) -> ThreadSubscriber:
    """The subscriber of a blocking manager (made on first use; a forked
    child makes its own)."""
    sub = getattr(mgr, "release_subscriber", None)
    if sub is None or sub.closed:
        with mgr.state_mutex:
            sub = getattr(mgr, "release_subscriber", None)
            if sub is None or sub.closed:
                sub = ThreadSubscriber(mgr)
                mgr.release_subscriber = sub
    return sub
