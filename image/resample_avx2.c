/* AVX2 versions of the two resampling passes. They compute exactly what the
 * plain C passes compute (32-bit products and sums of the same 22-bit
 * weights, the same rounding and clipping), eight lanes at a time. */
#include <immintrin.h>
#include <string.h>

#include "resample_internal.h"

/* The horizontal pass is done as a vertical one: the source block is
 * transposed (source column x becomes row x), filtered by the vertical
 * kernel, and the result transposed back. Transposed rows are padded so
 * that the 4-pixel transposition may write 4 bytes past a row's pixels. */
static size_t transposed_stride(int pixels) { return ((size_t)pixels * 3 + 4 + 31) & ~(size_t)31; }

size_t amdim_resample_h_aux_bytes(int out_size, int rows, int cols)
{
    return (size_t)(cols + out_size) * transposed_stride(rows) + (size_t)out_size * 2 * sizeof(int) + 64;
}

size_t amdim_resample_mid_stride(int width) { return transposed_stride(width); }

/* dst row x, pixel y = src row y, pixel x, for w x h RGB pixels. Blocks of
 * 4 x 4 pixels move as 16-byte vectors: each load reads 4 bytes past the
 * 12 it uses (done only where src_end allows), each store writes 4 bytes
 * past its 12 (into the next block, written later, or the row padding). */
static void transpose_rgb(const uint8_t *src, size_t ss, const uint8_t *src_end, int w, int h, uint8_t *dst,
                          size_t ds)
{
    const __m128i expand = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    const __m128i squeeze = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    int x = 0;
    for (; x + 4 <= w; x += 4) {
        const uint8_t *s = src + (size_t)x * 3;
        uint8_t *d = dst + (size_t)x * ds;
        int y = 0;
        for (; y + 4 <= h && s + (size_t)(y + 3) * ss + 16 <= src_end; y += 4) {
            const uint8_t *r = s + (size_t)y * ss;
            __m128i a = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)r), expand);
            __m128i b = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(r + ss)), expand);
            __m128i c = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(r + 2 * ss)), expand);
            __m128i e = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(r + 3 * ss)), expand);
            __m128i ab0 = _mm_unpacklo_epi32(a, b), ab1 = _mm_unpackhi_epi32(a, b);
            __m128i ce0 = _mm_unpacklo_epi32(c, e), ce1 = _mm_unpackhi_epi32(c, e);
            uint8_t *o = d + (size_t)y * 3;
            _mm_storeu_si128((__m128i *)o, _mm_shuffle_epi8(_mm_unpacklo_epi64(ab0, ce0), squeeze));
            _mm_storeu_si128((__m128i *)(o + ds), _mm_shuffle_epi8(_mm_unpackhi_epi64(ab0, ce0), squeeze));
            _mm_storeu_si128((__m128i *)(o + 2 * ds), _mm_shuffle_epi8(_mm_unpacklo_epi64(ab1, ce1), squeeze));
            _mm_storeu_si128((__m128i *)(o + 3 * ds), _mm_shuffle_epi8(_mm_unpackhi_epi64(ab1, ce1), squeeze));
        }
        for (; y < h; y++)
            for (int k = 0; k < 4; k++)
                memcpy(d + (size_t)k * ds + (size_t)y * 3, s + (size_t)y * ss + (size_t)k * 3, 3);
    }
    for (; x < w; x++)
        for (int y = 0; y < h; y++)
            memcpy(dst + (size_t)x * ds + (size_t)y * 3, src + (size_t)y * ss + (size_t)x * 3, 3);
}

/* RGB, interleaved. dst_stride must be amdim_resample_mid_stride(out_size)
 * or more (the transposition writes into the padding). */
void amdim_resample_h_avx2(const amdim_resample_pass *p)
{
    int c0 = p->bounds[0], c1 = 0;
    for (int xx = 0; xx < p->out_size; xx++) {
        int b = p->bounds[2 * xx], e = b + p->bounds[2 * xx + 1];
        c0 = b < c0 ? b : c0;
        c1 = e > c1 ? e : c1;
    }
    const size_t ts = transposed_stride(p->rows);
    uint8_t *t = (uint8_t *)(((uintptr_t)p->aux + 31) & ~(uintptr_t)31);
    uint8_t *mt = t + (size_t)(c1 - c0) * ts;
    int *bounds = (int *)(mt + (size_t)p->out_size * ts);
    for (int xx = 0; xx < p->out_size; xx++) {
        bounds[2 * xx] = p->bounds[2 * xx] - c0;
        bounds[2 * xx + 1] = p->bounds[2 * xx + 1];
    }
    transpose_rgb(p->src + (size_t)c0 * 3, p->src_stride, p->src_end, c1 - c0, p->rows, t, ts);
    amdim_resample_pass v = {.src = t,
                             .src_stride = ts,
                             .dst = mt,
                             .dst_stride = ts,
                             .out_size = p->out_size,
                             .channels = 3,
                             .row_bytes = p->rows * 3,
                             .ksize = p->ksize,
                             .bounds = bounds,
                             .kk = p->kk};
    amdim_resample_v_avx2(&v);
    transpose_rgb(mt, ts, mt + (size_t)p->out_size * ts, p->rows, p->out_size, p->dst, p->dst_stride);
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
