"""Cooperative waits for the blocking API under gevent or eventlet
monkey-patching (Celery's gevent/eventlet pools, gunicorn's gevent workers).

The blocking engine waits for replies in C ``poll()``, which would stop every
green thread of the process until the replies come (up to the per-node
deadline when a node is slow or paused).  When ``select``/``socket`` are
monkey-patched, a blocking ``LockManager`` gives its engines
:func:`green_poll` instead: the same wait through the patched
``select.select``, which lets the hub run the other green threads meanwhile.

Detected once per manager, when it is made, by asking gevent / eventlet
(only if the process already imported them: nothing is imported here).
"""

from __future__ import annotations

import select
import sys
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

_POLLIN = getattr(select, "POLLIN", 0x001)
_POLLOUT = getattr(select, "POLLOUT", 0x004)

WaitFunction = Callable[[List[Tuple[int, int]], float], List[Tuple[int, int]]]


def patched() -> Optional[str]:
    """``"gevent"`` or ``"eventlet"`` when that library monkey-patched
    ``select`` or ``socket`` in this process, else None."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        try:
            if monkey.is_module_patched("select") or monkey.is_module_patched("socket"):
                return "gevent"
        except Exception:  # pragma: no cover - an unknown gevent
            pass
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None:
        try:
            if patcher.is_monkey_patched("select") or patcher.is_monkey_patched("socket"):
                return "eventlet"
        except Exception:  # pragma: no cover - an unknown eventlet
            pass
    return None


def wait_function() -> Optional[WaitFunction]:
    """The engines' wait: None (C ``poll()``) unless green threads are patched in."""
    return green_poll if patched() else None


def green_poll(want: List[Tuple[int, int]], timeout_ms: float) -> List[Tuple[int, int]]:
    """``poll()`` over ``want`` (``(fd, events)`` pairs) through the patched
    ``select.select``: the other green threads run while it waits.  Returns
    ``(fd, revents)`` for the ready fds; an fd in error is reported readable
    (reading it finds the error), as ``select`` does."""
    timeout = max(float(timeout_ms), 0.0) / 1000.0
    if not want:
        time.sleep(timeout)  # the patched sleep
        return []
    rlist = [fd for fd, ev in want if ev & _POLLIN]
    wlist = [fd for fd, ev in want if ev & _POLLOUT]
    r, w, x = select.select(rlist, wlist, [fd for fd, _ in want], timeout)
    ready: Dict[int, int] = {}
    for fd in r:
        ready[fd] = ready.get(fd, 0) | _POLLIN
    for fd in x:
        ready[fd] = ready.get(fd, 0) | _POLLIN
    for fd in w:
        ready[fd] = ready.get(fd, 0) | _POLLOUT
    return list(ready.items())


class SelectPoller:
    """The ``select.poll()`` methods the connect loop uses, over :func:`green_poll`
    (eventlet's patching removes ``select.poll``)."""

    def __init__(self) -> None:
        self._fds: Dict[int, int] = {}

    def register(self, fd: int, events: int) -> None:
        self._fds[fd] = events

    def unregister(self, fd: int) -> None:
        self._fds.pop(fd, None)

    def poll(self, timeout_ms: float) -> List[Tuple[int, int]]:
        return green_poll(list(self._fds.items()), timeout_ms)


def poller(wait: Optional[WaitFunction]) -> Any:
    """``select.poll()``, or its green look-alike when ``wait`` is set."""
    return select.poll() if wait is None else SelectPoller()


def track(owners: Dict[int, Any], ident: int) -> None:
    """Remember the green thread that owns the engine of ``ident``: green
    threads spawned directly (``gevent.spawn``) are not in
    ``threading.enumerate()``, so that alone cannot tell whether they ended."""
    try:
        from greenlet import getcurrent  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - gevent and eventlet both need greenlet
        return
    owners[ident] = weakref.ref(getcurrent())


def alive(owners: Dict[int, Any]) -> Set[int]:
    """The idents whose green thread still exists (forgetting the others)."""
    for ident in [i for i, ref in owners.items() if ref() is None]:
        del owners[ident]
    return set(owners)
