/* cuDNN convolutions (see conv.h). */
#include "conv.h"

#include <stdlib.h>
#include <string.h>

#include "amdim_common.h"

struct amdim_conv_algos {
    amdim_conv_shape sh;
    int have[3]; /* forward, backward data, backward filter */
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t data;
    cudnnConvolutionBwdFilterAlgo_t filter;
    cudnnMathType_t math[3]; /* each algorithm's, as Find measured it */
};

#define DNN(c, call, name)                                                                                     \
    do {                                                                                                       \
        cudnnStatus_t st_ = (call);                                                                            \
        if (st_ != CUDNN_STATUS_SUCCESS)                                                                       \
            return amdim_fail((c)->err, (c)->errn, st_ == CUDNN_STATUS_ALLOC_FAILED ? AMDIM_E_NOMEM : AMDIM_E_IO, \
                              "%s(): %s", name, cudnnGetErrorString(st_));                                     \
    } while (0)

int amdim_conv_open(amdim_conv *c, cudaStream_t s, size_t ws_bytes, char *err, size_t errn)
{
    memset(c, 0, sizeof *c);
    c->err = err;
    c->errn = errn;
    DNN(c, cudnnCreate(&c->h), "cudnnCreate");
    DNN(c, cudnnSetStream(c->h, s), "cudnnSetStream");
    DNN(c, cudnnCreateTensorDescriptor(&c->xd), "cudnnCreateTensorDescriptor");
    DNN(c, cudnnCreateTensorDescriptor(&c->yd), "cudnnCreateTensorDescriptor");
    DNN(c, cudnnCreateFilterDescriptor(&c->wd), "cudnnCreateFilterDescriptor");
    DNN(c, cudnnCreateConvolutionDescriptor(&c->cd), "cudnnCreateConvolutionDescriptor");
    cudaError_t e = cudaMalloc(&c->ws, ws_bytes);
    if (e != cudaSuccess) {
        c->ws = NULL;
        return amdim_fail(err, errn, AMDIM_E_NOMEM, "cudaMalloc(%zu bytes of cuDNN workspace): %s", ws_bytes,
                          cudaGetErrorString(e));
    }
    c->ws_size = ws_bytes;
    return AMDIM_OK;
}

void amdim_conv_close(amdim_conv *c)
{
    if (c->cd)
        cudnnDestroyConvolutionDescriptor(c->cd);
    if (c->wd)
        cudnnDestroyFilterDescriptor(c->wd);
    if (c->yd)
        cudnnDestroyTensorDescriptor(c->yd);
    if (c->xd)
        cudnnDestroyTensorDescriptor(c->xd);
    if (c->h)
        cudnnDestroy(c->h);
    cudaFree(c->ws);
    free(c->cache);
    memset(c, 0, sizeof *c);
}

/* The four descriptors for sh. */
/* The four descriptors for sh: data (x, y, w) float or bfloat16 (c->bf16),
 * computed in float either way (cuDNN's FLOAT and BFLOAT16 configs). */
static int describe(amdim_conv *c, const amdim_conv_shape *sh, cudnnTensorDescriptor_t xd, cudnnTensorDescriptor_t yd,
                    cudnnFilterDescriptor_t wd, cudnnConvolutionDescriptor_t cd)
{
    int ho = (sh->h - sh->k) / sh->s + 1, wo = (sh->w - sh->k) / sh->s + 1;
    cudnnDataType_t dt = c->bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    DNN(c, cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NHWC, dt, sh->n, sh->cin, sh->h, sh->w),
        "cudnnSetTensor4dDescriptor");
    DNN(c, cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NHWC, dt, sh->n, sh->cout, ho, wo),
        "cudnnSetTensor4dDescriptor");
    DNN(c, cudnnSetFilter4dDescriptor(wd, dt, CUDNN_TENSOR_NHWC, sh->cout, sh->cin, sh->k, sh->k),
        "cudnnSetFilter4dDescriptor");
    DNN(c, cudnnSetConvolution2dDescriptor(cd, 0, 0, sh->s, sh->s, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
        "cudnnSetConvolution2dDescriptor");
    DNN(c, cudnnSetConvolutionMathType(cd, c->bf16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH),
        "cudnnSetConvolutionMathType");
    return AMDIM_OK;
}

void amdim_conv_set_bf16(amdim_conv *c, int on)
{
    if (c->bf16 != !!on)
        c->ncache = 0;
    c->bf16 = !!on;
}

int amdim_conv_output_dim(const amdim_conv_shape *sh, int bf16, int out[4], char *err, size_t errn)
{
    amdim_conv c = {.err = err, .errn = errn, .bf16 = !!bf16};
    int rc = AMDIM_E_IO;
    cudnnStatus_t st;
    if ((st = cudnnCreateTensorDescriptor(&c.xd)) || (st = cudnnCreateTensorDescriptor(&c.yd)) ||
        (st = cudnnCreateFilterDescriptor(&c.wd)) || (st = cudnnCreateConvolutionDescriptor(&c.cd))) {
        amdim_fail(err, errn, AMDIM_E_IO, "cudnnCreate*Descriptor(): %s", cudnnGetErrorString(st));
        goto done;
    }
    if ((rc = describe(&c, sh, c.xd, c.yd, c.wd, c.cd)))
        goto done;
    if ((st = cudnnGetConvolution2dForwardOutputDim(c.cd, c.xd, c.wd, &out[0], &out[1], &out[2], &out[3]))) {
        rc = amdim_fail(err, errn, AMDIM_E_IO, "cudnnGetConvolution2dForwardOutputDim(): %s", cudnnGetErrorString(st));
        goto done;
    }
    rc = AMDIM_OK;
done:
    if (c.cd)
        cudnnDestroyConvolutionDescriptor(c.cd);
    if (c.wd)
        cudnnDestroyFilterDescriptor(c.wd);
    if (c.yd)
        cudnnDestroyTensorDescriptor(c.yd);
    if (c.xd)
        cudnnDestroyTensorDescriptor(c.xd);
    return rc;
}

/* The cache entry of sh (created empty on first use), or NULL. */
static amdim_conv_algos *entry(amdim_conv *c, const amdim_conv_shape *sh)
{
    for (int i = 0; i < c->ncache; i++)
        if (!memcmp(&c->cache[i].sh, sh, sizeof *sh))
            return &c->cache[i];
    if (c->ncache == c->cap) {
        int cap = c->cap ? 2 * c->cap : 32;
        amdim_conv_algos *p = realloc(c->cache, (size_t)cap * sizeof *p);
        if (!p)
            return NULL;
        c->cache = p;
        c->cap = cap;
    }
    amdim_conv_algos *a = &c->cache[c->ncache++];
    memset(a, 0, sizeof *a);
    a->sh = *sh;
    return a;
}

#define ENTRY(c, sh, a)                                                                         \
    amdim_conv_algos *a = entry((c), (sh));                                                     \
    if (!a)                                                                                     \
        return amdim_fail((c)->err, (c)->errn, AMDIM_E_NOMEM, "out of memory (cuDNN algorithm cache)"); \
    int rc_ = describe((c), (sh), (c)->xd, (c)->yd, (c)->wd, (c)->cd);                          \
    if (rc_)                                                                                    \
        return rc_

/* First (fastest) result that succeeded, is deterministic and fits. */
#define PICK(c, perf, count, out, math, name)                                                                        \
    do {                                                                                                         \
        int found_ = 0;                                                                                          \
        for (int i_ = 0; i_ < (count) && !found_; i_++)                                                          \
            if ((perf)[i_].status == CUDNN_STATUS_SUCCESS && (perf)[i_].determinism == CUDNN_DETERMINISTIC &&    \
                (perf)[i_].memory <= (c)->ws_size) {                                                             \
                (out) = (perf)[i_].algo;                                                                         \
                (math) = (perf)[i_].mathType;                                                                    \
                found_ = 1;                                                                                      \
            }                                                                                                    \
        if (!found_)                                                                                             \
            return amdim_fail((c)->err, (c)->errn, AMDIM_E_UNSUPPORTED,                                          \
                              "%s(): no deterministic algorithm fits %zu bytes of workspace", name, (c)->ws_size); \
    } while (0)

static const float one = 1.0f, zero = 0.0f;

int amdim_conv_forward(amdim_conv *c, const amdim_conv_shape *sh, const void *x, const void *w, void *y)
{
    ENTRY(c, sh, a);
    if (!a->have[0]) {
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        int n = 0;
        DNN(c, cudnnFindConvolutionForwardAlgorithmEx(c->h, c->xd, x, c->wd, w, c->cd, c->yd, y,
                                                      CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf, c->ws, c->ws_size),
            "cudnnFindConvolutionForwardAlgorithmEx");
        PICK(c, perf, n, a->fwd, a->math[0], "cudnnFindConvolutionForwardAlgorithmEx");
        a->have[0] = 1;
    }
    DNN(c, cudnnSetConvolutionMathType(c->cd, a->math[0]), "cudnnSetConvolutionMathType");
    DNN(c, cudnnConvolutionForward(c->h, &one, c->xd, x, c->wd, w, c->cd, a->fwd, c->ws, c->ws_size, &zero, c->yd, y),
        "cudnnConvolutionForward");
    return AMDIM_OK;
}

int amdim_conv_backward_data(amdim_conv *c, const amdim_conv_shape *sh, const void *w, const void *dy, void *dx)
{
    ENTRY(c, sh, a);
    if (!a->have[1]) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        int n = 0;
        DNN(c, cudnnFindConvolutionBackwardDataAlgorithmEx(c->h, c->wd, w, c->yd, dy, c->cd, c->xd, dx,
                                                           CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, perf, c->ws,
                                                           c->ws_size),
            "cudnnFindConvolutionBackwardDataAlgorithmEx");
        PICK(c, perf, n, a->data, a->math[1], "cudnnFindConvolutionBackwardDataAlgorithmEx");
        a->have[1] = 1;
    }
    DNN(c, cudnnSetConvolutionMathType(c->cd, a->math[1]), "cudnnSetConvolutionMathType");
    DNN(c, cudnnConvolutionBackwardData(c->h, &one, c->wd, w, c->yd, dy, c->cd, a->data, c->ws, c->ws_size, &zero,
                                        c->xd, dx),
        "cudnnConvolutionBackwardData");
    return AMDIM_OK;
}

int amdim_conv_backward_filter(amdim_conv *c, const amdim_conv_shape *sh, const void *x, const void *dy, void *dw)
{
    ENTRY(c, sh, a);
    if (!a->have[2]) {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        int n = 0;
        DNN(c, cudnnFindConvolutionBackwardFilterAlgorithmEx(c->h, c->xd, x, c->yd, dy, c->cd, c->wd, dw,
                                                             CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, perf, c->ws,
                                                             c->ws_size),
            "cudnnFindConvolutionBackwardFilterAlgorithmEx");
        PICK(c, perf, n, a->filter, a->math[2], "cudnnFindConvolutionBackwardFilterAlgorithmEx");
        a->have[2] = 1;
    }
    DNN(c, cudnnSetConvolutionMathType(c->cd, a->math[2]), "cudnnSetConvolutionMathType");
    DNN(c, cudnnConvolutionBackwardFilter(c->h, &one, c->xd, x, c->yd, dy, c->cd, a->filter, c->ws, c->ws_size, &zero,
                                          c->wd, dw),
        "cudnnConvolutionBackwardFilter");
    return AMDIM_OK;
}
