"""Log messages do not repeat the logger's name.

Every record comes from a logger named ``quorumlock`` (or ``quorumlock.x``),
so a handler formatting ``%(name)s: %(message)s`` already prints the prefix;
a message that starts with ``"quorumlock: "`` as well shows up as
``quorumlock: quorumlock: node-1 unreachable ...``.

First-round code: the connect tests caught, on both builds and both APIs,
a ``quorumlock: redis://127.0.0.1:<port> unreachable ...; retrying in the
background`` record for the down node, and the source scan listed 71 logging calls with the prefix in
20 files (engine.pxi, _pycore.py, aio.py, blocking.py, _handshake.py,
leases/, leader.py, integrations/, ...).
"""

from __future__ import annotations

import logging
import pathlib
import re
from typing import Any, List

from quorumlock import LockManager
from quorumlock import aio

from _engine_fixtures import clusters, core, free_port, run, sync_core, _shared_clusters  # noqa: F401

SRC = pathlib.Path(__file__).resolve().parent.parent / "src" / "quorumlock"

# A logging call whose message (the first argument) starts with the prefix:
# ``log.warning("quorumlock: ...``, ``self.logger.info(\n "quorumlock: ...``
# and ``(log.warning if c else log.debug)("quorumlock: ...``.
_PREFIXED_CALL = re.compile(
    r'\blog(?:ger)?\.(?:debug|info|warning|error|exception|critical)\)?\(\s*"quorumlock: ')


def _prefixed(records: List[logging.LogRecord]) -> List[str]:
    return [r.getMessage() for r in records if r.getMessage().startswith("quorumlock:")]


def test_down_node_connect_logs_without_prefix_blocking(sync_core: Any, clusters: Any, free_port: int,
                                                        caplog: Any) -> None:
    """A down node at connect is logged (the test checks it is), and no
    record's message starts with the logger's own name."""
    cluster = clusters(3)
    urls = list(cluster.urls[:2]) + [f"redis://127.0.0.1:{free_port}/0"]
    with caplog.at_level(logging.DEBUG, logger="quorumlock"):
        with LockManager(urls, connect_timeout=0.5, _core=sync_core) as locks:
            lock = locks.try_acquire("log-prefix", ttl=5.0)
            assert lock is not None
            lock.release()
    mine = [r for r in caplog.records if r.name.startswith("quorumlock")]
    assert any(str(free_port) in r.getMessage() for r in mine), [r.getMessage() for r in mine]
    assert _prefixed(mine) == []


def test_down_node_connect_logs_without_prefix_asyncio(run: Any, core: Any, clusters: Any, free_port: int,
                                                       caplog: Any) -> None:
    cluster = clusters(3)
    urls = list(cluster.urls[:2]) + [f"redis://127.0.0.1:{free_port}/0"]

    async def main() -> None:
        async with aio.LockManager(urls, connect_timeout=0.5, _core=core) as locks:
            lock = await locks.try_acquire("log-prefix", ttl=5.0)
            assert lock is not None
            await lock.release()

    with caplog.at_level(logging.DEBUG, logger="quorumlock"):
        run(main())
    mine = [r for r in caplog.records if r.name.startswith("quorumlock")]
    assert any(str(free_port) in r.getMessage() for r in mine), [r.getMessage() for r in mine]
    assert _prefixed(mine) == []


def test_no_logging_call_in_the_source_repeats_the_logger_name() -> None:
    """Covers the log sites a test cannot easily reach (clock-offset
    warnings, restart guard, integrations) in both engine builds."""
    files = [p for p in SRC.rglob("*") if p.suffix in (".py", ".pyx", ".pxi")]
    assert any(p.name == "engine.pxi" for p in files) and any(p.name == "_pycore.py" for p in files)
    hits = []
    for p in files:
        text = p.read_text(encoding="utf-8")
        for m in _PREFIXED_CALL.finditer(text):
            hits.append(f"{p.relative_to(SRC)}:{text.count(chr(10), 0, m.start()) + 1}")
    assert hits == [], f"{len(hits)} logging calls start with 'quorumlock: ': {hits}"
