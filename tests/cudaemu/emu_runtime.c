/* CPU emulation of the CUDA runtime calls the CUDA backend and its tests
 * make (the emulated-device tests only; never in a real build). One
 * device, an sm_90 part; "device memory" is host memory. What it emulates
 * so that the tests see what a GPU would show (emu_device.h), by file:
 *  - emu_stream.c: streams that run their work in order and only when
 *    something waits for it, and events.
 *  - emu_graph.c: stream capture (CUDA graphs) and graph launches.
 *  - emu_memory.c: allocations, page-locked registrations, and copies and
 *    clears as documented.
 *  - This file: the lock, errors, kernel launches and the device. A failed
 *    kernel (emu_grid.c) is a sticky error: every later call returns it,
 *    as a lost CUDA context does.
 * Host threads may share the device: every entry point holds one lock.
 * What the files share is in emu_runtime_internal.h. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_runtime_internal.h"

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

void emu_set_sticky(cudaError_t e) { sticky = e; }

cudaError_t emu_err(cudaError_t e)
{
    if (e != cudaSuccess)
        last_error = e;
    return e;
}

/* Under the lock: work running on another host thread sets the sticky error. */
cudaError_t cudaGetLastError(void)
{
    emu_lock();
    cudaError_t e = sticky != cudaSuccess ? sticky : last_error;
    last_error = cudaSuccess;
    emu_unlock();
    return e;
}

cudaError_t cudaPeekAtLastError(void)
{
    emu_lock();
    cudaError_t e = sticky != cudaSuccess ? sticky : last_error;
    emu_unlock();
    return e;
}

int emu_dry(void)
{
    static int dry = -1;
    if (dry < 0) {
        const char *v = getenv("AMDIM_EMU_DRY");
        dry = v && strcmp(v, "1") == 0;
    }
    return dry;
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
        emu_err(cudaErrorInvalidConfiguration);
        return;
    }
    launch *l = malloc(sizeof *l);
    if (!l) {
        drop(closure);
        emu_err(cudaErrorMemoryAllocation);
        return;
    }
    *l = (launch){name, grid, block, thread, closure, drop};
    emu_enqueue(s, name, launch_run, l, launch_drop); /* sets the last error on failure */
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
        return emu_err(cudaErrorInvalidValue);
    *count = have_device() ? 1 : 0;
    return *count ? cudaSuccess : emu_err(cudaErrorNoDevice);
}

cudaError_t cudaSetDevice(int device)
{
    if (device != 0 || !have_device())
        return emu_err(cudaErrorInvalidDevice);
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
        return emu_err(cudaErrorInvalidDevice);
    switch (attr) {
    case cudaDevAttrComputeCapabilityMajor:
        *value = 9; /* an sm_90 part, as the build targets */
        break;
    case cudaDevAttrMultiProcessorCount: *value = 1; break;
    default: *value = 0;
    }
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    if (device != 0)
        return emu_err(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    strncpy(prop->name, "amdim CPU emulation of a CUDA device", sizeof prop->name - 1);
    prop->totalGlobalMem = (size_t)16 << 30;
    prop->major = 9;
    prop->multiProcessorCount = 1;
    return cudaSuccess;
}

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
#define NAME(x) \
    case x: return #x
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
    default: return "cudaError (emulated)";
    }
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureIsolation:
        return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return cudaGetErrorName(e);
    }
}
