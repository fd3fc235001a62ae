"""Leases people can live with (docs/schedulers.md): auto-extension, lost-lease
events, and waiting for a release without polling.

Used through the managers::

    async with locks.lock("job", ttl=10, auto_extend=True, max_hold=600,
                          on_lost=lambda lock, why: ...) as lock:
        ...                      # renewed every ttl/3; cancelled before validity
                                 # runs out if the lease is lost -> LockLost
    lock = await locks.acquire("job", wait="notify")   # wakes on release
    locks.guard(lock, auto_extend=True)                # any held lock
    lock.lost                                          # asyncio.Event / threading.Event
    lock.check()                                       # LockLost, or validity left

Auto-extension
    Every manager has one renewer (asyncio: one loop timer; blocking: one
    daemon thread with its own connection set).  A lease is renewed when a
    third of its TTL (``renew_fraction``) has passed; leases due within
    half of their interval join the same round, and a round issues all its
    extends before waiting, so each node gets one write per round.  Renewal
    stops when the block ends, when ``max_hold`` is reached (the last renewal
    is cut so that the lease ends there), or when renewals fail to reach a
    quorum before the guard moment.

The guard
    A watched lease is declared lost at ``validity end - margin`` (default:
    two node timeouts or 5 % of the TTL, whichever is larger, at most TTL/4)
    unless a renewal moved that moment, or at once when a renewal's replies
    show the key is not ours on a majority.  Then, in this order: the guarded
    asyncio task is cancelled (``lock(...)`` context; ``cancel=False`` turns
    it off), ``lock.lost`` is set, ``on_lost(lock, reason)`` is called (a
    coroutine function's coroutine is run as a task).  The ``async with`` /
    ``with`` block then raises ``LockLost`` on exit.  A thread cannot be
    cancelled: blocking code checks ``lock.lost`` / ``lock.check()``.
"""

from __future__ import annotations

from typing import Any

from ._lease import DEFAULT_RENEW_FRACTION, Lease, check_lock, default_margin_ns

__all__ = ["DEFAULT_RENEW_FRACTION", "Lease", "check_lock", "default_margin_ns", "close_manager",
           "LEASE_OPTIONS"]

#: Keyword arguments of ``lock()`` that ask for a guarded lease.
LEASE_OPTIONS = ("auto_extend", "max_hold", "on_lost", "margin", "renew_fraction", "cancel")


def close_manager(mgr: Any) -> None:
    """Stop the renewer and the release subscriber of ``mgr`` (its close())."""
    r = getattr(mgr, "lease_renewer", None)
    if r is not None:
        r.close()
    sub = getattr(mgr, "release_subscriber", None)
    if sub is not None:
        try:
            sub.close()
        except Exception:  # pragma: no cover - closing is best effort
            pass
        mgr.release_subscriber = None
