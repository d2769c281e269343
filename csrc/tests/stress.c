/*
 * C-level stress test of the channel core (csrc/chan.c, ring.c, bcast.c): threads share one
 * mapped region, as processes share a segment.
 *
 *   stress [test ...]     tests: o2o wq bcast-block bcast-drop recover eos-race leases fuzz
 *                         (default: all)
 *   SHM_STRESS_SCALE=0.1  scales iteration counts (TSan is slow)
 *   SHM_STRESS_SEED=N     PRNG seed (default fixed)
 *
 * Waits are the real thing: spin, then arm / re-check / sleep on the futex / disarm, with a
 * bound on every sleep: a sleep that long is a lost wake-up.  Exits 0 when every check
 * passed; prints the first failure and exits 1.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../chan.h"

#define U1 3u      /* "|u1" */
#define WAIT_S 20u /* a sleep longer than this is a lost wake-up */

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

static const char *err(int64_t rc) { return shm_chan_strerror((int)rc); }

/* ------------------------------------------------------------- region */

typedef struct {
    unsigned char *map;
    size_t map_len;
    unsigned char *base;
    uint64_t len;
} region_t;

/* The channel block with a PROT_NONE page on each side: any access outside
 * [base, base + len) faults, sanitizer or not. */
static void region_new(region_t *g, uint32_t mode, uint32_t policy, uint32_t cap, uint32_t maxp,
                       uint64_t slot_bytes)
{
    shm_chan_params p = {mode, policy, cap, maxp, slot_bytes};
    uint64_t size = shm_chan_size(&p);
    CHECK(size != 0 && size % 4096 == 0, "shm_chan_size(mode %u, cap %u) = %llu", mode, cap,
          (unsigned long long)size);
    g->map_len = (size_t)size + 2 * 4096;
    g->map = mmap(NULL, g->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(g->map != MAP_FAILED, "mmap");
    CHECK(mprotect(g->map, 4096, PROT_NONE) == 0, "mprotect low guard");
    CHECK(mprotect(g->map + 4096 + size, 4096, PROT_NONE) == 0, "mprotect high guard");
    g->base = g->map + 4096;
    g->len = size;
    CHECK(shm_chan_format(g->base, g->len, &p) == SHM_CHAN_OK, "format");
}

static void region_free(region_t *g) { munmap(g->map, g->map_len); }

/* A participant: its handle and the held-set memory a consumer needs. */
typedef struct {
    shm_chan_t h;
    uint64_t bits[1024];
} part_t;

static void attach_reg(part_t *p, region_t *g, uint32_t index, uint32_t role)
{
    int rc = shm_chan_attach(&p->h, g->base, g->len, NULL);
    CHECK(rc == SHM_CHAN_OK, "attach: %s", err(rc));
    rc = shm_chan_register(&p->h, index, role, (uint32_t)getpid(), index, p->bits, 1024);
    CHECK(rc == SHM_CHAN_OK, "register %u: %s", index, err(rc));
}

static unsigned char *slot_ptr(const shm_chan_t *h, uint64_t slot)
{
    return h->payload + slot * h->info.slot_stride;
}

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

/* Reads a DROP view the producer may be rewriting (checked with shm_chan_valid after): the
 * seqlock's race by design, so uninstrumented under TSan, as the core's own copy is. */
#if defined(__SANITIZE_THREAD__)
__attribute__((no_sanitize_thread, noinline))
#endif
static void racy_copy(void *dst, const void *src, size_t n)
{
    const volatile unsigned char *s = src;
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++)
        d[i] = s[i];
}

static void set_size(shm_chan_t *h, uint64_t size)
{
    int64_t rc = shm_chan_set_schema(h, U1, 1, &size);
    CHECK(rc == (int64_t)size, "set_schema(%llu): %s", (unsigned long long)size, err(rc));
}

/* ------------------------------------------------------------ waiting */

static atomic_ulong g_sleeps;

/* The waiter's half of the eventcount, bounded: arm, re-check (`again`), sleep, disarm. */
static void sleep_on(shm_chan_t *h, uint32_t which, int (*still_blocked)(void *), void *arg,
                     const char *who)
{
    CHECK(shm_chan_arm(h, which) == 0, "arm");
    if (still_blocked(arg)) {
        atomic_fetch_add_explicit(&g_sleeps, 1, memory_order_relaxed);
        int rc = shm_chan_sleep(h, which, (uint64_t)WAIT_S * 1000000000ULL);
        if (rc == SHM_CHAN_TIMEOUT) {
            shm_chan_status_info st;
            shm_chan_status(h, &st);
            fprintf(stderr, "enqueue %llu dequeue %llu eos %u waiters %u/%u; seqs:",
                    (unsigned long long)st.enqueue_pos, (unsigned long long)st.dequeue_pos,
                    st.eos, st.data_waiters, st.space_waiters);
            for (uint64_t i = 0; i <= h->mask; i++)
                fprintf(stderr, " %llu", (unsigned long long)atomic_load(&h->slots[i].seq));
            fprintf(stderr, "\n");
            fail("%s slept %u s: lost wake-up", who, WAIT_S);
        }
    }
    CHECK(shm_chan_disarm(h, which) == 0, "disarm");
}

typedef struct {
    shm_chan_t *h;
    int64_t rc;
    shm_chan_frame *f;
    void *dst;
    uint64_t len;
} op_t;

static int claim_blocked(void *a)
{
    op_t *o = a;
    o->rc = shm_chan_claim(o->h, 0);
    return o->rc == SHM_CHAN_FULL;
}

static int64_t claim_wait(shm_chan_t *h)
{
    op_t o = {h, 0, NULL, NULL, 0};
    for (;;) {
        o.rc = shm_chan_claim(h, 20000);
        if (o.rc != SHM_CHAN_FULL)
            return o.rc;
        sleep_on(h, SHM_CHAN_WAIT_SPACE, claim_blocked, &o, "producer");
        if (o.rc != SHM_CHAN_FULL)
            return o.rc;
    }
}

static int recv_blocked(void *a)
{
    op_t *o = a;
    o->rc = shm_chan_recv(o->h, o->f, o->dst, o->len, 0);
    return o->rc == SHM_CHAN_EMPTY;
}

static int64_t recv_wait(shm_chan_t *h, shm_chan_frame *f, void *dst, uint64_t len)
{
    op_t o = {h, 0, f, dst, len};
    for (;;) {
        o.rc = shm_chan_recv(h, f, dst, len, 20000);
        if (o.rc != SHM_CHAN_EMPTY)
            return o.rc;
        sleep_on(h, SHM_CHAN_WAIT_DATA, recv_blocked, &o, "consumer");
        if (o.rc != SHM_CHAN_EMPTY)
            return o.rc;
    }
}

/* Produces frames tags [first, first + n) (payload by tag, size by tag), mixing send, loan and
 * (with `aborts`) aborted loans, which take a position of their own in a work queue. */
static void produce_ex(shm_chan_t *h, uint64_t first, uint64_t n, uint64_t seed, int aborts)
{
    rng_t g = {seed};
    static _Thread_local unsigned char buf[1 << 16];
    for (uint64_t t = first; t < first + n; t++) {
        uint64_t size = frame_size(t, h->info.slot_bytes);
        set_size(h, size);
        if (aborts && rndn(&g, 16) == 0) { /* a loan that is aborted: never visible */
            int64_t slot = claim_wait(h);
            CHECK(slot >= 0, "claim: %s", err(slot));
            memset(slot_ptr(h, (uint64_t)slot), 0xEE, size);
            CHECK(shm_chan_abort(h, h->claim_pos, h->gen) == 0, "abort");
            CHECK(shm_chan_abort(h, h->claim_pos, h->gen) == SHM_CHAN_STALE, "double abort");
        }
        if (rndn(&g, 2)) {
            int64_t slot = claim_wait(h);
            CHECK(slot >= 0, "claim: %s", err(slot));
            fill(slot_ptr(h, (uint64_t)slot), size, t);
            uint64_t cp = h->claim_pos;
            CHECK(shm_chan_commit(h, cp, h->gen, t) == 0, "commit");
            CHECK(shm_chan_commit(h, cp, h->gen, t) == SHM_CHAN_STALE, "double commit");
        } else {
            fill(buf, size, t);
            int64_t rc = shm_chan_send(h, buf, size, t, 20000);
            if (rc == SHM_CHAN_FULL) { /* wait for space the usual way, then send */
                int64_t slot = claim_wait(h);
                CHECK(slot >= 0, "claim: %s", err(slot));
                memcpy(slot_ptr(h, (uint64_t)slot), buf, size);
                rc = shm_chan_commit(h, h->claim_pos, h->gen, t);
            }
            CHECK(rc >= 0, "send: %s", err(rc));
        }
    }
}

static void produce(shm_chan_t *h, uint64_t first, uint64_t n, uint64_t seed)
{
    produce_ex(h, first, n, seed, 1);
}

/* ===================================================== ring modes */

typedef struct {
    uint64_t pos, tag, nbytes, gen;
    uint32_t slot;
} held_t;

typedef struct {
    region_t *g;
    uint32_t index;
    uint64_t first, n, seed;
    atomic_uchar *seen; /* work queue: tag -> delivered */
    uint64_t received;
    int o2o;
} ring_ctx;

static void release_held(shm_chan_t *h, held_t *hs, int *nh, int i)
{
    held_t x = hs[i];
    CHECK(verify(slot_ptr(h, x.slot), x.nbytes, x.tag),
          "payload of held frame tag %llx changed under the holder", (unsigned long long)x.tag);
    int rc = shm_chan_release(h, x.pos, x.gen);
    CHECK(rc == 0, "release(%llu): %s", (unsigned long long)x.pos, err(rc));
    CHECK(shm_chan_release(h, x.pos, x.gen) == SHM_CHAN_STALE, "double release not stale");
    hs[i] = hs[--*nh];
}

static void *ring_producer(void *arg)
{
    ring_ctx *c = arg;
    part_t p;
    attach_reg(&p, c->g, c->index, SHM_CHAN_ROLE_PRODUCER);
    produce(&p.h, c->first, c->n, c->seed);
    CHECK(shm_chan_end(&p.h) == 0, "end");
    CHECK(shm_chan_claim(&p.h, 0) == SHM_CHAN_ENDED, "claim after end");
    CHECK(shm_chan_unregister(&p.h) == 0, "unregister");
    return NULL;
}

static void *ring_consumer(void *arg)
{
    ring_ctx *c = arg;
    part_t p;
    attach_reg(&p, c->g, c->index, SHM_CHAN_ROLE_CONSUMER);
    shm_chan_t *h = &p.h;
    rng_t g = {c->seed};
    held_t hs[64];
    int nh = 0, max_hold = (int)h->mask;
    uint64_t expect = 0;
    static _Thread_local unsigned char buf[1 << 16];
    for (;;) {
        shm_chan_frame f;
        int copy = rndn(&g, 4) == 0;
        if (nh && (nh >= max_hold || rndn(&g, 2)))
            release_held(h, hs, &nh, (int)rndn(&g, (uint64_t)nh));
        int64_t rc;
        if (copy) {
            uint64_t want = frame_size(c->o2o ? expect : 0, h->info.slot_bytes);
            do { /* RESIZE takes nothing: ask again with the size it names */
                rc = shm_chan_recv(h, &f, buf, want, 0);
                want = f.nbytes;
            } while (rc == SHM_CHAN_RESIZE);
            if (rc == SHM_CHAN_EMPTY || rc == SHM_CHAN_LIMIT) {
                /* LIMIT: we hold the slot the next frame needs (only ever with holds) */
                CHECK(rc != SHM_CHAN_LIMIT || nh > 0, "LIMIT without a held frame");
                while (nh) /* a sleeping holder could block the producer it waits for */
                    release_held(h, hs, &nh, nh - 1);
                rc = recv_wait(h, &f, NULL, 0);
                copy = 0;
            }
        } else {
            rc = shm_chan_recv(h, &f, NULL, 0, 0);
            if (rc == SHM_CHAN_EMPTY || rc == SHM_CHAN_LIMIT) {
                CHECK(rc != SHM_CHAN_LIMIT || nh > 0, "LIMIT without a held frame");
                while (nh)
                    release_held(h, hs, &nh, nh - 1);
                rc = recv_wait(h, &f, NULL, 0);
            }
        }
        if (rc == SHM_CHAN_ENDED)
            break;
        CHECK(rc >= 0, "recv: %s", err(rc));
        CHECK(f.nbytes == frame_size(f.tag, h->info.slot_bytes), "size of tag %llx",
              (unsigned long long)f.tag);
        if (c->o2o) {
            CHECK(f.tag == expect, "order: got tag %llu, want %llu", (unsigned long long)f.tag,
                  (unsigned long long)expect);
            expect++;
        } else {
            CHECK(f.tag >= c->first && f.tag < c->first + c->n, "tag out of range");
            CHECK(atomic_exchange(&c->seen[f.tag - c->first], 1) == 0, "tag %llu twice",
                  (unsigned long long)f.tag);
        }
        c->received++;
        if (copy || !f.held) {
            CHECK(verify(buf, f.nbytes, f.tag), "copied payload of tag %llx", (unsigned long long)f.tag);
        } else {
            CHECK(verify(slot_ptr(h, f.slot), f.nbytes, f.tag), "payload of tag %llx",
                  (unsigned long long)f.tag);
            hs[nh++] = (held_t){f.pos, f.tag, f.nbytes, f.gen, f.slot};
        }
    }
    while (nh)
        release_held(h, hs, &nh, nh - 1);
    CHECK(shm_chan_unregister(h) == 0, "unregister");
    return NULL;
}

static void test_ring(uint32_t mode, uint32_t producers, uint32_t consumers, uint64_t n,
                      uint32_t cap, uint64_t slot_bytes)
{
    region_t g;
    region_new(&g, mode, 0, cap, producers + consumers, slot_bytes);
    uint64_t total = n * producers;
    atomic_uchar *seen = calloc(total, 1);
    ring_ctx ctx[16];
    pthread_t th[16];
    for (uint32_t i = 0; i < producers + consumers; i++) {
        int prod = i < producers;
        ctx[i] = (ring_ctx){&g, i, prod ? i * n : 0, prod ? n : total, g_seed + i, seen, 0,
                            mode == SHM_CHAN_MODE_ONE_TO_ONE};
        pthread_create(&th[i], NULL, prod ? ring_producer : ring_consumer, &ctx[i]);
    }
    uint64_t got = 0;
    for (uint32_t i = 0; i < producers + consumers; i++) {
        pthread_join(th[i], NULL);
        if (i >= producers)
            got += ctx[i].received;
    }
    CHECK(got == total, "mode %u: received %llu of %llu", mode, (unsigned long long)got,
          (unsigned long long)total);
    for (uint64_t t = 0; t < total; t++)
        CHECK(seen[t] || mode == SHM_CHAN_MODE_ONE_TO_ONE, "tag %llu lost", (unsigned long long)t);
    free(seen);
    region_free(&g);
}

/* ===================================================== broadcast */

typedef struct {
    region_t *g;
    uint32_t index;
    uint64_t n, seed;
    int drop;
    uint64_t received, lost;
    atomic_int *ready;
} bcast_ctx;

static void *bcast_producer(void *arg)
{
    bcast_ctx *c = arg;
    part_t p;
    while (atomic_load(c->ready) > 0) /* every subscriber joined: none misses frame 0 */
        sched_yield();
    attach_reg(&p, c->g, SHM_CHAN_BCAST_PRODUCER, SHM_CHAN_ROLE_PRODUCER);
    produce(&p.h, 0, c->n, c->seed);
    CHECK(shm_chan_end(&p.h) == 0, "end");
    CHECK(shm_chan_unregister(&p.h) == 0, "unregister");
    return NULL;
}

static void *bcast_subscriber(void *arg)
{
    bcast_ctx *c = arg;
    part_t p;
    attach_reg(&p, c->g, c->index, SHM_CHAN_ROLE_CONSUMER);
    atomic_fetch_sub(c->ready, 1);
    shm_chan_t *h = &p.h;
    rng_t g = {c->seed};
    held_t hs[64];
    int nh = 0;
    uint64_t expect = 0;
    static _Thread_local unsigned char buf[1 << 16];
    for (;;) {
        shm_chan_frame f;
        if (nh && (nh >= (int)h->mask - 1 || rndn(&g, 2)))
            release_held(h, hs, &nh, (int)rndn(&g, (uint64_t)nh));
        int64_t rc;
        if (c->drop) { /* copies, validated by the seqlock */
            rc = shm_chan_recv(h, &f, buf, frame_size(expect, h->info.slot_bytes), 0);
            if (rc == SHM_CHAN_RESIZE)
                rc = shm_chan_recv(h, &f, buf, f.nbytes, 0);
            if (rc == SHM_CHAN_EMPTY || rc == SHM_CHAN_RESIZE) {
                rc = shm_chan_recv(h, &f, NULL, 0, 0); /* (a DROP view: nothing held) */
                if (rc == SHM_CHAN_EMPTY)
                    rc = recv_wait(h, &f, NULL, 0);
                if (rc >= 0 && !shm_chan_valid(h, f.pos))
                    rc = SHM_CHAN_EMPTY; /* overwritten while we looked: not counted */
                else if (rc >= 0)
                    racy_copy(buf, slot_ptr(h, f.slot), f.nbytes);
                if (rc >= 0 && !shm_chan_valid(h, f.pos))
                    rc = SHM_CHAN_EMPTY;
                if (rc == SHM_CHAN_EMPTY) {
                    c->lost += f.lost;
                    expect = h->next;
                    continue;
                }
            }
        } else {
            rc = shm_chan_recv(h, &f, NULL, 0, 0);
            if (rc == SHM_CHAN_LIMIT) { /* the oldest frame held blocks the next: let it go */
                CHECK(nh > 0, "LIMIT holding nothing");
                while (nh)
                    release_held(h, hs, &nh, nh - 1);
                continue;
            }
            if (rc == SHM_CHAN_EMPTY) {
                while (nh)
                    release_held(h, hs, &nh, nh - 1);
                rc = recv_wait(h, &f, NULL, 0);
            }
        }
        if (rc == SHM_CHAN_ENDED)
            break;
        CHECK(rc >= 0, "subscriber recv: %s", err(rc));
        c->lost += f.lost;
        CHECK(f.tag == f.pos, "tag %llu at position %llu", (unsigned long long)f.tag,
              (unsigned long long)f.pos);
        CHECK(c->drop ? f.pos >= expect : f.pos == expect, "subscriber order: %llu, want %llu",
              (unsigned long long)f.pos, (unsigned long long)expect);
        expect = f.pos + 1;
        c->received++;
        if (c->drop) {
            CHECK(verify(buf, f.nbytes, f.tag), "torn copy of frame %llu", (unsigned long long)f.pos);
        } else {
            CHECK(f.held, "a BLOCK view is held");
            CHECK(verify(slot_ptr(h, f.slot), f.nbytes, f.tag), "payload of frame %llu",
                  (unsigned long long)f.pos);
            hs[nh++] = (held_t){f.pos, f.tag, f.nbytes, f.gen, f.slot};
        }
    }
    while (nh)
        release_held(h, hs, &nh, nh - 1);
    CHECK(shm_chan_unregister(h) == 0, "unregister");
    return NULL;
}

static void test_bcast(uint32_t policy, uint32_t subs, uint64_t n, uint32_t cap)
{
    region_t g;
    region_new(&g, SHM_CHAN_MODE_BROADCAST, policy, cap, subs + 1, 4096);
    bcast_ctx ctx[9];
    pthread_t th[9];
    atomic_int ready = (int)subs;
    int drop = policy == SHM_CHAN_POLICY_DROP;
    for (uint32_t i = 0; i <= subs; i++) {
        ctx[i] = (bcast_ctx){&g, i, n, g_seed + 31 * i, drop, 0, 0, &ready};
        pthread_create(&th[i], NULL, i == 0 ? bcast_producer : bcast_subscriber, &ctx[i]);
    }
    for (uint32_t i = 0; i <= subs; i++)
        pthread_join(th[i], NULL);
    for (uint32_t i = 1; i <= subs; i++) {
        if (!drop)
            CHECK(ctx[i].received == n, "subscriber %u received %llu of %llu", i,
                  (unsigned long long)ctx[i].received, (unsigned long long)n);
        else
            CHECK(ctx[i].received > 0 && ctx[i].received <= n, "subscriber %u received %llu", i,
                  (unsigned long long)ctx[i].received);
    }
    region_free(&g);
}

/* ===================================================== recovery */

/* A work-queue consumer "dies" holding frames (its thread just stops); the survivor recovers
 * its entry: the frames are dropped and counted once, the producer gets its slots back. */
static void test_recover(void)
{
    for (uint64_t round = 0; round < scaled(200); round++) {
        region_t g;
        region_new(&g, SHM_CHAN_MODE_WORK_QUEUE, 0, 4, 3, 64);
        part_t prod, dead, live;
        attach_reg(&prod, &g, 0, SHM_CHAN_ROLE_PRODUCER);
        attach_reg(&dead, &g, 1, SHM_CHAN_ROLE_CONSUMER);
        attach_reg(&live, &g, 2, SHM_CHAN_ROLE_CONSUMER);
        produce_ex(&prod.h, 0, 3, round, 0);
        shm_chan_frame f;
        uint32_t hold = (uint32_t)(round % 3) + 1;
        for (uint32_t i = 0; i < hold; i++)
            CHECK(shm_chan_recv(&dead.h, &f, NULL, 0, 0) >= 0, "dead's recv");
        uint64_t dropped = 0;
        CHECK(shm_chan_recover(&live.h, 1, &dropped) == 1, "recover");
        CHECK(dropped == hold, "dropped %llu of %u", (unsigned long long)dropped, hold);
        CHECK(shm_chan_recover(&live.h, 1, &dropped) == 0 && dropped == 0, "recovered twice");
        shm_chan_status_info st;
        shm_chan_status(&live.h, &st);
        CHECK(st.dropped == hold, "dropped counter %llu", (unsigned long long)st.dropped);
        uint64_t got = 0;
        while (shm_chan_recv(&live.h, &f, NULL, 0, 0) >= 0) {
            CHECK(shm_chan_release(&live.h, f.pos, f.gen) == 0, "release");
            got++;
        }
        CHECK(got == 3 - hold, "live got %llu", (unsigned long long)got);
        produce_ex(&prod.h, 3, 4, round, 0); /* every slot is free again: a whole ring goes in */
        while (shm_chan_recv(&live.h, &f, NULL, 0, 0) >= 0) {
            CHECK(f.tag >= 3, "a dropped frame was delivered");
            CHECK(shm_chan_release(&live.h, f.pos, f.gen) == 0, "release");
            got++;
        }
        CHECK(got == 3 - hold + 4, "live got %llu", (unsigned long long)got);
        region_free(&g);
    }
}

/* ===================================================== end of stream vs registration */

typedef struct {
    region_t *g;
    part_t *ender, *late;
    int late_rc;
    int late_sent;
} race_ctx;

static void *race_end(void *arg)
{
    race_ctx *c = arg;
    CHECK(shm_chan_end(&c->ender->h) == 0, "end");
    return NULL;
}

static void *race_register(void *arg)
{
    race_ctx *c = arg;
    int rc = shm_chan_attach(&c->late->h, c->g->base, c->g->len, NULL);
    CHECK(rc == 0, "attach");
    c->late_rc = shm_chan_register(&c->late->h, 1, SHM_CHAN_ROLE_PRODUCER, 1, 1, NULL, 0);
    if (c->late_rc == 0) {
        set_size(&c->late->h, 8);
        unsigned char b[8] = {0};
        c->late_sent = shm_chan_send(&c->late->h, b, 8, 99, 0) >= 0;
        CHECK(shm_chan_end(&c->late->h) == 0, "late end");
    }
    return NULL;
}

/* A producer registers while the only other one ends: either it registered first (the stream
 * stays open until it ends too, and its frame is delivered) or it sees ENDED; never a frame
 * committed after end of stream. */
static void test_eos_race(void)
{
    for (uint64_t round = 0; round < scaled(2000); round++) {
        region_t g;
        region_new(&g, SHM_CHAN_MODE_WORK_QUEUE, 0, 4, 3, 64);
        part_t ender, late, cons;
        attach_reg(&ender, &g, 0, SHM_CHAN_ROLE_PRODUCER);
        attach_reg(&cons, &g, 2, SHM_CHAN_ROLE_CONSUMER);
        race_ctx c = {&g, &ender, &late, -99, 0};
        pthread_t a, b;
        pthread_create(&a, NULL, race_end, &c);
        pthread_create(&b, NULL, race_register, &c);
        pthread_join(a, NULL);
        pthread_join(b, NULL);
        CHECK(c.late_rc == 0 || c.late_rc == SHM_CHAN_ENDED, "late register: %s", err(c.late_rc));
        shm_chan_frame f;
        int64_t rc;
        int delivered = 0;
        while ((rc = shm_chan_recv(&cons.h, &f, NULL, 0, 0)) >= 0) {
            CHECK(f.tag == 99, "tag");
            shm_chan_release(&cons.h, f.pos, f.gen);
            delivered++;
        }
        CHECK(rc == SHM_CHAN_ENDED, "stream not ended: %s", err(rc));
        CHECK(delivered == c.late_sent, "late producer's frame: sent %d, delivered %d",
              c.late_sent, delivered);
        region_free(&g);
    }
}

/* ===================================================== leases given back from another thread */

typedef struct {
    shm_chan_t *h;
    uint64_t pos[4096];
    uint64_t gen[4096];
    atomic_uint head, tail;
    atomic_int done;
} mailbox_t;

static void *releaser(void *arg)
{
    mailbox_t *m = arg;
    for (;;) {
        unsigned t = atomic_load(&m->tail);
        if (t == atomic_load(&m->head)) {
            if (atomic_load(&m->done) && t == atomic_load(&m->head))
                return NULL;
            sched_yield();
            continue;
        }
        int rc = shm_chan_release(m->h, m->pos[t % 4096], m->gen[t % 4096]);
        CHECK(rc == 0, "cross-thread release: %s", err(rc));
        atomic_store(&m->tail, t + 1);
    }
}

/* The consumer receives; another thread gives the frames back (as a view dropped in another
 * Python thread does): the handle's private lock keeps its books straight. */
static void test_leases(void)
{
    region_t g;
    region_new(&g, SHM_CHAN_MODE_ONE_TO_ONE, 0, 8, 2, 64);
    part_t prod, cons;
    attach_reg(&prod, &g, 0, SHM_CHAN_ROLE_PRODUCER);
    attach_reg(&cons, &g, 1, SHM_CHAN_ROLE_CONSUMER);
    mailbox_t *m = calloc(1, sizeof *m);
    m->h = &cons.h;
    pthread_t t;
    pthread_create(&t, NULL, releaser, m);
    uint64_t n = scaled(200000), got = 0, sent = 0;
    set_size(&prod.h, 8);
    unsigned char b[8] = {0};
    while (got < n) {
        while (sent < n && shm_chan_send(&prod.h, b, 8, sent, 0) >= 0)
            sent++;
        shm_chan_frame f;
        int64_t rc = shm_chan_recv(&cons.h, &f, NULL, 0, 0);
        if (rc == SHM_CHAN_EMPTY || rc == SHM_CHAN_LIMIT) {
            sched_yield();
            continue;
        }
        CHECK(rc >= 0, "recv: %s", err(rc));
        CHECK(f.tag == got, "order");
        got++;
        while (atomic_load(&m->head) - atomic_load(&m->tail) >= 4096)
            sched_yield();
        unsigned hd = atomic_load(&m->head);
        m->pos[hd % 4096] = f.pos;
        m->gen[hd % 4096] = f.gen;
        atomic_store(&m->head, hd + 1);
    }
    atomic_store(&m->done, 1);
    pthread_join(t, NULL);
    shm_chan_self_info me;
    shm_chan_self(&cons.h, &me);
    CHECK(me.held == 0, "held %u after every release", me.held);
    free(m);
    region_free(&g);
}

/* ===================================================== fuzz */

/* Scribbles on every region a peer could write (header, control block, participants, slots)
 * between calls of a producer and a consumer: every call returns a status, never a crash
 * (ASan), never a view outside the block. */
static void test_fuzz(void)
{
    rng_t g = {g_seed ^ 0xf00d};
    uint32_t modes[3] = {SHM_CHAN_MODE_ONE_TO_ONE, SHM_CHAN_MODE_WORK_QUEUE,
                         SHM_CHAN_MODE_BROADCAST};
    for (uint64_t round = 0; round < scaled(3000); round++) {
        uint32_t mode = modes[round % 3];
        region_t r;
        region_new(&r, mode, mode == SHM_CHAN_MODE_BROADCAST ? 1 + (uint32_t)rndn(&g, 2) : 0, 4, 3,
                   256);
        part_t prod, cons;
        attach_reg(&prod, &r, 0, SHM_CHAN_ROLE_PRODUCER);
        attach_reg(&cons, &r, 1, SHM_CHAN_ROLE_CONSUMER);
        unsigned char buf[256];
        for (int step = 0; step < 40; step++) {
            uint64_t region_end = cons.h.info.payload_off; /* everything but the payload */
            uint64_t at = rndn(&g, region_end - 8);
            uint64_t v = rndn(&g, 4) == 0 ? rnd(&g) : rndn(&g, 16);
            if (rndn(&g, 3) == 0)
                memcpy(r.base + at, &v, rndn(&g, 8) + 1);
            uint64_t size = 1 + rndn(&g, 256);
            shm_chan_set_schema(&prod.h, U1, 1, &size);
            int64_t rc = shm_chan_send(&prod.h, buf, size, (uint64_t)step, 0);
            CHECK(rc >= -12 && rc < 4, "send rc %lld", (long long)rc);
            shm_chan_frame f;
            rc = shm_chan_recv(&cons.h, &f, NULL, 0, 0);
            if (rc >= 0) {
                CHECK(f.slot < 4 && f.nbytes <= 256, "a view outside the slot table");
                volatile unsigned char sink = slot_ptr(&cons.h, f.slot)[f.nbytes ? f.nbytes - 1 : 0];
                (void)sink;
                if (f.held)
                    shm_chan_release(&cons.h, f.pos, f.gen);
            }
            rc = shm_chan_recv(&cons.h, &f, buf, rndn(&g, 257), 0);
            CHECK(rc >= -12 && rc < 4, "copy recv rc %lld", (long long)rc);
            shm_chan_status_info st;
            shm_chan_status(&cons.h, &st);
            shm_chan_part_info pi;
            for (uint32_t i = 0; i < 3; i++)
                shm_chan_participant(&cons.h, i, &pi);
            uint64_t dropped;
            shm_chan_recover(&cons.h, 2, &dropped);
        }
        shm_chan_unregister(&cons.h);
        shm_chan_unregister(&prod.h);
        region_free(&r);
    }
}

/* ===================================================== main */

static int wanted(int argc, char **argv, const char *name)
{
    if (argc < 2)
        return 1;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    const char *s = getenv("SHM_STRESS_SCALE");
    if (s)
        g_scale = atof(s);
    s = getenv("SHM_STRESS_SEED");
    if (s)
        g_seed = strtoull(s, NULL, 0);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (wanted(argc, argv, "o2o")) {
        test_ring(SHM_CHAN_MODE_ONE_TO_ONE, 1, 1, scaled(100000), 8, 4096);
        test_ring(SHM_CHAN_MODE_ONE_TO_ONE, 1, 1, scaled(20000), 2, 64);
        printf("o2o ok\n");
    }
    if (wanted(argc, argv, "wq")) {
        test_ring(SHM_CHAN_MODE_WORK_QUEUE, 3, 3, scaled(30000), 8, 1024);
        test_ring(SHM_CHAN_MODE_WORK_QUEUE, 2, 4, scaled(10000), 2, 64);
        printf("wq ok\n");
    }
    if (wanted(argc, argv, "bcast-block")) {
        test_bcast(SHM_CHAN_POLICY_BLOCK, 3, scaled(30000), 8);
        test_bcast(SHM_CHAN_POLICY_BLOCK, 2, scaled(10000), 2);
        printf("bcast-block ok\n");
    }
    if (wanted(argc, argv, "bcast-drop")) {
        test_bcast(SHM_CHAN_POLICY_DROP, 3, scaled(30000), 4);
        printf("bcast-drop ok\n");
    }
    if (wanted(argc, argv, "recover")) {
        test_recover();
        printf("recover ok\n");
    }
    if (wanted(argc, argv, "eos-race")) {
        test_eos_race();
        printf("eos-race ok\n");
    }
    if (wanted(argc, argv, "leases")) {
        test_leases();
        printf("leases ok\n");
    }
    if (wanted(argc, argv, "fuzz")) {
        test_fuzz();
        printf("fuzz ok\n");
    }
    printf("sleeps: %lu\nall passed\n", (unsigned long)atomic_load(&g_sleeps));
    return 0;
}
