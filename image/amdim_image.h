/* amdim image: decoding, encoding and PIL-compatible resampling of 8-bit images.
 *
 * Used by the packer (verify, convert, shrink) and by the augmentation
 * library (decode, crop+resize). Pixels are interleaved uint8 (HWC). */
#ifndef AMDIM_IMAGE_H
#define AMDIM_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_common.h"

/* Container formats recognised by their magic bytes. */
typedef enum {
    AMDIM_FORMAT_UNKNOWN = 0,
    AMDIM_FORMAT_JPEG,
    AMDIM_FORMAT_PNG,
    AMDIM_FORMAT_GIF,
    AMDIM_FORMAT_BMP,
    AMDIM_FORMAT_TIFF,
    AMDIM_FORMAT_WEBP,
    AMDIM_FORMAT_PNM,
} amdim_image_format;

/* Identifies the container by its first bytes; never reads past len. */
amdim_image_format amdim_image_sniff(const uint8_t *data, size_t len);
/* "JPEG", "PNG", ...; "unknown" for AMDIM_FORMAT_UNKNOWN. */
const char *amdim_image_format_name(amdim_image_format f);

/* An owned, growable interleaved image buffer. Zero-initialise before use. */
typedef struct {
    uint8_t *pixels; /* (height, width, channels) uint8 */
    int width, height, channels;
    size_t capacity; /* bytes allocated */
} amdim_image;

/* Makes room for w*h*c bytes and sets the shape. AMDIM_E_NOMEM on failure. */
int amdim_image_reserve(amdim_image *img, int width, int height, int channels);
void amdim_image_free(amdim_image *img);

/* What a decode found out about its source. */
typedef struct {
    amdim_image_format format;
    int src_channels;   /* 1 grey, 3 colour, 4 CMYK/YCCK or RGBA */
    int is_cmyk;        /* JPEG in CMYK or YCCK (converted to RGB) */
    int adobe_inverted; /* CMYK stored inverted (Adobe APP14 marker present) */
    int warning;        /* decoded completely, but the decoder warned */
    char warning_text[160];
} amdim_decode_info;

/* A decoder/encoder handle: TurboJPEG instances plus scratch memory. One per
 * thread; not thread-safe. */
typedef struct amdim_codec amdim_codec;

int amdim_codec_create(amdim_codec **out);
void amdim_codec_destroy(amdim_codec *codec); /* accepts NULL */
/* Detailed message for the last failure, "function(): detail". */
const char *amdim_codec_error(const amdim_codec *codec);

/* Reads only the header: size and channel count of a JPEG or PNG.
 * Returns 0, AMDIM_E_CORRUPT, AMDIM_E_TRUNCATED, AMDIM_E_EMPTY or AMDIM_E_UNSUPPORTED. */
int amdim_codec_probe(amdim_codec *codec, const uint8_t *data, size_t len,
                      amdim_image_format *format, int *width, int *height, int *channels);

/* Fully decodes a JPEG or PNG to RGB (channels = 3) into `out`, which is grown
 * as needed. Greyscale is replicated; CMYK/YCCK JPEGs are converted the way PIL
 * does (inverted when an Adobe marker says so); PNG alpha is dropped.
 * Images with more than max_pixels pixels are rejected before decoding
 * (0 = no limit). A decode that completes with a recoverable decoder warning
 * succeeds with info->warning set, except a premature end of data, which is
 * AMDIM_E_TRUNCATED.
 * Returns 0, AMDIM_E_EMPTY, AMDIM_E_CORRUPT, AMDIM_E_TRUNCATED,
 * AMDIM_E_UNSUPPORTED, AMDIM_E_TOO_LARGE or AMDIM_E_NOMEM; the codec's error
 * message says why. `info` may be NULL. */
int amdim_codec_decode_rgb(amdim_codec *codec, const uint8_t *data, size_t len,
                           uint64_t max_pixels, amdim_image *out, amdim_decode_info *info);

/* Where a region decode's pixels lie. */
typedef struct {
    int scale_num;                   /* decoded at scale_num/8 */
    int full_width, full_height;     /* the JPEG's size */
    int scaled_width, scaled_height; /* the whole image at that scale (libjpeg rounds up) */
    int x0, y0; /* scaled coordinates of out's pixel (0, 0) */
} amdim_jpeg_region;

/* Decodes to RGB only the part of a JPEG that covers rect = {x, y, w, h}
 * (full-size pixel coordinates), with libjpeg-turbo's scaled IDCT at
 * scale_num/8 (1..8). out receives at least the scaled rectangle
 * [floor(x*s), ceil((x+w)*s)) x [floor(y*s), ceil((y+h)*s)), s = scale_num/8,
 * widened on the left to an iMCU boundary; reg says where it lies. Rows
 * below the rectangle are not decoded, so damage there goes unnoticed (the
 * packer verifies every JPEG with a full decode). Grey is replicated; CMYK
 * and YCCK are AMDIM_E_UNSUPPORTED (use amdim_codec_decode_rgb).
 * Returns 0, AMDIM_E_INVALID, AMDIM_E_EMPTY, AMDIM_E_CORRUPT,
 * AMDIM_E_TRUNCATED, AMDIM_E_UNSUPPORTED or AMDIM_E_NOMEM. */
int amdim_codec_decode_jpeg_region(amdim_codec *codec, const uint8_t *data, size_t len, int scale_num,
                                   const int rect[4], amdim_image *out, amdim_jpeg_region *reg);

/* Encodes interleaved RGB (channels 3) or grey (channels 1) pixels as a
 * baseline JPEG with 4:2:0 chroma subsampling (grey: single component).
 * *jpeg points into the codec's buffer, valid until the next call on it. */
int amdim_codec_encode_jpeg(amdim_codec *codec, const uint8_t *pixels, int width, int height,
                            int channels, int quality, const uint8_t **jpeg, size_t *len);

/* Resampling ------------------------------------------------------------- */

/* Crops the integer rectangle (x0, y0, cw, ch) out of src and resizes it to
 * (dw, dh) with PIL's bicubic filter (a = -0.5), exactly as
 * `img.crop((x0, y0, x0+cw, y0+ch)).resize((dw, dh), Image.BICUBIC)` does in
 * Pillow: the filter support widens by the scale factor when shrinking
 * (antialiasing), weights are 22-bit fixed point, the horizontal pass runs
 * first and is rounded to uint8 before the vertical pass. The rectangle must
 * lie inside src. `dst` holds dw*dh*channels bytes; `scratch` is grown as needed.
 * Returns 0, AMDIM_E_INVALID or AMDIM_E_NOMEM. */
typedef struct {
    void *mem;
    size_t capacity;
} amdim_scratch;
void amdim_scratch_free(amdim_scratch *s);

int amdim_resize_bicubic(const uint8_t *src, int sw, int sh, int channels,
                         int x0, int y0, int cw, int ch,
                         uint8_t *dst, int dw, int dh, amdim_scratch *scratch);

/* The general form: resizes the box [box[0], box[2]) x [box[1], box[3]) of
 * src (fractional source coordinates, as Pillow's resize(size, box=...))
 * to (dw, dh), reading source pixels only inside the integer rectangle
 * clip = {x0, y0, x1, y1} (the filter window is clamped to it as it is to a
 * cropped image's edges). The box must lie inside clip, and clip inside
 * src. With box == clip this is amdim_resize_bicubic. With mirror set,
 * the source is src flipped left-right (box and clip are in its
 * coordinates), read in place. simd selects the passes; every level gives
 * the scalar oracle's bytes.
 * Returns 0, AMDIM_E_INVALID or AMDIM_E_NOMEM. */
int amdim_resize_bicubic_box(const uint8_t *src, int sw, int sh, int channels, const double box[4],
                             const int clip[4], int mirror, uint8_t *dst, int dw, int dh, amdim_simd simd,
                             amdim_scratch *scratch);
/* The same with the filter given: Pillow's BICUBIC, or BILINEAR (the
 * triangle kernel, support 1; torchvision's Resize default), whose
 * weights are computed in plain C at every simd level. */
typedef enum { AMDIM_FILTER_BICUBIC = 0, AMDIM_FILTER_BILINEAR = 1 } amdim_filter;
int amdim_resize_box(const uint8_t *src, int sw, int sh, int channels, const double box[4], const int clip[4],
                     int mirror, amdim_filter filter, uint8_t *dst, int dw, int dh, amdim_simd simd,
                     amdim_scratch *scratch);


/* Drawing (draw.c) ------------------------------------------------------------ */

/* Text in a 3x5 bitmap font (A-Z, a-z as A-Z, 0-9, '.', '/', '-', '%';
 * anything else blank), each pixel scale x scale, 4 * scale apart, into an
 * RGB image (width x height, clipped to it) at (x, y), the top left. */
void amdim_draw_text(uint8_t *rgb, int width, int height, int x, int y, const char *s, const uint8_t color[3],
                     int scale);
/* An RGB image as a PNG file: 0 or AMDIM_E_IO ("writing PATH: why"). */
int amdim_png_write_rgb(const char *path, const uint8_t *rgb, int width, int height, char *err, size_t n);

/* A contact sheet of view pairs: 4 cells a row, each view 1 beside view 2
 * (size x size RGB) with the label in white below. */
typedef struct {
    uint8_t *img;
    int w, h, cell_w, cell_h, size, n, max;
} amdim_sheet;
/* Room for max pairs; 0 or AMDIM_E_NOMEM. */
int amdim_sheet_init(amdim_sheet *s, int size, int max);
/* Adds a pair: 1, or 0 when the sheet is full. */
int amdim_sheet_add(amdim_sheet *s, const uint8_t *view1, const uint8_t *view2, int label);
/* The rows drawn so far as a PNG: 0, AMDIM_E_EMPTY (no pair) or AMDIM_E_IO. */
int amdim_sheet_write(const amdim_sheet *s, const char *path, char *err, size_t n);
void amdim_sheet_free(amdim_sheet *s);

#endif
