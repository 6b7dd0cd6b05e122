/* The emulated device itself (label cudaemu; tests/cudaemu): that it
 * shows what a GPU would, so that the backend's tests on it mean
 * something. Compiled by the host C++ compiler against tests/cudaemu like
 * the kernels (AMDIM_CUDAEMU). Checks:
 *  - streams: work runs only when something waits for it; a kernel on
 *    stream B that reads what stream A writes sees A's result only after
 *    an event wait (without one it reads the old values); the legacy
 *    stream does not order non-blocking streams; a pinned device-to-host
 *    copy lands at the stream's synchronisation, a pageable one before
 *    the call returns; a pageable host-to-device copy reads its source
 *    when the call is made; cudaFree waits for the device;
 *  - capture: a graph replays its kernels with the arguments they were
 *    recorded with, reading device memory at replay; synchronisation,
 *    cudaMalloc, pageable copies and events of work outside the capture
 *    are refused and invalidate it;
 *  - kernels: a zero-block grid and 1025 threads are launch errors; a
 *    __syncthreads that only some threads of a block reach is a launch
 *    failure that sticks; a copy outside an allocation is refused;
 *  - cuDNN: Find reports several deterministic algorithms whose results
 *    differ in the last bits, and the non-deterministic ones as such (their
 *    results differ from call to call); two handles time them differently;
 *    bf16 NHWC with a channel count that is not a multiple of 8 has no
 *    algorithm. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cudnn.h>

#include "emu_kernel.h"

static int failures;
#define CHECK(c, ...)                                                                                         \
    do {                                                                                                      \
        if (!(c)) {                                                                                           \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #c);                              \
            fprintf(stderr, __VA_ARGS__);                                                                     \
            fprintf(stderr, "\n");                                                                            \
            failures++;                                                                                       \
        }                                                                                                     \
    } while (0)
#define OK(call) CHECK((call) == cudaSuccess, "%s", cudaGetErrorName(cudaGetLastError()))

__global__ void fill_kernel(float *y, size_t n, float v)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = v;
}

__global__ void copy_kernel(const float *x, float *y, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = x[i];
}

/* thread 0 skips the barrier: undefined behaviour on a GPU */
__global__ void divergent_kernel(float *y)
{
    if (threadIdx.x > 0)
        __syncthreads();
    y[threadIdx.x] = 1;
}

static float *dev(size_t n)
{
    float *p = NULL;
    CHECK(cudaMalloc((void **)&p, n * sizeof *p) == cudaSuccess, "cudaMalloc");
    return p;
}

static float first(const float *d)
{
    float v = -1;
    OK(cudaMemcpy(&v, d, sizeof v, cudaMemcpyDeviceToHost));
    return v;
}

static void streams(void)
{
    enum { N = 1024 };
    cudaStream_t a, b;
    cudaEvent_t e;
    OK(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking));
    OK(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking));
    OK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    float *x = dev(N), *y = dev(N);
    AMDIM_LAUNCH(fill_kernel, 4, 256, a, x, (size_t)N, 1.0f);
    AMDIM_LAUNCH(fill_kernel, 4, 256, b, y, (size_t)N, 0.0f);
    OK(cudaStreamSynchronize(a));
    OK(cudaStreamSynchronize(b));
    /* A writes 2, B copies x to y without waiting: B reads the old 1 */
    AMDIM_LAUNCH(fill_kernel, 4, 256, a, x, (size_t)N, 2.0f);
    AMDIM_LAUNCH(copy_kernel, 4, 256, b, x, y, (size_t)N);
    OK(cudaStreamSynchronize(b));
    CHECK(first(y) == 1.0f, "without a wait B read %g (expected the old 1)", first(y));
    OK(cudaStreamSynchronize(a));
    /* with the event between them: 3 */
    AMDIM_LAUNCH(fill_kernel, 4, 256, a, x, (size_t)N, 3.0f);
    OK(cudaEventRecord(e, a));
    OK(cudaStreamWaitEvent(b, e, 0));
    AMDIM_LAUNCH(copy_kernel, 4, 256, b, x, y, (size_t)N);
    OK(cudaStreamSynchronize(b));
    CHECK(first(y) == 3.0f, "after the wait B read %g (expected 3)", first(y));
    /* the legacy stream's synchronous copy does not wait for a non-blocking stream */
    AMDIM_LAUNCH(fill_kernel, 4, 256, a, x, (size_t)N, 4.0f);
    CHECK(first(x) == 3.0f, "cudaMemcpy saw %g before stream a ran (expected 3)", first(x));
    OK(cudaStreamSynchronize(a));
    CHECK(first(x) == 4.0f, "after synchronising a: %g", first(x));
    /* pinned vs pageable device-to-host */
    float *pinned = (float *)aligned_alloc(4096, 4096), pageable = -1;
    OK(cudaHostRegister(pinned, 4096, cudaHostRegisterDefault));
    pinned[0] = -1;
    OK(cudaMemcpyAsync(pinned, x, sizeof(float), cudaMemcpyDeviceToHost, a));
    CHECK(pinned[0] == -1, "a pinned copy landed before its stream ran: %g", pinned[0]);
    OK(cudaMemcpyAsync(&pageable, x, sizeof(float), cudaMemcpyDeviceToHost, b));
    CHECK(pageable == 4.0f, "a pageable copy had not landed when the call returned: %g", pageable);
    OK(cudaStreamSynchronize(a));
    CHECK(pinned[0] == 4.0f, "a pinned copy after its stream's synchronisation: %g", pinned[0]);
    /* pageable host-to-device: the source as it was at the call */
    float src = 7;
    OK(cudaMemcpyAsync(x, &src, sizeof src, cudaMemcpyHostToDevice, a));
    src = 8;
    OK(cudaStreamSynchronize(a));
    CHECK(first(x) == 7.0f, "a pageable copy read its source late: %g", first(x));
    /* pinned host-to-device: read when it runs */
    pinned[0] = 9;
    OK(cudaMemcpyAsync(x, pinned, sizeof(float), cudaMemcpyHostToDevice, a));
    pinned[0] = 10;
    OK(cudaStreamSynchronize(a));
    CHECK(first(x) == 10.0f, "a pinned copy read %g (expected the value when it ran, 10)", first(x));
    OK(cudaHostUnregister(pinned));
    free(pinned);
    /* cudaFree waits for work on the buffer */
    float *z = dev(N);
    AMDIM_LAUNCH(fill_kernel, 4, 256, a, z, (size_t)N, 5.0f);
    OK(cudaFree(z));
    /* a copy past an allocation's end is refused */
    CHECK(cudaMemcpyAsync(y, x, (N + 64) * sizeof(float), cudaMemcpyDeviceToDevice, a) == cudaErrorInvalidValue,
          "a copy past the end of an allocation");
    (void)cudaGetLastError();
    OK(cudaFree(x));
    OK(cudaFree(y));
    OK(cudaEventDestroy(e));
    OK(cudaStreamDestroy(a));
    OK(cudaStreamDestroy(b));
}

static void capture(void)
{
    enum { N = 512 };
    cudaStream_t s, t;
    OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    OK(cudaStreamCreateWithFlags(&t, cudaStreamNonBlocking));
    float *x = dev(N), *y = dev(N);
    float v = 1;
    cudaGraph_t g;
    cudaGraphExec_t ex;
    OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    AMDIM_LAUNCH(fill_kernel, 2, 256, s, x, (size_t)N, v);
    AMDIM_LAUNCH(copy_kernel, 2, 256, s, x, y, (size_t)N);
    OK(cudaStreamEndCapture(s, &g));
    OK(cudaGraphInstantiate(&ex, g, 0));
    CHECK(first(y) != 1.0f, "captured work ran during the capture");
    v = 2; /* the graph keeps the value it recorded */
    OK(cudaGraphLaunch(ex, s));
    OK(cudaStreamSynchronize(s));
    CHECK(first(y) == 1.0f, "replay: %g (expected the recorded 1)", first(y));
    OK(cudaGraphExecDestroy(ex));
    OK(cudaGraphDestroy(g));
    /* refused in a capture, which is then invalidated */
    struct {
        const char *what;
        int which;
    } bad[] = {{"cudaStreamSynchronize", 0}, {"cudaMalloc", 1}, {"a pageable copy", 2}, {"cudaDeviceSynchronize", 3},
               {"a wait on work outside the capture", 4}};
    cudaEvent_t outside;
    OK(cudaEventCreate(&outside));
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        OK(cudaEventRecord(outside, t));
        OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
        AMDIM_LAUNCH(fill_kernel, 2, 256, s, x, (size_t)N, 3.0f);
        cudaError_t e = cudaSuccess;
        void *p = NULL;
        float h = 0;
        switch (bad[k].which) {
        case 0: e = cudaStreamSynchronize(s); break;
        case 1: e = cudaMalloc(&p, 256); break;
        case 2: e = cudaMemcpyAsync(x, &h, sizeof h, cudaMemcpyHostToDevice, s); break;
        case 3: e = cudaDeviceSynchronize(); break;
        case 4: e = cudaStreamWaitEvent(s, outside, 0); break;
        }
        CHECK(e != cudaSuccess, "%s during a capture was accepted", bad[k].what);
        cudaError_t end = cudaStreamEndCapture(s, &g);
        CHECK(end == cudaErrorStreamCaptureInvalidated && g == NULL, "%s: cudaStreamEndCapture said %s", bad[k].what,
              cudaGetErrorName(end));
        (void)cudaGetLastError();
    }
    OK(cudaEventDestroy(outside));
    OK(cudaFree(x));
    OK(cudaFree(y));
    OK(cudaStreamDestroy(s));
    OK(cudaStreamDestroy(t));
}

static void launches(void)
{
    float *y = dev(1024);
    (void)cudaGetLastError();
    AMDIM_LAUNCH(fill_kernel, 0, 256, (cudaStream_t)0, y, (size_t)1, 1.0f);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "a grid of 0 blocks");
    AMDIM_LAUNCH(fill_kernel, 1, 1025, (cudaStream_t)0, y, (size_t)1, 1.0f);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "1025 threads per block");
    OK(cudaDeviceSynchronize());
    /* last: a failed kernel loses the context for good */
    AMDIM_LAUNCH(divergent_kernel, 1, 64, (cudaStream_t)0, y);
    CHECK(cudaGetLastError() == cudaSuccess, "the divergent kernel's launch itself is valid");
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure, "a __syncthreads only some threads reach");
    CHECK(cudaMemset(y, 0, 4) == cudaErrorLaunchFailure, "the failure sticks");
}

/* A convolution (NHWC fp32 x (1, 8, 8, 16), w (8, 3, 3, 16)) by each algorithm Find reports. */
static void cudnn(void)
{
    cudnnHandle_t h1, h2;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    CHECK(cudnnCreate(&h1) == CUDNN_STATUS_SUCCESS && cudnnCreate(&h2) == CUDNN_STATUS_SUCCESS, "cudnnCreate");
    cudnnCreateTensorDescriptor(&xd), cudnnCreateTensorDescriptor(&yd);
    cudnnCreateFilterDescriptor(&wd), cudnnCreateConvolutionDescriptor(&cd);
    int C = 16, K = 8;
    cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, 2, C, 8, 8);
    cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, 2, K, 6, 6);
    cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, K, C, 3, 3);
    cudnnSetConvolution2dDescriptor(cd, 0, 0, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT);
    cudnnSetConvolutionMathType(cd, CUDNN_FMA_MATH);
    size_t nx = 2 * 8 * 8 * C, nw = (size_t)K * 9 * C, ny = 2 * 6 * 6 * K, ws_bytes = (size_t)256 << 20;
    float *hx = (float *)malloc(nx * 4), *hw = (float *)malloc(nw * 4), *hy = (float *)malloc(ny * 4),
          *hy0 = (float *)malloc(ny * 4);
    unsigned r = 1;
    for (size_t i = 0; i < nx; i++)
        hx[i] = (float)((r = r * 1103515245u + 12345u) >> 8) / 16777216.0f - 0.5f;
    for (size_t i = 0; i < nw; i++)
        hw[i] = (float)((r = r * 1103515245u + 12345u) >> 8) / 16777216.0f - 0.5f;
    float *x = dev(nx), *w = dev(nw), *y = dev(ny), *dx = dev(nx), *dw = dev(nw);
    void *ws = NULL;
    OK(cudaMalloc(&ws, ws_bytes));
    OK(cudaMemcpy(x, hx, nx * 4, cudaMemcpyHostToDevice));
    OK(cudaMemcpy(w, hw, nw * 4, cudaMemcpyHostToDevice));
    cudnnConvolutionFwdAlgoPerf_t p1[8], p2[8];
    int n1 = 0, n2 = 0, det = 0, differ = 0, order_differs = 0;
    CHECK(cudnnFindConvolutionForwardAlgorithmEx(h1, xd, x, wd, w, cd, yd, y, 8, &n1, p1, ws, ws_bytes) ==
              CUDNN_STATUS_SUCCESS,
          "Find");
    CHECK(cudnnFindConvolutionForwardAlgorithmEx(h2, xd, x, wd, w, cd, yd, y, 8, &n2, p2, ws, ws_bytes) ==
              CUDNN_STATUS_SUCCESS,
          "Find");
    float one = 1, zero = 0;
    for (int i = 0; i < n1; i++) {
        if (p1[i].status != CUDNN_STATUS_SUCCESS || p1[i].determinism != CUDNN_DETERMINISTIC)
            continue;
        CHECK(cudnnConvolutionForward(h1, &one, xd, x, wd, w, cd, p1[i].algo, ws, ws_bytes, &zero, yd, y) ==
                  CUDNN_STATUS_SUCCESS,
              "algorithm %d", p1[i].algo);
        OK(cudaMemcpy(det ? hy : hy0, y, ny * 4, cudaMemcpyDeviceToHost));
        if (det++)
            differ += memcmp(hy, hy0, ny * 4) != 0;
    }
    for (int i = 0; i < n1; i++) /* the same algorithm measured on the two handles */
        for (int j = 0; j < n2; j++)
            if (p1[i].algo == p2[j].algo && p1[i].status == CUDNN_STATUS_SUCCESS)
                order_differs |= p1[i].time != p2[j].time;
    CHECK(order_differs, "two handles measured every algorithm in the same time");
    CHECK(det >= 2 && differ >= 1, "%d deterministic forward algorithms, %d with results unlike the first", det, differ);
    printf("cuDNN forward: %d deterministic algorithms, %d rounding unlike the first; handle 1 ranks %d %d %d, handle 2 "
           "%d %d %d\n",
           det, differ, p1[0].algo, p1[1].algo, p1[2].algo, p2[0].algo, p2[1].algo, p2[2].algo);
    /* the non-deterministic backward-filter algorithm 0: two calls, two results */
    float *hdw1 = (float *)malloc(nw * 4), *hdw2 = (float *)malloc(nw * 4);
    for (int k = 0; k < 2; k++) {
        CHECK(cudnnConvolutionBackwardFilter(h1, &one, xd, x, yd, y, cd, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, ws,
                                             ws_bytes, &zero, wd, dw) == CUDNN_STATUS_SUCCESS,
              "backward filter, algorithm 0");
        OK(cudaMemcpy(k ? hdw2 : hdw1, dw, nw * 4, cudaMemcpyDeviceToHost));
    }
    CHECK(memcmp(hdw1, hdw2, nw * 4) != 0, "BWD_FILTER_ALGO_0 (atomics) gave the same bits twice");
    /* bf16 NHWC with 4 output channels: no algorithm */
    cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, 2, C, 8, 8);
    cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, 2, 4, 6, 6);
    cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, 4, C, 3, 3);
    cudnnSetConvolutionMathType(cd, CUDNN_TENSOR_OP_MATH);
    int ok = 0;
    CHECK(cudnnFindConvolutionForwardAlgorithmEx(h1, xd, x, wd, w, cd, yd, y, 8, &n1, p1, ws, ws_bytes) ==
              CUDNN_STATUS_SUCCESS,
          "Find (bf16)");
    for (int i = 0; i < n1; i++)
        ok += p1[i].status == CUDNN_STATUS_SUCCESS;
    CHECK(ok == 0, "bf16 with 4 output channels: %d algorithms ran", ok);
    free(hx), free(hw), free(hy), free(hy0), free(hdw1), free(hdw2);
    cudaFree(x), cudaFree(w), cudaFree(y), cudaFree(dx), cudaFree(dw), cudaFree(ws);
    cudnnDestroyTensorDescriptor(xd), cudnnDestroyTensorDescriptor(yd);
    cudnnDestroyFilterDescriptor(wd), cudnnDestroyConvolutionDescriptor(cd);
    cudnnDestroy(h1), cudnnDestroy(h2);
}

int main(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1) {
        printf("test_cudaemu_device: skipped: no emulated device (the CPU has no FMA)\n");
        return 77;
    }
    streams();
    capture();
    cudnn();
    launches();
    if (failures)
        fprintf(stderr, "test_cudaemu_device: %d checks failed\n", failures);
    else
        printf("test_cudaemu_device: ok\n");
    return failures ? 1 : 0;
}
