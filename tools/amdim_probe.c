/* amdim-probe: the raw-pixel baseline - a linear softmax classifier on the
 * pixels of a raw dataset (CIFAR, STL-10, IDX packs), tested on another split. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "amdim_run.h"

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"train-split", required_argument, NULL, 't'}, {"test-split", required_argument, NULL, 's'},
        {"epochs", required_argument, NULL, 'e'},      {"seed", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},              {NULL, 0, NULL, 0}};
    const char *tr = "train", *te = "test";
    int epochs = 15, c;
    unsigned long long seed = 0;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 't': tr = optarg; break;
        case 's': te = optarg; break;
        case 'e':
            epochs = atoi(optarg);
            if (epochs < 1 || epochs > 1000)
                return fprintf(stderr, "amdim-probe: --epochs must be 1..1000\n"), 2;
            break;
        case 'r': seed = strtoull(optarg, NULL, 10); break;
        case 'h':
            printf("Usage: amdim-probe [--train-split S] [--test-split S] [--epochs N] [--seed S] DATA.lmdb\n\n"
                   "Trains a linear softmax classifier on the standardised raw pixels of the train split\n"
                   "(Adam, batches of 256) and prints test_accuracy: on the test split.\n");
            return 0;
        default: fprintf(stderr, "Try 'amdim-probe --help'.\n"); return 2;
        }
    }
    if (argc - optind != 1)
        return fprintf(stderr, "amdim-probe: expected one DATA.lmdb\nTry 'amdim-probe --help'.\n"), 2;
    char err[1024];
    double acc;
    int st = amdim_raw_pixel_baseline(argv[optind], tr, te, epochs, seed, &acc, err, sizeof err);
    if (st) {
        fprintf(stderr, "amdim-probe: failed: %s (%s)\n", amdim_strerror(st), err);
        return 1;
    }
    printf("test_accuracy: %.4f\n", acc);
    return 0;
}
