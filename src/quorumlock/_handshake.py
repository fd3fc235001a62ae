"""The connection handshake and the restart guard, shared by the asyncio and
blocking APIs (which differ only in how they wait for the replies)."""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import Any, Dict, List, Optional, Tuple

from hiredis import ReplyError

from . import _health, _scripts
from ._config import NodeSpec, parse_info
from .errors import ConfigurationError, scrub_text

log = logging.getLogger("quorumlock")


#: Handshake entries whose error reply only means "not supported" (an old
#: server without ``COMMAND DOCS``, an ACL that denies ``COMMAND``).
_OPTIONAL = ("CMDINFO", "CMDDOCS")

#: ``native_support`` release kinds: scripts only, ``DELIFEQ``, ``DELEX ... IFEQ``.
RELEASE_SCRIPT, RELEASE_DELIFEQ, RELEASE_DELEX = 0, 1, 2


def auth_command(spec: NodeSpec) -> Optional[tuple]:
    """``AUTH [username] password`` for ``spec``, or None without a password:
    the first command of every connection to the node (the lock connections'
    handshake, the release-notification subscriber's)."""
    if spec.password is None:
        return None
    return ("AUTH", spec.username, spec.password) if spec.username else ("AUTH", spec.password)


async def open_async(loop: Any, spec: NodeSpec, protocol: Any, timeout: float) -> None:
    """Open an asyncio connection to ``spec`` (TCP, TLS or a unix socket)
    for the already-made ``protocol``, within ``timeout`` seconds."""
    if spec.path:
        coro = loop.create_unix_connection(lambda: protocol, spec.path, ssl=spec.ssl)
    else:
        coro = loop.create_connection(lambda: protocol, spec.host, spec.port, ssl=spec.ssl,
                                      server_hostname=spec.server_hostname)
    await asyncio.wait_for(coro, timeout)


def commands(spec: NodeSpec, native: bool = True) -> List[Tuple[str, tuple]]:
    """The pipelined commands of a handshake: AUTH, SELECT, INFO server, ROLE,
    SCRIPT LOAD of every script (a node that restarted forgot them) and, with
    ``native``, the probes of the native conditional commands (``COMMAND INFO
    DELIFEQ DELEX``, ``COMMAND DOCS SET``: the same as ``health()`` reports)."""
    out: List[Tuple[str, tuple]] = []
    auth = auth_command(spec)
    if auth is not None:
        out.append(("AUTH", auth))
    if spec.db:
        out.append(("SELECT", ("SELECT", spec.db)))
    out.append(("INFO", ("INFO", "server")))
    out.append(("ROLE", ("ROLE",)))
    for body, _sha in _scripts.ALL:
        out.append(("SCRIPT", ("SCRIPT", "LOAD", body)))
    if native:
        out.extend(zip(_OPTIONAL, _health.PROBES_NATIVE))
    return out


def native_support(replies: List[Tuple[str, Any]]) -> Tuple[int, bool]:
    """``(release kind, SET IFEQ)`` of a node, from its handshake replies:
    which compare-and-delete it has (``RELEASE_DELIFEQ`` preferred over
    ``RELEASE_DELEX``; ``RELEASE_SCRIPT`` for neither) and whether ``SET``
    takes ``IFEQ``.  No probe replies (``native_commands=False``): scripts."""
    got = dict(replies)
    cmds = _health.native_commands(got.get("CMDINFO"), got.get("CMDDOCS"))
    kind = RELEASE_DELIFEQ if cmds.get("DELIFEQ") else RELEASE_DELEX if cmds.get("DELEX") else RELEASE_SCRIPT
    return kind, bool(cmds.get("SET IFEQ"))


def check(spec: NodeSpec, replies: List[Tuple[str, Any]]) -> Dict[str, str]:
    """Validate the handshake replies; return the node's INFO fields.

    Authentication problems and replicas are configuration errors (fail fast,
    naming the node); ``LOADING`` is a transient ``ConnectionError``."""
    info: Dict[str, str] = {}
    role: Any = None
    for name, r in replies:
        if isinstance(r, ReplyError) and name in _OPTIONAL:
            continue  # the node lacks the probe: it gets the scripts
        if isinstance(r, ReplyError):
            # A server (or a proxy in front of it) may echo the AUTH
            # arguments: never let the password into the message.
            text = scrub_text(r, [spec.password.encode()] if spec.password else [])
            if name == "AUTH" or text.startswith(("NOAUTH", "WRONGPASS", "NOPERM")) or "invalid password" in text:
                raise ConfigurationError(f"{spec.name}: authentication failed: {text}")
            if name == "SELECT":
                raise ConfigurationError(f"{spec.name}: cannot select database {spec.db}: {text}")
            if text.startswith("LOADING"):
                raise ConnectionError(f"{spec.name}: still loading its data set: {text}")
            raise ConfigurationError(f"{spec.name}: {name} failed: {text}")
        if name == "INFO":
            info = parse_info(r)
        elif name == "ROLE":
            role = r
    role_name = role[0] if isinstance(role, list) and role else role
    if isinstance(role_name, bytes):
        role_name = role_name.decode()
    if role_name != "master":
        raise ConfigurationError(
            f"{spec.name} is a {role_name}, not a master: replicas are not independent nodes "
            "(asynchronous replication loses locks on failover)"
        )
    return info


class GuardState:
    """Per-manager memory of every node's ``run_id``, for the restart guard.

    A node whose ``run_id`` changed since this manager last saw it restarted:
    it may have lost keys (volatile or unsafe mode), so it must not help grant
    a lock that someone else may still hold.  It is left out of quorum counts
    until it has been up for ``window`` seconds: delayed restart, enforced by
    the client even when nobody delayed the restart (docs/node-modes.md)."""

    def __init__(self, n: int) -> None:
        self.run_ids: List[Optional[str]] = [None] * n
        self.counted_after: List[int] = [0] * n
        self.restarts: List[int] = [0] * n
        #: monotonic ns at which this manager first saw each node's current run_id
        self.known_since: List[int] = [0] * n

    def on_connect(self, i: int, spec: NodeSpec, info: Dict[str, str], initial: bool, mode: Any,
                   window: float, now_ns: int) -> int:
        """Record node ``i``'s identity; return the monotonic ns from which it counts."""
        run_id = info.get("run_id")
        try:
            uptime = float(info.get("uptime_in_seconds", "0") or 0)
        except ValueError:
            uptime = 0.0
        previous = self.run_ids[i]
        restarted = previous is not None and previous != run_id
        if run_id != previous or not self.known_since[i]:
            self.known_since[i] = now_ns
        self.run_ids[i] = run_id
        if restarted:
            self.restarts[i] += 1
        distrust = False
        if mode is not False:
            if restarted:
                distrust = True
            elif mode == "strict" and uptime < window:
                distrust = True
            elif not initial and previous is None and uptime < window:
                distrust = True
        if distrust:
            wait = max(0.0, window - uptime)
            self.counted_after[i] = max(self.counted_after[i], now_ns + int(wait * 1e9))
            # Only a real exclusion is worth a warning.
            (log.warning if wait > 0 else log.debug)(
                "%s %s (up %.0fs): not counted in quorums for %.1fs (restart guard)",
                spec.name, "restarted" if restarted else "is freshly started", uptime, wait,
            )
        return self.counted_after[i]


def check_unique(specs: List[NodeSpec], run_ids: List[Optional[str]], allow: bool = False) -> None:
    """Two addresses that reach one server would vote twice: refuse (with
    ``allow``: warn, once per connect, that the quorum is weaker than it looks)."""
    seen: Dict[str, int] = {}
    for i, rid in enumerate(run_ids):
        if rid is None:
            continue
        if rid in seen:
            if allow:
                same = [specs[j].name for j, r in enumerate(run_ids) if r == rid]
                warnings.warn(
                    f"nodes {', '.join(same)} are one server (run_id {rid}) counted {len(same)} times: the quorum "
                    f"is weaker than it looks ({len(specs)} votes, but this one server going down or restarting "
                    f"takes {len(same)} of them at once; it is not a Redlock of independent masters)",
                    UserWarning,
                    stacklevel=2,
                )
                return
            raise ConfigurationError(
                f"nodes {specs[seen[rid]].name} and {specs[i].name} are the same server "
                f"(run_id {rid}); it would be counted twice in the quorum"
            )
        seen[rid] = i


def duplicate_of(i: int, run_id: Optional[str], nodes: List[Any]) -> Optional[int]:
    """The index of another node, connected and counted (``ready``), that is
    the same server as node ``i`` (same ``run_id``), else None.

    Run on every (re)connect, not only the first: a server listed twice
    under two spellings that was down at the first connect would otherwise
    vote twice once it came up."""
    if run_id is None:
        return None
    for j, nd in enumerate(nodes):
        if j != i and nd.ready and nd.run_id == run_id:
            return j
    return None


def duplicate_text(specs: List[NodeSpec], i: int, j: int) -> str:
    """The per-node outcome detail (and log text) of node ``i``, excluded as
    the same server as node ``j``."""
    return (f"duplicate of node {j} ({specs[j].name}): {specs[i].name} reaches the same server; "
            "not counted")
