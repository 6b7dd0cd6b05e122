/* The emulated CUDA runtime's stream capture (CUDA graphs; emu_runtime.c
 * lists the rest): the capturing stream's work is recorded and replayed
 * by every cudaGraphLaunch with the arguments it was recorded with.
 * Synchronising a capturing stream or the device, a synchronous copy,
 * cudaMalloc / cudaFree, a pageable copy and an event wait that crosses
 * the capture's boundary are errors during a capture (the capture is
 * invalidated, cudaStreamEndCapture reports it), as CUDA's
 * cudaStreamCaptureModeGlobal / ThreadLocal rules make them; those checks
 * are where the calls are (emu_stream.c, emu_memory.c). Only single-stream
 * capture is emulated (a capturing stream's event waited for by another
 * stream is refused). */
#include <stdlib.h>
#include <string.h>

#include "emu_runtime_internal.h"

struct CUgraph_st {
    graph g;
};
struct CUgraphExec_st {
    graph g;
};

/* ---- graphs ---- */

int emu_graph_add(graph *g, work *w)
{
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 64;
        item **v = realloc(g->v, cap * sizeof *v);
        if (!v)
            return 0;
        g->v = v;
        g->cap = cap;
    }
    item *it = calloc(1, sizeof *it);
    if (!it)
        return 0;
    it->kind = ITEM_WORK;
    it->w = w;
    w->refs++;
    g->v[g->n++] = it;
    return 1;
}

void emu_graph_clear(graph *g)
{
    for (size_t i = 0; i < g->n; i++) {
        emu_work_unref(g->v[i]->w);
        free(g->v[i]);
    }
    free(g->v);
    memset(g, 0, sizeof *g);
}

/* ---- capture ---- */

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode)
{
    emu_lock();
    struct CUstream_st *t = emu_stream_of(s);
    cudaError_t r = emu_sticky();
    if (r == cudaSuccess && (!t || t == emu_legacy_stream()))
        r = t ? cudaErrorStreamCaptureUnsupported : cudaErrorInvalidResourceHandle;
    else if (r == cudaSuccess && t->capturing)
        r = cudaErrorIllegalState;
    else if (r == cudaSuccess && !(t->g = calloc(1, sizeof *t->g)))
        r = cudaErrorMemoryAllocation;
    if (r == cudaSuccess) {
        t->capturing = 1;
        t->invalidated = 0;
        t->mode = mode;
        t->capture_thread = pthread_self();
    }
    emu_unlock();
    return emu_err(r);
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
    if (!g)
        return emu_err(cudaErrorInvalidValue);
    emu_lock();
    struct CUstream_st *t = emu_stream_of(s);
    cudaError_t r = cudaSuccess;
    *g = NULL;
    if (!t)
        r = cudaErrorInvalidResourceHandle;
    else if (!t->capturing)
        r = cudaErrorIllegalState;
    else if (t->mode != cudaStreamCaptureModeRelaxed && !pthread_equal(t->capture_thread, pthread_self()))
        r = cudaErrorStreamCaptureWrongThread;
    if (r == cudaSuccess) {
        graph *cg = t->g;
        t->capturing = 0;
        t->g = NULL;
        if (t->invalidated) {
            emu_graph_clear(cg);
            free(cg);
            r = cudaErrorStreamCaptureInvalidated;
        } else {
            struct CUgraph_st *out = calloc(1, sizeof *out);
            if (!out) {
                emu_graph_clear(cg);
                r = cudaErrorMemoryAllocation;
            } else {
                out->g = *cg;
                *g = out;
            }
            free(cg);
        }
        t->invalidated = 0;
    }
    emu_unlock();
    return emu_err(r);
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *status)
{
    if (!status)
        return emu_err(cudaErrorInvalidValue);
    emu_lock();
    struct CUstream_st *t = emu_stream_of(s);
    if (t)
        *status = !t->capturing    ? cudaStreamCaptureStatusNone
                  : t->invalidated ? cudaStreamCaptureStatusInvalidated
                                   : cudaStreamCaptureStatusActive;
    emu_unlock();
    return emu_err(t ? cudaSuccess : cudaErrorInvalidResourceHandle);
}

/* ---- instantiation and launches ---- */

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t g, unsigned long long flags)
{
    if (!exec || !g || flags)
        return emu_err(cudaErrorInvalidValue);
    emu_lock();
    cudaError_t r = emu_sticky();
    struct CUgraphExec_st *x = r == cudaSuccess ? calloc(1, sizeof *x) : NULL;
    if (r == cudaSuccess && !x)
        r = cudaErrorMemoryAllocation;
    for (size_t i = 0; r == cudaSuccess && i < g->g.n; i++)
        if (!emu_graph_add(&x->g, g->g.v[i]->w))
            r = cudaErrorMemoryAllocation;
    if (r != cudaSuccess && x) {
        emu_graph_clear(&x->g);
        free(x);
        x = NULL;
    }
    *exec = x;
    emu_unlock();
    return emu_err(r);
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s)
{
    if (!exec)
        return emu_err(cudaErrorInvalidValue);
    emu_lock();
    struct CUstream_st *t = emu_stream_of(s);
    cudaError_t r = emu_sticky();
    if (r == cudaSuccess && !t)
        r = cudaErrorInvalidResourceHandle;
    for (size_t i = 0; r == cudaSuccess && i < exec->g.n; i++) {
        work *w = exec->g.v[i]->w;
        if (t->capturing) {
            if (!emu_graph_add(t->g, w))
                r = cudaErrorMemoryAllocation;
            continue;
        }
        item *it = calloc(1, sizeof *it);
        if (!it) {
            r = cudaErrorMemoryAllocation;
            break;
        }
        it->kind = ITEM_WORK;
        it->w = w;
        w->refs++;
        r = emu_push(t, it);
    }
    emu_unlock();
    return emu_err(r);
}

cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
    if (!g)
        return emu_err(cudaErrorInvalidValue);
    emu_lock();
    emu_graph_clear(&g->g);
    free(g);
    emu_unlock();
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    if (!exec)
        return emu_err(cudaErrorInvalidValue);
    emu_lock();
    emu_graph_clear(&exec->g);
    free(exec);
    emu_unlock();
    return cudaSuccess;
}
