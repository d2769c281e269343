/*
 * The channel core's internals, shared by chan.c (the common part: layout,
 * participants, schema, meta, waiting) and the two protocols, ring.c
 * (one-to-one, work queue) and bcast.c (broadcast).  Not part of the ABI.
 */
#ifndef SHMARRAY_CHAN_IMPL_H
#define SHMARRAY_CHAN_IMPL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sched.h>
#include <time.h>

#include "chan.h"

#if defined(__SANITIZE_THREAD__)
#define CHAN_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CHAN_TSAN 1
#endif
#endif
#if defined(CHAN_TSAN) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
/* TSan does not model atomic_thread_fence (gcc 12 warns, and -Werror would
 * break the SHMARRAY_SANITIZE=thread build).  Our fences order the
 * eventcount's store->load and the broadcast seqlock; no data is published
 * through them alone, and the seqlock's racy copy is uninstrumented
 * (bcast.c), so TSan's race analysis is unaffected.  Lost wake-ups are
 * caught by the stress test's sleep timeout. */
#pragma GCC diagnostic ignored "-Wtsan"
#endif

#define RLX memory_order_relaxed
#define ACQ memory_order_acquire
#define REL memory_order_release
#define AR memory_order_acq_rel
#define SC memory_order_seq_cst

#define RETRY_CAP (1u << 16) /* bound on any loop a hostile peer could stretch */
#define NO_POS SHM_CHAN_NO_POS

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t deadline_after(uint64_t ns)
{
    uint64_t d = now_ns();
    if (__builtin_add_overflow(d, ns, &d))
        d = UINT64_MAX;
    return d;
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

static inline int round_up(uint64_t v, uint64_t a, uint64_t *out)
{
    if (__builtin_add_overflow(v, a - 1, out))
        return -1;
    *out &= ~(a - 1);
    return 0;
}

/* Bytes of a frame of `dtype` and `shape[0..ndim)`, overflow-checked: 0, or -1 when the dtype
 * code is not in the allowlist, ndim is too large, or the size overflows. */
static inline int frame_bytes(uint32_t dtype, uint32_t ndim, const uint64_t *shape, uint64_t *out)
{
    int64_t item = shm_chan_dtype_itemsize(dtype);
    if (item <= 0 || ndim > SHM_CHAN_MAX_NDIM)
        return -1;
    uint64_t n = (uint64_t)item;
    for (uint32_t k = 0; k < ndim; k++)
        if (__builtin_mul_overflow(n, shape[k], &n))
            return -1;
    *out = n;
    return 0;
}

/* ------------------------------------------------------------ the handle */

#define CHAN_HANDLE_MAGIC 0x324c444843484331ULL /* private: "1CHCHDL2" */

static inline int chan_attached(const shm_chan_t *h)
{
    return h != NULL && h->attached == CHAN_HANDLE_MAGIC;
}

/* The handle's private lock (see shm_chan_t.lock): every entry point that
 * reads or writes the handle's bookkeeping takes it; sleeping never does. */
static inline void hlock(shm_chan_t *h)
{
    for (uint32_t i = 0; atomic_exchange_explicit(&h->lock, 1, ACQ); i++) {
        if (i < 256)
            cpu_relax();
        else
            sched_yield(); /* its holder was descheduled */
    }
}

static inline void hunlock(shm_chan_t *h) { atomic_store_explicit(&h->lock, 0, REL); }

static inline int is_producer(const shm_chan_t *h)
{
    return chan_attached(h) && h->registered && h->role == SHM_CHAN_ROLE_PRODUCER;
}

static inline int is_consumer(const shm_chan_t *h)
{
    return chan_attached(h) && h->registered && h->role == SHM_CHAN_ROLE_CONSUMER;
}

static inline int is_wq(const shm_chan_t *h) { return h->info.mode == SHM_CHAN_MODE_WORK_QUEUE; }
static inline int is_bcast(const shm_chan_t *h) { return h->info.mode == SHM_CHAN_MODE_BROADCAST; }

static inline unsigned char *slot_payload(const shm_chan_t *h, uint64_t slot)
{
    return h->payload + slot * h->info.slot_stride;
}

/* The held set of a consumer: bit (p & mask) while position p is held. */
static inline int held_get(const shm_chan_t *h, uint64_t p)
{
    uint64_t i = p & h->mask;
    return (int)((h->held_bits[i >> 6] >> (i & 63)) & 1u);
}

static inline void held_set(shm_chan_t *h, uint64_t p)
{
    uint64_t i = p & h->mask;
    h->held_bits[i >> 6] |= 1ULL << (i & 63);
    h->held++;
}

static inline void held_clear(shm_chan_t *h, uint64_t p)
{
    uint64_t i = p & h->mask;
    h->held_bits[i >> 6] &= ~(1ULL << (i & 63));
    h->held--;
}

/* ---------------------------------------------------------------- waking */

/* The poster's half of the eventcount, after its store-release: wake up to
 * `n` sleepers of `which` (0: all) and ring the doorbell of every announced fd
 * waiter of `which`. */
void chan_wake(shm_chan_t *h, uint32_t which, uint32_t n);

/* ------------------------------------------------------------------- meta */

/* Stamps the slot meta of the outstanding claim from the schema (relaxed
 * stores: the caller's store-release of seq publishes them). */
void chan_stamp_meta(shm_chan_t *h, shm_chan_slot *s, uint64_t tag);
/* Reads the slot meta once into `out` and validates it: 0, or -1 for meta no
 * protocol step writes (the frame must be dropped). */
int chan_read_meta(const shm_chan_t *h, const shm_chan_slot *s, shm_chan_frame *out);
/* Counts a frame this handle committed or received in its entry (relaxed:
 * for stats and `shmarray top` only). */
static inline void count_frame(shm_chan_t *h, uint64_t nbytes)
{
    h->frames++;
    h->bytes += nbytes;
    atomic_store_explicit(&h->me->frames, h->frames, RLX);
    atomic_store_explicit(&h->me->bytes, h->bytes, RLX);
}
/* Writes a registering participant's identity into entry e (relaxed: its
 * state store, seq_cst, publishes them). */
void chan_init_entry(shm_chan_t *h, shm_chan_part *e, uint32_t role, uint32_t pid,
                     uint64_t start);
/* Withdraws every doorbell announcement of entry `e` (a dead participant's, or
 * one being reused): its bits, and their share of the channel's count, so that
 * posters stop trying to ring a FIFO nobody reads. */
void chan_clear_doorbells(shm_chan_t *h, shm_chan_part *e);
/* Poisons a released slot's payload (debug mode). */
void chan_poison(const shm_chan_t *h, uint64_t slot);

/* --------------------------------------------------- end of stream word */

/* The eos word is SHM_CHAN_EOS | a 31-bit registration ticket.  A producer
 * registers by storing its entry ACTIVE and then bumping the ticket (CAS,
 * refused once EOS is set); the last producer to end sets EOS by CAS from the
 * ticket it read before scanning the other entries, so a registration that
 * raced with the scan makes the CAS fail and the scan run again.  Either the
 * new producer is seen, or it sees EOS and backs out: no frame is ever
 * committed after end of stream. */
/* OK, or ENDED (the caller's entry is ACTIVE already; it backs out). */
int chan_producer_ticket(shm_chan_t *h);
/* end(): sets EOS unless another producer is ACTIVE.  1 if it set it. */
int chan_end_stream(shm_chan_t *h);
static inline int eos_set(const shm_chan_t *h)
{
    return (atomic_load_explicit(&h->ctrl->eos, ACQ) & SHM_CHAN_EOS) != 0;
}

/* --------------------------------------------------------------- protocols */

/* ring.c: one-to-one and work queue. */
int ring_register(shm_chan_t *h, uint32_t index, uint32_t role, uint32_t pid, uint64_t start);
void ring_unregister(shm_chan_t *h);
int ring_recover(shm_chan_t *h, uint32_t index, uint64_t *dropped);
int64_t ring_claim(shm_chan_t *h);
void ring_publish(shm_chan_t *h, uint64_t tag);
int ring_abort(shm_chan_t *h); /* 1 if a tombstone was published */
int64_t ring_recv(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len,
                  int64_t want_slot);
int ring_release(shm_chan_t *h, uint64_t pos);

/* bcast.c: broadcast. */
int bcast_register(shm_chan_t *h, uint32_t index, uint32_t role, uint32_t pid, uint64_t start);
void bcast_unregister(shm_chan_t *h);
int bcast_recover(shm_chan_t *h, uint32_t index);
int64_t bcast_claim(shm_chan_t *h);
void bcast_publish(shm_chan_t *h, uint64_t tag);
int64_t bcast_recv(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len);
int bcast_skip_to_newest(shm_chan_t *h, shm_chan_frame *out);
int bcast_release(shm_chan_t *h, uint64_t pos);

#endif /* SHMARRAY_CHAN_IMPL_H */
