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
/* The run directory alone (p->dir, p->resuming set): creates a new run's
 * directory, takes its lock into p->lock_fd (rank 0), refuses a new run's
 * directory that holds a checkpoint and a resumed one that holds no
 * complete one (p->ckpt: the newest), and removes a killed run's temporary
 * checkpoint files. Shared by the AMDIM and the Deep InfoMax runs; the
 * caller releases the lock on failure (amdim_run_plan_end). */
int amdim_run_plan_dir(const amdim_train_options *o, amdim_run_plan *p, char *err, size_t n);
/* The loader request of a new run (the options' seed and span) or of a
 * resumed one (p->ci as read from its checkpoint: its seed and cursor;
 * --steps raises its step limit); a complete run, or one that made its
 * steps, is refused. */
int amdim_run_plan_request(const amdim_train_options *o, amdim_run_plan *p, amdim_loader_request *req, char *err,
                           size_t n);
/* Releases the lock (after the last write to the directory). */
void amdim_run_plan_end(amdim_run_plan *p);
/* The run's loader: attaches to amdim-load on fd with req (amdim_loader_attach).
 * On failure the plan is ended (amdim_run_plan_end) and the status returned
 * with "attaching to amdim-load: <why>" in err. */
int amdim_run_plan_attach(amdim_run_plan *p, int fd, const amdim_loader_request *req, amdim_loader **l, char *err,
                          size_t n);

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
