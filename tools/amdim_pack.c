/* amdim-pack: converts a dataset into (one split of) an amdim LMDB file.
 * Parses arguments and prints; the work is in dataset/amdim_pack.h. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_dataset.h"
#include "amdim_pack.h"

static const char *usage_text =
    "Usage: amdim-pack [options] FORMAT SRC OUT\n"
    "       amdim-pack --info OUT\n"
    "\n"
    "Packs a dataset into one LMDB file (OUT) that amdim-load reads. Each run\n"
    "writes one split; run again with another --split to add one.\n"
    "\n"
    "FORMAT and SRC:\n"
    "  imagefolder DIR    DIR/<class>/<image>; sorted class names give the labels\n"
    "  list FILE          lines 'relative/path label' (paths relative to --root)\n"
    "  cifar10 DIR|FILE   cifar-10-batches-bin/ (split train or test) or one .bin\n"
    "  cifar100 DIR|FILE  cifar-100-binary/ (split train or test) or one .bin\n"
    "  stl10 DIR|FILE     stl10_binary/ (split train, test or unlabeled) or one _X.bin\n"
    "  idx FILE           MNIST-style IDX images (.gz or not); labels found by name\n"
    "\n"
    "Options:\n"
    "  -s, --split NAME        split to write (default: train)\n"
    "  -r, --root DIR          list: directory the paths are relative to\n"
    "                          (default: the list file's directory)\n"
    "      --allow-outside-root  list: accept absolute paths and paths with '..' above --root\n"
    "  -l, --labels FILE       idx, stl10: labels file (default: found by name)\n"
    "  -c, --class-names FILE  one class name per line\n"
    "      --coarse            cifar100: use the 20 coarse labels as labels\n"
    "  -j, --threads N         worker threads (default: all cores)\n"
    "      --max-side N        shrink JPEGs whose longer side exceeds N (bicubic)\n"
    "      --quality Q         re-encode JPEGs at quality Q (1-100); converted\n"
    "                          images (CMYK, grey, PNG) use 95 unless given\n"
    "      --no-verify         parse headers only instead of fully decoding\n"
    "      --max-pixels N      reject images with more pixels (default 89478485)\n"
    "  -f, --force             replace an existing split or output file\n"
    "      --progress-interval S  seconds between progress lines when stderr\n"
    "                          is not a terminal (default 5)\n"
    "  -q, --quiet             do not print one line per skipped image\n"
    "      --info              print a summary of OUT as key: value lines\n"
    "  -h, --help              show this help\n"
    "\n"
    "Skipped images are listed in OUT.<split>.report.txt. Exit status: 0 done,\n"
    "1 failed (nothing written under OUT), 2 bad usage. OUT is created with mode\n"
    "0644 less the umask: pack under 'umask 077' to keep a dataset private.\n";

static volatile sig_atomic_t g_cancel;

static void on_signal(int sig)
{
    (void)sig;
    g_cancel = 1;
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "amdim-pack: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'amdim-pack --help'.\n");
    return 2;
}

typedef struct {
    amdim_progress progress;
    int quiet;
} cli_ctx;

static void on_event(const amdim_pack_event *ev, void *p)
{
    cli_ctx *c = p;
    if (c->quiet && ev->kind != AMDIM_PACK_EVENT_NOTE)
        return;
    amdim_progress_clear(&c->progress);
    switch (ev->kind) {
    case AMDIM_PACK_EVENT_SKIP:
        fprintf(stderr, "amdim-pack: skipped %s: %s (%s)\n", ev->path, amdim_skip_reason_name(ev->reason), ev->detail);
        break;
    case AMDIM_PACK_EVENT_WARNING:
        fprintf(stderr, "amdim-pack: kept %s despite a decoder warning (%s)\n", ev->path, ev->detail);
        break;
    case AMDIM_PACK_EVENT_CONVERT:
        fprintf(stderr, "amdim-pack: converted %s (%s)\n", ev->path, ev->detail);
        break;
    case AMDIM_PACK_EVENT_NOTE:
        fprintf(stderr, "amdim-pack: note: %s\n", ev->detail);
        break;
    }
}

static void on_progress(uint64_t done, uint64_t total, void *p)
{
    cli_ctx *c = p;
    amdim_progress_update(&c->progress, done, total);
}

static void print_meta(const char *key, const char *value, void *ctx)
{
    (void)ctx;
    if (strcmp(key, "format_version") == 0)
        return;
    printf("%s: ", key);
    for (const char *p = value; *p; p++)
        putchar(*p == '\n' ? ',' : *p);
    putchar('\n');
}

static int run_info(const char *path)
{
    char err[1024];
    amdim_dataset *ds;
    int st = amdim_dataset_open(&ds, path, err, sizeof err);
    if (st) {
        fprintf(stderr, "amdim-pack: --info failed: %s (%s)\n", amdim_strerror(st), err);
        return 1;
    }
    uint64_t records = 0, skipped = 0;
    int32_t classes = 0;
    int n = amdim_dataset_split_count(ds);
    for (int i = 0; i < n; i++) {
        amdim_split_info info;
        st = amdim_dataset_split_info(ds, amdim_dataset_split_name(ds, i), &info);
        if (st) {
            fprintf(stderr, "amdim-pack: --info failed: %s (%s)\n", amdim_strerror(st), amdim_dataset_error(ds));
            amdim_dataset_close(ds);
            return 1;
        }
        records += info.records;
        skipped += info.skipped;
        if (info.classes > classes)
            classes = info.classes;
    }
    printf("path: %s\nformat_version: %d\nsplits:", path, AMDIM_DATASET_FORMAT_VERSION);
    for (int i = 0; i < n; i++)
        printf(" %s", amdim_dataset_split_name(ds, i));
    printf("\nrecords: %llu\nclasses: %d\nskipped: %llu\n", (unsigned long long)records, classes,
           (unsigned long long)skipped);
    amdim_dataset_meta_each(ds, print_meta, NULL);
    amdim_dataset_close(ds);
    return 0;
}

int main(int argc, char **argv)
{
    enum { OPT_COARSE = 256, OPT_MAX_SIDE, OPT_QUALITY, OPT_NO_VERIFY, OPT_MAX_PIXELS, OPT_INFO, OPT_INTERVAL, OPT_OUTSIDE_ROOT };
    static const struct option longopts[] = {
        {"split", required_argument, NULL, 's'},
        {"root", required_argument, NULL, 'r'},
        {"allow-outside-root", no_argument, NULL, OPT_OUTSIDE_ROOT},
        {"labels", required_argument, NULL, 'l'},
        {"class-names", required_argument, NULL, 'c'},
        {"coarse", no_argument, NULL, OPT_COARSE},
        {"threads", required_argument, NULL, 'j'},
        {"max-side", required_argument, NULL, OPT_MAX_SIDE},
        {"quality", required_argument, NULL, OPT_QUALITY},
        {"no-verify", no_argument, NULL, OPT_NO_VERIFY},
        {"max-pixels", required_argument, NULL, OPT_MAX_PIXELS},
        {"force", no_argument, NULL, 'f'},
        {"progress-interval", required_argument, NULL, OPT_INTERVAL},
        {"quiet", no_argument, NULL, 'q'},
        {"info", no_argument, NULL, OPT_INFO},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    amdim_pack_options opt = {0};
    opt.split = "train";
    int info = 0, quiet = 0;
    double interval = 5.0;
    long long v;
    int c;
    while ((c = getopt_long(argc, argv, "s:r:l:c:j:fqh", longopts, NULL)) != -1) {
        switch (c) {
        case 's': opt.split = optarg; break;
        case 'r': opt.root = optarg; break;
        case 'l': opt.labels = optarg; break;
        case 'c': opt.class_names = optarg; break;
        case OPT_COARSE: opt.cifar100_coarse = 1; break;
        case OPT_OUTSIDE_ROOT: opt.allow_outside_root = 1; break;
        case 'j':
            if (amdim_cli_int("amdim-pack", "--threads", optarg, 1, 1024, &v))
                return 2;
            opt.threads = (int)v;
            break;
        case OPT_MAX_SIDE:
            if (amdim_cli_int("amdim-pack", "--max-side", optarg, 1, 1 << 20, &v))
                return 2;
            opt.max_side = (int)v;
            break;
        case OPT_QUALITY:
            if (amdim_cli_int("amdim-pack", "--quality", optarg, 1, 100, &v))
                return 2;
            opt.quality = (int)v;
            break;
        case OPT_NO_VERIFY: opt.no_verify = 1; break;
        case OPT_MAX_PIXELS:
            if (amdim_cli_int("amdim-pack", "--max-pixels", optarg, 1, LLONG_MAX, &v))
                return 2;
            opt.max_pixels = (uint64_t)v;
            break;
        case 'f': opt.force = 1; break;
        case OPT_INTERVAL: {
            char *end;
            interval = strtod(optarg, &end);
            if (*end || end == optarg || !(interval > 0 && interval <= 3600))
                return usage_error("--progress-interval must be a number of seconds in (0, 3600], got '%s'", optarg);
            break;
        }
        case 'q': quiet = 1; break;
        case OPT_INFO: info = 1; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: fprintf(stderr, "Try 'amdim-pack --help'.\n"); return 2;
        }
    }
    if (info) {
        if (argc - optind != 1)
            return usage_error("--info takes exactly one file%s", "");
        return run_info(argv[optind]);
    }
    if (argc - optind != 3)
        return usage_error("expected FORMAT SRC OUT, got %s", argc - optind < 3 ? "too few arguments" : "too many arguments");
    if (amdim_pack_format_parse(argv[optind], &opt.format))
        return usage_error("unknown FORMAT '%s' (imagefolder, list, cifar10, cifar100, stl10, idx)", argv[optind]);
    opt.src = argv[optind + 1];
    opt.out = argv[optind + 2];
    if (opt.root && opt.format != AMDIM_PACK_LIST)
        return usage_error("--root applies to the list format only%s", "");
    if (opt.cifar100_coarse && opt.format != AMDIM_PACK_CIFAR100)
        return usage_error("--coarse applies to cifar100 only%s", "");
    if (opt.labels && opt.format != AMDIM_PACK_IDX && opt.format != AMDIM_PACK_STL10)
        return usage_error("--labels applies to idx and stl10 only%s", "");

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    opt.cancel = &g_cancel;

    cli_ctx ctx = {.quiet = quiet};
    amdim_progress_init(&ctx.progress, stderr, "amdim-pack", "images", interval);
    opt.on_event = on_event;
    opt.on_progress = on_progress;
    opt.ctx = &ctx;
    fprintf(stderr, "amdim-pack: %s %s -> %s split %s, threads %d, verify %s, max-side %d, quality %d\n",
            amdim_pack_format_name(opt.format), opt.src, opt.out, opt.split,
            opt.threads ? opt.threads : amdim_cpu_count(), opt.no_verify ? "headers" : "full decode",
            opt.max_side, opt.quality);

    amdim_pack_summary sum;
    char err[2048];
    int st = amdim_pack_run(&opt, &sum, err, sizeof err);
    amdim_progress_clear(&ctx.progress);
    if (st) {
        fprintf(stderr, "amdim-pack: pack failed: %s (%s)\n", amdim_strerror(st), err);
        return st == AMDIM_E_CANCELLED ? 130 : 1;
    }
    amdim_progress_finish(&ctx.progress, sum.items);
    printf("split: %s\nrecords: %llu\nclasses: %d\nskipped: %llu\n", opt.split,
           (unsigned long long)sum.records, sum.classes, (unsigned long long)sum.skipped);
    for (int r = 0; r < AMDIM_SKIP_REASONS; r++)
        if (sum.skipped_by[r])
            printf("skipped.%s: %llu\n", amdim_skip_reason_name((amdim_skip_reason)r),
                   (unsigned long long)sum.skipped_by[r]);
    printf("warnings: %llu\nconverted: %llu\nresized: %llu\nbytes_in: %llu\nbytes_out: %llu\nseconds: %.2f\nimages_per_s: %.0f\nreport: %s\n",
           (unsigned long long)sum.warnings, (unsigned long long)sum.converted,
           (unsigned long long)sum.resized, (unsigned long long)sum.bytes_in,
           (unsigned long long)sum.bytes_out, sum.seconds, sum.seconds > 0 ? sum.items / sum.seconds : 0.0,
           sum.report_path);
    return 0;
}
