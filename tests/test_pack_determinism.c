/* Same input and options give the same records, in the same order, with
 * the same metadata, whatever the thread count and commit window. */
#include <stdlib.h>
#include <string.h>

#include "amdim_dataset.h"
#include "amdim_pack.h"
#include "testutil.h"

typedef struct {
    char keys[64][64];
    char vals[64][256];
    int n;
} meta_list;

static void collect(const char *k, const char *v, void *ctx)
{
    meta_list *m = ctx;
    if (m->n < 64) {
        snprintf(m->keys[m->n], 64, "%s", k);
        snprintf(m->vals[m->n], 256, "%s", v);
        m->n++;
    }
}

int main(void)
{
    /* 4 classes x 15 images of assorted sizes, a few of them broken. */
    char p[4096];
    for (int c = 0; c < 4; c++) {
        for (int i = 0; i < 15; i++) {
            snprintf(p, sizeof p, "src/class%d", c);
            test_mkdirs(test_path(p));
            int w = 20 + (i * 13 + c * 7) % 70, h = 16 + (i * 29 + c) % 60;
            uint8_t *px = malloc((size_t)w * h * 3);
            test_pattern(px, w, h, 3, (unsigned)(c * 100 + i));
            snprintf(p, sizeof p, "src/class%d/img%02d.jpg", c, i);
            size_t len;
            uint8_t *j = test_encode_jpeg(px, w, h, 3, 85, &len);
            test_write_file(test_path(p), j, (i % 7 == 3) ? len / 3 : len);
            free(j);
            free(px);
        }
    }
    struct {
        int threads, window;
        const char *out;
    } runs[] = {{1, 0, "t1.lmdb"}, {3, 7, "t3.lmdb"}, {2, 1, "t2.lmdb"}};
    amdim_pack_summary sums[3];
    for (int r = 0; r < 3; r++) {
        amdim_pack_options o = {0};
        o.format = AMDIM_PACK_IMAGEFOLDER;
        o.src = test_path("src");
        o.out = test_path(runs[r].out);
        o.threads = runs[r].threads;
        o.window = runs[r].window;
        o.max_side = getenv("NOSHRINK") ? 0 : 48; /* exercise resize + re-encode too */
        char err[1024];
        REQUIRE(amdim_pack_run(&o, &sums[r], err, sizeof err) == 0, "run %d: %s", r, err);
    }
    CHECK(sums[0].records == 52 && sums[0].skipped == 8, "records %llu skipped %llu",
          (unsigned long long)sums[0].records, (unsigned long long)sums[0].skipped);
    amdim_dataset *ds[3];
    char err[1024];
    meta_list meta[3];
    for (int r = 0; r < 3; r++) {
        REQUIRE(amdim_dataset_open(&ds[r], test_path(runs[r].out), err, sizeof err) == 0, "%s", err);
        memset(&meta[r], 0, sizeof meta[r]);
        amdim_dataset_meta_each(ds[r], collect, &meta[r]);
    }
    for (int r = 1; r < 3; r++) {
        CHECK(sums[r].records == sums[0].records && sums[r].skipped == sums[0].skipped, "counts differ in run %d", r);
        CHECK(meta[r].n == meta[0].n, "meta key count differs in run %d", r);
        for (int i = 0; i < meta[0].n && i < meta[r].n; i++)
            CHECK(strcmp(meta[r].keys[i], meta[0].keys[i]) == 0 && strcmp(meta[r].vals[i], meta[0].vals[i]) == 0,
                  "run %d meta %s = '%s' vs '%s'", r, meta[r].keys[i], meta[r].vals[i], meta[0].vals[i]);
        for (uint64_t i = 0; i < sums[0].records; i++) {
            const void *a, *b;
            size_t la, lb;
            REQUIRE(amdim_dataset_locate(ds[0], "train", i, &a, &la, NULL) == 0, "locate");
            REQUIRE(amdim_dataset_locate(ds[r], "train", i, &b, &lb, NULL) == 0, "locate");
            size_t off = 0;
            while (off < la && off < lb && ((const uint8_t *)a)[off] == ((const uint8_t *)b)[off])
                off++;
            CHECK(la == lb && off == la, "record %llu differs between 1 and %d threads (%zu vs %zu bytes, first difference at %zu)",
                  (unsigned long long)i, runs[r].threads, la, lb, off);
        }
    }
    for (int r = 0; r < 3; r++)
        amdim_dataset_close(ds[r]);
    /* The skip reports list the same files. */
    char *r0 = test_read_file(sums[0].report_path, NULL), *r1 = test_read_file(sums[1].report_path, NULL);
    REQUIRE(r0 && r1, "reports");
    const char *b0 = strstr(r0, "\nskipped"), *b1 = strstr(r1, "\nskipped");
    CHECK(b0 && b1, "reports list no skipped files");
    free(r0);
    free(r1);
    return test_finish("test_pack_determinism");
}
