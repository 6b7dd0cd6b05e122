/* Private to the trainer/cuda kernel files: launches and their checks,
 * grid sizes and the deterministic block reductions the kernels share.
 *
 * Every launch goes through AMDIM_LAUNCH(kernel, grid, block, stream,
 * args...): kernel<<<grid, block, 0, stream>>>(args) under nvcc. The same
 * sources compile a second time, with the host C++ compiler, for the
 * emulated device of the tests (AMDIM_CUDAEMU, tests/cudaemu/emu_kernel.h:
 * the CUDA keywords and built-in variables, and a deferred launch whose
 * blocks run as fibers with a real __syncthreads). */
#ifndef AMDIM_CUDA_LAUNCH_CUH
#define AMDIM_CUDA_LAUNCH_CUH

#include <stdio.h>

#ifdef AMDIM_CUDAEMU
#include "emu_kernel.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#define AMDIM_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
/* A block's shared array: AMDIM_SHARED(double, sh, [2][8][32]) at the top
 * of a kernel (before any barrier). On the emulated device each block
 * finds it filled with NaN bytes, as a block on the GPU finds whatever an
 * earlier block left: a read before the block's own write shows. */
#define AMDIM_SHARED(type, name, dims) __shared__ type name dims
#endif

#include "kernels_internal.h"

/* After a launch: 0, or AMDIM_CUDA_E_DEVICE with "op(): CUDA message".
 * The launch macros clear the thread's last error first (an earlier
 * library call may have left one, which that call's own status reported),
 * so the error read here is the launch's. */
static inline int launch_check(const amdim_cuda_ctx *c, const char *op)
{
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess)
        return 0;
    if (c->err && c->errn)
        snprintf(c->err, c->errn, "%s(): %s (%s)%s", op, cudaGetErrorString(e), cudaGetErrorName(e),
                 amdim_cuda_async_hint(e));
    return AMDIM_CUDA_E_DEVICE;
}

/* One kernel of op, moving `bytes` to and from device memory, into the
 * launch list (kernels_internal.h: amdim_cuda_ctx.trace). */
static inline void note(const amdim_cuda_ctx *c, const char *op, double bytes)
{
    if (c->trace)
        c->trace(c->trace_arg, op, 1, bytes, 0.0);
}

/* The activation type's size. */
static inline double act_es(const amdim_cuda_ctx *c) { return c->bf16 ? 2.0 : 4.0; }

enum { AMDIM_THREADS = 256 };

/* Blocks for n elements with a grid-stride loop (at most 65535 * 16). */
static inline unsigned grid_for(size_t n)
{
    size_t b = (n + AMDIM_THREADS - 1) / AMDIM_THREADS;
    return (unsigned)(b < 1 ? 1 : b > (size_t)1 << 20 ? (size_t)1 << 20 : b);
}

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* Activation storage (kernels.h: amdim_cuda_ctx.bf16): a kernel over
 * activations is a template on T = float or bf16 that takes them as void *
 * and reads / writes them through ld<T> / st<T>; arithmetic stays float
 * or double. Stores round to nearest even (amdim_bf16_bits on the CPU). */
typedef __nv_bfloat16 bf16_t;

template <typename T> static __device__ inline float ld(const void *p, size_t i);
template <> __device__ inline float ld<float>(const void *p, size_t i) { return ((const float *)p)[i]; }
template <> __device__ inline float ld<bf16_t>(const void *p, size_t i)
{
    return __bfloat162float(((const bf16_t *)p)[i]);
}

template <typename T> static __device__ inline void st(void *p, size_t i, float v);
template <> __device__ inline void st<float>(void *p, size_t i, float v) { ((float *)p)[i] = v; }
template <> __device__ inline void st<bf16_t>(void *p, size_t i, float v)
{
    ((bf16_t *)p)[i] = __float2bfloat16_rn(v);
}

/* 16 bytes of activations, 4 floats or 8 bf16: what the element-wise
 * kernels load and store at once (one 128-bit access) where their buffers
 * start on 16 bytes and the channel counts they index by are multiples of
 * AMDIM_PACK(T) (vec_ok); lane k read and written as float. */
template <typename T> struct alignas(16) pack16 {
    T v[16 / sizeof(T)];
};
#define AMDIM_PACK(T) ((int)(16 / sizeof(T)))
template <typename T> static __device__ inline pack16<T> ldv(const void *p, size_t i)
{
    return ((const pack16<T> *)p)[i];
}
template <typename T> static __device__ inline void stv(void *p, size_t i, const pack16<T> &x)
{
    ((pack16<T> *)p)[i] = x;
}
template <typename T> static __device__ inline float lane(const pack16<T> &x, int k) { return ld<T>(x.v, (size_t)k); }
template <typename T> static __device__ inline void set_lane(pack16<T> &x, int k, float f) { st<T>(x.v, (size_t)k, f); }

/* 1 when every pointer given starts on 16 bytes (NULL ends the list). */
static inline int aligned16(const void *p, const void *q = NULL, const void *r = NULL)
{
    return !((uintptr_t)p & 15) && !((uintptr_t)q & 15) && !((uintptr_t)r & 15);
}

/* A grid-stride loop over n items of which this launch's threads take
 * item i; `first` offsets the items (the scalar tail after the packs). */
#define GRID_STRIDE_FROM(i, first, n)                                                        \
    for (size_t i = (first) + (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);          \
         i += (size_t)gridDim.x * blockDim.x)

/* kernel<<<grid, block, 0, c->stream>>>(args), the last error cleared first. */
#define LAUNCH(c, kernel, grid, block, ...)                                  \
    do {                                                                     \
        (void)cudaGetLastError();                                            \
        AMDIM_LAUNCH(kernel, (grid), (block), (c)->stream, __VA_ARGS__);     \
    } while (0)

/* LAUNCH of kernel<T> with T the context's activation type. */
#define LAUNCH_ACT(c, kernel, grid, block, ...)                              \
    do {                                                                     \
        if ((c)->bf16)                                                       \
            LAUNCH(c, kernel<bf16_t>, grid, block, __VA_ARGS__);             \
        else                                                                 \
            LAUNCH(c, kernel<float>, grid, block, __VA_ARGS__);              \
    } while (0)

/* Sum / max over the block (blockDim.x a power of two <= 1024) by a fixed
 * tree: the same result on every run. All threads get the value. */
static __device__ inline double block_sum(double v, double *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s)
            sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

static __device__ inline double block_max(double v, double *sh)
{
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s && sh[threadIdx.x + s] > sh[threadIdx.x])
            sh[threadIdx.x] = sh[threadIdx.x + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

#endif
