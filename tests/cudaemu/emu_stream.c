/* The emulated CUDA runtime's streams and events (emu_runtime.c lists the
 * rest; emu_device.h describes the deferred work):
 *  - Streams run their work in order and only when something waits for it
 *    (synchronisation, a synchronous copy, an event another stream waits
 *    for, cudaFree): work on two streams is ordered only by events,
 *    stream waits and synchronisation. The legacy default stream (NULL)
 *    synchronises with blocking streams, not with cudaStreamNonBlocking
 *    ones.
 *  - A work item that fails when it runs is reported on stderr and becomes
 *    the device's sticky error (emu_runtime.c): no work runs after it.
 *  - During a capture the capturing stream's work goes to its graph, and
 *    the synchronisations and event waits here refuse what the capture
 *    rules (emu_graph.c) forbid. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "emu_runtime_internal.h"

struct CUevent_st {
    unsigned flags;
    struct CUstream_st *on; /* NULL: never recorded */
    unsigned long long seq; /* complete when on->done >= seq */
    unsigned long long serial;
    int captured; /* last recorded in a capture */
    double t;     /* completion time (seconds), once ITEM_RECORD ran */
    int timed;
};

static struct CUstream_st legacy_stream = {.flags = cudaStreamDefault};
static struct CUstream_st *streams = &legacy_stream; /* every live stream, legacy first */
static struct CUstream_st *retired;                   /* destroyed streams (cudaStreamDestroy) */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- work queues ---- */

struct CUstream_st *emu_legacy_stream(void) { return &legacy_stream; }

/* The stream a handle names (NULL for an unknown handle). */
struct CUstream_st *emu_stream_of(cudaStream_t s)
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
    int ok = emu_stream_of(s) != NULL;
    emu_unlock();
    return ok;
}

void emu_work_unref(work *w)
{
    if (w && --w->refs == 0) {
        if (w->drop)
            w->drop(w->arg);
        free(w);
    }
}

/* Runs one item popped from s. */
static cudaError_t run_item(struct CUstream_st *s, item *it)
{
    cudaError_t e = cudaSuccess;
    if (it->kind == ITEM_WAIT)
        e = emu_run_until(it->on, it->until);
    else if (it->kind == ITEM_RECORD) {
        if (it->ev && it->ev->serial == it->ev_serial) {
            it->ev->t = now();
            it->ev->timed = 1;
        }
    } else if (emu_sticky() == cudaSuccess && (!emu_dry() || it->w->in_dry_run)) {
        e = it->w->run(it->w->arg);
        if (e != cudaSuccess) {
            fprintf(stderr, "emulated device: %s failed: %s\n", it->w->what, cudaGetErrorName(e));
            emu_set_sticky(e);
        }
    }
    (void)s;
    return e;
}

/* Runs s's items until it has done `seq` of them (work waited for first). */
cudaError_t emu_run_until(struct CUstream_st *s, unsigned long long seq)
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
            emu_work_unref(it->w);
        free(it);
        if (e != cudaSuccess && emu_sticky() != cudaSuccess)
            return emu_sticky();
    }
    return emu_sticky();
}

/* The device synchronised: every stream's pending work, legacy first. */
cudaError_t emu_run_all(void)
{
    for (struct CUstream_st *t = streams; t; t = t->next_stream) {
        cudaError_t e = emu_run_until(t, t->enqueued);
        if (e != cudaSuccess)
            return e;
    }
    return cudaSuccess;
}

/* Appends it to s's queue as it is. A stream more than 1024 items ahead
 * runs its oldest (a GPU's launch queue is finite too). */
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
        return emu_run_until(s, s->done + 1);
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

/* Appends it to s's queue, with the legacy stream's implicit ordering:
 * work on the legacy stream waits for every blocking stream, and work on a
 * blocking stream for the legacy stream (push_raw). */
cudaError_t emu_push(struct CUstream_st *s, item *it)
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
        if (it->kind == ITEM_WORK)
            emu_work_unref(it->w); /* the item held the caller's reference */
        free(it);
        return e;
    }
    return push_raw(s, it);
}

/* Whether the calling thread is in a capture whose mode makes "unsafe"
 * calls (synchronisation of the legacy stream or device, cudaMalloc,
 * synchronous copies) errors: a Global capture on any thread, a
 * ThreadLocal one on this thread. Such a capture is invalidated. */
int emu_unsafe_in_capture(void)
{
    int hit = 0;
    for (struct CUstream_st *t = streams; t; t = t->next_stream)
        if (t->capturing &&
            (t->mode == cudaStreamCaptureModeGlobal ||
             (t->mode == cudaStreamCaptureModeThreadLocal && pthread_equal(t->capture_thread, pthread_self())))) {
            t->invalidated = 1;
            hit = 1;
        }
    return hit;
}

cudaError_t emu_enqueue(cudaStream_t s, const char *what, emu_work_fn run, void *arg, emu_drop_fn drop)
{
    emu_lock();
    cudaError_t e = emu_sticky();
    struct CUstream_st *st = emu_stream_of(s);
    work *w = NULL;
    if (e == cudaSuccess && !st)
        e = cudaErrorInvalidResourceHandle;
    if (e == cudaSuccess && !(w = calloc(1, sizeof *w)))
        e = cudaErrorMemoryAllocation;
    if (e != cudaSuccess) {
        if (drop)
            drop(arg);
        emu_unlock();
        return emu_err(e);
    }
    *w = (work){run, arg, drop, what, 1, 0};
    if (st->capturing) {
        if (!emu_graph_add(st->g, w))
            e = cudaErrorMemoryAllocation;
        emu_work_unref(w);
    } else {
        item *it = calloc(1, sizeof *it);
        if (!it) {
            emu_work_unref(w);
            e = cudaErrorMemoryAllocation;
        } else {
            it->kind = ITEM_WORK;
            it->w = w;
            e = emu_push(st, it);
        }
    }
    emu_unlock();
    return emu_err(e);
}

cudaError_t emu_stream_drain(cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *st = emu_stream_of(s);
    cudaError_t e;
    if (!st)
        e = cudaErrorInvalidResourceHandle;
    else if (st->capturing) {
        st->invalidated = 1;
        e = cudaErrorStreamCaptureUnsupported;
    } else
        e = emu_run_until(st, st->enqueued);
    emu_unlock();
    return emu_err(e);
}

int emu_stream_capturing(cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *st = emu_stream_of(s);
    int c = st && st->capturing;
    emu_unlock();
    return c;
}

void emu_capture_invalidate(cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *st = emu_stream_of(s);
    if (st && st->capturing)
        st->invalidated = 1;
    emu_unlock();
}

/* ---- streams ---- */

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags)
{
    if (!s || (flags & ~(unsigned)cudaStreamNonBlocking))
        return emu_err(cudaErrorInvalidValue);
    emu_lock();
    struct CUstream_st *t = calloc(1, sizeof *t);
    cudaError_t e = t ? emu_sticky() : cudaErrorMemoryAllocation;
    if (t && e == cudaSuccess) {
        t->flags = flags;
        t->next_stream = legacy_stream.next_stream; /* after the legacy stream */
        legacy_stream.next_stream = t;
        *s = t;
    } else
        free(t);
    emu_unlock();
    return emu_err(e);
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }

/* As CUDA's: pending work still runs (here: now), then the stream goes. */
cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *t = emu_stream_of(s);
    cudaError_t e = cudaSuccess;
    if (!t || t == &legacy_stream)
        e = cudaErrorInvalidResourceHandle;
    else if (t->capturing)
        e = cudaErrorStreamCaptureUnsupported;
    else {
        emu_run_until(t, t->enqueued);
        for (struct CUstream_st **p = &streams; *p; p = &(*p)->next_stream)
            if (*p == t) {
                *p = t->next_stream;
                break;
            }
        /* Kept, not freed: an event recorded on it stays valid (CUDA's do), and
         * another stream's wait may still name it - both see all its work done. */
        t->next_stream = retired;
        retired = t;
    }
    emu_unlock();
    return emu_err(e);
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *t = emu_stream_of(s);
    cudaError_t e;
    if (!t)
        e = cudaErrorInvalidResourceHandle;
    else if (t->capturing || (t == &legacy_stream && emu_unsafe_in_capture())) {
        t->invalidated = t->capturing ? 1 : t->invalidated;
        e = cudaErrorStreamCaptureUnsupported;
    } else
        e = emu_run_until(t, t->enqueued);
    emu_unlock();
    return emu_err(e);
}

cudaError_t cudaDeviceSynchronize(void)
{
    emu_lock();
    cudaError_t e = emu_unsafe_in_capture() ? cudaErrorStreamCaptureUnsupported : emu_run_all();
    emu_unlock();
    return emu_err(e);
}

/* ---- events ---- */

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags)
{
    if (!e)
        return emu_err(cudaErrorInvalidValue);
    *e = calloc(1, sizeof **e);
    if (!*e)
        return emu_err(cudaErrorMemoryAllocation);
    (*e)->flags = flags;
    return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    if (!e)
        return emu_err(cudaErrorInvalidResourceHandle);
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
        return emu_err(cudaErrorInvalidResourceHandle);
    emu_lock();
    struct CUstream_st *t = emu_stream_of(s);
    cudaError_t e2 = emu_sticky();
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
            e2 = emu_push(t, it);
            e->seq = t->enqueued; /* complete once the record item has run */
        }
    }
    emu_unlock();
    return emu_err(e2);
}

cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags)
{
    if (!e || flags)
        return emu_err(e ? cudaErrorInvalidValue : cudaErrorInvalidResourceHandle);
    emu_lock();
    struct CUstream_st *t = emu_stream_of(s);
    cudaError_t r = emu_sticky();
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
                r = emu_push(t, it);
            }
        }
    }
    emu_unlock();
    return emu_err(r);
}

cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    if (!e)
        return emu_err(cudaErrorInvalidResourceHandle);
    emu_lock();
    cudaError_t r = emu_sticky();
    if (r == cudaSuccess && e->captured)
        r = cudaErrorCapturedEvent;
    else if (r == cudaSuccess && e->on)
        r = emu_run_until(e->on, e->seq);
    emu_unlock();
    return emu_err(r);
}

/* Runs one more item of the event's stream per call, so that a polling
 * loop makes progress as it would on a GPU. */
cudaError_t cudaEventQuery(cudaEvent_t e)
{
    if (!e)
        return emu_err(cudaErrorInvalidResourceHandle);
    emu_lock();
    cudaError_t r = emu_sticky();
    if (r == cudaSuccess && e->captured)
        r = cudaErrorCapturedEvent;
    else if (r == cudaSuccess && e->on && e->on->done < e->seq) {
        r = emu_run_until(e->on, e->on->done + 1); /* the sticky error */
        if (r == cudaSuccess && e->on->done < e->seq)
            r = cudaErrorNotReady;
    }
    emu_unlock();
    return r == cudaErrorNotReady ? r : emu_err(r);
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    if (!ms || !start || !end)
        return emu_err(cudaErrorInvalidValue);
    emu_lock();
    cudaError_t r = emu_sticky();
    if (r == cudaSuccess && (start->captured || end->captured))
        r = cudaErrorCapturedEvent;
    else if (r == cudaSuccess && ((start->flags | end->flags) & cudaEventDisableTiming))
        r = cudaErrorInvalidResourceHandle;
    else if (r == cudaSuccess && (!start->timed || !end->timed))
        r = cudaErrorNotReady;
    else if (r == cudaSuccess)
        *ms = (float)((end->t - start->t) * 1e3);
    emu_unlock();
    return emu_err(r);
}
