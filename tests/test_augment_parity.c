/* Parity of every augmentation step with torchvision 0.14 + Pillow 9.4:
 * outputs for fixed parameters are compared with tests/ref/augment_ref.bin.gz
 * (written by tests/ref/make_augment_ref.py). Per step: mean absolute
 * difference <= 0.5 and max <= 2 levels; the achieved figures are printed.
 * Argument: path of the reference file. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_augment.h"
#include "reffile.h"
#include "testutil.h"

typedef struct {
    const char *name;
    int count;
    double worst_mean;
    int worst_max;
} step_stats;

static step_stats steps[16];
static int nsteps;

static void compare(const char *step, const char *what, const uint8_t *got, const ref_tensor *want, size_t n)
{
    CHECK(want->count == n, "%s: size %zu vs reference %zu", what, n, want->count);
    if (want->count != n)
        return;
    const uint8_t *w = want->data;
    double sum = 0;
    int mx = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)got[i] - (int)w[i]);
        sum += d;
        mx = d > mx ? d : mx;
    }
    double mean = sum / (double)n;
    CHECK(mean <= 0.5 && mx <= 2, "%s: mean abs diff %.4f, max %d (tolerance 0.5 / 2)", what, mean, mx);
    step_stats *s = NULL;
    for (int i = 0; i < nsteps; i++)
        if (strcmp(steps[i].name, step) == 0)
            s = &steps[i];
    if (!s) {
        s = &steps[nsteps++];
        s->name = step;
    }
    s->count++;
    s->worst_mean = mean > s->worst_mean ? mean : s->worst_mean;
    s->worst_max = mx > s->worst_max ? mx : s->worst_max;
}

static amdim_record raw_record(const ref_tensor *t)
{
    amdim_record r = {.label = -1, .aux_label = -1, .height = t->dims[0], .width = t->dims[1], .channels = 3,
                      .encoding = AMDIM_ENCODING_RAW, .payload = t->data,
                      .payload_size = (uint32_t)t->count};
    return r;
}

static amdim_augmenter *make(const char *preset, int size)
{
    amdim_augment_config cfg;
    REQUIRE(amdim_augment_preset(preset, &cfg) == 0, "preset %s", preset);
    cfg.size = size;
    if (cfg.test_resize && cfg.test_resize < size)
        cfg.test_resize = size;
    amdim_augmenter *a;
    REQUIRE(amdim_augment_create(&a, &cfg) == 0, "augmenter");
    return a;
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: test_augment_parity REFERENCE.bin.gz");
    ref_file rf;
    ref_load(&rf, argv[1]);
    const int32_t *ver = ref_get(&rf, "versions", REF_I32)->data;
    printf("reference: torchvision %d.%d.%d, Pillow %d.%d.%d\n", ver[0], ver[1], ver[2], ver[3], ver[4], ver[5]);
    int nsrc = ((const int32_t *)ref_get(&rf, "count", REF_I32)->data)[0];
    uint8_t *buf = malloc(128 * 128 * 3);
    char name[128], what[160];
    amdim_augmenter *by_size[129] = {0};
    by_size[32] = make("stl10", 32); /* resized crops at 32 px */
    amdim_augmenter *cifar = make("cifar", 32);
    by_size[64] = make("stl10", 64);
    by_size[128] = make("imagenet", 128);

    for (int k = 0; k < nsrc; k++) {
        /* Decode: our libjpeg-turbo path against PIL's open().convert("RGB"). */
        snprintf(name, sizeof name, "src%d/jpeg", k);
        const ref_tensor *jpeg = ref_get(&rf, name, REF_U8);
        snprintf(name, sizeof name, "src%d/decoded", k);
        const ref_tensor *dec = ref_get(&rf, name, REF_U8);
        amdim_codec *codec;
        amdim_codec_create(&codec);
        amdim_image_format f;
        int w, h, c;
        REQUIRE(amdim_codec_probe(codec, jpeg->data, jpeg->count, &f, &w, &h, &c) == 0, "probe src%d", k);
        amdim_codec_destroy(codec);
        amdim_record jr = {.label = -1, .aux_label = -1, .width = (uint32_t)w, .height = (uint32_t)h,
                           .channels = 3, .encoding = AMDIM_ENCODING_JPEG, .payload = jpeg->data,
                           .payload_size = (uint32_t)jpeg->count};
        const amdim_image *img;
        REQUIRE(amdim_augment_decode(by_size[64], &jr, &img) == 0, "decode src%d: %s", k, amdim_augment_error(by_size[64]));
        snprintf(what, sizeof what, "src%d decode (%d channels in the file)", k, c);
        compare("decode", what, img->pixels, dec, (size_t)img->width * img->height * 3);

        /* Everything else starts from the reference decode. */
        amdim_record rr = raw_record(dec);
        REQUIRE(amdim_augment_decode(by_size[64], &rr, &img) == 0, "raw");
        amdim_image src = {0};
        amdim_image_reserve(&src, img->width, img->height, 3);
        memcpy(src.pixels, img->pixels, (size_t)img->width * img->height * 3);

        for (int ci = 0;; ci++) {
            snprintf(name, sizeof name, "src%d/crop%d/params", k, ci);
            const ref_tensor *pt = ref_find(&rf, name);
            if (!pt)
                break;
            const int32_t *p = pt->data;
            amdim_view_params vp = {.x = p[1], .y = p[2], .w = p[3], .h = p[4]};
            for (int i = 0; i < 4; i++)
                vp.order[i] = (uint8_t)i;
            int size = p[5];
            REQUIRE(amdim_augment_view(by_size[size], &src, p[0], &vp, buf) == 0, "view: %s", amdim_augment_error(by_size[size]));
            snprintf(name, sizeof name, "src%d/crop%d/out", k, ci);
            snprintf(what, sizeof what, "src%d crop %d (flip %d, %d,%d %dx%d -> %d)", k, ci, p[0], p[1], p[2], p[3], p[4], size);
            compare("flip+crop+resize", what, buf, ref_get(&rf, name, REF_U8), (size_t)size * size * 3);
        }
        for (int size = 64; size <= 128; size *= 2) {
            REQUIRE(amdim_augment_test_view(by_size[size], &rr, buf) == 0, "test view: %s", amdim_augment_error(by_size[size]));
            snprintf(name, sizeof name, "src%d/test%d", k, size);
            snprintf(what, sizeof what, "src%d test transform %d", k, size);
            compare("test transform", what, buf, ref_get(&rf, name, REF_U8), (size_t)size * size * 3);
        }

        snprintf(name, sizeof name, "src%d/base", k);
        const ref_tensor *base = ref_get(&rf, name, REF_U8);
        const size_t npix = 64 * 64;
        static const char *ops[] = {"brightness", "contrast", "saturation", "hue"};
        for (int op = 0; op < 4; op++) {
            for (int i = 0;; i++) {
                snprintf(name, sizeof name, "src%d/%s%d/factor", k, ops[op], i);
                const ref_tensor *ft = ref_find(&rf, name);
                if (!ft)
                    break;
                float fac = ((const float *)ft->data)[0];
                memcpy(buf, base->data, npix * 3);
                switch (op) {
                case 0: amdim_adjust_brightness(buf, npix, fac); break;
                case 1: amdim_adjust_contrast(buf, npix, fac); break;
                case 2: amdim_adjust_saturation(buf, npix, fac); break;
                default: amdim_adjust_hue(buf, npix, fac); break;
                }
                snprintf(name, sizeof name, "src%d/%s%d/out", k, ops[op], i);
                snprintf(what, sizeof what, "src%d %s %.4f", k, ops[op], fac);
                compare(ops[op], what, buf, ref_get(&rf, name, REF_U8), npix * 3);
            }
        }
        memcpy(buf, base->data, npix * 3);
        amdim_to_grey(buf, npix);
        snprintf(name, sizeof name, "src%d/grey", k);
        snprintf(what, sizeof what, "src%d grey", k);
        compare("grey", what, buf, ref_get(&rf, name, REF_U8), npix * 3);

        for (int v = 0;; v++) {
            snprintf(name, sizeof name, "src%d/view%d/params", k, v);
            const ref_tensor *pt = ref_find(&rf, name);
            if (!pt)
                break;
            const float *p = pt->data;
            amdim_view_params vp = {.x = (int)p[1], .y = (int)p[2], .w = (int)p[3], .h = (int)p[4],
                                    .jitter = (int)p[5], .brightness = p[10], .contrast = p[11],
                                    .saturation = p[12], .hue = p[13], .grey = (int)p[14]};
            for (int i = 0; i < 4; i++)
                vp.order[i] = (uint8_t)p[6 + i];
            REQUIRE(amdim_augment_view(by_size[64], &src, (int)p[0], &vp, buf) == 0, "view");
            snprintf(name, sizeof name, "src%d/view%d/out", k, v);
            snprintf(what, sizeof what, "src%d composed view %d", k, v);
            compare("composed view", what, buf, ref_get(&rf, name, REF_U8), npix * 3);
        }
        amdim_image_free(&src);
    }

    /* 32 px: translation with reflect fill, then composed views. */
    const ref_tensor *cif = ref_get(&rf, "cifar/src", REF_U8);
    amdim_image csrc = {0};
    amdim_image_reserve(&csrc, 32, 32, 3);
    memcpy(csrc.pixels, cif->data, 32 * 32 * 3);
    for (int i = 0;; i++) {
        snprintf(name, sizeof name, "cifar/shift%d/params", i);
        const ref_tensor *pt = ref_find(&rf, name);
        if (!pt)
            break;
        const int32_t *p = pt->data;
        amdim_translate_reflect(csrc.pixels, 32, 32, p[0], p[1], buf);
        snprintf(name, sizeof name, "cifar/shift%d/out", i);
        snprintf(what, sizeof what, "translate (%d, %d)", p[0], p[1]);
        compare("translate+reflect", what, buf, ref_get(&rf, name, REF_U8), 32 * 32 * 3);
    }
    for (int v = 0;; v++) {
        snprintf(name, sizeof name, "cifar/view%d/params", v);
        const ref_tensor *pt = ref_find(&rf, name);
        if (!pt)
            break;
        const float *p = pt->data;
        amdim_view_params vp = {.w = 32, .h = 32, .dx = (int)p[1], .dy = (int)p[2], .jitter = 1,
                                .brightness = p[7], .contrast = p[8], .saturation = p[9], .hue = p[10],
                                .grey = (int)p[11]};
        for (int i = 0; i < 4; i++)
            vp.order[i] = (uint8_t)p[3 + i];
        REQUIRE(amdim_augment_view(cifar, &csrc, (int)p[0], &vp, buf) == 0, "cifar view");
        snprintf(name, sizeof name, "cifar/view%d/out", v);
        snprintf(what, sizeof what, "32 px composed view %d", v);
        compare("composed view 32px", what, buf, ref_get(&rf, name, REF_U8), 32 * 32 * 3);
    }
    amdim_image_free(&csrc);

    printf("%-22s %6s %16s %12s\n", "step", "cases", "worst mean diff", "worst max");
    for (int i = 0; i < nsteps; i++)
        printf("%-22s %6d %16.4f %12d\n", steps[i].name, steps[i].count, steps[i].worst_mean, steps[i].worst_max);
    amdim_augment_destroy(by_size[32]);
    amdim_augment_destroy(cifar);
    amdim_augment_destroy(by_size[64]);
    amdim_augment_destroy(by_size[128]);
    free(buf);
    ref_free(&rf);
    return test_finish("test_augment_parity");
}
