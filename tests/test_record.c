/* Record format: round trip and rejection of damaged headers. */
#include <stdlib.h>
#include <string.h>

#include "amdim_dataset.h"
#include "testutil.h"

int main(void)
{
    uint8_t px[4 * 3 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 7);
    amdim_record r = {.label = 7, .aux_label = 2, .source_index = 0x0123456789ull, .width = 4,
                      .height = 3, .channels = 3, .encoding = AMDIM_ENCODING_RAW,
                      .payload_size = sizeof px, .payload = px};
    uint8_t buf[256];
    size_t n;
    CHECK(amdim_record_encode(&r, buf, sizeof buf, &n) == 0, "encode");
    CHECK(n == AMDIM_RECORD_HEADER_SIZE + sizeof px, "size %zu", n);
    CHECK(amdim_record_encode(&r, buf, 10, &n) == AMDIM_E_TOO_LARGE, "small buffer");

    amdim_record d;
    char err[256];
    CHECK(amdim_record_decode(buf, n, &d, err, sizeof err) == 0, "decode: %s", err);
    CHECK(d.label == 7 && d.aux_label == 2 && d.source_index == 0x0123456789ull && d.width == 4 &&
              d.height == 3 && d.channels == 3 && d.encoding == AMDIM_ENCODING_RAW &&
              d.payload_size == sizeof px && memcmp(d.payload, px, sizeof px) == 0,
          "fields differ after round trip");

    /* Unlabelled JPEG-encoded record. */
    amdim_record j = {.label = -1, .aux_label = -1, .width = 640, .height = 480, .channels = 3,
                      .encoding = AMDIM_ENCODING_JPEG, .payload_size = 5, .payload = (const uint8_t *)"\xff\xd8\xff\xe0\x00"};
    CHECK(amdim_record_encode(&j, buf, sizeof buf, &n) == 0, "encode jpeg");
    CHECK(amdim_record_decode(buf, n, &d, err, sizeof err) == 0 && d.label == -1 && d.width == 640,
          "decode jpeg: %s", err);

    /* Invalid records are refused at encode time. */
    amdim_record bad = r;
    bad.payload_size = 5;
    CHECK(amdim_record_encode(&bad, buf, sizeof buf, &n) == AMDIM_E_INVALID, "raw size mismatch");
    bad = r;
    bad.channels = 2;
    CHECK(amdim_record_encode(&bad, buf, sizeof buf, &n) == AMDIM_E_INVALID, "channels 2");
    bad = r;
    bad.label = -5;
    CHECK(amdim_record_encode(&bad, buf, sizeof buf, &n) == AMDIM_E_INVALID, "label -5");

    /* Damage: each must be rejected with a reason. */
    amdim_record_encode(&r, buf, sizeof buf, &n);
    uint8_t tmp[256];
    struct {
        const char *what;
        size_t off;
        uint8_t val;
        size_t len;
        int want;
    } cases[] = {
        {"magic", 0, 'X', n, AMDIM_E_CORRUPT},
        {"version", 4, 9, n, AMDIM_E_VERSION},
        {"header size", 6, 12, n, AMDIM_E_CORRUPT},
        {"channels", 32, 5, n, AMDIM_E_CORRUPT},
        {"encoding", 33, 9, n, AMDIM_E_CORRUPT},
        {"payload size", 36, 99, n, AMDIM_E_TRUNCATED},
        {"truncated payload", 0, 'A', n - 1, AMDIM_E_TRUNCATED},
        {"truncated header", 0, 'A', 20, AMDIM_E_TRUNCATED},
        {"trailing bytes", 0, 'A', n + 1, AMDIM_E_CORRUPT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        memcpy(tmp, buf, n);
        tmp[n] = 0;
        tmp[cases[i].off] = cases[i].val;
        err[0] = 0;
        int st = amdim_record_decode(tmp, cases[i].len, &d, err, sizeof err);
        CHECK(st == cases[i].want, "%s: got %d (%s), want %d", cases[i].what, st, err, cases[i].want);
        CHECK(err[0] != 0, "%s: no message", cases[i].what);
    }

    CHECK(amdim_split_name_valid("train") && amdim_split_name_valid("val-2012_a"), "valid names");
    CHECK(!amdim_split_name_valid("") && !amdim_split_name_valid("meta") &&
              !amdim_split_name_valid("a/b") && !amdim_split_name_valid("a b") &&
              !amdim_split_name_valid("0123456789012345678901234567890123"),
          "invalid names");
    return test_finish("test_record");
}
