/* What benchmarks report about the GPU (backend.h: amdim_cuda_probe,
 * amdim_cuda_memory): its name and memory, and the dense GEMM rates MFU is
 * measured against, taken in the same process as the figures they divide. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "backend_internal.h"
#include "elementwise_internal.h" /* amdim_bf16_bits */

/* 0, or the failure of a CUDA call as a status with its message. */
static int cuda_check(cudaError_t e, const char *name, char *err, size_t n)
{
    if (e == cudaSuccess)
        return AMDIM_OK;
    return amdim_fail(err, n, e == cudaErrorMemoryAllocation ? AMDIM_E_NOMEM : AMDIM_E_IO, "%s(): %s", name,
                      cudaGetErrorString(e));
}

/* n uniformly random values in [-1, 1) into the device buffer d, as
 * bfloat16 bits (bf16) or floats: tensor cores draw less power, and clock
 * higher, on constant or zero operands, which would flatter the rate. */
static int random_fill(cudaStream_t s, void *d, size_t n, int bf16, char *err, size_t en)
{
    size_t es = bf16 ? sizeof(uint16_t) : sizeof(float);
    void *h = malloc(n * es);
    if (!h)
        return amdim_fail(err, en, AMDIM_E_NOMEM, "out of memory for %zu random GEMM operands", n);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        float v = (float)(x >> 40) / 8388608.0f - 1.0f;
        if (bf16)
            ((uint16_t *)h)[i] = amdim_bf16_bits(v);
        else
            ((float *)h)[i] = v;
    }
    /* on the GEMM's stream, finished before h goes: a pageable cudaMemcpy may return
     * before its DMA ends, and orders nothing against a non-blocking stream */
    cudaError_t e = cudaMemcpyAsync(d, h, n * es, cudaMemcpyHostToDevice, s);
    cudaError_t e2 = cudaStreamSynchronize(s);
    free(h);
    if (e == cudaSuccess)
        e = e2;
    return e == cudaSuccess ? AMDIM_OK
                            : amdim_fail(err, en, AMDIM_E_IO, "cudaMemcpyAsync(random GEMM operands): %s",
                                         cudaGetErrorString(e));
}

/* Square C (N, N) fp32 = A (N, N) B (N, N) on random operands: bf16 inputs
 * with fp32 accumulation, or fp32 throughout (pedantic math: no TF32, as
 * the fp32 trainer). One warm-up call, then `reps` timed between two CUDA
 * events. */
static int gemm_rate(cublasHandle_t h, cudaStream_t s, int N, int bf16, int reps, double *tflops, char *err, size_t n)
{
    int st = AMDIM_OK;
    size_t in = bf16 ? sizeof(uint16_t) : sizeof(float);
    void *a = NULL, *b = NULL, *c = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    if ((st = cuda_check(cudaMalloc(&a, (size_t)N * N * in), "cudaMalloc", err, n)))
        goto done;
    if ((st = cuda_check(cudaMalloc(&b, (size_t)N * N * in), "cudaMalloc", err, n)))
        goto done;
    if ((st = cuda_check(cudaMalloc(&c, (size_t)N * N * sizeof(float)), "cudaMalloc", err, n)))
        goto done;
    if ((st = random_fill(s, a, (size_t)N * N, bf16, err, n)) || (st = random_fill(s, b, (size_t)N * N, bf16, err, n)))
        goto done;
    if ((st = cuda_check(cudaEventCreate(&e0), "cudaEventCreate", err, n)))
        goto done;
    if ((st = cuda_check(cudaEventCreate(&e1), "cudaEventCreate", err, n)))
        goto done;
    cublasStatus_t mm = cublasSetMathMode(h, bf16 ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH);
    if (mm != CUBLAS_STATUS_SUCCESS) {
        st = amdim_fail(err, n, AMDIM_E_IO, "cublasSetMathMode(): %s", cublasGetStatusString(mm));
        goto done;
    }
    cudaDataType_t t = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const float one = 1.0f, zero = 0.0f;
    for (int r = -1; r < reps; r++) {
        if (r == 0 && (st = cuda_check(cudaEventRecord(e0, s), "cudaEventRecord", err, n)))
            goto done;
        cublasStatus_t bs = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, N, N, N, &one, a, t, N, b, t, N, &zero, c,
                                         CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (bs != CUBLAS_STATUS_SUCCESS) {
            st = amdim_fail(err, n, AMDIM_E_IO, "cublasGemmEx(%s, %d^3): %s", bf16 ? "bf16" : "fp32", N,
                            cublasGetStatusString(bs));
            goto done;
        }
    }
    if ((st = cuda_check(cudaEventRecord(e1, s), "cudaEventRecord", err, n)))
        goto done;
    if ((st = cuda_check(cudaEventSynchronize(e1), "cudaEventSynchronize", err, n)))
        goto done;
    float ms = 0;
    if ((st = cuda_check(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime", err, n)))
        goto done;
    *tflops = ms > 0 ? 2.0 * N * N * (double)N * reps / (ms * 1e-3) / 1e12 : 0;
done:
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    return st;
}

int amdim_cuda_probe(int gemm_n, char *name, size_t name_n, size_t *memory, double *bf16_tflops,
                     double *fp32_tflops, char *err, size_t n)
{
    int st = AMDIM_OK, dev = 0;
    cudaStream_t s = NULL;
    cublasHandle_t h = NULL;
    struct cudaDeviceProp p;
    if ((st = cuda_check(cudaGetDevice(&dev), "cudaGetDevice", err, n)))
        goto done;
    if ((st = cuda_check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties", err, n)))
        goto done;
    snprintf(name, name_n, "%s (sm_%d%d, %d SMs)", p.name, p.major, p.minor, p.multiProcessorCount);
    *memory = p.totalGlobalMem;
    if ((st = cuda_check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags", err, n)))
        goto done;
    cublasStatus_t bs = cublasCreate(&h);
    if (bs == CUBLAS_STATUS_SUCCESS)
        bs = cublasSetStream(h, s);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        st = amdim_fail(err, n, AMDIM_E_IO, "cublasCreate(): %s", cublasGetStatusString(bs));
        goto done;
    }
    if ((st = gemm_rate(h, s, gemm_n, 1, 20, bf16_tflops, err, n)))
        goto done;
    st = gemm_rate(h, s, gemm_n, 0, 5, fp32_tflops, err, n);
done:
    if (h)
        cublasDestroy(h);
    if (s)
        cudaStreamDestroy(s);
    return st;
}

int amdim_cuda_memory(size_t *used, size_t *total, char *err, size_t n)
{
    size_t free_b = 0, total_b = 0;
    cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
    if (e != cudaSuccess)
        return amdim_fail(err, n, AMDIM_E_IO, "cudaMemGetInfo(): %s", cudaGetErrorString(e));
    *used = total_b - free_b;
    *total = total_b;
    return AMDIM_OK;
}
