/* The frozen encoder of the classifier evaluation (docs/dim.md §2.3, §9.1,
 * D17): a forward in evaluation mode, BatchNorm on its running statistics,
 * that returns one tap (amdim_dim_features). It reuses the step's encoder
 * buffers and leaves the weights untouched. */
#include <string.h>

#include "amdim_common.h"
#include "dim_internal.h"
#include "dim_ops_internal.h"

/* The BatchNorm whose weight is tensor t, read-only (no gradients). */
static amdim_cpu_bn_params bn_eval(const amdim_dim *d, const float *w, int t)
{
    float *b = (float *)w; /* the eval ops only read the parameters and buffers */
    amdim_cpu_bn_params p = {.gamma = b + d->tab[t].t.offset,
                             .beta = b + d->tab[t + 1].t.offset,
                             .rmean = b + d->tab[t + 2].t.offset,
                             .rvar = b + d->tab[t + 3].t.offset};
    return p;
}

int amdim_dim_tap_units(const amdim_dim *d, int tap)
{
    switch (tap) {
    case AMDIM_DIM_TAP_CONV: return d->enc.flat;
    case AMDIM_DIM_TAP_FC: return d->enc.fc_units;
    case AMDIM_DIM_TAP_Z: return d->enc.out_units;
    default: return 0;
    }
}

/* The conv blocks on the CNHW map in, n images; returns the last block's map. */
static int convs_eval(amdim_dim *d, const float *w, const float *in, int n, const float **last)
{
    amdim_dim_stack *st = &d->enc;
    for (int i = 0; i < st->nconv; i++) {
        amdim_dim_conv *cv = &st->conv[i];
        int hp = cv->hin + 2 * cv->p, rc;
        amdim_dim_zero_pad_forward(in, cv->cin, n, cv->hin, cv->hin, cv->p, cv->xpad);
        if ((rc = amdim_cpu_conv2d_forward(cv->xpad, cv->cin, n, hp, hp, w + d->tab[cv->w].t.offset, NULL, cv->cout,
                                           cv->k, cv->s, cv->pre, &d->scr)))
            return rc;
        size_t count = (size_t)n * cv->hout * cv->hout;
        amdim_cpu_bn_params bn = bn_eval(d, w, cv->bn);
        amdim_cpu_batchnorm_forward_eval(cv->pre, cv->cout, count, &bn, cv->act);
        amdim_cpu_relu_forward(cv->act, (size_t)cv->cout * count);
        in = cv->act;
    }
    *last = in;
    return AMDIM_OK;
}

/* (C, N, HW) -> (N, C * HW): the authors' flatten in C, H, W order. */
static void flatten(const amdim_dim_stack *st, const float *map, int n, float *out)
{
    const amdim_dim_conv *last = &st->conv[st->nconv - 1];
    size_t hw = (size_t)last->hout * last->hout;
    for (int ch = 0; ch < last->cout; ch++)
        for (int i = 0; i < n; i++)
            memcpy(out + (size_t)i * st->flat + ch * hw, map + ((size_t)ch * n + i) * hw, hw * sizeof(float));
}

int amdim_dim_features(amdim_dim *d, const float *weights, const float *x, int n, int tap, float *out)
{
    const amdim_dim_config *c = &d->cfg;
    amdim_dim_stack *st = &d->enc;
    if (n < 1 || n > d->batch || tap < AMDIM_DIM_TAP_CONV || tap > AMDIM_DIM_TAP_Z)
        return amdim_fail(d->err, sizeof d->err, AMDIM_E_INVALID, "DIM features: %d images (need 1..%d), tap %d", n,
                          d->batch, tap);
    size_t img = (size_t)c->size * c->size;
    for (int i = 0; i < n; i++) /* NCHW -> CNHW */
        for (int ch = 0; ch < c->in_ch; ch++)
            memcpy(d->xin + ((size_t)ch * n + i) * img, x + ((size_t)i * c->in_ch + ch) * img, img * sizeof(float));
    const float *map;
    if (convs_eval(d, weights, d->xin, n, &map))
        return amdim_fail(d->err, sizeof d->err, AMDIM_E_NOMEM, "DIM features: out of memory for scratch");
    float *flat = tap == AMDIM_DIM_TAP_CONV ? out : st->flatx;
    flatten(st, map, n, flat);
    if (tap == AMDIM_DIM_TAP_CONV)
        return AMDIM_OK;
    float *fc = tap == AMDIM_DIM_TAP_FC ? out : st->fcact;
    amdim_cpu_linear_forward(flat, n, st->flat, weights + d->tab[st->fc_w].t.offset, NULL, st->fc_units, st->fcpre);
    amdim_cpu_bn_params bn = bn_eval(d, weights, st->fc_bn);
    amdim_cpu_batchnorm1d_forward_eval(st->fcpre, n, st->fc_units, &bn, fc);
    amdim_cpu_relu_forward(fc, (size_t)n * st->fc_units);
    if (tap == AMDIM_DIM_TAP_Z)
        amdim_cpu_linear_forward(fc, n, st->fc_units, weights + d->tab[st->out_w].t.offset,
                                 weights + d->tab[st->out_b].t.offset, st->out_units, out);
    return AMDIM_OK;
}
