/* PIL-compatible bicubic resampling (the reference behaviour of
 * torchvision's PIL transforms). Written from the description of Pillow's
 * two-pass convolution resampler: per output pixel a window of source pixels
 * whose width grows with the downscale factor, float weights normalised to sum
 * to one and then rounded to 22-bit fixed point. */
#include "amdim_image.h"
#include "resample_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BICUBIC_SUPPORT 2.0

void amdim_scratch_free(amdim_scratch *s)
{
    if (!s)
        return;
    free(s->mem);
    s->mem = NULL;
    s->capacity = 0;
}

static void *scratch_get(amdim_scratch *s, size_t n)
{
    if (n > s->capacity) {
        void *p = realloc(s->mem, n);
        if (!p)
            return NULL;
        s->mem = p;
        s->capacity = n;
    }
    return s->mem;
}

/* Pillow's bicubic kernel, a = -0.5 (the AVX2 version in
 * amdim_resample_weights_avx2 evaluates the same expressions). */
static double bicubic(double x)
{
    const double a = -0.5;
    if (x < 0)
        x = -x;
    if (x < 1)
        return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
}

/* Window size for resampling a span of in_size source pixels onto out_size. */
static int window_size(double in_size, int out_size)
{
    double scale = in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    return (int)ceil(BICUBIC_SUPPORT * filterscale) * 2 + 1;
}

void amdim_resample_weights(double in0, double in_size, int limit, int out_size, int ksize, int *bounds,
                            int32_t *kk, double *tmp)
{
    double scale = in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = BICUBIC_SUPPORT * filterscale;
    double ss = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0)
            xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > limit)
            xmax = limit;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) {
            tmp[x] = bicubic((x + xmin - center + 0.5) * ss);
            ww += tmp[x];
        }
        int32_t *k = kk + (size_t)xx * ksize;
        for (int x = 0; x < ksize; x++) {
            double w = x < xmax ? (ww != 0.0 ? tmp[x] / ww : tmp[x]) : 0.0;
            k[x] = w < 0 ? (int32_t)(-0.5 + w * (1 << PRECISION_BITS))
                         : (int32_t)(0.5 + w * (1 << PRECISION_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
}

static inline uint8_t clip8(int32_t v)
{
    v >>= PRECISION_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* ---- the passes: plain C (the oracle); AVX2 versions in resample_avx2.c -- */

static void resample_rows_h(const amdim_resample_pass *p)
{
    const int C = p->channels;
    const ptrdiff_t step = p->mirror ? -C : C;
    for (int y = 0; y < p->rows; y++) {
        const uint8_t *in = p->src + (size_t)y * p->src_stride;
        uint8_t *out = p->dst + (size_t)y * p->dst_stride;
        for (int xx = 0; xx < p->out_size; xx++) {
            int xmin = p->bounds[2 * xx], xn = p->bounds[2 * xx + 1];
            const int32_t *k = p->kk + (size_t)xx * p->ksize;
            for (int c = 0; c < C; c++) {
                int32_t ss = 1 << (PRECISION_BITS - 1);
                for (int x = 0; x < xn; x++)
                    ss += in[(xmin + x) * step + c] * k[x];
                out[(size_t)xx * C + c] = clip8(ss);
            }
        }
    }
}

void amdim_resample_v_row_scalar(const amdim_resample_pass *p, int yy)
{
    const int yn = p->bounds[2 * yy + 1];
    const int32_t *k = p->kk + (size_t)yy * p->ksize;
    const uint8_t *in = p->src + (size_t)p->bounds[2 * yy] * p->src_stride;
    uint8_t *out = p->dst + (size_t)yy * p->dst_stride;
    for (int xx = 0; xx < p->row_bytes; xx++) {
        int32_t ss = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < yn; y++)
            ss += in[(size_t)y * p->src_stride + xx] * k[y];
        out[xx] = clip8(ss);
    }
}

static void resample_rows_v(const amdim_resample_pass *p)
{
    for (int yy = 0; yy < p->out_size; yy++)
        amdim_resample_v_row_scalar(p, yy);
}

int amdim_resize_bicubic(const uint8_t *src, int sw, int sh, int channels, int x0, int y0, int cw,
                         int ch, uint8_t *dst, int dw, int dh, amdim_scratch *scratch)
{
    if (cw <= 0 || ch <= 0)
        return AMDIM_E_INVALID;
    const double box[4] = {x0, y0, x0 + cw, y0 + ch};
    const int clip[4] = {x0, y0, x0 + cw, y0 + ch};
    return amdim_resize_bicubic_box(src, sw, sh, channels, box, clip, 0, dst, dw, dh, AMDIM_SIMD_SCALAR,
                                    scratch);
}

/* n pixels of a source row from column x of the image, mirrored or not. */
static void copy_pixels(const uint8_t *row, int sw, int C, int x, int n, int mirror, uint8_t *out)
{
    if (!mirror) {
        memcpy(out, row + (size_t)x * C, (size_t)n * C);
        return;
    }
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * C, row + (size_t)(sw - 1 - x - i) * C, (size_t)C);
}

int amdim_resize_bicubic_box(const uint8_t *src, int sw, int sh, int channels, const double box[4],
                             const int clip[4], int mirror, uint8_t *dst, int dw, int dh, amdim_simd simd,
                             amdim_scratch *scratch)
{
    if (!src || !dst || channels < 1 || channels > 4 || dw <= 0 || dh <= 0 || clip[0] < 0 ||
        clip[1] < 0 || clip[2] > sw || clip[3] > sh || clip[0] >= clip[2] || clip[1] >= clip[3] ||
        !(box[0] >= clip[0] && box[1] >= clip[1] && box[2] <= clip[2] && box[3] <= clip[3] &&
          box[0] < box[2] && box[1] < box[3]))
        return AMDIM_E_INVALID;
    const int C = channels;
    const size_t src_stride = (size_t)sw * C;
    const int cx = clip[0], cy = clip[1], lw = clip[2] - clip[0], lh = clip[3] - clip[1];
    const double bx = box[0] - cx, by = box[1] - cy, bw = box[2] - box[0], bh = box[3] - box[1];
    /* Pillow copies instead of filtering when a box edge is whole and the
     * span equals the output size. */
    int need_h = !(bw == dw && bx == floor(bx)), need_v = !(bh == dh && by == floor(by));
    if (!need_h && !need_v) {
        for (int y = 0; y < dh; y++)
            copy_pixels(src + (size_t)(cy + (int)by + y) * src_stride, sw, C, cx + (int)bx, dw, mirror,
                        dst + (size_t)y * dw * C);
        return AMDIM_OK;
    }
    int kh = window_size(bw, dw), kv = window_size(bh, dh);
    int kmax = kh > kv ? kh : kv;
    /* Scratch layout: weights and bounds of both passes, 4 rows of doubles
     * for the weight computation, then the intermediate image. The horizontal
     * pass produces only the rows the vertical pass reads. */
#define ALIGN64(x) (((x) + 63) & ~(size_t)63)
    size_t off_kv = ALIGN64((size_t)dw * kh * sizeof(int32_t));
    size_t off_bh = off_kv + ALIGN64((size_t)dh * kv * sizeof(int32_t));
    size_t off_bv = off_bh + ALIGN64((size_t)dw * 2 * sizeof(int));
    size_t off_tmp = off_bv + ALIGN64((size_t)dh * 2 * sizeof(int));
    int avx2 = simd >= AMDIM_SIMD_AVX2 && C == 3;
    void (*weights)(double, double, int, int, int, int *, int32_t *, double *) =
        simd >= AMDIM_SIMD_AVX2 ? amdim_resample_weights_avx2 : amdim_resample_weights;
    /* the AVX2 horizontal pass writes rows padded for its transposition */
    size_t mid_stride = avx2 ? amdim_resample_mid_stride(dw) : (size_t)dw * C;
    size_t off_img = off_tmp + ALIGN64((size_t)(4 * kmax + 8) * sizeof(double));
    size_t off_aux = off_img + ALIGN64(mid_stride * lh + 64);
#undef ALIGN64
    size_t aux_bytes = avx2 ? amdim_resample_h_aux_bytes(dw, lh, lw) : 0;
    uint8_t *mem = scratch_get(scratch, off_aux + aux_bytes);
    if (!mem)
        return AMDIM_E_NOMEM;
    int32_t *kk_h = (int32_t *)mem, *kk_v = (int32_t *)(mem + off_kv);
    int *b_h = (int *)(mem + off_bh), *b_v = (int *)(mem + off_bv);
    double *tmp = (double *)(mem + off_tmp);
    uint8_t *mid = mem + off_img;
    void *aux = mem + off_aux;

    int row_first, row_last;
    if (need_v) {
        weights(by, bh, lh, dh, kv, b_v, kk_v, tmp);
        row_first = b_v[0];
        row_last = b_v[2 * (dh - 1)] + b_v[2 * (dh - 1) + 1];
    } else {
        row_first = (int)by;
        row_last = row_first + dh;
    }
    const uint8_t *vin; /* input of the vertical pass, its row 0 = clip row row_first */
    size_t vin_stride;
    if (need_h) {
        weights(bx, bw, lw, dw, kh, b_h, kk_h, tmp);
        /* src: clip column 0 of the first row, in the mirrored image if asked */
        size_t col0 = mirror ? (size_t)(sw - 1 - cx) * C : (size_t)cx * C;
        amdim_resample_pass p = {.src = src + (size_t)(cy + row_first) * src_stride + col0,
                                 .mirror = mirror,
                                 .src_stride = src_stride,
                                 .src_end = src + (size_t)sh * src_stride,
                                 .dst = mid,
                                 .dst_stride = mid_stride,
                                 .rows = row_last - row_first,
                                 .out_size = dw,
                                 .channels = C,
                                 .row_bytes = dw * C,
                                 .ksize = kh,
                                 .bounds = b_h,
                                 .kk = kk_h,
                                 .aux = aux};
        if (avx2)
            amdim_resample_h_avx2(&p, simd == AMDIM_SIMD_AVX512);
        else
            resample_rows_h(&p);
        vin = mid;
        vin_stride = mid_stride;
    } else if (mirror) {
        for (int y = 0; y < row_last - row_first; y++)
            copy_pixels(src + (size_t)(cy + row_first + y) * src_stride, sw, C, cx + (int)bx, dw, 1,
                        mid + (size_t)y * mid_stride);
        vin = mid;
        vin_stride = mid_stride;
    } else {
        vin = src + (size_t)(cy + row_first) * src_stride + (size_t)(cx + (int)bx) * C;
        vin_stride = src_stride;
    }
    if (!need_v) {
        for (int y = 0; y < dh; y++)
            memcpy(dst + (size_t)y * dw * C, vin + (size_t)y * vin_stride, (size_t)dw * C);
        return AMDIM_OK;
    }
    for (int yy = 0; yy < dh; yy++)
        b_v[2 * yy] -= row_first;
    amdim_resample_pass p = {.src = vin,
                             .src_stride = vin_stride,
                             .dst = dst,
                             .dst_stride = (size_t)dw * C,
                             .out_size = dh,
                             .channels = C,
                             .row_bytes = dw * C,
                             .ksize = kv,
                             .bounds = b_v,
                             .kk = kk_v};
    if (simd == AMDIM_SIMD_AVX512)
        amdim_resample_v_avx512(&p);
    else if (simd == AMDIM_SIMD_AVX2)
        amdim_resample_v_avx2(&p);
    else
        resample_rows_v(&p);
    return AMDIM_OK;
}
