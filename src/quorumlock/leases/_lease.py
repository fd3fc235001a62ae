"""What the asyncio and the thread renewers share: the per-lock lease state
(kept in ``Lock._state``), the renewal arithmetic and the loss decision."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional

from .._backend import core as _default_core
from ..errors import LockLost, LockNotOwned

log = logging.getLogger("quorumlock")

#: Renew when this fraction of the TTL has passed since the last renewal (§5).
DEFAULT_RENEW_FRACTION = 1.0 / 3.0

_monotonic_ns = _default_core.monotonic_ns


def check_fraction(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < 1):
        raise ValueError(f"{name} must be a number in (0, 1), got {v!r}")
    return float(v)


def check_opt_seconds(name: str, v: Any) -> Optional[float]:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number of seconds or None, got {v!r}")
    return float(v)


def default_margin_ns(mgr: Any, ttl_ms: int) -> int:
    """The guard's safety margin: the lease is declared lost (and the guarded
    task cancelled) this long before its validity runs out.  Two node
    timeouts (a renewal that was sent may still be deciding) or 5 % of the
    TTL, whichever is larger, and at most a quarter of the TTL."""
    node_timeout = mgr.options.node_timeout
    m = max(2.0 * node_timeout, 0.05 * ttl_ms / 1000.0)
    return int(min(m, ttl_ms / 4000.0) * 1e9)


class Lease:
    """Lease state of one held lock (``lock._state``)."""

    __slots__ = (
        "lock", "mgr", "ttl_ms", "auto_extend", "renew_every_ns", "hold_until_ns", "margin_ns",
        "on_lost", "event", "reason", "task", "cancel", "in_body", "cancelled", "next_renew_ns",
        "inflight", "failures", "last_failure", "capped", "renewals", "__weakref__",
    )

    def __init__(self, mgr: Any, lock: Any, *, ttl_ms: int, auto_extend: bool, renew_fraction: float,
                 max_hold: Optional[float], margin: Optional[float], on_lost: Optional[Callable[..., Any]],
                 event: Any, now_ns: int) -> None:
        self.lock = lock
        self.mgr = mgr
        self.ttl_ms = ttl_ms
        self.auto_extend = auto_extend
        self.renew_every_ns = max(1_000_000, int(ttl_ms * 1e6 * renew_fraction))
        self.hold_until_ns = None if max_hold is None else now_ns + int(max_hold * 1e9)
        self.margin_ns = default_margin_ns(mgr, ttl_ms) if margin is None else int(margin * 1e9)
        if self.margin_ns * 1e-6 >= ttl_ms:
            raise ValueError(f"margin ({margin} s) must be shorter than the ttl ({ttl_ms / 1000.0} s)")
        self.on_lost = on_lost
        self.event = event
        self.reason: Optional[str] = None
        self.task: Any = None
        self.cancel = False
        self.in_body = False
        self.cancelled = False
        self.next_renew_ns = now_ns + self.renew_every_ns
        self.inflight = False
        self.failures = 0
        self.last_failure: Optional[str] = None
        self.capped = False       # max_hold decides the end: no more renewals
        self.renewals = 0

    @property
    def released(self) -> bool:
        """The lock was released (the lease needs no more watching)."""
        return bool(self.lock.released)

    @property
    def doom_ns(self) -> int:
        """Monotonic ns at which the guard declares the lease lost."""
        return self.lock.deadline_ns - self.margin_ns

    def due(self, now: int) -> bool:
        """A renewal should go out now.  Coalescing: the renewer wakes when
        the first lease is due, and every lease due within half of its
        interval joins that round (renewed a little early), so that locks
        held together are renewed together: one write per node per round.
        Half, not less: two groups of leases split by a stall (their replies
        read in loop iterations far apart on a loaded machine) are then
        always merged at the next round; with a third, groups 1/3 to 2/3 of
        an interval apart never merged (seen: 200 leases renewed as 178 + 22
        in every round)."""
        return (self.auto_extend and not self.inflight and not self.capped
                and self.next_renew_ns - now <= self.renew_every_ns // 2)

    def renew_ttl_ms(self, now: int, drift_factor: float) -> Optional[int]:
        """TTL of the next renewal, or None when ``max_hold`` makes further
        renewals pointless (the current lease already reaches it).  With
        ``max_hold``, the last renewal is cut so that the guard's moment
        (validity end - margin) falls at ``acquired + max_hold``."""
        if self.hold_until_ns is None:
            return self.ttl_ms
        want_end = self.hold_until_ns + self.margin_ns
        if self.lock.deadline_ns >= want_end:
            self.capped = True
            return None
        # validity end = start + ttl - (ttl * drift_factor + 2 ms)
        need_ms = ((want_end - now) / 1e6 + 2.0) / (1.0 - drift_factor)
        ttl = int(math.ceil(need_ms))
        if ttl >= self.ttl_ms:
            return self.ttl_ms
        self.capped = True
        return max(ttl, 1)

    def doom_reason(self, now: int) -> str:
        if self.hold_until_ns is not None and now + 1_000_000 >= self.hold_until_ns and self.failures == 0:
            return "max_hold reached"
        if self.failures:
            return (f"renewal did not reach a quorum in time ({self.failures} failed attempt(s); "
                    f"last: {self.last_failure})")
        if not self.auto_extend:
            return "validity ran out (no auto-extension)"
        return "validity ran out before a renewal decided"


def describe_outcomes(outcomes: Any) -> str:
    counts: dict = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items())


def refused_by_majority(op: Any, n: int, quorum: int) -> bool:
    """True when the extend's replies prove the key is not ours on enough
    nodes that no retry can reach a quorum (another token holds it, or it
    expired and was not resurrected)."""
    held = sum(1 for o in op.outcomes() if o.status == "held")
    return held > n - quorum


def check_lock(lock: Any) -> float:
    """``lock.check()``: raise ``LockLost`` if the lease is lost or its
    validity ran out, ``LockNotOwned`` if it was released; otherwise return
    the validity left (seconds)."""
    st = lock._state
    if isinstance(st, Lease) and st.reason is not None:
        raise LockLost(f"lease on {lock.key!r} lost: {st.reason}")
    if lock.released:
        raise LockNotOwned(f"lock on {lock.key!r} was released")
    v = lock.validity
    if v <= 0.0:
        raise LockLost(f"lease on {lock.key!r} lost: validity ran out")
    if isinstance(st, Lease) and lock.deadline_ns - st.margin_ns <= _monotonic_ns():
        raise LockLost(f"lease on {lock.key!r} lost: within the safety margin of its end")
    return v


def lost_error(lock: Any, lease: Lease) -> LockLost:
    return LockLost(f"lease on {lock.key!r} lost: {lease.reason}")


def call_on_lost(lease: Lease, spawn: Optional[Callable[[Any], Any]] = None) -> None:
    cb = lease.on_lost
    if cb is None:
        return
    try:
        r = cb(lease.lock, lease.reason)
        if r is not None and hasattr(r, "__await__") and spawn is not None:
            spawn(r)
    except Exception:
        log.exception("on_lost callback for %r raised", lease.lock.key)
