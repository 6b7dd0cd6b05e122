/* Philox4x32-10 (common/amdim_philox.h): the known-answer vectors of the
 * Random123 distribution, element addressing equals sequential reading,
 * and the counter layout keeps streams and indices apart beyond 2^16
 * blocks (the ImageNet epoch order reads about 320k blocks). */
#include <string.h>

#include "amdim_philox.h"
#include "testutil.h"

int main(void)
{
    static const uint32_t kat[3][10] = {
        /* ctr[4], key[2], expected[4] */
        {0, 0, 0, 0, 0, 0, 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u},
        {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x408f276du, 0x41c83b0eu,
         0xa20bc7c6u, 0x6d5451fdu},
        {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u, 0xd16cfe09u, 0x94fdccebu,
         0x5001e420u, 0x24126ea1u},
    };
    for (int t = 0; t < 3; t++) {
        uint32_t out[4];
        amdim_philox_block(kat[t][4], kat[t][5], kat[t], out);
        CHECK(memcmp(out, kat[t] + 6, sizeof out) == 0, "known-answer vector %d: %08x %08x %08x %08x", t, out[0], out[1],
              out[2], out[3]);
    }
    /* word k by address == k-th sequential word, across 2^16 blocks */
    amdim_rng r;
    amdim_rng_init(&r, 0x123456789abcdefULL, AMDIM_STREAM_STEP, 77);
    int same = 1;
    for (uint64_t k = 0; k < (1u << 18) + 8; k++) {
        uint32_t a = amdim_rng_u32(&r);
        if (k % 997 == 0 || k >= (1u << 18))
            same &= a == amdim_philox_word(0x123456789abcdefULL, AMDIM_STREAM_STEP, 77, k);
    }
    CHECK(same, "element-addressed words differ from the sequential stream");
    /* block 2^16 of stream s is not block 0 of another stream */
    uint32_t far = amdim_philox_word(5, 3, 9, (uint64_t)4 << 16);
    int clash = 0;
    for (uint32_t s = 0; s < 8; s++)
        clash += far == amdim_philox_word(5, s, 9, 0);
    CHECK(clash == 0, "a long stream ran into another stream's words");
    return test_finish("test_philox");
}
