"""What the worker-queue integrations (rq, dramatiq, redbeat, arq) share: a
lock manager per process (workers fork: a manager is never shared across a
fork), argument digests for default keys, and raising an exception in
another thread when a lease is lost."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import threading
from typing import Any, Callable, Dict, Optional, Sequence, Union

__all__ = ["ProcessManagers", "args_digest", "raise_in_thread"]

Nodes = Union[Sequence[str], Callable[[], Any]]


def _check_nodes(nodes: Any) -> None:
    if callable(nodes):
        return
    if isinstance(nodes, (str, bytes)) or not nodes:
        raise TypeError(f"nodes must be a non-empty sequence of node URLs or a callable returning a "
                        f"LockManager, got {type(nodes).__name__}")
    for u in nodes:
        if not isinstance(u, str):
            raise TypeError(f"nodes must hold URL strings, got an item of type {type(u).__name__}")


class ProcessManagers:
    """One lock manager per process, made on first use in that process.

    ``nodes``: node URLs (then ``options`` are the keyword arguments of the
    blocking ``LockManager``), or a zero-argument callable that returns a
    manager."""

    def __init__(self, nodes: Nodes, options: Optional[Dict[str, Any]] = None) -> None:
        _check_nodes(nodes)
        self.nodes = nodes
        self.options = dict(options or {})
        self._by_pid: Dict[int, Any] = {}
        self._mutex = threading.Lock()

    def get(self) -> Any:
        pid = os.getpid()
        locks = self._by_pid.get(pid)
        if locks is not None:
            return locks
        with self._mutex:
            locks = self._by_pid.get(pid)
            if locks is None:
                # Managers made in a parent process are the parent's: drop
                # them without closing (their sockets belong to the parent).
                self._by_pid = {}
                if callable(self.nodes):
                    locks = self.nodes()
                else:
                    from .. import LockManager

                    locks = LockManager(list(self.nodes), **self.options)
                self._by_pid[pid] = locks
        return locks

    def close(self) -> None:
        """Close this process's manager (if one was made)."""
        locks = self._by_pid.pop(os.getpid(), None)
        if locks is not None:
            locks.close()

    def __repr__(self) -> str:  # never the URLs: they may carry passwords
        n = "callable" if callable(self.nodes) else f"{len(self.nodes)} nodes"
        return f"<ProcessManagers {n}>"


def args_digest(args: Any, kwargs: Any) -> str:
    """A short, stable digest of call arguments (for default lock keys)."""
    blob = json.dumps([list(args), kwargs], sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def raise_in_thread(thread_id: int, exc_type: type) -> bool:
    """Raise ``exc_type`` in the thread ``thread_id`` at its next Python
    bytecode (CPython's async exception; a blocking C call, e.g. a
    ``time.sleep``, ends first).  True if the thread was found."""
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    if n > 1:  # pragma: no cover - cannot happen for one id; undo as documented
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return n == 1
