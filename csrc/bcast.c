/*
 * shmarray broadcast ring: implementation.  See bcast.h for the protocol and
 * the layout.
 *
 * Memory-order summary
 *  - seq: the producer publishes frame w with store-release (w + 1), after
 *    the payload and meta; readers load it with acquire.
 *  - head: store-release after seq; subscribers load it with acquire only to
 *    start (join), to skip (latest, lapped) and to validate.
 *  - cursor (BLOCK): a subscriber releases with store-release; the producer
 *    loads it with acquire before it overwrites the slot, so the subscriber's
 *    reads of the old frame happen before the overwrite.
 *  - DROP seqlock: the writer stores seq = WRITING | (w + 1) (release, so a
 *    reader that sees it also sees head >= w), then a release fence, then the
 *    payload and meta, then seq = w + 1 (release).  A reader loads seq
 *    (acquire), reads meta / payload, then an acquire fence and seq again
 *    (Boehm, "Can seqlocks get along with programming language memory
 *    models?"): equal values mean the bytes it read were not being rewritten.
 *  - join vs. the producer's cached gate: the joiner stores its provisional
 *    cursor, state JOINING (seq_cst) and bumps gen (seq_cst) before it loads
 *    head (seq_cst); the producer stores head, fences (seq_cst) and loads
 *    gen after every publish, and rescans the cursors when gen moved (Dekker:
 *    one of the two sees the other; bcast.h).
 *  - eventcount: the poster does store-release; fence(seq_cst); load waiters.
 *    The waiter does load epoch; fetch_add(waiters, seq_cst); fence(seq_cst);
 *    re-check; FUTEX_WAIT(epoch snapshot).  The fences forbid the StoreLoad
 *    reordering that would lose a wake-up; the epoch snapshot makes a bump
 *    between the re-check and the sleep return at once (EAGAIN).
 */
#define _GNU_SOURCE
#include "bcast.h"
#include "shm_common.h"
#include "ring.h" /* the dtype allowlist */

#if defined(__SANITIZE_THREAD__)
#define BCAST_TSAN 1
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
/* TSan does not model atomic_thread_fence (gcc 12 warns).  Our fences order
 * the eventcount's store->load and the seqlock; the seqlock's racy reads are
 * done by an uninstrumented copy below, so TSan never sees them. */
#pragma GCC diagnostic ignored "-Wtsan"
#endif
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define BCAST_TSAN 1
#endif
#endif

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define HANDLE_MAGIC 0x4243415354484431ULL /* private */
#define BCAST_MAGIC 0x31545343424d4853ULL  /* bytes "SHMBCST1" on little-endian */
#define RETRY_CAP (1u << 16)
#define HEADER_SIZE 256u
#define CTRL_OFF 256u
#define SUBS_OFF 768u
#define ENTRY_SIZE 128u
#define WRITING SHM_BCAST_WRITING


_Static_assert(sizeof(shm_bcast_header) == HEADER_SIZE, "header size");
_Static_assert(offsetof(shm_bcast_header, body) == 8, "header body offset");
_Static_assert(sizeof(shm_bcast_header_body) == 88, "header body size");
_Static_assert(offsetof(shm_bcast_header_body, checksum) == 80, "checksum offset");
_Static_assert(sizeof(shm_bcast_ctrl) == 512, "ctrl size");
_Static_assert(offsetof(shm_bcast_ctrl, data_epoch) == 128, "data block");
_Static_assert(offsetof(shm_bcast_ctrl, space_epoch) == 256, "space block");
_Static_assert(offsetof(shm_bcast_ctrl, gen) == 264, "gen offset");
_Static_assert(offsetof(shm_bcast_ctrl, eos) == 384, "eos block");
_Static_assert(offsetof(shm_bcast_ctrl, joins) == 432, "joins offset");
_Static_assert(sizeof(shm_bcast_sub) == ENTRY_SIZE, "subscriber entry size");
_Static_assert(offsetof(shm_bcast_sub, cursor) == 64, "cursor offset");
_Static_assert(sizeof(shm_bcast_slot) == ENTRY_SIZE, "slot entry size");
_Static_assert(offsetof(shm_bcast_slot, dtype) == 96, "dtype offset");
_Static_assert(offsetof(shm_bcast_slot, flags) == 99, "flags offset");
_Static_assert(sizeof(_Atomic uint32_t) == 4, "futex words are 32-bit");

/* ---------------------------------------------------------------- helpers */

static inline uint64_t deadline_after(uint64_t ns)
{
    uint64_t d = now_ns();
    if (__builtin_add_overflow(d, ns, &d))
        d = UINT64_MAX;
    return d;
}

static inline int attached(const shm_bcast_t *h)
{
    return h != NULL && h->attached == HANDLE_MAGIC;
}

static inline int is_producer(const shm_bcast_t *h)
{
    return attached(h) && h->role == SHM_BCAST_ROLE_PRODUCER;
}

static inline int is_subscriber(const shm_bcast_t *h)
{
    return attached(h) && h->role == SHM_BCAST_ROLE_SUBSCRIBER;
}

/* Copies a frame out of a slot the producer may be rewriting (DROP).  The
 * result is used only if seq is unchanged afterwards.  Under TSan the copy
 * is uninstrumented: the race is the seqlock's design, detected and
 * discarded, not a bug. */
#ifdef BCAST_TSAN
__attribute__((no_sanitize_thread, noinline)) static void racy_copy(void *dst, const void *src,
                                                                    size_t n)
{
    const volatile unsigned char *s = src;
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++)
        d[i] = s[i];
}
#else
static inline void racy_copy(void *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
}
#endif

/* ------------------------------------------------------------------ futex */

static int futex_wait(_Atomic uint32_t *word, uint32_t expect, uint64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000ULL);
    ts.tv_nsec = (long)(ns % 1000000000ULL);
    /* Shared (no FUTEX_PRIVATE_FLAG): the word lives in a mapping of several
     * processes.  A relative timeout is measured on CLOCK_MONOTONIC. */
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expect, &ts, NULL, 0);
    if (rc == 0)
        return SHM_BCAST_OK;
    switch (errno) {
    case EAGAIN: return SHM_BCAST_OK; /* the epoch moved before we slept */
    case ETIMEDOUT: return SHM_BCAST_TIMEOUT;
    case EINTR: return SHM_BCAST_INTR;
    default: return SHM_BCAST_BAD_ARG;
    }
}

static void wake_all(_Atomic uint32_t *epoch)
{
    atomic_fetch_add_explicit(epoch, 1, REL);
    syscall(SYS_futex, (uint32_t *)epoch, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* The poster's half of the eventcount: call after the store-release. */
static inline void wake_if_waiting(_Atomic uint32_t *waiters, _Atomic uint32_t *epoch)
{
    atomic_thread_fence(SC);
    if (atomic_load_explicit(waiters, RLX) != 0)
        wake_all(epoch);
}

static inline void wake_producer(const shm_bcast_t *h)
{
    wake_if_waiting(&h->ctrl->space_waiters, &h->ctrl->space_epoch);
}

static inline void wake_subscribers(const shm_bcast_t *h)
{
    wake_if_waiting(&h->ctrl->data_waiters, &h->ctrl->data_epoch);
}

/* ------------------------------------------------------------ status text */

const char *shm_bcast_strerror(int rc)
{
    switch (rc) {
    case SHM_BCAST_OK: return "ok";
    case SHM_BCAST_EMPTY: return "no new frame";
    case SHM_BCAST_FULL: return "ring full (a subscriber has not released the oldest frame)";
    case SHM_BCAST_CORRUPT: return "broadcast ring corrupt (inconsistent shared memory)";
    case SHM_BCAST_TOO_LARGE: return "frame too large for the slot";
    case SHM_BCAST_BAD_ARG: return "bad argument or call out of sequence";
    case SHM_BCAST_ENDED: return "end of stream";
    case SHM_BCAST_BUSY: return "busy (retries exhausted)";
    case SHM_BCAST_LIMIT: return "limit reached (a subscriber holds at most capacity - 1 frames)";
    case SHM_BCAST_RESIZE: return "the frame does not fit the buffer";
    case SHM_BCAST_TIMEOUT: return "timed out";
    case SHM_BCAST_INTR: return "interrupted by a signal";
    default: return rc > 0 ? "ok" : "unknown status";
    }
}

int shm_bcast_abi_version(void) { return SHM_BCAST_ABI_VERSION; }

/* itemsize * prod(shape), overflow-checked, from the ring's dtype allowlist.
 * 0 on success, -1 on overflow or an invalid dtype/ndim. */
/* ------------------------------------------------------------------ layout */

typedef struct {
    uint64_t slot_stride, ctrl_off, subs_off, slots_off, payload_off, total_len;
} layout;


static int compute_layout(uint32_t policy, uint32_t cap, uint32_t maxs, uint64_t slot_bytes,
                          layout *L)
{
    if (policy != SHM_BCAST_POLICY_BLOCK && policy != SHM_BCAST_POLICY_DROP)
        return SHM_BCAST_BAD_ARG;
    if (cap < SHM_BCAST_MIN_CAPACITY || cap > SHM_BCAST_MAX_CAPACITY || (cap & (cap - 1)) != 0)
        return SHM_BCAST_BAD_ARG;
    if (maxs < 1 || maxs > SHM_BCAST_MAX_SUBSCRIBERS)
        return SHM_BCAST_BAD_ARG;
    if (slot_bytes < 1 || slot_bytes > SHM_BCAST_MAX_SLOT_BYTES)
        return SHM_BCAST_BAD_ARG;
    uint64_t t;
    if (round_up(slot_bytes, slot_bytes >= 65536 ? 4096 : 64, &L->slot_stride))
        return SHM_BCAST_BAD_ARG;
    L->ctrl_off = CTRL_OFF;
    L->subs_off = SUBS_OFF;
    L->slots_off = SUBS_OFF + (uint64_t)ENTRY_SIZE * maxs;
    if (round_up(L->slots_off + (uint64_t)ENTRY_SIZE * cap, 4096, &L->payload_off))
        return SHM_BCAST_BAD_ARG;
    if (__builtin_mul_overflow((uint64_t)cap, L->slot_stride, &t) ||
        __builtin_add_overflow(t, L->payload_off, &t) || round_up(t, 4096, &L->total_len))
        return SHM_BCAST_BAD_ARG;
    return SHM_BCAST_OK;
}


uint64_t shm_bcast_size(const shm_bcast_params *p)
{
    layout L;
    if (p == NULL ||
        compute_layout(p->policy, p->capacity, p->max_subscribers, p->slot_bytes, &L) != 0)
        return 0;
    return L.total_len;
}

int shm_bcast_format(void *base, uint64_t len, const shm_bcast_params *p)
{
    if (base == NULL || p == NULL || ((uintptr_t)base & 127u) != 0)
        return SHM_BCAST_BAD_ARG;
    layout L;
    int rc = compute_layout(p->policy, p->capacity, p->max_subscribers, p->slot_bytes, &L);
    if (rc != SHM_BCAST_OK)
        return rc;
    if (L.total_len > len)
        return SHM_BCAST_TOO_LARGE;
    unsigned char *b = base;
    shm_bcast_header *hd = base;
    atomic_store_explicit(&hd->magic, 0, RLX);
    /* Everything but the payload (slot seq 0: nothing committed yet). */
    memset(b + 8, 0, (size_t)(L.payload_off - 8));
    shm_bcast_header_body *hb = &hd->body;
    hb->layout_version = SHM_BCAST_LAYOUT_VERSION;
    hb->header_size = HEADER_SIZE;
    hb->policy = p->policy;
    hb->capacity = p->capacity;
    hb->max_subscribers = p->max_subscribers;
    hb->slot_bytes = p->slot_bytes;
    hb->slot_stride = L.slot_stride;
    hb->ctrl_off = L.ctrl_off;
    hb->subs_off = L.subs_off;
    hb->slots_off = L.slots_off;
    hb->payload_off = L.payload_off;
    hb->total_len = L.total_len;
    hb->checksum = fnv1a(hb, offsetof(shm_bcast_header_body, checksum));
    /* Magic last: an attacher that sees it (acquire) sees the whole format. */
    atomic_store_explicit(&hd->magic, BCAST_MAGIC, REL);
    return SHM_BCAST_OK;
}

/* ------------------------------------------------------------------ attach */

int shm_bcast_attach(shm_bcast_t *h, void *base, uint64_t len, shm_bcast_info *info_out)
{
    if (h == NULL)
        return SHM_BCAST_BAD_ARG;
    memset(h, 0, sizeof *h);
    if (base == NULL || ((uintptr_t)base & 127u) != 0)
        return SHM_BCAST_BAD_ARG;
    if (len < HEADER_SIZE)
        return SHM_BCAST_CORRUPT;
    shm_bcast_header *hd = base;
    if (atomic_load_explicit(&hd->magic, ACQ) != BCAST_MAGIC)
        return SHM_BCAST_CORRUPT;
    shm_bcast_header_body hb; /* the one read of the header */
    memcpy(&hb, &hd->body, sizeof hb);
    if (hb.layout_version != SHM_BCAST_LAYOUT_VERSION || hb.header_size != HEADER_SIZE)
        return SHM_BCAST_CORRUPT;
    if (hb.checksum != fnv1a(&hb, offsetof(shm_bcast_header_body, checksum)))
        return SHM_BCAST_CORRUPT;
    layout L;
    if (compute_layout(hb.policy, hb.capacity, hb.max_subscribers, hb.slot_bytes, &L))
        return SHM_BCAST_CORRUPT;
    if (L.slot_stride != hb.slot_stride || L.ctrl_off != hb.ctrl_off ||
        L.subs_off != hb.subs_off || L.slots_off != hb.slots_off ||
        L.payload_off != hb.payload_off || L.total_len != hb.total_len || L.total_len > len)
        return SHM_BCAST_CORRUPT;

    unsigned char *b = base;
    h->base = b;
    h->len = len;
    h->info.policy = hb.policy;
    h->info.capacity = hb.capacity;
    h->info.max_subscribers = hb.max_subscribers;
    h->info.layout_version = SHM_BCAST_LAYOUT_VERSION;
    h->info.slot_bytes = hb.slot_bytes;
    h->info.slot_stride = L.slot_stride;
    h->info.ctrl_off = L.ctrl_off;
    h->info.subs_off = L.subs_off;
    h->info.slots_off = L.slots_off;
    h->info.payload_off = L.payload_off;
    h->info.total_len = L.total_len;
    h->mask = (uint64_t)hb.capacity - 1;
    h->ctrl = (shm_bcast_ctrl *)(b + L.ctrl_off);
    h->subs = (shm_bcast_sub *)(b + L.subs_off);
    h->slots = (shm_bcast_slot *)(b + L.slots_off);
    h->payload = b + L.payload_off;
    h->drop = hb.policy == SHM_BCAST_POLICY_DROP;
    h->s_nbytes = -1;
    h->attached = HANDLE_MAGIC;
    if (info_out)
        *info_out = h->info;
    return SHM_BCAST_OK;
}

int shm_bcast_set_debug(shm_bcast_t *h, int on)
{
    if (!attached(h))
        return SHM_BCAST_BAD_ARG;
    h->debug = on != 0;
    return SHM_BCAST_OK;
}

/* ---------------------------------------------------------------- waiting */

static _Atomic uint32_t *epoch_word(const shm_bcast_t *h, uint32_t which)
{
    return which == SHM_BCAST_WAIT_DATA ? &h->ctrl->data_epoch : &h->ctrl->space_epoch;
}

static _Atomic uint32_t *waiters_word(const shm_bcast_t *h, uint32_t which)
{
    return which == SHM_BCAST_WAIT_DATA ? &h->ctrl->data_waiters : &h->ctrl->space_waiters;
}

int shm_bcast_arm(shm_bcast_t *h, uint32_t which)
{
    if (!attached(h) || which > SHM_BCAST_WAIT_SPACE)
        return SHM_BCAST_BAD_ARG;
    /* Snapshot first: a bump after it (for a publish our re-check misses)
     * makes the sleep return at once. */
    h->armed[which] = atomic_load_explicit(epoch_word(h, which), ACQ);
    atomic_fetch_add_explicit(waiters_word(h, which), 1, SC);
    atomic_thread_fence(SC);
    return SHM_BCAST_OK;
}

int shm_bcast_disarm(shm_bcast_t *h, uint32_t which)
{
    if (!attached(h) || which > SHM_BCAST_WAIT_SPACE)
        return SHM_BCAST_BAD_ARG;
    _Atomic uint32_t *w = waiters_word(h, which);
    uint32_t v = atomic_load_explicit(w, RLX);
    /* Decrement-if-positive: a count zeroed by a hostile peer never wraps. */
    for (uint32_t tries = 0; tries < RETRY_CAP; tries++) {
        if (v == 0)
            return SHM_BCAST_OK;
        if (atomic_compare_exchange_weak_explicit(w, &v, v - 1, SC, RLX))
            return SHM_BCAST_OK;
    }
    return SHM_BCAST_BUSY;
}

int shm_bcast_sleep(shm_bcast_t *h, uint32_t which, uint64_t timeout_ns)
{
    if (!attached(h) || which > SHM_BCAST_WAIT_SPACE)
        return SHM_BCAST_BAD_ARG;
    if (timeout_ns == 0)
        return SHM_BCAST_TIMEOUT;
    if (timeout_ns > SHM_BCAST_MAX_SLEEP_NS)
        timeout_ns = SHM_BCAST_MAX_SLEEP_NS;
    return futex_wait(epoch_word(h, which), h->armed[which], timeout_ns);
}

/* ---------------------------------------------------------------- producer */

int shm_bcast_register(shm_bcast_t *h, uint32_t pid, uint64_t start_time)
{
    if (!attached(h) || h->role != 0)
        return SHM_BCAST_BAD_ARG;
    shm_bcast_ctrl *c = h->ctrl;
    if (atomic_load_explicit(&c->eos, ACQ))
        return SHM_BCAST_ENDED;
    /* A producer killed between its seq publish and its head store leaves
     * head one behind a committed frame: skip what the slots show was
     * published (bounded by capacity). */
    uint64_t h0 = atomic_load_explicit(&c->head, ACQ), hd = h0;
    for (uint64_t k = 0; k <= h->mask; k++) {
        if (atomic_load_explicit(&h->slots[hd & h->mask].seq, ACQ) != hd + 1)
            break;
        hd++;
    }
    if (hd != h0)
        atomic_store_explicit(&c->head, hd, REL);
    atomic_store_explicit(&c->prod_pid, pid, RLX);
    atomic_store_explicit(&c->prod_start_time, start_time, RLX);
    atomic_store_explicit(&c->prod_joined_ns, now_ns(), RLX);
    atomic_store_explicit(&c->prod_frames, 0, RLX);
    atomic_store_explicit(&c->prod_state, SHM_BCAST_ACTIVE, SC);
    atomic_thread_fence(SC);
    h->gen_seen = atomic_load_explicit(&c->gen, ACQ);
    h->gen_gate = h->gen_seen - 1; /* the first claim scans the cursors */
    h->gate = 0;
    h->head = hd;
    h->frames = 0;
    h->claimed = 0;
    h->ended = 0;
    h->role = SHM_BCAST_ROLE_PRODUCER;
    return SHM_BCAST_OK;
}

int shm_bcast_unregister(shm_bcast_t *h)
{
    if (!is_producer(h))
        return SHM_BCAST_BAD_ARG;
    h->claimed = 0; /* an unpublished claim is simply never seen */
    atomic_store_explicit(&h->ctrl->prod_state,
                          h->ended ? SHM_BCAST_ENDED_STATE : SHM_BCAST_FREE, SC);
    h->role = 0;
    return SHM_BCAST_OK;
}

int64_t shm_bcast_set_schema(shm_bcast_t *h, uint32_t dtype, uint32_t ndim, const uint64_t *shape)
{
    if (!attached(h) || ndim > SHM_BCAST_MAX_NDIM || (ndim > 0 && shape == NULL))
        return SHM_BCAST_BAD_ARG;
    uint64_t n;
    if (shm_ring_dtype_itemsize(dtype) <= 0)
        return SHM_BCAST_BAD_ARG;
    if (frame_bytes(dtype, ndim, shape, &n) || n > h->info.slot_bytes)
        return SHM_BCAST_TOO_LARGE;
    h->s_dtype = dtype;
    h->s_ndim = ndim;
    for (uint32_t k = 0; k < SHM_BCAST_MAX_NDIM; k++)
        h->s_shape[k] = k < ndim ? shape[k] : 0;
    h->s_nbytes = (int64_t)n;
    return (int64_t)n;
}

/* BLOCK: recompute the minimum cursor of the gating subscribers.  OK when
 * position head may be written, FULL when a subscriber still holds
 * head - capacity, CORRUPT for an entry no protocol step can produce. */
static int rescan(shm_bcast_t *h)
{
    const uint64_t cap = h->mask + 1, w = h->head;
    uint64_t m = w;
    /* acquire: a join whose gen bump we read has its state and cursor visible */
    uint32_t g = atomic_load_explicit(&h->ctrl->gen, ACQ);
    for (uint32_t i = 0; i < h->info.max_subscribers; i++) {
        shm_bcast_sub *e = &h->subs[i];
        uint32_t st = atomic_load_explicit(&e->state, ACQ);
        if (st == SHM_BCAST_FREE)
            continue;
        if (st != SHM_BCAST_JOINING && st != SHM_BCAST_ACTIVE)
            return SHM_BCAST_CORRUPT;
        uint64_t c = atomic_load_explicit(&e->cursor, ACQ);
        if (c > w || w - c > cap) {
            /* An ACTIVE cursor is always within [head - cap, head].  A
             * JOINING one is provisional: gate fully until it settles. */
            if (st == SHM_BCAST_ACTIVE)
                return SHM_BCAST_CORRUPT;
            c = w >= cap ? w - cap : 0;
        }
        if (c < m)
            m = c;
    }
    h->gate = m;
    h->gen_gate = g;
    return w - m >= cap ? SHM_BCAST_FULL : SHM_BCAST_OK;
}

static int64_t try_claim(shm_bcast_t *h)
{
    const uint64_t w = h->head;
    shm_bcast_slot *s = &h->slots[w & h->mask];
    if (!h->drop) {
        if (h->gen_seen != h->gen_gate || w - h->gate > h->mask) {
            int rc = rescan(h);
            if (rc != SHM_BCAST_OK)
                return rc;
        }
    } else {
        /* Release: a reader that sees WRITING also sees head >= w (it skips
         * from there).  The fence keeps the payload writes after this store. */
        atomic_store_explicit(&s->seq, WRITING | (w + 1), REL);
        atomic_thread_fence(REL);
    }
    h->claimed = 1;
    h->claim_slot = (uint32_t)(w & h->mask);
    return (int64_t)h->claim_slot;
}

int64_t shm_bcast_claim(shm_bcast_t *h, uint64_t spin_ns)
{
    if (!is_producer(h) || h->claimed)
        return SHM_BCAST_BAD_ARG;
    if (h->ended)
        return SHM_BCAST_ENDED;
    int64_t rc = try_claim(h);
    if (rc != SHM_BCAST_FULL || spin_ns == 0)
        return rc;
    uint64_t deadline = deadline_after(spin_ns);
    for (uint32_t i = 1;; i++) {
        cpu_relax();
        rc = try_claim(h);
        if (rc != SHM_BCAST_FULL || ((i & 63u) == 0 && now_ns() >= deadline))
            return rc;
    }
}

/* Stamps the meta from the schema, publishes the claimed slot, wakes
 * sleeping subscribers. */
static void publish(shm_bcast_t *h, uint64_t tag)
{
    shm_bcast_slot *s = &h->slots[h->claim_slot];
    const uint64_t w = h->head;
    atomic_store_explicit(&s->timestamp_ns, now_ns(), RLX);
    atomic_store_explicit(&s->tag, tag, RLX);
    atomic_store_explicit(&s->nbytes, (uint64_t)h->s_nbytes, RLX);
    atomic_store_explicit(&s->dtype, (uint16_t)h->s_dtype, RLX);
    atomic_store_explicit(&s->ndim, (uint8_t)h->s_ndim, RLX);
    atomic_store_explicit(&s->flags, 0, RLX);
    for (uint32_t k = 0; k < SHM_BCAST_MAX_NDIM; k++)
        atomic_store_explicit(&s->shape[k], h->s_shape[k], RLX);
    atomic_store_explicit(&s->seq, w + 1, REL);
    h->head = w + 1;
    atomic_store_explicit(&h->ctrl->head, w + 1, REL);
    atomic_store_explicit(&h->ctrl->prod_frames, ++h->frames, RLX);
    h->claimed = 0;
    /* One fence serves both Dekker pairs: joiners (gen) and sleepers. */
    atomic_thread_fence(SC);
    if (!h->drop)
        h->gen_seen = atomic_load_explicit(&h->ctrl->gen, RLX);
    if (atomic_load_explicit(&h->ctrl->data_waiters, RLX) != 0)
        wake_all(&h->ctrl->data_epoch);
}

int shm_bcast_commit(shm_bcast_t *h, uint64_t tag)
{
    if (!is_producer(h) || !h->claimed || h->s_nbytes < 0)
        return SHM_BCAST_BAD_ARG;
    publish(h, tag);
    return SHM_BCAST_OK;
}

int shm_bcast_abort(shm_bcast_t *h)
{
    if (!is_producer(h) || !h->claimed)
        return SHM_BCAST_BAD_ARG;
    /* BLOCK: the slot was never published.  DROP: it stays marked WRITING
     * for position head (readers there see "not yet"; readers of its old
     * frame see "lapped"), and the next claim rewrites the mark. */
    h->claimed = 0;
    return SHM_BCAST_OK;
}

int64_t shm_bcast_send(shm_bcast_t *h, const void *src, uint64_t nbytes, uint64_t tag,
                       uint64_t spin_ns)
{
    if (!is_producer(h) || h->claimed || h->s_nbytes < 0)
        return SHM_BCAST_BAD_ARG;
    if (nbytes != (uint64_t)h->s_nbytes)
        return nbytes > h->info.slot_bytes ? SHM_BCAST_TOO_LARGE : SHM_BCAST_BAD_ARG;
    if (nbytes > 0 && src == NULL)
        return SHM_BCAST_BAD_ARG;
    int64_t slot = shm_bcast_claim(h, spin_ns);
    if (slot < 0)
        return slot;
    if (nbytes > 0)
        memcpy(h->payload + (uint64_t)slot * h->info.slot_stride, src, (size_t)nbytes);
    publish(h, tag);
    return slot;
}

int shm_bcast_end(shm_bcast_t *h)
{
    if (!is_producer(h))
        return SHM_BCAST_BAD_ARG;
    if (h->ended)
        return SHM_BCAST_OK;
    h->claimed = 0;
    h->ended = 1;
    atomic_store_explicit(&h->ctrl->prod_state, SHM_BCAST_ENDED_STATE, RLX);
    /* eos after every publish (release): a subscriber that sees it and then
     * finds its next slot empty has read everything. */
    atomic_store_explicit(&h->ctrl->eos, 1, REL);
    wake_subscribers(h);
    return SHM_BCAST_OK;
}

/* ------------------------------------------------------------- subscribers */

static inline void bit_set(shm_bcast_t *h, uint64_t p)
{
    uint64_t i = p & h->mask;
    h->held_bits[i >> 6] |= 1ULL << (i & 63);
}

static inline void bit_clear(shm_bcast_t *h, uint64_t p)
{
    uint64_t i = p & h->mask;
    h->held_bits[i >> 6] &= ~(1ULL << (i & 63));
}

static inline int bit_get(const shm_bcast_t *h, uint64_t p)
{
    uint64_t i = p & h->mask;
    return (int)((h->held_bits[i >> 6] >> (i & 63)) & 1u);
}

static inline shm_bcast_sub *me(const shm_bcast_t *h)
{
    return &h->subs[h->index];
}

/* Publishes this subscriber's cursor (BLOCK: gates the producer). */
static void set_cursor(shm_bcast_t *h, uint64_t c)
{
    h->cursor = c;
    atomic_store_explicit(&me(h)->cursor, c, REL);
    if (!h->drop)
        wake_producer(h);
}

int shm_bcast_join(shm_bcast_t *h, uint32_t index, uint32_t pid, uint64_t start_time,
                   uint64_t *held_bits, uint32_t held_words)
{
    if (!attached(h) || h->role != 0 || index >= h->info.max_subscribers)
        return SHM_BCAST_BAD_ARG;
    uint32_t words = (uint32_t)((h->mask + 64) >> 6);
    if (!h->drop && (held_bits == NULL || held_words < words))
        return SHM_BCAST_BAD_ARG;
    shm_bcast_ctrl *c = h->ctrl;
    shm_bcast_sub *e = &h->subs[index];
    uint32_t prev = atomic_load_explicit(&e->state, ACQ);
    if (prev != SHM_BCAST_FREE)
        atomic_fetch_add_explicit(&c->evicted, 1, RLX); /* its occupant died unannounced */
    uint64_t h1 = atomic_load_explicit(&c->head, ACQ);
    uint64_t prov = h1 ? h1 - 1 : 0;
    atomic_store_explicit(&e->cursor, prov, RLX);
    atomic_store_explicit(&e->pid, pid, RLX);
    atomic_store_explicit(&e->start_time, start_time, RLX);
    atomic_store_explicit(&e->joined_ns, now_ns(), RLX);
    atomic_store_explicit(&e->received, 0, RLX);
    atomic_store_explicit(&e->lost, 0, RLX);
    atomic_store_explicit(&e->skipped, 0, RLX);
    atomic_store_explicit(&e->join_pos, prov, RLX);
    /* Counted in the producer's minimum before we read where to start. */
    atomic_store_explicit(&e->state, SHM_BCAST_JOINING, SC);
    atomic_fetch_add_explicit(&c->gen, 1, SC);
    uint64_t h2 = atomic_load_explicit(&c->head, SC);
    uint64_t start = h2 ? h2 - 1 : 0;
    if (start < prov) /* head went backwards: only a hostile peer does that */
        start = prov;
    atomic_store_explicit(&e->join_pos, start, RLX);
    atomic_store_explicit(&e->cursor, start, REL);
    atomic_store_explicit(&e->state, SHM_BCAST_ACTIVE, SC);
    atomic_fetch_add_explicit(&c->joins, 1, RLX);
    h->role = SHM_BCAST_ROLE_SUBSCRIBER;
    h->index = index;
    h->next = h->cursor = h->join_pos = start;
    h->received = h->lost = h->skipped = 0;
    h->held = 0;
    h->held_bits = h->drop ? NULL : held_bits;
    h->held_words = h->drop ? 0 : held_words;
    if (h->held_bits)
        memset(h->held_bits, 0, (size_t)words * sizeof(uint64_t));
    h->l_valid = 0;
    wake_producer(h); /* it may wait on our provisional cursor */
    return SHM_BCAST_OK;
}

int shm_bcast_leave(shm_bcast_t *h)
{
    if (!is_subscriber(h))
        return SHM_BCAST_BAD_ARG;
    shm_bcast_sub *e = me(h);
    uint32_t expect = SHM_BCAST_ACTIVE;
    /* CAS: never overwrite an entry that was (wrongly) taken from us */
    atomic_compare_exchange_strong_explicit(&e->state, &expect, SHM_BCAST_FREE, SC, RLX);
    wake_producer(h);
    h->role = 0;
    h->held = 0;
    h->held_bits = NULL;
    h->held_words = 0;
    return SHM_BCAST_OK;
}

int shm_bcast_evict(shm_bcast_t *h, uint32_t index)
{
    if (!attached(h) || index >= h->info.max_subscribers)
        return SHM_BCAST_BAD_ARG;
    if (is_subscriber(h) && h->index == index)
        return SHM_BCAST_BAD_ARG; /* that is us: leave */
    shm_bcast_sub *e = &h->subs[index];
    uint32_t st = atomic_load_explicit(&e->state, ACQ);
    if (st == SHM_BCAST_FREE)
        return 0;
    if (!atomic_compare_exchange_strong_explicit(&e->state, &st, SHM_BCAST_FREE, SC, RLX))
        return 0;
    atomic_fetch_add_explicit(&h->ctrl->evicted, 1, RLX);
    wake_producer(h);
    return 1;
}

/* Reads the slot meta once into `out`.  0 if it describes a valid frame. */
static int read_meta(const shm_bcast_t *h, const shm_bcast_slot *s, shm_bcast_frame *out)
{
    out->timestamp_ns = atomic_load_explicit(&s->timestamp_ns, RLX);
    out->tag = atomic_load_explicit(&s->tag, RLX);
    out->nbytes = atomic_load_explicit(&s->nbytes, RLX);
    out->dtype = atomic_load_explicit(&s->dtype, RLX);
    out->ndim = atomic_load_explicit(&s->ndim, RLX);
    uint8_t flags = atomic_load_explicit(&s->flags, RLX);
    for (uint32_t k = 0; k < SHM_BCAST_MAX_NDIM; k++)
        out->shape[k] = atomic_load_explicit(&s->shape[k], RLX);
    if (out->ndim > SHM_BCAST_MAX_NDIM) {
        out->ndim = 0;
        return -1;
    }
    for (uint32_t k = out->ndim; k < SHM_BCAST_MAX_NDIM; k++)
        out->shape[k] = 0;
    uint64_t n;
    if (flags != 0 || frame_bytes(out->dtype, out->ndim, out->shape, &n) || n != out->nbytes ||
        n > h->info.slot_bytes)
        return -1;
    return 0;
}

static void note_schema(shm_bcast_t *h, shm_bcast_frame *out)
{
    int same = h->l_valid && h->l_dtype == out->dtype && h->l_ndim == out->ndim &&
               memcmp(h->l_shape, out->shape, sizeof h->l_shape) == 0;
    out->schema_changed = !same;
    if (!same) {
        h->l_valid = 1;
        h->l_dtype = out->dtype;
        h->l_ndim = out->ndim;
        memcpy(h->l_shape, out->shape, sizeof h->l_shape);
    }
}

/* Position p was read (or skipped) without being held: move on past it. */
static void pass(shm_bcast_t *h, uint64_t p)
{
    h->next = p + 1;
    if (h->drop || h->held == 0)
        set_cursor(h, h->next);
}

/* DROP: the producer lapped us at p; skip to the oldest frame that cannot be
 * under rewrite (head - capacity + 1) and count what we lost. */
static void skip_lapped(shm_bcast_t *h, shm_bcast_frame *out, uint64_t p)
{
    const uint64_t cap = h->mask + 1;
    uint64_t hd = atomic_load_explicit(&h->ctrl->head, ACQ);
    uint64_t np = p + 1;
    if (hd >= cap && hd - cap + 1 > np)
        np = hd - cap + 1;
    out->lost += np - p;
    h->lost += np - p;
    atomic_store_explicit(&me(h)->lost, h->lost, RLX);
    h->next = np;
    set_cursor(h, np);
}

/* One look at position next (and the frames after it when lapped). */
static int64_t recv_once(shm_bcast_t *h, shm_bcast_frame *out, void *dst, uint64_t dst_len)
{
    const int64_t cap = (int64_t)h->mask + 1;
    int eos_seen = 0;
    for (uint32_t tries = 0; tries < RETRY_CAP; tries++) {
        const uint64_t p = h->next;
        shm_bcast_slot *s = &h->slots[p & h->mask];
        const uint64_t s1 = atomic_load_explicit(&s->seq, ACQ);
        const int64_t d = (int64_t)((s1 & ~WRITING) - (p + 1));
        if (!h->drop && ((s1 & WRITING) || d > 0))
            return SHM_BCAST_CORRUPT; /* BLOCK: never marked, and nobody may lap us */
        if (d > 0) {
            skip_lapped(h, out, p);
            continue;
        }
        if (d < 0 || (s1 & WRITING)) {
            /* Not committed at p yet.  Legit: the slot holds p - cap, or is
             * being written (DROP) for p. */
            if (d < -cap)
                return SHM_BCAST_CORRUPT;
            /* eos is stored (release) after the last publish: once we see
             * it, one more look at the slot is final. */
            if (!eos_seen && atomic_load_explicit(&h->ctrl->eos, ACQ)) {
                eos_seen = 1;
                continue;
            }
            return eos_seen ? SHM_BCAST_ENDED : SHM_BCAST_EMPTY;
        }
        /* seq == p + 1: frame p is (or was, under DROP) in the slot.  BLOCK:
         * the producer cannot publish capacity frames past our cursor (this
         * also bounds release's scan and keeps held bits from aliasing). */
        if (!h->drop && p - h->cursor > h->mask)
            return SHM_BCAST_CORRUPT;
        int bad = read_meta(h, s, out);
        if (h->drop && (dst == NULL || bad || out->nbytes != dst_len)) {
            atomic_thread_fence(ACQ);
            if (atomic_load_explicit(&s->seq, RLX) != s1) {
                skip_lapped(h, out, p);
                continue;
            }
        }
        if (bad) {
            /* A frame we cannot describe: skip it, count it, keep moving. */
            out->lost += 1;
            h->lost += 1;
            atomic_store_explicit(&me(h)->lost, h->lost, RLX);
            pass(h, p);
            return SHM_BCAST_CORRUPT;
        }
        out->pos = p;
        out->slot = (uint32_t)(p & h->mask);
        if (dst != NULL) {
            if (out->nbytes != dst_len)
                return SHM_BCAST_RESIZE;
            const unsigned char *src = h->payload + (uint64_t)out->slot * h->info.slot_stride;
            if (h->drop) {
                racy_copy(dst, src, (size_t)dst_len);
                atomic_thread_fence(ACQ);
                if (atomic_load_explicit(&s->seq, RLX) != s1) {
                    skip_lapped(h, out, p); /* torn: the copy is discarded */
                    continue;
                }
            } else {
                memcpy(dst, src, (size_t)dst_len);
            }
            pass(h, p);
        } else if (h->drop) {
            pass(h, p); /* an optimistic view: nothing held, check valid() after use */
        } else {
            bit_set(h, p);
            h->held++;
            h->next = p + 1; /* the cursor stays at the lowest held frame */
        }
        note_schema(h, out);
        atomic_store_explicit(&me(h)->received, ++h->received, RLX);
        return (int64_t)out->slot;
    }
    return SHM_BCAST_BUSY;
}

static int recv_args_ok(const shm_bcast_t *h, const shm_bcast_frame *out, const void *dst,
                        uint64_t dst_len)
{
    return is_subscriber(h) && out != NULL && (dst == NULL || dst_len <= h->info.slot_bytes);
}

static int64_t recv_spin(shm_bcast_t *h, shm_bcast_frame *out, void *dst, uint64_t dst_len,
                         uint64_t spin_ns)
{
    /* BLOCK: a view may not make us hold capacity frames; and with the
     * window [cursor, next) full, no frame can come until we release one. */
    if (!h->drop && ((dst == NULL && h->held >= h->mask) || h->next - h->cursor > h->mask))
        return SHM_BCAST_LIMIT;
    int64_t rc = recv_once(h, out, dst, dst_len);
    if (rc != SHM_BCAST_EMPTY || spin_ns == 0)
        return rc;
    uint64_t deadline = deadline_after(spin_ns);
    for (uint32_t i = 1;; i++) {
        cpu_relax();
        rc = recv_once(h, out, dst, dst_len);
        if (rc != SHM_BCAST_EMPTY || ((i & 63u) == 0 && now_ns() >= deadline))
            return rc;
    }
}

int64_t shm_bcast_recv(shm_bcast_t *h, shm_bcast_frame *out, void *dst, uint64_t dst_len,
                       uint64_t spin_ns)
{
    if (!recv_args_ok(h, out, dst, dst_len))
        return SHM_BCAST_BAD_ARG;
    out->lost = 0;
    out->skipped = 0;
    return recv_spin(h, out, dst, dst_len, spin_ns);
}

int64_t shm_bcast_latest(shm_bcast_t *h, shm_bcast_frame *out, void *dst, uint64_t dst_len,
                         uint64_t spin_ns)
{
    if (!recv_args_ok(h, out, dst, dst_len))
        return SHM_BCAST_BAD_ARG;
    out->lost = 0;
    out->skipped = 0;
    uint64_t hd = atomic_load_explicit(&h->ctrl->head, ACQ);
    if (hd > h->next + 1) {
        /* BLOCK: our cursor gates the producer, so head - cursor <= capacity. */
        if (!h->drop && hd - h->cursor > h->mask + 1)
            return SHM_BCAST_CORRUPT;
        uint64_t n = hd - 1, k = n - h->next;
        out->skipped = k;
        h->skipped += k;
        atomic_store_explicit(&me(h)->skipped, h->skipped, RLX);
        h->next = n;
        if (h->drop || h->held == 0)
            set_cursor(h, n);
    }
    return recv_spin(h, out, dst, dst_len, spin_ns);
}

int shm_bcast_release(shm_bcast_t *h, uint32_t slot, uint64_t pos)
{
    if (!is_subscriber(h) || slot > h->mask || (pos & h->mask) != slot || pos >= h->next)
        return SHM_BCAST_BAD_ARG;
    if (h->drop)
        return SHM_BCAST_OK; /* an optimistic view holds nothing */
    if (h->held == 0 || pos < h->cursor || !bit_get(h, pos))
        return SHM_BCAST_BAD_ARG; /* not held by us (a double release included) */
    bit_clear(h, pos);
    h->held--;
    if (pos == h->cursor) {
        uint64_t c = pos + 1;
        while (c < h->next && !bit_get(h, c)) /* bounded: next - cursor <= capacity */
            c++;
        set_cursor(h, c);
    }
    return SHM_BCAST_OK;
}

int shm_bcast_valid(const shm_bcast_t *h, uint32_t slot, uint64_t pos)
{
    if (!attached(h) || slot > h->mask || (pos & h->mask) != slot)
        return 0;
    /* The reads of the view happen before this load (seqlock reader side). */
    atomic_thread_fence(ACQ);
    return atomic_load_explicit(&h->slots[slot].seq, RLX) == pos + 1;
}

/* ---------------------------------------------------------- introspection */

int shm_bcast_status(const shm_bcast_t *h, shm_bcast_status_info *out)
{
    if (!attached(h) || out == NULL)
        return SHM_BCAST_BAD_ARG;
    const shm_bcast_ctrl *c = h->ctrl;
    memset(out, 0, sizeof *out);
    out->head = atomic_load_explicit(&c->head, RLX);
    out->evicted = atomic_load_explicit(&c->evicted, RLX);
    out->joins = atomic_load_explicit(&c->joins, RLX);
    out->prod_start_time = atomic_load_explicit(&c->prod_start_time, RLX);
    out->prod_frames = atomic_load_explicit(&c->prod_frames, RLX);
    out->eos = atomic_load_explicit(&c->eos, RLX);
    out->prod_state = atomic_load_explicit(&c->prod_state, ACQ);
    out->prod_pid = atomic_load_explicit(&c->prod_pid, RLX);
    out->data_waiters = atomic_load_explicit(&c->data_waiters, RLX);
    out->space_waiters = atomic_load_explicit(&c->space_waiters, RLX);
    out->gen = atomic_load_explicit(&c->gen, RLX);
    if (out->prod_state > SHM_BCAST_ENDED_STATE || out->prod_state == SHM_BCAST_JOINING)
        return SHM_BCAST_CORRUPT;
    return SHM_BCAST_OK;
}

int shm_bcast_subscriber(const shm_bcast_t *h, uint32_t index, shm_bcast_sub_info *out)
{
    if (!attached(h) || out == NULL || index >= h->info.max_subscribers)
        return SHM_BCAST_BAD_ARG;
    const shm_bcast_sub *e = &h->subs[index];
    memset(out, 0, sizeof *out);
    out->state = atomic_load_explicit(&e->state, ACQ);
    out->pid = atomic_load_explicit(&e->pid, RLX);
    out->start_time = atomic_load_explicit(&e->start_time, RLX);
    out->joined_ns = atomic_load_explicit(&e->joined_ns, RLX);
    out->join_pos = atomic_load_explicit(&e->join_pos, RLX);
    out->cursor = atomic_load_explicit(&e->cursor, RLX);
    out->next = out->cursor;
    out->received = atomic_load_explicit(&e->received, RLX);
    out->lost = atomic_load_explicit(&e->lost, RLX);
    out->skipped = atomic_load_explicit(&e->skipped, RLX);
    if (out->state > SHM_BCAST_ACTIVE)
        return SHM_BCAST_CORRUPT;
    return SHM_BCAST_OK;
}

int shm_bcast_self(const shm_bcast_t *h, shm_bcast_sub_info *out)
{
    if (!attached(h) || out == NULL)
        return SHM_BCAST_BAD_ARG;
    memset(out, 0, sizeof *out);
    if (h->role == SHM_BCAST_ROLE_PRODUCER) {
        out->state = SHM_BCAST_ACTIVE;
        out->next = h->head;
        out->received = h->frames;
        return SHM_BCAST_OK;
    }
    if (h->role != SHM_BCAST_ROLE_SUBSCRIBER)
        return SHM_BCAST_OK;
    out->state = SHM_BCAST_ACTIVE;
    out->join_pos = h->join_pos;
    out->cursor = h->cursor;
    out->next = h->next;
    out->received = h->received;
    out->lost = h->lost;
    out->skipped = h->skipped;
    out->held = h->held;
    return SHM_BCAST_OK;
}
