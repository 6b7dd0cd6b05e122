/* The emulated CUDA runtime's private header, shared by its files:
 * emu_runtime.c (the lock, errors, kernel launches, the device),
 * emu_stream.c (work items, stream queues, streams, events), emu_graph.c
 * (stream capture and graphs) and emu_memory.c (allocations, page-locked
 * registrations, copies and clears). The other emulation files use
 * emu_device.h alone. The streams, graphs and their functions below are
 * the device's state: the caller holds the device's lock (emu_lock). */
#ifndef AMDIM_EMU_RUNTIME_INTERNAL_H
#define AMDIM_EMU_RUNTIME_INTERNAL_H

#include <pthread.h>

#include "emu_device.h"

/* One piece of device work (emu_enqueue's run, arg, drop and what), held
 * by the stream items and graphs that hold it: refs counts them. */
typedef struct {
    emu_work_fn run;
    void *arg;
    emu_drop_fn drop;
    const char *what;
    int refs;
    int in_dry_run; /* runs in a dry run too (emu_dry): copies, which skip device destinations */
} work;

enum { ITEM_WORK, ITEM_WAIT, ITEM_RECORD };

struct CUstream_st;
struct CUevent_st;

/* An entry of a stream's queue: work, a wait for another stream, or an
 * event's record. */
typedef struct item {
    int kind;
    work *w;                      /* ITEM_WORK */
    struct CUstream_st *on;       /* ITEM_WAIT: run `on` ... */
    unsigned long long until;     /* ... until it has done this many items */
    struct CUevent_st *ev;        /* ITEM_RECORD: the event's time */
    unsigned long long ev_serial; /* ... of this recording */
    struct item *next;
} item;

typedef struct {
    item **v; /* the recorded items (ITEM_WORK only) */
    size_t n, cap;
} graph;

struct CUstream_st {
    unsigned flags;
    item *head, *tail;
    unsigned long long enqueued, done;
    int running; /* being drained (a drain never re-enters its own stream past its head) */
    /* capture */
    int capturing, invalidated;
    enum cudaStreamCaptureMode mode;
    pthread_t capture_thread;
    graph *g;
    struct CUstream_st *next_stream;
};

/* ---- errors (emu_runtime.c) ---- */

/* Records e as the calling thread's last error and returns it. */
cudaError_t emu_err(cudaError_t e);
/* Makes e the device's sticky error (a failed work item: the context is lost). */
void emu_set_sticky(cudaError_t e);

/* ---- streams (emu_stream.c) ---- */

/* The legacy default stream (NULL, cudaStreamLegacy). */
struct CUstream_st *emu_legacy_stream(void);
/* The stream a handle names (NULL for an unknown handle). */
struct CUstream_st *emu_stream_of(cudaStream_t s);
/* Drops one reference to w; the last one drops its argument and frees it. */
void emu_work_unref(work *w);
/* Runs s's items until it has done `seq` of them (work waited for first);
 * returns the device's sticky error. */
cudaError_t emu_run_until(struct CUstream_st *s, unsigned long long seq);
/* Runs every stream's pending work (the device synchronised). */
cudaError_t emu_run_all(void);
/* Appends it to s's queue with the legacy stream's implicit ordering; it
 * is freed on failure. */
cudaError_t emu_push(struct CUstream_st *s, item *it);
/* Whether the calling thread is in a capture whose mode makes "unsafe"
 * calls (synchronisation of the legacy stream or device, cudaMalloc,
 * synchronous copies) errors; such a capture is invalidated. */
int emu_unsafe_in_capture(void);

/* ---- graphs (emu_graph.c) ---- */

/* Appends w (one more reference) to g; 0 when out of memory. */
int emu_graph_add(graph *g, work *w);
/* Drops g's items and their references; g is left empty. */
void emu_graph_clear(graph *g);

#endif
