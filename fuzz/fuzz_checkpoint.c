/* libFuzzer harness: the checkpoint reader (safetensors header, tensor
 * table and amdim metadata) on a buffer. */
#include <stdint.h>

#include "checkpoint_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    amdim_model_config cfg;
    amdim_checkpoint_info info;
    char err[512];
    amdim_checkpoint_parse_buffer(data, size, "fuzz.safetensors", &cfg, &info, err, sizeof err);
    return 0;
}
