/* Hostile packer sources fail with a message naming the file (and line)
 * and leave no temporary output behind: an IDX header whose dimensions'
 * product wraps 64 bits, a gzip bomb behind an IDX header (and labels file),
 * list paths outside the root, a list line holding a NUL byte, and a full
 * disk (a 1 MiB tmpfs in a private mount namespace: skipped where the test
 * may not make one) called "No space left on device", and two packs into
 * one split, the second starting before the first completes. */
#include <dirent.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "amdim_dataset.h"
#include "amdim_pack.h"
#include "testutil.h"

static int pack(amdim_pack_format f, const char *src, const char *labels, const char *out, int outside,
                char *err, size_t n)
{
    amdim_pack_options o = {0};
    o.format = f;
    o.src = src;
    o.labels = labels;
    o.out = out;
    o.threads = 2;
    o.allow_outside_root = outside;
    amdim_pack_summary sum;
    return amdim_pack_run(&o, &sum, err, n);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* Nothing named like a temporary output is left in the test directory. */
static int no_temporaries(void)
{
    DIR *d = opendir(test_tmpdir());
    struct dirent *e;
    int ok = 1;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp."))
            ok = 0;
    if (d)
        closedir(d);
    return ok;
}

/* Gzip of a header followed by `zeros` zero bytes. */
static void write_gz(const char *path, const uint8_t *head, size_t hlen, size_t zeros)
{
    gzFile gz = gzopen(path, "wb1");
    REQUIRE(gz, "gzopen %s", path);
    gzwrite(gz, head, (unsigned)hlen);
    static uint8_t block[1 << 16];
    for (size_t done = 0; done < zeros; done += sizeof block)
        gzwrite(gz, block, (unsigned)(zeros - done < sizeof block ? zeros - done : sizeof block));
    gzclose(gz);
}

static void test_idx_wrap(void)
{
    /* 3430788111 images of 60912x29424x3 = 2^64 * 3 + 351488 bytes: the
     * product wraps to what the file holds. */
    const uint32_t count = 3430788111u, rows = 60912, cols = 29424;
    const size_t data = 351488;
    uint8_t *f = calloc(1, 20 + data);
    REQUIRE(f, "calloc");
    f[2] = 0x08, f[3] = 4;
    put_be32(f + 4, count), put_be32(f + 8, rows), put_be32(f + 12, cols), put_be32(f + 16, 3);
    test_write_file(test_path("wrap-images-idx3-ubyte"), f, 20 + data);
    free(f);
    uint8_t lab[8] = {0, 0, 0x08, 1};
    put_be32(lab + 4, count);
    write_gz(test_path("wrap-labels-idx1-ubyte"), lab, 8, 0); /* never read: the images fail first */
    char err[1024];
    int st = pack(AMDIM_PACK_IDX, test_path("wrap-images-idx3-ubyte"), test_path("wrap-labels-idx1-ubyte"),
                  test_path("wrap.lmdb"), 0, err, sizeof err);
    CHECK(st == AMDIM_E_TOO_LARGE && strstr(err, "wrap-images-idx3-ubyte") && strstr(err, "3430788111"),
          "wrapping IDX: %d %s", st, err);
    CHECK(!test_exists(test_path("wrap.lmdb")) && no_temporaries(), "wrapping IDX left output behind");
}

static void test_gzip_bombs(void)
{
    /* 10 images of 28x28 (7840 bytes) promised; 64 MiB of zeros given. */
    uint8_t h[16] = {0, 0, 0x08, 3};
    put_be32(h + 4, 10), put_be32(h + 8, 28), put_be32(h + 12, 28);
    write_gz(test_path("bomb-images-idx3-ubyte.gz"), h, 16, (size_t)64 << 20);
    uint8_t lab[8 + 10] = {0, 0, 0x08, 1};
    put_be32(lab + 4, 10);
    write_gz(test_path("bomb-labels-idx1-ubyte.gz"), lab, sizeof lab, 0);
    char err[1024];
    int st = pack(AMDIM_PACK_IDX, test_path("bomb-images-idx3-ubyte.gz"), NULL, test_path("bomb.lmdb"), 0, err, sizeof err);
    /* The reader stops one byte past the promised 7856: "more than". */
    CHECK(st == AMDIM_E_CORRUPT && strstr(err, "bomb-images-idx3-ubyte.gz") && strstr(err, "more than 7840 bytes"),
          "IDX images bomb: %d %s", st, err);
    /* Good images, but a labels file that inflates far past 8 + 10 bytes. */
    uint8_t img[16 + 7840] = {0, 0, 0x08, 3};
    put_be32(img + 4, 10), put_be32(img + 8, 28), put_be32(img + 12, 28);
    write_gz(test_path("ok-images-idx3-ubyte.gz"), img, sizeof img, 0);
    write_gz(test_path("bomb-labels.gz"), lab, sizeof lab, (size_t)64 << 20);
    st = pack(AMDIM_PACK_IDX, test_path("ok-images-idx3-ubyte.gz"), test_path("bomb-labels.gz"), test_path("bomb.lmdb"),
              0, err, sizeof err);
    CHECK(st == AMDIM_E_CORRUPT && strstr(err, "bomb-labels.gz") && strstr(err, "more than 18 bytes"),
          "IDX labels bomb: %d %s", st, err);
    CHECK(!test_exists(test_path("bomb.lmdb")) && no_temporaries(), "bombs left output behind");
}

static void test_list_paths(void)
{
    uint8_t px[16 * 16 * 3];
    test_pattern(px, 16, 16, 3, 1);
    test_mkdirs(test_path("root/a"));
    test_write_jpeg(test_path("root/a/in.jpg"), px, 16, 16, 3, 90);
    test_write_jpeg(test_path("outside.jpg"), px, 16, 16, 3, 90);
    char abs_line[4200];
    snprintf(abs_line, sizeof abs_line, "a/in.jpg 0\n%s 1\n", test_path("outside.jpg"));
    const struct {
        const char *name, *text;
        int outside; /* --allow-outside-root */
        int want;    /* expected status */
        const char *says;
    } cases[] = {
        {"inside.txt", "a/in.jpg 0\na/./../a/in.jpg 1\n", 0, AMDIM_OK, NULL},
        {"dotdot.txt", "a/in.jpg 0\na/../../outside.jpg 1\n", 0, AMDIM_E_INVALID, "dotdot.txt:2: path 'a/../../outside.jpg' is outside"},
        {"absolute.txt", abs_line, 0, AMDIM_E_INVALID, "absolute.txt:2: path '/"},
        {"allowed.txt", "a/in.jpg 0\na/../../outside.jpg 1\n", 1, AMDIM_OK, NULL},
        {"nul.txt", "a/in.jpg 0\n\0a/in.jpg 1\n", 0, AMDIM_E_INVALID, "nul.txt:2: line holds a NUL byte"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char list[64], out[64], err[1024];
        snprintf(list, sizeof list, "root/%s", cases[i].name);
        snprintf(out, sizeof out, "%s.lmdb", cases[i].name);
        size_t len = strlen(cases[i].text);
        if (strstr(cases[i].name, "nul"))
            len = 11 + 12; /* "a/in.jpg 0\n" + "\0a/in.jpg 1\n" */
        test_write_file(test_path(list), cases[i].text, len);
        int st = pack(AMDIM_PACK_LIST, test_path(list), NULL, test_path(out), cases[i].outside, err, sizeof err);
        CHECK(st == cases[i].want && (!cases[i].says || strstr(err, cases[i].says)), "%s: status %d: %s",
              cases[i].name, st, st ? err : "ok");
    }
    CHECK(no_temporaries(), "list cases left temporaries");
}

static void test_full_disk(void)
{
    enum { N = 400, REC = 3073 };
    uint8_t *raw = malloc((size_t)N * REC);
    REQUIRE(raw, "malloc");
    for (size_t i = 0; i < (size_t)N * REC; i++)
        raw[i] = (uint8_t)(i * 2654435761u >> 13); /* incompressible enough */
    for (int i = 0; i < N; i++)
        raw[(size_t)i * REC] = (uint8_t)(i % 10);
    test_write_file(test_path("full.bin"), raw, (size_t)N * REC);
    free(raw);
    test_mkdirs(test_path("full"));
    int fds[2];
    REQUIRE(pipe(fds) == 0, "pipe");
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        close(fds[0]);
        if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
            mount("none", test_path("full"), "tmpfs", 0, "size=1m") != 0)
            _exit(TEST_SKIP);
        char err[1024];
        amdim_pack_options o = {0};
        o.format = AMDIM_PACK_CIFAR10;
        o.src = test_path("full.bin");
        o.out = test_path("full/out.lmdb");
        o.threads = 2;
        amdim_pack_summary sum;
        int st = amdim_pack_run(&o, &sum, err, sizeof err);
        (void)!write(fds[1], &st, sizeof st);
        (void)!write(fds[1], err, strlen(err) + 1);
        _exit(0);
    }
    close(fds[1]);
    int st = 0, ws;
    char err[1024] = "";
    ssize_t got = read(fds[0], &st, sizeof st);
    if (got == (ssize_t)sizeof st)
        got = read(fds[0], err, sizeof err - 1);
    close(fds[0]);
    waitpid(pid, &ws, 0);
    if (WIFEXITED(ws) && WEXITSTATUS(ws) == TEST_SKIP) {
        printf("test_fault_pack: full disk skipped (cannot mount a tmpfs here)\n");
        return;
    }
    CHECK(st == AMDIM_E_IO && strstr(err, "No space left on device") && strstr(err, "out.lmdb"),
          "full disk: status %d: %s", st, err);
}

/* Pack A into split t of same.lmdb, run from inside pack B's first note
 * (which comes after B found no split t, before it takes the file's lock). */
static int inner_status;
static void run_inner_pack(const amdim_pack_event *ev, void *ctx)
{
    (void)ctx;
    if (ev->kind != AMDIM_PACK_EVENT_NOTE || inner_status != 1)
        return;
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_IMAGEFOLDER;
    o.src = test_path("srcA");
    o.out = test_path("same.lmdb");
    o.split = "t";
    o.threads = 1;
    amdim_pack_summary sum;
    char err[1024];
    inner_status = amdim_pack_run(&o, &sum, err, sizeof err);
    if (inner_status)
        fprintf(stderr, "inner pack: %s\n", err);
}

static void test_concurrent_split(void)
{
    uint8_t px[24 * 24 * 3];
    test_pattern(px, 24, 24, 3, 3);
    char p[4200];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "srcA/c/%d.jpg", i);
        test_mkdirs(test_path("srcA/c"));
        test_write_jpeg(test_path(p), px, 24, 24, 3, 90);
    }
    test_mkdirs(test_path("srcB/c"));
    test_write_jpeg(test_path("srcB/c/only.jpg"), px, 24, 24, 3, 90);
    test_write_file(test_path("srcB/c/notes.txt"), "x", 1); /* makes B note it, before its lock */
    char err[1024];
    amdim_pack_summary sum;
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_IMAGEFOLDER;
    o.src = test_path("srcA");
    o.out = test_path("same.lmdb");
    o.split = "a";
    REQUIRE(amdim_pack_run(&o, &sum, err, sizeof err) == 0, "base pack: %s", err);
    o.src = test_path("srcB");
    o.split = "t";
    o.on_event = run_inner_pack;
    inner_status = 1;
    int st = amdim_pack_run(&o, &sum, err, sizeof err);
    CHECK(inner_status == 0, "the inner pack failed: %d", inner_status);
    CHECK(st == AMDIM_E_EXISTS && strstr(err, "completed by another pack"), "second pack into split t: %d %s", st, err);
    amdim_dataset *ds;
    REQUIRE(amdim_dataset_open(&ds, test_path("same.lmdb"), err, sizeof err) == 0, "%s", err);
    amdim_split_info info;
    CHECK(amdim_dataset_split_info(ds, "t", &info) == 0 && info.records == 3,
          "split t lost the first pack's 3 records: %llu", (unsigned long long)info.records);
    amdim_dataset_close(ds);
}

int main(void)
{
    test_idx_wrap();
    test_gzip_bombs();
    test_list_paths();
    test_full_disk();
    test_concurrent_split();
    return test_finish("test_fault_pack");
}
