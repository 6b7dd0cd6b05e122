/* libFuzzer harness: the loader's control lines: the handshake the
 * consumer parses (amdim_loader_parse_hello), the START and OK lines' key=value
 * fields (amdim_loader_kv), and the batch dealing sized by what they say. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loader_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char line[1024];
    size_t n = size < sizeof line - 1 ? size : sizeof line - 1;
    memcpy(line, data, n);
    line[n] = 0; /* lines arrive NUL-terminated, as read_line makes them */
    amdim_loader_info in;
    char sock[108], err[512], v[64];
    if (amdim_loader_parse_hello(line, &in, sock, sizeof sock, err, sizeof err) == AMDIM_OK) {
        if (in.batches_per_epoch != loader_batches(in.records, in.batch, !in.drop_last))
            abort();
        uint64_t e, b;
        for (uint32_t w = 0; w < in.workers && w < 4; w++)
            if (amdim_loader_worker_batch(0, 0, 1, in.batches_per_epoch, in.workers, w, 0, &e, &b) && b >= in.batches_per_epoch)
                abort();
    }
    static const char *keys[] = {"seed", "epoch", "batch", "epochs", "rings", "v", "socket"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
        if (amdim_loader_kv(line, keys[k], v, sizeof v) && strlen(v) >= sizeof v)
            abort();
    return 0;
}
