/* The CUDA backend's inputs (cuda_internal.h): views normalised on the
 * device, page-locked rings and the copy stream's staging. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* ---- inputs ------------------------------------------------------------------------ */

/* Device uint8 (B, S, S, 3) -> x (B, S, S, in_ch) activations, normalised
 * (channels past 3 zero: plan.h, amdim_cuda_in_channels). */
static int normalise(amdim_model *m, const uint8_t *u8, int B, void *x)
{
    int S = m->cfg.encoder_size;
    float scale[3], shift[3];
    for (int c = 0; c < 3; c++) {
        scale[c] = 1.0f / (255.0f * m->cfg.std[c]);
        shift[c] = m->cfg.mean[c] / m->cfg.std[c];
    }
    return amdim_normalise_u8_cuda(kctx(m), u8, (size_t)B * S * S, scale, shift,
                                   amdim_cuda_in_channels((int)act_bytes(m)), x);
}

int amdim_cuda_load_u8(amdim_model *m, const uint8_t *u8, int B, void *x)
{
    const amdim_cuda_plan *P = &cuda_of(m)->plan;
    int S = m->cfg.encoder_size;
    AMDIM_TRY(amdim_cuda_copy(m, act(m, P->u8), u8, (size_t)B * S * S * 3, cudaMemcpyHostToDevice));
    return normalise(m, (const uint8_t *)(const void *)act(m, P->u8), B, x);
}

int amdim_cuda_load_input(amdim_model *m, const amdim_step_input *in, int v)
{
    amdim_cuda_state *c = m->bs;
    const amdim_cuda_plan *P = &c->plan;
    int S = m->cfg.encoder_size, B = in->batch;
    if (in->staged) { /* the copy stream's copy, normalised on the compute stream */
        int s = in->staged - 1;
        AMDIM_CU(cudaStreamWaitEvent(c->stream, c->copied[s], 0), "cudaStreamWaitEvent");
        AMDIM_TRY(normalise(m, c->input[s] + (size_t)v * B * S * S * 3, B, act(m, P->x[v])));
        if (v == 1)
            AMDIM_CU(cudaEventRecord(c->consumed[s], c->stream), "cudaEventRecord");
        return AMDIM_OK;
    }
    if (in->u8[v])
        return amdim_cuda_load_u8(m, in->u8[v], B, act(m, P->x[v]));
    /* (B, 3, S, S) float via the scratch (float staging, plan.h) */
    AMDIM_TRY(amdim_cuda_copy(m, act(m, P->scratch), in->f32[v], (size_t)B * 3 * S * S * sizeof(float),
                              cudaMemcpyHostToDevice));
    return amdim_nchw_to_nhwc_cuda(kctx(m), act(m, P->scratch), B, 3, S * S, P->in_ch, act(m, P->x[v]));
}

/* The loader's rings are shared memory (memfd, MAP_SHARED, page-aligned):
 * page-locked once here, every view copy from them is DMA. */
int amdim_cuda_register_host(amdim_model *m, void *base, size_t bytes)
{
    AMDIM_CU(cudaHostRegister(base, bytes, cudaHostRegisterDefault), "cudaHostRegister");
    return AMDIM_OK;
}

void amdim_cuda_unregister_host(amdim_model *m, void *base)
{
    (void)m;
    cudaHostUnregister(base);
}

/* The copy of a batch into input slot `slot`, on the copy stream, once
 * the compute stream has read the slot's previous batch. */
int amdim_cuda_stage_input(amdim_model *m, int slot, const uint8_t *v1, const uint8_t *v2, int B)
{
    amdim_cuda_state *c = m->bs;
    size_t S = (size_t)m->cfg.encoder_size, view = (size_t)B * S * S * 3;
    if (c->input_cap[slot] < 2 * view) { /* grown for a larger batch, the other slot kept: streams idle first */
        AMDIM_CU(cudaStreamSynchronize(c->copy), "cudaStreamSynchronize");
        AMDIM_CU(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
        cudaFree(c->input[slot]);
        c->input[slot] = NULL;
        c->input_cap[slot] = 0;
        cudaError_t e = cudaMalloc((void **)&c->input[slot], 2 * view);
        if (e != cudaSuccess) {
            c->input[slot] = NULL;
            return amdim_cuda_fail(m, e, "cudaMalloc (input slot)");
        }
        c->input_cap[slot] = 2 * view;
    }
    AMDIM_CU(cudaStreamWaitEvent(c->copy, c->consumed[slot], 0), "cudaStreamWaitEvent");
    AMDIM_CU(cudaMemcpyAsync(c->input[slot], v1, view, cudaMemcpyHostToDevice, c->copy), "cudaMemcpyAsync (view 1)");
    AMDIM_CU(cudaMemcpyAsync(c->input[slot] + view, v2, view, cudaMemcpyHostToDevice, c->copy),
             "cudaMemcpyAsync (view 2)");
    AMDIM_CU(cudaEventRecord(c->copied[slot], c->copy), "cudaEventRecord");
    return AMDIM_OK;
}

int amdim_cuda_stage_wait(amdim_model *m, int slot)
{
    AMDIM_CU(cudaEventSynchronize(cuda_of(m)->copied[slot]), "cudaEventSynchronize (input copy)");
    return AMDIM_OK;
}
