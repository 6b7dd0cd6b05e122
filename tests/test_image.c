/* Image codec: format sniffing, full decodes of RGB/grey/CMYK JPEG and
 * PNG, classification of damaged files, the pixel limit, a decoder reused
 * after a failure, and resampler invariants. (Parity of the resampler with
 * PIL is tested against reference files by the augmentation tests.) */
#include <stdlib.h>
#include <string.h>

#include "amdim_image.h"
#include "testutil.h"

int main(void)
{
    amdim_codec *c;
    REQUIRE(amdim_codec_create(&c) == 0, "create");
    amdim_image img = {0};
    amdim_decode_info info;
    enum { W = 37, H = 23 };
    uint8_t rgb[W * H * 3];
    test_pattern(rgb, W, H, 3, 9);

    /* Sniffing. */
    CHECK(amdim_image_sniff((const uint8_t *)"\xff\xd8\xff\xe0", 4) == AMDIM_FORMAT_JPEG, "jpeg");
    CHECK(amdim_image_sniff((const uint8_t *)"\x89PNG\r\n\x1a\n", 8) == AMDIM_FORMAT_PNG, "png");
    CHECK(amdim_image_sniff((const uint8_t *)"GIF89a", 6) == AMDIM_FORMAT_GIF, "gif");
    CHECK(amdim_image_sniff((const uint8_t *)"RIFF\0\0\0\0WEBP", 12) == AMDIM_FORMAT_WEBP, "webp");
    CHECK(amdim_image_sniff((const uint8_t *)"\xff\xd8", 2) == AMDIM_FORMAT_UNKNOWN, "short");

    /* RGB JPEG round trip. */
    size_t len;
    uint8_t *j = test_encode_jpeg(rgb, W, H, 3, 95, &len);
    REQUIRE(amdim_codec_decode_rgb(c, j, len, 0, &img, &info) == 0, "decode: %s", amdim_codec_error(c));
    CHECK(img.width == W && img.height == H && img.channels == 3 && info.src_channels == 3, "rgb shape");
    double d = 0;
    for (int i = 0; i < W * H * 3; i++)
        d += abs(img.pixels[i] - rgb[i]);
    CHECK(d / (W * H * 3) < 6, "rgb decode differs by %.2f", d / (W * H * 3)); /* noisy pattern, 4:2:0 */

    /* Pixel limit: refused before decoding. */
    CHECK(amdim_codec_decode_rgb(c, j, len, W * H - 1, &img, NULL) == AMDIM_E_TOO_LARGE, "limit");
    CHECK(strstr(amdim_codec_error(c), "exceeds"), "limit message: %s", amdim_codec_error(c));

    /* Truncations: inside the scan (warning "premature end") and inside the header. */
    CHECK(amdim_codec_decode_rgb(c, j, len * 2 / 3, 0, &img, NULL) == AMDIM_E_TRUNCATED, "truncated scan: %s", amdim_codec_error(c));
    int st = amdim_codec_decode_rgb(c, j, 100, 0, &img, NULL);
    CHECK(st == AMDIM_E_TRUNCATED || st == AMDIM_E_CORRUPT, "truncated header: %d", st);
    /* A decoder that failed must report the next image's own size
     * (libjpeg-turbo 2.1 returns the previous one unless reset). */
    uint8_t *big = malloc(64 * 40 * 3);
    test_pattern(big, 64, 40, 3, 2);
    size_t blen;
    uint8_t *bj = test_encode_jpeg(big, 64, 40, 3, 90, &blen);
    amdim_image_format f;
    int w, h, ch;
    CHECK(amdim_codec_probe(c, j, len, &f, &w, &h, &ch) == 0 && w == W && h == H, "probe %dx%d", w, h);
    CHECK(amdim_codec_probe(c, bj, 60, &f, &w, &h, &ch) != 0, "probe of a cut header succeeded");
    CHECK(amdim_codec_probe(c, bj, blen, &f, &w, &h, &ch) == 0 && w == 64 && h == 40,
          "probe after a failure gives %dx%d, want 64x40", w, h);
    free(bj);
    free(big);
    CHECK(amdim_codec_decode_rgb(c, j, 0, 0, &img, NULL) == AMDIM_E_EMPTY, "empty");
    free(j);

    /* Greyscale JPEG -> three equal channels. */
    uint8_t grey[W * H];
    for (int i = 0; i < W * H; i++)
        grey[i] = rgb[3 * i];
    j = test_encode_jpeg(grey, W, H, 1, 95, &len);
    REQUIRE(amdim_codec_decode_rgb(c, j, len, 0, &img, &info) == 0, "grey: %s", amdim_codec_error(c));
    CHECK(info.src_channels == 1, "grey channels %d", info.src_channels);
    int same = 1;
    for (int i = 0; i < W * H; i++)
        same &= img.pixels[3 * i] == img.pixels[3 * i + 1] && img.pixels[3 * i] == img.pixels[3 * i + 2];
    CHECK(same, "grey decode has unequal channels");
    free(j);

    /* CMYK with an Adobe marker is inverted, then R = (255-K)(255-C)/255. */
    uint8_t cmyk[W * H * 4];
    for (int i = 0; i < W * H; i++) {
        cmyk[4 * i + 0] = 255 - 40; /* stored inverted: C = 40 */
        cmyk[4 * i + 1] = 255 - 0;
        cmyk[4 * i + 2] = 255 - 200;
        cmyk[4 * i + 3] = 255 - 51; /* K = 51 */
    }
    j = test_encode_jpeg(cmyk, W, H, 4, 100, &len);
    REQUIRE(amdim_codec_decode_rgb(c, j, len, 0, &img, &info) == 0, "cmyk: %s", amdim_codec_error(c));
    CHECK(info.is_cmyk && info.adobe_inverted, "cmyk info %d %d", info.is_cmyk, info.adobe_inverted);
    /* (255-51) * (255-40)/255 = 172, 204, 44 */
    int px = (H / 2 * W + W / 2) * 3;
    CHECK(abs(img.pixels[px] - 172) <= 2 && abs(img.pixels[px + 1] - 204) <= 2 && abs(img.pixels[px + 2] - 44) <= 2,
          "cmyk pixel %d %d %d", img.pixels[px], img.pixels[px + 1], img.pixels[px + 2]);
    free(j);

    /* PNG. */
    test_write_png(test_path("x.png"), rgb, W, H);
    char *png = test_read_file(test_path("x.png"), &len);
    REQUIRE(amdim_codec_decode_rgb(c, (uint8_t *)png, len, 0, &img, &info) == 0, "png: %s", amdim_codec_error(c));
    CHECK(info.format == AMDIM_FORMAT_PNG && memcmp(img.pixels, rgb, sizeof rgb) == 0, "png pixels differ");
    st = amdim_codec_decode_rgb(c, (uint8_t *)png, len - 20, 0, &img, &info);
    CHECK(st == AMDIM_E_TRUNCATED || st == AMDIM_E_CORRUPT, "truncated png: %d", st);
    free(png);
    CHECK(amdim_codec_decode_rgb(c, (const uint8_t *)"GIF89a....", 10, 0, &img, NULL) == AMDIM_E_UNSUPPORTED &&
              strstr(amdim_codec_error(c), "GIF"),
          "gif: %s", amdim_codec_error(c));

    /* Resampler invariants. */
    amdim_scratch s = {0};
    uint8_t out[64 * 64 * 3];
    CHECK(amdim_resize_bicubic(rgb, W, H, 3, 0, 0, W, H, out, W, H, &s) == 0 && memcmp(out, rgb, sizeof rgb) == 0,
          "same-size resize is not a copy");
    CHECK(amdim_resize_bicubic(rgb, W, H, 3, 5, 3, 10, 8, out, 10, 8, &s) == 0, "crop");
    int crop_ok = 1;
    for (int y = 0; y < 8; y++)
        crop_ok &= memcmp(out + y * 30, rgb + ((3 + y) * W + 5) * 3, 30) == 0;
    CHECK(crop_ok, "same-size crop is not a copy");
    uint8_t flat[W * H * 3];
    memset(flat, 77, sizeof flat);
    int sizes[][2] = {{64, 64}, {5, 3}, {1, 1}, {37, 11}, {12, 23}};
    for (int k = 0; k < 5; k++) {
        CHECK(amdim_resize_bicubic(flat, W, H, 3, 0, 0, W, H, out, sizes[k][0], sizes[k][1], &s) == 0, "resize");
        int ok = 1;
        for (int i = 0; i < sizes[k][0] * sizes[k][1] * 3; i++)
            ok &= out[i] == 77;
        CHECK(ok, "a flat image is not flat after resizing to %dx%d", sizes[k][0], sizes[k][1]);
    }
    CHECK(amdim_resize_bicubic(rgb, W, H, 3, 30, 0, 10, 5, out, 4, 4, &s) == AMDIM_E_INVALID, "crop outside");
    amdim_scratch_free(&s);
    amdim_image_free(&img);
    amdim_codec_destroy(c);
    return test_finish("test_image");
}
