/* amdim-load's worker processes: each one, forked by the supervisor, reads
 * its batches' records (io_uring, or pread), decodes each into two
 * augmented views and publishes whole batches into its own ring. */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "amdim_dataset.h"
#include "amdim_loader.h"
#include "amdim_ring.h"
#include "loader_internal.h"

typedef struct {
    uint8_t *data;
    size_t cap;
} read_buf;

/* Reads in flight for one batch: the free buffers and the positions. */
typedef struct {
    int free_list[256], nfree;
    uint32_t next, done; /* positions submitted, completed */
    int inflight;
} uring_reads;

static void worker_fail(amdim_ring *ring, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void worker_fail(amdim_ring *ring, const char *fmt, ...)
{
    char msg[AMDIM_RING_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    amdim_ring_set_state(ring, AMDIM_PRODUCER_FAILED, msg);
    _exit(3);
}

/* Decodes one record and writes its two views into position k of the slot. */
static void make_sample(amdim_producer *L, amdim_augmenter *aug, amdim_ring *ring, amdim_slot *slot, uint32_t k,
                        uint64_t rec_index, const uint8_t *bytes, size_t len, uint64_t epoch, uint64_t batch)
{
    amdim_record rec;
    char why[256];
    atomic_store_explicit(&ring->hdr->phase, AMDIM_PHASE_DECODE, memory_order_relaxed);
    atomic_fetch_add_explicit(&ring->hdr->progress, 1, memory_order_relaxed);
    int st = amdim_record_decode(bytes, len, &rec, why, sizeof why);
    if (st)
        worker_fail(ring, "%s: split %s record %llu (epoch %llu batch %llu): %s", L->opt->path, L->info.name,
                    (unsigned long long)rec_index, (unsigned long long)epoch, (unsigned long long)batch, why);
    if (L->info.classes > 0 && rec.label >= L->info.classes)
        worker_fail(ring,
                    "%s: split %s record %llu (epoch %llu batch %llu): label %d is not below the split's %d classes",
                    L->opt->path, L->info.name, (unsigned long long)rec_index, (unsigned long long)epoch,
                    (unsigned long long)batch, rec.label, L->info.classes);
    size_t view = (size_t)L->aug.size * L->aug.size * 3;
    st = amdim_augment_pair(aug, &rec, L->seed, epoch, rec_index, slot->view1 + k * view, slot->view2 + k * view, NULL);
    if (st)
        worker_fail(ring, "%s: split %s record %llu (epoch %llu batch %llu): %s", L->opt->path, L->info.name,
                    (unsigned long long)rec_index, (unsigned long long)epoch, (unsigned long long)batch,
                    amdim_augment_error(aug));
    slot->labels[k] = rec.label;
    slot->indices[k] = rec_index;
}

static void grow(read_buf *b, size_t len, amdim_ring *ring)
{
    if (len <= b->cap)
        return;
    free(b->data);
    b->data = malloc(len);
    b->cap = len;
    if (!b->data)
        worker_fail(ring, "out of memory for a %zu-byte record", len);
}

/* Batch (e, b)'s `count` records recs[], one pread at a time. */
static void fill_batch_pread(amdim_producer *L, uint32_t w, amdim_augmenter *aug, read_buf *buf, const uint64_t *recs,
                             amdim_slot *slot, uint64_t e, uint64_t b, uint32_t count)
{
    amdim_ring *ring = &L->rings[w];
    for (uint32_t k = 0; k < count; k++) {
        uint64_t r = recs[k];
        grow(buf, L->lengths[r], ring);
        atomic_store_explicit(&ring->hdr->phase, AMDIM_PHASE_READ, memory_order_relaxed);
        uint64_t t0 = loader_now_ns();
        size_t got = 0;
        while (got < L->lengths[r]) {
            ssize_t n = pread(L->data_fd, buf->data + got, L->lengths[r] - got, (off_t)(L->offsets[r] + got));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                worker_fail(ring, "%s: reading split %s record %llu failed: %s", L->opt->path, L->info.name,
                            (unsigned long long)r, n < 0 ? strerror(errno) : "file is shorter than its index");
            got += (size_t)n;
        }
        atomic_fetch_add_explicit(&L->stats[w].io_wait_ns, loader_now_ns() - t0, memory_order_relaxed);
        make_sample(L, aug, ring, slot, k, r, buf->data, got, e, b);
    }
}

/* Submits reads for the next positions while buffers are free; each
 * read's user data is its position << 16 | its buffer. */
static void queue_reads(amdim_producer *L, amdim_ring *ring, struct io_uring *uring, read_buf *bufs,
                        const uint64_t *recs, uint32_t count, uring_reads *q)
{
    while (q->inflight < L->opt->queue_depth && q->next < count) {
        int j = q->free_list[--q->nfree];
        uint64_t r = recs[q->next];
        grow(&bufs[j], L->lengths[r], ring);
        struct io_uring_sqe *sqe = io_uring_get_sqe(uring);
        io_uring_prep_read(sqe, L->data_fd, bufs[j].data, L->lengths[r], L->offsets[r]);
        io_uring_sqe_set_data64(sqe, (uint64_t)q->next << 16 | (uint64_t)j);
        q->next++;
        q->inflight++;
    }
}

/* Makes the samples of every completed read and frees their buffers. */
static void complete_reads(amdim_producer *L, amdim_ring *ring, amdim_augmenter *aug, struct io_uring *uring,
                           read_buf *bufs, const uint64_t *recs, amdim_slot *slot, uint64_t e, uint64_t b,
                           uring_reads *q)
{
    struct io_uring_cqe *cqe;
    while (io_uring_peek_cqe(uring, &cqe) == 0) {
        uint64_t ud = io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(uring, cqe);
        uint32_t k = (uint32_t)(ud >> 16);
        int j = (int)(ud & 0xffff);
        uint64_t r = recs[k];
        if (res < 0 || (uint32_t)res != L->lengths[r])
            worker_fail(ring, "%s: reading split %s record %llu failed: %s", L->opt->path, L->info.name,
                        (unsigned long long)r, res < 0 ? strerror(-res) : "short read (file truncated?)");
        make_sample(L, aug, ring, slot, k, r, bufs[j].data, (size_t)res, e, b);
        q->free_list[q->nfree++] = j;
        q->inflight--;
        q->done++;
    }
}

/* Batch (e, b)'s `count` records recs[], up to queue_depth reads in
 * flight, each decoded as it completes. */
static void fill_batch_uring(amdim_producer *L, uint32_t w, amdim_augmenter *aug, struct io_uring *uring,
                             read_buf *bufs, const uint64_t *recs, amdim_slot *slot, uint64_t e, uint64_t b,
                             uint32_t count)
{
    amdim_ring *ring = &L->rings[w];
    uring_reads q = {.nfree = 0};
    for (int j = L->opt->queue_depth - 1; j >= 0; j--)
        q.free_list[q.nfree++] = j;
    while (q.done < count) {
        queue_reads(L, ring, uring, bufs, recs, count, &q);
        uint64_t t0 = loader_now_ns();
        atomic_store_explicit(&ring->hdr->phase, AMDIM_PHASE_READ, memory_order_relaxed);
        int rc = io_uring_submit_and_wait(uring, 1);
        atomic_fetch_add_explicit(&L->stats[w].io_wait_ns, loader_now_ns() - t0, memory_order_relaxed);
        if (rc < 0 && rc != -EINTR)
            worker_fail(ring, "io_uring_submit_and_wait(): %s", strerror(-rc));
        complete_reads(L, ring, aug, uring, bufs, recs, slot, e, b, &q);
    }
}

/* Cuts the child loose from the parent's signals, pipe and sockets; exits
 * if the parent is already gone. */
static void detach_from_parent(amdim_producer *L)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != L->parent)
        _exit(1);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    /* Workers never speak on the control pipe or the socket. */
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
        dup2(devnull, L->opt->out_fd);
        close(devnull);
    }
    if (L->listen_fd >= 0)
        close(L->listen_fd);
    if (L->conn_fd >= 0)
        close(L->conn_fd);
}

static amdim_augmenter *create_augmenter(amdim_producer *L, amdim_ring *ring)
{
    amdim_augmenter *aug;
    if (amdim_augment_create(&aug, &L->aug))
        worker_fail(ring, "cannot create the augmenter");
    amdim_decode_options dec = {.region = L->opt->decode != AMDIM_LOAD_DECODE_FULL,
                                .scales = L->opt->decode == AMDIM_LOAD_DECODE_SCALED ? AMDIM_DECODE_SCALES_DEFAULT : 0};
    amdim_augment_set_decode(aug, &dec);
    amdim_augment_set_max_pixels(aug, L->max_pixels);
    return aug;
}

/* Waits for a free slot of worker w's ring, exiting if the parent dies. */
static void acquire_slot(amdim_producer *L, uint32_t w, amdim_slot *slot)
{
    amdim_ring *ring = &L->rings[w];
    uint64_t t0 = loader_now_ns();
    atomic_store_explicit(&ring->hdr->phase, AMDIM_PHASE_SLOT, memory_order_relaxed);
    atomic_fetch_add_explicit(&ring->hdr->progress, 1, memory_order_relaxed);
    while (amdim_ring_acquire(ring, slot, 200, NULL) == 1)
        if (getppid() != L->parent)
            _exit(1);
    atomic_fetch_add_explicit(&L->stats[w].slot_wait_ns, loader_now_ns() - t0, memory_order_relaxed);
}

void amdim_loader_worker_main(amdim_producer *L, uint32_t w)
{
    detach_from_parent(L);
    amdim_ring *ring = &L->rings[w];
    ring->local = atomic_load(&ring->hdr->head);
    atomic_store(&ring->hdr->producer_pid, (int32_t)getpid());
    amdim_augmenter *aug = create_augmenter(L, ring);
    struct io_uring uring_s, *uring = NULL;
    int qd = L->opt->queue_depth;
    if (L->use_uring) {
        int rc = io_uring_queue_init((unsigned)qd, &uring_s, 0);
        if (rc < 0)
            worker_fail(ring, "io_uring_queue_init(): %s", strerror(-rc));
        uring = &uring_s;
    }
    read_buf *bufs = calloc((size_t)qd, sizeof *bufs);
    uint64_t *perm = malloc((L->records ? L->records : 1) * sizeof *perm);
    if (!bufs || !perm)
        worker_fail(ring, "out of memory for the epoch order of %llu records", (unsigned long long)L->records);
    uint64_t perm_epoch = UINT64_MAX, e, b;
    for (uint64_t k = ring->local; amdim_loader_worker_batch(L->e0, L->b0, L->epochs, L->nb, L->W, w, k, &e, &b); k++) {
        if (e != perm_epoch) {
            amdim_loader_epoch_order(L->seed, e, L->records, perm);
            perm_epoch = e;
        }
        amdim_slot slot;
        acquire_slot(L, w, &slot);
        uint32_t count = loader_batch_count(L->records, L->B, b); /* N > 1: always whole batches */
        slot.header->magic = AMDIM_SLOT_MAGIC;
        slot.header->count = count;
        slot.header->epoch = e;
        slot.header->batch_index = b;
        slot.header->ring_id = w;
        const uint64_t *recs = perm + loader_shard_first(b, L->B, L->N, L->R);
        if (uring)
            fill_batch_uring(L, w, aug, uring, bufs, recs, &slot, e, b, count);
        else
            fill_batch_pread(L, w, aug, &bufs[0], recs, &slot, e, b, count);
        amdim_ring_publish(ring);
        atomic_fetch_add_explicit(&L->stats[w].pairs, count, memory_order_relaxed);
    }
    amdim_ring_set_state(ring, AMDIM_PRODUCER_FINISHED, NULL);
    _exit(0);
}
