/* AVX-512 (F/BW/VL/DQ/VBMI) versions of the colour steps in color.c, 16
 * pixels a step. As in color_avx2.c, each follows the scalar oracle's
 * arithmetic, so the bytes are the same (tests/test_augment_simd.c).
 * Brightness and contrast map each byte through a 256-entry table built by
 * the oracle's own blend, looked up with two vpermi2b. */
#include <immintrin.h>

#include "amdim_augment.h"
#include "augment_internal.h"

/* 16 interleaved RGB pixels are 48 bytes: the low 48 of a zmm. */
static const __mmask64 rgb16_bytes = 0x0000FFFFFFFFFFFFull;
/* Byte 0 of each 32-bit lane. */
static const __mmask64 lane_low_byte = 0x1111111111111111ull;

static inline __m512i load_rgb16(const uint8_t *p) { return _mm512_maskz_loadu_epi8(rgb16_bytes, p); }
/* The kernels that write pixels in place load block k + 1 before storing
 * block k: a load just after a masked store to the 64 bytes before it waits
 * for the store to reach the cache (measured: 2x to 4x slower without). Returns
 * the block at p + 48 if npix - i >= 32 pixels remain, else zeros. */
static inline __m512i load_next16(const uint8_t *p, size_t i, size_t npix)
{
    return i + 32 <= npix ? load_rgb16(p + 3 * (i + 16)) : _mm512_setzero_si512();
}
static inline void store_rgb16(uint8_t *p, __m512i v) { _mm512_mask_storeu_epi8(p, rgb16_bytes, v); }

/* Byte 4k of the result is byte 3k + c of v (k = 0..15), the others 0:
 * channel c of 16 pixels as int32x16. */
static inline __m512i channel16(__m512i v, int c)
{
    const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45),
                                         _mm512_set1_epi32(c));
    return _mm512_maskz_permutexvar_epi8(lane_low_byte, idx, v);
}

/* Three int32x16 with values in 0..255 -> 48 interleaved bytes (low 48 of
 * the result): byte 3k + c is byte 0 of lane k of channel c. */
static inline __m512i interleave16(__m512i r, __m512i g, __m512i b)
{
    const __m512i rgb = _mm512_ternarylogic_epi32(r, _mm512_slli_epi32(g, 8), _mm512_slli_epi32(b, 16), 0xFE);
    /* byte 3k + c <- byte 4k + c */
    const __m512i idx = _mm512_set_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 62, 61, 60, 58, 57, 56, 54, 53,
                                        52, 50, 49, 48, 46, 45, 44, 42, 41, 40, 38, 37, 36, 34, 33, 32, 30, 29, 28, 26,
                                        25, 24, 22, 21, 20, 18, 17, 16, 14, 13, 12, 10, 9, 8, 6, 5, 4, 2, 1, 0);
    return _mm512_permutexvar_epi8(idx, rgb);
}

/* PIL's L level: (19595 R + 38470 G + 7471 B + 0x8000) >> 16. */
static inline __m512i grey16(__m512i r, __m512i g, __m512i b)
{
    __m512i s = _mm512_mullo_epi32(r, _mm512_set1_epi32(19595));
    s = _mm512_add_epi32(s, _mm512_mullo_epi32(g, _mm512_set1_epi32(38470)));
    s = _mm512_add_epi32(s, _mm512_mullo_epi32(b, _mm512_set1_epi32(7471)));
    return _mm512_srli_epi32(_mm512_add_epi32(s, _mm512_set1_epi32(0x8000)), 16);
}

/* p[i] = table[p[i]] for n bytes, 64 a step. */
static void map_bytes(uint8_t *p, size_t n, const uint8_t table[256])
{
    const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
    const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512i v = _mm512_loadu_si512(p + i);
        const __m512i lo = _mm512_permutex2var_epi8(t0, v, t1), hi = _mm512_permutex2var_epi8(t2, v, t3);
        _mm512_storeu_si512(p + i, _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), lo, hi));
    }
    for (; i < n; i++)
        p[i] = table[p[i]];
}

void amdim_adjust_brightness_avx512(uint8_t *p, size_t npix, float f)
{
    uint8_t table[256];
    amdim_blend_table(table, 0, f);
    map_bytes(p, npix * 3, table);
}

void amdim_adjust_contrast_avx512(uint8_t *p, size_t npix, float f)
{
    __m512i acc = _mm512_setzero_si512();
    size_t i = 0;
    for (; i + 16 <= npix; i += 16) {
        const __m512i v = load_rgb16(p + 3 * i);
        const __m512i l = grey16(channel16(v, 0), channel16(v, 1), channel16(v, 2));
        acc = _mm512_add_epi64(acc, _mm512_sad_epu8(l, _mm512_setzero_si512())); /* levels fit a byte */
    }
    uint64_t sum = (uint64_t)_mm512_reduce_add_epi64(acc);
    for (; i < npix; i++)
        sum += amdim_grey_level(p + 3 * i);
    const int mean = (int)((double)sum / (double)npix + 0.5);
    uint8_t table[256];
    amdim_blend_table(table, mean, f);
    map_bytes(p, npix * 3, table);
}

/* blend(a, b, alpha) = trunc((float)a + alpha * (float)(b - a)), clipped
 * (a no-op when 0 <= alpha <= 1, as in the oracle). */
static inline __m512i blend16(__m512 a, __m512i ai, __m512i b, __m512 alpha)
{
    __m512 t = _mm512_add_ps(a, _mm512_mul_ps(alpha, _mm512_cvtepi32_ps(_mm512_sub_epi32(b, ai))));
    t = _mm512_min_ps(_mm512_max_ps(t, _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
    return _mm512_cvttps_epi32(t);
}

void amdim_adjust_saturation_avx512(uint8_t *p, size_t npix, float f)
{
    const __m512 alpha = _mm512_set1_ps(f);
    size_t i = 0;
    __m512i next = npix >= 16 ? load_rgb16(p) : _mm512_setzero_si512();
    for (; i + 16 <= npix; i += 16) {
        const __m512i v = next;
        next = load_next16(p, i, npix);
        const __m512i r = channel16(v, 0), g = channel16(v, 1), b = channel16(v, 2);
        const __m512i l = grey16(r, g, b);
        const __m512 lf = _mm512_cvtepi32_ps(l);
        store_rgb16(p + 3 * i, interleave16(blend16(lf, l, r, alpha), blend16(lf, l, g, alpha), blend16(lf, l, b, alpha)));
    }
    if (i < npix)
        amdim_adjust_saturation(p + 3 * i, npix - i, f);
}

void amdim_to_grey_avx512(uint8_t *p, size_t npix)
{
    /* byte 3k + c <- byte 4k */
    const __m512i spread = _mm512_set_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60, 60, 60, 56, 56, 56, 52,
                                           52, 52, 48, 48, 48, 44, 44, 44, 40, 40, 40, 36, 36, 36, 32, 32, 32, 28, 28,
                                           28, 24, 24, 24, 20, 20, 20, 16, 16, 16, 12, 12, 12, 8, 8, 8, 4, 4, 4, 0, 0,
                                           0);
    size_t i = 0;
    __m512i next = npix >= 16 ? load_rgb16(p) : _mm512_setzero_si512();
    for (; i + 16 <= npix; i += 16) {
        const __m512i v = next;
        next = load_next16(p, i, npix);
        const __m512i l = grey16(channel16(v, 0), channel16(v, 1), channel16(v, 2));
        store_rgb16(p + 3 * i, _mm512_permutexvar_epi8(spread, l));
    }
    if (i < npix)
        amdim_to_grey(p + 3 * i, npix - i);
}

/* |z - nearest integer| < 2^-14: see near_tie in color_avx2.c. */
static inline __mmask16 near_tie16(__m512 z)
{
    const __m512 frac = _mm512_reduce_ps(z, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_cmp_ps_mask(_mm512_abs_ps(frac), _mm512_set1_ps(1.0f / 16384), _CMP_LT_OQ);
}

static inline __m512i floor16(__m512 z) { return _mm512_cvt_roundps_epi32(z, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }

/* The oracle's s = trunc((double)(float)(cr / max) * 255.0): the float
 * product q * 255 truncates to the same integer for every
 * 1 <= cr <= max <= 255 (the exact product never lies just below an integer
 * the float rounds up to; checked over the RGB cube by the tests). Grey
 * pixels (cr = 0) give 0. */
static inline __m512i saturation16(__m512i cr, __m512 maxc)
{
    const __m512 q = _mm512_div_ps(_mm512_cvtepi32_ps(cr), _mm512_max_ps(maxc, _mm512_set1_ps(1.0f)));
    return _mm512_cvttps_epi32(_mm512_mul_ps(q, _mm512_set1_ps(255.0f)));
}

/* The algorithm of amdim_adjust_hue_avx2, 16 pixels a step. */
void amdim_adjust_hue_avx512(uint8_t *p, size_t npix, float hue)
{
    const int shift = (uint8_t)(int)((double)hue * 255.0);
    const amdim_hsv_tables *lut = amdim_hsv_tables_get();
    const __m512i b255 = _mm512_set1_epi32(255), unit = _mm512_set1_epi32(1 << 16);
    const __m512 one = _mm512_set1_ps(1.0f), c255 = _mm512_set1_ps(255.0f), half = _mm512_set1_ps(0.5f);
    /* bytes of w: v 0, q 1, p 2, t 3; pick[sector + 4 c] is the byte for
     * channel c (see amdim_adjust_hue_avx2) */
    const __m512i pick = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 2, 3, 0, 0, 1, 2, 2, 3, 0, 0, 1, 0, 0));
    __m512i spread = _mm512_setzero_si512(), channel_step = _mm512_setzero_si512(), pixel_base;
    {
        uint8_t s[64] = {0}, c[64] = {0};
        for (int k = 0; k < 48; k++)
            s[k] = (uint8_t)(4 * (k / 3)), c[k] = (uint8_t)(4 * (k % 3));
        spread = _mm512_loadu_si512(s);
        channel_step = _mm512_loadu_si512(c);
        pixel_base = spread;
    }
    size_t i = 0;
    __m512i next = npix >= 16 ? load_rgb16(p) : _mm512_setzero_si512();
    for (; i + 16 <= npix; i += 16) {
        const __m512i px = next;
        next = load_next16(p, i, npix);
        const __m512i r = channel16(px, 0), g = channel16(px, 1), b = channel16(px, 2);
        const __m512i maxc = _mm512_max_epi32(_mm512_max_epi32(r, g), b);
        const __m512i minc = _mm512_min_epi32(_mm512_min_epi32(r, g), b);
        const __m512i cr = _mm512_sub_epi32(maxc, minc);
        const __mmask16 is_r = _mm512_cmpeq_epi32_mask(r, maxc);
        const __mmask16 is_g = _mm512_mask_cmpeq_epi32_mask((__mmask16)~is_r, g, maxc);
        const __m512i o1 = _mm512_mask_mov_epi32(r, is_r, g);
        const __m512i o2 = _mm512_mask_mov_epi32(g, is_r | is_g, b);
        const __mmask16 o1_min = _mm512_cmpeq_epi32_mask(o1, minc);
        const __m512i d = _mm512_sub_epi32(maxc, _mm512_mask_mov_epi32(o1, o1_min, o2));
        /* (2 m + c) << 16: m = 0 r, 1 g, 2 b; c = 0 when o1 is the minimum */
        __m512i top = _mm512_set1_epi32(5 << 16);
        top = _mm512_mask_mov_epi32(top, is_g, _mm512_set1_epi32(3 << 16));
        top = _mm512_mask_mov_epi32(top, is_r, unit);
        top = _mm512_mask_sub_epi32(top, o1_min, top, unit);
        const __m512i cr8 = _mm512_slli_epi32(cr, 8);
        const __m512i hidx = _mm512_ternarylogic_epi32(top, cr8, d, 0xFE);
        const __m512i uh = _mm512_and_si512(
            _mm512_add_epi32(_mm512_i32gather_epi32(hidx, (const int *)lut->hue, 1), _mm512_set1_epi32(shift)), b255);
        const __m512 v = _mm512_cvtepi32_ps(maxc);
        const __m512i us = saturation16(cr, v);
        /* i = floor(6 h / 255), f, fs: as in amdim_adjust_hue_avx2 */
        const __m512i i6 = _mm512_srli_epi32(_mm512_mullo_epi16(uh, _mm512_set1_epi32(193)), 13);
        const __m512i j = _mm512_sub_epi32(_mm512_mullo_epi16(uh, _mm512_set1_epi32(6)),
                                           _mm512_mullo_epi16(i6, b255));
        const __m512i sector = _mm512_mask_mov_epi32(i6, _mm512_cmpeq_epi32_mask(uh, b255), _mm512_setzero_si512());
        const __m512 f = _mm512_div_ps(_mm512_cvtepi32_ps(j), c255);
        const __m512 fs = _mm512_div_ps(_mm512_cvtepi32_ps(us), c255);
        const __m512 zp = _mm512_add_ps(_mm512_fnmadd_ps(v, fs, v), half);
        const __m512 zq = _mm512_add_ps(_mm512_fnmadd_ps(v, _mm512_mul_ps(fs, f), v), half);
        const __m512 zt = _mm512_add_ps(_mm512_fnmadd_ps(v, _mm512_mul_ps(fs, _mm512_sub_ps(one, f)), v), half);
        if (near_tie16(zp) | near_tie16(zq) | near_tie16(zt)) {
            amdim_adjust_hue(p + 3 * i, 16, hue);
            continue;
        }
        const __m512i w = _mm512_ternarylogic_epi32(_mm512_or_si512(maxc, _mm512_slli_epi32(floor16(zq), 8)),
                                                    _mm512_slli_epi32(floor16(zp), 16),
                                                    _mm512_slli_epi32(floor16(zt), 24), 0xFE);
        /* output byte 3 k + c is byte pick[sector_k + 4 c] of pixel k */
        const __m512i key = _mm512_add_epi8(_mm512_permutexvar_epi8(spread, sector), channel_step);
        const __m512i idx = _mm512_add_epi8(_mm512_shuffle_epi8(pick, key), pixel_base);
        store_rgb16(p + 3 * i, _mm512_permutexvar_epi8(idx, w));
    }
    if (i < npix)
        amdim_adjust_hue(p + 3 * i, npix - i, hue);
}
