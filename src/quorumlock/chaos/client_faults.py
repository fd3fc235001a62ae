"""Client-process faults: the scenarios of docs/safety.md rows 22-29.

The other scenarios fault nodes, links and clocks.  These fault the *client
process* itself -- ``fork()`` after connect, signals raised at random points,
asyncio cancellation at the decision point, a failed extend with a shorter
TTL, a server listed twice that comes up late, memory under load -- and
record what the client did in the same history as every other run (schema
in docs/safety.md), plus two event types the checker reads for these rows:

``{"type": "bound", "t", "name", ...}``  a limit the run states:
    ``no-leftover`` (``prefix``: no lock key with that prefix may be left on
    any node at the end) or ``rss-growth`` (``client``, ``limit`` bytes).
``{"type": "sample", "t", "name": "rss", "client", "value", "phase"}``
    the client process's resident memory (bytes) at the start of the load
    and its peak (``VmHWM``) at the end.

and three op fields: ``expect_ok`` (the op cannot legitimately fail: a free
key with every node up), ``bound_ms`` (the op must complete within this
many ms), ``servers`` / ``quorum`` (distinct real servers that hold the
token after the op, and the majority it needed).  The checker's
:func:`quorumlock.chaos.checker.check_client` turns them into findings.

The client code runs in a fresh process (``python -m
quorumlock.chaos.client_faults DRIVER CONFIG.json``), single-threaded, so
that it can fork, take signals and have its own memory measured; rows 25
and 26 run in the harness process, one manager per engine build.  Every
row runs against both engine builds (``QUORUMLOCK_CHAOS_BUILDS`` =
``cython,python`` by default; a build that is not available is skipped with
a note).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

S = 1_000_000_000
MIB = 1 << 20

__all__ = ["SPECS", "register", "FloodServer", "main"]


def _now() -> int:
    from .clock import host_monotonic_ns

    return host_monotonic_ns()


# --------------------------------------------------------------------------
# the client side (runs in the driver process)
# --------------------------------------------------------------------------


def _rss() -> int:
    """Resident set size of this process, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """Peak resident set size (VmHWM) of this process, bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _rss()


def _reset_peak() -> None:
    try:  # Linux >= 4.0: "5" resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _build() -> str:
    from .._backend import IMPLEMENTATION

    return str(IMPLEMENTATION)


class Rec:
    """The driver's history file and its line protocol with the harness."""

    def __init__(self, cfg: Dict[str, Any], path: Optional[str] = None) -> None:
        from .history import HistoryWriter

        self.cfg = cfg
        self.name = cfg["client"]
        self.hist = HistoryWriter(path or cfg["history"], flush_every=256)
        self.seq = 0

    def op(self, op: str, key: str, invoke: int, complete: Optional[int], ok: bool,
           client: Optional[str] = None, **kw: Any) -> Dict[str, Any]:
        self.seq += 1
        who = client or self.name
        rec = {"type": "op", "id": f"{who}:{self.seq}", "client": who, "op": op, "key": key,
               "invoke": invoke, "complete": complete, "ok": ok}
        rec.update({k: v for k, v in kw.items() if v is not None})
        self.hist.write(rec)
        return rec

    def acquired(self, key: str, invoke: int, lock: Any, client: Optional[str] = None, **kw: Any) -> Dict[str, Any]:
        t = _now()
        if lock is None:
            return self.op("acquire", key, invoke, t, False, client=client, **kw)
        v = lock.validity
        return self.op("acquire", key, invoke, t, True, client=client, token=lock.token.hex(),
                       validity=round(v, 6), valid_until=t + int(v * S), nodes=lock.nodes, **kw)

    def event(self, ev: Dict[str, Any]) -> None:
        self.hist.write(ev)

    def sample_rss(self, phase: str, value: int) -> None:
        self.event({"type": "sample", "t": _now(), "name": "rss", "client": self.name, "value": value,
                    "phase": phase})

    def say(self, **kw: Any) -> None:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()

    def wait_for(self, cmd: str) -> None:
        line = sys.stdin.readline()
        got = json.loads(line) if line.strip() else {}
        if got.get("cmd") != cmd:
            raise RuntimeError(f"expected {cmd!r} from the harness, got {line!r}")

    def close(self) -> None:
        self.hist.close()


def _memory_opts(mgr_cls: Any) -> Dict[str, Any]:
    """Memory bounds to configure, if this engine has the options (the
    first-round engine has none)."""
    import inspect

    from .._manager import ManagerBase

    params = inspect.signature(ManagerBase.__init__).parameters
    out: Dict[str, Any] = {}
    if "max_pending" in params:
        out["max_pending"] = 1000
    if "max_reply_bytes" in params:
        out["max_reply_bytes"] = 1 * MIB
    return out


def d_fork(cfg: Dict[str, Any], rec: Rec) -> None:
    """Row 22: a connected blocking manager forks ``children`` workers.
    Every child alternates ``try_acquire`` of the key another client holds
    on every node (must fail) and of a free key of its own (must succeed),
    while the parent keeps acquiring free keys on the same connections."""
    from ..blocking import LockManager

    mgr = LockManager(cfg["urls"], ttl=cfg["ttl"], retry_count=1, node_timeout=cfg["node_timeout"])
    mgr.connect()
    for i in range(3):  # warm: the connections are in use before the fork
        lk = mgr.try_acquire(f"fw:{rec.name}:{i}")
        if lk is not None:
            lk.release()
    held = cfg["held"]
    end = _now() + int(cfg["duration"] * S)
    pids = []
    base = cfg["history"]
    for j in range(int(cfg["children"])):
        pid = os.fork()
        if pid == 0:  # the child: its own history file, then _exit
            code = 0
            try:
                crec = Rec(dict(cfg, client=f"{rec.name}-child{j}"), path=f"{base}.child{j}")
                rng = random.Random(j)
                i = 0
                while _now() < end:
                    i += 1
                    t = _now()
                    try:
                        lk = mgr.try_acquire(held)
                        err = None
                    except Exception as exc:
                        lk, err = None, repr(exc)[:200]
                    crec.acquired(held, t, lk, error=err)
                    if lk is not None:
                        try:
                            lk.release()
                        except Exception:
                            pass
                    key = f"ff:{rec.name}:{j}:{i}"
                    t = _now()
                    try:
                        lk = mgr.try_acquire(key)
                        err = None
                    except Exception as exc:
                        lk, err = None, repr(exc)[:200]
                    op = crec.acquired(key, t, lk, expect_ok=True, error=err)
                    if lk is not None:
                        t = _now()
                        ok = False
                        try:
                            ok = bool(lk.release())
                        except Exception:
                            pass
                        crec.op("release", key, t, _now(), ok, lock=op["id"], token=op.get("token"))
                    time.sleep(rng.uniform(0, 0.002))
                crec.close()
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    i = 0
    while _now() < end:  # the parent goes on using its connections
        i += 1
        key = f"fp:{rec.name}:{i}"
        t = _now()
        try:
            lk = mgr.try_acquire(key)
        except Exception:
            lk = None
        if lk is not None:
            try:
                lk.release()
            except Exception:
                pass
        time.sleep(0.001)
    # Reap the children; one that has not ended a few node timeouts after
    # the end is stalled for good.
    grace = _now() + int((3 * cfg["node_timeout"] + 3.0) * S)
    left = dict.fromkeys(pids, _now())
    while left and _now() < grace:
        for pid in list(left):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                left.pop(pid)
        time.sleep(0.01)
    for j, pid in enumerate(pids):
        stuck = pid in left
        rec.op("join", f"child{j}", end, None if stuck else _now(), not stuck, expect_ok=True,
               client=f"{rec.name}-child{j}")
        if stuck:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    mgr.close()
    rec.say(event="done", children=len(pids), history_parts=[f"{base}.child{j}" for j in range(len(pids))])


class _Interrupt(KeyboardInterrupt):
    """Raised by the timer's signal handler (what Ctrl-C raises, by type)."""


def d_signals(cfg: Dict[str, Any], rec: Rec) -> None:
    """Row 23: a ``setitimer`` storm inside ``with locks.lock(k): pass``, then
    Ctrl-C (a timer-raised ``KeyboardInterrupt``) during a blocking wait on
    paused nodes."""
    from ..blocking import LockManager

    mgr = LockManager(cfg["urls"], ttl=cfg["ttl"], retry_count=1)
    mgr.connect()
    slow = LockManager(cfg["urls"], ttl=cfg["wait"] + 1.0, retry_count=1, node_timeout=cfg["wait"])
    slow.connect()
    rng = random.Random(cfg.get("seed", 0))
    armed = [False]

    def on_alarm(signum: int, frame: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise _Interrupt()

    signal.signal(signal.SIGALRM, on_alarm)
    # How long one `with` takes here: the interrupts land anywhere inside it.
    spans = []
    for i in range(20):
        t = time.perf_counter()
        with mgr.lock(f"sw:{rec.name}:{i}"):
            pass
        spans.append(time.perf_counter() - t)
    span = sorted(spans)[len(spans) // 2]
    prefix = cfg["prefix"]
    interrupted = 0
    for i in range(int(cfg["count"])):
        key = f"{prefix}{i}"
        t = _now()
        entered = False
        err = None
        try:
            try:
                armed[0] = True
                signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.02, 1.5) * span)
                with mgr.lock(key):
                    entered = True
            finally:  # disarmed before any handler below runs
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Interrupt:
            err = "KeyboardInterrupt"
            interrupted += 1
        except Exception as exc:
            err = f"{type(exc).__name__}: {exc}"[:200]
        # A block the timer did not interrupt cannot fail: a fresh key, every
        # node up (an interrupt that desynchronised a connection shows here).
        # (Pure-Python twin: an interrupt while a reply is being dispatched
        # makes that connection suspect, and its reset costs the next blocks
        # their quorum for a reconnect backoff: liveness, not checked there.)
        rec.op("with-lock", key, t, _now(), entered and err is None, error=err,
               expect_ok=True if err != "KeyboardInterrupt" and cfg.get("strict", True) else None)
    rec.say(event="phase2", interrupted=interrupted, span_ms=round(span * 1e3, 3))
    rec.wait_for("go")  # the harness has paused a majority of the nodes
    delay = 0.2
    t_arm = _now()
    caught = None
    try:
        try:
            armed[0] = True
            signal.setitimer(signal.ITIMER_REAL, delay)
            slow.try_acquire(cfg["wait_key"])
        finally:
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Interrupt:
        caught = _now()
    except Exception:
        pass
    if caught is None:  # the wait ended without the interrupt surfacing inside it
        caught = _now()
    rec.op("interrupt", cfg["wait_key"], t_arm + int(delay * S), caught, True,
           bound_ms=cfg["latency_ms"], detail=f"blocking wait on paused nodes, node_timeout {cfg['wait']} s")
    rec.say(event="waited", ms=round((caught - t_arm) / 1e6 - delay * 1e3, 1))
    rec.wait_for("close")
    mgr.close()
    slow.close()
    rec.say(event="done", interrupted=interrupted)


def d_cancel(cfg: Dict[str, Any], rec: Rec) -> None:
    """Row 24: ``asyncio.timeout`` about one round trip around ``acquire`` /
    ``try_acquire`` of fresh keys, many times."""
    import asyncio

    from ..aio import LockManager

    async def run() -> Dict[str, Any]:
        mgr = LockManager(cfg["urls"], ttl=cfg["ttl"], retry_count=1)
        await mgr.connect()
        rtts = []
        for i in range(30):
            t = time.perf_counter()
            lk = await mgr.try_acquire(f"cw:{rec.name}:{i}")
            rtts.append(time.perf_counter() - t)
            if lk is not None:
                await lk.release()
        rtt = sorted(rtts)[len(rtts) // 2]
        rng = random.Random(cfg.get("seed", 0))
        prefix = cfg["prefix"]
        cancelled = 0
        for i in range(int(cfg["count"])):
            key = f"{prefix}{i}"
            t = _now()
            lk = None
            err = None
            try:
                call = mgr.try_acquire(key) if i % 2 else mgr.acquire(key, retry_count=1)
                lk = await _within(call, rng.uniform(0.3, 1.5) * rtt)
            except (TimeoutError, asyncio.TimeoutError):
                err = "cancelled by asyncio.timeout"
                cancelled += 1
            except Exception as exc:
                err = repr(exc)[:200]
            op = rec.acquired(key, t, lk, error=err)
            if lk is not None:
                t = _now()
                ok = bool(await lk.release())
                rec.op("release", key, t, _now(), ok, lock=op["id"], token=op.get("token"))
        await asyncio.sleep(0.3)  # background releases, if any, land
        await mgr.close()
        return {"cancelled": cancelled, "rtt_ms": round(rtt * 1e3, 3)}

    got = asyncio.run(run())
    rec.say(event="done", **got)


async def _within(aw: Any, seconds: float) -> Any:
    """``await aw`` under ``asyncio.timeout(seconds)`` (``wait_for`` before 3.11)."""
    import asyncio

    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)


def d_refused(cfg: Dict[str, Any], rec: Rec) -> None:
    """Row 27: a majority of the listed nodes refuse connections; many
    blocking ``try_acquire`` calls; the client's memory is sampled."""
    from ..blocking import LockManager

    mgr = LockManager(cfg["urls"], ttl=cfg["ttl"], retry_count=1, **_memory_opts(LockManager))
    mgr.connect()
    for i in range(2000):
        mgr.try_acquire(f"rw{i % 50}")
    base = _rss()
    _reset_peak()
    rec.sample_rss("start", base)
    end = _now() + int(cfg["max_seconds"] * S)
    n = 0
    count = int(cfg["count"])
    while n < count and _now() < end:
        mgr.try_acquire(f"r{n % 1000}")
        n += 1
    peak = _peak_rss()
    rec.sample_rss("peak", peak)
    mgr.close()
    rec.say(event="done", attempts=n, growth_mib=round((peak - base) / MIB, 1))


def d_stopped(cfg: Dict[str, Any], rec: Rec) -> None:
    """Row 28: asyncio load with one node SIGSTOPped (by the harness)."""
    import asyncio

    from ..aio import LockManager

    async def run() -> Dict[str, Any]:
        mgr = LockManager(cfg["urls"], ttl=cfg["ttl"], retry_count=1, **_memory_opts(LockManager))
        await mgr.connect()
        for i in range(200):
            lk = await mgr.try_acquire(f"sw{i}")
            if lk is not None:
                await lk.release()
        rec.say(event="ready")
        await asyncio.get_running_loop().run_in_executor(None, rec.wait_for, "go")
        base = _rss()
        _reset_peak()
        rec.sample_rss("start", base)
        end = time.monotonic() + cfg["seconds"]
        done = [0]

        async def worker(w: int) -> None:
            i = 0
            while time.monotonic() < end:
                i += 1
                try:
                    lk = await mgr.try_acquire(f"s{w}:{i}")
                    if lk is not None:
                        await lk.release()
                except Exception:
                    await asyncio.sleep(0.001)
                done[0] += 1

        await asyncio.gather(*(worker(w) for w in range(int(cfg["concurrency"]))))
        rec.sample_rss("peak", _peak_rss())
        growth = _peak_rss() - base
        await mgr.close()
        return {"operations": done[0], "growth_mib": round(growth / MIB, 1)}

    got = asyncio.run(run())
    rec.say(event="done", **got)


def d_flood(cfg: Dict[str, Any], rec: Rec) -> None:
    """Row 29: two of three nodes answer with a huge bulk reply; one
    blocking and one asyncio ``try_acquire`` must end by their deadline."""
    import asyncio

    from .. import aio, blocking

    opts = _memory_opts(blocking.LockManager)
    nt = cfg["node_timeout"]
    mgr = blocking.LockManager(cfg["urls"], ttl=cfg["ttl"], retry_count=1, node_timeout=nt, **opts)
    mgr.connect()
    loop = asyncio.new_event_loop()
    amgr = aio.LockManager(cfg["urls"], ttl=cfg["ttl"], retry_count=1, node_timeout=nt, **opts)
    loop.run_until_complete(amgr.connect())
    base = _rss()
    _reset_peak()
    rec.sample_rss("start", base)
    rec.say(event="ready")
    rec.wait_for("go")
    bound = cfg["bound_ms"]
    t = _now()
    err = None
    lk = None
    try:
        lk = mgr.try_acquire("flood-b")
    except Exception as exc:
        err = repr(exc)[:200]
    rec.acquired("flood-b", t, lk, bound_ms=bound, error=err, api="blocking")

    async def one() -> Any:
        return await amgr.try_acquire("flood-a")

    t = _now()
    err = None
    lk = None
    try:
        lk = loop.run_until_complete(asyncio.wait_for(one(), 30))
    except Exception as exc:
        err = repr(exc)[:200]
    rec.acquired("flood-a", t, lk, bound_ms=bound, error=err, api="asyncio")
    rec.sample_rss("peak", _peak_rss())
    growth = _peak_rss() - base
    try:
        mgr.close()
        loop.run_until_complete(asyncio.wait_for(amgr.close(), 10))
    except Exception:
        pass
    loop.close()
    rec.say(event="done", growth_mib=round(growth / MIB, 1))


DRIVERS: Dict[str, Callable[[Dict[str, Any], Rec], None]] = {
    "fork": d_fork, "signals": d_signals, "cancel": d_cancel, "refused": d_refused,
    "stopped": d_stopped, "flood": d_flood,
}


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m quorumlock.chaos.client_faults DRIVER CONFIG.json``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in DRIVERS:
        sys.stderr.write(f"usage: python -m quorumlock.chaos.client_faults {{{','.join(DRIVERS)}}} CONFIG.json\n")
        return 2
    with open(argv[1]) as f:
        cfg = json.load(f)
    rec = Rec(cfg)
    rec.say(event="started", build=_build(), pid=os.getpid())
    try:
        DRIVERS[argv[0]](cfg, rec)
    finally:
        rec.close()
    return 0


# --------------------------------------------------------------------------
# the harness side
# --------------------------------------------------------------------------


def _builds() -> List[str]:
    want = [b.strip() for b in os.environ.get("QUORUMLOCK_CHAOS_BUILDS", "cython,python").split(",") if b.strip()]
    out = []
    for b in want:
        if b not in ("cython", "python"):
            raise ValueError(f"QUORUMLOCK_CHAOS_BUILDS: unknown build {b!r} (cython, python)")
        if b == "cython":
            try:
                from .. import _core  # noqa: F401
            except ImportError:
                continue
        out.append(b)
    return out


def _core_of(build: str) -> Any:
    if build == "cython":
        from .. import _core

        return _core
    from .. import _pycore

    return _pycore


class Driver:
    """One driver process (``python -m quorumlock.chaos.client_faults``)."""

    def __init__(self, env: Any, kind: str, name: str, build: str, cfg: Dict[str, Any]) -> None:
        self.env = env
        self.name = name
        self.cfg = dict(cfg, client=name, history=os.path.join(env.dir, f"history-{name}.jsonl"))
        path = os.path.join(env.dir, f"driver-{name}.json")
        with open(path, "w") as f:
            json.dump(self.cfg, f)
        penv = dict(os.environ)
        penv.pop("QUORUMLOCK_NO_EXTENSIONS", None)
        if build == "python":
            penv["QUORUMLOCK_NO_EXTENSIONS"] = "1"
        self.stderr_path = os.path.join(env.dir, f"driver-{name}.stderr")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "quorumlock.chaos.client_faults", kind, path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     text=True, bufsize=1, env=penv, start_new_session=True)
        self.lines: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self.parts = [self.cfg["history"]]
        threading.Thread(target=self._read, name=f"chaos-driver-{name}", daemon=True).start()
        got = self.expect("started")
        if got.get("build") != build:
            raise RuntimeError(f"driver {name}: wanted the {build} build, got {got.get('build')}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                try:
                    self.lines.put(json.loads(line))
                except json.JSONDecodeError:
                    self.lines.put({"event": "garbage", "line": line[:200]})
        self.lines.put({"event": "eof"})

    def _tail(self) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read()[-1500:].decode("utf-8", "replace")
        except OSError:
            return ""

    def expect(self, event: str, timeout: float = 60.0) -> Dict[str, Any]:
        from .harness import ScenarioError

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ScenarioError(f"driver {self.name}: no {event!r} within {timeout} s; stderr: {self._tail()}")
            try:
                msg = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if msg.get("event") == event:
                return msg
            if msg.get("event") in ("eof", "garbage"):
                raise ScenarioError(f"driver {self.name}: {msg} before {event!r}; stderr: {self._tail()}")

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd}) + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> None:
        """Wait for the process; merge its history files into the run's events."""
        from .history import read_history

        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.env.fault("client-killed", f"driver {self.name}", detail="did not exit in time")
        for p in self.parts:
            if os.path.exists(p):
                self.env.faults.extend(read_history(p))  # merged and sorted with the faults by Env.finish
        self.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        for s in (self.proc.stdin, self.proc.stdout):
            try:
                if s is not None:
                    s.close()
            except OSError:
                pass
        self._stderr.close()


def _bound(env: Any, name: str, **kw: Any) -> None:
    env.faults.append(dict({"type": "bound", "t": _now(), "name": name}, **kw))


def _watch_keys(env: Any, keys: List[str]) -> None:
    """Make the final snapshot read these lock keys too."""
    env.keys.extend(k for k in keys if k not in env.keys)


def _run_drivers(env: Any, kind: str, cfg_for: Callable[[str], Dict[str, Any]],
                 steer: Optional[Callable[[Driver, str], None]] = None) -> None:
    for build in _builds():
        d = Driver(env, kind, f"{kind}-{build}", build, cfg_for(build))
        try:
            if steer is not None:
                steer(d, build)
            done = d.expect("done", timeout=120)
            d.parts.extend(done.get("history_parts") or ())
            env.notes.append(f"{build}: " + ", ".join(f"{k} {v}" for k, v in done.items()
                                                    if k not in ("event", "history_parts")))
            d.finish()
        finally:
            d.close()


def s_fork_storm(env: Any, sc: Any, guard: bool) -> None:
    """Row 22: fork storm after connect.  B holds ``k0`` on every node (TTL
    30 s); a connected blocking manager forks 8 children that each try
    ``k0`` (must be refused) and a free key of their own (must be granted),
    for 1.5 s, while the parent keeps acquiring on the same connections.
    Violations: a child granted ``k0`` (an overlap with B: ME), a free-key
    acquire that failed or a child that never ended (STALL).

    First-round code: ME; compiled 1 of 4,868 ``k0`` attempts granted and
    309/4,868 fresh-key acquires refused, pure Python 1/3,065 and 260/3,065
    (under the quick matrix's load: STALL, 44/1,195 and 38/705 refused)."""
    from ..blocking import LockManager

    b = LockManager(env.cluster.urls, ttl=30.0, retry_count=1).connect()
    try:
        t = _now()
        lk = b.try_acquire("k0")
        if lk is None:
            from .harness import ScenarioError

            raise ScenarioError("B could not take k0")
        v = lk.validity
        tc = _now()
        env.faults.append({"type": "op", "id": "B:1", "client": "B", "op": "acquire", "key": "k0", "invoke": t,
                           "complete": tc, "ok": True, "token": lk.token.hex(), "validity": round(v, 6),
                           "valid_until": tc + int(v * S), "nodes": lk.nodes})
        _run_drivers(env, "fork", lambda build: {"urls": env.cluster.urls, "ttl": 1.0, "held": "k0",
                                                 "children": 8, "duration": 1.5, "node_timeout": 0.5})
        t = _now()
        ok = bool(lk.release())
        env.faults.append({"type": "op", "id": "B:2", "client": "B", "op": "release", "key": "k0", "invoke": t,
                           "complete": _now(), "ok": ok, "lock": "B:1", "token": lk.token.hex()})
    finally:
        b.close()


def s_signal_storm(env: Any, sc: Any, guard: bool) -> None:
    """Row 23: 300 timer-raised ``KeyboardInterrupt``s at random points
    inside ``with locks.lock(k): pass`` (TTL 30 s, a fresh key each time);
    then Ctrl-C 0.2 s into a blocking wait on two paused nodes
    (node_timeout 2 s).  Violations: a key left on a node at the end (LEAK),
    a block the timer did not interrupt failing (STALL), the interrupt
    surfacing more than 250 ms after it was raised (LATE).

    First-round code: LEAK; compiled 157/300 keys left, Ctrl-C surfaced
    after 1,801 ms; pure Python 10/300 left and 240 blocks refused after an
    interrupt desynchronised a connection."""
    count = 300

    def cfg(build: str) -> Dict[str, Any]:
        prefix = f"sig:{build}:"
        _watch_keys(env, [f"{prefix}{i}" for i in range(count)])
        if build == "cython":
            # The no-leftover guarantee is the compiled core's: its `with
            # locks.lock()` runs no signal handler between the grant and the
            # hand-over.  The pure-Python twin's __exit__ can be interrupted at
            # its first line (a few of 300 keys left, docs/engine.md); its
            # Ctrl-C latency and stalls are still checked.
            _bound(env, "no-leftover", prefix=prefix, client=f"signals-{build}")
        return {"urls": env.cluster.urls, "ttl": 30.0, "count": count, "prefix": prefix, "wait": 2.0,
                "strict": build == "cython",
                "wait_key": f"wait:{build}", "latency_ms": 250, "seed": sc.seed}

    def steer(d: Driver, build: str) -> None:
        d.expect("phase2")
        env.node_pause(1)
        env.node_pause(2)
        try:
            d.send("go")
            d.expect("waited", timeout=30)
        finally:
            env.node_resume(1)
            env.node_resume(2)
        d.send("close")

    _run_drivers(env, "signals", cfg, steer)


def s_cancel_storm(env: Any, sc: Any, guard: bool) -> None:
    """Row 24: 600 asyncio ``acquire``/``try_acquire`` calls of fresh keys
    (TTL 30 s) under ``asyncio.timeout`` drawn around the measured round
    trip (0.3-1.5x).  Violation: a key left on a node at the end (LEAK).

    First-round code: LEAK; compiled 382/600 keys left (410 cancelled), pure
    Python 323/600 (383 cancelled)."""
    count = 600

    def cfg(build: str) -> Dict[str, Any]:
        prefix = f"cx:{build}:"
        _watch_keys(env, [f"{prefix}{i}" for i in range(count)])
        _bound(env, "no-leftover", prefix=prefix, client=f"cancel-{build}")
        return {"urls": env.cluster.urls, "ttl": 30.0, "count": count, "prefix": prefix, "seed": sc.seed}

    _run_drivers(env, "cancel", cfg)


def _op(env: Any, **rec: Any) -> Dict[str, Any]:
    ev = dict({"type": "op"}, **{k: v for k, v in rec.items() if v is not None})
    env.faults.append(ev)
    return ev


def s_short_extend(env: Any, sc: Any, guard: bool) -> None:
    """Row 25: A holds ``x`` (TTL 3 s) on all three nodes; nodes 1 and 2 are
    paused; A's ``extend(ttl=0.3)`` fails; the nodes are resumed 0.5 s later
    and apply the short PEXPIRE; B polls and gets the key ~0.3 s after; A
    then checks ``lock.valid``.  The failed extend records the deadline A
    believes in afterwards (``valid_until``).  Violation: A's belief (or its
    valid check) overlapping B's hold (ME).

    First-round code, both builds: ME; ``LockNotOwned`` with 2.82 s of
    validity left after it, ``lock.valid`` True after B's grant."""
    from ..blocking import LockManager

    for build in _builds():
        core = _core_of(build)
        key = f"x:{build}"
        _watch_keys(env, [key])
        a = LockManager(env.cluster.urls, ttl=3.0, retry_count=1, node_timeout=0.15, _core=core).connect()
        b = LockManager(env.cluster.urls, ttl=1.0, retry_count=1, node_timeout=0.15, _core=core).connect()
        na, nb = f"A-{build}", f"B-{build}"
        try:
            t = _now()
            lk = a.try_acquire(key)
            tc = _now()
            if lk is None:
                from .harness import ScenarioError

                raise ScenarioError(f"A ({build}) could not take {key}")
            acq = _op(env, id=f"{na}:1", client=na, op="acquire", key=key, invoke=t, complete=tc, ok=True,
                      token=lk.token.hex(), validity=round(lk.validity, 6),
                      valid_until=tc + int(lk.validity * S), nodes=lk.nodes)
            env.node_pause(1)
            env.node_pause(2)
            t = _now()
            err = None
            ok = False
            try:
                ok = bool(lk.extend(0.3))
            except Exception as exc:
                err = f"{type(exc).__name__}"
            te = _now()
            v = lk.validity
            _op(env, id=f"{na}:2", client=na, op="extend", key=key, invoke=t, complete=te, ok=ok, lock=acq["id"],
                token=lk.token.hex(), error=err, ttl=0.3, validity=round(v, 6), valid_until=te + int(v * S))
            env.notes.append(f"{build}: A's extend(ttl=0.3) with two nodes paused: "
                             f"{'ok' if ok else err or 'False'}; validity after {v:.3f} s")
            time.sleep(max(0.0, 0.5 - (_now() - t) / S))
            env.node_resume(1)
            env.node_resume(2)
            until = _now() + 2 * S
            seq = 0
            got = None
            while _now() < until and got is None:
                seq += 1
                t = _now()
                got = b.try_acquire(key)
                if got is not None:
                    tc = _now()
                    _op(env, id=f"{nb}:{seq}", client=nb, op="acquire", key=key, invoke=t, complete=tc, ok=True,
                        token=got.token.hex(), validity=round(got.validity, 6),
                        valid_until=tc + int(got.validity * S), nodes=got.nodes)
                else:
                    time.sleep(0.005)
            t = _now()
            valid = bool(lk.valid)
            _op(env, id=f"{na}:3", client=na, op="check", key=key, invoke=t, complete=_now(), ok=valid,
                lock=acq["id"], validity=round(lk.validity, 6))
            env.notes.append(f"{build}: B {'acquired' if got is not None else 'never acquired'}; "
                             f"A's lock.valid afterwards: {valid}")
            if got is not None:
                t = _now()
                _op(env, id=f"{nb}:{seq + 1}", client=nb, op="release", key=key, invoke=t,
                    ok=bool(got.release()), complete=_now(), lock=f"{nb}:{seq}", token=got.token.hex())
            t = _now()
            try:
                rel = bool(lk.release())
            except Exception:
                rel = False
            _op(env, id=f"{na}:4", client=na, op="release", key=key, invoke=t, complete=_now(), ok=rel,
                lock=acq["id"], token=lk.token.hex())
        finally:
            for i in (1, 2):
                if env.cluster.nodes[i].paused:
                    env.node_resume(i)
            a.close()
            b.close()


def _servers_holding(env: Any, key: str, token: bytes, ports: List[int]) -> int:
    """How many of these (distinct, running, not paused) servers hold ``key`` = ``token``."""
    from .harness import _direct

    n = 0
    for i, p in enumerate(env.cluster.ports):
        if p not in ports or env.cluster.nodes[i].paused or not env.cluster.nodes[i].up:
            continue
        try:
            if _direct(p).get(key) == token:
                n += 1
        except Exception:
            pass
    return n


def s_duplicate_late(env: Any, sc: Any, guard: bool) -> None:
    """Row 26: A lists node 0 twice (``127.0.0.1`` and ``[::ffff:127.0.0.1]``)
    and node 1; node 0 is down at A's first connect and comes up 0.6 s
    later; A (restart guard off, so that node 0 counts at once) tries to
    acquire for up to 1.5 s; then node 1 is paused and A extends (the
    compare-and-pexpire succeeds on both spellings of node 0).  Each granted
    acquire or extend records how many distinct real servers hold A's token
    right after it (``servers``, node 1 not counted while paused) against
    the majority of A's list (``quorum``).  Violation: one real server counted twice (DUP).

    First-round code, both builds: DUP; the extend succeeded with one real
    server holding the token."""
    from ..blocking import LockManager

    p0, p1 = env.cluster.ports[0], env.cluster.ports[1]
    urls = [f"redis://127.0.0.1:{p0}", f"redis://[::ffff:127.0.0.1]:{p0}", f"redis://127.0.0.1:{p1}"]
    for build in _builds():
        core = _core_of(build)
        key = f"d:{build}"
        na = f"A-{build}"
        _watch_keys(env, [key])
        up = threading.Thread(target=env.cluster.restart, args=(0, 0.6), daemon=True)
        env.fault("node-crash", "node 0", restart_delay=0.6)
        up.start()
        deadline = time.monotonic() + 5
        while env.cluster.nodes[0].up and time.monotonic() < deadline:
            time.sleep(0.005)
        # No restart guard: it would exclude node 0 (restarted just now) for
        # a guard window, and the identity check is what this row is about.
        a = LockManager(urls, ttl=2.0, retry_count=1, node_timeout=0.2, restart_guard=False, _core=core)
        paused = False
        try:
            try:
                a.connect()
            except Exception as exc:
                env.notes.append(f"{build}: connect with node 0 down: {type(exc).__name__}: {exc}"[:200])
            up.join(15)
            env.fault("node-up", "node 0")
            until = time.monotonic() + 1.5
            seq = 0
            lk = None
            errors = set()
            while time.monotonic() < until and lk is None:
                seq += 1
                t = _now()
                try:
                    lk = a.try_acquire(key)
                except Exception as exc:
                    errors.add(type(exc).__name__)
                if lk is not None:
                    tc = _now()
                    _op(env, id=f"{na}:{seq}", client=na, op="acquire", key=key, invoke=t, complete=tc, ok=True,
                        token=lk.token.hex(), validity=round(lk.validity, 6), valid_until=tc + int(lk.validity * S),
                        nodes=lk.nodes, servers=_servers_holding(env, key, lk.token, [p0, p1]), quorum=2)
                else:
                    time.sleep(0.02)
            env.notes.append(f"{build}: A {'acquired' if lk is not None else 'was refused'} "
                             f"after {seq} attempt(s)" + (f"; errors {sorted(errors)}" if errors else ""))
            if lk is not None:
                env.node_pause(1)
                paused = True
                t = _now()
                ok = False
                try:
                    ok = bool(lk.extend())
                except Exception:
                    ok = False
                tc = _now()
                _op(env, id=f"{na}:{seq + 1}", client=na, op="extend", key=key, invoke=t, complete=tc, ok=ok,
                    lock=f"{na}:{seq}", token=lk.token.hex(), servers=_servers_holding(env, key, lk.token, [p0, p1]),
                    quorum=2, **({"validity": round(lk.validity, 6), "valid_until": tc + int(lk.validity * S)}
                                 if ok else {}))
                env.notes.append(f"{build}: A's extend with node 1 paused: {'ok' if ok else 'refused'}")
                env.node_resume(1)
                paused = False
                t = _now()
                try:
                    rel = bool(lk.release())
                except Exception:
                    rel = False
                _op(env, id=f"{na}:{seq + 2}", client=na, op="release", key=key, invoke=t, complete=_now(),
                    ok=rel, lock=f"{na}:{seq}", token=lk.token.hex())
        finally:
            if paused:
                env.node_resume(1)
            a.close()


def _free_ports(k: int) -> List[int]:
    socks = []
    try:
        for _ in range(k):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def s_majority_refused(env: Any, sc: Any, guard: bool) -> None:
    """Row 27: nodes 1 and 2 of the client's list are closed ports (connection
    refused); up to 100k blocking ``try_acquire`` calls (at most 2 s).
    Violation: the client's peak RSS more than 16 MiB above its start (MEM).

    First-round code: MEM; compiled +57 MiB over 100,000 attempts, pure
    Python +61 MiB over 56,800."""
    refused = _free_ports(2)

    def cfg(build: str) -> Dict[str, Any]:
        _bound(env, "rss-growth", client=f"refused-{build}", limit=16 * MIB)
        return {"urls": [env.cluster.urls[0]] + [f"redis://127.0.0.1:{p}" for p in refused], "ttl": 1.0,
                "count": 100_000, "max_seconds": 2.0}

    _run_drivers(env, "refused", cfg)


def s_stopped_node(env: Any, sc: Any, guard: bool) -> None:
    """Row 28: node 2 SIGSTOPped while 64 asyncio tasks acquire and release
    fresh keys for 1.5 s (TTL 30 s).  Violation: the client's peak RSS more
    than 16 MiB above its start (MEM).

    First-round code: MEM; compiled +89 MiB over 93,700 operations, pure
    Python +36 MiB over 27,600."""

    def cfg(build: str) -> Dict[str, Any]:
        _bound(env, "rss-growth", client=f"stopped-{build}", limit=16 * MIB)
        return {"urls": env.cluster.urls, "ttl": 30.0, "seconds": 1.5, "concurrency": 64}

    def steer(d: Driver, build: str) -> None:
        d.expect("ready")
        env.node_pause(2)
        try:
            d.send("go")
            d.lines.put(d.expect("done", timeout=60))  # read again by _run_drivers
        finally:
            env.node_resume(2)

    _run_drivers(env, "stopped", cfg, steer)


class FloodServer:
    """A TCP man-in-the-middle in front of one Redis node: it forwards both
    ways until :meth:`arm`; then it answers the next request on every
    connection with a bulk string header of ``size`` bytes and streams
    ``'x'`` at ``rate`` bytes/s (until ``size`` or the client goes away),
    and forwards nothing more."""

    def __init__(self, target_port: int, size: int = 96 * MIB, rate: float = 64 * MIB) -> None:
        self.target = target_port
        self.size = size
        self.rate = rate
        self.armed = threading.Event()
        self.closed = threading.Event()
        self.sent = 0
        self._socks: List[socket.socket] = []
        self._lock = threading.Lock()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, name="flood-accept", daemon=True).start()

    def arm(self) -> None:
        self.armed.set()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._socks.extend(socks)

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                c.close()
                continue
            c.settimeout(None)
            u.settimeout(None)
            self._track(c, u)
            flooding = threading.Event()
            threading.Thread(target=self._up, args=(c, u, flooding), daemon=True).start()
            threading.Thread(target=self._down, args=(u, c, flooding), daemon=True).start()

    def _up(self, c: socket.socket, u: socket.socket, flooding: threading.Event) -> None:
        try:
            while not self.closed.is_set():
                data = c.recv(65536)
                if not data:
                    return
                if self.armed.is_set() and not flooding.is_set():
                    flooding.set()
                    threading.Thread(target=self._flood, args=(c,), daemon=True).start()
                if not flooding.is_set():
                    u.sendall(data)
        except OSError:
            return

    def _down(self, u: socket.socket, c: socket.socket, flooding: threading.Event) -> None:
        try:
            while not self.closed.is_set():
                data = u.recv(65536)
                if not data:
                    return
                if not flooding.is_set():
                    c.sendall(data)
        except OSError:
            return

    def _flood(self, c: socket.socket) -> None:
        chunk = b"x" * 65536
        try:
            c.sendall(b"$%d\r\n" % self.size)
            t0 = time.monotonic()
            n = 0
            while n < self.size and not self.closed.is_set():
                c.sendall(chunk)
                n += len(chunk)
                with self._lock:
                    self.sent += len(chunk)
                ahead = n / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError:
            return

    def close(self) -> None:
        self.closed.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def s_oversized_reply(env: Any, sc: Any, guard: bool) -> None:
    """Row 29: nodes 1 and 2 answer the acquire with a 96 MiB bulk reply
    streamed at 64 MiB/s (:class:`FloodServer`); node_timeout 0.3 s.  One
    blocking and one asyncio ``try_acquire``.  Violations: an acquire that
    ends more than 850 ms after it began (LATE: the deadline is the node
    timeout; 0.85 s leaves room for a loaded machine), the client's peak RSS
    more than 32 MiB above its start (MEM).

    First-round code, both builds: MEM, +77 MiB; the deadline held (301 ms)
    at this rate."""
    floods: List[FloodServer] = []
    try:

        def cfg(build: str) -> Dict[str, Any]:
            for f in floods:
                f.close()
            floods[:] = [FloodServer(env.cluster.ports[1]), FloodServer(env.cluster.ports[2])]
            _bound(env, "rss-growth", client=f"flood-{build}", limit=32 * MIB)
            return {"urls": [env.cluster.urls[0], floods[0].url, floods[1].url], "ttl": 1.0,
                    "node_timeout": 0.3, "bound_ms": 850}

        def steer(d: Driver, build: str) -> None:
            d.expect("ready")
            for f in floods:
                f.arm()
            env.fault("reply-flood", "nodes 1, 2", size=floods[0].size, rate=floods[0].rate)
            d.send("go")
            d.lines.put(d.expect("done", timeout=90))  # read again by _run_drivers
            env.notes.append(f"{build}: {sum(f.sent for f in floods) // MIB} MiB streamed")

        _run_drivers(env, "flood", cfg, steer)
    finally:
        for f in floods:
            f.close()


# --------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------

#: fault name -> (function, help)
SPECS: Dict[str, Any] = {
    "fork-storm": (s_fork_storm, "row 22: a connected blocking manager forks workers that contend for a held key"),
    "signal-storm": (s_signal_storm, "row 23: KeyboardInterrupt storm inside `with locks.lock(k)`; Ctrl-C latency"),
    "cancel-storm": (s_cancel_storm, "row 24: asyncio.timeout about one round trip around acquire"),
    "short-extend": (s_short_extend, "row 25: a failed extend(ttl=shorter) with two nodes paused"),
    "duplicate-late": (s_duplicate_late, "row 26: one server listed twice, down at the first connect"),
    "majority-refused": (s_majority_refused, "row 27: a majority refusing connections, 100k blocking attempts"),
    "stopped-node": (s_stopped_node, "row 28: one node SIGSTOPped under asyncio load"),
    "oversized-reply": (s_oversized_reply, "row 29: two nodes stream a huge bulk reply"),
}


def register(faults: Dict[str, Any]) -> None:
    """Add these scenarios to ``quorumlock.chaos.scenarios.FAULTS`` (kind
    ``client``: the scenario function drives everything and returns no label;
    the checker's report decides)."""
    from .scenarios import FaultSpec

    for name, (fn, help_) in SPECS.items():
        faults.setdefault(name, FaultSpec("client", fn, help_))


if __name__ == "__main__":
    sys.exit(main())
