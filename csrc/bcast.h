/*
 * shmarray broadcast ring: one producer, up to max_subscribers subscribers,
 * every subscriber sees every frame (the Disruptor's multicast, RING.md §1,
 * §3.2).  Lock-free over a memory block it is handed (a shared mapping); no
 * malloc, no locks, no Python.
 *
 * Every shared word is untrusted: it is loaded once into a local, checked,
 * and only the local copy is used.  A corrupt or hostile region makes calls
 * return SHM_BCAST_CORRUPT; it never makes them read or write outside
 * [base, base + len) or loop without bound.
 *
 * Protocol.  Positions are 64-bit and never wrap; frame p lives in slot
 * p & (capacity - 1).  The producer owns `head` (the next position to
 * publish); each subscriber owns a cursor (every position below it has been
 * released by that subscriber).  A slot's `seq` is p + 1 once frame p is
 * committed there.
 *
 *   policy BLOCK: the producer writes position w only when w - capacity is
 *     below the cursor of every JOINING or ACTIVE subscriber (a cached
 *     minimum, rescanned when the cache says full or a subscriber joined).
 *     Views stay intact until released.
 *   policy DROP: the producer never waits.  `seq` is a seqlock: the producer
 *     stores WRITING | (w + 1) before it touches slot w and w + 1 after; a
 *     reader checks seq before and after reading (or copying) the frame.  A
 *     subscriber that was lapped skips to head - capacity + 1 (the oldest
 *     frame that cannot be under rewrite) and counts what it skipped as lost.
 *
 * Joining (both policies): the joiner stores a provisional cursor, then state
 * JOINING (seq_cst), bumps `gen` (seq_cst), and only then reads head.  The
 * producer reloads `gen` after the seq_cst fence that follows every publish
 * and rescans the cursors when it moved.  So either the producer sees the
 * joiner before it overwrites anything the joiner may start from, or the
 * joiner reads a head recent enough that its start frame (the newest one,
 * head - 1; frame 0 before the first publish) is not overwritten: no frame a
 * BLOCK subscriber is owed is lost.
 *
 * Waking: a futex on a 32-bit epoch word per direction (data: subscribers
 * wait; space: the producer waits), waited inside the C call.  A waiter
 * snapshots the epoch, increments the waiter count (seq_cst), re-checks, then
 * FUTEX_WAITs on the snapshot; the other side, after its store-release and a
 * seq_cst fence, bumps the epoch and FUTEX_WAKEs every waiter only when the
 * count is non-zero (RING.md §3.4, §3.5 "futex option").  Shared futexes (no
 * FUTEX_PRIVATE_FLAG): the segment is mapped by several processes.
 *
 * Liveness is the caller's business (Python: an OFD lock on byte
 * SHM_BCAST_LOCK_PRODUCER or SHM_BCAST_LOCK_SUB0 + index of the segment
 * file).  register / join / evict assume the caller holds that lock.
 *
 * The ABI (public structs and prototypes, mirrored in bcast.cdef) and the
 * byte layout (the layout structs below) are versioned separately.  dtype
 * codes are the ring's allowlist (shm_ring_dtype_*, ring.h).
 */
#ifndef SHMARRAY_BCAST_H
#define SHMARRAY_BCAST_H

#include <stdatomic.h>
#include <stdint.h>

#define SHM_BCAST_ABI_VERSION 1
#define SHM_BCAST_LAYOUT_VERSION 1

/* ---- status codes (the values shared with ring.h mean the same) */
#define SHM_BCAST_OK 0
#define SHM_BCAST_EMPTY -1     /* nothing new to read now */
#define SHM_BCAST_FULL -2      /* BLOCK: a live subscriber still holds the slot */
#define SHM_BCAST_CORRUPT -3   /* the shared region is inconsistent */
#define SHM_BCAST_TOO_LARGE -4 /* frame larger than slot_bytes, or size overflow */
#define SHM_BCAST_BAD_ARG -5   /* caller error (wrong role, bad slot, double release...) */
#define SHM_BCAST_ENDED -6     /* end of stream: drained, or this producer ended */
#define SHM_BCAST_BUSY -7      /* retries exhausted (a hostile peer livelocks us) */
#define SHM_BCAST_LIMIT -8     /* BLOCK: holds capacity - 1 frames, or its oldest hold blocks the next */
#define SHM_BCAST_RESIZE -9    /* copy: the frame does not fit dst; *out has its meta, nothing consumed */
#define SHM_BCAST_TIMEOUT -10  /* sleep: the timeout passed */
#define SHM_BCAST_INTR -11     /* sleep: interrupted by a signal */

/* ---- policies, states, roles, wait targets */
#define SHM_BCAST_POLICY_BLOCK 1
#define SHM_BCAST_POLICY_DROP 2
#define SHM_BCAST_FREE 0    /* entry unused (subscriber) / no producer registered */
#define SHM_BCAST_JOINING 1 /* subscriber joining: gates the producer, cursor provisional */
#define SHM_BCAST_ACTIVE 2
#define SHM_BCAST_ENDED_STATE 3 /* producer that called end() */
#define SHM_BCAST_ROLE_PRODUCER 1
#define SHM_BCAST_ROLE_SUBSCRIBER 2
#define SHM_BCAST_WAIT_DATA 0  /* a subscriber waits for a frame */
#define SHM_BCAST_WAIT_SPACE 1 /* the producer waits for a free slot (BLOCK) */

/* ---- limits and conventions */
#define SHM_BCAST_MAX_NDIM 8
#define SHM_BCAST_MIN_CAPACITY 2
#define SHM_BCAST_MAX_CAPACITY 1048576 /* 2^20 */
#define SHM_BCAST_MAX_SUBSCRIBERS 1024
#define SHM_BCAST_MAX_SLOT_BYTES 1099511627776ULL /* 2^40 */
#define SHM_BCAST_MAX_SLEEP_NS 10000000000ULL     /* a sleep longer than 10 s is clamped */
#define SHM_BCAST_WRITING 0x8000000000000000ULL   /* DROP: seq flag, slot under rewrite */
#define SHM_BCAST_LOCK_PRODUCER 1 /* liveness lock byte of the producer */
#define SHM_BCAST_LOCK_SUB0 2     /* liveness lock byte of subscriber i: LOCK_SUB0 + i */

/* ======================================================================
 * Public structs (mirrored field for field in bcast.cdef)
 * ====================================================================== */

typedef struct {
    uint32_t policy;          /* SHM_BCAST_POLICY_* */
    uint32_t capacity;        /* power of two, 2 .. 2^20 */
    uint32_t max_subscribers; /* 1 .. 1024 */
    uint32_t reserved;
    uint64_t slot_bytes; /* max payload bytes per slot, 1 .. 2^40 */
} shm_bcast_params;

/* The validated header, copied at attach.  Offsets are relative to the block
 * base; Python builds slot views from payload_off + slot * slot_stride. */
typedef struct {
    uint32_t policy;
    uint32_t capacity;
    uint32_t max_subscribers;
    uint32_t layout_version;
    uint64_t slot_bytes;
    uint64_t slot_stride;
    uint64_t ctrl_off;
    uint64_t subs_off;
    uint64_t slots_off;
    uint64_t payload_off;
    uint64_t total_len;
} shm_bcast_info;

/* Filled by shm_bcast_recv / shm_bcast_latest from a validated private copy of
 * the slot meta. */
typedef struct {
    uint64_t pos;          /* the frame's position: 0 for the first frame, +1 per frame */
    uint64_t timestamp_ns; /* CLOCK_MONOTONIC at commit */
    uint64_t tag;
    uint64_t nbytes;       /* == itemsize(dtype) * prod(shape) <= slot_bytes */
    uint64_t shape[8];     /* shape[ndim..7] are 0 */
    uint64_t lost;         /* frames this call skipped because the producer lapped us (DROP) */
    uint64_t skipped;      /* frames this call skipped on purpose (latest) */
    uint32_t slot;
    uint32_t dtype;        /* shm_ring_dtype_str(dtype) */
    uint32_t ndim;
    uint32_t schema_changed; /* 1: dtype/ndim/shape differ from this handle's previous frame */
} shm_bcast_frame;

/* One subscriber entry (shm_bcast_subscriber) or this handle's private view of
 * itself (shm_bcast_self).  Shared values are loaded once, not validated
 * beyond `state`, not mutually consistent. */
typedef struct {
    uint32_t state; /* SHM_BCAST_FREE / JOINING / ACTIVE */
    uint32_t pid;
    uint64_t start_time;
    uint64_t joined_ns;
    uint64_t join_pos; /* the first position it was owed */
    uint64_t cursor;   /* every position below was released */
    uint64_t next;     /* shm_bcast_self only: the next position to read */
    uint64_t received;
    uint64_t lost;
    uint64_t skipped;
    uint32_t held; /* shm_bcast_self only */
    uint32_t reserved;
} shm_bcast_sub_info;

/* Raw snapshot of the control block (stats and `shmarray ls`): each word is
 * loaded once, not validated, not mutually consistent. */
typedef struct {
    uint64_t head; /* frames published so far */
    uint64_t evicted;
    uint64_t joins;
    uint64_t prod_start_time;
    uint64_t prod_frames;
    uint32_t eos;
    uint32_t prod_state;
    uint32_t prod_pid;
    uint32_t data_waiters;
    uint32_t space_waiters;
    uint32_t gen;
} shm_bcast_status_info;

/* ======================================================================
 * Byte layout of the broadcast block, layout version 1.  Offsets are
 * relative to base (4096-aligned; in a segment, base = segment + 4096).
 * Native-endian.
 *
 *   [0, 256)               shm_bcast_header: immutable after format
 *   [ctrl_off = 256, +512) shm_bcast_ctrl: four 128-byte blocks
 *   [subs_off = 768, ...)  max_subscribers x shm_bcast_sub (128 B each)
 *   [slots_off, ...)       capacity x shm_bcast_slot (128 B each);
 *                          slots_off = subs_off + 128 * max_subscribers
 *   [payload_off, ...)     capacity x slot_stride payload bytes;
 *                          payload_off = round_up(slots_off + 128 * capacity, 4096)
 *   total_len              = round_up(payload_off + capacity * slot_stride, 4096)
 *   slot_stride            = round_up(slot_bytes, 64), or round_up(slot_bytes, 4096)
 *                            when slot_bytes >= 64 KiB
 * attach recomputes every offset from (policy, capacity, max_subscribers,
 * slot_bytes) and requires the stored ones to match exactly.
 * ====================================================================== */

/* Header body: bytes [8, 96) of the block. */
typedef struct {
    uint32_t layout_version;  /*  8: SHM_BCAST_LAYOUT_VERSION */
    uint32_t header_size;     /* 12: sizeof(shm_bcast_header) = 256 */
    uint32_t policy;          /* 16 */
    uint32_t capacity;        /* 20 */
    uint32_t max_subscribers; /* 24 */
    uint32_t reserved;        /* 28 */
    uint64_t slot_bytes;      /* 32 */
    uint64_t slot_stride;     /* 40 */
    uint64_t ctrl_off;        /* 48 */
    uint64_t subs_off;        /* 56 */
    uint64_t slots_off;       /* 64 */
    uint64_t payload_off;     /* 72 */
    uint64_t total_len;       /* 80 */
    uint64_t checksum;        /* 88: FNV-1a 64 of bytes [8, 88): catches torn init, not malice */
} shm_bcast_header_body;

typedef struct {
    _Atomic uint64_t magic;     /*  0: "SHMBCST1" as bytes; stored last (release) by format */
    shm_bcast_header_body body; /*  8 */
    uint8_t reserved[160];      /* 96 .. 256 */
} shm_bcast_header;

/* Control block: four 128-byte blocks (adjacent-line pairs apart). */
typedef struct {
    _Atomic uint64_t head;          /*   0: next position to publish (producer) */
    uint8_t pad0[120];
    _Atomic uint32_t data_epoch;    /* 128: futex word subscribers sleep on */
    _Atomic uint32_t data_waiters;  /* 132: subscribers armed for data (a count) */
    uint8_t pad1[120];
    _Atomic uint32_t space_epoch;   /* 256: futex word the producer sleeps on (BLOCK) */
    _Atomic uint32_t space_waiters; /* 260: producers armed for space */
    _Atomic uint32_t gen;           /* 264: bumped by every join (seq_cst) */
    uint8_t pad2[116];
    _Atomic uint32_t eos;              /* 384: sticky end of stream (0/1) */
    _Atomic uint32_t prod_state;       /* 388: SHM_BCAST_FREE / ACTIVE / ENDED_STATE */
    _Atomic uint32_t prod_pid;         /* 392 */
    uint32_t pad3;                     /* 396 */
    _Atomic uint64_t prod_start_time;  /* 400 */
    _Atomic uint64_t prod_joined_ns;   /* 408 */
    _Atomic uint64_t prod_frames;      /* 416: frames this producer committed */
    _Atomic uint64_t evicted;          /* 424: subscribers evicted (died without leaving) */
    _Atomic uint64_t joins;            /* 432: subscribers that ever joined */
    uint8_t pad4[72];
} shm_bcast_ctrl;

/* Subscriber entry (128 B); written by its subscriber (and by an evictor,
 * state only), read by the producer and by introspection. */
typedef struct {
    _Atomic uint32_t state;      /*  0: SHM_BCAST_FREE / JOINING / ACTIVE */
    _Atomic uint32_t pid;        /*  4 */
    _Atomic uint64_t start_time; /*  8: the process's start time (Python's unit) */
    _Atomic uint64_t joined_ns;  /* 16: CLOCK_MONOTONIC at join */
    _Atomic uint64_t join_pos;   /* 24 */
    _Atomic uint64_t received;   /* 32 */
    _Atomic uint64_t lost;       /* 40 */
    _Atomic uint64_t skipped;    /* 48 */
    uint8_t pad0[8];             /* 56 */
    _Atomic uint64_t cursor;     /* 64: every position below is released by this subscriber */
    uint8_t pad1[56];            /* 72 .. 128 */
} shm_bcast_sub;

/* Slot entry (128 B); the payload lives apart, at payload_off + i * slot_stride. */
typedef struct {
    _Atomic uint64_t seq;          /*   0: p + 1 once frame p is committed; DROP: | WRITING */
    _Atomic uint64_t timestamp_ns; /*   8 */
    _Atomic uint64_t tag;          /*  16 */
    _Atomic uint64_t nbytes;       /*  24 */
    _Atomic uint64_t shape[8];     /*  32 */
    _Atomic uint16_t dtype;        /*  96: ring.h dtype code, 0 = invalid */
    _Atomic uint8_t ndim;          /*  98: <= 8 */
    _Atomic uint8_t flags;         /*  99: 0 */
    uint8_t reserved[28];          /* 100 .. 128 */
} shm_bcast_slot;

/* ======================================================================
 * The private handle: one per role per process, in private memory (Python
 * allocates it with ffi.new; cffi sees it as an opaque struct).  Not
 * thread-safe.
 * ====================================================================== */
typedef struct shm_bcast_handle {
    uint64_t attached; /* private magic once attach succeeded */
    unsigned char *base;
    uint64_t len;
    shm_bcast_info info;
    uint64_t mask;
    shm_bcast_ctrl *ctrl;
    shm_bcast_sub *subs;
    shm_bcast_slot *slots;
    unsigned char *payload;
    uint32_t role;  /* 0 until register / join */
    uint32_t index; /* subscriber index */
    uint32_t drop;  /* policy == DROP */
    uint32_t debug;
    uint32_t armed[2]; /* epoch snapshots taken by arm() */
    /* producer */
    uint64_t head;      /* private copy of the next position to publish */
    uint64_t gate;      /* cached min cursor (BLOCK) */
    uint64_t frames;
    uint32_t gen_seen;  /* `gen` loaded after the last publish's fence */
    uint32_t gen_gate;  /* `gen` when `gate` was computed */
    uint32_t claimed;
    uint32_t claim_slot;
    uint32_t ended;
    uint32_t s_dtype;
    int64_t s_nbytes; /* < 0: no schema set */
    uint32_t s_ndim;
    uint32_t s_pad;
    uint64_t s_shape[8];
    /* subscriber */
    uint64_t next;   /* next position to read */
    uint64_t cursor; /* BLOCK: lowest held position, or next when none is held */
    uint64_t join_pos;
    uint64_t received, lost, skipped;
    uint64_t *held_bits; /* BLOCK: caller's memory, bit (p & mask) set while p is held */
    uint32_t held_words;
    uint32_t held;
    uint32_t l_valid, l_dtype, l_ndim, l_pad;
    uint64_t l_shape[8];
} shm_bcast_t;

/* ======================================================================
 * API
 * ====================================================================== */
int shm_bcast_abi_version(void);
const char *shm_bcast_strerror(int rc);

/* Layout.  size: bytes needed (a multiple of 4096), 0 if params invalid. */
uint64_t shm_bcast_size(const shm_bcast_params *p);
int shm_bcast_format(void *base, uint64_t len, const shm_bcast_params *p);

/* Validates the header once and fills the handle (info_out may be NULL). */
int shm_bcast_attach(shm_bcast_t *h, void *base, uint64_t len, shm_bcast_info *info_out);
int shm_bcast_set_debug(shm_bcast_t *h, int on);

/* Producer (the caller holds lock byte SHM_BCAST_LOCK_PRODUCER).
 * register: takes the producer entry over whatever its state (a previous
 *   ACTIVE producer is dead: the caller holds its lock); ENDED once eos is
 *   set.  Resumes at head (skipping a frame a dead producer committed but did
 *   not count).
 * unregister: an outstanding claim is aborted; the entry becomes ENDED_STATE
 *   after end(), else FREE (leaving without end() does not end the stream).
 * set_schema: dtype/ndim/shape stamped on every later commit; returns nbytes,
 *   BAD_ARG or TOO_LARGE.
 * claim: slot index >= 0 (write the payload at payload_off + slot * stride),
 *   FULL (BLOCK), ENDED, CORRUPT.  claim_spin retries FULL for up to spin_ns.
 *   DROP marks the slot WRITING at once: its previous frame is gone.
 * commit: publishes the claimed slot and wakes sleeping subscribers.
 * abort: gives the claim up unpublished.
 * send: claim_spin + memcpy + commit; nbytes must equal the schema's.
 *   Returns the slot or a negative status.
 * end: sets eos (sticky) and wakes every subscriber. */
int shm_bcast_register(shm_bcast_t *h, uint32_t pid, uint64_t start_time);
int shm_bcast_unregister(shm_bcast_t *h);
int64_t shm_bcast_set_schema(shm_bcast_t *h, uint32_t dtype, uint32_t ndim, const uint64_t *shape);
int64_t shm_bcast_claim(shm_bcast_t *h, uint64_t spin_ns);
int shm_bcast_commit(shm_bcast_t *h, uint64_t tag);
int shm_bcast_abort(shm_bcast_t *h);
int64_t shm_bcast_send(shm_bcast_t *h, const void *src, uint64_t nbytes, uint64_t tag,
                       uint64_t spin_ns);
int shm_bcast_end(shm_bcast_t *h);

/* Subscribers (the caller holds lock byte SHM_BCAST_LOCK_SUB0 + index).
 * join: enters entry `index` (whatever its state: a JOINING/ACTIVE occupant
 *   is dead, and is counted as evicted) and starts at the newest frame, or at
 *   frame 0 before the first publish.  BLOCK needs held_bits: caller memory of
 *   at least held_words = (capacity + 63) / 64 words, kept alive until leave.
 * leave: clean leave; held frames are released with the entry.
 * recv: the next frame.  dst == NULL: a view; BLOCK holds the slot until
 *   release (LIMIT at capacity - 1 held); DROP returns it unheld, to be
 *   checked with shm_bcast_valid() after use.  dst != NULL: the payload is
 *   copied to dst (dst_len must equal the frame's nbytes, else RESIZE with
 *   *out describing the frame and nothing consumed), validated (DROP: seq
 *   unchanged across the copy) and released in the same call.  Returns the
 *   slot >= 0, or EMPTY, ENDED (eos seen and everything before it read),
 *   LIMIT (BLOCK: a view would make capacity - 1 holds, or the oldest frame
 *   held is capacity behind, so the producer cannot publish the next one
 *   until it is released), RESIZE, CORRUPT (a frame with bad meta is skipped
 *   and counted as lost).  Lapped frames (DROP) are skipped and counted in
 *   out->lost.
 *   spin_ns > 0 retries EMPTY for up to that long.
 * latest: recv of the newest frame, skipping the backlog (out->skipped).
 * release: the (slot, pos) of a BLOCK view; BAD_ARG for anything not held.
 *   DROP views hold nothing: release is a no-op there (OK).
 * valid: 1 while frame `pos` is still intact in `slot`, else 0 (a DROP view
 *   must be checked after use; BLOCK views held are always valid). */
int shm_bcast_join(shm_bcast_t *h, uint32_t index, uint32_t pid, uint64_t start_time,
                   uint64_t *held_bits, uint32_t held_words);
int shm_bcast_leave(shm_bcast_t *h);
int64_t shm_bcast_recv(shm_bcast_t *h, shm_bcast_frame *out, void *dst, uint64_t dst_len,
                       uint64_t spin_ns);
int64_t shm_bcast_latest(shm_bcast_t *h, shm_bcast_frame *out, void *dst, uint64_t dst_len,
                         uint64_t spin_ns);
int shm_bcast_release(shm_bcast_t *h, uint32_t slot, uint64_t pos);
int shm_bcast_valid(const shm_bcast_t *h, uint32_t slot, uint64_t pos);

/* Liveness.  evict: subscriber `index` died (the caller holds its lock
 * byte): a JOINING/ACTIVE entry becomes FREE, stops gating the producer and
 * its holds are void.  Returns 1 if evicted, 0 if there was nothing to do. */
int shm_bcast_evict(shm_bcast_t *h, uint32_t index);

/* Waiting (eventcount over a futex).  arm(which): snapshot the epoch, count
 * ourselves in, seq_cst fence; then re-check (recv / claim with spin 0);
 * then sleep(which, ns) (returns OK when woken or the epoch moved, TIMEOUT,
 * INTR); then disarm(which).  A waiter that dies armed leaves the count
 * high, which only costs spurious wakes. */
int shm_bcast_arm(shm_bcast_t *h, uint32_t which);
int shm_bcast_disarm(shm_bcast_t *h, uint32_t which);
int shm_bcast_sleep(shm_bcast_t *h, uint32_t which, uint64_t timeout_ns);

/* Introspection. */
int shm_bcast_status(const shm_bcast_t *h, shm_bcast_status_info *out);
int shm_bcast_subscriber(const shm_bcast_t *h, uint32_t index, shm_bcast_sub_info *out);
int shm_bcast_self(const shm_bcast_t *h, shm_bcast_sub_info *out);

#endif /* SHMARRAY_BCAST_H */
