"""The retry and lease policy, without I/O.

Every caller that retries an acquire (both managers, the lease drivers,
``jobs``, the semaphores, the compat classes) and both renewers make their
decisions here; they only do the I/O (an attempt, a sleep, an extend) and
report back.  Nothing in this module reads a clock or a socket: the time is
passed in, and the jitter comes from an injectable ``uniform``, so the
decisions can be tested exactly (tests/test_policy.py).

Acquire::

    r = Retry(attempts=3, timeout=None, delay=(0.1, 0.3), now=monotonic())
    while True:
        result = attempt()                 # I/O
        if result is not None:
            return result
        d = r.failed(monotonic())          # seconds to wait, or None: give up
        if d is None or not r.woke(sleep(d) or monotonic()):
            raise LockTimeout(key, r.attempts, ...)

``run_async`` and ``run_blocking`` are that loop, once per face.

Leases: ``plan`` says, for the leases a renewer watches, which to forget,
which are lost, which to renew now (with what TTL) and when to wake next;
``renewed`` records an extend's result and says whether the lease is lost.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import (
    Any, Awaitable, Callable, Iterable, List, NamedTuple, Optional, Protocol, Tuple, TypeVar, Union,
)

from ._config import check_int, check_seconds

__all__ = [
    "Retry", "from_options", "run_async", "run_blocking",
    "LeaseState", "Plan", "plan", "renewed", "RETRY_SOON_NS",
]

T = TypeVar("T")
Uniform = Callable[[float, float], float]

#: After a renewal that reached no decision (nodes down or slow), the next
#: one goes out after an eighth of the renewal interval, at least this long.
RETRY_SOON_NS = 10_000_000


class Retry:
    """The state of one acquire's retries.

    ``attempts``: how many attempts to make when there is no ``timeout``
    (at least 1); ``timeout``: seconds from ``now`` after which no attempt
    starts (``attempts`` is then ignored, as in ``LockManager.acquire``);
    ``delay``: the ``(low, high)`` range each wait is drawn from uniformly,
    cut to the time left before the deadline; ``linear``: the n-th wait is
    drawn from ``(n * low, n * high)`` (split-vote retries that spread out).
    """

    __slots__ = ("attempts", "attempts_left", "deadline", "low", "high", "uniform", "linear", "stopped", "cut")

    def __init__(self, *, attempts: Optional[int], timeout: Optional[float],
                 delay: Tuple[float, float], now: float, uniform: Uniform = random.uniform,
                 linear: bool = False) -> None:
        self.attempts = 0
        self.linear = linear
        self.stopped = False
        self.cut = True
        low, high = delay
        if not 0.0 <= low <= high:
            raise ValueError(f"delay must be a (low, high) range with 0 <= low <= high, got {delay!r}")
        self.low = float(low)
        self.high = float(high)
        self.uniform = uniform
        if timeout is not None:
            self.deadline: Optional[float] = now + check_seconds("timeout", timeout, allow_zero=True)
            self.attempts_left: Optional[int] = None
        else:
            self.deadline = None
            self.attempts_left = check_int("retry_count", attempts, minimum=1)

    @classmethod
    def fixed(cls, sleep: float, *, timeout: Optional[float], now: float, once: bool = False) -> "Retry":
        """redis-py's acquire loop (``quorumlock.compat.redis_py``): wait
        ``sleep`` between attempts, forever, or until the next attempt would
        start after ``timeout``; ``once``: a single attempt.  The values are
        the caller's, checked as the peer checks them (not here)."""
        return cls._make(1 if once else None, None if timeout is None else now + timeout, (sleep, sleep), cut=False)

    @classmethod
    def until(cls, timeout: Optional[float], *, delay: Tuple[float, float], now: float,
              uniform: Uniform = random.uniform) -> "Retry":
        """Attempts until ``timeout`` seconds from ``now`` have passed
        (None: forever), waits drawn from ``delay`` (pottery's loop)."""
        lo, hi = delay
        return cls._make(None, None if timeout is None else now + timeout, (min(lo, hi), max(lo, hi)),
                         uniform=uniform)

    @classmethod
    def _make(cls, attempts_left: Optional[int], deadline: Optional[float], delay: Tuple[float, float], *,
              cut: bool = True, uniform: Uniform = random.uniform) -> "Retry":
        r = cls.__new__(cls)
        r.attempts = 0
        r.attempts_left = attempts_left
        r.deadline = deadline
        r.low, r.high = delay
        r.uniform = uniform
        r.linear = False
        r.stopped = False
        r.cut = cut
        return r

    def failed(self, now: float) -> Optional[float]:
        """An attempt failed at ``now``: the seconds to wait before the next
        one, or None to give up (the attempts are used up, or the deadline
        has passed)."""
        self.attempts += 1
        if self.stopped:
            return None
        if self.attempts_left is not None:
            self.attempts_left -= 1
            if self.attempts_left <= 0:
                return None
        d = self.low if self.low == self.high else self.uniform(self.low, self.high)
        if self.linear:
            d *= self.attempts
        if self.deadline is not None:
            if not self.cut:
                # The whole wait or none: no attempt after the deadline
                # (``now + d``, as redis-py computes it: the same float).
                return None if now + d > self.deadline else d
            left = self.deadline - now
            if left <= 0:
                return None
            d = min(d, left)
        return d

    def clock_at_failure(self) -> bool:
        """Whether ``failed`` needs the time (the drivers read the clock only
        then).  redis-py reads it at every failed blocking attempt, so
        ``Retry.fixed`` does too: a fake clock sees the same reads."""
        if self.stopped or (self.attempts_left is not None and self.attempts_left <= 1):
            return False
        return self.deadline is not None or not self.cut

    def clock_after_wait(self) -> bool:
        """Whether ``woke`` needs the time."""
        return self.deadline is not None and self.cut

    def give_up(self) -> None:
        """No more attempts: the caller learnt that none can succeed (the
        next ``failed`` returns None)."""
        self.stopped = True

    def woke(self, now: float) -> bool:
        """The wait ended at ``now``: True to attempt again.  An attempt
        starting at the deadline could not finish before it, so none is made."""
        return self.deadline is None or not self.cut or now < self.deadline


def from_options(options: object, *, timeout: Optional[float], retry_count: Optional[int],
                 now: float, uniform: Uniform = random.uniform) -> Retry:
    """The ``Retry`` of ``LockManager.acquire``: ``timeout`` if given, else
    ``retry_count`` (default: the manager's), delays from its ``retry_delay``."""
    opts: _RetryOptions = options  # type: ignore[assignment]
    return Retry(attempts=opts.retry_count if retry_count is None else retry_count, timeout=timeout,
                 delay=opts.retry_delay, now=now, uniform=uniform)


class _RetryOptions(Protocol):
    retry_count: int
    retry_delay: Tuple[float, float]


async def run_async(attempt: Callable[[], Awaitable[Optional[T]]], retry: Retry, *,
                    wait: Optional[Callable[[float], Awaitable[Optional[bool]]]] = None,
                    clock: Callable[[], float] = time.monotonic) -> Optional[T]:
    """Attempt until a result, or None once ``retry`` gives up.  ``wait(d)``
    (default ``asyncio.sleep``) waits at most ``d`` seconds; if it returns
    True the next attempt starts at once, without the deadline check."""
    while True:
        result = await attempt()
        if result is not None:
            return result
        d = retry.failed(clock() if retry.clock_at_failure() else 0.0)
        if d is None:
            return None
        if wait is None:
            await asyncio.sleep(d)
        elif await wait(d):
            continue
        if retry.clock_after_wait() and not retry.woke(clock()):
            return None


def run_blocking(attempt: Callable[[], Optional[T]], retry: Retry, *,
                 wait: Optional[Callable[[float], Optional[bool]]] = None,
                 clock: Callable[[], float] = time.monotonic) -> Optional[T]:
    """The blocking twin of ``run_async`` (``wait`` defaults to ``time.sleep``)."""
    while True:
        result = attempt()
        if result is not None:
            return result
        d = retry.failed(clock() if retry.clock_at_failure() else 0.0)
        if d is None:
            return None
        if wait is None:
            time.sleep(d)
        elif wait(d):
            continue
        if retry.clock_after_wait() and not retry.woke(clock()):
            return None


# -- leases -------------------------------------------------------------------


class LeaseState(Protocol):
    """What the lease policy reads and writes on a lease
    (``quorumlock.leases._lease.Lease``)."""

    reason: Optional[str]
    auto_extend: bool
    inflight: bool
    capped: bool
    next_renew_ns: int
    renew_every_ns: int
    renewals: int
    failures: int
    last_failure: Optional[str]

    @property
    def doom_ns(self) -> int: ...

    @property
    def released(self) -> bool: ...

    def due(self, now: int) -> bool: ...

    def renew_ttl_ms(self, now: int, drift_factor: float) -> Optional[int]: ...

    def doom_reason(self, now: int) -> str: ...


L = TypeVar("L", bound=LeaseState)


class Plan(NamedTuple):
    """One renewer round: leases to forget (released, or lost before), leases
    lost now with the reason, renewals to send now ``(lease, ttl_ms)``, and
    the monotonic ns of the next round (None: nothing left to watch)."""

    drop: List[Any]
    lost: List[Tuple[Any, str]]
    renew: List[Tuple[Any, int]]
    next_at: Optional[int]


def plan(leases: Iterable[L], now: int, drift_factor: float, can_renew: bool = True) -> Plan:
    """Decide one round of a renewer at ``now`` (ns).  ``can_renew``: False
    while the manager has no engine (renewals wait; the guard still acts).
    Each renewal returned is marked in flight."""
    drop: List[Any] = []
    lost: List[Tuple[Any, str]] = []
    renew: List[Tuple[Any, int]] = []
    next_at: Optional[int] = None
    for lease in leases:
        if lease.released or lease.reason is not None:
            drop.append(lease)
            continue
        doom = lease.doom_ns
        if now >= doom:
            lost.append((lease, lease.doom_reason(now)))
            continue
        t = doom
        if lease.due(now) and can_renew:
            ttl_ms = lease.renew_ttl_ms(now, drift_factor)
            if ttl_ms is not None:
                lease.inflight = True
                renew.append((lease, ttl_ms))
        elif lease.auto_extend and not lease.inflight and not lease.capped:
            t = min(t, lease.next_renew_ns)
        next_at = t if next_at is None else min(next_at, t)
    return Plan(drop, lost, renew, next_at)


def renewed(lease: LeaseState, now: int, ok: bool, refused: bool, failure: Union[str, None] = None) -> Optional[str]:
    """Record an extend's result at ``now`` (ns): ``ok`` (a quorum extended
    it), else ``refused`` (the replies prove the key is not ours on enough
    nodes that no retry can succeed) and ``failure`` (what the nodes said).
    Returns the reason the lease is lost, or None (renewed, or to be retried
    soon: ``next_renew_ns`` is set either way)."""
    lease.inflight = False
    if ok:
        lease.renewals += 1
        lease.failures = 0
        lease.next_renew_ns = now + lease.renew_every_ns
        return None
    lease.failures += 1
    lease.last_failure = failure
    if refused:
        return f"renewal refused: the key is not ours on a majority ({failure})"
    lease.next_renew_ns = now + max(lease.renew_every_ns // 8, RETRY_SOON_NS)
    return None
