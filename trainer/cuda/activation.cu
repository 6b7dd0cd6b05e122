/* Element-wise activations: ReLU forward / backward, bias (+ ReLU), add. */
#include "launch.cuh"

__global__ void relu_kernel(float *y, size_t n)
{
    GRID_STRIDE(i, n) y[i] = amdim_relu(y[i]);
}

__global__ void relu_backward_kernel(const float *y, float *dy, size_t n)
{
    GRID_STRIDE(i, n) dy[i] = amdim_relu_grad(y[i], dy[i]);
}

/* y (N, C) += bias[c], then ReLU when relu */
__global__ void bias_kernel(float *y, const float *bias, size_t n, int C, int relu)
{
    GRID_STRIDE(i, n)
    {
        float v = y[i] + bias[i % C];
        y[i] = relu ? amdim_relu(v) : v;
    }
}

__global__ void add_kernel(float *y, const float *x, size_t n)
{
    GRID_STRIDE(i, n) y[i] += x[i];
}

extern "C" int relu_forward_cuda(const amdim_cuda_ctx *c, float *y, size_t n)
{
    relu_kernel<<<grid_for(n), AMDIM_THREADS, 0, c->stream>>>(y, n);
    return launch_check(c, "relu_forward_cuda");
}

extern "C" int relu_backward_cuda(const amdim_cuda_ctx *c, const float *y, float *dy, size_t n)
{
    relu_backward_kernel<<<grid_for(n), AMDIM_THREADS, 0, c->stream>>>(y, dy, n);
    return launch_check(c, "relu_backward_cuda");
}

extern "C" int bias_relu_forward_cuda(const amdim_cuda_ctx *c, float *y, const float *bias, size_t rows, int C)
{
    size_t n = rows * C;
    bias_kernel<<<grid_for(n), AMDIM_THREADS, 0, c->stream>>>(y, bias, n, C, 1);
    return launch_check(c, "bias_relu_forward_cuda");
}

extern "C" int bias_add_cuda(const amdim_cuda_ctx *c, float *y, const float *bias, size_t rows, int C)
{
    size_t n = rows * C;
    bias_kernel<<<grid_for(n), AMDIM_THREADS, 0, c->stream>>>(y, bias, n, C, 0);
    return launch_check(c, "bias_add_cuda");
}

extern "C" int add_cuda(const amdim_cuda_ctx *c, float *y, const float *x, size_t n)
{
    add_kernel<<<grid_for(n), AMDIM_THREADS, 0, c->stream>>>(y, x, n);
    return launch_check(c, "add_cuda");
}
