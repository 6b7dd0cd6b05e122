/* make_photo_corpus: an ImageNet-like JPEG tree cut from real photographs
 * (e.g. Debian's wallpaper packages), for the loader benches.
 *
 *   make_photo_corpus [--images N] [--quality Q] [--seed S] OUT SRC...
 *
 * SRC are JPEG files or directories searched recursively. Each output image
 * is a random crop of one source (1x to 3x the output size, at most the
 * largest crop of its aspect ratio), resized with PIL's bicubic filter to ImageNet-like sizes
 * (long side 500 px for 70 %, else 250-500; landscape 4:3 or 3:2, some
 * portrait and square) and encoded at quality Q with 4:2:0 chroma, into
 * OUT/class_<k>/ (10 classes). Prints size and bitrate statistics beside
 * ImageNet's. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "amdim_augment.h"

typedef struct {
    char **path;
    int n;
} file_list;

static void collect(file_list *fl, const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode)) {
        struct dirent **names;
        int k = scandir(path, &names, NULL, alphasort);
        for (int i = 0; i < k; i++) {
            if (names[i]->d_name[0] != '.') {
                char sub[4096];
                snprintf(sub, sizeof sub, "%s/%s", path, names[i]->d_name);
                collect(fl, sub);
            }
            free(names[i]);
        }
        free(names);
        return;
    }
    size_t len = strlen(path);
    if ((len > 4 && !strcasecmp(path + len - 4, ".jpg")) || (len > 5 && !strcasecmp(path + len - 5, ".jpeg"))) {
        fl->path = realloc(fl->path, (size_t)(fl->n + 1) * sizeof *fl->path);
        fl->path[fl->n++] = strdup(path);
    }
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *d = malloc((size_t)n);
    *len = fread(d, 1, (size_t)n, f);
    fclose(f);
    return d;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"images", required_argument, NULL, 'n'},
                                             {"quality", required_argument, NULL, 'q'},
                                             {"seed", required_argument, NULL, 's'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    long long images = 1000, quality = 90, seed = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'n': if (amdim_cli_int("make_photo_corpus", "--images", optarg, 1, 10000000, &images)) return 2; break;
        case 'q': if (amdim_cli_int("make_photo_corpus", "--quality", optarg, 1, 100, &quality)) return 2; break;
        case 's': if (amdim_cli_int("make_photo_corpus", "--seed", optarg, 0, 1LL << 62, &seed)) return 2; break;
        case 'h':
            printf("usage: make_photo_corpus [--images N] [--quality Q] [--seed S] OUT SRC...\n");
            return 0;
        default: return 2;
        }
    }
    if (argc - optind < 2) {
        fprintf(stderr, "make_photo_corpus: expected OUT and at least one SRC\nTry 'make_photo_corpus --help'.\n");
        return 2;
    }
    const char *out = argv[optind];
    file_list fl = {0};
    for (int i = optind + 1; i < argc; i++)
        collect(&fl, argv[i]);
    if (fl.n == 0) {
        fprintf(stderr, "make_photo_corpus: no JPEG files under the sources\n");
        return 1;
    }
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "make_photo_corpus: cannot create %s: %s\n", out, strerror(errno));
        return 1;
    }
    amdim_codec *codec;
    amdim_codec_create(&codec);
    amdim_image src = {0};
    amdim_scratch scratch = {0};
    amdim_rng rng;
    amdim_rng_init(&rng, (uint64_t)seed, 0, 0);
    uint64_t bytes = 0, pixels = 0, wsum = 0, hsum = 0;
    int cur = -1, used_sources = 0;
    long long made = 0;
    uint8_t *px = malloc(500 * 500 * 3);
    for (long long k = 0; k < images; k++) {
        int s = (int)(k * fl.n / images); /* sources in turn, each decoded once */
        if (s != cur) {
            size_t len;
            uint8_t *d = read_all(fl.path[s], &len);
            int st = d ? amdim_codec_decode_rgb(codec, d, len, 0, &src, NULL) : AMDIM_E_IO;
            free(d);
            cur = s;
            if (st) {
                fprintf(stderr, "make_photo_corpus: skipping %s: %s\n", fl.path[s], d ? amdim_codec_error(codec) : "unreadable");
                src.width = 0;
            } else {
                used_sources++;
            }
        }
        if (src.width < 64 || src.height < 64)
            continue;
        int lw = amdim_rng_uniform(&rng, 0, 1) < 0.7f ? 500 : amdim_rng_int(&rng, 250, 500);
        float u = amdim_rng_uniform(&rng, 0, 1);
        double aspect = u < 0.45f ? 4.0 / 3 : u < 0.75f ? 3.0 / 2 : u < 0.95f ? 3.0 / 4 : 1.0; /* w / h */
        int w = aspect >= 1 ? lw : (int)(lw * aspect + 0.5), h = aspect >= 1 ? (int)(lw / aspect + 0.5) : lw;
        /* largest crop of that aspect inside the source, then 10-100 % of its area */
        double cw = src.width, ch = cw / aspect;
        if (ch > src.height)
            ch = src.height, cw = ch * aspect;
        /* 1x to 3x the output size, so the photograph's own detail and
         * noise survive (a whole 5 MP wallpaper shrunk to 500 px is much
         * smoother than ImageNet's photographs) */
        double f = amdim_rng_uniform(&rng, 1.0f, 3.0f);
        int iw = (int)(w * f), ih = (int)(h * f);
        if (iw > cw || ih > ch)
            iw = (int)cw, ih = (int)ch;
        if (iw < 1 || ih < 1)
            continue;
        int x0 = amdim_rng_int(&rng, 0, src.width - iw), y0 = amdim_rng_int(&rng, 0, src.height - ih);
        if (amdim_resize_bicubic(src.pixels, src.width, src.height, 3, x0, y0, iw, ih, px, w, h, &scratch))
            continue;
        const uint8_t *jpg;
        size_t jlen;
        if (amdim_codec_encode_jpeg(codec, px, w, h, 3, (int)quality, &jpg, &jlen)) {
            fprintf(stderr, "make_photo_corpus: encode failed: %s\n", amdim_codec_error(codec));
            return 1;
        }
        char dir[4200], path[4300];
        snprintf(dir, sizeof dir, "%s/class_%02lld", out, k % 10);
        mkdir(dir, 0755);
        snprintf(path, sizeof path, "%s/img_%07lld.jpg", dir, k);
        FILE *fo = fopen(path, "wb");
        if (!fo || fwrite(jpg, 1, jlen, fo) != jlen || fclose(fo) != 0) {
            fprintf(stderr, "make_photo_corpus: cannot write %s\n", path);
            return 1;
        }
        bytes += jlen;
        pixels += (uint64_t)w * h;
        wsum += (uint64_t)w;
        hsum += (uint64_t)h;
        made++;
    }
    if (made == 0) {
        fprintf(stderr, "make_photo_corpus: no images made\n");
        return 1;
    }
    printf("make_photo_corpus: %lld JPEGs from %d photographs into %s (quality %lld, 4:2:0)\n", made, used_sources, out,
           quality);
    printf("%-10s %10s %14s %14s\n", "", "mean KB", "mean size", "bits/pixel");
    printf("%-10s %10.1f %7.0fx%-6.0f %14.2f\n", "corpus", bytes / 1024.0 / made, (double)wsum / made,
           (double)hsum / made, 8.0 * bytes / pixels);
    printf("%-10s %10.1f %7.0fx%-6.0f %14.2f\n", "ImageNet", 110.0, 400.0, 350.0, 8.0 * 110 * 1024 / (400.0 * 350));
    free(px);
    amdim_image_free(&src);
    amdim_scratch_free(&scratch);
    amdim_codec_destroy(codec);
    return 0;
}
