/* imagefolder packing: torchvision's sample order, class labels, bad files
 * skipped and named by reason, CMYK/grey/PNG converted to RGB JPEG,
 * --max-side shrinking, statistics and the report. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "amdim_dataset.h"
#include "amdim_image.h"
#include "amdim_pack.h"
#include "testutil.h"

#define W 64
#define H 48

typedef struct {
    int skips[AMDIM_SKIP_REASONS];
    char skipped_paths[16][512];
    int nskipped;
    int converts, notes;
} events;

static void on_event(const amdim_pack_event *ev, void *p)
{
    events *e = p;
    if (ev->kind == AMDIM_PACK_EVENT_SKIP) {
        e->skips[ev->reason]++;
        if (e->nskipped < 16)
            snprintf(e->skipped_paths[e->nskipped++], 512, "%s", ev->path);
        CHECK(ev->detail && ev->detail[0], "skip of %s has no detail", ev->path);
    } else if (ev->kind == AMDIM_PACK_EVENT_CONVERT) {
        e->converts++;
    } else if (ev->kind == AMDIM_PACK_EVENT_NOTE) {
        e->notes++;
    }
}

static double mean_abs_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += abs((int)a[i] - (int)b[i]);
    return s / (double)n;
}

static void make_tree(uint8_t *rgb)
{
    char *root = strdup(test_path("src"));
    char p[4096];
    test_mkdirs(test_path("src/cat/sub"));
    test_mkdirs(test_path("src/dog"));
    test_mkdirs(test_path("src/zebra"));
    test_mkdirs(test_path("src/.hidden"));
    test_pattern(rgb, W, H, 3, 1);

    snprintf(p, sizeof p, "%s/cat/a.jpg", root);
    test_write_jpeg(p, rgb, W, H, 3, 90);
    snprintf(p, sizeof p, "%s/cat/b.JPEG", root); /* a PNG under a JPEG name */
    test_write_png(p, rgb, W, H);
    /* CMYK stored inverted with an Adobe marker, as Photoshop writes it:
     * with K = 0, inverted C,M,Y are just R,G,B. */
    uint8_t *cmyk = malloc((size_t)W * H * 4);
    for (int i = 0; i < W * H; i++) {
        memcpy(cmyk + 4 * i, rgb + 3 * i, 3);
        cmyk[4 * i + 3] = 255;
    }
    snprintf(p, sizeof p, "%s/cat/c.jpg", root);
    test_write_jpeg(p, cmyk, W, H, 4, 95);
    free(cmyk);
    uint8_t grey[W * H];
    for (int i = 0; i < W * H; i++)
        grey[i] = rgb[3 * i + 1];
    snprintf(p, sizeof p, "%s/cat/sub/d.jpeg", root);
    test_write_jpeg(p, grey, W, H, 1, 95);
    size_t len;
    uint8_t *j = test_encode_jpeg(rgb, W, H, 3, 90, &len);
    snprintf(p, sizeof p, "%s/cat/e.jpg", root); /* truncated */
    test_write_file(p, j, len / 2);
    free(j);
    snprintf(p, sizeof p, "%s/cat/notes.txt", root);
    test_write_file(p, "not an image", 12);

    snprintf(p, sizeof p, "%s/dog/a.jpg", root);
    test_write_jpeg(p, rgb, W, H, 3, 90);
    uint8_t *bigpx = malloc(200 * 200 * 3);
    test_pattern(bigpx, 200, 200, 3, 5);
    snprintf(p, sizeof p, "%s/dog/big.jpg", root);
    test_write_jpeg(p, bigpx, 200, 200, 3, 80);
    free(bigpx);
    snprintf(p, sizeof p, "%s/dog/empty.jpg", root);
    test_write_file(p, "", 0);
    uint8_t garbage[600];
    for (int i = 0; i < 600; i++)
        garbage[i] = (uint8_t)(i * 131 + 7);
    garbage[0] = 0xFF, garbage[1] = 0xD8, garbage[2] = 0xFF, garbage[3] = 0xC0;
    snprintf(p, sizeof p, "%s/dog/garbage.jpg", root);
    test_write_file(p, garbage, sizeof garbage);
    snprintf(p, sizeof p, "%s/dog/link.jpg", root);
    REQUIRE(symlink("/nonexistent/amdim-test.jpg", p) == 0, "symlink");
    snprintf(p, sizeof p, "%s/dog/text.png", root);
    test_write_file(p, "hello, world", 12);
    snprintf(p, sizeof p, "%s/.hidden/x.jpg", root);
    test_write_jpeg(p, rgb, W, H, 3, 90);
    free(root);
}

static amdim_pack_options base_options(events *ev)
{
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_IMAGEFOLDER;
    static char src[4096];
    snprintf(src, sizeof src, "%s", test_path("src"));
    o.src = src;
    o.split = "train";
    o.threads = 2;
    o.max_pixels = 150 * 150;
    o.on_event = on_event;
    o.ctx = ev;
    return o;
}

static const char *keep(const char *path)
{
    static char bufs[4][4096];
    static int k;
    char *b = bufs[k++ % 4];
    snprintf(b, sizeof bufs[0], "%s", path);
    return b;
}

int main(void)
{
    uint8_t rgb[W * H * 3];
    make_tree(rgb);

    events ev = {0};
    amdim_pack_options o = base_options(&ev);
    o.out = keep(test_path("out.lmdb"));
    amdim_pack_summary sum;
    char err[2048];
    int st = amdim_pack_run(&o, &sum, err, sizeof err);
    REQUIRE(st == 0, "pack failed: %s", err);
    CHECK(sum.items == 11, "items %llu", (unsigned long long)sum.items);
    CHECK(sum.records == 5, "records %llu", (unsigned long long)sum.records);
    CHECK(sum.skipped == 6, "skipped %llu", (unsigned long long)sum.skipped);
    CHECK(sum.converted == 3, "converted %llu", (unsigned long long)sum.converted);
    CHECK(sum.classes == 3, "classes %d", sum.classes);
    for (int r = 0; r < AMDIM_SKIP_REASONS; r++)
        CHECK(sum.skipped_by[r] == 1 && ev.skips[r] == 1, "reason %s: %llu in summary, %d events",
              amdim_skip_reason_name((amdim_skip_reason)r), (unsigned long long)sum.skipped_by[r], ev.skips[r]);
    CHECK(ev.converts == 3, "convert events %d", ev.converts);
    CHECK(!test_exists(test_path("out.lmdb-lock")), "a lock file was left");

    /* The report names every bad file with its reason. */
    char *report = test_read_file(sum.report_path, NULL);
    REQUIRE(report, "no report at %s", sum.report_path);
    const char *bad[][2] = {{"cat/e.jpg", "truncated"}, {"dog/big.jpg", "too_large"},
                            {"dog/empty.jpg", "empty"}, {"dog/garbage.jpg", "corrupt"},
                            {"dog/link.jpg", "unreadable"}, {"dog/text.png", "unsupported"}};
    for (size_t i = 0; i < 6; i++) {
        const char *line = strstr(report, bad[i][0]);
        CHECK(line, "report does not name %s", bad[i][0]);
        if (line) {
            const char *eol = strchr(line, '\n');
            char buf[1024];
            snprintf(buf, sizeof buf, "%.*s", (int)(eol ? eol - line : (long)strlen(line)), line);
            CHECK(strstr(buf, bad[i][1]), "report line for %s lacks reason %s: %s", bad[i][0], bad[i][1], buf);
        }
    }
    CHECK(strstr(report, "cat/b.JPEG") && strstr(report, "converted"), "conversion not reported");
    free(report);

    /* Read back: torchvision order and labels; every record decodes. */
    amdim_dataset *ds;
    REQUIRE(amdim_dataset_open(&ds, o.out, err, sizeof err) == 0, "open: %s", err);
    amdim_split_info info;
    REQUIRE(amdim_dataset_split_info(ds, "train", &info) == 0, "info: %s", amdim_dataset_error(ds));
    CHECK(info.records == 5 && info.classes == 3 && info.skipped == 6, "split info");
    CHECK(info.channels == 3 && info.encoding == AMDIM_ENCODING_JPEG && info.width == W && info.height == H,
          "shape %dx%ux%u enc %d", info.channels, info.width, info.height, info.encoding);
    CHECK(info.mean[0] > 20 && info.mean[0] < 230 && info.std[0] > 1, "mean %f std %f", info.mean[0], info.std[0]);
    char names[256];
    CHECK(amdim_dataset_meta(ds, "train.class_names", names, sizeof names) == 0 &&
              strcmp(names, "cat\ndog\nzebra") == 0,
          "class names '%s'", names);
    const uint64_t want_src[5] = {0, 1, 2, 4, 5};
    const int want_label[5] = {0, 0, 0, 0, 1};
    amdim_codec *codec;
    amdim_codec_create(&codec);
    amdim_image img = {0};
    for (uint64_t i = 0; i < 5; i++) {
        amdim_record r;
        REQUIRE(amdim_dataset_get(ds, "train", i, &r) == 0, "get %llu: %s", (unsigned long long)i, amdim_dataset_error(ds));
        CHECK(r.source_index == want_src[i], "record %llu: source_index %llu", (unsigned long long)i,
              (unsigned long long)r.source_index);
        CHECK(r.label == want_label[i], "record %llu: label %d", (unsigned long long)i, r.label);
        CHECK(r.encoding == AMDIM_ENCODING_JPEG && r.channels == 3, "record %llu encoding", (unsigned long long)i);
        amdim_decode_info di;
        st = amdim_codec_decode_rgb(codec, r.payload, r.payload_size, 0, &img, &di);
        REQUIRE(st == 0, "record %llu does not decode: %s", (unsigned long long)i, amdim_codec_error(codec));
        CHECK(di.src_channels == 3 && !di.is_cmyk, "record %llu is not stored as an RGB JPEG", (unsigned long long)i);
        CHECK(img.width == W && img.height == H, "record %llu size", (unsigned long long)i);
        if (want_src[i] == 4) { /* grey: three equal channels close to the grey source */
            int equal = 1;
            for (int k = 0; k < W * H; k++)
                equal &= abs(img.pixels[3 * k] - img.pixels[3 * k + 1]) <= 2 && abs(img.pixels[3 * k + 1] - img.pixels[3 * k + 2]) <= 2;
            CHECK(equal, "grey record is not grey");
            uint8_t g[W * H];
            for (int k = 0; k < W * H; k++)
                g[k] = img.pixels[3 * k + 1];
            uint8_t src_g[W * H];
            for (int k = 0; k < W * H; k++)
                src_g[k] = rgb[3 * k + 1];
            double d = mean_abs_diff(g, src_g, W * H);
            CHECK(d < 3.0, "grey record differs from its source by %.2f on average", d);
        } else {
            double d = mean_abs_diff(img.pixels, rgb, sizeof rgb);
            CHECK(d < 4.0, "record %llu differs from the source pattern by %.2f on average", (unsigned long long)i, d);
        }
    }
    amdim_record r;
    CHECK(amdim_dataset_get(ds, "train", 5, &r) == AMDIM_E_NOT_FOUND, "record 5 should not exist");
    CHECK(amdim_dataset_split_info(ds, "test", &info) == AMDIM_E_NOT_FOUND, "no test split");
    amdim_dataset_close(ds);

    /* --max-side: the 64x48 images become 32x24; --quality re-encodes all. */
    ev = (events){0};
    o.out = keep(test_path("small.lmdb"));
    o.max_side = 32;
    o.quality = 80;
    REQUIRE(amdim_pack_run(&o, &sum, err, sizeof err) == 0, "pack max-side: %s", err);
    CHECK(sum.records == 5 && sum.resized == 5 && sum.reencoded == 5, "resized %llu reencoded %llu",
          (unsigned long long)sum.resized, (unsigned long long)sum.reencoded);
    REQUIRE(amdim_dataset_open(&ds, o.out, err, sizeof err) == 0, "open: %s", err);
    for (uint64_t i = 0; i < 5; i++) {
        REQUIRE(amdim_dataset_get(ds, "train", i, &r) == 0, "get");
        CHECK(r.width == 32 && r.height == 24, "record %llu is %ux%u", (unsigned long long)i, r.width, r.height);
        REQUIRE(amdim_codec_decode_rgb(codec, r.payload, r.payload_size, 0, &img, NULL) == 0, "decode");
        CHECK(img.width == 32 && img.height == 24, "decoded size");
    }
    amdim_dataset_close(ds);

    /* --no-verify keeps the truncated file (header parses) but still
     * rejects what the header shows is bad. */
    ev = (events){0};
    o.out = keep(test_path("noverify.lmdb"));
    o.max_side = 0;
    o.quality = 0;
    o.no_verify = 1;
    REQUIRE(amdim_pack_run(&o, &sum, err, sizeof err) == 0, "pack no-verify: %s", err);
    CHECK(sum.records == 6 && sum.skipped_by[AMDIM_SKIP_TRUNCATED] == 0, "no-verify: records %llu",
          (unsigned long long)sum.records);
    REQUIRE(amdim_dataset_open(&ds, o.out, err, sizeof err) == 0, "open: %s", err);
    CHECK(amdim_dataset_split_info(ds, "train", &info) == 0 && isnan(info.mean[0]),
          "statistics must be absent without full decodes");
    amdim_dataset_close(ds);

    /* A path past 4096 bytes (16 directories of 240 characters and a
     * 244-character file name) is refused by name, not cut short (a cut
     * path could name another file; it once read past the buffer). */
    char deep[8192];
    int len = snprintf(deep, sizeof deep, "%s", test_path("deep/class"));
    for (int d = 0; d < 16; d++) {
        deep[len++] = '/';
        memset(deep + len, 'd', 240);
        len += 240;
        deep[len] = 0;
    }
    test_mkdirs(deep);
    char name[256], cwd[4096];
    memset(name, 'f', 240);
    snprintf(name + 240, sizeof name - 240, ".jpg");
    /* the file is made from inside its directory: its full path is past PATH_MAX */
    REQUIRE(getcwd(cwd, sizeof cwd) && chdir(deep) == 0, "chdir into the deep tree");
    FILE *probe = fopen(name, "wb");
    REQUIRE(chdir(cwd) == 0, "chdir back");
    if (probe) {
        fclose(probe);
        char deep_src[4096];
        snprintf(deep_src, sizeof deep_src, "%s", test_path("deep"));
        ev = (events){0};
        o.src = deep_src;
        o.out = keep(test_path("deep.lmdb"));
        o.no_verify = 0;
        int st = amdim_pack_run(&o, &sum, err, sizeof err);
        CHECK(st == AMDIM_E_INVALID && strstr(err, "path too long"), "a 4,100-byte path: status %d (%s)", st, err);
    } else {
        printf("note: cannot create a file of 244 bytes' name here; the 4,100-byte path check is skipped\n");
    }

    amdim_image_free(&img);
    amdim_codec_destroy(codec);
    return test_finish("test_pack_imagefolder");
}
