/*
 * shmarray channel core: the ring protocols, ONE_TO_ONE and WORK_QUEUE.
 *
 * D. Vyukov's bounded MPMC queue, one 64-bit sequence per slot.  Positions
 * are 64-bit and never wrap.  Slot i starts at seq = i.
 *   producer at pos p: may claim when seq == p; publishes with seq = p + 1;
 *   consumer at pos p: may take when seq == p + 1; releases with seq = p + cap.
 * ONE_TO_ONE keeps each side's position private (no CAS) and mirrors it into
 * enqueue_pos / dequeue_pos for takeover and introspection; WORK_QUEUE claims
 * and takes positions by CAS on enqueue_pos / dequeue_pos.  An aborted claim
 * in WORK_QUEUE is published as a tombstone (flags = ABORTED) that the next
 * consumer releases itself.
 *
 * Memory-order summary
 *  - seq: producers publish with store-release (p + 1), consumers release with
 *    store-release (p + cap); both sides read it with load-acquire, so payload
 *    and meta written before a store are visible after the matching load.
 *  - enqueue_pos / dequeue_pos: acquire loads, acq_rel CAS (WQ).  The acquire
 *    loads are what make "slot seq ahead of the cursor, cursor unchanged" a
 *    proof of corruption rather than a stale read (see wq_claim / ring_recv).
 *  - the one-instruction window between a cursor CAS and the claimant /
 *    holder record is covered by an intent record: each WORK_QUEUE
 *    participant stores the position it is about to CAS into its entry's
 *    pending_pos first, and recovery also takes a slot whose claim_pos /
 *    holder_pos is not this lap's position when pending_pos equals it.
 */
#define _GNU_SOURCE
#include "chan_impl.h"

/* ------------------------------------------------------------ participants */

static _Atomic uint32_t *owner_word(const shm_chan_t *h, uint32_t role)
{
    return role == SHM_CHAN_ROLE_PRODUCER ? &h->ctrl->producer_owner : &h->ctrl->consumer_owner;
}

static void clear_owner(const shm_chan_t *h, uint32_t role, uint32_t index)
{
    uint32_t expect = index;
    atomic_compare_exchange_strong_explicit(owner_word(h, role), &expect, SHM_CHAN_NO_INDEX, AR,
                                            RLX);
}

/* ONE_TO_ONE producer takeover: enqueue_pos is stored after the seq publish,
 * so a producer killed between the two leaves it one behind.  Skip positions
 * whose slot shows they were published (p + 1: unread, p + cap: released);
 * bounded by cap. */
static uint64_t one_to_one_producer_start(const shm_chan_t *h)
{
    uint64_t cap = h->mask + 1;
    uint64_t e0 = atomic_load_explicit(&h->ctrl->enqueue_pos, ACQ), e = e0;
    for (uint64_t k = 0; k < cap; k++) {
        uint64_t s = atomic_load_explicit(&h->slots[e & h->mask].seq, ACQ);
        if (s != e + 1 && s != e + cap)
            break;
        e++;
    }
    if (e != e0)
        atomic_store_explicit(&h->ctrl->enqueue_pos, e, REL);
    return e;
}

int ring_register(shm_chan_t *h, uint32_t index, uint32_t role, uint32_t pid, uint64_t start)
{
    uint64_t pos = 0;
    if (h->info.mode == SHM_CHAN_MODE_ONE_TO_ONE) {
        uint32_t expect = SHM_CHAN_NO_INDEX;
        if (!atomic_compare_exchange_strong_explicit(owner_word(h, role), &expect, index, AR,
                                                     ACQ)) {
            if (expect >= h->info.max_participants)
                return SHM_CHAN_CORRUPT;
            /* expect == index: a stale word naming us; the caller holds our
             * lock byte, so its previous holder is gone.  Take it over. */
            if (expect != index)
                return SHM_CHAN_BUSY; /* shm_chan_role_owner() names the holder */
        }
        pos = role == SHM_CHAN_ROLE_PRODUCER ? one_to_one_producer_start(h)
                                             : atomic_load_explicit(&h->ctrl->dequeue_pos, ACQ);
    }
    chan_init_entry(h, h->me, role, pid, start);
    atomic_store_explicit(&h->me->state, SHM_CHAN_ACTIVE, SC);
    h->pos = pos;
    return SHM_CHAN_OK;
}

/* Release consumed-but-unreleased slots held by participant `index`.
 * strict: only slots whose holder record names (index, pos).  Otherwise also
 * the slot a consumer took by CAS but died before recording (holder_pos not
 * this lap, and the entry's pending_pos == pos), and in ONE_TO_ONE every
 * consumed-unreleased slot (there is only one consumer).  Returns the number
 * of slots released; *dropped counts real frames among them. */
static uint32_t release_holds(shm_chan_t *h, uint32_t index, int strict, uint64_t *dropped)
{
    uint64_t cap = h->mask + 1;
    uint64_t dq = atomic_load_explicit(&h->ctrl->dequeue_pos, ACQ);
    uint64_t pend = atomic_load_explicit(&h->parts[index].pending_pos, RLX);
    int any = !strict && h->info.mode == SHM_CHAN_MODE_ONE_TO_ONE;
    uint32_t n = 0;
    for (uint64_t i = 0; i < cap; i++) {
        shm_chan_slot *s = &h->slots[i];
        uint64_t seq = atomic_load_explicit(&s->seq, ACQ);
        uint64_t p = seq - 1;
        if (seq == 0 || (p & h->mask) != i || p >= dq || dq - p > cap)
            continue; /* not "committed at p and consumed" */
        if (!any) {
            uint32_t hd = atomic_load_explicit(&s->holder, RLX);
            uint64_t hp = atomic_load_explicit(&s->holder_pos, RLX);
            int recorded = hd == index && hp == p;
            int unrecorded = !strict && hp != p && pend == p;
            if (!recorded && !unrecorded)
                continue;
        }
        uint8_t flags = atomic_load_explicit(&s->flags, RLX);
        uint64_t expect = seq;
        if (atomic_compare_exchange_strong_explicit(&s->seq, &expect, p + cap, REL, RLX)) {
            n++;
            if (!(flags & SHM_CHAN_SLOT_FLAG_ABORTED))
                (*dropped)++;
        }
    }
    return n;
}

/* WORK_QUEUE: tombstone every slot participant `index` claimed and never
 * published (seq == p with p < enqueue_pos), including one claimed by CAS but
 * not yet recorded (claim_pos not this lap, pending_pos == p).  Returns the
 * number of tombstones published. */
static uint32_t tombstone_claims(shm_chan_t *h, uint32_t index)
{
    uint64_t cap = h->mask + 1;
    uint64_t eq = atomic_load_explicit(&h->ctrl->enqueue_pos, ACQ);
    uint64_t pend = atomic_load_explicit(&h->parts[index].pending_pos, RLX);
    uint32_t n = 0;
    for (uint64_t i = 0; i < cap; i++) {
        shm_chan_slot *s = &h->slots[i];
        uint64_t p = atomic_load_explicit(&s->seq, ACQ);
        if ((p & h->mask) != i || p >= eq || eq - p > cap)
            continue; /* not "claimed at p, unpublished" */
        uint32_t c = atomic_load_explicit(&s->claimant, RLX);
        uint64_t cp = atomic_load_explicit(&s->claim_pos, RLX);
        if (!(c == index && cp == p) && !(cp != p && pend == p))
            continue;
        atomic_store_explicit(&s->flags, SHM_CHAN_SLOT_FLAG_ABORTED, RLX);
        atomic_store_explicit(&s->nbytes, 0, RLX);
        atomic_store_explicit(&s->ndim, 0, RLX);
        atomic_store_explicit(&s->dtype, 0, RLX);
        uint64_t expect = p;
        if (atomic_compare_exchange_strong_explicit(&s->seq, &expect, p + 1, REL, RLX))
            n++;
    }
    return n;
}

/* Drops this handle's outstanding claim.  Returns 1 if a tombstone was
 * published (WQ), else 0. */
static int drop_claim(shm_chan_t *h)
{
    if (!h->claimed)
        return 0;
    h->claimed = 0;
    if (!is_wq(h))
        return 0; /* ONE_TO_ONE: never published, the slot is simply reused */
    shm_chan_slot *s = &h->slots[h->claim_slot];
    atomic_store_explicit(&s->flags, SHM_CHAN_SLOT_FLAG_ABORTED, RLX);
    atomic_store_explicit(&s->nbytes, 0, RLX);
    atomic_store_explicit(&s->ndim, 0, RLX);
    atomic_store_explicit(&s->dtype, 0, RLX);
    atomic_store_explicit(&s->seq, h->claim_pos + 1, REL);
    return 1;
}

void ring_unregister(shm_chan_t *h)
{
    uint32_t final = SHM_CHAN_FREE;
    if (h->role == SHM_CHAN_ROLE_PRODUCER) {
        if (drop_claim(h))
            chan_wake(h, SHM_CHAN_WAIT_DATA, 1);
        if (h->ended)
            final = SHM_CHAN_ENDED_STATE;
    } else if (h->held) {
        uint64_t dropped = 0;
        uint32_t released = release_holds(h, h->index, 1, &dropped);
        if (dropped)
            atomic_fetch_add_explicit(&h->ctrl->dropped, dropped, RLX);
        if (released)
            chan_wake(h, SHM_CHAN_WAIT_SPACE, 0);
    }
    if (h->info.mode == SHM_CHAN_MODE_ONE_TO_ONE)
        clear_owner(h, h->role, h->index);
    atomic_store_explicit(&h->me->pending_pos, NO_POS, RLX);
    atomic_store_explicit(&h->me->state, final, SC);
}

int ring_recover(shm_chan_t *h, uint32_t index, uint64_t *dropped)
{
    shm_chan_part *e = &h->parts[index];
    uint32_t st = atomic_load_explicit(&e->state, ACQ);
    uint32_t role = atomic_load_explicit(&e->role, RLX);
    int o2o = h->info.mode == SHM_CHAN_MODE_ONE_TO_ONE;
    uint32_t tombs = 0, released = 0;
    int changed = 0;
    if (st == SHM_CHAN_JOINING)
        return SHM_CHAN_CORRUPT; /* ring participants never join */
    if (st == SHM_CHAN_ACTIVE) {
        if (role == SHM_CHAN_ROLE_CONSUMER) {
            /* In 1:1 only the owner consumer can hold slots; a stale ACTIVE
             * entry that never won the owner word must not release the
             * owner's frames. */
            if (!o2o || atomic_load_explicit(&h->ctrl->consumer_owner, ACQ) == index)
                released = release_holds(h, index, 0, dropped);
            if (*dropped) {
                atomic_fetch_add_explicit(&h->ctrl->dropped, *dropped, RLX);
                atomic_store_explicit(&e->dropped, *dropped, RLX);
            }
        } else if (role == SHM_CHAN_ROLE_PRODUCER) {
            if (!o2o)
                tombs = tombstone_claims(h, index);
        } else {
            return SHM_CHAN_CORRUPT;
        }
        /* DEAD, not FREE: a waiting peer can tell "my peers died" from "nobody
         * came" (register reuses DEAD entries).  CAS so that an entry taken
         * meanwhile is never overwritten. */
        uint32_t expect = SHM_CHAN_ACTIVE;
        atomic_store_explicit(&e->pending_pos, NO_POS, RLX);
        changed = atomic_compare_exchange_strong_explicit(&e->state, &expect, SHM_CHAN_DEAD, SC,
                                                          RLX);
        if (changed)
            chan_clear_doorbells(h, e); /* nobody reads its FIFO any more */
    }
    if (o2o) {
        clear_owner(h, SHM_CHAN_ROLE_PRODUCER, index);
        clear_owner(h, SHM_CHAN_ROLE_CONSUMER, index);
    }
    if (tombs)
        chan_wake(h, SHM_CHAN_WAIT_DATA, 0);
    if (released)
        chan_wake(h, SHM_CHAN_WAIT_SPACE, 0);
    return changed;
}

/* ---------------------------------------------------------------- producer */

static int64_t wq_claim(shm_chan_t *h)
{
    const int64_t cap = (int64_t)h->mask + 1;
    _Atomic uint64_t *enq = &h->ctrl->enqueue_pos;
    for (uint32_t tries = 0; tries < RETRY_CAP; tries++) {
        uint64_t p = atomic_load_explicit(enq, ACQ);
        shm_chan_slot *s = &h->slots[p & h->mask];
        uint64_t seq = atomic_load_explicit(&s->seq, ACQ);
        int64_t d = (int64_t)(seq - p);
        if (d == 0) {
            /* Intent record first, so a producer killed between the CAS and
             * the claimant store below is still recoverable. */
            atomic_store_explicit(&h->me->pending_pos, p, RLX);
            if (atomic_compare_exchange_weak_explicit(enq, &p, p + 1, AR, RLX)) {
                atomic_store_explicit(&s->claimant, h->index, RLX);
                atomic_store_explicit(&s->claim_pos, p, RLX);
                h->claimed = 1;
                h->claim_pos = p;
                h->claim_slot = (uint32_t)(p & h->mask);
                return (int64_t)h->claim_slot;
            }
        } else if (d < 0) {
            /* Legit: seq == p - cap (claimed last lap) or p - cap + 1 (unreleased). */
            return d < -cap ? SHM_CHAN_CORRUPT : SHM_CHAN_FULL;
        } else if (atomic_load_explicit(enq, ACQ) == p) {
            /* seq > p is only written after someone moved enqueue_pos past p,
             * and our acquire load of seq makes that move visible: a cursor
             * still at p means the region lies. */
            return SHM_CHAN_CORRUPT;
        }
    }
    return SHM_CHAN_BUSY;
}

int64_t ring_claim(shm_chan_t *h)
{
    if (is_wq(h))
        return wq_claim(h);
    uint64_t p = h->pos;
    uint64_t seq = atomic_load_explicit(&h->slots[p & h->mask].seq, ACQ);
    int64_t d = (int64_t)(seq - p);
    if (d == 0) {
        h->claimed = 1;
        h->claim_pos = p;
        h->claim_slot = (uint32_t)(p & h->mask);
        return (int64_t)h->claim_slot;
    }
    /* Only p - cap + 1 (unreleased) is legit for a single producer; seq ahead
     * of our private position means someone else wrote it. */
    return (d < 0 && d >= -(int64_t)(h->mask + 1)) ? SHM_CHAN_FULL : SHM_CHAN_CORRUPT;
}

void ring_publish(shm_chan_t *h, uint64_t tag)
{
    shm_chan_slot *s = &h->slots[h->claim_slot];
    uint64_t p = h->claim_pos;
    chan_stamp_meta(h, s, tag);
    atomic_store_explicit(&s->seq, p + 1, REL);
    h->claimed = 0;
    if (!is_wq(h)) {
        h->pos = p + 1;
        atomic_store_explicit(&h->ctrl->enqueue_pos, p + 1, REL);
    }
}

int ring_abort(shm_chan_t *h) { return drop_claim(h); }

/* ---------------------------------------------------------------- consumer */

/* Does the committed frame in slot s have the dtype and shape preset in
 * `want`? (a peek before taking the position: recv_many's runs never mix
 * schemas) */
static int same_schema(const shm_chan_slot *s, const shm_chan_frame *want)
{
    if (atomic_load_explicit(&s->dtype, RLX) != want->dtype ||
        atomic_load_explicit(&s->ndim, RLX) != want->ndim)
        return 0;
    for (uint32_t k = 0; k < want->ndim && k < SHM_CHAN_MAX_NDIM; k++)
        if (atomic_load_explicit(&s->shape[k], RLX) != want->shape[k])
            return 0;
    return 1;
}

/* One try at the next frame (see shm_chan_recv).  want_slot >= 0 (recv_many):
 * take it only if it lies in that slot and has the schema preset in *out,
 * else EMPTY with nothing taken. */
int64_t ring_recv(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len,
                  int64_t want_slot)
{
    const int64_t cap = (int64_t)h->mask + 1;
    const int wq = is_wq(h);
    _Atomic uint64_t *deq = &h->ctrl->dequeue_pos;
    uint32_t released = 0;
    int eos_seen = 0;
    int64_t rc = SHM_CHAN_BUSY;
    for (uint32_t tries = 0; tries < RETRY_CAP; tries++) {
        uint64_t p = wq ? atomic_load_explicit(deq, ACQ) : h->pos;
        shm_chan_slot *s = &h->slots[p & h->mask];
        uint64_t seq = atomic_load_explicit(&s->seq, ACQ);
        int64_t d = (int64_t)(seq - (p + 1));
        if (d < 0) {
            /* Legit: seq == p (free or claimed) or p - cap + 1 (last lap held). */
            if (d < -cap) {
                rc = SHM_CHAN_CORRUPT;
                break;
            }
            /* Empty.  End of stream is set after every commit of every
             * producer (release), so once we see it, one more look is final. */
            if (!eos_seen && eos_set(h)) {
                eos_seen = 1;
                continue;
            }
            rc = eos_seen ? SHM_CHAN_ENDED : SHM_CHAN_EMPTY;
            /* We hold the frame of the last lap in the slot the next one needs: no
             * producer can publish it until we release, so waiting would never end. */
            if (rc == SHM_CHAN_EMPTY && h->held && held_get(h, p))
                rc = SHM_CHAN_LIMIT;
            break;
        }
        if (d > 0) {
            /* Someone took and released p already; in WQ reload the cursor,
             * which must have moved (see wq_claim). */
            if (wq && atomic_load_explicit(deq, ACQ) != p)
                continue;
            rc = SHM_CHAN_CORRUPT;
            break;
        }
        /* seq == p + 1: committed at p. */
        if (want_slot >= 0 && ((int64_t)(p & h->mask) != want_slot || !same_schema(s, out))) {
            rc = SHM_CHAN_EMPTY; /* the run ends here; nothing taken */
            break;
        }
        if (dst != NULL && atomic_load_explicit(&s->flags, RLX) == 0) {
            /* a copy that cannot fit takes nothing (the frame stays for a bigger buffer) */
            shm_chan_frame peek;
            if (chan_read_meta(h, s, &peek) == 0 && peek.nbytes != dst_len) {
                *out = peek;
                out->pos = p;
                out->slot = (uint32_t)(p & h->mask);
                rc = SHM_CHAN_RESIZE;
                break;
            }
        }
        /* Take position p. */
        if (wq) {
            atomic_store_explicit(&h->me->pending_pos, p, RLX);
            if (!atomic_compare_exchange_weak_explicit(deq, &p, p + 1, AR, RLX))
                continue;
        } else {
            h->pos = p + 1;
            atomic_store_explicit(deq, p + 1, REL);
        }
        uint8_t flags = atomic_load_explicit(&s->flags, RLX);
        if (flags == SHM_CHAN_SLOT_FLAG_ABORTED) {
            /* a tombstone: release it ourselves and look further */
            atomic_store_explicit(&s->seq, p + (uint64_t)cap, REL);
            released++;
            continue;
        }
        atomic_store_explicit(&s->holder, h->index, RLX);
        atomic_store_explicit(&s->holder_pos, p, RLX);
        if (flags != 0 || chan_read_meta(h, s, out) != 0 ||
            (dst != NULL && out->nbytes != dst_len)) {
            /* A frame we cannot describe: drop it, keep the ring moving. */
            atomic_store_explicit(&s->seq, p + (uint64_t)cap, REL);
            atomic_fetch_add_explicit(&h->ctrl->dropped, 1, RLX);
            released++;
            rc = SHM_CHAN_CORRUPT;
            break;
        }
        out->pos = p;
        out->slot = (uint32_t)(p & h->mask);
        out->gen = h->gen;
        count_frame(h, out->nbytes);
        h->received++;
        if (dst != NULL) {
            if (out->nbytes)
                memcpy(dst, slot_payload(h, out->slot), (size_t)out->nbytes);
            if (h->debug)
                chan_poison(h, out->slot);
            atomic_store_explicit(&s->seq, p + (uint64_t)cap, REL);
            released++;
        } else {
            held_set(h, p);
            out->held = 1;
        }
        rc = (int64_t)out->slot;
        break;
    }
    if (released)
        chan_wake(h, SHM_CHAN_WAIT_SPACE, wq ? 0 : released);
    return rc;
}

int ring_release(shm_chan_t *h, uint64_t pos)
{
    uint64_t slot = pos & h->mask;
    if (!held_get(h, pos))
        return SHM_CHAN_STALE; /* released already (or never ours) */
    shm_chan_slot *s = &h->slots[slot];
    uint64_t seq = atomic_load_explicit(&s->seq, ACQ);
    uint32_t holder = atomic_load_explicit(&s->holder, RLX);
    uint64_t hp = atomic_load_explicit(&s->holder_pos, RLX);
    if (holder == h->index && hp != pos && seq == hp + 1)
        return SHM_CHAN_STALE; /* we hold this slot at another position */
    /* Held at pos by us: committed at pos and our holder record for this lap.
     * Anything else means another process overwrote the slot under our hold. */
    if (seq != pos + 1 || holder != h->index || hp != pos) {
        held_clear(h, pos); /* nothing of ours is left there to give back */
        return SHM_CHAN_CORRUPT;
    }
    if (h->debug)
        chan_poison(h, slot);
    held_clear(h, pos);
    atomic_store_explicit(&s->seq, pos + h->mask + 1, REL);
    /* Work queue: wake every producer.  A released slot is not always the one the next
     * claim needs (releases come out of order), so a single woken producer may find nothing
     * and sleep again, and the wake would be lost to the others. */
    chan_wake(h, SHM_CHAN_WAIT_SPACE, is_wq(h) ? 0 : 1);
    return SHM_CHAN_OK;
}
