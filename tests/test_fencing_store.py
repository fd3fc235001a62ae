"""quorumlock.fencing: stores that reject stale lock holders.

Fences here are plain ints (the storage half does not need the lock engine).
Every contract test runs on each backend: the blocking Redis store, the asyncio
store on asyncio's loop and on uvloop, sqlite3, and PostgreSQL when a server
can be started here (``initdb``/``pg_ctl`` in a temp dir, as a non-root user).

The lost-update tests replay docs/faults.md row 11 (Kleppmann's GC pause) and row 14
(a storage write delayed past the lease) at the storage level, including the
negative control of write-only fencing in a read-modify-write
(docs/fencing-storage.md).
"""

from __future__ import annotations

import asyncio
import glob
import inspect
import itertools
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from quorumlock.chaos.proxy import FaultProxy
from quorumlock.errors import QuorumLockError
from quorumlock.fencing import (
    CAS,
    MAX_FENCE,
    READ,
    WRITE,
    AsyncFencedStore,
    FencedResult,
    FencedStore,
    SQLFencedTable,
    StaleFence,
)
from quorumlock.nodes import LocalCluster

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None

try:
    import psycopg as _pg_driver
except ImportError:
    try:
        import psycopg2 as _pg_driver  # type: ignore[no-redef]
    except ImportError:
        _pg_driver = None

MakeCluster = Callable[..., LocalCluster]
Body = Callable[..., Awaitable[Any]]


def ok(fence: int, value: Any = None) -> FencedResult:
    return FencedResult("ok", fence, value)


def stale(fence_seen: int) -> FencedResult:
    return FencedResult("stale", fence_seen)


def conflict(fence_seen: int, value: Any) -> FencedResult:
    return FencedResult("conflict", fence_seen, value)


async def aw(x: Any) -> Any:
    """Await ``x`` if the store is asyncio's, so one test body serves all stores."""
    if inspect.isawaitable(x):
        return await x
    return x


def fast_client(kwargs: Dict[str, Any], cls: Any = redis.Redis, **extra: Any) -> Any:
    """A redis-py client that fails instead of retrying (docs/faults.md)."""
    return cls(**kwargs, socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0), **extra)


# --------------------------------------------------------------------------
# PostgreSQL: a throwaway cluster, when the binaries and a driver exist
# --------------------------------------------------------------------------


def _pg_bindir() -> Optional[str]:
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return dirs[-1] if dirs else None


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def postgres() -> Iterator[Dict[str, Any]]:
    """Connection kwargs of a PostgreSQL server started for this session in a
    temp dir (fsync off, loopback only); skipped, with the reason, when no
    driver, no binaries, or no non-root user to run them as."""
    if _pg_driver is None:
        pytest.skip("PostgreSQL tests need psycopg (pip install 'psycopg[binary]') or psycopg2")
    bindir = _pg_bindir()
    if bindir is None or not os.path.exists(os.path.join(bindir, "pg_ctl")):
        pytest.skip("PostgreSQL tests need initdb/pg_ctl (apt-get install postgresql)")
    prefix: List[str] = []
    base = tempfile.mkdtemp(prefix="ql-pg-")
    if os.geteuid() == 0:  # postgres refuses to run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = None
        if runuser is None or pw is None:
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip("running as root and there is no 'postgres' user (or runuser) to start PostgreSQL as")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    data = os.path.join(base, "data")
    port = _free_port()

    def pg(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(prefix + [os.path.join(bindir, args[0]), *args[1:]], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip

    r = pg("initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
    if r.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"initdb failed: {r.stderr.strip()[-500:]}")
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    r = pg("pg_ctl", "-D", data, "-o", opts, "-l", os.path.join(base, "log"), "-w", "-t", "30", "start")
    if r.returncode != 0:
        log = ""
        try:
            with open(os.path.join(base, "log")) as f:
                log = f.read()[-800:]
        except OSError:
            pass
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"pg_ctl start failed: {r.stdout.strip()} {r.stderr.strip()} {log}")
    try:
        yield {"host": "127.0.0.1", "port": port, "user": "postgres", "dbname": "postgres"}
    finally:
        pg("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def pg_connect(kw: Dict[str, Any]) -> Any:
    return _pg_driver.connect(**kw)


_tables = itertools.count()


# --------------------------------------------------------------------------
# one harness per backend: ``h.check(body)`` runs ``await body(make)``, where
# ``make(**options)`` returns a store over the same data
# --------------------------------------------------------------------------


class Harness:
    name = ""
    has_increment = False

    def check(self, body: Body) -> Any:
        raise NotImplementedError


class RedisHarness(Harness):
    name = "redis"
    has_increment = True

    def __init__(self, kwargs: Dict[str, Any]) -> None:
        self.kwargs = kwargs

    def check(self, body: Body) -> Any:
        clients = []

        def make(**options: Any) -> FencedStore:
            c = fast_client(self.kwargs)
            clients.append(c)
            return FencedStore(c, **options)

        try:
            return asyncio.run(body(make))
        finally:
            for c in clients:
                c.close()


class AsyncRedisHarness(Harness):
    has_increment = True

    def __init__(self, kwargs: Dict[str, Any], loop: str) -> None:
        self.kwargs = kwargs
        self.name = f"redis-{loop}"
        self.loop = loop

    def check(self, body: Body) -> Any:
        if self.loop == "uvloop":
            if uvloop is None:
                pytest.skip("uvloop not installed")
            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        errors: List[Any] = []
        loop.set_exception_handler(lambda _l, ctx: errors.append(ctx))

        async def main() -> Any:
            clients = []

            def make(**options: Any) -> AsyncFencedStore:
                c = fast_client(self.kwargs, redis.asyncio.Redis)
                clients.append(c)
                return AsyncFencedStore(c, **options)

            try:
                return await asyncio.wait_for(body(make), 60)
            finally:
                for c in clients:
                    await c.aclose()

        try:
            asyncio.set_event_loop(loop)
            result = loop.run_until_complete(main())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        assert not errors, f"unhandled errors on the event loop: {errors}"
        return result


class SQLHarness(Harness):
    def __init__(self, name: str, connect: Callable[[], Any]) -> None:
        self.name = name
        self.connect = connect
        self.table = f"fenced_{os.getpid()}_{next(_tables)}"

    def check(self, body: Body) -> Any:
        conns = []

        def make(**options: Any) -> SQLFencedTable:
            conn = self.connect()
            conns.append(conn)
            t = SQLFencedTable(conn, table=self.table, **options)
            t.create()
            return t

        try:
            return asyncio.run(body(make))
        finally:
            for c in conns:
                c.close()


BACKENDS = ["redis", "redis-asyncio", "redis-uvloop", "sqlite", "postgres"]


@pytest.fixture
def storage(make_cluster: MakeCluster) -> Dict[str, Any]:
    """Connection kwargs of a fresh Redis storage node (not a lock node)."""
    return make_cluster(n=1, mode="volatile", max_ttl=1.0).connection_kwargs(0)


@pytest.fixture(params=BACKENDS)
def harness(request: Any, tmp_path: Any) -> Harness:
    kind = request.param
    if kind == "redis":
        return RedisHarness(request.getfixturevalue("storage"))
    if kind.startswith("redis-"):
        return AsyncRedisHarness(request.getfixturevalue("storage"), kind.split("-", 1)[1])
    if kind == "sqlite":
        path = str(tmp_path / "fenced.db")
        return SQLHarness("sqlite", lambda: sqlite3.connect(path, timeout=10))
    pg = request.getfixturevalue("postgres")
    return SQLHarness("postgres", lambda: pg_connect(pg))


# --------------------------------------------------------------------------
# the contract: >= accepted, < rejected, for every operation
# --------------------------------------------------------------------------


def test_write_accepts_higher_and_equal_rejects_lower(harness: Harness) -> None:
    async def body(make: Any) -> None:
        store = make()
        assert await aw(store.highest_fence("w")) is None
        assert await aw(store.write("w", b"a", 5)) == ok(5)
        assert await aw(store.get("w")) == b"a"
        assert await aw(store.write("w", b"b", 5)) == ok(5)  # equal: the same holder again
        assert await aw(store.write("w", b"c", 7)) == ok(7)  # higher: a newer holder
        with pytest.raises(StaleFence) as info:
            await aw(store.write("w", b"old", 6))
        e = info.value
        assert isinstance(e, QuorumLockError)
        assert (e.operation, e.key, e.fence, e.fence_seen) == ("write", "w", 6, 7)
        assert e.result == stale(7)
        assert "fence 6 is stale" in str(e) and "fence 7" in str(e)
        assert await aw(store.get("w")) == b"c"  # nothing changed
        assert await aw(store.highest_fence("w")) == 7
        # the same rejection as a result
        quiet = make(raise_on_stale=False)
        r = await aw(quiet.write("w", b"old", 0))
        assert r == stale(7) and not r and r.stale and not r.ok and r.value is None
        assert await aw(store.get("w")) == b"c"

    harness.check(body)


def test_fenced_read_raises_the_fence(harness: Harness) -> None:
    async def body(make: Any) -> None:
        store, quiet = make(), make(raise_on_stale=False)
        assert await aw(store.read("r", 3)) == ok(3, None)  # no value yet; fence recorded
        assert await aw(store.highest_fence("r")) == 3
        assert await aw(store.get("r")) is None
        assert await aw(store.write("r", b"v", 3)) == ok(3)
        assert await aw(store.read("r", 3)) == ok(3, b"v")  # equal
        assert await aw(store.read("r", 9)) == ok(9, b"v")  # higher: raises the fence
        assert await aw(store.highest_fence("r")) == 9
        with pytest.raises(StaleFence) as info:
            await aw(store.read("r", 8))
        assert (info.value.operation, info.value.fence_seen) == ("read", 9)
        assert await aw(quiet.read("r", 8)) == stale(9)  # a stale reader learns no value
        # the read alone rejects every older holder's later write
        assert await aw(quiet.write("r", b"late", 8)) == stale(9)
        assert await aw(store.get("r")) == b"v"

    harness.check(body)


def test_compare_and_set_tells_stale_from_conflict(harness: Harness) -> None:
    async def body(make: Any) -> None:
        store, quiet = make(), make(raise_on_stale=False)
        # expected None: create only if there is no value
        assert await aw(store.compare_and_set("c", None, b"1", 4)) == ok(4)
        assert await aw(store.compare_and_set("c", None, b"x", 4)) == conflict(4, b"1")
        assert await aw(store.compare_and_set("c", b"1", b"2", 4)) == ok(4)  # equal fence
        r = await aw(store.compare_and_set("c", b"1", b"3", 6))  # fresh fence, wrong value
        assert r == conflict(4, b"2") and r.conflict and not r
        assert await aw(store.highest_fence("c")) == 4  # a conflict changes nothing
        assert await aw(store.compare_and_set("c", b"2", b"3", 6)) == ok(6)  # higher
        with pytest.raises(StaleFence) as info:
            await aw(store.compare_and_set("c", b"3", b"4", 5))  # right value, stale fence
        assert (info.value.operation, info.value.fence_seen) == ("compare_and_set", 6)
        assert await aw(quiet.compare_and_set("c", b"nope", b"4", 5)) == stale(6)  # stale wins
        assert await aw(store.get("c")) == b"3"
        # expected value on a key that has none: a conflict, not a creation
        assert await aw(store.compare_and_set("c2", b"0", b"1", 1)) == conflict(0, None)
        assert await aw(store.get("c2")) is None

    harness.check(body)


def test_delete_keeps_the_fence(harness: Harness) -> None:
    async def body(make: Any) -> None:
        store = make()
        await aw(store.write("d", b"v", 2))
        with pytest.raises(StaleFence):
            await aw(store.delete("d", 1))
        assert await aw(store.get("d")) == b"v"
        assert await aw(store.delete("d", 3)) == ok(3)
        assert await aw(store.get("d")) is None
        assert await aw(store.highest_fence("d")) == 3  # a tombstone: a stale holder cannot write it back
        with pytest.raises(StaleFence):
            await aw(store.write("d", b"back", 2))
        assert await aw(store.compare_and_set("d", None, b"new", 3)) == ok(3)

    harness.check(body)


def test_value_encoding(harness: Harness) -> None:
    async def body(make: Any) -> None:
        store = make()
        await aw(store.write("e", "héllo", 1))
        assert await aw(store.get("e")) == "héllo".encode()
        await aw(store.write("e", 42, 1))
        assert await aw(store.get("e")) == b"42"
        assert await aw(store.compare_and_set("e", 42, -7, 1)) == ok(1)  # int compares as digits
        assert (await aw(store.read("e", 1))).value == b"-7"
        await aw(store.write("e", bytearray(b"\x00\xff"), 1))
        assert await aw(store.get("e")) == b"\x00\xff"
        await aw(store.write("e", b"", 1))  # empty is a value, unlike None
        assert await aw(store.get("e")) == b""
        assert await aw(store.compare_and_set("e", None, b"x", 1)) == conflict(1, b"")
        await aw(store.write(b"\xffraw", b"k", 1))  # bytes keys need not be UTF-8
        assert await aw(store.get(b"\xffraw")) == b"k"
        await aw(store.write("ключ", b"u", 1))  # str keys are UTF-8: the same key as its bytes
        assert await aw(store.get("ключ".encode())) == b"u"

    harness.check(body)


def test_large_fences_compare_exactly(harness: Harness) -> None:
    """Fences from a node's TIME in µs are ~2**51; doubles are exact only below
    2**53, so the comparison must not go through floating point."""

    async def body(make: Any) -> None:
        store = make(raise_on_stale=False)
        big = 2**62
        assert float(big) == float(big + 1)  # what a double-based compare would see
        assert (await aw(store.write("big", b"a", big + 1))).ok
        assert await aw(store.write("big", b"b", big)) == stale(big + 1)
        assert (await aw(store.write("big", b"c", MAX_FENCE))).ok
        assert await aw(store.write("big", b"d", MAX_FENCE - 1)) == stale(MAX_FENCE)
        assert await aw(store.highest_fence("big")) == MAX_FENCE
        # different lengths: 10 > 9 (a string compare would say otherwise)
        assert (await aw(store.write("len", b"a", 10))).ok
        assert await aw(store.write("len", b"b", 9)) == stale(10)
        assert (await aw(store.write("len", b"c", 100))).ok
        # 16..19 digits: the split compare, high and low halves
        for lo, hi in [(10**15, 10**15 + 1), (1234567890123456789, 1234567890123456790),
                       (1000000000999999999, 1000000001000000000)]:  # fmt: skip
            key = f"split{lo}"
            assert (await aw(store.read(key, hi))).ok
            assert await aw(store.read(key, lo)) == stale(hi)
            assert (await aw(store.read(key, hi))).ok

    harness.check(body)


def test_increment(harness: Harness) -> None:
    if not harness.has_increment:
        pytest.skip(f"{harness.name}: increment is a Redis-store helper (use compare_and_set in SQL)")

    async def body(make: Any) -> None:
        store, quiet = make(), make(raise_on_stale=False)
        assert await aw(store.increment("n", 1)) == ok(1, 1)  # absent counts as 0
        assert await aw(store.increment("n", 1)) == ok(1, 2)  # equal
        assert await aw(store.increment("n", 2, amount=10)) == ok(2, 12)  # higher
        assert await aw(store.increment("n", 2, amount=-2)) == ok(2, 10)
        with pytest.raises(StaleFence) as info:
            await aw(store.increment("n", 1))
        assert (info.value.operation, info.value.fence_seen) == ("increment", 2)
        assert await aw(quiet.increment("n", 1)) == stale(2)
        assert await aw(store.get("n")) == b"10"
        assert await aw(store.compare_and_set("n", 10, 11, 2)) == ok(2)  # the same digits
        await aw(store.write("n", b"not a number", 3))
        with pytest.raises(redis.ResponseError, match="not an integer"):
            await aw(store.increment("n", 3))
        assert await aw(store.highest_fence("n")) == 3

    harness.check(body)


# --------------------------------------------------------------------------
# Kleppmann's lost update (docs/faults.md row 11), fences as plain ints
# --------------------------------------------------------------------------
#
# A and B are two holders of the same lock, one after the other: A got fence 1,
# paused past its lease, B got fence 2.  Each wants to add 1 to a counter by
# read-modify-write.  A correct store ends with counter == accepted increments.


def test_unfenced_read_modify_write_loses_an_update(storage: Dict[str, Any]) -> None:
    """The baseline (fencing off): plain GET/SET, A paused between them."""
    r = fast_client(storage)
    r.set("counter", 0)
    a_read = int(r.get("counter"))  # A (lease 1) reads 0, then pauses past its lease
    b_read = int(r.get("counter"))  # B (lease 2) reads 0
    r.set("counter", b_read + 1)  # B writes 1
    r.set("counter", a_read + 1)  # A wakes up and writes 1: accepted, nobody notices
    assert int(r.get("counter")) == 1  # two "successful" increments, one lost
    r.close()


def test_write_only_fencing_rejects_the_late_writer(harness: Harness) -> None:
    """The interleaving of Kleppmann's figure: the older holder writes last."""

    async def body(make: Any) -> None:
        store = make()
        await aw(store.write("counter", 0, 0))
        a_read = int(await aw(store.get("counter")))  # A (fence 1): unfenced read, 0
        b_read = int(await aw(store.get("counter")))  # B (fence 2): unfenced read, 0
        assert await aw(store.write("counter", b_read + 1, 2)) == ok(2)
        with pytest.raises(StaleFence) as info:  # A writes 1 with fence 1: rejected
            await aw(store.write("counter", a_read + 1, 1))
        assert info.value.fence_seen == 2
        assert await aw(store.get("counter")) == b"1"  # == 1 accepted increment: no loss

    harness.check(body)


def test_write_only_fencing_still_loses_an_update_in_rmw(harness: Harness) -> None:
    """Negative control (docs/faults.md): the newer holder READS before the older
    holder's write lands, and writes after it.  Every write carries a fence
    >= the highest seen, so write-only fencing accepts both, and one increment
    is lost; the fenced read (B's read raises the fence to 2) rejects A."""

    async def body(make: Any) -> None:
        store = make(raise_on_stale=False)
        await aw(store.write("wo", 0, 0))
        a_read = int(await aw(store.get("wo")))  # A (fence 1) reads 0
        b_read = int(await aw(store.get("wo")))  # B (fence 2) reads 0: the fence stays 0
        assert (await aw(store.write("wo", a_read + 1, 1))).ok  # A writes 1: 1 >= 0
        assert (await aw(store.write("wo", b_read + 1, 2))).ok  # B writes 1: 2 >= 1
        assert await aw(store.get("wo")) == b"1"  # 2 accepted increments, counter 1: LOST

        # the same interleaving with fenced reads
        await aw(store.write("fr", 0, 0))
        a_read = int((await aw(store.read("fr", 1))).value)  # A reads 0, fence -> 1
        b_read = int((await aw(store.read("fr", 2))).value)  # B reads 0, fence -> 2
        assert await aw(store.write("fr", a_read + 1, 1)) == stale(2)  # A: rejected
        assert (await aw(store.write("fr", b_read + 1, 2))).ok
        assert await aw(store.get("fr")) == b"1"  # 1 accepted increment, counter 1

    harness.check(body)


def test_fenced_cas_closes_the_gap(harness: Harness) -> None:
    """The same interleaving with unfenced reads but a fenced compare-and-set:
    A's CAS lands first (0 -> 1), B's CAS finds 1, not the 0 it read, and is
    told "conflict"; B re-reads and retries.  In the other order A is stale."""

    async def body(make: Any) -> None:
        store = make(raise_on_stale=False)
        await aw(store.write("cas", 0, 0))
        a_read = await aw(store.get("cas"))  # A (fence 1)
        b_read = await aw(store.get("cas"))  # B (fence 2)
        assert (await aw(store.compare_and_set("cas", a_read, int(a_read) + 1, 1))).ok
        r = await aw(store.compare_and_set("cas", b_read, int(b_read) + 1, 2))
        assert r == conflict(1, b"1")
        assert (await aw(store.compare_and_set("cas", r.value, int(r.value) + 1, 2))).ok
        assert await aw(store.get("cas")) == b"2"  # 2 accepted, counter 2
        # now A (fence 1) is stale whatever value it brings
        assert await aw(store.compare_and_set("cas", b"2", b"3", 1)) == stale(2)

        # B's CAS first: A's later CAS is stale even with the right value
        await aw(store.write("cas2", 0, 0))
        a_read = await aw(store.get("cas2"))
        b_read = await aw(store.get("cas2"))
        assert (await aw(store.compare_and_set("cas2", b_read, 1, 2))).ok
        assert await aw(store.compare_and_set("cas2", a_read, 1, 1)) == stale(2)
        assert await aw(store.get("cas2")) == b"1"

    harness.check(body)


# Lost updates among the 90 interleavings, per way of fencing (docs/fencing-storage.md).
LOST_OF_90 = {"unfenced": 84, "write-only": 42, "fenced-read": 0, "cas": 0}


@pytest.mark.parametrize("reads", list(LOST_OF_90))
def test_every_interleaving_of_three_holders(harness: Harness, reads: str) -> None:
    """Holders 1, 2, 3 (fence = number) each do one read-modify-write +1; all
    90 interleavings of their (read, write) steps that keep each holder's read
    before its write.  With a fenced read or a fenced CAS the counter always
    equals the accepted increments; write-only fencing loses an update in 42
    of them (the negative control must fail somewhere, or it proves nothing),
    no fencing at all (every holder sends fence 0) in 84."""
    holders = (1, 2, 3)
    steps = [(h, s) for h in holders for s in ("read", "write")]
    schedules = [p for p in itertools.permutations(steps)
                 if all(p.index((h, "read")) < p.index((h, "write")) for h in holders)]  # fmt: skip
    assert len(schedules) == 90

    async def body(make: Any) -> int:
        store = make(raise_on_stale=False)
        lost = 0
        for i, schedule in enumerate(schedules):
            key = f"il:{reads}:{i}"
            await aw(store.write(key, 0, 0))
            seen: Dict[int, Any] = {}
            accepted = 0
            for h, step in schedule:
                if step == "read":
                    if reads == "fenced-read":
                        r = await aw(store.read(key, h))
                        seen[h] = None if r.stale else r.value
                    else:
                        seen[h] = await aw(store.get(key))
                elif seen[h] is not None:  # a holder rejected at its read gives up
                    if reads == "cas":
                        r = await aw(store.compare_and_set(key, seen[h], int(seen[h]) + 1, h))
                    else:
                        r = await aw(store.write(key, int(seen[h]) + 1, 0 if reads == "unfenced" else h))
                    accepted += r.ok
                    assert r.ok or r.stale or (reads == "cas" and r.conflict), r
            final = int(await aw(store.get(key)))
            assert final <= accepted
            lost += final != accepted
        return lost

    lost = harness.check(body)
    assert lost == LOST_OF_90[reads], f"{reads}: {lost} of 90 interleavings lost an update"


def test_delayed_storage_write_is_rejected(storage: Dict[str, Any]) -> None:
    """docs/faults.md row 14: A's write is held up in the network (a latency proxy)
    past its lease; B (newer fence) writes meanwhile; A's write then arrives.
    Unfenced, it overwrites B's; fenced, the storage rejects it."""
    with FaultProxy(storage["host"], storage["port"]) as proxy:
        slow = fast_client({"host": "127.0.0.1", "port": proxy.port})
        direct = fast_client(storage)
        a, b = FencedStore(slow), FencedStore(direct)
        a.write("warm", b"", 0)  # connect and load the script before the delay
        results: Dict[str, Any] = {}

        def late(fn: Callable[[], Any], name: str) -> threading.Thread:
            def go() -> None:
                try:
                    results[name] = fn()
                except Exception as exc:  # noqa: BLE001 - reported below
                    results[name] = exc

            t = threading.Thread(target=go)
            t.start()
            return t

        proxy.set_mode("latency", delay=0.25)
        # unfenced: A's SET lands after B's
        t = late(lambda: slow.set("plain", b"A"), "plain")
        time.sleep(0.05)
        direct.set("plain", b"B")
        t.join(5)
        assert direct.get("plain") == b"A"  # B's write is lost

        # fenced
        t = late(lambda: a.write("acct", b"A", 1), "fenced")
        time.sleep(0.05)
        assert b.write("acct", b"B", 2) == ok(2)
        t.join(5)
        proxy.set_mode("pass")
        assert isinstance(results["fenced"], StaleFence), results
        assert results["fenced"].fence_seen == 2
        assert b.get("acct") == b"B"
        slow.close()
        direct.close()


# --------------------------------------------------------------------------
# Redis specifics: layout, NOSCRIPT, RESP3, decode_responses
# --------------------------------------------------------------------------


def test_redis_layout_is_one_hash(storage: Dict[str, Any]) -> None:
    r = fast_client(storage)
    store = FencedStore(r)
    store.write("acct:1", b"100", 12)
    assert r.type("acct:1") == b"hash"
    assert r.hgetall("acct:1") == {b"value": b"100", b"fence": b"12"}
    store.read("fresh", 3)
    assert r.hgetall("fresh") == {b"fence": b"3"}
    for src in (WRITE, READ, CAS):
        assert src.count(b"KEYS[") and b"ARGV[1]" in src
    r.close()


def test_noscript_after_script_flush(storage: Dict[str, Any]) -> None:
    r = fast_client(storage)
    store = FencedStore(r)
    ops = [
        lambda: store.write("ns", b"1", 1),
        lambda: store.read("ns", 2),
        lambda: store.compare_and_set("ns", b"1", b"2", 3),
        lambda: store.increment("ns", 4),
        lambda: store.delete("ns", 5),
    ]
    for op in ops:
        r.script_flush()
        assert r.script_exists(store._write.sha, store._read.sha) == [False, False]
        assert op().ok
    assert store.highest_fence("ns") == 5
    r.script_flush()
    with pytest.raises(StaleFence):  # and a rejection still is one after a reload
        store.write("ns", b"x", 4)
    r.close()


def test_noscript_after_script_flush_asyncio(storage: Dict[str, Any]) -> None:
    async def body() -> None:
        r = fast_client(storage, redis.asyncio.Redis)
        store = AsyncFencedStore(r)
        try:
            await r.script_flush()
            assert (await store.write("ans", b"1", 1)).ok
            await r.script_flush()
            assert (await store.read("ans", 2)).value == b"1"
            await r.script_flush()
            assert (await store.compare_and_set("ans", b"1", 5, 2)).ok
            await r.script_flush()
            assert (await store.increment("ans", 3)).value == 6
            await r.script_flush()
            with pytest.raises(StaleFence):
                await store.increment("ans", 2)
        finally:
            await r.aclose()

    asyncio.run(body())


@pytest.mark.parametrize("protocol", [2, 3])
def test_resp2_resp3_and_decoded_responses(storage: Dict[str, Any], protocol: int) -> None:
    r = fast_client(storage, protocol=protocol, decode_responses=True)
    store = FencedStore(r, raise_on_stale=False)
    assert store.write("p", "v", 3) == ok(3)
    assert store.read("p", 4) == ok(4, "v")
    assert store.read("none", 4) == ok(4, None)
    assert store.compare_and_set("p", "x", "y", 4) == conflict(4, "v")
    assert store.compare_and_set("none", "x", "y", 4) == conflict(4, None)  # read left fence 4
    assert store.compare_and_set("never", "x", "y", 4) == conflict(0, None)
    assert store.increment("cnt", 1) == ok(1, 1)
    assert store.write("p", "w", 2) == stale(4)
    assert store.get("p") == "v" and store.highest_fence("p") == 4
    r.close()


# --------------------------------------------------------------------------
# bad input: refused before any I/O, errors name the argument
# --------------------------------------------------------------------------


BAD_KEYS = [(123, TypeError), (None, TypeError), (1.5, TypeError), (True, TypeError),
            (["k"], TypeError), ("", ValueError), (b"", ValueError), ("x" * 1025, ValueError),
            ("\udcff", ValueError)]  # fmt: skip
BAD_FENCES = [(True, TypeError), (1.0, TypeError), ("1", TypeError), (None, TypeError),
              (-1, ValueError), (2**63, ValueError)]  # fmt: skip
BAD_VALUES = [(None, TypeError), (True, TypeError), (1.5, TypeError), ({"a": 1}, TypeError),
              ("\ud800", ValueError)]  # fmt: skip


def _bad_input_cases(store: Any) -> List[Tuple[str, Callable[[], Any], type, str]]:
    cases = []
    for key, exc in BAD_KEYS:
        cases += [
            (f"write key={key!r:.20}", lambda k=key: store.write(k, b"v", 1), exc, "key"),
            (f"read key={key!r:.20}", lambda k=key: store.read(k, 1), exc, "key"),
            (f"cas key={key!r:.20}", lambda k=key: store.compare_and_set(k, None, b"v", 1), exc, "key"),
            (f"get key={key!r:.20}", lambda k=key: store.get(k), exc, "key"),
            (f"highest key={key!r:.20}", lambda k=key: store.highest_fence(k), exc, "key"),
        ]
    for fence, exc in BAD_FENCES:
        cases += [
            (f"write fence={fence!r}", lambda f=fence: store.write("k", b"v", f), exc, "fence"),
            (f"read fence={fence!r}", lambda f=fence: store.read("k", f), exc, "fence"),
            (f"cas fence={fence!r}", lambda f=fence: store.compare_and_set("k", b"a", b"b", f), exc, "fence"),
            (f"delete fence={fence!r}", lambda f=fence: store.delete("k", f), exc, "fence"),
        ]
    for value, exc in BAD_VALUES:
        cases += [
            (f"write value={value!r}", lambda v=value: store.write("k", v, 1), exc, "value"),
            (f"cas new={value!r}", lambda v=value: store.compare_and_set("k", b"a", v, 1), exc, "new"),
        ]
        if value is not None:  # None is a valid expected: "no value"
            cases.append((f"cas expected={value!r}", lambda v=value: store.compare_and_set("k", v, b"b", 1),
                          exc, "expected"))  # fmt: skip
    if hasattr(store, "increment"):
        for amount, exc in [(True, TypeError), (1.0, TypeError), (2**63, ValueError)]:
            cases.append((f"amount={amount!r}", lambda a=amount: store.increment("k", 1, a), exc, "amount"))
    return cases


def test_bad_input_names_the_argument(harness: Harness) -> None:
    async def body(make: Any) -> None:
        store = make()
        for label, call, exc, name in _bad_input_cases(store):
            with pytest.raises(exc) as info:
                await aw(call())
            assert name in str(info.value), (label, info.value)
        # nothing reached the storage
        assert await aw(store.highest_fence("k")) is None

    harness.check(body)


def test_bad_constructor_arguments(tmp_path: Any) -> None:
    with pytest.raises(TypeError, match="client"):
        FencedStore("redis://127.0.0.1:6379")
    with pytest.raises(TypeError, match="client"):
        AsyncFencedStore(None)
    with pytest.raises(ValueError, match="max_key_length"):
        FencedStore(redis.Redis(), max_key_length=0)
    conn = sqlite3.connect(":memory:")
    for table in ("x; DROP TABLE y", "1abc", "a.b.c", "", "t-1"):
        with pytest.raises(ValueError, match="table"):
            SQLFencedTable(conn, table=table)
    with pytest.raises(TypeError, match="table"):
        SQLFencedTable(conn, table=b"t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dialect"):
        SQLFencedTable(conn, dialect="mysql")
    with pytest.raises(ValueError, match="dialect"):
        SQLFencedTable(object.__new__(type("Conn", (), {"cursor": None})))
    with pytest.raises(TypeError, match="conn"):
        SQLFencedTable(object())
    assert SQLFencedTable(conn).dialect == "sqlite"
    assert SQLFencedTable(conn, table="main.fenced").table == "main.fenced"
    conn.close()


def test_short_keys_setting(storage: Dict[str, Any]) -> None:
    r = fast_client(storage)
    store = FencedStore(r, max_key_length=4)
    assert store.write("abcd", b"v", 1).ok
    with pytest.raises(ValueError, match="max_key_length is 4"):
        store.write("abcde", b"v", 1)
    r.close()


# --------------------------------------------------------------------------
# SQL specifics
# --------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def sql_connect(request: Any, tmp_path: Any) -> Callable[[], Any]:
    if request.param == "sqlite":
        path = str(tmp_path / "fenced.db")
        return lambda: sqlite3.connect(path, timeout=10)
    pg = request.getfixturevalue("postgres")
    return lambda: pg_connect(pg)


def test_sql_create_is_idempotent_and_statements_are_single(sql_connect: Callable[[], Any]) -> None:
    conn = sql_connect()
    t = SQLFencedTable(conn, table=f"idem_{next(_tables)}")
    t.create()
    t.create()
    assert t.write("k", b"v", 1).ok
    # the decisions are one conditional statement each: no SELECT-then-UPDATE
    for name in ("write", "read", "cas", "cas_absent", "delete"):
        sql = t._sql[name]
        assert sql.count(";") == 0 and "fence <=" in sql and sql.lstrip().split()[0] in ("INSERT", "UPDATE")
    conn.close()


def test_sql_concurrent_writers(sql_connect: Callable[[], Any]) -> None:
    """Writers on their own connections, in threads, with shuffled fences: the
    row ends with the highest fence and the value that came with it, and every
    rejection names a fence above the rejected one."""
    table = f"conc_{next(_tables)}"
    setup = sql_connect()
    SQLFencedTable(setup, table=table).create()
    setup.close()
    fences = list(range(1, 161))
    random.Random(7).shuffle(fences)
    chunks = [fences[i::4] for i in range(4)]
    errors: List[BaseException] = []
    accepted: List[int] = []

    def writer(mine: List[int]) -> None:
        conn = sql_connect()
        t = SQLFencedTable(conn, table=table, raise_on_stale=False)
        try:
            for f in mine:
                r = t.write("hot", f, f)
                if r.ok:
                    accepted.append(f)
                else:
                    assert r.stale and r.fence_seen > f, r
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(c,)) for c in chunks]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    conn = sql_connect()
    t = SQLFencedTable(conn, table=table)
    assert t.highest_fence("hot") == 160
    assert t.get("hot") == b"160"
    assert 160 in accepted
    conn.close()


def test_sql_guard_row_in_the_callers_transaction(sql_connect: Callable[[], Any]) -> None:
    """The recipe for tables we do not want to change (docs): with
    ``commit=False`` a fenced read of a guard row is the first statement of the
    caller's transaction; a stale guard rejects the whole transaction."""
    conn = sql_connect()
    table = f"guard_{next(_tables)}"
    guard = SQLFencedTable(conn, table=table, commit=False)
    guard.create()
    conn.commit()
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE acct_{table} (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
    cur.execute(f"INSERT INTO acct_{table} VALUES (7, 100)")
    conn.commit()
    ph = "?" if guard.dialect == "sqlite" else "%s"

    def transfer(fence: int, amount: int) -> None:
        c = conn.cursor()
        try:
            guard.read("acct:7", fence)  # raises StaleFence: nothing below runs
            c.execute(f"SELECT balance FROM acct_{table} WHERE id = 7")
            (balance,) = c.fetchone()
            c.execute(f"UPDATE acct_{table} SET balance = {ph} WHERE id = 7", (balance + amount,))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            c.close()

    transfer(2, 10)
    with pytest.raises(StaleFence):
        transfer(1, 1000)
    transfer(3, 5)
    cur.execute(f"SELECT balance FROM acct_{table} WHERE id = 7")
    assert cur.fetchone()[0] == 115
    cur.close()
    conn.close()


def test_sql_fence_column_recipe(sql_connect: Callable[[], Any]) -> None:
    """The statements docs/fencing-storage.md gives for a fence column on the
    user's own table, run as written."""
    conn = sql_connect()
    ph = "?" if isinstance(conn, sqlite3.Connection) else "%s"
    name = f"accounts_{next(_tables)}"
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
    cur.execute(f"INSERT INTO {name} (id, balance) VALUES (7, 100)")
    cur.execute(f"ALTER TABLE {name} ADD COLUMN fence BIGINT NOT NULL DEFAULT 0")
    conn.commit()

    def fenced_read(fence: int) -> Optional[int]:
        cur.execute(f"UPDATE {name} SET fence = {ph} WHERE id = {ph} AND fence <= {ph} RETURNING balance",
                    (fence, 7, fence))  # fmt: skip
        row = cur.fetchone()
        conn.commit()
        return None if row is None else row[0]

    def fenced_write(balance: int, fence: int) -> bool:
        cur.execute(f"UPDATE {name} SET balance = {ph}, fence = {ph} WHERE id = {ph} AND fence <= {ph}",
                    (balance, fence, 7, fence))  # fmt: skip
        n = cur.rowcount
        conn.commit()
        return n == 1

    a = fenced_read(1)  # A (fence 1) reads 100
    b = fenced_read(2)  # B (fence 2) reads 100, fence -> 2
    assert a == b == 100
    assert not fenced_write(a + 10, 1)  # A: rejected
    assert fenced_write(b + 10, 2)
    assert fenced_read(1) is None  # stale reader: no row
    cur.execute(f"SELECT balance, fence FROM {name} WHERE id = 7")
    assert cur.fetchone() == (110, 2)
    cur.close()
    conn.close()


def test_postgres_was_tested_when_possible(request: Any) -> None:
    """Say in the report whether PostgreSQL ran (a skip carries the reason)."""
    pg = request.getfixturevalue("postgres")
    conn = pg_connect(pg)
    cur = conn.cursor()
    cur.execute("SHOW server_version")
    assert cur.fetchone()[0]
    conn.close()
