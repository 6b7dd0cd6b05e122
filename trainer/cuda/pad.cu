/* Reflect padding (PyTorch "reflect") of NHWC activations. */
#include "launch.cuh"

/* x (B, H, W, C) -> y (B, H+2p, W+2p, C) */
__global__ void reflect_pad_kernel(const float *x, int B, int H, int W, int C, int p, float *y)
{
    int Hp = H + 2 * p, Wp = W + 2 * p;
    size_t n = (size_t)B * Hp * Wp * C;
    GRID_STRIDE(i, n)
    {
        int ch = (int)(i % C);
        size_t r = i / C;
        int xx = (int)(r % Wp), yy = (int)(r / Wp % Hp);
        size_t b = r / ((size_t)Wp * Hp);
        int sy = amdim_reflect_index(yy - p, H), sx = amdim_reflect_index(xx - p, W);
        y[i] = x[((b * H + sy) * W + sx) * C + ch];
    }
}

extern "C" int reflect_pad_forward_cuda(const amdim_cuda_ctx *c, const float *x, int B, int H, int W, int C, int p,
                                        float *y)
{
    size_t n = (size_t)B * (H + 2 * p) * (W + 2 * p) * C;
    reflect_pad_kernel<<<grid_for(n), AMDIM_THREADS, 0, c->stream>>>(x, B, H, W, C, p, y);
    return launch_check(c, "reflect_pad_forward_cuda");
}
