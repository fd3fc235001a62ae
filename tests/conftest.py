"""Shared fixtures: real Redis servers on free loopback ports, and a leak check.

* ``redis_server``: path of the server binary (session); every test that needs
  one is skipped, with the reason, when no server can be found at all.
* ``make_cluster(**kwargs)``: starts a :class:`quorumlock.nodes.LocalCluster`
  (``server`` defaults to ``redis_server``) and stops it at teardown.
* ``_no_leaked_servers`` (session, autouse): at the end of the session, no
  server process that any LocalCluster started may still be alive.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, Iterator, List

import psutil
import pytest

from quorumlock import nodes as ql_nodes
from quorumlock.nodes import LocalCluster

# --------------------------------------------------------------------------
# Redis nodes
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> str:
    """Path of the redis-server / valkey-server binary the tests run."""
    try:
        return ql_nodes.find_server()
    except RuntimeError as exc:
        pytest.skip(f"no Redis server available for the tests: {exc}")


@pytest.fixture
def make_cluster(redis_server: str) -> Iterator[Callable[..., LocalCluster]]:
    """Factory of started LocalClusters; all of them are stopped at teardown."""
    clusters: List[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        kwargs.setdefault("server", redis_server)
        cluster = LocalCluster(**kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


# --------------------------------------------------------------------------
# leak check
# --------------------------------------------------------------------------

_SERVER_NAMES = ("redis-server", "valkey-server")


def _alive_servers(pids: List[int]) -> List[psutil.Process]:
    """The processes among ``pids`` that are still our live server children.

    Our servers are children of this process (start_new_session changes the
    session, not the parent).  Checking the parent keeps a recycled pid, now
    some other test run's server, from being blamed on us, or killed.
    """
    alive = []
    me = os.getpid()
    for pid in set(pids):
        try:
            proc = psutil.Process(pid)
            if proc.ppid() != me or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(name in proc.name() for name in _SERVER_NAMES):
                alive.append(proc)
        except psutil.Error:  # gone (NoSuchProcess) or not ours to inspect
            continue
    return alive


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_servers() -> Iterator[None]:
    """Fail the session if a server process started by a LocalCluster is still alive."""
    yield
    leaked = _alive_servers(ql_nodes.started_pids())
    described = []
    for proc in leaked:
        try:
            described.append(f"{proc.pid} ({' '.join(proc.cmdline()[:6])})")
        except psutil.Error:
            described.append(str(proc.pid))
        try:  # do not leave them behind either way
            os.kill(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    if leaked:
        pytest.fail("server processes left alive by the tests: " + "; ".join(described))


# --------------------------------------------------------------------------
# soak: the longest slow variants
# --------------------------------------------------------------------------

#: Slow tests CI's short slow stage leaves out (``-m 'slow and not soak'``):
#: the same check runs there on the compiled build or a smaller case, and
#: these repeat it on the pure-Python twin or at full size.  Run them with
#: ``python -m pytest -m soak``.
SOAK = (
    "tests/test_memory_bounds.py::test_majority_down_200k_attempts_memory[python]",
    "tests/test_memory_bounds.py::test_acquire_many_million_keys[python]",
    "tests/test_million_keys.py::test_million_keys_held_at_once[",  # 10^6 with tracemalloc: 1.5-3 min a build
    "tests/test_semaphore.py::test_32_holders_slow_matrix[",
    "tests/test_semaphore.py::test_32_holders_in_4_processes[3-5]",
    "tests/test_semaphore.py::test_32_holders_in_4_processes[5-2]",
    "tests/test_semaphore.py::test_32_holders_in_4_processes[5-5]",
    "tests/test_fencing_offsets.py::test_row30_no_stale_write_under_a_constant_clock_offset[python--0.9]",
    "tests/test_fencing_offsets.py::test_row30_no_stale_write_under_a_constant_clock_offset[python-5.0]",
    "tests/test_fencing_offsets.py::test_row30_no_stale_write_under_a_constant_clock_offset[python--5.0]",
    "tests/test_fencing_offsets.py::test_row30_no_stale_write_under_a_constant_clock_offset[python-3600.0]",
    "tests/test_fencing_offsets.py::test_row30_no_stale_write_under_a_constant_clock_offset[python--3600.0]",
    "tests/test_green.py::test_green_threads_contend_without_blocking_the_process[python-",
    # rows 22-29 run in CI as rows of the quick matrix (tests/test_chaos_run.py)
    "tests/test_chaos_client_faults.py::test_rows_22_23_27_28_29[",
    # the default run has a shorter stateful run of every combination
    "tests/test_stateful.py::test_stateful_managers_long[",
    # CI keeps row 30 at 0 and +-60 s (default run) and +-3600 s (slow)
    "tests/test_fencing_offsets.py::test_row30_no_stale_write_under_a_constant_clock_offset[cython--0.9]",
    "tests/test_fencing_offsets.py::test_row30_no_stale_write_under_a_constant_clock_offset[cython-5.0]",
    "tests/test_fencing_offsets.py::test_row30_no_stale_write_under_a_constant_clock_offset[cython--5.0]",
)


def pytest_collection_modifyitems(config: Any, items: List[Any]) -> None:
    for item in items:
        if item.nodeid.startswith(SOAK):
            assert item.get_closest_marker("slow"), f"{item.nodeid}: only slow tests may be soak tests"
            item.add_marker(pytest.mark.soak)
