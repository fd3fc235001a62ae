"""``LockManager.from_env()`` (both APIs): ``QUORUMLOCK_NODES`` as ``quorumlock
nodes up`` prints it, one variable per constructor option, the constructor's
own checks with the variable named in every error, keyword arguments over the
environment, and docs/configuration.md listing every variable.

First-round code: every test here fails with AttributeError (no ``from_env``)."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path
from typing import Any, Dict

import pytest

from quorumlock import LockManager, _env
from quorumlock import aio

from _engine_fixtures import clusters, core, run, sync_core, _shared_clusters  # noqa: F401

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
NODES = "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003"
CLASSES = [LockManager, aio.LockManager]
IDS = ["blocking", "asyncio"]


def _env_of(**values: str) -> Dict[str, str]:
    env = {"QUORUMLOCK_NODES": NODES}
    env.update({_env.variable(k): v for k, v in values.items()})
    return env


def test_every_constructor_option_has_a_variable() -> None:
    """The variables are derived from the constructor: every keyword option but
    ``ssl_context`` (an object) has one, and nothing else does."""
    params = inspect.signature(LockManager).parameters
    expected = {p for p, v in params.items() if v.kind is v.KEYWORD_ONLY and p != "ssl_context"}
    names = {name for name, _var, _default in _env.options(LockManager)}
    assert names == expected
    assert {var for _n, var, _d in _env.options(LockManager)} == {f"QUORUMLOCK_{n.upper()}" for n in expected}


def test_docs_list_every_variable() -> None:
    """docs/configuration.md has a table row for every variable (and no row
    for a variable that does not exist)."""
    text = DOC.read_text()
    rows = set(re.findall(r"^\|\s*`(QUORUMLOCK_[A-Z_]+)`", text, re.M))
    wanted = {var for _n, var, _d in _env.options(LockManager)} | {"QUORUMLOCK_NODES"}
    assert wanted <= rows, f"undocumented: {sorted(wanted - rows)}"
    assert rows <= wanted | _env.OTHER_VARIABLES, f"documented but unknown: {sorted(rows - wanted - _env.OTHER_VARIABLES)}"


GOOD = [
    ("ttl", "2.5", lambda o: o.ttl == 2.5),
    ("drift_factor", "0.02", lambda o: o.drift_factor == 0.02),
    ("retry_count", "7", lambda o: o.retry_count == 7),
    ("retry_delay", "0.2", lambda o: o.retry_delay == pytest.approx((0.1, 0.3))),
    ("retry_delay", "0.05,0.5", lambda o: o.retry_delay == (0.05, 0.5)),
    ("node_timeout", "0.25", lambda o: o.node_timeout == 0.25),
    ("node_timeout", "none", lambda o: o.node_timeout == pytest.approx(0.51)),
    ("connect_timeout", "0.7", lambda o: o.connect_timeout == 0.7),
    ("max_key_length", "64", lambda o: o.max_key_length == 64),
    ("max_ttl", "600", lambda o: o.max_ttl == 600.0),
    ("batch_chunk", "50", lambda o: o.batch_chunk == 50),
    ("restart_guard", "strict", lambda o: o.restart_guard == "strict"),
    ("restart_guard", "off", lambda o: o.restart_guard is False),
    ("guard_window", "3", lambda o: o.guard_window == 3.0),
    ("fencing", "true", lambda o: o.fencing is True),
    ("lock_delay", "1.5", lambda o: o.lock_delay_ms == 1500),
]


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("option,raw,check", GOOD, ids=[f"{g[0]}={g[1]}" for g in GOOD])
def test_each_variable_sets_its_option(cls: Any, option: str, raw: str, check: Any) -> None:
    mgr = cls.from_env(_env_of(**{option: raw}))
    assert check(mgr.options), mgr.options
    assert mgr.nodes == NODES.split(",")


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_notify_and_metrics_variables(cls: Any) -> None:
    mgr = cls.from_env(_env_of(notify="1", metrics="yes"))
    assert mgr._notify is True and mgr.meter is not None
    plain = cls.from_env(_env_of(notify="0", metrics="off"))
    assert plain._notify is False and plain.meter is None


#: (option, bad text): every one must fail naming its variable.
BAD = [
    ("ttl", "ten"), ("ttl", "0"), ("ttl", "-1"), ("ttl", "nan"), ("ttl", "100000"),
    ("drift_factor", "0.7"), ("drift_factor", "x"),
    ("retry_count", "0"), ("retry_count", "2.5"),
    ("retry_delay", "0.3,0.1"), ("retry_delay", "1,2,3"), ("retry_delay", "-1"),
    ("node_timeout", "60"), ("node_timeout", "fast"),
    ("connect_timeout", "0"), ("max_key_length", "0"), ("max_ttl", "-5"), ("batch_chunk", "zero"),
    ("restart_guard", "sometimes"), ("guard_window", "-1"),
    ("fencing", "maybe"), ("lock_delay", "-2"), ("notify", "2"), ("metrics", "enabled"),
]


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
@pytest.mark.parametrize("option,raw", BAD, ids=[f"{b[0]}={b[1]}" for b in BAD])
def test_bad_values_name_the_variable(cls: Any, option: str, raw: str) -> None:
    with pytest.raises((ValueError, TypeError)) as exc:
        cls.from_env(_env_of(**{option: raw}))
    assert _env.variable(option) in str(exc.value), str(exc.value)


def test_interacting_values_name_both_variables() -> None:
    with pytest.raises(ValueError) as exc:
        LockManager.from_env(_env_of(ttl="0.003", drift_factor="0.4"))
    assert "QUORUMLOCK_TTL" in str(exc.value) and "QUORUMLOCK_DRIFT_FACTOR" in str(exc.value)


def test_a_bad_keyword_value_is_not_blamed_on_the_environment() -> None:
    with pytest.raises(ValueError) as exc:
        LockManager.from_env(_env_of(drift_factor="0.02"), ttl=0)
    assert "QUORUMLOCK" not in str(exc.value) and "ttl" in str(exc.value)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_nodes_variable_errors(cls: Any) -> None:
    for env in ({}, {"QUORUMLOCK_NODES": ""}, {"QUORUMLOCK_NODES": "  "}):
        with pytest.raises(ValueError, match="QUORUMLOCK_NODES is not set"):
            cls.from_env(env)
    for bad in ("redis://127.0.0.1:1,,redis://127.0.0.1:2", "http://127.0.0.1:1",
                "redis://127.0.0.1:1,redis://localhost:1"):
        with pytest.raises(ValueError, match="QUORUMLOCK_NODES"):
            cls.from_env({"QUORUMLOCK_NODES": bad})


def test_no_password_in_errors() -> None:
    """A bad entry's message shows the URL, but not its password."""
    for url in ("redis://:hunter2secret@127.0.0.1:99999", "redis://user:hunter2secret@127.0.0.1:1/x",
                "unix:///tmp/s.sock?password=hunter2secret&db=x"):
        with pytest.raises(ValueError) as exc:
            LockManager.from_env({"QUORUMLOCK_NODES": url})
        assert "hunter2secret" not in str(exc.value) and "QUORUMLOCK_NODES" in str(exc.value), str(exc.value)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_keywords_override_the_environment(cls: Any) -> None:
    env = _env_of(ttl="2", retry_count="9")
    mgr = cls.from_env(env, ttl=4.0, nodes=["redis://127.0.0.1:7010"])
    assert mgr.ttl == 4.0 and mgr.options.retry_count == 9 and mgr.nodes == ["redis://127.0.0.1:7010"]
    # A keyword wins even over a bad variable (it is not read at all).
    assert cls.from_env(_env_of(ttl="garbage"), ttl=1.0).ttl == 1.0
    # Nodes from a keyword: QUORUMLOCK_NODES is not needed.
    assert cls.from_env({}, nodes=["redis://127.0.0.1:7011"]).n == 1


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_mistyped_keyword_names_the_class(cls: Any) -> None:
    with pytest.raises(TypeError, match=r"LockManager\.from_env\(\) got an unexpected keyword argument 'tl'"):
        cls.from_env(_env_of(), tl=3)


def test_misspelled_variable_warns() -> None:
    with pytest.warns(UserWarning, match="QUORUMLOCK_TLL .*did you mean QUORUMLOCK_TTL"):
        LockManager.from_env({"QUORUMLOCK_NODES": NODES, "QUORUMLOCK_TLL": "3"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LockManager.from_env({"QUORUMLOCK_NODES": NODES, "QUORUMLOCK_SERVER": "/usr/bin/redis-server",
                              "QUORUMLOCK_NO_EXTENSIONS": "0"})


def test_reads_os_environ_by_default(monkeypatch: Any) -> None:
    monkeypatch.setenv("QUORUMLOCK_NODES", NODES)
    monkeypatch.setenv("QUORUMLOCK_TTL", "3.5")
    assert LockManager.from_env().ttl == 3.5


def test_blocking_from_env_locks_on_real_nodes(sync_core: Any, make_cluster: Any) -> None:
    """The line ``quorumlock nodes up`` prints (``QUORUMLOCK_NODES=<urls>``,
    passwords included) configures a working manager."""
    cluster = make_cluster(n=3, max_ttl=2.0, password="s3cret-pw")
    line = f"QUORUMLOCK_NODES={','.join(cluster.urls)}"
    var, _, value = line.partition("=")
    env = {var: value, "QUORUMLOCK_TTL": "1.5", "QUORUMLOCK_FENCING": "1"}
    with LockManager.from_env(env, _core=sync_core) as locks:
        lock = locks.acquire("env:job")
        assert lock.ttl == 1.5 and isinstance(lock.fence, int)
        assert lock.release() is True
        assert locks.health().reachable == 3


def test_environ_values_must_be_strings() -> None:
    with pytest.raises(TypeError, match="QUORUMLOCK_TTL must be a string"):
        LockManager.from_env({"QUORUMLOCK_NODES": NODES, "QUORUMLOCK_TTL": 5})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="QUORUMLOCK_NODES must be a string"):
        LockManager.from_env({"QUORUMLOCK_NODES": NODES.split(",")})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="environ must be a mapping"):
        LockManager.from_env(["QUORUMLOCK_NODES"])  # type: ignore[arg-type]


def test_asyncio_from_env_locks_on_real_nodes(run: Any, core: Any, clusters: Any) -> None:
    cluster = clusters(3)
    env = {"QUORUMLOCK_NODES": ",".join(cluster.urls), "QUORUMLOCK_TTL": "0.8"}

    async def main() -> None:
        async with aio.LockManager.from_env(env, _core=core) as locks:
            lock = await locks.acquire("env:ajob")
            assert lock.ttl == 0.8
            assert await lock.release() is True

    run(main())
