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

typedef struct {
    double nce_1t5, nce_1t7, nce_5t5, reg, cls_mlp, cls_lin, total, mix_entropy;
    uint64_t correct_mlp, correct_lin, labelled, pairs, steps;
    double t0, wait0;
} interval;

/* Logs an interval to stderr and a line to metrics (NULL on ranks other
 * than 0, which log nothing). 0 or AMDIM_E_IO naming metrics.jsonl. */
static int log_interval(amdim_output *metrics, interval *iv, amdim_model *m, uint64_t epoch, double wait_now,
                        int probes_only, char *err, size_t n)
{
    int quiet = metrics == NULL;
    double now = amdim_now(), dt = now - iv->t0;
    if (quiet) { /* ranks other than 0: rank 0 logs the group's figures */
        memset(iv, 0, sizeof *iv);
        iv->t0 = now;
        iv->wait0 = wait_now;
        return AMDIM_OK;
    }
    double k = iv->steps ? 1.0 / iv->steps : 0;
    double acc_m = iv->labelled ? (double)iv->correct_mlp / iv->labelled : NAN;
    double acc_l = iv->labelled ? (double)iv->correct_lin / iv->labelled : NAN;
    double wait = dt > 0 ? (wait_now - iv->wait0) / dt : 0;
    float lr = amdim_model_learning_rate(m, (int)epoch);
    uint64_t step = amdim_model_updates(m);
    if (probes_only)
        fprintf(stderr, "amdim-train: step %llu epoch %llu: probes mlp %.4f lin %.4f, train acc %.3f/%.3f, lr %.3g, %.1f pairs/s, data wait %.0f%%\n",
                (unsigned long long)step, (unsigned long long)epoch, iv->cls_mlp * k, iv->cls_lin * k, acc_m, acc_l, lr,
                dt > 0 ? iv->pairs / dt : 0, 100 * wait);
    else if (amdim_model_get_config(m)->mixtures > 1)
        fprintf(stderr, "amdim-train: step %llu epoch %llu: loss %.4f (1t5 %.4f 1t7 %.4f 5t5 %.4f reg %.4f mixture entropy %.4f) probes %.4f/%.4f acc %.3f/%.3f, lr %.3g, %.1f pairs/s, data wait %.0f%%\n",
                (unsigned long long)step, (unsigned long long)epoch, iv->total * k, iv->nce_1t5 * k, iv->nce_1t7 * k,
                iv->nce_5t5 * k, iv->reg * k, iv->mix_entropy * k, iv->cls_mlp * k, iv->cls_lin * k, acc_m, acc_l, lr,
                dt > 0 ? iv->pairs / dt : 0, 100 * wait);
    else
        fprintf(stderr, "amdim-train: step %llu epoch %llu: loss %.4f (1t5 %.4f 1t7 %.4f 5t5 %.4f reg %.4f) probes %.4f/%.4f acc %.3f/%.3f, lr %.3g, %.1f pairs/s, data wait %.0f%%\n",
                (unsigned long long)step, (unsigned long long)epoch, iv->total * k, iv->nce_1t5 * k, iv->nce_1t7 * k,
                iv->nce_5t5 * k, iv->reg * k, iv->cls_mlp * k, iv->cls_lin * k, acc_m, acc_l, lr,
                dt > 0 ? iv->pairs / dt : 0, 100 * wait);
    /* %.17g: losses round-trip exactly, so runs can be compared bit for bit */
    char line[1024];
    int len = snprintf(line, sizeof line,
            "{\"kind\":\"train\",\"step\":%llu,\"epoch\":%llu,\"loss\":%.17g,\"nce_1t5\":%.17g,\"nce_1t7\":%.17g,"
            "\"nce_5t5\":%.17g,\"reg\":%.17g,\"cls_mlp\":%.17g,\"cls_lin\":%.17g,\"train_acc_mlp\":%.6g,"
            "\"train_acc_lin\":%.6g,\"lr\":%.9g,\"pairs_per_s\":%.3f,\"data_wait\":%.4f,\"steps\":%llu",
            (unsigned long long)step, (unsigned long long)epoch, iv->total * k, iv->nce_1t5 * k, iv->nce_1t7 * k,
            iv->nce_5t5 * k, iv->reg * k, iv->cls_mlp * k, iv->cls_lin * k, isnan(acc_m) ? -1.0 : acc_m,
            isnan(acc_l) ? -1.0 : acc_l, lr, dt > 0 ? iv->pairs / dt : 0, wait, (unsigned long long)iv->steps);
    if (amdim_model_get_config(m)->mixtures > 1 && !probes_only)
        len += snprintf(line + len, sizeof line - (size_t)len, ",\"mix_entropy\":%.17g", iv->mix_entropy * k);
    len += snprintf(line + len, sizeof line - (size_t)len, "}\n");
    memset(iv, 0, sizeof *iv);
    iv->t0 = now;
    iv->wait0 = wait_now;
    AMDIM_ASSERT(len < (int)sizeof line);
    return amdim_output_write(metrics, line, (size_t)len, err, n);
}

/* Resuming from the checkpoint of `step`: metrics.jsonl keeps its complete
 * lines up to that step. Lines after it were logged by a run killed before
 * its next checkpoint (the resumed run logs those steps again), and a line
 * cut mid-way would have the next line glued on. A metrics file that is
 * not a regular file (a device, a FIFO) is left alone. */
static int trim_metrics(const char *path, uint64_t step, char *err, size_t n)
{
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? AMDIM_OK : amdim_fail(err, n, AMDIM_E_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size == 0) {
        close(fd);
        return AMDIM_OK;
    }
    size_t size = (size_t)sb.st_size, keep = 0, dropped = 0;
    char *text = malloc(size + 1);
    ssize_t got = text ? pread(fd, text, size, 0) : -1;
    if (got != (ssize_t)size) {
        int e = errno;
        free(text);
        close(fd);
        return amdim_fail(err, n, AMDIM_E_IO, "cannot read %s: %s", path, got < 0 ? strerror(e) : "short read");
    }
    text[size] = 0;
    for (size_t at = 0; at < size;) {
        char *nl = memchr(text + at, '\n', size - at);
        if (!nl)
            break; /* cut mid-line */
        *nl = 0;
        const char *sp = strstr(text + at, "\"step\":");
        if (sp && strtoull(sp + 7, NULL, 10) > step)
            break;
        at = keep = (size_t)(nl - text) + 1;
    }
    for (size_t i = keep; i < size; i++)
        dropped += text[i] == '\n' || text[i] == 0 || i + 1 == size;
    free(text);
    int st = AMDIM_OK;
    if (keep < size) {
        if (ftruncate(fd, (off_t)keep) != 0)
            st = amdim_fail(err, n, AMDIM_E_IO, "cannot truncate %s: %s", path, strerror(errno));
        else
            fprintf(stderr, "amdim-train: %s: dropped %zu line%s after step %llu (logged after that checkpoint, or cut "
                            "mid-line); the resumed run logs those steps again\n",
                    path, dropped, dropped == 1 ? "" : "s", (unsigned long long)step);
    }
    close(fd);
    return st;
}

/* After the first step: the backend's algorithm choices (cuDNN's on CUDA)
 * to stderr and, as one JSON string, to metrics.jsonl: a run records how
 * it convolved, so a rerun on the same GPU model can be compared bit for
 * bit. Nothing on the CPU. */
static int log_algorithms(amdim_output *metrics, const amdim_model *m, char *err, size_t n)
{
    size_t len = amdim_model_algorithms(m, NULL, 0);
    if (!len || !metrics)
        return AMDIM_OK;
    char *text = malloc(len + 1), *line = malloc(2 * len + 128);
    if (!text || !line) {
        free(text), free(line);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    }
    amdim_model_algorithms(m, text, len + 1);
    fprintf(stderr, "amdim-train: cuDNN algorithms:\n%s", text);
    size_t k = (size_t)sprintf(line, "{\"kind\":\"algorithms\",\"step\":%llu,\"cudnn\":\"",
                               (unsigned long long)amdim_model_updates(m));
    for (size_t i = 0; i < len; i++) { /* the table's text holds no quote or backslash */
        if (text[i] == '\n')
            line[k++] = '\\', line[k++] = 'n';
        else if ((unsigned char)text[i] >= 32 && text[i] != '"' && text[i] != '\\')
            line[k++] = text[i];
    }
    k += (size_t)sprintf(line + k, "\"}\n");
    int st = amdim_output_write(metrics, line, k, err, n);
    free(text), free(line);
    return st;
}

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

int amdim_train_run(const amdim_train_options *o, char *err, size_t n)
{
    amdim_run_plan plan;
    amdim_loader_request req;
    int st = amdim_run_plan_begin(o, &plan, &req, err, n);
    if (st)
        return st;
    const char *dir = plan.dir;
    int resuming = plan.resuming, probes = plan.probes;
    const amdim_model_config *cfg = &plan.cfg;
    amdim_checkpoint_info *ci = &plan.ci;
    amdim_loader *l;
    char why[2048];
    if ((st = amdim_loader_attach(&l, o->in_fd, &req, why, sizeof why))) {
        amdim_run_plan_end(&plan);
        return amdim_fail(err, n, st, "attaching to amdim-load: %s", why);
    }
    const amdim_loader_info *li = amdim_loader_get_info(l);
    amdim_model *m = NULL;
    int rank0 = !o->comm || o->comm->rank == 0, ranks = o->comm ? o->comm->size : 1;
    uint32_t global_batch = li->batch * (uint32_t)ranks;
    amdim_output metrics = {.fd = -1}, *mout = NULL; /* rank 0 alone logs */
    uint32_t registered = 0; /* rings registered with the model */
    if ((st = amdim_run_plan_configure(o, li, &plan, err, n)) || (st = amdim_run_plan_model(o, li, &plan, &m, err, n)) ||
        (st = ranks_agree(o, li, &plan, m, err, n)))
        goto done;
    /* every rank starts from rank 0's state, whatever each read */
    if ((st = amdim_model_bcast_state(m, 0))) {
        amdim_fail(err, n, st, "%s", amdim_model_error(m));
        goto done;
    }
    /* compute threads: the cores the loader's workers leave, at least one */
    int threads = o->threads > 0 ? o->threads : amdim_cpu_count() - (int)li->workers;
    threads = threads < 1 ? 1 : threads;
    if ((st = amdim_model_set_threads(m, threads))) {
        amdim_fail(err, n, st, "%s", amdim_model_error(m));
        goto done;
    }
    /* the views travel from the loader's rings: page-locked once (DMA on a GPU) */
    for (; registered < li->workers; registered++) {
        void *base;
        size_t bytes;
        amdim_loader_ring_memory(l, registered, &base, &bytes);
        if (amdim_model_register_host(m, base, bytes)) {
            fprintf(stderr, "amdim-train: warning: ring %u stays pageable (%s); copies to the device are slower\n",
                    registered, amdim_model_error(m));
            break;
        }
    }
    char mpath[4300];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", dir);
    if (rank0) {
        /* a new run starts the file afresh; a resumed one continues it from its checkpoint's step */
        struct stat sb;
        if (!resuming && stat(mpath, &sb) == 0 && S_ISREG(sb.st_mode) && truncate(mpath, 0) != 0) {
            st = amdim_fail(err, n, AMDIM_E_IO, "cannot truncate %s: %s", mpath, strerror(errno));
            goto done;
        }
        if ((resuming && (st = trim_metrics(mpath, ci->step, err, n))) ||
            (st = amdim_output_open(&metrics, mpath, AMDIM_OUTPUT_APPEND, err, n)))
            goto done;
        mout = &metrics;
    }
    static const char *objn[] = {"nce", "jsd", "dv"};
    if (rank0 && ranks > 1)
        fprintf(stderr, "amdim-train: %d ranks, %u pairs each of every global batch of %u; BatchNorm statistics %s\n", ranks,
                li->batch, global_batch, o->comm->sync_bn ? "over the global batch (--sync-bn)" : "per rank");
    if (rank0)
    fprintf(stderr, "amdim-train: %s %s: device %s %s (%d compute thread%s beside %u loader worker%s), %d px encoder ndf %d n_rkhs %d depth %d use_bn %d, objective %s, tclip %g, "
                    "%d classes, batch %u, lr %g (warm-up %d, x%g at epochs",
            resuming ? "resuming" : probes ? "classifier phase" : "run", dir, amdim_device_name(amdim_model_device(m)),
            amdim_precision_name(amdim_model_precision(m)),
            threads, threads == 1 ? "" : "s", li->workers, li->workers == 1 ? "" : "s",
            cfg->encoder_size, cfg->ndf, cfg->n_rkhs,
            cfg->n_depth, cfg->use_bn, objn[cfg->objective], cfg->tclip, cfg->n_classes, global_batch, cfg->lr, cfg->warmup,
            cfg->lr_decay);
    for (int i = 0; rank0 && i < cfg->n_milestones; i++)
        fprintf(stderr, " %d", cfg->milestones[i]);
    if (rank0)
        fprintf(stderr, ")");
    if (rank0 && cfg->mixtures > 1)
        fprintf(stderr, ", mixtures %d (tau %g, entropy weight %g), probes on %s", cfg->mixtures, cfg->mix_tau,
                cfg->mix_entropy, cfg->probe_features ? "the mixture mean" : "r1");
    if (rank0)
    fprintf(stderr, ", seed %llu, from epoch %llu batch %llu (step %llu)%s\n", (unsigned long long)li->seed,
            (unsigned long long)li->start_epoch, (unsigned long long)li->start_batch,
            (unsigned long long)amdim_model_updates(m), ci->max_steps > 0 ? ", step-limited" : "");

    /* a live line with steps/s and time left, only on a terminal */
    amdim_progress live;
    amdim_progress_init(&live, stderr, "amdim-train", "steps", 0);
    live.is_tty = live.is_tty && rank0;
    uint64_t first_step = amdim_model_updates(m), total_steps = 0;
    if (ci->max_steps >= 0)
        total_steps = (uint64_t)ci->max_steps - first_step;
    else if (li->epochs > 0)
        total_steps = li->epochs * li->batches_per_epoch - li->start_batch;
    interval iv;
    memset(&iv, 0, sizeof iv);
    iv.t0 = amdim_now();
    uint64_t epoch = li->start_epoch, last_ckpt = UINT64_MAX;
    ci->next_epoch = li->start_epoch;
    ci->next_batch = li->start_batch;
    /* Double-buffered input: batch k+1 is taken from the loader and its
     * copy started into the other input slot before step k runs, so the
     * copy overlaps the step; its loader slot is released once the copy is
     * complete (the loader lends one batch at a time). */
    amdim_batch held; /* borrowed from the loader while its copy runs */
    batch_meta cur = {0}, nxt = {0};
    int slot = 0, have_cur = 0, ended = 0;
    for (;;) {
        int stop = cancelled(o, err, n);
        if (stop < 0) {
            st = stop;
            break;
        }
        if (stop) {
            st = amdim_fail(err, n, AMDIM_E_CANCELLED, "interrupted");
            break;
        }
        if (ci->max_steps >= 0 && amdim_model_updates(m) >= (uint64_t)ci->max_steps)
            break;
        int rc;
        if (!have_cur) { /* the first batch: nothing to overlap with */
            if (ended || (rc = take_batch(l, m, slot, &held, 1, err, n)) == 1)
                break;
            if (rc) {
                st = rc;
                break;
            }
            cur = meta_of(&held);
        }
        /* the next batch, unless this step is the last one allowed */
        int ahead = 0;
        if (!ended && !(ci->max_steps >= 0 && amdim_model_updates(m) + 1 >= (uint64_t)ci->max_steps)) {
            rc = take_batch(l, m, 1 - slot, &held, 0, err, n);
            if (rc < 0) {
                st = rc;
                break;
            }
            ended = rc == 1;
            ahead = rc == 0;
            if (ahead)
                nxt = meta_of(&held);
        }
        epoch = cur.epoch;
        amdim_step_stats s;
        watch(o, AMDIM_WATCH_STEP, 1);
        rc = probes ? amdim_model_train_probes_step_staged(m, slot, (int)cur.epoch, &s)
                    : amdim_model_train_step_staged(m, slot, (int)cur.epoch, &s);
        watch(o, AMDIM_WATCH_STEP, 0);
        if (ahead) { /* its copy ran beside the step: the loader may have the slot back */
            int rw = amdim_model_stage_wait(m, 1 - slot);
            amdim_loader_release(l, &held);
            if (rw && !rc)
                rc = rw;
        }
        int last = cur.last;
        ci->next_epoch = last ? cur.epoch + 1 : cur.epoch;
        ci->next_batch = last ? 0 : cur.index + 1;
        uint32_t pairs = cur.count;
        cur = nxt;
        have_cur = ahead;
        slot = 1 - slot;
        if (rc) {
            st = amdim_fail(err, n, rc, "%s", amdim_model_error(m));
            break;
        }
        if (!isfinite(s.total)) {
            st = amdim_fail(err, n, AMDIM_E_INVALID, "the loss became %g at step %llu (epoch %llu); stopping", s.total,
                            (unsigned long long)amdim_model_updates(m), (unsigned long long)epoch);
            break;
        }
        iv.nce_1t5 += s.nce_1t5, iv.nce_1t7 += s.nce_1t7, iv.nce_5t5 += s.nce_5t5, iv.reg += s.reg;
        iv.cls_mlp += s.cls_mlp, iv.cls_lin += s.cls_lin, iv.total += s.total, iv.mix_entropy += s.mix_entropy;
        iv.correct_mlp += (uint64_t)s.correct_mlp, iv.correct_lin += (uint64_t)s.correct_lin;
        iv.labelled += (uint64_t)s.labelled, iv.pairs += (uint64_t)pairs * (uint64_t)ranks, iv.steps++;
        uint64_t step = amdim_model_updates(m);
        if (step == first_step + 1 && (st = log_algorithms(mout, m, err, n)))
            break;
        int log_now = o->log_every > 0 && step % (uint64_t)o->log_every == 0;
        int ckpt_now = !last && o->ckpt_every > 0 && step % (uint64_t)o->ckpt_every == 0;
        if (log_now || last || ckpt_now)
            amdim_progress_clear(&live); /* lines print under the live line */
        else if (live.is_tty)
            amdim_progress_update(&live, step - first_step, total_steps);
        if (log_now && (st = log_interval(mout, &iv, m, epoch, amdim_loader_wait_seconds(l), probes, err, n)))
            break;
        if ((last || ckpt_now) && (st = amdim_model_check_replicas(m))) {
            amdim_fail(err, n, st, "%s", amdim_model_error(m));
            break;
        }
        if (last) {
            if (iv.steps && (st = log_interval(mout, &iv, m, epoch, amdim_loader_wait_seconds(l), probes, err, n)))
                break;
            /* rank 0 evaluates; its refreshed BatchNorm statistics go to every
             * rank, which wait for them without the watchdog counting */
            watch(o, AMDIM_WATCH_HOLD, 1);
            if (rank0 && (st = evaluate(o, m, li->preset, mout, epoch, err, n)))
                break;
            st = amdim_model_bcast_state(m, 0);
            watch(o, AMDIM_WATCH_HOLD, 0);
            if (st) {
                amdim_fail(err, n, st, "%s", amdim_model_error(m));
                break;
            }
        }
        if (last || ckpt_now) {
            /* a failed save (disk full) is reported and training goes on; a diverged model stops */
            int s2 = rank0 ? save(dir, m, ci, o->keep, why, sizeof why) : AMDIM_OK;
            if (s2 == AMDIM_OK)
                last_ckpt = step;
            else if (s2 == AMDIM_E_INVALID) {
                st = amdim_fail(err, n, s2, "%s", why);
                break;
            }
        }
    }
    amdim_progress_clear(&live);
    if (iv.steps && st != AMDIM_E_IO) {
        int s2 = log_interval(mout, &iv, m, epoch, amdim_loader_wait_seconds(l), probes, why, sizeof why);
        if (s2 && st == AMDIM_OK)
            st = amdim_fail(err, n, s2, "%s", why);
    }
    /* Checkpoint before the final evaluation, so a run stopped here and
     * resumed continues from exactly the state an unbroken run has. */
    if (rank0 && (st == AMDIM_OK || st == AMDIM_E_CANCELLED) && last_ckpt != amdim_model_updates(m)) {
        int s2 = save(dir, m, ci, o->keep, why, sizeof why);
        if (s2 && st == AMDIM_OK)
            st = amdim_fail(err, n, s2, "final checkpoint: %s", why);
        else if (s2 == AMDIM_OK)
            fprintf(stderr, "amdim-train: checkpoint at step %llu in %s\n", (unsigned long long)amdim_model_updates(m), dir);
    }
    if (rank0 && st == AMDIM_OK && last_ckpt != amdim_model_updates(m))
        st = evaluate(o, m, li->preset, mout, epoch, err, n);
done:
    for (uint32_t i = 0; m && i < registered; i++) {
        void *base;
        size_t bytes;
        amdim_loader_ring_memory(l, i, &base, &bytes);
        amdim_model_unregister_host(m, base);
    }
    if (mout) {
        int s2 = amdim_output_close(mout, why, sizeof why);
        if (s2 && st == AMDIM_OK)
            st = amdim_fail(err, n, s2, "%s", why);
    }
    amdim_model_destroy(m);
    amdim_loader_close(l);
    amdim_run_plan_end(&plan);
    return st;
}
