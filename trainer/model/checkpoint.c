/* Checkpoints (amdim_checkpoint.h): what one holds and how it is saved,
 * found, checked and loaded - every tensor under the authors' state_dict
 * names, Adam's moments in a second file beside them, the value and
 * compatibility checks, the files of a run directory. Their metadata is
 * checkpoint_meta.c; the container they are written in (safetensors: the
 * header, its JSON, the data) is safetensors.c. */
#include "amdim_checkpoint.h"
#include "checkpoint_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors_internal.h"

/* short names for this file */
typedef amdim_safetensors_file st_file;
typedef amdim_safetensors_tensor st_tensor;

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
uint64_t amdim_checkpoint_fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* ---- writing ---------------------------------------------------------------- */

void amdim_checkpoint_paths(const char *dir, uint64_t step, char *w, char *o, size_t n)
{
    snprintf(w, n, "%s/ckpt-%08llu.safetensors", dir, (unsigned long long)step);
    snprintf(o, n, "%s/ckpt-%08llu.optim.safetensors", dir, (unsigned long long)step);
}

/* A tensor of p's shape. */
static amdim_safetensors_out out_tensor(const char *name, const char *dtype, const amdim_param *p, const void *data,
                                        size_t bytes)
{
    amdim_safetensors_out t = {name, dtype, p->ndim, {0}, data, bytes};
    for (int d = 0; d < p->ndim; d++)
        t.shape[d] = p->shape[d];
    return t;
}

/* The weights file's tensors into t (np + 1): weights and buffers in
 * state_dict order, with the authors' constant 5x5 location masks
 * (g2l_loss, registered between encoder and evaluator) before the first
 * probe tensor; num_batches_tracked, a float count in the model, as an
 * int64 in counts[i]. Returns how many. */
static int weight_tensors(const amdim_model *m, amdim_safetensors_out *t, int64_t *counts, const uint8_t *masks)
{
    int nt = 0, masks_written = 0;
    for (int i = 0; i < amdim_model_param_count(m); i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        if (p.probe && !masks_written++)
            t[nt++] = (amdim_safetensors_out){"g2l_loss.masks_r5", "U8", 4, {25, 1, 5, 5}, masks, 25 * 25};
        if (p.role == AMDIM_ROLE_BN_COUNT) {
            counts[i] = (int64_t)p.data[0];
            t[nt++] = out_tensor(p.name, "I64", &p, &counts[i], 8);
        } else {
            t[nt++] = out_tensor(p.name, "F32", &p, p.data, p.size * sizeof(float));
        }
    }
    return nt;
}

/* The optimiser file's tensors into o (2 np), named in names: exp_avg.<name>
 * and exp_avg_sq.<name> of every parameter, the buffers excepted. Returns
 * how many. */
static int moment_tensors(const amdim_model *m, amdim_safetensors_out *o, char (*names)[200])
{
    int no = 0;
    for (int i = 0; i < amdim_model_param_count(m); i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        if (p.buffer)
            continue;
        snprintf(names[no], sizeof names[0], "exp_avg.%s", p.name);
        o[no] = out_tensor(names[no], "F32", &p, p.adam_m, p.size * sizeof(float));
        no++;
        snprintf(names[no], sizeof names[0], "exp_avg_sq.%s", p.name);
        o[no] = out_tensor(names[no], "F32", &p, p.adam_v, p.size * sizeof(float));
        no++;
    }
    return no;
}

/* Never write a diverged model: every checkpoint must load. */
static int check_model(const amdim_model *m, const char *dir, uint64_t step, char *err, size_t n)
{
    char where[4300];
    snprintf(where, sizeof where, "the model at step %llu (not saved to %s)", (unsigned long long)step, dir);
    int st = AMDIM_OK;
    for (int i = 0; i < amdim_model_param_count(m) && st == AMDIM_OK; i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        st = check_param(where, &p, 1, err, n);
    }
    return st;
}

/* Both files, the optimiser file first (a weights file marks a complete
 * checkpoint), then the directory entries. */
int amdim_checkpoint_write_pair(const char *dir, uint64_t step, const amdim_checkpoint_meta *meta,
                                const amdim_safetensors_out *t, int nt, const amdim_checkpoint_meta *ometa,
                                const amdim_safetensors_out *o, int no, char *err, size_t n)
{
    char wpath[4200], opath[4200];
    amdim_checkpoint_paths(dir, step, wpath, opath, sizeof wpath);
    AMDIM_TRY(amdim_safetensors_write(opath, ometa->kv, ometa->n, o, no, err, n));
    int st = amdim_safetensors_write(wpath, meta->kv, meta->n, t, nt, err, n);
    if (st) {
        unlink(opath);
        return st;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return AMDIM_OK;
}

int amdim_checkpoint_save(amdim_model *m, const char *dir, const amdim_checkpoint_info *info, char *err, size_t n)
{
    int st = amdim_model_pull(m);
    if (st)
        return amdim_fail(err, n, st, "reading the model state: %s", amdim_model_error(m));
    AMDIM_TRY(check_model(m, dir, info->step, err, n));
    int np = amdim_model_param_count(m);
    amdim_safetensors_out *t = calloc((size_t)np + 1, sizeof *t), *o = calloc((size_t)2 * np, sizeof *o);
    char (*names)[200] = calloc((size_t)2 * np, sizeof *names);
    int64_t *counts = calloc((size_t)np, sizeof *counts);
    amdim_checkpoint_meta *meta = calloc(2, sizeof *meta);
    if (!t || !o || !names || !counts || !meta) {
        st = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
        goto done;
    }
    uint8_t masks[25 * 25] = {0};
    for (int i = 0; i < 25; i++)
        masks[i * 25 + i] = 1;
    int nt = weight_tensors(m, t, counts, masks), no = moment_tensors(m, o, names);
    /* the optimiser file names the weights' tensor data it belongs to */
    uint64_t digest = AMDIM_CKPT_FNV_BASIS;
    for (int i = 0; i < nt; i++)
        digest = amdim_checkpoint_fnv1a(digest, t[i].data, t[i].bytes);
    amdim_checkpoint_meta_build(&meta[0], amdim_model_get_config(m), info, "weights", NULL);
    amdim_checkpoint_meta_build(&meta[1], amdim_model_get_config(m), info, "optimizer", &digest);
    st = amdim_checkpoint_write_pair(dir, info->step, &meta[0], t, nt, &meta[1], o, no, err, n);
done:
    free(meta);
    free(counts);
    free(names);
    free(o);
    free(t);
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
        amdim_checkpoint_paths(dir, s, w, o, sizeof w);
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
        amdim_checkpoint_paths(dir, steps[i], w, o, sizeof w);
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
    amdim_checkpoint_paths(dir, steps[k - 1], path, o, n);
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
    amdim_checkpoint_paths(dir, steps[k - 1], path, o, n);
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
        /* ckpt-<step>[.optim].safetensors.tmp.<pid>, as amdim_safetensors_write names them */
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
/* A weights file, not its optimiser file, where one is expected. */
static int check_kind(const st_file *f, const char *path, char *err, size_t n)
{
    const char *kind = amdim_safetensors_meta(f, "kind");
    if (kind && strcmp(kind, "weights") != 0)
        return amdim_fail(err, n, AMDIM_E_INVALID, "%s holds %s, not a model's weights (kind \"%s\"): give its ckpt-<step>.safetensors",
                          path, strcmp(kind, "optimizer") == 0 ? "Adam's moments" : "something else", kind);
    return AMDIM_OK;
}

int amdim_checkpoint_read_meta(const char *path, amdim_model_config *cfg, amdim_checkpoint_info *info, char *err, size_t n)
{
    st_file f;
    int st = amdim_safetensors_open(&f, path, err, n);
    if (st)
        return st;
    if ((st = amdim_checkpoint_meta_parse(&f, path, cfg, info, err, n)) == AMDIM_OK)
        st = check_kind(&f, path, err, n);
    amdim_safetensors_close(&f);
    return st;
}

int amdim_checkpoint_parse_buffer(const uint8_t *data, size_t size, const char *name, amdim_model_config *cfg,
                                  amdim_checkpoint_info *info, char *err, size_t n)
{
    st_file f;
    int st = amdim_safetensors_open_buffer(&f, data, size, name, err, n);
    if (st)
        return st;
    st = amdim_checkpoint_meta_parse(&f, name, cfg, info, err, n);
    amdim_safetensors_close(&f);
    return st;
}

/* An optimiser file belongs to a weights file: its kind, its step and
 * the digest of the weights' tensor data it was written beside. Files
 * written before the digest existed are taken by their step alone, with
 * a notice. */
static int check_optimizer(const st_file *f, const char *opath, const char *wpath, uint64_t step, uint64_t digest,
                           char *err, size_t n)
{
    const char *kind = amdim_safetensors_meta(f, "kind"), *ostep = amdim_safetensors_meta(f, "step");
    const char *dg = amdim_safetensors_meta(f, "weights_fnv1a64");
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
static const st_tensor *find_tensor(const st_file *f, const char *prefix, const char *name, int *legacy)
{
    char full[400];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    const st_tensor *t = amdim_safetensors_find(f, full);
    const char *hid = strstr(name, ".bn_hid.");
    if (t || !hid || !strstr(name, "rkhs_block_"))
        return t;
    snprintf(full, sizeof full, "%s%.*s.bn1.%s", prefix, (int)(hid - name), name, hid + strlen(".bn_hid."));
    t = amdim_safetensors_find(f, full);
    *legacy |= t != NULL;
    return t;
}

/* Every weight and buffer of m from the weights file f (the probes'
 * excepted with encoder_only), each of its parameter's shape and type and
 * holding values that load. */
static int load_weights(amdim_model *m, const st_file *f, const char *path, int encoder_only, int *legacy, char *err,
                        size_t n)
{
    char where[4300];
    snprintf(where, sizeof where, "checkpoint %s", path);
    for (int i = 0; i < amdim_model_param_count(m); i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        if (encoder_only && p.probe)
            continue;
        const st_tensor *t = find_tensor(f, "", p.name, legacy);
        int nbt = p.role == AMDIM_ROLE_BN_COUNT;
        size_t want = nbt ? 8 : p.size * 4;
        int shape_ok = t && t->ndim == p.ndim;
        for (int d = 0; shape_ok && d < p.ndim; d++)
            shape_ok = t->shape[d] == p.shape[d];
        if (!t || !shape_ok || t->end - t->begin != want || strcmp(t->dtype, nbt ? "I64" : "F32") != 0)
            return amdim_fail(err, n, AMDIM_E_CORRUPT, "checkpoint %s: tensor %s is %s", path, p.name,
                              t ? "of another shape or type" : "missing");
        int64_t v;
        AMDIM_TRY(amdim_safetensors_read_tensor(f, t, nbt ? (void *)&v : (void *)p.data, want, path, err, n));
        if (nbt)
            p.data[0] = (float)v;
        AMDIM_TRY(check_param(where, &p, 0, err, n));
    }
    return AMDIM_OK;
}

/* FNV-1a of the file's tensor data, read in chunks: what the optimiser
 * file's weights_fnv1a64 names. */
static int weights_digest(const st_file *f, const char *path, uint64_t *digest, char *err, size_t n)
{
    enum { CHUNK = 1 << 20 };
    uint8_t *buf = malloc(CHUNK);
    if (!buf)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    uint64_t h = AMDIM_CKPT_FNV_BASIS, size = amdim_safetensors_data_size(f);
    int st = AMDIM_OK;
    for (uint64_t at = 0; at < size && st == AMDIM_OK; at += CHUNK) {
        size_t len = size - at < CHUNK ? (size_t)(size - at) : CHUNK;
        if ((st = amdim_safetensors_read_data(f, at, buf, len, path, err, n)) == AMDIM_OK)
            h = amdim_checkpoint_fnv1a(h, buf, len);
    }
    free(buf);
    *digest = h;
    return st;
}

/* Adam's moments of every parameter of m from the optimiser file beside
 * the weights file wpath: written with those weights (digest, step), and
 * holding exactly this model's moment tensors. */
static int load_moments(amdim_model *m, const char *wpath, uint64_t step, uint64_t digest, int *legacy, char *err,
                        size_t n)
{
    char opath[4200];
    snprintf(opath, sizeof opath, "%.*s.optim.safetensors", (int)(strlen(wpath) - strlen(".safetensors")), wpath);
    st_file f;
    int st = amdim_safetensors_open(&f, opath, err, n);
    if (st)
        return st == AMDIM_E_NOT_FOUND ? amdim_fail(err, n, st, "%s has no optimiser file %s (Adam's moments), needed to "
                                                                "resume it", wpath, opath)
                                       : st;
    st = check_optimizer(&f, opath, wpath, step, digest, err, n);
    int moments = 0;
    for (int i = 0; i < amdim_model_param_count(m) && st == AMDIM_OK; i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        if (p.buffer)
            continue;
        for (int k = 0; k < 2 && st == AMDIM_OK; k++) {
            const char *prefix = k ? "exp_avg_sq." : "exp_avg.";
            const st_tensor *t = find_tensor(&f, prefix, p.name, legacy);
            int shape_ok = t && t->ndim == p.ndim && strcmp(t->dtype, "F32") == 0 && t->end - t->begin == p.size * 4;
            for (int d = 0; shape_ok && d < p.ndim; d++)
                shape_ok = t->shape[d] == p.shape[d];
            if (!shape_ok)
                st = amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: tensor %s%s is %s", opath, prefix, p.name,
                                t ? "not F32 of the parameter's shape" : "missing");
            else if ((st = amdim_safetensors_read_tensor(&f, t, k ? p.adam_v : p.adam_m, p.size * 4, opath, err, n)) ==
                     AMDIM_OK)
                moments++;
        }
        if (st == AMDIM_OK)
            st = check_param(opath, &p, 1, err, n);
    }
    if (st == AMDIM_OK && f.nt != moments)
        st = amdim_fail(err, n, AMDIM_E_CORRUPT, "%s holds %d tensors; this model's optimiser state is %d", opath, f.nt,
                        moments);
    amdim_safetensors_close(&f);
    return st;
}

int amdim_checkpoint_load(amdim_model *m, const char *path, int flags, char *err, size_t n)
{
    int with_optimizer = flags & AMDIM_CKPT_OPTIMIZER, encoder_only = flags & AMDIM_CKPT_ENCODER_ONLY;
    int legacy = 0;
    /* the parts not read from the file keep the model's state */
    int st = amdim_model_pull(m);
    if (st)
        return amdim_fail(err, n, st, "reading the model state: %s", amdim_model_error(m));
    st_file f;
    AMDIM_TRY(amdim_safetensors_open(&f, path, err, n));
    amdim_model_config cfg;
    amdim_checkpoint_info info;
    char what[200];
    if ((st = amdim_checkpoint_meta_parse(&f, path, &cfg, &info, err, n)) == AMDIM_OK &&
        (st = check_kind(&f, path, err, n)) == AMDIM_OK &&
        !same_config(&cfg, amdim_model_get_config(m), encoder_only, what, sizeof what))
        st = amdim_fail(err, n, AMDIM_E_INVALID, "checkpoint %s does not fit this model: %s", path, what);
    if (st == AMDIM_OK)
        st = load_weights(m, &f, path, encoder_only, &legacy, err, n);
    /* the optimiser file names these bytes */
    uint64_t digest = 0;
    if (st == AMDIM_OK && with_optimizer)
        st = weights_digest(&f, path, &digest, err, n);
    amdim_safetensors_close(&f);
    if (st)
        return st;
    if (with_optimizer) {
        AMDIM_TRY(load_moments(m, path, info.step, digest, &legacy, err, n));
        amdim_model_set_updates(m, info.step);
    }
    if (legacy)
        fprintf(stderr, "amdim: notice: %s names the heads' hidden BatchNorm rkhs_block_N.bn1 (written before it took "
                        "the authors' name bn_hid); loaded under the new name, the next checkpoint uses it\n", path);
    if ((st = amdim_model_push(m)))
        return amdim_fail(err, n, st, "writing the model state: %s", amdim_model_error(m));
    return AMDIM_OK;
}
