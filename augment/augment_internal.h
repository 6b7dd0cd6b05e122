/* Private to the augment module: the AVX2 and AVX-512 colour kernels
 * (color_avx2.c, color_avx512.c) and the tables they read. Each kernel gives
 * the same bytes as its plain C oracle in color.c. */
#ifndef AMDIM_AUGMENT_INTERNAL_H
#define AMDIM_AUGMENT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* PIL's rgb -> hsv hue as a table, built once per process from the
 * oracle's rgb_to_hsv (it depends only on channel differences):
 *   hue[(2 * m + c) << 16 | cr << 8 | d], where m is the channel that is the
 *     maximum (0 r, 1 g, 2 b; ties to the earlier), the other two channels
 *     in r, g, b order are o1 and o2, c is 0 when o1 is the minimum and 1
 *     otherwise, cr = max - min and d = max - (c ? o1 : o2).
 * 4 bytes of padding let 32-bit gathers read it. (The saturation the SIMD
 * kernels compute: trunc(float(cr / max) * 255) is exact in float.) */
typedef struct {
    uint8_t hue[(6 << 16) + 4];
} amdim_hsv_tables;

const amdim_hsv_tables *amdim_hsv_tables_get(void);

/* table[v] = the oracle's blend of (level, v) at factor f, for every byte:
 * brightness is level 0, contrast the mean grey level. */
void amdim_blend_table(uint8_t table[256], int level, float f);

void amdim_adjust_brightness_avx2(uint8_t *rgb, size_t npix, float f);
void amdim_adjust_contrast_avx2(uint8_t *rgb, size_t npix, float f);
void amdim_adjust_saturation_avx2(uint8_t *rgb, size_t npix, float f);
void amdim_adjust_hue_avx2(uint8_t *rgb, size_t npix, float hue);
void amdim_to_grey_avx2(uint8_t *rgb, size_t npix);

void amdim_adjust_brightness_avx512(uint8_t *rgb, size_t npix, float f);
void amdim_adjust_contrast_avx512(uint8_t *rgb, size_t npix, float f);
void amdim_adjust_saturation_avx512(uint8_t *rgb, size_t npix, float f);
void amdim_adjust_hue_avx512(uint8_t *rgb, size_t npix, float hue);
void amdim_to_grey_avx512(uint8_t *rgb, size_t npix);

#endif
