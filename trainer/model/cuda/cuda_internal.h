/* Private to the CUDA backend: its state, the accessors every part uses
 * and the functions the parts share. The backend (docs/cuda.md) is one
 * table (backend_cuda.c) over these parts:
 *   blas.c            row-major GEMMs on cuBLAS / cuBLASLt, linear layers
 *   graphs.c          CUDA graphs of the step and of Adam
 *   encoder_cuda.c    the activation arena, filter copies, cuDNN algorithm
 *                     preparation, layers and heads forward and backward
 *   objectives_cuda.c the online probes, the six NCE directions, statistics
 *   nccl.c            data parallelism on NCCL
 *   staging.c         the input views: normalised, page-locked, staged
 *   device.c          device choice
 * Activations are NHWC, in the precision mode's type (float32, or
 * bfloat16 with es = 2); parameters, statistics, scores and logits float
 * (kernels_internal.h). Every function returns 0 or AMDIM_E_* with the
 * reason in m->err. */
#ifndef AMDIM_CUDA_INTERNAL_H
#define AMDIM_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#ifdef AMDIM_HAVE_NCCL
#include <nccl.h>
#endif

#include "backend_internal.h"
#include "conv_internal.h"
#include "kernels_internal.h"
#include "plan_internal.h"

#define CUDNN_WORKSPACE_BYTES ((size_t)256 << 20)
#define BLAS_WORKSPACE_BYTES ((size_t)32 << 20) /* cuBLAS's own (cublasSetWorkspace): none allocated in a capture */

/* The per-step scalars kernels read from device memory, written before
 * each step (outside any graph) so that a replayed graph uses this step's. */
typedef struct {
    double inv_valid;        /* the probes' loss: 1 / labelled rows (0: none) */
    amdim_adam_hparams adam; /* this update's learning rate and bias corrections */
} amdim_cuda_scalars;

/* A cuBLASLt GEMM's epilogue (amdim_cuda_lt_gemm), fused into the GEMM's
 * store of D: none (D = alpha op(A) op(B) + beta C, C may differ from D:
 * the residual units' shortcuts), ReLU with its bit-mask written
 * (RELU_AUX), the ReLU gradient from that mask (DRELU: D zero where the
 * forward value was not positive), or a float bias per output column
 * (BIAS). The masks are cuBLASLt's own format, amdim_cuda_relu_mask_bytes
 * (plan_internal.h) each; only cuBLASLt reads them. */
enum { AMDIM_CUDA_EP_NONE = 0, AMDIM_CUDA_EP_RELU_AUX, AMDIM_CUDA_EP_DRELU, AMDIM_CUDA_EP_BIAS };
typedef struct {
    int kind;
    const float *bias; /* BIAS: (N) */
    void *mask;        /* RELU_AUX (written), DRELU (read) */
} amdim_cuda_epilogue;

/* What a cuBLASLt plan is made for: the layout, C's type, the epilogue
 * and every pointer's alignment (the algorithm the heuristic returns may
 * rely on it: cublasLt.h). Zeroed before it is filled: plans are found by
 * memcmp. */
typedef struct {
    amdim_cuda_gemm_layout l;
    int c_f32, epilogue;
    uint32_t align[5]; /* first and second column-major operand, C, D, the bias or the mask */
} amdim_cuda_lt_key;

/* A GEMM planned on cuBLASLt (the NCE scores, the fused linear layers):
 * its descriptors and the heuristic's algorithm, or none (have_algo 0:
 * the caller computes it unfused). */
typedef struct {
    amdim_cuda_lt_key key;
    amdim_cuda_gemm_layout l;
    int bf16; /* the precision mode */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c; /* c: C and D */
    cublasLtMatmulAlgo_t algo;
    int have_algo;
} amdim_cuda_lt_plan;

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
    amdim_cuda_lt_plan *lt_plans; /* one per shape and precision mode, made on first use */
    int n_lt, cap_lt;
    int bf16;  /* precision mode: bfloat16 activations and GEMM / convolution operands (fp32 accumulation) */
    int fuse;  /* the fused GEMMs (amdim_cuda_lt_gemm's epilogues and C != D); AMDIM_CUDA_FUSE=0 at open: none */
    size_t es; /* bytes per activation: 4, or 2 in the bf16 mode */
    amdim_conv conv;
    amdim_cuda_ctx ctx;
    amdim_cuda_param_plan pp;
    float *params; /* parameter arena (pp.total floats) */
    amdim_cuda_plan plan;
    void *act;     /* activation arena (plan.total bytes) for plan.batch and es */
    double *stats; /* host copy of the plan's stats */
    int32_t *labels2;
    amdim_cuda_scalars *scalars; /* device */
    /* Adam's chunks over the trainable tensors [0] and the probes' [1] (device; adam.cu) */
    amdim_adam_chunk *adam_chunks[2];
    uint32_t n_adam_chunks[2];
    size_t adam_elems[2];
    void *blas_ws; /* cuBLAS and cuBLASLt workspace (one stream uses it), BLAS_WORKSPACE_BYTES */
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
} amdim_cuda_state;

/* A CUDA call's failure as a status: "call(): message (name)" in m->err. */
int amdim_cuda_fail(amdim_model *m, cudaError_t e, const char *call);
/* Returns amdim_cuda_fail(m, ...) from the calling function when call fails. */
#define AMDIM_CU(call, name)                            \
    do {                                                \
        cudaError_t amdim_cu_ = (call);                 \
        if (amdim_cu_ != cudaSuccess)                   \
            return amdim_cuda_fail(m, amdim_cu_, name); \
    } while (0)

/* ---- accessors ---- */

static inline amdim_cuda_state *cuda_of(const amdim_model *m) { return m->bs; }
/* Tensor i's float master, and its gradient. */
static inline float *weight(const amdim_model *m, int i)
{
    return cuda_of(m)->params + cuda_of(m)->pp.weights + m->arch.tensors[i].offset;
}
static inline float *grad(const amdim_model *m, int i)
{
    AMDIM_ASSERT(m->arch.tensors[i].has_grad);
    return cuda_of(m)->params + cuda_of(m)->pp.grads + m->arch.tensors[i].goffset;
}
/* A GEMM's weight operand: the float master, or its bf16 copy in the bf16
 * mode (at the master's index: tensor offsets are multiples of
 * AMDIM_TENSOR_ALIGN = 16, so every copy starts 32-byte aligned). */
static inline const void *gemm_weight(const amdim_model *m, int i)
{
    const amdim_cuda_state *c = cuda_of(m);
    if (!c->bf16)
        return weight(m, i);
    return (const uint16_t *)(const void *)(c->params + c->pp.wbf) + m->arch.tensors[i].offset;
}
/* The OHWI copy of a cuDNN filter, in the activation type. */
static inline void *filter_ohwi(const amdim_model *m, int i)
{
    AMDIM_ASSERT(cuda_of(m)->pp.ohwi[i] != AMDIM_CUDA_NONE);
    return cuda_of(m)->params + cuda_of(m)->pp.ohwi[i];
}
/* The activation buffer at byte offset off (plan_internal.h); act_at:
 * elems activations into it; act_f32: a float buffer. */
static inline void *act(const amdim_model *m, size_t off)
{
    AMDIM_ASSERT(off != AMDIM_CUDA_NONE);
    return (char *)cuda_of(m)->act + off;
}
static inline void *act_at(const amdim_model *m, size_t off, size_t elems)
{
    return (char *)act(m, off) + elems * cuda_of(m)->es;
}
static inline float *act_f32(const amdim_model *m, size_t off) { return act(m, off); }
/* Bytes per activation: 4, or 2 in the bf16 mode. */
static inline size_t act_bytes(const amdim_model *m) { return cuda_of(m)->es; }
/* The kernels' context (stream, error buffer, activation type), and the
 * same with float activations for a kernel over a float buffer. */
static inline const amdim_cuda_ctx *kctx(const amdim_model *m) { return &cuda_of(m)->ctx; }
static inline amdim_cuda_ctx kctx_f32(const amdim_model *m)
{
    amdim_cuda_ctx f = cuda_of(m)->ctx;
    f.bf16 = 0;
    return f;
}
/* A BatchNorm's parameters, statistics and gradients on the device. */
static inline amdim_cuda_bn bn_view(const amdim_model *m, amdim_bn_ref r)
{
    amdim_cuda_bn b = {weight(m, r.t),     weight(m, r.t + 1), weight(m, r.t + 2), weight(m, r.t + 3),
                       weight(m, r.t + 4), grad(m, r.t),       grad(m, r.t + 1)};
    return b;
}
/* The deterministic reductions' scratch (doubles). */
static inline double *bn_scratch(const amdim_model *m) { return (double *)(void *)act(m, cuda_of(m)->plan.bn_scratch); }

/* ---- backend_cuda.c ---- */

/* Waits for the compute stream: asynchronous failures become a status. */
int amdim_cuda_finish(amdim_model *m);
/* A copy / clear on the compute stream, checked to lie inside one planned
 * activation buffer when it touches the arena; device to host waits. */
int amdim_cuda_copy(amdim_model *m, void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind);
int amdim_cuda_zero(amdim_model *m, void *p, size_t bytes);
/* Profiling (m->profile): a stage's start time after a synchronisation (0
 * otherwise), and its end, reported to amdim_model_prof_add. */
double amdim_cuda_tick(amdim_model *m);
void amdim_cuda_prof(amdim_model *m, int stage, int backward, double t0, int B);

/* ---- blas.c ---- */

enum { C_ACT = 0, C_F32 = 1 }; /* a GEMM's C: activations, or float */
/* Row-major C (M, N) = alpha op(A) op(B) + beta C, as cblas_sgemm(CblasRowMajor, ...). */
int amdim_cuda_gemm(amdim_model *m, int ta, int tb, int M, int N, int K, float alpha, const void *a, int lda,
                    const void *b, int ldb, float beta, void *c, int ldc, int c_f32);
/* Row-major D (M, N) = alpha op(A) op(B) + beta C through epilogue ep on
 * cuBLASLt (C and D the same shape and ldc; C == D when beta is 0).
 * AMDIM_E_UNSUPPORTED, with nothing enqueued and nothing in m->err, when
 * the heuristic has no algorithm for it, or it is a fusion (an epilogue,
 * or C != D) and the model was opened with AMDIM_CUDA_FUSE=0: the caller
 * computes it unfused. */
int amdim_cuda_lt_gemm(amdim_model *m, int ta, int tb, int M, int N, int K, float alpha, const void *a, int lda,
                       const void *b, int ldb, float beta, const void *c, void *d, int ldc, int c_f32,
                       const amdim_cuda_epilogue *ep);
/* *supported: whether amdim_cuda_lt_gemm would run these operands (planned now if new). */
int amdim_cuda_lt_supported(amdim_model *m, int ta, int tb, int M, int N, int K, const void *a, int lda, const void *b,
                            int ldb, const void *c, const void *d, int ldc, int c_f32, const amdim_cuda_epilogue *ep,
                            int *supported);
/* The same on cuBLASLt for the NCE score GEMMs (amdim_cuda_gemm where its heuristic has no algorithm). */
int amdim_cuda_nce_gemm(amdim_model *m, int ta, int tb, int M, int N, int K, float alpha, const void *a, int lda,
                        const void *b, int ldb, float beta, void *c, int ldc, int c_f32);
/* y (n, out) = x (n, in) W^T [+ bias] (+ beta y); y_f32: y float (logits). */
int amdim_cuda_linear_forward(amdim_model *m, const void *x, size_t n, int in, const void *w, const float *bias,
                              int out, float beta, void *y, int y_f32);
/* dw += dy^T x; dbias += column sums of dy; dx = dy W (+ beta dx) when dx. */
int amdim_cuda_linear_backward(amdim_model *m, const void *x, size_t n, int in, const void *w, int out, const void *dy,
                               void *dx, float beta, float *dw, float *dbias);
void amdim_cuda_lt_plan_free(amdim_cuda_lt_plan *p);

/* ---- graphs.c ---- */

void amdim_cuda_graph_drop(cudaGraphExec_t *g, int *warm);
/* body(m, arg) eagerly, captured into *exec, or replayed (graphs.c). */
int amdim_cuda_graph_run(amdim_model *m, cudaGraphExec_t *exec, int *warm, int (*body)(amdim_model *, int), int arg);

/* ---- encoder_cuda.c ---- */

/* The activation arena for batch B (group: a training step, with a
 * process group's global target buffers). */
int amdim_cuda_ensure_buffers_for(amdim_model *m, int B, int group);
int amdim_cuda_ensure_buffers(amdim_model *m, int B);
int amdim_cuda_refresh_ohwi(amdim_model *m, int i);
int amdim_cuda_refresh_copies(amdim_model *m);
/* Every cuDNN convolution of a step at B gets its algorithm before the
 * step: prepare measures what the process's table lacks; choose, with a
 * group, has rank 0 measure and the other ranks adopt its choices (one
 * broadcast, with rank 0's status, per batch size). */
int amdim_cuda_prepare_convs(amdim_model *m, int B, int backward);
/* A library call into the launch list (amdim_cuda_ctx.trace): its bytes
 * moved to and from device memory and its FLOPs. */
void amdim_cuda_note(const amdim_model *m, const char *op, double bytes, double flops);
int amdim_cuda_choose_convs(amdim_model *m, int B, int backward);
int amdim_cuda_encoder_forward(amdim_model *m, int v, int B, int train, int heads);
int amdim_cuda_encoder_backward(amdim_model *m, int v, int B, int launch);
int amdim_cuda_gather_r1(amdim_model *m, int v, int B);
int amdim_cuda_bn_forward(amdim_model *m, amdim_bn_ref r, const void *x, size_t n, int C, int train, void *y,
                          float *mean, float *istd);

/* ---- objectives_cuda.c ---- */

int amdim_cuda_group_size(const amdim_model *m);
int amdim_cuda_comm_fail(amdim_model *m, int rc, const char *what);
int amdim_cuda_upload_step(amdim_model *m, int B, int rows, const int32_t *labels, const amdim_step_draws *d,
                           int *labelled, double *valid_all);
int amdim_cuda_probes_forward(amdim_model *m, int n, int train);
int amdim_cuda_probes_train(amdim_model *m, int B);
void amdim_cuda_cls_stats(amdim_model *m, int n, int valid, double valid_all, amdim_step_stats *st);
int amdim_cuda_objectives(amdim_model *m, int B);
void amdim_cuda_nce_stats(amdim_model *m, int B, amdim_step_stats *st);
int amdim_cuda_pull_stats(amdim_model *m);

/* ---- nccl.c ---- */

int amdim_cuda_reduce_stats(amdim_model *m, amdim_step_stats *st);
int amdim_cuda_nccl_open(amdim_model *m);
void amdim_cuda_nccl_close(amdim_cuda_state *c);
int amdim_cuda_nccl_check(amdim_model *m);
int amdim_cuda_gather_targets(amdim_model *m, int B);
int amdim_cuda_scatter_target_grads(amdim_model *m, int B);
int amdim_cuda_bucket_launch(amdim_model *m, int u);
int amdim_cuda_reduce_device(amdim_model *m);
int amdim_cuda_reduce_device_tail(amdim_model *m);
void amdim_cuda_bn_sync_set(amdim_model *m, int on);

/* ---- staging.c ---- */

int amdim_cuda_load_u8(amdim_model *m, const uint8_t *u8, int B, void *x);
int amdim_cuda_load_input(amdim_model *m, const amdim_step_input *in, int v);
int amdim_cuda_register_host(amdim_model *m, void *base, size_t bytes);
void amdim_cuda_unregister_host(amdim_model *m, void *base);
int amdim_cuda_stage_input(amdim_model *m, int slot, const uint8_t *v1, const uint8_t *v2, int B);
int amdim_cuda_stage_wait(amdim_model *m, int slot);

#endif
