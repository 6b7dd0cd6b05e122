/* amdim_bf16_bits / amdim_bf16_value (trainer/model/elementwise_internal.h, the CPU side
 * of the CUDA backend's bf16 storage) against NVIDIA's own conversion:
 * cuda_bf16.h's host implementation of __float2bfloat16_rn, the map the
 * kernels' stores use. Host code only (nvcc), runs without a GPU.
 * Rounding depends on the low 17 bits, so every upper half (65,536 signs,
 * exponents and bf16 mantissas, NaNs and infinities among them) is tried
 * with the low halves at and around every tie, plus 2^24 random floats. */
#include <cuda_bf16.h>
#include <stdio.h>
#include <string.h>

#include "elementwise_internal.h"

static unsigned long checks, failures;

static void check(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    __nv_bfloat16 ref = __float2bfloat16_rn(f);
    __nv_bfloat16_raw raw = ref;
    uint16_t ours = amdim_bf16_bits(f);
    checks++;
    if (ours != raw.x && failures++ < 10)
        fprintf(stderr, "FAIL: float bits 0x%08x: amdim_bf16_bits 0x%04x, __float2bfloat16_rn 0x%04x\n", u, ours,
                raw.x);
    /* the value: bf16 bits to float as NVIDIA widens them */
    float back = __bfloat162float(ref), mine = amdim_bf16_value(raw.x);
    if (memcmp(&back, &mine, sizeof back) && failures++ < 10)
        fprintf(stderr, "FAIL: bf16 0x%04x: amdim_bf16_value %a, __bfloat162float %a\n", raw.x, mine, back);
}

int main(void)
{
    static const uint32_t low[] = {0x0000, 0x0001, 0x7ffe, 0x7fff, 0x8000, 0x8001, 0xbfff, 0xfffe, 0xffff, 0x4000,
                                   0x1234, 0xc000};
    for (uint32_t hi = 0; hi < 0x10000u; hi++)
        for (size_t k = 0; k < sizeof low / sizeof *low; k++)
            check(hi << 16 | low[k]);
    uint64_t x = 0x9e3779b97f4a7c15ull; /* splitmix64 */
    for (int i = 0; i < 1 << 24; i++) {
        uint64_t z = (x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        check((uint32_t)(z ^ (z >> 31)));
    }
    /* rounding a float to bf16 and back is amdim_bf16_round */
    float tie = 1.0f + 1.0f / 256, above = tie + 1.0f / 512; /* bf16's step at 1 is 2^-7 */
    if (amdim_bf16_round(tie) != 1.0f || amdim_bf16_round(above) != 1.0f + 1.0f / 128)
        failures++, fprintf(stderr, "FAIL: amdim_bf16_round: %a -> %a, %a -> %a\n", tie, amdim_bf16_round(tie), above,
                            amdim_bf16_round(above));
    printf("test_bf16_round: %lu bit patterns, %lu failures\n", checks, failures);
    return failures ? 1 : 0;
}
