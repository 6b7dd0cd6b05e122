/* Private to the CUDA backend: how the deterministic per-channel
 * reductions (batchnorm.cu) cut N rows into chunks, shared with the host
 * plan (plan.c) that sizes their scratch. */
#ifndef AMDIM_CUDA_BN_CHUNKS_H
#define AMDIM_CUDA_BN_CHUNKS_H

#include <stddef.h>

#include "amdim_philox.h" /* AMDIM_HD */

enum { AMDIM_BN_CHUNK_ROWS = 256, AMDIM_BN_MAX_CHUNKS = 256 };

/* Chunks of the rows (1 .. AMDIM_BN_MAX_CHUNKS). */
AMDIM_HD size_t amdim_bn_chunks(size_t N)
{
    size_t p = (N + AMDIM_BN_CHUNK_ROWS - 1) / AMDIM_BN_CHUNK_ROWS;
    return p < 1 ? 1 : p > (size_t)AMDIM_BN_MAX_CHUNKS ? (size_t)AMDIM_BN_MAX_CHUNKS : p;
}

/* Scratch doubles of one reduction over (N, C): partials (P, C, 2), finals
 * (C, 2), double means (C). */
AMDIM_HD size_t amdim_bn_scratch_doubles(size_t N, int C) { return (amdim_bn_chunks(N) + 1) * 2 * (size_t)C + (size_t)C; }

#endif
