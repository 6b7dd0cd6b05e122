/* The backends of this build (backend_internal.h): the one place that
 * names them, so that model.c depends on the interface only. */
#include "backend_internal.h"

const amdim_backend *amdim_backend_of(amdim_device d)
{
    if (d == AMDIM_DEVICE_CPU)
        return &amdim_backend_cpu;
#ifdef AMDIM_HAVE_CUDA_BACKEND
    if (d == AMDIM_DEVICE_CUDA)
        return &amdim_backend_cuda;
#endif
    return NULL;
}
