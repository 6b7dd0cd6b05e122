/* bench_trainer: training speed of the AMDIM model (CPU or CUDA backend) - per-stage time and
 * GFLOP/s, and training pairs/s - for a tiny configuration and the 32 px
 * model at ndf 128, n_rkhs 1024, depth 3 (or the one given).
 *
 *   bench_trainer [--size S --ndf N --n-rkhs N --depth D] [--batch B]
 *                 [--steps N] [--warmup N] [--device auto|cpu|cuda] [--csv]
 * OpenBLAS uses all cores unless OPENBLAS_NUM_THREADS says otherwise. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_trainer.h"
#include "bench_common.h"

static int run(amdim_device dev, int size, int ndf, int n_rkhs, int depth, int batch, int steps, int warmup, int csv)
{
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, size);
    cfg.ndf = ndf;
    cfg.n_rkhs = n_rkhs;
    cfg.n_depth = depth;
    amdim_model *m;
    char err[256];
    if (amdim_model_create_on(&m, &cfg, dev, err, sizeof err)) {
        fprintf(stderr, "bench_trainer: %s\n", err);
        return 1;
    }
    size_t view = (size_t)batch * size * size * 3;
    uint8_t *v1 = malloc(view), *v2 = malloc(view);
    int32_t *labels = malloc((size_t)batch * sizeof *labels);
    for (size_t i = 0; i < view; i++) {
        v1[i] = (uint8_t)(i * 2654435761u >> 24);
        v2[i] = (uint8_t)(i * 2246822519u >> 24);
    }
    for (int i = 0; i < batch; i++)
        labels[i] = i % 10;
    amdim_step_stats st;
    for (int i = 0; i < warmup; i++)
        if (amdim_model_train_step(m, v1, v2, labels, batch, 0, &st)) {
            fprintf(stderr, "bench_trainer: %s\n", amdim_model_error(m));
            return 1;
        }
    amdim_model_profile(m, 1);
    double t0 = amdim_now();
    for (int i = 0; i < steps; i++)
        if (amdim_model_train_step(m, v1, v2, labels, batch, 0, &st)) {
            fprintf(stderr, "bench_trainer: %s\n", amdim_model_error(m));
            return 1;
        }
    double dt = amdim_now() - t0;
    size_t nparams = 0;
    for (int i = 0; i < amdim_model_param_count(m); i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        nparams += p.buffer ? 0 : p.size;
    }
    printf("# %d px, ndf %d, n_rkhs %d, depth %d: %.2f M parameters, batch %d, %d steps\n", size, ndf, n_rkhs, depth,
           nparams / 1e6, batch, steps);
    double tf = 0, tb = 0, ff = 0, fb = 0;
    if (csv)
        printf("stage,forward_ms,backward_ms,gflop_per_s\n");
    else
        printf("%-44s %11s %12s %9s\n", "stage (per step, both views)", "forward ms", "backward ms", "GFLOP/s");
    for (int i = 0; i < amdim_model_profile_count(m); i++) {
        const char *name;
        double f, b, xf, xb;
        amdim_model_profile_get(m, i, &name, &f, &b, &xf, &xb);
        tf += f, tb += b, ff += xf, fb += xb;
        double gf = (f + b) > 0 ? (xf + xb) / (f + b) / 1e9 : 0;
        if (csv)
            printf("%s,%.3f,%.3f,%.2f\n", name, 1e3 * f / steps, 1e3 * b / steps, gf);
        else
            printf("%-44s %11.3f %12.3f %9.2f\n", name, 1e3 * f / steps, 1e3 * b / steps, gf);
    }
    printf("# total: %.1f ms per step (%.1f forward, %.1f backward, rest optimiser), %.1f GFLOP per step at %.1f GFLOP/s; "
           "%.2f training pairs/s\n",
           1e3 * dt / steps, 1e3 * tf / steps, 1e3 * tb / steps, (ff + fb) / steps / 1e9, (ff + fb) / (tf + tb) / 1e9,
           batch * steps / dt);
    free(v1);
    free(v2);
    free(labels);
    amdim_model_destroy(m);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"size", required_argument, NULL, 's'},  {"ndf", required_argument, NULL, 'n'},
        {"n-rkhs", required_argument, NULL, 'r'}, {"depth", required_argument, NULL, 'd'},
        {"batch", required_argument, NULL, 'b'}, {"steps", required_argument, NULL, 't'},
        {"warmup", required_argument, NULL, 'w'}, {"csv", no_argument, NULL, 'c'},
        {"device", required_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0}};
    int size = 0, ndf = 0, n_rkhs = 0, depth = 0, batch = 32, steps = 3, warmup = 1, csv = 0, c;
    const char *device = "cpu";
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 's': size = atoi(optarg); break;
        case 'n': ndf = atoi(optarg); break;
        case 'r': n_rkhs = atoi(optarg); break;
        case 'd': depth = atoi(optarg); break;
        case 'b': batch = atoi(optarg); break;
        case 't': steps = atoi(optarg); break;
        case 'w': warmup = atoi(optarg); break;
        case 'c': csv = 1; break;
        case 'D': device = optarg; break;
        case 'h':
            printf("usage: bench_trainer [--size S --ndf N --n-rkhs N --depth D] [--batch B] [--steps N] [--warmup N]\n"
                   "                     [--device auto|cpu|cuda (default cpu)] [--csv]\n");
            return 0;
        default: return 2;
        }
    }
    if (batch < 2 || steps < 1 || warmup < 0)
        return fprintf(stderr, "bench_trainer: batch >= 2, steps >= 1\n"), 2;
    amdim_device dev;
    char err[512];
    if (amdim_device_resolve(device, &dev, err, sizeof err))
        return fprintf(stderr, "bench_trainer: %s\n", err), 2;
    bench_header(stdout, "bench_trainer");
    const char *threads = getenv("OPENBLAS_NUM_THREADS");
    if (dev == AMDIM_DEVICE_CUDA)
        printf("# CUDA path, fp32 (stage times synchronise the stream)\n");
    else
        printf("# CPU path, fp32, OpenBLAS threads: %s\n", threads ? threads : "all cores");
    if (size)
        return run(dev, size, ndf ? ndf : 128, n_rkhs ? n_rkhs : 1024, depth ? depth : 3, batch, steps, warmup, csv);
    if (run(dev, 32, 16, 64, 1, batch, steps, warmup, csv))
        return 1;
    return run(dev, 32, 128, 1024, 3, batch, steps, warmup, csv);
}
