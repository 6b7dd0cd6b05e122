/* Private to the CUDA backend: where everything lives on the device,
 * computed on the host (pure C, tested on the CPU).
 *
 * Two arenas, one cudaMalloc each:
 *   parameters (at open): the arch blocks weights | grads | adam_m | adam_v
 *     (same layout as the host mirror, so pull / push are one copy per
 *     block; float masters), a bfloat16 copy of the weights block (wbf:
 *     uint16_t at the same per-tensor offsets; the GEMMs' operands in the
 *     bf16 mode, written by Adam), then an OHWI copy of every k x k (k > 1)
 *     convolution weight for cuDNN (layout.h; in the activation type, room
 *     for float and, for the first layer, for AMDIM_CUDA_BF16_IN_CH input
 *     channels), then one OHWI filter-gradient scratch as large as the
 *     largest such copy. Offsets count floats.
 *   activations (per batch size B and activation type, on the first step
 *     with that B): offsets and sizes count BYTES. Activations and their
 *     gradients are NHWC (B, H, W, C) of act_bytes each (4: float, 2:
 *     bfloat16); BatchNorm statistics, NCE scores, logits, masks and
 *     labels are float (int32) in both modes, the loss rows double.
 * Every buffer starts on a 256-byte boundary. */
#ifndef AMDIM_CUDA_PLAN_H
#define AMDIM_CUDA_PLAN_H

#include <stddef.h>

#include "arch_internal.h"

#define AMDIM_CUDA_NONE ((size_t)-1)

/* Channels of the stored input views and of the first convolution's
 * input: 3 with float activations; with bfloat16 ones 8, the image's 3
 * then zeros, so that cuDNN's bf16 tensor-core kernels (channels a
 * multiple of 8) take the first convolution too. */
#define AMDIM_CUDA_BF16_IN_CH 8
static inline int amdim_cuda_in_channels(int act_bytes) { return act_bytes == 2 ? AMDIM_CUDA_BF16_IN_CH : 3; }

typedef struct {
    size_t weights, grads, adam_m, adam_v; /* arch blocks */
    size_t wbf;                            /* bfloat16 copy of the weights block */
    size_t *ohwi;                          /* per tensor: its OHWI copy, or AMDIM_CUDA_NONE */
    size_t dw_ohwi;                        /* filter-gradient scratch */
    size_t total;                          /* floats */
} amdim_cuda_param_plan;

/* cuBLASLt's ReLU bit-mask of a row-major (rows, n) GEMM output: a bit
 * per element, the column-major leading dimension (bits) n rounded up to
 * 128 (cublasLt.h: CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD). */
static inline size_t amdim_cuda_relu_mask_ld(int n) { return ((size_t)n + 127) / 128 * 128; }
static inline size_t amdim_cuda_relu_mask_bytes(size_t rows, int n) { return rows * amdim_cuda_relu_mask_ld(n) / 8; }

/* 1 when layer L's first convolution runs on cuDNN (k > 1, stride > 1 or padded); the
 * rest (1x1, stride 1) are GEMMs on the OIHW = (out, in) matrix. */
int amdim_cuda_conv_uses_cudnn(const amdim_layer *L);

typedef struct {
    size_t out;    /* (B, hout, hout, cout) */
    size_t padded; /* STEM with pad: (B, hin+2p, hin+2p, cin; in_ch for the first layer) */
    size_t h1, r;  /* RES: conv1 output (only with BatchNorm: without, conv1 writes r), after [BN] ReLU:
                      (B, hout, hout, cout) */
    size_t mask;   /* RES on a GEMM without BatchNorm: the ReLU's bit-mask (amdim_cuda_relu_mask_bytes) */
    size_t mean, istd; /* (cout) */
} amdim_cuda_layer_plan;

typedef struct {
    size_t h1, r, sum, out; /* (B, hw, hw, R); h1 only with the hidden BatchNorm (else the GEMM writes r) */
    size_t mask;            /* without the hidden BatchNorm: the ReLU's bit-mask (amdim_cuda_relu_mask_bytes) */
    size_t mean1, istd1, mean2, istd2; /* (R) */
} amdim_cuda_head_plan;

typedef struct {
    int batch, nlayers;
    int act_bytes;                    /* 4: float activations, 2: bfloat16 */
    int in_ch;                        /* amdim_cuda_in_channels(act_bytes) */
    size_t u8;                        /* staging for one uint8 view (B, S, S, 3) */
    size_t x[2];                      /* normalised views (B, S, S, in_ch) */
    amdim_cuda_layer_plan *layers[2]; /* nlayers each */
    amdim_cuda_head_plan heads[2][2]; /* [view][0: 5x5, 1: 7x7] */
    size_t dr1[2], dr5[2], dr7[2];    /* gradients of r1 (B, R), r5 (B, 5, 5, R), r7 (B, 7, 7, R) */
    size_t grad_a, grad_b, scratch;   /* maxact activations each (the scratch twice that) */
    size_t dhead[2];                  /* head input gradients (B, hw, hw, cin) */
    size_t feat;                      /* r1 of both views (2B, R) */
    size_t mlp_h0, mlp_z1, mlp_a1, mlp_h2, mlp_mean, mlp_istd; /* (2B, R), (2B, H) x 3, (H) x 2 */
    size_t logits[2], dlogits;        /* (2B, K) float */
    size_t dlogits_act;               /* dlogits as activations (= dlogits with float activations) */
    size_t dtmp, dtmp2;               /* (2B, max(H, R)) */
    size_t src, dsrc;                 /* drawn r5 sources (B, R) */
    /* data parallelism over N ranks (ranks >= 1): the global batch's r5 and
     * r7 targets per view [view][0: r5, 1: r7], (N B, hw, hw, R) each - the
     * batch outermost, so rank r's (B, hw, hw, R) block starts at row r B hw
     * and an all-gather of the ranks' heads outputs fills them in place -
     * and their gradients, same shape (reduce-scattered back into dr5 /
     * dr7). AMDIM_CUDA_NONE without a group (ranks 0). */
    int ranks;
    size_t tg[2][2], dtg[2][2];
    size_t scores, dscores;           /* float (B, N B 49): this rank's sources against every target (N 1 without a group) */
    size_t dscores_act;               /* dscores as activations (= dscores with float activations) */
    size_t mask_in, mask_hidden;      /* (2B, R), (2B, H) */
    size_t labels2, src5;             /* int32 (2B) each */
    size_t stats;                     /* doubles: 6 directions x 2B, then 2 heads x 3 x 2B */
    size_t bn_scratch;                /* doubles: the largest per-channel reduction */
    size_t maxact;                    /* elements in grad_a / grad_b */
    size_t total;                     /* bytes */
    size_t (*extents)[2];             /* every buffer's (offset, bytes), for checks */
    size_t nextents, capextents;
} amdim_cuda_plan;

enum { AMDIM_CUDA_STATS_CLS = 12 }; /* stats: classifier rows start at 12 B doubles */

/* A row-major GEMM C (M, N) = alpha op(A) op(B) + beta C with row strides
 * lda, ldb, ldc (cblas_sgemm(CblasRowMajor, ...)'s convention, what the
 * backend's gemm() takes) as the column-major problem cuBLAS and cuBLASLt
 * compute: C^T (N, M) = op(B)^T op(A)^T, so the FIRST column-major operand
 * is the row-major B and the second is A. Each operand is described as
 * stored (cublasLtMatrixLayoutCreate's rows, cols, ld; column-major) with
 * the transpose applied to it. */
typedef struct {
    int trans1, trans2;         /* op of the first (B as stored) / second (A) operand: 1 = transpose */
    int m, n, k;                /* N, M, K */
    int rows1, cols1, ld1;      /* first operand as stored */
    int rows2, cols2, ld2;      /* second operand as stored */
    int rows_c, cols_c, ld_c;   /* C as stored: (N, M), ldc */
} amdim_cuda_gemm_layout;

/* 0, or AMDIM_E_INVALID for a size < 1 or a row stride shorter than its row. */
int amdim_cuda_gemm_layout_make(amdim_cuda_gemm_layout *l, int ta, int tb, int M, int N, int K, int lda, int ldb,
                                int ldc);

/* 0 or AMDIM_E_NOMEM (the per-layer tables). Free with the _free calls,
 * which accept a zeroed plan. */
/* Gradient buckets of a data-parallel step: one per backward unit - the
 * encoder layers 0..nlayers-1, the heads nlayers and nlayers + 1, the
 * probes nlayers + 2 (AMDIM_CUDA_BUCKETS(a) units) - each unit's range
 * [lo, hi) of the grads block, from its first gradient to the next unit's
 * (hi = lo for a unit without gradients). A unit's range holds only its
 * own tensors' gradients, so it can be summed over the ranks as soon as
 * the unit's backward is done. Returns the unit count, or 0 when some
 * gradient lies outside its unit's range (then the caller sums the whole
 * block at once). */
#define AMDIM_CUDA_BUCKETS(a) ((a)->nlayers + 3)
int amdim_cuda_grad_buckets(const amdim_arch *a, size_t *lo, size_t *hi);

int amdim_cuda_param_plan_build(amdim_cuda_param_plan *p, const amdim_arch *a);
void amdim_cuda_param_plan_free(amdim_cuda_param_plan *p);
/* ranks: 0 without a process group, else its size N (1 for a forced
 * one-rank group); act_bytes 4 (float activations) or 2 (bfloat16). */
int amdim_cuda_plan_build(amdim_cuda_plan *p, const amdim_arch *a, int B, int ranks, int act_bytes);
void amdim_cuda_plan_free(amdim_cuda_plan *p);

#endif
