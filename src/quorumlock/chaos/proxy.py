"""A user-space TCP fault proxy (the stand-in for toxiproxy and ``tc netem``,
neither of which exists on the machines this project runs on: FAULTS.md (c)).

One ``FaultProxy`` listens on a loopback port and forwards to one Redis node.
Its mode can be switched at run time, and applies to connections that are
already open:

``pass``        forward both ways.
``latency``     delay every chunk by ``delay`` seconds in each direction.
``blackhole``   read and discard in both directions (a partition without RST).
``half-reply``  forward requests to the node, drop its replies: the node
                applies the command but the client never hears (FAULTS.md row 17).
``reset``       abort every connection with RST (SO_LINGER 0), and new ones too.

The proxy runs its own event loop in a daemon thread, so it serves asyncio and
blocking clients alike and keeps working while the client's loop is busy."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Optional, Set, Tuple

MODES = ("pass", "latency", "blackhole", "half-reply", "reset")


class FaultProxy:
    """``FaultProxy(target_host, target_port)``; ``.port``/``.url``;
    ``.set_mode(mode, delay=0.0)``; ``.close()``.  Also a context manager."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, int(target_port))
        self.listen_host = listen_host
        self.mode = "pass"
        self.delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._server: Optional[asyncio.AbstractServer] = None
        self._conns: Set[Tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._ready = threading.Event()
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
            await asyncio.gather(self._pump(reader, uwriter, upstream=True),
                                 self._pump(ureader, writer, upstream=False))
        finally:
            self._conns.discard(pair)
            for w in pair:
                if not w.is_closing():
                    w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                mode = self.mode
                if mode == "blackhole" or (mode == "half-reply" and not upstream):
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
        """Stop listening, drop every connection and end the thread."""
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for a, b in list(self._conns):
                a.close()
                b.close()
            await asyncio.sleep(0)

        fut = asyncio.run_coroutine_threadsafe(stop(), self._loop)
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
