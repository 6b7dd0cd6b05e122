/* Pillow's BILINEAR resize (torchvision's Resize default; Deep InfoMax's
 * STL-10 transform) reproduced byte for byte: every case of
 * tests/ref/resize_bilinear_ref.bin.gz (tests/ref/make_resize_ref.py:
 * down, up, mixed, a fractional box, the equal-size copy, one and three
 * channels) at every SIMD level this CPU has, and mirrored reads equal to
 * resizing a flipped copy. */
#include <stdlib.h>
#include <string.h>

#include "amdim_image.h"
#include "reffile.h"
#include "testutil.h"

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: test_resize_bilinear REF.bin.gz");
    ref_file f;
    ref_load(&f, argv[1]);
    int cases = *(const int32_t *)ref_get(&f, "cases", REF_I32)->data;
    amdim_scratch s = {0};
    amdim_simd top = amdim_simd_detect();
    for (int k = 0; k < cases; k++) {
        char name[64];
        snprintf(name, sizeof name, "case%d.src", k);
        const ref_tensor *src = ref_get(&f, name, REF_U8);
        snprintf(name, sizeof name, "case%d.box", k);
        const double *box = ref_get(&f, name, REF_F64)->data;
        snprintf(name, sizeof name, "case%d.dst", k);
        const ref_tensor *want = ref_get(&f, name, REF_U8);
        int sh = (int)src->dims[0], sw = (int)src->dims[1], C = (int)src->dims[2];
        int dh = (int)want->dims[0], dw = (int)want->dims[1];
        const int clip[4] = {0, 0, sw, sh};
        uint8_t *got = malloc(want->count), *flipped = malloc(src->count), *ref_m = malloc(want->count);
        for (int lv = AMDIM_SIMD_SCALAR; lv <= (int)top; lv++) {
            memset(got, 0xa5, want->count);
            int st = amdim_resize_box(src->data, sw, sh, C, box, clip, 0, AMDIM_FILTER_BILINEAR, got, dw, dh,
                                      (amdim_simd)lv, &s);
            size_t differ = 0;
            for (size_t i = 0; i < want->count; i++)
                differ += got[i] != ((const uint8_t *)want->data)[i];
            CHECK(st == 0 && differ == 0,
                  "case %d (%dx%dx%d -> %dx%d), %s: status %d, %zu of %zu bytes differ from Pillow", k, sw, sh, C, dw,
                  dh, amdim_simd_name((amdim_simd)lv), st, differ, want->count);
        }
        /* mirrored: the same as resizing the flipped image (box in the flipped image's coordinates) */
        for (int y = 0; y < sh; y++)
            for (int x = 0; x < sw; x++)
                memcpy(flipped + ((size_t)y * sw + x) * C,
                       (const uint8_t *)src->data + ((size_t)y * sw + (sw - 1 - x)) * C, (size_t)C);
        REQUIRE(amdim_resize_box(flipped, sw, sh, C, box, clip, 0, AMDIM_FILTER_BILINEAR, ref_m, dw, dh,
                                 AMDIM_SIMD_SCALAR, &s) == 0,
                "flipped copy");
        for (int lv = AMDIM_SIMD_SCALAR; lv <= (int)top; lv++) {
            int st = amdim_resize_box(src->data, sw, sh, C, box, clip, 1, AMDIM_FILTER_BILINEAR, got, dw, dh,
                                      (amdim_simd)lv, &s);
            CHECK(st == 0 && memcmp(got, ref_m, want->count) == 0, "case %d mirrored, %s", k,
                  amdim_simd_name((amdim_simd)lv));
        }
        free(got), free(flipped), free(ref_m);
    }
    /* an unknown filter is refused */
    uint8_t px[12] = {0}, o[12];
    const double b[4] = {0, 0, 2, 2};
    const int c[4] = {0, 0, 2, 2};
    CHECK(amdim_resize_box(px, 2, 2, 3, b, c, 0, (amdim_filter)7, o, 2, 2, AMDIM_SIMD_SCALAR, &s) == AMDIM_E_INVALID,
          "filter 7 is refused");
    printf("test_resize_bilinear: %d cases equal Pillow at every level up to %s\n", cases, amdim_simd_name(top));
    amdim_scratch_free(&s);
    ref_free(&f);
    return test_finish("test_resize_bilinear");
}
