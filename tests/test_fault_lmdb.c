/* A packed dataset cut short (an interrupted copy, a full disk) is refused
 * at open with a "truncated file" error naming it, for several cut sizes,
 * instead of a SIGBUS inside LMDB when a missing page is touched. Each
 * attempt runs in a child so that a crash is a failed check, not a dead
 * test. Argument: path of the amdim-pack binary (for --info). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lmdb.h>

#include "amdim_dataset.h"
#include "amdim_pack.h"
#include "testutil.h"

/* Opens, reads the split's info and index and every record: what
 * amdim-pack --info and amdim-load do. Returns the first failing status and
 * its message. */
static int read_all(const char *path, char *err, size_t n)
{
    amdim_dataset *ds;
    int st = amdim_dataset_open(&ds, path, err, n);
    if (st)
        return st;
    amdim_split_info info;
    uint64_t *off = NULL, count = 0;
    uint32_t *len = NULL;
    if ((st = amdim_dataset_split_info(ds, "train", &info)) == 0 &&
        (st = amdim_dataset_index(ds, "train", &off, &len, &count)) == 0) {
        for (uint64_t i = 0; i < count && st == 0; i++) {
            amdim_record r;
            st = amdim_dataset_get(ds, "train", i, &r);
        }
    }
    if (st)
        snprintf(err, n, "%s", amdim_dataset_error(ds));
    free(off);
    free(len);
    amdim_dataset_close(ds);
    return st;
}

/* read_all in a child; the child reports status and message through a pipe. */
static int read_all_child(const char *path, char *err, size_t n, int *signaled)
{
    int fds[2];
    REQUIRE(pipe(fds) == 0, "pipe");
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        close(fds[0]);
        char msg[1024];
        int st = read_all(path, msg, sizeof msg);
        (void)!write(fds[1], &st, sizeof st);
        (void)!write(fds[1], msg, strlen(msg) + 1);
        _exit(0);
    }
    close(fds[1]);
    int st = 1;
    memset(err, 0, n);
    if (read(fds[0], &st, sizeof st) != (ssize_t)sizeof st)
        st = 1;
    ssize_t got = read(fds[0], err, n - 1);
    (void)got;
    close(fds[0]);
    int ws;
    waitpid(pid, &ws, 0);
    *signaled = WIFSIGNALED(ws) ? WTERMSIG(ws) : 0;
    return st;
}

/* Overwrites one meta value in place, as a hostile or buggy writer could. */
static void set_meta(const char *path, const char *key, const char *value)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    REQUIRE(mdb_env_create(&env) == 0 && mdb_env_set_maxdbs(env, 64) == 0 &&
                mdb_env_open(env, path, MDB_NOSUBDIR | MDB_NOLOCK, 0644) == 0,
            "mdb open %s", path);
    REQUIRE(mdb_txn_begin(env, NULL, 0, &txn) == 0 && mdb_dbi_open(txn, "meta", 0, &dbi) == 0, "meta db");
    MDB_val k = {strlen(key), (void *)key}, v = {strlen(value), (void *)value};
    REQUIRE(mdb_put(txn, dbi, &k, &v, 0) == 0 && mdb_txn_commit(txn) == 0, "put %s", key);
    mdb_env_close(env);
}

int main(int argc, char **argv)
{
    const char *pack_bin = argc > 1 ? argv[1] : NULL;
    /* A CIFAR-10 batch of 200 records: about 700 KiB packed. */
    enum { N = 200, REC = 1 + 3072 };
    uint8_t *raw = malloc((size_t)N * REC);
    REQUIRE(raw, "malloc");
    for (int i = 0; i < N; i++) {
        raw[(size_t)i * REC] = (uint8_t)(i % 10);
        for (int j = 1; j < REC; j++)
            raw[(size_t)i * REC + j] = (uint8_t)(i * 7 + j * 13);
    }
    test_write_file(test_path("batch.bin"), raw, (size_t)N * REC);
    free(raw);
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_CIFAR10;
    o.src = test_path("batch.bin");
    o.out = test_path("whole.lmdb");
    o.threads = 2;
    amdim_pack_summary sum;
    char err[1024];
    REQUIRE(amdim_pack_run(&o, &sum, err, sizeof err) == 0, "pack: %s", err);
    size_t size;
    char *whole = test_read_file(test_path("whole.lmdb"), &size);
    REQUIRE(whole && size > 128 * 1024, "packed file is %zu bytes", size);
    int sig = 0;
    REQUIRE(read_all_child(test_path("whole.lmdb"), err, sizeof err, &sig) == 0 && !sig, "whole file: %s", err);

    const struct {
        const char *name;
        size_t len;
    } cuts[] = {
        {"8KiB", 8192},
        {"64KiB", 65536},
        {"half", size / 2},
        {"minus-8KiB", size - 8192},
        {"minus-1", size - 1},
    };
    for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
        char name[64];
        snprintf(name, sizeof name, "cut-%s.lmdb", cuts[c].name);
        const char *path = test_path(name);
        test_write_file(path, whole, cuts[c].len);
        int st = read_all_child(path, err, sizeof err, &sig);
        CHECK(!sig, "%s: reader killed by signal %d", name, sig);
        CHECK(st == AMDIM_E_TRUNCATED && strstr(err, "truncated file") && strstr(err, name),
              "%s (%zu of %zu bytes): status %d: %s", name, cuts[c].len, size, st, err);
        if (pack_bin) {
            char *argv2[] = {(char *)pack_bin, "--info", (char *)path, NULL}, *out = NULL, *perr = NULL;
            int ws = test_run(argv2, &out, &perr);
            CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 1 && perr && strstr(perr, "truncated file"),
                  "amdim-pack --info %s: status %d, stderr: %s", name, ws, perr ? perr : "");
            free(out);
            free(perr);
        }
    }
    /* An absurd image size in the meta would pick another preset for the
     * same records: refused, naming split and record. */
    test_write_file(test_path("meta.lmdb"), whole, size);
    set_meta(test_path("meta.lmdb"), "train.width", "100000");
    int st = read_all_child(test_path("meta.lmdb"), err, sizeof err, &sig);
    CHECK(!sig && st == AMDIM_E_CORRUPT && strstr(err, "100000x32") && strstr(err, "record 0 is 32x32"),
          "meta width 100000: status %d: %s", st, err);
    free(whole);
    test_cleanup();
    return test_finish("test_fault_lmdb");
}
