/*
 * shmarray channel core: one lock-free ring of fixed-size slots over a memory
 * block it is handed (a shared mapping), for every channel mode.  No malloc,
 * no locks, no Python.
 *
 * Modes (one layout, one participant table, one wait mechanism; they differ
 * only in the protocol that moves the cursors):
 *   ONE_TO_ONE  one producer, one consumer: Vyukov sequences, private cursors
 *               (no CAS on the hot path), ring.c.
 *   WORK_QUEUE  many producers, many consumers, each frame to exactly one
 *               consumer: D. Vyukov's bounded MPMC queue (CAS on the cursors),
 *               ring.c.
 *   BROADCAST   one producer, many subscribers, each sees every frame (the
 *               Disruptor's multicast), policy BLOCK (the producer waits for
 *               the slowest live subscriber) or DROP (it never waits; the slot
 *               sequence is a seqlock), bcast.c.
 *
 * Every shared word is untrusted: it is loaded once into a local, checked,
 * and only the local copy is used.  A corrupt or hostile region makes calls
 * return SHM_CHAN_CORRUPT; it never makes them read or write outside
 * [base, base + len) or loop without bound.
 *
 * Leases.  A handle keeps its own record of what it holds, in private memory:
 * the frames it acquired (a bit per slot) and its outstanding claim, each
 * stamped with the handle's registration generation `gen`.  release / commit
 * / abort take the position and the generation they were handed, so a
 * second release, or one of a frame from an earlier registration, is STALE
 * (a no-op), never a corruption and never someone else's slot.  This is what
 * lets the Python layer tie a frame's release to the lifetime of its views
 * (csrc/lease.c).
 *
 * Waiting is an eventcount over a futex word in the segment, per direction
 * (data: consumers wait; space: producers wait), waited inside the C call.  A
 * waiter snapshots the epoch, counts itself in (seq_cst), re-checks, then
 * sleeps on the snapshot; the other side, after its store-release and a
 * seq_cst fence, bumps the epoch and wakes only when the count is non-zero
 * (RING.md §3.4, §3.5).  A waiter may instead announce an fd doorbell (a FIFO
 * it polls from an event loop): the poster then consumes the announcement and
 * writes one byte to it (one-shot, as a futex wake).
 *
 * Liveness is the caller's business: Python holds an open-file-description
 * lock on byte SHM_CHAN_LOCK_PART0 + index of the segment file while it owns
 * participant entry `index`, and one on a byte of the opener range while a
 * handle is open.  register / recover assume the caller holds that lock.
 *
 * The ABI (public structs and prototypes, mirrored in chan.cdef) and the
 * byte layout (the layout structs below) are versioned separately.
 */
#ifndef SHMARRAY_CHAN_H
#define SHMARRAY_CHAN_H

#include <stdatomic.h>
#include <stdint.h>

#define SHM_CHAN_ABI_VERSION 2
#define SHM_CHAN_LAYOUT_VERSION 2

/* ---- status codes (0 or negative; hot-path calls return >= 0 on success) */
#define SHM_CHAN_OK 0
#define SHM_CHAN_EMPTY -1     /* nothing to read now */
#define SHM_CHAN_FULL -2      /* no free slot now */
#define SHM_CHAN_CORRUPT -3   /* the shared region is inconsistent */
#define SHM_CHAN_TOO_LARGE -4 /* frame larger than slot_bytes, or size overflow */
#define SHM_CHAN_BAD_ARG -5   /* caller error (wrong role, call out of sequence...) */
#define SHM_CHAN_ENDED -6     /* end of stream: drained, or this producer ended */
#define SHM_CHAN_BUSY -7      /* entry / role taken, or retries exhausted (a hostile peer) */
#define SHM_CHAN_LIMIT -8     /* a consumer holds capacity - 1 frames, or the one the next needs */
#define SHM_CHAN_RESIZE -9    /* copy: the frame does not fit dst; *out has its meta, nothing taken */
#define SHM_CHAN_TIMEOUT -10  /* sleep: the timeout passed */
#define SHM_CHAN_INTR -11     /* sleep: interrupted by a signal */
#define SHM_CHAN_STALE -12    /* release/commit/abort of something this registration no longer holds */

/* ---- modes, policies */
#define SHM_CHAN_MODE_ONE_TO_ONE 1
#define SHM_CHAN_MODE_WORK_QUEUE 2
#define SHM_CHAN_MODE_BROADCAST 3
#define SHM_CHAN_POLICY_BLOCK 1
#define SHM_CHAN_POLICY_DROP 2 /* broadcast only */

/* ---- participant states and roles */
#define SHM_CHAN_FREE 0    /* never used, or left cleanly */
#define SHM_CHAN_JOINING 1 /* broadcast subscriber joining: gates the producer, cursor provisional */
#define SHM_CHAN_ACTIVE 2
#define SHM_CHAN_ENDED_STATE 3 /* a producer that called end() */
#define SHM_CHAN_DEAD 4        /* recovered after dying (so its peers can tell death from end) */
#define SHM_CHAN_ROLE_PRODUCER 1
#define SHM_CHAN_ROLE_CONSUMER 2 /* a subscriber in broadcast mode */

/* ---- wait directions */
#define SHM_CHAN_WAIT_DATA 0  /* consumers wait for a frame */
#define SHM_CHAN_WAIT_SPACE 1 /* producers wait for a free slot */

/* ---- limits and conventions */
#define SHM_CHAN_MAX_NDIM 8
#define SHM_CHAN_MIN_CAPACITY 2
#define SHM_CHAN_MAX_CAPACITY 1048576 /* 2^20 */
#define SHM_CHAN_MAX_PARTICIPANTS 1025 /* broadcast: one producer + 1024 subscribers */
#define SHM_CHAN_MAX_SLOT_BYTES 1099511627776ULL /* 2^40 */
#define SHM_CHAN_MAX_SLEEP_NS 10000000000ULL     /* a longer sleep is clamped */
#define SHM_CHAN_NO_INDEX 4294967295U            /* owner word: nobody */
#define SHM_CHAN_NO_POS 18446744073709551615ULL  /* no claim */
#define SHM_CHAN_SLOT_FLAG_ABORTED 1             /* work queue: a tombstone */
#define SHM_CHAN_WRITING 0x8000000000000000ULL   /* broadcast DROP: seq flag, slot under rewrite */
#define SHM_CHAN_EOS 0x80000000U                 /* ctrl eos word: end of stream */
#define SHM_CHAN_BCAST_PRODUCER 0                /* broadcast: the producer's participant index */
/* Liveness lock bytes of the segment file (byte 0 is the creator's owner lock). */
#define SHM_CHAN_LOCK_PART0 1       /* participant i: byte 1 + i */
#define SHM_CHAN_LOCK_OPEN0 4096    /* an open handle: one byte of [OPEN0, OPEN0 + MAX_OPENERS) */
#define SHM_CHAN_MAX_OPENERS 65536
#define SHM_CHAN_DOORBELL_PATH_MAX 192

/* ======================================================================
 * Public structs (mirrored field for field in chan.cdef)
 * ====================================================================== */

/* What shm_chan_size / shm_chan_format take.  policy 0 means BLOCK.
 * Broadcast: max_participants = 1 + the most subscribers at once. */
typedef struct {
    uint32_t mode;             /* SHM_CHAN_MODE_* */
    uint32_t policy;           /* 0, SHM_CHAN_POLICY_BLOCK, or DROP (broadcast) */
    uint32_t capacity;         /* power of two, 2 .. 2^20 */
    uint32_t max_participants; /* 1 .. 1024 (ring), 2 .. 1025 (broadcast) */
    uint64_t slot_bytes;       /* max payload bytes per slot, 1 .. 2^40 */
} shm_chan_params;

/* The validated header, copied at attach.  Python builds slot views from
 * payload_off + slot * slot_stride (relative to the block base). */
typedef struct {
    uint32_t mode;
    uint32_t policy;
    uint32_t capacity;
    uint32_t max_participants;
    uint64_t slot_bytes;
    uint64_t slot_stride;
    uint64_t ctrl_off;
    uint64_t parts_off;
    uint64_t slots_off;
    uint64_t payload_off;
    uint64_t total_len;
    uint32_t layout_version;
    uint32_t abi_version;
} shm_chan_info;

/* Filled by the receive calls from a validated private copy of the slot meta. */
typedef struct {
    uint64_t pos;          /* the frame's position: 0 for the first frame, +1 per frame */
    uint64_t timestamp_ns; /* CLOCK_MONOTONIC at commit */
    uint64_t tag;          /* user tag */
    uint64_t nbytes;       /* == itemsize(dtype) * prod(shape) <= slot_bytes */
    uint64_t shape[8];     /* shape[ndim..7] are 0 */
    uint64_t lost;         /* broadcast DROP: frames this call skipped because it was lapped */
    uint64_t skipped;      /* broadcast: frames latest() skipped on purpose */
    uint64_t gen;          /* the registration generation the frame is held under */
    uint32_t slot;         /* slot index (pos & (capacity - 1)) */
    uint32_t dtype;        /* dtype code (shm_chan_dtype_str) */
    uint32_t ndim;
    uint32_t held;         /* 1: this call left the frame held (release it); 0: nothing held */
} shm_chan_frame;

/* One participant entry: each shared word loaded once, not validated beyond
 * state and role, not mutually consistent. */
typedef struct {
    uint32_t state; /* SHM_CHAN_FREE .. DEAD */
    uint32_t role;  /* 0 (never used) or SHM_CHAN_ROLE_* */
    uint32_t pid;
    uint32_t doorbell; /* bit 1 << WAIT_DATA / WAIT_SPACE: waiting on an fd doorbell */
    uint64_t start_time;
    uint64_t joined_ns;
    uint64_t frames; /* frames committed (producer) or received (consumer) */
    uint64_t bytes;  /* payload bytes committed / received */
    uint64_t waits;  /* times it went to sleep */
    uint64_t cursor; /* broadcast subscriber: every position below is released */
    uint64_t join_pos;
    uint64_t lost;
    uint64_t skipped;
    uint64_t dropped; /* frames of this participant reclaimed at its death */
} shm_chan_part_info;

/* This handle's private bookkeeping (shm_chan_self). */
typedef struct {
    uint32_t role;
    uint32_t index;
    uint32_t registered;
    uint32_t ended;
    uint32_t held;    /* frames held (leases not yet released) */
    uint32_t claimed; /* a claim (loan) is outstanding */
    uint64_t claim_pos;
    uint64_t gen;
    uint64_t frames;
    uint64_t next; /* broadcast subscriber: the next position to read */
    uint64_t cursor;
    uint64_t join_pos;
    uint64_t received;
    uint64_t lost;
    uint64_t skipped;
    uint64_t invalid; /* broadcast DROP views valid() found overwritten */
} shm_chan_self_info;

/* Raw snapshot of the control block (stats, `shmarray ls`, `shmarray top`):
 * each word loaded once, not validated, not mutually consistent. */
typedef struct {
    uint64_t enqueue_pos; /* frames committed (broadcast: published) */
    uint64_t dequeue_pos; /* frames taken (ring modes) */
    uint64_t dropped;
    uint64_t evicted;
    uint64_t joins;
    uint64_t opens;
    uint64_t closes;
    uint32_t eos;         /* 1 once the stream ended */
    uint32_t producers;   /* producers registered and not ended */
    uint32_t data_waiters;
    uint32_t space_waiters;
    uint32_t doorbells;
    uint32_t producers_ever;
    uint32_t producer_owner; /* SHM_CHAN_NO_INDEX when none */
    uint32_t consumer_owner;
} shm_chan_status_info;

/* ======================================================================
 * Byte layout of the channel block, layout version 2.  Offsets are
 * relative to base (4096-aligned; in a segment, base = segment + 4096).
 * Native-endian.
 *
 *   [0, 256)                 shm_chan_header: immutable after format
 *   [ctrl_off = 256, +512)   shm_chan_ctrl: four 128-byte blocks
 *   [parts_off = 768, ...)   max_participants x shm_chan_part (128 B each)
 *   [slots_off, ...)         capacity x shm_chan_slot (128 B each);
 *                            slots_off = parts_off + 128 * max_participants
 *   [payload_off, ...)       capacity x slot_stride payload bytes;
 *                            payload_off = round_up(slots_off + 128 * capacity, 4096)
 *   total_len                = round_up(payload_off + capacity * slot_stride, 4096)
 *   slot_stride              = round_up(slot_bytes, 64), or round_up(slot_bytes, 4096)
 *                              when slot_bytes >= 64 KiB
 * attach recomputes every offset from (mode, policy, capacity,
 * max_participants, slot_bytes) and requires the stored ones to match exactly.
 * ====================================================================== */

/* Header body: bytes [8, 96) of the block. */
typedef struct {
    uint32_t layout_version;   /*  8: SHM_CHAN_LAYOUT_VERSION */
    uint32_t header_size;      /* 12: sizeof(shm_chan_header) = 256 */
    uint32_t mode;             /* 16 */
    uint32_t policy;           /* 20 */
    uint32_t capacity;         /* 24 */
    uint32_t max_participants; /* 28 */
    uint64_t slot_bytes;       /* 32 */
    uint64_t slot_stride;      /* 40 */
    uint64_t ctrl_off;         /* 48 */
    uint64_t parts_off;        /* 56 */
    uint64_t slots_off;        /* 64 */
    uint64_t payload_off;      /* 72 */
    uint64_t total_len;        /* 80 */
    uint64_t checksum;         /* 88: FNV-1a 64 of bytes [8, 88): catches torn init, not malice */
} shm_chan_header_body;

typedef struct {
    _Atomic uint64_t magic;    /*  0: "SHMCHAN2" as bytes; stored last (release) by format */
    shm_chan_header_body body; /*  8 */
    uint8_t reserved[160];     /* 96 .. 256 */
} shm_chan_header;

/* Control block: mutable, four 128-byte blocks (adjacent-line pairs apart). */
typedef struct {
    /* the producers' block */
    _Atomic uint64_t enqueue_pos; /*   0: next position to claim (WQ: CAS; 1:1: mirror;
                                             broadcast: the head, next to publish) */
    uint8_t pad0[120];
    /* the consumers' block */
    _Atomic uint64_t dequeue_pos; /* 128: next position to take (WQ: CAS; 1:1: mirror) */
    uint8_t pad1[120];
    /* waiting */
    _Atomic uint32_t data_epoch;    /* 256: futex word consumers sleep on */
    _Atomic uint32_t data_waiters;  /* 260: consumers armed for data (a count) */
    _Atomic uint32_t space_epoch;   /* 264: futex word producers sleep on */
    _Atomic uint32_t space_waiters; /* 268: producers armed for space */
    _Atomic uint32_t doorbells;     /* 272: participants armed on an fd doorbell (a count) */
    _Atomic uint32_t gen;           /* 276: broadcast: bumped by every join (seq_cst) */
    uint8_t pad2[104];
    /* cold */
    _Atomic uint32_t eos;            /* 384: SHM_CHAN_EOS | producers registered, not ended */
    _Atomic uint32_t producer_owner; /* 388: 1:1 producer's participant index, or NO_INDEX */
    _Atomic uint32_t consumer_owner; /* 392: 1:1 consumer's participant index, or NO_INDEX */
    _Atomic uint32_t producers_ever; /* 396: producer registrations so far */
    _Atomic uint64_t dropped;        /* 400: frames dropped (recovery, bad meta, upstream) */
    _Atomic uint64_t evicted;        /* 408: broadcast subscribers evicted after dying */
    _Atomic uint64_t joins;          /* 416: broadcast subscribers that ever joined */
    _Atomic uint64_t opens;          /* 424: handles opened (shm_chan_note_open) */
    _Atomic uint64_t closes;         /* 432: handles closed cleanly */
    uint8_t pad3[72];
} shm_chan_ctrl;

/* Participant entry (128 B): written by its owner (and by a recoverer, state
 * only), read by peers and by introspection.  A broadcast subscriber's cursor
 * sits on the entry's second cache line, which the producer reads. */
typedef struct {
    _Atomic uint32_t state;       /*   0: SHM_CHAN_FREE .. DEAD */
    _Atomic uint32_t role;        /*   4: SHM_CHAN_ROLE_* */
    _Atomic uint32_t pid;         /*   8 */
    _Atomic uint32_t doorbell;    /*  12: bits 1 << WAIT_*: armed on its fd doorbell */
    _Atomic uint64_t start_time;  /*  16: the process's start time (Python's unit) */
    _Atomic uint64_t joined_ns;   /*  24: CLOCK_MONOTONIC at register */
    _Atomic uint64_t pending_pos; /*  32: WQ: position about to be CASed (intent record) */
    _Atomic uint64_t frames;      /*  40: frames committed / received */
    _Atomic uint64_t bytes;       /*  48: payload bytes committed / received */
    _Atomic uint64_t waits;       /*  56: times it slept */
    _Atomic uint64_t cursor;      /*  64: broadcast: every position below is released */
    _Atomic uint64_t join_pos;    /*  72: broadcast: the first position it was owed */
    _Atomic uint64_t lost;        /*  80: broadcast DROP: frames skipped when lapped */
    _Atomic uint64_t skipped;     /*  88: broadcast: frames latest() skipped */
    _Atomic uint64_t dropped;     /*  96: its frames reclaimed at its death */
    uint8_t reserved[24];         /* 104 .. 128 */
} shm_chan_part;

/* Slot entry (128 B); the payload lives apart, at payload_off + i * slot_stride. */
typedef struct {
    _Atomic uint64_t seq;          /*   0: Vyukov sequence (broadcast: p + 1 once committed,
                                             | WRITING under DROP) */
    _Atomic uint64_t claim_pos;    /*   8: WQ: position the claimant claimed */
    _Atomic uint64_t holder_pos;   /*  16: ring: position the holder took */
    _Atomic uint64_t timestamp_ns; /*  24 */
    _Atomic uint64_t tag;          /*  32 */
    _Atomic uint64_t nbytes;       /*  40 */
    _Atomic uint64_t shape[8];     /*  48: shape[0..ndim) meaningful */
    _Atomic uint32_t claimant;     /* 112: WQ: producer's participant index */
    _Atomic uint32_t holder;       /* 116: ring: consumer's participant index */
    _Atomic uint16_t dtype;        /* 120: dtype code, 0 = invalid */
    _Atomic uint8_t ndim;          /* 122: <= 8 */
    _Atomic uint8_t flags;         /* 123: SHM_CHAN_SLOT_FLAG_* */
    uint32_t reserved;             /* 124 */
} shm_chan_slot;

/* ======================================================================
 * The private handle: one per participant per process, in private memory
 * (Python allocates it with ffi.new; cffi sees it as an opaque struct).
 * Calls on one handle are serialised by its private lock (so a view's lease
 * may be released from any thread); a handle is still meant to be driven by
 * one thread at a time.
 * ====================================================================== */
typedef struct shm_chan_handle {
    uint64_t attached; /* private magic once attach succeeded */
    _Atomic uint32_t lock; /* guards this private struct: a lease may be released from a
                              thread other than the one using the handle (a view dropped
                              there); uncontended otherwise.  Never held while sleeping. */
    uint32_t lock_pad;
    unsigned char *base;
    uint64_t len;
    shm_chan_info info;
    uint64_t mask;
    shm_chan_ctrl *ctrl;
    shm_chan_part *parts;
    shm_chan_slot *slots;
    unsigned char *payload;
    shm_chan_part *me;   /* &parts[index] while registered */
    uint32_t index;      /* participant index while registered */
    uint32_t role;       /* SHM_CHAN_ROLE_* while registered, else 0 */
    uint32_t registered;
    uint32_t ended;
    uint32_t debug;
    uint32_t drop;       /* broadcast DROP */
    uint32_t closing;    /* close_when_idle: unregister when the last held frame is released */
    uint32_t closing_pad;
    uint64_t gen;        /* registration generation (bumped by register and unregister) */
    uint32_t armed[2];   /* epoch snapshots taken by arm() */
    uint32_t db_pad;
    /* producer */
    uint32_t claimed;    /* a claim is outstanding */
    uint32_t claim_slot;
    uint64_t claim_pos;
    uint64_t pos;        /* ONE_TO_ONE: next position to claim / to take; broadcast: head */
    uint64_t frames;
    uint64_t bytes;
    int64_t s_nbytes;    /* < 0: no schema set */
    uint32_t s_dtype;
    uint32_t s_ndim;
    uint64_t s_shape[8];
    uint64_t gate;       /* broadcast BLOCK: cached minimum cursor */
    uint32_t gen_seen;   /* broadcast: `gen` loaded after the last publish's fence */
    uint32_t gen_gate;   /* broadcast: `gen` when `gate` was computed */
    /* consumer */
    uint64_t *held_bits; /* caller's memory: bit (p & mask) set while position p is held */
    uint32_t held_words;
    uint32_t held;
    uint64_t next;       /* broadcast: next position to read */
    uint64_t cursor;     /* broadcast BLOCK: lowest held position, or next when none is held */
    uint64_t join_pos;
    uint64_t received, lost, skipped;
    _Atomic uint64_t invalid; /* broadcast DROP views that valid() found overwritten */
    /* doorbells (asyncio waiters): the caller's fd cache, one per participant */
    int *db_fds;
    uint32_t db_count;
    char db_prefix[SHM_CHAN_DOORBELL_PATH_MAX]; /* "<dir>/shmarray.<name>.<nonce>.db" */
} shm_chan_t;

/* ======================================================================
 * API
 * ====================================================================== */
int shm_chan_abi_version(void);
const char *shm_chan_strerror(int rc);

/* dtype allowlist: valid codes are 1 .. shm_chan_dtype_count(). */
int shm_chan_dtype_count(void);
const char *shm_chan_dtype_str(uint32_t code);  /* numpy dtype.str, NULL if invalid */
int64_t shm_chan_dtype_itemsize(uint32_t code); /* or SHM_CHAN_BAD_ARG */

/* Layout.  size: bytes needed (a multiple of 4096), 0 if params invalid. */
uint64_t shm_chan_size(const shm_chan_params *p);
int shm_chan_format(void *base, uint64_t len, const shm_chan_params *p);

/* Validates the header once and fills the handle (info_out may be NULL). */
int shm_chan_attach(shm_chan_t *h, void *base, uint64_t len, shm_chan_info *info_out);
int shm_chan_set_debug(shm_chan_t *h, int on);
/* A forked child's copy of a handle: drops its registration privately (the
 * parent still owns the entry), so its leases and claims become STALE. */
void shm_chan_forked(shm_chan_t *h);

/* Openers (liveness of processes that opened the channel but never
 * registered): note_open / note_close count handles in / out; a handle that
 * vanished without note_close died. */
void shm_chan_note_open(shm_chan_t *h);
void shm_chan_note_close(shm_chan_t *h);

/* Participants.  Python calls register / recover only while it holds the
 * liveness lock of the entry.
 * register: the entry must not be ACTIVE/JOINING (else BUSY: recover it
 *   first); FREE, ENDED and DEAD entries are reused.  A producer is refused
 *   with ENDED once the stream has ended (checked atomically with counting
 *   itself in, so a producer either registers before end of stream or never).
 *   ONE_TO_ONE CASes the role's owner word from NO_INDEX to index (held by
 *   another index -> BUSY; shm_chan_role_owner names it).  BROADCAST: the
 *   producer is entry 0, subscribers 1.. (a subscriber joins at the newest
 *   frame, or at frame 0 before the first publish).  A consumer needs
 *   held_bits: caller memory of at least held_words = (capacity + 63) / 64
 *   words, kept alive until unregister.
 * unregister: clean leave.  A producer's outstanding claim is aborted; it
 *   becomes ENDED after end(), else FREE (leaving without end() does not end
 *   the stream).  A consumer's held frames are released (ring: counted in
 *   `dropped`).  Every lease and claim of this registration becomes STALE.
 * recover: participant `index` died (the caller holds its lock).  Ring: an
 *   ACTIVE consumer's unreleased slots are released and counted in dropped
 *   (entry -> DEAD), an ACTIVE work-queue producer's unpublished claims become
 *   tombstones (entry -> DEAD).  Broadcast: a subscriber is evicted (entry ->
 *   FREE, counted in `evicted`; it stops gating the producer); a producer
 *   becomes DEAD.  Anything else is left as it is.  Returns 1 if it changed
 *   the entry, 0 if not, or a negative status; *dropped_out gets the frames
 *   dropped. */
int shm_chan_register(shm_chan_t *h, uint32_t index, uint32_t role, uint32_t pid,
                      uint64_t start_time, uint64_t *held_bits, uint32_t held_words);
int shm_chan_unregister(shm_chan_t *h);
/* close_when_idle: unregister now (1), or, while a consumer still holds frames
 * (views of them are alive), when the last one is released (0). */
int shm_chan_close_when_idle(shm_chan_t *h);
/* ONE_TO_ONE: the index holding `role`, SHM_CHAN_NO_INDEX when none. */
int64_t shm_chan_role_owner(const shm_chan_t *h, uint32_t role);
int shm_chan_recover(shm_chan_t *h, uint32_t index, uint64_t *dropped_out);
int shm_chan_participant(const shm_chan_t *h, uint32_t index, shm_chan_part_info *out);
/* The state of every participant entry (out[i], i < n, n <= max_participants; a state that is
 * not one of SHM_CHAN_FREE..DEAD is reported as is): the number of entries filled. */
int shm_chan_states(const shm_chan_t *h, uint32_t *out, uint32_t n);
int shm_chan_status(const shm_chan_t *h, shm_chan_status_info *out);
int shm_chan_self(shm_chan_t *h, shm_chan_self_info *out);
/* Adds n to the channel's `dropped` (frames lost upstream, e.g. by a bridge). */
int shm_chan_count_dropped(shm_chan_t *h, uint64_t n);

/* Producer.
 * set_schema: dtype/ndim/shape stamped on every later commit; returns the
 *   frame's nbytes, BAD_ARG or TOO_LARGE (> slot_bytes, or overflow).
 * claim: slot index >= 0 (write the payload at payload_off + slot * stride;
 *   the claim's position is shm_chan_self().claim_pos), FULL, ENDED (this
 *   producer ended), CORRUPT, BUSY (CAS retries exhausted); retries FULL for
 *   up to spin_ns (0: one try).  Broadcast DROP marks the slot WRITING at once.
 * commit / abort: of the claim at claim_pos taken under generation gen:
 *   STALE if this handle holds no such claim (committed, aborted, or another
 *   registration's).  Commit publishes and wakes waiting consumers; a work
 *   queue abort publishes a tombstone (and wakes a consumer to skip it).
 * send: claim + memcpy + commit in one call; nbytes must equal the schema's.
 *   Returns the slot or a negative status.
 * send_many: `count` frames of the current schema from a contiguous block
 *   (frame i tagged tag + i); spins for the first only and stops at a full
 *   ring: the number sent (>= 1), or a status.
 * end: this producer ended (an outstanding claim is aborted); the stream ends
 *   when no other producer is registered; every waiting consumer is woken. */
int64_t shm_chan_set_schema(shm_chan_t *h, uint32_t dtype, uint32_t ndim, const uint64_t *shape);
int64_t shm_chan_claim(shm_chan_t *h, uint64_t spin_ns);
int shm_chan_commit(shm_chan_t *h, uint64_t claim_pos, uint64_t gen, uint64_t tag);
int shm_chan_abort(shm_chan_t *h, uint64_t claim_pos, uint64_t gen);
int64_t shm_chan_send(shm_chan_t *h, const void *src, uint64_t nbytes, uint64_t tag,
                      uint64_t spin_ns);
int64_t shm_chan_send_many(shm_chan_t *h, const void *src, uint64_t nbytes, uint64_t count,
                           uint64_t tag, uint64_t spin_ns);
int shm_chan_end(shm_chan_t *h);

/* Consumer.
 * recv: the next frame; out is filled from a validated private copy of its
 *   meta.  dst == NULL: a zero-copy view; the frame stays held
 *   (out->held = 1) until shm_chan_release(out->pos, out->gen), except under
 *   broadcast DROP, where nothing is held and a view must be checked with
 *   shm_chan_valid() after use.  dst != NULL: the payload is copied to dst
 *   (dst_len must equal the frame's nbytes, else RESIZE with *out describing
 *   the frame and nothing taken), validated (DROP: seq unchanged across the
 *   copy) and released in the same call.  Returns the slot >= 0, or EMPTY,
 *   ENDED (end of stream seen and everything before it read), LIMIT (a view
 *   would make capacity - 1 frames held, or a frame this consumer holds keeps
 *   the slot the next frame needs), RESIZE, CORRUPT (a frame with bad meta is dropped
 *   and counted).  spin_ns > 0 retries EMPTY for up to that long.
 * latest: broadcast: recv of the newest frame, skipping the backlog.
 * recv_many: ring modes: a run of up to max frames (spinning for the first)
 *   that lie in consecutive slots without wrapping and share the first one's
 *   dtype and shape, all held: the count, or a status.
 * release: of the frame at pos held under generation gen: STALE if not held
 *   (released already, or another registration's), CORRUPT if the shared slot
 *   no longer shows our hold.  Debug mode poisons the payload (0xDB).
 *   release_many: frames at pos[0..n), the same generation.
 * valid: 1 while frame pos is still intact in its slot (a sequence check:
 *   false once the slot was reused, under every policy), else 0. */
int64_t shm_chan_recv(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len,
                      uint64_t spin_ns);
int64_t shm_chan_latest(shm_chan_t *h, shm_chan_frame *out, void *dst, uint64_t dst_len,
                        uint64_t spin_ns);
int64_t shm_chan_recv_many(shm_chan_t *h, shm_chan_frame *out, uint64_t max, uint64_t spin_ns);
int shm_chan_release(shm_chan_t *h, uint64_t pos, uint64_t gen);
int shm_chan_release_many(shm_chan_t *h, const uint64_t *pos, uint64_t n, uint64_t gen);
int shm_chan_valid(const shm_chan_t *h, uint64_t pos);

/* Waiting (an eventcount over a futex).  arm(which): snapshot the epoch,
 * count ourselves in, seq_cst fence; then re-check (recv / claim with spin
 * 0); then sleep(which, ns) (OK when woken or the epoch moved, TIMEOUT,
 * INTR); then disarm(which).  A waiter that dies armed leaves the count high,
 * which only costs spurious wakes.
 * Doorbells: set_doorbells hands the handle its fd cache (n ints, -1 = not
 * open; n >= max_participants) and the path prefix of every participant's
 * FIFO ("<prefix><index>").  arm_doorbell(which) announces that this
 * participant waits on its FIFO (then re-check; a poster consumes the
 * announcement and writes one byte to it, so a rung waiter is armed no more);
 * disarm_doorbell(which) withdraws it if it is still there. */
int shm_chan_arm(shm_chan_t *h, uint32_t which);
int shm_chan_disarm(shm_chan_t *h, uint32_t which);
int shm_chan_sleep(shm_chan_t *h, uint32_t which, uint64_t timeout_ns);
int shm_chan_set_doorbells(shm_chan_t *h, int *fds, uint32_t n, const char *prefix);
int shm_chan_arm_doorbell(shm_chan_t *h, uint32_t which);
int shm_chan_disarm_doorbell(shm_chan_t *h, uint32_t which);

#endif /* SHMARRAY_CHAN_H */
