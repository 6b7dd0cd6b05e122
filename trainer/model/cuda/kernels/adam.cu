/* Fused Adam over the parameter blocks in one launch: fp32 master weights
 * and moments, optional bf16 copy; one block per chunk of a tensor. */
#include <cuda_bf16.h>

#include "launch_internal.cuh"

static __global__ void adam_kernel(float *w, const float *g, float *m, float *v, uint16_t *bf16,
                                   const amdim_adam_chunk *chunks, const amdim_adam_hparams *hp)
{
    amdim_adam_hparams h = *hp;
    amdim_adam_chunk ch = chunks[blockIdx.x];
    for (uint32_t j = threadIdx.x; j < ch.n; j += blockDim.x) {
        size_t wi = ch.w + j, gi = ch.g + j;
        float mi = m[gi], vi = v[gi];
        float nw = amdim_adam_element(w[wi], g[gi], &mi, &vi, &h);
        w[wi] = nw;
        m[gi] = mi;
        v[gi] = vi;
        if (bf16)
            bf16[wi] = __bfloat16_as_ushort(__float2bfloat16_rn(nw));
    }
}

extern "C" int amdim_adam_cuda(const amdim_cuda_ctx *c, float *w, const float *g, float *m, float *v, uint16_t *bf16,
                               const amdim_adam_chunk *chunks, uint32_t nchunks, size_t elems,
                               const amdim_adam_hparams *h)
{
    if (nchunks == 0)
        return 0;
    LAUNCH(c, adam_kernel, nchunks, AMDIM_THREADS, w, g, m, v, bf16, chunks, h);
    note(c, "Adam", 28.0 * elems + (bf16 ? 2.0 * elems : 0.0) + 24.0 * nchunks);
    return launch_check(c, "amdim_adam_cuda");
}
