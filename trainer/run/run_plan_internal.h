/* Private to the run: what a run is before its loop starts - a new run, a
 * resumed one or a classifier phase - turned into a loader request, a
 * model configuration and checkpoint metadata. */
#ifndef AMDIM_RUN_PLAN_H
#define AMDIM_RUN_PLAN_H

#include "amdim_checkpoint.h"
#include "amdim_loader.h"
#include "amdim_run.h"

typedef struct {
    const char *dir;        /* the run directory */
    int lock_fd;            /* rank 0: its lock (run.lock), held until amdim_run_plan_end; else -1 */
    int resuming, probes;   /* --resume; classifier phase */
    char ckpt[4200];        /* resuming: the checkpoint to continue from */
    amdim_model_config cfg;
    amdim_checkpoint_info ci;
} amdim_run_plan;

/* Before attaching to the loader: creates a new run directory, takes the
 * run directory's lock (rank 0; refused, naming the holder, while another
 * process has it) and removes the temporary files a killed run left,
 * checks that a new run's directory holds no run, reads the checkpoint to
 * resume and fills the loader request. On failure nothing is held. */
int amdim_run_plan_begin(const amdim_train_options *o, amdim_run_plan *p, amdim_loader_request *req, char *err, size_t n);
/* Releases the lock (after the last write to the directory). */
void amdim_run_plan_end(amdim_run_plan *p);

/* Once the loader said what it delivers: the model configuration (from the
 * checkpoint, the encoder to probe, or the defaults (docs/spec.md §4.7, §7) for the data's
 * preset with the user's overrides), checked against the loader, the
 * evaluation data (a new run's or classifier phase's --classes must cover
 * their classes unless allow_fewer_classes) and the memory this process
 * may use (amdim_model_memory_check). */
int amdim_run_plan_configure(const amdim_train_options *o, const amdim_loader_info *li, amdim_run_plan *p, char *err, size_t n);

/* Creates the model on the options' device and loads what the plan says:
 * the checkpoint with its optimiser state, or the encoder to probe with
 * fresh probes. */
int amdim_run_plan_model(const amdim_train_options *o, const amdim_loader_info *li, amdim_run_plan *p, amdim_model **m, char *err,
                   size_t n);

#endif
