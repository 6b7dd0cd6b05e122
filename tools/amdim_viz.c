/* amdim-viz: pictures of the mixture components (paper Figure 2). Parses
 * arguments; the work is amdim_mixture_pictures (trainer/run/amdim_run.h). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_checkpoint.h"
#include "amdim_run.h"

static const char *usage_text =
    "Usage: amdim-viz --checkpoint CKPT.safetensors --out FILE.png [--split NAME] [--count N]\n"
    "                 [--batch B] DATA.lmdb\n"
    "\n"
    "For the first N images of a split (default: test, 8 images), writes each image\n"
    "beside a map of the mixture component that wins (argmax_j q) at each 7x7\n"
    "location of the 1t7 direction, one colour per component, upsampled to the\n"
    "image. q is computed within batches of B test images (default 64), whose r7\n"
    "are the negatives, so it depends on the batch. Needs a checkpoint trained\n"
    "with --mixtures K > 1; runs on the CPU.\n";

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"checkpoint", required_argument, NULL, 'c'}, {"split", required_argument, NULL, 's'},
        {"count", required_argument, NULL, 'n'},      {"batch", required_argument, NULL, 'b'},
        {"out", required_argument, NULL, 'o'},        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *ckpt = NULL, *split = "test", *out = NULL;
    long long count = 8, batch = 64;
    int c;
    while ((c = getopt_long(argc, argv, "c:s:n:b:o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': ckpt = optarg; break;
        case 's': split = optarg; break;
        case 'n': if (amdim_cli_int("amdim-viz", "--count", optarg, 1, 1024, &count)) return 2; break;
        case 'b': if (amdim_cli_int("amdim-viz", "--batch", optarg, 2, 4096, &batch)) return 2; break;
        case 'o': out = optarg; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: fprintf(stderr, "Try 'amdim-viz --help'.\n"); return 2;
        }
    }
    if (!ckpt || !out || argc - optind != 1) {
        fprintf(stderr, "amdim-viz: need --checkpoint, --out and one DATA.lmdb\nTry 'amdim-viz --help'.\n");
        return 2;
    }
    char err[2048];
    amdim_model_config cfg;
    amdim_checkpoint_info info;
    amdim_model *m = NULL;
    int st = amdim_checkpoint_read_meta(ckpt, &cfg, &info, err, sizeof err);
    if (st == AMDIM_OK)
        st = amdim_model_memory_check(&cfg, AMDIM_DEVICE_CPU, (int)batch, 0, 0, ckpt, err, sizeof err);
    if (st == AMDIM_OK)
        st = amdim_model_create(&m, &cfg, err, sizeof err);
    if (st == AMDIM_OK)
        st = amdim_checkpoint_load(m, ckpt, 0, err, sizeof err);
    if (st == AMDIM_OK)
        st = amdim_mixture_pictures(m, argv[optind], split, info.preset, (int)count, (int)batch, out, err, sizeof err);
    amdim_model_destroy(m);
    if (st) {
        fprintf(stderr, "amdim-viz: failed: %s (%s)\n", amdim_strerror(st), err);
        return 1;
    }
    fprintf(stderr, "amdim-viz: %lld images of %s split %s, %d mixture components -> %s\n", count, argv[optind], split,
            cfg.mixtures, out);
    return 0;
}
