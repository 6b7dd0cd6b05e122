/* What trainer/model/cuda/kernels/launch_internal.cuh includes instead of the CUDA device headers
 * when the kernels' .cu sources are compiled by the host C++ compiler for
 * the emulated device (AMDIM_CUDAEMU; tests/CMakeLists.txt): the CUDA
 * keywords, the built-in index variables and __syncthreads as calls into
 * the grid executor (emu_grid.c), and AMDIM_LAUNCH as a deferred launch
 * whose arguments are copied when it is made, as CUDA copies them. bf16
 * conversions are NVIDIA's own host implementations (cuda_bf16.h). The
 * kernels' source is compiled unchanged: a test on the emulated device
 * runs the code the GPU runs. */
#ifndef AMDIM_EMU_KERNEL_H
#define AMDIM_EMU_KERNEL_H

#ifndef __cplusplus
#error "emu_kernel.h is for the kernels' .cu sources compiled as C++"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <tuple>
#include <type_traits>
#include <utility>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "emu_device.h"

extern "C" {
void amdim_emu_syncthreads(void);
void amdim_emu_shared_fresh(void *p, size_t bytes);
uint3 amdim_emu_thread_idx(void);
uint3 amdim_emu_block_idx(void);
uint3 amdim_emu_block_dim(void);
uint3 amdim_emu_grid_dim(void);
}

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
/* One block runs at a time on a host thread: a static per host thread is
 * the block's shared memory. */
#define __shared__ static thread_local
/* ... which the block's first thread (thread 0 runs first) fills with 0xff
 * bytes, a NaN in every float and double: a read before the block's own
 * write cannot see the previous block's values (launch_internal.cuh) */
#define AMDIM_SHARED(type, name, dims) \
    static thread_local type name dims; \
    amdim_emu_shared_fresh(name, sizeof name)
#define __syncthreads() amdim_emu_syncthreads()
#define threadIdx (amdim_emu_thread_idx())
#define blockIdx (amdim_emu_block_idx())
#define blockDim (amdim_emu_block_dim())
#define gridDim (amdim_emu_grid_dim())

/* kernel<<<grid, block, 0, stream>>>(args): the arguments converted to the
 * kernel's parameter types now, the grid run when the stream gets to it. */
template <typename... P, typename... A>
static inline void amdim_emu_launch(const char *name, dim3 grid, dim3 block, cudaStream_t stream, void (*kernel)(P...),
                                    A &&...args)
{
    struct closure {
        void (*kernel)(P...);
        std::tuple<typename std::decay<P>::type...> args;
    };
    closure *c = new closure{kernel, std::tuple<typename std::decay<P>::type...>(std::forward<A>(args)...)};
    amdim_emu_launch_kernel(
        name, grid, block, stream, [](void *p) { std::apply(static_cast<closure *>(p)->kernel, static_cast<closure *>(p)->args); },
        c, [](void *p) { delete static_cast<closure *>(p); });
}

#define AMDIM_LAUNCH(kernel, grid, block, stream, ...) \
    amdim_emu_launch(#kernel, (grid), (block), (stream), kernel, __VA_ARGS__)

#endif
