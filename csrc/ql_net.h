/* Small socket helpers for the blocking engine. */
#ifndef QL_NET_H
#define QL_NET_H

#include <errno.h>

/* True when a non-blocking send/recv must simply be retried later.
 * (EAGAIN and EWOULDBLOCK are the same value on Linux but not everywhere, so
 * this cannot be a switch.) */
static inline int ql_would_block(int e)
{
    return e == EAGAIN || e == EWOULDBLOCK || e == EINTR;
}

#endif /* QL_NET_H */
