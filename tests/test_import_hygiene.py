"""The library core never imports the command-line tooling.

``quorumlock.bench``, ``quorumlock.chaos``, ``quorumlock.nodes``,
``quorumlock.cli`` and ``quorumlock.demo`` start servers, plot, and pull in
their own dependencies; an application that takes a lock must not load them.
Each library module is imported alone in a fresh interpreter (so that no
earlier import hides what it pulls in), on both engine builds, and the
tooling modules that appeared in ``sys.modules`` are reported."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from typing import Dict, List

import pytest

import quorumlock

TOOLING = ("quorumlock.bench", "quorumlock.chaos", "quorumlock.nodes", "quorumlock.cli", "quorumlock.demo")

# Library modules that import tooling today, each with the reason it is
# tolerated for now.  Empty: nothing in the core does.
KNOWN_EXCEPTIONS: Dict[str, str] = {}

_SRC = os.path.dirname(os.path.dirname(os.path.abspath(quorumlock.__file__)))

_PROBE = r"""
import json, sys
name, tooling = sys.argv[1], tuple(sys.argv[2].split(","))
try:
    __import__(name)
except ImportError as exc:  # an optional integration whose package is absent
    print(json.dumps({"missing": str(exc)}))
else:
    import quorumlock
    print(json.dumps({"implementation": quorumlock.IMPLEMENTATION,
                      "tooling": sorted(m for m in sys.modules
                                        if any(m == t or m.startswith(t + ".") for t in tooling))}))
"""


def _is_tooling(name: str) -> bool:
    return any(name == t or name.startswith(t + ".") for t in TOOLING)


def _library_modules() -> List[str]:
    """The package's modules outside the tooling, with every compat and integration submodule."""
    names = ["quorumlock"]
    for info in pkgutil.iter_modules(quorumlock.__path__, "quorumlock."):
        if _is_tooling(info.name) or info.name == "quorumlock.__main__":
            continue
        names.append(info.name)
        if info.name in ("quorumlock.compat", "quorumlock.integrations", "quorumlock.leases"):
            path = [os.path.join(os.path.dirname(quorumlock.__file__), info.name.rsplit(".", 1)[1])]
            names += [sub.name for sub in pkgutil.iter_modules(path, info.name + ".")]
    return names


def _imports(name: str, no_extensions: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p))
    env["QUORUMLOCK_NO_EXTENSIONS"] = "1" if no_extensions else "0"
    out = subprocess.run([sys.executable, "-c", _PROBE, name, ",".join(TOOLING)], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_the_list_covers_the_brief() -> None:
    mods = set(_library_modules())
    for name in ("quorumlock", "quorumlock.aio", "quorumlock.blocking", "quorumlock.fencing",
                 "quorumlock.semaphore", "quorumlock.rwlock", "quorumlock.leases", "quorumlock.jobs",
                 "quorumlock.leader", "quorumlock.compat.redis_py", "quorumlock.compat.pottery",
                 "quorumlock.integrations.celery", "quorumlock.integrations.rq"):  # fmt: skip
        assert name in mods
    assert not any(_is_tooling(m) for m in mods)


@pytest.mark.parametrize("no_extensions", [False, True], ids=["compiled", "pure"])
@pytest.mark.parametrize("name", _library_modules())
def test_library_module_does_not_import_the_tooling(name: str, no_extensions: bool) -> None:
    res = _imports(name, no_extensions)
    if "missing" in res:
        pytest.skip(f"{name}: optional dependency absent ({res['missing']})")
    if no_extensions:
        assert res["implementation"] == "python"
    if name in KNOWN_EXCEPTIONS:
        pytest.xfail(KNOWN_EXCEPTIONS[name])
    assert res["tooling"] == [], f"importing {name} loaded {res['tooling']}"


def test_the_probe_sees_tooling_imports() -> None:
    """Negative control: the demo does import the node tooling, and the probe reports it."""
    res = _imports("quorumlock.demo", no_extensions=True)
    assert "quorumlock.nodes" in res["tooling"] and "quorumlock.demo" in res["tooling"]
