/* The run directory under faults (issue 26), through amdim-load |
 * amdim-train: a second --out or --resume of a directory in use is
 * refused naming the holder's pid; after a SIGKILL the resumed run removes
 * the temporary checkpoint files left behind and metrics.jsonl holds each
 * step once, with no line glued to a cut one; a newest checkpoint without
 * its optimiser file is refused rather than passed over; a FIFO under a
 * checkpoint's name fails at once; a checkpoint with a NaN weight does not
 * train on; metrics.jsonl on a full device is an error; --classes below
 * the data's classes is refused unless asked for; a failed first
 * checkpoint does not claim a previous one is intact; a model too large
 * for this machine is refused with the figures.
 * Arguments: amdim-load, amdim-train. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdim_checkpoint.h"
#include "testutil.h"

static const char *load_bin, *train_bin;
static char data[4200];

#define LOADER "--workers", "1", "--batch", "16", "--seed", "4"
#define MODEL "--ndf", "8", "--n-rkhs", "32", "--n-depth", "1", "--classes", "10"

static void argv_of(char **out, const char *first, const char *const a[], const char *last)
{
    int n = 0;
    out[n++] = (char *)first;
    for (int i = 0; a[i]; i++)
        out[n++] = (char *)a[i];
    if (last)
        out[n++] = (char *)last;
    out[n] = NULL;
}

/* amdim-load LA data | amdim-train TA: amdim-train's exit code, its stderr in *e. */
static int train(const char *const la[], const char *const ta[], char **e, unsigned long fsize)
{
    char *l[32], *t[48];
    argv_of(l, load_bin, la, data);
    argv_of(t, train_bin, ta, NULL);
    test_pipeline p;
    test_pipeline_consumer_fsize = fsize;
    test_pipeline_start(&p, l, t);
    test_pipeline_consumer_fsize = 0;
    test_pipeline_wait(&p);
    *e = test_read_file(p.peek_err, NULL);
    return WIFEXITED(p.peek_status) ? WEXITSTATUS(p.peek_status) : 128 + WTERMSIG(p.peek_status);
}

/* amdim-train alone (stdin /dev/null) under a 20 s timeout: exit code, stderr. */
static int train_alone(const char *const ta[], char **e)
{
    char *t[48];
    const char *pre[] = {"20", train_bin, NULL};
    int n = 0;
    t[n++] = "/usr/bin/timeout";
    for (int i = 0; pre[i]; i++)
        t[n++] = (char *)pre[i];
    for (int i = 0; ta[i]; i++)
        t[n++] = (char *)ta[i];
    t[n] = NULL;
    char *o;
    int s = test_run(t, &o, e);
    free(o);
    return WIFEXITED(s) ? WEXITSTATUS(s) : 128 + WTERMSIG(s);
}

static int count_lines(const char *path)
{
    char *s = test_read_file(path, NULL);
    int n = 0;
    for (char *p = s; p && *p; p++)
        n += *p == '\n';
    free(s);
    return n;
}

static uint64_t latest_step(const char *run)
{
    char ck[4300], err[512];
    amdim_model_config cfg;
    amdim_checkpoint_info ci;
    REQUIRE(amdim_checkpoint_latest(run, ck, sizeof ck) == 0, "no checkpoint in %s", run);
    REQUIRE(amdim_checkpoint_read_meta(ck, &cfg, &ci, err, sizeof err) == 0, "%s", err);
    return ci.step;
}

/* Every line of metrics.jsonl is one JSON object and each train step
 * appears once, in order: 0, or the number of bad lines. */
static int check_metrics(const char *path, uint64_t want_last)
{
    char *s = test_read_file(path, NULL);
    REQUIRE(s, "no %s", path);
    int bad = 0;
    long long prev = -1;
    for (char *line = s; *line;) {
        char *nl = strchr(line, '\n');
        if (!nl) {
            CHECK(0, "%s ends mid-line: %s", path, line);
            bad++;
            break;
        }
        *nl = 0;
        int objects = 0;
        for (char *q = line; (q = strstr(q, "{\"kind\"")); q++)
            objects++;
        if (line[0] != '{' || nl[-1] != '}' || objects != 1) {
            CHECK(0, "not one JSON object: %s", line);
            bad++;
        } else if (strstr(line, "\"kind\":\"train\"")) {
            long long st = atoll(strstr(line, "\"step\":") + 7);
            if (st <= prev) {
                CHECK(0, "step %lld after step %lld", st, prev);
                bad++;
            }
            prev = st;
        }
        line = nl + 1;
    }
    CHECK(prev == (long long)want_last, "the last train line is step %lld, want %llu", prev,
          (unsigned long long)want_last);
    free(s);
    return bad;
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 3, "usage: test_fault_rundir AMDIM-LOAD AMDIM-TRAIN");
    load_bin = argv[1];
    train_bin = argv[2];
    snprintf(data, sizeof data, "%s", test_path("data.lmdb"));
    test_make_stripes(data, 160, 40);
    char r1[4200], path[4400], path2[4400];
    snprintf(r1, sizeof r1, "%s", test_path("r1"));
    char *e;
    int rc;

    /* 1. a run in progress holds its directory */
    {
        char *l[32], *t[48];
        const char *la[] = {LOADER, "--epochs", "1000", NULL};
        const char *ta[] = {"--out", r1, MODEL, "--steps", "100000", "--log-every", "1", "--checkpoint-every", "4",
                            NULL};
        argv_of(l, load_bin, la, data);
        argv_of(t, train_bin, ta, NULL);
        test_pipeline p;
        test_pipeline_start(&p, l, t);
        snprintf(path, sizeof path, "%s/metrics.jsonl", r1);
        for (int i = 0; i < 600 && count_lines(path) < 14; i++)
            usleep(100 * 1000);
        REQUIRE(count_lines(path) >= 14, "the first run does not train");
        char pid[32];
        snprintf(pid, sizeof pid, "pid %d", p.peek_pid);
        const char *again[] = {"--out", r1, MODEL, NULL};
        rc = train_alone(again, &e);
        CHECK(rc == 1 && strstr(e, r1) && strstr(e, "in use") && strstr(e, pid), "second --out: %d %s", rc, e);
        printf("second --out while training: %s", e);
        free(e);
        const char *res[] = {"--resume", r1, NULL};
        rc = train_alone(res, &e);
        CHECK(rc == 1 && strstr(e, r1) && strstr(e, "in use") && strstr(e, pid), "--resume while training: %d %s", rc,
              e);
        free(e);
        kill(-p.pgid, SIGKILL); /* the whole pipeline, mid-step */
        test_pipeline_wait(&p);
    }

    /* 2. resumed after the kill: stale temporaries go, metrics hold each step once */
    uint64_t s0 = latest_step(r1);
    {
        snprintf(path, sizeof path, "%s/ckpt-%08llu.safetensors.tmp.999999", r1, (unsigned long long)s0 + 1);
        snprintf(path2, sizeof path2, "%s/ckpt-%08llu.optim.safetensors.tmp.4", r1, (unsigned long long)s0 + 1);
        test_write_file(path, "partial", 7);
        test_write_file(path2, "partial", 7);
        /* a line of a step after the checkpoint, and one cut mid-way */
        char mpath[4300], extra[256];
        snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", r1);
        size_t ml;
        char *mt = test_read_file(mpath, &ml);
        int el = snprintf(extra, sizeof extra, "{\"kind\":\"train\",\"step\":%llu,\"loss\":1}\n{\"kind\":\"train\",\"st",
                          (unsigned long long)s0 + 1);
        mt = realloc(mt, ml + (size_t)el);
        memcpy(mt + ml, extra, (size_t)el);
        test_write_file(mpath, mt, ml + (size_t)el);
        free(mt);
        char steps[32];
        snprintf(steps, sizeof steps, "%llu", (unsigned long long)s0 + 3);
        const char *la[] = {LOADER, NULL};
        const char *ta[] = {"--resume", r1, "--steps", steps, "--log-every", "1", NULL};
        rc = train(la, ta, &e, 0);
        CHECK(rc == 0, "resume after the kill: %d %s", rc, e);
        CHECK(!test_exists(path) && !test_exists(path2) && strstr(e, "temporary checkpoint file"),
              "stale temporary checkpoint files remain: %s", e);
        free(e);
        CHECK(check_metrics(mpath, s0 + 3) == 0, "metrics.jsonl after kill and resume");
    }

    /* 3. the newest checkpoint lacks its optimiser file: refused, not passed over */
    uint64_t s1 = latest_step(r1);
    {
        snprintf(path, sizeof path, "%s/ckpt-%08llu.optim.safetensors", r1, (unsigned long long)s1);
        snprintf(path2, sizeof path2, "%s/moved.optim", test_tmpdir());
        REQUIRE(rename(path, path2) == 0, "moving the optimiser file");
        const char *la[] = {LOADER, NULL};
        char steps[32];
        snprintf(steps, sizeof steps, "%llu", (unsigned long long)s1 + 2);
        const char *ta[] = {"--resume", r1, "--steps", steps, NULL};
        rc = train(la, ta, &e, 0);
        CHECK(rc == 1 && strstr(e, "no optimiser file") && strstr(e, "ckpt-"), "newest without .optim: %d %s", rc, e);
        printf("newest checkpoint without its optimiser file: %s", e);
        free(e);
        REQUIRE(rename(path2, path) == 0, "restoring the optimiser file");
    }

    /* 4. FIFOs under the names of a newer checkpoint: an error, at once */
    {
        snprintf(path, sizeof path, "%s/ckpt-99999999.safetensors", r1);
        snprintf(path2, sizeof path2, "%s/ckpt-99999999.optim.safetensors", r1);
        REQUIRE(mkfifo(path, 0600) == 0 && mkfifo(path2, 0600) == 0, "mkfifo");
        const char *ta[] = {"--resume", r1, NULL};
        rc = train_alone(ta, &e);
        CHECK(rc == 1 && strstr(e, "FIFO") && strstr(e, "ckpt-99999999"), "FIFO checkpoint: %d %s", rc, e);
        free(e);
        unlink(path);
        unlink(path2);
    }

    /* 5. a NaN weight in the checkpoint: refused, not trained on */
    {
        char ck[4300];
        REQUIRE(amdim_checkpoint_latest(r1, ck, sizeof ck) == 0, "latest");
        size_t len;
        char *f = test_read_file(ck, &len);
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--)
            hl = hl << 8 | (uint8_t)f[i];
        char *h = strndup(f + 8, hl), *at = strstr(h, "\"encoder.module.layer_list.0.conv.weight\":{");
        REQUIRE(at && strstr(at, "\"data_offsets\":["), "tensor not found");
        size_t begin = strtoull(strstr(at, "\"data_offsets\":[") + 16, NULL, 10);
        float nan = __builtin_nanf("");
        memcpy(f + 8 + hl + begin + 4 * 5, &nan, 4);
        test_write_file(ck, f, len);
        free(h), free(f);
        const char *la[] = {LOADER, NULL};
        const char *ta[] = {"--resume", r1, "--steps", "1000", NULL};
        rc = train(la, ta, &e, 0);
        CHECK(rc == 1 && strstr(e, "encoder.module.layer_list.0.conv.weight") && strstr(e, "element 5") &&
                  latest_step(r1) == s1,
              "a NaN weight: %d %s", rc, e);
        printf("resuming a checkpoint with a NaN weight: %s", e);
        free(e);
    }

    /* 6. metrics.jsonl on a full device */
    {
        char r4[4200];
        snprintf(r4, sizeof r4, "%s", test_path("r4"));
        test_mkdirs(r4);
        snprintf(path, sizeof path, "%s/metrics.jsonl", r4);
        REQUIRE(symlink("/dev/full", path) == 0, "symlink");
        const char *la[] = {LOADER, "--epochs", "1", NULL};
        const char *ta[] = {"--out", r4, MODEL, "--steps", "3", "--log-every", "1", NULL};
        rc = train(la, ta, &e, 0);
        CHECK(rc == 1 && strstr(e, "metrics.jsonl") && strstr(e, "No space left on device"), "metrics on /dev/full: %d %s",
              rc, e);
        printf("metrics.jsonl -> /dev/full: %s", e);
        free(e);
    }

    /* 7. --classes 5 on data of 10 classes */
    {
        char r5[4200];
        snprintf(r5, sizeof r5, "%s", test_path("r5"));
        const char *la[] = {LOADER, "--epochs", "1", NULL};
        const char *ta[] = {"--out", r5, "--ndf", "8", "--n-rkhs", "32", "--n-depth", "1", "--classes", "5", "--steps",
                            "0", NULL};
        rc = train(la, ta, &e, 0);
        CHECK(rc == 1 && strstr(e, "--classes 5") && strstr(e, "10 classes"), "--classes 5: %d %s", rc, e);
        printf("--classes 5 on 10 classes: %s", e);
        free(e);
        const char *tb[] = {"--out", r5, "--ndf", "8", "--n-rkhs", "32", "--n-depth", "1", "--classes", "5",
                            "--allow-fewer-classes", "--steps", "0", NULL};
        rc = train(la, tb, &e, 0);
        CHECK(rc == 0, "--classes 5 --allow-fewer-classes: %d %s", rc, e);
        free(e);
    }

    /* 8. the first checkpoint fails (file size limit): no "previous one is intact" */
    {
        char r6[4200];
        snprintf(r6, sizeof r6, "%s", test_path("r6"));
        const char *la[] = {LOADER, "--epochs", "1", NULL};
        const char *ta[] = {"--out", r6, MODEL, "--steps", "2", NULL};
        rc = train(la, ta, &e, 2048);
        CHECK(rc == 1 && !strstr(e, "previous one is intact") && strstr(e, "no earlier checkpoint"),
              "first checkpoint failing: %d %s", rc, e);
        free(e);
    }

    /* 8b. non-finite numbers on the command line are bad usage */
    {
        const char *bad[][2] = {{"--lr", "inf"}, {"--tclip", "nan"}, {"--mix-tau", "1e39"}};
        for (int i = 0; i < 3; i++) {
            const char *ta[] = {"--out", test_path("r8"), bad[i][0], bad[i][1], NULL};
            rc = train_alone(ta, &e);
            CHECK(rc == 2 && strstr(e, bad[i][0]) && strstr(e, bad[i][1]), "%s %s: %d %s", bad[i][0], bad[i][1], rc, e);
            free(e);
        }
    }

    /* 9. a model this machine cannot hold: refused before it is allocated */
    {
        char r7[4200];
        snprintf(r7, sizeof r7, "%s", test_path("r7"));
        const char *la[] = {LOADER, "--epochs", "1", NULL};
        const char *ta[] = {"--out", r7, "--ndf", "4096", "--n-rkhs", "65536", "--n-depth", "100", "--steps", "1", NULL};
        rc = train(la, ta, &e, 0);
        CHECK(rc == 1 && strstr(e, "needs about") && strstr(e, "may use") && strstr(e, "GiB"), "huge model: %d %s", rc,
              e);
        printf("ndf 4096, n_rkhs 65536, depth 100: %s", e);
        free(e);
    }
    test_cleanup();
    return test_finish("test_fault_rundir");
}
