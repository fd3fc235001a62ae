"""The repository's documents stand alone.

* No tracked file refers to the engineers' design notes ``DESIGN.md`` /
  ``FAULTS.md``, which are not part of the repository: every such reference
  points at a ``docs/`` file instead.  First-round code: 100 references in 42
  files (``git grep -c``); the strict test below failed there with 27 of them
  outside the files other branches are editing (and the README, LICENSE and
  CHANGELOG tests failed too).
* Every link to a ``docs/`` file (a Markdown link, or a ``docs/NAME.md``
  mention in code, comments and docstrings) names a file that exists, and
  every relative Markdown link in a tracked ``.md`` file resolves.
* README.md marks the commands that ``.ci/run`` runs verbatim, and they are
  the two commands plus the wheel install; LICENSE and CHANGELOG.md exist.

These read tracked files only (``git ls-files``); outside a git checkout
(an installed sdist) they skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from typing import Dict, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS = os.path.relpath(os.path.abspath(__file__), ROOT)


_NOTES = re.compile(r"\b(DESIGN|FAULTS)\.md\b")
_TEXT_EXT = (".py", ".pyx", ".pxi", ".pxd", ".c", ".h", ".md", ".toml", ".cfg", ".yml",
             ".yaml", ".txt", ".in", ".json", ".sh", "")  # fmt: skip


def _tracked() -> List[str]:
    if shutil.which("git") is None or not os.path.isdir(os.path.join(ROOT, ".git")) and not os.path.isfile(
        os.path.join(ROOT, ".git")
    ):
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def _texts() -> Dict[str, str]:
    texts: Dict[str, str] = {}
    for rel in _tracked():
        if rel == THIS or os.path.splitext(rel)[1] not in _TEXT_EXT:
            continue
        path = os.path.join(ROOT, rel)
        if not os.path.isfile(path):
            continue  # deleted in the work tree
        try:
            with open(path, encoding="utf-8") as f:
                texts[rel] = f.read()
        except UnicodeDecodeError:
            continue
    return texts


def _note_refs() -> List[str]:
    hits = []
    for rel, text in sorted(_texts().items()):
        for n, line in enumerate(text.splitlines(), 1):
            if _NOTES.search(line):
                hits.append(f"{rel}:{n}: {line.strip()[:100]}")
    return hits


def test_no_reference_to_the_design_notes():
    """No tracked file cites DESIGN.md / FAULTS.md, notes the repository does not have."""
    hits = _note_refs()
    assert not hits, "references to notes the repository lacks:\n" + "\n".join(hits)



_DOCS_MENTION = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)")
_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_docs_file_mentioned_exists():
    missing = []
    for rel, text in _texts().items():
        for m in _DOCS_MENTION.finditer(text):
            if not os.path.isfile(os.path.join(ROOT, "docs", m.group(1))):
                missing.append(f"{rel}: docs/{m.group(1)}")
    assert not missing, "mentions of docs/ files that do not exist:\n" + "\n".join(sorted(set(missing)))


def test_relative_markdown_links_resolve():
    broken = []
    for rel, text in _texts().items():
        if not rel.endswith(".md"):
            continue
        base = os.path.dirname(os.path.join(ROOT, rel))
        for m in _MD_LINK.finditer(text):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same page
            path = target.split("#", 1)[0]
            if path and not os.path.exists(os.path.join(base, path)):
                broken.append(f"{rel}: ({target})")
    assert not broken, "relative links to missing files:\n" + "\n".join(sorted(set(broken)))


def _readme_commands() -> Dict[str, str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    found = re.findall(
        r"<!-- \.ci/run runs the next command verbatim: (\w+) -->\s*\n```[a-z]*\n(.*?)\n```", text, flags=re.S
    )
    return {name: cmd.strip() for name, cmd in found}


def test_readme_marks_the_commands_ci_runs():
    """.ci/run extracts these by their markers; each must be one line, each run in a fresh venv."""
    cmds = _readme_commands()
    assert sorted(cmds) == ["demo", "test", "wheel"]
    for name, cmd in cmds.items():
        assert "\n" not in cmd, name
        assert cmd.startswith("python3 -m venv .venv && . .venv/bin/activate && "), name
    assert cmds["demo"].endswith("quorumlock demo")
    assert cmds["test"].endswith("python -m pytest -q")
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    for name in cmds:
        assert f"readme_cmd {name}" in ci, f".ci/run does not run README's {name!r} command"


def test_license_and_changelog():
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        lic = f.read()
    assert lic.startswith("MIT License") and "quorumlock developers" in lic
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as f:
        log = f.read()
    assert "## Unreleased" in log and "## 0.1.0" in log


# --------------------------------------------------------------------------- #
# docs/deployment.md's least-privilege ACL user, against real servers          #
# --------------------------------------------------------------------------- #

from _engine_fixtures import core  # noqa: E402,F401


def _deployment_acl(password: str) -> List[str]:
    with open(os.path.join(ROOT, "docs", "deployment.md"), encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.startswith("user quorumlock ")]
    assert len(lines) == 1, "docs/deployment.md must show exactly one 'user quorumlock' line"
    words = lines[0].split()[1:]  # drop the directive itself: `--user NAME RULES...`
    assert ">CHANGE-ME" in words
    return [f">{password}" if w == ">CHANGE-ME" else w for w in words]


@pytest.mark.parametrize("options", [{}, {"fencing": True, "lock_delay": 0.3, "notify": True, "metrics": True}],
                         ids=["plain", "fencing+lock_delay+notify"])  # fmt: skip
def test_deployment_acl_user_can_do_every_lock_operation(make_cluster, core, options):  # noqa: F811
    """The ACL line of docs/deployment.md is enough for acquire, extend,
    release, batches and waiting (blocking and asyncio), with fencing,
    lock-delay and notify (the waiter is woken by the release notification,
    not by polling).  Taking ``+time`` out of the line fails the fenced
    acquire with 3 node errors; taking ``+subscribe`` out fails the
    notification check.  (The default user keeps a password of its own: the
    cluster's supervisor pings with it.)"""
    import asyncio

    from quorumlock import LockManager
    from quorumlock.aio import LockManager as AsyncLockManager

    acl = _deployment_acl("pw-for-test")
    cluster = make_cluster(n=3, mode="volatile", max_ttl=1.0,
                           password="supervisor-only", extra_args=("--user", *acl))  # fmt: skip
    urls = [f"redis://quorumlock:pw-for-test@127.0.0.1:{p}" for p in cluster.ports]
    with LockManager(urls, ttl=1.0, _core=core, **options) as locks:
        lock = locks.acquire("acl:a", timeout=3.0)
        assert lock.extend() and lock.release()
        held = locks.acquire_many([f"acl:m{i}" for i in range(5)])
        assert all(held) and all(locks.release_many(held))

    async def body() -> None:
        async with AsyncLockManager(urls, ttl=1.0, _core=core, **options) as alocks:
            first = await alocks.acquire("acl:b", timeout=3.0)
            waiter = asyncio.ensure_future(alocks.acquire("acl:b", timeout=3.0))
            await asyncio.sleep(0.05)
            assert await first.extend()
            assert await first.release()
            second = await waiter
            assert await second.release()
            if options.get("notify"):
                # The waiter was woken by the release's PUBLISH, not by polling:
                # the channel rules and +subscribe of the line are enough.
                assert alocks.metrics()["notified"] >= 1

    asyncio.run(asyncio.wait_for(body(), 30))


def _code_block_with(path: str, needle: str) -> str:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        blocks = re.findall(r"```[a-z]*\n(.*?)\n```", f.read(), flags=re.S)
    found = [b for b in blocks if needle in b]
    assert len(found) == 1, f"{path}: expected one code block with {needle!r}, found {len(found)}"
    return found[0]


def test_deployment_server_config_runs(redis_server, tmp_path):
    """The redis.conf that docs/deployment.md assembles — ``nodes config``'s
    lines, the network/TLS block and the ACL block, with this machine's paths
    and ports — starts real servers, and a client reaches them over TLS as the
    ACL user and locks with fencing.  Catches a directive the server refuses
    (it exits at start) or a block that does not fit the client: the first
    draft of the page had a comment after ``tls-auth-clients optional``, and
    Redis 7.0.15 exited with "FATAL CONFIG FILE ERROR ... wrong number of
    arguments"."""
    import ssl

    from quorumlock import LockManager
    from quorumlock.nodes import _pick_free_port, make_tls_files, node_config

    if subprocess.run([redis_server, "--version"], capture_output=True, text=True).stdout.find("Redis") < 0:
        pytest.skip("the TLS block is written for redis-server")
    tls = make_tls_files(str(tmp_path / "tls"))
    base = node_config("volatile", 1.0).split("# ---- systemd")[0]
    net = (_code_block_with("docs/deployment.md", "tls-port")
           .replace("bind 10.0.1.11", "bind 127.0.0.1")
           .replace("/etc/redis/tls/node.crt", tls.cert_file)
           .replace("/etc/redis/tls/node.key", tls.key_file)
           .replace("/etc/redis/tls/ca.crt", tls.ca_file))  # fmt: skip
    acl = _code_block_with("docs/deployment.md", "user default off").replace(">CHANGE-ME", ">pw-for-test")
    procs, ports = [], []
    try:
        for i in range(3):
            port = _pick_free_port("127.0.0.1")
            d = tmp_path / f"node{i}"
            d.mkdir()
            conf = d / "redis.conf"
            conf.write_text(f"{base}\n{net.replace('tls-port 6380', f'tls-port {port}')}\n{acl}\ndir {d}\n")
            procs.append(subprocess.Popen([redis_server, str(conf)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.STDOUT))  # fmt: skip
            ports.append(port)
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        urls = [f"rediss://quorumlock:pw-for-test@127.0.0.1:{p}" for p in ports]
        deadline = time.monotonic() + 20
        while True:
            assert all(p.poll() is None for p in procs), "a server refused the documented configuration"
            try:
                with LockManager(urls, ttl=1.0, ssl_context=ctx, fencing=True) as locks:
                    lock = locks.acquire("deploy:a", timeout=2.0)
                    assert lock.fence and lock.release()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
