/* The process group in a build without MPI (see amdim_parallel.h): a single
 * process only, and a clear refusal of anything more. */
#include "amdim_parallel.h"

#include <stdlib.h>

int amdim_parallel_built(void) { return 0; }

int amdim_parallel_launched_size(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "SLURM_NTASKS"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 1)
            return atoi(v);
    }
    return 1;
}

int amdim_parallel_open(amdim_comm **out, int sync_bn, char *err, size_t n)
{
    (void)sync_bn;
    *out = NULL;
    return amdim_fail(err, n, AMDIM_E_UNSUPPORTED,
                      "this build has no MPI (install libopenmpi-dev and rebuild) - data-parallel training needs it");
}

void amdim_parallel_close(amdim_comm *c) { (void)c; }

void amdim_parallel_stats(const amdim_comm *c, double *seconds, uint64_t *bytes, uint64_t *calls)
{
    (void)c;
    *seconds = 0, *bytes = *calls = 0;
}

void amdim_parallel_abort(amdim_comm *c, int code)
{
    (void)c;
    exit(code);
}
