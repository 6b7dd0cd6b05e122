/* The CUDA backend over a training run (label gpu; exits 77 without a
 * usable GPU): 200 training steps on the CPU and on CUDA (fp32) from the
 * same initial weights, on the same batches, the two loss curves printed
 * side by side; then checkpoints across devices: the GPU model's
 * checkpoint loads on the CPU bit for bit (weights, running statistics,
 * Adam moments, update count) and the CPU's on the GPU, and one more step
 * from each gives the same losses on both.
 * With --cpu-as-device the second model is another CPU model: a check of
 * this test itself, run in CI (the curves must then be identical). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_checkpoint.h"
#include "amdim_philox.h"
#include "amdim_trainer.h"
#include "testutil.h"

#define B 16
#define S 32
#define STEPS 200

static amdim_device dev = AMDIM_DEVICE_CUDA;

static amdim_model *make(amdim_device d)
{
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, S);
    cfg.ndf = 8, cfg.n_rkhs = 32, cfg.n_depth = 1, cfg.use_bn = 1, cfg.mlp_hidden = 16, cfg.n_classes = 5;
    cfg.lr = 1e-3f, cfg.warmup = 0, cfg.seed = 21;
    amdim_model *m;
    char err[512];
    REQUIRE(amdim_model_create_on(&m, &cfg, d, err, sizeof err) == 0, "%s", err);
    REQUIRE(amdim_model_set_precision(m, AMDIM_PRECISION_FP32) == 0, "%s", amdim_model_error(m));
    return m;
}

/* Batch k: five classes of stripes with noise, two views each. */
static void batch(int k, uint8_t *v1, uint8_t *v2, int32_t *labels)
{
    amdim_rng rng;
    amdim_rng_init(&rng, 77, 3, (uint64_t)k);
    for (int i = 0; i < B; i++) {
        int cls = (k * B + i) % 5;
        labels[i] = i % 4 == 3 ? -1 : cls;
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++)
                for (int c = 0; c < 3; c++) {
                    int on = cls == 0 ? x / 4 % 2 : cls == 1 ? y / 4 % 2 : cls == 2 ? (x + y) / 4 % 2
                             : cls == 3 ? (x / 8 + y / 8) % 2 : (x * x + y * y) / 64 % 2;
                    size_t at = (((size_t)i * S + y) * S + x) * 3 + c;
                    v1[at] = (uint8_t)((on ? 170 : 70) + amdim_rng_int(&rng, 0, 40));
                    v2[at] = (uint8_t)((on ? 160 : 80) + amdim_rng_int(&rng, 0, 60));
                }
    }
}

/* Weights, Adam moments and update count of two models: bit for bit. */
static void same_state(amdim_model *a, amdim_model *b, const char *what)
{
    REQUIRE(amdim_model_pull(a) == 0 && amdim_model_pull(b) == 0, "pull");
    CHECK(amdim_model_updates(a) == amdim_model_updates(b), "%s: updates %llu vs %llu", what,
          (unsigned long long)amdim_model_updates(a), (unsigned long long)amdim_model_updates(b));
    int bad = 0;
    for (int i = 0; i < amdim_model_param_count(a); i++) {
        amdim_param p, q;
        amdim_model_param(a, i, &p);
        amdim_model_param(b, i, &q);
        int same = memcmp(p.data, q.data, p.size * sizeof(float)) == 0;
        if (p.adam_m)
            same = same && memcmp(p.adam_m, q.adam_m, p.size * sizeof(float)) == 0 &&
                   memcmp(p.adam_v, q.adam_v, p.size * sizeof(float)) == 0;
        CHECK(same || bad++ > 3, "%s: %s differs after the checkpoint round trip", what, p.name);
    }
}

static void save_load(amdim_model *from, amdim_device to_dev, amdim_model **to, const char *dir)
{
    char err[1024], path[4300];
    amdim_checkpoint_info ci = {0};
    ci.step = amdim_model_updates(from), ci.epochs = -1, ci.max_steps = -1, ci.batch = B;
    snprintf(ci.preset, sizeof ci.preset, "cifar");
    test_mkdirs(dir);
    REQUIRE(amdim_checkpoint_save(from, dir, &ci, err, sizeof err) == 0, "save: %s", err);
    REQUIRE(amdim_checkpoint_latest(dir, path, sizeof path) == 0, "no checkpoint in %s", dir);
    *to = make(to_dev);
    REQUIRE(amdim_checkpoint_load(*to, path, AMDIM_CKPT_OPTIMIZER, err, sizeof err) == 0, "load: %s", err);
}

int main(int argc, char **argv)
{
    const char *devname = "cuda";
    if (argc > 1 && strcmp(argv[1], "--cpu-as-device") == 0) {
        dev = AMDIM_DEVICE_CPU, devname = "cpu2";
    } else if (argc > 1) {
        fprintf(stderr, "usage: test_cuda_curve [--cpu-as-device]\n");
        return 2;
    } else {
        char why[512];
        if (amdim_device_resolve("cuda", &dev, why, sizeof why) != 0) {
            printf("test_cuda_curve: skipped: %s\n", why);
            return TEST_SKIP;
        }
    }
    amdim_model *c = make(AMDIM_DEVICE_CPU), *g = make(dev);
    size_t nv = (size_t)B * S * S * 3;
    uint8_t *v1 = malloc(nv), *v2 = malloc(nv);
    int32_t labels[B];
    double lc[STEPS], lg[STEPS], worst_early = 0, worst = 0;
    printf("step   cpu loss        %-5s loss       relative difference\n", devname);
    for (int s = 0; s < STEPS; s++) {
        batch(s % 25, v1, v2, labels);
        amdim_step_stats a, b;
        REQUIRE(amdim_model_train_step(c, v1, v2, labels, B, 0, &a) == 0, "cpu: %s", amdim_model_error(c));
        REQUIRE(amdim_model_train_step(g, v1, v2, labels, B, 0, &b) == 0, "%s: %s", devname, amdim_model_error(g));
        lc[s] = a.total, lg[s] = b.total;
        double rel = fabs(lg[s] - lc[s]) / fabs(lc[s]);
        worst = fmax(worst, rel);
        if (s < 20)
            worst_early = fmax(worst_early, rel);
        if (s % 20 == 0 || s == STEPS - 1)
            printf("%4d   %.9f   %.9f   %.2e\n", s + 1, lc[s], lg[s], rel);
    }
    double first_c = 0, last_c = 0, first_g = 0, last_g = 0;
    for (int s = 0; s < 20; s++)
        first_c += lc[s] / 20, first_g += lg[s] / 20, last_c += lc[STEPS - 20 + s] / 20, last_g += lg[STEPS - 20 + s] / 20;
    printf("mean of the first 20 steps %.6f / %.6f, of the last 20 %.6f / %.6f; worst step difference %.2e (first 20: %.2e)\n",
           first_c, first_g, last_c, last_g, worst, worst_early);
    /* fp32 on both, other summation orders: the first steps agree closely,
     * later ones drift apart as rounding differences grow through Adam */
    CHECK(worst_early <= 1e-4, "the first 20 steps differ by up to %.2e", worst_early);
    CHECK(fabs(last_g - last_c) <= 2e-2 * fabs(last_c), "the last 20 steps' mean loss: %.6f vs %.6f", last_g, last_c);
    CHECK(last_c < first_c - 0.05 && last_g < first_g - 0.05, "the loss must fall on both (%.4f -> %.4f, %.4f -> %.4f)",
          first_c, last_c, first_g, last_g);
    if (dev == AMDIM_DEVICE_CPU)
        CHECK(worst == 0, "two CPU models differ (%.2e): the self-check's models must be identical", worst);

    /* checkpoints across devices, both ways */
    char dir[4300];
    amdim_model *gc, *cg;
    snprintf(dir, sizeof dir, "%s/from-device", test_tmpdir());
    save_load(g, AMDIM_DEVICE_CPU, &gc, dir);
    same_state(g, gc, "device checkpoint on the CPU");
    snprintf(dir, sizeof dir, "%s/from-cpu", test_tmpdir());
    save_load(c, dev, &cg, dir);
    same_state(c, cg, "CPU checkpoint on the device");
    batch(7, v1, v2, labels);
    amdim_step_stats a, b;
    REQUIRE(amdim_model_train_step(gc, v1, v2, labels, B, 0, &a) == 0, "%s", amdim_model_error(gc));
    REQUIRE(amdim_model_train_step(g, v1, v2, labels, B, 0, &b) == 0, "%s", amdim_model_error(g));
    CHECK(fabs(a.total - b.total) <= 1e-4 * fabs(b.total), "a step after the round trip: cpu %.9f vs %s %.9f", a.total,
          devname, b.total);
    REQUIRE(amdim_model_train_step(cg, v1, v2, labels, B, 0, &b) == 0, "%s", amdim_model_error(cg));
    REQUIRE(amdim_model_train_step(c, v1, v2, labels, B, 0, &a) == 0, "%s", amdim_model_error(c));
    CHECK(fabs(a.total - b.total) <= 1e-4 * fabs(a.total), "a step after the round trip: %s %.9f vs cpu %.9f", devname,
          b.total, a.total);
    free(v1), free(v2);
    amdim_model_destroy(c), amdim_model_destroy(g), amdim_model_destroy(gc), amdim_model_destroy(cg);
    return test_finish("test_cuda_curve");
}
