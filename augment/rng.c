/* Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
 * 3", SC'11): a counter-based generator, so any (seed, epoch, index) stream
 * can be produced independently by any worker. */
#include "amdim_augment.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static void philox_block(const uint32_t key[2], const uint32_t ctr[4], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

void amdim_rng_init(amdim_rng *r, uint64_t seed, uint64_t epoch, uint64_t index)
{
    r->key[0] = (uint32_t)seed;
    r->key[1] = (uint32_t)(seed >> 32);
    r->ctr[0] = (uint32_t)index;
    r->ctr[1] = (uint32_t)(index >> 32);
    r->ctr[2] = (uint32_t)epoch;
    r->ctr[3] = (uint32_t)(epoch >> 32) << 16; /* low 16 bits count blocks */
    r->avail = 0;
}

uint32_t amdim_rng_u32(amdim_rng *r)
{
    if (r->avail == 0) {
        philox_block(r->key, r->ctr, r->out);
        r->ctr[3]++;
        r->avail = 4;
    }
    return r->out[4 - r->avail--];
}

float amdim_rng_uniform(amdim_rng *r, float lo, float hi)
{
    float u = (float)(amdim_rng_u32(r) >> 8) * (1.0f / 16777216.0f);
    return lo + (hi - lo) * u;
}

int amdim_rng_int(amdim_rng *r, int lo, int hi)
{
    uint32_t range = (uint32_t)(hi - lo) + 1u;
    if (range == 0)
        return (int)amdim_rng_u32(r);
    uint32_t threshold = (0u - range) % range; /* reject the biased low end */
    uint32_t x;
    do
        x = amdim_rng_u32(r);
    while (x < threshold);
    return lo + (int)(x % range);
}
