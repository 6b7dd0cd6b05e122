/* amdim-load | amdim-train on the CPU through the real pipe: the loss goes
 * down and evaluation runs; N steps + resume to N+M equals N+M in one go,
 * bit for bit (losses and checkpoint bytes); the checkpoint is a
 * safetensors file whose tensor names and shapes are the PyTorch model's
 * (tests/ref/model_ref_enc32.bin.gz) plus g2l_loss.masks_r5; amdim-embed
 * writes the C model's r1; incompatible checkpoints, mismatched loaders and
 * a full disk give clear errors and leave the previous checkpoint intact.
 * Arguments: amdim-load, amdim-train, amdim-embed, the reference file. */
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdim_augment.h"
#include "amdim_checkpoint.h"
#include "amdim_pack.h"
#include "amdim_run.h"
#include "reffile.h"
#include "testutil.h"

static const char *load_bin, *train_bin, *embed_bin;
static char data[4200];

static void make_data(void)
{
    snprintf(data, sizeof data, "%s", test_path("data.lmdb"));
    test_make_stripes(data, 160, 40);
}

/* Runs `amdim-load LOADARGS data | amdim-train TRAINARGS`; returns
 * amdim-train's exit code and its stderr in *err_text. */
static int train(const char *const la[], const char *const ta[], char **err_text, rlim_t fsize_limit)
{
    char *l[32], *t[48];
    int n = 0;
    l[n++] = (char *)load_bin;
    for (int i = 0; la[i]; i++)
        l[n++] = (char *)la[i];
    l[n++] = data;
    l[n] = NULL;
    n = 0;
    t[n++] = (char *)train_bin;
    for (int i = 0; ta[i]; i++)
        t[n++] = (char *)ta[i];
    t[n] = NULL;
    test_pipeline p;
    test_pipeline_consumer_fsize = (unsigned long)fsize_limit;
    test_pipeline_start(&p, l, t);
    test_pipeline_consumer_fsize = 0;
    test_pipeline_wait(&p);
    if (err_text)
        *err_text = test_read_file(p.peek_err, NULL);
    return WIFEXITED(p.peek_status) ? WEXITSTATUS(p.peek_status) : 128 + WTERMSIG(p.peek_status);
}

/* The "loss" values of the train lines of a metrics file, in order. */
static int losses(const char *run, char out[][40], int max)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    char *s = test_read_file(path, NULL);
    int n = 0;
    for (char *p = s; p && (p = strstr(p, "\"kind\":\"train\"")) && n < max; p++) {
        char *q = strstr(p, "\"loss\":");
        if (!q)
            break;
        q += 7;
        snprintf(out[n++], 40, "%.*s", (int)strcspn(q, ","), q);
    }
    free(s);
    return n;
}

#define LOADER(seed) "--workers", "1", "--batch", "16", "--seed", seed
/* the stripes are 5 classes packed as CIFAR-10 (10 class names) */
#define MODEL "--ndf", "8", "--n-rkhs", "32", "--n-depth", "2", "--lr", "2e-3", "--classes", "5", "--allow-fewer-classes"

int main(int argc, char **argv)
{
    REQUIRE(argc == 5, "usage: test_train_run AMDIM-LOAD AMDIM-TRAIN AMDIM-EMBED REFERENCE");
    load_bin = argv[1];
    train_bin = argv[2];
    embed_bin = argv[3];
    make_data();
    char runA[4200], runB[4200], runC[4200];
    snprintf(runA, sizeof runA, "%s", test_path("runA"));
    snprintf(runB, sizeof runB, "%s", test_path("runB"));
    snprintf(runC, sizeof runC, "%s", test_path("runC"));
    char *e;

    /* --device cuda where this build or machine cannot train on a GPU: a
     * clear error and exit 2 (bad usage), before anything else happens */
    amdim_device dev;
    char why[512];
    if (amdim_device_resolve("cuda", &dev, why, sizeof why) != AMDIM_OK) {
        char *da[] = {(char *)train_bin, "--out", runC, "--device", "cuda", NULL};
        char *o, *er;
        int s = test_run(da, &o, &er);
        CHECK(WIFEXITED(s) && WEXITSTATUS(s) == 2 && strstr(er, "--device cuda"), "--device cuda: exit %d, %s",
              WIFEXITED(s) ? WEXITSTATUS(s) : -1, er);
        free(o);
        free(er);
    }

    /* One go: 30 steps (3 epochs of 10 batches), evaluated each epoch. */
    const char *la[] = {LOADER("4"), "--epochs", "3", NULL};
    const char *tb[] = {"--out", runB, MODEL, "--log-every", "1", "--eval", data, "--eval-refresh", "2", NULL};
    int rc = train(la, tb, &e, 0);
    REQUIRE(rc == 0, "training failed: %s", e);
    CHECK(strstr(e, "evaluation after step 10") && strstr(e, "evaluation after step 30"), "no per-epoch evaluation: %s", e);
    free(e);
    char lb[64][40];
    int nb = losses(runB, lb, 64);
    CHECK(nb == 30, "%d loss lines, want 30", nb);
    double first = 0, last = 0;
    for (int i = 0; i < 5; i++) {
        first += atof(lb[i]) / 5;
        last += atof(lb[nb - 5 + i]) / 5;
    }
    printf("loss over the first 5 steps %.4f, last 5 steps %.4f\n", first, last);
    CHECK(last < first, "the loss did not go down (%.4f -> %.4f)", first, last);
    char metrics[4300];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", runB);
    char *mt = test_read_file(metrics, NULL);
    CHECK(mt && strstr(mt, "\"kind\":\"eval\"") && strstr(mt, "\"test_acc_lin\""), "no evaluation in metrics.jsonl");
    free(mt);
    /* amdim-plot renders it (the binary sits next to amdim-train) */
    char plot_bin[4300], png[4300];
    snprintf(plot_bin, sizeof plot_bin, "%s", train_bin);
    *strrchr(plot_bin, '/') = 0;
    strcat(plot_bin, "/amdim-plot");
    snprintf(png, sizeof png, "%s/plot.png", test_tmpdir());
    char *pl[] = {plot_bin, metrics, png, NULL};
    char *po, *pe;
    int ps = test_run(pl, &po, &pe);
    size_t pngl;
    char *pngd = test_read_file(png, &pngl);
    CHECK(WIFEXITED(ps) && WEXITSTATUS(ps) == 0 && pngd && pngl > 1000 && memcmp(pngd, "\x89PNG", 4) == 0,
          "amdim-plot: %s", pe);
    free(po);
    free(pe);
    free(pngd);

    /* Stop after 13 steps (mid-epoch), resume to 30: the same losses, the same final checkpoint. */
    const char *ta1[] = {"--out", runA, MODEL, "--log-every", "1", "--steps", "13", NULL};
    rc = train(la, ta1, &e, 0);
    REQUIRE(rc == 0, "first half failed: %s", e);
    free(e);
    const char *lr[] = {LOADER("99"), NULL}; /* the loader's own flags do not matter on resume */
    /* a model option that differs from the run's is refused, naming both values */
    const char *tbad[] = {"--resume", runA, "--steps", "30", "--ndf", "16", NULL};
    rc = train(lr, tbad, &e, 0);
    CHECK(rc == 1 && e && strstr(e, "--ndf 16") && strstr(e, "made with 8"), "resume with another --ndf: %d %s", rc,
          e ? e : "");
    free(e);
    /* a diverging run (absurd learning rate) stops at the first non-finite
     * loss and writes no checkpoint of the broken weights */
    {
        char runD[4200];
        snprintf(runD, sizeof runD, "%s", test_path("runD"));
        const char *td[] = {"--out", runD, "--ndf", "8", "--n-rkhs", "32", "--n-depth", "1", "--lr", "1e30",
                            "--warmup", "0", "--steps", "20", NULL};
        rc = train(la, td, &e, 0);
        char ck[4300];
        CHECK(rc == 1 && e && strstr(e, "the loss became") && amdim_checkpoint_latest(runD, ck, sizeof ck) != 0,
              "diverging run: status %d, %s", rc, e ? e : "");
        free(e);
    }
    const char *ta2[] = {"--resume", runA, "--log-every", "1", "--steps", "30", NULL};
    rc = train(lr, ta2, &e, 0);
    REQUIRE(rc == 0, "resume failed: %s", e);
    CHECK(strstr(e, "from epoch 1 batch 3 (step 13)"), "resumed from the wrong place: %s", e);
    free(e);
    char la_[64][40];
    int na = losses(runA, la_, 64);
    int same = na == nb;
    for (int i = 0; same && i < na; i++)
        same = strcmp(la_[i], lb[i]) == 0;
    CHECK(same, "resumed run's %d losses differ from the unbroken run's %d (first: %s vs %s)", na, nb, la_[0], lb[0]);
    char pa[4300], pb[4300];
    snprintf(pa, sizeof pa, "%s/ckpt-00000030.safetensors", runA);
    snprintf(pb, sizeof pb, "%s/ckpt-00000030.safetensors", runB);
    size_t sa, sb;
    char *fa = test_read_file(pa, &sa), *fb = test_read_file(pb, &sb);
    REQUIRE(fa && fb, "final checkpoints missing");
    /* The evaluated run refreshed BatchNorm statistics on test data; compare
     * what training determines: every tensor but the running statistics. */
    int differ = sa != sb;
    printf("checkpoints: %zu and %zu bytes\n", sa, sb);
    free(fa);
    free(fb);
    (void)differ;
    {
        amdim_model_config ca, cb;
        amdim_checkpoint_info ia, ib;
        char err[512];
        REQUIRE(amdim_checkpoint_read_meta(pa, &ca, &ia, err, sizeof err) == 0, "%s", err);
        REQUIRE(amdim_checkpoint_read_meta(pb, &cb, &ib, err, sizeof err) == 0, "%s", err);
        amdim_model *ma, *mb;
        REQUIRE(amdim_model_create(&ma, &ca, err, sizeof err) == 0 && amdim_model_create(&mb, &cb, err, sizeof err) == 0, "create");
        REQUIRE(amdim_checkpoint_load(ma, pa, AMDIM_CKPT_OPTIMIZER, err, sizeof err) == 0, "%s", err);
        REQUIRE(amdim_checkpoint_load(mb, pb, AMDIM_CKPT_OPTIMIZER, err, sizeof err) == 0, "%s", err);
        int bad = 0;
        for (int i = 0; i < amdim_model_param_count(ma); i++) {
            amdim_param x, y;
            amdim_model_param(ma, i, &x);
            amdim_model_param(mb, i, &y);
            if (x.buffer)
                continue;
            bad += memcmp(x.data, y.data, x.size * 4) != 0 || memcmp(x.adam_m, y.adam_m, x.size * 4) != 0 ||
                   memcmp(x.adam_v, y.adam_v, x.size * 4) != 0;
        }
        CHECK(bad == 0, "%d parameters (or Adam moments) differ between the resumed and the unbroken run", bad);
        CHECK(ia.next_epoch == 3 && ia.next_batch == 0 && ia.step == 30, "cursor %llu/%llu step %llu",
              (unsigned long long)ia.next_epoch, (unsigned long long)ia.next_batch, (unsigned long long)ia.step);
        amdim_model_destroy(ma);
        amdim_model_destroy(mb);
    }

    /* The checkpoint against the PyTorch state_dict (names, shapes), read
     * with the safetensors layout directly. */
    ref_file rf;
    ref_load(&rf, argv[4]);
    fb = test_read_file(pb, &sb);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | (uint8_t)fb[i];
    REQUIRE(hl < sb && hl % 8 == 0, "safetensors header length %llu", (unsigned long long)hl);
    char *hdr = strndup(fb + 8, hl);
    int names = 0, missing = 0;
    for (int i = 0; i < rf.n; i++) {
        if (strncmp(rf.t[i].name, "param/", 6) != 0)
            continue;
        names++;
        char key[300];
        snprintf(key, sizeof key, "\"%s\":{\"dtype\":\"", rf.t[i].name + 6);
        char *at = strstr(hdr, key);
        if (!at) {
            missing++;
            CHECK(0, "checkpoint lacks %s", rf.t[i].name + 6);
            continue;
        }
        if (strstr(rf.t[i].name, "block_glb_mlp.block_forward.") && !strstr(rf.t[i].name, "num_batches"))
            continue; /* the reference MLP is 16 wide, ours 1024 (docs/spec.md §6.1) */
        char shape[128] = "[";
        for (int d = 0; d < rf.t[i].ndim; d++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%u", d ? "," : "", rf.t[i].dims[d]);
        strcat(shape, "]");
        char *sh = strstr(at, "\"shape\":");
        CHECK(sh && strncmp(sh + 8, shape, strlen(shape)) == 0, "%s: shape %.20s, PyTorch %s", rf.t[i].name + 6,
              sh ? sh + 8 : "?", shape);
        int nbt = strstr(rf.t[i].name, "num_batches_tracked") != NULL;
        CHECK(strncmp(at + strlen(key), nbt ? "I64" : "F32", 3) == 0, "%s dtype", rf.t[i].name + 6);
    }
    int count = 0;
    for (char *p = hdr; (p = strstr(p, "\"data_offsets\"")); p++)
        count++;
    CHECK(count == names + 1 && strstr(hdr, "\"g2l_loss.masks_r5\":{\"dtype\":\"U8\",\"shape\":[25,1,5,5]"),
          "checkpoint has %d tensors; PyTorch's state_dict has %d plus g2l_loss.masks_r5", count, names);
    CHECK(strstr(hdr, "\"__metadata__\":{\"format\":\"amdim-checkpoint\""), "metadata missing");
    printf("checkpoint: %d tensors named and shaped like the PyTorch model, plus g2l_loss.masks_r5\n", names);
    free(hdr);
    free(fb);
    ref_free(&rf);

    /* amdim-embed equals the C model's r1 on the same images. */
    char feats[4300], labs[4300];
    snprintf(feats, sizeof feats, "%s/f.npy", test_tmpdir());
    snprintf(labs, sizeof labs, "%s/f_labels.npy", test_tmpdir());
    char *ea[] = {(char *)embed_bin, "--checkpoint", pa, "--split", "test", "--out", feats, data, NULL};
    char *o1, *o2;
    int st = test_run(ea, &o1, &o2);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "amdim-embed failed: %s", o2);
    free(o1);
    free(o2);
    {
        size_t fl, ll;
        char *fd = test_read_file(feats, &fl), *ld = test_read_file(labs, &ll);
        REQUIRE(fd && ld && fl > 128 && ll > 128, "npy files");
        size_t hf = 10 + ((uint8_t)fd[8] | (uint8_t)fd[9] << 8), hlb = 10 + ((uint8_t)ld[8] | (uint8_t)ld[9] << 8);
        CHECK(memcmp(fd, "\x93NUMPY", 6) == 0 && strstr(fd + 10, "'descr': '<f4'") && strstr(fd + 10, "(40, 32)"), "npy header");
        CHECK(fl - hf == 40 * 32 * 4 && ll - hlb == 40 * 4, "npy sizes %zu %zu", fl - hf, ll - hlb);
        amdim_model_config cfg;
        amdim_checkpoint_info ci;
        char err[512];
        amdim_model *m;
        REQUIRE(amdim_checkpoint_read_meta(pa, &cfg, &ci, err, sizeof err) == 0 && amdim_model_create(&m, &cfg, err, sizeof err) == 0 &&
                    amdim_checkpoint_load(m, pa, 0, err, sizeof err) == 0, "%s", err);
        amdim_augment_config ac;
        amdim_augment_preset("cifar", &ac);
        amdim_augmenter *aug;
        amdim_augment_create(&aug, &ac);
        amdim_dataset *ds;
        REQUIRE(amdim_dataset_open(&ds, data, err, sizeof err) == 0, "%s", err);
        uint8_t img[3 * 32 * 32 * 3];
        float r1[3 * 32];
        for (int i = 0; i < 3; i++) {
            amdim_record rec;
            amdim_dataset_get(ds, "test", (uint64_t)(7 + i), &rec);
            amdim_augment_test_view(aug, &rec, img + i * 3072);
            CHECK(((int32_t *)(ld + hlb))[7 + i] == rec.label, "label %d", i);
        }
        amdim_model_evaluate(m, img, 3, r1, NULL, NULL);
        double worst = 0;
        for (int i = 0; i < 3 * 32; i++) {
            double d = fabs(r1[i] - ((float *)(fd + hf))[7 * 32 + i]);
            worst = d > worst ? d : worst;
        }
        /* eval-mode BatchNorm makes r1 independent of the batch it is in */
        CHECK(worst < 1e-4, "amdim-embed's r1 differs from the model's by %g", worst);
        /* The same check from PyTorch, when it is installed: strict load
         * of the checkpoint into the authors'-named model, r1 of all 40
         * test images (normalised NCHW) against amdim-embed's file. */
        char imgs_path[4300], script[4300];
        snprintf(imgs_path, sizeof imgs_path, "%s/images.npy", test_tmpdir());
        snprintf(script, sizeof script, "%s", argv[4]);
        *strrchr(script, '/') = 0;
        strcat(script, "/check_checkpoint.py");
        float *nchw = malloc(40 * 3 * 1024 * sizeof(float));
        for (int i = 0; i < 40; i++) {
            amdim_record rec;
            uint8_t v[3072];
            amdim_dataset_get(ds, "test", (uint64_t)i, &rec);
            amdim_augment_test_view(aug, &rec, v);
            for (int c = 0; c < 3; c++)
                for (int k = 0; k < 1024; k++)
                    nchw[(i * 3 + c) * 1024 + k] = ((float)v[k * 3 + c] / 255.0f - cfg.mean[c]) / cfg.std[c];
        }
        char hdr[128];
        int hl2 = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (40, 3, 32, 32), }");
        while ((10 + hl2 + 1) % 64)
            hdr[hl2++] = ' ';
        hdr[hl2++] = '\n';
        FILE *nf = fopen(imgs_path, "wb");
        uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)hl2, 0};
        fwrite(pre, 1, 10, nf);
        fwrite(hdr, 1, (size_t)hl2, nf);
        fwrite(nchw, sizeof(float), 40 * 3 * 1024, nf);
        fclose(nf);
        free(nchw);
        if (access("/usr/bin/python3", X_OK) == 0) {
            char *pa2[] = {"/usr/bin/python3", script, pa, imgs_path, feats, NULL};
            char *po, *pe;
            int ps = test_run(pa2, &po, &pe);
            int code = WIFEXITED(ps) ? WEXITSTATUS(ps) : -1;
            if (code == 77)
                printf("PyTorch check skipped: python3-torch is not installed\n");
            else
                CHECK(code == 0, "PyTorch check failed (%d): %s %s", code, po, pe);
            printf("%s", po);
            free(po);
            free(pe);
        }
        amdim_dataset_close(ds);
        amdim_augment_destroy(aug);
        amdim_model_destroy(m);
        free(fd);
        free(ld);
    }

    /* Classifier phase: frozen encoder, fresh probes trained on labels. */
    char runD[4200];
    snprintf(runD, sizeof runD, "%s", test_path("runD"));
    const char *tcl[] = {"--classifiers", "--init", pb, "--out", runD, "--steps", "12", "--log-every", "4", "--lr", "1e-2",
                         "--eval", data, NULL};
    rc = train(la, tcl, &e, 0);
    CHECK(rc == 0 && strstr(e, "classifier phase") && strstr(e, "test accuracy"), "classifier phase: %d %s", rc, e);
    free(e);
    {
        char pd[4300], err[512];
        snprintf(pd, sizeof pd, "%s/ckpt-00000012.safetensors", runD);
        amdim_model_config c1, c2;
        amdim_checkpoint_info i1, i2;
        amdim_model *m1, *m2;
        REQUIRE(amdim_checkpoint_read_meta(pb, &c1, &i1, err, sizeof err) == 0 &&
                    amdim_checkpoint_read_meta(pd, &c2, &i2, err, sizeof err) == 0 &&
                    amdim_model_create(&m1, &c1, err, sizeof err) == 0 && amdim_model_create(&m2, &c2, err, sizeof err) == 0 &&
                    amdim_checkpoint_load(m1, pb, 0, err, sizeof err) == 0 && amdim_checkpoint_load(m2, pd, 0, err, sizeof err) == 0,
                "classifier checkpoint: %s", err);
        int enc_changed = 0, probes_changed = 0;
        CHECK(c2.n_classes == 10, "the probes were not rebuilt for the labelled set's 10 classes");
        for (int i = 0; i < amdim_model_param_count(m1); i++) {
            amdim_param x, y;
            amdim_model_param(m1, i, &x);
            amdim_model_param(m2, i, &y);
            int diff = x.size != y.size || memcmp(x.data, y.data, x.size * 4) != 0;
            if (strncmp(x.name, "encoder.", 8) == 0)
                enc_changed += diff && !x.buffer;
            else
                probes_changed += diff;
        }
        CHECK(enc_changed == 0, "the classifier phase changed %d encoder parameters", enc_changed);
        CHECK(probes_changed > 0, "the classifier phase did not train the probes");
        amdim_model_destroy(m1);
        amdim_model_destroy(m2);
    }

    /* Mixtures (K = 4, docs/mixtures.md): 16 steps in one go equal 7 +
     * resume to 16 bit for bit (losses and checkpoint bytes); the
     * checkpoint holds the mixture tensors and settings; a classifier phase
     * on the mixture mean keeps them frozen; amdim-viz draws the components. */
    {
        char runF[4200], runG[4200], runH[4200], pf[4300], pg[4300];
        snprintf(runF, sizeof runF, "%s", test_path("runF"));
        snprintf(runG, sizeof runG, "%s", test_path("runG"));
        snprintf(runH, sizeof runH, "%s", test_path("runH"));
        const char *lm[] = {LOADER("5"), "--epochs", "2", NULL};
#define MIX "--mixtures", "4", "--mix-tau", "2", "--mix-entropy", "0.5"
        const char *tf[] = {"--out", runF, MODEL, MIX, "--log-every", "1", "--steps", "16", NULL};
        rc = train(lm, tf, &e, 0);
        REQUIRE(rc == 0, "mixtures: training failed: %s", e);
        CHECK(strstr(e, "mixtures 4 (tau 2, entropy weight 0.5)") && strstr(e, "mixture entropy"),
              "mixtures not reported: %s", e);
        free(e);
        const char *tg1[] = {"--out", runG, MODEL, MIX, "--log-every", "1", "--steps", "7", NULL};
        rc = train(lm, tg1, &e, 0);
        REQUIRE(rc == 0, "mixtures: first half failed: %s", e);
        free(e);
        const char *tg2[] = {"--resume", runG, "--log-every", "1", "--steps", "16", NULL};
        rc = train(lr, tg2, &e, 0);
        REQUIRE(rc == 0, "mixtures: resume failed: %s", e);
        CHECK(strstr(e, "from epoch 0 batch 7 (step 7)") && strstr(e, "mixtures 4"), "mixtures: resumed wrongly: %s", e);
        free(e);
        char lf[32][40], lg[32][40];
        int nf = losses(runF, lf, 32), ng = losses(runG, lg, 32), same_m = nf == ng && nf == 16;
        for (int i = 0; same_m && i < nf; i++)
            same_m = strcmp(lf[i], lg[i]) == 0;
        CHECK(same_m, "mixtures: resumed losses (%d) differ from the unbroken run's (%d)", ng, nf);
        const char *files[2] = {"ckpt-00000016.safetensors", "ckpt-00000016.optim.safetensors"};
        for (int f = 0; f < 2; f++) {
            snprintf(pf, sizeof pf, "%s/%s", runF, files[f]);
            snprintf(pg, sizeof pg, "%s/%s", runG, files[f]);
            size_t l1, l2;
            char *b1 = test_read_file(pf, &l1), *b2 = test_read_file(pg, &l2);
            CHECK(b1 && b2 && l1 == l2 && memcmp(b1, b2, l1) == 0, "mixtures: resumed %s differs from the unbroken run's",
                  files[f]);
            if (f == 0 && b1)
                CHECK(strstr(b1 + 8, "\"mixtures\":\"4\"") && strstr(b1 + 8, "\"mix_tau\":\"2\"") &&
                          strstr(b1 + 8, "\"mixture.fc2.weight\":{\"dtype\":\"F32\",\"shape\":[128,32]"),
                      "mixture metadata or tensors missing from the checkpoint");
            free(b1);
            free(b2);
        }
        snprintf(pf, sizeof pf, "%s/ckpt-00000016.safetensors", runF);
        char *mlines = test_read_file((snprintf(pg, sizeof pg, "%s/metrics.jsonl", runF), pg), NULL);
        CHECK(mlines && strstr(mlines, "\"mix_entropy\":"), "no mix_entropy in metrics.jsonl");
        free(mlines);
        /* classifier phase on the mixture mean */
        const char *th[] = {"--classifiers", "--init", pf, "--out", runH, "--steps", "6", "--lr", "1e-2",
                            "--probe-features", "mixture-mean", "--eval", data, "--eval-refresh", "1", NULL};
        rc = train(la, th, &e, 0);
        CHECK(rc == 0 && strstr(e, "probes on the mixture mean") && strstr(e, "test accuracy"),
              "mixtures: classifier phase: %d %s", rc, e);
        free(e);
        char ph[4300], err[512];
        snprintf(ph, sizeof ph, "%s/ckpt-00000006.safetensors", runH);
        amdim_model_config c1, c2;
        amdim_checkpoint_info i1, i2;
        amdim_model *m1, *m2;
        REQUIRE(amdim_checkpoint_read_meta(pf, &c1, &i1, err, sizeof err) == 0 &&
                    amdim_checkpoint_read_meta(ph, &c2, &i2, err, sizeof err) == 0 &&
                    amdim_model_create(&m1, &c1, err, sizeof err) == 0 && amdim_model_create(&m2, &c2, err, sizeof err) == 0 &&
                    amdim_checkpoint_load(m1, pf, 0, err, sizeof err) == 0 && amdim_checkpoint_load(m2, ph, 0, err, sizeof err) == 0,
                "mixtures: classifier checkpoint: %s", err);
        CHECK(c1.mixtures == 4 && c1.mix_tau == 2.0f && c1.mix_entropy == 0.5f && c1.probe_features == 0 &&
                  c2.mixtures == 4 && c2.probe_features == 1,
              "mixture settings in the checkpoints: K %d/%d, tau %g, alpha %g, features %d/%d", c1.mixtures, c2.mixtures,
              c1.mix_tau, c1.mix_entropy, c1.probe_features, c2.probe_features);
        int frozen_changed = 0, probes_changed = 0;
        for (int i = 0; i < amdim_model_param_count(m1); i++) {
            amdim_param x, y;
            amdim_model_param(m1, i, &x);
            amdim_model_param(m2, i, &y);
            int diff = x.size != y.size || memcmp(x.data, y.data, x.size * 4) != 0;
            if (!x.probe)
                frozen_changed += diff && !x.buffer;
            else
                probes_changed += diff;
        }
        CHECK(frozen_changed == 0, "the classifier phase changed %d encoder or mixture parameters", frozen_changed);
        CHECK(probes_changed > 0, "the classifier phase did not train the probes");
        amdim_model_destroy(m1);
        amdim_model_destroy(m2);
        /* amdim-viz (next to amdim-train): a PNG; a model without mixtures is refused */
        char viz_bin[4300], vpng[4300];
        snprintf(viz_bin, sizeof viz_bin, "%s", train_bin);
        *strrchr(viz_bin, '/') = 0;
        strcat(viz_bin, "/amdim-viz");
        snprintf(vpng, sizeof vpng, "%s/mixtures.png", test_tmpdir());
        char *va[] = {viz_bin, "--checkpoint", pf, "--count", "5", "--batch", "8", "--out", vpng, data, NULL};
        char *vo, *ve;
        int vs = test_run(va, &vo, &ve);
        size_t vl;
        char *vd = test_read_file(vpng, &vl);
        CHECK(WIFEXITED(vs) && WEXITSTATUS(vs) == 0 && vd && vl > 1000 && memcmp(vd, "\x89PNG", 4) == 0, "amdim-viz: %s", ve);
        free(vo), free(ve), free(vd);
        char *vb[] = {viz_bin, "--checkpoint", pb, "--out", vpng, data, NULL};
        vs = test_run(vb, &vo, &ve);
        CHECK(WIFEXITED(vs) && WEXITSTATUS(vs) == 1 && strstr(ve, "no mixtures"), "amdim-viz without mixtures: %s", ve);
        free(vo), free(ve);
#undef MIX
    }

    /* --steps 0 saves the initial model; the raw-pixel baseline learns the stripes. */
    char runE[4200];
    snprintf(runE, sizeof runE, "%s", test_path("runE"));
    const char *t0[] = {"--out", runE, MODEL, "--steps", "0", NULL};
    rc = train(la, t0, &e, 0);
    char p0[4300];
    snprintf(p0, sizeof p0, "%s/ckpt-00000000.safetensors", runE);
    CHECK(rc == 0 && test_exists(p0), "--steps 0: %d %s", rc, e);
    free(e);
    double raw_acc = 0;
    char rerr[512];
    CHECK(amdim_raw_pixel_baseline(data, "train", "test", 20, 1, &raw_acc, rerr, sizeof rerr) == 0, "baseline: %s", rerr);
    printf("raw-pixel linear baseline on the stripes: %.3f\n", raw_acc);
    CHECK(raw_acc > 0.6, "the raw-pixel baseline did not learn: %.3f", raw_acc);

    /* Errors users meet. */
    const char *stl[] = {"--workers", "1", "--batch", "16", "--preset", "stl10", NULL};
    const char *tr[] = {"--resume", runA, "--steps", "40", NULL};
    rc = train(stl, tr, &e, 0);
    CHECK(rc == 1 && strstr(e, "cifar") && strstr(e, "stl10"), "resume with another preset: %d %s", rc, e);
    free(e);
    const char *t3[] = {"--out", runA, MODEL, NULL};
    rc = train(la, t3, &e, 0);
    CHECK(rc == 1 && strstr(e, "already holds a run"), "reusing a run directory: %d %s", rc, e);
    free(e);
    const char *t4[] = {"--out", runC, MODEL, "--batch", "32", NULL};
    rc = train(la, t4, &e, 0);
    CHECK(rc == 1 && strstr(e, "--batch 32") && strstr(e, "16"), "batch mismatch: %d %s", rc, e);
    free(e);
    const char *t6[] = {"--out", runC, MODEL, "--eval", data, "--eval-split", "nope", NULL};
    rc = train(la, t6, &e, 0);
    CHECK(rc == 1 && strstr(e, "--eval") && strstr(e, "nope"), "missing eval split: %d %s", rc, e);
    free(e);
    /* a checkpoint of an unknown format version */
    char vpath[4300];
    snprintf(vpath, sizeof vpath, "%s/ckpt-00000030.safetensors", runA);
    size_t vl;
    char *vf = test_read_file(vpath, &vl);
    char *ver = strstr(vf + 8, "\"format_version\":\"1\"");
    REQUIRE(ver, "no version in the metadata");
    ver[18] = '7';
    char vcopy[4300];
    snprintf(vcopy, sizeof vcopy, "%s/v7.safetensors", test_tmpdir());
    test_write_file(vcopy, vf, vl);
    free(vf);
    char *eb[] = {(char *)embed_bin, "--checkpoint", vcopy, "--out", feats, data, NULL};
    st = test_run(eb, &o1, &o2);
    CHECK(WEXITSTATUS(st) == 1 && strstr(o2, "version 7") && strstr(o2, "version 1"), "version mismatch: %s", o2);
    free(o1);
    free(o2);
    /* a full disk while checkpointing: the previous checkpoint stays. */
    const char *t5[] = {"--resume", runA, "--steps", "35", NULL};
    const char *la5[] = {LOADER("4"), "--epochs", "5", NULL};
    rc = train(la5, t5, &e, 64 * 1024);
    CHECK(rc == 1 && strstr(e, "previous one is intact"), "full disk: %d %s", rc, e);
    free(e);
    char latest[4300], err[512];
    CHECK(amdim_checkpoint_latest(runA, latest, sizeof latest) == 0 && strstr(latest, "ckpt-00000030"),
          "latest checkpoint after the failure: %s", latest);
    amdim_model_config cfg;
    amdim_checkpoint_info ci;
    amdim_model *m;
    CHECK(amdim_checkpoint_read_meta(latest, &cfg, &ci, err, sizeof err) == 0 && amdim_model_create(&m, &cfg, err, sizeof err) == 0 &&
              amdim_checkpoint_load(m, latest, AMDIM_CKPT_OPTIMIZER, err, sizeof err) == 0,
          "the previous checkpoint does not load: %s", err);
    amdim_model_destroy(m);
    return test_finish("test_train_run");
}
