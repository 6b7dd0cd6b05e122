/* Element-wise activations: ReLU forward / backward, bias (+ ReLU), add. */
#include "launch_internal.cuh"

template <typename T> static __global__ void relu_kernel(void *y, size_t n)
{
    GRID_STRIDE(i, n) st<T>(y, i, amdim_relu(ld<T>(y, i)));
}

template <typename T> static __global__ void relu_backward_kernel(const void *y, void *dy, size_t n)
{
    GRID_STRIDE(i, n) st<T>(dy, i, amdim_relu_grad(ld<T>(y, i), ld<T>(dy, i)));
}

/* y (N, C) += bias[c], then ReLU when relu */
template <typename T> static __global__ void bias_kernel(void *y, const float *bias, size_t n, int C, int relu)
{
    GRID_STRIDE(i, n)
    {
        float v = ld<T>(y, i) + bias[i % C];
        st<T>(y, i, relu ? amdim_relu(v) : v);
    }
}

template <typename T> static __global__ void add_kernel(void *y, const void *x, size_t n)
{
    GRID_STRIDE(i, n) st<T>(y, i, ld<T>(y, i) + ld<T>(x, i));
}

extern "C" int amdim_relu_forward_cuda(const amdim_cuda_ctx *c, void *y, size_t n)
{
    LAUNCH_ACT(c, relu_kernel, grid_for(n), AMDIM_THREADS, y, n);
    note(c, "relu", 2.0 * n * act_es(c));
    return launch_check(c, "amdim_relu_forward_cuda");
}

extern "C" int amdim_relu_backward_cuda(const amdim_cuda_ctx *c, const void *y, void *dy, size_t n)
{
    LAUNCH_ACT(c, relu_backward_kernel, grid_for(n), AMDIM_THREADS, y, dy, n);
    note(c, "relu backward", 3.0 * n * act_es(c));
    return launch_check(c, "amdim_relu_backward_cuda");
}

extern "C" int amdim_bias_relu_forward_cuda(const amdim_cuda_ctx *c, void *y, const float *bias, size_t rows, int C)
{
    size_t n = rows * C;
    LAUNCH_ACT(c, bias_kernel, grid_for(n), AMDIM_THREADS, y, bias, n, C, 1);
    note(c, "bias + relu", 2.0 * n * act_es(c) + 4.0 * C);
    return launch_check(c, "amdim_bias_relu_forward_cuda");
}

extern "C" int amdim_bias_add_cuda(const amdim_cuda_ctx *c, void *y, const float *bias, size_t rows, int C)
{
    size_t n = rows * C;
    LAUNCH_ACT(c, bias_kernel, grid_for(n), AMDIM_THREADS, y, bias, n, C, 0);
    note(c, "bias", 2.0 * n * act_es(c) + 4.0 * C);
    return launch_check(c, "amdim_bias_add_cuda");
}

extern "C" int amdim_add_cuda(const amdim_cuda_ctx *c, void *y, const void *x, size_t n)
{
    LAUNCH_ACT(c, add_kernel, grid_for(n), AMDIM_THREADS, y, x, n);
    note(c, "add", 3.0 * n * act_es(c));
    return launch_check(c, "amdim_add_cuda");
}
