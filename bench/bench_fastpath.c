/* bench_fastpath: one core, the fast path against its floor and its peers.
 *
 *   bench_fastpath [--dir DIR] [--images N] [--seconds S] [--torchvision] [--csv]
 *
 * On a JPEG corpus (the JPEGs under --dir, else a synthetic ImageNet-like
 * one made in memory), imagenet preset (128 px views), all in one run:
 *   - decode-only: libjpeg-turbo's full decode with default settings (the floor);
 *   - the whole image decoded at each libjpeg-turbo scale M/8;
 *   - two-view pipelines: the scalar oracle (full decode, plain C), SIMD
 *     with full decode, SIMD with region decode (same bytes as the oracle),
 *     SIMD with region + scaled decode at 1/2, 1/4 (amdim-load's default)
 *     and at every M/8;
 *   - with --torchvision, bench/torchvision_pipeline.py on the same files
 *     (one process, Debian's python3-torchvision);
 * the default pipeline's ratio to decode-only again as the median of 7
 * alternating rounds (the rows above are measured one after another, so a
 * noisy machine moves their ratios more); and the raw 32 px (cifar) and
 * 96 px (stl10) presets, scalar and SIMD.
 * Every pipeline is checked against the oracle before it is timed. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_augment.h"
#include "bench_common.h"

typedef struct {
    const char *name;
    int simd; /* 0 scalar, 1 AVX2 only, 2 the best level the CPU has */
    int region;
    unsigned scales;
} pipeline;

static double time_pairs(amdim_augmenter *a, const bench_records *c, double seconds, uint8_t *v1, uint8_t *v2)
{
    long done = 0;
    double t0 = amdim_now(), t;
    do {
        for (int i = 0; i < c->n; i++)
            if (amdim_augment_pair(a, &c->rec[i], 1, (uint64_t)done, (uint64_t)i, v1, v2, NULL)) {
                fprintf(stderr, "bench_fastpath: record %d: %s\n", i, amdim_augment_error(a));
                exit(1);
            }
        done += c->n;
        t = amdim_now() - t0;
    } while (t < seconds);
    return done / t;
}

/* Images/s of decoding every record whole at scale m/8 (m = 0: TurboJPEG's
 * full decode, the floor). */
static double time_decode(amdim_codec *codec, const bench_records *c, int m, double seconds)
{
    amdim_image img = {0};
    long done = 0;
    double t0 = amdim_now(), t;
    do {
        for (int i = 0; i < c->n; i++) {
            const amdim_record *r = &c->rec[i];
            int st;
            if (m == 0) {
                st = amdim_codec_decode_rgb(codec, r->payload, r->payload_size, 0, &img, NULL);
            } else {
                int rect[4] = {0, 0, (int)r->width, (int)r->height};
                amdim_jpeg_region reg;
                st = amdim_codec_decode_jpeg_region(codec, r->payload, r->payload_size, m, rect, &img, &reg);
            }
            if (st) {
                fprintf(stderr, "bench_fastpath: decode of record %d: %s\n", i, amdim_codec_error(codec));
                exit(1);
            }
        }
        done += c->n;
        t = amdim_now() - t0;
    } while (t < seconds);
    amdim_image_free(&img);
    return done / t;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v and returns its median; its min and max in lo and hi. */
static double median(double *v, int n, double *lo, double *hi)
{
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    *lo = v[0], *hi = v[n - 1];
    return v[n / 2];
}

static amdim_augmenter *make(const char *preset, const pipeline *p)
{
    amdim_augment_config cfg;
    amdim_augment_preset(preset, &cfg);
    amdim_augmenter *a;
    if (amdim_augment_create(&a, &cfg))
        exit(1);
    amdim_augment_set_simd(a, p->simd == 0 ? AMDIM_SIMD_SCALAR : p->simd == 1 ? AMDIM_SIMD_AVX2 : amdim_simd_detect());
    amdim_decode_options o = {.region = p->region, .scales = p->scales};
    amdim_augment_set_decode(a, &o);
    return a;
}

/* Max and mean abs difference of pipeline p's views from the oracle's on
 * the first records. */
static void compare(const char *preset, const pipeline *p, const bench_records *c, int *maxd, double *meand)
{
    static const pipeline oracle = {"oracle", 0, 0, 0};
    amdim_augmenter *a = make(preset, &oracle), *b = make(preset, p);
    int s = amdim_augment_get_config(a)->size;
    size_t n = (size_t)s * s * 3;
    uint8_t *o1 = malloc(n), *o2 = malloc(n), *f1 = malloc(n), *f2 = malloc(n);
    double sum = 0;
    int k = c->n < 50 ? c->n : 50;
    *maxd = 0;
    for (int i = 0; i < k; i++) {
        if (amdim_augment_pair(a, &c->rec[i], 3, 0, (uint64_t)i, o1, o2, NULL) ||
            amdim_augment_pair(b, &c->rec[i], 3, 0, (uint64_t)i, f1, f2, NULL)) {
            fprintf(stderr, "bench_fastpath: record %d failed\n", i);
            exit(1);
        }
        for (size_t j = 0; j < n; j++) {
            int d1 = abs(o1[j] - f1[j]), d2 = abs(o2[j] - f2[j]);
            sum += d1 + d2;
            *maxd = d1 > *maxd ? d1 : *maxd;
            *maxd = d2 > *maxd ? d2 : *maxd;
        }
    }
    *meand = sum / (2.0 * n * k);
    free(o1), free(o2), free(f1), free(f2);
    amdim_augment_destroy(a);
    amdim_augment_destroy(b);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},  {"images", required_argument, NULL, 'n'},
        {"seconds", required_argument, NULL, 't'}, {"torchvision", no_argument, NULL, 'T'},
        {"csv", no_argument, NULL, 'c'},        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *dir = NULL;
    int images = 200, csv = 0, tv = 0, c;
    double seconds = 2.0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 'n': images = atoi(optarg); break;
        case 't': seconds = atof(optarg); break;
        case 'T': tv = 1; break;
        case 'c': csv = 1; break;
        case 'h':
            printf("usage: bench_fastpath [--dir DIR] [--images N] [--seconds S] [--torchvision] [--csv]\n");
            return 0;
        default: return 2;
        }
    }
    if (images < 1 || !(seconds > 0))
        return fprintf(stderr, "bench_fastpath: bad --images or --seconds\n"), 2;
    amdim_codec *codec;
    amdim_codec_create(&codec);
    bench_records jpegs = {0};
    char tmp[] = "/tmp/amdim-bench-fastpath-XXXXXX";
    const char *corpus_dir = dir;
    if (!dir) {
        if (!mkdtemp(tmp))
            return perror("mkdtemp"), 1;
        bench_corpus_stats cs;
        if (bench_make_corpus(tmp, images, 500, 375, 90, &cs))
            return fprintf(stderr, "bench_fastpath: cannot make the corpus\n"), 1;
        corpus_dir = tmp;
    }
    bench_load_jpegs(&jpegs, corpus_dir, codec);
    if (jpegs.n == 0)
        return fprintf(stderr, "bench_fastpath: no JPEGs\n"), 1;
    uint64_t bytes = 0, px = 0;
    for (int i = 0; i < jpegs.n; i++) {
        bytes += jpegs.rec[i].payload_size;
        px += (uint64_t)jpegs.rec[i].width * jpegs.rec[i].height;
    }
    bench_header(stdout, "bench_fastpath");
    printf("# SIMD level: %s (AMDIM_SIMD caps it)\n", amdim_simd_name(amdim_simd_detect()));
    printf("# one core; corpus %s: %d JPEGs, mean %.1f KB, %.0f kpixels, %.2f bits/pixel; imagenet preset (128 px)\n",
           dir ? dir : "synthetic 500x375", jpegs.n, bytes / 1024.0 / jpegs.n, px / 1000.0 / jpegs.n,
           8.0 * bytes / px);
    if (csv)
        printf("what,per_s,vs_decode,max_diff,mean_diff\n");
    else
        printf("%-44s %10s %10s %9s %10s\n", "", "per s", "/ decode", "max diff", "mean diff");
#define ROW(name, rate, floor, maxd, meand)                                                                     \
    do {                                                                                                         \
        if (csv)                                                                                                 \
            printf("%s,%.1f,%.3f,%d,%.3f\n", name, rate, (rate) / (floor), maxd, meand);                        \
        else if ((maxd) >= 0)                                                                                    \
            printf("%-44s %10.0f %10.3f %9d %10.3f\n", name, rate, (rate) / (floor), maxd, meand);            \
        else                                                                                                     \
            printf("%-44s %10.0f %10.3f\n", name, rate, (rate) / (floor));                                      \
        fflush(stdout);                                                                                          \
    } while (0)
    time_decode(codec, &jpegs, 0, seconds / 4); /* warm-up */
    double floor = time_decode(codec, &jpegs, 0, seconds);
    ROW("decode-only, full (images/s)", floor, floor, -1, 0.0);
    for (int m = 1; m <= 8; m++) {
        char name[64];
        snprintf(name, sizeof name, "decode-only at %d/8 (images/s)", m);
        double r = time_decode(codec, &jpegs, m, seconds);
        ROW(name, r, floor, -1, 0.0);
    }
    static const pipeline pipes[] = {
        {"pairs: scalar oracle, full decode", 0, 0, 0},
        {"pairs: SIMD, full decode", 2, 0, 0},
        {"pairs: SIMD, region decode", 2, 1, 0},
        {"pairs: AVX2 only, region + 1/2, 1/4", 1, 1, AMDIM_DECODE_SCALES_DEFAULT},
        {"pairs: SIMD, region + 1/2, 1/4 (default)", 2, 1, AMDIM_DECODE_SCALES_DEFAULT},
        {"pairs: SIMD, region + every M/8", 2, 1, 0xFE},
    };
    const size_t vn = 128 * 128 * 3;
    uint8_t *v1 = malloc(96 * 96 * 3 > vn ? 96 * 96 * 3 : vn), *v2 = malloc(vn > 96 * 96 * 3 ? vn : 96 * 96 * 3);
    double scalar_rate = 0;
    for (size_t i = 0; i < sizeof pipes / sizeof pipes[0]; i++) {
        int maxd;
        double meand;
        compare("imagenet", &pipes[i], &jpegs, &maxd, &meand);
        amdim_augmenter *a = make("imagenet", &pipes[i]);
        time_pairs(a, &jpegs, seconds / 4, v1, v2);
        double r = time_pairs(a, &jpegs, seconds, v1, v2);
        if (i == 0)
            scalar_rate = r;
        ROW(pipes[i].name, r, floor, maxd, meand);
        amdim_augment_destroy(a);
    }
    /* The headline ratio on a shared, noisy machine: decode-only and the
     * default pipeline alternate in short rounds; the median round ratio. */
    static const pipeline dflt = {"default", 2, 1, AMDIM_DECODE_SCALES_DEFAULT};
    amdim_augmenter *dflt_aug = make("imagenet", &dflt);
    {
        enum { ROUNDS = 7 };
        double ratio[ROUNDS];
        for (int k = 0; k < ROUNDS; k++) {
            double d = time_decode(codec, &jpegs, 0, seconds / 3);
            ratio[k] = time_pairs(dflt_aug, &jpegs, seconds / 3, v1, v2) / d;
        }
        double lo, hi, med = median(ratio, ROUNDS, &lo, &hi);
        printf("# default pipeline / decode-only, %d alternating rounds of %.1f s: median %.3f (min %.3f, max %.3f)\n",
               ROUNDS, seconds / 3, med, lo, hi);
    }
    if (tv) {
        /* torchvision in 3 rounds, each followed by the default pipeline for
         * as long: the median round ratio */
        char cmd[4400];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/torchvision_pipeline.py '%s' --procs 1 --seconds %g",
                 AMDIM_BENCH_DIR, corpus_dir, seconds);
        enum { ROUNDS = 3 };
        double ratio[ROUNDS], tv_rate[ROUNDS];
        int k = 0;
        for (; k < ROUNDS; k++) {
            FILE *p = popen(cmd, "r");
            int procs, got = p && fscanf(p, "torchvision %d %lf", &procs, &tv_rate[k]) == 2 && tv_rate[k] > 0;
            if (p)
                pclose(p);
            if (!got)
                break;
            ratio[k] = time_pairs(dflt_aug, &jpegs, seconds, v1, v2) / tv_rate[k];
        }
        if (k == ROUNDS) {
            ROW("pairs: torchvision/PIL AMDIM transform", tv_rate[0], floor, -1, 0.0);
            const double scalar_vs_tv = scalar_rate / tv_rate[0];
            double lo, hi, tv_lo, tv_hi, med = median(ratio, ROUNDS, &lo, &hi);
            median(tv_rate, ROUNDS, &tv_lo, &tv_hi);
            printf("# per core: default pipeline / torchvision, %d alternating rounds of %g s: median %.2fx (min "
                   "%.2fx, max %.2fx; torchvision %.0f-%.0f pairs/s); scalar oracle / torchvision %.2fx\n",
                   ROUNDS, seconds, med, lo, hi, tv_lo, tv_hi, scalar_vs_tv);
        } else {
            printf("# torchvision pipeline unavailable (python3-torchvision)\n");
        }
    }
    amdim_augment_destroy(dflt_aug);
    /* Raw presets: no decode. */
    static const struct { const char *preset; int side; } raws[] = {{"cifar", 32}, {"stl10", 96}};
    for (int k = 0; k < 2; k++) {
        bench_records raw = {0};
        int s = raws[k].side;
        for (int i = 0; i < 500; i++) {
            uint8_t *p = malloc((size_t)s * s * 3);
            for (int j = 0; j < s * s * 3; j++)
                p[j] = (uint8_t)(j * 7 + i * 13 + (j / (3 * s)) * 3 + (j * j) % 5);
            amdim_record r = {.label = 0, .aux_label = -1, .width = (uint32_t)s, .height = (uint32_t)s,
                              .channels = 3, .encoding = AMDIM_ENCODING_RAW, .payload = p,
                              .payload_size = (uint32_t)(s * s * 3)};
            bench_add_record(&raw, r);
        }
        for (int simd = 0; simd < 2; simd++) {
            pipeline p = {simd ? "SIMD" : "scalar", simd ? 2 : 0, 0, 0};
            int maxd = 0;
            double meand = 0;
            if (simd)
                compare(raws[k].preset, &p, &raw, &maxd, &meand);
            amdim_augmenter *a = make(raws[k].preset, &p);
            time_pairs(a, &raw, seconds / 4, v1, v2);
            double r = time_pairs(a, &raw, seconds, v1, v2);
            char name[80];
            snprintf(name, sizeof name, "pairs: raw %dpx %s preset, %s", s, raws[k].preset, p.name);
            if (csv)
                printf("%s,%.1f,,%d,%.3f\n", name, r, maxd, meand);
            else
                printf("%-44s %10.0f %10s %9d %10.3f\n", name, r, "-", maxd, meand);
            amdim_augment_destroy(a);
        }
        for (int i = 0; i < raw.n; i++)
            free((void *)raw.rec[i].payload);
        free(raw.rec);
    }
    if (!dir) {
        char cmd[4300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_fastpath: could not remove %s\n", tmp);
    }
    free(v1), free(v2);
    amdim_codec_destroy(codec);
    return 0;
}
