/* The CPU backend: the reference the CUDA backend is tested against.
 * Activations are float32 (C, B, H, W) - see ops_internal.h - and the
 * model's host mirror is the state itself (no pull / push). Its table and
 * step entry points, over encoder_cpu.c and objectives_cpu.c
 * (cpu_internal.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "cpu_internal.h"

int amdim_cpu_op(amdim_model *m, int rc) { return rc == AMDIM_OK ? AMDIM_OK : amdim_cpu_op_fail(m, rc); }

/* An op's failure: out of memory, or the process group's. */
int amdim_cpu_op_fail(amdim_model *m, int rc)
{
    if (rc == AMDIM_E_NOMEM || !m->comm)
        return NOMEM();
    return AMDIM_MFAIL(m, rc, "rank %d of %d: %s", m->comm->rank, m->comm->size,
                       m->comm->error ? m->comm->error(m->comm->ctx) : "collective failed");
}

/* BatchNorm r over x (C channels of cnt values) into y: the batch's
 * statistics when training (kept in mean / istd), the running ones
 * otherwise, a copy when r is off. */
int amdim_cpu_bn_forward(amdim_model *m, amdim_bn_ref r, const float *x, int C, size_t cnt, int train, float *y,
                         float *mean, float *istd)
{
    if (!r.on) {
        memcpy(y, x, (size_t)C * cnt * sizeof(float));
        return AMDIM_OK;
    }
    amdim_cpu_bn_params bp = bn_view(m, r);
    if (train)
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_batchnorm_forward_train(x, C, cnt, &bp, y, mean, istd)));
    else
        amdim_cpu_batchnorm_forward_eval(x, C, cnt, &bp, y);
    return AMDIM_OK;
}

void amdim_cpu_prof(amdim_model *m, int stage, int backward, double t0, int B)
{
    if (m->profile)
        amdim_model_prof_add(m, stage, backward, amdim_now() - t0, B);
}

/* ---- inputs ----------------------------------------------------------------- */

static void normalise_views(const amdim_model *m, const uint8_t *nhwc, int B, float *cnhw)
{
    int S = m->cfg.encoder_size;
    size_t plane = (size_t)S * S;
    for (int c = 0; c < 3; c++) {
        float scale = 1.0f / (255.0f * m->cfg.std[c]), shift = m->cfg.mean[c] / m->cfg.std[c];
        for (int b = 0; b < B; b++) {
            const uint8_t *src = nhwc + (size_t)b * plane * 3 + c;
            float *dst = cnhw + ((size_t)c * B + b) * plane;
            for (size_t i = 0; i < plane; i++)
                dst[i] = amdim_normalise_pixel(src[3 * i], scale, shift);
        }
    }
}

static void nchw_to_cnhw(const float *in, int B, int C, int HW, float *out)
{
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            memcpy(out + ((size_t)c * B + b) * HW, in + ((size_t)b * C + c) * HW, (size_t)HW * sizeof(float));
}

static void load_input(amdim_model *m, const amdim_step_input *in, int v)
{
    amdim_cpu_state *c = m->bs;
    int S = m->cfg.encoder_size;
    if (in->u8[v])
        normalise_views(m, in->u8[v], in->batch, c->x[v]);
    else
        nchw_to_cnhw(in->f32[v], in->batch, 3, S * S, c->x[v]);
}

/* ---- the backend functions --------------------------------------------------- */

static int amdim_cpu_open(amdim_model *m)
{
    m->bs = calloc(1, sizeof(amdim_cpu_state));
    return m->bs ? AMDIM_OK : AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory");
}

static void amdim_cpu_close(amdim_model *m)
{
    amdim_cpu_state *c = m->bs;
    if (!c)
        return;
    amdim_cpu_free_buffers(m, c);
    amdim_cpu_op_scratch_free(&c->scr);
    amdim_cpu_op_scratch_free(&c->scr2);
    amdim_cpu_nce_scratch_free(&c->nce);
    free(c);
    m->bs = NULL;
}

static int forward_backward(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d, amdim_step_stats *st)
{
    int B = in->batch, rc;
    memset(m->grads, 0, m->arch.grads_size * sizeof(float));
    for (int v = 0; v < 2; v++) {
        load_input(m, in, v);
        if ((rc = amdim_cpu_encoder_forward(m, v, B, 1, 1)))
            return rc;
    }
    int stage = m->arch.nlayers + AMDIM_STAGE_OBJECTIVE_OFFSET;
    double t0 = tick(m);
    if ((rc = amdim_cpu_objectives(m, B, d->src5, st)))
        return rc;
    amdim_cpu_prof(m, stage, 0, t0, B);
    amdim_cpu_prof(m, stage, 1, amdim_now(), B); /* the backward FLOPs; its time is in the forward's */
    amdim_cpu_gather_features(m, 0, B);
    amdim_cpu_gather_features(m, 1, B);
    if ((rc = amdim_cpu_probes_train(m, B, in->labels, d, st)))
        return rc;
    for (int v = 0; v < 2; v++)
        if ((rc = amdim_cpu_encoder_backward(m, v, B)))
            return rc;
    if ((rc = amdim_cpu_reduce_step(m, st)))
        return rc;
    st->total = st->nce_1t5 + st->nce_1t7 + st->nce_5t5 + st->reg + st->cls_mlp + st->cls_lin;
    if (m->cfg.mixtures > 1) /* the entropy bonus: reported, no gradient (q is a constant) */
        st->total -= m->cfg.mix_entropy * st->mix_entropy;
    return AMDIM_OK;
}

static int probe_step(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d, amdim_step_stats *st)
{
    int B = in->batch, rc;
    memset(m->grads, 0, m->arch.grads_size * sizeof(float));
    for (int v = 0; v < 2; v++) { /* frozen encoder: eval mode */
        load_input(m, in, v);
        if ((rc = amdim_cpu_encoder_forward(m, v, B, 0, 0)))
            return rc;
        amdim_cpu_gather_features(m, v, B);
    }
    if ((rc = amdim_cpu_probes_train(m, B, in->labels, d, st)) || (rc = amdim_cpu_reduce_step(m, st)))
        return rc;
    st->total = st->cls_mlp + st->cls_lin;
    return AMDIM_OK;
}

/* A training step (or probe step): the process group takes part from
 * here to its end, and only here. */
static int amdim_cpu_step(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d, amdim_step_stats *st,
                          int probes)
{
    amdim_cpu_state *c = m->bs;
    int rc = amdim_cpu_ensure_buffers_for(m, in->batch, 1);
    if (rc)
        return rc;
    c->comm_on = 1;
    rc = probes ? probe_step(m, in, d, st) : forward_backward(m, in, d, st);
    c->comm_on = 0;
    return rc;
}

static int amdim_cpu_forward_backward(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d,
                                      amdim_step_stats *st)
{
    return amdim_cpu_step(m, in, d, st, 0);
}

static int amdim_cpu_probe_step(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d,
                                amdim_step_stats *st)
{
    return amdim_cpu_step(m, in, d, st, 1);
}

static int amdim_cpu_adam(amdim_model *m, const amdim_adam_hparams *h, int probes_only)
{
    for (int i = 0; i < m->arch.ntensors; i++) {
        const amdim_tensor *t = &m->arch.tensors[i];
        if (!t->trainable || (probes_only && !t->probe))
            continue;
        float *w = m->weights + t->offset, *g = m->grads + t->goffset, *mm = m->adam_m + t->goffset,
              *vv = m->adam_v + t->goffset;
        for (size_t k = 0; k < t->size; k++)
            w[k] = amdim_adam_element(w[k], g[k], &mm[k], &vv[k], h);
    }
    return AMDIM_OK;
}

static int amdim_cpu_evaluate(amdim_model *m, const uint8_t *images, int B, float *features, float *lm, float *ll)
{
    amdim_cpu_state *c;
    int rc = amdim_cpu_ensure_buffers(m, B);
    if (rc)
        return rc;
    c = m->bs;
    int R = m->cfg.n_rkhs, K = m->cfg.n_classes;
    normalise_views(m, images, B, c->x[0]);
    if ((rc = amdim_cpu_encoder_forward(m, 0, B, 0, 0)))
        return rc;
    amdim_cpu_gather_features(m, 0, B);
    if (features)
        memcpy(features, c->feat, (size_t)B * R * sizeof(float));
    if (lm || ll) {
        if ((rc = amdim_cpu_probes_forward(m, B, NULL, NULL, 0)))
            return rc;
        if (lm)
            memcpy(lm, c->logits[0], (size_t)B * K * sizeof(float));
        if (ll)
            memcpy(ll, c->logits[1], (size_t)B * K * sizeof(float));
    }
    m->batch = 0; /* the training outputs were overwritten */
    return AMDIM_OK;
}

static int amdim_cpu_refresh_bn(amdim_model *m, const uint8_t *images, int B, const amdim_step_draws *d)
{
    int rc = amdim_cpu_ensure_buffers(m, B);
    if (rc)
        return rc;
    amdim_cpu_state *c = m->bs;
    normalise_views(m, images, B, c->x[0]);
    if ((rc = amdim_cpu_encoder_forward(m, 0, B, 1, 1)))
        return rc;
    amdim_cpu_gather_features(m, 0, B);
    m->batch = 0;
    return amdim_cpu_probes_forward(m, B, d->mask_in, d->mask_hidden, 1);
}

static int amdim_cpu_mixture_assign(amdim_model *m, const uint8_t *images, int B, int32_t *winner)
{
    int rc = amdim_cpu_ensure_buffers(m, B);
    if (rc)
        return rc;
    amdim_cpu_state *c = m->bs;
    int K = m->cfg.mixtures, R = m->cfg.n_rkhs;
    size_t BL = (size_t)B * 49;
    normalise_views(m, images, B, c->x[0]);
    if ((rc = amdim_cpu_encoder_forward(m, 0, B, 0, 1)))
        return rc;
    m->batch = 0;
    amdim_cpu_mix_forward(m, 0, B);
    double l, r;
    for (int j = 0; j < K; j++)
        AMDIM_TRY(amdim_cpu_op(m, amdim_cpu_nce_direction(c->mix[0] + (size_t)j * R * B, c->hc[0][1].out, R, B, 49,
                                                          m->cfg.tclip, AMDIM_OBJECTIVE_NCE, 0, 0, NULL,
                                                          c->mix_lsm + j * BL, &l, &r, NULL, NULL, &c->nce)));
    amdim_cpu_mix_assign(m, c->mix_lsm, BL, c->mix_q);
    for (size_t k = 0; k < BL; k++) {
        int best = 0;
        for (int j = 1; j < K; j++)
            best = c->mix_q[j * BL + k] > c->mix_q[best * BL + k] ? j : best;
        winner[k] = best;
    }
    return AMDIM_OK;
}

static int amdim_cpu_output(const amdim_model *m, int view, int which, float *out)
{
    const amdim_cpu_state *c = m->bs;
    int B = m->batch, R = m->cfg.n_rkhs, hw = which == 1 ? 1 : which == 5 ? 25 : 49;
    const float *src = which == 1 ? c->lc[view][m->arch.nlayers - 1].out : c->hc[view][which == 5 ? 0 : 1].out;
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < R; ch++)
            memcpy(out + ((size_t)b * R + ch) * hw, src + ((size_t)ch * B + b) * hw, (size_t)hw * sizeof(float));
    return AMDIM_OK;
}

static int amdim_cpu_logits(const amdim_model *m, int head, float *out)
{
    const amdim_cpu_state *c = m->bs;
    memcpy(out, c->logits[head], (size_t)2 * m->batch * m->cfg.n_classes * sizeof(float));
    return AMDIM_OK;
}

/* OpenBLAS's threads: process-wide, as OpenBLAS keeps them. */
static int amdim_cpu_set_threads(amdim_model *m, int threads)
{
    (void)m;
    openblas_set_num_threads(threads);
    return AMDIM_OK;
}

const amdim_backend amdim_backend_cpu = {
    .name = "cpu",
    .open = amdim_cpu_open,
    .close = amdim_cpu_close,
    .forward_backward = amdim_cpu_forward_backward,
    .probe_step = amdim_cpu_probe_step,
    .adam = amdim_cpu_adam,
    .evaluate = amdim_cpu_evaluate,
    .refresh_bn = amdim_cpu_refresh_bn,
    .output = amdim_cpu_output,
    .logits = amdim_cpu_logits,
    .mixture_assign = amdim_cpu_mixture_assign,
    .set_threads = amdim_cpu_set_threads,
    .pull = NULL,
    .push = NULL,
};
