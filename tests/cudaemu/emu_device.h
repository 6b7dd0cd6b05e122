/* The emulated device's internals, shared by the emulated CUDA runtime
 * (emu_runtime.c, emu_stream.c, emu_graph.c, emu_memory.c), cuBLAS / cuBLASLt
 * (emu_cublas.c), cuDNN (emu_cudnn.c, emu_conv.c),
 * NCCL (emu_nccl.c) and the kernels' grid executor (emu_grid.c, reached
 * from emu_kernel.h). The emulated-device tests only.
 *
 * Device work is deferred as it is on a GPU: every kernel launch, copy,
 * clear and library call is a work item appended to its stream, and a
 * stream's items run - in order, on whichever host thread needs them -
 * only when something waits for them: a stream or event synchronisation,
 * a synchronous copy, another stream's wait on an event recorded after
 * them, cudaFree. Nothing else orders two streams, so work that reads a
 * buffer another stream writes without an event between them reads what
 * was there before (or after): a missing wait gives a wrong answer. A
 * stream in capture appends its items to a graph instead, and
 * cudaGraphLaunch appends the graph's items to a stream. */
#ifndef AMDIM_EMU_DEVICE_H
#define AMDIM_EMU_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A work item's body: runs once per execution (a graph's items run at
 * every launch); returns cudaSuccess or the error that becomes the
 * device's sticky error (a failed kernel: the context is lost, as on a
 * GPU). drop frees arg when the last reference goes. */
typedef cudaError_t (*emu_work_fn)(void *arg);
typedef void (*emu_drop_fn)(void *arg);

/* Appends work to stream s (or to the graph s is capturing). what names
 * it in error messages (a kernel's or library call's name). On failure
 * the work is dropped. */
cudaError_t emu_enqueue(cudaStream_t s, const char *what, emu_work_fn run, void *arg, emu_drop_fn drop);

/* Runs everything s has pending (a library call that is synchronous
 * with the host, such as cudnnFind*Ex). cudaErrorStreamCaptureUnsupported
 * (and the capture invalidated) when s is capturing. */
cudaError_t emu_stream_drain(cudaStream_t s);
/* Whether s is capturing (its work goes to a graph). */
int emu_stream_capturing(cudaStream_t s);
/* Marks the capture on s invalidated (an unsupported call was made in it). */
void emu_capture_invalidate(cudaStream_t s);
/* Whether s is a valid stream handle (NULL and cudaStreamLegacy included). */
int emu_stream_valid(cudaStream_t s);

/* Whether [p, p + bytes) lies inside one live device allocation. */
int emu_device_range(const void *p, size_t bytes);

/* The device's sticky error (cudaSuccess while the context is usable). */
cudaError_t emu_sticky(void);

/* A dry run (AMDIM_EMU_DRY=1 in the environment, read once): every call
 * is checked and queued as usual, but no device work runs - no kernel,
 * library arithmetic, clear, or copy into device memory - and device
 * memory is never touched, so a step at full size (tens of GB of
 * arenas, never backed) can be walked through on any machine for its
 * launch list (bench_roofline). Copies to the host still run (device
 * memory reads as zeros). */
int emu_dry(void);

/* The emulated device's lock (recursive): every API entry point holds it,
 * so host threads may share the device as with a real one. */
void emu_lock(void);
void emu_unlock(void);

/* A kernel launch (emu_kernel.h): validates the configuration as CUDA
 * does (at least one block, at most 1024 threads per block, block and
 * grid dimension limits) and enqueues the grid, whose every thread runs
 * thread(closure); the launch's error goes to cudaGetLastError. */
void amdim_emu_launch_kernel(const char *name, dim3 grid, dim3 block, cudaStream_t s, void (*thread)(void *),
                             void *closure, void (*drop)(void *));

/* The grid executor (emu_grid.c): runs every block of the grid, each
 * block's threads as fibers on the calling host thread with a real
 * barrier for __syncthreads. cudaErrorLaunchFailure (with the kernel,
 * block and cause on stderr) when a barrier is reached by only some of a
 * block's threads. */
cudaError_t emu_grid_run(const char *name, dim3 grid, dim3 block, void (*thread)(void *), void *closure);

#ifdef __cplusplus
}
#endif

#endif
