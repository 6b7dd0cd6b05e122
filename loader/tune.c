/* amdim-load --tune: the loader measured end to end (workers, io_uring,
 * rings, a consumer draining batches) for 1..N workers, then queue and
 * ring depths at the chosen worker count. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>

#include "amdim_loader.h"

typedef struct {
    int workers, queue_depth, slots;
    double pairs_per_s, wait_share;
    int ok;
    char err[600];
} tune_row;

/* One configuration: the loader in a child process, this process as the
 * consumer; pairs/s over `seconds` after a warm-up of a few batches. */
static void measure(const amdim_loader_serve_options *base, tune_row *row, double seconds)
{
    int fds[2];
    row->ok = 0;
    if (pipe(fds) != 0) {
        snprintf(row->err, sizeof row->err, "pipe() failed");
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(row->err, sizeof row->err, "fork() failed");
        close(fds[0]), close(fds[1]);
        return;
    }
    if (pid == 0) {
        close(fds[0]);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, 2);
        static volatile sig_atomic_t cancel;
        amdim_loader_serve_options o = *base;
        o.workers = row->workers;
        o.queue_depth = row->queue_depth;
        o.slots = row->slots;
        o.epochs = 1000000;
        o.progress_interval = 1e9;
        o.out_fd = fds[1];
        o.cancel = &cancel;
        char err[512];
        _exit(amdim_loader_serve(&o, err, sizeof err) == 0 ? 0 : 1);
    }
    close(fds[1]);
    amdim_loader *l = NULL;
    amdim_loader_request req = {.has_seed = 0, .start_epoch = -1, .start_batch = -1, .epochs = -1};
    char err[512];
    int st = amdim_loader_attach(&l, fds[0], &req, err, sizeof err);
    if (st) {
        snprintf(row->err, sizeof row->err, "%s", err);
    } else {
        amdim_batch b;
        uint64_t pairs = 0;
        double t0 = 0, wait0 = 0;
        int warm = 0;
        for (;;) {
            if ((st = amdim_loader_next(l, &b)) != 0) {
                snprintf(row->err, sizeof row->err, "%s", st == 1 ? "data ran out" : amdim_loader_error(l));
                break;
            }
            uint32_t n = b.count;
            amdim_loader_release(l, &b);
            if (warm < 2 * row->workers) { /* every worker has filled its first slots */
                if (++warm == 2 * row->workers) {
                    t0 = amdim_now();
                    wait0 = amdim_loader_wait_seconds(l);
                }
                continue;
            }
            pairs += n;
            double dt = amdim_now() - t0;
            if (dt >= seconds) {
                row->pairs_per_s = pairs / dt;
                row->wait_share = (amdim_loader_wait_seconds(l) - wait0) / dt;
                row->ok = 1;
                break;
            }
        }
    }
    amdim_loader_close(l);
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
}

static void print_row(const tune_row *r)
{
    if (r->ok)
        printf("%7d %11d %5d %10.0f %12.0f\n", r->workers, r->queue_depth, r->slots, r->pairs_per_s,
               r->pairs_per_s / r->workers);
    else
        printf("%7d %11d %5d     failed: %s\n", r->workers, r->queue_depth, r->slots, r->err);
    fflush(stdout);
}

int amdim_loader_tune(const amdim_loader_serve_options *opt, int max_workers, double seconds, double target)
{
    printf("# amdim-load --tune %s: %d cores, %s, decode %s, batch %d, %.1f s per setting\n", opt->path,
           amdim_cpu_count(), amdim_simd_name(amdim_simd_detect()),
           opt->decode == AMDIM_LOAD_DECODE_FULL ? "full" : opt->decode == AMDIM_LOAD_DECODE_REGION ? "region" : "scaled",
           opt->batch, seconds);
    printf("%7s %11s %5s %10s %12s\n", "workers", "queue-depth", "slots", "pairs/s", "per worker");
    tune_row *rows = calloc((size_t)max_workers + 8, sizeof *rows);
    int n = 0, best = -1;
    for (int w = 1; w <= max_workers; w++) {
        tune_row *r = &rows[n++];
        *r = (tune_row){.workers = w, .queue_depth = opt->queue_depth, .slots = opt->slots};
        measure(opt, r, seconds);
        print_row(r);
        if (!r->ok) {
            fprintf(stderr, "amdim-load: --tune failed at %d workers: %s\n", w, r->err);
            free(rows);
            return 1;
        }
        if (target > 0 && r->pairs_per_s >= target)
            break;
    }
    /* The worker count: the smallest reaching the target, else the one
     * within 3 % of the fastest with the fewest workers. */
    double top = 0;
    for (int i = 0; i < n; i++)
        top = rows[i].pairs_per_s > top ? rows[i].pairs_per_s : top;
    for (int i = 0; i < n && best < 0; i++)
        if (target > 0 ? rows[i].pairs_per_s >= target : rows[i].pairs_per_s >= 0.97 * top)
            best = i;
    if (best < 0)
        for (int i = 0; i < n; i++)
            if (rows[i].pairs_per_s >= top)
                best = i;
    /* Queue and ring depth at that worker count. */
    static const int qds[] = {4, 64}, slots[] = {2, 6};
    int w = rows[best].workers, nw = n;
    for (int i = 0; i < 2; i++) {
        rows[n] = (tune_row){.workers = w, .queue_depth = qds[i], .slots = opt->slots};
        measure(opt, &rows[n], seconds);
        print_row(&rows[n++]);
    }
    for (int i = 0; i < 2; i++) {
        rows[n] = (tune_row){.workers = w, .queue_depth = opt->queue_depth, .slots = slots[i]};
        measure(opt, &rows[n], seconds);
        print_row(&rows[n++]);
    }
    /* Keep the defaults unless another depth is more than 3 % faster. */
    int pick = best;
    for (int i = nw; i < n; i++)
        if (rows[i].ok && rows[i].pairs_per_s > 1.03 * rows[pick].pairs_per_s)
            pick = i;
    const tune_row *r = &rows[pick];
    if (target > 0 && r->pairs_per_s < target)
        printf("recommendation: the target of %.0f pairs/s was not reached; fastest measured: --workers %d "
               "--queue-depth %d --slots %d (%.0f pairs/s). Add cores or use a smaller preset.\n",
               target, r->workers, r->queue_depth, r->slots, r->pairs_per_s);
    else
        printf("recommendation: --workers %d --queue-depth %d --slots %d (%.0f pairs/s%s)\n", r->workers,
               r->queue_depth, r->slots, r->pairs_per_s, target > 0 ? ", reaches the target" : ", fewest workers within 3 % of the fastest");
    int failed = 0;
    for (int i = 0; i < n; i++)
        failed |= !rows[i].ok;
    free(rows);
    return failed ? 1 : 0;
}
