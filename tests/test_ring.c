/* The shared-memory ring: a producer and a consumer thread pass many
 * batches (run under ThreadSanitizer in CI) with every byte checked; a
 * finished producer ends the stream after the last slot; a waiting side
 * is woken; damaged, foreign, truncated and unsealed segments are
 * rejected; after attach both sides use only their private copy of the
 * layout, whatever the shared header says, and check the shared head. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "amdim_ring.h"
#include "testutil.h"

#define BATCH 4
#define SIDE 8
#define COUNT 20000

static amdim_ring prod;

#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/* A new memfd of `size` bytes holding src's header page, sealed or not. */
static int copy_segment(const amdim_ring *src, off_t size, int seal)
{
    int fd = memfd_create("copy", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    REQUIRE(fd >= 0 && ftruncate(fd, size) == 0, "memfd");
    REQUIRE(pwrite(fd, src->hdr, size < 4096 ? (size_t)size : 4096, 0) >= 0, "pwrite");
    if (seal)
        REQUIRE(fcntl(fd, F_ADD_SEALS, SEALS) == 0, "F_ADD_SEALS");
    return fd;
}

/* Rewrites the shared header after attach: neither side may use it. */
static void geometry_rewritten(void)
{
    char err[512];
    amdim_ring p, c;
    REQUIRE(amdim_ring_create(&p, 2, 2, 4, 4, 3, 0, 1, err, sizeof err) == 0, "create: %s", err);
    REQUIRE(amdim_ring_attach(&c, dup(p.fd), err, sizeof err) == 0, "attach: %s", err);
    amdim_ring_header *h = p.hdr;
    uint64_t off_view1 = h->off_view1, slot_bytes = h->slot_bytes;
    h->slot_count = 0;
    h->slot_bytes = 1ull << 40;
    h->off_view1 = 1ull << 40;
    h->off_labels = 1ull << 40;
    h->total_bytes = 1;
    for (uint32_t i = 0; i < 5; i++) {
        amdim_slot s;
        REQUIRE(amdim_ring_acquire(&p, &s, 1000, NULL) == 0, "acquire %u", i);
        CHECK(s.view1 == p.base + 4096 + (i % 2) * slot_bytes + off_view1, "producer slot %u from the shared header", i);
        s.header->batch_index = i;
        s.labels[0] = (int32_t)i;
        s.view1[0] = (uint8_t)i;
        amdim_ring_publish(&p);
        REQUIRE(amdim_ring_next(&c, &s, 1000) == 0, "next %u", i);
        CHECK(s.view1 == c.base + 4096 + (i % 2) * slot_bytes + off_view1 && s.header->batch_index == i &&
                  s.labels[0] == (int32_t)i && s.view1[0] == (uint8_t)i,
              "consumer slot %u from the shared header", i);
        amdim_ring_release(&c);
    }
    CHECK(c.geom.slot_count == 2 && c.geom.slot_bytes == slot_bytes && c.geom.off_view1 == off_view1,
          "the private layout changed");
    /* A head more than slot_count ahead of the consumer is an error, not a slot. */
    amdim_slot s;
    atomic_fetch_add(&h->head, 3);
    CHECK(amdim_ring_next(&c, &s, 10) == AMDIM_E_CORRUPT, "a head 3 slots ahead of a 2-slot ring was accepted");
    /* The failure message is copied within its field, without control bytes. */
    memset(h->error, 'A', 4096 - offsetof(amdim_ring_header, error));
    h->error[3] = '\n';
    char msg[4096];
    amdim_ring_get_error(&c, msg, sizeof msg);
    CHECK(strlen(msg) == AMDIM_RING_ERROR_MAX - 1 && msg[3] == '?', "message of %zu bytes", strlen(msg));
    amdim_ring_get_error(&c, msg, 8);
    CHECK(strcmp(msg, "AAA?AAA") == 0, "short buffer: '%s'", msg);
    amdim_ring_close(&c);
    amdim_ring_close(&p);
}

static void *producer(void *arg)
{
    (void)arg;
    for (uint32_t i = 0; i < COUNT; i++) {
        amdim_slot s;
        int rc;
        while ((rc = amdim_ring_acquire(&prod, &s, 50, NULL)) == 1) {
        }
        if (rc != 0)
            break;
        s.header->magic = AMDIM_SLOT_MAGIC;
        s.header->count = BATCH;
        s.header->epoch = i / 1000;
        s.header->batch_index = i;
        for (int b = 0; b < BATCH; b++) {
            s.labels[b] = (int32_t)(i + (uint32_t)b);
            s.indices[b] = (uint64_t)i * BATCH + (uint64_t)b;
        }
        memset(s.view1, (int)(i & 255), BATCH * SIDE * SIDE * 3);
        memset(s.view2, (int)((i * 7) & 255), BATCH * SIDE * SIDE * 3);
        amdim_ring_publish(&prod);
    }
    amdim_ring_set_state(&prod, AMDIM_PRODUCER_FINISHED, NULL);
    return NULL;
}

int main(void)
{
    char err[512];
    REQUIRE(amdim_ring_create(&prod, 3, BATCH, SIDE, SIDE, 3, 0, 1, err, sizeof err) == 0, "create: %s", err);
    CHECK(prod.bytes % 4096 == 0 && prod.hdr->slot_bytes % 4096 == 0, "slots are not page-aligned");
    amdim_ring cons;
    REQUIRE(amdim_ring_attach(&cons, dup(prod.fd), err, sizeof err) == 0, "attach: %s", err);

    /* An empty ring times out rather than blocking forever. */
    amdim_slot s;
    double t0 = amdim_now();
    CHECK(amdim_ring_next(&cons, &s, 30) == 1, "empty ring did not time out");
    CHECK(amdim_now() - t0 >= 0.02, "timeout returned early");

    pthread_t th;
    pthread_create(&th, NULL, producer, NULL);
    uint32_t got = 0;
    int bad = 0;
    for (;;) {
        int rc = amdim_ring_next(&cons, &s, 1000);
        if (rc == 1)
            continue;
        if (rc == 2)
            break;
        uint32_t i = got;
        bad += s.header->magic != AMDIM_SLOT_MAGIC || s.header->batch_index != i || s.header->count != BATCH;
        for (int b = 0; b < BATCH; b++)
            bad += s.labels[b] != (int32_t)(i + (uint32_t)b) || s.indices[b] != (uint64_t)i * BATCH + (uint64_t)b;
        for (int k = 0; k < BATCH * SIDE * SIDE * 3; k++)
            bad += s.view1[k] != (uint8_t)(i & 255) || s.view2[k] != (uint8_t)((i * 7) & 255);
        amdim_ring_release(&cons);
        got++;
    }
    pthread_join(th, NULL);
    CHECK(got == COUNT, "received %u of %u slots", got, COUNT);
    CHECK(bad == 0, "%d corrupted fields", bad);
    CHECK(amdim_ring_next(&cons, &s, 10) == 2, "finished ring did not report its end");

    /* A producer that fails wakes the waiting consumer with its message. */
    amdim_ring p2, c2;
    REQUIRE(amdim_ring_create(&p2, 2, 1, 2, 2, 3, 1, 2, err, sizeof err) == 0, "create");
    REQUIRE(amdim_ring_attach(&c2, dup(p2.fd), err, sizeof err) == 0, "attach");
    amdim_ring_set_state(&p2, AMDIM_PRODUCER_FAILED, "worker 1 killed by signal 9");
    t0 = amdim_now();
    CHECK(amdim_ring_next(&c2, &s, 5000) == 2 && amdim_now() - t0 < 1.0, "failed producer not reported promptly");
    CHECK(strcmp(c2.hdr->error, "worker 1 killed by signal 9") == 0, "message '%s'", c2.hdr->error);
    amdim_ring_close(&c2);
    amdim_ring_close(&p2);

    /* Damaged headers. */
    struct {
        const char *what;
        size_t off;
        uint32_t val;
        int want;
    } cases[] = {
        {"magic", offsetof(amdim_ring_header, magic), 0x12345678, AMDIM_E_CORRUPT},
        {"version", offsetof(amdim_ring_header, version), 99, AMDIM_E_VERSION},
        {"header size", offsetof(amdim_ring_header, header_bytes), 64, AMDIM_E_CORRUPT},
        {"slot count", offsetof(amdim_ring_header, slot_count), 0, AMDIM_E_CORRUPT},
        {"batch", offsetof(amdim_ring_header, batch), 5, AMDIM_E_CORRUPT},
        {"slot bytes", offsetof(amdim_ring_header, slot_bytes), 12288, AMDIM_E_CORRUPT},
        {"view offset", offsetof(amdim_ring_header, off_view2), 8, AMDIM_E_CORRUPT},
        {"ring id", offsetof(amdim_ring_header, ring_id), 7, AMDIM_E_CORRUPT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        amdim_ring t;
        REQUIRE(amdim_ring_create(&t, 2, 2, 4, 4, 3, 0, 1, err, sizeof err) == 0, "create");
        memcpy((uint8_t *)t.hdr + cases[i].off, &cases[i].val, 4);
        amdim_ring a;
        err[0] = 0;
        int st = amdim_ring_attach(&a, dup(t.fd), err, sizeof err);
        CHECK(st == cases[i].want && err[0], "damaged %s: got %d (%s), want %d", cases[i].what, st, err, cases[i].want);
        if (st == 0)
            amdim_ring_close(&a);
        amdim_ring_close(&t);
    }
    /* The ring cannot be shrunk or grown, nor its seals changed. */
    amdim_ring t;
    REQUIRE(amdim_ring_create(&t, 2, 2, 4, 4, 3, 0, 1, err, sizeof err) == 0, "create");
    CHECK(ftruncate(t.fd, 8192) != 0 && errno == EPERM, "the ring's memfd could be shrunk");
    CHECK(ftruncate(t.fd, (off_t)t.bytes * 2) != 0 && errno == EPERM, "the ring's memfd could be grown");
    CHECK(fcntl(t.fd, F_GET_SEALS) == SEALS, "seals 0x%x", fcntl(t.fd, F_GET_SEALS));
    /* Truncated segments, an unsealed one and a foreign one (all zeros). */
    amdim_ring a;
    int st = amdim_ring_attach(&a, copy_segment(&t, 8192, 1), err, sizeof err);
    CHECK(st == AMDIM_E_TRUNCATED, "truncated segment: %d %s", st, err);
    st = amdim_ring_attach(&a, copy_segment(&t, 100, 1), err, sizeof err);
    CHECK(st == AMDIM_E_TRUNCATED, "segment shorter than a page: %d %s", st, err);
    st = amdim_ring_attach(&a, copy_segment(&t, (off_t)t.bytes, 0), err, sizeof err);
    CHECK(st == AMDIM_E_UNSUPPORTED && strstr(err, "not sealed"), "unsealed segment: %d %s", st, err);
    int shrink_only = copy_segment(&t, (off_t)t.bytes, 0);
    REQUIRE(fcntl(shrink_only, F_ADD_SEALS, F_SEAL_SHRINK) == 0, "F_ADD_SEALS");
    st = amdim_ring_attach(&a, shrink_only, err, sizeof err);
    CHECK(st == AMDIM_E_UNSUPPORTED && strstr(err, "not sealed"), "segment sealed only against shrinking: %d %s", st, err);
    st = amdim_ring_attach(&a, copy_segment(&t, (off_t)t.bytes, 1), err, sizeof err);
    CHECK(st == 0, "a sealed copy of a valid ring: %d %s", st, err);
    if (st == 0)
        amdim_ring_close(&a);
    int zero = memfd_create("zero", MFD_ALLOW_SEALING);
    REQUIRE(ftruncate(zero, 65536) == 0 && fcntl(zero, F_ADD_SEALS, SEALS) == 0, "ftruncate");
    st = amdim_ring_attach(&a, zero, err, sizeof err);
    CHECK(st == AMDIM_E_CORRUPT && strstr(err, "not an amdim ring"), "foreign segment: %d %s", st, err);
    amdim_ring_close(&t);
    geometry_rewritten();
    amdim_ring_close(&cons);
    amdim_ring_close(&prod);
    return test_finish("test_ring");
}
