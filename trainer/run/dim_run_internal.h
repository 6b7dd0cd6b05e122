/* Private to trainer/run: the Deep InfoMax run's state between the loader
 * and trainer/dim (amdim_dim.h), and its checkpoints (dim_checkpoint.c).
 *
 * A DIM checkpoint at update S is two safetensors files in the run
 * directory, named as the AMDIM run's (so amdim_checkpoint_latest, _prune
 * and _remove_temporaries serve both):
 *   ckpt-<S>.safetensors        every tensor of amdim_dim's table under its
 *                               name (float32; num_batches_tracked int64)
 *   ckpt-<S>.optim.safetensors  Adam's moments (exp_avg.<name>,
 *                               exp_avg_sq.<name>) of the trainable tensors
 * Both carry __metadata__: format "amdim-dim-checkpoint", format_version,
 * kind (weights / optimizer), model "dim", step, next_epoch, next_batch,
 * seed, epochs, max_steps, preset, batch, the model (size, in_ch, alpha,
 * beta, gamma, estimator, gp_all, model_seed) and Adam's (lr, beta1,
 * beta2, eps); the optimiser file also weights_fnv1a64, the FNV-1a 64
 * digest of the weights file's tensor data. Written optimiser file first,
 * each to a temporary name, fsynced and renamed. */
#ifndef AMDIM_DIM_RUN_INTERNAL_H
#define AMDIM_DIM_RUN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_checkpoint.h"
#include "amdim_dim.h"

#define AMDIM_DIM_CHECKPOINT_FORMAT "amdim-dim-checkpoint"
#define AMDIM_DIM_CHECKPOINT_VERSION 1

/* What a DIM run is: the model, its optimiser and the run's cursor. */
typedef struct {
    amdim_dim_config cfg;
    amdim_dim_adam adam;
    amdim_checkpoint_info ci; /* step, loader cursor, seed, span, preset, batch (probes_only unused) */
} amdim_dim_state;

/* 1 when path is a readable safetensors file whose format is the DIM
 * checkpoint's, else 0. */
int amdim_dim_checkpoint_is(const char *path);

/* Writes ckpt-<st->ci.step> into dir: weights w, moments m and v (blocks of
 * amdim_dim_block_floats). A non-finite value is AMDIM_E_INVALID naming the
 * tensor (nothing written); a failed write leaves no part of the new
 * checkpoint. */
int amdim_dim_checkpoint_save(const amdim_dim *d, const amdim_dim_state *st, const float *w, const float *m,
                              const float *v, const char *dir, char *err, size_t n);

/* Reads a weights file's metadata into st. An AMDIM checkpoint is
 * AMDIM_E_INVALID saying so; a missing or bad value AMDIM_E_CORRUPT. */
int amdim_dim_checkpoint_read_meta(const char *path, amdim_dim_state *st, char *err, size_t n);

/* Loads the weights file at path into w and its optimiser file into m and
 * v: exactly d's tensors, each of its dtype and shape, finite; the
 * optimiser file must be the one written beside these weights (its
 * digest). AMDIM_E_INVALID / AMDIM_E_CORRUPT naming the tensor. */
int amdim_dim_checkpoint_load(const amdim_dim *d, const char *path, float *w, float *m, float *v, char *err, size_t n);

#endif
