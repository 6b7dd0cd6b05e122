/* The model object: description, host mirror, schedule, draws and
 * counters, in front of a backend (see backend.h). Nothing here computes
 * activations. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

#define MFAIL(st, ...) AMDIM_MFAIL(m, (st), __VA_ARGS__)

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
        amdim_model_destroy(m);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for %zu parameters", a->weights_size);
    }
    amdim_arch_init_weights(a, m->weights);
    m->device = device;
#ifdef AMDIM_HAVE_CUDA_BACKEND
    m->be = device == AMDIM_DEVICE_CUDA ? &amdim_backend_cuda : &amdim_backend_cpu;
#else
    if (device == AMDIM_DEVICE_CUDA) {
        amdim_model_destroy(m);
        return amdim_fail(err, n, AMDIM_E_UNSUPPORTED, "this build has no CUDA backend");
    }
    m->be = &amdim_backend_cpu;
#endif
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

const amdim_model_config *amdim_model_get_config(const amdim_model *m) { return &m->cfg; }
const char *amdim_model_error(const amdim_model *m) { return m ? m->err : "no model"; }
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

int amdim_model_set_threads(amdim_model *m, int threads)
{
    if (threads < 1 || threads > 4096)
        return MFAIL(AMDIM_E_INVALID, "threads must be 1..4096, not %d", threads);
    return m->be->set_threads ? m->be->set_threads(m, threads) : AMDIM_OK;
}
int amdim_model_pull(amdim_model *m) { return m->be->pull ? m->be->pull(m) : AMDIM_OK; }
int amdim_model_push(amdim_model *m) { return m->be->push ? m->be->push(m) : AMDIM_OK; }

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
    return m->draws_rows ? AMDIM_OK : MFAIL(AMDIM_E_NOMEM, "out of memory for the draws of %d rows", n);
}

static int check_batch(amdim_model *m, int B, int min)
{
    if (B < min)
        return MFAIL(AMDIM_E_INVALID, "batch %d: need at least %d images (NCE and BatchNorm)", B, min);
    if (B > (1 << 20))
        return MFAIL(AMDIM_E_INVALID, "batch %d is too large", B);
    return AMDIM_OK;
}

int amdim_model_forward_backward(amdim_model *m, const float *x1, const float *x2, const int32_t *labels, int B,
                                 const int32_t *src5, const float *mask_in, const float *mask_hidden,
                                 amdim_step_stats *st)
{
    int rc = check_batch(m, B, 2);
    if (rc)
        return rc;
    for (int i = 0; i < 2 * B; i++)
        if (src5[i] < 0 || src5[i] >= AMDIM_SRC5_LOCATIONS)
            return MFAIL(AMDIM_E_INVALID, "5x5 source location %d out of range", src5[i]);
    amdim_step_input in = {.f32 = {x1, x2}, .labels = labels, .batch = B};
    amdim_step_draws d = {src5, mask_in, mask_hidden};
    memset(st, 0, sizeof *st);
    if ((rc = m->be->forward_backward(m, &in, &d, st)))
        return rc;
    m->batch = B;
    m->steps++;
    return AMDIM_OK;
}

int amdim_model_train_step(amdim_model *m, const uint8_t *view1, const uint8_t *view2, const int32_t *labels, int B,
                           int epoch, amdim_step_stats *st)
{
    int rc = check_batch(m, B, 2);
    if (rc || (rc = ensure_draws(m, 2 * B)))
        return rc;
    /* this step's draws: counter-based, keyed by the update count */
    amdim_arch_draw(&m->cfg, AMDIM_STREAM_STEP, m->updates, 2 * B, m->src5, m->mask_in, m->mask_hidden);
    amdim_step_input in = {.u8 = {view1, view2}, .labels = labels, .batch = B};
    amdim_step_draws d = {m->src5, m->mask_in, m->mask_hidden};
    memset(st, 0, sizeof *st);
    if ((rc = m->be->forward_backward(m, &in, &d, st)))
        return rc;
    m->batch = B;
    m->steps++;
    return amdim_model_adam_step(m, epoch);
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
        return MFAIL(AMDIM_E_INVALID, "this model has no mixtures (K = %d) on the %s backend", m->cfg.mixtures,
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

int amdim_model_train_probes_step(amdim_model *m, const uint8_t *view1, const uint8_t *view2, const int32_t *labels,
                                  int B, int epoch, amdim_step_stats *st)
{
    int rc = check_batch(m, B, 2);
    if (rc || (rc = ensure_draws(m, 2 * B)))
        return rc;
    amdim_arch_draw(&m->cfg, AMDIM_STREAM_PROBE_STEP, m->updates, 2 * B, NULL, m->mask_in, m->mask_hidden);
    amdim_step_input in = {.u8 = {view1, view2}, .labels = labels, .batch = B};
    amdim_step_draws d = {NULL, m->mask_in, m->mask_hidden};
    memset(st, 0, sizeof *st);
    if ((rc = m->be->probe_step(m, &in, &d, st)))
        return rc;
    m->probes_only = 1;
    return amdim_model_adam_step(m, epoch);
}

/* ---- profiling ------------------------------------------------------------------ */

void amdim_model_profile(amdim_model *m, int on)
{
    if (on && !m->prof_f) {
        int n = amdim_arch_stage_count(&m->arch);
        m->prof_f = calloc((size_t)n, sizeof(double));
        m->prof_b = calloc((size_t)n, sizeof(double));
        m->prof_ff = calloc((size_t)n, sizeof(double));
        m->prof_fb = calloc((size_t)n, sizeof(double));
        m->prof_name = calloc((size_t)n, sizeof *m->prof_name);
        if (!m->prof_f || !m->prof_b || !m->prof_ff || !m->prof_fb || !m->prof_name) {
            free(m->prof_f), free(m->prof_b), free(m->prof_ff), free(m->prof_fb), free(m->prof_name);
            m->prof_f = m->prof_b = m->prof_ff = m->prof_fb = NULL;
            m->prof_name = NULL;
            m->profile = 0;
            return;
        }
        for (int s = 0; s < n; s++)
            amdim_arch_stage_name(&m->arch, s, m->prof_name[s], sizeof m->prof_name[s]);
    }
    m->profile = on && m->prof_f;
}

void amdim_model_prof_add(amdim_model *m, int stage, int backward, double seconds, int B)
{
    if (!m->profile)
        return;
    double f, b;
    amdim_arch_stage_flops(&m->arch, stage, B, &f, &b);
    if (backward) {
        m->prof_b[stage] += seconds;
        m->prof_fb[stage] += b;
    } else {
        m->prof_f[stage] += seconds;
        m->prof_ff[stage] += f;
    }
}

int amdim_model_profile_count(const amdim_model *m) { return m->prof_f ? amdim_arch_stage_count(&m->arch) : 0; }

void amdim_model_profile_get(const amdim_model *m, int i, const char **name, double *f, double *b, double *ff,
                             double *fb)
{
    *name = m->prof_name[i];
    *f = m->prof_f[i];
    *b = m->prof_b[i];
    *ff = m->prof_ff[i];
    *fb = m->prof_fb[i];
}
