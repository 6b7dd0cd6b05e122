/* Finite-difference checks of every op's backward: the loss sum(g * y)
 * for a random g is accumulated in double, each checked input/parameter
 * element is moved by +-h and the central difference compared with the
 * analytic gradient (|num - ana| <= 2e-3 + 2e-2 |ana|). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nce_internal.h"
#include "ops_internal.h"
#include "elementwise_internal.h"
#include "amdim_augment.h"
#include "amdim_trainer.h"
#include "testutil.h"

static amdim_rng rng;
static double worst;
static char worst_op[64];

static void fill(float *p, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = amdim_rng_uniform(&rng, lo, hi);
        /* keep away from ReLU's kink */
        if (fabsf(p[i]) < 0.05f)
            p[i] = p[i] < 0 ? -0.05f : 0.05f;
    }
}

typedef double (*loss_fn)(void *ctx);

/* Compares dvar (analytic) with central differences of f over up to 24
 * elements of var. */
static void check(const char *op, const char *what, loss_fn f, void *ctx, float *var, const float *dvar, size_t n,
                  float h)
{
    size_t step = n > 24 ? n / 24 : 1;
    for (size_t i = 0; i < n; i += step) {
        float keep = var[i];
        var[i] = keep + h;
        double lp = f(ctx);
        var[i] = keep - h;
        double lm = f(ctx);
        var[i] = keep;
        double num = (lp - lm) / (2.0 * h), ana = dvar[i];
        double err = fabs(num - ana) / (2e-3 + 2e-2 * fabs(ana));
        CHECK(err <= 1.0, "%s: d%s[%zu]: finite difference %.6g, backward %.6g", op, what, i, num, ana);
        if (err > worst) {
            worst = err;
            snprintf(worst_op, sizeof worst_op, "%s", op);
        }
    }
}

static double dot(const float *g, const float *y, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)g[i] * y[i];
    return s;
}

/* ---- convolution -------------------------------------------------------- */
typedef struct {
    int cin, n, h, cout, k, s, ho;
    float *x, *w, *b, *y, *g;
    amdim_cpu_op_scratch scr;
} conv_ctx;

static double conv_loss(void *p)
{
    conv_ctx *c = p;
    amdim_cpu_conv2d_forward(c->x, c->cin, c->n, c->h, c->h, c->w, c->b, c->cout, c->k, c->s, c->y, &c->scr);
    return dot(c->g, c->y, (size_t)c->cout * c->n * c->ho * c->ho);
}

static void test_conv(int cin, int cout, int h, int k, int s, int bias)
{
    conv_ctx c = {cin, 3, h, cout, k, s, (h - k) / s + 1, NULL, NULL, NULL, NULL, NULL, {0}};
    size_t nx = (size_t)cin * c.n * h * h, nw = (size_t)cout * cin * k * k, ny = (size_t)cout * c.n * c.ho * c.ho;
    c.x = malloc(nx * 4), c.w = malloc(nw * 4), c.b = bias ? malloc((size_t)cout * 4) : NULL, c.y = malloc(ny * 4),
    c.g = malloc(ny * 4);
    float *dx = malloc(nx * 4), *dw = calloc(nw, 4), *db = calloc((size_t)cout, 4);
    fill(c.x, nx, -1, 1);
    fill(c.w, nw, -0.5f, 0.5f);
    if (bias)
        fill(c.b, (size_t)cout, -0.5f, 0.5f);
    fill(c.g, ny, -1, 1);
    conv_loss(&c);
    amdim_cpu_conv2d_backward(c.x, cin, c.n, h, h, c.w, cout, k, s, c.g, dx, dw, bias ? db : NULL, &c.scr);
    char op[64];
    snprintf(op, sizeof op, "conv k%d s%d %d->%d", k, s, cin, cout);
    check(op, "x", conv_loss, &c, c.x, dx, nx, 1e-2f);
    check(op, "w", conv_loss, &c, c.w, dw, nw, 1e-2f);
    if (bias)
        check(op, "b", conv_loss, &c, c.b, db, (size_t)cout, 1e-2f);
    free(c.x), free(c.w), free(c.b), free(c.y), free(c.g), free(dx), free(dw), free(db);
    amdim_cpu_op_scratch_free(&c.scr);
}

/* ---- avgpool shortcut, relu ---------------------------------------------- */
typedef struct {
    int cin, cout, n, h, k, s, ho;
    float *x, *y, *g;
} pool_ctx;

static double pool_loss(void *p)
{
    pool_ctx *c = p;
    amdim_cpu_avgpool_pad_forward(c->x, c->cin, c->n, c->h, c->h, c->k, c->s, c->cout, c->y);
    return dot(c->g, c->y, (size_t)c->cout * c->n * c->ho * c->ho);
}

static void test_pool(int cin, int cout, int h, int k, int s)
{
    pool_ctx c = {cin, cout, 2, h, k, s, (h - k) / s + 1, NULL, NULL, NULL};
    size_t nx = (size_t)cin * 2 * h * h, ny = (size_t)cout * 2 * c.ho * c.ho;
    c.x = malloc(nx * 4), c.y = malloc(ny * 4), c.g = malloc(ny * 4);
    float *dx = calloc(nx, 4);
    fill(c.x, nx, -1, 1);
    fill(c.g, ny, -1, 1);
    pool_loss(&c);
    amdim_cpu_avgpool_pad_backward(c.g, cin, 2, h, h, k, s, dx);
    check("avgpool+channel pad", "x", pool_loss, &c, c.x, dx, nx, 1e-2f);
    free(c.x), free(c.y), free(c.g), free(dx);
}

typedef struct {
    float *x, *y, *g;
    size_t n;
} relu_ctx;

static double relu_loss(void *p)
{
    relu_ctx *c = p;
    memcpy(c->y, c->x, c->n * 4);
    amdim_cpu_relu_forward(c->y, c->n);
    return dot(c->g, c->y, c->n);
}

/* ---- batchnorm ------------------------------------------------------------ */
typedef struct {
    int c, n1d;
    size_t count;
    float *x, *y, *g, *mean, *istd, rm[16], rv[16], nbt;
    amdim_cpu_bn_params p;
    amdim_cpu_op_scratch scr;
} bn_ctx;

static double bn_loss(void *p)
{
    bn_ctx *b = p;
    if (b->n1d)
        amdim_cpu_batchnorm1d_forward_train(b->x, (int)b->count, b->c, &b->p, b->y, b->mean, b->istd, &b->scr);
    else
        amdim_cpu_batchnorm_forward_train(b->x, b->c, b->count, &b->p, b->y, b->mean, b->istd);
    return dot(b->g, b->y, (size_t)b->c * b->count);
}

static void test_bn(int one_d)
{
    bn_ctx b = {0};
    b.c = 5;
    b.n1d = one_d;
    b.count = one_d ? 6 : 18;
    size_t n = (size_t)b.c * b.count;
    b.x = malloc(n * 4), b.y = malloc(n * 4), b.g = malloc(n * 4), b.mean = malloc(5 * 4), b.istd = malloc(5 * 4);
    float gamma[5], beta[5], dgamma[5] = {0}, dbeta[5] = {0};
    fill(gamma, 5, 0.5f, 1.5f);
    fill(beta, 5, -0.5f, 0.5f);
    b.p = (amdim_cpu_bn_params){gamma, beta, b.rm, b.rv, &b.nbt, dgamma, dbeta, NULL};
    fill(b.x, n, -2, 2);
    fill(b.g, n, -1, 1);
    float *dx = malloc(n * 4);
    bn_loss(&b);
    if (one_d)
        amdim_cpu_batchnorm1d_backward(b.x, (int)b.count, b.c, &b.p, b.mean, b.istd, b.g, dx, &b.scr);
    else
        amdim_cpu_batchnorm_backward(b.x, b.c, b.count, &b.p, b.mean, b.istd, b.g, dx);
    const char *op = one_d ? "batchnorm1d" : "batchnorm2d";
    check(op, "x", bn_loss, &b, b.x, dx, n, 1e-2f);
    check(op, "gamma", bn_loss, &b, gamma, dgamma, 5, 1e-2f);
    check(op, "beta", bn_loss, &b, beta, dbeta, 5, 1e-2f);
    /* running statistics: momentum 0.1, unbiased variance */
    float rm[5] = {0}, rv[5] = {1, 1, 1, 1, 1}, nbt = 0, y2[5 * 18];
    amdim_cpu_bn_params q = {gamma, beta, rm, rv, &nbt, dgamma, dbeta, NULL};
    float m2[5], s2[5];
    if (one_d)
        amdim_cpu_batchnorm1d_forward_train(b.x, (int)b.count, 5, &q, y2, m2, s2, &b.scr);
    else
        amdim_cpu_batchnorm_forward_train(b.x, 5, b.count, &q, y2, m2, s2);
    for (int c = 0; c < 5; c++) {
        double mu = 0, var = 0;
        for (size_t i = 0; i < b.count; i++)
            mu += one_d ? b.x[i * 5 + c] : b.x[c * b.count + i];
        mu /= b.count;
        for (size_t i = 0; i < b.count; i++) {
            double d = (one_d ? b.x[i * 5 + c] : b.x[c * b.count + i]) - mu;
            var += d * d;
        }
        CHECK(fabs(rm[c] - 0.1 * mu) < 1e-5 && fabs(rv[c] - (0.9 + 0.1 * var / (b.count - 1))) < 1e-5,
              "%s running stats channel %d", op, c);
    }
    CHECK(nbt == 1, "num_batches_tracked %f", nbt);
    free(b.x), free(b.y), free(b.g), free(b.mean), free(b.istd), free(dx);
    amdim_cpu_op_scratch_free(&b.scr);
}

/* ---- linear, dropout, classifier loss ----------------------------------- */
typedef struct {
    int n, in, out;
    float *x, *w, *b, *y, *g;
} lin_ctx;

static double lin_loss(void *p)
{
    lin_ctx *c = p;
    amdim_cpu_linear_forward(c->x, c->n, c->in, c->w, c->b, c->out, c->y);
    return dot(c->g, c->y, (size_t)c->n * c->out);
}

typedef struct {
    float *logits;
    int32_t *labels;
    int n, k;
} cls_ctx;

static double cls_loss(void *p)
{
    cls_ctx *c = p;
    return amdim_cpu_classifier_loss(c->logits, c->n, c->k, c->labels, NULL, 1.0f, NULL, NULL);
}

/* ---- the objective -------------------------------------------------------- */
typedef struct {
    int C, B, L, obj;
    float *src, *tgt;
    const double *w; /* per-positive weights (NCE) or NULL */
    amdim_cpu_nce_scratch s;
} nce_ctx;

static double nce_loss(void *p)
{
    nce_ctx *c = p;
    double reg, l;
    REQUIRE(amdim_cpu_nce_direction(c->src, c->tgt, c->C, c->B, c->L, 2.5f, c->obj, 0.7f, 0.3f, c->w, NULL, &l, &reg, NULL,
                              NULL, &c->s) == 0,
            "nce scratch");
    return 0.7 * l + 0.3 * reg;
}

/* weighted: random per-positive weights (the mixtures' q); also checks the
 * log-softmax output against the loss, and weights of 1 against NULL bit
 * for bit. */
static void test_nce(int obj, int weighted)
{
    nce_ctx c = {8, 3, 4, obj, NULL, NULL, NULL, {0}};
    size_t ns = (size_t)c.C * c.B, nt = ns * c.L, BL = (size_t)c.B * c.L;
    c.src = malloc(ns * 4), c.tgt = malloc(nt * 4);
    double w[12], ones[12], lsm[12];
    for (size_t k = 0; k < BL; k++) {
        w[k] = amdim_rng_uniform(&rng, 0.05f, 1);
        ones[k] = 1;
    }
    c.w = weighted ? w : NULL;
    /* large enough scores that the tanh clip (tclip 2.5 here) matters */
    fill(c.src, ns, -2, 2);
    fill(c.tgt, nt, -2, 2);
    float *ds = calloc(ns, 4), *dt = calloc(nt, 4);
    double reg, loss;
    REQUIRE(amdim_cpu_nce_direction(c.src, c.tgt, c.C, c.B, c.L, 2.5f, obj, 0.7f, 0.3f, c.w, weighted ? lsm : NULL, &loss,
                              &reg, ds, dt, &c.s) == 0,
            "nce scratch");
    static const char *names[] = {"objective nce", "objective jsd", "objective dv"};
    check(weighted ? "objective nce, weighted" : names[obj], "src", nce_loss, &c, c.src, ds, ns, 1e-2f);
    check(weighted ? "objective nce, weighted" : names[obj], "tgt", nce_loss, &c, c.tgt, dt, nt, 1e-2f);
    if (weighted) {
        double sum = 0;
        for (size_t k = 0; k < BL; k++)
            sum -= w[k] * lsm[k] / (double)BL;
        CHECK(fabs(sum - loss) < 1e-12 * (1 + fabs(loss)), "weighted nce: -mean w lsm %.12g, loss %.12g", sum, loss);
        /* weights of 1 are the plain objective, bit for bit */
        float *ds0 = calloc(ns, 4), *dt0 = calloc(nt, 4), *ds1 = calloc(ns, 4), *dt1 = calloc(nt, 4);
        double l0, r0, l1, r1;
        amdim_cpu_nce_direction(c.src, c.tgt, c.C, c.B, c.L, 2.5f, obj, 0.7f, 0.3f, NULL, NULL, &l0, &r0, ds0, dt0, &c.s);
        amdim_cpu_nce_direction(c.src, c.tgt, c.C, c.B, c.L, 2.5f, obj, 0.7f, 0.3f, ones, lsm, &l1, &r1, ds1, dt1, &c.s);
        CHECK(l0 == l1 && r0 == r1 && memcmp(ds0, ds1, ns * 4) == 0 && memcmp(dt0, dt1, nt * 4) == 0,
              "nce with weights 1 differs from the plain objective");
        free(ds0), free(dt0), free(ds1), free(dt1);
    }
    free(c.src), free(c.tgt), free(ds), free(dt);
    amdim_cpu_nce_scratch_free(&c.s);
}

/* ---- the mixture function ------------------------------------------------------ */
typedef struct {
    int R, B, K;
    float *f, *w1, *b1, *w2, *b2, *h, *mix, *g;
} mix_ctx;

static double mix_loss(void *p)
{
    mix_ctx *c = p;
    amdim_cpu_mixture_forward(c->f, c->R, c->B, c->K, c->w1, c->b1, c->w2, c->b2, c->h, c->mix);
    return dot(c->g, c->mix, (size_t)c->K * c->R * c->B);
}

static void test_mixture(void)
{
    mix_ctx c = {5, 3, 4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    size_t nf = (size_t)c.R * c.B, nw2 = (size_t)c.K * c.R * c.R, nm = (size_t)c.K * nf;
    c.f = malloc(nf * 4), c.w1 = malloc((size_t)c.R * c.R * 4), c.b1 = malloc((size_t)c.R * 4), c.w2 = malloc(nw2 * 4);
    c.b2 = malloc((size_t)c.K * c.R * 4), c.h = malloc(nf * 4), c.mix = malloc(nm * 4), c.g = malloc(nm * 4);
    fill(c.f, nf, -1, 1), fill(c.w1, (size_t)c.R * c.R, -1, 1), fill(c.b1, (size_t)c.R, -0.5f, 0.5f);
    fill(c.w2, nw2, -1, 1), fill(c.b2, (size_t)c.K * c.R, -0.5f, 0.5f), fill(c.g, nm, -1, 1);
    float *df = calloc(nf, 4), *dw1 = calloc((size_t)c.R * c.R, 4), *db1 = calloc((size_t)c.R, 4);
    float *dw2 = calloc(nw2, 4), *db2 = calloc((size_t)c.K * c.R, 4);
    amdim_cpu_op_scratch scr = {0};
    mix_loss(&c);
    REQUIRE(amdim_cpu_mixture_backward(c.f, c.h, c.R, c.B, c.K, c.w1, c.w2, c.g, df, dw1, db1, dw2, db2, &scr) == 0, "scratch");
    check("mixture", "f", mix_loss, &c, c.f, df, nf, 1e-2f);
    check("mixture", "fc1.weight", mix_loss, &c, c.w1, dw1, (size_t)c.R * c.R, 1e-2f);
    check("mixture", "fc1.bias", mix_loss, &c, c.b1, db1, (size_t)c.R, 1e-2f);
    check("mixture", "fc2.weight", mix_loss, &c, c.w2, dw2, nw2, 1e-2f);
    check("mixture", "fc2.bias", mix_loss, &c, c.b2, db2, (size_t)c.K * c.R, 1e-2f);
    free(c.f), free(c.w1), free(c.b1), free(c.w2), free(c.b2), free(c.h), free(c.mix), free(c.g);
    free(df), free(dw1), free(db1), free(dw2), free(db2);
    amdim_cpu_op_scratch_free(&scr);
}

/* The assignment: a softmax over components at temperature tau, and its entropy. */
static void test_mix_assign(void)
{
    double s[3 * 2] = {-1.0, 9, -2.5, 9, -0.5, 9}, q[6], tau = 1.7; /* stride 2: the 9s are another location */
    double h = amdim_mix_assign(s, 3, 2, tau, q), z = 0, hh = 0;
    for (int j = 0; j < 3; j++)
        z += exp(tau * s[2 * j]);
    for (int j = 0; j < 3; j++) {
        double qj = exp(tau * s[2 * j]) / z;
        CHECK(fabs(q[2 * j] - qj) < 1e-15, "q[%d] %.17g vs %.17g", j, q[2 * j], qj);
        hh -= qj * log(qj);
    }
    CHECK(fabs(h - hh) < 1e-14, "entropy %.17g vs %.17g", h, hh);
}

int main(void)
{
    amdim_rng_init(&rng, 1, 2, 3);
    test_conv(3, 4, 7, 3, 1, 1);
    test_conv(4, 6, 8, 4, 2, 0);
    test_conv(5, 3, 4, 1, 1, 1);
    test_conv(3, 2, 9, 5, 2, 1);
    test_pool(3, 5, 8, 4, 2);
    test_pool(4, 4, 5, 3, 1);
    test_pool(2, 3, 4, 1, 1);
    relu_ctx r = {malloc(40 * 4), malloc(40 * 4), malloc(40 * 4), 40};
    fill(r.x, 40, -1, 1);
    fill(r.g, 40, -1, 1);
    float dr[40];
    relu_loss(&r);
    memcpy(dr, r.g, sizeof dr);
    amdim_cpu_relu_backward(r.y, dr, 40);
    check("relu", "x", relu_loss, &r, r.x, dr, 40, 1e-2f);
    free(r.x), free(r.y), free(r.g);
    test_bn(0);
    test_bn(1);
    lin_ctx l = {4, 6, 3, malloc(24 * 4), malloc(18 * 4), malloc(3 * 4), malloc(12 * 4), malloc(12 * 4)};
    fill(l.x, 24, -1, 1), fill(l.w, 18, -1, 1), fill(l.b, 3, -1, 1), fill(l.g, 12, -1, 1);
    float ldx[24], ldw[18] = {0}, ldb[3] = {0};
    lin_loss(&l);
    amdim_cpu_linear_backward(l.x, 4, 6, l.w, 3, l.g, ldx, ldw, ldb);
    check("linear", "x", lin_loss, &l, l.x, ldx, 24, 1e-2f);
    check("linear", "w", lin_loss, &l, l.w, ldw, 18, 1e-2f);
    check("linear", "b", lin_loss, &l, l.b, ldb, 3, 1e-2f);
    free(l.x), free(l.w), free(l.b), free(l.y), free(l.g);
    /* dropout is linear in x: its backward is the same mask */
    float dx_in[8] = {1, 2, 3, 4, 5, 6, 7, 8}, mask[8] = {1, 0, 1, 1, 0, 1, 1, 1}, dy[8], out[8];
    amdim_cpu_dropout_forward(dx_in, mask, 0.2f, 8, out);
    amdim_cpu_dropout_backward(dx_in, mask, 0.2f, 8, dy);
    int ok = 1;
    for (int i = 0; i < 8; i++)
        ok &= fabsf(out[i] - dx_in[i] * mask[i] / 0.8f) < 1e-6f && fabsf(dy[i] - out[i]) < 1e-6f;
    CHECK(ok, "dropout");
    /* classifier loss: tanh clip at 10 (logits up to 30 reach it), label -1 ignored */
    float logits[4 * 5];
    int32_t labels[4] = {2, -1, 0, 4};
    fill(logits, 20, -30, 30);
    float dl[20];
    cls_ctx cc = {logits, labels, 4, 5};
    int corr, lab;
    amdim_cpu_classifier_loss(logits, 4, 5, labels, dl, 1.0f, &corr, &lab);
    CHECK(lab == 3, "labelled rows %d", lab);
    check("classifier loss", "logits", cls_loss, &cc, logits, dl, 20, 1e-2f);
    for (int obj = 0; obj < 3; obj++)
        test_nce(obj, 0);
    test_nce(AMDIM_OBJECTIVE_NCE, 1);
    test_mixture();
    test_mix_assign();
    printf("largest finite-difference error: %.3f x tolerance (%s)\n", worst, worst_op);
    return test_finish("test_trainer_ops");
}
