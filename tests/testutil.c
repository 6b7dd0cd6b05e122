#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <png.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <turbojpeg.h>
#include <unistd.h>

int test_failures;
static char tmpdir[512];

int test_finish(const char *name)
{
    test_cleanup();
    if (test_failures) {
        printf("%s: %d checks failed\n", name, test_failures);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

const char *test_tmpdir(void)
{
    if (!tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/amdim-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            exit(1);
        }
    }
    return tmpdir;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void test_cleanup(void)
{
    if (tmpdir[0] && !getenv("AMDIM_TEST_KEEP"))
        nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    tmpdir[0] = 0;
}

const char *test_path(const char *rel)
{
    static char bufs[8][4096];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", test_tmpdir(), rel);
    return b;
}

void test_mkdirs(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            mkdir(buf, 0755);
            *p = '/';
        }
    mkdir(buf, 0755);
}

void test_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    REQUIRE(f, "cannot create %s: %s", path, strerror(errno));
    REQUIRE(fwrite(data, 1, len, f) == len || len == 0, "short write to %s", path);
    fclose(f);
}

char *test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    size_t r;
    while ((r = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n < 2) {
            cap *= 2;
            b = realloc(b, cap);
        }
    }
    fclose(f);
    b[n] = 0;
    if (len)
        *len = n;
    return b;
}

int test_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

void test_pattern(uint8_t *px, int w, int h, int channels, unsigned seed)
{
    uint32_t s = seed * 2654435761u + 1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < channels; c++) {
                s = s * 1664525u + 1013904223u;
                int v = (x * (60 + 40 * c) / (w > 1 ? w : 1)) + (y * (90 - 20 * c) / (h > 1 ? h : 1)) +
                        (int)((seed * 37 + c * 50) % 80) + (int)(s >> 28);
                px[((size_t)y * w + x) * channels + c] = (uint8_t)(v > 255 ? 255 : v);
            }
}

uint8_t *test_encode_jpeg(const uint8_t *px, int w, int h, int channels, int quality, size_t *len)
{
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    unsigned long size = 0;
    int pf = channels == 1 ? TJPF_GRAY : channels == 4 ? TJPF_CMYK : TJPF_RGB;
    int samp = channels == 1 ? TJSAMP_GRAY : TJSAMP_420;
    REQUIRE(tjCompress2(tj, px, w, 0, h, pf, &buf, &size, samp, quality, 0) == 0, "tjCompress2: %s",
            tjGetErrorStr2(tj));
    tjDestroy(tj);
    uint8_t *out = malloc(size);
    memcpy(out, buf, size);
    tjFree(buf);
    *len = size;
    return out;
}

void test_write_jpeg(const char *path, const uint8_t *px, int w, int h, int channels, int quality)
{
    size_t len;
    uint8_t *j = test_encode_jpeg(px, w, h, channels, quality, &len);
    test_write_file(path, j, len);
    free(j);
}

void test_write_png(const char *path, const uint8_t *rgb, int w, int h)
{
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = (png_uint_32)w;
    pi.height = (png_uint_32)h;
    pi.format = PNG_FORMAT_RGB;
    REQUIRE(png_image_write_to_file(&pi, path, 0, rgb, 0, NULL), "png write %s: %s", path, pi.message);
}

static char *slurp_fd(int fd)
{
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    lseek(fd, 0, SEEK_SET);
    ssize_t r;
    while ((r = read(fd, b + n, cap - n - 1)) > 0) {
        n += (size_t)r;
        if (cap - n < 2)
            b = realloc(b, cap *= 2);
    }
    b[n] = 0;
    return b;
}

int test_run(char *const argv[], char **out, char **err)
{
    char po[4200], pe[4200];
    snprintf(po, sizeof po, "%s/.stdout-XXXXXX", test_tmpdir());
    snprintf(pe, sizeof pe, "%s/.stderr-XXXXXX", test_tmpdir());
    int fo = mkstemp(po), fe = mkstemp(pe);
    REQUIRE(fo >= 0 && fe >= 0, "mkstemp");
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        dup2(fo, 1);
        dup2(fe, 2);
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (out)
        *out = slurp_fd(fo);
    if (err)
        *err = slurp_fd(fe);
    close(fo);
    close(fe);
    unlink(po);
    unlink(pe);
    return status;
}
