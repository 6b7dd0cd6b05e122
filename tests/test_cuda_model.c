/* The whole model on the CUDA backend against the CPU backend (label gpu;
 * exits 77 without a usable GPU; also run on the emulated device of
 * tests/cudaemu as test_cudaemu_model): tiny configurations of the three
 * encoder sizes (and BatchNorm on), one forward/backward on float views
 * with fixed draws (every loss term within 1e-4; r1/r5/r7 of both views,
 * both probes' logits element-wise within 2e-3 relative, floor 1e-2 of the
 * tensor's largest value; every gradient and running statistic, then an
 * evaluation), then 3 training steps on uint8 views (losses; weights,
 * gradients and Adam moments), a BatchNorm refresh and an evaluation.
 * fp32 on both sides with other summation orders: gradients, weights and
 * moments are compared against their module's norm (TOL_GRAD, TOL_ADAM),
 * the tensors whose exact gradient is zero for being noise
 * (is_zero_gradient), as tests/test_dist_step.c does; the emulated device
 * showed that element-wise tolerances cannot hold for them.
 * With --quick: the BatchNorm configuration only, with 2 training steps
 * (what tools/gpu-check.sh runs under compute-sanitizer racecheck). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_internal.h"
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

/* ||gpu - cpu|| <= tol ||cpu||, printed. */
static void normwise(const char *cfgname, const char *what, const float *gpu, const float *ref, size_t n, double tol)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++)
        d += ((double)gpu[i] - ref[i]) * ((double)gpu[i] - ref[i]), r += (double)ref[i] * ref[i];
    double rel = sqrt(d / fmax(r, 1e-300));
    CHECK(rel <= tol, "%s: %s differ by %.3g of their norm (limit %.2g)", cfgname, what, rel, tol);
    printf("%s: %s: %.3g of their norm\n", cfgname, what, rel);
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

/* Tensors whose exact gradient is zero: a bias whose every path ends in a
 * training-mode BatchNorm - the heads' shortcut.bias and, with use_bn, the
 * bias of the first top-level BatchNorm layer (the blocks after it
 * normalise whatever it shifts; tests/test_dist_step.c found them). Both
 * backends hold rounding noise there: checked to be below 1e-3 of the
 * gradient of the weight before it in the table. Adam turns that noise
 * into lr-sized steps of either sign, which then move the running means of
 * the BatchNorms after them (not their outputs): after Adam those biases
 * are checked to differ by at most a few such steps and no running mean
 * is compared. */
static int is_zero_gradient(amdim_model *m, const amdim_param *p)
{
    if (strstr(p->name, ".shortcut.bias"))
        return 1;
    for (int j = 0; j < amdim_model_param_count(m); j++) { /* the first top-level BatchNorm's bias */
        amdim_param q;
        amdim_model_param(m, j, &q);
        int k = -1, at = 0;
        if (sscanf(q.name, "encoder.module.layer_list.%d.bn.bias%n", &k, &at) == 1 && q.name[at] == 0)
            return q.used && strcmp(q.name, p->name) == 0;
    }
    return 0;
}

static double max_abs(const float *x, size_t n)
{
    double r = 0;
    for (size_t k = 0; k < n; k++)
        r = fmax(r, fabs(x[k]));
    return r;
}

/* which: 0 values, 1 gradients, 2 Adam m, 3 Adam v */
static const float *field(const amdim_param *p, int which)
{
    return which == 0 ? p->data : which == 1 ? p->grad : which == 2 ? p->adam_m : p->adam_v;
}

/* The squared norm of `which` over p's module in m: the trainable tensors
 * whose names differ from p's in the last part only (conv.weight and
 * conv.bias; bn.weight and bn.bias), the zero-gradient ones left out; a
 * buffer is its own module. A bias alone can be a sum that nearly cancels
 * (the NCE scores' gradient sums to ~0 over each row), so differences are
 * measured against the module. */
static double module_norm2(amdim_model *m, const amdim_param *p, int which)
{
    size_t plen = (size_t)(strrchr(p->name, '.') - p->name);
    double norm2 = 0;
    for (int j = 0; j < amdim_model_param_count(m); j++) {
        amdim_param q;
        amdim_model_param(m, j, &q);
        int same = q.data == p->data || (!p->buffer && !q.buffer && q.used && !is_zero_gradient(m, &q) &&
                                         strncmp(q.name, p->name, plen + 1) == 0 && !strchr(q.name + plen + 1, '.'));
        const float *v = field(&q, which);
        for (size_t k = 0; same && v && k < q.size; k++)
            norm2 += (double)v[k] * v[k];
    }
    return norm2;
}

/* Module-relative tolerances (fp32 on both sides, other summation orders),
 * about ten times the worst difference the emulated device
 * (tests/cudaemu: fp32 data, double accumulation) shows against the CPU's
 * float accumulation: */
#define TOL_GRAD 1e-3  /* gradients of one forward / backward */
#define TOL_ADAM 2e-3  /* values and moments after the Adam steps */
#define TOL_RUN 1e-6   /* running statistics before Adam: means against the channel's running std */
static double worst_seen[3];

/* Every tensor of the two models: after_adam 0 - running statistics and
 * gradients of one forward / backward; 1 - values, gradients and moments
 * after the training steps (running means skipped, see above). */
static void compare_params(const char *name, amdim_model *gm, amdim_model *cm, int after_adam)
{
    REQUIRE(amdim_model_pull(gm) == 0, "pull: %s", amdim_model_error(gm));
    for (int i = 0; i < amdim_model_param_count(cm); i++) {
        amdim_param g, c;
        amdim_model_param(gm, i, &g);
        amdim_model_param(cm, i, &c);
        if (c.grad && is_zero_gradient(cm, &c)) {
            amdim_param prev;
            amdim_model_param(cm, i - 1, &prev);
            double bound = 1e-3 * max_abs(prev.grad, prev.size);
            CHECK(max_abs(g.grad, g.size) < bound && max_abs(c.grad, c.size) < bound,
                  "%s: the gradient of %s is %.3g / %.3g, not rounding noise (below %.3g)", name, c.name,
                  max_abs(g.grad, g.size), max_abs(c.grad, c.size), bound);
            double dv = 0;
            for (size_t k = 0; k < c.size; k++)
                dv = fmax(dv, fabs((double)g.data[k] - c.data[k]));
            CHECK(dv <= 1e-2, "%s: %s: values differ by %g, more than a few Adam steps of noise", name, c.name, dv);
            continue;
        }
        if (c.role == AMDIM_ROLE_BN_MEAN) {
            if (after_adam)
                continue;
            amdim_param var;
            amdim_model_param(cm, i + 1, &var);
            double d2 = 0, s2 = 0;
            for (size_t k = 0; k < c.size; k++)
                d2 += ((double)g.data[k] - c.data[k]) * ((double)g.data[k] - c.data[k]), s2 += fabs(var.data[k]);
            double rel = sqrt(d2 / fmax(s2, 1e-300));
            worst_seen[2] = fmax(worst_seen[2], rel);
            CHECK(rel <= TOL_RUN, "%s: %s differs by %.2g of the running std", name, c.name, rel);
            continue;
        }
        for (int which = 0; which < 4; which++) {
            const float *a = field(&g, which), *b = field(&c, which);
            if (!a || !b || (which == 1 && !c.used) || (which >= 2 && !after_adam) || (which == 0 && !after_adam &&
                                                                                        !c.buffer))
                continue;
            double d2 = 0;
            for (size_t k = 0; k < c.size; k++)
                d2 += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
            double norm2 = module_norm2(cm, &c, which), rel = norm2 > 0 ? sqrt(d2 / norm2) : sqrt(d2);
            double tol = which == 1 && !after_adam ? TOL_GRAD : TOL_ADAM;
            worst_seen[which == 1 && !after_adam ? 0 : 1] = fmax(worst_seen[which == 1 && !after_adam ? 0 : 1], rel);
            static const char *what[] = {"values", "gradient", "Adam m", "Adam v"};
            CHECK(rel <= tol, "%s: %s: %s differ by %.2g (relative to its module's; limit %.0e)", name, c.name,
                  what[which], rel, tol);
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
    compare_params(name, gm, cm, 0);
    /* evaluation (eval-mode BatchNorm, the probes' forward) on the same weights */
    float *lg = malloc((size_t)B * K * 4), *lc = malloc((size_t)B * K * 4);
    REQUIRE(amdim_model_evaluate(gm, u2, B, a, lg, NULL) == 0, "%s", amdim_model_error(gm));
    REQUIRE(amdim_model_evaluate(cm, u2, B, b, lc, NULL) == 0, "%s", amdim_model_error(cm));
    compare(name, "evaluate features", a, b, (size_t)B * R);
    compare(name, "evaluate logits", lg, lc, (size_t)B * K);
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
    compare_params(name, gm, cm, 1);
    /* BatchNorm refresh and evaluation. With BatchNorm in the encoder the
     * zero-gradient bias's noise steps (see is_zero_gradient) have moved the
     * running means, which eval mode uses, so the outputs differ by about
     * lr / std there: compared norm-wise within 0.5 (what catches a broken
     * path); without it element-wise as everything else. The evaluation
     * path itself is compared tightly before the Adam steps. */
    REQUIRE(amdim_model_refresh_bn(cm, u1, B) == 0 && amdim_model_refresh_bn(gm, u1, B) == 0, "refresh");
    REQUIRE(amdim_model_evaluate(gm, u2, B, a, lg, NULL) == 0, "%s", amdim_model_error(gm));
    REQUIRE(amdim_model_evaluate(cm, u2, B, b, lc, NULL) == 0, "%s", amdim_model_error(cm));
    if (use_bn) {
        normwise(name, "evaluate features after Adam", a, b, (size_t)B * R, 0.5);
        normwise(name, "evaluate logits after Adam", lg, lc, (size_t)B * K, 0.5);
    } else {
        compare(name, "evaluate features", a, b, (size_t)B * R);
        compare(name, "evaluate logits", lg, lc, (size_t)B * K);
    }
    printf("%s: compared; worst module-relative differences: gradients %.2g, after Adam %.2g, running means %.2g\n",
           name, worst_seen[0], worst_seen[1], worst_seen[2]);
    memset(worst_seen, 0, sizeof worst_seen);
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
    amdim_model_config cfg; /* the process's cuDNN choices, for the log */
    amdim_model_config_default(&cfg, 32);
    cfg.ndf = 8, cfg.n_rkhs = 32, cfg.n_depth = 1;
    char err[256], table[16384];
    amdim_model *m;
    if (amdim_model_create_on(&m, &cfg, AMDIM_DEVICE_CUDA, err, sizeof err) == 0) {
        amdim_model_algorithms(m, table, sizeof table);
        printf("cuDNN algorithms of these runs:\n%s", table);
        amdim_model_destroy(m);
    }
    return test_finish("test_cuda_model");
}
