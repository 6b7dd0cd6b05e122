/* The CUDA backend's step graphs (cuda_internal.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* ---- CUDA graphs ------------------------------------------------------------- */

/* Graphs are used unless AMDIM_CUDA_GRAPHS=0 (read at every step, so it
 * can be switched either way), a capture failed, or the model profiles
 * (each stage then synchronises, which a capture cannot hold). */
static int graphs_on(const amdim_model *m)
{
    const char *e = getenv("AMDIM_CUDA_GRAPHS");
    return !cuda_of(m)->graphs_failed && !m->profile && !(e && strcmp(e, "0") == 0);
}

void amdim_cuda_graph_drop(cudaGraphExec_t *g, int *warm)
{
    if (*g)
        cudaGraphExecDestroy(*g);
    *g = NULL;
    *warm = 0;
}

/* Captures body(m, arg) on the compute stream into *exec. Nothing runs:
 * on failure (status with the call in m->err) the stream is out of
 * capture and body may be run eagerly. */
static int capture(amdim_model *m, cudaGraphExec_t *exec, int (*body)(amdim_model *, int), int arg)
{
    amdim_cuda_state *c = m->bs;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    int rc = e == cudaSuccess ? body(m, arg) : amdim_cuda_fail(m, e, "cudaStreamBeginCapture");
    if (e == cudaSuccess) {
        e = cudaStreamEndCapture(c->stream, &g); /* always, even after a failure: leaves capture mode */
        if (rc == AMDIM_OK && e != cudaSuccess)
            rc = amdim_cuda_fail(m, e, "cudaStreamEndCapture");
    }
    if (rc == AMDIM_OK && (e = cudaGraphInstantiate(exec, g, 0)) != cudaSuccess) {
        *exec = NULL;
        rc = amdim_cuda_fail(m, e, "cudaGraphInstantiate");
    }
    if (g)
        cudaGraphDestroy(g);
    if (rc)
        (void)cudaGetLastError(); /* the capture's error must not surface in a later call */
    else
        c->graph_captures++;
    return rc;
}

/* Runs body(m, arg), device work on the compute stream with no host
 * synchronisation and no host-varying launch arguments (per-step values
 * are read from device buffers written before): eagerly the first time
 * after *warm was cleared (the warm-up: cuDNN's algorithm searches, lazy
 * kernel loading), captured into *exec the next time, then replayed. A
 * failed capture prints one warning and leaves graphs off for the model;
 * the work then runs eagerly (never an error of its own). */
int amdim_cuda_graph_run(amdim_model *m, cudaGraphExec_t *exec, int *warm, int (*body)(amdim_model *, int), int arg)
{
    amdim_cuda_state *c = m->bs;
    if (!graphs_on(m) || (!*exec && !*warm)) {
        AMDIM_TRY(body(m, arg));
        *warm = 1;
        return AMDIM_OK;
    }
    if (!*exec && capture(m, exec, body, arg)) {
        fprintf(stderr, "amdim: warning: CUDA graphs off for this model, steps run eagerly (%s)\n", m->err);
        c->graphs_failed = 1;
        return body(m, arg);
    }
    AMDIM_CU(cudaGraphLaunch(*exec, c->stream), "cudaGraphLaunch");
    c->graph_launches++;
    return AMDIM_OK;
}

void amdim_cuda_graph_counts(const amdim_model *m, unsigned long *captures, unsigned long *launches)
{
    *captures = cuda_of(m)->graph_captures;
    *launches = cuda_of(m)->graph_launches;
}
