/* Fused Adam over one tensor: fp32 master weights and moments, optional bf16 copy. */
#include <cuda_bf16.h>

#include "launch_internal.cuh"

static __global__ void adam_kernel(float *w, const float *g, float *m, float *v, size_t n, const amdim_adam_hparams *hp,
                            uint16_t *bf16)
{
    amdim_adam_hparams h = *hp;
    GRID_STRIDE(i, n)
    {
        float mi = m[i], vi = v[i];
        float nw = amdim_adam_element(w[i], g[i], &mi, &vi, &h);
        w[i] = nw;
        m[i] = mi;
        v[i] = vi;
        if (bf16)
            bf16[i] = __bfloat16_as_ushort(__float2bfloat16_rn(nw));
    }
}

extern "C" int amdim_adam_cuda(const amdim_cuda_ctx *c, float *w, const float *g, float *m, float *v, size_t n,
                         const amdim_adam_hparams *h, uint16_t *bf16)
{
    LAUNCH(c, adam_kernel, grid_for(n), AMDIM_THREADS, w, g, m, v, n, h, bf16);
    note(c, "Adam", 28.0 * n + (bf16 ? 2.0 * n : 0.0));
    return launch_check(c, "amdim_adam_cuda");
}
