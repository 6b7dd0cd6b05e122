#include "testutil.h"
#include "amdim_pack.h"
#include "amdim_philox.h"
#include "amdim_trainer.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <png.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
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

static int pipeline_n;
unsigned long test_pipeline_consumer_fsize;

void test_pipeline_start(test_pipeline *p, char *const load_argv[], char *const peek_argv[])
{
    memset(p, 0, sizeof *p);
    int k = pipeline_n++;
    snprintf(p->load_err, sizeof p->load_err, "%s/pipe%d.load.err", test_tmpdir(), k);
    snprintf(p->peek_out, sizeof p->peek_out, "%s/pipe%d.peek.out", test_tmpdir(), k);
    snprintf(p->peek_err, sizeof p->peek_err, "%s/pipe%d.peek.err", test_tmpdir(), k);
    int fds[2];
    REQUIRE(pipe(fds) == 0, "pipe");
    p->load_pid = fork();
    REQUIRE(p->load_pid >= 0, "fork");
    if (p->load_pid == 0) {
        setpgid(0, 0);
        dup2(fds[1], 1);
        int e = open(p->load_err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(e, 2);
        close(fds[0]);
        close(fds[1]);
        execv(load_argv[0], load_argv);
        _exit(127);
    }
    setpgid(p->load_pid, p->load_pid);
    p->pgid = p->load_pid;
    p->peek_pid = fork();
    REQUIRE(p->peek_pid >= 0, "fork");
    if (p->peek_pid == 0) {
        setpgid(0, p->pgid);
        if (test_pipeline_consumer_fsize) {
            struct rlimit r;
            getrlimit(RLIMIT_FSIZE, &r);
            r.rlim_cur = test_pipeline_consumer_fsize;
            signal(SIGXFSZ, SIG_IGN);
            setrlimit(RLIMIT_FSIZE, &r);
        }
        dup2(fds[0], 0);
        int o = open(p->peek_out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(p->peek_err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(o, 1);
        dup2(e, 2);
        close(fds[0]);
        close(fds[1]);
        execv(peek_argv[0], peek_argv);
        _exit(127);
    }
    setpgid(p->peek_pid, p->pgid);
    close(fds[0]);
    close(fds[1]);
}

double test_pipeline_wait(test_pipeline *p)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    while (waitpid(p->load_pid, &p->load_status, 0) < 0 && errno == EINTR) {
    }
    while (waitpid(p->peek_pid, &p->peek_status, 0) < 0 && errno == EINTR) {
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
}

int test_pipeline_worker_pid(test_pipeline *p, int w)
{
    char want[64];
    snprintf(want, sizeof want, "worker %d pid ", w);
    for (int i = 0; i < 1000; i++) {
        char *s = test_read_file(p->load_err, NULL);
        const char *q = s ? strstr(s, want) : NULL;
        int pid = q ? atoi(q + strlen(want)) : -1;
        free(s);
        if (pid > 0)
            return pid;
        usleep(10000);
    }
    return -1;
}

const char *test_file_value(const char *path, const char *key)
{
    static char buf[256];
    char *s = test_read_file(path, NULL);
    if (!s)
        return NULL;
    char want[128];
    snprintf(want, sizeof want, "%s: ", key);
    const char *q = strstr(s, want);
    if (q && (q == s || q[-1] == '\n')) {
        q += strlen(want);
        size_t n = strcspn(q, "\n");
        if (n >= sizeof buf)
            n = sizeof buf - 1;
        memcpy(buf, q, n);
        buf[n] = 0;
        free(s);
        return buf;
    }
    free(s);
    return NULL;
}

static void write_stripes(const char *bin, int n, int seed)
{
    size_t rec = 3073;
    uint8_t *b = malloc(rec * (size_t)n);
    REQUIRE(b, "out of memory");
    for (int i = 0; i < n; i++) {
        int cls = (i + seed) % 5;
        b[rec * i] = (uint8_t)cls;
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++) {
                    int v = cls == 0 ? x / 4 % 2 : cls == 1 ? y / 4 % 2 : cls == 2 ? (x + y) / 4 % 2 : cls == 3 ? (x / 8 + y / 8) % 2 : (x * x + y * y) / 64 % 2;
                    b[rec * i + 1 + c * 1024 + y * 32 + x] = (uint8_t)((v ? 180 : 60) + (i * 13 + x * 7 + y * 3 + c * 5) % 23);
                }
    }
    test_write_file(bin, b, rec * (size_t)n);
    free(b);
}

void test_make_stripes(const char *lmdb_path, int train, int test)
{
    char bin[4300];
    const char *splits[2] = {"train", "test"};
    for (int s = 0; s < 2; s++) {
        snprintf(bin, sizeof bin, "%s/%s-stripes.bin", test_tmpdir(), splits[s]);
        write_stripes(bin, s ? test : train, s);
        amdim_pack_options o = {0};
        o.format = AMDIM_PACK_CIFAR10;
        o.src = bin;
        o.out = lmdb_path;
        o.split = splits[s];
        amdim_pack_summary sum;
        char err[512];
        REQUIRE(amdim_pack_run(&o, &sum, err, sizeof err) == 0, "%s", err);
    }
}

struct amdim_model *test_tiny_model(int use_bn, uint64_t seed)
{
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, 32);
    cfg.ndf = 4;
    cfg.n_rkhs = 32;
    cfg.n_depth = 1;
    cfg.use_bn = use_bn;
    cfg.mlp_hidden = 16;
    cfg.seed = seed;
    amdim_model *m;
    char err[512];
    REQUIRE(amdim_model_create(&m, &cfg, err, sizeof err) == 0, "%s", err);
    return m;
}

void test_step_inputs_make(test_step_inputs *t, void *rngp, int B, int size, int R, int hidden)
{
    amdim_rng *rng = rngp; /* void * in the header: testutil.h stays free of project headers */
    REQUIRE(B >= 2 && B <= 4, "test_step_inputs: batch %d", B);
    size_t nv = (size_t)B * 3 * size * size;
    t->x1 = malloc(nv * 4), t->x2 = malloc(nv * 4);
    t->mask_in = malloc(2 * (size_t)B * R * 4), t->mask_hidden = malloc(2 * (size_t)B * hidden * 4);
    t->u1 = malloc(nv), t->u2 = malloc(nv);
    REQUIRE(t->x1 && t->x2 && t->mask_in && t->mask_hidden && t->u1 && t->u2, "out of memory");
    const int32_t labels[4] = {3, -1, 7, 0};
    memcpy(t->labels, labels, sizeof labels);
    for (size_t i = 0; i < nv; i++) {
        t->x1[i] = amdim_rng_uniform(rng, -2, 2), t->x2[i] = amdim_rng_uniform(rng, -2, 2);
        t->u1[i] = (uint8_t)amdim_rng_int(rng, 0, 255), t->u2[i] = (uint8_t)amdim_rng_int(rng, 0, 255);
    }
    for (int i = 0; i < 2 * B; i++)
        t->src5[i] = amdim_rng_int(rng, 0, 24);
    for (size_t i = 0; i < 2 * (size_t)B * R; i++)
        t->mask_in[i] = amdim_rng_uniform(rng, 0, 1) >= 0.2f;
    for (size_t i = 0; i < 2 * (size_t)B * hidden; i++)
        t->mask_hidden[i] = amdim_rng_uniform(rng, 0, 1) >= 0.2f;
}

void test_step_inputs_free(test_step_inputs *t)
{
    free(t->x1), free(t->x2), free(t->mask_in), free(t->mask_hidden), free(t->u1), free(t->u2);
}

/* ---- a one-rank process group --------------------------------------------------- */

static int one_allreduce_f32(void *ctx, float *buf, size_t n) { (void)ctx, (void)buf, (void)n; return 0; }
static int one_allreduce_f64(void *ctx, double *buf, size_t n) { (void)ctx, (void)buf, (void)n; return 0; }
static int one_copy_f32(void *ctx, const float *send, float *recv, size_t n)
{
    (void)ctx;
    memmove(recv, send, n * sizeof(float));
    return 0;
}
static int one_bcast_f32(void *ctx, float *buf, size_t n, int root)
{
    (void)ctx, (void)buf, (void)n, (void)root;
    return 0;
}
static const char *one_error(void *ctx)
{
    (void)ctx;
    return "no error (one-rank test group)";
}

void test_single_rank_comm(struct amdim_comm *c)
{
    memset(c, 0, sizeof *c);
    c->rank = 0, c->size = 1, c->force = 1;
    c->allreduce_f32 = one_allreduce_f32;
    c->allreduce_f64 = one_allreduce_f64;
    c->allgather_f32 = one_copy_f32;
    c->reduce_scatter_f32 = one_copy_f32;
    c->bcast_f32 = one_bcast_f32;
    c->error = one_error;
}
