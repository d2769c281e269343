/*
 * C-level stress test for csrc/ring.c: threads share one mmap'd region.
 *
 *   ring_stress [test ...]    tests: o2o wq wake recover eos fuzz (default: all)
 *   SHM_RING_STRESS_SCALE=0.1 scales iteration counts (TSan is slow)
 *   SHM_RING_STRESS_SEED=N    PRNG seed (default fixed)
 *
 * Exits 0 when every check passed; prints the first failure and exits 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../ring.h"

#define U1 3u /* "|u1" */
#define WAIT_S 20 /* a sleep longer than this is a lost wake-up */

static double g_scale = 1.0;
static uint64_t g_seed = 0x5eed1234abcdULL;

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    exit(1);
}

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (!(cond))                                                                              \
            fail(__VA_ARGS__);                                                                    \
    } while (0)

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rnd(rng_t *g) { return g->s = splitmix(g->s); }
static uint64_t rndn(rng_t *g, uint64_t n) { return n ? rnd(g) % n : 0; }

static uint64_t scaled(uint64_t n)
{
    uint64_t v = (uint64_t)((double)n * g_scale);
    return v ? v : 1;
}

/* ------------------------------------------------------------- region */

typedef struct {
    unsigned char *map;
    size_t map_len;
    unsigned char *base;
    uint64_t len;
} region_t;

/* The ring block with a PROT_NONE page on each side: any access outside
 * [base, base + len) faults, sanitizer or not. */
static void region_new(region_t *g, const shm_ring_params *p)
{
    uint64_t size = shm_ring_size(p);
    CHECK(size != 0 && size % 4096 == 0, "shm_ring_size(%u, cap %u) = %llu", p->mode, p->capacity,
          (unsigned long long)size);
    g->map_len = (size_t)size + 2 * 4096;
    g->map = mmap(NULL, g->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(g->map != MAP_FAILED, "mmap");
    CHECK(mprotect(g->map, 4096, PROT_NONE) == 0, "mprotect low guard");
    CHECK(mprotect(g->map + 4096 + size, 4096, PROT_NONE) == 0, "mprotect high guard");
    g->base = g->map + 4096;
    g->len = size;
    CHECK(shm_ring_format(g->base, g->len, p) == SHM_RING_OK, "format");
}

static void region_free(region_t *g) { munmap(g->map, g->map_len); }

static shm_ring_params params(uint32_t mode, uint32_t cap, uint32_t maxp, uint64_t slot_bytes)
{
    shm_ring_params p = {mode, 0, cap, maxp, slot_bytes};
    return p;
}

static void attach_reg(shm_ring_t *r, region_t *g, uint32_t index, uint32_t role)
{
    int rc = shm_ring_attach(r, g->base, g->len, NULL);
    CHECK(rc == SHM_RING_OK, "attach: %s", shm_ring_strerror(rc));
    rc = shm_ring_register(r, index, role, (uint32_t)getpid(), index);
    CHECK(rc == SHM_RING_OK, "register %u: %s", index, shm_ring_strerror(rc));
}

static unsigned char *slot_ptr(const shm_ring_t *r, uint64_t slot)
{
    return r->payload + slot * r->info.slot_stride;
}

static shm_ring_slot *slot_meta(const shm_ring_t *r, uint64_t slot) { return &r->slots[slot]; }

/* ------------------------------------------------------- frame content */

static uint64_t frame_size(uint64_t tag, uint64_t slot_bytes) { return 1 + splitmix(tag) % slot_bytes; }

static void fill(unsigned char *dst, uint64_t n, uint64_t tag)
{
    uint64_t w = splitmix(tag ^ 0xabcdef);
    for (uint64_t i = 0; i < n; i++) {
        if ((i & 7) == 0)
            w = splitmix(w + i);
        dst[i] = (unsigned char)(w >> ((i & 7) * 8));
    }
}

static int verify(const unsigned char *src, uint64_t n, uint64_t tag)
{
    uint64_t w = splitmix(tag ^ 0xabcdef);
    for (uint64_t i = 0; i < n; i++) {
        if ((i & 7) == 0)
            w = splitmix(w + i);
        if (src[i] != (unsigned char)(w >> ((i & 7) * 8)))
            return 0;
    }
    return 1;
}

/* ------------------------------------------------------------ waiting */

typedef struct {
    sem_t data, space;
    atomic_ulong sleeps;
    uint64_t spin_ns;
} signals_t;

static void sig_init(signals_t *s, uint64_t spin_ns)
{
    sem_init(&s->data, 0, 0);
    sem_init(&s->space, 0, 0);
    atomic_init(&s->sleeps, 0);
    s->spin_ns = spin_ns;
}

static void sig_destroy(signals_t *s)
{
    sem_destroy(&s->data);
    sem_destroy(&s->space);
}

static void sleep_on(signals_t *s, sem_t *sem, const char *who)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += WAIT_S;
    atomic_fetch_add_explicit(&s->sleeps, 1, memory_order_relaxed);
    while (sem_timedwait(sem, &ts) != 0) {
        if (errno == ETIMEDOUT)
            fail("%s slept %d s: lost wake-up", who, WAIT_S);
        CHECK(errno == EINTR, "sem_timedwait: %s", strerror(errno));
    }
}

static void post_n(sem_t *sem, int n)
{
    for (int i = 0; i < n; i++)
        sem_post(sem);
}

/* Claim with spin, then the eventcount: arm, re-check, sleep, disarm. */
static int64_t claim_wait(shm_ring_t *r, signals_t *s)
{
    for (;;) {
        int64_t rc = shm_ring_claim_spin(r, s->spin_ns);
        if (rc != SHM_RING_FULL)
            return rc;
        CHECK(shm_ring_arm(r, SHM_RING_WAIT_SPACE) == 0, "arm");
        rc = shm_ring_claim(r);
        if (rc == SHM_RING_FULL)
            sleep_on(s, &s->space, "producer");
        CHECK(shm_ring_disarm(r, SHM_RING_WAIT_SPACE) == 0, "disarm");
        if (rc != SHM_RING_FULL)
            return rc;
    }
}

typedef struct {
    uint32_t slot;
    uint64_t pos, tag, nbytes;
} held_t;

typedef struct {
    held_t h[64];
    int n;
} holds_t;

static void release_one(shm_ring_t *r, signals_t *s, holds_t *hs, int i, int check_payload)
{
    held_t h = hs->h[i];
    if (check_payload)
        CHECK(verify(slot_ptr(r, h.slot), h.nbytes, h.tag),
              "payload of held frame tag %llx changed under the holder",
              (unsigned long long)h.tag);
    int rc = shm_ring_release(r, h.slot, h.pos);
    CHECK(rc == 0 || rc == 1, "release(%u, %llu): %s", h.slot, (unsigned long long)h.pos,
          shm_ring_strerror(rc));
    if (rc == 1)
        sem_post(&s->space);
    CHECK(shm_ring_release(r, h.slot, h.pos) == SHM_RING_BAD_ARG, "double release not caught");
    hs->h[i] = hs->h[--hs->n];
}

static void release_all(shm_ring_t *r, signals_t *s, holds_t *hs)
{
    while (hs->n)
        release_one(r, s, hs, hs->n - 1, 1);
}

/* Acquire with spin, then the eventcount.  Holds are released before
 * sleeping: a sleeping holder could block the producer it waits for. */
static int64_t acquire_wait(shm_ring_t *r, signals_t *s, shm_ring_frame *f, holds_t *hs)
{
    for (;;) {
        int64_t rc = shm_ring_acquire_spin(r, f, s->spin_ns);
        if (f->wake_producers)
            sem_post(&s->space);
        if (rc != SHM_RING_EMPTY)
            return rc;
        release_all(r, s, hs);
        CHECK(shm_ring_arm(r, SHM_RING_WAIT_DATA) == 0, "arm");
        rc = shm_ring_acquire(r, f);
        if (f->wake_producers)
            sem_post(&s->space);
        if (rc == SHM_RING_EMPTY)
            sleep_on(s, &s->data, "consumer");
        CHECK(shm_ring_disarm(r, SHM_RING_WAIT_DATA) == 0, "disarm");
        if (rc != SHM_RING_EMPTY)
            return rc;
    }
}

/* ===================================================== ONE_TO_ONE test */

typedef struct {
    region_t *g;
    signals_t *sig;
    uint64_t n;
    uint64_t seed;
    uint64_t received;
} o2o_ctx;

static void *o2o_producer(void *arg)
{
    o2o_ctx *c = arg;
    shm_ring_t r;
    attach_reg(&r, c->g, 0, SHM_RING_ROLE_PRODUCER);
    rng_t g = {c->seed};
    static unsigned char buf[1 << 17]; /* >= slot_bytes of every o2o run */
    for (uint64_t i = 0; i < c->n; i++) {
        uint64_t size = frame_size(i, r.info.slot_bytes);
        CHECK(shm_ring_set_schema(&r, U1, 1, &size) == (int64_t)size, "set_schema");
        if (rndn(&g, 16) == 0) { /* a loan that is aborted: never visible */
            int64_t slot = claim_wait(&r, c->sig);
            CHECK(slot >= 0, "claim: %s", shm_ring_strerror((int)slot));
            memset(slot_ptr(&r, (uint64_t)slot), 0xEE, size);
            CHECK(shm_ring_abort(&r) == 0, "abort");
        }
        int post;
        if (rndn(&g, 2)) {
            int64_t slot = claim_wait(&r, c->sig);
            CHECK(slot >= 0, "claim: %s", shm_ring_strerror((int)slot));
            fill(slot_ptr(&r, (uint64_t)slot), size, i);
            post = shm_ring_commit(&r, i);
        } else {
            fill(buf, size, i);
            int64_t rc = shm_ring_send(&r, buf, size, i, c->sig->spin_ns);
            if (rc == SHM_RING_FULL) { /* no claim held: wait for space the usual way */
                int64_t slot = claim_wait(&r, c->sig);
                CHECK(slot >= 0, "claim: %s", shm_ring_strerror((int)slot));
                memcpy(slot_ptr(&r, (uint64_t)slot), buf, size);
                rc = shm_ring_commit(&r, i);
            }
            CHECK(rc >= 0, "send: %s", shm_ring_strerror((int)rc));
            post = (int)(rc & 1);
        }
        CHECK(post == 0 || post == 1, "commit: %s", shm_ring_strerror(post));
        if (post)
            sem_post(&c->sig->data);
    }
    int w = shm_ring_end(&r);
    CHECK(w >= 0, "end: %s", shm_ring_strerror(w));
    post_n(&c->sig->data, w);
    CHECK(shm_ring_claim(&r) == SHM_RING_ENDED, "claim after end");
    CHECK(shm_ring_unregister(&r) >= 0, "unregister");
    return NULL;
}

static void *o2o_consumer(void *arg)
{
    o2o_ctx *c = arg;
    shm_ring_t r;
    attach_reg(&r, c->g, 1, SHM_RING_ROLE_CONSUMER);
    shm_ring_set_debug(&r, 1);
    rng_t g = {c->seed ^ 77};
    holds_t hs = {.n = 0};
    shm_ring_frame f;
    uint64_t expect = 0;
    int max_hold = (int)r.mask; /* capacity - 1 */
    for (;;) {
        int64_t rc = acquire_wait(&r, c->sig, &f, &hs);
        if (rc == SHM_RING_ENDED)
            break;
        CHECK(rc >= 0, "acquire: %s", shm_ring_strerror((int)rc));
        CHECK(f.pos == expect && f.tag == expect, "order: got pos %llu tag %llu, want %llu",
              (unsigned long long)f.pos, (unsigned long long)f.tag, (unsigned long long)expect);
        uint64_t size = frame_size(expect, r.info.slot_bytes);
        CHECK(f.nbytes == size && f.ndim == 1 && f.shape[0] == size && f.dtype == U1,
              "meta of frame %llu", (unsigned long long)expect);
        CHECK(f.slot == (uint32_t)rc, "slot");
        CHECK(verify(slot_ptr(&r, f.slot), f.nbytes, f.tag), "payload of frame %llu",
              (unsigned long long)expect);
        expect++;
        hs.h[hs.n++] = (held_t){f.slot, f.pos, f.tag, f.nbytes};
        int target = (int)rndn(&g, (uint64_t)max_hold + 1);
        while (hs.n > target || hs.n >= max_hold)
            release_one(&r, c->sig, &hs, (int)rndn(&g, (uint64_t)hs.n), 1);
    }
    release_all(&r, c->sig, &hs);
    CHECK(shm_ring_acquire(&r, &f) == SHM_RING_ENDED, "ENDED is sticky");
    c->received = expect;
    CHECK(shm_ring_unregister(&r) >= 0, "unregister");
    return NULL;
}

static void test_o2o(uint64_t spin_ns, uint32_t cap, uint64_t slot_bytes, uint64_t n)
{
    shm_ring_params p = params(SHM_RING_MODE_ONE_TO_ONE, cap, 4, slot_bytes);
    region_t g;
    region_new(&g, &p);
    signals_t sig;
    sig_init(&sig, spin_ns);
    o2o_ctx c = {&g, &sig, n, g_seed + cap, 0};
    pthread_t tp, tc;
    pthread_create(&tc, NULL, o2o_consumer, &c);
    pthread_create(&tp, NULL, o2o_producer, &c);
    pthread_join(tp, NULL);
    pthread_join(tc, NULL);
    CHECK(c.received == n, "o2o received %llu of %llu", (unsigned long long)c.received,
          (unsigned long long)n);
    printf("  o2o cap=%u slot_bytes=%llu spin=%lluns: %llu frames in order, %lu sleeps\n", cap,
           (unsigned long long)slot_bytes, (unsigned long long)spin_ns, (unsigned long long)n,
           atomic_load(&sig.sleeps));
    sig_destroy(&sig);
    region_free(&g);
}

/* ===================================================== WORK_QUEUE test */

#define WQ_MAXP 8

typedef struct {
    region_t *g;
    signals_t *sig;
    uint32_t nprod, ncons;
    uint64_t n; /* frames per producer */
    atomic_uchar *seen; /* [nprod * n] */
    atomic_ulong received, aborted;
    atomic_uint next_index;
} wq_ctx;

static void *wq_producer(void *arg)
{
    wq_ctx *c = arg;
    uint32_t idx = atomic_fetch_add(&c->next_index, 1);
    uint64_t id = idx; /* producers take indexes 0 .. nprod-1 */
    shm_ring_t r;
    attach_reg(&r, c->g, idx, SHM_RING_ROLE_PRODUCER);
    rng_t g = {g_seed ^ (id * 1000003)};
    unsigned char buf[512];
    for (uint64_t i = 0; i < c->n; i++) {
        uint64_t tag = (id << 32) | i;
        uint64_t size = frame_size(tag, r.info.slot_bytes);
        uint64_t shape[2] = {size, 1};
        uint32_t ndim = 1 + (uint32_t)(tag & 1);
        CHECK(shm_ring_set_schema(&r, U1, ndim, shape) == (int64_t)size, "set_schema");
        if (rndn(&g, 10) == 0) { /* tombstone */
            int64_t slot = claim_wait(&r, c->sig);
            CHECK(slot >= 0, "claim: %s", shm_ring_strerror((int)slot));
            memset(slot_ptr(&r, (uint64_t)slot), 0xEE, size);
            int post = shm_ring_abort(&r);
            CHECK(post == 0 || post == 1, "abort");
            if (post)
                sem_post(&c->sig->data);
            atomic_fetch_add(&c->aborted, 1);
        }
        int post;
        if (rndn(&g, 2)) {
            int64_t slot = claim_wait(&r, c->sig);
            CHECK(slot >= 0, "claim: %s", shm_ring_strerror((int)slot));
            fill(slot_ptr(&r, (uint64_t)slot), size, tag);
            post = shm_ring_commit(&r, tag);
        } else {
            fill(buf, size, tag);
            int64_t rc = shm_ring_send(&r, buf, size, tag, c->sig->spin_ns);
            if (rc == SHM_RING_FULL) { /* no claim held: wait for space the usual way */
                int64_t slot = claim_wait(&r, c->sig);
                CHECK(slot >= 0, "claim: %s", shm_ring_strerror((int)slot));
                memcpy(slot_ptr(&r, (uint64_t)slot), buf, size);
                rc = shm_ring_commit(&r, tag);
            }
            CHECK(rc >= 0, "send: %s", shm_ring_strerror((int)rc));
            post = (int)(rc & 1);
        }
        CHECK(post == 0 || post == 1, "commit: %s", shm_ring_strerror(post));
        if (post)
            sem_post(&c->sig->data);
    }
    int w = shm_ring_end(&r);
    CHECK(w >= 0, "end: %s", shm_ring_strerror(w));
    post_n(&c->sig->data, w);
    CHECK(shm_ring_unregister(&r) >= 0, "unregister");
    return NULL;
}

static void *wq_consumer(void *arg)
{
    wq_ctx *c = arg;
    uint32_t idx = atomic_fetch_add(&c->next_index, 1);
    shm_ring_t r;
    attach_reg(&r, c->g, idx, SHM_RING_ROLE_CONSUMER);
    rng_t g = {g_seed ^ (idx * 7919)};
    holds_t hs = {.n = 0};
    shm_ring_frame f;
    int max_hold = r.mask > 3 ? 3 : (int)r.mask - 1; /* keep one acquire below the limit */
    for (;;) {
        int64_t rc = acquire_wait(&r, c->sig, &f, &hs);
        if (rc == SHM_RING_ENDED)
            break;
        CHECK(rc >= 0, "acquire: %s", shm_ring_strerror((int)rc));
        uint64_t id = f.tag >> 32, i = f.tag & 0xffffffffu;
        CHECK(id < c->nprod && i < c->n, "tag %llx out of range", (unsigned long long)f.tag);
        uint64_t size = frame_size(f.tag, r.info.slot_bytes);
        CHECK(f.nbytes == size && f.ndim == 1 + (f.tag & 1) && f.shape[0] == size,
              "meta of tag %llx", (unsigned long long)f.tag);
        CHECK(verify(slot_ptr(&r, f.slot), f.nbytes, f.tag), "payload of tag %llx",
              (unsigned long long)f.tag);
        CHECK(atomic_exchange(&c->seen[id * c->n + i], 1) == 0, "tag %llx received twice",
              (unsigned long long)f.tag);
        atomic_fetch_add(&c->received, 1);
        hs.h[hs.n++] = (held_t){f.slot, f.pos, f.tag, f.nbytes};
        int target = (int)rndn(&g, (uint64_t)max_hold + 1);
        while (hs.n > target)
            release_one(&r, c->sig, &hs, (int)rndn(&g, (uint64_t)hs.n), 1);
    }
    release_all(&r, c->sig, &hs);
    CHECK(shm_ring_unregister(&r) >= 0, "unregister");
    return NULL;
}

static void test_wq(uint32_t nprod, uint32_t ncons, uint32_t cap, uint64_t spin_ns, uint64_t n)
{
    shm_ring_params p = params(SHM_RING_MODE_WORK_QUEUE, cap, WQ_MAXP, 300);
    region_t g;
    region_new(&g, &p);
    signals_t sig;
    sig_init(&sig, spin_ns);
    wq_ctx c = {.g = &g, .sig = &sig, .nprod = nprod, .ncons = ncons, .n = n};
    c.seen = calloc((size_t)(nprod * n), 1);
    atomic_init(&c.received, 0);
    atomic_init(&c.aborted, 0);
    atomic_init(&c.next_index, 0);
    pthread_t t[WQ_MAXP];
    /* producers first so they take indexes 0 .. nprod-1 */
    for (uint32_t i = 0; i < nprod; i++) {
        pthread_create(&t[i], NULL, wq_producer, &c);
        while (atomic_load(&c.next_index) <= i)
            sched_yield();
    }
    for (uint32_t i = 0; i < ncons; i++)
        pthread_create(&t[nprod + i], NULL, wq_consumer, &c);
    for (uint32_t i = 0; i < nprod + ncons; i++)
        pthread_join(t[i], NULL);
    CHECK(atomic_load(&c.received) == nprod * n, "wq received %lu of %llu",
          atomic_load(&c.received), (unsigned long long)(nprod * n));
    for (uint64_t k = 0; k < nprod * n; k++)
        CHECK(atomic_load(&c.seen[k]) == 1, "frame %llu lost", (unsigned long long)k);
    shm_ring_t r;
    CHECK(shm_ring_attach(&r, g.base, g.len, NULL) == 0, "attach");
    shm_ring_status_info st;
    shm_ring_status(&r, &st);
    CHECK(st.eos == 1 && st.dropped == 0 && st.producers_ever == nprod, "wq final status");
    CHECK(st.enqueue_pos == st.dequeue_pos, "wq: cursors differ at the end");
    printf("  wq %ux%u cap=%u spin=%lluns: %llu frames exactly once, %lu tombstones, %lu sleeps\n",
           nprod, ncons, cap, (unsigned long long)spin_ns, (unsigned long long)(nprod * n),
           atomic_load(&c.aborted), atomic_load(&sig.sleeps));
    free(c.seen);
    sig_destroy(&sig);
    region_free(&g);
}

/* ========================================= recovery (dead participants) */

typedef struct {
    region_t *g;
    uint32_t index;
    int take;
    held_t got[8];
} dying_ctx;

/* A consumer that takes `take` frames and "dies" holding them. */
static void *dying_consumer(void *arg)
{
    dying_ctx *d = arg;
    shm_ring_t r;
    attach_reg(&r, d->g, d->index, SHM_RING_ROLE_CONSUMER);
    shm_ring_frame f;
    for (int k = 0; k < d->take; k++) {
        int64_t rc = shm_ring_acquire(&r, &f);
        CHECK(rc >= 0, "dying consumer acquire: %s", shm_ring_strerror((int)rc));
        d->got[k] = (held_t){f.slot, f.pos, f.tag, f.nbytes};
    }
    return NULL; /* no release, no unregister */
}

typedef struct {
    region_t *g;
    signals_t *sig;
    uint64_t n;
    atomic_ulong sent;
} blocked_ctx;

static void *blocked_producer(void *arg)
{
    blocked_ctx *b = arg;
    shm_ring_t r;
    attach_reg(&r, b->g, 0, SHM_RING_ROLE_PRODUCER);
    uint64_t one = 8;
    shm_ring_set_schema(&r, U1, 1, &one);
    for (uint64_t i = 0; i < b->n; i++) {
        int64_t slot = claim_wait(&r, b->sig);
        CHECK(slot >= 0, "claim: %s", shm_ring_strerror((int)slot));
        fill(slot_ptr(&r, (uint64_t)slot), 8, 1000 + i);
        if (shm_ring_commit(&r, 1000 + i) == 1)
            sem_post(&b->sig->data);
        atomic_store(&b->sent, i + 1);
    }
    return NULL; /* stays registered */
}

static void test_recover_wq(void)
{
    const uint32_t cap = 8;
    shm_ring_params p = params(SHM_RING_MODE_WORK_QUEUE, cap, 8, 64);
    region_t g;
    region_new(&g, &p);
    signals_t sig;
    sig_init(&sig, 0);
    uint64_t dropped;
    shm_ring_frame f;

    /* 1. A consumer dies holding 3 frames while the producer blocks on a full
     *    ring; recovery from another thread frees them and the producer runs. */
    blocked_ctx b = {&g, &sig, cap + 3, 0};
    atomic_init(&b.sent, 0);
    pthread_t tp, tc;
    dying_ctx d = {&g, 1, 3, {{0}}};
    shm_ring_t cb; /* a live consumer holding one frame */
    attach_reg(&cb, &g, 2, SHM_RING_ROLE_CONSUMER);
    pthread_create(&tp, NULL, blocked_producer, &b);
    /* wait for the ring to fill */
    for (int k = 0; k < 100000 && b.sent < cap; k++)
        usleep(100);
    CHECK(b.sent == cap, "producer did not fill the ring (%llu)", (unsigned long long)b.sent);
    pthread_create(&tc, NULL, dying_consumer, &d);
    pthread_join(tc, NULL);
    int64_t bslot = shm_ring_acquire(&cb, &f);
    CHECK(bslot >= 0, "live consumer acquire");
    held_t bh = {f.slot, f.pos, f.tag, f.nbytes};
    usleep(20000);
    CHECK(b.sent == cap, "producer ran past a full ring");
    shm_ring_t rec;
    CHECK(shm_ring_attach(&rec, g.base, g.len, NULL) == 0, "attach recoverer");
    int bits = shm_ring_recover(&rec, 1, &dropped);
    CHECK(bits >= 0 && dropped == 3, "recover consumer: rc %d dropped %llu", bits,
          (unsigned long long)dropped);
    if (bits & SHM_RING_POST_SPACE)
        sem_post(&sig.space);
    /* 3 freed slots: the producer gets exactly 3 further frames in */
    for (int k = 0; k < 100000 && b.sent < cap + 3; k++)
        usleep(100);
    pthread_join(tp, NULL);
    CHECK(b.sent == cap + 3, "producer did not proceed after recovery");
    shm_ring_participant_info pi;
    CHECK(shm_ring_participant(&rec, 1, &pi) == 0 && pi.state == SHM_RING_PART_DEAD,
          "dead consumer entry not DEAD");
    shm_ring_status_info st;
    shm_ring_status(&rec, &st);
    CHECK(st.dropped == 3, "dropped counter %llu", (unsigned long long)st.dropped);
    /* the live holder was not robbed */
    CHECK(verify(slot_ptr(&cb, bh.slot), 8, bh.tag), "live holder's frame was overwritten");
    CHECK(shm_ring_release(&cb, bh.slot, bh.pos) >= 0, "live holder release");

    /* 2. A consumer killed between its CAS and its holder record: simulate by
     *    un-recording holder_pos; pending_pos still names the position. */
    dying_ctx d2 = {&g, 3, 1, {{0}}};
    pthread_create(&tc, NULL, dying_consumer, &d2);
    pthread_join(tc, NULL);
    atomic_store(&slot_meta(&rec, d2.got[0].slot)->holder_pos, UINT64_MAX);
    atomic_store(&slot_meta(&rec, d2.got[0].slot)->holder, 0);
    bits = shm_ring_recover(&rec, 3, &dropped);
    CHECK(bits >= 0 && dropped == 1, "recover unrecorded holder: dropped %llu",
          (unsigned long long)dropped);
    CHECK(atomic_load(&slot_meta(&rec, d2.got[0].slot)->seq) == d2.got[0].pos + cap,
          "unrecorded hold not released");

    /* drain what is left with the live consumer */
    while (shm_ring_acquire(&cb, &f) >= 0)
        CHECK(shm_ring_release(&cb, f.slot, f.pos) >= 0, "release");

    /* 3. A producer dies holding a claim: consumers are blocked behind it
     *    (head-of-line) until recovery publishes a tombstone. */
    shm_ring_t p0, q;
    attach_reg(&p0, &g, 4, SHM_RING_ROLE_PRODUCER);
    attach_reg(&q, &g, 5, SHM_RING_ROLE_PRODUCER);
    uint64_t eight = 8;
    shm_ring_set_schema(&p0, U1, 1, &eight);
    shm_ring_set_schema(&q, U1, 1, &eight);
    CHECK(shm_ring_claim(&q) >= 0, "q claim");
    /* q "dies" here: never touches its handle again */
    unsigned char buf[8];
    fill(buf, 8, 4242);
    CHECK(shm_ring_send(&p0, buf, 8, 4242, 0) >= 0, "p0 send");
    CHECK(shm_ring_acquire(&cb, &f) == SHM_RING_EMPTY, "frame visible past a claimed slot");
    shm_ring_arm(&cb, SHM_RING_WAIT_DATA);
    bits = shm_ring_recover(&rec, 5, &dropped);
    shm_ring_disarm(&cb, SHM_RING_WAIT_DATA);
    CHECK(bits == SHM_RING_POST_DATA && dropped == 0, "recover producer: bits %d", bits);
    CHECK(shm_ring_acquire(&cb, &f) >= 0 && f.tag == 4242, "frame behind tombstone");
    CHECK(shm_ring_release(&cb, f.slot, f.pos) >= 0, "release");
    CHECK(shm_ring_participant(&rec, 5, &pi) == 0 && pi.state == SHM_RING_PART_DEAD,
          "dead producer not DEAD");

    /* 4. Same, killed between the CAS and the claimant record. */
    shm_ring_t q2;
    attach_reg(&q2, &g, 6, SHM_RING_ROLE_PRODUCER);
    shm_ring_set_schema(&q2, U1, 1, &eight);
    int64_t qs = shm_ring_claim(&q2);
    CHECK(qs >= 0, "q2 claim");
    atomic_store(&slot_meta(&rec, (uint64_t)qs)->claim_pos, UINT64_MAX);
    CHECK(shm_ring_send(&p0, buf, 8, 4242, 0) >= 0, "p0 send");
    CHECK(shm_ring_acquire(&cb, &f) == SHM_RING_EMPTY, "frame visible past a claimed slot");
    bits = shm_ring_recover(&rec, 6, &dropped);
    CHECK(bits >= 0, "recover unrecorded claimant");
    CHECK(shm_ring_acquire(&cb, &f) >= 0 && f.tag == 4242, "frame behind tombstone (2)");
    CHECK(shm_ring_release(&cb, f.slot, f.pos) >= 0, "release");
    CHECK(shm_ring_recover(&rec, 6, &dropped) == 0 && dropped == 0, "second recover is a no-op");
    sig_destroy(&sig);
    region_free(&g);
    printf("  recover wq: dead holder (3 dropped, producer resumed), unrecorded holder, dead "
           "claimant (tombstone), unrecorded claimant\n");
}

static void test_recover_o2o(void)
{
    const uint32_t cap = 4;
    shm_ring_params p = params(SHM_RING_MODE_ONE_TO_ONE, cap, 4, 64);
    region_t g;
    region_new(&g, &p);
    shm_ring_t prod, c1, c2, rec;
    shm_ring_frame f;
    uint64_t dropped, eight = 8, tag = 0;
    unsigned char buf[8];
    attach_reg(&prod, &g, 0, SHM_RING_ROLE_PRODUCER);
    attach_reg(&c1, &g, 1, SHM_RING_ROLE_CONSUMER);
    CHECK(shm_ring_attach(&c2, g.base, g.len, NULL) == 0, "attach");
    CHECK(shm_ring_attach(&rec, g.base, g.len, NULL) == 0, "attach");
    shm_ring_set_schema(&prod, U1, 1, &eight);
    for (; tag < cap; tag++) {
        fill(buf, 8, tag);
        CHECK(shm_ring_send(&prod, buf, 8, tag, 0) >= 0, "send");
    }
    CHECK(shm_ring_send(&prod, buf, 8, 99, 0) == SHM_RING_FULL, "full");
    CHECK(shm_ring_acquire(&c1, &f) >= 0 && f.tag == 0, "c1 take 0");
    CHECK(shm_ring_acquire(&c1, &f) >= 0 && f.tag == 1, "c1 take 1");
    /* c1 dies holding frames 0 and 1; a second consumer is refused */
    CHECK(shm_ring_register(&c2, 2, SHM_RING_ROLE_CONSUMER, 1, 1) == SHM_RING_BUSY,
          "second 1:1 consumer admitted");
    CHECK(shm_ring_role_owner(&c2, SHM_RING_ROLE_CONSUMER) == 1, "role_owner");
    int bits = shm_ring_recover(&rec, 1, &dropped);
    CHECK(bits >= 0 && dropped == 2, "recover o2o consumer: dropped %llu",
          (unsigned long long)dropped);
    CHECK(shm_ring_role_owner(&c2, SHM_RING_ROLE_CONSUMER) == SHM_RING_NO_INDEX, "owner kept");
    CHECK(shm_ring_register(&c2, 2, SHM_RING_ROLE_CONSUMER, 1, 1) == 0, "takeover");
    for (int k = 0; k < 2; k++, tag++) { /* the two freed slots */
        fill(buf, 8, tag);
        CHECK(shm_ring_send(&prod, buf, 8, tag, 0) >= 0, "send after recovery");
    }
    /* producer dies between publishing seq and mirroring enqueue_pos */
    int64_t s = shm_ring_claim(&prod);
    CHECK(s == SHM_RING_FULL, "ring should be full");
    CHECK(shm_ring_acquire(&c2, &f) >= 0 && f.tag == 2, "c2 resumes at frame 2");
    CHECK(shm_ring_release(&c2, f.slot, f.pos) >= 0, "release");
    fill(buf, 8, tag);
    CHECK(shm_ring_send(&prod, buf, 8, tag, 0) >= 0, "send");
    tag++;
    atomic_fetch_sub(&rec.ctrl->enqueue_pos, 1); /* the unmirrored last commit */
    CHECK(shm_ring_recover(&rec, 0, &dropped) == 0, "recover producer");
    shm_ring_participant_info pi;
    CHECK(shm_ring_participant(&rec, 0, &pi) == 0 && pi.state == SHM_RING_PART_DEAD,
          "dead producer state");
    shm_ring_t p2;
    attach_reg(&p2, &g, 3, SHM_RING_ROLE_PRODUCER);
    shm_ring_set_schema(&p2, U1, 1, &eight);
    for (uint64_t want = 3; want < tag; want++) {
        CHECK(shm_ring_acquire(&c2, &f) >= 0 && f.tag == want, "order after takeover");
        CHECK(shm_ring_release(&c2, f.slot, f.pos) >= 0, "release");
    }
    fill(buf, 8, tag);
    CHECK(shm_ring_send(&p2, buf, 8, tag, 0) >= 0, "new producer send");
    CHECK(shm_ring_acquire(&c2, &f) >= 0 && f.tag == tag && f.pos == tag + 0,
          "new producer's frame (pos %llu tag %llu)", (unsigned long long)f.pos,
          (unsigned long long)f.tag);
    CHECK(verify(slot_ptr(&c2, f.slot), 8, tag), "payload");
    region_free(&g);
    printf("  recover o2o: dead consumer (2 dropped, takeover), producer takeover after an "
           "unmirrored commit\n");
}

/* ============================================================ eos */

typedef struct {
    region_t *g;
    atomic_int go;
} eos_race_ctx;

static void *eos_race_producer(void *arg)
{
    eos_race_ctx *c = arg;
    shm_ring_t r;
    attach_reg(&r, c->g, 0, SHM_RING_ROLE_PRODUCER);
    uint64_t one = 1;
    shm_ring_set_schema(&r, U1, 1, &one);
    while (!atomic_load(&c->go))
        ;
    CHECK(shm_ring_send(&r, "x", 1, 1, 0) >= 0, "send");
    CHECK(shm_ring_end(&r) >= 0, "end");
    return NULL;
}

/* A frame committed just before end() must be delivered, never lost to a
 * consumer that saw the slot empty and then eos. */
static void test_eos_race(uint64_t rounds)
{
    shm_ring_params p = params(SHM_RING_MODE_ONE_TO_ONE, 2, 2, 64);
    region_t g;
    region_new(&g, &p);
    for (uint64_t k = 0; k < rounds; k++) {
        CHECK(shm_ring_format(g.base, g.len, &p) == 0, "format");
        shm_ring_t c;
        attach_reg(&c, &g, 1, SHM_RING_ROLE_CONSUMER);
        eos_race_ctx ctx = {&g, 0};
        pthread_t t;
        pthread_create(&t, NULL, eos_race_producer, &ctx);
        shm_ring_frame f;
        int got = 0;
        int64_t rc;
        atomic_store(&ctx.go, 1);
        while ((rc = shm_ring_acquire(&c, &f)) != SHM_RING_ENDED) {
            CHECK(rc == SHM_RING_EMPTY || rc == 0, "acquire: %lld", (long long)rc);
            if (rc == 0) {
                got++;
                CHECK(shm_ring_release(&c, f.slot, f.pos) >= 0, "release");
            }
        }
        pthread_join(t, NULL);
        CHECK(got == 1, "round %llu: %d frames before ENDED, want 1", (unsigned long long)k, got);
    }
    region_free(&g);
    printf("  eos race: %llu rounds, the last frame always delivered before ENDED\n",
           (unsigned long long)rounds);
}

static void test_eos(void)
{
    shm_ring_params p = params(SHM_RING_MODE_WORK_QUEUE, 8, 4, 64);
    region_t g;
    region_new(&g, &p);
    shm_ring_t p1, p2, c, late;
    shm_ring_frame f;
    attach_reg(&p1, &g, 0, SHM_RING_ROLE_PRODUCER);
    attach_reg(&p2, &g, 1, SHM_RING_ROLE_PRODUCER);
    attach_reg(&c, &g, 2, SHM_RING_ROLE_CONSUMER);
    uint64_t four = 4;
    unsigned char buf[4] = {1, 2, 3, 4};
    shm_ring_set_schema(&p1, U1, 1, &four);
    shm_ring_set_schema(&p2, U1, 1, &four);
    for (int k = 0; k < 3; k++)
        CHECK(shm_ring_send(&p1, buf, 4, (uint64_t)k, 0) >= 0, "send");
    CHECK(shm_ring_claim(&p2) >= 0, "p2 claim");
    CHECK(shm_ring_end(&p1) == 0, "end p1");
    CHECK(shm_ring_claim(&p1) == SHM_RING_ENDED, "claim after end");
    shm_ring_status_info st;
    shm_ring_status(&c, &st);
    CHECK(st.eos == 0, "eos set while a producer is active");
    shm_ring_arm(&c, SHM_RING_WAIT_DATA);
    int w = shm_ring_end(&p2); /* aborts its claim, sets eos, one waiter */
    shm_ring_disarm(&c, SHM_RING_WAIT_DATA);
    CHECK(w == 1, "end returned %d waiters", w);
    for (int k = 0; k < 3; k++)
        CHECK(shm_ring_acquire(&c, &f) >= 0 && f.tag == (uint64_t)k, "drain %d", k);
    CHECK(shm_ring_acquire(&c, &f) == SHM_RING_ENDED, "ENDED after drain");
    CHECK(shm_ring_acquire(&c, &f) == SHM_RING_ENDED, "ENDED sticky");
    CHECK(shm_ring_attach(&late, g.base, g.len, NULL) == 0, "attach");
    CHECK(shm_ring_register(&late, 3, SHM_RING_ROLE_PRODUCER, 1, 1) == SHM_RING_ENDED,
          "producer registered after eos");
    region_free(&g);
    printf("  eos: drained before ENDED, last producer ends the stream, sticky\n");
}

/* ============================================================ fuzz */

static int plausible(int64_t rc, uint32_t cap)
{
    return (rc >= SHM_RING_LIMIT && rc < 0) || (rc >= 0 && rc < (int64_t)cap * 2 + 2);
}

static void fuzz_one(uint32_t mode, uint64_t iters, rng_t *g)
{
    const uint32_t cap = 8, maxp = 4;
    shm_ring_params p = params(mode, cap, maxp, 200);
    region_t reg;
    region_new(&reg, &p);
    shm_ring_t prod[2], cons[2], extra;
    shm_ring_info info;
    CHECK(shm_ring_attach(&extra, reg.base, reg.len, &info) == 0, "attach");
    uint64_t meta_end = info.payload_off; /* header, ctrl, participants, slots */
    unsigned char buf[256];
    memset(buf, 7, sizeof buf);
    holds_t hs[2] = {{.n = 0}, {.n = 0}};
    uint64_t counts[4] = {0};
    int nprod = mode == SHM_RING_MODE_WORK_QUEUE ? 2 : 1;
    int ncons = nprod;

#define REFORMAT()                                                                                \
    do {                                                                                          \
        CHECK(shm_ring_format(reg.base, reg.len, &p) == 0, "format");                            \
        for (int k = 0; k < nprod; k++)                                                           \
            attach_reg(&prod[k], &reg, (uint32_t)k, SHM_RING_ROLE_PRODUCER);                      \
        for (int k = 0; k < ncons; k++) {                                                         \
            attach_reg(&cons[k], &reg, (uint32_t)(2 + k), SHM_RING_ROLE_CONSUMER);                \
            shm_ring_set_debug(&cons[k], (int)(rnd(g) & 1));                                      \
            hs[k].n = 0;                                                                          \
        }                                                                                         \
    } while (0)

    REFORMAT();
    for (uint64_t it = 0; it < iters; it++) {
        if (it % 997 == 996)
            REFORMAT();
        /* corrupt something in the metadata area */
        uint64_t roll = rndn(g, 8);
        if (roll == 0) {
            uint64_t off = rndn(g, meta_end);
            reg.base[off] ^= (unsigned char)(1u << rndn(g, 8));
        } else if (roll == 1) {
            uint64_t off = rndn(g, meta_end / 8) * 8;
            uint64_t v;
            switch (rndn(g, 6)) {
            case 0: v = 0; break;
            case 1: v = UINT64_MAX; break;
            case 2: v = rnd(g); break;
            case 3: v = rndn(g, 64); break; /* near small positions/indexes */
            case 4: v = (uint64_t)1 << rndn(g, 64); break;
            default: {
                uint64_t cur;
                memcpy(&cur, reg.base + off, 8);
                v = cur + rndn(g, 2 * cap + 1) - cap;
            }
            }
            memcpy(reg.base + off, &v, 8);
        }
        int k = (int)rndn(g, 2);
        shm_ring_t *pr = &prod[k % nprod], *cr = &cons[k % ncons];
        holds_t *h = &hs[k % ncons];
        shm_ring_frame f;
        int64_t rc = 0;
        uint64_t shape[8];
        for (int j = 0; j < 8; j++)
            shape[j] = rndn(g, 4);
        switch (rndn(g, 16)) {
        case 0:
            rc = shm_ring_set_schema(pr, 1 + (uint32_t)rndn(g, 45), (uint32_t)rndn(g, 10), shape);
            CHECK(rc <= 200, "schema larger than slot_bytes accepted");
            rc = rc >= 0 ? 0 : rc;
            break;
        case 1:
        case 2:
            rc = shm_ring_claim(pr);
            if (rc >= 0)
                memset(slot_ptr(pr, (uint64_t)rc), 0x5a, 200);
            break;
        case 3: rc = shm_ring_commit(pr, rnd(g)); break;
        case 4: rc = shm_ring_abort(pr); break;
        case 5: {
            uint64_t n = pr->s_nbytes >= 0 ? (uint64_t)pr->s_nbytes : 0;
            rc = shm_ring_send(pr, buf, rndn(g, 8) ? n : rndn(g, 300), rnd(g), rndn(g, 2) * 500);
            if (rc >= 0)
                rc = rc >> 1;
            break;
        }
        case 6:
        case 7:
        case 8:
            rc = rndn(g, 2) ? shm_ring_acquire(cr, &f) : shm_ring_acquire_spin(cr, &f, 300);
            if (rc >= 0) {
                CHECK(f.slot == (uint64_t)rc && f.nbytes <= 200 && f.ndim <= 8 &&
                          f.dtype >= 1 && (int)f.dtype <= shm_ring_dtype_count(),
                      "acquire returned an invalid frame");
                volatile unsigned char sink = 0;
                for (uint64_t b = 0; b < f.nbytes; b++)
                    sink ^= slot_ptr(cr, f.slot)[b];
                (void)sink;
                if (h->n < 64)
                    h->h[h->n++] = (held_t){f.slot, f.pos, 0, f.nbytes};
            }
            break;
        case 9:
        case 10:
            if (h->n) {
                int i = (int)rndn(g, (uint64_t)h->n);
                rc = shm_ring_release(cr, h->h[i].slot, h->h[i].pos);
                h->h[i] = h->h[--h->n];
            } else {
                rc = shm_ring_release(cr, (uint32_t)rndn(g, 2 * cap), rndn(g, 64));
            }
            break;
        case 11: {
            shm_ring_status_info st;
            shm_ring_participant_info pi;
            rc = shm_ring_status(&extra, &st);
            CHECK(rc == 0, "status");
            rc = shm_ring_participant(&extra, (uint32_t)rndn(g, maxp + 1), &pi);
            break;
        }
        case 12: {
            uint64_t dropped;
            rc = shm_ring_recover(&extra, (uint32_t)rndn(g, maxp + 1), &dropped);
            if (rc >= 0)
                CHECK(dropped <= cap, "dropped %llu > cap", (unsigned long long)dropped);
            rc = rc >= 0 ? 0 : rc;
            break;
        }
        case 13: {
            shm_ring_t t;
            uint64_t len = rndn(g, 4) ? reg.len : rndn(g, reg.len + 1);
            rc = shm_ring_attach(&t, reg.base, len, &info);
            CHECK(rc == 0 || rc == SHM_RING_CORRUPT, "attach: %d", (int)rc);
            if (rc == 0) {
                CHECK(info.total_len <= len && info.payload_off + (uint64_t)info.capacity *
                                                                      info.slot_stride <=
                                                         info.total_len,
                      "attach accepted an out-of-bounds layout");
                rc = shm_ring_register(&t, (uint32_t)rndn(g, maxp + 1),
                                       1 + (uint32_t)rndn(g, 2), 1, 1);
                if (rc == 0)
                    rc = shm_ring_unregister(&t);
                rc = rc >= 0 ? 0 : rc;
            }
            break;
        }
        case 14:
            rc = rndn(g, 2) ? shm_ring_arm(cr, 1 + (uint32_t)rndn(g, 2))
                            : shm_ring_disarm(pr, 1 + (uint32_t)rndn(g, 2));
            break;
        case 15:
            if (rndn(g, 8) == 0) {
                rc = shm_ring_end(pr);
                rc = rc >= 0 ? 0 : rc;
            } else {
                int64_t o = shm_ring_role_owner(&extra, 1 + (uint32_t)rndn(g, 2));
                CHECK(o == SHM_RING_BAD_ARG || o == SHM_RING_CORRUPT || o == SHM_RING_NO_INDEX ||
                          (o >= 0 && o < maxp),
                      "role_owner %lld", (long long)o);
            }
            break;
        }
        CHECK(plausible(rc, cap), "fuzz: implausible return %lld", (long long)rc);
        counts[rc >= 0 ? 0 : rc == SHM_RING_CORRUPT ? 1 : 2]++;
    }
    CHECK(counts[1] > 0, "fuzz never saw CORRUPT: the fuzzer is not biting");
    printf("  fuzz mode %u: %llu iterations (%llu ok, %llu CORRUPT, %llu other statuses)\n", mode,
           (unsigned long long)iters, (unsigned long long)counts[0],
           (unsigned long long)counts[1], (unsigned long long)counts[2]);
    region_free(&reg);
#undef REFORMAT
}

static void test_fuzz(void)
{
    rng_t g = {g_seed};
    fuzz_one(SHM_RING_MODE_ONE_TO_ONE, scaled(200000), &g);
    fuzz_one(SHM_RING_MODE_WORK_QUEUE, scaled(200000), &g);
}

/* ============================================================ API edges */

static void test_api(void)
{
    CHECK(shm_ring_dtype_str(0) == NULL && shm_ring_dtype_itemsize(0) == SHM_RING_BAD_ARG,
          "dtype 0 must be invalid");
    CHECK(shm_ring_dtype_count() == 41, "dtype count");
    CHECK(strcmp(shm_ring_dtype_str(U1), "|u1") == 0, "U1 code");
    shm_ring_params p = params(SHM_RING_MODE_BROADCAST, 8, 4, 64);
    CHECK(shm_ring_size(&p) == 0, "broadcast is not implemented yet");
    p = params(SHM_RING_MODE_ONE_TO_ONE, 6, 4, 64);
    CHECK(shm_ring_size(&p) == 0, "capacity 6 accepted");
    p = params(SHM_RING_MODE_ONE_TO_ONE, 8, 4, (uint64_t)1 << 41);
    CHECK(shm_ring_size(&p) == 0, "slot_bytes 2^41 accepted");
    p = params(SHM_RING_MODE_WORK_QUEUE, 1u << 20, 1024, (uint64_t)1 << 40);
    CHECK(shm_ring_size(&p) != 0, "largest ring rejected");
    p = params(SHM_RING_MODE_ONE_TO_ONE, 4, 2, 65536);
    region_t g;
    region_new(&g, &p);
    shm_ring_t r;
    shm_ring_info info;
    CHECK(shm_ring_attach(&r, g.base, g.len, &info) == 0, "attach");
    CHECK(info.slot_stride == 65536 && info.payload_off % 4096 == 0, "stride/alignment");
    uint64_t shape[2] = {256, 65};
    CHECK(strcmp(shm_ring_dtype_str(5), "<i4") == 0, "code 5");
    CHECK(shm_ring_set_schema(&r, 5 /* <i4 */, 2, shape) == SHM_RING_TOO_LARGE, "too large");
    shape[1] = 64;
    CHECK(shm_ring_set_schema(&r, 5, 2, shape) == 65536, "exact fit");
    uint64_t huge[2] = {UINT64_MAX / 2, 3};
    CHECK(shm_ring_set_schema(&r, 5, 2, huge) == SHM_RING_TOO_LARGE, "overflow");
    CHECK(shm_ring_claim(&r) == SHM_RING_BAD_ARG, "claim before register");
    CHECK(shm_ring_attach(&r, g.base, g.len - 4096, NULL) == SHM_RING_CORRUPT, "short len");
    region_free(&g);

    /* a consumer holds at most capacity - 1 frames */
    p = params(SHM_RING_MODE_ONE_TO_ONE, 4, 2, 64);
    region_new(&g, &p);
    shm_ring_t pr, cr;
    shm_ring_frame f;
    attach_reg(&pr, &g, 0, SHM_RING_ROLE_PRODUCER);
    attach_reg(&cr, &g, 1, SHM_RING_ROLE_CONSUMER);
    uint64_t one = 1;
    shm_ring_set_schema(&pr, U1, 1, &one);
    for (int k = 0; k < 4; k++)
        CHECK(shm_ring_send(&pr, "x", 1, (uint64_t)k, 0) >= 0, "send");
    for (int k = 0; k < 3; k++)
        CHECK(shm_ring_acquire(&cr, &f) == k, "acquire %d", k);
    CHECK(shm_ring_acquire(&cr, &f) == SHM_RING_LIMIT, "hold limit");
    CHECK(shm_ring_release(&cr, 1, 1) == 0 && shm_ring_acquire(&cr, &f) == 3, "after limit");
    CHECK(shm_ring_release(&cr, 1, 1) == SHM_RING_BAD_ARG, "double release");
    CHECK(shm_ring_release(&cr, 1, 5) == SHM_RING_BAD_ARG, "release of the wrong lap");
    CHECK(shm_ring_release(&cr, 2, 1) == SHM_RING_BAD_ARG, "slot/pos mismatch");
    region_free(&g);
    printf("  api edges\n");
}

int main(int argc, char **argv)
{
    const char *s = getenv("SHM_RING_STRESS_SCALE");
    if (s)
        g_scale = atof(s);
    if (getenv("SHM_RING_STRESS_SEED"))
        g_seed = strtoull(getenv("SHM_RING_STRESS_SEED"), NULL, 0);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int all = argc < 2;
    int ran = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    printf("ring_stress: scale %.3g seed %#llx\n", g_scale, (unsigned long long)g_seed);
    for (int i = 1; i < argc; i++) {
        const char *known[] = {"api", "o2o", "wq", "recover", "eos", "fuzz"};
        int ok = 0;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
            ok |= strcmp(argv[i], known[k]) == 0;
        CHECK(ok, "unknown test %s", argv[i]);
    }
    for (int pass = 0; pass < 6; pass++) {
        static const char *order[] = {"api", "o2o", "wq", "recover", "eos", "fuzz"};
        int want = all;
        for (int i = 1; i < argc; i++)
            want |= strcmp(argv[i], order[pass]) == 0;
        if (!want)
            continue;
        ran++;
        switch (pass) {
        case 0: test_api(); break;
        case 1:
            test_o2o(0, 8, 4096, scaled(40000));     /* always sleeps: eventcount */
            test_o2o(2000, 4, 200, scaled(200000));  /* small ring, spins */
            test_o2o(20000, 64, 70000, scaled(5000)); /* big slots, 4096 stride */
            break;
        case 2:
            test_wq(3, 3, 8, 0, scaled(30000));
            test_wq(2, 3, 4, 1000, scaled(60000));
            test_wq(3, 2, 16, 5000, scaled(60000));
            break;
        case 3:
            test_recover_wq();
            test_recover_o2o();
            break;
        case 4:
            test_eos();
            test_eos_race(scaled(3000));
            break;
        case 5: test_fuzz(); break;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("ring_stress: %d test groups passed in %.1f s\n", ran,
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
