/* make_synth_corpus: writes bench_common's synthetic ImageNet-like JPEG
 * tree (DIR/n0000000<k>/img_<i>.JPEG, 10 classes) for end-to-end runs on a
 * machine without photos (tools/gpu-check.sh): amdim-pack imagefolder DIR.
 *
 *   make_synth_corpus [--size WxH] [--quality Q] [--jobs N] DIR COUNT
 * N processes write disjoint ranges; the files do not depend on N. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdim_common.h"
#include "bench_common.h"

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"size", required_argument, NULL, 's'},
                                             {"quality", required_argument, NULL, 'q'},
                                             {"jobs", required_argument, NULL, 'j'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    int w = 500, h = 375, quality = 90, jobs = (int)sysconf(_SC_NPROCESSORS_ONLN), c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (sscanf(optarg, "%dx%d", &w, &h) != 2 || w < 8 || h < 8 || w > 8192 || h > 8192)
                return fprintf(stderr, "make_synth_corpus: --size WxH, 8..8192 each, not %s\n", optarg), 2;
            break;
        case 'q':
            quality = atoi(optarg);
            if (quality < 1 || quality > 100)
                return fprintf(stderr, "make_synth_corpus: --quality 1..100, not %s\n", optarg), 2;
            break;
        case 'j':
            jobs = atoi(optarg);
            if (jobs < 1 || jobs > 256)
                return fprintf(stderr, "make_synth_corpus: --jobs 1..256, not %s\n", optarg), 2;
            break;
        case 'h':
            printf("usage: make_synth_corpus [--size WxH (500x375)] [--quality Q (90)] [--jobs N (cores)] DIR COUNT\n");
            return 0;
        default: return 2;
        }
    }
    if (argc - optind != 2)
        return fprintf(stderr, "make_synth_corpus: need DIR and COUNT (see --help)\n"), 2;
    const char *dir = argv[optind];
    int count = atoi(argv[optind + 1]);
    if (count < 1 || count > 10000000)
        return fprintf(stderr, "make_synth_corpus: COUNT 1..10000000, not %s\n", argv[optind + 1]), 2;
    if (jobs > count)
        jobs = count;
    double t0 = amdim_now();
    for (int j = 0; j < jobs; j++) {
        pid_t p = fork();
        if (p < 0)
            return perror("make_synth_corpus: fork"), 1;
        if (p == 0) {
            int first = (int)((long long)count * j / jobs), last = (int)((long long)count * (j + 1) / jobs);
            bench_corpus_stats st;
            _exit(bench_make_corpus_range(dir, first, last - first, w, h, quality, &st) ? 1 : 0);
        }
    }
    int rc = 0, status;
    while (wait(&status) > 0)
        rc |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    if (rc)
        return fprintf(stderr, "make_synth_corpus: cannot write the corpus in %s\n", dir), 1;
    printf("make_synth_corpus: %d %dx%d JPEGs (quality %d) in %s, %d jobs, %.1f s\n", count, w, h, quality, dir, jobs,
           amdim_now() - t0);
    return 0;
}
