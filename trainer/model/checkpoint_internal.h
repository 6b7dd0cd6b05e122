/* Private to the trainer and its tests and fuzzers: the checkpoint reader
 * on a buffer instead of a file. */
#ifndef AMDIM_CHECKPOINT_INTERNAL_H
#define AMDIM_CHECKPOINT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_checkpoint.h"

/* Parses `size` bytes of a checkpoint's safetensors file (header, tensor
 * table, metadata: every value, the model it describes and that model's
 * size against the buffer's) as amdim_checkpoint_read_meta does a file;
 * `name` names it in messages. The data is copied. Returns 0, AMDIM_E_CORRUPT,
 * AMDIM_E_TRUNCATED (the header or a tensor runs past the end), AMDIM_E_VERSION
 * or AMDIM_E_NOMEM with the reason in err. */
int amdim_checkpoint_parse_buffer(const uint8_t *data, size_t size, const char *name, amdim_model_config *cfg,
                                  amdim_checkpoint_info *info, char *err, size_t n);

#endif
