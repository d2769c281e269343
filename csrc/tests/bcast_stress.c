/*
 * C-level stress test for csrc/bcast.c: threads share one mmap'd region.
 *
 *   bcast_stress [test ...]    tests: api block churn drop evict fuzz (default: all)
 *   SHM_RING_STRESS_SCALE=0.1  scales iteration counts (TSan is slow)
 *   SHM_RING_STRESS_SEED=N     PRNG seed (default fixed)
 *
 * Every frame's content, size and tag are functions of its position, so a
 * subscriber checks each frame it gets without being told what was sent.
 * Waits use the ring's own futex (arm, re-check, sleep, disarm); a sleep of
 * WAIT_S seconds is a lost wake-up.  Exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../bcast.h"
#include "../ring.h"

#define U1 3u /* "|u1" */
#define WAIT_S 20
#define NS 1000000000ULL

#if defined(__SANITIZE_THREAD__)
#define TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_TSAN 1
#endif
#endif

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

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static void pause_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------- region */

typedef struct {
    unsigned char *map;
    size_t map_len;
    unsigned char *base;
    uint64_t len;
} region_t;

/* The block with a PROT_NONE page on each side: any access outside
 * [base, base + len) faults, sanitizer or not.  MAP_SHARED so that the
 * futexes are the shared kind the package uses. */
static void region_new(region_t *g, const shm_bcast_params *p)
{
    uint64_t size = shm_bcast_size(p);
    CHECK(size != 0 && size % 4096 == 0, "shm_bcast_size = %llu", (unsigned long long)size);
    g->map_len = (size_t)size + 2 * 4096;
    g->map = mmap(NULL, g->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(g->map != MAP_FAILED, "mmap");
    CHECK(mprotect(g->map, 4096, PROT_NONE) == 0, "mprotect low guard");
    CHECK(mprotect(g->map + 4096 + size, 4096, PROT_NONE) == 0, "mprotect high guard");
    g->base = g->map + 4096;
    g->len = size;
    CHECK(shm_bcast_format(g->base, g->len, p) == SHM_BCAST_OK, "format");
}

static void region_free(region_t *g) { munmap(g->map, g->map_len); }

static shm_bcast_params params(uint32_t policy, uint32_t cap, uint32_t maxs, uint64_t slot_bytes)
{
    shm_bcast_params p = {policy, cap, maxs, 0, slot_bytes};
    return p;
}

static void attach(shm_bcast_t *h, region_t *g)
{
    int rc = shm_bcast_attach(h, g->base, g->len, NULL);
    CHECK(rc == SHM_BCAST_OK, "attach: %s", shm_bcast_strerror(rc));
}

static void producer_up(shm_bcast_t *h, region_t *g)
{
    attach(h, g);
    int rc = shm_bcast_register(h, (uint32_t)getpid(), 1);
    CHECK(rc == SHM_BCAST_OK, "register: %s", shm_bcast_strerror(rc));
}

#define MAX_WORDS 64 /* held bits for capacity <= 4096 */

typedef struct {
    shm_bcast_t h;
    uint64_t bits[MAX_WORDS];
} sub_t;

static void sub_join(sub_t *s, region_t *g, uint32_t index)
{
    attach(&s->h, g);
    int rc = shm_bcast_join(&s->h, index, (uint32_t)getpid(), 2, s->bits, MAX_WORDS);
    CHECK(rc == SHM_BCAST_OK, "join %u: %s", index, shm_bcast_strerror(rc));
}

static unsigned char *slot_ptr(const shm_bcast_t *h, uint64_t slot)
{
    return h->payload + slot * h->info.slot_stride;
}

/* ------------------------------------------------------- frame content */

/* Sizes change every 16 frames, so copies see both steady state and RESIZE. */
static uint64_t frame_size(uint64_t pos, uint64_t slot_bytes)
{
    return 1 + splitmix(pos >> 4) % slot_bytes;
}

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

/* A DROP view may be under rewrite while we read it: the read is the
 * seqlock's optimistic read (checked with shm_bcast_valid afterwards), so it
 * is hidden from TSan like bcast.c's own copy. */
#ifdef TEST_TSAN
__attribute__((no_sanitize_thread, noinline))
#endif
static void racy_read(unsigned char *dst, const unsigned char *src, uint64_t n)
{
    const volatile unsigned char *s = src;
    for (uint64_t i = 0; i < n; i++)
        dst[i] = s[i];
}

/* ------------------------------------------------------------ waiting */

static atomic_ulong g_sleeps;

static void sleep_on(shm_bcast_t *h, uint32_t which, const char *who)
{
    atomic_fetch_add_explicit(&g_sleeps, 1, memory_order_relaxed);
    int rc = shm_bcast_sleep(h, which, (uint64_t)WAIT_S * NS);
    if (rc == SHM_BCAST_TIMEOUT)
        fail("%s slept %d s: lost wake-up", who, WAIT_S);
    CHECK(rc == SHM_BCAST_OK || rc == SHM_BCAST_INTR, "sleep: %s", shm_bcast_strerror(rc));
}

/* claim with spin, then the eventcount: arm, re-check, sleep, disarm. */
static int64_t claim_wait(shm_bcast_t *h, uint64_t spin_ns)
{
    for (;;) {
        int64_t rc = shm_bcast_claim(h, spin_ns);
        if (rc != SHM_BCAST_FULL)
            return rc;
        CHECK(shm_bcast_arm(h, SHM_BCAST_WAIT_SPACE) == 0, "arm");
        rc = shm_bcast_claim(h, 0);
        if (rc == SHM_BCAST_FULL)
            sleep_on(h, SHM_BCAST_WAIT_SPACE, "producer");
        CHECK(shm_bcast_disarm(h, SHM_BCAST_WAIT_SPACE) == 0, "disarm");
        if (rc != SHM_BCAST_FULL)
            return rc;
    }
}

/* recv (or latest) with spin, then the eventcount.  Lost counts of every
 * call are summed into *lost. */
static int64_t recv_wait(shm_bcast_t *h, shm_bcast_frame *f, void *dst, uint64_t len,
                         uint64_t spin_ns, int latest, uint64_t *lost)
{
    for (;;) {
        int64_t rc = latest ? shm_bcast_latest(h, f, dst, len, spin_ns)
                            : shm_bcast_recv(h, f, dst, len, spin_ns);
        *lost += f->lost;
        if (rc != SHM_BCAST_EMPTY)
            return rc;
        CHECK(shm_bcast_arm(h, SHM_BCAST_WAIT_DATA) == 0, "arm");
        rc = shm_bcast_recv(h, f, dst, len, 0);
        *lost += f->lost;
        if (rc == SHM_BCAST_EMPTY)
            sleep_on(h, SHM_BCAST_WAIT_DATA, "subscriber");
        CHECK(shm_bcast_disarm(h, SHM_BCAST_WAIT_DATA) == 0, "disarm");
        if (rc != SHM_BCAST_EMPTY)
            return rc;
    }
}

/* The producer side of every threaded test: n frames, sizes and contents
 * from their positions, by send or by claim + fill + commit. */
typedef struct {
    region_t *g;
    uint64_t n;
    uint64_t spin_ns;
    uint64_t pace_every; /* > 0: a short pause every this many frames */
    uint64_t seed;
} prod_arg_t;

static void *producer(void *arg)
{
    prod_arg_t *a = arg;
    shm_bcast_t h;
    producer_up(&h, a->g);
    rng_t g = {a->seed};
    uint64_t slot_bytes = h.info.slot_bytes, cur = 0;
    unsigned char *buf = malloc((size_t)slot_bytes);
    CHECK(buf != NULL, "malloc");
    for (uint64_t pos = 0; pos < a->n; pos++) {
        uint64_t n = frame_size(pos, slot_bytes);
        if (n != cur) {
            CHECK(shm_bcast_set_schema(&h, U1, 1, &n) == (int64_t)n, "schema");
            cur = n;
        }
        if (rndn(&g, 2)) {
            fill(buf, n, pos);
            int64_t rc;
            for (;;) {
                rc = shm_bcast_send(&h, buf, n, pos, a->spin_ns);
                if (rc != SHM_BCAST_FULL)
                    break;
                rc = claim_wait(&h, a->spin_ns); /* wait for space, then commit that claim */
                CHECK(rc >= 0, "claim: %s", shm_bcast_strerror((int)rc));
                memcpy(slot_ptr(&h, (uint64_t)rc), buf, (size_t)n);
                rc = shm_bcast_commit(&h, pos);
                break;
            }
            CHECK(rc >= 0, "send %llu: %s", (unsigned long long)pos, shm_bcast_strerror((int)rc));
        } else {
            int64_t slot = claim_wait(&h, a->spin_ns);
            CHECK(slot >= 0, "claim: %s", shm_bcast_strerror((int)slot));
            if (rndn(&g, 16) == 0) { /* an aborted loan is never seen */
                memset(slot_ptr(&h, (uint64_t)slot), 0xEE, (size_t)n);
                CHECK(shm_bcast_abort(&h) == 0, "abort");
                slot = claim_wait(&h, a->spin_ns);
                CHECK(slot >= 0, "claim after abort");
            }
            fill(slot_ptr(&h, (uint64_t)slot), n, pos);
            CHECK(shm_bcast_commit(&h, pos) == 0, "commit");
        }
        if (a->pace_every && pos % a->pace_every == a->pace_every - 1)
            pause_us(50);
    }
    CHECK(shm_bcast_end(&h) == 0, "end");
    CHECK(shm_bcast_send(&h, buf, cur, 0, 0) == SHM_BCAST_ENDED, "send after end");
    CHECK(shm_bcast_unregister(&h) == 0, "unregister");
    free(buf);
    return NULL;
}

static void check_frame(const shm_bcast_frame *f, const unsigned char *data, uint64_t slot_bytes,
                        const char *who)
{
    CHECK(f->tag == f->pos, "%s: frame %llu has tag %llu", who, (unsigned long long)f->pos,
          (unsigned long long)f->tag);
    CHECK(f->nbytes == frame_size(f->pos, slot_bytes) && f->ndim == 1 && f->dtype == U1 &&
              f->shape[0] == f->nbytes,
          "%s: frame %llu meta", who, (unsigned long long)f->pos);
    CHECK(f->timestamp_ns != 0, "%s: no timestamp", who);
    CHECK(verify(data, f->nbytes, f->pos), "%s: frame %llu torn or overwritten", who,
          (unsigned long long)f->pos);
}

/* ============================================================ BLOCK: all frames */

typedef struct {
    region_t *g;
    uint32_t index;
    uint64_t n;
    uint64_t spin_ns;
    uint64_t seed;
    uint64_t got;
} block_arg_t;

typedef struct {
    uint32_t slot;
    uint64_t pos;
} held_t;

static void *block_subscriber(void *arg)
{
    block_arg_t *a = arg;
    sub_t s;
    sub_join(&s, a->g, a->index);
    rng_t g = {a->seed};
    uint64_t slot_bytes = s.h.info.slot_bytes, expect = 0, lost = 0;
    unsigned char *buf = malloc((size_t)slot_bytes);
    CHECK(buf != NULL, "malloc");
    held_t held[64];
    uint32_t nheld = 0, maxhold = (uint32_t)(s.h.mask < 6 ? s.h.mask : 6);
    uint64_t len = 0;
    for (;;) {
        shm_bcast_frame f;
        int copy = rndn(&g, 3) == 0;
        int64_t rc;
        if (copy) {
            rc = recv_wait(&s.h, &f, buf, len, a->spin_ns, 0, &lost);
            if (rc == SHM_BCAST_RESIZE) {
                len = f.nbytes;
                rc = recv_wait(&s.h, &f, buf, len, a->spin_ns, 0, &lost);
            }
        } else {
            if (nheld >= maxhold || (nheld && rndn(&g, 2))) { /* release one, any order */
                uint32_t i = (uint32_t)rndn(&g, nheld);
                CHECK(shm_bcast_release(&s.h, held[i].slot, held[i].pos) == 0, "release");
                CHECK(shm_bcast_release(&s.h, held[i].slot, held[i].pos) == SHM_BCAST_BAD_ARG,
                      "double release accepted");
                held[i] = held[--nheld];
            }
            rc = recv_wait(&s.h, &f, NULL, 0, a->spin_ns, 0, &lost);
        }
        if (rc == SHM_BCAST_ENDED)
            break;
        if (rc == SHM_BCAST_LIMIT) { /* our oldest hold blocks the producer: let go */
            CHECK(nheld > 0, "LIMIT without holds");
            uint32_t i = (uint32_t)rndn(&g, nheld);
            CHECK(shm_bcast_release(&s.h, held[i].slot, held[i].pos) == 0, "release");
            held[i] = held[--nheld];
            continue;
        }
        CHECK(rc >= 0, "sub %u recv: %s", a->index, shm_bcast_strerror((int)rc));
        CHECK(f.pos == expect, "sub %u: got frame %llu, expected %llu", a->index,
              (unsigned long long)f.pos, (unsigned long long)expect);
        check_frame(&f, copy ? buf : slot_ptr(&s.h, f.slot), slot_bytes, "block");
        if (!copy) {
            CHECK(shm_bcast_valid(&s.h, f.slot, f.pos) == 1, "held view not valid");
            held[nheld++] = (held_t){f.slot, f.pos};
        }
        expect++;
    }
    for (uint32_t i = 0; i < nheld; i++) /* held views stay intact until released */
        CHECK(verify(slot_ptr(&s.h, held[i].slot), frame_size(held[i].pos, slot_bytes),
                     held[i].pos),
              "held frame changed");
    CHECK(lost == 0, "BLOCK lost %llu frames", (unsigned long long)lost);
    CHECK(expect == a->n, "sub %u got %llu of %llu frames", a->index, (unsigned long long)expect,
          (unsigned long long)a->n);
    shm_bcast_sub_info me;
    CHECK(shm_bcast_self(&s.h, &me) == 0 && me.received == a->n && me.lost == 0, "self counts");
    CHECK(shm_bcast_leave(&s.h) == 0, "leave");
    a->got = expect;
    free(buf);
    return NULL;
}

static void test_block(uint32_t nsubs, uint32_t cap, uint64_t slot_bytes, uint64_t spin_ns,
                       uint64_t n)
{
    shm_bcast_params p = params(SHM_BCAST_POLICY_BLOCK, cap, nsubs + 1, slot_bytes);
    region_t g;
    region_new(&g, &p);
    block_arg_t sa[8];
    pthread_t st[8], pt;
    /* Joined before the first frame: every subscriber is owed frame 0 on. */
    for (uint32_t i = 0; i < nsubs; i++) {
        sa[i] = (block_arg_t){&g, i, n, spin_ns, g_seed + i, 0};
        CHECK(pthread_create(&st[i], NULL, block_subscriber, &sa[i]) == 0, "thread");
    }
    /* wait for the joins: the test needs them in before frame 0 */
    shm_bcast_t probe;
    attach(&probe, &g);
    uint64_t t0 = now_ns();
    for (;;) {
        shm_bcast_status_info sti;
        CHECK(shm_bcast_status(&probe, &sti) == 0, "status");
        if (sti.joins == nsubs)
            break;
        CHECK(now_ns() - t0 < (uint64_t)WAIT_S * NS, "joins never happened");
        pause_us(100);
    }
    prod_arg_t pa = {&g, n, spin_ns, 0, g_seed ^ 77};
    CHECK(pthread_create(&pt, NULL, producer, &pa) == 0, "thread");
    pthread_join(pt, NULL);
    for (uint32_t i = 0; i < nsubs; i++)
        pthread_join(st[i], NULL);
    printf("  block: %u subscribers x %llu frames, cap %u, spin %llu ns, %lu sleeps\n", nsubs,
           (unsigned long long)n, cap, (unsigned long long)spin_ns,
           atomic_exchange(&g_sleeps, 0));
    region_free(&g);
}

/* ============================================================ BLOCK: join / leave */

typedef struct {
    region_t *g;
    uint32_t index;
    uint64_t seed;
    atomic_int *stop;
    uint64_t incarnations, frames;
} churn_arg_t;

static void *churn_subscriber(void *arg)
{
    churn_arg_t *a = arg;
    rng_t g = {a->seed};
    sub_t s;
    shm_bcast_t look;
    attach(&look, a->g);
    while (!atomic_load(a->stop)) {
        shm_bcast_status_info st;
        CHECK(shm_bcast_status(&look, &st) == 0, "status");
        uint64_t head_before = st.head;
        sub_join(&s, a->g, a->index);
        shm_bcast_sub_info me;
        CHECK(shm_bcast_self(&s.h, &me) == 0, "self");
        /* the newest frame at join time, or frame 0 before the first */
        CHECK(me.join_pos + 1 >= head_before, "joined at %llu, head was %llu",
              (unsigned long long)me.join_pos, (unsigned long long)head_before);
        uint64_t expect = me.join_pos, lost = 0, want = 1 + rndn(&g, 40);
        held_t held[8];
        uint32_t nheld = 0, maxhold = (uint32_t)(s.h.mask < 3 ? s.h.mask : 3);
        for (uint64_t k = 0; k < want; k++) {
            shm_bcast_frame f;
            if (nheld == maxhold || (nheld && rndn(&g, 2))) {
                uint32_t i = (uint32_t)rndn(&g, nheld);
                CHECK(shm_bcast_release(&s.h, held[i].slot, held[i].pos) == 0, "release");
                held[i] = held[--nheld];
            }
            int64_t rc = recv_wait(&s.h, &f, NULL, 0, 1000, 0, &lost);
            if (rc == SHM_BCAST_ENDED)
                break;
            if (rc == SHM_BCAST_LIMIT) { /* the oldest hold blocks the producer */
                CHECK(nheld > 0, "LIMIT without holds");
                uint32_t i = 0;
                for (uint32_t j = 1; j < nheld; j++)
                    if (held[j].pos < held[i].pos)
                        i = j;
                CHECK(shm_bcast_release(&s.h, held[i].slot, held[i].pos) == 0, "release");
                held[i] = held[--nheld];
                continue;
            }
            CHECK(rc >= 0, "churn recv: %s", shm_bcast_strerror((int)rc));
            CHECK(f.pos == expect, "churn: got %llu expected %llu", (unsigned long long)f.pos,
                  (unsigned long long)expect);
            check_frame(&f, slot_ptr(&s.h, f.slot), s.h.info.slot_bytes, "churn");
            held[nheld++] = (held_t){f.slot, f.pos};
            expect++;
            a->frames++;
        }
        CHECK(lost == 0, "BLOCK churn lost frames");
        /* leave while holding: the holds go with the entry */
        CHECK(shm_bcast_leave(&s.h) == 0, "leave");
        a->incarnations++;
        if (rndn(&g, 4) == 0)
            pause_us(rndn(&g, 300));
    }
    return NULL;
}

static void test_churn(uint32_t cap, uint64_t n)
{
    const uint32_t nsubs = 3;
    shm_bcast_params p = params(SHM_BCAST_POLICY_BLOCK, cap, nsubs, 256);
    region_t g;
    region_new(&g, &p);
    atomic_int stop;
    atomic_init(&stop, 0);
    churn_arg_t ca[3];
    pthread_t ct[3], pt;
    for (uint32_t i = 0; i < nsubs; i++) {
        ca[i] = (churn_arg_t){&g, i, g_seed * 3 + i, &stop, 0, 0};
        CHECK(pthread_create(&ct[i], NULL, churn_subscriber, &ca[i]) == 0, "thread");
    }
    prod_arg_t pa = {&g, n, 2000, 0, g_seed ^ 5};
    CHECK(pthread_create(&pt, NULL, producer, &pa) == 0, "thread");
    pthread_join(pt, NULL);
    atomic_store(&stop, 1);
    uint64_t inc = 0, frames = 0;
    for (uint32_t i = 0; i < nsubs; i++) {
        pthread_join(ct[i], NULL);
        inc += ca[i].incarnations;
        frames += ca[i].frames;
    }
    CHECK(inc > 3, "churn: too few joins (%llu)", (unsigned long long)inc);
    printf("  churn: %llu frames, %llu joins/leaves, %llu frames checked, cap %u\n",
           (unsigned long long)n, (unsigned long long)inc, (unsigned long long)frames, cap);
    region_free(&g);
}

/* ============================================================ DROP */

typedef struct {
    region_t *g;
    uint32_t index;
    uint64_t seed;
    uint64_t n;
    uint64_t got, lost, torn_views, latest;
} drop_arg_t;

static void *drop_subscriber(void *arg)
{
    drop_arg_t *a = arg;
    rng_t g = {a->seed};
    sub_t s;
    sub_join(&s, a->g, a->index);
    uint64_t slot_bytes = s.h.info.slot_bytes, len = 0, last = 0, lost = 0;
    int first = 1;
    unsigned char *buf = malloc((size_t)slot_bytes), *look = malloc((size_t)slot_bytes);
    CHECK(buf && look, "malloc");
    for (;;) {
        shm_bcast_frame f;
        uint64_t mode = rndn(&g, 8);
        int latest = mode == 7;
        int64_t rc;
        if (mode < 4 || latest) { /* copy out: never torn */
            rc = recv_wait(&s.h, &f, buf, len, 500, latest, &lost);
            while (rc == SHM_BCAST_RESIZE) {
                len = f.nbytes;
                rc = recv_wait(&s.h, &f, buf, len, 500, 0, &lost);
            }
            if (rc == SHM_BCAST_ENDED)
                break;
            CHECK(rc >= 0, "drop recv: %s", shm_bcast_strerror((int)rc));
            check_frame(&f, buf, slot_bytes, "drop copy");
            a->latest += (uint64_t)latest;
        } else { /* an optimistic view, checked after use */
            rc = recv_wait(&s.h, &f, NULL, 0, 500, 0, &lost);
            if (rc == SHM_BCAST_ENDED)
                break;
            CHECK(rc >= 0, "drop recv view: %s", shm_bcast_strerror((int)rc));
            racy_read(look, slot_ptr(&s.h, f.slot), f.nbytes);
            if (shm_bcast_valid(&s.h, f.slot, f.pos))
                check_frame(&f, look, slot_bytes, "drop view (valid)");
            else
                a->torn_views++;
            CHECK(shm_bcast_release(&s.h, f.slot, f.pos) == 0, "drop release is a no-op");
        }
        CHECK(first || f.pos > last, "positions went backwards: %llu after %llu",
              (unsigned long long)f.pos, (unsigned long long)last);
        first = 0;
        last = f.pos;
        a->got++;
        if (rndn(&g, 64) == 0) /* a slow subscriber: lapped */
            pause_us(200 + rndn(&g, 2000));
    }
    shm_bcast_sub_info me;
    CHECK(shm_bcast_self(&s.h, &me) == 0, "self");
    /* every position from the join on is received, lost or skipped, once */
    CHECK(me.received == a->got && me.lost == lost, "counts: received %llu/%llu lost %llu/%llu",
          (unsigned long long)me.received, (unsigned long long)a->got,
          (unsigned long long)me.lost, (unsigned long long)lost);
    CHECK(me.received + me.lost + me.skipped == a->n - me.join_pos,
          "accounting: %llu received + %llu lost + %llu skipped != %llu frames since %llu",
          (unsigned long long)me.received, (unsigned long long)me.lost,
          (unsigned long long)me.skipped, (unsigned long long)a->n,
          (unsigned long long)me.join_pos);
    CHECK(shm_bcast_leave(&s.h) == 0, "leave");
    a->lost = lost;
    free(buf);
    free(look);
    return NULL;
}

static void test_drop(uint32_t cap, uint64_t slot_bytes, uint64_t n)
{
    const uint32_t nsubs = 3;
    shm_bcast_params p = params(SHM_BCAST_POLICY_DROP, cap, nsubs, slot_bytes);
    region_t g;
    region_new(&g, &p);
    drop_arg_t da[3];
    pthread_t dt[3], pt;
    for (uint32_t i = 0; i < nsubs; i++) {
        da[i] = (drop_arg_t){&g, i, g_seed * 7 + i, n, 0, 0, 0, 0};
        CHECK(pthread_create(&dt[i], NULL, drop_subscriber, &da[i]) == 0, "thread");
    }
    prod_arg_t pa = {&g, n, 0, 64, g_seed ^ 9};
    CHECK(pthread_create(&pt, NULL, producer, &pa) == 0, "thread");
    pthread_join(pt, NULL);
    uint64_t got = 0, lost = 0, torn = 0;
    for (uint32_t i = 0; i < nsubs; i++) {
        pthread_join(dt[i], NULL);
        got += da[i].got;
        lost += da[i].lost;
        torn += da[i].torn_views;
    }
    printf("  drop: %llu frames x %u subscribers, cap %u: %llu received, %llu lost, "
           "%llu torn views caught\n",
           (unsigned long long)n, nsubs, cap, (unsigned long long)got, (unsigned long long)lost,
           (unsigned long long)torn);
    region_free(&g);
}

/* ============================================================ eviction */

typedef struct {
    region_t *g;
    atomic_int *state; /* 1: holding, waiting to be evicted */
} dying_arg_t;

static void *dying_subscriber(void *arg)
{
    dying_arg_t *a = arg;
    sub_t s;
    sub_join(&s, a->g, 0);
    shm_bcast_frame f;
    uint64_t lost = 0;
    int64_t rc = recv_wait(&s.h, &f, NULL, 0, 0, 0, &lost);
    CHECK(rc >= 0 && f.pos == 0, "dying subscriber's first frame");
    atomic_store(a->state, 1);
    return NULL; /* "dies": holds frame 0, never releases, never leaves */
}

static void *blocked_producer(void *arg)
{
    prod_arg_t *a = arg;
    shm_bcast_t h;
    producer_up(&h, a->g);
    uint64_t one = 8;
    unsigned char buf[8] = {0};
    CHECK(shm_bcast_set_schema(&h, U1, 1, &one) == 8, "schema");
    for (uint64_t i = 0; i < a->n; i++) {
        int64_t rc = claim_wait(&h, 0);
        CHECK(rc >= 0, "claim: %s", shm_bcast_strerror((int)rc));
        memcpy(slot_ptr(&h, (uint64_t)rc), buf, 8);
        CHECK(shm_bcast_commit(&h, i) == 0, "commit");
    }
    CHECK(shm_bcast_end(&h) == 0, "end");
    return NULL;
}

static void test_evict(void)
{
    const uint32_t cap = 4;
    shm_bcast_params p = params(SHM_BCAST_POLICY_BLOCK, cap, 2, 64);
    region_t g;
    region_new(&g, &p);
    atomic_int state;
    atomic_init(&state, 0);
    dying_arg_t da = {&g, &state};
    pthread_t dt, pt;
    CHECK(pthread_create(&dt, NULL, dying_subscriber, &da) == 0, "thread");
    shm_bcast_t look;
    attach(&look, &g);
    shm_bcast_status_info st;
    uint64_t t0 = now_ns();
    do {
        CHECK(shm_bcast_status(&look, &st) == 0, "status");
        CHECK(now_ns() - t0 < (uint64_t)WAIT_S * NS, "join never happened");
    } while (st.joins == 0);
    prod_arg_t pa = {&g, 20, 0, 0, 0};
    CHECK(pthread_create(&pt, NULL, blocked_producer, &pa) == 0, "thread");
    pthread_join(dt, NULL);
    /* the producer fills the ring and sleeps: frame 0 is held forever */
    t0 = now_ns();
    for (;;) {
        CHECK(shm_bcast_status(&look, &st) == 0, "status");
        if (st.head == cap && st.space_waiters > 0)
            break;
        CHECK(now_ns() - t0 < (uint64_t)WAIT_S * NS, "producer did not block (head %llu)",
              (unsigned long long)st.head);
        pause_us(200);
    }
    pause_us(20000);
    CHECK(shm_bcast_status(&look, &st) == 0 && st.head == cap, "producer passed a held frame");
    /* the liveness verdict (Python: the kernel released its lock): evict */
    CHECK(shm_bcast_evict(&look, 0) == 1, "evict");
    CHECK(shm_bcast_evict(&look, 0) == 0, "evict twice");
    pthread_join(pt, NULL); /* woken by the eviction, finishes */
    CHECK(shm_bcast_status(&look, &st) == 0 && st.head == 20 && st.eos == 1 && st.evicted == 1,
          "after eviction");
    shm_bcast_sub_info si;
    CHECK(shm_bcast_subscriber(&look, 0, &si) == 0 && si.state == SHM_BCAST_FREE, "entry freed");
    printf("  evict: a dead holder stops gating the producer\n");
    region_free(&g);
}

/* ============================================================ API edges */

static void test_api(void)
{
    shm_bcast_params p = params(SHM_BCAST_POLICY_BLOCK, 6, 4, 64);
    CHECK(shm_bcast_size(&p) == 0, "capacity 6 accepted");
    p = params(3, 8, 4, 64);
    CHECK(shm_bcast_size(&p) == 0, "policy 3 accepted");
    p = params(SHM_BCAST_POLICY_DROP, 8, 0, 64);
    CHECK(shm_bcast_size(&p) == 0, "0 subscribers accepted");
    p = params(SHM_BCAST_POLICY_DROP, 8, 4, (uint64_t)1 << 41);
    CHECK(shm_bcast_size(&p) == 0, "slot_bytes 2^41 accepted");
    p = params(SHM_BCAST_POLICY_BLOCK, 1u << 20, 1024, (uint64_t)1 << 40);
    CHECK(shm_bcast_size(&p) != 0, "largest ring rejected");

    p = params(SHM_BCAST_POLICY_BLOCK, 4, 3, 64);
    region_t g;
    region_new(&g, &p);
    shm_bcast_t pr;
    sub_t a, b, c;
    shm_bcast_frame f;
    shm_bcast_info info;
    CHECK(shm_bcast_attach(&pr, g.base, g.len, &info) == 0 && info.capacity == 4, "attach");
    CHECK(shm_bcast_attach(&pr, g.base, g.len - 4096, NULL) == SHM_BCAST_CORRUPT, "short len");
    CHECK(shm_bcast_claim(&pr, 0) == SHM_BCAST_BAD_ARG, "claim before register");
    producer_up(&pr, &g);
    uint64_t one = 1, shape2[2] = {UINT64_MAX / 2, 3};
    CHECK(shm_bcast_set_schema(&pr, U1, 2, shape2) == SHM_BCAST_TOO_LARGE, "overflow");
    CHECK(shm_bcast_set_schema(&pr, 0, 1, &one) == SHM_BCAST_BAD_ARG, "dtype 0");
    CHECK(shm_bcast_set_schema(&pr, U1, 1, &one) == 1, "schema");
    sub_join(&a, &g, 0); /* before the first frame: gets frame 0 on */
    CHECK(shm_bcast_recv(&a.h, &f, NULL, 0, 0) == SHM_BCAST_EMPTY, "empty");
    for (uint64_t k = 0; k < 4; k++)
        CHECK(shm_bcast_send(&pr, "x", 1, k, 0) == (int64_t)k, "send %llu", (unsigned long long)k);
    CHECK(shm_bcast_send(&pr, "x", 1, 4, 0) == SHM_BCAST_FULL, "a gates the producer");
    CHECK(shm_bcast_send(&pr, "xy", 2, 4, 0) == SHM_BCAST_BAD_ARG, "size != schema");
    sub_join(&b, &g, 1); /* mid-stream: starts at the newest frame, 3 */
    for (uint64_t k = 0; k < 3; k++)
        CHECK(shm_bcast_recv(&a.h, &f, NULL, 0, 0) == (int64_t)k && f.pos == k, "a %llu",
              (unsigned long long)k);
    CHECK(shm_bcast_recv(&a.h, &f, NULL, 0, 0) == SHM_BCAST_LIMIT, "hold limit");
    CHECK(shm_bcast_release(&a.h, 1, 1) == 0, "out-of-order release");
    CHECK(shm_bcast_send(&pr, "x", 1, 4, 0) == SHM_BCAST_FULL, "frame 0 still held");
    CHECK(shm_bcast_release(&a.h, 1, 1) == SHM_BCAST_BAD_ARG, "double release");
    CHECK(shm_bcast_release(&a.h, 1, 5) == SHM_BCAST_BAD_ARG, "release of the wrong lap");
    CHECK(shm_bcast_release(&a.h, 2, 1) == SHM_BCAST_BAD_ARG, "slot/pos mismatch");
    CHECK(shm_bcast_release(&a.h, 0, 0) == 0, "release 0");
    /* a's cursor is 2 now, b's 3: frames 4 and 5 fit, 6 would overwrite 2 */
    CHECK(shm_bcast_send(&pr, "x", 1, 4, 0) == 0 && shm_bcast_send(&pr, "x", 1, 5, 0) == 1,
          "space after release");
    CHECK(shm_bcast_send(&pr, "x", 1, 6, 0) == SHM_BCAST_FULL, "frame 2 held");
    CHECK(shm_bcast_recv(&b.h, &f, NULL, 0, 0) == 3 && f.pos == 3 && f.schema_changed == 1,
          "b starts at the newest frame");
    unsigned char out[4];
    CHECK(shm_bcast_recv(&b.h, &f, out, 2, 0) == SHM_BCAST_RESIZE && f.nbytes == 1, "resize");
    CHECK(shm_bcast_recv(&b.h, &f, out, 1, 0) == 0 && f.pos == 4 && out[0] == 'x', "copy");
    CHECK(shm_bcast_recv(&b.h, &f, out, 100, 0) == SHM_BCAST_BAD_ARG, "dst_len > slot_bytes");
    /* latest skips the backlog */
    CHECK(shm_bcast_release(&a.h, 2, 2) == 0, "release 2");
    CHECK(shm_bcast_latest(&a.h, &f, NULL, 0, 0) == 1 && f.pos == 5 && f.skipped == 2,
          "latest: pos %llu skipped %llu", (unsigned long long)f.pos,
          (unsigned long long)f.skipped);
    CHECK(shm_bcast_latest(&a.h, &f, NULL, 0, 0) == SHM_BCAST_EMPTY, "latest twice");
    CHECK(shm_bcast_valid(&a.h, 1, 5) == 1 && shm_bcast_valid(&a.h, 1, 1) == 0, "valid");
    /* a leaves holding frame 5; b holds nothing and is at 5 */
    CHECK(shm_bcast_leave(&a.h) == 0, "leave");
    CHECK(shm_bcast_evict(&pr, 1) == 1, "evict b");
    /* no subscriber now: nothing gates */
    for (uint64_t k = 6; k < 20; k++)
        CHECK(shm_bcast_send(&pr, "x", 1, k, 0) >= 0, "send without subscribers");
    shm_bcast_status_info st;
    CHECK(shm_bcast_status(&pr, &st) == 0 && st.head == 20 && st.joins == 2 && st.evicted == 1,
          "status");
    /* a fresh subscriber, then end: it drains the newest frame, then ENDED */
    sub_join(&c, &g, 2);
    CHECK(shm_bcast_join(&c.h, 2, 1, 1, c.bits, MAX_WORDS) == SHM_BCAST_BAD_ARG, "join twice");
    CHECK(shm_bcast_end(&pr) == 0 && shm_bcast_end(&pr) == 0, "end is idempotent");
    CHECK(shm_bcast_recv(&c.h, &f, out, 1, 0) == 3 && f.pos == 19, "last frame after end");
    CHECK(shm_bcast_recv(&c.h, &f, out, 1, 0) == SHM_BCAST_ENDED, "ended");
    CHECK(shm_bcast_unregister(&pr) == 0, "unregister");
    shm_bcast_t pr2;
    attach(&pr2, &g);
    CHECK(shm_bcast_register(&pr2, 1, 1) == SHM_BCAST_ENDED, "register after end");
    /* BLOCK needs held bits */
    sub_t d;
    attach(&d.h, &g);
    CHECK(shm_bcast_join(&d.h, 0, 1, 1, NULL, 0) == SHM_BCAST_BAD_ARG, "join without bits");
    CHECK(shm_bcast_join(&d.h, 3, 1, 1, d.bits, MAX_WORDS) == SHM_BCAST_BAD_ARG, "index range");
    region_free(&g);

    /* DROP: a lapped subscriber skips ahead and counts what it lost */
    p = params(SHM_BCAST_POLICY_DROP, 4, 1, 64);
    region_new(&g, &p);
    producer_up(&pr, &g);
    CHECK(shm_bcast_set_schema(&pr, U1, 1, &one) == 1, "schema");
    sub_join(&a, &g, 0);
    for (uint64_t k = 0; k < 10; k++)
        CHECK(shm_bcast_send(&pr, "z", 1, k, 0) >= 0, "drop never blocks");
    CHECK(shm_bcast_recv(&a.h, &f, out, 1, 0) >= 0 && f.pos == 7 && f.lost == 7,
          "lapped: pos %llu lost %llu", (unsigned long long)f.pos, (unsigned long long)f.lost);
    CHECK(shm_bcast_recv(&a.h, &f, NULL, 0, 0) >= 0 && f.pos == 8 && f.lost == 0, "view");
    CHECK(shm_bcast_valid(&a.h, f.slot, 8) == 1, "valid view");
    for (uint64_t k = 10; k < 14; k++)
        CHECK(shm_bcast_send(&pr, "z", 1, k, 0) >= 0, "send");
    CHECK(shm_bcast_valid(&a.h, f.slot, 8) == 0, "overwritten view is invalid");
    CHECK(shm_bcast_claim(&pr, 0) >= 0, "claim");
    CHECK(shm_bcast_recv(&a.h, &f, NULL, 0, 0) >= 0 && f.pos == 11 && f.lost == 2,
          "a slot under rewrite is skipped: pos %llu lost %llu", (unsigned long long)f.pos,
          (unsigned long long)f.lost);
    CHECK(shm_bcast_abort(&pr) == 0, "abort");
    CHECK(shm_bcast_latest(&a.h, &f, out, 1, 0) >= 0 && f.pos == 13 && f.skipped == 1, "latest");
    CHECK(shm_bcast_recv(&a.h, &f, out, 1, 0) == SHM_BCAST_EMPTY, "aborted slot is not a frame");
    CHECK(shm_bcast_self(&a.h, &(shm_bcast_sub_info){0}) == 0, "self");
    region_free(&g);
    printf("  api edges\n");
}

/* ============================================================ fuzz */

static int plausible(int64_t rc, uint32_t cap)
{
    return (rc >= SHM_BCAST_INTR && rc < 0) || (rc >= 0 && rc < (int64_t)cap);
}

static void fuzz_one(uint32_t policy, uint64_t iters, rng_t *g)
{
    const uint32_t cap = 8, maxs = 3;
    shm_bcast_params p = params(policy, cap, maxs, 200);
    region_t reg;
    region_new(&reg, &p);
    shm_bcast_t pr, extra;
    sub_t subs[2];
    shm_bcast_info info;
    CHECK(shm_bcast_attach(&extra, reg.base, reg.len, &info) == 0, "attach");
    uint64_t meta_end = info.payload_off; /* header, ctrl, subscribers, slots */
    unsigned char buf[256], out[256];
    memset(buf, 7, sizeof buf);
    held_t held[2][16];
    uint32_t nheld[2] = {0, 0};
    uint64_t counts[3] = {0};

#define REFORMAT()                                                                                \
    do {                                                                                          \
        CHECK(shm_bcast_format(reg.base, reg.len, &p) == 0, "format");                           \
        producer_up(&pr, &reg);                                                                   \
        for (int k = 0; k < 2; k++) {                                                             \
            sub_join(&subs[k], &reg, (uint32_t)k);                                                \
            nheld[k] = 0;                                                                         \
        }                                                                                         \
    } while (0)

    REFORMAT();
    for (uint64_t it = 0; it < iters; it++) {
        if (it % 997 == 996)
            REFORMAT();
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
            case 3: v = rndn(g, 64); break;
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
        shm_bcast_t *s = &subs[k].h;
        shm_bcast_frame f;
        int64_t rc = 0;
        uint64_t shape[8];
        for (int j = 0; j < 8; j++)
            shape[j] = rndn(g, 4);
        switch (rndn(g, 16)) {
        case 0:
            rc = shm_bcast_set_schema(&pr, 1 + (uint32_t)rndn(g, 45), (uint32_t)rndn(g, 10), shape);
            CHECK(rc <= 200, "schema larger than slot_bytes accepted");
            rc = rc >= 0 ? 0 : rc;
            break;
        case 1:
        case 2:
            rc = shm_bcast_claim(&pr, rndn(g, 2) * 300);
            if (rc >= 0) {
                memset(slot_ptr(&pr, (uint64_t)rc), 0x5a, 200);
                rc = rndn(g, 4) ? shm_bcast_commit(&pr, rnd(g)) : shm_bcast_abort(&pr);
            }
            break;
        case 3: {
            uint64_t n = pr.s_nbytes >= 0 ? (uint64_t)pr.s_nbytes : 0;
            rc = shm_bcast_send(&pr, buf, rndn(g, 8) ? n : rndn(g, 300), rnd(g), rndn(g, 2) * 500);
            break;
        }
        case 4:
        case 5:
        case 6:
        case 7: {
            int copy = (int)rndn(g, 2), lat = rndn(g, 4) == 0;
            uint64_t len = copy ? rndn(g, 3) ? (uint64_t)subs[k].h.l_shape[0] : rndn(g, 201) : 0;
            if (copy && subs[k].h.l_valid && rndn(g, 2)) {
                uint64_t n;
                int64_t item = shm_ring_dtype_itemsize(subs[k].h.l_dtype);
                n = item > 0 ? (uint64_t)item : 1;
                for (uint32_t j = 0; j < subs[k].h.l_ndim; j++)
                    n *= subs[k].h.l_shape[j];
                len = n <= 200 ? n : 0;
            }
            rc = lat ? shm_bcast_latest(s, &f, copy ? out : NULL, len, rndn(g, 2) * 300)
                     : shm_bcast_recv(s, &f, copy ? out : NULL, len, rndn(g, 2) * 300);
            if (rc >= 0) {
                CHECK(f.slot == (uint64_t)rc && f.nbytes <= 200 && f.ndim <= 8 &&
                          f.dtype >= 1 && (int)f.dtype <= shm_ring_dtype_count(),
                      "recv returned an invalid frame");
                if (!copy) {
                    volatile unsigned char sink = 0;
                    for (uint64_t b = 0; b < f.nbytes; b++)
                        sink ^= slot_ptr(s, f.slot)[b];
                    (void)sink;
                    if (nheld[k] < 16)
                        held[k][nheld[k]++] = (held_t){f.slot, f.pos};
                }
            }
            if (rc == SHM_BCAST_RESIZE)
                CHECK(f.nbytes <= 200, "resize to %llu", (unsigned long long)f.nbytes);
            break;
        }
        case 8:
        case 9:
            if (nheld[k]) {
                uint32_t i = (uint32_t)rndn(g, nheld[k]);
                rc = shm_bcast_release(s, held[k][i].slot, held[k][i].pos);
                held[k][i] = held[k][--nheld[k]];
            } else {
                rc = shm_bcast_release(s, (uint32_t)rndn(g, 2 * cap), rndn(g, 64));
            }
            break;
        case 10: {
            shm_bcast_status_info st;
            shm_bcast_sub_info si;
            rc = shm_bcast_status(&extra, &st);
            if (rc == 0)
                rc = shm_bcast_subscriber(&extra, (uint32_t)rndn(g, maxs + 1), &si);
            if (rc == 0)
                rc = shm_bcast_self(s, &si);
            break;
        }
        case 11:
            rc = shm_bcast_evict(&extra, (uint32_t)rndn(g, maxs + 1));
            if (rc == 1 && rndn(g, 2)) { /* the victim was one of ours: re-enter */
                nheld[0] = nheld[1] = 0;
                REFORMAT();
            }
            rc = rc >= 0 ? 0 : rc;
            break;
        case 12: {
            shm_bcast_t t;
            uint64_t len = rndn(g, 4) ? reg.len : rndn(g, reg.len + 1);
            rc = shm_bcast_attach(&t, reg.base, len, &info);
            CHECK(rc == 0 || rc == SHM_BCAST_CORRUPT, "attach: %d", (int)rc);
            if (rc == 0)
                CHECK(info.total_len <= len && info.payload_off + (uint64_t)info.capacity *
                                                                      info.slot_stride <=
                                                         info.total_len,
                      "attach accepted an out-of-bounds layout");
            break;
        }
        case 13: {
            uint32_t which = (uint32_t)rndn(g, 3);
            rc = shm_bcast_arm(s, which);
            if (rc == 0) {
                rc = shm_bcast_sleep(s, which, 1000); /* 1 us */
                CHECK(rc == 0 || rc == SHM_BCAST_TIMEOUT || rc == SHM_BCAST_INTR, "sleep %d",
                      (int)rc);
                rc = shm_bcast_disarm(s, which);
            }
            break;
        }
        case 14:
            rc = shm_bcast_valid(s, (uint32_t)rndn(g, cap + 1), rndn(g, 64));
            CHECK(rc == 0 || rc == 1, "valid");
            break;
        case 15:
            if (rndn(g, 16) == 0) {
                rc = shm_bcast_end(&pr);
            } else {
                shm_bcast_t t; /* take the producer over, as after a death */
                int arc = shm_bcast_attach(&t, reg.base, reg.len, NULL);
                CHECK(arc == 0 || arc == SHM_BCAST_CORRUPT, "attach: %d", arc);
                if (arc == 0 && shm_bcast_register(&t, 1, 1) == 0)
                    rc = shm_bcast_unregister(&t);
            }
            break;
        }
        CHECK(plausible(rc, cap), "fuzz: implausible return %lld", (long long)rc);
        counts[rc >= 0 ? 0 : rc == SHM_BCAST_CORRUPT ? 1 : 2]++;
    }
    CHECK(counts[1] > 0, "fuzz never saw CORRUPT: the fuzzer is not biting");
    printf("  fuzz policy %u: %llu iterations (%llu ok, %llu CORRUPT, %llu other statuses)\n",
           policy, (unsigned long long)iters, (unsigned long long)counts[0],
           (unsigned long long)counts[1], (unsigned long long)counts[2]);
    region_free(&reg);
#undef REFORMAT
}

static void test_fuzz(void)
{
    rng_t g = {g_seed};
    fuzz_one(SHM_BCAST_POLICY_BLOCK, scaled(200000), &g);
    fuzz_one(SHM_BCAST_POLICY_DROP, scaled(200000), &g);
}

int main(int argc, char **argv)
{
    const char *s = getenv("SHM_RING_STRESS_SCALE");
    if (s)
        g_scale = atof(s);
    if (getenv("SHM_RING_STRESS_SEED"))
        g_seed = strtoull(getenv("SHM_RING_STRESS_SEED"), NULL, 0);
    setvbuf(stdout, NULL, _IOLBF, 0);
    static const char *order[] = {"api", "block", "churn", "drop", "evict", "fuzz"};
    const int ntests = (int)(sizeof order / sizeof order[0]);
    for (int i = 1; i < argc; i++) {
        int ok = 0;
        for (int k = 0; k < ntests; k++)
            ok |= strcmp(argv[i], order[k]) == 0;
        CHECK(ok, "unknown test %s", argv[i]);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    printf("bcast_stress: scale %.3g seed %#llx\n", g_scale, (unsigned long long)g_seed);
    int ran = 0;
    for (int pass = 0; pass < ntests; pass++) {
        int want = argc < 2;
        for (int i = 1; i < argc; i++)
            want |= strcmp(argv[i], order[pass]) == 0;
        if (!want)
            continue;
        ran++;
        switch (pass) {
        case 0: test_api(); break;
        case 1:
            test_block(3, 8, 4096, 0, scaled(20000));    /* always sleeps: eventcount */
            test_block(3, 4, 200, 2000, scaled(60000));  /* small ring, spins */
            test_block(2, 2, 70000, 20000, scaled(3000)); /* big slots, capacity 2 */
            break;
        case 2:
            test_churn(2, scaled(40000));
            test_churn(8, scaled(40000));
            break;
        case 3:
            test_drop(4, 512, scaled(100000));
            test_drop(16, 4096, scaled(30000));
            break;
        case 4: test_evict(); break;
        case 5: test_fuzz(); break;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("bcast_stress: %d test groups passed in %.1f s\n", ran,
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
