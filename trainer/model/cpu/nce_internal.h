/* Private to the CPU backend: one direction of the AMDIM objective. */
#ifndef AMDIM_CPU_NCE_H
#define AMDIM_CPU_NCE_H

#include <stddef.h>

typedef struct {
    float *buf;
    size_t cap;
} amdim_cpu_nce_scratch;
void amdim_cpu_nce_scratch_free(amdim_cpu_nce_scratch *s);

/* Sources srcT (C, B) - column i is image i's source vector - and targets
 * tgt (C, B*L), L locations per image. Scores s[i][j][l] = <src_i, tgt_jl> /
 * sqrt(C) in float32; reg = 0.05 * mean(s^2) (before clipping); then
 * t = tclip * tanh(s / tclip). Image i's own L locations are its positives,
 * all L locations of every other image its negatives.
 *   NCE: mean over (i, l) of -log(e^t_iil / (e^t_iil + sum_neg e^t)), with
 *        the max over the negatives subtracted for stability;
 *   JSD: mean over negatives of softplus(-t) + t - log 2, minus the mean
 *        over positives of log 2 - softplus(-t);
 *   DV:  mean over i of logsumexp_neg(t) - log(#neg) - mean_l t_iil.
 * Writes *loss and *reg; adds the gradient of (wloss * loss + wreg * reg)
 * to dsrcT and dtgt (either NULL: not wanted; both NULL: forward only).
 * NCE only (NULL for the others), for the mixtures (docs/mixtures.md):
 *   weights (B, L): weight w_il of positive (i, l) in the loss, which
 *        becomes -(1 / BL) sum w_il lsm_il; NULL = 1 (bit for bit the plain loss);
 *   lsm (B, L): receives lsm_il = t_iil - log(e^t_iil + sum_neg e^t), the
 *        log-softmax term of positive (i, l); NULL = not wanted.
 * Returns 0 or AMDIM_E_NOMEM (scratch). */
int amdim_cpu_nce_direction(const float *srcT, const float *tgt, int C, int B, int L, float tclip, int objective, float wloss,
                      float wreg, const double *weights, double *lsm, double *loss, double *reg, float *dsrcT,
                      float *dtgt, amdim_cpu_nce_scratch *s);
/* The same for a share of the sources: srcT (C, Bs) holds images [first,
 * first + Bs) of the B whose targets tgt holds. Every mean still divides
 * by the global batch's counts, so the shares' losses and reg add up to
 * the global ones and their dsrcT / dtgt to the global gradients; weights
 * and lsm are (Bs, L). Bs = B, first = 0 is amdim_cpu_nce_direction. */
int amdim_cpu_nce_direction_part(const float *srcT, int Bs, int first, const float *tgt, int C, int B, int L, float tclip,
                           int objective, float wloss, float wreg, const double *weights, double *lsm,
                           double *loss_out, double *reg_out, float *dsrcT, float *dtgt, amdim_cpu_nce_scratch *s);

#endif
