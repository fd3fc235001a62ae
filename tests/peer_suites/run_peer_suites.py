#!/usr/bin/env python
"""Run the peers' own lock test suites against quorumlock's drop-in classes.

    python tests/peer_suites/run_peer_suites.py [--redis-py DIR] [--pottery DIR]
        [--redis-lock DIR] [--aioredlock DIR] [--nodes N]

``DIR`` is a git checkout or an unpacked sdist of the project (``redis/redis-py``,
``brainix/pottery``, ``ionelmc/python-redis-lock``, ``joanvila/aioredlock``)
or a directory holding its ``tests/`` tree (or just the lock test files):

* redis-py: ``tests/test_lock.py`` and ``tests/test_asyncio/test_lock.py``
  (with ``tests/conftest.py``, ``tests/test_asyncio/conftest.py`` and the helper
  modules they import, when present);
* pottery: ``tests/test_redlock.py`` and ``tests/test_aioredlock.py`` (with
  ``tests/conftest.py`` when present);
* python-redis-lock: ``tests/test_redis_lock.py`` with its ``conftest.py``
  (which starts its own ``redis-server`` on a unix socket, as its tox setup
  does), ``helper.py`` and ``config.py``; the gevent/eventlet tests need
  ``process-tests``, ``gevent`` and ``eventlet`` installed;
* aioredlock: ``tests/acceptance/test_aioredlock.py``; it imports aioredis 1.x
  (``pip install --target DIR 'aioredis<2'`` and put DIR on ``PYTHONPATH``:
  quorumlock does not use it, the suite's own fixtures do).

Their files are not part of quorumlock and are never copied into this
repository: the script copies them to a temporary directory, unchanged, next
to a generated pytest plugin that

* swaps the classes in: ``redis.lock`` and ``redis.asyncio.lock`` become views
  of ``quorumlock.compat.redis_py`` whose ``Lock`` is ``Lock`` / ``AsyncLock``
  (so the suites' fake clocks, which patch ``mod_time`` and ``asyncio`` in those
  modules, drive ours); ``pottery.Redlock``, ``pottery.AIORedlock`` and
  ``pottery.synchronize`` become ``quorumlock.compat.pottery``'s;
  ``import redis_lock`` and ``import aioredlock`` give
  ``quorumlock.compat.redis_lock`` / ``quorumlock.compat.aioredlock`` (through
  module files first on ``PYTHONPATH``, so python-redis-lock's helper
  subprocesses get them too);
* points the suites at real nodes started with ``quorumlock.nodes.LocalCluster``:
  redis-py's ``--redis-url`` option; for pottery, whose fixtures and tests
  hard-code ``redis://localhost:6379/<db>``, ``Redis.from_url`` (sync and
  asyncio) is redirected from ``localhost:6379`` to the first node, keeping the
  database number; aioredlock's connections to ``localhost:6379`` (and the
  suite's own aioredis clients) go to the first node the same way;
* with ``--nodes N`` (N > 1), adds the other N-1 nodes to every lock, so the
  same tests run against a quorum (the suites' own client still talks to the
  first node only: tests that change the key behind the lock's back then change
  one node of N, and that is what they measure).

When a suite's ``conftest.py`` is missing, a minimal one with the fixtures
these files use (``r``, ``_get_client``, ``create_redis``; ``redis``,
``aioredis``) is generated.

It prints, per suite, how many tests passed, failed, errored and were skipped,
and for each test that did not pass its first error line, with the reason when
it is a documented difference (``docs/migrating.md``).  Exit status: 0 when
every test that is not a known difference passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from typing import Dict, List, Optional, Tuple

# Tests that fail by design, with the documented reason (docs/migrating.md).
# Matched against the test function name (parametrized ids stripped).
KNOWN_DIFFERENCES: Dict[str, str] = {
    # pottery: its tests mock the redis-py client (``Redis.set`` or
    # ``Script.__call__``) to inject errors; quorumlock takes only the clients'
    # connection settings and talks to the nodes itself, so the mocks never fire.
    "test_acquire_rediserror": "injects errors by mocking the client's set(); only its connection settings are used",
    "test_acquire_quorumisimpossible": "injects errors by mocking the client's set(); only its connection settings are used",
    "test_locked_rediserror": "injects errors by mocking redis-py's Script; quorumlock runs its own scripts",
    "test_locked_quorumisimpossible": "injects errors by mocking redis-py's Script; quorumlock runs its own scripts",
    "test_extend_rediserror": "injects errors by mocking redis-py's Script; quorumlock runs its own scripts",
    "test_extend_quorumisimpossible": "injects errors by mocking redis-py's Script; quorumlock runs its own scripts",
    "test_release_rediserror": "injects errors by mocking redis-py's Script; quorumlock runs its own scripts",
    "test_release_quorumisimpossible": "injects errors by mocking redis-py's Script; quorumlock runs its own scripts",
    # pottery: fails with pottery itself here (--baseline).
    "test_releaseunlockedlock_repr": "fails with pottery's own class too (--baseline): it expects the repr of an older "
                                     "redis-py client at localhost:6379",
}

# Differences that only show with a quorum (--nodes > 1): the suites' client
# reaches the first node only.
QUORUM_DIFFERENCES: Dict[str, str] = {
    "test_releasing_lock_no_longer_owned_raises_error": "changes the key on one node of N: the lock is still held on a majority",
    "test_extending_lock_no_longer_owned_raises_error": "changes the key on one node of N: the lock is still held on a majority",
    "test_reacquiring_lock_no_longer_owned_raises_error": "changes the key on one node of N: the lock is still held on a majority",
    "test_context_manager_reacquiring_lock_no_longer_owned_raises_error": "changes the key on one node of N: the lock is still held on a majority",
    "test_context_manager_raises_when_locked_not_acquired": "sets the key on one node of N: a majority is still free",
    "test_lock_error_gives_correct_lock_name": "sets the key on one node of N: a majority is still free",
    # python-redis-lock
    "test_upgrade": "sets the key on one node of N: a majority is still free",
}

SUITES = {
    "redis-py": ["tests/test_lock.py", "tests/test_asyncio/test_lock.py"],
    "pottery": ["tests/test_redlock.py", "tests/test_aioredlock.py"],
    "redis-lock": ["tests/test_redis_lock.py"],
    "aioredlock": ["tests/acceptance/test_aioredlock.py"],
}

# python-redis-lock: none of its tests fails by design (docs/migrating.md).
# Entries may name a test with its parameters, e.g. "test_simple[eventlet]".
KNOWN_DIFFERENCES.update({
})


# --------------------------------------------------------------------------
# the plugin loaded into the suites' pytest run
# --------------------------------------------------------------------------

SHIM = r'''
"""Generated by quorumlock's run_peer_suites.py: swaps quorumlock's drop-in
classes into redis-py and pottery, points the suites at the test nodes, and
records every test's outcome."""

import json
import os
import sys
import types
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.lock
import redis.lock

from quorumlock.compat import pottery as ql_pottery
from quorumlock.compat import redis_py as ql_redis
from quorumlock.compat import sync_manager, aio_manager

NODE_URLS = os.environ["QL_PEER_URLS"].split()
SUITE = os.environ["QL_PEER_SUITE"]
RESULTS = os.environ["QL_PEER_RESULTS"]
QUORUM = int(os.environ.get("QL_PEER_QUORUM", "1"))
SPREAD = os.environ.get("QL_PEER_SPREAD_DBS") == "1"
SWAP = os.environ.get("QL_PEER_SWAP", "1") == "1"  # 0: the baseline, the libraries' own classes
EXTRA = NODE_URLS[1:QUORUM]


def _quorum(nodes):
    return list(nodes) + EXTRA if EXTRA else nodes


# -- redis-py: the lock modules, as views of quorumlock.compat.redis_py ------

class QuorumLock(ql_redis.Lock):
    def __init__(self, redis, *args, **kwargs):
        super().__init__(_quorum([redis]) if EXTRA else redis, *args, **kwargs)


class QuorumAsyncLock(ql_redis.AsyncLock):
    def __init__(self, redis, *args, **kwargs):
        super().__init__(_quorum([redis]) if EXTRA else redis, *args, **kwargs)


class _LockModule(types.ModuleType):
    """``Lock`` is quorumlock's class; every other attribute (``mod_time``,
    ``asyncio``, ...) is read from and written to quorumlock.compat.redis_py, so
    a test that monkeypatches the module's clock patches ours."""

    def __init__(self, name, lock_class):
        super().__init__(name)
        object.__setattr__(self, "_lock_class", lock_class)

    def __getattr__(self, name):
        if name == "Lock":
            return object.__getattribute__(self, "_lock_class")
        return getattr(ql_redis, name)

    def __setattr__(self, name, value):
        if name == "Lock":
            object.__setattr__(self, "_lock_class", value)
        else:
            setattr(ql_redis, name, value)

    def __delattr__(self, name):
        delattr(ql_redis, name)


if SUITE == "redis-py" and SWAP:
    sync_view = _LockModule("redis.lock", QuorumLock)
    async_view = _LockModule("redis.asyncio.lock", QuorumAsyncLock)
    sys.modules["redis.lock"] = sync_view
    sys.modules["redis.asyncio.lock"] = async_view
    redis.lock = sync_view
    redis.asyncio.lock = async_view


# -- pottery ------------------------------------------------------------------

def _redirect(url):
    """localhost:6379/<db> -> the first node (or, with --spread-dbs, node db-1
    for the databases 1..N, so that "five masters" are five servers)."""
    parts = urlsplit(url)
    if parts.hostname in ("localhost", "127.0.0.1") and (parts.port or 6379) == 6379:
        node = NODE_URLS[0]
        db = parts.path.lstrip("/")
        if SPREAD and db.isdigit() and 1 <= int(db) <= len(NODE_URLS):
            node = NODE_URLS[int(db) - 1]
        here = urlsplit(node)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"{here.hostname}:{here.port}"
        netloc = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def _patch_from_url(cls):
    original = cls.__dict__["from_url"].__func__

    def from_url(klass, url, *args, **kwargs):
        return original(klass, _redirect(url), *args, **kwargs)

    cls.from_url = classmethod(from_url)


if SUITE == "pottery":
    import pottery
    import pottery.aioredlock
    import pottery.redlock

    class QuorumRedlock(ql_pottery.Redlock):
        __slots__ = ()

        def _manager(self):
            if not EXTRA:
                return super()._manager()
            if self._shared is None:
                self._shared = sync_manager(_quorum(list(self._masters)), allow_same_server=True)
            return self._shared

    class QuorumAIORedlock(ql_pottery.AIORedlock):
        __slots__ = ()

        async def _manager(self):
            if not EXTRA:
                return await super()._manager()
            self._shared = await aio_manager(_quorum(list(self._masters)), allow_same_server=True)
            return self._shared

    QuorumRedlock.__qualname__ = QuorumRedlock.__name__ = "Redlock"
    QuorumAIORedlock.__qualname__ = QuorumAIORedlock.__name__ = "AIORedlock"
    if EXTRA:
        _Redlock, _AIORedlock = QuorumRedlock, QuorumAIORedlock
    else:
        _Redlock, _AIORedlock = ql_pottery.Redlock, ql_pottery.AIORedlock
    if SWAP:
        for mod in (pottery, pottery.redlock):
            mod.Redlock = _Redlock
            mod.synchronize = ql_pottery.synchronize
        for mod in (pottery, pottery.aioredlock):
            mod.AIORedlock = _AIORedlock
        if _Redlock is not ql_pottery.Redlock:
            ql_pottery.Redlock = _Redlock  # synchronize() builds this class
    _patch_from_url(redis.Redis)
    _patch_from_url(redis.asyncio.Redis)


# -- aioredlock: localhost:6379 -> the first node ------------------------------

def _redirect_address(conn):
    """An aioredlock connection spec (dict, (host, port), URL) naming
    localhost:6379 -> the same on the first node."""
    here = urlsplit(NODE_URLS[0])
    if isinstance(conn, dict):
        if conn.get("host", "localhost") in ("localhost", "127.0.0.1") and int(conn.get("port", 6379)) == 6379:
            return dict(conn, host=here.hostname, port=here.port)
        return conn
    if isinstance(conn, (tuple, list)) and len(conn) == 2:
        if conn[0] in ("localhost", "127.0.0.1") and int(conn[1]) == 6379:
            return (here.hostname, here.port)
        return conn
    if isinstance(conn, str) and "://" in conn:
        return _redirect(conn)
    return conn


if SUITE == "aioredlock":
    import aioredis

    for _fn in ("create_redis", "create_redis_pool", "create_connection", "create_pool"):
        _orig = getattr(aioredis, _fn, None)
        if _orig is None:
            continue

        def _make(orig):
            def patched(address, *args, **kwargs):
                return orig(_redirect_address(address), *args, **kwargs)
            return patched

        setattr(aioredis, _fn, _make(_orig))
    if SWAP:
        from quorumlock.compat import aioredlock as ql_aioredlock

        _aio_init = ql_aioredlock.Aioredlock.__init__

        def _init(self, redis_connections=None, *args, **kwargs):
            if redis_connections is None:
                redis_connections = [{"host": "localhost", "port": 6379}]
            conns = [_redirect_address(c) for c in redis_connections]
            _aio_init(self, conns + list(EXTRA), *args, **kwargs)

        ql_aioredlock.Aioredlock.__init__ = _init


# -- the extra nodes are emptied around every test, as the suites empty theirs --

import pytest


@pytest.fixture(autouse=True)
def _ql_flush_extra_nodes():
    def flush():
        for url in EXTRA:
            client = redis.Redis.from_url(url)
            try:
                client.flushall()
            finally:
                client.close()

    flush()
    yield
    flush()


# -- outcomes -----------------------------------------------------------------

_outcomes = {}


def pytest_runtest_logreport(report):
    entry = _outcomes.setdefault(report.nodeid, {"outcome": None, "error": ""})
    if report.failed:
        if entry["outcome"] not in ("failed", "error"):
            entry["outcome"] = "failed" if report.when == "call" else "error"
            crash = getattr(report.longrepr, "reprcrash", None)
            text = crash.message if crash is not None else str(report.longrepr)
            entry["error"] = " ".join(text.split())[:300]
    elif report.skipped and report.when in ("setup", "call"):
        entry["outcome"] = "skipped"
    elif report.when == "call" and entry["outcome"] is None:
        entry["outcome"] = "passed"


def pytest_sessionfinish(session, exitstatus):
    for entry in _outcomes.values():
        if entry["outcome"] is None:  # the session ended before the test ran to its end
            entry["outcome"], entry["error"] = "error", "did not run to completion"
    with open(RESULTS, "w") as f:
        json.dump({"exitstatus": int(exitstatus), "tests": _outcomes}, f, indent=1)

'''

# Module files put first on the path: ``import redis_lock`` / ``import
# aioredlock`` give quorumlock's drop-ins, in the test process and in every
# subprocess the suites start (python-redis-lock's helper.py).
SWAP_MODULES = {
    "redis-lock": ("redis_lock.py", '''
"""Generated by quorumlock's run_peer_suites.py: redis_lock is quorumlock.compat.redis_lock."""
import os
import sys

from quorumlock.compat import redis_lock as _ql

_extra = os.environ.get("QL_PEER_URLS", "").split()[1:int(os.environ.get("QL_PEER_QUORUM", "1"))]
if _extra:
    class Lock(_ql.Lock):
        def __init__(self, redis_client, *args, **kwargs):
            super().__init__([redis_client] + _extra, *args, **kwargs)

    _reset_all = _ql.reset_all
    _ql.Lock = Lock
    _ql.reset_all = lambda redis_client: _reset_all([redis_client] + _extra)
sys.modules[__name__] = _ql
'''),
    "aioredlock": ("aioredlock.py", '''
"""Generated by quorumlock's run_peer_suites.py: aioredlock is quorumlock.compat.aioredlock."""
import sys

from quorumlock.compat import aioredlock as _ql

sys.modules[__name__] = _ql
'''),
}

# Minimal fixtures for suites given without their conftest.py.
REDIS_PY_CONFTEST = '''
import pytest
import redis
from redis.connection import parse_url


def pytest_addoption(parser):
    parser.addoption("--redis-url", default="redis://localhost:6379/0")


def _get_client(cls, request=None, single_connection_client=True, flushdb=True, from_url=None, **kwargs):
    url = from_url or request.config.getoption("--redis-url")
    options = parse_url(url)
    options.update(kwargs)
    client = cls(connection_pool=redis.ConnectionPool(**options))
    if single_connection_client:
        client = client.client()
    if request is not None:
        def teardown():
            if flushdb:
                client.flushdb()
            client.close()
            client.connection_pool.disconnect()
        request.addfinalizer(teardown)
    return client


@pytest.fixture()
def r(request):
    with _get_client(redis.Redis, request) as client:
        yield client
'''

REDIS_PY_ASYNC_CONFTEST = '''
import pytest_asyncio
import redis.asyncio as redis


@pytest_asyncio.fixture()
async def create_redis(request):
    clients = []

    async def factory(url=None, flushdb=True, **kwargs):
        client = redis.Redis.from_url(url or request.config.getoption("--redis-url"), **kwargs)
        clients.append((client, flushdb))
        return client

    yield factory
    for client, flushdb in clients:
        if flushdb:
            await client.flushdb()
        await client.aclose()


@pytest_asyncio.fixture()
async def r(create_redis):
    return await create_redis()
'''

POTTERY_CONFTEST = '''
import random

import pytest
from redis import Redis
from redis.asyncio import Redis as AIORedis


@pytest.fixture(scope="session")
def redis_url():
    return f"redis://localhost:6379/{random.randint(1, 15)}"


@pytest.fixture
def redis(redis_url):
    client = Redis.from_url(redis_url, socket_timeout=1)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
async def aioredis(redis_url):
    client = AIORedis.from_url(redis_url, socket_timeout=1)
    await client.flushdb()
    yield client
    await client.flushdb()
'''

PYTEST_INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
timeout = 60
addopts = -p no:cacheprovider
"""


# --------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------


def _find(source: str, rel: str) -> Optional[str]:
    """``rel`` (``tests/...``) under a checkout, under a ``tests`` directory, or
    flat in ``source`` (only for a file directly in ``tests/``: redis-py's two
    lock test files share a name)."""
    cands = [os.path.join(source, rel), os.path.join(source, rel.split("/", 1)[1])]
    if rel.count("/") == 1:
        cands.append(os.path.join(source, os.path.basename(rel)))
    for cand in cands:
        if os.path.isfile(cand):
            return cand
    return None


def _stage(source: str, suite: str, dest: str) -> List[str]:
    """Copy the suite's test files (and their support modules) into ``dest``
    in a ``tests/`` package; return the staged test paths."""
    staged = []
    for rel in SUITES[suite]:
        found = _find(source, rel)
        if found is None:
            print(f"  {suite}: {rel} not found under {source}: skipped", file=sys.stderr)
            continue
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(found, target)
        # The package's support modules (conftest, helpers): every .py that is not a test file.
        src_dir = os.path.dirname(found)
        for name in os.listdir(src_dir):
            if name.endswith(".py") and not name.startswith("test_"):
                if not os.path.exists(os.path.join(os.path.dirname(target), name)):
                    shutil.copy2(os.path.join(src_dir, name), os.path.join(os.path.dirname(target), name))
        staged.append(rel)
    tests_dir = os.path.join(dest, "tests")
    for pkg, conftest in _conftests(suite):
        path = os.path.join(dest, pkg)
        if not os.path.isdir(path):
            continue
        init = os.path.join(path, "__init__.py")
        if not os.path.exists(init):
            open(init, "w").close()
        cf = os.path.join(path, "conftest.py")
        if not os.path.exists(cf):
            print(f"  {suite}: no {pkg}/conftest.py given: using generated minimal fixtures", file=sys.stderr)
            with open(cf, "w") as f:
                f.write(conftest)
    if not os.path.exists(os.path.join(tests_dir, "__init__.py")) and os.path.isdir(tests_dir):
        open(os.path.join(tests_dir, "__init__.py"), "w").close()
    return staged


def _conftests(suite: str) -> List[Tuple[str, str]]:
    if suite == "redis-py":
        return [("tests", REDIS_PY_CONFTEST), ("tests/test_asyncio", REDIS_PY_ASYNC_CONFTEST)]
    if suite == "pottery":
        return [("tests", POTTERY_CONFTEST)]
    return []  # python-redis-lock's conftest (it starts its own server) must be given; aioredlock needs none


def run_suite(suite: str, source: str, urls: List[str], quorum: int, spread: bool, baseline: bool,
              extra_args: List[str], keep: bool) -> Dict[str, dict]:
    work = tempfile.mkdtemp(prefix=f"ql-peer-{suite}-")
    try:
        staged = _stage(source, suite, work)
        if not staged:
            return {}
        with open(os.path.join(work, "_ql_peer_shim.py"), "w") as f:
            f.write(SHIM)
        with open(os.path.join(work, "pytest.ini"), "w") as f:
            f.write(PYTEST_INI)
        results = os.path.join(work, "results.json")
        path = [work]
        if suite in SWAP_MODULES and not baseline:
            name, text = SWAP_MODULES[suite]
            with open(os.path.join(work, name), "w") as f:
                f.write(text)
        elif suite == "redis-lock" and os.path.isdir(os.path.join(source, "src", "redis_lock")):
            path.append(os.path.join(source, "src"))  # baseline: the library's own module
        elif suite == "aioredlock" and os.path.isdir(os.path.join(source, "aioredlock")):
            path.append(source)
        if suite == "redis-lock":
            path.append(os.path.join(work, "tests"))  # its tox.ini: PYTHONPATH={toxinidir}/tests
        env = dict(os.environ)
        env.update(
            QL_PEER_URLS=" ".join(urls),
            QL_PEER_SUITE=suite,
            QL_PEER_RESULTS=results,
            QL_PEER_QUORUM=str(quorum),
            QL_PEER_SPREAD_DBS="1" if spread else "0",
            QL_PEER_SWAP="0" if baseline else "1",
            # Absolute: pytest runs in the staging directory (PYTHONPATH=src would
            # otherwise silently import the installed quorumlock instead).
            PYTHONPATH=os.pathsep.join(path + [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                               if p]),
        )
        # --tb=line: only the crash line is reported, and it spares pytest the
        # source parsing that CPython 3.11.7's ast module can fail with
        # ("AST constructor recursion depth mismatch") when a finalizer runs
        # mid-parse, which aborts the session with an INTERNALERROR.
        cmd = [sys.executable, "-m", "pytest", "-p", "_ql_peer_shim", "-q", "-rN", "--tb=line", *staged]
        if suite == "redis-py":
            cmd += ["--redis-url", urls[0] + "/0"]
        if suite == "redis-lock":
            cmd += ["-o", "timeout=300"]  # test_no_overlap alone may wait 100 s
        cmd += extra_args
        how = f"{quorum} node(s) per lock" + (f"; databases 1-{len(urls)} of localhost:6379 on {len(urls)} servers"
                                                 if spread and suite == "pottery" else "")
        if baseline:
            how += "; BASELINE: the library's own classes"
        print(f"\n== {suite}: {' '.join(staged)} ({how})", flush=True)
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if not os.path.exists(results):
            print(proc.stdout[-4000:])
            raise SystemExit(f"{suite}: pytest did not run (exit status {proc.returncode})")
        with open(results) as f:
            data = json.load(f)
        if not data["tests"]:
            print(proc.stdout[-4000:])
            raise SystemExit(f"{suite}: no test ran (exit status {proc.returncode})")
        if "INTERNALERROR" in proc.stdout:
            print(proc.stdout[-3000:])
            raise SystemExit(f"{suite}: pytest stopped with an INTERNALERROR")
        return data["tests"]
    finally:
        if keep:
            print(f"  kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _base_name(nodeid: str) -> str:
    return nodeid.split("::")[-1].split("[")[0]


def report(suite: str, outcomes: Dict[str, dict], quorum: bool, spread: bool, baseline: bool = False) -> int:
    counts: Dict[str, int] = {}
    for o in outcomes.values():
        counts[o["outcome"]] = counts.get(o["outcome"], 0) + 1
    total = len(outcomes)
    print(f"{suite}: {counts.get('passed', 0)}/{total} passed, {counts.get('failed', 0)} failed, "
          f"{counts.get('error', 0)} errors, {counts.get('skipped', 0)} skipped")
    per_file: Dict[str, List[int]] = {}
    for nodeid, o in outcomes.items():
        c = per_file.setdefault(nodeid.split("::")[0], [0, 0])
        c[0] += o["outcome"] == "passed"
        c[1] += 1
    if len(per_file) > 1:
        print("  " + ", ".join(f"{f}: {p}/{t}" for f, (p, t) in sorted(per_file.items())))
    unexpected = 0
    for nodeid, o in sorted(outcomes.items()):
        if o["outcome"] in ("passed", "skipped"):
            continue
        name = _base_name(nodeid)
        reason = KNOWN_DIFFERENCES.get(nodeid.split("::")[-1]) or KNOWN_DIFFERENCES.get(name)
        if reason is None and quorum:
            reason = QUORUM_DIFFERENCES.get(name)
        tag = f"documented difference: {reason}" if reason else "UNEXPECTED"
        if baseline:
            reason, tag = "baseline", "fails with the library's own classes too"
        if not reason:
            unexpected += 1
        print(f"  {o['outcome'].upper():6} {nodeid}\n         {tag}\n         {o['error']}")
    return unexpected


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=textwrap.dedent(__doc__.split("\n\n", 2)[2]))
    ap.add_argument("--redis-py", metavar="DIR", help="redis-py checkout, or a directory with its lock tests")
    ap.add_argument("--pottery", metavar="DIR", help="pottery checkout, or a directory with its lock tests")
    ap.add_argument("--redis-lock", metavar="DIR",
                    help="python-redis-lock sdist or checkout (its tests/ with conftest.py, helper.py, config.py)")
    ap.add_argument("--aioredlock", metavar="DIR", help="aioredlock checkout (tests/acceptance/test_aioredlock.py)")
    ap.add_argument("--nodes", type=int, default=1, help="nodes per lock (default 1: the suites' own setup)")
    ap.add_argument("--spread-dbs", action="store_true",
                    help="pottery: put databases 1-5 of localhost:6379 on five different servers, so that "
                         "test_contention's five masters are independent (it uses one server otherwise)")
    ap.add_argument("--baseline", action="store_true",
                    help="run the suites with the libraries' own classes (no swap), on the same nodes")
    ap.add_argument("--keep", action="store_true", help="keep the staged temporary directories")
    ap.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = ap.parse_args(argv)
    if not (args.redis_py or args.pottery or args.redis_lock or args.aioredlock):
        ap.error("give one or more of --redis-py DIR, --pottery DIR, --redis-lock DIR, --aioredlock DIR")
    if args.nodes < 1:
        ap.error("--nodes must be >= 1")

    from quorumlock.nodes import LocalCluster

    unexpected = 0
    n = max(args.nodes, 5 if args.spread_dbs else 1)
    with LocalCluster(n=n, mode="volatile", max_ttl=1.0) as cluster:
        urls = [f"redis://{cluster.host}:{p}" for p in cluster.ports]
        print(f"nodes: {' '.join(urls)}")
        for suite, source in (("redis-py", args.redis_py), ("pottery", args.pottery),
                              ("redis-lock", args.redis_lock), ("aioredlock", args.aioredlock)):
            if not source:
                continue
            outcomes = run_suite(suite, os.path.abspath(source), urls, args.nodes, args.spread_dbs, args.baseline,
                                 args.pytest_args, args.keep)
            if args.baseline:
                report(suite, outcomes, False, False, baseline=True)
            else:
                unexpected += report(suite, outcomes, args.nodes > 1, args.spread_dbs and suite == "pottery")
    print(f"\n{unexpected} unexpected failure(s)")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
