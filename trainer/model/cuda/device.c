/* Which CUDA device a process uses and whether it can (cuda_internal.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* The rank on this machine an MPI or Slurm launcher gave the process, or
 * -1 when none did. */
static int local_rank(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        char *end;
        long r = v && *v ? strtol(v, &end, 10) : -1;
        if (v && *v && !*end && r >= 0 && r < 1 << 20)
            return (int)r;
    }
    return -1;
}

int amdim_cuda_available(char *why, size_t n)
{
    int count = 0; /* left unwritten on failure */
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(why, n, "cudaGetDeviceCount(): %s", cudaGetErrorString(e));
        return 0;
    }
    if (count < 1) {
        snprintf(why, n, "no CUDA device");
        return 0;
    }
    /* several ranks on a machine with several GPUs and no CUDA_VISIBLE_DEVICES:
     * each takes GPU (local rank mod count), before any context is made */
    const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    int lr = local_rank();
    if (lr >= 0 && count > 1 && !(visible && *visible) && (e = cudaSetDevice(lr % count)) != cudaSuccess) {
        snprintf(why, n, "cudaSetDevice(%d) for local rank %d: %s", lr % count, lr, cudaGetErrorString(e));
        return 0;
    }
    cudnnHandle_t h;
    cudnnStatus_t st = cudnnCreate(&h);
    if (st != CUDNN_STATUS_SUCCESS) {
        snprintf(why, n, "cudnnCreate(): %s", cudnnGetErrorString(st));
        return 0;
    }
    cudnnDestroy(h);
    return 1;
}
