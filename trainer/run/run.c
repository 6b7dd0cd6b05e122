/* The training run (see amdim_run.h). */
#include "amdim_run.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amdim_checkpoint.h"
#include "amdim_loader.h"
#include "metrics_internal.h"
#include "output_internal.h"
#include "run_plan_internal.h"

void amdim_train_options_default(amdim_train_options *o)
{
    memset(o, 0, sizeof *o);
    o->eval_split = "test";
    o->eval_refresh = 20;
    o->eval_batch = 100;
    o->device = AMDIM_DEVICE_CPU;
    o->precision = -1;
    o->epochs = -1;
    o->steps = -1;
    o->log_every = 50;
    o->keep = 3;
    o->model = (amdim_model_overrides){-1, -1, -1, -1, -1, -1, -1, -1.0f, -1.0f, -1, -1, -1.0f, -1.0f};
}

/* ---- the run ---------------------------------------------------------------- */

static int evaluate(const amdim_train_options *o, amdim_model *m, const char *preset, amdim_output *metrics,
                    uint64_t epoch, char *err, size_t n)
{
    if (!o->eval_path)
        return AMDIM_OK;
    amdim_eval_result r;
    double t0 = amdim_now();
    int st = amdim_evaluate_dataset(m, o->eval_path, o->eval_split, preset, o->eval_refresh, o->eval_batch, &r, err, n);
    if (st)
        return st;
    fprintf(stderr, "amdim-train: evaluation after step %llu (epoch %llu): test accuracy linear %.4f, MLP %.4f on %llu images (%.1f s)\n",
            (unsigned long long)amdim_model_updates(m), (unsigned long long)epoch, r.acc_lin, r.acc_mlp,
            (unsigned long long)r.images, amdim_now() - t0);
    char line[512];
    int len = snprintf(line, sizeof line,
                       "{\"kind\":\"eval\",\"step\":%llu,\"epoch\":%llu,\"test_acc_lin\":%.6f,\"test_acc_mlp\":%.6f,"
                       "\"images\":%llu}\n",
                       (unsigned long long)amdim_model_updates(m), (unsigned long long)epoch, r.acc_lin, r.acc_mlp,
                       (unsigned long long)r.images);
    return amdim_output_write(metrics, line, (size_t)len, err, n);
}

/* A failed save is reported with what remains: the previous checkpoint
 * when there is one. AMDIM_E_INVALID (the model diverged) stops the run. */
static int save(const char *dir, amdim_model *m, amdim_checkpoint_info *ci, int keep, char *err, size_t n)
{
    ci->step = amdim_model_updates(m);
    int st = amdim_checkpoint_save(m, dir, ci, err, n);
    if (st) {
        char prev[4300];
        if (amdim_checkpoint_latest(dir, prev, sizeof prev) == AMDIM_OK)
            fprintf(stderr, "amdim-train: checkpoint at step %llu failed (%s); the previous one is intact (%s)\n",
                    (unsigned long long)ci->step, err, prev);
        else
            fprintf(stderr, "amdim-train: checkpoint at step %llu failed (%s); %s holds no earlier checkpoint\n",
                    (unsigned long long)ci->step, err, dir);
        return st;
    }
    amdim_checkpoint_prune(dir, keep);
    return AMDIM_OK;
}

/* What the loop keeps of a batch after the loader has it back. */
typedef struct {
    uint64_t epoch, index;
    uint32_t count;
    int last;
} batch_meta;

static batch_meta meta_of(const amdim_batch *b)
{
    batch_meta r = {b->epoch, b->index, b->count, b->last_in_epoch};
    return r;
}

/* Takes the next batch from the loader into *b and starts copying it into
 * input slot `slot`; with wait, also waits for the copy and gives the batch
 * back (otherwise the caller does, after amdim_model_stage_wait). 0, 1
 * when every epoch has been delivered, or a status with the reason in err. */
static int take_batch(amdim_loader *l, amdim_model *m, int slot, amdim_batch *b, int wait, char *err, size_t n)
{
    int rc = amdim_loader_next(l, b);
    if (rc == 1)
        return 1;
    if (rc < 0)
        return amdim_fail(err, n, rc, "%s", amdim_loader_error(l));
    rc = amdim_model_stage_input(m, slot, b->view1, b->view2, b->labels, (int)b->count);
    if (rc == AMDIM_OK && wait)
        rc = amdim_model_stage_wait(m, slot);
    if (rc || wait)
        amdim_loader_release(l, b);
    return rc ? amdim_fail(err, n, rc, "%s", amdim_model_error(m)) : AMDIM_OK;
}

/* 1 when any rank was asked to stop (a collective in a group, so every
 * rank leaves the loop at the same step), 0 to go on, or a negative
 * status with the reason in err when the group failed. */
static int cancelled(const amdim_train_options *o, char *err, size_t n)
{
    double c = o->cancel && *o->cancel;
    int rc = o->comm ? o->comm->allreduce_f64(o->comm->ctx, &c, 1) : AMDIM_OK;
    if (rc)
        return amdim_fail(err, n, rc, "rank %d of %d: %s", o->comm->rank, o->comm->size,
                          o->comm->error ? o->comm->error(o->comm->ctx) : "collective failed");
    return c > 0;
}

static void watch(const amdim_train_options *o, int kind, int on)
{
    if (o->comm && o->comm->watch)
        o->comm->watch(o->comm->ctx, kind, on);
}

/* Every rank runs the same run: the loader's share, order and span, the
 * model and the state it starts from. Compared through the group (each
 * value as four exact 16-bit pieces) before anything else is exchanged;
 * a rank started with other flags, or resumed from another checkpoint, is
 * named with the value that differs. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static int ranks_agree(const amdim_train_options *o, const amdim_loader_info *li, const amdim_run_plan *p, amdim_model *m,
                       char *err, size_t n)
{
    const amdim_comm *g = o->comm;
    if (!g)
        return AMDIM_OK;
    const amdim_model_config *c = &p->cfg;
    uint64_t h = 1469598103934665603ull;
#define H(x) h = fnv(h, &(x), sizeof(x))
    H(c->encoder_size), H(c->ndf), H(c->n_rkhs), H(c->n_depth), H(c->use_bn), H(c->n_classes), H(c->mlp_hidden);
    H(c->tclip), H(c->objective), H(c->lr), H(c->beta1), H(c->beta2), H(c->eps), H(c->weight_decay), H(c->warmup);
    H(c->lr_decay), H(c->milestones), H(c->n_milestones), H(c->mean), H(c->std), H(c->seed), H(c->mixtures);
    H(c->mix_tau), H(c->mix_entropy), H(c->probe_features);
#undef H
    static const char *names[] = {"loader batch share", "loader seed", "batches per epoch", "epochs",
                                  "start epoch", "start batch", "step limit", "updates so far",
                                  "model options (hash)", "classifier phase", "--sync-bn",
                                  "device (0 CPU, 1 CUDA)", "precision (0 fp32, 1 bf16; a GPU below compute "
                                  "capability 8.0 falls back to fp32)"};
    enum { K = 13 };
    uint64_t v[K] = {li->batch, li->seed, li->batches_per_epoch, li->epochs, li->start_epoch, li->start_batch,
                     (uint64_t)p->ci.max_steps, amdim_model_updates(m), h, (uint64_t)p->probes,
                     (uint64_t)g->sync_bn, (uint64_t)amdim_model_device(m), (uint64_t)amdim_model_precision(m)};
    float mine[4 * K], *all = malloc((size_t)4 * K * g->size * sizeof(float));
    if (!all)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    for (int k = 0; k < K; k++)
        for (int q = 0; q < 4; q++)
            mine[4 * k + q] = (float)((v[k] >> (16 * q)) & 0xffff);
    int rc = g->allgather_f32(g->ctx, mine, all, 4 * K);
    if (rc) {
        free(all);
        return amdim_fail(err, n, rc, "rank %d of %d: comparing the ranks' runs: %s", g->rank, g->size,
                          g->error ? g->error(g->ctx) : "collective failed");
    }
    for (int r = 1; r < g->size && rc == AMDIM_OK; r++)
        for (int k = 0; k < K && rc == AMDIM_OK; k++) {
            uint64_t a = 0, b = 0;
            for (int q = 0; q < 4; q++)
                a |= (uint64_t)all[4 * k + q] << (16 * q), b |= (uint64_t)all[(size_t)4 * K * r + 4 * k + q] << (16 * q);
            if (a != b)
                rc = amdim_fail(err, n, AMDIM_E_INVALID,
                                "rank %d's %s is %lld, rank 0's %lld: every rank must run the same amdim-load and "
                                "amdim-train flags (and resume the same checkpoint)",
                                r, names[k], (long long)b, (long long)a);
        }
    free(all);
    return rc;
}

/* ---- the run, phase by phase ------------------------------------------------------- */

/* Everything one run holds: its plan, the loader it reads, the model it
 * trains, rank 0's metrics file, the interval being logged and the
 * double-buffered input. */
typedef struct {
    const amdim_train_options *o;
    amdim_run_plan plan;
    amdim_loader *l;
    const amdim_loader_info *li;
    amdim_model *m;
    int rank0, ranks, threads;
    uint32_t registered; /* rings registered with the model */
    amdim_output metrics, *mout; /* rank 0 alone logs */
    amdim_progress live;         /* a live line with steps/s and time left, only on a terminal */
    amdim_metrics_interval iv;
    uint64_t first_step, total_steps, epoch, last_ckpt;
    /* Double-buffered input: batch k+1 is taken from the loader and its
     * copy started into the other input slot before step k runs, so the
     * copy overlaps the step; its loader slot is released once the copy is
     * complete (the loader lends one batch at a time). */
    amdim_batch held; /* borrowed from the loader while its copy runs */
    batch_meta cur, nxt;
    int slot, have_cur, ended;
    char why[2048];
} train_run;

/* The views travel from the loader's rings: page-locked once (DMA on a GPU). */
static void register_rings(train_run *r)
{
    for (; r->registered < r->li->workers; r->registered++) {
        void *base;
        size_t bytes;
        amdim_loader_ring_memory(r->l, r->registered, &base, &bytes);
        if (amdim_model_register_host(r->m, base, bytes)) {
            fprintf(stderr, "amdim-train: warning: ring %u stays pageable (%s); copies to the device are slower\n",
                    r->registered, amdim_model_error(r->m));
            break;
        }
    }
}

/* The model, agreed by every rank and started from rank 0's state, its
 * compute threads and the rings it reads. */
static int run_prepare(train_run *r, char *err, size_t n)
{
    const amdim_train_options *o = r->o;
    int st;
    if ((st = amdim_run_plan_configure(o, r->li, &r->plan, err, n)) ||
        (st = amdim_run_plan_model(o, r->li, &r->plan, &r->m, err, n)) ||
        (st = ranks_agree(o, r->li, &r->plan, r->m, err, n)))
        return st;
    /* every rank starts from rank 0's state, whatever each read */
    if ((st = amdim_model_bcast_state(r->m, 0)))
        return amdim_fail(err, n, st, "%s", amdim_model_error(r->m));
    /* compute threads: the cores the loader's workers leave, at least one */
    int threads = o->threads > 0 ? o->threads : amdim_cpu_count() - (int)r->li->workers;
    r->threads = threads < 1 ? 1 : threads;
    if ((st = amdim_model_set_threads(r->m, r->threads)))
        return amdim_fail(err, n, st, "%s", amdim_model_error(r->m));
    register_rings(r);
    return AMDIM_OK;
}

/* Rank 0's metrics.jsonl: a new run starts it afresh; a resumed one
 * continues it from its checkpoint's step. */
static int open_metrics(train_run *r, char *err, size_t n)
{
    if (!r->rank0)
        return AMDIM_OK;
    char mpath[4300];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", r->plan.dir);
    struct stat sb;
    if (!r->plan.resuming && stat(mpath, &sb) == 0 && S_ISREG(sb.st_mode) && truncate(mpath, 0) != 0)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot truncate %s: %s", mpath, strerror(errno));
    int st;
    if ((r->plan.resuming && (st = amdim_metrics_trim(mpath, r->plan.ci.step, err, n))) ||
        (st = amdim_output_open(&r->metrics, mpath, AMDIM_OUTPUT_APPEND, err, n)))
        return st;
    r->mout = &r->metrics;
    return AMDIM_OK;
}

/* Rank 0's opening lines: the group, then the run's configuration. */
static void print_banner(const train_run *r)
{
    const amdim_model_config *cfg = &r->plan.cfg;
    const amdim_loader_info *li = r->li;
    uint32_t global_batch = li->batch * (uint32_t)r->ranks;
    static const char *objn[] = {"nce", "jsd", "dv"};
    if (!r->rank0)
        return;
    if (r->ranks > 1)
        fprintf(stderr, "amdim-train: %d ranks, %u pairs each of every global batch of %u; BatchNorm statistics %s\n",
                r->ranks, li->batch, global_batch,
                r->o->comm->sync_bn ? "over the global batch (--sync-bn)" : "per rank");
    fprintf(stderr,
            "amdim-train: %s %s: device %s %s (%d compute thread%s beside %u loader worker%s), %d px encoder ndf %d "
            "n_rkhs %d depth %d use_bn %d, objective %s, tclip %g, %d classes, batch %u, lr %g (warm-up %d, x%g at "
            "epochs",
            r->plan.resuming ? "resuming" : r->plan.probes ? "classifier phase" : "run", r->plan.dir,
            amdim_device_name(amdim_model_device(r->m)), amdim_precision_name(amdim_model_precision(r->m)), r->threads,
            r->threads == 1 ? "" : "s", li->workers, li->workers == 1 ? "" : "s", cfg->encoder_size, cfg->ndf,
            cfg->n_rkhs, cfg->n_depth, cfg->use_bn, objn[cfg->objective], cfg->tclip, cfg->n_classes, global_batch,
            cfg->lr, cfg->warmup, cfg->lr_decay);
    for (int i = 0; i < cfg->n_milestones; i++)
        fprintf(stderr, " %d", cfg->milestones[i]);
    fprintf(stderr, ")");
    if (cfg->mixtures > 1)
        fprintf(stderr, ", mixtures %d (tau %g, entropy weight %g), probes on %s", cfg->mixtures, cfg->mix_tau,
                cfg->mix_entropy, cfg->probe_features ? "the mixture mean" : "r1");
    fprintf(stderr, ", seed %llu, from epoch %llu batch %llu (step %llu)%s\n", (unsigned long long)li->seed,
            (unsigned long long)li->start_epoch, (unsigned long long)li->start_batch,
            (unsigned long long)amdim_model_updates(r->m), r->plan.ci.max_steps > 0 ? ", step-limited" : "");
}

/* The loop's starting point: the step count, the live line, the interval. */
static void loop_begin(train_run *r)
{
    amdim_checkpoint_info *ci = &r->plan.ci;
    amdim_progress_init(&r->live, stderr, "amdim-train", "steps", 0);
    r->live.is_tty = r->live.is_tty && r->rank0;
    r->first_step = amdim_model_updates(r->m);
    r->total_steps = 0;
    if (ci->max_steps >= 0)
        r->total_steps = (uint64_t)ci->max_steps - r->first_step;
    else if (r->li->epochs > 0)
        r->total_steps = r->li->epochs * r->li->batches_per_epoch - r->li->start_batch;
    memset(&r->iv, 0, sizeof r->iv);
    r->iv.t0 = amdim_now();
    r->epoch = r->li->start_epoch;
    r->last_ckpt = UINT64_MAX;
    ci->next_epoch = r->li->start_epoch;
    ci->next_batch = r->li->start_batch;
}

static int step_limit_reached(const train_run *r, uint64_t ahead)
{
    return r->plan.ci.max_steps >= 0 && amdim_model_updates(r->m) + ahead >= (uint64_t)r->plan.ci.max_steps;
}

/* One training step on the current batch, the next one's copy beside it:
 * 0, 1 when the loader has delivered every epoch, or a status. *last and
 * *pairs describe the batch the step trained on. */
static int step_once(train_run *r, amdim_step_stats *s, int *last, uint32_t *pairs, char *err, size_t n)
{
    amdim_checkpoint_info *ci = &r->plan.ci;
    int rc;
    if (!r->have_cur) { /* the first batch: nothing to overlap with */
        if (r->ended || (rc = take_batch(r->l, r->m, r->slot, &r->held, 1, err, n)) == 1)
            return 1;
        if (rc)
            return rc;
        r->cur = meta_of(&r->held);
    }
    /* the next batch, unless this step is the last one allowed */
    int ahead = 0;
    if (!r->ended && !step_limit_reached(r, 1)) {
        rc = take_batch(r->l, r->m, 1 - r->slot, &r->held, 0, err, n);
        if (rc < 0)
            return rc;
        r->ended = rc == 1;
        ahead = rc == 0;
        if (ahead)
            r->nxt = meta_of(&r->held);
    }
    r->epoch = r->cur.epoch;
    watch(r->o, AMDIM_WATCH_STEP, 1);
    rc = r->plan.probes ? amdim_model_train_probes_step_staged(r->m, r->slot, (int)r->cur.epoch, s)
                        : amdim_model_train_step_staged(r->m, r->slot, (int)r->cur.epoch, s);
    watch(r->o, AMDIM_WATCH_STEP, 0);
    if (ahead) { /* its copy ran beside the step: the loader may have the slot back */
        int rw = amdim_model_stage_wait(r->m, 1 - r->slot);
        amdim_loader_release(r->l, &r->held);
        if (rw && !rc)
            rc = rw;
    }
    *last = r->cur.last;
    ci->next_epoch = *last ? r->cur.epoch + 1 : r->cur.epoch;
    ci->next_batch = *last ? 0 : r->cur.index + 1;
    *pairs = r->cur.count;
    r->cur = r->nxt;
    r->have_cur = ahead;
    r->slot = 1 - r->slot;
    if (rc)
        return amdim_fail(err, n, rc, "%s", amdim_model_error(r->m));
    if (!isfinite(s->total))
        return amdim_fail(err, n, AMDIM_E_INVALID, "the loss became %g at step %llu (epoch %llu); stopping", s->total,
                          (unsigned long long)amdim_model_updates(r->m), (unsigned long long)r->epoch);
    return AMDIM_OK;
}

static int log_now(train_run *r, char *err, size_t n)
{
    return amdim_metrics_log_interval(r->mout, &r->iv, r->m, r->epoch, amdim_loader_wait_seconds(r->l), r->plan.probes, err, n);
}

/* An epoch's end: its last interval, rank 0's evaluation, whose refreshed
 * BatchNorm statistics go to every rank - which wait for them without the
 * watchdog counting. */
static int epoch_end(train_run *r, char *err, size_t n)
{
    int st;
    if (r->iv.steps && (st = log_now(r, err, n)))
        return st;
    watch(r->o, AMDIM_WATCH_HOLD, 1);
    st = r->rank0 ? evaluate(r->o, r->m, r->li->preset, r->mout, r->epoch, err, n) : AMDIM_OK;
    if (st == AMDIM_OK && (st = amdim_model_bcast_state(r->m, 0)))
        amdim_fail(err, n, st, "%s", amdim_model_error(r->m));
    watch(r->o, AMDIM_WATCH_HOLD, 0);
    return st;
}

/* What follows a step: its figures into the interval, the logs, and at
 * an epoch's end or every --checkpoint-every steps the replicas' check,
 * the evaluation and a checkpoint. */
static int after_step(train_run *r, const amdim_step_stats *s, int last, uint32_t pairs, char *err, size_t n)
{
    const amdim_train_options *o = r->o;
    int st;
    amdim_metrics_interval_add(&r->iv, s, pairs, r->ranks);
    uint64_t step = amdim_model_updates(r->m);
    if (step == r->first_step + 1 && (st = amdim_metrics_log_algorithms(r->mout, r->m, err, n)))
        return st;
    int log_due = o->log_every > 0 && step % (uint64_t)o->log_every == 0;
    int ckpt_due = !last && o->ckpt_every > 0 && step % (uint64_t)o->ckpt_every == 0;
    if (log_due || last || ckpt_due)
        amdim_progress_clear(&r->live); /* lines print under the live line */
    else if (r->live.is_tty)
        amdim_progress_update(&r->live, step - r->first_step, r->total_steps);
    if (log_due && (st = log_now(r, err, n)))
        return st;
    if ((last || ckpt_due) && (st = amdim_model_check_replicas(r->m)))
        return amdim_fail(err, n, st, "%s", amdim_model_error(r->m));
    if (last && (st = epoch_end(r, err, n)))
        return st;
    if (last || ckpt_due) {
        /* a failed save (disk full) is reported and training goes on; a diverged model stops */
        int s2 = r->rank0 ? save(r->plan.dir, r->m, &r->plan.ci, o->keep, r->why, sizeof r->why) : AMDIM_OK;
        if (s2 == AMDIM_OK)
            r->last_ckpt = step;
        else if (s2 == AMDIM_E_INVALID)
            return amdim_fail(err, n, s2, "%s", r->why);
    }
    return AMDIM_OK;
}

/* Steps until the loader ends, the step limit, a stop request or a failure. */
static int train_loop(train_run *r, char *err, size_t n)
{
    for (;;) {
        int stop = cancelled(r->o, err, n);
        if (stop < 0)
            return stop;
        if (stop)
            return amdim_fail(err, n, AMDIM_E_CANCELLED, "interrupted");
        if (step_limit_reached(r, 0))
            return AMDIM_OK;
        amdim_step_stats s;
        int last;
        uint32_t pairs;
        int rc = step_once(r, &s, &last, &pairs, err, n);
        if (rc == 1)
            return AMDIM_OK;
        if (rc || (rc = after_step(r, &s, last, pairs, err, n)))
            return rc;
    }
}

/* After the loop (st its outcome): the last interval, a checkpoint - before
 * the final evaluation, so a run stopped here and resumed continues from
 * exactly the state an unbroken run has - and the evaluation. */
static int run_finish(train_run *r, int st, char *err, size_t n)
{
    amdim_progress_clear(&r->live);
    if (r->iv.steps && st != AMDIM_E_IO) {
        int s2 = log_now(r, r->why, sizeof r->why);
        if (s2 && st == AMDIM_OK)
            st = amdim_fail(err, n, s2, "%s", r->why);
    }
    uint64_t step = amdim_model_updates(r->m);
    if (r->rank0 && (st == AMDIM_OK || st == AMDIM_E_CANCELLED) && r->last_ckpt != step) {
        int s2 = save(r->plan.dir, r->m, &r->plan.ci, r->o->keep, r->why, sizeof r->why);
        if (s2 && st == AMDIM_OK)
            st = amdim_fail(err, n, s2, "final checkpoint: %s", r->why);
        else if (s2 == AMDIM_OK)
            fprintf(stderr, "amdim-train: checkpoint at step %llu in %s\n", (unsigned long long)step, r->plan.dir);
    }
    if (r->rank0 && st == AMDIM_OK && r->last_ckpt != step)
        st = evaluate(r->o, r->m, r->li->preset, r->mout, r->epoch, err, n);
    return st;
}

/* Gives back what the run holds; st stays unless it was OK and closing
 * the metrics file failed. */
static int run_close(train_run *r, int st, char *err, size_t n)
{
    for (uint32_t i = 0; r->m && i < r->registered; i++) {
        void *base;
        size_t bytes;
        amdim_loader_ring_memory(r->l, i, &base, &bytes);
        amdim_model_unregister_host(r->m, base);
    }
    if (r->mout) {
        int s2 = amdim_output_close(r->mout, r->why, sizeof r->why);
        if (s2 && st == AMDIM_OK)
            st = amdim_fail(err, n, s2, "%s", r->why);
    }
    amdim_model_destroy(r->m);
    amdim_loader_close(r->l);
    amdim_run_plan_end(&r->plan);
    return st;
}

int amdim_train_run(const amdim_train_options *o, char *err, size_t n)
{
    train_run *r = calloc(1, sizeof *r);
    if (!r)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    r->o = o;
    r->metrics.fd = -1;
    amdim_loader_request req;
    int st = amdim_run_plan_begin(o, &r->plan, &req, err, n);
    if (st) {
        free(r);
        return st;
    }
    if ((st = amdim_run_plan_attach(&r->plan, o->in_fd, &req, &r->l, err, n))) {
        free(r);
        return st;
    }
    r->li = amdim_loader_get_info(r->l);
    r->rank0 = !o->comm || o->comm->rank == 0;
    r->ranks = o->comm ? o->comm->size : 1;
    if ((st = run_prepare(r, err, n)) == AMDIM_OK && (st = open_metrics(r, err, n)) == AMDIM_OK) {
        print_banner(r);
        loop_begin(r);
        st = run_finish(r, train_loop(r, err, n), err, n);
    }
    st = run_close(r, st, err, n);
    free(r);
    return st;
}
