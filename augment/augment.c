/* The augmenter handle: decode once, flip once, two views. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_augment.h"
#include "augment_internal.h"

/* The colour steps, chosen once per augmenter from its SIMD level. */
typedef struct {
    void (*brightness)(uint8_t *, size_t, float);
    void (*contrast)(uint8_t *, size_t, float);
    void (*saturation)(uint8_t *, size_t, float);
    void (*hue)(uint8_t *, size_t, float);
    void (*grey)(uint8_t *, size_t);
} colour_ops;

struct amdim_augmenter {
    amdim_augment_config cfg;
    amdim_codec *codec;
    amdim_image decoded; /* the record as RGB */
    amdim_image padded;  /* translate preset: zero-padded to the output size */
    amdim_image flipped;
    amdim_image resized; /* test transform */
    amdim_image region;  /* fast path: the decoded part of a JPEG */
    amdim_scratch scratch;
    amdim_simd simd;
    colour_ops ops;
    amdim_decode_options decode;
    uint64_t max_pixels; /* records with more pixels are refused before any decode */
    char err[512];
};

void amdim_augment_set_simd(amdim_augmenter *a, amdim_simd level)
{
    const amdim_simd best = amdim_simd_detect();
    a->simd = level = level > best ? best : level;
    if (level >= AMDIM_SIMD_AVX512)
        a->ops = (colour_ops){amdim_adjust_brightness_avx512, amdim_adjust_contrast_avx512,
                              amdim_adjust_saturation_avx512, amdim_adjust_hue_avx512, amdim_to_grey_avx512};
    else if (level == AMDIM_SIMD_AVX2)
        a->ops = (colour_ops){amdim_adjust_brightness_avx2, amdim_adjust_contrast_avx2,
                              amdim_adjust_saturation_avx2, amdim_adjust_hue_avx2, amdim_to_grey_avx2};
    else
        a->ops = (colour_ops){amdim_adjust_brightness, amdim_adjust_contrast, amdim_adjust_saturation,
                              amdim_adjust_hue, amdim_to_grey};
}

amdim_simd amdim_augment_simd(const amdim_augmenter *a) { return a->simd; }

void amdim_augment_set_decode(amdim_augmenter *a, const amdim_decode_options *o)
{
    a->decode = *o;
    a->decode.scales &= 0xFEu; /* M = 1..7; full size is always allowed */
}

int amdim_augment_create(amdim_augmenter **out, const amdim_augment_config *cfg)
{
    *out = NULL;
    char why[256];
    int st = amdim_augment_config_check(cfg, why, sizeof why);
    if (st)
        return st;
    amdim_augmenter *a = calloc(1, sizeof *a);
    if (!a)
        return AMDIM_E_NOMEM;
    a->cfg = *cfg;
    a->max_pixels = AMDIM_AUGMENT_MAX_PIXELS_DEFAULT;
    amdim_augment_set_simd(a, amdim_simd_detect());
    if ((st = amdim_codec_create(&a->codec))) {
        free(a);
        return st;
    }
    *out = a;
    return AMDIM_OK;
}

void amdim_augment_destroy(amdim_augmenter *a)
{
    if (!a)
        return;
    amdim_codec_destroy(a->codec);
    amdim_image_free(&a->decoded);
    amdim_image_free(&a->padded);
    amdim_image_free(&a->flipped);
    amdim_image_free(&a->resized);
    amdim_image_free(&a->region);
    amdim_scratch_free(&a->scratch);
    free(a);
}

const char *amdim_augment_error(const amdim_augmenter *a) { return a ? a->err : "no augmenter"; }

void amdim_augment_set_max_pixels(amdim_augmenter *a, uint64_t max_pixels)
{
    a->max_pixels = max_pixels ? max_pixels : AMDIM_AUGMENT_MAX_PIXELS_DEFAULT;
}

const amdim_augment_config *amdim_augment_get_config(const amdim_augmenter *a) { return &a->cfg; }


/* Before anything is allocated for a record: its size against the pixel
 * limit, and a JPEG's own size (its SOF) against the record's header, so
 * that a small record cannot make a decoder allocate for a huge image. */
static int check_record_size(amdim_augmenter *a, const amdim_record *rec)
{
    uint64_t npix = (uint64_t)rec->width * rec->height;
    if (npix > a->max_pixels)
        return AMDIM_FAIL_IN(a, AMDIM_E_TOO_LARGE, "record of %ux%u has %llu pixels, more than the limit of %llu",
                     rec->width, rec->height, (unsigned long long)npix, (unsigned long long)a->max_pixels);
    if (rec->encoding != AMDIM_ENCODING_JPEG)
        return AMDIM_OK;
    amdim_image_format f;
    int w, h, ch, st = amdim_codec_probe(a->codec, rec->payload, rec->payload_size, &f, &w, &h, &ch);
    if (st)
        return AMDIM_FAIL_IN(a, st, "%s", amdim_codec_error(a->codec));
    if (f != AMDIM_FORMAT_JPEG)
        return AMDIM_FAIL_IN(a, AMDIM_E_CORRUPT, "record says JPEG but its payload is not a JPEG");
    if ((uint32_t)w != rec->width || (uint32_t)h != rec->height)
        return AMDIM_FAIL_IN(a, AMDIM_E_CORRUPT, "JPEG is %dx%d but its record says %ux%u", w, h, rec->width, rec->height);
    return AMDIM_OK;
}

int amdim_augment_decode(amdim_augmenter *a, const amdim_record *rec, const amdim_image **img)
{
    int st;
    if ((st = check_record_size(a, rec)))
        return st;
    if (rec->encoding == AMDIM_ENCODING_JPEG) {
        /* The record's size is the limit: the probe above read the first
         * SOF, this also covers a decoder that sees another one. */
        if ((st = amdim_codec_decode_rgb(a->codec, rec->payload, rec->payload_size,
                                         (uint64_t)rec->width * rec->height, &a->decoded, NULL)))
            return AMDIM_FAIL_IN(a, st, "%s", amdim_codec_error(a->codec));
        if ((uint32_t)a->decoded.width != rec->width || (uint32_t)a->decoded.height != rec->height)
            return AMDIM_FAIL_IN(a, AMDIM_E_CORRUPT, "JPEG is %dx%d but its record says %ux%u", a->decoded.width,
                         a->decoded.height, rec->width, rec->height);
    } else if (rec->encoding == AMDIM_ENCODING_RAW) {
        if (amdim_image_reserve(&a->decoded, (int)rec->width, (int)rec->height, 3))
            return AMDIM_FAIL_IN(a, AMDIM_E_NOMEM, "out of memory");
        size_t npix = (size_t)rec->width * rec->height;
        if ((uint64_t)npix * rec->channels != rec->payload_size)
            return AMDIM_FAIL_IN(a, AMDIM_E_CORRUPT, "raw record of %ux%ux%u has %u bytes", rec->width, rec->height,
                         rec->channels, rec->payload_size);
        if (rec->channels == 3) {
            memcpy(a->decoded.pixels, rec->payload, npix * 3);
        } else {
            for (size_t i = 0; i < npix; i++)
                memset(a->decoded.pixels + 3 * i, rec->payload[i], 3);
        }
    } else {
        return AMDIM_FAIL_IN(a, AMDIM_E_UNSUPPORTED, "record encoding %u", rec->encoding);
    }
    const amdim_image *src = &a->decoded;
    if (a->cfg.crop_mode == AMDIM_CROP_TRANSLATE && (src->width != a->cfg.size || src->height != a->cfg.size)) {
        int s = a->cfg.size;
        if (src->width > s || src->height > s)
            return AMDIM_FAIL_IN(a, AMDIM_E_INVALID, "the %s preset makes %dx%d views without resizing, but the image is %dx%d",
                         a->cfg.name, s, s, src->width, src->height);
        if (amdim_image_reserve(&a->padded, s, s, 3))
            return AMDIM_FAIL_IN(a, AMDIM_E_NOMEM, "out of memory");
        memset(a->padded.pixels, 0, (size_t)s * s * 3);
        int ox = (s - src->width) / 2, oy = (s - src->height) / 2;
        for (int y = 0; y < src->height; y++)
            memcpy(a->padded.pixels + ((size_t)(oy + y) * s + ox) * 3, src->pixels + (size_t)y * src->width * 3,
                   (size_t)src->width * 3);
        src = &a->padded;
    }
    *img = src;
    return AMDIM_OK;
}

static int make_flipped(amdim_augmenter *a, const amdim_image *src, const amdim_image **out)
{
    if (amdim_image_reserve(&a->flipped, src->width, src->height, 3))
        return AMDIM_FAIL_IN(a, AMDIM_E_NOMEM, "out of memory");
    memcpy(a->flipped.pixels, src->pixels, (size_t)src->width * src->height * 3);
    amdim_flip_horizontal(a->flipped.pixels, src->width, src->height);
    *out = &a->flipped;
    return AMDIM_OK;
}

static int colour_of(amdim_augmenter *a, const amdim_view_params *vp, uint8_t *out);

/* One view of src, read mirrored when mirror is set (resized crops only;
 * translate views take an already flipped source). */
static int view_of(amdim_augmenter *a, const amdim_image *src, int mirror, const amdim_view_params *vp,
                   uint8_t *out)
{
    const amdim_augment_config *c = &a->cfg;
    const int s = c->size;
    const size_t npix = (size_t)s * s;
    if (c->crop_mode == AMDIM_CROP_RESIZED) {
        const double box[4] = {vp->x, vp->y, vp->x + vp->w, vp->y + vp->h};
        const int clip[4] = {vp->x, vp->y, vp->x + vp->w, vp->y + vp->h};
        int st = amdim_resize_box(src->pixels, src->width, src->height, 3, box, clip, mirror, (amdim_filter)c->filter,
                                  out, s, s, a->simd, &a->scratch);
        if (st)
            return AMDIM_FAIL_IN(a, st, "crop (%d, %d, %dx%d) does not fit the %dx%d image", vp->x, vp->y, vp->w, vp->h,
                         src->width, src->height);
    } else {
        if (src->width != s || src->height != s)
            return AMDIM_FAIL_IN(a, AMDIM_E_INVALID, "translate view of a %dx%d image, want %dx%d", src->width, src->height, s, s);
        if (vp->dx || vp->dy)
            amdim_translate_reflect(src->pixels, s, s, vp->dx, vp->dy, out);
        else
            memcpy(out, src->pixels, npix * 3);
    }
    return colour_of(a, vp, out);
}

/* Colour jitter and grey, in place on a finished crop. */
static int colour_of(amdim_augmenter *a, const amdim_view_params *vp, uint8_t *out)
{
    const amdim_augment_config *c = &a->cfg;
    const size_t npix = (size_t)c->size * c->size;
    if (vp->jitter) {
        for (int k = 0; k < 4; k++) {
            switch (vp->order[k]) {
            case AMDIM_JIT_BRIGHTNESS:
                if (c->brightness > 0)
                    a->ops.brightness(out, npix, vp->brightness);
                break;
            case AMDIM_JIT_CONTRAST:
                if (c->contrast > 0)
                    a->ops.contrast(out, npix, vp->contrast);
                break;
            case AMDIM_JIT_SATURATION:
                if (c->saturation > 0)
                    a->ops.saturation(out, npix, vp->saturation);
                break;
            case AMDIM_JIT_HUE:
                if (c->hue > 0)
                    a->ops.hue(out, npix, vp->hue);
                break;
            default:
                return AMDIM_FAIL_IN(a, AMDIM_E_INVALID, "bad jitter step %u", vp->order[k]);
            }
        }
    }
    if (vp->grey)
        a->ops.grey(out, npix);
    return AMDIM_OK;
}

/* How views read a flipped source: resized crops read it mirrored in place
 * (*mirror), translate views get a flipped copy in *src. */
static int orient(amdim_augmenter *a, int flip, const amdim_image **src, int *mirror)
{
    *mirror = flip && a->cfg.crop_mode == AMDIM_CROP_RESIZED;
    return flip && !*mirror ? make_flipped(a, *src, src) : AMDIM_OK;
}

int amdim_augment_view(amdim_augmenter *a, const amdim_image *src, int flip, const amdim_view_params *vp,
                       uint8_t *out)
{
    int mirror, st = orient(a, flip, &src, &mirror);
    return st ? st : view_of(a, src, mirror, vp, out);
}

/* libjpeg-turbo's scale M/8 for this pair: the smallest allowed one at
 * which both crops still cover at least the output size. */
static int decode_scale(const amdim_augmenter *a, const amdim_pair_params *p)
{
    const int need = 8 * a->cfg.size;
    for (int m = 1; m < 8; m++) {
        if (!((a->decode.scales >> m) & 1))
            continue;
        int ok = 1;
        for (int v = 0; v < 2; v++)
            ok &= p->view[v].w * m >= need && p->view[v].h * m >= need;
        if (ok)
            return m;
    }
    return 8;
}

/* The fast path for JPEG records: one decode of only the rectangle both
 * crops cover, at a reduced scale when both crops allow it, then each crop
 * resized from its box in the decoded part (read mirrored when the pair is
 * flipped). At scale 8/8 the views are the oracle's bytes; below, they are
 * the bicubic resize of libjpeg's scaled decode. Returns 1 (not 0) when the
 * record needs the general path. */
static int pair_from_region(amdim_augmenter *a, const amdim_record *rec, const amdim_pair_params *p,
                            uint8_t *view1, uint8_t *view2)
{
    const int W = (int)rec->width, H = (int)rec->height, S = a->cfg.size;
    int ux[2], x0 = W, y0 = H, x1 = 0, y1 = 0;
    for (int v = 0; v < 2; v++) {
        const amdim_view_params *vp = &p->view[v];
        ux[v] = p->flip ? W - vp->x - vp->w : vp->x; /* crop in the unflipped image */
        x0 = ux[v] < x0 ? ux[v] : x0;
        y0 = vp->y < y0 ? vp->y : y0;
        x1 = ux[v] + vp->w > x1 ? ux[v] + vp->w : x1;
        y1 = vp->y + vp->h > y1 ? vp->y + vp->h : y1;
    }
    const int m = decode_scale(a, p);
    const int rect[4] = {x0, y0, x1 - x0, y1 - y0};
    amdim_jpeg_region reg;
    int st = check_record_size(a, rec);
    if (st)
        return st;
    st = amdim_codec_decode_jpeg_region(a->codec, rec->payload, rec->payload_size, m, rect, &a->region, &reg);
    if (st == AMDIM_E_UNSUPPORTED)
        return 1; /* CMYK: the general path converts it */
    if (st)
        return AMDIM_FAIL_IN(a, st, "%s", amdim_codec_error(a->codec));
    if (reg.full_width != W || reg.full_height != H)
        return AMDIM_FAIL_IN(a, AMDIM_E_CORRUPT, "JPEG is %dx%d but its record says %dx%d", reg.full_width, reg.full_height, W, H);
    amdim_image *img = &a->region;
    const int bw = img->width, bh = img->height;
    const double s = m / 8.0;
    uint8_t *outs[2] = {view1, view2};
    for (int v = 0; v < 2; v++) {
        const amdim_view_params *vp = &p->view[v];
        double ax = ux[v] * s - reg.x0, bx = (ux[v] + vp->w) * s - reg.x0;
        if (p->flip) {
            double t = bw - bx;
            bx = bw - ax;
            ax = t;
        }
        double box[4] = {ax, vp->y * s - reg.y0, bx, (vp->y + vp->h) * s - reg.y0};
        box[0] = box[0] < 0 ? 0 : box[0];
        box[1] = box[1] < 0 ? 0 : box[1];
        box[2] = box[2] > bw ? bw : box[2];
        box[3] = box[3] > bh ? bh : box[3];
        int clip[4] = {(int)floor(box[0]), (int)floor(box[1]), (int)ceil(box[2]), (int)ceil(box[3])};
        if ((st = amdim_resize_box(img->pixels, bw, bh, 3, box, clip, p->flip, (amdim_filter)a->cfg.filter, outs[v],
                                   S, S, a->simd, &a->scratch)))
            return AMDIM_FAIL_IN(a, st, "crop (%d, %d, %dx%d) at scale %d/8 does not fit the decoded %dx%d part", vp->x, vp->y,
                         vp->w, vp->h, m, bw, bh);
        if ((st = colour_of(a, vp, outs[v])))
            return st;
    }
    return AMDIM_OK;
}

int amdim_augment_pair(amdim_augmenter *a, const amdim_record *rec, uint64_t seed, uint64_t epoch,
                       uint64_t index, uint8_t *view1, uint8_t *view2, amdim_pair_params *params)
{
    amdim_rng rng;
    amdim_rng_init(&rng, seed, (uint32_t)epoch, index);
    amdim_pair_params local, *p = params ? params : &local;
    int st;
    if (a->decode.region && rec->encoding == AMDIM_ENCODING_JPEG && a->cfg.crop_mode == AMDIM_CROP_RESIZED &&
        rec->width > 0 && rec->height > 0) {
        amdim_augment_draw(&a->cfg, (int)rec->width, (int)rec->height, &rng, p);
        if ((st = pair_from_region(a, rec, p, view1, view2)) <= 0)
            return st;
        amdim_rng_init(&rng, seed, (uint32_t)epoch, index);
    }
    const amdim_image *src;
    if ((st = amdim_augment_decode(a, rec, &src)))
        return st;
    amdim_augment_draw(&a->cfg, src->width, src->height, &rng, p);
    int mirror;
    if ((st = orient(a, p->flip, &src, &mirror)) || (st = view_of(a, src, mirror, &p->view[0], view1)))
        return st;
    return view_of(a, src, mirror, &p->view[1], view2);
}

int amdim_augment_test_view(amdim_augmenter *a, const amdim_record *rec, uint8_t *out)
{
    const amdim_image *src;
    int st = amdim_augment_decode(a, rec, &src);
    if (st)
        return st;
    const int s = a->cfg.size;
    if (a->cfg.crop_mode == AMDIM_CROP_TRANSLATE || a->cfg.test_resize == 0) {
        if (src->width != s || src->height != s)
            return AMDIM_FAIL_IN(a, AMDIM_E_INVALID, "the %s preset has no test resize, but the image is %dx%d, not %dx%d",
                         a->cfg.name, src->width, src->height, s, s);
        memcpy(out, src->pixels, (size_t)s * s * 3);
        return AMDIM_OK;
    }
    /* torchvision Resize(int): short side to test_resize, long side
     * int(test_resize * long / short); then CenterCrop with round(). */
    int w = src->width, h = src->height, r = a->cfg.test_resize, ow, oh;
    if (w <= h) {
        ow = r;
        oh = (int)((double)r * h / w);
    } else {
        oh = r;
        ow = (int)((double)r * w / h);
    }
    /* torchvision would resize a 65500x3 image to 3.2 million x 146 pixels
     * to keep its centre; refuse such strips instead of spending seconds
     * and gigabytes on them. */
    if ((uint64_t)ow > (uint64_t)AMDIM_TEST_VIEW_MAX_ASPECT * r || (uint64_t)oh > (uint64_t)AMDIM_TEST_VIEW_MAX_ASPECT * r)
        return AMDIM_FAIL_IN(a, AMDIM_E_TOO_LARGE, "the test view of a %dx%d image would resize it to %dx%d: aspect ratio over %d:1",
                     w, h, ow, oh, AMDIM_TEST_VIEW_MAX_ASPECT);
    const amdim_image *img = src;
    if (ow != w || oh != h) {
        if (amdim_image_reserve(&a->resized, ow, oh, 3))
            return AMDIM_FAIL_IN(a, AMDIM_E_NOMEM, "out of memory");
        const double box[4] = {0, 0, w, h};
        const int clip[4] = {0, 0, w, h};
        if ((st = amdim_resize_box(src->pixels, w, h, 3, box, clip, 0, (amdim_filter)a->cfg.filter, a->resized.pixels,
                                   ow, oh, AMDIM_SIMD_SCALAR, &a->scratch)))
            return AMDIM_FAIL_IN(a, st, "resize failed");
        img = &a->resized;
    }
    int top = (int)nearbyint((oh - s) / 2.0), left = (int)nearbyint((ow - s) / 2.0);
    for (int y = 0; y < s; y++)
        memcpy(out + (size_t)y * s * 3, img->pixels + ((size_t)(top + y) * ow + left) * 3, (size_t)s * 3);
    return AMDIM_OK;
}
