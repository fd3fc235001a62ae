"""PostgreSQL session advisory locks: what many users pick instead of Redlock.

The bench starts a throwaway PostgreSQL cluster of its own (``initdb`` +
``pg_ctl`` from ``/usr/lib/postgresql/*/bin`` or ``PATH``) on a free loopback
port, with its unix socket directory under the bench's base directory, one
per node mode, and removes it at the end of the run (and at interpreter exit,
should the run die first).  Its durability follows the mode's spirit:

===========  ==============================================================
mode         PostgreSQL settings
===========  ==============================================================
volatile     ``fsync=off``, ``synchronous_commit=off``, ``full_page_writes=off``
unsafe       as volatile
everysec     ``fsync=on``, ``synchronous_commit=off`` (WAL flushed by the
             WAL writer, about every ``wal_writer_delay``)
fsync        ``fsync=on``, ``synchronous_commit=on``
===========  ==============================================================

Session advisory locks write no WAL (``pg_try_advisory_lock`` in autocommit
assigns no transaction id), so the mode hardly changes their rate; the row is
there to be read next to quorumlock's rows of the same mode.

A cycle is the bench's cycle: ``SELECT pg_try_advisory_lock(k)`` and, when it
returned true, ``SELECT pg_advisory_unlock(k)``; psycopg 3, autocommit, one
connection per thread, each thread its own key (no contention), over TCP
loopback like the Redis nodes.

When psycopg, the binaries, or (as root) a ``postgres`` user to run them as
is missing, the rows are skipped with a note saying which.
"""

from __future__ import annotations

import atexit
import glob
import importlib.metadata
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional

from .workloads import Context, Measurement, Workload, cycle_threads, register

__all__ = ["PostgresServer", "find_bindir", "server_for", "stop_all"]

#: The settings of each node mode (see the module docstring).
MODE_SETTINGS: Dict[str, Dict[str, str]] = {
    "volatile": {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    "unsafe": {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
    "everysec": {"fsync": "on", "synchronous_commit": "off", "full_page_writes": "on"},
    "fsync": {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"},
}


def find_bindir() -> Optional[str]:
    """The directory of ``initdb`` and ``pg_ctl``: the one on ``PATH`` first,
    else the newest ``/usr/lib/postgresql/<version>/bin``; None if neither."""
    found = shutil.which("initdb")
    if found and os.path.exists(os.path.join(os.path.dirname(os.path.realpath(found)), "pg_ctl")):
        return os.path.dirname(os.path.realpath(found))

    def version(d: str) -> float:
        try:
            return float(d.rstrip("/").split("/")[-2])
        except ValueError:
            return -1.0

    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.path.exists(os.path.join(d, "initdb")) and os.path.exists(os.path.join(d, "pg_ctl")):
            return d
    return None


def _run_as() -> List[str]:
    """Command prefix to run the server as a non-root user ([] when not root).

    Raises RuntimeError when root and there is no ``postgres`` user or no
    ``runuser`` (PostgreSQL refuses to run as root)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    try:
        import pwd

        pwd.getpwnam("postgres")
    except (ImportError, KeyError):
        runuser = None
    if runuser is None:
        raise RuntimeError("running as root and there is no 'postgres' user (or no runuser) to start PostgreSQL as")
    return [runuser, "-u", "postgres", "--"]


def _free_port() -> int:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
    finally:
        s.close()


def skip_reason() -> Optional[str]:
    """Why the PostgreSQL rows cannot run here, or None."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg (3) is not installed (pip install 'psycopg[binary]'): skipped"
    if find_bindir() is None:
        return "no PostgreSQL binaries (initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin): skipped"
    try:
        _run_as()
    except RuntimeError as exc:
        return f"{exc}: skipped"
    return None


class PostgresServer:
    """One throwaway PostgreSQL cluster (``initdb`` into a fresh directory,
    ``pg_ctl start`` on a free loopback port); :meth:`stop` removes it all."""

    def __init__(self, mode: str = "volatile", base_dir: Optional[str] = None, bindir: Optional[str] = None) -> None:
        if mode not in MODE_SETTINGS:
            raise ValueError(f"mode must be one of {', '.join(MODE_SETTINGS)}, got {mode!r}")
        self.mode = mode
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise RuntimeError("no PostgreSQL binaries (initdb/pg_ctl) found")
        self._prefix = _run_as()
        if base_dir is not None:
            os.makedirs(base_dir, exist_ok=True)
        self.dir = self._make_dir(base_dir)
        self.data = os.path.join(self.dir, "data")
        self.host = "127.0.0.1"
        self.port = 0
        self._started = False
        try:
            self._start()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _make_dir(self, base_dir: Optional[str]) -> str:
        """A fresh directory for the cluster, under ``base_dir`` when the
        server's user can reach it.  As root the server runs as ``postgres``,
        which cannot enter a private (0700) parent such as pytest's tmp dirs:
        then the directory goes under the system temp dir instead."""
        d = tempfile.mkdtemp(prefix="ql-bench-pg-", dir=base_dir)
        if not self._prefix:
            return d
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(d, pw.pw_uid, pw.pw_gid)
        if base_dir is None or self._reachable(d):
            return d
        shutil.rmtree(d, ignore_errors=True)
        d = tempfile.mkdtemp(prefix="ql-bench-pg-")
        os.chown(d, pw.pw_uid, pw.pw_gid)
        return d

    def _reachable(self, d: str) -> bool:
        try:
            r = subprocess.run(self._prefix + ["test", "-w", d, "-a", "-x", d], capture_output=True, timeout=10,
                               stdin=subprocess.DEVNULL, check=False)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return False
        return r.returncode == 0

    def _pg(self, *args: str, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
        assert self.bindir is not None
        return subprocess.run(self._prefix + [os.path.join(self.bindir, args[0]), *args[1:]], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)  # fmt: skip

    def _start(self) -> None:
        r = self._pg("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()[-500:]}")
        self.port = _free_port()
        settings = dict(MODE_SETTINGS[self.mode], listen_addresses=self.host, max_connections="100")
        opts = f"-p {self.port} -k {self.dir} " + " ".join(f"-c {k}={v}" for k, v in settings.items())
        log = os.path.join(self.dir, "log")
        r = self._pg("pg_ctl", "-D", self.data, "-o", opts, "-l", log, "-w", "-t", "30", "start")
        if r.returncode != 0:
            tail = ""
            try:
                with open(log, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-800:]
            except OSError:
                pass
            raise RuntimeError(f"pg_ctl start failed: {r.stdout.strip()} {r.stderr.strip()} {tail}".strip())
        self._started = True

    @property
    def conninfo(self) -> Dict[str, Any]:
        """Keyword arguments of ``psycopg.connect``."""
        return {"host": self.host, "port": self.port, "user": "postgres", "dbname": "postgres"}

    def version(self) -> Optional[str]:
        assert self.bindir is not None
        try:
            out = subprocess.run([os.path.join(self.bindir, "postgres"), "--version"], capture_output=True,
                                 text=True, timeout=10, check=False).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return out.strip() or None

    def stop(self) -> None:
        """Stop the server (immediate) and remove its directory; idempotent."""
        if self._started:
            self._started = False
            try:
                self._pg("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", timeout=30)
            except (OSError, subprocess.SubprocessError):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


_servers: Dict[str, PostgresServer] = {}
_lock = threading.Lock()


def server_for(mode: str, base_dir: Optional[str] = None) -> PostgresServer:
    """The run's server of ``mode`` (started on first use, kept until
    :func:`stop_all`): the rows of every N of one mode share it."""
    with _lock:
        s = _servers.get(mode)
        if s is None:
            s = _servers[mode] = PostgresServer(mode, base_dir=base_dir)
        return s


def stop_all() -> None:
    """Stop and remove every server :func:`server_for` started."""
    with _lock:
        servers = list(_servers.values())
        _servers.clear()
    for s in servers:
        s.stop()


atexit.register(stop_all)


def _advisory(threads: int) -> Callable[[Context], Measurement]:
    def run(ctx: Context) -> Measurement:
        import psycopg

        srv = server_for(ctx.mode, ctx.base_dir)
        conns = [psycopg.connect(**srv.conninfo, autocommit=True) for _ in range(threads)]
        try:
            # A distinct 64-bit key per thread and per row (no contention).
            base = (abs(hash(ctx.key_prefix)) % (1 << 40)) << 8

            def pair(i: int, conn: Any) -> Any:
                cur = conn.cursor()
                key = base + i
                ex = cur.execute
                lock_q = "SELECT pg_try_advisory_lock(%s)"
                unlock_q = "SELECT pg_advisory_unlock(%s)"
                args = (key,)

                def acq() -> bool:
                    return bool(ex(lock_q, args, prepare=True).fetchone()[0])

                def rel(_h: Any) -> bool:
                    return bool(ex(unlock_q, args, prepare=True).fetchone()[0])

                return acq, rel

            m = cycle_threads(ctx, [pair(i, c) for i, c in enumerate(conns)])
            with conns[0].cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                row = cur.fetchone()
                m.extra["advisory_locks_left"] = int(row[0]) if row else None
            m.extra["server"] = srv.version()
            m.extra["settings"] = dict(MODE_SETTINGS[ctx.mode])
            return m
        finally:
            for c in conns:
                c.close()

    return run


def _version() -> Optional[str]:
    try:
        return "psycopg " + importlib.metadata.version("psycopg")
    except importlib.metadata.PackageNotFoundError:
        return None


def _pg(name: str, threads: int, quick: bool, description: str) -> Workload:
    return register(Workload(library="postgresql.advisory", name=name, api="blocking", run=_advisory(threads),
                             concurrency=threads, external=True, quick=quick, description=description,
                             requires=skip_reason, version=_version))  # fmt: skip


PG_WORKLOADS: List[Workload] = [
    _pg("blocking-seq", 1, True, "pg_try_advisory_lock + pg_advisory_unlock, one thread, own PostgreSQL server"),
    _pg("blocking-t8", 8, True, "as blocking-seq, 8 threads, one connection each"),
]
