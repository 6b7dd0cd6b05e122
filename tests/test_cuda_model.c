/* The whole model on the CUDA backend against the CPU backend (label gpu;
 * exits 77 without a usable GPU): tiny configurations of the three
 * encoder sizes (and BatchNorm on), one forward/backward on float views
 * with fixed draws (every loss term, r1/r5/r7 of both views, both probes'
 * logits, every gradient), then 3 training steps on uint8 views (losses,
 * weights, Adam moments, BatchNorm running statistics), a BatchNorm
 * refresh and an evaluation. fp32 on both sides; different summation
 * orders allow 2e-3 relative (floor 1e-2 of the tensor's largest value).
 * With --quick: the BatchNorm configuration only, with 2 training steps
 * (what tools/gpu-check.sh runs under compute-sanitizer racecheck). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../trainer/backend.h"
#include "testutil.h"

static amdim_rng rng;
static int train_steps = 3;

static void compare(const char *cfgname, const char *what, const float *gpu, const float *ref, size_t n)
{
    double big = 0, worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++)
        big = fmax(big, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) {
        double tol = 2e-3 * fmax(fabs(ref[i]), 1e-2 * big) + 1e-12;
        double e = isnan(gpu[i]) ? INFINITY : fabs(gpu[i] - ref[i]) / tol;
        if (e > worst)
            worst = e, at = i;
    }
    CHECK(worst <= 1.0, "%s: %s: element %zu of %zu: cuda %g cpu %g", cfgname, what, at, n, n ? gpu[at] : 0.0,
          n ? ref[at] : 0.0);
}

static void compare_stats(const char *name, const amdim_step_stats *g, const amdim_step_stats *c)
{
    const double *a = &g->nce_1t5, *b = &c->nce_1t5;
    static const char *terms[] = {"nce_1t5", "nce_1t7", "nce_5t5", "reg", "cls_mlp", "cls_lin", "total"};
    for (int i = 0; i < 7; i++)
        CHECK(fabs(a[i] - b[i]) <= 1e-4 * fmax(fabs(b[i]), 1e-3), "%s: %s cuda %.9g cpu %.9g", name, terms[i], a[i],
              b[i]);
    CHECK(g->labelled == c->labelled && g->correct_lin == c->correct_lin && g->correct_mlp == c->correct_mlp,
          "%s: counts", name);
}

/* The heads' shortcut bias feeds a training-mode BatchNorm (bn_out), which
 * removes any per-channel constant: its exact gradient is zero, so both
 * backends hold rounding noise there, and Adam turns that noise into steps
 * of about lr (1e-3 here) either way. Checked for being noise, and its
 * values for differing by at most those steps, not for equality. */
static void compare_noise_only(const char *cfgname, const amdim_param *g, const amdim_param *c)
{
    double dg = 0, dv = 0;
    for (size_t k = 0; k < c->size; k++) {
        if (c->grad)
            dg = fmax(dg, fmax(fabs(g->grad[k]), fabs(c->grad[k])));
        dv = fmax(dv, fabs((double)g->data[k] - c->data[k]));
    }
    CHECK(dg <= 1e-4, "%s: %s: gradient %g, expected rounding noise around zero", cfgname, c->name, dg);
    CHECK(dv <= 1e-2, "%s: %s: values differ by %g, more than a few Adam steps of noise", cfgname, c->name, dv);
}

/* Every tensor's values (and gradients, moments when asked) of the two models. */
static void compare_params(const char *name, amdim_model *gm, amdim_model *cm, int grads, int moments)
{
    REQUIRE(amdim_model_pull(gm) == 0, "pull: %s", amdim_model_error(gm));
    for (int i = 0; i < amdim_model_param_count(cm); i++) {
        amdim_param g, c;
        amdim_model_param(gm, i, &g);
        amdim_model_param(cm, i, &c);
        if (c.role == AMDIM_ROLE_BIAS && strstr(c.name, ".shortcut.bias")) {
            compare_noise_only(name, &g, &c);
            continue;
        }
        char what[200];
        snprintf(what, sizeof what, "%s", c.name);
        compare(name, what, g.data, c.data, c.size);
        if (grads && c.grad) {
            snprintf(what, sizeof what, "%s (gradient)", c.name);
            compare(name, what, g.grad, c.grad, c.size);
        }
        if (moments && c.adam_m) {
            snprintf(what, sizeof what, "%s (adam m)", c.name);
            compare(name, what, g.adam_m, c.adam_m, c.size);
            snprintf(what, sizeof what, "%s (adam v)", c.name);
            compare(name, what, g.adam_v, c.adam_v, c.size);
        }
    }
}

static void run(const char *name, int size, int ndf, int n_rkhs, int depth, int use_bn, int objective)
{
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, size);
    cfg.ndf = ndf, cfg.n_rkhs = n_rkhs, cfg.n_depth = depth, cfg.use_bn = use_bn, cfg.objective = objective;
    cfg.mlp_hidden = 16;
    cfg.warmup = 0;
    cfg.lr = 1e-3f;
    cfg.seed = 11;
    int B = 4, R = n_rkhs, K = cfg.n_classes;
    char err[512];
    amdim_model *cm, *gm;
    REQUIRE(amdim_model_create_on(&cm, &cfg, AMDIM_DEVICE_CPU, err, sizeof err) == 0, "%s", err);
    REQUIRE(amdim_model_create_on(&gm, &cfg, AMDIM_DEVICE_CUDA, err, sizeof err) == 0, "%s", err);
    test_step_inputs in;
    test_step_inputs_make(&in, &rng, B, size, R, cfg.mlp_hidden);
    float *x1 = in.x1, *x2 = in.x2, *mi = in.mask_in, *mh = in.mask_hidden;
    uint8_t *u1 = in.u1, *u2 = in.u2;
    int32_t *labels = in.labels, *src5 = in.src5;
    /* one forward / backward */
    amdim_step_stats sg, sc;
    REQUIRE(amdim_model_forward_backward(cm, x1, x2, labels, B, src5, mi, mh, &sc) == 0, "%s", amdim_model_error(cm));
    REQUIRE(amdim_model_forward_backward(gm, x1, x2, labels, B, src5, mi, mh, &sg) == 0, "%s", amdim_model_error(gm));
    compare_stats(name, &sg, &sc);
    float *a = malloc((size_t)B * R * 49 * 4), *b = malloc((size_t)B * R * 49 * 4);
    for (int v = 0; v < 2; v++)
        for (int which = 1; which <= 7; which += which == 1 ? 4 : 2) {
            size_t n = (size_t)B * R * (which == 1 ? 1 : which * which);
            REQUIRE(amdim_model_output(gm, v, which, a) == 0 && amdim_model_output(cm, v, which, b) == 0, "output");
            char what[64];
            snprintf(what, sizeof what, "r%d of view %d", which, v);
            compare(name, what, a, b, n);
        }
    for (int h = 0; h < 2; h++) {
        REQUIRE(amdim_model_logits(gm, h, a) == 0 && amdim_model_logits(cm, h, b) == 0, "logits");
        compare(name, h ? "linear logits" : "MLP logits", a, b, 2 * (size_t)B * K);
    }
    compare_params(name, gm, cm, 1, 0);
    /* deterministic: the same step again gives bit-identical gradients */
    size_t gsize = 0;
    for (int i = 0; i < amdim_model_param_count(gm); i++) {
        amdim_param g;
        amdim_model_param(gm, i, &g);
        gsize += g.grad ? g.size : 0;
    }
    float *g1 = malloc((gsize ? gsize : 1) * 4);
    for (int i = 0, at = 0; i < amdim_model_param_count(gm); i++) {
        amdim_param g;
        amdim_model_param(gm, i, &g);
        if (g.grad)
            memcpy(g1 + at, g.grad, g.size * 4), at += (int)g.size;
    }
    REQUIRE(amdim_model_forward_backward(gm, x1, x2, labels, B, src5, mi, mh, &sg) == 0, "%s", amdim_model_error(gm));
    REQUIRE(amdim_model_pull(gm) == 0, "pull");
    for (int i = 0, at = 0; i < amdim_model_param_count(gm); i++) {
        amdim_param g;
        amdim_model_param(gm, i, &g);
        if (!g.grad)
            continue;
        CHECK(memcmp(g1 + at, g.grad, g.size * 4) == 0, "%s: %s: gradient differs between two identical steps", name,
              g.name);
        at += (int)g.size;
    }
    free(g1);
    /* keep the CPU model in step (BatchNorm running statistics moved again) */
    REQUIRE(amdim_model_forward_backward(cm, x1, x2, labels, B, src5, mi, mh, &sc) == 0, "%s", amdim_model_error(cm));
    /* training steps on uint8 views */
    for (int s = 0; s < train_steps; s++) {
        REQUIRE(amdim_model_train_step(cm, u1, u2, labels, B, 0, &sc) == 0, "%s", amdim_model_error(cm));
        REQUIRE(amdim_model_train_step(gm, u1, u2, labels, B, 0, &sg) == 0, "%s", amdim_model_error(gm));
        compare_stats(name, &sg, &sc);
    }
    compare_params(name, gm, cm, 1, 1);
    /* BatchNorm refresh and evaluation */
    REQUIRE(amdim_model_refresh_bn(cm, u1, B) == 0 && amdim_model_refresh_bn(gm, u1, B) == 0, "refresh");
    float *lg = malloc((size_t)B * K * 4), *lc = malloc((size_t)B * K * 4);
    REQUIRE(amdim_model_evaluate(gm, u2, B, a, lg, NULL) == 0, "%s", amdim_model_error(gm));
    REQUIRE(amdim_model_evaluate(cm, u2, B, b, lc, NULL) == 0, "%s", amdim_model_error(cm));
    compare(name, "evaluate features", a, b, (size_t)B * R);
    compare(name, "evaluate logits", lg, lc, (size_t)B * K);
    compare_params(name, gm, cm, 0, 0);
    printf("%s: compared\n", name);
    test_step_inputs_free(&in);
    free(a), free(b), free(lg), free(lc);
    amdim_model_destroy(cm);
    amdim_model_destroy(gm);
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (argc > 1 && !quick) {
        fprintf(stderr, "usage: test_cuda_model [--quick]\n");
        return 2;
    }
    char why[256];
    if (!amdim_cuda_available(why, sizeof why)) {
        printf("test_cuda_model: skipped: %s\n", why);
        return TEST_SKIP;
    }
    amdim_rng_init(&rng, 5, 2, 0);
    if (quick) {
        train_steps = 2;
        run("32 px, BatchNorm", 32, 8, 32, 2, 1, AMDIM_OBJECTIVE_NCE);
        return test_finish("test_cuda_model --quick");
    }
    run("32 px", 32, 8, 32, 2, 0, AMDIM_OBJECTIVE_NCE);
    run("32 px, BatchNorm", 32, 8, 32, 2, 1, AMDIM_OBJECTIVE_NCE);
    run("32 px, JSD", 32, 4, 16, 1, 0, AMDIM_OBJECTIVE_JSD);
    run("32 px, DV", 32, 4, 16, 1, 0, AMDIM_OBJECTIVE_DV);
    run("64 px", 64, 4, 32, 2, 0, AMDIM_OBJECTIVE_NCE);
    run("128 px", 128, 4, 32, 1, 1, AMDIM_OBJECTIVE_NCE);
    return test_finish("test_cuda_model");
}
