"""Auto-extension, the lost-lease guard and waiting, for the blocking API.

One ``ThreadRenewer`` per manager: a daemon thread with its own connection set
(the blocking manager gives every thread one).  Each round it queues the
extend of every lease that is due before it waits for any of them, so all of
them reach each node in one write; it sleeps on a condition variable until
the next renewal or guard moment.  ``on_lost`` callbacks run in that thread:
keep them short.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, List, Optional, Set, Tuple

from .. import _policy
from .. import metrics as _metrics
from ..errors import LockTimeout
from ._lease import (
    DEFAULT_RENEW_FRACTION, Lease, call_on_lost, check_fraction, check_opt_seconds, describe_outcomes,
    lost_error, refused_by_majority,
)

log = logging.getLogger("quorumlock")
from .._clock import now_ns as _now_ns  # the lease clock (CLOCK_BOOTTIME)

_all_renewers: "weakref.WeakSet[ThreadRenewer]" = weakref.WeakSet()


class ThreadRenewer:
    """The renewals and guard of one blocking manager (``mgr.lease_renewer``)."""

    def __init__(self, mgr: Any) -> None:
        self.mgr = mgr
        self.cond = threading.Condition()
        self.leases: Set[Lease] = set()
        self.thread: Optional[threading.Thread] = None
        self.closed = False
        self.renewals = 0
        self.renewal_failures = 0
        self.lost = 0
        self.pid = os.getpid()
        _all_renewers.add(self)

    def add(self, lease: Lease) -> None:
        with self.cond:
            if self.closed:
                raise RuntimeError("LockManager is closed")
            self.leases.add(lease)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="quorumlock-renewer", daemon=True)
                self.thread.start()
            self.cond.notify()

    def discard(self, lease: Lease) -> None:
        with self.cond:
            self.leases.discard(lease)

    def stats(self) -> dict:
        with self.cond:
            leases = list(self.leases)
        return {
            "watched": len(leases),
            "auto_extended": sum(1 for ls in leases if ls.auto_extend),
            "renewals": self.renewals,
            "renewal_failures": self.renewal_failures,
            "lost": self.lost,
        }

    def close(self, wait: float = 2.0) -> None:
        with self.cond:
            self.closed = True
            self.leases.clear()
            self.cond.notify_all()
            t = self.thread
        if t is not None and t is not threading.current_thread() and t.is_alive():
            t.join(wait)

    def _after_fork(self) -> None:
        # The thread did not survive the fork, and the parent's leases are not
        # the child's to renew.
        self.cond = threading.Condition()
        self.leases = set()
        self.thread = None
        self.pid = os.getpid()

    # -- the thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                lost: List[Tuple[Lease, str]] = []
                batch: List[Tuple[Lease, int]] = []
                with self.cond:
                    if self.closed:
                        return
                    now = _now_ns()
                    p = _policy.plan(self.leases, now, self.mgr.options.drift_factor)
                    for lease in p.drop:
                        self.leases.discard(lease)
                    for lease, _ in p.lost:
                        self.leases.discard(lease)
                    lost, batch, next_at = p.lost, p.renew, p.next_at
                    if not lost and not batch:
                        timeout = 5.0 if next_at is None else max(0.0, (next_at - now) / 1e9) + 0.0002
                        self.cond.wait(timeout)
                        continue
                for lease, reason in lost:
                    self._lose(lease, reason)
                if batch:
                    self._renew(batch)
        except Exception:  # pragma: no cover - must be loud, never silent
            log.exception("the renewal thread failed")
            with self.cond:
                leases, self.leases = list(self.leases), set()
            for lease in leases:
                self._lose(lease, "the renewal thread failed")

    def _renew(self, batch: List[Tuple[Lease, int]]) -> None:
        try:
            eng = self.mgr.checkout()
        except RuntimeError:   # the manager was closed
            for lease, _ in batch:
                lease.inflight = False
            return
        t0 = _now_ns()
        # Every extend is queued before the first wait: one write per node.
        ops = eng.extend_each_sync([lease.lock for lease, _ in batch], [t for _, t in batch])
        now = _now_ns()
        for (lease, _), op in zip(batch, ops):
            lease.inflight = False
            ok = op.result is True
            _metrics.record(self.mgr, "extend", (now - t0) / 1e9, ok)
            if lease.released or lease.reason is not None:
                self.discard(lease)
                continue
            if ok:
                self.renewals += 1
                _policy.renewed(lease, now, True, False)
                continue
            self.renewal_failures += 1
            lost = _policy.renewed(lease, now, False, refused_by_majority(op, self.mgr.n, self.mgr.quorum),
                                   describe_outcomes(op.outcomes()))
            if lost is not None:
                self.discard(lease)
                self._lose(lease, lost)
                continue
            log.debug("renewal of %r failed (%s); retrying", lease.lock.key, lease.last_failure)

    def _lose(self, lease: Lease, reason: str) -> None:
        if lease.reason is not None:
            return
        lease.reason = reason
        lease.auto_extend = False
        self.lost += 1
        _metrics.bump(self.mgr, "lost")
        lock = lease.lock
        log.warning("lease on %r lost: %s (validity left %.3f s)", lock.key, reason, lock.validity)
        lease.event.set()
        call_on_lost(lease)


def _reset_after_fork() -> None:
    for r in list(_all_renewers):
        r._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def renewer(mgr: Any) -> ThreadRenewer:
    r = getattr(mgr, "lease_renewer", None)
    if r is None or r.closed:
        with mgr.state_mutex:
            r = getattr(mgr, "lease_renewer", None)
            if r is None or r.closed:
                r = ThreadRenewer(mgr)
                mgr.lease_renewer = r
    return r


def guard(mgr: Any, lock: Any, *, auto_extend: bool = True, max_hold: Optional[float] = None,
          on_lost: Optional[Callable[..., Any]] = None, margin: Optional[float] = None,
          renew_fraction: float = DEFAULT_RENEW_FRACTION, cancel: bool = False, task: Any = None) -> Lease:
    """Watch ``lock`` (and renew it with ``auto_extend``).  ``cancel`` and
    ``task`` are accepted for symmetry with the asyncio API and ignored: a
    thread cannot be cancelled; use ``lock.lost``, ``lock.check()`` or
    ``on_lost``."""
    renew_fraction = check_fraction("renew_fraction", renew_fraction)
    max_hold = check_opt_seconds("max_hold", max_hold)
    margin = check_opt_seconds("margin", margin)
    if on_lost is not None and not callable(on_lost):
        raise TypeError(f"on_lost must be callable, got {on_lost!r}")
    r = renewer(mgr)
    old = lock._state
    event = old.event if isinstance(old, Lease) else threading.Event()
    if isinstance(old, Lease):
        r.discard(old)
    lease = Lease(mgr, lock, ttl_ms=int(round(lock.ttl * 1000)), auto_extend=auto_extend,
                  renew_fraction=renew_fraction, max_hold=max_hold, margin=margin, on_lost=on_lost,
                  event=event, now_ns=_now_ns())
    lease.in_body = True
    lock._state = lease
    if not lock.released:
        r.add(lease)
    return lease


def lost_event(mgr: Any, lock: Any) -> threading.Event:
    st = lock._state
    if isinstance(st, Lease):
        return st.event
    return guard(mgr, lock, auto_extend=False).event


class LeaseContext:
    """``with locks.lock(key, auto_extend=True, ...) as lock:`` — see
    ``quorumlock.LockManager.lock``.  On exit the lock is released; if the
    lease was lost during the block (and the block raised nothing else),
    ``LockLost`` is raised."""

    __slots__ = ("_mgr", "_key", "_ttl", "_timeout", "_retry", "_wait", "_opts", "_lock", "_lease")

    def __init__(self, mgr: Any, key: Any, ttl: Any, timeout: Any, retry: Any, wait: Any, **opts: Any) -> None:
        self._mgr = mgr
        self._key = key
        self._ttl = ttl
        self._timeout = timeout
        self._retry = retry
        self._wait = wait
        guarded = opts.pop("_guarded", True)
        opts.pop("cancel", None)
        self._opts: Any = opts if guarded else None
        self._lock: Any = None
        self._lease: Optional[Lease] = None

    def __enter__(self) -> Any:
        lock = self._mgr.acquire(self._key, self._ttl, timeout=self._timeout, retry_count=self._retry,
                                 wait=self._wait)
        self._lock = lock
        if self._opts is None:
            return lock
        try:
            self._lease = guard(self._mgr, lock, **self._opts)
        except BaseException:
            self._mgr.release_lock(lock)
            raise
        return lock

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        lock, self._lock = self._lock, None
        lease, self._lease = self._lease, None
        if lock is None:
            return
        if lease is not None:
            lease.in_body = False
            r = self._mgr.lease_renewer
            if r is not None:
                r.discard(lease)
        self._mgr.release_lock(lock)
        if lease is not None and lease.reason is not None and exc_type is None:
            raise lost_error(lock, lease)


# -- acquiring -----------------------------------------------------------------


def acquire(mgr: Any, key: Any, ttl: Any, *, timeout: Optional[float], retry_count: Optional[int],
            wait: Optional[str]) -> Any:
    """The blocking twin of ``quorumlock.leases._async.acquire``."""
    from ._async import _kb, resolve_wait

    mode = resolve_wait(mgr, wait)
    ttl_ms = mgr.ttl_ms(ttl)
    retry = _policy.from_options(mgr.options, timeout=timeout, retry_count=retry_count, now=time.monotonic())
    n, quorum = mgr.n, mgr.quorum
    m = mgr.meter
    mutex = m.mutex if m is not None else None
    t_start = _now_ns()
    op: Any = None
    watch: Any = None
    sub: Any = None
    woke = threading.Event()

    def observe(name: str, dt: float, ok: bool) -> None:
        if m is not None:
            with mutex:  # type: ignore[union-attr]
                m.observe(name, dt, ok)

    def attempt() -> Optional[Any]:
        nonlocal op
        if watch is not None:
            watch.mark()
            woke.clear()
        t0 = _now_ns()
        op = mgr.attempt_op(key, ttl_ms)
        lock = op.result
        observe("acquire", (_now_ns() - t0) / 1e9, lock is not None)
        if lock is None and retry.attempts == 0:
            _metrics.bump(mgr, "waits")
        return lock

    def wait_for_release(delay: float) -> bool:
        nonlocal watch, sub
        if mode == "notify" and sub is None:
            from .notify import thread_subscriber

            sub = thread_subscriber(mgr)
            try:
                watch = sub.watch(_kb(key), woke.set)
            except Exception as exc:
                log.debug("cannot subscribe for %r: %r; polling", key, exc)
                watch = None
            if watch is not None:
                return True
        if watch is None:
            time.sleep(delay)
            return False
        held = {i for i, o in enumerate(op.outcomes()) if o.status in ("held", "pending")}
        end = time.monotonic() + delay
        while len(held - watch.freed) > n - quorum:
            left = end - time.monotonic()
            if left <= 0 or not woke.wait(left):
                break
            woke.clear()
        else:
            _metrics.bump(mgr, "notified")
        return False

    try:
        lock = _policy.run_blocking(attempt, retry, wait=wait_for_release)
    finally:
        if watch is not None and sub is not None:
            sub.unwatch(watch)
    if lock is not None:
        if m is not None:
            with mutex:  # type: ignore[union-attr]
                m.held += 1
                m.observe("acquire_wait", (_now_ns() - t_start) / 1e9, True)
        return lock
    observe("acquire_wait", (_now_ns() - t_start) / 1e9, False)
    raise LockTimeout(key, retry.attempts, op.outcomes())
