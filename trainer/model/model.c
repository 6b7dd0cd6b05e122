/* The model object: description, host mirror, schedule, draws and
 * counters, in front of a backend (see backend.h). Nothing here computes
 * activations. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_internal.h"


/* 0 until the CUDA backend has passed its GPU tests (tools/gpu-check.sh). */
#define AMDIM_CUDA_BACKEND_VERIFIED 0

/* ---- devices ---------------------------------------------------------------- */

const char *amdim_device_name(amdim_device d) { return d == AMDIM_DEVICE_CUDA ? "cuda" : "cpu"; }

int amdim_device_resolve(const char *name, amdim_device *out, char *err, size_t n)
{
    int want_cuda = strcmp(name, "cuda") == 0, is_auto = strcmp(name, "auto") == 0;
    if (!want_cuda && !is_auto && strcmp(name, "cpu") != 0)
        return amdim_fail(err, n, AMDIM_E_INVALID, "device must be auto, cpu or cuda, not %s", name);
    *out = AMDIM_DEVICE_CPU;
    if (!want_cuda && !is_auto)
        return AMDIM_OK;
#ifdef AMDIM_HAVE_CUDA_BACKEND
    /* "auto" takes the CUDA backend only once tools/gpu-check.sh has passed
     * on a GPU with this code; until then it has to be asked for by name. */
    if (is_auto && !AMDIM_CUDA_BACKEND_VERIFIED)
        return AMDIM_OK;
    char why[256];
    if (amdim_cuda_available(why, sizeof why)) {
        *out = AMDIM_DEVICE_CUDA;
        return AMDIM_OK;
    }
    if (want_cuda)
        return amdim_fail(err, n, AMDIM_E_UNSUPPORTED, "--device cuda: no usable GPU (%s)", why);
#else
    if (want_cuda)
        return amdim_fail(err, n, AMDIM_E_UNSUPPORTED,
                          "--device cuda: this build has no CUDA backend (configure with nvcc on PATH and -DAMDIM_ENABLE_CUDA=ON)");
#endif
    return AMDIM_OK;
}

int amdim_precision_parse(const char *name, amdim_precision *out, char *err, size_t n)
{
    if (strcmp(name, "fp32") == 0)
        *out = AMDIM_PRECISION_FP32;
    else if (strcmp(name, "bf16") == 0)
        *out = AMDIM_PRECISION_BF16;
    else
        return amdim_fail(err, n, AMDIM_E_INVALID, "precision must be fp32 or bf16, not %s", name);
    return AMDIM_OK;
}

const char *amdim_precision_name(amdim_precision p) { return p == AMDIM_PRECISION_BF16 ? "bf16" : "fp32"; }

/* ---- life cycle ---------------------------------------------------------------- */

void amdim_model_destroy(amdim_model *m)
{
    if (!m)
        return;
    if (m->be)
        m->be->close(m);
    amdim_arch_free(&m->arch);
    free(m->weights);
    free(m->grads);
    free(m->adam_m);
    free(m->adam_v);
    free(m->src5);
    free(m->mask_in);
    free(m->mask_hidden);
    free(m->src5_local);
    free(m->mask_in_local);
    free(m->mask_hidden_local);
    for (int i = 0; i < 2; i++) {
        free(m->input[i].labels);
        free(m->input[i].views);
    }
    free(m->prof_f);
    free(m->prof_b);
    free(m->prof_ff);
    free(m->prof_fb);
    free(m->prof_name);
    free(m);
}

/* A zeroed block of floats on a 64-byte boundary, like its tensors. */
static float *block_alloc(size_t floats)
{
    size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    float *p = aligned_alloc(64, bytes ? bytes : 64);
    if (p)
        memset(p, 0, bytes);
    return p;
}

int amdim_model_create_on(amdim_model **out, const amdim_model_config *cfg, amdim_device device, char *err, size_t n)
{
    *out = NULL;
    if (device == AMDIM_DEVICE_CUDA && cfg->mixtures > 1)
        return amdim_fail(err, n, AMDIM_E_UNSUPPORTED,
                          "mixtures %d: the CUDA backend does not compute mixtures yet; train with --device cpu or --mixtures 1",
                          cfg->mixtures);
    amdim_model *m = calloc(1, sizeof *m);
    if (!m)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    int st = amdim_arch_build(&m->arch, cfg, err, n);
    if (st) {
        free(m);
        return st;
    }
    m->cfg = *cfg;
    const amdim_arch *a = &m->arch;
    size_t gs = a->grads_size ? a->grads_size : 1;
    m->weights = block_alloc(a->weights_size);
    m->grads = block_alloc(gs);
    m->adam_m = block_alloc(gs);
    m->adam_v = block_alloc(gs);
    if (!m->weights || !m->grads || !m->adam_m || !m->adam_v) {
        size_t floats = a->weights_size; /* a points into m */
        amdim_model_destroy(m);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for %zu parameters", floats);
    }
    amdim_arch_init_weights(a, m->weights);
    m->device = device;
    if (!(m->be = amdim_backend_of(device))) {
        amdim_model_destroy(m);
        return amdim_fail(err, n, AMDIM_E_UNSUPPORTED, "this build has no %s backend", amdim_device_name(device));
    }
    if ((st = m->be->open(m))) {
        amdim_fail(err, n, st, "%s backend: %s", m->be->name, m->err);
        amdim_model_destroy(m);
        return st;
    }
    *out = m;
    return AMDIM_OK;
}

int amdim_model_create(amdim_model **out, const amdim_model_config *cfg, char *err, size_t n)
{
    return amdim_model_create_on(out, cfg, AMDIM_DEVICE_CPU, err, n);
}

/* ---- memory ------------------------------------------------------------------ */

int amdim_model_memory_need(const amdim_model_config *cfg, amdim_device device, int batch, int ranks, int training,
                            amdim_memory_need *need, char *err, size_t n)
{
    memset(need, 0, sizeof *need);
    if (batch < 1 || ranks < 0)
        return amdim_fail(err, n, AMDIM_E_INVALID, "memory estimate: batch %d, %d ranks", batch, ranks);
    amdim_arch a;
    memset(&a, 0, sizeof a);
    int st = amdim_arch_build(&a, cfg, err, n);
    if (st) {
        amdim_arch_free(&a);
        return st;
    }
    /* the host mirror as amdim_model_create_on allocates it */
    need->state = ((uint64_t)a.weights_size + 3 * (uint64_t)(a.grads_size ? a.grads_size : 1)) * sizeof(float);
    /* input slots (two, both views) and the draws of the global batch */
    uint64_t S = (uint64_t)cfg->encoder_size, Bg = (uint64_t)batch * (ranks > 1 ? ranks : 1);
    need->activations = 2 * (2 * (uint64_t)batch * S * S * 3 + (uint64_t)batch * 4) +
                        2 * Bg * (4 + 4 * ((uint64_t)cfg->n_rkhs + (uint64_t)cfg->mlp_hidden));
    if (device == AMDIM_DEVICE_CPU)
        need->activations += amdim_cpu_step_bytes(&a, batch, ranks, training);
    amdim_arch_free(&a);
    return AMDIM_OK;
}

int amdim_model_memory_check(const amdim_model_config *cfg, amdim_device device, int batch, int ranks, int training,
                             const char *what, char *err, size_t n)
{
    amdim_memory_need need;
    int st = amdim_model_memory_need(cfg, device, batch, ranks, training, &need, err, n);
    if (st)
        return st;
    uint64_t avail, total = need.state + need.activations;
    char bound[512];
    if (amdim_mem_available(&avail, bound, sizeof bound) != AMDIM_OK)
        return AMDIM_OK; /* nothing to compare with (no /proc, no cgroup files) */
    if (total <= avail)
        return AMDIM_OK;
    const double G = 1024.0 * 1024.0 * 1024.0;
    return amdim_fail(err, n, AMDIM_E_TOO_LARGE,
                      "%s needs about %.2f GiB of memory (ndf %d, n_rkhs %d, depth %d: weights, gradients and Adam "
                      "moments %.2f GiB; %s for %s batch %d %.2f GiB), but this process may use %.2f GiB (%s): "
                      "give a smaller model or batch",
                      what, total / G, cfg->ndf, cfg->n_rkhs, cfg->n_depth, need.state / G,
                      device == AMDIM_DEVICE_CPU ? "activations and scratch" : "input copies",
                      training ? "a training" : "an evaluation", batch,
                      need.activations / G, avail / G, bound);
}

const amdim_model_config *amdim_model_get_config(const amdim_model *m) { return &m->cfg; }
const char *amdim_model_error(const amdim_model *m) { return m ? m->err : "no model"; }

size_t amdim_model_algorithms(const amdim_model *m, char *buf, size_t n)
{
    if (m->be->algorithms)
        return m->be->algorithms(m, buf, n);
    if (n)
        buf[0] = 0;
    return 0;
}
int amdim_model_set_trace(amdim_model *m, amdim_trace_fn fn, void *arg)
{
    if (!m->be->set_trace)
        return AMDIM_MFAIL(m, AMDIM_E_UNSUPPORTED, "the %s backend keeps no launch list",
                           amdim_device_name(m->device));
    return m->be->set_trace(m, fn, arg);
}

amdim_device amdim_model_device(const amdim_model *m) { return m->device; }
int amdim_model_register_host(amdim_model *m, void *base, size_t bytes)
{
    return m->be->register_host ? m->be->register_host(m, base, bytes) : AMDIM_OK;
}

void amdim_model_unregister_host(amdim_model *m, void *base)
{
    if (m->be->unregister_host)
        m->be->unregister_host(m, base);
}

int amdim_model_set_precision(amdim_model *m, amdim_precision p)
{
    if (p != AMDIM_PRECISION_FP32 && p != AMDIM_PRECISION_BF16)
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "precision %d: must be fp32 or bf16", (int)p);
    if (p == AMDIM_PRECISION_BF16 && !m->be->set_precision)
        return AMDIM_MFAIL(m, AMDIM_E_UNSUPPORTED, "bf16: the %s backend computes in fp32 only", m->be->name);
    int rc = m->be->set_precision ? m->be->set_precision(m, p == AMDIM_PRECISION_BF16) : AMDIM_OK;
    if (rc == AMDIM_OK)
        m->precision = p;
    return rc;
}

amdim_precision amdim_model_precision(const amdim_model *m) { return m->precision; }

int amdim_model_set_threads(amdim_model *m, int threads)
{
    if (threads < 1 || threads > 4096)
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "threads must be 1..4096, not %d", threads);
    return m->be->set_threads ? m->be->set_threads(m, threads) : AMDIM_OK;
}
int amdim_model_pull(amdim_model *m) { return m->be->pull ? m->be->pull(m) : AMDIM_OK; }
int amdim_model_push(amdim_model *m) { return m->be->push ? m->be->push(m) : AMDIM_OK; }

/* ---- data parallelism ------------------------------------------------------------ */

int amdim_model_set_comm(amdim_model *m, const amdim_comm *c)
{
    int on = c && (c->size > 1 || c->force);
    if (on) {
        if (c->size < 1 || c->rank < 0 || c->rank >= c->size)
            return AMDIM_MFAIL(m, AMDIM_E_INVALID, "process group: rank %d of %d", c->rank, c->size);
        if (!c->allreduce_f32 || !c->allreduce_f64 || !c->allgather_f32 || !c->reduce_scatter_f32 || !c->bcast_f32)
            return AMDIM_MFAIL(m, AMDIM_E_INVALID, "process group: a collective is missing");
        if (m->device == AMDIM_DEVICE_CUDA) {
#ifndef AMDIM_HAVE_NCCL
            return AMDIM_MFAIL(m, AMDIM_E_UNSUPPORTED,
                         "%d ranks on cuda: this build has no NCCL (nccl.h and libnccl next to the CUDA toolkit, or "
                         "AMDIM_NCCL_DIR); data-parallel training runs on the CPU backend only",
                         c->size);
#endif
        }
        if (m->cfg.mixtures > 1)
            return AMDIM_MFAIL(m, AMDIM_E_UNSUPPORTED, "mixtures %d: data-parallel training supports --mixtures 1 only",
                         m->cfg.mixtures);
    }
    m->comm = on ? c : NULL;
    return AMDIM_OK;
}

static int comm_fail(amdim_model *m, int rc, const char *what)
{
    return AMDIM_MFAIL(m, rc, "rank %d of %d: %s: %s", m->comm->rank, m->comm->size, what,
                 m->comm->error ? m->comm->error(m->comm->ctx) : "collective failed");
}

int amdim_model_bcast_state(amdim_model *m, int root)
{
    const amdim_comm *c = m->comm;
    if (!c)
        return AMDIM_OK;
    int rc = amdim_model_pull(m);
    if (rc)
        return rc;
    if ((rc = c->bcast_f32(c->ctx, m->weights, m->arch.weights_size, root)) ||
        (rc = c->bcast_f32(c->ctx, m->adam_m, m->arch.grads_size, root)) ||
        (rc = c->bcast_f32(c->ctx, m->adam_v, m->arch.grads_size, root)))
        return comm_fail(m, rc, "broadcasting the model state");
    return amdim_model_push(m);
}

int amdim_model_check_replicas(amdim_model *m)
{
    const amdim_comm *c = m->comm;
    if (!c)
        return AMDIM_OK;
    int rc = amdim_model_pull(m);
    if (rc)
        return rc;
    /* FNV-1a over the weights' bytes, sent as four exact 16-bit pieces */
    uint64_t h = 1469598103934665603ull;
    const unsigned char *b = (const unsigned char *)m->weights;
    for (size_t i = 0; i < m->arch.weights_size * sizeof(float); i++)
        h = (h ^ b[i]) * 1099511628211ull;
    float mine[4], *all = malloc((size_t)4 * c->size * sizeof(float));
    if (!all)
        return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory");
    for (int k = 0; k < 4; k++)
        mine[k] = (float)((h >> (16 * k)) & 0xffff);
    if ((rc = c->allgather_f32(c->ctx, mine, all, 4))) {
        free(all);
        return comm_fail(m, rc, "comparing the replicas");
    }
    for (int r = 1; r < c->size && rc == AMDIM_OK; r++)
        if (memcmp(all, all + 4 * r, 4 * sizeof(float)) != 0)
            rc = AMDIM_MFAIL(m, AMDIM_E_INVALID, "rank %d's weights differ from rank 0's after update %llu: the replicas diverged",
                       r, (unsigned long long)m->updates);
    free(all);
    return rc;
}

/* Ranks in the model's process group (1 without one). */
static int group_size(const amdim_model *m) { return m->comm ? m->comm->size : 1; }

/* The draws of this rank's B images from draws made for the global batch
 * (2 N B rows: view 1's sources, then view 2's): rows [r B, r B + B) of
 * each half. Without a group, the draws themselves. */
static int local_draws(amdim_model *m, int B, const int32_t *src5, const float *mask_in, const float *mask_hidden,
                       amdim_step_draws *d)
{
    d->src5 = src5, d->mask_in = mask_in, d->mask_hidden = mask_hidden;
    if (!m->comm)
        return AMDIM_OK;
    size_t R = (size_t)m->cfg.n_rkhs, H = (size_t)m->cfg.mlp_hidden;
    if (m->local_rows < 2 * B) {
        free(m->src5_local), free(m->mask_in_local), free(m->mask_hidden_local);
        m->src5_local = malloc((size_t)2 * B * sizeof *m->src5_local);
        m->mask_in_local = malloc((size_t)2 * B * R * sizeof(float));
        m->mask_hidden_local = malloc((size_t)2 * B * H * sizeof(float));
        m->local_rows = m->src5_local && m->mask_in_local && m->mask_hidden_local ? 2 * B : 0;
        if (!m->local_rows)
            return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory for the draws of %d rows", 2 * B);
    }
    size_t Bg = (size_t)B * m->comm->size, first = (size_t)B * m->comm->rank;
    for (size_t h = 0; h < 2; h++) {
        size_t row = h * Bg + first;
        if (src5)
            memcpy(m->src5_local + h * B, src5 + row, (size_t)B * sizeof *src5);
        memcpy(m->mask_in_local + h * B * R, mask_in + row * R, (size_t)B * R * sizeof(float));
        memcpy(m->mask_hidden_local + h * B * H, mask_hidden + row * H, (size_t)B * H * sizeof(float));
    }
    d->src5 = src5 ? m->src5_local : NULL;
    d->mask_in = m->mask_in_local, d->mask_hidden = m->mask_hidden_local;
    return AMDIM_OK;
}

/* ---- parameters -------------------------------------------------------------- */

int amdim_model_param_count(const amdim_model *m) { return m->arch.ntensors; }
uint64_t amdim_model_updates(const amdim_model *m) { return m->updates; }
void amdim_model_set_updates(amdim_model *m, uint64_t updates) { m->updates = updates; }

void amdim_model_param(const amdim_model *m, int i, amdim_param *out)
{
    AMDIM_ASSERT(i >= 0 && i < m->arch.ntensors);
    const amdim_tensor *t = &m->arch.tensors[i];
    memset(out, 0, sizeof *out);
    out->name = t->name;
    out->role = t->role;
    out->probe = t->probe;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof out->shape);
    out->size = t->size;
    out->data = m->weights + t->offset;
    if (t->has_grad) {
        out->grad = m->grads + t->goffset;
        out->adam_m = m->adam_m + t->goffset;
        out->adam_v = m->adam_v + t->goffset;
    }
    out->buffer = !t->has_grad;
    out->used = t->trainable;
}

int amdim_model_find(const amdim_model *m, const char *name)
{
    for (int i = 0; i < m->arch.ntensors; i++)
        if (strcmp(m->arch.tensors[i].name, name) == 0)
            return i;
    return -1;
}

/* ---- steps -------------------------------------------------------------------- */

/* Draw buffers for n rows. */
static int ensure_draws(amdim_model *m, int n)
{
    if (n <= m->draws_rows)
        return AMDIM_OK;
    free(m->src5);
    free(m->mask_in);
    free(m->mask_hidden);
    m->src5 = malloc((size_t)n * sizeof *m->src5);
    m->mask_in = malloc((size_t)n * m->cfg.n_rkhs * sizeof(float));
    m->mask_hidden = malloc((size_t)n * m->cfg.mlp_hidden * sizeof(float));
    m->draws_rows = m->src5 && m->mask_in && m->mask_hidden ? n : 0;
    return m->draws_rows ? AMDIM_OK : AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory for the draws of %d rows", n);
}

static int check_batch(amdim_model *m, int B, int min)
{
    if (B < min)
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "batch %d: need at least %d images (NCE and BatchNorm)", B, min);
    if ((int64_t)B * group_size(m) > (1 << 20))
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "batch %d x %d ranks is too large", B, group_size(m));
    return AMDIM_OK;
}

int amdim_model_forward_backward(amdim_model *m, const float *x1, const float *x2, const int32_t *labels, int B,
                                 const int32_t *src5, const float *mask_in, const float *mask_hidden,
                                 amdim_step_stats *st)
{
    int rc = check_batch(m, B, 2);
    if (rc)
        return rc;
    for (int i = 0; i < 2 * B * group_size(m); i++)
        if (src5[i] < 0 || src5[i] >= AMDIM_SRC5_LOCATIONS)
            return AMDIM_MFAIL(m, AMDIM_E_INVALID, "5x5 source location %d out of range", src5[i]);
    amdim_step_input in = {.f32 = {x1, x2}, .labels = labels, .batch = B};
    amdim_step_draws d;
    if ((rc = local_draws(m, B, src5, mask_in, mask_hidden, &d)))
        return rc;
    memset(st, 0, sizeof *st);
    if ((rc = m->be->forward_backward(m, &in, &d, st)))
        return rc;
    m->batch = B;
    m->steps++;
    return AMDIM_OK;
}

/* Draws, forward + backward and Adam of one training step on `in`. */
static int train_step_in(amdim_model *m, const amdim_step_input *in, int epoch, amdim_step_stats *st)
{
    int B = in->batch, Bg = B * group_size(m), rc = check_batch(m, B, 2);
    if (rc || (rc = ensure_draws(m, 2 * Bg)))
        return rc;
    /* this step's draws, for the global batch: counter-based, keyed by the update count */
    amdim_arch_draw(&m->cfg, AMDIM_STREAM_STEP, m->updates, 2 * Bg, m->src5, m->mask_in, m->mask_hidden);
    amdim_step_draws d;
    if ((rc = local_draws(m, B, m->src5, m->mask_in, m->mask_hidden, &d)))
        return rc;
    memset(st, 0, sizeof *st);
    if ((rc = m->be->forward_backward(m, in, &d, st)))
        return rc;
    m->batch = B;
    m->steps++;
    return amdim_model_adam_step(m, epoch);
}

int amdim_model_train_step(amdim_model *m, const uint8_t *view1, const uint8_t *view2, const int32_t *labels, int B,
                           int epoch, amdim_step_stats *st)
{
    amdim_step_input in = {.u8 = {view1, view2}, .labels = labels, .batch = B};
    return train_step_in(m, &in, epoch, st);
}

/* ---- input staging -------------------------------------------------------------- */

int amdim_model_stage_input(amdim_model *m, int slot, const uint8_t *view1, const uint8_t *view2,
                            const int32_t *labels, int B)
{
    int rc = check_batch(m, B, 1);
    if (rc)
        return rc;
    if (slot < 0 || slot > 1)
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "input slot %d: must be 0 or 1", slot);
    amdim_input_slot *s = &m->input[slot];
    size_t S = (size_t)m->cfg.encoder_size, view = (size_t)B * S * S * 3;
    s->batch = 0;
    if (s->labels_cap < (size_t)B) {
        free(s->labels);
        s->labels_cap = 0;
        if (!(s->labels = malloc((size_t)B * sizeof *s->labels)))
            return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory for the labels of %d images", B);
        s->labels_cap = (size_t)B;
    }
    if (labels)
        memcpy(s->labels, labels, (size_t)B * sizeof *labels);
    else
        for (int i = 0; i < B; i++)
            s->labels[i] = -1;
    if (m->be->stage_input) {
        if ((rc = m->be->stage_input(m, slot, view1, view2, B)))
            return rc;
    } else {
        if (s->views_cap < 2 * view) {
            free(s->views);
            s->views_cap = 0;
            if (!(s->views = malloc(2 * view)))
                return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory for the views of %d images", B);
            s->views_cap = 2 * view;
        }
        memcpy(s->views, view1, view);
        memcpy(s->views + view, view2, view);
    }
    s->batch = B;
    return AMDIM_OK;
}

int amdim_model_stage_wait(amdim_model *m, int slot)
{
    if (slot < 0 || slot > 1 || !m->input[slot].batch)
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "input slot %d holds no staged batch", slot);
    return m->be->stage_wait ? m->be->stage_wait(m, slot) : AMDIM_OK;
}

/* The step input of a staged slot (which it empties). */
static int staged_input(amdim_model *m, int slot, amdim_step_input *in)
{
    if (slot < 0 || slot > 1 || !m->input[slot].batch)
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "input slot %d holds no staged batch", slot);
    amdim_input_slot *s = &m->input[slot];
    size_t S = (size_t)m->cfg.encoder_size, view = (size_t)s->batch * S * S * 3;
    memset(in, 0, sizeof *in);
    in->labels = s->labels;
    in->batch = s->batch;
    if (m->be->stage_input) {
        in->staged = slot + 1;
    } else {
        in->u8[0] = s->views;
        in->u8[1] = s->views + view;
    }
    s->batch = 0;
    return AMDIM_OK;
}

int amdim_model_train_step_staged(amdim_model *m, int slot, int epoch, amdim_step_stats *st)
{
    amdim_step_input in;
    int rc = staged_input(m, slot, &in);
    return rc ? rc : train_step_in(m, &in, epoch, st);
}

float amdim_model_learning_rate(const amdim_model *m, int epoch)
{
    return amdim_arch_learning_rate(&m->cfg, m->updates, epoch);
}

int amdim_model_adam_step(amdim_model *m, int epoch)
{
    amdim_adam_hparams h;
    amdim_arch_adam_hparams(&m->cfg, m->updates, epoch, &h);
    int rc = m->be->adam(m, &h, m->probes_only);
    if (rc == AMDIM_OK)
        m->updates++;
    return rc;
}

int amdim_model_output(const amdim_model *m, int view, int which, float *out)
{
    if (!m->batch || view < 0 || view > 1 || (which != 1 && which != 5 && which != 7))
        return AMDIM_E_INVALID;
    return m->be->output(m, view, which, out);
}

int amdim_model_logits(const amdim_model *m, int head, float *out)
{
    if (!m->batch)
        return AMDIM_E_INVALID;
    return m->be->logits(m, head ? 1 : 0, out);
}

int amdim_model_evaluate(amdim_model *m, const uint8_t *images, int B, float *features, float *lm, float *ll)
{
    int rc = check_batch(m, B, 1);
    return rc ? rc : m->be->evaluate(m, images, B, features, lm, ll);
}

int amdim_model_mixture_assign(amdim_model *m, const uint8_t *images, int B, int32_t *winner)
{
    int rc = check_batch(m, B, 2);
    if (rc)
        return rc;
    if (m->cfg.mixtures < 2 || !m->be->mixture_assign)
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "this model has no mixtures (K = %d) on the %s backend", m->cfg.mixtures,
                     m->be->name);
    return m->be->mixture_assign(m, images, B, winner);
}

int amdim_model_refresh_bn(amdim_model *m, const uint8_t *images, int B)
{
    int rc = check_batch(m, B, 2);
    if (rc || (rc = ensure_draws(m, B)))
        return rc;
    amdim_arch_draw(&m->cfg, AMDIM_STREAM_BN_REFRESH, m->steps++, B, NULL, m->mask_in, m->mask_hidden);
    amdim_step_draws d = {NULL, m->mask_in, m->mask_hidden};
    return m->be->refresh_bn(m, images, B, &d);
}

/* ---- the classifier-only phase ------------------------------------------------ */

int amdim_model_reset_probes(amdim_model *m, uint64_t seed)
{
    int rc = amdim_model_pull(m);
    if (rc)
        return rc;
    amdim_arch_reset_probes(&m->arch, seed, m->weights, m->adam_m, m->adam_v);
    m->probes_only = 1;
    return amdim_model_push(m);
}

void amdim_model_freeze_encoder(amdim_model *m) { m->probes_only = 1; }

static int train_probes_step_in(amdim_model *m, const amdim_step_input *in, int epoch, amdim_step_stats *st)
{
    int B = in->batch, Bg = B * group_size(m), rc = check_batch(m, B, 2);
    if (rc || (rc = ensure_draws(m, 2 * Bg)))
        return rc;
    amdim_arch_draw(&m->cfg, AMDIM_STREAM_PROBE_STEP, m->updates, 2 * Bg, NULL, m->mask_in, m->mask_hidden);
    amdim_step_draws d;
    if ((rc = local_draws(m, B, NULL, m->mask_in, m->mask_hidden, &d)))
        return rc;
    memset(st, 0, sizeof *st);
    if ((rc = m->be->probe_step(m, in, &d, st)))
        return rc;
    m->probes_only = 1;
    return amdim_model_adam_step(m, epoch);
}

int amdim_model_train_probes_step(amdim_model *m, const uint8_t *view1, const uint8_t *view2, const int32_t *labels,
                                  int B, int epoch, amdim_step_stats *st)
{
    amdim_step_input in = {.u8 = {view1, view2}, .labels = labels, .batch = B};
    return train_probes_step_in(m, &in, epoch, st);
}

int amdim_model_train_probes_step_staged(amdim_model *m, int slot, int epoch, amdim_step_stats *st)
{
    amdim_step_input in;
    int rc = staged_input(m, slot, &in);
    return rc ? rc : train_probes_step_in(m, &in, epoch, st);
}

/* ---- figures for benchmarks ------------------------------------------------------ */

double amdim_model_step_flops(const amdim_model *m, int B) { return amdim_arch_step_flops(&m->arch, B); }

double amdim_cuda_peak_bf16_tflops(const char *name)
{
    /* Dense bf16 tensor-core TFLOP/s from NVIDIA's datasheets (the sparse
     * figures are twice these), most specific names first. */
    static const struct {
        const char *part;
        double tflops;
    } peaks[] = {
        {"GH200", 989.4},     /* Grace Hopper: the H100 SXM's */
        {"H100 PCIe", 756.0}, /* H100 PCIe */
        {"H100 NVL", 835.5},  /* H100 NVL, per GPU */
        {"H100", 989.4},      /* H100 SXM5 ("H100 80GB HBM3") */
        {"H200 NVL", 835.5},  /* H200 NVL (PCIe card), per GPU */
        {"H200", 989.4},      /* H200 SXM: the H100 SXM's compute, more and faster memory */
        {"H800", 989.4},
        {"A100", 312.0},      /* A100 SXM4 and PCIe */
    };
    for (size_t i = 0; name && i < sizeof peaks / sizeof *peaks; i++)
        if (strstr(name, peaks[i].part))
            return peaks[i].tflops;
    return 0;
}

int amdim_device_probe(amdim_device d, int gemm_n, amdim_device_info *info, char *err, size_t n)
{
    memset(info, 0, sizeof *info);
    if (gemm_n < 256 || gemm_n > 32768)
        return amdim_fail(err, n, AMDIM_E_INVALID, "GEMM size %d: must be 256..32768", gemm_n);
#ifdef AMDIM_HAVE_CUDA_BACKEND
    if (d == AMDIM_DEVICE_CUDA) {
        int rc = amdim_cuda_probe(gemm_n, info->name, sizeof info->name, &info->memory, &info->bf16_tflops,
                                  &info->fp32_tflops, err, n);
        info->peak_bf16_tflops = amdim_cuda_peak_bf16_tflops(info->name);
        return rc;
    }
#endif
    return amdim_fail(err, n, AMDIM_E_UNSUPPORTED, "device %s: no GEMM rate to measure", amdim_device_name(d));
}

int amdim_model_device_memory(amdim_model *m, size_t *used, size_t *total)
{
    *used = *total = 0;
#ifdef AMDIM_HAVE_CUDA_BACKEND
    if (m->device == AMDIM_DEVICE_CUDA)
        return amdim_cuda_memory(used, total, m->err, sizeof m->err);
#endif
    return AMDIM_MFAIL(m, AMDIM_E_UNSUPPORTED, "the %s backend has no device memory", m->be->name);
}

