"""The typed public surface: ``mypy --strict`` and ``pyright`` (strict) accept
examples/typing_check.py and reject a copy with typos; the stubs match the
run-time modules (``mypy.stubtest``); run-time errors and signatures name the
public classes.

The checkers see quorumlock through ``src/`` of this checkout (``MYPYPATH``,
pyright's ``extraPaths``), as a user's checker sees the installed package:
the package's own modules are followed silently, only the script is checked.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import quorumlock
import quorumlock.aio
from quorumlock import _backend

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
EXAMPLE = ROOT / "examples" / "typing_check.py"

#: (text in the example, replacement): each must be reported by both checkers.
TYPOS: List[Tuple[str, str]] = [
    ("validity: float = lock.validity\n        token: bytes = lock.token\n        fence",
     "validity: float = lock.validty\n        token: bytes = lock.token\n        fence"),
    ("released: bool = lock.release()", "released: bool = lock.relase()"),
    ("validity: float = lock.validity\n        token: bytes = lock.token\n        assert len",
     "validity: float = lock.validty\n        token: bytes = lock.token\n        assert len"),
    ("released: bool = await lock.release()", "released: bool = await lock.relase()"),
]


def _scripts(tmp_path: Path) -> Tuple[Path, Path, Dict[int, str]]:
    """The example, and its copy with TYPOS: ``{line: misspelt name}``."""
    text = EXAMPLE.read_text()
    ok = tmp_path / "typing_ok.py"
    ok.write_text(text)
    bad_text = text
    for old, new in TYPOS:
        assert bad_text.count(old) == 1, f"examples/typing_check.py no longer contains {old!r}"
        bad_text = bad_text.replace(old, new)
    bad = tmp_path / "typing_typos.py"
    bad.write_text(bad_text)
    expected = {}
    for n, line in enumerate(bad_text.splitlines(), 1):
        m = re.search(r"lock\.(validty|relase)\b", line)
        if m:
            expected[n] = m.group(1)
    assert len(expected) == 4
    return ok, bad, expected


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["MYPYPATH"] = str(SRC)
    env.pop("PYTHONPATH", None)
    return env


def test_mypy_strict_accepts_the_example_and_flags_typos(tmp_path: Path) -> None:
    """First-round code (``MYPYPATH=/work/main/src``): the example did not even
    import (no ``quorumlock.Lock``, no ``Health``), and with those names taken
    out, ``lock.validty`` / ``lock.relase()`` passed ``mypy --strict`` (0 of 4
    typos reported: ``try_acquire`` was ``Any | None``).  Now: the example has
    no error and each of the 4 typos is reported on its line."""
    pytest.importorskip("mypy")
    ok, bad, expected = _scripts(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
         "--cache-dir", os.devnull, "--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}",
         "--no-error-summary", str(ok), str(bad)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    out = proc.stdout + proc.stderr
    ok_errors = [line for line in out.splitlines() if line.startswith(str(ok))]
    assert ok_errors == [], out
    other = [line for line in out.splitlines() if line and not line.startswith(str(bad))]
    assert other == [], f"mypy reported problems outside the scripts (the stubs?):\n{out}"
    flagged = {}
    for line in out.splitlines():
        m = re.match(re.escape(str(bad)) + r":(\d+): error: .*\"(validty|relase)\"", line)
        if m:
            flagged[int(m.group(1))] = m.group(2)
    assert flagged == expected, out
    assert proc.returncode == 1


def _pyright() -> List[str]:
    exe = shutil.which("pyright")
    cmd = [exe] if exe else [sys.executable, "-m", "pyright"]
    try:
        probe = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"pyright cannot run here: {exc!r}")
    if probe.returncode != 0:
        pytest.skip(f"pyright cannot run here (it needs node): {probe.stderr.strip()[:300]}")
    return cmd


def test_pyright_strict_accepts_the_example_and_flags_typos(tmp_path: Path) -> None:
    """First-round code: pyright (strict) reported none of the 4 typos (the
    lock was untyped; only unused-variable notes); now the example is clean
    and each typo is an unknown attribute of ``Lock`` on its line."""
    cmd = _pyright()
    ok, bad, expected = _scripts(tmp_path)
    (tmp_path / "pyrightconfig.json").write_text(json.dumps({
        "typeCheckingMode": "strict",
        "extraPaths": [str(SRC)],
        "pythonVersion": f"{sys.version_info[0]}.{sys.version_info[1]}",
    }))
    proc = subprocess.run(cmd + ["--outputjson", "-p", str(tmp_path / "pyrightconfig.json"), str(ok), str(bad)],
                          capture_output=True, text=True, env=_env(), timeout=300, cwd=tmp_path)
    report = json.loads(proc.stdout)
    diags = report["generalDiagnostics"]
    ok_diags = [d for d in diags if Path(d["file"]).name == ok.name]
    assert ok_diags == [], ok_diags
    flagged = {}
    for d in diags:
        if Path(d["file"]).name != bad.name or d["severity"] != "error":
            continue
        m = re.search(r'Cannot access attribute "(validty|relase)" for class "Lock"', d["message"])
        if m:
            flagged[d["range"]["start"]["line"] + 1] = m.group(1)
    assert flagged == expected, diags


#: Deliberate differences between the stubs and the run-time classes: each
#: face's Lock type leaves out the other face's context-manager protocol (so
#: ``with`` on an asyncio lock is a type error, as it is an error at run time).
STUBTEST_ALLOWLIST = r"""
quorumlock\.(aio|blocking)\.Lock$
quorumlock\.aio\.Lock\.__(enter|exit)__
quorumlock\.blocking\.Lock\.__a(enter|exit)__
"""


def test_stubs_match_the_runtime_modules(tmp_path: Path) -> None:
    """``mypy.stubtest`` on aio.pyi, blocking.pyi and _manager.pyi: a method or
    option added to a LockManager (or removed) without its stub fails here.
    Checked by deleting ``health`` from blocking.pyi: stubtest reported
    "quorumlock.blocking.LockManager.health is not present in stub"."""
    pytest.importorskip("mypy")
    allow = tmp_path / "allowlist.txt"
    allow.write_text(STUBTEST_ALLOWLIST)
    env = _env()
    env["PYTHONPATH"] = str(SRC)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "quorumlock.aio", "quorumlock.blocking", "quorumlock._manager",
         "--mypy-config-file", os.devnull, "--allowlist", str(allow), "--ignore-unused-allowlist"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lock_types_are_exported() -> None:
    """First-round code: ``quorumlock.Lock`` did not exist (AttributeError)."""
    assert quorumlock.Lock is _backend.core.Lock
    assert quorumlock.aio.Lock is _backend.core.Lock
    assert "Lock" in quorumlock.__all__ and "Lock" in quorumlock.aio.__all__
    for name in ("Health", "NodeHealth"):
        assert name in quorumlock.__all__ and hasattr(quorumlock, name)


def test_stubs_ship_as_package_data() -> None:
    """Every stub next to the package is matched by pyproject's package-data
    (a stub left out of the wheel would silently turn its module to ``Any``)."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'^\[tool\.setuptools\.package-data\]\s*\nquorumlock = \[(.*?)\]', text, re.M | re.S)
    assert m, "no package-data for quorumlock in pyproject.toml"
    patterns = re.findall(r'"([^"]+)"', m.group(1))
    assert "*.pyi" in patterns and "py.typed" in patterns
    stubs = sorted(p.name for p in (SRC / "quorumlock").glob("*.pyi"))
    assert {"aio.pyi", "blocking.pyi", "_manager.pyi", "_core.pyi"} <= set(stubs)


@pytest.mark.parametrize("cls", [quorumlock.LockManager, quorumlock.aio.LockManager],
                         ids=["blocking", "asyncio"])
def test_errors_and_signature_name_the_public_class(cls: type) -> None:
    """First-round code: "ManagerBase.__init__() got an unexpected keyword
    argument 'tl'", and ``inspect.signature`` listed ``_core`` and showed
    ``nodes: Sequence[Any]``, ``restart_guard: Any``."""
    with pytest.raises(TypeError) as exc:
        cls(["redis://127.0.0.1:1"], tl=5)
    msg = str(exc.value)
    if sys.version_info >= (3, 10):
        assert msg.startswith("LockManager.__init__() got an unexpected keyword argument 'tl'"), msg
    assert "ManagerBase" not in msg
    with pytest.raises(TypeError) as exc:
        cls()
    assert "ManagerBase" not in str(exc.value)
    params = inspect.signature(cls).parameters
    assert "_core" not in params and "ttl" in params and "nodes" in params
    loose = [f"{p.name}: {p.annotation}" for p in params.values() if "Any" in str(p.annotation)]
    assert loose == [], loose
    # The private engine choice still works (the tests use it).
    mgr = cls(["redis://127.0.0.1:1"], _core=_backend.core)
    assert mgr.n == 1
