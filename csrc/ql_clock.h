/* The clock of validity, deadlines and retries.
 *
 * Redlock's validity is "TTL minus the time the attempt took minus drift".  The
 * attempt's duration must come from a clock that never jumps, so everything the
 * client times is one clock in integer nanoseconds (docs/algorithm.md):
 * CLOCK_BOOTTIME where it exists (Linux), else CLOCK_MONOTONIC.  BOOTTIME is
 * MONOTONIC plus the time the system spent suspended: a laptop that sleeps
 * with a lock held must wake up seeing the lease as expired, and MONOTONIC
 * stops during suspend.  The pure-Python twin reads the same clock
 * (quorumlock/_clock.py).  The wall clock is never read by the engine. */
#ifndef QL_CLOCK_H
#define QL_CLOCK_H

#include <stdint.h>
#include <time.h>

#if defined(CLOCK_BOOTTIME)
#define QL_LEASE_CLOCK CLOCK_BOOTTIME
#else
#define QL_LEASE_CLOCK CLOCK_MONOTONIC
#endif

static inline uint64_t ql_monotonic_ns(void)
{
    struct timespec ts;
    /* A vDSO call on Linux (BOOTTIME too, since 5.x): ~20 ns, no syscall. */
    clock_gettime(QL_LEASE_CLOCK, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

#endif /* QL_CLOCK_H */
