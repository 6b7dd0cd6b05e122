/* amdim-embed: r1 features of every record of a split, for downstream use. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "amdim_checkpoint.h"
#include "amdim_dataset.h"
#include "amdim_run.h"

static const char *usage_text =
    "Usage: amdim-embed --checkpoint CKPT.safetensors [--split NAME] [--batch N]\n"
    "                   [--device auto|cpu|cuda] [--labels-out LABELS.npy] --out FEATS.npy DATA.lmdb\n"
    "\n"
    "Writes r1 (the n_rkhs-dimensional global feature; for a checkpoint trained with\n"
    "--probe-features mixture-mean, the mean of its mixture features) of every record\n"
    "of a split, made with the test transform and BatchNorm in eval mode, as float32\n"
    "(records, n_rkhs) in FEATS.npy, and the labels as int32 (records,) in\n"
    "LABELS.npy (default: FEATS with _labels before .npy).\n"
    "\n"
    "  --batch N    images per forward pass, 1..100000 (default 100)\n"
    "\n"
    "An output that is a symbolic link is written where it points; one that is a\n"
    "device or a FIFO (/dev/stdout, a pipe) is written in place; a regular file is\n"
    "replaced atomically (written beside it, fsynced, renamed; it keeps its mode, a\n"
    "new file gets 0666 less the umask); with such an --out give --labels-out too.\n"
    "A model that would not fit in the memory\n"
    "this process may use is refused before it is allocated. Exit status: 0 done,\n"
    "1 failed (a write error such as a full disk names the file), 2 bad usage.\n";

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"checkpoint", required_argument, NULL, 'c'}, {"split", required_argument, NULL, 's'},
        {"batch", required_argument, NULL, 'b'},      {"out", required_argument, NULL, 'o'},
        {"labels-out", required_argument, NULL, 'l'}, {"device", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *ckpt = NULL, *split = "test", *out = NULL, *lout = NULL, *device = "auto";
    long long batch = 100;
    int c;
    while ((c = getopt_long(argc, argv, "c:s:b:o:l:d:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': ckpt = optarg; break;
        case 's': split = optarg; break;
        case 'b': if (amdim_cli_int("amdim-embed", "--batch", optarg, 1, 100000, &batch)) return 2; break;
        case 'o': out = optarg; break;
        case 'd': device = optarg; break;
        case 'l': lout = optarg; break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: fprintf(stderr, "Try 'amdim-embed --help'.\n"); return 2;
        }
    }
    if (!ckpt || !out || argc - optind != 1) {
        fprintf(stderr, "amdim-embed: need --checkpoint, --out and one DATA.lmdb\nTry 'amdim-embed --help'.\n");
        return 2;
    }
    char labels_path[4200];
    struct stat sb;
    if (!lout && stat(out, &sb) == 0 && !S_ISREG(sb.st_mode)) { /* no FEATS_labels.npy beside /dev/stdout */
        fprintf(stderr, "amdim-embed: --out %s is not a regular file: give --labels-out too\nTry 'amdim-embed --help'.\n", out);
        return 2;
    }
    if (!lout) {
        size_t n = strlen(out);
        int has_ext = n > 4 && strcmp(out + n - 4, ".npy") == 0;
        snprintf(labels_path, sizeof labels_path, "%.*s_labels.npy", (int)(has_ext ? n - 4 : n), out);
        lout = labels_path;
    }
    char err[2048];
    amdim_device dev;
    if (amdim_device_resolve(device, &dev, err, sizeof err)) {
        fprintf(stderr, "amdim-embed: %s\nTry 'amdim-embed --help'.\n", err);
        return 2;
    }
    amdim_model_config cfg;
    amdim_checkpoint_info info;
    amdim_model *m = NULL;
    int st = amdim_checkpoint_read_meta(ckpt, &cfg, &info, err, sizeof err);
    /* the largest batch the split makes (a small split never fills --batch) */
    long long fill = batch;
    amdim_dataset *ds;
    amdim_split_info si;
    char why[1024];
    if (st == AMDIM_OK && amdim_dataset_open(&ds, argv[optind], why, sizeof why) == AMDIM_OK) {
        if (amdim_dataset_split_info(ds, split, &si) == AMDIM_OK && si.records < (uint64_t)fill)
            fill = si.records ? (long long)si.records : 1;
        amdim_dataset_close(ds);
    }
    if (st == AMDIM_OK)
        st = amdim_model_memory_check(&cfg, dev, (int)fill, 0, 0, ckpt, err, sizeof err);
    if (st == AMDIM_OK)
        st = amdim_model_create_on(&m, &cfg, dev, err, sizeof err);
    if (st == AMDIM_OK)
        st = amdim_checkpoint_load(m, ckpt, 0, err, sizeof err);
    float *feats = NULL;
    int32_t *labels = NULL;
    uint64_t n = 0;
    if (st == AMDIM_OK)
        st = amdim_embed_dataset(m, argv[optind], split, info.preset, (int)batch, &feats, &labels, &n, err, sizeof err);
    if (st == AMDIM_OK)
        st = amdim_write_npy(out, "<f4", feats, n, (uint64_t)cfg.n_rkhs, 1, err, sizeof err);
    if (st == AMDIM_OK)
        st = amdim_write_npy(lout, "<i4", labels, n, 1, 0, err, sizeof err);
    if (st) {
        fprintf(stderr, "amdim-embed: failed: %s (%s)\n", amdim_strerror(st), err);
        free(feats);
        free(labels);
        amdim_model_destroy(m);
        return 1;
    }
    fprintf(stderr, "amdim-embed: %llu x %d features of %s split %s -> %s, labels -> %s\n", (unsigned long long)n,
            cfg.n_rkhs, argv[optind], split, out, lout);
    free(feats);
    free(labels);
    amdim_model_destroy(m);
    return 0;
}
