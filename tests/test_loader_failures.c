/* What goes wrong in a pipeline, and how it must look: a SIGKILLed worker
 * is reported within a second with its signal and the batch it held (and
 * with --respawn replaced, nothing lost or duplicated); a killed consumer
 * stops every loader process; a killed loader is reported by the consumer;
 * Ctrl-C stops everything; a corrupted record fails with its index named;
 * /dev/shm is left as it was; bad usage is refused.
 * Arguments: amdim-load and amdim-peek binaries. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lmdb.h>

#include "amdim_dataset.h"
#include "loader_fixtures.h"

static const char *load_bin, *peek_bin;

/* Entries in /dev/shm, but Open MPI's shared-memory segments: the MPI
 * tests (test_dist_*) may run beside this one. */
static int count_dev_shm(void)
{
    DIR *d = opendir("/dev/shm");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.' && strncmp(e->d_name, "vader_segment.", 14) != 0;
    closedir(d);
    return n;
}

static int gone(int pid)
{
    for (int i = 0; i < 300; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/stat", pid);
        char *s = test_read_file(path, NULL);
        /* gone, or a zombie waiting for init to reap it */
        int dead = !s || (strchr(s, ')') && strchr(s, ')')[2] == 'Z');
        free(s);
        if (dead)
            return 1;
        usleep(10000);
    }
    return 0;
}

static void start(test_pipeline *p, const char *data, const char *const le[], const char *const pe[])
{
    char *la[32], *pa[32];
    int n = 0;
    la[n++] = (char *)load_bin;
    for (int i = 0; le && le[i]; i++)
        la[n++] = (char *)le[i];
    la[n++] = (char *)data;
    la[n] = NULL;
    n = 0;
    pa[n++] = (char *)peek_bin;
    for (int i = 0; pe && pe[i]; i++)
        pa[n++] = (char *)pe[i];
    pa[n] = NULL;
    test_pipeline_start(p, la, pa);
}

static int code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

int main(int argc, char **argv)
{
    REQUIRE(argc == 3, "usage: test_loader_failures AMDIM-LOAD AMDIM-PEEK");
    load_bin = argv[1];
    peek_bin = argv[2];
    char raw[4200];
    snprintf(raw, sizeof raw, "%s", test_path("raw.lmdb"));
    fixture_raw(raw, 100);
    int shm_before = count_dev_shm();
    /* 10 batches per epoch, 8 epochs, 25 ms per batch: about 2 s. */
    const char *slow_load[] = {"--workers", "3", "--batch", "10", "--epochs", "8", "--seed", "3", "--slots", "2", NULL};
    const char *slow_peek[] = {"--delay-ms", "25", NULL};

    /* Reference digest of the undisturbed run. */
    test_pipeline p;
    const char *fast_peek[] = {NULL};
    start(&p, raw, slow_load, fast_peek);
    test_pipeline_wait(&p);
    CHECK(code(p.peek_status) == 0 && code(p.load_status) == 0, "reference run failed");
    char ref_digest[64] = "";
    const char *v = test_file_value(p.peek_out, "digest");
    snprintf(ref_digest, sizeof ref_digest, "%s", v ? v : "?");

    /* 1. SIGKILL of a worker: reported within a second, naming it. */
    start(&p, raw, slow_load, slow_peek);
    int wpid = test_pipeline_worker_pid(&p, 1);
    REQUIRE(wpid > 0, "no worker pid in the loader's output");
    usleep(400000);
    double t0 = amdim_now();
    kill(wpid, SIGKILL);
    while (waitpid(p.peek_pid, &p.peek_status, 0) < 0 && errno == EINTR) {
    }
    double dt = amdim_now() - t0;
    waitpid(p.load_pid, &p.load_status, 0);
    char *perr = test_read_file(p.peek_err, NULL), *lerr = test_read_file(p.load_err, NULL);
    CHECK(code(p.peek_status) == 1, "peek exit %d after a worker was killed", code(p.peek_status));
    CHECK(dt < 1.5, "the consumer took %.2f s to report the dead worker (it had slots to drain first)", dt);
    CHECK(perr && strstr(perr, "worker 1") && strstr(perr, "signal 9") && strstr(perr, "batch") &&
              strstr(perr, "out-of-memory killer"),
          "peek's report does not name the worker, signal, batch and the likely OOM killer: %s", perr);
    CHECK(code(p.load_status) == 1 && lerr && strstr(lerr, "killed by signal 9"), "loader exit %d: %s", code(p.load_status), lerr);
    free(perr);
    free(lerr);

    /* 1b. SIGSTOP of a worker: the consumer waiting on it fails after
     * AMDIM_STALL_SECONDS without progress, naming the worker, its pid, the
     * batch it owed and that it is stopped (instead of waiting forever). */
    setenv("AMDIM_STALL_SECONDS", "1", 1);
    start(&p, raw, slow_load, slow_peek);
    unsetenv("AMDIM_STALL_SECONDS");
    wpid = test_pipeline_worker_pid(&p, 1);
    REQUIRE(wpid > 0, "no worker pid in the loader's output");
    usleep(400000);
    t0 = amdim_now();
    kill(wpid, SIGSTOP);
    while (waitpid(p.peek_pid, &p.peek_status, 0) < 0 && errno == EINTR) {
    }
    dt = amdim_now() - t0;
    kill(wpid, SIGCONT);
    waitpid(p.load_pid, &p.load_status, 0);
    perr = test_read_file(p.peek_err, NULL);
    char pidstr[32];
    snprintf(pidstr, sizeof pidstr, "pid %d", wpid);
    CHECK(code(p.peek_status) == 1 && perr && strstr(perr, "worker 1") && strstr(perr, pidstr) &&
              strstr(perr, "made no progress") && strstr(perr, "stopped") && strstr(perr, "batch"),
          "stopped worker: peek exit %d after %.1f s: %s", code(p.peek_status), dt, perr ? perr : "");
    CHECK(dt < 5.0, "the consumer took %.1f s to give up on a stopped worker", dt);
    CHECK(code(p.load_status) != 0, "the loader exited 0 after its consumer gave up");
    free(perr);

    /* 1c. amdim-load notices a stopped worker too (AMDIM_LOAD_STALL_SECONDS,
     * else AMDIM_STALL_SECONDS): a line naming it, its pid and state, while
     * this consumer waits forever (0); after SIGCONT the run completes. */
    setenv("AMDIM_STALL_SECONDS", "0", 1);
    setenv("AMDIM_LOAD_STALL_SECONDS", "1", 1);
    start(&p, raw, slow_load, slow_peek);
    unsetenv("AMDIM_STALL_SECONDS");
    unsetenv("AMDIM_LOAD_STALL_SECONDS");
    wpid = test_pipeline_worker_pid(&p, 1);
    REQUIRE(wpid > 0, "no worker pid in the loader's output");
    usleep(400000);
    kill(wpid, SIGSTOP);
    usleep(2500000);
    kill(wpid, SIGCONT);
    test_pipeline_wait(&p);
    {
        char *lerr2 = test_read_file(p.load_err, NULL), want[64];
        snprintf(want, sizeof want, "worker 1 (pid %d) has made no progress", wpid);
        CHECK(lerr2 && strstr(lerr2, want) && strstr(lerr2, "stopped"), "the loader did not report the stopped worker: %s",
              lerr2 ? lerr2 : "");
        CHECK(code(p.peek_status) == 0 && code(p.load_status) == 0, "after SIGCONT: peek exit %d, loader exit %d",
              code(p.peek_status), code(p.load_status));
        free(lerr2);
    }

    /* 2. With --respawn: the same batches, nothing lost or duplicated. */
    const char *respawn_load[] = {"--workers", "3", "--batch", "10", "--epochs", "8", "--seed", "3", "--slots", "2",
                                  "--respawn", "2", NULL};
    start(&p, raw, respawn_load, slow_peek);
    wpid = test_pipeline_worker_pid(&p, 2);
    REQUIRE(wpid > 0, "no worker pid");
    usleep(400000);
    kill(wpid, SIGKILL);
    test_pipeline_wait(&p);
    lerr = test_read_file(p.load_err, NULL);
    CHECK(code(p.peek_status) == 0 && code(p.load_status) == 0, "respawn run: peek %d load %d: %s", code(p.peek_status),
          code(p.load_status), lerr);
    CHECK(lerr && strstr(lerr, "respawning"), "no respawn reported: %s", lerr);
    v = test_file_value(p.peek_out, "duplicates");
    CHECK(v && strcmp(v, "0") == 0, "duplicates %s", v);
    v = test_file_value(p.peek_out, "missing");
    CHECK(v && strcmp(v, "0") == 0, "missing %s", v);
    v = test_file_value(p.peek_out, "digest");
    CHECK(v && strcmp(v, ref_digest) == 0, "respawned run's digest %s differs from %s", v, ref_digest);
    free(lerr);

    /* 3. SIGKILL of the consumer: every loader process exits promptly. */
    start(&p, raw, slow_load, slow_peek);
    int w0 = test_pipeline_worker_pid(&p, 0), w2 = test_pipeline_worker_pid(&p, 2);
    usleep(300000);
    kill(p.peek_pid, SIGKILL);
    t0 = amdim_now();
    waitpid(p.load_pid, &p.load_status, 0);
    dt = amdim_now() - t0;
    waitpid(p.peek_pid, &p.peek_status, 0);
    CHECK(dt < 2.0, "the loader took %.2f s to notice its consumer died", dt);
    CHECK(gone(w0) && gone(w2), "workers outlived a killed consumer");
    lerr = test_read_file(p.load_err, NULL);
    CHECK(code(p.load_status) == 1 && lerr && strstr(lerr, "the consumer went away"),
          "the loader's exit after its consumer was killed: %d: %s", code(p.load_status), lerr);
    free(lerr);

    /* 4. SIGKILL of the loader: the consumer reports it; workers die too. */
    start(&p, raw, slow_load, slow_peek);
    w0 = test_pipeline_worker_pid(&p, 0);
    usleep(300000);
    kill(p.load_pid, SIGKILL);
    t0 = amdim_now();
    waitpid(p.peek_pid, &p.peek_status, 0);
    dt = amdim_now() - t0;
    waitpid(p.load_pid, &p.load_status, 0);
    perr = test_read_file(p.peek_err, NULL);
    CHECK(code(p.peek_status) == 1 && perr && (strstr(perr, "exited before") || strstr(perr, "never arrived")),
          "killed loader: peek %d: %s", code(p.peek_status), perr);
    CHECK(dt < 3.0, "the consumer took %.2f s to notice", dt);
    CHECK(gone(w0), "a worker outlived its killed loader");
    free(perr);

    /* 5. Ctrl-C on the pipeline stops all of it. */
    start(&p, raw, slow_load, slow_peek);
    w0 = test_pipeline_worker_pid(&p, 0);
    usleep(300000);
    kill(-p.pgid, SIGINT);
    t0 = amdim_now();
    test_pipeline_wait(&p);
    CHECK(amdim_now() - t0 < 2.0, "Ctrl-C took %.2f s", amdim_now() - t0);
    CHECK(gone(w0), "a worker survived Ctrl-C");
    CHECK(count_dev_shm() == shm_before, "/dev/shm has %d entries, had %d", count_dev_shm(), shm_before);

    /* 6. A corrupted record: the error names it. */
    char bad[4200];
    snprintf(bad, sizeof bad, "%s", test_path("bad.lmdb"));
    fixture_raw(bad, 100);
    char err[512];
    amdim_dataset *ds;
    REQUIRE(amdim_dataset_open(&ds, bad, err, sizeof err) == 0, "%s", err);
    const void *val;
    size_t len;
    uint64_t off;
    REQUIRE(amdim_dataset_locate(ds, "train", 37, &val, &len, &off) == 0, "locate");
    amdim_dataset_close(ds);
    int fd = open(bad, O_WRONLY);
    REQUIRE(fd >= 0 && pwrite(fd, "XXXX", 4, (off_t)off) == 4, "corrupting the file");
    close(fd);
    const char *all[] = {"--workers", "2", "--batch", "10", NULL};
    start(&p, bad, all, fast_peek);
    test_pipeline_wait(&p);
    perr = test_read_file(p.peek_err, NULL);
    lerr = test_read_file(p.load_err, NULL);
    CHECK(code(p.peek_status) == 1 && perr && strstr(perr, "record 37") && strstr(perr, "bad record magic"),
          "corrupt record not named by the consumer: %s", perr);
    CHECK(code(p.load_status) == 1 && lerr && strstr(lerr, "record 37"), "corrupt record not named by the loader: %s", lerr);
    free(perr);
    free(lerr);

    /* 6b. A record label not below the split's class count (meta edited
     * to say 5 classes; the records hold 0..9): an error naming it, not a
     * label the trainer silently skips as unlabelled. */
    char few[4200];
    snprintf(few, sizeof few, "%s", test_path("few.lmdb"));
    fixture_raw(few, 100);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta;
    REQUIRE(mdb_env_create(&env) == 0 && mdb_env_set_maxdbs(env, 8) == 0 &&
                mdb_env_open(env, few, MDB_NOSUBDIR | MDB_NOLOCK, 0644) == 0 && mdb_txn_begin(env, NULL, 0, &txn) == 0 &&
                mdb_dbi_open(txn, "meta", 0, &meta) == 0,
            "opening %s to edit", few);
    MDB_val k = {strlen("train.classes"), "train.classes"}, v5 = {1, "5"};
    REQUIRE(mdb_put(txn, meta, &k, &v5, 0) == 0 && mdb_txn_commit(txn) == 0, "editing the class count");
    mdb_env_close(env);
    start(&p, few, all, fast_peek);
    test_pipeline_wait(&p);
    lerr = test_read_file(p.load_err, NULL);
    CHECK(code(p.load_status) == 1 && lerr && strstr(lerr, "is not below the split's 5 classes") && strstr(lerr, "record "),
          "label beyond the class count: loader %d: %s", code(p.load_status), lerr);
    free(lerr);

    /* 7. Usage: bad flags, missing data, preset mismatch, a terminal. */
    char *out, *e2;
    char *a1[] = {(char *)load_bin, "--workers", "0", raw, NULL};
    int st = test_run(a1, &out, &e2);
    CHECK(code(st) == 2 && strstr(e2, "--workers"), "--workers 0: %d %s", code(st), e2);
    free(out), free(e2);
    const char *nope[] = {NULL};
    /* Rings larger than memory are refused before anything is made. */
    const char *huge[] = {"--workers", "64", "--batch", "10000", "--slots", "1024", NULL};
    start(&p, raw, huge, nope);
    test_pipeline_wait(&p);
    lerr = test_read_file(p.load_err, NULL);
    CHECK(code(p.load_status) == 1 && lerr && strstr(lerr, "the rings need") && strstr(lerr, "TiB") &&
              strstr(lerr, "--slots") && strstr(lerr, "--batch") && strstr(lerr, "--workers") &&
              strstr(lerr, "may still use") && !strstr(lerr, "worker 0 pid"),
          "rings of 4 TiB: loader exit %d: %s", code(p.load_status), lerr ? lerr : "");
    free(lerr);
    start(&p, test_path("nope.lmdb"), nope, nope);
    test_pipeline_wait(&p);
    lerr = test_read_file(p.load_err, NULL);
    CHECK(code(p.load_status) == 1 && lerr && strstr(lerr, "nope.lmdb"), "missing data: %s", lerr);
    free(lerr);
    const char *big[] = {"--preset", "cifar", NULL};
    char jpg[4200];
    snprintf(jpg, sizeof jpg, "%s", test_path("jpeg.lmdb"));
    fixture_jpeg(jpg, 6);
    start(&p, jpg, big, nope);
    test_pipeline_wait(&p);
    lerr = test_read_file(p.load_err, NULL);
    CHECK(code(p.load_status) == 1 && lerr && strstr(lerr, "without resizing"), "preset mismatch: %s", lerr);
    free(lerr);
    /* --decode takes one of three names. */
    char *a2[] = {(char *)load_bin, "--decode", "fast", jpg, NULL};
    st = test_run(a2, &out, &e2);
    CHECK(code(st) == 2 && strstr(e2, "--decode"), "--decode fast: %d %s", code(st), e2);
    free(out), free(e2);
    /* --tune measures the loader on the data and recommends a setting; a
     * target of 1 pair/s is met by one worker. */
    char *a3[] = {(char *)load_bin, "--tune", "--tune-seconds", "0.3", "--batch", "2", "--target", "1", jpg, NULL};
    st = test_run(a3, &out, &e2);
    CHECK(code(st) == 0 && strstr(out, "recommendation: --workers 1 ") && strstr(out, "pairs/s"),
          "--tune: exit %d, out %s, err %s", code(st), out, e2);
    free(out), free(e2);
    char *a4[] = {(char *)load_bin, "--target", "5", jpg, NULL};
    st = test_run(a4, &out, &e2);
    CHECK(code(st) == 2 && strstr(e2, "--tune"), "--target without --tune: %d %s", code(st), e2);
    free(out), free(e2);
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master >= 0 && grantpt(master) == 0 && unlockpt(master) == 0) {
        int pid = fork();
        if (pid == 0) {
            int slave = open(ptsname(master), O_RDWR | O_NOCTTY);
            dup2(slave, 1);
            int dn = open("/dev/null", O_WRONLY);
            dup2(dn, 2);
            execl(load_bin, load_bin, raw, (char *)NULL);
            _exit(127);
        }
        waitpid(pid, &st, 0);
        CHECK(code(st) == 2, "amdim-load wrote to a terminal (exit %d)", code(st));
        close(master);
    }
    /* A consumer fed something else says so. */
    char *sh[] = {"/bin/sh", "-c", NULL, NULL};
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "echo hello | %s", peek_bin);
    sh[2] = cmd;
    st = test_run(sh, &out, &e2);
    CHECK(code(st) == 1 && strstr(e2, "not amdim-load's control pipe"), "peek on junk: %d %s", code(st), e2);
    free(out), free(e2);
    CHECK(count_dev_shm() == shm_before, "/dev/shm changed");
    return test_finish("test_loader_failures");
}
