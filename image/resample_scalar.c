/* The plain C resampler: Pillow's bicubic (and bilinear) weights and the two passes - the
 * oracle every SIMD version (resample_avx2.c, resample_avx512.c) is tested
 * against, and the tails they leave to it (resample_internal.h). Written
 * from the description of Pillow's two-pass convolution resampler: per
 * output pixel a window of source pixels whose width grows with the
 * downscale factor, float weights normalised to sum to one and then
 * rounded to 22-bit fixed point. */
#include "resample_internal.h"

#include <math.h>
#include <stddef.h>

#define BICUBIC_SUPPORT 2.0

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

/* Pillow's bilinear (triangle) kernel, support 1. */
#define BILINEAR_SUPPORT 1.0
static double bilinear(double x)
{
    if (x < 0)
        x = -x;
    return x < 1 ? 1 - x : 0;
}

int amdim_resample_window_for(double in_size, int out_size, int bilinear_filter)
{
    double scale = in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    return (int)ceil((bilinear_filter ? BILINEAR_SUPPORT : BICUBIC_SUPPORT) * filterscale) * 2 + 1;
}

int amdim_resample_window(double in_size, int out_size) { return amdim_resample_window_for(in_size, out_size, 0); }

/* Pillow's precompute_coeffs for the kernel of the given support. */
static void weights_of(double (*kernel)(double), double kernel_support, double in0, double in_size, int limit,
                       int out_size, int ksize, int *bounds, int32_t *kk, double *tmp)
{
    double scale = in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = kernel_support * filterscale;
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
            tmp[x] = kernel((x + xmin - center + 0.5) * ss);
            ww += tmp[x];
        }
        int32_t *k = kk + (size_t)xx * ksize;
        for (int x = 0; x < ksize; x++) {
            double w = x < xmax ? (ww != 0.0 ? tmp[x] / ww : tmp[x]) : 0.0;
            k[x] = w < 0 ? (int32_t)(-0.5 + w * (1 << PRECISION_BITS)) : (int32_t)(0.5 + w * (1 << PRECISION_BITS));
        }
        bounds[2 * xx] = xmin;
        bounds[2 * xx + 1] = xmax;
    }
}

void amdim_resample_weights(double in0, double in_size, int limit, int out_size, int ksize, int *bounds, int32_t *kk,
                            double *tmp)
{
    weights_of(bicubic, BICUBIC_SUPPORT, in0, in_size, limit, out_size, ksize, bounds, kk, tmp);
}

void amdim_resample_weights_bilinear(double in0, double in_size, int limit, int out_size, int ksize, int *bounds,
                                     int32_t *kk, double *tmp)
{
    weights_of(bilinear, BILINEAR_SUPPORT, in0, in_size, limit, out_size, ksize, bounds, kk, tmp);
}

static inline uint8_t clip8(int32_t v)
{
    v >>= PRECISION_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* ---- the passes ---------------------------------------------------------- */

void amdim_resample_h_scalar(const amdim_resample_pass *p)
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

void amdim_resample_v_scalar(const amdim_resample_pass *p)
{
    for (int yy = 0; yy < p->out_size; yy++)
        amdim_resample_v_row_scalar(p, yy);
}

int amdim_resample_v_taps(const amdim_resample_pass *p, int yy, const uint8_t **rows, int32_t *w_hi, int32_t *w_lo)
{
    const int yn = p->bounds[2 * yy + 1];
    const int32_t *k = p->kk + (size_t)yy * p->ksize;
    const uint8_t *in = p->src + (size_t)p->bounds[2 * yy] * p->src_stride;
    const int npairs = (yn + 1) / 2;
    if (npairs > AMDIM_RESAMPLE_MAX_PAIRS)
        return -1;
    for (int t = 0; t < npairs; t++) {
        int y0 = 2 * t, y1 = 2 * t + 1 < yn ? 2 * t + 1 : 2 * t; /* an odd last tap pairs with weight 0 */
        int32_t k0 = k[y0], k1 = y1 != y0 ? k[y1] : 0;
        rows[2 * t] = in + (size_t)y0 * p->src_stride;
        rows[2 * t + 1] = in + (size_t)y1 * p->src_stride;
        int32_t h0 = k0 >> AMDIM_RESAMPLE_SPLIT_BITS, h1 = k1 >> AMDIM_RESAMPLE_SPLIT_BITS;
        int32_t l0 = k0 & ((1 << AMDIM_RESAMPLE_SPLIT_BITS) - 1), l1 = k1 & ((1 << AMDIM_RESAMPLE_SPLIT_BITS) - 1);
        w_hi[t] = (int32_t)(((uint32_t)h1 << 16) | ((uint32_t)h0 & 0xFFFFu));
        w_lo[t] = (int32_t)(((uint32_t)l1 << 16) | (uint32_t)l0);
    }
    return npairs;
}
