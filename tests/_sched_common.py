"""Helpers of the worker-queue integration tests (tests/test_integrations_*.py):
run spans recorded by jobs in other processes, checked for overlaps with the
safety checker's interval analysis (``quorumlock.chaos.checker.check``)."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

from quorumlock.chaos.checker import check

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

Span = Tuple[str, int, int, int]     # (key, start ns, end ns, pid) on the host's CLOCK_MONOTONIC


def examples_module(name: str) -> Any:
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    return __import__(name)


def overlaps(spans: Sequence[Span]) -> List[Dict[str, Any]]:
    """Pairs of runs of the same key whose [start, end] intervals intersect,
    as the checker reports overlapping holders (each run is one holder)."""
    events = [{"type": "op", "op": "acquire", "id": f"run{i}", "key": key, "ok": True, "client": str(pid),
               "invoke": a, "complete": a, "valid_until": b}
              for i, (key, a, b, pid) in enumerate(spans)]
    return check(events).overlaps


def finished(spans: Sequence[Span]) -> List[Span]:
    """The complete runs (not the ``start:`` markers)."""
    return [s for s in spans if not s[0].startswith("start:")]


def wait_until(pred: Callable[[], Any], timeout: float, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def stop_all(procs: Sequence[Any], sig: int = signal.SIGTERM, timeout: float = 15.0) -> List[str]:
    """Signal each process group, wait, SIGKILL what is left; the stderr tails."""
    errs = []
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except Exception:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, err = p.communicate(timeout=timeout)
        errs.append((err or "")[-3000:])
    return errs


def take_over(ports: Sequence[int], key: str, px: int = 1500) -> None:
    """Another token takes ``key`` on every node (as after a lease expired in
    a long pause): the holder's next renewal is refused by a majority."""
    import redis

    for p in ports:
        r = redis.Redis(port=p)
        r.set(key, b"someone-else", px=px)
        r.close()
