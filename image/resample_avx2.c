/* AVX2 versions of the two resampling passes and of the weight
 * computation. They compute exactly what the plain C code computes (32-bit
 * products and sums of the same 22-bit weights, the same rounding and
 * clipping; the weights with the same double operations in the same order,
 * never fused: this file is built without FMA). */
#include <immintrin.h>
#include <string.h>

#include "resample_internal.h"

/* bicubic(x) of resample_scalar.c for 4 lanes: both polynomial pieces, selected. */
static inline __m256d bicubic4(__m256d x)
{
    const __m256d ax = _mm256_andnot_pd(_mm256_set1_pd(-0.0), x);
    /* ((a + 2) x - (a + 3)) x x + 1 and (((x - 5) x + 8) x - 4) a, a = -0.5 */
    __m256d inner = _mm256_sub_pd(_mm256_mul_pd(_mm256_set1_pd(1.5), ax), _mm256_set1_pd(2.5));
    inner = _mm256_add_pd(_mm256_mul_pd(_mm256_mul_pd(inner, ax), ax), _mm256_set1_pd(1.0));
    __m256d outer = _mm256_add_pd(_mm256_mul_pd(_mm256_sub_pd(ax, _mm256_set1_pd(5.0)), ax), _mm256_set1_pd(8.0));
    outer = _mm256_mul_pd(_mm256_sub_pd(_mm256_mul_pd(outer, ax), _mm256_set1_pd(4.0)), _mm256_set1_pd(-0.5));
    const __m256d lt1 = _mm256_cmp_pd(ax, _mm256_set1_pd(1.0), _CMP_LT_OQ);
    const __m256d lt2 = _mm256_cmp_pd(ax, _mm256_set1_pd(2.0), _CMP_LT_OQ);
    return _mm256_and_pd(_mm256_blendv_pd(outer, inner, lt1), lt2);
}

void amdim_resample_weights_avx2(double in0, double in_size, int limit, int out_size, int ksize, int *bounds,
                                 int32_t *kk, double *tmp)
{
    const double scale = in_size / out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = 2.0 * filterscale;
    const __m256d vscale = _mm256_set1_pd(scale), ss = _mm256_set1_pd(1.0 / filterscale);
    const __m256d half = _mm256_set1_pd(0.5), vsupport = _mm256_set1_pd(support), zero = _mm256_setzero_pd();
    for (int xx = 0; xx < out_size; xx += 4) {
        const __m128i lane = _mm_add_epi32(_mm_set1_epi32(xx), _mm_setr_epi32(0, 1, 2, 3));
        const __m256d center = _mm256_add_pd(_mm256_set1_pd(in0), _mm256_mul_pd(_mm256_add_pd(_mm256_cvtepi32_pd(lane), half), vscale));
        __m128i xmin = _mm256_cvttpd_epi32(_mm256_add_pd(_mm256_sub_pd(center, vsupport), half));
        xmin = _mm_max_epi32(xmin, _mm_setzero_si128());
        __m128i xmax = _mm256_cvttpd_epi32(_mm256_add_pd(_mm256_add_pd(center, vsupport), half));
        xmax = _mm_sub_epi32(_mm_min_epi32(xmax, _mm_set1_epi32(limit)), xmin);
        int n[4], lo[4];
        _mm_storeu_si128((__m128i *)n, xmax);
        _mm_storeu_si128((__m128i *)lo, xmin);
        const int lanes = out_size - xx < 4 ? out_size - xx : 4;
        int most = 0;
        for (int l = 0; l < lanes; l++) {
            most = n[l] > most ? n[l] : most;
            bounds[2 * (xx + l)] = lo[l];
            bounds[2 * (xx + l) + 1] = n[l];
        }
        if (most > ksize)
            most = ksize;
        /* tmp[4 x + l] = bicubic(((x + xmin) - center + 0.5) / filterscale) for
         * x < count, else 0; the sum in x order, as the oracle's */
        __m256d ww = zero;
        for (int x = 0; x < most; x++) {
            const __m128i xi = _mm_set1_epi32(x);
            const __m256d arg = _mm256_mul_pd(
                _mm256_add_pd(_mm256_sub_pd(_mm256_cvtepi32_pd(_mm_add_epi32(xi, xmin)), center), half), ss);
            const __m256d inside = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_cmpgt_epi32(xmax, xi)));
            const __m256d t = _mm256_and_pd(bicubic4(arg), inside);
            _mm256_storeu_pd(tmp + 4 * x, t);
            ww = _mm256_add_pd(ww, t);
        }
        const __m256d ww_zero = _mm256_cmp_pd(ww, zero, _CMP_EQ_OQ);
        const __m256d divisor = _mm256_blendv_pd(ww, _mm256_set1_pd(1.0), ww_zero);
        for (int x = 0; x < ksize; x++) {
            /* (int32)(+-0.5 + w * 2^22) with w = tmp / ww (tmp when ww is 0) */
            int32_t k[4] = {0, 0, 0, 0};
            if (x < most) {
                const __m256d w = _mm256_div_pd(_mm256_loadu_pd(tmp + 4 * x), divisor);
                const __m256d v = _mm256_mul_pd(w, _mm256_set1_pd((double)(1 << PRECISION_BITS)));
                const __m256d neg = _mm256_cmp_pd(w, zero, _CMP_LT_OQ);
                const __m256d r = _mm256_add_pd(_mm256_blendv_pd(half, _mm256_set1_pd(-0.5), neg), v);
                _mm_storeu_si128((__m128i *)k, _mm256_cvttpd_epi32(r));
            }
            for (int l = 0; l < lanes; l++)
                kk[(size_t)(xx + l) * ksize + x] = k[l];
        }
    }
}

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

/* dst row x, pixel y = src row y, pixel x, for w x h RGB pixels, where
 * pixel x of a src row lies x pixels after its start, or before it when
 * reverse is set (a mirrored image). Blocks of 4 x 4 pixels move as 16-byte
 * vectors: each load reads 4 bytes past the 12 it uses (done only where
 * src_end allows), each store writes 4 bytes past its 12 (into the next
 * block, written later, or the row padding). */
static void transpose_rgb(const uint8_t *src, size_t ss, const uint8_t *src_end, int reverse, int w, int h,
                          uint8_t *dst, size_t ds)
{
    const __m128i expand = reverse ? _mm_setr_epi8(9, 10, 11, -1, 6, 7, 8, -1, 3, 4, 5, -1, 0, 1, 2, -1)
                                   : _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    const __m128i squeeze = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    const ptrdiff_t step = reverse ? -3 : 3;
    int x = 0;
    for (; x + 4 <= w; x += 4) {
        /* the lowest-addressed of the block's 4 source columns */
        const uint8_t *s = src + (reverse ? -(ptrdiff_t)(x + 3) * 3 : (ptrdiff_t)x * 3);
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
                memcpy(d + (size_t)k * ds + (size_t)y * 3, src + (size_t)y * ss + (x + k) * step, 3);
    }
    for (; x < w; x++)
        for (int y = 0; y < h; y++)
            memcpy(dst + (size_t)x * ds + (size_t)y * 3, src + (size_t)y * ss + x * step, 3);
}

/* RGB, interleaved. dst_stride must be amdim_resample_mid_stride(out_size)
 * or more (the transposition writes into the padding). */
void amdim_resample_h_avx2(const amdim_resample_pass *p, int avx512)
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
    const uint8_t *first = p->src + (p->mirror ? -(ptrdiff_t)c0 * 3 : (ptrdiff_t)c0 * 3);
    transpose_rgb(first, p->src_stride, p->src_end, p->mirror, c1 - c0, p->rows, t, ts);
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
    if (avx512)
        amdim_resample_v_avx512(&v);
    else
        amdim_resample_v_avx2(&v);
    transpose_rgb(mt, ts, mt + (size_t)p->out_size * ts, 0, p->rows, p->out_size, p->dst, p->dst_stride);
}

/* ((hi << 11) + lo + half) >> 22: the oracle's rounding of its sum */
static inline __m256i finish(__m256i hi, __m256i lo)
{
    const __m256i half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    return _mm256_srai_epi32(_mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(hi, AMDIM_RESAMPLE_SPLIT_BITS), lo), half),
                             PRECISION_BITS);
}

/* Output bytes [xx, xx + 32) of one output row, taps paired (y, y + 1). */
static inline __m256i filter32(const uint8_t *const *rows, const int32_t *w_hi, const int32_t *w_lo, int npairs,
                               int xx)
{
    const __m256i zero = _mm256_setzero_si256();
    __m256i h0 = zero, h1 = zero, h2 = zero, h3 = zero, l0 = zero, l1 = zero, l2 = zero, l3 = zero;
    for (int t = 0; t < npairs; t++) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(rows[2 * t] + xx));
        __m256i b = _mm256_loadu_si256((const __m256i *)(rows[2 * t + 1] + xx));
        __m256i ab_lo = _mm256_unpacklo_epi8(a, b), ab_hi = _mm256_unpackhi_epi8(a, b);
        __m256i x0 = _mm256_unpacklo_epi8(ab_lo, zero), x1 = _mm256_unpackhi_epi8(ab_lo, zero);
        __m256i x2 = _mm256_unpacklo_epi8(ab_hi, zero), x3 = _mm256_unpackhi_epi8(ab_hi, zero);
        __m256i wh = _mm256_set1_epi32(w_hi[t]), wl = _mm256_set1_epi32(w_lo[t]);
        h0 = _mm256_add_epi32(h0, _mm256_madd_epi16(x0, wh));
        h1 = _mm256_add_epi32(h1, _mm256_madd_epi16(x1, wh));
        h2 = _mm256_add_epi32(h2, _mm256_madd_epi16(x2, wh));
        h3 = _mm256_add_epi32(h3, _mm256_madd_epi16(x3, wh));
        l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(x0, wl));
        l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(x1, wl));
        l2 = _mm256_add_epi32(l2, _mm256_madd_epi16(x2, wl));
        l3 = _mm256_add_epi32(l3, _mm256_madd_epi16(x3, wl));
    }
    __m256i s0 = finish(h0, l0), s1 = finish(h1, l1), s2 = finish(h2, l2), s3 = finish(h3, l3);
    return _mm256_packus_epi16(_mm256_packs_epi32(s0, s1), _mm256_packs_epi32(s2, s3));
}

/* Any channel count: rows are filtered as flat byte arrays, 32 bytes a step
 * (the last step overlaps the one before when the row is not a multiple of
 * 32; rows shorter than 32 bytes go byte by byte). */
void amdim_resample_v_avx2(const amdim_resample_pass *p)
{
    const int n = p->row_bytes;
    const uint8_t *rows[2 * AMDIM_RESAMPLE_MAX_PAIRS];
    int32_t w_hi[AMDIM_RESAMPLE_MAX_PAIRS], w_lo[AMDIM_RESAMPLE_MAX_PAIRS];
    for (int yy = 0; yy < p->out_size; yy++) {
        int npairs = amdim_resample_v_taps(p, yy, rows, w_hi, w_lo);
        if (n < 32 || npairs < 0) {
            amdim_resample_v_row_scalar(p, yy);
            continue;
        }
        uint8_t *out = p->dst + (size_t)yy * p->dst_stride;
        int xx = 0;
        for (; xx + 32 <= n; xx += 32)
            _mm256_storeu_si256((__m256i *)(out + xx), filter32(rows, w_hi, w_lo, npairs, xx));
        if (xx < n)
            _mm256_storeu_si256((__m256i *)(out + n - 32), filter32(rows, w_hi, w_lo, npairs, n - 32));
    }
}
