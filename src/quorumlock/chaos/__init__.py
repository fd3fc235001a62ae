"""Fault injection and the safety checker (``quorumlock chaos``; docs/safety.md).

Modules:

* :mod:`~quorumlock.chaos.checker`: the checker, a pure function from a
  history to a report (overlapping holders, lost updates, fence regressions,
  stale writes, leftover keys).
* :mod:`~quorumlock.chaos.history`: the JSONL history (schema in docs/safety.md).
* :mod:`~quorumlock.chaos.scenarios`: the targeted schedules and the random
  fault injectors; :func:`~quorumlock.chaos.scenarios.run_scenario`.
* :mod:`~quorumlock.chaos.matrix`: docs/faults.md, expected against observed.
* :mod:`~quorumlock.chaos.harness`: nodes, storage node, client processes, proxies.
* :mod:`~quorumlock.chaos.worker`: the client process.
* :mod:`~quorumlock.chaos.faulty`: a deliberately broken Redlock client (negative controls).
* :mod:`~quorumlock.chaos.clock`: the host clock, and the ``LD_PRELOAD`` wall-clock shim.
* :mod:`~quorumlock.chaos.proxy`: the asyncio TCP fault proxy.
* :mod:`~quorumlock.chaos.plot`: a PNG timeline of one run.

Nothing here is imported by the library itself.
"""
