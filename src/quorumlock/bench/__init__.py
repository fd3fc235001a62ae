"""The quorumlock benchmark suite: ``quorumlock bench`` / ``python -m quorumlock.bench``.

It starts its own nodes (``quorumlock.nodes``) in each mode and size asked
for, measures the nodes' ceiling with ``redis-benchmark``, runs the
workloads of :mod:`.workloads` and the peers of :mod:`.peers` on those nodes,
kills and restarts a node to time recovery (:mod:`.recovery`), and reports a
markdown table, a JSON document (``schema.json``) and PNG plots.

Modules: ``runner`` (the run and the CLI flags), ``workloads`` (the cycle
drivers and quorumlock's rows), ``peers`` (pottery, aioredlock, redis-py,
python-redis-lock), ``ceiling`` (redis-benchmark), ``recovery`` (kill/restart,
granted twice), ``report`` (markdown, targets), ``plots``, ``schema``,
``stats``, ``progress``.  See docs/benchmarks.md.
"""

from .runner import BenchConfig, main, run

__all__ = ["BenchConfig", "main", "run"]
