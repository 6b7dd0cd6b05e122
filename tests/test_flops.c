/* The FLOP count every TFLOP/s and MFU figure divides by
 * (amdim_model_step_flops: 2 x multiply-adds of one training step) against
 * an independent count: the operations the authors' PyTorch step issues
 * (tests/ref/authors_flops.txt, written by tests/ref/count_authors_flops.py
 * from Philip-Bachman/amdim-public), for a tiny model through the model
 * API and the three published configs at batch 480 through their
 * description. Within 3 %: element-wise work is counted by neither, and the
 * probes' backward is counted once (the authors' also computes the hidden
 * layer's input gradient, a few MFLOP). Argument: authors_flops.txt. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch_internal.h"
#include "amdim_trainer.h"
#include "testutil.h"

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: test_flops AUTHORS_FLOPS.TXT");
    FILE *f = fopen(argv[1], "r");
    REQUIRE(f, "cannot open %s", argv[1]);
    char line[512];
    int configs = 0;
    double worst = 0;
    while (fgets(line, sizeof line, f)) {
        char name[64];
        int size, ndf, rkhs, depth, classes, batch;
        double theirs;
        if (line[0] == '#' || sscanf(line, "%63s %d %d %d %d %d %d %lf", name, &size, &ndf, &rkhs, &depth, &classes,
                                     &batch, &theirs) != 8)
            continue;
        amdim_model_config cfg;
        amdim_model_config_default(&cfg, size);
        cfg.ndf = ndf, cfg.n_rkhs = rkhs, cfg.n_depth = depth, cfg.n_classes = classes, cfg.use_bn = 1;
        char err[512];
        double ours;
        if (strcmp(name, "tiny") == 0) { /* through the model, as the benchmarks count */
            amdim_model *m;
            REQUIRE(amdim_model_create_on(&m, &cfg, AMDIM_DEVICE_CPU, err, sizeof err) == 0, "%s: %s", name, err);
            ours = amdim_model_step_flops(m, batch);
            amdim_model_destroy(m);
        } else {
            amdim_arch a;
            memset(&a, 0, sizeof a);
            REQUIRE(amdim_arch_build(&a, &cfg, err, sizeof err) == 0, "%s: %s", name, err);
            ours = amdim_arch_step_flops(&a, batch);
            amdim_arch_free(&a);
        }
        double rel = ours / theirs - 1;
        worst = fmax(worst, fabs(rel));
        printf("%-15s %3d px ndf %3d n_rkhs %4d depth %2d batch %3d: ours %.6g GFLOP, the authors' step %.6g (%+.3f %%)\n",
               name, size, ndf, rkhs, depth, batch, ours / 1e9, theirs / 1e9, 100 * rel);
        CHECK(fabs(rel) <= 0.03, "%s: %.6g vs %.6g FLOPs (%+.2f %%)", name, ours, theirs, 100 * rel);
        configs++;
    }
    fclose(f);
    CHECK(configs >= 4, "%d configurations in %s", configs, argv[1]);
    /* the datasheet peaks MFU is quoted against, by the names CUDA reports */
    const struct {
        const char *name;
        double tflops;
    } cards[] = {{"NVIDIA H100 80GB HBM3", 989.4}, {"NVIDIA H100 PCIe", 756.0}, {"NVIDIA H200", 989.4}, {"NVIDIA H200 NVL", 835.5},
                 {"NVIDIA A100-SXM4-80GB", 312.0}, {"NVIDIA GH200 480GB", 989.4}, {"Tesla T4", 0}};
    for (size_t i = 0; i < sizeof cards / sizeof *cards; i++)
        CHECK(amdim_cuda_peak_bf16_tflops(cards[i].name) == cards[i].tflops, "%s: peak %g", cards[i].name,
              amdim_cuda_peak_bf16_tflops(cards[i].name));
    printf("largest difference %.3f %%\n", 100 * worst);
    return test_finish("test_flops");
}
