"""The retry and lease policy (quorumlock._policy), pure: no servers, no
sleeping, no clock -- time is passed in and the jitter is injected."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import List, Optional

import pytest

from quorumlock import _policy
from quorumlock._policy import Retry


def fixed(v: float):
    return lambda lo, hi: v


def test_counted_attempts_give_up_after_the_last():
    r = Retry(attempts=3, timeout=None, delay=(0.1, 0.3), now=0.0, uniform=fixed(0.2))
    assert r.failed(1.0) == 0.2 and r.woke(1.2)
    assert r.failed(2.0) == 0.2 and r.woke(2.2)
    assert r.failed(3.0) is None          # third failure: no fourth attempt
    assert r.attempts == 3


def test_one_attempt_never_waits():
    r = Retry(attempts=1, timeout=None, delay=(0.1, 0.3), now=0.0)
    assert r.failed(0.0) is None and r.attempts == 1


def test_timeout_cuts_the_wait_to_the_deadline_and_ignores_attempts():
    r = Retry(attempts=1, timeout=1.0, delay=(0.5, 0.5), now=10.0, uniform=fixed(0.5))
    assert r.failed(10.0) == 0.5          # attempts=1 does not apply with a timeout
    assert r.woke(10.5)
    assert r.failed(10.8) == pytest.approx(0.2)   # 0.5 drawn, 0.2 left
    assert not r.woke(11.0)               # at the deadline: no attempt that cannot finish
    assert r.attempts == 2


def test_timeout_zero_makes_exactly_one_attempt():
    r = Retry(attempts=None, timeout=0.0, delay=(0.1, 0.3), now=5.0)
    assert r.failed(5.0) is None and r.attempts == 1


def test_past_deadline_gives_up_without_drawing():
    r = Retry(attempts=None, timeout=1.0, delay=(0.1, 0.3), now=0.0)
    assert r.failed(1.5) is None


def test_the_jitter_is_drawn_from_the_range():
    seen: List[tuple] = []

    def uniform(lo: float, hi: float) -> float:
        seen.append((lo, hi))
        return hi

    r = Retry(attempts=5, timeout=None, delay=(0.05, 0.15), now=0.0, uniform=uniform)
    assert r.failed(0.0) == 0.15
    assert seen == [(0.05, 0.15)]


@pytest.mark.parametrize("kw, exc, name", [
    (dict(attempts=0, timeout=None), ValueError, "retry_count"),
    (dict(attempts="3", timeout=None), TypeError, "retry_count"),
    (dict(attempts=None, timeout=-1.0), ValueError, "timeout"),
    (dict(attempts=None, timeout="1"), TypeError, "timeout"),
])
def test_bad_arguments_name_themselves(kw, exc, name):
    with pytest.raises(exc, match=name):
        Retry(delay=(0.1, 0.2), now=0.0, **kw)


def test_bad_delay_range():
    with pytest.raises(ValueError, match="delay"):
        Retry(attempts=1, timeout=None, delay=(0.3, 0.1), now=0.0)


def test_from_options_uses_the_manager_defaults():
    opts = SimpleNamespace(retry_count=2, retry_delay=(0.0, 0.0))
    r = _policy.from_options(opts, timeout=None, retry_count=None, now=0.0)
    assert r.failed(0.0) == 0.0 and r.failed(0.0) is None and r.attempts == 2
    r = _policy.from_options(opts, timeout=None, retry_count=4, now=0.0)
    assert r.attempts_left == 4


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: List[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, d: float) -> Optional[bool]:
        self.slept.append(d)
        self.t += d
        return None


def test_run_blocking_returns_the_first_result():
    clock = Clock()
    results = iter([None, None, "lock"])
    r = Retry(attempts=5, timeout=None, delay=(0.1, 0.1), now=0.0, uniform=fixed(0.1))
    assert _policy.run_blocking(lambda: next(results), r, wait=clock.sleep, clock=clock) == "lock"
    assert clock.slept == [0.1, 0.1] and r.attempts == 2


def test_run_blocking_gives_up_at_the_deadline():
    clock = Clock()
    calls = []
    r = Retry(attempts=None, timeout=0.25, delay=(0.1, 0.1), now=0.0, uniform=fixed(0.1))
    assert _policy.run_blocking(lambda: calls.append(clock.t), r, wait=clock.sleep, clock=clock) is None
    # attempts at 0, 0.1, 0.2; the wait after the third is cut to 0.05 and ends at the deadline
    assert calls == pytest.approx([0.0, 0.1, 0.2])
    assert clock.slept == pytest.approx([0.1, 0.1, 0.05])


def test_a_wait_returning_true_retries_at_once():
    clock = Clock()
    calls = []
    waits = iter([True, None])

    def wait(d: float) -> Optional[bool]:
        w = next(waits)
        if w is None:
            clock.t += d
        return w

    r = Retry(attempts=3, timeout=None, delay=(0.1, 0.1), now=0.0, uniform=fixed(0.1))
    assert _policy.run_blocking(lambda: calls.append(clock.t), r, wait=wait, clock=clock) is None
    assert calls == pytest.approx([0.0, 0.0, 0.1]) and r.attempts == 3


def test_run_async_matches_run_blocking():
    clock = Clock()
    results = iter([None, None, None, "lock"])

    async def attempt():
        return next(results)

    async def wait(d: float) -> Optional[bool]:
        return clock.sleep(d)

    r = Retry(attempts=3, timeout=None, delay=(0.1, 0.1), now=0.0, uniform=fixed(0.1))
    assert asyncio.run(_policy.run_async(attempt, r, wait=wait, clock=clock)) is None
    assert r.attempts == 3 and clock.slept == [0.1, 0.1]


# -- leases -------------------------------------------------------------------


class FakeLease:
    """The attributes the lease policy reads (tests only: the policy takes
    any object of the LeaseState protocol)."""

    def __init__(self, *, doom: int = 1000, next_renew: int = 500, every: int = 300, auto: bool = True,
                 released: bool = False, hold_ttl: Optional[int] = 100) -> None:
        self.reason: Optional[str] = None
        self.auto_extend = auto
        self.inflight = False
        self.capped = False
        self.next_renew_ns = next_renew
        self.renew_every_ns = every
        self.renewals = 0
        self.failures = 0
        self.last_failure: Optional[str] = None
        self.doom_ns = doom
        self.released = released
        self.hold_ttl = hold_ttl

    def due(self, now: int) -> bool:
        return self.auto_extend and not self.inflight and not self.capped and self.next_renew_ns <= now

    def renew_ttl_ms(self, now: int, drift_factor: float) -> Optional[int]:
        return self.hold_ttl

    def doom_reason(self, now: int) -> str:
        return "doomed"


def test_plan_sorts_every_lease():
    gone = FakeLease(released=True)
    doomed = FakeLease(doom=100)
    due = FakeLease(next_renew=150)
    later = FakeLease(next_renew=400, doom=900)
    watch_only = FakeLease(auto=False, doom=700)
    p = _policy.plan([gone, doomed, due, later, watch_only], now=200, drift_factor=0.01)
    assert p.drop == [gone]
    assert p.lost == [(doomed, "doomed")]
    assert p.renew == [(due, 100)] and due.inflight
    assert p.next_at == 400               # later's renewal comes before any doom


def test_plan_without_an_engine_renews_nothing_but_still_dooms():
    due = FakeLease(next_renew=0, doom=600)
    doomed = FakeLease(doom=10)
    p = _policy.plan([due, doomed], now=100, drift_factor=0.01, can_renew=False)
    assert p.renew == [] and not due.inflight
    assert p.lost == [(doomed, "doomed")]


def test_plan_capped_by_max_hold_waits_for_the_doom():
    capped = FakeLease(next_renew=0, doom=800, hold_ttl=None)
    p = _policy.plan([capped], now=100, drift_factor=0.01)
    assert p.renew == [] and p.next_at == 800


def test_renewed_ok_schedules_the_next_interval():
    ls = FakeLease(every=300)
    ls.failures = 2
    ls.inflight = True
    assert _policy.renewed(ls, 1000, ok=True, refused=False) is None
    assert (ls.next_renew_ns, ls.failures, ls.renewals, ls.inflight) == (1300, 0, 1, False)


def test_renewed_failure_retries_soon():
    ls = FakeLease(every=800_000_000)
    assert _policy.renewed(ls, 0, ok=False, refused=False, failure="3 timeout") is None
    assert ls.next_renew_ns == 100_000_000 and ls.failures == 1 and ls.last_failure == "3 timeout"
    short = FakeLease(every=1_000_000)
    _policy.renewed(short, 0, ok=False, refused=False)
    assert short.next_renew_ns == _policy.RETRY_SOON_NS


def test_renewed_refused_is_lost():
    ls = FakeLease()
    reason = _policy.renewed(ls, 0, ok=False, refused=True, failure="2 held, 1 ok")
    assert reason == "renewal refused: the key is not ours on a majority (2 held, 1 ok)"


def test_linear_waits_grow_with_the_attempt():
    r = Retry(attempts=4, timeout=None, delay=(0.002, 0.02), now=0.0, uniform=fixed(0.01), linear=True)
    waits = [r.failed(0.0) for _ in range(4)]
    assert waits[:3] == pytest.approx([0.01, 0.02, 0.03]) and waits[3] is None


def test_give_up_stops_before_the_attempts_run_out():
    clock = Clock()
    calls = []
    r = Retry(attempts=6, timeout=None, delay=(0.01, 0.01), now=0.0, uniform=fixed(0.01))

    def attempt():
        calls.append(clock.t)
        if len(calls) == 2:
            r.give_up()      # e.g. another holder has the key on a majority
        return None

    assert _policy.run_blocking(attempt, r, wait=clock.sleep, clock=clock) is None
    assert len(calls) == 2 and clock.slept == [0.01]


@pytest.mark.parametrize("sleep, timeout, once, reads, slept", [
    (0.05, 0.4, False, 9, [0.05] * 8),   # a read per failed attempt, none after a sleep
    (0.1, 0.35, False, 4, [0.1] * 3),    # a partial last period is not slept
    (60, 1, False, 1, []),               # the first sleep would overshoot: none
    (0.05, None, True, 0, []),           # blocking=False: one attempt, no clock
])
def test_fixed_reads_the_clock_as_redis_py_does(sleep, timeout, once, reads, slept):
    clock = Clock()
    count = [0]

    def read():
        count[0] += 1
        return clock.t

    r = Retry.fixed(sleep, timeout=timeout, now=0.0, once=once)
    assert _policy.run_blocking(lambda: None, r, wait=clock.sleep, clock=read) is None
    assert count[0] == reads and clock.slept == pytest.approx(slept)


def test_until_without_a_timeout_retries_forever():
    clock = Clock()
    results = iter([None] * 50 + ["got"])
    r = Retry.until(None, delay=(0.0, 0.2), now=0.0, uniform=fixed(0.1))
    assert _policy.run_blocking(lambda: next(results), r, wait=clock.sleep, clock=clock) == "got"
    assert r.attempts == 50


def test_fixed_compares_as_redis_py_in_floating_point():
    # 0.05 * 3 accumulated is 0.15000000000000002; + 0.05 == 0.2 exactly as
    # redis-py computes next_try_at, so a fourth sleep is still taken.
    clock = Clock()
    r = Retry.fixed(0.05, timeout=0.2, now=0.0)
    assert _policy.run_blocking(lambda: None, r, wait=clock.sleep, clock=clock) is None
    assert clock.slept == [0.05] * 4
