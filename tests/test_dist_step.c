/* Data parallelism on the CPU, run by mpirun -np N (tests/CMakeLists.txt):
 * N ranks, each with its share of a global batch of 4N, against one
 * process with the whole batch (every rank builds that reference itself).
 * With synchronised BatchNorm they compute the same thing up to the order
 * of summation: every loss term (relative), every gradient of the first
 * step and of steps 2 and 3, whose weights already differ (relative: the
 * L2 norm of the difference over that of the module's gradient), the
 * weights after each of 3 Adam steps (over the module's norm) and the
 * running statistics after the first step (means relative to the running
 * deviation, variances relative) within the tolerances of the table
 * below, for the three objectives, with and without BatchNorm in the
 * encoder; every rank holds bit-identical weights after each update
 * (amdim_model_check_replicas). Each run prints the worst error of every
 * kind beside its tolerance.
 * With per-rank BatchNorm (the default) the running statistics are, bit for
 * bit, the mean over ranks of what one process makes of each rank's share,
 * and the replicas stay identical on different images per rank. The
 * classifier phase (probes on the frozen encoder) equals one process too.
 * Argument "cuda": every model on the CUDA backend instead (the NCCL path:
 * gathered targets, reduce-scattered target gradients, gradient buckets,
 * --sync-bn through the BatchNorm kernels' hook), which tests/CMakeLists.txt
 * runs on the emulated device (tests/cudaemu, NCCL emulated over MPI); 77
 * without a usable CUDA device. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_common.h"
#include "amdim_parallel.h"
#include "amdim_philox.h"
#include "amdim_trainer.h"
#include "testutil.h"

#define S 32

/* Tolerances of one configuration. The order of summation is all that
 * differs, and it changes with the BLAS kernels of the CPU, so each
 * tolerance is the worst error measured over the kernels users have
 * (OPENBLAS_CORETYPE Cooperlake, SkylakeX, Zen, Haswell, Sandybridge and
 * Nehalem: AVX-512, AVX2, AVX and SSE orders; 1, 2 and more BLAS threads;
 * 2 and 3 ranks; the emulated CUDA device) times three, rounded up to 1,
 * 2 or 5 in its decade, and never below the 1e-5 (1e-4 for the later
 * gradients) the test used before it was measured: kernels nobody measured
 * (other CPUs, other OpenBLAS versions) keep that margin.
 * They differ by configuration because Adam's per-element normalisation
 * turns rounding noise in near-zero gradients into lr-sized steps, and
 * without BatchNorm the zero-initialised conv2 of the residual blocks
 * starts with such gradients. The output prints each worst error beside
 * its tolerance; re-derive them from it. */
typedef struct {
    double loss;       /* loss terms, relative */
    double running;    /* running statistics after the first step */
    double grad;       /* gradients of the first step */
    double grad_later; /* gradients of steps 2 and 3 (weights already differ) */
    double weight;     /* weights after each Adam step */
} tolerances;

typedef struct {
    int objective, use_bn;
    tolerances tol;
} config;

static const config configs[] = {
    /* objective, use_bn, {loss, running, grad, grad_later, weight} */
    {AMDIM_OBJECTIVE_NCE, 1, {1e-5, 1e-5, 1e-5, 1e-4, 2e-5}},
    {AMDIM_OBJECTIVE_JSD, 0, {1e-5, 1e-5, 2e-5, 2e-4, 1e-4}},
    {AMDIM_OBJECTIVE_DV, 1, {1e-5, 1e-5, 1e-5, 1e-4, 1e-5}},
};

/* The classifier phase: probe losses and weights after 2 updates. */
static const double tol_cls_loss = 1e-5, tol_cls_weight = 1e-5;

static amdim_comm *comm;
static amdim_device device = AMDIM_DEVICE_CPU;

/* The host mirror of m up to date (a CUDA model's lives on the device). */
static void host(amdim_model *m)
{
    if (device != AMDIM_DEVICE_CPU)
        REQUIRE(amdim_model_pull(m) == 0, "pull: %s", amdim_model_error(m));
}

static amdim_model *make(const amdim_model_config *cfg, const amdim_comm *c)
{
    amdim_model *m;
    char err[512];
    REQUIRE(amdim_model_create_on(&m, cfg, device, err, sizeof err) == 0, "%s", err);
    REQUIRE(amdim_model_set_comm(m, c) == 0, "%s", amdim_model_error(m));
    return m;
}

static double max_abs(const float *a, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(a[i]));
    return m;
}

static void check_stat(const char *what, double got, double want, double tol, double *worst, const char *ctx)
{
    double rel = fabs(got - want) / fmax(fabs(want), 1e-12);
    *worst = fmax(*worst, rel);
    CHECK(rel <= tol, "%s: %s %.9g vs one process %.9g (relative %.2g, tolerance %.2g)", ctx, what, got, want, rel,
          tol);
}

/* The largest of v over all ranks (on every rank). */
static double max_over_ranks(double v)
{
    double all[256] = {0};
    REQUIRE(comm->size <= 256, "%d ranks", comm->size);
    all[comm->rank] = v;
    REQUIRE(comm->allreduce_f64(comm->ctx, all, (size_t)comm->size) == 0, "allreduce");
    double m = 0;
    for (int i = 0; i < comm->size; i++)
        m = fmax(m, all[i]);
    return m;
}

/* Tensors whose exact gradient is zero: a bias whose every path ends in a
 * training-mode BatchNorm - the heads' shortcut.bias and, with use_bn, the
 * bias of the BatchNorm layer before the last block (the last block and
 * both heads normalise whatever it shifts). Both computations hold
 * rounding noise there, checked to be below 1e-3 of the gradient of the
 * weight before it in the table; Adam turns that noise into lr-sized steps
 * of either sign, which then move the running means of the BatchNorms
 * after them (not their outputs), so after Adam neither those biases nor
 * any running mean are compared. */
static int noise[512];

static int is_zero_gradient(const char *name, int use_bn)
{
    return strcmp(name, "encoder.module.rkhs_block_5.shortcut.bias") == 0 ||
           strcmp(name, "encoder.module.rkhs_block_7.shortcut.bias") == 0 ||
           (use_bn && strcmp(name, "encoder.module.layer_list.4.bn.bias") == 0);
}

static double diff2(const float *a, const float *b, size_t n)
{
    double d = 0;
    for (size_t k = 0; k < n; k++)
        d += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
    return d;
}

/* The squared norm of the gradients (or values) of p's module: the
 * trainable tensors whose names differ from p's in the last part only
 * (conv.weight and conv.bias; bn.weight and bn.bias). A buffer is its own
 * module. */
static double module_norm2(amdim_model *r, const amdim_param *p, int grads, int use_bn)
{
    size_t plen = (size_t)(strrchr(p->name, '.') - p->name);
    double norm2 = 0;
    for (int j = 0; j < amdim_model_param_count(r); j++) {
        amdim_param q;
        amdim_model_param(r, j, &q);
        int same = q.data == p->data ||
                   (!p->buffer && !q.buffer && q.used && !is_zero_gradient(q.name, use_bn) &&
                    strncmp(q.name, p->name, plen + 1) == 0 && !strchr(q.name + plen + 1, '.'));
        const float *v = grads ? q.grad : q.data;
        for (size_t k = 0; same && k < q.size; k++)
            norm2 += (double)v[k] * v[k];
    }
    return norm2;
}

static double compare_grads(amdim_model *d, amdim_model *r, int use_bn, double tol, const char *ctx)
{
    double worst = 0;
    host(d), host(r);
    int n = amdim_model_param_count(r);
    REQUIRE(n <= 512, "%d tensors", n);
    for (int i = 0; i < n; i++) {
        amdim_param pd, pr, prev;
        amdim_model_param(d, i, &pd);
        amdim_model_param(r, i, &pr);
        if (!pr.grad || !pr.used)
            continue;
        if (is_zero_gradient(pr.name, use_bn)) {
            noise[i] = 1;
            amdim_model_param(r, i - 1, &prev);
            double bound = 1e-3 * max_abs(prev.grad, prev.size);
            CHECK(max_abs(pr.grad, pr.size) <= bound && max_abs(pd.grad, pd.size) <= bound,
                  "%s: the gradient of %s is %.3g / %.3g, not rounding noise (below %.3g)", ctx, pr.name,
                  max_abs(pd.grad, pd.size), max_abs(pr.grad, pr.size), bound);
            continue;
        }
        /* relative to the module's gradient (weight and bias together): a
         * bias gradient alone can be a sum that nearly cancels (the NCE
         * scores' gradient sums to ~0 over each row) */
        double d2 = diff2(pd.grad, pr.grad, pr.size), norm2 = module_norm2(r, &pr, 1, use_bn);
        double rel = norm2 > 0 ? sqrt(d2 / norm2) : sqrt(d2);
        worst = fmax(worst, rel);
        CHECK(rel <= tol, "%s: gradient of %s differs by %.2g (relative to its module's; tolerance %.2g)", ctx, pr.name,
              rel, tol);
    }
    return worst;
}

static double compare_weights(amdim_model *d, amdim_model *r, int use_bn, double tol, const char *ctx)
{
    double worst = 0;
    host(d), host(r);
    for (int i = 0; i < amdim_model_param_count(r); i++) {
        amdim_param pd, pr;
        amdim_model_param(d, i, &pd);
        amdim_model_param(r, i, &pr);
        if (noise[i] || pr.role == AMDIM_ROLE_BN_MEAN)
            continue;
        double d2 = diff2(pd.data, pr.data, pr.size), norm2 = module_norm2(r, &pr, 0, use_bn);
        double rel = norm2 > 0 ? sqrt(d2 / norm2) : sqrt(d2);
        worst = fmax(worst, rel);
        CHECK(rel <= tol, "%s: %s differs by %.2g (relative to its module's; tolerance %.2g) after Adam", ctx, pr.name,
              rel, tol);
    }
    return worst;
}

/* Running means relative to the channel's running standard deviation,
 * running variances relative: a mean near zero carries rounding noise of
 * that scale, not of its own. Returns the worst. */
static double compare_running(amdim_model *d, amdim_model *r, double tol, const char *ctx)
{
    double worst_all = 0;
    host(d), host(r);
    for (int i = 0; i < amdim_model_param_count(r); i++) {
        amdim_param pd, pr, var;
        amdim_model_param(d, i, &pd);
        amdim_model_param(r, i, &pr);
        if (pr.role == AMDIM_ROLE_BN_MEAN) {
            amdim_model_param(r, i + 1, &var);
            REQUIRE(var.role == AMDIM_ROLE_BN_VAR, "%s: no running_var after %s", ctx, pr.name);
            double worst = 0;
            for (size_t k = 0; k < pr.size; k++)
                worst = fmax(worst, fabs((double)pd.data[k] - pr.data[k]) / sqrt(fmax(var.data[k], 1e-12)));
            worst_all = fmax(worst_all, worst);
            CHECK(worst <= tol, "%s: %s differs by %.2g of the running deviation (tolerance %.2g)", ctx, pr.name,
                  worst, tol);
        } else if (pr.role == AMDIM_ROLE_BN_VAR) {
            double d2 = diff2(pd.data, pr.data, pr.size), n2 = 0;
            for (size_t k = 0; k < pr.size; k++)
                n2 += (double)pr.data[k] * pr.data[k];
            worst_all = fmax(worst_all, sqrt(d2 / n2));
            CHECK(sqrt(d2 / n2) <= tol, "%s: %s differs by %.2g (relative; tolerance %.2g)", ctx, pr.name,
                  sqrt(d2 / n2), tol);
        } else if (pr.role == AMDIM_ROLE_BN_COUNT) {
            CHECK(pd.data[0] == pr.data[0], "%s: %s %g vs %g", ctx, pr.name, pd.data[0], pr.data[0]);
        }
    }
    return worst_all;
}

static void equivalence(const config *c)
{
    int objective = c->objective, use_bn = c->use_bn;
    const tolerances *tol = &c->tol;
    int N = comm->size, B = 4, Bg = B * N;
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, S);
    cfg.ndf = 8, cfg.n_rkhs = 32, cfg.n_depth = 1, cfg.mlp_hidden = 16, cfg.n_classes = 5;
    cfg.objective = objective, cfg.use_bn = use_bn, cfg.seed = 11, cfg.warmup = 0;
    amdim_model *d = make(&cfg, comm), *r = make(&cfg, NULL);
    size_t view = (size_t)3 * S * S;
    float *x1 = malloc(Bg * view * 4), *x2 = malloc(Bg * view * 4);
    float *mi = malloc((size_t)2 * Bg * cfg.n_rkhs * 4), *mh = malloc((size_t)2 * Bg * cfg.mlp_hidden * 4);
    int32_t *labels = malloc(Bg * 4), *src5 = malloc(2 * Bg * 4);
    REQUIRE(x1 && x2 && mi && mh && labels && src5, "out of memory");
    char ctx[96];
    memset(noise, 0, sizeof noise);
    double worst_g = 0, worst_g_later = 0, worst_w = 0, worst_loss = 0, worst_run = 0;
    for (int step = 0; step < 3; step++) {
        amdim_rng rng; /* the same global batch on every rank */
        amdim_rng_init(&rng, 99, 7, (uint64_t)step);
        for (size_t i = 0; i < Bg * view; i++)
            x1[i] = amdim_rng_uniform(&rng, -2, 2), x2[i] = amdim_rng_uniform(&rng, -2, 2);
        for (int i = 0; i < Bg; i++)
            labels[i] = i % 3 == 1 ? -1 : (int32_t)amdim_rng_int(&rng, 0, 4);
        for (int i = 0; i < 2 * Bg; i++)
            src5[i] = (int32_t)amdim_rng_int(&rng, 0, 24);
        for (size_t i = 0; i < (size_t)2 * Bg * cfg.n_rkhs; i++)
            mi[i] = amdim_rng_uniform(&rng, 0, 1) >= 0.2f;
        for (size_t i = 0; i < (size_t)2 * Bg * cfg.mlp_hidden; i++)
            mh[i] = amdim_rng_uniform(&rng, 0, 1) >= 0.2f;
        amdim_step_stats sd, sr;
        size_t off = (size_t)comm->rank * B;
        REQUIRE(amdim_model_forward_backward(r, x1, x2, labels, Bg, src5, mi, mh, &sr) == 0, "%s",
                amdim_model_error(r));
        REQUIRE(amdim_model_forward_backward(d, x1 + off * view, x2 + off * view, labels + off, B, src5, mi, mh, &sd) ==
                    0,
                "%s", amdim_model_error(d));
        snprintf(ctx, sizeof ctx, "objective %d use_bn %d step %d, rank %d of %d", objective, use_bn, step, comm->rank,
                 N);
        check_stat("nce_1t5", sd.nce_1t5, sr.nce_1t5, tol->loss, &worst_loss, ctx);
        check_stat("nce_1t7", sd.nce_1t7, sr.nce_1t7, tol->loss, &worst_loss, ctx);
        check_stat("nce_5t5", sd.nce_5t5, sr.nce_5t5, tol->loss, &worst_loss, ctx);
        check_stat("reg", sd.reg, sr.reg, tol->loss, &worst_loss, ctx);
        check_stat("cls_mlp", sd.cls_mlp, sr.cls_mlp, tol->loss, &worst_loss, ctx);
        check_stat("cls_lin", sd.cls_lin, sr.cls_lin, tol->loss, &worst_loss, ctx);
        check_stat("total", sd.total, sr.total, tol->loss, &worst_loss, ctx);
        CHECK(sd.labelled == sr.labelled && sd.correct_mlp == sr.correct_mlp && sd.correct_lin == sr.correct_lin,
              "%s: counts %d/%d/%d vs %d/%d/%d", ctx, sd.labelled, sd.correct_mlp, sd.correct_lin, sr.labelled,
              sr.correct_mlp, sr.correct_lin);
        if (step == 0) /* the running statistics of the global batch, before any update */
            worst_run = compare_running(d, r, tol->running, ctx);
        /* the first step's gradients come from the same weights: summation
         * order only; later ones from weights that Adam's per-element
         * normalisation has already moved apart */
        double g = compare_grads(d, r, use_bn, step ? tol->grad_later : tol->grad, ctx);
        if (step == 0)
            worst_g = g;
        else
            worst_g_later = fmax(worst_g_later, g);
        REQUIRE(amdim_model_adam_step(d, 0) == 0 && amdim_model_adam_step(r, 0) == 0, "adam");
        worst_w = fmax(worst_w, compare_weights(d, r, use_bn, tol->weight, ctx));
        CHECK(amdim_model_check_replicas(d) == 0, "%s: %s", ctx, amdim_model_error(d));
    }
    worst_loss = max_over_ranks(worst_loss), worst_run = max_over_ranks(worst_run);
    worst_g = max_over_ranks(worst_g), worst_g_later = max_over_ranks(worst_g_later), worst_w = max_over_ranks(worst_w);
    if (comm->rank == 0) {
        printf("objective %d use_bn %d, %d ranks x %d, worst error (tolerance): loss terms %.2g (%.0e), running "
               "statistics %.2g (%.0e), gradients %.2g (%.0e), at steps 2-3 %.2g (%.0e), weights after each of 3 Adam "
               "steps %.2g (%.0e); rounding-noise gradients:",
               objective, use_bn, N, B, worst_loss, tol->loss, worst_run, tol->running, worst_g, tol->grad,
               worst_g_later, tol->grad_later, worst_w, tol->weight);
        for (int i = 0; i < amdim_model_param_count(r); i++)
            if (noise[i]) {
                amdim_param p;
                amdim_model_param(r, i, &p);
                printf(" %s", p.name);
            }
        printf("\n");
    }
    free(x1), free(x2), free(mi), free(mh), free(labels), free(src5);
    amdim_model_destroy(d);
    amdim_model_destroy(r);
}

/* The classifier phase (probes only, frozen encoder in eval mode) on the
 * global batch's uint8 views: the same as one process. */
static void classifier_phase(void)
{
    int N = comm->size, B = 4, Bg = B * N;
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, S);
    cfg.ndf = 8, cfg.n_rkhs = 32, cfg.n_depth = 1, cfg.mlp_hidden = 16, cfg.n_classes = 5, cfg.use_bn = 1;
    cfg.warmup = 0;
    amdim_model *d = make(&cfg, comm), *r = make(&cfg, NULL);
    REQUIRE(amdim_model_reset_probes(d, 5) == 0 && amdim_model_reset_probes(r, 5) == 0, "reset probes");
    size_t view = (size_t)S * S * 3, off = (size_t)comm->rank * B;
    uint8_t *v1 = malloc(Bg * view), *v2 = malloc(Bg * view);
    int32_t *labels = malloc(Bg * sizeof *labels);
    amdim_rng rng;
    amdim_rng_init(&rng, 41, 1, 0);
    for (size_t i = 0; i < Bg * view; i++)
        v1[i] = (uint8_t)amdim_rng_int(&rng, 0, 255), v2[i] = (uint8_t)amdim_rng_int(&rng, 0, 255);
    for (int i = 0; i < Bg; i++)
        labels[i] = i % 3 == 2 ? -1 : i % 5;
    memset(noise, 0, sizeof noise);
    char ctx[96];
    double worst = 0, worst_loss = 0;
    for (int step = 0; step < 2; step++) {
        amdim_step_stats sd, sr;
        REQUIRE(amdim_model_train_probes_step(r, v1, v2, labels, Bg, 0, &sr) == 0, "%s", amdim_model_error(r));
        REQUIRE(amdim_model_train_probes_step(d, v1 + off * view, v2 + off * view, labels + off, B, 0, &sd) == 0, "%s",
                amdim_model_error(d));
        snprintf(ctx, sizeof ctx, "classifier phase step %d, rank %d of %d", step, comm->rank, N);
        check_stat("cls_mlp", sd.cls_mlp, sr.cls_mlp, tol_cls_loss, &worst_loss, ctx);
        check_stat("cls_lin", sd.cls_lin, sr.cls_lin, tol_cls_loss, &worst_loss, ctx);
        CHECK(sd.labelled == sr.labelled, "%s: labelled %d vs %d", ctx, sd.labelled, sr.labelled);
        worst = fmax(worst, compare_weights(d, r, 1, tol_cls_weight, ctx));
        CHECK(amdim_model_check_replicas(d) == 0, "%s: %s", ctx, amdim_model_error(d));
    }
    worst = max_over_ranks(worst), worst_loss = max_over_ranks(worst_loss);
    if (comm->rank == 0)
        printf("classifier phase, %d ranks x %d, worst error (tolerance): probe losses %.2g (%.0e), weights after 2 "
               "updates %.2g (%.0e)\n",
               N, B, worst_loss, tol_cls_loss, worst, tol_cls_weight);
    free(v1), free(v2), free(labels);
    amdim_model_destroy(d);
    amdim_model_destroy(r);
}

/* Per-rank BatchNorm: each rank's statistics, running ones averaged. */
static void per_rank_bn(void)
{
    int N = comm->size, B = 4;
    comm->sync_bn = 0;
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, S);
    cfg.ndf = 8, cfg.n_rkhs = 32, cfg.n_depth = 1, cfg.mlp_hidden = 16, cfg.n_classes = 5, cfg.use_bn = 1;
    amdim_model *d = make(&cfg, comm);
    size_t nv = (size_t)B * S * S * 3;
    uint8_t *v1 = malloc(nv), *v2 = malloc(nv);
    int32_t labels[4] = {0, 1, -1, 3};
    amdim_rng rng; /* each rank its own images */
    amdim_rng_init(&rng, 5, 9, (uint64_t)comm->rank);
    for (size_t i = 0; i < nv; i++)
        v1[i] = (uint8_t)amdim_rng_int(&rng, 0, 255), v2[i] = (uint8_t)amdim_rng_int(&rng, 0, 255);
    /* one forward/backward on float views: the running statistics are the
     * mean over ranks (in double) of what one process makes of each rank's
     * share alone - bit for bit */
    {
        amdim_model *one = make(&cfg, NULL);
        int Bg = B * N;
        size_t view = (size_t)3 * S * S, R = (size_t)cfg.n_rkhs, H = (size_t)cfg.mlp_hidden, off = (size_t)comm->rank * B;
        float *x1 = malloc(B * view * 4), *x2 = malloc(B * view * 4), *mi = malloc(2 * Bg * R * 4),
              *mh = malloc(2 * Bg * H * 4), *mil = malloc(2 * B * R * 4), *mhl = malloc(2 * B * H * 4);
        int32_t *src5 = malloc(2 * Bg * 4), src5l[8];
        for (size_t i = 0; i < B * view; i++)
            x1[i] = amdim_rng_uniform(&rng, -2, 2), x2[i] = amdim_rng_uniform(&rng, -2, 2);
        amdim_rng shared; /* the global draws: the same on every rank */
        amdim_rng_init(&shared, 6, 1, 0);
        for (int i = 0; i < 2 * Bg; i++)
            src5[i] = (int32_t)amdim_rng_int(&shared, 0, 24);
        for (size_t i = 0; i < 2 * Bg * R; i++)
            mi[i] = amdim_rng_uniform(&shared, 0, 1) >= 0.2f;
        for (size_t i = 0; i < 2 * Bg * H; i++)
            mh[i] = amdim_rng_uniform(&shared, 0, 1) >= 0.2f;
        for (int h = 0; h < 2; h++) { /* this rank's rows of each half */
            memcpy(src5l + h * B, src5 + h * Bg + off, B * 4);
            memcpy(mil + h * B * R, mi + (h * Bg + off) * R, B * R * 4);
            memcpy(mhl + h * B * H, mh + (h * Bg + off) * H, B * H * 4);
        }
        amdim_step_stats s1, s2;
        REQUIRE(amdim_model_forward_backward(d, x1, x2, labels, B, src5, mi, mh, &s1) == 0, "%s", amdim_model_error(d));
        REQUIRE(amdim_model_forward_backward(one, x1, x2, labels, B, src5l, mil, mhl, &s2) == 0, "%s",
                amdim_model_error(one));
        int checked = 0, bad = 0;
        host(d), host(one);
        for (int i = 0; i < amdim_model_param_count(d); i++) {
            amdim_param pd, po;
            amdim_model_param(d, i, &pd);
            amdim_model_param(one, i, &po);
            if (pd.role != AMDIM_ROLE_BN_MEAN && pd.role != AMDIM_ROLE_BN_VAR)
                continue;
            double *sum = malloc(po.size * sizeof(double));
            for (size_t k = 0; k < po.size; k++)
                sum[k] = po.data[k];
            REQUIRE(comm->allreduce_f64(comm->ctx, sum, po.size) == 0, "allreduce");
            for (size_t k = 0; k < po.size; k++)
                bad += pd.data[k] != (float)(sum[k] / N);
            CHECK(!bad, "per-rank BatchNorm: %s is not the mean over ranks of the shares' statistics", pd.name);
            checked++;
            free(sum);
        }
        CHECK(checked >= 8, "per-rank BatchNorm: %d running statistics compared", checked);
        free(x1), free(x2), free(mi), free(mh), free(mil), free(mhl), free(src5);
        amdim_model_destroy(one);
    }
    amdim_step_stats st;
    REQUIRE(amdim_model_train_step(d, v1, v2, labels, B, 0, &st) == 0, "%s", amdim_model_error(d));
    CHECK(isfinite(st.total), "per-rank BatchNorm: loss %g", st.total);
    CHECK(amdim_model_check_replicas(d) == 0, "per-rank BatchNorm: %s", amdim_model_error(d));
    REQUIRE(amdim_model_train_step(d, v1, v2, labels, B, 0, &st) == 0, "%s", amdim_model_error(d));
    CHECK(amdim_model_check_replicas(d) == 0, "per-rank BatchNorm, step 2: %s", amdim_model_error(d));
    if (comm->rank == 0)
        printf("per-rank BatchNorm, %d ranks: 2 steps, loss %.6f, replicas identical\n", N, st.total);
    free(v1), free(v2);
    amdim_model_destroy(d);
    comm->sync_bn = 1;
}

int main(int argc, char **argv)
{
    char err[512];
    if (!amdim_parallel_built()) {
        printf("SKIP: this build has no MPI\n");
        return 77;
    }
    if (argc > 1 && strcmp(argv[1], "cuda") == 0) {
        if (amdim_device_resolve("cuda", &device, err, sizeof err) != AMDIM_OK) {
            printf("SKIP: %s\n", err);
            return 77;
        }
    } else if (argc > 1) {
        fprintf(stderr, "usage: test_dist_step [cuda]\n");
        return 2;
    }
    REQUIRE(amdim_parallel_open(&comm, 1, err, sizeof err) == 0, "%s", err);
    REQUIRE(comm->size >= 2, "run under mpirun -np 2 or more (size %d)", comm->size);
    if (comm->rank == 0)
        printf("OpenBLAS core %s, AMDIM_SIMD %s\n", getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "(detected)",
               getenv("AMDIM_SIMD") ? getenv("AMDIM_SIMD") : "(detected)");
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
        equivalence(&configs[i]);
    classifier_phase();
    per_rank_bn();
    int rc = test_finish("test_dist_step");
    amdim_parallel_close(comm);
    return rc;
}
