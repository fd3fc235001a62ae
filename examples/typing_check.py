"""A typed user script: what ``mypy --strict`` and ``pyright`` see of quorumlock.

    python examples/typing_check.py          # starts 3 local nodes
    QUORUMLOCK_NODES=redis://h1:6379,redis://h2:6379,redis://h3:6379 \\
        python examples/typing_check.py      # or uses yours

Both APIs: ``try_acquire`` typed as ``Lock | None``, ``validity`` read as a
float, ``token`` as bytes, ``fence`` as ``int | None``, ``extend`` and
``release`` called (awaited in the asyncio API), the ``lock()`` context
manager, ``health()`` and ``from_env()``.  tests/test_typing.py runs both
checkers on this file, and on a copy with typos that they must reject.
"""

from __future__ import annotations

import asyncio
import os
from typing import List, Optional

import quorumlock
import quorumlock.aio
from quorumlock import Health, Lock, LockManager, NodeHealth


def blocking(manager: LockManager) -> float:
    """The blocking API: returns the validity the first lock had."""
    with manager as locks:
        lock: Optional[Lock] = locks.try_acquire("typing:blocking")
        if lock is None:
            raise SystemExit("typing:blocking is held elsewhere")
        validity: float = lock.validity
        token: bytes = lock.token
        fence: Optional[int] = lock.fence
        assert len(token) == 20 and fence is None
        extended: bool = lock.extend(ttl=5.0)
        released: bool = lock.release()
        assert extended and released
        held: Lock = locks.acquire("typing:blocking", timeout=2.0)
        assert locks.release(held)
        with locks.lock("typing:ctx", ttl=2.0) as inner:
            left: float = inner.validity
            assert left > 0.0
        report: Health = locks.health()
        first: NodeHealth = report.nodes[0]
        offset: Optional[float] = first.clock_offset
        assert report.quorum_reachable and (offset is None or abs(offset) < 60.0)
        return validity


async def asyncio_api(manager: quorumlock.aio.LockManager) -> float:
    """The asyncio API: the same, awaited."""
    async with manager as locks:
        lock: Optional[quorumlock.aio.Lock] = await locks.try_acquire("typing:aio")
        if lock is None:
            raise SystemExit("typing:aio is held elsewhere")
        validity: float = lock.validity
        token: bytes = lock.token
        assert len(token) == 20
        extended: bool = await lock.extend()
        released: bool = await lock.release()
        assert extended and released
        async with locks.lock("typing:actx", ttl=2.0) as inner:
            left: float = inner.validity
            assert left > 0.0
        report: Health = await locks.health()
        up: int = report.reachable
        assert up == locks.n
        return validity


def main() -> None:
    if os.environ.get("QUORUMLOCK_NODES"):
        # QUORUMLOCK_NODES and the other variables (docs/configuration.md).
        print("blocking validity", blocking(LockManager.from_env(ttl=5.0)))
        print("asyncio validity", asyncio.run(asyncio_api(quorumlock.aio.LockManager.from_env(ttl=5.0))))
        return
    from quorumlock.nodes import LocalCluster

    with LocalCluster(n=3, mode="volatile", max_ttl=5.0) as cluster:
        urls: List[str] = cluster.urls
        print("blocking validity", blocking(LockManager(urls, ttl=5.0)))
        print("asyncio validity", asyncio.run(asyncio_api(quorumlock.aio.LockManager(urls, ttl=5.0))))


if __name__ == "__main__":
    main()
