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

static inline void load_rgb8(const uint8_t *p, __m256i *r, __m256i *g, __m256i *b)
{
    const __m128i lo = _mm_loadu_si128((const __m128i *)p);       /* bytes 0..15 */
    const __m128i hi = _mm_loadu_si128((const __m128i *)(p + 8)); /* bytes 8..23 */
    const __m128i r0 = _mm_setr_epi8(0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i r1 = _mm_setr_epi8(-1, -1, -1, -1, -1, -1, 10, 13, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i g0 = _mm_setr_epi8(1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i g1 = _mm_setr_epi8(-1, -1, -1, -1, -1, 8, 11, 14, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i b0 = _mm_setr_epi8(2, 5, 8, 11, 14, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i b1 = _mm_setr_epi8(-1, -1, -1, -1, -1, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    *r = _mm256_cvtepu8_epi32(_mm_or_si128(_mm_shuffle_epi8(lo, r0), _mm_shuffle_epi8(hi, r1)));
    *g = _mm256_cvtepu8_epi32(_mm_or_si128(_mm_shuffle_epi8(lo, g0), _mm_shuffle_epi8(hi, g1)));
    *b = _mm256_cvtepu8_epi32(_mm_or_si128(_mm_shuffle_epi8(lo, b0), _mm_shuffle_epi8(hi, b1)));
}

/* int32x8 with values in 0..255 -> 8 bytes in the low half. */
static inline __m128i pack8(__m256i v)
{
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_packus_epi16(w, w);
}

static inline void store_rgb8(uint8_t *p, __m256i r, __m256i g, __m256i b)
{
    const __m128i rg = _mm_unpacklo_epi64(pack8(r), pack8(g)); /* R0..R7 G0..G7 */
    const __m128i bb = pack8(b);
    const __m128i m0 = _mm_setr_epi8(0, 8, -1, 1, 9, -1, 2, 10, -1, 3, 11, -1, 4, 12, -1, 5);
    const __m128i m1 = _mm_setr_epi8(-1, -1, 0, -1, -1, 1, -1, -1, 2, -1, -1, 3, -1, -1, 4, -1);
    const __m128i m2 = _mm_setr_epi8(13, -1, 6, 14, -1, 7, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i m3 = _mm_setr_epi8(-1, 5, -1, -1, 6, -1, -1, 7, -1, -1, -1, -1, -1, -1, -1, -1);
    __m128i out0 = _mm_or_si128(_mm_shuffle_epi8(rg, m0), _mm_shuffle_epi8(bb, m1));
    __m128i out1 = _mm_or_si128(_mm_shuffle_epi8(rg, m2), _mm_shuffle_epi8(bb, m3));
    _mm_storeu_si128((__m128i *)p, out0);
    _mm_storel_epi64((__m128i *)(p + 16), out1);
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

/* Round half away from zero of non-negative doubles, exactly as round(). */
static inline __m256d round_pos(__m256d x)
{
    __m256d fl = _mm256_floor_pd(x);
    __m256d up = _mm256_cmp_pd(_mm256_sub_pd(x, fl), _mm256_set1_pd(0.5), _CMP_GE_OQ);
    return _mm256_add_pd(fl, _mm256_and_pd(up, _mm256_set1_pd(1.0)));
}

static inline __m256d lo_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
static inline __m256d hi_pd(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
static inline __m256 join_ps(__m256d lo, __m256d hi)
{
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}
static inline __m256i join_epi32(__m256d lo, __m256d hi) /* exact integers */
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm256_cvttpd_epi32(lo)), _mm256_cvttpd_epi32(hi), 1);
}
static inline __m256i sel(__m256i mask, __m256i yes, __m256i no) { return _mm256_blendv_epi8(no, yes, mask); }
static inline __m256i clip255(__m256i v)
{
    return _mm256_min_epi32(_mm256_max_epi32(v, _mm256_setzero_si256()), _mm256_set1_epi32(255));
}

/* v * (1.0 - x) rounded, for x as double lanes, v as float lanes. */
static inline __m256i scale_round(__m256 v, __m256d xlo, __m256d xhi)
{
    const __m256d one = _mm256_set1_pd(1.0);
    __m256d lo = round_pos(_mm256_mul_pd(lo_pd(v), _mm256_sub_pd(one, xlo)));
    __m256d hi = round_pos(_mm256_mul_pd(hi_pd(v), _mm256_sub_pd(one, xhi)));
    return clip255(join_epi32(lo, hi));
}

void amdim_adjust_hue_avx2(uint8_t *p, size_t npix, float hue, const amdim_hue_tables *t)
{
    const uint8_t shift = (uint8_t)(int)((double)hue * 255.0);
    const __m256 one_f = _mm256_set1_ps(1.0f);
    const __m256d six = _mm256_set1_pd(6.0), one = _mm256_set1_pd(1.0), c255 = _mm256_set1_pd(255.0);
    size_t i = 0;
    for (; i + 8 <= npix; i += 8) {
        __m256i r, g, b;
        load_rgb8(p + 3 * i, &r, &g, &b);
        __m256i maxc = _mm256_max_epi32(_mm256_max_epi32(r, g), b);
        __m256i minc = _mm256_min_epi32(_mm256_min_epi32(r, g), b);
        __m256i grey = _mm256_cmpeq_epi32(maxc, minc);
        /* rgb -> hsv (lanes with maxc == minc are masked at the end; their
         * divisors are made 1 so nothing traps or produces NaN). */
        __m256 cr = _mm256_cvtepi32_ps(_mm256_sub_epi32(maxc, minc));
        cr = _mm256_blendv_ps(cr, one_f, _mm256_castsi256_ps(grey));
        __m256 mx = _mm256_cvtepi32_ps(maxc);
        mx = _mm256_blendv_ps(mx, one_f, _mm256_castsi256_ps(_mm256_cmpeq_epi32(maxc, _mm256_setzero_si256())));
        __m256 s = _mm256_div_ps(cr, mx);
        __m256 rc = _mm256_div_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(maxc, r)), cr);
        __m256 gc = _mm256_div_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(maxc, g)), cr);
        __m256 bc = _mm256_div_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(maxc, b)), cr);
        __m256 h_r = _mm256_sub_ps(bc, gc); /* float arithmetic */
        /* 2.0 + rc - bc and 4.0 + gc - rc in double, then stored to float */
        __m256 h_g = join_ps(_mm256_sub_pd(_mm256_add_pd(_mm256_set1_pd(2.0), lo_pd(rc)), lo_pd(bc)),
                             _mm256_sub_pd(_mm256_add_pd(_mm256_set1_pd(2.0), hi_pd(rc)), hi_pd(bc)));
        __m256 h_b = join_ps(_mm256_sub_pd(_mm256_add_pd(_mm256_set1_pd(4.0), lo_pd(gc)), lo_pd(rc)),
                             _mm256_sub_pd(_mm256_add_pd(_mm256_set1_pd(4.0), hi_pd(gc)), hi_pd(rc)));
        __m256i is_r = _mm256_cmpeq_epi32(r, maxc), is_g = _mm256_cmpeq_epi32(g, maxc);
        __m256 h = _mm256_blendv_ps(_mm256_blendv_ps(h_b, h_g, _mm256_castsi256_ps(is_g)), h_r,
                                    _mm256_castsi256_ps(is_r));
        /* h = fmod(h / 6.0 + 1.0, 1.0) stored to float; the argument lies in
         * [5/6, 11/6], where fmod is one exact subtraction. */
        __m256d hl = _mm256_add_pd(_mm256_div_pd(lo_pd(h), six), one);
        __m256d hh = _mm256_add_pd(_mm256_div_pd(hi_pd(h), six), one);
        hl = _mm256_sub_pd(hl, _mm256_and_pd(_mm256_cmp_pd(hl, one, _CMP_GE_OQ), one));
        hh = _mm256_sub_pd(hh, _mm256_and_pd(_mm256_cmp_pd(hh, one, _CMP_GE_OQ), one));
        h = join_ps(hl, hh);
        __m256i uh = clip255(join_epi32(_mm256_mul_pd(lo_pd(h), c255), _mm256_mul_pd(hi_pd(h), c255)));
        __m256i us = clip255(join_epi32(_mm256_mul_pd(lo_pd(s), c255), _mm256_mul_pd(hi_pd(s), c255)));
        us = _mm256_andnot_si256(grey, us); /* the oracle's s = 0 for grey pixels */
        uh = _mm256_and_si256(_mm256_add_epi32(uh, _mm256_set1_epi32(shift)), _mm256_set1_epi32(255));
        /* hsv -> rgb with per-level tables of i % 6, f and s / 255 */
        __m256i sector = _mm256_i32gather_epi32(t->sector, uh, 4);
        __m256 f = _mm256_i32gather_ps(t->frac, uh, 4);
        __m256 fs = _mm256_i32gather_ps(t->sat, us, 4);
        __m256 v = _mm256_cvtepi32_ps(maxc);
        __m256 fsf = _mm256_mul_ps(fs, f); /* float product, as in the oracle */
        __m256i pp = scale_round(v, lo_pd(fs), hi_pd(fs));
        __m256i qq = scale_round(v, lo_pd(fsf), hi_pd(fsf));
        __m256d omf_l = _mm256_sub_pd(one, lo_pd(f)), omf_h = _mm256_sub_pd(one, hi_pd(f));
        __m256i tt = scale_round(v, _mm256_mul_pd(lo_pd(fs), omf_l), _mm256_mul_pd(hi_pd(fs), omf_h));
        __m256i k0 = _mm256_cmpeq_epi32(sector, _mm256_setzero_si256());
        __m256i k1 = _mm256_cmpeq_epi32(sector, _mm256_set1_epi32(1));
        __m256i k2 = _mm256_cmpeq_epi32(sector, _mm256_set1_epi32(2));
        __m256i k3 = _mm256_cmpeq_epi32(sector, _mm256_set1_epi32(3));
        __m256i k4 = _mm256_cmpeq_epi32(sector, _mm256_set1_epi32(4));
        __m256i k5 = _mm256_cmpeq_epi32(sector, _mm256_set1_epi32(5));
        /* sector: 0 (v,t,p) 1 (q,v,p) 2 (p,v,t) 3 (p,q,v) 4 (t,p,v) 5 (v,p,q) */
        __m256i ro = sel(_mm256_or_si256(k0, k5), maxc, sel(k1, qq, sel(k4, tt, pp)));
        __m256i go = sel(k0, tt, sel(_mm256_or_si256(k1, k2), maxc, sel(k3, qq, pp)));
        __m256i bo = sel(_mm256_or_si256(k0, k1), pp, sel(k2, tt, sel(k5, qq, maxc)));
        /* s == 0 (grey pixels included) gives v, v, v */
        __m256i zero_s = _mm256_cmpeq_epi32(us, _mm256_setzero_si256());
        ro = sel(zero_s, maxc, ro);
        go = sel(zero_s, maxc, go);
        bo = sel(zero_s, maxc, bo);
        store_rgb8(p + 3 * i, ro, go, bo);
    }
    if (i < npix)
        amdim_adjust_hue(p + 3 * i, npix - i, hue);
}
