/* Input views: uint8 NHWC -> normalised NHWC activations; NCHW <-> NHWC;
 * activation / float / bf16 conversions. */
#include "launch_internal.cuh"

/* one thread per output element (pixel, channel < cout) */
template <typename T>
static __global__ void normalise_u8_kernel(const uint8_t *x, size_t n, int cout, float s0, float s1, float s2, float h0,
                                    float h1, float h2, void *y)
{
    GRID_STRIDE(i, n)
    {
        int c = (int)(i % cout);
        size_t px = i / cout;
        float sc = c == 0 ? s0 : c == 1 ? s1 : s2, sh = c == 0 ? h0 : c == 1 ? h1 : h2;
        st<T>(y, i, c < 3 ? amdim_normalise_pixel(x[px * 3 + c], sc, sh) : 0.0f);
    }
}

/* one thread per NHWC output element: x (B, C, HW) float -> y (B, HW, ldc)
 * activations, channels >= C zero */
template <typename T> static __global__ void to_nhwc_kernel(const float *x, int B, int C, int HW, int ldc, void *y)
{
    size_t n = (size_t)B * HW * ldc;
    GRID_STRIDE(j, n)
    {
        size_t c = j % ldc, r = j / ldc, p = r % HW, b = r / HW;
        st<T>(y, j, c < (size_t)C ? x[(b * C + c) * HW + p] : 0.0f);
    }
}

/* x (B, HW, C) activations -> y (B, C, HW) float */
template <typename T> static __global__ void to_nchw_kernel(const void *x, int B, int C, int HW, float *y)
{
    size_t n = (size_t)B * C * HW;
    GRID_STRIDE(i, n)
    {
        size_t b = i / ((size_t)C * HW), r = i % ((size_t)C * HW);
        size_t c = r / HW, p = r % HW; /* i is the NCHW index (b, c, p) */
        y[i] = ld<T>(x, (b * HW + p) * C + c);
    }
}

template <typename T> static __global__ void to_f32_kernel(const void *x, size_t n, float *y)
{
    GRID_STRIDE(i, n) y[i] = ld<T>(x, i);
}

static __global__ void to_bf16_kernel(const float *x, size_t n, uint16_t *y)
{
    GRID_STRIDE(i, n) y[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}

extern "C" int amdim_normalise_u8_cuda(const amdim_cuda_ctx *c, const uint8_t *x, size_t pixels, const float scale[3],
                                 const float shift[3], int cout, void *y)
{
    size_t n = pixels * (size_t)cout;
    LAUNCH_ACT(c, normalise_u8_kernel, grid_for(n), AMDIM_THREADS, x, n, cout, scale[0], scale[1], scale[2],
               shift[0], shift[1], shift[2], y);
    note(c, "input normalise", 3.0 * pixels + n * act_es(c));
    return launch_check(c, "amdim_normalise_u8_cuda");
}

extern "C" int amdim_nchw_to_nhwc_cuda(const amdim_cuda_ctx *c, const float *x, int B, int C, int HW, int ldc, void *y)
{
    size_t n = (size_t)B * HW * ldc;
    LAUNCH_ACT(c, to_nhwc_kernel, grid_for(n), AMDIM_THREADS, x, B, C, HW, ldc, y);
    note(c, "layout conversion", 4.0 * B * C * HW + n * act_es(c));
    return launch_check(c, "amdim_nchw_to_nhwc_cuda");
}

extern "C" int amdim_nhwc_to_nchw_cuda(const amdim_cuda_ctx *c, const void *x, int B, int C, int HW, float *y)
{
    size_t n = (size_t)B * C * HW;
    LAUNCH_ACT(c, to_nchw_kernel, grid_for(n), AMDIM_THREADS, x, B, C, HW, y);
    note(c, "layout conversion", n * (4.0 + act_es(c)));
    return launch_check(c, "amdim_nhwc_to_nchw_cuda");
}

extern "C" int amdim_act_to_f32_cuda(const amdim_cuda_ctx *c, const void *x, size_t n, float *y)
{
    LAUNCH_ACT(c, to_f32_kernel, grid_for(n), AMDIM_THREADS, x, n, y);
    note(c, "type conversion", n * (4.0 + act_es(c)));
    return launch_check(c, "amdim_act_to_f32_cuda");
}

extern "C" int amdim_f32_to_bf16_cuda(const amdim_cuda_ctx *c, const float *x, size_t n, uint16_t *y)
{
    LAUNCH(c, to_bf16_kernel, grid_for(n), AMDIM_THREADS, x, n, y);
    note(c, "type conversion", 6.0 * n);
    return launch_check(c, "amdim_f32_to_bf16_cuda");
}
