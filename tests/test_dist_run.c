/* Data-parallel runs through the real pipeline under mpirun (issue 18):
 *  - 2 ranks with --sync-bn and a global batch of 16 train 50 steps with
 *    every logged loss term within 1e-5 (relative) of one process with
 *    batch 16; only rank 0 logs and writes the run;
 *  - a run resumes across rank counts (2 -> 1 and 1 -> 2), the same;
 *  - a rank's trainer killed (SIGKILL), or its loader, ends every rank
 *    within 10 s with a non-zero exit, and the message names the rank; a
 *    stopped rank (SIGSTOP) too, through the collective watchdog (within
 *    20 s at a 3 s timeout);
 *  - ranks started with another batch or seed, loaders that do not shard,
 *    and --sync-bn without a group, are refused.
 * Arguments: amdim-load, amdim-train, mpirun. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "amdim_common.h"
#include "testutil.h"

static const char *load_bin, *train_bin, *mpirun;
static char data[4200];

#define MODEL "--ndf 8 --n-rkhs 32 --n-depth 1 --lr 1e-3 --warmup 0 --threads 1 --log-every 1"

/* `sh -c cmd`: its exit code (128 + signal when killed), stderr in *err. */
static int sh(const char *cmd, char **err)
{
    char *argv[] = {"/bin/sh", "-c", (char *)cmd, NULL};
    int st = test_run(argv, NULL, err);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* mpirun -np N sh -c 'RANK_SCRIPT', with the loader and trainer commands
 * in $L and $T of the rank's shell. */
static int mpi(int np, const char *load_args, const char *train_args, const char *rank_script, char **err)
{
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "%s --allow-run-as-root --oversubscribe --mca btl self,vader --mca btl_vader_backing_directory %s --mca mpi_yield_when_idle 1 --bind-to none -np %d "
             "env L='%s --workers 1 --seed 3 %s %s' T='%s %s' sh -c '%s'",
             mpirun, test_tmpdir(), np, load_bin, load_args, data, train_bin, train_args, rank_script);
    return sh(cmd, err);
}

/* The loss terms of every train line of RUN/metrics.jsonl from step
 * `from` on: 7 per line into v; returns the number of lines. */
static int terms(const char *run, int from, double *v, int max)
{
    static const char *keys[7] = {"\"loss\":", "\"nce_1t5\":", "\"nce_1t7\":", "\"nce_5t5\":", "\"reg\":",
                                  "\"cls_mlp\":", "\"cls_lin\":"};
    char path[4300];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    char *s = test_read_file(path, NULL);
    int n = 0;
    for (char *line = s; line && *line && n < max;) {
        char *end = strchr(line, '\n');
        if (end)
            *end = 0;
        char *st = strstr(line, "\"step\":");
        if (strstr(line, "\"kind\":\"train\"") && st && atoi(st + 7) >= from) {
            for (int k = 0; k < 7; k++) {
                char *q = strstr(line, keys[k]);
                REQUIRE(q, "%s: no %s in %s", path, keys[k], line);
                v[7 * n + k] = strtod(q + strlen(keys[k]), NULL);
            }
            n++;
        }
        line = end ? end + 1 : NULL;
    }
    free(s);
    return n;
}

static void same_curve(const char *a, const char *b, int from, int want, const char *what)
{
    double *x = malloc(7 * 200 * sizeof(double)), *y = malloc(7 * 200 * sizeof(double)), worst = 0;
    int n = terms(a, from, x, 200), m = terms(b, from, y, 200);
    CHECK(n == want && m == want, "%s: %d and %d logged steps, expected %d", what, n, m, want);
    for (int i = 0; i < 7 * (n < m ? n : m); i++) {
        double rel = fabs(x[i] - y[i]) / fmax(fabs(y[i]), 1e-12);
        worst = fmax(worst, rel);
        CHECK(rel <= 1e-5, "%s: logged step %d term %d: %.17g vs %.17g", what, i / 7 + 1, i % 7, x[i], y[i]);
    }
    printf("%s: %d steps, every loss term within %.2g (relative)\n", what, n, worst);
    free(x), free(y);
}

static double wall_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* 2 ranks training for ever; 2 s in, rank 1's shell does `act` ($p: its
 * trainer's pid). mpirun's exit code, its stderr in *e, and in *took the
 * seconds from the act to mpirun's end. */
static int rank1_fault(const char *env, const char *act, const char *run, char **e, double *took)
{
    char stamp[4300], script[8192], targs[4400];
    snprintf(stamp, sizeof stamp, "%s/%s-at", test_tmpdir(), run);
    snprintf(script, sizeof script,
             "%s$L 2>/dev/null | $T & p=$!; if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then sleep 2; date +%%s.%%N > %s; "
             "%s; fi; wait $p",
             env, stamp, act);
    snprintf(targs, sizeof targs, "--out %s " MODEL " --steps 1000000", test_path(run));
    int rc = mpi(2, "--batch 16 --shard auto", targs, script, e);
    double ended = wall_now();
    char *at = test_read_file(stamp, NULL);
    REQUIRE(at, "%s: rank 1's fault never happened:\n%s", run, *e);
    *took = ended - strtod(at, NULL);
    free(at);
    return rc;
}

static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; p && (p = strstr(p, needle)); p++)
        n++;
    return n;
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 4, "usage: test_dist_run AMDIM-LOAD AMDIM-TRAIN MPIRUN");
    load_bin = argv[1], train_bin = argv[2], mpirun = argv[3];
    snprintf(data, sizeof data, "%s", test_path("data.lmdb"));
    test_make_stripes(data, 160, 40);
    char one[4200], two[4200], cmd[16384], *e;
    snprintf(one, sizeof one, "%s", test_path("one"));
    snprintf(two, sizeof two, "%s", test_path("two"));

    /* 50 steps: 2 ranks x 8 with synchronised BatchNorm = 1 process x 16 */
    snprintf(cmd, sizeof cmd, "--out %s " MODEL " --steps 50 --sync-bn", two);
    int rc = mpi(2, "--batch 16 --shard auto", cmd, "$L 2>/dev/null | $T", &e);
    REQUIRE(rc == 0, "2 ranks: exit %d\n%s", rc, e);
    CHECK(count(e, "2 ranks, 8 pairs each of every global batch of 16") == 1 && count(e, "step 50 epoch") == 1,
          "2 ranks: rank 0 alone logs, once:\n%s", e);
    free(e);
    snprintf(cmd, sizeof cmd, "%s --workers 1 --seed 3 --batch 16 %s 2>/dev/null | %s --out %s " MODEL " --steps 50",
             load_bin, data, train_bin, one);
    REQUIRE((rc = sh(cmd, &e)) == 0, "1 process: exit %d\n%s", rc, e);
    free(e);
    same_curve(two, one, 0, 50, "2 ranks (--sync-bn) vs 1 process");

    /* resumed across rank counts: 2 -> 1 and 1 -> 2, ten more steps each */
    snprintf(cmd, sizeof cmd, "%s --workers 1 --seed 3 --batch 16 %s 2>/dev/null | %s --resume %s --steps 60 --log-every 1", load_bin,
             data, train_bin, two);
    REQUIRE((rc = sh(cmd, &e)) == 0, "resume on 1: exit %d\n%s", rc, e);
    free(e);
    snprintf(cmd, sizeof cmd, "--resume %s --steps 60 --sync-bn --threads 1 --log-every 1", one);
    REQUIRE((rc = mpi(2, "--batch 16 --shard auto", cmd, "$L 2>/dev/null | $T", &e)) == 0, "resume on 2: exit %d\n%s",
            rc, e);
    free(e);
    same_curve(two, one, 51, 10, "resumed 2 -> 1 vs 1 -> 2");

    /* a rank's trainer killed: every rank ends within 10 s, non-zero */
    char targs[4400];
    double took;
    rc = rank1_fault("", "kill -KILL $p", "killed", &e, &took);
    CHECK(rc != 0 && took < 10, "a killed rank: mpirun exit %d, %.1f s after the kill\n%s", rc, took, e);
    printf("rank 1's trainer killed: mpirun exit %d, every rank gone %.2f s later\n", rc, took);
    free(e);

    /* a rank's loader killed: that rank's trainer names itself and ends all */
    rc = rank1_fault("", "pkill -KILL -P $$ -x amdim-load", "loader-killed", &e, &took);
    CHECK(rc != 0 && took < 10 && strstr(e, "rank 1 of 2: training failed"),
          "a killed loader: mpirun exit %d, %.1f s after the kill, the message must name rank 1\n%s", rc, took, e);
    printf("rank 1's loader killed: mpirun exit %d, every rank gone %.2f s later\n", rc, took);
    free(e);

    /* a rank stopped (SIGSTOP): MPI does not notice; the other rank's
     * watchdog ends it after AMDIM_COLLECTIVE_TIMEOUT, naming what it waited
     * in - the collective, or the step around it (whichever passed the
     * timeout first) - then mpirun ends the job */
    rc = rank1_fault("export AMDIM_COLLECTIVE_TIMEOUT=3; ", "kill -STOP $p", "stopped", &e, &took);
    CHECK(rc != 0 && took < 20 && (strstr(e, "rank 0 of 2: MPI_") || strstr(e, "rank 0 of 2: a training step has run")) &&
              strstr(e, "AMDIM_COLLECTIVE_TIMEOUT=3"),
          "a stopped rank: mpirun exit %d, %.1f s after the stop, rank 0's watchdog must name itself\n%s", rc, took, e);
    printf("rank 1's trainer stopped: mpirun exit %d, every rank gone %.2f s later (collective timeout 3 s)\n", rc, took);
    free(e);

    /* ranks started with other flags: refused before anything is
     * exchanged, naming what differs (a smaller batch share used to
     * overflow the all-gather; another seed silently duplicated images) */
    snprintf(targs, sizeof targs, "--out %s " MODEL " --steps 5", test_path("mismatch-batch"));
    rc = mpi(2, "--batch 16 --shard auto", targs,
             "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then L=\"$L --batch 32\"; fi; $L 2>/dev/null | $T", &e);
    CHECK(rc != 0 && strstr(e, "rank 1's loader batch share is 16, rank 0's 8"), "ranks with other batches: exit %d\n%s",
          rc, e);
    free(e);
    snprintf(targs, sizeof targs, "--out %s " MODEL " --steps 5", test_path("mismatch-seed"));
    rc = mpi(2, "--batch 16 --shard auto", targs,
             "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then L=\"$L --seed 9\"; fi; $L 2>/dev/null | $T", &e);
    CHECK(rc != 0 && strstr(e, "rank 1's loader seed is 9, rank 0's 3"), "ranks with other seeds: exit %d\n%s", rc, e);
    free(e);

    /* loaders that do not shard the batch */
    snprintf(targs, sizeof targs, "--out %s " MODEL " --steps 5", test_path("unsharded"));
    rc = mpi(2, "--batch 16", targs, "$L 2>/dev/null | $T", &e);
    CHECK(rc != 0 && strstr(e, "amdim-load makes shard 0/1 of every batch, but this amdim-train is rank"),
          "unsharded loaders: exit %d\n%s", rc, e);
    free(e);
    /* --sync-bn needs a group */
    snprintf(cmd, sizeof cmd, "%s --out %s --sync-bn < /dev/null", train_bin, test_path("nogroup"));
    rc = sh(cmd, &e);
    CHECK(rc == 2 && strstr(e, "--sync-bn needs a data-parallel run"), "--sync-bn alone: exit %d\n%s", rc, e);
    free(e);
    return test_finish("test_dist_run");
}
