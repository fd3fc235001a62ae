"""The chaos harness: nodes, a storage node, client processes, proxies, and
the record of what was injected.

An :class:`Env` owns everything one scenario needs and tears it down:

* the lock nodes, a :class:`quorumlock.nodes.LocalCluster` in the scenario's
  mode, run under the clock shim when the scenario skews node clocks
  (:mod:`quorumlock.chaos.clock`);
* the storage node: a separate single-node cluster holding the protected
  counters, never faulted (except through one client's own proxy, row 14);
* client processes (:class:`Worker`), each optionally behind its own
  :class:`~quorumlock.chaos.proxy.FaultProxy` per lock node (all on one
  :class:`~quorumlock.chaos.proxy.ProxyHub` thread), so a network fault can
  hit one client's links only;
* the fault log: every injected fault as a history event stamped with the
  host monotonic clock.

At the end :meth:`Env.finish` reads what the storage and the lock nodes hold,
merges the clients' histories with the faults into one JSONL file, and runs
the checker.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

import redis

from ..nodes import LocalCluster, find_server
from . import checker
from .clock import ClockControl, build_shim, host_monotonic_ns, node_control, shim_server
from .history import merge
from .proxy import FaultProxy, ProxyHub
from .worker import storage_key

__all__ = ["Env", "Worker", "ScenarioError", "now"]

now = host_monotonic_ns


class ScenarioError(RuntimeError):
    """A schedule could not be set up as intended (not a safety finding)."""


def _direct(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=1.0,
                       socket_connect_timeout=1.0, retry=None)


class Worker:
    """One client process and the pipes to drive it (script mode)."""

    def __init__(self, env: "Env", name: str, cfg: Dict[str, Any], argv_prefix: Sequence[str] = ()) -> None:
        self.env = env
        self.name = name
        self.cfg = cfg
        path = os.path.join(env.dir, f"client-{name}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.stderr_path = os.path.join(env.dir, f"client-{name}.stderr")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [*argv_prefix, sys.executable, "-m", "quorumlock.chaos.worker", path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, bufsize=1, start_new_session=True,
        )
        self.lines: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self.seen: List[Dict[str, Any]] = []
        self.stopped = False
        self._reader = threading.Thread(target=self._read, name=f"chaos-{name}-stdout", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                self.lines.put({"event": "garbage", "line": line[:200]})
        self.lines.put({"event": "eof"})

    def stderr_tail(self) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()[-1500:].decode("utf-8", "replace")
        except OSError:
            return ""

    def expect(self, *events: str, timeout: float = 15.0) -> Dict[str, Any]:
        """The next line whose ``event`` is one of ``events`` (others are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ScenarioError(f"client {self.name}: no {events} within {timeout} s; "
                                    f"stderr: {self.stderr_tail()}")
            try:
                msg = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(msg)
            ev = msg.get("event")
            if ev in events:
                return msg
            if ev in ("eof", "error"):
                raise ScenarioError(f"client {self.name}: {msg}; stderr: {self.stderr_tail()}")

    def send(self, cmd: str, **kw: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(dict(kw, cmd=cmd)) + "\n")
        self.proc.stdin.flush()

    def call(self, cmd: str, *, timeout: float = 30.0, **kw: Any) -> Dict[str, Any]:
        expect = {
            "acquire": ("acquired", "failed"), "read": ("read",), "check": ("checked",),
            "write": ("written", "skipped"), "release": ("released",), "extend": ("extended",),
            "sleep": ("slept",), "sleep_until_left": ("slept",), "rmw": ("done", "failed"), "quit": ("bye",),
        }[cmd]
        self.send(cmd, **kw)
        return self.expect(*expect, timeout=timeout)

    def stop(self) -> None:
        """SIGSTOP: a GC pause of the whole process."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True
        self.env.fault("client-pause", f"client {self.name}")

    def cont(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False
        self.env.fault("client-resume", f"client {self.name}")

    def finish(self, timeout: float = 20.0) -> None:
        """Let the process end (script mode: ``quit``); kill it if it does not."""
        if self.stopped:
            try:
                self.cont()
            except ProcessLookupError:
                pass
        if self.proc.poll() is None and self.cfg.get("mode") == "script":
            try:
                self.send("quit")
            except (BrokenPipeError, OSError):
                pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=3)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                self.proc.kill()
                self.proc.wait()
            self.env.fault("client-killed", f"client {self.name}", detail="did not exit in time")
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._stderr.close()


class Env:
    """Everything one scenario runs on.  Use as a context manager."""

    def __init__(self, *, mode: str = "volatile", n: int = 3, ttl: float = 1.0, max_ttl: Optional[float] = None,
                 clock_faults: bool = False, keys: Sequence[str] = ("k0",), base_dir: Optional[str] = None,
                 name: str = "run", keep: bool = True, server: Optional[str] = None) -> None:
        self.mode = mode
        self.n = n
        self.ttl = ttl
        self.keys = list(keys)
        self.name = name
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix=f"quorumlock-chaos-{name}-", dir=base_dir)
        self.faults: List[Dict[str, Any]] = []
        self.workers: List[Worker] = []
        self.proxies: Dict[str, List[FaultProxy]] = {}
        self.storage_proxies: Dict[str, FaultProxy] = {}
        self._hub: Optional[ProxyHub] = None
        self.clocks: List[ClockControl] = []
        self.extra_final: Dict[str, Any] = {}
        self.extra_checks: Dict[str, Any] = {}
        self.node_lock = threading.Lock()  # random injectors: one node-level fault at a time
        self.notes: List[str] = []
        self.cluster: Optional[LocalCluster] = None
        self.storage: Optional[LocalCluster] = None
        self.t_start = now()
        real = find_server(server)
        try:
            srv = real
            if clock_faults:
                srv = shim_server(real, self.dir, build_shim())
            self.cluster = LocalCluster(n=n, mode=mode, max_ttl=max_ttl or ttl, server=srv, start=False,
                                        base_dir=self.dir)
            if clock_faults:
                self.clocks = [node_control(nd.dir) for nd in self.cluster.nodes]
            self.cluster.start()
            # The protected resource lives on its own node, never one of the lock nodes.
            self.storage = LocalCluster(n=1, mode="volatile", max_ttl=max_ttl or ttl, server=real,
                                        base_dir=self.dir)
        except BaseException:
            self.close()
            raise

    # -- parts -------------------------------------------------------------

    @property
    def hub(self) -> ProxyHub:
        if self._hub is None:
            self._hub = ProxyHub()
        return self._hub

    @property
    def storage_port(self) -> int:
        assert self.storage is not None
        return self.storage.ports[0]

    def fault(self, name: str, target: str = "", **detail: Any) -> Dict[str, Any]:
        ev = {"type": "fault", "t": now(), "name": name, "target": target}
        if detail:
            ev["detail"] = detail
        self.faults.append(ev)
        return ev

    def worker(self, name: str, *, mode: str = "script", via_proxy: bool = False, storage_proxy: bool = False,
               urls: Optional[List[str]] = None, faketime: Optional[str] = None, **cfg: Any) -> Worker:
        """Start a client process.  ``via_proxy``: its lock connections go
        through proxies of its own (``env.proxies[name][i]``); ``storage_proxy``:
        its storage connection too (``env.storage_proxies[name]``)."""
        assert self.cluster is not None
        if urls is None:
            if via_proxy:
                ps = [FaultProxy("127.0.0.1", p, hub=self.hub, reset_on_heal=True) for p in self.cluster.ports]
                self.proxies[name] = ps
                urls = [p.url for p in ps]
            else:
                urls = list(self.cluster.urls)
        st_port = self.storage_port
        if storage_proxy:
            sp = FaultProxy("127.0.0.1", st_port, hub=self.hub, reset_on_heal=True)
            self.storage_proxies[name] = sp
            st_port = sp.port
        full = {
            "client": name, "urls": urls, "storage": {"host": "127.0.0.1", "port": st_port},
            "keys": self.keys, "ttl": self.ttl, "mode": mode,
            "history": os.path.join(self.dir, f"history-{name}.jsonl"),
        }
        full.update(cfg)
        prefix: List[str] = []
        if faketime:
            ft = shutil.which("faketime")
            if not ft:
                raise ScenarioError("faketime is not installed")
            prefix = [ft, "-f", faketime]
        w = Worker(self, name, full, prefix)
        self.workers.append(w)
        return w

    def ready(self, *workers: Worker, timeout: float = 30.0) -> None:
        for w in workers:
            w.expect("ready", timeout=timeout)

    # -- node faults -------------------------------------------------------

    def crash(self, i: int, delay: Optional[float] = None, wait: bool = True) -> None:
        """SIGKILL node ``i``; restart per the mode (``delay=None``) or after ``delay``."""
        assert self.cluster is not None
        eff = self.cluster.restart_delay if delay is None else delay
        self.fault("node-crash", f"node {i}", restart_delay=round(eff, 3))
        if eff == 0 and wait:
            self.cluster.restart(i, delay=0)
            self.fault("node-up", f"node {i}")
        elif delay is None:
            self.cluster.kill(i)  # the supervisor restarts it after the mode's delay
        else:
            threading.Thread(target=self.cluster.restart, args=(i, delay), daemon=True).start()

    def jump(self, i: int, seconds: float) -> None:
        self.clocks[i].jump(seconds)
        self.fault("clock-jump", f"node {i}", seconds=seconds)

    def rate(self, i: int, rate: float) -> None:
        self.clocks[i].set_rate(rate)
        self.fault("clock-rate", f"node {i}", rate=rate)

    def node_pause(self, i: int) -> None:
        assert self.cluster is not None
        self.cluster.pause(i)
        self.fault("node-pause", f"node {i}")

    def node_resume(self, i: int) -> None:
        assert self.cluster is not None
        self.cluster.resume(i)
        self.fault("node-resume", f"node {i}")

    def script_flush(self, i: int) -> None:
        assert self.cluster is not None
        try:
            _direct(self.cluster.ports[i]).script_flush()
            self.fault("script-flush", f"node {i}")
        except redis.RedisError as exc:
            self.fault("script-flush-failed", f"node {i}", error=repr(exc)[:200])

    def link(self, client: str, i: int, mode: str, delay: float = 0.0) -> None:
        """Set the mode of ``client``'s proxy to node ``i`` (``i = "storage"``: its storage proxy)."""
        p = self.storage_proxies[client] if i == "storage" else self.proxies[client][i]
        p.set_mode(mode, delay)
        self.fault(f"link-{mode}", f"{client}->{'storage' if i == 'storage' else f'node {i}'}",
                   **({"delay": delay} if delay else {}))

    # -- the end -----------------------------------------------------------

    def snapshot(self) -> Dict[str, Any]:
        """What the storage and the lock nodes hold now (the ``final`` event)."""
        assert self.cluster is not None
        out: Dict[str, Any] = {"t": now(), "counters": {}, "fences": {}, "locks": [], "unreachable": []}
        st = _direct(self.storage_port)
        for k in self.keys:
            sk = storage_key(k)
            try:
                v, f = st.hmget(sk, ["value", "fence"])
            except redis.RedisError:
                continue
            out["counters"][sk] = int(v) if v is not None else 0
            out["fences"][sk] = int(f) if f is not None else None
        for i, port in enumerate(self.cluster.ports):
            node = self.cluster.nodes[i]
            if not node.up or node.paused:
                out["unreachable"].append(i)
                continue
            r = _direct(port)
            try:
                pipe = r.pipeline(transaction=False)
                for k in self.keys:
                    pipe.get(k)
                    pipe.pttl(k)
                res = pipe.execute()
            except redis.RedisError:
                out["unreachable"].append(i)
                continue
            for j, k in enumerate(self.keys):
                val, pttl = res[2 * j], res[2 * j + 1]
                if val is not None:
                    out["locks"].append({"node": i, "key": k, "token": val.hex(), "pttl": pttl})
        return out

    def finish(self, meta: Dict[str, Any], snapshot: Optional[Dict[str, Any]] = None):
        """End the clients, snapshot, merge the history, check it."""
        for w in self.workers:
            w.finish()
        final = snapshot if snapshot is not None else self.snapshot()
        final.update(self.extra_final)
        node_events = []
        if self.cluster is not None:
            for i, ev, t in self.cluster.history:
                if ev in ("crash", "restart", "up", "pause", "resume"):
                    node_events.append({"type": "fault", "t": int(t * 1e9), "name": f"node-{ev}",
                                        "target": f"node {i}", "source": "cluster"})
        parts = [w.cfg["history"] for w in self.workers]
        path = os.path.join(self.dir, "history.jsonl")
        meta = dict(meta, t_start=self.t_start, t_end=now(), nodes=self.n, mode=self.mode, ttl=self.ttl,
                    keys=self.keys, notes=self.notes)
        events = merge(path, meta, parts, extra=self.faults + node_events, final=final)
        report = checker.check(events)
        return path, events, report

    def close(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                try:
                    os.kill(w.proc.pid, signal.SIGCONT)
                    w.proc.kill()
                    w.proc.wait(5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        if self._hub is not None:
            self._hub.close()
            self._hub = None
        for c in (self.cluster, self.storage):
            if c is not None:
                c.stop()
        for ctl in self.clocks:
            ctl.close()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Env":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
