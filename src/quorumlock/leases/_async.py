"""Auto-extension, the lost-lease guard and waiting, for ``quorumlock.aio``.

One ``AsyncRenewer`` per manager.  It is not a task: it is one loop timer,
armed for the earliest moment any watched lease needs something (a renewal,
or its guard moment).  When it fires, every lease that is due is extended in
the same loop iteration, so the engine's auto-pipelining puts all of them in
one write per node; the results come back through the futures' callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any, Callable, Optional, Set

from .. import _policy
from .. import metrics as _metrics
from ..errors import LockTimeout
from ._lease import (
    DEFAULT_RENEW_FRACTION, Lease, call_on_lost, check_fraction, check_lock, check_opt_seconds,
    describe_outcomes, lost_error, refused_by_majority,
)

log = logging.getLogger("quorumlock")
from .._clock import now_ns as _now_ns  # the lease clock (CLOCK_BOOTTIME)


class AsyncRenewer:
    """The renewals and guard of one asyncio manager (``mgr.lease_renewer``)."""

    def __init__(self, mgr: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.mgr = mgr
        self.loop = loop
        self.leases: Set[Lease] = set()
        self.timer: Any = None
        self.timer_at = 0
        self.tasks: Set[Any] = set()    # on_lost coroutines still running
        self.renewals = 0
        self.renewal_failures = 0
        self.lost = 0
        self.closed = False

    # -- registration ---------------------------------------------------------

    def add(self, lease: Lease) -> None:
        self.leases.add(lease)
        self._arm(min(lease.next_renew_ns if lease.auto_extend else lease.doom_ns, lease.doom_ns))

    def discard(self, lease: Lease) -> None:
        self.leases.discard(lease)

    def stats(self) -> dict:
        return {
            "watched": len(self.leases),
            "auto_extended": sum(1 for ls in self.leases if ls.auto_extend),
            "renewals": self.renewals,
            "renewal_failures": self.renewal_failures,
            "lost": self.lost,
        }

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.leases.clear()

    # -- the timer ------------------------------------------------------------

    def _arm(self, at_ns: int) -> None:
        if self.closed:
            return
        if self.timer is not None:
            if at_ns >= self.timer_at:
                return
            self.timer.cancel()
        self.timer_at = at_ns
        delay = max(0.0, (at_ns - _now_ns()) / 1e9)
        # +0.5 ms: uvloop's timers have millisecond resolution; never early.
        self.timer = self.loop.call_later(delay + 0.0005, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.closed:
            return
        now = _now_ns()
        eng = self.mgr.engine
        p = _policy.plan(self.leases, now, self.mgr.options.drift_factor, can_renew=eng is not None)
        for lease in p.drop:
            self.leases.discard(lease)
        for lease, reason in p.lost:
            self._lose(lease, reason)
        # All extends of this round are issued in this one loop iteration: the
        # engine writes them to each node with one transport.write.
        for lease, ttl_ms in p.renew:
            op = eng.extend_op(lease.lock, ttl_ms)
            op.waiter.add_done_callback(partial(self._extended, lease, op, _now_ns()))
        if p.next_at is not None:
            self._arm(p.next_at)

    def _extended(self, lease: Lease, op: Any, t0: int, fut: Any) -> None:
        lease.inflight = False
        if self.closed:
            return
        now = _now_ns()
        ok = not fut.cancelled() and fut.exception() is None and fut.result() is True
        _metrics.record(self.mgr, "extend", (now - t0) / 1e9, ok)
        if lease.released or lease.reason is not None:
            self.leases.discard(lease)
            return
        if ok:
            self.renewals += 1
            lost = _policy.renewed(lease, now, True, False)
        else:
            self.renewal_failures += 1
            lost = _policy.renewed(lease, now, False, refused_by_majority(op, self.mgr.n, self.mgr.quorum),
                                   describe_outcomes(op.outcomes()))
            if lost is not None:
                self._lose(lease, lost)
                return
            log.debug("renewal of %r failed (%s); retrying", lease.lock.key, lease.last_failure)
        self._arm(min(lease.next_renew_ns, lease.doom_ns)
                  if not lease.capped else lease.doom_ns)

    def _lose(self, lease: Lease, reason: str) -> None:
        self.leases.discard(lease)
        if lease.reason is not None:
            return
        lease.reason = reason
        lease.auto_extend = False
        self.lost += 1
        _metrics.bump(self.mgr, "lost")
        lock = lease.lock
        log.warning("lease on %r lost: %s (validity left %.3f s)", lock.key, reason, lock.validity)
        task = lease.task
        # Cancel first: the guarded work must stop before validity runs out.
        if lease.cancel and lease.in_body and task is not None and not task.done():
            lease.cancelled = True
            task.cancel(f"quorumlock: lease on {lock.key!r} lost: {reason}")
        if lease.event is not None:
            lease.event.set()
        call_on_lost(lease, self._spawn)

    def _spawn(self, coro: Any) -> None:
        t = self.loop.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self._task_done)

    def _task_done(self, t: Any) -> None:
        self.tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("on_lost callback raised", exc_info=t.exception())


def renewer(mgr: Any) -> AsyncRenewer:
    r = getattr(mgr, "lease_renewer", None)
    loop = asyncio.get_running_loop()
    if r is None or r.closed or r.loop is not loop:
        r = AsyncRenewer(mgr, loop)
        mgr.lease_renewer = r
    return r


def guard(mgr: Any, lock: Any, *, auto_extend: bool = True, max_hold: Optional[float] = None,
          on_lost: Optional[Callable[..., Any]] = None, margin: Optional[float] = None,
          renew_fraction: float = DEFAULT_RENEW_FRACTION, cancel: bool = False, task: Any = None) -> Lease:
    """Watch ``lock`` (and renew it with ``auto_extend``): the heart of
    ``LockManager.guard`` and of ``lock(..., auto_extend=True)``."""
    renew_fraction = check_fraction("renew_fraction", renew_fraction)
    max_hold = check_opt_seconds("max_hold", max_hold)
    margin = check_opt_seconds("margin", margin)
    if on_lost is not None and not callable(on_lost):
        raise TypeError(f"on_lost must be callable, got {on_lost!r}")
    r = renewer(mgr)
    old = lock._state
    event = old.event if isinstance(old, Lease) else asyncio.Event()
    if isinstance(old, Lease):
        r.discard(old)
    lease = Lease(mgr, lock, ttl_ms=int(round(lock.ttl * 1000)), auto_extend=auto_extend,
                  renew_fraction=renew_fraction, max_hold=max_hold, margin=margin, on_lost=on_lost,
                  event=event, now_ns=_now_ns())
    lease.cancel = cancel
    if cancel:
        lease.task = task if task is not None else asyncio.current_task()
        lease.in_body = True
    lock._state = lease
    if not lock.released:
        r.add(lease)
    return lease


def lost_event(mgr: Any, lock: Any) -> asyncio.Event:
    st = lock._state
    if isinstance(st, Lease):
        return st.event
    lease = guard(mgr, lock, auto_extend=False)
    return lease.event


class AsyncLeaseContext:
    """``async with locks.lock(key, auto_extend=True, ...) as lock:`` — see
    ``quorumlock.aio.LockManager.lock``."""

    __slots__ = ("_mgr", "_key", "_ttl", "_timeout", "_retry", "_wait", "_opts", "_lock", "_lease")

    def __init__(self, mgr: Any, key: Any, ttl: Any, timeout: Any, retry: Any, wait: Any, **opts: Any) -> None:
        self._mgr = mgr
        self._key = key
        self._ttl = ttl
        self._timeout = timeout
        self._retry = retry
        self._wait = wait
        guarded = opts.pop("_guarded", True)
        self._opts: Any = opts if guarded else None
        self._lock: Any = None
        self._lease: Optional[Lease] = None

    async def __aenter__(self) -> Any:
        lock = await self._mgr.acquire(self._key, self._ttl, timeout=self._timeout, retry_count=self._retry,
                                       wait=self._wait)
        self._lock = lock
        if self._opts is None:
            return lock
        try:
            self._lease = guard(self._mgr, lock, **self._opts)
        except BaseException:
            await asyncio.shield(self._mgr.release_lock(lock))
            raise
        return lock

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        lock, self._lock = self._lock, None
        lease, self._lease = self._lease, None
        if lock is None:
            return
        if lease is not None:
            lease.in_body = False
            r = self._mgr.lease_renewer
            if r is not None:
                r.discard(lease)
        # Shielded: a cancelled block still releases.
        await asyncio.shield(self._mgr.release_lock(lock))
        if lease is None or lease.reason is None:
            return
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and lease.cancelled:
            task = asyncio.current_task()
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None and uncancel() > 0:
                return   # somebody else cancelled this task too: let it propagate
            raise lost_error(lock, lease) from exc
        if exc_type is None:
            raise lost_error(lock, lease)


# -- acquiring: polling with metrics, or waiting for release notifications ------


async def acquire(mgr: Any, key: Any, ttl: Any, *, timeout: Optional[float], retry_count: Optional[int],
                  wait: Optional[str]) -> Any:
    """``LockManager.acquire`` when ``wait``/``notify``/``metrics`` ask for more
    than the plain polling loop: the same attempts and jittered delays, plus
    per-attempt metrics, and with ``wait="notify"`` a subscription on every
    node that starts the next attempt as soon as a majority of the nodes that
    held the key reported it free (a release, a DEL, an expiry).  The jittered
    delay bounds every wait, so a missed message costs at most one polling
    interval, never a hang."""
    from ..aio import receive as _receive

    mode = resolve_wait(mgr, wait)
    eng = mgr.checkout()
    ttl_ms = mgr.ttl_ms(ttl)
    retry = _policy.from_options(mgr.options, timeout=timeout, retry_count=retry_count, now=time.monotonic())
    n, quorum = mgr.n, mgr.quorum
    m = mgr.meter
    t_start = _now_ns()
    op: Any = None
    watch: Any = None
    sub: Any = None
    woke = asyncio.Event()

    async def attempt() -> Optional[Any]:
        nonlocal op
        if watch is not None:
            watch.mark()
            woke.clear()
        t0 = _now_ns()
        op = eng.attempt(key, ttl_ms)
        # Cancelled after the grant: the lock is released (quorumlock.aio.receive).
        lock = await _receive(eng, op.waiter)
        if m is not None:
            m.observe("acquire", (_now_ns() - t0) / 1e9, lock is not None)
            if lock is None and retry.attempts == 0:
                m.waits += 1
        return lock

    async def wait_for_release(delay: float) -> bool:
        nonlocal watch, sub
        if mode == "notify" and sub is None:
            # Subscribe after the first failed attempt, then retry at once:
            # a release between that attempt and the subscription is
            # covered by the retry, every later one by a message.
            from .notify import async_subscriber

            sub = async_subscriber(mgr)
            try:
                watch = await sub.watch(_kb(key), woke.set)
            except Exception as exc:  # no subscription: plain polling
                log.debug("cannot subscribe for %r: %r; polling", key, exc)
                watch = None
            if watch is not None:
                return True
        if watch is None:
            await asyncio.sleep(delay)
            return False
        held = {i for i, o in enumerate(op.outcomes()) if o.status in ("held", "pending")}
        end = time.monotonic() + delay
        while len(held - watch.freed) > n - quorum:
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(woke.wait(), left)
            except asyncio.TimeoutError:
                break
            woke.clear()
        else:
            if m is not None:
                m.notified += 1
        return False

    try:
        lock = await _policy.run_async(attempt, retry, wait=wait_for_release)
    finally:
        if watch is not None and sub is not None:
            sub.unwatch(watch)
    if lock is not None:
        if m is not None:
            m.held += 1
            m.observe("acquire_wait", (_now_ns() - t_start) / 1e9, True)
        return lock
    if m is not None:
        m.observe("acquire_wait", (_now_ns() - t_start) / 1e9, False)
    raise LockTimeout(key, retry.attempts, op.outcomes())


def _kb(key: Any) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def resolve_wait(mgr: Any, wait: Optional[str]) -> str:
    if wait is None:
        return "notify" if mgr.notify else "poll"
    if wait not in ("poll", "notify"):
        raise ValueError(f"wait must be 'poll' or 'notify', got {wait!r}")
    return wait


def check(mgr: Any, lock: Any) -> float:
    return check_lock(lock)
