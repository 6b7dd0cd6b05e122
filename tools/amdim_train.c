/* amdim-train: AMDIM training fed by amdim-load. Parses arguments; the
 * work is in trainer/run/amdim_run.h. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_dim.h"
#include "amdim_parallel.h"
#include "amdim_run.h"

static const char *usage_text =
    "Usage: amdim-load [loader options] DATA.lmdb | amdim-train --out RUN [options]\n"
    "       amdim-load --batch B DATA.lmdb | amdim-train --resume RUN [--steps S]\n"
    "       amdim-load LABELLED.lmdb | amdim-train --classifiers --init CKPT --out RUN\n"
    "       amdim-load --preset dim32 DATA.lmdb | amdim-train --model dim --out RUN [options]\n"
    "\n"
    "Trains AMDIM (or, with --model dim, Deep InfoMax) on the batches amdim-load\n"
    "makes (it tells the loader the seed and where to start), logs to stderr and\n"
    "RUN/metrics.jsonl, evaluates the online probes every epoch (AMDIM), and writes\n"
    "safetensors checkpoints to RUN.\n"
    "One process at a time uses RUN (a lock on RUN/run.lock, released when it\n"
    "ends however it ends): a second --out or --resume RUN is refused, naming the\n"
    "holder's pid. An AMDIM model and batch that would not fit in the memory this\n"
    "process may use (MemAvailable, the cgroup's limit) are refused before they are\n"
    "allocated, with both figures. Files are created with mode 0644 and RUN with\n"
    "0755, less the umask: run under 'umask 077' to keep a run private.\n"
    "\n"
    "Run:\n"
    "  -o, --out RUN           directory of a new run\n"
    "  -r, --resume RUN        continue the run in RUN from its last checkpoint\n"
    "      --eval DATA.lmdb    evaluate on this dataset ...\n"
    "      --eval-split NAME   ... split (default: test)\n"
    "      --eval-refresh N    batches that refresh BatchNorm statistics first (default 20)\n"
    "      --device D          auto, cpu or cuda (default auto: the CPU until the CUDA backend is verified on a GPU)\n"
    "      --precision P       fp32 or bf16 (CUDA only: bf16 activations and convolution and GEMM\n"
    "                          operands, fp32 accumulation, weights, scores and losses; docs/cuda.md);\n"
    "                          default bf16 on CUDA, fp32 on the CPU\n"
    "      --threads N         CPU compute threads (default: the cores amdim-load's workers leave, >= 1)\n"
    "  -e, --epochs E          epochs (default: what amdim-load was given)\n"
    "      --steps S           stop after S updates in total (0: save the initial model)\n"
    "  -b, --batch B           expected batch size (must match amdim-load's)\n"
    "      --seed S            seed of data order, augmentations and model\n"
    "      --log-every N       updates between log lines (default 50)\n"
    "      --checkpoint-every N  updates between checkpoints (default: every epoch)\n"
    "      --keep K            checkpoints to keep (default 3)\n"
    "Model (defaults from the encoder size the data implies):\n"
    "      --ndf N --n-rkhs N --n-depth N --use-bn 0|1 --tclip X\n"
    "      --objective nce|jsd|dv --lr X --warmup N --classes N\n"
    "      --allow-fewer-classes  accept --classes below the data's class count (labels from\n"
    "                          N up then train as unlabelled; refused otherwise)\n"
    "Mixture-based representations (docs/mixtures.md; CPU only for now):\n"
    "      --mixtures K        K mixture features of r1 for the 1t5/1t7 directions, 1..16 (default 1: off)\n"
    "      --mix-tau X         assignment temperature, q = softmax(X * s) (default 1)\n"
    "      --mix-entropy X     weight of the assignment entropy in the reported objective, >= 0 (default 1)\n"
    "      --probe-features F  what the probes read: r1 or mixture-mean (default r1; also with --classifiers)\n"
    "Data parallelism (docs/data-parallel.md):\n"
    "      --dist D            auto, none or mpi (default auto: MPI when an MPI launcher started\n"
    "                          this process as one of several ranks)\n"
    "      --sync-bn           BatchNorm statistics over the global batch (default: per rank)\n"
    "Deep InfoMax (docs/dim.md; the CPU only so far; the Run options above except the evaluation's,\n"
    "--device cuda and --precision; --objective and --lr below):\n"
    "      --model M           amdim or dim (default amdim); dim trains on the batches of amdim-load's\n"
    "                          presets dim28, dim32, dim64 or dim-stl10 (view1 only)\n"
    "      --dim-preset P      local: DIM(L), alpha 0, beta 1, gamma 0.1 (the default); global: DIM(G),\n"
    "                          alpha 1, beta 0, gamma 1 - the paper's presets, unverified (docs/dim.md §7.2)\n"
    "      --dim-alpha A --dim-beta B --dim-gamma G  the global, local and prior-matching weights (>= 0;\n"
    "                          override the preset's); --objective jsd (default), nce or dv; --lr 1e-4 (default)\n"
    "Classifier phase:\n"
    "      --classifiers --init CKPT  freeze the encoder in CKPT, re-initialise and train the probes\n"
    "      --features F        with --model dim --classifiers --init RUN: the heads read the frozen DIM\n"
    "                          encoder's conv, fc or z (docs/dim.md §9.1; required; --eval DATA tests them)\n"
    "  -h, --help              show this help\n";

static volatile sig_atomic_t g_cancel;
static void on_signal(int sig)
{
    (void)sig;
    g_cancel = 1;
}

static int bad(const char *name, const char *v)
{
    fprintf(stderr, "amdim-train: bad value '%s' for %s\nTry 'amdim-train --help'.\n", v, name);
    return 2;
}

/* A loss weight: finite and >= 0. */
static int weight(const char *name, const char *s, float *out)
{
    char *end;
    float v = strtof(s, &end);
    if (*end || end == s || !(v >= 0) || !isfinite(v)) {
        fprintf(stderr,
                "amdim-train: bad value '%s' for %s (a weight: a finite number >= 0)\nTry 'amdim-train --help'.\n", s,
                name);
        return -1;
    }
    *out = v;
    return 0;
}

/* The options of an AMDIM model or its evaluation: refused with --model dim. */
static const char *const amdim_only_options[] = {"eval", "eval-split", "eval-refresh", "precision", "ndf",
                                                 "n-rkhs", "n-depth", "use-bn", "tclip", "warmup", "classes",
                                                 "classifiers", "init", "mixtures", "mix-tau", "mix-entropy",
                                                 "probe-features", "sync-bn", "allow-fewer-classes", NULL};
static int amdim_only(const char *name)
{
    for (int i = 0; amdim_only_options[i]; i++)
        if (strcmp(name, amdim_only_options[i]) == 0)
            return 1;
    return 0;
}

/* --dim-preset, then the explicit weights over it. */
static int dim_preset(const char *name, amdim_dim_overrides *d, const amdim_dim_overrides *explicit_w)
{
    if (name && strcmp(name, "local") == 0)
        d->alpha = 0, d->beta = 1, d->gamma = 0.1f;
    else if (name && strcmp(name, "global") == 0)
        d->alpha = 1, d->beta = 0, d->gamma = 1;
    else if (name)
        return bad("--dim-preset (local, global)", name);
    if (explicit_w->alpha >= 0) d->alpha = explicit_w->alpha;
    if (explicit_w->beta >= 0) d->beta = explicit_w->beta;
    if (explicit_w->gamma >= 0) d->gamma = explicit_w->gamma;
    return 0;
}

/* The Deep InfoMax run's checks of the options, then the run. */
static int run_dim(amdim_train_options *o, const char *device, const char *dist, const char *amdim_opt,
                   const char *preset, amdim_dim_overrides *dw)
{
    if (amdim_opt) {
        fprintf(stderr,
                "amdim-train: --%s is an AMDIM option; --model dim does not take it\nTry 'amdim-train --help'.\n",
                amdim_opt);
        return 2;
    }
    if (strcmp(device, "cuda") == 0) {
        fprintf(stderr, "amdim-train: --device cuda: Deep InfoMax runs on the CPU only so far (give --device cpu)\n"
                        "Try 'amdim-train --help'.\n");
        return 2;
    }
    if (strcmp(device, "auto") && strcmp(device, "cpu"))
        return bad("--device (auto, cpu, cuda)", device);
    if (strcmp(dist, "mpi") == 0 || (strcmp(dist, "auto") == 0 && amdim_parallel_launched_size() > 1)) {
        fprintf(stderr, "amdim-train: Deep InfoMax trains in one process so far (no --dist mpi, no mpirun)\n");
        return 2;
    }
    amdim_dim_overrides d;
    amdim_dim_overrides_default(&d);
    d.estimator = o->model.objective < 0 ? -1 : o->model.objective == 0 ? AMDIM_DIM_NCE
                                              : o->model.objective == 1 ? AMDIM_DIM_JSD : AMDIM_DIM_DV;
    if (dim_preset(preset, &d, dw))
        return 2;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    o->cancel = &g_cancel;
    char err[2048];
    int st = amdim_dim_train_run(o, &d, err, sizeof err);
    if (st) {
        fprintf(stderr, "amdim-train: training failed: %s (%s)\n", amdim_strerror(st), err);
        return st == AMDIM_E_CANCELLED ? 130 : 1;
    }
    return 0;
}

/* --model dim --classifiers --init RUN --features F: the heads on a frozen DIM encoder. */
static int run_dim_classifiers(amdim_train_options *o, const char *device, const char *features,
                               const char *amdim_opt)
{
    static const char *const allowed[] = {"classifiers", "init", "eval", "eval-split", NULL};
    int ok = !amdim_opt;
    for (int i = 0; !ok && allowed[i]; i++)
        ok = strcmp(amdim_opt, allowed[i]) == 0;
    if (!ok) {
        fprintf(stderr, "amdim-train: --%s is an AMDIM option; the DIM classifiers do not take it\nTry 'amdim-train "
                        "--help'.\n", amdim_opt);
        return 2;
    }
    if (!o->init_path || !o->out_dir || o->resume_dir) {
        fprintf(stderr, "amdim-train: --model dim --classifiers needs --init RUN and --out RUN (no --resume)\nTry "
                        "'amdim-train --help'.\n");
        return 2;
    }
    int tap = amdim_dim_tap_parse(features);
    if (tap < 0 && features)
        return bad("--features (conv, fc, z)", features);
    if (tap < 0) {
        fprintf(stderr, "amdim-train: --model dim --classifiers needs --features conv, fc or z\nTry 'amdim-train "
                        "--help'.\n");
        return 2;
    }
    if (strcmp(device, "auto") && strcmp(device, "cpu")) {
        fprintf(stderr, "amdim-train: --device %s: the DIM classifiers run on the CPU only\n", device);
        return 2;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    o->cancel = &g_cancel;
    char err[2048];
    int st = amdim_dim_classifier_run(o, tap, err, sizeof err);
    if (st) {
        fprintf(stderr, "amdim-train: classifiers failed: %s (%s)\n", amdim_strerror(st), err);
        return st == AMDIM_E_CANCELLED ? 130 : 1;
    }
    return 0;
}

static int real(const char *s, float *out)
{
    char *end;
    float v = strtof(s, &end);
    if (*end || end == s || !(v > 0) || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    enum { O_EVAL = 256, O_ESPLIT, O_EREF, O_DEVICE, O_STEPS, O_SEED, O_LOG, O_CKPT, O_KEEP, O_NDF, O_RKHS, O_DEPTH,
           O_BN, O_TCLIP, O_OBJ, O_LR, O_CLASSES, O_CLS, O_INIT, O_WARMUP, O_THREADS,
           O_MIX, O_MIX_TAU, O_MIX_ENT, O_PROBE_FEAT, O_PRECISION, O_DIST, O_SYNC_BN, O_FEWER,
           O_MODEL, O_DIM_PRESET, O_DIM_ALPHA, O_DIM_BETA, O_DIM_GAMMA, O_FEATURES };
    static const struct option longopts[] = {
        {"out", required_argument, NULL, 'o'},        {"resume", required_argument, NULL, 'r'},
        {"eval", required_argument, NULL, O_EVAL},    {"eval-split", required_argument, NULL, O_ESPLIT},
        {"eval-refresh", required_argument, NULL, O_EREF}, {"device", required_argument, NULL, O_DEVICE},
        {"epochs", required_argument, NULL, 'e'},     {"steps", required_argument, NULL, O_STEPS},
        {"batch", required_argument, NULL, 'b'},      {"seed", required_argument, NULL, O_SEED},
        {"log-every", required_argument, NULL, O_LOG}, {"checkpoint-every", required_argument, NULL, O_CKPT},
        {"keep", required_argument, NULL, O_KEEP},    {"ndf", required_argument, NULL, O_NDF},
        {"n-rkhs", required_argument, NULL, O_RKHS},  {"n-depth", required_argument, NULL, O_DEPTH},
        {"use-bn", required_argument, NULL, O_BN},    {"tclip", required_argument, NULL, O_TCLIP},
        {"objective", required_argument, NULL, O_OBJ}, {"lr", required_argument, NULL, O_LR},
        {"classes", required_argument, NULL, O_CLASSES}, {"classifiers", no_argument, NULL, O_CLS},
        {"init", required_argument, NULL, O_INIT},    {"warmup", required_argument, NULL, O_WARMUP},
        {"threads", required_argument, NULL, O_THREADS},
        {"mixtures", required_argument, NULL, O_MIX}, {"mix-tau", required_argument, NULL, O_MIX_TAU},
        {"mix-entropy", required_argument, NULL, O_MIX_ENT}, {"probe-features", required_argument, NULL, O_PROBE_FEAT},
        {"precision", required_argument, NULL, O_PRECISION},
        {"dist", required_argument, NULL, O_DIST},    {"sync-bn", no_argument, NULL, O_SYNC_BN},
        {"allow-fewer-classes", no_argument, NULL, O_FEWER},
        {"model", required_argument, NULL, O_MODEL}, {"dim-preset", required_argument, NULL, O_DIM_PRESET},
        {"dim-alpha", required_argument, NULL, O_DIM_ALPHA}, {"dim-beta", required_argument, NULL, O_DIM_BETA},
        {"dim-gamma", required_argument, NULL, O_DIM_GAMMA}, {"features", required_argument, NULL, O_FEATURES},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    amdim_train_options o;
    amdim_train_options_default(&o);
    int classifiers = 0, c, sync_bn = 0;
    const char *device = "auto", *dist = "auto";
    long long v;
    int dim = 0, opt_index;
    const char *amdim_opt = NULL, *dim_opt = NULL, *preset = NULL, *features = NULL;
    amdim_dim_overrides dw;
    amdim_dim_overrides_default(&dw);
    while ((opt_index = -1, c = getopt_long(argc, argv, "o:r:e:b:h", longopts, &opt_index)) != -1) {
        if (opt_index >= 0 && amdim_only(longopts[opt_index].name))
            amdim_opt = longopts[opt_index].name;
        if (opt_index >= 0 && strncmp(longopts[opt_index].name, "dim-", 4) == 0)
            dim_opt = longopts[opt_index].name;
        switch (c) {
        case O_MODEL:
            if (strcmp(optarg, "amdim") && strcmp(optarg, "dim"))
                return bad("--model (amdim, dim)", optarg);
            dim = strcmp(optarg, "dim") == 0;
            break;
        case O_DIM_PRESET: preset = optarg; break;
        case O_FEATURES: features = optarg; break;
        case O_DIM_ALPHA: if (weight("--dim-alpha", optarg, &dw.alpha)) return 2; break;
        case O_DIM_BETA: if (weight("--dim-beta", optarg, &dw.beta)) return 2; break;
        case O_DIM_GAMMA: if (weight("--dim-gamma", optarg, &dw.gamma)) return 2; break;
        case 'o': o.out_dir = optarg; break;
        case 'r': o.resume_dir = optarg; break;
        case O_EVAL: o.eval_path = optarg; break;
        case O_ESPLIT: o.eval_split = optarg; break;
        case O_EREF: if (amdim_cli_int("amdim-train", "--eval-refresh", optarg, 0, 100000, &v)) return 2; o.eval_refresh = (int)v; break;
        case O_DEVICE: device = optarg; break;
        case O_THREADS: if (amdim_cli_int("amdim-train", "--threads", optarg, 1, 4096, &v)) return 2; o.threads = (int)v; break;
        case 'e': if (amdim_cli_int("amdim-train", "--epochs", optarg, 1, 1000000, &v)) return 2; o.epochs = v; break;
        case O_STEPS: if (amdim_cli_int("amdim-train", "--steps", optarg, 0, LLONG_MAX, &v)) return 2; o.steps = v; break;
        case O_WARMUP: if (amdim_cli_int("amdim-train", "--warmup", optarg, 0, 1 << 30, &v)) return 2; o.model.warmup = (int)v; break;
        case 'b': if (amdim_cli_int("amdim-train", "--batch", optarg, 2, 1 << 20, &v)) return 2; o.batch = (int)v; break;
        case O_SEED: if (amdim_cli_int("amdim-train", "--seed", optarg, 0, LLONG_MAX, &v)) return 2; o.has_seed = 1; o.seed = (uint64_t)v; break;
        case O_LOG: if (amdim_cli_int("amdim-train", "--log-every", optarg, 1, 1 << 30, &v)) return 2; o.log_every = (int)v; break;
        case O_CKPT: if (amdim_cli_int("amdim-train", "--checkpoint-every", optarg, 1, 1 << 30, &v)) return 2; o.ckpt_every = (int)v; break;
        case O_KEEP: if (amdim_cli_int("amdim-train", "--keep", optarg, 1, 1000, &v)) return 2; o.keep = (int)v; break;
        case O_NDF: if (amdim_cli_int("amdim-train", "--ndf", optarg, 1, 4096, &v)) return 2; o.model.ndf = (int)v; break;
        case O_RKHS: if (amdim_cli_int("amdim-train", "--n-rkhs", optarg, 1, 65536, &v)) return 2; o.model.n_rkhs = (int)v; break;
        case O_DEPTH: if (amdim_cli_int("amdim-train", "--n-depth", optarg, 1, 100, &v)) return 2; o.model.n_depth = (int)v; break;
        case O_BN: if (amdim_cli_int("amdim-train", "--use-bn", optarg, 0, 1, &v)) return 2; o.model.use_bn = (int)v; break;
        case O_TCLIP: if (real(optarg, &o.model.tclip)) return bad("--tclip", optarg); break;
        case O_LR: if (real(optarg, &o.model.lr)) return bad("--lr", optarg); break;
        case O_CLASSES: if (amdim_cli_int("amdim-train", "--classes", optarg, 1, 4096, &v)) return 2; o.model.n_classes = (int)v; break;
        case O_OBJ:
            o.model.objective = strcmp(optarg, "nce") == 0 ? 0 : strcmp(optarg, "jsd") == 0 ? 1 : strcmp(optarg, "dv") == 0 ? 2 : -2;
            if (o.model.objective == -2)
                return bad("--objective (nce, jsd, dv)", optarg);
            break;
        case O_MIX: if (amdim_cli_int("amdim-train", "--mixtures", optarg, 1, 16, &v)) return 2; o.model.mixtures = (int)v; break;
        case O_MIX_TAU: if (real(optarg, &o.model.mix_tau)) return bad("--mix-tau", optarg); break;
        case O_MIX_ENT: {
            char *end;
            o.model.mix_entropy = strtof(optarg, &end);
            if (*end || end == optarg || !(o.model.mix_entropy >= 0 && o.model.mix_entropy < 1e30f))
                return bad("--mix-entropy", optarg);
            break;
        }
        case O_PROBE_FEAT:
            o.model.probe_features = strcmp(optarg, "r1") == 0 ? 0 : strcmp(optarg, "mixture-mean") == 0 ? 1 : -2;
            if (o.model.probe_features == -2)
                return bad("--probe-features (r1, mixture-mean)", optarg);
            break;
        case O_PRECISION: {
            amdim_precision p;
            char why[128];
            if (amdim_precision_parse(optarg, &p, why, sizeof why))
                return bad("--precision (fp32, bf16)", optarg);
            o.precision = (int)p;
            break;
        }
        case O_DIST:
            if (strcmp(optarg, "auto") && strcmp(optarg, "none") && strcmp(optarg, "mpi"))
                return bad("--dist (auto, none, mpi)", optarg);
            dist = optarg;
            break;
        case O_SYNC_BN: sync_bn = 1; break;
        case O_FEWER: o.allow_fewer_classes = 1; break;
        case O_CLS: classifiers = 1; break;
        case O_INIT: o.init_path = optarg; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: fprintf(stderr, "Try 'amdim-train --help'.\n"); return 2;
        }
    }
    if (optind != argc)
        return bad("an argument", argv[optind]);
    if (!!o.out_dir == !!o.resume_dir) {
        fprintf(stderr, "amdim-train: give exactly one of --out RUN and --resume RUN\nTry 'amdim-train --help'.\n");
        return 2;
    }
    if (features && (!classifiers || !dim)) {
        fprintf(stderr, "amdim-train: --features picks what the DIM classifiers read: give it with --model dim "
                        "--classifiers --init RUN\nTry 'amdim-train --help'.\n");
        return 2;
    }
    if (dim && classifiers)
        return run_dim_classifiers(&o, device, features, amdim_opt);
    if (dim)
        return run_dim(&o, device, dist, amdim_opt, preset, &dw);
    if (dim_opt) {
        fprintf(stderr, "amdim-train: --%s is a Deep InfoMax option: give --model dim\nTry 'amdim-train --help'.\n",
                dim_opt);
        return 2;
    }
    if (classifiers != (o.init_path != NULL) || (classifiers && o.resume_dir)) {
        fprintf(stderr, "amdim-train: --classifiers needs --init CHECKPOINT and --out RUN\nTry 'amdim-train --help'.\n");
        return 2;
    }
    char err[2048];
    if (amdim_device_resolve(device, &o.device, err, sizeof err)) {
        fprintf(stderr, "amdim-train: %s\nTry 'amdim-train --help'.\n", err);
        return 2;
    }
    if (o.precision == AMDIM_PRECISION_BF16 && o.device != AMDIM_DEVICE_CUDA) {
        fprintf(stderr, "amdim-train: --precision bf16 needs --device cuda (the CPU computes in fp32)\nTry 'amdim-train --help'.\n");
        return 2;
    }
    /* the process group: before anything starts threads */
    amdim_comm *comm = NULL;
    int launched = amdim_parallel_launched_size();
    if (strcmp(dist, "mpi") == 0 || (strcmp(dist, "auto") == 0 && launched > 1)) {
        if (amdim_parallel_open(&comm, sync_bn, err, sizeof err)) {
            fprintf(stderr, "amdim-train: %s\n", err);
            return 2;
        }
    } else if (sync_bn) {
        fprintf(stderr, "amdim-train: --sync-bn needs a data-parallel run (mpirun; --dist mpi)\nTry 'amdim-train --help'.\n");
        return 2;
    }
    o.comm = comm && comm->size > 1 ? comm : NULL;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    o.cancel = &g_cancel;
    double t0 = amdim_now();
    int st = amdim_train_run(&o, err, sizeof err);
    if (o.comm && comm->rank == 0) {
        double secs;
        uint64_t bytes, calls;
        amdim_parallel_stats(comm, &secs, &bytes, &calls);
        double wall = amdim_now() - t0;
        fprintf(stderr, "amdim-train: rank 0 of %d: %.2f s in %llu collectives (%.1f %% of %.1f s), %.1f MB sent\n",
                comm->size, secs, (unsigned long long)calls, wall > 0 ? 100 * secs / wall : 0, wall, bytes / 1e6);
    }
    if (st) {
        int code = st == AMDIM_E_CANCELLED ? 130 : 1;
        if (o.comm && st != AMDIM_E_CANCELLED) { /* end every rank now: none may wait for this one in a collective */
            fprintf(stderr, "amdim-train: rank %d of %d: training failed: %s (%s); ending all ranks\n", comm->rank,
                    comm->size, amdim_strerror(st), err);
            amdim_parallel_abort(comm, code);
        }
        fprintf(stderr, "amdim-train: training failed: %s (%s)\n", amdim_strerror(st), err);
        amdim_parallel_close(comm);
        return code;
    }
    amdim_parallel_close(comm);
    return 0;
}
