/* CPU emulation of the cuDNN calls the CUDA backend makes (the
 * emulated-device tests only; never in a real build, which links NVIDIA's
 * libcudnn). "Device memory" is host memory and streams are ignored: every
 * call does its work before it returns.
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
 *    CUDNN_DATA_FLOAT convolution compute type; alpha and beta are floats.
 *    Sums are accumulated in double, the scaled result rounded to float
 *    and, for bf16, on to bf16 (nearest even, as __float2bfloat16_rn).
 *  - dst = alpha * result + beta * dst, where beta == 0 never reads dst (it
 *    may hold NaN).
 * Every algorithm computes the same (exact-sum) result. The Find*Ex calls
 * overwrite their output buffer with NaN, which the documentation allows
 * ("overwritten with arbitrary values"). The math type is stored and
 * reported but does not change the arithmetic (no TF32 emulation). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cudnn.h>

#include "elementwise.h"

struct cudnnContext {
    cudaStream_t stream;
};

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
    g->xs = strides_of(x->format, x->c, x->h, x->w);
    g->ws = strides_of(w->format, w->c, w->r, w->s);
    g->ys = strides_of(y->format, y->c, y->h, y->w);
    g->x_count = (size_t)x->n * (size_t)x->c * (size_t)x->h * (size_t)x->w;
    g->w_count = (size_t)w->k * (size_t)w->c * (size_t)w->r * (size_t)w->s;
    g->y_count = (size_t)y->n * (size_t)y->c * (size_t)y->h * (size_t)y->w;
    return CUDNN_STATUS_SUCCESS;
}

/* The count elements at p as floats: p itself for float data, else a
 * converted copy in *owned (to free). NULL when out of memory. */
static const float *as_float(const void *p, cudnnDataType_t type, size_t count, float **owned)
{
    *owned = NULL;
    if (type == CUDNN_DATA_FLOAT)
        return p;
    float *f = malloc((count ? count : 1) * sizeof *f);
    if (!f)
        return NULL;
    const uint16_t *b = p;
    for (size_t i = 0; i < count; i++)
        f[i] = amdim_bf16_value(b[i]);
    *owned = f;
    return f;
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

/* y[n, k, p, q] = sum over c, r, s of x[n, c, p u - pad_h + r dil_h, q v - pad_w + s dil_w] w[k, c, r, s]
 * (w flipped in CUDNN_CONVOLUTION mode), then scaled into y. */
static void run_forward(const conv_geom *g, const float *x, const float *w, void *y, float alpha, float beta)
{
    for (int n = 0; n < g->n; n++)
        for (int p = 0; p < g->p; p++)
            for (int q = 0; q < g->q; q++)
                for (int k = 0; k < g->k; k++) {
                    double acc = 0;
                    for (int r = 0; r < g->r; r++) {
                        int hh = p * g->u - g->pad_h + r * g->dil_h;
                        if (hh < 0 || hh >= g->h)
                            continue;
                        for (int s = 0; s < g->s; s++) {
                            int ww = q * g->v - g->pad_w + s * g->dil_w;
                            if (ww < 0 || ww >= g->w)
                                continue;
                            const float *xp = x + (size_t)n * g->xs.n + (size_t)hh * g->xs.h + (size_t)ww * g->xs.w;
                            const float *wp = w + filter_at(g, k, r, s);
                            for (int c = 0; c < g->c; c++)
                                acc += (double)xp[(size_t)c * g->xs.c] * (double)wp[(size_t)c * g->ws.c];
                        }
                    }
                    size_t yi = (size_t)n * g->ys.n + (size_t)k * g->ys.c + (size_t)p * g->ys.h + (size_t)q * g->ys.w;
                    store(y, g->type, yi, acc, alpha, beta);
                }
}

/* The adjoint of the forward map in x: dx[n, c, h, w] = sum of dy[n, k, p, q] w[k, c, r, s] over the (k, p, q,
 * r, s) whose window position is (h, w). Accumulated in acc (x's layout, x_count doubles). */
static void run_backward_data(const conv_geom *g, const float *w, const float *dy, double *acc)
{
    for (int n = 0; n < g->n; n++)
        for (int p = 0; p < g->p; p++)
            for (int q = 0; q < g->q; q++)
                for (int k = 0; k < g->k; k++) {
                    double d =
                        dy[(size_t)n * g->ys.n + (size_t)k * g->ys.c + (size_t)p * g->ys.h + (size_t)q * g->ys.w];
                    for (int r = 0; r < g->r; r++) {
                        int hh = p * g->u - g->pad_h + r * g->dil_h;
                        if (hh < 0 || hh >= g->h)
                            continue;
                        for (int s = 0; s < g->s; s++) {
                            int ww = q * g->v - g->pad_w + s * g->dil_w;
                            if (ww < 0 || ww >= g->w)
                                continue;
                            double *ap = acc + (size_t)n * g->xs.n + (size_t)hh * g->xs.h + (size_t)ww * g->xs.w;
                            const float *wp = w + filter_at(g, k, r, s);
                            for (int c = 0; c < g->c; c++)
                                ap[(size_t)c * g->xs.c] += d * (double)wp[(size_t)c * g->ws.c];
                        }
                    }
                }
}

/* The adjoint of the forward map in w: dw[k, c, r, s] = sum over n, p, q of dy[n, k, p, q] x[n, c, window]
 * (stored flipped in CUDNN_CONVOLUTION mode). Accumulated in acc (w's layout, w_count doubles). */
static void run_backward_filter(const conv_geom *g, const float *x, const float *dy, double *acc)
{
    for (int n = 0; n < g->n; n++)
        for (int p = 0; p < g->p; p++)
            for (int q = 0; q < g->q; q++)
                for (int r = 0; r < g->r; r++) {
                    int hh = p * g->u - g->pad_h + r * g->dil_h;
                    if (hh < 0 || hh >= g->h)
                        continue;
                    for (int s = 0; s < g->s; s++) {
                        int ww = q * g->v - g->pad_w + s * g->dil_w;
                        if (ww < 0 || ww >= g->w)
                            continue;
                        const float *xp = x + (size_t)n * g->xs.n + (size_t)hh * g->xs.h + (size_t)ww * g->xs.w;
                        for (int k = 0; k < g->k; k++) {
                            double d = dy[(size_t)n * g->ys.n + (size_t)k * g->ys.c + (size_t)p * g->ys.h +
                                          (size_t)q * g->ys.w];
                            double *ap = acc + filter_at(g, k, r, s);
                            for (int c = 0; c < g->c; c++)
                                ap[(size_t)c * g->ws.c] += d * (double)xp[(size_t)c * g->xs.c];
                        }
                    }
                }
}

/* ---- handle ---- */

/* Creates a handle (no stream: the legacy default stream). */
cudnnStatus_t cudnnCreate(cudnnHandle_t *handle)
{
    if (!handle)
        return CUDNN_STATUS_BAD_PARAM;
    *handle = calloc(1, sizeof **handle);
    return *handle ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
}

/* Frees a handle. */
cudnnStatus_t cudnnDestroy(cudnnHandle_t handle)
{
    if (!handle)
        return CUDNN_STATUS_BAD_PARAM;
    free(handle);
    return CUDNN_STATUS_SUCCESS;
}

/* Records the stream later calls run on (ignored: everything is synchronous). */
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

/* Records the math type (reported back by Find*Ex; it does not change the emulated arithmetic). */
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

/* Common checks of the Find*Ex calls; on success overwrites the output (count elements at out) with NaN. */
static cudnnStatus_t find_common(cudnnHandle_t handle, const struct cudnnTensorStruct *x,
                                 const struct cudnnFilterStruct *w, const struct cudnnConvolutionStruct *cd,
                                 const struct cudnnTensorStruct *y, const void *in1, const void *in2, void *out,
                                 int which, int requested, const int *returned, const void *perf)
{
    conv_geom g;
    if (!handle || !in1 || !in2 || !out || !returned || !perf || requested < 1)
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = check_conv(x, w, cd, y, &g);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    fill_nan(out, g.type, which == 0 ? g.y_count : which == 1 ? g.x_count : g.w_count);
    return CUDNN_STATUS_SUCCESS;
}

/* The Find*Ex calls' single result (each family has its own perf struct). */
#define ONE_RESULT(perf, algo_, conv, count)                  \
    do {                                                      \
        memset((perf), 0, sizeof *(perf));                    \
        (perf)->algo = (algo_);                               \
        (perf)->status = CUDNN_STATUS_SUCCESS;                \
        (perf)->determinism = CUDNN_DETERMINISTIC;            \
        (perf)->mathType = (conv)->math;                      \
        *(count) = 1;                                         \
        return CUDNN_STATUS_SUCCESS;                          \
    } while (0)

/* One result: CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, deterministic, no workspace, the descriptor's math type.
 * y's contents are overwritten. */
cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                     const void *x, const cudnnFilterDescriptor_t wDesc, const void *w,
                                                     const cudnnConvolutionDescriptor_t convDesc,
                                                     const cudnnTensorDescriptor_t yDesc, void *y,
                                                     const int requestedAlgoCount, int *returnedAlgoCount,
                                                     cudnnConvolutionFwdAlgoPerf_t *perfResults, void *workSpace,
                                                     size_t workSpaceSizeInBytes)
{
    (void)workSpace, (void)workSpaceSizeInBytes;
    cudnnStatus_t st = find_common(handle, xDesc, wDesc, convDesc, yDesc, x, w, y, 0, requestedAlgoCount,
                                   returnedAlgoCount, perfResults);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    ONE_RESULT(perfResults, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, convDesc, returnedAlgoCount);
}

/* One result: CUDNN_CONVOLUTION_BWD_DATA_ALGO_1 (ALGO_0 is documented non-deterministic), deterministic, no
 * workspace, the descriptor's math type. dx's contents are overwritten. */
cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithmEx(cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc,
                                                          const void *w, const cudnnTensorDescriptor_t dyDesc,
                                                          const void *dy, const cudnnConvolutionDescriptor_t convDesc,
                                                          const cudnnTensorDescriptor_t dxDesc, void *dx,
                                                          const int requestedAlgoCount, int *returnedAlgoCount,
                                                          cudnnConvolutionBwdDataAlgoPerf_t *perfResults,
                                                          void *workSpace, size_t workSpaceSizeInBytes)
{
    (void)workSpace, (void)workSpaceSizeInBytes;
    cudnnStatus_t st = find_common(handle, dxDesc, wDesc, convDesc, dyDesc, w, dy, dx, 1, requestedAlgoCount,
                                   returnedAlgoCount, perfResults);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    ONE_RESULT(perfResults, CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, convDesc, returnedAlgoCount);
}

/* One result: CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 (ALGO_0 is documented non-deterministic), deterministic, no
 * workspace, the descriptor's math type. dw's contents are overwritten. */
cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithmEx(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                            const void *x, const cudnnTensorDescriptor_t dyDesc,
                                                            const void *y, const cudnnConvolutionDescriptor_t convDesc,
                                                            const cudnnFilterDescriptor_t dwDesc, void *dw,
                                                            const int requestedAlgoCount, int *returnedAlgoCount,
                                                            cudnnConvolutionBwdFilterAlgoPerf_t *perfResults,
                                                            void *workSpace, size_t workSpaceSizeInBytes)
{
    (void)workSpace, (void)workSpaceSizeInBytes;
    cudnnStatus_t st = find_common(handle, xDesc, dwDesc, convDesc, dyDesc, x, y, dw, 2, requestedAlgoCount,
                                   returnedAlgoCount, perfResults);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    ONE_RESULT(perfResults, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, convDesc, returnedAlgoCount);
}

/* ---- convolutions ---- */

/* y = alpha * conv(x, w) + beta * y. */
cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void *alpha, const cudnnTensorDescriptor_t xDesc,
                                      const void *x, const cudnnFilterDescriptor_t wDesc, const void *w,
                                      const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionFwdAlgo_t algo,
                                      void *workSpace, size_t workSpaceSizeInBytes, const void *beta,
                                      const cudnnTensorDescriptor_t yDesc, void *y)
{
    (void)workSpace, (void)workSpaceSizeInBytes;
    if (!handle || !alpha || !beta || !x || !w || !y)
        return CUDNN_STATUS_BAD_PARAM;
    if ((int)algo < 0 || (int)algo >= CUDNN_CONVOLUTION_FWD_ALGO_COUNT)
        return CUDNN_STATUS_BAD_PARAM;
    conv_geom g;
    cudnnStatus_t st = check_conv(xDesc, wDesc, convDesc, yDesc, &g);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    float *xo, *wo;
    const float *xf = as_float(x, g.type, g.x_count, &xo), *wf = as_float(w, g.type, g.w_count, &wo);
    if (xf && wf)
        run_forward(&g, xf, wf, y, *(const float *)alpha, *(const float *)beta);
    else
        st = CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
    free(xo);
    free(wo);
    return st;
}

/* dx = alpha * (the adjoint in x of conv(., w) applied to dy) + beta * dx. */
cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t handle, const void *alpha, const cudnnFilterDescriptor_t wDesc,
                                           const void *w, const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                           const cudnnConvolutionDescriptor_t convDesc,
                                           cudnnConvolutionBwdDataAlgo_t algo, void *workSpace,
                                           size_t workSpaceSizeInBytes, const void *beta,
                                           const cudnnTensorDescriptor_t dxDesc, void *dx)
{
    (void)workSpace, (void)workSpaceSizeInBytes;
    if (!handle || !alpha || !beta || !w || !dy || !dx)
        return CUDNN_STATUS_BAD_PARAM;
    if ((int)algo < 0 || (int)algo >= CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT)
        return CUDNN_STATUS_BAD_PARAM;
    conv_geom g;
    cudnnStatus_t st = check_conv(dxDesc, wDesc, convDesc, dyDesc, &g);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    float *wo, *dyo;
    const float *wf = as_float(w, g.type, g.w_count, &wo), *dyf = as_float(dy, g.type, g.y_count, &dyo);
    double *acc = calloc(g.x_count, sizeof *acc);
    if (wf && dyf && acc) {
        run_backward_data(&g, wf, dyf, acc);
        float a = *(const float *)alpha, b = *(const float *)beta;
        for (size_t i = 0; i < g.x_count; i++)
            store(dx, g.type, i, acc[i], a, b);
    } else {
        st = CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
    }
    free(acc);
    free(wo);
    free(dyo);
    return st;
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
    (void)workSpace, (void)workSpaceSizeInBytes;
    if (!handle || !alpha || !beta || !x || !dy || !dw)
        return CUDNN_STATUS_BAD_PARAM;
    if ((int)algo < 0 || (int)algo >= CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT)
        return CUDNN_STATUS_BAD_PARAM;
    conv_geom g;
    cudnnStatus_t st = check_conv(xDesc, dwDesc, convDesc, dyDesc, &g);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    float *xo, *dyo;
    const float *xf = as_float(x, g.type, g.x_count, &xo), *dyf = as_float(dy, g.type, g.y_count, &dyo);
    double *acc = calloc(g.w_count, sizeof *acc);
    if (xf && dyf && acc) {
        run_backward_filter(&g, xf, dyf, acc);
        float a = *(const float *)alpha, b = *(const float *)beta;
        for (size_t i = 0; i < g.w_count; i++)
            store(dw, g.type, i, acc[i], a, b);
    } else {
        st = CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
    }
    free(acc);
    free(xo);
    free(dyo);
    return st;
}
