"""Clocks for the safety checker: the host clock every history timestamp comes
from, and the wall-clock faults injected into lock nodes.

* :func:`host_monotonic_ns`: ``CLOCK_MONOTONIC`` read with a raw
  ``syscall(SYS_clock_gettime)`` through ctypes.  libfaketime replaces the libc
  symbols (``clock_gettime``, ``time.monotonic`` goes through them), not the
  system call, so a client process run under ``faketime`` still stamps its
  history with the one clock the whole host shares (docs/faults.md, how the faults are made, caveat).
* :func:`build_shim`: compiles ``csrc/ql_clockshim.c`` with the system ``cc``
  (once per source version, cached).
* :class:`ClockControl`: the 32-byte control file the shim maps; ``jump()``
  and ``set_rate()`` change a running server's wall clock.
* :func:`shim_server`: a tiny wrapper executable that runs the real server
  under the shim, usable as ``LocalCluster(server=...)``; each node then reads
  ``ql_clock.ctl`` in its own directory (:func:`node_control`).
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from typing import Optional

__all__ = [
    "CONTROL_NAME",
    "ClockControl",
    "build_shim",
    "host_monotonic_ns",
    "node_control",
    "shim_server",
    "shim_source",
]

#: Name of the control file in each node's working directory.
CONTROL_NAME = "ql_clock.ctl"

# struct ql_clock_ctl: u64 seq, i64 anchor_ns, i64 offset_ns, double rate.
_CTL = struct.Struct("<Qqqd")
assert _CTL.size == 32

# --------------------------------------------------------------------------
# the host clock
# --------------------------------------------------------------------------

_SYS_CLOCK_GETTIME = {"x86_64": 228, "amd64": 228, "aarch64": 113, "arm64": 113}
_CLOCK_MONOTONIC = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _make_host_clock():
    nr = _SYS_CLOCK_GETTIME.get(platform.machine().lower())
    if nr is None:  # pragma: no cover - other architectures: the libc clock
        return time.monotonic_ns
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):  # pragma: no cover
        return time.monotonic_ns
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.POINTER(_Timespec)]
    ts = _Timespec()
    lock = threading.Lock()
    pts = ctypes.pointer(ts)

    def host_monotonic_ns() -> int:
        with lock:
            if syscall(nr, _CLOCK_MONOTONIC, pts) != 0:  # pragma: no cover
                raise OSError(ctypes.get_errno(), "clock_gettime(CLOCK_MONOTONIC) failed")
            return ts.tv_sec * 1_000_000_000 + ts.tv_nsec

    return host_monotonic_ns


#: CLOCK_MONOTONIC in ns, from the kernel (not from libc: see the module docstring).
host_monotonic_ns = _make_host_clock()


# --------------------------------------------------------------------------
# the shim
# --------------------------------------------------------------------------


def shim_source() -> Optional[str]:
    """Path of the shim's C source (in the package, or ``csrc/`` of a source
    tree), or None."""
    env = os.environ.get("QUORUMLOCK_CLOCKSHIM_SRC")
    if env:
        return env if os.path.isfile(env) else None
    here = os.path.dirname(os.path.abspath(__file__))
    shipped = os.path.join(here, "ql_clockshim.c")  # wheels: copied in by setup.py
    if os.path.isfile(shipped):
        return shipped
    for up in (3, 2, 4):
        cand = os.path.normpath(os.path.join(here, *[".."] * up, "csrc", "ql_clockshim.c"))
        if os.path.isfile(cand):
            return cand
    return None


_BUILD_LOCK = threading.Lock()


def build_shim(cache_dir: Optional[str] = None) -> str:
    """Compile the shim with the system ``cc``; return the ``.so`` path.

    The result is cached by the hash of the source, so repeated runs compile
    once.  Raises ``RuntimeError`` with the reason when it cannot be built (no
    source tree, no compiler, a compile error)."""
    src = shim_source()
    if src is None:
        raise RuntimeError("csrc/ql_clockshim.c not found (the clock faults need the source tree, "
                           "or QUORUMLOCK_CLOCKSHIM_SRC)")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc) on PATH: the clock shim is built at run time")
    with open(src, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()[:12]
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), f"quorumlock-clockshim-{os.getuid()}")
    os.makedirs(cache_dir, exist_ok=True)
    out = os.path.join(cache_dir, f"ql_clockshim-{digest}.so")
    with _BUILD_LOCK:
        if os.path.isfile(out):
            return out
        tmp = f"{out}.{os.getpid()}.tmp"
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-Wall", "-o", tmp, src],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"building the clock shim failed ({cc}):\n{proc.stderr[-2000:]}")
        os.replace(tmp, out)  # atomic: a concurrent run sees the whole file or none
    return out


def shim_server(server: str, directory: str, shim: Optional[str] = None) -> str:
    """Write an executable wrapper that ``exec``s ``server`` under the shim.

    ``exec`` keeps the pid, so SIGKILL/SIGSTOP from the cluster reach the
    server itself.  The wrapper sets ``QL_CLOCKSHIM_FILE`` to a relative name:
    each node of a LocalCluster runs in its own directory and so reads its own
    control file (:func:`node_control`)."""
    shim = shim or build_shim()
    path = os.path.join(directory, "redis-server-clockshim")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n"
                f"LD_PRELOAD={_sh(shim)} QL_CLOCKSHIM_FILE={CONTROL_NAME} exec {_sh(server)} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def _sh(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


class ClockControl:
    """The control file of one shimmed process.

    ``jump(seconds)`` steps its wall clock (forward or back); ``set_rate(r)``
    makes it run ``r`` times as fast as the real one from now on, without a
    step.  ``offset`` and ``rate`` report the current setting."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < _CTL.size:
                os.ftruncate(fd, _CTL.size)
            self._map = mmap.mmap(fd, _CTL.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._lock = threading.Lock()
        seq, anchor, offset, rate = _CTL.unpack_from(self._map, 0)
        if not rate > 0:
            self._write(0, 0, 1.0)

    def _read(self):
        seq, anchor, offset, rate = _CTL.unpack_from(self._map, 0)
        return seq, anchor, offset, rate

    def _write(self, anchor: int, offset: int, rate: float) -> None:
        seq = struct.unpack_from("<Q", self._map, 0)[0]
        seq = (seq | 1) if seq % 2 == 0 else seq + 2  # odd: writing
        struct.pack_into("<Q", self._map, 0, seq)
        struct.pack_into("<qqd", self._map, 8, int(anchor), int(offset), float(rate))
        struct.pack_into("<Q", self._map, 0, seq + 1)  # even: done

    @staticmethod
    def _real_ns() -> int:
        return time.clock_gettime_ns(time.CLOCK_REALTIME)

    def fake_ns(self, real_ns: Optional[int] = None) -> int:
        """The shimmed process's wall clock now (or at ``real_ns``)."""
        real = self._real_ns() if real_ns is None else real_ns
        _, anchor, offset, rate = self._read()
        if rate == 1.0:
            return real + offset
        return anchor + int((real - anchor) * rate) + offset

    @property
    def rate(self) -> float:
        return self._read()[3]

    @property
    def offset(self) -> float:
        """Seconds the fake clock is ahead of the real one now."""
        return (self.fake_ns() - self._real_ns()) / 1e9

    def jump(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (negative: backwards)."""
        with self._lock:
            _, anchor, offset, rate = self._read()
            self._write(anchor, offset + int(round(seconds * 1e9)), rate)

    def set_rate(self, rate: float) -> None:
        """Run the wall clock ``rate`` times real speed from now on (no step)."""
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        with self._lock:
            real = self._real_ns()
            fake = self.fake_ns(real)
            self._write(real, fake - real, rate)

    def reset(self) -> None:
        with self._lock:
            self._write(0, 0, 1.0)

    def close(self) -> None:
        try:
            self._map.close()
        except (ValueError, BufferError):  # pragma: no cover
            pass

    def __repr__(self) -> str:
        return f"<ClockControl {self.path} offset={self.offset:+.3f}s rate={self.rate:g}>"


def node_control(node_dir: str) -> ClockControl:
    """The control file of the node that runs in ``node_dir`` (created if needed)."""
    return ClockControl(os.path.join(node_dir, CONTROL_NAME))
