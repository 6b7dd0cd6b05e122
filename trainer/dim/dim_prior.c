/* Prior matching (docs/dim.md §6): the discriminator D on q = sigmoid(z)
 * and on prior samples p, its loss mean sp(-D(p)) + mean sp(D(q)) + gp with
 * the gradient penalty in closed form, and the encoder's generator term
 * mean sp(-D(q)). Rows are examples: q is rows 0..N-1 of D's buffers, p
 * rows N..2N-1. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_common.h"
#include "amdim_philox.h"
#include "dim_internal.h"

static float *W(const amdim_dim *d, float *block, int t) { return block + d->tab[t].t.offset; }
static double softplus(double x) { return (x > 0 ? x : 0) + log1p(exp(-fabs(x))); }
static double sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }

int amdim_dim_prior_alloc(amdim_dim *d)
{
    amdim_dim_disc *D = &d->disc;
    size_t n2 = 2 * (size_t)d->batch;
    float **bufs[] = {&D->x,  &D->a1, &D->a2,  &D->o,   &D->do_, &D->da2,      &D->da1,
                      &D->dq, &D->gv, &D->ga1, &D->ga2, &D->gt,  &D->scratch_w};
    size_t sizes[] = {n2 * D->in,
                      n2 * D->h1,
                      n2 * D->h2,
                      n2,
                      n2,
                      n2 * D->h2,
                      n2 * D->h1,
                      (size_t)d->batch * D->in,
                      (size_t)D->in,
                      (size_t)D->h1,
                      (size_t)D->h2,
                      (size_t)D->h1,
                      (size_t)D->h1 * D->in + (size_t)D->h2 * D->h1 + D->h2 + D->h1 + 1};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (!(*bufs[i] = calloc(sizes[i], sizeof(float))))
            return AMDIM_E_NOMEM;
    return AMDIM_OK;
}

void amdim_dim_prior_free(amdim_dim *d)
{
    amdim_dim_disc *D = &d->disc;
    float *p[] = {D->x, D->a1, D->a2, D->o, D->do_, D->da2, D->da1, D->dq, D->gv, D->ga1, D->ga2, D->gt, D->scratch_w};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        free(p[i]);
}

void amdim_dim_draw_prior(const amdim_dim *d, uint64_t seed, uint64_t update, float *prior)
{
    amdim_rng rng;
    amdim_rng_init(&rng, seed, AMDIM_STREAM_STEP, update);
    for (size_t k = 0; k < (size_t)d->batch * d->cfg.z_units; k++)
        prior[k] = amdim_philox_unit(amdim_rng_u32(&rng));
}

/* a1 = ReLU(x W1^T + b1), a2 = ReLU(a1 W2^T + b2), o = a2 w3^T + b3 over the 2N rows. */
static void disc_forward(amdim_dim *d, float *w)
{
    amdim_dim_disc *D = &d->disc;
    int n2 = 2 * d->batch;
    amdim_cpu_linear_forward(D->x, n2, D->in, W(d, w, D->w1), W(d, w, D->b1), D->h1, D->a1);
    amdim_cpu_relu_forward(D->a1, (size_t)n2 * D->h1);
    amdim_cpu_linear_forward(D->a1, n2, D->h1, W(d, w, D->w2), W(d, w, D->b2), D->h2, D->a2);
    amdim_cpu_relu_forward(D->a2, (size_t)n2 * D->h2);
    amdim_cpu_linear_forward(D->a2, n2, D->h2, W(d, w, D->w3), W(d, w, D->b3), 1, D->o);
}

/* Backward from do_ over the first `rows` rows: parameter gradients into
 * g's D tensors (or, g NULL, into scratch: the generator pass, whose D
 * gradients are dropped, D5); dx (rows, in) gets the input gradient if wanted. */
static void disc_backward(amdim_dim *d, float *w, float *g, int rows, float *dx)
{
    amdim_dim_disc *D = &d->disc;
    float *s = D->scratch_w;
    float *dw3 = g ? W(d, g, D->w3) : s, *db3 = g ? W(d, g, D->b3) : NULL;
    float *dw2 = g ? W(d, g, D->w2) : s, *db2 = g ? W(d, g, D->b2) : NULL;
    float *dw1 = g ? W(d, g, D->w1) : s, *db1 = g ? W(d, g, D->b1) : NULL;
    amdim_cpu_linear_backward(D->a2, rows, D->h2, W(d, w, D->w3), 1, D->do_, D->da2, dw3, db3);
    amdim_cpu_relu_backward(D->a2, D->da2, (size_t)rows * D->h2);
    amdim_cpu_linear_backward(D->a1, rows, D->h1, W(d, w, D->w2), D->h2, D->da2, D->da1, dw2, db2);
    amdim_cpu_relu_backward(D->a1, D->da1, (size_t)rows * D->h1);
    if (g || dx)
        amdim_cpu_linear_backward(D->x, rows, D->in, W(d, w, D->w1), D->h1, D->da1, dx, dw1, db1);
}

/* The penalty of one row r (§6.3): v = W1^T (m1 . W2^T (m2 . w3)) is
 * d D(x_r) / d x_r for fixed ReLU masks m1, m2; returns ||v||^2 and adds
 * coef * d ||v||^2 / d (W1, W2, w3) to g (the biases only move the masks,
 * so they get no gradient). */
static double gp_row(amdim_dim *d, float *w, float *g, int r, double coef)
{
    amdim_dim_disc *D = &d->disc;
    const float *a1 = D->a1 + (size_t)r * D->h1, *a2 = D->a2 + (size_t)r * D->h2;
    const float *w1 = W(d, w, D->w1), *w2 = W(d, w, D->w2), *w3 = W(d, w, D->w3);
    for (int i = 0; i < D->h2; i++)
        D->ga2[i] = a2[i] > 0 ? w3[i] : 0;
    cblas_sgemv(CblasRowMajor, CblasTrans, D->h2, D->h1, 1.0f, w2, D->h1, D->ga2, 1, 0.0f, D->gt, 1);
    for (int j = 0; j < D->h1; j++)
        D->ga1[j] = a1[j] > 0 ? D->gt[j] : 0;
    cblas_sgemv(CblasRowMajor, CblasTrans, D->h1, D->in, 1.0f, w1, D->in, D->ga1, 1, 0.0f, D->gv, 1);
    double sq = 0;
    for (int k = 0; k < D->in; k++)
        sq += (double)D->gv[k] * D->gv[k];
    /* d ||v||^2 / d v = 2 v; back through v = W1^T ga1, ga1 = m1 . W2^T ga2, ga2 = m2 . w3 */
    float c2 = (float)(2 * coef);
    cblas_sger(CblasRowMajor, D->h1, D->in, c2, D->ga1, 1, D->gv, 1, W(d, g, D->w1), D->in);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, D->h1, D->in, c2, w1, D->in, D->gv, 1, 0.0f, D->gt, 1);
    for (int j = 0; j < D->h1; j++)
        D->gt[j] = a1[j] > 0 ? D->gt[j] : 0; /* e1 */
    cblas_sger(CblasRowMajor, D->h2, D->h1, 1.0f, D->ga2, 1, D->gt, 1, W(d, g, D->w2), D->h1);
    cblas_sgemv(CblasRowMajor, CblasNoTrans, D->h2, D->h1, 1.0f, w2, D->h1, D->gt, 1, 0.0f, D->ga2, 1);
    float *dw3 = W(d, g, D->w3);
    for (int i = 0; i < D->h2; i++)
        dw3[i] += a2[i] > 0 ? D->ga2[i] : 0;
    return sq;
}

/* 0.5 (gp(q) + gp(p)), gp(X) = (1 / N) sum over the penalised rows of
 * ||d D(x_r) / d x_r||^2: the last row only (the authors', D4) or all. */
static double penalty(amdim_dim *d, float *w, float *g)
{
    int n = d->batch, first = d->cfg.gp_all ? 0 : n - 1;
    double coef = 0.5 / n, gp = 0;
    for (int half = 0; half < 2; half++)
        for (int r = first; r < n; r++)
            gp += coef * gp_row(d, w, g, half * n + r, coef);
    return gp;
}

int amdim_dim_prior_term(amdim_dim *d, float *w, float *g, const float *z, const float *prior, float *dz,
                         amdim_dim_losses *losses)
{
    amdim_dim_disc *D = &d->disc;
    int n = d->batch;
    size_t nz = (size_t)n * D->in;
    for (size_t k = 0; k < nz; k++)
        D->x[k] = (float)sigmoid(z[k]);
    memcpy(D->x + nz, prior, nz * sizeof *prior);
    disc_forward(d, w);
    /* the generator term, gamma mean sp(-D(q)): its gradient reaches z only */
    double gen = 0, gan = 0, gamma = d->cfg.gamma;
    for (int i = 0; i < n; i++) {
        gen += softplus(-D->o[i]) / n;
        D->do_[i] = (float)(-gamma * sigmoid(-D->o[i]) / n);
    }
    disc_backward(d, w, NULL, n, D->dq);
    for (size_t k = 0; k < nz; k++)
        dz[k] += D->dq[k] * D->x[k] * (1 - D->x[k]);
    /* D's loss on q (detached) and p */
    for (int i = 0; i < n; i++) {
        gan += softplus(D->o[i]) / n + softplus(-D->o[n + i]) / n;
        D->do_[i] = (float)(sigmoid(D->o[i]) / n);
        D->do_[n + i] = (float)(-sigmoid(-D->o[n + i]) / n);
    }
    disc_backward(d, w, g, 2 * n, NULL);
    losses->prior = gen;
    losses->gp = penalty(d, w, g);
    losses->disc = gan + losses->gp;
    return AMDIM_OK;
}
