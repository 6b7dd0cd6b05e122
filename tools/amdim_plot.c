/* amdim-plot: renders RUN/metrics.jsonl as a PNG. */
#include <stdio.h>
#include <string.h>

#include "amdim_run.h"

int main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("Usage: amdim-plot RUN/metrics.jsonl OUT.png\n\nDraws the training losses (total, 1t5, 1t7, 5t5, "
               "regulariser) and the probes' train and test accuracies over updates.\n");
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "amdim-plot: expected METRICS.jsonl OUT.png\nTry 'amdim-plot --help'.\n");
        return 2;
    }
    char err[512];
    int st = amdim_plot_metrics(argv[1], argv[2], err, sizeof err);
    if (st) {
        fprintf(stderr, "amdim-plot: failed: %s (%s)\n", amdim_strerror(st), err);
        return 1;
    }
    return 0;
}
