"""A user-space TCP fault proxy (the stand-in for toxiproxy and ``tc netem``,
neither of which exists on the machines this project runs on: docs/faults.md, how the faults are made).

One ``FaultProxy`` listens on a loopback port and forwards to one Redis node.
Its mode can be switched at run time, and applies to connections that are
already open:

``pass``        forward both ways.
``latency``     delay every chunk by ``delay`` seconds in each direction.
``blackhole``   read and discard in both directions (a partition without RST).
``half-reply``  forward requests to the node, drop its replies: the node
                applies the command but the client never hears (docs/faults.md row 17).
``reset``       abort every connection with RST (SO_LINGER 0), and new ones too.
``stall``       hold the bytes (stop reading) until the mode changes, then
                deliver them: a partition that heals before TCP gives up, as
                an ``iptables DROP`` with retransmission behaves.

A stream that lost bytes (``blackhole``, ``half-reply``) cannot go on as if
nothing happened: TCP never delivers a stream with a hole in it, and a client
would match the later replies to the wrong requests.  With
``reset_on_heal=True`` such connections are reset when the mode leaves
``blackhole``/``half-reply`` (the chaos harness uses this; the default keeps
the old behaviour).

The proxy runs its own event loop in a daemon thread, so it serves asyncio and
blocking clients alike and keeps working while the client's loop is busy.
Many proxies can share one such thread: pass ``hub=ProxyHub()`` (the chaos
harness gives every client its own proxy per node, so that a fault can hit one
client's links only, and runs them all on one loop)."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Optional, Set, Tuple

MODES = ("pass", "latency", "blackhole", "half-reply", "reset", "stall")
_LOSSY = ("blackhole", "half-reply")


class ProxyHub:
    """One event loop in one daemon thread that serves many :class:`FaultProxy`.

    ``hub = ProxyHub()``; ``FaultProxy(host, port, hub=hub)``; ``hub.close()``
    closes every proxy made on it and ends the thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxies: Set["FaultProxy"] = set()
        started = threading.Event()

        def quiet(loop: asyncio.AbstractEventLoop, ctx: dict) -> None:
            # Handlers cancelled by close() while sleeping in "latency" mode.
            if isinstance(ctx.get("exception"), asyncio.CancelledError):
                return
            loop.default_exception_handler(ctx)

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.set_exception_handler(quiet)
            self.loop.call_soon(started.set)
            self.loop.run_forever()
            self.loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy-hub", daemon=True)
        self._thread.start()
        started.wait(10)

    def close(self) -> None:
        for p in list(self.proxies):
            p.close()
        if self._thread.is_alive():

            async def drain() -> None:
                # End the connection handlers too, so no task is destroyed pending.
                me = asyncio.current_task()
                tasks = [t for t in asyncio.all_tasks() if t is not me]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                asyncio.run_coroutine_threadsafe(drain(), self.loop).result(5)
            except Exception:  # pragma: no cover - best effort
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    def __enter__(self) -> "ProxyHub":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FaultProxy:
    """``FaultProxy(target_host, target_port)``; ``.port``/``.url``;
    ``.set_mode(mode, delay=0.0)``; ``.close()``.  Also a context manager.
    ``hub``: run on a shared :class:`ProxyHub` thread instead of a thread of its own."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1",
                 *, hub: Optional[ProxyHub] = None, reset_on_heal: bool = False) -> None:
        self.target = (target_host, int(target_port))
        self.listen_host = listen_host
        self.mode = "pass"
        self.delay = 0.0
        self._hub = hub
        self.reset_on_heal = reset_on_heal
        self._lost: Set[Tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()  # pairs that dropped bytes
        self._unstalled: Optional[asyncio.Event] = None
        self._closed = False
        self._server: Optional[asyncio.AbstractServer] = None
        self._conns: Set[Tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._ready = threading.Event()
        if hub is not None:
            self._loop = hub.loop
            self._thread = hub._thread

            async def start() -> None:
                self._server = await asyncio.start_server(self._handle, self.listen_host, 0)

            asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
            hub.proxies.add(self)
        else:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._run, name=f"fault-proxy->{target_port}", daemon=True)
            self._thread.start()
            self._ready.wait(10)
        if self._server is None:
            raise RuntimeError("fault proxy failed to start")
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://{self.listen_host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, self.listen_host, 0)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()
        self._loop.close()

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        """Switch the mode for open and new connections."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        done = threading.Event()

        def apply() -> None:
            self.mode = mode
            self.delay = float(delay)
            if mode == "reset":
                for a, b in list(self._conns):
                    _rst(a)
                    _rst(b)
            elif self.reset_on_heal and mode not in _LOSSY:
                for pair in list(self._lost):
                    if pair in self._conns:
                        _rst(pair[0])
                        _rst(pair[1])
                self._lost.clear()
            ev = self._stall_event()
            if mode == "stall":
                ev.clear()
            else:
                ev.set()
            done.set()

        self._loop.call_soon_threadsafe(apply)
        done.wait(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            _rst(writer)
            return
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
        except OSError:
            _rst(writer)
            return
        pair = (writer, uwriter)
        self._conns.add(pair)
        try:
            await asyncio.gather(self._pump(reader, uwriter, upstream=True, pair=pair),
                                 self._pump(ureader, writer, upstream=False, pair=pair))
        finally:
            self._conns.discard(pair)
            self._lost.discard(pair)
            for w in pair:
                if not w.is_closing():
                    w.close()

    def _stall_event(self) -> asyncio.Event:
        # Made on the proxy's loop (asyncio objects belong to one loop).
        if self._unstalled is None:
            self._unstalled = asyncio.Event()
            self._unstalled.set()
        return self._unstalled

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool,
                    pair: Optional[Tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = None) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                while self.mode == "stall":
                    await self._stall_event().wait()
                mode = self.mode
                if mode == "blackhole" or (mode == "half-reply" and not upstream):
                    if pair is not None:
                        self._lost.add(pair)
                    continue
                if mode == "reset":
                    break
                if mode == "latency" and self.delay > 0:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if self.mode == "reset":
                _rst(writer)
            elif not writer.is_closing():
                writer.close()

    def close(self) -> None:
        """Stop listening, drop every connection and end the thread (on a
        hub: only this proxy's listener and connections)."""
        if self._closed or not self._thread.is_alive():
            return
        self._closed = True

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for a, b in list(self._conns):
                a.close()
                b.close()
            await asyncio.sleep(0)

        fut = asyncio.run_coroutine_threadsafe(stop(), self._loop)
        if self._hub is not None:
            self._hub.proxies.discard(self)
            fut.result(5)
            return
        try:
            fut.result(5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FaultProxy :{self.port} -> {self.target[0]}:{self.target[1]} mode={self.mode}>"


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport = writer.transport
    transport.abort()
