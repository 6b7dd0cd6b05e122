/* PIL-compatible bicubic (and bilinear) resizing (the reference behaviour
 * of torchvision's PIL transforms): the scratch it works in and the dispatch
 * of its two passes to the plain C code (resample_scalar.c) or the SIMD
 * versions (resample_avx2.c, resample_avx512.c). */
#include "amdim_image.h"
#include "resample_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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

int amdim_resize_bicubic(const uint8_t *src, int sw, int sh, int channels, int x0, int y0, int cw, int ch, uint8_t *dst,
                         int dw, int dh, amdim_scratch *scratch)
{
    if (cw <= 0 || ch <= 0)
        return AMDIM_E_INVALID;
    const double box[4] = {x0, y0, x0 + cw, y0 + ch};
    const int clip[4] = {x0, y0, x0 + cw, y0 + ch};
    return amdim_resize_bicubic_box(src, sw, sh, channels, box, clip, 0, dst, dw, dh, AMDIM_SIMD_SCALAR, scratch);
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

/* The scratch of one resize: weights and bounds of both passes, 4 rows of
 * doubles for the weight computation, the intermediate image (only the
 * rows the vertical pass reads; padded rows for the AVX2 horizontal pass's
 * transposition) and that pass's own scratch. */
typedef struct {
    int32_t *kk_h, *kk_v;
    int *b_h, *b_v;
    double *tmp;
    uint8_t *mid;
    size_t mid_stride;
    void *aux;
} resize_scratch;

static int scratch_layout(amdim_scratch *scratch, int dw, int dh, int kh, int kv, int C, int lw, int lh, int avx2,
                          resize_scratch *r)
{
    int kmax = kh > kv ? kh : kv;
#define ALIGN64(x) (((x) + 63) & ~(size_t)63)
    size_t off_kv = ALIGN64((size_t)dw * kh * sizeof(int32_t));
    size_t off_bh = off_kv + ALIGN64((size_t)dh * kv * sizeof(int32_t));
    size_t off_bv = off_bh + ALIGN64((size_t)dw * 2 * sizeof(int));
    size_t off_tmp = off_bv + ALIGN64((size_t)dh * 2 * sizeof(int));
    r->mid_stride = avx2 ? amdim_resample_mid_stride(dw) : (size_t)dw * C;
    size_t off_img = off_tmp + ALIGN64((size_t)(4 * kmax + 8) * sizeof(double));
    size_t off_aux = off_img + ALIGN64(r->mid_stride * lh + 64);
#undef ALIGN64
    size_t aux_bytes = avx2 ? amdim_resample_h_aux_bytes(dw, lh, lw) : 0;
    uint8_t *mem = scratch_get(scratch, off_aux + aux_bytes);
    if (!mem)
        return AMDIM_E_NOMEM;
    r->kk_h = (int32_t *)mem;
    r->kk_v = (int32_t *)(mem + off_kv);
    r->b_h = (int *)(mem + off_bh);
    r->b_v = (int *)(mem + off_bv);
    r->tmp = (double *)(mem + off_tmp);
    r->mid = mem + off_img;
    r->aux = mem + off_aux;
    return AMDIM_OK;
}

/* What one resize reads and writes, in clip coordinates. */
typedef struct {
    const uint8_t *src;
    int sw, sh, C, cx, cy, lw, lh, mirror, dw, dh;
    size_t src_stride;
    double bx, by, bw, bh;
    amdim_simd simd;
    void (*weights)(double, double, int, int, int, int *, int32_t *, double *);
} resize_job;

/* The horizontal pass over clip rows [row_first, row_last) into the
 * intermediate image, or the rows as they are (mirrored when asked):
 * *vin, *vin_stride become the vertical pass's input. */
static void horizontal(const resize_job *j, resize_scratch *r, int need_h, int kh, int row_first, int row_last,
                       const uint8_t **vin, size_t *vin_stride)
{
    const int C = j->C;
    if (need_h) {
        j->weights(j->bx, j->bw, j->lw, j->dw, kh, r->b_h, r->kk_h, r->tmp);
        /* src: clip column 0 of the first row, in the mirrored image if asked */
        size_t col0 = j->mirror ? (size_t)(j->sw - 1 - j->cx) * C : (size_t)j->cx * C;
        amdim_resample_pass p = {.src = j->src + (size_t)(j->cy + row_first) * j->src_stride + col0,
                                 .mirror = j->mirror,
                                 .src_stride = j->src_stride,
                                 .src_end = j->src + (size_t)j->sh * j->src_stride,
                                 .dst = r->mid,
                                 .dst_stride = r->mid_stride,
                                 .rows = row_last - row_first,
                                 .out_size = j->dw,
                                 .channels = C,
                                 .row_bytes = j->dw * C,
                                 .ksize = kh,
                                 .bounds = r->b_h,
                                 .kk = r->kk_h,
                                 .aux = r->aux};
        if (j->simd >= AMDIM_SIMD_AVX2 && C == 3)
            amdim_resample_h_avx2(&p, j->simd == AMDIM_SIMD_AVX512);
        else
            amdim_resample_h_scalar(&p);
        *vin = r->mid;
        *vin_stride = r->mid_stride;
    } else if (j->mirror) {
        for (int y = 0; y < row_last - row_first; y++)
            copy_pixels(j->src + (size_t)(j->cy + row_first + y) * j->src_stride, j->sw, C, j->cx + (int)j->bx, j->dw,
                        1, r->mid + (size_t)y * r->mid_stride);
        *vin = r->mid;
        *vin_stride = r->mid_stride;
    } else {
        *vin = j->src + (size_t)(j->cy + row_first) * j->src_stride + (size_t)(j->cx + (int)j->bx) * C;
        *vin_stride = j->src_stride;
    }
}

/* The vertical pass from vin (its row 0 = clip row row_first) into dst. */
static void vertical(const resize_job *j, resize_scratch *r, int kv, int row_first, const uint8_t *vin,
                     size_t vin_stride, uint8_t *dst)
{
    for (int yy = 0; yy < j->dh; yy++)
        r->b_v[2 * yy] -= row_first;
    amdim_resample_pass p = {.src = vin,
                             .src_stride = vin_stride,
                             .dst = dst,
                             .dst_stride = (size_t)j->dw * j->C,
                             .out_size = j->dh,
                             .channels = j->C,
                             .row_bytes = j->dw * j->C,
                             .ksize = kv,
                             .bounds = r->b_v,
                             .kk = r->kk_v};
    if (j->simd == AMDIM_SIMD_AVX512)
        amdim_resample_v_avx512(&p);
    else if (j->simd == AMDIM_SIMD_AVX2)
        amdim_resample_v_avx2(&p);
    else
        amdim_resample_v_scalar(&p);
}

int amdim_resize_bicubic_box(const uint8_t *src, int sw, int sh, int channels, const double box[4], const int clip[4],
                             int mirror, uint8_t *dst, int dw, int dh, amdim_simd simd, amdim_scratch *scratch)
{
    return amdim_resize_box(src, sw, sh, channels, box, clip, mirror, AMDIM_FILTER_BICUBIC, dst, dw, dh, simd, scratch);
}

int amdim_resize_box(const uint8_t *src, int sw, int sh, int channels, const double box[4], const int clip[4],
                     int mirror, amdim_filter filter, uint8_t *dst, int dw, int dh, amdim_simd simd,
                     amdim_scratch *scratch)
{
    if (filter != AMDIM_FILTER_BICUBIC && filter != AMDIM_FILTER_BILINEAR)
        return AMDIM_E_INVALID;
    int bl = filter == AMDIM_FILTER_BILINEAR;
    if (!src || !dst || channels < 1 || channels > 4 || dw <= 0 || dh <= 0 || clip[0] < 0 || clip[1] < 0 ||
        clip[2] > sw || clip[3] > sh || clip[0] >= clip[2] || clip[1] >= clip[3] ||
        !(box[0] >= clip[0] && box[1] >= clip[1] && box[2] <= clip[2] && box[3] <= clip[3] && box[0] < box[2] &&
          box[1] < box[3]))
        return AMDIM_E_INVALID;
    const int C = channels;
    resize_job j = {.src = src,
                    .sw = sw,
                    .sh = sh,
                    .C = C,
                    .cx = clip[0],
                    .cy = clip[1],
                    .lw = clip[2] - clip[0],
                    .lh = clip[3] - clip[1],
                    .mirror = mirror,
                    .dw = dw,
                    .dh = dh,
                    .src_stride = (size_t)sw * C,
                    .bx = box[0] - clip[0],
                    .by = box[1] - clip[1],
                    .bw = box[2] - box[0],
                    .bh = box[3] - box[1],
                    .simd = simd,
                    .weights = bl                        ? amdim_resample_weights_bilinear
                               : simd >= AMDIM_SIMD_AVX2 ? amdim_resample_weights_avx2
                                                         : amdim_resample_weights};
    /* Pillow copies instead of filtering when a box edge is whole and the
     * span equals the output size. */
    int need_h = !(j.bw == dw && j.bx == floor(j.bx)), need_v = !(j.bh == dh && j.by == floor(j.by));
    if (!need_h && !need_v) {
        for (int y = 0; y < dh; y++)
            copy_pixels(src + (size_t)(j.cy + (int)j.by + y) * j.src_stride, sw, C, j.cx + (int)j.bx, dw, mirror,
                        dst + (size_t)y * dw * C);
        return AMDIM_OK;
    }
    int kh = amdim_resample_window_for(j.bw, dw, bl), kv = amdim_resample_window_for(j.bh, dh, bl);
    resize_scratch r;
    if (scratch_layout(scratch, dw, dh, kh, kv, C, j.lw, j.lh, simd >= AMDIM_SIMD_AVX2 && C == 3, &r))
        return AMDIM_E_NOMEM;
    /* the horizontal pass produces only the rows the vertical pass reads */
    int row_first, row_last;
    if (need_v) {
        j.weights(j.by, j.bh, j.lh, dh, kv, r.b_v, r.kk_v, r.tmp);
        row_first = r.b_v[0];
        row_last = r.b_v[2 * (dh - 1)] + r.b_v[2 * (dh - 1) + 1];
    } else {
        row_first = (int)j.by;
        row_last = row_first + dh;
    }
    const uint8_t *vin;
    size_t vin_stride;
    horizontal(&j, &r, need_h, kh, row_first, row_last, &vin, &vin_stride);
    if (!need_v) {
        for (int y = 0; y < dh; y++)
            memcpy(dst + (size_t)y * dw * C, vin + (size_t)y * vin_stride, (size_t)dw * C);
        return AMDIM_OK;
    }
    vertical(&j, &r, kv, row_first, vin, vin_stride, dst);
    return AMDIM_OK;
}
