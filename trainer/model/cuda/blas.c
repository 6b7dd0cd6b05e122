/* The CUDA backend's GEMMs (cuda_internal.h): row-major products as
 * cuBLAS / cuBLASLt column-major ones, and the linear layers over them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* ---- GEMMs ------------------------------------------------------------------ */

/* A GEMM into the launch list: 2 M N K FLOPs; A and B read, C written
 * (and read when beta is not 0), in the mode's types; `extra` bytes of
 * the epilogue's bias or mask. */
static void note_gemm(const amdim_model *m, const char *op, int M, int N, int K, float beta, int c_f32, double extra)
{
    double es = cuda_of(m)->bf16 ? 2 : 4, ces = c_f32 || !cuda_of(m)->bf16 ? 4 : 2;
    double bytes = ((double)M * K + (double)K * N) * es + (double)M * N * ces * (beta != 0.0f ? 2 : 1) + extra;
    amdim_cuda_note(m, op, bytes, 2.0 * M * N * K);
}

/* Row-major C (M, N) = alpha op(A) op(B) + beta C, as cblas_sgemm(CblasRowMajor,
 * ...): the column-major product C^T = op(B)^T op(A)^T. fp32 mode: float
 * operands, pedantic fp32. bf16 mode: A and B bfloat16 (activations, the
 * weights' bf16 copies), C bfloat16 (an activation) or float (c_f32:
 * parameter gradients, logits, scores), fp32 accumulation on the tensor
 * cores (CUBLAS_COMPUTE_32F). */
int amdim_cuda_gemm(amdim_model *m, int ta, int tb, int M, int N, int K, float alpha, const void *a, int lda,
                    const void *b, int ldb, float beta, void *c, int ldc, int c_f32)
{
    amdim_cuda_gemm_layout l;
    if (amdim_cuda_gemm_layout_make(&l, ta, tb, M, N, K, lda, ldb, ldc))
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "amdim_cuda_gemm(%d x %d x %d, ld %d %d %d): bad shape", M, N, K, lda,
                           ldb, ldc);
    cublasOperation_t o1 = l.trans1 ? CUBLAS_OP_T : CUBLAS_OP_N, o2 = l.trans2 ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t st;
    if (cuda_of(m)->bf16)
        st = cublasGemmEx(cuda_of(m)->blas, o1, o2, l.m, l.n, l.k, &alpha, b, CUDA_R_16BF, l.ld1, a, CUDA_R_16BF, l.ld2,
                          &beta, c, c_f32 ? CUDA_R_32F : CUDA_R_16BF, l.ld_c, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    else
        st = cublasSgemm(cuda_of(m)->blas, o1, o2, l.m, l.n, l.k, &alpha, b, l.ld1, a, l.ld2, &beta, c, l.ld_c);
    if (st != CUBLAS_STATUS_SUCCESS)
        return AMDIM_MFAIL(m, st == CUBLAS_STATUS_ALLOC_FAILED ? AMDIM_E_NOMEM : AMDIM_E_IO, "%s(%d x %d x %d): %s",
                           cuda_of(m)->bf16 ? "cublasGemmEx" : "cublasSgemm", M, N, K, cublasGetStatusString(st));
    note_gemm(m, "GEMM", M, N, K, beta, c_f32, 0);
    return AMDIM_OK;
}

/* ---- cuBLASLt: the NCE score GEMMs and the fused linear layers ---- */

static int lt_fail(amdim_model *m, cublasStatus_t st, const char *call, const amdim_cuda_gemm_layout *l)
{
    return AMDIM_MFAIL(m, st == CUBLAS_STATUS_ALLOC_FAILED ? AMDIM_E_NOMEM : AMDIM_E_IO, "%s(%d x %d x %d): %s", call,
                       l->n, l->m, l->k, cublasLtGetStatusString(st));
}

/* 0, or lt_fail for a failed cuBLASLt call. */
static int lt_check(amdim_model *m, cublasStatus_t st, const char *call, const amdim_cuda_gemm_layout *l)
{
    return st == CUBLAS_STATUS_SUCCESS ? AMDIM_OK : lt_fail(m, st, call, l);
}

void amdim_cuda_lt_plan_free(amdim_cuda_lt_plan *p)
{
    if (p->c)
        cublasLtMatrixLayoutDestroy(p->c);
    if (p->b)
        cublasLtMatrixLayoutDestroy(p->b);
    if (p->a)
        cublasLtMatrixLayoutDestroy(p->a);
    if (p->op)
        cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

/* A pointer's alignment as the heuristic's preferences take it: its
 * lowest set bit, at most 256 bytes (NULL: 256). */
static uint32_t align_of(const void *p)
{
    uintptr_t u = (uintptr_t)p;
    return u == 0 || (u & 255) == 0 ? 256u : (uint32_t)(u & (~u + 1));
}

static cublasLtEpilogue_t lt_epilogue(int kind)
{
    switch (kind) {
    case AMDIM_CUDA_EP_RELU_AUX: return CUBLASLT_EPILOGUE_RELU_AUX;
    case AMDIM_CUDA_EP_DRELU: return CUBLASLT_EPILOGUE_DRELU;
    case AMDIM_CUDA_EP_BIAS: return CUBLASLT_EPILOGUE_BIAS;
    default: return CUBLASLT_EPILOGUE_DEFAULT;
    }
}

/* The epilogue's attributes on the plan's descriptor: the bias (float) or
 * the bit-mask (its leading dimension in bits) and their pointers, which
 * change per call. */
static int lt_set_epilogue(amdim_model *m, amdim_cuda_lt_plan *p, const amdim_cuda_epilogue *ep)
{
    const amdim_cuda_gemm_layout *l = &p->l;
    if (ep->kind == AMDIM_CUDA_EP_BIAS)
        return lt_check(
            m, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ep->bias, sizeof ep->bias),
            "cublasLtMatmulDescSetAttribute (BIAS_POINTER)", l);
    if (ep->kind == AMDIM_CUDA_EP_RELU_AUX || ep->kind == AMDIM_CUDA_EP_DRELU)
        return lt_check(m,
                        cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &ep->mask,
                                                       sizeof ep->mask),
                        "cublasLtMatmulDescSetAttribute (EPILOGUE_AUX_POINTER)", l);
    return AMDIM_OK;
}

/* The descriptor, layouts and preference of key k with epilogue ep. */
static int lt_describe(amdim_model *m, amdim_cuda_lt_plan *p, const amdim_cuda_lt_key *k, const amdim_cuda_epilogue *ep,
                       cublasLtMatmulPreference_t *pref)
{
    const amdim_cuda_gemm_layout *l = &k->l;
    cudaDataType_t ab = p->bf16 ? CUDA_R_16BF : CUDA_R_32F, ct = k->c_f32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasOperation_t o1 = l->trans1 ? CUBLAS_OP_T : CUBLAS_OP_N, o2 = l->trans2 ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasLtEpilogue_t e = lt_epilogue(ep->kind);
    int32_t bias_type = CUDA_R_32F;
    int64_t mask_ld = (int64_t)amdim_cuda_relu_mask_ld(l->m);
    size_t ws = BLAS_WORKSPACE_BYTES;
    static const cublasLtMatmulPreferenceAttributes_t aligns[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    int rc;
    if ((rc = lt_check(m, cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate",
                       l)) ||
        (rc = lt_check(m, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &o1, sizeof o1),
                       "cublasLtMatmulDescSetAttribute (TRANSA)", l)) ||
        (rc = lt_check(m, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &o2, sizeof o2),
                       "cublasLtMatmulDescSetAttribute (TRANSB)", l)) ||
        (rc = lt_check(m, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e),
                       "cublasLtMatmulDescSetAttribute (EPILOGUE)", l)))
        return rc;
    if (ep->kind == AMDIM_CUDA_EP_BIAS &&
        (rc = lt_check(
             m,
             cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof bias_type),
             "cublasLtMatmulDescSetAttribute (BIAS_DATA_TYPE)", l)))
        return rc;
    if ((ep->kind == AMDIM_CUDA_EP_RELU_AUX || ep->kind == AMDIM_CUDA_EP_DRELU) &&
        (rc = lt_check(
             m, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &mask_ld, sizeof mask_ld),
             "cublasLtMatmulDescSetAttribute (EPILOGUE_AUX_LD)", l)))
        return rc;
    if ((rc = lt_set_epilogue(m, p, ep)) ||
        (rc = lt_check(m, cublasLtMatrixLayoutCreate(&p->a, ab, (uint64_t)l->rows1, (uint64_t)l->cols1, l->ld1),
                       "cublasLtMatrixLayoutCreate (A)", l)) ||
        (rc = lt_check(m, cublasLtMatrixLayoutCreate(&p->b, ab, (uint64_t)l->rows2, (uint64_t)l->cols2, l->ld2),
                       "cublasLtMatrixLayoutCreate (B)", l)) ||
        (rc = lt_check(m, cublasLtMatrixLayoutCreate(&p->c, ct, (uint64_t)l->rows_c, (uint64_t)l->cols_c, l->ld_c),
                       "cublasLtMatrixLayoutCreate (C)", l)) ||
        (rc = lt_check(m, cublasLtMatmulPreferenceCreate(pref), "cublasLtMatmulPreferenceCreate", l)) ||
        (rc = lt_check(
             m, cublasLtMatmulPreferenceSetAttribute(*pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
             "cublasLtMatmulPreferenceSetAttribute (MAX_WORKSPACE_BYTES)", l)))
        return rc;
    for (int i = 0; i < 4; i++)
        if ((rc = lt_check(m, cublasLtMatmulPreferenceSetAttribute(*pref, aligns[i], &k->align[i], sizeof k->align[i]),
                           "cublasLtMatmulPreferenceSetAttribute (MIN_ALIGNMENT)", l)))
            return rc;
    return AMDIM_OK;
}

/* The plan of key k in the current precision mode, made on first use:
 * descriptors (the types amdim_cuda_gemm() uses; fp32 compute) and the
 * heuristic's first algorithm for the shared workspace, if it returns one. */
static int lt_plan_get(amdim_model *m, const amdim_cuda_lt_key *k, const amdim_cuda_epilogue *ep,
                       amdim_cuda_lt_plan **out)
{
    amdim_cuda_state *c = m->bs;
    for (int i = 0; i < c->n_lt; i++)
        if (c->lt_plans[i].bf16 == c->bf16 && !memcmp(&c->lt_plans[i].key, k, sizeof *k)) {
            *out = &c->lt_plans[i];
            return AMDIM_OK;
        }
    if (c->n_lt == c->cap_lt) {
        int cap = c->cap_lt ? 2 * c->cap_lt : 16;
        amdim_cuda_lt_plan *t = realloc(c->lt_plans, (size_t)cap * sizeof *t);
        if (!t)
            return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory (cuBLASLt plans)");
        c->lt_plans = t;
        c->cap_lt = cap;
    }
    amdim_cuda_lt_plan *p = &c->lt_plans[c->n_lt];
    memset(p, 0, sizeof *p);
    p->key = *k;
    p->l = k->l;
    p->bf16 = c->bf16;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int n = 0, rc = lt_describe(m, p, k, ep, &pref);
    if (!rc) {
        cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->c, p->c, pref, 1, &res, &n);
        if (st == CUBLAS_STATUS_SUCCESS && n > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
            p->algo = res.algo;
            p->have_algo = 1;
        } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) { /* NOT_SUPPORTED: none */
            rc = lt_fail(m, st, "cublasLtMatmulAlgoGetHeuristic", &k->l);
        }
    }
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (rc) {
        amdim_cuda_lt_plan_free(p);
        return rc;
    }
    *out = p;
    c->n_lt++;
    return AMDIM_OK;
}

static const char *ep_name(int kind)
{
    return kind == AMDIM_CUDA_EP_RELU_AUX ? "GEMM (+ ReLU, mask)"
           : kind == AMDIM_CUDA_EP_DRELU  ? "GEMM (+ ReLU gradient)"
           : kind == AMDIM_CUDA_EP_BIAS   ? "GEMM (+ bias)"
                                          : "GEMM (+ shortcut)";
}

/* The plan of a row-major GEMM (amdim_cuda_lt_gemm's arguments) with
 * epilogue ep, made on first use. */
static int lt_plan_for(amdim_model *m, int ta, int tb, int M, int N, int K, const void *a, int lda, const void *b,
                       int ldb, const void *c, const void *d, int ldc, int c_f32, const amdim_cuda_epilogue *ep,
                       amdim_cuda_lt_plan **p)
{
    amdim_cuda_lt_key k;
    memset(&k, 0, sizeof k); /* compared with memcmp: no stray padding */
    if (amdim_cuda_gemm_layout_make(&k.l, ta, tb, M, N, K, lda, ldb, ldc))
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "amdim_cuda_lt_gemm(%d x %d x %d, ld %d %d %d): bad shape", M, N, K, lda,
                           ldb, ldc);
    k.c_f32 = cuda_of(m)->bf16 ? c_f32 : C_F32;
    k.epilogue = ep->kind;
    k.align[0] = align_of(b); /* the first column-major operand is the row-major b (amdim_cuda_gemm_layout) */
    k.align[1] = align_of(a);
    k.align[2] = align_of(c);
    k.align[3] = align_of(d);
    k.align[4] = ep->kind == AMDIM_CUDA_EP_BIAS ? align_of(ep->bias) : ep->kind ? align_of(ep->mask) : 0;
    return lt_plan_get(m, &k, ep, p);
}

int amdim_cuda_lt_gemm(amdim_model *m, int ta, int tb, int M, int N, int K, float alpha, const void *a, int lda,
                       const void *b, int ldb, float beta, const void *c, void *d, int ldc, int c_f32,
                       const amdim_cuda_epilogue *ep)
{
    amdim_cuda_state *cs = m->bs;
    amdim_cuda_lt_plan *p = NULL;
    AMDIM_ASSERT(beta != 0.0f || c == d);
    if (!cs->fuse && (ep->kind != AMDIM_CUDA_EP_NONE || c != d))
        return AMDIM_E_UNSUPPORTED;
    AMDIM_TRY(lt_plan_for(m, ta, tb, M, N, K, a, lda, b, ldb, c, d, ldc, c_f32, ep, &p));
    if (!p->have_algo)
        return AMDIM_E_UNSUPPORTED;
    AMDIM_TRY(lt_set_epilogue(m, p, ep));
    cublasStatus_t st = cublasLtMatmul(cs->lt, p->op, &alpha, b, p->a, a, p->b, &beta, c, p->c, d, p->c, &p->algo,
                                       cs->blas_ws, BLAS_WORKSPACE_BYTES, cs->stream);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED) { /* refused at the call after all: unfused from now on (a backward */
        p->have_algo = 0;                    /* asks amdim_cuda_lt_supported, so it skips this mask too) */
        return AMDIM_E_UNSUPPORTED;
    }
    if (st != CUBLAS_STATUS_SUCCESS)
        return lt_fail(m, st, "cublasLtMatmul", &p->l);
    double extra = ep->kind == AMDIM_CUDA_EP_BIAS ? 4.0 * N
                   : ep->kind                     ? (double)amdim_cuda_relu_mask_bytes((size_t)M, N)
                                                  : 0;
    note_gemm(m, ep->kind || c != d ? ep_name(ep->kind) : "GEMM (NCE scores)", M, N, K, beta, c_f32, extra);
    return AMDIM_OK;
}

int amdim_cuda_lt_supported(amdim_model *m, int ta, int tb, int M, int N, int K, const void *a, int lda, const void *b,
                            int ldb, const void *c, const void *d, int ldc, int c_f32, const amdim_cuda_epilogue *ep,
                            int *supported)
{
    amdim_cuda_lt_plan *p = NULL;
    if (!cuda_of(m)->fuse && (ep->kind != AMDIM_CUDA_EP_NONE || c != d)) {
        *supported = 0;
        return AMDIM_OK;
    }
    AMDIM_TRY(lt_plan_for(m, ta, tb, M, N, K, a, lda, b, ldb, c, d, ldc, c_f32, ep, &p));
    *supported = p->have_algo;
    return AMDIM_OK;
}

/* amdim_cuda_gemm() for the NCE score matrices on cuBLASLt with the shape's planned
 * algorithm (amdim_cuda_gemm() itself where the heuristic had none). Every operand
 * starts an activation buffer: 256-byte aligned, the heuristic's default. */
int amdim_cuda_nce_gemm(amdim_model *m, int ta, int tb, int M, int N, int K, float alpha, const void *a, int lda,
                        const void *b, int ldb, float beta, void *c, int ldc, int c_f32)
{
    AMDIM_ASSERT((uintptr_t)a % 256 == 0 && (uintptr_t)b % 256 == 0 && (uintptr_t)c % 256 == 0);
    static const amdim_cuda_epilogue none = {AMDIM_CUDA_EP_NONE, NULL, NULL};
    int rc = amdim_cuda_lt_gemm(m, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, c, ldc, c_f32, &none);
    if (rc != AMDIM_E_UNSUPPORTED)
        return rc;
    return amdim_cuda_gemm(m, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc, c_f32);
}

/* y (n, out) = x (n, in) W^T [+ bias] (+ beta y before): a linear layer
 * or 1x1 convolution; x activations, w a GEMM weight (WG), y activations
 * or (y_f32: the logits) float. */
int amdim_cuda_linear_forward(amdim_model *m, const void *x, size_t n, int in, const void *w, const float *bias,
                              int out, float beta, void *y, int y_f32)
{
    AMDIM_TRY(amdim_cuda_gemm(m, 0, 1, (int)n, out, in, 1.0f, x, in, w, in, beta, y, out, y_f32));
    if (!bias)
        return AMDIM_OK;
    amdim_cuda_ctx f = kctx_f32(m);
    return amdim_bias_add_cuda(y_f32 ? &f : kctx(m), y, bias, n, out);
}

/* dw (out, in, float) += dy^T x; dbias += column sums of dy; dx (n, in) =
 * dy weight (+ beta dx), when dx. x, dy, dx activations; w a GEMM weight (WG). */
int amdim_cuda_linear_backward(amdim_model *m, const void *x, size_t n, int in, const void *w, int out, const void *dy,
                               void *dx, float beta, float *dw, float *dbias)
{
    AMDIM_TRY(amdim_cuda_gemm(m, 1, 0, out, in, (int)n, 1.0f, dy, out, x, in, 1.0f, dw, in, C_F32));
    if (dbias)
        AMDIM_TRY(amdim_channel_sum_add_cuda(kctx(m), dy, n, out, dbias, bn_scratch(m)));
    if (dx)
        AMDIM_TRY(amdim_cuda_gemm(m, 0, 0, (int)n, in, out, 1.0f, dy, out, w, in, beta, dx, in, C_ACT));
    return AMDIM_OK;
}
