/* The residual shortcut: average pool (k, s, no padding) zero-padded in
 * channels, forward and its adjoint, over NHWC activations. Both gather
 * (one thread per written element): no atomics, fixed order. */
#include "launch_internal.cuh"

/* y (B, Ho, Wo, cout) += pool(x (B, H, W, cin)) on channels < cin; one
 * thread per V consecutive channels of an output pixel (V = 1, or a pack
 * when vec: cin and cout multiples of it, x and y 16-byte aligned). */
template <typename T, int V>
static __device__ void avgpool_forward(const void *x, int B, int H, int W, int cin, int k, int s, int cout, void *y)
{
    int Ho = (H - k) / s + 1, Wo = (W - k) / s + 1, cp = cin / V;
    size_t n = (size_t)B * Ho * Wo * cp;
    float inv = 1.0f / (float)(k * k);
    GRID_STRIDE(i, n)
    {
        int ch = (int)(i % cp) * V;
        size_t r = i / cp;
        int ox = (int)(r % Wo), oy = (int)(r / Wo % Ho);
        size_t b = r / ((size_t)Wo * Ho);
        float acc[V];
        for (int j = 0; j < V; j++)
            acc[j] = 0;
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                size_t at = ((b * H + oy * s + ky) * W + ox * s + kx) * cin + ch;
                if (V == 1) {
                    acc[0] += ld<T>(x, at);
                } else {
                    pack16<T> a = ldv<T>(x, at / V);
                    for (int j = 0; j < V; j++)
                        acc[j] += lane(a, j);
                }
            }
        size_t o = ((b * Ho + oy) * Wo + ox) * cout + ch;
        if (V == 1) {
            st<T>(y, o, ld<T>(y, o) + acc[0] * inv);
        } else {
            pack16<T> a = ldv<T>(y, o / V);
            for (int j = 0; j < V; j++)
                set_lane(a, j, lane(a, j) + acc[j] * inv);
            stv(y, o / V, a);
        }
    }
}

/* dx (B, H, W, cin) += sum over the outputs that pooled (iy, ix) of dy / k^2;
 * V channels per thread as in the forward. */
template <typename T, int V>
static __device__ void avgpool_backward(const void *dy, int B, int H, int W, int cin, int k, int s, int cout, void *dx)
{
    int Ho = (H - k) / s + 1, Wo = (W - k) / s + 1, cp = cin / V;
    size_t n = (size_t)B * H * W * cp;
    float inv = 1.0f / (float)(k * k);
    GRID_STRIDE(i, n)
    {
        int ch = (int)(i % cp) * V;
        size_t r = i / cp;
        int ix = (int)(r % W), iy = (int)(r / W % H);
        size_t b = r / ((size_t)W * H), at = r * cin + ch;
        /* outputs o with o*s <= i < o*s + k */
        int oy0 = iy - k + 1 > 0 ? (iy - k + 1 + s - 1) / s : 0, oy1 = iy / s < Ho - 1 ? iy / s : Ho - 1;
        int ox0 = ix - k + 1 > 0 ? (ix - k + 1 + s - 1) / s : 0, ox1 = ix / s < Wo - 1 ? ix / s : Wo - 1;
        float acc[V];
        pack16<T> d;
        if (V == 1) {
            acc[0] = ld<T>(dx, at);
        } else {
            d = ldv<T>(dx, at / V);
            for (int j = 0; j < V; j++)
                acc[j] = lane(d, j);
        }
        for (int oy = oy0; oy <= oy1; oy++)
            for (int ox = ox0; ox <= ox1; ox++) {
                size_t o = ((b * Ho + oy) * Wo + ox) * cout + ch;
                if (V == 1) {
                    acc[0] += ld<T>(dy, o) * inv;
                } else {
                    pack16<T> g = ldv<T>(dy, o / V);
                    for (int j = 0; j < V; j++)
                        acc[j] += lane(g, j) * inv;
                }
            }
        if (V == 1) {
            st<T>(dx, at, acc[0]);
        } else {
            for (int j = 0; j < V; j++)
                set_lane(d, j, acc[j]);
            stv(dx, at / V, d);
        }
    }
}

template <typename T>
static __global__ void avgpool_forward_kernel(const void *x, int B, int H, int W, int cin, int k, int s, int cout, void *y,
                                              int vec)
{
    if (vec)
        avgpool_forward<T, AMDIM_PACK(T)>(x, B, H, W, cin, k, s, cout, y);
    else
        avgpool_forward<T, 1>(x, B, H, W, cin, k, s, cout, y);
}

template <typename T>
static __global__ void avgpool_backward_kernel(const void *dy, int B, int H, int W, int cin, int k, int s, int cout,
                                               void *dx, int vec)
{
    if (vec)
        avgpool_backward<T, AMDIM_PACK(T)>(dy, B, H, W, cin, k, s, cout, dx);
    else
        avgpool_backward<T, 1>(dy, B, H, W, cin, k, s, cout, dx);
}

/* Packs apply: both channel counts multiples of the pack, both buffers aligned. */
static int pool_vec(const amdim_cuda_ctx *c, const void *p, const void *q, int cin, int cout)
{
    int V = c->bf16 ? 8 : 4;
    return aligned16(p, q) && cin % V == 0 && cout % V == 0;
}

extern "C" int amdim_avgpool_pad_forward_add_cuda(const amdim_cuda_ctx *c, const void *x, int B, int H, int W, int cin,
                                            int k, int s, int cout, void *y)
{
    size_t n = (size_t)B * ((H - k) / s + 1) * ((W - k) / s + 1) * cin;
    int vec = pool_vec(c, x, y, cin, cout);
    LAUNCH_ACT(c, avgpool_forward_kernel, grid_for(vec ? n / (c->bf16 ? 8 : 4) : n), AMDIM_THREADS, x, B, H, W, cin, k,
               s, cout, y, vec);
    note(c, "shortcut (pool + add)", ((double)B * H * W * cin + 2.0 * n) * act_es(c));
    return launch_check(c, "amdim_avgpool_pad_forward_add_cuda");
}

extern "C" int amdim_avgpool_pad_backward_add_cuda(const amdim_cuda_ctx *c, const void *dy, int B, int H, int W, int cin,
                                             int k, int s, int cout, void *dx)
{
    size_t n = (size_t)B * H * W * cin;
    int vec = pool_vec(c, dy, dx, cin, cout);
    LAUNCH_ACT(c, avgpool_backward_kernel, grid_for(vec ? n / (c->bf16 ? 8 : 4) : n), AMDIM_THREADS, dy, B, H, W, cin,
               k, s, cout, dx, vec);
    note(c, "shortcut backward", (2.0 * n + (double)B * ((H - k) / s + 1) * ((W - k) / s + 1) * cin) * act_es(c));
    return launch_check(c, "amdim_avgpool_pad_backward_add_cuda");
}
