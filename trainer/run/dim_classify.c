/* The classifier evaluation of a Deep InfoMax encoder (amdim_run.h:
 * amdim_dim_classifier_run; docs/dim.md §9.1, D13, D17): the encoder of
 * --init frozen in evaluation mode, the MLP and linear heads trained with
 * Adam on one tap of amdim-load's labelled batches, the test accuracy of
 * both on --eval. */
#include "amdim_run.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cblas.h>

#include "amdim_augment.h"
#include "amdim_dataset.h"
#include "amdim_dim.h"
#include "amdim_loader.h"
#include "dim_run_internal.h"
#include "elementwise_internal.h"
#include "output_internal.h"
#include "run_plan_internal.h"
#include "safetensors_internal.h"

#define DIM_HEAD_HIDDEN 200   /* §9.1 */
#define DIM_HEAD_DROPOUT 0.1f /* §9.1 */

static const char *const tap_name[] = {"conv", "fc", "z"};

int amdim_dim_tap_parse(const char *s)
{
    for (int i = 0; i < 3; i++)
        if (s && strcmp(s, tap_name[i]) == 0)
            return i;
    return -1;
}

typedef struct {
    double mlp, linear;
    uint64_t mlp_hits, linear_hits, labelled, steps;
} cls_interval;

typedef struct {
    const amdim_train_options *o;
    int tap;
    char init[4200];
    amdim_run_plan plan;
    amdim_dim_state st;
    amdim_loader *l;
    const amdim_loader_info *li;
    amdim_dim *d;
    amdim_dim_heads *h;
    float *w, *m, *v;                /* the encoder's weights (m, v: the checkpoint's moments, unused) */
    float *hw, *hg, *hm, *hv, *mask; /* the heads' */
    float *x, *feat;
    int32_t *labels, *pred; /* pred: (2, batch), the two heads' predictions */
    float scale[3], shift[3];
    amdim_output metrics, *mout;
    cls_interval iv;
    uint64_t step, epoch, labelled; /* labelled: rows seen with a label, over the run */
    uint64_t updates;               /* Adam's: the steps that had labelled rows */
    uint64_t tested;                /* the step of the last --eval (UINT64_MAX: none) */
    char why[2048];
} cls_run;

/* ---- before the loader ---------------------------------------------------------- */

/* --init: a DIM run directory (its newest checkpoint) or a DIM weights file. */
static int resolve_init(cls_run *r, char *err, size_t n)
{
    const char *p = r->o->init_path;
    struct stat sb;
    if (stat(p, &sb) != 0)
        return amdim_fail(err, n, AMDIM_E_IO, "--init %s: %s", p, strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        if (amdim_checkpoint_latest(p, r->init, sizeof r->init) != AMDIM_OK)
            return amdim_fail(err, n, AMDIM_E_INVALID, "--init %s holds no checkpoint (ckpt-*.safetensors)", p);
    } else
        snprintf(r->init, sizeof r->init, "%s", p);
    if (!amdim_dim_checkpoint_is(r->init))
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "--init %s is not a Deep InfoMax run (a --model dim run directory or its checkpoint); an "
                          "AMDIM encoder is probed without --model dim",
                          r->init);
    return amdim_dim_checkpoint_read_meta(r->init, &r->st, err, n);
}

static int plan_begin(cls_run *r, amdim_loader_request *req, char *err, size_t n)
{
    amdim_run_plan *p = &r->plan;
    memset(p, 0, sizeof *p);
    memset(req, 0, sizeof *req);
    p->lock_fd = -1;
    p->dir = r->o->out_dir;
    p->probes = 1;
    int st = amdim_run_plan_dir(r->o, p, err, n);
    if (st == AMDIM_OK)
        st = amdim_run_plan_request(r->o, p, req, err, n);
    if (st)
        amdim_run_plan_end(p);
    return st;
}

/* ---- once the loader said what it delivers -------------------------------------- */

static int check_loader(const cls_run *r, char *err, size_t n)
{
    const amdim_loader_info *li = r->li;
    if (li->shard_size != 1)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "amdim-load makes shard %u/%u; the DIM classifiers run in one "
                          "process (no --shard)",
                          li->shard_rank, li->shard_size);
    if (r->o->batch && (uint32_t)r->o->batch != li->batch)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "amdim-train --batch %d, but amdim-load delivers batches of %u: give both the same --batch",
                          r->o->batch, li->batch);
    if (li->classes < 2)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "amdim-load's data has %d classes: the classifiers need labelled data (at least 2 classes)",
                          li->classes);
    if (strncmp(li->preset, "dim", 3) != 0 || (int)li->size != r->st.cfg.size)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "the encoder in %s takes %d px views of a dim preset, but amdim-load delivers %s %u px",
                          r->init, r->st.cfg.size, li->preset, li->size);
    if (li->batch < 2)
        return amdim_fail(err, n, AMDIM_E_INVALID, "batches of %u: the heads' BatchNorm needs at least 2", li->batch);
    return AMDIM_OK;
}

static float *fcalloc(size_t count, int *failed)
{
    float *p = calloc(count ? count : 1, sizeof *p);
    *failed |= !p;
    return p;
}

/* The frozen encoder from --init and fresh heads on its tap. */
static int create_models(cls_run *r, char *err, size_t n)
{
    const amdim_loader_info *li = r->li;
    int B = (int)li->batch, S = r->st.cfg.size, C = r->st.cfg.in_ch, f = 0;
    int st = amdim_dim_create(&r->st.cfg, B, &r->d, r->why, sizeof r->why);
    if (st)
        return amdim_fail(err, n, st, "%s", r->why);
    size_t nf = amdim_dim_block_floats(r->d);
    r->w = fcalloc(nf, &f), r->m = fcalloc(nf, &f), r->v = fcalloc(nf, &f);
    r->x = fcalloc((size_t)B * C * S * S, &f);
    r->labels = calloc((size_t)B, sizeof *r->labels);
    r->pred = calloc(2 * (size_t)B, sizeof *r->pred);
    if (f || !r->labels || !r->pred)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for a DIM encoder of %zu floats", nf);
    AMDIM_TRY(amdim_dim_checkpoint_load(r->d, r->init, r->w, r->m, r->v, err, n));
    amdim_dim_heads_config hc = {amdim_dim_tap_units(r->d, r->tap), DIM_HEAD_HIDDEN, (int)li->classes, DIM_HEAD_DROPOUT,
                                 li->seed};
    if ((st = amdim_dim_heads_create(&hc, B, &r->h, r->why, sizeof r->why)))
        return amdim_fail(err, n, st, "%s", r->why);
    size_t hf = amdim_dim_heads_floats(r->h);
    r->hw = fcalloc(hf, &f), r->hg = fcalloc(hf, &f), r->hm = fcalloc(hf, &f), r->hv = fcalloc(hf, &f);
    r->mask = fcalloc((size_t)B * DIM_HEAD_HIDDEN, &f), r->feat = fcalloc((size_t)B * hc.in, &f);
    if (f)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for the heads");
    amdim_dim_heads_init(r->h, r->hw);
    return AMDIM_OK;
}

static int configure(cls_run *r, char *err, size_t n)
{
    AMDIM_TRY(check_loader(r, err, n));
    amdim_augment_config ac;
    if (amdim_augment_preset(r->li->preset, &ac))
        return amdim_fail(err, n, AMDIM_E_INVALID, "unknown preset %s", r->li->preset);
    for (int c = 0; c < 3; c++) {
        r->scale[c] = 1.0f / (255.0f * ac.std[c]);
        r->shift[c] = ac.mean[c] / ac.std[c];
    }
    r->st.adam.lr = r->o->model.lr > 0 ? r->o->model.lr : 1e-4f; /* the DIM run's betas and eps stay */
    int threads = r->o->threads > 0 ? r->o->threads : amdim_cpu_count() - (int)r->li->workers;
    openblas_set_num_threads(threads < 1 ? 1 : threads);
    AMDIM_TRY(create_models(r, err, n));
    char mpath[4300];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", r->plan.dir);
    struct stat sb;
    if (stat(mpath, &sb) == 0 && S_ISREG(sb.st_mode) && truncate(mpath, 0) != 0)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot truncate %s: %s", mpath, strerror(errno));
    AMDIM_TRY(amdim_output_open(&r->metrics, mpath, AMDIM_OUTPUT_APPEND, err, n));
    r->mout = &r->metrics;
    return AMDIM_OK;
}

/* ---- features ------------------------------------------------------------------------ */

/* count uint8 (S, S, 3) views into r->x (count, in_ch, S, S), normalised as the DIM run does, then the tap. */
static int features(cls_run *r, const uint8_t *nhwc, int count, char *err, size_t n)
{
    int S = r->st.cfg.size, C = r->st.cfg.in_ch;
    size_t plane = (size_t)S * S;
    for (int b = 0; b < count; b++)
        for (int c = 0; c < C; c++) {
            const uint8_t *src = nhwc + (size_t)b * plane * 3 + c;
            float *dst = r->x + ((size_t)b * C + c) * plane;
            for (size_t i = 0; i < plane; i++)
                dst[i] = amdim_normalise_pixel(src[3 * i], r->scale[c], r->shift[c]);
        }
    int st = amdim_dim_features(r->d, r->w, r->x, count, r->tap, r->feat);
    return st ? amdim_fail(err, n, st, "%s", amdim_dim_error(r->d)) : AMDIM_OK;
}

/* ---- the test set --------------------------------------------------------------------- */

typedef struct {
    uint64_t records, hits_mlp, hits_linear;
} cls_test;

static int test_batch(cls_run *r, const uint8_t *views, int count, cls_test *t, char *err, size_t n)
{
    int32_t *pm = r->pred, *pl = r->pred + r->li->batch;
    AMDIM_TRY(features(r, views, count, err, n));
    amdim_dim_heads_predict(r->h, r->hw, r->feat, count, pm, pl);
    for (int i = 0; i < count; i++) {
        if (r->labels[i] < 0)
            continue;
        t->records++;
        t->hits_mlp += pm[i] == r->labels[i];
        t->hits_linear += pl[i] == r->labels[i];
    }
    return AMDIM_OK;
}

/* Every record of --eval's split through the preset's test transform. */
static int walk_test(cls_run *r, amdim_dataset *ds, amdim_augmenter *aug, uint8_t *views, cls_test *t, char *err,
                     size_t n)
{
    const char *split = r->o->eval_split ? r->o->eval_split : "test";
    amdim_split_info info;
    if (amdim_dataset_split_info(ds, split, &info))
        return amdim_fail(err, n, AMDIM_E_INVALID, "--eval: %s", amdim_dataset_error(ds));
    if (info.classes == 0)
        return amdim_fail(err, n, AMDIM_E_INVALID, "--eval split %s of %s is unlabelled", split, r->o->eval_path);
    int B = (int)r->li->batch, nb = 0, S = r->st.cfg.size;
    for (uint64_t k = 0; k < info.records; k++) {
        amdim_record rec;
        int st = amdim_dataset_get(ds, split, k, &rec);
        if (st)
            return amdim_fail(err, n, st, "%s", amdim_dataset_error(ds));
        if ((st = amdim_augment_test_view(aug, &rec, views + (size_t)nb * S * S * 3)))
            return amdim_fail(err, n, st, "%s split %s record %llu: %s", r->o->eval_path, split, (unsigned long long)k,
                              amdim_augment_error(aug));
        r->labels[nb] = rec.label < (int32_t)r->li->classes ? rec.label : -1;
        if (++nb == B || k + 1 == info.records) {
            AMDIM_TRY(test_batch(r, views, nb, t, err, n));
            nb = 0;
        }
    }
    return AMDIM_OK;
}

static int evaluate(cls_run *r, char *err, size_t n)
{
    amdim_dataset *ds;
    amdim_augmenter *aug = NULL;
    amdim_augment_config ac;
    cls_test t = {0};
    int st = amdim_dataset_open(&ds, r->o->eval_path, r->why, sizeof r->why);
    if (st)
        return amdim_fail(err, n, st, "--eval: %s", r->why);
    amdim_augment_preset(r->li->preset, &ac);
    uint8_t *views = malloc((size_t)r->li->batch * ac.size * ac.size * 3);
    if (!views || amdim_augment_create(&aug, &ac))
        st = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for test batches");
    else
        st = walk_test(r, ds, aug, views, &t, err, n);
    free(views);
    amdim_augment_destroy(aug);
    amdim_dataset_close(ds);
    if (st)
        return st;
    double am = t.records ? (double)t.hits_mlp / t.records : 0, al = t.records ? (double)t.hits_linear / t.records : 0;
    fprintf(stderr,
            "amdim-train: step %llu epoch %llu: test accuracy on %s (%llu records), features %s: mlp %.4f, "
            "linear %.4f\n",
            (unsigned long long)r->step, (unsigned long long)r->epoch, r->o->eval_path, (unsigned long long)t.records,
            tap_name[r->tap], am, al);
    char line[512];
    int len = snprintf(line, sizeof line,
                       "{\"kind\":\"eval\",\"model\":\"dim\",\"step\":%llu,\"epoch\":%llu,\"features\":\"%s\","
                       "\"test_acc_lin\":%.6f,\"test_acc_mlp\":%.6f,\"records\":%llu}\n",
                       (unsigned long long)r->step, (unsigned long long)r->epoch, tap_name[r->tap], al, am,
                       (unsigned long long)t.records);
    r->tested = r->step;
    return amdim_output_write(r->mout, line, (size_t)len, err, n);
}

/* ---- the loop ----------------------------------------------------------------------- */

static int log_interval(cls_run *r, char *err, size_t n)
{
    cls_interval *iv = &r->iv;
    double k = iv->steps ? 1.0 / iv->steps : 0, lab = iv->labelled ? 1.0 / iv->labelled : 0;
    fprintf(stderr,
            "amdim-train: step %llu epoch %llu: classifier loss mlp %.4f linear %.4f, train accuracy mlp %.4f linear "
            "%.4f (%llu labelled)\n",
            (unsigned long long)r->step, (unsigned long long)r->epoch, iv->mlp * k, iv->linear * k, iv->mlp_hits * lab,
            iv->linear_hits * lab, (unsigned long long)iv->labelled);
    char line[512];
    int len = snprintf(line, sizeof line,
                       "{\"kind\":\"classifier\",\"model\":\"dim\",\"step\":%llu,\"epoch\":%llu,\"features\":\"%s\","
                       "\"cls_mlp\":%.17g,\"cls_lin\":%.17g,\"train_acc_mlp\":%.6f,\"train_acc_lin\":%.6f,"
                       "\"labelled\":%llu,\"steps\":%llu}\n",
                       (unsigned long long)r->step, (unsigned long long)r->epoch, tap_name[r->tap], iv->mlp * k,
                       iv->linear * k, iv->mlp_hits * lab, iv->linear_hits * lab, (unsigned long long)iv->labelled,
                       (unsigned long long)iv->steps);
    memset(iv, 0, sizeof *iv);
    return amdim_output_write(r->mout, line, (size_t)len, err, n);
}

/* One batch t: features, the dropout mask of t, the heads' step and, when the batch had
 * labelled rows, the next Adam update. */
static int step_once(cls_run *r, const amdim_batch *b, char *err, size_t n)
{
    int count = (int)b->count;
    if (count < 2)
        return AMDIM_OK; /* a last batch of one: BatchNorm cannot train on it */
    AMDIM_TRY(features(r, b->view1, count, err, n));
    for (int i = 0; i < count; i++)
        r->labels[i] = b->labels[i];
    amdim_dim_head_stats s;
    uint64_t t = r->step + 1;
    amdim_dim_heads_draw_mask(r->h, t, count, r->mask);
    int st = amdim_dim_heads_step(r->h, r->hw, r->feat, count, r->labels, r->mask, r->hg, &s);
    if (st)
        return amdim_fail(err, n, st, "the heads' step on %d rows failed", count);
    if (!isfinite(s.mlp) || !isfinite(s.linear))
        return amdim_fail(err, n, AMDIM_E_INVALID, "the classifier loss became %g (linear %g) at step %llu", s.mlp,
                          s.linear, (unsigned long long)t);
    if (s.labelled) /* as PyTorch's Adam, which a batch without loss never steps */
        amdim_dim_heads_adam_step(r->h, r->hw, r->hg, r->hm, r->hv, (long)++r->updates, &r->st.adam);
    r->step = t;
    r->epoch = b->epoch;
    r->iv.mlp += s.mlp, r->iv.linear += s.linear, r->iv.steps++;
    r->iv.mlp_hits += (uint64_t)s.mlp_correct, r->iv.linear_hits += (uint64_t)s.linear_correct;
    r->iv.labelled += (uint64_t)s.labelled;
    r->labelled += (uint64_t)s.labelled;
    return AMDIM_OK;
}

static int train_loop(cls_run *r, char *err, size_t n)
{
    const amdim_train_options *o = r->o;
    for (;;) {
        if (o->cancel && *o->cancel)
            return amdim_fail(err, n, AMDIM_E_CANCELLED, "interrupted");
        if (o->steps >= 0 && r->step >= (uint64_t)o->steps)
            return AMDIM_OK;
        amdim_batch b;
        int rc = amdim_loader_next(r->l, &b);
        if (rc == 1)
            return AMDIM_OK;
        if (rc < 0)
            return amdim_fail(err, n, rc, "%s", amdim_loader_error(r->l));
        rc = step_once(r, &b, err, n);
        int last = b.last_in_epoch;
        amdim_loader_release(r->l, &b);
        if (rc)
            return rc;
        if ((o->log_every > 0 && r->step % (uint64_t)o->log_every == 0) || (last && r->iv.steps))
            AMDIM_TRY(log_interval(r, err, n));
        if (last && o->eval_path)
            AMDIM_TRY(evaluate(r, err, n));
    }
}

/* RUN/classifiers-<step>.safetensors: the heads' tensors; metadata says what they read. */
static int save_heads(cls_run *r, char *err, size_t n)
{
    int nt = amdim_dim_heads_tensor_count(r->h);
    amdim_safetensors_out t[16];
    int64_t count = 0;
    for (int i = 0; i < nt; i++) {
        const amdim_dim_tensor *x = amdim_dim_heads_tensor_at(r->h, i);
        t[i] = (amdim_safetensors_out){x->name, "F32", x->ndim, {0}, r->hw + x->offset, x->size * sizeof(float)};
        for (int k = 0; k < x->ndim; k++)
            t[i].shape[k] = x->shape[k];
        if (x->ndim == 0) {
            count = (int64_t)r->hw[x->offset];
            t[i].dtype = "I64", t[i].data = &count, t[i].bytes = 8;
        }
    }
    char step[32], classes[16], seed[32], path[4300];
    snprintf(step, sizeof step, "%llu", (unsigned long long)r->step);
    snprintf(classes, sizeof classes, "%d", (int)r->li->classes);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)r->li->seed);
    amdim_safetensors_kv kv[] = {{"format", "amdim-dim-classifiers"},
                                 {"format_version", "1"},
                                 {"model", "dim"},
                                 {"features", tap_name[r->tap]},
                                 {"init", r->init},
                                 {"step", step},
                                 {"classes", classes},
                                 {"seed", seed}};
    snprintf(path, sizeof path, "%s/classifiers-%s.safetensors", r->plan.dir, step);
    AMDIM_TRY(amdim_safetensors_write(path, kv, (int)(sizeof kv / sizeof kv[0]), t, nt, err, n));
    fprintf(stderr, "amdim-train: the heads in %s\n", path);
    return AMDIM_OK;
}

static int run_body(cls_run *r, char *err, size_t n)
{
    AMDIM_TRY(configure(r, err, n));
    fprintf(stderr,
            "amdim-train: classifiers %s: frozen DIM encoder %s (%d px, evaluation mode), features %s (%d), MLP "
            "(hidden %d, dropout %g) and linear heads on %d classes, Adam lr %g betas (%g, %g), batch %u, seed %llu\n",
            r->plan.dir, r->init, r->st.cfg.size, tap_name[r->tap], amdim_dim_tap_units(r->d, r->tap), DIM_HEAD_HIDDEN,
            DIM_HEAD_DROPOUT, (int)r->li->classes, r->st.adam.lr, r->st.adam.beta1, r->st.adam.beta2, r->li->batch,
            (unsigned long long)r->li->seed);
    int st = train_loop(r, err, n);
    if (st == AMDIM_OK && r->step && !r->labelled)
        st = amdim_fail(err, n, AMDIM_E_INVALID,
                        "no image of amdim-load's %llu batches had a label: the classifiers need labelled data",
                        (unsigned long long)r->step);
    if (st == AMDIM_OK && r->iv.steps)
        st = log_interval(r, err, n);
    if (st == AMDIM_OK && r->o->eval_path && r->tested != r->step) /* not again after the last epoch's */
        st = evaluate(r, err, n);
    if (st == AMDIM_OK)
        st = save_heads(r, err, n);
    return st;
}

static int run_close(cls_run *r, int st, char *err, size_t n)
{
    if (r->mout) {
        int s2 = amdim_output_close(r->mout, r->why, sizeof r->why);
        if (s2 && st == AMDIM_OK)
            st = amdim_fail(err, n, s2, "%s", r->why);
    }
    float *p[] = {r->w, r->m, r->v, r->hw, r->hg, r->hm, r->hv, r->mask, r->x, r->feat};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        free(p[i]);
    free(r->labels), free(r->pred);
    amdim_dim_heads_destroy(r->h);
    amdim_dim_destroy(r->d);
    amdim_loader_close(r->l);
    amdim_run_plan_end(&r->plan);
    return st;
}

int amdim_dim_classifier_run(const amdim_train_options *o, int tap, char *err, size_t n)
{
    if (tap < 0 || tap > 2)
        return amdim_fail(err, n, AMDIM_E_INVALID, "features %d: need conv, fc or z", tap);
    if (!o->init_path || !o->out_dir || o->resume_dir)
        return amdim_fail(err, n, AMDIM_E_INVALID, "the DIM classifiers need --init RUN and --out RUN (no --resume)");
    cls_run *r = calloc(1, sizeof *r);
    if (!r)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    r->o = o, r->tap = tap, r->metrics.fd = -1, r->tested = UINT64_MAX;
    amdim_loader_request req;
    int st = resolve_init(r, err, n);
    if (st == AMDIM_OK)
        st = plan_begin(r, &req, err, n);
    if (st) {
        free(r);
        return st;
    }
    if ((st = amdim_run_plan_attach(&r->plan, o->in_fd, &req, &r->l, err, n))) {
        free(r);
        return st;
    }
    r->li = amdim_loader_get_info(r->l);
    st = run_close(r, run_body(r, err, n), err, n);
    free(r);
    return st;
}
