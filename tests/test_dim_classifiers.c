/* The classifier evaluation of Deep InfoMax (docs/dim.md §9.1; library
 * trainer/dim/, run amdim-train --model dim --classifiers):
 *   - the cross-entropy against a hand-computed value and its gradient;
 *   - the heads' gradient (MLP with a fixed dropout mask, BN in training
 *     mode, and the linear head) against central differences;
 *   - the frozen encoder's taps: z = the output layer on fc, the running
 *     statistics untouched, the same result twice; conv, fc and z against
 *     tests/ref/dim_ref.py in evaluation mode (dim_ref_eval32.bin.gz, from
 *     tests/ref/make_dim_ref.py);
 *   - through the pipe: a DIM run of 8 steps on 5 classes of stripes (separable
 *     in pixel space), then the heads on z and on fc beat chance (0.2)
 *     clearly on the training data; the same seed gives the same metrics and
 *     heads bytes; the errors (--features without --classifiers, an --init
 *     that is not a DIM run, unlabelled data, a bad --features).
 * Arguments: amdim-load, amdim-train, dim_ref_eval32.bin.gz. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdim_dim.h"
#include "amdim_pack.h"
#include "amdim_philox.h"
#include "reffile.h"
#include "testutil.h"

static const char *load_bin, *train_bin;

/* ---- library --------------------------------------------------------------------- */

static void check_cross_entropy(void)
{
    float logits[6] = {1, 2, 3, 0, 0, 5}, d[6];
    int32_t labels[2] = {2, -1};
    int hits, lab;
    double want = -log(exp(3.0) / (exp(1.0) + exp(2.0) + exp(3.0)));
    double l = amdim_dim_cross_entropy(logits, 2, 3, labels, d, &hits, &lab);
    CHECK(fabs(l - want) < 1e-6 && hits == 1 && lab == 1, "cross-entropy %g (want %g), %d hits, %d labelled", l, want,
          hits, lab);
    double sm2 = exp(3.0) / (exp(1.0) + exp(2.0) + exp(3.0));
    CHECK(fabs(d[2] - (sm2 - 1)) < 1e-6 && d[3] == 0 && d[5] == 0, "gradient %g, unlabelled row %g", d[2], d[5]);
    int32_t none[2] = {-1, -1};
    CHECK(amdim_dim_cross_entropy(logits, 2, 3, none, NULL, NULL, &lab) == 0 && lab == 0, "no labelled rows");
}

static double heads_loss(amdim_dim_heads *h, float *w, const float *x, int n, const int32_t *y, const float *mask,
                         float *g)
{
    amdim_dim_head_stats s;
    REQUIRE(amdim_dim_heads_step(h, w, x, n, y, mask, g, &s) == 0, "heads step");
    return s.mlp + s.linear;
}

/* Every trainable tensor of both heads along a random direction, in float32. */
static void check_head_gradient(void)
{
    enum { N = 6, IN = 5, HID = 7, K = 3 };
    amdim_dim_heads_config c = {IN, HID, K, 0.3f, 11}; /* a larger dropout than the authors' 0.1: more zeros */
    amdim_dim_heads *h;
    char err[256];
    REQUIRE(amdim_dim_heads_create(&c, N, &h, err, sizeof err) == 0, "%s", err);
    size_t nf = amdim_dim_heads_floats(h);
    float *w = calloc(nf, 4), *w0 = calloc(nf, 4), *g = calloc(nf, 4), *g2 = calloc(nf, 4), *dir = calloc(nf, 4);
    float x[N * IN], mask[N * HID];
    int32_t y[N] = {0, 1, 2, -1, 1, 0};
    amdim_rng rng;
    amdim_rng_init(&rng, 3, 0, 0);
    for (int i = 0; i < N * IN; i++)
        x[i] = amdim_rng_uniform(&rng, -2, 2);
    amdim_dim_heads_init(h, w);
    amdim_dim_heads_draw_mask(h, 1, N, mask);
    int kept = 0;
    for (int i = 0; i < N * HID; i++)
        kept += mask[i] == 1.0f;
    CHECK(kept > 0 && kept < N * HID, "dropout mask keeps %d of %d", kept, N * HID);
    heads_loss(h, w, x, N, y, mask, g);
    for (int t = 0; t < amdim_dim_heads_tensor_count(h); t++) {
        const amdim_dim_tensor *tt = amdim_dim_heads_tensor_at(h, t);
        if (!tt->trainable)
            continue;
        double dot = 0, norm = 0;
        memset(dir, 0, nf * 4);
        for (size_t k = 0; k < tt->size; k++) {
            dir[tt->offset + k] = amdim_rng_uniform(&rng, -1, 1);
            dot += dir[tt->offset + k] * g[tt->offset + k];
            norm += fabs(g[tt->offset + k]);
        }
        const float eps = 2e-3f;
        memcpy(w0, w, nf * 4);
        for (size_t k = 0; k < nf; k++)
            w[k] = w0[k] + eps * dir[k];
        double lp = heads_loss(h, w, x, N, y, mask, g2);
        for (size_t k = 0; k < nf; k++)
            w[k] = w0[k] - eps * dir[k];
        double lm = heads_loss(h, w, x, N, y, mask, g2);
        memcpy(w, w0, nf * 4);
        double fd = (lp - lm) / (2 * eps);
        CHECK(fabs(fd - dot) <= 2e-3 * (fabs(dot) + norm / (double)tt->size + 1e-3), "%s: analytic %.6g, central %.6g",
              tt->name, dot, fd);
    }
    float *g3 = calloc(nf, 4);
    heads_loss(h, w, x, N, y, mask, g3);
    CHECK(memcmp(g, g3, nf * 4) == 0, "the same step twice gives other gradients");
    int32_t none[N] = {-1, -1, -1, -1, -1, -1};
    amdim_dim_head_stats s;
    amdim_dim_heads_step(h, w, x, N, none, mask, g3, &s);
    int zero = s.labelled == 0;
    for (size_t k = 0; k < nf; k++)
        zero &= g3[k] == 0;
    CHECK(zero, "a batch without labels gives gradients");
    amdim_dim_heads *bad;
    amdim_dim_heads_config cb = {IN, HID, 1, 0.1f, 1};
    CHECK(amdim_dim_heads_create(&cb, N, &bad, err, sizeof err) != 0 && strstr(err, "classes"), "1 class: %s", err);
    free(w), free(w0), free(g), free(g2), free(g3), free(dir);
    amdim_dim_heads_destroy(h);
}

/* The taps of a small 32 px encoder: shapes, z = output layer(fc), no side effects, repeatable. */
static void check_features(void)
{
    amdim_dim_config cfg = {
        .size = 32, .widths = {4, 6, 8, 8}, .fc_units = 12, .z_units = 5, .mi_units = 9, .beta = 1, .seed = 7};
    enum { N = 3 };
    amdim_dim *d;
    char err[256];
    REQUIRE(amdim_dim_create(&cfg, 4, &d, err, sizeof err) == 0, "%s", err);
    size_t nf = amdim_dim_block_floats(d);
    float *w = calloc(nf, 4), *w0 = calloc(nf, 4);
    amdim_dim_init_weights(d, w);
    amdim_rng rng;
    amdim_rng_init(&rng, 9, 0, 0);
    for (int i = 0; i < amdim_dim_tensor_count(d); i++) { /* non-trivial running statistics */
        const amdim_dim_tensor *t = amdim_dim_tensor_at(d, i);
        if (strstr(t->name, "running_mean") || strstr(t->name, "running_var"))
            for (size_t k = 0; k < t->size; k++)
                w[t->offset + k] = strstr(t->name, "mean") ? amdim_rng_uniform(&rng, -0.5f, 0.5f)
                                                           : amdim_rng_uniform(&rng, 0.5f, 2.0f);
    }
    memcpy(w0, w, nf * 4);
    float x[N * 3 * 32 * 32], conv[N * 128], fc[N * 12], z[N * 5], z2[N * 5];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        x[i] = amdim_rng_uniform(&rng, -1, 1);
    CHECK(amdim_dim_tap_units(d, AMDIM_DIM_TAP_CONV) == 8 * 4 * 4 && amdim_dim_tap_units(d, AMDIM_DIM_TAP_FC) == 12 &&
              amdim_dim_tap_units(d, AMDIM_DIM_TAP_Z) == 5,
          "tap widths %d %d %d", amdim_dim_tap_units(d, 0), amdim_dim_tap_units(d, 1), amdim_dim_tap_units(d, 2));
    REQUIRE(amdim_dim_features(d, w, x, N, AMDIM_DIM_TAP_CONV, conv) == 0, "%s", amdim_dim_error(d));
    REQUIRE(amdim_dim_features(d, w, x, N, AMDIM_DIM_TAP_FC, fc) == 0, "%s", amdim_dim_error(d));
    REQUIRE(amdim_dim_features(d, w, x, N, AMDIM_DIM_TAP_Z, z) == 0, "%s", amdim_dim_error(d));
    REQUIRE(amdim_dim_features(d, w, x, N, AMDIM_DIM_TAP_Z, z2) == 0, "%s", amdim_dim_error(d));
    CHECK(memcmp(z, z2, sizeof z) == 0 && memcmp(w, w0, nf * 4) == 0, "features changed the weights or differ");
    int nonneg = 1;
    for (int i = 0; i < N * 128; i++)
        nonneg &= conv[i] >= 0;
    for (int i = 0; i < N * 12; i++)
        nonneg &= fc[i] >= 0;
    CHECK(nonneg, "conv and fc are taken after ReLU");
    const amdim_dim_tensor *ow = amdim_dim_tensor_find(d, "encoder.net.layers.layer5.weight");
    const amdim_dim_tensor *ob = amdim_dim_tensor_find(d, "encoder.net.layers.layer5.bias");
    REQUIRE(ow && ob, "no output layer");
    double worst = 0;
    for (int i = 0; i < N; i++)
        for (int o = 0; o < 5; o++) {
            double s = w[ob->offset + o];
            for (int k = 0; k < 12; k++)
                s += (double)w[ow->offset + o * 12 + k] * fc[i * 12 + k];
            worst = fmax(worst, fabs(s - z[i * 5 + o]));
        }
    CHECK(worst < 1e-5, "z differs from the output layer on fc by %g", worst);
    CHECK(amdim_dim_features(d, w, x, 5, AMDIM_DIM_TAP_Z, z) == AMDIM_E_INVALID, "5 images into a batch of 4");
    free(w), free(w0);
    amdim_dim_destroy(d);
}

/* The taps against the reference's float64 evaluation-mode encoder on the same float32 weights. */
static void check_reference(const char *path)
{
    ref_file f;
    ref_load(&f, path);
    const int32_t *c = ref_get(&f, "cfg", REF_I32)->data;
    amdim_dim_config cfg = {.size = c[2],
                            .in_ch = c[1],
                            .widths = {c[6], c[7], c[8], c[9]},
                            .fc_units = c[3],
                            .z_units = c[4],
                            .mi_units = c[5],
                            .beta = 1,
                            .seed = 1};
    amdim_dim *d;
    char err[256];
    REQUIRE(amdim_dim_create(&cfg, c[0], &d, err, sizeof err) == 0, "%s", err);
    size_t nf = amdim_dim_block_floats(d);
    float *w = calloc(nf, 4);
    for (int i = 0; i < amdim_dim_tensor_count(d); i++) {
        const amdim_dim_tensor *t = amdim_dim_tensor_at(d, i);
        char name[128];
        snprintf(name, sizeof name, "w/%s", t->name);
        const ref_tensor *r = ref_get(&f, name, REF_F32);
        REQUIRE(r->count == t->size, "%s: %zu elements, the reference %zu", t->name, t->size, r->count);
        memcpy(w + t->offset, r->data, t->size * 4);
    }
    static const char *const taps[] = {"eval/conv", "eval/fc", "eval/z"};
    for (int tap = 0; tap < 3; tap++) {
        const ref_tensor *r = ref_get(&f, taps[tap], REF_F64);
        const double *ref = r->data;
        int units = amdim_dim_tap_units(d, tap);
        REQUIRE(r->count == (size_t)c[0] * units, "%s: %zu values, C %d x %d", taps[tap], r->count, c[0], units);
        float *out = calloc(r->count, 4);
        REQUIRE(amdim_dim_features(d, w, ref_get(&f, "x", REF_F32)->data, c[0], tap, out) == 0, "%s",
                amdim_dim_error(d));
        double worst = 0, scale = 0;
        for (size_t k = 0; k < r->count; k++) {
            worst = fmax(worst, fabs(out[k] - ref[k]));
            scale = fmax(scale, fabs(ref[k]));
        }
        CHECK(worst <= 1e-5 * (scale + 1), "%s: worst error %g (scale %g)", taps[tap], worst, scale);
        fprintf(stderr, "test_dim_classifiers: %s against the reference: worst error %.3g of scale %.3g\n", taps[tap],
                worst, scale);
        free(out);
    }
    free(w);
    amdim_dim_destroy(d);
    ref_free(&f);
}

/* ---- through the pipe --------------------------------------------------------------- */

/* `amdim-load LA lmdb | amdim-train TA`: amdim-train's exit code, its stderr in *err_text. */
static int pipe_run(const char *lmdb, const char *const la[], const char *const ta[], char **err_text)
{
    char *l[24], *t[40];
    int k = 0;
    l[k++] = (char *)load_bin;
    for (int i = 0; la[i]; i++)
        l[k++] = (char *)la[i];
    l[k++] = (char *)lmdb, l[k] = NULL;
    k = 0;
    t[k++] = (char *)train_bin;
    for (int i = 0; ta[i]; i++)
        t[k++] = (char *)ta[i];
    t[k] = NULL;
    test_pipeline p;
    test_pipeline_start(&p, l, t);
    test_pipeline_wait(&p);
    *err_text = test_read_file(p.peek_err, NULL);
    if (!*err_text)
        *err_text = strdup("");
    return WIFEXITED(p.peek_status) ? WEXITSTATUS(p.peek_status) : 128 + WTERMSIG(p.peek_status);
}

/* The last line of `kind` in RUN/metrics.jsonl, and the number of such lines (malloc'd). */
static char *last_line(const char *run, const char *kind, int *count)
{
    char path[4300], want[64];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    snprintf(want, sizeof want, "{\"kind\":\"%s\"", kind);
    char *text = test_read_file(path, NULL), *last = NULL;
    *count = 0;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n"))
        if (strncmp(line, want, strlen(want)) == 0)
            last = line, (*count)++;
    char *copy = strdup(last ? last : "");
    free(text);
    return copy;
}

static double value(const char *line, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, "\"%s\":", key);
    const char *p = strstr(line, k);
    return p ? strtod(p + strlen(k), NULL) : NAN;
}

#define LOAD32 "--workers", "1", "--batch", "8", "--seed", "5", "--preset", "dim32"

/* The heads on `features` of the encoder in init, 4 epochs at lr 1e-2, tested on the training split. */
static void classify(const char *data, const char *init, const char *features, const char *out, double *acc_mlp,
                     double *acc_lin)
{
    const char *la[] = {LOAD32, "--epochs", "4", NULL};
    const char *ta[] = {"--model", "dim",  "--classifiers", "--init", init, "--features",   features, "--out",
                        out,       "--lr", "1e-2",          "--eval", data, "--eval-split", "train",  "--log-every",
                        "4",       NULL};
    char *e;
    int rc = pipe_run(data, la, ta, &e);
    REQUIRE(rc == 0, "classifiers on %s failed (%d): %s", features, rc, e);
    CHECK(strstr(e, "test accuracy") && strstr(e, "evaluation mode"), "stderr: %s", e);
    free(e);
    int nc, ne;
    char *c = last_line(out, "classifier", &nc), *ev = last_line(out, "eval", &ne);
    CHECK(nc >= 4 && ne == 4, "%s: %d classifier lines, %d eval lines (want >= 4 and 4: one an epoch)", features, nc,
          ne);
    CHECK(isfinite(value(c, "cls_mlp")) && isfinite(value(c, "cls_lin")) && value(c, "train_acc_mlp") >= 0,
          "classifier line: %s", c);
    *acc_mlp = value(ev, "test_acc_mlp"), *acc_lin = value(ev, "test_acc_lin");
    fprintf(stderr, "test_dim_classifiers: features %s: accuracy on the training data mlp %.3f linear %.3f\n", features,
            *acc_mlp, *acc_lin);
    free(c), free(ev);
}

static int same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *x = test_read_file(a, &na), *y = test_read_file(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x), free(y);
    return same;
}

/* A 32 px split of 16 PNGs listed with label -1: unlabelled. */
static void make_unlabelled(const char *lmdb)
{
    char list[4300], png[4300];
    snprintf(list, sizeof list, "%s/unlabelled.txt", test_tmpdir());
    FILE *f = fopen(list, "w");
    REQUIRE(f, "cannot write %s", list);
    uint8_t rgb[32 * 32 * 3];
    for (int i = 0; i < 16; i++) {
        test_pattern(rgb, 32, 32, 3, (unsigned)i + 1);
        snprintf(png, sizeof png, "%s/u%02d.png", test_tmpdir(), i);
        test_write_png(png, rgb, 32, 32);
        fprintf(f, "u%02d.png -1\n", i);
    }
    fclose(f);
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_LIST;
    o.src = list, o.out = lmdb, o.split = "train";
    amdim_pack_summary sum;
    char err[512];
    REQUIRE(amdim_pack_run(&o, &sum, err, sizeof err) == 0, "%s", err);
}

static void check_errors(const char *data, const char *init)
{
    char *out, *e;
    char *a1[] = {(char *)train_bin, "--model", "dim", "--features", "z", "--out", (char *)test_path("e1"), NULL};
    int s = test_run(a1, &out, &e);
    CHECK(WIFEXITED(s) && WEXITSTATUS(s) == 2 && strstr(e, "--features") && strstr(e, "--classifiers"),
          "--features alone: %s", e);
    free(out), free(e);
    char *a2[] = {(char *)train_bin, "--model", "dim",   "--classifiers",         "--init", (char *)init,
                  "--features",      "y",       "--out", (char *)test_path("e2"), NULL};
    s = test_run(a2, &out, &e);
    CHECK(WIFEXITED(s) && WEXITSTATUS(s) == 2 && strstr(e, "conv, fc, z"), "--features y: %s", e);
    free(out), free(e);
    const char *la[] = {LOAD32, "--epochs", "1", NULL};
    const char *not_dim = test_path("not-a-run.safetensors");
    test_write_file(not_dim, "junk", 4);
    const char *ta[] = {"--model",    "dim", "--classifiers", "--init",        not_dim,
                        "--features", "z",   "--out",         test_path("e3"), NULL};
    int rc = pipe_run(data, la, ta, &e);
    CHECK(rc == 1 && strstr(e, "is not a Deep InfoMax run"), "a junk --init: %d %s", rc, e);
    free(e);
    const char *unl = test_path("unlabelled.lmdb");
    make_unlabelled(unl);
    const char *lu[] = {LOAD32, NULL};
    const char *tu[] = {"--model",    "dim", "--classifiers", "--init",        init,
                        "--features", "z",   "--out",         test_path("e4"), NULL};
    rc = pipe_run(unl, lu, tu, &e);
    CHECK(rc == 1 && strstr(e, "labelled data"), "unlabelled data: %d %s", rc, e);
    free(e);
}

static void check_pipe(void)
{
    char data[4300], init[4300], runz[4300], runz2[4300], runfc[4300];
    snprintf(data, sizeof data, "%s", test_path("stripes.lmdb"));
    snprintf(init, sizeof init, "%s", test_path("dim"));
    snprintf(runz, sizeof runz, "%s", test_path("cls-z"));
    snprintf(runz2, sizeof runz2, "%s", test_path("cls-z2"));
    snprintf(runfc, sizeof runfc, "%s", test_path("cls-fc"));
    test_make_stripes(data, 64, 8);
    const char *la[] = {LOAD32, NULL};
    const char *ta[] = {"--model", "dim", "--out", init, "--steps", "8", "--keep", "1", NULL};
    char *e;
    int rc = pipe_run(data, la, ta, &e);
    REQUIRE(rc == 0, "the DIM run failed: %s", e);
    free(e);
    check_errors(data, init);
    double zm, zl, fm, fl, zm2, zl2;
    classify(data, init, "z", runz, &zm, &zl);
    classify(data, init, "fc", runfc, &fm, &fl);
    CHECK(zm > 0.5 && zl > 0.5 && fm > 0.5 && fl > 0.5, "accuracies z %g %g, fc %g %g: want > 0.5 (chance 0.2)", zm, zl,
          fm, fl);
    classify(data, init, "z", runz2, &zm2, &zl2);
    char a[4400], b[4400];
    snprintf(a, sizeof a, "%s/metrics.jsonl", runz), snprintf(b, sizeof b, "%s/metrics.jsonl", runz2);
    CHECK(same_file(a, b), "two runs with one seed wrote different metrics");
    snprintf(a, sizeof a, "%s/classifiers-32.safetensors", runz);
    snprintf(b, sizeof b, "%s/classifiers-32.safetensors", runz2);
    CHECK(test_exists(a) && same_file(a, b), "two runs with one seed wrote different heads (%s)", a);
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 4, "usage: test_dim_classifiers AMDIM-LOAD AMDIM-TRAIN DIM_REF_EVAL32");
    load_bin = argv[1], train_bin = argv[2];
    check_cross_entropy();
    check_head_gradient();
    check_features();
    check_reference(argv[3]);
    check_pipe();
    return test_finish("test_dim_classifiers");
}
