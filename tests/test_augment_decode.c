/* What the augmenter makes of records users have: raw grey replicated to
 * RGB, MNIST-size images padded to the 32 px preset, EXIF orientation left
 * alone (as torchvision does), images smaller than the crop, and clear
 * errors for records that cannot be used. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_augment.h"
#include "testutil.h"

static amdim_augmenter *make(const char *preset)
{
    amdim_augment_config cfg;
    amdim_augment_preset(preset, &cfg);
    amdim_augmenter *a;
    REQUIRE(amdim_augment_create(&a, &cfg) == 0, "create %s", preset);
    return a;
}

/* The dim presets (Deep InfoMax's data): both views are the image itself
 * (grey replicated; smaller images zero-padded, centred) for every seed,
 * epoch and record, and so is the test view; mean and std 0.5. */
static void test_dim_presets(void)
{
    const int sizes[3] = {28, 32, 64};
    for (int k = 0; k < 3; k++) {
        char name[16];
        snprintf(name, sizeof name, "dim%d", sizes[k]);
        amdim_augment_config cfg;
        REQUIRE(amdim_augment_preset(name, &cfg) == 0 && cfg.size == sizes[k], "preset %s", name);
        CHECK(cfg.mean[0] == 0.5f && cfg.std[2] == 0.5f && cfg.p_flip == 0 && cfg.p_jitter == 0 && cfg.p_grey == 0,
              "%s: no augmentation, normalised to [-1, 1]", name);
        amdim_augmenter *a = make(name);
        int S = sizes[k];
        size_t n = (size_t)S * S * 3;
        uint8_t *v1 = malloc(n), *v2 = malloc(n), *t = malloc(n), *want = malloc(n);
        /* an RGB image of the preset's size, and a grey one 4 px smaller on each side pair */
        for (int grey = 0; grey < 2; grey++) {
            int w = grey ? S - 4 : S, ch = grey ? 1 : 3, off = grey ? 2 : 0;
            uint8_t *px = malloc((size_t)w * w * ch);
            for (int i = 0; i < w * w * ch; i++)
                px[i] = (uint8_t)(7 + (i * 37) % 241);
            memset(want, 0, n);
            for (int y = 0; y < w; y++)
                for (int x = 0; x < w; x++)
                    for (int c = 0; c < 3; c++)
                        want[((size_t)(y + off) * S + x + off) * 3 + c] = px[((size_t)y * w + x) * ch + (grey ? 0 : c)];
            amdim_record r = {.label = 1, .aux_label = -1, .width = (uint32_t)w, .height = (uint32_t)w,
                              .channels = (uint32_t)ch, .encoding = AMDIM_ENCODING_RAW, .payload = px,
                              .payload_size = (size_t)w * w * ch};
            int same = 1;
            for (uint64_t e = 0; e < 3; e++)
                for (uint64_t i = 0; i < 20; i++) {
                    REQUIRE(amdim_augment_pair(a, &r, 11 + e, e, i, v1, v2, NULL) == 0, "%s pair: %s", name,
                            amdim_augment_error(a));
                    same &= memcmp(v1, want, n) == 0 && memcmp(v2, want, n) == 0;
                }
            CHECK(same, "%s, %s %dx%d: the views are not the image itself", name, grey ? "grey" : "RGB", w, w);
            CHECK(amdim_augment_test_view(a, &r, t) == 0 && memcmp(t, want, n) == 0, "%s: the test view", name);
            free(px);
        }
        free(v1), free(v2), free(t), free(want);
        amdim_augment_destroy(a);
    }
    amdim_augment_config cfg;
    CHECK(amdim_augment_preset("dim30", &cfg) == AMDIM_E_INVALID, "dim30 is not a preset");

    /* dim-stl10: the whole 96 px image resized to 64 with Pillow's bilinear filter (byte-exact:
     * test_resize_bilinear), mirrored when the pair's flip says so, the same for both views; the
     * test view is the unflipped resize */
    amdim_augmenter *a = make("dim-stl10");
    uint8_t *px = malloc(96 * 96 * 3), *plain = malloc(64 * 64 * 3), *mirrored = malloc(64 * 64 * 3);
    uint8_t *v1 = malloc(64 * 64 * 3), *v2 = malloc(64 * 64 * 3);
    test_pattern(px, 96, 96, 3, 9);
    const double box[4] = {0, 0, 96, 96};
    const int clip[4] = {0, 0, 96, 96};
    amdim_scratch s = {0};
    REQUIRE(amdim_resize_box(px, 96, 96, 3, box, clip, 0, AMDIM_FILTER_BILINEAR, plain, 64, 64, AMDIM_SIMD_SCALAR, &s) ==
                    0 &&
                amdim_resize_box(px, 96, 96, 3, box, clip, 1, AMDIM_FILTER_BILINEAR, mirrored, 64, 64,
                                 AMDIM_SIMD_SCALAR, &s) == 0,
            "bilinear resizes");
    amdim_record r = {.label = 2, .aux_label = -1, .width = 96, .height = 96, .channels = 3,
                      .encoding = AMDIM_ENCODING_RAW, .payload = px, .payload_size = 96 * 96 * 3};
    int flips = 0, right = 1, n = 200;
    for (int i = 0; i < n; i++) {
        amdim_pair_params pp;
        REQUIRE(amdim_augment_pair(a, &r, 5, (uint64_t)i / 50, (uint64_t)i, v1, v2, &pp) == 0, "dim-stl10 pair: %s",
                amdim_augment_error(a));
        const uint8_t *want = pp.flip ? mirrored : plain;
        right &= memcmp(v1, want, 64 * 64 * 3) == 0 && memcmp(v2, want, 64 * 64 * 3) == 0;
        flips += pp.flip;
    }
    CHECK(right, "dim-stl10: a view is not the bilinear resize of the whole image (flipped as drawn)");
    CHECK(flips > n / 2 - 30 && flips < n / 2 + 30, "dim-stl10: %d flips in %d pairs", flips, n);
    CHECK(amdim_augment_test_view(a, &r, v1) == 0 && memcmp(v1, plain, 64 * 64 * 3) == 0, "dim-stl10: the test view");
    amdim_scratch_free(&s);
    free(px), free(plain), free(mirrored), free(v1), free(v2);
    amdim_augment_destroy(a);
}

int main(void)
{
    amdim_augmenter *cifar = make("cifar"), *stl = make("stl10");
    const amdim_image *img;

    /* 28x28 grey -> 32x32 RGB, centred, zero border. */
    uint8_t grey[28 * 28];
    for (int i = 0; i < 28 * 28; i++)
        grey[i] = (uint8_t)(1 + i % 250);
    amdim_record g = {.label = 3, .aux_label = -1, .width = 28, .height = 28, .channels = 1,
                      .encoding = AMDIM_ENCODING_RAW, .payload = grey, .payload_size = sizeof grey};
    REQUIRE(amdim_augment_decode(cifar, &g, &img) == 0, "decode grey: %s", amdim_augment_error(cifar));
    CHECK(img->width == 32 && img->height == 32, "padded size %dx%d", img->width, img->height);
    int ok = 1;
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++) {
            const uint8_t *p = img->pixels + (y * 32 + x) * 3;
            int inside = x >= 2 && x < 30 && y >= 2 && y < 30;
            uint8_t want = inside ? grey[(y - 2) * 28 + (x - 2)] : 0;
            ok &= p[0] == want && p[1] == want && p[2] == want;
        }
    CHECK(ok, "grey record is not replicated and centred with a zero border");
    uint8_t v1[32 * 32 * 3], v2[32 * 32 * 3], t[32 * 32 * 3];
    CHECK(amdim_augment_pair(cifar, &g, 1, 0, 0, v1, v2, NULL) == 0, "pair of a grey record");
    CHECK(amdim_augment_test_view(cifar, &g, t) == 0 && memcmp(t, img->pixels, sizeof t) == 0,
          "the 32 px test view is the padded image");

    /* Too big for the translate preset: an error, not a silent resize. */
    uint8_t *big = calloc(40 * 40 * 3, 1);
    amdim_record b = {.label = 0, .aux_label = -1, .width = 40, .height = 40, .channels = 3,
                      .encoding = AMDIM_ENCODING_RAW, .payload = big, .payload_size = 40 * 40 * 3};
    CHECK(amdim_augment_pair(cifar, &b, 1, 0, 0, v1, v2, NULL) == AMDIM_E_INVALID &&
              strstr(amdim_augment_error(cifar), "40x40"),
          "oversized cifar record: %s", amdim_augment_error(cifar));
    free(big);

    /* An image smaller than the 64 px crop is upsampled. */
    uint8_t small[20 * 12 * 3];
    test_pattern(small, 20, 12, 3, 4);
    size_t len;
    uint8_t *j = test_encode_jpeg(small, 20, 12, 3, 90, &len);
    amdim_record s = {.label = 0, .aux_label = -1, .width = 20, .height = 12, .channels = 3,
                      .encoding = AMDIM_ENCODING_JPEG, .payload = j, .payload_size = (uint32_t)len};
    uint8_t *w1 = malloc(64 * 64 * 3), *w2 = malloc(64 * 64 * 3);
    amdim_pair_params pp;
    CHECK(amdim_augment_pair(stl, &s, 3, 0, 5, w1, w2, &pp) == 0, "small image: %s", amdim_augment_error(stl));
    CHECK(pp.view[0].w <= 20 && pp.view[0].h <= 12, "crop larger than the image");
    CHECK(amdim_augment_test_view(stl, &s, w1) == 0, "small image test view");
    /* Record size disagreeing with the JPEG. */
    s.width = 21;
    CHECK(amdim_augment_pair(stl, &s, 3, 0, 5, w1, w2, NULL) == AMDIM_E_CORRUPT &&
              strstr(amdim_augment_error(stl), "20x12"),
          "size mismatch: %s", amdim_augment_error(stl));
    s.width = 20;
    /* Corrupt JPEG payload. */
    s.payload_size = (uint32_t)len / 2;
    int st = amdim_augment_pair(stl, &s, 3, 0, 5, w1, w2, NULL);
    CHECK(st == AMDIM_E_TRUNCATED || st == AMDIM_E_CORRUPT, "truncated JPEG record: %d %s", st, amdim_augment_error(stl));

    /* EXIF orientation 6 ("rotate 90") is not applied: the decode keeps
     * the stored 20x12 geometry and pixels. */
    static const uint8_t exif[] = {
        0xFF, 0xE1, 0x00, 0x22, 'E', 'x', 'i', 'f', 0, 0,            /* APP1, length 34 */
        'I', 'I', 0x2A, 0x00, 0x08, 0x00, 0x00, 0x00,                /* TIFF header */
        0x01, 0x00,                                                  /* one IFD entry */
        0x12, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, /* Orientation = 6 */
        0x00, 0x00, 0x00, 0x00};                                     /* next IFD */
    uint8_t *je = malloc(len + sizeof exif);
    memcpy(je, j, 2);
    memcpy(je + 2, exif, sizeof exif);
    memcpy(je + 2 + sizeof exif, j + 2, len - 2);
    amdim_record e = s;
    e.payload = je;
    e.payload_size = (uint32_t)(len + sizeof exif);
    const amdim_image *a1, *a2;
    REQUIRE(amdim_augment_decode(stl, &e, &a1) == 0, "EXIF decode: %s", amdim_augment_error(stl));
    CHECK(a1->width == 20 && a1->height == 12, "EXIF rotation applied: %dx%d", a1->width, a1->height);
    uint8_t *copy = malloc(20 * 12 * 3);
    memcpy(copy, a1->pixels, 20 * 12 * 3);
    e.payload = j;
    e.payload_size = (uint32_t)len;
    REQUIRE(amdim_augment_decode(stl, &e, &a2) == 0, "decode");
    CHECK(memcmp(copy, a2->pixels, 20 * 12 * 3) == 0, "EXIF segment changed the pixels");
    free(copy);
    free(je);
    free(j);
    free(w1);
    free(w2);

    /* Bad configurations are refused with a reason. */
    amdim_augment_config cfg;
    amdim_augment_preset("imagenet", &cfg);
    char err[256];
    cfg.scale[0] = 0;
    CHECK(amdim_augment_config_check(&cfg, err, sizeof err) == AMDIM_E_INVALID && strstr(err, "scale"), "scale 0: %s", err);
    amdim_augment_preset("imagenet", &cfg);
    cfg.p_grey = 1.5f;
    CHECK(amdim_augment_config_check(&cfg, err, sizeof err) == AMDIM_E_INVALID, "p_grey 1.5");
    amdim_augment_preset("imagenet", &cfg);
    cfg.hue = 0.7f;
    CHECK(amdim_augment_config_check(&cfg, err, sizeof err) == AMDIM_E_INVALID && strstr(err, "hue"), "hue 0.7");
    CHECK(amdim_augment_preset("mnist", &cfg) == AMDIM_E_INVALID, "unknown preset");
    amdim_augment_destroy(cifar);
    amdim_augment_destroy(stl);
    test_dim_presets();
    return test_finish("test_augment_decode");
}
