/* The SIMD path against the scalar oracle: the colour kernels of every level and
 * both resampling passes on random images, sizes with ragged tails and
 * factors across and beyond the presets' ranges; the region decoder at full
 * scale against the full decode; the fast pair path (region decode, SIMD)
 * against the oracle pair; the scaled decode's distance from it; and the
 * AMDIM_SIMD switch. Skips (77) on a CPU without AVX2. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_augment.h"
#include "augment_internal.h"
#include "resample_internal.h"
#include "testutil.h"

static uint32_t lcg = 12345;
static amdim_simd top_level; /* the best level this CPU has */
static uint32_t rnd(void)
{
    lcg = lcg * 1664525u + 1013904223u;
    return lcg >> 8;
}

/* Random pixels with runs of grey, saturated and equal-channel pixels, the
 * edge cases of the HSV round trip. */
static void fill(uint8_t *p, size_t npix)
{
    for (size_t i = 0; i < npix; i++) {
        uint32_t r = rnd(), kind = r % 8;
        uint8_t *q = p + 3 * i;
        q[0] = (uint8_t)rnd(), q[1] = (uint8_t)rnd(), q[2] = (uint8_t)rnd();
        if (kind == 0)
            q[1] = q[2] = q[0];
        else if (kind == 1)
            q[1] = q[0];
        else if (kind == 2)
            q[(r >> 4) % 3] = 255, q[(r >> 6) % 3] = 0;
        else if (kind == 3)
            q[0] = q[1] = q[2] = (uint8_t)((r >> 8) & 1 ? 255 : 0);
    }
}

static int max_diff(const uint8_t *a, const uint8_t *b, size_t n, size_t *ndiff)
{
    int m = 0;
    *ndiff = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs(a[i] - b[i]);
        m = d > m ? d : m;
        *ndiff += d != 0;
    }
    return m;
}

/* One level's colour kernels, in the order brightness, contrast,
 * saturation, hue, grey. */
typedef struct {
    amdim_simd level;
    void (*adjust[4])(uint8_t *, size_t, float);
    void (*grey)(uint8_t *, size_t);
} colour_kernels;

static const colour_kernels oracle_kernels = {
    AMDIM_SIMD_SCALAR, {amdim_adjust_brightness, amdim_adjust_contrast, amdim_adjust_saturation, amdim_adjust_hue},
    amdim_to_grey};
static const colour_kernels simd_kernels[] = {
    {AMDIM_SIMD_AVX2,
     {amdim_adjust_brightness_avx2, amdim_adjust_contrast_avx2, amdim_adjust_saturation_avx2, amdim_adjust_hue_avx2},
     amdim_to_grey_avx2},
    {AMDIM_SIMD_AVX512,
     {amdim_adjust_brightness_avx512, amdim_adjust_contrast_avx512, amdim_adjust_saturation_avx512,
      amdim_adjust_hue_avx512},
     amdim_to_grey_avx512},
};

static void apply(const colour_kernels *k, int op, uint8_t *p, size_t npix, float f)
{
    if (op < 4)
        k->adjust[op](p, npix, f);
    else
        k->grey(p, npix);
}

static void check_colour(const colour_kernels *k)
{
    static const size_t sizes[] = {1, 7, 8, 9, 15, 16, 17, 33, 1024, 128 * 128, 64 * 64 + 5};
    static const float factors[] = {0.0f, 0.05f, 0.6f, 0.8123f, 1.0f, 1.2f, 1.4f, 2.5f};
    static const float hues[] = {-0.5f, -0.25f, -0.1f, -0.01f, 0.0f, 0.003f, 0.07f, 0.1f, 0.3333f, 0.5f};
    int worst[5] = {0};
    size_t differing = 0, total = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t npix = sizes[si], n = npix * 3;
        uint8_t *src = malloc(n), *a = malloc(n), *b = malloc(n);
        fill(src, npix);
        for (int op = 0; op < 5; op++) {
            int nf = op == 3 ? (int)(sizeof hues / sizeof hues[0]) : op == 4 ? 1 : (int)(sizeof factors / sizeof factors[0]);
            for (int fi = 0; fi < nf; fi++) {
                float f = op == 3 ? hues[fi] : factors[fi];
                memcpy(a, src, n);
                memcpy(b, src, n);
                apply(&oracle_kernels, op, a, npix, f);
                apply(k, op, b, npix, f);
                size_t nd;
                int m = max_diff(a, b, n, &nd);
                worst[op] = m > worst[op] ? m : worst[op];
                differing += nd;
                total += n;
                CHECK(m == 0, "%s op %d factor %g on %zu pixels: max diff %d", amdim_simd_name(k->level), op, f, npix,
                      m);
            }
        }
        free(src), free(a), free(b);
    }
    printf("%s colour kernels: max diff brightness %d contrast %d saturation %d hue %d grey %d; %zu of %zu bytes "
           "differ\n",
           amdim_simd_name(k->level), worst[0], worst[1], worst[2], worst[3], worst[4], differing, total);
}

/* Hue over every 24-bit colour: the table-driven rgb -> hsv must cover every
 * case, and the float hsv -> rgb must send each near tie to the oracle. */
static void check_hue_cube(const colour_kernels *k)
{
    const size_t n = (size_t)1 << 24;
    uint8_t *a = malloc(n * 3), *b = malloc(n * 3);
    REQUIRE(a && b, "out of memory");
    static const float hues[] = {0.1f, -0.37f};
    for (int h = 0; h < 2; h++) {
        for (size_t i = 0; i < n; i++)
            a[3 * i] = (uint8_t)(i >> 16), a[3 * i + 1] = (uint8_t)(i >> 8), a[3 * i + 2] = (uint8_t)i;
        memcpy(b, a, n * 3);
        amdim_adjust_hue(a, n, hues[h]);
        k->adjust[3](b, n, hues[h]);
        size_t ndiff;
        int d = max_diff(a, b, n * 3, &ndiff);
        CHECK(d == 0, "%s hue %g over the RGB cube: %zu bytes differ (max %d)", amdim_simd_name(k->level), hues[h],
              ndiff, d);
    }
    printf("%s hue: all 16777216 colours at 2 shifts equal the oracle\n", amdim_simd_name(k->level));
    free(a), free(b);
}

/* The AVX2 weight computation against the oracle's, weight for weight, on
 * random boxes: down- and upscaling, fractional origins, windows clipped at
 * both ends, output sizes that are not a multiple of 4. */
static void check_weights(void)
{
    enum { MAXK = 2 * 160 + 8, MAXOUT = 200 };
    static int32_t k1[MAXOUT * MAXK], k2[MAXOUT * MAXK];
    static int b1[2 * MAXOUT], b2[2 * MAXOUT];
    static double tmp[4 * MAXK + 8];
    int cases = 0;
    for (int t = 0; t < 3000; t++) {
        int limit = 1 + (int)(rnd() % 600), out = 1 + (int)(rnd() % MAXOUT);
        double in0 = (rnd() % 1000) / 1000.0 * limit, in_size = (limit - in0) * (0.001 + (rnd() % 1000) / 1000.0);
        if (in_size <= 0)
            continue;
        double scale = in_size / out, fs = scale < 1.0 ? 1.0 : scale;
        int ksize = (int)ceil(2.0 * fs) * 2 + 1;
        if (ksize > MAXK)
            continue;
        memset(k1, 0x55, sizeof k1);
        memset(k2, 0x55, sizeof k2);
        amdim_resample_weights(in0, in_size, limit, out, ksize, b1, k1, tmp);
        amdim_resample_weights_avx2(in0, in_size, limit, out, ksize, b2, k2, tmp);
        CHECK(memcmp(b1, b2, sizeof(int) * 2 * out) == 0, "weights: bounds differ (box %.17g + %.17g of %d onto %d)",
              in0, in_size, limit, out);
        CHECK(memcmp(k1, k2, sizeof(int32_t) * out * ksize) == 0,
              "weights: values differ (box %.17g + %.17g of %d onto %d)", in0, in_size, limit, out);
        cases++;
    }
    printf("weights: %d random boxes, AVX2 equal to the oracle\n", cases);
}

static void check_resize(void)
{
    amdim_scratch s1 = {0}, s2 = {0};
    int worst = 0, cases = 0;
    for (int t = 0; t < 300; t++) {
        int C = t % 5 == 0 ? 1 : 3;
        int sw = 1 + (int)(rnd() % 300), sh = 1 + (int)(rnd() % 300);
        uint8_t *src = malloc((size_t)sw * sh * C);
        for (size_t i = 0; i < (size_t)sw * sh * C; i++)
            src[i] = (uint8_t)rnd();
        int cw = 1 + (int)(rnd() % sw), ch = 1 + (int)(rnd() % sh);
        int x0 = (int)(rnd() % (unsigned)(sw - cw + 1)), y0 = (int)(rnd() % (unsigned)(sh - ch + 1));
        int dw = t % 7 == 0 ? cw : 1 + (int)(rnd() % 160), dh = t % 11 == 0 ? ch : 1 + (int)(rnd() % 160);
        double box[4] = {x0, y0, x0 + cw, y0 + ch};
        if (t % 2) { /* fractional box inside the clip */
            box[0] += (rnd() % 100) / 250.0;
            box[1] += (rnd() % 100) / 250.0;
            box[2] -= (rnd() % 100) / 250.0;
            box[3] -= (rnd() % 100) / 250.0;
        }
        int clip[4] = {x0, y0, x0 + cw, y0 + ch};
        uint8_t *a = malloc((size_t)dw * dh * C), *b = malloc((size_t)dw * dh * C);
        int sa = amdim_resize_bicubic_box(src, sw, sh, C, box, clip, 0, a, dw, dh, AMDIM_SIMD_SCALAR, &s1);
        for (amdim_simd lv = AMDIM_SIMD_AVX2; lv <= top_level; lv++) {
            int sb = amdim_resize_bicubic_box(src, sw, sh, C, box, clip, 0, b, dw, dh, lv, &s2);
            CHECK(sa == sb, "status %d vs %d", sa, sb);
            if (sa == 0 && sb == 0) {
                size_t nd;
                int m = max_diff(a, b, (size_t)dw * dh * C, &nd);
                worst = m > worst ? m : worst;
                CHECK(m == 0, "%s resize %dx%d crop (%d,%d %dx%d) -> %dx%d C=%d: max diff %d", amdim_simd_name(lv),
                      sw, sh, x0, y0, cw, ch, dw, dh, C, m);
                cases++;
            }
        }
        /* mirrored reads, at every level, against the oracle on a flipped copy */
        uint8_t *flipped = malloc((size_t)sw * sh * C), *c = malloc((size_t)dw * dh * C);
        for (int y = 0; y < sh; y++)
            for (int x = 0; x < sw; x++)
                memcpy(flipped + ((size_t)y * sw + x) * C, src + ((size_t)y * sw + sw - 1 - x) * C, (size_t)C);
        if (amdim_resize_bicubic_box(flipped, sw, sh, C, box, clip, 0, a, dw, dh, AMDIM_SIMD_SCALAR, &s1) == 0) {
            for (amdim_simd lv = AMDIM_SIMD_SCALAR; lv <= top_level; lv++) {
                int st = amdim_resize_bicubic_box(src, sw, sh, C, box, clip, 1, c, dw, dh, lv, lv ? &s2 : &s1);
                size_t nd;
                int m = st ? 256 : max_diff(a, c, (size_t)dw * dh * C, &nd);
                worst = m > worst ? m : worst;
                CHECK(m == 0, "mirrored %s resize %dx%d crop (%d,%d %dx%d) -> %dx%d C=%d: max diff %d",
                      amdim_simd_name(lv), sw, sh, x0, y0, cw, ch, dw, dh, C, m);
            }
        }
        free(src), free(a), free(b), free(flipped), free(c);
    }
    /* The integer-crop entry point is the box one with box == clip. */
    uint8_t src[40 * 30 * 3], a[16 * 16 * 3], b[16 * 16 * 3];
    test_pattern(src, 40, 30, 3, 9);
    double box[4] = {3, 4, 33, 29};
    int clip[4] = {3, 4, 33, 29};
    amdim_resize_bicubic(src, 40, 30, 3, 3, 4, 30, 25, a, 16, 16, &s1);
    amdim_resize_bicubic_box(src, 40, 30, 3, box, clip, 0, b, 16, 16, AMDIM_SIMD_AVX2, &s2);
    CHECK(memcmp(a, b, sizeof a) == 0, "crop entry point differs from the box one");
    printf("resize: %d random cases up to %s, plain and mirrored, max diff %d\n", cases, amdim_simd_name(top_level),
           worst);
    amdim_scratch_free(&s1);
    amdim_scratch_free(&s2);
}

/* A JPEG record of a w x h test pattern. */
static amdim_record jpeg_record(int w, int h, int channels, unsigned seed, uint8_t **owned)
{
    uint8_t *px = malloc((size_t)w * h * channels);
    test_pattern(px, w, h, channels, seed);
    size_t len;
    *owned = test_encode_jpeg(px, w, h, channels, 90, &len);
    free(px);
    return (amdim_record){.label = 0, .aux_label = -1, .width = (uint32_t)w, .height = (uint32_t)h,
                          .channels = 3, .encoding = AMDIM_ENCODING_JPEG, .payload = *owned,
                          .payload_size = (uint32_t)len};
}

static void check_region_decode(void)
{
    amdim_codec *c;
    REQUIRE(amdim_codec_create(&c) == 0, "codec");
    amdim_image full = {0}, part = {0};
    int cases = 0;
    for (int t = 0; t < 40; t++) {
        int w = 17 + (int)(rnd() % 400), h = 9 + (int)(rnd() % 300), ch = t % 4 == 0 ? 1 : 3;
        uint8_t *jpg;
        amdim_record r = jpeg_record(w, h, ch, (unsigned)t, &jpg);
        REQUIRE(amdim_codec_decode_rgb(c, r.payload, r.payload_size, 0, &full, NULL) == 0, "full decode");
        int rw = 1 + (int)(rnd() % w), rh = 1 + (int)(rnd() % h);
        int rect[4] = {(int)(rnd() % (unsigned)(w - rw + 1)), (int)(rnd() % (unsigned)(h - rh + 1)), rw, rh};
        amdim_jpeg_region reg;
        int st = amdim_codec_decode_jpeg_region(c, r.payload, r.payload_size, 8, rect, &part, &reg);
        CHECK(st == 0, "region decode: %s", amdim_codec_error(c));
        if (st == 0) {
            CHECK(reg.x0 <= rect[0] && reg.x0 + part.width >= rect[0] + rect[2] && reg.y0 == rect[1] &&
                      part.height == rect[3] && reg.full_width == w && reg.full_height == h,
                  "region (%d,%d %dx%d) got (%d,%d %dx%d)", rect[0], rect[1], rect[2], rect[3], reg.x0, reg.y0,
                  part.width, part.height);
            int same = 1;
            for (int y = 0; y < part.height && same; y++)
                same = memcmp(part.pixels + ((size_t)y * part.width + (rect[0] - reg.x0)) * 3,
                              full.pixels + ((size_t)(reg.y0 + y) * w + rect[0]) * 3, (size_t)rect[2] * 3) == 0;
            CHECK(same, "%dx%d %s JPEG: region (%d,%d %dx%d) differs from the full decode", w, h,
                  ch == 1 ? "grey" : "colour", rect[0], rect[1], rect[2], rect[3]);
            cases++;
        }
        free(jpg);
    }
    /* Truncated data inside the region is an error naming the cause. */
    uint8_t *jpg;
    amdim_record r = jpeg_record(200, 160, 3, 3, &jpg);
    int rect[4] = {0, 0, 200, 160};
    amdim_jpeg_region reg;
    int st = amdim_codec_decode_jpeg_region(c, r.payload, r.payload_size / 2, 8, rect, &part, &reg);
    CHECK(st == AMDIM_E_TRUNCATED, "half a JPEG: status %d (%s)", st, amdim_codec_error(c));
    uint8_t junk[64] = {0xFF, 0xD8, 0xFF, 0xE0};
    st = amdim_codec_decode_jpeg_region(c, junk, sizeof junk, 8, rect, &part, &reg);
    CHECK(st == AMDIM_E_CORRUPT || st == AMDIM_E_TRUNCATED, "junk JPEG: status %d (%s)", st, amdim_codec_error(c));
    free(jpg);
    printf("region decode at 8/8: %d random regions equal the full decode\n", cases);
    amdim_image_free(&full);
    amdim_image_free(&part);
    amdim_codec_destroy(c);
}

static void check_fast_pair(const char *preset)
{
    amdim_augment_config cfg;
    amdim_augment_preset(preset, &cfg);
    amdim_augmenter *oracle, *fast, *scaled;
    REQUIRE(amdim_augment_create(&oracle, &cfg) == 0 && amdim_augment_create(&fast, &cfg) == 0 &&
                amdim_augment_create(&scaled, &cfg) == 0,
            "augmenters");
    amdim_augment_set_simd(oracle, AMDIM_SIMD_SCALAR);
    amdim_decode_options region = {.region = 1, .scales = 0};
    amdim_augment_set_decode(fast, &region);
    amdim_decode_options sc = {.region = 1, .scales = AMDIM_DECODE_SCALES_DEFAULT};
    amdim_augment_set_decode(scaled, &sc);
    const size_t n = (size_t)cfg.size * cfg.size * 3;
    uint8_t *o1 = malloc(n), *o2 = malloc(n), *f1 = malloc(n), *f2 = malloc(n);
    int worst = 0, pairs = 0;
    double sum_abs = 0;
    size_t bytes = 0;
    for (int k = 0; k < 24; k++) {
        int w = k % 3 == 0 ? 500 : 120 + (int)(rnd() % 500), h = k % 3 == 0 ? 375 : 100 + (int)(rnd() % 400);
        uint8_t *jpg;
        amdim_record r = jpeg_record(w, h, k % 5 == 4 ? 1 : 3, (unsigned)(100 + k), &jpg);
        amdim_pair_params po, pf;
        REQUIRE(amdim_augment_pair(oracle, &r, 7, 1, (uint64_t)k, o1, o2, &po) == 0, "oracle: %s",
                amdim_augment_error(oracle));
        REQUIRE(amdim_augment_pair(fast, &r, 7, 1, (uint64_t)k, f1, f2, &pf) == 0, "fast: %s",
                amdim_augment_error(fast));
        CHECK(memcmp(&po, &pf, sizeof po) == 0, "%s pair %d: different parameters", preset, k);
        size_t nd;
        int m1 = max_diff(o1, f1, n, &nd), m2 = max_diff(o2, f2, n, &nd);
        int m = m1 > m2 ? m1 : m2;
        worst = m > worst ? m : worst;
        CHECK(m == 0, "%s pair %d (%dx%d, flip %d): region+SIMD views differ from the oracle by %d", preset, k, w, h,
              po.flip, m);
        REQUIRE(amdim_augment_pair(scaled, &r, 7, 1, (uint64_t)k, f1, f2, NULL) == 0, "scaled: %s",
                amdim_augment_error(scaled));
        for (size_t i = 0; i < n; i++)
            sum_abs += abs(o1[i] - f1[i]) + abs(o2[i] - f2[i]);
        bytes += 2 * n;
        pairs++;
        free(jpg);
    }
    double mean = sum_abs / (double)bytes;
    printf("%s at %s: %d pairs, region decode + SIMD max diff %d from the oracle; scaled decode mean abs diff %.3f levels\n",
           preset, amdim_simd_name(amdim_simd_detect()), pairs, worst, mean);
    CHECK(mean < 2.0, "%s: the scaled decode is %.3f levels from the oracle on average", preset, mean);
    free(o1), free(o2), free(f1), free(f2);
    amdim_augment_destroy(oracle);
    amdim_augment_destroy(fast);
    amdim_augment_destroy(scaled);
}

int main(void)
{
    top_level = amdim_simd_detect();
    if (top_level < AMDIM_SIMD_AVX2) {
        printf("no AVX2 on this CPU (or AMDIM_SIMD=scalar): skipping\n");
        return TEST_SKIP;
    }
    for (size_t k = 0; k < sizeof simd_kernels / sizeof simd_kernels[0]; k++)
        if (simd_kernels[k].level <= top_level) {
            check_colour(&simd_kernels[k]);
            check_hue_cube(&simd_kernels[k]);
        }
    check_weights();
    check_resize();
    check_region_decode();
    check_fast_pair("imagenet");
    check_fast_pair("stl10");
    if (top_level > AMDIM_SIMD_AVX2) { /* the augmenters below stop at AVX2 */
        setenv("AMDIM_SIMD", "avx2", 1);
        CHECK(amdim_simd_detect() == AMDIM_SIMD_AVX2, "AMDIM_SIMD=avx2 does not stop at AVX2");
        check_fast_pair("imagenet");
    }
    setenv("AMDIM_SIMD", "scalar", 1);
    CHECK(amdim_simd_detect() == AMDIM_SIMD_SCALAR, "AMDIM_SIMD=scalar does not force the scalar path");
    amdim_augment_config cfg;
    amdim_augment_preset("cifar", &cfg);
    amdim_augmenter *a;
    REQUIRE(amdim_augment_create(&a, &cfg) == 0, "augmenter");
    CHECK(amdim_augment_simd(a) == AMDIM_SIMD_SCALAR, "augmenter ignores AMDIM_SIMD=scalar");
    amdim_augment_destroy(a);
    unsetenv("AMDIM_SIMD");
    return test_finish("test_augment_simd");
}
