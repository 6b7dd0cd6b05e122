/* AVX2 versions of the colour steps in color.c. Each follows the scalar
 * oracle's arithmetic operation by operation (float where PIL uses float,
 * double where it uses double, truncation and rounding alike), so the bytes
 * are the same; tests/test_augment_simd.c checks that. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "amdim_augment.h"
#include "augment_internal.h"

/* ---- 8 interleaved RGB pixels <-> three int32x8 vectors ---------------- */

/* Pixels 0-3 in the low 128-bit lane, 4-7 in the high one, 12 bytes each
 * at the lane's start (low: bytes 0..11 of p; high: bytes 12..23, loaded
 * from p + 8 so that nothing past the 24 bytes is read). */
static inline __m256i load_rgb8_lanes(const uint8_t *p)
{
    const __m128i lo = _mm_loadu_si128((const __m128i *)p);
    const __m128i hi = _mm_srli_si128(_mm_loadu_si128((const __m128i *)(p + 8)), 4);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

static inline void load_rgb8(const uint8_t *p, __m256i *r, __m256i *g, __m256i *b)
{
    const __m256i v = load_rgb8_lanes(p);
    const __m256i mr = _mm256_setr_epi8(0, -1, -1, -1, 3, -1, -1, -1, 6, -1, -1, -1, 9, -1, -1, -1, 0, -1, -1, -1, 3,
                                        -1, -1, -1, 6, -1, -1, -1, 9, -1, -1, -1);
    const __m256i one = _mm256_set1_epi32(1);
    *r = _mm256_shuffle_epi8(v, mr);
    *g = _mm256_shuffle_epi8(v, _mm256_add_epi32(mr, one));
    *b = _mm256_shuffle_epi8(v, _mm256_add_epi32(mr, _mm256_add_epi32(one, one)));
}

/* The inverse of load_rgb8_lanes: 12 bytes at the start of each lane -> 24
 * bytes at p. */
static inline void store_rgb8_lanes(uint8_t *p, __m256i v)
{
    v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 7, 7));
    _mm_storeu_si128((__m128i *)p, _mm256_castsi256_si128(v));
    _mm_storel_epi64((__m128i *)(p + 16), _mm256_extracti128_si256(v, 1));
}

/* Three int32x8 with values in 0..255 -> 8 interleaved RGB pixels at p. */
static inline void store_rgb8(uint8_t *p, __m256i r, __m256i g, __m256i b)
{
    const __m256i squeeze = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6,
                                             8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    __m256i rgb = _mm256_or_si256(r, _mm256_or_si256(_mm256_slli_epi32(g, 8), _mm256_slli_epi32(b, 16)));
    store_rgb8_lanes(p, _mm256_shuffle_epi8(rgb, squeeze));
}

/* int32x8 with values in 0..255 -> 8 bytes in the low half. */
static inline __m128i pack8(__m256i v)
{
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_packus_epi16(w, w);
}

/* PIL's L level: (19595 R + 38470 G + 7471 B + 0x8000) >> 16. */
static inline __m256i grey8(__m256i r, __m256i g, __m256i b)
{
    __m256i s = _mm256_mullo_epi32(r, _mm256_set1_epi32(19595));
    s = _mm256_add_epi32(s, _mm256_mullo_epi32(g, _mm256_set1_epi32(38470)));
    s = _mm256_add_epi32(s, _mm256_mullo_epi32(b, _mm256_set1_epi32(7471)));
    return _mm256_srli_epi32(_mm256_add_epi32(s, _mm256_set1_epi32(0x8000)), 16);
}

/* blend(a, b, alpha) = clip(trunc((float)a + alpha * (float)(b - a))); the
 * clip is a no-op when 0 <= alpha <= 1, as in the oracle. */
static inline __m256i blend8(__m256i a, __m256i b, __m256 alpha)
{
    __m256 t = _mm256_add_ps(_mm256_cvtepi32_ps(a), _mm256_mul_ps(alpha, _mm256_cvtepi32_ps(_mm256_sub_epi32(b, a))));
    t = _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(255.0f));
    return _mm256_cvttps_epi32(t);
}

/* Per-byte blend towards a constant level, 8 bytes a step. */
static void blend_bytes(uint8_t *p, size_t n, int level, float f)
{
    const __m256 alpha = _mm256_set1_ps(f);
    const __m256i a = _mm256_set1_epi32(level);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + i)));
        _mm_storel_epi64((__m128i *)(p + i), pack8(blend8(a, v, alpha)));
    }
    for (; i < n; i++) {
        float t = (float)level + f * (float)(p[i] - level);
        p[i] = t <= 0.0f ? 0 : t >= 255.0f ? 255 : (uint8_t)t;
    }
}

void amdim_adjust_brightness_avx2(uint8_t *p, size_t npix, float f) { blend_bytes(p, npix * 3, 0, f); }

void amdim_adjust_contrast_avx2(uint8_t *p, size_t npix, float f)
{
    __m256i acc = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 8 <= npix; i += 8) {
        __m256i r, g, b;
        load_rgb8(p + 3 * i, &r, &g, &b);
        __m256i l = grey8(r, g, b);
        acc = _mm256_add_epi64(acc, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(l)));
        acc = _mm256_add_epi64(acc, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(l, 1)));
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, acc);
    uint64_t sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; i < npix; i++)
        sum += amdim_grey_level(p + 3 * i);
    int mean = (int)((double)sum / (double)npix + 0.5);
    blend_bytes(p, npix * 3, mean, f);
}

void amdim_adjust_saturation_avx2(uint8_t *p, size_t npix, float f)
{
    const __m256 alpha = _mm256_set1_ps(f);
    size_t i = 0;
    for (; i + 8 <= npix; i += 8) {
        __m256i r, g, b;
        load_rgb8(p + 3 * i, &r, &g, &b);
        __m256i l = grey8(r, g, b);
        store_rgb8(p + 3 * i, blend8(l, r, alpha), blend8(l, g, alpha), blend8(l, b, alpha));
    }
    if (i < npix)
        amdim_adjust_saturation(p + 3 * i, npix - i, f);
}

void amdim_to_grey_avx2(uint8_t *p, size_t npix)
{
    size_t i = 0;
    for (; i + 8 <= npix; i += 8) {
        __m256i r, g, b;
        load_rgb8(p + 3 * i, &r, &g, &b);
        __m256i l = grey8(r, g, b);
        store_rgb8(p + 3 * i, l, l, l);
    }
    if (i < npix)
        amdim_to_grey(p + 3 * i, npix - i);
}

/* ---- hue ------------------------------------------------------------------ */

static inline __m256i sel(__m256i mask, __m256i yes, __m256i no) { return _mm256_blendv_epi8(no, yes, mask); }
static inline __m256i clip255(__m256i v)
{
    return _mm256_min_epi32(_mm256_max_epi32(v, _mm256_setzero_si256()), _mm256_set1_epi32(255));
}

/* Lanes of z = y + 0.5 within 2^-14 (6.1e-5) of an integer, i.e. y near a
 * tie of round half away from zero: the float y is within 4.5e-5 of the
 * oracle's double value (at most three roundings of 2^-24 relative on
 * values below 256) and z within 5.3e-5 of y + 0.5, so elsewhere
 * floor(z) is the oracle's round(y). */
static inline __m256 near_tie(__m256 z)
{
    __m256 d = _mm256_sub_ps(z, _mm256_round_ps(z, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), d);
}

/* rgb -> hsv: the hue from the oracle's table, the saturation computed
 * (both exact); hsv -> rgb in float with
 * FMA, each of p, q, t checked for a near tie, where the oracle redoes
 * the block (0.04 % of blocks over the RGB cube). */
void amdim_adjust_hue_avx2(uint8_t *p, size_t npix, float hue)
{
    const uint8_t shift = (uint8_t)(int)((double)hue * 255.0);
    const amdim_hsv_tables *lut = amdim_hsv_tables_get();
    const __m256i b255 = _mm256_set1_epi32(255), one_i = _mm256_set1_epi32(1), two_i = _mm256_set1_epi32(2);
    const __m256 one = _mm256_set1_ps(1.0f), c255 = _mm256_set1_ps(255.0f), half = _mm256_set1_ps(0.5f);
    const __m256 tie_band = _mm256_set1_ps(1.0f / 16384);
    /* hsv -> rgb picks, per sector i, r = R(i), g = R(i + 4), b = R(i + 8)
     * (mod 6) of R = (v, q, p, p, t, v): sector 0 (v,t,p) 1 (q,v,p) 2 (p,v,t)
     * 3 (p,q,v) 4 (t,p,v) 5 (v,p,q); bytes of w: v 0, q 1, p 2, t 3. */
    const __m256i pick = _mm256_setr_epi8(0, 1, 2, 2, 3, 0, 0, 1, 2, 2, 3, 0, 0, 1, 0, 0, 0, 1, 2, 2, 3, 0, 0, 1, 2, 2,
                                          3, 0, 0, 1, 0, 0);
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 4, 4, 4, 8, 8, 8, 12, 12, 12, -1, -1, -1, -1, 0, 0, 0, 4, 4, 4, 8,
                                            8, 8, 12, 12, 12, -1, -1, -1, -1);
    const __m256i channel_step = _mm256_setr_epi8(0, 4, 8, 0, 4, 8, 0, 4, 8, 0, 4, 8, 0, 0, 0, 0, 0, 4, 8, 0, 4, 8, 0,
                                                  4, 8, 0, 4, 8, 0, 0, 0, 0);
    const __m256i pixel_base = _mm256_setr_epi8(0, 0, 0, 4, 4, 4, 8, 8, 8, 12, 12, 12, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 8,
                                                8, 8, 12, 12, 12, 0, 0, 0, 0);
    size_t i = 0;
    for (; i + 8 <= npix; i += 8) {
        __m256i r, g, b;
        load_rgb8(p + 3 * i, &r, &g, &b);
        __m256i maxc = _mm256_max_epi32(_mm256_max_epi32(r, g), b);
        __m256i minc = _mm256_min_epi32(_mm256_min_epi32(r, g), b);
        __m256i cr = _mm256_sub_epi32(maxc, minc);
        __m256i is_r = _mm256_cmpeq_epi32(r, maxc);
        __m256i is_g = _mm256_andnot_si256(is_r, _mm256_cmpeq_epi32(g, maxc));
        __m256i o1 = sel(is_r, g, r), o2 = sel(_mm256_or_si256(is_r, is_g), b, g);
        /* m = 2 + is_g + 2 is_r with masks of -1; c = 1 + (o1 == min) */
        __m256i m = _mm256_add_epi32(_mm256_add_epi32(two_i, is_g), _mm256_add_epi32(is_r, is_r));
        __m256i o1_min = _mm256_cmpeq_epi32(o1, minc);
        __m256i c = _mm256_add_epi32(one_i, o1_min);
        __m256i d = _mm256_sub_epi32(maxc, sel(o1_min, o2, o1));
        __m256i hidx = _mm256_or_si256(_mm256_slli_epi32(_mm256_add_epi32(_mm256_add_epi32(m, m), c), 16),
                                       _mm256_or_si256(_mm256_slli_epi32(cr, 8), d));
        /* the shifted hue: the gathered byte plus the shift, mod 256 */
        __m256i uh = _mm256_and_si256(
            _mm256_add_epi32(_mm256_i32gather_epi32((const int *)lut->hue, hidx, 1), _mm256_set1_epi32(shift)), b255);
        /* s = trunc(float(cr / max) * 255), exact in float for every
         * 1 <= cr <= max <= 255 (the RGB-cube test checks all); grey pixels
         * (cr = 0) give 0 */
        __m256 v = _mm256_cvtepi32_ps(maxc);
        __m256i us = _mm256_cvttps_epi32(
            _mm256_mul_ps(_mm256_div_ps(_mm256_cvtepi32_ps(cr), _mm256_max_ps(v, one)), c255));
        /* i = floor(6 h / 255) = (193 h) >> 13 for h in 0..255 (16-bit
         * products suffice); sector i mod 6; f = (6 h - 255 i) / 255 and
         * fs = s / 255 by IEEE division: the oracle's values (its double
         * quotients, stored to float, equal these for all 256 levels) */
        __m256i i6 = _mm256_srli_epi32(_mm256_mullo_epi16(uh, _mm256_set1_epi32(193)), 13);
        __m256i j = _mm256_sub_epi32(_mm256_mullo_epi16(uh, _mm256_set1_epi32(6)), _mm256_mullo_epi16(i6, b255));
        __m256i sector = _mm256_andnot_si256(_mm256_cmpeq_epi32(uh, b255), i6);
        __m256 f = _mm256_div_ps(_mm256_cvtepi32_ps(j), c255);
        __m256 fs = _mm256_div_ps(_mm256_cvtepi32_ps(us), c255);
        /* v (1 - x) = v - v x with one rounding, for x = fs, fs f (a float
         * product in the oracle too) and fs (1 - f); + 0.5 for rounding */
        __m256 zp = _mm256_add_ps(_mm256_fnmadd_ps(v, fs, v), half);
        __m256 zq = _mm256_add_ps(_mm256_fnmadd_ps(v, _mm256_mul_ps(fs, f), v), half);
        __m256 zt = _mm256_add_ps(_mm256_fnmadd_ps(v, _mm256_mul_ps(fs, _mm256_sub_ps(one, f)), v), half);
        __m256 near = _mm256_min_ps(_mm256_min_ps(near_tie(zp), near_tie(zq)), near_tie(zt));
        if (_mm256_movemask_ps(_mm256_cmp_ps(near, tie_band, _CMP_LT_OQ))) {
            amdim_adjust_hue(p + 3 * i, 8, hue);
            continue;
        }
        /* (v, q, p, t) as the bytes of one lane (s = 0 makes all four v) */
        __m256i w = _mm256_or_si256(_mm256_or_si256(maxc, _mm256_slli_epi32(_mm256_cvttps_epi32(_mm256_floor_ps(zq)), 8)),
                                    _mm256_or_si256(_mm256_slli_epi32(_mm256_cvttps_epi32(_mm256_floor_ps(zp)), 16),
                                                    _mm256_slli_epi32(_mm256_cvttps_epi32(_mm256_floor_ps(zt)), 24)));
        /* output byte 3 k + c of a lane is byte pick[sector_k + 4 c] of pixel k */
        __m256i key = _mm256_add_epi8(_mm256_shuffle_epi8(sector, spread), channel_step);
        __m256i idx = _mm256_add_epi8(_mm256_shuffle_epi8(pick, key), pixel_base);
        store_rgb8_lanes(p + 3 * i, _mm256_shuffle_epi8(w, idx));
    }
    if (i < npix)
        amdim_adjust_hue(p + 3 * i, npix - i, hue);
}
