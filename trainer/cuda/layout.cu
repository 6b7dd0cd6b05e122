/* Filter layouts: OIHW (mirror, master) <-> OHWI (cuDNN NHWC filters); maps in layout.h. */
#include "launch.cuh"
#include "layout.h"

/* one thread per OIHW element: to_ohwi copies out, else adds back */
__global__ void filter_kernel(const float *src, int O, int I, int K, int to_ohwi, float *dst)
{
    size_t n = (size_t)O * I * K * K;
    GRID_STRIDE(j, n)
    {
        int x = (int)(j % K), y = (int)(j / K % K), i = (int)(j / ((size_t)K * K) % I), o = (int)(j / ((size_t)K * K * I));
        size_t a = amdim_oihw_index(o, i, y, x, I, K), b = amdim_ohwi_index(o, i, y, x, I, K);
        if (to_ohwi)
            dst[b] = src[a];
        else
            dst[a] += src[b];
    }
}

extern "C" int oihw_to_ohwi_cuda(const amdim_cuda_ctx *c, const float *w, int O, int I, int K, float *out)
{
    size_t n = (size_t)O * I * K * K;
    filter_kernel<<<grid_for(n), AMDIM_THREADS, 0, c->stream>>>(w, O, I, K, 1, out);
    return launch_check(c, "oihw_to_ohwi_cuda");
}

extern "C" int ohwi_to_oihw_add_cuda(const amdim_cuda_ctx *c, const float *w, int O, int I, int K, float *out)
{
    size_t n = (size_t)O * I * K * K;
    filter_kernel<<<grid_for(n), AMDIM_THREADS, 0, c->stream>>>(w, O, I, K, 0, out);
    return launch_check(c, "ohwi_to_oihw_add_cuda");
}
