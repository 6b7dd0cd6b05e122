/* One DIM training step on the CPU (amdim_dim_step): the encoder
 * (docs/dim.md §2), the MI networks (§3), the scores (§4), the estimator
 * (§5) and prior matching (§6, dim_prior.c), forward then backward. Everything runs on
 * trainer/model/cpu's ops and BLAS; maps are CNHW, features row-major. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_common.h"
#include "dim_internal.h"
#include "dim_ops_internal.h"

/* ---- buffers ---------------------------------------------------------- */

static float *falloc(size_t n, int *failed)
{
    float *p = calloc(n ? n : 1, sizeof *p);
    *failed |= !p;
    return p;
}

static void alloc_stack(amdim_dim_stack *st, size_t n, int want_dx, int *f)
{
    size_t maxpad = 0, maxin = 0;
    for (int i = 0; i < st->nconv; i++) {
        amdim_dim_conv *cv = &st->conv[i];
        size_t hp = (size_t)cv->hin + 2 * cv->p, pad = (size_t)cv->cin * n * hp * hp;
        size_t in = (size_t)cv->cin * n * cv->hin * cv->hin, out = (size_t)cv->cout * n * cv->hout * cv->hout;
        maxpad = pad > maxpad ? pad : maxpad;
        maxin = in > maxin ? in : maxin;
        cv->xpad = falloc(pad, f), cv->pre = falloc(out, f), cv->act = falloc(out, f), cv->dact = falloc(out, f);
        cv->mean = falloc((size_t)cv->cout, f), cv->istd = falloc((size_t)cv->cout, f);
    }
    st->dpad = falloc(maxpad, f), st->dcrop = falloc(maxin, f);
    st->dx = want_dx ? falloc((size_t)st->conv[0].cin * n * st->conv[0].hin * st->conv[0].hin, f) : NULL;
    st->flatx = falloc(n * st->flat, f), st->dflat = falloc(n * st->flat, f);
    st->fcpre = falloc(n * st->fc_units, f), st->fcact = falloc(n * st->fc_units, f);
    st->dfc = falloc(n * st->fc_units, f);
    st->fc_mean = falloc((size_t)st->fc_units, f), st->fc_istd = falloc((size_t)st->fc_units, f);
    st->out = falloc(n * st->out_units, f);
}

static void free_stack(amdim_dim_stack *st)
{
    for (int i = 0; i < st->nconv; i++) {
        amdim_dim_conv *cv = &st->conv[i];
        free(cv->xpad), free(cv->pre), free(cv->act), free(cv->dact), free(cv->mean), free(cv->istd);
    }
    float *p[] = {st->dpad,  st->dcrop, st->dx,      st->flatx,   st->dflat, st->fcpre,
                  st->fcact, st->dfc,   st->fc_mean, st->fc_istd, st->out};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        free(p[i]);
}

static void alloc_mi(amdim_dim_mi *m, int *f)
{
    size_t uc = (size_t)m->units * m->cols;
    m->h1pre = falloc(uc, f), m->h1 = falloc(uc, f), m->sum = falloc(uc, f), m->out = falloc(uc, f);
    m->bn_mean = falloc((size_t)m->units, f), m->bn_istd = falloc((size_t)m->units, f);
    m->ln_mean = falloc(m->cols, f), m->ln_rstd = falloc(m->cols, f);
    m->dsum = falloc(uc, f), m->dh1 = falloc(uc, f), m->dx = falloc((size_t)m->cin * m->cols, f);
}

static void free_mi(amdim_dim_mi *m)
{
    float *p[] = {m->h1pre,   m->h1,      m->sum,  m->out, m->bn_mean, m->bn_istd,
                  m->ln_mean, m->ln_rstd, m->dsum, m->dh1, m->dx};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        free(p[i]);
}

int amdim_dim_alloc_buffers(amdim_dim *d)
{
    int f = 0;
    size_t n = (size_t)d->batch, C = (size_t)d->cfg.mi_units, z = (size_t)d->cfg.z_units;
    const amdim_dim_config *c = &d->cfg;
    d->xin = falloc((size_t)c->in_ch * n * c->size * c->size, &f);
    alloc_stack(&d->enc, n, 0, &f);
    d->zT = falloc(n * z, &f), d->dz = falloc(n * z, &f), d->dztmp = falloc(n * z, &f);
    if (d->has_local) {
        d->u = falloc(n * n * d->L, &f), d->du = falloc(n * n * d->L, &f);
        d->ln_scratch = malloc(2 * d->local.cols * sizeof *d->ln_scratch);
        f |= !d->ln_scratch;
        alloc_mi(&d->local, &f);
        alloc_mi(&d->global, &f);
    }
    if (d->has_global) {
        alloc_stack(&d->g_local, n, 1, &f);
        d->g_out = falloc(n * C, &f), d->dg_out = falloc(n * C, &f), d->dg_local = falloc(n * C, &f);
        d->ug = falloc(n * n, &f), d->dug = falloc(n * n, &f);
    }
    if (d->has_prior && amdim_dim_prior_alloc(d))
        f = 1;
    return f ? AMDIM_E_NOMEM : AMDIM_OK;
}

void amdim_dim_free_buffers(amdim_dim *d)
{
    free_stack(&d->enc);
    free_stack(&d->g_local);
    free_mi(&d->local);
    free_mi(&d->global);
    float *p[] = {d->xin, d->zT, d->dz, d->dztmp, d->u, d->du, d->g_out, d->ug, d->dug, d->dg_out, d->dg_local};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        free(p[i]);
    free(d->ln_scratch);
    amdim_dim_prior_free(d);
    amdim_cpu_op_scratch_free(&d->scr);
}

/* ---- helpers ------------------------------------------------------------ */

static float *W(const amdim_dim *d, float *block, int t) { return block + d->tab[t].t.offset; }

/* The BatchNorm whose weight is tensor t (its bias and buffers follow it). */
static amdim_cpu_bn_params bn_params(const amdim_dim *d, float *w, float *g, int t)
{
    amdim_cpu_bn_params p = {.gamma = W(d, w, t),
                             .beta = W(d, w, t + 1),
                             .rmean = W(d, w, t + 2),
                             .rvar = W(d, w, t + 3),
                             .nbt = W(d, w, t + 4),
                             .dgamma = W(d, g, t),
                             .dbeta = W(d, g, t + 1),
                             .sync = NULL};
    return p;
}

/* a (rows, cols) row-major -> b (cols, rows). */
static void transpose(const float *a, size_t rows, size_t cols, float *b)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++)
            b[c * rows + r] = a[r * cols + c];
}

static void add_to(float *dst, const float *src, size_t count)
{
    for (size_t k = 0; k < count; k++)
        dst[k] += src[k];
}

/* ---- a layer list (encoder, DIM(G)'s local net) ------------------------- */

static int stack_forward(amdim_dim *d, amdim_dim_stack *st, float *w, float *g, const float *x)
{
    int n = d->batch, rc;
    const float *in = st->x = x;
    for (int i = 0; i < st->nconv; i++) {
        amdim_dim_conv *cv = &st->conv[i];
        int hp = cv->hin + 2 * cv->p;
        amdim_dim_zero_pad_forward(in, cv->cin, n, cv->hin, cv->hin, cv->p, cv->xpad);
        if ((rc = amdim_cpu_conv2d_forward(cv->xpad, cv->cin, n, hp, hp, W(d, w, cv->w), NULL, cv->cout, cv->k, cv->s,
                                           cv->pre, &d->scr)))
            return rc;
        size_t count = (size_t)n * cv->hout * cv->hout;
        amdim_cpu_bn_params bn = bn_params(d, w, g, cv->bn);
        if ((rc = amdim_cpu_batchnorm_forward_train(cv->pre, cv->cout, count, &bn, cv->act, cv->mean, cv->istd)))
            return rc;
        amdim_cpu_relu_forward(cv->act, (size_t)cv->cout * count);
        in = cv->act;
    }
    /* (C, N, HW) -> (N, C * HW) */
    const amdim_dim_conv *last = &st->conv[st->nconv - 1];
    size_t hw = (size_t)last->hout * last->hout;
    for (int ch = 0; ch < last->cout; ch++)
        for (int i = 0; i < n; i++)
            memcpy(st->flatx + (size_t)i * st->flat + ch * hw, last->act + ((size_t)ch * n + i) * hw,
                   hw * sizeof(float));
    amdim_cpu_linear_forward(st->flatx, n, st->flat, W(d, w, st->fc_w), NULL, st->fc_units, st->fcpre);
    amdim_cpu_bn_params bn = bn_params(d, w, g, st->fc_bn);
    if ((rc = amdim_cpu_batchnorm1d_forward_train(st->fcpre, n, st->fc_units, &bn, st->fcact, st->fc_mean, st->fc_istd,
                                                  &d->scr)))
        return rc;
    amdim_cpu_relu_forward(st->fcact, (size_t)n * st->fc_units);
    amdim_cpu_linear_forward(st->fcact, n, st->fc_units, W(d, w, st->out_w), W(d, w, st->out_b), st->out_units,
                             st->out);
    return AMDIM_OK;
}

static void stack_zero_dact(const amdim_dim *d, amdim_dim_stack *st)
{
    for (int i = 0; i < st->nconv; i++) {
        const amdim_dim_conv *cv = &st->conv[i];
        memset(cv->dact, 0, (size_t)cv->cout * d->batch * cv->hout * cv->hout * sizeof(float));
    }
}

/* From dout (N, out) plus whatever the caller added to the conv blocks'
 * dact (zeroed by stack_zero_dact first); st->dx gets the input gradient
 * when it is wanted. */
static int stack_backward(amdim_dim *d, amdim_dim_stack *st, float *w, float *g, const float *dout)
{
    int n = d->batch, rc;
    amdim_cpu_linear_backward(st->fcact, n, st->fc_units, W(d, w, st->out_w), st->out_units, dout, st->dfc,
                              W(d, g, st->out_w), W(d, g, st->out_b));
    amdim_cpu_relu_backward(st->fcact, st->dfc, (size_t)n * st->fc_units);
    amdim_cpu_bn_params bn = bn_params(d, w, g, st->fc_bn);
    if ((rc = amdim_cpu_batchnorm1d_backward(st->fcpre, n, st->fc_units, &bn, st->fc_mean, st->fc_istd, st->dfc,
                                             st->dfc, &d->scr)))
        return rc;
    amdim_cpu_linear_backward(st->flatx, n, st->flat, W(d, w, st->fc_w), st->fc_units, st->dfc, st->dflat,
                              W(d, g, st->fc_w), NULL);
    amdim_dim_conv *last = &st->conv[st->nconv - 1];
    size_t hw = (size_t)last->hout * last->hout;
    for (int ch = 0; ch < last->cout; ch++)
        for (int i = 0; i < n; i++)
            add_to(last->dact + ((size_t)ch * n + i) * hw, st->dflat + (size_t)i * st->flat + ch * hw, hw);
    for (int i = st->nconv - 1; i >= 0; i--) {
        amdim_dim_conv *cv = &st->conv[i];
        size_t count = (size_t)n * cv->hout * cv->hout, in = (size_t)cv->cin * n * cv->hin * cv->hin;
        int hp = cv->hin + 2 * cv->p, want_dx = i > 0 || st->dx;
        amdim_cpu_relu_backward(cv->act, cv->dact, (size_t)cv->cout * count);
        bn = bn_params(d, w, g, cv->bn);
        if ((rc = amdim_cpu_batchnorm_backward(cv->pre, cv->cout, count, &bn, cv->mean, cv->istd, cv->dact, cv->dact)))
            return rc;
        if ((rc = amdim_cpu_conv2d_backward(cv->xpad, cv->cin, n, hp, hp, W(d, w, cv->w), cv->cout, cv->k, cv->s,
                                            cv->dact, want_dx ? st->dpad : NULL, W(d, g, cv->w), NULL, &d->scr)))
            return rc;
        if (i > 0) {
            amdim_dim_zero_pad_backward(st->dpad, cv->cin, n, cv->hin, cv->hin, cv->p, st->dcrop);
            add_to(st->conv[i - 1].dact, st->dcrop, in);
        } else if (st->dx) {
            amdim_dim_zero_pad_backward(st->dpad, cv->cin, n, cv->hin, cv->hin, cv->p, st->dx);
        }
    }
    return AMDIM_OK;
}

/* ---- MI1x1ConvNet (DIM(L)) ---------------------------------------------- */

static int mi_forward(amdim_dim *d, amdim_dim_mi *m, float *w, float *g, const float *x)
{
    int U = m->units, C = m->cin, cols = (int)m->cols;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, U, cols, C, 1.0f, W(d, w, m->w0), C, x, cols, 0.0f, m->h1pre,
                cols);
    amdim_cpu_bn_params bn = bn_params(d, w, g, m->bn);
    int rc = amdim_cpu_batchnorm_forward_train(m->h1pre, U, m->cols, &bn, m->h1, m->bn_mean, m->bn_istd);
    if (rc)
        return rc;
    amdim_cpu_relu_forward(m->h1, (size_t)U * m->cols);
    const float *b3 = W(d, w, m->b3);
    for (int ch = 0; ch < U; ch++)
        for (size_t j = 0; j < m->cols; j++)
            m->sum[(size_t)ch * m->cols + j] = b3[ch];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, U, cols, U, 1.0f, W(d, w, m->w3), U, m->h1, cols, 1.0f,
                m->sum, cols);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, U, cols, C, 1.0f, W(d, w, m->ws), C, x, cols, 1.0f, m->sum,
                cols);
    amdim_dim_layernorm_forward(m->sum, U, m->cols, W(d, w, m->lnw), W(d, w, m->lnb), m->out, m->ln_mean, m->ln_rstd);
    return AMDIM_OK;
}

/* From dout = d out (units, cols) (may be m->dh1): the parameter gradients, and m->dx (cin, cols). */
static int mi_backward(amdim_dim *d, amdim_dim_mi *m, float *w, float *g, const float *x, const float *dout)
{
    int U = m->units, C = m->cin, cols = (int)m->cols;
    amdim_dim_layernorm_backward(m->sum, U, m->cols, W(d, w, m->lnw), m->ln_mean, m->ln_rstd, dout, m->dsum,
                                 W(d, g, m->lnw), W(d, g, m->lnb), d->ln_scratch);
    float *db3 = W(d, g, m->b3);
    for (int ch = 0; ch < U; ch++) {
        double s = 0;
        for (size_t j = 0; j < m->cols; j++)
            s += m->dsum[(size_t)ch * m->cols + j];
        db3[ch] += (float)s;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, U, U, cols, 1.0f, m->dsum, cols, m->h1, cols, 1.0f,
                W(d, g, m->w3), U);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, U, C, cols, 1.0f, m->dsum, cols, x, cols, 1.0f, W(d, g, m->ws),
                C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, U, cols, U, 1.0f, W(d, w, m->w3), U, m->dsum, cols, 0.0f,
                m->dh1, cols);
    amdim_cpu_relu_backward(m->h1, m->dh1, (size_t)U * m->cols);
    amdim_cpu_bn_params bn = bn_params(d, w, g, m->bn);
    int rc = amdim_cpu_batchnorm_backward(m->h1pre, U, m->cols, &bn, m->bn_mean, m->bn_istd, m->dh1, m->dh1);
    if (rc)
        return rc;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, U, C, cols, 1.0f, m->dh1, cols, x, cols, 1.0f, W(d, g, m->w0),
                C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, cols, U, 1.0f, W(d, w, m->w0), C, m->dh1, cols, 0.0f, m->dx,
                cols);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, cols, U, 1.0f, W(d, w, m->ws), C, m->dsum, cols, 1.0f,
                m->dx, cols);
    return AMDIM_OK;
}

/* ---- the two terms ------------------------------------------------------ */

/* DIM(L), §3.1: u (N, N L) = g^T h with g (C, N), h (C, N L); adds its
 * gradients to the local tap's dact and to dz. */
static int local_term(amdim_dim *d, float *w, float *g, double *loss)
{
    const amdim_dim_config *c = &d->cfg;
    int n = d->batch, L = d->L, C = c->mi_units, NL = n * L, rc;
    const float *lmap = d->enc.conv[d->local_idx].act;
    if ((rc = mi_forward(d, &d->local, w, g, lmap)) || (rc = mi_forward(d, &d->global, w, g, d->zT)))
        return rc;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, NL, C, 1.0f, d->global.out, n, d->local.out, NL, 0.0f, d->u,
                NL);
    *loss = amdim_dim_estimator_loss(d->u, n, L, c->estimator, d->du, c->beta);
    /* d h = g du and d g = h du^T, held in each MI net's dh1 until its LayerNorm backward reads them */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, C, NL, n, 1.0f, d->global.out, n, d->du, NL, 0.0f,
                d->local.dh1, NL);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, C, n, NL, 1.0f, d->local.out, NL, d->du, NL, 0.0f,
                d->global.dh1, n);
    if ((rc = mi_backward(d, &d->local, w, g, lmap, d->local.dh1)) ||
        (rc = mi_backward(d, &d->global, w, g, d->zT, d->global.dh1)))
        return rc;
    add_to(d->enc.conv[d->local_idx].dact, d->local.dx, (size_t)d->local.cin * d->local.cols);
    transpose(d->global.dx, (size_t)c->z_units, (size_t)n, d->dztmp);
    add_to(d->dz, d->dztmp, (size_t)n * c->z_units);
    return AMDIM_OK;
}

/* DIM(G), §3.2: u (N, N) = G Lv^T with G = linear(z) (N, C) and Lv the
 * local net's output (N, C); adds its gradients to the local tap and dz. */
static int global_term(amdim_dim *d, float *w, float *g, double *loss)
{
    const amdim_dim_config *c = &d->cfg;
    int n = d->batch, C = c->mi_units, z = c->z_units, rc;
    amdim_dim_stack *st = &d->g_local;
    if ((rc = stack_forward(d, st, w, g, d->enc.conv[d->local_idx].act)))
        return rc;
    amdim_cpu_linear_forward(d->enc.out, n, z, W(d, w, d->g_w), W(d, w, d->g_b), C, d->g_out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, C, 1.0f, d->g_out, C, st->out, C, 0.0f, d->ug, n);
    *loss = amdim_dim_estimator_loss(d->ug, n, 1, c->estimator, d->dug, c->alpha);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, C, n, 1.0f, d->dug, n, st->out, C, 0.0f, d->dg_out, C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, C, n, 1.0f, d->dug, n, d->g_out, C, 0.0f, d->dg_local, C);
    amdim_cpu_linear_backward(d->enc.out, n, z, W(d, w, d->g_w), C, d->dg_out, d->dztmp, W(d, g, d->g_w),
                              W(d, g, d->g_b));
    add_to(d->dz, d->dztmp, (size_t)n * z);
    stack_zero_dact(d, st);
    if ((rc = stack_backward(d, st, w, g, d->dg_local)))
        return rc;
    const amdim_dim_conv *lc = &d->enc.conv[d->local_idx];
    add_to(d->enc.conv[d->local_idx].dact, st->dx, (size_t)lc->cout * n * lc->hout * lc->hout);
    return AMDIM_OK;
}

/* ---- the step ----------------------------------------------------------- */

int amdim_dim_step(amdim_dim *d, float *weights, const float *x, const float *prior, float *grads,
                   amdim_dim_losses *losses)
{
    const amdim_dim_config *c = &d->cfg;
    int n = d->batch, rc;
    size_t img = (size_t)c->size * c->size;
    if (d->has_prior && !prior) /* before anything changes (the running statistics) */
        return amdim_fail(d->err, sizeof d->err, AMDIM_E_INVALID, "DIM step: gamma %g needs prior samples", c->gamma);
    memset(grads, 0, d->floats * sizeof *grads);
    memset(losses, 0, sizeof *losses);
    for (int i = 0; i < n; i++) /* NCHW -> CNHW */
        for (int ch = 0; ch < c->in_ch; ch++)
            memcpy(d->xin + ((size_t)ch * n + i) * img, x + ((size_t)i * c->in_ch + ch) * img, img * sizeof(float));
    if ((rc = stack_forward(d, &d->enc, weights, grads, d->xin)))
        goto fail;
    transpose(d->enc.out, (size_t)n, (size_t)c->z_units, d->zT);
    stack_zero_dact(d, &d->enc);
    memset(d->dz, 0, (size_t)n * c->z_units * sizeof *d->dz);
    if (d->has_local && (rc = local_term(d, weights, grads, &losses->local)))
        goto fail;
    if (d->has_global && (rc = global_term(d, weights, grads, &losses->global)))
        goto fail;
    if (d->has_prior && (rc = amdim_dim_prior_term(d, weights, grads, d->enc.out, prior, d->dz, losses)))
        return rc;
    losses->encoder = c->alpha * losses->global + c->beta * losses->local + c->gamma * losses->prior;
    if ((rc = stack_backward(d, &d->enc, weights, grads, d->dz)))
        goto fail;
    return AMDIM_OK;
fail:
    return amdim_fail(d->err, sizeof d->err, rc, "DIM step: out of memory for scratch");
}
