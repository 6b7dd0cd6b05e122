/* The residual shortcut: average pool (k, s, no padding) zero-padded in
 * channels, forward and its adjoint, over NHWC activations. Both gather
 * (one thread per written element): no atomics, fixed order. */
#include "launch_internal.cuh"

/* y (B, Ho, Wo, cout) += pool(x (B, H, W, cin)) on channels < cin */
template <typename T>
static __global__ void avgpool_forward_kernel(const void *x, int B, int H, int W, int cin, int k, int s, int cout, void *y)
{
    int Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
    size_t n = (size_t)B * Ho * Wo * cin;
    float inv = 1.0f / (float)(k * k);
    GRID_STRIDE(i, n)
    {
        int ch = (int)(i % cin);
        size_t r = i / cin;
        int ox = (int)(r % Wo), oy = (int)(r / Wo % Ho);
        size_t b = r / ((size_t)Wo * Ho);
        float acc = 0;
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++)
                acc += ld<T>(x, ((b * H + oy * s + ky) * W + ox * s + kx) * cin + ch);
        size_t o = ((b * Ho + oy) * Wo + ox) * cout + ch;
        st<T>(y, o, ld<T>(y, o) + acc * inv);
    }
}

/* dx (B, H, W, cin) += sum over the outputs that pooled (iy, ix) of dy / k^2 */
template <typename T>
static __global__ void avgpool_backward_kernel(const void *dy, int B, int H, int W, int cin, int k, int s, int cout, void *dx)
{
    int Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
    size_t n = (size_t)B * H * W * cin;
    float inv = 1.0f / (float)(k * k);
    GRID_STRIDE(i, n)
    {
        int ch = (int)(i % cin);
        size_t r = i / cin;
        int ix = (int)(r % W), iy = (int)(r / W % H);
        size_t b = r / ((size_t)W * H);
        /* outputs o with o*s <= i < o*s + k */
        int oy0 = iy - k + 1 > 0 ? (iy - k + 1 + s - 1) / s : 0, oy1 = iy / s < Ho - 1 ? iy / s : Ho - 1;
        int ox0 = ix - k + 1 > 0 ? (ix - k + 1 + s - 1) / s : 0, ox1 = ix / s < Wo - 1 ? ix / s : Wo - 1;
        float acc = ld<T>(dx, i);
        for (int oy = oy0; oy <= oy1; oy++)
            for (int ox = ox0; ox <= ox1; ox++)
                acc += ld<T>(dy, ((b * Ho + oy) * Wo + ox) * cout + ch) * inv;
        st<T>(dx, i, acc);
    }
}

extern "C" int amdim_avgpool_pad_forward_add_cuda(const amdim_cuda_ctx *c, const void *x, int B, int H, int W, int cin,
                                            int k, int s, int cout, void *y)
{
    size_t n = (size_t)B * ((H - k) / s + 1) * ((W - k) / s + 1) * cin;
    LAUNCH_ACT(c, avgpool_forward_kernel, grid_for(n), AMDIM_THREADS, x, B, H, W, cin, k, s, cout, y);
    note(c, "shortcut (pool + add)", ((double)B * H * W * cin + 2.0 * n) * act_es(c));
    return launch_check(c, "amdim_avgpool_pad_forward_add_cuda");
}

extern "C" int amdim_avgpool_pad_backward_add_cuda(const amdim_cuda_ctx *c, const void *dy, int B, int H, int W, int cin,
                                             int k, int s, int cout, void *dx)
{
    size_t n = (size_t)B * H * W * cin;
    LAUNCH_ACT(c, avgpool_backward_kernel, grid_for(n), AMDIM_THREADS, dy, B, H, W, cin, k, s, cout, dx);
    note(c, "shortcut backward", (2.0 * n + (double)B * ((H - k) / s + 1) * ((W - k) / s + 1) * cin) * act_es(c));
    return launch_check(c, "amdim_avgpool_pad_backward_add_cuda");
}
