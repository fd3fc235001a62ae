""":class:`LocalCluster`: N supervised local nodes, the public face of this package."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import tempfile
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import _check_mode, _check_real, default_margin, restart_delay
from .discovery import find_server
from .net import _PROBE_TIMEOUT, _aping, _ping
from .supervisor import (
    _DOWN,
    _FAILED,
    _POLL_INTERVAL,
    _RUNNING,
    _STARTING,
    EventCallback,
    Node,
    NodeStartError,
    _Core,
    _Endpoint,
)
from .tls import make_tls_files


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
