/* Helpers shared by ring.c and bcast.c (static inline: no exported symbols). */
#ifndef SHMARRAY_SHM_COMMON_H
#define SHMARRAY_SHM_COMMON_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "ring.h" /* the dtype allowlist: shm_ring_dtype_itemsize, SHM_RING_MAX_NDIM */

#define RLX memory_order_relaxed
#define ACQ memory_order_acquire
#define REL memory_order_release
#define AR memory_order_acq_rel
#define SC memory_order_seq_cst

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* Bytes of a frame of `dtype` and `shape[0..ndim)`, overflow-checked: 0, or -1 when the dtype
 * code is not in the allowlist, ndim is too large, or the size overflows. */
static inline int frame_bytes(uint32_t dtype, uint32_t ndim, const uint64_t *shape, uint64_t *out)
{
    int64_t item = shm_ring_dtype_itemsize(dtype);
    if (item <= 0 || ndim > SHM_RING_MAX_NDIM)
        return -1;
    uint64_t n = (uint64_t)item;
    for (uint32_t k = 0; k < ndim; k++)
        if (__builtin_mul_overflow(n, shape[k], &n))
            return -1;
    *out = n;
    return 0;
}

static inline int round_up(uint64_t v, uint64_t a, uint64_t *out)
{
    if (__builtin_add_overflow(v, a - 1, out))
        return -1;
    *out &= ~(a - 1);
    return 0;
}

static inline uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

#endif
