/* Private to the image module: one resampling pass, shared by the plain C
 * oracle (resample.c) and its AVX2 version (resample_avx2.c). */
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

/* Scratch bytes the AVX2 horizontal pass needs for rows x cols source pixels. */
size_t amdim_resample_h_aux_bytes(int out_size, int rows, int cols);
/* Row stride its output needs: width * 3 plus padding. */
size_t amdim_resample_mid_stride(int width);
/* Same bytes as the plain C passes; the horizontal one needs channels == 3. */
void amdim_resample_h_avx2(const amdim_resample_pass *p);
void amdim_resample_v_avx2(const amdim_resample_pass *p);

#endif
