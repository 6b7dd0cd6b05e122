/* Private to trainer/run: what amdim-train writes into metrics.jsonl
 * (docs/training.md): one "train" line per logged interval, the backend's
 * algorithm table after the first step, and the trimming of a resumed
 * run's file back to its checkpoint's step. */
#ifndef AMDIM_RUN_METRICS_H
#define AMDIM_RUN_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_trainer.h"
#include "output_internal.h"

/* The sums of the steps since the last logged line. */
typedef struct {
    double nce_1t5, nce_1t7, nce_5t5, reg, cls_mlp, cls_lin, total, mix_entropy;
    uint64_t correct_mlp, correct_lin, labelled, pairs, steps;
    double t0, wait0; /* when the interval began; the loader's wait seconds then */
} amdim_metrics_interval;

/* A step's figures into the interval (pairs: this rank's, times ranks). */
void amdim_metrics_interval_add(amdim_metrics_interval *iv, const amdim_step_stats *s, uint32_t pairs, int ranks);
/* Logs the interval to stderr and a line to metrics (NULL on ranks other
 * than 0, which log nothing), then starts the next. 0 or AMDIM_E_IO. */
int amdim_metrics_log_interval(amdim_output *metrics, amdim_metrics_interval *iv, amdim_model *m, uint64_t epoch,
                               double wait_now, int probes_only, char *err, size_t n);
/* Keeps path's complete lines up to `step` (resuming from its checkpoint). */
int amdim_metrics_trim(const char *path, uint64_t step, char *err, size_t n);
/* The backend's algorithm choices to stderr and metrics (nothing on the CPU). */
int amdim_metrics_log_algorithms(amdim_output *metrics, const amdim_model *m, char *err, size_t n);

#endif
