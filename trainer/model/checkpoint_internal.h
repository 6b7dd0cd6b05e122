/* Private to the trainer and its tests and fuzzers: the checkpoint reader
 * on a buffer instead of a file, and a checkpoint's metadata
 * (checkpoint_meta.c) for checkpoint.c. */
#ifndef AMDIM_CHECKPOINT_INTERNAL_H
#define AMDIM_CHECKPOINT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_checkpoint.h"
#include "safetensors_internal.h"

/* Parses `size` bytes of a checkpoint's safetensors file (header, tensor
 * table, metadata: every value, the model it describes and that model's
 * size against the buffer's) as amdim_checkpoint_read_meta does a file;
 * `name` names it in messages. The data is copied. Returns 0, AMDIM_E_CORRUPT,
 * AMDIM_E_TRUNCATED (the header or a tensor runs past the end), AMDIM_E_VERSION
 * or AMDIM_E_NOMEM with the reason in err. */
int amdim_checkpoint_parse_buffer(const uint8_t *data, size_t size, const char *name, amdim_model_config *cfg,
                                  amdim_checkpoint_info *info, char *err, size_t n);

/* A checkpoint's __metadata__ entries, in the order they are written
 * (docs/spec.md 8.3); kv[i].value points into text[i]. */
enum { AMDIM_CKPT_META_MAX = 40, AMDIM_CKPT_META_LEN = 128 };
typedef struct {
    amdim_safetensors_kv kv[AMDIM_CKPT_META_MAX];
    char text[AMDIM_CKPT_META_MAX][AMDIM_CKPT_META_LEN];
    int n;
} amdim_checkpoint_meta;

/* Appends key = printf(fmt, ...) (at most AMDIM_CKPT_META_LEN - 1 bytes). */
void amdim_checkpoint_meta_add(amdim_checkpoint_meta *m, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* What every model's checkpoints share (the AMDIM model's here, Deep
 * InfoMax's in trainer/run/dim_checkpoint.c): the two file names of step
 * `step` in dir (ckpt-<S>.safetensors, ckpt-<S>.optim.safetensors); the
 * FNV-1a digest of the weights' tensor data that binds the optimiser file
 * to them (start from AMDIM_CKPT_FNV_BASIS); and the pair written
 * atomically, the optimiser file first (a weights file marks a complete
 * checkpoint; it is removed again if the weights file fails), then the
 * directory synced. */
#define AMDIM_CKPT_FNV_BASIS 1469598103934665603ull
void amdim_checkpoint_paths(const char *dir, uint64_t step, char *w, char *o, size_t n);
uint64_t amdim_checkpoint_fnv1a(uint64_t h, const void *p, size_t n);
int amdim_checkpoint_write_pair(const char *dir, uint64_t step, const amdim_checkpoint_meta *meta,
                                const amdim_safetensors_out *t, int nt, const amdim_checkpoint_meta *ometa,
                                const amdim_safetensors_out *o, int no, char *err, size_t n);

/* The metadata of a file of `kind` ("weights" or "optimizer") of the model
 * c at the point `in` of its run; with weights_digest (the optimiser file)
 * also weights_fnv1a64. */
void amdim_checkpoint_meta_build(amdim_checkpoint_meta *m, const amdim_model_config *c, const amdim_checkpoint_info *in,
                                 const char *kind, const uint64_t *weights_digest);
/* Reads f's metadata back into c and in: the format and its version, every
 * key a checkpoint has, each value parsed whole and range checked, and the
 * model they describe, which this build must make and whose tensor data f
 * must hold. Returns 0, AMDIM_E_CORRUPT or AMDIM_E_VERSION naming path and
 * the key, or AMDIM_E_NOMEM. */
int amdim_checkpoint_meta_parse(const amdim_safetensors_file *f, const char *path, amdim_model_config *c,
                                amdim_checkpoint_info *in, char *err, size_t n);

#endif
