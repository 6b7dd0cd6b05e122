/* The shared-memory ring: a producer and a consumer thread pass many
 * batches (run under ThreadSanitizer in CI) with every byte checked; a
 * finished producer ends the stream after the last slot; a waiting side
 * is woken; damaged, foreign and truncated segments are rejected. */
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
    /* Truncated segment, and a foreign one (all zeros). */
    amdim_ring t;
    REQUIRE(amdim_ring_create(&t, 2, 2, 4, 4, 3, 0, 1, err, sizeof err) == 0, "create");
    REQUIRE(ftruncate(t.fd, 8192) == 0, "ftruncate");
    amdim_ring a;
    int st = amdim_ring_attach(&a, dup(t.fd), err, sizeof err);
    CHECK(st == AMDIM_E_TRUNCATED, "truncated segment: %d %s", st, err);
    REQUIRE(ftruncate(t.fd, 100) == 0, "ftruncate");
    st = amdim_ring_attach(&a, dup(t.fd), err, sizeof err);
    CHECK(st == AMDIM_E_TRUNCATED, "segment shorter than a page: %d %s", st, err);
    int zero = memfd_create("zero", 0);
    REQUIRE(ftruncate(zero, 65536) == 0, "ftruncate");
    st = amdim_ring_attach(&a, zero, err, sizeof err);
    CHECK(st == AMDIM_E_CORRUPT && strstr(err, "not an amdim ring"), "foreign segment: %d %s", st, err);
    amdim_ring_close(&t);
    amdim_ring_close(&cons);
    amdim_ring_close(&prod);
    return test_finish("test_ring");
}
