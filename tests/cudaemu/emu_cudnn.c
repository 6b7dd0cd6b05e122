/* CPU emulation of the cuDNN calls the CUDA backend makes (the
 * emulated-device tests only; never in a real build, which links NVIDIA's
 * libcudnn). "Device memory" is host memory. Descriptors and arguments are
 * checked when a call is made (the statuses below); a convolution runs on
 * the handle's stream when the emulated device gets to it (emu_device.h),
 * or is recorded into the stream's graph during a capture. The Find*Ex
 * calls are synchronous, as cuDNN's are: they run the stream's pending
 * work first and are refused during a capture. This file holds the calls;
 * the convolutions' geometry, algorithms and arithmetic are emu_conv.c's
 * (its opening comment: modes, data types, the algorithms' sums, the
 * tensor-core rules).
 *
 * The semantics are NVIDIA's documented ones, written independently of how
 * the backend calls them, so that a mistake in the backend's calls shows up
 * as an error status or as wrong numbers:
 *  - 4-d tensors in CUDNN_TENSOR_NCHW or CUDNN_TENSOR_NHWC; 4-d filters in
 *    CUDNN_TENSOR_NCHW (KCRS) or CUDNN_TENSOR_NHWC (KRSC); fully packed.
 *  - alpha and beta are host floats, read when the call is made.
 *  - Find*Ex reports every algorithm with a time that varies from handle to
 *    handle and call to call by up to 12 %, more than the deterministic
 *    ones differ, as measured times do on small shapes; one needs more
 *    workspace than the backend gives. For bf16 data under a tensor-op math
 *    type it reports each algorithm twice, under that math type and the
 *    default, each with its own time.
 *  - The tensor-core algorithms with bf16 data need 128-bit aligned data
 *    pointers (CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER). */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "emu_cudnn_internal.h"
#include "emu_device.h"

struct cudnnContext {
    cudaStream_t stream;
    unsigned serial;     /* which handle: the Find timings' noise differs between handles */
    unsigned long finds; /* Find calls so far: ... and between calls */
};

static unsigned handles_made;

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
#define NAME(s) \
    case s: return #s
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

/* The math type: whether the tensor-core algorithms run (bf16) and read fp32 inputs as TF32 (emu_conv.c). */
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
    return emu_conv_output_dims(convDesc, inputTensorDesc, filterDesc, n, c, h, w);
}

/* ---- algorithm search ---- */

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

/* Algorithm a's Find result on g (its math type included): whether it
 * runs, the workspace it needs and, when that fits in ws_bytes, its time. */
static void find_one(cudnnHandle_t handle, int op, const algo_info *a, const conv_geom *g, size_t ws_bytes, perf *r)
{
    memset(r, 0, sizeof *r);
    r->algo = a->algo;
    r->status = emu_algo_supports(a, g);
    r->memory = emu_algo_workspace(a, g);
    if (r->status == CUDNN_STATUS_SUCCESS && r->memory > ws_bytes)
        r->status = CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED; /* could not run it to time it */
    r->determinism = a->sum == SUM_RANDOM ? CUDNN_NON_DETERMINISTIC : CUDNN_DETERMINISTIC;
    r->math = g->math;
    r->time = r->status == CUDNN_STATUS_SUCCESS ? find_time(handle, op, a, g) : -1.0f;
}

/* The common part of the Find*Ex calls: checks (every buffer, the
 * workspace too, inside one device allocation), the stream's pending work
 * (Find is synchronous), every algorithm of op reported (sorted by time,
 * failures last; for bf16 data under a tensor-op math type each one twice,
 * under that math and the default, as cuDNN times both), the output
 * overwritten. Returns the status and *count. */
static cudnnStatus_t find(cudnnHandle_t handle, int op, const struct cudnnTensorStruct *x,
                          const struct cudnnFilterStruct *w, const struct cudnnConvolutionStruct *cd,
                          const struct cudnnTensorStruct *y, const void *in1, const void *in2, void *out, int requested,
                          int *returned, const void *ws, size_t ws_bytes, perf *res, int *count)
{
    conv_geom g;
    if (!handle || !in1 || !in2 || !out || !returned || requested < 1)
        return CUDNN_STATUS_BAD_PARAM;
    cudnnStatus_t st = emu_conv_check(x, w, cd, y, &g);
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
    const algo_info *t = emu_algo_table(op, &nt);
    int twice = g.type == CUDNN_DATA_BFLOAT16 && emu_tensor_op_math(g.math);
    emu_lock();
    handle->finds++;
    for (int i = 0; i < nt; i++)
        for (int v = 0; v < (twice ? 2 : 1); v++) {
            conv_geom gm = g;
            if (v)
                gm.math = CUDNN_DEFAULT_MATH;
            find_one(handle, op, &t[i], &gm, ws_bytes, &res[n++]);
        }
    emu_unlock();
    qsort(res, (size_t)n, sizeof *res, by_time);
    *count = n < requested ? n : requested;
    if (!emu_dry())
        fill_nan(out, g.type, out_count); /* "overwritten with arbitrary values" */
    return CUDNN_STATUS_SUCCESS;
}

/* Copies the common results into each family's perf struct (they have the same members). */
#define FIND_RESULTS(res, count, out, returned, algo_type) \
    do {                                                   \
        for (int i_ = 0; i_ < (count); i_++) {             \
            memset(&(out)[i_], 0, sizeof(out)[i_]);        \
            (out)[i_].algo = (algo_type)(res)[i_].algo;    \
            (out)[i_].status = (res)[i_].status;           \
            (out)[i_].time = (res)[i_].time;               \
            (out)[i_].memory = (res)[i_].memory;           \
            (out)[i_].determinism = (res)[i_].determinism; \
            (out)[i_].mathType = (res)[i_].math;           \
        }                                                  \
        *(returned) = (count);                             \
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
    cudnnStatus_t st = emu_conv_check(x, w, cd, y, &g);
    if (st != CUDNN_STATUS_SUCCESS)
        return st;
    const algo_info *a = emu_algo_find(op, algo);
    if (!a) /* a valid enum the emulation does not implement, or not an algorithm at all */
        return algo >= 0 && algo < (op == OP_FWD    ? CUDNN_CONVOLUTION_FWD_ALGO_COUNT
                                    : op == OP_DATA ? CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT
                                                    : CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT)
                   ? CUDNN_STATUS_NOT_SUPPORTED
                   : CUDNN_STATUS_BAD_PARAM;
    if ((st = emu_algo_supports(a, &g)) != CUDNN_STATUS_SUCCESS)
        return st;
    size_t need = emu_algo_workspace(a, &g);
    if (ws_bytes < need || (need && !emu_device_range(ws, need)))
        return CUDNN_STATUS_BAD_PARAM;
    size_t es = g.type == CUDNN_DATA_FLOAT ? 4 : 2;
    size_t n1 = op == OP_DATA ? g.w_count : g.x_count, n2 = op == OP_FWD ? g.w_count : g.y_count;
    size_t no = op == OP_FWD ? g.y_count : op == OP_DATA ? g.x_count : g.w_count;
    if (!emu_device_range(in1, n1 * es) || !emu_device_range(in2, n2 * es) || !emu_device_range(out, no * es))
        return CUDNN_STATUS_BAD_PARAM; /* not device memory (CUDA would fault) */
    if (a->tensor_core && g.type == CUDNN_DATA_BFLOAT16 && (((uintptr_t)in1 | (uintptr_t)in2 | (uintptr_t)out) & 15))
        return CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER;
    conv_work *c = malloc(sizeof *c);
    if (!c)
        return CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED;
    *c = (conv_work){op, g, a, in1, in2, out, *(const float *)alpha, *(const float *)beta};
    static const char *names[] = {"cudnnConvolutionForward", "cudnnConvolutionBackwardData",
                                  "cudnnConvolutionBackwardFilter"};
    cudaError_t e = emu_enqueue(handle->stream, names[op], emu_conv_run, c, free);
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
