/* shmarray segment header: the self-describing first bytes of every shmarray segment.
 *
 * The header is written once by the creator, which sets `ready` last (release). Readers copy
 * it once into private memory (shm_seg_read) and validate every field there; nothing is ever
 * re-read from the shared mapping. A failed check returns a negative SHM_SEG_BAD_* code that
 * names the field (shm_seg_field).
 *
 * Layout version 1 (offsets in bytes from the start of the segment, little-endian host order):
 *
 *   [   0,   8)  magic           "SHMARRAY"
 *   [   8,  10)  version_major   u16 (1; a reader refuses any other major)
 *   [  10,  12)  version_minor   u16 (0)
 *   [  12,  16)  kind            u32: 1 array, 2 ring (channel), 3 broadcast ring (channel)
 *   [  16,  20)  header_size     u32: bytes before the data (array) or the ring block (ring)
 *   [  20,  24)  ready           u32, atomic: 0 while being built, 1 once complete (set last)
 *   [  24,  32)  total_size      u64: the size the creator gave the segment
 *   [  32,  36)  creator_pid     u32
 *   [  36,  40)  mode            u32: permission bits the creator asked for
 *   [  40,  48)  creator_start   u64: /proc/<pid>/stat field 22 of the creator (clock ticks)
 *   [  48,  56)  created_ns      u64: CLOCK_REALTIME at creation
 *   [  56,  64)  nonce           u64: tells one incarnation of a name from the next
 *   [  64, 168)  name            char[104], NUL-terminated user name (1..100 chars)
 *   [ 168, 172)  objects_len     u32: bytes used in `objects` (no NUL counted)
 *   [ 172, 176)  reserved
 *   [ 176,1200)  objects         char[1024]: '\n'-separated OS names of the semaphores and queue
 *                                that belong to this segment (rings), NUL-terminated
 *   [1200,1280)  reserved
 *   --- kind == array ---
 *   [1280,1288)  data_offset     u64: 64-aligned (4096 for arrays over 1 MiB)
 *   [1288,1296)  nbytes          u64: data bytes
 *   [1296,1300)  ndim            u32: 0..64
 *   [1300,1304)  order           u32: 0 C, 1 Fortran
 *   [1304,1308)  dtype_len       u32: bytes of dtype text (1..SHM_SEG_DTYPE_MAX)
 *   [1308,1312)  reserved
 *   [1312,1824)  shape           u64[64]
 *   [1824, ...)  dtype text      dtype.str, or JSON of a structured dtype's descr (never evaluated)
 *   --- kind == ring / broadcast ---
 *   header_size == 4096; the ring block (csrc/ring.h; csrc/bcast.h) starts there.
 */
#ifndef SHMARRAY_SEG_H
#define SHMARRAY_SEG_H

#include <stdint.h>

#define SHM_SEG_LAYOUT_MAJOR 1
#define SHM_SEG_LAYOUT_MINOR 0
#define SHM_SEG_KIND_ARRAY 1
#define SHM_SEG_KIND_RING 2
#define SHM_SEG_KIND_BCAST 3
#define SHM_SEG_NAME_MAX 100
#define SHM_SEG_OBJECTS_MAX 1023
#define SHM_SEG_MAXDIMS 64
#define SHM_SEG_DTYPE_MAX 16384
#define SHM_SEG_ARRAY_FIXED 1824 /* end of the fixed array header; dtype text follows */
#define SHM_SEG_RING_HEADER 4096 /* header_size of a ring segment */
#define SHM_SEG_MIN_SIZE 4096    /* every segment is at least one page */

/* Status codes: 0 ok, negatives name the failing field. */
#define SHM_SEG_OK 0
#define SHM_SEG_TOO_SMALL -1
#define SHM_SEG_BAD_MAGIC -2
#define SHM_SEG_BAD_VERSION -3
#define SHM_SEG_BAD_KIND -4
#define SHM_SEG_BAD_HEADER_SIZE -5
#define SHM_SEG_NOT_READY -6
#define SHM_SEG_BAD_TOTAL_SIZE -7
#define SHM_SEG_BAD_NAME -8
#define SHM_SEG_BAD_OBJECTS -9
#define SHM_SEG_BAD_DATA_OFFSET -10
#define SHM_SEG_BAD_NBYTES -11
#define SHM_SEG_BAD_NDIM -12
#define SHM_SEG_BAD_ORDER -13
#define SHM_SEG_BAD_DTYPE -14
#define SHM_SEG_BAD_SHAPE -15
#define SHM_SEG_BAD_ARG -16
#define SHM_SEG_BAD_READY -17

/* A private, validated copy of a header (filled by shm_seg_read; the creator fills the same
 * struct and passes it to shm_seg_write). */
typedef struct shm_seg_info {
    uint32_t version_major;
    uint32_t version_minor;
    uint32_t kind;
    uint32_t header_size;
    uint32_t ready;
    uint32_t creator_pid;
    uint32_t mode;
    uint32_t objects_len;
    uint64_t total_size;
    uint64_t creator_start;
    uint64_t created_ns;
    uint64_t nonce;
    char name[104];
    char objects[1024];
    /* array part */
    uint64_t data_offset;
    uint64_t nbytes;
    uint32_t ndim;
    uint32_t order;
    uint32_t dtype_len;
    uint64_t shape[64];
    char dtype[16385];
} shm_seg_info;

int shm_seg_abi_version(void);
const char *shm_seg_field(int rc);
/* Offset of the data for an array header of `dtype_len` dtype bytes and `nbytes` of data. */
uint64_t shm_seg_array_data_offset(uint32_t dtype_len, uint64_t nbytes);
/* Writes every field but `ready` (left 0) into base[0, len). */
int shm_seg_write(void *base, uint64_t len, const shm_seg_info *info);
/* Sets `ready` = 1 with release order: the header is complete. */
void shm_seg_publish(void *base);
/* Reads `ready` (acquire); 0 when len is too small. */
uint32_t shm_seg_ready(const void *base, uint64_t len);
/* Copies the header of base[0, len) into *out once and validates it. `require_ready` = 0 lets
 * `shmarray ls` describe a half-built segment. */
int shm_seg_read(const void *base, uint64_t len, shm_seg_info *out, int require_ready);

/* Liveness locks: open-file-description locks on single bytes of a segment file. The kernel
 * drops them when the last descriptor of the description closes, i.e. when the holder dies. */
int shm_seg_lock_try(int fd, uint64_t byte);     /* 0 taken, 1 held by another, -errno */
int shm_seg_lock_probe(int fd, uint64_t byte);   /* 1 held by another description, 0 free, -errno */
/* 1 when any byte of [start, start + len) is locked by another description, 0 if none, -errno */
int shm_seg_lock_probe_range(int fd, uint64_t start, uint64_t len);
int shm_seg_lock_release(int fd, uint64_t byte); /* 0, -errno */
/* mprotect of a mapping: readonly 1 -> PROT_READ, 0 -> PROT_READ|PROT_WRITE. 0 or -errno. */
int shm_seg_protect(void *addr, uint64_t len, int readonly);
/* Monotonic clock in ns (the clock frames are stamped with). */
uint64_t shm_seg_monotonic_ns(void);

#endif
