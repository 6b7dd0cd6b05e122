/* The CUDA backend's objectives (cuda_internal.h): the online probes, the
 * six NCE directions and the step's statistics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* ---- probes -------------------------------------------------------------------- */

int amdim_cuda_probes_forward(amdim_model *m, int n, int train)
{
    const amdim_cuda_plan *P = &cuda_of(m)->plan;
    const amdim_probes *p = &m->arch.probes;
    int R = m->cfg.n_rkhs, H = m->cfg.mlp_hidden, K = m->cfg.n_classes;
    const void *feat = act(m, P->feat), *in = feat, *h2 = act(m, P->mlp_a1);
    if (train) {
        AMDIM_TRY(amdim_dropout_cuda(kctx(m), feat, act_f32(m, P->mask_in), (size_t)n * R, act(m, P->mlp_h0)));
        in = act(m, P->mlp_h0);
    }
    AMDIM_TRY(amdim_cuda_linear_forward(m, in, (size_t)n, R, gemm_weight(m, p->mlp_w1), NULL, H, 0.0f,
                                        act(m, P->mlp_z1), C_ACT));
    AMDIM_TRY(amdim_cuda_bn_forward(m, p->mlp_bn, act(m, P->mlp_z1), (size_t)n, H, train, act(m, P->mlp_a1),
                                    act_f32(m, P->mlp_mean), act_f32(m, P->mlp_istd)));
    AMDIM_TRY(amdim_relu_forward_cuda(kctx(m), act(m, P->mlp_a1), (size_t)n * H));
    if (train) {
        AMDIM_TRY(amdim_dropout_cuda(kctx(m), act(m, P->mlp_a1), act_f32(m, P->mask_hidden), (size_t)n * H,
                                     act(m, P->mlp_h2)));
        h2 = act(m, P->mlp_h2);
    }
    AMDIM_TRY(amdim_cuda_linear_forward(m, h2, (size_t)n, H, gemm_weight(m, p->mlp_w2), weight(m, p->mlp_b2), K, 0.0f,
                                        act(m, P->logits[0]), C_F32));
    return amdim_cuda_linear_forward(m, feat, (size_t)n, R, gemm_weight(m, p->lin_w), weight(m, p->lin_b), K, 0.0f,
                                     act(m, P->logits[1]), C_F32);
}

/* The ranks whose rows make the global batch the probes' means run over:
 * the process group's, also in the classifier phase, whose steps plan no
 * global target buffers (plan.ranks 0). */
int amdim_cuda_group_size(const amdim_model *m) { return m->comm ? m->comm->size : 1; }

/* Classifier rows of head h (n rows) in the stats block. */
static double *cls_rows(const amdim_model *m, int h)
{
    const amdim_cuda_plan *P = &cuda_of(m)->plan;
    return (double *)(void *)act(m, P->stats) + AMDIM_CUDA_STATS_CLS * (size_t)P->batch + (size_t)h * 6 * P->batch;
}

/* inv_valid: one double in device memory */
static int probes_backward(amdim_model *m, int n, const double *inv_valid)
{
    const amdim_cuda_plan *P = &cuda_of(m)->plan;
    const amdim_probes *p = &m->arch.probes;
    int R = m->cfg.n_rkhs, H = m->cfg.mlp_hidden, K = m->cfg.n_classes;
    /* n_all: the rows of the global batch (the probes' means are over it) */
    int n_all = n * amdim_cuda_group_size(m);
    const int32_t *labels = (const int32_t *)(const void *)act(m, P->labels2);
    /* dl: the float gradient of the logits; dla: the same as activations (the GEMMs' operand) */
    float *dl = act_f32(m, P->dlogits);
    void *dla = act(m, P->dlogits_act), *dtmp = act(m, P->dtmp), *dtmp2 = act(m, P->dtmp2);
    AMDIM_TRY(amdim_classifier_loss_cuda(kctx(m), act_f32(m, P->logits[0]), n, n_all, K, labels, inv_valid, 1.0f, dl,
                                         dla, cls_rows(m, 0)));
    amdim_cuda_ctx f32 = kctx_f32(m); /* the probes' bias gradients from the float dl */
    AMDIM_TRY(amdim_channel_sum_add_cuda(&f32, dl, (size_t)n, K, grad(m, p->mlp_b2), bn_scratch(m)));
    AMDIM_TRY(amdim_cuda_linear_backward(m, act(m, P->mlp_h2), (size_t)n, H, gemm_weight(m, p->mlp_w2), K, dla, dtmp,
                                         0.0f, grad(m, p->mlp_w2), NULL));
    AMDIM_TRY(amdim_dropout_cuda(kctx(m), dtmp, act_f32(m, P->mask_hidden), (size_t)n * H, dtmp));
    AMDIM_TRY(amdim_relu_backward_cuda(kctx(m), act(m, P->mlp_a1), dtmp, (size_t)n * H));
    amdim_cuda_bn bp = bn_view(m, p->mlp_bn);
    AMDIM_TRY(amdim_batchnorm_backward_cuda(kctx(m), act(m, P->mlp_z1), (size_t)n, H, &bp, act_f32(m, P->mlp_mean),
                                            act_f32(m, P->mlp_istd), dtmp, dtmp2, bn_scratch(m)));
    AMDIM_TRY(amdim_cuda_linear_backward(m, act(m, P->mlp_h0), (size_t)n, R, gemm_weight(m, p->mlp_w1), H, dtmp2, NULL,
                                         0.0f, grad(m, p->mlp_w1), NULL));
    AMDIM_TRY(amdim_classifier_loss_cuda(kctx(m), act_f32(m, P->logits[1]), n, n_all, K, labels, inv_valid, 1.0f, dl,
                                         dla, cls_rows(m, 1)));
    AMDIM_TRY(amdim_channel_sum_add_cuda(&f32, dl, (size_t)n, K, grad(m, p->lin_b), bn_scratch(m)));
    return amdim_cuda_linear_backward(m, act(m, P->feat), (size_t)n, R, gemm_weight(m, p->lin_w), K, dla, NULL, 0.0f,
                                      grad(m, p->lin_w), NULL);
}

/* The host side of a collective of m->comm failing. */
int amdim_cuda_comm_fail(amdim_model *m, int rc, const char *what)
{
    return AMDIM_MFAIL(m, rc, "rank %d of %d: %s: %s", m->comm->rank, m->comm->size, what,
                       m->comm->error ? m->comm->error(m->comm->ctx) : "collective failed");
}

/* Labels of both views and the step's draws to the device; when labelled
 * is given, this rank's labelled count, the global batch's in *valid_all
 * (summed over m->comm's ranks: a host collective, outside any graph) and
 * its inverse to the device scalars. */
int amdim_cuda_upload_step(amdim_model *m, int B, int rows, const int32_t *labels, const amdim_step_draws *d,
                           int *labelled, double *valid_all)
{
    amdim_cuda_state *c = m->bs;
    const amdim_cuda_plan *P = &c->plan;
    int valid = 0, K = m->cfg.n_classes;
    if (labels) {
        for (int r = 0; r < rows; r++) {
            c->labels2[r] = labels[r % B];
            valid += c->labels2[r] >= 0 && c->labels2[r] < K;
        }
        AMDIM_TRY(
            amdim_cuda_copy(m, act(m, P->labels2), c->labels2, (size_t)rows * sizeof(int32_t), cudaMemcpyHostToDevice));
    }
    if (labelled) {
        int rc;
        *valid_all = valid;
        if (m->comm && (rc = m->comm->allreduce_f64(m->comm->ctx, valid_all, 1)))
            return amdim_cuda_comm_fail(m, rc, "summing the labelled counts");
        double inv_valid = *valid_all > 0 ? 1.0 / *valid_all : 0.0;
        *labelled = valid;
        AMDIM_TRY(amdim_cuda_copy(m, &c->scalars->inv_valid, &inv_valid, sizeof inv_valid, cudaMemcpyHostToDevice));
    }
    if (d->src5)
        AMDIM_TRY(amdim_cuda_copy(m, act(m, P->src5), d->src5, (size_t)rows * sizeof(int32_t), cudaMemcpyHostToDevice));
    if (d->mask_in)
        AMDIM_TRY(amdim_cuda_copy(m, act(m, P->mask_in), d->mask_in, (size_t)rows * m->cfg.n_rkhs * sizeof(float),
                                  cudaMemcpyHostToDevice));
    if (d->mask_hidden)
        AMDIM_TRY(amdim_cuda_copy(m, act(m, P->mask_hidden), d->mask_hidden,
                                  (size_t)rows * m->cfg.mlp_hidden * sizeof(float), cudaMemcpyHostToDevice));
    return AMDIM_OK;
}

/* The classifier statistics from the host copy of the stats (n rows, valid
 * of them labelled): the losses are this rank's share of the global
 * batch's means (valid_all labelled rows, n times the ranks in all). */
void amdim_cuda_cls_stats(amdim_model *m, int n, int valid, double valid_all, amdim_step_stats *st)
{
    const amdim_cuda_plan *P = &cuda_of(m)->plan;
    double inv_valid = valid_all > 0 ? 1.0 / valid_all : 0.0;
    const double *base = cuda_of(m)->stats + AMDIM_CUDA_STATS_CLS * (size_t)P->batch;
    double inv_all = 1.0 / ((double)n * amdim_cuda_group_size(m) * m->cfg.n_classes);
    for (int h = 0; h < 2; h++) {
        const double *r = base + (size_t)h * 6 * cuda_of(m)->plan.batch;
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
int amdim_cuda_probes_train(amdim_model *m, int B)
{
    int stage = m->arch.nlayers + AMDIM_STAGE_PROBES_OFFSET;
    double t0 = amdim_cuda_tick(m);
    AMDIM_TRY(amdim_cuda_probes_forward(m, 2 * B, 1));
    amdim_cuda_prof(m, stage, 0, t0, B);
    t0 = amdim_cuda_tick(m);
    AMDIM_TRY(probes_backward(m, 2 * B, &cuda_of(m)->scalars->inv_valid));
    amdim_cuda_prof(m, stage, 1, t0, B);
    return AMDIM_OK;
}

/* ---- objective ------------------------------------------------------------------ */

/* The six directions: this rank's B sources (r1, and the drawn r5
 * location) against the targets of the global batch of Bg = N B images -
 * with a group (N ranks) the gathered r5 / r7 (tg, gather_targets), whose
 * gradients (dtg) the reduce-scatter brings back; without one, this
 * batch's own, Bg = B. Source si is image first + si of the global batch. */
int amdim_cuda_objectives(amdim_model *m, int B)
{
    const amdim_cuda_plan *P = &cuda_of(m)->plan;
    const amdim_model_config *cfg = &m->cfg;
    int R = cfg->n_rkhs, Bg = B * (P->ranks ? P->ranks : 1), first = P->ranks ? B * m->comm->rank : 0;
    void *feat[2][8], *dfeat[2][8]; /* [view][1, 5, 7]: activations */
    for (int v = 0; v < 2; v++) {
        feat[v][1] = act(m, P->layers[v][m->arch.nlayers - 1].out); /* (B, R) */
        dfeat[v][1] = act(m, P->dr1[v]);
        AMDIM_TRY(amdim_cuda_zero(m, dfeat[v][1], (size_t)R * B * act_bytes(m)));
        if (P->ranks) { /* (Bg, 5, 5, R), (Bg, 7, 7, R); dtg zeroed by gather_targets */
            feat[v][5] = act(m, P->tg[v][0]), feat[v][7] = act(m, P->tg[v][1]);
            dfeat[v][5] = act(m, P->dtg[v][0]), dfeat[v][7] = act(m, P->dtg[v][1]);
            continue;
        }
        feat[v][5] = act(m, P->heads[v][0].out); /* (B, 5, 5, R) */
        feat[v][7] = act(m, P->heads[v][1].out); /* (B, 7, 7, R) */
        dfeat[v][5] = act(m, P->dr5[v]), dfeat[v][7] = act(m, P->dr7[v]);
        AMDIM_TRY(amdim_cuda_zero(m, dfeat[v][5], (size_t)R * B * 25 * act_bytes(m)));
        AMDIM_TRY(amdim_cuda_zero(m, dfeat[v][7], (size_t)R * B * 49 * act_bytes(m)));
    }
    float scale = 1.0f / sqrtf((float)R), *S = act_f32(m, P->scores), *dS = act_f32(m, P->dscores);
    void *dSa = act(m, P->dscores_act); /* dS as activations: the backward GEMMs' operand (dS itself in fp32) */
    for (int k = 0; k < AMDIM_NCE_DIRECTIONS; k++) {
        const amdim_nce_direction *d = &m->arch.dirs[k];
        int a = d->src_view, b = 1 - a, BL = Bg * d->L;
        const int32_t *idx = (const int32_t *)(const void *)act(m, P->src5) + (size_t)a * B;
        const void *src = feat[a][1], *tgt = feat[b][d->tgt_feature];
        void *dsrc = dfeat[a][1], *dtgt = dfeat[b][d->tgt_feature];
        if (d->src_feature == 5) { /* one drawn location of this rank's r5 per image */
            AMDIM_TRY(amdim_gather_rows_cuda(kctx(m), act(m, P->heads[a][0].out), idx, B, R, act(m, P->src)));
            AMDIM_TRY(amdim_cuda_zero(m, act(m, P->dsrc), (size_t)R * B * act_bytes(m)));
            src = act(m, P->src);
            dsrc = act(m, P->dsrc);
        }
        /* S (B, Bg L) = src (B, R) tgt (Bg L, R)^T / sqrt(R) */
        AMDIM_TRY(amdim_cuda_nce_gemm(m, 0, 1, B, BL, R, scale, src, R, tgt, R, 0.0f, S, BL, C_F32));
        AMDIM_TRY(amdim_nce_rows_cuda(kctx(m), S, dS, dSa, B, first, Bg, d->L, cfg->tclip, cfg->objective, 0.5f, 0.5f,
                                      (double *)act(m, P->stats) + (size_t)k * 2 * B));
        AMDIM_TRY(amdim_cuda_nce_gemm(m, 0, 0, B, R, BL, scale, dSa, BL, tgt, R, 1.0f, dsrc, R, C_ACT));
        AMDIM_TRY(amdim_cuda_nce_gemm(m, 1, 0, BL, R, B, scale, dSa, BL, src, R, 1.0f, dtgt, R, C_ACT));
        /* the drawn sources' gradient joins the targets' at image first + i
         * (with a group: summed by the reduce-scatter in the order one
         * process sums it) */
        if (d->src_feature == 5)
            AMDIM_TRY(amdim_scatter_rows_add_cuda(kctx(m), act(m, P->dsrc), idx, B, R,
                                                  (char *)dfeat[a][5] + (size_t)first * 25 * R * act_bytes(m)));
    }
    return AMDIM_OK;
}

/* The objective's statistics from the host copy of the stats; with a
 * group, this rank's B rows' share of the global batch's means (Bg = N B
 * images), which the ranks' sum (reduce_stats) completes. */
void amdim_cuda_nce_stats(amdim_model *m, int B, amdim_step_stats *st)
{
    double reg = 0, task[3] = {0, 0, 0}, Bg = (double)B * (cuda_of(m)->plan.ranks ? cuda_of(m)->plan.ranks : 1);
    for (int k = 0; k < AMDIM_NCE_DIRECTIONS; k++) {
        const amdim_nce_direction *d = &m->arch.dirs[k];
        const double *r = cuda_of(m)->stats + (size_t)k * 2 * B;
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

int amdim_cuda_pull_stats(amdim_model *m)
{
    const amdim_cuda_plan *P = &cuda_of(m)->plan;
    return amdim_cuda_copy(m, cuda_of(m)->stats, act(m, P->stats),
                           (AMDIM_CUDA_STATS_CLS + 12) * (size_t)P->batch * sizeof(double), cudaMemcpyDeviceToHost);
}
