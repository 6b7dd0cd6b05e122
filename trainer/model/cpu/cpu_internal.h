/* Private to the CPU backend: its state, the accessors its parts share,
 * and their functions. The backend is one table (backend_cpu.c) over:
 *   encoder_cpu.c     its buffers, layers and heads forward and backward
 *   objectives_cpu.c  mixtures, the online probes, the data-parallel
 *                     exchanges, the six NCE directions
 * on the ops of ops_internal.h and nce_internal.h. Activations are float32
 * (C, B, H, W). Functions return 0 or AMDIM_E_* with the reason in m->err. */
#ifndef AMDIM_CPU_INTERNAL_H
#define AMDIM_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "backend_internal.h"
#include "nce_internal.h"
#include "ops_internal.h"

typedef struct {
    float *out, *padded, *h1, *r, *mean, *istd;
} layer_cache;

typedef struct {
    float *h1, *r, *sum, *out, *mean1, *istd1, *mean2, *istd2;
} head_cache;

typedef struct {
    int batch; /* buffers are sized for this batch (0: none) */
    float *x[2];
    layer_cache *lc[2];
    head_cache hc[2][2];
    float *feat, *mlp_h0, *mlp_z1, *mlp_a1, *mlp_h2, *mlp_mean, *mlp_istd, *logits[2], *dlogits, *dtmp, *dtmp2;
    float *grad_a, *grad_b, *dhead[2], *dr5[2], *dr7[2], *dr1[2];
    float *srcT, *dsrcT;
    /* mixtures (K > 1): per view h (R, B), the K sources (K, R, B) and
     * their gradient; per direction the components' log-softmax terms and
     * the assignment, (K, B, L) */
    float *mix_h[2], *mix[2], *dmix[2];
    double *mix_lsm, *mix_q;
    int32_t *labels2;
    /* data parallelism (m->comm: N ranks, N > 1 or forced): the global
     * batch's r5 and r7 targets per view and their gradients, (R, N B hw)
     * each, and the packed send / receive blocks of the all-gather and
     * reduce-scatter */
    float *tg[2][2], *dtg[2][2], *pack, *unpack;
    double *bn_avg;
    int comm_on;   /* inside a training step: BatchNorm may synchronise */
    int comm_size; /* the group size the buffers were made for (0: no group) */
    amdim_cpu_op_scratch scr, scr2;
    amdim_cpu_nce_scratch nce;
} amdim_cpu_state;

/* ---- accessors ---- */

static inline float *weight(amdim_model *m, int i) { return m->weights + m->arch.tensors[i].offset; }
static inline float *grad(amdim_model *m, int i)
{
    AMDIM_ASSERT(m->arch.tensors[i].has_grad);
    return m->grads + m->arch.tensors[i].goffset;
}

/* The process group while a training step runs (NULL: one process). */
static inline const amdim_comm *step_comm(const amdim_model *m)
{
    const amdim_cpu_state *c = m->bs;
    return c->comm_on ? m->comm : NULL; /* m->comm: size > 1, or forced */
}

static inline amdim_cpu_bn_params bn_view(amdim_model *m, amdim_bn_ref r)
{
    amdim_cpu_bn_params b = {weight(m, r.t),     weight(m, r.t + 1), weight(m, r.t + 2), weight(m, r.t + 3),
                             weight(m, r.t + 4), grad(m, r.t),       grad(m, r.t + 1),   step_comm(m)};
    return b;
}

/* Profiling: a stage's start time (0 when not profiling). */
static inline double tick(const amdim_model *m) { return m->profile ? amdim_now() : 0; }

/* ---- backend_cpu.c ---- */

#define NOMEM() AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory (CPU backend scratch)")

/* An op's status as the backend's: out of memory, or the process group's
 * failure, with its message. */
int amdim_cpu_op_fail(amdim_model *m, int rc);
int amdim_cpu_op(amdim_model *m, int rc);
/* BatchNorm r over x (C channels of cnt values) into y (training: the
 * batch's statistics, kept in mean / istd; eval: the running ones; a copy
 * when r is off). */
int amdim_cpu_bn_forward(amdim_model *m, amdim_bn_ref r, const float *x, int C, size_t cnt, int train, float *y,
                         float *mean, float *istd);
void amdim_cpu_prof(amdim_model *m, int stage, int backward, double t0, int B);

/* ---- encoder_cpu.c ---- */

void amdim_cpu_free_buffers(amdim_model *m, amdim_cpu_state *c);
int amdim_cpu_ensure_buffers_for(amdim_model *m, int B, int group);
int amdim_cpu_ensure_buffers(amdim_model *m, int B);
int amdim_cpu_encoder_forward(amdim_model *m, int v, int B, int train, int heads);
int amdim_cpu_encoder_backward(amdim_model *m, int v, int B);
/* ---- objectives_cpu.c ---- */

void amdim_cpu_mix_forward(amdim_model *m, int v, int B);
double amdim_cpu_mix_assign(const amdim_model *m, const double *lsm, size_t BL, double *q);
void amdim_cpu_gather_features(amdim_model *m, int v, int B);
int amdim_cpu_probes_forward(amdim_model *m, int n, const float *mask_in, const float *mask_hidden, int train);
int amdim_cpu_probes_train(amdim_model *m, int B, const int32_t *labels, const amdim_step_draws *d,
                           amdim_step_stats *st);
int amdim_cpu_reduce_step(amdim_model *m, amdim_step_stats *st);
int amdim_cpu_objectives(amdim_model *m, int B, const int32_t *src5, amdim_step_stats *st);

#endif
