/* Monotonic time for validity, deadlines and retries.
 *
 * Redlock's validity is "TTL minus the time the attempt took minus drift".  The
 * attempt's duration must come from a clock that never jumps, so everything the
 * client times is CLOCK_MONOTONIC in integer nanoseconds (docs/algorithm.md).
 * The wall clock is never read by the engine. */
#ifndef QL_CLOCK_H
#define QL_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t ql_monotonic_ns(void)
{
    struct timespec ts;
    /* clock_gettime(CLOCK_MONOTONIC) is a vDSO call on Linux: ~20 ns, no syscall. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

#endif /* QL_CLOCK_H */
