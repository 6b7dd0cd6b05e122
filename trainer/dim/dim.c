/* DIM's description: configuration, the tensor table in dim_ref.py's
 * state_dict order, the authors' initialisation, the step's buffers and
 * Adam (amdim_dim.h). The step itself is dim_step.c. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_common.h"
#include "amdim_philox.h"
#include "dim_internal.h"
#include "elementwise_internal.h"

#define ALIGN_FLOATS 16 /* every tensor on a 64-byte boundary, as trainer/model/arch.c */

static int add(amdim_dim *d, amdim_dim_init_kind init, int fan_in, int trainable, int ndim, const int *shape,
               const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static int add(amdim_dim *d, amdim_dim_init_kind init, int fan_in, int trainable, int ndim, const int *shape,
               const char *fmt, ...)
{
    if (d->ntab == d->cap) {
        int cap = d->cap ? 2 * d->cap : 64;
        amdim_dim_entry *t = realloc(d->tab, (size_t)cap * sizeof *t);
        if (!t)
            return -1;
        d->tab = t;
        d->cap = cap;
    }
    amdim_dim_entry *e = &d->tab[d->ntab];
    memset(e, 0, sizeof *e);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->t.name, sizeof e->t.name, fmt, ap);
    va_end(ap);
    e->t.ndim = ndim;
    e->t.size = 1;
    for (int i = 0; i < ndim; i++) {
        e->t.shape[i] = shape[i];
        e->t.size *= (size_t)shape[i];
    }
    e->t.offset = d->floats;
    e->t.trainable = trainable;
    e->t.disc = d->adding_disc;
    e->init = init;
    e->fan_in = fan_in;
    d->floats += (e->t.size + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
    return d->ntab++;
}

/* BatchNorm of c channels under prefix: weight, bias, running_mean, running_var, num_batches_tracked. */
static int add_bn(amdim_dim *d, int c, const char *prefix)
{
    int first = add(d, DIM_INIT_ONE, 0, 1, 1, &c, "%s.weight", prefix);
    add(d, DIM_INIT_ZERO, 0, 1, 1, &c, "%s.bias", prefix);
    add(d, DIM_INIT_ZERO, 0, 0, 1, &c, "%s.running_mean", prefix);
    add(d, DIM_INIT_ONE, 0, 0, 1, &c, "%s.running_var", prefix);
    add(d, DIM_INIT_ZERO, 0, 0, 0, NULL, "%s.num_batches_tracked", prefix);
    return first;
}

static void add_mi(amdim_dim *d, amdim_dim_mi *m, const char *prefix, int cin, int units, size_t cols)
{
    char bn[128];
    int w0[4] = {units, cin, 1, 1}, w3[4] = {units, units, 1, 1};
    m->cin = cin, m->units = units, m->cols = cols;
    m->w0 = add(d, DIM_INIT_FAN_IN, cin, 1, 4, w0, "%s.block_nonlinear.0.weight", prefix);
    snprintf(bn, sizeof bn, "%s.block_nonlinear.1", prefix);
    m->bn = add_bn(d, units, bn);
    m->w3 = add(d, DIM_INIT_FAN_IN, units, 1, 4, w3, "%s.block_nonlinear.3.weight", prefix);
    m->b3 = add(d, DIM_INIT_FAN_IN, units, 1, 1, &units, "%s.block_nonlinear.3.bias", prefix);
    m->lnw = add(d, DIM_INIT_ONE, 0, 1, 1, &units, "%s.block_ln.1.weight", prefix);
    m->lnb = add(d, DIM_INIT_ZERO, 0, 1, 1, &units, "%s.block_ln.1.bias", prefix);
    m->ws =
        add(d, units >= cin ? DIM_INIT_SHORTCUT : DIM_INIT_FAN_IN, cin, 1, 4, w0, "%s.linear_shortcut.weight", prefix);
}

/* Conv blocks of kernel k, stride 2, padding p and widths cout[] on a
 * cin x h x h map; sets the flattened size. */
static void stack_convs(amdim_dim_stack *st, int cin, int h, int nconv, const int *cout, int k, int p)
{
    st->nconv = nconv;
    for (int i = 0; i < nconv; i++) {
        amdim_dim_conv *cv = &st->conv[i];
        cv->cin = cin, cv->cout = cout[i], cv->k = k, cv->s = 2, cv->p = p, cv->hin = h;
        cv->hout = (h + 2 * p - k) / 2 + 1;
        h = cv->hout, cin = cv->cout;
    }
    st->flat = cin * h * h;
}

/* docs/dim.md §2.2: kernel, padding, number of convs and the local tap of
 * each size; §3.2: DIM(G)'s local net repeats the encoder's convs from the
 * one that produced the local map, on that map. */
static int layout(amdim_dim *d, char *err, size_t n)
{
    const amdim_dim_config *c = &d->cfg;
    int k = 4, p = 1, nconv;
    if (c->size == 28)
        k = 5, p = 2, nconv = 2, d->local_idx = 1;
    else if (c->size == 32)
        nconv = 3, d->local_idx = 1;
    else if (c->size == 64)
        nconv = 4, d->local_idx = 2;
    else
        return amdim_fail(err, n, AMDIM_E_INVALID, "DIM encoder size %d: need 28, 32 or 64", c->size);
    stack_convs(&d->enc, c->in_ch, c->size, nconv, c->widths, k, p);
    d->enc.fc_units = c->fc_units, d->enc.out_units = c->z_units;
    const amdim_dim_conv *lc = &d->enc.conv[d->local_idx];
    d->L = lc->hout * lc->hout;
    if (d->has_global) {
        stack_convs(&d->g_local, lc->cout, lc->hout, nconv - d->local_idx, c->widths + d->local_idx, k, p);
        d->g_local.fc_units = c->fc_units, d->g_local.out_units = c->mi_units;
    }
    return AMDIM_OK;
}

/* A stack's tensors under prefix, with the block indices of the authors'
 * list: conv i is layer i, flatten layer nconv, the fc layer nconv + 1,
 * the output layer nconv + 2 (a single module: prefix.layers.layerK.weight). */
static void add_stack(amdim_dim *d, amdim_dim_stack *st, const char *prefix)
{
    char pre[160];
    for (int i = 0; i < st->nconv; i++) {
        amdim_dim_conv *cv = &st->conv[i];
        int shape[4] = {cv->cout, cv->cin, cv->k, cv->k};
        cv->w =
            add(d, DIM_INIT_FAN_IN, cv->cin * cv->k * cv->k, 1, 4, shape, "%s.layers.layer%d.conv.weight", prefix, i);
        snprintf(pre, sizeof pre, "%s.layers.layer%d.bn", prefix, i);
        cv->bn = add_bn(d, cv->cout, pre);
    }
    int fc_shape[2] = {st->fc_units, st->flat}, out_shape[2] = {st->out_units, st->fc_units};
    st->fc_w = add(d, DIM_INIT_FAN_IN, st->flat, 1, 2, fc_shape, "%s.layers.layer%d.fc.weight", prefix, st->nconv + 1);
    snprintf(pre, sizeof pre, "%s.layers.layer%d.bn", prefix, st->nconv + 1);
    st->fc_bn = add_bn(d, st->fc_units, pre);
    st->out_w =
        add(d, DIM_INIT_FAN_IN, st->fc_units, 1, 2, out_shape, "%s.layers.layer%d.weight", prefix, st->nconv + 2);
    st->out_b =
        add(d, DIM_INIT_FAN_IN, st->fc_units, 1, 1, &st->out_units, "%s.layers.layer%d.bias", prefix, st->nconv + 2);
}

/* §6.3: disc.net.layers.layer0.fc, layer1.fc (linear + ReLU), layer2 (linear), all biased. */
static void add_disc(amdim_dim *d)
{
    amdim_dim_disc *D = &d->disc;
    int s1[2] = {D->h1, D->in}, s2[2] = {D->h2, D->h1}, s3[2] = {1, D->h2}, one = 1;
    d->adding_disc = 1;
    D->w1 = add(d, DIM_INIT_FAN_IN, D->in, 1, 2, s1, "disc.net.layers.layer0.fc.weight");
    D->b1 = add(d, DIM_INIT_FAN_IN, D->in, 1, 1, &D->h1, "disc.net.layers.layer0.fc.bias");
    D->w2 = add(d, DIM_INIT_FAN_IN, D->h1, 1, 2, s2, "disc.net.layers.layer1.fc.weight");
    D->b2 = add(d, DIM_INIT_FAN_IN, D->h1, 1, 1, &D->h2, "disc.net.layers.layer1.fc.bias");
    D->w3 = add(d, DIM_INIT_FAN_IN, D->h2, 1, 2, s3, "disc.net.layers.layer2.weight");
    D->b3 = add(d, DIM_INIT_FAN_IN, D->h2, 1, 1, &one, "disc.net.layers.layer2.bias");
    d->adding_disc = 0;
}

/* dim_ref.py's DIM registers encoder, local_dim, global_dim in that order. */
static int build_table(amdim_dim *d)
{
    const amdim_dim_config *c = &d->cfg;
    add_stack(d, &d->enc, "encoder.net");
    if (d->has_local) {
        add_mi(d, &d->local, "local_dim.local_net", d->enc.conv[d->local_idx].cout, c->mi_units,
               (size_t)d->batch * d->L);
        add_mi(d, &d->global, "local_dim.global_net", c->z_units, c->mi_units, (size_t)d->batch);
    }
    if (d->has_global) {
        int shape[2] = {c->mi_units, c->z_units};
        add_stack(d, &d->g_local, "global_dim.local_net");
        d->g_w = add(d, DIM_INIT_FAN_IN, c->z_units, 1, 2, shape, "global_dim.global_net.layers.layer0.weight");
        d->g_b = add(d, DIM_INIT_FAN_IN, c->z_units, 1, 1, &c->mi_units, "global_dim.global_net.layers.layer0.bias");
    }
    if (d->has_prior)
        add_disc(d);
    return d->ntab > 0 && d->tab ? AMDIM_OK : AMDIM_E_NOMEM;
}

static int check_config(amdim_dim_config *c, int batch, char *err, size_t n)
{
    static const int widths[4] = {64, 128, 256, 512};
    if (c->in_ch == 0)
        c->in_ch = c->size == 28 ? 1 : 3;
    for (int i = 0; i < 4; i++)
        if (c->widths[i] == 0)
            c->widths[i] = widths[i];
    c->fc_units = c->fc_units ? c->fc_units : 1024;
    c->z_units = c->z_units ? c->z_units : 64;
    c->mi_units = c->mi_units ? c->mi_units : 2048;
    if (batch < 2)
        return amdim_fail(err, n, AMDIM_E_INVALID, "DIM batch %d: need at least 2 (one negative image)", batch);
    if (c->in_ch < 1 || c->fc_units < 1 || c->z_units < 1 || c->mi_units < 1 || c->widths[0] < 1 || c->widths[1] < 1 ||
        c->widths[2] < 1 || c->widths[3] < 1)
        return amdim_fail(err, n, AMDIM_E_INVALID, "DIM widths must be positive");
    if (c->mi_units == c->z_units)
        return amdim_fail(err, n, AMDIM_E_UNSUPPORTED,
                          "DIM mi_units %d = z_units: the identity global net is not implemented", c->mi_units);
    if (!(c->alpha >= 0) || !(c->beta >= 0) || !(c->alpha + c->beta > 0) || !(c->gamma >= 0))
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "DIM alpha %g, beta %g, gamma %g: need all >= 0 and alpha or beta > 0", c->alpha, c->beta,
                          c->gamma);
    c->disc_hidden[0] = c->disc_hidden[0] ? c->disc_hidden[0] : 1000;
    c->disc_hidden[1] = c->disc_hidden[1] ? c->disc_hidden[1] : 200;
    if (c->disc_hidden[0] < 1 || c->disc_hidden[1] < 1 || c->gp_all < 0 || c->gp_all > 1)
        return amdim_fail(err, n, AMDIM_E_INVALID, "DIM discriminator hidden %d, %d, penalty rows %d: need > 0, 0 or 1",
                          c->disc_hidden[0], c->disc_hidden[1], c->gp_all);
    if (c->estimator < AMDIM_DIM_JSD || c->estimator > AMDIM_DIM_DV)
        return amdim_fail(err, n, AMDIM_E_INVALID, "DIM estimator %d: need jsd (0), nce (1) or dv (2)", c->estimator);
    return AMDIM_OK;
}

int amdim_dim_create(const amdim_dim_config *cfg, int batch, amdim_dim **out, char *err, size_t errlen)
{
    *out = NULL;
    amdim_dim *d = calloc(1, sizeof *d);
    if (!d)
        return amdim_fail(err, errlen, AMDIM_E_NOMEM, "DIM: out of memory");
    d->cfg = *cfg;
    d->batch = batch;
    int rc = check_config(&d->cfg, batch, err, errlen);
    d->has_global = d->cfg.alpha > 0, d->has_local = d->cfg.beta > 0; /* D8: a term of weight 0 builds nothing */
    d->has_prior = d->cfg.gamma > 0;
    d->disc.in = d->cfg.z_units, d->disc.h1 = d->cfg.disc_hidden[0], d->disc.h2 = d->cfg.disc_hidden[1];
    if (!rc)
        rc = layout(d, err, errlen);
    if (!rc && (build_table(d) || amdim_dim_alloc_buffers(d)))
        rc = amdim_fail(err, errlen, AMDIM_E_NOMEM, "DIM: out of memory for the step's buffers");
    if (rc) {
        amdim_dim_destroy(d);
        return rc;
    }
    *out = d;
    return AMDIM_OK;
}

void amdim_dim_destroy(amdim_dim *d)
{
    if (!d)
        return;
    amdim_dim_free_buffers(d);
    free(d->tab);
    free(d);
}

int amdim_dim_tensor_count(const amdim_dim *d) { return d->ntab; }
const amdim_dim_tensor *amdim_dim_tensor_at(const amdim_dim *d, int i) { return &d->tab[i].t; }
size_t amdim_dim_block_floats(const amdim_dim *d) { return d->floats; }
const char *amdim_dim_error(const amdim_dim *d) { return d->err; }
const float *amdim_dim_scores_local(const amdim_dim *d) { return d->has_local ? d->u : NULL; }
const float *amdim_dim_scores_global(const amdim_dim *d) { return d->has_global ? d->ug : NULL; }

const amdim_dim_tensor *amdim_dim_tensor_find(const amdim_dim *d, const char *name)
{
    for (int i = 0; i < d->ntab; i++)
        if (!strcmp(d->tab[i].t.name, name))
            return &d->tab[i].t;
    return NULL;
}

static void init_entry(const amdim_dim_entry *e, uint64_t seed, int index, float *w)
{
    amdim_rng rng;
    amdim_rng_init(&rng, seed, AMDIM_STREAM_INIT, (uint64_t)index);
    switch (e->init) {
    case DIM_INIT_FAN_IN: {
        float bound = 1.0f / sqrtf((float)e->fan_in);
        for (size_t k = 0; k < e->t.size; k++)
            w[k] = amdim_rng_uniform(&rng, -bound, bound);
        break;
    }
    case DIM_INIT_SHORTCUT: { /* U(-0.01, 0.01), then 1 at (i, i) for every input channel (out >= in) */
        int ci = e->t.shape[1];
        for (size_t k = 0; k < e->t.size; k++)
            w[k] = amdim_rng_uniform(&rng, -0.01f, 0.01f);
        for (int i = 0; i < ci; i++)
            w[(size_t)i * ci + i] = 1.0f;
        break;
    }
    case DIM_INIT_ONE:
        for (size_t k = 0; k < e->t.size; k++)
            w[k] = 1.0f;
        break;
    default: memset(w, 0, e->t.size * sizeof *w);
    }
}

void amdim_dim_init_weights(const amdim_dim *d, float *weights)
{
    memset(weights, 0, d->floats * sizeof *weights);
    for (int i = 0; i < d->ntab; i++)
        init_entry(&d->tab[i], d->cfg.seed, i, weights + d->tab[i].t.offset);
}

void amdim_dim_adam_step(const amdim_dim *d, float *weights, const float *grads, float *m, float *v, long t,
                         const amdim_dim_adam *hp)
{
    amdim_adam_hparams h = {.lr = hp->lr, .beta1 = hp->beta1, .beta2 = hp->beta2, .eps = hp->eps};
    h.step = (float)(hp->lr / (1 - pow(hp->beta1, (double)t)));
    h.sqrt_bc2 = (float)sqrt(1 - pow(hp->beta2, (double)t));
    for (int i = 0; i < d->ntab; i++) {
        const amdim_dim_tensor *tt = &d->tab[i].t;
        if (!tt->trainable)
            continue;
        for (size_t k = tt->offset; k < tt->offset + tt->size; k++)
            weights[k] = amdim_adam_element(weights[k], grads[k], &m[k], &v[k], &h);
    }
}
