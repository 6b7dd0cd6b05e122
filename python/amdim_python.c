/* libamdim_loader.so: the consumer API of loader/amdim_loader.h for the
 * Python package (python/amdim/_lib.py, through ctypes). No loader logic
 * here: the table below makes the linker take exactly the objects the
 * package calls from the static libraries, and two helpers let Python
 * check its mirrors of the structs and read a preset's mean and std. */
#include <stddef.h>
#include <string.h>

#include "amdim_augment.h"
#include "amdim_loader.h"

/* What Python calls; referenced here so that the shared library holds it. */
void *const amdim_python_api[] = {
    (void *)amdim_loader_attach,        (void *)amdim_loader_get_info,    (void *)amdim_loader_next,
    (void *)amdim_loader_release,       (void *)amdim_loader_close,       (void *)amdim_loader_error,
    (void *)amdim_loader_ring_memory,   (void *)amdim_loader_wait_seconds, (void *)amdim_loader_parse_shard,
    (void *)amdim_loader_expected_records, (void *)amdim_delivery_new,    (void *)amdim_delivery_add,
    (void *)amdim_delivery_finish,      (void *)amdim_delivery_free,      (void *)amdim_strerror,
};

/* Sizes and field offsets of the structs Python mirrors (python/amdim/_lib.py
 * compares its own with these when it loads the library). */
long amdim_python_layout(const char *what)
{
#define L(name, value) if (strcmp(what, name) == 0) return (long)(value)
    L("protocol", AMDIM_LOAD_PROTOCOL_VERSION);
    L("amdim_loader_info", sizeof(amdim_loader_info));
    L("amdim_loader_info.loader_pid", offsetof(amdim_loader_info, loader_pid));
    L("amdim_loader_info.epochs", offsetof(amdim_loader_info, epochs));
    L("amdim_loader_request", sizeof(amdim_loader_request));
    L("amdim_loader_request.epochs", offsetof(amdim_loader_request, epochs));
    L("amdim_batch", sizeof(amdim_batch));
    L("amdim_batch.view2", offsetof(amdim_batch, view2));
    L("amdim_batch.ring", offsetof(amdim_batch, ring));
    L("amdim_delivery_counts", sizeof(amdim_delivery_counts));
    L("amdim_delivery_counts.digest", offsetof(amdim_delivery_counts, digest));
#undef L
    return -1;
}

/* The normalisation of preset `name` (augment/draw.c): view size, mean and
 * std on the 0..1 scale. Returns 0, or AMDIM_E_INVALID for an unknown name. */
int amdim_python_preset_norm(const char *name, int *size, float mean[3], float std[3])
{
    amdim_augment_config c;
    int st = amdim_augment_preset(name, &c);
    if (st)
        return st;
    *size = c.size;
    memcpy(mean, c.mean, sizeof c.mean);
    memcpy(std, c.std, sizeof c.std);
    return 0;
}
