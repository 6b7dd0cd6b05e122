/* Private to the trainer: what the CUDA backend (backend_cuda.c) shows
 * beyond the amdim_backend table, for tests. */
#ifndef AMDIM_CUDA_BACKEND_CUDA_H
#define AMDIM_CUDA_BACKEND_CUDA_H

#include "amdim_trainer.h"

/* Step graphs captured and replayed so far by a model on the CUDA backend
 * (see graph_run in backend_cuda.c). */
void amdim_cuda_graph_counts(const amdim_model *m, unsigned long *captures, unsigned long *launches);

#endif
