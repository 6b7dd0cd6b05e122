/* The CPU backend: the reference the CUDA backend is tested against.
 * Activations are float32 (C, B, H, W) - see cpu/ops.h - and the model's
 * host mirror is the state itself (no pull / push). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "backend_internal.h"
#include "nce_internal.h"
#include "ops_internal.h"

typedef struct {
    float *out, *padded, *h1, *r, *mean, *istd;
} layer_cache;

typedef struct {
    float *h1, *r, *sum, *out, *mean1, *istd1, *mean2, *istd2;
} head_cache;

typedef struct {
    int batch; /* buffers are sized for this batch (0: none) */
    float *x[2];
    layer_cache *lc[2];
    head_cache hc[2][2];
    float *feat, *mlp_h0, *mlp_z1, *mlp_a1, *mlp_h2, *mlp_mean, *mlp_istd, *logits[2], *dlogits, *dtmp, *dtmp2;
    float *grad_a, *grad_b, *dhead[2], *dr5[2], *dr7[2], *dr1[2];
    float *srcT, *dsrcT;
    /* mixtures (K > 1): per view h (R, B), the K sources (K, R, B) and
     * their gradient; per direction the components' log-softmax terms and
     * the assignment, (K, B, L) */
    float *mix_h[2], *mix[2], *dmix[2];
    double *mix_lsm, *mix_q;
    int32_t *labels2;
    /* data parallelism (m->comm: N ranks, N > 1 or forced): the global
     * batch's r5 and r7 targets per view and their gradients, (R, N B hw)
     * each, and the packed send / receive blocks of the all-gather and
     * reduce-scatter */
    float *tg[2][2], *dtg[2][2], *pack, *unpack;
    double *bn_avg;
    int comm_on;   /* inside a training step: BatchNorm may synchronise */
    int comm_size; /* the group size the buffers were made for (0: no group) */
    amdim_cpu_op_scratch scr, scr2;
    amdim_cpu_nce_scratch nce;
} amdim_cpu_state;

#define NOMEM() AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory (CPU backend scratch)")

/* An op's status as the backend's: op_fail for a failure (below). */
static int op_fail(amdim_model *m, int rc);
static int op(amdim_model *m, int rc) { return rc == AMDIM_OK ? AMDIM_OK : op_fail(m, rc); }

/* An op's failure: out of memory, or the process group's. */
static int op_fail(amdim_model *m, int rc)
{
    if (rc == AMDIM_E_NOMEM || !m->comm)
        return NOMEM();
    return AMDIM_MFAIL(m, rc, "rank %d of %d: %s", m->comm->rank, m->comm->size,
                 m->comm->error ? m->comm->error(m->comm->ctx) : "collective failed");
}

static float *W(amdim_model *m, int i) { return m->weights + m->arch.tensors[i].offset; }
static float *G(amdim_model *m, int i)
{
    AMDIM_ASSERT(m->arch.tensors[i].has_grad);
    return m->grads + m->arch.tensors[i].goffset;
}

/* The process group while a training step runs (NULL: one process). */
static const amdim_comm *step_comm(const amdim_model *m)
{
    const amdim_cpu_state *c = m->bs;
    return c->comm_on ? m->comm : NULL; /* m->comm: size > 1, or forced */
}

static amdim_cpu_bn_params bn_view(amdim_model *m, amdim_bn_ref r)
{
    amdim_cpu_bn_params b = {W(m, r.t),     W(m, r.t + 1), W(m, r.t + 2), W(m, r.t + 3),
                       W(m, r.t + 4), G(m, r.t),     G(m, r.t + 1), step_comm(m)};
    return b;
}

/* BatchNorm r over x (C channels of cnt values) into y: the batch's
 * statistics when training (kept in mean / istd), the running ones
 * otherwise, a copy when r is off. */
static int bn_forward(amdim_model *m, amdim_bn_ref r, const float *x, int C, size_t cnt, int train, float *y,
                      float *mean, float *istd)
{
    if (!r.on) {
        memcpy(y, x, (size_t)C * cnt * sizeof(float));
        return AMDIM_OK;
    }
    amdim_cpu_bn_params bp = bn_view(m, r);
    if (train)
        AMDIM_TRY(op(m, amdim_cpu_batchnorm_forward_train(x, C, cnt, &bp, y, mean, istd)));
    else
        amdim_cpu_batchnorm_forward_eval(x, C, cnt, &bp, y);
    return AMDIM_OK;
}

static double now_if(const amdim_model *m) { return m->profile ? amdim_now() : 0; }
static void prof(amdim_model *m, int stage, int backward, double t0, int B)
{
    if (m->profile)
        amdim_model_prof_add(m, stage, backward, amdim_now() - t0, B);
}

/* ---- buffers ------------------------------------------------------------ */

static void free_buffers(amdim_model *m, amdim_cpu_state *c)
{
    for (int v = 0; v < 2; v++) {
        free(c->x[v]);
        if (c->lc[v])
            for (int l = 0; l < m->arch.nlayers; l++) {
                layer_cache *lc = &c->lc[v][l];
                free(lc->out), free(lc->padded), free(lc->h1), free(lc->r), free(lc->mean), free(lc->istd);
            }
        free(c->lc[v]);
        for (int h = 0; h < 2; h++) {
            head_cache *hc = &c->hc[v][h];
            free(hc->h1), free(hc->r), free(hc->sum), free(hc->out);
            free(hc->mean1), free(hc->istd1), free(hc->mean2), free(hc->istd2);
        }
        free(c->dr5[v]), free(c->dr7[v]), free(c->dr1[v]);
        free(c->mix_h[v]), free(c->mix[v]), free(c->dmix[v]);
    }
    free(c->mix_lsm), free(c->mix_q);
    free(c->feat), free(c->mlp_h0), free(c->mlp_z1), free(c->mlp_a1), free(c->mlp_h2), free(c->mlp_mean);
    free(c->mlp_istd), free(c->logits[0]), free(c->logits[1]), free(c->dlogits), free(c->dtmp), free(c->dtmp2);
    free(c->grad_a), free(c->grad_b), free(c->dhead[0]), free(c->dhead[1]), free(c->srcT), free(c->dsrcT);
    free(c->labels2);
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++)
            free(c->tg[v][f]), free(c->dtg[v][f]);
    free(c->pack), free(c->unpack), free(c->bn_avg);
    amdim_cpu_op_scratch s1 = c->scr, s2 = c->scr2;
    amdim_cpu_nce_scratch ns = c->nce;
    memset(c, 0, sizeof *c);
    c->scr = s1, c->scr2 = s2, c->nce = ns;
}

/* With `bytes` non-NULL, alloc_buffers only counts what it would allocate
 * (amdim_cpu_step_bytes). */
#define ALLOC(ptr, count)                                       \
    do {                                                        \
        size_t n_ = (size_t)(count);                            \
        if (bytes) {                                            \
            *bytes += (n_ > 0 ? n_ : 1) * sizeof *(ptr);        \
            (ptr) = NULL;                                       \
            break;                                              \
        }                                                       \
        (ptr) = calloc(n_ > 0 ? n_ : 1, sizeof *(ptr));         \
        if (!(ptr))                                             \
            return -1;                                          \
    } while (0)

/* Buffers for batch B; ranks > 0: also those of a training step in a
 * process group of that size. */
static int alloc_buffers(const amdim_arch *a, amdim_cpu_state *c, int B, int ranks, size_t *bytes)
{
    int S = a->cfg.encoder_size, R = a->cfg.n_rkhs;
    layer_cache counted;
    size_t maxact = (size_t)3 * B * S * S;
    for (int v = 0; v < 2; v++) {
        ALLOC(c->x[v], (size_t)3 * B * S * S);
        ALLOC(c->lc[v], a->nlayers);
        for (int l = 0; l < a->nlayers; l++) {
            const amdim_layer *L = &a->layers[l];
            layer_cache *lc = bytes ? &counted : &c->lc[v][l];
            size_t in = (size_t)L->cin * B * L->hin * L->hin, outn = (size_t)L->cout * B * L->hout * L->hout;
            maxact = in > maxact ? in : maxact;
            maxact = outn > maxact ? outn : maxact;
            ALLOC(lc->out, outn);
            ALLOC(lc->mean, L->cout);
            ALLOC(lc->istd, L->cout);
            if (L->kind == AMDIM_LAYER_STEM && L->pad) {
                size_t hp = (size_t)L->hin + 2 * L->pad;
                ALLOC(lc->padded, (size_t)L->cin * B * hp * hp);
            }
            if (L->kind == AMDIM_LAYER_RES) {
                ALLOC(lc->h1, outn);
                ALLOC(lc->r, outn);
            }
        }
        for (int h = 0; h < 2; h++) {
            head_cache *hc = &c->hc[v][h];
            size_t n = (size_t)R * B * a->heads[h].hw * a->heads[h].hw;
            ALLOC(hc->h1, n);
            ALLOC(hc->r, n);
            ALLOC(hc->sum, n);
            ALLOC(hc->out, n);
            ALLOC(hc->mean1, R);
            ALLOC(hc->istd1, R);
            ALLOC(hc->mean2, R);
            ALLOC(hc->istd2, R);
        }
        ALLOC(c->dr5[v], (size_t)R * B * 25);
        ALLOC(c->dr7[v], (size_t)R * B * 49);
        ALLOC(c->dr1[v], (size_t)R * B);
        if (a->cfg.mixtures > 1) {
            ALLOC(c->mix_h[v], (size_t)R * B);
            ALLOC(c->mix[v], (size_t)a->cfg.mixtures * R * B);
            ALLOC(c->dmix[v], (size_t)a->cfg.mixtures * R * B);
        }
    }
    if (a->cfg.mixtures > 1) {
        ALLOC(c->mix_lsm, (size_t)a->cfg.mixtures * B * 49);
        ALLOC(c->mix_q, (size_t)a->cfg.mixtures * B * 49);
    }
    size_t headmax = (size_t)R * B * 49;
    maxact = headmax > maxact ? headmax : maxact;
    ALLOC(c->grad_a, maxact);
    ALLOC(c->grad_b, maxact);
    ALLOC(c->dhead[0], (size_t)R * B * 49);
    ALLOC(c->dhead[1], (size_t)R * B * 49);
    int H = a->cfg.mlp_hidden, K = a->cfg.n_classes, HR = H > R ? H : R;
    ALLOC(c->feat, (size_t)2 * B * R);
    ALLOC(c->mlp_h0, (size_t)2 * B * R);
    ALLOC(c->mlp_z1, (size_t)2 * B * H);
    ALLOC(c->mlp_a1, (size_t)2 * B * H);
    ALLOC(c->mlp_h2, (size_t)2 * B * H);
    ALLOC(c->mlp_mean, H);
    ALLOC(c->mlp_istd, H);
    ALLOC(c->logits[0], (size_t)2 * B * K);
    ALLOC(c->logits[1], (size_t)2 * B * K);
    ALLOC(c->dlogits, (size_t)2 * B * K);
    ALLOC(c->dtmp, (size_t)2 * B * HR);
    ALLOC(c->dtmp2, (size_t)2 * B * HR);
    ALLOC(c->srcT, (size_t)R * B);
    ALLOC(c->dsrcT, (size_t)R * B);
    ALLOC(c->labels2, (size_t)2 * B);
    if (ranks > 0) {
        size_t N = (size_t)ranks;
        for (int v = 0; v < 2; v++)
            for (int f = 0; f < 2; f++) {
                ALLOC(c->tg[v][f], N * R * B * (f ? 49 : 25));
                ALLOC(c->dtg[v][f], N * R * B * (f ? 49 : 25));
            }
        ALLOC(c->pack, N * R * B * 2 * (25 + 49));
        ALLOC(c->unpack, N * R * B * 2 * (25 + 49));
        ALLOC(c->bn_avg, 2 * a->weights_size);
    }
    if (bytes)
        return 0;
    c->batch = B;
    c->comm_size = ranks;
    return 0;
}

/* Buffers for batch B (reallocated when the batch changes); with `group`
 * (a training step with a process group) also the global batch's target
 * buffers, which evaluation and BN refresh never need. */
static int ensure_buffers_for(amdim_model *m, int B, int group)
{
    amdim_cpu_state *c = m->bs;
    int size = group && m->comm ? m->comm->size : 0;
    if (c->batch == B && (c->comm_size == size || (!group && c->comm_size)))
        return AMDIM_OK;
    free_buffers(m, c);
    if (alloc_buffers(&m->arch, c, B, size, NULL)) {
        free_buffers(m, c);
        return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory for the activations of batch %d", B);
    }
    return AMDIM_OK;
}

static int ensure_buffers(amdim_model *m, int B) { return ensure_buffers_for(m, B, 0); }

size_t amdim_cpu_step_bytes(const amdim_arch *a, int B, int ranks, int training)
{
    amdim_cpu_state c;
    memset(&c, 0, sizeof c);
    size_t bytes = 0, conv = 0, scr2 = 0, R = (size_t)a->cfg.n_rkhs;
    alloc_buffers(a, &c, B, ranks > 1 ? ranks : 0, &bytes);
    /* the scratch the ops grow to: im2col columns (scr), a residual unit's
     * shortcut or a head's input gradient (scr2), the NCE scores and their
     * gradient of the 7x7 directions (2 B x N B x 49) */
    for (int l = 0; l < a->nlayers; l++) {
        const amdim_layer *L = &a->layers[l];
        if (L->kind == AMDIM_LAYER_BN)
            continue;
        int h = L->kind == AMDIM_LAYER_STEM ? L->hin + 2 * L->pad : L->hin;
        size_t cf = amdim_cpu_conv2d_scratch_floats(L->cin, B, h, L->k, L->s);
        size_t outn = (size_t)L->cout * B * L->hout * L->hout;
        conv = cf > conv ? cf : conv;
        scr2 = outn > scr2 ? outn : scr2;
    }
    for (int h = 0; h < 2; h++) {
        size_t hw = (size_t)a->heads[h].hw * a->heads[h].hw;
        size_t in2 = ((size_t)a->heads[h].cin + R) * B * hw;
        scr2 = in2 > scr2 ? in2 : scr2;
    }
    size_t N = ranks > 1 ? (size_t)ranks : 1, nce = 2 * (size_t)B * (N * B) * 49;
    if (!training) /* forward only: half the columns, no objective */
        return bytes + (conv / 2 + scr2) * sizeof(float);
    return bytes + (conv + scr2 + nce) * sizeof(float);
}

/* ---- encoder ------------------------------------------------------------ */

static int layer_forward(amdim_model *m, const amdim_layer *L, layer_cache *lc, const float *x, int B, int train)
{
    amdim_cpu_state *c = m->bs;
    size_t outn = (size_t)L->cout * B * L->hout * L->hout, cnt = (size_t)B * L->hout * L->hout;
    switch (L->kind) {
    case AMDIM_LAYER_STEM: {
        const float *in = x;
        int h = L->hin;
        if (L->pad) {
            amdim_cpu_reflect_pad_forward(x, L->cin, B, L->hin, L->hin, L->pad, lc->padded);
            in = lc->padded;
            h += 2 * L->pad;
        }
        AMDIM_TRY(op(m, amdim_cpu_conv2d_forward(in, L->cin, B, h, h, W(m, L->w1), W(m, L->b1), L->cout, L->k, L->s, lc->out, &c->scr)));
        amdim_cpu_relu_forward(lc->out, outn);
        break;
    }
    case AMDIM_LAYER_RES: {
        AMDIM_TRY(op(m, amdim_cpu_conv2d_forward(x, L->cin, B, L->hin, L->hin, W(m, L->w1), NULL, L->cout, L->k, L->s, lc->h1, &c->scr)));
        AMDIM_TRY(op(m, bn_forward(m, L->bn, lc->h1, L->cout, cnt, train, lc->r, lc->mean, lc->istd)));
        amdim_cpu_relu_forward(lc->r, outn);
        AMDIM_TRY(op(m, amdim_cpu_conv2d_forward(lc->r, L->cout, B, L->hout, L->hout, W(m, L->w2), NULL, L->cout, 1, 1, lc->out, &c->scr)));
        float *sc = amdim_cpu_op_scratch_get(&c->scr2, outn);
        if (!sc)
            return NOMEM();
        amdim_cpu_avgpool_pad_forward(x, L->cin, B, L->hin, L->hin, L->k, L->s, L->cout, sc);
        for (size_t i = 0; i < outn; i++)
            lc->out[i] += sc[i];
        break;
    }
    default: /* AMDIM_LAYER_BN */
        AMDIM_TRY(op(m, bn_forward(m, L->bn, x, L->cout, cnt, train, lc->out, lc->mean, lc->istd)));
    }
    return AMDIM_OK;
}

/* dy: gradient of the layer output (may be modified); dx: gradient of its
 * input (NULL for the first layer). */
static int layer_backward(amdim_model *m, const amdim_layer *L, layer_cache *lc, const float *x, int B, float *dy,
                          float *dx)
{
    amdim_cpu_state *c = m->bs;
    size_t outn = (size_t)L->cout * B * L->hout * L->hout, cnt = (size_t)B * L->hout * L->hout;
    switch (L->kind) {
    case AMDIM_LAYER_STEM: {
        amdim_cpu_relu_backward(lc->out, dy, outn);
        const float *in = L->pad ? lc->padded : x;
        int h = L->hin + 2 * L->pad;
        AMDIM_ASSERT(!(L->pad && dx)); /* only the first layer pads: no input gradient */
        AMDIM_TRY(op(m, amdim_cpu_conv2d_backward(in, L->cin, B, h, h, W(m, L->w1), L->cout, L->k, L->s, dy, dx, G(m, L->w1),
                                G(m, L->b1), &c->scr)));
        break;
    }
    case AMDIM_LAYER_RES: {
        float *dr = amdim_cpu_op_scratch_get(&c->scr2, outn);
        if (!dr)
            return NOMEM();
        AMDIM_TRY(op(m, amdim_cpu_conv2d_backward(lc->r, L->cout, B, L->hout, L->hout, W(m, L->w2), L->cout, 1, 1, dy, dr, G(m, L->w2),
                                NULL, &c->scr)));
        amdim_cpu_relu_backward(lc->r, dr, outn);
        if (L->bn.on) {
            amdim_cpu_bn_params bp = bn_view(m, L->bn);
            AMDIM_TRY(op(m, amdim_cpu_batchnorm_backward(lc->h1, L->cout, cnt, &bp, lc->mean, lc->istd, dr, dr)));
        }
        AMDIM_TRY(op(m, amdim_cpu_conv2d_backward(x, L->cin, B, L->hin, L->hin, W(m, L->w1), L->cout, L->k, L->s, dr, dx, G(m, L->w1),
                                NULL, &c->scr)));
        if (dx)
            amdim_cpu_avgpool_pad_backward(dy, L->cin, B, L->hin, L->hin, L->k, L->s, dx);
        break;
    }
    default:
        if (L->bn.on) {
            amdim_cpu_bn_params bp = bn_view(m, L->bn);
            AMDIM_TRY(op(m, amdim_cpu_batchnorm_backward(x, L->cout, cnt, &bp, lc->mean, lc->istd, dy, dx)));
        } else {
            memcpy(dx, dy, outn * sizeof(float));
        }
    }
    return AMDIM_OK;
}

static int head_forward(amdim_model *m, const amdim_head *h, head_cache *hc, const float *x, int B, int train)
{
    amdim_cpu_state *c = m->bs;
    size_t n = (size_t)h->cout * B * h->hw * h->hw, cnt = (size_t)B * h->hw * h->hw;
    AMDIM_TRY(op(m, amdim_cpu_conv2d_forward(x, h->cin, B, h->hw, h->hw, W(m, h->w1), NULL, h->cout, 1, 1, hc->h1, &c->scr)));
    AMDIM_TRY(op(m, bn_forward(m, h->bn_hid, hc->h1, h->cout, cnt, train, hc->r, hc->mean1, hc->istd1)));
    amdim_cpu_relu_forward(hc->r, n);
    AMDIM_TRY(op(m, amdim_cpu_conv2d_forward(hc->r, h->cout, B, h->hw, h->hw, W(m, h->w2), NULL, h->cout, 1, 1, hc->sum, &c->scr)));
    float *sc = amdim_cpu_op_scratch_get(&c->scr2, n);
    if (!sc)
        return NOMEM();
    AMDIM_TRY(op(m, amdim_cpu_conv2d_forward(x, h->cin, B, h->hw, h->hw, W(m, h->ws), W(m, h->bs), h->cout, 1, 1, sc, &c->scr)));
    for (size_t i = 0; i < n; i++)
        hc->sum[i] += sc[i];
    return bn_forward(m, h->bn_out, hc->sum, h->cout, cnt, train, hc->out, hc->mean2, hc->istd2);
}

/* dy: gradient of the head output (modified); dx: gradient of the head
 * input (overwritten). */
static int head_backward(amdim_model *m, const amdim_head *h, head_cache *hc, const float *x, int B, float *dy,
                         float *dx)
{
    amdim_cpu_state *c = m->bs;
    size_t n = (size_t)h->cout * B * h->hw * h->hw, cnt = (size_t)B * h->hw * h->hw;
    amdim_cpu_bn_params bo = bn_view(m, h->bn_out);
    AMDIM_TRY(op(m, amdim_cpu_batchnorm_backward(hc->sum, h->cout, cnt, &bo, hc->mean2, hc->istd2, dy, dy))); /* dy = d sum */
    size_t nin = (size_t)h->cin * B * h->hw * h->hw;
    float *dx2 = amdim_cpu_op_scratch_get(&c->scr2, nin + n);
    if (!dx2)
        return NOMEM();
    float *dr = dx2 + nin;
    AMDIM_TRY(op(m, amdim_cpu_conv2d_backward(x, h->cin, B, h->hw, h->hw, W(m, h->ws), h->cout, 1, 1, dy, dx, G(m, h->ws), G(m, h->bs),
                            &c->scr)));
    AMDIM_TRY(op(m, amdim_cpu_conv2d_backward(hc->r, h->cout, B, h->hw, h->hw, W(m, h->w2), h->cout, 1, 1, dy, dr, G(m, h->w2), NULL,
                            &c->scr)));
    amdim_cpu_relu_backward(hc->r, dr, n);
    if (h->bn_hid.on) {
        amdim_cpu_bn_params bp = bn_view(m, h->bn_hid);
        AMDIM_TRY(op(m, amdim_cpu_batchnorm_backward(hc->h1, h->cout, cnt, &bp, hc->mean1, hc->istd1, dr, dr)));
    }
    AMDIM_TRY(op(m, amdim_cpu_conv2d_backward(x, h->cin, B, h->hw, h->hw, W(m, h->w1), h->cout, 1, 1, dr, dx2, G(m, h->w1), NULL,
                            &c->scr)));
    for (size_t i = 0; i < nin; i++)
        dx[i] += dx2[i];
    return AMDIM_OK;
}

/* The encoder alone (heads too when `heads`), view v, from c->x[v]. */
static int encoder_forward(amdim_model *m, int v, int B, int train, int heads)
{
    amdim_cpu_state *c = m->bs;
    const amdim_arch *a = &m->arch;
    const float *in = c->x[v];
    int rc;
    for (int l = 0; l < a->nlayers; l++) {
        double t0 = now_if(m);
        if ((rc = layer_forward(m, &a->layers[l], &c->lc[v][l], in, B, train)))
            return rc;
        prof(m, l, 0, t0, B);
        in = c->lc[v][l].out;
    }
    for (int h = 0; heads && h < 2; h++) {
        double t0 = now_if(m);
        const amdim_head *hd = &a->heads[h];
        if ((rc = head_forward(m, hd, &c->hc[v][h], c->lc[v][hd->src_layer].out, B, train)))
            return rc;
        prof(m, a->nlayers + h, 0, t0, B);
    }
    return AMDIM_OK;
}

static int encoder_backward(amdim_model *m, int v, int B)
{
    amdim_cpu_state *c = m->bs;
    const amdim_arch *a = &m->arch;
    int rc;
    /* heads first: their input gradients join the encoder's at i5 and i7 */
    for (int h = 0; h < 2; h++) {
        double t0 = now_if(m);
        const amdim_head *hd = &a->heads[h];
        if ((rc = head_backward(m, hd, &c->hc[v][h], c->lc[v][hd->src_layer].out, B, h ? c->dr7[v] : c->dr5[v],
                                c->dhead[h])))
            return rc;
        prof(m, a->nlayers + h, 1, t0, B);
    }
    float *dy = c->grad_a, *dx = c->grad_b;
    memcpy(dy, c->dr1[v], (size_t)m->cfg.n_rkhs * B * sizeof(float));
    for (int l = a->nlayers - 1; l >= 0; l--) {
        const amdim_layer *L = &a->layers[l];
        size_t outn = (size_t)L->cout * B * L->hout * L->hout;
        for (int h = 0; h < 2; h++)
            if (l == a->heads[h].src_layer)
                for (size_t i = 0; i < outn; i++)
                    dy[i] += c->dhead[h][i];
        const float *x = l ? c->lc[v][l - 1].out : c->x[v];
        double t0 = now_if(m);
        if ((rc = layer_backward(m, L, &c->lc[v][l], x, B, dy, l ? dx : NULL)))
            return rc;
        prof(m, l, 1, t0, B);
        float *t = dy;
        dy = dx;
        dx = t;
    }
    return AMDIM_OK;
}

/* ---- mixtures ------------------------------------------------------------ */

/* The K mixture features (K, R, B) of r1 of view v into c->mix[v]. */
static void mixture_forward(amdim_model *m, int v, int B)
{
    amdim_cpu_state *c = m->bs;
    const amdim_mixture *x = &m->arch.mix;
    amdim_cpu_mixture_forward(c->lc[v][m->arch.nlayers - 1].out, m->cfg.n_rkhs, B, m->cfg.mixtures, W(m, x->w1),
                        W(m, x->b1), W(m, x->w2), W(m, x->b2), c->mix_h[v], c->mix[v]);
}

/* Per consequent location k of a direction (BL of them): the components'
 * log-softmax terms lsm (K, BL) into the assignment q (K, BL). Returns
 * the mean entropy of q. */
static double mixture_assign(const amdim_model *m, const double *lsm, size_t BL, double *q)
{
    double h = 0;
    for (size_t k = 0; k < BL; k++)
        h += amdim_mix_assign(lsm + k, m->cfg.mixtures, BL, m->cfg.mix_tau, q + k);
    return h / (double)BL;
}

/* One direction with the K mixture sources mixT (K, R, B) against tgt (R,
 * B*L): the components' NCE terms s_j, the assignment q = softmax_j(tau
 * s_j) held constant (no gradient), then loss = -mean sum_j q_j s_j and
 * reg = the components' mean, with gradients (direction weight 0.5) into
 * dmixT and dtgt. *entropy: mean H(q). */
static int mixture_direction(amdim_model *m, const float *mixT, float *dmixT, const float *tgt, float *dtgt, int B,
                             int L, double *loss, double *reg, double *entropy)
{
    amdim_cpu_state *c = m->bs;
    int K = m->cfg.mixtures, R = m->cfg.n_rkhs;
    size_t BL = (size_t)B * L, RB = (size_t)R * B;
    double l, r;
    for (int j = 0; j < K; j++)
        AMDIM_TRY(op(m, amdim_cpu_nce_direction(mixT + j * RB, tgt, R, B, L, m->cfg.tclip, AMDIM_OBJECTIVE_NCE, 0, 0, NULL,
                              c->mix_lsm + j * BL, &l, &r, NULL, NULL, &c->nce)));
    *entropy = mixture_assign(m, c->mix_lsm, BL, c->mix_q);
    *loss = *reg = 0;
    for (int j = 0; j < K; j++) {
        AMDIM_TRY(op(m, amdim_cpu_nce_direction(mixT + j * RB, tgt, R, B, L, m->cfg.tclip, AMDIM_OBJECTIVE_NCE, 0.5f, 0.5f / K,
                              c->mix_q + j * BL, NULL, &l, &r, dmixT + j * RB, dtgt, &c->nce)));
        *loss += l;
        *reg += r / K;
    }
    return AMDIM_OK;
}

/* What the probes read, view v, into rows [v B, v B + B) of feat (rows of
 * R): r1 (R, B), or the mean of its K mixture features. */
static void gather_features(amdim_model *m, int v, int B)
{
    amdim_cpu_state *c = m->bs;
    int R = m->cfg.n_rkhs, K = m->cfg.mixtures;
    const float *r1 = c->lc[v][m->arch.nlayers - 1].out;
    if (m->cfg.probe_features) {
        mixture_forward(m, v, B);
        for (int i = 0; i < B; i++)
            for (int ch = 0; ch < R; ch++) {
                double sum = 0;
                for (int j = 0; j < K; j++)
                    sum += c->mix[v][((size_t)j * R + ch) * B + i];
                c->feat[((size_t)v * B + i) * R + ch] = (float)(sum / K);
            }
        return;
    }
    for (int i = 0; i < B; i++)
        for (int ch = 0; ch < R; ch++)
            c->feat[((size_t)v * B + i) * R + ch] = r1[(size_t)ch * B + i];
}

/* ---- probes ------------------------------------------------------------- */

static int probes_forward(amdim_model *m, int n, const float *mask_in, const float *mask_hidden, int train)
{
    amdim_cpu_state *c = m->bs;
    const amdim_probes *p = &m->arch.probes;
    int R = m->cfg.n_rkhs, H = m->cfg.mlp_hidden, K = m->cfg.n_classes;
    const float *in = c->feat;
    if (train) {
        amdim_cpu_dropout_forward(c->feat, mask_in, AMDIM_DROPOUT_P, (size_t)n * R, c->mlp_h0);
        in = c->mlp_h0;
    }
    amdim_cpu_linear_forward(in, n, R, W(m, p->mlp_w1), NULL, H, c->mlp_z1);
    amdim_cpu_bn_params bp = bn_view(m, p->mlp_bn);
    if (train)
        AMDIM_TRY(op(m, amdim_cpu_batchnorm1d_forward_train(c->mlp_z1, n, H, &bp, c->mlp_a1, c->mlp_mean, c->mlp_istd, &c->scr)));
    else
        amdim_cpu_batchnorm1d_forward_eval(c->mlp_z1, n, H, &bp, c->mlp_a1);
    amdim_cpu_relu_forward(c->mlp_a1, (size_t)n * H);
    const float *h2 = c->mlp_a1;
    if (train) {
        amdim_cpu_dropout_forward(c->mlp_a1, mask_hidden, AMDIM_DROPOUT_P, (size_t)n * H, c->mlp_h2);
        h2 = c->mlp_h2;
    }
    amdim_cpu_linear_forward(h2, n, H, W(m, p->mlp_w2), W(m, p->mlp_b2), K, c->logits[0]);
    amdim_cpu_linear_forward(c->feat, n, R, W(m, p->lin_w), W(m, p->lin_b), K, c->logits[1]);
    return AMDIM_OK;
}

static int probes_backward(amdim_model *m, int n, const int32_t *labels2, const float *mask_hidden,
                           amdim_step_stats *st)
{
    amdim_cpu_state *c = m->bs;
    const amdim_probes *p = &m->arch.probes;
    int R = m->cfg.n_rkhs, H = m->cfg.mlp_hidden, K = m->cfg.n_classes, corr, lab;
    /* the means are over the global batch's rows and labelled rows */
    const amdim_comm *cm = step_comm(m);
    double n_all = (double)n * (cm ? cm->size : 1), valid_all = amdim_cpu_count_labelled(labels2, n, K);
    if (cm)
        AMDIM_TRY(op(m, cm->allreduce_f64(cm->ctx, &valid_all, 1)));
    st->cls_mlp = amdim_cpu_classifier_loss_part(c->logits[0], n, K, labels2, c->dlogits, 1.0f, n_all, valid_all, &corr, &lab);
    st->correct_mlp = corr;
    st->labelled = lab;
    amdim_cpu_linear_backward(c->mlp_h2, n, H, W(m, p->mlp_w2), K, c->dlogits, c->dtmp, G(m, p->mlp_w2), G(m, p->mlp_b2));
    amdim_cpu_dropout_backward(c->dtmp, mask_hidden, AMDIM_DROPOUT_P, (size_t)n * H, c->dtmp);
    amdim_cpu_relu_backward(c->mlp_a1, c->dtmp, (size_t)n * H);
    amdim_cpu_bn_params bp = bn_view(m, p->mlp_bn);
    AMDIM_TRY(op(m, amdim_cpu_batchnorm1d_backward(c->mlp_z1, n, H, &bp, c->mlp_mean, c->mlp_istd, c->dtmp, c->dtmp2, &c->scr)));
    amdim_cpu_linear_backward(c->mlp_h0, n, R, W(m, p->mlp_w1), H, c->dtmp2, NULL, G(m, p->mlp_w1), NULL);
    st->cls_lin = amdim_cpu_classifier_loss_part(c->logits[1], n, K, labels2, c->dlogits, 1.0f, n_all, valid_all, &corr, NULL);
    st->correct_lin = corr;
    amdim_cpu_linear_backward(c->feat, n, R, W(m, p->lin_w), K, c->dlogits, NULL, G(m, p->lin_w), G(m, p->lin_b));
    return AMDIM_OK;
}

/* Both probes on rows feat[0, n) with labels duplicated for two views. */
static int probes_train(amdim_model *m, int B, const int32_t *labels, const amdim_step_draws *d,
                        amdim_step_stats *st)
{
    amdim_cpu_state *c = m->bs;
    memcpy(c->labels2, labels, (size_t)B * sizeof *labels);
    memcpy(c->labels2 + B, labels, (size_t)B * sizeof *labels);
    int stage = m->arch.nlayers + AMDIM_STAGE_PROBES_OFFSET, rc;
    double t0 = now_if(m);
    if ((rc = probes_forward(m, 2 * B, d->mask_in, d->mask_hidden, 1)))
        return rc;
    prof(m, stage, 0, t0, B);
    t0 = now_if(m);
    if ((rc = probes_backward(m, 2 * B, c->labels2, d->mask_hidden, st)))
        return rc;
    prof(m, stage, 1, t0, B);
    return AMDIM_OK;
}

/* ---- data parallelism --------------------------------------------------------- */

/* Floats a rank sends of r5 and r7 (or their gradients): view 0's r5 and
 * r7, then view 1's, (R, B hw) each. */
static size_t target_block(int B, int R) { return (size_t)R * B * 2 * (25 + 49); }

/* All-gathers r5 and r7 of both views into c->tg, (R, N B hw): image
 * r B + i of the global batch is rank r's image i. Zeroes c->dtg. */
static int gather_targets(amdim_model *m, int B)
{
    amdim_cpu_state *c = m->bs;
    const amdim_comm *cm = step_comm(m);
    int R = m->cfg.n_rkhs, N = cm->size;
    size_t n = target_block(B, R), off = 0;
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++) {
            size_t k = (size_t)R * B * (f ? 49 : 25);
            memcpy(c->pack + off, c->hc[v][f].out, k * sizeof(float));
            off += k;
        }
    AMDIM_TRY(op(m, cm->allgather_f32(cm->ctx, c->pack, c->unpack, n)));
    off = 0;
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++) {
            size_t run = (size_t)B * (f ? 49 : 25); /* one channel of one rank */
            for (int r = 0; r < N; r++)
                for (int ch = 0; ch < R; ch++)
                    memcpy(c->tg[v][f] + ((size_t)ch * N + r) * run, c->unpack + r * n + off + ch * run,
                           run * sizeof(float));
            off += R * run;
            memset(c->dtg[v][f], 0, (size_t)N * R * run * sizeof(float));
        }
    return AMDIM_OK;
}

/* Sums the ranks' gradients of the gathered targets (the drawn r5
 * sources' included) and adds this rank's images' share into dr5 / dr7,
 * which hold nothing else yet (reduce-scatter). */
static int scatter_target_grads(amdim_model *m, int B)
{
    amdim_cpu_state *c = m->bs;
    const amdim_comm *cm = step_comm(m);
    int R = m->cfg.n_rkhs, N = cm->size;
    size_t n = target_block(B, R), off = 0;
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++) {
            size_t run = (size_t)B * (f ? 49 : 25);
            for (int r = 0; r < N; r++)
                for (int ch = 0; ch < R; ch++)
                    memcpy(c->pack + r * n + off + ch * run, c->dtg[v][f] + ((size_t)ch * N + r) * run,
                           run * sizeof(float));
            off += R * run;
        }
    AMDIM_TRY(op(m, cm->reduce_scatter_f32(cm->ctx, c->pack, c->unpack, n)));
    off = 0;
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++) {
            float *d = f ? c->dr7[v] : c->dr5[v];
            size_t k = (size_t)R * B * (f ? 49 : 25);
            for (size_t i = 0; i < k; i++)
                d[i] += c->unpack[off + i];
            off += k;
        }
    return AMDIM_OK;
}

/* After a step's backward: gradients and the loss terms summed over ranks;
 * with per-rank BatchNorm, the running statistics averaged over ranks. */
static int reduce_step(amdim_model *m, amdim_step_stats *st)
{
    amdim_cpu_state *c = m->bs;
    const amdim_comm *cm = step_comm(m);
    if (!cm)
        return AMDIM_OK;
    /* the classifier phase trains the probes only: their gradients alone */
    size_t from = 0;
    if (m->probes_only) {
        from = m->arch.grads_size;
        for (int i = 0; i < m->arch.ntensors; i++)
            if (m->arch.tensors[i].probe && m->arch.tensors[i].has_grad && m->arch.tensors[i].goffset < from)
                from = m->arch.tensors[i].goffset;
        for (int i = 0; i < m->arch.ntensors; i++) /* they are the block's tail */
            AMDIM_ASSERT(!m->arch.tensors[i].has_grad || m->arch.tensors[i].probe || m->arch.tensors[i].goffset < from);
    }
    AMDIM_TRY(op(m, cm->allreduce_f32(cm->ctx, m->grads + from, m->arch.grads_size - from)));
    double v[9] = {st->nce_1t5, st->nce_1t7, st->nce_5t5, st->reg, st->cls_mlp, st->cls_lin,
                   st->correct_mlp, st->correct_lin, st->labelled};
    AMDIM_TRY(op(m, cm->allreduce_f64(cm->ctx, v, 9)));
    st->nce_1t5 = v[0], st->nce_1t7 = v[1], st->nce_5t5 = v[2], st->reg = v[3], st->cls_mlp = v[4];
    st->cls_lin = v[5], st->correct_mlp = (int)v[6], st->correct_lin = (int)v[7], st->labelled = (int)v[8];
    if (cm->sync_bn) /* the statistics were the global batch's: equal everywhere */
        return AMDIM_OK;
    size_t k = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < m->arch.ntensors; i++) {
            const amdim_tensor *t = &m->arch.tensors[i];
            if ((t->role != AMDIM_ROLE_BN_MEAN && t->role != AMDIM_ROLE_BN_VAR) || (m->probes_only && !t->probe))
                continue; /* the classifier phase: the frozen encoder's statistics do not move */
            float *w = m->weights + t->offset;
            for (size_t j = 0; j < t->size; j++, k++)
                if (pass == 0)
                    c->bn_avg[k] = w[j];
                else
                    w[j] = (float)(c->bn_avg[k] / cm->size);
        }
        if (pass == 0) {
            AMDIM_TRY(op(m, cm->allreduce_f64(cm->ctx, c->bn_avg, k)));
            k = 0;
        }
    }
    return AMDIM_OK;
}

/* ---- objective ------------------------------------------------------------ */

static int objectives(amdim_model *m, int B, const int32_t *src5, amdim_step_stats *st)
{
    amdim_cpu_state *c = m->bs;
    const amdim_model_config *cfg = &m->cfg;
    int R = cfg->n_rkhs;
    float *feat[2][8]; /* [view][1, 5, 7] */
    float *dfeat[2][8];
    for (int v = 0; v < 2; v++) {
        feat[v][1] = c->lc[v][m->arch.nlayers - 1].out; /* (R, B) */
        feat[v][5] = c->hc[v][0].out;                   /* (R, B*25) */
        feat[v][7] = c->hc[v][1].out;                   /* (R, B*49) */
        dfeat[v][1] = c->dr1[v], dfeat[v][5] = c->dr5[v], dfeat[v][7] = c->dr7[v];
        memset(c->dr1[v], 0, (size_t)R * B * sizeof(float));
        memset(c->dr5[v], 0, (size_t)R * B * 25 * sizeof(float));
        memset(c->dr7[v], 0, (size_t)R * B * 49 * sizeof(float));
    }
    int K = cfg->mixtures;
    for (int v = 0; v < 2 && K > 1; v++) {
        mixture_forward(m, v, B);
        memset(c->dmix[v], 0, (size_t)K * R * B * sizeof(float));
    }
    /* across ranks: this rank's sources against the global batch's targets */
    const amdim_comm *cm = step_comm(m);
    int Bg = B, first = 0, rc;
    if (cm) {
        AMDIM_ASSERT(K == 1);
        if ((rc = gather_targets(m, B)))
            return rc;
        for (int v = 0; v < 2; v++) {
            feat[v][5] = c->tg[v][0], feat[v][7] = c->tg[v][1];
            dfeat[v][5] = c->dtg[v][0], dfeat[v][7] = c->dtg[v][1];
        }
        Bg = B * cm->size, first = B * cm->rank;
    }
    double reg = 0, task[3] = {0, 0, 0}, entropy = 0;
    for (int k = 0; k < AMDIM_NCE_DIRECTIONS; k++) {
        const amdim_nce_direction *d = &m->arch.dirs[k];
        int a = d->src_view, b = 1 - a;
        if (d->mixtures > 1) {
            double loss = 0, reg1 = 0, h = 0;
            if ((rc = mixture_direction(m, c->mix[a], c->dmix[a], feat[b][d->tgt_feature], dfeat[b][d->tgt_feature], B,
                                        d->L, &loss, &reg1, &h)))
                return rc;
            task[d->task] += 0.5 * loss;
            reg += reg1;
            entropy += 0.5 * h;
            continue;
        }
        const float *src = c->lc[a][m->arch.nlayers - 1].out; /* r1 (R, B) */
        float *dsrc = c->dr1[a];
        const int32_t *idx = src5 + (size_t)a * B;
        if (d->src_feature == 5) { /* one drawn location of r5 per image */
            for (int ch = 0; ch < R; ch++)
                for (int i = 0; i < B; i++)
                    c->srcT[(size_t)ch * B + i] = c->hc[a][0].out[((size_t)ch * B + i) * 25 + idx[i]];
            memset(c->dsrcT, 0, (size_t)R * B * sizeof(float));
            src = c->srcT;
            dsrc = c->dsrcT;
        }
        double loss, reg1;
        AMDIM_TRY(op(m, amdim_cpu_nce_direction_part(src, B, first, feat[b][d->tgt_feature], R, Bg, d->L, cfg->tclip, cfg->objective,
                                   0.5f, 0.5f, NULL, NULL, &loss, &reg1, dsrc, dfeat[b][d->tgt_feature], &c->nce)));
        task[d->task] += 0.5 * loss;
        reg += reg1;
        /* the drawn r5 sources' gradient joins the targets' (image first + i
         * of the global batch): the reduce-scatter then brings this rank's
         * whole r5 gradient, summed in the order one process sums it */
        if (d->src_feature == 5)
            for (int ch = 0; ch < R; ch++)
                for (int i = 0; i < B; i++)
                    dfeat[a][5][((size_t)ch * Bg + first + i) * 25 + idx[i]] += c->dsrcT[(size_t)ch * B + i];
    }
    if (cm && (rc = scatter_target_grads(m, B)))
        return rc;
    /* the mixture MLP's backward, once both r1 directions of a view are in */
    const amdim_mixture *x = &m->arch.mix;
    for (int v = 0; v < 2 && K > 1; v++)
        AMDIM_TRY(op(m, amdim_cpu_mixture_backward(feat[v][1], c->mix_h[v], R, B, K, W(m, x->w1), W(m, x->w2), c->dmix[v], c->dr1[v],
                                 G(m, x->w1), G(m, x->b1), G(m, x->w2), G(m, x->b2), &c->scr)));
    st->nce_1t5 = task[0];
    st->nce_1t7 = task[1];
    st->nce_5t5 = task[2];
    st->reg = 0.5 * reg;
    st->mix_entropy = entropy;
    return AMDIM_OK;
}

/* ---- inputs ----------------------------------------------------------------- */

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
                dst[i] = amdim_normalise_pixel(src[3 * i], scale, shift);
        }
    }
}

static void nchw_to_cnhw(const float *in, int B, int C, int HW, float *out)
{
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            memcpy(out + ((size_t)c * B + b) * HW, in + ((size_t)b * C + c) * HW, (size_t)HW * sizeof(float));
}

static void load_input(amdim_model *m, const amdim_step_input *in, int v)
{
    amdim_cpu_state *c = m->bs;
    int S = m->cfg.encoder_size;
    if (in->u8[v])
        normalise_views(m, in->u8[v], in->batch, c->x[v]);
    else
        nchw_to_cnhw(in->f32[v], in->batch, 3, S * S, c->x[v]);
}

/* ---- the backend functions --------------------------------------------------- */

static int amdim_cpu_open(amdim_model *m)
{
    m->bs = calloc(1, sizeof(amdim_cpu_state));
    return m->bs ? AMDIM_OK : AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory");
}

static void amdim_cpu_close(amdim_model *m)
{
    amdim_cpu_state *c = m->bs;
    if (!c)
        return;
    free_buffers(m, c);
    amdim_cpu_op_scratch_free(&c->scr);
    amdim_cpu_op_scratch_free(&c->scr2);
    amdim_cpu_nce_scratch_free(&c->nce);
    free(c);
    m->bs = NULL;
}

static int forward_backward(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d,
                            amdim_step_stats *st)
{
    int B = in->batch, rc;
    memset(m->grads, 0, m->arch.grads_size * sizeof(float));
    for (int v = 0; v < 2; v++) {
        load_input(m, in, v);
        if ((rc = encoder_forward(m, v, B, 1, 1)))
            return rc;
    }
    int stage = m->arch.nlayers + AMDIM_STAGE_OBJECTIVE_OFFSET;
    double t0 = now_if(m);
    if ((rc = objectives(m, B, d->src5, st)))
        return rc;
    prof(m, stage, 0, t0, B);
    prof(m, stage, 1, amdim_now(), B); /* the backward FLOPs; its time is in the forward's */
    gather_features(m, 0, B);
    gather_features(m, 1, B);
    if ((rc = probes_train(m, B, in->labels, d, st)))
        return rc;
    for (int v = 0; v < 2; v++)
        if ((rc = encoder_backward(m, v, B)))
            return rc;
    if ((rc = reduce_step(m, st)))
        return rc;
    st->total = st->nce_1t5 + st->nce_1t7 + st->nce_5t5 + st->reg + st->cls_mlp + st->cls_lin;
    if (m->cfg.mixtures > 1) /* the entropy bonus: reported, no gradient (q is a constant) */
        st->total -= m->cfg.mix_entropy * st->mix_entropy;
    return AMDIM_OK;
}

static int probe_step(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d, amdim_step_stats *st)
{
    int B = in->batch, rc;
    memset(m->grads, 0, m->arch.grads_size * sizeof(float));
    for (int v = 0; v < 2; v++) { /* frozen encoder: eval mode */
        load_input(m, in, v);
        if ((rc = encoder_forward(m, v, B, 0, 0)))
            return rc;
        gather_features(m, v, B);
    }
    if ((rc = probes_train(m, B, in->labels, d, st)) || (rc = reduce_step(m, st)))
        return rc;
    st->total = st->cls_mlp + st->cls_lin;
    return AMDIM_OK;
}

/* A training step (or probe step): the process group takes part from
 * here to its end, and only here. */
static int amdim_cpu_step(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d, amdim_step_stats *st,
                    int probes)
{
    amdim_cpu_state *c = m->bs;
    int rc = ensure_buffers_for(m, in->batch, 1);
    if (rc)
        return rc;
    c->comm_on = 1;
    rc = probes ? probe_step(m, in, d, st) : forward_backward(m, in, d, st);
    c->comm_on = 0;
    return rc;
}

static int amdim_cpu_forward_backward(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d,
                                amdim_step_stats *st)
{
    return amdim_cpu_step(m, in, d, st, 0);
}

static int amdim_cpu_probe_step(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d,
                          amdim_step_stats *st)
{
    return amdim_cpu_step(m, in, d, st, 1);
}

static int amdim_cpu_adam(amdim_model *m, const amdim_adam_hparams *h, int probes_only)
{
    for (int i = 0; i < m->arch.ntensors; i++) {
        const amdim_tensor *t = &m->arch.tensors[i];
        if (!t->trainable || (probes_only && !t->probe))
            continue;
        float *w = m->weights + t->offset, *g = m->grads + t->goffset, *mm = m->adam_m + t->goffset,
              *vv = m->adam_v + t->goffset;
        for (size_t k = 0; k < t->size; k++)
            w[k] = amdim_adam_element(w[k], g[k], &mm[k], &vv[k], h);
    }
    return AMDIM_OK;
}

static int amdim_cpu_evaluate(amdim_model *m, const uint8_t *images, int B, float *features, float *lm, float *ll)
{
    amdim_cpu_state *c;
    int rc = ensure_buffers(m, B);
    if (rc)
        return rc;
    c = m->bs;
    int R = m->cfg.n_rkhs, K = m->cfg.n_classes;
    normalise_views(m, images, B, c->x[0]);
    if ((rc = encoder_forward(m, 0, B, 0, 0)))
        return rc;
    gather_features(m, 0, B);
    if (features)
        memcpy(features, c->feat, (size_t)B * R * sizeof(float));
    if (lm || ll) {
        if ((rc = probes_forward(m, B, NULL, NULL, 0)))
            return rc;
        if (lm)
            memcpy(lm, c->logits[0], (size_t)B * K * sizeof(float));
        if (ll)
            memcpy(ll, c->logits[1], (size_t)B * K * sizeof(float));
    }
    m->batch = 0; /* the training outputs were overwritten */
    return AMDIM_OK;
}

static int amdim_cpu_refresh_bn(amdim_model *m, const uint8_t *images, int B, const amdim_step_draws *d)
{
    int rc = ensure_buffers(m, B);
    if (rc)
        return rc;
    amdim_cpu_state *c = m->bs;
    normalise_views(m, images, B, c->x[0]);
    if ((rc = encoder_forward(m, 0, B, 1, 1)))
        return rc;
    gather_features(m, 0, B);
    m->batch = 0;
    return probes_forward(m, B, d->mask_in, d->mask_hidden, 1);
}

static int amdim_cpu_mixture_assign(amdim_model *m, const uint8_t *images, int B, int32_t *winner)
{
    int rc = ensure_buffers(m, B);
    if (rc)
        return rc;
    amdim_cpu_state *c = m->bs;
    int K = m->cfg.mixtures, R = m->cfg.n_rkhs;
    size_t BL = (size_t)B * 49;
    normalise_views(m, images, B, c->x[0]);
    if ((rc = encoder_forward(m, 0, B, 0, 1)))
        return rc;
    m->batch = 0;
    mixture_forward(m, 0, B);
    double l, r;
    for (int j = 0; j < K; j++)
        AMDIM_TRY(op(m, amdim_cpu_nce_direction(c->mix[0] + (size_t)j * R * B, c->hc[0][1].out, R, B, 49, m->cfg.tclip,
                              AMDIM_OBJECTIVE_NCE, 0, 0, NULL, c->mix_lsm + j * BL, &l, &r, NULL, NULL, &c->nce)));
    mixture_assign(m, c->mix_lsm, BL, c->mix_q);
    for (size_t k = 0; k < BL; k++) {
        int best = 0;
        for (int j = 1; j < K; j++)
            best = c->mix_q[j * BL + k] > c->mix_q[best * BL + k] ? j : best;
        winner[k] = best;
    }
    return AMDIM_OK;
}

static int amdim_cpu_output(const amdim_model *m, int view, int which, float *out)
{
    const amdim_cpu_state *c = m->bs;
    int B = m->batch, R = m->cfg.n_rkhs, hw = which == 1 ? 1 : which == 5 ? 25 : 49;
    const float *src = which == 1 ? c->lc[view][m->arch.nlayers - 1].out : c->hc[view][which == 5 ? 0 : 1].out;
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < R; ch++)
            memcpy(out + ((size_t)b * R + ch) * hw, src + ((size_t)ch * B + b) * hw, (size_t)hw * sizeof(float));
    return AMDIM_OK;
}

static int amdim_cpu_logits(const amdim_model *m, int head, float *out)
{
    const amdim_cpu_state *c = m->bs;
    memcpy(out, c->logits[head], (size_t)2 * m->batch * m->cfg.n_classes * sizeof(float));
    return AMDIM_OK;
}

/* OpenBLAS's threads: process-wide, as OpenBLAS keeps them. */
static int amdim_cpu_set_threads(amdim_model *m, int threads)
{
    (void)m;
    openblas_set_num_threads(threads);
    return AMDIM_OK;
}

const amdim_backend amdim_backend_cpu = {
    .name = "cpu",
    .open = amdim_cpu_open,
    .close = amdim_cpu_close,
    .forward_backward = amdim_cpu_forward_backward,
    .probe_step = amdim_cpu_probe_step,
    .adam = amdim_cpu_adam,
    .evaluate = amdim_cpu_evaluate,
    .refresh_bn = amdim_cpu_refresh_bn,
    .output = amdim_cpu_output,
    .logits = amdim_cpu_logits,
    .mixture_assign = amdim_cpu_mixture_assign,
    .set_threads = amdim_cpu_set_threads,
    .pull = NULL,
    .push = NULL,
};
