"""Packaging: the wheel workflow, the cibuildwheel targets, the sdist and the wheel.

Quick tests (default run):
  * wheels.yml and .github/workflows/wheels.yml are the same bytes;
  * MANIFEST.in puts csrc/*.h, the .pyx, .pxi and .pxd files into the sdist
    (checked by running the template through setuptools' own file list);
  * [tool.cibuildwheel] selects CPython 3.11-3.14 and smoke-tests the compiled core;
  * ``cibuildwheel --print-build-identifiers`` lists the expected targets (skipped
    when cibuildwheel is not installed).

Slow test (``-m slow``): ``python -m build`` makes the sdist and, from it, the
wheel; the wheel is installed into a fresh venv, where the compiled core must
load and the cibuildwheel smoke-test command must pass.

Nothing here reads the contents of the engine (.pyx/.pxi): the files are found by
globbing, so the tests keep working as the engine grows."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "src" / "quorumlock"

PYTHONS = ("cp311", "cp312", "cp313", "cp314")

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - older interpreters
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]


def _pyproject() -> dict:
    if tomllib is None:
        pytest.skip("needs tomllib (Python >= 3.11) or tomli to read pyproject.toml")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _engine_sources() -> list[str]:
    """Paths (relative to the repository root, POSIX style) of every file the sdist
    needs to compile the core: C headers, the .pyx, the .pxi and .pxd files."""
    files = list((ROOT / "csrc").glob("*.h"))
    for pattern in ("*.pyx", "*.pxi", "*.pxd"):
        files += PKG.rglob(pattern)
    rel = sorted(p.relative_to(ROOT).as_posix() for p in files)
    assert any(r.startswith("csrc/") and r.endswith(".h") for r in rel), rel
    assert "src/quorumlock/_core.pyx" in rel, rel
    assert any(r.endswith(".pxi") for r in rel), rel
    return rel


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no engine override, no interference
    from this interpreter's path settings or from CIBW_* variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CIBW_")
        and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "QUORUMLOCK_NO_EXTENSIONS", "PYTHONSTARTUP")
    }
    env["PYTHONNOUSERSITE"] = "1"
    env.update(extra)
    return env


def _run(cmd: list, *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    cmd = [str(c) for c in cmd]
    proc = subprocess.run(
        cmd,
        cwd=str(cwd),
        env=env if env is not None else _clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-8000:]}")
    return proc.stdout


# --------------------------------------------------------------------------- #
# Quick tests                                                                  #
# --------------------------------------------------------------------------- #


def test_workflow_copies_are_identical():
    root_copy = ROOT / "wheels.yml"
    github_copy = ROOT / ".github" / "workflows" / "wheels.yml"
    assert root_copy.is_file(), root_copy
    assert github_copy.is_file(), github_copy
    assert root_copy.read_bytes() == github_copy.read_bytes(), (
        "wheels.yml and .github/workflows/wheels.yml differ: edit one, copy it over the other"
    )


def test_workflow_shape():
    text = (ROOT / "wheels.yml").read_text()
    for needle in (
        "pypa/cibuildwheel@",
        "ubuntu-24.04-arm",  # Linux aarch64, native runner
        "macos-15-intel",  # macOS x86_64
        "macos-14",  # macOS arm64
        "python -m build --sdist",
        "actions/upload-artifact@",
        "pypa/gh-action-pypi-publish@",
        "id-token: write",
        "refs/tags/",
    ):
        assert needle in text, f"wheels.yml has no {needle!r}"
    try:
        import yaml
    except ImportError:  # PyYAML is not a test dependency: the text checks above suffice
        return
    wf = yaml.safe_load(text)
    jobs = wf["jobs"]
    assert {"sdist", "wheels", "publish"} <= set(jobs)
    steps = jobs["wheels"]["steps"]
    assert any(str(s.get("uses", "")).startswith("pypa/cibuildwheel@") for s in steps)
    runners = set(jobs["wheels"]["strategy"]["matrix"]["os"])
    assert any("arm" in r for r in runners if r.startswith("ubuntu")), runners  # Linux aarch64
    assert sum(r.startswith("macos") for r in runners) >= 2, runners  # macOS x86_64 + arm64
    publish = jobs["publish"]
    assert "refs/tags/" in publish["if"]
    assert publish["permissions"] == {"id-token": "write"}
    assert any(str(s.get("uses", "")).startswith("pypa/gh-action-pypi-publish@") for s in publish["steps"])


def test_manifest_names_the_engine_sources(monkeypatch):
    """MANIFEST.in puts every C header, .pyx, .pxi and .pxd into the sdist, and
    keeps generated/compiled files out.  The template is evaluated by setuptools'
    own FileList, exactly as `setup.py sdist` would, without building anything."""
    text = (ROOT / "MANIFEST.in").read_text()
    for word in ("csrc", "*.h", "*.pyx", "*.pxi", "*.pxd"):
        assert word in text, f"MANIFEST.in does not mention {word}"

    from setuptools.command.egg_info import FileList

    monkeypatch.chdir(ROOT)
    file_list = FileList()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            file_list.process_template_line(line)
    selected = {Path(f).as_posix() for f in file_list.files}

    missing = [f for f in _engine_sources() if f not in selected]
    assert not missing, f"MANIFEST.in leaves these out of the sdist: {missing}"
    built = [f for f in selected if f.endswith((".so", ".pyd")) or f == "src/quorumlock/_core.c"]
    assert not built, f"MANIFEST.in would ship build products: {built}"


def test_cibuildwheel_config():
    cfg = _pyproject()["tool"]["cibuildwheel"]
    build = cfg["build"].split() if isinstance(cfg["build"], str) else cfg["build"]
    assert sorted(build) == sorted(f"{py}-*" for py in PYTHONS)
    skip = cfg.get("skip", [])
    skip = skip.split() if isinstance(skip, str) else skip
    assert "pp*" in skip and "*t-*" in skip
    command = cfg["test-command"]
    assert "IMPLEMENTATION == 'cython'" in command
    assert "== 20" in command


# --------------------------------------------------------------------------- #
# cibuildwheel targets                                                         #
# --------------------------------------------------------------------------- #

needs_cibuildwheel = pytest.mark.skipif(
    importlib.util.find_spec("cibuildwheel") is None, reason="cibuildwheel is not installed"
)


def _identifiers(*args: str) -> list[str]:
    out = _run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", *args], cwd=ROOT, timeout=120)
    ids = [line.strip() for line in out.splitlines() if line.strip()]
    print("\n".join(ids))
    return ids


@needs_cibuildwheel
def test_cibuildwheel_linux_identifiers():
    # Both architectures, whatever this machine is (CI builds each on its own runner).
    ids = _identifiers("--platform", "linux", "--archs", "x86_64,aarch64")
    expected = {
        f"{py}-{libc}_{arch}"
        for py in PYTHONS
        for libc in ("manylinux", "musllinux")
        for arch in ("x86_64", "aarch64")
    }
    assert len(ids) == len(set(ids))
    assert set(ids) == expected

    # Default archs: what a runner of this machine's kind builds (its native arch).
    native = _identifiers("--platform", "linux")
    assert native and set(native) <= expected
    arches = {i.split("-", 1)[1].split("_", 1)[1] for i in native}  # cp39-manylinux_x86_64 -> x86_64
    assert len(arches) == 1, native
    for py in PYTHONS:
        for libc in ("manylinux", "musllinux"):
            assert any(i.startswith(f"{py}-{libc}_") for i in native), (py, libc, native)


@needs_cibuildwheel
def test_cibuildwheel_macos_identifiers():
    ids = _identifiers("--platform", "macos", "--archs", "x86_64,arm64")
    expected = {f"{py}-macosx_{arch}" for py in PYTHONS for arch in ("x86_64", "arm64")}
    assert set(ids) == expected


# --------------------------------------------------------------------------- #
# Real build + fresh venv (slow)                                               #
# --------------------------------------------------------------------------- #

_SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".benchmarks", ".venv", "venv", ".tox", ".nox", "build", "dist"}
_SKIP_FILES = ("*.so", "*.pyd", "*.py[cod]", "*.egg-info", "_core.c", "_core.html")


def _copy_source_tree(dest: Path) -> None:
    """Copy the project as a commit of the current work tree would hold it
    (tracked files plus new files not ignored by .gitignore), so the build never
    writes into the shared work tree and never sees stale build products."""
    names = None
    if (ROOT / ".git").exists() and shutil.which("git"):
        proc = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        if proc.returncode == 0:
            names = [n for n in proc.stdout.decode().split("\0") if n]
    if names is None:  # not a git checkout (e.g. tests run from an unpacked sdist)
        names = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
            for fn in filenames:
                names.append(os.path.relpath(os.path.join(dirpath, fn), ROOT))
    for name in names:
        if any(fnmatch.fnmatch(os.path.basename(name), pat) for pat in _SKIP_FILES):
            continue
        src = ROOT / name
        if not src.is_file():  # deleted in the work tree but still tracked
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_build_sdist_and_wheel_then_install_in_fresh_venv(tmp_path):
    pytest.importorskip("build", reason="python -m build is not installed (it is in the 'test' extra)")
    engine_sources = _engine_sources()

    src = tmp_path / "src"
    _copy_source_tree(src)
    dist = tmp_path / "dist"
    # Without --sdist/--wheel, build makes the sdist and then the wheel *from the
    # sdist*: the wheel only builds if the sdist is complete.
    out = _run([sys.executable, "-m", "build", "--outdir", dist, src], cwd=tmp_path, timeout=600)
    print(out.strip().splitlines()[-1])

    sdists = sorted(dist.glob("*.tar.gz"))
    wheels = sorted(dist.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in dist.iterdir())
    sdist, wheel = sdists[0], wheels[0]
    print("built:", sdist.name, wheel.name)

    # The sdist: every C header, .pyx, .pxi and .pxd; no build products.
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name and m.isfile()}
    missing = [f for f in engine_sources if f not in members]
    assert not missing, f"the sdist lacks {missing}"
    assert not [m for m in members if m.endswith((".so", ".pyd"))], members
    assert "src/quorumlock/_core.c" not in members
    print("sdist has:", " ".join(f for f in engine_sources))

    # The wheel: platform-specific, with the compiled core in it.
    assert not wheel.name.endswith("-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    compiled = [n for n in names if n.startswith("quorumlock/_core.") and n.endswith((".so", ".pyd"))]
    assert len(compiled) == 1, names
    print("wheel has:", compiled[0])

    # A fresh venv; the wheel's dependencies (hiredis, redis, uvloop) come from the index.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path, timeout=180)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    vpy = bindir / ("python.exe" if os.name == "nt" else "python")
    _run([vpy, "-m", "pip", "install", "--no-input", wheel], cwd=tmp_path, timeout=600)

    probe = (
        "import json, quorumlock, quorumlock._core, quorumlock._backend as b\n"
        "assert b.IMPLEMENTATION == 'cython', b.IMPLEMENTATION\n"
        "t = b.core.new_token()\n"
        "assert type(t) is bytes and len(t) == 20\n"
        "print(json.dumps({'IMPLEMENTATION': b.IMPLEMENTATION, 'core': quorumlock._core.__file__,"
        " 'token_len': len(t), 'version': quorumlock.__version__}))\n"
    )
    venv_env = _clean_env(PATH=str(bindir) + os.pathsep + os.environ.get("PATH", ""))
    out = _run([vpy, "-c", probe], cwd=tmp_path, timeout=60, env=venv_env)
    print("fresh venv:", out.strip())
    result = json.loads(out.strip().splitlines()[-1])
    assert result["IMPLEMENTATION"] == "cython"
    assert result["token_len"] == 20
    assert Path(result["core"]).resolve().is_relative_to(venv.resolve()), result["core"]

    # The very smoke test cibuildwheel runs on every wheel in CI, from a directory
    # outside the source tree, with this venv's python first on PATH.
    if tomllib is not None:
        command = _pyproject()["tool"]["cibuildwheel"]["test-command"]
        shell = shutil.which("bash") or shutil.which("sh")
        if shell and os.name != "nt":
            out = _run([shell, "-c", command], cwd=tmp_path, timeout=60, env=venv_env)
            print("cibuildwheel test-command:", out.strip())
