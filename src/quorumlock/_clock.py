"""The one clock of every lease, validity and deadline in quorumlock.

``CLOCK_BOOTTIME`` where the platform has it (Linux), else
``CLOCK_MONOTONIC``.  Both never jump with the wall clock; BOOTTIME also
keeps counting while the machine is suspended, where MONOTONIC stops: a
client suspended for an hour would otherwise wake up believing in a lease
that expired on the nodes long ago.  The compiled core reads the same clock
(csrc/ql_clock.h), so deadlines from either build compare with ``now_ns()``."""

from __future__ import annotations

import functools
import time

if hasattr(time, "CLOCK_BOOTTIME"):
    CLOCK_NAME = "CLOCK_BOOTTIME"
    #: Integer nanoseconds of the lease clock.
    now_ns = functools.partial(time.clock_gettime_ns, time.CLOCK_BOOTTIME)
else:  # pragma: no cover - not Linux
    CLOCK_NAME = "CLOCK_MONOTONIC"
    now_ns = time.monotonic_ns
