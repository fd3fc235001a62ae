"""The 2^53 limit of fence counters (docs/fencing.md, "Other assumptions"),
against real nodes.

Lua numbers in Redis are doubles: past 2^53 ``counter + 1`` rounds back to
the counter, so two successive holders would get the *same* fence, and a
fenced store accepts a write whose fence equals the highest it has seen
(``fence >= highest``): the stale holder's write after the new holder's.
A counter only gets there by hand or from node clocks ~230 years ahead, but
then the acquire script must refuse rather than repeat a fence.
"""

from __future__ import annotations

import time

import pytest
import redis

from quorumlock import LockManager
from quorumlock import _scripts
from quorumlock._scripts import DELAY_PREFIX, FENCE_PREFIX
from quorumlock.fencing import FencedStore

from _engine_fixtures import sync_core, clusters, core, _shared_clusters  # noqa: F401

LIMIT = 2**53 - 1


def test_acquire_script_refuses_a_fence_past_2_53_and_writes_nothing(clusters):
    """First-round script: from a counter at 2^53 - 1 it returned
    9007199254740992 three times in a row (the same fence for three holders)
    and set the lock key each time.  Now the first fence it would issue
    above 2^53 - 1 is an error reply, and neither the key nor the counter is
    written; below the limit it still counts up by one."""
    cluster = clusters(1)
    r = redis.Redis(port=cluster.ports[0])
    fk, dk = FENCE_PREFIX + b"lim:k", DELAY_PREFIX + b"lim:k"
    try:
        r.set(fk, str(LIMIT - 1))
        assert r.eval(_scripts.ACQUIRE_EX, 3, "lim:k", fk, dk, "t1", 1000, 0, "1") == LIMIT
        assert r.delete("lim:k") == 1
        for tok in ("t2", "t3"):
            with pytest.raises(redis.ResponseError, match="2\\^53"):
                r.eval(_scripts.ACQUIRE_EX, 3, "lim:k", fk, dk, tok, 1000, 0, "1")
            assert r.get("lim:k") is None
            assert int(r.get(fk)) == LIMIT
        # a held key is still just "held" (0), whatever the counter
        r.set("lim:k", "other", px=1000)
        assert r.eval(_scripts.ACQUIRE_EX, 3, "lim:k", fk, dk, "t4", 1000, 0, "1") == 0
        # lock-delay only (no fence) is unaffected by the counter
        r.delete("lim:k")
        assert r.eval(_scripts.ACQUIRE_EX, 3, "lim:k", fk, dk, "t5", 1000, 5, "0") == 1
    finally:
        r.delete("lim:k", fk, dk)
        r.close()


def test_no_two_holders_share_a_fence_at_the_2_53_limit(sync_core, clusters):
    """Every node's counter set by hand to 2^53 - 2; holders acquire one
    after another, each lease left to expire (a paused holder), and each new
    holder (a fresh client, so no clock samples yet) writes to a FencedStore
    before the previous, expired one does.  First-round code, both builds: fences 9007199254740991,
    9007199254740992, 9007199254740992 (the second and third equal) and the
    store accepted the expired second holder's write after the third's.
    Now: the fences that are granted strictly increase, every late write is
    rejected, and after 2^53 - 1 fenced acquires are refused, naming the
    limit in the per-node outcome."""
    cluster = clusters(3)
    key = f"lim:{sync_core.IMPLEMENTATION}"
    direct = [redis.Redis(port=p) for p in cluster.ports]
    store_node = redis.Redis(port=cluster.ports[0])
    store = FencedStore(store_node, raise_on_stale=False)
    skey = f"res:{key}"
    try:
        for d in direct:
            d.set(FENCE_PREFIX + key.encode(), str(LIMIT - 1))
        granted, refusals, prev = [], [], None
        for i in range(4):
            # a fresh client per holder (a new process): its first attempt
            # is made before it has measured the nodes' clocks, so only the
            # nodes' scripts stand between it and a repeated fence
            with LockManager(cluster.urls, ttl=0.2, fencing=True, _core=sync_core) as locks:
                op = locks.attempt_op(key, locks.options.ttl_ms)
                lk = op.result
                if lk is None:
                    refusals.append(op.outcomes())
                    continue
                granted.append(lk.fence)
                assert store.write(skey, f"h{i}", lk.fence).status == "ok"
                if prev is not None:
                    late = store.write(skey, f"late{i}", prev.fence).status
                    assert late == "stale", f"stale write accepted: fences {granted}"
                prev = lk
                time.sleep(0.25)  # the lease expires unreleased
                assert not lk.valid
        assert granted == sorted(set(granted)), granted
        assert granted == [LIMIT], granted
        assert len(refusals) == 3
        for outs in refusals:
            assert sum(o.status == "error" and "2^53" in (o.detail or "") for o in outs) >= 2, outs
        # nothing was left behind by the refused attempts
        assert all(d.get(key) is None for d in direct)
    finally:
        for d in direct:
            d.delete(key, FENCE_PREFIX + key.encode())
            d.close()
        store_node.delete(skey)
        store_node.close()
