/* amdim-embed under faults (issue 26): --batch takes whole numbers only
 * ("1e3" is bad usage, not batch 1); --out through a symbolic link writes
 * where it points and keeps the link; a FIFO is written in place (its
 * reader gets the file) rather than replaced by a regular file; a full
 * device is an error naming the path; a checkpoint of NaN weights or one
 * whose metadata claims a model far larger than the file is refused
 * before anything is embedded. Never names /dev/null or /dev/full itself,
 * so an amdim-embed that replaces its target cannot damage them.
 * Arguments: amdim-embed. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdim_checkpoint.h"
#include "amdim_trainer.h"
#include "testutil.h"

static const char *embed_bin;
static char data[4200], ckpt[4300];

/* amdim-embed --checkpoint CK --out OUT [extra] data: exit code, stderr in *e. */
static int embed(const char *ck, const char *out, const char *extra1, const char *extra2, char **e)
{
    char *a[16];
    int n = 0;
    a[n++] = "/usr/bin/timeout";
    a[n++] = "60";
    a[n++] = (char *)embed_bin;
    a[n++] = "--checkpoint";
    a[n++] = (char *)ck;
    a[n++] = "--out";
    a[n++] = (char *)out;
    if (extra1)
        a[n++] = (char *)extra1;
    if (extra2)
        a[n++] = (char *)extra2;
    a[n++] = data;
    a[n] = NULL;
    char *o;
    int s = test_run(a, &o, e);
    free(o);
    return WIFEXITED(s) ? WEXITSTATUS(s) : 128 + WTERMSIG(s);
}

static int is_npy(const char *path)
{
    size_t len;
    char *f = test_read_file(path, &len);
    int ok = f && len > 128 && memcmp(f, "\x93NUMPY", 6) == 0;
    free(f);
    return ok;
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: test_fault_embed AMDIM-EMBED");
    embed_bin = argv[1];
    snprintf(data, sizeof data, "%s", test_path("data.lmdb"));
    test_make_stripes(data, 16, 40);
    amdim_model *m = test_tiny_model(0, 1);
    amdim_checkpoint_info info = {.step = 2, .seed = 1, .epochs = 1, .max_steps = -1, .batch = 8};
    snprintf(info.preset, sizeof info.preset, "cifar");
    char err[1024];
    REQUIRE(amdim_checkpoint_save(m, test_tmpdir(), &info, err, sizeof err) == 0, "save: %s", err);
    amdim_model_destroy(m);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt-00000002.safetensors", test_tmpdir());
    char out[4300], real[4300], link[4300], fifo[4300];
    char *e;
    int rc;

    /* --batch is a checked whole number */
    snprintf(out, sizeof out, "%s/f.npy", test_tmpdir());
    rc = embed(ckpt, out, "--batch", "1e3", &e);
    CHECK(rc == 2 && strstr(e, "--batch") && strstr(e, "1e3"), "--batch 1e3: %d %s", rc, e);
    free(e);
    rc = embed(ckpt, out, "--batch", "7", &e);
    CHECK(rc == 0 && is_npy(out), "--batch 7: %d %s", rc, e);
    free(e);

    /* a symbolic link is followed, and stays a link */
    snprintf(real, sizeof real, "%s/real.npy", test_tmpdir());
    snprintf(link, sizeof link, "%s/link.npy", test_tmpdir());
    REQUIRE(symlink("real.npy", link) == 0, "symlink");
    rc = embed(ckpt, link, NULL, NULL, &e);
    struct stat sb;
    CHECK(rc == 0 && lstat(link, &sb) == 0 && S_ISLNK(sb.st_mode) && is_npy(real),
          "--out through a link: %d, link %s, %s", rc, S_ISLNK(sb.st_mode) ? "kept" : "replaced", e);
    free(e);
    /* a dangling link: the file is created where it points */
    snprintf(link, sizeof link, "%s/dangling.npy", test_tmpdir());
    snprintf(real, sizeof real, "%s/made-by-link.npy", test_tmpdir());
    REQUIRE(symlink(real, link) == 0, "symlink");
    rc = embed(ckpt, link, NULL, NULL, &e);
    CHECK(rc == 0 && lstat(link, &sb) == 0 && S_ISLNK(sb.st_mode) && is_npy(real), "dangling link: %d %s", rc, e);
    free(e);

    /* a full device behind a link: ENOSPC, naming the path */
    snprintf(link, sizeof link, "%s/full.npy", test_tmpdir());
    REQUIRE(symlink("/dev/full", link) == 0, "symlink");
    rc = embed(ckpt, link, NULL, NULL, &e); /* a device without --labels-out: bad usage */
    CHECK(rc == 2 && strstr(e, "--labels-out"), "a device without --labels-out: %d %s", rc, e);
    free(e);
    snprintf(real, sizeof real, "%s/full_labels.npy", test_tmpdir());
    rc = embed(ckpt, link, "--labels-out", real, &e);
    CHECK(rc == 1 && strstr(e, link) && strstr(e, "No space left on device") && lstat(link, &sb) == 0 &&
              S_ISLNK(sb.st_mode),
          "--out to a full device: %d %s", rc, e);
    printf("--out -> /dev/full: %s", e);
    free(e);

    /* a FIFO is written in place: its reader receives the .npy */
    snprintf(fifo, sizeof fifo, "%s/pipe.npy", test_tmpdir());
    snprintf(real, sizeof real, "%s/from-pipe.npy", test_tmpdir());
    REQUIRE(mkfifo(fifo, 0600) == 0, "mkfifo");
    pid_t reader = fork();
    REQUIRE(reader >= 0, "fork");
    if (reader == 0) {
        alarm(60); /* an amdim-embed that never opens the FIFO */
        int in = open(fifo, O_RDONLY), o = open(real, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        char buf[65536];
        ssize_t r;
        while (in >= 0 && (r = read(in, buf, sizeof buf)) > 0)
            if (write(o, buf, (size_t)r) != r)
                _exit(1);
        _exit(0);
    }
    char labels[4300];
    snprintf(labels, sizeof labels, "%s/pipe_labels.npy", test_tmpdir());
    rc = embed(ckpt, fifo, "--labels-out", labels, &e);
    if (rc != 0) { /* let the reader go */
        int w = open(fifo, O_WRONLY | O_NONBLOCK);
        if (w >= 0)
            close(w);
        else
            kill(reader, SIGKILL);
    }
    int rs;
    waitpid(reader, &rs, 0);
    CHECK(rc == 0 && lstat(fifo, &sb) == 0 && S_ISFIFO(sb.st_mode) && WIFEXITED(rs) && is_npy(real) && is_npy(labels),
          "--out to a FIFO: %d, %s, %s", rc, S_ISFIFO(sb.st_mode) ? "still a FIFO" : "replaced", e);
    free(e);

    /* NaN weights: refused, naming the tensor */
    {
        size_t len;
        char *f = test_read_file(ckpt, &len);
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--)
            hl = hl << 8 | (uint8_t)f[i];
        char *h = strndup(f + 8, hl), *at = strstr(h, "\"encoder.module.layer_list.0.conv.weight\":{");
        REQUIRE(at, "tensor");
        size_t begin = strtoull(strstr(at, "\"data_offsets\":[") + 16, NULL, 10);
        float nan = __builtin_nanf("");
        for (int k = 0; k < 10; k++)
            memcpy(f + 8 + hl + begin + 4 * k, &nan, 4);
        char bad[4300];
        snprintf(bad, sizeof bad, "%s/nan.safetensors", test_tmpdir());
        test_write_file(bad, f, len);
        free(h), free(f);
        rc = embed(bad, out, NULL, NULL, &e);
        CHECK(rc == 1 && strstr(e, "encoder.module.layer_list.0.conv.weight") && strstr(e, "nan"),
              "NaN weights: %d %s", rc, e);
        free(e);
    }
    /* metadata claiming ndf 256, n_rkhs 4096, depth 40 in a small file */
    {
        size_t len;
        char *f = test_read_file(ckpt, &len);
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--)
            hl = hl << 8 | (uint8_t)f[i];
        /* same-length edits keep the header's size: "4" -> "9", "32" -> "99" would not fit, so pad */
        char *h = strndup(f + 8, hl);
        const char *from[3] = {"\"ndf\":\"4\",", "\"n_rkhs\":\"32\",", "\"n_depth\":\"1\","};
        const char *to[3] = {"\"ndf\":\"256\",", "\"n_rkhs\":\"4096\",", "\"n_depth\":\"40\","};
        size_t grow = 0;
        for (int k = 0; k < 3; k++)
            grow += strlen(to[k]) - strlen(from[k]);
        size_t nh = (hl + grow + 7) / 8 * 8;
        char *g = calloc(1, 8 + nh + (len - 8 - hl));
        char *w = g + 8, *r = h;
        for (int k = 0; k < 3; k++) {
            char *at = strstr(r, from[k]);
            REQUIRE(at, "%s", from[k]);
            memcpy(w, r, (size_t)(at - r)), w += at - r;
            memcpy(w, to[k], strlen(to[k])), w += strlen(to[k]);
            r = at + strlen(from[k]);
        }
        memcpy(w, r, hl - (size_t)(r - h)), w += hl - (size_t)(r - h);
        while ((size_t)(w - g - 8) < nh)
            *w++ = ' ';
        for (int i = 0; i < 8; i++)
            g[i] = (char)(nh >> (8 * i));
        memcpy(w, f + 8 + hl, len - 8 - hl);
        char big[4300];
        snprintf(big, sizeof big, "%s/big.safetensors", test_tmpdir());
        test_write_file(big, g, 8 + nh + (len - 8 - hl));
        free(g), free(h), free(f);
        rc = embed(big, out, NULL, NULL, &e);
        CHECK(rc == 1 && strstr(e, big) && strstr(e, "holds"), "a small file claiming a large model: %d %s", rc, e);
        printf("a small file claiming ndf 256 n_rkhs 4096 depth 40: %s", e);
        free(e);
    }
    test_cleanup();
    return test_finish("test_fault_embed");
}
