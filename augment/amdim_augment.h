/* amdim augment: AMDIM's two-view augmentation, the scalar reference.
 *
 * For each image: decode once, draw ONE horizontal flip shared by both
 * views, then per view independently: random resized crop (bicubic, as
 * PIL resizes) or, for the 32 px preset, random translation with reflect
 * fill; colour jitter (brightness, contrast, saturation, hue in a random
 * order, PIL/torchvision semantics) with probability p_jitter; random grey
 * with probability p_grey. Views are uint8 RGB, (size, size, 3) row-major.
 *
 * Randomness is counter-based: everything drawn for an image comes from
 * Philox4x32-10 keyed by (seed) with counter (epoch, record index), so a
 * sample's views do not depend on which worker made them. */
#ifndef AMDIM_AUGMENT_H
#define AMDIM_AUGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_common.h"
#include "amdim_dataset.h"
#include "amdim_image.h"
#include "amdim_philox.h"

/* Random numbers: amdim_rng (common/amdim_philox.h), stream = epoch. */

/* ---- configuration ------------------------------------------------------- */

typedef enum {
    AMDIM_CROP_RESIZED = 0,  /* RandomResizedCrop(size, scale, ratio), bicubic */
    AMDIM_CROP_TRANSLATE = 1 /* RandomTranslateWithReflect(translate) with p_translate */
} amdim_crop_mode;

typedef struct {
    char name[16];
    int size;           /* output side */
    int crop_mode;      /* amdim_crop_mode */
    float scale[2];     /* resized crop: area fraction range */
    float ratio[2];     /* resized crop: aspect ratio (w/h) range */
    int translate;      /* translate: max shift in pixels */
    float p_translate;
    float p_flip;
    float p_jitter;
    float brightness, contrast, saturation, hue; /* jitter strengths */
    float p_grey;
    int test_resize;    /* test transform: short side (0: none) */
    int filter;         /* resizes: amdim_filter (0: PIL bicubic, AMDIM's; 1: bilinear, torchvision Resize's) */
    float mean[3], std[3]; /* normalisation on the 0..1 scale (applied by the trainer) */
} amdim_augment_config;

/* The defaults (docs/spec.md §3.2) for "imagenet" (128), "stl10" (64) or "cifar" (32);
 * "dim28", "dim32", "dim64": Deep InfoMax's data (docs/dim.md §8), the image itself at that size
 * (smaller images zero-padded, centred; no flip, jitter or grey), mean and std 0.5; "dim-stl10":
 * its STL-10 transform, the whole image resized to 64 (bilinear) and a flip with p 0.5, the test
 * view the same resize. Returns 0 or AMDIM_E_INVALID for an unknown name. */
#define AMDIM_AUGMENT_PRESETS "imagenet, stl10, cifar, dim28, dim32, dim64, dim-stl10"
int amdim_augment_preset(const char *name, amdim_augment_config *cfg);
/* Checks ranges (probabilities in [0,1], scale in (0,1], ratios > 0, ...).
 * Returns 0 or AMDIM_E_INVALID with the reason in err. */
int amdim_augment_config_check(const amdim_augment_config *cfg, char *err, size_t n);

/* ---- parameters ---------------------------------------------------------- */

enum { AMDIM_JIT_BRIGHTNESS = 0, AMDIM_JIT_CONTRAST = 1, AMDIM_JIT_SATURATION = 2, AMDIM_JIT_HUE = 3 };

typedef struct {
    /* crop box in the (already flipped) source image; for translate mode
     * the whole image */
    int x, y, w, h;
    int dx, dy;        /* translate mode: shift (0, 0 when not applied) */
    int jitter;        /* colour jitter applied */
    uint8_t order[4];  /* AMDIM_JIT_* in the order applied */
    float brightness, contrast, saturation, hue; /* factors; hue is a shift in turns */
    int grey;          /* converted to grey */
} amdim_view_params;

typedef struct {
    int flip; /* both views mirrored left-right */
    amdim_view_params view[2];
} amdim_pair_params;

/* Draws the parameters of both views for an image of w x h from rng.
 * Draw order: flip, then per view: crop, jitter (apply, order, factors),
 * grey. */
void amdim_augment_draw(const amdim_augment_config *cfg, int w, int h, amdim_rng *rng,
                        amdim_pair_params *p);
/* torchvision's RandomResizedCrop.get_params on its own. */
void amdim_augment_draw_crop(const amdim_augment_config *cfg, int w, int h, amdim_rng *rng,
                             int *x, int *y, int *cw, int *ch);

/* ---- the augmenter ------------------------------------------------------- */

typedef struct amdim_augmenter amdim_augmenter;

/* One per thread. The config is copied. */
int amdim_augment_create(amdim_augmenter **out, const amdim_augment_config *cfg);
void amdim_augment_destroy(amdim_augmenter *a); /* accepts NULL */
const char *amdim_augment_error(const amdim_augmenter *a);

/* Records with more than max_pixels pixels (width x height from the record
 * header) are refused with AMDIM_E_TOO_LARGE before anything is decoded or
 * allocated; 0 restores the default (PIL's decompression-bomb limit, the
 * packer's default --max-pixels). A JPEG whose own size differs from its
 * record's is AMDIM_E_CORRUPT, also before decoding. */
#define AMDIM_AUGMENT_MAX_PIXELS_DEFAULT 89478485ull
void amdim_augment_set_max_pixels(amdim_augmenter *a, uint64_t max_pixels);

/* SIMD level of the crop, resize and colour steps: amdim_simd_detect() at
 * creation; every level gives the scalar oracle's bytes. A level above
 * what amdim_simd_detect() allows is lowered to it. */
void amdim_augment_set_simd(amdim_augmenter *a, amdim_simd level);
amdim_simd amdim_augment_simd(const amdim_augmenter *a);

/* How amdim_augment_pair decodes JPEG records (resized-crop presets). */
typedef struct {
    /* 0 (the default): decode the whole image, the oracle. 1: decode only
     * the rectangle the two crops cover (rows below it are never
     * entropy-decoded); at full scale the views are the same bytes. */
    int region;
    /* With region: bit M (1..7) allows libjpeg-turbo's scaled decode at M/8
     * when both crops stay at least the output size there; the crops are
     * then resized from the scaled decode, a close but not byte-identical
     * approximation (bench_fastpath reports the difference). 0: full scale. */
    unsigned scales;
} amdim_decode_options;
/* The scales amdim-load uses by default: 1/2 and 1/4 (see bench/RESULTS.md). */
#define AMDIM_DECODE_SCALES_DEFAULT ((1u << 2) | (1u << 4))
void amdim_augment_set_decode(amdim_augmenter *a, const amdim_decode_options *o);
const amdim_augment_config *amdim_augment_get_config(const amdim_augmenter *a);

/* Decodes a record into the RGB source image the views are cut from:
 * JPEG is decoded (grey and CMYK converted, no EXIF rotation), raw grey is
 * replicated to three channels, and for the translate preset an image
 * smaller than the output is zero-padded to it, centred (28 -> 32 for
 * MNIST-style sets). The image is owned by the augmenter and valid until
 * its next call. Returns 0, or AMDIM_E_CORRUPT / AMDIM_E_TRUNCATED /
 * AMDIM_E_UNSUPPORTED / AMDIM_E_INVALID with the reason in the error. */
int amdim_augment_decode(amdim_augmenter *a, const amdim_record *rec, const amdim_image **img);

/* Makes one view of `src` from given parameters (flip shared by the pair).
 * out holds size*size*3 bytes. */
int amdim_augment_view(amdim_augmenter *a, const amdim_image *src, int flip,
                       const amdim_view_params *vp, uint8_t *out);

/* Decode, draw with the (seed, epoch, index) stream and make both views.
 * `params` (may be NULL) receives what was drawn. */
int amdim_augment_pair(amdim_augmenter *a, const amdim_record *rec, uint64_t seed, uint64_t epoch,
                       uint64_t index, uint8_t *view1, uint8_t *view2, amdim_pair_params *params);

/* Test-time transform: resize the short side to test_resize (bicubic) and
 * centre-crop size x size; for the translate preset the (padded) image
 * itself. out holds size*size*3 bytes. An image whose long side is more
 * than AMDIM_TEST_VIEW_MAX_ASPECT times its short side is refused
 * (AMDIM_E_TOO_LARGE): its resize would be that many times larger. */
#define AMDIM_TEST_VIEW_MAX_ASPECT 64
int amdim_augment_test_view(amdim_augmenter *a, const amdim_record *rec, uint8_t *out);

/* ---- the steps, in place on interleaved RGB (the oracle for SIMD code) --- */

/* Image.blend(black, img, f): trunc(f * v), clipped. */
void amdim_adjust_brightness(uint8_t *rgb, size_t npix, float f);
/* Blend with the rounded mean of the image's grey (PIL "L") level. */
void amdim_adjust_contrast(uint8_t *rgb, size_t npix, float f);
/* Blend with each pixel's grey level. */
void amdim_adjust_saturation(uint8_t *rgb, size_t npix, float f);
/* Shift H in PIL's 8-bit HSV by trunc(hue * 255) with wrap-around. */
void amdim_adjust_hue(uint8_t *rgb, size_t npix, float hue);
/* PIL's RGB -> L (ITU-R 601-2 in 16-bit fixed point), replicated to RGB. */
void amdim_to_grey(uint8_t *rgb, size_t npix);
/* PIL's L value of one RGB pixel. */
static inline uint8_t amdim_grey_level(const uint8_t *p)
{
    return (uint8_t)((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
}
/* Mirror left-right. */
void amdim_flip_horizontal(uint8_t *rgb, int w, int h);
/* out(x, y) = src(reflect(x - dx), reflect(y - dy)), same size (AMDIM's
 * RandomTranslateWithReflect; the edge pixel is not repeated). */
void amdim_translate_reflect(const uint8_t *src, int w, int h, int dx, int dy, uint8_t *out);

#endif
