/* bench_roofline: a training step's roofline on any machine. The CUDA
 * backend's own host code runs one training step on the emulated device
 * in a dry run (AMDIM_EMU_DRY=1: every call made and checked, no device
 * work done, the arenas never backed), its launch list recorded
 * (amdim_model_set_trace), and the step's time projected on an H100 SXM
 * and an H200 under stated efficiencies (roofline.h).
 *
 *   bench_roofline [--config imagenet-small|cifar-small|stl10] [--batch B]
 *                  [--precision bf16|fp32] [--kernel-efficiency E]
 *
 * Built where the emulated device is (AMDIM_BUILD_CUDAEMU with the CUDA
 * toolkit). On a GPU, bench_trainer --roofline prints the same table
 * beside the measured step. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_trainer.h"
#include "bench_common.h"
#include "roofline.h"

typedef struct {
    const char *name;
    int size, ndf, n_rkhs, depth;
} config;

static const config configs[] = {
    {"imagenet-small", 128, 192, 1536, 8},
    {"cifar-small", 32, 128, 1024, 10},
    {"stl10", 64, 192, 1536, 8},
};

static int usage(void)
{
    fprintf(stderr, "usage: bench_roofline [--config imagenet-small|cifar-small|stl10] [--batch B (default 480)] "
                    "[--precision bf16|fp32] [--kernel-efficiency E (0.05..1)]\n");
    return 2;
}

/* One training step of cfg at batch B on the emulated device, traced;
 * the model's own FLOP count of it (both views, tests/test_flops.c). */
static int trace_step(const amdim_model_config *cfg, amdim_precision prec, int B, roofline *r, double *flops,
                      char *err, size_t n)
{
    amdim_model *m;
    int rc = amdim_model_create_on(&m, cfg, AMDIM_DEVICE_CUDA, err, n);
    if (rc)
        return rc;
    size_t bytes = (size_t)B * cfg->encoder_size * cfg->encoder_size * 3;
    uint8_t *v1 = calloc(bytes, 1), *v2 = calloc(bytes, 1);
    int32_t *labels = calloc((size_t)B, sizeof *labels);
    amdim_step_stats st;
    if (!v1 || !v2 || !labels)
        rc = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for the views");
    else if ((rc = amdim_model_set_precision(m, prec)) || (rc = amdim_model_set_trace(m, roofline_add, r)) ||
             (rc = amdim_model_train_step(m, v1, v2, labels, B, 0, &st)) || (rc = amdim_model_set_trace(m, NULL, NULL)))
        snprintf(err, n, "%s", amdim_model_error(m));
    *flops = amdim_model_step_flops(m, B);
    free(v1), free(v2), free(labels);
    amdim_model_destroy(m);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"config", required_argument, NULL, 'c'},
                                             {"batch", required_argument, NULL, 'b'},
                                             {"precision", required_argument, NULL, 'p'},
                                             {"kernel-efficiency", required_argument, NULL, 'k'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const config *cf = &configs[0];
    int B = 480, c;
    long long v;
    amdim_precision prec = AMDIM_PRECISION_BF16;
    roofline_efficiency eff = roofline_default_efficiency;
    char err[1024];
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'c':
            cf = NULL;
            for (size_t i = 0; i < sizeof configs / sizeof *configs; i++)
                if (strcmp(optarg, configs[i].name) == 0)
                    cf = &configs[i];
            if (!cf)
                return usage();
            break;
        case 'b':
            if (amdim_cli_int("bench_roofline", "--batch", optarg, 2, 1 << 16, &v))
                return 2;
            B = (int)v;
            break;
        case 'p':
            if (amdim_precision_parse(optarg, &prec, err, sizeof err))
                return fprintf(stderr, "bench_roofline: %s\n", err), 2;
            break;
        case 'k':
            eff.kernel = atof(optarg);
            if (!(eff.kernel >= 0.05 && eff.kernel <= 1))
                return usage();
            break;
        default: return usage();
        }
    }
    if (optind < argc)
        return usage();
    setenv("AMDIM_EMU_DRY", "1", 1); /* before the emulated device's first call */
    bench_header(stdout, "bench_roofline");
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, cf->size);
    cfg.ndf = cf->ndf;
    cfg.n_rkhs = cf->n_rkhs;
    cfg.n_depth = cf->depth;
    roofline r = {0};
    double step_flops = 0;
    if (trace_step(&cfg, prec, B, &r, &step_flops, err, sizeof err)) {
        fprintf(stderr, "bench_roofline: %s\n", err);
        return 1;
    }
    printf("# %s (%d px, ndf %d, n_rkhs %d, depth %d), batch %d, %s: one training step's launch list, walked on the "
           "emulated device (dry run)\n",
           cf->name, cf->size, cf->ndf, cf->n_rkhs, cf->depth, B, amdim_precision_name(prec));
    roofline_print(stdout, &r, &eff, step_flops, 0, NULL, 0);
    /* the libraries' FLOPs as the launch list counts them, against the
     * model's own count (the authors' step within 0.1 %, test_flops) */
    printf("# launch-list FLOPs / the model's count: %.4f\n", r.flops / step_flops);
    return 0;
}
