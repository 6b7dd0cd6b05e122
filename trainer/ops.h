/* Private to the trainer: the CPU reference ops, each with _forward and
 * _backward. Activations are float32 in CNHW order - (channels, batch,
 * height, width) - so a convolution over the whole batch is one GEMM and a
 * BatchNorm channel is contiguous. Backward functions ACCUMULATE into
 * parameter gradients and OVERWRITE input gradients unless noted. */
#ifndef AMDIM_TRAINER_OPS_H
#define AMDIM_TRAINER_OPS_H

#include <stddef.h>
#include <stdint.h>

/* Scratch memory owned by the caller (grown on demand). */
typedef struct {
    float *p;
    size_t cap;
} op_scratch;
float *op_scratch_get(op_scratch *s, size_t floats);
void op_scratch_free(op_scratch *s);

/* Convolution without padding: x (cin, n, h, w) -> y (cout, n, ho, wo) with
 * ho = (h - k) / s + 1; w (cout, cin, k, k); bias (cout) or NULL. */
void conv2d_forward(const float *x, int cin, int n, int h, int w, const float *wt, const float *bias, int cout,
                    int k, int s, float *y, op_scratch *scr);
/* dx may be NULL (input gradient not needed). dw, dbias accumulate. */
void conv2d_backward(const float *x, int cin, int n, int h, int w, const float *wt, int cout, int k, int s,
                     const float *dy, float *dx, float *dw, float *dbias, op_scratch *scr);

/* Reflect padding by p on both spatial sides (PyTorch "reflect"). */
void reflect_pad_forward(const float *x, int c, int n, int h, int w, int p, float *y);

/* ReLU, in place on y; backward multiplies dy by (y > 0) in place. */
void relu_forward(float *y, size_t count);
void relu_backward(const float *y, float *dy, size_t count);

/* Average pool (k, s, no padding) of x (cin, ...) into y (cout, ...) with
 * channels cin..cout-1 zero (AMDIM's residual shortcut). */
void avgpool_pad_forward(const float *x, int cin, int n, int h, int w, int k, int s, int cout, float *y);
/* dx (cin, n, h, w) += contribution of dy (only the first cin channels). */
void avgpool_pad_backward(const float *dy, int cin, int n, int h, int w, int k, int s, float *dx);

/* BatchNorm over CNHW channels (count = n*h*w values per channel).
 * Training: batch statistics (biased variance), running stats updated with
 * momentum 0.1 and the unbiased variance; saves mean and inv_std. */
typedef struct {
    float *gamma, *beta, *rmean, *rvar, *nbt; /* nbt: num_batches_tracked */
    float *dgamma, *dbeta;
} bn_params;
void batchnorm_forward_train(const float *x, int c, size_t count, const bn_params *p, float *y, float *mean,
                             float *inv_std);
void batchnorm_forward_eval(const float *x, int c, size_t count, const bn_params *p, float *y);
/* dx may alias dy. */
void batchnorm_backward(const float *x, int c, size_t count, const bn_params *p, const float *mean,
                        const float *inv_std, const float *dy, float *dx);

/* Row-major linear layer: x (n, in) -> y (n, out) = x W^T + b; W (out, in). */
void linear_forward(const float *x, int n, int in, const float *wt, const float *bias, int out, float *y);
/* dx may be NULL. dw, dbias accumulate. */
void linear_backward(const float *x, int n, int in, const float *wt, int out, const float *dy, float *dx, float *dw,
                     float *dbias);

/* BatchNorm1d on row-major (n, c) features: transposes through scratch. */
void batchnorm1d_forward_train(const float *x, int n, int c, const bn_params *p, float *y, float *mean,
                               float *inv_std, op_scratch *scr);
void batchnorm1d_forward_eval(const float *x, int n, int c, const bn_params *p, float *y);
void batchnorm1d_backward(const float *x, int n, int c, const bn_params *p, const float *mean, const float *inv_std,
                          const float *dy, float *dx, op_scratch *scr);

/* Inverted dropout with an explicit 0/1 mask: y = x * mask / (1 - p). */
void dropout_forward(const float *x, const float *mask, float p, size_t count, float *y);
void dropout_backward(const float *dy, const float *mask, float p, size_t count, float *dx);

/* The classifier loss of one head: cross-entropy of 10*tanh(logits/10)
 * over rows with label >= 0 (mean), plus 1e-3 * mean(logits^2) over all.
 * Returns the loss; dlogits (may be NULL) gets its gradient (scaled by
 * `scale`); *correct counts argmax hits among labelled rows. */
double classifier_loss(const float *logits, int n, int classes, const int32_t *labels, float *dlogits, float scale,
                       int *correct, int *labelled);

#endif
