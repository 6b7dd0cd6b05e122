/* The emulated CUDA runtime's memory (emu_runtime.c lists the rest):
 *  - Allocations are 256-byte aligned and end at a page the process cannot
 *    touch (a kernel or copy that runs past one faults), and up to 64 MiB
 *    of each is filled with 0xff bytes (NaN as float and bf16), so that
 *    reading a buffer before writing it shows. cudaFree waits for the
 *    device, as CUDA's does.
 *  - Copies as documented: from pageable host memory the source is read
 *    when the call is made (a synchronous cudaMemcpy of it to the device
 *    then returns with the copy still queued on the legacy stream: CUDA's
 *    DMA "may not have completed", so only events or synchronisation
 *    order it before a non-blocking stream's work); into pageable host
 *    memory the call waits for the stream and copies before it returns; page-locked memory
 *    (cudaHostRegister) is read and written when the copy runs. A copy or
 *    clear of device memory must lie inside one allocation.
 *  - During a capture (emu_graph.c) cudaMalloc, cudaFree, synchronous and
 *    pageable copies are errors. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "emu_runtime_internal.h"

/* ---- allocations ---- */

typedef struct {
    char *map; /* the mapping: the allocation's pages, then a PROT_NONE page */
    size_t map_bytes;
    char *p; /* what cudaMalloc returned */
    size_t bytes;
} allocation;

static allocation *allocs;
static size_t nallocs, cap_allocs;

/* The allocation holding [p, p + bytes), or NULL. */
static allocation *alloc_of(const void *p, size_t bytes)
{
    const char *q = p;
    for (size_t i = 0; i < nallocs; i++)
        if (q >= allocs[i].p && q <= allocs[i].p + allocs[i].bytes &&
            bytes <= (size_t)(allocs[i].p + allocs[i].bytes - q))
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
        return emu_err(cudaErrorInvalidValue);
    emu_lock();
    cudaError_t r = emu_sticky();
    *p = NULL;
    if (r == cudaSuccess && emu_unsafe_in_capture())
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
        char *map =
            mmap(NULL, pages + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (map == MAP_FAILED)
            r = cudaErrorMemoryAllocation;
        else {
            mprotect(map + pages, page, PROT_NONE);
            char *q = map + pages - body;  /* ends at the guard page; 256-byte aligned */
            if (bytes <= (size_t)64 << 20 && !emu_dry()) /* the arenas; not the libraries' large workspaces */
                memset(q, 0xff, body);
            allocs[nallocs++] = (allocation){map, pages + page, q, bytes};
            *p = q;
        }
    }
    emu_unlock();
    return emu_err(r);
}

cudaError_t cudaFree(void *p)
{
    if (!p)
        return cudaSuccess;
    emu_lock();
    cudaError_t r = emu_unsafe_in_capture() ? cudaErrorStreamCaptureUnsupported : emu_run_all();
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
    return emu_err(r);
}

/* The free memory of a 16 GiB device, less what is allocated. */
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

/* ---- page-locked host memory ---- */

typedef struct {
    const char *p;
    size_t bytes;
} host_range;

static host_range *pinned;
static size_t npinned, cap_pinned;

/* Whether [p, p + bytes) lies inside one registered range. */
static int is_pinned(const void *p, size_t bytes)
{
    const char *q = p;
    for (size_t i = 0; i < npinned; i++)
        if (q >= pinned[i].p && q <= pinned[i].p + pinned[i].bytes &&
            bytes <= (size_t)(pinned[i].p + pinned[i].bytes - q))
            return 1;
    return 0;
}

cudaError_t cudaHostRegister(void *p, size_t bytes, unsigned int flags)
{
    (void)flags;
    if (!p || !bytes)
        return emu_err(cudaErrorInvalidValue);
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
    return emu_err(r);
}

/* Work still queued may read the range: it runs first. */
cudaError_t cudaHostUnregister(void *p)
{
    emu_lock();
    size_t i = 0;
    while (i < npinned && pinned[i].p != p)
        i++;
    cudaError_t r = i == npinned ? cudaErrorHostMemoryNotRegistered : emu_run_all();
    if (i < npinned)
        pinned[i] = pinned[--npinned];
    emu_unlock();
    return emu_err(r);
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
    if (emu_dry() && on_device(c->dst))
        return cudaSuccess;
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

/* Where a copy's sides lie, once checked. */
typedef struct {
    int dev_src, dev_dst;           /* device memory */
    int pageable_src, pageable_dst; /* host memory not page-locked */
} copy_sides;

/* Checks a copy's pointers and direction (cudaMemcpyDefault: by where dst
 * and src lie) and fills *cs. */
static cudaError_t copy_check(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, copy_sides *cs)
{
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
    cs->dev_src = dev_src;
    cs->dev_dst = dev_dst;
    cs->pageable_src = !dev_src && !is_pinned(src, bytes);
    cs->pageable_dst = !dev_dst && !is_pinned(dst, bytes);
    return cudaSuccess;
}

/* A copy's work, its source read now when staged (pageable: as CUDA
 * stages it) or when the copy runs; NULL when out of memory. */
static work *copy_work_new(void *dst, const void *src, size_t bytes, int staged)
{
    copy_work *c = malloc(sizeof *c + (staged ? bytes : 0));
    if (!c)
        return NULL;
    c->dst = dst;
    c->bytes = bytes;
    c->value = 0;
    if (staged) {
        memcpy(c->staged, src, bytes);
        c->src = c->staged;
    } else
        c->src = src;
    work *w = calloc(1, sizeof *w);
    if (!w) {
        free(c);
        return NULL;
    }
    *w = (work){copy_run, c, free, "cudaMemcpyAsync", 1, 1};
    return w;
}

/* A copy on t (sync: cudaMemcpy's), checked, then queued or captured. */
static cudaError_t copy_async(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, struct CUstream_st *t,
                              int sync)
{
    if (!bytes)
        return cudaSuccess;
    copy_sides cs;
    cudaError_t r = copy_check(dst, src, bytes, kind, &cs);
    if (r != cudaSuccess)
        return r;
    if (t->capturing && (cs.pageable_src || cs.pageable_dst)) {
        t->invalidated = 1;
        return cudaErrorStreamCaptureUnsupported;
    }
    if (sync && emu_unsafe_in_capture())
        return cudaErrorStreamCaptureUnsupported;
    work *w = copy_work_new(dst, src, bytes, cs.pageable_src);
    item *it = w ? calloc(1, sizeof *it) : NULL;
    if (!it) {
        emu_work_unref(w);
        return cudaErrorMemoryAllocation;
    }
    if (t->capturing) {
        free(it);
        r = emu_graph_add(t->g, w) ? cudaSuccess : cudaErrorMemoryAllocation;
        emu_work_unref(w);
        return r;
    }
    it->kind = ITEM_WORK;
    it->w = w;
    /* cudaMemcpy from pageable memory to the device: "a stream sync is performed before the copy is
     * initiated", and it returns once the source is staged, "but the DMA to final destination may not
     * have completed" - so the copy itself stays queued on the legacy stream, which orders it before
     * later work on blocking streams only */
    int staged_only = sync && cs.pageable_src && cs.dev_dst;
    if (staged_only && (r = emu_run_until(t, t->enqueued)) != cudaSuccess) {
        free(it), emu_work_unref(w);
        return r;
    }
    if ((r = emu_push(t, it)) != cudaSuccess)
        return r;
    if (staged_only)
        return cudaSuccess;
    if (sync || cs.pageable_dst) /* into pageable memory: done before the call returns */
        return emu_run_until(t, t->enqueued);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *t = emu_stream_of(s);
    cudaError_t r = emu_sticky();
    if (r == cudaSuccess)
        r = !t ? cudaErrorInvalidResourceHandle : copy_async(dst, src, bytes, kind, t, 0);
    emu_unlock();
    return emu_err(r);
}

/* Synchronous: on the legacy stream, done when it returns. */
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    emu_lock();
    cudaError_t r = emu_sticky();
    if (r == cudaSuccess)
        r = copy_async(dst, src, bytes, kind, emu_legacy_stream(), 1);
    emu_unlock();
    return emu_err(r);
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
    *w = (work){copy_run, c, free, "cudaMemsetAsync", 1, 1};
    if (t->capturing) {
        cudaError_t r = emu_graph_add(t->g, w) ? cudaSuccess : cudaErrorMemoryAllocation;
        emu_work_unref(w);
        return r;
    }
    item *it = calloc(1, sizeof *it);
    if (!it) {
        emu_work_unref(w);
        return cudaErrorMemoryAllocation;
    }
    it->kind = ITEM_WORK;
    it->w = w;
    return emu_push(t, it);
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s)
{
    emu_lock();
    struct CUstream_st *t = emu_stream_of(s);
    cudaError_t r = emu_sticky();
    if (r == cudaSuccess)
        r = !t ? cudaErrorInvalidResourceHandle : set_async(p, value, bytes, t);
    emu_unlock();
    return emu_err(r);
}

/* Asynchronous with respect to the host for device memory (CUDA's
 * documented behaviour), on the legacy stream. */
cudaError_t cudaMemset(void *p, int value, size_t bytes)
{
    emu_lock();
    cudaError_t r = emu_sticky();
    if (r == cudaSuccess)
        r = set_async(p, value, bytes, emu_legacy_stream());
    emu_unlock();
    return emu_err(r);
}
