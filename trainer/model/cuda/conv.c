/* cuDNN convolutions and the process's algorithm table (see conv.h). */
#include "conv_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_common.h"

/* ---- the table ---------------------------------------------------------------- */

typedef struct {
    int device, op, bf16;
    amdim_conv_shape sh;
    size_t ws_size;
    int algo, math;
    float ms;     /* the choice's measured time; < 0 when adopted from another rank */
    int measured; /* how many algorithms Find timed */
} choice;

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static choice *table;
static size_t table_n, table_cap;

static int same_key(const choice *e, int device, int op, int bf16, const amdim_conv_shape *sh, size_t ws)
{
    return e->device == device && e->op == op && e->bf16 == bf16 && e->ws_size == ws && !memcmp(&e->sh, sh, sizeof *sh);
}

/* The entry of the key (under the lock), or NULL. */
static choice *lookup(int device, int op, int bf16, const amdim_conv_shape *sh, size_t ws)
{
    for (size_t i = 0; i < table_n; i++)
        if (same_key(&table[i], device, op, bf16, sh, ws))
            return &table[i];
    return NULL;
}

/* Sets the key's choice (under the lock); 0 or AMDIM_E_NOMEM. */
static int store_choice(const choice *c)
{
    choice *e = lookup(c->device, c->op, c->bf16, &c->sh, c->ws_size);
    if (!e) {
        if (table_n == table_cap) {
            size_t cap = table_cap ? 2 * table_cap : 64;
            choice *t = realloc(table, cap * sizeof *t);
            if (!t)
                return AMDIM_E_NOMEM;
            table = t;
            table_cap = cap;
        }
        e = &table[table_n++];
    }
    *e = *c;
    return AMDIM_OK;
}

static const char *op_name(int op) { return op == AMDIM_CONV_FWD ? "fwd" : op == AMDIM_CONV_DATA ? "bwd-data" : "bwd-filter"; }

static const char *algo_name(int op, int a)
{
    static const char *fwd[] = {"IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT",
                                "FFT",           "FFT_TILING",            "WINOGRAD", "WINOGRAD_NONFUSED"};
    static const char *data[] = {"ALGO_0", "ALGO_1", "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
    static const char *filter[] = {"ALGO_0", "ALGO_1", "FFT", "ALGO_3", "WINOGRAD", "WINOGRAD_NONFUSED", "FFT_TILING"};
    if (op == AMDIM_CONV_FWD)
        return a >= 0 && a < 8 ? fwd[a] : "?";
    if (op == AMDIM_CONV_DATA)
        return a >= 0 && a < 6 ? data[a] : "?";
    return a >= 0 && a < 7 ? filter[a] : "?";
}

static const char *math_name(int m)
{
    return m == CUDNN_FMA_MATH          ? "fma"
           : m == CUDNN_TENSOR_OP_MATH  ? "tensor-op"
           : m == CUDNN_DEFAULT_MATH    ? "default"
           : m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION ? "tensor-op-conversion"
                                                       : "?";
}

/* "bf16 x (32, 30, 30, 8) * w (16, 3, 3, 8) stride 1" */
static void shape_text(const amdim_conv_shape *sh, int bf16, char *buf, size_t n)
{
    snprintf(buf, n, "%s x (%d, %d, %d, %d) * w (%d, %d, %d, %d) stride %d", bf16 ? "bf16" : "fp32", sh->n, sh->h,
             sh->w, sh->cin, sh->cout, sh->k, sh->k, sh->cin, sh->s);
}

size_t amdim_conv_table_text(char *buf, size_t n)
{
    size_t len = 0;
    if (n)
        buf[0] = 0;
    pthread_mutex_lock(&table_lock);
    for (size_t i = 0; i < table_n; i++) {
        const choice *e = &table[i];
        char sh[160], t[96];
        shape_text(&e->sh, e->bf16, sh, sizeof sh);
        if (e->ms >= 0)
            snprintf(t, sizeof t, "%.3f ms, the choice of %d measured", e->ms, e->measured);
        else
            snprintf(t, sizeof t, "rank 0's choice");
        int w = snprintf(len < n ? buf + len : NULL, len < n ? n - len : 0, "device %d %-10s %s: %s %s (%s)\n",
                         e->device, op_name(e->op), sh, algo_name(e->op, e->algo), math_name(e->math), t);
        len += w > 0 ? (size_t)w : 0;
    }
    pthread_mutex_unlock(&table_lock);
    return len;
}

void amdim_conv_table_clear(void)
{
    pthread_mutex_lock(&table_lock);
    free(table);
    table = NULL;
    table_n = table_cap = 0;
    pthread_mutex_unlock(&table_lock);
}

int amdim_conv_choice_get(const amdim_conv *c, int op, const amdim_conv_shape *sh, int *algo, int *math)
{
    pthread_mutex_lock(&table_lock);
    const choice *e = lookup(c->device, op, c->bf16, sh, c->ws_size);
    if (e) {
        *algo = e->algo;
        *math = e->math;
    }
    pthread_mutex_unlock(&table_lock);
    return e != NULL;
}

int amdim_conv_choice_set(amdim_conv *c, int op, const amdim_conv_shape *sh, int algo, int math)
{
    choice e = {c->device, op, c->bf16, *sh, c->ws_size, algo, math, -1.0f, 0};
    pthread_mutex_lock(&table_lock);
    int rc = store_choice(&e);
    pthread_mutex_unlock(&table_lock);
    return rc ? amdim_fail(c->err, c->errn, rc, "out of memory (cuDNN algorithm table)") : AMDIM_OK;
}

/* ---- handle and descriptors ------------------------------------------------------- */

/* 0, or the failure of a cuDNN call as a status with its message. */
static int dnn(amdim_conv *c, cudnnStatus_t st, const char *name)
{
    if (st == CUDNN_STATUS_SUCCESS)
        return AMDIM_OK;
    return amdim_fail(c->err, c->errn,
                      st == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ? AMDIM_E_NOMEM : AMDIM_E_IO, "%s(): %s",
                      name, cudnnGetErrorString(st));
}

int amdim_conv_open(amdim_conv *c, cudaStream_t s, size_t ws_bytes, char *err, size_t errn)
{
    memset(c, 0, sizeof *c);
    c->err = err;
    c->errn = errn;
    cudaError_t e = cudaGetDevice(&c->device);
    if (e != cudaSuccess)
        return amdim_fail(err, errn, AMDIM_E_IO, "cudaGetDevice(): %s", cudaGetErrorString(e));
    AMDIM_TRY(dnn(c, cudnnCreate(&c->h), "cudnnCreate"));
    AMDIM_TRY(dnn(c, cudnnSetStream(c->h, s), "cudnnSetStream"));
    AMDIM_TRY(dnn(c, cudnnCreateTensorDescriptor(&c->xd), "cudnnCreateTensorDescriptor"));
    AMDIM_TRY(dnn(c, cudnnCreateTensorDescriptor(&c->yd), "cudnnCreateTensorDescriptor"));
    AMDIM_TRY(dnn(c, cudnnCreateFilterDescriptor(&c->wd), "cudnnCreateFilterDescriptor"));
    AMDIM_TRY(dnn(c, cudnnCreateConvolutionDescriptor(&c->cd), "cudnnCreateConvolutionDescriptor"));
    e = cudaMalloc(&c->ws, ws_bytes);
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
    memset(c, 0, sizeof *c);
}

/* The four descriptors for sh: data (x, y, w) float or bfloat16 (c->bf16),
 * computed in float either way (cuDNN's FLOAT and BFLOAT16 configs); the
 * mode's math type. */
static int describe(amdim_conv *c, const amdim_conv_shape *sh, cudnnTensorDescriptor_t xd, cudnnTensorDescriptor_t yd,
                    cudnnFilterDescriptor_t wd, cudnnConvolutionDescriptor_t cd)
{
    int ho = (sh->h - sh->k) / sh->s + 1, wo = (sh->w - sh->k) / sh->s + 1;
    cudnnDataType_t dt = c->bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    AMDIM_TRY(dnn(c, cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NHWC, dt, sh->n, sh->cin, sh->h, sh->w),
        "cudnnSetTensor4dDescriptor"));
    AMDIM_TRY(dnn(c, cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NHWC, dt, sh->n, sh->cout, ho, wo),
        "cudnnSetTensor4dDescriptor"));
    AMDIM_TRY(dnn(c, cudnnSetFilter4dDescriptor(wd, dt, CUDNN_TENSOR_NHWC, sh->cout, sh->cin, sh->k, sh->k),
        "cudnnSetFilter4dDescriptor"));
    AMDIM_TRY(dnn(c, cudnnSetConvolution2dDescriptor(cd, 0, 0, sh->s, sh->s, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
        "cudnnSetConvolution2dDescriptor"));
    AMDIM_TRY(dnn(c, cudnnSetConvolutionMathType(cd, c->bf16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH),
        "cudnnSetConvolutionMathType"));
    return AMDIM_OK;
}

void amdim_conv_set_bf16(amdim_conv *c, int on) { c->bf16 = !!on; }

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

/* ---- choosing --------------------------------------------------------------------- */

/* One Find*Ex result (the three families' perf structs have these members). */
typedef struct {
    int algo;
    cudnnStatus_t status;
    float time;
    size_t memory;
    cudnnDeterminism_t determinism;
    cudnnMathType_t math;
} result;

#define RESULTS(perf, n, out)                                                                                     \
    for (int i_ = 0; i_ < (n); i_++)                                                                              \
    (out)[i_] = (result){(int)(perf)[i_].algo, (perf)[i_].status, (perf)[i_].time, (perf)[i_].memory,            \
                         (perf)[i_].determinism, (perf)[i_].mathType}

/* Whether result r may be chosen: ran, deterministic, fits, and keeps the
 * mode's math (fp32: FMA only - a TF32 tensor-op result would leave the
 * parity path; bf16: tensor-op or default, never a down-conversion). */
static int eligible(const amdim_conv *c, const result *r)
{
    if (r->status != CUDNN_STATUS_SUCCESS || r->determinism != CUDNN_DETERMINISTIC || r->memory > c->ws_size)
        return 0;
    return c->bf16 ? r->math == CUDNN_TENSOR_OP_MATH || r->math == CUDNN_DEFAULT_MATH : r->math == CUDNN_FMA_MATH;
}

/* The tie order: a before b when its algorithm is lower-numbered, or for
 * one algorithm (cuDNN may list it under two math types) when a's math is
 * the documented tensor-core one and b's the default. */
static int lower(const result *a, const result *b)
{
    return a->algo < b->algo || (a->algo == b->algo && a->math == CUDNN_TENSOR_OP_MATH && b->math != a->math);
}

/* The choice among n results (conv.h), or an error naming the call, the
 * shape and what each algorithm reported. */
static int choose(amdim_conv *c, int op, const amdim_conv_shape *sh, const result *r, int n, const char *call)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (eligible(c, &r[i]) && (best < 0 || r[i].time < r[best].time))
            best = i;
    char sh_text[160];
    shape_text(sh, c->bf16, sh_text, sizeof sh_text);
    if (best < 0) {
        char why[512];
        size_t len = 0;
        why[0] = 0;
        for (int i = 0; i < n && len < sizeof why; i++) {
            int w = snprintf(why + len, sizeof why - len, "%s%s: %s%s, %zu bytes", i ? "; " : "",
                             algo_name(op, r[i].algo),
                             r[i].status == CUDNN_STATUS_SUCCESS ? "ran" : cudnnGetErrorString(r[i].status),
                             r[i].determinism == CUDNN_DETERMINISTIC ? "" : " (non-deterministic)", r[i].memory);
            len += w > 0 ? (size_t)w : 0;
        }
        return amdim_fail(c->err, c->errn, AMDIM_E_UNSUPPORTED,
                          "%s(%s): no deterministic %s algorithm runs it within %zu MiB of workspace (%s)", call, sh_text,
                          c->bf16 ? "tensor-core" : "FMA", c->ws_size >> 20, n ? why : "none returned");
    }
    int pick = best;
    for (int i = 0; i < n; i++) /* ties: the lowest (algorithm, math type) */
        if (eligible(c, &r[i]) && r[i].time <= r[best].time * (1 + AMDIM_CONV_TIE) && lower(&r[i], &r[pick]))
            pick = i;
    choice e = {c->device, op, c->bf16, *sh, c->ws_size, r[pick].algo, (int)r[pick].math, r[pick].time, n};
    pthread_mutex_lock(&table_lock);
    int rc = store_choice(&e);
    pthread_mutex_unlock(&table_lock);
    return rc ? amdim_fail(c->err, c->errn, rc, "out of memory (cuDNN algorithm table)") : AMDIM_OK;
}

/* The call's failure, with the shape. */
static int fail_call(amdim_conv *c, cudnnStatus_t st, const char *call, const amdim_conv_shape *sh)
{
    char sh_text[160];
    shape_text(sh, c->bf16, sh_text, sizeof sh_text);
    return amdim_fail(c->err, c->errn,
                      st == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ? AMDIM_E_NOMEM : AMDIM_E_IO,
                      "%s(%s): %s", call, sh_text, cudnnGetErrorString(st));
}

int amdim_conv_prepare(amdim_conv *c, int op, const amdim_conv_shape *sh, const void *a, const void *b, void *out)
{
    int algo, math;
    if (amdim_conv_choice_get(c, op, sh, &algo, &math))
        return AMDIM_OK;
    int rc = describe(c, sh, c->xd, c->yd, c->wd, c->cd);
    if (rc)
        return rc;
    result r[8];
    int n = 0;
    cudnnStatus_t st;
    const char *call;
    if (op == AMDIM_CONV_FWD) {
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        call = "cudnnFindConvolutionForwardAlgorithmEx";
        st = cudnnFindConvolutionForwardAlgorithmEx(c->h, c->xd, a, c->wd, b, c->cd, c->yd, out,
                                                    CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf, c->ws, c->ws_size);
        if (st == CUDNN_STATUS_SUCCESS)
            RESULTS(perf, n, r);
    } else if (op == AMDIM_CONV_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        call = "cudnnFindConvolutionBackwardDataAlgorithmEx";
        st = cudnnFindConvolutionBackwardDataAlgorithmEx(c->h, c->wd, a, c->yd, b, c->cd, c->xd, out,
                                                         CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, perf, c->ws,
                                                         c->ws_size);
        if (st == CUDNN_STATUS_SUCCESS)
            RESULTS(perf, n, r);
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        call = "cudnnFindConvolutionBackwardFilterAlgorithmEx";
        st = cudnnFindConvolutionBackwardFilterAlgorithmEx(c->h, c->xd, a, c->yd, b, c->cd, c->wd, out,
                                                           CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, perf, c->ws,
                                                           c->ws_size);
        if (st == CUDNN_STATUS_SUCCESS)
            RESULTS(perf, n, r);
    }
    if (st != CUDNN_STATUS_SUCCESS)
        return fail_call(c, st, call, sh);
    return choose(c, op, sh, r, n, call);
}

/* ---- running ---------------------------------------------------------------------- */

static const float one = 1.0f, zero = 0.0f;

/* The descriptors of sh and the table's choice for op (measured on these
 * buffers first if it has none), with the choice's math type set. */
static int ready(amdim_conv *c, int op, const amdim_conv_shape *sh, const void *a, const void *b, void *out, int *algo)
{
    int math, rc = amdim_conv_prepare(c, op, sh, a, b, out);
    if (rc)
        return rc;
    if (!amdim_conv_choice_get(c, op, sh, algo, &math))
        return amdim_fail(c->err, c->errn, AMDIM_E_IO, "cuDNN algorithm table: no choice after measuring");
    if ((rc = describe(c, sh, c->xd, c->yd, c->wd, c->cd)))
        return rc;
    cudnnStatus_t st = cudnnSetConvolutionMathType(c->cd, (cudnnMathType_t)math);
    return st == CUDNN_STATUS_SUCCESS ? AMDIM_OK : fail_call(c, st, "cudnnSetConvolutionMathType", sh);
}

int amdim_conv_forward(amdim_conv *c, const amdim_conv_shape *sh, const void *x, const void *w, void *y)
{
    int algo, rc = ready(c, AMDIM_CONV_FWD, sh, x, w, y, &algo);
    if (rc)
        return rc;
    cudnnStatus_t st = cudnnConvolutionForward(c->h, &one, c->xd, x, c->wd, w, c->cd, (cudnnConvolutionFwdAlgo_t)algo,
                                               c->ws, c->ws_size, &zero, c->yd, y);
    return st == CUDNN_STATUS_SUCCESS ? AMDIM_OK : fail_call(c, st, "cudnnConvolutionForward", sh);
}

int amdim_conv_backward_data(amdim_conv *c, const amdim_conv_shape *sh, const void *w, const void *dy, void *dx)
{
    int algo, rc = ready(c, AMDIM_CONV_DATA, sh, w, dy, dx, &algo);
    if (rc)
        return rc;
    cudnnStatus_t st = cudnnConvolutionBackwardData(c->h, &one, c->wd, w, c->yd, dy, c->cd,
                                                    (cudnnConvolutionBwdDataAlgo_t)algo, c->ws, c->ws_size, &zero,
                                                    c->xd, dx);
    return st == CUDNN_STATUS_SUCCESS ? AMDIM_OK : fail_call(c, st, "cudnnConvolutionBackwardData", sh);
}

int amdim_conv_backward_filter(amdim_conv *c, const amdim_conv_shape *sh, const void *x, const void *dy, void *dw)
{
    int algo, rc = ready(c, AMDIM_CONV_FILTER, sh, x, dy, dw, &algo);
    if (rc)
        return rc;
    cudnnStatus_t st = cudnnConvolutionBackwardFilter(c->h, &one, c->xd, x, c->yd, dy, c->cd,
                                                      (cudnnConvolutionBwdFilterAlgo_t)algo, c->ws, c->ws_size,
                                                      &zero, c->wd, dw);
    return st == CUDNN_STATUS_SUCCESS ? AMDIM_OK : fail_call(c, st, "cudnnConvolutionBackwardFilter", sh);
}
