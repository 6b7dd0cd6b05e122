/* amdim-load: loader processes feeding a consumer through shared memory.
 * Parses arguments; the work is in loader/amdim_loader.h. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amdim_augment.h"
#include "amdim_loader.h"

static const char *usage_text =
    "Usage: amdim-load [options] DATA.lmdb | CONSUMER\n"
    "\n"
    "Starts worker processes that read records of one split, make AMDIM's two\n"
    "augmented views of every image and hand whole batches to CONSUMER (e.g.\n"
    "amdim-train, amdim-peek) through shared memory. Standard output carries\n"
    "only the control protocol, so it must be a pipe.\n"
    "\n"
    "Options:\n"
    "  -s, --split NAME        split to read (default: train)\n"
    "  -w, --workers N         worker processes (default: cores - 1, at least 1)\n"
    "  -b, --batch B           pairs per batch (default: 200)\n"
    "  -e, --epochs E          epochs (default: 1; the consumer may ask otherwise)\n"
    "      --seed S            seed of the order and the augmentations (default: 0)\n"
    "  -p, --preset NAME       imagenet (128 px), stl10 (64 px) or cifar (32 px);\n"
    "                          dim28, dim32, dim64: the image itself, no augmentation;\n"
    "                          dim-stl10: resized to 64 (bilinear) and flipped (Deep\n"
    "                          InfoMax's data); default: implied by the data\n"
    "      --slots N           batches each worker may have ready (default: 3); all\n"
    "                          workers' slots must fit in half the memory available\n"
    "      --queue-depth Q     reads in flight per worker (default: 16)\n"
    "      --keep-last         keep the final partial batch of each epoch\n"
    "      --shard R/N|auto    make only rank R's share of every global batch (--batch is global,\n"
    "                          a multiple of N); auto: rank and size from mpirun / srun\n"
    "      --respawn N         replace a dead worker up to N times (default: 0)\n"
    "      --no-uring          read with pread instead of io_uring\n"
    "      --decode MODE       JPEG decoding: scaled (default: only the part both crops\n"
    "                          cover, at 1/2 or 1/4 scale when both crops stay at least\n"
    "                          the view size), region (that part at full scale: the\n"
    "                          reference bytes) or full (the whole image)\n"
    "      --tune              measure pairs/s for 1..N workers (and queue and ring\n"
    "                          depths) on DATA.lmdb, print the table and recommend\n"
    "                          the smallest setting reaching --target; no consumer\n"
    "      --target R          pairs/s the trainer needs (with --tune)\n"
    "      --max-workers N     largest worker count --tune tries (default: cores)\n"
    "      --tune-seconds S    seconds per --tune measurement (default: 3)\n"
    "      --progress-interval S  seconds between progress lines (default: 10)\n"
    "  -h, --help              show this help\n";

static volatile sig_atomic_t g_cancel;
static void on_signal(int sig)
{
    (void)sig;
    g_cancel = 1;
}

static int usage_error(const char *msg, const char *arg)
{
    fprintf(stderr, "amdim-load: ");
    fprintf(stderr, msg, arg);
    fprintf(stderr, "\nTry 'amdim-load --help'.\n");
    return 2;
}

/* A positive number for option `name`; prints the usage error and returns
 * -1 otherwise. */
static int positive(const char *name, const char *s, double *out)
{
    char *end, msg[160];
    *out = strtod(s, &end);
    if (*end || end == s || !(*out > 0)) {
        snprintf(msg, sizeof msg, "%s must be a positive number, got '%%s'", name);
        usage_error(msg, s);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    enum { OPT_SEED = 256, OPT_SLOTS, OPT_QD, OPT_KEEP, OPT_RESPAWN, OPT_NOURING, OPT_INTERVAL, OPT_DECODE,
           OPT_TUNE, OPT_TARGET, OPT_MAXW, OPT_TUNESEC, OPT_SHARD };
    static const struct option longopts[] = {
        {"split", required_argument, NULL, 's'},     {"workers", required_argument, NULL, 'w'},
        {"batch", required_argument, NULL, 'b'},     {"epochs", required_argument, NULL, 'e'},
        {"seed", required_argument, NULL, OPT_SEED}, {"preset", required_argument, NULL, 'p'},
        {"slots", required_argument, NULL, OPT_SLOTS}, {"queue-depth", required_argument, NULL, OPT_QD},
        {"keep-last", no_argument, NULL, OPT_KEEP},  {"respawn", required_argument, NULL, OPT_RESPAWN},
        {"no-uring", no_argument, NULL, OPT_NOURING}, {"progress-interval", required_argument, NULL, OPT_INTERVAL},
        {"decode", required_argument, NULL, OPT_DECODE}, {"tune", no_argument, NULL, OPT_TUNE},
        {"target", required_argument, NULL, OPT_TARGET}, {"max-workers", required_argument, NULL, OPT_MAXW},
        {"tune-seconds", required_argument, NULL, OPT_TUNESEC}, {"shard", required_argument, NULL, OPT_SHARD},
        {"help", no_argument, NULL, 'h'},            {NULL, 0, NULL, 0}};
    int cores = amdim_cpu_count();
    amdim_loader_serve_options o = {.split = "train", .workers = cores > 1 ? cores - 1 : 1, .batch = 200, .slots = 3,
                            .queue_depth = 16, .epochs = 1, .out_fd = 1};
    long long v;
    int c, tune = 0, max_workers = cores;
    amdim_augment_config preset_cfg;
    double target = 0, tune_seconds = 3;
    while ((c = getopt_long(argc, argv, "s:w:b:e:p:h", longopts, NULL)) != -1) {
        switch (c) {
        case 's': o.split = optarg; break;
        case 'w': if (amdim_cli_int("amdim-load", "--workers", optarg, 1, 253, &v)) return 2; o.workers = (int)v; break;
        case 'b': if (amdim_cli_int("amdim-load", "--batch", optarg, 1, 1 << 20, &v)) return 2; o.batch = (int)v; break;
        case 'e': if (amdim_cli_int("amdim-load", "--epochs", optarg, 1, 1000000, &v)) return 2; o.epochs = v; break;
        case OPT_SEED: if (amdim_cli_int("amdim-load", "--seed", optarg, 0, LLONG_MAX, &v)) return 2; o.seed = (uint64_t)v; break;
        case 'p':
            if (amdim_augment_preset(optarg, &preset_cfg))
                return usage_error("unknown preset '%s' (" AMDIM_AUGMENT_PRESETS ")", optarg);
            o.preset = optarg;
            break;
        case OPT_SLOTS: if (amdim_cli_int("amdim-load", "--slots", optarg, 2, 1024, &v)) return 2; o.slots = (int)v; break;
        case OPT_QD: if (amdim_cli_int("amdim-load", "--queue-depth", optarg, 1, 256, &v)) return 2; o.queue_depth = (int)v; break;
        case OPT_KEEP: o.keep_last = 1; break;
        case OPT_RESPAWN: if (amdim_cli_int("amdim-load", "--respawn", optarg, 0, 1000000, &v)) return 2; o.respawn = (int)v; break;
        case OPT_NOURING: o.no_uring = 1; break;
        case OPT_INTERVAL: if (positive("--progress-interval", optarg, &o.progress_interval)) return 2; break;
        case OPT_DECODE:
            if (!strcmp(optarg, "scaled"))
                o.decode = AMDIM_LOAD_DECODE_SCALED;
            else if (!strcmp(optarg, "region"))
                o.decode = AMDIM_LOAD_DECODE_REGION;
            else if (!strcmp(optarg, "full"))
                o.decode = AMDIM_LOAD_DECODE_FULL;
            else
                return usage_error("--decode must be scaled, region or full, got '%s'", optarg);
            break;
        case OPT_SHARD: {
            char why[256];
            if (amdim_loader_parse_shard(optarg, &o.shard_rank, &o.shard_size, why, sizeof why))
                return usage_error("%s", why);
            break;
        }
        case OPT_TUNE: tune = 1; break;
        case OPT_TARGET: if (positive("--target", optarg, &target)) return 2; break;
        case OPT_MAXW: if (amdim_cli_int("amdim-load", "--max-workers", optarg, 1, 253, &v)) return 2; max_workers = (int)v; break;
        case OPT_TUNESEC: if (positive("--tune-seconds", optarg, &tune_seconds)) return 2; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: fprintf(stderr, "Try 'amdim-load --help'.\n"); return 2;
        }
    }
    if (argc - optind != 1)
        return usage_error("expected one DATA.lmdb argument%s", "");
    if (o.shard_size > 1 && (o.batch % o.shard_size != 0 || o.keep_last)) {
        char why[128];
        snprintf(why, sizeof why, "%d ranks need a global --batch divisible by %d (got %d)", o.shard_size,
                 o.shard_size, o.batch);
        return usage_error(o.keep_last ? "--shard and --keep-last do not mix: every rank's share must be whole%s"
                                       : "--shard: %s",
                           o.keep_last ? "" : why);
    }
    o.path = argv[optind];
    if (tune)
        return amdim_loader_tune(&o, max_workers, tune_seconds, target);
    if (target > 0)
        return usage_error("--target needs --tune%s", "");
    struct stat sb;
    if (isatty(1))
        return usage_error("standard output is a terminal; pipe amdim-load into a consumer, e.g. "
                           "'amdim-load %s | amdim-peek'", o.path);
    if (fstat(1, &sb) != 0 || !(S_ISFIFO(sb.st_mode) || S_ISSOCK(sb.st_mode)))
        return usage_error("standard output must be a pipe to a consumer, e.g. 'amdim-load %s | amdim-peek'", o.path);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    o.cancel = &g_cancel;
    char err[2048];
    int st = amdim_loader_serve(&o, err, sizeof err);
    if (st) {
        fprintf(stderr, "amdim-load: loading failed: %s (%s)\n", amdim_strerror(st), err);
        return st == AMDIM_E_CANCELLED ? 130 : 1;
    }
    return 0;
}
