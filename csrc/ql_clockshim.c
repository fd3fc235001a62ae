/* ql_clockshim.c: an LD_PRELOAD shim that shifts and scales a process's
 * wall clock, for the clock faults of the safety checker (docs/faults.md, rows
 * 4-8).  libfaketime cannot be used on Debian's redis-server: jemalloc calls
 * clock_gettime() while libfaketime is initialising and the server hangs
 * (docs/faults.md, "How the faults are made"; libfaketime #130, #327, #478).  This shim therefore:
 *
 *   - never allocates and never calls dlsym(): the real time comes from a raw
 *     syscall(SYS_clock_gettime), so there is no "next symbol" to look up and
 *     nothing to initialise before the first call;
 *   - shifts only the wall clock: CLOCK_REALTIME and CLOCK_REALTIME_COARSE in
 *     clock_gettime(), gettimeofday() and time().  CLOCK_MONOTONIC is left
 *     alone: Redis expires keys by the wall clock (verified for Redis 7.0 and
 *     Valkey 8.1), which is the clock Redlock's safety argument is about;
 *   - reads its parameters from a small file mapped shared (MAP_SHARED), which
 *     the harness rewrites while the server runs (quorumlock.chaos.clock).
 *
 * The control file is named by QL_CLOCKSHIM_FILE (a relative name resolves in
 * the process's working directory, so one environment serves every node of a
 * LocalCluster: each node runs in its own directory).  No variable, or no
 * file: the shim passes the real time through.
 *
 * Fake time, with all values in ns:
 *     fake = anchor + (real - anchor) * rate + offset
 * The harness changes rate by moving the anchor to "now" and folding the fake
 * time reached so far into offset, so the fake clock never jumps unless asked.
 *
 * Build (the harness does this at run time with the system cc):
 *     cc -O2 -shared -fPIC -o ql_clockshim.so ql_clockshim.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* The control file: 32 bytes, little-endian, written by the harness.
 * seq is a seqlock: odd while the harness is writing. */
struct ql_clock_ctl {
    volatile uint64_t seq;
    volatile int64_t anchor_ns;
    volatile int64_t offset_ns;
    volatile double rate;
};

#define QL_UNINIT 0
#define QL_MAPPED 1
#define QL_PASSTHROUGH 2

static struct ql_clock_ctl *ql_ctl;
static int ql_state = QL_UNINIT;

static void ql_init(void)
{
    /* getenv() does not allocate; open/mmap go straight to the kernel. */
    const char *path = getenv("QL_CLOCKSHIM_FILE");
    void *m;
    long fd;
    if (path == NULL || path[0] == '\0') {
        __atomic_store_n(&ql_state, QL_PASSTHROUGH, __ATOMIC_RELEASE);
        return;
    }
    fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        __atomic_store_n(&ql_state, QL_PASSTHROUGH, __ATOMIC_RELEASE);
        return;
    }
    m = mmap(NULL, sizeof(struct ql_clock_ctl), PROT_READ, MAP_SHARED, (int)fd, 0);
    syscall(SYS_close, fd);
    if (m == MAP_FAILED) {
        __atomic_store_n(&ql_state, QL_PASSTHROUGH, __ATOMIC_RELEASE);
        return;
    }
    ql_ctl = (struct ql_clock_ctl *)m;
    __atomic_store_n(&ql_state, QL_MAPPED, __ATOMIC_RELEASE);
}

__attribute__((constructor)) static void ql_clockshim_ctor(void)
{
    if (__atomic_load_n(&ql_state, __ATOMIC_ACQUIRE) == QL_UNINIT)
        ql_init();
}

static inline long ql_raw(clockid_t clk, struct timespec *ts)
{
    return syscall(SYS_clock_gettime, clk, ts);
}

/* real ns -> fake ns, by the control file (identity when there is none). */
static int64_t ql_fake_ns(int64_t real)
{
    uint64_t s1, s2;
    int64_t anchor, offset;
    double rate;
    int state = __atomic_load_n(&ql_state, __ATOMIC_ACQUIRE);
    if (state == QL_UNINIT) {
        /* Called before our constructor (e.g. by the allocator's own init). */
        ql_init();
        state = __atomic_load_n(&ql_state, __ATOMIC_ACQUIRE);
    }
    if (state != QL_MAPPED)
        return real;
    do {
        s1 = ql_ctl->seq;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        anchor = ql_ctl->anchor_ns;
        offset = ql_ctl->offset_ns;
        rate = ql_ctl->rate;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        s2 = ql_ctl->seq;
    } while ((s1 & 1) || s1 != s2);
    if (!(rate > 0.0)) /* also catches a NaN, or a file of zeros */
        rate = 1.0;
    if (rate == 1.0)
        return real + offset;
    return anchor + (int64_t)((double)(real - anchor) * rate) + offset;
}

static inline int64_t ql_ts_ns(const struct timespec *ts)
{
    return (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

static inline void ql_ns_ts(int64_t ns, struct timespec *ts)
{
    int64_t sec = ns / 1000000000LL, rem = ns % 1000000000LL;
    if (rem < 0) {
        rem += 1000000000LL;
        sec -= 1;
    }
    ts->tv_sec = (time_t)sec;
    ts->tv_nsec = (long)rem;
}

int clock_gettime(clockid_t clk, struct timespec *ts)
{
    long r = ql_raw(clk, ts);
    if (r != 0)
        return (int)r; /* syscall() already set errno and returned -1 */
    if (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)
        ql_ns_ts(ql_fake_ns(ql_ts_ns(ts)), ts);
    return 0;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
    struct timespec ts;
    long r = ql_raw(CLOCK_REALTIME, &ts);
    if (r != 0)
        return (int)r;
    ql_ns_ts(ql_fake_ns(ql_ts_ns(&ts)), &ts);
    if (tv != NULL) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    if (tz != NULL) {
        /* Obsolete; glibc reports UTC with no DST. */
        struct timezone *z = (struct timezone *)tz;
        z->tz_minuteswest = 0;
        z->tz_dsttime = 0;
    }
    return 0;
}

time_t time(time_t *out)
{
    struct timespec ts;
    time_t t;
    if (ql_raw(CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    ql_ns_ts(ql_fake_ns(ql_ts_ns(&ts)), &ts);
    t = ts.tv_sec;
    if (out != NULL)
        *out = t;
    return t;
}
