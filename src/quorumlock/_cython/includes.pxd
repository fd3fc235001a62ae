# Declarations of the C helpers in csrc/ (small static inline functions, ql_ prefix).
from libc.stdint cimport uint64_t


cdef extern from "ql_clock.h" nogil:
    uint64_t ql_monotonic_ns() noexcept


cdef extern from "ql_random.h":
    int ql_random_take(unsigned char *out, size_t len) noexcept
    int ql_kernel_random(unsigned char *buf, size_t len) noexcept
    enum:
        QL_POOL_SIZE
