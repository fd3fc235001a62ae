"""The library core never imports the command-line tooling.

``quorumlock.bench``, ``quorumlock.chaos``, ``quorumlock.nodes``,
``quorumlock.cli`` and ``quorumlock.demo`` start servers, plot, and pull in
their own dependencies; an application that takes a lock must not load them.
Every library module is imported in turn in one fresh interpreter per engine
build, and ``sys.modules`` is looked at after each import: the first module
that pulls in any tooling is named (an earlier import cannot hide a later
one's, because a clean run has loaded no tooling at all; when one module
fails, the ones after it are not judged, which is enough to fail)."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from typing import Dict, List

import pytest

import quorumlock

TOOLING = ("quorumlock.bench", "quorumlock.chaos", "quorumlock.nodes", "quorumlock.clusters", "quorumlock.cli", "quorumlock.demo")

# Library modules that import tooling today, each with the reason it is
# tolerated for now.  Empty: nothing in the core does.
KNOWN_EXCEPTIONS: Dict[str, str] = {}

_SRC = os.path.dirname(os.path.dirname(os.path.abspath(quorumlock.__file__)))

_PROBE = r"""
import json, sys
names, tooling = sys.argv[1].split(","), tuple(sys.argv[2].split(","))
report = {}
for name in names:
    try:
        __import__(name)
    except ImportError as exc:  # an optional integration whose package is absent
        report[name] = {"missing": str(exc)}
        continue
    report[name] = {"tooling": sorted(m for m in sys.modules
                                      if any(m == t or m.startswith(t + ".") for t in tooling))}
import quorumlock
print(json.dumps({"implementation": quorumlock.IMPLEMENTATION, "modules": report}))
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


def _imports(names: List[str], no_extensions: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH")) if p))
    env["QUORUMLOCK_NO_EXTENSIONS"] = "1" if no_extensions else "0"
    out = subprocess.run([sys.executable, "-c", _PROBE, ",".join(names), ",".join(TOOLING)], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
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
def test_library_modules_do_not_import_the_tooling(no_extensions: bool) -> None:
    names = _library_modules()
    res = _imports(names, no_extensions)
    if no_extensions:
        assert res["implementation"] == "python"
    imported = [n for n in names if "missing" not in res["modules"][n]]
    assert "quorumlock.aio" in imported and "quorumlock.blocking" in imported
    for name in names:
        mod = res["modules"][name]
        if "missing" in mod or name in KNOWN_EXCEPTIONS:
            continue
        assert mod["tooling"] == [], f"importing {name} (after {names[:names.index(name)]}) loaded {mod['tooling']}"


def test_the_probe_sees_tooling_imports() -> None:
    """Negative control: the demo does import the node tooling, and the probe reports it."""
    res = _imports(["quorumlock.aio", "quorumlock.demo"], no_extensions=True)["modules"]
    assert res["quorumlock.aio"]["tooling"] == []
    assert "quorumlock.nodes" in res["quorumlock.demo"]["tooling"] and "quorumlock.demo" in res["quorumlock.demo"]["tooling"]
