/* libFuzzer harness: the dataset record parser (amdim_record_decode), and
 * for records it accepts, the encoder writing them back byte for byte. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_dataset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    amdim_record r;
    char err[256];
    if (amdim_record_decode(data, size, &r, err, sizeof err) != AMDIM_OK)
        return 0;
    uint8_t *copy = malloc(size);
    size_t written = 0;
    int st = amdim_record_encode(&r, copy, size, &written);
    /* Every record the parser accepts re-encodes to its own size. */
    if (st == AMDIM_OK && written != size)
        abort();
    free(copy);
    return 0;
}
