/* Sequential reading of Philox streams (see amdim_philox.h). */
#include "amdim_philox.h"

void amdim_rng_init(amdim_rng *r, uint64_t seed, uint32_t stream, uint64_t index)
{
    r->key[0] = (uint32_t)seed;
    r->key[1] = (uint32_t)(seed >> 32);
    r->ctr[0] = (uint32_t)index;
    r->ctr[1] = (uint32_t)(index >> 32);
    r->ctr[2] = stream;
    r->ctr[3] = 0;
    r->avail = 0;
}

uint32_t amdim_rng_u32(amdim_rng *r)
{
    if (r->avail == 0) {
        amdim_philox_block(r->key[0], r->key[1], r->ctr, r->out);
        r->ctr[3]++;
        r->avail = 4;
    }
    return r->out[4 - r->avail--];
}

float amdim_rng_uniform(amdim_rng *r, float lo, float hi)
{
    return lo + (hi - lo) * amdim_philox_unit(amdim_rng_u32(r));
}

int amdim_rng_int(amdim_rng *r, int lo, int hi)
{
    uint32_t range = (uint32_t)(hi - lo) + 1u;
    if (range == 0)
        return (int)amdim_rng_u32(r);
    uint32_t threshold = (0u - range) % range;
    uint32_t x;
    do
        x = amdim_rng_u32(r);
    while (x < threshold);
    return lo + (int)(x % range);
}
