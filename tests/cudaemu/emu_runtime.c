/* CPU emulation of the CUDA runtime calls the CUDA backend and its tests
 * make (the emulated-device tests only; never in a real build). One
 * device, an sm_90 part; "device memory" is host memory. What it emulates
 * so that the tests see what a GPU would show (emu_device.h):
 *  - Streams run their work in order and only when something waits for it
 *    (synchronisation, a synchronous copy, an event another stream waits
 *    for, cudaFree): work on two streams is ordered only by events,
 *    stream waits and synchronisation. The legacy default stream (NULL)
 *    synchronises with blocking streams, not with cudaStreamNonBlocking
 *    ones.
 *  - Copies as documented: from pageable host memory the source is read
 *    when the call is made (a synchronous cudaMemcpy of it to the device
 *    then returns with the copy still queued on the legacy stream: CUDA's
 *    DMA "may not have completed", so only events or synchronisation
 *    order it before a non-blocking stream's work); into pageable host
 *    memory the call waits for the stream and copies before it returns; page-locked memory
 *    (cudaHostRegister) is read and written when the copy runs. A copy or
 *    clear of device memory must lie inside one allocation.
 *  - Allocations are 256-byte aligned and end at a page the process cannot
 *    touch (a kernel or copy that runs past one faults), and up to 64 MiB
 *    of each is filled with 0xff bytes (NaN as float and bf16), so that
 *    reading a buffer before writing it shows. cudaFree waits for the
 *    device, as CUDA's does.
 *  - Stream capture (CUDA graphs): the capturing stream's work is recorded
 *    and replayed by every cudaGraphLaunch with the arguments it was
 *    recorded with. Synchronising a capturing stream or the device, a
 *    synchronous copy, cudaMalloc / cudaFree, a pageable copy and an
 *    event wait that crosses the capture's boundary are errors during a
 *    capture (the capture is invalidated, cudaStreamEndCapture reports
 *    it), as CUDA's cudaStreamCaptureModeGlobal / ThreadLocal rules make
 *    them. Only single-stream capture is emulated (a capturing stream's
 *    event waited for by another stream is refused).
 *  - A failed kernel (emu_grid.c) is a sticky error: every later call
 *    returns it, as a lost CUDA context does.
 * Host threads may share the device: every entry point holds one lock. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "emu_device.h"

/* ---- the lock ---- */

static pthread_mutex_t lock;
static pthread_once_t lock_once = PTHREAD_ONCE_INIT;

static void lock_init(void)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&lock, &a);
    pthread_mutexattr_destroy(&a);
}

void emu_lock(void)
{
    pthread_once(&lock_once, lock_init);
    pthread_mutex_lock(&lock);
}

void emu_unlock(void) { pthread_mutex_unlock(&lock); }

/* ---- errors ---- */

static cudaError_t sticky = cudaSuccess;
static _Thread_local cudaError_t last_error = cudaSuccess;

cudaError_t emu_sticky(void) { return sticky; }

/* Records e as the calling thread's last error and returns it. */
static cudaError_t err(cudaError_t e)
{
    if (e != cudaSuccess)
        last_error = e;
    return e;
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = sticky != cudaSuccess ? sticky : last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return sticky != cudaSuccess ? sticky : last_error; }

/* ---- work, streams, events ---- */

typedef struct {
    emu_work_fn run;
    void *arg;
    emu_drop_fn drop;
    const char *what;
    int refs;
} work;

enum { ITEM_WORK, ITEM_WAIT, ITEM_RECORD };

struct CUstream_st;
struct CUevent_st;

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

struct CUevent_st {
    unsigned flags;
    struct CUstream_st *on; /* NULL: never recorded */
    unsigned long long seq; /* complete when on->done >= seq */
    unsigned long long serial;
    int captured; /* last recorded in a capture */
    double t;     /* completion time (seconds), once ITEM_RECORD ran */
    int timed;
};

struct CUgraph_st {
    graph g;
};
struct CUgraphExec_st {
    graph g;
};

static struct CUstream_st legacy_stream = {.flags = cudaStreamDefault};
static struct CUstream_st *streams = &legacy_stream; /* every live stream, legacy first */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The stream a handle names (NULL for an unknown handle). */
static struct CUstream_st *stream_of(cudaStream_t s)
{
    if (s == NULL || s == cudaStreamLegacy || s == cudaStreamPerThread)
        return &legacy_stream;
    for (struct CUstream_st *t = streams; t; t = t->next_stream)
        if (t == s)
            return t;
    return NULL;
}

int emu_stream_valid(cudaStream_t s)
{
    emu_lock();
    int ok = stream_of(s) != NULL;
    emu_unlock();
    return ok;
}

static void work_unref(work *w)
{
    if (w && --w->refs == 0) {
        if (w->drop)
            w->drop(w->arg);
        free(w);
    }
}

static int graph_add(graph *g, work *w)
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

static void graph_clear(graph *g)
{
    for (size_t i = 0; i < g->n; i++) {
        work_unref(g->v[i]->w);
        free(g->v[i]);
    }
    free(g->v);
    memset(g, 0, sizeof *g);
}

static cudaError_t run_until(struct CUstream_st *s, unsigned long long seq);

/* Runs one item popped from s. */
static cudaError_t run_item(struct CUstream_st *s, item *it)
{
    cudaError_t e = cudaSuccess;
    if (it->kind == ITEM_WAIT)
        e = run_until(it->on, it->until);
    else if (it->kind == ITEM_RECORD) {
        if (it->ev && it->ev->serial == it->ev_serial) {
            it->ev->t = now();
            it->ev->timed = 1;
        }
    } else if (sticky == cudaSuccess) {
        e = it->w->run(it->w->arg);
        if (e != cudaSuccess) {
            fprintf(stderr, "emulated device: %s failed: %s\n", it->w->what, cudaGetErrorName(e));
            sticky = e;
        }
    }
    (void)s;
    return e;
}

/* Runs s's items until it has done `seq` of them (work waited for first). */
static cudaError_t run_until(struct CUstream_st *s, unsigned long long seq)
{
    while (s->done < seq && s->head) {
        item *it = s->head;
        s->head = it->next;
        if (!s->head)
            s->tail = NULL;
        s->running++;
        cudaError_t e = run_item(s, it);
        s->running--;
        s->done++;
        if (it->kind == ITEM_WORK)
            work_unref(it->w);
        free(it);
        if (e != cudaSuccess && sticky != cudaSuccess)
            return sticky;
    }
    return sticky;
}

static cudaError_t run_all(void)
{
    for (struct CUstream_st *t = streams; t; t = t->next_stream) {
        cudaError_t e = run_until(t, t->enqueued);
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}

/* Appends it to s's queue, with the legacy stream's implicit ordering:
 * work on the legacy stream waits for every blocking stream, and work on a
 * blocking stream for the legacy stream. A stream more than 1024 items
 * ahead runs its oldest (a GPU's launch queue is finite too). */
static cudaError_t push(struct CUstream_st *s, item *it);
static cudaError_t push_raw(struct CUstream_st *s, item *it)
{
    it->next = NULL;
    if (s->tail)
        s->tail->next = it;
    else
        s->head = it;
    s->tail = it;
    s->enqueued++;
    if (s->enqueued - s->done > 1024 && !s->running)
        return run_until(s, s->done + 1);
    return cudaSuccess;
}

static cudaError_t implicit_wait(struct CUstream_st *s, struct CUstream_st *on)
{
    if (on->done >= on->enqueued || on == s)
        return cudaSuccess;
    item *w = calloc(1, sizeof *w);
    if (!w)
        return cudaErrorMemoryAllocation;
    w->kind = ITEM_WAIT;
    w->on = on;
    w->until = on->enqueued;
    return push_raw(s, w);
}

static cudaError_t push(struct CUstream_st *s, item *it)
{
    cudaError_t e = cudaSuccess;
    if (s == &legacy_stream) {
        for (struct CUstream_st *t = streams; t && e == cudaSuccess; t = t->next_stream)
            if (t != s && !(t->flags & cudaStreamNonBlocking))
                e = implicit_wait(s, t);
    } else if (!(s->flags & cudaStreamNonBlocking)) {
        e = implicit_wait(s, &legacy_stream);
    }
    if (e != cudaSuccess) {
        free(it);
        return e;
    }
    return push_raw(s, it);
}

/* Whether the calling thread is in a capture whose mode makes "unsafe"
 * calls (synchronisation of the legacy stream or device, cudaMalloc,
 * synchronous copies) errors: a Global capture on any thread, a
 * ThreadLocal one on this thread. Such a capture is invalidated. */
static int unsafe_in_capture(void)
{
    int hit = 0;
    for (struct CUstream_st *t = streams; t; t = t->next_stream)
        if (t->capturing && (t->mode == cudaStreamCaptureModeGlobal ||
                             (t->mode == cudaStreamCaptureModeThreadLocal &&
                              pthread_equal(t->capture_thread, pthread_self())))) {
            t->invalidated = 1;
            hit = 1;
        }
    return hit;
}

cudaError_t emu_enqueue(cudaStream_t s, const char *what, emu_work_fn run, void *arg, emu_drop_fn drop)
{
    emu_lock();
    cudaError_t e = sticky;
    struct CUstream_st *st = stream_of(s);
    work *w = NULL;
    if (e == cudaSuccess && !st)
        e = cudaErrorInvalidResourceHandle;
    if (e == cudaSuccess && !(w = calloc(1, sizeof *w)))
        e = cudaErrorMemoryAllocation;
    if (e != cudaSuccess) {
        if (drop)
            drop(arg);
        emu_unlock();
        return err(e);
    }
    *w = (work){run, arg, drop, what, 1};
    if (st->capturing) {
        if (!graph_add(st->g, w))
            e = cudaErrorMemoryAllocation;
        work_unref(w);
    } else {
        item *it = calloc(1, sizeof *it);
        if (!it) {
            work_unref(w);
            e = cudaErrorMemoryAllocation;
        } else {
            it->kind = ITEM_WORK;
            it->w = w;
            e = push(st, it);
        }
    }
    emu_unlock();
    return err(e);
}

cudaError_t emu_stream_drain(cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *st = stream_of(s);
    cudaError_t e;
    if (!st)
        e = cudaErrorInvalidResourceHandle;
    else if (st->capturing) {
        st->invalidated = 1;
        e = cudaErrorStreamCaptureUnsupported;
    } else
        e = run_until(st, st->enqueued);
    emu_unlock();
    return err(e);
}

int emu_stream_capturing(cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *st = stream_of(s);
    int c = st && st->capturing;
    emu_unlock();
    return c;
}

void emu_capture_invalidate(cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *st = stream_of(s);
    if (st && st->capturing)
        st->invalidated = 1;
    emu_unlock();
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags)
{
    if (!s || (flags & ~(unsigned)cudaStreamNonBlocking))
        return err(cudaErrorInvalidValue);
    emu_lock();
    struct CUstream_st *t = calloc(1, sizeof *t);
    cudaError_t e = t ? sticky : cudaErrorMemoryAllocation;
    if (t && e == cudaSuccess) {
        t->flags = flags;
        t->next_stream = legacy_stream.next_stream; /* after the legacy stream */
        legacy_stream.next_stream = t;
        *s = t;
    } else
        free(t);
    emu_unlock();
    return err(e);
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }

/* As CUDA's: pending work still runs (here: now), then the stream goes. */
cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *t = stream_of(s);
    cudaError_t e = cudaSuccess;
    if (!t || t == &legacy_stream)
        e = cudaErrorInvalidResourceHandle;
    else if (t->capturing)
        e = cudaErrorStreamCaptureUnsupported;
    else {
        run_until(t, t->enqueued);
        for (struct CUstream_st **p = &streams; *p; p = &(*p)->next_stream)
            if (*p == t) {
                *p = t->next_stream;
                break;
            }
        free(t);
    }
    emu_unlock();
    return err(e);
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *t = stream_of(s);
    cudaError_t e;
    if (!t)
        e = cudaErrorInvalidResourceHandle;
    else if (t->capturing || (t == &legacy_stream && unsafe_in_capture())) {
        t->invalidated = t->capturing ? 1 : t->invalidated;
        e = cudaErrorStreamCaptureUnsupported;
    } else
        e = run_until(t, t->enqueued);
    emu_unlock();
    return err(e);
}

cudaError_t cudaDeviceSynchronize(void)
{
    emu_lock();
    cudaError_t e = unsafe_in_capture() ? cudaErrorStreamCaptureUnsupported : run_all();
    emu_unlock();
    return err(e);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags)
{
    if (!e)
        return err(cudaErrorInvalidValue);
    *e = calloc(1, sizeof **e);
    if (!*e)
        return err(cudaErrorMemoryAllocation);
    (*e)->flags = flags;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    if (!e)
        return err(cudaErrorInvalidResourceHandle);
    emu_lock();
    /* pending records of it (CUDA lets them complete) are detached first */
    for (struct CUstream_st *t = streams; t; t = t->next_stream)
        for (item *it = t->head; it; it = it->next)
            if (it->kind == ITEM_RECORD && it->ev == e)
                it->ev = NULL;
    free(e);
    emu_unlock();
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    if (!e)
        return err(cudaErrorInvalidResourceHandle);
    emu_lock();
    struct CUstream_st *t = stream_of(s);
    cudaError_t e2 = sticky;
    if (e2 == cudaSuccess && !t)
        e2 = cudaErrorInvalidResourceHandle;
    if (e2 == cudaSuccess && t->capturing) {
        e->on = t; /* ordered inside the capture by stream order: nothing to record */
        e->captured = 1;
        e->serial++;
        e->timed = 0;
    } else if (e2 == cudaSuccess) {
        item *it = calloc(1, sizeof *it);
        if (!it)
            e2 = cudaErrorMemoryAllocation;
        else {
            e->serial++;
            e->on = t;
            e->captured = 0;
            e->timed = 0;
            it->kind = ITEM_RECORD;
            it->ev = e;
            it->ev_serial = e->serial;
            e2 = push(t, it);
            e->seq = t->enqueued; /* complete once the record item has run */
        }
    }
    emu_unlock();
    return err(e2);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags)
{
    if (!e || flags)
        return err(e ? cudaErrorInvalidValue : cudaErrorInvalidResourceHandle);
    emu_lock();
    struct CUstream_st *t = stream_of(s);
    cudaError_t r = sticky;
    if (r == cudaSuccess && !t)
        r = cudaErrorInvalidResourceHandle;
    if (r == cudaSuccess && e->on) {
        if (e->captured && !(t->capturing && e->on == t)) {
            /* CUDA would fork another stream into the capture: not emulated */
            if (e->on->capturing)
                e->on->invalidated = 1;
            r = cudaErrorStreamCaptureUnsupported;
        } else if (t->capturing && !e->captured) {
            /* a dependency on work outside the capture */
            t->invalidated = 1;
            r = cudaErrorStreamCaptureIsolation;
        } else if (!t->capturing && e->on != t && e->on->done < e->seq) {
            item *it = calloc(1, sizeof *it);
            if (!it)
                r = cudaErrorMemoryAllocation;
            else {
                it->kind = ITEM_WAIT;
                it->on = e->on;
                it->until = e->seq;
                r = push(t, it);
            }
        }
    }
    emu_unlock();
    return err(r);
}

cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    if (!e)
        return err(cudaErrorInvalidResourceHandle);
    emu_lock();
    cudaError_t r = sticky;
    if (r == cudaSuccess && e->captured)
        r = cudaErrorCapturedEvent;
    else if (r == cudaSuccess && e->on)
        r = run_until(e->on, e->seq);
    emu_unlock();
    return err(r);
}

/* Runs one more item of the event's stream per call, so that a polling
 * loop makes progress as it would on a GPU. */
cudaError_t cudaEventQuery(cudaEvent_t e)
{
    if (!e)
        return err(cudaErrorInvalidResourceHandle);
    emu_lock();
    cudaError_t r = sticky;
    if (r == cudaSuccess && e->captured)
        r = cudaErrorCapturedEvent;
    else if (r == cudaSuccess && e->on && e->on->done < e->seq) {
        run_until(e->on, e->on->done + 1);
        r = sticky != cudaSuccess ? sticky : e->on->done < e->seq ? cudaErrorNotReady : cudaSuccess;
    }
    emu_unlock();
    return r == cudaErrorNotReady ? r : err(r);
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    if (!ms || !start || !end)
        return err(cudaErrorInvalidValue);
    emu_lock();
    cudaError_t r = sticky;
    if (r == cudaSuccess && (start->captured || end->captured))
        r = cudaErrorCapturedEvent;
    else if (r == cudaSuccess && ((start->flags | end->flags) & cudaEventDisableTiming))
        r = cudaErrorInvalidResourceHandle;
    else if (r == cudaSuccess && (!start->timed || !end->timed))
        r = cudaErrorNotReady;
    else if (r == cudaSuccess)
        *ms = (float)((end->t - start->t) * 1e3);
    emu_unlock();
    return err(r);
}

/* ---- capture and graphs ---- */

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode)
{
    emu_lock();
    struct CUstream_st *t = stream_of(s);
    cudaError_t r = sticky;
    if (r == cudaSuccess && (!t || t == &legacy_stream))
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
    return err(r);
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
    if (!g)
        return err(cudaErrorInvalidValue);
    emu_lock();
    struct CUstream_st *t = stream_of(s);
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
            graph_clear(cg);
            free(cg);
            r = cudaErrorStreamCaptureInvalidated;
        } else {
            struct CUgraph_st *out = calloc(1, sizeof *out);
            if (!out) {
                graph_clear(cg);
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
    return err(r);
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *status)
{
    if (!status)
        return err(cudaErrorInvalidValue);
    emu_lock();
    struct CUstream_st *t = stream_of(s);
    if (t)
        *status = !t->capturing ? cudaStreamCaptureStatusNone
                  : t->invalidated ? cudaStreamCaptureStatusInvalidated
                                   : cudaStreamCaptureStatusActive;
    emu_unlock();
    return err(t ? cudaSuccess : cudaErrorInvalidResourceHandle);
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t g, unsigned long long flags)
{
    if (!exec || !g || flags)
        return err(cudaErrorInvalidValue);
    emu_lock();
    cudaError_t r = sticky;
    struct CUgraphExec_st *x = r == cudaSuccess ? calloc(1, sizeof *x) : NULL;
    if (r == cudaSuccess && !x)
        r = cudaErrorMemoryAllocation;
    for (size_t i = 0; r == cudaSuccess && i < g->g.n; i++)
        if (!graph_add(&x->g, g->g.v[i]->w))
            r = cudaErrorMemoryAllocation;
    if (r != cudaSuccess && x) {
        graph_clear(&x->g);
        free(x);
        x = NULL;
    }
    *exec = x;
    emu_unlock();
    return err(r);
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s)
{
    if (!exec)
        return err(cudaErrorInvalidValue);
    emu_lock();
    struct CUstream_st *t = stream_of(s);
    cudaError_t r = sticky;
    if (r == cudaSuccess && !t)
        r = cudaErrorInvalidResourceHandle;
    for (size_t i = 0; r == cudaSuccess && i < exec->g.n; i++) {
        work *w = exec->g.v[i]->w;
        if (t->capturing) {
            if (!graph_add(t->g, w))
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
        r = push(t, it);
    }
    emu_unlock();
    return err(r);
}

cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
    if (!g)
        return err(cudaErrorInvalidValue);
    emu_lock();
    graph_clear(&g->g);
    free(g);
    emu_unlock();
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    if (!exec)
        return err(cudaErrorInvalidValue);
    emu_lock();
    graph_clear(&exec->g);
    free(exec);
    emu_unlock();
    return cudaSuccess;
}

/* ---- kernel launches ---- */

typedef struct {
    const char *name;
    dim3 grid, block;
    void (*thread)(void *);
    void *closure;
    void (*drop)(void *);
} launch;

static cudaError_t launch_run(void *arg)
{
    launch *l = arg;
    return emu_grid_run(l->name, l->grid, l->block, l->thread, l->closure);
}

static void launch_drop(void *arg)
{
    launch *l = arg;
    l->drop(l->closure);
    free(l);
}

void amdim_emu_launch_kernel(const char *name, dim3 grid, dim3 block, cudaStream_t s, void (*thread)(void *),
                             void *closure, void (*drop)(void *))
{
    unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || !threads || threads > 1024 || block.x > 1024 || block.y > 1024 ||
        block.z > 64 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
        drop(closure);
        fprintf(stderr, "emulated device: kernel %s: invalid configuration: grid (%u, %u, %u), block (%u, %u, %u)\n",
                name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        err(cudaErrorInvalidConfiguration);
        return;
    }
    launch *l = malloc(sizeof *l);
    if (!l) {
        drop(closure);
        err(cudaErrorMemoryAllocation);
        return;
    }
    *l = (launch){name, grid, block, thread, closure, drop};
    emu_enqueue(s, name, launch_run, l, launch_drop); /* sets the last error on failure */
}

/* ---- memory ---- */

typedef struct {
    char *map;        /* the mapping: the allocation's pages, then a PROT_NONE page */
    size_t map_bytes;
    char *p;          /* what cudaMalloc returned */
    size_t bytes;
} allocation;

static allocation *allocs;
static size_t nallocs, cap_allocs;

typedef struct {
    const char *p;
    size_t bytes;
} host_range;

static host_range *pinned;
static size_t npinned, cap_pinned;

/* The allocation holding [p, p + bytes), or NULL. */
static allocation *alloc_of(const void *p, size_t bytes)
{
    const char *q = p;
    for (size_t i = 0; i < nallocs; i++)
        if (q >= allocs[i].p && q <= allocs[i].p + allocs[i].bytes && bytes <= (size_t)(allocs[i].p + allocs[i].bytes - q))
            return &allocs[i];
    return NULL;
}

/* Whether p lies inside a device allocation at all. */
static int on_device(const void *p)
{
    const char *q = p;
    for (size_t i = 0; i < nallocs; i++)
        if (q >= allocs[i].map && q < allocs[i].map + allocs[i].map_bytes)
            return 1;
    return 0;
}

static int is_pinned(const void *p, size_t bytes)
{
    const char *q = p;
    for (size_t i = 0; i < npinned; i++)
        if (q >= pinned[i].p && q <= pinned[i].p + pinned[i].bytes &&
            bytes <= (size_t)(pinned[i].p + pinned[i].bytes - q))
            return 1;
    return 0;
}

int emu_device_range(const void *p, size_t bytes)
{
    emu_lock();
    int ok = alloc_of(p, bytes) != NULL;
    emu_unlock();
    return ok;
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (!p)
        return err(cudaErrorInvalidValue);
    emu_lock();
    cudaError_t r = sticky;
    *p = NULL;
    if (r == cudaSuccess && unsafe_in_capture())
        r = cudaErrorStreamCaptureUnsupported;
    size_t page = (size_t)sysconf(_SC_PAGESIZE), body = (bytes + 255) / 256 * 256;
    if (!body)
        body = 256;
    size_t pages = (body + page - 1) / page * page;
    if (r == cudaSuccess && bytes > ((size_t)1 << 40))
        r = cudaErrorMemoryAllocation;
    if (r == cudaSuccess && nallocs == cap_allocs) {
        size_t cap = cap_allocs ? 2 * cap_allocs : 64;
        allocation *v = realloc(allocs, cap * sizeof *v);
        if (!v)
            r = cudaErrorMemoryAllocation;
        else
            allocs = v, cap_allocs = cap;
    }
    if (r == cudaSuccess) {
        char *map = mmap(NULL, pages + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (map == MAP_FAILED)
            r = cudaErrorMemoryAllocation;
        else {
            mprotect(map + pages, page, PROT_NONE);
            char *q = map + pages - body; /* ends at the guard page; 256-byte aligned */
            if (bytes <= (size_t)64 << 20) /* the arenas; not the libraries' large workspaces */
                memset(q, 0xff, body);
            allocs[nallocs++] = (allocation){map, pages + page, q, bytes};
            *p = q;
        }
    }
    emu_unlock();
    return err(r);
}

cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    emu_lock();
    cudaError_t r = unsafe_in_capture() ? cudaErrorStreamCaptureUnsupported : run_all();
    size_t i = 0;
    while (i < nallocs && allocs[i].p != p)
        i++;
    if (r == cudaSuccess && i == nallocs)
        r = cudaErrorInvalidValue;
    if (i < nallocs && r != cudaErrorStreamCaptureUnsupported) {
        munmap(allocs[i].map, allocs[i].map_bytes);
        allocs[i] = allocs[--nallocs];
    }
    emu_unlock();
    return err(r);
}

cudaError_t cudaHostRegister(void *p, size_t bytes, unsigned int flags)
{
    (void)flags;
    if (!p || !bytes)
        return err(cudaErrorInvalidValue);
    emu_lock();
    cudaError_t r = cudaSuccess;
    for (size_t i = 0; i < npinned; i++)
        if ((const char *)p < pinned[i].p + pinned[i].bytes && pinned[i].p < (const char *)p + bytes)
            r = cudaErrorHostMemoryAlreadyRegistered;
    if (r == cudaSuccess && npinned == cap_pinned) {
        size_t cap = cap_pinned ? 2 * cap_pinned : 16;
        host_range *v = realloc(pinned, cap * sizeof *v);
        if (!v)
            r = cudaErrorMemoryAllocation;
        else
            pinned = v, cap_pinned = cap;
    }
    if (r == cudaSuccess)
        pinned[npinned++] = (host_range){p, bytes};
    emu_unlock();
    return err(r);
}

/* Work still queued may read the range: it runs first. */
cudaError_t cudaHostUnregister(void *p)
{
    emu_lock();
    size_t i = 0;
    while (i < npinned && pinned[i].p != p)
        i++;
    cudaError_t r = i == npinned ? cudaErrorHostMemoryNotRegistered : run_all();
    if (i < npinned)
        pinned[i] = pinned[--npinned];
    emu_unlock();
    return err(r);
}

/* ---- copies and clears ---- */

typedef struct {
    void *dst;
    const void *src;
    size_t bytes;
    int value; /* a clear when src is NULL */
    char staged[];
} copy_work;

static cudaError_t copy_run(void *arg)
{
    copy_work *c = arg;
    if (c->src)
        memmove(c->dst, c->src, c->bytes);
    else
        memset(c->dst, c->value, c->bytes);
    return cudaSuccess;
}

/* Checks one side of a copy: device memory must lie in one allocation,
 * host memory must not be device memory. */
static cudaError_t side(const void *p, size_t bytes, int device)
{
    if (device)
        return alloc_of(p, bytes) ? cudaSuccess : cudaErrorInvalidValue;
    return on_device(p) ? cudaErrorInvalidValue : cudaSuccess;
}

static cudaError_t copy_async(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                              struct CUstream_st *t, int sync)
{
    if (!bytes)
        return cudaSuccess;
    if (!dst || !src)
        return cudaErrorInvalidValue;
    if (kind == cudaMemcpyDefault)
        kind = on_device(src) ? (on_device(dst) ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                              : (on_device(dst) ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost);
    int dev_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    int dev_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDeviceToDevice)
        return cudaErrorInvalidMemcpyDirection;
    cudaError_t r = side(src, bytes, dev_src);
    if (r == cudaSuccess)
        r = side(dst, bytes, dev_dst);
    if (r != cudaSuccess)
        return r;
    int pageable_src = !dev_src && !is_pinned(src, bytes), pageable_dst = !dev_dst && !is_pinned(dst, bytes);
    if (t->capturing && (pageable_src || pageable_dst)) {
        t->invalidated = 1;
        return cudaErrorStreamCaptureUnsupported;
    }
    if (sync && unsafe_in_capture())
        return cudaErrorStreamCaptureUnsupported;
    copy_work *c = malloc(sizeof *c + (pageable_src ? bytes : 0));
    if (!c)
        return cudaErrorMemoryAllocation;
    c->dst = dst;
    c->bytes = bytes;
    c->value = 0;
    if (pageable_src) { /* read now, as CUDA stages it */
        memcpy(c->staged, src, bytes);
        c->src = c->staged;
    } else
        c->src = src;
    work *w = calloc(1, sizeof *w);
    item *it = calloc(1, sizeof *it);
    if (!w || !it) {
        free(w), free(it), free(c);
        return cudaErrorMemoryAllocation;
    }
    *w = (work){copy_run, c, free, "cudaMemcpyAsync", 1};
    if (t->capturing) {
        free(it);
        r = graph_add(t->g, w) ? cudaSuccess : cudaErrorMemoryAllocation;
        work_unref(w);
        return r;
    }
    it->kind = ITEM_WORK;
    it->w = w;
    /* cudaMemcpy from pageable memory to the device: "a stream sync is performed before the copy is
     * initiated", and it returns once the source is staged, "but the DMA to final destination may not
     * have completed" - so the copy itself stays queued on the legacy stream, which orders it before
     * later work on blocking streams only */
    int staged_only = sync && pageable_src && dev_dst;
    if (staged_only && (r = run_until(t, t->enqueued)) != cudaSuccess) {
        free(it), work_unref(w);
        return r;
    }
    if ((r = push(t, it)) != cudaSuccess)
        return r;
    if (staged_only)
        return cudaSuccess;
    if (sync || pageable_dst) /* into pageable memory: done before the call returns */
        return run_until(t, t->enqueued);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *t = stream_of(s);
    cudaError_t r = sticky != cudaSuccess ? sticky : !t ? cudaErrorInvalidResourceHandle
                                                       : copy_async(dst, src, bytes, kind, t, 0);
    emu_unlock();
    return err(r);
}

/* Synchronous: on the legacy stream, done when it returns. */
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    emu_lock();
    cudaError_t r = sticky != cudaSuccess ? sticky : copy_async(dst, src, bytes, kind, &legacy_stream, 1);
    emu_unlock();
    return err(r);
}

static cudaError_t set_async(void *p, int value, size_t bytes, struct CUstream_st *t)
{
    if (!bytes)
        return cudaSuccess;
    if (!p || !alloc_of(p, bytes))
        return cudaErrorInvalidValue;
    copy_work *c = malloc(sizeof *c);
    work *w = calloc(1, sizeof *w);
    if (!c || !w) {
        free(c), free(w);
        return cudaErrorMemoryAllocation;
    }
    *c = (copy_work){p, NULL, bytes, value};
    *w = (work){copy_run, c, free, "cudaMemsetAsync", 1};
    if (t->capturing) {
        cudaError_t r = graph_add(t->g, w) ? cudaSuccess : cudaErrorMemoryAllocation;
        work_unref(w);
        return r;
    }
    item *it = calloc(1, sizeof *it);
    if (!it) {
        work_unref(w);
        return cudaErrorMemoryAllocation;
    }
    it->kind = ITEM_WORK;
    it->w = w;
    return push(t, it);
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *t = stream_of(s);
    cudaError_t r = sticky != cudaSuccess ? sticky : !t ? cudaErrorInvalidResourceHandle : set_async(p, value, bytes, t);
    emu_unlock();
    return err(r);
}

/* Asynchronous with respect to the host for device memory (CUDA's
 * documented behaviour), on the legacy stream. */
cudaError_t cudaMemset(void *p, int value, size_t bytes)
{
    emu_lock();
    cudaError_t r = sticky != cudaSuccess ? sticky : set_async(p, value, bytes, &legacy_stream);
    emu_unlock();
    return err(r);
}

/* ---- the device ---- */

/* The emulated device exists where the host can run the kernels as
 * compiled: with FMA instructions (nvcc contracts a * b + c into FMAs, and
 * so does the emulated build, -mfma -ffp-contract=fast). */
static int have_device(void) { return __builtin_cpu_supports("fma"); }

static int current_device;

cudaError_t cudaGetDeviceCount(int *count)
{
    if (!count)
        return err(cudaErrorInvalidValue);
    *count = have_device() ? 1 : 0;
    return *count ? cudaSuccess : err(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int device)
{
    if (device != 0 || !have_device())
        return err(cudaErrorInvalidDevice);
    current_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    *device = current_device;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device)
{
    if (device != 0)
        return err(cudaErrorInvalidDevice);
    switch (attr) {
    case cudaDevAttrComputeCapabilityMajor:
        *value = 9; /* an sm_90 part, as the build targets */
        break;
    case cudaDevAttrMultiProcessorCount:
        *value = 1;
        break;
    default:
        *value = 0;
    }
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    if (device != 0)
        return err(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    strncpy(prop->name, "amdim CPU emulation of a CUDA device", sizeof prop->name - 1);
    prop->totalGlobalMem = (size_t)16 << 30;
    prop->major = 9;
    prop->multiProcessorCount = 1;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total)
{
    size_t used = 0;
    emu_lock();
    for (size_t i = 0; i < nallocs; i++)
        used += allocs[i].bytes;
    emu_unlock();
    *total = (size_t)16 << 30;
    *free_bytes = used < *total ? *total - used : 0;
    return cudaSuccess;
}

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
#define NAME(x)                                                                                                        \
    case x:                                                                                                            \
        return #x
        NAME(cudaSuccess);
        NAME(cudaErrorInvalidValue);
        NAME(cudaErrorMemoryAllocation);
        NAME(cudaErrorInvalidConfiguration);
        NAME(cudaErrorInvalidDevicePointer);
        NAME(cudaErrorInvalidMemcpyDirection);
        NAME(cudaErrorNoDevice);
        NAME(cudaErrorInvalidDevice);
        NAME(cudaErrorInvalidResourceHandle);
        NAME(cudaErrorIllegalState);
        NAME(cudaErrorNotReady);
        NAME(cudaErrorHostMemoryAlreadyRegistered);
        NAME(cudaErrorHostMemoryNotRegistered);
        NAME(cudaErrorLaunchOutOfResources);
        NAME(cudaErrorLaunchFailure);
        NAME(cudaErrorStreamCaptureUnsupported);
        NAME(cudaErrorStreamCaptureInvalidated);
        NAME(cudaErrorStreamCaptureIsolation);
        NAME(cudaErrorStreamCaptureImplicit);
        NAME(cudaErrorCapturedEvent);
        NAME(cudaErrorStreamCaptureWrongThread);
#undef NAME
    default:
        return "cudaError (emulated)";
    }
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess:
        return "no error";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureIsolation:
        return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorLaunchFailure:
        return "unspecified launch failure";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    default:
        return cudaGetErrorName(e);
    }
}
