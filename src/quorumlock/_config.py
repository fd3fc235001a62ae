"""Node addresses and option checking, shared by the asyncio and blocking APIs.

Everything here runs once per manager (or once per call for TTLs given per
call), never per reply: it is plain Python."""

from __future__ import annotations

import ipaddress
import math
import re
import ssl as _ssl
import warnings
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_PORT = 6379
MAX_NODES = 32
#: Default cap on a TTL: a day.  Longer leases are almost always a unit mistake
#: (milliseconds given as seconds).
DEFAULT_MAX_TTL = 86400.0
#: Default cap on a key's length in bytes (docs/faults.md, bad inputs: never send a huge key N times).
DEFAULT_MAX_KEY_LENGTH = 1024
#: Hard ceiling of any duration option, seconds (~31.7 years): durations are
#: CLOCK_BOOTTIME nanoseconds in 64-bit arithmetic inside the engine, and a
#: bigger value would wrap there (ttl >= 1e13 s did in the first round).
MAX_SECONDS = 1e9
#: The smallest accepted ``node_timeout`` (1 ms): below it every reply misses.
MIN_NODE_TIMEOUT = 0.001

# ``user:password@``: up to the *last* "@" of the authority, as urlsplit
# reads it (a password holding "@" leaked its tail with a first-"@" match).
_URL_PASSWORD = re.compile(r"(//[^/@:?#]*:)[^/?#]*@")
# A password holding "/", "?" or "#" (not percent-encoded) ends the authority
# early, so urlsplit misreads it; still hide everything up to the "@".
_URL_PASSWORD_LOOSE = re.compile(r"(//[^/@:?#]*:)[^@]*@")
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pass|token|auth)=)[^&#]*", re.I)


def redact_url(url: Any) -> str:
    """``url`` with any password (``user:password@``, ``?password=``) replaced
    by ``***``: the form every message, repr and log line uses."""
    text = url if isinstance(url, str) else str(url)
    # Query secrets first: an "@" inside ``?password=`` must not be taken
    # for the end of a ``user:password@`` part.
    text = _QUERY_SECRET.sub(r"\1***", text)
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _URL_PASSWORD_LOOSE.sub(r"\1***@", text)

_SSL_CERT_REQS = {
    "none": _ssl.CERT_NONE,
    "optional": _ssl.CERT_OPTIONAL,
    "required": _ssl.CERT_REQUIRED,
}


@dataclass
class NodeSpec:
    """How to reach one Redis master."""

    host: Optional[str] = None
    port: int = DEFAULT_PORT
    path: Optional[str] = None  # unix socket
    username: Optional[str] = None
    password: Optional[str] = None
    db: int = 0
    ssl: Optional[_ssl.SSLContext] = None
    server_hostname: Optional[str] = None
    connect_timeout: float = 2.0
    identity: Tuple[Any, ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        # Never the password (a dataclass repr would print it).
        parts = [self.name]
        if self.username:
            parts.append(f"username={self.username!r}")
        if self.password is not None:
            parts.append("password='***'")
        return f"NodeSpec({', '.join(parts)})"

    @property
    def name(self) -> str:
        """Address for messages (never includes the password)."""
        if self.path:
            return f"unix://{self.path}"
        scheme = "rediss" if self.ssl else "redis"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}" + (f"/{self.db}" if self.db else "")


def _canonical_host(host: str) -> str:
    h = host.strip("[]").lower()
    if h in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return "loopback"
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return h
    if ip.is_loopback or ip.is_unspecified:
        return "loopback"
    return ip.compressed


def _bool_param(value: str) -> bool:
    return value.lower() in ("1", "true", "yes", "on")


def _ssl_from_query(q: dict, base: Optional[_ssl.SSLContext]) -> _ssl.SSLContext:
    if base is not None:
        return base
    ca = q.get("ssl_ca_certs", [None])[0]
    ctx = _ssl.create_default_context(cafile=ca)
    reqs = q.get("ssl_cert_reqs", ["required"])[0].lower()
    if reqs not in _SSL_CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {sorted(_SSL_CERT_REQS)}, got {reqs!r}")
    check_hostname = q.get("ssl_check_hostname", [None])[0]
    if reqs == "none":
        ctx.check_hostname = False
    elif check_hostname is not None:
        ctx.check_hostname = _bool_param(check_hostname)
    ctx.verify_mode = _SSL_CERT_REQS[reqs]
    cert = q.get("ssl_certfile", [None])[0]
    if cert:
        ctx.load_cert_chain(cert, q.get("ssl_keyfile", [None])[0])
    return ctx


def parse_node(spec: Any, ssl_context: Optional[_ssl.SSLContext] = None, connect_timeout: float = 2.0) -> NodeSpec:
    """Turn a URL, a ``NodeSpec``, or a redis-py client into a ``NodeSpec``.

    URLs: ``redis://[user[:password]@]host[:port][/db]``, ``rediss://...`` (TLS;
    ``ssl_ca_certs``, ``ssl_cert_reqs``, ``ssl_certfile``, ``ssl_keyfile``,
    ``ssl_check_hostname`` query options, or the manager's ``ssl_context``),
    ``unix:///path[?db=N&password=...]``.  Of a redis-py client only the
    connection settings are taken: quorumlock owns its connections (redis-py's
    default retries turned a blackholed node into a 96 s stall, docs/faults.md, how the faults are made)."""
    if isinstance(spec, NodeSpec):
        return spec
    if isinstance(spec, str):
        return _parse_url(spec, ssl_context, connect_timeout)
    pool = getattr(spec, "connection_pool", None)
    kw = getattr(pool, "connection_kwargs", None)
    if kw is None:
        raise TypeError(
            "each node must be a redis:// / rediss:// / unix:// URL string, a NodeSpec, "
            f"or a redis-py client; got {type(spec).__name__}"
        )
    return _from_redis_py(pool, kw, ssl_context, connect_timeout)


def _parse_url(url: str, ssl_context: Optional[_ssl.SSLContext], connect_timeout: float) -> NodeSpec:
    shown = redact_url(url)   # every message below: never the password
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"node URL {shown!r} cannot be parsed: {redact_url(exc)}") from None
    q = parse_qs(parts.query)
    scheme = parts.scheme.lower()
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if "password" in q:
        password = q["password"][0]
    if "username" in q:
        username = q["username"][0]
    db = 0
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"node URL {shown!r} has no socket path")
        if "db" in q:
            db = _parse_db(q["db"][0], shown)
        return NodeSpec(path=parts.path, username=username, password=password, db=db,
                        connect_timeout=connect_timeout, identity=("unix", parts.path, db))
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"node URL {shown!r}: scheme must be redis://, rediss:// or unix://")
    if not parts.hostname:
        raise ValueError(f"node URL {shown!r} has no host")
    try:
        port = parts.port
    except ValueError:
        # Not urlsplit's text: it quotes the "port", which is a piece of the
        # password when the password holds a "/" (``redis://:pa/ss@host``).
        raise ValueError(f"node URL {shown!r}: the port must be an integer in 1-65535") from None
    if port is None:
        port = DEFAULT_PORT
    elif port == 0:
        # Port 0 is not a server's port (it used to turn silently into 6379).
        raise ValueError(f"node URL {shown!r}: port must be 1-65535, got 0")
    path = parts.path.lstrip("/")
    if path:
        db = _parse_db(path, shown)
    elif "db" in q:
        db = _parse_db(q["db"][0], shown)
    ctx = None
    if scheme == "rediss":
        ctx = _ssl_from_query(q, ssl_context)
    host = parts.hostname
    return NodeSpec(host=host, port=port, username=username, password=password, db=db, ssl=ctx,
                    server_hostname=host if ctx is not None else None, connect_timeout=connect_timeout,
                    identity=("tcp", _canonical_host(host), port, db))


def _parse_db(text: str, url: str) -> int:
    try:
        db = int(text)
    except ValueError:
        raise ValueError(f"node URL {url!r}: database must be an integer, got {text!r}") from None
    if db < 0 or db > 2**31 - 1:
        raise ValueError(f"node URL {url!r}: database must be in 0..2147483647, got {db}")
    return db


def _from_redis_py(pool: Any, kw: dict, ssl_context, connect_timeout: float) -> NodeSpec:
    ctx = None
    if kw.get("path"):
        path = kw["path"]
        return NodeSpec(path=path, username=kw.get("username"), password=kw.get("password"),
                        db=int(kw.get("db") or 0), connect_timeout=connect_timeout,
                        identity=("unix", path, int(kw.get("db") or 0)))
    conn_cls = getattr(pool, "connection_class", None)
    if conn_cls is not None and "SSL" in conn_cls.__name__:
        ctx = ssl_context
        if ctx is None:
            ctx = _ssl.create_default_context(cafile=kw.get("ssl_ca_certs"))
            reqs = kw.get("ssl_cert_reqs", "required")
            if isinstance(reqs, str):
                reqs = _SSL_CERT_REQS.get(reqs.lower(), _ssl.CERT_REQUIRED)
            if reqs == _ssl.CERT_NONE:
                ctx.check_hostname = False
            else:
                ctx.check_hostname = bool(kw.get("ssl_check_hostname", True))
            ctx.verify_mode = reqs
            if kw.get("ssl_certfile"):
                ctx.load_cert_chain(kw["ssl_certfile"], kw.get("ssl_keyfile"))
    host = kw.get("host", "localhost")
    port = int(kw.get("port", DEFAULT_PORT))
    if not 0 < port < 65536:
        raise ValueError(f"redis-py client for {host}: port must be 1-65535, got {port}")
    db = int(kw.get("db") or 0)
    return NodeSpec(host=host, port=port, username=kw.get("username"), password=kw.get("password"), db=db,
                    ssl=ctx, server_hostname=host if ctx is not None else None,
                    connect_timeout=connect_timeout, identity=("tcp", _canonical_host(host), port, db))


def parse_nodes(nodes: Any, ssl_context: Optional[_ssl.SSLContext] = None, connect_timeout: float = 2.0) -> List[NodeSpec]:
    """Parse and check a node list: not empty, at most MAX_NODES, no duplicates.

    Two spellings of one server (``localhost`` and ``127.0.0.1``) are rejected
    here; two different addresses that reach the same server are caught by
    ``run_id`` when connecting.  Otherwise one server would vote twice and a
    "majority" would not be one (docs/faults.md row 20)."""
    if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence):
        if hasattr(nodes, "connection_pool"):
            # Accepted (a quick test against one server), but said out loud:
            # one server is a single point of failure, not a Redlock quorum.
            warnings.warn(
                "nodes: one redis-py client makes a 1-node lock manager, not a Redlock quorum "
                "(a single server's failure or restart loses every lock); pass a list of 3 or 5 "
                "independent masters, e.g. [redis.Redis(host='a'), redis.Redis(host='b'), "
                "redis.Redis(host='c')] or their URLs",
                UserWarning,
                stacklevel=3,
            )
            nodes = [nodes]
        elif isinstance(nodes, str):
            raise TypeError(f"nodes must be a list of URLs, got the string {redact_url(nodes)!r} (wrap it in a list)")
        else:
            raise TypeError(f"nodes must be a list of node URLs or clients, got {type(nodes).__name__}")
    if len(nodes) == 0:
        raise ValueError("nodes must not be empty: Redlock needs at least one Redis master")
    if len(nodes) > MAX_NODES:
        raise ValueError(f"nodes: at most {MAX_NODES} nodes are supported, got {len(nodes)}")
    specs = [parse_node(n, ssl_context, connect_timeout) for n in nodes]
    seen = {}
    for i, s in enumerate(specs):
        if s.identity in seen:
            raise ValueError(
                f"nodes: duplicate node {s.name} (entries {seen[s.identity]} and {i}); "
                "one server would be counted twice in the quorum"
            )
        seen[s.identity] = i
    if len(specs) > 1 and len(specs) % 2 == 0:
        warnings.warn(
            f"{len(specs)} nodes: an even count needs {len(specs) // 2 + 1} for a quorum and tolerates "
            f"no more failures than {len(specs) - 1} nodes would",
            stacklevel=3,
        )
    return specs


def check_seconds(name: str, value: Any, *, minimum: float = 0.0, maximum: float = math.inf,
                  allow_zero: bool = False) -> float:
    """A finite number of seconds (not bool) within bounds, else a TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    try:
        v = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large (an int of {value.bit_length()} bits)") from None
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if v < minimum or (v == 0 and not allow_zero) or (v < 0):
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} {minimum if minimum else 0}, got {value!r}")
    if v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return v


def batch_reply_bytes(chunk: int) -> int:
    """The largest reply one batch script call of ``chunk`` keys can get
    (array header, then ``:0``/``:1`` per key), with room to spare."""
    return 4 * chunk + 32


def check_keys_arg(keys: Any) -> None:
    """``acquire_many("abc")`` would lock 'a', 'b' and 'c': refuse one str or
    bytes given where an iterable of keys is expected (``TypeError`` naming
    ``keys``)."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise TypeError(
            f"keys must be an iterable of keys, got a single {type(keys).__name__} "
            "(wrap it in a list to lock one key)")


def ttl_to_ms(name: str, value: Any, drift_factor: float, max_ttl: float) -> int:
    """Seconds (int or float) to whole milliseconds, rounded up.

    A TTL must leave room for the drift allowance (``ttl*drift_factor + 2 ms``)
    plus at least 1 ms of validity, or no attempt could ever succeed."""
    v = check_seconds(name, value, maximum=max_ttl)
    ms = math.ceil(v * 1000.0 - 1e-9)
    drift_ms = ms * drift_factor + 2.0
    if ms <= drift_ms + 1.0:
        raise ValueError(
            f"{name}={value!r} s is too short: the drift allowance alone is {drift_ms:.1f} ms "
            f"(ttl*drift_factor + 2 ms), so no acquisition could be valid"
        )
    return int(ms)


def check_int(name: str, value: Any, minimum: int = 0, maximum: int = 2**31 - 1) -> int:
    """An int (not bool) in ``[minimum, maximum]``, else a TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if value > maximum:
        shown = repr(value) if value.bit_length() < 128 else f"an int of {value.bit_length()} bits"
        raise ValueError(f"{name} must be <= {maximum}, got {shown}")
    return value


@dataclass
class Options:
    """Checked manager options shared by the asyncio and blocking APIs."""

    ttl: float
    ttl_ms: int
    drift_factor: float
    retry_count: int
    retry_delay: Tuple[float, float]
    node_timeout: float
    connect_timeout: float
    max_key_length: int
    max_ttl: float
    batch_chunk: int
    restart_guard: Any
    guard_window: Optional[float]
    fencing: bool = False
    lock_delay_ms: int = 0
    max_pending: int = 65536
    max_reply_bytes: int = 64 * 1024 * 1024
    native_commands: bool = True


def make_options(
    *,
    ttl: Any = 10.0,
    drift_factor: Any = 0.01,
    retry_count: Any = 3,
    retry_delay: Any = (0.1, 0.3),
    node_timeout: Any = None,
    connect_timeout: Any = 2.0,
    max_key_length: Any = DEFAULT_MAX_KEY_LENGTH,
    max_ttl: Any = DEFAULT_MAX_TTL,
    batch_chunk: Any = 500,
    restart_guard: Any = True,
    guard_window: Any = None,
    fencing: Any = False,
    lock_delay: Any = None,
    max_pending: Any = 65536,
    max_reply_bytes: Any = 64 * 1024 * 1024,
    native_commands: Any = True,
) -> Options:
    """Check every option once, naming the bad one."""
    if isinstance(drift_factor, bool) or not isinstance(drift_factor, (int, float)) or not math.isfinite(drift_factor):
        raise TypeError(f"drift_factor must be a finite number, got {drift_factor!r}")
    if not 0 <= drift_factor < 0.5:
        raise ValueError(f"drift_factor must be in [0, 0.5), got {drift_factor!r}")
    max_ttl_v = check_seconds("max_ttl", max_ttl, maximum=MAX_SECONDS)
    ttl_ms = ttl_to_ms("ttl", ttl, float(drift_factor), max_ttl_v)
    retry_count = check_int("retry_count", retry_count, minimum=1)
    if isinstance(retry_delay, (int, float)) and not isinstance(retry_delay, bool):
        d = check_seconds("retry_delay", retry_delay, allow_zero=True, maximum=MAX_SECONDS)
        delay = (d * 0.5, d * 1.5)
    elif isinstance(retry_delay, (tuple, list)) and len(retry_delay) == 2:
        lo = check_seconds("retry_delay[0]", retry_delay[0], allow_zero=True, maximum=MAX_SECONDS)
        hi = check_seconds("retry_delay[1]", retry_delay[1], allow_zero=True, maximum=MAX_SECONDS)
        if hi < lo:
            raise ValueError(f"retry_delay must be (low, high) with low <= high, got {retry_delay!r}")
        delay = (lo, hi)
    else:
        raise TypeError(f"retry_delay must be seconds or a (low, high) pair, got {retry_delay!r}")
    if node_timeout is None:
        # A reply deadline much smaller than the TTL (docs/algorithm.md): a few ms
        # plus a fraction of the TTL, capped so a dead node is noticed quickly.
        node_timeout_v = min(0.010 + ttl_ms / 1000.0 * 0.05, 1.0)
    else:
        node_timeout_v = check_seconds("node_timeout", node_timeout, maximum=ttl_ms / 1000.0)
        if node_timeout_v < MIN_NODE_TIMEOUT:
            raise ValueError(f"node_timeout must be >= {MIN_NODE_TIMEOUT} s (1 ms), got {node_timeout!r}")
    connect_timeout_v = check_seconds("connect_timeout", connect_timeout, maximum=3600)
    # Redis keys are at most 512 MiB; a batch chunk is one script call's keys.
    max_key_length = check_int("max_key_length", max_key_length, minimum=1, maximum=512 * 1024 * 1024)
    batch_chunk = check_int("batch_chunk", batch_chunk, minimum=1, maximum=1_000_000)
    if restart_guard not in (True, False, "strict"):
        raise ValueError(f"restart_guard must be True, False or 'strict', got {restart_guard!r}")
    gw = None if guard_window is None else check_seconds("guard_window", guard_window, allow_zero=True,
                                                         maximum=MAX_SECONDS)
    if not isinstance(fencing, bool):
        raise TypeError(f"fencing must be True or False, got {fencing!r}")
    delay_ms = 0
    if lock_delay is not None:
        delay_ms = math.ceil(check_seconds("lock_delay", lock_delay, allow_zero=True, maximum=max_ttl_v) * 1000.0 - 1e-9)
    max_pending = check_int("max_pending", max_pending, minimum=16)
    if max_pending > 1 << 30:
        raise ValueError(f"max_pending must be <= {1 << 30}, got {max_pending!r}")
    max_reply_bytes = check_int("max_reply_bytes", max_reply_bytes, minimum=65536)
    if max_reply_bytes > 1 << 40:
        raise ValueError(f"max_reply_bytes must be <= {1 << 40}, got {max_reply_bytes!r}")
    # A batch's reply is one array of small integers per chunk (":1\r\n" per
    # key): it must fit under the reply cap, or every batch drops every
    # connection and grants nothing.
    if batch_reply_bytes(batch_chunk) > max_reply_bytes:
        raise ValueError(
            f"batch_chunk={batch_chunk} needs batch replies of up to {batch_reply_bytes(batch_chunk)} bytes, "
            f"over max_reply_bytes={max_reply_bytes}: lower batch_chunk or raise max_reply_bytes")
    if not isinstance(native_commands, bool):
        raise TypeError(f"native_commands must be True or False, got {native_commands!r}")
    return Options(
        ttl=ttl_ms / 1000.0,
        ttl_ms=ttl_ms,
        drift_factor=float(drift_factor),
        retry_count=retry_count,
        retry_delay=delay,
        node_timeout=node_timeout_v,
        connect_timeout=connect_timeout_v,
        max_key_length=max_key_length,
        max_ttl=max_ttl_v,
        batch_chunk=batch_chunk,
        restart_guard=restart_guard,
        guard_window=gw,
        fencing=fencing,
        lock_delay_ms=delay_ms,
        max_pending=max_pending,
        max_reply_bytes=max_reply_bytes,
        native_commands=native_commands,
    )


def parse_info(text: Any) -> dict:
    """``INFO`` reply text -> dict of str fields."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out = {}
    for line in str(text).splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    return out
