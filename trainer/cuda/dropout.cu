/* Inverted dropout from host-drawn 0/1 masks (forward and backward are the same map). */
#include "launch.cuh"

__global__ void dropout_kernel(const float *x, const float *mask, size_t n, float *y)
{
    GRID_STRIDE(i, n) y[i] = amdim_dropout(x[i], mask[i]);
}

extern "C" int dropout_cuda(const amdim_cuda_ctx *c, const float *x, const float *mask, size_t n, float *y)
{
    dropout_kernel<<<grid_for(n), AMDIM_THREADS, 0, c->stream>>>(x, mask, n, y);
    return launch_check(c, "dropout_cuda");
}
