/* PIL-compatible bicubic resampling (the reference behaviour of
 * torchvision's PIL transforms). Written from the description of Pillow's
 * two-pass convolution resampler: per output pixel a window of source pixels
 * whose width grows with the downscale factor, float weights normalised to sum
 * to one and then rounded to 22-bit fixed point. */
#include "amdim_image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS (32 - 8 - 2)
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

/* Window size for resampling in_size source pixels onto out_size. */
static int window_size(int in_size, int out_size)
{
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    return (int)ceil(BICUBIC_SUPPORT * filterscale) * 2 + 1;
}

/* For each output index: the first source index, the count, and ksize
 * fixed-point weights. Source indices are relative to the crop. */
static void compute_weights(int in_size, int out_size, int ksize, int *bounds, int32_t *kk,
                            double *tmp)
{
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = BICUBIC_SUPPORT * filterscale;
    double ss = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0)
            xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size)
            xmax = in_size;
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

int amdim_resize_bicubic(const uint8_t *src, int sw, int sh, int channels, int x0, int y0, int cw,
                         int ch, uint8_t *dst, int dw, int dh, amdim_scratch *scratch)
{
    if (!src || !dst || channels < 1 || channels > 4 || cw <= 0 || ch <= 0 || dw <= 0 ||
        dh <= 0 || x0 < 0 || y0 < 0 || x0 + cw > sw || y0 + ch > sh)
        return AMDIM_E_INVALID;
    const int C = channels;
    const size_t src_stride = (size_t)sw * C;
    int need_h = cw != dw, need_v = ch != dh;
    int kh = window_size(cw, dw), kv = window_size(ch, dh);
    int kmax = kh > kv ? kh : kv;
    /* Scratch layout: weights and bounds of both passes, a float row for
     * the weight computation, then the intermediate image. */
#define ALIGN64(x) (((x) + 63) & ~(size_t)63)
    size_t off_kv = ALIGN64((size_t)dw * kh * sizeof(int32_t));
    size_t off_bh = off_kv + ALIGN64((size_t)dh * kv * sizeof(int32_t));
    size_t off_bv = off_bh + ALIGN64((size_t)dw * 2 * sizeof(int));
    size_t off_tmp = off_bv + ALIGN64((size_t)dh * 2 * sizeof(int));
    size_t off_img = off_tmp + ALIGN64((size_t)(kmax + 8) * sizeof(double));
#undef ALIGN64
    /* The horizontal pass produces only the rows the vertical pass reads. */
    size_t img_bytes = (size_t)dw * ch * C;
    uint8_t *mem = scratch_get(scratch, off_img + img_bytes);
    if (!mem)
        return AMDIM_E_NOMEM;
    int32_t *kk_h = (int32_t *)mem, *kk_v = (int32_t *)(mem + off_kv);
    int *b_h = (int *)(mem + off_bh), *b_v = (int *)(mem + off_bv);
    double *tmp = (double *)(mem + off_tmp);
    uint8_t *mid = mem + off_img;

    if (!need_h && !need_v) {
        for (int y = 0; y < dh; y++)
            memcpy(dst + (size_t)y * dw * C, src + (size_t)(y0 + y) * src_stride + (size_t)x0 * C,
                   (size_t)dw * C);
        return AMDIM_OK;
    }
    compute_weights(ch, dh, kv, b_v, kk_v, tmp);
    /* Rows of the crop the vertical pass touches. */
    int row_first = b_v[0];
    int row_last = b_v[2 * (dh - 1)] + b_v[2 * (dh - 1) + 1];

    const uint8_t *vin;     /* input of the vertical pass */
    size_t vin_stride;
    int vin_row0;           /* crop row held by vin's first row */
    if (need_h) {
        compute_weights(cw, dw, kh, b_h, kk_h, tmp);
        for (int y = row_first; y < row_last; y++) {
            const uint8_t *in = src + (size_t)(y0 + y) * src_stride + (size_t)x0 * C;
            uint8_t *out = mid + (size_t)(y - row_first) * dw * C;
            for (int xx = 0; xx < dw; xx++) {
                int xmin = b_h[2 * xx], xn = b_h[2 * xx + 1];
                const int32_t *k = kk_h + (size_t)xx * kh;
                for (int c = 0; c < C; c++) {
                    int32_t ss = 1 << (PRECISION_BITS - 1);
                    for (int x = 0; x < xn; x++)
                        ss += in[(size_t)(xmin + x) * C + c] * k[x];
                    out[(size_t)xx * C + c] = clip8(ss);
                }
            }
        }
        vin = mid;
        vin_stride = (size_t)dw * C;
        vin_row0 = row_first;
    } else {
        vin = src + (size_t)y0 * src_stride + (size_t)x0 * C;
        vin_stride = src_stride;
        vin_row0 = 0;
    }
    if (!need_v) {
        for (int y = 0; y < dh; y++)
            memcpy(dst + (size_t)y * dw * C, vin + (size_t)(y - vin_row0) * vin_stride, (size_t)dw * C);
        return AMDIM_OK;
    }
    for (int yy = 0; yy < dh; yy++) {
        int ymin = b_v[2 * yy] - vin_row0, yn = b_v[2 * yy + 1];
        const int32_t *k = kk_v + (size_t)yy * kv;
        uint8_t *out = dst + (size_t)yy * dw * C;
        for (int xx = 0; xx < dw * C; xx++) {
            int32_t ss = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < yn; y++)
                ss += vin[(size_t)(ymin + y) * vin_stride + xx] * k[y];
            out[xx] = clip8(ss);
        }
    }
    return AMDIM_OK;
}
