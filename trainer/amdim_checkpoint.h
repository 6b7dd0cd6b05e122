/* amdim checkpoints: safetensors files a PyTorch user loads with one call.
 *
 * A checkpoint at update S is two files in the run directory:
 *   ckpt-<S>.safetensors        every parameter and buffer under the
 *                               authors' state_dict names (float32;
 *                               num_batches_tracked int64) plus
 *                               g2l_loss.masks_r5 (uint8), so their
 *                               Model.load_state_dict(strict=True) accepts it
 *   ckpt-<S>.optim.safetensors  Adam's moments (exp_avg.<name>,
 *                               exp_avg_sq.<name>)
 * Both carry the same __metadata__: format, format_version, step (Adam
 * updates), next_epoch / next_batch (the loader cursor), seed, the model
 * hyper-parameters and the schedule (with mixtures, K > 1, also mixtures,
 * mix_tau, mix_entropy and probe_features; absent = the plain model). Each file is written to a temporary
 * name, fsynced and renamed; the optimiser file first, so a weights file
 * marks a complete checkpoint. */
#ifndef AMDIM_CHECKPOINT_H
#define AMDIM_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_trainer.h"

#define AMDIM_CHECKPOINT_FORMAT "amdim-checkpoint"
#define AMDIM_CHECKPOINT_VERSION 1

typedef struct {
    uint64_t step;        /* Adam updates so far */
    uint64_t next_epoch;  /* loader cursor: the next batch to train on */
    uint64_t next_batch;
    uint64_t seed;        /* loader seed (order and augmentations) */
    int64_t epochs;       /* the run's total epochs (-1 if steps-limited) */
    int64_t max_steps;    /* -1 if none */
    char preset[16];
    int batch;
    int probes_only;      /* a classifier-only phase (resumes as one) */
} amdim_checkpoint_info;

/* Writes ckpt-<step> into dir. On failure (e.g. disk full) nothing of the
 * new checkpoint remains and older ones are untouched. */
int amdim_checkpoint_save(amdim_model *m, const char *dir, const amdim_checkpoint_info *info, char *err,
                          size_t n);

/* Keeps the newest `keep` checkpoints in dir, deleting older ones. */
void amdim_checkpoint_prune(const char *dir, int keep);

/* Path of the newest complete checkpoint's weights file in dir.
 * AMDIM_E_NOT_FOUND if there is none. */
int amdim_checkpoint_latest(const char *dir, char *path, size_t n);

/* Reads a weights file's metadata into cfg (model hyper-parameters) and
 * info. AMDIM_E_VERSION / AMDIM_E_CORRUPT with the reason. */
int amdim_checkpoint_read_meta(const char *path, amdim_model_config *cfg, amdim_checkpoint_info *info, char *err,
                               size_t n);

/* Flags for amdim_checkpoint_load. */
enum {
    AMDIM_CKPT_OPTIMIZER = 1,    /* also Adam's moments and the update count (.optim file) */
    AMDIM_CKPT_ENCODER_ONLY = 2, /* only encoder.* tensors: the probes may have another shape */
};

/* Loads weights and buffers into m, whose configuration must match the
 * checkpoint's (the probes excepted with AMDIM_CKPT_ENCODER_ONLY): a
 * mismatch is AMDIM_E_INVALID naming both values. Checkpoints that name
 * the heads' hidden BatchNorm rkhs_block_N.bn1 (before it took the authors'
 * name bn_hid) load too, with one notice on stderr. */
int amdim_checkpoint_load(amdim_model *m, const char *path, int flags, char *err, size_t n);

#endif
