/* amdim-load's entry point, amdim_loader_serve: checks the options, opens
 * the split and sets up what the workers share (the index, the data file,
 * the rings, their counters), agrees the run with the consumer
 * (handshake.c), runs the workers under the supervisor (supervise.c,
 * worker.c) and releases everything on the way out. */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "amdim_dataset.h"
#include "amdim_loader.h"
#include "amdim_ring.h"
#include "loader_internal.h"

/* ---- setup --------------------------------------------------------------- */

/* Checks the sizes and the shard, and sets W, N, R and B. */
static int check_options(amdim_producer *L)
{
    const amdim_loader_serve_options *opt = L->opt;
    if (opt->workers < 1 || opt->workers > 253 || opt->batch < 1 || opt->slots < 2 || opt->queue_depth < 1 ||
        opt->queue_depth > 256 || opt->epochs < 1)
        return amdim_fail(L->err, L->errlen, AMDIM_E_INVALID,
                          "workers 1..253, batch >= 1, slots >= 2, queue depth 1..256 and epochs >= 1");
    L->W = (uint32_t)opt->workers;
    L->N = opt->shard_size > 1 ? (uint32_t)opt->shard_size : 1;
    L->R = L->N > 1 ? (uint32_t)opt->shard_rank : 0;
    if (L->N > 1 && (opt->shard_rank < 0 || L->R >= L->N || opt->batch % (int)L->N != 0 || opt->keep_last))
        return amdim_fail(
            L->err, L->errlen, AMDIM_E_INVALID,
            "--shard %d/%u: needs 0 <= rank < %u, a global --batch divisible by %u (got %d), and no --keep-last",
            opt->shard_rank, L->N, L->N, L->N, opt->batch);
    L->B = (uint32_t)opt->batch / L->N;
    return AMDIM_OK;
}

/* Opens the data set and reads the split's description and the packer's
 * --max-pixels (records larger than it let in are refused before
 * decoding). */
static int open_split(amdim_producer *L)
{
    char why[1024];
    int st = amdim_dataset_open(&L->ds, L->opt->path, why, sizeof why);
    if (st)
        return amdim_fail(L->err, L->errlen, st, "%s", why);
    if ((st = amdim_dataset_split_info(L->ds, L->split, &L->info)))
        return amdim_fail(L->err, L->errlen, st, "%s", amdim_dataset_error(L->ds));
    char key[96], opts[512];
    snprintf(key, sizeof key, "%s.options", L->split);
    const char *mp = amdim_dataset_meta(L->ds, key, opts, sizeof opts) == 0 ? strstr(opts, "max_pixels=") : NULL;
    if (mp)
        L->max_pixels = strtoull(mp + strlen("max_pixels="), NULL, 10);
    return AMDIM_OK;
}

/* The augmentation preset: the one asked for, else the one the split
 * implies; it must fit the split's images. */
static int choose_preset(amdim_producer *L)
{
    L->preset =
        L->opt->preset ? L->opt->preset : amdim_loader_preset_for(L->info.encoding, L->info.width, L->info.height);
    if (amdim_augment_preset(L->preset, &L->aug))
        return amdim_fail(L->err, L->errlen, AMDIM_E_INVALID, "unknown preset %s (" AMDIM_AUGMENT_PRESETS ")", L->preset);
    if (L->aug.crop_mode == AMDIM_CROP_TRANSLATE &&
        (L->info.width == 0 || L->info.width > (uint32_t)L->aug.size || L->info.height > (uint32_t)L->aug.size))
        return amdim_fail(L->err, L->errlen, AMDIM_E_INVALID,
                          "preset %s makes %dx%d views without resizing, but split %s holds %ux%u images", L->preset,
                          L->aug.size, L->aug.size, L->split, L->info.width, L->info.height);
    return AMDIM_OK;
}

/* Once a slow consumer lets them fill, the rings of every worker are
 * resident memory: refuse, before creating any, rings that would not fit
 * beside the consumer. They may take half of what the process may still
 * allocate; the rest is the consumer's (a trainer's model, its copies of
 * the batches), the decoders' and the page cache's. */
static int check_ring_memory(amdim_producer *L)
{
    const amdim_loader_serve_options *opt = L->opt;
    uint32_t size = (uint32_t)L->aug.size;
    uint64_t ring = amdim_ring_total_bytes((uint32_t)opt->slots, L->B, size, size, 3);
    uint64_t total = ring * L->W, avail;
    char why[256], t[32], a[32], sl[32];
    int st = amdim_mem_available(&avail, why, sizeof why);
    if (st) {
        fprintf(stderr,
                "amdim-load: warning: cannot tell how much memory is available (%s); not checking the "
                "size of the rings\n",
                why);
        return AMDIM_OK;
    }
    if (total <= avail / 2)
        return AMDIM_OK;
    amdim_format_bytes(t, sizeof t, total);
    amdim_format_bytes(a, sizeof a, avail);
    amdim_format_bytes(sl, sizeof sl, amdim_ring_slot_bytes(L->B, size, size, 3));
    return amdim_fail(L->err, L->errlen, AMDIM_E_TOO_LARGE,
                      "the rings need %s (--workers %u x --slots %d x %s per batch of --batch %u %ux%u pairs), more "
                      "than half of the %s this process may still use (%s): lower --slots, --batch or --workers",
                      t, L->W, opt->slots, sl, L->B, size, size, a, why);
}

/* Reads the split's index (at least one batch) and opens the data file
 * for the workers' reads. */
static int read_index(amdim_producer *L)
{
    int st = amdim_dataset_index(L->ds, L->split, &L->offsets, &L->lengths, &L->records);
    if (st)
        return amdim_fail(L->err, L->errlen, st, "%s", amdim_dataset_error(L->ds));
    L->nb = loader_batches(L->records, L->B * L->N, L->opt->keep_last);
    if (L->nb == 0)
        return amdim_fail(L->err, L->errlen, AMDIM_E_INVALID, "split %s has %llu records, fewer than one batch of %u",
                          L->split, (unsigned long long)L->records, L->B * L->N);
    L->data_fd = open(L->opt->path, O_RDONLY | O_CLOEXEC);
    if (L->data_fd < 0)
        return amdim_fail(L->err, L->errlen, AMDIM_E_IO, "open %s: %s", L->opt->path, strerror(errno));
    return AMDIM_OK;
}

/* io_uring or pread, decided once for every worker. */
static void choose_reader(amdim_producer *L)
{
    L->use_uring = !L->opt->no_uring;
    if (!L->use_uring)
        return;
    struct io_uring probe;
    int rc = io_uring_queue_init(4, &probe, 0);
    if (rc < 0) {
        fprintf(stderr, "amdim-load: warning: io_uring is unavailable (%s); reading with pread\n", strerror(-rc));
        L->use_uring = 0;
    } else {
        io_uring_queue_exit(&probe);
    }
}

/* The per-worker tables, the shared counters and one ring per worker. */
static int create_rings(amdim_producer *L)
{
    L->rings = calloc(L->W, sizeof *L->rings);
    L->pids = calloc(L->W, sizeof *L->pids);
    L->pidfds = calloc(L->W, sizeof *L->pidfds);
    L->state = calloc(L->W, sizeof *L->state);
    L->respawns = calloc(L->W, sizeof *L->respawns);
    L->stats = mmap(NULL, L->W * sizeof *L->stats, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!L->rings || !L->pids || !L->pidfds || !L->state || !L->respawns || L->stats == MAP_FAILED) {
        L->stats = NULL;
        return amdim_fail(L->err, L->errlen, AMDIM_E_NOMEM, "out of memory");
    }
    for (uint32_t w = 0; w < L->W; w++)
        L->rings[w].fd = -1;
    char why[1024];
    for (uint32_t w = 0; w < L->W; w++) {
        int st = amdim_ring_create(&L->rings[w], (uint32_t)L->opt->slots, L->B, (uint32_t)L->aug.size,
                                   (uint32_t)L->aug.size, 3, w, L->W, why, sizeof why);
        if (st)
            return amdim_fail(L->err, L->errlen, st, "%s", why);
    }
    return AMDIM_OK;
}

/* The resolved configuration, once the consumer has agreed it. */
static void print_config(amdim_producer *L)
{
    const amdim_loader_serve_options *opt = L->opt;
    if (L->N > 1)
        fprintf(stderr, "amdim-load: shard %u of %u: %u pairs of every global batch of %u\n", L->R, L->N, L->B,
                L->B * L->N);
    fprintf(stderr,
            "amdim-load: %s split %s: %llu records, preset %s (%dx%d views), batch %u, %llu batches/epoch%s, "
            "%u workers, seed %llu, epochs %llu..%llu from batch %llu, %s reads, %s decode, %s\n",
            opt->path, L->split, (unsigned long long)L->records, L->preset, L->aug.size, L->aug.size, L->B,
            (unsigned long long)L->nb, opt->keep_last ? " (last one partial)" : "", L->W, (unsigned long long)L->seed,
            (unsigned long long)L->e0, (unsigned long long)(L->e0 + L->epochs - 1), (unsigned long long)L->b0,
            L->use_uring ? "io_uring" : "pread",
            opt->decode == AMDIM_LOAD_DECODE_FULL     ? "full"
            : opt->decode == AMDIM_LOAD_DECODE_REGION ? "region"
                                                      : "scaled",
            amdim_simd_name(amdim_simd_detect()));
}

/* Everything up to running workers: the split, the rings, the socket, the
 * handshake with the consumer, and the workers' processes. */
static int set_up(amdim_producer *L)
{
    AMDIM_TRY(open_split(L));
    AMDIM_TRY(choose_preset(L));
    AMDIM_TRY(check_ring_memory(L));
    AMDIM_TRY(read_index(L));
    choose_reader(L);
    AMDIM_TRY(create_rings(L));
    AMDIM_TRY(amdim_loader_listen(L));
    AMDIM_TRY(amdim_loader_announce(L));
    AMDIM_TRY(amdim_loader_handshake(L));
    print_config(L);
    return amdim_loader_start_workers(L);
}

/* ---- the run ------------------------------------------------------------- */

/* Supervises the workers to the end; a complete run ends with the END
 * line, a consumer that said STOP first is not an error. */
static int run(amdim_producer *L)
{
    double t0 = amdim_now();
    int st = amdim_loader_supervise(L);
    if (st == 1) {
        fprintf(stderr, "amdim-load: the consumer closed the pipe; stopping the workers\n");
        return AMDIM_OK;
    }
    if (st != AMDIM_OK)
        return st;
    uint64_t pairs = 0;
    for (uint32_t w = 0; w < L->W; w++)
        pairs += atomic_load(&L->stats[w].pairs);
    double dt = amdim_now() - t0;
    amdim_loader_ctl_write(L->opt->out_fd, "END pairs=%llu", (unsigned long long)pairs);
    fprintf(stderr, "amdim-load: done: %llu pairs in %.1f s (%.0f pairs/s)\n", (unsigned long long)pairs, dt,
            dt > 0 ? pairs / dt : 0.0);
    return AMDIM_OK;
}

/* ---- teardown ------------------------------------------------------------ */

/* Stops the workers and releases everything set_up made, after a run
 * that ended with status st. */
static void tear_down(amdim_producer *L, int st)
{
    if (L->pids)
        amdim_loader_kill_workers(L);
    /* A consumer still draining the rings must not wait for workers that
     * are gone: mark every unfinished ring with the reason. */
    if (L->rings && st != AMDIM_OK)
        for (uint32_t w = 0; w < L->W; w++)
            if (L->rings[w].base && atomic_load(&L->rings[w].hdr->producer_state) == AMDIM_PRODUCER_RUNNING)
                amdim_ring_set_state(&L->rings[w], AMDIM_PRODUCER_FAILED, L->err);
    if (L->pidfds)
        for (uint32_t w = 0; w < L->W; w++)
            if (L->pidfds[w] > 0)
                close(L->pidfds[w]);
    if (L->rings)
        for (uint32_t w = 0; w < L->W; w++)
            if (L->rings[w].base)
                amdim_ring_close(&L->rings[w]);
    if (L->stats)
        munmap(L->stats, L->W * sizeof *L->stats);
    if (L->listen_fd >= 0)
        close(L->listen_fd);
    if (L->conn_fd >= 0)
        close(L->conn_fd);
    if (L->data_fd >= 0)
        close(L->data_fd);
    free(L->rings);
    free(L->pids);
    free(L->pidfds);
    free(L->state);
    free(L->respawns);
    free(L->offsets);
    free(L->lengths);
    amdim_dataset_close(L->ds);
}

int amdim_loader_serve(const amdim_loader_serve_options *opt, char *err, size_t errlen)
{
    amdim_producer Lv, *L = &Lv;
    memset(L, 0, sizeof *L);
    L->opt = opt;
    L->split = opt->split ? opt->split : "train";
    L->err = err;
    L->errlen = errlen;
    L->data_fd = L->listen_fd = L->conn_fd = -1;
    L->parent = getpid();
    AMDIM_TRY(check_options(L));
    int st = set_up(L);
    if (st == AMDIM_OK)
        st = run(L);
    tear_down(L, st);
    return st;
}
