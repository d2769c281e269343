/*
 * shmarray ring: a lock-free ring of fixed-size slots over a memory block it
 * is handed (a shared mapping).  No malloc, no locks, no Python.
 *
 * Every shared word is untrusted: it is loaded once into a local, checked,
 * and only the local copy is used.  A corrupt or hostile region makes calls
 * return SHM_RING_CORRUPT; it never makes them read or write outside
 * [base, base + len) or loop without bound.
 *
 * Protocol (both modes): D. Vyukov's bounded MPMC queue, one 64-bit sequence
 * per slot.  Positions are 64-bit and never wrap.  Slot i starts at seq = i.
 *   producer at pos p: may claim when seq == p; publishes with seq = p + 1;
 *   consumer at pos p: may take when seq == p + 1; releases with seq = p + cap.
 * ONE_TO_ONE keeps each side's position private (no CAS) and mirrors it into
 * enqueue_pos / dequeue_pos for takeover and introspection; WORK_QUEUE claims
 * and takes positions by CAS on enqueue_pos / dequeue_pos.  An aborted claim
 * in WORK_QUEUE is published as a tombstone (flags = ABORTED) that the next
 * consumer releases itself.
 *
 * The ABI (this header's public structs and prototypes, mirrored in ring.cdef)
 * and the byte layout (the shm_ring_* layout structs below) are versioned
 * separately.
 */
#ifndef SHMARRAY_RING_H
#define SHMARRAY_RING_H

#include <stdatomic.h>
#include <stdint.h>

#define SHM_RING_ABI_VERSION 1
#define SHM_RING_LAYOUT_VERSION 1

/* ---- status codes (0 or negative; hot-path calls return >= 0 on success) */
#define SHM_RING_OK 0
#define SHM_RING_EMPTY -1     /* nothing to read now */
#define SHM_RING_FULL -2      /* no free slot now */
#define SHM_RING_CORRUPT -3   /* the shared region is inconsistent */
#define SHM_RING_TOO_LARGE -4 /* frame larger than slot_bytes, or size overflow */
#define SHM_RING_BAD_ARG -5   /* caller error (wrong role, bad slot, double release...) */
#define SHM_RING_ENDED -6     /* end of stream: drained, or this producer ended */
#define SHM_RING_BUSY -7      /* participant entry / role taken, or CAS retries exhausted */
#define SHM_RING_LIMIT -8     /* consumer already holds capacity - 1 frames */

/* ---- modes, policies */
#define SHM_RING_MODE_ONE_TO_ONE 1
#define SHM_RING_MODE_WORK_QUEUE 2
#define SHM_RING_MODE_BROADCAST 3 /* reserved: format/size refuse it (BAD_ARG) */
#define SHM_RING_POLICY_BLOCK 1
#define SHM_RING_POLICY_DROP 2 /* broadcast only (reserved) */

/* ---- participant states and roles */
#define SHM_RING_PART_FREE 0
#define SHM_RING_PART_ACTIVE 1
#define SHM_RING_PART_ENDED 2 /* producer that called end() */
#define SHM_RING_PART_DEAD 3  /* recovered after dying (a producer: without end()) */
#define SHM_RING_ROLE_PRODUCER 1
#define SHM_RING_ROLE_CONSUMER 2

/* ---- arm/disarm targets */
#define SHM_RING_WAIT_DATA 1  /* a consumer waits for a frame (cons_waiters) */
#define SHM_RING_WAIT_SPACE 2 /* a producer waits for a free slot (prod_waiters) */

/* ---- bits returned by shm_ring_recover / shm_ring_unregister */
#define SHM_RING_POST_DATA 1  /* post the data semaphore (consumers wait) */
#define SHM_RING_POST_SPACE 2 /* post the space semaphore (producers wait) */

/* ---- limits */
#define SHM_RING_MAX_NDIM 8
#define SHM_RING_MIN_CAPACITY 2
#define SHM_RING_MAX_CAPACITY 1048576 /* 2^20 */
#define SHM_RING_MAX_PARTICIPANTS 1024
#define SHM_RING_MAX_SLOT_BYTES 1099511627776ULL /* 2^40 */
#define SHM_RING_NO_INDEX 4294967295U            /* owner word: nobody */
#define SHM_RING_SLOT_FLAG_ABORTED 1

/* ======================================================================
 * Public structs (mirrored field for field in ring.cdef)
 * ====================================================================== */

/* What shm_ring_size / shm_ring_format take.  policy 0 means BLOCK. */
typedef struct {
    uint32_t mode;             /* SHM_RING_MODE_* */
    uint32_t policy;           /* 0 or SHM_RING_POLICY_BLOCK */
    uint32_t capacity;         /* power of two, 2 .. 2^20 */
    uint32_t max_participants; /* 1 .. 1024 */
    uint64_t slot_bytes;       /* max payload bytes per slot, 1 .. 2^40 */
} shm_ring_params;

/* The validated header, copied at attach.  Python builds slot views from
 * payload_off + slot * slot_stride (relative to the ring base). */
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
} shm_ring_info;

/* Filled by shm_ring_acquire from a validated private copy of the slot meta. */
typedef struct {
    uint64_t pos;          /* ring position of the frame (its sequence number) */
    uint64_t timestamp_ns; /* CLOCK_MONOTONIC at commit */
    uint64_t tag;          /* user tag */
    uint64_t nbytes;       /* == itemsize(dtype) * prod(shape) <= slot_bytes */
    uint64_t shape[8];     /* shape[ndim..7] are 0 */
    uint32_t slot;         /* slot index (release takes slot and pos) */
    uint32_t dtype;        /* dtype code (shm_ring_dtype_str) */
    uint32_t ndim;
    uint32_t schema_changed; /* 1: dtype/ndim/shape differ from this handle's previous frame */
    uint32_t wake_producers; /* set on EVERY return: 1 if this call released tombstones or a
                                bad frame while producers wait: post the space semaphore */
    uint32_t reserved;
} shm_ring_frame;

typedef struct {
    uint32_t state; /* SHM_RING_PART_* */
    uint32_t role;  /* 0 (never used) or SHM_RING_ROLE_* */
    uint32_t pid;
    uint32_t reserved;
    uint64_t start_time;
    uint64_t joined_ns;
    uint64_t frames; /* frames committed (producer) or acquired (consumer) */
} shm_ring_participant_info;

/* Raw snapshot of the control block (for stats and `shmarray ls`): each word
 * is loaded once, not validated, not mutually consistent. */
typedef struct {
    uint64_t enqueue_pos;
    uint64_t dequeue_pos;
    uint64_t dropped;
    uint32_t eos;
    uint32_t cons_waiters;
    uint32_t prod_waiters;
    uint32_t producers_ever;
    uint32_t producer_owner; /* SHM_RING_NO_INDEX when none (ONE_TO_ONE only) */
    uint32_t consumer_owner;
} shm_ring_status_info;

/* ======================================================================
 * Byte layout of the ring block, layout version 1.  Offsets are relative to
 * base (4096-aligned).  All multi-byte fields are native-endian.
 *
 *   [0, 256)                 shm_ring_header: immutable after format
 *   [ctrl_off = 256, +512)   shm_ring_ctrl: four 128-byte blocks
 *   [parts_off = 768, ...)   max_participants x shm_ring_part (128 B each)
 *   [slots_off, ...)         capacity x shm_ring_slot (128 B each);
 *                            slots_off = parts_off + 128 * max_participants
 *   [payload_off, ...)       capacity x slot_stride payload bytes;
 *                            payload_off = round_up(slots_off + 128 * capacity, 4096)
 *   total_len                = round_up(payload_off + capacity * slot_stride, 4096)
 *   slot_stride              = round_up(slot_bytes, 64), or round_up(slot_bytes, 4096)
 *                              when slot_bytes >= 64 KiB
 * attach recomputes every offset from (mode, policy, capacity, max_participants,
 * slot_bytes) and requires the stored ones to match exactly.
 * ====================================================================== */

/* Header body: bytes [8, 96) of the block. */
typedef struct {
    uint32_t layout_version;   /*  8: SHM_RING_LAYOUT_VERSION */
    uint32_t header_size;      /* 12: sizeof(shm_ring_header) = 256 */
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
} shm_ring_header_body;

typedef struct {
    _Atomic uint64_t magic;    /*  0: "SHMRING1" as bytes; stored last (release) by format */
    shm_ring_header_body body; /*  8 */
    uint8_t reserved[160];     /* 96 .. 256 */
} shm_ring_header;

/* Control block: mutable, four 128-byte blocks (adjacent-line pairs apart). */
typedef struct {
    _Atomic uint64_t enqueue_pos; /*   0: next position to claim (WQ: CAS; 1:1: mirror) */
    uint8_t pad0[120];
    _Atomic uint64_t dequeue_pos; /* 128: next position to take (WQ: CAS; 1:1: mirror) */
    uint8_t pad1[120];
    _Atomic uint32_t cons_waiters; /* 256: consumers armed for data (a count) */
    _Atomic uint32_t prod_waiters; /* 260: producers armed for space (a count) */
    uint8_t pad2[120];
    _Atomic uint32_t eos;            /* 384: sticky end of stream (0/1) */
    _Atomic uint32_t producer_owner; /* 388: 1:1 producer's participant index, or NO_INDEX */
    _Atomic uint32_t consumer_owner; /* 392: 1:1 consumer's participant index, or NO_INDEX */
    _Atomic uint32_t producers_ever; /* 396: producer registrations so far */
    _Atomic uint64_t dropped;        /* 400: frames dropped by recovery / bad meta */
    uint8_t pad3[104];
} shm_ring_ctrl;

/* Participant entry (128 B).  Liveness is decided by the Python side (an OFD
 * lock on byte 1 + index of the segment file), never here. */
typedef struct {
    _Atomic uint32_t state;       /*  0: SHM_RING_PART_* */
    _Atomic uint32_t role;        /*  4: SHM_RING_ROLE_* */
    _Atomic uint32_t pid;         /*  8 */
    uint32_t pad;                 /* 12 */
    _Atomic uint64_t start_time;  /* 16: the process's start time (Python's choice of unit) */
    _Atomic uint64_t joined_ns;   /* 24: CLOCK_MONOTONIC at register */
    _Atomic uint64_t pending_pos; /* 32: WQ: position about to be CASed (intent record) */
    _Atomic uint64_t frames;      /* 40: frames committed / acquired */
    uint8_t reserved[80];         /* 48 .. 128 */
} shm_ring_part;

/* Slot entry (128 B); the payload lives apart, at payload_off + i * slot_stride. */
typedef struct {
    _Atomic uint64_t seq;          /*   0: Vyukov sequence */
    _Atomic uint64_t claim_pos;    /*   8: position the claimant claimed (WQ) */
    _Atomic uint64_t holder_pos;   /*  16: position the holder took */
    _Atomic uint64_t timestamp_ns; /*  24 */
    _Atomic uint64_t tag;          /*  32 */
    _Atomic uint64_t nbytes;       /*  40 */
    _Atomic uint64_t shape[8];     /*  48: shape[0..ndim) meaningful */
    _Atomic uint32_t claimant;     /* 112: producer's participant index (WQ) */
    _Atomic uint32_t holder;       /* 116: consumer's participant index */
    _Atomic uint16_t dtype;        /* 120: dtype code, 0 = invalid */
    _Atomic uint8_t ndim;          /* 122: <= 8 */
    _Atomic uint8_t flags;         /* 123: SHM_RING_SLOT_FLAG_* */
    uint32_t reserved;             /* 124 */
} shm_ring_slot;

/* ======================================================================
 * The private handle: one per participant per process, in private memory
 * (Python allocates it with ffi.new; cffi sees it as an opaque struct).
 * Not thread-safe.
 * ====================================================================== */
typedef struct shm_ring_handle {
    uint64_t attached; /* private magic once attach succeeded */
    unsigned char *base;
    uint64_t len;
    shm_ring_info info;
    uint64_t mask;
    shm_ring_ctrl *ctrl;
    shm_ring_part *parts;
    shm_ring_slot *slots;
    unsigned char *payload;
    shm_ring_part *me;   /* &parts[index] while registered */
    uint32_t index;      /* participant index while registered */
    uint32_t role;       /* SHM_RING_ROLE_* while registered, else 0 */
    uint32_t registered;
    uint32_t ended;
    uint32_t debug;
    uint32_t claimed;    /* producer: a claim is outstanding */
    uint32_t claim_slot;
    uint32_t held;       /* consumer: frames acquired and not yet released */
    uint64_t claim_pos;
    uint64_t pos;        /* ONE_TO_ONE: next position to claim / to take */
    uint64_t frames;
    /* schema stamped by commit (shm_ring_set_schema) */
    int64_t s_nbytes; /* < 0: no schema set */
    uint32_t s_dtype;
    uint32_t s_ndim;
    uint64_t s_shape[8];
    /* schema of the last frame acquired, for schema_changed */
    uint32_t l_valid;
    uint32_t l_dtype;
    uint32_t l_ndim;
    uint32_t l_pad;
    uint64_t l_shape[8];
} shm_ring_t;

/* ======================================================================
 * API
 * ====================================================================== */
int shm_ring_abi_version(void);
const char *shm_ring_strerror(int rc);

/* dtype allowlist: valid codes are 1 .. shm_ring_dtype_count(). */
int shm_ring_dtype_count(void);
const char *shm_ring_dtype_str(uint32_t code);       /* numpy dtype.str, NULL if invalid */
int64_t shm_ring_dtype_itemsize(uint32_t code);      /* or SHM_RING_BAD_ARG */

/* Layout.  size: bytes needed (a multiple of 4096), 0 if params invalid. */
uint64_t shm_ring_size(const shm_ring_params *p);
int shm_ring_format(void *base, uint64_t len, const shm_ring_params *p);

/* Validates the header once and fills the handle (info_out may be NULL). */
int shm_ring_attach(shm_ring_t *r, void *base, uint64_t len, shm_ring_info *info_out);
int shm_ring_get_info(const shm_ring_t *r, shm_ring_info *out);
int shm_ring_set_debug(shm_ring_t *r, int on);

/* Participants.  Python owns liveness: it calls register/recover only while
 * it holds the OFD lock on byte 1 + index of the segment file.
 *
 * register: the entry must not be ACTIVE (else BUSY: recover it first); FREE,
 *   ENDED and DEAD entries are reused.  A producer is refused with ENDED once
 *   eos is set.  ONE_TO_ONE also CASes the role's owner word from NO_INDEX to
 *   index; held by another index -> BUSY, and shm_ring_role_owner() names it
 *   so Python can probe that index's lock.
 * unregister: clean leave.  A producer's outstanding claim is aborted; the
 *   entry becomes ENDED if it called end(), else FREE (a producer leaving
 *   without end() does not end the stream).  A consumer should release its
 *   frames first; any it still holds are released here and counted in
 *   `dropped`.  Returns SHM_RING_POST_* bits (>= 0) or a negative status.
 * recover: for a dead participant (its lock byte is ours).  An ACTIVE
 *   consumer's consumed-unreleased slots are released and counted (entry ->
 *   FREE); an ACTIVE WORK_QUEUE producer's unpublished claims become
 *   tombstones (entry -> DEAD, so consumers can tell death from end()).
 *   FREE/ENDED/DEAD entries are left as they are.  In ONE_TO_ONE any owner
 *   word naming index is cleared.  *dropped_out gets the frames dropped.
 *   Returns SHM_RING_POST_* bits (>= 0): post those semaphores.
 *   The one-instruction window between the cursor CAS and the claimant /
 *   holder record is covered by an intent record: each WORK_QUEUE participant
 *   stores the position it is about to CAS into its entry's pending_pos
 *   first, and recover also takes a slot whose claim_pos / holder_pos is not
 *   this lap's position when pending_pos equals it. */
int shm_ring_register(shm_ring_t *r, uint32_t index, uint32_t role, uint32_t pid,
                      uint64_t start_time);
int shm_ring_unregister(shm_ring_t *r);
/* ONE_TO_ONE: the index holding `role`, SHM_RING_NO_INDEX when none. */
int64_t shm_ring_role_owner(const shm_ring_t *r, uint32_t role);
int shm_ring_recover(shm_ring_t *r, uint32_t index, uint64_t *dropped_out);
int shm_ring_participant(const shm_ring_t *r, uint32_t index, shm_ring_participant_info *out);
int shm_ring_status(const shm_ring_t *r, shm_ring_status_info *out);

/* Producer.
 * set_schema: dtype/ndim/shape stamped on every later commit; returns the
 *   frame's nbytes, BAD_ARG or TOO_LARGE (> slot_bytes, or overflow).
 * claim: slot index >= 0 (write the payload at payload_off + slot * stride),
 *   FULL, ENDED (this producer ended), CORRUPT, BUSY (CAS retries exhausted).
 *   claim_spin retries FULL for up to spin_ns (0: one try).
 * commit / abort: 1 when consumers wait (post the data semaphore), else 0.
 *   ONE_TO_ONE abort reuses the slot; WORK_QUEUE abort publishes a tombstone.
 * send: claim_spin + memcpy + commit in one call; nbytes must equal the
 *   schema's.  Returns (slot << 1) | post, or a negative status.
 * end: marks this producer ENDED (aborting an outstanding claim) and sets eos
 *   when no other producer is ACTIVE.  Returns how many times to post the
 *   data semaphore (>= 0). */
int64_t shm_ring_set_schema(shm_ring_t *r, uint32_t dtype, uint32_t ndim, const uint64_t *shape);
int64_t shm_ring_claim(shm_ring_t *r);
int64_t shm_ring_claim_spin(shm_ring_t *r, uint64_t spin_ns);
int shm_ring_commit(shm_ring_t *r, uint64_t tag);
int shm_ring_abort(shm_ring_t *r);
int64_t shm_ring_send(shm_ring_t *r, const void *src, uint64_t nbytes, uint64_t tag,
                      uint64_t spin_ns);
int shm_ring_end(shm_ring_t *r);

/* Consumer.
 * acquire: slot index >= 0 with *out filled (validated), or EMPTY, ENDED
 *   (eos set and everything committed before it drained), LIMIT (holding
 *   capacity - 1 frames), CORRUPT (a bad frame is dropped and counted).
 *   Tombstones are released and skipped inside the call; check
 *   out->wake_producers on every return.  acquire_spin retries EMPTY.
 * release: the (slot, pos) of a held frame; 1 when producers wait (post the
 *   space semaphore), else 0; BAD_ARG for anything not held by this handle
 *   (a double release included).  Debug mode poisons the payload (0xDB). */
int64_t shm_ring_acquire(shm_ring_t *r, shm_ring_frame *out);
int64_t shm_ring_acquire_spin(shm_ring_t *r, shm_ring_frame *out, uint64_t spin_ns);
int shm_ring_release(shm_ring_t *r, uint32_t slot, uint64_t pos);

/* Batch and packed variants (one C call for many frames; call count is the cost model). */
#define SHM_RING_RECV_SCHEMA (1LL << 32)
#define SHM_RING_RECV_WAKE (1LL << 33)
/* acquire (spinning up to spin_ns) and pack the flags into the result: slot |
 * SHM_RING_RECV_SCHEMA (schema changed) | SHM_RING_RECV_WAKE (post the space semaphore) */
int64_t shm_ring_recv(shm_ring_t *r, shm_ring_frame *out, uint64_t spin_ns);
/* send `count` frames of the current schema from a contiguous block (frame i tagged tag + i);
 * spins for the first only and stops at a full ring: (sent << 1) | post, or a status */
int64_t shm_ring_send_many(shm_ring_t *r, const void *src, uint64_t nbytes, uint64_t count,
                           uint64_t tag, uint64_t spin_ns);
/* acquire a run of up to max frames (spinning for the first) that lie in consecutive slots
 * without wrapping and share the first one's schema: the count, or a status; out[0] carries
 * the OR of every wake_producers */
int64_t shm_ring_acquire_many(shm_ring_t *r, shm_ring_frame *out, uint64_t max,
                              uint64_t spin_ns);
/* release frames[0..n) (their slot and pos): 0/1 (post space?) or a status */
int64_t shm_ring_release_many(shm_ring_t *r, const shm_ring_frame *frames, uint64_t n);


/* Eventcount.  Waiter: arm(which); re-check (claim/acquire); sleep on the
 * semaphore; disarm(which).  Counts are advisory: a participant that dies
 * armed leaves the count high, which only costs spurious posts. */
int shm_ring_arm(shm_ring_t *r, uint32_t which);
int shm_ring_disarm(shm_ring_t *r, uint32_t which);

#endif /* SHMARRAY_RING_H */
