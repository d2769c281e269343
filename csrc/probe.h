/*
 * shmarray bench probe: what this machine can do, measured in pure C.
 *
 * Two floors for `shmarray bench`: single-core memcpy bandwidth, and the
 * cross-process round trip of one cache line (two processes bouncing one
 * shared 64-bit word, no system call in the loop).  Every figure the bench
 * prints is also shown as a fraction of these.
 *
 * Like the ring, the probe never allocates: the caller hands it the buffers
 * (for the ping-pong, a MAP_SHARED mapping of at least 128 bytes, so that a
 * forked child sees the same word).  Every loop is bounded in time.
 */
#ifndef SHMARRAY_PROBE_H
#define SHMARRAY_PROBE_H

#include <stdint.h>

#define SHM_PROBE_OK 0
#define SHM_PROBE_BAD_ARG -1      /* NULL buffer, zero count, misaligned word */
#define SHM_PROBE_TIMEOUT -2      /* the peer did not answer before the deadline */
#define SHM_PROBE_FORK_FAILED -3  /* fork() failed (errno is kept) */
#define SHM_PROBE_CHILD_FAILED -4 /* the child exited abnormally */

/* Copies n bytes from src to dst (memcpy), `inner` times per sample, for
 * `reps` samples; ns_out[i] receives the CLOCK_MONOTONIC duration of sample i
 * (inner > 1 keeps the clock's ~20 ns out of a small copy's figure).
 * Returns SHM_PROBE_OK or BAD_ARG. */
int shm_probe_memcpy(void *dst, const void *src, uint64_t n, uint32_t inner,
                     uint32_t reps, uint64_t *ns_out);

/* Cross-process cache-line ping-pong.  Forks a child that only spins on the
 * 64-bit word at `shared` (64-byte aligned, in a MAP_SHARED mapping) and
 * answers each ping; the parent times nbatches batches of `batch` round
 * trips each and writes each batch's duration (ns) to batch_ns_out.
 * cpu_parent / cpu_child >= 0 pin the two sides for the duration of the call
 * (the parent's affinity is restored); -1 leaves the scheduler free.  The
 * child never returns to Python: it leaves with _exit().  Returns SHM_PROBE_OK,
 * or TIMEOUT (the child is killed and reaped) when the whole run outlasts
 * timeout_ns, or BAD_ARG, FORK_FAILED, CHILD_FAILED. */
int shm_probe_pingpong(void *shared, uint32_t nbatches, uint32_t batch,
                       uint64_t timeout_ns, int cpu_parent, int cpu_child,
                       uint64_t *batch_ns_out);

/* CLOCK_MONOTONIC in ns (the clock the probe uses). */
uint64_t shm_probe_now_ns(void);

#endif /* SHMARRAY_PROBE_H */
