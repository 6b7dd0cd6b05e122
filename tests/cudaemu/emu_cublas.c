/* CPU emulation of the cuBLAS and cuBLASLt calls the CUDA backend makes
 * (the emulated-device tests only; never in a real build, which links
 * NVIDIA's libcublas and libcublasLt). "Device memory" is host memory; a
 * call checks its arguments when it is made (the statuses below) and its
 * GEMM runs on the handle's stream (cuBLASLt: the call's stream) when the
 * emulated device gets to it (emu_device.h), or is recorded into the
 * stream's graph during a capture. Operands must be device memory.
 *
 * The semantics are NVIDIA's documented ones, written independently of how
 * the backend calls them, so that a mistake in the backend's calls shows up
 * as an error status or as wrong numbers:
 *  - Column-major matrices: element (i, j) of a matrix with leading
 *    dimension ld is at index i + j ld. C (m x n) = alpha op(A) op(B) +
 *    beta C with op(A) m x k and op(B) k x n; op(X) = X for CUBLAS_OP_N and
 *    X^T for CUBLAS_OP_T (and CUBLAS_OP_C, the same for real data), so A is
 *    stored m x k (N) or k x m (T), B k x n (N) or n x k (T). Each leading
 *    dimension must be at least max(1, rows of the matrix as stored).
 *  - Data fp32 or bf16 (uint16_t bits) in the combinations cuBLAS lists for
 *    float compute: A, B, C all CUDA_R_32F; or A, B CUDA_R_16BF with C
 *    CUDA_R_16BF or CUDA_R_32F. alpha and beta are host floats, read when
 *    the call is made (CUBLAS_POINTER_MODE_HOST).
 *  - Products are summed in double; each result is rounded to float and,
 *    for bf16, on to bf16 (nearest even, as __float2bfloat16_rn). fp32
 *    data with CUBLAS_TF32_TENSOR_OP_MATH or a FAST_TF32 compute type
 *    rounds A and B to TF32 (10 mantissa bits) first, as tensor cores do,
 *    so that TF32 in the fp32 parity path shows as an error.
 *  - beta == 0 never reads C (it may hold NaN); alpha == 0 or k == 0 does
 *    not read A or B (as reference BLAS).
 * cuBLASLt: D = alpha op(A) op(B) + beta C with the shapes, types and
 * leading dimensions taken from the matrix layouts (column-major, batch 1)
 * and the transposes from the matmul descriptor; C may be D (same layout). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cublas_v2.h>

#include "elementwise_internal.h"
#include "emu_device.h"

struct cublasContext {
    cudaStream_t stream;
    cublasMath_t math;
    void *workspace;
    size_t workspace_bytes;
};

struct cublasLtContext {
    int unused;
};

/* The cuBLASLt descriptors are pointers to the headers' fixed-size opaque
 * structs; each is the first member of the emulation's own struct, so the
 * handle converts back to the struct (C11 6.7.2.1p15). */
/* A GEMM's epilogue (cuBLASLt's; cublasGemmEx has none): bias added per
 * row of D (D's type, or float), then ReLU; RELU_AUX also writes the
 * ReLU bit-mask - bit i + j * aux_ld set where D(i, j) > 0 - which DRELU
 * reads to zero D(i, j) where its bit is clear. The bit order inside a
 * byte (least significant first) is this emulation's: only cuBLASLt
 * itself reads its masks. */
typedef struct {
    uint32_t kind; /* cublasLtEpilogue_t */
    const void *bias;
    cudaDataType_t bias_type; /* -1: D's type */
    void *aux;
    int64_t aux_ld; /* in bits */
} epilogue;

typedef struct {
    cublasLtMatmulDescOpaque_t opaque;
    cublasComputeType_t compute;
    cudaDataType_t scale;
    cublasOperation_t transa, transb;
    epilogue ep;
} lt_desc;

typedef struct {
    cublasLtMatrixLayoutOpaque_t opaque;
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
} lt_layout;

typedef struct {
    cublasLtMatmulPreferenceOpaque_t opaque;
    uint64_t max_workspace;
    uint32_t min_align[4]; /* A, B, C, D: the alignment (bytes) the caller promises; 256 unless set */
} lt_pref;

static lt_desc *desc_of(cublasLtMatmulDesc_t d) { return (lt_desc *)(void *)d; }
static lt_layout *layout_of(cublasLtMatrixLayout_t l) { return (lt_layout *)(void *)l; }
static lt_pref *pref_of(cublasLtMatmulPreference_t p) { return (lt_pref *)(void *)p; }

/* One GEMM operand as stored: data, type, leading dimension, transposed or not. */
typedef struct {
    const void *p;
    cudaDataType_t type;
    int64_t ld;
    int trans;
    int tf32; /* fp32 data read as TF32 (tensor-core fp32 math) */
} operand;

/* f with its mantissa rounded to TF32's 10 bits (nearest, ties away from zero, as the tensor cores' conversion). */
static float tf32_round(float f)
{
    union {
        float f;
        uint32_t u;
    } v = {f};
    if ((v.u & 0x7f800000u) != 0x7f800000u)
        v.u = (v.u + 0x1000u) & ~0x1fffu;
    return v.f;
}

/* Element i of an fp32 or bf16 array. */
static float load(const void *p, cudaDataType_t type, size_t i)
{
    return type == CUDA_R_32F ? ((const float *)p)[i] : amdim_bf16_value(((const uint16_t *)p)[i]);
}

/* Whether op is a valid operation for real data (CUBLAS_OP_C is the transpose; CUBLAS_OP_CONJG is not
 * supported by cuBLAS). */
static int valid_op(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

/* Whether (A and B type, C type, compute type) is a combination cuBLAS documents for float compute with float
 * scale: CUBLAS_STATUS_SUCCESS or CUBLAS_STATUS_NOT_SUPPORTED. */
static cublasStatus_t check_types(cudaDataType_t ab, cudaDataType_t c, cublasComputeType_t compute)
{
    switch (compute) {
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
        if (ab == CUDA_R_32F && c == CUDA_R_32F)
            return CUBLAS_STATUS_SUCCESS;
        if (ab == CUDA_R_16BF && (c == CUDA_R_16BF || c == CUDA_R_32F))
            return CUBLAS_STATUS_SUCCESS;
        return CUBLAS_STATUS_NOT_SUPPORTED;
    case CUBLAS_COMPUTE_32F_FAST_16F:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
    case CUBLAS_COMPUTE_32F_FAST_TF32:
        return ab == CUDA_R_32F && c == CUDA_R_32F ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
    default:
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

/* op(X) of operand x converted to float and packed with the summation index contiguous: pk[a * depth + l] is
 * op(X)(a, l) when x is the left factor (op(A), outer = m) and op(X)(l, a) when it is the right one (op(B),
 * outer = n). NULL when out of memory. */
static float *pack(const operand *x, int64_t outer, int64_t depth, int left)
{
    size_t count = (size_t)outer * (size_t)depth;
    float *pk = malloc((count ? count : 1) * sizeof *pk);
    if (!pk)
        return NULL;
    for (int64_t a = 0; a < outer; a++)
        for (int64_t l = 0; l < depth; l++) {
            /* left: op(X)(a, l); right: op(X)(l, a); stored index of X(row, col) is row + col ld */
            int64_t row, col;
            if (left) {
                row = x->trans ? l : a;
                col = x->trans ? a : l;
            } else {
                row = x->trans ? a : l;
                col = x->trans ? l : a;
            }
            float v = load(x->p, x->type, (size_t)(row + col * x->ld));
            pk[a * depth + l] = x->tf32 ? tf32_round(v) : v;
        }
    return pk;
}

/* D(i, j) = alpha sum_l op(A)(i, l) op(B)(l, j) + beta C(i, j) for i < m, j < n, summed in double, rounded to
 * float and stored as D's type. C is read (element by element, just before D(i, j) is written) only when beta != 0, so
 * C may be D when both have the same layout. */
static int ep_bias(uint32_t e) { return (e & CUBLASLT_EPILOGUE_BIAS) && e != CUBLASLT_EPILOGUE_DRELU; }
static int ep_relu(uint32_t e) { return (e & CUBLASLT_EPILOGUE_RELU) != 0; }
static int ep_aux(uint32_t e) { return (e & 128u) != 0; } /* RELU_AUX, RELU_AUX_BIAS, DRELU */
static int ep_drelu(uint32_t e) { return e == CUBLASLT_EPILOGUE_DRELU; }

/* v (D(i, j) before its conversion) through the epilogue. */
static double apply_epilogue(const epilogue *ep, double v, int64_t i, int64_t j, cudaDataType_t dt)
{
    if (ep_bias(ep->kind))
        v += load(ep->bias, (int)ep->bias_type < 0 ? dt : ep->bias_type, (size_t)i);
    size_t bit = (size_t)(i + j * ep->aux_ld);
    uint8_t *mask = ep->aux;
    if (ep_drelu(ep->kind))
        return mask[bit >> 3] >> (bit & 7) & 1 ? v : 0.0;
    if (ep_relu(ep->kind)) {
        if (ep_aux(ep->kind)) {
            if (v > 0)
                mask[bit >> 3] |= (uint8_t)(1u << (bit & 7));
            else
                mask[bit >> 3] &= (uint8_t)~(1u << (bit & 7));
        }
        return v > 0 ? v : 0.0;
    }
    return v;
}

static cublasStatus_t gemm_now(int64_t m, int64_t n, int64_t k, float alpha, const operand *a, const operand *b,
                               float beta, const void *c, cudaDataType_t ct, int64_t ldc, void *d, cudaDataType_t dt,
                               int64_t ldd, const epilogue *ep)
{
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    int product = alpha != 0.0f && k > 0;
    float *ap = NULL, *bp = NULL;
    if (product) {
        ap = pack(a, m, k, 1);
        bp = pack(b, n, k, 0);
        if (!ap || !bp) {
            free(ap);
            free(bp);
            return CUBLAS_STATUS_ALLOC_FAILED;
        }
    }
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < m; i++) {
            double acc = 0;
            if (product) {
                const float *ar = ap + i * k, *bc = bp + j * k;
                for (int64_t l = 0; l < k; l++)
                    acc += (double)ar[l] * (double)bc[l];
            }
            double v = (double)alpha * acc;
            if (beta != 0.0f)
                v += (double)beta * load(c, ct, (size_t)(i + j * ldc));
            v = apply_epilogue(ep, v, i, j, dt);
            size_t di = (size_t)(i + j * ldd);
            if (dt == CUDA_R_32F)
                ((float *)d)[di] = (float)v;
            else
                ((uint16_t *)d)[di] = amdim_bf16_bits((float)v);
        }
    free(ap);
    free(bp);
    return CUBLAS_STATUS_SUCCESS;
}

/* A GEMM as recorded when the call is made. */
typedef struct {
    int64_t m, n, k, ldc, ldd;
    float alpha, beta;
    operand a, b;
    const void *c;
    void *d;
    cudaDataType_t ct, dt;
    epilogue ep;
} gemm_work;

static cudaError_t gemm_run(void *arg)
{
    gemm_work *g = arg;
    return gemm_now(g->m, g->n, g->k, g->alpha, &g->a, &g->b, g->beta, g->c, g->ct, g->ldc, g->d, g->dt, g->ldd,
                    &g->ep) == CUBLAS_STATUS_SUCCESS
               ? cudaSuccess
               : cudaErrorMemoryAllocation;
}

/* Bytes of type t an operand of rows x cols (as stored) with leading dimension ld spans. */
static size_t span(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld)
{
    if (rows <= 0 || cols <= 0)
        return 0;
    return (size_t)((cols - 1) * ld + rows) * (t == CUDA_R_32F ? 4 : 2);
}

/* Checks that the operands the GEMM reads and writes are device memory,
 * then enqueues it on stream s. */
static cublasStatus_t gemm(cudaStream_t s, const char *what, int64_t m, int64_t n, int64_t k, float alpha,
                           const operand *a, const operand *b, float beta, const void *c, cudaDataType_t ct,
                           int64_t ldc, void *d, cudaDataType_t dt, int64_t ldd, const epilogue *ep)
{
    if (m == 0 || n == 0)
        return CUBLAS_STATUS_SUCCESS;
    if (alpha != 0.0f && k > 0 &&
        (!emu_device_range(a->p, span(a->type, a->trans ? k : m, a->trans ? m : k, a->ld)) ||
         !emu_device_range(b->p, span(b->type, b->trans ? n : k, b->trans ? k : n, b->ld))))
        return CUBLAS_STATUS_INVALID_VALUE; /* not device memory (CUDA would fault) */
    if ((beta != 0.0f && !emu_device_range(c, span(ct, m, n, ldc))) || !emu_device_range(d, span(dt, m, n, ldd)))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (ep_bias(ep->kind) && !emu_device_range(ep->bias, (size_t)m * ((int)ep->bias_type == CUDA_R_32F ? 4 : 2)))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (ep_aux(ep->kind) && !emu_device_range(ep->aux, (size_t)(((n - 1) * ep->aux_ld + m + 7) / 8)))
        return CUBLAS_STATUS_INVALID_VALUE;
    gemm_work *g = malloc(sizeof *g);
    if (!g)
        return CUBLAS_STATUS_ALLOC_FAILED;
    *g = (gemm_work){m, n, k, ldc, ldd, alpha, beta, *a, *b, c, d, ct, dt, *ep};
    cudaError_t e = emu_enqueue(s, what, gemm_run, g, free);
    return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS
           : e == cudaErrorMemoryAllocation ? CUBLAS_STATUS_ALLOC_FAILED
                                            : CUBLAS_STATUS_EXECUTION_FAILED;
}

/* The argument checks cublas<t>gemm and cublasGemmEx document as CUBLAS_STATUS_INVALID_VALUE: negative sizes,
 * invalid operations, leading dimensions below the stored matrices' rows, missing scalars. */
static cublasStatus_t check_blas_args(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                                      const void *alpha, int lda, int ldb, const void *beta, int ldc)
{
    if (!valid_op(transa) || !valid_op(transb) || m < 0 || n < 0 || k < 0 || !alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    int a_rows = transa == CUBLAS_OP_N ? m : k, b_rows = transb == CUBLAS_OP_N ? k : n;
    if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- cuBLAS ---- */

/* Creates a handle: legacy default stream, CUBLAS_DEFAULT_MATH, the library's own workspace. */
cublasStatus_t cublasCreate(cublasHandle_t *handle)
{
    if (!handle)
        return CUBLAS_STATUS_INVALID_VALUE;
    *handle = calloc(1, sizeof **handle);
    if (!*handle)
        return CUBLAS_STATUS_ALLOC_FAILED;
    (*handle)->math = CUBLAS_DEFAULT_MATH;
    return CUBLAS_STATUS_SUCCESS;
}

/* Frees a handle (not the user's workspace). */
cublasStatus_t cublasDestroy(cublasHandle_t handle)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    free(handle);
    return CUBLAS_STATUS_SUCCESS;
}

/* The stream later calls run on; as documented, this also resets the workspace to the library's default. */
cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t streamId)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = streamId;
    handle->workspace = NULL;
    handle->workspace_bytes = 0;
    return CUBLAS_STATUS_SUCCESS;
}

/* Records the math mode: one of the documented modes, optionally with
 * CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION; it does not change the emulated arithmetic. */
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    unsigned base = (unsigned)mode & ~(unsigned)CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    if (base != CUBLAS_DEFAULT_MATH && base != CUBLAS_TENSOR_OP_MATH && base != CUBLAS_PEDANTIC_MATH &&
        base != CUBLAS_TF32_TENSOR_OP_MATH && base != CUBLAS_FP32_EMULATED_BF16X9_MATH &&
        base != CUBLAS_FP64_EMULATED_FIXEDPOINT_MATH)
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

/* Records the user's workspace (unused: the emulation needs none). The documented 256-byte alignment of the
 * pointer is not checked, as the emulated cudaMalloc need not align that far. */
cublasStatus_t cublasSetWorkspace(cublasHandle_t handle, void *workspace, size_t workspaceSizeInBytes)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!workspace && workspaceSizeInBytes)
        return CUBLAS_STATUS_INVALID_VALUE;
    handle->workspace = workspace;
    handle->workspace_bytes = workspaceSizeInBytes;
    return CUBLAS_STATUS_SUCCESS;
}

/* fp32 C = alpha op(A) op(B) + beta C (column-major). */
cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                           int k, const float *alpha, const float *A, int lda, const float *B, int ldb,
                           const float *beta, float *C, int ldc)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    cublasStatus_t st = check_blas_args(transa, transb, m, n, k, alpha, lda, ldb, beta, ldc);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    int tf32 = (handle->math & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) == CUBLAS_TF32_TENSOR_OP_MATH;
    operand a = {A, CUDA_R_32F, lda, transa != CUBLAS_OP_N, tf32}, b = {B, CUDA_R_32F, ldb, transb != CUBLAS_OP_N, tf32};
    static const epilogue none = {CUBLASLT_EPILOGUE_DEFAULT, NULL, (cudaDataType_t)-1, NULL, 0};
    return gemm(handle->stream, "cublasSgemm", m, n, k, *alpha, &a, &b, *beta, C, CUDA_R_32F, ldc, C, CUDA_R_32F, ldc,
                &none);
}

/* C = alpha op(A) op(B) + beta C with typed A, B, C (column-major); float compute and float alpha, beta. */
cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t algo)
{
    if (!handle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    cublasStatus_t st = check_blas_args(transa, transb, m, n, k, alpha, lda, ldb, beta, ldc);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    int a = (int)algo;
    if (!(a >= CUBLAS_GEMM_DEFAULT && a <= CUBLAS_GEMM_ALGO23) &&
        !(a >= CUBLAS_GEMM_DEFAULT_TENSOR_OP && a <= CUBLAS_GEMM_ALGO15_TENSOR_OP))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (Atype != Btype)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if ((st = check_types(Atype, Ctype, computeType)) != CUBLAS_STATUS_SUCCESS)
        return st;
    int tf32 = Atype == CUDA_R_32F &&
               (computeType == CUBLAS_COMPUTE_32F_FAST_TF32 ||
                ((handle->math & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) == CUBLAS_TF32_TENSOR_OP_MATH &&
                 computeType == CUBLAS_COMPUTE_32F));
    operand oa = {A, Atype, lda, transa != CUBLAS_OP_N, tf32}, ob = {B, Btype, ldb, transb != CUBLAS_OP_N, tf32};
    static const epilogue none = {CUBLASLT_EPILOGUE_DEFAULT, NULL, (cudaDataType_t)-1, NULL, 0};
    return gemm(handle->stream, "cublasGemmEx", m, n, k, *(const float *)alpha, &oa, &ob, *(const float *)beta, C,
                Ctype, ldc, C, Ctype, ldc, &none);
}

/* A description of a status code, led by its name. */
const char *cublasGetStatusString(cublasStatus_t status)
{
    switch (status) {
    case CUBLAS_STATUS_SUCCESS:
        return "CUBLAS_STATUS_SUCCESS: success";
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "CUBLAS_STATUS_NOT_INITIALIZED: the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "CUBLAS_STATUS_ALLOC_FAILED: the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "CUBLAS_STATUS_INVALID_VALUE: an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "CUBLAS_STATUS_ARCH_MISMATCH: an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR:
        return "CUBLAS_STATUS_MAPPING_ERROR: an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "CUBLAS_STATUS_EXECUTION_FAILED: the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR:
        return "CUBLAS_STATUS_INTERNAL_ERROR: an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "CUBLAS_STATUS_NOT_SUPPORTED: the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR:
        return "CUBLAS_STATUS_LICENSE_ERROR: error detected trying to check the license";
    }
    return "CUBLAS_STATUS_UNKNOWN: not a cublasStatus_t value";
}

/* ---- cuBLASLt ---- */

/* Creates a cuBLASLt handle. */
cublasStatus_t cublasLtCreate(cublasLtHandle_t *lightHandle)
{
    if (!lightHandle)
        return CUBLAS_STATUS_INVALID_VALUE;
    *lightHandle = calloc(1, sizeof **lightHandle);
    return *lightHandle ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}

/* Frees a cuBLASLt handle. */
cublasStatus_t cublasLtDestroy(cublasLtHandle_t lightHandle)
{
    if (!lightHandle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    free(lightHandle);
    return CUBLAS_STATUS_SUCCESS;
}

/* As cublasGetStatusString (cuBLASLt shares cuBLAS's status codes). */
const char *cublasLtGetStatusString(cublasStatus_t status) { return cublasGetStatusString(status); }

/* A matmul descriptor with the compute and scale (alpha, beta) types; no transposes. */
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *matmulDesc, cublasComputeType_t computeType,
                                        cudaDataType_t scaleType)
{
    if (!matmulDesc)
        return CUBLAS_STATUS_INVALID_VALUE;
    lt_desc *d = calloc(1, sizeof *d);
    if (!d)
        return CUBLAS_STATUS_ALLOC_FAILED;
    d->compute = computeType;
    d->scale = scaleType;
    d->transa = d->transb = CUBLAS_OP_N;
    d->ep.kind = CUBLASLT_EPILOGUE_DEFAULT;
    d->ep.bias_type = (cudaDataType_t)-1;
    *matmulDesc = &d->opaque;
    return CUBLAS_STATUS_SUCCESS;
}

/* Frees a matmul descriptor (NULL is allowed). */
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc)
{
    free(matmulDesc ? desc_of(matmulDesc) : NULL);
    return CUBLAS_STATUS_SUCCESS;
}

/* The int32_t value of an attribute buffer, after the documented size check. */
static int get_i32(const void *buf, size_t size, int32_t *v)
{
    if (size != sizeof *v)
        return 0;
    memcpy(v, buf, sizeof *v);
    return 1;
}

/* Sets one matmul descriptor attribute. TRANSA, TRANSB, COMPUTE_TYPE, SCALE_TYPE, EPILOGUE (DEFAULT, RELU,
 * RELU_AUX, BIAS, RELU_BIAS, RELU_AUX_BIAS, DRELU), BIAS_POINTER, BIAS_DATA_TYPE, EPILOGUE_AUX_POINTER and
 * EPILOGUE_AUX_LD are used; POINTER_MODE host or device, TRANSC N, FILL_MODE full, SM_COUNT_TARGET and
 * FAST_ACCUM change nothing here and are accepted; other values of those are CUBLAS_STATUS_NOT_SUPPORTED, other
 * attributes CUBLAS_STATUS_INVALID_VALUE. A buffer of the wrong size is CUBLAS_STATUS_INVALID_VALUE. */
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t sizeInBytes)
{
    if (!matmulDesc || !buf)
        return CUBLAS_STATUS_INVALID_VALUE;
    lt_desc *d = desc_of(matmulDesc);
    int32_t v;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB:
        if (!get_i32(buf, sizeInBytes, &v) || !valid_op((cublasOperation_t)v))
            return CUBLAS_STATUS_INVALID_VALUE;
        if (attr == CUBLASLT_MATMUL_DESC_TRANSA)
            d->transa = (cublasOperation_t)v;
        else
            d->transb = (cublasOperation_t)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE:
        if (!get_i32(buf, sizeInBytes, &v))
            return CUBLAS_STATUS_INVALID_VALUE;
        d->compute = (cublasComputeType_t)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE:
        if (!get_i32(buf, sizeInBytes, &v))
            return CUBLAS_STATUS_INVALID_VALUE;
        d->scale = (cudaDataType_t)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_POINTER_MODE:
        if (!get_i32(buf, sizeInBytes, &v))
            return CUBLAS_STATUS_INVALID_VALUE;
        return v == CUBLASLT_POINTER_MODE_HOST || v == CUBLASLT_POINTER_MODE_DEVICE ? CUBLAS_STATUS_SUCCESS
                                                                                    : CUBLAS_STATUS_NOT_SUPPORTED;
    case CUBLASLT_MATMUL_DESC_TRANSC:
        if (!get_i32(buf, sizeInBytes, &v))
            return CUBLAS_STATUS_INVALID_VALUE;
        return v == CUBLAS_OP_N ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
    case CUBLASLT_MATMUL_DESC_FILL_MODE:
        if (!get_i32(buf, sizeInBytes, &v))
            return CUBLAS_STATUS_INVALID_VALUE;
        return v == CUBLAS_FILL_MODE_FULL ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: {
        uint32_t e;
        if (sizeInBytes != sizeof e)
            return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&e, buf, sizeof e);
        if (e != CUBLASLT_EPILOGUE_DEFAULT && e != CUBLASLT_EPILOGUE_RELU && e != CUBLASLT_EPILOGUE_RELU_AUX &&
            e != CUBLASLT_EPILOGUE_BIAS && e != CUBLASLT_EPILOGUE_RELU_BIAS && e != CUBLASLT_EPILOGUE_RELU_AUX_BIAS &&
            e != CUBLASLT_EPILOGUE_DRELU)
            return CUBLAS_STATUS_NOT_SUPPORTED;
        d->ep.kind = e;
        return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER: {
        void *ptr;
        if (sizeInBytes != sizeof ptr)
            return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&ptr, buf, sizeof ptr);
        if (attr == CUBLASLT_MATMUL_DESC_BIAS_POINTER)
            d->ep.bias = ptr;
        else
            d->ep.aux = ptr;
        return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD: {
        int64_t ld;
        if (sizeInBytes != sizeof ld)
            return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&ld, buf, sizeof ld);
        d->ep.aux_ld = ld;
        return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
        if (!get_i32(buf, sizeInBytes, &v))
            return CUBLAS_STATUS_INVALID_VALUE;
        d->ep.bias_type = (cudaDataType_t)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET:
        return get_i32(buf, sizeInBytes, &v) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM:
        return sizeInBytes == sizeof(int8_t) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
    default:
        return CUBLAS_STATUS_INVALID_VALUE;
    }
}

/* A column-major rows x cols matrix of the type with leading dimension ld (checked when it is used). */
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *matLayout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld)
{
    if (!matLayout)
        return CUBLAS_STATUS_INVALID_VALUE;
    lt_layout *l = calloc(1, sizeof *l);
    if (!l)
        return CUBLAS_STATUS_ALLOC_FAILED;
    l->type = type;
    l->rows = rows;
    l->cols = cols;
    l->ld = ld;
    *matLayout = &l->opaque;
    return CUBLAS_STATUS_SUCCESS;
}

/* Frees a matrix layout (NULL is allowed). */
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout)
{
    free(matLayout ? layout_of(matLayout) : NULL);
    return CUBLAS_STATUS_SUCCESS;
}

/* A heuristic search preference (no workspace allowed by default). */
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref)
{
    if (!pref)
        return CUBLAS_STATUS_INVALID_VALUE;
    lt_pref *p = calloc(1, sizeof *p);
    if (!p)
        return CUBLAS_STATUS_ALLOC_FAILED;
    for (int i = 0; i < 4; i++)
        p->min_align[i] = 256;
    *pref = &p->opaque;
    return CUBLAS_STATUS_SUCCESS;
}

/* Frees a preference (NULL is allowed). */
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref)
{
    free(pref ? pref_of(pref) : NULL);
    return CUBLAS_STATUS_SUCCESS;
}

/* Sets one preference attribute, with the documented buffer sizes (uint64_t workspace bytes and implementation
 * mask, uint32_t search mode, reduction mask and alignments, float waves count); none restricts the emulation's
 * single algorithm, which needs no workspace. Unknown attributes are CUBLAS_STATUS_INVALID_VALUE. */
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t sizeInBytes)
{
    if (!pref || !buf)
        return CUBLAS_STATUS_INVALID_VALUE;
    size_t want;
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
    case CUBLASLT_MATMUL_PREF_IMPL_MASK:
        want = sizeof(uint64_t);
        break;
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE:
    case CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
        want = sizeof(uint32_t);
        break;
    case CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT:
        want = sizeof(float);
        break;
    default:
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (sizeInBytes != want)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES)
        memcpy(&pref_of(pref)->max_workspace, buf, sizeof(uint64_t));
    int ai = attr == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES   ? 0
             : attr == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES ? 1
             : attr == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES ? 2
             : attr == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES ? 3
                                                                  : -1;
    if (ai >= 0) {
        uint32_t v;
        memcpy(&v, buf, sizeof v);
        if (v == 0 || (v & (v - 1)))
            return CUBLAS_STATUS_INVALID_VALUE;
        pref_of(pref)->min_align[ai] = v;
    }
    return CUBLAS_STATUS_SUCCESS;
}

/* The problem a matmul descriptor and four layouts describe, checked: op(A) m x k, op(B) k x n, C and D m x n,
 * every ld >= max(1, rows) (CUBLAS_STATUS_INVALID_VALUE otherwise); A, B, C/D types and compute type a
 * documented float-compute combination with float scale, D's type C's (CUBLAS_STATUS_NOT_SUPPORTED otherwise). */
static cublasStatus_t lt_problem(const lt_desc *d, const lt_layout *a, const lt_layout *b, const lt_layout *c,
                                 const lt_layout *dd, int64_t *m, int64_t *n, int64_t *k)
{
    if (!d || !a || !b || !c || !dd)
        return CUBLAS_STATUS_INVALID_VALUE;
    const lt_layout *all[4] = {a, b, c, dd};
    for (int i = 0; i < 4; i++) {
        const lt_layout *l = all[i];
        if (l->rows > INT64_MAX / 2 || l->cols > INT64_MAX / 2)
            return CUBLAS_STATUS_INVALID_VALUE;
        if (l->ld < 1 || l->ld < (int64_t)l->rows)
            return CUBLAS_STATUS_INVALID_VALUE;
    }
    int ta = d->transa != CUBLAS_OP_N, tb = d->transb != CUBLAS_OP_N;
    *m = (int64_t)dd->rows;
    *n = (int64_t)dd->cols;
    *k = (int64_t)(ta ? a->rows : a->cols);
    int64_t am = (int64_t)(ta ? a->cols : a->rows);
    int64_t bk = (int64_t)(tb ? b->cols : b->rows), bn = (int64_t)(tb ? b->rows : b->cols);
    if (am != *m || bk != *k || bn != *n || c->rows != dd->rows || c->cols != dd->cols)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (d->scale != CUDA_R_32F || a->type != b->type || c->type != dd->type)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    /* the epilogue's inputs: a bias of D's type or float; a bit-mask whose leading
     * dimension (bits) is divisible by 128 and no less than D's rows (cublasLt.h) */
    const epilogue *ep = &d->ep;
    if (ep_bias(ep->kind) && (int)ep->bias_type >= 0 && ep->bias_type != dd->type && ep->bias_type != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (ep_aux(ep->kind) && (ep->aux_ld % 128 != 0 || ep->aux_ld < (int64_t)dd->rows))
        return CUBLAS_STATUS_INVALID_VALUE;
    return check_types(a->type, c->type, d->compute);
}

/* One algorithm for a valid problem: state CUBLAS_STATUS_SUCCESS, no workspace; the algo holds the
 * alignments the preference promised (cublasLtMatmul refuses pointers aligned less with
 * CUBLAS_STATUS_INVALID_VALUE, as an algorithm that relies on them would fault). With AMDIM_EMU_LT_HEURISTIC=none in the environment it finds none
 * (CUBLAS_STATUS_NOT_SUPPORTED, as cuBLASLt for an epilogue or shape it has no kernel for): the callers'
 * unfused paths run. */
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
                                              cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                                              cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                                              cublasLtMatmulPreference_t preference, int requestedAlgoCount,
                                              cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                              int *returnAlgoCount)
{
    if (!lightHandle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!operationDesc || !Adesc || !Bdesc || !Cdesc || !Ddesc || !preference || requestedAlgoCount <= 0 ||
        !heuristicResultsArray || !returnAlgoCount)
        return CUBLAS_STATUS_INVALID_VALUE;
    int64_t m, n, k;
    cublasStatus_t st = lt_problem(desc_of(operationDesc), layout_of(Adesc), layout_of(Bdesc), layout_of(Cdesc),
                                   layout_of(Ddesc), &m, &n, &k);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    const char *h = getenv("AMDIM_EMU_LT_HEURISTIC");
    if (h && strcmp(h, "none") == 0) {
        *returnAlgoCount = 0;
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    memset(&heuristicResultsArray[0], 0, sizeof heuristicResultsArray[0]);
    _Static_assert(sizeof heuristicResultsArray[0].algo.data >= 4 * sizeof(uint32_t), "room for the alignments");
    memcpy(heuristicResultsArray[0].algo.data, pref_of(preference)->min_align, 4 * sizeof(uint32_t));
    heuristicResultsArray[0].workspaceSize = 0;
    heuristicResultsArray[0].state = CUBLAS_STATUS_SUCCESS;
    heuristicResultsArray[0].wavesCount = 1.0f;
    *returnAlgoCount = 1;
    return CUBLAS_STATUS_SUCCESS;
}

/* D = alpha op(A) op(B) + beta C per the layouts and the descriptor; algo may be NULL. In-place (C == D) needs
 * C's layout to be D's. */
cublasStatus_t cublasLtMatmul(cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t Adesc, const void *B, cublasLtMatrixLayout_t Bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t Cdesc, void *D,
                              cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t *algo, void *workspace,
                              size_t workspaceSizeInBytes, cudaStream_t stream)
{
    (void)algo, (void)workspace, (void)workspaceSizeInBytes;
    if (!lightHandle)
        return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!computeDesc || !alpha || !beta || !Adesc || !Bdesc || !Cdesc || !Ddesc)
        return CUBLAS_STATUS_INVALID_VALUE;
    const lt_desc *d = desc_of(computeDesc);
    const lt_layout *la = layout_of(Adesc), *lb = layout_of(Bdesc), *lc = layout_of(Cdesc), *lo = layout_of(Ddesc);
    int64_t m, n, k;
    cublasStatus_t st = lt_problem(d, la, lb, lc, lo, &m, &n, &k);
    if (st != CUBLAS_STATUS_SUCCESS)
        return st;
    float fa = *(const float *)alpha, fb = *(const float *)beta;
    if ((m && n && !D) || (m && n && k && fa != 0.0f && (!A || !B)) || (m && n && fb != 0.0f && !C))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (C == D && C && (lc->ld != lo->ld || lc->type != lo->type))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (algo) { /* the pointers as aligned as the heuristic was told */
        uint32_t al[4];
        const void *ptr[4] = {A, B, C, D};
        memcpy(al, algo->data, sizeof al);
        for (int i = 0; i < 4; i++)
            if (ptr[i] && al[i] && (uintptr_t)ptr[i] % al[i])
                return CUBLAS_STATUS_INVALID_VALUE; /* loud: the caller's bug, not a missing kernel */
    }
    int tf32 = la->type == CUDA_R_32F && d->compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    operand oa = {A, la->type, la->ld, d->transa != CUBLAS_OP_N, tf32},
            ob = {B, lb->type, lb->ld, d->transb != CUBLAS_OP_N, tf32};
    return gemm(stream, "cublasLtMatmul", m, n, k, fa, &oa, &ob, fb, C, lc->type, lc->ld, D, lo->type, lo->ld, &d->ep);
}
