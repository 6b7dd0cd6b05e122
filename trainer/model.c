/* The AMDIM model on the CPU: parameters, encoder forward/backward, heads,
 * objectives, classifiers and Adam. Activations are CNHW (see ops.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_augment.h"
#include "amdim_trainer.h"
#include "nce.h"
#include "ops.h"

typedef struct {
    char name[160];
    int ndim, shape[4];
    size_t size;
    float *w, *g, *m, *v;
    int buffer, used;
} param;

typedef struct {
    int on;
    int p; /* index of gamma; beta, running_mean, running_var, num_batches_tracked follow */
} bn_ref;

enum { L_STEM, L_RES, L_BN };

typedef struct {
    int type, cin, cout, k, s, pad, hin, hout;
    int w1, b1, w2; /* parameter indices (-1 if none) */
    bn_ref bn;
} layer;

typedef struct {
    float *out, *padded, *h1, *r, *mean, *istd;
} layer_cache;

typedef struct {
    int cin, cout, hw;
    int w1, w2, ws, bs;
    bn_ref bn1, bn_out;
} head;

typedef struct {
    float *h1, *r, *sum, *out, *mean1, *istd1, *mean2, *istd2;
} head_cache;

struct amdim_model {
    amdim_model_config cfg;
    param *params;
    int nparams;
    layer *layers;
    int nlayers, i5, i7;
    head heads[2]; /* 0: r5 head, 1: r7 head */
    int mlp_w1, mlp_bn, mlp_w2, mlp_b2, lin_w, lin_b;
    /* per-batch buffers */
    int batch;
    float *x[2];
    layer_cache *lc[2];
    head_cache hc[2][2];
    float *feat, *mlp_h0, *mlp_z1, *mlp_a1, *mlp_h2, *mlp_mean, *mlp_istd, *logits[2], *dlogits, *dtmp, *dtmp2;
    float *grad_a, *grad_b, *dhead[2], *dr5[2], *dr7[2], *dr1[2];
    float *srcT, *dsrcT;
    op_scratch scr, scr2;
    nce_scratch nce;
    uint64_t updates, steps;
    int probes_only; /* Adam skips the encoder */
    /* profiling: stages = layers, 2 heads, objective, classifiers */
    int profile;
    double *prof_f, *prof_b, *prof_ff, *prof_fb;
    char (*prof_name)[96];
    char err[512];
};

#define MFAIL(st, ...) amdim_fail(m->err, sizeof m->err, (st), __VA_ARGS__)

/* ---- configuration ------------------------------------------------------ */

void amdim_model_config_default(amdim_model_config *c, int size)
{
    memset(c, 0, sizeof *c);
    c->encoder_size = size;
    c->ndf = size == 32 ? 128 : 192;
    c->n_rkhs = size == 32 ? 1024 : 1536;
    c->n_depth = size == 32 ? 10 : 8;
    c->n_classes = 10;
    c->mlp_hidden = 1024;
    c->tclip = 20.0f;
    c->objective = AMDIM_OBJECTIVE_NCE;
    c->lr = 2e-4f;
    c->beta1 = 0.8f;
    c->beta2 = 0.999f;
    c->eps = 1e-8f;
    c->weight_decay = 1e-5f;
    c->warmup = 500;
    c->lr_decay = 0.2f;
    c->milestones[0] = 250;
    c->milestones[1] = 280;
    c->n_milestones = 2;
    amdim_augment_config a;
    amdim_augment_preset(size == 32 ? "cifar" : size == 64 ? "stl10" : "imagenet", &a);
    memcpy(c->mean, a.mean, sizeof c->mean);
    memcpy(c->std, a.std, sizeof c->std);
}

int amdim_model_config_check(const amdim_model_config *c, char *err, size_t n)
{
    if (c->encoder_size != 32 && c->encoder_size != 64 && c->encoder_size != 128)
        return amdim_fail(err, n, AMDIM_E_INVALID, "encoder size %d (32, 64 or 128)", c->encoder_size);
    int top = (c->encoder_size == 32 ? 4 : 8) * c->ndf;
    if (c->ndf < 1 || c->n_depth < 1 || c->n_rkhs < top)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "ndf %d, n_depth %d, n_rkhs %d: need ndf, depth >= 1 and n_rkhs >= %d (the last residual unit cannot shrink channels)",
                          c->ndf, c->n_depth, c->n_rkhs, top);
    if (c->n_classes < 1 || c->n_classes > 4096 || c->mlp_hidden < 1)
        return amdim_fail(err, n, AMDIM_E_INVALID, "classes must be 1..4096 and the MLP hidden size >= 1");
    if (!(c->tclip > 0) || c->objective < 0 || c->objective > 2)
        return amdim_fail(err, n, AMDIM_E_INVALID, "tclip must be > 0 and the objective nce, jsd or dv");
    if (!(c->lr > 0) || !(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1) || !(c->eps > 0) ||
        c->weight_decay < 0 || c->warmup < 0 || c->n_milestones < 0 || c->n_milestones > 8)
        return amdim_fail(err, n, AMDIM_E_INVALID, "bad optimiser settings");
    for (int i = 0; i < 3; i++)
        if (!(c->std[i] > 0))
            return amdim_fail(err, n, AMDIM_E_INVALID, "normalisation std must be > 0");
    return AMDIM_OK;
}

/* ---- parameters --------------------------------------------------------- */

static int add_param(amdim_model *m, const char *name, int ndim, const int *shape, int buffer)
{
    param *p = realloc(m->params, (size_t)(m->nparams + 1) * sizeof *p);
    if (!p)
        return -1;
    m->params = p;
    p = &m->params[m->nparams];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->size = 1;
    for (int i = 0; i < ndim; i++) {
        p->shape[i] = shape[i];
        p->size *= (size_t)shape[i];
    }
    p->buffer = buffer;
    p->used = !buffer;
    p->w = calloc(p->size ? p->size : 1, sizeof(float));
    if (!buffer) {
        p->g = calloc(p->size, sizeof(float));
        p->m = calloc(p->size, sizeof(float));
        p->v = calloc(p->size, sizeof(float));
    }
    if (!p->w || (!buffer && (!p->g || !p->m || !p->v)))
        return -1;
    return m->nparams++;
}

static int conv_param(amdim_model *m, const char *prefix, const char *leaf, int cout, int cin, int k)
{
    char name[400];
    snprintf(name, sizeof name, "%s.%s", prefix, leaf);
    int shape[4] = {cout, cin, k, k};
    return add_param(m, name, 4, shape, 0);
}

static int vec_param(amdim_model *m, const char *prefix, const char *leaf, int n, int buffer)
{
    char name[400];
    snprintf(name, sizeof name, "%s.%s", prefix, leaf);
    int shape[1] = {n};
    return add_param(m, name, buffer && n == 0 ? 0 : 1, shape, buffer);
}

/* BatchNorm tensors under prefix: weight, bias, running_mean, running_var,
 * num_batches_tracked (a scalar). */
static int bn_params_add(amdim_model *m, const char *prefix, int n, int on, bn_ref *ref)
{
    ref->on = on;
    ref->p = vec_param(m, prefix, "weight", n, 0);
    vec_param(m, prefix, "bias", n, 0);
    int rm = vec_param(m, prefix, "running_mean", n, 1);
    int rv = vec_param(m, prefix, "running_var", n, 1);
    char name[400];
    snprintf(name, sizeof name, "%s.num_batches_tracked", prefix);
    int nb = add_param(m, name, 0, NULL, 1);
    if (ref->p < 0 || rm < 0 || rv < 0 || nb < 0)
        return -1;
    for (int i = 0; i < n; i++) {
        m->params[ref->p].w[i] = 1.0f;
        m->params[rv].w[i] = 1.0f;
    }
    m->params[ref->p].used = m->params[ref->p + 1].used = on;
    return 0;
}

static bn_params bn_view(amdim_model *m, bn_ref r)
{
    param *p = &m->params[r.p];
    bn_params b = {p[0].w, p[1].w, p[2].w, p[3].w, p[4].w, p[0].g, p[1].g};
    return b;
}

/* ---- building the model --------------------------------------------------- */

static int add_layer(amdim_model *m, layer l)
{
    layer *p = realloc(m->layers, (size_t)(m->nlayers + 1) * sizeof *p);
    if (!p)
        return -1;
    m->layers = p;
    m->layers[m->nlayers] = l;
    return m->nlayers++;
}

static int res_unit(amdim_model *m, const char *prefix, int cin, int cout, int k, int s, int hin)
{
    layer l = {.type = L_RES, .cin = cin, .cout = cout, .k = k, .s = s, .hin = hin, .hout = (hin - k) / s + 1,
               .b1 = -1};
    l.w1 = conv_param(m, prefix, "conv1.weight", cout, cin, k);
    l.w2 = conv_param(m, prefix, "conv2.weight", cout, cout, 1);
    char bnp[200];
    snprintf(bnp, sizeof bnp, "%s.bn1.bn", prefix);
    if (l.w1 < 0 || l.w2 < 0 || bn_params_add(m, bnp, cout, m->cfg.use_bn, &l.bn))
        return -1;
    add_layer(m, l);
    return l.hout;
}

static int block(amdim_model *m, int idx, int cin, int cout, int k, int s, int hin)
{
    char prefix[200];
    int h = hin;
    for (int u = 0; u < m->cfg.n_depth; u++) {
        snprintf(prefix, sizeof prefix, "encoder.module.layer_list.%d.layer_list.%d", idx, u);
        h = u == 0 ? res_unit(m, prefix, cin, cout, k, s, h) : res_unit(m, prefix, cout, cout, 1, 1, h);
        if (h < 1)
            return -1;
    }
    return h;
}

static int stem(amdim_model *m, int idx, int cin, int cout, int k, int s, int pad, int hin)
{
    char prefix[200];
    snprintf(prefix, sizeof prefix, "encoder.module.layer_list.%d", idx);
    layer l = {.type = L_STEM, .cin = cin, .cout = cout, .k = k, .s = s, .pad = pad, .hin = hin,
               .hout = (hin + 2 * pad - k) / s + 1, .w2 = -1};
    l.w1 = conv_param(m, prefix, "conv.weight", cout, cin, k);
    l.b1 = vec_param(m, prefix, "conv.bias", cout, 0);
    if (l.w1 < 0 || l.b1 < 0 || add_layer(m, l) < 0)
        return -1;
    return l.hout;
}

static int maybe_bn(amdim_model *m, int idx, int c, int on, int h)
{
    char prefix[200];
    snprintf(prefix, sizeof prefix, "encoder.module.layer_list.%d.bn", idx);
    layer l = {.type = L_BN, .cin = c, .cout = c, .hin = h, .hout = h, .w1 = -1, .b1 = -1, .w2 = -1};
    if (bn_params_add(m, prefix, c, on, &l.bn))
        return -1;
    return add_layer(m, l) < 0 ? -1 : h;
}

static int make_head(amdim_model *m, head *hd, const char *prefix, int cin, int n_rkhs, int hw)
{
    hd->cin = cin;
    hd->cout = n_rkhs;
    hd->hw = hw;
    char p[200];
    hd->w1 = conv_param(m, prefix, "conv1.weight", n_rkhs, cin, 1);
    snprintf(p, sizeof p, "%s.bn_hid.bn", prefix);
    if (hd->w1 < 0 || bn_params_add(m, p, n_rkhs, m->cfg.use_bn, &hd->bn1))
        return -1;
    hd->w2 = conv_param(m, prefix, "conv2.weight", n_rkhs, n_rkhs, 1);
    snprintf(p, sizeof p, "%s.bn_out.bn", prefix);
    if (hd->w2 < 0 || bn_params_add(m, p, n_rkhs, 1, &hd->bn_out))
        return -1;
    hd->ws = conv_param(m, prefix, "shortcut.weight", n_rkhs, cin, 1);
    hd->bs = vec_param(m, prefix, "shortcut.bias", n_rkhs, 0);
    return hd->ws < 0 || hd->bs < 0 ? -1 : 0;
}

static int build(amdim_model *m)
{
    const amdim_model_config *c = &m->cfg;
    int S = c->encoder_size, ndf = c->ndf, h = S, idx = 0;
    if (S == 32) {
        h = stem(m, idx++, 3, ndf, 3, 1, 0, h);
        char prefix[200];
        snprintf(prefix, sizeof prefix, "encoder.module.layer_list.%d", idx++);
        h = res_unit(m, prefix, ndf, ndf, 1, 1, h);
        h = block(m, idx++, ndf, 2 * ndf, 4, 2, h);
        h = block(m, idx++, 2 * ndf, 4 * ndf, 2, 2, h);
    } else {
        if (S == 128) {
            h = stem(m, idx++, 3, ndf, 5, 2, 2, h);
            h = stem(m, idx++, ndf, ndf, 3, 1, 0, h);
        } else {
            h = stem(m, idx++, 3, ndf, 3, 1, 0, h);
        }
        h = block(m, idx++, ndf, 2 * ndf, 4, 2, h);
        h = block(m, idx++, 2 * ndf, 4 * ndf, 4, 2, h);
        h = block(m, idx++, 4 * ndf, 8 * ndf, 2, 2, h);
    }
    int top = (S == 32 ? 4 : 8) * ndf;
    if (h != 7)
        return -1;
    h = maybe_bn(m, idx++, top, c->use_bn, h);
    m->i7 = m->nlayers - 1;
    h = block(m, idx++, top, top, 3, 1, h);
    m->i5 = m->nlayers - 1;
    h = block(m, idx++, top, top, 3, 1, h);
    char prefix[200];
    snprintf(prefix, sizeof prefix, "encoder.module.layer_list.%d", idx++);
    h = res_unit(m, prefix, top, c->n_rkhs, 3, 1, h);
    h = maybe_bn(m, idx++, c->n_rkhs, 1, h);
    if (h != 1)
        return -1;
    if (make_head(m, &m->heads[0], "encoder.module.rkhs_block_5", top, c->n_rkhs, 5) ||
        make_head(m, &m->heads[1], "encoder.module.rkhs_block_7", top, c->n_rkhs, 7))
        return -1;
    /* Classifiers (evaluator.block_glb_mlp / block_glb_lin). */
    int shp[2];
    shp[0] = c->mlp_hidden, shp[1] = c->n_rkhs;
    m->mlp_w1 = add_param(m, "evaluator.block_glb_mlp.block_forward.2.weight", 2, shp, 0);
    bn_ref bn;
    if (bn_params_add(m, "evaluator.block_glb_mlp.block_forward.3", c->mlp_hidden, 1, &bn))
        return -1;
    m->mlp_bn = bn.p;
    shp[0] = c->n_classes, shp[1] = c->mlp_hidden;
    m->mlp_w2 = add_param(m, "evaluator.block_glb_mlp.block_forward.6.weight", 2, shp, 0);
    m->mlp_b2 = add_param(m, "evaluator.block_glb_mlp.block_forward.6.bias", 1, shp, 0);
    shp[1] = c->n_rkhs;
    m->lin_w = add_param(m, "evaluator.block_glb_lin.block_forward.2.weight", 2, shp, 0);
    m->lin_b = add_param(m, "evaluator.block_glb_lin.block_forward.2.bias", 1, shp, 0);
    return m->mlp_w1 < 0 || m->mlp_w2 < 0 || m->mlp_b2 < 0 || m->lin_w < 0 || m->lin_b < 0 ? -1 : 0;
}

/* SPEC section 3 initialisation: PyTorch's defaults (U(+-1/sqrt(fan_in))
 * for weights and biases), zero second convolutions, identity-plus-noise
 * head shortcuts. */
static void initialise(amdim_model *m)
{
    amdim_rng rng;
    for (int i = 0; i < m->nparams; i++) {
        param *p = &m->params[i];
        if (p->buffer || strstr(p->name, ".bn.") || strstr(p->name, "block_forward.3."))
            continue;
        amdim_rng_init(&rng, m->cfg.seed, UINT64_MAX - 1, (uint64_t)i);
        const char *leaf = strrchr(p->name, '.') + 1;
        int is_bias = strcmp(leaf, "bias") == 0;
        /* fan_in of the weight this bias belongs to: the previous parameter */
        size_t fan_in = is_bias ? m->params[i - 1].size / (size_t)m->params[i - 1].shape[0] : p->size / (size_t)p->shape[0];
        float bound = 1.0f / sqrtf((float)fan_in);
        if (strstr(p->name, "conv2.weight")) {
            memset(p->w, 0, p->size * sizeof(float));
        } else if (strstr(p->name, "shortcut.weight")) {
            int co = p->shape[0], ci = p->shape[1];
            for (size_t k = 0; k < p->size; k++)
                p->w[k] = amdim_rng_uniform(&rng, -0.01f, 0.01f);
            for (int d = 0; d < co && d < ci; d++)
                p->w[(size_t)d * ci + d] = 1.0f;
        } else {
            for (size_t k = 0; k < p->size; k++)
                p->w[k] = amdim_rng_uniform(&rng, -bound, bound);
        }
    }
}

static void free_buffers(amdim_model *m);

void amdim_model_destroy(amdim_model *m)
{
    if (!m)
        return;
    free_buffers(m);
    for (int i = 0; i < m->nparams; i++) {
        free(m->params[i].w);
        free(m->params[i].g);
        free(m->params[i].m);
        free(m->params[i].v);
    }
    free(m->params);
    free(m->layers);
    free(m->prof_f);
    free(m->prof_b);
    free(m->prof_ff);
    free(m->prof_fb);
    free(m->prof_name);
    op_scratch_free(&m->scr);
    op_scratch_free(&m->scr2);
    nce_scratch_free(&m->nce);
    free(m);
}

int amdim_model_create(amdim_model **out, const amdim_model_config *cfg, char *err, size_t errlen)
{
    *out = NULL;
    int st = amdim_model_config_check(cfg, err, errlen);
    if (st)
        return st;
    amdim_model *m = calloc(1, sizeof *m);
    if (!m)
        return amdim_fail(err, errlen, AMDIM_E_NOMEM, "out of memory");
    m->cfg = *cfg;
    if (build(m)) {
        amdim_model_destroy(m);
        return amdim_fail(err, errlen, AMDIM_E_NOMEM, "cannot build the model (out of memory?)");
    }
    initialise(m);
    *out = m;
    return AMDIM_OK;
}

const amdim_model_config *amdim_model_get_config(const amdim_model *m) { return &m->cfg; }
const char *amdim_model_error(const amdim_model *m) { return m ? m->err : "no model"; }
int amdim_model_param_count(const amdim_model *m) { return m->nparams; }
uint64_t amdim_model_updates(const amdim_model *m) { return m->updates; }
void amdim_model_set_updates(amdim_model *m, uint64_t updates) { m->updates = updates; }

void amdim_model_param(const amdim_model *m, int i, amdim_param *out)
{
    const param *p = &m->params[i];
    out->name = p->name;
    out->ndim = p->ndim;
    memcpy(out->shape, p->shape, sizeof out->shape);
    out->size = p->size;
    out->data = p->w;
    out->grad = p->g;
    out->adam_m = p->m;
    out->adam_v = p->v;
    out->buffer = p->buffer;
    out->used = p->used;
}

int amdim_model_find(const amdim_model *m, const char *name)
{
    for (int i = 0; i < m->nparams; i++)
        if (strcmp(m->params[i].name, name) == 0)
            return i;
    return -1;
}

/* ---- buffers ------------------------------------------------------------ */

static void free_buffers(amdim_model *m)
{
    for (int v = 0; v < 2; v++) {
        free(m->x[v]);
        if (m->lc[v])
            for (int l = 0; l < m->nlayers; l++) {
                layer_cache *c = &m->lc[v][l];
                free(c->out);
                free(c->padded);
                free(c->h1);
                free(c->r);
                free(c->mean);
                free(c->istd);
            }
        free(m->lc[v]);
        m->lc[v] = NULL;
        for (int h = 0; h < 2; h++) {
            head_cache *c = &m->hc[v][h];
            free(c->h1);
            free(c->r);
            free(c->sum);
            free(c->out);
            free(c->mean1);
            free(c->istd1);
            free(c->mean2);
            free(c->istd2);
            memset(c, 0, sizeof *c);
        }
        free(m->dr5[v]);
        free(m->dr7[v]);
        free(m->dr1[v]);
    }
    free(m->feat);
    free(m->mlp_h0);
    free(m->mlp_z1);
    free(m->mlp_a1);
    free(m->mlp_h2);
    free(m->mlp_mean);
    free(m->mlp_istd);
    free(m->logits[0]);
    free(m->logits[1]);
    free(m->dlogits);
    free(m->dtmp);
    free(m->dtmp2);
    free(m->grad_a);
    free(m->grad_b);
    free(m->dhead[0]);
    free(m->dhead[1]);
    free(m->srcT);
    free(m->dsrcT);
    m->batch = 0;
}

#define ALLOC(ptr, count)                                  \
    do {                                                   \
        size_t n_ = (size_t)(count);                       \
        (ptr) = calloc(n_ > 0 ? n_ : 1, sizeof(float));    \
        if (!(ptr))                                        \
            return -1;                                     \
    } while (0)

static int ensure_buffers(amdim_model *m, int B)
{
    if (m->batch == B)
        return 0;
    free_buffers(m);
    const amdim_model_config *c = &m->cfg;
    int S = c->encoder_size, R = c->n_rkhs;
    size_t maxact = (size_t)3 * B * S * S;
    for (int v = 0; v < 2; v++) {
        ALLOC(m->x[v], (size_t)3 * B * S * S);
        m->lc[v] = calloc((size_t)m->nlayers, sizeof(layer_cache));
        if (!m->lc[v])
            return -1;
        for (int l = 0; l < m->nlayers; l++) {
            const layer *L = &m->layers[l];
            layer_cache *lc = &m->lc[v][l];
            size_t in = (size_t)L->cin * B * L->hin * L->hin, outn = (size_t)L->cout * B * L->hout * L->hout;
            maxact = in > maxact ? in : maxact;
            maxact = outn > maxact ? outn : maxact;
            ALLOC(lc->out, outn);
            ALLOC(lc->mean, L->cout);
            ALLOC(lc->istd, L->cout);
            if (L->type == L_STEM && L->pad) {
                size_t hp = (size_t)L->hin + 2 * L->pad;
                ALLOC(lc->padded, (size_t)L->cin * B * hp * hp);
            }
            if (L->type == L_RES) {
                ALLOC(lc->h1, outn);
                ALLOC(lc->r, outn);
            }
        }
        for (int h = 0; h < 2; h++) {
            head_cache *hc = &m->hc[v][h];
            size_t n = (size_t)R * B * m->heads[h].hw * m->heads[h].hw;
            ALLOC(hc->h1, n);
            ALLOC(hc->r, n);
            ALLOC(hc->sum, n);
            ALLOC(hc->out, n);
            ALLOC(hc->mean1, R);
            ALLOC(hc->istd1, R);
            ALLOC(hc->mean2, R);
            ALLOC(hc->istd2, R);
        }
        ALLOC(m->dr5[v], (size_t)R * B * 25);
        ALLOC(m->dr7[v], (size_t)R * B * 49);
        ALLOC(m->dr1[v], (size_t)R * B);
    }
    size_t headmax = (size_t)R * B * 49;
    maxact = headmax > maxact ? headmax : maxact;
    ALLOC(m->grad_a, maxact);
    ALLOC(m->grad_b, maxact);
    ALLOC(m->dhead[0], (size_t)R * B * 49);
    ALLOC(m->dhead[1], (size_t)R * B * 49);
    int H = c->mlp_hidden, K = c->n_classes;
    ALLOC(m->feat, (size_t)2 * B * R);
    ALLOC(m->mlp_h0, (size_t)2 * B * R);
    ALLOC(m->mlp_z1, (size_t)2 * B * H);
    ALLOC(m->mlp_a1, (size_t)2 * B * H);
    ALLOC(m->mlp_h2, (size_t)2 * B * H);
    ALLOC(m->mlp_mean, H);
    ALLOC(m->mlp_istd, H);
    ALLOC(m->logits[0], (size_t)2 * B * K);
    ALLOC(m->logits[1], (size_t)2 * B * K);
    ALLOC(m->dlogits, (size_t)2 * B * K);
    ALLOC(m->dtmp, (size_t)2 * B * (H > R ? H : R));
    ALLOC(m->dtmp2, (size_t)2 * B * (H > R ? H : R));
    ALLOC(m->srcT, (size_t)R * B);
    ALLOC(m->dsrcT, (size_t)R * B);
    m->batch = B;
    return 0;
}

/* ---- profiling ---------------------------------------------------------- */

static int nstages(const amdim_model *m) { return m->nlayers + 4; }

void amdim_model_profile(amdim_model *m, int on)
{
    if (on && !m->prof_f) {
        int n = nstages(m);
        m->prof_f = calloc((size_t)n, sizeof(double));
        m->prof_b = calloc((size_t)n, sizeof(double));
        m->prof_ff = calloc((size_t)n, sizeof(double));
        m->prof_fb = calloc((size_t)n, sizeof(double));
        m->prof_name = calloc((size_t)n, sizeof *m->prof_name);
        if (!m->prof_f || !m->prof_b || !m->prof_ff || !m->prof_fb || !m->prof_name)
            return;
        for (int l = 0; l < m->nlayers; l++) {
            const layer *L = &m->layers[l];
            const char *pn = m->params[L->w1 >= 0 ? L->w1 : L->bn.p].name + strlen("encoder.module.");
            const char *end = strstr(pn, L->type == L_STEM ? ".conv.weight" : L->type == L_RES ? ".conv1.weight" : ".bn.");
            snprintf(m->prof_name[l], sizeof m->prof_name[l], "%.*s %s %dx%d", (int)(end ? end - pn : 20), pn,
                     L->type == L_STEM ? "conv" : L->type == L_RES ? "res" : "bn", L->hout, L->hout);
        }
        snprintf(m->prof_name[m->nlayers], 96, "rkhs_block_5 head 5x5");
        snprintf(m->prof_name[m->nlayers + 1], 96, "rkhs_block_7 head 7x7");
        snprintf(m->prof_name[m->nlayers + 2], 96, "objective (6 directions)");
        snprintf(m->prof_name[m->nlayers + 3], 96, "online probes");
    }
    m->profile = on && m->prof_f;
}

int amdim_model_profile_count(const amdim_model *m) { return m->prof_f ? nstages(m) : 0; }

void amdim_model_profile_get(const amdim_model *m, int i, const char **name, double *f, double *b, double *ff,
                             double *fb)
{
    *name = m->prof_name[i];
    *f = m->prof_f[i];
    *b = m->prof_b[i];
    *ff = m->prof_ff[i];
    *fb = m->prof_fb[i];
}

/* Multiply-add count x 2 of a convolution over the batch. */
static double conv_flops(int cin, int cout, int k, int ho, int B) { return 2.0 * cin * cout * k * k * (double)ho * ho * B; }

static double layer_flops(const layer *L, int B)
{
    if (L->type == L_STEM)
        return conv_flops(L->cin, L->cout, L->k, L->hout, B);
    if (L->type == L_RES)
        return conv_flops(L->cin, L->cout, L->k, L->hout, B) + conv_flops(L->cout, L->cout, 1, L->hout, B);
    return 0;
}

static double head_flops(const head *h, int B)
{
    return 2 * conv_flops(h->cin, h->cout, 1, h->hw, B) + conv_flops(h->cout, h->cout, 1, h->hw, B);
}

static void prof_add(amdim_model *m, int stage, int backward, double t0, double flops)
{
    if (!m->profile)
        return;
    double dt = amdim_now() - t0;
    if (backward) {
        m->prof_b[stage] += dt;
        m->prof_fb[stage] += flops;
    } else {
        m->prof_f[stage] += dt;
        m->prof_ff[stage] += flops;
    }
}

/* ---- encoder ------------------------------------------------------------ */

static float *W(amdim_model *m, int i) { return m->params[i].w; }
static float *G(amdim_model *m, int i) { return m->params[i].g; }

static void layer_forward(amdim_model *m, const layer *L, layer_cache *c, const float *x, int B, int train)
{
    size_t outn = (size_t)L->cout * B * L->hout * L->hout;
    switch (L->type) {
    case L_STEM: {
        const float *in = x;
        int h = L->hin;
        if (L->pad) {
            reflect_pad_forward(x, L->cin, B, L->hin, L->hin, L->pad, c->padded);
            in = c->padded;
            h += 2 * L->pad;
        }
        conv2d_forward(in, L->cin, B, h, h, W(m, L->w1), W(m, L->b1), L->cout, L->k, L->s, c->out, &m->scr);
        relu_forward(c->out, outn);
        break;
    }
    case L_RES: {
        conv2d_forward(x, L->cin, B, L->hin, L->hin, W(m, L->w1), NULL, L->cout, L->k, L->s, c->h1, &m->scr);
        if (L->bn.on) {
            bn_params bp = bn_view(m, L->bn);
            size_t cnt = (size_t)B * L->hout * L->hout;
            if (train)
                batchnorm_forward_train(c->h1, L->cout, cnt, &bp, c->r, c->mean, c->istd);
            else
                batchnorm_forward_eval(c->h1, L->cout, cnt, &bp, c->r);
        } else {
            memcpy(c->r, c->h1, outn * sizeof(float));
        }
        relu_forward(c->r, outn);
        conv2d_forward(c->r, L->cout, B, L->hout, L->hout, W(m, L->w2), NULL, L->cout, 1, 1, c->out, &m->scr);
        float *sc = op_scratch_get(&m->scr2, outn);
        avgpool_pad_forward(x, L->cin, B, L->hin, L->hin, L->k, L->s, L->cout, sc);
        for (size_t i = 0; i < outn; i++)
            c->out[i] += sc[i];
        break;
    }
    default: /* L_BN */
        if (L->bn.on) {
            bn_params bp = bn_view(m, L->bn);
            size_t cnt = (size_t)B * L->hout * L->hout;
            if (train)
                batchnorm_forward_train(x, L->cout, cnt, &bp, c->out, c->mean, c->istd);
            else
                batchnorm_forward_eval(x, L->cout, cnt, &bp, c->out);
        } else {
            memcpy(c->out, x, outn * sizeof(float));
        }
    }
}

/* dy: gradient of the layer output; dx: gradient of its input (NULL for
 * the first layer). dy may be modified. */
static void layer_backward(amdim_model *m, const layer *L, layer_cache *c, const float *x, int B, float *dy, float *dx)
{
    size_t outn = (size_t)L->cout * B * L->hout * L->hout;
    switch (L->type) {
    case L_STEM: {
        relu_backward(c->out, dy, outn);
        const float *in = L->pad ? c->padded : x;
        int h = L->hin + 2 * L->pad;
        conv2d_backward(in, L->cin, B, h, h, W(m, L->w1), L->cout, L->k, L->s, dy, L->pad ? NULL : dx, G(m, L->w1),
                        G(m, L->b1), &m->scr);
        break;
    }
    case L_RES: {
        float *dr = op_scratch_get(&m->scr2, outn);
        conv2d_backward(c->r, L->cout, B, L->hout, L->hout, W(m, L->w2), L->cout, 1, 1, dy, dr, G(m, L->w2), NULL,
                        &m->scr);
        relu_backward(c->r, dr, outn);
        if (L->bn.on) {
            bn_params bp = bn_view(m, L->bn);
            batchnorm_backward(c->h1, L->cout, (size_t)B * L->hout * L->hout, &bp, c->mean, c->istd, dr, dr);
        }
        conv2d_backward(x, L->cin, B, L->hin, L->hin, W(m, L->w1), L->cout, L->k, L->s, dr, dx, G(m, L->w1), NULL,
                        &m->scr);
        if (dx)
            avgpool_pad_backward(dy, L->cin, B, L->hin, L->hin, L->k, L->s, dx);
        break;
    }
    default:
        if (L->bn.on) {
            bn_params bp = bn_view(m, L->bn);
            batchnorm_backward(x, L->cout, (size_t)B * L->hout * L->hout, &bp, c->mean, c->istd, dy, dx);
        } else {
            memcpy(dx, dy, outn * sizeof(float));
        }
    }
}

static void head_forward(amdim_model *m, const head *h, head_cache *c, const float *x, int B, int train)
{
    size_t n = (size_t)h->cout * B * h->hw * h->hw, cnt = (size_t)B * h->hw * h->hw;
    conv2d_forward(x, h->cin, B, h->hw, h->hw, W(m, h->w1), NULL, h->cout, 1, 1, c->h1, &m->scr);
    if (h->bn1.on) {
        bn_params bp = bn_view(m, h->bn1);
        if (train)
            batchnorm_forward_train(c->h1, h->cout, cnt, &bp, c->r, c->mean1, c->istd1);
        else
            batchnorm_forward_eval(c->h1, h->cout, cnt, &bp, c->r);
    } else {
        memcpy(c->r, c->h1, n * sizeof(float));
    }
    relu_forward(c->r, n);
    conv2d_forward(c->r, h->cout, B, h->hw, h->hw, W(m, h->w2), NULL, h->cout, 1, 1, c->sum, &m->scr);
    float *sc = op_scratch_get(&m->scr2, n);
    conv2d_forward(x, h->cin, B, h->hw, h->hw, W(m, h->ws), W(m, h->bs), h->cout, 1, 1, sc, &m->scr);
    for (size_t i = 0; i < n; i++)
        c->sum[i] += sc[i];
    bn_params bo = bn_view(m, h->bn_out);
    if (train)
        batchnorm_forward_train(c->sum, h->cout, cnt, &bo, c->out, c->mean2, c->istd2);
    else
        batchnorm_forward_eval(c->sum, h->cout, cnt, &bo, c->out);
}

/* dy is the gradient of the head output (modified); dx receives the
 * gradient of the head input (overwritten). */
static void head_backward(amdim_model *m, const head *h, head_cache *c, const float *x, int B, float *dy, float *dx)
{
    size_t n = (size_t)h->cout * B * h->hw * h->hw, cnt = (size_t)B * h->hw * h->hw;
    bn_params bo = bn_view(m, h->bn_out);
    batchnorm_backward(c->sum, h->cout, cnt, &bo, c->mean2, c->istd2, dy, dy); /* dy = d sum */
    size_t nin = (size_t)h->cin * B * h->hw * h->hw;
    float *dx2 = op_scratch_get(&m->scr2, nin + n);
    float *dr = dx2 + nin;
    conv2d_backward(x, h->cin, B, h->hw, h->hw, W(m, h->ws), h->cout, 1, 1, dy, dx, G(m, h->ws), G(m, h->bs), &m->scr);
    conv2d_backward(c->r, h->cout, B, h->hw, h->hw, W(m, h->w2), h->cout, 1, 1, dy, dr, G(m, h->w2), NULL, &m->scr);
    relu_backward(c->r, dr, n);
    if (h->bn1.on) {
        bn_params bp = bn_view(m, h->bn1);
        batchnorm_backward(c->h1, h->cout, cnt, &bp, c->mean1, c->istd1, dr, dr);
    }
    conv2d_backward(x, h->cin, B, h->hw, h->hw, W(m, h->w1), h->cout, 1, 1, dr, dx2, G(m, h->w1), NULL, &m->scr);
    for (size_t i = 0; i < nin; i++)
        dx[i] += dx2[i];
}

static void encoder_forward(amdim_model *m, int v, int B, int train)
{
    const float *in = m->x[v];
    for (int l = 0; l < m->nlayers; l++) {
        double t0 = m->profile ? amdim_now() : 0;
        layer_forward(m, &m->layers[l], &m->lc[v][l], in, B, train);
        prof_add(m, l, 0, t0, layer_flops(&m->layers[l], B));
        in = m->lc[v][l].out;
    }
    for (int h = 0; h < 2; h++) {
        double t0 = m->profile ? amdim_now() : 0;
        head_forward(m, &m->heads[h], &m->hc[v][h], m->lc[v][h ? m->i7 : m->i5].out, B, train);
        prof_add(m, m->nlayers + h, 0, t0, head_flops(&m->heads[h], B));
    }
}

static void encoder_backward(amdim_model *m, int v, int B)
{
    /* Heads first: their input gradients join the encoder's at i5 and i7. */
    for (int h = 0; h < 2; h++) {
        double t0 = m->profile ? amdim_now() : 0;
        head_backward(m, &m->heads[h], &m->hc[v][h], m->lc[v][h ? m->i7 : m->i5].out, B, h ? m->dr7[v] : m->dr5[v],
                      m->dhead[h]);
        prof_add(m, m->nlayers + h, 1, t0, 2 * head_flops(&m->heads[h], B));
    }
    float *dy = m->grad_a, *dx = m->grad_b;
    const layer *last = &m->layers[m->nlayers - 1];
    memcpy(dy, m->dr1[v], (size_t)last->cout * B * sizeof(float));
    for (int l = m->nlayers - 1; l >= 0; l--) {
        const layer *L = &m->layers[l];
        size_t outn = (size_t)L->cout * B * L->hout * L->hout;
        if (l == m->i5)
            for (size_t i = 0; i < outn; i++)
                dy[i] += m->dhead[0][i];
        if (l == m->i7)
            for (size_t i = 0; i < outn; i++)
                dy[i] += m->dhead[1][i];
        const float *x = l ? m->lc[v][l - 1].out : m->x[v];
        double t0 = m->profile ? amdim_now() : 0;
        layer_backward(m, L, &m->lc[v][l], x, B, dy, l ? dx : NULL);
        prof_add(m, l, 1, t0, (l ? 2 : 1) * layer_flops(L, B));
        float *t = dy;
        dy = dx;
        dx = t;
    }
}

/* ---- classifiers -------------------------------------------------------- */

static void classifiers_forward(amdim_model *m, int n, const float *mask_in, const float *mask_hidden, int train)
{
    const amdim_model_config *c = &m->cfg;
    int R = c->n_rkhs, H = c->mlp_hidden, K = c->n_classes;
    const float *in = m->feat;
    if (train) {
        dropout_forward(m->feat, mask_in, 0.2f, (size_t)n * R, m->mlp_h0);
        in = m->mlp_h0;
    }
    linear_forward(in, n, R, W(m, m->mlp_w1), NULL, H, m->mlp_z1);
    bn_ref br = {1, m->mlp_bn};
    bn_params bp = bn_view(m, br);
    if (train)
        batchnorm1d_forward_train(m->mlp_z1, n, H, &bp, m->mlp_a1, m->mlp_mean, m->mlp_istd, &m->scr);
    else
        batchnorm1d_forward_eval(m->mlp_z1, n, H, &bp, m->mlp_a1);
    relu_forward(m->mlp_a1, (size_t)n * H);
    const float *h2 = m->mlp_a1;
    if (train) {
        dropout_forward(m->mlp_a1, mask_hidden, 0.2f, (size_t)n * H, m->mlp_h2);
        h2 = m->mlp_h2;
    }
    linear_forward(h2, n, H, W(m, m->mlp_w2), W(m, m->mlp_b2), K, m->logits[0]);
    linear_forward(m->feat, n, R, W(m, m->lin_w), W(m, m->lin_b), K, m->logits[1]);
}

static void classifiers_backward(amdim_model *m, int n, const int32_t *labels2, const float *mask_hidden,
                                 amdim_step_stats *st)
{
    const amdim_model_config *c = &m->cfg;
    int R = c->n_rkhs, H = c->mlp_hidden, K = c->n_classes;
    int corr, lab;
    st->cls_mlp = classifier_loss(m->logits[0], n, K, labels2, m->dlogits, 1.0f, &corr, &lab);
    st->correct_mlp = corr;
    st->labelled = lab;
    linear_backward(m->mlp_h2, n, H, W(m, m->mlp_w2), K, m->dlogits, m->dtmp, G(m, m->mlp_w2), G(m, m->mlp_b2));
    dropout_backward(m->dtmp, mask_hidden, 0.2f, (size_t)n * H, m->dtmp);
    relu_backward(m->mlp_a1, m->dtmp, (size_t)n * H);
    bn_ref br = {1, m->mlp_bn};
    bn_params bp = bn_view(m, br);
    batchnorm1d_backward(m->mlp_z1, n, H, &bp, m->mlp_mean, m->mlp_istd, m->dtmp, m->dtmp2, &m->scr);
    linear_backward(m->mlp_h0, n, R, W(m, m->mlp_w1), H, m->dtmp2, NULL, G(m, m->mlp_w1), NULL);
    st->cls_lin = classifier_loss(m->logits[1], n, K, labels2, m->dlogits, 1.0f, &corr, NULL);
    st->correct_lin = corr;
    linear_backward(m->feat, n, R, W(m, m->lin_w), K, m->dlogits, NULL, G(m, m->lin_w), G(m, m->lin_b));
}

/* ---- the step ------------------------------------------------------------ */

static void nchw_to_cnhw(const float *in, int B, int C, int HW, float *out)
{
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            memcpy(out + ((size_t)c * B + b) * HW, in + ((size_t)b * C + c) * HW, (size_t)HW * sizeof(float));
}

static void normalise_views(const amdim_model *m, const uint8_t *nhwc, int B, float *cnhw)
{
    int S = m->cfg.encoder_size;
    size_t plane = (size_t)S * S;
    for (int c = 0; c < 3; c++) {
        float scale = 1.0f / (255.0f * m->cfg.std[c]), shift = m->cfg.mean[c] / m->cfg.std[c];
        for (int b = 0; b < B; b++) {
            const uint8_t *src = nhwc + (size_t)b * plane * 3 + c;
            float *dst = cnhw + ((size_t)c * B + b) * plane;
            for (size_t i = 0; i < plane; i++)
                dst[i] = (float)src[3 * i] * scale - shift;
        }
    }
}

/* Losses and gradients of both views' outputs (already computed). */
static void objectives(amdim_model *m, int B, const int32_t *src5, amdim_step_stats *st)
{
    const amdim_model_config *c = &m->cfg;
    int R = c->n_rkhs;
    float *r1[2], *r5[2], *r7[2];
    for (int v = 0; v < 2; v++) {
        r1[v] = m->lc[v][m->nlayers - 1].out; /* (R, B) */
        r5[v] = m->hc[v][0].out;              /* (R, B*25) */
        r7[v] = m->hc[v][1].out;              /* (R, B*49) */
        memset(m->dr1[v], 0, (size_t)R * B * sizeof(float));
        memset(m->dr5[v], 0, (size_t)R * B * 25 * sizeof(float));
        memset(m->dr7[v], 0, (size_t)R * B * 49 * sizeof(float));
    }
    double reg = 0, l;
    double reg1;
    st->nce_1t5 = st->nce_1t7 = st->nce_5t5 = 0;
    for (int a = 0; a < 2; a++) {
        int b = 1 - a;
        /* r1 of view a -> r5 / r7 locations of view b; each direction weighs 0.5 */
        l = nce_direction(r1[a], r5[b], R, B, 25, c->tclip, c->objective, 0.5f, 0.5f, &reg1, m->dr1[a], m->dr5[b], &m->nce);
        st->nce_1t5 += 0.5 * l;
        reg += reg1;
        l = nce_direction(r1[a], r7[b], R, B, 49, c->tclip, c->objective, 0.5f, 0.5f, &reg1, m->dr1[a], m->dr7[b], &m->nce);
        st->nce_1t7 += 0.5 * l;
        reg += reg1;
        /* one random 5x5 location of view a -> r5 of view b */
        const int32_t *idx = src5 + (size_t)a * B;
        for (int ch = 0; ch < R; ch++)
            for (int i = 0; i < B; i++)
                m->srcT[(size_t)ch * B + i] = r5[a][((size_t)ch * B + i) * 25 + idx[i]];
        memset(m->dsrcT, 0, (size_t)R * B * sizeof(float));
        l = nce_direction(m->srcT, r5[b], R, B, 25, c->tclip, c->objective, 0.5f, 0.5f, &reg1, m->dsrcT, m->dr5[b], &m->nce);
        st->nce_5t5 += 0.5 * l;
        reg += reg1;
        for (int ch = 0; ch < R; ch++)
            for (int i = 0; i < B; i++)
                m->dr5[a][((size_t)ch * B + i) * 25 + idx[i]] += m->dsrcT[(size_t)ch * B + i];
    }
    st->reg = 0.5 * reg;
}

static void zero_grads(amdim_model *m)
{
    for (int i = 0; i < m->nparams; i++)
        if (m->params[i].g)
            memset(m->params[i].g, 0, m->params[i].size * sizeof(float));
}

static int step_core(amdim_model *m, int B, const int32_t *labels, const int32_t *src5, const float *mask_in,
                     const float *mask_hidden, amdim_step_stats *st)
{
    const amdim_model_config *c = &m->cfg;
    int R = c->n_rkhs;
    memset(st, 0, sizeof *st);
    zero_grads(m);
    encoder_forward(m, 0, B, 1);
    encoder_forward(m, 1, B, 1);
    double t0 = m->profile ? amdim_now() : 0;
    objectives(m, B, src5, st);
    /* 6 directions; scores: B x B*L x C, backward twice that */
    double nf = 2.0 * 2.0 * B * B * (25 + 49 + 25) * (double)R;
    prof_add(m, m->nlayers + 2, 0, t0, nf);
    if (m->profile)
        m->prof_fb[m->nlayers + 2] += 2 * nf;
    /* classifiers on r1 of both views, gradient stopped */
    for (int v = 0; v < 2; v++) {
        const float *r1 = m->lc[v][m->nlayers - 1].out;
        for (int i = 0; i < B; i++)
            for (int ch = 0; ch < R; ch++)
                m->feat[((size_t)v * B + i) * R + ch] = r1[(size_t)ch * B + i];
    }
    int32_t *labels2 = malloc((size_t)2 * B * sizeof *labels2);
    if (!labels2)
        return MFAIL(AMDIM_E_NOMEM, "out of memory");
    memcpy(labels2, labels, (size_t)B * sizeof *labels);
    memcpy(labels2 + B, labels, (size_t)B * sizeof *labels);
    t0 = m->profile ? amdim_now() : 0;
    classifiers_forward(m, 2 * B, mask_in, mask_hidden, 1);
    double cf = 2.0 * 2 * B * ((double)R * c->mlp_hidden + (double)c->mlp_hidden * c->n_classes + (double)R * c->n_classes);
    prof_add(m, m->nlayers + 3, 0, t0, cf);
    t0 = m->profile ? amdim_now() : 0;
    classifiers_backward(m, 2 * B, labels2, mask_hidden, st);
    prof_add(m, m->nlayers + 3, 1, t0, cf);
    free(labels2);
    encoder_backward(m, 0, B);
    encoder_backward(m, 1, B);
    st->total = st->nce_1t5 + st->nce_1t7 + st->nce_5t5 + st->reg + st->cls_mlp + st->cls_lin;
    m->steps++;
    return AMDIM_OK;
}

int amdim_model_forward_backward(amdim_model *m, const float *x1, const float *x2, const int32_t *labels, int B,
                                 const int32_t *src5, const float *mask_in, const float *mask_hidden,
                                 amdim_step_stats *st)
{
    if (B < 2)
        return MFAIL(AMDIM_E_INVALID, "batch %d: NCE needs at least 2 images", B);
    for (int i = 0; i < 2 * B; i++)
        if (src5[i] < 0 || src5[i] >= 25)
            return MFAIL(AMDIM_E_INVALID, "5x5 source location %d out of range", src5[i]);
    if (ensure_buffers(m, B))
        return MFAIL(AMDIM_E_NOMEM, "out of memory for batch %d", B);
    int S = m->cfg.encoder_size;
    nchw_to_cnhw(x1, B, 3, S * S, m->x[0]);
    nchw_to_cnhw(x2, B, 3, S * S, m->x[1]);
    return step_core(m, B, labels, src5, mask_in, mask_hidden, st);
}

int amdim_model_train_step(amdim_model *m, const uint8_t *view1, const uint8_t *view2, const int32_t *labels, int B,
                           int epoch, amdim_step_stats *st)
{
    if (B < 2)
        return MFAIL(AMDIM_E_INVALID, "batch %d: NCE needs at least 2 images", B);
    if (ensure_buffers(m, B))
        return MFAIL(AMDIM_E_NOMEM, "out of memory for batch %d", B);
    const amdim_model_config *c = &m->cfg;
    normalise_views(m, view1, B, m->x[0]);
    normalise_views(m, view2, B, m->x[1]);
    /* This step's draws: counter-based, keyed by the update count. */
    amdim_rng rng;
    amdim_rng_init(&rng, c->seed, UINT64_MAX - 2, m->updates);
    int32_t *src5 = malloc((size_t)2 * B * sizeof *src5);
    float *mask_in = malloc((size_t)2 * B * c->n_rkhs * sizeof(float));
    float *mask_hid = malloc((size_t)2 * B * c->mlp_hidden * sizeof(float));
    int st_code;
    if (!src5 || !mask_in || !mask_hid) {
        st_code = MFAIL(AMDIM_E_NOMEM, "out of memory");
    } else {
        for (int i = 0; i < 2 * B; i++)
            src5[i] = amdim_rng_int(&rng, 0, 24);
        for (size_t i = 0; i < (size_t)2 * B * c->n_rkhs; i++)
            mask_in[i] = amdim_rng_uniform(&rng, 0, 1) >= 0.2f;
        for (size_t i = 0; i < (size_t)2 * B * c->mlp_hidden; i++)
            mask_hid[i] = amdim_rng_uniform(&rng, 0, 1) >= 0.2f;
        st_code = step_core(m, B, labels, src5, mask_in, mask_hid, st);
        if (st_code == AMDIM_OK)
            amdim_model_adam_step(m, epoch);
    }
    free(src5);
    free(mask_in);
    free(mask_hid);
    return st_code;
}

/* ---- Adam --------------------------------------------------------------- */

float amdim_model_learning_rate(const amdim_model *m, int epoch)
{
    const amdim_model_config *c = &m->cfg;
    double lr = c->lr;
    for (int i = 0; i < c->n_milestones; i++)
        if (epoch >= c->milestones[i])
            lr *= c->lr_decay;
    if (c->warmup > 0 && m->updates < (uint64_t)c->warmup)
        lr *= (double)(m->updates + 1) / c->warmup;
    return (float)lr;
}

void amdim_model_adam_step(amdim_model *m, int epoch)
{
    const amdim_model_config *c = &m->cfg;
    float lr = amdim_model_learning_rate(m, epoch);
    m->updates++;
    double bc1 = 1.0 - pow(c->beta1, (double)m->updates), bc2 = 1.0 - pow(c->beta2, (double)m->updates);
    float step = (float)(lr / bc1), sbc2 = (float)sqrt(bc2);
    for (int i = 0; i < m->nparams; i++) {
        param *p = &m->params[i];
        if (p->buffer || !p->used || (m->probes_only && strncmp(p->name, "evaluator.", 10) != 0))
            continue;
        for (size_t k = 0; k < p->size; k++) {
            float g = p->g[k] + c->weight_decay * p->w[k];
            p->m[k] = c->beta1 * p->m[k] + (1 - c->beta1) * g;
            p->v[k] = c->beta2 * p->v[k] + (1 - c->beta2) * g * g;
            float denom = sqrtf(p->v[k]) / sbc2 + c->eps;
            p->w[k] -= step * p->m[k] / denom;
        }
    }
}

/* ---- outputs and evaluation --------------------------------------------- */

int amdim_model_output(const amdim_model *m, int view, int which, float *out)
{
    if (!m->batch || view < 0 || view > 1)
        return AMDIM_E_INVALID;
    int B = m->batch, R = m->cfg.n_rkhs, hw;
    const float *src;
    if (which == 1) {
        src = m->lc[view][m->nlayers - 1].out;
        hw = 1;
    } else if (which == 5) {
        src = m->hc[view][0].out;
        hw = 25;
    } else if (which == 7) {
        src = m->hc[view][1].out;
        hw = 49;
    } else {
        return AMDIM_E_INVALID;
    }
    for (int b = 0; b < B; b++)
        for (int c = 0; c < R; c++)
            memcpy(out + ((size_t)b * R + c) * hw, src + ((size_t)c * B + b) * hw, (size_t)hw * sizeof(float));
    return AMDIM_OK;
}

const float *amdim_model_logits(const amdim_model *m, int head) { return m->logits[head ? 1 : 0]; }

int amdim_model_evaluate(amdim_model *m, const uint8_t *images, int B, float *features, float *lm, float *ll)
{
    if (B < 1)
        return MFAIL(AMDIM_E_INVALID, "empty batch");
    if (ensure_buffers(m, B))
        return MFAIL(AMDIM_E_NOMEM, "out of memory for batch %d", B);
    int R = m->cfg.n_rkhs, K = m->cfg.n_classes;
    normalise_views(m, images, B, m->x[0]);
    const float *in = m->x[0];
    for (int l = 0; l < m->nlayers; l++) {
        layer_forward(m, &m->layers[l], &m->lc[0][l], in, B, 0);
        in = m->lc[0][l].out;
    }
    for (int i = 0; i < B; i++)
        for (int ch = 0; ch < R; ch++)
            m->feat[(size_t)i * R + ch] = in[(size_t)ch * B + i];
    if (features)
        memcpy(features, m->feat, (size_t)B * R * sizeof(float));
    if (lm || ll) {
        classifiers_forward(m, B, NULL, NULL, 0);
        if (lm)
            memcpy(lm, m->logits[0], (size_t)B * K * sizeof(float));
        if (ll)
            memcpy(ll, m->logits[1], (size_t)B * K * sizeof(float));
    }
    return AMDIM_OK;
}

/* ---- evaluation support and the classifier-only phase ------------------- */

static void draw_masks(amdim_model *m, amdim_rng *rng, int n, float *mask_in, float *mask_hid)
{
    for (size_t i = 0; i < (size_t)n * m->cfg.n_rkhs; i++)
        mask_in[i] = amdim_rng_uniform(rng, 0, 1) >= 0.2f;
    for (size_t i = 0; i < (size_t)n * m->cfg.mlp_hidden; i++)
        mask_hid[i] = amdim_rng_uniform(rng, 0, 1) >= 0.2f;
}

int amdim_model_refresh_bn(amdim_model *m, const uint8_t *images, int B)
{
    if (B < 2)
        return MFAIL(AMDIM_E_INVALID, "BatchNorm needs at least 2 images");
    if (ensure_buffers(m, B))
        return MFAIL(AMDIM_E_NOMEM, "out of memory for batch %d", B);
    int R = m->cfg.n_rkhs;
    normalise_views(m, images, B, m->x[0]);
    encoder_forward(m, 0, B, 1);
    const float *r1 = m->lc[0][m->nlayers - 1].out;
    for (int i = 0; i < B; i++)
        for (int ch = 0; ch < R; ch++)
            m->feat[(size_t)i * R + ch] = r1[(size_t)ch * B + i];
    float *mi = malloc((size_t)B * R * sizeof(float)), *mh = malloc((size_t)B * m->cfg.mlp_hidden * sizeof(float));
    if (!mi || !mh) {
        free(mi);
        free(mh);
        return MFAIL(AMDIM_E_NOMEM, "out of memory");
    }
    amdim_rng rng;
    amdim_rng_init(&rng, m->cfg.seed, UINT64_MAX - 3, m->steps++);
    draw_masks(m, &rng, B, mi, mh);
    classifiers_forward(m, B, mi, mh, 1);
    free(mi);
    free(mh);
    return AMDIM_OK;
}

void amdim_model_reset_probes(amdim_model *m, uint64_t seed)
{
    amdim_rng rng;
    for (int i = 0; i < m->nparams; i++) {
        param *p = &m->params[i];
        if (strncmp(p->name, "evaluator.", 10) != 0)
            continue;
        if (p->buffer) {
            float v = strstr(p->name, "running_var") ? 1.0f : 0.0f;
            for (size_t k = 0; k < p->size; k++)
                p->w[k] = v;
            continue;
        }
        memset(p->m, 0, p->size * sizeof(float));
        memset(p->v, 0, p->size * sizeof(float));
        if (strstr(p->name, "block_forward.3.")) { /* BatchNorm1d affine */
            float v = strstr(p->name, ".weight") ? 1.0f : 0.0f;
            for (size_t k = 0; k < p->size; k++)
                p->w[k] = v;
            continue;
        }
        amdim_rng_init(&rng, seed, UINT64_MAX - 4, (uint64_t)i);
        int is_bias = strcmp(strrchr(p->name, '.') + 1, "bias") == 0;
        size_t fan_in = is_bias ? m->params[i - 1].size / (size_t)m->params[i - 1].shape[0]
                                : p->size / (size_t)p->shape[0];
        float bound = 1.0f / sqrtf((float)fan_in);
        for (size_t k = 0; k < p->size; k++)
            p->w[k] = amdim_rng_uniform(&rng, -bound, bound);
    }
    m->probes_only = 1;
}

void amdim_model_freeze_encoder(amdim_model *m) { m->probes_only = 1; }

int amdim_model_train_probes_step(amdim_model *m, const uint8_t *view1, const uint8_t *view2, const int32_t *labels,
                                  int B, int epoch, amdim_step_stats *st)
{
    if (B < 2)
        return MFAIL(AMDIM_E_INVALID, "batch %d: need at least 2 images", B);
    if (ensure_buffers(m, B))
        return MFAIL(AMDIM_E_NOMEM, "out of memory for batch %d", B);
    const amdim_model_config *c = &m->cfg;
    int R = c->n_rkhs;
    memset(st, 0, sizeof *st);
    zero_grads(m);
    /* frozen encoder: eval mode, both views' features */
    for (int v = 0; v < 2; v++) {
        normalise_views(m, v ? view2 : view1, B, m->x[v]);
        const float *in = m->x[v];
        for (int l = 0; l < m->nlayers; l++) {
            layer_forward(m, &m->layers[l], &m->lc[v][l], in, B, 0);
            in = m->lc[v][l].out;
        }
        for (int i = 0; i < B; i++)
            for (int ch = 0; ch < R; ch++)
                m->feat[((size_t)v * B + i) * R + ch] = in[(size_t)ch * B + i];
    }
    amdim_rng rng;
    amdim_rng_init(&rng, c->seed, UINT64_MAX - 5, m->updates);
    float *mi = malloc((size_t)2 * B * R * sizeof(float)), *mh = malloc((size_t)2 * B * c->mlp_hidden * sizeof(float));
    int32_t *labels2 = malloc((size_t)2 * B * sizeof *labels2);
    if (!mi || !mh || !labels2) {
        free(mi);
        free(mh);
        free(labels2);
        return MFAIL(AMDIM_E_NOMEM, "out of memory");
    }
    draw_masks(m, &rng, 2 * B, mi, mh);
    memcpy(labels2, labels, (size_t)B * sizeof *labels);
    memcpy(labels2 + B, labels, (size_t)B * sizeof *labels);
    classifiers_forward(m, 2 * B, mi, mh, 1);
    classifiers_backward(m, 2 * B, labels2, mh, st);
    st->total = st->cls_mlp + st->cls_lin;
    free(mi);
    free(mh);
    free(labels2);
    m->probes_only = 1;
    amdim_model_adam_step(m, epoch);
    return AMDIM_OK;
}
