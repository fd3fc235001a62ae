"""Dramatiq: a middleware that runs a message's actor under a quorum lock.

```python
import dramatiq
from dramatiq.brokers.redis import RedisBroker
from quorumlock.integrations.dramatiq import QuorumLock

broker = RedisBroker(url="redis://127.0.0.1:6379/0")
broker.add_middleware(QuorumLock(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"], ttl=30))
dramatiq.set_broker(broker)

@dramatiq.actor(exclusive=True)                       # key: actor name + digest of the arguments
def rebuild_index(shard): ...

@dramatiq.actor(exclusive_key="report:{0}", exclusive_on_busy="skip")
def build_report(day): ...
```

While any worker thread of any worker process runs ``rebuild_index(3)``,
another ``rebuild_index(3)`` message does not start its actor.  The lock is
taken in ``before_process_message`` and auto-extended while the actor runs
(every ``ttl/3``); a worker SIGKILLed mid-message frees the key within
``ttl`` (and the broker redelivers the unacknowledged message).

Actor options (also per message, ``send_with_options(..., exclusive_key=...)``):

* ``exclusive=True`` or ``exclusive_key``: a ``str.format`` template over the
  message's arguments (positions and names), or a callable of them;
* ``exclusive_ttl`` (default: the middleware's ``ttl``);
* ``exclusive_on_busy``: ``"retry"`` (default) raises ``Busy``, a
  ``dramatiq.Retry`` with ``delay=exclusive_retry_delay`` ms (default 1000),
  so the ``Retries`` middleware puts the message back on the delay queue;
  each deferral counts as one of the message's retries (``max_retries``;
  raise it, or use ``retry_when``, for jobs that may wait long).  ``"skip"``
  acknowledges the message without running it (``SkipMessage``; one INFO line
  on ``quorumlock.dramatiq``);
* ``exclusive_wait``: seconds (or True) the worker thread waits for a running
  duplicate before ``on_busy`` applies;
* ``exclusive_limit=k``: up to ``k`` messages per key run at once across all
  workers instead of one (a distributed concurrency limiter: the key names a
  quorum semaphore of ``k`` permits, ``quorumlock.semaphore``); a message that
  finds all ``k`` permits held is busy, as above.

A lost lease (renewals failed to reach a majority before the guard moment) is
raised in the worker thread as ``LeaseLost`` (a ``dramatiq.middleware.Interrupt``,
as ``TimeLimitExceeded`` is: code that catches ``Exception`` does not swallow
it) at its next Python instruction; the ``Retries`` middleware then retries
the message like any failure.  ``interrupt=False`` only logs it.

Each worker process makes its own ``LockManager`` on first use (dramatiq
forks its worker processes; a manager is never shared across a fork).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import dramatiq
from dramatiq.middleware import Interrupt, Middleware, MiddlewareError, SkipMessage

from ..errors import LockTimeout
from ..jobs import _check_wait, _sem_acquire, claim
from ._shared import ProcessManagers, args_digest, raise_in_thread

__all__ = ["QuorumLock", "Busy", "LeaseLost", "default_key"]

log = logging.getLogger("quorumlock.dramatiq")

_ON_BUSY = ("retry", "skip")


class Busy(MiddlewareError, dramatiq.Retry):
    """The message's lock is held by a running duplicate: retry it later
    (a ``dramatiq.Retry``; a ``MiddlewareError`` so that the broker lets it
    out of ``before_process_message``)."""

    def __init__(self, message: str = "", delay: Optional[int] = None) -> None:
        dramatiq.Retry.__init__(self, message, delay)


class LeaseLost(Interrupt):
    """Raised in a worker thread whose message's lease was lost."""


def default_key(actor_name: str, args: Any, kwargs: Any) -> str:
    """``dramatiq:<actor name>:<digest of the arguments>``."""
    return f"dramatiq:{actor_name}:{args_digest(args, kwargs)}"


class QuorumLock(Middleware):
    """Run exclusive actors' messages one at a time per key (or ``k`` at a
    time, ``exclusive_limit``): see the module
    docstring.  ``nodes``: node URLs (``manager_options`` are the
    ``LockManager`` keywords) or a callable returning a blocking manager."""

    def __init__(self, nodes: Any, *, ttl: float = 30.0, on_busy: str = "retry", retry_delay: int = 1000,
                 max_hold: Optional[float] = None, interrupt: bool = True,
                 manager_options: Optional[Dict[str, Any]] = None) -> None:
        if on_busy not in _ON_BUSY:
            raise ValueError(f"on_busy must be one of {_ON_BUSY}, got {on_busy!r}")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        if isinstance(retry_delay, bool) or not isinstance(retry_delay, int) or retry_delay < 0:
            raise ValueError(f"retry_delay must be milliseconds >= 0 (int), got {retry_delay!r}")
        self.managers = ProcessManagers(nodes, manager_options)
        self.ttl = float(ttl)
        self.on_busy = on_busy
        self.retry_delay = retry_delay
        self.max_hold = max_hold
        self.interrupt = interrupt
        self.stats = {"run": 0, "busy": 0, "lost": 0}
        self._held: Dict[str, Tuple[Any, int]] = {}
        self._mutex = threading.Lock()

    @property
    def actor_options(self) -> set:
        return {"exclusive", "exclusive_key", "exclusive_ttl", "exclusive_on_busy", "exclusive_wait",
                "exclusive_retry_delay", "exclusive_limit"}

    @staticmethod
    def _option(message: Any, actor: Any, name: str, default: Any = None) -> Any:
        if name in message.options:
            return message.options[name]
        return actor.options.get(name, default)

    def key_for(self, message: Any, actor: Any) -> Optional[str]:
        """The lock key of ``message``, None if its actor is not exclusive."""
        spec = self._option(message, actor, "exclusive_key")
        if spec is None:
            if (not self._option(message, actor, "exclusive", False)
                    and self._option(message, actor, "exclusive_limit") is None):
                return None
            return default_key(message.actor_name, message.args, message.kwargs)
        if callable(spec):
            return str(spec(*message.args, **message.kwargs))
        if not isinstance(spec, str):
            raise TypeError(f"exclusive_key must be a str template or a callable, got {type(spec).__name__}")
        return spec.format(*message.args, **message.kwargs)

    def _acquire(self, key: str, ttl: float, wait: Any, limit: Optional[int] = None) -> Any:
        locks = self.managers.get()
        wait_s = _check_wait(wait)
        if limit is not None:
            return _sem_acquire(locks.semaphore(key, limit, ttl), wait_s)
        if wait_s is None:
            return claim(locks, key, ttl)
        while True:
            try:
                return locks.acquire(key, ttl, timeout=3600.0 if wait_s == math.inf else wait_s)
            except LockTimeout:
                if wait_s != math.inf:
                    return None

    def before_process_message(self, broker: Any, message: Any) -> None:
        actor = broker.get_actor(message.actor_name)
        key = self.key_for(message, actor)
        if key is None:
            return
        ttl = float(self._option(message, actor, "exclusive_ttl", self.ttl))
        limit = self._option(message, actor, "exclusive_limit")
        if limit is not None:
            from ..semaphore import check_permits

            limit = check_permits(limit, "exclusive_limit")
        lock = self._acquire(key, ttl, self._option(message, actor, "exclusive_wait", False), limit)
        if lock is None:
            self.stats["busy"] += 1
            on_busy = self._option(message, actor, "exclusive_on_busy", self.on_busy)
            if on_busy == "skip":
                log.info("skipped message %s (%s): %r is held by a running duplicate",
                         message.message_id, message.actor_name, key)
                raise SkipMessage(f"{key!r} is held by a running duplicate")
            delay = int(self._option(message, actor, "exclusive_retry_delay", self.retry_delay))
            log.info("message %s (%s) deferred %d ms: %r is held by a running duplicate",
                     message.message_id, message.actor_name, delay, key)
            raise Busy(f"{key!r} is held by a running duplicate", delay=delay)
        tid = threading.get_ident()
        with self._mutex:
            self._held[message.message_id] = (lock, tid)
        self.stats["run"] += 1
        self.managers.get().guard(lock, auto_extend=True, max_hold=self.max_hold,
                                  on_lost=self._lost_callback(message, tid))

    def _lost_callback(self, message: Any, tid: int) -> Callable[[Any, Any], None]:
        def on_lost(lock: Any, reason: Any) -> None:
            self.stats["lost"] += 1
            log.error("message %s (%s) lost its lock %r: %s", message.message_id,
                      message.actor_name, lock.key, reason)
            # Under the mutex: once _release has taken the entry, the thread
            # may be running another message and must not get the exception.
            with self._mutex:
                still = self._held.get(message.message_id)
                if self.interrupt and still is not None and still[0] is lock:
                    raise_in_thread(tid, LeaseLost)
        return on_lost

    def _release(self, message: Any) -> None:
        with self._mutex:
            held = self._held.pop(message.message_id, None)
        if held is None:
            return
        lock = held[0]
        locks = self.managers.get()
        st = lock._state
        if locks.lease_renewer is not None and st is not None:
            locks.lease_renewer.discard(st)
        try:
            locks.release(lock)
        except Exception:  # the key expires by itself
            log.warning("release of %r failed", lock.key, exc_info=True)

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: Optional[BaseException] = None) -> None:
        self._release(message)

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._release(message)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self.managers.close()
