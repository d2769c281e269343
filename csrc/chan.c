/*
 * shmarray channel core, the part every mode shares: status text, the dtype
 * allowlist, the layout (format, attach, validation), the participant table
 * (register, unregister, recover, introspection), the frame schema and slot
 * meta, end of stream, the public entry points (which check the caller and
 * dispatch to ring.c or bcast.c), spinning, and waiting (futex eventcount,
 * fd doorbells).  See chan.h for the layout and the contract.
 *
 * Memory-order summary (the protocols' own orders are in ring.c and bcast.c)
 *  - format stores the header magic last (release); attach loads it with
 *    acquire and copies the header once.
 *  - a participant's state is stored seq_cst after its identity fields
 *    (relaxed), and loaded with acquire.
 *  - eventcount: the poster does store-release (seq); fence(seq_cst); load
 *    waiters.  The waiter does load epoch; fetch_add(waiters, seq_cst);
 *    fence(seq_cst); re-check; FUTEX_WAIT(epoch snapshot).  The fences forbid
 *    the StoreLoad reordering that would lose a wake-up; the snapshot makes a
 *    bump between the re-check and the sleep return at once (EAGAIN).
 *    Doorbells ride on the same fences (the `doorbells` count is loaded after
 *    the poster's fence; an fd waiter raises it before its re-check).
 *  - end of stream: see chan_impl.h (a ticket CAS against the enders' scan).
 */
#define _GNU_SOURCE
#include "chan_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CHAN_MAGIC 0x324e4148434d4853ULL /* bytes "SHMCHAN2" on little-endian */
#define HEADER_SIZE 256u
#define CTRL_OFF 256u
#define PARTS_OFF 768u
#define ENTRY_SIZE 128u

_Static_assert(sizeof(shm_chan_header) == HEADER_SIZE, "header size");
_Static_assert(offsetof(shm_chan_header, body) == 8, "header body offset");
_Static_assert(sizeof(shm_chan_header_body) == 88, "header body size");
_Static_assert(offsetof(shm_chan_header_body, checksum) == 80, "checksum offset");
_Static_assert(sizeof(shm_chan_ctrl) == 512, "ctrl size");
_Static_assert(offsetof(shm_chan_ctrl, dequeue_pos) == 128, "consumers' block");
_Static_assert(offsetof(shm_chan_ctrl, data_epoch) == 256, "waiting block");
_Static_assert(offsetof(shm_chan_ctrl, gen) == 276, "gen offset");
_Static_assert(offsetof(shm_chan_ctrl, eos) == 384, "cold block");
_Static_assert(offsetof(shm_chan_ctrl, closes) == 432, "closes offset");
_Static_assert(sizeof(shm_chan_part) == ENTRY_SIZE, "participant entry size");
_Static_assert(offsetof(shm_chan_part, pending_pos) == 32, "pending_pos offset");
_Static_assert(offsetof(shm_chan_part, cursor) == 64, "cursor on the second line");
_Static_assert(offsetof(shm_chan_part, dropped) == 96, "dropped offset");
_Static_assert(sizeof(shm_chan_slot) == ENTRY_SIZE, "slot entry size");
_Static_assert(offsetof(shm_chan_slot, claimant) == 112, "claimant offset");
_Static_assert(offsetof(shm_chan_slot, dtype) == 120, "dtype offset");
_Static_assert(offsetof(shm_chan_slot, flags) == 123, "flags offset");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "atomic u64 is lock-free sized");
_Static_assert(sizeof(_Atomic uint32_t) == 4, "futex words are 32-bit");

/* ------------------------------------------------------------ status text */

const char *shm_chan_strerror(int rc)
{
    switch (rc) {
    case SHM_CHAN_OK: return "ok";
    case SHM_CHAN_EMPTY: return "nothing to read";
    case SHM_CHAN_FULL: return "ring full (no slot released)";
    case SHM_CHAN_CORRUPT: return "channel corrupt (inconsistent shared memory)";
    case SHM_CHAN_TOO_LARGE: return "frame too large for the slot";
    case SHM_CHAN_BAD_ARG: return "bad argument or call out of sequence";
    case SHM_CHAN_ENDED: return "end of stream";
    case SHM_CHAN_BUSY: return "busy (entry or role held by another participant)";
    case SHM_CHAN_LIMIT: return "limit reached (a consumer holds at most capacity - 1 frames)";
    case SHM_CHAN_RESIZE: return "the frame does not fit the buffer";
    case SHM_CHAN_TIMEOUT: return "timed out";
    case SHM_CHAN_INTR: return "interrupted by a signal";
    case SHM_CHAN_STALE: return "not held by this registration (released already)";
    default: return rc > 0 ? "ok" : "unknown status";
    }
}

int shm_chan_abi_version(void) { return SHM_CHAN_ABI_VERSION; }

/* ------------------------------------------------------------------ dtypes */

typedef struct {
    const char *str;
    uint32_t itemsize;
} dtype_entry;

/* The single source of truth for dtype codes; never reorder, only append. */
static const dtype_entry DTYPES[] = {
    {NULL, 0}, /* 0: invalid, so a zeroed slot is detectably bad */
    {"|b1", 1}, {"|i1", 1}, {"|u1", 1},
    /* 4 .. 22: little-endian */
    {"<i2", 2}, {"<i4", 4}, {"<i8", 8}, {"<u2", 2}, {"<u4", 4}, {"<u8", 8},
    {"<f2", 2}, {"<f4", 4}, {"<f8", 8}, {"<c8", 8}, {"<c16", 16},
    {"<M8[ns]", 8}, {"<M8[us]", 8}, {"<M8[ms]", 8}, {"<M8[s]", 8},
    {"<m8[ns]", 8}, {"<m8[us]", 8}, {"<m8[ms]", 8}, {"<m8[s]", 8},
    /* 23 .. 41: big-endian */
    {">i2", 2}, {">i4", 4}, {">i8", 8}, {">u2", 2}, {">u4", 4}, {">u8", 8},
    {">f2", 2}, {">f4", 4}, {">f8", 8}, {">c8", 8}, {">c16", 16},
    {">M8[ns]", 8}, {">M8[us]", 8}, {">M8[ms]", 8}, {">M8[s]", 8},
    {">m8[ns]", 8}, {">m8[us]", 8}, {">m8[ms]", 8}, {">m8[s]", 8},
};
#define NDTYPES ((uint32_t)(sizeof DTYPES / sizeof DTYPES[0]) - 1u)

int shm_chan_dtype_count(void) { return (int)NDTYPES; }

const char *shm_chan_dtype_str(uint32_t code)
{
    return (code >= 1 && code <= NDTYPES) ? DTYPES[code].str : NULL;
}

int64_t shm_chan_dtype_itemsize(uint32_t code)
{
    return (code >= 1 && code <= NDTYPES) ? (int64_t)DTYPES[code].itemsize : SHM_CHAN_BAD_ARG;
}

/* ------------------------------------------------------------------ layout */

typedef struct {
    uint64_t slot_stride, slots_off, payload_off, total_len;
} layout;

static uint32_t norm_policy(uint32_t policy)
{
    return policy == 0 ? SHM_CHAN_POLICY_BLOCK : policy;
}

/* 0, or SHM_CHAN_BAD_ARG for parameters this version does not support. */
static int compute_layout(uint32_t mode, uint32_t policy, uint32_t cap, uint32_t maxp,
                          uint64_t slot_bytes, layout *L)
{
    uint32_t minp = 1, maxmax = SHM_CHAN_MAX_PARTICIPANTS - 1;
    if (mode == SHM_CHAN_MODE_BROADCAST) {
        if (policy != SHM_CHAN_POLICY_BLOCK && policy != SHM_CHAN_POLICY_DROP)
            return SHM_CHAN_BAD_ARG;
        minp = 2; /* the producer's entry and at least one subscriber's */
        maxmax = SHM_CHAN_MAX_PARTICIPANTS;
    } else if (mode == SHM_CHAN_MODE_ONE_TO_ONE || mode == SHM_CHAN_MODE_WORK_QUEUE) {
        if (policy != SHM_CHAN_POLICY_BLOCK)
            return SHM_CHAN_BAD_ARG;
    } else {
        return SHM_CHAN_BAD_ARG;
    }
    if (cap < SHM_CHAN_MIN_CAPACITY || cap > SHM_CHAN_MAX_CAPACITY || (cap & (cap - 1)) != 0)
        return SHM_CHAN_BAD_ARG;
    if (maxp < minp || maxp > maxmax)
        return SHM_CHAN_BAD_ARG;
    if (slot_bytes < 1 || slot_bytes > SHM_CHAN_MAX_SLOT_BYTES)
        return SHM_CHAN_BAD_ARG;
    uint64_t t;
    if (round_up(slot_bytes, slot_bytes >= 65536 ? 4096 : 64, &L->slot_stride))
        return SHM_CHAN_BAD_ARG;
    L->slots_off = PARTS_OFF + (uint64_t)ENTRY_SIZE * maxp;
    if (round_up(L->slots_off + (uint64_t)ENTRY_SIZE * cap, 4096, &L->payload_off))
        return SHM_CHAN_BAD_ARG;
    if (__builtin_mul_overflow((uint64_t)cap, L->slot_stride, &t) ||
        __builtin_add_overflow(t, L->payload_off, &t) || round_up(t, 4096, &L->total_len))
        return SHM_CHAN_BAD_ARG;
    return SHM_CHAN_OK;
}

static uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

uint64_t shm_chan_size(const shm_chan_params *p)
{
    layout L;
    if (p == NULL || compute_layout(p->mode, norm_policy(p->policy), p->capacity,
                                    p->max_participants, p->slot_bytes, &L) != SHM_CHAN_OK)
        return 0;
    return L.total_len;
}

int shm_chan_format(void *base, uint64_t len, const shm_chan_params *p)
{
    if (base == NULL || p == NULL || ((uintptr_t)base & 127u) != 0)
        return SHM_CHAN_BAD_ARG;
    layout L;
    uint32_t policy = norm_policy(p->policy);
    int rc = compute_layout(p->mode, policy, p->capacity, p->max_participants, p->slot_bytes, &L);
    if (rc != SHM_CHAN_OK)
        return rc;
    if (L.total_len > len)
        return SHM_CHAN_TOO_LARGE;
    unsigned char *b = base;
    shm_chan_header *hd = base;
    atomic_store_explicit(&hd->magic, 0, RLX);
    /* Everything but the payload; fresh shm pages are zero anyway. */
    memset(b + 8, 0, (size_t)(L.payload_off - 8));
    shm_chan_ctrl *c = (shm_chan_ctrl *)(b + CTRL_OFF);
    atomic_store_explicit(&c->producer_owner, SHM_CHAN_NO_INDEX, RLX);
    atomic_store_explicit(&c->consumer_owner, SHM_CHAN_NO_INDEX, RLX);
    shm_chan_part *parts = (shm_chan_part *)(b + PARTS_OFF);
    for (uint32_t i = 0; i < p->max_participants; i++)
        atomic_store_explicit(&parts[i].pending_pos, NO_POS, RLX);
    shm_chan_slot *slots = (shm_chan_slot *)(b + L.slots_off);
    int ring = p->mode != SHM_CHAN_MODE_BROADCAST;
    for (uint32_t i = 0; i < p->capacity; i++) {
        /* ring: slot i free for position i; broadcast: nothing committed (p + 1 once it is) */
        atomic_store_explicit(&slots[i].seq, ring ? i : 0, RLX);
        atomic_store_explicit(&slots[i].claim_pos, NO_POS, RLX);
        atomic_store_explicit(&slots[i].holder_pos, NO_POS, RLX);
        atomic_store_explicit(&slots[i].claimant, SHM_CHAN_NO_INDEX, RLX);
        atomic_store_explicit(&slots[i].holder, SHM_CHAN_NO_INDEX, RLX);
    }
    shm_chan_header_body *hb = &hd->body;
    hb->layout_version = SHM_CHAN_LAYOUT_VERSION;
    hb->header_size = HEADER_SIZE;
    hb->mode = p->mode;
    hb->policy = policy;
    hb->capacity = p->capacity;
    hb->max_participants = p->max_participants;
    hb->slot_bytes = p->slot_bytes;
    hb->slot_stride = L.slot_stride;
    hb->ctrl_off = CTRL_OFF;
    hb->parts_off = PARTS_OFF;
    hb->slots_off = L.slots_off;
    hb->payload_off = L.payload_off;
    hb->total_len = L.total_len;
    hb->checksum = fnv1a(hb, offsetof(shm_chan_header_body, checksum));
    /* Magic last: an attacher that sees it (acquire) sees the whole format. */
    atomic_store_explicit(&hd->magic, CHAN_MAGIC, REL);
    return SHM_CHAN_OK;
}

int shm_chan_attach(shm_chan_t *h, void *base, uint64_t len, shm_chan_info *info_out)
{
    if (h == NULL)
        return SHM_CHAN_BAD_ARG;
    memset(h, 0, sizeof *h);
    if (base == NULL || ((uintptr_t)base & 127u) != 0)
        return SHM_CHAN_BAD_ARG;
    if (len < HEADER_SIZE)
        return SHM_CHAN_CORRUPT;
    shm_chan_header *hd = base;
    if (atomic_load_explicit(&hd->magic, ACQ) != CHAN_MAGIC)
        return SHM_CHAN_CORRUPT;
    shm_chan_header_body hb; /* the one read of the header */
    memcpy(&hb, &hd->body, sizeof hb);
    if (hb.layout_version != SHM_CHAN_LAYOUT_VERSION || hb.header_size != HEADER_SIZE)
        return SHM_CHAN_CORRUPT;
    if (hb.checksum != fnv1a(&hb, offsetof(shm_chan_header_body, checksum)))
        return SHM_CHAN_CORRUPT;
    layout L;
    if (compute_layout(hb.mode, hb.policy, hb.capacity, hb.max_participants, hb.slot_bytes, &L))
        return SHM_CHAN_CORRUPT;
    if (L.slot_stride != hb.slot_stride || hb.ctrl_off != CTRL_OFF || hb.parts_off != PARTS_OFF ||
        L.slots_off != hb.slots_off || L.payload_off != hb.payload_off ||
        L.total_len != hb.total_len || L.total_len > len)
        return SHM_CHAN_CORRUPT;

    unsigned char *b = base;
    h->base = b;
    h->len = len;
    h->info.mode = hb.mode;
    h->info.policy = hb.policy;
    h->info.capacity = hb.capacity;
    h->info.max_participants = hb.max_participants;
    h->info.slot_bytes = hb.slot_bytes;
    h->info.slot_stride = L.slot_stride;
    h->info.ctrl_off = CTRL_OFF;
    h->info.parts_off = PARTS_OFF;
    h->info.slots_off = L.slots_off;
    h->info.payload_off = L.payload_off;
    h->info.total_len = L.total_len;
    h->info.layout_version = SHM_CHAN_LAYOUT_VERSION;
    h->info.abi_version = SHM_CHAN_ABI_VERSION;
    h->mask = (uint64_t)hb.capacity - 1;
    h->ctrl = (shm_chan_ctrl *)(b + CTRL_OFF);
    h->parts = (shm_chan_part *)(b + PARTS_OFF);
    h->slots = (shm_chan_slot *)(b + L.slots_off);
    h->payload = b + L.payload_off;
    h->drop = hb.mode == SHM_CHAN_MODE_BROADCAST && hb.policy == SHM_CHAN_POLICY_DROP;
    h->index = SHM_CHAN_NO_INDEX;
    h->s_nbytes = -1;
    h->attached = CHAN_HANDLE_MAGIC;
    if (info_out)
        *info_out = h->info;
    return SHM_CHAN_OK;
}

int shm_chan_set_debug(shm_chan_t *h, int on)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    h->debug = on != 0;
    return SHM_CHAN_OK;
}

void shm_chan_forked(shm_chan_t *h)
{
    if (!chan_attached(h))
        return;
    /* The entry, the claim and the holds are the parent's: forget them here.
     * Only this thread exists in the child: a lock some parent thread held at
     * fork() would never be released. */
    atomic_store_explicit(&h->lock, 0, RLX);
    h->registered = 0;
    h->role = 0;
    h->me = NULL;
    h->claimed = 0;
    h->held = 0;
    h->held_bits = NULL;
    h->gen++;
}

void shm_chan_note_open(shm_chan_t *h)
{
    if (chan_attached(h))
        atomic_fetch_add_explicit(&h->ctrl->opens, 1, RLX);
}

void shm_chan_note_close(shm_chan_t *h)
{
    if (chan_attached(h))
        atomic_fetch_add_explicit(&h->ctrl->closes, 1, RLX);
}

/* ---------------------------------------------------------------- waiting */

static int futex_wait(_Atomic uint32_t *word, uint32_t expect, uint64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000ULL);
    ts.tv_nsec = (long)(ns % 1000000000ULL);
    /* Shared (no FUTEX_PRIVATE_FLAG): the word lives in a mapping of several
     * processes.  A relative timeout is measured on CLOCK_MONOTONIC. */
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expect, &ts, NULL, 0);
    if (rc == 0)
        return SHM_CHAN_OK;
    switch (errno) {
    case EAGAIN: return SHM_CHAN_OK; /* the epoch moved before we slept */
    case ETIMEDOUT: return SHM_CHAN_TIMEOUT;
    case EINTR: return SHM_CHAN_INTR;
    default: return SHM_CHAN_BAD_ARG;
    }
}

static _Atomic uint32_t *epoch_word(const shm_chan_t *h, uint32_t which)
{
    return which == SHM_CHAN_WAIT_DATA ? &h->ctrl->data_epoch : &h->ctrl->space_epoch;
}

static _Atomic uint32_t *waiters_word(const shm_chan_t *h, uint32_t which)
{
    return which == SHM_CHAN_WAIT_DATA ? &h->ctrl->data_waiters : &h->ctrl->space_waiters;
}

/* Decrement-if-positive, so a count zeroed by a hostile peer never wraps to
 * 2^32 - 1 through us. */
static int dec_positive(_Atomic uint32_t *w)
{
    uint32_t v = atomic_load_explicit(w, RLX);
    for (uint32_t tries = 0; tries < RETRY_CAP; tries++) {
        if (v == 0)
            return SHM_CHAN_OK;
        if (atomic_compare_exchange_weak_explicit(w, &v, v - 1, SC, RLX))
            return SHM_CHAN_OK;
    }
    return SHM_CHAN_BUSY;
}

static int arm_(shm_chan_t *h, uint32_t which)
{
    if (!chan_attached(h) || which > SHM_CHAN_WAIT_SPACE)
        return SHM_CHAN_BAD_ARG;
    /* Snapshot first: a bump after it (for a publish our re-check misses)
     * makes the sleep return at once. */
    h->armed[which] = atomic_load_explicit(epoch_word(h, which), ACQ);
    atomic_fetch_add_explicit(waiters_word(h, which), 1, SC);
    atomic_thread_fence(SC);
    return SHM_CHAN_OK;
}

int shm_chan_disarm(shm_chan_t *h, uint32_t which)
{
    if (!chan_attached(h) || which > SHM_CHAN_WAIT_SPACE)
        return SHM_CHAN_BAD_ARG;
    return dec_positive(waiters_word(h, which));
}

int shm_chan_sleep(shm_chan_t *h, uint32_t which, uint64_t timeout_ns)
{
    if (!chan_attached(h) || which > SHM_CHAN_WAIT_SPACE)
        return SHM_CHAN_BAD_ARG;
    if (timeout_ns == 0)
        return SHM_CHAN_TIMEOUT;
    if (timeout_ns > SHM_CHAN_MAX_SLEEP_NS)
        timeout_ns = SHM_CHAN_MAX_SLEEP_NS;
    if (h->me != NULL)
        atomic_store_explicit(&h->me->waits, atomic_load_explicit(&h->me->waits, RLX) + 1, RLX);
    return futex_wait(epoch_word(h, which), h->armed[which], timeout_ns);
}

static int set_doorbells_(shm_chan_t *h, int *fds, uint32_t n, const char *prefix)
{
    if (!chan_attached(h) || fds == NULL || prefix == NULL || n < h->info.max_participants)
        return SHM_CHAN_BAD_ARG;
    size_t len = strlen(prefix);
    if (len + 12 >= sizeof h->db_prefix)
        return SHM_CHAN_BAD_ARG;
    memcpy(h->db_prefix, prefix, len + 1);
    h->db_fds = fds;
    h->db_count = n;
    return SHM_CHAN_OK;
}

/* A doorbell announcement is one bit in the waiter's entry, and one in the
 * control block's count, which is never below the number of bits set: it is
 * raised before the bit is set and lowered after a bit is cleared, by whoever
 * clears it (the waiter withdrawing, a poster ringing it, a recoverer).  A
 * ring consumes the announcement, as a futex wake does: a rung waiter has
 * nothing to withdraw, and one that wakes and finds nothing arms again. */
static int arm_doorbell_(shm_chan_t *h, uint32_t which)
{
    if (!chan_attached(h) || h->me == NULL || which > SHM_CHAN_WAIT_SPACE)
        return SHM_CHAN_BAD_ARG;
    uint32_t bit = 1u << which;
    atomic_fetch_add_explicit(&h->ctrl->doorbells, 1, SC);
    if (atomic_fetch_or_explicit(&h->me->doorbell, bit, SC) & bit)
        dec_positive(&h->ctrl->doorbells); /* armed already */
    atomic_thread_fence(SC);
    return SHM_CHAN_OK;
}

/* Clears `bit` of entry e; lowers the count when it was set.  1: it was. */
static int clear_doorbell(shm_chan_t *h, shm_chan_part *e, uint32_t bit)
{
    if (!(atomic_fetch_and_explicit(&e->doorbell, ~bit, SC) & bit))
        return 0;
    dec_positive(&h->ctrl->doorbells);
    return 1;
}

static int disarm_doorbell_(shm_chan_t *h, uint32_t which)
{
    if (!chan_attached(h) || which > SHM_CHAN_WAIT_SPACE)
        return SHM_CHAN_BAD_ARG;
    if (h->me != NULL)
        clear_doorbell(h, h->me, 1u << which);
    return SHM_CHAN_OK;
}

/* write(2) to a FIFO whose reader is gone raises SIGPIPE, which kills a
 * process that did not ignore it (CPython does; C users and CLIs that restore
 * SIG_DFL do not): block it around the write and take back a SIGPIPE the write
 * left pending, so the caller sees EPIPE and nothing else.  The ring path runs
 * only when a waiter is asleep, so the two extra system calls cost nothing to
 * a stream that keeps up. */
static ssize_t write_nosigpipe(int fd, const void *buf, size_t len)
{
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t n = write(fd, buf, len);
    int err = errno;
    if (n < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
        static const struct timespec zero = {0, 0};
        sigtimedwait(&pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return n;
}

/* Writes one byte to participant i's doorbell FIFO, opening it on first use.
 * A FIFO with no reader (ENXIO on open, EPIPE on write) belongs to a waiter
 * that is gone: forget the descriptor and carry on. */
static void ring_doorbell(shm_chan_t *h, uint32_t i)
{
    if (h->db_fds == NULL || i >= h->db_count)
        return;
    static const char one = 1;
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = h->db_fds[i];
        if (fd < 0) {
            char path[SHM_CHAN_DOORBELL_PATH_MAX + 16];
            snprintf(path, sizeof path, "%s%u", h->db_prefix, i);
            fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
            if (fd < 0)
                return;
            h->db_fds[i] = fd;
        }
        ssize_t n = write_nosigpipe(fd, &one, 1);
        if (n == 1 || (n < 0 && errno == EAGAIN))
            return; /* EAGAIN: the pipe is full of rings already */
        close(fd);
        h->db_fds[i] = -1; /* EPIPE: that waiter is gone; the path may be a new one's */
    }
}

/* Rings every armed doorbell of direction `which`, whatever the number of
 * sleepers the futex side wakes: a ring is only a hint to re-check, and an
 * awaiting coroutine that was rung may no longer take the frame (it had one
 * already, or was cancelled before it ran), so ringing one of several could
 * strand the others until their slice ends.  The woken re-check; losers sleep
 * again. */
static void ring_doorbells(shm_chan_t *h, uint32_t which)
{
    uint32_t maxp = h->info.max_participants, bit = 1u << which;
    for (uint32_t i = 0; i < maxp; i++) {
        if (h->me != NULL && i == h->index)
            continue;
        /* consumed before the write: the woken waiter may arm again at once, and
         * that announcement is for the next post */
        if ((atomic_load_explicit(&h->parts[i].doorbell, RLX) & bit) &&
            clear_doorbell(h, &h->parts[i], bit))
            ring_doorbell(h, i);
    }
}

void chan_clear_doorbells(shm_chan_t *h, shm_chan_part *e)
{
    uint32_t bits = atomic_exchange_explicit(&e->doorbell, 0, SC);
    for (; bits != 0; bits &= bits - 1)
        dec_positive(&h->ctrl->doorbells);
}

void chan_wake(shm_chan_t *h, uint32_t which, uint32_t n)
{
    atomic_thread_fence(SC);
    if (atomic_load_explicit(waiters_word(h, which), RLX) != 0) {
        atomic_fetch_add_explicit(epoch_word(h, which), 1, REL);
        syscall(SYS_futex, (uint32_t *)epoch_word(h, which), FUTEX_WAKE, n ? (int)n : INT_MAX,
                NULL, NULL, 0);
    }
    if (atomic_load_explicit(&h->ctrl->doorbells, RLX) != 0)
        ring_doorbells(h, which);
}

/* ------------------------------------------------------- end of stream */

int chan_producer_ticket(shm_chan_t *h)
{
    _Atomic uint32_t *w = &h->ctrl->eos;
    uint32_t v = atomic_load_explicit(w, SC);
    for (uint32_t tries = 0; tries < RETRY_CAP; tries++) {
        if (v & SHM_CHAN_EOS)
            return SHM_CHAN_ENDED;
        uint32_t next = (v + 1) & ~SHM_CHAN_EOS;
        if (atomic_compare_exchange_weak_explicit(w, &v, next, SC, SC))
            return SHM_CHAN_OK;
    }
    return SHM_CHAN_BUSY;
}

int chan_end_stream(shm_chan_t *h)
{
    _Atomic uint32_t *w = &h->ctrl->eos;
    for (uint32_t tries = 0; tries < RETRY_CAP; tries++) {
        uint32_t v = atomic_load_explicit(w, SC);
        if (v & SHM_CHAN_EOS)
            return 0;
        for (uint32_t i = 0; i < h->info.max_participants; i++) {
            if (i == h->index)
                continue;
            uint32_t st = atomic_load_explicit(&h->parts[i].state, SC);
            uint32_t role = atomic_load_explicit(&h->parts[i].role, RLX);
            if (st == SHM_CHAN_ACTIVE && role == SHM_CHAN_ROLE_PRODUCER)
                return 0; /* the last producer to end sets end of stream */
        }
        if (atomic_compare_exchange_strong_explicit(w, &v, v | SHM_CHAN_EOS, SC, SC))
            return 1;
        /* a producer registered (or another ended) meanwhile: look again */
    }
    return 0;
}

/* ------------------------------------------------------------ participants */

void chan_init_entry(shm_chan_t *h, shm_chan_part *e, uint32_t role, uint32_t pid,
                     uint64_t start)
{
    atomic_store_explicit(&e->role, role, RLX);
    atomic_store_explicit(&e->pid, pid, RLX);
    chan_clear_doorbells(h, e); /* a dead predecessor's announcements */
    atomic_store_explicit(&e->start_time, start, RLX);
    atomic_store_explicit(&e->joined_ns, now_ns(), RLX);
    atomic_store_explicit(&e->pending_pos, NO_POS, RLX);
    atomic_store_explicit(&e->frames, 0, RLX);
    atomic_store_explicit(&e->bytes, 0, RLX);
    atomic_store_explicit(&e->waits, 0, RLX);
    atomic_store_explicit(&e->lost, 0, RLX);
    atomic_store_explicit(&e->skipped, 0, RLX);
    atomic_store_explicit(&e->dropped, 0, RLX);
}

static int register_(shm_chan_t *h, uint32_t index, uint32_t role, uint32_t pid,
                     uint64_t start_time, uint64_t *held_bits, uint32_t held_words)
{
    if (!chan_attached(h) || h->registered || index >= h->info.max_participants)
        return SHM_CHAN_BAD_ARG;
    if (role != SHM_CHAN_ROLE_PRODUCER && role != SHM_CHAN_ROLE_CONSUMER)
        return SHM_CHAN_BAD_ARG;
    uint32_t words = (uint32_t)((h->mask + 64) >> 6);
    if (role == SHM_CHAN_ROLE_CONSUMER && (held_bits == NULL || held_words < words))
        return SHM_CHAN_BAD_ARG;
    if (is_bcast(h) && (role == SHM_CHAN_ROLE_PRODUCER) != (index == SHM_CHAN_BCAST_PRODUCER))
        return SHM_CHAN_BAD_ARG; /* the producer is entry 0, subscribers 1.. */
    uint32_t st = atomic_load_explicit(&h->parts[index].state, ACQ);
    if (st > SHM_CHAN_DEAD)
        return SHM_CHAN_CORRUPT;
    if (st == SHM_CHAN_ACTIVE || st == SHM_CHAN_JOINING)
        return SHM_CHAN_BUSY; /* Python recovers the entry first */
    if (role == SHM_CHAN_ROLE_PRODUCER && eos_set(h))
        return SHM_CHAN_ENDED;
    h->me = &h->parts[index];
    h->index = index;
    h->role = role;
    h->ended = 0;
    h->claimed = 0;
    h->held = 0;
    h->frames = 0;
    h->bytes = 0;
    h->held_bits = role == SHM_CHAN_ROLE_CONSUMER ? held_bits : NULL;
    h->held_words = role == SHM_CHAN_ROLE_CONSUMER ? held_words : 0;
    if (h->held_bits)
        memset(h->held_bits, 0, (size_t)words * sizeof(uint64_t));
    int rc = is_bcast(h) ? bcast_register(h, index, role, pid, start_time)
                         : ring_register(h, index, role, pid, start_time);
    if (rc == SHM_CHAN_OK && role == SHM_CHAN_ROLE_PRODUCER) {
        rc = chan_producer_ticket(h);
        if (rc == SHM_CHAN_OK)
            atomic_fetch_add_explicit(&h->ctrl->producers_ever, 1, RLX);
        else /* end of stream came first: back out, never commit */
            is_bcast(h) ? bcast_unregister(h) : ring_unregister(h);
    }
    if (rc != SHM_CHAN_OK) {
        h->me = NULL;
        h->index = SHM_CHAN_NO_INDEX;
        h->role = 0;
        h->held_bits = NULL;
        return rc;
    }
    h->registered = 1;
    h->gen++;
    return SHM_CHAN_OK;
}

static int unregister_(shm_chan_t *h)
{
    if (!chan_attached(h) || !h->registered)
        return SHM_CHAN_BAD_ARG;
    disarm_doorbell_(h, SHM_CHAN_WAIT_DATA);
    disarm_doorbell_(h, SHM_CHAN_WAIT_SPACE);
    is_bcast(h) ? bcast_unregister(h) : ring_unregister(h);
    h->registered = 0;
    h->role = 0;
    h->me = NULL;
    h->index = SHM_CHAN_NO_INDEX;
    h->claimed = 0;
    h->held = 0;
    h->held_bits = NULL;
    h->closing = 0;
    h->gen++;
    return SHM_CHAN_OK;
}

int64_t shm_chan_role_owner(const shm_chan_t *h, uint32_t role)
{
    if (!chan_attached(h) || h->info.mode != SHM_CHAN_MODE_ONE_TO_ONE)
        return SHM_CHAN_BAD_ARG;
    uint32_t v;
    if (role == SHM_CHAN_ROLE_PRODUCER)
        v = atomic_load_explicit(&h->ctrl->producer_owner, ACQ);
    else if (role == SHM_CHAN_ROLE_CONSUMER)
        v = atomic_load_explicit(&h->ctrl->consumer_owner, ACQ);
    else
        return SHM_CHAN_BAD_ARG;
    if (v == SHM_CHAN_NO_INDEX)
        return (int64_t)SHM_CHAN_NO_INDEX;
    return v < h->info.max_participants ? (int64_t)v : SHM_CHAN_CORRUPT;
}

static int recover_(shm_chan_t *h, uint32_t index, uint64_t *dropped_out)
{
    if (dropped_out)
        *dropped_out = 0;
    if (!chan_attached(h) || index >= h->info.max_participants)
        return SHM_CHAN_BAD_ARG;
    if (h->registered && h->index == index)
        return SHM_CHAN_BAD_ARG; /* that is us: unregister */
    uint32_t st = atomic_load_explicit(&h->parts[index].state, ACQ);
    if (st > SHM_CHAN_DEAD)
        return SHM_CHAN_CORRUPT;
    uint64_t dropped = 0;
    int rc = is_bcast(h) ? bcast_recover(h, index) : ring_recover(h, index, &dropped);
    if (dropped_out)
        *dropped_out = dropped;
    return rc;
}

int shm_chan_participant(const shm_chan_t *h, uint32_t index, shm_chan_part_info *out)
{
    if (!chan_attached(h) || out == NULL || index >= h->info.max_participants)
        return SHM_CHAN_BAD_ARG;
    const shm_chan_part *e = &h->parts[index];
    memset(out, 0, sizeof *out);
    out->state = atomic_load_explicit(&e->state, ACQ);
    out->role = atomic_load_explicit(&e->role, RLX);
    out->pid = atomic_load_explicit(&e->pid, RLX);
    out->doorbell = atomic_load_explicit(&e->doorbell, RLX);
    out->start_time = atomic_load_explicit(&e->start_time, RLX);
    out->joined_ns = atomic_load_explicit(&e->joined_ns, RLX);
    out->frames = atomic_load_explicit(&e->frames, RLX);
    out->bytes = atomic_load_explicit(&e->bytes, RLX);
    out->waits = atomic_load_explicit(&e->waits, RLX);
    out->cursor = atomic_load_explicit(&e->cursor, RLX);
    out->join_pos = atomic_load_explicit(&e->join_pos, RLX);
    out->lost = atomic_load_explicit(&e->lost, RLX);
    out->skipped = atomic_load_explicit(&e->skipped, RLX);
    out->dropped = atomic_load_explicit(&e->dropped, RLX);
    if (out->state > SHM_CHAN_DEAD || out->role > SHM_CHAN_ROLE_CONSUMER ||
        (out->state != SHM_CHAN_FREE && out->role == 0))
        return SHM_CHAN_CORRUPT;
    return SHM_CHAN_OK;
}

int shm_chan_states(const shm_chan_t *h, uint32_t *out, uint32_t n)
{
    if (!chan_attached(h) || out == NULL)
        return SHM_CHAN_BAD_ARG;
    if (n > h->info.max_participants)
        n = h->info.max_participants;
    for (uint32_t i = 0; i < n; i++)
        out[i] = atomic_load_explicit(&h->parts[i].state, ACQ);
    return (int)n;
}

int shm_chan_status(const shm_chan_t *h, shm_chan_status_info *out)
{
    if (!chan_attached(h) || out == NULL)
        return SHM_CHAN_BAD_ARG;
    const shm_chan_ctrl *c = h->ctrl;
    memset(out, 0, sizeof *out);
    out->enqueue_pos = atomic_load_explicit(&c->enqueue_pos, RLX);
    out->dequeue_pos = atomic_load_explicit(&c->dequeue_pos, RLX);
    out->dropped = atomic_load_explicit(&c->dropped, RLX);
    out->evicted = atomic_load_explicit(&c->evicted, RLX);
    out->joins = atomic_load_explicit(&c->joins, RLX);
    out->opens = atomic_load_explicit(&c->opens, RLX);
    out->closes = atomic_load_explicit(&c->closes, RLX);
    out->eos = (atomic_load_explicit(&c->eos, ACQ) & SHM_CHAN_EOS) != 0;
    out->data_waiters = atomic_load_explicit(&c->data_waiters, RLX);
    out->space_waiters = atomic_load_explicit(&c->space_waiters, RLX);
    out->doorbells = atomic_load_explicit(&c->doorbells, RLX);
    out->producers_ever = atomic_load_explicit(&c->producers_ever, RLX);
    out->producer_owner = atomic_load_explicit(&c->producer_owner, RLX);
    out->consumer_owner = atomic_load_explicit(&c->consumer_owner, RLX);
    for (uint32_t i = 0; i < h->info.max_participants; i++)
        if (atomic_load_explicit(&h->parts[i].state, RLX) == SHM_CHAN_ACTIVE &&
            atomic_load_explicit(&h->parts[i].role, RLX) == SHM_CHAN_ROLE_PRODUCER)
            out->producers++;
    return SHM_CHAN_OK;
}

static int self_(const shm_chan_t *h, shm_chan_self_info *out)
{
    if (!chan_attached(h) || out == NULL)
        return SHM_CHAN_BAD_ARG;
    memset(out, 0, sizeof *out);
    out->role = h->role;
    out->index = h->index;
    out->registered = h->registered;
    out->ended = h->ended;
    out->held = h->held;
    out->claimed = h->claimed;
    out->claim_pos = h->claimed ? h->claim_pos : NO_POS;
    out->gen = h->gen;
    out->frames = h->frames;
    out->next = h->next;
    out->cursor = h->cursor;
    out->join_pos = h->join_pos;
    out->received = h->received;
    out->lost = h->lost;
    out->skipped = h->skipped;
    out->invalid = atomic_load_explicit(&h->invalid, RLX);
    return SHM_CHAN_OK;
}

int shm_chan_count_dropped(shm_chan_t *h, uint64_t n)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    atomic_fetch_add_explicit(&h->ctrl->dropped, n, RLX);
    return SHM_CHAN_OK;
}

/* ------------------------------------------------------------------- meta */

void chan_stamp_meta(shm_chan_t *h, shm_chan_slot *s, uint64_t tag)
{
    atomic_store_explicit(&s->timestamp_ns, now_ns(), RLX);
    atomic_store_explicit(&s->tag, tag, RLX);
    atomic_store_explicit(&s->nbytes, (uint64_t)h->s_nbytes, RLX);
    atomic_store_explicit(&s->dtype, (uint16_t)h->s_dtype, RLX);
    atomic_store_explicit(&s->ndim, (uint8_t)h->s_ndim, RLX);
    atomic_store_explicit(&s->flags, 0, RLX);
    for (uint32_t k = 0; k < SHM_CHAN_MAX_NDIM; k++)
        atomic_store_explicit(&s->shape[k], h->s_shape[k], RLX);
}

int chan_read_meta(const shm_chan_t *h, const shm_chan_slot *s, shm_chan_frame *out)
{
    out->timestamp_ns = atomic_load_explicit(&s->timestamp_ns, RLX);
    out->tag = atomic_load_explicit(&s->tag, RLX);
    out->nbytes = atomic_load_explicit(&s->nbytes, RLX);
    out->dtype = atomic_load_explicit(&s->dtype, RLX);
    out->ndim = atomic_load_explicit(&s->ndim, RLX);
    uint8_t flags = atomic_load_explicit(&s->flags, RLX);
    if (out->ndim > SHM_CHAN_MAX_NDIM) {
        out->ndim = 0;
        memset(out->shape, 0, sizeof out->shape);
        return -1;
    }
    for (uint32_t k = 0; k < SHM_CHAN_MAX_NDIM; k++)
        out->shape[k] = k < out->ndim ? atomic_load_explicit(&s->shape[k], RLX) : 0;
    uint64_t n;
    if (flags != 0 || frame_bytes(out->dtype, out->ndim, out->shape, &n) || n != out->nbytes ||
        n > h->info.slot_bytes)
        return -1;
    return 0;
}

void chan_poison(const shm_chan_t *h, uint64_t slot)
{
    uint64_t n = atomic_load_explicit(&h->slots[slot].nbytes, RLX);
    if (n > h->info.slot_bytes)
        n = h->info.slot_bytes;
    memset(slot_payload(h, slot), 0xDB, (size_t)n);
}

/* ---------------------------------------------------------------- producer */

static int64_t set_schema_(shm_chan_t *h, uint32_t dtype, uint32_t ndim, const uint64_t *shape)
{
    if (!chan_attached(h) || shm_chan_dtype_itemsize(dtype) <= 0 || ndim > SHM_CHAN_MAX_NDIM ||
        (ndim > 0 && shape == NULL))
        return SHM_CHAN_BAD_ARG;
    uint64_t n;
    if (frame_bytes(dtype, ndim, shape, &n) || n > h->info.slot_bytes)
        return SHM_CHAN_TOO_LARGE;
    h->s_dtype = dtype;
    h->s_ndim = ndim;
    for (uint32_t k = 0; k < SHM_CHAN_MAX_NDIM; k++)
        h->s_shape[k] = k < ndim ? shape[k] : 0;
    h->s_nbytes = (int64_t)n;
    return (int64_t)n;
}

static int64_t claim_once(shm_chan_t *h)
{
    return is_bcast(h) ? bcast_claim(h) : ring_claim(h);
}

static int64_t claim_(shm_chan_t *h, uint64_t spin_ns)
{
    if (!is_producer(h) || h->claimed)
        return SHM_CHAN_BAD_ARG;
    if (h->ended)
        return SHM_CHAN_ENDED;
    int64_t rc = claim_once(h);
    if (rc != SHM_CHAN_FULL || spin_ns == 0)
        return rc;
    uint64_t deadline = deadline_after(spin_ns);
    for (uint32_t i = 1;; i++) {
        cpu_relax();
        rc = claim_once(h);
        if (rc != SHM_CHAN_FULL || ((i & 63u) == 0 && now_ns() >= deadline))
            return rc;
    }
}

/* Publishes the outstanding claim and wakes waiting consumers (when `wake`). */
static void publish(shm_chan_t *h, uint64_t tag, int wake)
{
    count_frame(h, (uint64_t)h->s_nbytes);
    if (is_bcast(h)) {
        bcast_publish(h, tag); /* wakes every subscriber itself (one fence for two pairs) */
        return;
    }
    ring_publish(h, tag);
    if (wake)
        chan_wake(h, SHM_CHAN_WAIT_DATA, 1);
}

static int commit_(shm_chan_t *h, uint64_t claim_pos, uint64_t gen, uint64_t tag)
{
    if (!is_producer(h) || h->s_nbytes < 0)
        return chan_attached(h) && h->gen != gen ? SHM_CHAN_STALE : SHM_CHAN_BAD_ARG;
    if (!h->claimed || h->claim_pos != claim_pos || h->gen != gen)
        return SHM_CHAN_STALE;
    publish(h, tag, 1);
    return SHM_CHAN_OK;
}

static int abort_(shm_chan_t *h, uint64_t claim_pos, uint64_t gen)
{
    if (!is_producer(h) || !h->claimed || h->claim_pos != claim_pos || h->gen != gen)
        return SHM_CHAN_STALE;
    if (is_bcast(h)) {
        /* BLOCK: the slot was never published.  DROP: it stays marked WRITING
         * for position head (readers there see "not yet"; readers of its old
         * frame see "lapped"), and the next claim rewrites the mark. */
        h->claimed = 0;
        return SHM_CHAN_OK;
    }
    if (ring_abort(h)) /* a tombstone can unblock consumers waiting behind it */
        chan_wake(h, SHM_CHAN_WAIT_DATA, 1);
    return SHM_CHAN_OK;
}

static int64_t send_(shm_chan_t *h, const void *src, uint64_t nbytes, uint64_t tag,
                     uint64_t spin_ns)
{
    if (!is_producer(h) || h->claimed || h->s_nbytes < 0)
        return SHM_CHAN_BAD_ARG;
    if (nbytes != (uint64_t)h->s_nbytes)
        return nbytes > h->info.slot_bytes ? SHM_CHAN_TOO_LARGE : SHM_CHAN_BAD_ARG;
    if (nbytes > 0 && src == NULL)
        return SHM_CHAN_BAD_ARG;
    int64_t slot = claim_(h, spin_ns);
    if (slot < 0)
        return slot;
    if (nbytes > 0)
        memcpy(slot_payload(h, (uint64_t)slot), src, (size_t)nbytes);
    publish(h, tag, 1);
    return slot;
}

static int64_t send_many_(shm_chan_t *h, const void *src, uint64_t nbytes, uint64_t count,
                          uint64_t tag, uint64_t spin_ns)
{
    if (!is_producer(h) || h->claimed || h->s_nbytes < 0 || count == 0 ||
        count > ((uint64_t)1 << 40))
        return SHM_CHAN_BAD_ARG;
    if (nbytes != (uint64_t)h->s_nbytes)
        return nbytes > h->info.slot_bytes ? SHM_CHAN_TOO_LARGE : SHM_CHAN_BAD_ARG;
    if (nbytes > 0 && src == NULL)
        return SHM_CHAN_BAD_ARG;
    const unsigned char *in = src;
    uint64_t sent = 0;
    int64_t rc = 0;
    while (sent < count) {
        /* spin only for the first frame: afterwards, stop at the first full ring */
        int64_t slot = claim_(h, sent == 0 ? spin_ns : 0);
        if (slot < 0) {
            rc = slot;
            break;
        }
        if (nbytes > 0)
            memcpy(slot_payload(h, (uint64_t)slot), in + sent * nbytes, (size_t)nbytes);
        publish(h, tag + sent, 0);
        sent++;
    }
    if (sent == 0)
        return rc;
    if (!is_bcast(h))
        chan_wake(h, SHM_CHAN_WAIT_DATA, sent > INT_MAX ? 0 : (uint32_t)sent);
    return (int64_t)sent;
}

static int end_(shm_chan_t *h)
{
    if (!is_producer(h))
        return SHM_CHAN_BAD_ARG;
    if (h->ended)
        return SHM_CHAN_OK;
    if (h->claimed)
        abort_(h, h->claim_pos, h->gen);
    h->ended = 1;
    atomic_store_explicit(&h->me->state, SHM_CHAN_ENDED_STATE, SC);
    atomic_thread_fence(SC);
    if (chan_end_stream(h))
        chan_wake(h, SHM_CHAN_WAIT_DATA, 0); /* every consumer finds the end */
    return SHM_CHAN_OK;
}

/* ---------------------------------------------------------------- consumer */

/* A handle closed while views of its frames live stays registered until the
 * last one dies (close_when_idle): it only gives frames back, it takes none. */
static int recv_args_ok(const shm_chan_t *h, const shm_chan_frame *out)
{
    return is_consumer(h) && !h->closing && out != NULL;
}

/* A view may not make us hold capacity frames (the producer could then never
 * publish the frame we wait for); broadcast BLOCK also cannot receive while
 * its window [cursor, next) is a whole ring. */
static int over_limit(const shm_chan_t *h, int view)
{
    if (view && !h->drop && h->held >= h->mask)
        return 1;
    return is_bcast(h) && !h->drop && h->next - h->cursor > h->mask;
}

static int64_t recv_once(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len)
{
    return is_bcast(h) ? bcast_recv(h, out, dst, dst_len) : ring_recv(h, out, dst, dst_len, -1);
}

static int64_t recv_spin(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len,
                         uint64_t spin_ns)
{
    if (over_limit(h, dst == NULL))
        return SHM_CHAN_LIMIT;
    int64_t rc = recv_once(h, out, dst, dst_len);
    if (rc != SHM_CHAN_EMPTY || spin_ns == 0)
        return rc;
    uint64_t deadline = deadline_after(spin_ns);
    for (uint32_t i = 1;; i++) {
        cpu_relax();
        rc = recv_once(h, out, dst, dst_len);
        if (rc != SHM_CHAN_EMPTY || ((i & 63u) == 0 && now_ns() >= deadline))
            return rc;
    }
}

static void reset_frame(shm_chan_frame *out)
{
    out->lost = 0;
    out->skipped = 0;
    out->held = 0;
}

static int64_t recv_(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len,
                     uint64_t spin_ns)
{
    if (!recv_args_ok(h, out) || (dst == NULL && dst_len != 0))
        return SHM_CHAN_BAD_ARG;
    reset_frame(out);
    return recv_spin(h, out, dst, dst_len, spin_ns);
}

static int64_t latest_(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len,
                       uint64_t spin_ns)
{
    if (!recv_args_ok(h, out) || !is_bcast(h) || (dst == NULL && dst_len != 0))
        return SHM_CHAN_BAD_ARG;
    reset_frame(out);
    int rc = bcast_skip_to_newest(h, out);
    if (rc != SHM_CHAN_OK)
        return rc;
    return recv_spin(h, out, dst, dst_len, spin_ns);
}

static int64_t recv_many_(shm_chan_t *h, shm_chan_frame *out, uint64_t max, uint64_t spin_ns)
{
    if (!recv_args_ok(h, out) || is_bcast(h) || max == 0)
        return SHM_CHAN_BAD_ARG;
    reset_frame(&out[0]);
    int64_t rc = recv_spin(h, &out[0], NULL, 0, spin_ns);
    if (rc < 0)
        return rc;
    uint64_t n = 1;
    /* A run: consecutive slots (no wrap) of one schema, so Python can view it as one array. */
    while (n < max && out[n - 1].slot < h->mask && h->held < h->mask) {
        reset_frame(&out[n]);
        memcpy(out[n].shape, out[0].shape, sizeof out[0].shape);
        out[n].dtype = out[0].dtype;
        out[n].ndim = out[0].ndim;
        if (ring_recv(h, &out[n], NULL, 0, (int64_t)out[n - 1].slot + 1) < 0)
            break;
        n++;
    }
    return (int64_t)n;
}

static int release_(shm_chan_t *h, uint64_t pos, uint64_t gen)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    if (!is_consumer(h) || h->gen != gen)
        return SHM_CHAN_STALE;
    int rc = is_bcast(h) ? bcast_release(h, pos) : ring_release(h, pos);
    if (h->closing && h->held == 0)
        unregister_(h); /* closed while views were alive: the last one is gone */
    return rc;
}

static int close_when_idle_(shm_chan_t *h)
{
    if (!h->registered)
        return 1;
    if (h->role == SHM_CHAN_ROLE_CONSUMER && h->held > 0) {
        h->closing = 1;
        return 0;
    }
    unregister_(h);
    return 1;
}

static int release_many_(shm_chan_t *h, const uint64_t *pos, uint64_t n, uint64_t gen)
{
    if (pos == NULL && n != 0)
        return SHM_CHAN_BAD_ARG;
    int rc = SHM_CHAN_OK;
    for (uint64_t i = 0; i < n; i++) {
        int r = release_(h, pos[i], gen);
        if (r < 0 && rc == SHM_CHAN_OK)
            rc = r; /* release the rest anyway */
    }
    return rc;
}

int shm_chan_valid(const shm_chan_t *h, uint64_t pos)
{
    if (!chan_attached(h))
        return 0;
    /* The reads of the view happen before this load (seqlock reader side). */
    atomic_thread_fence(ACQ);
    return atomic_load_explicit(&h->slots[pos & h->mask].seq, RLX) == pos + 1;
}

/* ------------------------------------------------ locked entry points */

int shm_chan_register(shm_chan_t *h, uint32_t index, uint32_t role, uint32_t pid,
                      uint64_t start_time, uint64_t *held_bits, uint32_t held_words)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = register_(h, index, role, pid, start_time, held_bits, held_words);
    hunlock(h);
    return rc;
}

int shm_chan_unregister(shm_chan_t *h)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = unregister_(h);
    hunlock(h);
    return rc;
}

int shm_chan_recover(shm_chan_t *h, uint32_t index, uint64_t *dropped_out)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = recover_(h, index, dropped_out);
    hunlock(h);
    return rc;
}

int64_t shm_chan_set_schema(shm_chan_t *h, uint32_t dtype, uint32_t ndim, const uint64_t *shape)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int64_t rc = set_schema_(h, dtype, ndim, shape);
    hunlock(h);
    return rc;
}

int64_t shm_chan_claim(shm_chan_t *h, uint64_t spin_ns)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int64_t rc = claim_(h, spin_ns);
    hunlock(h);
    return rc;
}

int shm_chan_commit(shm_chan_t *h, uint64_t claim_pos, uint64_t gen, uint64_t tag)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = commit_(h, claim_pos, gen, tag);
    hunlock(h);
    return rc;
}

int shm_chan_abort(shm_chan_t *h, uint64_t claim_pos, uint64_t gen)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = abort_(h, claim_pos, gen);
    hunlock(h);
    return rc;
}

int64_t shm_chan_send(shm_chan_t *h, const void *src, uint64_t nbytes, uint64_t tag,
                      uint64_t spin_ns)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int64_t rc = send_(h, src, nbytes, tag, spin_ns);
    hunlock(h);
    return rc;
}

int64_t shm_chan_send_many(shm_chan_t *h, const void *src, uint64_t nbytes, uint64_t count,
                           uint64_t tag, uint64_t spin_ns)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int64_t rc = send_many_(h, src, nbytes, count, tag, spin_ns);
    hunlock(h);
    return rc;
}

int shm_chan_end(shm_chan_t *h)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = end_(h);
    hunlock(h);
    return rc;
}

int64_t shm_chan_recv(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len,
                      uint64_t spin_ns)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int64_t rc = recv_(h, out, dst, dst_len, spin_ns);
    hunlock(h);
    return rc;
}

int64_t shm_chan_latest(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len,
                        uint64_t spin_ns)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int64_t rc = latest_(h, out, dst, dst_len, spin_ns);
    hunlock(h);
    return rc;
}

int64_t shm_chan_recv_many(shm_chan_t *h, shm_chan_frame *out, uint64_t max, uint64_t spin_ns)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int64_t rc = recv_many_(h, out, max, spin_ns);
    hunlock(h);
    return rc;
}

int shm_chan_release(shm_chan_t *h, uint64_t pos, uint64_t gen)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = release_(h, pos, gen);
    hunlock(h);
    return rc;
}

int shm_chan_release_many(shm_chan_t *h, const uint64_t *pos, uint64_t n, uint64_t gen)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = release_many_(h, pos, n, gen);
    hunlock(h);
    return rc;
}

int shm_chan_self(shm_chan_t *h, shm_chan_self_info *out)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = self_(h, out);
    hunlock(h);
    return rc;
}

int shm_chan_arm(shm_chan_t *h, uint32_t which)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = arm_(h, which);
    hunlock(h);
    return rc;
}

int shm_chan_set_doorbells(shm_chan_t *h, int *fds, uint32_t n, const char *prefix)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = set_doorbells_(h, fds, n, prefix);
    hunlock(h);
    return rc;
}

int shm_chan_arm_doorbell(shm_chan_t *h, uint32_t which)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = arm_doorbell_(h, which);
    hunlock(h);
    return rc;
}

int shm_chan_disarm_doorbell(shm_chan_t *h, uint32_t which)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = disarm_doorbell_(h, which);
    hunlock(h);
    return rc;
}

int shm_chan_close_when_idle(shm_chan_t *h)
{
    if (!chan_attached(h))
        return SHM_CHAN_BAD_ARG;
    hlock(h);
    int rc = close_when_idle_(h);
    hunlock(h);
    return rc;
}
