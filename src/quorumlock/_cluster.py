"""Client-side Redis/Valkey Cluster logic, without I/O of its own.

The pieces a quorum member that is a *cluster* needs (docs/clusters.md, issue #13),
written so that both managers can drive them later:

* :func:`key_slot`: key -> hash slot (CRC16/XMODEM mod 16384, hash tags as
  the Redis Cluster specification states them).  ``csrc/ql_crc16.h`` is the
  C twin for the engine.
* :func:`parse_shards` (``CLUSTER SHARDS``, 7.0+) and :func:`parse_slots`
  (``CLUSTER SLOTS``) -> :class:`SlotMap` (slot -> primary, replicas, node ids).
* :func:`parse_redirect` (``MOVED`` / ``ASK``) and :func:`classify_error`
  (``CLUSTERDOWN``, ``TRYAGAIN``, ...).
* :func:`parse_cluster_url`: ``redis+cluster://h1:p1,h2:p2`` and
  ``rediss+cluster://...``, with the single-node URL options (the parsing is
  :func:`quorumlock._config.parse_node`'s, per seed).
* :func:`fetch_slot_map` / :func:`afetch_slot_map`: build the map through
  any ``call(addr, *args)`` (:func:`slot_map_fetcher` is the procedure, for
  drivers of their own), and :class:`RefreshPolicy`: when to fetch again.
* :class:`FailoverGuard`: which primary's vote for a slot may count.

Nothing here is a quorum member yet: the engine integration is a later step.
"""

from __future__ import annotations

import dataclasses
import ssl as _ssl
import time
from array import array
from dataclasses import dataclass, field
from typing import (Any, Awaitable, Callable, Dict, Generator, Iterable, List, Mapping, Optional, Sequence, Set,
                    Tuple, Union)

from ._config import NodeSpec, _canonical_host, parse_node, redact_url

__all__ = [
    "SLOTS",
    "ClusterNode",
    "Shard",
    "SlotMap",
    "Redirect",
    "ClusterSpec",
    "ClusterMapError",
    "FailoverGuard",
    "crc16",
    "key_slot",
    "parse_shards",
    "parse_slots",
    "parse_redirect",
    "classify_error",
    "parse_cluster_url",
    "fetch_slot_map",
    "afetch_slot_map",
    "slot_map_fetcher",
    "RefreshPolicy",
]

#: Number of hash slots of a Redis Cluster.
SLOTS = 16384

Address = Tuple[str, int]
KeyLike = Union[bytes, bytearray, memoryview, str]


# --------------------------------------------------------------------------
# CRC16 / hash slots
# --------------------------------------------------------------------------


def _crc16_table() -> Tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16/XMODEM of ``data`` (poly 0x1021, init 0): ``crc16(b"123456789") == 0x31C3``."""
    crc = 0
    table = _TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")  # what redis-py and the engine send
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError(f"key must be str or bytes, got {type(key).__name__}")


def key_slot(key: KeyLike) -> int:
    """The hash slot (0..16383) of ``key``; ``str`` keys are hashed as UTF-8.

    Hash tag rule: when the key has a ``{`` and, after that first ``{``, a
    ``}`` with at least one byte between them, only those bytes are hashed
    (``a{b}c{d}`` -> ``b``; ``{}x``, ``x{``, ``}{`` hash whole; ``}{x}`` -> ``x``).
    """
    data = _key_bytes(key)
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc16(data) & (SLOTS - 1)


# --------------------------------------------------------------------------
# slot maps
# --------------------------------------------------------------------------


class ClusterMapError(RuntimeError):
    """No seed answered with a usable slot map (the message lists why, per seed)."""


@dataclass(frozen=True)
class ClusterNode:
    """One node of a cluster as a slot-map reply describes it."""

    id: str
    host: str
    port: int
    role: str = "primary"  # "primary" or "replica"
    health: str = "online"  # CLUSTER SHARDS: online / failed / loading; SLOTS: online
    tls_port: Optional[int] = None

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def dial_port(self, tls: bool) -> int:
        """The port to connect to: the TLS port for a TLS member when the node
        has one (``CLUSTER SHARDS`` lists ``port`` and ``tls-port`` apart)."""
        return self.tls_port if tls and self.tls_port else self.port


@dataclass(frozen=True)
class Shard:
    """A primary, its replicas and the slot ranges (inclusive) it serves."""

    primary: ClusterNode
    replicas: Tuple[ClusterNode, ...]
    ranges: Tuple[Tuple[int, int], ...]

    @property
    def slot_count(self) -> int:
        return sum(e - s + 1 for s, e in self.ranges)


@dataclass
class SlotMap:
    """slot -> shard, for one cluster; built by :func:`parse_shards` / :func:`parse_slots`.

    ``owner[slot]`` is the index into ``shards`` of the shard serving ``slot``,
    or -1 for a slot no primary serves.
    """

    shards: List[Shard]
    owner: "array[int]" = field(repr=False)
    source: str = ""  # "shards" or "slots": which reply it was built from

    @classmethod
    def from_shards(cls, shards: Iterable[Shard], source: str = "") -> "SlotMap":
        shards = [s for s in shards if s.ranges]
        owner = array("h", [-1]) * SLOTS
        for i, shard in enumerate(shards):
            for start, end in shard.ranges:
                if not 0 <= start <= end < SLOTS:
                    raise ValueError(f"slot range {start}-{end} is outside 0-{SLOTS - 1}")
                owner[start : end + 1] = array("h", [i]) * (end - start + 1)
        return cls(shards, owner, source)

    def shard_of(self, slot: int) -> Optional[Shard]:
        """The shard serving ``slot``, or None when no primary serves it."""
        i = self.owner[slot]
        return self.shards[i] if i >= 0 else None

    def primary_of(self, slot: int) -> Optional[ClusterNode]:
        shard = self.shard_of(slot)
        return shard.primary if shard is not None else None

    def primary_for_key(self, key: KeyLike) -> Optional[ClusterNode]:
        return self.primary_of(key_slot(key))

    @property
    def primaries(self) -> List[ClusterNode]:
        return [s.primary for s in self.shards]

    def group(self, keys: Sequence[KeyLike]) -> Dict[Optional[Address], Dict[int, List[int]]]:
        """``keys`` grouped for a batch: primary address -> slot -> indexes into ``keys``.

        One script call may only touch keys of one slot (else ``CROSSSLOT``),
        so a batch sends one call per slot group, pipelined per primary.  Keys
        of slots no primary serves are under the address ``None``.  The
        indexes keep each key's place in the caller's result list.
        """
        out: Dict[Optional[Address], Dict[int, List[int]]] = {}
        for i, key in enumerate(keys):
            slot = key_slot(key)
            owner = self.owner[slot]
            addr = self.shards[owner].primary.address if owner >= 0 else None
            out.setdefault(addr, {}).setdefault(slot, []).append(i)
        return out

    def missing_slots(self) -> int:
        """How many slots no primary serves (0 for a fully covered cluster)."""
        return sum(1 for x in self.owner if x < 0)

    def moved(self, slot: int, host: str, port: int) -> "SlotMap":
        """This map with ``slot`` served by ``host:port`` (what a ``MOVED`` says).

        The new owner may be a primary the map knows (the usual case after a
        reshard) or one it does not yet: then a shard with an unknown node id
        (``""``) and no replicas stands in until the next full refresh.
        """
        if not 0 <= slot < SLOTS:
            raise ValueError(f"slot must be in 0..{SLOTS - 1}, got {slot!r}")
        shards = list(self.shards)
        owner = array("h", self.owner)
        for i, s in enumerate(shards):
            if s.primary.address == (host, port):
                owner[slot] = i
                break
        else:
            shards.append(Shard(ClusterNode("", host, port), (), ((slot, slot),)))
            owner[slot] = len(shards) - 1
        return SlotMap(shards, owner, self.source)


def _text(v: Any) -> str:
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    return "" if v is None else str(v)


def _pairs(v: Any) -> Dict[str, Any]:
    """A RESP2 flat ``[k1, v1, k2, v2, ...]`` list or a RESP3 map, as a str-keyed dict."""
    if isinstance(v, Mapping):
        return {_text(k): x for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        if len(v) % 2:
            raise ValueError(f"expected key/value pairs, got {len(v)} items")
        return {_text(v[i]): v[i + 1] for i in range(0, len(v), 2)}
    raise ValueError(f"expected a map or a flat list, got {type(v).__name__}")


def _host(endpoint: str, ip: str, seed_host: str) -> Optional[str]:
    """The address to dial, from a reply's endpoint / ip fields.

    ``""`` / NULL means "the host you asked" (the seed); ``"?"`` means the node
    does not know its own endpoint: not reachable through this map.
    """
    for candidate in (endpoint, ip):
        if candidate == "?":
            continue
        if candidate:
            return candidate
    return seed_host if endpoint in ("", "None") and ip in ("", "None") else None


def parse_shards(reply: Any, seed_host: str) -> SlotMap:
    """A :class:`SlotMap` from a ``CLUSTER SHARDS`` reply (RESP2 lists or RESP3 maps).

    ``seed_host`` is the host the command was sent to (it stands for an empty
    endpoint).  A shard whose primary is failed, or whose master has no
    reachable endpoint, is left out, so its slots are reported missing.
    """
    shards: List[Shard] = []
    for raw in reply or ():
        d = _pairs(raw)
        flat = [int(x) for x in d.get("slots") or ()]
        if len(flat) % 2:
            raise ValueError("CLUSTER SHARDS: odd number of slot bounds")
        ranges = tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
        primary: Optional[ClusterNode] = None
        replicas: List[ClusterNode] = []
        for rawnode in d.get("nodes") or ():
            n = _pairs(rawnode)
            host = _host(_text(n.get("endpoint")), _text(n.get("ip")), seed_host)
            port = n.get("port", n.get("tls-port"))
            if host is None or port is None:
                continue
            tls = n.get("tls-port")
            role = _text(n.get("role"))
            node = ClusterNode(
                id=_text(n.get("id")), host=host, port=int(port),
                role="primary" if role in ("master", "primary") else "replica",
                # Redis says "failed", Valkey 9 "fail": one word here.
                health={"fail": "failed"}.get(_text(n.get("health")), _text(n.get("health")) or "online"),
                tls_port=int(tls) if tls is not None else None,
            )  # fmt: skip
            if node.role == "primary":
                # A failed old primary may still be listed beside its successor.
                if primary is None or (primary.health == "failed" and node.health != "failed"):
                    primary = node
            else:
                replicas.append(node)
        if primary is None or primary.health == "failed" or not ranges:
            continue
        shards.append(Shard(primary, tuple(replicas), ranges))
    return SlotMap.from_shards(shards, "shards")


def parse_slots(reply: Any, seed_host: str) -> SlotMap:
    """A :class:`SlotMap` from a ``CLUSTER SLOTS`` reply (any version).

    Each entry is ``[start, end, [host, port, id, ...], replica...]``; ranges of
    the same primary are merged into one shard.
    """
    by_primary: Dict[Tuple[str, str, int], Tuple[ClusterNode, List[ClusterNode], List[Tuple[int, int]]]] = {}
    for entry in reply or ():
        if not isinstance(entry, (list, tuple)) or len(entry) < 3:
            raise ValueError(f"CLUSTER SLOTS: malformed entry {entry!r}")
        start, end = int(entry[0]), int(entry[1])
        nodes: List[ClusterNode] = []
        for k, raw in enumerate(entry[2:]):
            endpoint = _text(raw[0]) if raw[0] is not None else ""
            host = _host(endpoint, "", seed_host)
            if host is None:
                continue
            nodes.append(ClusterNode(
                id=_text(raw[2]) if len(raw) > 2 else "", host=host, port=int(raw[1]),
                role="primary" if k == 0 else "replica",
            ))  # fmt: skip
        if not nodes or nodes[0].role != "primary":
            continue
        primary = nodes[0]
        key = (primary.id, primary.host, primary.port)
        if key not in by_primary:
            by_primary[key] = (primary, [], [])
        _, reps, ranges = by_primary[key]
        ranges.append((start, end))
        for r in nodes[1:]:
            if r not in reps:
                reps.append(r)
    shards = [Shard(p, tuple(reps), tuple(sorted(rg))) for p, reps, rg in by_primary.values()]
    return SlotMap.from_shards(shards, "slots")


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Redirect:
    """A parsed ``MOVED`` (the slot now lives there: update the map, resend) or
    ``ASK`` (this one command goes there, after ``ASKING``; the map stays)."""

    kind: str  # "moved" or "ask"
    slot: int
    host: str
    port: int


#: redis-py's exception classes for the cluster errors: their message lacks the
#: error code (redis-py < 6 keeps it nowhere else).
_CODE_OF_CLASS = {"MovedError": "MOVED", "AskError": "ASK", "ClusterDownError": "CLUSTERDOWN",
                  "TryAgainError": "TRYAGAIN", "ClusterCrossSlotError": "CROSSSLOT",
                  "MasterDownError": "MASTERDOWN", "BusyLoadingError": "LOADING",
                  "ReadOnlyError": "READONLY"}  # fmt: skip


def _error_text(error: Any) -> str:
    """The error reply's text, code first, from text or from an exception.

    redis-py strips the code of the errors it has a class for (``MovedError``'s
    message is ``"3999 127.0.0.1:6381"``) and keeps it in ``status_code``
    (redis-py 6+) or only in the class: put it back."""
    code = None
    if isinstance(error, BaseException):
        code = getattr(error, "status_code", None) or _CODE_OF_CLASS.get(type(error).__name__)
        error = error.args[0] if error.args else str(error)
    text = _text(error)
    text = text[1:] if text.startswith("-") else text
    if isinstance(code, str) and code and text.split(" ", 1)[0] != code:
        text = f"{code} {text}"
    return text


def parse_redirect(error: Any, seed_host: str) -> Optional[Redirect]:
    """``MOVED <slot> <host>:<port>`` or ``ASK ...`` -> :class:`Redirect`; else None.

    ``error`` is the error text (``str``/``bytes``, with or without RESP's
    ``-``) or an exception carrying it.  An empty host (``MOVED 1 :7001``)
    means the host that replied: ``seed_host``.  IPv6 hosts are split at the
    last ``:``.
    """
    parts = _error_text(error).split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    try:
        slot = int(parts[1])
        host, _, port_text = parts[2].rpartition(":")
        port = int(port_text)
    except ValueError:
        return None
    if not 0 <= slot < SLOTS or not 0 < port < 65536:
        return None
    host = host.strip("[]") or seed_host
    return Redirect(parts[0].lower(), slot, host, port)


#: What each cluster error means for the member's vote on that key.
_ERROR_KINDS = {
    "MOVED": "moved",  # follow: update the map, resend to the new owner
    "ASK": "ask",  # follow once: ASKING + resend to the named node
    "CLUSTERDOWN": "clusterdown",  # the member fails for this key (no retry inside the decision)
    "TRYAGAIN": "tryagain",  # slot being migrated with keys split: this member fails for the key
    "CROSSSLOT": "crossslot",  # a bug of ours: a command touched keys of two slots
    "MASTERDOWN": "clusterdown",  # a replica without its primary
    "LOADING": "loading",  # the node is loading its data set: fails for now
    "READONLY": "moved",  # a write reached a replica: the map is stale; refresh and resend
}


def classify_error(error: Any) -> str:
    """The kind of a cluster error reply: ``moved``, ``ask``, ``clusterdown``,
    ``tryagain``, ``crossslot``, ``loading``, or ``other`` (any other error:
    not a routing problem)."""
    text = _error_text(error)
    return _ERROR_KINDS.get(text.split(" ", 1)[0], "other")


# --------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


@dataclass
class ClusterSpec:
    """How to reach one cluster member: its seeds (each a :class:`NodeSpec`,
    with the URL's auth and TLS options) and those options for the nodes the
    slot map names later (:meth:`node`)."""

    seeds: List[NodeSpec]
    identity: Tuple[Any, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        """For messages: the seeds, never the password."""
        first = self.seeds[0]
        scheme = "rediss+cluster" if first.ssl else "redis+cluster"
        hosts = ",".join(
            (f"[{s.host}]" if s.host and ":" in s.host else f"{s.host}") + f":{s.port}" for s in self.seeds
        )
        return f"{scheme}://{hosts}"

    def __repr__(self) -> str:
        return f"ClusterSpec({self.name})"

    def node(self, host: str, port: int) -> NodeSpec:
        """A :class:`NodeSpec` for a node the map names: the seeds' auth, TLS and
        timeout, that host and port (TLS checks the name of the host dialled)."""
        first = self.seeds[0]
        return dataclasses.replace(
            first, host=host, port=port,
            server_hostname=host if first.ssl is not None else None,
            identity=("tcp", _canonical_host(host), port, first.db),
        )  # fmt: skip


def parse_cluster_url(
    url: Any, ssl_context: Optional[_ssl.SSLContext] = None, connect_timeout: float = 2.0
) -> ClusterSpec:
    """Parse ``redis+cluster://[user[:password]@]host[:port][,host[:port]...][/db][?options]``
    (``rediss+cluster://`` for TLS) into a :class:`ClusterSpec`.

    Options and their meaning are those of single-node URLs
    (:func:`quorumlock._config.parse_node`): each seed is parsed as
    ``redis://`` / ``rediss://`` with the same user info, path and query, so
    TLS options (or ``ssl_context``) and ``password=`` apply to every seed.
    The member's identity is the set of seeds: listing them in another order is
    the same member.
    """
    if not isinstance(url, str):
        raise TypeError(f"cluster URL must be a str, got {type(url).__name__}")
    shown = redact_url(url)
    scheme, sep, rest = url.partition("://")
    base = _CLUSTER_SCHEMES.get(scheme.lower()) if sep else None
    if base is None:
        raise ValueError(f"cluster URL {shown!r}: scheme must be redis+cluster:// or rediss+cluster://")
    cut = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0], default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hosts = netloc.rpartition("@")
    prefix = f"{base}://{userinfo}{at}"
    seeds: List[NodeSpec] = []
    for host in hosts.split(","):
        if not host.strip():
            raise ValueError(f"cluster URL {shown!r}: empty host in the seed list")
        seeds.append(parse_node(prefix + host.strip() + tail, ssl_context, connect_timeout))
    if len(seeds) > 1:
        # One SSL context for all seeds (parse_node made one per seed from the query).
        first = seeds[0].ssl
        seeds = [dataclasses.replace(s, ssl=first) if s.ssl is not None else s for s in seeds]
    ids = tuple(sorted({s.identity for s in seeds}))
    return ClusterSpec(seeds, ("cluster",) + ids)


# --------------------------------------------------------------------------
# fetching the map
# --------------------------------------------------------------------------

Call = Callable[..., Any]


def _unknown_command(message: str) -> bool:
    m = message.lower()
    return "unknown subcommand" in m or "unknown command" in m


Request = Tuple[Address, Tuple[Any, ...]]


def slot_map_fetcher(
    seeds: Sequence[Address], previous: Optional[SlotMap] = None
) -> Generator[Request, Tuple[bool, Any], SlotMap]:
    """The map-fetching procedure as a generator, with the I/O left to its driver.

    It yields ``(addr, args)``, a command to run on ``addr``; the driver sends
    back ``(True, reply)`` or ``(False, exception)``; the generator's return
    value (``StopIteration.value``) is the :class:`SlotMap`.  So a thread, an
    event loop or the engine can each drive it with its own connections
    (:func:`fetch_slot_map`, :func:`afetch_slot_map`).

    The primaries of ``previous`` are asked first (the nodes most likely up),
    then ``seeds``; each gets ``CLUSTER SHARDS``, and ``CLUSTER SLOTS`` where
    the server has no SHARDS (before 7.0).  The first map that covers every
    slot wins; if none does, the best partial map is returned (a cluster with a
    failed shard still serves the other slots).

    Raises:
        ClusterMapError: no node answered with a map (one reason per node, in order).
        ValueError: no address to ask.
    """
    order: List[Address] = []
    known = [p.address for p in previous.primaries] if previous is not None else []
    for host, port in known + [(a[0], a[1]) for a in seeds]:
        if (host, port) not in order:
            order.append((host, port))
    if not order:
        raise ValueError("fetching a slot map needs at least one seed address")
    errors: List[str] = []
    best: Optional[SlotMap] = None
    for addr in order:
        host = addr[0]
        ok, reply = yield addr, ("CLUSTER", "SHARDS")
        parse = parse_shards
        if not ok and _unknown_command(_error_text(reply)):
            ok, reply = yield addr, ("CLUSTER", "SLOTS")
            parse = parse_slots
        try:
            if not ok:
                raise reply
            built = parse(reply, host)
        except Exception as exc:  # noqa: BLE001 - any client's error type, or a malformed reply
            errors.append(f"{addr[0]}:{addr[1]}: {type(exc).__name__}: {redact_url(_error_text(exc))}")
            continue
        if built.missing_slots() == 0:
            return built
        if best is None or built.missing_slots() < best.missing_slots():
            best = built
    if best is not None and best.shards:
        return best
    raise ClusterMapError("no slot map from any node: " + "; ".join(errors or ["no node serves any slot"]))


def fetch_slot_map(call: Call, seeds: Sequence[Address], previous: Optional[SlotMap] = None) -> SlotMap:
    """:func:`slot_map_fetcher` driven by ``call(addr, *args)``, which runs one
    command on ``addr`` (a ``(host, port)``) and returns the reply, or raises."""
    gen = slot_map_fetcher(seeds, previous)
    try:
        addr, args = next(gen)
        while True:
            try:
                result: Tuple[bool, Any] = (True, call(addr, *args))
            except Exception as exc:  # noqa: BLE001 - handed to the procedure
                result = (False, exc)
            addr, args = gen.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def afetch_slot_map(
    call: Callable[..., Awaitable[Any]], seeds: Sequence[Address], previous: Optional[SlotMap] = None
) -> SlotMap:
    """:func:`fetch_slot_map` with an async ``call(addr, *args)``."""
    gen = slot_map_fetcher(seeds, previous)
    try:
        addr, args = next(gen)
        while True:
            try:
                result: Tuple[bool, Any] = (True, await call(addr, *args))
            except Exception as exc:  # noqa: BLE001 - handed to the procedure
                result = (False, exc)
            addr, args = gen.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class RefreshPolicy:
    """When to fetch the slot map again: every ``interval`` seconds in the
    background, and soon after a redirect or a connection failure, but never
    more often than every ``min_interval`` seconds (a storm of ``MOVED`` after a
    reshard costs one fetch).  Pure bookkeeping: the face does the fetch.

    ``note_redirect`` also patches the map at once for a ``MOVED``, so the next
    command for that slot goes to the right node before any fetch.
    """

    def __init__(self, interval: float = 10.0, min_interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        for name, value in (("interval", interval), ("min_interval", min_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if min_interval > interval:
            raise ValueError(f"min_interval ({min_interval!r}) must not exceed interval ({interval!r})")
        self.interval = float(interval)
        self.min_interval = float(min_interval)
        self._clock = clock
        self.map: Optional[SlotMap] = None
        self.fetched_at: Optional[float] = None
        self.wanted = True  # no map yet

    def due(self, now: Optional[float] = None) -> bool:
        """True when a fetch should start now."""
        if self.fetched_at is None:
            return True
        age = (self._clock() if now is None else now) - self.fetched_at
        return age >= self.interval or (self.wanted and age >= self.min_interval)

    def install(self, slot_map: SlotMap, now: Optional[float] = None) -> None:
        """Take a freshly fetched map."""
        self.map = slot_map
        self.fetched_at = self._clock() if now is None else now
        self.wanted = False

    def note_redirect(self, redirect: Redirect) -> None:
        """A ``MOVED`` patches the map and asks for a fetch; an ``ASK`` changes nothing
        (the slot is only being moved)."""
        if redirect.kind == "moved":
            if self.map is not None:
                self.map = self.map.moved(redirect.slot, redirect.host, redirect.port)
            self.wanted = True

    def note_failure(self) -> None:
        """A node of the map failed (connection, ``CLUSTERDOWN``): fetch soon."""
        self.wanted = True


# --------------------------------------------------------------------------
# the failover guard
# --------------------------------------------------------------------------


class FailoverGuard:
    """Which cluster primary's vote for a slot may count toward a quorum.

    The unsafe case: a primary granted a lock, failed before it replicated the
    key (replication is asynchronous), and the replica promoted in its place
    answers ``SET NX`` for the same key with OK.  A vote from the primary
    serving a slot counts when one of three rules rules that out:

    1. **Known long enough** (``"known"``): this client has seen this primary
       (same node id, same address, as primary) for longer than
       ``window = max_ttl * (1 + drift_factor)``.  Any promotion happened
       before the client first saw the promoted node as primary, and a key the
       old primary granted before it failed was granted before the promotion;
       it lives at most ``max_ttl`` by the granting client's clock, so
       ``window`` after the first sighting (measured on this client's monotonic
       clock, with the same drift allowance the lock validity uses) no such key
       can be live.  A node that stops being primary, or leaves the map, is
       forgotten: when it is primary again its window starts again (it may have
       been a replica that missed writes).
    2. **WAIT-confirmed** (``"wait"``): ``WAIT`` reported that every replica of
       the shard has the write, so whichever is promoted has the key.
    3. **No replicas** (``"no-replicas"``): no shard of this cluster has a
       replica and this primary was never seen as a replica.  Then no
       promotion can happen, and a restart of the primary is the single-node
       case (delayed restart for volatile nodes, fsync otherwise).

    Limits: rule 3 trusts the deployment: a client that starts right after
    the last replica of a cluster was promoted cannot tell it from a primary
    that never had one, so only use replica-less clusters where no replicas
    are ever configured.  Rule 1 means a client's first ``window`` seconds
    with a cluster that has replicas give no counted votes without ``WAIT``
    (a cold start needs rule 2 or 3).  ``WAIT`` counts the replicas it knows
    at that moment; a replica that joins later copies the primary in full.
    """

    def __init__(self, max_ttl: float, drift_factor: float = 0.01,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        for name, value in (("max_ttl", max_ttl), ("drift_factor", drift_factor)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if max_ttl <= 0:
            raise ValueError(f"max_ttl must be > 0, got {max_ttl!r}")
        if not callable(clock):
            raise TypeError("clock must be callable")
        self.window = float(max_ttl) * (1.0 + float(drift_factor))
        self._clock = clock
        self._first_seen: Dict[Tuple[str, str, int], float] = {}
        self._ever_replica: Set[Tuple[str, str, int]] = set()
        self._replica_less = False

    @staticmethod
    def _key(node: ClusterNode) -> Tuple[str, str, int]:
        return (node.id, node.host, node.port)

    def observe(self, slot_map: SlotMap, now: Optional[float] = None) -> List[ClusterNode]:
        """Record the primaries of a freshly fetched map; return those seen for the first time.

        Call it after every full refresh (not after a single ``MOVED``: a
        ``MOVED`` target is known by the next refresh)."""
        now = self._clock() if now is None else now
        current = {self._key(s.primary): s.primary for s in slot_map.shards}
        for shard in slot_map.shards:
            for r in shard.replicas:
                self._ever_replica.add(self._key(r))
        for k in list(self._first_seen):
            if k not in current:
                del self._first_seen[k]  # demoted or gone: its window restarts
        new = []
        for k, node in current.items():
            if k not in self._first_seen:
                self._first_seen[k] = now
                new.append(node)
        self._replica_less = bool(slot_map.shards) and all(not s.replicas for s in slot_map.shards)
        return new

    def first_seen(self, node: ClusterNode) -> Optional[float]:
        """When this primary was first seen as primary (None: not currently known)."""
        return self._first_seen.get(self._key(node))

    def rule(self, slot_map: SlotMap, slot: int, *, wait_acks: Optional[int] = None,
             now: Optional[float] = None) -> Optional[str]:  # fmt: skip
        """The rule under which the vote of ``slot``'s primary counts, or None.

        ``wait_acks``: what ``WAIT`` returned after the write (None: not asked).
        """
        shard = slot_map.shard_of(slot)
        if shard is None:
            return None
        k = self._key(shard.primary)
        seen = self._first_seen.get(k)
        now = self._clock() if now is None else now
        if seen is not None and now - seen > self.window:
            return "known"
        if wait_acks is not None and shard.replicas and wait_acks >= len(shard.replicas):
            return "wait"
        if self._replica_less and not shard.replicas and k not in self._ever_replica and seen is not None:
            return "no-replicas"
        return None

    def counts(self, slot_map: SlotMap, slot: int, *, wait_acks: Optional[int] = None,
               now: Optional[float] = None) -> bool:  # fmt: skip
        """True when the vote of ``slot``'s primary may count (:meth:`rule` is not None)."""
        return self.rule(slot_map, slot, wait_acks=wait_acks, now=now) is not None
