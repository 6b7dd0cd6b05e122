/* Private to the augment module: the AVX2 colour kernels (color_avx2.c)
 * and the tables the hue kernel reads. Each kernel gives the same bytes as
 * its plain C oracle in color.c. */
#ifndef AMDIM_AUGMENT_INTERNAL_H
#define AMDIM_AUGMENT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* hsv -> rgb terms per 8-bit level, computed with the oracle's expressions. */
typedef struct {
    int32_t sector[256]; /* floor(h * 6 / 255) % 6 */
    float frac[256];     /* h * 6 / 255 - floor(...) */
    float sat[256];      /* s / 255 */
} amdim_hue_tables;

void amdim_hue_tables_init(amdim_hue_tables *t);

void amdim_adjust_brightness_avx2(uint8_t *rgb, size_t npix, float f);
void amdim_adjust_contrast_avx2(uint8_t *rgb, size_t npix, float f);
void amdim_adjust_saturation_avx2(uint8_t *rgb, size_t npix, float f);
void amdim_adjust_hue_avx2(uint8_t *rgb, size_t npix, float hue, const amdim_hue_tables *t);
void amdim_to_grey_avx2(uint8_t *rgb, size_t npix);

#endif
