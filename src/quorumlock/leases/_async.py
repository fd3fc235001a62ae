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
import random
import time
from functools import partial
from typing import Any, Callable, Optional, Set

from .. import metrics as _metrics
from .._config import check_int, check_seconds
from ..errors import LockTimeout
from ._lease import (
    DEFAULT_RENEW_FRACTION, Lease, call_on_lost, check_fraction, check_lock, check_opt_seconds,
    describe_outcomes, lost_error, refused_by_majority,
)

log = logging.getLogger("quorumlock")
from .._clock import now_ns as _now_ns  # the lease clock (CLOCK_BOOTTIME)


class AsyncRenewer:
    """The renewals and guard of one asyncio manager (``mgr._leases``)."""

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
        eng = self.mgr._engine
        next_at: Optional[int] = None
        batch = []
        for lease in list(self.leases):
            lock = lease.lock
            if lock.released or lease.reason is not None:
                self.leases.discard(lease)
                continue
            doom = lease.doom_ns
            if now >= doom:
                self._lose(lease, lease.doom_reason(now))
                continue
            t = doom
            if lease.due(now) and eng is not None:
                ttl_ms = lease.renew_ttl_ms(now, self.mgr.options.drift_factor)
                if ttl_ms is not None:
                    batch.append((lease, ttl_ms))
            elif lease.auto_extend and not lease.inflight and not lease.capped:
                t = min(t, lease.next_renew_ns)
            next_at = t if next_at is None else min(next_at, t)
        # All extends of this round are issued in this one loop iteration: the
        # engine writes them to each node with one transport.write.
        for lease, ttl_ms in batch:
            lease.inflight = True
            op = eng.extend_op(lease.lock, ttl_ms)
            op.waiter.add_done_callback(partial(self._extended, lease, op, _now_ns()))
        if next_at is not None:
            self._arm(next_at)

    def _extended(self, lease: Lease, op: Any, t0: int, fut: Any) -> None:
        lease.inflight = False
        if self.closed:
            return
        now = _now_ns()
        ok = not fut.cancelled() and fut.exception() is None and fut.result() is True
        _metrics.record(self.mgr, "extend", (now - t0) / 1e9, ok)
        lock = lease.lock
        if lock.released or lease.reason is not None:
            self.leases.discard(lease)
            return
        if ok:
            self.renewals += 1
            lease.renewals += 1
            lease.failures = 0
            lease.next_renew_ns = now + lease.renew_every_ns
        else:
            self.renewal_failures += 1
            lease.failures += 1
            lease.last_failure = describe_outcomes(op.outcomes())
            if refused_by_majority(op, self.mgr.n, self.mgr.quorum):
                self._lose(lease, f"renewal refused: the key is not ours on a majority ({lease.last_failure})")
                return
            # Nodes did not answer (down, timeout): try again soon, until the
            # guard moment decides.
            lease.next_renew_ns = now + max(lease.renew_every_ns // 8, 10_000_000)
            log.debug("renewal of %r failed (%s); retrying", lock.key, lease.last_failure)
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
    r = getattr(mgr, "_leases", None)
    loop = asyncio.get_running_loop()
    if r is None or r.closed or r.loop is not loop:
        r = AsyncRenewer(mgr, loop)
        mgr._leases = r
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
            await asyncio.shield(self._mgr._release(lock))
            raise
        return lock

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        lock, self._lock = self._lock, None
        lease, self._lease = self._lease, None
        if lock is None:
            return
        if lease is not None:
            lease.in_body = False
            r = self._mgr._leases
            if r is not None:
                r.discard(lease)
        # Shielded: a cancelled block still releases.
        await asyncio.shield(self._mgr._release(lock))
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
    eng = mgr._require()
    ttl_ms = mgr._ttl_ms(ttl)
    attempts_left: Optional[int] = None
    deadline: Optional[float] = None
    if timeout is not None:
        deadline = time.monotonic() + check_seconds("timeout", timeout, allow_zero=True)
    else:
        attempts_left = check_int("retry_count", mgr.options.retry_count if retry_count is None else retry_count,
                                  minimum=1)
    lo, hi = mgr.options.retry_delay
    n, quorum = mgr.n, mgr.quorum
    m = getattr(mgr, "_metrics", None)
    t_start = _now_ns()
    attempts = 0
    watch = None
    sub = None
    woke = asyncio.Event()
    try:
        while True:
            if watch is not None:
                watch.mark()
                woke.clear()
            t0 = _now_ns()
            op = eng.attempt(key, ttl_ms)
            attempts += 1
            # Cancelled after the grant: the lock is released (quorumlock.aio.receive).
            lock = await _receive(eng, op.waiter)
            if m is not None:
                m.observe("acquire", (_now_ns() - t0) / 1e9, lock is not None)
            if lock is not None:
                if m is not None:
                    m.held += 1
                    m.observe("acquire_wait", (_now_ns() - t_start) / 1e9, True)
                return lock
            if attempts == 1 and m is not None:
                m.waits += 1
            if attempts_left is not None:
                attempts_left -= 1
                if attempts_left <= 0:
                    break
            delay = random.uniform(lo, hi)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                delay = min(delay, left)
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
                    continue
            if watch is None:
                await asyncio.sleep(delay)
            else:
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
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        if watch is not None and sub is not None:
            sub.unwatch(watch)
    if m is not None:
        m.observe("acquire_wait", (_now_ns() - t_start) / 1e9, False)
    raise LockTimeout(key, attempts, op.outcomes())


def _kb(key: Any) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def resolve_wait(mgr: Any, wait: Optional[str]) -> str:
    if wait is None:
        return "notify" if getattr(mgr, "_notify", False) else "poll"
    if wait not in ("poll", "notify"):
        raise ValueError(f"wait must be 'poll' or 'notify', got {wait!r}")
    return wait


def check(mgr: Any, lock: Any) -> float:
    return check_lock(lock)
