/* The cuDNN emulation's convolutions (emu_cudnn.c holds the calls that
 * check and queue them): the descriptors checked into a geometry, the
 * algorithms and their rules, and each algorithm's arithmetic. Built with
 * -mfma (tests/CMakeLists.txt): the algorithms sum with fmaf, the FMA
 * instruction the emulated device needs anyway (emu_runtime.c).
 *  - 2-d convolutions with zero padding, strides and dilations, in
 *    CUDNN_CROSS_CORRELATION mode or CUDNN_CONVOLUTION mode (the filter
 *    flipped in both spatial dimensions), group count 1.
 *  - Data FLOAT_CONFIG (x, w, y CUDNN_DATA_FLOAT) or BFLOAT16_CONFIG (x, w,
 *    y CUDNN_DATA_BFLOAT16, carried as uint16_t bits), both with a
 *    CUDNN_DATA_FLOAT convolution compute type.
 *  - dst = alpha * result + beta * dst, where beta == 0 never reads dst (it
 *    may hold NaN).
 *  - Algorithms as a GPU has them: several per operation, each summing an
 *    output's terms in its own order in float (one running FMA sum; eight
 *    interleaved partial sums; an exact double sum), so that two algorithms
 *    round differently. The algorithms cuDNN documents as non-deterministic
 *    (CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, BWD_FILTER_ALGO_0 and _3: "the sum
 *    is done using the atomic add operation") add their terms in a random
 *    order, different at every call, and are reported as such.
 *  - Tensor-core rules (cuDNN developer guide, Legacy API, "Convolution
 *    Functions": tensor-core operations run only with mathType
 *    CUDNN_TENSOR_OP_MATH or _ALLOW_CONVERSION, only for
 *    IMPLICIT_PRECOMP_GEMM (forward), BWD_DATA_ALGO_1, BWD_FILTER_ALGO_1
 *    (and WINOGRAD_NONFUSED, not emulated), only when the input and output
 *    feature maps (C and K) are multiples of 8, and with NHWC filters only
 *    on 128-bit aligned data pointers - checked where a convolution is
 *    called, emu_cudnn.c). bf16 data runs on those alone: any other bf16
 *    case is CUDNN_STATUS_NOT_SUPPORTED. The default math type permits them
 *    too (sm_80 and later). fp32 data with a tensor-op or default math type
 *    on those algorithms rounds x, w and dy to TF32 (10 mantissa bits)
 *    first, as cuDNN's default TF32 on sm_80+ does; CUDNN_FMA_MATH keeps
 *    full fp32. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "elementwise_internal.h"
#include "emu_cudnn_internal.h"

/* ---- geometry ---- */

/* The strides of a packed 4-d array with ch channels of ht x wd in format f:
 * NCHW (filters KCRS) is (outer, channel, row, column), NHWC (filters KRSC)
 * (outer, row, column, channel). */
static strides4 strides_of(cudnnTensorFormat_t f, int ch, int ht, int wd)
{
    strides4 st;
    if (f == CUDNN_TENSOR_NCHW) {
        st.w = 1;
        st.h = (size_t)wd;
        st.c = (size_t)ht * (size_t)wd;
        st.n = (size_t)ch * (size_t)ht * (size_t)wd;
    } else {
        st.c = 1;
        st.w = (size_t)ch;
        st.h = (size_t)wd * (size_t)ch;
        st.n = (size_t)ht * (size_t)wd * (size_t)ch;
    }
    return st;
}

/* The output dimensions of x convolved with w under cd, as documented for
 * cudnnGetConvolution2dForwardOutputDim:
 * 1 + (in + 2 pad - ((filter - 1) dilation + 1)) / stride. */
cudnnStatus_t emu_conv_output_dims(const struct cudnnConvolutionStruct *cd, const struct cudnnTensorStruct *x,
                                   const struct cudnnFilterStruct *w, int *n, int *c, int *h, int *wo)
{
    if (!cd || !x || !w || !cd->set || !x->set || !w->set)
        return CUDNN_STATUS_BAD_PARAM;
    if (x->c != w->c) /* group count 1: the filter's input channels are the tensor's */
        return CUDNN_STATUS_BAD_PARAM;
    int64_t eh = (int64_t)(w->r - 1) * cd->dil_h + 1, ew = (int64_t)(w->s - 1) * cd->dil_w + 1;
    int64_t ih = (int64_t)x->h + 2 * (int64_t)cd->pad_h, iw = (int64_t)x->w + 2 * (int64_t)cd->pad_w;
    if (eh > ih || ew > iw)
        return CUDNN_STATUS_BAD_PARAM;
    *n = x->n;
    *c = w->k;
    *h = (int)(1 + (ih - eh) / cd->u);
    *wo = (int)(1 + (iw - ew) / cd->v);
    return CUDNN_STATUS_SUCCESS;
}

/* Checks x, w, y and cd for one convolution (forward or either backward:
 * x/dx, w/dw and y/dy have the same roles) and fills g. Shapes that do not
 * fit together are CUDNN_STATUS_BAD_PARAM; a data type combination other
 * than FLOAT_CONFIG or BFLOAT16_CONFIG is CUDNN_STATUS_NOT_SUPPORTED. */
cudnnStatus_t emu_conv_check(const struct cudnnTensorStruct *x, const struct cudnnFilterStruct *w,
                             const struct cudnnConvolutionStruct *cd, const struct cudnnTensorStruct *y, conv_geom *g)
{
    if (!y || !y->set)
        return CUDNN_STATUS_BAD_PARAM;
    int n, c, h, wo;
    cudnnStatus_t st = emu_conv_output_dims(cd, x, w, &n, &c, &h, &wo);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    if (y->n != n || y->c != c || y->h != h || y->w != wo)
        return CUDNN_STATUS_BAD_PARAM;
    if (x->type != w->type || x->type != y->type)
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (cd->compute != CUDNN_DATA_FLOAT) /* both configurations compute in float */
        return CUDNN_STATUS_NOT_SUPPORTED;
    memset(g, 0, sizeof *g);
    g->n = x->n;
    g->c = x->c;
    g->h = x->h;
    g->w = x->w;
    g->k = w->k;
    g->r = w->r;
    g->s = w->s;
    g->p = h;
    g->q = wo;
    g->pad_h = cd->pad_h;
    g->pad_w = cd->pad_w;
    g->u = cd->u;
    g->v = cd->v;
    g->dil_h = cd->dil_h;
    g->dil_w = cd->dil_w;
    g->flip = cd->mode == CUDNN_CONVOLUTION;
    g->type = x->type;
    g->math = cd->math;
    g->xs = strides_of(x->format, x->c, x->h, x->w);
    g->ws = strides_of(w->format, w->c, w->r, w->s);
    g->ys = strides_of(y->format, y->c, y->h, y->w);
    g->x_count = (size_t)x->n * (size_t)x->c * (size_t)x->h * (size_t)x->w;
    g->w_count = (size_t)w->k * (size_t)w->c * (size_t)w->r * (size_t)w->s;
    g->y_count = (size_t)y->n * (size_t)y->c * (size_t)y->h * (size_t)y->w;
    return CUDNN_STATUS_SUCCESS;
}

/* ---- algorithms ---- */

static const algo_info fwd_algos[] = {
    {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, SUM_FMA, 0, 0, 1.00},
    {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, SUM_BLOCKED, 1, 1, 1.04},
    {CUDNN_CONVOLUTION_FWD_ALGO_GEMM, SUM_EXACT, 0, 2, 1.02},
};
static const algo_info data_algos[] = {
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, SUM_RANDOM, 0, 0, 1.25},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, SUM_BLOCKED, 1, 0, 1.00},
    {CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING, SUM_EXACT, 0, 2, 0.97},
};
static const algo_info filter_algos[] = {
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, SUM_RANDOM, 0, 0, 1.30},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, SUM_BLOCKED, 1, 1, 1.00},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, SUM_EXACT, 0, 2, 0.98},
    {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3, SUM_RANDOM, 0, 0, 1.20},
};

const algo_info *emu_algo_table(int op, int *n)
{
    if (op == OP_FWD) {
        *n = (int)(sizeof fwd_algos / sizeof *fwd_algos);
        return fwd_algos;
    }
    if (op == OP_DATA) {
        *n = (int)(sizeof data_algos / sizeof *data_algos);
        return data_algos;
    }
    *n = (int)(sizeof filter_algos / sizeof *filter_algos);
    return filter_algos;
}

const algo_info *emu_algo_find(int op, int algo)
{
    int n;
    const algo_info *t = emu_algo_table(op, &n);
    for (int i = 0; i < n; i++)
        if (t[i].algo == algo)
            return &t[i];
    return NULL;
}

int emu_tensor_op_math(cudnnMathType_t m)
{
    return m == CUDNN_TENSOR_OP_MATH || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
}

/* Whether algorithm a runs geometry g (its math type included): SUCCESS
 * or CUDNN_STATUS_NOT_SUPPORTED by the tensor-core rules above. */
cudnnStatus_t emu_algo_supports(const algo_info *a, const conv_geom *g)
{
    if (!a)
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (g->type != CUDNN_DATA_BFLOAT16)
        return CUDNN_STATUS_SUCCESS;
    /* on sm_80+ the default math type permits tensor cores too (Find lists both) */
    if (!a->tensor_core || !(emu_tensor_op_math(g->math) || g->math == CUDNN_DEFAULT_MATH) || g->c % 8 || g->k % 8)
        return CUDNN_STATUS_NOT_SUPPORTED;
    return CUDNN_STATUS_SUCCESS;
}

/* Whether the algorithm reads fp32 inputs as TF32 under g's math type. */
static int uses_tf32(const algo_info *a, const conv_geom *g)
{
    return g->type == CUDNN_DATA_FLOAT && a->tensor_core && g->math != CUDNN_FMA_MATH;
}

size_t emu_algo_workspace(const algo_info *a, const conv_geom *g)
{
    size_t es = g->type == CUDNN_DATA_FLOAT ? 4 : 2;
    if (a->ws_kind == 1)
        return (size_t)g->p * g->q * sizeof(int32_t) + 4096;
    if (a->ws_kind == 2) /* im2col: every output position's window */
        return (size_t)g->n * g->p * g->q * (size_t)g->c * g->r * g->s * es + ((size_t)64 << 20);
    return 0;
}

/* ---- the arithmetic ---- */

/* dst[i] = alpha * acc + beta * dst[i], rounded to float (and on to bf16
 * for bf16 data); beta == 0 does not read dst[i]. */
static void store(void *dst, cudnnDataType_t type, size_t i, double acc, float alpha, float beta)
{
    double v = (double)alpha * acc;
    if (type == CUDNN_DATA_FLOAT) {
        float *d = dst;
        if (beta != 0.0f)
            v += (double)beta * d[i];
        d[i] = (float)v;
    } else {
        uint16_t *d = dst;
        if (beta != 0.0f)
            v += (double)beta * amdim_bf16_value(d[i]);
        d[i] = amdim_bf16_bits((float)v);
    }
}

/* The stored filter tap used at spatial offset (r, s) of the window. */
static size_t filter_at(const conv_geom *g, int k, int r, int s)
{
    if (g->flip) {
        r = g->r - 1 - r;
        s = g->s - 1 - s;
    }
    return (size_t)k * g->ws.n + (size_t)r * g->ws.h + (size_t)s * g->ws.w;
}

/* f with its mantissa rounded to TF32's 10 bits (tensor cores' fp32 inputs). */
static float tf32(float f)
{
    union {
        float f;
        uint32_t u;
    } v = {f};
    if ((v.u & 0x7f800000u) != 0x7f800000u)
        v.u = (v.u + 0x1000u) & ~0x1fffu;
    return v.f;
}

/* The random order of the non-deterministic algorithms (one stream for the process). */
static uint64_t random_state = 0x9e3779b97f4a7c15ull;
static unsigned next_random(void)
{
    random_state ^= random_state << 13;
    random_state ^= random_state >> 7;
    random_state ^= random_state << 17;
    return (unsigned)(random_state >> 32);
}

/* The running sums of n outputs (a contiguous run of channels), each
 * summing its terms in an algorithm's order: term t of every output is
 * a * b[c * stride] (acc_add), the terms in the same order for all. */
typedef struct {
    int kind;
    size_t n;
    unsigned long t; /* terms so far */
    float *f;        /* SUM_FMA: n; SUM_BLOCKED / SUM_RANDOM: 8 partial sums of n */
    double *d;       /* SUM_EXACT: n */
} sums;

static int sums_open(sums *u, int kind, size_t n)
{
    memset(u, 0, sizeof *u);
    u->kind = kind;
    u->n = n;
    u->f = malloc((8 * n + 1) * sizeof *u->f);
    u->d = malloc((n + 1) * sizeof *u->d);
    return u->f && u->d;
}

static void sums_close(sums *u)
{
    free(u->f);
    free(u->d);
}

static void sums_reset(sums *u)
{
    u->t = 0;
    if (u->kind == SUM_EXACT)
        memset(u->d, 0, u->n * sizeof *u->d);
    else
        memset(u->f, 0, (u->kind == SUM_FMA ? 1 : 8) * u->n * sizeof *u->f);
}

static void sums_add(sums *u, float a, const float *b, size_t stride)
{
    size_t n = u->n;
    switch (u->kind) {
    case SUM_EXACT:
        for (size_t c = 0; c < n; c++)
            u->d[c] += (double)a * (double)b[c * stride];
        break;
    case SUM_FMA:
        for (size_t c = 0; c < n; c++)
            u->f[c] = fmaf(a, b[c * stride], u->f[c]);
        break;
    case SUM_BLOCKED: { /* term t into partial sum t mod 8 */
        float *p = u->f + (u->t & 7) * n;
        for (size_t c = 0; c < n; c++)
            p[c] = fmaf(a, b[c * stride], p[c]);
        break;
    }
    default: /* SUM_RANDOM: atomics, each term into a partial sum no one chose */
        for (size_t c = 0; c < n; c++)
            u->f[(next_random() & 7) * n + c] += a * b[c * stride];
    }
    u->t++;
}

/* Output c's sum. */
static double sums_get(const sums *u, size_t c)
{
    if (u->kind == SUM_EXACT)
        return u->d[c];
    if (u->kind == SUM_FMA)
        return u->f[c];
    const float *p = u->f + c;
    size_t n = u->n;
    float s0 = p[0] + p[4 * n], s1 = p[n] + p[5 * n], s2 = p[2 * n] + p[6 * n], s3 = p[3 * n] + p[7 * n];
    return (s0 + s2) + (s1 + s3);
}

/* y[n, k, p, q] = sum over r, s, c (in that order) of x[n, c, p u - pad_h + r dil_h, q v - pad_w + s dil_w]
 * w[k, c, r, s] (w flipped in CUDNN_CONVOLUTION mode), then scaled into y; u: sums over k. */
static void run_forward(const conv_geom *g, sums *u, const float *x, const float *w, void *y, float alpha, float beta)
{
    for (int n = 0; n < g->n; n++)
        for (int p = 0; p < g->p; p++)
            for (int q = 0; q < g->q; q++) {
                sums_reset(u);
                for (int r = 0; r < g->r; r++) {
                    int hh = p * g->u - g->pad_h + r * g->dil_h;
                    if (hh < 0 || hh >= g->h)
                        continue;
                    for (int s = 0; s < g->s; s++) {
                        int ww = q * g->v - g->pad_w + s * g->dil_w;
                        if (ww < 0 || ww >= g->w)
                            continue;
                        const float *xp = x + (size_t)n * g->xs.n + (size_t)hh * g->xs.h + (size_t)ww * g->xs.w;
                        const float *wp = w + filter_at(g, 0, r, s);
                        for (int c = 0; c < g->c; c++)
                            sums_add(u, xp[(size_t)c * g->xs.c], wp + (size_t)c * g->ws.c, g->ws.n);
                    }
                }
                for (int k = 0; k < g->k; k++)
                    store(y, g->type,
                          (size_t)n * g->ys.n + (size_t)k * g->ys.c + (size_t)p * g->ys.h + (size_t)q * g->ys.w,
                          sums_get(u, (size_t)k), alpha, beta);
            }
}

/* The adjoint of the forward map in x: dx[n, c, h, w] = sum over (r, s, k), in that order, of dy[n, k, p, q]
 * w[k, c, r, s] with (p, q) the output position whose window puts tap (r, s) at (h, w); u: sums over c. */
static void run_backward_data(const conv_geom *g, sums *u, const float *w, const float *dy, void *dx, float alpha,
                              float beta)
{
    for (int n = 0; n < g->n; n++)
        for (int hh = 0; hh < g->h; hh++)
            for (int ww = 0; ww < g->w; ww++) {
                sums_reset(u);
                for (int r = 0; r < g->r; r++) {
                    int ph = hh + g->pad_h - r * g->dil_h; /* = p u */
                    if (ph < 0 || ph % g->u || ph / g->u >= g->p)
                        continue;
                    for (int s = 0; s < g->s; s++) {
                        int qw = ww + g->pad_w - s * g->dil_w;
                        if (qw < 0 || qw % g->v || qw / g->v >= g->q)
                            continue;
                        const float *yp =
                            dy + (size_t)n * g->ys.n + (size_t)(ph / g->u) * g->ys.h + (size_t)(qw / g->v) * g->ys.w;
                        const float *wp = w + filter_at(g, 0, r, s);
                        for (int k = 0; k < g->k; k++)
                            sums_add(u, yp[(size_t)k * g->ys.c], wp + (size_t)k * g->ws.n, g->ws.c);
                    }
                }
                for (int c = 0; c < g->c; c++)
                    store(dx, g->type,
                          (size_t)n * g->xs.n + (size_t)c * g->xs.c + (size_t)hh * g->xs.h + (size_t)ww * g->xs.w,
                          sums_get(u, (size_t)c), alpha, beta);
            }
}

/* The adjoint of the forward map in w: dw[k, c, r, s] = sum over (n, p, q), in that order, of dy[n, k, p, q]
 * x[n, c, window] (stored flipped in CUDNN_CONVOLUTION mode); u: sums over c. */
static void run_backward_filter(const conv_geom *g, sums *u, const float *x, const float *dy, void *dw, float alpha,
                                float beta)
{
    for (int k = 0; k < g->k; k++)
        for (int r = 0; r < g->r; r++)
            for (int s = 0; s < g->s; s++) {
                sums_reset(u);
                for (int n = 0; n < g->n; n++)
                    for (int p = 0; p < g->p; p++) {
                        int hh = p * g->u - g->pad_h + r * g->dil_h;
                        if (hh < 0 || hh >= g->h)
                            continue;
                        for (int q = 0; q < g->q; q++) {
                            int ww = q * g->v - g->pad_w + s * g->dil_w;
                            if (ww < 0 || ww >= g->w)
                                continue;
                            float d = dy[(size_t)n * g->ys.n + (size_t)k * g->ys.c + (size_t)p * g->ys.h +
                                         (size_t)q * g->ys.w];
                            sums_add(u, d, x + (size_t)n * g->xs.n + (size_t)hh * g->xs.h + (size_t)ww * g->xs.w,
                                     g->xs.c);
                        }
                    }
                for (int c = 0; c < g->c; c++)
                    store(dw, g->type, filter_at(g, k, r, s) + (size_t)c * g->ws.c, sums_get(u, (size_t)c), alpha,
                          beta);
            }
}

/* The count elements of data type t at p as floats (TF32-rounded when tf), or NULL when out of memory. */
static float *floats(const void *p, cudnnDataType_t t, size_t count, int tf)
{
    float *f = malloc((count ? count : 1) * sizeof *f);
    if (!f)
        return NULL;
    for (size_t i = 0; i < count; i++) {
        float v = t == CUDNN_DATA_FLOAT ? ((const float *)p)[i] : amdim_bf16_value(((const uint16_t *)p)[i]);
        f[i] = tf ? tf32(v) : v;
    }
    return f;
}

cudaError_t emu_conv_run(void *arg)
{
    conv_work *c = arg;
    const conv_geom *g = &c->g;
    int tf = uses_tf32(c->a, g);
    size_t n1 = c->op == OP_DATA ? g->w_count : g->x_count, n2 = c->op == OP_FWD ? g->w_count : g->y_count;
    float *a = floats(c->in1, g->type, n1, tf), *b = floats(c->in2, g->type, n2, tf);
    sums u;
    int ok = sums_open(&u, c->a->sum, c->op == OP_FWD ? (size_t)g->k : (size_t)g->c);
    cudaError_t e = a && b && ok ? cudaSuccess : cudaErrorMemoryAllocation;
    if (e == cudaSuccess) {
        if (c->op == OP_FWD)
            run_forward(g, &u, a, b, c->out, c->alpha, c->beta);
        else if (c->op == OP_DATA)
            run_backward_data(g, &u, a, b, c->out, c->alpha, c->beta);
        else
            run_backward_filter(g, &u, a, b, c->out, c->alpha, c->beta);
    }
    sums_close(&u);
    free(a);
    free(b);
    return e;
}
