/* The AMDIM objective for one (source, target) direction. */
#include "nce_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_trainer.h"
#include "elementwise_internal.h"

void amdim_cpu_nce_scratch_free(amdim_cpu_nce_scratch *s)
{
    free(s->buf);
    s->buf = NULL;
    s->cap = 0;
}

int amdim_cpu_nce_direction(const float *srcT, const float *tgt, int C, int B, int L, float tclip, int objective, float wloss,
                      float wreg, const double *weights, double *lsm, double *loss_out, double *reg_out, float *dsrcT,
                      float *dtgt, amdim_cpu_nce_scratch *s)
{
    return amdim_cpu_nce_direction_part(srcT, B, 0, tgt, C, B, L, tclip, objective, wloss, wreg, weights, lsm, loss_out,
                                  reg_out, dsrcT, dtgt, s);
}

int amdim_cpu_nce_direction_part(const float *srcT, int Bs, int first, const float *tgt, int C, int B, int L, float tclip,
                           int objective, float wloss, float wreg, const double *weights, double *lsm,
                           double *loss_out, double *reg_out, float *dsrcT, float *dtgt, amdim_cpu_nce_scratch *s)
{
    AMDIM_ASSERT(objective == AMDIM_OBJECTIVE_NCE || (!weights && !lsm));
    AMDIM_ASSERT(Bs >= 1 && first >= 0 && first + Bs <= B);
    /* n: score count of the global batch (the means' divisor); ns: this share's */
    size_t BL = (size_t)B * L, n = (size_t)B * BL, ns = (size_t)Bs * BL;
    if (2 * ns > s->cap) {
        free(s->buf);
        s->buf = malloc(2 * ns * sizeof(float));
        s->cap = s->buf ? 2 * ns : 0;
        if (!s->buf)
            return AMDIM_E_NOMEM;
    }
    float *S = s->buf, *dS = s->buf + ns;
    float scale = 1.0f / sqrtf((float)C);
    /* S (Bs, B*L) = src^T tgt / sqrt(C) */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Bs, (int)BL, C, scale, srcT, Bs, tgt, (int)BL, 0.0f, S,
                (int)BL);
    double reg = 0;
    for (size_t k = 0; k < ns; k++)
        reg += (double)S[k] * S[k];
    reg = AMDIM_NCE_REG * reg / (double)n;
    /* dreg/ds, then clip in place: S holds t from here on. */
    for (size_t k = 0; k < ns; k++) {
        dS[k] = (float)(wreg * AMDIM_NCE_REG * 2.0 * S[k] / (double)n);
        S[k] = amdim_tanh_clip(S[k], tclip);
    }
    double loss = 0;
    for (int si = 0; si < Bs; si++) {
        /* source si is image i of the global batch: its own L targets are its positives */
        int i = first + si;
        float *t = S + (size_t)si * BL, *g = dS + (size_t)si * BL;
        const float *pos = t + (size_t)i * L;
        if (objective == AMDIM_OBJECTIVE_NCE) {
            double M = -1e30;
            for (size_t k = 0; k < BL; k++)
                if (k / L != (size_t)i && t[k] > M)
                    M = t[k];
            double negsum = 0;
            for (size_t k = 0; k < BL; k++)
                if (k / L != (size_t)i)
                    negsum += exp(t[k] - M);
            double inv_sum = 0; /* sum over positives of w / (e^(p-M) + negsum) */
            for (int l = 0; l < L; l++) {
                double ep = exp(pos[l] - M), den = ep + negsum, w = weights ? weights[(size_t)si * L + l] : 1.0;
                double term = pos[l] - M - log(den);
                if (lsm)
                    lsm[(size_t)si * L + l] = term;
                loss += -term * w;
                inv_sum += w / den;
                double d = amdim_nce_pos_grad(ep / den, (double)BL, wloss * w);
                g[(size_t)i * L + l] += (float)(d * amdim_tanh_clip_grad(pos[l], tclip));
            }
            for (size_t k = 0; k < BL; k++) {
                if (k / L == (size_t)i)
                    continue;
                double d = amdim_nce_neg_grad(t[k], M, inv_sum, (double)BL, wloss);
                g[k] += (float)(d * amdim_tanh_clip_grad(t[k], tclip));
            }
        } else if (objective == AMDIM_OBJECTIVE_JSD) {
            double npos = (double)BL, nneg = (double)B * (B - 1) * L;
            for (size_t k = 0; k < BL; k++) {
                double x = t[k], d;
                if (k / L == (size_t)i) {
                    loss -= (log(2.0) - amdim_softplus(-x)) / npos;
                    d = -amdim_sigmoid(-x) / npos;
                } else {
                    loss += (amdim_softplus(-x) + x - log(2.0)) / nneg;
                    d = amdim_sigmoid(x) / nneg;
                }
                g[k] += (float)(wloss * d * amdim_tanh_clip_grad(x, tclip));
            }
        } else { /* DV */
            double M = -1e30, sum = 0, count = (double)(B - 1) * L;
            for (size_t k = 0; k < BL; k++)
                if (k / L != (size_t)i && t[k] > M)
                    M = t[k];
            for (size_t k = 0; k < BL; k++)
                if (k / L != (size_t)i)
                    sum += exp(t[k] - M);
            double lse = M + log(sum), mpos = 0;
            for (int l = 0; l < L; l++)
                mpos += pos[l];
            mpos /= L;
            loss += (lse - log(count) - mpos) / B;
            for (size_t k = 0; k < BL; k++) {
                double d = k / L == (size_t)i ? -1.0 / L / B : exp(t[k] - lse) / B;
                g[k] += (float)(wloss * d * amdim_tanh_clip_grad(t[k], tclip));
            }
        }
    }
    if (objective == AMDIM_OBJECTIVE_NCE)
        loss /= (double)BL;
    /* back through the scores */
    if (dsrcT)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, C, Bs, (int)BL, scale, tgt, (int)BL, dS, (int)BL, 1.0f,
                    dsrcT, Bs);
    if (dtgt)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, C, (int)BL, Bs, scale, srcT, Bs, dS, (int)BL, 1.0f, dtgt,
                    (int)BL);
    *reg_out = reg;
    *loss_out = loss;
    return AMDIM_OK;
}
