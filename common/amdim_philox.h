/* amdim philox: the counter-based random numbers of the whole project,
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
 * 3", SC'11). Any element of any stream can be computed independently, by
 * any loader worker, CPU thread or GPU thread.
 *
 * Key: the 64-bit seed (word 0 = low half). Counter layout, 4 x 32 bits:
 *   words 0-1  index   64 bits: the record, the update or the tensor
 *   word  2    stream  32 bits: what the numbers are for (below)
 *   word  3    block   32 bits: 4 words per block, so 2^34 words per
 *                               (stream, index): ample for any tensor
 * Word k of (seed, stream, index) is word k % 4 of block k / 4.
 *
 * Streams: 0 .. 2^31 - 1 are data epochs (the augmentation of record
 * `index` in epoch `stream`); AMDIM_STREAM_* (0xFFFFFF00 and up) are the
 * trainer's. Epochs, records and updates therefore never share numbers. */
#ifndef AMDIM_PHILOX_H
#define AMDIM_PHILOX_H

#include <stdint.h>

/* Functions that CUDA kernels and CPU code share. */
#ifdef __CUDACC__
#define AMDIM_HD static inline __host__ __device__
#else
#define AMDIM_HD static inline
#endif

enum {
    AMDIM_STREAM_INIT = 0xFFFFFF01u,        /* parameter initialisation, index = tensor */
    AMDIM_STREAM_STEP = 0xFFFFFF02u,        /* per-update draws (5x5 sources, dropout), index = update */
    AMDIM_STREAM_BN_REFRESH = 0xFFFFFF03u,  /* dropout while refreshing BatchNorm, index = refresh call */
    AMDIM_STREAM_PROBE_INIT = 0xFFFFFF04u,  /* re-initialised probes, index = tensor */
    AMDIM_STREAM_PROBE_STEP = 0xFFFFFF05u,  /* classifier-phase dropout, index = update */
    AMDIM_STREAM_EPOCH_ORDER = 0xFFFFFF06u, /* reserved: the loader's epoch permutations */
};

/* One Philox4x32-10 block. */
AMDIM_HD void amdim_philox_block(uint32_t k0, uint32_t k1, const uint32_t ctr[4], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* Word k of the stream (seed, stream, index): element-addressable. */
AMDIM_HD uint32_t amdim_philox_word(uint64_t seed, uint32_t stream, uint64_t index, uint64_t k)
{
    uint32_t ctr[4] = {(uint32_t)index, (uint32_t)(index >> 32), stream, (uint32_t)(k >> 2)}, out[4];
    amdim_philox_block((uint32_t)seed, (uint32_t)(seed >> 32), ctr, out);
    return out[k & 3];
}

/* Uniform float in [0, 1) from the top 24 bits of a word. */
AMDIM_HD float amdim_philox_unit(uint32_t word) { return (float)(word >> 8) * (1.0f / 16777216.0f); }

/* A sequential reader of one stream. */
typedef struct {
    uint32_t key[2];
    uint32_t ctr[4];
    uint32_t out[4];
    int avail; /* unread words left in out */
} amdim_rng;

/* Starts reading (seed, stream, index) at word 0. */
void amdim_rng_init(amdim_rng *r, uint64_t seed, uint32_t stream, uint64_t index);
/* The next word: word k on the k-th call (k from 0). */
uint32_t amdim_rng_u32(amdim_rng *r);
/* Uniform float in [lo, hi) with 24 random bits. */
float amdim_rng_uniform(amdim_rng *r, float lo, float hi);
/* Uniform integer in [lo, hi] (inclusive), unbiased (rejects the low end). */
int amdim_rng_int(amdim_rng *r, int lo, int hi);

#endif
