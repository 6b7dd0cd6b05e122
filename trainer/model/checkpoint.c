/* safetensors checkpoints (see amdim_checkpoint.h). The format: an 8-byte
 * little-endian header length, a JSON header (tensor name -> dtype, shape,
 * data_offsets; plus "__metadata__", a string map), then the raw data. */
#include "amdim_checkpoint.h"
#include "checkpoint_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arch_internal.h"

/* ---- a growable string ---------------------------------------------------- */

typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
}

/* ---- metadata ------------------------------------------------------------- */

/* extra: more "key":"value" pairs (with a leading comma), or "". */
static void meta_config(sbuf *b, const amdim_model_config *c, const amdim_checkpoint_info *in, const char *kind,
                        const char *extra)
{
    sb_add(b, "\"__metadata__\":{\"format\":\"%s\",\"format_version\":\"%d\",\"kind\":\"%s\"", AMDIM_CHECKPOINT_FORMAT,
           AMDIM_CHECKPOINT_VERSION, kind);
    sb_add(b, ",\"step\":\"%llu\",\"next_epoch\":\"%llu\",\"next_batch\":\"%llu\",\"seed\":\"%llu\",\"epochs\":\"%lld\","
              "\"max_steps\":\"%lld\",\"preset\":\"%s\",\"batch\":\"%d\",\"phase\":\"%s\"",
           (unsigned long long)in->step, (unsigned long long)in->next_epoch, (unsigned long long)in->next_batch,
           (unsigned long long)in->seed, (long long)in->epochs, (long long)in->max_steps, in->preset, in->batch,
           in->probes_only ? "classifiers" : "infomax");
    sb_add(b, ",\"encoder_size\":\"%d\",\"ndf\":\"%d\",\"n_rkhs\":\"%d\",\"n_depth\":\"%d\",\"use_bn\":\"%d\","
              "\"n_classes\":\"%d\",\"mlp_hidden\":\"%d\",\"tclip\":\"%.9g\",\"objective\":\"%d\",\"lr\":\"%.9g\","
              "\"beta1\":\"%.9g\",\"beta2\":\"%.9g\",\"eps\":\"%.9g\",\"weight_decay\":\"%.9g\",\"warmup\":\"%d\","
              "\"lr_decay\":\"%.9g\",\"model_seed\":\"%llu\"",
           c->encoder_size, c->ndf, c->n_rkhs, c->n_depth, c->use_bn, c->n_classes, c->mlp_hidden, c->tclip,
           c->objective, c->lr, c->beta1, c->beta2, c->eps, c->weight_decay, c->warmup, c->lr_decay,
           (unsigned long long)c->seed);
    /* only with mixtures, so that K = 1 checkpoints are those of the plain
     * model byte for byte; a checkpoint without them has K = 1 */
    if (c->mixtures > 1)
        sb_add(b, ",\"mixtures\":\"%d\",\"mix_tau\":\"%.9g\",\"mix_entropy\":\"%.9g\",\"probe_features\":\"%s\"",
               c->mixtures, c->mix_tau, c->mix_entropy, c->probe_features ? "mixture-mean" : "r1");
    sb_add(b, ",\"milestones\":\"");
    for (int i = 0; i < c->n_milestones; i++)
        sb_add(b, "%s%d", i ? "," : "", c->milestones[i]);
    sb_add(b, "\",\"mean\":\"%.9g,%.9g,%.9g\",\"std\":\"%.9g,%.9g,%.9g\"%s}", c->mean[0], c->mean[1], c->mean[2],
           c->std[0], c->std[1], c->std[2], extra);
}

/* ---- values ------------------------------------------------------------------ */

/* Weights, buffers and first moments must be finite and within +-1e15:
 * trained AMDIM weights are O(1), and below this bound a square (1e30)
 * and a sum of a million such products stay finite in fp32 (3.4e38).
 * Second moments are squared gradients: 0 .. 1e30. A value outside
 * (NaN, Inf, 3e38) is a diverged or damaged model, refused on save and
 * load. */
#define CKPT_MAX_ABS 1e15f
#define CKPT_MAX_SQ 1e30f

/* 0, or AMDIM_E_INVALID naming the tensor and its first element outside
 * [lo, hi] (NaN included); `where` begins the message. */
static int check_values(const char *where, const char *prefix, const char *name, const float *x, size_t count,
                        float lo, float hi, char *err, size_t n)
{
    for (size_t i = 0; i < count; i++)
        if (!(x[i] >= lo && x[i] <= hi))
            return amdim_fail(err, n, AMDIM_E_INVALID,
                              "%s: tensor %s%s element %zu is %g (values must be finite and within %g..%g: a diverged "
                              "or damaged model)",
                              where, prefix, name, i, (double)x[i], (double)lo, (double)hi);
    return AMDIM_OK;
}

/* A parameter's values and Adam moments (moments: with_moments). */
static int check_param(const char *where, const amdim_param *p, int with_moments, char *err, size_t n)
{
    int st = AMDIM_OK;
    if (p->role != AMDIM_ROLE_BN_COUNT)
        st = check_values(where, "", p->name, p->data, p->size, -CKPT_MAX_ABS, CKPT_MAX_ABS, err, n);
    if (st == AMDIM_OK && with_moments && !p->buffer)
        if ((st = check_values(where, "exp_avg.", p->name, p->adam_m, p->size, -CKPT_MAX_ABS, CKPT_MAX_ABS, err, n)) ==
            AMDIM_OK)
            st = check_values(where, "exp_avg_sq.", p->name, p->adam_v, p->size, 0.0f, CKPT_MAX_SQ, err, n);
    return st;
}

/* FNV-1a (64 bit) of the weights file's tensor data, in file order: the
 * optimiser file records it (weights_fnv1a64), so it loads only beside
 * the weights it was written with. */
#define FNV_BASIS 1469598103934665603ull
static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* ---- writing ---------------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *dtype;
    int ndim;
    int shape[4];
    const void *data;
    size_t bytes;
    int kind; /* 0 raw bytes, 1 float -> int64 */
} out_tensor;

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_safetensors(const char *path, const out_tensor *t, int nt, const char *meta_json, char *err, size_t n)
{
    sbuf h = {0};
    sb_add(&h, "{%s", meta_json);
    size_t off = 0;
    for (int i = 0; i < nt; i++) {
        size_t bytes = t[i].kind == 1 ? 8 : t[i].bytes;
        sb_add(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name, t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++)
            sb_add(&h, "%s%d", d ? "," : "", t[i].shape[d]);
        sb_add(&h, "],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    sb_add(&h, "}");
    while (!h.oom && h.len % 8)
        sb_add(&h, " ");
    if (h.oom) {
        free(h.s);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(h.s);
        return amdim_fail(err, n, AMDIM_E_IO, "cannot create %s: %s", tmp, strerror(errno));
    }
    uint64_t hl = h.len;
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(hl >> (8 * i));
    int bad = write_all(fd, le, 8) || write_all(fd, h.s, h.len);
    free(h.s);
    for (int i = 0; i < nt && !bad; i++) {
        if (t[i].kind == 1) {
            int64_t v = (int64_t)((const float *)t[i].data)[0];
            bad = write_all(fd, &v, 8);
        } else {
            bad = write_all(fd, t[i].data, t[i].bytes);
        }
    }
    int e = errno;
    if (!bad && fsync(fd) != 0) {
        bad = 1;
        e = errno;
    }
    if (close(fd) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        unlink(tmp);
        return amdim_fail(err, n, AMDIM_E_IO, "writing %s failed: %s", path, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        unlink(tmp);
        return amdim_fail(err, n, AMDIM_E_IO, "cannot rename %s: %s", tmp, strerror(e));
    }
    return AMDIM_OK;
}

static void ckpt_paths(const char *dir, uint64_t step, char *w, char *o, size_t n)
{
    snprintf(w, n, "%s/ckpt-%08llu.safetensors", dir, (unsigned long long)step);
    snprintf(o, n, "%s/ckpt-%08llu.optim.safetensors", dir, (unsigned long long)step);
}

int amdim_checkpoint_save(amdim_model *m, const char *dir, const amdim_checkpoint_info *info, char *err, size_t n)
{
    int st = amdim_model_pull(m);
    if (st)
        return amdim_fail(err, n, st, "reading the model state: %s", amdim_model_error(m));
    int np = amdim_model_param_count(m);
    out_tensor *t = calloc((size_t)np + 1, sizeof *t), *o = calloc((size_t)2 * np, sizeof *o);
    char (*names)[200] = calloc((size_t)2 * np, sizeof *names);
    uint8_t masks[25 * 25];
    if (!t || !o || !names) {
        free(t);
        free(o);
        free(names);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    }
    /* weights + buffers in state_dict order, with the authors' constant 5x5
     * location masks (g2l_loss, registered between encoder and evaluator) */
    int nt = 0, masks_written = 0;
    memset(masks, 0, sizeof masks);
    for (int i = 0; i < 25; i++)
        masks[i * 25 + i] = 1;
    for (int i = 0; i < np; i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        if (p.probe && !masks_written++)
            t[nt++] = (out_tensor){"g2l_loss.masks_r5", "U8", 4, {25, 1, 5, 5}, masks, sizeof masks, 0};
        int nbt = p.role == AMDIM_ROLE_BN_COUNT;
        t[nt] = (out_tensor){p.name, nbt ? "I64" : "F32", p.ndim, {0}, p.data, p.size * sizeof(float), nbt};
        memcpy(t[nt].shape, p.shape, sizeof p.shape);
        nt++;
    }
    /* never write a diverged model: every checkpoint must load */
    char where[4300];
    snprintf(where, sizeof where, "the model at step %llu (not saved to %s)", (unsigned long long)info->step, dir);
    for (int i = 0; i < np && st == AMDIM_OK; i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        st = check_param(where, &p, 1, err, n);
    }
    uint64_t digest = FNV_BASIS;
    for (int i = 0; i < nt; i++) {
        int64_t v = t[i].kind == 1 ? (int64_t)((const float *)t[i].data)[0] : 0;
        digest = t[i].kind == 1 ? fnv1a(digest, &v, 8) : fnv1a(digest, t[i].data, t[i].bytes);
    }
    char extra[64];
    snprintf(extra, sizeof extra, ",\"weights_fnv1a64\":\"%016llx\"", (unsigned long long)digest);
    sbuf meta = {0};
    meta_config(&meta, amdim_model_get_config(m), info, "weights", "");
    char wpath[4200], opath[4200];
    ckpt_paths(dir, info->step, wpath, opath, sizeof wpath);
    /* optimiser moments */
    int no = 0;
    for (int i = 0; i < np; i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        if (p.buffer)
            continue;
        snprintf(names[no], sizeof names[0], "exp_avg.%s", p.name);
        o[no] = (out_tensor){names[no], "F32", p.ndim, {0}, p.adam_m, p.size * sizeof(float), 0};
        memcpy(o[no].shape, p.shape, sizeof p.shape);
        no++;
        snprintf(names[no], sizeof names[0], "exp_avg_sq.%s", p.name);
        o[no] = (out_tensor){names[no], "F32", p.ndim, {0}, p.adam_v, p.size * sizeof(float), 0};
        memcpy(o[no].shape, p.shape, sizeof p.shape);
        no++;
    }
    sbuf ometa = {0};
    meta_config(&ometa, amdim_model_get_config(m), info, "optimizer", extra);
    if (st == AMDIM_OK && (meta.oom || ometa.oom))
        st = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    if (st == AMDIM_OK)
        st = write_safetensors(opath, o, no, ometa.s, err, n);
    if (st == AMDIM_OK) {
        st = write_safetensors(wpath, t, nt, meta.s, err, n);
        if (st)
            unlink(opath);
    }
    if (st == AMDIM_OK) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    free(meta.s);
    free(ometa.s);
    free(t);
    free(o);
    free(names);
    return st;
}

/* ---- finding checkpoints ---------------------------------------------------- */

/* Steps of the weights files in dir, ascending; with complete_only only
 * those whose optimiser file exists too. */
static int list_steps(const char *dir, uint64_t **steps, int complete_only)
{
    DIR *d = opendir(dir);
    *steps = NULL;
    if (!d)
        return 0;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        unsigned long long s;
        char tail[64];
        if (sscanf(e->d_name, "ckpt-%llu.%63s", &s, tail) != 2 || strcmp(tail, "safetensors") != 0)
            continue;
        char w[4200], o[4200];
        ckpt_paths(dir, s, w, o, sizeof w);
        if (complete_only && access(o, F_OK) != 0)
            continue; /* incomplete */
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            uint64_t *p = realloc(*steps, (size_t)cap * sizeof *p);
            if (!p)
                break;
            *steps = p;
        }
        (*steps)[n++] = s;
    }
    closedir(d);
    for (int i = 1; i < n; i++) /* insertion sort, ascending */
        for (int j = i; j > 0 && (*steps)[j - 1] > (*steps)[j]; j--) {
            uint64_t t = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = t;
        }
    return n;
}

void amdim_checkpoint_prune(const char *dir, int keep)
{
    uint64_t *steps;
    int n = list_steps(dir, &steps, 1);
    for (int i = 0; i < n - keep; i++) {
        char w[4200], o[4200];
        ckpt_paths(dir, steps[i], w, o, sizeof w);
        unlink(w); /* weights first: an orphan optimiser file is never taken for a checkpoint */
        unlink(o);
    }
    free(steps);
}

int amdim_checkpoint_latest(const char *dir, char *path, size_t n)
{
    uint64_t *steps;
    int k = list_steps(dir, &steps, 1);
    if (k == 0) {
        free(steps);
        return AMDIM_E_NOT_FOUND;
    }
    char o[4200];
    ckpt_paths(dir, steps[k - 1], path, o, n);
    free(steps);
    return AMDIM_OK;
}

int amdim_checkpoint_newest(const char *dir, char *path, size_t n, int *complete)
{
    uint64_t *steps;
    int k = list_steps(dir, &steps, 0);
    if (k == 0) {
        free(steps);
        return AMDIM_E_NOT_FOUND;
    }
    char o[4200];
    ckpt_paths(dir, steps[k - 1], path, o, n);
    *complete = access(o, F_OK) == 0;
    free(steps);
    return AMDIM_OK;
}

int amdim_checkpoint_remove_temporaries(const char *dir, int *removed, char *err, size_t n)
{
    *removed = 0;
    DIR *d = opendir(dir);
    if (!d)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot read the directory %s: %s", dir, strerror(errno));
    int st = AMDIM_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        /* ckpt-<step>[.optim].safetensors.tmp.<pid>, as write_safetensors names them */
        const char *t = strstr(e->d_name, ".safetensors.tmp.");
        if (strncmp(e->d_name, "ckpt-", 5) != 0 || !t || !t[17] || strspn(t + 17, "0123456789") != strlen(t + 17))
            continue;
        char path[4400];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        if (unlink(path) != 0) {
            st = amdim_fail(err, n, AMDIM_E_IO, "cannot remove the stale temporary file %s: %s", path, strerror(errno));
            break;
        }
        (*removed)++;
    }
    closedir(d);
    return st;
}

/* ---- reading ---------------------------------------------------------------- */

typedef struct {
    char name[256];
    char dtype[8];
    int ndim;
    int64_t shape[8];
    uint64_t begin, end;
} in_tensor;

typedef struct {
    uint8_t *file; /* the length and the header (a buffer: all of it) */
    size_t size;   /* of the whole file */
    int fd;        /* a file: open for reading its tensors; else -1 */
    uint64_t data_off;
    in_tensor *t;
    int nt;
    char (*mk)[64], (*mv)[256];
    int nm;
} st_file;

static void st_free(st_file *f)
{
    free(f->file);
    free(f->t);
    free(f->mk);
    free(f->mv);
    if (f->fd >= 0)
        close(f->fd);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

typedef struct {
    const char *p, *end;
} cursor;

static void ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\t' || *c->p == '\r'))
        c->p++;
}

static int expect(cursor *c, char ch)
{
    ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 0;
    }
    return -1;
}

static int str(cursor *c, char *out, size_t n)
{
    if (expect(c, '"'))
        return -1;
    size_t k = 0;
    while (c->p < c->end && *c->p != '"') {
        char ch = *c->p++;
        if (ch == '\\' && c->p < c->end) {
            ch = *c->p++;
            if (ch == 'n')
                ch = '\n';
            else if (ch == 'u') { /* keep it simple: \uXXXX -> '?' */
                if (c->end - c->p < 4)
                    return -1;
                c->p += 4;
                ch = '?';
            }
        }
        if (k + 1 < n)
            out[k++] = ch;
    }
    if (c->p >= c->end)
        return -1;
    c->p++;
    out[k] = 0;
    return 0;
}

static int num(cursor *c, int64_t *v)
{
    ws(c);
    /* The header is not NUL-terminated: copy the number out before strtoll. */
    char buf[24];
    size_t k = 0;
    while (c->p + k < c->end && k < sizeof buf - 1 && (c->p[k] == '-' || (c->p[k] >= '0' && c->p[k] <= '9')))
        k++;
    memcpy(buf, c->p, k);
    buf[k] = 0;
    char *e;
    errno = 0;
    long long x = strtoll(buf, &e, 10);
    if (e == buf || *e || errno)
        return -1;
    c->p += k;
    *v = x;
    return 0;
}

/* Parses the header of the safetensors file in f->file (f->size bytes,
 * owned by f), checking that every tensor lies inside the file. path names
 * the file in messages. Frees f on failure. */
static int st_parse(st_file *f, const char *path, char *err, size_t n)
{
    uint64_t hl = 0;
    for (int i = 7; i >= 0 && f->size >= 8; i--)
        hl = hl << 8 | f->file[i];
    if (f->size < 8 || hl > (64u << 20)) {
        st_free(f);
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s is not a safetensors file (bad header length)", path);
    }
    if (hl > f->size - 8) {
        size_t size = f->size;
        st_free(f);
        return amdim_fail(err, n, AMDIM_E_TRUNCATED, "%s is a truncated file: its header is %llu bytes, the file %zu",
                          path, (unsigned long long)hl, size);
    }
    int truncated = 0;
    f->data_off = 8 + hl;
    cursor c = {(const char *)f->file + 8, (const char *)f->file + 8 + hl};
    int cap = 0, mcap = 0;
    if (expect(&c, '{'))
        goto bad;
    for (;;) {
        char key[256];
        if (str(&c, key, sizeof key) || expect(&c, ':') || expect(&c, '{'))
            goto bad;
        if (strcmp(key, "__metadata__") == 0) {
            ws(&c);
            while (c.p < c.end && *c.p != '}') {
                if (f->nm == mcap) {
                    mcap = mcap ? 2 * mcap : 64;
                    f->mk = realloc(f->mk, (size_t)mcap * sizeof *f->mk);
                    f->mv = realloc(f->mv, (size_t)mcap * sizeof *f->mv);
                    if (!f->mk || !f->mv)
                        goto bad;
                }
                if (str(&c, f->mk[f->nm], 64) || expect(&c, ':') || str(&c, f->mv[f->nm], 256))
                    goto bad;
                f->nm++;
                ws(&c);
                if (c.p < c.end && *c.p == ',')
                    c.p++;
                ws(&c);
            }
            if (expect(&c, '}'))
                goto bad;
        } else {
            if (f->nt == cap) {
                cap = cap ? 2 * cap : 256;
                f->t = realloc(f->t, (size_t)cap * sizeof *f->t);
                if (!f->t)
                    goto bad;
            }
            in_tensor *t = &f->t[f->nt];
            memset(t, 0, sizeof *t);
            snprintf(t->name, sizeof t->name, "%s", key);
            for (;;) {
                char field[32];
                if (str(&c, field, sizeof field) || expect(&c, ':'))
                    goto bad;
                if (strcmp(field, "dtype") == 0) {
                    if (str(&c, t->dtype, sizeof t->dtype))
                        goto bad;
                } else {
                    int64_t vals[8];
                    int k = 0;
                    if (expect(&c, '['))
                        goto bad;
                    ws(&c);
                    while (c.p < c.end && *c.p != ']') {
                        if (k == 8 || num(&c, &vals[k++]))
                            goto bad;
                        ws(&c);
                        if (c.p < c.end && *c.p == ',')
                            c.p++;
                        ws(&c);
                    }
                    if (expect(&c, ']'))
                        goto bad;
                    if (strcmp(field, "shape") == 0) {
                        t->ndim = k;
                        memcpy(t->shape, vals, sizeof(int64_t) * (size_t)k);
                    } else if (strcmp(field, "data_offsets") == 0 && k == 2) {
                        t->begin = (uint64_t)vals[0];
                        t->end = (uint64_t)vals[1];
                    }
                }
                ws(&c);
                if (c.p < c.end && *c.p == ',') {
                    c.p++;
                    continue;
                }
                if (expect(&c, '}'))
                    goto bad;
                break;
            }
            if (t->end < t->begin)
                goto bad;
            if (t->end > f->size - f->data_off) {
                truncated = 1; /* a header from a whole file: only the data is missing */
                goto bad;
            }
            f->nt++;
        }
        ws(&c);
        if (c.p < c.end && *c.p == ',') {
            c.p++;
            continue;
        }
        if (expect(&c, '}'))
            goto bad;
        break;
    }
    return AMDIM_OK;
bad:
    if (truncated) {
        const in_tensor *t = &f->t[f->nt];
        int st = amdim_fail(err, n, AMDIM_E_TRUNCATED,
                            "%s is a truncated file: tensor %s ends at byte %llu of the data, the file holds %llu",
                            path, t->name, (unsigned long long)t->end, (unsigned long long)(f->size - f->data_off));
        st_free(f);
        return st;
    }
    st_free(f);
    return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: malformed safetensors header", path);
}

static const char *file_kind(mode_t m)
{
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) ? "a character device" : S_ISBLK(m) ? "a block device"
         : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

static int read_at(int fd, uint8_t *p, size_t len, off_t off)
{
    while (len) {
        ssize_t r = pread(fd, p, len, off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r == 0 ? (errno = EIO, -1) : -1;
        p += r, len -= (size_t)r, off += r;
    }
    return 0;
}

/* Opens a safetensors file into f and parses its header, reading only the
 * length and the header (f->size is the file's size, which the tensor
 * table is checked against); its tensors are read with st_tensor, straight
 * into their destination, so loading takes no memory beyond the model's.
 * Only a regular file is read: it is opened without blocking, so a FIFO or
 * a device under a checkpoint's name is refused instead of waited on. */
static int st_read(st_file *f, const char *path, char *err, size_t n)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return amdim_fail(err, n, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open %s: %s", path,
                          strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return amdim_fail(err, n, AMDIM_E_IO, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return amdim_fail(err, n, AMDIM_E_INVALID, "%s is %s, not a checkpoint file", path, file_kind(sb.st_mode));
    }
    size_t size = (size_t)sb.st_size, want = size < 8 ? size : 8;
    uint8_t le[8];
    if (size >= 8) {
        if (read_at(fd, le, 8, 0) != 0) {
            int e = errno;
            close(fd);
            return amdim_fail(err, n, AMDIM_E_IO, "cannot read %s: %s", path, strerror(e));
        }
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--)
            hl = hl << 8 | le[i];
        want = hl <= (64u << 20) && hl <= size - 8 ? 8 + (size_t)hl : 8; /* st_parse names what is wrong */
    }
    f->file = malloc(want ? want : 1);
    if (!f->file) {
        close(fd);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for the %zu bytes of %s", want, path);
    }
    if (read_at(fd, f->file, want, 0) != 0) {
        int e = errno;
        close(fd);
        st_free(f);
        return amdim_fail(err, n, AMDIM_E_IO, "cannot read %s: %s", path, strerror(e));
    }
    f->fd = fd;
    f->size = size;
    return st_parse(f, path, err, n);
}

/* `len` bytes of tensor t's data into dst. */
static int st_tensor(const st_file *f, const in_tensor *t, void *dst, size_t len, const char *path, char *err,
                     size_t n)
{
    AMDIM_ASSERT(t->begin + len <= f->size - f->data_off);
    if (f->fd < 0) {
        memcpy(dst, f->file + f->data_off + t->begin, len);
        return AMDIM_OK;
    }
    if (read_at(f->fd, dst, len, (off_t)(f->data_off + t->begin)) != 0)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot read tensor %s of %s: %s", t->name, path, strerror(errno));
    return AMDIM_OK;
}

/* FNV-1a of the file's tensor data, read in chunks. */
static int st_digest(const st_file *f, uint64_t *digest, const char *path, char *err, size_t n)
{
    enum { CHUNK = 1 << 20 };
    uint8_t *buf = malloc(CHUNK);
    if (!buf)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    uint64_t h = FNV_BASIS, at = f->data_off;
    int st = AMDIM_OK;
    while (at < f->size && st == AMDIM_OK) {
        size_t len = f->size - at < CHUNK ? (size_t)(f->size - at) : CHUNK;
        if (read_at(f->fd, buf, len, (off_t)at) != 0)
            st = amdim_fail(err, n, AMDIM_E_IO, "cannot read %s: %s", path, strerror(errno));
        h = fnv1a(h, buf, len);
        at += len;
    }
    free(buf);
    *digest = h;
    return st;
}

static const char *st_meta(const st_file *f, const char *key)
{
    for (int i = 0; i < f->nm; i++)
        if (strcmp(f->mk[i], key) == 0)
            return f->mv[i];
    return NULL;
}

static const in_tensor *st_find(const st_file *f, const char *name)
{
    for (int i = 0; i < f->nt; i++)
        if (strcmp(f->t[i].name, name) == 0)
            return &f->t[i];
    return NULL;
}

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
    const char *v = st_meta(f, key);
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
    const char *v = st_meta(f, key);
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
    const char *v = st_meta(f, key), *rest;
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
    const char *v = st_meta(f, key), *p = v;
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
    const char *v = st_meta(f, key);
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
    uint64_t have = f->size - f->data_off;
    if (need > have)
        return amdim_fail(err, n, AMDIM_E_CORRUPT,
                          "%s: its metadata describes a model of %llu parameters and buffers (%llu bytes of tensors), but "
                          "the file holds %llu bytes of tensor data",
                          path, (unsigned long long)params, (unsigned long long)need, (unsigned long long)have);
    return AMDIM_OK;
}

static int parse_meta(const st_file *f, const char *path, amdim_model_config *c, amdim_checkpoint_info *in, char *err,
                      size_t n)
{
    const char *fmt = st_meta(f, "format"), *ver = st_meta(f, "format_version");
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
        if (!st_meta(f, keys[i]))
            return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: metadata lacks %s", path, keys[i]);
    memset(c, 0, sizeof *c);
    memset(in, 0, sizeof *in);
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
    const char *preset = st_meta(f, "preset");
    if (strlen(preset) >= sizeof in->preset)
        return meta_bad(path, "preset", preset, "a preset name", err, n);
    snprintf(in->preset, sizeof in->preset, "%s", preset);
    AMDIM_TRY(meta_int(f, path, "batch", 0, 1 << 20, &in->batch, err, n));
    in->probes_only = 0;
    if (st_meta(f, "phase"))
        AMDIM_TRY(meta_word(f, path, "phase", "infomax", "classifiers", &in->probes_only, err, n));
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
    const char *ms = st_meta(f, "milestones");
    for (const char *p = ms; *p;) {
        char *end;
        errno = 0;
        long v = isdigit((unsigned char)*p) ? strtol(p, &end, 10) : -1;
        if (v < 0 || errno || v > INT_MAX || c->n_milestones == 8 || (*end && (*end != ',' || !end[1])))
            return meta_bad(path, "milestones", ms, "up to 8 comma-separated epochs", err, n);
        c->milestones[c->n_milestones++] = (int)v;
        p = *end ? end + 1 : end;
    }
    /* the input normalisation, on the 0..1 pixel scale: a mean outside it
     * or a std near 0 (1e-45 turns every image into the same huge values)
     * is no normalisation of images */
    AMDIM_TRY(meta_rgb(f, path, "mean", 0.0f, 1.0f, c->mean, err, n));
    AMDIM_TRY(meta_rgb(f, path, "std", 1e-3f, 1.0f, c->std, err, n));
    c->mixtures = 1;
    c->mix_tau = 1.0f;
    c->mix_entropy = 1.0f;
    if (st_meta(f, "mixtures"))
        AMDIM_TRY(meta_int(f, path, "mixtures", 1, 16, &c->mixtures, err, n));
    if (st_meta(f, "mix_tau"))
        AMDIM_TRY(meta_float(f, path, "mix_tau", 0, FLT_MAX, &c->mix_tau, err, n));
    if (st_meta(f, "mix_entropy"))
        AMDIM_TRY(meta_float(f, path, "mix_entropy", 0, FLT_MAX, &c->mix_entropy, err, n));
    if (st_meta(f, "probe_features"))
        AMDIM_TRY(meta_word(f, path, "probe_features", "r1", "mixture-mean", &c->probe_features, err, n));
    return check_claimed_size(f, path, c, err, n);
}

/* A weights file, not its optimiser file, where one is expected. */
static int check_kind(const st_file *f, const char *path, char *err, size_t n)
{
    const char *kind = st_meta(f, "kind");
    if (kind && strcmp(kind, "weights") != 0)
        return amdim_fail(err, n, AMDIM_E_INVALID, "%s holds %s, not a model's weights (kind \"%s\"): give its ckpt-<step>.safetensors",
                          path, strcmp(kind, "optimizer") == 0 ? "Adam's moments" : "something else", kind);
    return AMDIM_OK;
}

int amdim_checkpoint_read_meta(const char *path, amdim_model_config *cfg, amdim_checkpoint_info *info, char *err, size_t n)
{
    st_file f;
    int st = st_read(&f, path, err, n);
    if (st)
        return st;
    if ((st = parse_meta(&f, path, cfg, info, err, n)) == AMDIM_OK)
        st = check_kind(&f, path, err, n);
    st_free(&f);
    return st;
}

int amdim_checkpoint_parse_buffer(const uint8_t *data, size_t size, const char *name, amdim_model_config *cfg,
                                  amdim_checkpoint_info *info, char *err, size_t n)
{
    st_file f;
    memset(&f, 0, sizeof f);
    f.fd = -1;
    if (!(f.file = malloc(size ? size : 1)))
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    memcpy(f.file, data, size);
    f.size = size;
    int st = st_parse(&f, name, err, n);
    if (st)
        return st;
    st = parse_meta(&f, name, cfg, info, err, n);
    st_free(&f);
    return st;
}

/* An optimiser file belongs to a weights file: its kind, its step and
 * the digest of the weights' tensor data it was written beside. Files
 * written before the digest existed are taken by their step alone, with
 * a notice. */
static int check_optimizer(const st_file *f, const char *opath, const char *wpath, uint64_t step, uint64_t digest,
                           char *err, size_t n)
{
    const char *kind = st_meta(f, "kind"), *ostep = st_meta(f, "step"), *dg = st_meta(f, "weights_fnv1a64");
    if (!kind || strcmp(kind, "optimizer") != 0)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s is not an optimiser file (kind \"%s\")", opath, kind ? kind : "");
    char *end;
    errno = 0;
    unsigned long long os = ostep && isdigit((unsigned char)ostep[0]) ? strtoull(ostep, &end, 10) : 0;
    if (!ostep || !isdigit((unsigned char)ostep[0]) || errno || *end || os != step)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s does not belong to %s (step %s vs %llu)", opath, wpath,
                          ostep ? ostep : "?", (unsigned long long)step);
    if (!dg) {
        fprintf(stderr, "amdim: notice: %s does not name the weights it belongs to (written before optimiser files "
                        "did); taken for %s by its step\n", opath, wpath);
        return AMDIM_OK;
    }
    char mine[24];
    snprintf(mine, sizeof mine, "%016llx", (unsigned long long)digest);
    if (strcmp(dg, mine) != 0)
        return amdim_fail(err, n, AMDIM_E_CORRUPT,
                          "%s does not belong to %s: it was written beside other weights (weights_fnv1a64 %s, these "
                          "weights %s): another run's optimiser file, or replaced weights",
                          opath, wpath, dg, mine);
    return AMDIM_OK;
}

static int same_config(const amdim_model_config *a, const amdim_model_config *b, int encoder_only, char *what, size_t n)
{
#define CMP(f)                                                                                   \
    if (a->f != b->f) {                                                                          \
        snprintf(what, n, #f " %g in the checkpoint, %g in this run", (double)a->f, (double)b->f); \
        return 0;                                                                                \
    }
    CMP(encoder_size) CMP(ndf) CMP(n_rkhs) CMP(n_depth) CMP(use_bn) CMP(mixtures)
    if (!encoder_only) {
        CMP(n_classes) CMP(mlp_hidden)
    }
#undef CMP
    return 1;
}

/* Checkpoints written before the heads' hidden BatchNorm took the authors'
 * name (rkhs_block_N.bn_hid) call it rkhs_block_N.bn1: the tensor under
 * either name, *legacy set when the old one was used. */
static const in_tensor *find_tensor(const st_file *f, const char *prefix, const char *name, int *legacy)
{
    char full[400];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    const in_tensor *t = st_find(f, full);
    const char *hid = strstr(name, ".bn_hid.");
    if (t || !hid || !strstr(name, "rkhs_block_"))
        return t;
    snprintf(full, sizeof full, "%s%.*s.bn1.%s", prefix, (int)(hid - name), name, hid + strlen(".bn_hid."));
    t = st_find(f, full);
    *legacy |= t != NULL;
    return t;
}

int amdim_checkpoint_load(amdim_model *m, const char *path, int flags, char *err, size_t n)
{
    int with_optimizer = flags & AMDIM_CKPT_OPTIMIZER, encoder_only = flags & AMDIM_CKPT_ENCODER_ONLY;
    int legacy = 0;
    st_file f;
    /* the parts not read from the file keep the model's state */
    int st = amdim_model_pull(m);
    if (st)
        return amdim_fail(err, n, st, "reading the model state: %s", amdim_model_error(m));
    if ((st = st_read(&f, path, err, n)))
        return st;
    amdim_model_config cfg;
    amdim_checkpoint_info info;
    if ((st = parse_meta(&f, path, &cfg, &info, err, n)) || (st = check_kind(&f, path, err, n))) {
        st_free(&f);
        return st;
    }
    char what[200];
    if (!same_config(&cfg, amdim_model_get_config(m), encoder_only, what, sizeof what)) {
        st_free(&f);
        return amdim_fail(err, n, AMDIM_E_INVALID, "checkpoint %s does not fit this model: %s", path, what);
    }
    int np = amdim_model_param_count(m);
    for (int i = 0; i < np && st == AMDIM_OK; i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        if (encoder_only && p.probe)
            continue;
        const in_tensor *t = find_tensor(&f, "", p.name, &legacy);
        int nbt = p.role == AMDIM_ROLE_BN_COUNT;
        size_t want = nbt ? 8 : p.size * 4;
        int shape_ok = t && t->ndim == p.ndim;
        for (int d = 0; shape_ok && d < p.ndim; d++)
            shape_ok = t->shape[d] == p.shape[d];
        if (!t || !shape_ok || t->end - t->begin != want || strcmp(t->dtype, nbt ? "I64" : "F32") != 0) {
            st = amdim_fail(err, n, AMDIM_E_CORRUPT, "checkpoint %s: tensor %s is %s", path, p.name,
                            t ? "of another shape or type" : "missing");
            break;
        }
        int64_t v;
        if ((st = st_tensor(&f, t, nbt ? (void *)&v : (void *)p.data, want, path, err, n)))
            break;
        if (nbt)
            p.data[0] = (float)v;
        char where[4300];
        snprintf(where, sizeof where, "checkpoint %s", path);
        st = check_param(where, &p, 0, err, n);
    }
    /* the optimiser file names these bytes */
    uint64_t digest = 0;
    if (st == AMDIM_OK && with_optimizer)
        st = st_digest(&f, &digest, path, err, n);
    st_free(&f);
    if (st)
        return st;
    if (!with_optimizer)
        goto push;
    char opath[4200];
    snprintf(opath, sizeof opath, "%.*s.optim.safetensors", (int)(strlen(path) - strlen(".safetensors")), path);
    if ((st = st_read(&f, opath, err, n)))
        return st == AMDIM_E_NOT_FOUND ? amdim_fail(err, n, st, "%s has no optimiser file %s (Adam's moments), needed to "
                                                                "resume it", path, opath)
                                       : st;
    if ((st = check_optimizer(&f, opath, path, info.step, digest, err, n))) {
        st_free(&f);
        return st;
    }
    int moments = 0;
    for (int i = 0; i < np && st == AMDIM_OK; i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        if (p.buffer)
            continue;
        for (int k = 0; k < 2 && st == AMDIM_OK; k++) {
            const char *prefix = k ? "exp_avg_sq." : "exp_avg.";
            const in_tensor *t = find_tensor(&f, prefix, p.name, &legacy);
            int shape_ok = t && t->ndim == p.ndim && strcmp(t->dtype, "F32") == 0 && t->end - t->begin == p.size * 4;
            for (int d = 0; shape_ok && d < p.ndim; d++)
                shape_ok = t->shape[d] == p.shape[d];
            if (!shape_ok) {
                st = amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: tensor %s%s is %s", opath, prefix, p.name,
                                t ? "not F32 of the parameter's shape" : "missing");
                break;
            }
            if ((st = st_tensor(&f, t, k ? p.adam_v : p.adam_m, p.size * 4, opath, err, n)))
                break;
            moments++;
        }
        if (st == AMDIM_OK)
            st = check_param(opath, &p, 1, err, n);
    }
    if (st == AMDIM_OK && f.nt != moments)
        st = amdim_fail(err, n, AMDIM_E_CORRUPT, "%s holds %d tensors; this model's optimiser state is %d", opath, f.nt,
                        moments);
    st_free(&f);
    if (st)
        return st;
    amdim_model_set_updates(m, info.step);
push:
    if (legacy)
        fprintf(stderr, "amdim: notice: %s names the heads' hidden BatchNorm rkhs_block_N.bn1 (written before it took "
                        "the authors' name bn_hid); loaded under the new name, the next checkpoint uses it\n", path);
    if ((st = amdim_model_push(m)))
        return amdim_fail(err, n, st, "writing the model state: %s", amdim_model_error(m));
    return AMDIM_OK;
}
