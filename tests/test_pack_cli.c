/* amdim-pack as users run it: help and usage errors (exit 2), failures
 * naming the file (exit 1), --info, and interruption: SIGKILL leaves
 * nothing under the final name (and the next run cleans up), SIGINT
 * removes its temporary files, a killed pack adding a split leaves the
 * existing splits intact. Argument: path of the amdim-pack binary. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static const char *bin;

static int run(char **out, char **err, const char *a1, const char *a2, const char *a3, const char *a4,
               const char *a5, const char *a6)
{
    char *argv[] = {(char *)bin, (char *)a1, (char *)a2, (char *)a3, (char *)a4, (char *)a5, (char *)a6, NULL};
    return test_run(argv, out, err);
}

static int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

/* Starts a pack with stderr on a pipe, waits for a progress line that shows
 * it is part-way, then sends `sig`. Returns the wait status. */
static int interrupt_pack(const char *src, const char *out, const char *split, int sig)
{
    int fds[2];
    REQUIRE(pipe(fds) == 0, "pipe");
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        execl(bin, bin, "--threads", "1", "--progress-interval", "0.01", "--split", split, "imagefolder", src, out, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[1024];
    int sent = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long done, total;
        const char *p = strstr(line, "progress ");
        if (!sent && p && sscanf(p, "progress %llu/%llu", &done, &total) == 2 && done < total) {
            kill(pid, sig);
            sent = 1;
        }
    }
    fclose(f);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    CHECK(sent, "the pack finished before it could be interrupted (fixture too small?)");
    return status;
}

static int count_temps(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: test_pack_cli PATH-TO-amdim-pack");
    bin = argv[1];
    char *out, *err;
    int st;

    st = run(&out, &err, "--help", NULL, NULL, NULL, NULL, NULL);
    CHECK(exit_code(st) == 0 && strstr(out, "Usage: amdim-pack") && !err[0], "--help: %d", exit_code(st));
    free(out), free(err);
    struct {
        const char *args[4];
        const char *msg;
    } usage[] = {
        {{NULL}, "expected FORMAT SRC OUT"},
        {{"jpegs", "a", "b", NULL}, "unknown FORMAT 'jpegs'"},
        {{"--threads", "0", NULL}, "--threads must be an integer in 1..1024"},
        {{"--quality", "101", NULL}, "--quality must be an integer in 1..100"},
        {{"--quality", "9x", NULL}, "got '9x'"},
        {{"--bogus", NULL}, "Try 'amdim-pack --help'"},
        {{"--root", "/", "idx", "a"}, "expected FORMAT SRC OUT"},
        {{"--info", NULL}, "--info takes exactly one file"},
    };
    for (size_t i = 0; i < sizeof usage / sizeof *usage; i++) {
        st = run(&out, &err, usage[i].args[0], usage[i].args[1], usage[i].args[2], usage[i].args[3], NULL, NULL);
        CHECK(exit_code(st) == 2 && strstr(err, usage[i].msg), "usage case %zu: exit %d, stderr: %s", i, exit_code(st), err);
        free(out), free(err);
    }
    st = run(&out, &err, "--root", "/", "idx", "a", "b", NULL);
    CHECK(exit_code(st) == 2 && strstr(err, "--root applies to the list format"), "--root with idx: %s", err);
    free(out), free(err);

    /* Failures name the file and leave nothing behind. */
    const char *missing = test_path("no-such-dir");
    st = run(&out, &err, "imagefolder", missing, test_path("x.lmdb"), NULL, NULL, NULL);
    CHECK(exit_code(st) == 1 && strstr(err, "amdim-pack: pack failed:") && strstr(err, missing), "missing source: %s", err);
    CHECK(!test_exists(test_path("x.lmdb")), "output after failure");
    free(out), free(err);
    st = run(&out, &err, "--info", test_path("nothing.lmdb"), NULL, NULL, NULL, NULL);
    CHECK(exit_code(st) == 1 && strstr(err, "nothing.lmdb"), "--info missing: %s", err);
    free(out), free(err);
    test_write_file(test_path("junk.lmdb"), "0123456789abcdef", 16);
    st = run(&out, &err, "--info", test_path("junk.lmdb"), NULL, NULL, NULL, NULL);
    CHECK(exit_code(st) == 1 && strstr(err, "junk.lmdb") && strstr(err, "LMDB"), "--info junk: %s", err);
    free(out), free(err);

    /* A raw dataset, then --info. */
    uint8_t rec[3073 * 4] = {0};
    for (int i = 0; i < 4; i++)
        rec[3073 * i] = (uint8_t)i;
    test_write_file(test_path("batch.bin"), rec, sizeof rec);
    char *ds = strdup(test_path("c.lmdb"));
    st = run(&out, &err, "cifar10", test_path("batch.bin"), ds, NULL, NULL, NULL);
    CHECK(exit_code(st) == 0 && strstr(out, "records: 4\n") && strstr(err, "cifar10"), "cifar pack: %s %s", out, err);
    free(out), free(err);
    st = run(&out, &err, "cifar10", test_path("batch.bin"), ds, NULL, NULL, NULL);
    CHECK(exit_code(st) == 1 && strstr(err, "already holds split train"), "second pack: %s", err);
    free(out), free(err);
    st = run(&out, &err, "--info", ds, NULL, NULL, NULL, NULL);
    CHECK(exit_code(st) == 0, "--info: %s", err);
    const char *keys[] = {"format_version: 1\n", "records: 4\n", "classes: 10\n", "skipped: 0\n",
                          "train.records: 4\n", "train.mean: ", "train.encoding: raw\n", "splits: train\n"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        CHECK(strstr(out, keys[i]), "--info lacks '%s':\n%s", keys[i], out);
    free(out), free(err);

    /* Interruption. A JPEG tree big enough to take a moment on one thread. */
    const int n = 1400;
    uint8_t *px = malloc(320 * 240 * 3);
    char rel[64];
    for (int i = 0; i < n; i++) {
        snprintf(rel, sizeof rel, "tree/c%d", i % 4);
        if (i < 4)
            test_mkdirs(test_path(rel));
        test_pattern(px, 320, 240, 3, (unsigned)i);
        snprintf(rel, sizeof rel, "tree/c%d/%05d.jpg", i % 4, i);
        test_write_jpeg(test_path(rel), px, 320, 240, 3, 85);
    }
    free(px);
    char *tree = strdup(test_path("tree"));
    char *killed = strdup(test_path("killed.lmdb"));
    st = interrupt_pack(tree, killed, "train", SIGKILL);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "pack was not killed: status %d", st);
    CHECK(!test_exists(killed), "SIGKILL left %s", killed);
    CHECK(count_temps(test_tmpdir()) > 0, "expected the killed pack's temporary file");
    /* The next run removes the dead pack's temporary files and succeeds. */
    st = run(&out, &err, "-q", "imagefolder", tree, killed, NULL, NULL);
    CHECK(exit_code(st) == 0 && strstr(err, "left by an interrupted pack"), "rerun: %s", err);
    CHECK(count_temps(test_tmpdir()) == 0, "temporary files remain after the rerun");
    free(out), free(err);

    /* SIGINT: clean exit 130, no temporary files. */
    char *interrupted = strdup(test_path("int.lmdb"));
    st = interrupt_pack(tree, interrupted, "train", SIGINT);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 130, "SIGINT exit status %d", exit_code(st));
    CHECK(!test_exists(interrupted) && count_temps(test_tmpdir()) == 0, "SIGINT left files behind");

    /* Killing a pack that adds a split leaves the dataset as it was. */
    st = interrupt_pack(tree, ds, "extra", SIGKILL);
    CHECK(WIFSIGNALED(st), "add-split pack was not killed");
    st = run(&out, &err, "--info", ds, NULL, NULL, NULL, NULL);
    CHECK(exit_code(st) == 0 && strstr(out, "splits: train\n") && strstr(out, "records: 4\n"),
          "dataset after a killed add-split: %s %s", out, err);
    free(out), free(err);
    st = run(&out, &err, "-q", "--split", "extra", "imagefolder", tree, ds);
    CHECK(exit_code(st) == 0 && strstr(err, "half-written split extra"), "re-adding the split: %s", err);
    free(out), free(err);
    st = run(&out, &err, "--info", ds, NULL, NULL, NULL, NULL);
    CHECK(exit_code(st) == 0 && strstr(out, "splits: extra train\n") && strstr(out, "extra.records: 1400\n"), "after re-adding: %s", out);
    free(out), free(err);
    free(tree);
    free(killed);
    free(interrupted);
    free(ds);
    return test_finish("test_pack_cli");
}
