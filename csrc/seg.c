/* shmarray segment header codec and liveness locks. Layout: seg.h. */
#define _GNU_SOURCE
#include "seg.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define OFF_MAGIC 0
#define OFF_VMAJOR 8
#define OFF_VMINOR 10
#define OFF_KIND 12
#define OFF_HSIZE 16
#define OFF_READY 20
#define OFF_TOTAL 24
#define OFF_PID 32
#define OFF_MODE 36
#define OFF_START 40
#define OFF_CREATED 48
#define OFF_NONCE 56
#define OFF_NAME 64
#define NAME_FIELD 104
#define OFF_OBJLEN 168
#define OFF_OBJECTS 176
#define OBJECTS_FIELD 1024
#define OFF_DATA_OFFSET 1280
#define OFF_NBYTES 1288
#define OFF_NDIM 1296
#define OFF_ORDER 1300
#define OFF_DTYPE_LEN 1304
#define OFF_SHAPE 1312
#define OFF_DTYPE SHM_SEG_ARRAY_FIXED

static const char MAGIC[8] = {'S', 'H', 'M', 'A', 'R', 'R', 'A', 'Y'};

/* Ring-like kinds: a 4096-byte header, then a block their own C module validates. */
static int ringlike(uint32_t kind) { return kind == SHM_SEG_KIND_RING || kind == SHM_SEG_KIND_BCAST; }

int shm_seg_abi_version(void) { return SHM_SEG_LAYOUT_MAJOR * 100 + SHM_SEG_LAYOUT_MINOR; }

const char *shm_seg_field(int rc) {
    switch (rc) {
    case SHM_SEG_OK: return "ok";
    case SHM_SEG_TOO_SMALL: return "size (smaller than a header)";
    case SHM_SEG_BAD_MAGIC: return "magic";
    case SHM_SEG_BAD_VERSION: return "version";
    case SHM_SEG_BAD_KIND: return "kind";
    case SHM_SEG_BAD_HEADER_SIZE: return "header_size";
    case SHM_SEG_NOT_READY: return "ready";
    case SHM_SEG_BAD_READY: return "ready";
    case SHM_SEG_BAD_TOTAL_SIZE: return "total_size";
    case SHM_SEG_BAD_NAME: return "name";
    case SHM_SEG_BAD_OBJECTS: return "objects";
    case SHM_SEG_BAD_DATA_OFFSET: return "data_offset";
    case SHM_SEG_BAD_NBYTES: return "nbytes";
    case SHM_SEG_BAD_NDIM: return "ndim";
    case SHM_SEG_BAD_ORDER: return "order";
    case SHM_SEG_BAD_DTYPE: return "dtype";
    case SHM_SEG_BAD_SHAPE: return "shape";
    case SHM_SEG_BAD_ARG: return "argument";
    default: return "unknown field";
    }
}

static uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

uint64_t shm_seg_array_data_offset(uint32_t dtype_len, uint64_t nbytes) {
    uint64_t end = (uint64_t)OFF_DTYPE + dtype_len;
    return round_up(end, nbytes > (1u << 20) ? 4096 : 64);
}

/* Plain loads and stores through memcpy: the header is immutable once `ready` is set, and
 * memcpy never makes an unaligned or type-punned access undefined. */
static uint16_t ld16(const unsigned char *p, size_t off) { uint16_t v; memcpy(&v, p + off, 2); return v; }
static uint32_t ld32(const unsigned char *p, size_t off) { uint32_t v; memcpy(&v, p + off, 4); return v; }
static uint64_t ld64(const unsigned char *p, size_t off) { uint64_t v; memcpy(&v, p + off, 8); return v; }
static void st16(unsigned char *p, size_t off, uint16_t v) { memcpy(p + off, &v, 2); }
static void st32(unsigned char *p, size_t off, uint32_t v) { memcpy(p + off, &v, 4); }
static void st64(unsigned char *p, size_t off, uint64_t v) { memcpy(p + off, &v, 8); }

static int name_char(char c, int first) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')
        return 1;
    return !first && c == '-';
}

/* The user-name rule of DESIGN.md: [A-Za-z0-9_][A-Za-z0-9_-]{0,99}, NUL-terminated in 104. */
static int check_name(const char *name) {
    size_t n = strnlen(name, NAME_FIELD);
    if (n == 0 || n > SHM_SEG_NAME_MAX) return 0;
    for (size_t i = 0; i < n; i++)
        if (!name_char(name[i], i == 0)) return 0;
    return 1;
}

/* Every listed object must be "/shmarray.<name>.<rest>" with <rest> made of name characters
 * and dots, so a scribbled header can never make cleanup touch somebody else's object. */
static int check_objects(const char *objects, uint32_t len, const char *name) {
    if (len > SHM_SEG_OBJECTS_MAX || strnlen(objects, OBJECTS_FIELD) != len) return 0;
    size_t nlen = strlen(name);
    const char *p = objects, *end = objects + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        size_t l = (size_t)(e - p);
        if (l < 11 + nlen + 2 || memcmp(p, "/shmarray.", 10) != 0 || memcmp(p + 10, name, nlen) != 0 ||
            p[10 + nlen] != '.')
            return 0;
        for (const char *q = p + 11 + nlen; q < e; q++)
            if (!name_char(*q, 0) && *q != '.') return 0;
        p = nl ? nl + 1 : end;
    }
    return 1;
}

/* The magic goes in last: a reader that finds it non-zero before `ready` is set sees complete
 * fields (a zero magic means "still being written"). */
static void write_magic(unsigned char *p) {
    atomic_thread_fence(memory_order_release);
    memcpy(p + OFF_MAGIC, MAGIC, 8);
}

int shm_seg_write(void *base, uint64_t len, const shm_seg_info *in) {
    unsigned char *p = base;
    if (!base || len < SHM_SEG_MIN_SIZE || in->total_size > len) return SHM_SEG_BAD_ARG;
    if (in->kind != SHM_SEG_KIND_ARRAY && !ringlike(in->kind)) return SHM_SEG_BAD_KIND;
    if (!check_name(in->name)) return SHM_SEG_BAD_NAME;
    if (!check_objects(in->objects, in->objects_len, in->name)) return SHM_SEG_BAD_OBJECTS;
    memset(p, 0, ringlike(in->kind) ? SHM_SEG_RING_HEADER : OFF_DTYPE);
    st16(p, OFF_VMAJOR, SHM_SEG_LAYOUT_MAJOR);
    st16(p, OFF_VMINOR, SHM_SEG_LAYOUT_MINOR);
    st32(p, OFF_KIND, in->kind);
    st64(p, OFF_TOTAL, in->total_size);
    st32(p, OFF_PID, in->creator_pid);
    st32(p, OFF_MODE, in->mode);
    st64(p, OFF_START, in->creator_start);
    st64(p, OFF_CREATED, in->created_ns);
    st64(p, OFF_NONCE, in->nonce);
    memcpy(p + OFF_NAME, in->name, strnlen(in->name, NAME_FIELD));
    st32(p, OFF_OBJLEN, in->objects_len);
    memcpy(p + OFF_OBJECTS, in->objects, in->objects_len);
    if (ringlike(in->kind)) {
        st32(p, OFF_HSIZE, SHM_SEG_RING_HEADER);
        write_magic(p);
        return SHM_SEG_OK;
    }
    if (in->ndim > SHM_SEG_MAXDIMS) return SHM_SEG_BAD_NDIM;
    if (in->order > 1) return SHM_SEG_BAD_ORDER;
    if (in->dtype_len == 0 || in->dtype_len > SHM_SEG_DTYPE_MAX ||
        strnlen(in->dtype, sizeof in->dtype) != in->dtype_len)
        return SHM_SEG_BAD_DTYPE;
    uint64_t off = shm_seg_array_data_offset(in->dtype_len, in->nbytes), end;
    if (in->data_offset != off) return SHM_SEG_BAD_DATA_OFFSET;
    if (__builtin_add_overflow(off, in->nbytes, &end) || end > in->total_size) return SHM_SEG_BAD_NBYTES;
    st32(p, OFF_HSIZE, (uint32_t)off);
    st64(p, OFF_DATA_OFFSET, off);
    st64(p, OFF_NBYTES, in->nbytes);
    st32(p, OFF_NDIM, in->ndim);
    st32(p, OFF_ORDER, in->order);
    st32(p, OFF_DTYPE_LEN, in->dtype_len);
    for (uint32_t i = 0; i < in->ndim; i++) st64(p, OFF_SHAPE + 8 * i, in->shape[i]);
    memcpy(p + OFF_DTYPE, in->dtype, in->dtype_len);
    write_magic(p);
    return SHM_SEG_OK;
}

void shm_seg_publish(void *base) {
    atomic_store_explicit((_Atomic uint32_t *)((unsigned char *)base + OFF_READY), 1, memory_order_release);
}

uint32_t shm_seg_ready(const void *base, uint64_t len) {
    if (!base || len < SHM_SEG_MIN_SIZE) return 0;
    return atomic_load_explicit((_Atomic uint32_t *)((unsigned char *)base + OFF_READY), memory_order_acquire);
}

int shm_seg_read(const void *base, uint64_t len, shm_seg_info *out, int require_ready) {
    const unsigned char *p = base;
    if (!base || !out) return SHM_SEG_BAD_ARG;
    memset(out, 0, offsetof(shm_seg_info, dtype) + 1);
    if (len < SHM_SEG_MIN_SIZE) return SHM_SEG_TOO_SMALL;
    /* ready first (acquire), so the fields read below are the complete ones. */
    out->ready = shm_seg_ready(base, len);
    if (memcmp(p + OFF_MAGIC, MAGIC, 8) != 0) return SHM_SEG_BAD_MAGIC;
    if (out->ready > 1) return SHM_SEG_BAD_READY; /* the creator writes only 0 and 1 */
    out->version_major = ld16(p, OFF_VMAJOR);
    out->version_minor = ld16(p, OFF_VMINOR);
    out->kind = ld32(p, OFF_KIND);
    out->header_size = ld32(p, OFF_HSIZE);
    out->total_size = ld64(p, OFF_TOTAL);
    out->creator_pid = ld32(p, OFF_PID);
    out->mode = ld32(p, OFF_MODE);
    out->creator_start = ld64(p, OFF_START);
    out->created_ns = ld64(p, OFF_CREATED);
    out->nonce = ld64(p, OFF_NONCE);
    memcpy(out->name, p + OFF_NAME, NAME_FIELD);
    out->objects_len = ld32(p, OFF_OBJLEN);
    memcpy(out->objects, p + OFF_OBJECTS, OBJECTS_FIELD);
    if (out->version_major != SHM_SEG_LAYOUT_MAJOR) return SHM_SEG_BAD_VERSION;
    if (out->kind != SHM_SEG_KIND_ARRAY && !ringlike(out->kind)) return SHM_SEG_BAD_KIND;
    if (out->name[NAME_FIELD - 1] != 0 || !check_name(out->name)) {
        out->name[NAME_FIELD - 1] = 0;
        return SHM_SEG_BAD_NAME;
    }
    if (out->objects[OBJECTS_FIELD - 1] != 0 || !check_objects(out->objects, out->objects_len, out->name)) {
        out->objects[OBJECTS_FIELD - 1] = 0;
        return SHM_SEG_BAD_OBJECTS;
    }
    if (require_ready && out->ready != 1) return SHM_SEG_NOT_READY;
    if (out->total_size < SHM_SEG_MIN_SIZE || out->total_size > len) return SHM_SEG_BAD_TOTAL_SIZE;
    if (ringlike(out->kind)) {
        if (out->header_size != SHM_SEG_RING_HEADER || out->total_size <= SHM_SEG_RING_HEADER)
            return SHM_SEG_BAD_HEADER_SIZE;
        return SHM_SEG_OK;
    }
    out->data_offset = ld64(p, OFF_DATA_OFFSET);
    out->nbytes = ld64(p, OFF_NBYTES);
    out->ndim = ld32(p, OFF_NDIM);
    out->order = ld32(p, OFF_ORDER);
    out->dtype_len = ld32(p, OFF_DTYPE_LEN);
    if (out->ndim > SHM_SEG_MAXDIMS) return SHM_SEG_BAD_NDIM;
    if (out->order > 1) return SHM_SEG_BAD_ORDER;
    if (out->dtype_len == 0 || out->dtype_len > SHM_SEG_DTYPE_MAX) return SHM_SEG_BAD_DTYPE;
    uint64_t dtype_end = (uint64_t)OFF_DTYPE + out->dtype_len, data_end;
    if (dtype_end > out->total_size) return SHM_SEG_BAD_DTYPE;
    memcpy(out->dtype, p + OFF_DTYPE, out->dtype_len);
    out->dtype[out->dtype_len] = 0;
    if (strlen(out->dtype) != out->dtype_len) return SHM_SEG_BAD_DTYPE;
    if (out->data_offset != shm_seg_array_data_offset(out->dtype_len, out->nbytes))
        return SHM_SEG_BAD_DATA_OFFSET;
    if (out->header_size != out->data_offset) return SHM_SEG_BAD_HEADER_SIZE;
    if (__builtin_add_overflow(out->data_offset, out->nbytes, &data_end) || data_end > out->total_size)
        return SHM_SEG_BAD_NBYTES;
    for (uint32_t i = 0; i < out->ndim; i++) out->shape[i] = ld64(p, OFF_SHAPE + 8 * i);
    /* The element count must fit in the data; the itemsize check is the caller's (it parses the
     * dtype), but an element count that overflows is caught here. */
    uint64_t count = 1;
    for (uint32_t i = 0; i < out->ndim; i++)
        if (__builtin_mul_overflow(count, out->shape[i], &count)) return SHM_SEG_BAD_SHAPE;
    if (count > out->nbytes && out->nbytes != 0) return SHM_SEG_BAD_SHAPE;
    return SHM_SEG_OK;
}

static int ofd_lock_range(int fd, int cmd, short type, uint64_t byte, uint64_t len, short *found) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)byte;
    fl.l_len = (off_t)len;
    fl.l_pid = 0; /* required 0 for OFD locks */
    if (fcntl(fd, cmd, &fl) != 0) return -errno;
    if (found) *found = fl.l_type;
    return 0;
}

static int ofd_lock(int fd, int cmd, short type, uint64_t byte, short *found) {
    return ofd_lock_range(fd, cmd, type, byte, 1, found);
}

int shm_seg_lock_try(int fd, uint64_t byte) {
    int rc = ofd_lock(fd, F_OFD_SETLK, F_WRLCK, byte, NULL);
    if (rc == -EAGAIN || rc == -EACCES) return 1;
    return rc;
}

int shm_seg_lock_probe(int fd, uint64_t byte) {
    short found = F_UNLCK;
    int rc = ofd_lock(fd, F_OFD_GETLK, F_WRLCK, byte, &found);
    if (rc) return rc;
    return found != F_UNLCK;
}

int shm_seg_lock_probe_range(int fd, uint64_t start, uint64_t len) {
    short found = F_UNLCK;
    if (len == 0) return SHM_SEG_BAD_ARG;
    int rc = ofd_lock_range(fd, F_OFD_GETLK, F_WRLCK, start, len, &found);
    if (rc) return rc;
    return found != F_UNLCK;
}

int shm_seg_lock_release(int fd, uint64_t byte) { return ofd_lock(fd, F_OFD_SETLK, F_UNLCK, byte, NULL); }

int shm_seg_protect(void *addr, uint64_t len, int readonly) {
    if (mprotect(addr, (size_t)len, readonly ? PROT_READ : (PROT_READ | PROT_WRITE)) != 0) return -errno;
    return 0;
}

uint64_t shm_seg_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
