/* A checkpoint's metadata (checkpoint_internal.h): the __metadata__
 * entries a checkpoint is written with (docs/spec.md 8.3), and reading them
 * back strictly - every value parsed whole and range checked, the model
 * they describe built and its size compared with the file's data. */
#include "checkpoint_internal.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arch_internal.h"

typedef amdim_safetensors_file st_file; /* a short name for this file */

/* ---- writing ------------------------------------------------------------- */

void amdim_checkpoint_meta_add(amdim_checkpoint_meta *m, const char *key, const char *fmt, ...)
{
    AMDIM_ASSERT(m->n < AMDIM_CKPT_META_MAX);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(m->text[m->n], AMDIM_CKPT_META_LEN, fmt, ap);
    va_end(ap);
    AMDIM_ASSERT(len >= 0 && len < AMDIM_CKPT_META_LEN); /* a few numbers or a short word */
    m->kv[m->n] = (amdim_safetensors_kv){key, m->text[m->n]};
    m->n++;
}

/* The run: the format, the file's kind, the loader cursor and the schedule's extent. */
static void meta_run(amdim_checkpoint_meta *m, const amdim_checkpoint_info *in, const char *kind)
{
    amdim_checkpoint_meta_add(m, "format", "%s", AMDIM_CHECKPOINT_FORMAT);
    amdim_checkpoint_meta_add(m, "format_version", "%d", AMDIM_CHECKPOINT_VERSION);
    amdim_checkpoint_meta_add(m, "kind", "%s", kind);
    amdim_checkpoint_meta_add(m, "step", "%llu", (unsigned long long)in->step);
    amdim_checkpoint_meta_add(m, "next_epoch", "%llu", (unsigned long long)in->next_epoch);
    amdim_checkpoint_meta_add(m, "next_batch", "%llu", (unsigned long long)in->next_batch);
    amdim_checkpoint_meta_add(m, "seed", "%llu", (unsigned long long)in->seed);
    amdim_checkpoint_meta_add(m, "epochs", "%lld", (long long)in->epochs);
    amdim_checkpoint_meta_add(m, "max_steps", "%lld", (long long)in->max_steps);
    amdim_checkpoint_meta_add(m, "preset", "%s", in->preset);
    amdim_checkpoint_meta_add(m, "batch", "%d", in->batch);
    amdim_checkpoint_meta_add(m, "phase", "%s", in->probes_only ? "classifiers" : "infomax");
}

/* The model's hyper-parameters, the optimiser's and the normalisation. */
static void meta_model(amdim_checkpoint_meta *m, const amdim_model_config *c)
{
    amdim_checkpoint_meta_add(m, "encoder_size", "%d", c->encoder_size);
    amdim_checkpoint_meta_add(m, "ndf", "%d", c->ndf);
    amdim_checkpoint_meta_add(m, "n_rkhs", "%d", c->n_rkhs);
    amdim_checkpoint_meta_add(m, "n_depth", "%d", c->n_depth);
    amdim_checkpoint_meta_add(m, "use_bn", "%d", c->use_bn);
    amdim_checkpoint_meta_add(m, "n_classes", "%d", c->n_classes);
    amdim_checkpoint_meta_add(m, "mlp_hidden", "%d", c->mlp_hidden);
    amdim_checkpoint_meta_add(m, "tclip", "%.9g", c->tclip);
    amdim_checkpoint_meta_add(m, "objective", "%d", c->objective);
    amdim_checkpoint_meta_add(m, "lr", "%.9g", c->lr);
    amdim_checkpoint_meta_add(m, "beta1", "%.9g", c->beta1);
    amdim_checkpoint_meta_add(m, "beta2", "%.9g", c->beta2);
    amdim_checkpoint_meta_add(m, "eps", "%.9g", c->eps);
    amdim_checkpoint_meta_add(m, "weight_decay", "%.9g", c->weight_decay);
    amdim_checkpoint_meta_add(m, "warmup", "%d", c->warmup);
    amdim_checkpoint_meta_add(m, "lr_decay", "%.9g", c->lr_decay);
    amdim_checkpoint_meta_add(m, "model_seed", "%llu", (unsigned long long)c->seed);
    /* only with mixtures, so that K = 1 checkpoints are those of the plain
     * model byte for byte; a checkpoint without them has K = 1 */
    if (c->mixtures > 1) {
        amdim_checkpoint_meta_add(m, "mixtures", "%d", c->mixtures);
        amdim_checkpoint_meta_add(m, "mix_tau", "%.9g", c->mix_tau);
        amdim_checkpoint_meta_add(m, "mix_entropy", "%.9g", c->mix_entropy);
        amdim_checkpoint_meta_add(m, "probe_features", "%s", c->probe_features ? "mixture-mean" : "r1");
    }
    char ms[AMDIM_CKPT_META_LEN] = "";
    AMDIM_ASSERT(c->n_milestones >= 0 && c->n_milestones <= 8);
    for (int i = 0, len = 0; i < c->n_milestones; i++)
        len += snprintf(ms + len, sizeof ms - (size_t)len, "%s%d", i ? "," : "", c->milestones[i]);
    amdim_checkpoint_meta_add(m, "milestones", "%s", ms);
    amdim_checkpoint_meta_add(m, "mean", "%.9g,%.9g,%.9g", c->mean[0], c->mean[1], c->mean[2]);
    amdim_checkpoint_meta_add(m, "std", "%.9g,%.9g,%.9g", c->std[0], c->std[1], c->std[2]);
}

void amdim_checkpoint_meta_build(amdim_checkpoint_meta *m, const amdim_model_config *c, const amdim_checkpoint_info *in,
                                 const char *kind, const uint64_t *weights_digest)
{
    m->n = 0;
    meta_run(m, in, kind);
    meta_model(m, c);
    if (weights_digest)
        amdim_checkpoint_meta_add(m, "weights_fnv1a64", "%016llx", (unsigned long long)*weights_digest);
}

/* ---- reading ---------------------------------------------------------------- */

/* Metadata values are parsed whole (no leading space, sign where none
 * belongs or trailing text: "8abc" is refused, not read as 8) and range
 * checked; each error names the file, the key and the value. */
static int meta_bad(const char *path, const char *key, const char *v, const char *want, char *err, size_t n)
{
    return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: metadata %s is \"%s\", not %s", path, key, v, want);
}

static int meta_i64(const st_file *f, const char *path, const char *key, long long lo, long long hi, long long *out,
                    char *err, size_t n)
{
    const char *v = amdim_safetensors_meta(f, key);
    char *end, want[96];
    errno = 0;
    long long x = isdigit((unsigned char)v[0]) || (v[0] == '-' && lo < 0) ? strtoll(v, &end, 10) : 0;
    if (!(isdigit((unsigned char)v[0]) || (v[0] == '-' && lo < 0)) || errno || *end || x < lo || x > hi) {
        snprintf(want, sizeof want, "an integer in %lld..%lld", lo, hi);
        return meta_bad(path, key, v, want, err, n);
    }
    *out = x;
    return AMDIM_OK;
}

static int meta_u64(const st_file *f, const char *path, const char *key, unsigned long long hi, uint64_t *out,
                    char *err, size_t n)
{
    const char *v = amdim_safetensors_meta(f, key);
    char *end, want[96];
    errno = 0;
    unsigned long long x = isdigit((unsigned char)v[0]) ? strtoull(v, &end, 10) : 0;
    if (!isdigit((unsigned char)v[0]) || errno || *end || x > hi) {
        snprintf(want, sizeof want, "an integer in 0..%llu", hi);
        return meta_bad(path, key, v, want, err, n);
    }
    *out = x;
    return AMDIM_OK;
}

static int meta_int(const st_file *f, const char *path, const char *key, int lo, int hi, int *out, char *err, size_t n)
{
    long long x;
    int st = meta_i64(f, path, key, lo, hi, &x, err, n);
    if (st == AMDIM_OK)
        *out = (int)x;
    return st;
}

/* A finite float in [lo, hi] from s; *rest gets what follows it. */
static int parse_float(const char *s, float lo, float hi, float *out, const char **rest)
{
    char *end;
    if (!*s || isspace((unsigned char)*s))
        return -1;
    errno = 0;
    float x = strtof(s, &end);
    if (end == s || errno == ERANGE || !isfinite(x) || !(x >= lo && x <= hi))
        return -1;
    *out = x;
    *rest = end;
    return 0;
}

static int meta_float(const st_file *f, const char *path, const char *key, float lo, float hi, float *out, char *err,
                      size_t n)
{
    const char *v = amdim_safetensors_meta(f, key), *rest;
    char want[96];
    if (parse_float(v, lo, hi, out, &rest) || *rest) {
        snprintf(want, sizeof want, "a finite number in %g..%g", (double)lo, (double)hi);
        return meta_bad(path, key, v, want, err, n);
    }
    return AMDIM_OK;
}

/* "a,b,c": three finite numbers in [lo, hi]. */
static int meta_rgb(const st_file *f, const char *path, const char *key, float lo, float hi, float *out, char *err,
                    size_t n)
{
    const char *v = amdim_safetensors_meta(f, key), *p = v;
    char want[128];
    for (int i = 0; i < 3; i++)
        if (parse_float(p, lo, hi, &out[i], &p) || *p != (i < 2 ? ',' : 0) || (i < 2 && !*++p)) {
            snprintf(want, sizeof want, "three comma-separated finite numbers in %g..%g (0..1 pixel scale)", (double)lo,
                     (double)hi);
            return meta_bad(path, key, v, want, err, n);
        }
    return AMDIM_OK;
}

/* One of two words: *out = 0 for w0, 1 for w1. */
static int meta_word(const st_file *f, const char *path, const char *key, const char *w0, const char *w1, int *out,
                     char *err, size_t n)
{
    const char *v = amdim_safetensors_meta(f, key);
    char want[96];
    if (strcmp(v, w0) == 0 || strcmp(v, w1) == 0) {
        *out = strcmp(v, w1) == 0;
        return AMDIM_OK;
    }
    snprintf(want, sizeof want, "%s or %s", w0, w1);
    return meta_bad(path, key, v, want, err, n);
}

/* The tensor data a weights file of the model c holds (every tensor the
 * model has, plus g2l_loss.masks_r5), against what the file holds: a
 * small file whose metadata claims a large model is refused before
 * anything is allocated for that model. */
static int check_claimed_size(const st_file *f, const char *path, const amdim_model_config *c, char *err, size_t n)
{
    amdim_arch a;
    char why[512];
    memset(&a, 0, sizeof a);
    int st = amdim_arch_build(&a, c, why, sizeof why);
    if (st) {
        amdim_arch_free(&a);
        return amdim_fail(err, n, st == AMDIM_E_NOMEM ? st : AMDIM_E_CORRUPT, "%s: its metadata describes no model this build makes: %s",
                          path, why);
    }
    uint64_t need = 25 * 25, params = 0;
    for (int i = 0; i < a.ntensors; i++) {
        need += a.tensors[i].role == AMDIM_ROLE_BN_COUNT ? 8 : (uint64_t)a.tensors[i].size * 4;
        params += a.tensors[i].size;
    }
    amdim_arch_free(&a);
    uint64_t have = amdim_safetensors_data_size(f);
    if (need > have)
        return amdim_fail(err, n, AMDIM_E_CORRUPT,
                          "%s: its metadata describes a model of %llu parameters and buffers (%llu bytes of tensors), but "
                          "the file holds %llu bytes of tensor data",
                          path, (unsigned long long)params, (unsigned long long)need, (unsigned long long)have);
    return AMDIM_OK;
}

/* "a,b,...": up to 8 epochs >= 0 into c->milestones. */
static int meta_milestones(const st_file *f, const char *path, amdim_model_config *c, char *err, size_t n)
{
    const char *ms = amdim_safetensors_meta(f, "milestones");
    for (const char *p = ms; *p;) {
        char *end;
        errno = 0;
        long v = isdigit((unsigned char)*p) ? strtol(p, &end, 10) : -1;
        if (v < 0 || errno || v > INT_MAX || c->n_milestones == 8 || (*end && (*end != ',' || !end[1])))
            return meta_bad(path, "milestones", ms, "up to 8 comma-separated epochs", err, n);
        c->milestones[c->n_milestones++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return AMDIM_OK;
}

/* The run's keys into in. */
static int meta_info(const st_file *f, const char *path, amdim_checkpoint_info *in, char *err, size_t n)
{
    long long epochs, max_steps;
    /* the loop passes epochs as int; the rest as the CLIs bound them */
    AMDIM_TRY(meta_u64(f, path, "step", INT64_MAX, &in->step, err, n));
    AMDIM_TRY(meta_u64(f, path, "next_epoch", INT_MAX, &in->next_epoch, err, n));
    AMDIM_TRY(meta_u64(f, path, "next_batch", INT64_MAX, &in->next_batch, err, n));
    AMDIM_TRY(meta_u64(f, path, "seed", UINT64_MAX, &in->seed, err, n));
    AMDIM_TRY(meta_i64(f, path, "epochs", -1, INT_MAX, &epochs, err, n));
    AMDIM_TRY(meta_i64(f, path, "max_steps", -1, INT64_MAX, &max_steps, err, n));
    in->epochs = epochs;
    in->max_steps = max_steps;
    const char *preset = amdim_safetensors_meta(f, "preset");
    if (strlen(preset) >= sizeof in->preset)
        return meta_bad(path, "preset", preset, "a preset name", err, n);
    snprintf(in->preset, sizeof in->preset, "%s", preset);
    AMDIM_TRY(meta_int(f, path, "batch", 0, 1 << 20, &in->batch, err, n));
    in->probes_only = 0;
    if (amdim_safetensors_meta(f, "phase"))
        AMDIM_TRY(meta_word(f, path, "phase", "infomax", "classifiers", &in->probes_only, err, n));
    return AMDIM_OK;
}

/* The model's keys into c (mixtures: K = 1 where absent). */
static int meta_cfg(const st_file *f, const char *path, amdim_model_config *c, char *err, size_t n)
{
    AMDIM_TRY(meta_int(f, path, "encoder_size", 0, INT_MAX, &c->encoder_size, err, n));
    AMDIM_TRY(meta_int(f, path, "ndf", 0, INT_MAX, &c->ndf, err, n));
    AMDIM_TRY(meta_int(f, path, "n_rkhs", 0, INT_MAX, &c->n_rkhs, err, n));
    AMDIM_TRY(meta_int(f, path, "n_depth", 0, INT_MAX, &c->n_depth, err, n));
    AMDIM_TRY(meta_int(f, path, "use_bn", 0, 1, &c->use_bn, err, n));
    AMDIM_TRY(meta_int(f, path, "n_classes", 0, INT_MAX, &c->n_classes, err, n));
    AMDIM_TRY(meta_int(f, path, "mlp_hidden", 0, INT_MAX, &c->mlp_hidden, err, n));
    AMDIM_TRY(meta_int(f, path, "objective", 0, 2, &c->objective, err, n));
    AMDIM_TRY(meta_int(f, path, "warmup", 0, INT_MAX, &c->warmup, err, n));
    AMDIM_TRY(meta_float(f, path, "tclip", 0, FLT_MAX, &c->tclip, err, n));
    AMDIM_TRY(meta_float(f, path, "lr", 0, FLT_MAX, &c->lr, err, n));
    AMDIM_TRY(meta_float(f, path, "beta1", 0, 1, &c->beta1, err, n));
    AMDIM_TRY(meta_float(f, path, "beta2", 0, 1, &c->beta2, err, n));
    AMDIM_TRY(meta_float(f, path, "eps", 0, FLT_MAX, &c->eps, err, n));
    AMDIM_TRY(meta_float(f, path, "weight_decay", 0, FLT_MAX, &c->weight_decay, err, n));
    AMDIM_TRY(meta_float(f, path, "lr_decay", 0, FLT_MAX, &c->lr_decay, err, n));
    AMDIM_TRY(meta_u64(f, path, "model_seed", UINT64_MAX, &c->seed, err, n));
    AMDIM_TRY(meta_milestones(f, path, c, err, n));
    /* the input normalisation, on the 0..1 pixel scale: a mean outside it
     * or a std near 0 (1e-45 turns every image into the same huge values)
     * is no normalisation of images */
    AMDIM_TRY(meta_rgb(f, path, "mean", 0.0f, 1.0f, c->mean, err, n));
    AMDIM_TRY(meta_rgb(f, path, "std", 1e-3f, 1.0f, c->std, err, n));
    c->mixtures = 1;
    c->mix_tau = 1.0f;
    c->mix_entropy = 1.0f;
    if (amdim_safetensors_meta(f, "mixtures"))
        AMDIM_TRY(meta_int(f, path, "mixtures", 1, 16, &c->mixtures, err, n));
    if (amdim_safetensors_meta(f, "mix_tau"))
        AMDIM_TRY(meta_float(f, path, "mix_tau", 0, FLT_MAX, &c->mix_tau, err, n));
    if (amdim_safetensors_meta(f, "mix_entropy"))
        AMDIM_TRY(meta_float(f, path, "mix_entropy", 0, FLT_MAX, &c->mix_entropy, err, n));
    if (amdim_safetensors_meta(f, "probe_features"))
        AMDIM_TRY(meta_word(f, path, "probe_features", "r1", "mixture-mean", &c->probe_features, err, n));
    return AMDIM_OK;
}

/* The format and its version, every key a checkpoint must have, each
 * value, and the size of the model they describe against the file's. */
int amdim_checkpoint_meta_parse(const st_file *f, const char *path, amdim_model_config *c, amdim_checkpoint_info *in,
                                char *err, size_t n)
{
    const char *fmt = amdim_safetensors_meta(f, "format"), *ver = amdim_safetensors_meta(f, "format_version");
    if (!fmt || strcmp(fmt, AMDIM_CHECKPOINT_FORMAT) != 0)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s is not an amdim checkpoint (no format metadata)", path);
    char *vend;
    errno = 0;
    long vv = ver && isdigit((unsigned char)ver[0]) ? strtol(ver, &vend, 10) : -1;
    if (vv != AMDIM_CHECKPOINT_VERSION || errno || *vend)
        return amdim_fail(err, n, AMDIM_E_VERSION, "%s has checkpoint format version %s; this build reads version %d",
                          path, ver ? ver : "?", AMDIM_CHECKPOINT_VERSION);
    const char *keys[] = {"step", "next_epoch", "next_batch", "seed", "epochs", "max_steps", "preset", "batch",
                          "encoder_size", "ndf", "n_rkhs", "n_depth", "use_bn", "n_classes", "mlp_hidden", "tclip",
                          "objective", "lr", "beta1", "beta2", "eps", "weight_decay", "warmup", "lr_decay",
                          "model_seed", "milestones", "mean", "std"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!amdim_safetensors_meta(f, keys[i]))
            return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: metadata lacks %s", path, keys[i]);
    memset(c, 0, sizeof *c);
    memset(in, 0, sizeof *in);
    AMDIM_TRY(meta_info(f, path, in, err, n));
    AMDIM_TRY(meta_cfg(f, path, c, err, n));
    return check_claimed_size(f, path, c, err, n);
}
