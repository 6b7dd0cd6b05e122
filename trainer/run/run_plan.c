/* Run configuration (see run_plan_internal.h). */
#include "run_plan_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amdim_augment.h"
#include "amdim_dataset.h"
#include "dim_run_internal.h"

/* A model option given with --resume must be the run's own: refused,
 * naming both values, rather than silently ignored. */
static int same_int(const char *flag, int given, int saved, const char *dir, char *err, size_t n)
{
    if (given < 0 || given == saved)
        return AMDIM_OK;
    return amdim_fail(err, n, AMDIM_E_INVALID,
                      "%s %d, but the run in %s was made with %d: a resumed run keeps its model and schedule (drop "
                      "the option, or start a new run with --out)",
                      flag, given, dir, saved);
}

static int same_float(const char *flag, float given, float saved, const char *dir, char *err, size_t n)
{
    if (given < 0 || given == saved)
        return AMDIM_OK;
    return amdim_fail(err, n, AMDIM_E_INVALID,
                      "%s %g, but the run in %s was made with %g: a resumed run keeps its model and schedule (drop "
                      "the option, or start a new run with --out)",
                      flag, given, dir, saved);
}

static int check_resume_options(const amdim_model_overrides *v, const amdim_model_config *c, const char *dir,
                                char *err, size_t n)
{
    int st;
    if ((st = same_int("--ndf", v->ndf, c->ndf, dir, err, n)) ||
        (st = same_int("--n-rkhs", v->n_rkhs, c->n_rkhs, dir, err, n)) ||
        (st = same_int("--n-depth", v->n_depth, c->n_depth, dir, err, n)) ||
        (st = same_int("--use-bn", v->use_bn, c->use_bn, dir, err, n)) ||
        (st = same_int("--classes", v->n_classes, c->n_classes, dir, err, n)) ||
        (st = same_int("--objective (0 nce, 1 jsd, 2 dv)", v->objective, c->objective, dir, err, n)) ||
        (st = same_int("--warmup", v->warmup, c->warmup, dir, err, n)) ||
        (st = same_int("--mixtures", v->mixtures, c->mixtures, dir, err, n)) ||
        (st = same_int("--probe-features (0 r1, 1 mixture-mean)", v->probe_features, c->probe_features, dir, err, n)) ||
        (st = same_float("--tclip", v->tclip, c->tclip, dir, err, n)) ||
        (st = same_float("--lr", v->lr, c->lr, dir, err, n)) ||
        (st = same_float("--mix-tau", v->mix_tau, c->mix_tau, dir, err, n)) ||
        (st = same_float("--mix-entropy", v->mix_entropy, c->mix_entropy, dir, err, n)))
        return st;
    return AMDIM_OK;
}

/* The run directory's lock: an exclusive flock on DIR/run.lock, which the
 * kernel drops when the process ends however it ends, so a killed run
 * leaves no stale lock; the file names the holder's pid for the next
 * one's message. The file itself stays. */
static int lock_dir(const char *dir, int *fd_out, char *err, size_t n)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/run.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot open the run directory's lock file %s: %s", path,
                          strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char text[32] = "";
        ssize_t r = pread(fd, text, sizeof text - 1, 0);
        close(fd);
        if (e != EWOULDBLOCK)
            return amdim_fail(err, n, AMDIM_E_IO, "cannot lock %s: %s", path, strerror(e));
        long pid = r > 0 ? strtol(text, NULL, 10) : 0;
        char holder[64] = "pid unknown";
        if (pid > 0)
            snprintf(holder, sizeof holder, "pid %ld", pid);
        return amdim_fail(err, n, AMDIM_E_EXISTS,
                          "the run directory %s is in use by another amdim-train (%s holds %s): one process at a time "
                          "trains, resumes or runs classifiers in a run directory; wait for it to end or stop it",
                          dir, holder, path);
    }
    char text[32];
    int len = snprintf(text, sizeof text, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)len, 0) != len) {
        int e = errno;
        close(fd);
        return amdim_fail(err, n, AMDIM_E_IO, "cannot write %s: %s", path, strerror(e));
    }
    *fd_out = fd;
    return AMDIM_OK;
}

void amdim_run_plan_end(amdim_run_plan *p)
{
    if (p->lock_fd >= 0)
        close(p->lock_fd);
    p->lock_fd = -1;
}

/* Rank 0 under the lock: nobody else writes here, so every temporary
 * checkpoint file is a killed write's. */
static int remove_temporaries(const char *dir, char *err, size_t n)
{
    int removed, st = amdim_checkpoint_remove_temporaries(dir, &removed, err, n);
    if (st == AMDIM_OK && removed)
        fprintf(stderr, "amdim-train: removed %d temporary checkpoint file%s a killed run left in %s\n", removed,
                removed == 1 ? "" : "s", dir);
    return st;
}

int amdim_run_plan_dir(const amdim_train_options *o, amdim_run_plan *p, char *err, size_t n)
{
    int rank0 = !o->comm || o->comm->rank == 0, st, complete;
    if (!p->resuming && mkdir(p->dir, 0755) != 0 && errno != EEXIST)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot create %s: %s", p->dir, strerror(errno));
    if (rank0 && (st = lock_dir(p->dir, &p->lock_fd, err, n)))
        return st;
    char newest[4200];
    int found = amdim_checkpoint_newest(p->dir, newest, sizeof newest, &complete) == AMDIM_OK;
    if (!p->resuming && found)
        return amdim_fail(err, n, AMDIM_E_EXISTS, "%s already holds a run (%s); use --resume %s or another --out",
                          p->dir, newest, p->dir);
    if (p->resuming && !found)
        return amdim_fail(err, n, AMDIM_E_NOT_FOUND, "%s holds no complete checkpoint to resume from", p->dir);
    if (p->resuming && !complete)
        return amdim_fail(err, n, AMDIM_E_NOT_FOUND,
                          "the newest checkpoint in %s, %s, has no optimiser file (.optim.safetensors, Adam's "
                          "moments): resuming from an older one would silently drop its updates; restore the file, or "
                          "move %s away to resume from the checkpoint before it",
                          p->dir, newest, newest);
    if (p->resuming)
        snprintf(p->ckpt, sizeof p->ckpt, "%s", newest);
    return rank0 ? remove_temporaries(p->dir, err, n) : AMDIM_OK;
}

/* A resumed run's checkpoint, of the kind this run trains: a Deep
 * InfoMax checkpoint is named as one (amdim-train --model dim resumes it). */
static int read_resume_meta(const amdim_train_options *o, amdim_run_plan *p, char *err, size_t n)
{
    int st;
    if (amdim_dim_checkpoint_is(p->ckpt))
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "%s is a Deep InfoMax checkpoint: resume the run in %s with amdim-train --model dim --resume "
                          "%s", p->ckpt, p->dir, p->dir);
    if ((st = amdim_checkpoint_read_meta(p->ckpt, &p->cfg, &p->ci, err, n)) ||
        (st = check_resume_options(&o->model, &p->cfg, p->dir, err, n)))
        return st;
    p->probes = p->ci.probes_only;
    return AMDIM_OK;
}

int amdim_run_plan_request(const amdim_train_options *o, amdim_run_plan *p, amdim_loader_request *req, char *err,
                           size_t n)
{
    amdim_checkpoint_info *ci = &p->ci;
    req->start_epoch = -1;
    req->start_batch = -1;
    req->epochs = o->epochs > 0 ? o->epochs : -1;
    if (p->resuming) {
        if (ci->epochs > 0 && (int64_t)ci->next_epoch >= ci->epochs)
            return amdim_fail(err, n, AMDIM_E_INVALID, "the run in %s is complete (%lld epochs)", p->dir,
                              (long long)ci->epochs);
        req->has_seed = 1;
        req->seed = ci->seed;
        req->start_epoch = (int64_t)ci->next_epoch;
        req->start_batch = (int64_t)ci->next_batch;
        req->epochs = ci->epochs > 0 ? ci->epochs - (int64_t)ci->next_epoch : 1000000;
        if (o->steps > 0)
            ci->max_steps = o->steps;
        if (ci->max_steps >= 0 && ci->step >= (uint64_t)ci->max_steps)
            return amdim_fail(err, n, AMDIM_E_INVALID,
                              "the run in %s already made its %lld steps (give a larger --steps)", p->dir,
                              (long long)ci->max_steps);
        return AMDIM_OK;
    }
    if (o->has_seed) {
        req->has_seed = 1;
        req->seed = o->seed;
    }
    if (o->epochs < 0 && o->steps >= 0)
        req->epochs = 1000000; /* step-limited: as many epochs as it takes */
    return AMDIM_OK;
}

int amdim_run_plan_begin(const amdim_train_options *o, amdim_run_plan *p, amdim_loader_request *req, char *err, size_t n)
{
    memset(p, 0, sizeof *p);
    memset(req, 0, sizeof *req);
    p->lock_fd = -1;
    p->dir = o->resume_dir ? o->resume_dir : o->out_dir;
    if (!p->dir)
        return amdim_fail(err, n, AMDIM_E_INVALID, "give --out RUN for a new run or --resume RUN");
    p->resuming = o->resume_dir != NULL;
    p->probes = o->init_path != NULL;
    int st = amdim_run_plan_dir(o, p, err, n);
    if (st == AMDIM_OK && p->resuming)
        st = read_resume_meta(o, p, err, n);
    if (st == AMDIM_OK)
        st = amdim_run_plan_request(o, p, req, err, n);
    if (st)
        amdim_run_plan_end(p);
    return st;
}

/* The evaluation data exists, is labelled and fits the preset: checked now,
 * not after the first epoch. */
static int check_eval_data(const amdim_train_options *o, const amdim_loader_info *li, const amdim_run_plan *p, char *err,
                           size_t n)
{
    if (!o->eval_path)
        return AMDIM_OK;
    amdim_dataset *eds;
    amdim_split_info einfo;
    char why[2048];
    amdim_augment_config ac; /* the presets that do not resize (cifar, dim*) take images up to their size */
    int translate = amdim_augment_preset(li->preset, &ac) == 0 && ac.crop_mode == AMDIM_CROP_TRANSLATE;
    int st = amdim_dataset_open(&eds, o->eval_path, why, sizeof why);
    if (st)
        return amdim_fail(err, n, st, "--eval: %s", why);
    st = amdim_dataset_split_info(eds, o->eval_split, &einfo);
    if (st)
        amdim_fail(err, n, st, "--eval: %s", amdim_dataset_error(eds));
    else if (translate && (einfo.width > li->size || einfo.height > li->size || !einfo.width))
        st = amdim_fail(err, n, AMDIM_E_INVALID, "--eval split %s holds %ux%u images; the %s preset takes up to %ux%u",
                        o->eval_split, einfo.width, einfo.height, li->preset, li->size, li->size);
    else if (einfo.classes == 0)
        st = amdim_fail(err, n, AMDIM_E_INVALID, "--eval split %s of %s is unlabelled", o->eval_split, o->eval_path);
    else if (!p->resuming && einfo.classes > p->cfg.n_classes && !o->allow_fewer_classes)
        st = amdim_fail(err, n, AMDIM_E_INVALID,
                        "--eval split %s of %s has %d classes, but the probes classify %d: its labels %d..%d would "
                        "never count; give --classes %d, or --allow-fewer-classes to evaluate on labels 0..%d only",
                        o->eval_split, o->eval_path, einfo.classes, p->cfg.n_classes, p->cfg.n_classes,
                        einfo.classes - 1, einfo.classes, p->cfg.n_classes - 1);
    amdim_dataset_close(eds);
    return st;
}

/* What amdim-load delivers fits this rank and the flags: its shard, batch and view size. */
static int check_loader(const amdim_train_options *o, const amdim_loader_info *li, char *err, size_t n)
{
    int size = o->comm ? o->comm->size : 1, rank = o->comm ? o->comm->rank : 0;
    uint32_t batch = li->batch * li->shard_size; /* the global batch */
    if ((int)li->shard_size != size || (int)li->shard_rank != rank)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "amdim-load makes shard %u/%u of every batch, but this amdim-train is rank %d of %d: give "
                          "each rank's amdim-load --shard auto (or --shard R/N with mpirun's rank and size)",
                          li->shard_rank, li->shard_size, rank, size);
    if (o->batch && (uint32_t)o->batch != batch)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "amdim-train --batch %d, but amdim-load delivers batches of %u: give both the same --batch",
                          o->batch, batch);
    if (li->size != 32 && li->size != 64 && li->size != 128)
        return amdim_fail(err, n, AMDIM_E_INVALID, "amdim-load makes %ux%u views; the encoders take 32, 64 or 128 px",
                          li->size, li->size);
    return AMDIM_OK;
}

/* The classifier phase: the encoder's configuration from --init, the
 * probes' own options from the flags. */
static int configure_probes(const amdim_train_options *o, const amdim_loader_info *li, amdim_run_plan *p, char *err,
                            size_t n)
{
    amdim_model_config *cfg = &p->cfg;
    amdim_checkpoint_info pi, *ci = &p->ci;
    char why[2048];
    if (amdim_dim_checkpoint_is(o->init_path))
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "%s is a Deep InfoMax checkpoint: train its classifiers with --model dim --classifiers "
                          "--features conv|fc|z",
                          o->init_path);
    int st = amdim_checkpoint_read_meta(o->init_path, cfg, &pi, why, sizeof why);
    if (st)
        return amdim_fail(err, n, st, "%s", why);
    if (cfg->encoder_size != (int)li->size)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "the encoder in %s takes %d px images, amdim-load delivers %u px (preset %s)", o->init_path,
                          cfg->encoder_size, li->size, li->preset);
    if (o->model.n_classes > 0 || li->classes > 0)
        cfg->n_classes = o->model.n_classes > 0 ? o->model.n_classes : (int)li->classes;
    if (o->model.lr > 0)
        cfg->lr = o->model.lr;
    if (o->model.warmup >= 0)
        cfg->warmup = o->model.warmup;
    if (o->model.probe_features >= 0) /* the probes start afresh: they may read other features */
        cfg->probe_features = o->model.probe_features;
    ci->seed = li->seed;
    ci->epochs = o->epochs > 0 ? o->epochs : (int64_t)li->epochs;
    ci->max_steps = o->steps;
    return AMDIM_OK;
}

/* A new run: the defaults for the view size, the flags over them, the preset's schedule and normalisation. */
static void configure_new(const amdim_train_options *o, const amdim_loader_info *li, amdim_run_plan *p)
{
    amdim_model_config *cfg = &p->cfg;
    amdim_model_config_default(cfg, (int)li->size);
    const amdim_model_overrides *v = &o->model;
    if (v->ndf > 0) cfg->ndf = v->ndf;
    if (v->n_rkhs > 0) cfg->n_rkhs = v->n_rkhs;
    if (v->n_depth > 0) cfg->n_depth = v->n_depth;
    if (v->use_bn >= 0) cfg->use_bn = v->use_bn;
    if (v->objective >= 0) cfg->objective = v->objective;
    if (v->tclip > 0) cfg->tclip = v->tclip;
    if (v->lr > 0) cfg->lr = v->lr;
    if (v->warmup >= 0) cfg->warmup = v->warmup;
    if (v->mixtures > 0) cfg->mixtures = v->mixtures;
    if (v->mix_tau > 0) cfg->mix_tau = v->mix_tau;
    if (v->mix_entropy >= 0) cfg->mix_entropy = v->mix_entropy;
    if (v->probe_features >= 0) cfg->probe_features = v->probe_features;
    cfg->n_classes = v->n_classes > 0 ? v->n_classes : li->classes > 0 ? (int)li->classes : 1;
    if (strcmp(li->preset, "imagenet") == 0) { /* [30, 45] of 50 epochs */
        cfg->milestones[0] = 30;
        cfg->milestones[1] = 45;
    }
    amdim_augment_config ac;
    amdim_augment_preset(li->preset, &ac);
    memcpy(cfg->mean, ac.mean, sizeof cfg->mean);
    memcpy(cfg->std, ac.std, sizeof cfg->std);
    cfg->seed = li->seed;
    p->ci.seed = li->seed;
    p->ci.epochs = o->epochs > 0 ? o->epochs : (o->steps >= 0 ? -1 : (int64_t)li->epochs);
    p->ci.max_steps = o->steps;
}

int amdim_run_plan_configure(const amdim_train_options *o, const amdim_loader_info *li, amdim_run_plan *p, char *err, size_t n)
{
    amdim_model_config *cfg = &p->cfg;
    amdim_checkpoint_info *ci = &p->ci;
    int st, size = o->comm ? o->comm->size : 1;
    uint32_t batch = li->batch * li->shard_size; /* the global batch */
    if ((st = check_loader(o, li, err, n)))
        return st;
    if (p->resuming) {
        if (cfg->encoder_size != (int)li->size || (ci->batch && (uint32_t)ci->batch != batch) ||
            strcmp(ci->preset, li->preset) != 0)
            return amdim_fail(err, n, AMDIM_E_INVALID,
                              "the checkpoint %s was trained on %s preset %d px views in batches of %d, but amdim-load now delivers %s %u px in batches of %u",
                              p->ckpt, ci->preset, cfg->encoder_size, ci->batch, li->preset, li->size, batch);
    } else if (p->probes) {
        if ((st = configure_probes(o, li, p, err, n)))
            return st;
    } else
        configure_new(o, li, p);
    /* --classes below the data's classes: labels from there on would train as unlabelled */
    if (!p->resuming && o->model.n_classes > 0 && li->classes > o->model.n_classes && !o->allow_fewer_classes)
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "--classes %d, but the data amdim-load delivers has %d classes: its labels %d..%d would "
                          "train as unlabelled; give --classes %d, or --allow-fewer-classes to use labels 0..%d only",
                          o->model.n_classes, li->classes, o->model.n_classes, li->classes - 1, li->classes,
                          o->model.n_classes - 1);
    if ((st = check_eval_data(o, li, p, err, n)))
        return st;
    /* the host memory of the model and of its largest batch (training, or evaluation's) */
    int act = (int)li->batch, evb = o->eval_path && o->eval_batch > act ? o->eval_batch : act;
    char what[4400];
    snprintf(what, sizeof what, "%s %s", p->resuming ? "resuming" : p->probes ? "the classifier phase in" : "the run in",
             p->resuming ? p->ckpt : p->dir);
    if ((st = amdim_model_memory_check(cfg, o->device, act, size, 1, what, err, n)) ||
        (evb != act && (st = amdim_model_memory_check(cfg, o->device, evb, 0, 0, what, err, n))))
        return st;
    snprintf(ci->preset, sizeof ci->preset, "%s", li->preset);
    ci->batch = (int)batch;
    ci->probes_only = p->probes;
    return AMDIM_OK;
}

int amdim_run_plan_model(const amdim_train_options *o, const amdim_loader_info *li, amdim_run_plan *p, amdim_model **out,
                   char *err, size_t n)
{
    amdim_model *m;
    char why[2048];
    int st = amdim_model_create_on(&m, &p->cfg, o->device, why, sizeof why);
    if (st)
        return amdim_fail(err, n, st, "%s", why);
    if ((st = amdim_model_set_comm(m, o->comm))) {
        amdim_fail(err, n, st, "%s", amdim_model_error(m));
        amdim_model_destroy(m);
        return st;
    }
    amdim_precision prec = o->precision >= 0                  ? (amdim_precision)o->precision
                           : o->device == AMDIM_DEVICE_CUDA ? AMDIM_PRECISION_BF16
                                                             : AMDIM_PRECISION_FP32;
    st = amdim_model_set_precision(m, prec);
    if (st == AMDIM_E_UNSUPPORTED && o->precision < 0 && prec == AMDIM_PRECISION_BF16) {
        /* the default on a GPU without bf16 (compute capability < 8.0): fp32, said once */
        fprintf(stderr, "amdim-train: %s; training in fp32\n", amdim_model_error(m));
        st = amdim_model_set_precision(m, AMDIM_PRECISION_FP32);
    }
    if (st) {
        amdim_fail(err, n, st, "%s", amdim_model_error(m));
        amdim_model_destroy(m);
        return st;
    }
    if (p->resuming) {
        st = amdim_checkpoint_load(m, p->ckpt, AMDIM_CKPT_OPTIMIZER, err, n);
        if (st == AMDIM_OK && p->probes)
            amdim_model_freeze_encoder(m);
    } else if (p->probes) {
        st = amdim_checkpoint_load(m, o->init_path, AMDIM_CKPT_ENCODER_ONLY, err, n);
        if (st == AMDIM_OK && (st = amdim_model_reset_probes(m, li->seed)))
            amdim_fail(err, n, st, "%s", amdim_model_error(m));
    }
    if (st) {
        amdim_model_destroy(m);
        return st;
    }
    *out = m;
    return AMDIM_OK;
}

int amdim_run_plan_attach(amdim_run_plan *p, int fd, const amdim_loader_request *req, amdim_loader **l, char *err,
                          size_t n)
{
    char why[2048];
    int st = amdim_loader_attach(l, fd, req, why, sizeof why);
    if (st) {
        amdim_run_plan_end(p);
        return amdim_fail(err, n, st, "attaching to amdim-load: %s", why);
    }
    return AMDIM_OK;
}
