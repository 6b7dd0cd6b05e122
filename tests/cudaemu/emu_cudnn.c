/* CPU emulation of the cuDNN calls the CUDA backend makes (the
 * emulated-device tests only; never in a real build, which links NVIDIA's
 * libcudnn). "Device memory" is host memory. Descriptors and arguments are
 * checked when a call is made (the statuses below); a convolution runs on
 * the handle's stream when the emulated device gets to it (emu_device.h),
 * or is recorded into the stream's graph during a capture. The Find*Ex
 * calls are synchronous, as cuDNN's are: they run the stream's pending
 * work first and are refused during a capture.
 *
 * The semantics are NVIDIA's documented ones, written independently of how
 * the backend calls them, so that a mistake in the backend's calls shows up
 * as an error status or as wrong numbers:
 *  - 4-d tensors in CUDNN_TENSOR_NCHW or CUDNN_TENSOR_NHWC; 4-d filters in
 *    CUDNN_TENSOR_NCHW (KCRS) or CUDNN_TENSOR_NHWC (KRSC); fully packed.
 *  - 2-d convolutions with zero padding, strides and dilations, in
 *    CUDNN_CROSS_CORRELATION mode or CUDNN_CONVOLUTION mode (the filter
 *    flipped in both spatial dimensions), group count 1.
 *  - Data FLOAT_CONFIG (x, w, y CUDNN_DATA_FLOAT) or BFLOAT16_CONFIG (x, w,
 *    y CUDNN_DATA_BFLOAT16, carried as uint16_t bits), both with a
 *    CUDNN_DATA_FLOAT convolution compute type; alpha and beta are host
 *    floats, read when the call is made.
 *  - dst = alpha * result + beta * dst, where beta == 0 never reads dst (it
 *    may hold NaN).
 *  - Algorithms as a GPU has them: several per operation, each summing an
 *    output's terms in its own order in float (one running FMA sum; eight
 *    interleaved partial sums; an exact double sum), so that two algorithms
 *    round differently. The algorithms cuDNN documents as non-deterministic
 *    (CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, BWD_FILTER_ALGO_0 and _3: "the sum
 *    is done using the atomic add operation") add their terms in a random
 *    order, different at every call, and are reported as such. Find*Ex
 *    reports every algorithm with a time that varies from handle to handle
 *    and call to call by up to 12 %, more than the deterministic ones
 *    differ, as measured times do on small shapes; one needs more
 *    workspace than the backend gives.
 *  - Tensor-core rules (cuDNN developer guide, Legacy API, "Convolution
 *    Functions": tensor-core operations run only with mathType
 *    CUDNN_TENSOR_OP_MATH or _ALLOW_CONVERSION, only for
 *    IMPLICIT_PRECOMP_GEMM (forward), BWD_DATA_ALGO_1, BWD_FILTER_ALGO_1
 *    (and WINOGRAD_NONFUSED, not emulated), only when the input and output
 *    feature maps (C and K) are multiples of 8, and with NHWC filters only
 *    on 128-bit aligned data pointers). bf16 data runs on those alone: any
 *    other bf16 case is CUDNN_STATUS_NOT_SUPPORTED. The default math type
 *    permits them too (sm_80 and later), and Find*Ex under a tensor-op
 *    math type reports each algorithm twice, under that math type and the
 *    default, each with its own time. fp32 data with a
 *    tensor-op or default math type on those algorithms rounds x, w and dy
 *    to TF32 (10 mantissa bits) first, as cuDNN's default TF32 on sm_80+
 *    does; CUDNN_FMA_MATH keeps full fp32. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cudnn.h>

#include "elementwise_internal.h"
#include "emu_device.h"

struct cudnnContext {
    cudaStream_t stream;
    unsigned serial;      /* which handle: the Find timings' noise differs between handles */
    unsigned long finds;  /* Find calls so far: ... and between calls */
};

static unsigned handles_made;

struct cudnnTensorStruct {
    int set; /* cudnnSetTensor4dDescriptor succeeded */
    cudnnDataType_t type;
    cudnnTensorFormat_t format;
    int n, c, h, w;
};

struct cudnnFilterStruct {
    int set;
    cudnnDataType_t type;
    cudnnTensorFormat_t format;
    int k, c, r, s; /* output channels, input channels, height, width */
};

struct cudnnConvolutionStruct {
    int set;
    int pad_h, pad_w, u, v, dil_h, dil_w;
    cudnnConvolutionMode_t mode;
    cudnnDataType_t compute;
    cudnnMathType_t math;
};

/* Element strides of one 4-d array, by logical dimension: for tensors
 * (n, c, h, w), for filters (k, c, r, s). */
typedef struct {
    size_t n, c, h, w;
} strides4;

/* Everything a convolution needs, once the descriptors are checked. */
typedef struct {
    int n, c, h, w; /* input */
    int k, r, s;    /* filter: output channels, height, width */
    int p, q;       /* output height, width */
    int pad_h, pad_w, u, v, dil_h, dil_w;
    int flip; /* CUDNN_CONVOLUTION: the filter is used flipped */
    cudnnDataType_t type;
    cudnnMathType_t math;
    strides4 xs, ws, ys;
    size_t x_count, w_count, y_count;
} conv_geom;

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

/* Shared checks of the 4-d Set calls: the format, the data type and the
 * dimensions (positive, under cuDNN's 2^31 element limit). */
static cudnnStatus_t check_4d(cudnnTensorFormat_t format, cudnnDataType_t type, int a, int b, int c, int d)
{
    if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC && format != CUDNN_TENSOR_NCHW_VECT_C)
        return CUDNN_STATUS_BAD_PARAM;
    if (a <= 0 || b <= 0 || c <= 0 || d <= 0)
        return CUDNN_STATUS_BAD_PARAM;
    if (format == CUDNN_TENSOR_NCHW_VECT_C)
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (type != CUDNN_DATA_FLOAT && type != CUDNN_DATA_BFLOAT16)
        return (int)type >= 0 && (int)type <= CUDNN_DATA_COMPLEX_FP64 ? CUDNN_STATUS_NOT_SUPPORTED
                                                                      : CUDNN_STATUS_BAD_PARAM;
    if ((int64_t)a * b * c * d > INT32_MAX)
        return CUDNN_STATUS_NOT_SUPPORTED;
    return CUDNN_STATUS_SUCCESS;
}

/* The output dimensions of x convolved with w under cd, as documented for
 * cudnnGetConvolution2dForwardOutputDim:
 * 1 + (in + 2 pad - ((filter - 1) dilation + 1)) / stride. */
static cudnnStatus_t output_dims(const struct cudnnConvolutionStruct *cd, const struct cudnnTensorStruct *x,
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
static cudnnStatus_t check_conv(const struct cudnnTensorStruct *x, const struct cudnnFilterStruct *w,
                                const struct cudnnConvolutionStruct *cd, const struct cudnnTensorStruct *y,
                                conv_geom *g)
{
    if (!y || !y->set)
        return CUDNN_STATUS_BAD_PARAM;
    int n, c, h, wo;
    cudnnStatus_t st = output_dims(cd, x, w, &n, &c, &h, &wo);
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

/* Fills count elements of the data type at p with NaN. */
static void fill_nan(void *p, cudnnDataType_t type, size_t count)
{
    if (type == CUDNN_DATA_FLOAT) {
        float *f = p;
        for (size_t i = 0; i < count; i++)
            f[i] = NAN;
    } else {
        uint16_t *b = p;
        for (size_t i = 0; i < count; i++)
            b[i] = 0x7fc0u;
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

/* ---- algorithms ---- */

enum { OP_FWD, OP_DATA, OP_FILTER };
/* How an algorithm sums one output's terms. */
enum { SUM_FMA, SUM_BLOCKED, SUM_EXACT, SUM_RANDOM };

typedef struct {
    int algo;
    int sum;         /* SUM_*: deterministic unless SUM_RANDOM */
    int tensor_core; /* the documented tensor-core algorithms */
    int ws_kind;     /* workspace: 0 none, 1 an index table, 2 an im2col / FFT copy */
    double rate;     /* relative speed before the timing noise */
} algo_info;

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

static const algo_info *algo_table(int op, int *n)
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

static const algo_info *algo_find(int op, int algo)
{
    int n;
    const algo_info *t = algo_table(op, &n);
    for (int i = 0; i < n; i++)
        if (t[i].algo == algo)
            return &t[i];
    return NULL;
}

static int tensor_op_math(cudnnMathType_t m)
{
    return m == CUDNN_TENSOR_OP_MATH || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
}

/* Whether algorithm a runs geometry g (its math type included): SUCCESS
 * or CUDNN_STATUS_NOT_SUPPORTED by the tensor-core rules above. */
static cudnnStatus_t algo_supports(const algo_info *a, const conv_geom *g)
{
    if (!a)
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (g->type != CUDNN_DATA_BFLOAT16)
        return CUDNN_STATUS_SUCCESS;
    /* on sm_80+ the default math type permits tensor cores too (Find lists both) */
    if (!a->tensor_core || !(tensor_op_math(g->math) || g->math == CUDNN_DEFAULT_MATH) || g->c % 8 || g->k % 8)
        return CUDNN_STATUS_NOT_SUPPORTED;
    return CUDNN_STATUS_SUCCESS;
}

/* Whether the algorithm reads fp32 inputs as TF32 under g's math type. */
static int uses_tf32(const algo_info *a, const conv_geom *g)
{
    return g->type == CUDNN_DATA_FLOAT && a->tensor_core && g->math != CUDNN_FMA_MATH;
}

static size_t algo_workspace(const algo_info *a, const conv_geom *g)
{
    size_t es = g->type == CUDNN_DATA_FLOAT ? 4 : 2;
    if (a->ws_kind == 1)
        return (size_t)g->p * g->q * sizeof(int32_t) + 4096;
    if (a->ws_kind == 2) /* im2col: every output position's window */
        return (size_t)g->n * g->p * g->q * (size_t)g->c * g->r * g->s * es + ((size_t)64 << 20);
    return 0;
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

/* A convolution as recorded when the call is made. */
typedef struct {
    int op;
    conv_geom g;
    const algo_info *a;
    const void *in1, *in2; /* FWD: x, w; DATA: w, dy; FILTER: x, dy */
    void *out;
    float alpha, beta;
} conv_work;

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

static cudaError_t conv_run(void *arg)
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

/* ---- handle ---- */

/* Creates a handle (no stream: the legacy default stream). */
cudnnStatus_t cudnnCreate(cudnnHandle_t *handle)
{
    if (!handle)
        return CUDNN_STATUS_BAD_PARAM;
    *handle = calloc(1, sizeof **handle);
    if (!*handle)
        return CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
    emu_lock();
    (*handle)->serial = ++handles_made;
    emu_unlock();
    return CUDNN_STATUS_SUCCESS;
}

/* Frees a handle. */
cudnnStatus_t cudnnDestroy(cudnnHandle_t handle)
{
    if (!handle)
        return CUDNN_STATUS_BAD_PARAM;
    free(handle);
    return CUDNN_STATUS_SUCCESS;
}

/* The stream later calls run on. */
cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t streamId)
{
    if (!handle)
        return CUDNN_STATUS_BAD_PARAM;
    handle->stream = streamId;
    return CUDNN_STATUS_SUCCESS;
}

/* The name of a status code. */
const char *cudnnGetErrorString(cudnnStatus_t status)
{
    switch (status) {
#define NAME(s)                                                                                                        \
    case s:                                                                                                            \
        return #s
        NAME(CUDNN_STATUS_SUCCESS);
        NAME(CUDNN_STATUS_NOT_INITIALIZED);
        NAME(CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH);
        NAME(CUDNN_STATUS_SERIALIZATION_VERSION_MISMATCH);
        NAME(CUDNN_STATUS_DEPRECATED);
        NAME(CUDNN_STATUS_LICENSE_ERROR);
        NAME(CUDNN_STATUS_RUNTIME_IN_PROGRESS);
        NAME(CUDNN_STATUS_RUNTIME_FP_OVERFLOW);
        NAME(CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED);
        NAME(CUDNN_STATUS_BAD_PARAM);
        NAME(CUDNN_STATUS_INVALID_VALUE);
        NAME(CUDNN_STATUS_BAD_PARAM_NULL_POINTER);
        NAME(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER);
        NAME(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED);
        NAME(CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND);
        NAME(CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT);
        NAME(CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH);
        NAME(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH);
        NAME(CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES);
        NAME(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE);
        NAME(CUDNN_STATUS_BAD_PARAM_CUDA_GRAPH_MISMATCH);
        NAME(CUDNN_STATUS_BAD_PARAM_DESCRIPTOR_TYPE);
        NAME(CUDNN_STATUS_NOT_SUPPORTED);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_SHAPE);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_LAYOUT);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_PADDING);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_CUDA_GRAPH_NATIVE_API);
        NAME(CUDNN_STATUS_NOT_SUPPORTED_INVALID_DYNAMIC_SHAPE);
        NAME(CUDNN_STATUS_INTERNAL_ERROR);
        NAME(CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED);
        NAME(CUDNN_STATUS_INTERNAL_ERROR_UNEXPECTED_VALUE);
        NAME(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED);
        NAME(CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED);
        NAME(CUDNN_STATUS_INTERNAL_ERROR_BAD_LAUNCH_PARAM);
        NAME(CUDNN_STATUS_INTERNAL_ERROR_TEXTURE_CREATION_FAILED);
        NAME(CUDNN_STATUS_EXECUTION_FAILED);
        NAME(CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER);
        NAME(CUDNN_STATUS_EXECUTION_FAILED_CUBLAS);
        NAME(CUDNN_STATUS_EXECUTION_FAILED_CUDART);
        NAME(CUDNN_STATUS_EXECUTION_FAILED_CURAND);
#undef NAME
    }
    return "CUDNN_STATUS_UNKNOWN (not a cudnnStatus_t value)";
}

/* ---- descriptors ---- */

/* Creates an unset tensor descriptor. */
cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *tensorDesc)
{
    if (!tensorDesc)
        return CUDNN_STATUS_BAD_PARAM;
    *tensorDesc = calloc(1, sizeof **tensorDesc);
    return *tensorDesc ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
}

/* Frees a tensor descriptor (NULL is allowed). */
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t tensorDesc)
{
    free(tensorDesc);
    return CUDNN_STATUS_SUCCESS;
}

/* A packed 4-d tensor (n, c, h, w) in the given format; a failed call leaves the descriptor as it was. */
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t tensorDesc, cudnnTensorFormat_t format,
                                         cudnnDataType_t dataType, int n, int c, int h, int w)
{
    if (!tensorDesc)
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = check_4d(format, dataType, n, c, h, w);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    tensorDesc->set = 1;
    tensorDesc->type = dataType;
    tensorDesc->format = format;
    tensorDesc->n = n;
    tensorDesc->c = c;
    tensorDesc->h = h;
    tensorDesc->w = w;
    return CUDNN_STATUS_SUCCESS;
}

/* Creates an unset filter descriptor. */
cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *filterDesc)
{
    if (!filterDesc)
        return CUDNN_STATUS_BAD_PARAM;
    *filterDesc = calloc(1, sizeof **filterDesc);
    return *filterDesc ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
}

/* Frees a filter descriptor (NULL is allowed). */
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t filterDesc)
{
    free(filterDesc);
    return CUDNN_STATUS_SUCCESS;
}

/* A packed 4-d filter: k output channels, c input channels, h x w taps; format NCHW stores it KCRS, NHWC stores
 * it KRSC. Note the argument order (data type before format), unlike cudnnSetTensor4dDescriptor. */
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t filterDesc, cudnnDataType_t dataType,
                                         cudnnTensorFormat_t format, int k, int c, int h, int w)
{
    if (!filterDesc)
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = check_4d(format, dataType, k, c, h, w);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    filterDesc->set = 1;
    filterDesc->type = dataType;
    filterDesc->format = format;
    filterDesc->k = k;
    filterDesc->c = c;
    filterDesc->r = h;
    filterDesc->s = w;
    return CUDNN_STATUS_SUCCESS;
}

/* Creates an unset convolution descriptor (math type CUDNN_DEFAULT_MATH). */
cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *convDesc)
{
    if (!convDesc)
        return CUDNN_STATUS_BAD_PARAM;
    *convDesc = calloc(1, sizeof **convDesc);
    if (!*convDesc)
        return CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
    (*convDesc)->math = CUDNN_DEFAULT_MATH;
    return CUDNN_STATUS_SUCCESS;
}

/* Frees a convolution descriptor (NULL is allowed). */
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t convDesc)
{
    free(convDesc);
    return CUDNN_STATUS_SUCCESS;
}

/* A 2-d convolution: zero padding, strides u (vertical) and v (horizontal), dilations, mode and compute type.
 * Pads must be >= 0, strides and dilations > 0; the compute type is checked when a convolution runs. */
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t convDesc, int pad_h, int pad_w, int u, int v,
                                              int dilation_h, int dilation_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t computeType)
{
    if (!convDesc || pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dilation_h <= 0 || dilation_w <= 0)
        return CUDNN_STATUS_BAD_PARAM;
    if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION)
        return CUDNN_STATUS_BAD_PARAM;
    if ((int)computeType < 0 || (int)computeType > CUDNN_DATA_COMPLEX_FP64)
        return CUDNN_STATUS_BAD_PARAM;
    convDesc->set = 1;
    convDesc->pad_h = pad_h;
    convDesc->pad_w = pad_w;
    convDesc->u = u;
    convDesc->v = v;
    convDesc->dil_h = dilation_h;
    convDesc->dil_w = dilation_w;
    convDesc->mode = mode;
    convDesc->compute = computeType;
    return CUDNN_STATUS_SUCCESS;
}

/* The math type: whether the tensor-core algorithms run (bf16) and read fp32 inputs as TF32 (see the top). */
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t convDesc, cudnnMathType_t mathType)
{
    if (!convDesc)
        return CUDNN_STATUS_BAD_PARAM;
    if (mathType != CUDNN_DEFAULT_MATH && mathType != CUDNN_TENSOR_OP_MATH &&
        mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION && mathType != CUDNN_FMA_MATH)
        return CUDNN_STATUS_BAD_PARAM;
    convDesc->math = mathType;
    return CUDNN_STATUS_SUCCESS;
}

/* The forward output's dimensions: batch of the input, channels = the filter's k, and per spatial dimension
 * 1 + (in + 2 pad - ((filter - 1) dilation + 1)) / stride. */
cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t convDesc,
                                                    const cudnnTensorDescriptor_t inputTensorDesc,
                                                    const cudnnFilterDescriptor_t filterDesc, int *n, int *c, int *h,
                                                    int *w)
{
    if (!n || !c || !h || !w)
        return CUDNN_STATUS_BAD_PARAM;
    return output_dims(convDesc, inputTensorDesc, filterDesc, n, c, h, w);
}


/* ---- algorithm search ---- */

/* Find*Ex's results before they go into each family's own perf struct. */
typedef struct {
    int algo;
    cudnnStatus_t status;
    float time;
    size_t memory;
    cudnnDeterminism_t determinism;
    cudnnMathType_t math;
} perf;

/* A time in ms for algorithm a on g: its rate on the multiply-adds, times
 * up to +-12 % of noise that depends on the handle and the call. */
static float find_time(cudnnHandle_t h, int op, const algo_info *a, const conv_geom *g)
{
    uint64_t z = ((uint64_t)h->serial << 40) ^ ((uint64_t)h->finds << 8) ^ (uint64_t)(op * 16 + a->algo) ^
                 ((uint64_t)g->math << 36);
    z ^= (uint64_t)g->n * 1000003u ^ (uint64_t)g->c * 7919u ^ (uint64_t)g->k * 104729u ^ (uint64_t)g->h * 31u;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    double noise = ((double)(z >> 11) / 9007199254740992.0 * 2 - 1) * 0.12;
    double macs = (double)g->n * g->p * g->q * g->k * g->c * g->r * g->s;
    return (float)((macs / 1e9 / a->rate + 1e-3) * (1 + noise));
}

static int by_time(const void *pa, const void *pb)
{
    const perf *a = pa, *b = pb;
    int fa = a->status != CUDNN_STATUS_SUCCESS, fb = b->status != CUDNN_STATUS_SUCCESS;
    if (fa != fb)
        return fa - fb;
    return a->time < b->time ? -1 : a->time > b->time;
}

/* The common part of the Find*Ex calls: checks (every buffer, the
 * workspace too, inside one device allocation), the stream's pending work
 * (Find is synchronous), every algorithm of op reported (sorted by time,
 * failures last; for bf16 data under a tensor-op math type each one twice,
 * under that math and the default, as cuDNN times both), the output
 * overwritten. Returns the status and *count. */
static cudnnStatus_t find(cudnnHandle_t handle, int op, const struct cudnnTensorStruct *x,
                          const struct cudnnFilterStruct *w, const struct cudnnConvolutionStruct *cd,
                          const struct cudnnTensorStruct *y, const void *in1, const void *in2, void *out,
                          int requested, int *returned, const void *ws, size_t ws_bytes, perf *res, int *count)
{
    conv_geom g;
    if (!handle || !in1 || !in2 || !out || !returned || requested < 1)
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = check_conv(x, w, cd, y, &g);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    size_t out_count = op == OP_FWD ? g.y_count : op == OP_DATA ? g.x_count : g.w_count;
    size_t in1_count = op == OP_DATA ? g.w_count : g.x_count; /* fwd, filter: x; data: w */
    size_t in2_count = op == OP_FWD ? g.w_count : g.y_count;  /* fwd: w; data, filter: dy */
    size_t es = g.type == CUDNN_DATA_FLOAT ? 4 : 2;
    if (!emu_device_range(out, out_count * es) || !emu_device_range(in1, in1_count * es) ||
        !emu_device_range(in2, in2_count * es) || (ws_bytes && !emu_device_range(ws, ws_bytes)))
        return CUDNN_STATUS_BAD_PARAM;
    if (emu_stream_drain(handle->stream) != cudaSuccess) /* refused in a capture, or a failed device */
        return CUDNN_STATUS_EXECUTION_FAILED_CUDART;
    int nt, n = 0;
    const algo_info *t = algo_table(op, &nt);
    int twice = g.type == CUDNN_DATA_BFLOAT16 && tensor_op_math(g.math);
    emu_lock();
    handle->finds++;
    for (int i = 0; i < nt; i++)
        for (int v = 0; v < (twice ? 2 : 1); v++) {
            conv_geom gm = g;
            if (v)
                gm.math = CUDNN_DEFAULT_MATH;
            perf *r = &res[n++];
            memset(r, 0, sizeof *r);
            r->algo = t[i].algo;
            r->status = algo_supports(&t[i], &gm);
            r->memory = algo_workspace(&t[i], &gm);
            if (r->status == CUDNN_STATUS_SUCCESS && r->memory > ws_bytes)
                r->status = CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED; /* could not run it to time it */
            r->determinism = t[i].sum == SUM_RANDOM ? CUDNN_NON_DETERMINISTIC : CUDNN_DETERMINISTIC;
            r->math = gm.math;
            r->time = r->status == CUDNN_STATUS_SUCCESS ? find_time(handle, op, &t[i], &gm) : -1.0f;
        }
    emu_unlock();
    qsort(res, (size_t)n, sizeof *res, by_time);
    *count = n < requested ? n : requested;
    fill_nan(out, g.type, out_count); /* "overwritten with arbitrary values" */
    return CUDNN_STATUS_SUCCESS;
}

/* Copies the common results into each family's perf struct (they have the same members). */
#define FIND_RESULTS(res, count, out, returned, algo_type)                              \
    do {                                                                                \
        for (int i_ = 0; i_ < (count); i_++) {                                          \
            memset(&(out)[i_], 0, sizeof (out)[i_]);                                    \
            (out)[i_].algo = (algo_type)(res)[i_].algo;                                 \
            (out)[i_].status = (res)[i_].status;                                        \
            (out)[i_].time = (res)[i_].time;                                            \
            (out)[i_].memory = (res)[i_].memory;                                        \
            (out)[i_].determinism = (res)[i_].determinism;                              \
            (out)[i_].mathType = (res)[i_].math;                                        \
        }                                                                               \
        *(returned) = (count);                                                          \
    } while (0)

enum { MAX_ALGOS = 16 }; /* every algorithm of a family, twice */

/* Every forward algorithm, fastest first; y is overwritten. */
cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                     const void *x, const cudnnFilterDescriptor_t wDesc, const void *w,
                                                     const cudnnConvolutionDescriptor_t convDesc,
                                                     const cudnnTensorDescriptor_t yDesc, void *y,
                                                     const int requestedAlgoCount, int *returnedAlgoCount,
                                                     cudnnConvolutionFwdAlgoPerf_t *perfResults, void *workSpace,
                                                     size_t workSpaceSizeInBytes)
{
    perf res[MAX_ALGOS];
    int count = 0;
    if (!perfResults || (workSpaceSizeInBytes && !workSpace))
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = find(handle, OP_FWD, xDesc, wDesc, convDesc, yDesc, x, w, y, requestedAlgoCount,
                            returnedAlgoCount, workSpace, workSpaceSizeInBytes, res, &count);
    if (st == CUDNN_STATUS_SUCCESS)
        FIND_RESULTS(res, count, perfResults, returnedAlgoCount, cudnnConvolutionFwdAlgo_t);
    return st;
}

/* Every backward-data algorithm, fastest first; dx is overwritten. */
cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithmEx(cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc,
                                                          const void *w, const cudnnTensorDescriptor_t dyDesc,
                                                          const void *dy, const cudnnConvolutionDescriptor_t convDesc,
                                                          const cudnnTensorDescriptor_t dxDesc, void *dx,
                                                          const int requestedAlgoCount, int *returnedAlgoCount,
                                                          cudnnConvolutionBwdDataAlgoPerf_t *perfResults,
                                                          void *workSpace, size_t workSpaceSizeInBytes)
{
    perf res[MAX_ALGOS];
    int count = 0;
    if (!perfResults || (workSpaceSizeInBytes && !workSpace))
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = find(handle, OP_DATA, dxDesc, wDesc, convDesc, dyDesc, w, dy, dx, requestedAlgoCount,
                            returnedAlgoCount, workSpace, workSpaceSizeInBytes, res, &count);
    if (st == CUDNN_STATUS_SUCCESS)
        FIND_RESULTS(res, count, perfResults, returnedAlgoCount, cudnnConvolutionBwdDataAlgo_t);
    return st;
}

/* Every backward-filter algorithm, fastest first; dw is overwritten. */
cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithmEx(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                            const void *x, const cudnnTensorDescriptor_t dyDesc,
                                                            const void *y, const cudnnConvolutionDescriptor_t convDesc,
                                                            const cudnnFilterDescriptor_t dwDesc, void *dw,
                                                            const int requestedAlgoCount, int *returnedAlgoCount,
                                                            cudnnConvolutionBwdFilterAlgoPerf_t *perfResults,
                                                            void *workSpace, size_t workSpaceSizeInBytes)
{
    perf res[MAX_ALGOS];
    int count = 0;
    if (!perfResults || (workSpaceSizeInBytes && !workSpace))
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = find(handle, OP_FILTER, xDesc, dwDesc, convDesc, dyDesc, x, y, dw, requestedAlgoCount,
                            returnedAlgoCount, workSpace, workSpaceSizeInBytes, res, &count);
    if (st == CUDNN_STATUS_SUCCESS)
        FIND_RESULTS(res, count, perfResults, returnedAlgoCount, cudnnConvolutionBwdFilterAlgo_t);
    return st;
}

/* ---- convolutions ---- */

/* The common part of the three convolutions: checks (descriptors, the
 * algorithm for this configuration, its workspace, device memory, the
 * tensor cores' 128-bit alignment), then the work on the handle's stream. */
static cudnnStatus_t convolve(cudnnHandle_t handle, int op, int algo, const void *alpha, const void *beta,
                              const struct cudnnTensorStruct *x, const struct cudnnFilterStruct *w,
                              const struct cudnnConvolutionStruct *cd, const struct cudnnTensorStruct *y,
                              const void *in1, const void *in2, void *out, void *ws, size_t ws_bytes)
{
    if (!handle || !alpha || !beta || !in1 || !in2 || !out)
        return CUDNN_STATUS_BAD_PARAM;
    conv_geom g;
    cudnnStatus_t st = check_conv(x, w, cd, y, &g);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    const algo_info *a = algo_find(op, algo);
    if (!a) /* a valid enum the emulation does not implement, or not an algorithm at all */
        return algo >= 0 && algo < (op == OP_FWD    ? CUDNN_CONVOLUTION_FWD_ALGO_COUNT
                                    : op == OP_DATA ? CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT
                                                    : CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT)
                   ? CUDNN_STATUS_NOT_SUPPORTED
                   : CUDNN_STATUS_BAD_PARAM;
    if ((st = algo_supports(a, &g)) != CUDNN_STATUS_SUCCESS)
        return st;
    size_t need = algo_workspace(a, &g);
    if (ws_bytes < need || (need && !emu_device_range(ws, need)))
        return CUDNN_STATUS_BAD_PARAM;
    size_t es = g.type == CUDNN_DATA_FLOAT ? 4 : 2;
    size_t n1 = op == OP_DATA ? g.w_count : g.x_count, n2 = op == OP_FWD ? g.w_count : g.y_count;
    size_t no = op == OP_FWD ? g.y_count : op == OP_DATA ? g.x_count : g.w_count;
    if (!emu_device_range(in1, n1 * es) || !emu_device_range(in2, n2 * es) || !emu_device_range(out, no * es))
        return CUDNN_STATUS_BAD_PARAM; /* not device memory (CUDA would fault) */
    if (a->tensor_core && g.type == CUDNN_DATA_BFLOAT16 &&
        (((uintptr_t)in1 | (uintptr_t)in2 | (uintptr_t)out) & 15))
        return CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER;
    conv_work *c = malloc(sizeof *c);
    if (!c)
        return CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
    *c = (conv_work){op, g, a, in1, in2, out, *(const float *)alpha, *(const float *)beta};
    static const char *names[] = {"cudnnConvolutionForward", "cudnnConvolutionBackwardData",
                                  "cudnnConvolutionBackwardFilter"};
    cudaError_t e = emu_enqueue(handle->stream, names[op], conv_run, c, free);
    return e == cudaSuccess ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_EXECUTION_FAILED_CUDART;
}

/* y = alpha * conv(x, w) + beta * y. */
cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void *alpha, const cudnnTensorDescriptor_t xDesc,
                                      const void *x, const cudnnFilterDescriptor_t wDesc, const void *w,
                                      const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionFwdAlgo_t algo,
                                      void *workSpace, size_t workSpaceSizeInBytes, const void *beta,
                                      const cudnnTensorDescriptor_t yDesc, void *y)
{
    return convolve(handle, OP_FWD, (int)algo, alpha, beta, xDesc, wDesc, convDesc, yDesc, x, w, y, workSpace,
                    workSpaceSizeInBytes);
}

/* dx = alpha * (the adjoint in x of conv(., w) applied to dy) + beta * dx. */
cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t handle, const void *alpha, const cudnnFilterDescriptor_t wDesc,
                                           const void *w, const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                           const cudnnConvolutionDescriptor_t convDesc,
                                           cudnnConvolutionBwdDataAlgo_t algo, void *workSpace,
                                           size_t workSpaceSizeInBytes, const void *beta,
                                           const cudnnTensorDescriptor_t dxDesc, void *dx)
{
    return convolve(handle, OP_DATA, (int)algo, alpha, beta, dxDesc, wDesc, convDesc, dyDesc, w, dy, dx, workSpace,
                    workSpaceSizeInBytes);
}

/* dw = alpha * (the adjoint in w of conv(x, .) applied to dy) + beta * dw. */
cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t handle, const void *alpha,
                                             const cudnnTensorDescriptor_t xDesc, const void *x,
                                             const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                             const cudnnConvolutionDescriptor_t convDesc,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void *workSpace,
                                             size_t workSpaceSizeInBytes, const void *beta,
                                             const cudnnFilterDescriptor_t dwDesc, void *dw)
{
    return convolve(handle, OP_FILTER, (int)algo, alpha, beta, xDesc, dwDesc, convDesc, dyDesc, x, dy, dw, workSpace,
                    workSpaceSizeInBytes);
}
