/* amdim-load | amdim-peek: every record exactly once per epoch for 1, 2 and
 * 3 workers; byte-identical batches whatever the worker count and read
 * method; the final partial batch kept on request; the consumer choosing
 * seed and start (resume at (epoch, batch) reproduces the rest exactly).
 * Arguments: amdim-load and amdim-peek binaries. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "loader_fixtures.h"

static const char *load_bin, *peek_bin;

typedef struct {
    char digest[32];
    char *verbose; /* peek's whole stdout */
    long pairs, epochs;
} result;

/* Runs the pipeline; checks both exit 0 and the exactly-once counters. */
static result run(const char *what, const char *data, const char *load_extra[], const char *peek_extra[])
{
    char *la[32], *pa[32];
    int n = 0;
    la[n++] = (char *)load_bin;
    for (int i = 0; load_extra && load_extra[i]; i++)
        la[n++] = (char *)load_extra[i];
    la[n++] = (char *)data;
    la[n] = NULL;
    n = 0;
    pa[n++] = (char *)peek_bin;
    pa[n++] = "--verbose";
    for (int i = 0; peek_extra && peek_extra[i]; i++)
        pa[n++] = (char *)peek_extra[i];
    pa[n] = NULL;
    test_pipeline p;
    test_pipeline_start(&p, la, pa);
    test_pipeline_wait(&p);
    result r = {{0}, NULL, 0, 0};
    char *perr = test_read_file(p.peek_err, NULL), *lerr = test_read_file(p.load_err, NULL);
    CHECK(WIFEXITED(p.load_status) && WEXITSTATUS(p.load_status) == 0, "%s: amdim-load failed: %s", what, lerr);
    CHECK(WIFEXITED(p.peek_status) && WEXITSTATUS(p.peek_status) == 0, "%s: amdim-peek failed: %s", what, perr);
    const char *v;
    CHECK((v = test_file_value(p.peek_out, "duplicates")) && strcmp(v, "0") == 0, "%s: duplicates %s", what, v);
    CHECK((v = test_file_value(p.peek_out, "missing")) && strcmp(v, "0") == 0, "%s: missing %s", what, v);
    CHECK((v = test_file_value(p.peek_out, "mismatched")) && strcmp(v, "0") == 0, "%s: mismatched %s", what, v);
    if ((v = test_file_value(p.peek_out, "digest")))
        snprintf(r.digest, sizeof r.digest, "%s", v);
    if ((v = test_file_value(p.peek_out, "pairs")))
        r.pairs = atol(v);
    if ((v = test_file_value(p.peek_out, "epochs")))
        r.epochs = atol(v);
    r.verbose = test_read_file(p.peek_out, NULL);
    free(perr);
    free(lerr);
    return r;
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 3, "usage: test_loader_delivery AMDIM-LOAD AMDIM-PEEK");
    load_bin = argv[1];
    peek_bin = argv[2];
    char raw[4200], jpg[4200];
    snprintf(raw, sizeof raw, "%s", test_path("raw.lmdb"));
    snprintf(jpg, sizeof jpg, "%s", test_path("jpeg.lmdb"));
    fixture_raw(raw, 103);
    fixture_jpeg(jpg, 45);

    /* Exactly once, 1..3 workers, identical batches. 103 records in
     * batches of 10: 10 batches per epoch, the last 3 records dropped. */
    result base = {{0}, NULL, 0, 0};
    for (int w = 1; w <= 3; w++) {
        char ws[8], what[64];
        snprintf(ws, sizeof ws, "%d", w);
        snprintf(what, sizeof what, "raw, %d workers", w);
        const char *le[] = {"--workers", ws, "--batch", "10", "--epochs", "3", "--seed", "5", NULL};
        result r = run(what, raw, le, NULL);
        CHECK(r.pairs == 300 && r.epochs == 3, "%s: %ld pairs in %ld epochs, want 300 in 3", what, r.pairs, r.epochs);
        if (w == 1)
            base = r;
        else {
            CHECK(strcmp(r.digest, base.digest) == 0, "%s: digest %s differs from 1 worker's %s", what, r.digest, base.digest);
            free(r.verbose);
        }
    }
    /* The final partial batch on request. */
    const char *keep1[] = {"--workers", "1", "--batch", "10", "--keep-last", "--epochs", "2", NULL};
    const char *keep3[] = {"--workers", "3", "--batch", "10", "--keep-last", "--epochs", "2", NULL};
    result k1 = run("keep-last, 1 worker", raw, keep1, NULL), k3 = run("keep-last, 3 workers", raw, keep3, NULL);
    CHECK(k1.pairs == 206, "keep-last: %ld pairs, want 206", k1.pairs);
    CHECK(strcmp(k1.digest, k3.digest) == 0, "keep-last digests differ");
    free(k1.verbose);
    free(k3.verbose);

    /* JPEG records through io_uring and through pread, 1 and 3 workers. */
    const char *j1[] = {"--workers", "1", "--batch", "8", "--epochs", "2", "--preset", "stl10", NULL};
    const char *j3[] = {"--workers", "3", "--batch", "8", "--epochs", "2", "--preset", "stl10", "--queue-depth", "3", NULL};
    const char *jp[] = {"--workers", "2", "--batch", "8", "--epochs", "2", "--preset", "stl10", "--no-uring", NULL};
    result a = run("jpeg, 1 worker", jpg, j1, NULL), b = run("jpeg, 3 workers", jpg, j3, NULL),
           c = run("jpeg, pread", jpg, jp, NULL);
    CHECK(a.pairs == 80, "jpeg pairs %ld", a.pairs);
    CHECK(strcmp(a.digest, b.digest) == 0 && strcmp(a.digest, c.digest) == 0, "jpeg digests differ: %s %s %s",
          a.digest, b.digest, c.digest);
    free(a.verbose);
    free(b.verbose);
    free(c.verbose);

    /* The consumer's seed wins over the loader's default. */
    const char *s1[] = {"--workers", "2", "--batch", "10", "--seed", "9", NULL};
    const char *s2[] = {"--workers", "2", "--batch", "10", "--seed", "1", NULL};
    const char *ps[] = {"--seed", "9", NULL};
    result x = run("loader seed 9", raw, s1, NULL), y = run("consumer seed 9", raw, s2, ps);
    CHECK(strcmp(x.digest, y.digest) == 0, "seed from the consumer: %s vs %s", x.digest, y.digest);
    free(x.verbose);
    free(y.verbose);

    /* Resume at (epoch 1, batch 4): the rest of epoch 1 and epoch 2 are
     * exactly the batches of the uninterrupted run. */
    const char *full[] = {"--workers", "2", "--batch", "10", "--epochs", "3", "--seed", "5", NULL};
    const char *pres[] = {"--start-epoch", "1", "--start-batch", "4", "--epochs", "2", NULL};
    result resumed = run("resumed at epoch 1 batch 4", raw, full, pres);
    CHECK(resumed.pairs == 160, "resumed: %ld pairs, want 160", resumed.pairs);
    int lines = 0, found = 0;
    for (char *line = resumed.verbose; line && (line = strstr(line, "batch ")); line++) {
        char buf[96];
        size_t n = strcspn(line, "\n");
        snprintf(buf, sizeof buf, "%.*s\n", (int)n, line);
        lines++;
        found += strstr(base.verbose, buf) != NULL;
        line += n;
    }
    CHECK(lines == 16 && found == 16, "resumed batches: %d lines, %d identical to the full run", lines, found);
    free(resumed.verbose);
    free(base.verbose);
    return test_finish("test_loader_delivery");
}
