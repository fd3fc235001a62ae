"""Sockets of local nodes: picking a free port, and the readiness PING.

:func:`_pick_free_port` is the seam the tests and ``quorumlock nodes up
--port`` replace (``quorumlock.nodes.net._pick_free_port``): the supervisor
looks it up on this module at every call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import ssl
from typing import Optional, Tuple

_PROBE_TIMEOUT = 0.25  # one readiness PING; loopback answers in well under 1 ms


def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0][0]


def _ephemeral_port_range() -> Optional[Tuple[int, int]]:
    """The kernel's range for automatically bound ports (Linux), or None."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split()[:2])
        return low, high
    except (OSError, ValueError):
        return None


def _pick_free_port(host: str) -> int:
    """A port that was free on ``host`` a moment ago.

    Chosen *below* the kernel's ephemeral range when there is room (Linux:
    20000 up to ``ip_local_port_range``), and checked by binding it.  Why not
    simply bind port 0: that hands out an ephemeral port, and while a node is
    down (for the whole volatile delay) any outgoing connection on the machine
    can get that same number as its local port; the restarted server's bind()
    then fails with "Address already in use" for as long as that connection
    lives (measured here: a connected client socket blocks redis-server's
    listening bind).  Ports outside the ephemeral range are never auto-bound.

    Another process can still take the port before the server binds it; the
    cluster then sees "Address already in use" in the node's log and picks
    another.  Tests monkeypatch this function to force that path.
    """
    family = _family(host)
    rng = _ephemeral_port_range()
    if rng is not None and rng[0] > 2048:
        lo = 20000 if rng[0] > 21000 else 1024
        for _ in range(64):
            port = random.randrange(lo, rng[0])
            try:
                # No SO_REUSEADDR: a port with TIME_WAIT leftovers is skipped too.
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
                return port
            except OSError:
                continue
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def _probe_request(password: Optional[str]) -> Tuple[bytes, int]:
    """The bytes of (AUTH and) PING, and how many reply lines they get."""
    payload = b""
    if password is not None:
        payload += _resp(b"AUTH", password.encode())
    return payload + _resp(b"PING"), 2 if password is not None else 1


def _ping(
    host: str,
    port: int,
    *,
    password: Optional[str] = None,
    ssl_context: Optional[ssl.SSLContext] = None,
    timeout: float = _PROBE_TIMEOUT,
) -> Optional[str]:
    """Send (AUTH and) PING over a fresh connection; None on ``+PONG``, else why not."""
    payload, need = _probe_request(password)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(raw, server_hostname=host)
            try:
                sock.sendall(payload)
                buf = b""
                while buf.count(b"\r\n") < need:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return "connection closed before the reply"
                    buf += chunk
            finally:
                if sock is not raw:
                    sock.close()
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"
    lines = buf.split(b"\r\n")
    if password is not None and lines[0] != b"+OK":
        return f"AUTH answered {lines[0].decode(errors='replace')}"
    reply = lines[need - 1]
    return None if reply == b"+PONG" else f"PING answered {reply.decode(errors='replace')}"


async def _aping(
    host: str,
    port: int,
    *,
    password: Optional[str] = None,
    ssl_context: Optional[ssl.SSLContext] = None,
    timeout: float = _PROBE_TIMEOUT,
) -> Optional[str]:
    """Async twin of :func:`_ping`, for :meth:`LocalCluster.await_up`."""
    payload, need = _probe_request(password)

    async def _go() -> Optional[str]:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
        )
        try:
            writer.write(payload)
            lines = [(await reader.readline()).rstrip(b"\r\n") for _ in range(need)]
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
        if password is not None and lines[0] != b"+OK":
            return f"AUTH answered {lines[0].decode(errors='replace')}"
        return None if lines[-1] == b"+PONG" else f"PING answered {lines[-1]!r}"

    try:
        return await asyncio.wait_for(_go(), timeout)
    except asyncio.TimeoutError:
        return "timed out"
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"
