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
 * mix_tau, mix_entropy and probe_features; absent = the plain model); the
 * optimiser file's also weights_fnv1a64, the FNV-1a 64 digest (16 hex
 * digits) of the weights file's tensor data. Each file is written to a temporary
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
/* A model whose weights or moments hold a value that would not load (see
 * amdim_checkpoint_load) is not saved: AMDIM_E_INVALID naming the tensor,
 * the element and the step (training diverged). */

/* Keeps the newest `keep` checkpoints in dir, deleting older ones. */
void amdim_checkpoint_prune(const char *dir, int keep);

/* Path of the newest complete checkpoint's weights file in dir.
 * AMDIM_E_NOT_FOUND if there is none. */
int amdim_checkpoint_latest(const char *dir, char *path, size_t n);
/* Path of the newest weights file in dir, complete or not: *complete is 0
 * when its optimiser file is missing (resuming must not pass over it to
 * an older one). AMDIM_E_NOT_FOUND if there is none. */
int amdim_checkpoint_newest(const char *dir, char *path, size_t n, int *complete);
/* Removes the temporary files (ckpt-*.safetensors.tmp.<pid>) a checkpoint
 * write that was killed leaves in dir; *removed counts them. For the
 * holder of the run directory's lock (no other writer exists).
 * AMDIM_E_IO with the path on failure. */
int amdim_checkpoint_remove_temporaries(const char *dir, int *removed, char *err, size_t n);

/* Reads a weights file's metadata into cfg (model hyper-parameters) and
 * info, reading only the file's header. Every value is parsed whole and
 * range checked (mean in 0..1, std in 0.001..1 on the 0..1 pixel scale),
 * the model it describes must be valid, and the file must hold the tensor
 * data that model has, so a small file cannot claim a huge model. Only a
 * regular file is opened (a FIFO is refused, not waited on).
 * AMDIM_E_VERSION / AMDIM_E_CORRUPT / AMDIM_E_INVALID with the reason. */
int amdim_checkpoint_read_meta(const char *path, amdim_model_config *cfg, amdim_checkpoint_info *info, char *err,
                               size_t n);

/* Flags for amdim_checkpoint_load. */
enum {
    AMDIM_CKPT_OPTIMIZER = 1,    /* also Adam's moments and the update count (.optim file) */
    AMDIM_CKPT_ENCODER_ONLY = 2, /* only encoder.* tensors: the probes may have another shape */
};

/* Loads weights and buffers into m, whose configuration must match the
 * checkpoint's (the probes excepted with AMDIM_CKPT_ENCODER_ONLY): a
 * mismatch is AMDIM_E_INVALID naming both values. A value that is not
 * finite or beyond +-1e15 (second moments: 0..1e30) is AMDIM_E_INVALID
 * naming the tensor and the element. With AMDIM_CKPT_OPTIMIZER the
 * optimiser file must be the one written beside these weights (its
 * weights_fnv1a64 digest of their tensor data; files without one are
 * taken by their step, with a notice), with exactly this model's moment
 * tensors, F32 and of their parameters' shapes. Checkpoints that name
 * the heads' hidden BatchNorm rkhs_block_N.bn1 (before it took the authors'
 * name bn_hid) load too, with one notice on stderr. */
int amdim_checkpoint_load(amdim_model *m, const char *path, int flags, char *err, size_t n);

#endif
