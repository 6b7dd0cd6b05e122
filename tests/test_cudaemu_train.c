/* amdim-load | amdim-train --device cuda on the emulated device (label
 * cudaemu; tests/cudaemu): the run loop's CUDA path - the loader's rings
 * page-locked, each batch staged on the copy stream into a device input
 * slot while the previous step computes, the slot released after its copy -
 * against the CPU's run through the same pipe:
 *   fp32: 12 steps with the same loader, every logged loss within 1e-4
 *         relative of the CPU's (fp32 on both, other summation orders);
 *   bf16: 8 steps with an evaluation, a checkpoint, and the CPU resuming it
 *         to step 12 (a bf16 CUDA checkpoint is an ordinary one);
 *   amdim-embed --device cuda of the fp32 run's checkpoint: the features
 *         within 1e-4 of the CPU's amdim-embed (relative, floor 1e-2 of the
 *         largest).
 * Arguments: amdim-load, amdim-train (CPU build), amdim-train on the
 * emulated device, amdim-embed (CPU build), amdim-embed on the emulated
 * device. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "amdim_checkpoint.h"
#include "testutil.h"

static const char *load_bin;
static char data[4200];

/* `amdim-load LOADARGS data | TRAIN TRAINARGS`: TRAIN's exit code, its stderr in *err_text. */
static int train(const char *bin, const char *const ta[], char **err_text)
{
    char *l[16], *t[48];
    const char *la[] = {"--workers", "1", "--batch", "16", "--seed", "4", "--epochs", "2", NULL};
    int n = 0;
    l[n++] = (char *)load_bin;
    for (int i = 0; la[i]; i++)
        l[n++] = (char *)la[i];
    l[n++] = data;
    l[n] = NULL;
    n = 0;
    t[n++] = (char *)bin;
    for (int i = 0; ta[i]; i++)
        t[n++] = (char *)ta[i];
    t[n] = NULL;
    test_pipeline p;
    test_pipeline_start(&p, l, t);
    test_pipeline_wait(&p);
    *err_text = test_read_file(p.peek_err, NULL);
    return WIFEXITED(p.peek_status) ? WEXITSTATUS(p.peek_status) : 128 + WTERMSIG(p.peek_status);
}

/* The "loss" values of the train lines of run/metrics.jsonl, in order. */
static int losses(const char *run, double *out, int max)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    char *s = test_read_file(path, NULL);
    int n = 0;
    for (char *p = s; p && (p = strstr(p, "\"kind\":\"train\"")) && n < max; p++) {
        char *q = strstr(p, "\"loss\":");
        if (!q)
            break;
        out[n++] = atof(q + 7);
    }
    free(s);
    return n;
}

#define MODEL "--ndf", "8", "--n-rkhs", "32", "--n-depth", "2", "--lr", "2e-3", "--classes", "5", "--allow-fewer-classes", \
              "--log-every", "1"

int main(int argc, char **argv)
{
    REQUIRE(argc == 6, "usage: test_cudaemu_train AMDIM-LOAD AMDIM-TRAIN AMDIM-TRAIN-EMULATED AMDIM-EMBED "
                       "AMDIM-EMBED-EMULATED");
    load_bin = argv[1];
    const char *amdim_cpu_bin = argv[2], *emu_bin = argv[3];
    snprintf(data, sizeof data, "%s", test_path("data.lmdb"));
    test_make_stripes(data, 160, 40);
    char runC[4200], runG[4200], runH[4200], *e;
    snprintf(runC, sizeof runC, "%s", test_path("cpu"));
    snprintf(runG, sizeof runG, "%s", test_path("emu_fp32"));
    snprintf(runH, sizeof runH, "%s", test_path("emu_bf16"));

    /* fp32: the same 12 steps on the CPU and on the emulated device */
    const char *tc[] = {"--out", runC, MODEL, "--steps", "12", "--device", "cpu", NULL};
    int rc = train(amdim_cpu_bin, tc, &e);
    REQUIRE(rc == 0, "CPU run failed: %s", e);
    free(e);
    const char *tg[] = {"--out", runG, MODEL, "--steps", "12", "--device", "cuda", "--precision", "fp32", NULL};
    rc = train(emu_bin, tg, &e);
    REQUIRE(rc == 0, "emulated CUDA run failed: %s", e);
    CHECK(strstr(e, "data wait"), "no data-wait figure in the log: %s", e);
    CHECK(strstr(e, "cuDNN algorithms:") && strstr(e, "fwd"), "no cuDNN algorithm table in the log: %s", e);
    free(e);
    /* the table is in the run's metrics too, once, after the first step */
    char mpath[4300];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", runG);
    char *mt = test_read_file(mpath, NULL), *al = mt ? strstr(mt, "\"kind\":\"algorithms\",\"step\":1,") : NULL;
    CHECK(al && strstr(al, "bwd-filter") && !strstr(al + 1, "\"kind\":\"algorithms\""),
          "metrics.jsonl has no (or more than one) algorithms line");
    free(mt);
    double lc[32], lg[32], worst = 0;
    int nc = losses(runC, lc, 32), ng = losses(runG, lg, 32);
    CHECK(nc == 12 && ng == 12, "%d and %d loss lines, want 12", nc, ng);
    for (int i = 0; i < nc && i < ng; i++)
        worst = fmax(worst, fabs(lg[i] - lc[i]) / fabs(lc[i]));
    CHECK(worst <= 1e-4, "fp32 losses differ by up to %.3g relative", worst);
    printf("fp32: 12 steps, losses within %.2g of the CPU's (first %.6f / %.6f, last %.6f / %.6f)\n", worst, lg[0],
           lc[0], lg[ng - 1], lc[nc - 1]);

    /* bf16: a run with an evaluation and a checkpoint, resumed on the CPU */
    const char *th[] = {"--out", runH, MODEL, "--steps", "8", "--device", "cuda", "--precision", "bf16", "--eval",
                        data, NULL};
    rc = train(emu_bin, th, &e);
    REQUIRE(rc == 0, "emulated CUDA bf16 run failed: %s", e);
    CHECK(strstr(e, "evaluation after step 8"), "no evaluation: %s", e);
    free(e);
    double lh[32];
    int nh = losses(runH, lh, 32);
    CHECK(nh == 8 && isfinite(lh[nh - 1]), "bf16: %d loss lines", nh);
    const char *tr[] = {"--resume", runH, "--log-every", "1", "--steps", "12", "--device", "cpu", NULL};
    rc = train(amdim_cpu_bin, tr, &e);
    CHECK(rc == 0 && strstr(e, "(step 8)"), "the CPU did not resume the bf16 CUDA checkpoint: %d %s", rc, e);
    free(e);
    nh = losses(runH, lh, 32);
    CHECK(nh == 12, "after the resume %d loss lines, want 12", nh);
    printf("bf16: 8 steps (loss %.4f -> %.4f), evaluated, resumed on the CPU to step 12 (loss %.4f)\n", lh[0], lh[7],
           nh == 12 ? lh[11] : NAN);

    /* amdim-embed of the fp32 run's checkpoint on both */
    char ck[4300], fc[4300], fg[4300];
    REQUIRE(amdim_checkpoint_latest(runC, ck, sizeof ck) == 0, "no checkpoint in %s", runC);
    snprintf(fc, sizeof fc, "%s", test_path("feats_cpu.npy"));
    snprintf(fg, sizeof fg, "%s", test_path("feats_cuda.npy"));
    char *ec[] = {(char *)argv[4], "--checkpoint", ck, "--device", "cpu", "--out", fc, data, NULL};
    char *eg[] = {(char *)argv[5], "--checkpoint", ck, "--device", "cuda", "--out", fg, data, NULL};
    char *o, *er;
    int s1 = test_run(ec, &o, &er);
    CHECK(WIFEXITED(s1) && WEXITSTATUS(s1) == 0, "amdim-embed (CPU): %s", er);
    free(o), free(er);
    int s2 = test_run(eg, &o, &er);
    CHECK(WIFEXITED(s2) && WEXITSTATUS(s2) == 0, "amdim-embed --device cuda: %s", er);
    free(o), free(er);
    size_t lc_, lg_;
    char *a = test_read_file(fc, &lc_), *b = test_read_file(fg, &lg_);
    REQUIRE(a && b && lc_ == lg_ && lc_ > 128, "feature files");
    size_t h = 10 + ((uint8_t)a[8] | (uint8_t)a[9] << 8), n = (lc_ - h) / 4;
    CHECK(memcmp(a, b, h) == 0, "npy headers differ");
    const float *fa = (const float *)(const void *)(a + h), *fb = (const float *)(const void *)(b + h);
    double big = 0, worst_e = 0;
    for (size_t i = 0; i < n; i++)
        big = fmax(big, fabs(fa[i]));
    for (size_t i = 0; i < n; i++)
        worst_e = fmax(worst_e, fabs(fb[i] - fa[i]) / fmax(fabs(fa[i]), 1e-2 * big));
    CHECK(worst_e <= 1e-4, "amdim-embed features differ by %.3g relative", worst_e);
    printf("amdim-embed --device cuda: %zu features within %.2g of the CPU's\n", n, worst_e);
    free(a), free(b);
    return test_finish("test_cudaemu_train");
}
