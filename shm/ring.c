/* Shared-memory SPSC ring: memfd segments, futex waits. */
#include "amdim_ring.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define ALIGN(x, a) (((x) + (a) - 1) / (a) * (a))
/* A process holding the memfd must not be able to cut the mapping short
 * (SIGBUS in the other) nor change the seals afterwards. */
#define RING_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

_Static_assert(sizeof(amdim_ring_header) <= PAGE, "ring header must fit one page");
_Static_assert(sizeof(amdim_slot_header) == 64, "slot header is 64 bytes");

static int futex_wait(_Atomic uint32_t *addr, uint32_t expected, int timeout_ms)
{
    struct timespec ts, *tp = NULL;
    if (timeout_ms >= 0) {
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
        tp = &ts;
    }
    /* Shared (not FUTEX_PRIVATE): the word lives in memory mapped by two processes. */
    return (int)syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, expected, tp, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, 1, NULL, NULL, 0);
}

size_t amdim_ring_slot_bytes(uint32_t batch, uint32_t height, uint32_t width, uint32_t channels)
{
    size_t view = (size_t)batch * height * width * channels;
    size_t bytes = sizeof(amdim_slot_header) + ALIGN((size_t)batch * 4, 64) + ALIGN((size_t)batch * 8, 64) +
                   2 * ALIGN(view, 64);
    return ALIGN(bytes, PAGE);
}

uint64_t amdim_ring_total_bytes(uint32_t slot_count, uint32_t batch, uint32_t height, uint32_t width,
                                uint32_t channels)
{
    return PAGE + (uint64_t)slot_count * amdim_ring_slot_bytes(batch, height, width, channels);
}

/* Fills the sizes and offsets of g from its slot count and geometry. */
static void layout(amdim_ring_layout *g)
{
    size_t view = (size_t)g->batch * g->height * g->width * g->channels;
    g->off_labels = sizeof(amdim_slot_header);
    g->off_indices = g->off_labels + ALIGN((size_t)g->batch * 4, 64);
    g->off_view1 = g->off_indices + ALIGN((size_t)g->batch * 8, 64);
    g->off_view2 = g->off_view1 + ALIGN(view, 64);
    g->slot_bytes = amdim_ring_slot_bytes(g->batch, g->height, g->width, g->channels);
    g->total_bytes = PAGE + (uint64_t)g->slot_count * g->slot_bytes;
}

int amdim_ring_create(amdim_ring *r, uint32_t slot_count, uint32_t batch, uint32_t height, uint32_t width,
                      uint32_t channels, uint32_t ring_id, uint32_t ring_count, char *err, size_t n)
{
    memset(r, 0, sizeof *r);
    r->fd = -1;
    if (!slot_count || slot_count > 1024 || !batch || !height || !width || !channels)
        return amdim_fail(err, n, AMDIM_E_INVALID, "ring geometry %u slots of %u x %ux%ux%u", slot_count, batch,
                          height, width, channels);
    amdim_ring_layout g = {.slot_count = slot_count, .batch = batch, .height = height, .width = width,
                           .channels = channels, .ring_id = ring_id, .ring_count = ring_count};
    layout(&g);
    size_t total = g.total_bytes;
    int fd = memfd_create("amdim-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return amdim_fail(err, n, AMDIM_E_IO, "memfd_create(): %s", strerror(errno));
    fchmod(fd, 0600);
    if (ftruncate(fd, (off_t)total) != 0) {
        int e = errno;
        close(fd);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "ftruncate() of a %zu-byte ring: %s", total, strerror(e));
    }
    if (fcntl(fd, F_ADD_SEALS, RING_SEALS) != 0) {
        int e = errno;
        close(fd);
        return amdim_fail(err, n, AMDIM_E_IO, "sealing the %zu-byte ring (F_ADD_SEALS): %s", total, strerror(e));
    }
    void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        close(fd);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "mmap() of a %zu-byte ring: %s", total, strerror(e));
    }
    amdim_ring_header *h = p;
    memset(h, 0, PAGE);
    h->header_bytes = sizeof *h;
    h->slot_count = g.slot_count;
    h->slot_bytes = g.slot_bytes;
    h->total_bytes = g.total_bytes;
    h->batch = g.batch;
    h->height = g.height;
    h->width = g.width;
    h->channels = g.channels;
    h->ring_id = g.ring_id;
    h->ring_count = g.ring_count;
    h->off_labels = g.off_labels;
    h->off_indices = g.off_indices;
    h->off_view1 = g.off_view1;
    h->off_view2 = g.off_view2;
    h->version = AMDIM_RING_VERSION;
    atomic_thread_fence(memory_order_release);
    h->magic = AMDIM_RING_MAGIC;
    r->fd = fd;
    r->hdr = h;
    r->base = p;
    r->bytes = total;
    r->geom = g;
    return AMDIM_OK;
}

/* The segment behind fd: sealed against resizing, at least a page long.
 * Its size into *size. */
static int check_segment(int fd, off_t *size, char *err, size_t n)
{
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || (seals & RING_SEALS) != RING_SEALS)
        return amdim_fail(err, n, AMDIM_E_UNSUPPORTED,
                          "ring segment is not sealed against shrinking and growing (%s); refusing to map it",
                          seals < 0 ? strerror(errno) : "seals are missing");
    struct stat sb;
    if (fstat(fd, &sb) != 0)
        return amdim_fail(err, n, AMDIM_E_IO, "fstat() of the ring: %s", strerror(errno));
    if (sb.st_size < (off_t)PAGE)
        return amdim_fail(err, n, AMDIM_E_TRUNCATED, "ring segment is %lld bytes, smaller than its header page",
                          (long long)sb.st_size);
    *size = sb.st_size;
    return AMDIM_OK;
}

/* Checks the copy c of a ring header against the geometry it claims and
 * the segment's size; *want gets the layout computed from the geometry. */
static int check_header(const amdim_ring_header *c, off_t size, amdim_ring_layout *want, char *err, size_t n)
{
    *want = (amdim_ring_layout){.slot_count = c->slot_count, .batch = c->batch, .height = c->height,
                                .width = c->width, .channels = c->channels, .ring_id = c->ring_id,
                                .ring_count = c->ring_count};
    int sane = c->batch && c->height && c->width && c->channels && c->batch < (1u << 20) && c->height < 65536 &&
               c->width < 65536 && c->channels <= 4;
    if (sane)
        layout(want);
    size_t slot = sane ? want->slot_bytes : 0;
    if (c->magic != AMDIM_RING_MAGIC)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "not an amdim ring (magic 0x%08x)", c->magic);
    if (c->version != AMDIM_RING_VERSION)
        return amdim_fail(err, n, AMDIM_E_VERSION, "ring version %u, this build reads %u", c->version,
                          AMDIM_RING_VERSION);
    if (c->header_bytes != sizeof(amdim_ring_header))
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "ring header is %u bytes, expected %zu", c->header_bytes,
                          sizeof(amdim_ring_header));
    if (!slot || c->slot_count == 0 || c->slot_count > 1024)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "ring geometry %u slots of %u x %ux%ux%u is invalid",
                          c->slot_count, c->batch, c->height, c->width, c->channels);
    if (c->slot_bytes != slot || c->off_labels != want->off_labels || c->off_indices != want->off_indices ||
        c->off_view1 != want->off_view1 || c->off_view2 != want->off_view2)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "ring slot layout does not match its geometry");
    if (c->total_bytes != PAGE + (uint64_t)c->slot_count * slot)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "ring total size %llu does not match %u slots of %zu bytes",
                          (unsigned long long)c->total_bytes, c->slot_count, slot);
    if ((uint64_t)size < c->total_bytes)
        return amdim_fail(err, n, AMDIM_E_TRUNCATED, "ring segment is %lld bytes but its header says %llu",
                          (long long)size, (unsigned long long)c->total_bytes);
    if (c->ring_count == 0 || c->ring_id >= c->ring_count)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "ring id %u of %u", c->ring_id, c->ring_count);
    return AMDIM_OK;
}

/* Maps and checks the ring (fd is consumed: closed on failure). */
static int attach_fd(amdim_ring *r, int fd, char *err, size_t n)
{
    off_t size = 0;
    AMDIM_TRY(check_segment(fd, &size, err, n));
    amdim_ring_header *h = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED)
        return amdim_fail(err, n, AMDIM_E_IO, "mmap() of the ring header: %s", strerror(errno));
    /* Copy the layout, check the copy and keep it (r->geom): nothing after
     * this reads geometry from shared memory, which the other side can rewrite. */
    amdim_ring_header c;
    memcpy(&c, h, offsetof(amdim_ring_header, head));
    munmap(h, PAGE);
    amdim_ring_layout want;
    AMDIM_TRY(check_header(&c, size, &want, err, n));
    void *p = mmap(NULL, c.total_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "mmap() of the %llu-byte ring: %s", (unsigned long long)c.total_bytes,
                          strerror(errno));
    r->fd = fd;
    r->hdr = p;
    r->base = p;
    r->bytes = c.total_bytes;
    r->geom = want;
    r->local = atomic_load_explicit(&r->hdr->tail, memory_order_acquire);
    return AMDIM_OK;
}

int amdim_ring_attach(amdim_ring *r, int fd, char *err, size_t n)
{
    memset(r, 0, sizeof *r);
    r->fd = -1;
    int st = attach_fd(r, fd, err, n);
    if (st)
        close(fd);
    return st;
}

void amdim_ring_close(amdim_ring *r)
{
    if (r->base)
        munmap(r->base, r->bytes);
    if (r->fd >= 0)
        close(r->fd);
    memset(r, 0, sizeof *r);
    r->fd = -1;
}

void amdim_ring_slot(const amdim_ring *r, uint32_t i, amdim_slot *s)
{
    const amdim_ring_layout *g = &r->geom;
    AMDIM_ASSERT(i < g->slot_count);
    uint8_t *p = r->base + PAGE + (size_t)i * g->slot_bytes;
    s->header = (amdim_slot_header *)p;
    s->labels = (int32_t *)(p + g->off_labels);
    s->indices = (uint64_t *)(p + g->off_indices);
    s->view1 = p + g->off_view1;
    s->view2 = p + g->off_view2;
}

int amdim_ring_acquire(amdim_ring *r, amdim_slot *s, int timeout_ms, const volatile int *stop)
{
    amdim_ring_header *h = r->hdr;
    for (;;) {
        if (stop && *stop)
            return AMDIM_E_CANCELLED;
        uint32_t tail = atomic_load_explicit(&h->tail, memory_order_acquire);
        if (r->local - tail < r->geom.slot_count) {
            amdim_ring_slot(r, r->local % r->geom.slot_count, s);
            return 0;
        }
        /* Announce, re-check, sleep: the consumer wakes us only if it sees the flag. */
        atomic_store(&h->producer_waiting, 1);
        tail = atomic_load(&h->tail);
        if (r->local - tail < r->geom.slot_count) {
            atomic_store(&h->producer_waiting, 0);
            continue;
        }
        int rc = futex_wait(&h->tail, tail, timeout_ms);
        int e = errno;
        atomic_store(&h->producer_waiting, 0);
        if (rc != 0 && e == ETIMEDOUT)
            return 1;
    }
}

void amdim_ring_publish(amdim_ring *r)
{
    amdim_ring_header *h = r->hdr;
    r->local++;
    atomic_store(&h->head, r->local); /* seq_cst: ordered before the flag load */
    atomic_fetch_add(&h->event, 1);
    if (atomic_load(&h->consumer_waiting))
        futex_wake(&h->event);
}

void amdim_ring_set_state(amdim_ring *r, uint32_t state, const char *message)
{
    amdim_ring_header *h = r->hdr;
    if (message)
        snprintf(h->error, sizeof h->error, "%s", message);
    atomic_store(&h->producer_state, state);
    atomic_fetch_add(&h->event, 1);
    futex_wake(&h->event);
}

int amdim_ring_next(amdim_ring *r, amdim_slot *s, int timeout_ms)
{
    amdim_ring_header *h = r->hdr;
    for (;;) {
        uint32_t ev = atomic_load(&h->event);
        uint32_t head = atomic_load_explicit(&h->head, memory_order_acquire);
        if (head != r->local) {
            if (head - r->local > r->geom.slot_count)
                return AMDIM_E_CORRUPT;
            amdim_ring_slot(r, r->local % r->geom.slot_count, s);
            return 0;
        }
        if (atomic_load_explicit(&h->producer_state, memory_order_acquire) != AMDIM_PRODUCER_RUNNING) {
            /* The producer publishes before it changes state: re-check head. */
            if (atomic_load_explicit(&h->head, memory_order_acquire) != r->local)
                continue;
            return 2;
        }
        /* Announce, re-check, sleep until the event counter moves. */
        atomic_store(&h->consumer_waiting, 1);
        if (atomic_load(&h->event) != ev) {
            atomic_store(&h->consumer_waiting, 0);
            continue;
        }
        int rc = futex_wait(&h->event, ev, timeout_ms);
        int e = errno;
        atomic_store(&h->consumer_waiting, 0);
        if (rc != 0 && e == ETIMEDOUT)
            return 1;
    }
}

void amdim_ring_release(amdim_ring *r)
{
    amdim_ring_header *h = r->hdr;
    r->local++;
    atomic_store(&h->tail, r->local);
    if (atomic_load(&h->producer_waiting))
        futex_wake(&h->tail);
}

void amdim_ring_get_error(const amdim_ring *r, char *buf, size_t n)
{
    if (!n)
        return;
    size_t i = 0;
    const volatile char *e = r->hdr->error;
    for (; i + 1 < n && i + 1 < AMDIM_RING_ERROR_MAX; i++) {
        char c = e[i];
        if (!c)
            break;
        buf[i] = (unsigned char)c < 32 || c == 127 ? '?' : c;
    }
    buf[i] = 0;
}
