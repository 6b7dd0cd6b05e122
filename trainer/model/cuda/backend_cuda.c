/* The CUDA backend: the same step-level functions as the CPU backend
 * (trainer/model/cpu/backend_cpu.c, the reference), on one GPU.
 *
 * Activations are NHWC, (B, H, W, C) = rows of channels, stored as float32
 * (the fp32 mode: FMA convolutions, pedantic fp32 GEMMs, the CPU parity
 * path) or bfloat16 (the bf16 mode: bf16 activations and activation
 * gradients, bf16 weight copies for the GEMMs and cuDNN, tensor cores with
 * fp32 accumulation; fp32 master weights, Adam moments, parameter
 * gradients, BatchNorm statistics, NCE scores and their softmax, logits
 * and losses - the arithmetic of every kernel is float / double either
 * way, see kernels.h). A 1x1
 * convolution or a linear layer is one row-major GEMM (cuBLAS, written as
 * the CPU's cblas calls through gemm(); the NCE score matrix and its two
 * backward GEMMs go through nce_gemm(): cuBLASLt with the algorithm its
 * heuristic gives once per shape and precision, gemm() where it gives
 * none; both map row-major to column-major with amdim_cuda_gemm_layout,
 * plan.h), the k x k / strided convolutions run on cuDNN (conv.h, OHWI
 * filter copies), and every other op is a kernel of kernels.h whose
 * per-element body is the CPU op's. The device
 * keeps the arch blocks in the host mirror's layout (plan.h), so pull and
 * push copy four blocks. A compute stream, and a copy stream that stages
 * the next batch's uint8 views into one of two device input slots while
 * a step computes (stage_input; events order the two). Every backend
 * function ends with a compute-stream synchronisation that turns any
 * asynchronous failure into a status.
 *
 * CUDA graphs (graph_run): the device work of forward_backward once its
 * inputs are on the device (normalised views, labels, draws), and that of
 * adam, are captured from the compute stream on their second run with a
 * given activation arena (batch size) and precision, and replayed after.
 * The inputs, the input slots' events and the statistics' copy back stay
 * outside the graphs (eager, before and after the replay), so one graph
 * serves both input slots and unstaged inputs; the per-step scalars the
 * kernels need (1 / labelled rows, Adam's learning rate and bias
 * corrections) are read from a small device buffer written before each
 * step. cuBLAS and cuBLASLt share a fixed workspace (cublasSetWorkspace), cuDNN its one
 * workspace and algorithms found in the eager warm-up. A failed capture
 * warns once and leaves the model eager; AMDIM_CUDA_GRAPHS=0 turns graphs
 * off, and profiling (which synchronises per stage) runs eagerly.
 *
 * Data parallelism (build with NCCL; amdim_model_set_comm): one NCCL
 * communicator per run, made at the first step (rank 0's id broadcast
 * over m->comm). Each step all-gathers r5 and r7 of both views into
 * global target buffers (NHWC, batch outermost: rank blocks contiguous),
 * scores this rank's sources against them (amdim_nce_rows_cuda's first / B),
 * reduce-scatters the target gradients into dr5 / dr7, sums each backward
 * unit's gradients (a layer's, a head's, the probes') on a stream of its
 * own as soon as the unit's backward is done, overlapping the backward of
 * the units before it, and at the end averages the BatchNorm running
 * statistics; the
 * labelled count and the loss terms go over m->comm on the host. Such
 * steps run eagerly (no graph). With sync_bn the BatchNorm kernels sum
 * their per-channel sums over the ranks (amdim_cuda_ctx.bn_sync, an NCCL
 * all-reduce of doubles on the compute stream) between their reductions
 * and their use. See "data parallelism" below.
 * Every CUDA / cuBLAS / cuDNN / NCCL status is checked and named in m->err. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#ifdef AMDIM_HAVE_NCCL
#include <nccl.h>
#endif

#include "backend_internal.h"
#include "backend_cuda_internal.h"
#include "conv_internal.h"
#include "kernels_internal.h"
#include "plan_internal.h"

_Static_assert((int)AMDIM_CUDA_NCE == (int)AMDIM_OBJECTIVE_NCE && (int)AMDIM_CUDA_JSD == (int)AMDIM_OBJECTIVE_JSD &&
                   (int)AMDIM_CUDA_DV == (int)AMDIM_OBJECTIVE_DV,
               "kernels.h objective codes");
_Static_assert((int)AMDIM_CUDA_E_DEVICE == (int)AMDIM_E_IO, "kernels.h device status");

#define CUDNN_WORKSPACE_BYTES ((size_t)256 << 20)
#define BLAS_WORKSPACE_BYTES ((size_t)32 << 20) /* cuBLAS's own (cublasSetWorkspace): none allocated in a capture */

/* The per-step scalars kernels read from device memory, written before
 * each step (outside any graph) so that a replayed graph uses this step's. */
typedef struct {
    double inv_valid;        /* the probes' loss: 1 / labelled rows (0: none) */
    amdim_adam_hparams adam; /* this update's learning rate and bias corrections */
} step_scalars;

/* A GEMM shape planned on cuBLASLt (nce_gemm): its descriptors and the
 * heuristic's algorithm, or none (have_algo 0: gemm() computes it). */
typedef struct {
    amdim_cuda_gemm_layout l;
    int bf16, c_f32; /* the precision mode; C float in the bf16 mode */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    int have_algo;
} lt_plan;

typedef struct {
    cudaStream_t stream; /* compute */
    cudaStream_t copy;   /* input staging (host -> device) */
    /* input slots: uint8 (2, B, S, S, 3) each (view 1 then view 2); copied
     * on `copy` after consumed[s] (the compute stream's last read), read on
     * `stream` after copied[s] */
    uint8_t *input[2];
    size_t input_cap[2]; /* bytes */
    cudaEvent_t copied[2], consumed[2];
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    lt_plan *lt_plans; /* one per shape and precision mode, made on first use */
    int n_lt, cap_lt;
    int bf16; /* precision mode: bfloat16 activations and GEMM / convolution operands (fp32 accumulation) */
    size_t es; /* bytes per activation: 4, or 2 in the bf16 mode */
    amdim_conv conv;
    amdim_cuda_ctx ctx;
    amdim_cuda_param_plan pp;
    float *params; /* parameter arena (pp.total floats) */
    amdim_cuda_plan plan;
    void *act;     /* activation arena (plan.total bytes) for plan.batch and es */
    double *stats; /* host copy of the plan's stats */
    int32_t *labels2;
    step_scalars *scalars; /* device */
    void *blas_ws;         /* cuBLAS and cuBLASLt workspace (one stream uses it), BLAS_WORKSPACE_BYTES */
    /* CUDA graphs (graph_run): the device work of forward_backward after
     * its inputs (valid for plan.batch and the arena act), and of adam for
     * probes_only 0 / 1. warm: that work ran eagerly since the buffers or
     * the precision last changed. graphs_failed: a capture failed, the
     * warning was printed, everything runs eagerly from then on. */
    cudaGraphExec_t fb_graph, adam_graph[2];
    int fb_warm, adam_warm[2], graphs_failed;
    unsigned long graph_captures, graph_launches;
    /* cuDNN algorithms (conv.h): the arena's convolutions have their
     * choices for batch prepared_batch (and their backward ones when
     * prepared_bwd); a group's ranks took rank 0's for synced_batch */
    int prepared_batch, prepared_bwd, synced_batch, synced_bwd;
    const amdim_comm *synced_group;
#ifdef AMDIM_HAVE_NCCL
    /* data parallelism: the run's NCCL communicator over m->comm's ranks,
     * made at the first step with a group (nccl_open); NULL until then */
    ncclComm_t nccl;
    const amdim_comm *nccl_group; /* the group it was made for */
    /* gradient buckets (plan_buckets): per backward unit - encoder layer
     * l, head nlayers + h, the probes nlayers + 2 - its range [lo, hi) of
     * the grads block, all-reduced on nstream once the unit's last
     * backward is done (nev orders the two streams); buckets 0: one
     * all-reduce of the whole block after the backward instead */
    cudaStream_t nstream;
    cudaEvent_t nev;
    size_t *bucket_lo, *bucket_hi;
    int buckets;
#endif
} cuda_state;

#define MFAIL(st, ...) AMDIM_MFAIL(m, (st), __VA_ARGS__)

static int cuda_fail(amdim_model *m, cudaError_t e, const char *call)
{
    return MFAIL(e == cudaErrorMemoryAllocation ? AMDIM_E_NOMEM : AMDIM_E_IO, "%s(): %s (%s)", call,
                 cudaGetErrorString(e), cudaGetErrorName(e));
}

#define CU(call, name)                          \
    do {                                        \
        cudaError_t e_ = (call);                \
        if (e_ != cudaSuccess)                  \
            return cuda_fail(m, e_, name);      \
    } while (0)

#define TRY(call)                               \
    do {                                        \
        int rc_ = (call);                       \
        if (rc_)                                \
            return rc_;                         \
    } while (0)

static cuda_state *CS(const amdim_model *m) { return m->bs; }
static float *W(const amdim_model *m, int i) { return CS(m)->params + CS(m)->pp.weights + m->arch.tensors[i].offset; }
static float *G(const amdim_model *m, int i)
{
    AMDIM_ASSERT(m->arch.tensors[i].has_grad);
    return CS(m)->params + CS(m)->pp.grads + m->arch.tensors[i].goffset;
}
/* A GEMM's weight operand: the float master, or its bf16 copy in the bf16
 * mode (at the master's index: tensor offsets are multiples of
 * AMDIM_TENSOR_ALIGN = 16, so every copy starts 32-byte aligned). */
static const void *WG(const amdim_model *m, int i)
{
    const cuda_state *c = CS(m);
    if (!c->bf16)
        return W(m, i);
    return (const uint16_t *)(const void *)(c->params + c->pp.wbf) + m->arch.tensors[i].offset;
}
static void *WK(const amdim_model *m, int i) /* the OHWI copy of a cuDNN filter, in the activation type */
{
    AMDIM_ASSERT(CS(m)->pp.ohwi[i] != AMDIM_CUDA_NONE);
    return CS(m)->params + CS(m)->pp.ohwi[i];
}
/* The activation buffer at byte offset off (plan.h), and elems
 * activations into it; AF: a float buffer. */
static void *A(const amdim_model *m, size_t off)
{
    AMDIM_ASSERT(off != AMDIM_CUDA_NONE);
    return (char *)CS(m)->act + off;
}
static void *AE(const amdim_model *m, size_t off, size_t elems) { return (char *)A(m, off) + elems * CS(m)->es; }
static float *AF(const amdim_model *m, size_t off) { return A(m, off); }
static size_t ES(const amdim_model *m) { return CS(m)->es; }
static const amdim_cuda_ctx *X(const amdim_model *m) { return &CS(m)->ctx; }
/* The context with float activations: for a kernel over a float buffer
 * (the logits and their gradient) in either mode. */
static amdim_cuda_ctx X32(const amdim_model *m)
{
    amdim_cuda_ctx f = CS(m)->ctx;
    f.bf16 = 0;
    return f;
}

static amdim_cuda_bn bn_view(const amdim_model *m, amdim_bn_ref r)
{
    amdim_cuda_bn b = {W(m, r.t), W(m, r.t + 1), W(m, r.t + 2), W(m, r.t + 3), W(m, r.t + 4), G(m, r.t),
                       G(m, r.t + 1)};
    return b;
}

static double *BNS(const amdim_model *m) { return (double *)(void *)A(m, CS(m)->plan.bn_scratch); }

/* Waits for the stream: asynchronous failures become a status here. */
static int finish(amdim_model *m)
{
    CU(cudaStreamSynchronize(CS(m)->stream), "cudaStreamSynchronize");
    return AMDIM_OK;
}

/* A range in the activation arena lies inside one planned buffer (the
 * plan's extents): every copy and clear is checked, so a size in the wrong
 * unit (floats for bf16 activations) cannot spill into the next buffer
 * unnoticed. Pointers elsewhere (host, the parameter arena) pass. */
static void check_range(const amdim_model *m, const void *p, size_t bytes)
{
    const cuda_state *c = CS(m);
    const char *a = c->act, *q = p;
    if (!a || q < a || q >= a + c->plan.total)
        return;
    size_t off = (size_t)(q - a);
    for (size_t i = 0; i < c->plan.nextents; i++)
        if (off >= c->plan.extents[i][0] && off + bytes <= c->plan.extents[i][0] + c->plan.extents[i][1])
            return;
    AMDIM_ASSERT(!"a copy or clear crosses the end of a planned activation buffer");
}

static int copy(amdim_model *m, void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    check_range(m, dst, bytes);
    check_range(m, src, bytes);
    CU(cudaMemcpyAsync(dst, src, bytes, kind, CS(m)->stream), "cudaMemcpyAsync");
    if (kind == cudaMemcpyDeviceToHost)
        return finish(m);
    return AMDIM_OK;
}

static int zero(amdim_model *m, void *p, size_t bytes)
{
    check_range(m, p, bytes);
    CU(cudaMemsetAsync(p, 0, bytes, CS(m)->stream), "cudaMemsetAsync");
    return AMDIM_OK;
}

static double now_if(amdim_model *m)
{
    if (!m->profile)
        return 0;
    cudaStreamSynchronize(CS(m)->stream); /* an error resurfaces at the function's finish() */
    return amdim_now();
}
static void prof(amdim_model *m, int stage, int backward, double t0, int B)
{
    if (m->profile) {
        cudaStreamSynchronize(CS(m)->stream);
        amdim_model_prof_add(m, stage, backward, amdim_now() - t0, B);
    }
}

/* ---- GEMMs ------------------------------------------------------------------ */

/* Row-major C (M, N) = alpha op(A) op(B) + beta C, as cblas_sgemm(CblasRowMajor,
 * ...): the column-major product C^T = op(B)^T op(A)^T. fp32 mode: float
 * operands, pedantic fp32. bf16 mode: A and B bfloat16 (activations, the
 * weights' bf16 copies), C bfloat16 (an activation) or float (c_f32:
 * parameter gradients, logits, scores), fp32 accumulation on the tensor
 * cores (CUBLAS_COMPUTE_32F). */
enum { C_ACT = 0, C_F32 = 1 };
static int gemm(amdim_model *m, int ta, int tb, int M, int N, int K, float alpha, const void *a, int lda,
                const void *b, int ldb, float beta, void *c, int ldc, int c_f32)
{
    amdim_cuda_gemm_layout l;
    if (amdim_cuda_gemm_layout_make(&l, ta, tb, M, N, K, lda, ldb, ldc))
        return MFAIL(AMDIM_E_INVALID, "gemm(%d x %d x %d, ld %d %d %d): bad shape", M, N, K, lda, ldb, ldc);
    cublasOperation_t o1 = l.trans1 ? CUBLAS_OP_T : CUBLAS_OP_N, o2 = l.trans2 ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t st;
    if (CS(m)->bf16)
        st = cublasGemmEx(CS(m)->blas, o1, o2, l.m, l.n, l.k, &alpha, b, CUDA_R_16BF, l.ld1, a, CUDA_R_16BF, l.ld2,
                          &beta, c, c_f32 ? CUDA_R_32F : CUDA_R_16BF, l.ld_c, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    else
        st = cublasSgemm(CS(m)->blas, o1, o2, l.m, l.n, l.k, &alpha, b, l.ld1, a, l.ld2, &beta, c, l.ld_c);
    if (st != CUBLAS_STATUS_SUCCESS)
        return MFAIL(st == CUBLAS_STATUS_ALLOC_FAILED ? AMDIM_E_NOMEM : AMDIM_E_IO, "%s(%d x %d x %d): %s",
                     CS(m)->bf16 ? "cublasGemmEx" : "cublasSgemm", M, N, K, cublasGetStatusString(st));
    return AMDIM_OK;
}

/* ---- cuBLASLt (the NCE score GEMMs) ---- */

static int lt_fail(amdim_model *m, cublasStatus_t st, const char *call, const amdim_cuda_gemm_layout *l)
{
    return MFAIL(st == CUBLAS_STATUS_ALLOC_FAILED ? AMDIM_E_NOMEM : AMDIM_E_IO, "%s(%d x %d x %d): %s", call, l->n,
                 l->m, l->k, cublasLtGetStatusString(st));
}

#define LT(call, name)                                  \
    do {                                                \
        cublasStatus_t st_ = (call);                    \
        if (st_ != CUBLAS_STATUS_SUCCESS) {             \
            rc = lt_fail(m, st_, name, &p->l);          \
            goto done;                                  \
        }                                               \
    } while (0)

static void lt_plan_free(lt_plan *p)
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
 * on first use: descriptors (the types gemm() uses; fp32 compute) and the
 * heuristic's first algorithm for the shared workspace, if it returns one. */
static int lt_plan_get(amdim_model *m, const amdim_cuda_gemm_layout *l, int c_f32, lt_plan **out)
{
    cuda_state *c = m->bs;
    c_f32 = c->bf16 ? c_f32 : C_F32;
    for (int i = 0; i < c->n_lt; i++)
        if (c->lt_plans[i].bf16 == c->bf16 && c->lt_plans[i].c_f32 == c_f32 && !memcmp(&c->lt_plans[i].l, l, sizeof *l)) {
            *out = &c->lt_plans[i];
            return AMDIM_OK;
        }
    if (c->n_lt == c->cap_lt) {
        int cap = c->cap_lt ? 2 * c->cap_lt : 16;
        lt_plan *t = realloc(c->lt_plans, (size_t)cap * sizeof *t);
        if (!t)
            return MFAIL(AMDIM_E_NOMEM, "out of memory (cuBLASLt plans)");
        c->lt_plans = t;
        c->cap_lt = cap;
    }
    lt_plan *p = &c->lt_plans[c->n_lt];
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
    LT(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &o1, sizeof o1),
       "cublasLtMatmulDescSetAttribute (TRANSA)");
    LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &o2, sizeof o2),
       "cublasLtMatmulDescSetAttribute (TRANSB)");
    LT(cublasLtMatrixLayoutCreate(&p->a, ab, (uint64_t)l->rows1, (uint64_t)l->cols1, l->ld1),
       "cublasLtMatrixLayoutCreate (A)");
    LT(cublasLtMatrixLayoutCreate(&p->b, ab, (uint64_t)l->rows2, (uint64_t)l->cols2, l->ld2),
       "cublasLtMatrixLayoutCreate (B)");
    LT(cublasLtMatrixLayoutCreate(&p->c, ct, (uint64_t)l->rows_c, (uint64_t)l->cols_c, l->ld_c),
       "cublasLtMatrixLayoutCreate (C)");
    LT(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
       "cublasLtMatmulPreferenceSetAttribute (MAX_WORKSPACE_BYTES)");
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
        lt_plan_free(p);
        return rc;
    }
    *out = p;
    c->n_lt++;
    return AMDIM_OK;
}
#undef LT

/* gemm() for the NCE score matrices on cuBLASLt with the shape's planned
 * algorithm (gemm() itself where the heuristic had none). Every operand
 * starts an activation buffer: 256-byte aligned, the heuristic's default. */
static int nce_gemm(amdim_model *m, int ta, int tb, int M, int N, int K, float alpha, const void *a, int lda,
                    const void *b, int ldb, float beta, void *c, int ldc, int c_f32)
{
    cuda_state *cs = m->bs;
    amdim_cuda_gemm_layout l;
    lt_plan *p = NULL;
    if (amdim_cuda_gemm_layout_make(&l, ta, tb, M, N, K, lda, ldb, ldc))
        return MFAIL(AMDIM_E_INVALID, "nce_gemm(%d x %d x %d, ld %d %d %d): bad shape", M, N, K, lda, ldb, ldc);
    AMDIM_ASSERT((uintptr_t)a % 256 == 0 && (uintptr_t)b % 256 == 0 && (uintptr_t)c % 256 == 0);
    TRY(lt_plan_get(m, &l, c_f32, &p));
    if (!p->have_algo)
        return gemm(m, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc, c_f32);
    /* the first column-major operand is the row-major b (amdim_cuda_gemm_layout) */
    cublasStatus_t st = cublasLtMatmul(cs->lt, p->op, &alpha, b, p->a, a, p->b, &beta, c, p->c, c, p->c, &p->algo,
                                       cs->blas_ws, BLAS_WORKSPACE_BYTES, cs->stream);
    if (st != CUBLAS_STATUS_SUCCESS)
        return lt_fail(m, st, "cublasLtMatmul", &l);
    return AMDIM_OK;
}

/* y (n, out) = x (n, in) W^T [+ bias] (+ beta y before): a linear layer
 * or 1x1 convolution; x activations, w a GEMM weight (WG), y activations
 * or (y_f32: the logits) float. */
static int linear_forward(amdim_model *m, const void *x, size_t n, int in, const void *w, const float *bias, int out,
                          float beta, void *y, int y_f32)
{
    TRY(gemm(m, 0, 1, (int)n, out, in, 1.0f, x, in, w, in, beta, y, out, y_f32));
    if (!bias)
        return AMDIM_OK;
    amdim_cuda_ctx f = X32(m);
    return amdim_bias_add_cuda(y_f32 ? &f : X(m), y, bias, n, out);
}

/* dw (out, in, float) += dy^T x; dbias += column sums of dy; dx (n, in) =
 * dy W (+ beta dx), when dx. x, dy, dx activations; w a GEMM weight (WG). */
static int linear_backward(amdim_model *m, const void *x, size_t n, int in, const void *w, int out, const void *dy,
                           void *dx, float beta, float *dw, float *dbias)
{
    TRY(gemm(m, 1, 0, out, in, (int)n, 1.0f, dy, out, x, in, 1.0f, dw, in, C_F32));
    if (dbias)
        TRY(amdim_channel_sum_add_cuda(X(m), dy, n, out, dbias, BNS(m)));
    if (dx)
        TRY(gemm(m, 0, 0, (int)n, in, out, 1.0f, dy, out, w, in, beta, dx, in, C_ACT));
    return AMDIM_OK;
}

/* Training or eval BatchNorm of x (n, C) into y, or a copy when off. */
static int bn_forward(amdim_model *m, amdim_bn_ref r, const void *x, size_t n, int C, int train, void *y,
                      float *mean, float *istd)
{
    if (!r.on)
        return copy(m, y, x, n * C * ES(m), cudaMemcpyDeviceToDevice);
    amdim_cuda_bn p = bn_view(m, r);
    if (train)
        return amdim_batchnorm_forward_train_cuda(X(m), x, n, C, &p, y, mean, istd, BNS(m));
    return amdim_batchnorm_forward_eval_cuda(X(m), x, n, C, &p, y);
}

/* ---- CUDA graphs ------------------------------------------------------------- */

/* Graphs are used unless AMDIM_CUDA_GRAPHS=0 (read at every step, so it
 * can be switched either way), a capture failed, or the model profiles
 * (each stage then synchronises, which a capture cannot hold). */
static int graphs_on(const amdim_model *m)
{
    const char *e = getenv("AMDIM_CUDA_GRAPHS");
    return !CS(m)->graphs_failed && !m->profile && !(e && strcmp(e, "0") == 0);
}

static void drop_graph(cudaGraphExec_t *g, int *warm)
{
    if (*g)
        cudaGraphExecDestroy(*g);
    *g = NULL;
    *warm = 0;
}

/* Captures body(m, arg) on the compute stream into *exec. Nothing runs:
 * on failure (status with the call in m->err) the stream is out of
 * capture and body may be run eagerly. */
static int capture(amdim_model *m, cudaGraphExec_t *exec, int (*body)(amdim_model *, int), int arg)
{
    cuda_state *c = m->bs;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    int rc = e == cudaSuccess ? body(m, arg) : cuda_fail(m, e, "cudaStreamBeginCapture");
    if (e == cudaSuccess) {
        e = cudaStreamEndCapture(c->stream, &g); /* always, even after a failure: leaves capture mode */
        if (rc == AMDIM_OK && e != cudaSuccess)
            rc = cuda_fail(m, e, "cudaStreamEndCapture");
    }
    if (rc == AMDIM_OK && (e = cudaGraphInstantiate(exec, g, 0)) != cudaSuccess) {
        *exec = NULL;
        rc = cuda_fail(m, e, "cudaGraphInstantiate");
    }
    if (g)
        cudaGraphDestroy(g);
    if (rc)
        (void)cudaGetLastError(); /* the capture's error must not surface in a later call */
    else
        c->graph_captures++;
    return rc;
}

/* Runs body(m, arg), device work on the compute stream with no host
 * synchronisation and no host-varying launch arguments (per-step values
 * are read from device buffers written before): eagerly the first time
 * after *warm was cleared (the warm-up: cuDNN's algorithm searches, lazy
 * kernel loading), captured into *exec the next time, then replayed. A
 * failed capture prints one warning and leaves graphs off for the model;
 * the work then runs eagerly (never an error of its own). */
static int graph_run(amdim_model *m, cudaGraphExec_t *exec, int *warm, int (*body)(amdim_model *, int), int arg)
{
    cuda_state *c = m->bs;
    if (!graphs_on(m) || (!*exec && !*warm)) {
        TRY(body(m, arg));
        *warm = 1;
        return AMDIM_OK;
    }
    if (!*exec && capture(m, exec, body, arg)) {
        fprintf(stderr, "amdim: warning: CUDA graphs off for this model, steps run eagerly (%s)\n", m->err);
        c->graphs_failed = 1;
        return body(m, arg);
    }
    CU(cudaGraphLaunch(*exec, c->stream), "cudaGraphLaunch");
    c->graph_launches++;
    return AMDIM_OK;
}

void amdim_cuda_graph_counts(const amdim_model *m, unsigned long *captures, unsigned long *launches)
{
    *captures = CS(m)->graph_captures;
    *launches = CS(m)->graph_launches;
}

/* ---- buffers ------------------------------------------------------------------ */

/* The activation arena for batch B; with `group` (a training step with a
 * process group) also the global batch's target buffers, which
 * evaluation and BN refresh never need. */
static int ensure_buffers_for(amdim_model *m, int B, int group)
{
    cuda_state *c = m->bs;
    int ranks = group && m->comm ? m->comm->size : 0; /* the global target buffers with a group */
    if (c->plan.batch == B && c->plan.act_bytes == (int)c->es && (c->plan.ranks == ranks || (!group && c->plan.ranks)))
        return AMDIM_OK;
    m->batch = 0; /* the outputs of the last training step go with the old arena */
    drop_graph(&c->fb_graph, &c->fb_warm); /* so does the step's graph */
    c->prepared_batch = c->synced_batch = 0;
    cudaFree(c->act);
    c->act = NULL;
    amdim_cuda_plan_free(&c->plan);
    free(c->stats);
    free(c->labels2);
    c->stats = NULL;
    c->labels2 = NULL;
    if (amdim_cuda_plan_build(&c->plan, &m->arch, B, ranks, (int)c->es))
        return MFAIL(AMDIM_E_NOMEM, "out of memory (activation plan)");
    c->stats = malloc((AMDIM_CUDA_STATS_CLS * (size_t)B + 12 * (size_t)B) * sizeof(double));
    c->labels2 = malloc(2 * (size_t)B * sizeof(int32_t));
    if (!c->stats || !c->labels2) {
        amdim_cuda_plan_free(&c->plan);
        return MFAIL(AMDIM_E_NOMEM, "out of memory");
    }
    cudaError_t e = cudaMalloc(&c->act, c->plan.total);
    if (e != cudaSuccess) {
        c->act = NULL;
        amdim_cuda_plan_free(&c->plan);
        return MFAIL(AMDIM_E_NOMEM, "cudaMalloc(%zu MiB of %s activations for batch %d): %s", c->plan.total >> 20,
                     c->bf16 ? "bf16" : "fp32", B, cudaGetErrorString(e));
    }
    return AMDIM_OK;
}

static int ensure_buffers(amdim_model *m, int B) { return ensure_buffers_for(m, B, 0); }

/* Input channels layer L's convolution sees: the stored views' (3, or
 * zero-padded to AMDIM_CUDA_BF16_IN_CH in the bf16 mode; plan.h) for the
 * first layer, cin otherwise. */
static int conv_cin(const amdim_model *m, const amdim_layer *L)
{
    return L == &m->arch.layers[0] ? amdim_cuda_in_channels((int)CS(m)->es) : L->cin;
}

/* The OHWI copy of tensor i from its OIHW master, in the activation type,
 * with the first layer's input channels padded (no-op for GEMM weights). */
static int refresh_ohwi(amdim_model *m, int i)
{
    const amdim_tensor *t = &m->arch.tensors[i];
    if (CS(m)->pp.ohwi[i] == AMDIM_CUDA_NONE)
        return AMDIM_OK;
    int ipad = i == m->arch.layers[0].w1 ? conv_cin(m, &m->arch.layers[0]) : t->shape[1];
    return amdim_oihw_to_ohwi_cuda(X(m), W(m, i), t->shape[0], t->shape[1], t->shape[2], ipad, WK(m, i));
}

/* Every weight's compute copies from the masters: the OHWI filters and,
 * in the bf16 mode, the bf16 copy of the weights block (Adam keeps both
 * after each update). */
static int refresh_copies(amdim_model *m)
{
    cuda_state *c = m->bs;
    if (c->bf16)
        TRY(amdim_f32_to_bf16_cuda(X(m), c->params + c->pp.weights, m->arch.weights_size,
                             (uint16_t *)(void *)(c->params + c->pp.wbf)));
    for (int i = 0; i < m->arch.ntensors; i++)
        TRY(refresh_ohwi(m, i));
    return AMDIM_OK;
}

/* ---- encoder ------------------------------------------------------------------- */

static amdim_conv_shape conv_shape(const amdim_model *m, const amdim_layer *L, int B)
{
    int h = L->hin + 2 * L->pad;
    amdim_conv_shape s = {B, conv_cin(m, L), h, h, L->cout, L->k, L->s};
    return s;
}

static int comm_fail(amdim_model *m, int rc, const char *what);

/* Layer l's convolution into the error: "encoder layer l (3x3 stride 1,
 * 8 -> 16 channels): " before what m->err holds. */
static int layer_fail(amdim_model *m, int l, int rc)
{
    char why[sizeof m->err];
    const amdim_layer *L = &m->arch.layers[l];
    snprintf(why, sizeof why, "%s", m->err);
    int odd = CS(m)->bf16 && (conv_cin(m, L) % 8 || L->cout % 8);
    return MFAIL(rc, "encoder layer %d (%dx%d convolution, stride %d, %d -> %d channels at %d px): %s%s", l, L->k, L->k,
                 L->s, conv_cin(m, L), L->cout, L->hin + 2 * L->pad, why,
                 odd ? "; cuDNN's bf16 convolutions need channel counts that are multiples of 8 (an ndf that is a "
                       "multiple of 8, or --precision fp32)"
                     : "");
}

/* Every cuDNN convolution of a step at batch B (with backward: its
 * gradients too) gets its algorithm from the process's table (conv.h),
 * measured now for shapes it does not have - before the step, on buffers
 * it does not need yet (Find overwrites its output), so that no
 * measurement happens inside a step or a capture. */
static int prepare_convs(amdim_model *m, int B, int backward)
{
    cuda_state *c = m->bs;
    if (c->prepared_batch == B && c->prepared_bwd >= backward)
        return AMDIM_OK;
    const amdim_cuda_plan *P = &c->plan;
    void *ga = A(m, P->grad_a), *gb = A(m, P->grad_b), *dw = c->params + c->pp.dw_ohwi;
    for (int l = 0; l < m->arch.nlayers; l++) {
        const amdim_layer *L = &m->arch.layers[l];
        const amdim_cuda_layer_plan *lp = &P->layers[0][l];
        if (L->kind == AMDIM_LAYER_BN || (L->kind == AMDIM_LAYER_RES && !amdim_cuda_conv_uses_cudnn(L)))
            continue;
        amdim_conv_shape sh = conv_shape(m, L, B);
        const void *x = L->pad ? A(m, lp->padded) : l ? A(m, P->layers[0][l - 1].out) : A(m, P->x[0]);
        void *y = L->kind == AMDIM_LAYER_STEM ? A(m, lp->out) : A(m, lp->h1);
        int rc = amdim_conv_prepare(&c->conv, AMDIM_CONV_FWD, &sh, x, WK(m, L->w1), y);
        if (!rc && backward)
            rc = amdim_conv_prepare(&c->conv, AMDIM_CONV_FILTER, &sh, x, y, dw);
        if (!rc && backward && l > 0)
            rc = amdim_conv_prepare(&c->conv, AMDIM_CONV_DATA, &sh, WK(m, L->w1), ga, gb);
        if (rc)
            return layer_fail(m, l, rc);
    }
    c->prepared_batch = B;
    c->prepared_bwd = backward;
    return finish(m);
}

/* A group's ranks convolve with rank 0's algorithms (its choices for this
 * step's convolutions, broadcast as (algo, math) pairs in layer order), so
 * that they sum in the same order everywhere; once per batch size. */
static int sync_convs(amdim_model *m, int B, int backward)
{
    cuda_state *c = m->bs;
    if (!m->comm || (c->synced_batch == B && c->synced_bwd >= backward && c->synced_group == m->comm))
        return AMDIM_OK;
    int n = 0, cap = 3 * m->arch.nlayers;
    float *buf = calloc((size_t)(2 * cap + 1), sizeof *buf);
    amdim_conv_shape *sh = calloc((size_t)cap + 1, sizeof *sh);
    int *op = calloc((size_t)cap + 1, sizeof *op), rc = AMDIM_OK;
    if (!buf || !sh || !op) {
        free(buf), free(sh), free(op);
        return MFAIL(AMDIM_E_NOMEM, "out of memory");
    }
    for (int l = 0; l < m->arch.nlayers; l++) {
        const amdim_layer *L = &m->arch.layers[l];
        if (L->kind == AMDIM_LAYER_BN || (L->kind == AMDIM_LAYER_RES && !amdim_cuda_conv_uses_cudnn(L)))
            continue;
        for (int o = 0; o < (backward ? (l > 0 ? 3 : 2) : 1); o++) {
            sh[n] = conv_shape(m, L, B);
            op[n] = o == 0 ? AMDIM_CONV_FWD : o == 1 ? AMDIM_CONV_FILTER : AMDIM_CONV_DATA;
            int algo = -1, math = -1;
            amdim_conv_choice_get(&c->conv, op[n], &sh[n], &algo, &math);
            buf[2 * n] = (float)algo; /* small integers: exact as floats */
            buf[2 * n + 1] = (float)math;
            n++;
        }
    }
    int e = m->comm->bcast_f32(m->comm->ctx, buf, (size_t)(2 * n), 0);
    if (e)
        rc = comm_fail(m, e, "broadcasting rank 0's cuDNN algorithms");
    for (int i = 0; !rc && i < n; i++) {
        if (buf[2 * i] < 0) {
            rc = MFAIL(AMDIM_E_IO, "rank 0 has no cuDNN algorithm for convolution %d of the step", i);
            break;
        }
        rc = amdim_conv_choice_set(&c->conv, op[i], &sh[i], (int)buf[2 * i], (int)buf[2 * i + 1]);
    }
    free(buf), free(sh), free(op);
    if (!rc) {
        c->synced_batch = B;
        c->synced_bwd = backward;
        c->synced_group = m->comm;
    }
    return rc;
}

/* x (B, hin, hin, cin) -> lp->out (B, hout, hout, cout) */
static int layer_forward(amdim_model *m, const amdim_layer *L, const amdim_cuda_layer_plan *lp, const void *x, int B,
                         int train)
{
    cuda_state *c = m->bs;
    size_t rows = (size_t)B * L->hout * L->hout, outn = rows * L->cout;
    void *out = A(m, lp->out);
    switch (L->kind) {
    case AMDIM_LAYER_STEM: {
        const void *in = x;
        if (L->pad) {
            TRY(amdim_reflect_pad_forward_cuda(X(m), x, B, L->hin, L->hin, conv_cin(m, L), L->pad, A(m, lp->padded)));
            in = A(m, lp->padded);
        }
        amdim_conv_shape sh = conv_shape(m, L, B);
        TRY(amdim_conv_forward(&c->conv, &sh, in, WK(m, L->w1), out));
        return amdim_bias_relu_forward_cuda(X(m), out, W(m, L->b1), rows, L->cout);
    }
    case AMDIM_LAYER_RES: {
        void *h1 = A(m, lp->h1), *r = A(m, lp->r);
        if (amdim_cuda_conv_uses_cudnn(L)) {
            amdim_conv_shape sh = conv_shape(m, L, B);
            TRY(amdim_conv_forward(&c->conv, &sh, x, WK(m, L->w1), h1));
        } else {
            TRY(linear_forward(m, x, rows, L->cin, WG(m, L->w1), NULL, L->cout, 0.0f, h1, C_ACT));
        }
        TRY(bn_forward(m, L->bn, h1, rows, L->cout, train, r, AF(m, lp->mean), AF(m, lp->istd)));
        TRY(amdim_relu_forward_cuda(X(m), r, outn));
        TRY(linear_forward(m, r, rows, L->cout, WG(m, L->w2), NULL, L->cout, 0.0f, out, C_ACT));
        return amdim_avgpool_pad_forward_add_cuda(X(m), x, B, L->hin, L->hin, L->cin, L->k, L->s, L->cout, out);
    }
    default:
        return bn_forward(m, L->bn, x, rows, L->cout, train, out, AF(m, lp->mean), AF(m, lp->istd));
    }
}

/* dy: gradient of the layer output (may be modified); dx: of its input (NULL: not needed). */
static int layer_backward(amdim_model *m, const amdim_layer *L, const amdim_cuda_layer_plan *lp, const void *x, int B,
                          void *dy, void *dx)
{
    cuda_state *c = m->bs;
    size_t rows = (size_t)B * L->hout * L->hout, outn = rows * L->cout;
    const void *out = A(m, lp->out);
    switch (L->kind) {
    case AMDIM_LAYER_STEM: {
        TRY(amdim_relu_backward_cuda(X(m), out, dy, outn));
        TRY(amdim_channel_sum_add_cuda(X(m), dy, rows, L->cout, G(m, L->b1), BNS(m)));
        const void *in = L->pad ? A(m, lp->padded) : x;
        AMDIM_ASSERT(!(L->pad && dx)); /* only the first layer pads: no input gradient */
        amdim_conv_shape sh = conv_shape(m, L, B);
        void *dw = c->params + c->pp.dw_ohwi; /* activation type */
        TRY(amdim_conv_backward_filter(&c->conv, &sh, in, dy, dw));
        TRY(amdim_ohwi_to_oihw_add_cuda(X(m), dw, L->cout, L->cin, L->k, sh.cin, G(m, L->w1)));
        return dx ? amdim_conv_backward_data(&c->conv, &sh, WK(m, L->w1), dy, dx) : AMDIM_OK;
    }
    case AMDIM_LAYER_RES: {
        const void *h1 = A(m, lp->h1), *r = A(m, lp->r);
        void *dr = A(m, c->plan.scratch);
        TRY(linear_backward(m, r, rows, L->cout, WG(m, L->w2), L->cout, dy, dr, 0.0f, G(m, L->w2), NULL));
        TRY(amdim_relu_backward_cuda(X(m), r, dr, outn));
        if (L->bn.on) {
            amdim_cuda_bn p = bn_view(m, L->bn);
            TRY(amdim_batchnorm_backward_cuda(X(m), h1, rows, L->cout, &p, AF(m, lp->mean), AF(m, lp->istd), dr, dr,
                                        BNS(m)));
        }
        if (amdim_cuda_conv_uses_cudnn(L)) {
            amdim_conv_shape sh = conv_shape(m, L, B);
            void *dw = c->params + c->pp.dw_ohwi;
            TRY(amdim_conv_backward_filter(&c->conv, &sh, x, dr, dw));
            TRY(amdim_ohwi_to_oihw_add_cuda(X(m), dw, L->cout, L->cin, L->k, sh.cin, G(m, L->w1)));
            if (dx)
                TRY(amdim_conv_backward_data(&c->conv, &sh, WK(m, L->w1), dr, dx));
        } else {
            TRY(linear_backward(m, x, rows, L->cin, WG(m, L->w1), L->cout, dr, dx, 0.0f, G(m, L->w1), NULL));
        }
        return dx ? amdim_avgpool_pad_backward_add_cuda(X(m), dy, B, L->hin, L->hin, L->cin, L->k, L->s, L->cout, dx)
                  : AMDIM_OK;
    }
    default:
        if (L->bn.on) {
            amdim_cuda_bn p = bn_view(m, L->bn);
            return amdim_batchnorm_backward_cuda(X(m), x, rows, L->cout, &p, AF(m, lp->mean), AF(m, lp->istd), dy, dx,
                                           BNS(m));
        }
        return copy(m, dx, dy, outn * ES(m), cudaMemcpyDeviceToDevice);
    }
}

/* x (B, hw, hw, cin) -> hp->out (B, hw, hw, R) */
static int head_forward(amdim_model *m, const amdim_head *h, const amdim_cuda_head_plan *hp, const void *x, int B,
                        int train)
{
    size_t rows = (size_t)B * h->hw * h->hw;
    void *h1 = A(m, hp->h1), *r = A(m, hp->r), *sum = A(m, hp->sum);
    TRY(linear_forward(m, x, rows, h->cin, WG(m, h->w1), NULL, h->cout, 0.0f, h1, C_ACT));
    TRY(bn_forward(m, h->bn_hid, h1, rows, h->cout, train, r, AF(m, hp->mean1), AF(m, hp->istd1)));
    TRY(amdim_relu_forward_cuda(X(m), r, rows * h->cout));
    TRY(linear_forward(m, r, rows, h->cout, WG(m, h->w2), NULL, h->cout, 0.0f, sum, C_ACT));
    TRY(linear_forward(m, x, rows, h->cin, WG(m, h->ws), W(m, h->bs), h->cout, 1.0f, sum, C_ACT)); /* + shortcut */
    return bn_forward(m, h->bn_out, sum, rows, h->cout, train, A(m, hp->out), AF(m, hp->mean2), AF(m, hp->istd2));
}

/* dy: gradient of the head output (modified); dx: of the head input (overwritten). */
static int head_backward(amdim_model *m, const amdim_head *h, const amdim_cuda_head_plan *hp, const void *x, int B,
                         void *dy, void *dx)
{
    size_t rows = (size_t)B * h->hw * h->hw;
    const void *h1 = A(m, hp->h1), *r = A(m, hp->r), *sum = A(m, hp->sum);
    void *dr = A(m, CS(m)->plan.scratch);
    amdim_cuda_bn bo = bn_view(m, h->bn_out);
    TRY(amdim_batchnorm_backward_cuda(X(m), sum, rows, h->cout, &bo, AF(m, hp->mean2), AF(m, hp->istd2), dy, dy, BNS(m)));
    TRY(linear_backward(m, x, rows, h->cin, WG(m, h->ws), h->cout, dy, dx, 0.0f, G(m, h->ws), G(m, h->bs)));
    TRY(linear_backward(m, r, rows, h->cout, WG(m, h->w2), h->cout, dy, dr, 0.0f, G(m, h->w2), NULL));
    TRY(amdim_relu_backward_cuda(X(m), r, dr, rows * h->cout));
    if (h->bn_hid.on) {
        amdim_cuda_bn p = bn_view(m, h->bn_hid);
        TRY(amdim_batchnorm_backward_cuda(X(m), h1, rows, h->cout, &p, AF(m, hp->mean1), AF(m, hp->istd1), dr, dr,
                                    BNS(m)));
    }
    return linear_backward(m, x, rows, h->cin, WG(m, h->w1), h->cout, dr, dx, 1.0f, G(m, h->w1), NULL);
}

static int encoder_forward(amdim_model *m, int v, int B, int train, int heads)
{
    const amdim_cuda_plan *p = &CS(m)->plan;
    const amdim_arch *a = &m->arch;
    const void *in = A(m, p->x[v]);
    for (int l = 0; l < a->nlayers; l++) {
        double t0 = now_if(m);
        TRY(layer_forward(m, &a->layers[l], &p->layers[v][l], in, B, train));
        prof(m, l, 0, t0, B);
        in = A(m, p->layers[v][l].out);
    }
    for (int h = 0; heads && h < 2; h++) {
        double t0 = now_if(m);
        const amdim_head *hd = &a->heads[h];
        TRY(head_forward(m, hd, &p->heads[v][h], A(m, p->layers[v][hd->src_layer].out), B, train));
        prof(m, a->nlayers + h, 0, t0, B);
    }
    return AMDIM_OK;
}

static int bucket_launch(amdim_model *m, int u);

/* launch: the last view's backward in a group - each unit's gradient
 * bucket goes to the ranks as soon as the unit is done. */
static int encoder_backward(amdim_model *m, int v, int B, int launch)
{
    const amdim_cuda_plan *p = &CS(m)->plan;
    const amdim_arch *a = &m->arch;
    for (int h = 0; h < 2; h++) { /* heads first: their input gradients join at i5 and i7 */
        double t0 = now_if(m);
        const amdim_head *hd = &a->heads[h];
        TRY(head_backward(m, hd, &p->heads[v][h], A(m, p->layers[v][hd->src_layer].out), B,
                          A(m, h ? p->dr7[v] : p->dr5[v]), A(m, p->dhead[h])));
        prof(m, a->nlayers + h, 1, t0, B);
        if (launch)
            TRY(bucket_launch(m, a->nlayers + h));
    }
    void *dy = A(m, p->grad_a), *dx = A(m, p->grad_b);
    TRY(copy(m, dy, A(m, p->dr1[v]), (size_t)m->cfg.n_rkhs * B * ES(m), cudaMemcpyDeviceToDevice));
    for (int l = a->nlayers - 1; l >= 0; l--) {
        const amdim_layer *L = &a->layers[l];
        size_t outn = (size_t)L->cout * B * L->hout * L->hout;
        for (int h = 0; h < 2; h++)
            if (l == a->heads[h].src_layer)
                TRY(amdim_add_cuda(X(m), dy, A(m, p->dhead[h]), outn));
        const void *x = l ? A(m, p->layers[v][l - 1].out) : A(m, p->x[v]);
        double t0 = now_if(m);
        TRY(layer_backward(m, L, &p->layers[v][l], x, B, dy, l ? dx : NULL));
        prof(m, l, 1, t0, B);
        if (launch)
            TRY(bucket_launch(m, l));
        void *t = dy;
        dy = dx;
        dx = t;
    }
    return AMDIM_OK;
}

/* r1 (B, R) of view v into rows [v B, v B + B) of feat. */
static int gather_r1(amdim_model *m, int v, int B)
{
    const amdim_cuda_plan *p = &CS(m)->plan;
    size_t n = (size_t)B * m->cfg.n_rkhs;
    return copy(m, AE(m, p->feat, v * n), A(m, p->layers[v][m->arch.nlayers - 1].out), n * ES(m),
                cudaMemcpyDeviceToDevice);
}

/* ---- probes -------------------------------------------------------------------- */

static int probes_forward(amdim_model *m, int n, int train)
{
    const amdim_cuda_plan *P = &CS(m)->plan;
    const amdim_probes *p = &m->arch.probes;
    int R = m->cfg.n_rkhs, H = m->cfg.mlp_hidden, K = m->cfg.n_classes;
    const void *feat = A(m, P->feat), *in = feat, *h2 = A(m, P->mlp_a1);
    if (train) {
        TRY(amdim_dropout_cuda(X(m), feat, AF(m, P->mask_in), (size_t)n * R, A(m, P->mlp_h0)));
        in = A(m, P->mlp_h0);
    }
    TRY(linear_forward(m, in, (size_t)n, R, WG(m, p->mlp_w1), NULL, H, 0.0f, A(m, P->mlp_z1), C_ACT));
    TRY(bn_forward(m, p->mlp_bn, A(m, P->mlp_z1), (size_t)n, H, train, A(m, P->mlp_a1), AF(m, P->mlp_mean),
                   AF(m, P->mlp_istd)));
    TRY(amdim_relu_forward_cuda(X(m), A(m, P->mlp_a1), (size_t)n * H));
    if (train) {
        TRY(amdim_dropout_cuda(X(m), A(m, P->mlp_a1), AF(m, P->mask_hidden), (size_t)n * H, A(m, P->mlp_h2)));
        h2 = A(m, P->mlp_h2);
    }
    TRY(linear_forward(m, h2, (size_t)n, H, WG(m, p->mlp_w2), W(m, p->mlp_b2), K, 0.0f, A(m, P->logits[0]), C_F32));
    return linear_forward(m, feat, (size_t)n, R, WG(m, p->lin_w), W(m, p->lin_b), K, 0.0f, A(m, P->logits[1]),
                          C_F32);
}

/* The ranks whose rows make the global batch the probes' means run over:
 * the process group's, also in the classifier phase, whose steps plan no
 * global target buffers (plan.ranks 0). */
static int group_size(const amdim_model *m) { return m->comm ? m->comm->size : 1; }

/* Classifier rows of head h (n rows) in the stats block. */
static double *cls_rows(const amdim_model *m, int h)
{
    const amdim_cuda_plan *P = &CS(m)->plan;
    return (double *)(void *)A(m, P->stats) + AMDIM_CUDA_STATS_CLS * (size_t)P->batch + (size_t)h * 6 * P->batch;
}

/* inv_valid: one double in device memory */
static int probes_backward(amdim_model *m, int n, const double *inv_valid)
{
    const amdim_cuda_plan *P = &CS(m)->plan;
    const amdim_probes *p = &m->arch.probes;
    int R = m->cfg.n_rkhs, H = m->cfg.mlp_hidden, K = m->cfg.n_classes;
    /* n_all: the rows of the global batch (the probes' means are over it) */
    int n_all = n * group_size(m);
    const int32_t *labels = (const int32_t *)(const void *)A(m, P->labels2);
    /* dl: the float gradient of the logits; dla: the same as activations (the GEMMs' operand) */
    float *dl = AF(m, P->dlogits);
    void *dla = A(m, P->dlogits_act), *dtmp = A(m, P->dtmp), *dtmp2 = A(m, P->dtmp2);
    TRY(amdim_classifier_loss_cuda(X(m), AF(m, P->logits[0]), n, n_all, K, labels, inv_valid, 1.0f, dl, dla,
                             cls_rows(m, 0)));
    amdim_cuda_ctx f32 = X32(m); /* the probes' bias gradients from the float dl */
    TRY(amdim_channel_sum_add_cuda(&f32, dl, (size_t)n, K, G(m, p->mlp_b2), BNS(m)));
    TRY(linear_backward(m, A(m, P->mlp_h2), (size_t)n, H, WG(m, p->mlp_w2), K, dla, dtmp, 0.0f, G(m, p->mlp_w2),
                        NULL));
    TRY(amdim_dropout_cuda(X(m), dtmp, AF(m, P->mask_hidden), (size_t)n * H, dtmp));
    TRY(amdim_relu_backward_cuda(X(m), A(m, P->mlp_a1), dtmp, (size_t)n * H));
    amdim_cuda_bn bp = bn_view(m, p->mlp_bn);
    TRY(amdim_batchnorm_backward_cuda(X(m), A(m, P->mlp_z1), (size_t)n, H, &bp, AF(m, P->mlp_mean), AF(m, P->mlp_istd),
                                dtmp, dtmp2, BNS(m)));
    TRY(linear_backward(m, A(m, P->mlp_h0), (size_t)n, R, WG(m, p->mlp_w1), H, dtmp2, NULL, 0.0f, G(m, p->mlp_w1),
                        NULL));
    TRY(amdim_classifier_loss_cuda(X(m), AF(m, P->logits[1]), n, n_all, K, labels, inv_valid, 1.0f, dl, dla,
                             cls_rows(m, 1)));
    TRY(amdim_channel_sum_add_cuda(&f32, dl, (size_t)n, K, G(m, p->lin_b), BNS(m)));
    return linear_backward(m, A(m, P->feat), (size_t)n, R, WG(m, p->lin_w), K, dla, NULL, 0.0f, G(m, p->lin_w),
                           NULL);
}

/* The host side of a collective of m->comm failing. */
static int comm_fail(amdim_model *m, int rc, const char *what)
{
    return MFAIL(rc, "rank %d of %d: %s: %s", m->comm->rank, m->comm->size, what,
                 m->comm->error ? m->comm->error(m->comm->ctx) : "collective failed");
}

/* Labels of both views and the step's draws to the device; when labelled
 * is given, this rank's labelled count, the global batch's in *valid_all
 * (summed over m->comm's ranks: a host collective, outside any graph) and
 * its inverse to the device scalars. */
static int upload_step(amdim_model *m, int B, int rows, const int32_t *labels, const amdim_step_draws *d,
                       int *labelled, double *valid_all)
{
    cuda_state *c = m->bs;
    const amdim_cuda_plan *P = &c->plan;
    int valid = 0, K = m->cfg.n_classes;
    if (labels) {
        for (int r = 0; r < rows; r++) {
            c->labels2[r] = labels[r % B];
            valid += c->labels2[r] >= 0 && c->labels2[r] < K;
        }
        TRY(copy(m, A(m, P->labels2), c->labels2, (size_t)rows * sizeof(int32_t), cudaMemcpyHostToDevice));
    }
    if (labelled) {
        int rc;
        *valid_all = valid;
        if (m->comm && (rc = m->comm->allreduce_f64(m->comm->ctx, valid_all, 1)))
            return comm_fail(m, rc, "summing the labelled counts");
        double inv_valid = *valid_all > 0 ? 1.0 / *valid_all : 0.0;
        *labelled = valid;
        TRY(copy(m, &c->scalars->inv_valid, &inv_valid, sizeof inv_valid, cudaMemcpyHostToDevice));
    }
    if (d->src5)
        TRY(copy(m, A(m, P->src5), d->src5, (size_t)rows * sizeof(int32_t), cudaMemcpyHostToDevice));
    if (d->mask_in)
        TRY(copy(m, A(m, P->mask_in), d->mask_in, (size_t)rows * m->cfg.n_rkhs * sizeof(float),
                 cudaMemcpyHostToDevice));
    if (d->mask_hidden)
        TRY(copy(m, A(m, P->mask_hidden), d->mask_hidden, (size_t)rows * m->cfg.mlp_hidden * sizeof(float),
                 cudaMemcpyHostToDevice));
    return AMDIM_OK;
}

/* The classifier statistics from the host copy of the stats (n rows, valid
 * of them labelled): the losses are this rank's share of the global
 * batch's means (valid_all labelled rows, n times the ranks in all). */
static void cls_stats(amdim_model *m, int n, int valid, double valid_all, amdim_step_stats *st)
{
    const amdim_cuda_plan *P = &CS(m)->plan;
    double inv_valid = valid_all > 0 ? 1.0 / valid_all : 0.0;
    const double *base = CS(m)->stats + AMDIM_CUDA_STATS_CLS * (size_t)P->batch;
    double inv_all = 1.0 / ((double)n * group_size(m) * m->cfg.n_classes);
    for (int h = 0; h < 2; h++) {
        const double *r = base + (size_t)h * 6 * CS(m)->plan.batch;
        double xent = 0, reg = 0;
        int hits = 0;
        for (int i = 0; i < n; i++) {
            xent += r[3 * i];
            reg += r[3 * i + 1];
            hits += r[3 * i + 2] > 0.5;
        }
        double loss = xent * inv_valid + AMDIM_CLS_REG * reg * inv_all;
        if (h == 0) {
            st->cls_mlp = loss;
            st->correct_mlp = hits;
        } else {
            st->cls_lin = loss;
            st->correct_lin = hits;
        }
    }
    st->labelled = valid;
}

/* The probes on the 2B rows of feat, forward and backward (upload_step wrote inv_valid). */
static int probes_train(amdim_model *m, int B)
{
    int stage = m->arch.nlayers + AMDIM_STAGE_PROBES_OFFSET;
    double t0 = now_if(m);
    TRY(probes_forward(m, 2 * B, 1));
    prof(m, stage, 0, t0, B);
    t0 = now_if(m);
    TRY(probes_backward(m, 2 * B, &CS(m)->scalars->inv_valid));
    prof(m, stage, 1, t0, B);
    return AMDIM_OK;
}

/* ---- objective ------------------------------------------------------------------ */

/* The six directions: this rank's B sources (r1, and the drawn r5
 * location) against the targets of the global batch of Bg = N B images -
 * with a group (N ranks) the gathered r5 / r7 (tg, gather_targets), whose
 * gradients (dtg) the reduce-scatter brings back; without one, this
 * batch's own, Bg = B. Source si is image first + si of the global batch. */
static int objectives(amdim_model *m, int B)
{
    const amdim_cuda_plan *P = &CS(m)->plan;
    const amdim_model_config *cfg = &m->cfg;
    int R = cfg->n_rkhs, Bg = B * (P->ranks ? P->ranks : 1), first = P->ranks ? B * m->comm->rank : 0;
    void *feat[2][8], *dfeat[2][8]; /* [view][1, 5, 7]: activations */
    for (int v = 0; v < 2; v++) {
        feat[v][1] = A(m, P->layers[v][m->arch.nlayers - 1].out); /* (B, R) */
        dfeat[v][1] = A(m, P->dr1[v]);
        TRY(zero(m, dfeat[v][1], (size_t)R * B * ES(m)));
        if (P->ranks) { /* (Bg, 5, 5, R), (Bg, 7, 7, R); dtg zeroed by gather_targets */
            feat[v][5] = A(m, P->tg[v][0]), feat[v][7] = A(m, P->tg[v][1]);
            dfeat[v][5] = A(m, P->dtg[v][0]), dfeat[v][7] = A(m, P->dtg[v][1]);
            continue;
        }
        feat[v][5] = A(m, P->heads[v][0].out); /* (B, 5, 5, R) */
        feat[v][7] = A(m, P->heads[v][1].out); /* (B, 7, 7, R) */
        dfeat[v][5] = A(m, P->dr5[v]), dfeat[v][7] = A(m, P->dr7[v]);
        TRY(zero(m, dfeat[v][5], (size_t)R * B * 25 * ES(m)));
        TRY(zero(m, dfeat[v][7], (size_t)R * B * 49 * ES(m)));
    }
    float scale = 1.0f / sqrtf((float)R), *S = AF(m, P->scores), *dS = AF(m, P->dscores);
    void *dSa = A(m, P->dscores_act); /* dS as activations: the backward GEMMs' operand (dS itself in fp32) */
    for (int k = 0; k < AMDIM_NCE_DIRECTIONS; k++) {
        const amdim_nce_direction *d = &m->arch.dirs[k];
        int a = d->src_view, b = 1 - a, BL = Bg * d->L;
        const int32_t *idx = (const int32_t *)(const void *)A(m, P->src5) + (size_t)a * B;
        const void *src = feat[a][1], *tgt = feat[b][d->tgt_feature];
        void *dsrc = dfeat[a][1], *dtgt = dfeat[b][d->tgt_feature];
        if (d->src_feature == 5) { /* one drawn location of this rank's r5 per image */
            TRY(amdim_gather_rows_cuda(X(m), A(m, P->heads[a][0].out), idx, B, R, A(m, P->src)));
            TRY(zero(m, A(m, P->dsrc), (size_t)R * B * ES(m)));
            src = A(m, P->src);
            dsrc = A(m, P->dsrc);
        }
        /* S (B, Bg L) = src (B, R) tgt (Bg L, R)^T / sqrt(R) */
        TRY(nce_gemm(m, 0, 1, B, BL, R, scale, src, R, tgt, R, 0.0f, S, BL, C_F32));
        TRY(amdim_nce_rows_cuda(X(m), S, dS, dSa, B, first, Bg, d->L, cfg->tclip, cfg->objective, 0.5f, 0.5f,
                          (double *)A(m, P->stats) + (size_t)k * 2 * B));
        TRY(nce_gemm(m, 0, 0, B, R, BL, scale, dSa, BL, tgt, R, 1.0f, dsrc, R, C_ACT));
        TRY(nce_gemm(m, 1, 0, BL, R, B, scale, dSa, BL, src, R, 1.0f, dtgt, R, C_ACT));
        /* the drawn sources' gradient joins the targets' at image first + i
         * (with a group: summed by the reduce-scatter in the order one
         * process sums it) */
        if (d->src_feature == 5)
            TRY(amdim_scatter_rows_add_cuda(X(m), A(m, P->dsrc), idx, B, R,
                                      (char *)dfeat[a][5] + (size_t)first * 25 * R * ES(m)));
    }
    return AMDIM_OK;
}

/* The objective's statistics from the host copy of the stats; with a
 * group, this rank's B rows' share of the global batch's means (Bg = N B
 * images), which the ranks' sum (reduce_stats) completes. */
static void nce_stats(amdim_model *m, int B, amdim_step_stats *st)
{
    double reg = 0, task[3] = {0, 0, 0}, Bg = (double)B * (CS(m)->plan.ranks ? CS(m)->plan.ranks : 1);
    for (int k = 0; k < AMDIM_NCE_DIRECTIONS; k++) {
        const amdim_nce_direction *d = &m->arch.dirs[k];
        const double *r = CS(m)->stats + (size_t)k * 2 * B;
        double BL = Bg * d->L, loss = 0, sq = 0;
        for (int i = 0; i < B; i++) {
            loss += r[2 * i];
            sq += r[2 * i + 1];
        }
        if (m->cfg.objective == AMDIM_OBJECTIVE_NCE)
            loss /= BL;
        task[d->task] += 0.5 * loss;
        reg += AMDIM_NCE_REG * sq / (Bg * BL);
    }
    st->nce_1t5 = task[0];
    st->nce_1t7 = task[1];
    st->nce_5t5 = task[2];
    st->reg = 0.5 * reg;
}

static int pull_stats(amdim_model *m)
{
    const amdim_cuda_plan *P = &CS(m)->plan;
    return copy(m, CS(m)->stats, A(m, P->stats), (AMDIM_CUDA_STATS_CLS + 12) * (size_t)P->batch * sizeof(double),
                cudaMemcpyDeviceToHost);
}

/* ---- data parallelism ------------------------------------------------------------ */

/* With m->comm (N ranks; N > 1, or one forced rank) a training step moves
 * over NCCL, on the compute stream, in the step's order: the all-gather
 * of r5 and r7 of both views into the global target buffers (after the
 * forward), the reduce-scatter of their gradients into dr5 / dr7 (after
 * the objective); the gradients in buckets on the NCCL stream during the
 * last view's backward (plan.h: amdim_cuda_grad_buckets; one call at the
 * end if the table's layout did not allow buckets), then the average of
 * the BatchNorm running statistics, and the compute stream waits for all
 * of it before Adam. The classifier phase sums the whole block at the end.
 * The labelled count (before the
 * step) and the loss terms and counts (after it) are summed on the host
 * over m->comm. Steps with a group run eagerly (no CUDA graph): the host
 * collectives stay outside the device work and NCCL is never captured. */

/* The loss terms and counts summed over the ranks (each rank's are its
 * share of the global batch's means). */
static int reduce_stats(amdim_model *m, amdim_step_stats *st)
{
    double v[9] = {st->nce_1t5, st->nce_1t7, st->nce_5t5, st->reg, st->cls_mlp, st->cls_lin,
                   st->correct_mlp, st->correct_lin, st->labelled};
    int rc = m->comm->allreduce_f64(m->comm->ctx, v, 9);
    if (rc)
        return comm_fail(m, rc, "summing the loss terms");
    st->nce_1t5 = v[0], st->nce_1t7 = v[1], st->nce_5t5 = v[2], st->reg = v[3], st->cls_mlp = v[4];
    st->cls_lin = v[5], st->correct_mlp = (int)v[6], st->correct_lin = (int)v[7], st->labelled = (int)v[8];
    return AMDIM_OK;
}

#ifdef AMDIM_HAVE_NCCL
/* Running statistics of every BatchNorm (BN_MEAN, BN_VAR tensors). */
static int is_running_stat(const amdim_tensor *t)
{
    return t->role == AMDIM_ROLE_BN_MEAN || t->role == AMDIM_ROLE_BN_VAR;
}

/* A failed NCCL call, with NCCL's last error message (thread-local in
 * NCCL; the comm argument is unused, NULL before ncclCommInitRank). */
static int nccl_fail(amdim_model *m, ncclResult_t r, const char *call)
{
    const char *last = ncclGetLastError(CS(m)->nccl);
    return MFAIL(AMDIM_E_IO, "rank %d of %d: %s(): %s%s%s", m->comm->rank, m->comm->size, call,
                 ncclGetErrorString(r), last && *last ? ": " : "", last && *last ? last : "");
}

#define NC(call, name)                                  \
    do {                                                \
        ncclResult_t r_ = (call);                       \
        if (r_ != ncclSuccess)                          \
            return nccl_fail(m, r_, name);              \
    } while (0)

/* Ends a group of NCCL calls; the first failure inside it (r, call) or
 * the group's own. */
static int nccl_group_end(amdim_model *m, ncclResult_t r, const char *call)
{
    ncclResult_t e = ncclGroupEnd();
    if (r != ncclSuccess)
        return nccl_fail(m, r, call);
    NC(e, "ncclGroupEnd");
    return AMDIM_OK;
}

/* The gradient buckets (see cuda_state, plan.h). */
static int plan_buckets(amdim_model *m)
{
    cuda_state *c = m->bs;
    size_t U = (size_t)AMDIM_CUDA_BUCKETS(&m->arch);
    c->bucket_lo = calloc(U, sizeof *c->bucket_lo);
    c->bucket_hi = calloc(U, sizeof *c->bucket_hi);
    if (!c->bucket_lo || !c->bucket_hi)
        return MFAIL(AMDIM_E_NOMEM, "out of memory");
    c->buckets = amdim_cuda_grad_buckets(&m->arch, c->bucket_lo, c->bucket_hi);
    return AMDIM_OK;
}

/* Destroys the communicator (aborts it after an asynchronous error, when
 * a peer may never complete an operation). */
static void nccl_close(cuda_state *c)
{
    /* after an asynchronous error first abort (a peer may never complete
     * an operation still queued on the NCCL stream), then wait */
    ncclResult_t async = ncclSuccess;
    int failed = c->nccl && (ncclCommGetAsyncError(c->nccl, &async) != ncclSuccess || async != ncclSuccess);
    if (failed)
        ncclCommAbort(c->nccl);
    if (c->nstream)
        cudaStreamSynchronize(c->nstream), cudaStreamDestroy(c->nstream);
    if (c->nev)
        cudaEventDestroy(c->nev);
    free(c->bucket_lo), free(c->bucket_hi);
    c->nstream = NULL, c->nev = NULL, c->bucket_lo = c->bucket_hi = NULL, c->buckets = 0;
    if (c->nccl && !failed)
        ncclCommDestroy(c->nccl);
    c->nccl = NULL;
    c->nccl_group = NULL;
}

/* The run's communicator over m->comm, made once (a collective of all
 * ranks, at their first step): rank 0's ncclGetUniqueId goes to every rank
 * through bcast_f32 - its 128 bytes as 32 floats, which the comm moves
 * unchanged - then ncclCommInitRank on the current device. */
static int nccl_open(amdim_model *m)
{
    cuda_state *c = m->bs;
    const amdim_comm *g = m->comm;
    if (c->nccl && c->nccl_group == g)
        return AMDIM_OK;
    CU(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    nccl_close(c); /* made for another group */
    ncclUniqueId id;
    float buf[(sizeof id + sizeof(float) - 1) / sizeof(float)];
    memset(&id, 0, sizeof id);
    memset(buf, 0, sizeof buf);
    if (g->rank == 0)
        NC(ncclGetUniqueId(&id), "ncclGetUniqueId");
    memcpy(buf, &id, sizeof id);
    int rc = g->bcast_f32(g->ctx, buf, sizeof buf / sizeof *buf, 0);
    if (rc)
        return comm_fail(m, rc, "broadcasting the NCCL id");
    memcpy(&id, buf, sizeof id);
    ncclComm_t comm = NULL;
    NC(ncclCommInitRank(&comm, g->size, id, g->rank), "ncclCommInitRank");
    c->nccl = comm;
    c->nccl_group = g;
    CU(cudaStreamCreateWithFlags(&c->nstream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags (NCCL)");
    CU(cudaEventCreateWithFlags(&c->nev, cudaEventDisableTiming), "cudaEventCreateWithFlags (NCCL)");
    return plan_buckets(m);
}

/* NCCL's type of the activations. */
static ncclDataType_t nccl_act(const amdim_model *m) { return CS(m)->bf16 ? ncclBfloat16 : ncclFloat; }

/* r5 and r7 of both views, every rank's (B, hw, hw, R) block in rank
 * order, into tg (N B, hw, hw, R): the global batch's targets. Zeroes
 * their gradients dtg. */
static int gather_targets(amdim_model *m, int B)
{
    cuda_state *c = m->bs;
    const amdim_cuda_plan *P = &c->plan;
    ncclResult_t r = ncclSuccess;
    NC(ncclGroupStart(), "ncclGroupStart");
    for (int v = 0; v < 2 && r == ncclSuccess; v++)
        for (int f = 0; f < 2 && r == ncclSuccess; f++)
            r = ncclAllGather(A(m, P->heads[v][f].out), A(m, P->tg[v][f]),
                              (size_t)B * (f ? 49 : 25) * m->cfg.n_rkhs, nccl_act(m), c->nccl, c->stream);
    TRY(nccl_group_end(m, r, "ncclAllGather"));
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++)
            TRY(zero(m, A(m, P->dtg[v][f]), (size_t)B * P->ranks * (f ? 49 : 25) * m->cfg.n_rkhs * ES(m)));
    return AMDIM_OK;
}

/* dr5 / dr7 of this rank's images = the ranks' sum of their gradients of
 * its block of the gathered targets (the drawn r5 sources' included; in
 * the bf16 mode a bf16 sum, as the activation gradients are bf16). */
static int scatter_target_grads(amdim_model *m, int B)
{
    cuda_state *c = m->bs;
    const amdim_cuda_plan *P = &c->plan;
    ncclResult_t r = ncclSuccess;
    NC(ncclGroupStart(), "ncclGroupStart");
    for (int v = 0; v < 2 && r == ncclSuccess; v++)
        for (int f = 0; f < 2 && r == ncclSuccess; f++)
            r = ncclReduceScatter(A(m, P->dtg[v][f]), A(m, f ? P->dr7[v] : P->dr5[v]),
                                  (size_t)B * (f ? 49 : 25) * m->cfg.n_rkhs, nccl_act(m), ncclSum, c->nccl,
                                  c->stream);
    return nccl_group_end(m, r, "ncclReduceScatter");
}

/* Unit u's backward is done (its last view's): its gradient bucket is
 * summed over the ranks on the NCCL stream while the compute stream goes
 * on with the units before it. */
static int bucket_launch(amdim_model *m, int u)
{
    cuda_state *c = m->bs;
    if (!c->buckets || c->bucket_hi[u] <= c->bucket_lo[u])
        return AMDIM_OK;
    float *g = c->params + c->pp.grads + c->bucket_lo[u];
    CU(cudaEventRecord(c->nev, c->stream), "cudaEventRecord (gradient bucket)");
    CU(cudaStreamWaitEvent(c->nstream, c->nev, 0), "cudaStreamWaitEvent (gradient bucket)");
    NC(ncclAllReduce(g, g, c->bucket_hi[u] - c->bucket_lo[u], ncclFloat, ncclSum, c->nccl, c->nstream),
       "ncclAllReduce (gradient bucket)");
    return AMDIM_OK;
}

/* After a training step's backward: with buckets, the running statistics
 * averaged on the NCCL stream behind the buckets, and the compute stream
 * made to wait for all of it (Adam reads the sums); without, reduce_device. */
static int reduce_device(amdim_model *m);
static int reduce_device_tail(amdim_model *m)
{
    cuda_state *c = m->bs;
    if (!c->buckets)
        return reduce_device(m);
    ncclResult_t r = ncclSuccess;
    CU(cudaEventRecord(c->nev, c->stream), "cudaEventRecord (running statistics)");
    CU(cudaStreamWaitEvent(c->nstream, c->nev, 0), "cudaStreamWaitEvent (running statistics)");
    NC(ncclGroupStart(), "ncclGroupStart");
    for (int i = 0; i < m->arch.ntensors && r == ncclSuccess; i++)
        if (is_running_stat(&m->arch.tensors[i]))
            r = ncclAllReduce(W(m, i), W(m, i), m->arch.tensors[i].size, ncclFloat, ncclAvg, c->nccl, c->nstream);
    TRY(nccl_group_end(m, r, "ncclAllReduce (running statistics)"));
    CU(cudaEventRecord(c->nev, c->nstream), "cudaEventRecord (NCCL done)");
    CU(cudaStreamWaitEvent(c->stream, c->nev, 0), "cudaStreamWaitEvent (NCCL done)");
    return AMDIM_OK;
}

/* After the backward: the gradients summed over the ranks (so every rank
 * applies the same update) and, per-rank BatchNorm, the running
 * statistics averaged (ncclAvg, in fp32; the CPU averages in double). */
static int reduce_device(amdim_model *m)
{
    cuda_state *c = m->bs;
    /* the classifier phase: the probes' gradients (the block's tail) and
     * running statistics only; the frozen encoder's do not move */
    size_t from = m->probes_only && c->buckets ? c->bucket_lo[m->arch.nlayers + 2] : 0;
    float *g = c->params + c->pp.grads + from;
    ncclResult_t r;
    NC(ncclGroupStart(), "ncclGroupStart");
    r = ncclAllReduce(g, g, m->arch.grads_size - from, ncclFloat, ncclSum, c->nccl, c->stream);
    const char *call = "ncclAllReduce (gradients)";
    for (int i = 0; i < m->arch.ntensors && r == ncclSuccess; i++)
        if (is_running_stat(&m->arch.tensors[i]) && (!m->probes_only || m->arch.tensors[i].probe)) {
            r = ncclAllReduce(W(m, i), W(m, i), m->arch.tensors[i].size, ncclFloat, ncclAvg, c->nccl, c->stream);
            call = "ncclAllReduce (running statistics)";
        }
    return nccl_group_end(m, r, call);
}

/* Synchronised BatchNorm (kernels.h: amdim_cuda_ctx.bn_sync): the
 * per-channel sums over the ranks, on the compute stream. */
static int nccl_bn_sync(void *arg, double *fin, size_t n)
{
    amdim_model *m = arg;
    NC(ncclAllReduce(fin, fin, n, ncclDouble, ncclSum, CS(m)->nccl, CS(m)->stream),
       "ncclAllReduce (synchronised BatchNorm)");
    return AMDIM_OK;
}

/* A training step of a group with --sync-bn: the BatchNorm kernels sum
 * their statistics over the ranks while `on`; never in evaluation. */
static void bn_sync_set(amdim_model *m, int on)
{
    cuda_state *c = m->bs;
    on = on && m->comm && m->comm->sync_bn;
    c->ctx.bn_sync = on ? nccl_bn_sync : NULL;
    c->ctx.bn_sync_arg = on ? m : NULL;
    c->ctx.ranks = on ? m->comm->size : 1;
}

/* An asynchronous NCCL failure (a peer lost, a network error), once the
 * step's work is done. */
static int nccl_check(amdim_model *m)
{
    ncclResult_t async = ncclSuccess;
    NC(ncclCommGetAsyncError(CS(m)->nccl, &async), "ncclCommGetAsyncError");
    NC(async, "ncclCommGetAsyncError (asynchronous)");
    return AMDIM_OK;
}
#undef NC
#else
/* Without NCCL, amdim_model_set_comm refuses CUDA ranks: never reached. */
static int no_nccl(amdim_model *m)
{
    return MFAIL(AMDIM_E_UNSUPPORTED, "data-parallel CUDA ranks: this build has no NCCL");
}
static int nccl_open(amdim_model *m) { return no_nccl(m); }
static int gather_targets(amdim_model *m, int B) { (void)B; return no_nccl(m); }
static int scatter_target_grads(amdim_model *m, int B) { (void)B; return no_nccl(m); }
static int reduce_device(amdim_model *m) { return no_nccl(m); }
static int reduce_device_tail(amdim_model *m) { return no_nccl(m); }
static int bucket_launch(amdim_model *m, int u) { (void)u; return no_nccl(m); }
static int nccl_check(amdim_model *m) { return no_nccl(m); }
static void bn_sync_set(amdim_model *m, int on) { (void)m, (void)on; }
#endif

/* ---- inputs ------------------------------------------------------------------------ */

/* Device uint8 (B, S, S, 3) -> x (B, S, S, in_ch) activations, normalised
 * (channels past 3 zero: plan.h, amdim_cuda_in_channels). */
static int normalise(amdim_model *m, const uint8_t *u8, int B, void *x)
{
    int S = m->cfg.encoder_size;
    float scale[3], shift[3];
    for (int c = 0; c < 3; c++) {
        scale[c] = 1.0f / (255.0f * m->cfg.std[c]);
        shift[c] = m->cfg.mean[c] / m->cfg.std[c];
    }
    return amdim_normalise_u8_cuda(X(m), u8, (size_t)B * S * S, scale, shift, amdim_cuda_in_channels((int)ES(m)), x);
}

static int load_u8(amdim_model *m, const uint8_t *u8, int B, void *x)
{
    const amdim_cuda_plan *P = &CS(m)->plan;
    int S = m->cfg.encoder_size;
    TRY(copy(m, A(m, P->u8), u8, (size_t)B * S * S * 3, cudaMemcpyHostToDevice));
    return normalise(m, (const uint8_t *)(const void *)A(m, P->u8), B, x);
}

static int load_input(amdim_model *m, const amdim_step_input *in, int v)
{
    cuda_state *c = m->bs;
    const amdim_cuda_plan *P = &c->plan;
    int S = m->cfg.encoder_size, B = in->batch;
    if (in->staged) { /* the copy stream's copy, normalised on the compute stream */
        int s = in->staged - 1;
        CU(cudaStreamWaitEvent(c->stream, c->copied[s], 0), "cudaStreamWaitEvent");
        TRY(normalise(m, c->input[s] + (size_t)v * B * S * S * 3, B, A(m, P->x[v])));
        if (v == 1)
            CU(cudaEventRecord(c->consumed[s], c->stream), "cudaEventRecord");
        return AMDIM_OK;
    }
    if (in->u8[v])
        return load_u8(m, in->u8[v], B, A(m, P->x[v]));
    /* (B, 3, S, S) float via the scratch (float staging, plan.h) */
    TRY(copy(m, A(m, P->scratch), in->f32[v], (size_t)B * 3 * S * S * sizeof(float), cudaMemcpyHostToDevice));
    return amdim_nchw_to_nhwc_cuda(X(m), A(m, P->scratch), B, 3, S * S, P->in_ch, A(m, P->x[v]));
}

/* ---- the backend functions ----------------------------------------------------------- */

/* The rank on this machine an MPI or Slurm launcher gave the process, or
 * -1 when none did. */
static int local_rank(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        char *end;
        long r = v && *v ? strtol(v, &end, 10) : -1;
        if (v && *v && !*end && r >= 0 && r < 1 << 20)
            return (int)r;
    }
    return -1;
}

int amdim_cuda_available(char *why, size_t n)
{
    int count = 0; /* left unwritten on failure */
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(why, n, "cudaGetDeviceCount(): %s", cudaGetErrorString(e));
        return 0;
    }
    if (count < 1) {
        snprintf(why, n, "no CUDA device");
        return 0;
    }
    /* several ranks on a machine with several GPUs and no CUDA_VISIBLE_DEVICES:
     * each takes GPU (local rank mod count), before any context is made */
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    int lr = local_rank();
    if (lr >= 0 && count > 1 && !(visible && *visible) && (e = cudaSetDevice(lr % count)) != cudaSuccess) {
        snprintf(why, n, "cudaSetDevice(%d) for local rank %d: %s", lr % count, lr, cudaGetErrorString(e));
        return 0;
    }
    cudnnHandle_t h;
    cudnnStatus_t st = cudnnCreate(&h);
    if (st != CUDNN_STATUS_SUCCESS) {
        snprintf(why, n, "cudnnCreate(): %s", cudnnGetErrorString(st));
        return 0;
    }
    cudnnDestroy(h);
    return 1;
}

static int cuda_push(amdim_model *m);

/* The loader's rings are shared memory (memfd, MAP_SHARED, page-aligned):
 * page-locked once here, every view copy from them is DMA. */
static int cuda_register_host(amdim_model *m, void *base, size_t bytes)
{
    CU(cudaHostRegister(base, bytes, cudaHostRegisterDefault), "cudaHostRegister");
    return AMDIM_OK;
}

static void cuda_unregister_host(amdim_model *m, void *base)
{
    (void)m;
    cudaHostUnregister(base);
}

/* The copy of a batch into input slot `slot`, on the copy stream, once
 * the compute stream has read the slot's previous batch. */
static int cuda_stage_input(amdim_model *m, int slot, const uint8_t *v1, const uint8_t *v2, int B)
{
    cuda_state *c = m->bs;
    size_t S = (size_t)m->cfg.encoder_size, view = (size_t)B * S * S * 3;
    if (c->input_cap[slot] < 2 * view) { /* grown for a larger batch, the other slot kept: streams idle first */
        CU(cudaStreamSynchronize(c->copy), "cudaStreamSynchronize");
        CU(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
        cudaFree(c->input[slot]);
        c->input[slot] = NULL;
        c->input_cap[slot] = 0;
        cudaError_t e = cudaMalloc((void **)&c->input[slot], 2 * view);
        if (e != cudaSuccess) {
            c->input[slot] = NULL;
            return cuda_fail(m, e, "cudaMalloc (input slot)");
        }
        c->input_cap[slot] = 2 * view;
    }
    CU(cudaStreamWaitEvent(c->copy, c->consumed[slot], 0), "cudaStreamWaitEvent");
    CU(cudaMemcpyAsync(c->input[slot], v1, view, cudaMemcpyHostToDevice, c->copy), "cudaMemcpyAsync (view 1)");
    CU(cudaMemcpyAsync(c->input[slot] + view, v2, view, cudaMemcpyHostToDevice, c->copy), "cudaMemcpyAsync (view 2)");
    CU(cudaEventRecord(c->copied[slot], c->copy), "cudaEventRecord");
    return AMDIM_OK;
}

static int cuda_stage_wait(amdim_model *m, int slot)
{
    CU(cudaEventSynchronize(CS(m)->copied[slot]), "cudaEventSynchronize (input copy)");
    return AMDIM_OK;
}

/* fp32: float activations, FMA convolutions and pedantic fp32 GEMMs (the
 * CPU parity path); bf16: bfloat16 activations and operands, tensor cores
 * with fp32 accumulation (see the top of this file). A change of type
 * gives up the last step's outputs (the arena is rebuilt for the new
 * type at the next step) and rewrites the weights' compute copies. */
static int cuda_set_precision(amdim_model *m, int bf16)
{
    cuda_state *c = m->bs;
    bf16 = !!bf16;
    if (bf16) { /* bf16 tensor-core math and CUDNN_DATA_BFLOAT16 convolutions need sm_80 or later */
        int dev = 0, major = 0, minor = 0;
        CU(cudaGetDevice(&dev), "cudaGetDevice");
        CU(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
        CU(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
        if (major < 8)
            return MFAIL(AMDIM_E_UNSUPPORTED,
                         "bf16: GPU %d has compute capability %d.%d; bf16 storage needs 8.0 or later (--precision fp32)",
                         dev, major, minor);
    }
    cublasStatus_t st = cublasSetMathMode(c->blas, bf16 ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH);
    if (st != CUBLAS_STATUS_SUCCESS)
        return MFAIL(AMDIM_E_IO, "cublasSetMathMode(): %s", cublasGetStatusString(st));
    CU(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize"); /* nothing in flight reads the old types */
    if (bf16 != c->bf16)
        m->batch = 0;
    amdim_conv_set_bf16(&c->conv, bf16);
    if (bf16 != c->bf16)
        c->prepared_batch = c->synced_batch = 0;
    c->bf16 = bf16;
    c->ctx.bf16 = bf16;
    c->es = bf16 ? 2 : sizeof(float);
    /* other GEMM kernels and convolution algorithms: capture again after a warm-up */
    drop_graph(&c->fb_graph, &c->fb_warm);
    for (int i = 0; i < 2; i++)
        drop_graph(&c->adam_graph[i], &c->adam_warm[i]);
    TRY(refresh_copies(m));
    return finish(m);
}

static void cuda_close(amdim_model *m)
{
    cuda_state *c = m->bs;
    if (!c)
        return;
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    if (c->copy)
        cudaStreamSynchronize(c->copy);
    drop_graph(&c->fb_graph, &c->fb_warm);
    for (int i = 0; i < 2; i++)
        drop_graph(&c->adam_graph[i], &c->adam_warm[i]);
#ifdef AMDIM_HAVE_NCCL
    nccl_close(c);
#endif
    for (int i = 0; i < 2; i++) {
        cudaFree(c->input[i]);
        if (c->copied[i])
            cudaEventDestroy(c->copied[i]);
        if (c->consumed[i])
            cudaEventDestroy(c->consumed[i]);
    }
    cudaFree(c->act);
    cudaFree(c->params);
    amdim_conv_close(&c->conv);
    if (c->blas)
        cublasDestroy(c->blas);
    for (int i = 0; i < c->n_lt; i++)
        lt_plan_free(&c->lt_plans[i]);
    free(c->lt_plans);
    if (c->lt)
        cublasLtDestroy(c->lt);
    cudaFree(c->blas_ws);
    cudaFree(c->scalars);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    if (c->copy)
        cudaStreamDestroy(c->copy);
    amdim_cuda_plan_free(&c->plan);
    amdim_cuda_param_plan_free(&c->pp);
    free(c->stats);
    free(c->labels2);
    free(c);
    m->bs = NULL;
}

static int cuda_open(amdim_model *m)
{
    cuda_state *c = calloc(1, sizeof *c);
    if (!c)
        return MFAIL(AMDIM_E_NOMEM, "out of memory");
    m->bs = c;
    c->ctx.err = m->err;
    c->ctx.errn = sizeof m->err;
    c->es = sizeof(float); /* fp32 until set_precision */
    CU(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    c->ctx.stream = c->stream;
    CU(cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking), "cudaStreamCreateWithFlags (copy)");
    for (int i = 0; i < 2; i++) {
        CU(cudaEventCreateWithFlags(&c->copied[i], cudaEventDisableTiming), "cudaEventCreateWithFlags");
        CU(cudaEventCreateWithFlags(&c->consumed[i], cudaEventDisableTiming), "cudaEventCreateWithFlags");
    }
    cublasStatus_t bs = cublasCreate(&c->blas);
    if (bs == CUBLAS_STATUS_SUCCESS)
        bs = cublasSetStream(c->blas, c->stream);
    if (bs == CUBLAS_STATUS_SUCCESS) /* fp32 GEMMs stay fp32 (no TF32) */
        bs = cublasSetMathMode(c->blas, CUBLAS_PEDANTIC_MATH);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return MFAIL(AMDIM_E_IO, "cublasCreate(): %s", cublasGetStatusString(bs));
    /* after cublasSetStream (which resets it): eager and captured GEMMs see the same workspace */
    cudaError_t e = cudaMalloc(&c->blas_ws, BLAS_WORKSPACE_BYTES);
    if (e != cudaSuccess) {
        c->blas_ws = NULL;
        return cuda_fail(m, e, "cudaMalloc (cuBLAS workspace)");
    }
    bs = cublasSetWorkspace(c->blas, c->blas_ws, BLAS_WORKSPACE_BYTES);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return MFAIL(AMDIM_E_IO, "cublasSetWorkspace(): %s", cublasGetStatusString(bs));
    if ((bs = cublasLtCreate(&c->lt)) != CUBLAS_STATUS_SUCCESS) {
        c->lt = NULL;
        return MFAIL(AMDIM_E_IO, "cublasLtCreate(): %s", cublasLtGetStatusString(bs));
    }
    if ((e = cudaMalloc((void **)&c->scalars, sizeof *c->scalars)) != cudaSuccess) {
        c->scalars = NULL;
        return cuda_fail(m, e, "cudaMalloc (step scalars)");
    }
    TRY(amdim_conv_open(&c->conv, c->stream, CUDNN_WORKSPACE_BYTES, m->err, sizeof m->err));
    if (amdim_cuda_param_plan_build(&c->pp, &m->arch))
        return MFAIL(AMDIM_E_NOMEM, "out of memory (parameter plan)");
    e = cudaMalloc((void **)&c->params, c->pp.total * sizeof(float));
    if (e != cudaSuccess) {
        c->params = NULL;
        return MFAIL(AMDIM_E_NOMEM, "cudaMalloc(%zu MiB of parameters): %s", c->pp.total * sizeof(float) >> 20,
                     cudaGetErrorString(e));
    }
    return cuda_push(m);
}

/* A training step's device work once its inputs (x, labels, draws, device
 * scalars) are in place: gradients zeroed, both views forward, the
 * objective, the probes, both views backward. What the step's graph holds. */
static int forward_backward_body(amdim_model *m, int B)
{
    TRY(zero(m, CS(m)->params + CS(m)->pp.grads, m->arch.grads_size * sizeof(float)));
    for (int v = 0; v < 2; v++)
        TRY(encoder_forward(m, v, B, 1, 1));
    int stage = m->arch.nlayers + AMDIM_STAGE_OBJECTIVE_OFFSET, group = CS(m)->plan.ranks > 0;
    double t0 = now_if(m);
    if (group)
        TRY(gather_targets(m, B));
    TRY(objectives(m, B));
    if (group)
        TRY(scatter_target_grads(m, B));
    prof(m, stage, 0, t0, B);
    prof(m, stage, 1, amdim_now(), B); /* the backward FLOPs; its time is in the forward's */
    TRY(gather_r1(m, 0, B));
    TRY(gather_r1(m, 1, B));
    TRY(probes_train(m, B));
    if (group)
        TRY(bucket_launch(m, m->arch.nlayers + 2));
    for (int v = 0; v < 2; v++)
        TRY(encoder_backward(m, v, B, group && v == 1));
    return group ? reduce_device_tail(m) : AMDIM_OK;
}

/* Inputs first (eager: host copies, the staged slot's events), then the
 * body (a graph after the warm-up; eager with a group), then the
 * statistics to the host (summed over the group). */
static int cuda_forward_backward(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d,
                                 amdim_step_stats *st)
{
    cuda_state *c = m->bs;
    int B = in->batch, valid;
    double valid_all;
    TRY(ensure_buffers_for(m, B, 1));
    TRY(prepare_convs(m, B, 1));
    TRY(sync_convs(m, B, 1));
    if (m->comm)
        TRY(nccl_open(m));
    TRY(upload_step(m, B, 2 * B, in->labels, d, &valid, &valid_all));
    for (int v = 0; v < 2; v++)
        TRY(load_input(m, in, v));
    if (m->comm) {
        bn_sync_set(m, 1);
        int rc = forward_backward_body(m, B);
        bn_sync_set(m, 0);
        TRY(rc);
    } else
        TRY(graph_run(m, &c->fb_graph, &c->fb_warm, forward_backward_body, B));
    TRY(pull_stats(m));
    nce_stats(m, B, st);
    cls_stats(m, 2 * B, valid, valid_all, st);
    if (m->comm) {
        TRY(nccl_check(m));
        TRY(reduce_stats(m, st));
    }
    st->total = st->nce_1t5 + st->nce_1t7 + st->nce_5t5 + st->reg + st->cls_mlp + st->cls_lin;
    return AMDIM_OK;
}

static int cuda_probe_step(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d,
                           amdim_step_stats *st)
{
    int B = in->batch, valid;
    double valid_all;
    TRY(ensure_buffers(m, B));
    TRY(prepare_convs(m, B, 0));
    TRY(sync_convs(m, B, 0));
    if (m->comm)
        TRY(nccl_open(m));
    TRY(zero(m, CS(m)->params + CS(m)->pp.grads, m->arch.grads_size * sizeof(float)));
    TRY(upload_step(m, B, 2 * B, in->labels, d, &valid, &valid_all));
    for (int v = 0; v < 2; v++) { /* frozen encoder: eval mode */
        TRY(load_input(m, in, v));
        TRY(encoder_forward(m, v, B, 0, 0));
        TRY(gather_r1(m, v, B));
    }
    bn_sync_set(m, 1); /* the probe MLP's BatchNorm */
    int rc = probes_train(m, B);
    bn_sync_set(m, 0);
    TRY(rc);
    if (m->comm)
        TRY(reduce_device(m));
    TRY(pull_stats(m));
    cls_stats(m, 2 * B, valid, valid_all, st);
    if (m->comm) {
        TRY(nccl_check(m));
        TRY(reduce_stats(m, st));
    }
    st->total = st->cls_mlp + st->cls_lin;
    return AMDIM_OK;
}

/* Adam over the trainable tensors with the hyper-parameters in the device scalars. */
static int adam_body(amdim_model *m, int probes_only)
{
    cuda_state *c = m->bs;
    for (int i = 0; i < m->arch.ntensors; i++) {
        const amdim_tensor *t = &m->arch.tensors[i];
        if (!t->trainable || (probes_only && !t->probe))
            continue;
        float *mm = c->params + c->pp.adam_m + t->goffset, *vv = c->params + c->pp.adam_v + t->goffset;
        uint16_t *wbf = c->bf16 ? (uint16_t *)(void *)(c->params + c->pp.wbf) + t->offset : NULL;
        TRY(amdim_adam_cuda(X(m), W(m, i), G(m, i), mm, vv, t->size, &c->scalars->adam, wbf));
        TRY(refresh_ohwi(m, i));
    }
    return AMDIM_OK;
}

static int cuda_adam(amdim_model *m, const amdim_adam_hparams *h, int probes_only)
{
    cuda_state *c = m->bs;
    int k = probes_only ? 1 : 0;
    TRY(copy(m, &c->scalars->adam, h, sizeof *h, cudaMemcpyHostToDevice));
    TRY(graph_run(m, &c->adam_graph[k], &c->adam_warm[k], adam_body, k));
    return finish(m);
}

static int cuda_evaluate(amdim_model *m, const uint8_t *images, int B, float *features, float *lm, float *ll)
{
    TRY(ensure_buffers(m, B));
    TRY(prepare_convs(m, B, 0));
    const amdim_cuda_plan *P = &CS(m)->plan;
    int R = m->cfg.n_rkhs, K = m->cfg.n_classes;
    m->batch = 0; /* the training outputs are overwritten */
    TRY(load_u8(m, images, B, A(m, P->x[0])));
    TRY(encoder_forward(m, 0, B, 0, 0));
    TRY(gather_r1(m, 0, B));
    if (features) { /* as float, via the scratch */
        TRY(amdim_act_to_f32_cuda(X(m), A(m, P->feat), (size_t)B * R, AF(m, P->scratch)));
        TRY(copy(m, features, A(m, P->scratch), (size_t)B * R * sizeof(float), cudaMemcpyDeviceToHost));
    }
    if (lm || ll) {
        TRY(probes_forward(m, B, 0));
        if (lm)
            TRY(copy(m, lm, A(m, P->logits[0]), (size_t)B * K * sizeof(float), cudaMemcpyDeviceToHost));
        if (ll)
            TRY(copy(m, ll, A(m, P->logits[1]), (size_t)B * K * sizeof(float), cudaMemcpyDeviceToHost));
    }
    return finish(m);
}

static int cuda_refresh_bn(amdim_model *m, const uint8_t *images, int B, const amdim_step_draws *d)
{
    TRY(ensure_buffers(m, B));
    TRY(prepare_convs(m, B, 0));
    m->batch = 0;
    TRY(upload_step(m, B, B, NULL, d, NULL, NULL));
    TRY(load_u8(m, images, B, A(m, CS(m)->plan.x[0])));
    TRY(encoder_forward(m, 0, B, 1, 1));
    TRY(gather_r1(m, 0, B));
    TRY(probes_forward(m, B, 1));
    return finish(m);
}

/* output / logits take a const model: only m->err and device scratch change. */
static int cuda_output(const amdim_model *cm, int view, int which, float *out)
{
    amdim_model *m = (amdim_model *)cm;
    const amdim_cuda_plan *P = &CS(m)->plan;
    int B = m->batch, R = m->cfg.n_rkhs, hw = which == 1 ? 1 : which == 5 ? 25 : 49;
    const void *src = which == 1 ? A(m, P->layers[view][m->arch.nlayers - 1].out)
                                 : A(m, P->heads[view][which == 5 ? 0 : 1].out);
    float *t = AF(m, P->scratch); /* (B, R, hw) float: the NCHW the interface promises */
    TRY(amdim_nhwc_to_nchw_cuda(X(m), src, B, R, hw, t));
    return copy(m, out, t, (size_t)B * R * hw * sizeof(float), cudaMemcpyDeviceToHost);
}

static int cuda_logits(const amdim_model *cm, int head, float *out)
{
    amdim_model *m = (amdim_model *)cm;
    return copy(m, out, A(m, CS(m)->plan.logits[head]), (size_t)2 * m->batch * m->cfg.n_classes * sizeof(float),
                cudaMemcpyDeviceToHost);
}

static int cuda_pull(amdim_model *m)
{
    cuda_state *c = m->bs;
    size_t ws = m->arch.weights_size * sizeof(float), gs = m->arch.grads_size * sizeof(float);
    TRY(copy(m, m->weights, c->params + c->pp.weights, ws, cudaMemcpyDeviceToHost));
    TRY(copy(m, m->grads, c->params + c->pp.grads, gs, cudaMemcpyDeviceToHost));
    TRY(copy(m, m->adam_m, c->params + c->pp.adam_m, gs, cudaMemcpyDeviceToHost));
    return copy(m, m->adam_v, c->params + c->pp.adam_v, gs, cudaMemcpyDeviceToHost);
}

static int cuda_push(amdim_model *m)
{
    cuda_state *c = m->bs;
    size_t ws = m->arch.weights_size * sizeof(float), gs = m->arch.grads_size * sizeof(float);
    TRY(copy(m, c->params + c->pp.weights, m->weights, ws, cudaMemcpyHostToDevice));
    TRY(copy(m, c->params + c->pp.grads, m->grads, gs, cudaMemcpyHostToDevice));
    TRY(copy(m, c->params + c->pp.adam_m, m->adam_m, gs, cudaMemcpyHostToDevice));
    TRY(copy(m, c->params + c->pp.adam_v, m->adam_v, gs, cudaMemcpyHostToDevice));
    TRY(refresh_copies(m));
    return finish(m);
}

static size_t cuda_algorithms(const amdim_model *m, char *buf, size_t n)
{
    (void)m;
    return amdim_conv_table_text(buf, n);
}

const amdim_backend amdim_backend_cuda = {
    .name = "cuda",
    .open = cuda_open,
    .close = cuda_close,
    .forward_backward = cuda_forward_backward,
    .probe_step = cuda_probe_step,
    .adam = cuda_adam,
    .evaluate = cuda_evaluate,
    .refresh_bn = cuda_refresh_bn,
    .output = cuda_output,
    .logits = cuda_logits,
    .register_host = cuda_register_host,
    .unregister_host = cuda_unregister_host,
    .stage_input = cuda_stage_input,
    .stage_wait = cuda_stage_wait,
    .set_precision = cuda_set_precision,
    .pull = cuda_pull,
    .push = cuda_push,
    .algorithms = cuda_algorithms,
};
