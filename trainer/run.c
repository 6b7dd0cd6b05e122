/* The training run (see amdim_run.h). */
#include "amdim_run.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amdim_augment.h"
#include "amdim_checkpoint.h"
#include "amdim_dataset.h"
#include "amdim_loader.h"
#include "ops.h"

void amdim_train_options_default(amdim_train_options *o)
{
    memset(o, 0, sizeof *o);
    o->eval_split = "test";
    o->eval_refresh = 20;
    o->eval_batch = 100;
    o->device = "auto";
    o->epochs = -1;
    o->steps = -1;
    o->log_every = 50;
    o->keep = 3;
    o->model = (amdim_model_overrides){-1, -1, -1, -1, -1, -1, -1, -1.0f, -1.0f};
}

int amdim_evaluate_dataset(amdim_model *m, const char *path, const char *split, const char *preset, int refresh,
                           int batch, amdim_eval_result *r, char *err, size_t n)
{
    memset(r, 0, sizeof *r);
    amdim_dataset *ds;
    char why[1024];
    int st = amdim_dataset_open(&ds, path, why, sizeof why);
    if (st)
        return amdim_fail(err, n, st, "evaluation data: %s", why);
    amdim_split_info info;
    if ((st = amdim_dataset_split_info(ds, split, &info))) {
        amdim_fail(err, n, st, "evaluation data: %s", amdim_dataset_error(ds));
        amdim_dataset_close(ds);
        return st;
    }
    amdim_augment_config ac;
    amdim_augment_preset(preset, &ac);
    const amdim_model_config *mc = amdim_model_get_config(m);
    if (ac.size != mc->encoder_size) {
        amdim_dataset_close(ds);
        return amdim_fail(err, n, AMDIM_E_INVALID, "preset %s makes %d px images, the model takes %d px", preset, ac.size,
                          mc->encoder_size);
    }
    amdim_augmenter *aug;
    if ((st = amdim_augmenter_create(&aug, &ac))) {
        amdim_dataset_close(ds);
        return amdim_fail(err, n, st, "augmenter");
    }
    size_t view = (size_t)ac.size * ac.size * 3;
    int K = mc->n_classes;
    uint8_t *imgs = malloc(view * (size_t)batch);
    int32_t *labels = malloc((size_t)batch * sizeof *labels);
    float *lm = malloc((size_t)batch * K * sizeof(float)), *ll = malloc((size_t)batch * K * sizeof(float));
    if (!imgs || !labels || !lm || !ll) {
        st = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
        goto done;
    }
    /* pass 0: refresh BatchNorm statistics; pass 1: measure */
    uint64_t hit_m = 0, hit_l = 0, counted = 0;
    for (int pass = 0; pass < 2 && st == AMDIM_OK; pass++) {
        int batches = 0;
        for (uint64_t i0 = 0; i0 < info.records && st == AMDIM_OK; i0 += (uint64_t)batch) {
            if (pass == 0 && batches >= refresh)
                break;
            int nb = 0;
            for (uint64_t i = i0; i < info.records && nb < batch; i++, nb++) {
                amdim_record rec;
                if ((st = amdim_dataset_get(ds, split, i, &rec))) {
                    amdim_fail(err, n, st, "%s", amdim_dataset_error(ds));
                    break;
                }
                if ((st = amdim_augment_test_view(aug, &rec, imgs + (size_t)nb * view))) {
                    amdim_fail(err, n, st, "%s split %s record %llu: %s", path, split, (unsigned long long)i,
                               amdim_augmenter_error(aug));
                    break;
                }
                labels[nb] = rec.label;
            }
            if (st)
                break;
            if (pass == 0) {
                if (nb >= 2 && (st = amdim_model_refresh_bn(m, imgs, nb)))
                    amdim_fail(err, n, st, "%s", amdim_model_error(m));
            } else {
                if ((st = amdim_model_evaluate(m, imgs, nb, NULL, lm, ll))) {
                    amdim_fail(err, n, st, "%s", amdim_model_error(m));
                    break;
                }
                for (int k = 0; k < nb; k++) {
                    if (labels[k] < 0 || labels[k] >= K)
                        continue;
                    int bm = 0, bl = 0;
                    for (int c = 1; c < K; c++) {
                        bm = lm[(size_t)k * K + c] > lm[(size_t)k * K + bm] ? c : bm;
                        bl = ll[(size_t)k * K + c] > ll[(size_t)k * K + bl] ? c : bl;
                    }
                    hit_m += bm == labels[k];
                    hit_l += bl == labels[k];
                    counted++;
                }
            }
            batches++;
        }
    }
    r->images = counted;
    r->acc_mlp = counted ? (double)hit_m / counted : 0;
    r->acc_lin = counted ? (double)hit_l / counted : 0;
    if (st == AMDIM_OK && counted == 0)
        st = amdim_fail(err, n, AMDIM_E_EMPTY, "split %s of %s has no labelled records to evaluate on", split, path);
done:
    free(imgs);
    free(labels);
    free(lm);
    free(ll);
    amdim_augmenter_destroy(aug);
    amdim_dataset_close(ds);
    return st;
}

/* ---- the run ---------------------------------------------------------------- */

typedef struct {
    double nce_1t5, nce_1t7, nce_5t5, reg, cls_mlp, cls_lin, total;
    uint64_t correct_mlp, correct_lin, labelled, pairs, steps;
    double t0, wait0;
} interval;

static void log_interval(FILE *metrics, interval *iv, amdim_model *m, uint64_t epoch, double wait_now, int probes_only)
{
    double now = amdim_now(), dt = now - iv->t0;
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
    else
        fprintf(stderr, "amdim-train: step %llu epoch %llu: loss %.4f (1t5 %.4f 1t7 %.4f 5t5 %.4f reg %.4f) probes %.4f/%.4f acc %.3f/%.3f, lr %.3g, %.1f pairs/s, data wait %.0f%%\n",
                (unsigned long long)step, (unsigned long long)epoch, iv->total * k, iv->nce_1t5 * k, iv->nce_1t7 * k,
                iv->nce_5t5 * k, iv->reg * k, iv->cls_mlp * k, iv->cls_lin * k, acc_m, acc_l, lr,
                dt > 0 ? iv->pairs / dt : 0, 100 * wait);
    /* %.17g: losses round-trip exactly, so runs can be compared bit for bit */
    fprintf(metrics,
            "{\"kind\":\"train\",\"step\":%llu,\"epoch\":%llu,\"loss\":%.17g,\"nce_1t5\":%.17g,\"nce_1t7\":%.17g,"
            "\"nce_5t5\":%.17g,\"reg\":%.17g,\"cls_mlp\":%.17g,\"cls_lin\":%.17g,\"train_acc_mlp\":%.6g,"
            "\"train_acc_lin\":%.6g,\"lr\":%.9g,\"pairs_per_s\":%.3f,\"data_wait\":%.4f,\"steps\":%llu}\n",
            (unsigned long long)step, (unsigned long long)epoch, iv->total * k, iv->nce_1t5 * k, iv->nce_1t7 * k,
            iv->nce_5t5 * k, iv->reg * k, iv->cls_mlp * k, iv->cls_lin * k, isnan(acc_m) ? -1.0 : acc_m,
            isnan(acc_l) ? -1.0 : acc_l, lr, dt > 0 ? iv->pairs / dt : 0, wait, (unsigned long long)iv->steps);
    fflush(metrics);
    memset(iv, 0, sizeof *iv);
    iv->t0 = now;
    iv->wait0 = wait_now;
}

static int evaluate(const amdim_train_options *o, amdim_model *m, const char *preset, FILE *metrics, uint64_t epoch,
                    char *err, size_t n)
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
    fprintf(metrics, "{\"kind\":\"eval\",\"step\":%llu,\"epoch\":%llu,\"test_acc_lin\":%.6f,\"test_acc_mlp\":%.6f,\"images\":%llu}\n",
            (unsigned long long)amdim_model_updates(m), (unsigned long long)epoch, r.acc_lin, r.acc_mlp,
            (unsigned long long)r.images);
    fflush(metrics);
    return AMDIM_OK;
}

static int save(const char *dir, amdim_model *m, amdim_checkpoint_info *ci, int keep, char *err, size_t n)
{
    ci->step = amdim_model_updates(m);
    int st = amdim_checkpoint_save(m, dir, ci, err, n);
    if (st) {
        fprintf(stderr, "amdim-train: checkpoint at step %llu failed (%s); the previous one is intact\n",
                (unsigned long long)ci->step, err);
        return st;
    }
    amdim_checkpoint_prune(dir, keep);
    return AMDIM_OK;
}

int amdim_train_run(const amdim_train_options *o, char *err, size_t n)
{
    int st = AMDIM_OK;
    const char *dir = o->resume_dir ? o->resume_dir : o->out_dir;
    if (!dir)
        return amdim_fail(err, n, AMDIM_E_INVALID, "give --out RUN for a new run or --resume RUN");
    if (strcmp(o->device, "cuda") == 0)
        return amdim_fail(err, n, AMDIM_E_UNSUPPORTED, "--device cuda: this build has no CUDA training path yet; use --device cpu");
    if (strcmp(o->device, "auto") != 0 && strcmp(o->device, "cpu") != 0)
        return amdim_fail(err, n, AMDIM_E_INVALID, "--device must be auto, cpu or cuda, not %s", o->device);
    amdim_model_config cfg;
    amdim_checkpoint_info ci = {0};
    char ckpt[4200] = "";
    int resuming = o->resume_dir != NULL, probes = o->init_path != NULL;
    amdim_loader_request req = {.start_epoch = -1, .start_batch = -1, .epochs = o->epochs > 0 ? o->epochs : -1};
    if (resuming) {
        if (amdim_checkpoint_latest(dir, ckpt, sizeof ckpt))
            return amdim_fail(err, n, AMDIM_E_NOT_FOUND, "%s holds no complete checkpoint to resume from", dir);
        if ((st = amdim_checkpoint_read_meta(ckpt, &cfg, &ci, err, n)))
            return st;
        probes = ci.probes_only;
        if (ci.epochs > 0 && (int64_t)ci.next_epoch >= ci.epochs)
            return amdim_fail(err, n, AMDIM_E_INVALID, "the run in %s is complete (%lld epochs)", dir, (long long)ci.epochs);
        req.has_seed = 1;
        req.seed = ci.seed;
        req.start_epoch = (int64_t)ci.next_epoch;
        req.start_batch = (int64_t)ci.next_batch;
        req.epochs = ci.epochs > 0 ? ci.epochs - (int64_t)ci.next_epoch : 1000000;
        if (o->steps > 0)
            ci.max_steps = o->steps;
        if (ci.max_steps >= 0 && ci.step >= (uint64_t)ci.max_steps)
            return amdim_fail(err, n, AMDIM_E_INVALID, "the run in %s already made its %lld steps (give a larger --steps)",
                              dir, (long long)ci.max_steps);
    } else {
        struct stat sb;
        char probe[4200];
        if (stat(dir, &sb) == 0 && amdim_checkpoint_latest(dir, probe, sizeof probe) == AMDIM_OK)
            return amdim_fail(err, n, AMDIM_E_EXISTS, "%s already holds a run (%s); use --resume %s or another --out", dir,
                              probe, dir);
        if (mkdir(dir, 0755) != 0 && errno != EEXIST)
            return amdim_fail(err, n, AMDIM_E_IO, "cannot create %s: %s", dir, strerror(errno));
        if (o->has_seed) {
            req.has_seed = 1;
            req.seed = o->seed;
        }
        if (o->epochs < 0 && o->steps >= 0)
            req.epochs = 1000000; /* step-limited: as many epochs as it takes */
    }
    amdim_loader *l;
    char why[2048];
    if ((st = amdim_loader_attach(&l, o->in_fd, &req, why, sizeof why)))
        return amdim_fail(err, n, st, "attaching to amdim-load: %s", why);
    const amdim_loader_info *li = amdim_loader_get_info(l);
    amdim_model *m = NULL;
    FILE *metrics = NULL;
    if (o->batch && (uint32_t)o->batch != li->batch) {
        st = amdim_fail(err, n, AMDIM_E_INVALID, "amdim-train --batch %d, but amdim-load delivers batches of %u: give both the same --batch",
                        o->batch, li->batch);
        goto done;
    }
    if (li->size != 32 && li->size != 64 && li->size != 128) {
        st = amdim_fail(err, n, AMDIM_E_INVALID, "amdim-load makes %ux%u views; the encoders take 32, 64 or 128 px", li->size, li->size);
        goto done;
    }
    if (resuming) {
        if (cfg.encoder_size != (int)li->size || (ci.batch && (uint32_t)ci.batch != li->batch) || strcmp(ci.preset, li->preset) != 0) {
            st = amdim_fail(err, n, AMDIM_E_INVALID,
                            "the checkpoint %s was trained on %s preset %d px views in batches of %d, but amdim-load now delivers %s %u px in batches of %u",
                            ckpt, ci.preset, cfg.encoder_size, ci.batch, li->preset, li->size, li->batch);
            goto done;
        }
    } else if (probes) {
        amdim_checkpoint_info pi;
        if ((st = amdim_checkpoint_read_meta(o->init_path, &cfg, &pi, why, sizeof why))) {
            amdim_fail(err, n, st, "%s", why);
            goto done;
        }
        if (cfg.encoder_size != (int)li->size) {
            st = amdim_fail(err, n, AMDIM_E_INVALID, "the encoder in %s takes %d px images, amdim-load delivers %u px (preset %s)",
                            o->init_path, cfg.encoder_size, li->size, li->preset);
            goto done;
        }
        if (o->model.n_classes > 0 || li->classes > 0)
            cfg.n_classes = o->model.n_classes > 0 ? o->model.n_classes : li->classes;
        if (o->model.lr > 0)
            cfg.lr = o->model.lr;
        if (o->model.warmup >= 0)
            cfg.warmup = o->model.warmup;
        ci.seed = li->seed;
        ci.epochs = o->epochs > 0 ? o->epochs : (int64_t)li->epochs;
        ci.max_steps = o->steps;
    } else {
        amdim_model_config_default(&cfg, (int)li->size);
        const amdim_model_overrides *v = &o->model;
        if (v->ndf > 0) cfg.ndf = v->ndf;
        if (v->n_rkhs > 0) cfg.n_rkhs = v->n_rkhs;
        if (v->n_depth > 0) cfg.n_depth = v->n_depth;
        if (v->use_bn >= 0) cfg.use_bn = v->use_bn;
        if (v->objective >= 0) cfg.objective = v->objective;
        if (v->tclip > 0) cfg.tclip = v->tclip;
        if (v->lr > 0) cfg.lr = v->lr;
        if (v->warmup >= 0) cfg.warmup = v->warmup;
        cfg.n_classes = v->n_classes > 0 ? v->n_classes : li->classes > 0 ? li->classes : 1;
        if (li->size > 32) { /* ImageNet / STL schedule: [30, 45] of 50 epochs for the ImageNet preset */
            if (strcmp(li->preset, "imagenet") == 0) {
                cfg.milestones[0] = 30;
                cfg.milestones[1] = 45;
            }
        }
        amdim_augment_config ac;
        amdim_augment_preset(li->preset, &ac);
        memcpy(cfg.mean, ac.mean, sizeof cfg.mean);
        memcpy(cfg.std, ac.std, sizeof cfg.std);
        cfg.seed = li->seed;
        ci.seed = li->seed;
        ci.epochs = o->epochs > 0 ? o->epochs : (o->steps >= 0 ? -1 : (int64_t)li->epochs);
        ci.max_steps = o->steps;
    }
    /* Check the evaluation data now, not after the first epoch. */
    if (o->eval_path) {
        amdim_dataset *eds;
        amdim_split_info einfo;
        if ((st = amdim_dataset_open(&eds, o->eval_path, why, sizeof why))) {
            amdim_fail(err, n, st, "--eval: %s", why);
            goto done;
        }
        st = amdim_dataset_split_info(eds, o->eval_split, &einfo);
        if (st)
            amdim_fail(err, n, st, "--eval: %s", amdim_dataset_error(eds));
        else if (strcmp(li->preset, "cifar") == 0 && (einfo.width > li->size || einfo.height > li->size || !einfo.width))
            st = amdim_fail(err, n, AMDIM_E_INVALID, "--eval split %s holds %ux%u images; the cifar preset takes up to %ux%u",
                            o->eval_split, einfo.width, einfo.height, li->size, li->size);
        else if (einfo.classes == 0)
            st = amdim_fail(err, n, AMDIM_E_INVALID, "--eval split %s of %s is unlabelled", o->eval_split, o->eval_path);
        amdim_dataset_close(eds);
        if (st)
            goto done;
    }
    snprintf(ci.preset, sizeof ci.preset, "%s", li->preset);
    ci.batch = (int)li->batch;
    if ((st = amdim_model_create(&m, &cfg, why, sizeof why))) {
        amdim_fail(err, n, st, "%s", why);
        goto done;
    }
    if (resuming && (st = amdim_checkpoint_load(m, ckpt, AMDIM_CKPT_OPTIMIZER, err, n)))
        goto done;
    ci.probes_only = probes;
    if (resuming && probes) {
        amdim_model_freeze_encoder(m);
    } else if (probes) {
        if ((st = amdim_checkpoint_load(m, o->init_path, AMDIM_CKPT_ENCODER_ONLY, err, n)))
            goto done;
        amdim_model_reset_probes(m, li->seed);
    }
    char mpath[4300];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", dir);
    metrics = fopen(mpath, resuming ? "a" : "w");
    if (!metrics) {
        st = amdim_fail(err, n, AMDIM_E_IO, "cannot open %s: %s", mpath, strerror(errno));
        goto done;
    }
    static const char *objn[] = {"nce", "jsd", "dv"};
    fprintf(stderr, "amdim-train: %s %s: device cpu, %d px encoder ndf %d n_rkhs %d depth %d use_bn %d, objective %s, tclip %g, "
                    "%d classes, batch %u, lr %g (warm-up %d, x%g at epochs",
            resuming ? "resuming" : probes ? "classifier phase" : "run", dir, cfg.encoder_size, cfg.ndf, cfg.n_rkhs,
            cfg.n_depth, cfg.use_bn, objn[cfg.objective], cfg.tclip, cfg.n_classes, li->batch, cfg.lr, cfg.warmup,
            cfg.lr_decay);
    for (int i = 0; i < cfg.n_milestones; i++)
        fprintf(stderr, " %d", cfg.milestones[i]);
    fprintf(stderr, "), seed %llu, from epoch %llu batch %llu (step %llu)%s\n", (unsigned long long)li->seed,
            (unsigned long long)li->start_epoch, (unsigned long long)li->start_batch,
            (unsigned long long)amdim_model_updates(m), ci.max_steps > 0 ? ", step-limited" : "");

    interval iv;
    memset(&iv, 0, sizeof iv);
    iv.t0 = amdim_now();
    uint64_t epoch = li->start_epoch, last_ckpt = UINT64_MAX;
    ci.next_epoch = li->start_epoch;
    ci.next_batch = li->start_batch;
    amdim_batch b;
    for (;;) {
        if (o->cancel && *o->cancel) {
            st = amdim_fail(err, n, AMDIM_E_CANCELLED, "interrupted");
            break;
        }
        if (ci.max_steps >= 0 && amdim_model_updates(m) >= (uint64_t)ci.max_steps)
            break;
        int rc = amdim_loader_next(l, &b);
        if (rc == 1)
            break;
        if (rc < 0) {
            st = amdim_fail(err, n, rc, "%s", amdim_loader_error(l));
            break;
        }
        epoch = b.epoch;
        amdim_step_stats s;
        rc = probes ? amdim_model_train_probes_step(m, b.view1, b.view2, b.labels, (int)b.count, (int)b.epoch, &s)
                    : amdim_model_train_step(m, b.view1, b.view2, b.labels, (int)b.count, (int)b.epoch, &s);
        int last = b.last_in_epoch;
        ci.next_epoch = last ? b.epoch + 1 : b.epoch;
        ci.next_batch = last ? 0 : b.index + 1;
        amdim_loader_release(l, &b);
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
        iv.cls_mlp += s.cls_mlp, iv.cls_lin += s.cls_lin, iv.total += s.total;
        iv.correct_mlp += (uint64_t)s.correct_mlp, iv.correct_lin += (uint64_t)s.correct_lin;
        iv.labelled += (uint64_t)s.labelled, iv.pairs += b.count, iv.steps++;
        uint64_t step = amdim_model_updates(m);
        if (o->log_every > 0 && step % (uint64_t)o->log_every == 0)
            log_interval(metrics, &iv, m, epoch, amdim_loader_wait_seconds(l), probes);
        if (last) {
            if (iv.steps)
                log_interval(metrics, &iv, m, epoch, amdim_loader_wait_seconds(l), probes);
            if ((st = evaluate(o, m, li->preset, metrics, epoch, err, n)))
                break;
            if (save(dir, m, &ci, o->keep, why, sizeof why) == AMDIM_OK)
                last_ckpt = step;
        } else if (o->ckpt_every > 0 && step % (uint64_t)o->ckpt_every == 0) {
            if (save(dir, m, &ci, o->keep, why, sizeof why) == AMDIM_OK)
                last_ckpt = step;
        }
    }
    if (iv.steps)
        log_interval(metrics, &iv, m, epoch, amdim_loader_wait_seconds(l), probes);
    /* Checkpoint before the final evaluation, so a run stopped here and
     * resumed continues from exactly the state an unbroken run has. */
    if ((st == AMDIM_OK || st == AMDIM_E_CANCELLED) && last_ckpt != amdim_model_updates(m)) {
        int s2 = save(dir, m, &ci, o->keep, why, sizeof why);
        if (s2 && st == AMDIM_OK)
            st = amdim_fail(err, n, s2, "final checkpoint: %s", why);
        else if (s2 == AMDIM_OK)
            fprintf(stderr, "amdim-train: checkpoint at step %llu in %s\n", (unsigned long long)amdim_model_updates(m), dir);
    }
    if (st == AMDIM_OK && last_ckpt != amdim_model_updates(m))
        st = evaluate(o, m, li->preset, metrics, epoch, err, n);
done:
    if (metrics)
        fclose(metrics);
    amdim_model_destroy(m);
    amdim_loader_close(l);
    return st;
}

int amdim_embed_dataset(amdim_model *m, const char *path, const char *split, const char *preset, int batch,
                        float **features, int32_t **labels, uint64_t *records, char *err, size_t n)
{
    *features = NULL;
    *labels = NULL;
    *records = 0;
    amdim_dataset *ds;
    char why[1024];
    int st = amdim_dataset_open(&ds, path, why, sizeof why);
    if (st)
        return amdim_fail(err, n, st, "%s", why);
    amdim_split_info info;
    if ((st = amdim_dataset_split_info(ds, split, &info))) {
        amdim_fail(err, n, st, "%s", amdim_dataset_error(ds));
        amdim_dataset_close(ds);
        return st;
    }
    amdim_augment_config ac;
    amdim_augment_preset(preset, &ac);
    const amdim_model_config *mc = amdim_model_get_config(m);
    int R = mc->n_rkhs;
    amdim_augmenter *aug = NULL;
    size_t view = (size_t)ac.size * ac.size * 3;
    float *f = malloc((info.records ? info.records : 1) * (size_t)R * sizeof(float));
    int32_t *lab = malloc((info.records ? info.records : 1) * sizeof *lab);
    uint8_t *imgs = malloc(view * (size_t)batch);
    if (!f || !lab || !imgs || amdim_augmenter_create(&aug, &ac)) {
        st = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for %llu features", (unsigned long long)info.records);
        goto done;
    }
    if (ac.size != mc->encoder_size) {
        st = amdim_fail(err, n, AMDIM_E_INVALID, "preset %s makes %d px images, the encoder takes %d px", preset, ac.size,
                        mc->encoder_size);
        goto done;
    }
    for (uint64_t i0 = 0; i0 < info.records && st == AMDIM_OK; i0 += (uint64_t)batch) {
        int nb = 0;
        for (uint64_t i = i0; i < info.records && nb < batch; i++, nb++) {
            amdim_record rec;
            if ((st = amdim_dataset_get(ds, split, i, &rec)) ||
                (st = amdim_augment_test_view(aug, &rec, imgs + (size_t)nb * view))) {
                amdim_fail(err, n, st, "%s split %s record %llu: %s", path, split, (unsigned long long)i,
                           st == AMDIM_OK ? "" : amdim_augmenter_error(aug));
                break;
            }
            lab[i] = rec.label;
        }
        if (st == AMDIM_OK && (st = amdim_model_evaluate(m, imgs, nb, f + i0 * (uint64_t)R, NULL, NULL)))
            amdim_fail(err, n, st, "%s", amdim_model_error(m));
    }
done:
    free(imgs);
    amdim_augmenter_destroy(aug);
    amdim_dataset_close(ds);
    if (st) {
        free(f);
        free(lab);
        return st;
    }
    *features = f;
    *labels = lab;
    *records = info.records;
    return AMDIM_OK;
}

int amdim_write_npy(const char *path, const char *dtype, const void *data, uint64_t rows, uint64_t cols, int two_d,
                    char *err, size_t n)
{
    char hdr[256];
    int len = two_d ? snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%llu, %llu), }", dtype,
                               (unsigned long long)rows, (unsigned long long)cols)
                    : snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%llu,), }", dtype,
                               (unsigned long long)rows);
    /* magic (6) + version (2) + length (2) + header, padded with spaces to 64 bytes, ending in \n */
    int total = 10 + len + 1;
    int pad = (64 - total % 64) % 64;
    memset(hdr + len, ' ', (size_t)pad);
    len += pad;
    hdr[len++] = '\n';
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot create %s: %s", tmp, strerror(errno));
    uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(len & 255), (uint8_t)(len >> 8)};
    size_t bytes = (size_t)rows * (two_d ? cols : 1) * 4;
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, (size_t)len, f) == (size_t)len &&
             fwrite(data, 1, bytes, f) == bytes;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return amdim_fail(err, n, AMDIM_E_IO, "writing %s failed: %s", path, strerror(e));
    }
    return AMDIM_OK;
}

/* ---- the raw-pixel baseline ---------------------------------------------- */

/* Gradients (overwritten) of the mean softmax cross-entropy over rows with
 * a label, for logits = x W^T + b. */
static void linear_softmax_step(const float *x, const int32_t *y, int nb, int dim, int K, const float *w, const float *b,
                                float *gw, float *gb, float *logits, float *dl)
{
    linear_forward(x, nb, dim, w, b, K, logits);
    int valid = 0;
    for (int r = 0; r < nb; r++)
        valid += y[r] >= 0 && y[r] < K;
    for (int r = 0; r < nb; r++) {
        float *l = logits + (size_t)r * K, *d = dl + (size_t)r * K;
        if (y[r] < 0 || y[r] >= K) {
            memset(d, 0, (size_t)K * 4);
            continue;
        }
        double mx = -1e300, sum = 0;
        for (int c = 0; c < K; c++)
            mx = l[c] > mx ? l[c] : mx;
        for (int c = 0; c < K; c++)
            sum += exp(l[c] - mx);
        for (int c = 0; c < K; c++)
            d[c] = (float)((exp(l[c] - mx) / sum - (c == y[r])) / (valid ? valid : 1));
    }
    memset(gw, 0, (size_t)K * dim * 4);
    memset(gb, 0, (size_t)K * 4);
    linear_backward(x, nb, dim, w, K, dl, NULL, gw, gb);
}

static int load_raw(amdim_dataset *ds, const char *split, float **x, int32_t **y, uint64_t *n, int *dim, char *err,
                    size_t en)
{
    amdim_split_info info;
    int st = amdim_dataset_split_info(ds, split, &info);
    if (st)
        return amdim_fail(err, en, st, "%s", amdim_dataset_error(ds));
    if (info.encoding != AMDIM_ENCODING_RAW || !info.width || !info.channels)
        return amdim_fail(err, en, AMDIM_E_UNSUPPORTED, "split %s is not raw pixels of one size (the baseline reads raw datasets)", split);
    *dim = (int)(info.width * info.height * info.channels);
    *n = info.records;
    *x = malloc(info.records * (size_t)*dim * sizeof(float));
    *y = malloc(info.records * sizeof(int32_t));
    if (!*x || !*y)
        return amdim_fail(err, en, AMDIM_E_NOMEM, "out of memory");
    for (uint64_t i = 0; i < info.records; i++) {
        amdim_record r;
        if ((st = amdim_dataset_get(ds, split, i, &r)))
            return amdim_fail(err, en, st, "%s", amdim_dataset_error(ds));
        for (int k = 0; k < *dim; k++)
            (*x)[i * (size_t)*dim + k] = r.payload[k] / 255.0f;
        (*y)[i] = r.label;
    }
    return AMDIM_OK;
}

int amdim_raw_pixel_baseline(const char *path, const char *train_split, const char *test_split, int epochs,
                             uint64_t seed, double *test_acc, char *err, size_t n)
{
    amdim_dataset *ds;
    char why[1024];
    int st = amdim_dataset_open(&ds, path, why, sizeof why);
    if (st)
        return amdim_fail(err, n, st, "%s", why);
    float *xtr = NULL, *xte = NULL, *w = NULL, *b = NULL, *mw = NULL, *vw = NULL, *mb = NULL, *vb = NULL;
    float *logits = NULL, *dl = NULL, *gw = NULL, *gb = NULL;
    int32_t *ytr = NULL, *yte = NULL;
    uint64_t ntr, nte;
    int dim, dim2;
    if ((st = load_raw(ds, train_split, &xtr, &ytr, &ntr, &dim, err, n)) ||
        (st = load_raw(ds, test_split, &xte, &yte, &nte, &dim2, err, n)))
        goto done;
    if (dim != dim2) {
        st = amdim_fail(err, n, AMDIM_E_INVALID, "splits %s and %s have images of different sizes", train_split, test_split);
        goto done;
    }
    int K = 0;
    for (uint64_t i = 0; i < ntr; i++)
        K = ytr[i] + 1 > K ? ytr[i] + 1 : K;
    /* standardise each pixel position with training statistics */
    for (int k = 0; k < dim; k++) {
        double m = 0, v = 0;
        for (uint64_t i = 0; i < ntr; i++)
            m += xtr[i * (size_t)dim + k];
        m /= (double)ntr;
        for (uint64_t i = 0; i < ntr; i++) {
            double d = xtr[i * (size_t)dim + k] - m;
            v += d * d;
        }
        double sd = sqrt(v / (double)ntr) + 1e-3;
        for (uint64_t i = 0; i < ntr; i++)
            xtr[i * (size_t)dim + k] = (float)((xtr[i * (size_t)dim + k] - m) / sd);
        for (uint64_t i = 0; i < nte; i++)
            xte[i * (size_t)dim + k] = (float)((xte[i * (size_t)dim + k] - m) / sd);
    }
    const int B = 256;
    w = calloc((size_t)K * dim, 4), b = calloc((size_t)K, 4), mw = calloc((size_t)K * dim, 4), vw = calloc((size_t)K * dim, 4);
    mb = calloc((size_t)K, 4), vb = calloc((size_t)K, 4), gw = calloc((size_t)K * dim, 4), gb = calloc((size_t)K, 4);
    logits = malloc((size_t)B * K * 4), dl = malloc((size_t)B * K * 4);
    uint64_t *order = malloc(ntr * sizeof *order);
    float *xb = malloc((size_t)B * dim * 4);
    int32_t *yb = malloc((size_t)B * sizeof *yb);
    if (!w || !b || !mw || !vw || !mb || !vb || !gw || !gb || !logits || !dl || !order || !xb || !yb) {
        free(order), free(xb), free(yb);
        st = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
        goto done;
    }
    /* Adam (lr 1e-3, decayed x0.1 for the last third), plain softmax cross-entropy */
    uint64_t t = 0;
    for (int e = 0; e < epochs; e++) {
        amdim_loader_epoch_order(seed, (uint64_t)e, ntr, order);
        float lr = e >= epochs * 2 / 3 ? 1e-4f : 1e-3f;
        for (uint64_t i0 = 0; i0 + 1 < ntr; i0 += B) {
            int nb = ntr - i0 < (uint64_t)B ? (int)(ntr - i0) : B;
            for (int r = 0; r < nb; r++) {
                memcpy(xb + (size_t)r * dim, xtr + order[i0 + r] * (size_t)dim, (size_t)dim * 4);
                yb[r] = ytr[order[i0 + r]];
            }
            linear_softmax_step(xb, yb, nb, dim, K, w, b, gw, gb, logits, dl);
            t++;
            double bc1 = 1 - pow(0.9, (double)t), bc2 = 1 - pow(0.999, (double)t);
            for (size_t k = 0; k < (size_t)K * dim + (size_t)K; k++) {
                float *p = k < (size_t)K * dim ? &w[k] : &b[k - (size_t)K * dim];
                float g = k < (size_t)K * dim ? gw[k] : gb[k - (size_t)K * dim];
                float *mm = k < (size_t)K * dim ? &mw[k] : &mb[k - (size_t)K * dim];
                float *vv = k < (size_t)K * dim ? &vw[k] : &vb[k - (size_t)K * dim];
                *mm = 0.9f * *mm + 0.1f * g;
                *vv = 0.999f * *vv + 0.001f * g * g;
                *p -= (float)(lr / bc1) * *mm / (sqrtf(*vv) / (float)sqrt(bc2) + 1e-8f);
            }
        }
    }
    free(order);
    free(xb);
    free(yb);
    uint64_t hits = 0, counted = 0;
    for (uint64_t i = 0; i < nte; i++) {
        if (yte[i] < 0)
            continue;
        int best = 0;
        double bv = -1e300;
        for (int c = 0; c < K; c++) {
            double s = b[c];
            for (int k = 0; k < dim; k++)
                s += (double)w[(size_t)c * dim + k] * xte[i * (size_t)dim + k];
            if (s > bv) {
                bv = s;
                best = c;
            }
        }
        hits += best == yte[i];
        counted++;
    }
    *test_acc = counted ? (double)hits / counted : 0;
done:
    free(xtr), free(xte), free(ytr), free(yte), free(w), free(b), free(mw), free(vw), free(mb), free(vb);
    free(logits), free(dl), free(gw), free(gb);
    amdim_dataset_close(ds);
    return st;
}
