/* Raw-pixel sources: CIFAR-10, CIFAR-100 (fine and coarse labels), STL-10
 * (column-major layout, unlabeled split) and IDX (gzipped or not, grey and
 * colour), written by the test in each format's own layout. Malformed
 * sources must fail the whole run with a message naming the file. */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "amdim_dataset.h"
#include "amdim_pack.h"
#include "testutil.h"

/* Pixel value the fixtures store at (image n, y, x, channel c). */
static uint8_t val(int n, int y, int x, int c) { return (uint8_t)(n * 31 + y * 7 + x * 3 + c * 85); }

static int pack(amdim_pack_format f, const char *src, const char *out, const char *split,
                const char *labels, int coarse, char *err, size_t errlen, amdim_pack_summary *sum)
{
    amdim_pack_options o = {0};
    o.format = f;
    o.src = src;
    o.out = out;
    o.split = split;
    o.labels = labels;
    o.cifar100_coarse = coarse;
    o.threads = 3;
    o.window = 5; /* several windows even for tiny fixtures */
    return amdim_pack_run(&o, sum, err, errlen);
}

/* Checks every record's pixels against val() and its labels. */
static void verify(const char *out, const char *split, int count, int w, int h, int ch,
                   const int *labels, const int *aux)
{
    char err[1024];
    amdim_dataset *ds;
    REQUIRE(amdim_dataset_open(&ds, out, err, sizeof err) == 0, "open %s: %s", out, err);
    amdim_split_info info;
    REQUIRE(amdim_dataset_split_info(ds, split, &info) == 0, "info: %s", amdim_dataset_error(ds));
    CHECK(info.records == (uint64_t)count, "%s/%s: %llu records, want %d", out, split, (unsigned long long)info.records, count);
    CHECK(info.encoding == AMDIM_ENCODING_RAW && info.channels == ch && (int)info.width == w && (int)info.height == h,
          "%s: shape", out);
    /* Exact statistics of the fixture. */
    double s = 0, ss = 0;
    for (int n = 0; n < count; n++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                double v = val(n, y, x, 0);
                s += v;
                ss += v * v;
            }
    double npx = (double)count * w * h, mean = s / npx;
    CHECK(info.mean[0] > mean - 1e-3 && info.mean[0] < mean + 1e-3, "%s mean %f, want %f", out, info.mean[0], mean);
    (void)ss;
    for (int n = 0; n < count; n++) {
        amdim_record r;
        REQUIRE(amdim_dataset_get(ds, split, (uint64_t)n, &r) == 0, "get %d: %s", n, amdim_dataset_error(ds));
        CHECK(r.source_index == (uint64_t)n, "record %d source %llu", n, (unsigned long long)r.source_index);
        CHECK(r.label == labels[n], "%s record %d label %d want %d", out, n, r.label, labels[n]);
        CHECK(r.aux_label == (aux ? aux[n] : -1), "%s record %d aux %d", out, n, r.aux_label);
        int bad = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < ch; c++)
                    bad += r.payload[(y * w + x) * ch + c] != val(n, y, x, c);
        CHECK(bad == 0, "%s record %d: %d pixels differ from the source", out, n, bad);
    }
    amdim_dataset_close(ds);
}

static void write_cifar(const char *path, int first, int count, int hundred, int *labels, int *aux)
{
    size_t rec = (hundred ? 2 : 1) + 3072;
    uint8_t *buf = malloc(rec * (size_t)count);
    for (int i = 0; i < count; i++) {
        int n = first + i;
        uint8_t *r = buf + rec * (size_t)i;
        if (hundred) {
            r[0] = (uint8_t)(n % 20);  /* coarse */
            r[1] = (uint8_t)(n * 7 % 100); /* fine */
            labels[n] = r[1];
            aux[n] = r[0];
        } else {
            r[0] = (uint8_t)(n % 10);
            labels[n] = r[0];
        }
        uint8_t *planes = r + (hundred ? 2 : 1);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++)
                    planes[c * 1024 + y * 32 + x] = val(n, y, x, c);
    }
    test_write_file(path, buf, rec * (size_t)count);
    free(buf);
}

static void test_cifar10(void)
{
    test_mkdirs(test_path("cifar-10-batches-bin"));
    int labels[64];
    char p[4096];
    for (int b = 1; b <= 5; b++) {
        snprintf(p, sizeof p, "%s/data_batch_%d.bin", test_path("cifar-10-batches-bin"), b);
        write_cifar(p, (b - 1) * 4, 4, 0, labels, NULL);
    }
    int tlabels[8];
    write_cifar(test_path("cifar-10-batches-bin/test_batch.bin"), 0, 3, 0, tlabels, NULL);
    test_write_file(test_path("cifar-10-batches-bin/batches.meta.txt"),
                    "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n", 61);
    char err[1024];
    amdim_pack_summary sum;
    const char *out = test_path("cifar10.lmdb");
    REQUIRE(pack(AMDIM_PACK_CIFAR10, test_path("cifar-10-batches-bin"), out, "train", NULL, 0, err, sizeof err, &sum) == 0, "cifar10: %s", err);
    REQUIRE(pack(AMDIM_PACK_CIFAR10, test_path("cifar-10-batches-bin"), out, "test", NULL, 0, err, sizeof err, &sum) == 0, "cifar10 test: %s", err);
    CHECK(sum.classes == 10, "classes %d", sum.classes);
    verify(out, "train", 20, 32, 32, 3, labels, NULL);
    verify(out, "test", 3, 32, 32, 3, tlabels, NULL);
    amdim_dataset *ds;
    REQUIRE(amdim_dataset_open(&ds, out, err, sizeof err) == 0, "open");
    char names[256];
    CHECK(amdim_dataset_meta(ds, "train.class_names", names, sizeof names) == 0 && strncmp(names, "airplane\nautomobile", 19) == 0,
          "class names %s", names);
    amdim_dataset_close(ds);

    /* A truncated batch fails the run, naming the file; nothing is written. */
    size_t len;
    char *data = test_read_file(test_path("cifar-10-batches-bin/data_batch_3.bin"), &len);
    test_write_file(test_path("cifar-10-batches-bin/data_batch_3.bin"), data, len - 100);
    free(data);
    int st = pack(AMDIM_PACK_CIFAR10, test_path("cifar-10-batches-bin"), test_path("bad.lmdb"), "train", NULL, 0, err, sizeof err, &sum);
    CHECK(st == AMDIM_E_CORRUPT && strstr(err, "data_batch_3.bin"), "truncated batch: %d %s", st, err);
    CHECK(!test_exists(test_path("bad.lmdb")), "output written despite failure");
    /* A CIFAR-100 file given as CIFAR-10 has out-of-range labels. */
    int l100[8], a100[8];
    write_cifar(test_path("c100.bin"), 0, 8, 1, l100, a100);
    st = pack(AMDIM_PACK_CIFAR10, test_path("c100.bin"), test_path("bad.lmdb"), "train", NULL, 0, err, sizeof err, &sum);
    CHECK(st != 0 && strstr(err, "c100.bin"), "wrong format accepted: %d %s", st, err);
    CHECK(!test_exists(test_path("bad.lmdb")), "output written despite failure");
}

static void test_cifar100(void)
{
    test_mkdirs(test_path("cifar-100-binary"));
    int labels[16], aux[16];
    write_cifar(test_path("cifar-100-binary/train.bin"), 0, 9, 1, labels, aux);
    char err[1024];
    amdim_pack_summary sum;
    REQUIRE(pack(AMDIM_PACK_CIFAR100, test_path("cifar-100-binary"), test_path("c100.lmdb"), "train", NULL, 0, err, sizeof err, &sum) == 0, "%s", err);
    CHECK(sum.classes == 100, "classes %d", sum.classes);
    verify(test_path("c100.lmdb"), "train", 9, 32, 32, 3, labels, aux);
    REQUIRE(pack(AMDIM_PACK_CIFAR100, test_path("cifar-100-binary"), test_path("c100c.lmdb"), "train", NULL, 1, err, sizeof err, &sum) == 0, "%s", err);
    CHECK(sum.classes == 20, "coarse classes %d", sum.classes);
    verify(test_path("c100c.lmdb"), "train", 9, 32, 32, 3, aux, labels);
}

static void test_stl10(void)
{
    test_mkdirs(test_path("stl10_binary"));
    const int n = 4, nu = 3;
    size_t rec = 96 * 96 * 3;
    uint8_t *x = malloc(rec * n), y[4];
    int labels[4], unl[3] = {-1, -1, -1};
    for (int i = 0; i < n; i++) {
        for (int c = 0; c < 3; c++)
            for (int xx = 0; xx < 96; xx++)
                for (int yy = 0; yy < 96; yy++) /* column-major per channel */
                    x[rec * i + c * 9216 + xx * 96 + yy] = val(i, yy, xx, c);
        y[i] = (uint8_t)(1 + (i * 3) % 10);
        labels[i] = y[i] - 1;
    }
    test_write_file(test_path("stl10_binary/train_X.bin"), x, rec * n);
    test_write_file(test_path("stl10_binary/train_y.bin"), y, n);
    test_write_file(test_path("stl10_binary/unlabeled_X.bin"), x, rec * nu);
    char err[1024];
    amdim_pack_summary sum;
    const char *out = test_path("stl.lmdb");
    REQUIRE(pack(AMDIM_PACK_STL10, test_path("stl10_binary"), out, "train", NULL, 0, err, sizeof err, &sum) == 0, "%s", err);
    REQUIRE(pack(AMDIM_PACK_STL10, test_path("stl10_binary"), out, "unlabeled", NULL, 0, err, sizeof err, &sum) == 0, "%s", err);
    verify(out, "train", n, 96, 96, 3, labels, NULL);
    verify(out, "unlabeled", nu, 96, 96, 3, unl, NULL);
    /* Labels outside 1..10 are refused. */
    y[2] = 0;
    test_write_file(test_path("stl10_binary/train_y.bin"), y, n);
    int st = pack(AMDIM_PACK_STL10, test_path("stl10_binary"), test_path("bad.lmdb"), "train", NULL, 0, err, sizeof err, &sum);
    CHECK(st == AMDIM_E_CORRUPT && strstr(err, "train_y.bin"), "bad stl label: %d %s", st, err);
    free(x);
}

static void write_idx(const char *path, int gz, const uint8_t *data, size_t len)
{
    if (gz) {
        gzFile f = gzopen(path, "wb");
        REQUIRE(f, "gzopen");
        gzwrite(f, data, (unsigned)len);
        gzclose(f);
    } else {
        test_write_file(path, data, len);
    }
}

static void test_idx(void)
{
    const int n = 7, h = 5, w = 6;
    for (int variant = 0; variant < 3; variant++) {
        int gz = variant != 1, ch = variant == 2 ? 3 : 1;
        size_t hdr = ch == 3 ? 20 : 16;
        size_t len = hdr + (size_t)n * h * w * ch;
        uint8_t *img = calloc(1, len), lab[8 + 7];
        img[2] = 8;
        img[3] = ch == 3 ? 4 : 3;
        uint32_t dims[4] = {(uint32_t)n, (uint32_t)h, (uint32_t)w, (uint32_t)ch};
        for (int d = 0; d < (ch == 3 ? 4 : 3); d++)
            for (int b = 0; b < 4; b++)
                img[4 + 4 * d + b] = (uint8_t)(dims[d] >> (24 - 8 * b));
        for (int i = 0; i < n; i++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    for (int c = 0; c < ch; c++)
                        img[hdr + (((size_t)i * h + y) * w + x) * ch + c] = val(i, y, x, c);
        int labels[7];
        memset(lab, 0, 8);
        lab[2] = 8, lab[3] = 1, lab[7] = (uint8_t)n;
        for (int i = 0; i < n; i++)
            lab[8 + i] = (uint8_t)(labels[i] = (i * 5) % 10);
        char ip[256], lp[256], out[256];
        snprintf(ip, sizeof ip, "v%d-train-images-idx3-ubyte%s", variant, gz ? ".gz" : "");
        snprintf(lp, sizeof lp, "v%d-train-labels-idx1-ubyte%s", variant, gz ? ".gz" : "");
        snprintf(out, sizeof out, "idx%d.lmdb", variant);
        write_idx(test_path(ip), gz, img, len);
        write_idx(test_path(lp), gz, lab, 8 + (size_t)n);
        char err[1024];
        amdim_pack_summary sum;
        /* The labels file is found by name. */
        REQUIRE(pack(AMDIM_PACK_IDX, test_path(ip), test_path(out), "train", NULL, 0, err, sizeof err, &sum) == 0, "idx %d: %s", variant, err);
        verify(test_path(out), "train", n, w, h, ch, labels, NULL);
        if (variant == 0) {
            /* Label count mismatch and truncated images fail with the file named. */
            lab[7] = (uint8_t)(n - 1);
            write_idx(test_path("short-labels"), 1, lab, 8 + (size_t)n - 1);
            int st = pack(AMDIM_PACK_IDX, test_path(ip), test_path("bad.lmdb"), "train", test_path("short-labels"), 0, err, sizeof err, &sum);
            CHECK(st == AMDIM_E_CORRUPT && strstr(err, "short-labels"), "label count mismatch: %d %s", st, err);
            write_idx(test_path("trunc-images-idx3-ubyte"), 0, img, len - 3);
            st = pack(AMDIM_PACK_IDX, test_path("trunc-images-idx3-ubyte"), test_path("bad.lmdb"), "train", test_path(lp), 0, err, sizeof err, &sum);
            CHECK(st == AMDIM_E_TRUNCATED && strstr(err, "trunc-images"), "truncated idx: %d %s", st, err);
            st = pack(AMDIM_PACK_IDX, test_path(lp), test_path("bad.lmdb"), "train", test_path(lp), 0, err, sizeof err, &sum);
            CHECK(st == AMDIM_E_CORRUPT && strstr(err, "not an IDX file of uint8 images"), "labels as images: %d %s", st, err);
            CHECK(!test_exists(test_path("bad.lmdb")), "output written despite failure");
        }
        free(img);
    }
}

int main(void)
{
    test_cifar10();
    test_cifar100();
    test_stl10();
    test_idx();
    return test_finish("test_pack_raw");
}
