"""The history a chaos run records, as JSON Lines (schema: docs/safety.md).

Every line is one JSON object with a ``type``:

``meta``   the run's configuration (first line).
``op``     one client operation: ``op`` is ``acquire``, ``release``,
           ``extend``, ``check``, ``read`` or ``write``; ``invoke`` and
           ``complete`` are host ``CLOCK_MONOTONIC`` nanoseconds (``complete``
           is null if the operation never returned).
``fault``  one fault the harness injected (``t``, ``name``, ``target``).
``final``  what the storage and the lock nodes held at the end.

Clients write their own operations (one file per client process, flushed as
they go) with :func:`quorumlock.chaos.clock.host_monotonic_ns`; the harness
merges them with its fault events into one file sorted by time
(:func:`merge`).
"""

from __future__ import annotations

import json
import os
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional

__all__ = ["SCHEMA_VERSION", "HistoryWriter", "read_history", "merge", "event_time"]

#: Bumped when a field changes meaning.
SCHEMA_VERSION = 1


class HistoryWriter:
    """Append events to a JSONL file; ``flush_every`` lines are buffered.

    Buffered lines of a process that is SIGKILLed are lost; the chaos clients
    are paused (SIGSTOP) but never killed, and they flush on exit."""

    def __init__(self, path: str, flush_every: int = 64) -> None:
        self.path = path
        self._f: IO[str] = open(path, "a", encoding="utf-8")
        self._n = 0
        self.flush_every = flush_every

    def write(self, event: Dict[str, Any]) -> None:
        self._f.write(json.dumps(event, separators=(",", ":")) + "\n")
        self._n += 1
        if self._n >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        self._f.flush()
        self._n = 0

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            self._f.close()

    def __enter__(self) -> "HistoryWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_history(path: str) -> List[Dict[str, Any]]:
    """All events of a JSONL history (a torn last line is skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short when its writer was stopped
    return out


def event_time(ev: Dict[str, Any]) -> int:
    """The time an event is sorted by: ``invoke`` for ops, ``t`` otherwise."""
    if ev.get("type") == "op":
        return int(ev.get("invoke") or 0)
    return int(ev.get("t") or 0)


def merge(out_path: str, meta: Dict[str, Any], parts: Iterable[str],
          extra: Iterable[Dict[str, Any]] = (), final: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Write one history: ``meta`` first, then every event of the ``parts``
    files and ``extra`` sorted by time, then ``final``.  Returns the events."""
    events: List[Dict[str, Any]] = []
    for p in parts:
        if os.path.exists(p):
            events.extend(read_history(p))
    events.extend(extra)
    events.sort(key=event_time)
    head = dict(meta, type="meta", schema=SCHEMA_VERSION)
    allev = [head] + events + ([dict(final, type="final")] if final is not None else [])
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for ev in allev:
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
    os.replace(tmp, out_path)
    return allev


def ops(events: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    for ev in events:
        if ev.get("type") == "op":
            yield ev
