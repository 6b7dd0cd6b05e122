/* Element-wise activations: ReLU forward / backward, bias (+ ReLU), add.
 * Each kernel moves 16-byte packs (launch_internal.cuh) where its buffers
 * allow (vec: aligned, and for the bias the channels a multiple of the
 * pack) and single elements for the rest. */
#include "launch_internal.cuh"

template <typename T> static __global__ void relu_kernel(void *y, size_t n, int vec)
{
    const int V = AMDIM_PACK(T);
    size_t nv = vec ? n / V : 0;
    GRID_STRIDE(i, nv)
    {
        pack16<T> a = ldv<T>(y, i);
        for (int k = 0; k < V; k++)
            set_lane(a, k, amdim_relu(lane(a, k)));
        stv(y, i, a);
    }
    GRID_STRIDE_FROM(i, nv * V, n) st<T>(y, i, amdim_relu(ld<T>(y, i)));
}

template <typename T> static __global__ void relu_backward_kernel(const void *y, void *dy, size_t n, int vec)
{
    const int V = AMDIM_PACK(T);
    size_t nv = vec ? n / V : 0;
    GRID_STRIDE(i, nv)
    {
        pack16<T> a = ldv<T>(y, i), g = ldv<T>(dy, i);
        for (int k = 0; k < V; k++)
            set_lane(g, k, amdim_relu_grad(lane(a, k), lane(g, k)));
        stv(dy, i, g);
    }
    GRID_STRIDE_FROM(i, nv * V, n) st<T>(dy, i, amdim_relu_grad(ld<T>(y, i), ld<T>(dy, i)));
}

/* y (N, C) += bias[c], then ReLU when relu; vec: C a multiple of the pack,
 * so a pack's channels are consecutive (one index computation per pack). */
template <typename T> static __global__ void bias_kernel(void *y, const float *bias, size_t n, int C, int relu, int vec)
{
    const int V = AMDIM_PACK(T);
    if (vec) {
        size_t cp = (size_t)C / V;
        GRID_STRIDE(i, n / V)
        {
            pack16<T> a = ldv<T>(y, i);
            const float *b = bias + (i % cp) * V;
            for (int k = 0; k < V; k++) {
                float v = lane(a, k) + b[k];
                set_lane(a, k, relu ? amdim_relu(v) : v);
            }
            stv(y, i, a);
        }
        return;
    }
    GRID_STRIDE(i, n)
    {
        float v = ld<T>(y, i) + bias[i % C];
        st<T>(y, i, relu ? amdim_relu(v) : v);
    }
}

template <typename T> static __global__ void add_kernel(void *y, const void *x, size_t n, int vec)
{
    const int V = AMDIM_PACK(T);
    size_t nv = vec ? n / V : 0;
    GRID_STRIDE(i, nv)
    {
        pack16<T> a = ldv<T>(y, i), b = ldv<T>(x, i);
        for (int k = 0; k < V; k++)
            set_lane(a, k, lane(a, k) + lane(b, k));
        stv(y, i, a);
    }
    GRID_STRIDE_FROM(i, nv * V, n) st<T>(y, i, ld<T>(y, i) + ld<T>(x, i));
}

/* Elements per pack in the context's activation type. */
static int pack_of(const amdim_cuda_ctx *c) { return c->bf16 ? 8 : 4; }

/* Blocks for n elements taken in packs when vec. */
static unsigned grid_packed(const amdim_cuda_ctx *c, size_t n, int vec)
{
    return grid_for(vec ? n / (size_t)pack_of(c) + (size_t)pack_of(c) : n);
}

extern "C" int amdim_relu_forward_cuda(const amdim_cuda_ctx *c, void *y, size_t n)
{
    int vec = aligned16(y);
    LAUNCH_ACT(c, relu_kernel, grid_packed(c, n, vec), AMDIM_THREADS, y, n, vec);
    note(c, "relu", 2.0 * n * act_es(c));
    return launch_check(c, "amdim_relu_forward_cuda");
}

extern "C" int amdim_relu_backward_cuda(const amdim_cuda_ctx *c, const void *y, void *dy, size_t n)
{
    int vec = aligned16(y, dy);
    LAUNCH_ACT(c, relu_backward_kernel, grid_packed(c, n, vec), AMDIM_THREADS, y, dy, n, vec);
    note(c, "relu backward", 3.0 * n * act_es(c));
    return launch_check(c, "amdim_relu_backward_cuda");
}

static void bias_launch(const amdim_cuda_ctx *c, void *y, const float *bias, size_t rows, int C, int relu)
{
    size_t n = rows * C;
    int vec = aligned16(y) && C % pack_of(c) == 0;
    LAUNCH_ACT(c, bias_kernel, grid_packed(c, n, vec), AMDIM_THREADS, y, bias, n, C, relu, vec);
}

extern "C" int amdim_bias_relu_forward_cuda(const amdim_cuda_ctx *c, void *y, const float *bias, size_t rows, int C)
{
    bias_launch(c, y, bias, rows, C, 1);
    note(c, "bias + relu", 2.0 * rows * C * act_es(c) + 4.0 * C);
    return launch_check(c, "amdim_bias_relu_forward_cuda");
}

extern "C" int amdim_bias_add_cuda(const amdim_cuda_ctx *c, void *y, const float *bias, size_t rows, int C)
{
    bias_launch(c, y, bias, rows, C, 0);
    note(c, "bias", 2.0 * rows * C * act_es(c) + 4.0 * C);
    return launch_check(c, "amdim_bias_add_cuda");
}

extern "C" int amdim_add_cuda(const amdim_cuda_ctx *c, void *y, const void *x, size_t n)
{
    int vec = aligned16(y, x);
    LAUNCH_ACT(c, add_kernel, grid_packed(c, n, vec), AMDIM_THREADS, y, x, n, vec);
    note(c, "add", 3.0 * n * act_es(c));
    return launch_check(c, "amdim_add_cuda");
}
