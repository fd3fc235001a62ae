"""A deliberately small Redlock client with switchable bugs: the negative
controls of docs/faults.md, run for real so the checker can be seen to catch
them.  Used only by the chaos harness (``quorumlock chaos --client-bug ...``),
never by the library.

With no bug switched on it is a plain, correct Redlock (the spec's algorithm,
like quorumlock's engine, slower): the difference a bug makes is then the bug's
alone.  Bugs (``BUGS``):

``del-release``     release with a plain ``DEL``: deletes whoever's lock is
                    there (the next holder's, once ours expired).
``pexpire-extend``  extend with a plain ``PEXPIRE``: extends whoever's lock is there.
``setxx-extend``    extend with ``SET key token XX PX ttl``: overwrites whoever's
                    lock is there with our token.
``no-nx``           acquire with ``SET`` without ``NX``: takes a held lock.
``early-t1``        take the end time of an attempt when the requests were sent,
                    not when the replies were read (docs/faults.md row 12).

This client never checks its node list for duplicates, and its acquire is
idempotent (a node that already holds *our* token counts as a yes, which is
right for a retried request, docs/faults.md row 18): so a node listed twice, under
two spellings, votes twice (docs/faults.md row 20).  quorumlock refuses such a list.
"""

from __future__ import annotations

import os
import select
import socket
import time
from typing import Any, Callable, List, Optional, Sequence
from urllib.parse import urlsplit

import hiredis

__all__ = ["BUGS", "FaultyLockManager", "FaultyLock"]

BUGS = ("del-release", "pexpire-extend", "setxx-extend", "no-nx", "early-t1")

# Idempotent acquire.  KEYS[1]: lock key; ARGV[1]: token; ARGV[2]: TTL ms;
# ARGV[3]: '1' for SET NX, '0' for a plain SET (the no-nx bug).
# Returns 1 if the key now holds our token, 0 if someone else holds it.
_ACQUIRE = b"""if ARGV[3] == '1' then
  if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
  if redis.call('get', KEYS[1]) == ARGV[1] then return 1 end
  return 0
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1"""

# Compare-and-delete.  KEYS[1]: lock key; ARGV[1]: token.  Returns 1 if deleted.
_RELEASE = b"""if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0"""

# Compare-and-pexpire.  KEYS[1]: lock key; ARGV[1]: token; ARGV[2]: TTL ms.
_EXTEND = b"""if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0"""


def _resp(*args: Any) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = b"%d" % a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _Conn:
    def __init__(self, host: str, port: int, connect_timeout: float) -> None:
        self.addr = (host, port)
        self.connect_timeout = connect_timeout
        self.sock: Optional[socket.socket] = None
        self.reader = hiredis.Reader()

    def ensure(self) -> socket.socket:
        if self.sock is None:
            s = socket.create_connection(self.addr, timeout=self.connect_timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            self.sock = s
            self.reader = hiredis.Reader()
        return self.sock

    def drop(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None


class FaultyLock:
    """A held lease of :class:`FaultyLockManager` (same attributes as quorumlock's Lock)."""

    fence = None

    def __init__(self, mgr: "FaultyLockManager", key: str, token: bytes, deadline_ns: int, ttl_ms: int,
                 nodes: int) -> None:
        self._mgr = mgr
        self.key = key
        self.token = token
        self.deadline_ns = deadline_ns
        self.ttl = ttl_ms / 1000.0
        self.nodes = nodes
        self.released = False

    @property
    def validity(self) -> float:
        if self.released:
            return 0.0
        return max(0.0, (self.deadline_ns - time.monotonic_ns()) / 1e9)

    @property
    def valid(self) -> bool:
        return not self.released and time.monotonic_ns() < self.deadline_ns

    def release(self) -> bool:
        return self._mgr._release(self)

    def extend(self, ttl: Optional[float] = None) -> bool:
        return self._mgr._extend(self, ttl)


class FaultyLockManager:
    """``FaultyLockManager(urls, ttl=1.0, bugs=("del-release",))``: the subset of
    quorumlock's blocking ``LockManager`` the chaos clients use."""

    def __init__(self, nodes: Sequence[str], *, ttl: float = 10.0, drift_factor: float = 0.01,
                 node_timeout: Optional[float] = None, connect_timeout: float = 2.0,
                 bugs: Sequence[str] = (), on_sent: Optional[Callable[[], None]] = None) -> None:
        unknown = [b for b in bugs if b not in BUGS]
        if unknown:
            raise ValueError(f"unknown bug(s) {unknown}; known: {', '.join(BUGS)}")
        self.bugs = frozenset(bugs)
        self.ttl_ms = int(round(ttl * 1000))
        self.drift_factor = drift_factor
        self.node_timeout = node_timeout if node_timeout is not None else min(0.010 + ttl * 0.05, 1.0)
        self.on_sent = on_sent
        self.conns: List[_Conn] = []
        for url in nodes:
            u = urlsplit(url)
            self.conns.append(_Conn(u.hostname or "127.0.0.1", u.port or 6379, connect_timeout))
        self.quorum = len(self.conns) // 2 + 1

    def connect(self) -> "FaultyLockManager":
        for c in self.conns:
            try:
                c.ensure()
            except OSError:
                c.drop()
        return self

    def close(self) -> None:
        for c in self.conns:
            c.drop()

    def __enter__(self) -> "FaultyLockManager":
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the fan-out -------------------------------------------------------

    def _fanout(self, payload: bytes, timeout: float) -> List[Any]:
        """Send ``payload`` to every node at once, read every reply until
        ``timeout``; a node that fails gives an exception instance.  Sets
        ``self.t_sent`` to when the last request was written."""
        results: List[Any] = [None] * len(self.conns)
        waiting = {}
        for i, c in enumerate(self.conns):
            try:
                s = c.ensure()
                s.sendall(payload)
                waiting[s.fileno()] = i
            except OSError as exc:
                c.drop()
                results[i] = exc
        self.t_sent = time.monotonic_ns()
        if self.on_sent is not None:
            self.on_sent()
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            events = poller.poll(max(0.0, left) * 1000)
            if not events:
                if left <= 0:
                    break
                continue
            for fd, _ev in events:
                i = waiting[fd]
                c = self.conns[i]
                try:
                    data = c.sock.recv(65536) if c.sock is not None else b""
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    data, results[i] = b"", exc
                if not data:
                    if results[i] is None:
                        results[i] = ConnectionError("connection closed")
                    poller.unregister(fd)
                    del waiting[fd]
                    c.drop()
                    continue
                c.reader.feed(data)
                reply = c.reader.gets()
                if reply is not False:
                    results[i] = reply
                    poller.unregister(fd)
                    del waiting[fd]
        for i in waiting.values():
            results[i] = TimeoutError("no reply in time")
            # Drop the connection: a late reply must not be taken for the next one.
            self.conns[i].drop()
        return results

    # -- locks -------------------------------------------------------------

    def try_acquire(self, key: str, ttl: Optional[float] = None) -> Optional[FaultyLock]:
        ttl_ms = self.ttl_ms if ttl is None else int(round(ttl * 1000))
        token = os.urandom(20)
        nx = b"0" if "no-nx" in self.bugs else b"1"
        t0 = time.monotonic_ns()
        replies = self._fanout(_resp(b"EVAL", _ACQUIRE, b"1", key, token, ttl_ms, nx), self.node_timeout)
        t_read = time.monotonic_ns()
        t1 = self.t_sent if "early-t1" in self.bugs else t_read
        ok = sum(1 for r in replies if r == 1)
        drift_ns = int((ttl_ms * self.drift_factor + 2.0) * 1e6)
        # validity = ttl - (t1 - t0) - drift, counted from when the replies
        # were read (as redlock-py and the spec's pseudo-code hand it to the
        # caller).  The early-t1 bug takes t1 when the requests were sent, so
        # a pause while the replies were in flight is not counted.
        validity_ns = ttl_ms * 1_000_000 - (t1 - t0) - drift_ns
        self.last_token = token
        if ok >= self.quorum and validity_ns > 0:
            return FaultyLock(self, key, token, t_read + validity_ns, ttl_ms, ok)
        self._release_token(key, token)
        return None

    def _release_token(self, key: str, token: bytes) -> int:
        if "del-release" in self.bugs:
            payload = _resp(b"DEL", key)
        else:
            payload = _resp(b"EVAL", _RELEASE, b"1", key, token)
        replies = self._fanout(payload, self.node_timeout)
        return sum(1 for r in replies if r == 1)

    def _release(self, lock: FaultyLock) -> bool:
        lock.released = True
        return self._release_token(lock.key, lock.token) >= self.quorum

    def _extend(self, lock: FaultyLock, ttl: Optional[float]) -> bool:
        ttl_ms = int(round(lock.ttl * 1000)) if ttl is None else int(round(ttl * 1000))
        t0 = time.monotonic_ns()
        if "pexpire-extend" in self.bugs:
            payload = _resp(b"PEXPIRE", lock.key, ttl_ms)
        elif "setxx-extend" in self.bugs:
            payload = _resp(b"SET", lock.key, lock.token, b"XX", b"PX", ttl_ms)
        else:
            payload = _resp(b"EVAL", _EXTEND, b"1", lock.key, lock.token, ttl_ms)
        replies = self._fanout(payload, self.node_timeout)
        t1 = time.monotonic_ns()
        ok = sum(1 for r in replies if r == 1 or r == b"OK")
        drift_ns = int((ttl_ms * self.drift_factor + 2.0) * 1e6)
        deadline = t0 + ttl_ms * 1_000_000 - drift_ns
        if ok >= self.quorum and deadline > t1:
            lock.deadline_ns = deadline
            lock.ttl = ttl_ms / 1000.0
            return True
        return False
