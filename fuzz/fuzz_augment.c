/* libFuzzer harness: a record's decode, two-view pair (full, region and
 * scaled JPEG decodes) and test view, as a loader worker and the evaluator
 * make them. Input: a flags byte, width and height (2 bytes each, little
 * endian; 0 = the payload's own size), then the payload.
 *   flags bits 0-1: decode 0 full, 1 region, 2+ region with scaled IDCT
 *   bit 2: raw payload (else JPEG); bit 3: grey (raw); bit 4: cifar preset
 *   (else imagenet). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_augment.h"
#include "amdim_image.h"

static amdim_augmenter *aug[2];
static amdim_codec *codec;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5)
        return 0;
    if (!codec) {
        const char *names[2] = {"imagenet", "cifar"};
        for (int i = 0; i < 2; i++) {
            amdim_augment_config cfg;
            amdim_augment_preset(names[i], &cfg);
            if (amdim_augment_create(&aug[i], &cfg))
                abort();
            /* A smaller limit than the default keeps each run fast. */
            amdim_augment_set_max_pixels(aug[i], 1u << 22);
        }
        if (amdim_codec_create(&codec))
            abort();
    }
    const uint8_t flags = data[0];
    uint32_t w = (uint32_t)data[1] | (uint32_t)data[2] << 8, h = (uint32_t)data[3] | (uint32_t)data[4] << 8;
    const uint8_t *payload = data + 5;
    size_t n = size - 5;
    amdim_record rec = {.label = 0, .aux_label = -1, .channels = (flags & 8) ? 1 : 3,
                        .encoding = (flags & 4) ? AMDIM_ENCODING_RAW : AMDIM_ENCODING_JPEG,
                        .payload = payload, .payload_size = (uint32_t)n};
    if (rec.encoding == AMDIM_ENCODING_JPEG && (w == 0 || h == 0)) {
        amdim_image_format f;
        int pw, ph, pc;
        if (amdim_codec_probe(codec, payload, n, &f, &pw, &ph, &pc) == 0 && pw > 0 && ph > 0) {
            w = (uint32_t)pw;
            h = (uint32_t)ph;
        }
    }
    if (rec.encoding == AMDIM_ENCODING_RAW && (w == 0 || h == 0)) {
        /* a square-ish image of what the payload holds */
        w = 1;
        while ((uint64_t)(w + 1) * (w + 1) * rec.channels <= n)
            w++;
        h = (uint32_t)(n / ((uint64_t)w * rec.channels));
        rec.payload_size = (uint32_t)((uint64_t)w * h * rec.channels);
    }
    if (w == 0 || h == 0)
        return 0;
    rec.width = w;
    rec.height = h;
    amdim_augmenter *a = aug[(flags >> 4) & 1];
    const int mode = flags & 3;
    amdim_decode_options d = {.region = mode != 0, .scales = mode >= 2 ? AMDIM_DECODE_SCALES_DEFAULT : 0};
    amdim_augment_set_decode(a, &d);
    const int s = amdim_augment_get_config(a)->size;
    uint8_t *v1 = malloc((size_t)s * s * 3), *v2 = malloc((size_t)s * s * 3);
    amdim_augment_pair(a, &rec, 1, 0, flags, v1, v2, NULL);
    amdim_augment_test_view(a, &rec, v1);
    free(v1);
    free(v2);
    return 0;
}
