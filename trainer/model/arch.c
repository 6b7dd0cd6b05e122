/* The model description (see arch.h). */
#include "arch_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_philox.h"

/* ---- configuration ------------------------------------------------------ */

void amdim_model_config_default(amdim_model_config *c, int size)
{
    /* per-preset normalisation, 0..1 scale (docs/spec.md §3.7) */
    static const float mean[3][3] = {{125.3f / 255, 123.0f / 255, 113.9f / 255}, {0.43f, 0.42f, 0.39f},
                                     {0.485f, 0.456f, 0.406f}};
    static const float sd[3][3] = {{63.0f / 255, 62.1f / 255, 66.7f / 255}, {0.27f, 0.26f, 0.27f},
                                   {0.229f, 0.224f, 0.225f}};
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
    c->mixtures = 1;
    c->mix_tau = 1.0f;
    c->mix_entropy = 1.0f;
    int p = size == 32 ? 0 : size == 64 ? 1 : 2;
    memcpy(c->mean, mean[p], sizeof c->mean);
    memcpy(c->std, sd[p], sizeof c->std);
}

int amdim_model_config_check(const amdim_model_config *c, char *err, size_t n)
{
    if (c->encoder_size != 32 && c->encoder_size != 64 && c->encoder_size != 128)
        return amdim_fail(err, n, AMDIM_E_INVALID, "encoder size %d (32, 64 or 128)", c->encoder_size);
    int top = (c->encoder_size == 32 ? 4 : 8) * c->ndf;
    if (c->ndf < 1 || c->ndf > 4096 || c->n_depth < 1 || c->n_depth > 100 || c->n_rkhs < top || c->n_rkhs > 65536)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "ndf %d, n_depth %d, n_rkhs %d: need ndf 1..4096, depth 1..100 and n_rkhs %d..65536 (the last residual unit cannot shrink channels)",
                          c->ndf, c->n_depth, c->n_rkhs, top);
    if (c->n_classes < 1 || c->n_classes > 4096 || c->mlp_hidden < 1 || c->mlp_hidden > 65536)
        return amdim_fail(err, n, AMDIM_E_INVALID, "classes must be 1..4096 and the MLP hidden size 1..65536");
    if (!(c->tclip > 0) || c->objective < 0 || c->objective > 2)
        return amdim_fail(err, n, AMDIM_E_INVALID, "tclip must be > 0 and the objective nce, jsd or dv");
    if (!(c->lr > 0) || !(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1) || !(c->eps > 0) ||
        !(c->weight_decay >= 0) || c->warmup < 0 || c->n_milestones < 0 || c->n_milestones > 8 || !(c->lr_decay > 0))
        return amdim_fail(err, n, AMDIM_E_INVALID, "bad optimiser settings");
    if (c->mixtures < 1 || c->mixtures > 16 || !(c->mix_tau > 0) || !(c->mix_entropy >= 0) ||
        c->probe_features < 0 || c->probe_features > 1)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "mixtures %d, tau %g, alpha %g, probe features %d: need K 1..16, tau > 0, alpha >= 0, features r1 or mixture-mean",
                          c->mixtures, c->mix_tau, c->mix_entropy, c->probe_features);
    if (c->mixtures > 1 && c->objective != AMDIM_OBJECTIVE_NCE)
        return amdim_fail(err, n, AMDIM_E_INVALID, "mixtures need the nce objective");
    if (c->probe_features == 1 && c->mixtures == 1)
        return amdim_fail(err, n, AMDIM_E_INVALID, "probe features mixture-mean need mixtures > 1");
    for (int i = 0; i < 3; i++)
        if (!(c->std[i] > 0))
            return amdim_fail(err, n, AMDIM_E_INVALID, "normalisation std must be > 0");
    return AMDIM_OK;
}

/* ---- the parameter table ------------------------------------------------ */

typedef struct {
    amdim_arch *a;
    int cap, lcap, failed;
} builder;

static int add_tensor(builder *b, const char *prefix, const char *leaf, amdim_role role, int ndim, const int *shape,
                      amdim_init_kind init, int fan_in)
{
    amdim_arch *a = b->a;
    if (b->failed)
        return -1;
    if (a->ntensors == b->cap) {
        int cap = b->cap ? 2 * b->cap : 128;
        amdim_tensor *t = realloc(a->tensors, (size_t)cap * sizeof *t);
        if (!t) {
            b->failed = 1;
            return -1;
        }
        a->tensors = t;
        b->cap = cap;
    }
    amdim_tensor *t = &a->tensors[a->ntensors];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s.%s", prefix, leaf);
    t->role = role;
    t->probe = strncmp(prefix, "evaluator.", 10) == 0;
    t->has_grad = role != AMDIM_ROLE_BN_MEAN && role != AMDIM_ROLE_BN_VAR && role != AMDIM_ROLE_BN_COUNT;
    t->trainable = t->has_grad;
    t->ndim = ndim;
    t->size = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->size *= (size_t)shape[i];
    }
    t->init = init;
    t->fan_in = fan_in;
    /* every tensor starts on a 64-byte boundary (BLAS, vector loads, cuBLAS) */
    t->offset = a->weights_size;
    a->weights_size += (t->size + AMDIM_TENSOR_ALIGN - 1) / AMDIM_TENSOR_ALIGN * AMDIM_TENSOR_ALIGN;
    if (t->has_grad) {
        t->goffset = a->grads_size;
        a->grads_size += (t->size + AMDIM_TENSOR_ALIGN - 1) / AMDIM_TENSOR_ALIGN * AMDIM_TENSOR_ALIGN;
    }
    return a->ntensors++;
}

static int conv_weight(builder *b, const char *prefix, const char *leaf, int cout, int cin, int k, amdim_init_kind init)
{
    int shape[4] = {cout, cin, k, k};
    return add_tensor(b, prefix, leaf, AMDIM_ROLE_CONV_WEIGHT, 4, shape, init, cin * k * k);
}

static int bias(builder *b, const char *prefix, const char *leaf, int n, int fan_in)
{
    return add_tensor(b, prefix, leaf, AMDIM_ROLE_BIAS, 1, &n, AMDIM_INIT_FAN_IN, fan_in);
}

/* weight, bias, running_mean, running_var, num_batches_tracked */
static amdim_bn_ref batchnorm(builder *b, const char *prefix, int n, int on)
{
    amdim_bn_ref r = {on, add_tensor(b, prefix, "weight", AMDIM_ROLE_BN_WEIGHT, 1, &n, AMDIM_INIT_ONE, 0)};
    add_tensor(b, prefix, "bias", AMDIM_ROLE_BN_BIAS, 1, &n, AMDIM_INIT_ZERO, 0);
    add_tensor(b, prefix, "running_mean", AMDIM_ROLE_BN_MEAN, 1, &n, AMDIM_INIT_ZERO, 0);
    add_tensor(b, prefix, "running_var", AMDIM_ROLE_BN_VAR, 1, &n, AMDIM_INIT_ONE, 0);
    add_tensor(b, prefix, "num_batches_tracked", AMDIM_ROLE_BN_COUNT, 0, NULL, AMDIM_INIT_ZERO, 0);
    if (!b->failed && !on)
        b->a->tensors[r.t].trainable = b->a->tensors[r.t + 1].trainable = 0;
    return r;
}

static int add_layer(builder *b, amdim_layer l)
{
    amdim_arch *a = b->a;
    if (b->failed)
        return -1;
    if (a->nlayers == b->lcap) {
        int cap = b->lcap ? 2 * b->lcap : 64;
        amdim_layer *p = realloc(a->layers, (size_t)cap * sizeof *p);
        if (!p) {
            b->failed = 1;
            return -1;
        }
        a->layers = p;
        b->lcap = cap;
    }
    a->layers[a->nlayers] = l;
    return a->nlayers++;
}

/* ConvResNxN: conv1 (Kaiming-uniform a = sqrt(5) = U(+-1/sqrt(fan_in))), conv2 zero, bn1 */
static int res_unit(builder *b, const char *prefix, int cin, int cout, int k, int s, int hin)
{
    amdim_layer l = {.kind = AMDIM_LAYER_RES, .cin = cin, .cout = cout, .k = k, .s = s, .hin = hin,
                     .hout = (hin - k) / s + 1, .b1 = -1};
    char p[128];
    l.w1 = conv_weight(b, prefix, "conv1.weight", cout, cin, k, AMDIM_INIT_FAN_IN);
    l.w2 = conv_weight(b, prefix, "conv2.weight", cout, cout, 1, AMDIM_INIT_ZERO);
    snprintf(p, sizeof p, "%s.bn1.bn", prefix);
    l.bn = batchnorm(b, p, cout, b->a->cfg.use_bn);
    add_layer(b, l);
    return l.hout;
}

static int block(builder *b, int idx, int cin, int cout, int k, int s, int hin)
{
    char prefix[128];
    int h = hin;
    for (int u = 0; u < b->a->cfg.n_depth; u++) {
        snprintf(prefix, sizeof prefix, "encoder.module.layer_list.%d.layer_list.%d", idx, u);
        h = u == 0 ? res_unit(b, prefix, cin, cout, k, s, h) : res_unit(b, prefix, cout, cout, 1, 1, h);
    }
    return h;
}

/* Conv3x3 without BN: conv weight and bias, ReLU */
static int stem(builder *b, int idx, int cin, int cout, int k, int s, int pad, int hin)
{
    char prefix[128];
    snprintf(prefix, sizeof prefix, "encoder.module.layer_list.%d", idx);
    amdim_layer l = {.kind = AMDIM_LAYER_STEM, .cin = cin, .cout = cout, .k = k, .s = s, .pad = pad, .hin = hin,
                     .hout = (hin + 2 * pad - k) / s + 1, .w2 = -1};
    l.w1 = conv_weight(b, prefix, "conv.weight", cout, cin, k, AMDIM_INIT_FAN_IN);
    l.b1 = bias(b, prefix, "conv.bias", cout, cin * k * k);
    add_layer(b, l);
    return l.hout;
}

/* MaybeBatchNorm2d */
static int maybe_bn(builder *b, int idx, int c, int on, int h)
{
    char prefix[128];
    snprintf(prefix, sizeof prefix, "encoder.module.layer_list.%d.bn", idx);
    amdim_layer l = {.kind = AMDIM_LAYER_BN, .cin = c, .cout = c, .hin = h, .hout = h, .w1 = -1, .b1 = -1, .w2 = -1};
    l.bn = batchnorm(b, prefix, c, on);
    add_layer(b, l);
    return h;
}

/* FakeRKHSConvNet: conv1, bn_hid, conv2 (zero), bn_out, shortcut (identity + noise) */
static void head(builder *b, amdim_head *hd, const char *prefix, int cin, int n_rkhs, int hw, int src_layer)
{
    char p[128];
    hd->cin = cin;
    hd->cout = n_rkhs;
    hd->hw = hw;
    hd->src_layer = src_layer;
    hd->w1 = conv_weight(b, prefix, "conv1.weight", n_rkhs, cin, 1, AMDIM_INIT_FAN_IN);
    hd->w2 = conv_weight(b, prefix, "conv2.weight", n_rkhs, n_rkhs, 1, AMDIM_INIT_ZERO);
    snprintf(p, sizeof p, "%s.bn_hid.bn", prefix);
    hd->bn_hid = batchnorm(b, p, n_rkhs, b->a->cfg.use_bn);
    snprintf(p, sizeof p, "%s.bn_out.bn", prefix);
    hd->bn_out = batchnorm(b, p, n_rkhs, 1);
    hd->ws = conv_weight(b, prefix, "shortcut.weight", n_rkhs, cin, 1, AMDIM_INIT_SHORTCUT);
    hd->bs = bias(b, prefix, "shortcut.bias", n_rkhs, cin);
}

static int linear_weight(builder *b, const char *prefix, int out, int in)
{
    int shape[2] = {out, in};
    return add_tensor(b, prefix, "weight", AMDIM_ROLE_LINEAR_WEIGHT, 2, shape, AMDIM_INIT_FAN_IN, in);
}

void amdim_arch_free(amdim_arch *a)
{
    free(a->tensors);
    free(a->layers);
    memset(a, 0, sizeof *a);
}

int amdim_arch_build(amdim_arch *a, const amdim_model_config *c, char *err, size_t n)
{
    memset(a, 0, sizeof *a);
    int st = amdim_model_config_check(c, err, n);
    if (st)
        return st;
    a->cfg = *c;
    builder b = {.a = a};
    int S = c->encoder_size, ndf = c->ndf, h = S, idx = 0;
    if (S == 32) {
        h = stem(&b, idx++, 3, ndf, 3, 1, 0, h);
        char prefix[128];
        snprintf(prefix, sizeof prefix, "encoder.module.layer_list.%d", idx++);
        h = res_unit(&b, prefix, ndf, ndf, 1, 1, h);
        h = block(&b, idx++, ndf, 2 * ndf, 4, 2, h);
        h = block(&b, idx++, 2 * ndf, 4 * ndf, 2, 2, h);
    } else {
        if (S == 128) {
            h = stem(&b, idx++, 3, ndf, 5, 2, 2, h);
            h = stem(&b, idx++, ndf, ndf, 3, 1, 0, h);
        } else {
            h = stem(&b, idx++, 3, ndf, 3, 1, 0, h);
        }
        h = block(&b, idx++, ndf, 2 * ndf, 4, 2, h);
        h = block(&b, idx++, 2 * ndf, 4 * ndf, 4, 2, h);
        h = block(&b, idx++, 4 * ndf, 8 * ndf, 2, 2, h);
    }
    int top = (S == 32 ? 4 : 8) * ndf;
    AMDIM_ASSERT(h == 7);
    h = maybe_bn(&b, idx++, top, c->use_bn, h);
    a->i7 = a->nlayers - 1;
    h = block(&b, idx++, top, top, 3, 1, h);
    a->i5 = a->nlayers - 1;
    h = block(&b, idx++, top, top, 3, 1, h);
    char prefix[128];
    snprintf(prefix, sizeof prefix, "encoder.module.layer_list.%d", idx++);
    h = res_unit(&b, prefix, top, c->n_rkhs, 3, 1, h);
    h = maybe_bn(&b, idx++, c->n_rkhs, 1, h);
    AMDIM_ASSERT(h == 1);
    head(&b, &a->heads[0], "encoder.module.rkhs_block_5", top, c->n_rkhs, 5, a->i5);
    head(&b, &a->heads[1], "encoder.module.rkhs_block_7", top, c->n_rkhs, 7, a->i7);
    /* ours (the authors released no mixtures): between encoder and evaluator,
     * only when K > 1. fc2 starts near zero (training starts close to the
     * plain model) but not at zero: equal components would get equal
     * gradients and stay equal for ever. */
    a->mix = (amdim_mixture){-1, -1, -1, -1};
    if (c->mixtures > 1) {
        a->mix.w1 = linear_weight(&b, "mixture.fc1", c->n_rkhs, c->n_rkhs);
        a->mix.b1 = bias(&b, "mixture.fc1", "bias", c->n_rkhs, c->n_rkhs);
        a->mix.w2 = linear_weight(&b, "mixture.fc2", c->mixtures * c->n_rkhs, c->n_rkhs);
        a->mix.b2 = bias(&b, "mixture.fc2", "bias", c->mixtures * c->n_rkhs, c->n_rkhs);
        if (!b.failed)
            a->tensors[a->mix.w2].init = AMDIM_INIT_SMALL, a->tensors[a->mix.b2].init = AMDIM_INIT_ZERO;
    }
    /* evaluator.block_glb_mlp / block_glb_lin (nn.Sequential indices) */
    amdim_probes *p = &a->probes;
    p->mlp_w1 = linear_weight(&b, "evaluator.block_glb_mlp.block_forward.2", c->mlp_hidden, c->n_rkhs);
    p->mlp_bn = batchnorm(&b, "evaluator.block_glb_mlp.block_forward.3", c->mlp_hidden, 1);
    p->mlp_w2 = linear_weight(&b, "evaluator.block_glb_mlp.block_forward.6", c->n_classes, c->mlp_hidden);
    p->mlp_b2 = bias(&b, "evaluator.block_glb_mlp.block_forward.6", "bias", c->n_classes, c->mlp_hidden);
    p->lin_w = linear_weight(&b, "evaluator.block_glb_lin.block_forward.2", c->n_classes, c->n_rkhs);
    p->lin_b = bias(&b, "evaluator.block_glb_lin.block_forward.2", "bias", c->n_classes, c->n_rkhs);
    if (b.failed) {
        amdim_arch_free(a);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory describing the model");
    }
    /* r1 of view a -> r5 / r7 of view b; one r5 location of a -> r5 of b */
    for (int v = 0; v < 2; v++) {
        a->dirs[3 * v + 0] = (amdim_nce_direction){0, v, 1, 5, 25, c->mixtures};
        a->dirs[3 * v + 1] = (amdim_nce_direction){1, v, 1, 7, 49, c->mixtures};
        a->dirs[3 * v + 2] = (amdim_nce_direction){2, v, 5, 5, 25, 1};
    }
    return AMDIM_OK;
}

/* ---- initialisation ------------------------------------------------------ */

static void init_tensor(const amdim_tensor *t, uint64_t seed, uint32_t stream, int index, float *w)
{
    amdim_rng rng;
    amdim_rng_init(&rng, seed, stream, (uint64_t)index);
    switch (t->init) {
    case AMDIM_INIT_FAN_IN: {
        float bound = 1.0f / sqrtf((float)t->fan_in);
        for (size_t k = 0; k < t->size; k++)
            w[k] = amdim_rng_uniform(&rng, -bound, bound);
        break;
    }
    case AMDIM_INIT_SHORTCUT: { /* U(-0.01, 0.01), then 1 on the diagonal */
        int co = t->shape[0], ci = t->shape[1];
        for (size_t k = 0; k < t->size; k++)
            w[k] = amdim_rng_uniform(&rng, -0.01f, 0.01f);
        for (int d = 0; d < co && d < ci; d++)
            w[(size_t)d * ci + d] = 1.0f;
        break;
    }
    case AMDIM_INIT_SMALL:
        for (size_t k = 0; k < t->size; k++)
            w[k] = amdim_rng_uniform(&rng, -0.01f, 0.01f);
        break;
    case AMDIM_INIT_ONE:
        for (size_t k = 0; k < t->size; k++)
            w[k] = 1.0f;
        break;
    default:
        memset(w, 0, t->size * sizeof *w);
    }
}

void amdim_arch_init_weights(const amdim_arch *a, float *weights)
{
    for (int i = 0; i < a->ntensors; i++)
        init_tensor(&a->tensors[i], a->cfg.seed, AMDIM_STREAM_INIT, i, weights + a->tensors[i].offset);
}

void amdim_arch_reset_probes(const amdim_arch *a, uint64_t seed, float *weights, float *adam_m, float *adam_v)
{
    for (int i = 0; i < a->ntensors; i++) {
        const amdim_tensor *t = &a->tensors[i];
        if (!t->probe)
            continue;
        init_tensor(t, seed, AMDIM_STREAM_PROBE_INIT, i, weights + t->offset);
        if (t->has_grad) {
            memset(adam_m + t->goffset, 0, t->size * sizeof(float));
            memset(adam_v + t->goffset, 0, t->size * sizeof(float));
        }
    }
}

/* ---- schedule and draws -------------------------------------------------- */

float amdim_arch_learning_rate(const amdim_model_config *c, uint64_t updates, int epoch)
{
    double lr = c->lr;
    for (int i = 0; i < c->n_milestones; i++)
        if (epoch >= c->milestones[i])
            lr *= c->lr_decay;
    if (c->warmup > 0 && updates < (uint64_t)c->warmup)
        lr *= (double)(updates + 1) / c->warmup;
    return (float)lr;
}

void amdim_arch_adam_hparams(const amdim_model_config *c, uint64_t updates, int epoch, amdim_adam_hparams *h)
{
    double t = (double)(updates + 1);
    h->lr = amdim_arch_learning_rate(c, updates, epoch);
    h->step = (float)(h->lr / (1.0 - pow(c->beta1, t)));
    h->sqrt_bc2 = (float)sqrt(1.0 - pow(c->beta2, t));
    h->beta1 = c->beta1;
    h->beta2 = c->beta2;
    h->eps = c->eps;
    h->weight_decay = c->weight_decay;
}

void amdim_arch_draw(const amdim_model_config *c, uint32_t stream, uint64_t index, int n, int32_t *src5,
                     float *mask_in, float *mask_hidden)
{
    amdim_rng rng;
    amdim_rng_init(&rng, c->seed, stream, index);
    if (src5)
        for (int i = 0; i < n; i++)
            src5[i] = amdim_rng_int(&rng, 0, AMDIM_SRC5_LOCATIONS - 1);
    for (size_t i = 0; i < (size_t)n * c->n_rkhs; i++)
        mask_in[i] = amdim_rng_uniform(&rng, 0, 1) >= AMDIM_DROPOUT_P;
    for (size_t i = 0; i < (size_t)n * c->mlp_hidden; i++)
        mask_hidden[i] = amdim_rng_uniform(&rng, 0, 1) >= AMDIM_DROPOUT_P;
}

/* ---- stages ---------------------------------------------------------------- */

int amdim_arch_stage_count(const amdim_arch *a) { return a->nlayers + 4; }

void amdim_arch_stage_name(const amdim_arch *a, int s, char *buf, size_t n)
{
    if (s < a->nlayers) {
        const amdim_layer *L = &a->layers[s];
        const char *pn = a->tensors[L->kind == AMDIM_LAYER_BN ? L->bn.t : L->w1].name + strlen("encoder.module.");
        const char *end = strstr(pn, L->kind == AMDIM_LAYER_STEM ? ".conv.weight"
                                     : L->kind == AMDIM_LAYER_RES ? ".conv1.weight"
                                                                  : ".bn.");
        snprintf(buf, n, "%.*s %s %dx%d", (int)(end ? end - pn : 20), pn,
                 L->kind == AMDIM_LAYER_STEM ? "conv" : L->kind == AMDIM_LAYER_RES ? "res" : "bn", L->hout, L->hout);
        return;
    }
    static const char *tail[] = {"rkhs_block_5 head 5x5", "rkhs_block_7 head 7x7", "objective (6 directions)",
                                 "online probes"};
    snprintf(buf, n, "%s", tail[s - a->nlayers]);
}

/* 2 x multiply-adds of a convolution over the batch */
static double conv_flops(int cin, int cout, int k, int ho, int B) { return 2.0 * cin * cout * k * k * (double)ho * ho * B; }

void amdim_arch_stage_flops(const amdim_arch *a, int s, int B, double *fwd, double *bwd)
{
    const amdim_model_config *c = &a->cfg;
    double f = 0, b;
    if (s < a->nlayers) { /* both views: 2B images */
        const amdim_layer *L = &a->layers[s];
        if (L->kind == AMDIM_LAYER_STEM)
            f = conv_flops(L->cin, L->cout, L->k, L->hout, 2 * B);
        else if (L->kind == AMDIM_LAYER_RES)
            f = conv_flops(L->cin, L->cout, L->k, L->hout, 2 * B) + conv_flops(L->cout, L->cout, 1, L->hout, 2 * B);
        b = (s ? 2 : 1) * f; /* the first layer computes no input gradient */
    } else if (s < a->nlayers + 2) {
        const amdim_head *h = &a->heads[s - a->nlayers];
        f = 2 * conv_flops(h->cin, h->cout, 1, h->hw, 2 * B) + conv_flops(h->cout, h->cout, 1, h->hw, 2 * B);
        b = 2 * f;
    } else if (s == a->nlayers + AMDIM_STAGE_OBJECTIVE_OFFSET) {
        /* six directions per step; scores B x B*L x n_rkhs, backward twice
         * that; with K mixtures the r1 directions score K sources twice
         * (assignment, then gradient) after the mixture MLP on both views */
        int K = c->mixtures;
        double r1 = (25.0 + 49.0) * (K > 1 ? 2 * K : 1), mlp = K > 1 ? 2.0 * 2 * B * c->n_rkhs * (1.0 + K) * c->n_rkhs : 0;
        f = 2.0 * 2.0 * B * B * (r1 + 25) * (double)c->n_rkhs + mlp;
        b = 2.0 * 2.0 * B * B * 2 * ((25.0 + 49.0) * K + 25) * (double)c->n_rkhs + 2 * mlp;
    } else {
        /* both probes on both views (2B rows) */
        f = 2.0 * 2 * B * ((double)c->n_rkhs * c->mlp_hidden + (double)c->mlp_hidden * c->n_classes +
                           (double)c->n_rkhs * c->n_classes);
        b = f;
    }
    *fwd = f;
    *bwd = b;
}

double amdim_arch_step_flops(const amdim_arch *a, int B)
{
    double sum = 0;
    for (int s = 0; s < amdim_arch_stage_count(a); s++) {
        double f, b;
        amdim_arch_stage_flops(a, s, B, &f, &b);
        sum += f + b;
    }
    return sum;
}
