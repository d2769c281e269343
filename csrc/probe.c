/*
 * shmarray bench probe: implementation.  See probe.h.
 *
 * The ping-pong bounces one word: the parent stores 2k+1 (release), the
 * child waits for it (acquire) and stores 2k+2, the parent waits for that.
 * One cache line changes owner twice per round trip, which is the least any
 * cross-process hand-off can cost; round trip / 2 is the one-way floor.
 */
#define _GNU_SOURCE
#include "probe.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Spins between two clock reads: the clock costs ~20 ns, a spin far less. */
#define CLOCK_EVERY 1024u

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

uint64_t shm_probe_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int shm_probe_memcpy(void *dst, const void *src, uint64_t n, uint32_t inner,
                     uint32_t reps, uint64_t *ns_out)
{
    if (dst == NULL || src == NULL || ns_out == NULL || n == 0 || inner == 0 || reps == 0)
        return SHM_PROBE_BAD_ARG;
    /* dst is the caller's memory, so the compiler must perform every copy; the
     * signal fences keep the copies between the two clock reads. */
    for (uint32_t i = 0; i < reps; i++) {
        uint64_t t0 = shm_probe_now_ns();
        atomic_signal_fence(memory_order_seq_cst);
        for (uint32_t j = 0; j < inner; j++) {
            memcpy(dst, src, (size_t)n);
            atomic_signal_fence(memory_order_seq_cst);
        }
        ns_out[i] = shm_probe_now_ns() - t0;
    }
    return SHM_PROBE_OK;
}

static int pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

/* Waits until *word == want; 0, or -1 past the deadline. */
static int await_value(_Atomic uint64_t *word, uint64_t want, uint64_t deadline)
{
    for (uint32_t spins = 1;; spins++) {
        if (atomic_load_explicit(word, memory_order_acquire) == want)
            return 0;
        cpu_relax();
        if (spins % CLOCK_EVERY == 0 && shm_probe_now_ns() > deadline)
            return -1;
    }
}

static void child_loop(_Atomic uint64_t *word, uint64_t rounds, uint64_t deadline,
                       int cpu)
{
    if (cpu >= 0)
        (void)pin(cpu); /* best effort: a refused pin still measures */
    for (uint64_t k = 0; k < rounds; k++) {
        if (await_value(word, 2 * k + 1, deadline) != 0)
            _exit(3);
        atomic_store_explicit(word, 2 * k + 2, memory_order_release);
    }
    _exit(0);
}

int shm_probe_pingpong(void *shared, uint32_t nbatches, uint32_t batch,
                       uint64_t timeout_ns, int cpu_parent, int cpu_child,
                       uint64_t *batch_ns_out)
{
    if (shared == NULL || batch_ns_out == NULL || nbatches == 0 || batch == 0 ||
        ((uintptr_t)shared & 63u) != 0)
        return SHM_PROBE_BAD_ARG;
    _Atomic uint64_t *word = (_Atomic uint64_t *)shared;
    const uint64_t rounds = (uint64_t)nbatches * batch;
    const uint64_t deadline = shm_probe_now_ns() + timeout_ns;
    atomic_store_explicit(word, 0, memory_order_seq_cst);

    cpu_set_t saved;
    int restore = 0;
    if (cpu_parent >= 0 && sched_getaffinity(0, sizeof saved, &saved) == 0)
        restore = pin(cpu_parent) == 0;

    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        if (restore)
            (void)sched_setaffinity(0, sizeof saved, &saved);
        errno = err;
        return SHM_PROBE_FORK_FAILED;
    }
    if (pid == 0)
        child_loop(word, rounds, deadline, cpu_child); /* never returns */

    int rc = SHM_PROBE_OK;
    uint64_t k = 0;
    for (uint32_t b = 0; b < nbatches && rc == SHM_PROBE_OK; b++) {
        uint64_t t0 = shm_probe_now_ns();
        for (uint32_t i = 0; i < batch; i++, k++) {
            atomic_store_explicit(word, 2 * k + 1, memory_order_release);
            if (await_value(word, 2 * k + 2, deadline) != 0) {
                rc = SHM_PROBE_TIMEOUT;
                break;
            }
        }
        batch_ns_out[b] = shm_probe_now_ns() - t0;
    }
    if (rc != SHM_PROBE_OK)
        (void)kill(pid, SIGKILL);
    int status = 0;
    pid_t got;
    do {
        got = waitpid(pid, &status, 0);
    } while (got < 0 && errno == EINTR);
    if (rc == SHM_PROBE_OK && (got != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0))
        rc = SHM_PROBE_CHILD_FAILED;
    if (restore)
        (void)sched_setaffinity(0, sizeof saved, &saved);
    return rc;
}
