/* Device memory plans (see plan.h). */
#include "plan_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bn_chunks_internal.h"

/* Next buffer of n units (floats in the parameter plan, bytes in the
 * activation plan), starting on a multiple of align units (256 bytes). */
static size_t take_aligned(size_t *top, size_t n, size_t align)
{
    size_t at = (*top + align - 1) / align * align;
    *top = at + n;
    return at;
}
static size_t take(size_t *top, size_t n) { return take_aligned(top, n, 64); }

/* The activation plan's next buffer of n elements of `bytes` bytes each,
 * its extent recorded. */
static size_t take_rec(amdim_cuda_plan *p, size_t *top, size_t n, size_t bytes)
{
    size_t at = take_aligned(top, n * bytes, 256);
    AMDIM_ASSERT(p->nextents < p->capextents);
    p->extents[p->nextents][0] = at;
    p->extents[p->nextents][1] = n * bytes;
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
    p->wbf = take(&top, (a->weights_size + 1) / 2); /* uint16_t per weight */
    for (int l = 0; l < a->nlayers; l++) {
        const amdim_layer *L = &a->layers[l];
        if (L->kind == AMDIM_LAYER_BN || !amdim_cuda_conv_uses_cudnn(L))
            continue;
        size_t n = a->tensors[L->w1].size;
        if (l == 0) /* room for the bf16 mode's zero-padded input channels */
            n = n / (size_t)L->cin * (size_t)(L->cin > AMDIM_CUDA_BF16_IN_CH ? L->cin : AMDIM_CUDA_BF16_IN_CH);
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

/* The activation plan being laid out: the next free byte, the element
 * size, this rank's and the global batch, and the largest activation
 * gradient and BatchNorm scratch seen so far. */
typedef struct {
    amdim_cuda_plan *p;
    size_t top, es, b, bg, maxact, bn;
} plan_builder;

static size_t act_buf(plan_builder *pb, size_t n) { return take_rec(pb->p, &pb->top, n, pb->es); } /* activations */
static size_t f32_buf(plan_builder *pb, size_t n) { return take_rec(pb->p, &pb->top, n, 4); } /* float, int32 */
static size_t f64_buf(plan_builder *pb, size_t n) { return take_rec(pb->p, &pb->top, n, 8); } /* doubles */

/* View v's input, every layer's buffers and both heads'. */
static int plan_view(plan_builder *pb, const amdim_arch *a, int v)
{
    amdim_cuda_plan *p = pb->p;
    size_t b = pb->b, xc = (size_t)p->in_ch, S = (size_t)a->cfg.encoder_size, R = (size_t)a->cfg.n_rkhs;
    p->layers[v] = calloc((size_t)(a->nlayers > 0 ? a->nlayers : 1), sizeof *p->layers[v]);
    if (!p->layers[v])
        return AMDIM_E_NOMEM;
    p->x[v] = act_buf(pb, xc * b * S * S);
    for (int l = 0; l < a->nlayers; l++) {
        const amdim_layer *L = &a->layers[l];
        amdim_cuda_layer_plan *lp = &p->layers[v][l];
        size_t cin = l ? (size_t)L->cin : xc; /* the first layer reads the stored views */
        size_t rows = b * L->hout * L->hout, in = b * L->hin * L->hin * cin, outn = rows * L->cout;
        pb->maxact = max2(pb->maxact, max2(l ? in : 0, outn));
        lp->out = act_buf(pb, outn);
        lp->mean = f32_buf(pb, (size_t)L->cout);
        lp->istd = f32_buf(pb, (size_t)L->cout);
        lp->padded = lp->h1 = lp->r = lp->mask = AMDIM_CUDA_NONE;
        if (L->kind == AMDIM_LAYER_STEM && L->pad) {
            size_t hp = (size_t)L->hin + 2 * L->pad;
            lp->padded = act_buf(pb, b * hp * hp * cin);
        }
        if (L->kind == AMDIM_LAYER_RES) {
            lp->h1 = L->bn.on ? act_buf(pb, outn) : AMDIM_CUDA_NONE;
            lp->r = act_buf(pb, outn);
            if (!L->bn.on && !amdim_cuda_conv_uses_cudnn(L))
                lp->mask = take_rec(p, &pb->top, amdim_cuda_relu_mask_bytes(rows, L->cout), 1);
        }
        pb->bn = max2(pb->bn, amdim_bn_scratch_doubles(rows, L->cout)); /* BN or the stem's bias gradient */
    }
    for (int h = 0; h < 2; h++) {
        amdim_cuda_head_plan *hp = &p->heads[v][h];
        size_t rows = b * a->heads[h].hw * a->heads[h].hw, n = rows * R;
        hp->h1 = a->heads[h].bn_hid.on ? act_buf(pb, n) : AMDIM_CUDA_NONE;
        hp->r = act_buf(pb, n);
        hp->mask = a->heads[h].bn_hid.on ? AMDIM_CUDA_NONE
                                         : take_rec(p, &pb->top, amdim_cuda_relu_mask_bytes(rows, (int)R), 1);
        hp->sum = act_buf(pb, n);
        hp->out = act_buf(pb, n);
        hp->mean1 = f32_buf(pb, R);
        hp->istd1 = f32_buf(pb, R);
        hp->mean2 = f32_buf(pb, R);
        hp->istd2 = f32_buf(pb, R);
        pb->maxact = max2(pb->maxact, n);
        pb->bn = max2(pb->bn, amdim_bn_scratch_doubles(rows, R));
    }
    p->dr1[v] = act_buf(pb, b * R);
    p->dr5[v] = act_buf(pb, b * 25 * R);
    p->dr7[v] = act_buf(pb, b * 49 * R);
    return AMDIM_OK;
}

/* The backward pass's gradient buffers and the online probes'. */
static void plan_backward_and_probes(plan_builder *pb, const amdim_arch *a)
{
    amdim_cuda_plan *p = pb->p;
    size_t b = pb->b, R = (size_t)a->cfg.n_rkhs, H = (size_t)a->cfg.mlp_hidden, K = (size_t)a->cfg.n_classes;
    p->maxact = pb->maxact;
    p->grad_a = act_buf(pb, pb->maxact);
    p->grad_b = act_buf(pb, pb->maxact);
    /* the inner gradient of a layer or head; also float staging of up to
     * maxact values (2 maxact es >= 4 maxact bytes) */
    p->scratch = act_buf(pb, 2 * pb->maxact);
    for (int h = 0; h < 2; h++)
        p->dhead[h] = act_buf(pb, b * a->heads[h].hw * a->heads[h].hw * a->heads[h].cin);
    size_t HR = H > R ? H : R;
    p->feat = act_buf(pb, 2 * b * R);
    p->mlp_h0 = act_buf(pb, 2 * b * R);
    p->mlp_z1 = act_buf(pb, 2 * b * H);
    p->mlp_a1 = act_buf(pb, 2 * b * H);
    p->mlp_h2 = act_buf(pb, 2 * b * H);
    p->mlp_mean = f32_buf(pb, H);
    p->mlp_istd = f32_buf(pb, H);
    p->logits[0] = f32_buf(pb, 2 * b * K);
    p->logits[1] = f32_buf(pb, 2 * b * K);
    p->dlogits = f32_buf(pb, 2 * b * K);
    p->dlogits_act = pb->es == 4 ? p->dlogits : act_buf(pb, 2 * b * K);
    p->dtmp = act_buf(pb, 2 * b * HR);
    p->dtmp2 = act_buf(pb, 2 * b * HR);
    pb->bn = max2(pb->bn, max2(amdim_bn_scratch_doubles(2 * b, (int)H), amdim_bn_scratch_doubles(2 * b, (int)K)));
}

/* The objective's: sources, the group's targets, scores, masks, statistics. */
static void plan_objective(plan_builder *pb, const amdim_arch *a)
{
    amdim_cuda_plan *p = pb->p;
    size_t b = pb->b, bg = pb->bg, R = (size_t)a->cfg.n_rkhs, H = (size_t)a->cfg.mlp_hidden;
    p->src = act_buf(pb, b * R);
    p->dsrc = act_buf(pb, b * R);
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++) {
            size_t hw = f ? 49 : 25;
            p->tg[v][f] = p->ranks ? act_buf(pb, bg * hw * R) : AMDIM_CUDA_NONE;
            p->dtg[v][f] = p->ranks ? act_buf(pb, bg * hw * R) : AMDIM_CUDA_NONE;
        }
    p->scores = f32_buf(pb, b * bg * 49);
    p->dscores = f32_buf(pb, b * bg * 49);
    p->dscores_act = pb->es == 4 ? p->dscores : act_buf(pb, b * bg * 49);
    p->mask_in = f32_buf(pb, 2 * b * R);
    p->mask_hidden = f32_buf(pb, 2 * b * H);
    p->labels2 = f32_buf(pb, 2 * b);
    p->src5 = f32_buf(pb, 2 * b);
    p->stats = f64_buf(pb, AMDIM_CUDA_STATS_CLS * b + 12 * b);
}

int amdim_cuda_plan_build(amdim_cuda_plan *p, const amdim_arch *a, int B, int ranks, int act_bytes)
{
    memset(p, 0, sizeof *p);
    AMDIM_ASSERT(ranks >= 0 && (act_bytes == 2 || act_bytes == 4));
    size_t b = (size_t)B, S = (size_t)a->cfg.encoder_size;
    /* maxact: the largest activation gradient (the first layer's input
     * never gets one) and at least the 3 B S S floats of an NCHW test view
     * staged in the scratch */
    plan_builder pb = {p, 0, (size_t)act_bytes, b, b * (size_t)(ranks > 0 ? ranks : 1), 3 * b * S * S, 0};
    p->batch = B;
    p->ranks = ranks;
    p->act_bytes = act_bytes;
    p->in_ch = amdim_cuda_in_channels(act_bytes);
    p->nlayers = a->nlayers;
    p->capextents = 128 + 12 * (size_t)a->nlayers;
    p->extents = malloc(p->capextents * sizeof *p->extents);
    if (!p->extents)
        return AMDIM_E_NOMEM;
    p->u8 = take_rec(p, &pb.top, 3 * b * S * S, 1);
    for (int v = 0; v < 2; v++)
        if (plan_view(&pb, a, v)) {
            amdim_cuda_plan_free(p);
            return AMDIM_E_NOMEM;
        }
    plan_backward_and_probes(&pb, a);
    plan_objective(&pb, a);
    p->bn_scratch = f64_buf(&pb, pb.bn);
    p->total = take_aligned(&pb.top, 0, 256);
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
