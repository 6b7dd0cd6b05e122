/* list packing (Places205 / ImageNet-val style): labels from the file,
 * paths relative to the root, paths with spaces, missing files skipped and
 * named, malformed lines failing the run with the line number. */
#include <stdlib.h>
#include <string.h>

#include "amdim_dataset.h"
#include "amdim_pack.h"
#include "testutil.h"

static int pack_list(const char *list, const char *root, const char *out, const char *names,
                     amdim_pack_summary *sum, char *err, size_t n)
{
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_LIST;
    o.src = list;
    o.root = root;
    o.out = out;
    o.class_names = names;
    o.threads = 2;
    return amdim_pack_run(&o, sum, err, n);
}

int main(void)
{
    uint8_t px[40 * 30 * 3];
    test_mkdirs(test_path("images/a/abbey"));
    test_mkdirs(test_path("images/b/beach house"));
    test_pattern(px, 40, 30, 3, 3);
    test_write_jpeg(test_path("images/a/abbey/00000001.jpg"), px, 40, 30, 3, 90);
    test_write_jpeg(test_path("images/b/beach house/00000002.jpg"), px, 40, 30, 3, 90);
    test_write_jpeg(test_path("images/a/abbey/00000003.jpg"), px, 40, 30, 3, 90);
    const char *list = "a/abbey/00000001.jpg 0\n"
                       "\n"
                       "b/beach house/00000002.jpg 4\n"
                       "a/abbey/missing.jpg 1\n"
                       "a/abbey/00000003.jpg\t-1\n";
    test_write_file(test_path("train.txt"), list, strlen(list));
    char err[2048];
    amdim_pack_summary sum;
    REQUIRE(pack_list(test_path("train.txt"), test_path("images"), test_path("l.lmdb"), NULL, &sum, err, sizeof err) == 0, "%s", err);
    CHECK(sum.records == 3 && sum.skipped == 1 && sum.skipped_by[AMDIM_SKIP_UNREADABLE] == 1,
          "records %llu skipped %llu", (unsigned long long)sum.records, (unsigned long long)sum.skipped);
    CHECK(sum.classes == 5, "classes %d (max label + 1)", sum.classes);
    char *report = test_read_file(sum.report_path, NULL);
    CHECK(report && strstr(report, "a/abbey/missing.jpg") && strstr(report, "unreadable"), "report: %s", report ? report : "(none)");
    free(report);

    amdim_dataset *ds;
    REQUIRE(amdim_dataset_open(&ds, test_path("l.lmdb"), err, sizeof err) == 0, "%s", err);
    const int want_label[3] = {0, 4, -1};
    const uint64_t want_src[3] = {0, 1, 3};
    for (int i = 0; i < 3; i++) {
        amdim_record r;
        REQUIRE(amdim_dataset_get(ds, "train", (uint64_t)i, &r) == 0, "get");
        CHECK(r.label == want_label[i] && r.source_index == want_src[i], "record %d: label %d source %llu", i,
              r.label, (unsigned long long)r.source_index);
    }
    amdim_dataset_close(ds);

    /* Default root: the list file's directory. */
    const char *rel = "images/a/abbey/00000001.jpg 2\n";
    test_write_file(test_path("rel.txt"), rel, strlen(rel));
    test_write_file(test_path("names.txt"), "x\ny\nz\n", 6);
    REQUIRE(pack_list(test_path("rel.txt"), NULL, test_path("r.lmdb"), test_path("names.txt"), &sum, err, sizeof err) == 0, "%s", err);
    CHECK(sum.records == 1 && sum.classes == 3, "default root");
    REQUIRE(amdim_dataset_open(&ds, test_path("r.lmdb"), err, sizeof err) == 0, "%s", err);
    char names[64];
    CHECK(amdim_dataset_meta(ds, "train.class_names", names, sizeof names) == 0 && strcmp(names, "x\ny\nz") == 0, "names '%s'", names);
    amdim_dataset_close(ds);

    /* Too few class names for the labels. */
    test_write_file(test_path("few.txt"), "x\n", 2);
    int st = pack_list(test_path("rel.txt"), NULL, test_path("bad.lmdb"), test_path("few.txt"), &sum, err, sizeof err);
    CHECK(st == AMDIM_E_INVALID && strstr(err, "few.txt"), "few names: %d %s", st, err);

    /* Malformed lines fail the whole run and name file and line. */
    const char *bad[] = {"a/abbey/00000001.jpg 0\nno-label-here\n", "a/abbey/00000001.jpg zero\n",
                         "a/abbey/00000001.jpg -7\n", "a/abbey/00000001.jpg 99999999999\n"};
    const int bad_line[] = {2, 1, 1, 1};
    for (int i = 0; i < 4; i++) {
        test_write_file(test_path("bad.txt"), bad[i], strlen(bad[i]));
        st = pack_list(test_path("bad.txt"), test_path("images"), test_path("bad.lmdb"), NULL, &sum, err, sizeof err);
        char want[64];
        snprintf(want, sizeof want, "bad.txt:%d:", bad_line[i]);
        CHECK(st == AMDIM_E_INVALID && strstr(err, want), "bad list %d: %d %s", i, st, err);
        CHECK(!test_exists(test_path("bad.lmdb")), "output written despite failure");
    }
    st = pack_list(test_path("nope.txt"), NULL, test_path("bad.lmdb"), NULL, &sum, err, sizeof err);
    CHECK(st == AMDIM_E_NOT_FOUND && strstr(err, "nope.txt"), "missing list: %d %s", st, err);
    /* Only missing files: nothing to pack is an error, not an empty dataset. */
    const char *none = "a/abbey/missing.jpg 1\n";
    test_write_file(test_path("none.txt"), none, strlen(none));
    st = pack_list(test_path("none.txt"), test_path("images"), test_path("bad.lmdb"), NULL, &sum, err, sizeof err);
    CHECK(st == AMDIM_E_EMPTY && !test_exists(test_path("bad.lmdb")), "all missing: %d %s", st, err);
    return test_finish("test_pack_list");
}
