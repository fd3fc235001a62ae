"""Per-manager metrics: counters and latency histograms as plain data, and
exporters for ``prometheus-client`` and OpenTelemetry when those are installed.

```python
locks = LockManager(urls, metrics=True)      # or quorumlock.aio.LockManager(..., metrics=True)
...
snap = locks.metrics()                       # a dict of plain numbers (below)
quorumlock.metrics.register_prometheus(locks, name="orders")    # prometheus-client
quorumlock.metrics.register_opentelemetry(locks, name="orders") # OpenTelemetry metrics API
```

What is counted (docs/schedulers.md):

* ``acquire``: every quorum attempt (``try_acquire``, each attempt of
  ``acquire``): ``ok`` / ``failed`` counts and a latency histogram (seconds
  from sending to the decision);
* ``acquire_wait``: every ``acquire`` call: ``ok`` / ``timeout`` and the time
  it took, retries and waits included; ``waits`` counts the calls that had to
  wait (the first attempt failed), ``notified`` the retries a release
  notification started (``wait="notify"``);
* ``extend`` (explicit ``lock.extend()`` and auto-extension renewals) and
  ``release``: ``ok`` / ``failed`` and latency;
* ``held``: locks acquired through this manager and not yet released;
* ``lost``: leases declared lost by the guard (``quorumlock.leases``);
* ``jobs``: ``run`` / ``skipped`` / ``lost`` of ``exclusive`` jobs;
* ``nodes``: per node, the engine's own counters — commands ``sent``, error
  replies (``errors``), reply deadlines missed (``timeouts``) — summed over
  every connection set of a blocking manager, and whether it is ``ready``;
  ``release`` / ``extend``: the command plain locks use on the node
  (``"DELIFEQ"``, ``"DELEX"``, ``"SET IFEQ"`` or ``"script"``; None while no
  connection is ready);
  and ``clock``: the node's measured wall-clock offset (``None`` until
  measured) as a dict — ``offset`` (s, the node's ``TIME`` minus this
  client's ``time.time()``), ``uncertainty`` (s, half the round trip of the
  sample), ``age`` (s), ``ahead`` / ``behind`` (s by which it is surely ahead
  of / behind a majority of the nodes' clocks, 0 if not).  A fenced manager
  measures it before its first fenced acquire on each connection and keeps
  it fresh from its commit replies (docs/fencing.md, "Clock offsets").

The per-node counters cost nothing extra: the engine keeps them anyway, and
they are read only when ``metrics()`` is called, so they are there with
``metrics=False`` too.  Everything else is counted only with
``metrics=True``: the manager then tells its observer (``MetricsObserver``,
``manager.observer``) of each operation it decides (one ``monotonic_ns``
pair, one bisect and a few integer additions per operation;
``examples/metrics_cost.py`` measures it); without metrics the observer is
None and the manager only checks that.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = [
    "BUCKETS",
    "Histogram",
    "Metrics",
    "instrument",
    "snapshot",
    "PrometheusCollector",
    "register_prometheus",
    "register_opentelemetry",
]

#: Histogram bucket upper bounds, seconds (the last bucket is +Inf).
BUCKETS: Sequence[float] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

from . import _faces
from ._clock import now_ns as _now_ns  # the lease clock (CLOCK_BOOTTIME)


class Histogram:
    """Fixed-bucket latency histogram (seconds), Prometheus-style: ``counts[i]``
    observations fell in ``(BUCKETS[i-1], BUCKETS[i]]``; the last slot is +Inf."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def quantile(self, q: float) -> Optional[float]:
        """Upper bound of the bucket that holds quantile ``q`` (None if empty)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return BUCKETS[i] if i < len(BUCKETS) else float("inf")
        return float("inf")

    def as_dict(self) -> Dict[str, Any]:
        return {
            "count": self.count,
            "sum": self.sum,
            "buckets": list(zip(list(BUCKETS) + [float("inf")], _cumulative(self.counts))),
            "p50": self.quantile(0.5),
            "p99": self.quantile(0.99),
        }


def _cumulative(counts: List[int]) -> List[int]:
    out, total = [], 0
    for c in counts:
        total += c
        out.append(total)
    return out


_OPS = ("acquire", "acquire_wait", "extend", "release")


class Metrics:
    """The counters of one manager.  Updated from the caller's thread (or the
    event loop); a snapshot is consistent enough for monitoring (plain
    integer additions under the GIL, no lock on the hot path)."""

    def __init__(self) -> None:
        self.hist: Dict[str, Histogram] = {op: Histogram() for op in _OPS}
        self.ok: Dict[str, int] = {op: 0 for op in _OPS}
        self.failed: Dict[str, int] = {op: 0 for op in _OPS}
        self.held = 0
        self.waits = 0
        self.notified = 0
        self.lost = 0
        self.jobs_run = 0
        self.jobs_skipped = 0
        self.jobs_lost = 0
        self.batches = 0
        #: Serialises updates from many threads (the blocking face); None on asyncio.
        self.mutex: Optional[threading.Lock] = None
        #: ``callback(op_name, seconds, ok)`` for every observation (the
        #: OpenTelemetry exporter records its histograms through this).
        self.sinks: List[Callable[[str, float, bool], None]] = []

    def observe(self, op: str, seconds: float, ok: bool) -> None:
        self.hist[op].observe(seconds)
        if ok:
            self.ok[op] += 1
        else:
            self.failed[op] += 1
        for sink in self.sinks:
            try:
                sink(op, seconds, ok)
            except Exception:  # pragma: no cover - a broken exporter must not break locking
                pass

    def as_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for op in _OPS:
            d = self.hist[op].as_dict()
            d["ok"] = self.ok[op]
            d["failed"] = self.failed[op]
            out[op] = d
        out["acquire_wait"]["timeout"] = out["acquire_wait"].pop("failed")
        out.update(
            held=self.held,
            waits=self.waits,
            notified=self.notified,
            lost=self.lost,
            batches=self.batches,
            jobs={"run": self.jobs_run, "skipped": self.jobs_skipped, "lost": self.jobs_lost},
        )
        return out


# -- the manager side ---------------------------------------------------------


def _engines(mgr: Any) -> List[Any]:
    """Every engine of ``mgr`` (its ``engines_in_use()``).  Kept because
    chaos/worker.py imports it (row 30's negative control); once that file
    calls ``mgr.engines_in_use()``, drop this."""
    return mgr.engines_in_use()


def snapshot(mgr: Any) -> Dict[str, Any]:
    """``mgr.metrics()``: a dict of plain numbers (see the module docstring)."""
    names = list(mgr.nodes)
    nodes = [{"node": name, "sent": 0, "errors": 0, "timeouts": 0, "ready": False, "clock": None,
              "release": None, "extend": None} for name in names]
    for eng in mgr.engines_in_use():
        clocks = eng.clock_offsets() if hasattr(eng, "clock_offsets") else [None] * len(nodes)
        for i, nd in enumerate(list(eng.nodes)):
            d = nodes[i]
            d["sent"] += nd.sent
            d["errors"] += nd.errors
            d["timeouts"] += nd.timeouts
            d["ready"] = d["ready"] or bool(nd.ready)
            if nd.ready and d["release"] is None and hasattr(eng, "native_paths"):
                # Which command plain locks use on this node (native or script).
                d.update(eng.native_paths()[i])
            c = clocks[i]
            # the freshest sample over a blocking manager's connection sets
            if c is not None and (d["clock"] is None or c["age"] < d["clock"]["age"]):
                d["clock"] = c
    m: Optional[Metrics] = getattr(mgr, "meter", None)
    out: Dict[str, Any] = {"enabled": m is not None, "nodes": nodes, "quorum": mgr.quorum}
    if m is not None:
        out.update(m.as_dict())
    leases = getattr(mgr, "lease_renewer", None)
    out["leases"] = leases.stats() if leases is not None else {"watched": 0, "auto_extended": 0, "renewals": 0,
                                                               "renewal_failures": 0, "lost": 0}
    return out


def instrument(mgr: Any) -> Metrics:
    """Turn metrics on for ``mgr`` (an aio or blocking LockManager): give it a
    ``Metrics`` (``mgr.meter``) and register a ``MetricsObserver`` as its
    observer (``quorumlock._faces.Observer``).  The manager's methods are
    not replaced; a manager without an observer does no per-operation work
    for metrics."""
    m = Metrics()
    if not _faces.is_async(mgr, "metrics.instrument"):
        m.mutex = threading.Lock()   # += on shared ints from many threads
    mgr.meter = m
    mgr.observer = MetricsObserver(m)
    return m


class MetricsObserver:
    """The observer (``quorumlock._faces.Observer``) that feeds a ``Metrics``:
    the managers call it when an operation is decided."""

    __slots__ = ("m",)

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def _locked(self) -> Any:
        return self.m.mutex if self.m.mutex is not None else _NO_LOCK

    def on_acquire(self, seconds: float, ok: bool) -> None:
        with self._locked():
            self.m.observe("acquire", seconds, ok)
            if ok:
                self.m.held += 1

    def on_release_start(self) -> None:
        with self._locked():
            self.m.held -= 1

    def on_release(self, seconds: float, ok: bool) -> None:
        with self._locked():
            self.m.observe("release", seconds, ok)

    def on_extend(self, seconds: float, ok: bool) -> None:
        with self._locked():
            self.m.observe("extend", seconds, ok)

    def on_batch(self, op: str, seconds: float, done: int, total: int, held_change: int) -> None:
        """A batch of ``total`` operations ``op`` ("acquire" / "release") of
        which ``done`` succeeded; ``held_change`` locks more (or fewer) held."""
        m = self.m
        with self._locked():
            m.batches += 1
            m.held += held_change
            m.hist[op].observe(seconds)
            m.ok[op] += done
            m.failed[op] += total - done


class _NoLock:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


_NO_LOCK = _NoLock()


def record(mgr: Any, op: str, seconds: float, ok: bool) -> None:
    """Record one observation on ``mgr``'s metrics if they are enabled (used by
    ``acquire``'s metered loop and the renewals in ``quorumlock.leases``)."""
    m = getattr(mgr, "meter", None)
    if m is None:
        return
    mutex = m.mutex
    if mutex is None:
        m.observe(op, seconds, ok)
    else:
        with mutex:
            m.observe(op, seconds, ok)


def bump(mgr: Any, field: str, by: int = 1) -> None:
    """Add ``by`` to the counter ``field`` of ``mgr``'s metrics, if enabled."""
    m = getattr(mgr, "meter", None)
    if m is None:
        return
    mutex = m.mutex
    if mutex is None:
        setattr(m, field, getattr(m, field) + by)
    else:
        with mutex:
            setattr(m, field, getattr(m, field) + by)


# -- exporters ----------------------------------------------------------------


class PrometheusCollector:
    """A ``prometheus_client`` collector reading ``locks.metrics()`` at scrape
    time (nothing is done per operation for the export).  Metric names start
    with ``quorumlock_``; every sample has a ``manager`` label."""

    def __init__(self, locks: Any, name: str = "default") -> None:
        self.locks = locks
        self.name = name

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snap = self.locks.metrics()
        lbl = ["manager"]
        me = [self.name]
        if snap["enabled"]:
            for op in _OPS:
                d = snap[op]
                h = HistogramMetricFamily(f"quorumlock_{op}_seconds",
                                          f"Latency of quorumlock {op.replace('_', ' ')} operations", labels=lbl)
                buckets = [("+Inf" if b == float("inf") else repr(b), c) for b, c in d["buckets"]]
                h.add_metric(me, buckets, d["sum"])
                yield h
                c = CounterMetricFamily(f"quorumlock_{op}_total", f"quorumlock {op} operations by result",
                                        labels=lbl + ["result"])
                for res in ("ok", "failed", "timeout"):
                    if res in d:
                        c.add_metric(me + [res], d[res])
                yield c
            g = GaugeMetricFamily("quorumlock_locks_held", "Locks acquired and not yet released", labels=lbl)
            g.add_metric(me, snap["held"])
            yield g
            for field, doc in (("waits", "acquire calls that had to wait"),
                               ("notified", "retries started by a release notification"),
                               ("lost", "leases declared lost")):
                c = CounterMetricFamily(f"quorumlock_{field}_total", doc, labels=lbl)
                c.add_metric(me, snap[field])
                yield c
            c = CounterMetricFamily("quorumlock_jobs_total", "exclusive jobs by result", labels=lbl + ["result"])
            for res, v in snap["jobs"].items():
                c.add_metric(me + [res], v)
            yield c
        for field, doc in (("sent", "commands sent to the node"), ("errors", "error replies from the node"),
                           ("timeouts", "reply deadlines the node missed")):
            c = CounterMetricFamily(f"quorumlock_node_{field}_total", doc, labels=lbl + ["node"])
            for nd in snap["nodes"]:
                c.add_metric(me + [nd["node"]], nd[field])
            yield c
        g = GaugeMetricFamily("quorumlock_node_ready", "1 if the node counts in quorums", labels=lbl + ["node"])
        for nd in snap["nodes"]:
            g.add_metric(me + [nd["node"]], 1 if nd["ready"] else 0)
        yield g
        g = GaugeMetricFamily("quorumlock_node_clock_offset_seconds",
                              "The node's wall clock minus this client's (measured by fenced managers)",
                              labels=lbl + ["node"])
        for nd in snap["nodes"]:
            if nd.get("clock") is not None:
                g.add_metric(me + [nd["node"]], nd["clock"]["offset"])
        yield g
        g = GaugeMetricFamily("quorumlock_leases_watched", "Leases watched by the guard", labels=lbl)
        g.add_metric(me, snap["leases"]["watched"])
        yield g

    def describe(self) -> Any:  # registering must not call collect() (it needs a live manager)
        return []


def register_prometheus(locks: Any, name: str = "default", registry: Any = None) -> PrometheusCollector:
    """Register ``locks`` with a ``prometheus_client`` registry (default: the
    global ``REGISTRY``); returns the collector (``registry.unregister`` it
    to stop)."""
    if registry is None:
        from prometheus_client import REGISTRY as registry  # noqa: N811
    col = PrometheusCollector(locks, name)
    registry.register(col)
    return col


def register_opentelemetry(locks: Any, name: str = "default", meter_provider: Any = None) -> Any:
    """Export ``locks``' metrics through the OpenTelemetry metrics API:
    observable counters / gauges read ``locks.metrics()`` on collection, and
    the latency histograms are recorded as they happen (the exporter adds
    one ``Histogram.record`` per operation; only with ``metrics=True``).
    Returns the ``Meter``."""
    from opentelemetry import metrics as otel

    provider = meter_provider if meter_provider is not None else otel.get_meter_provider()
    meter = provider.get_meter("quorumlock")
    attrs = {"manager": name}

    def counter_cb(getter: Callable[[Dict[str, Any]], List[Any]]) -> Callable[[Any], List[Any]]:
        def cb(options: Any) -> List[Any]:
            return getter(locks.metrics())
        return cb

    def ops(snap: Dict[str, Any]) -> List[Any]:
        out = []
        if snap["enabled"]:
            for op in _OPS:
                for res in ("ok", "failed", "timeout"):
                    if res in snap[op]:
                        out.append(otel.Observation(snap[op][res], {**attrs, "op": op, "result": res}))
        return out

    def node_field(field: str) -> Callable[[Dict[str, Any]], List[Any]]:
        return lambda snap: [otel.Observation(nd[field], {**attrs, "node": nd["node"]}) for nd in snap["nodes"]]

    meter.create_observable_counter("quorumlock.operations", [counter_cb(ops)], unit="1",
                                    description="quorumlock operations by result")
    for field in ("sent", "errors", "timeouts"):
        meter.create_observable_counter(f"quorumlock.node.{field}", [counter_cb(node_field(field))], unit="1")

    def held(snap: Dict[str, Any]) -> List[Any]:
        return [otel.Observation(snap.get("held", 0), attrs)]

    def lost(snap: Dict[str, Any]) -> List[Any]:
        return [otel.Observation(snap["leases"]["lost"], attrs)]

    meter.create_observable_gauge("quorumlock.locks_held", [counter_cb(held)], unit="1")
    meter.create_observable_counter("quorumlock.leases_lost", [counter_cb(lost)], unit="1")
    m: Optional[Metrics] = getattr(locks, "meter", None)
    if m is not None:
        hists = {op: meter.create_histogram(f"quorumlock.{op}.duration", unit="s") for op in _OPS}

        def sink(op: str, seconds: float, ok: bool) -> None:
            hists[op].record(seconds, {**attrs, "result": "ok" if ok else "failed"})

        m.sinks.append(sink)
    return meter
