/* bench_trainer: training speed of the AMDIM model (CPU or CUDA backend):
 * per-stage time and GFLOP/s, training pairs/s, and on CUDA TFLOP/s and
 * MFU against GEMM rates measured in the same run.
 *
 *   bench_trainer [--size S --ndf N --n-rkhs N --depth D] [--batch B]
 *                 [--steps N] [--warmup N] [--device auto|cpu|cuda]
 *                 [--precision fp32|bf16] [--gemm N] [--csv]
 *
 * CPU: a tiny configuration and the 32 px model at ndf 128, n_rkhs 1024,
 * depth 3 (or the one given), batch 32 by default, per-stage times from
 * the timed steps. OpenBLAS uses all cores unless OPENBLAS_NUM_THREADS
 * says otherwise.
 *
 * CUDA (--precision bf16 by default, see amdim_precision): first one
 * training step of a tiny configuration on both backends, whose losses must
 * agree within 1e-3 relative in fp32 (and 8e-2 in bf16, when timing bf16:
 * test_cuda_bf16's loss tolerance) - no timing otherwise; then
 * the GPU's name, memory and the rate of a square --gemm^3 cublasGemmEx
 * (bf16 in / fp32 accumulate, and fp32 without TF32), timed with CUDA
 * events on random operands; then ImageNet-small (128 px, 192/1536/8),
 * CIFAR small (32 px, 128/1024/10) and STL-10 (64 px, 192/1536/8), or the
 * one given, at batch 480 (halved until it fits): time per step of
 * unprofiled steps after at least two warm-up steps (the first measures
 * cuDNN's algorithms, the second captures the CUDA graphs: neither is
 * timed), pairs/s, TFLOP/s (amdim_model_step_flops / time: both views,
 * within 0.1 % of the authors' PyTorch step, tests/test_flops.c), MFU
 * against the card's datasheet bf16 peak and against both measured GEMM
 * rates, device memory in use after the steps (cudaMemGetInfo), then one
 * profiled step for the stage table (profiling synchronises per stage). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_trainer.h"
#include "bench_common.h"
#include "roofline.h"

typedef struct {
    const char *name;
    int size, ndf, n_rkhs, depth;
} bench_config;

/* ImageNet-small first: the figure the GPU target is stated for, measured
 * first where a GPU is lent for minutes. */
static const bench_config published[] = {
    {"imagenet-small", 128, 192, 1536, 8},
    {"cifar-small", 32, 128, 1024, 10},
    {"stl10", 64, 192, 1536, 8},
};

typedef struct {
    uint8_t *v1, *v2;
    int32_t *labels;
} views;

/* Deterministic non-constant views (batch, size, size, 3) and labels 0..9. */
static int views_make(views *v, int batch, int size)
{
    size_t n = (size_t)batch * size * size * 3;
    v->v1 = malloc(n);
    v->v2 = malloc(n);
    v->labels = malloc((size_t)batch * sizeof *v->labels);
    if (!v->v1 || !v->v2 || !v->labels)
        return -1;
    for (size_t i = 0; i < n; i++) {
        v->v1[i] = (uint8_t)(i * 2654435761u >> 24);
        v->v2[i] = (uint8_t)(i * 2246822519u >> 24);
    }
    for (int i = 0; i < batch; i++)
        v->labels[i] = i % 10;
    return 0;
}

static void views_free(views *v)
{
    free(v->v1);
    free(v->v2);
    free(v->labels);
}

static void config_of(const bench_config *b, amdim_model_config *cfg)
{
    amdim_model_config_default(cfg, b->size);
    cfg->ndf = b->ndf;
    cfg->n_rkhs = b->n_rkhs;
    cfg->n_depth = b->depth;
}

/* Benches validate first: one step of a tiny model on the device in
 * precision p and on the CPU reference, every loss term within tol
 * relative. 0 or 1. */
static int validate(amdim_device dev, amdim_precision p, double tol)
{
    static const bench_config tiny = {"tiny", 32, 16, 64, 2}; /* n_rkhs >= 4 ndf at 32 px; ndf a multiple of 8 (bf16) */
    amdim_model_config cfg;
    config_of(&tiny, &cfg);
    cfg.mlp_hidden = 64;
    int B = 8, rc = 1;
    views v;
    amdim_model *ref = NULL, *m = NULL;
    char err[512];
    if (views_make(&v, B, tiny.size)) {
        fprintf(stderr, "bench_trainer: out of memory\n");
        goto done;
    }
    if (amdim_model_create_on(&ref, &cfg, AMDIM_DEVICE_CPU, err, sizeof err) ||
        amdim_model_create_on(&m, &cfg, dev, err, sizeof err)) {
        fprintf(stderr, "bench_trainer: validation: %s\n", err);
        goto done;
    }
    if (amdim_model_set_precision(m, p)) {
        fprintf(stderr, "bench_trainer: validation: %s\n", amdim_model_error(m));
        goto done;
    }
    amdim_step_stats a, b;
    if (amdim_model_train_step(ref, v.v1, v.v2, v.labels, B, 0, &a)) {
        fprintf(stderr, "bench_trainer: validation (cpu): %s\n", amdim_model_error(ref));
        goto done;
    }
    if (amdim_model_train_step(m, v.v1, v.v2, v.labels, B, 0, &b)) {
        fprintf(stderr, "bench_trainer: validation (%s): %s\n", amdim_device_name(dev), amdim_model_error(m));
        goto done;
    }
    static const char *terms[] = {"nce_1t5", "nce_1t7", "nce_5t5", "reg", "cls_mlp", "cls_lin", "total"};
    const double *x = &b.nce_1t5, *y = &a.nce_1t5;
    double worst = 0;
    rc = 0;
    for (int i = 0; i < 7; i++) {
        double rel = fabs(x[i] - y[i]) / fmax(fabs(y[i]), 1e-3);
        worst = fmax(worst, rel);
        if (!(rel <= tol)) {
            fprintf(stderr, "bench_trainer: validation failed (%s): %s %s %.9g, cpu %.9g (relative %.2g > %.0e)\n",
                    amdim_precision_name(p), terms[i], amdim_device_name(dev), x[i], y[i], rel, tol);
            rc = 1;
        }
    }
    if (!rc)
        printf("# validated (%s): one step of 32 px ndf 16 n_rkhs 64 depth 2, batch %d: every loss term within "
               "%.1e relative of the CPU (limit %.0e)\n", amdim_precision_name(p), B, worst, tol);
done:
    amdim_model_destroy(ref);
    amdim_model_destroy(m);
    views_free(&v);
    return rc;
}

static void stage_table(amdim_model *m, int steps, int csv)
{
    if (csv)
        printf("stage,forward_ms,backward_ms,gflop_per_s\n");
    else
        printf("%-44s %11s %12s %9s\n", "stage (per step, both views)", "forward ms", "backward ms", "GFLOP/s");
    for (int i = 0; i < amdim_model_profile_count(m); i++) {
        const char *name;
        double f, b, xf, xb;
        amdim_model_profile_get(m, i, &name, &f, &b, &xf, &xb);
        double gf = (f + b) > 0 ? (xf + xb) / (f + b) / 1e9 : 0;
        if (csv)
            printf("%s,%.3f,%.3f,%.2f\n", name, 1e3 * f / steps, 1e3 * b / steps, gf);
        else
            printf("%-44s %11.3f %12.3f %9.2f\n", name, 1e3 * f / steps, 1e3 * b / steps, gf);
    }
}

static void profile_totals(amdim_model *m, double *tf, double *tb, double *flops)
{
    *tf = *tb = *flops = 0;
    for (int i = 0; i < amdim_model_profile_count(m); i++) {
        const char *name;
        double f, b, xf, xb;
        amdim_model_profile_get(m, i, &name, &f, &b, &xf, &xb);
        *tf += f, *tb += b, *flops += xf + xb;
    }
}

static int steps_run(amdim_model *m, const views *v, int batch, int n)
{
    amdim_step_stats st;
    for (int i = 0; i < n; i++) {
        int rc = amdim_model_train_step(m, v->v1, v->v2, v->labels, batch, 0, &st);
        if (rc) {
            fprintf(stderr, "bench_trainer: %s\n", amdim_model_error(m));
            return rc;
        }
    }
    return 0;
}

/* One configuration. 0, 1 on failure, or AMDIM_E_NOMEM when the batch does
 * not fit the device (the caller retries a smaller one). */
static int run(amdim_device dev, amdim_precision prec, const bench_config *bc, int batch, int steps, int warmup,
               int csv, const amdim_device_info *info)
{
    amdim_model_config cfg;
    config_of(bc, &cfg);
    amdim_model *m;
    char err[512];
    int rc = amdim_model_create_on(&m, &cfg, dev, err, sizeof err);
    if (rc) {
        fprintf(stderr, "bench_trainer: %s\n", err);
        return rc == AMDIM_E_NOMEM ? rc : 1;
    }
    views v;
    if ((rc = amdim_model_set_precision(m, prec))) {
        fprintf(stderr, "bench_trainer: %s\n", amdim_model_error(m));
        amdim_model_destroy(m);
        return 1;
    }
    if (views_make(&v, batch, bc->size)) {
        fprintf(stderr, "bench_trainer: out of memory for the views\n");
        views_free(&v);
        amdim_model_destroy(m);
        return 1;
    }
    size_t nparams = 0;
    for (int i = 0; i < amdim_model_param_count(m); i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        nparams += p.buffer ? 0 : p.size;
    }
    int cuda = dev == AMDIM_DEVICE_CUDA;
    if (cuda && warmup < 2)
        warmup = 2; /* algorithms measured, then graphs captured: neither inside the timed steps */
    /* the first (eager) step's launch list: the roofline printed beside the timing */
    roofline rl = {0};
    if (cuda && (rc = amdim_model_set_trace(m, roofline_add, &rl))) {
        fprintf(stderr, "bench_trainer: %s\n", amdim_model_error(m));
        goto done;
    }
    int traced = cuda ? 1 : 0; /* CUDA: the first warm-up step is the traced one */
    if ((rc = steps_run(m, &v, batch, traced)) || (cuda && (rc = amdim_model_set_trace(m, NULL, NULL))) ||
        (rc = steps_run(m, &v, batch, warmup - traced)))
        goto done;
    if (!cuda)
        amdim_model_profile(m, 1);
    double t0 = amdim_now();
    if ((rc = steps_run(m, &v, batch, steps)))
        goto done;
    double dt = (amdim_now() - t0) / steps, flops = amdim_model_step_flops(m, batch);
    printf("# %s: %d px, ndf %d, n_rkhs %d, depth %d: %.2f M parameters, batch %d, %d steps after %d warm-up\n",
           bc->name, bc->size, bc->ndf, bc->n_rkhs, bc->depth, nparams / 1e6, batch, steps, warmup);
    if (cuda) {
        size_t used = 0, total = 0;
        if ((rc = amdim_model_device_memory(m, &used, &total))) {
            fprintf(stderr, "bench_trainer: %s\n", amdim_model_error(m));
            goto done;
        }
        double tflops = flops / dt / 1e12, peak = info->peak_bf16_tflops;
        if (csv)
            printf("config,batch,ms_per_step,pairs_per_s,gflop_per_step,tflop_per_s,mfu_peak_bf16,mfu_gemm_bf16,"
                   "mfu_gemm_fp32,device_gib\n"
                   "%s,%d,%.3f,%.1f,%.1f,%.3f,%.4f,%.4f,%.4f,%.2f\n", bc->name, batch, 1e3 * dt, batch / dt, flops / 1e9,
                   tflops, peak > 0 ? tflops / peak : NAN, tflops / info->bf16_tflops, tflops / info->fp32_tflops,
                   used / 1073741824.0);
        else {
            char of_peak[96] = "the card's bf16 peak unknown";
            if (peak > 0)
                snprintf(of_peak, sizeof of_peak, "%.1f %% of the card's dense bf16 peak (%.0f TFLOP/s)",
                         100 * tflops / peak, peak);
            printf("# %s: %.1f ms per step, %.1f pairs/s, %.1f GFLOP per step, %.2f TFLOP/s: MFU %s, %.1f %% of the "
                   "measured bf16 GEMM rate (%.1f %% of fp32); device memory in use %.2f GiB of %.2f\n",
                   bc->name, 1e3 * dt, batch / dt, flops / 1e9, tflops, of_peak, 100 * tflops / info->bf16_tflops,
                   100 * tflops / info->fp32_tflops, used / 1073741824.0, total / 1073741824.0);
        }
        if (!csv)
            roofline_print(stdout, &rl, &roofline_default_efficiency, flops, dt, info->name, peak);
        amdim_model_profile(m, 1);
        if ((rc = steps_run(m, &v, batch, 1)))
            goto done;
        stage_table(m, 1, csv);
        size_t len = amdim_model_algorithms(m, NULL, 0);
        char *table = malloc(len + 1);
        if (table && !csv) { /* how it convolved: the process's cuDNN choices so far */
            amdim_model_algorithms(m, table, len + 1);
            printf("# cuDNN algorithms (every configuration so far):\n");
            for (char *line = strtok(table, "\n"); line; line = strtok(NULL, "\n"))
                printf("#   %s\n", line);
        }
        free(table);
    } else {
        double tf, tb, pf;
        profile_totals(m, &tf, &tb, &pf);
        stage_table(m, steps, csv);
        printf("# total: %.1f ms per step (%.1f forward, %.1f backward, rest optimiser), %.1f GFLOP per step at %.1f "
               "GFLOP/s; %.2f training pairs/s\n",
               1e3 * dt, 1e3 * tf / steps, 1e3 * tb / steps, flops / 1e9, pf / (tf + tb) / 1e9, batch / dt);
    }
done:
    fflush(stdout);
    views_free(&v);
    amdim_model_destroy(m);
    return rc == AMDIM_E_NOMEM ? rc : rc ? 1 : 0;
}

/* A configuration at `batch`, halved on AMDIM_E_NOMEM down to 32. */
static int run_fitting(amdim_device dev, amdim_precision prec, const bench_config *bc, int batch, int steps,
                       int warmup, int csv, const amdim_device_info *info)
{
    for (int b = batch;; b /= 2) {
        int rc = run(dev, prec, bc, b, steps, warmup, csv, info);
        if (rc != AMDIM_E_NOMEM)
            return rc;
        if (b / 2 < 32)
            return 1;
        printf("# %s: batch %d does not fit the device; trying %d\n", bc->name, b, b / 2);
    }
}

static int parse_int(const char *s, int lo, int hi, const char *what, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end || v < lo || v > hi) {
        fprintf(stderr, "bench_trainer: %s must be %d..%d, not %s\n", what, lo, hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"size", required_argument, NULL, 's'},   {"ndf", required_argument, NULL, 'n'},
        {"n-rkhs", required_argument, NULL, 'r'}, {"depth", required_argument, NULL, 'd'},
        {"batch", required_argument, NULL, 'b'},  {"steps", required_argument, NULL, 't'},
        {"warmup", required_argument, NULL, 'w'}, {"csv", no_argument, NULL, 'c'},
        {"device", required_argument, NULL, 'D'}, {"gemm", required_argument, NULL, 'g'},
        {"precision", required_argument, NULL, 'p'},
        {"continue-unvalidated", no_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    int size = 0, ndf = 0, n_rkhs = 0, depth = 0, batch = 0, steps = 3, warmup = 1, csv = 0, gemm = 8192, c, bad = 0;
    int continue_unvalidated = 0;
    setvbuf(stdout, NULL, _IOLBF, 0); /* a killed run keeps every line it printed */
    const char *device = "cpu", *precision = NULL;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 's': bad |= parse_int(optarg, 32, 128, "--size", &size); break;
        case 'n': bad |= parse_int(optarg, 1, 4096, "--ndf", &ndf); break;
        case 'r': bad |= parse_int(optarg, 1, 16384, "--n-rkhs", &n_rkhs); break;
        case 'd': bad |= parse_int(optarg, 1, 64, "--depth", &depth); break;
        case 'b': bad |= parse_int(optarg, 2, 1 << 16, "--batch", &batch); break;
        case 't': bad |= parse_int(optarg, 1, 1 << 20, "--steps", &steps); break;
        case 'w': bad |= parse_int(optarg, 0, 1 << 20, "--warmup", &warmup); break;
        case 'g': bad |= parse_int(optarg, 256, 32768, "--gemm", &gemm); break;
        case 'c': csv = 1; break;
        case 'D': device = optarg; break;
        case 'p': precision = optarg; break;
        case 'u': continue_unvalidated = 1; break;
        case 'h':
            printf("usage: bench_trainer [--size S --ndf N --n-rkhs N --depth D] [--batch B] [--steps N] [--warmup N]\n"
                   "                     [--device auto|cpu|cuda (default cpu)] [--precision fp32|bf16 (CUDA: bf16)]\n"
                   "                     [--gemm N (default 8192)] [--csv] [--continue-unvalidated]\n"
                   "CPU: a tiny config and 32 px 128/1024/3 at batch 32. CUDA: validates one step against the CPU,\n"
                   "measures the bf16 and fp32 GEMM rates, then ImageNet-small, CIFAR small and STL-10 at batch 480\n"
                   "(halved until it fits; at least 2 warm-up steps): pairs/s, TFLOP/s, MFU against the bf16 peak\n"
                   "and the GEMM rates, device memory, stage table. A failed validation stops the bench (exit 1);\n"
                   "with --continue-unvalidated it still measures, every figure marked UNVALIDATED, and exits 1.\n");
            return 0;
        default: return 2;
        }
    }
    if (bad || optind < argc)
        return fprintf(stderr, "bench_trainer: bad usage (see --help)\n"), 2;
    amdim_device dev;
    char err[512];
    if (amdim_device_resolve(device, &dev, err, sizeof err))
        return fprintf(stderr, "bench_trainer: %s\n", err), 2;
    amdim_precision prec = dev == AMDIM_DEVICE_CUDA ? AMDIM_PRECISION_BF16 : AMDIM_PRECISION_FP32;
    if (precision && amdim_precision_parse(precision, &prec, err, sizeof err))
        return fprintf(stderr, "bench_trainer: %s\n", err), 2;
    if (prec == AMDIM_PRECISION_BF16 && dev != AMDIM_DEVICE_CUDA)
        return fprintf(stderr, "bench_trainer: --precision bf16 needs --device cuda\n"), 2;
    bench_header(stdout, "bench_trainer");
    bench_config one = {"given", size, ndf ? ndf : 128, n_rkhs ? n_rkhs : 1024, depth ? depth : 3};
    if (dev != AMDIM_DEVICE_CUDA) {
        const char *threads = getenv("OPENBLAS_NUM_THREADS");
        printf("# CPU path, fp32, OpenBLAS threads: %s\n", threads ? threads : "all cores");
        if (!batch)
            batch = 32;
        if (size)
            return run(dev, prec, &one, batch, steps, warmup, csv, NULL) ? 1 : 0;
        static const bench_config tiny = {"tiny", 32, 16, 64, 1}, small = {"32 px", 32, 128, 1024, 3};
        return run(dev, prec, &tiny, batch, steps, warmup, csv, NULL) ||
               run(dev, prec, &small, batch, steps, warmup, csv, NULL);
    }
    printf("# CUDA path, %s\n", prec == AMDIM_PRECISION_BF16
                                   ? "bf16 (bf16 activations, convolutions and GEMMs with fp32 accumulation)"
                                   : "fp32 (no TF32)");
    int invalid = validate(dev, AMDIM_PRECISION_FP32, 1e-3) != 0;
    if (prec == AMDIM_PRECISION_BF16 && (!invalid || continue_unvalidated))
        invalid |= validate(dev, prec, 8e-2) != 0;
    if (invalid && !continue_unvalidated)
        return 1;
    if (invalid)
        printf("# UNVALIDATED: the device's step disagrees with the CPU (above); the figures below time a step that "
               "may be wrong\n");
    amdim_device_info info;
    if (amdim_device_probe(dev, gemm, &info, err, sizeof err))
        return fprintf(stderr, "bench_trainer: %s\n", err), 1;
    printf("# %s, %.1f GiB: GEMM %d^3 on random operands, bf16 in / fp32 accumulate %.1f TFLOP/s, fp32 (no TF32) "
           "%.1f TFLOP/s (cublasGemmEx, CUDA events); datasheet dense bf16 peak %s\n",
           info.name, info.memory / 1073741824.0, gemm, info.bf16_tflops, info.fp32_tflops,
           info.peak_bf16_tflops > 0 ? "known" : "unknown for this name");
    if (info.peak_bf16_tflops > 0)
        printf("# dense bf16 peak %.1f TFLOP/s; the GEMM reaches %.1f %% of it\n", info.peak_bf16_tflops,
               100 * info.bf16_tflops / info.peak_bf16_tflops);
    if (!batch)
        batch = 480;
    if (size)
        return run_fitting(dev, prec, &one, batch, steps, warmup, csv, &info) || invalid;
    int rc = invalid;
    for (size_t i = 0; i < sizeof published / sizeof *published; i++)
        rc |= run_fitting(dev, prec, &published[i], batch, steps, warmup, csv, &info);
    if (invalid)
        printf("# UNVALIDATED: every figure above timed a step that failed validation\n");
    return rc;
}
