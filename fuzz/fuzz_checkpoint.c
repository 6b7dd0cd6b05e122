/* libFuzzer harness: the checkpoint reader (safetensors header, tensor
 * table and amdim metadata) on a buffer: every metadata value's strict
 * parsing and range checks, the model the metadata describes (its
 * description is built and its size compared with the file's data), and
 * for metadata that passes, the memory estimate of that model.
 * fuzz/corpus/checkpoint/meta_* are seeds for the metadata path (valid
 * tiny models, mixtures, an optimiser file, and one bad value each). */
#include <stdint.h>

#include "checkpoint_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    amdim_model_config cfg;
    amdim_checkpoint_info info;
    char err[512];
    if (amdim_checkpoint_parse_buffer(data, size, "fuzz.safetensors", &cfg, &info, err, sizeof err) == AMDIM_OK) {
        amdim_memory_need need;
        amdim_model_memory_need(&cfg, AMDIM_DEVICE_CPU, info.batch > 0 ? info.batch : 1, 0, 1, &need, err, sizeof err);
    }
    return 0;
}
