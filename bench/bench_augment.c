/* bench_augment: two-view augmentation speed of the scalar reference on one
 * core, per preset, split into decode, crop+resize and colour time.
 *
 *   bench_augment [--dir DIR] [--images N] [--size WxH] [--seconds S] [--csv]
 *
 * JPEG presets (imagenet 128, stl10 64) run on a synthetic ImageNet-like
 * corpus made in memory (or the JPEGs under --dir); the 32 px preset runs
 * on raw 32x32 records. Stages are measured as differences between three
 * passes over the same records: decode only; decode + flip + both crops;
 * the full pair (jitter and grey at their preset probabilities). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_augment.h"
#include "bench_common.h"

/* Runs `mode` passes over the corpus for at least `seconds`; returns seconds per record. */
static double run(amdim_augmenter *a, const bench_records *c, int mode, double seconds, uint8_t *v1, uint8_t *v2)
{
    long done = 0;
    double t0 = amdim_now(), t;
    do {
        for (int i = 0; i < c->n; i++) {
            int st;
            if (mode == 0) {
                const amdim_image *img;
                st = amdim_augment_decode(a, &c->rec[i], &img);
            } else {
                st = amdim_augment_pair(a, &c->rec[i], 1, (uint64_t)done, (uint64_t)i, v1, v2, NULL);
            }
            if (st) {
                fprintf(stderr, "bench_augment: record %d: %s\n", i, amdim_augment_error(a));
                exit(1);
            }
        }
        done += c->n;
        t = amdim_now() - t0;
    } while (t < seconds);
    return t / done;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},     {"images", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, 's'},    {"seconds", required_argument, NULL, 't'},
        {"csv", no_argument, NULL, 'c'},           {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *dir = NULL;
    int images = 200, w = 500, h = 375, csv = 0, c;
    double seconds = 2.0;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 'n': images = atoi(optarg); break;
        case 's':
            if (sscanf(optarg, "%dx%d", &w, &h) != 2 || w < 8 || h < 8)
                return fprintf(stderr, "bench_augment: --size wants WxH\n"), 2;
            break;
        case 't': seconds = atof(optarg); break;
        case 'c': csv = 1; break;
        case 'h':
            printf("usage: bench_augment [--dir DIR] [--images N] [--size WxH] [--seconds S] [--csv]\n");
            return 0;
        default: return 2;
        }
    }
    if (images < 1 || !(seconds > 0))
        return fprintf(stderr, "bench_augment: bad --images or --seconds\n"), 2;

    amdim_codec *codec;
    amdim_codec_create(&codec);
    bench_records jpegs = {0}, raw32 = {0};
    if (dir) {
        bench_load_jpegs(&jpegs, dir, codec);
    } else {
        char tmp[] = "/tmp/amdim-bench-augment-XXXXXX";
        if (!mkdtemp(tmp))
            return perror("mkdtemp"), 1;
        char sub[4200];
        snprintf(sub, sizeof sub, "%s/c", tmp);
        bench_corpus_stats cs;
        if (bench_make_corpus(sub, images, w, h, 90, &cs))
            return fprintf(stderr, "bench_augment: cannot make the corpus\n"), 1;
        bench_load_jpegs(&jpegs, sub, codec);
        char cmd[4300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd) != 0)
            fprintf(stderr, "bench_augment: could not remove %s\n", tmp);
    }
    if (jpegs.n == 0)
        return fprintf(stderr, "bench_augment: no JPEGs\n"), 1;
    for (int i = 0; i < 1000; i++) {
        uint8_t *px = malloc(32 * 32 * 3);
        for (int k = 0; k < 32 * 32 * 3; k++)
            px[k] = (uint8_t)(k * 7 + i * 13 + (k / 96) * 3);
        amdim_record r = {.label = 0, .aux_label = -1, .width = 32, .height = 32, .channels = 3,
                          .encoding = AMDIM_ENCODING_RAW, .payload = px, .payload_size = 32 * 32 * 3};
        bench_add_record(&raw32, r);
    }
    uint64_t bytes = 0, px = 0;
    for (int i = 0; i < jpegs.n; i++) {
        bytes += jpegs.rec[i].payload_size;
        px += (uint64_t)jpegs.rec[i].width * jpegs.rec[i].height;
    }
    bench_header(stdout, "bench_augment");
    printf("# one core, scalar reference path; JPEG corpus: %s, %d images, mean %.1f KB, %.0f kpixels\n",
           dir ? dir : "synthetic", jpegs.n, bytes / 1024.0 / jpegs.n, px / 1000.0 / jpegs.n);
    if (csv)
        printf("preset,source,decode_ms,crop_resize_ms,colour_ms,pair_ms,pairs_per_s,views_per_s\n");
    else
        printf("%-9s %-6s %10s %15s %11s %9s %9s %9s\n", "preset", "source", "decode ms", "crop+resize ms",
               "colour ms", "pair ms", "pairs/s", "views/s");
    const char *presets[] = {"imagenet", "stl10", "cifar"};
    for (int p = 0; p < 3; p++) {
        amdim_augment_config cfg, plain;
        amdim_augment_preset(presets[p], &cfg);
        plain = cfg;
        plain.p_jitter = 0;
        plain.p_grey = 0;
        amdim_augmenter *a, *b;
        amdim_augment_create(&a, &cfg);
        amdim_augment_create(&b, &plain);
        const bench_records *cp = p == 2 ? &raw32 : &jpegs;
        uint8_t *v1 = malloc((size_t)cfg.size * cfg.size * 3), *v2 = malloc((size_t)cfg.size * cfg.size * 3);
        run(a, cp, 2, seconds / 4, v1, v2); /* warm-up */
        double t_dec = run(a, cp, 0, seconds, v1, v2);
        double t_geo = run(b, cp, 1, seconds, v1, v2);
        double t_all = run(a, cp, 1, seconds, v1, v2);
        double crop = t_geo - t_dec, colour = t_all - t_geo;
        const char *src = p == 2 ? "raw" : "jpeg";
        if (csv)
            printf("%s,%s,%.4f,%.4f,%.4f,%.4f,%.0f,%.0f\n", presets[p], src, t_dec * 1e3, crop * 1e3, colour * 1e3,
                   t_all * 1e3, 1 / t_all, 2 / t_all);
        else
            printf("%-9s %-6s %10.4f %15.4f %11.4f %9.4f %9.0f %9.0f\n", presets[p], src, t_dec * 1e3, crop * 1e3,
                   colour * 1e3, t_all * 1e3, 1 / t_all, 2 / t_all);
        fflush(stdout);
        free(v1);
        free(v2);
        amdim_augment_destroy(a);
        amdim_augment_destroy(b);
    }
    amdim_codec_destroy(codec);
    return 0;
}
