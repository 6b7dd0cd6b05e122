/* trainer/dim's own ops against finite differences and closed forms: zero
 * padding (its backward is its adjoint), LayerNorm over channels (central
 * differences of <r, y> along x, gamma and beta), and the JSD / NCE / DV
 * estimators (central differences of the loss along every score, and
 * their values at all-zero scores, docs/dim.md §5); the configuration
 * errors of amdim_dim_create, the prior's draws and a step that lacks them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_common.h"
#include "amdim_dim.h"
#include "dim_ops_internal.h"
#include "testutil.h"

static unsigned rng_state = 12345;
static float frand(void) /* U(-1, 1) */
{
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) * (2.0 / 16777216.0) - 1.0);
}

static void test_zero_pad(void)
{
    enum { C = 3, N = 2, H = 5, W = 4, P = 2, HP = H + 2 * P, WP = W + 2 * P };
    float x[C * N * H * W], y[C * N * HP * WP], r[C * N * HP * WP], dx[C * N * H * W];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        x[i] = frand();
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
        r[i] = frand();
    amdim_dim_zero_pad_forward(x, C, N, H, W, P, y);
    amdim_dim_zero_pad_backward(r, C, N, H, W, P, dx);
    double a = 0, b = 0, border = 0;
    for (size_t i = 0; i < sizeof y / sizeof y[0]; i++)
        a += (double)y[i] * r[i];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        b += (double)x[i] * dx[i];
    for (int img = 0; img < C * N; img++)
        for (int i = 0; i < HP; i++)
            for (int j = 0; j < WP; j++) {
                int inside = i >= P && i < P + H && j >= P && j < P + W;
                float v = y[(img * HP + i) * WP + j];
                if (!inside)
                    border = fmax(border, fabs(v));
                else
                    CHECK(v == x[(img * H + i - P) * W + j - P], "pad moved x at (%d, %d, %d)", img, i, j);
            }
    CHECK(border == 0, "the border is not zero (%g)", border);
    CHECK(fabs(a - b) <= 1e-12 * (fabs(a) + 1), "<pad x, r> = %.12g, <x, pad^T r> = %.12g", a, b);
}

/* <r, LN(x)> for the finite differences */
static double ln_objective(const float *x, int c, size_t cols, const float *gm, const float *bt, const float *r)
{
    float *y = malloc(c * cols * sizeof *y), *m = malloc(cols * sizeof *m), *s = malloc(cols * sizeof *s);
    amdim_dim_layernorm_forward(x, c, cols, gm, bt, y, m, s);
    double acc = 0;
    for (size_t i = 0; i < c * cols; i++)
        acc += (double)y[i] * r[i];
    free(y), free(m), free(s);
    return acc;
}

/* Central difference along coordinate k of v (float; the step actually taken). */
static double central(float *v, size_t k, double h, const float *x, int c, size_t cols, const float *gm,
                      const float *bt, const float *r)
{
    float keep = v[k], up = (float)(keep + h), dn = (float)(keep - h);
    v[k] = up;
    double fp = ln_objective(x, c, cols, gm, bt, r);
    v[k] = dn;
    double fm = ln_objective(x, c, cols, gm, bt, r);
    v[k] = keep;
    return (fp - fm) / ((double)up - dn);
}

static void test_layernorm(void)
{
    enum { C = 7, COLS = 5 };
    float x[C * COLS], gm[C], bt[C], r[C * COLS], y[C * COLS], mean[COLS], rstd[COLS], dx[C * COLS];
    float dg[C] = {0}, db[C] = {0};
    double scratch[2 * COLS];
    for (int i = 0; i < C * COLS; i++)
        x[i] = 2 * frand() + 0.5f, r[i] = frand();
    for (int i = 0; i < C; i++)
        gm[i] = 1 + 0.5f * frand(), bt[i] = 0.3f * frand();
    amdim_dim_layernorm_forward(x, C, COLS, gm, bt, y, mean, rstd);
    for (int j = 0; j < COLS; j++) { /* (y - beta) / gamma has mean 0 and variance 1 per column */
        double m = 0, v = 0;
        for (int c = 0; c < C; c++)
            m += (y[c * COLS + j] - bt[c]) / gm[c];
        for (int c = 0; c < C; c++) {
            double t = (y[c * COLS + j] - bt[c]) / gm[c] - m / C;
            v += t * t;
        }
        CHECK(fabs(m / C) < 1e-6 && fabs(v / C - 1) < 1e-4, "column %d: normalised mean %g, var %g", j, m / C, v / C);
    }
    amdim_dim_layernorm_backward(x, C, COLS, gm, mean, rstd, r, dx, dg, db, scratch);
    double worst = 0;
    for (int k = 0; k < C * COLS; k++)
        worst = fmax(worst, fabs(central(x, k, 1e-2, x, C, COLS, gm, bt, r) - dx[k]));
    for (int k = 0; k < C; k++) {
        worst = fmax(worst, fabs(central(gm, k, 1e-2, x, C, COLS, gm, bt, r) - dg[k]));
        worst = fmax(worst, fabs(central(bt, k, 1e-2, x, C, COLS, gm, bt, r) - db[k]));
    }
    /* tolerance ~13x the measured 3.8e-5 (a float32 forward, step 1e-2) */
    printf("layernorm: worst |analytic - central difference| %.2g\n", worst);
    CHECK(worst < 5e-4, "LayerNorm backward vs central differences: %g", worst);
}

static void test_estimator(int est, int n, int l, float scale)
{
    size_t count = (size_t)n * n * l;
    float *u = malloc(count * sizeof *u), *du = malloc(count * sizeof *du);
    REQUIRE(u && du, "out of memory");
    for (size_t i = 0; i < count; i++)
        u[i] = scale * frand();
    for (int i = 0; i < n; i++) /* lift the positives a little: a realistic, non-symmetric point */
        for (int k = 0; k < l; k++)
            u[((size_t)i * n + i) * l + k] += scale / 2;
    double loss = amdim_dim_estimator_loss(u, n, l, est, du, 0.5);
    CHECK(isfinite(loss), "estimator %d: loss %g", est, loss);
    double worst = 0, gmax = 0;
    for (size_t k = 0; k < count; k++) {
        float keep = u[k], up = keep + 1e-2f, dn = keep - 1e-2f;
        u[k] = up;
        double fp = amdim_dim_estimator_loss(u, n, l, est, NULL, 1);
        u[k] = dn;
        double fm = amdim_dim_estimator_loss(u, n, l, est, NULL, 1);
        u[k] = keep;
        worst = fmax(worst, fabs(0.5 * (fp - fm) / ((double)up - dn) - du[k]));
        gmax = fmax(gmax, fabs(du[k]));
    }
    /* tolerance ~20x the measured worst, 1.4e-5 of max |grad| (float32 scores, step 1e-2) */
    printf("estimator %d on (%d, %d, %d) scores x %g: worst |analytic - central| %.2g of max |grad| %.2g\n", est, n, n,
           l, scale, worst, gmax);
    CHECK(worst <= 3e-4 * gmax, "estimator %d: gradient error %g (max %g)", est, worst, gmax);
    memset(u, 0, count * sizeof *u);
    double z = amdim_dim_estimator_loss(u, n, l, est, NULL, 1);
    double want = est == AMDIM_DIM_NCE ? log(1 + (double)(n - 1) * l + l * exp(AMDIM_DIM_NCE_MASK)) : 0;
    CHECK(fabs(z - want) < 1e-12, "estimator %d at zero scores: %.15g, need %.15g", est, z, want);
    free(u), free(du);
}

/* amdim_dim_create refuses what it cannot build, with a status and a message. */
static void test_config_errors(void)
{
    static const struct {
        amdim_dim_config cfg;
        int batch, want;
    } cases[] = {
        {{.size = 30, .beta = 1}, 4, AMDIM_E_INVALID},
        {{.size = 32, .beta = 1}, 1, AMDIM_E_INVALID},
        {{.size = 32, .alpha = 0, .beta = 0}, 4, AMDIM_E_INVALID},
        {{.size = 32, .alpha = -1, .beta = 1}, 4, AMDIM_E_INVALID},
        {{.size = 32, .beta = 1, .estimator = 3}, 4, AMDIM_E_INVALID},
        {{.size = 32, .beta = 1, .mi_units = 64}, 4, AMDIM_E_UNSUPPORTED},
        {{.size = 28, .alpha = 1, .beta = 0, .widths = {4, 8}, .fc_units = 8, .mi_units = 16}, 2, AMDIM_OK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        amdim_dim *d = (amdim_dim *)&cases[i];
        char err[256] = "";
        int rc = amdim_dim_create(&cases[i].cfg, cases[i].batch, &d, err, sizeof err);
        CHECK(rc == cases[i].want, "case %zu: status %d, want %d (%s)", i, rc, cases[i].want, err);
        CHECK(rc ? d == NULL && err[0] : d != NULL, "case %zu: handle %p, message \"%s\"", i, (void *)d, err);
        amdim_dim_destroy(d);
    }
}

/* The prior's draws (U[0, 1), deterministic in (seed, update)), and a step
 * with gamma > 0 that is given none. */
static void test_prior_draws(void)
{
    amdim_dim_config cfg = {
        .size = 28, .beta = 1, .gamma = 0.1f, .widths = {4, 8}, .fc_units = 8, .mi_units = 16, .disc_hidden = {8, 4}};
    amdim_dim *d;
    char err[256];
    REQUIRE(amdim_dim_create(&cfg, 3, &d, err, sizeof err) == 0, "%s", err);
    enum { K = 3 * 64 };
    float a[K], b[K], c[K], x[3 * 28 * 28];
    amdim_dim_draw_prior(d, 7, 5, a);
    amdim_dim_draw_prior(d, 7, 5, b);
    amdim_dim_draw_prior(d, 7, 6, c);
    double lo = 1, hi = 0, mean = 0;
    for (int k = 0; k < K; k++)
        lo = fmin(lo, a[k]), hi = fmax(hi, a[k]), mean += a[k] / K;
    CHECK(!memcmp(a, b, sizeof a) && memcmp(a, c, sizeof a), "prior draws: not a function of (seed, update)");
    CHECK(lo >= 0 && hi < 1 && fabs(mean - 0.5) < 0.1, "prior draws: range [%g, %g], mean %g", lo, hi, mean);
    float *w = malloc(amdim_dim_block_floats(d) * sizeof *w), *g = malloc(amdim_dim_block_floats(d) * sizeof *g);
    REQUIRE(w && g, "out of memory");
    amdim_dim_init_weights(d, w);
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        x[i] = frand();
    amdim_dim_losses l;
    CHECK(amdim_dim_step(d, w, x, NULL, g, &l) == AMDIM_E_INVALID && strstr(amdim_dim_error(d), "prior"),
          "a step without prior samples: %s", amdim_dim_error(d));
    CHECK(amdim_dim_step(d, w, x, a, g, &l) == 0 && isfinite(l.encoder) && l.disc > 0 && l.gp >= 0,
          "a step from the initialisation: encoder %g, D %g, gp %g (%s)", l.encoder, l.disc, l.gp, amdim_dim_error(d));
    free(w), free(g);
    amdim_dim_destroy(d);
}

int main(void)
{
    test_config_errors();
    test_prior_draws();
    test_zero_pad();
    test_layernorm();
    for (int est = AMDIM_DIM_JSD; est <= AMDIM_DIM_DV; est++) {
        test_estimator(est, 4, 6, 2.0f);
        test_estimator(est, 3, 1, 5.0f); /* L = 1: DIM(G)'s shape */
    }
    CHECK(isnan(amdim_dim_estimator_loss(NULL, 2, 1, 7, NULL, 1)), "an unknown estimator gives NaN");
    return test_finish("test_dim_ops");
}
