/* The CUDA backend's GEMMs (cuda_internal.h): row-major products as
 * cuBLAS / cuBLASLt column-major ones, and the linear layers over them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* ---- GEMMs ------------------------------------------------------------------ */

/* A GEMM into the launch list: 2 M N K FLOPs; A and B read, C written
 * (and read when beta is not 0), in the mode's types. */
static void note_gemm(const amdim_model *m, const char *op, int M, int N, int K, float beta, int c_f32)
{
    double es = cuda_of(m)->bf16 ? 2 : 4, ces = c_f32 || !cuda_of(m)->bf16 ? 4 : 2;
    double bytes = ((double)M * K + (double)K * N) * es + (double)M * N * ces * (beta != 0.0f ? 2 : 1);
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
    note_gemm(m, "GEMM", M, N, K, beta, c_f32);
    return AMDIM_OK;
}

/* ---- cuBLASLt (the NCE score GEMMs) ---- */

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

/* The plan of shape l (and C's type) in the current precision mode, made
 * on first use: descriptors (the types amdim_cuda_gemm() uses; fp32 compute) and the
 * heuristic's first algorithm for the shared workspace, if it returns one. */
static int lt_plan_get(amdim_model *m, const amdim_cuda_gemm_layout *l, int c_f32, amdim_cuda_lt_plan **out)
{
    amdim_cuda_state *c = m->bs;
    c_f32 = c->bf16 ? c_f32 : C_F32;
    for (int i = 0; i < c->n_lt; i++)
        if (c->lt_plans[i].bf16 == c->bf16 && c->lt_plans[i].c_f32 == c_f32 &&
            !memcmp(&c->lt_plans[i].l, l, sizeof *l)) {
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
    p->l = *l;
    p->bf16 = c->bf16;
    p->c_f32 = c_f32;
    cudaDataType_t ab = c->bf16 ? CUDA_R_16BF : CUDA_R_32F, ct = c_f32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasLtMatmulPreference_t pref = NULL;
    cublasOperation_t o1 = l->trans1 ? CUBLAS_OP_T : CUBLAS_OP_N, o2 = l->trans2 ? CUBLAS_OP_T : CUBLAS_OP_N;
    size_t ws = BLAS_WORKSPACE_BYTES;
    cublasLtMatmulHeuristicResult_t res;
    cublasStatus_t st;
    int n = 0, rc = AMDIM_OK;
    if ((rc = lt_check(m, cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate",
                       l)) ||
        (rc = lt_check(m, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &o1, sizeof o1),
                       "cublasLtMatmulDescSetAttribute (TRANSA)", l)) ||
        (rc = lt_check(m, cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &o2, sizeof o2),
                       "cublasLtMatmulDescSetAttribute (TRANSB)", l)) ||
        (rc = lt_check(m, cublasLtMatrixLayoutCreate(&p->a, ab, (uint64_t)l->rows1, (uint64_t)l->cols1, l->ld1),
                       "cublasLtMatrixLayoutCreate (A)", l)) ||
        (rc = lt_check(m, cublasLtMatrixLayoutCreate(&p->b, ab, (uint64_t)l->rows2, (uint64_t)l->cols2, l->ld2),
                       "cublasLtMatrixLayoutCreate (B)", l)) ||
        (rc = lt_check(m, cublasLtMatrixLayoutCreate(&p->c, ct, (uint64_t)l->rows_c, (uint64_t)l->cols_c, l->ld_c),
                       "cublasLtMatrixLayoutCreate (C)", l)) ||
        (rc = lt_check(m, cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate", l)) ||
        (rc = lt_check(
             m, cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
             "cublasLtMatmulPreferenceSetAttribute (MAX_WORKSPACE_BYTES)", l)))
        goto done;
    st = cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->c, p->c, pref, 1, &res, &n);
    if (st == CUBLAS_STATUS_SUCCESS && n > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
        p->algo = res.algo;
        p->have_algo = 1;
    } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) { /* NOT_SUPPORTED: none */
        rc = lt_fail(m, st, "cublasLtMatmulAlgoGetHeuristic", l);
    }
done:
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

/* amdim_cuda_gemm() for the NCE score matrices on cuBLASLt with the shape's planned
 * algorithm (amdim_cuda_gemm() itself where the heuristic had none). Every operand
 * starts an activation buffer: 256-byte aligned, the heuristic's default. */
int amdim_cuda_nce_gemm(amdim_model *m, int ta, int tb, int M, int N, int K, float alpha, const void *a, int lda,
                        const void *b, int ldb, float beta, void *c, int ldc, int c_f32)
{
    amdim_cuda_state *cs = m->bs;
    amdim_cuda_gemm_layout l;
    amdim_cuda_lt_plan *p = NULL;
    if (amdim_cuda_gemm_layout_make(&l, ta, tb, M, N, K, lda, ldb, ldc))
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "amdim_cuda_nce_gemm(%d x %d x %d, ld %d %d %d): bad shape", M, N, K,
                           lda, ldb, ldc);
    AMDIM_ASSERT((uintptr_t)a % 256 == 0 && (uintptr_t)b % 256 == 0 && (uintptr_t)c % 256 == 0);
    AMDIM_TRY(lt_plan_get(m, &l, c_f32, &p));
    if (!p->have_algo)
        return amdim_cuda_gemm(m, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc, c_f32);
    /* the first column-major operand is the row-major b (amdim_cuda_gemm_layout) */
    cublasStatus_t st = cublasLtMatmul(cs->lt, p->op, &alpha, b, p->a, a, p->b, &beta, c, p->c, c, p->c, &p->algo,
                                       cs->blas_ws, BLAS_WORKSPACE_BYTES, cs->stream);
    if (st != CUBLAS_STATUS_SUCCESS)
        return lt_fail(m, st, "cublasLtMatmul", &l);
    note_gemm(m, "GEMM (NCE scores)", M, N, K, beta, c_f32);
    return AMDIM_OK;
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
