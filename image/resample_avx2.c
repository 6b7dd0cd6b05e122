/* AVX2 versions of the two resampling passes. They compute exactly what the
 * plain C passes compute (32-bit products and sums of the same 22-bit
 * weights, the same rounding and clipping), eight lanes at a time. */
#include <immintrin.h>
#include <string.h>

#include "resample_internal.h"

size_t amdim_resample_h_aux_bytes(int out_size, int ksize)
{
    return (size_t)out_size * (size_t)((ksize + 1) / 2) * 8 * sizeof(int32_t) + 32;
}

/* Eight source bytes at p (two RGB pixels and two spare bytes), without
 * reading past end. */
static inline __m128i load8(const uint8_t *p, const uint8_t *end)
{
    if (p + 8 <= end)
        return _mm_loadl_epi64((const __m128i *)p);
    uint8_t tmp[8] = {0};
    memcpy(tmp, p, (size_t)(end - p) < 8 ? (size_t)(end - p) : 8);
    return _mm_loadl_epi64((const __m128i *)tmp);
}

/* RGB, interleaved: each step multiplies two taps, (R G B 0 R G B 0). */
void amdim_resample_h_avx2(const amdim_resample_pass *p)
{
    const int npairs = (p->ksize + 1) / 2;
    int32_t *wx = (int32_t *)(((uintptr_t)p->aux + 31) & ~(uintptr_t)31);
    for (int xx = 0; xx < p->out_size; xx++) {
        const int32_t *k = p->kk + (size_t)xx * p->ksize;
        int32_t *w = wx + (size_t)xx * npairs * 8;
        for (int t = 0; t < npairs; t++) {
            int32_t k0 = k[2 * t], k1 = 2 * t + 1 < p->ksize ? k[2 * t + 1] : 0;
            int32_t v[8] = {k0, k0, k0, 0, k1, k1, k1, 0};
            memcpy(w + 8 * t, v, sizeof v);
        }
    }
    const __m128i spread = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i half = _mm_set1_epi32(1 << (PRECISION_BITS - 1));
    for (int y = 0; y < p->rows; y++) {
        const uint8_t *in = p->src + (size_t)y * p->src_stride;
        uint8_t *out = p->dst + (size_t)y * p->dst_stride;
        for (int xx = 0; xx < p->out_size; xx++) {
            const int xmin = p->bounds[2 * xx], xn = p->bounds[2 * xx + 1];
            const int32_t *w = wx + (size_t)xx * npairs * 8;
            const uint8_t *s = in + (size_t)xmin * 3;
            __m256i acc = _mm256_setzero_si256();
            /* Taps past xn have weight 0, so the pair that straddles the end
             * reads one pixel more than it uses. */
            for (int t = 0; t < (xn + 1) / 2; t++) {
                __m128i px = _mm_shuffle_epi8(load8(s + 6 * t, p->src_end), spread);
                __m256i v = _mm256_cvtepu8_epi32(px);
                acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(v, _mm256_load_si256((const __m256i *)(w + 8 * t))));
            }
            __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
            sum = _mm_srai_epi32(_mm_add_epi32(sum, half), PRECISION_BITS);
            sum = _mm_packus_epi16(_mm_packs_epi32(sum, sum), sum);
            uint32_t rgb = (uint32_t)_mm_cvtsi128_si32(sum);
            memcpy(out + (size_t)xx * 3, &rgb, 3);
        }
    }
}

/* Any channel count: rows are filtered as flat byte arrays, 16 bytes a step. */
void amdim_resample_v_avx2(const amdim_resample_pass *p)
{
    const int n = p->row_bytes;
    const __m256i half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    for (int yy = 0; yy < p->out_size; yy++) {
        const int ymin = p->bounds[2 * yy], yn = p->bounds[2 * yy + 1];
        const int32_t *k = p->kk + (size_t)yy * p->ksize;
        const uint8_t *in = p->src + (size_t)ymin * p->src_stride;
        uint8_t *out = p->dst + (size_t)yy * p->dst_stride;
        int xx = 0;
        for (; xx + 16 <= n; xx += 16) {
            __m256i a0 = half, a1 = half;
            for (int y = 0; y < yn; y++) {
                __m128i b = _mm_loadu_si128((const __m128i *)(in + (size_t)y * p->src_stride + xx));
                __m256i w = _mm256_set1_epi32(k[y]);
                a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(b), w));
                a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)), w));
            }
            a0 = _mm256_srai_epi32(a0, PRECISION_BITS);
            a1 = _mm256_srai_epi32(a1, PRECISION_BITS);
            __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(a0, a1), 0xD8);
            __m128i b8 = _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
            _mm_storeu_si128((__m128i *)(out + xx), b8);
        }
        for (; xx < n; xx++) {
            int32_t ss = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < yn; y++)
                ss += in[(size_t)y * p->src_stride + xx] * k[y];
            ss >>= PRECISION_BITS;
            out[xx] = ss < 0 ? 0 : ss > 255 ? 255 : (uint8_t)ss;
        }
    }
}
