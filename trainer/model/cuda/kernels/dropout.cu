/* Inverted dropout from host-drawn 0/1 masks (forward and backward are the same map). */
#include "launch_internal.cuh"

template <typename T> static __global__ void dropout_kernel(const void *x, const float *mask, size_t n, void *y)
{
    GRID_STRIDE(i, n) st<T>(y, i, amdim_dropout(ld<T>(x, i), mask[i]));
}

extern "C" int amdim_dropout_cuda(const amdim_cuda_ctx *c, const void *x, const float *mask, size_t n, void *y)
{
    LAUNCH_ACT(c, dropout_kernel, grid_for(n), AMDIM_THREADS, x, mask, n, y);
    note(c, "dropout", 2.0 * n * act_es(c) + 4.0 * n);
    return launch_check(c, "amdim_dropout_cuda");
}
