/* amdim-peek: the first consumer of amdim-load. Verifies delivery (every
 * record exactly once per epoch, batches exactly as the seed dictates:
 * amdim_delivery, loader/delivery.c), measures throughput, and can write a
 * contact sheet of the views (amdim_sheet, image/draw.c). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "amdim_image.h"
#include "amdim_loader.h"

static const char *usage_text =
    "Usage: amdim-load [options] DATA.lmdb | amdim-peek [options]\n"
    "\n"
    "Consumes batches from amdim-load, checks that every record arrives exactly\n"
    "once per epoch and in the order the seed dictates, and prints key: value\n"
    "lines: pairs, batches, epochs, duplicates, missing, mismatched, pairs_per_s,\n"
    "wait_fraction, digest.\n"
    "\n"
    "Options:\n"
    "      --batches N       stop after N batches\n"
    "      --sheet FILE.png  write a contact sheet: view 1 beside view 2, label below\n"
    "      --pairs N         pairs on the sheet (default: 16)\n"
    "      --seed S          ask the loader for this seed\n"
    "      --start-epoch E   ask the loader to start at epoch E ...\n"
    "      --start-batch B   ... and batch B\n"
    "      --epochs N        ask the loader for N epochs\n"
    "      --delay-ms M      hold each batch M ms (simulates a busy trainer)\n"
    "  -v, --verbose         one line per batch: epoch, batch, digest\n"
    "  -h, --help            show this help\n";

int main(int argc, char **argv)
{
    enum { OPT_BATCHES = 256, OPT_SHEET, OPT_PAIRS, OPT_SEED, OPT_SE, OPT_SB, OPT_EPOCHS, OPT_DELAY };
    static const struct option longopts[] = {
        {"batches", required_argument, NULL, OPT_BATCHES}, {"sheet", required_argument, NULL, OPT_SHEET},
        {"pairs", required_argument, NULL, OPT_PAIRS},     {"seed", required_argument, NULL, OPT_SEED},
        {"start-epoch", required_argument, NULL, OPT_SE},  {"start-batch", required_argument, NULL, OPT_SB},
        {"epochs", required_argument, NULL, OPT_EPOCHS},   {"delay-ms", required_argument, NULL, OPT_DELAY},
        {"verbose", no_argument, NULL, 'v'},               {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    long long max_batches = -1, pairs_on_sheet = 16, delay_ms = 0, v;
    const char *sheet_path = NULL;
    int verbose = 0, c;
    amdim_loader_request req = {.start_epoch = -1, .start_batch = -1, .epochs = -1};
    while ((c = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_BATCHES: if (amdim_cli_int("amdim-peek", "--batches", optarg, 1, LLONG_MAX, &max_batches)) return 2; break;
        case OPT_SHEET: sheet_path = optarg; break;
        case OPT_PAIRS: if (amdim_cli_int("amdim-peek", "--pairs", optarg, 1, 1024, &pairs_on_sheet)) return 2; break;
        case OPT_SEED: if (amdim_cli_int("amdim-peek", "--seed", optarg, 0, LLONG_MAX, &v)) return 2; req.has_seed = 1; req.seed = (uint64_t)v; break;
        case OPT_SE: if (amdim_cli_int("amdim-peek", "--start-epoch", optarg, 0, LLONG_MAX, &v)) return 2; req.start_epoch = v; break;
        case OPT_SB: if (amdim_cli_int("amdim-peek", "--start-batch", optarg, 0, LLONG_MAX, &v)) return 2; req.start_batch = v; break;
        case OPT_EPOCHS: if (amdim_cli_int("amdim-peek", "--epochs", optarg, 1, 1000000, &v)) return 2; req.epochs = v; break;
        case OPT_DELAY: if (amdim_cli_int("amdim-peek", "--delay-ms", optarg, 0, 60000, &delay_ms)) return 2; break;
        case 'v': verbose = 1; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: fprintf(stderr, "Try 'amdim-peek --help'.\n"); return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "amdim-peek: unexpected argument '%s'\nTry 'amdim-peek --help'.\n", argv[optind]);
        return 2;
    }
    char err[2048];
    amdim_loader *l;
    int st = amdim_loader_attach(&l, 0, &req, err, sizeof err);
    if (st) {
        fprintf(stderr, "amdim-peek: attaching to amdim-load failed: %s (%s)\n", amdim_strerror(st), err);
        return 1;
    }
    const amdim_loader_info *in = amdim_loader_get_info(l);
    fprintf(stderr, "amdim-peek: %s split %s, %llu records, batch %u, %ux%u views, %u workers, seed %llu, epochs %llu..%llu\n",
            in->preset, in->split, (unsigned long long)in->records, in->batch, in->size, in->size, in->workers,
            (unsigned long long)in->seed, (unsigned long long)in->start_epoch,
            (unsigned long long)(in->start_epoch + in->epochs - 1));
    amdim_delivery *d = amdim_delivery_new(l);
    amdim_sheet sh = {0};
    if (!d || (sheet_path && amdim_sheet_init(&sh, (int)in->size, (int)pairs_on_sheet))) {
        fprintf(stderr, "amdim-peek: out of memory\n");
        amdim_delivery_free(d);
        amdim_loader_close(l);
        return 1;
    }
    double t0 = amdim_now();
    amdim_batch b;
    int rc = 0;
    size_t view = (size_t)in->size * in->size * 3;
    for (uint64_t batches = 0; max_batches < 0 || (long long)batches < max_batches; batches++) {
        rc = amdim_loader_next(l, &b);
        if (rc == 1) {
            rc = 0;
            break;
        }
        if (rc < 0)
            break;
        uint64_t h = amdim_delivery_add(d, &b);
        if (verbose)
            printf("batch %llu %llu %016llx\n", (unsigned long long)b.epoch, (unsigned long long)b.index,
                   (unsigned long long)h);
        for (uint32_t k = 0; sheet_path && k < b.count; k++)
            if (!amdim_sheet_add(&sh, b.view1 + k * view, b.view2 + k * view, b.labels[k]))
                break;
        if (delay_ms) {
            struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        amdim_loader_release(l, &b);
    }
    amdim_delivery_counts got = amdim_delivery_finish(d);
    double dt = amdim_now() - t0;
    if (rc < 0)
        fprintf(stderr, "amdim-peek: delivery failed after %llu batches: %s (%s)\n", (unsigned long long)got.batches,
                amdim_strerror(rc), amdim_loader_error(l));
    printf("pairs: %llu\nbatches: %llu\nepochs: %llu\nduplicates: %llu\nmissing: %llu\nmismatched: %llu\n"
           "seconds: %.3f\npairs_per_s: %.1f\nwait_fraction: %.3f\ndigest: %016llx\n",
           (unsigned long long)got.pairs, (unsigned long long)got.batches, (unsigned long long)got.epochs,
           (unsigned long long)got.duplicates, (unsigned long long)got.missing, (unsigned long long)got.mismatched, dt,
           dt > 0 ? got.pairs / dt : 0.0, dt > 0 ? amdim_loader_wait_seconds(l) / dt : 0.0,
           (unsigned long long)got.digest);
    fflush(stdout);
    if (sheet_path && sh.n > 0) {
        if (amdim_sheet_write(&sh, sheet_path, err, sizeof err)) {
            fprintf(stderr, "amdim-peek: %s\n", err);
            rc = rc ? rc : -1;
        } else {
            fprintf(stderr, "amdim-peek: wrote %d pairs to %s\n", sh.n, sheet_path);
        }
    }
    amdim_sheet_free(&sh);
    amdim_delivery_free(d);
    amdim_loader_close(l);
    return rc < 0 || got.duplicates || got.missing || got.mismatched ? 1 : 0;
}
