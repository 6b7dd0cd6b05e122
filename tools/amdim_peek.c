/* amdim-peek: the first consumer of amdim-load. Verifies delivery (every
 * record exactly once per epoch, batches exactly as the seed dictates),
 * measures throughput, and can write a contact sheet of the views. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* 3x5 digits for labels on the sheet; index 10 is '-'. */
static const uint8_t font[11][5] = {
    {7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7}, {5, 5, 7, 1, 1}, {7, 4, 7, 1, 7},
    {7, 4, 7, 5, 7}, {7, 1, 1, 1, 1}, {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7}, {0, 0, 7, 0, 0}};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void draw_label(uint8_t *img, int stride_px, int x0, int y0, int label)
{
    char s[16];
    snprintf(s, sizeof s, "%d", label);
    for (int i = 0; s[i]; i++) {
        int g = s[i] == '-' ? 10 : s[i] - '0';
        for (int r = 0; r < 5; r++)
            for (int c = 0; c < 3; c++)
                if (font[g][r] & (4 >> c))
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++)
                            memset(img + ((size_t)(y0 + 2 * r + dy) * stride_px + x0 + i * 8 + 2 * c + dx) * 3, 255, 3);
    }
}

typedef struct {
    uint8_t *img;
    int w, h, cols, cell_w, cell_h, size, n, max;
} sheet;

static void sheet_add(sheet *s, const uint8_t *v1, const uint8_t *v2, int label)
{
    if (s->n >= s->max)
        return;
    int col = s->n % s->cols, row = s->n / s->cols;
    int x0 = col * s->cell_w + 2, y0 = row * s->cell_h + 2, S = s->size;
    for (int y = 0; y < S; y++) {
        memcpy(s->img + ((size_t)(y0 + y) * s->w + x0) * 3, v1 + (size_t)y * S * 3, (size_t)S * 3);
        memcpy(s->img + ((size_t)(y0 + y) * s->w + x0 + S + 2) * 3, v2 + (size_t)y * S * 3, (size_t)S * 3);
    }
    draw_label(s->img, s->w, x0, y0 + S + 3, label);
    s->n++;
}

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
    size_t nwords = (in->records + 63) / 64;
    uint64_t *seen = calloc(nwords ? nwords : 1, 8), *expect = malloc(in->batch * sizeof *expect);
    sheet sh = {0};
    if (sheet_path) {
        sh.size = (int)in->size;
        sh.max = (int)pairs_on_sheet;
        sh.cols = 4;
        sh.cell_w = 2 * sh.size + 6;
        sh.cell_h = sh.size + 16;
        sh.w = sh.cols * sh.cell_w;
        sh.h = ((sh.max + sh.cols - 1) / sh.cols) * sh.cell_h;
        sh.img = calloc((size_t)sh.w * sh.h * 3, 1);
    }
    uint64_t pairs = 0, batches = 0, epochs = 0, dups = 0, missing = 0, mismatched = 0, digest = 1469598103934665603ull;
    int64_t cur_epoch = -1;
    uint64_t first_index = 0, last_index = 0;
    double t0 = amdim_now();
    amdim_batch b;
    int rc = 0;
    /* At the end of an epoch (or of the run): which expected records never came. */
#define CLOSE_EPOCH()                                                                   \
    do {                                                                                \
        if (cur_epoch >= 0) {                                                           \
            for (uint64_t bi = first_index; bi <= last_index; bi++) {                   \
                uint32_t n = amdim_loader_expected_records(l, (uint64_t)cur_epoch, bi, expect); \
                for (uint32_t k = 0; k < n; k++)                                        \
                    missing += !(seen[expect[k] / 64] >> (expect[k] % 64) & 1);        \
            }                                                                           \
            epochs++;                                                                   \
            memset(seen, 0, nwords * 8);                                                \
        }                                                                               \
    } while (0)
    while (max_batches < 0 || (long long)batches < max_batches) {
        rc = amdim_loader_next(l, &b);
        if (rc == 1) {
            rc = 0;
            break;
        }
        if (rc < 0)
            break;
        if ((int64_t)b.epoch != cur_epoch) {
            CLOSE_EPOCH();
            cur_epoch = (int64_t)b.epoch;
            first_index = b.index;
        }
        last_index = b.index;
        uint32_t n = amdim_loader_expected_records(l, b.epoch, b.index, expect);
        if (n != b.count || memcmp(expect, b.records, n * sizeof *expect) != 0)
            mismatched++;
        for (uint32_t k = 0; k < b.count; k++) {
            uint64_t r = b.records[k];
            if (r >= in->records) {
                mismatched++;
                continue;
            }
            if (seen[r / 64] >> (r % 64) & 1)
                dups++;
            seen[r / 64] |= 1ull << (r % 64);
        }
        size_t view = (size_t)in->size * in->size * 3;
        uint64_t h = fnv(1469598103934665603ull, &b.epoch, 8);
        h = fnv(h, &b.index, 8);
        h = fnv(h, b.labels, b.count * sizeof *b.labels);
        h = fnv(h, b.records, b.count * sizeof *b.records);
        h = fnv(h, b.view1, b.count * view);
        h = fnv(h, b.view2, b.count * view);
        digest = fnv(digest, &h, 8);
        if (verbose)
            printf("batch %llu %llu %016llx\n", (unsigned long long)b.epoch, (unsigned long long)b.index, (unsigned long long)h);
        for (uint32_t k = 0; sheet_path && k < b.count && sh.n < sh.max; k++)
            sheet_add(&sh, b.view1 + k * view, b.view2 + k * view, b.labels[k]);
        if (delay_ms) {
            struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        pairs += b.count;
        batches++;
        amdim_loader_release(l, &b);
    }
    CLOSE_EPOCH();
    double dt = amdim_now() - t0;
    if (rc < 0)
        fprintf(stderr, "amdim-peek: delivery failed after %llu batches: %s (%s)\n", (unsigned long long)batches,
                amdim_strerror(rc), amdim_loader_error(l));
    printf("pairs: %llu\nbatches: %llu\nepochs: %llu\nduplicates: %llu\nmissing: %llu\nmismatched: %llu\n"
           "seconds: %.3f\npairs_per_s: %.1f\nwait_fraction: %.3f\ndigest: %016llx\n",
           (unsigned long long)pairs, (unsigned long long)batches, (unsigned long long)epochs, (unsigned long long)dups,
           (unsigned long long)missing, (unsigned long long)mismatched, dt, dt > 0 ? pairs / dt : 0.0,
           dt > 0 ? amdim_loader_wait_seconds(l) / dt : 0.0, (unsigned long long)digest);
    fflush(stdout);
    if (sheet_path && sh.n > 0) {
        png_image pi;
        memset(&pi, 0, sizeof pi);
        pi.version = PNG_IMAGE_VERSION;
        pi.width = (png_uint_32)sh.w;
        pi.height = (png_uint_32)(((sh.n + sh.cols - 1) / sh.cols) * sh.cell_h);
        pi.format = PNG_FORMAT_RGB;
        if (!png_image_write_to_file(&pi, sheet_path, 0, sh.img, 0, NULL)) {
            fprintf(stderr, "amdim-peek: writing %s failed: %s\n", sheet_path, pi.message);
            rc = rc ? rc : -1;
        } else {
            fprintf(stderr, "amdim-peek: wrote %d pairs to %s\n", sh.n, sheet_path);
        }
    }
    free(sh.img);
    free(seen);
    free(expect);
    amdim_loader_close(l);
    return rc < 0 || dups || missing || mismatched ? 1 : 0;
}
