/* Kernel randomness for lock tokens, read in pools.
 *
 * A token is 20 bytes (160 bits) from the kernel's CSPRNG: unguessable, so a
 * client can never release or extend a lock it does not hold by guessing.  One
 * getrandom() call fills a pool of QL_POOL_SIZE bytes that is then handed out
 * 20 bytes at a time, so the syscall is paid once per ~200 tokens.
 *
 * Fork safety: a child process inherits a copy of the pool and would hand out
 * the parent's next tokens.  A pthread_atfork child handler empties the pool,
 * so the child's first token comes from a fresh kernel read. */
#ifndef QL_RANDOM_H
#define QL_RANDOM_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#if defined(__linux__)
#include <sys/syscall.h>
#elif defined(__APPLE__)
#include <sys/random.h> /* getentropy() */
#endif

#define QL_POOL_SIZE 4096

static unsigned char ql_pool[QL_POOL_SIZE];
static size_t ql_pool_pos = QL_POOL_SIZE; /* empty */
static int ql_atfork_registered = 0;

static void ql_random_forget(void) { ql_pool_pos = QL_POOL_SIZE; }

/* Fill buf with len bytes from the kernel.  Returns 0, or -1 with errno set. */
static inline int ql_kernel_random(unsigned char *buf, size_t len)
{
    size_t done = 0;
#if defined(__linux__) && defined(SYS_getrandom)
    while (done < len) {
        long r = syscall(SYS_getrandom, buf + done, len - done, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOSYS)
                break; /* old kernel: fall back to /dev/urandom */
            return -1;
        }
        done += (size_t)r;
    }
    if (done == len)
        return 0;
#elif defined(__APPLE__) || defined(__OpenBSD__) || defined(__FreeBSD__)
    /* getentropy() is limited to 256 bytes per call. */
    while (done < len) {
        size_t chunk = len - done > 256 ? 256 : len - done;
        if (getentropy(buf + done, chunk) != 0)
            break;
        done += chunk;
    }
    if (done == len)
        return 0;
#endif
    {
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -1;
        while (done < len) {
            ssize_t r = read(fd, buf + done, len - done);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                close(fd);
                return -1;
            }
            if (r == 0) {
                close(fd);
                errno = EIO;
                return -1;
            }
            done += (size_t)r;
        }
        close(fd);
    }
    return 0;
}

/* Copy len (<= QL_POOL_SIZE) pooled random bytes into out.  Call with the GIL
 * held (the pool is shared by all threads of the process). */
static inline int ql_random_take(unsigned char *out, size_t len)
{
    if (!ql_atfork_registered) {
        if (pthread_atfork(NULL, NULL, ql_random_forget) == 0)
            ql_atfork_registered = 1;
    }
    if (len > QL_POOL_SIZE) {
        return ql_kernel_random(out, len);
    }
    if (QL_POOL_SIZE - ql_pool_pos < len) {
        if (ql_kernel_random(ql_pool, QL_POOL_SIZE) != 0)
            return -1;
        ql_pool_pos = 0;
    }
    memcpy(out, ql_pool + ql_pool_pos, len);
    /* Never hand out the same bytes twice, even if memory is later disclosed. */
    memset(ql_pool + ql_pool_pos, 0, len);
    ql_pool_pos += len;
    return 0;
}

#endif /* QL_RANDOM_H */
