"""Celery: no concurrent duplicate runs of a task with the same arguments.

```python
from celery import Celery
from quorumlock.integrations.celery import ExclusiveTask, configure

app = Celery("jobs", broker="redis://127.0.0.1:6379/0")
configure(app, ["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"], ttl=30)

@app.task(base=ExclusiveTask, lock_wait=False)
def rebuild_index(shard):
    ...
```

While a worker (any process, any host) runs ``rebuild_index(3)``, another
``rebuild_index(3)`` does not start: by default it is skipped (returns
``lock_skip_result``, logs one INFO line on ``quorumlock.celery``);
``lock_wait=True`` / a number of seconds makes it wait for the running one
instead (a worker slot is busy meanwhile), and ``lock_retry=<seconds>`` sends
it back to the queue with ``self.retry(countdown=...)``.  ``rebuild_index(4)``
runs concurrently: the key is the task name plus a digest of the arguments
(``lock_key`` overrides it: a ``str.format`` template over the arguments, or a
callable).  The lock is auto-extended while the task runs (``lock_ttl`` /
``lock_max_hold``).

``lock_limit=k`` allows up to ``k`` concurrent runs per key across the
worker pool instead of one (a per-task concurrency cap: the key names a quorum
semaphore of ``k`` permits, ``quorumlock.semaphore``); a run that finds all
``k`` permits held is busy (skipped, waits or is retried as above), and a
permit's lost lease is handled as a lock's.

Task options (class attributes, or ``@app.task(..., lock_ttl=...)``):
``lock_ttl`` (default: the manager's ttl), ``lock_wait``, ``lock_retry``,
``lock_key``, ``lock_skip_result``, ``lock_max_hold``, ``lock_limit``.

Each worker process makes its own blocking ``LockManager`` on first use
(never shared across a fork), from ``configure(app, nodes, **options)`` or
from the ``quorumlock_nodes`` / ``quorumlock_options`` settings of the app.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Any, Dict, Optional, Tuple

import celery

from ..errors import LockTimeout
from ..jobs import _check_wait, _sem_acquire, claim

__all__ = ["ExclusiveTask", "configure", "manager_for", "default_key"]

log = logging.getLogger("quorumlock.celery")

_managers: Dict[Tuple[int, int], Any] = {}
_mutex = threading.Lock()


def configure(app: Any, nodes: Any, **options: Any) -> None:
    """Tell ``app``'s exclusive tasks which nodes to lock on (the options of
    ``quorumlock.LockManager``).  Same as setting ``app.conf.quorumlock_nodes``
    and ``app.conf.quorumlock_options``."""
    app.conf.quorumlock_nodes = list(nodes)
    app.conf.quorumlock_options = dict(options)


def manager_for(app: Any) -> Any:
    """This process's ``LockManager`` for ``app`` (made on first use)."""
    from .. import LockManager

    k = (id(app), os.getpid())
    locks = _managers.get(k)
    if locks is None:
        with _mutex:
            locks = _managers.get(k)
            if locks is None:
                nodes = app.conf.get("quorumlock_nodes")
                if not nodes:
                    raise RuntimeError("no lock nodes: call quorumlock.integrations.celery.configure(app, nodes) "
                                       "or set app.conf.quorumlock_nodes")
                locks = LockManager(nodes, **(app.conf.get("quorumlock_options") or {}))
                _managers[k] = locks
    return locks


def default_key(name: str, args: Any, kwargs: Any) -> str:
    """``celery:<task name>:<digest of the arguments>``."""
    blob = json.dumps([list(args), kwargs], sort_keys=True, default=repr, separators=(",", ":"))
    return f"celery:{name}:{hashlib.sha1(blob.encode()).hexdigest()[:20]}"


class ExclusiveTask(celery.Task):
    """Task base class: one run at a time per task name and arguments."""

    lock_ttl: Optional[float] = None
    lock_wait: Any = False
    lock_retry: Optional[float] = None
    lock_key: Any = None
    lock_skip_result: Any = None
    lock_max_hold: Optional[float] = None
    lock_limit: Optional[int] = None

    @property
    def locks(self) -> Any:
        return manager_for(self.app)

    def lock_key_for(self, args: Any, kwargs: Any) -> str:
        k = self.lock_key
        if k is None:
            return default_key(self.name, args, kwargs)
        if callable(k):
            return k(*args, **kwargs)
        return str(k).format(*args, **kwargs)

    def _acquire(self, key: str) -> Any:
        locks = self.locks
        wait = self.lock_wait
        if self.lock_limit is not None:
            from ..semaphore import check_permits

            limit = check_permits(self.lock_limit, "lock_limit")
            return _sem_acquire(locks.semaphore(key, limit, self.lock_ttl), _check_wait(wait))
        if wait is False or wait is None:
            return claim(locks, key, self.lock_ttl)
        timeout = 3600.0 if wait is True else float(wait)
        while True:
            try:
                return locks.acquire(key, self.lock_ttl, timeout=timeout)
            except LockTimeout:
                if wait is not True:
                    return None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = self.lock_key_for(args, kwargs)
        lock = self._acquire(key)
        if lock is None:
            if self.lock_retry is not None:
                log.info("%s%r is running elsewhere; retrying in %s s", self.name, args, self.lock_retry)
                raise self.retry(countdown=self.lock_retry)
            log.info("skipped %s%r: a run with the same arguments is in progress", self.name, args)
            return self.lock_skip_result
        locks = self.locks
        locks.guard(lock, auto_extend=True, max_hold=self.lock_max_hold)
        try:
            result = super().__call__(*args, **kwargs)
        finally:
            st = lock._state
            if locks.lease_renewer is not None and st is not None:
                locks.lease_renewer.discard(st)
            locks.release(lock)
        st = lock._state
        if st is not None and st.reason is not None:
            from ..leases._lease import lost_error

            raise lost_error(lock, st)
        return result
