/* Reflect padding (PyTorch "reflect") of NHWC activations. */
#include "launch_internal.cuh"

/* x (B, H, W, C) -> y (B, H+2p, W+2p, C) */
template <typename T> static __global__ void reflect_pad_kernel(const void *x, int B, int H, int W, int C, int p, void *y)
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
        st<T>(y, i, ld<T>(x, ((b * H + sy) * W + sx) * C + ch));
    }
}

extern "C" int amdim_reflect_pad_forward_cuda(const amdim_cuda_ctx *c, const void *x, int B, int H, int W, int C, int p,
                                        void *y)
{
    size_t n = (size_t)B * (H + 2 * p) * (W + 2 * p) * C;
    LAUNCH_ACT(c, reflect_pad_kernel, grid_for(n), AMDIM_THREADS, x, B, H, W, C, p, y);
    note(c, "reflect pad", ((double)B * H * W * C + n) * act_es(c));
    return launch_check(c, "amdim_reflect_pad_forward_cuda");
}
