#include "bench_common.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <turbojpeg.h>

void bench_header(FILE *f, const char *name)
{
    char model[256] = "unknown CPU";
    FILE *c = fopen("/proc/cpuinfo", "r");
    if (c) {
        char line[512];
        while (fgets(line, sizeof line, c))
            if (strncmp(line, "model name", 10) == 0) {
                char *p = strchr(line, ':');
                if (p) {
                    snprintf(model, sizeof model, "%s", p + 2);
                    model[strcspn(model, "\n")] = 0;
                }
                break;
            }
        fclose(c);
    }
    time_t now = time(NULL);
    char date[64];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
#ifdef NDEBUG
    const char *build = "optimised";
#else
    const char *build = "debug (assertions on)";
#endif
    fprintf(f, "# %s: %s, %ld cores, %s build, %s\n", name, model, sysconf(_SC_NPROCESSORS_ONLN), build, date);
}

/* A photograph-like image: a few smooth coloured blobs over a gradient, and
 * per-pixel noise whose amplitude sets the JPEG bitrate. */
static void synth(uint8_t *px, int w, int h, unsigned seed)
{
    uint32_t s = seed * 747796405u + 2891336453u;
#define RND() (s = s * 1664525u + 1013904223u, s >> 8)
    float bx[6], by[6], br[6], bc[6][3];
    for (int k = 0; k < 6; k++) {
        bx[k] = (float)(RND() % (unsigned)w);
        by[k] = (float)(RND() % (unsigned)h);
        br[k] = 20.0f + (float)(RND() % 120);
        for (int c = 0; c < 3; c++)
            bc[k][c] = (float)(RND() % 256);
    }
    float g0[3], g1[3];
    for (int c = 0; c < 3; c++) {
        g0[c] = (float)(RND() % 256);
        g1[c] = (float)(RND() % 256);
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            float t = (float)y / (float)h;
            float v[3];
            for (int c = 0; c < 3; c++)
                v[c] = g0[c] * (1 - t) + g1[c] * t;
            for (int k = 0; k < 6; k++) {
                float dx = x - bx[k], dy = y - by[k];
                float a = expf(-(dx * dx + dy * dy) / (2 * br[k] * br[k]));
                for (int c = 0; c < 3; c++)
                    v[c] = v[c] * (1 - a) + bc[k][c] * a;
            }
            int noise = (int)(RND() % 49) - 24;
            for (int c = 0; c < 3; c++) {
                int q = (int)v[c] + noise + (int)(RND() % 17) - 8;
                px[((size_t)y * w + x) * 3 + c] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
            }
        }
#undef RND
}

int bench_make_corpus(const char *dir, int count, int w, int h, int quality, bench_corpus_stats *st)
{
    return bench_make_corpus_range(dir, 0, count, w, h, quality, st);
}

int bench_make_corpus_range(const char *dir, int first, int count, int w, int h, int quality, bench_corpus_stats *st)
{
    memset(st, 0, sizeof *st);
    st->width = w;
    st->height = h;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return -1;
    uint8_t *px = malloc((size_t)w * h * 3);
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    unsigned long len = 0;
    char path[4096];
    int rc = 0;
    for (int k = 0; k < 10; k++) {
        snprintf(path, sizeof path, "%s/n%08d", dir, k);
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            rc = -1;
    }
    for (int i = first; i < first + count && rc == 0; i++) {
        synth(px, w, h, (unsigned)i);
        if (tjCompress2(tj, px, w, 0, h, TJPF_RGB, &buf, &len, TJSAMP_420, quality, 0) != 0) {
            rc = -1;
            break;
        }
        snprintf(path, sizeof path, "%s/n%08d/img_%06d.JPEG", dir, i % 10, i);
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(buf, 1, len, f) != len)
            rc = -1;
        if (f)
            fclose(f);
        st->files++;
        st->bytes += len;
    }
    tjFree(buf);
    tjDestroy(tj);
    free(px);
    st->mean_kb = st->files ? (double)st->bytes / st->files / 1024.0 : 0;
    return rc;
}

void bench_add_record(bench_records *c, amdim_record r)
{
    c->rec = realloc(c->rec, (size_t)(c->n + 1) * sizeof *c->rec);
    c->rec[c->n++] = r;
}

void bench_load_jpegs(bench_records *c, const char *dir, amdim_codec *codec)
{
    struct dirent **names;
    int k = scandir(dir, &names, NULL, alphasort);
    for (int i = 0; i < k; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
        struct stat sb;
        int skip = names[i]->d_name[0] == '.' || stat(path, &sb) != 0;
        free(names[i]);
        if (skip)
            continue;
        if (S_ISDIR(sb.st_mode)) {
            bench_load_jpegs(c, path, codec);
            continue;
        }
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        uint8_t *data = malloc((size_t)sb.st_size + 1);
        size_t got = fread(data, 1, (size_t)sb.st_size, f);
        fclose(f);
        amdim_image_format fmt;
        int w, h, ch;
        if (got != (size_t)sb.st_size || amdim_codec_probe(codec, data, got, &fmt, &w, &h, &ch) ||
            fmt != AMDIM_FORMAT_JPEG) {
            free(data);
            continue;
        }
        amdim_record r = {.label = 0, .aux_label = -1, .width = (uint32_t)w, .height = (uint32_t)h, .channels = 3,
                          .encoding = AMDIM_ENCODING_JPEG, .payload = data, .payload_size = (uint32_t)got};
        bench_add_record(c, r);
    }
    free(names);
}
