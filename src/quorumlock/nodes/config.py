"""Node modes and what a node of each mode is run with.

The persistence flags per mode, the validation of mode and durations, the
restart delay a mode needs (:func:`restart_delay`), the command line of a
local node (:func:`server_argv`) and the production ``redis.conf`` plus
systemd drop-in (:func:`node_config`).  Pure functions: no process, no socket.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .tls import TLSFiles

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


def server_argv(
    server: str,
    *,
    host: str,
    port: int,
    directory: str,
    log_file: str,
    mode: str,
    tls_files: Optional[TLSFiles],
    debug_flag: bool,
    password: Optional[str],
    extra_args: Sequence[str],
) -> List[str]:
    """The command line of one local node: no config file, every setting explicit."""
    args = [server, "--bind", host]
    if tls_files is not None:
        # TLS only: --port 0 closes the plain-text port.
        args += ["--port", "0", "--tls-port", str(port),
                 "--tls-cert-file", tls_files.cert_file,
                 "--tls-key-file", tls_files.key_file,
                 "--tls-ca-cert-file", tls_files.ca_file,
                 "--tls-auth-clients", "no"]  # fmt: skip
    else:
        args += ["--port", str(port)]
    args += ["--dir", directory, "--daemonize", "no", "--logfile", log_file]
    args += _MODE_ARGS[mode]
    if debug_flag:
        # DEBUG SLEEP is one of the node-pause faults (docs/faults.md, how the faults are made).
        args += ["--enable-debug-command", "local"]
    if password is not None:
        # Visible in /proc/<pid>/cmdline: fine for throwaway local nodes.
        args += ["--requirepass", password]
    args += list(extra_args)
    return args


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
