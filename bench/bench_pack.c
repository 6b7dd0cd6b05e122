/* bench_pack: amdim-pack throughput (images/s, MB/s) on an ImageNet-like
 * JPEG tree, next to the decode-only rate of the same files (the floor a
 * verifying packer cannot beat per core).
 *
 *   bench_pack [--dir DIR] [--images N] [--size WxH] [--quality Q]
 *              [--threads 1,2,...] [--warmup N] [--csv]
 * Without --dir a synthetic corpus is generated in a temporary directory. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amdim_image.h"
#include "amdim_pack.h"
#include "bench_common.h"

typedef struct {
    char **paths;
    size_t n, cap;
    uint64_t bytes;
} file_list;

static void list_files(const char *dir, file_list *fl)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (stat(path, &sb) != 0)
            continue;
        if (S_ISDIR(sb.st_mode)) {
            list_files(path, fl);
        } else if (S_ISREG(sb.st_mode)) {
            if (fl->n == fl->cap) {
                fl->cap = fl->cap ? 2 * fl->cap : 1024;
                fl->paths = realloc(fl->paths, fl->cap * sizeof *fl->paths);
            }
            fl->paths[fl->n++] = strdup(path);
            fl->bytes += (uint64_t)sb.st_size;
        }
    }
    closedir(d);
}

/* Decodes every file once on one thread; returns images/s (files already
 * in memory, so this is the decoder alone). */
static double decode_only_rate(const file_list *fl, uint64_t *pixels)
{
    amdim_codec *c;
    amdim_codec_create(&c);
    amdim_image img = {0};
    uint8_t **data = malloc(fl->n * sizeof *data);
    size_t *len = malloc(fl->n * sizeof *len);
    for (size_t i = 0; i < fl->n; i++) {
        FILE *f = fopen(fl->paths[i], "rb");
        fseek(f, 0, SEEK_END);
        len[i] = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        data[i] = malloc(len[i]);
        if (fread(data[i], 1, len[i], f) != len[i])
            len[i] = 0;
        fclose(f);
    }
    size_t ok = 0;
    *pixels = 0;
    double t0 = amdim_now();
    for (size_t i = 0; i < fl->n; i++)
        if (amdim_codec_decode_rgb(c, data[i], len[i], 0, &img, NULL) == 0) {
            ok++;
            *pixels += (uint64_t)img.width * img.height;
        }
    double dt = amdim_now() - t0;
    for (size_t i = 0; i < fl->n; i++)
        free(data[i]);
    free(data);
    free(len);
    amdim_image_free(&img);
    amdim_codec_destroy(c);
    return ok / dt;
}

static void rm_out(const char *out)
{
    char p[4200];
    unlink(out);
    snprintf(p, sizeof p, "%s.train.report.txt", out);
    unlink(p);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},   {"images", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, 's'},  {"quality", required_argument, NULL, 'q'},
        {"threads", required_argument, NULL, 't'}, {"warmup", required_argument, NULL, 'w'},
        {"csv", no_argument, NULL, 'c'},         {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *dir = NULL, *threads_arg = NULL;
    int images = 1500, w = 500, h = 375, quality = 90, warmup = 1, csv = 0, c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 'n': images = atoi(optarg); break;
        case 's':
            if (sscanf(optarg, "%dx%d", &w, &h) != 2 || w < 8 || h < 8) {
                fprintf(stderr, "bench_pack: --size wants WxH\n");
                return 2;
            }
            break;
        case 'q': quality = atoi(optarg); break;
        case 't': threads_arg = optarg; break;
        case 'w': warmup = atoi(optarg); break;
        case 'c': csv = 1; break;
        case 'h':
            printf("usage: bench_pack [--dir DIR] [--images N] [--size WxH] [--quality Q] [--threads 1,2] [--warmup N] [--csv]\n");
            return 0;
        default: return 2;
        }
    }
    if (images < 1 || quality < 1 || quality > 100 || warmup < 0) {
        fprintf(stderr, "bench_pack: bad --images, --quality or --warmup\n");
        return 2;
    }
    int cores = amdim_cpu_count();
    int tlist[64], nt = 0;
    if (threads_arg) {
        char *s = strdup(threads_arg), *tok, *save;
        for (tok = strtok_r(s, ",", &save); tok && nt < 64; tok = strtok_r(NULL, ",", &save))
            if (atoi(tok) > 0)
                tlist[nt++] = atoi(tok);
        free(s);
    } else {
        for (int t = 1; t <= cores && nt < 64; t *= 2)
            tlist[nt++] = t;
        if (tlist[nt - 1] != cores)
            tlist[nt++] = cores;
    }

    char tmp[] = "/tmp/amdim-bench-pack-XXXXXX";
    char corpus[4200];
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    if (dir) {
        snprintf(corpus, sizeof corpus, "%s", dir);
    } else {
        snprintf(corpus, sizeof corpus, "%s/corpus", tmp);
        bench_corpus_stats cs;
        fprintf(stderr, "bench_pack: generating %d synthetic %dx%d JPEGs (quality %d)...\n", images, w, h, quality);
        if (bench_make_corpus(corpus, images, w, h, quality, &cs) != 0) {
            fprintf(stderr, "bench_pack: cannot write the corpus in %s\n", corpus);
            return 1;
        }
    }
    file_list fl = {0};
    list_files(corpus, &fl);
    if (fl.n == 0) {
        fprintf(stderr, "bench_pack: no files under %s\n", corpus);
        return 1;
    }
    uint64_t pixels;
    double dec = decode_only_rate(&fl, &pixels);
    bench_header(stdout, "bench_pack");
    printf("# corpus: %s, %zu files, mean %.1f KB, mean %.0f kpixels (ImageNet: ~110 KB, ~400x350 = 140 kpixels)\n",
           dir ? dir : "synthetic", fl.n, (double)fl.bytes / fl.n / 1024.0, (double)pixels / fl.n / 1000.0);
    printf("# decode-only floor: %.0f images/s on one core (libjpeg-turbo, files in memory)\n", dec);
    if (csv)
        printf("threads,images_per_s,mb_per_s,per_thread_vs_decode\n");
    else
        printf("%8s %12s %10s %22s\n", "threads", "images/s", "MB/s", "per-thread/decode-only");
    char out[4200];
    snprintf(out, sizeof out, "%s/bench.lmdb", tmp);
    for (int i = 0; i < nt; i++) {
        /* Warm-up runs first (page cache, allocator), then one timed run. */
        double rate = 0;
        for (int rep = 0; rep <= warmup; rep++) {
            rm_out(out);
            amdim_pack_options o = {0};
            o.format = AMDIM_PACK_IMAGEFOLDER;
            o.src = corpus;
            o.out = out;
            o.threads = tlist[i];
            amdim_pack_summary sum;
            char err[1024];
            if (amdim_pack_run(&o, &sum, err, sizeof err) != 0) {
                fprintf(stderr, "bench_pack: pack failed: %s\n", err);
                return 1;
            }
            rate = sum.items / sum.seconds;
        }
        double best = rate;
        double mbs = best * ((double)fl.bytes / fl.n) / 1e6;
        if (csv)
            printf("%d,%.1f,%.1f,%.3f\n", tlist[i], best, mbs, best / tlist[i] / dec);
        else
            printf("%8d %12.0f %10.1f %22.2f\n", tlist[i], best, mbs, best / tlist[i] / dec);
        fflush(stdout);
    }
    rm_out(out);
    if (!dir) {
        for (size_t i = 0; i < fl.n; i++)
            unlink(fl.paths[i]);
        for (int k = 0; k < 10; k++) {
            char p[4300];
            snprintf(p, sizeof p, "%s/n%08d", corpus, k);
            rmdir(p);
        }
        rmdir(corpus);
    }
    rmdir(tmp);
    for (size_t i = 0; i < fl.n; i++)
        free(fl.paths[i]);
    free(fl.paths);
    return 0;
}
