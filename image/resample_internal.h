/* Private to the image module: one resampling pass and its versions - the
 * plain C oracle (resample_scalar.c), AVX2 (resample_avx2.c) and AVX-512
 * (resample_avx512.c) - which resample.c dispatches to. The SIMD files
 * call down into the plain C file only (for the rows they leave to it). */
#ifndef AMDIM_RESAMPLE_INTERNAL_H
#define AMDIM_RESAMPLE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* Pillow's fixed-point weights: 22 fractional bits. */
#define PRECISION_BITS (32 - 8 - 2)

typedef struct {
    const uint8_t *src;   /* first input row */
    size_t src_stride;
    const uint8_t *src_end; /* one past the last readable source byte */
    int mirror;           /* horizontal pass: column i of a row is src - i pixels */
    uint8_t *dst;
    size_t dst_stride;
    int rows;             /* horizontal pass: rows to filter */
    int out_size;         /* output pixels (horizontal) or rows (vertical) */
    int channels;
    int row_bytes;        /* vertical pass: bytes per row */
    int ksize;            /* weights per output index */
    const int *bounds;    /* (first, count) per output index, relative to src */
    const int32_t *kk;    /* ksize weights per output index */
    void *aux;            /* AVX2 horizontal pass: amdim_resample_h_aux_bytes() of scratch */
} amdim_resample_pass;

/* For each output index: the first source index, the count, and ksize
 * fixed-point weights, as Pillow's precompute_coeffs does for the box
 * [in0, in0 + in_size) with the window clamped to [0, limit). Indices are
 * relative to the clip origin. tmp holds 4 * ksize doubles. The AVX2
 * version does 4 outputs at a time with the same double operations in the
 * same order, so its weights are the same. */
/* Pillow's window size for a span of in_size source pixels onto out_size
 * (bicubic; _for: bilinear when bilinear_filter). */
int amdim_resample_window(double in_size, int out_size);
int amdim_resample_window_for(double in_size, int out_size, int bilinear_filter);
/* The same weights with Pillow's bilinear (triangle) kernel; plain C only. */
void amdim_resample_weights_bilinear(double in0, double in_size, int limit, int out_size, int ksize, int *bounds,
                                     int32_t *kk, double *tmp);
void amdim_resample_weights(double in0, double in_size, int limit, int out_size, int ksize, int *bounds,
                            int32_t *kk, double *tmp);
void amdim_resample_weights_avx2(double in0, double in_size, int limit, int out_size, int ksize, int *bounds,
                                 int32_t *kk, double *tmp);

/* The plain C passes: horizontal (rows x out_size pixels), vertical. */
void amdim_resample_h_scalar(const amdim_resample_pass *p);
void amdim_resample_v_scalar(const amdim_resample_pass *p);

/* Scratch bytes the AVX2 horizontal pass needs for rows x cols source pixels. */
size_t amdim_resample_h_aux_bytes(int out_size, int rows, int cols);
/* Row stride its output needs: width * 3 plus padding. */
size_t amdim_resample_mid_stride(int width);
/* Same bytes as the plain C passes; the horizontal one needs channels == 3
 * and runs the vertical kernel of AVX-512 when avx512 is set. */
void amdim_resample_h_avx2(const amdim_resample_pass *p, int avx512);
void amdim_resample_v_avx2(const amdim_resample_pass *p);
/* The vertical SIMD kernels split each weight as w = hi * 2^11 + lo with
 * 0 <= lo < 2^11, so both halves fit int16 (|w| <= 2^22) and one 16-bit
 * multiply-add takes two taps: the sum of (hi << 11) + lo over the taps is
 * exactly the oracle's 32-bit sum. For output row yy, amdim_resample_v_taps
 * fills the taps' source rows in pairs (an odd last tap pairs with weight
 * 0) and each pair's hi and lo halves as int16 pairs; it returns the number
 * of pairs, or -1 past AMDIM_RESAMPLE_MAX_PAIRS, where
 * amdim_resample_v_row_scalar (the oracle's vertical pass for one row)
 * does the row; both in resample_scalar.c. */
#define AMDIM_RESAMPLE_SPLIT_BITS 11
#define AMDIM_RESAMPLE_MAX_PAIRS 64
int amdim_resample_v_taps(const amdim_resample_pass *p, int yy, const uint8_t **rows, int32_t *w_hi, int32_t *w_lo);
void amdim_resample_v_row_scalar(const amdim_resample_pass *p, int yy);
/* The vertical pass at the AVX-512 level, with VNNI (resample_avx512.c). */
void amdim_resample_v_avx512(const amdim_resample_pass *p);

#endif
