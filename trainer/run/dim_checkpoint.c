/* Deep InfoMax checkpoints (dim_run_internal.h), in the safetensors
 * container of trainer/model (safetensors_internal.h). */
#include "dim_run_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "amdim_common.h"
#include "checkpoint_internal.h"

static const char *estimator_names[] = {"jsd", "nce", "dv"};


int amdim_dim_checkpoint_is(const char *path)
{
    amdim_safetensors_file f;
    char why[512];
    if (amdim_safetensors_open(&f, path, why, sizeof why))
        return 0;
    const char *fmt = amdim_safetensors_meta(&f, "format");
    int is = fmt && strcmp(fmt, AMDIM_DIM_CHECKPOINT_FORMAT) == 0;
    amdim_safetensors_close(&f);
    return is;
}

/* ---- metadata ----------------------------------------------------------------- */


static void meta_build(amdim_checkpoint_meta *m, const amdim_dim_state *st, const char *kind, const uint64_t *digest)
{
    const amdim_checkpoint_info *ci = &st->ci;
    const amdim_dim_config *c = &st->cfg;
    m->n = 0;
    amdim_checkpoint_meta_add(m, "format", "%s", AMDIM_DIM_CHECKPOINT_FORMAT);
    amdim_checkpoint_meta_add(m, "format_version", "%d", AMDIM_DIM_CHECKPOINT_VERSION);
    amdim_checkpoint_meta_add(m, "kind", "%s", kind);
    amdim_checkpoint_meta_add(m, "model", "dim");
    amdim_checkpoint_meta_add(m, "step", "%llu", (unsigned long long)ci->step);
    amdim_checkpoint_meta_add(m, "next_epoch", "%llu", (unsigned long long)ci->next_epoch);
    amdim_checkpoint_meta_add(m, "next_batch", "%llu", (unsigned long long)ci->next_batch);
    amdim_checkpoint_meta_add(m, "seed", "%llu", (unsigned long long)ci->seed);
    amdim_checkpoint_meta_add(m, "epochs", "%lld", (long long)ci->epochs);
    amdim_checkpoint_meta_add(m, "max_steps", "%lld", (long long)ci->max_steps);
    amdim_checkpoint_meta_add(m, "preset", "%s", ci->preset);
    amdim_checkpoint_meta_add(m, "batch", "%d", ci->batch);
    amdim_checkpoint_meta_add(m, "size", "%d", c->size);
    amdim_checkpoint_meta_add(m, "in_ch", "%d", c->in_ch);
    amdim_checkpoint_meta_add(m, "alpha", "%.9g", c->alpha);
    amdim_checkpoint_meta_add(m, "beta", "%.9g", c->beta);
    amdim_checkpoint_meta_add(m, "gamma", "%.9g", c->gamma);
    amdim_checkpoint_meta_add(m, "estimator", "%s", estimator_names[c->estimator]);
    amdim_checkpoint_meta_add(m, "gp_all", "%d", c->gp_all);
    amdim_checkpoint_meta_add(m, "model_seed", "%llu", (unsigned long long)c->seed);
    amdim_checkpoint_meta_add(m, "lr", "%.9g", st->adam.lr);
    amdim_checkpoint_meta_add(m, "beta1", "%.9g", st->adam.beta1);
    amdim_checkpoint_meta_add(m, "beta2", "%.9g", st->adam.beta2);
    amdim_checkpoint_meta_add(m, "eps", "%.9g", st->adam.eps);
    if (digest)
        amdim_checkpoint_meta_add(m, "weights_fnv1a64", "%016llx", (unsigned long long)*digest);
}

static int meta_str(const amdim_safetensors_file *f, const char *path, const char *key, const char **out, char *err,
                    size_t n)
{
    *out = amdim_safetensors_meta(f, key);
    if (!*out)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: the Deep InfoMax checkpoint has no \"%s\" metadata", path, key);
    return AMDIM_OK;
}

/* An integer in lo..hi, parsed whole. */
static int meta_int(const amdim_safetensors_file *f, const char *path, const char *key, long long lo, long long hi,
                    long long *out, char *err, size_t n)
{
    const char *s;
    AMDIM_TRY(meta_str(f, path, key, &s, err, n));
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: metadata %s = \"%s\" is not an integer in %lld..%lld", path,
                          key, s, lo, hi);
    *out = v;
    return AMDIM_OK;
}

static int meta_u64(const amdim_safetensors_file *f, const char *path, const char *key, uint64_t *out, char *err,
                    size_t n)
{
    const char *s;
    AMDIM_TRY(meta_str(f, path, key, &s, err, n));
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: metadata %s = \"%s\" is not a count", path, key, s);
    *out = v;
    return AMDIM_OK;
}

/* A finite float in lo..hi, parsed whole. */
static int meta_float(const amdim_safetensors_file *f, const char *path, const char *key, float lo, float hi,
                      float *out, char *err, size_t n)
{
    const char *s;
    AMDIM_TRY(meta_str(f, path, key, &s, err, n));
    char *end;
    float v = strtof(s, &end);
    if (end == s || *end || !isfinite(v) || v < lo || v > hi)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: metadata %s = \"%s\" is not a number in %g..%g", path, key, s,
                          lo, hi);
    *out = v;
    return AMDIM_OK;
}

static int meta_model(const amdim_safetensors_file *f, const char *path, amdim_dim_state *st, char *err, size_t n)
{
    amdim_dim_config *c = &st->cfg;
    long long v;
    const char *est;
    AMDIM_TRY(meta_int(f, path, "size", 28, 64, &v, err, n));
    c->size = (int)v;
    AMDIM_TRY(meta_int(f, path, "in_ch", 0, 3, &v, err, n));
    c->in_ch = (int)v;
    AMDIM_TRY(meta_int(f, path, "gp_all", 0, 1, &v, err, n));
    c->gp_all = (int)v;
    AMDIM_TRY(meta_float(f, path, "alpha", 0, 1e6f, &c->alpha, err, n));
    AMDIM_TRY(meta_float(f, path, "beta", 0, 1e6f, &c->beta, err, n));
    AMDIM_TRY(meta_float(f, path, "gamma", 0, 1e6f, &c->gamma, err, n));
    AMDIM_TRY(meta_u64(f, path, "model_seed", &c->seed, err, n));
    AMDIM_TRY(meta_str(f, path, "estimator", &est, err, n));
    c->estimator = -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(est, estimator_names[i]) == 0)
            c->estimator = i;
    if (c->estimator < 0)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: metadata estimator = \"%s\" is not jsd, nce or dv", path, est);
    if (c->size != 28 && c->size != 32 && c->size != 64)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: metadata size = %d: the DIM encoders take 28, 32 or 64 px",
                          path, c->size);
    AMDIM_TRY(meta_float(f, path, "lr", 1e-30f, 1e6f, &st->adam.lr, err, n));
    AMDIM_TRY(meta_float(f, path, "beta1", 0, 1, &st->adam.beta1, err, n));
    AMDIM_TRY(meta_float(f, path, "beta2", 0, 1, &st->adam.beta2, err, n));
    return meta_float(f, path, "eps", 0, 1, &st->adam.eps, err, n);
}

static int meta_run(const amdim_safetensors_file *f, const char *path, amdim_checkpoint_info *ci, char *err, size_t n)
{
    long long v;
    const char *preset;
    AMDIM_TRY(meta_u64(f, path, "step", &ci->step, err, n));
    AMDIM_TRY(meta_u64(f, path, "next_epoch", &ci->next_epoch, err, n));
    AMDIM_TRY(meta_u64(f, path, "next_batch", &ci->next_batch, err, n));
    AMDIM_TRY(meta_u64(f, path, "seed", &ci->seed, err, n));
    AMDIM_TRY(meta_int(f, path, "epochs", -1, INT64_MAX, &v, err, n));
    ci->epochs = v;
    AMDIM_TRY(meta_int(f, path, "max_steps", -1, INT64_MAX, &v, err, n));
    ci->max_steps = v;
    AMDIM_TRY(meta_int(f, path, "batch", 2, 1 << 20, &v, err, n));
    ci->batch = (int)v;
    AMDIM_TRY(meta_str(f, path, "preset", &preset, err, n));
    if (strlen(preset) >= sizeof ci->preset)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: metadata preset = \"%s\" is too long", path, preset);
    snprintf(ci->preset, sizeof ci->preset, "%s", preset);
    ci->probes_only = 0;
    return AMDIM_OK;
}

/* The format, the version and the kind of file expected. */
static int check_format(const amdim_safetensors_file *f, const char *path, const char *kind, char *err, size_t n)
{
    const char *fmt = amdim_safetensors_meta(f, "format"), *ver = amdim_safetensors_meta(f, "format_version");
    const char *k = amdim_safetensors_meta(f, "kind");
    if (fmt && strcmp(fmt, AMDIM_CHECKPOINT_FORMAT) == 0)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "%s is an AMDIM checkpoint, not a Deep InfoMax one: resume it without --model dim", path);
    if (!fmt || strcmp(fmt, AMDIM_DIM_CHECKPOINT_FORMAT) != 0)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s is not a Deep InfoMax checkpoint (format \"%s\")", path,
                          fmt ? fmt : "none");
    if (!ver || strcmp(ver, "1") != 0)
        return amdim_fail(err, n, AMDIM_E_VERSION,
                          "%s has DIM checkpoint format version %s; this build reads version %d", path, ver ? ver : "?",
                          AMDIM_DIM_CHECKPOINT_VERSION);
    if (!k || strcmp(k, kind) != 0)
        return amdim_fail(err, n, AMDIM_E_INVALID, "%s holds kind \"%s\", expected \"%s\"", path, k ? k : "none", kind);
    return AMDIM_OK;
}

int amdim_dim_checkpoint_read_meta(const char *path, amdim_dim_state *st, char *err, size_t n)
{
    amdim_safetensors_file f;
    AMDIM_TRY(amdim_safetensors_open(&f, path, err, n));
    memset(st, 0, sizeof *st);
    int s = check_format(&f, path, "weights", err, n);
    if (s == AMDIM_OK)
        s = meta_run(&f, path, &st->ci, err, n);
    if (s == AMDIM_OK)
        s = meta_model(&f, path, st, err, n);
    amdim_safetensors_close(&f);
    return s;
}

/* ---- writing ------------------------------------------------------------------ */

static int check_finite(const char *what, const char *name, const float *x, size_t count, const char *dir,
                        uint64_t step, char *err, size_t n)
{
    for (size_t i = 0; i < count; i++)
        if (!isfinite(x[i]))
            return amdim_fail(err, n, AMDIM_E_INVALID,
                              "the model at step %llu (not saved to %s): %s%s element %zu is %g (training diverged)",
                              (unsigned long long)step, dir, what, name, i, x[i]);
    return AMDIM_OK;
}

static amdim_safetensors_out out_tensor(const amdim_dim_tensor *t, const char *name, const float *block)
{
    amdim_safetensors_out o = {name, "F32", t->ndim, {0}, block + t->offset, t->size * sizeof(float)};
    for (int k = 0; k < t->ndim; k++)
        o.shape[k] = t->shape[k];
    return o;
}

/* Every tensor of the three blocks finite: a checkpoint must load. */
static int check_state(const amdim_dim *d, const float *w, const float *m, const float *v, const char *dir,
                       uint64_t step, char *err, size_t n)
{
    for (int i = 0; i < amdim_dim_tensor_count(d); i++) {
        const amdim_dim_tensor *t = amdim_dim_tensor_at(d, i);
        AMDIM_TRY(check_finite("", t->name, w + t->offset, t->size, dir, step, err, n));
        if (t->trainable) {
            AMDIM_TRY(check_finite("exp_avg.", t->name, m + t->offset, t->size, dir, step, err, n));
            AMDIM_TRY(check_finite("exp_avg_sq.", t->name, v + t->offset, t->size, dir, step, err, n));
        }
    }
    return AMDIM_OK;
}

/* Both files' tensors: the weights file's into t (counts: the int64
 * num_batches_tracked), the moments into o under names. */
static void build_tensors(const amdim_dim *d, const float *w, const float *m, const float *v, amdim_safetensors_out *t,
                          int64_t *counts, amdim_safetensors_out *o, char (*names)[112], int *no)
{
    *no = 0;
    for (int i = 0; i < amdim_dim_tensor_count(d); i++) {
        const amdim_dim_tensor *x = amdim_dim_tensor_at(d, i);
        t[i] = out_tensor(x, x->name, w);
        if (x->ndim == 0) {
            counts[i] = (int64_t)w[x->offset];
            t[i].dtype = "I64";
            t[i].data = &counts[i];
            t[i].bytes = 8;
        }
        if (!x->trainable)
            continue;
        snprintf(names[*no], sizeof names[0], "exp_avg.%s", x->name);
        o[*no] = out_tensor(x, names[*no], m);
        (*no)++;
        snprintf(names[*no], sizeof names[0], "exp_avg_sq.%s", x->name);
        o[*no] = out_tensor(x, names[*no], v);
        (*no)++;
    }
}


int amdim_dim_checkpoint_save(const amdim_dim *d, const amdim_dim_state *st, const float *w, const float *m,
                              const float *v, const char *dir, char *err, size_t n)
{
    AMDIM_TRY(check_state(d, w, m, v, dir, st->ci.step, err, n));
    int nt = amdim_dim_tensor_count(d), no = 0, s;
    amdim_safetensors_out *t = calloc((size_t)nt, sizeof *t), *o = calloc((size_t)2 * nt, sizeof *o);
    char(*names)[112] = calloc((size_t)2 * nt, sizeof *names);
    int64_t *counts = calloc((size_t)nt, sizeof *counts);
    amdim_checkpoint_meta *meta = calloc(2, sizeof *meta);
    if (!t || !o || !names || !counts || !meta) {
        s = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
        goto done;
    }
    build_tensors(d, w, m, v, t, counts, o, names, &no);
    uint64_t digest = AMDIM_CKPT_FNV_BASIS;
    for (int i = 0; i < nt; i++)
        digest = amdim_checkpoint_fnv1a(digest, t[i].data, t[i].bytes);
    meta_build(&meta[0], st, "weights", NULL);
    meta_build(&meta[1], st, "optimizer", &digest);
    s = amdim_checkpoint_write_pair(dir, st->ci.step, &meta[0], t, nt, &meta[1], o, no, err, n);
done:
    free(meta);
    free(counts);
    free(names);
    free(o);
    free(t);
    return s;
}

/* ---- reading ------------------------------------------------------------------ */

/* Tensor `name` of f into dst, of x's shape: F32 (I64 for a scalar count). */
static int read_one(const amdim_safetensors_file *f, const char *path, const char *name, const amdim_dim_tensor *x,
                    float *dst, uint64_t *digest, char *err, size_t n)
{
    const amdim_safetensors_tensor *t = amdim_safetensors_find(f, name);
    if (!t)
        return amdim_fail(err, n, AMDIM_E_INVALID, "%s has no tensor %s: not a checkpoint of this DIM model", path,
                          name);
    int same = t->ndim == x->ndim && strcmp(t->dtype, x->ndim ? "F32" : "I64") == 0;
    for (int k = 0; same && k < x->ndim; k++)
        same = t->shape[k] == x->shape[k];
    size_t bytes = x->ndim ? x->size * sizeof(float) : 8;
    if (!same || t->end - t->begin != bytes)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "%s: tensor %s is %s of %d dimensions (first %lld); this model's is "
                          "%s of %d (first %d)",
                          path, name, t->dtype, t->ndim, t->ndim ? (long long)t->shape[0] : 0, x->ndim ? "F32" : "I64",
                          x->ndim, x->ndim ? x->shape[0] : 0);
    if (x->ndim) {
        AMDIM_TRY(amdim_safetensors_read_tensor(f, t, dst, bytes, path, err, n));
        if (digest)
            *digest = amdim_checkpoint_fnv1a(*digest, dst, bytes);
    } else {
        int64_t c;
        AMDIM_TRY(amdim_safetensors_read_tensor(f, t, &c, 8, path, err, n));
        if (c < 0 || c > (1ll << 40))
            return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: %s = %lld", path, name, (long long)c);
        if (digest)
            *digest = amdim_checkpoint_fnv1a(*digest, &c, 8);
        dst[0] = (float)c;
    }
    for (size_t i = 0; i < x->size; i++)
        if (!isfinite(dst[i]))
            return amdim_fail(err, n, AMDIM_E_INVALID, "%s: tensor %s element %zu is %g", path, name, i, dst[i]);
    return AMDIM_OK;
}

static int load_weights(const amdim_dim *d, const char *path, float *w, uint64_t *digest, char *err, size_t n)
{
    amdim_safetensors_file f;
    AMDIM_TRY(amdim_safetensors_open(&f, path, err, n));
    int s = check_format(&f, path, "weights", err, n), count = amdim_dim_tensor_count(d);
    if (s == AMDIM_OK && f.nt != count)
        s = amdim_fail(err, n, AMDIM_E_INVALID, "%s holds %d tensors; this DIM model has %d", path, f.nt, count);
    for (int i = 0; s == AMDIM_OK && i < count; i++) {
        const amdim_dim_tensor *x = amdim_dim_tensor_at(d, i);
        s = read_one(&f, path, x->name, x, w + x->offset, digest, err, n);
    }
    amdim_safetensors_close(&f);
    return s;
}

static int load_moments(const amdim_dim *d, const char *opath, uint64_t digest, float *m, float *v, char *err, size_t n)
{
    amdim_safetensors_file f;
    AMDIM_TRY(amdim_safetensors_open(&f, opath, err, n));
    int s = check_format(&f, opath, "optimizer", err, n), want = 0;
    const char *dg = amdim_safetensors_meta(&f, "weights_fnv1a64");
    char mine[24];
    snprintf(mine, sizeof mine, "%016llx", (unsigned long long)digest);
    if (s == AMDIM_OK && (!dg || strcmp(dg, mine) != 0))
        s = amdim_fail(err, n, AMDIM_E_INVALID,
                       "%s does not belong to the weights beside it (their digest %s, recorded %s): restore the pair",
                       opath, mine, dg ? dg : "none");
    for (int i = 0; s == AMDIM_OK && i < amdim_dim_tensor_count(d); i++) {
        const amdim_dim_tensor *x = amdim_dim_tensor_at(d, i);
        if (!x->trainable)
            continue;
        char name[112];
        snprintf(name, sizeof name, "exp_avg.%s", x->name);
        s = read_one(&f, opath, name, x, m + x->offset, NULL, err, n);
        snprintf(name, sizeof name, "exp_avg_sq.%s", x->name);
        if (s == AMDIM_OK)
            s = read_one(&f, opath, name, x, v + x->offset, NULL, err, n);
        want += 2;
    }
    if (s == AMDIM_OK && f.nt != want)
        s = amdim_fail(err, n, AMDIM_E_INVALID, "%s holds %d tensors; this DIM model's moments are %d", opath, f.nt,
                       want);
    amdim_safetensors_close(&f);
    return s;
}

int amdim_dim_checkpoint_load(const amdim_dim *d, const char *path, float *w, float *m, float *v, char *err, size_t n)
{
    uint64_t digest = AMDIM_CKPT_FNV_BASIS;
    AMDIM_TRY(load_weights(d, path, w, &digest, err, n));
    char opath[4300];
    size_t len = strlen(path);
    const char *suffix = ".safetensors";
    if (len < strlen(suffix) || strcmp(path + len - strlen(suffix), suffix) != 0)
        return amdim_fail(err, n, AMDIM_E_INVALID, "%s: a checkpoint's weights file ends in .safetensors", path);
    snprintf(opath, sizeof opath, "%.*s.optim.safetensors", (int)(len - strlen(suffix)), path);
    memset(m, 0, amdim_dim_block_floats(d) * sizeof(float));
    memset(v, 0, amdim_dim_block_floats(d) * sizeof(float));
    return load_moments(d, opath, digest, m, v, err, n);
}
