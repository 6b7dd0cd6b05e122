/* Device memory plans (see plan.h). */
#include "plan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bn_chunks.h"

/* Next buffer of n floats, 256-byte aligned. */
static size_t take(size_t *top, size_t n)
{
    size_t at = (*top + 63) & ~(size_t)63;
    *top = at + n;
    return at;
}

/* take() that also records the extent (the activation plan). */
static size_t take_rec(amdim_cuda_plan *p, size_t *top, size_t n)
{
    size_t at = take(top, n);
    AMDIM_ASSERT(p->nextents < p->capextents);
    p->extents[p->nextents][0] = at;
    p->extents[p->nextents][1] = n;
    p->nextents++;
    return at;
}

static size_t max2(size_t a, size_t b) { return a > b ? a : b; }

int amdim_cuda_conv_uses_cudnn(const amdim_layer *L) { return L->k > 1 || L->s > 1 || L->pad > 0; }

int amdim_cuda_param_plan_build(amdim_cuda_param_plan *p, const amdim_arch *a)
{
    memset(p, 0, sizeof *p);
    p->ohwi = malloc((size_t)(a->ntensors > 0 ? a->ntensors : 1) * sizeof *p->ohwi);
    if (!p->ohwi)
        return AMDIM_E_NOMEM;
    for (int i = 0; i < a->ntensors; i++)
        p->ohwi[i] = AMDIM_CUDA_NONE;
    size_t top = 0, dw = 0;
    p->weights = take(&top, a->weights_size);
    p->grads = take(&top, a->grads_size);
    p->adam_m = take(&top, a->grads_size);
    p->adam_v = take(&top, a->grads_size);
    for (int l = 0; l < a->nlayers; l++) {
        const amdim_layer *L = &a->layers[l];
        if (L->kind == AMDIM_LAYER_BN || !amdim_cuda_conv_uses_cudnn(L))
            continue;
        size_t n = a->tensors[L->w1].size;
        p->ohwi[L->w1] = take(&top, n);
        dw = max2(dw, n);
    }
    p->dw_ohwi = take(&top, dw);
    p->total = top;
    return AMDIM_OK;
}

void amdim_cuda_param_plan_free(amdim_cuda_param_plan *p)
{
    free(p->ohwi);
    memset(p, 0, sizeof *p);
}

int amdim_cuda_plan_build(amdim_cuda_plan *p, const amdim_arch *a, int B, int ranks)
{
    memset(p, 0, sizeof *p);
    const amdim_model_config *c = &a->cfg;
    int S = c->encoder_size, R = c->n_rkhs, H = c->mlp_hidden, K = c->n_classes;
    size_t top = 0, b = (size_t)B, maxact = 3 * b * S * S, bn = 0;
    AMDIM_ASSERT(ranks >= 0);
    size_t bg = b * (size_t)(ranks > 0 ? ranks : 1); /* the global batch */
    p->batch = B;
    p->ranks = ranks;
    p->nlayers = a->nlayers;
    p->capextents = 128 + 12 * (size_t)a->nlayers;
    p->extents = malloc(p->capextents * sizeof *p->extents);
    if (!p->extents)
        return AMDIM_E_NOMEM;
    p->u8 = take_rec(p, &top, (3 * b * S * S + 3) / 4);
    for (int v = 0; v < 2; v++) {
        p->layers[v] = calloc((size_t)(a->nlayers > 0 ? a->nlayers : 1), sizeof *p->layers[v]);
        if (!p->layers[v]) {
            amdim_cuda_plan_free(p);
            return AMDIM_E_NOMEM;
        }
        p->x[v] = take_rec(p, &top, 3 * b * S * S);
        for (int l = 0; l < a->nlayers; l++) {
            const amdim_layer *L = &a->layers[l];
            amdim_cuda_layer_plan *lp = &p->layers[v][l];
            size_t rows = b * L->hout * L->hout, in = b * L->hin * L->hin * L->cin, outn = rows * L->cout;
            maxact = max2(maxact, max2(in, outn));
            lp->out = take_rec(p, &top, outn);
            lp->mean = take_rec(p, &top, (size_t)L->cout);
            lp->istd = take_rec(p, &top, (size_t)L->cout);
            lp->padded = lp->h1 = lp->r = AMDIM_CUDA_NONE;
            if (L->kind == AMDIM_LAYER_STEM && L->pad) {
                size_t hp = (size_t)L->hin + 2 * L->pad;
                lp->padded = take_rec(p, &top, b * hp * hp * L->cin);
            }
            if (L->kind == AMDIM_LAYER_RES) {
                lp->h1 = take_rec(p, &top, outn);
                lp->r = take_rec(p, &top, outn);
            }
            bn = max2(bn, amdim_bn_scratch_doubles(rows, L->cout)); /* BN or the stem's bias gradient */
        }
        for (int h = 0; h < 2; h++) {
            amdim_cuda_head_plan *hp = &p->heads[v][h];
            size_t rows = b * a->heads[h].hw * a->heads[h].hw, n = rows * R;
            hp->h1 = take_rec(p, &top, n);
            hp->r = take_rec(p, &top, n);
            hp->sum = take_rec(p, &top, n);
            hp->out = take_rec(p, &top, n);
            hp->mean1 = take_rec(p, &top, (size_t)R);
            hp->istd1 = take_rec(p, &top, (size_t)R);
            hp->mean2 = take_rec(p, &top, (size_t)R);
            hp->istd2 = take_rec(p, &top, (size_t)R);
            maxact = max2(maxact, n);
            bn = max2(bn, amdim_bn_scratch_doubles(rows, R));
        }
        p->dr1[v] = take_rec(p, &top, b * R);
        p->dr5[v] = take_rec(p, &top, b * 25 * R);
        p->dr7[v] = take_rec(p, &top, b * 49 * R);
    }
    p->maxact = maxact;
    p->grad_a = take_rec(p, &top, maxact);
    p->grad_b = take_rec(p, &top, maxact);
    p->scratch = take_rec(p, &top, 2 * maxact); /* shortcut / head input gradient + inner gradient */
    for (int h = 0; h < 2; h++)
        p->dhead[h] = take_rec(p, &top, b * a->heads[h].hw * a->heads[h].hw * a->heads[h].cin);
    size_t HR = (size_t)(H > R ? H : R);
    p->feat = take_rec(p, &top, 2 * b * R);
    p->mlp_h0 = take_rec(p, &top, 2 * b * R);
    p->mlp_z1 = take_rec(p, &top, 2 * b * H);
    p->mlp_a1 = take_rec(p, &top, 2 * b * H);
    p->mlp_h2 = take_rec(p, &top, 2 * b * H);
    p->mlp_mean = take_rec(p, &top, (size_t)H);
    p->mlp_istd = take_rec(p, &top, (size_t)H);
    p->logits[0] = take_rec(p, &top, 2 * b * K);
    p->logits[1] = take_rec(p, &top, 2 * b * K);
    p->dlogits = take_rec(p, &top, 2 * b * K);
    p->dtmp = take_rec(p, &top, 2 * b * HR);
    p->dtmp2 = take_rec(p, &top, 2 * b * HR);
    p->src = take_rec(p, &top, b * R);
    p->dsrc = take_rec(p, &top, b * R);
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++) {
            size_t hw = f ? 49 : 25;
            p->tg[v][f] = ranks ? take_rec(p, &top, bg * hw * R) : AMDIM_CUDA_NONE;
            p->dtg[v][f] = ranks ? take_rec(p, &top, bg * hw * R) : AMDIM_CUDA_NONE;
        }
    p->scores = take_rec(p, &top, b * bg * 49);
    p->dscores = take_rec(p, &top, b * bg * 49);
    p->mask_in = take_rec(p, &top, 2 * b * R);
    p->mask_hidden = take_rec(p, &top, 2 * b * H);
    p->labels2 = take_rec(p, &top, 2 * b);
    p->src5 = take_rec(p, &top, 2 * b);
    p->stats = take_rec(p, &top, 2 * (AMDIM_CUDA_STATS_CLS * b + 12 * b)); /* doubles */
    bn = max2(bn, max2(amdim_bn_scratch_doubles(2 * b, H), amdim_bn_scratch_doubles(2 * b, K)));
    p->bn_scratch = take_rec(p, &top, 2 * bn); /* doubles */
    p->total = take(&top, 0);
    return AMDIM_OK;
}

void amdim_cuda_plan_free(amdim_cuda_plan *p)
{
    free(p->layers[0]);
    free(p->layers[1]);
    free(p->extents);
    memset(p, 0, sizeof *p);
}

int amdim_cuda_gemm_layout_make(amdim_cuda_gemm_layout *l, int ta, int tb, int M, int N, int K, int lda, int ldb,
                                int ldc)
{
    /* row-major A is (ta ? K : M) rows of (ta ? M : K), B (tb ? N : K) rows of (tb ? K : N), C M rows of N */
    if (M < 1 || N < 1 || K < 1 || lda < (ta ? M : K) || ldb < (tb ? K : N) || ldc < N)
        return AMDIM_E_INVALID;
    /* a row-major (r, c) matrix with row stride ld is the column-major (c, r) one with ld */
    amdim_cuda_gemm_layout g = {
        .trans1 = !!tb, .trans2 = !!ta, .m = N, .n = M, .k = K,
        .rows1 = tb ? K : N, .cols1 = tb ? N : K, .ld1 = ldb,
        .rows2 = ta ? M : K, .cols2 = ta ? K : M, .ld2 = lda,
        .rows_c = N, .cols_c = M, .ld_c = ldc,
    };
    *l = g;
    return AMDIM_OK;
}

/* unit[idx[k]] = u for the tensor indices given (-1: none). */
static void own(int *unit, int nt, const int *idx, int n, int u)
{
    for (int k = 0; k < n; k++)
        if (idx[k] >= 0 && idx[k] < nt)
            unit[idx[k]] = u;
}

int amdim_cuda_grad_buckets(const amdim_arch *a, size_t *lo, size_t *hi)
{
    int U = AMDIM_CUDA_BUCKETS(a), nt = a->ntensors, ok = 1;
    int *unit = malloc((size_t)(nt > 0 ? nt : 1) * sizeof *unit);
    if (!unit)
        return 0;
    for (int i = 0; i < nt; i++)
        unit[i] = -1;
    for (int l = 0; l < a->nlayers; l++) {
        const amdim_layer *L = &a->layers[l];
        int idx[5] = {L->w1, L->b1, L->w2, -1, -1};
        if (L->kind != AMDIM_LAYER_STEM) /* the stem has no BatchNorm (its bn ref is empty) */
            idx[3] = L->bn.t, idx[4] = L->bn.t + 1;
        own(unit, nt, idx, 5, l);
    }
    for (int h = 0; h < 2; h++) {
        const amdim_head *H = &a->heads[h];
        int idx[8] = {H->w1, H->w2, H->ws, H->bs, H->bn_hid.t, H->bn_hid.t + 1, H->bn_out.t, H->bn_out.t + 1};
        own(unit, nt, idx, 8, a->nlayers + h);
    }
    const amdim_probes *P = &a->probes;
    int pidx[7] = {P->mlp_w1, P->mlp_w2, P->mlp_b2, P->lin_w, P->lin_b, P->mlp_bn.t, P->mlp_bn.t + 1};
    own(unit, nt, pidx, 7, a->nlayers + 2);
    for (int u = 0; u < U; u++)
        lo[u] = SIZE_MAX, hi[u] = 0;
    for (int i = 0; i < nt && ok; i++)
        if (a->tensors[i].has_grad) {
            if (unit[i] < 0)
                ok = 0; /* a gradient of no unit (mixtures): no buckets */
            else if (a->tensors[i].goffset < lo[unit[i]])
                lo[unit[i]] = a->tensors[i].goffset;
        }
    for (int u = 0; u < U && ok; u++) { /* up to the next unit's start */
        if (lo[u] == SIZE_MAX)
            continue;
        hi[u] = a->grads_size;
        for (int v = 0; v < U; v++)
            if (lo[v] != SIZE_MAX && lo[v] > lo[u] && lo[v] < hi[u])
                hi[u] = lo[v];
    }
    for (int u = 0; u < U; u++)
        if (lo[u] == SIZE_MAX)
            lo[u] = hi[u] = 0;
    for (int i = 0; i < nt && ok; i++) { /* every gradient in its own unit's range */
        const amdim_tensor *t = &a->tensors[i];
        if (t->has_grad)
            ok = t->goffset >= lo[unit[i]] && t->goffset + t->size <= hi[unit[i]];
    }
    free(unit);
    return ok ? U : 0;
}
