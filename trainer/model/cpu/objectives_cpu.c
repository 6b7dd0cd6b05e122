/* The CPU backend's objectives (cpu_internal.h): mixtures, the online
 * probes, the data-parallel exchanges of targets and statistics, the six
 * NCE directions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "cpu_internal.h"

/* ---- mixtures ------------------------------------------------------------ */

/* The K mixture features (K, R, B) of r1 of view v into c->mix[v]. */
void amdim_cpu_mix_forward(amdim_model *m, int v, int B)
{
    amdim_cpu_state *c = m->bs;
    const amdim_mixture *x = &m->arch.mix;
    amdim_cpu_mixture_forward(c->lc[v][m->arch.nlayers - 1].out, m->cfg.n_rkhs, B, m->cfg.mixtures, weight(m, x->w1),
                              weight(m, x->b1), weight(m, x->w2), weight(m, x->b2), c->mix_h[v], c->mix[v]);
}

/* Per consequent location k of a direction (BL of them): the components'
 * log-softmax terms lsm (K, BL) into the assignment q (K, BL). Returns
 * the mean entropy of q. */
double amdim_cpu_mix_assign(const amdim_model *m, const double *lsm, size_t BL, double *q)
{
    double h = 0;
    for (size_t k = 0; k < BL; k++)
        h += amdim_mix_assign(lsm + k, m->cfg.mixtures, BL, m->cfg.mix_tau, q + k);
    return h / (double)BL;
}

/* One direction with the K mixture sources mixT (K, R, B) against tgt (R,
 * B*L): the components' NCE terms s_j, the assignment q = softmax_j(tau
 * s_j) held constant (no gradient), then loss = -mean sum_j q_j s_j and
 * reg = the components' mean, with gradients (direction weight 0.5) into
 * dmixT and dtgt. *entropy: mean H(q). */
static int amdim_cpu_mix_direction(amdim_model *m, const float *mixT, float *dmixT, const float *tgt, float *dtgt,
                                   int B, int L, double *loss, double *reg, double *entropy)
{
    amdim_cpu_state *c = m->bs;
    int K = m->cfg.mixtures, R = m->cfg.n_rkhs;
    size_t BL = (size_t)B * L, RB = (size_t)R * B;
    double l, r;
    for (int j = 0; j < K; j++)
        AMDIM_TRY(
            amdim_cpu_op(m, amdim_cpu_nce_direction(mixT + j * RB, tgt, R, B, L, m->cfg.tclip, AMDIM_OBJECTIVE_NCE, 0,
                                                    0, NULL, c->mix_lsm + j * BL, &l, &r, NULL, NULL, &c->nce)));
    *entropy = amdim_cpu_mix_assign(m, c->mix_lsm, BL, c->mix_q);
    *loss = *reg = 0;
    for (int j = 0; j < K; j++) {
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_nce_direction(mixT + j * RB, tgt, R, B, L, m->cfg.tclip,
                                                          AMDIM_OBJECTIVE_NCE, 0.5f, 0.5f / K, c->mix_q + j * BL, NULL,
                                                          &l, &r, dmixT + j * RB, dtgt, &c->nce)));
        *loss += l;
        *reg += r / K;
    }
    return AMDIM_OK;
}

/* What the probes read, view v, into rows [v B, v B + B) of feat (rows of
 * R): r1 (R, B), or the mean of its K mixture features. */
void amdim_cpu_gather_features(amdim_model *m, int v, int B)
{
    amdim_cpu_state *c = m->bs;
    int R = m->cfg.n_rkhs, K = m->cfg.mixtures;
    const float *r1 = c->lc[v][m->arch.nlayers - 1].out;
    if (m->cfg.probe_features) {
        amdim_cpu_mix_forward(m, v, B);
        for (int i = 0; i < B; i++)
            for (int ch = 0; ch < R; ch++) {
                double sum = 0;
                for (int j = 0; j < K; j++)
                    sum += c->mix[v][((size_t)j * R + ch) * B + i];
                c->feat[((size_t)v * B + i) * R + ch] = (float)(sum / K);
            }
        return;
    }
    for (int i = 0; i < B; i++)
        for (int ch = 0; ch < R; ch++)
            c->feat[((size_t)v * B + i) * R + ch] = r1[(size_t)ch * B + i];
}

/* ---- probes ------------------------------------------------------------- */

int amdim_cpu_probes_forward(amdim_model *m, int n, const float *mask_in, const float *mask_hidden, int train)
{
    amdim_cpu_state *c = m->bs;
    const amdim_probes *p = &m->arch.probes;
    int R = m->cfg.n_rkhs, H = m->cfg.mlp_hidden, K = m->cfg.n_classes;
    const float *in = c->feat;
    if (train) {
        amdim_cpu_dropout_forward(c->feat, mask_in, AMDIM_DROPOUT_P, (size_t)n * R, c->mlp_h0);
        in = c->mlp_h0;
    }
    amdim_cpu_linear_forward(in, n, R, weight(m, p->mlp_w1), NULL, H, c->mlp_z1);
    amdim_cpu_bn_params bp = bn_view(m, p->mlp_bn);
    if (train)
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_batchnorm1d_forward_train(c->mlp_z1, n, H, &bp, c->mlp_a1, c->mlp_mean,
                                                                      c->mlp_istd, &c->scr)));
    else
        amdim_cpu_batchnorm1d_forward_eval(c->mlp_z1, n, H, &bp, c->mlp_a1);
    amdim_cpu_relu_forward(c->mlp_a1, (size_t)n * H);
    const float *h2 = c->mlp_a1;
    if (train) {
        amdim_cpu_dropout_forward(c->mlp_a1, mask_hidden, AMDIM_DROPOUT_P, (size_t)n * H, c->mlp_h2);
        h2 = c->mlp_h2;
    }
    amdim_cpu_linear_forward(h2, n, H, weight(m, p->mlp_w2), weight(m, p->mlp_b2), K, c->logits[0]);
    amdim_cpu_linear_forward(c->feat, n, R, weight(m, p->lin_w), weight(m, p->lin_b), K, c->logits[1]);
    return AMDIM_OK;
}

static int amdim_cpu_probes_backward(amdim_model *m, int n, const int32_t *labels2, const float *mask_hidden,
                                     amdim_step_stats *st)
{
    amdim_cpu_state *c = m->bs;
    const amdim_probes *p = &m->arch.probes;
    int R = m->cfg.n_rkhs, H = m->cfg.mlp_hidden, K = m->cfg.n_classes, corr, lab;
    /* the means are over the global batch's rows and labelled rows */
    const amdim_comm *cm = step_comm(m);
    double n_all = (double)n * (cm ? cm->size : 1), valid_all = amdim_cpu_count_labelled(labels2, n, K);
    if (cm)
        AMDIM_TRY(amdim_cpu_op(m, cm->allreduce_f64(cm->ctx, &valid_all, 1)));
    st->cls_mlp =
        amdim_cpu_classifier_loss_part(c->logits[0], n, K, labels2, c->dlogits, 1.0f, n_all, valid_all, &corr, &lab);
    st->correct_mlp = corr;
    st->labelled = lab;
    amdim_cpu_linear_backward(c->mlp_h2, n, H, weight(m, p->mlp_w2), K, c->dlogits, c->dtmp, grad(m, p->mlp_w2),
                              grad(m, p->mlp_b2));
    amdim_cpu_dropout_backward(c->dtmp, mask_hidden, AMDIM_DROPOUT_P, (size_t)n * H, c->dtmp);
    amdim_cpu_relu_backward(c->mlp_a1, c->dtmp, (size_t)n * H);
    amdim_cpu_bn_params bp = bn_view(m, p->mlp_bn);
    AMDIM_TRY(amdim_cpu_op(
        m, amdim_cpu_batchnorm1d_backward(c->mlp_z1, n, H, &bp, c->mlp_mean, c->mlp_istd, c->dtmp, c->dtmp2, &c->scr)));
    amdim_cpu_linear_backward(c->mlp_h0, n, R, weight(m, p->mlp_w1), H, c->dtmp2, NULL, grad(m, p->mlp_w1), NULL);
    st->cls_lin =
        amdim_cpu_classifier_loss_part(c->logits[1], n, K, labels2, c->dlogits, 1.0f, n_all, valid_all, &corr, NULL);
    st->correct_lin = corr;
    amdim_cpu_linear_backward(c->feat, n, R, weight(m, p->lin_w), K, c->dlogits, NULL, grad(m, p->lin_w),
                              grad(m, p->lin_b));
    return AMDIM_OK;
}

/* Both probes on rows feat[0, n) with labels duplicated for two views. */
int amdim_cpu_probes_train(amdim_model *m, int B, const int32_t *labels, const amdim_step_draws *d,
                           amdim_step_stats *st)
{
    amdim_cpu_state *c = m->bs;
    memcpy(c->labels2, labels, (size_t)B * sizeof *labels);
    memcpy(c->labels2 + B, labels, (size_t)B * sizeof *labels);
    int stage = m->arch.nlayers + AMDIM_STAGE_PROBES_OFFSET, rc;
    double t0 = tick(m);
    if ((rc = amdim_cpu_probes_forward(m, 2 * B, d->mask_in, d->mask_hidden, 1)))
        return rc;
    amdim_cpu_prof(m, stage, 0, t0, B);
    t0 = tick(m);
    if ((rc = amdim_cpu_probes_backward(m, 2 * B, c->labels2, d->mask_hidden, st)))
        return rc;
    amdim_cpu_prof(m, stage, 1, t0, B);
    return AMDIM_OK;
}

/* ---- data parallelism --------------------------------------------------------- */

/* Floats a rank sends of r5 and r7 (or their gradients): view 0's r5 and
 * r7, then view 1's, (R, B hw) each. */
static size_t amdim_cpu_target_block(int B, int R) { return (size_t)R * B * 2 * (25 + 49); }

/* All-gathers r5 and r7 of both views into c->tg, (R, N B hw): image
 * r B + i of the global batch is rank r's image i. Zeroes c->dtg. */
static int amdim_cpu_gather_targets(amdim_model *m, int B)
{
    amdim_cpu_state *c = m->bs;
    const amdim_comm *cm = step_comm(m);
    int R = m->cfg.n_rkhs, N = cm->size;
    size_t n = amdim_cpu_target_block(B, R), off = 0;
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++) {
            size_t k = (size_t)R * B * (f ? 49 : 25);
            memcpy(c->pack + off, c->hc[v][f].out, k * sizeof(float));
            off += k;
        }
    AMDIM_TRY(amdim_cpu_op(m, cm->allgather_f32(cm->ctx, c->pack, c->unpack, n)));
    off = 0;
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++) {
            size_t run = (size_t)B * (f ? 49 : 25); /* one channel of one rank */
            for (int r = 0; r < N; r++)
                for (int ch = 0; ch < R; ch++)
                    memcpy(c->tg[v][f] + ((size_t)ch * N + r) * run, c->unpack + r * n + off + ch * run,
                           run * sizeof(float));
            off += R * run;
            memset(c->dtg[v][f], 0, (size_t)N * R * run * sizeof(float));
        }
    return AMDIM_OK;
}

/* Sums the ranks' gradients of the gathered targets (the drawn r5
 * sources' included) and adds this rank's images' share into dr5 / dr7,
 * which hold nothing else yet (reduce-scatter). */
static int amdim_cpu_scatter_target_grads(amdim_model *m, int B)
{
    amdim_cpu_state *c = m->bs;
    const amdim_comm *cm = step_comm(m);
    int R = m->cfg.n_rkhs, N = cm->size;
    size_t n = amdim_cpu_target_block(B, R), off = 0;
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++) {
            size_t run = (size_t)B * (f ? 49 : 25);
            for (int r = 0; r < N; r++)
                for (int ch = 0; ch < R; ch++)
                    memcpy(c->pack + r * n + off + ch * run, c->dtg[v][f] + ((size_t)ch * N + r) * run,
                           run * sizeof(float));
            off += R * run;
        }
    AMDIM_TRY(amdim_cpu_op(m, cm->reduce_scatter_f32(cm->ctx, c->pack, c->unpack, n)));
    off = 0;
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++) {
            float *d = f ? c->dr7[v] : c->dr5[v];
            size_t k = (size_t)R * B * (f ? 49 : 25);
            for (size_t i = 0; i < k; i++)
                d[i] += c->unpack[off + i];
            off += k;
        }
    return AMDIM_OK;
}

/* After a step's backward: gradients and the loss terms summed over ranks;
 * with per-rank BatchNorm, the running statistics averaged over ranks. */
int amdim_cpu_reduce_step(amdim_model *m, amdim_step_stats *st)
{
    amdim_cpu_state *c = m->bs;
    const amdim_comm *cm = step_comm(m);
    if (!cm)
        return AMDIM_OK;
    /* the classifier phase trains the probes only: their gradients alone */
    size_t from = 0;
    if (m->probes_only) {
        from = m->arch.grads_size;
        for (int i = 0; i < m->arch.ntensors; i++)
            if (m->arch.tensors[i].probe && m->arch.tensors[i].has_grad && m->arch.tensors[i].goffset < from)
                from = m->arch.tensors[i].goffset;
        for (int i = 0; i < m->arch.ntensors; i++) /* they are the block's tail */
            AMDIM_ASSERT(!m->arch.tensors[i].has_grad || m->arch.tensors[i].probe || m->arch.tensors[i].goffset < from);
    }
    AMDIM_TRY(amdim_cpu_op(m, cm->allreduce_f32(cm->ctx, m->grads + from, m->arch.grads_size - from)));
    double v[9] = {st->nce_1t5, st->nce_1t7,     st->nce_5t5,     st->reg,     st->cls_mlp,
                   st->cls_lin, st->correct_mlp, st->correct_lin, st->labelled};
    AMDIM_TRY(amdim_cpu_op(m, cm->allreduce_f64(cm->ctx, v, 9)));
    st->nce_1t5 = v[0], st->nce_1t7 = v[1], st->nce_5t5 = v[2], st->reg = v[3], st->cls_mlp = v[4];
    st->cls_lin = v[5], st->correct_mlp = (int)v[6], st->correct_lin = (int)v[7], st->labelled = (int)v[8];
    if (cm->sync_bn) /* the statistics were the global batch's: equal everywhere */
        return AMDIM_OK;
    size_t k = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < m->arch.ntensors; i++) {
            const amdim_tensor *t = &m->arch.tensors[i];
            if ((t->role != AMDIM_ROLE_BN_MEAN && t->role != AMDIM_ROLE_BN_VAR) || (m->probes_only && !t->probe))
                continue; /* the classifier phase: the frozen encoder's statistics do not move */
            float *w = m->weights + t->offset;
            for (size_t j = 0; j < t->size; j++, k++)
                if (pass == 0)
                    c->bn_avg[k] = w[j];
                else
                    w[j] = (float)(c->bn_avg[k] / cm->size);
        }
        if (pass == 0) {
            AMDIM_TRY(amdim_cpu_op(m, cm->allreduce_f64(cm->ctx, c->bn_avg, k)));
            k = 0;
        }
    }
    return AMDIM_OK;
}

/* ---- objective ------------------------------------------------------------ */

/* The features the directions read and the gradients they write:
 * [view][1, 5, 7] for r1 (R, B), r5 (R, B*25), r7 (R, B*49) - with a
 * group, r5 and r7 of the global batch (Bg images, this rank's first). */
typedef struct {
    float *feat[2][8], *dfeat[2][8];
    int Bg, first;
} objective_features;

static int features(amdim_model *m, int B, objective_features *f)
{
    amdim_cpu_state *c = m->bs;
    int R = m->cfg.n_rkhs, K = m->cfg.mixtures;
    for (int v = 0; v < 2; v++) {
        f->feat[v][1] = c->lc[v][m->arch.nlayers - 1].out;
        f->feat[v][5] = c->hc[v][0].out;
        f->feat[v][7] = c->hc[v][1].out;
        f->dfeat[v][1] = c->dr1[v], f->dfeat[v][5] = c->dr5[v], f->dfeat[v][7] = c->dr7[v];
        memset(c->dr1[v], 0, (size_t)R * B * sizeof(float));
        memset(c->dr5[v], 0, (size_t)R * B * 25 * sizeof(float));
        memset(c->dr7[v], 0, (size_t)R * B * 49 * sizeof(float));
    }
    for (int v = 0; v < 2 && K > 1; v++) {
        amdim_cpu_mix_forward(m, v, B);
        memset(c->dmix[v], 0, (size_t)K * R * B * sizeof(float));
    }
    /* across ranks: this rank's sources against the global batch's targets */
    const amdim_comm *cm = step_comm(m);
    f->Bg = B, f->first = 0;
    if (!cm)
        return AMDIM_OK;
    AMDIM_ASSERT(K == 1);
    AMDIM_TRY(amdim_cpu_gather_targets(m, B));
    for (int v = 0; v < 2; v++) {
        f->feat[v][5] = c->tg[v][0], f->feat[v][7] = c->tg[v][1];
        f->dfeat[v][5] = c->dtg[v][0], f->dfeat[v][7] = c->dtg[v][1];
    }
    f->Bg = B * cm->size, f->first = B * cm->rank;
    return AMDIM_OK;
}

/* One NCE direction without mixtures: its loss and regulariser into
 * *loss, *reg1, its gradients added to the features'. */
static int direction(amdim_model *m, const amdim_nce_direction *d, int B, const int32_t *src5,
                     const objective_features *f, double *loss, double *reg1)
{
    amdim_cpu_state *c = m->bs;
    const amdim_model_config *cfg = &m->cfg;
    int R = cfg->n_rkhs, a = d->src_view, b = 1 - a;
    const float *src = c->lc[a][m->arch.nlayers - 1].out; /* r1 (R, B) */
    float *dsrc = c->dr1[a];
    const int32_t *idx = src5 + (size_t)a * B;
    if (d->src_feature == 5) { /* one drawn location of r5 per image */
        for (int ch = 0; ch < R; ch++)
            for (int i = 0; i < B; i++)
                c->srcT[(size_t)ch * B + i] = c->hc[a][0].out[((size_t)ch * B + i) * 25 + idx[i]];
        memset(c->dsrcT, 0, (size_t)R * B * sizeof(float));
        src = c->srcT;
        dsrc = c->dsrcT;
    }
    AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_nce_direction_part(src, B, f->first, f->feat[b][d->tgt_feature], R, f->Bg,
                                                           d->L, cfg->tclip, cfg->objective, 0.5f, 0.5f, NULL, NULL,
                                                           loss, reg1, dsrc, f->dfeat[b][d->tgt_feature], &c->nce)));
    /* the drawn r5 sources' gradient joins the targets' (image first + i
     * of the global batch): the reduce-scatter then brings this rank's
     * whole r5 gradient, summed in the order one process sums it */
    if (d->src_feature == 5)
        for (int ch = 0; ch < R; ch++)
            for (int i = 0; i < B; i++)
                f->dfeat[a][5][((size_t)ch * f->Bg + f->first + i) * 25 + idx[i]] += c->dsrcT[(size_t)ch * B + i];
    return AMDIM_OK;
}

int amdim_cpu_objectives(amdim_model *m, int B, const int32_t *src5, amdim_step_stats *st)
{
    amdim_cpu_state *c = m->bs;
    int R = m->cfg.n_rkhs, K = m->cfg.mixtures;
    objective_features f;
    AMDIM_TRY(features(m, B, &f));
    double reg = 0, task[3] = {0, 0, 0}, entropy = 0;
    for (int k = 0; k < AMDIM_NCE_DIRECTIONS; k++) {
        const amdim_nce_direction *d = &m->arch.dirs[k];
        int a = d->src_view, b = 1 - a;
        double loss = 0, reg1 = 0, h = 0;
        if (d->mixtures > 1)
            AMDIM_TRY(amdim_cpu_mix_direction(m, c->mix[a], c->dmix[a], f.feat[b][d->tgt_feature],
                                              f.dfeat[b][d->tgt_feature], B, d->L, &loss, &reg1, &h));
        else
            AMDIM_TRY(direction(m, d, B, src5, &f, &loss, &reg1));
        task[d->task] += 0.5 * loss;
        reg += reg1;
        entropy += 0.5 * h;
    }
    if (step_comm(m))
        AMDIM_TRY(amdim_cpu_scatter_target_grads(m, B));
    /* the mixture MLP's backward, once both r1 directions of a view are in */
    const amdim_mixture *x = &m->arch.mix;
    for (int v = 0; v < 2 && K > 1; v++)
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_mixture_backward(f.feat[v][1], c->mix_h[v], R, B, K, weight(m, x->w1),
                                                             weight(m, x->w2), c->dmix[v], c->dr1[v], grad(m, x->w1),
                                                             grad(m, x->b1), grad(m, x->w2), grad(m, x->b2), &c->scr)));
    st->nce_1t5 = task[0];
    st->nce_1t7 = task[1];
    st->nce_5t5 = task[2];
    st->reg = 0.5 * reg;
    st->mix_entropy = entropy;
    return AMDIM_OK;
}
