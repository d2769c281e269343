/*
 * shmarray channel core: the broadcast protocol.  One producer (participant
 * entry 0), subscribers in entries 1.., every subscriber sees every frame
 * (the Disruptor's multicast, RING.md §1, §3.2).
 *
 * Positions are 64-bit and never wrap; frame p lives in slot p & (cap - 1).
 * The producer owns the head (enqueue_pos: the next position to publish);
 * each subscriber owns a cursor in its entry (every position below it has
 * been released by that subscriber).  A slot's seq is p + 1 once frame p is
 * committed there.
 *
 *   policy BLOCK: the producer writes position w only when w - capacity is
 *     below the cursor of every JOINING or ACTIVE subscriber (a cached
 *     minimum, rescanned when the cache says full or a subscriber joined).
 *     Views stay intact until released.
 *   policy DROP: the producer never waits.  seq is a seqlock: the producer
 *     stores WRITING | (w + 1) before it touches slot w and w + 1 after; a
 *     reader checks seq before and after reading (or copying) the frame.  A
 *     subscriber that was lapped skips to head - capacity + 1 (the oldest
 *     frame that cannot be under rewrite) and counts what it skipped as lost.
 *
 * Joining (both policies): the joiner stores a provisional cursor, then state
 * JOINING (seq_cst), bumps `gen` (seq_cst), and only then reads the head.  The
 * producer reloads `gen` after the seq_cst fence that follows every publish
 * and rescans the cursors when it moved.  So either the producer sees the
 * joiner before it overwrites anything the joiner may start from, or the
 * joiner reads a head recent enough that its start frame (the newest one,
 * head - 1; frame 0 before the first publish) is not overwritten: no frame a
 * BLOCK subscriber is owed is lost.
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
 *  - join vs. the producer's cached gate: Dekker over `gen` and the head (one
 *    of the two sees the other), sharing the publish's seq_cst fence with the
 *    eventcount.
 */
#define _GNU_SOURCE
#include "chan_impl.h"

#define WRITING SHM_CHAN_WRITING

static inline shm_chan_part *producer_entry(const shm_chan_t *h)
{
    return &h->parts[SHM_CHAN_BCAST_PRODUCER];
}

/* Copies a frame out of a slot the producer may be rewriting (DROP).  The
 * result is used only if seq is unchanged afterwards.  Under TSan the copy
 * is uninstrumented: the race is the seqlock's design, detected and
 * discarded, not a bug. */
#ifdef CHAN_TSAN
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

/* ------------------------------------------------------------ participants */

static void producer_resume(shm_chan_t *h)
{
    /* A producer killed between its seq publish and its head store leaves the
     * head one behind a committed frame: skip what the slots show was
     * published (bounded by capacity). */
    shm_chan_ctrl *c = h->ctrl;
    uint64_t h0 = atomic_load_explicit(&c->enqueue_pos, ACQ), hd = h0;
    for (uint64_t k = 0; k <= h->mask; k++) {
        if (atomic_load_explicit(&h->slots[hd & h->mask].seq, ACQ) != hd + 1)
            break;
        hd++;
    }
    if (hd != h0)
        atomic_store_explicit(&c->enqueue_pos, hd, REL);
    h->pos = hd;
}

static void subscriber_join(shm_chan_t *h, uint32_t pid, uint64_t start_time)
{
    shm_chan_ctrl *c = h->ctrl;
    shm_chan_part *e = h->me;
    uint64_t h1 = atomic_load_explicit(&c->enqueue_pos, ACQ);
    uint64_t prov = h1 ? h1 - 1 : 0;
    atomic_store_explicit(&e->cursor, prov, RLX);
    atomic_store_explicit(&e->join_pos, prov, RLX);
    chan_init_entry(h, e, SHM_CHAN_ROLE_CONSUMER, pid, start_time);
    /* Counted in the producer's minimum before we read where to start. */
    atomic_store_explicit(&e->state, SHM_CHAN_JOINING, SC);
    atomic_fetch_add_explicit(&c->gen, 1, SC);
    uint64_t h2 = atomic_load_explicit(&c->enqueue_pos, SC);
    uint64_t start = h2 ? h2 - 1 : 0;
    if (start < prov) /* the head went backwards: only a hostile peer does that */
        start = prov;
    atomic_store_explicit(&e->join_pos, start, RLX);
    atomic_store_explicit(&e->cursor, start, REL);
    atomic_store_explicit(&e->state, SHM_CHAN_ACTIVE, SC);
    atomic_fetch_add_explicit(&c->joins, 1, RLX);
    h->next = h->cursor = h->join_pos = start;
    h->received = h->lost = h->skipped = 0;
    chan_wake(h, SHM_CHAN_WAIT_SPACE, 0); /* the producer may wait on our provisional cursor */
}

int bcast_register(shm_chan_t *h, uint32_t index, uint32_t role, uint32_t pid, uint64_t start)
{
    (void)index; /* checked by the caller: 0 for the producer, 1.. for subscribers */
    if (role == SHM_CHAN_ROLE_CONSUMER) {
        subscriber_join(h, pid, start);
        return SHM_CHAN_OK;
    }
    producer_resume(h);
    chan_init_entry(h, h->me, role, pid, start);
    atomic_store_explicit(&h->me->state, SHM_CHAN_ACTIVE, SC);
    atomic_thread_fence(SC);
    h->gen_seen = atomic_load_explicit(&h->ctrl->gen, ACQ);
    h->gen_gate = h->gen_seen - 1; /* the first claim scans the cursors */
    h->gate = 0;
    return SHM_CHAN_OK;
}

void bcast_unregister(shm_chan_t *h)
{
    if (h->role == SHM_CHAN_ROLE_PRODUCER) {
        h->claimed = 0; /* an unpublished claim is simply never seen */
        atomic_store_explicit(&h->me->state, h->ended ? SHM_CHAN_ENDED_STATE : SHM_CHAN_FREE, SC);
        return;
    }
    uint32_t expect = SHM_CHAN_ACTIVE;
    /* CAS: never overwrite an entry that was (wrongly) taken from us */
    atomic_compare_exchange_strong_explicit(&h->me->state, &expect, SHM_CHAN_FREE, SC, RLX);
    chan_wake(h, SHM_CHAN_WAIT_SPACE, 0); /* we may have gated the producer */
}

int bcast_recover(shm_chan_t *h, uint32_t index)
{
    shm_chan_part *e = &h->parts[index];
    uint32_t st = atomic_load_explicit(&e->state, ACQ);
    if (index == SHM_CHAN_BCAST_PRODUCER) {
        if (st != SHM_CHAN_ACTIVE)
            return 0;
        /* DEAD: subscribers drain what it committed, then report its death */
        if (!atomic_compare_exchange_strong_explicit(&e->state, &st, SHM_CHAN_DEAD, SC, RLX))
            return 0;
        chan_clear_doorbells(h, e); /* nobody reads its FIFO any more */
        return 1;
    }
    if (st != SHM_CHAN_JOINING && st != SHM_CHAN_ACTIVE)
        return 0;
    if (!atomic_compare_exchange_strong_explicit(&e->state, &st, SHM_CHAN_FREE, SC, RLX))
        return 0;
    /* evicted: it stops gating the producer and its holds are void */
    chan_clear_doorbells(h, e);
    atomic_fetch_add_explicit(&h->ctrl->evicted, 1, RLX);
    chan_wake(h, SHM_CHAN_WAIT_SPACE, 0);
    return 1;
}

/* ---------------------------------------------------------------- producer */

/* BLOCK: recompute the minimum cursor of the gating subscribers.  OK when
 * position head may be written, FULL when a subscriber still holds
 * head - capacity, CORRUPT for an entry no protocol step can produce. */
static int rescan(shm_chan_t *h)
{
    const uint64_t cap = h->mask + 1, w = h->pos;
    uint64_t m = w;
    /* acquire: a join whose gen bump we read has its state and cursor visible */
    uint32_t g = atomic_load_explicit(&h->ctrl->gen, ACQ);
    for (uint32_t i = 1; i < h->info.max_participants; i++) {
        shm_chan_part *e = &h->parts[i];
        uint32_t st = atomic_load_explicit(&e->state, ACQ);
        if (st == SHM_CHAN_FREE || st == SHM_CHAN_ENDED_STATE || st == SHM_CHAN_DEAD)
            continue;
        if (st != SHM_CHAN_JOINING && st != SHM_CHAN_ACTIVE)
            return SHM_CHAN_CORRUPT;
        uint64_t c = atomic_load_explicit(&e->cursor, ACQ);
        if (c > w || w - c > cap) {
            /* An ACTIVE cursor is always within [head - cap, head].  A
             * JOINING one is provisional: gate fully until it settles. */
            if (st == SHM_CHAN_ACTIVE)
                return SHM_CHAN_CORRUPT;
            c = w >= cap ? w - cap : 0;
        }
        if (c < m)
            m = c;
    }
    h->gate = m;
    h->gen_gate = g;
    return w - m >= cap ? SHM_CHAN_FULL : SHM_CHAN_OK;
}

int64_t bcast_claim(shm_chan_t *h)
{
    const uint64_t w = h->pos;
    shm_chan_slot *s = &h->slots[w & h->mask];
    if (!h->drop) {
        if (h->gen_seen != h->gen_gate || w - h->gate > h->mask) {
            int rc = rescan(h);
            if (rc != SHM_CHAN_OK)
                return rc;
        }
    } else {
        /* Release: a reader that sees WRITING also sees head >= w (it skips
         * from there).  The fence keeps the payload writes after this store. */
        atomic_store_explicit(&s->seq, WRITING | (w + 1), REL);
        atomic_thread_fence(REL);
    }
    h->claimed = 1;
    h->claim_pos = w;
    h->claim_slot = (uint32_t)(w & h->mask);
    return (int64_t)h->claim_slot;
}

void bcast_publish(shm_chan_t *h, uint64_t tag)
{
    shm_chan_slot *s = &h->slots[h->claim_slot];
    const uint64_t w = h->pos;
    chan_stamp_meta(h, s, tag);
    atomic_store_explicit(&s->seq, w + 1, REL);
    h->pos = w + 1;
    atomic_store_explicit(&h->ctrl->enqueue_pos, w + 1, REL);
    h->claimed = 0;
    /* chan_wake's seq_cst fence serves both Dekker pairs: sleepers, then joiners. */
    chan_wake(h, SHM_CHAN_WAIT_DATA, 0);
    if (!h->drop)
        h->gen_seen = atomic_load_explicit(&h->ctrl->gen, RLX);
}

/* ------------------------------------------------------------- subscribers */

/* Publishes our cursor (BLOCK: it gates the producer). */
static void set_cursor(shm_chan_t *h, uint64_t c)
{
    h->cursor = c;
    atomic_store_explicit(&h->me->cursor, c, REL);
    if (!h->drop)
        chan_wake(h, SHM_CHAN_WAIT_SPACE, 1);
}

/* Position p was read (or skipped) without being held: move on past it. */
static void pass(shm_chan_t *h, uint64_t p)
{
    h->next = p + 1;
    if (h->drop || h->held == 0)
        set_cursor(h, h->next);
}

static void count_lost(shm_chan_t *h, shm_chan_frame *out, uint64_t n)
{
    out->lost += n;
    h->lost += n;
    atomic_store_explicit(&h->me->lost, h->lost, RLX);
}

/* DROP: the producer lapped us at p; skip to the oldest frame that cannot be
 * under rewrite (head - capacity + 1) and count what we lost. */
static void skip_lapped(shm_chan_t *h, shm_chan_frame *out, uint64_t p)
{
    const uint64_t cap = h->mask + 1;
    uint64_t hd = atomic_load_explicit(&h->ctrl->enqueue_pos, ACQ);
    uint64_t np = p + 1;
    if (hd >= cap && hd - cap + 1 > np)
        np = hd - cap + 1;
    count_lost(h, out, np - p);
    h->next = np;
    set_cursor(h, np);
}

/* One look at position next (and the frames after it when lapped). */
int64_t bcast_recv(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len)
{
    const int64_t cap = (int64_t)h->mask + 1;
    int eos_seen = 0;
    for (uint32_t tries = 0; tries < RETRY_CAP; tries++) {
        const uint64_t p = h->next;
        shm_chan_slot *s = &h->slots[p & h->mask];
        const uint64_t s1 = atomic_load_explicit(&s->seq, ACQ);
        const int64_t d = (int64_t)((s1 & ~WRITING) - (p + 1));
        if (!h->drop && ((s1 & WRITING) || d > 0))
            return SHM_CHAN_CORRUPT; /* BLOCK: never marked, and nobody may lap us */
        if (d > 0) {
            skip_lapped(h, out, p);
            continue;
        }
        if (d < 0 || (s1 & WRITING)) {
            /* Not committed at p yet.  Legit: the slot holds p - cap, or is
             * being written (DROP) for p. */
            if (d < -cap)
                return SHM_CHAN_CORRUPT;
            /* end of stream is set after the last publish (release): once we
             * see it, one more look at the slot is final. */
            if (!eos_seen && eos_set(h)) {
                eos_seen = 1;
                continue;
            }
            return eos_seen ? SHM_CHAN_ENDED : SHM_CHAN_EMPTY;
        }
        /* seq == p + 1: frame p is (or was, under DROP) in the slot.  BLOCK:
         * the producer cannot publish capacity frames past our cursor (this
         * also bounds release's scan and keeps held bits from aliasing). */
        if (!h->drop && p - h->cursor > h->mask)
            return SHM_CHAN_CORRUPT;
        int bad = chan_read_meta(h, s, out);
        if (h->drop && (dst == NULL || bad || out->nbytes != dst_len)) {
            atomic_thread_fence(ACQ);
            if (atomic_load_explicit(&s->seq, RLX) != s1) {
                skip_lapped(h, out, p);
                continue;
            }
        }
        if (bad) {
            /* A frame we cannot describe: skip it, count it, keep moving. */
            count_lost(h, out, 1);
            pass(h, p);
            return SHM_CHAN_CORRUPT;
        }
        out->pos = p;
        out->slot = (uint32_t)(p & h->mask);
        out->gen = h->gen;
        if (dst != NULL) {
            if (out->nbytes != dst_len)
                return SHM_CHAN_RESIZE;
            const unsigned char *src = slot_payload(h, out->slot);
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
            held_set(h, p);
            out->held = 1;
            h->next = p + 1; /* the cursor stays at the lowest held frame */
        }
        count_frame(h, out->nbytes);
        h->received++;
        return (int64_t)out->slot;
    }
    return SHM_CHAN_BUSY;
}

int bcast_skip_to_newest(shm_chan_t *h, shm_chan_frame *out)
{
    uint64_t hd = atomic_load_explicit(&h->ctrl->enqueue_pos, ACQ);
    if (hd <= h->next + 1)
        return SHM_CHAN_OK;
    /* BLOCK: our cursor gates the producer, so head - cursor <= capacity. */
    if (!h->drop && hd - h->cursor > h->mask + 1)
        return SHM_CHAN_CORRUPT;
    uint64_t n = hd - 1, k = n - h->next;
    out->skipped = k;
    h->skipped += k;
    atomic_store_explicit(&h->me->skipped, h->skipped, RLX);
    h->next = n;
    if (h->drop || h->held == 0)
        set_cursor(h, n);
    return SHM_CHAN_OK;
}

int bcast_release(shm_chan_t *h, uint64_t pos)
{
    if (h->drop)
        return SHM_CHAN_STALE; /* an optimistic view holds nothing */
    if (pos >= h->next || pos < h->cursor || h->held == 0 || !held_get(h, pos))
        return SHM_CHAN_STALE; /* not held by us (a double release included) */
    held_clear(h, pos); /* (never poisoned: other subscribers may still read it) */
    if (pos == h->cursor) {
        uint64_t c = pos + 1;
        while (c < h->next && !held_get(h, c)) /* bounded: next - cursor <= capacity */
            c++;
        set_cursor(h, c);
    }
    return SHM_CHAN_OK;
}
