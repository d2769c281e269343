/*
 * shmarray ring: implementation.  See ring.h for the protocol and the layout.
 *
 * Memory-order summary
 *  - seq: producers publish with store-release (p + 1), consumers release with
 *    store-release (p + cap); both sides read it with load-acquire, so payload
 *    and meta written before a store are visible after the matching load.
 *  - enqueue_pos / dequeue_pos: acquire loads, acq_rel CAS (WQ).  The acquire
 *    loads are what make "slot seq ahead of the cursor, cursor unchanged" a
 *    proof of corruption rather than a stale read (see wq_claim / acquire).
 *  - eventcount: the poster does store-release(seq); fence(seq_cst); load
 *    waiters.  The waiter does fetch_add(waiters, seq_cst); fence(seq_cst);
 *    re-check.  The two fences forbid the StoreLoad reordering that would
 *    otherwise lose a wake-up.
 *  - end of stream: state ENDED is a seq_cst store followed by seq_cst loads
 *    of the other producers' states (Dekker), so of two producers ending at
 *    once at least one sees the other ENDED and sets eos.
 */
#define _POSIX_C_SOURCE 200809L
#include "ring.h"
#include "shm_common.h"

#if defined(__SANITIZE_THREAD__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
/* TSan does not model atomic_thread_fence (gcc 12 warns, -Werror breaks the
 * SHMARRAY_SANITIZE=thread build).  Our fences only order the eventcount's
 * store->load; no data is published through them, so TSan's race analysis is
 * unaffected.  Lost wake-ups are caught by the stress test's sleep timeout. */
#pragma GCC diagnostic ignored "-Wtsan"
#endif

#include <stddef.h>
#include <string.h>
#include <time.h>

#define HANDLE_MAGIC 0x52494e4748444c31ULL /* private: "1LDHGNIR" */
#define RING_MAGIC 0x31474e49524d4853ULL   /* bytes "SHMRING1" on little-endian */
#define RETRY_CAP (1u << 16)
#define HEADER_SIZE 256u
#define CTRL_OFF 256u
#define PARTS_OFF 768u
#define ENTRY_SIZE 128u
#define NO_POS UINT64_MAX


_Static_assert(sizeof(shm_ring_header) == HEADER_SIZE, "header size");
_Static_assert(offsetof(shm_ring_header, body) == 8, "header body offset");
_Static_assert(sizeof(shm_ring_header_body) == 88, "header body size");
_Static_assert(offsetof(shm_ring_header_body, checksum) == 80, "checksum offset");
_Static_assert(sizeof(shm_ring_ctrl) == 512, "ctrl size");
_Static_assert(offsetof(shm_ring_ctrl, dequeue_pos) == 128, "dequeue_pos block");
_Static_assert(offsetof(shm_ring_ctrl, cons_waiters) == 256, "waiters block");
_Static_assert(offsetof(shm_ring_ctrl, eos) == 384, "eos block");
_Static_assert(offsetof(shm_ring_ctrl, dropped) == 400, "dropped offset");
_Static_assert(sizeof(shm_ring_part) == ENTRY_SIZE, "participant entry size");
_Static_assert(offsetof(shm_ring_part, pending_pos) == 32, "pending_pos offset");
_Static_assert(sizeof(shm_ring_slot) == ENTRY_SIZE, "slot entry size");
_Static_assert(offsetof(shm_ring_slot, claimant) == 112, "claimant offset");
_Static_assert(offsetof(shm_ring_slot, dtype) == 120, "dtype offset");
_Static_assert(offsetof(shm_ring_slot, flags) == 123, "flags offset");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "atomic u64 is lock-free sized");

/* ---------------------------------------------------------------- helpers */

static inline int attached(const shm_ring_t *r)
{
    return r != NULL && r->attached == HANDLE_MAGIC;
}

static inline int is_producer(const shm_ring_t *r)
{
    return attached(r) && r->registered && r->role == SHM_RING_ROLE_PRODUCER;
}

static inline int is_consumer(const shm_ring_t *r)
{
    return attached(r) && r->registered && r->role == SHM_RING_ROLE_CONSUMER;
}

static inline int wq(const shm_ring_t *r)
{
    return r->info.mode == SHM_RING_MODE_WORK_QUEUE;
}

/* ------------------------------------------------------------ status text */

const char *shm_ring_strerror(int rc)
{
    switch (rc) {
    case SHM_RING_OK: return "ok";
    case SHM_RING_EMPTY: return "ring empty";
    case SHM_RING_FULL: return "ring full";
    case SHM_RING_CORRUPT: return "ring corrupt (inconsistent shared memory)";
    case SHM_RING_TOO_LARGE: return "frame too large for the slot";
    case SHM_RING_BAD_ARG: return "bad argument or call out of sequence";
    case SHM_RING_ENDED: return "end of stream";
    case SHM_RING_BUSY: return "busy (entry or role held by another participant)";
    case SHM_RING_LIMIT: return "limit reached (a consumer holds at most capacity - 1 frames)";
    default: return rc > 0 ? "ok" : "unknown status";
    }
}

int shm_ring_abi_version(void) { return SHM_RING_ABI_VERSION; }

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

int shm_ring_dtype_count(void) { return (int)NDTYPES; }

const char *shm_ring_dtype_str(uint32_t code)
{
    return (code >= 1 && code <= NDTYPES) ? DTYPES[code].str : NULL;
}

int64_t shm_ring_dtype_itemsize(uint32_t code)
{
    return (code >= 1 && code <= NDTYPES) ? (int64_t)DTYPES[code].itemsize : SHM_RING_BAD_ARG;
}

/* itemsize * prod(shape), overflow-checked.  0 on success, -1 on overflow or
 * an invalid dtype/ndim. */
/* ------------------------------------------------------------------ layout */

typedef struct {
    uint64_t slot_stride, ctrl_off, parts_off, slots_off, payload_off, total_len;
} layout;


/* 0, or SHM_RING_BAD_ARG for parameters this version does not support. */
static int compute_layout(uint32_t mode, uint32_t policy, uint32_t cap, uint32_t maxp,
                          uint64_t slot_bytes, layout *L)
{
    if (mode != SHM_RING_MODE_ONE_TO_ONE && mode != SHM_RING_MODE_WORK_QUEUE)
        return SHM_RING_BAD_ARG; /* BROADCAST: not yet */
    if (policy != SHM_RING_POLICY_BLOCK)
        return SHM_RING_BAD_ARG;
    if (cap < SHM_RING_MIN_CAPACITY || cap > SHM_RING_MAX_CAPACITY || (cap & (cap - 1)) != 0)
        return SHM_RING_BAD_ARG;
    if (maxp < 1 || maxp > SHM_RING_MAX_PARTICIPANTS)
        return SHM_RING_BAD_ARG;
    if (slot_bytes < 1 || slot_bytes > SHM_RING_MAX_SLOT_BYTES)
        return SHM_RING_BAD_ARG;
    uint64_t t;
    if (round_up(slot_bytes, slot_bytes >= 65536 ? 4096 : 64, &L->slot_stride))
        return SHM_RING_BAD_ARG;
    L->ctrl_off = CTRL_OFF;
    L->parts_off = PARTS_OFF;
    L->slots_off = PARTS_OFF + (uint64_t)ENTRY_SIZE * maxp;
    if (round_up(L->slots_off + (uint64_t)ENTRY_SIZE * cap, 4096, &L->payload_off))
        return SHM_RING_BAD_ARG;
    if (__builtin_mul_overflow((uint64_t)cap, L->slot_stride, &t) ||
        __builtin_add_overflow(t, L->payload_off, &t) || round_up(t, 4096, &L->total_len))
        return SHM_RING_BAD_ARG;
    return SHM_RING_OK;
}


static uint32_t norm_policy(uint32_t policy)
{
    return policy == 0 ? SHM_RING_POLICY_BLOCK : policy;
}

uint64_t shm_ring_size(const shm_ring_params *p)
{
    layout L;
    if (p == NULL || compute_layout(p->mode, norm_policy(p->policy), p->capacity,
                                    p->max_participants, p->slot_bytes, &L) != SHM_RING_OK)
        return 0;
    return L.total_len;
}

int shm_ring_format(void *base, uint64_t len, const shm_ring_params *p)
{
    if (base == NULL || p == NULL || ((uintptr_t)base & 127u) != 0)
        return SHM_RING_BAD_ARG;
    layout L;
    uint32_t policy = norm_policy(p->policy);
    int rc = compute_layout(p->mode, policy, p->capacity, p->max_participants, p->slot_bytes, &L);
    if (rc != SHM_RING_OK)
        return rc;
    if (L.total_len > len)
        return SHM_RING_TOO_LARGE;
    unsigned char *b = base;
    shm_ring_header *h = base;
    atomic_store_explicit(&h->magic, 0, RLX);
    /* Everything but the payload; fresh shm pages are zero anyway. */
    memset(b + 8, 0, (size_t)(L.payload_off - 8));
    shm_ring_ctrl *c = (shm_ring_ctrl *)(b + L.ctrl_off);
    atomic_store_explicit(&c->producer_owner, SHM_RING_NO_INDEX, RLX);
    atomic_store_explicit(&c->consumer_owner, SHM_RING_NO_INDEX, RLX);
    shm_ring_part *parts = (shm_ring_part *)(b + L.parts_off);
    for (uint32_t i = 0; i < p->max_participants; i++)
        atomic_store_explicit(&parts[i].pending_pos, NO_POS, RLX);
    shm_ring_slot *slots = (shm_ring_slot *)(b + L.slots_off);
    for (uint32_t i = 0; i < p->capacity; i++) {
        atomic_store_explicit(&slots[i].seq, i, RLX);
        atomic_store_explicit(&slots[i].claim_pos, NO_POS, RLX);
        atomic_store_explicit(&slots[i].holder_pos, NO_POS, RLX);
        atomic_store_explicit(&slots[i].claimant, SHM_RING_NO_INDEX, RLX);
        atomic_store_explicit(&slots[i].holder, SHM_RING_NO_INDEX, RLX);
    }
    shm_ring_header_body *hb = &h->body;
    hb->layout_version = SHM_RING_LAYOUT_VERSION;
    hb->header_size = HEADER_SIZE;
    hb->mode = p->mode;
    hb->policy = policy;
    hb->capacity = p->capacity;
    hb->max_participants = p->max_participants;
    hb->slot_bytes = p->slot_bytes;
    hb->slot_stride = L.slot_stride;
    hb->ctrl_off = L.ctrl_off;
    hb->parts_off = L.parts_off;
    hb->slots_off = L.slots_off;
    hb->payload_off = L.payload_off;
    hb->total_len = L.total_len;
    hb->checksum = fnv1a(hb, offsetof(shm_ring_header_body, checksum));
    /* Magic last: an attacher that sees it (acquire) sees the whole format. */
    atomic_store_explicit(&h->magic, RING_MAGIC, REL);
    return SHM_RING_OK;
}

/* ------------------------------------------------------------------ attach */

int shm_ring_attach(shm_ring_t *r, void *base, uint64_t len, shm_ring_info *info_out)
{
    if (r == NULL)
        return SHM_RING_BAD_ARG;
    memset(r, 0, sizeof *r);
    if (base == NULL || ((uintptr_t)base & 127u) != 0)
        return SHM_RING_BAD_ARG;
    if (len < HEADER_SIZE)
        return SHM_RING_CORRUPT;
    shm_ring_header *h = base;
    if (atomic_load_explicit(&h->magic, ACQ) != RING_MAGIC)
        return SHM_RING_CORRUPT;
    shm_ring_header_body hb; /* the one read of the header */
    memcpy(&hb, &h->body, sizeof hb);
    if (hb.layout_version != SHM_RING_LAYOUT_VERSION || hb.header_size != HEADER_SIZE)
        return SHM_RING_CORRUPT;
    if (hb.checksum != fnv1a(&hb, offsetof(shm_ring_header_body, checksum)))
        return SHM_RING_CORRUPT;
    layout L;
    if (compute_layout(hb.mode, hb.policy, hb.capacity, hb.max_participants, hb.slot_bytes, &L))
        return SHM_RING_CORRUPT;
    if (L.slot_stride != hb.slot_stride || L.ctrl_off != hb.ctrl_off ||
        L.parts_off != hb.parts_off || L.slots_off != hb.slots_off ||
        L.payload_off != hb.payload_off || L.total_len != hb.total_len)
        return SHM_RING_CORRUPT;
    if (L.total_len > len)
        return SHM_RING_CORRUPT;

    unsigned char *b = base;
    r->base = b;
    r->len = len;
    r->info.mode = hb.mode;
    r->info.policy = hb.policy;
    r->info.capacity = hb.capacity;
    r->info.max_participants = hb.max_participants;
    r->info.slot_bytes = hb.slot_bytes;
    r->info.slot_stride = L.slot_stride;
    r->info.ctrl_off = L.ctrl_off;
    r->info.parts_off = L.parts_off;
    r->info.slots_off = L.slots_off;
    r->info.payload_off = L.payload_off;
    r->info.total_len = L.total_len;
    r->info.layout_version = SHM_RING_LAYOUT_VERSION;
    r->info.abi_version = SHM_RING_ABI_VERSION;
    r->mask = (uint64_t)hb.capacity - 1;
    r->ctrl = (shm_ring_ctrl *)(b + L.ctrl_off);
    r->parts = (shm_ring_part *)(b + L.parts_off);
    r->slots = (shm_ring_slot *)(b + L.slots_off);
    r->payload = b + L.payload_off;
    r->index = SHM_RING_NO_INDEX;
    r->s_nbytes = -1;
    r->attached = HANDLE_MAGIC;
    if (info_out)
        *info_out = r->info;
    return SHM_RING_OK;
}

int shm_ring_get_info(const shm_ring_t *r, shm_ring_info *out)
{
    if (!attached(r) || out == NULL)
        return SHM_RING_BAD_ARG;
    *out = r->info;
    return SHM_RING_OK;
}

int shm_ring_set_debug(shm_ring_t *r, int on)
{
    if (!attached(r))
        return SHM_RING_BAD_ARG;
    r->debug = on != 0;
    return SHM_RING_OK;
}

/* ---------------------------------------------------------------- signals */

static inline _Atomic uint32_t *waiters_word(const shm_ring_t *r, uint32_t which)
{
    if (which == SHM_RING_WAIT_DATA)
        return &r->ctrl->cons_waiters;
    if (which == SHM_RING_WAIT_SPACE)
        return &r->ctrl->prod_waiters;
    return NULL;
}

/* The poster's half of the eventcount: call after the store-release. */
static inline int someone_waits(const shm_ring_t *r, uint32_t which)
{
    atomic_thread_fence(SC);
    return atomic_load_explicit(waiters_word(r, which), RLX) != 0;
}

int shm_ring_arm(shm_ring_t *r, uint32_t which)
{
    if (!attached(r) || waiters_word(r, which) == NULL)
        return SHM_RING_BAD_ARG;
    atomic_fetch_add_explicit(waiters_word(r, which), 1, SC);
    atomic_thread_fence(SC);
    return SHM_RING_OK;
}

int shm_ring_disarm(shm_ring_t *r, uint32_t which)
{
    if (!attached(r) || waiters_word(r, which) == NULL)
        return SHM_RING_BAD_ARG;
    _Atomic uint32_t *w = waiters_word(r, which);
    uint32_t v = atomic_load_explicit(w, RLX);
    /* Decrement-if-positive, so a count zeroed by a hostile peer never wraps
     * to 2^32 - 1 through us. */
    for (uint32_t tries = 0; tries < RETRY_CAP; tries++) {
        if (v == 0)
            return SHM_RING_OK;
        if (atomic_compare_exchange_weak_explicit(w, &v, v - 1, SC, RLX))
            return SHM_RING_OK;
    }
    return SHM_RING_BUSY;
}

/* ------------------------------------------------------------ participants */

static int64_t owner_index(const shm_ring_t *r, uint32_t v)
{
    if (v == SHM_RING_NO_INDEX)
        return (int64_t)SHM_RING_NO_INDEX;
    return v < r->info.max_participants ? (int64_t)v : SHM_RING_CORRUPT;
}

int64_t shm_ring_role_owner(const shm_ring_t *r, uint32_t role)
{
    if (!attached(r) || r->info.mode != SHM_RING_MODE_ONE_TO_ONE)
        return SHM_RING_BAD_ARG;
    if (role == SHM_RING_ROLE_PRODUCER)
        return owner_index(r, atomic_load_explicit(&r->ctrl->producer_owner, ACQ));
    if (role == SHM_RING_ROLE_CONSUMER)
        return owner_index(r, atomic_load_explicit(&r->ctrl->consumer_owner, ACQ));
    return SHM_RING_BAD_ARG;
}

static _Atomic uint32_t *owner_word(const shm_ring_t *r, uint32_t role)
{
    return role == SHM_RING_ROLE_PRODUCER ? &r->ctrl->producer_owner : &r->ctrl->consumer_owner;
}

static void clear_owner(const shm_ring_t *r, uint32_t role, uint32_t index)
{
    uint32_t expect = index;
    atomic_compare_exchange_strong_explicit(owner_word(r, role), &expect, SHM_RING_NO_INDEX, AR,
                                            RLX);
}

/* ONE_TO_ONE producer takeover: enqueue_pos is stored after the seq publish,
 * so a producer killed between the two leaves it one behind.  Skip positions
 * whose slot shows they were published (p + 1: unread, p + cap: released);
 * bounded by cap. */
static uint64_t one_to_one_producer_start(const shm_ring_t *r)
{
    uint64_t cap = r->mask + 1;
    uint64_t e0 = atomic_load_explicit(&r->ctrl->enqueue_pos, ACQ), e = e0;
    for (uint64_t k = 0; k < cap; k++) {
        uint64_t s = atomic_load_explicit(&r->slots[e & r->mask].seq, ACQ);
        if (s != e + 1 && s != e + cap)
            break;
        e++;
    }
    if (e != e0)
        atomic_store_explicit(&r->ctrl->enqueue_pos, e, REL);
    return e;
}

int shm_ring_register(shm_ring_t *r, uint32_t index, uint32_t role, uint32_t pid,
                      uint64_t start_time)
{
    if (!attached(r) || r->registered || index >= r->info.max_participants)
        return SHM_RING_BAD_ARG;
    if (role != SHM_RING_ROLE_PRODUCER && role != SHM_RING_ROLE_CONSUMER)
        return SHM_RING_BAD_ARG;
    shm_ring_part *e = &r->parts[index];
    uint32_t st = atomic_load_explicit(&e->state, ACQ);
    if (st > SHM_RING_PART_DEAD)
        return SHM_RING_CORRUPT;
    if (st == SHM_RING_PART_ACTIVE)
        return SHM_RING_BUSY; /* Python recovers the entry first */
    if (role == SHM_RING_ROLE_PRODUCER && atomic_load_explicit(&r->ctrl->eos, ACQ))
        return SHM_RING_ENDED;
    uint64_t pos = 0;
    if (r->info.mode == SHM_RING_MODE_ONE_TO_ONE) {
        uint32_t expect = SHM_RING_NO_INDEX;
        if (!atomic_compare_exchange_strong_explicit(owner_word(r, role), &expect, index, AR, ACQ)) {
            if (expect >= r->info.max_participants)
                return SHM_RING_CORRUPT;
            /* expect == index: a stale word naming us; the caller holds our
             * lock byte, so its previous holder is gone.  Take it over. */
            if (expect != index)
                return SHM_RING_BUSY; /* shm_ring_role_owner() names the holder */
        }
        pos = role == SHM_RING_ROLE_PRODUCER
                  ? one_to_one_producer_start(r)
                  : atomic_load_explicit(&r->ctrl->dequeue_pos, ACQ);
    }
    atomic_store_explicit(&e->role, role, RLX);
    atomic_store_explicit(&e->pid, pid, RLX);
    atomic_store_explicit(&e->start_time, start_time, RLX);
    atomic_store_explicit(&e->joined_ns, now_ns(), RLX);
    atomic_store_explicit(&e->pending_pos, NO_POS, RLX);
    atomic_store_explicit(&e->frames, 0, RLX);
    atomic_store_explicit(&e->state, SHM_RING_PART_ACTIVE, SC);
    if (role == SHM_RING_ROLE_PRODUCER)
        atomic_fetch_add_explicit(&r->ctrl->producers_ever, 1, RLX);
    r->me = e;
    r->index = index;
    r->role = role;
    r->registered = 1;
    r->ended = 0;
    r->claimed = 0;
    r->held = 0;
    r->pos = pos;
    r->frames = 0;
    r->l_valid = 0;
    return SHM_RING_OK;
}

/* Release consumed-but-unreleased slots held by participant `index`.
 * strict: only slots whose holder record names (index, pos).  Otherwise also
 * the slot a consumer took by CAS but died before recording (holder_pos not
 * this lap, and the entry's pending_pos == pos), and in ONE_TO_ONE every
 * consumed-unreleased slot (there is only one consumer).  Returns the number
 * of slots released; *dropped counts real frames among them. */
static uint32_t release_holds(shm_ring_t *r, uint32_t index, int strict, uint64_t *dropped)
{
    uint64_t cap = r->mask + 1;
    uint64_t dq = atomic_load_explicit(&r->ctrl->dequeue_pos, ACQ);
    uint64_t pend = atomic_load_explicit(&r->parts[index].pending_pos, RLX);
    int any = !strict && r->info.mode == SHM_RING_MODE_ONE_TO_ONE;
    uint32_t n = 0;
    for (uint64_t i = 0; i < cap; i++) {
        shm_ring_slot *s = &r->slots[i];
        uint64_t seq = atomic_load_explicit(&s->seq, ACQ);
        uint64_t p = seq - 1;
        if (seq == 0 || (p & r->mask) != i || p >= dq || dq - p > cap)
            continue; /* not "committed at p and consumed" */
        if (!any) {
            uint32_t h = atomic_load_explicit(&s->holder, RLX);
            uint64_t hp = atomic_load_explicit(&s->holder_pos, RLX);
            int recorded = h == index && hp == p;
            int unrecorded = !strict && hp != p && pend == p;
            if (!recorded && !unrecorded)
                continue;
        }
        uint8_t flags = atomic_load_explicit(&s->flags, RLX);
        uint64_t expect = seq;
        if (atomic_compare_exchange_strong_explicit(&s->seq, &expect, p + cap, REL, RLX)) {
            n++;
            if (!(flags & SHM_RING_SLOT_FLAG_ABORTED))
                (*dropped)++;
        }
    }
    return n;
}

/* WORK_QUEUE: tombstone every slot participant `index` claimed and never
 * published (seq == p with p < enqueue_pos), including one claimed by CAS but
 * not yet recorded (claim_pos not this lap, pending_pos == p).  Returns the
 * number of tombstones published. */
static uint32_t tombstone_claims(shm_ring_t *r, uint32_t index)
{
    uint64_t cap = r->mask + 1;
    uint64_t eq = atomic_load_explicit(&r->ctrl->enqueue_pos, ACQ);
    uint64_t pend = atomic_load_explicit(&r->parts[index].pending_pos, RLX);
    uint32_t n = 0;
    for (uint64_t i = 0; i < cap; i++) {
        shm_ring_slot *s = &r->slots[i];
        uint64_t p = atomic_load_explicit(&s->seq, ACQ);
        if ((p & r->mask) != i || p >= eq || eq - p > cap)
            continue; /* not "claimed at p, unpublished" */
        uint32_t c = atomic_load_explicit(&s->claimant, RLX);
        uint64_t cp = atomic_load_explicit(&s->claim_pos, RLX);
        if (!(c == index && cp == p) && !(cp != p && pend == p))
            continue;
        atomic_store_explicit(&s->flags, SHM_RING_SLOT_FLAG_ABORTED, RLX);
        atomic_store_explicit(&s->nbytes, 0, RLX);
        atomic_store_explicit(&s->ndim, 0, RLX);
        atomic_store_explicit(&s->dtype, 0, RLX);
        uint64_t expect = p;
        if (atomic_compare_exchange_strong_explicit(&s->seq, &expect, p + 1, REL, RLX))
            n++;
    }
    return n;
}

static int post_bits(const shm_ring_t *r, uint32_t tombs, uint32_t released)
{
    int bits = 0;
    if (tombs && someone_waits(r, SHM_RING_WAIT_DATA))
        bits |= SHM_RING_POST_DATA;
    if (released && someone_waits(r, SHM_RING_WAIT_SPACE))
        bits |= SHM_RING_POST_SPACE;
    return bits;
}

static void publish_tombstone(shm_ring_t *r)
{
    shm_ring_slot *s = &r->slots[r->claim_slot];
    atomic_store_explicit(&s->flags, SHM_RING_SLOT_FLAG_ABORTED, RLX);
    atomic_store_explicit(&s->nbytes, 0, RLX);
    atomic_store_explicit(&s->ndim, 0, RLX);
    atomic_store_explicit(&s->dtype, 0, RLX);
    atomic_store_explicit(&s->seq, r->claim_pos + 1, REL);
    r->claimed = 0;
}

/* Drops this handle's outstanding claim.  Returns 1 if a tombstone was
 * published (WQ), else 0. */
static int drop_claim(shm_ring_t *r)
{
    if (!r->claimed)
        return 0;
    if (wq(r)) {
        publish_tombstone(r);
        return 1;
    }
    r->claimed = 0; /* ONE_TO_ONE: never published, the slot is simply reused */
    return 0;
}

int shm_ring_unregister(shm_ring_t *r)
{
    if (!attached(r) || !r->registered)
        return SHM_RING_BAD_ARG;
    uint32_t tombs = 0, released = 0, final = SHM_RING_PART_FREE;
    if (r->role == SHM_RING_ROLE_PRODUCER) {
        tombs = (uint32_t)drop_claim(r);
        if (r->ended)
            final = SHM_RING_PART_ENDED;
    } else if (r->held) {
        uint64_t dropped = 0;
        released = release_holds(r, r->index, 1, &dropped);
        if (dropped)
            atomic_fetch_add_explicit(&r->ctrl->dropped, dropped, RLX);
        r->held = 0;
    }
    if (r->info.mode == SHM_RING_MODE_ONE_TO_ONE)
        clear_owner(r, r->role, r->index);
    atomic_store_explicit(&r->me->pending_pos, NO_POS, RLX);
    atomic_store_explicit(&r->me->state, final, SC);
    r->registered = 0;
    r->role = 0;
    r->me = NULL;
    r->index = SHM_RING_NO_INDEX;
    return post_bits(r, tombs, released);
}

int shm_ring_recover(shm_ring_t *r, uint32_t index, uint64_t *dropped_out)
{
    if (dropped_out)
        *dropped_out = 0;
    if (!attached(r) || index >= r->info.max_participants)
        return SHM_RING_BAD_ARG;
    if (r->registered && r->index == index)
        return SHM_RING_BAD_ARG; /* that is us: use unregister */
    shm_ring_part *e = &r->parts[index];
    uint32_t st = atomic_load_explicit(&e->state, ACQ);
    uint32_t role = atomic_load_explicit(&e->role, RLX);
    if (st > SHM_RING_PART_DEAD)
        return SHM_RING_CORRUPT;
    int o2o = r->info.mode == SHM_RING_MODE_ONE_TO_ONE;
    uint32_t tombs = 0, released = 0;
    uint64_t dropped = 0;
    if (st == SHM_RING_PART_ACTIVE) {
        if (role == SHM_RING_ROLE_CONSUMER) {
            /* In 1:1 only the owner consumer can hold slots; a stale ACTIVE
             * entry that never won the owner word must not release the
             * owner's frames. */
            if (!o2o || atomic_load_explicit(&r->ctrl->consumer_owner, ACQ) == index)
                released = release_holds(r, index, 0, &dropped);
            if (dropped)
                atomic_fetch_add_explicit(&r->ctrl->dropped, dropped, RLX);
            /* DEAD, not FREE: a producer waiting for space can tell "my consumers died"
             * from "no consumer ever came" (register reuses DEAD entries). */
            st = SHM_RING_PART_DEAD;
        } else if (role == SHM_RING_ROLE_PRODUCER) {
            if (!o2o)
                tombs = tombstone_claims(r, index);
            st = SHM_RING_PART_DEAD;
        } else {
            return SHM_RING_CORRUPT;
        }
    }
    if (o2o) {
        clear_owner(r, SHM_RING_ROLE_PRODUCER, index);
        clear_owner(r, SHM_RING_ROLE_CONSUMER, index);
    }
    if (st != SHM_RING_PART_ACTIVE) {
        /* st is the new state of an entry found ACTIVE; CAS so that an entry
         * found FREE/ENDED/DEAD is never overwritten */
        uint32_t expect = SHM_RING_PART_ACTIVE;
        atomic_store_explicit(&e->pending_pos, NO_POS, RLX);
        atomic_compare_exchange_strong_explicit(&e->state, &expect, st, SC, RLX);
    }
    if (dropped_out)
        *dropped_out = dropped;
    return post_bits(r, tombs, released);
}

int shm_ring_participant(const shm_ring_t *r, uint32_t index, shm_ring_participant_info *out)
{
    if (!attached(r) || out == NULL || index >= r->info.max_participants)
        return SHM_RING_BAD_ARG;
    const shm_ring_part *e = &r->parts[index];
    memset(out, 0, sizeof *out);
    out->state = atomic_load_explicit(&e->state, ACQ);
    out->role = atomic_load_explicit(&e->role, RLX);
    out->pid = atomic_load_explicit(&e->pid, RLX);
    out->start_time = atomic_load_explicit(&e->start_time, RLX);
    out->joined_ns = atomic_load_explicit(&e->joined_ns, RLX);
    out->frames = atomic_load_explicit(&e->frames, RLX);
    if (out->state > SHM_RING_PART_DEAD || out->role > SHM_RING_ROLE_CONSUMER ||
        (out->state != SHM_RING_PART_FREE && out->role == 0))
        return SHM_RING_CORRUPT;
    return SHM_RING_OK;
}

int shm_ring_status(const shm_ring_t *r, shm_ring_status_info *out)
{
    if (!attached(r) || out == NULL)
        return SHM_RING_BAD_ARG;
    const shm_ring_ctrl *c = r->ctrl;
    out->enqueue_pos = atomic_load_explicit(&c->enqueue_pos, RLX);
    out->dequeue_pos = atomic_load_explicit(&c->dequeue_pos, RLX);
    out->dropped = atomic_load_explicit(&c->dropped, RLX);
    out->eos = atomic_load_explicit(&c->eos, RLX);
    out->cons_waiters = atomic_load_explicit(&c->cons_waiters, RLX);
    out->prod_waiters = atomic_load_explicit(&c->prod_waiters, RLX);
    out->producers_ever = atomic_load_explicit(&c->producers_ever, RLX);
    out->producer_owner = atomic_load_explicit(&c->producer_owner, RLX);
    out->consumer_owner = atomic_load_explicit(&c->consumer_owner, RLX);
    return SHM_RING_OK;
}

/* ---------------------------------------------------------------- producer */

int64_t shm_ring_set_schema(shm_ring_t *r, uint32_t dtype, uint32_t ndim, const uint64_t *shape)
{
    if (!attached(r) || dtype < 1 || dtype > NDTYPES || ndim > SHM_RING_MAX_NDIM ||
        (ndim > 0 && shape == NULL))
        return SHM_RING_BAD_ARG;
    uint64_t n;
    if (frame_bytes(dtype, ndim, shape, &n) || n > r->info.slot_bytes)
        return SHM_RING_TOO_LARGE;
    r->s_dtype = dtype;
    r->s_ndim = ndim;
    for (uint32_t k = 0; k < SHM_RING_MAX_NDIM; k++)
        r->s_shape[k] = k < ndim ? shape[k] : 0;
    r->s_nbytes = (int64_t)n;
    return (int64_t)n;
}

static int64_t wq_claim(shm_ring_t *r)
{
    const int64_t cap = (int64_t)r->mask + 1;
    _Atomic uint64_t *enq = &r->ctrl->enqueue_pos;
    for (uint32_t tries = 0; tries < RETRY_CAP; tries++) {
        uint64_t p = atomic_load_explicit(enq, ACQ);
        shm_ring_slot *s = &r->slots[p & r->mask];
        uint64_t seq = atomic_load_explicit(&s->seq, ACQ);
        int64_t d = (int64_t)(seq - p);
        if (d == 0) {
            /* Intent record first, so a producer killed between the CAS and
             * the claimant store below is still recoverable. */
            atomic_store_explicit(&r->me->pending_pos, p, RLX);
            if (atomic_compare_exchange_weak_explicit(enq, &p, p + 1, AR, RLX)) {
                atomic_store_explicit(&s->claimant, r->index, RLX);
                atomic_store_explicit(&s->claim_pos, p, RLX);
                r->claimed = 1;
                r->claim_pos = p;
                r->claim_slot = (uint32_t)(p & r->mask);
                return (int64_t)r->claim_slot;
            }
        } else if (d < 0) {
            /* Legit: seq == p - cap (claimed last lap) or p - cap + 1 (unreleased). */
            return d < -cap ? SHM_RING_CORRUPT : SHM_RING_FULL;
        } else if (atomic_load_explicit(enq, ACQ) == p) {
            /* seq > p is only written after someone moved enqueue_pos past p,
             * and our acquire load of seq makes that move visible: a cursor
             * still at p means the region lies. */
            return SHM_RING_CORRUPT;
        }
    }
    return SHM_RING_BUSY;
}

int64_t shm_ring_claim(shm_ring_t *r)
{
    if (!is_producer(r) || r->claimed)
        return SHM_RING_BAD_ARG;
    if (r->ended)
        return SHM_RING_ENDED;
    if (wq(r))
        return wq_claim(r);
    uint64_t p = r->pos;
    uint64_t seq = atomic_load_explicit(&r->slots[p & r->mask].seq, ACQ);
    int64_t d = (int64_t)(seq - p);
    if (d == 0) {
        r->claimed = 1;
        r->claim_pos = p;
        r->claim_slot = (uint32_t)(p & r->mask);
        return (int64_t)r->claim_slot;
    }
    /* Only p - cap + 1 (unreleased) is legit for a single producer; seq ahead
     * of our private position means someone else wrote it. */
    return (d < 0 && d >= -(int64_t)(r->mask + 1)) ? SHM_RING_FULL : SHM_RING_CORRUPT;
}

int64_t shm_ring_claim_spin(shm_ring_t *r, uint64_t spin_ns)
{
    int64_t rc = shm_ring_claim(r);
    if (rc != SHM_RING_FULL || spin_ns == 0)
        return rc;
    uint64_t deadline = now_ns();
    if (__builtin_add_overflow(deadline, spin_ns, &deadline))
        deadline = UINT64_MAX;
    for (uint32_t i = 1;; i++) {
        cpu_relax();
        rc = shm_ring_claim(r);
        if (rc != SHM_RING_FULL)
            return rc;
        if ((i & 63u) == 0 && now_ns() >= deadline)
            return rc;
    }
}

/* Stamps meta from the schema and publishes the claimed slot.  Returns 1 when
 * a consumer waits (post the data semaphore). */
static void publish_nowake(shm_ring_t *r, uint64_t tag);

static int publish(shm_ring_t *r, uint64_t tag)
{
    publish_nowake(r, tag);
    return someone_waits(r, SHM_RING_WAIT_DATA);
}

/* Writes the frame meta of the outstanding claim and publishes it (release); the caller
 * decides when to check for waiters (after a seq_cst fence: someone_waits). */
static void publish_nowake(shm_ring_t *r, uint64_t tag)
{
    shm_ring_slot *s = &r->slots[r->claim_slot];
    uint64_t p = r->claim_pos;
    atomic_store_explicit(&s->timestamp_ns, now_ns(), RLX);
    atomic_store_explicit(&s->tag, tag, RLX);
    atomic_store_explicit(&s->nbytes, (uint64_t)r->s_nbytes, RLX);
    atomic_store_explicit(&s->dtype, (uint16_t)r->s_dtype, RLX);
    atomic_store_explicit(&s->ndim, (uint8_t)r->s_ndim, RLX);
    atomic_store_explicit(&s->flags, 0, RLX);
    for (uint32_t k = 0; k < r->s_ndim; k++)
        atomic_store_explicit(&s->shape[k], r->s_shape[k], RLX);
    atomic_store_explicit(&s->seq, p + 1, REL);
    r->claimed = 0;
    if (!wq(r)) {
        r->pos = p + 1;
        atomic_store_explicit(&r->ctrl->enqueue_pos, p + 1, REL);
    }
    atomic_store_explicit(&r->me->frames, ++r->frames, RLX);
}

int shm_ring_commit(shm_ring_t *r, uint64_t tag)
{
    if (!is_producer(r) || !r->claimed || r->s_nbytes < 0)
        return SHM_RING_BAD_ARG;
    return publish(r, tag);
}

int shm_ring_abort(shm_ring_t *r)
{
    if (!is_producer(r) || !r->claimed)
        return SHM_RING_BAD_ARG;
    /* A tombstone can unblock consumers waiting behind this position. */
    return drop_claim(r) ? someone_waits(r, SHM_RING_WAIT_DATA) : 0;
}

int64_t shm_ring_send(shm_ring_t *r, const void *src, uint64_t nbytes, uint64_t tag,
                      uint64_t spin_ns)
{
    if (!is_producer(r) || r->claimed || r->s_nbytes < 0)
        return SHM_RING_BAD_ARG;
    if (nbytes != (uint64_t)r->s_nbytes)
        return nbytes > r->info.slot_bytes ? SHM_RING_TOO_LARGE : SHM_RING_BAD_ARG;
    if (nbytes > 0 && src == NULL)
        return SHM_RING_BAD_ARG;
    int64_t slot = shm_ring_claim_spin(r, spin_ns);
    if (slot < 0)
        return slot;
    if (nbytes > 0)
        memcpy(r->payload + (uint64_t)slot * r->info.slot_stride, src, (size_t)nbytes);
    return (slot << 1) | publish(r, tag);
}

int64_t shm_ring_send_many(shm_ring_t *r, const void *src, uint64_t nbytes, uint64_t count,
                           uint64_t tag, uint64_t spin_ns)
{
    if (!is_producer(r) || r->claimed || r->s_nbytes < 0 || count == 0)
        return SHM_RING_BAD_ARG;
    if (nbytes != (uint64_t)r->s_nbytes)
        return nbytes > r->info.slot_bytes ? SHM_RING_TOO_LARGE : SHM_RING_BAD_ARG;
    if (nbytes > 0 && src == NULL)
        return SHM_RING_BAD_ARG;
    if (count > ((uint64_t)1 << 40))
        return SHM_RING_BAD_ARG;
    const unsigned char *in = src;
    uint64_t sent = 0;
    int64_t rc = 0;
    while (sent < count) {
        /* spin only for the first frame: afterwards, stop at the first full ring */
        int64_t slot = sent == 0 ? shm_ring_claim_spin(r, spin_ns) : shm_ring_claim(r);
        if (slot < 0) {
            rc = slot;
            break;
        }
        if (nbytes > 0)
            memcpy(r->payload + (uint64_t)slot * r->info.slot_stride, in + sent * nbytes,
                   (size_t)nbytes);
        publish_nowake(r, tag + sent);
        sent++;
    }
    if (sent == 0)
        return rc;
    return (int64_t)(sent << 1) | someone_waits(r, SHM_RING_WAIT_DATA);
}

int shm_ring_end(shm_ring_t *r)
{
    if (!is_producer(r))
        return SHM_RING_BAD_ARG;
    if (r->ended)
        return 0;
    int post = drop_claim(r) ? someone_waits(r, SHM_RING_WAIT_DATA) : 0;
    r->ended = 1;
    atomic_store_explicit(&r->me->state, SHM_RING_PART_ENDED, SC);
    atomic_thread_fence(SC);
    for (uint32_t i = 0; i < r->info.max_participants; i++) {
        if (i == r->index)
            continue;
        uint32_t st = atomic_load_explicit(&r->parts[i].state, SC);
        uint32_t role = atomic_load_explicit(&r->parts[i].role, RLX);
        if (st == SHM_RING_PART_ACTIVE && role == SHM_RING_ROLE_PRODUCER)
            return post; /* the last producer to end sets eos */
    }
    atomic_store_explicit(&r->ctrl->eos, 1, REL);
    atomic_thread_fence(SC);
    uint32_t w = atomic_load_explicit(&r->ctrl->cons_waiters, RLX);
    /* untrusted count: never ask Python to post more than could be waiting */
    if (w > r->info.max_participants)
        w = r->info.max_participants;
    return (int)w > post ? (int)w : post;
}

/* ---------------------------------------------------------------- consumer */

/* Reads the slot meta once into `out` and validates it. */
static int read_meta(const shm_ring_t *r, const shm_ring_slot *s, shm_ring_frame *out)
{
    out->timestamp_ns = atomic_load_explicit(&s->timestamp_ns, RLX);
    out->tag = atomic_load_explicit(&s->tag, RLX);
    out->nbytes = atomic_load_explicit(&s->nbytes, RLX);
    out->dtype = atomic_load_explicit(&s->dtype, RLX);
    out->ndim = atomic_load_explicit(&s->ndim, RLX);
    if (out->ndim > SHM_RING_MAX_NDIM)
        return SHM_RING_CORRUPT;
    for (uint32_t k = 0; k < SHM_RING_MAX_NDIM; k++)
        out->shape[k] = k < out->ndim ? atomic_load_explicit(&s->shape[k], RLX) : 0;
    uint64_t n;
    if (frame_bytes(out->dtype, out->ndim, out->shape, &n) || n != out->nbytes ||
        n > r->info.slot_bytes)
        return SHM_RING_CORRUPT;
    return SHM_RING_OK;
}

static void note_schema(shm_ring_t *r, shm_ring_frame *out)
{
    int same = r->l_valid && r->l_dtype == out->dtype && r->l_ndim == out->ndim &&
               memcmp(r->l_shape, out->shape, sizeof r->l_shape) == 0;
    out->schema_changed = !same;
    if (!same) {
        r->l_valid = 1;
        r->l_dtype = out->dtype;
        r->l_ndim = out->ndim;
        memcpy(r->l_shape, out->shape, sizeof r->l_shape);
    }
}

/* Does the committed frame in slot s have the schema this handle saw last? (a peek, before
 * taking the position: shm_ring_acquire_many's runs never mix schemas) */
static int same_schema(const shm_ring_t *r, const shm_ring_slot *s)
{
    if (!r->l_valid || atomic_load_explicit(&s->dtype, RLX) != r->l_dtype ||
        atomic_load_explicit(&s->ndim, RLX) != r->l_ndim)
        return 0;
    for (uint32_t k = 0; k < r->l_ndim && k < SHM_RING_MAX_NDIM; k++)
        if (atomic_load_explicit(&s->shape[k], RLX) != r->l_shape[k])
            return 0;
    return 1;
}

/* want_slot < 0: take the next frame.  want_slot >= 0: take it only if it lies in that slot and
 * has the last frame's schema, else return EMPTY without taking anything. */
static int64_t acquire_impl(shm_ring_t *r, shm_ring_frame *out, int64_t want_slot);

int64_t shm_ring_acquire(shm_ring_t *r, shm_ring_frame *out)
{
    return acquire_impl(r, out, -1);
}

static int64_t acquire_impl(shm_ring_t *r, shm_ring_frame *out, int64_t want_slot)
{
    if (!is_consumer(r) || out == NULL)
        return SHM_RING_BAD_ARG;
    out->wake_producers = 0;
    if (r->held >= r->mask) /* capacity - 1 */
        return SHM_RING_LIMIT;
    const int64_t cap = (int64_t)r->mask + 1;
    const int is_wq = wq(r);
    _Atomic uint64_t *deq = &r->ctrl->dequeue_pos;
    uint32_t released = 0;
    int eos_seen = 0;
    int64_t rc = SHM_RING_BUSY;
    for (uint32_t tries = 0; tries < RETRY_CAP; tries++) {
        uint64_t p = is_wq ? atomic_load_explicit(deq, ACQ) : r->pos;
        shm_ring_slot *s = &r->slots[p & r->mask];
        uint64_t seq = atomic_load_explicit(&s->seq, ACQ);
        int64_t d = (int64_t)(seq - (p + 1));
        if (d < 0) {
            /* Legit: seq == p (free or claimed) or p - cap + 1 (last lap held). */
            if (d < -cap) {
                rc = SHM_RING_CORRUPT;
                break;
            }
            /* Empty.  eos is stored (release) after every commit of every
             * producer; so once we see it, one more look at the slot is final. */
            if (!eos_seen && atomic_load_explicit(&r->ctrl->eos, ACQ)) {
                eos_seen = 1;
                continue;
            }
            rc = eos_seen ? SHM_RING_ENDED : SHM_RING_EMPTY;
            break;
        }
        if (d > 0) {
            /* Someone took and released p already; in WQ reload the cursor,
             * which must have moved (see wq_claim). */
            if (is_wq && atomic_load_explicit(deq, ACQ) != p)
                continue;
            rc = SHM_RING_CORRUPT;
            break;
        }
        /* seq == p + 1: committed at p.  Take position p. */
        if (want_slot >= 0 && ((int64_t)(p & r->mask) != want_slot || !same_schema(r, s))) {
            rc = SHM_RING_EMPTY; /* the run ends here; nothing taken */
            break;
        }
        if (is_wq) {
            atomic_store_explicit(&r->me->pending_pos, p, RLX);
            if (!atomic_compare_exchange_weak_explicit(deq, &p, p + 1, AR, RLX))
                continue;
        } else {
            r->pos = p + 1;
            atomic_store_explicit(deq, p + 1, REL);
        }
        uint8_t flags = atomic_load_explicit(&s->flags, RLX);
        if (flags == SHM_RING_SLOT_FLAG_ABORTED) {
            /* a tombstone: release it ourselves and look further */
            atomic_store_explicit(&s->seq, p + (uint64_t)cap, REL);
            released++;
            continue;
        }
        atomic_store_explicit(&s->holder, r->index, RLX);
        atomic_store_explicit(&s->holder_pos, p, RLX);
        if (flags != 0 || read_meta(r, s, out) != SHM_RING_OK) {
            /* A frame we cannot describe: drop it, keep the ring moving. */
            atomic_store_explicit(&s->seq, p + (uint64_t)cap, REL);
            atomic_fetch_add_explicit(&r->ctrl->dropped, 1, RLX);
            released++;
            rc = SHM_RING_CORRUPT;
            break;
        }
        out->pos = p;
        out->slot = (uint32_t)(p & r->mask);
        out->reserved = 0;
        note_schema(r, out);
        r->held++;
        atomic_store_explicit(&r->me->frames, ++r->frames, RLX);
        rc = (int64_t)out->slot;
        break;
    }
    if (released && someone_waits(r, SHM_RING_WAIT_SPACE))
        out->wake_producers = 1;
    return rc;
}

int64_t shm_ring_acquire_spin(shm_ring_t *r, shm_ring_frame *out, uint64_t spin_ns)
{
    int64_t rc = shm_ring_acquire(r, out);
    if (rc != SHM_RING_EMPTY || spin_ns == 0)
        return rc;
    uint32_t wake = out->wake_producers;
    uint64_t deadline = now_ns();
    if (__builtin_add_overflow(deadline, spin_ns, &deadline))
        deadline = UINT64_MAX;
    for (uint32_t i = 1;; i++) {
        cpu_relax();
        rc = shm_ring_acquire(r, out);
        wake |= out->wake_producers;
        if (rc != SHM_RING_EMPTY || ((i & 63u) == 0 && now_ns() >= deadline)) {
            out->wake_producers = wake;
            return rc;
        }
    }
}

int64_t shm_ring_recv(shm_ring_t *r, shm_ring_frame *out, uint64_t spin_ns)
{
    int64_t rc = shm_ring_acquire_spin(r, out, spin_ns);
    if (rc < 0)
        return rc;
    return rc | (out->schema_changed ? SHM_RING_RECV_SCHEMA : 0) |
           (out->wake_producers ? SHM_RING_RECV_WAKE : 0);
}

int64_t shm_ring_acquire_many(shm_ring_t *r, shm_ring_frame *out, uint64_t max,
                              uint64_t spin_ns)
{
    if (out == NULL || max == 0)
        return SHM_RING_BAD_ARG;
    int64_t rc = shm_ring_acquire_spin(r, &out[0], spin_ns);
    if (rc < 0)
        return rc;
    uint32_t wake = out[0].wake_producers;
    uint64_t n = 1;
    /* A run: consecutive slots (no wrap) of one schema, so Python can view it as one array. */
    while (n < max && out[n - 1].slot < r->mask) {
        rc = acquire_impl(r, &out[n], (int64_t)out[n - 1].slot + 1);
        wake |= out[n].wake_producers;
        if (rc < 0)
            break;
        n++;
    }
    out[0].wake_producers = wake;
    return (int64_t)n;
}

int64_t shm_ring_release_many(shm_ring_t *r, const shm_ring_frame *frames, uint64_t n)
{
    if (frames == NULL)
        return SHM_RING_BAD_ARG;
    int post = 0;
    for (uint64_t i = 0; i < n; i++) {
        int rc = shm_ring_release(r, frames[i].slot, frames[i].pos);
        if (rc < 0)
            return rc;
        post |= rc;
    }
    return post;
}

int shm_ring_release(shm_ring_t *r, uint32_t slot, uint64_t pos)
{
    if (!is_consumer(r) || slot > r->mask || (pos & r->mask) != slot || r->held == 0)
        return SHM_RING_BAD_ARG;
    shm_ring_slot *s = &r->slots[slot];
    /* Held at pos by us: committed at pos and our holder record for this lap.
     * A second release of the same (slot, pos) finds seq moved on. */
    if (atomic_load_explicit(&s->seq, ACQ) != pos + 1 ||
        atomic_load_explicit(&s->holder, RLX) != r->index ||
        atomic_load_explicit(&s->holder_pos, RLX) != pos)
        return SHM_RING_BAD_ARG;
    if (r->debug) {
        uint64_t n = atomic_load_explicit(&s->nbytes, RLX);
        if (n > r->info.slot_bytes)
            n = r->info.slot_bytes;
        memset(r->payload + (uint64_t)slot * r->info.slot_stride, 0xDB, (size_t)n);
    }
    r->held--;
    atomic_store_explicit(&s->seq, pos + r->mask + 1, REL);
    return someone_waits(r, SHM_RING_WAIT_SPACE);
}
