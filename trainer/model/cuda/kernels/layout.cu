/* Filter layouts: OIHW (float masters) <-> OHWI (cuDNN NHWC filters, in
 * the activation type); maps in layout.h. */
#include "launch_internal.cuh"
#include "layout_internal.h"

/* one thread per element of the (O, K, K, Ipad) copy: w's, or zero for i >= I */
template <typename T> static __global__ void to_ohwi_kernel(const float *w, int O, int I, int K, int Ipad, void *out)
{
    size_t n = (size_t)O * Ipad * K * K;
    GRID_STRIDE(j, n)
    {
        int i = (int)(j % Ipad), x = (int)(j / Ipad % K), y = (int)(j / ((size_t)Ipad * K) % K);
        int o = (int)(j / ((size_t)Ipad * K * K));
        st<T>(out, j, i < I ? w[amdim_oihw_index(o, i, y, x, I, K)] : 0.0f);
    }
}

/* one thread per OIHW element: out (OIHW) += w (O, K, K, Ipad) */
template <typename T> static __global__ void add_oihw_kernel(const void *w, int O, int I, int K, int Ipad, float *out)
{
    size_t n = (size_t)O * I * K * K;
    GRID_STRIDE(j, n)
    {
        int x = (int)(j % K), y = (int)(j / K % K), i = (int)(j / ((size_t)K * K) % I), o = (int)(j / ((size_t)K * K * I));
        out[amdim_oihw_index(o, i, y, x, I, K)] += ld<T>(w, amdim_ohwi_index(o, i, y, x, Ipad, K));
    }
}

extern "C" int amdim_oihw_to_ohwi_cuda(const amdim_cuda_ctx *c, const float *w, int O, int I, int K, int Ipad, void *out)
{
    size_t n = (size_t)O * Ipad * K * K;
    LAUNCH_ACT(c, to_ohwi_kernel, grid_for(n), AMDIM_THREADS, w, O, I, K, Ipad, out);
    note(c, "filter layout", 4.0 * O * I * K * K + n * act_es(c));
    return launch_check(c, "amdim_oihw_to_ohwi_cuda");
}

extern "C" int amdim_ohwi_to_oihw_add_cuda(const amdim_cuda_ctx *c, const void *w, int O, int I, int K, int Ipad,
                                     float *out)
{
    size_t n = (size_t)O * I * K * K;
    LAUNCH_ACT(c, add_oihw_kernel, grid_for(n), AMDIM_THREADS, w, O, I, K, Ipad, out);
    note(c, "filter layout", 8.0 * n + (double)O * Ipad * K * K * act_es(c));
    return launch_check(c, "amdim_ohwi_to_oihw_add_cuda");
}
