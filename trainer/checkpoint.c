/* safetensors checkpoints (see amdim_checkpoint.h). The format: an 8-byte
 * little-endian header length, a JSON header (tensor name -> dtype, shape,
 * data_offsets; plus "__metadata__", a string map), then the raw data. */
#include "amdim_checkpoint.h"
#include "checkpoint_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

static void meta_config(sbuf *b, const amdim_model_config *c, const amdim_checkpoint_info *in, const char *kind)
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
    sb_add(b, "\",\"mean\":\"%.9g,%.9g,%.9g\",\"std\":\"%.9g,%.9g,%.9g\"}", c->mean[0], c->mean[1], c->mean[2],
           c->std[0], c->std[1], c->std[2]);
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
    sbuf meta = {0};
    meta_config(&meta, amdim_model_get_config(m), info, "weights");
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
    meta_config(&ometa, amdim_model_get_config(m), info, "optimizer");
    st = meta.oom || ometa.oom ? amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory") : AMDIM_OK;
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

static int list_steps(const char *dir, uint64_t **steps)
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
        if (access(o, R_OK) != 0)
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
    int n = list_steps(dir, &steps);
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
    int k = list_steps(dir, &steps);
    if (k == 0) {
        free(steps);
        return AMDIM_E_NOT_FOUND;
    }
    char o[4200];
    ckpt_paths(dir, steps[k - 1], path, o, n);
    free(steps);
    return AMDIM_OK;
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
    uint8_t *file; /* whole file */
    size_t size;
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
    memset(f, 0, sizeof *f);
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

static int st_read(st_file *f, const char *path, char *err, size_t n)
{
    memset(f, 0, sizeof *f);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return amdim_fail(err, n, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open %s: %s", path,
                          strerror(errno));
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    f->file = sz > 0 ? malloc((size_t)sz) : NULL;
    if (!f->file || fread(f->file, 1, (size_t)sz, fp) != (size_t)sz) {
        fclose(fp);
        st_free(f);
        return amdim_fail(err, n, AMDIM_E_IO, "cannot read %s", path);
    }
    fclose(fp);
    f->size = (size_t)sz;
    return st_parse(f, path, err, n);
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

static int parse_meta(const st_file *f, const char *path, amdim_model_config *c, amdim_checkpoint_info *in, char *err,
                      size_t n)
{
    const char *fmt = st_meta(f, "format"), *ver = st_meta(f, "format_version");
    if (!fmt || strcmp(fmt, AMDIM_CHECKPOINT_FORMAT) != 0)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s is not an amdim checkpoint (no format metadata)", path);
    if (!ver || atoi(ver) != AMDIM_CHECKPOINT_VERSION)
        return amdim_fail(err, n, AMDIM_E_VERSION, "%s has checkpoint format version %s; this build reads version %d",
                          path, ver ? ver : "?", AMDIM_CHECKPOINT_VERSION);
    const char *keys[] = {"step", "next_epoch", "next_batch", "seed", "epochs", "max_steps", "preset", "batch",
                          "encoder_size", "ndf", "n_rkhs", "n_depth", "use_bn", "n_classes", "mlp_hidden", "tclip",
                          "objective", "lr", "beta1", "beta2", "eps", "weight_decay", "warmup", "lr_decay",
                          "model_seed", "milestones", "mean", "std"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        if (!st_meta(f, keys[i]))
            return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: metadata lacks %s", path, keys[i]);
#define U64(k) strtoull(st_meta(f, k), NULL, 10)
#define I(k) atoi(st_meta(f, k))
#define F(k) strtof(st_meta(f, k), NULL)
    in->step = U64("step");
    in->next_epoch = U64("next_epoch");
    in->next_batch = U64("next_batch");
    in->seed = U64("seed");
    in->epochs = strtoll(st_meta(f, "epochs"), NULL, 10);
    in->max_steps = strtoll(st_meta(f, "max_steps"), NULL, 10);
    snprintf(in->preset, sizeof in->preset, "%s", st_meta(f, "preset"));
    in->batch = I("batch");
    in->probes_only = st_meta(f, "phase") && strcmp(st_meta(f, "phase"), "classifiers") == 0;
    memset(c, 0, sizeof *c);
    c->encoder_size = I("encoder_size");
    c->ndf = I("ndf");
    c->n_rkhs = I("n_rkhs");
    c->n_depth = I("n_depth");
    c->use_bn = I("use_bn");
    c->n_classes = I("n_classes");
    c->mlp_hidden = I("mlp_hidden");
    c->tclip = F("tclip");
    c->objective = I("objective");
    c->lr = F("lr");
    c->beta1 = F("beta1");
    c->beta2 = F("beta2");
    c->eps = F("eps");
    c->weight_decay = F("weight_decay");
    c->warmup = I("warmup");
    c->lr_decay = F("lr_decay");
    c->seed = U64("model_seed");
    const char *ms = st_meta(f, "milestones");
    while (*ms && c->n_milestones < 8) {
        c->milestones[c->n_milestones++] = atoi(ms);
        ms = strchr(ms, ',');
        if (!ms)
            break;
        ms++;
    }
    sscanf(st_meta(f, "mean"), "%f,%f,%f", &c->mean[0], &c->mean[1], &c->mean[2]);
    sscanf(st_meta(f, "std"), "%f,%f,%f", &c->std[0], &c->std[1], &c->std[2]);
    c->mixtures = st_meta(f, "mixtures") ? I("mixtures") : 1;
    c->mix_tau = st_meta(f, "mix_tau") ? F("mix_tau") : 1.0f;
    c->mix_entropy = st_meta(f, "mix_entropy") ? F("mix_entropy") : 1.0f;
    c->probe_features = st_meta(f, "probe_features") && strcmp(st_meta(f, "probe_features"), "mixture-mean") == 0;
#undef U64
#undef I
#undef F
    return AMDIM_OK;
}

int amdim_checkpoint_read_meta(const char *path, amdim_model_config *cfg, amdim_checkpoint_info *info, char *err, size_t n)
{
    st_file f;
    int st = st_read(&f, path, err, n);
    if (st)
        return st;
    st = parse_meta(&f, path, cfg, info, err, n);
    st_free(&f);
    return st;
}

int amdim_checkpoint_parse_buffer(const uint8_t *data, size_t size, const char *name, amdim_model_config *cfg,
                                  amdim_checkpoint_info *info, char *err, size_t n)
{
    st_file f;
    memset(&f, 0, sizeof f);
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
    if ((st = parse_meta(&f, path, &cfg, &info, err, n))) {
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
        const uint8_t *src = f.file + f.data_off + t->begin;
        if (nbt) {
            int64_t v;
            memcpy(&v, src, 8);
            p.data[0] = (float)v;
        } else {
            memcpy(p.data, src, want);
        }
    }
    st_free(&f);
    if (st)
        return st;
    if (!with_optimizer)
        goto push;
    char opath[4200];
    snprintf(opath, sizeof opath, "%.*s.optim.safetensors", (int)(strlen(path) - strlen(".safetensors")), path);
    if ((st = st_read(&f, opath, err, n)))
        return st;
    const char *ostep = st_meta(&f, "step");
    if (!ostep || strtoull(ostep, NULL, 10) != info.step) {
        st_free(&f);
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s does not belong to %s (step %s vs %llu)", opath, path,
                          ostep ? ostep : "?", (unsigned long long)info.step);
    }
    for (int i = 0; i < np && st == AMDIM_OK; i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        if (p.buffer)
            continue;
        for (int k = 0; k < 2 && st == AMDIM_OK; k++) {
            const char *prefix = k ? "exp_avg_sq." : "exp_avg.";
            const in_tensor *t = find_tensor(&f, prefix, p.name, &legacy);
            if (!t || t->end - t->begin != p.size * 4) {
                st = amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: tensor %s%s is missing or of another size", opath, prefix,
                                p.name);
                break;
            }
            memcpy(k ? p.adam_v : p.adam_m, f.file + f.data_off + t->begin, p.size * 4);
        }
    }
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
