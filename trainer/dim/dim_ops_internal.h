/* Private to trainer/dim: the ops DIM needs that trainer/model/cpu lacks,
 * each with _forward and _backward, and the three estimators on a score
 * tensor (docs/dim.md §4-§5). Maps are float32 in CNHW order, as in
 * trainer/model/cpu/ops_internal.h; backward functions OVERWRITE input
 * gradients and ACCUMULATE parameter gradients. */
#ifndef AMDIM_DIM_OPS_H
#define AMDIM_DIM_OPS_H

#include <stddef.h>

#define AMDIM_DIM_LN_EPS 1e-5      /* PyTorch LayerNorm */
#define AMDIM_DIM_NCE_MASK (-10.0) /* §5.2: the L own-image entries of each NCE row (D2) */

/* Zero padding by p on both spatial sides: x (c, n, h, w) -> y (c, n, h + 2p, w + 2p). */
void amdim_dim_zero_pad_forward(const float *x, int c, int n, int h, int w, int p, float *y);
/* dx (c, n, h, w) = the interior of dy (c, n, h + 2p, w + 2p). */
void amdim_dim_zero_pad_backward(const float *dy, int c, int n, int h, int w, int p, float *dx);

/* LayerNorm over the c channels of each of `cols` columns of x (c, cols):
 * y = (x - mean_col) * rstd_col * gamma[ch] + beta[ch], biased variance,
 * eps 1e-5. Saves mean and rstd (cols each). */
void amdim_dim_layernorm_forward(const float *x, int c, size_t cols, const float *gamma, const float *beta, float *y,
                                 float *mean, float *rstd);
/* dx (c, cols) overwritten (may not alias dy); dgamma, dbeta accumulate.
 * Needs 2 * cols doubles of scratch. */
void amdim_dim_layernorm_backward(const float *x, int c, size_t cols, const float *gamma, const float *mean,
                                  const float *rstd, const float *dy, float *dx, float *dgamma, float *dbeta,
                                  double *scratch);

/* The loss of estimator `est` (amdim_dim_estimator) on scores u (n, n * l):
 * row i, column j * l + k holds u[i, j, k] = <g_i, h_{j,k}>; positives are
 * j = i (docs/dim.md §5.1 JSD, §5.2 NCE with the -10 entries, §5.3 amdim's
 * DV). du (same shape, may be NULL) receives scale * d loss / d u. Needs
 * n >= 2. Returns the loss, or NaN for an unknown estimator. */
double amdim_dim_estimator_loss(const float *u, int n, int l, int est, float *du, double scale);

#endif
