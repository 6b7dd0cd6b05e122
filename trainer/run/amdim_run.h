/* amdim run: what amdim-train does - a training run fed by amdim-load,
 * with logging, evaluation, checkpoints and resume, or the classifier-only
 * phase on a frozen encoder. */
#ifndef AMDIM_RUN_H
#define AMDIM_RUN_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "amdim_trainer.h"

/* Hyper-parameters the user set; fields left at -1 take the defaults (docs/spec.md §4.7, §7)
 * for the encoder size the data implies. */
typedef struct {
    int ndf, n_rkhs, n_depth, use_bn, n_classes, objective, warmup;
    float tclip, lr;
    int mixtures, probe_features; /* the probe features also apply to a classifier phase */
    float mix_tau, mix_entropy;
} amdim_model_overrides;

typedef struct {
    const char *out_dir;    /* new run (NULL when resuming) */
    const char *resume_dir; /* continue this run */
    const char *eval_path;  /* dataset for evaluation (NULL: none) */
    const char *eval_split; /* default "test" */
    int eval_refresh;       /* batches that refresh BatchNorm statistics (default 20) */
    int eval_batch;         /* default 100 */
    amdim_device device;    /* from amdim_device_resolve (default: the CPU) */
    int precision;          /* amdim_precision; -1 (default): bf16 on CUDA, fp32 on the CPU */
    int threads;            /* CPU compute threads; 0: the cores the loader's workers leave (>= 1) */
    int64_t epochs;         /* -1: the loader's */
    int64_t steps;          /* -1: no limit (total updates, counted across resumes);
                               0: write the initial checkpoint and stop */
    int batch;              /* 0: accept the loader's */
    amdim_model_overrides model;
    /* model.n_classes below the data's class count: labels from there on
     * train as unlabelled (refused unless set) */
    int allow_fewer_classes;
    int has_seed;
    uint64_t seed;
    int log_every;          /* updates between log lines (default 50) */
    int ckpt_every;         /* updates between checkpoints; 0 = every epoch only */
    int keep;               /* checkpoints kept (default 3) */
    const char *init_path;  /* classifier-only phase: encoder checkpoint */
    int in_fd;              /* amdim-load's pipe (normally 0) */
    /* Data parallelism (NULL: one process): this rank's loader makes shard
     * rank/size of every global batch (amdim-load --shard); rank 0 alone
     * logs, evaluates and writes checkpoints and metrics. A resumed run's
     * directory must be readable by every rank (a shared file system). */
    const amdim_comm *comm;
    volatile sig_atomic_t *cancel;
} amdim_train_options;

void amdim_train_options_default(amdim_train_options *o);

/* Returns 0 when the run finished (or stopped at its step limit), or a
 * negative status with the reason in err. Rank 0 holds the run
 * directory's lock (RUN/run.lock) throughout: AMDIM_E_EXISTS, naming the
 * holder's pid, while another process has it. A write to metrics.jsonl
 * that fails, a non-finite loss and a model that cannot be saved because
 * it holds non-finite values end the run with the reason. */
int amdim_train_run(const amdim_train_options *o, char *err, size_t n);

/* Deep InfoMax (docs/dim.md, docs/training.md "Deep InfoMax"): the loss
 * weights and the estimator the user set; -1 takes the defaults (the
 * authors' DIM(L) weights alpha 0, beta 1, gamma 0.1 and JSD). */
typedef struct {
    float alpha, beta, gamma;
    int estimator; /* amdim_dim_estimator */
} amdim_dim_overrides;

void amdim_dim_overrides_default(amdim_dim_overrides *d);

/* A Deep InfoMax run on the CPU, fed by amdim-load (one process; view1 of
 * each batch), as amdim_train_run: the run directory and its lock,
 * metrics.jsonl, checkpoints every o->ckpt_every updates, at each epoch's
 * end and at the end, and --resume. Of o it reads out_dir / resume_dir,
 * epochs, steps, batch, has_seed / seed, log_every, ckpt_every, keep,
 * threads, model.lr, in_fd and cancel (d's estimator: the tool maps
 * --objective). Returns 0 or a negative status with the
 * reason in err. */
int amdim_dim_train_run(const amdim_train_options *o, const amdim_dim_overrides *d, char *err, size_t n);

/* The classifier evaluation of a Deep InfoMax encoder (docs/dim.md §9.1;
 * docs/training.md "Deep InfoMax"): o->init_path (a --model dim run
 * directory, its newest checkpoint, or a DIM weights file) frozen in
 * evaluation mode; the MLP and linear heads on tap `tap` (amdim_dim_tap:
 * conv, fc, z) trained with Adam (o->model.lr, default 1e-4; the DIM run's
 * betas) on amdim-load's labelled batches (view1); a "classifier" line of
 * metrics.jsonl every o->log_every updates and at each epoch's end, the
 * test accuracy of both heads on o->eval_path at each epoch's end and at
 * the end, and the heads in RUN/classifiers-<step>.safetensors. Reads
 * out_dir, init_path, eval_path, eval_split, epochs, steps, batch,
 * has_seed / seed, log_every, threads, model.lr, in_fd and cancel. */
int amdim_dim_classifier_run(const amdim_train_options *o, int tap, char *err, size_t n);
/* "conv", "fc", "z" -> amdim_dim_tap; -1 for anything else. */
int amdim_dim_tap_parse(const char *s);

typedef struct {
    double acc_mlp, acc_lin;
    uint64_t images;
} amdim_eval_result;

/* Test accuracy of both probes on a split, with the preset's test
 * transform: `refresh` batches in training mode refresh the BatchNorm
 * statistics first (as the authors do), then everything in eval mode. */
int amdim_evaluate_dataset(amdim_model *m, const char *path, const char *split, const char *preset, int refresh,
                           int batch, amdim_eval_result *r, char *err, size_t n);

/* The probes' features (test transform, eval mode: r1, or the mixture
 * mean with probe_features) of every record of a split, in record order: *features (records x n_rkhs) and *labels are malloc'd. */
int amdim_embed_dataset(amdim_model *m, const char *path, const char *split, const char *preset, int batch,
                        float **features, int32_t **labels, uint64_t *records, char *err, size_t n);

/* The mixture pictures (paper Figure 2): for the first `count` images of
 * a split (test transform, eval mode), each image (scaled up to >= 128 px)
 * beside a map of the winning mixture component argmax_j q(j | i, l) at
 * each 7x7 location of the 1t7 direction, one colour per component,
 * upsampled to the image; q is computed within batches of `batch` images
 * of the split (their r7 are the negatives), so it depends on the batch.
 * One row per image, written to png_path. AMDIM_E_INVALID without
 * mixtures. */
int amdim_mixture_pictures(amdim_model *m, const char *path, const char *split, const char *preset, int count,
                           int batch, const char *png_path, char *err, size_t n);

/* Writes a NumPy .npy file (format 1.0, C order): dtype "<f4" or "<i4". */
int amdim_write_npy(const char *path, const char *dtype, const void *data, uint64_t rows, uint64_t cols, int two_d,
                    char *err, size_t n);

/* A linear softmax classifier (cross-entropy, Adam) on raw pixels of a
 * split, scaled to 0..1 and standardised with the training split's
 * per-channel mean/std, tested on another split: the "raw pixels" baseline.
 * Rows with label < 0 are ignored. */
int amdim_raw_pixel_baseline(const char *path, const char *train_split, const char *test_split, int epochs,
                             uint64_t seed, double *test_acc, char *err, size_t n);

/* Renders metrics.jsonl as a PNG: losses and probe accuracies over updates. */
int amdim_plot_metrics(const char *jsonl, const char *png_path, char *err, size_t n);

#endif
