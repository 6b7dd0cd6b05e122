/* libFuzzer harness: the packer's list-file parser ('relative/path label'
 * lines under a root), with and without --allow-outside-root. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pack_source_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("list", MFD_CLOEXEC);
    if (fd < 0)
        abort();
    if (size && write(fd, data, size) != (ssize_t)size)
        abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_LIST;
    o.src = path;
    o.root = "/tmp";
    o.split = "train";
    o.allow_outside_root = size && (data[0] & 1);
    amdim_pack_source src;
    if (amdim_pack_source_open(&src, &o) == AMDIM_OK) {
        char name[8192];
        for (uint64_t i = 0; i < src.n; i++) {
            amdim_pack_source_item_name(&src, i, name, sizeof name);
            /* every path kept lies under the root unless allowed */
            if (!o.allow_outside_root && strncmp(name, "/tmp/", 5) != 0)
                abort();
            if (src.labels[i] < -1 || src.labels[i] >= src.nclasses)
                abort();
        }
    }
    amdim_pack_source_close(&src);
    close(fd);
    return 0;
}
