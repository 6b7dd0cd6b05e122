/* amdim-load --preset dim32 | amdim-train --model dim on the CPU through
 * the real pipe, at the authors' widths with batch 8: every metrics line
 * holds finite loss terms; the checkpoint holds amdim_dim's tensor table
 * (names, shapes, dtypes) and Adam's moments; 2 steps + resume to 4 equals
 * 4 in one go, bit for bit (losses and both checkpoint files); the 28 px
 * encoder takes one channel; bad flags, an AMDIM checkpoint given to
 * --model dim and the reverse, other view sizes and --device cuda give
 * clear errors. Arguments: amdim-load, amdim-train. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdim_dim.h"
#include "amdim_pack.h"
#include "safetensors_internal.h"
#include "testutil.h"

static const char *load_bin, *train_bin;
static char data[4200], data28[4200];

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* An MNIST-like IDX dataset of `count` 28x28 grey images (split train) at path. */
static void make_idx28(const char *path, int count)
{
    size_t bytes = 16 + (size_t)count * 28 * 28;
    uint8_t *img = calloc(bytes, 1), *lab = calloc(8 + (size_t)count, 1);
    REQUIRE(img && lab, "out of memory");
    put_be32(img, 0x803), put_be32(img + 4, (uint32_t)count), put_be32(img + 8, 28), put_be32(img + 12, 28);
    put_be32(lab, 0x801), put_be32(lab + 4, (uint32_t)count);
    for (int i = 0; i < count; i++) {
        lab[8 + i] = (uint8_t)(i % 5);
        for (int p = 0; p < 28 * 28; p++)
            img[16 + (size_t)i * 784 + p] = (uint8_t)(((p % 28) / (2 + i % 5)) % 2 ? 220 : 30);
    }
    char ip[4300], lp[4300];
    snprintf(ip, sizeof ip, "%s/idx28-images", test_tmpdir());
    snprintf(lp, sizeof lp, "%s/idx28-labels", test_tmpdir());
    test_write_file(ip, img, bytes);
    test_write_file(lp, lab, 8 + (size_t)count);
    free(img);
    free(lab);
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_IDX;
    o.src = ip;
    o.labels = lp;
    o.out = path;
    o.split = "train";
    amdim_pack_summary sum;
    char err[512];
    REQUIRE(amdim_pack_run(&o, &sum, err, sizeof err) == 0, "%s", err);
}

/* Runs `amdim-load LOADARGS data | amdim-train TRAINARGS`; returns
 * amdim-train's exit code and its stderr in *err_text. */
static int train_on(const char *lmdb, const char *const la[], const char *const ta[], char **err_text)
{
    char *l[32], *t[48];
    int n = 0;
    l[n++] = (char *)load_bin;
    for (int i = 0; la[i]; i++)
        l[n++] = (char *)la[i];
    l[n++] = (char *)lmdb;
    l[n] = NULL;
    n = 0;
    t[n++] = (char *)train_bin;
    for (int i = 0; ta[i]; i++)
        t[n++] = (char *)ta[i];
    t[n] = NULL;
    test_pipeline p;
    test_pipeline_start(&p, l, t);
    test_pipeline_wait(&p);
    *err_text = test_read_file(p.peek_err, NULL);
    if (!*err_text)
        *err_text = strdup("");
    return WIFEXITED(p.peek_status) ? WEXITSTATUS(p.peek_status) : 128 + WTERMSIG(p.peek_status);
}

static int train(const char *const la[], const char *const ta[], char **err_text)
{
    return train_on(data, la, ta, err_text);
}

/* amdim-train alone (refused before it reads the pipe): its exit code and stderr. */
static int train_alone(char *const argv[], char **err_text)
{
    char *out;
    int s = test_run(argv, &out, err_text);
    free(out);
    return WIFEXITED(s) ? WEXITSTATUS(s) : 128;
}

/* The value of "key": in a JSON line (0 and *ok = 0 if absent or not finite). */
static double field(const char *line, const char *key, int *ok)
{
    char k[64];
    snprintf(k, sizeof k, "\"%s\":", key);
    const char *at = strstr(line, k);
    if (!at) {
        *ok = 0;
        return 0;
    }
    char *end;
    double v = strtod(at + strlen(k), &end);
    if (end == at + strlen(k) || !isfinite(v))
        *ok = 0;
    return v;
}

/* The train lines of a run's metrics.jsonl (malloc'd text) and how many;
 * every line's loss terms, step, epoch and rate must be finite numbers. */
static int check_metrics(const char *run, char **text)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    *text = test_read_file(path, NULL);
    int lines = 0;
    static const char *keys[] = {"step", "epoch", "loss", "encoder",     "local",     "global", "prior",
                                 "disc", "gp",    "lr",   "pairs_per_s", "data_wait", NULL};
    for (char *p = *text; p && (p = strstr(p, "{\"kind\":\"train\"")); p++) {
        char line[2048];
        snprintf(line, sizeof line, "%.*s", (int)strcspn(p, "\n"), p);
        int ok = strstr(line, "\"model\":\"dim\"") != NULL;
        for (int k = 0; keys[k]; k++)
            field(line, keys[k], &ok);
        CHECK(ok && (int)field(line, "step", &ok) == lines + 1, "metrics line %d: %s", lines + 1, line);
        lines++;
    }
    return lines;
}

#define LOADER(preset) "--workers", "1", "--batch", "8", "--seed", "5", "--preset", preset
#define DIM "--model", "dim", "--log-every", "1", "--keep", "1"

static void check_errors(const char *runE)
{
    char *e;
    struct {
        const char *a[8], *want;
    } cases[] = {
        {{"--model", "dim", "--out", runE, "--device", "cuda"}, "Deep InfoMax runs on the CPU only so far"},
        {{"--model", "dim", "--out", runE, "--dim-preset", "medium"}, "--dim-preset"},
        {{"--model", "dim", "--out", runE, "--dim-alpha", "-1"}, "--dim-alpha"},
        {{"--model", "dim", "--out", runE, "--dim-gamma", "nan"}, "--dim-gamma"},
        {{"--out", runE, "--dim-beta", "0.5"}, "give --model dim"},
        {{"--model", "dim", "--out", runE, "--ndf", "8"}, "--ndf is an AMDIM option"},
        {{"--model", "simclr", "--out", runE}, "--model"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *argv[12] = {(char *)train_bin};
        for (int k = 0; cases[i].a[k]; k++)
            argv[k + 1] = (char *)cases[i].a[k];
        int rc = train_alone(argv, &e);
        CHECK(rc == 2 && strstr(e, cases[i].want), "case %zu: exit %d, want 2 and '%s': %s", i, rc, cases[i].want, e);
        free(e);
    }
    /* both global and local weights 0: nothing to maximise */
    const char *l32[] = {LOADER("dim32"), NULL};
    const char *t0[] = {DIM, "--out", runE, "--dim-alpha", "0", "--dim-beta", "0", "--steps", "1", NULL};
    int rc = train(l32, t0, &e);
    CHECK(rc == 1 && strstr(e, "at least one"), "alpha = beta = 0: exit %d, %s", rc, e);
    free(e);
    /* AMDIM's views are not DIM's */
    const char *lc[] = {"--workers", "1", "--batch", "8", "--preset", "cifar", NULL};
    const char *tc[] = {DIM, "--out", runE, "--steps", "1", NULL};
    rc = train(lc, tc, &e);
    CHECK(rc == 1 && strstr(e, "cifar preset") && strstr(e, "dim32"), "cifar preset: exit %d, %s", rc, e);
    free(e);
}

/* The weights file's tensors are amdim_dim's table: names, shapes, dtypes;
 * the optimiser file holds both moments of every trainable tensor. */
static void check_checkpoint(const char *run, uint64_t step)
{
    char wpath[4300], opath[4300], err[1024];
    snprintf(wpath, sizeof wpath, "%s/ckpt-%08llu.safetensors", run, (unsigned long long)step);
    snprintf(opath, sizeof opath, "%s/ckpt-%08llu.optim.safetensors", run, (unsigned long long)step);
    amdim_dim_config cfg = {.size = 32, .alpha = 0.5f, .beta = 1, .gamma = 0.1f};
    amdim_dim *d;
    REQUIRE(amdim_dim_create(&cfg, 8, &d, err, sizeof err) == 0, "%s", err);
    amdim_safetensors_file f, o;
    REQUIRE(amdim_safetensors_open(&f, wpath, err, sizeof err) == 0, "%s", err);
    REQUIRE(amdim_safetensors_open(&o, opath, err, sizeof err) == 0, "%s", err);
    int count = amdim_dim_tensor_count(d), trainable = 0;
    CHECK(f.nt == count, "%d tensors in %s, the model has %d", f.nt, wpath, count);
    for (int i = 0; i < count; i++) {
        const amdim_dim_tensor *x = amdim_dim_tensor_at(d, i);
        const amdim_safetensors_tensor *t = amdim_safetensors_find(&f, x->name);
        int same = t && t->ndim == x->ndim && strcmp(t->dtype, x->ndim ? "F32" : "I64") == 0;
        for (int k = 0; same && k < x->ndim; k++)
            same = t->shape[k] == x->shape[k];
        CHECK(same, "tensor %s: missing or of another shape or dtype", x->name);
        if (!x->trainable)
            continue;
        trainable++;
        char name[128];
        snprintf(name, sizeof name, "exp_avg_sq.%s", x->name);
        CHECK(amdim_safetensors_find(&o, name), "%s lacks %s", opath, name);
    }
    CHECK(o.nt == 2 * trainable, "%d moment tensors, want %d", o.nt, 2 * trainable);
    const amdim_safetensors_tensor *c0 = amdim_safetensors_find(&f, "encoder.net.layers.layer0.conv.weight");
    CHECK(c0 && c0->ndim == 4 && c0->shape[0] == 64 && c0->shape[1] == 3 && c0->shape[2] == 4, "the first conv");
    const char *model = amdim_safetensors_meta(&f, "model"), *st = amdim_safetensors_meta(&f, "step");
    const char *kind = amdim_safetensors_meta(&o, "kind");
    CHECK(model && strcmp(model, "dim") == 0 && st && strtoull(st, NULL, 10) == step && kind &&
              strcmp(kind, "optimizer") == 0,
          "metadata: model %s step %s kind %s", model ? model : "-", st ? st : "-", kind ? kind : "-");
    printf("checkpoint: %d tensors (%d trainable), %zu + %zu bytes\n", count, trainable, f.size, o.size);
    amdim_safetensors_close(&f);
    amdim_safetensors_close(&o);
    amdim_dim_destroy(d);
}

/* Two files the same, byte for byte. */
static int same_file(const char *a, const char *b)
{
    size_t la, lb;
    char *fa = test_read_file(a, &la), *fb = test_read_file(b, &lb);
    int same = fa && fb && la == lb && memcmp(fa, fb, la) == 0;
    free(fa);
    free(fb);
    return same;
}

/* The unbroken run's and the resumed run's checkpoint files at step 4. */
static void check_same_checkpoints(const char *runA, const char *runB)
{
    char a[4300], b[4300];
    snprintf(a, sizeof a, "%s/ckpt-00000004.safetensors", runA);
    snprintf(b, sizeof b, "%s/ckpt-00000004.safetensors", runB);
    CHECK(same_file(a, b), "the resumed run's weights differ from the unbroken run's (%s, %s)", a, b);
    snprintf(a, sizeof a, "%s/ckpt-00000004.optim.safetensors", runA);
    snprintf(b, sizeof b, "%s/ckpt-00000004.optim.safetensors", runB);
    CHECK(same_file(a, b), "the resumed run's Adam moments differ from the unbroken run's");
}

/* An AMDIM run's checkpoint given to --model dim, a DIM run's to AMDIM,
 * and a DIM run resumed on other views: each refused, naming the cause. */
static void check_cross_kinds(const char *runA, const char *runC)
{
    char *e;
    const char *lc[] = {"--workers", "1", "--batch", "8", "--preset", "cifar", NULL};
    const char *tc[] = {"--out", runC, "--ndf", "8", "--n-rkhs", "32", "--n-depth", "1", "--steps", "0", NULL};
    int rc = train(lc, tc, &e);
    REQUIRE(rc == 0, "the AMDIM run failed: %s", e);
    free(e);
    const char *l32[] = {LOADER("dim32"), NULL};
    const char *td[] = {DIM, "--resume", runC, "--steps", "2", NULL};
    rc = train(l32, td, &e);
    CHECK(rc == 1 && strstr(e, "is an AMDIM checkpoint"), "AMDIM checkpoint to --model dim: exit %d, %s", rc, e);
    free(e);
    const char *ta[] = {"--resume", runA, "--steps", "6", NULL};
    rc = train(lc, ta, &e);
    CHECK(rc == 1 && strstr(e, "is a Deep InfoMax checkpoint") && strstr(e, "--model dim"),
          "DIM checkpoint to AMDIM: exit %d, %s", rc, e);
    free(e);
    char ck[4300], runP[4300];
    snprintf(ck, sizeof ck, "%s/ckpt-00000004.safetensors", runA);
    snprintf(runP, sizeof runP, "%s", test_path("runP"));
    const char *tp[] = {"--classifiers", "--init", ck, "--out", runP, NULL};
    rc = train(lc, tp, &e);
    CHECK(rc == 1 && strstr(e, "is a Deep InfoMax checkpoint"), "DIM checkpoint to --classifiers: exit %d, %s", rc, e);
    free(e);
    const char *l64[] = {LOADER("dim64"), NULL};
    const char *t64[] = {DIM, "--resume", runA, "--steps", "6", NULL};
    rc = train(l64, t64, &e);
    CHECK(rc == 1 && strstr(e, "32 px") && strstr(e, "64 px"), "dim64 views into a 32 px run: exit %d, %s", rc, e);
    free(e);
    const char *tg[] = {DIM, "--resume", runA, "--steps", "6", "--dim-gamma", "1", NULL};
    rc = train(l32, tg, &e);
    CHECK(rc == 1 && strstr(e, "--dim-gamma 1") && strstr(e, "made with 0.1"), "resume with another gamma: %d %s", rc,
          e);
    free(e);
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 3, "usage: test_dim_run AMDIM-LOAD AMDIM-TRAIN");
    load_bin = argv[1];
    train_bin = argv[2];
    snprintf(data, sizeof data, "%s", test_path("data.lmdb"));
    test_make_stripes(data, 64, 8);
    char runA[4200], runB[4200], runC[4200], runE[4200], run28[4200];
    snprintf(runA, sizeof runA, "%s", test_path("runA"));
    snprintf(runB, sizeof runB, "%s", test_path("runB"));
    snprintf(runC, sizeof runC, "%s", test_path("runC"));
    snprintf(runE, sizeof runE, "%s", test_path("runE"));
    snprintf(run28, sizeof run28, "%s", test_path("run28"));
    check_errors(runE);

    /* One go: 4 steps with all terms (the DIM(L) preset, a global weight over it). */
    char *e, *mb, *ma;
    const char *l32[] = {LOADER("dim32"), NULL};
    const char *tb[] = {DIM, "--out", runB, "--dim-preset", "local", "--dim-alpha", "0.5", "--steps", "4", NULL};
    int rc = train(l32, tb, &e);
    REQUIRE(rc == 0, "training failed: %s", e);
    CHECK(strstr(e, "alpha 0.5 beta 1 gamma 0.1, estimator jsd") && strstr(e, "Adam lr 0.0001 betas (0.5, 0.999)"),
          "banner: %s", e);
    free(e);
    int nb = check_metrics(runB, &mb);
    CHECK(nb == 4, "%d train lines, want 4", nb);
    check_checkpoint(runB, 4);

    /* 2 steps, then resumed to 4: the same losses and the same checkpoint bytes. */
    const char *ta1[] = {DIM, "--out", runA, "--dim-preset", "local", "--dim-alpha", "0.5", "--steps", "2", NULL};
    rc = train(l32, ta1, &e);
    REQUIRE(rc == 0, "first half failed: %s", e);
    free(e);
    const char *lr[] = {"--workers", "1", "--batch", "8", "--preset", "dim32", NULL};
    const char *ta2[] = {DIM, "--resume", runA, "--steps", "4", NULL};
    rc = train(lr, ta2, &e);
    REQUIRE(rc == 0, "resume failed: %s", e);
    CHECK(strstr(e, "from epoch 0 batch 2 (step 2)"), "resumed from the wrong place: %s", e);
    free(e);
    int na = check_metrics(runA, &ma);
    CHECK(na == 4, "%d lines in the resumed run, want 4", na);
    for (int i = 0; i < 4 && na == 4; i++) {
        char key[16], *pa = ma, *pb = mb;
        snprintf(key, sizeof key, "\"step\":%d,", i + 1);
        pa = strstr(pa, key), pb = strstr(pb, key);
        REQUIRE(pa && pb, "step %d missing", i + 1);
        size_t la = strstr(pa, "\"lr\"") - pa, lb = strstr(pb, "\"lr\"") - pb;
        CHECK(la == lb && memcmp(pa, pb, la) == 0, "step %d: %.*s vs %.*s", i + 1, (int)la, pa, (int)lb, pb);
    }
    free(ma);
    free(mb);
    check_same_checkpoints(runA, runB);
    check_cross_kinds(runA, runC);

    /* 28 px: one grey channel */
    const char *l28[] = {LOADER("dim28"), NULL};
    const char *t28[] = {DIM, "--out", run28, "--steps", "1", NULL};
    snprintf(data28, sizeof data28, "%s", test_path("idx28.lmdb"));
    make_idx28(data28, 16);
    rc = train_on(data28, l28, t28, &e);
    CHECK(rc == 0 && strstr(e, "28 px encoder (1 input channel)"), "dim28: exit %d, %s", rc, e);
    free(e);
    return test_finish("test_dim_run");
}
