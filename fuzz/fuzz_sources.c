/* libFuzzer harness: the packer's raw-source readers (IDX, gzipped or not,
 * with its labels file; CIFAR-10; CIFAR-100; STL-10 with labels) on
 * in-memory files, then every item read back as pack does.
 * Input: a format byte, a 4-byte little-endian split point, then the
 * images file; the bytes after the split point are the labels file. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "pack_source_internal.h"

static int memfile(const char *name, const uint8_t *d, size_t n, char *path, size_t pn)
{
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        abort();
    if (n && write(fd, d, n) != (ssize_t)n)
        abort();
    snprintf(path, pn, "/proc/self/fd/%d", fd);
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5)
        return 0;
    static const amdim_pack_format formats[] = {AMDIM_PACK_IDX, AMDIM_PACK_CIFAR10, AMDIM_PACK_CIFAR100,
                                                AMDIM_PACK_STL10};
    const uint8_t fb = data[0];
    uint32_t split = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 | (uint32_t)data[4] << 24;
    data += 5;
    size -= 5;
    if (split > size)
        split = (uint32_t)size;
    char ipath[64], lpath[64];
    int ifd = memfile("images", data, split, ipath, sizeof ipath);
    int lfd = memfile("labels", data + split, size - split, lpath, sizeof lpath);
    amdim_pack_options o = {0};
    o.format = formats[fb % 4];
    o.src = ipath;
    o.labels = (fb & 4) ? NULL : lpath;
    o.split = "train";
    o.cifar100_coarse = (fb >> 3) & 1;
    amdim_pack_source src;
    if (amdim_pack_source_open(&src, &o) == AMDIM_OK) {
        uint8_t *buf = malloc(src.record_bytes), *px = malloc((size_t)src.width * src.height * src.channels);
        char err[512];
        for (uint64_t i = 0; i < src.n && i < 64; i++) {
            int32_t label, aux;
            amdim_pack_source_read_raw(&src, o.format, o.cifar100_coarse, i, buf, px, &label, &aux, err, sizeof err);
            char name[256];
            amdim_pack_source_item_name(&src, i, name, sizeof name);
        }
        free(buf);
        free(px);
    }
    amdim_pack_source_close(&src);
    close(ifd);
    close(lfd);
    return 0;
}
