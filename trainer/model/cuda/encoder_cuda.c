/* The CUDA backend's encoder (cuda_internal.h): its buffers, filter
 * copies and convolution algorithms, layers and heads forward and
 * backward. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* ---- buffers ------------------------------------------------------------------ */

/* The activation arena for batch B; with `group` (a training step with a
 * process group) also the global batch's target buffers, which
 * evaluation and BN refresh never need. */
int amdim_cuda_ensure_buffers_for(amdim_model *m, int B, int group)
{
    amdim_cuda_state *c = m->bs;
    int ranks = group && m->comm ? m->comm->size : 0; /* the global target buffers with a group */
    if (c->plan.batch == B && c->plan.act_bytes == (int)c->es && (c->plan.ranks == ranks || (!group && c->plan.ranks)))
        return AMDIM_OK;
    m->batch = 0;                                     /* the outputs of the last training step go with the old arena */
    amdim_cuda_graph_drop(&c->fb_graph, &c->fb_warm); /* so does the step's graph */
    c->prepared_batch = 0; /* the new arena's buffers; synced_* stays: the table keeps rank 0's choices */
    cudaFree(c->act);
    c->act = NULL;
    amdim_cuda_plan_free(&c->plan);
    free(c->stats);
    free(c->labels2);
    c->stats = NULL;
    c->labels2 = NULL;
    if (amdim_cuda_plan_build(&c->plan, &m->arch, B, ranks, (int)c->es))
        return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory (activation plan)");
    c->stats = malloc((AMDIM_CUDA_STATS_CLS * (size_t)B + 12 * (size_t)B) * sizeof(double));
    c->labels2 = malloc(2 * (size_t)B * sizeof(int32_t));
    if (!c->stats || !c->labels2) {
        amdim_cuda_plan_free(&c->plan);
        return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory");
    }
    cudaError_t e = cudaMalloc(&c->act, c->plan.total);
    if (e != cudaSuccess) {
        c->act = NULL;
        amdim_cuda_plan_free(&c->plan);
        return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "cudaMalloc(%zu MiB of %s activations for batch %d): %s",
                           c->plan.total >> 20, c->bf16 ? "bf16" : "fp32", B, cudaGetErrorString(e));
    }
    return AMDIM_OK;
}

int amdim_cuda_ensure_buffers(amdim_model *m, int B) { return amdim_cuda_ensure_buffers_for(m, B, 0); }

/* Input channels layer L's convolution sees: the stored views' (3, or
 * zero-padded to AMDIM_CUDA_BF16_IN_CH in the bf16 mode; plan.h) for the
 * first layer, cin otherwise. */
static int conv_cin(const amdim_model *m, const amdim_layer *L)
{
    return L == &m->arch.layers[0] ? amdim_cuda_in_channels((int)cuda_of(m)->es) : L->cin;
}

/* The OHWI copy of tensor i from its OIHW master, in the activation type,
 * with the first layer's input channels padded (no-op for GEMM weights). */
int amdim_cuda_refresh_ohwi(amdim_model *m, int i)
{
    const amdim_tensor *t = &m->arch.tensors[i];
    if (cuda_of(m)->pp.ohwi[i] == AMDIM_CUDA_NONE)
        return AMDIM_OK;
    int ipad = i == m->arch.layers[0].w1 ? conv_cin(m, &m->arch.layers[0]) : t->shape[1];
    return amdim_oihw_to_ohwi_cuda(kctx(m), weight(m, i), t->shape[0], t->shape[1], t->shape[2], ipad,
                                   filter_ohwi(m, i));
}

/* Every weight's compute copies from the masters: the OHWI filters and,
 * in the bf16 mode, the bf16 copy of the weights block (Adam keeps both
 * after each update). */
int amdim_cuda_refresh_copies(amdim_model *m)
{
    amdim_cuda_state *c = m->bs;
    if (c->bf16)
        AMDIM_TRY(amdim_f32_to_bf16_cuda(kctx(m), c->params + c->pp.weights, m->arch.weights_size,
                                         (uint16_t *)(void *)(c->params + c->pp.wbf)));
    for (int i = 0; i < m->arch.ntensors; i++)
        AMDIM_TRY(amdim_cuda_refresh_ohwi(m, i));
    return AMDIM_OK;
}

/* ---- encoder ------------------------------------------------------------------- */

static amdim_conv_shape conv_shape(const amdim_model *m, const amdim_layer *L, int B)
{
    int h = L->hin + 2 * L->pad;
    amdim_conv_shape s = {B, conv_cin(m, L), h, h, L->cout, L->k, L->s};
    return s;
}

/* Layer l's convolution into the error: "encoder layer l (3x3 stride 1,
 * 8 -> 16 channels): " before what m->err holds. */
static int layer_fail(amdim_model *m, int l, int rc)
{
    char why[sizeof m->err];
    const amdim_layer *L = &m->arch.layers[l];
    snprintf(why, sizeof why, "%s", m->err);
    int odd = cuda_of(m)->bf16 && (conv_cin(m, L) % 8 || L->cout % 8);
    return AMDIM_MFAIL(
        m, rc, "encoder layer %d (%dx%d convolution, stride %d, %d -> %d channels at %d px): %s%s", l, L->k, L->k, L->s,
        conv_cin(m, L), L->cout, L->hin + 2 * L->pad, why,
        odd ? "; cuDNN's bf16 convolutions need channel counts that are multiples of 8 (an ndf that is a "
              "multiple of 8, or --precision fp32)"
            : "");
}

/* Every cuDNN convolution of a step at batch B (with backward: its
 * gradients too) gets its algorithm from the process's table (conv.h),
 * measured now for shapes it does not have - before the step, on buffers
 * it does not need yet (Find overwrites its output), so that no
 * measurement happens inside a step or a capture. */
int amdim_cuda_prepare_convs(amdim_model *m, int B, int backward)
{
    amdim_cuda_state *c = m->bs;
    if (c->prepared_batch == B && c->prepared_bwd >= backward)
        return AMDIM_OK;
    const amdim_cuda_plan *P = &c->plan;
    void *ga = act(m, P->grad_a), *gb = act(m, P->grad_b), *dw = c->params + c->pp.dw_ohwi;
    for (int l = 0; l < m->arch.nlayers; l++) {
        const amdim_layer *L = &m->arch.layers[l];
        const amdim_cuda_layer_plan *lp = &P->layers[0][l];
        if (L->kind == AMDIM_LAYER_BN || (L->kind == AMDIM_LAYER_RES && !amdim_cuda_conv_uses_cudnn(L)))
            continue;
        amdim_conv_shape sh = conv_shape(m, L, B);
        const void *x = L->pad ? act(m, lp->padded) : l ? act(m, P->layers[0][l - 1].out) : act(m, P->x[0]);
        void *y = L->kind == AMDIM_LAYER_STEM ? act(m, lp->out) : act(m, L->bn.on ? lp->h1 : lp->r);
        int rc = amdim_conv_prepare(&c->conv, AMDIM_CONV_FWD, &sh, x, filter_ohwi(m, L->w1), y);
        if (!rc && backward)
            rc = amdim_conv_prepare(&c->conv, AMDIM_CONV_FILTER, &sh, x, y, dw);
        if (!rc && backward && l > 0)
            rc = amdim_conv_prepare(&c->conv, AMDIM_CONV_DATA, &sh, filter_ohwi(m, L->w1), ga, gb);
        if (rc)
            return layer_fail(m, l, rc);
    }
    c->prepared_batch = B;
    c->prepared_bwd = backward;
    return amdim_cuda_finish(m);
}

/* Broadcasts rank 0's choices for this step's convolutions as (algo,
 * math) pairs in layer order, then rank 0's status (its prepare's rc0),
 * and adopts them on the other ranks. */
static int sync_convs(amdim_model *m, int B, int backward, int rc0)
{
    amdim_cuda_state *c = m->bs;
    int n = 0, cap = 3 * m->arch.nlayers, root = m->comm->rank == 0;
    float *buf = calloc((size_t)(2 * cap + 1), sizeof *buf);
    amdim_conv_shape *sh = calloc((size_t)cap + 1, sizeof *sh);
    int *op = calloc((size_t)cap + 1, sizeof *op), rc = AMDIM_OK;
    if (!buf || !sh || !op) {
        free(buf), free(sh), free(op);
        return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory");
    }
    for (int l = 0; l < m->arch.nlayers; l++) {
        const amdim_layer *L = &m->arch.layers[l];
        if (L->kind == AMDIM_LAYER_BN || (L->kind == AMDIM_LAYER_RES && !amdim_cuda_conv_uses_cudnn(L)))
            continue;
        for (int o = 0; o < (backward ? (l > 0 ? 3 : 2) : 1); o++) {
            sh[n] = conv_shape(m, L, B);
            op[n] = o == 0 ? AMDIM_CONV_FWD : o == 1 ? AMDIM_CONV_FILTER : AMDIM_CONV_DATA;
            int algo = -1, math = -1;
            if (root && !rc0)
                amdim_conv_choice_get(&c->conv, op[n], &sh[n], &algo, &math);
            buf[2 * n] = (float)algo; /* small integers: exact as floats */
            buf[2 * n + 1] = (float)math;
            n++;
        }
    }
    buf[2 * n] = root && rc0 ? 1.0f : 0.0f;
    int e = m->comm->bcast_f32(m->comm->ctx, buf, (size_t)(2 * n + 1), 0);
    if (e)
        rc = amdim_cuda_comm_fail(m, e, "broadcasting rank 0's cuDNN algorithms");
    else if (root && rc0)
        rc = rc0; /* its own error stays in m->err */
    else if (buf[2 * n] != 0.0f)
        rc = AMDIM_MFAIL(m, AMDIM_E_IO, "rank 0 could not choose its cuDNN algorithms for batch %d (its log says why)",
                         B);
    for (int i = 0; !rc && !root && i < n; i++) {
        if (buf[2 * i] < 0) {
            rc = AMDIM_MFAIL(m, AMDIM_E_IO, "rank 0 has no cuDNN algorithm for convolution %d of the step", i);
            break;
        }
        rc = amdim_conv_choice_set(&c->conv, op[i], &sh[i], (int)buf[2 * i], (int)buf[2 * i + 1]);
    }
    free(buf), free(sh), free(op);
    return rc;
}

/* A group's ranks convolve with rank 0's algorithms, so that they sum in
 * the same order everywhere: rank 0 measures (prepare), the others adopt
 * its choices and then prepare without measuring; once per batch size.
 * Rank 0's failure reaches every rank through the broadcast, so none is
 * left waiting in a collective. Without a group: prepare. */
int amdim_cuda_choose_convs(amdim_model *m, int B, int backward)
{
    amdim_cuda_state *c = m->bs;
    if (!m->comm || (c->synced_batch == B && c->synced_bwd >= backward && c->synced_group == m->comm))
        return amdim_cuda_prepare_convs(m, B, backward);
    int root = m->comm->rank == 0;
    int rc0 = root ? amdim_cuda_prepare_convs(m, B, backward) : AMDIM_OK;
    AMDIM_TRY(sync_convs(m, B, backward, rc0));
    if (!root)
        AMDIM_TRY(amdim_cuda_prepare_convs(m, B, backward));
    c->synced_batch = B;
    c->synced_bwd = backward;
    c->synced_group = m->comm;
    return AMDIM_OK;
}

/* ---- cuDNN calls, into the launch list -------------------------------------------- */

/* 2 n ho wo cout k k cin FLOPs; the bytes of x, w and y (or their gradients). */
static void note_conv(const amdim_model *m, const char *op, const amdim_conv_shape *sh)
{
    double ho = (sh->h - sh->k) / sh->s + 1, wo = (sh->w - sh->k) / sh->s + 1, es = (double)cuda_of(m)->es;
    double x = (double)sh->n * sh->h * sh->w * sh->cin, w = (double)sh->cout * sh->k * sh->k * sh->cin;
    double y = (double)sh->n * ho * wo * sh->cout;
    amdim_cuda_note(m, op, (x + w + y) * es, 2.0 * y * sh->k * sh->k * sh->cin);
}

static int conv_forward(amdim_model *m, const amdim_conv_shape *sh, const void *x, const void *w, void *y)
{
    AMDIM_TRY(amdim_conv_forward(&cuda_of(m)->conv, sh, x, w, y));
    note_conv(m, "convolution", sh);
    return AMDIM_OK;
}

static int conv_backward_filter(amdim_model *m, const amdim_conv_shape *sh, const void *x, const void *dy, void *dw)
{
    AMDIM_TRY(amdim_conv_backward_filter(&cuda_of(m)->conv, sh, x, dy, dw));
    note_conv(m, "convolution (filter gradient)", sh);
    return AMDIM_OK;
}

static int conv_backward_data(amdim_model *m, const amdim_conv_shape *sh, const void *w, const void *dy, void *dx)
{
    AMDIM_TRY(amdim_conv_backward_data(&cuda_of(m)->conv, sh, w, dy, dx));
    note_conv(m, "convolution (data gradient)", sh);
    return AMDIM_OK;
}

/* ---- fused linear layers ------------------------------------------------------ */

static const amdim_cuda_epilogue ep_none = {AMDIM_CUDA_EP_NONE, NULL, NULL};

/* r (rows, out) = relu(x (rows, in) W^T) with the ReLU's bit-mask, in the
 * GEMM's epilogue; *fused 0 (and nothing done) where cuBLASLt has no
 * algorithm for it. */
static int linear_relu_mask(amdim_model *m, const void *x, size_t rows, int in, const void *w, int out, void *r,
                            void *mask, int *fused)
{
    amdim_cuda_epilogue ep = {AMDIM_CUDA_EP_RELU_AUX, NULL, mask};
    int rc = amdim_cuda_lt_gemm(m, 0, 1, (int)rows, out, in, 1.0f, x, in, w, in, 0.0f, r, r, out, C_ACT, &ep);
    *fused = rc == AMDIM_OK;
    return rc == AMDIM_E_UNSUPPORTED ? AMDIM_OK : rc;
}

/* Whether linear_relu_mask fused (and wrote the mask) for these operands. */
static int relu_mask_written(amdim_model *m, const void *x, size_t rows, int in, const void *w, int out, void *r,
                             void *mask, int *written)
{
    amdim_cuda_epilogue ep = {AMDIM_CUDA_EP_RELU_AUX, NULL, mask};
    return amdim_cuda_lt_supported(m, 0, 1, (int)rows, out, in, x, in, w, in, r, r, out, C_ACT, &ep, written);
}

/* dr (rows, in) = dy (rows, out) W, zeroed where the forward ReLU's output
 * r was not positive: with the forward's mask in the GEMM's epilogue
 * (mask_written), else a GEMM and the ReLU's backward kernel. */
static int linear_relu_backward_data(amdim_model *m, const void *dy, size_t rows, int out, const void *w, int in,
                                     const void *r, void *mask, int mask_written, void *dr)
{
    if (mask_written) {
        amdim_cuda_epilogue ep = {AMDIM_CUDA_EP_DRELU, NULL, mask};
        int rc = amdim_cuda_lt_gemm(m, 0, 0, (int)rows, in, out, 1.0f, dy, out, w, in, 0.0f, dr, dr, in, C_ACT, &ep);
        if (rc != AMDIM_E_UNSUPPORTED)
            return rc;
    }
    AMDIM_TRY(amdim_cuda_gemm(m, 0, 0, (int)rows, in, out, 1.0f, dy, out, w, in, 0.0f, dr, in, C_ACT));
    return amdim_relu_backward_cuda(kctx(m), r, dr, rows * (size_t)in);
}

/* ---- the residual unit ---------------------------------------------------------- */

/* 1 when unit L's shortcut is the identity (a 1x1 stride-1 unit that
 * keeps its channels): added as the GEMM's C. */
static int res_identity(const amdim_layer *L) { return !amdim_cuda_conv_uses_cudnn(L) && L->cin == L->cout; }

/* ConvResNxN: r = relu([BN](conv1 x)), out = conv2 r + shortcut(x).
 * Without BatchNorm conv1 writes r itself, and on a GEMM the ReLU (and
 * its mask for the backward) is the GEMM's epilogue; an identity
 * shortcut is conv2's C. */
static int res_forward(amdim_model *m, const amdim_layer *L, const amdim_cuda_layer_plan *lp, const void *x, int B,
                       int train)
{
    size_t rows = (size_t)B * L->hout * L->hout, outn = rows * L->cout;
    void *r = act(m, lp->r), *out = act(m, lp->out), *h1 = L->bn.on ? act(m, lp->h1) : r;
    int relu_done = 0;
    if (amdim_cuda_conv_uses_cudnn(L)) {
        amdim_conv_shape sh = conv_shape(m, L, B);
        AMDIM_TRY(conv_forward(m, &sh, x, filter_ohwi(m, L->w1), h1));
    } else if (!L->bn.on) {
        AMDIM_TRY(
            linear_relu_mask(m, x, rows, L->cin, gemm_weight(m, L->w1), L->cout, r, act(m, lp->mask), &relu_done));
    }
    if (!amdim_cuda_conv_uses_cudnn(L) && !relu_done)
        AMDIM_TRY(amdim_cuda_linear_forward(m, x, rows, L->cin, gemm_weight(m, L->w1), NULL, L->cout, 0.0f, h1, C_ACT));
    if (L->bn.on)
        AMDIM_TRY(
            amdim_cuda_bn_forward(m, L->bn, h1, rows, L->cout, train, r, act_f32(m, lp->mean), act_f32(m, lp->istd)));
    if (!relu_done)
        AMDIM_TRY(amdim_relu_forward_cuda(kctx(m), r, outn));
    if (res_identity(L)) {
        int rc = amdim_cuda_lt_gemm(m, 0, 1, (int)rows, L->cout, L->cout, 1.0f, r, L->cout, gemm_weight(m, L->w2),
                                    L->cout, 1.0f, x, out, L->cout, C_ACT, &ep_none);
        if (rc != AMDIM_E_UNSUPPORTED)
            return rc;
    }
    AMDIM_TRY(amdim_cuda_linear_forward(m, r, rows, L->cout, gemm_weight(m, L->w2), NULL, L->cout, 0.0f, out, C_ACT));
    return amdim_avgpool_pad_forward_add_cuda(kctx(m), x, B, L->hin, L->hin, L->cin, L->k, L->s, L->cout, out);
}

/* res_forward's backward: dy the output's gradient, dx the input's (NULL:
 * not needed); an identity shortcut's gradient is the data GEMM's C. */
static int res_backward(amdim_model *m, const amdim_layer *L, const amdim_cuda_layer_plan *lp, const void *x, int B,
                        void *dy, void *dx)
{
    amdim_cuda_state *c = m->bs;
    size_t rows = (size_t)B * L->hout * L->hout;
    void *r = act(m, lp->r), *dr = act(m, c->plan.scratch);
    int masked = 0, shortcut_done = 0;
    if (lp->mask != AMDIM_CUDA_NONE)
        AMDIM_TRY(relu_mask_written(m, x, rows, L->cin, gemm_weight(m, L->w1), L->cout, r, act(m, lp->mask), &masked));
    AMDIM_TRY(amdim_cuda_gemm(m, 1, 0, L->cout, L->cout, (int)rows, 1.0f, dy, L->cout, r, L->cout, 1.0f, grad(m, L->w2),
                              L->cout, C_F32));
    AMDIM_TRY(linear_relu_backward_data(m, dy, rows, L->cout, gemm_weight(m, L->w2), L->cout, r,
                                        masked ? act(m, lp->mask) : NULL, masked, dr));
    if (L->bn.on) {
        amdim_cuda_bn p = bn_view(m, L->bn);
        AMDIM_TRY(amdim_batchnorm_backward_cuda(kctx(m), act(m, lp->h1), rows, L->cout, &p, act_f32(m, lp->mean),
                                                act_f32(m, lp->istd), dr, dr, bn_scratch(m)));
    }
    if (amdim_cuda_conv_uses_cudnn(L)) {
        amdim_conv_shape sh = conv_shape(m, L, B);
        void *dw = c->params + c->pp.dw_ohwi;
        AMDIM_TRY(conv_backward_filter(m, &sh, x, dr, dw));
        AMDIM_TRY(amdim_ohwi_to_oihw_add_cuda(kctx(m), dw, L->cout, L->cin, L->k, sh.cin, grad(m, L->w1)));
        if (dx)
            AMDIM_TRY(conv_backward_data(m, &sh, filter_ohwi(m, L->w1), dr, dx));
    } else {
        AMDIM_TRY(amdim_cuda_gemm(m, 1, 0, L->cout, L->cin, (int)rows, 1.0f, dr, L->cout, x, L->cin, 1.0f,
                                  grad(m, L->w1), L->cin, C_F32));
        if (dx && res_identity(L)) { /* dx = dr W1 + dy */
            int rc = amdim_cuda_lt_gemm(m, 0, 0, (int)rows, L->cin, L->cout, 1.0f, dr, L->cout, gemm_weight(m, L->w1),
                                        L->cin, 1.0f, dy, dx, L->cin, C_ACT, &ep_none);
            if (rc != AMDIM_E_UNSUPPORTED)
                AMDIM_TRY(rc);
            shortcut_done = rc == AMDIM_OK;
        }
        if (dx && !shortcut_done)
            AMDIM_TRY(amdim_cuda_gemm(m, 0, 0, (int)rows, L->cin, L->cout, 1.0f, dr, L->cout, gemm_weight(m, L->w1),
                                      L->cin, 0.0f, dx, L->cin, C_ACT));
    }
    if (!dx || shortcut_done)
        return AMDIM_OK;
    return amdim_avgpool_pad_backward_add_cuda(kctx(m), dy, B, L->hin, L->hin, L->cin, L->k, L->s, L->cout, dx);
}

/* x (B, hin, hin, cin) -> lp->out (B, hout, hout, cout) */
static int layer_forward(amdim_model *m, const amdim_layer *L, const amdim_cuda_layer_plan *lp, const void *x, int B,
                         int train)
{
    size_t rows = (size_t)B * L->hout * L->hout;
    void *out = act(m, lp->out);
    switch (L->kind) {
    case AMDIM_LAYER_STEM: {
        const void *in = x;
        if (L->pad) {
            AMDIM_TRY(amdim_reflect_pad_forward_cuda(kctx(m), x, B, L->hin, L->hin, conv_cin(m, L), L->pad,
                                                     act(m, lp->padded)));
            in = act(m, lp->padded);
        }
        amdim_conv_shape sh = conv_shape(m, L, B);
        AMDIM_TRY(conv_forward(m, &sh, in, filter_ohwi(m, L->w1), out));
        return amdim_bias_relu_forward_cuda(kctx(m), out, weight(m, L->b1), rows, L->cout);
    }
    case AMDIM_LAYER_RES: return res_forward(m, L, lp, x, B, train);
    default:
        return amdim_cuda_bn_forward(m, L->bn, x, rows, L->cout, train, out, act_f32(m, lp->mean),
                                     act_f32(m, lp->istd));
    }
}

/* dy: gradient of the layer output (may be modified); dx: of its input (NULL: not needed). */
static int layer_backward(amdim_model *m, const amdim_layer *L, const amdim_cuda_layer_plan *lp, const void *x, int B,
                          void *dy, void *dx)
{
    amdim_cuda_state *c = m->bs;
    size_t rows = (size_t)B * L->hout * L->hout, outn = rows * L->cout;
    const void *out = act(m, lp->out);
    switch (L->kind) {
    case AMDIM_LAYER_STEM: {
        AMDIM_TRY(amdim_relu_backward_cuda(kctx(m), out, dy, outn));
        AMDIM_TRY(amdim_channel_sum_add_cuda(kctx(m), dy, rows, L->cout, grad(m, L->b1), bn_scratch(m)));
        const void *in = L->pad ? act(m, lp->padded) : x;
        AMDIM_ASSERT(!(L->pad && dx)); /* only the first layer pads: no input gradient */
        amdim_conv_shape sh = conv_shape(m, L, B);
        void *dw = c->params + c->pp.dw_ohwi; /* activation type */
        AMDIM_TRY(conv_backward_filter(m, &sh, in, dy, dw));
        AMDIM_TRY(amdim_ohwi_to_oihw_add_cuda(kctx(m), dw, L->cout, L->cin, L->k, sh.cin, grad(m, L->w1)));
        return dx ? conv_backward_data(m, &sh, filter_ohwi(m, L->w1), dy, dx) : AMDIM_OK;
    }
    case AMDIM_LAYER_RES: return res_backward(m, L, lp, x, B, dy, dx);
    default:
        if (L->bn.on) {
            amdim_cuda_bn p = bn_view(m, L->bn);
            return amdim_batchnorm_backward_cuda(kctx(m), x, rows, L->cout, &p, act_f32(m, lp->mean),
                                                 act_f32(m, lp->istd), dy, dx, bn_scratch(m));
        }
        return amdim_cuda_copy(m, dx, dy, outn * act_bytes(m), cudaMemcpyDeviceToDevice);
    }
}

/* FakeRKHSConvNet: r = relu([BN](x W1^T)), out = BN(r W2^T + x Ws^T + bs).
 * Without the hidden BatchNorm the first GEMM writes r with the ReLU (and
 * its mask) in its epilogue; the shortcut's bias is its GEMM's. x (B, hw,
 * hw, cin) -> hp->out (B, hw, hw, R). */
static int head_forward(amdim_model *m, const amdim_head *h, const amdim_cuda_head_plan *hp, const void *x, int B,
                        int train)
{
    size_t rows = (size_t)B * h->hw * h->hw;
    void *r = act(m, hp->r), *sum = act(m, hp->sum), *h1 = h->bn_hid.on ? act(m, hp->h1) : r;
    int relu_done = 0;
    if (!h->bn_hid.on)
        AMDIM_TRY(
            linear_relu_mask(m, x, rows, h->cin, gemm_weight(m, h->w1), h->cout, r, act(m, hp->mask), &relu_done));
    if (!relu_done) {
        AMDIM_TRY(amdim_cuda_linear_forward(m, x, rows, h->cin, gemm_weight(m, h->w1), NULL, h->cout, 0.0f, h1, C_ACT));
        if (h->bn_hid.on)
            AMDIM_TRY(amdim_cuda_bn_forward(m, h->bn_hid, h1, rows, h->cout, train, r, act_f32(m, hp->mean1),
                                            act_f32(m, hp->istd1)));
        AMDIM_TRY(amdim_relu_forward_cuda(kctx(m), r, rows * h->cout));
    }
    AMDIM_TRY(amdim_cuda_linear_forward(m, r, rows, h->cout, gemm_weight(m, h->w2), NULL, h->cout, 0.0f, sum, C_ACT));
    amdim_cuda_epilogue bias = {AMDIM_CUDA_EP_BIAS, weight(m, h->bs), NULL}; /* + shortcut */
    int rc = amdim_cuda_lt_gemm(m, 0, 1, (int)rows, h->cout, h->cin, 1.0f, x, h->cin, gemm_weight(m, h->ws), h->cin,
                                1.0f, sum, sum, h->cout, C_ACT, &bias);
    if (rc == AMDIM_E_UNSUPPORTED)
        rc = amdim_cuda_linear_forward(m, x, rows, h->cin, gemm_weight(m, h->ws), weight(m, h->bs), h->cout, 1.0f, sum,
                                       C_ACT);
    AMDIM_TRY(rc);
    return amdim_cuda_bn_forward(m, h->bn_out, sum, rows, h->cout, train, act(m, hp->out), act_f32(m, hp->mean2),
                                 act_f32(m, hp->istd2));
}

/* dy: gradient of the head output (modified); dx: of the head input (overwritten). */
static int head_backward(amdim_model *m, const amdim_head *h, const amdim_cuda_head_plan *hp, const void *x, int B,
                         void *dy, void *dx)
{
    size_t rows = (size_t)B * h->hw * h->hw;
    void *r = act(m, hp->r), *sum = act(m, hp->sum), *dr = act(m, cuda_of(m)->plan.scratch);
    int masked = 0;
    if (!h->bn_hid.on)
        AMDIM_TRY(relu_mask_written(m, x, rows, h->cin, gemm_weight(m, h->w1), h->cout, r, act(m, hp->mask), &masked));
    amdim_cuda_bn bo = bn_view(m, h->bn_out);
    AMDIM_TRY(amdim_batchnorm_backward_cuda(kctx(m), sum, rows, h->cout, &bo, act_f32(m, hp->mean2),
                                            act_f32(m, hp->istd2), dy, dy, bn_scratch(m)));
    AMDIM_TRY(amdim_cuda_linear_backward(m, x, rows, h->cin, gemm_weight(m, h->ws), h->cout, dy, dx, 0.0f,
                                         grad(m, h->ws), grad(m, h->bs)));
    AMDIM_TRY(amdim_cuda_gemm(m, 1, 0, h->cout, h->cout, (int)rows, 1.0f, dy, h->cout, r, h->cout, 1.0f, grad(m, h->w2),
                              h->cout, C_F32));
    AMDIM_TRY(linear_relu_backward_data(m, dy, rows, h->cout, gemm_weight(m, h->w2), h->cout, r,
                                        masked ? act(m, hp->mask) : NULL, masked, dr));
    if (h->bn_hid.on) {
        amdim_cuda_bn p = bn_view(m, h->bn_hid);
        AMDIM_TRY(amdim_batchnorm_backward_cuda(kctx(m), act(m, hp->h1), rows, h->cout, &p, act_f32(m, hp->mean1),
                                                act_f32(m, hp->istd1), dr, dr, bn_scratch(m)));
    }
    return amdim_cuda_linear_backward(m, x, rows, h->cin, gemm_weight(m, h->w1), h->cout, dr, dx, 1.0f, grad(m, h->w1),
                                      NULL);
}

int amdim_cuda_encoder_forward(amdim_model *m, int v, int B, int train, int heads)
{
    const amdim_cuda_plan *p = &cuda_of(m)->plan;
    const amdim_arch *a = &m->arch;
    const void *in = act(m, p->x[v]);
    for (int l = 0; l < a->nlayers; l++) {
        double t0 = amdim_cuda_tick(m);
        AMDIM_TRY(layer_forward(m, &a->layers[l], &p->layers[v][l], in, B, train));
        amdim_cuda_prof(m, l, 0, t0, B);
        in = act(m, p->layers[v][l].out);
    }
    for (int h = 0; heads && h < 2; h++) {
        double t0 = amdim_cuda_tick(m);
        const amdim_head *hd = &a->heads[h];
        AMDIM_TRY(head_forward(m, hd, &p->heads[v][h], act(m, p->layers[v][hd->src_layer].out), B, train));
        amdim_cuda_prof(m, a->nlayers + h, 0, t0, B);
    }
    return AMDIM_OK;
}

/* launch: the last view's backward in a group - each unit's gradient
 * bucket goes to the ranks as soon as the unit is done. */
int amdim_cuda_encoder_backward(amdim_model *m, int v, int B, int launch)
{
    const amdim_cuda_plan *p = &cuda_of(m)->plan;
    const amdim_arch *a = &m->arch;
    for (int h = 0; h < 2; h++) { /* heads first: their input gradients join at i5 and i7 */
        double t0 = amdim_cuda_tick(m);
        const amdim_head *hd = &a->heads[h];
        AMDIM_TRY(head_backward(m, hd, &p->heads[v][h], act(m, p->layers[v][hd->src_layer].out), B,
                                act(m, h ? p->dr7[v] : p->dr5[v]), act(m, p->dhead[h])));
        amdim_cuda_prof(m, a->nlayers + h, 1, t0, B);
        if (launch)
            AMDIM_TRY(amdim_cuda_bucket_launch(m, a->nlayers + h));
    }
    void *dy = act(m, p->grad_a), *dx = act(m, p->grad_b);
    AMDIM_TRY(
        amdim_cuda_copy(m, dy, act(m, p->dr1[v]), (size_t)m->cfg.n_rkhs * B * act_bytes(m), cudaMemcpyDeviceToDevice));
    for (int l = a->nlayers - 1; l >= 0; l--) {
        const amdim_layer *L = &a->layers[l];
        size_t outn = (size_t)L->cout * B * L->hout * L->hout;
        for (int h = 0; h < 2; h++)
            if (l == a->heads[h].src_layer)
                AMDIM_TRY(amdim_add_cuda(kctx(m), dy, act(m, p->dhead[h]), outn));
        const void *x = l ? act(m, p->layers[v][l - 1].out) : act(m, p->x[v]);
        double t0 = amdim_cuda_tick(m);
        AMDIM_TRY(layer_backward(m, L, &p->layers[v][l], x, B, dy, l ? dx : NULL));
        amdim_cuda_prof(m, l, 1, t0, B);
        if (launch)
            AMDIM_TRY(amdim_cuda_bucket_launch(m, l));
        void *t = dy;
        dy = dx;
        dx = t;
    }
    return AMDIM_OK;
}

/* r1 (B, R) of view v into rows [v B, v B + B) of feat. */
int amdim_cuda_gather_r1(amdim_model *m, int v, int B)
{
    const amdim_cuda_plan *p = &cuda_of(m)->plan;
    size_t n = (size_t)B * m->cfg.n_rkhs;
    return amdim_cuda_copy(m, act_at(m, p->feat, v * n), act(m, p->layers[v][m->arch.nlayers - 1].out),
                           n * act_bytes(m), cudaMemcpyDeviceToDevice);
}

/* Training or eval BatchNorm of x (n, C) into y, or a copy when off. */
int amdim_cuda_bn_forward(amdim_model *m, amdim_bn_ref r, const void *x, size_t n, int C, int train, void *y,
                          float *mean, float *istd)
{
    if (!r.on)
        return amdim_cuda_copy(m, y, x, n * C * act_bytes(m), cudaMemcpyDeviceToDevice);
    amdim_cuda_bn p = bn_view(m, r);
    if (train)
        return amdim_batchnorm_forward_train_cuda(kctx(m), x, n, C, &p, y, mean, istd, bn_scratch(m));
    return amdim_batchnorm_forward_eval_cuda(kctx(m), x, n, C, &p, y);
}
