/* Per-element arithmetic that the CPU ops and the CUDA kernels share: the
 * CPU ops call these in their loops, the kernels call them per thread, so
 * the CPU parity and finite-difference tests cover the exact bodies the
 * GPU runs. AMDIM_HD (common/amdim_philox.h) makes them
 * __host__ __device__ under nvcc and plain static inline under a C
 * compiler. Double precision where the CPU reference accumulates in
 * double. */
#ifndef AMDIM_ELEMENTWISE_H
#define AMDIM_ELEMENTWISE_H

#include <math.h>
#include <stdint.h>

#include "amdim_philox.h"

#define AMDIM_BN_EPS 1e-5
#define AMDIM_BN_MOMENTUM 0.1f
#define AMDIM_DROPOUT_P 0.2f
#define AMDIM_CLS_CLIP 10.0   /* classifier logits: 10 tanh(l / 10) */
#define AMDIM_CLS_REG 1e-3    /* + 1e-3 mean(l^2) */
#define AMDIM_NCE_REG 0.05    /* 0.05 mean(s^2), before clipping */

/* bfloat16, carried as its 16 bits (C has no bf16 type): the upper half
 * of the float, rounded to nearest even; every NaN becomes the canonical
 * 0x7fff. The same map as CUDA's __float2bfloat16_rn (checked for the
 * rounding-relevant bit patterns by test_bf16_round); the CPU side of the
 * bf16 storage mode's tests. */
AMDIM_HD uint16_t amdim_bf16_bits(float f)
{
    union {
        float f;
        uint32_t u;
    } v;
    v.f = f;
    if ((v.u & 0x7fffffffu) > 0x7f800000u)
        return 0x7fffu;
    uint32_t rem = v.u & 0xffffu, r = v.u >> 16;
    if (rem > 0x8000u || (rem == 0x8000u && (r & 1u)))
        r++;
    return (uint16_t)r;
}
AMDIM_HD float amdim_bf16_value(uint16_t b)
{
    union {
        float f;
        uint32_t u;
    } v;
    v.u = (uint32_t)b << 16;
    return v.f;
}
/* f rounded to the nearest bfloat16. */
AMDIM_HD float amdim_bf16_round(float f) { return amdim_bf16_value(amdim_bf16_bits(f)); }

/* Adam hyper-parameters of one update, computed on the host. */
typedef struct {
    float lr;           /* scheduled learning rate */
    float step;         /* lr / (1 - beta1^t) */
    float sqrt_bc2;     /* sqrt(1 - beta2^t) */
    float beta1, beta2, eps, weight_decay;
} amdim_adam_hparams;

/* One Adam element with L2 weight decay added to the gradient (PyTorch's
 * Adam, weight_decay): updates *m, *v and returns the new weight. */
AMDIM_HD float amdim_adam_element(float w, float g, float *m, float *v, const amdim_adam_hparams *h)
{
    g = g + h->weight_decay * w;
    *m = h->beta1 * *m + (1 - h->beta1) * g;
    *v = h->beta2 * *v + (1 - h->beta2) * g * g;
    float denom = sqrtf(*v) / h->sqrt_bc2 + h->eps;
    return w - h->step * *m / denom;
}

/* uint8 pixel of channel c -> normalised float: x / 255 - mean, / std,
 * written as x * scale - shift with scale = 1 / (255 std), shift = mean / std. */
AMDIM_HD float amdim_normalise_pixel(uint8_t x, float scale, float shift) { return (float)x * scale - shift; }

/* PyTorch "reflect" padding: source index of padded position i (may be
 * negative or >= n) in a row of n (n >= 2, |overhang| < n). */
AMDIM_HD int amdim_reflect_index(int i, int n) { return i < 0 ? -i : i >= n ? 2 * (n - 1) - i : i; }

AMDIM_HD float amdim_relu(float x) { return x > 0 ? x : 0; }
/* Gradient through a ReLU whose OUTPUT was y. */
AMDIM_HD float amdim_relu_grad(float y, float dy) { return y > 0 ? dy : 0; }

/* Inverted dropout with a 0/1 mask. */
AMDIM_HD float amdim_dropout(float x, float mask) { return x * mask * (1.0f / (1.0f - AMDIM_DROPOUT_P)); }

/* BatchNorm: y = (x - mean) * inv_std * gamma + beta. */
AMDIM_HD float amdim_bn_apply(float x, float mean, float inv_std, float gamma, float beta)
{
    return (x - mean) * inv_std * gamma + beta;
}
AMDIM_HD float amdim_bn_inv_std(double var) { return (float)(1.0 / sqrt(var + AMDIM_BN_EPS)); }
/* Running-statistic update, momentum 0.1 (PyTorch). */
AMDIM_HD float amdim_bn_running(float running, float batch_value)
{
    return (1 - AMDIM_BN_MOMENTUM) * running + AMDIM_BN_MOMENTUM * batch_value;
}
/* Input gradient of training-mode BatchNorm for one element, from the
 * channel sums sdy = sum dy and sdyx = sum dy * xhat over `count`
 * elements and the channel's scale = gamma inv_std / count:
 * dx = scale * (count dy - sdy - xhat sdyx). */
AMDIM_HD double amdim_bn_backward_scale(float gamma, float inv_std, double count) { return (double)gamma * inv_std / count; }
AMDIM_HD float amdim_bn_backward_element(float x, float dy, float mean, float inv_std, double scale, double count,
                                         double sdy, double sdyx)
{
    double xh = (double)(x - mean) * inv_std;
    return (float)(scale * (count * dy - sdy - xh * sdyx));
}

/* The soft clip of NCE scores, c tanh(s / c), and its derivative written
 * with the clipped value t: 1 - (t / c)^2. */
AMDIM_HD float amdim_tanh_clip(float s, float c) { return c * tanhf(s / c); }
AMDIM_HD double amdim_tanh_clip_grad(double t, double c)
{
    double u = t / c;
    return 1.0 - u * u;
}

AMDIM_HD double amdim_softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }
AMDIM_HD double amdim_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* Classifier loss of one logit l of a labelled row: z = 10 tanh(l / 10);
 * lse = logsumexp of the row's z. The cross-entropy gradient with respect
 * to l, for the mean over `valid` labelled rows. */
AMDIM_HD double amdim_cls_clip(double l) { return AMDIM_CLS_CLIP * tanh(l / AMDIM_CLS_CLIP); }
AMDIM_HD double amdim_cls_xent_grad(double l, double lse, int is_label, double inv_valid)
{
    double t = tanh(l / AMDIM_CLS_CLIP);
    return (exp(AMDIM_CLS_CLIP * t - lse) - (is_label ? 1.0 : 0.0)) * inv_valid * (1 - t * t);
}
/* Gradient of 1e-3 mean(l^2) over all n*classes logits. */
AMDIM_HD double amdim_cls_reg_grad(double l, double inv_all) { return 2.0 * AMDIM_CLS_REG * l * inv_all; }

/* NCE (one source i, L positives, negatives shared): with M the max of the
 * negatives, negsum = sum exp(t_neg - M), den_l = exp(t_pos_l - M) + negsum,
 * the loss is -sum_l w_l (t_pos_l - M - log den_l) over BL = B L terms
 * (w_l: a per-positive weight, 1 in the plain objective; the mixtures'
 * assignment q otherwise). Gradient with respect to the CLIPPED positive
 * score t_pos (w: the direction's weight times w_l): */
AMDIM_HD double amdim_nce_pos_grad(double ep_over_den, double BL, double w) { return -(1.0 - ep_over_den) / BL * w; }
/* ... and to a clipped negative score t (inv_sum = sum_l w_l / den_l): */
AMDIM_HD double amdim_nce_neg_grad(double t, double M, double inv_sum, double BL, double w)
{
    return exp(t - M) * inv_sum / BL * w;
}

/* Mixtures: the assignment of one consequent location over K components
 * from their NCE log-softmax terms s[j * stride] (stride: elements between
 * components), q_j = softmax_j(tau s_j), written to q[j * stride];
 * returns the entropy H(q) = -sum_j q_j log q_j. */
AMDIM_HD double amdim_mix_assign(const double *s, int K, size_t stride, double tau, double *q)
{
    double mx = tau * s[0], z = 0, h = 0;
    for (int j = 1; j < K; j++)
        mx = tau * s[j * stride] > mx ? tau * s[j * stride] : mx;
    for (int j = 0; j < K; j++)
        z += exp(tau * s[j * stride] - mx);
    for (int j = 0; j < K; j++) {
        double lq = tau * s[j * stride] - mx - log(z);
        q[j * stride] = exp(lq);
        h -= q[j * stride] * lq;
    }
    return h;
}

#endif
