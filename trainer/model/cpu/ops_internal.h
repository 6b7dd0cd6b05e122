/* Private to the CPU backend: the reference ops, each with _forward and
 * _backward, prefixed amdim_cpu_ (the CUDA launchers are named amdim_<op>_cuda). Ops
 * that use scratch memory return 0 or AMDIM_E_NOMEM. Activations are float32 in CNHW order - (channels, batch,
 * height, width) - so a convolution over the whole batch is one GEMM and a
 * BatchNorm channel is contiguous. Backward functions ACCUMULATE into
 * parameter gradients and OVERWRITE input gradients unless noted. */
#ifndef AMDIM_CPU_OPS_H
#define AMDIM_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_trainer.h"

/* Scratch memory owned by the caller (grown on demand). */
typedef struct {
    float *p;
    size_t cap;
} amdim_cpu_op_scratch;
float *amdim_cpu_op_scratch_get(amdim_cpu_op_scratch *s, size_t floats);
void amdim_cpu_op_scratch_free(amdim_cpu_op_scratch *s);

/* Convolution without padding: x (cin, n, h, w) -> y (cout, n, ho, wo) with
 * ho = (h - k) / s + 1; w (cout, cin, k, k); bias (cout) or NULL. */
int amdim_cpu_conv2d_forward(const float *x, int cin, int n, int h, int w, const float *wt, const float *bias, int cout,
                    int k, int s, float *y, amdim_cpu_op_scratch *scr);
/* Scratch floats amdim_cpu_conv2d_backward takes for x (cin, n, h, h) (the
 * forward takes half): im2col columns, in chunks of the batch. */
size_t amdim_cpu_conv2d_scratch_floats(int cin, int n, int h, int k, int s);
/* dx may be NULL (input gradient not needed). dw, dbias accumulate. */
int amdim_cpu_conv2d_backward(const float *x, int cin, int n, int h, int w, const float *wt, int cout, int k, int s,
                     const float *dy, float *dx, float *dw, float *dbias, amdim_cpu_op_scratch *scr);

/* Reflect padding by p on both spatial sides (PyTorch "reflect"). */
void amdim_cpu_reflect_pad_forward(const float *x, int c, int n, int h, int w, int p, float *y);

/* ReLU, in place on y; backward multiplies dy by (y > 0) in place. */
void amdim_cpu_relu_forward(float *y, size_t count);
void amdim_cpu_relu_backward(const float *y, float *dy, size_t count);

/* Average pool (k, s, no padding) of x (cin, ...) into y (cout, ...) with
 * channels cin..cout-1 zero (AMDIM's residual shortcut). */
void amdim_cpu_avgpool_pad_forward(const float *x, int cin, int n, int h, int w, int k, int s, int cout, float *y);
/* dx (cin, n, h, w) += contribution of dy (only the first cin channels). */
void amdim_cpu_avgpool_pad_backward(const float *dy, int cin, int n, int h, int w, int k, int s, float *dx);

/* BatchNorm over CNHW channels (count = n*h*w values per channel).
 * Training: batch statistics (biased variance), running stats updated with
 * momentum 0.1 and the unbiased variance; saves mean and inv_std.
 * sync (non-NULL, sync_bn set): the statistics and the backward's sums are
 * those of every rank's values (each rank holds `count` per channel); the
 * parameter gradients still receive this rank's share only (the model sums
 * gradients over ranks). Return 0, AMDIM_E_NOMEM or the comm's status. */
typedef struct {
    float *gamma, *beta, *rmean, *rvar, *nbt; /* nbt: num_batches_tracked */
    float *dgamma, *dbeta;
    const amdim_comm *sync;
} amdim_cpu_bn_params;
int amdim_cpu_batchnorm_forward_train(const float *x, int c, size_t count, const amdim_cpu_bn_params *p, float *y, float *mean,
                                float *inv_std);
void amdim_cpu_batchnorm_forward_eval(const float *x, int c, size_t count, const amdim_cpu_bn_params *p, float *y);
/* dx may alias dy. */
int amdim_cpu_batchnorm_backward(const float *x, int c, size_t count, const amdim_cpu_bn_params *p, const float *mean,
                           const float *inv_std, const float *dy, float *dx);

/* Row-major linear layer: x (n, in) -> y (n, out) = x W^T + b; W (out, in). */
void amdim_cpu_linear_forward(const float *x, int n, int in, const float *wt, const float *bias, int out, float *y);
/* dx may be NULL. dw, dbias accumulate. */
void amdim_cpu_linear_backward(const float *x, int n, int in, const float *wt, int out, const float *dy, float *dx, float *dw,
                     float *dbias);

/* BatchNorm1d on row-major (n, c) features: transposes through scratch. */
int amdim_cpu_batchnorm1d_forward_train(const float *x, int n, int c, const amdim_cpu_bn_params *p, float *y, float *mean,
                               float *inv_std, amdim_cpu_op_scratch *scr);
void amdim_cpu_batchnorm1d_forward_eval(const float *x, int n, int c, const amdim_cpu_bn_params *p, float *y);
int amdim_cpu_batchnorm1d_backward(const float *x, int n, int c, const amdim_cpu_bn_params *p, const float *mean, const float *inv_std,
                          const float *dy, float *dx, amdim_cpu_op_scratch *scr);

/* The mixture function (docs/mixtures.md) on sources in the NCE layout
 * fT (R, B), column i = image i: h (R, B) = ReLU(W1 fT + b1), W1 (R, R);
 * mixT (K, R, B), component j = fT + (W2 h + b2)_j with W2 (K R, R), b2
 * (K R): rows j R .. j R + R - 1 of W2 h make component j. */
void amdim_cpu_mixture_forward(const float *fT, int R, int B, int K, const float *w1, const float *b1, const float *w2,
                         const float *b2, float *h, float *mixT);
/* From dmixT (K, R, B): dfT (R, B) += the residuals' and fc1's input
 * gradient; dw1, db1, dw2, db2 accumulate. Needs R x B floats of scratch. */
int amdim_cpu_mixture_backward(const float *fT, const float *h, int R, int B, int K, const float *w1, const float *w2,
                         const float *dmixT, float *dfT, float *dw1, float *db1, float *dw2, float *db2,
                         amdim_cpu_op_scratch *scr);

/* Inverted dropout with an explicit 0/1 mask: y = x * mask / (1 - p). */
void amdim_cpu_dropout_forward(const float *x, const float *mask, float p, size_t count, float *y);
void amdim_cpu_dropout_backward(const float *dy, const float *mask, float p, size_t count, float *dx);

/* The classifier loss of one head: cross-entropy of 10*tanh(logits/10)
 * over rows with label >= 0 (mean), plus 1e-3 * mean(logits^2) over all.
 * Returns the loss; dlogits (may be NULL) gets its gradient (scaled by
 * `scale`); *correct counts argmax hits among labelled rows. */
double amdim_cpu_classifier_loss(const float *logits, int n, int classes, const int32_t *labels, float *dlogits, float scale,
                       int *correct, int *labelled);
/* The same for a share of a global batch of n_all rows, valid_all of them
 * labelled: the means divide by those, so the shares' losses and
 * gradients add up to the global batch's. */
double amdim_cpu_classifier_loss_part(const float *logits, int n, int classes, const int32_t *labels, float *dlogits,
                                float scale, double n_all, double valid_all, int *correct, int *labelled);
/* Rows with a label in [0, classes). */
int amdim_cpu_count_labelled(const int32_t *labels, int n, int classes);

#endif
