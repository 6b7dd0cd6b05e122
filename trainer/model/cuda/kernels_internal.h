/* Private to the CUDA backend: the kernel launchers, one family per .cu
 * file, named <op>_cuda (C linkage, callable from C). Every launcher runs
 * on ctx->stream, checks the launch (cudaGetLastError) and returns 0 or
 * AMDIM_E_IO (-3) with "<op>_cuda(): <CUDA message>" in ctx->err.
 *
 * Activations are NHWC: a tensor (B, H, W, C) is N = B*H*W rows of C
 * channels, stored as float32, or as bfloat16 when ctx->bf16 (the bf16
 * precision mode). Activation arguments are void * in the context's type;
 * float * arguments are float32 in both modes (parameters, BatchNorm
 * statistics, scores, logits, masks). Arithmetic is float32 / double in
 * both; only storage changes. Backward launchers OVERWRITE input gradients unless named
 * _add / documented as accumulating; parameter gradients accumulate. Every
 * per-element body is a function of trainer/model/elementwise_internal.h, the same one
 * the CPU ops call. Reductions are deterministic: fixed partition, fixed
 * summation order, no atomics. */
#ifndef AMDIM_CUDA_KERNELS_H
#define AMDIM_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "elementwise_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* amdim_common.h is C only: the values the kernels need, checked equal to
 * AMDIM_OBJECTIVE_* and AMDIM_E_IO in backend_cuda.c. */
enum { AMDIM_CUDA_NCE = 0, AMDIM_CUDA_JSD = 1, AMDIM_CUDA_DV = 2, AMDIM_CUDA_E_DEVICE = -3 };

/* For the errors a kernel raises while it runs (they surface at a later
 * launch or synchronisation, so the call that reports one need not be the
 * kernel that caused it): a hint naming how to find it; "" otherwise. */
static inline const char *amdim_cuda_async_hint(cudaError_t e)
{
    switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
    case cudaErrorAssert:
    case cudaErrorIllegalInstruction:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorLaunchTimeout:
        return "; a kernel failed while running, perhaps an earlier one than this call: rerun with "
               "CUDA_LAUNCH_BLOCKING=1 (or under compute-sanitizer) to name it";
    default:
        return "";
    }
}

typedef struct {
    cudaStream_t stream;
    char *err;
    size_t errn;
    /* synchronised BatchNorm (NULL: each call's own statistics): sums the
     * per-channel sums fin (n doubles, device) over `ranks` processes in
     * place, on the stream; the statistics are then those of ranks x N
     * values per channel. Parameter gradients keep this rank's share. */
    int (*bn_sync)(void *arg, double *fin, size_t n);
    void *bn_sync_arg;
    int ranks;
    int bf16; /* activations (void * arguments) are bfloat16 (uint16_t bits), else float */
    /* The launch list (NULL: none kept; amdim_model_set_trace): every
     * launcher reports each kernel it launched - its name, the bytes the
     * kernel moves to and from device memory (every array it reads and
     * writes, once) and its FLOPs (0 for ours, which are memory-bound). */
    void (*trace)(void *arg, const char *op, int launches, double bytes, double flops);
    void *trace_arg;
} amdim_cuda_ctx;

/* ---- input.cu ---- */
/* x (B, S, S, 3) uint8 -> y (B, S, S, cout) activations: channel c < 3
 * x * scale[c] - shift[c], channels 3 .. cout-1 zero (cout >= 3). */
int amdim_normalise_u8_cuda(const amdim_cuda_ctx *c, const uint8_t *x, size_t pixels, const float scale[3],
                      const float shift[3], int cout, void *y);
/* x (B, C, HW) float -> y (B, HW, ldc) activations, channels C .. ldc-1
 * zero (the tests' NCHW float views). */
int amdim_nchw_to_nhwc_cuda(const amdim_cuda_ctx *c, const float *x, int B, int C, int HW, int ldc, void *y);
/* x (B, HW, C) activations -> y (B, C, HW) float. */
int amdim_nhwc_to_nchw_cuda(const amdim_cuda_ctx *c, const void *x, int B, int C, int HW, float *y);
/* n activations -> float. */
int amdim_act_to_f32_cuda(const amdim_cuda_ctx *c, const void *x, size_t n, float *y);
/* n floats -> bfloat16 bits (either mode: the bf16 weight copies). */
int amdim_f32_to_bf16_cuda(const amdim_cuda_ctx *c, const float *x, size_t n, uint16_t *y);

/* ---- pad.cu ---- */
/* Reflect padding by p: x (B, H, W, C) -> y (B, H+2p, W+2p, C). */
int amdim_reflect_pad_forward_cuda(const amdim_cuda_ctx *c, const void *x, int B, int H, int W, int C, int p, void *y);

/* ---- activation.cu ---- */
int amdim_relu_forward_cuda(const amdim_cuda_ctx *c, void *y, size_t n);             /* in place */
int amdim_relu_backward_cuda(const amdim_cuda_ctx *c, const void *y, void *dy, size_t n); /* dy *= (y > 0), in place */
/* y (N, C) = relu(y + bias[c]). */
int amdim_bias_relu_forward_cuda(const amdim_cuda_ctx *c, void *y, const float *bias, size_t rows, int C);
/* y (N, C) += bias[c]. */
int amdim_bias_add_cuda(const amdim_cuda_ctx *c, void *y, const float *bias, size_t rows, int C);
/* y[i] += x[i]. */
int amdim_add_cuda(const amdim_cuda_ctx *c, void *y, const void *x, size_t n);

/* ---- avgpool.cu ---- */
/* AMDIM's shortcut: y (B, Ho, Wo, cout) += avgpool_k,s(x (B, H, W, cin)) on
 * channels [0, cin); channels [cin, cout) are left as they are (zero pad). */
int amdim_avgpool_pad_forward_add_cuda(const amdim_cuda_ctx *c, const void *x, int B, int H, int W, int cin, int k, int s,
                                 int cout, void *y);
/* dx (B, H, W, cin) += the pool's adjoint of dy (B, Ho, Wo, cout). */
int amdim_avgpool_pad_backward_add_cuda(const amdim_cuda_ctx *c, const void *dy, int B, int H, int W, int cin, int k,
                                  int s, int cout, void *dx);

/* ---- batchnorm.cu ---- */
/* Deterministic per-channel reductions over x (N, C) use a scratch of
 * amdim_batchnorm_scratch_doubles(N, C) doubles. */
size_t amdim_batchnorm_scratch_doubles(size_t N, int C);
typedef struct {
    float *gamma, *beta, *rmean, *rvar, *nbt; /* device pointers; nbt: num_batches_tracked */
    float *dgamma, *dbeta;
} amdim_cuda_bn;
/* Training: batch statistics (double, two passes), y, saved mean/inv_std
 * (C), running statistics with the unbiased variance, nbt += 1. y may not
 * alias x. */
int amdim_batchnorm_forward_train_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C, const amdim_cuda_bn *p,
                                 void *y, float *mean, float *inv_std, double *scratch);
int amdim_batchnorm_forward_eval_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C, const amdim_cuda_bn *p,
                                void *y);
/* dx (may alias dy); dgamma/dbeta accumulate. */
int amdim_batchnorm_backward_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C, const amdim_cuda_bn *p,
                            const float *mean, const float *inv_std, const void *dy, void *dx, double *scratch);
/* out[c] += sum over rows of x (N, C) activations (bias gradients). */
int amdim_channel_sum_add_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C, float *out, double *scratch);

/* ---- dropout.cu ---- */
/* y = x * mask / (1 - p) with host-drawn 0/1 masks; y may alias x. */
int amdim_dropout_cuda(const amdim_cuda_ctx *c, const void *x, const float *mask, size_t n, void *y);

/* ---- classifier.cu ---- */
/* One block per row of logits (n, classes). Writes per row: rows[3*i] =
 * the row's cross-entropy (0 if unlabelled), rows[3*i+1] = sum of l^2,
 * rows[3*i+2] = 1 if the argmax hits the label. dlogits (may be NULL) =
 * scale * gradient of xent * inv_valid + 1e-3 mean(l^2), the mean over
 * n_all rows (n, or the global batch's rows when n is a rank's share);
 * inv_valid is ONE double in device memory (read when the kernel runs, so
 * a captured graph takes each step's value). The host sums rows in order.
 * Logits and dlogits are float; with ctx->bf16 and dlogits, dlogits_act
 * also receives dlogits as bf16 activations (the GEMMs' operand). */
int amdim_classifier_loss_cuda(const amdim_cuda_ctx *c, const float *logits, int n, int n_all, int classes,
                         const int32_t *labels, const double *inv_valid, float scale, float *dlogits,
                         void *dlogits_act, double *rows);

/* ---- nce.cu ---- */
/* One direction's row work for Bs sources, images [first, first + Bs) of
 * a batch of B (a rank's share of the global batch; Bs = B, first = 0 in
 * one process). S (Bs, B*L) holds the raw scores s (from the GEMM, scaled
 * by 1/sqrt(C)); dS (Bs, B*L) receives the gradient of (wloss * loss +
 * wreg * reg) with respect to s, every mean over the B images' counts as
 * amdim_cpu_nce_direction_part. rows[2*si] = row si's loss contribution (NCE:
 * before the 1/(B L) mean), rows[2*si+1] = sum of s^2 of the row. S is
 * left holding the clipped scores. S and dS are float in both modes; with
 * ctx->bf16, dS_act also receives dS as bf16 activations (the backward
 * GEMMs' operand), rounded once from the float gradient. */
int amdim_nce_rows_cuda(const amdim_cuda_ctx *c, float *S, float *dS, void *dS_act, int Bs, int first, int B, int L,
                  float tclip, int objective, float wloss, float wreg, double *rows);
/* src (B, R) = r5 (B*25, R) rows i*25 + idx[i] (activations). */
int amdim_gather_rows_cuda(const amdim_cuda_ctx *c, const void *r5, const int32_t *idx, int B, int R, void *src);
/* r5 rows i*25 + idx[i] += src rows. */
int amdim_scatter_rows_add_cuda(const amdim_cuda_ctx *c, const void *src, const int32_t *idx, int B, int R, void *r5);

/* ---- adam.cu ---- */
/* Adam over many tensors in one launch: chunk i (device memory) updates
 * n <= AMDIM_ADAM_CHUNK elements, w[w .. w + n) from g, m, v[g .. g + n)
 * (amdim_adam_element; offsets in floats), and bf16[w ..] (may be NULL)
 * receives the new weights rounded to bfloat16 (uint16_t bits). h points
 * to DEVICE memory (read when the kernel runs, so a captured graph takes
 * each update's learning rate and bias corrections); elems: the chunks'
 * total, for the launch list. */
#define AMDIM_ADAM_CHUNK 4096u
typedef struct {
    uint64_t w, g;
    uint32_t n, pad;
} amdim_adam_chunk;
int amdim_adam_cuda(const amdim_cuda_ctx *c, float *w, const float *g, float *m, float *v, uint16_t *bf16,
                    const amdim_adam_chunk *chunks, uint32_t nchunks, size_t elems, const amdim_adam_hparams *h);

/* ---- layout.cu ---- */
/* Filters: OIHW (PyTorch, the host mirror; float masters) <-> OHWI
 * (cuDNN's NHWC filter format, "KRSC", in the activation type: cuDNN's
 * filters and filter gradients have the data's type); see layout.h for
 * the index maps. */
/* out (O, K, K, Ipad) = w (O, I, K, K), input channels I .. Ipad-1 zero. */
int amdim_oihw_to_ohwi_cuda(const amdim_cuda_ctx *c, const float *w, int O, int I, int K, int Ipad, void *out);
/* out (OIHW, float) += w (O, K, K, Ipad; activation type) on its first I input channels. */
int amdim_ohwi_to_oihw_add_cuda(const amdim_cuda_ctx *c, const void *w, int O, int I, int K, int Ipad, float *out);

#ifdef __cplusplus
}
#endif

#endif
