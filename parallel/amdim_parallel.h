/* amdim dist: the process group of a data-parallel run, on MPI (Open
 * MPI's mpirun, or Slurm's srun through its MPI support). One process per
 * rank calls amdim_parallel_open - amdim-train; its amdim-load only reads the
 * rank from the environment (--shard auto). */
#ifndef AMDIM_DIST_H
#define AMDIM_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_trainer.h"

/* 1 when this build has MPI. */
int amdim_parallel_built(void);

/* The group size an MPI launcher gave this process in its environment
 * (OMPI_COMM_WORLD_SIZE, PMIX / PMI, SLURM_NTASKS), 1 when none did. */
int amdim_parallel_launched_size(void);

/* Initialises MPI (MPI_THREAD_FUNNELED) and makes *out, the group of
 * MPI_COMM_WORLD with its collectives; sync_bn as given. A watchdog
 * thread ends this process (exit 1, with a line naming the rank and the
 * collective) when a collective waits longer than AMDIM_COLLECTIVE_TIMEOUT
 * seconds (default 900; 0: no watchdog) - a rank that is stopped or hung,
 * which MPI itself does not notice; mpirun then ends every rank - or when
 * a training step runs that long (amdim_comm.watch; on a GPU the ranks
 * wait for a hung peer inside NCCL, on the device). Waits the run expects
 * (rank 0 evaluating) are not counted. */
int amdim_parallel_open(amdim_comm **out, int sync_bn, char *err, size_t n);

/* Seconds this rank spent in collectives, bytes it contributed, calls. */
void amdim_parallel_stats(const amdim_comm *c, double *seconds, uint64_t *bytes, uint64_t *calls);

/* MPI_Finalize. Accepts NULL. */
void amdim_parallel_close(amdim_comm *c);

/* Ends every rank of the job now (MPI_Abort with `code`): for a rank that
 * failed, so that no other rank waits for it in a collective. */
void amdim_parallel_abort(amdim_comm *c, int code);

#endif
