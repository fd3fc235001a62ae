"""The ``quorumlock`` command line.

Subcommands are registered by the ``_add_*_parser`` functions listed in
``_SUBCOMMANDS``; each sets ``func`` to one ``_cmd_*`` function that takes the
parsed arguments and returns the exit code.  To add a subcommand (``bench``,
``chaos``), write an ``_add_<name>_parser(subparsers)`` and a ``_cmd_<name>(args)``
and append the former to ``_SUBCOMMANDS``.

    quorumlock nodes up -n 3 --mode volatile --max-ttl 30
    quorumlock nodes config --mode volatile --max-ttl 30
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, TextIO

if TYPE_CHECKING:
    from .nodes import LocalCluster

__all__ = ["build_parser", "main"]


def _print(*args: object, file: Optional[TextIO] = None) -> None:
    # Flush every line: `nodes up` runs for long, and whoever reads our stdout
    # through a pipe (a script, a test) must see the URLs at once.
    print(*args, file=file or sys.stdout, flush=True)


# --------------------------------------------------------------------------
# nodes
# --------------------------------------------------------------------------


def _add_node_mode_args(p: argparse.ArgumentParser) -> None:
    from .nodes import MODES

    p.add_argument("--mode", choices=MODES, default="volatile",
                   help="persistence mode and restart policy (default: volatile)")  # fmt: skip
    p.add_argument("--max-ttl", type=float, default=30.0, metavar="SECONDS",
                   help="longest lock TTL clients will use; sets the volatile restart "
                        "delay (default: 30)")  # fmt: skip
    p.add_argument("--drift-factor", type=float, default=0.01,
                   help="clock drift allowance (default: 0.01)")  # fmt: skip
    p.add_argument("--restart-margin", type=float, default=None, metavar="SECONDS",
                   help="extra seconds of the volatile restart delay "
                        "(default: max(0.1, 0.05 * max-ttl))")  # fmt: skip


def _add_nodes_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    nodes = sub.add_parser("nodes", help="run local Redis nodes, or print their configuration",
                           description="Run local Redis nodes, or print their configuration.")  # fmt: skip
    nsub = nodes.add_subparsers(dest="nodes_command", metavar="ACTION")
    nsub.required = True

    up = nsub.add_parser(
        "up",
        help="start N nodes in the foreground and supervise them (Ctrl-C stops them)",
        description="Start N independent Redis nodes on free loopback ports, print their "
        "URLs, and restart a crashed node per --mode until Ctrl-C or SIGTERM, which stop "
        "every node and remove the temporary directory.",
    )
    up.add_argument("-n", type=int, default=3, help="number of nodes (default: 3)")
    _add_node_mode_args(up)
    up.add_argument("--server", default=None, metavar="PATH",
                    help="redis-server/valkey-server binary (default: found on PATH)")  # fmt: skip
    up.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, metavar="BASE",
                    help="listen on ports BASE, BASE+1, ... BASE+N-1 (default: free ports below "
                         "the kernel's ephemeral range)")  # fmt: skip
    up.add_argument("--password", default=None,
                    help="require this password (note: visible in the process list)")  # fmt: skip
    up.add_argument("--tls", action="store_true",
                    help="serve TLS only, with a throwaway CA (its path is printed)")  # fmt: skip
    up.add_argument("--base-dir", default=None, metavar="DIR",
                    help="create the nodes' directory in DIR (default: the system temp dir)")  # fmt: skip
    up.set_defaults(func=_cmd_nodes_up)

    cfg = nsub.add_parser(
        "config",
        help="print the redis.conf lines and systemd drop-in for a mode",
        description="Print the redis.conf lines and the systemd drop-in that a production "
        "node of --mode needs.  For volatile the drop-in enforces the delayed restart on every "
        "start (after a crash, a manual start and at boot).  See docs/deployment.md.",
    )
    _add_node_mode_args(cfg)
    cfg.set_defaults(func=_cmd_nodes_config)


def _check_ports(host: str, base: int, n: int) -> List[int]:
    """``base .. base+n-1``, each free on ``host`` now; ValueError naming the first that is not."""
    if isinstance(base, bool) or not isinstance(base, int):
        raise TypeError(f"--port must be an int, got {base!r}")
    if base < 1 or base + max(n, 1) - 1 > 65535:
        raise ValueError(f"--port {base} with -n {n}: ports must lie in 1..65535")
    ports = list(range(base, base + n))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in ports:
        try:
            # No SO_REUSEADDR, as the server's own bind: a port in TIME_WAIT counts as busy.
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((host, port))
        except OSError as exc:
            raise ValueError(f"port {port} on {host} is not free ({exc.strerror or exc})") from None
    return ports


@contextlib.contextmanager
def _fixed_ports(ports: List[int]) -> Iterator[None]:
    """Make the LocalCluster built inside this block take ``ports``, in order.

    ``quorumlock.nodes`` picks a node's port through
    ``quorumlock.nodes.net._pick_free_port`` (the seam its tests use too);
    LocalCluster has no ports argument.  Once the cluster has started, each node keeps its port
    across restarts, so the function is restored at the end of the block.
    """
    from .nodes import net as _net

    original = getattr(_net, "_pick_free_port", None)
    if original is None:  # pragma: no cover - guards against a rename in nodes/net.py
        raise RuntimeError("--port is not supported by this quorumlock.nodes.net")
    queue = list(ports)

    def pick(host: str) -> int:
        if not queue:
            raise RuntimeError(f"a port of {ports[0]}..{ports[-1]} was taken while the nodes started")
        return queue.pop(0)

    _net._pick_free_port = pick  # type: ignore[assignment]
    try:
        yield
    finally:
        _net._pick_free_port = original  # type: ignore[assignment]


def _start_cluster(args: argparse.Namespace, on_event: Callable[..., None]) -> "LocalCluster":
    from .nodes import LocalCluster

    return LocalCluster(
        n=args.n,
        mode=args.mode,
        max_ttl=args.max_ttl,
        server=args.server,
        base_dir=args.base_dir,
        drift_factor=args.drift_factor,
        restart_margin=args.restart_margin,
        host=args.host,
        password=args.password,
        tls=args.tls,
        on_event=on_event,
    )


def _cmd_nodes_up(args: argparse.Namespace) -> int:
    """``quorumlock nodes up``: run nodes in the foreground until SIGINT/SIGTERM."""
    from .nodes import Node

    # The supervisor also logs crashes and failures; here _on_event prints
    # them already, so keep the library's log records off the terminal.
    nodes_log = logging.getLogger("quorumlock.nodes")
    nodes_log.addHandler(logging.NullHandler())
    nodes_log.propagate = False

    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    # Handlers first: a Ctrl-C during start-up then ends in the same clean stop.
    # The servers run in their own session, so the terminal's SIGINT reaches
    # only us; we stop them.
    handled = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGHUP"):
        handled.append(signal.SIGHUP)  # terminal closed
    previous = {s: signal.signal(s, _on_signal) for s in handled}

    delay_box: List[float] = [0.0]

    def _on_event(node: Node, event: str, t: float) -> None:
        if event == "crash":
            when = f"restart in {delay_box[0]:.3f} s" if delay_box[0] else "restarting now"
            _print(f"# node {node.index} ({node.address}) crashed; {when}")
        elif event == "restart":
            _print(f"# node {node.index} restarted (pid {node.pid})")
        elif event == "up" and node.crash_times:  # the first "up" is the start-up
            _print(f"# node {node.index} up again")
        elif event == "failed":
            _print(f"# node {node.index} FAILED: {node.error}", file=sys.stderr)

    try:
        try:
            ports = _check_ports(args.host, args.port, args.n) if args.port is not None else None
            with _fixed_ports(ports) if ports else contextlib.nullcontext():
                cluster = _start_cluster(args, _on_event)
        except (TypeError, ValueError, RuntimeError) as exc:
            _print(f"quorumlock nodes up: error: {exc}", file=sys.stderr)
            return 1
        try:
            delay_box[0] = cluster.restart_delay
            for url in cluster.urls:
                _print(url)
            _print(f"QUORUMLOCK_NODES={','.join(cluster.urls)}")
            if cluster.ca_file:
                _print(f"# CA certificate: {cluster.ca_file}")
            policy = (f"restart {cluster.restart_delay:.3f} s after a crash"
                      if cluster.restart_delay else "restart at once after a crash")  # fmt: skip
            _print(f"# {args.n} node(s), mode {args.mode} ({policy}), dir {cluster.dir}; "
                   "Ctrl-C stops them")  # fmt: skip
            # A timed wait: the handler runs in this thread between waits.
            while not done.wait(0.2):
                pass
        finally:
            cluster.stop()
        _print(f"# stopped; removed {cluster.dir}")
        return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _cmd_nodes_config(args: argparse.Namespace) -> int:
    """``quorumlock nodes config``: print :func:`quorumlock.nodes.node_config`."""
    from .nodes import node_config

    try:
        text = node_config(args.mode, args.max_ttl, args.drift_factor, args.restart_margin)
    except (TypeError, ValueError) as exc:
        _print(f"quorumlock nodes config: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------

def _add_demo_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from .demo import add_parser

    add_parser(sub)


def _add_bench_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from .bench.runner import add_arguments

    p = sub.add_parser(
        "bench",
        help="benchmark quorumlock and its peers on local nodes, next to the redis-benchmark ceiling",
        description="Start local nodes per --modes and --nodes, measure the redis-benchmark ceiling, "
        "run the workloads and the peer libraries on the same nodes, time a node's recovery after "
        "SIGKILL, and print a markdown table (also --json, --plots).  See docs/benchmarks.md.",
    )
    add_arguments(p)
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    """``quorumlock bench``: :func:`quorumlock.bench.runner.run_from_args`."""
    from .bench.runner import run_from_args

    return run_from_args(args, prog="quorumlock bench")


def _add_chaos_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """``quorumlock chaos``: the fault-injection safety checker (:mod:`quorumlock.chaos.cli`)."""
    from .chaos.cli import add_parser

    add_parser(sub)


#: Functions that each add one top-level subcommand to the parser.
_SUBCOMMANDS: List[Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]] = [
    _add_nodes_parser,
    _add_demo_parser,
    _add_bench_parser,
    _add_chaos_parser,
]


def build_parser() -> argparse.ArgumentParser:
    """The full ``quorumlock`` argument parser."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="quorumlock",
        description="Redlock over N independent Redis masters: tools.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"quorumlock {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
