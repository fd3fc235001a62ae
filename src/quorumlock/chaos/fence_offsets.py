"""Row 30 of the fault matrix (docs/safety.md): fences under a constant wall-clock offset between
volatile nodes (docs/fencing.md, "Clock offsets").

Node 0's wall clock is put 60 s ahead before anything happens and never
stepped again.  Client A is driven onto the bare majority {0, 1} (node 2
blackholed for A); its fence is the larger of the two counters: node 0's
clock.  A reads the counter (a plain read: the storage is write-only fenced,
which is enough here because the *new* holder writes first).  Node 1 crashes
and comes back after the volatile delay with its counter gone, so it restarts
from its own TIME, 60 s behind node 0's.  Node 0 becomes unavailable to B
(blackholed); B acquires on {1, 2}, reads, writes and releases.  Then the
expired A, like a paused holder, writes with its fence.

* With the first-round commit rule (``fence-offset-restart-unchecked``: the
  commit raised every node's counter to the quorum's maximum, unchecked) B's
  fence is 60 s below A's, the storage accepts B's write and then A's stale
  one: a lost update with overlapping holders, **VIOL**.
* Now (``fence-offset-restart``) node 1 refuses to raise its counter to a
  fence 60 s ahead of its clock (and, once the clocks are measured, A does
  not count node 0's yes), so A never gets a fence; B acquires on {1, 2}:
  **SAFE**, and the liveness cost is that A was refused, loudly.

The matrix rows are registered by ``quorumlock.chaos.matrix``.
"""

from __future__ import annotations

from typing import Any, Dict

from .harness import Env
from .scenarios import FAULTS, KEY, S, FaultSpec, Scenario, _b_tries, _cfg, _client_a, now

__all__ = ["OFFSET", "t_fence_offset_restart", "t_fence_offset_restart_unchecked"]

#: Node 0's constant clock offset, seconds (far beyond any TTL of the matrix).
OFFSET = 60.0


def _schedule(env: Env, sc: Scenario, guard: bool, extra: Dict[str, Any]) -> None:
    assert env.cluster is not None
    env.jump(0, OFFSET)  # a constant offset from here on: never stepped again
    a = _client_a(env, sc, guard, via_proxy=True, **extra)
    b = env.worker("B", via_proxy=True, **_cfg(sc, guard, **extra))
    env.ready(a, b)
    env.link("A", 2, "blackhole")  # A's quorum: {0, 1}
    msg = a.call("acquire", key=KEY, until=now() + 2 * S)
    op = msg.get("op") or {}
    if not (msg.get("event") == "acquired" and op.get("ok")):
        env.notes.append("A's fenced acquire on {0, 1} was refused (node 0's clock is 60 s ahead of node 1's)")
        env.extra_checks["A_refused"] = True
        _b_tries(env, b, now() + 3 * S)  # liveness: B still gets the key from the other nodes
        return
    env.extra_checks["A_refused"] = False
    env.notes.append(f"A holds {KEY} on {{0, 1}} with fence {op.get('fence')}")
    a.call("read", key=KEY)
    env.crash(1)  # volatile: back after the delay, its counter gone
    env.cluster.wait_up(1, timeout=env.cluster.restart_delay + 10)
    env.link("B", 0, "blackhole")  # the fast node is unavailable to B
    got = _b_tries(env, b, now() + 3 * S)
    b_fence = (got.get("acquire") or {}).get("fence")
    env.notes.append(f"B's fence {b_fence} vs A's {op.get('fence')}")
    a.call("write", key=KEY)  # the expired A writes last, with its fence
    a.call("release", key=KEY)


def t_fence_offset_restart(env: Env, sc: Scenario, guard: bool) -> None:
    """Row 30 with quorumlock's engine as it is."""
    _schedule(env, sc, guard, {})


def t_fence_offset_restart_unchecked(env: Env, sc: Scenario, guard: bool) -> None:
    """Row 30's negative control: the clients commit fences with the
    first-round rule (no clock check, no offset-based exclusion)."""
    _schedule(env, sc, guard, {"fence_commit": "unchecked"})


FAULTS.setdefault("fence-offset-restart", FaultSpec(
    "targeted", t_fence_offset_restart,
    "row 30: node 0 60 s ahead, A on {0,1}, node 1 restarted after the delay, B on {1,2} writes first",
    clock=True))
FAULTS.setdefault("fence-offset-restart-unchecked", FaultSpec(
    "targeted", t_fence_offset_restart_unchecked,
    "row 30's negative control: the same with the first-round fence commit (no clock check)",
    clock=True))
