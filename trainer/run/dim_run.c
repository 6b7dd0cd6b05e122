/* The Deep InfoMax run (amdim_run.h: amdim_dim_train_run): amdim-load's
 * batches through trainer/dim's step and Adam, with the AMDIM run's run
 * directory, lock, metrics file and checkpoint naming. */
#include "amdim_run.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cblas.h>

#include "amdim_augment.h"
#include "amdim_dim.h"
#include "amdim_loader.h"
#include "dim_run_internal.h"
#include "elementwise_internal.h"
#include "metrics_internal.h"
#include "output_internal.h"
#include "run_plan_internal.h"

void amdim_dim_overrides_default(amdim_dim_overrides *d)
{
    d->alpha = d->beta = d->gamma = -1.0f;
    d->estimator = -1;
}

static const char *estimator_name[] = {"jsd", "nce", "dv"};

/* The losses of the steps since the last logged line. */
typedef struct {
    double encoder, global, local, prior, disc, gp;
    uint64_t pairs, steps;
    double t0, wait0;
} dim_interval;

/* Everything one DIM run holds. */
typedef struct {
    const amdim_train_options *o;
    const amdim_dim_overrides *dv;
    amdim_run_plan plan; /* the directory, its lock, the checkpoint to resume; plan.ci is the cursor */
    amdim_dim_state st;
    amdim_loader *l;
    const amdim_loader_info *li;
    amdim_dim *d;
    float *w, *g, *m, *v, *x, *prior;
    int in_ch, threads;
    float scale[3], shift[3];
    amdim_output metrics, *mout;
    amdim_progress live;
    dim_interval iv;
    uint64_t epoch, first_step, total_steps, last_ckpt;
    char why[2048];
} dim_run;

/* ---- before the loader ------------------------------------------------------ */

/* A weight given with --resume must be the run's own. */
static int same_weight(const char *flag, float given, float saved, const char *dir, char *err, size_t n)
{
    if (given < 0 || given == saved)
        return AMDIM_OK;
    return amdim_fail(err, n, AMDIM_E_INVALID,
                      "%s %g, but the run in %s was made with %g: a resumed run keeps its model (drop the option, or "
                      "start a new run with --out)",
                      flag, given, dir, saved);
}

static int check_resume(const dim_run *r, char *err, size_t n)
{
    const amdim_dim_overrides *v = r->dv;
    const amdim_dim_config *c = &r->st.cfg;
    const char *dir = r->plan.dir;
    AMDIM_TRY(same_weight("--dim-alpha", v->alpha, c->alpha, dir, err, n));
    AMDIM_TRY(same_weight("--dim-beta", v->beta, c->beta, dir, err, n));
    AMDIM_TRY(same_weight("--dim-gamma", v->gamma, c->gamma, dir, err, n));
    AMDIM_TRY(same_weight("--lr", r->o->model.lr, r->st.adam.lr, dir, err, n));
    if (v->estimator >= 0 && v->estimator != c->estimator)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "--objective %s, but the run in %s was made with %s: a resumed run keeps its model",
                          estimator_name[v->estimator], dir, estimator_name[c->estimator]);
    return AMDIM_OK;
}

/* The directory, its lock and, resuming, the checkpoint's state; then the
 * loader request. On failure nothing is held. */
static int plan_begin(dim_run *r, amdim_loader_request *req, char *err, size_t n)
{
    const amdim_train_options *o = r->o;
    amdim_run_plan *p = &r->plan;
    memset(p, 0, sizeof *p);
    memset(req, 0, sizeof *req);
    p->lock_fd = -1;
    p->dir = o->resume_dir ? o->resume_dir : o->out_dir;
    if (!p->dir)
        return amdim_fail(err, n, AMDIM_E_INVALID, "give --out RUN for a new run or --resume RUN");
    p->resuming = o->resume_dir != NULL;
    int st = amdim_run_plan_dir(o, p, err, n);
    if (st == AMDIM_OK && p->resuming && (st = amdim_dim_checkpoint_read_meta(p->ckpt, &r->st, err, n)) == AMDIM_OK &&
        (st = check_resume(r, err, n)) == AMDIM_OK)
        p->ci = r->st.ci;
    if (st == AMDIM_OK)
        st = amdim_run_plan_request(o, p, req, err, n);
    if (st)
        amdim_run_plan_end(p);
    return st;
}

/* ---- once the loader said what it delivers ---------------------------------- */

static int check_loader(const dim_run *r, char *err, size_t n)
{
    const amdim_loader_info *li = r->li;
    const amdim_train_options *o = r->o;
    if (li->shard_size != 1)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "amdim-load makes shard %u/%u of every batch; Deep InfoMax trains in one process (no "
                          "--shard)",
                          li->shard_rank, li->shard_size);
    if (o->batch && (uint32_t)o->batch != li->batch)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "amdim-train --batch %d, but amdim-load delivers batches of %u: give both the same --batch",
                          o->batch, li->batch);
    if (strncmp(li->preset, "dim", 3) != 0)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "amdim-load delivers the %s preset's views; --model dim trains on the dim28, dim32, dim64 "
                          "or dim-stl10 preset (docs/dim.md §8)",
                          li->preset);
    if (li->size != 28 && li->size != 32 && li->size != 64)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "amdim-load makes %ux%u views (preset %s); the DIM encoders take 28, 32 or 64 px", li->size,
                          li->size, li->preset);
    return AMDIM_OK;
}

/* A new run: the loader's view size, the authors' DIM(L) weights and JSD
 * unless the flags say otherwise, Adam as docs/dim.md §7.3. */
static int configure_new(dim_run *r, char *err, size_t n)
{
    const amdim_dim_overrides *v = r->dv;
    amdim_dim_config *c = &r->st.cfg;
    memset(c, 0, sizeof *c);
    c->size = (int)r->li->size;
    c->in_ch = c->size == 28 ? 1 : 3;
    c->alpha = v->alpha >= 0 ? v->alpha : 0.0f;
    c->beta = v->beta >= 0 ? v->beta : 1.0f;
    c->gamma = v->gamma >= 0 ? v->gamma : 0.1f;
    c->estimator = v->estimator >= 0 ? v->estimator : AMDIM_DIM_JSD;
    c->seed = r->li->seed;
    if (!(c->alpha + c->beta > 0))
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "--dim-alpha %g and --dim-beta %g: at least one of the global and local terms must weigh "
                          "more than 0",
                          c->alpha, c->beta);
    r->st.adam = (amdim_dim_adam){r->o->model.lr > 0 ? r->o->model.lr : 1e-4f, 0.5f, 0.999f, 1e-8f};
    amdim_checkpoint_info *ci = &r->plan.ci;
    memset(ci, 0, sizeof *ci);
    ci->seed = r->li->seed;
    ci->epochs = r->o->epochs > 0 ? r->o->epochs : (r->o->steps >= 0 ? -1 : (int64_t)r->li->epochs);
    ci->max_steps = r->o->steps;
    snprintf(ci->preset, sizeof ci->preset, "%s", r->li->preset);
    ci->batch = (int)r->li->batch;
    return AMDIM_OK;
}

static int configure(dim_run *r, char *err, size_t n)
{
    const amdim_loader_info *li = r->li;
    AMDIM_TRY(check_loader(r, err, n));
    if (!r->plan.resuming)
        AMDIM_TRY(configure_new(r, err, n));
    else if (r->st.cfg.size != (int)li->size || (uint32_t)r->plan.ci.batch != li->batch ||
             strcmp(r->plan.ci.preset, li->preset) != 0)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "the checkpoint %s was trained on %s preset %d px views in batches of %d (its encoder takes "
                          "%d px), but amdim-load now delivers %s %u px in batches of %u",
                          r->plan.ckpt, r->plan.ci.preset, r->st.cfg.size, r->plan.ci.batch, r->st.cfg.size, li->preset,
                          li->size, li->batch);
    amdim_augment_config ac;
    if (amdim_augment_preset(li->preset, &ac))
        return amdim_fail(err, n, AMDIM_E_INVALID, "unknown preset %s", li->preset);
    r->in_ch = r->st.cfg.in_ch ? r->st.cfg.in_ch : r->st.cfg.size == 28 ? 1 : 3;
    for (int c = 0; c < 3; c++) {
        r->scale[c] = 1.0f / (255.0f * ac.std[c]);
        r->shift[c] = ac.mean[c] / ac.std[c];
    }
    return AMDIM_OK;
}

/* The model and its blocks: fresh weights, or the checkpoint's with its moments. */
static int create_model(dim_run *r, char *err, size_t n)
{
    int B = (int)r->li->batch, S = r->st.cfg.size;
    int st = amdim_dim_create(&r->st.cfg, B, &r->d, r->why, sizeof r->why);
    if (st)
        return amdim_fail(err, n, st, "%s", r->why);
    size_t nf = amdim_dim_block_floats(r->d);
    r->w = calloc(nf, sizeof(float));
    r->g = calloc(nf, sizeof(float));
    r->m = calloc(nf, sizeof(float));
    r->v = calloc(nf, sizeof(float));
    r->x = calloc((size_t)B * r->in_ch * S * S, sizeof(float));
    r->prior = calloc((size_t)B * 64, sizeof(float)); /* z_units: the authors' 64 */
    if (!r->w || !r->g || !r->m || !r->v || !r->x || !r->prior)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for a DIM model of %zu floats", nf);
    /* BLAS's threads: the cores the loader's workers leave, at least one (as the AMDIM run) */
    int threads = r->o->threads > 0 ? r->o->threads : amdim_cpu_count() - (int)r->li->workers;
    r->threads = threads < 1 ? 1 : threads;
    openblas_set_num_threads(r->threads);
    if (!r->plan.resuming) {
        amdim_dim_init_weights(r->d, r->w);
        return AMDIM_OK;
    }
    return amdim_dim_checkpoint_load(r->d, r->plan.ckpt, r->w, r->m, r->v, err, n);
}

/* metrics.jsonl: afresh for a new run, trimmed to the checkpoint's step when resuming. */
static int open_metrics(dim_run *r, char *err, size_t n)
{
    char mpath[4300];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", r->plan.dir);
    struct stat sb;
    if (!r->plan.resuming && stat(mpath, &sb) == 0 && S_ISREG(sb.st_mode) && truncate(mpath, 0) != 0)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot truncate %s: %s", mpath, strerror(errno));
    if (r->plan.resuming)
        AMDIM_TRY(amdim_metrics_trim(mpath, r->plan.ci.step, err, n));
    AMDIM_TRY(amdim_output_open(&r->metrics, mpath, AMDIM_OUTPUT_APPEND, err, n));
    r->mout = &r->metrics;
    return AMDIM_OK;
}

static void print_banner(const dim_run *r)
{
    const amdim_dim_config *c = &r->st.cfg;
    const amdim_dim_adam *a = &r->st.adam;
    const amdim_loader_info *li = r->li;
    fprintf(stderr,
            "amdim-train: %s %s: Deep InfoMax on the CPU (%d compute thread%s beside %u loader worker%s), %d px "
            "encoder (%d input channel%s), alpha %g beta %g gamma %g, estimator %s, batch %u, Adam lr %g betas (%g, "
            "%g) eps %g, seed %llu, from epoch %llu batch %llu (step %llu)%s\n",
            r->plan.resuming ? "resuming" : "run", r->plan.dir, r->threads, r->threads == 1 ? "" : "s", li->workers,
            li->workers == 1 ? "" : "s", c->size, r->in_ch, r->in_ch == 1 ? "" : "s", c->alpha, c->beta, c->gamma,
            estimator_name[c->estimator], li->batch, a->lr, a->beta1, a->beta2, a->eps, (unsigned long long)li->seed,
            (unsigned long long)li->start_epoch, (unsigned long long)li->start_batch,
            (unsigned long long)r->plan.ci.step, r->plan.ci.max_steps > 0 ? ", step-limited" : "");
}

/* ---- the loop ----------------------------------------------------------------- */

/* view1 (B, S, S, 3) uint8 into x (B, in_ch, S, S), normalised as the
 * trainer does; a 28 px encoder takes channel 0 of the replicated grey. */
static void normalise(const dim_run *r, const uint8_t *nhwc, int B)
{
    int S = r->st.cfg.size, C = r->in_ch;
    size_t plane = (size_t)S * S;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            const uint8_t *src = nhwc + (size_t)b * plane * 3 + c;
            float *dst = r->x + ((size_t)b * C + c) * plane;
            for (size_t i = 0; i < plane; i++)
                dst[i] = amdim_normalise_pixel(src[3 * i], r->scale[c], r->shift[c]);
        }
}

/* One update on batch b: the prior's samples (gamma > 0), the step, Adam. */
static int step_once(dim_run *r, const amdim_batch *b, amdim_dim_losses *L, char *err, size_t n)
{
    amdim_checkpoint_info *ci = &r->plan.ci;
    if (b->count != r->li->batch)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "amdim-load delivered a batch of %u images (epoch %llu batch %llu); Deep InfoMax trains on "
                          "full batches of %u (drop amdim-load's --keep-last)",
                          b->count, (unsigned long long)b->epoch, (unsigned long long)b->index, r->li->batch);
    normalise(r, b->view1, (int)b->count);
    uint64_t t = ci->step + 1;
    if (r->st.cfg.gamma > 0)
        amdim_dim_draw_prior(r->d, r->st.cfg.seed, t, r->prior);
    int st = amdim_dim_step(r->d, r->w, r->x, r->prior, r->g, L);
    if (st)
        return amdim_fail(err, n, st, "%s", amdim_dim_error(r->d));
    if (!isfinite(L->encoder) || !isfinite(L->disc))
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "the loss became %g (discriminator %g) at step %llu (epoch %llu); stopping", L->encoder,
                          L->disc, (unsigned long long)t, (unsigned long long)b->epoch);
    amdim_dim_adam_step(r->d, r->w, r->g, r->m, r->v, (long)t, &r->st.adam);
    ci->step = t;
    ci->next_epoch = b->last_in_epoch ? b->epoch + 1 : b->epoch;
    ci->next_batch = b->last_in_epoch ? 0 : b->index + 1;
    r->epoch = b->epoch;
    return AMDIM_OK;
}

static void interval_add(dim_interval *iv, const amdim_dim_losses *L, uint32_t pairs)
{
    iv->encoder += L->encoder, iv->global += L->global, iv->local += L->local;
    iv->prior += L->prior, iv->disc += L->disc, iv->gp += L->gp;
    iv->pairs += pairs, iv->steps++;
}

/* The interval's means to stderr and a "train" line of metrics.jsonl (the
 * AMDIM run's keys where they mean the same), then the next interval. */
static int log_interval(dim_run *r, char *err, size_t n)
{
    dim_interval *iv = &r->iv;
    double now = amdim_now(), dt = now - iv->t0, k = iv->steps ? 1.0 / iv->steps : 0;
    double wait_now = amdim_loader_wait_seconds(r->l), wait = dt > 0 ? (wait_now - iv->wait0) / dt : 0;
    double rate = dt > 0 ? iv->pairs / dt : 0;
    unsigned long long step = (unsigned long long)r->plan.ci.step, epoch = (unsigned long long)r->epoch;
    fprintf(stderr,
            "amdim-train: step %llu epoch %llu: loss %.4f (local %.4f global %.4f prior %.4f) discriminator %.4f "
            "(gp %.4f), lr %.3g, %.1f pairs/s, data wait %.0f%%\n",
            step, epoch, iv->encoder * k, iv->local * k, iv->global * k, iv->prior * k, iv->disc * k, iv->gp * k,
            r->st.adam.lr, rate, 100 * wait);
    char line[1024];
    int len = snprintf(line, sizeof line,
                       "{\"kind\":\"train\",\"model\":\"dim\",\"step\":%llu,\"epoch\":%llu,\"loss\":%.17g,"
                       "\"encoder\":%.17g,\"local\":%.17g,\"global\":%.17g,\"prior\":%.17g,\"disc\":%.17g,"
                       "\"gp\":%.17g,\"lr\":%.9g,\"pairs_per_s\":%.3f,\"data_wait\":%.4f,\"steps\":%llu}\n",
                       step, epoch, iv->encoder * k, iv->encoder * k, iv->local * k, iv->global * k, iv->prior * k,
                       iv->disc * k, iv->gp * k, r->st.adam.lr, rate, wait, (unsigned long long)iv->steps);
    AMDIM_ASSERT(len < (int)sizeof line);
    memset(iv, 0, sizeof *iv);
    iv->t0 = now;
    iv->wait0 = wait_now;
    return amdim_output_write(r->mout, line, (size_t)len, err, n);
}

/* A failed save (disk full) is reported with what remains and training
 * goes on; a diverged model (AMDIM_E_INVALID) stops the run. */
static int save(dim_run *r, char *err, size_t n)
{
    r->st.ci = r->plan.ci;
    int st = amdim_dim_checkpoint_save(r->d, &r->st, r->w, r->m, r->v, r->plan.dir, r->why, sizeof r->why);
    if (st == AMDIM_OK) {
        amdim_checkpoint_prune(r->plan.dir, r->o->keep);
        r->last_ckpt = r->plan.ci.step;
        return AMDIM_OK;
    }
    char prev[4300];
    if (amdim_checkpoint_latest(r->plan.dir, prev, sizeof prev) == AMDIM_OK)
        fprintf(stderr, "amdim-train: checkpoint at step %llu failed (%s); the previous one is intact (%s)\n",
                (unsigned long long)r->plan.ci.step, r->why, prev);
    else
        fprintf(stderr, "amdim-train: checkpoint at step %llu failed (%s); %s holds no earlier checkpoint\n",
                (unsigned long long)r->plan.ci.step, r->why, r->plan.dir);
    return st == AMDIM_E_INVALID ? amdim_fail(err, n, st, "%s", r->why) : AMDIM_OK;
}

/* After a step: the logs, and at an epoch's end or every --checkpoint-every steps a checkpoint. */
static int after_step(dim_run *r, int last, char *err, size_t n)
{
    const amdim_train_options *o = r->o;
    uint64_t step = r->plan.ci.step;
    int log_due = o->log_every > 0 && step % (uint64_t)o->log_every == 0;
    int ckpt_due = o->ckpt_every > 0 && step % (uint64_t)o->ckpt_every == 0;
    if (log_due || last || ckpt_due)
        amdim_progress_clear(&r->live);
    else if (r->live.is_tty)
        amdim_progress_update(&r->live, step - r->first_step, r->total_steps);
    if (log_due || (last && r->iv.steps))
        AMDIM_TRY(log_interval(r, err, n));
    return last || ckpt_due ? save(r, err, n) : AMDIM_OK;
}

static int step_limit_reached(const dim_run *r)
{
    return r->plan.ci.max_steps >= 0 && r->plan.ci.step >= (uint64_t)r->plan.ci.max_steps;
}

static int train_loop(dim_run *r, char *err, size_t n)
{
    for (;;) {
        if (r->o->cancel && *r->o->cancel)
            return amdim_fail(err, n, AMDIM_E_CANCELLED, "interrupted");
        if (step_limit_reached(r))
            return AMDIM_OK;
        amdim_batch b;
        int rc = amdim_loader_next(r->l, &b);
        if (rc == 1)
            return AMDIM_OK;
        if (rc < 0)
            return amdim_fail(err, n, rc, "%s", amdim_loader_error(r->l));
        amdim_dim_losses L;
        rc = step_once(r, &b, &L, err, n);
        int last = b.last_in_epoch;
        uint32_t pairs = b.count;
        amdim_loader_release(r->l, &b);
        if (rc)
            return rc;
        interval_add(&r->iv, &L, pairs);
        AMDIM_TRY(after_step(r, last, err, n));
    }
}

static void loop_begin(dim_run *r)
{
    amdim_checkpoint_info *ci = &r->plan.ci;
    amdim_progress_init(&r->live, stderr, "amdim-train", "steps", 0);
    r->first_step = ci->step;
    if (ci->max_steps >= 0)
        r->total_steps = (uint64_t)ci->max_steps - ci->step;
    else if (r->li->epochs > 0)
        r->total_steps = r->li->epochs * r->li->batches_per_epoch - r->li->start_batch;
    memset(&r->iv, 0, sizeof r->iv);
    r->iv.t0 = amdim_now();
    r->iv.wait0 = amdim_loader_wait_seconds(r->l);
    r->epoch = r->li->start_epoch;
    r->last_ckpt = UINT64_MAX;
    ci->next_epoch = r->li->start_epoch;
    ci->next_batch = r->li->start_batch;
}

/* After the loop: the last interval and a checkpoint of where it stopped. */
static int run_finish(dim_run *r, int st, char *err, size_t n)
{
    amdim_progress_clear(&r->live);
    if (r->iv.steps && st != AMDIM_E_IO) {
        int s2 = log_interval(r, r->why, sizeof r->why);
        if (s2 && st == AMDIM_OK)
            st = amdim_fail(err, n, s2, "%s", r->why);
    }
    uint64_t step = r->plan.ci.step;
    if ((st == AMDIM_OK || st == AMDIM_E_CANCELLED) && r->last_ckpt != step) {
        r->st.ci = r->plan.ci;
        int s2 = amdim_dim_checkpoint_save(r->d, &r->st, r->w, r->m, r->v, r->plan.dir, r->why, sizeof r->why);
        if (s2 && st == AMDIM_OK)
            st = amdim_fail(err, n, s2, "final checkpoint: %s", r->why);
        else if (s2 == AMDIM_OK) {
            amdim_checkpoint_prune(r->plan.dir, r->o->keep);
            fprintf(stderr, "amdim-train: checkpoint at step %llu in %s\n", (unsigned long long)step, r->plan.dir);
        }
    }
    return st;
}

static int run_close(dim_run *r, int st, char *err, size_t n)
{
    if (r->mout) {
        int s2 = amdim_output_close(r->mout, r->why, sizeof r->why);
        if (s2 && st == AMDIM_OK)
            st = amdim_fail(err, n, s2, "%s", r->why);
    }
    free(r->w), free(r->g), free(r->m), free(r->v), free(r->x), free(r->prior);
    amdim_dim_destroy(r->d);
    amdim_loader_close(r->l);
    amdim_run_plan_end(&r->plan);
    return st;
}

int amdim_dim_train_run(const amdim_train_options *o, const amdim_dim_overrides *dv, char *err, size_t n)
{
    if (o->comm)
        return amdim_fail(err, n, AMDIM_E_UNSUPPORTED, "Deep InfoMax trains in one process so far (no --dist mpi)");
    dim_run *r = calloc(1, sizeof *r);
    if (!r)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    r->o = o;
    r->dv = dv;
    r->metrics.fd = -1;
    amdim_loader_request req;
    int st = plan_begin(r, &req, err, n);
    if (st) {
        free(r);
        return st;
    }
    if ((st = amdim_run_plan_attach(&r->plan, o->in_fd, &req, &r->l, err, n))) {
        free(r);
        return st;
    }
    r->li = amdim_loader_get_info(r->l);
    if ((st = configure(r, err, n)) == AMDIM_OK && (st = create_model(r, err, n)) == AMDIM_OK &&
        (st = open_metrics(r, err, n)) == AMDIM_OK) {
        print_banner(r);
        loop_begin(r);
        st = run_finish(r, train_loop(r, err, n), err, n);
    }
    st = run_close(r, st, err, n);
    free(r);
    return st;
}
