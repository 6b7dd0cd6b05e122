/* The CPU backend's encoder (cpu_internal.h): its buffers, layers and
 * heads forward and backward. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "cpu_internal.h"

/* ---- buffers ------------------------------------------------------------ */

void amdim_cpu_free_buffers(amdim_model *m, amdim_cpu_state *c)
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
#define ALLOC(ptr, count)                                \
    do {                                                 \
        size_t n_ = (size_t)(count);                     \
        if (bytes) {                                     \
            *bytes += (n_ > 0 ? n_ : 1) * sizeof *(ptr); \
            (ptr) = NULL;                                \
            break;                                       \
        }                                                \
        (ptr) = calloc(n_ > 0 ? n_ : 1, sizeof *(ptr));  \
        if (!(ptr))                                      \
            return -1;                                   \
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
int amdim_cpu_ensure_buffers_for(amdim_model *m, int B, int group)
{
    amdim_cpu_state *c = m->bs;
    int size = group && m->comm ? m->comm->size : 0;
    if (c->batch == B && (c->comm_size == size || (!group && c->comm_size)))
        return AMDIM_OK;
    amdim_cpu_free_buffers(m, c);
    if (alloc_buffers(&m->arch, c, B, size, NULL)) {
        amdim_cpu_free_buffers(m, c);
        return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory for the activations of batch %d", B);
    }
    return AMDIM_OK;
}

int amdim_cpu_ensure_buffers(amdim_model *m, int B) { return amdim_cpu_ensure_buffers_for(m, B, 0); }

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
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_forward(in, L->cin, B, h, h, weight(m, L->w1), weight(m, L->b1),
                                                           L->cout, L->k, L->s, lc->out, &c->scr)));
        amdim_cpu_relu_forward(lc->out, outn);
        break;
    }
    case AMDIM_LAYER_RES: {
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_forward(x, L->cin, B, L->hin, L->hin, weight(m, L->w1), NULL,
                                                           L->cout, L->k, L->s, lc->h1, &c->scr)));
        AMDIM_TRY(
            amdim_cpu_op(m, amdim_cpu_bn_forward(m, L->bn, lc->h1, L->cout, cnt, train, lc->r, lc->mean, lc->istd)));
        amdim_cpu_relu_forward(lc->r, outn);
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_forward(lc->r, L->cout, B, L->hout, L->hout, weight(m, L->w2), NULL,
                                                           L->cout, 1, 1, lc->out, &c->scr)));
        float *sc = amdim_cpu_op_scratch_get(&c->scr2, outn);
        if (!sc)
            return NOMEM();
        amdim_cpu_avgpool_pad_forward(x, L->cin, B, L->hin, L->hin, L->k, L->s, L->cout, sc);
        for (size_t i = 0; i < outn; i++)
            lc->out[i] += sc[i];
        break;
    }
    default: /* AMDIM_LAYER_BN */
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_bn_forward(m, L->bn, x, L->cout, cnt, train, lc->out, lc->mean, lc->istd)));
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
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_backward(in, L->cin, B, h, h, weight(m, L->w1), L->cout, L->k, L->s,
                                                            dy, dx, grad(m, L->w1), grad(m, L->b1), &c->scr)));
        break;
    }
    case AMDIM_LAYER_RES: {
        float *dr = amdim_cpu_op_scratch_get(&c->scr2, outn);
        if (!dr)
            return NOMEM();
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_backward(lc->r, L->cout, B, L->hout, L->hout, weight(m, L->w2),
                                                            L->cout, 1, 1, dy, dr, grad(m, L->w2), NULL, &c->scr)));
        amdim_cpu_relu_backward(lc->r, dr, outn);
        if (L->bn.on) {
            amdim_cpu_bn_params bp = bn_view(m, L->bn);
            AMDIM_TRY(
                amdim_cpu_op(m, amdim_cpu_batchnorm_backward(lc->h1, L->cout, cnt, &bp, lc->mean, lc->istd, dr, dr)));
        }
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_backward(x, L->cin, B, L->hin, L->hin, weight(m, L->w1), L->cout,
                                                            L->k, L->s, dr, dx, grad(m, L->w1), NULL, &c->scr)));
        if (dx)
            amdim_cpu_avgpool_pad_backward(dy, L->cin, B, L->hin, L->hin, L->k, L->s, dx);
        break;
    }
    default:
        if (L->bn.on) {
            amdim_cpu_bn_params bp = bn_view(m, L->bn);
            AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_batchnorm_backward(x, L->cout, cnt, &bp, lc->mean, lc->istd, dy, dx)));
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
    AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_forward(x, h->cin, B, h->hw, h->hw, weight(m, h->w1), NULL, h->cout, 1,
                                                       1, hc->h1, &c->scr)));
    AMDIM_TRY(
        amdim_cpu_op(m, amdim_cpu_bn_forward(m, h->bn_hid, hc->h1, h->cout, cnt, train, hc->r, hc->mean1, hc->istd1)));
    amdim_cpu_relu_forward(hc->r, n);
    AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_forward(hc->r, h->cout, B, h->hw, h->hw, weight(m, h->w2), NULL, h->cout,
                                                       1, 1, hc->sum, &c->scr)));
    float *sc = amdim_cpu_op_scratch_get(&c->scr2, n);
    if (!sc)
        return NOMEM();
    AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_forward(x, h->cin, B, h->hw, h->hw, weight(m, h->ws), weight(m, h->bs),
                                                       h->cout, 1, 1, sc, &c->scr)));
    for (size_t i = 0; i < n; i++)
        hc->sum[i] += sc[i];
    return amdim_cpu_bn_forward(m, h->bn_out, hc->sum, h->cout, cnt, train, hc->out, hc->mean2, hc->istd2);
}

/* dy: gradient of the head output (modified); dx: gradient of the head
 * input (overwritten). */
static int head_backward(amdim_model *m, const amdim_head *h, head_cache *hc, const float *x, int B, float *dy,
                         float *dx)
{
    amdim_cpu_state *c = m->bs;
    size_t n = (size_t)h->cout * B * h->hw * h->hw, cnt = (size_t)B * h->hw * h->hw;
    amdim_cpu_bn_params bo = bn_view(m, h->bn_out);
    AMDIM_TRY(amdim_cpu_op(
        m, amdim_cpu_batchnorm_backward(hc->sum, h->cout, cnt, &bo, hc->mean2, hc->istd2, dy, dy))); /* dy = d sum */
    size_t nin = (size_t)h->cin * B * h->hw * h->hw;
    float *dx2 = amdim_cpu_op_scratch_get(&c->scr2, nin + n);
    if (!dx2)
        return NOMEM();
    float *dr = dx2 + nin;
    AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_backward(x, h->cin, B, h->hw, h->hw, weight(m, h->ws), h->cout, 1, 1, dy,
                                                        dx, grad(m, h->ws), grad(m, h->bs), &c->scr)));
    AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_backward(hc->r, h->cout, B, h->hw, h->hw, weight(m, h->w2), h->cout, 1,
                                                        1, dy, dr, grad(m, h->w2), NULL, &c->scr)));
    amdim_cpu_relu_backward(hc->r, dr, n);
    if (h->bn_hid.on) {
        amdim_cpu_bn_params bp = bn_view(m, h->bn_hid);
        AMDIM_TRY(
            amdim_cpu_op(m, amdim_cpu_batchnorm_backward(hc->h1, h->cout, cnt, &bp, hc->mean1, hc->istd1, dr, dr)));
    }
    AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_conv2d_backward(x, h->cin, B, h->hw, h->hw, weight(m, h->w1), h->cout, 1, 1, dr,
                                                        dx2, grad(m, h->w1), NULL, &c->scr)));
    for (size_t i = 0; i < nin; i++)
        dx[i] += dx2[i];
    return AMDIM_OK;
}

/* The encoder alone (heads too when `heads`), view v, from c->x[v]. */
int amdim_cpu_encoder_forward(amdim_model *m, int v, int B, int train, int heads)
{
    amdim_cpu_state *c = m->bs;
    const amdim_arch *a = &m->arch;
    const float *in = c->x[v];
    int rc;
    for (int l = 0; l < a->nlayers; l++) {
        double t0 = tick(m);
        if ((rc = layer_forward(m, &a->layers[l], &c->lc[v][l], in, B, train)))
            return rc;
        amdim_cpu_prof(m, l, 0, t0, B);
        in = c->lc[v][l].out;
    }
    for (int h = 0; heads && h < 2; h++) {
        double t0 = tick(m);
        const amdim_head *hd = &a->heads[h];
        if ((rc = head_forward(m, hd, &c->hc[v][h], c->lc[v][hd->src_layer].out, B, train)))
            return rc;
        amdim_cpu_prof(m, a->nlayers + h, 0, t0, B);
    }
    return AMDIM_OK;
}

int amdim_cpu_encoder_backward(amdim_model *m, int v, int B)
{
    amdim_cpu_state *c = m->bs;
    const amdim_arch *a = &m->arch;
    int rc;
    /* heads first: their input gradients join the encoder's at i5 and i7 */
    for (int h = 0; h < 2; h++) {
        double t0 = tick(m);
        const amdim_head *hd = &a->heads[h];
        if ((rc = head_backward(m, hd, &c->hc[v][h], c->lc[v][hd->src_layer].out, B, h ? c->dr7[v] : c->dr5[v],
                                c->dhead[h])))
            return rc;
        amdim_cpu_prof(m, a->nlayers + h, 1, t0, B);
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
        double t0 = tick(m);
        if ((rc = layer_backward(m, L, &c->lc[v][l], x, B, dy, l ? dx : NULL)))
            return rc;
        amdim_cpu_prof(m, l, 1, t0, B);
        float *t = dy;
        dy = dx;
        dx = t;
    }
    return AMDIM_OK;
}
