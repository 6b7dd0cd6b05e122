/* The vertical resampling pass with AVX-512: the AVX2 kernel's arithmetic
 * (split 16-bit weights, see resample_internal.h) on 64 bytes a step, with
 * VNNI's vpdpwssd doing each multiply-add and accumulate in one. Same bytes
 * as the plain C pass. */
#include <immintrin.h>

#include "resample_internal.h"

static inline __m512i finish(__m512i hi, __m512i lo)
{
    const __m512i half = _mm512_set1_epi32(1 << (PRECISION_BITS - 1));
    return _mm512_srai_epi32(
        _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(hi, AMDIM_RESAMPLE_SPLIT_BITS), lo), half),
        PRECISION_BITS);
}

/* Output bytes [xx, xx + 64) of one output row. */
static inline __m512i filter64(const uint8_t *const *rows, const int32_t *w_hi, const int32_t *w_lo, int npairs,
                               int xx)
{
    const __m512i zero = _mm512_setzero_si512();
    __m512i h0 = zero, h1 = zero, h2 = zero, h3 = zero, l0 = zero, l1 = zero, l2 = zero, l3 = zero;
    for (int t = 0; t < npairs; t++) {
        __m512i a = _mm512_loadu_si512((const void *)(rows[2 * t] + xx));
        __m512i b = _mm512_loadu_si512((const void *)(rows[2 * t + 1] + xx));
        __m512i ab_lo = _mm512_unpacklo_epi8(a, b), ab_hi = _mm512_unpackhi_epi8(a, b);
        __m512i x0 = _mm512_unpacklo_epi8(ab_lo, zero), x1 = _mm512_unpackhi_epi8(ab_lo, zero);
        __m512i x2 = _mm512_unpacklo_epi8(ab_hi, zero), x3 = _mm512_unpackhi_epi8(ab_hi, zero);
        __m512i wh = _mm512_set1_epi32(w_hi[t]), wl = _mm512_set1_epi32(w_lo[t]);
        h0 = _mm512_dpwssd_epi32(h0, x0, wh);
        h1 = _mm512_dpwssd_epi32(h1, x1, wh);
        h2 = _mm512_dpwssd_epi32(h2, x2, wh);
        h3 = _mm512_dpwssd_epi32(h3, x3, wh);
        l0 = _mm512_dpwssd_epi32(l0, x0, wl);
        l1 = _mm512_dpwssd_epi32(l1, x1, wl);
        l2 = _mm512_dpwssd_epi32(l2, x2, wl);
        l3 = _mm512_dpwssd_epi32(l3, x3, wl);
    }
    __m512i s0 = finish(h0, l0), s1 = finish(h1, l1), s2 = finish(h2, l2), s3 = finish(h3, l3);
    return _mm512_packus_epi16(_mm512_packs_epi32(s0, s1), _mm512_packs_epi32(s2, s3));
}

void amdim_resample_v_avx512(const amdim_resample_pass *p)
{
    const int n = p->row_bytes;
    if (n < 64) {
        amdim_resample_v_avx2(p);
        return;
    }
    const uint8_t *rows[2 * AMDIM_RESAMPLE_MAX_PAIRS];
    int32_t w_hi[AMDIM_RESAMPLE_MAX_PAIRS], w_lo[AMDIM_RESAMPLE_MAX_PAIRS];
    for (int yy = 0; yy < p->out_size; yy++) {
        int npairs = amdim_resample_v_taps(p, yy, rows, w_hi, w_lo);
        if (npairs < 0) {
            amdim_resample_v_row_scalar(p, yy);
            continue;
        }
        uint8_t *out = p->dst + (size_t)yy * p->dst_stride;
        int xx = 0;
        for (; xx + 64 <= n; xx += 64)
            _mm512_storeu_si512((void *)(out + xx), filter64(rows, w_hi, w_lo, npairs, xx));
        if (xx < n) /* the last 64 bytes again, overlapping */
            _mm512_storeu_si512((void *)(out + n - 64), filter64(rows, w_hi, w_lo, npairs, n - 64));
    }
}
