"""Celery beat with RedBeat (``quorumlock.integrations.redbeat``): two real
``celery beat`` processes (``examples/redbeat_beat.py``, a one-second
schedule), three lock nodes, one more local node as broker and RedBeat's
store.  Who sent each tick is recorded by the beats (``before_task_publish``)
and checked against the broker's queue."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from _sched_common import examples_module, stop_all, wait_until

pytest.importorskip("celery", reason="celery is not installed (pip install quorumlock[redbeat])")
pytest.importorskip("redbeat", reason="celery-redbeat is not installed (pip install quorumlock[redbeat])")


def _run_beats(make_cluster, tmp_path, plain, kills=(), total=5.0, n=2):
    """``n`` beats; at each time of ``kills`` (seconds after the first send)
    the latest sender is SIGKILLed.  The sends, the broker's queue length,
    [(kill time ns, victim pid)], the beats' stderr."""
    mod = examples_module("redbeat_beat")
    nodes = make_cluster(n=3, mode="volatile", max_ttl=2.0)
    broker = make_cluster(n=1, mode="unsafe")
    fires = str(tmp_path / "fires")
    beats = [mod.start_beat(nodes.urls, broker.urls[0], fires, plain=plain) for _ in range(n)]
    killed = []
    try:
        assert wait_until(lambda: mod.read_fires(fires), 20, step=0.05), stop_all(beats)
        t_first = time.monotonic()
        for at in kills:
            time.sleep(max(0.0, at - (time.monotonic() - t_first)))
            victim = mod.read_fires(fires)[-1][1]
            os.killpg(victim, signal.SIGKILL)
            killed.append((time.monotonic_ns(), victim))
        time.sleep(max(0.0, total - (time.monotonic() - t_first)))
    finally:
        errs = stop_all(beats)
    r = redis.Redis.from_url(broker.urls[0])
    queued = r.llen("celery")
    r.close()
    return mod.read_fires(fires), queued, killed, errs


def _run_two(make_cluster, tmp_path, plain, kill_after=None, total=5.0):
    fires, queued, killed, errs = _run_beats(make_cluster, tmp_path, plain,
                                             () if kill_after is None else (kill_after,), total)
    t_kill, victim = killed[0] if killed else (None, None)
    return fires, queued, t_kill, victim, errs


def _close_pairs(fires, within_ns=500_000_000):
    """Consecutive sends of the task less than half its period apart: the
    same tick sent twice."""
    ts = sorted(fires, key=lambda f: f[2])
    return [(a, b) for a, b in zip(ts, ts[1:]) if b[2] - a[2] < within_ns]


def test_redbeat_two_beats_one_sender_and_failover(make_cluster, tmp_path):
    """Two beats with the quorum lease: every tick sent once (no two sends
    within half the period; the broker holds exactly the sends), the sender
    SIGKILLed after 2.5 s, the other one sends from then on, the first of
    its ticks within ttl (1 s) + the period (1 s) of the kill (0.6 s in a
    run here)."""
    fires, queued, t_kill, victim, errs = _run_two(make_cluster, tmp_path, plain=False, kill_after=2.5, total=6.0)
    assert len(fires) >= 4, (fires, errs)
    assert _close_pairs(fires) == [], fires
    assert queued == len(fires)
    before = [f for f in fires if f[2] < t_kill]
    after = [f for f in fires if f[2] > t_kill]
    assert {f[1] for f in before} == {victim}, fires
    assert len(after) >= 2 and victim not in {f[1] for f in after}, fires
    failover = (after[0][2] - t_kill) / 1e9
    print(f"redbeat: {len(fires)} ticks, next tick {failover:.3f} s after the sender's SIGKILL")
    assert failover < 4.0, failover           # the bound: ttl (1 s) + the period (1 s); margin for load


def test_redbeat_without_a_lock_sends_ticks_twice(make_cluster, tmp_path):
    """The negative: two plain RedBeat beats with RedBeat's lock switched
    off send the same ticks twice (pairs of sends milliseconds apart, from
    both processes: 4 of 9 sends in a 4 s run here), so the check above can
    fail."""
    fires, queued, _, _, errs = _run_two(make_cluster, tmp_path, plain=True, total=4.0)
    pairs = _close_pairs(fires)
    print(f"redbeat without a lock: {len(fires)} sends, {len(pairs)} ticks sent twice")
    assert queued == len(fires)
    assert len(pairs) >= 1, (fires, errs)
    assert any(a[1] != b[1] for a, b in pairs)


def test_redbeat_tick_claim_stops_a_second_send_of_the_same_tick(make_cluster):
    """Two schedulers that both believe they lead (as a paused ex-leader
    does when it wakes up) and read the same stored state of an entry: the
    tick claim lets one of them send it.  The same two sends with RedBeat's
    own maybe_due (no claim) both reach the broker (1 send against 2 here),
    which is what the count tells apart."""
    from celery import Celery
    from redbeat import RedBeatScheduler as PlainRedBeat

    from quorumlock.integrations.celery import configure
    from quorumlock.integrations.redbeat import RedBeatScheduler, tick_key

    nodes = make_cluster(n=3, mode="volatile", max_ttl=2.0)
    broker = make_cluster(n=1, mode="unsafe")
    url = broker.urls[0]
    app = Celery("ql_redbeat_unit", broker=url)
    app.conf.update(redbeat_redis_url=url, beat_schedule={"t": {"task": "t.tick", "schedule": 0.5}},
                    broker_connection_retry_on_startup=True)
    configure(app, nodes.urls)
    r = redis.Redis.from_url(url)

    class Leading:                      # the election is not what is tested here
        is_leader = True

    def two_sends(cls):
        r.delete("celery")
        scheds = [cls(app, lazy=False) for _ in range(2)]
        time.sleep(0.6)                                 # the entry is due
        entries = [s.schedule["t"] for s in scheds]     # both read the same last_run_at
        for s, e in zip(scheds, entries):
            if cls is RedBeatScheduler:
                s.leader = Leading()
            with app.producer_or_acquire() as producer:
                s.maybe_due(e, producer=producer)
        n = r.llen("celery")
        for s in scheds:
            s.leader = None
            s.close()
        return n, entries[0]

    sent, entry = two_sends(RedBeatScheduler)
    assert sent == 1
    assert tick_key(entry).startswith("redbeat:tick:t:")
    for p in nodes.ports:                               # the next state: a new tick
        redis.Redis(port=p).flushall()
    r.flushall()
    plain, _ = two_sends(PlainRedBeat)
    print(f"redbeat: same tick sent {sent}x with the claim, {plain}x without")
    assert plain == 2
    r.close()


@pytest.mark.slow
def test_redbeat_three_beats_two_kills_soak(make_cluster, tmp_path):
    """Three beats for 20 s; the sender SIGKILLed after 5 s and the next one
    after 11 s: no tick sent twice, the broker holds exactly the sends, and
    after each kill another beat goes on sending."""
    fires, queued, killed, errs = _run_beats(make_cluster, tmp_path, plain=False, kills=(5.0, 11.0), total=20.0,
                                             n=3)
    assert len(fires) >= 15, (fires, errs)
    assert _close_pairs(fires) == [], fires
    assert queued == len(fires)
    for t_kill, victim in killed:
        after = [f for f in fires if f[2] > t_kill]
        assert len(after) >= 3 and victim not in {f[1] for f in after}, (killed, fires)
    assert len({f[1] for f in fires}) == 3          # each beat sent in its turn
