/* BatchNorm over NHWC activations x (N, C): training (batch statistics,
 * running statistics), eval, backward, and the per-channel sums that bias
 * gradients need. Activations in the context's type (launch.cuh);
 * statistics, parameters and sums float / double. Reductions are two-level and deterministic: the rows are
 * cut into P fixed chunks; a (32 channels x 8 rows) block sums one chunk of
 * 32 channels in double in a fixed order; a second kernel adds the P
 * partials of each channel in chunk order. */
#include "bn_chunks_internal.h"
#include "launch_internal.cuh"

enum { BN_CH = 32, BN_ROWS = 8 };
enum { MODE_SUM, MODE_VAR, MODE_BWD };

static size_t chunks(size_t N) { return amdim_bn_chunks(N); }

extern "C" size_t amdim_batchnorm_scratch_doubles(size_t N, int C) { return amdim_bn_scratch_doubles(N, C); }

/* A (BN_CH channels x BN_ROWS lanes) block's per-lane sums (a, b) added
 * in lane order into lane 0's; returns 1 on the threads that hold a
 * channel's totals (lane 0, ch < C). Every thread of the block calls it. */
static __device__ inline int lanes_sum(double *a, double *b, double (*sh)[BN_ROWS][BN_CH], int ch, int C)
{
    sh[0][threadIdx.y][threadIdx.x] = *a;
    sh[1][threadIdx.y][threadIdx.x] = *b;
    __syncthreads();
    if (threadIdx.y != 0 || ch >= C)
        return 0;
    for (int k = 1; k < BN_ROWS; k++) {
        *a += sh[0][k][threadIdx.x];
        *b += sh[1][k][threadIdx.x];
    }
    return 1;
}

/* partial[(p, ch)] = sums over chunk p of:
 *   MODE_SUM: x;  MODE_VAR: (x - mean_d)^2;  MODE_BWD: dy and dy * xhat */
template <typename T>
static __global__ void partials_kernel(const void *x, const void *dy, size_t N, int C, int mode, const double *mean_d,
                                const float *mean, const float *inv_std, double *partial)
{
    AMDIM_SHARED(double, sh, [2][BN_ROWS][BN_CH]);
    int ch = blockIdx.x * BN_CH + threadIdx.x;
    size_t P = gridDim.y, per = (N + P - 1) / P, r0 = blockIdx.y * per, r1 = r0 + per < N ? r0 + per : N;
    double a = 0, b = 0;
    if (ch < C)
        for (size_t r = r0 + threadIdx.y; r < r1; r += BN_ROWS) {
            float v = ld<T>(x, r * C + ch);
            if (mode == MODE_SUM) {
                a += v;
            } else if (mode == MODE_VAR) {
                double d = (double)v - mean_d[ch];
                a += d * d;
            } else {
                double g = ld<T>(dy, r * C + ch), xh = (double)(v - mean[ch]) * inv_std[ch];
                a += g;
                b += g * xh;
            }
        }
    if (lanes_sum(&a, &b, sh, ch, C)) {
        partial[(blockIdx.y * (size_t)C + ch) * 2] = a;
        partial[(blockIdx.y * (size_t)C + ch) * 2 + 1] = b;
    }
}

/* finals (C, 2) = sums of the P partials: a (32 channels x 8 lanes)
 * block per 32 channels, lane l adding partials l, l + 8, ... in order,
 * then the 8 lane sums in lane order - a fixed order, the same on every
 * run. */
static __global__ void finals_kernel(const double *partial, size_t P, int C, double *fin)
{
    AMDIM_SHARED(double, sh, [2][BN_ROWS][BN_CH]);
    int ch = blockIdx.x * BN_CH + threadIdx.x;
    double a = 0, b = 0;
    if (ch < C)
        for (size_t p = threadIdx.y; p < P; p += BN_ROWS) {
            a += partial[(p * C + ch) * 2];
            b += partial[(p * C + ch) * 2 + 1];
        }
    if (lanes_sum(&a, &b, sh, ch, C)) {
        fin[2 * ch] = a;
        fin[2 * ch + 1] = b;
    }
}

/* what: the launch list's name of the two kernels. */
static int reduce(const amdim_cuda_ctx *c, const void *x, const void *dy, size_t N, int C, int mode,
                  const double *mean_d, const float *mean, const float *inv_std, double *scratch, const char *op,
                  const char *what)
{
    size_t P = chunks(N);
    dim3 grid((unsigned)((C + BN_CH - 1) / BN_CH), (unsigned)P), block(BN_CH, BN_ROWS);
    LAUNCH_ACT(c, partials_kernel, grid, block, x, dy, N, C, mode, mean_d, mean, inv_std, scratch);
    note(c, what, (mode == MODE_BWD ? 2.0 : 1.0) * N * C * act_es(c) + 16.0 * P * C);
    int rc = launch_check(c, op);
    if (rc)
        return rc;
    LAUNCH(c, finals_kernel, grid.x, block, scratch, P, C, scratch + P * 2 * C);
    note(c, what, 16.0 * (P + 1) * C);
    return launch_check(c, op);
}

/* After MODE_SUM, fin[2ch] = sum x: the double means. */
static __global__ void mean_kernel(const double *fin, size_t N, int C, double *mean_d)
{
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch < C)
        mean_d[ch] = fin[2 * ch] / (double)N;
}

/* mean_d: the means; fin_var: sums of squared deviations */
static __global__ void train_stats_kernel(const double *mean_d, const double *fin_var, size_t N, int C, amdim_cuda_bn p,
                                   float *mean, float *inv_std)
{
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= C)
        return;
    double m = mean_d[ch], v = fin_var[2 * ch], var = v / (double)N;
    mean[ch] = (float)m;
    inv_std[ch] = amdim_bn_inv_std(var);
    double unbiased = N > 1 ? v / (double)(N - 1) : var;
    p.rmean[ch] = amdim_bn_running(p.rmean[ch], (float)m);
    p.rvar[ch] = amdim_bn_running(p.rvar[ch], (float)unbiased);
    if (ch == 0)
        p.nbt[0] += 1;
}

/* The per-element kernels below run on a (rows, channel packs) grid:
 * thread t owns the V channels of pack t % (C / V) (V a 16-byte pack of
 * the activation type where C is a multiple of it and the buffers are
 * aligned, else 1) and the rows t / (C / V), + groups, ...: its channels'
 * coefficients are computed once, in registers, and no index is divided
 * per element. Launched with at least C / V threads. */
struct bn_rows {
    int cp;          /* this thread's channel pack */
    size_t r0, step; /* its first row, the row stride */
};
static __device__ inline int bn_rows_of(int C, int V, bn_rows *w)
{
    size_t npk = (size_t)(C / V), t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t groups = (size_t)gridDim.x * blockDim.x / npk;
    if (t >= groups * npk)
        return 0;
    w->cp = (int)(t % npk);
    w->r0 = t / npk;
    w->step = groups;
    return 1;
}

/* y = (x - mu) s + b per channel, over rows of C (V channels at a time). */
template <typename T, int V>
static __device__ void affine_rows(const void *x, size_t N, int C, const float *mu, const float *s, const float *b,
                                   void *y)
{
    bn_rows w;
    if (!bn_rows_of(C, V, &w))
        return;
    for (size_t r = w.r0; r < N; r += w.step) {
        size_t at = r * C + (size_t)w.cp * V;
        if (V == 1) {
            st<T>(y, at, (ld<T>(x, at) - mu[0]) * s[0] + b[0]);
        } else {
            pack16<T> a = ldv<T>(x, at / V);
            for (int k = 0; k < V; k++)
                set_lane(a, k, (lane(a, k) - mu[k]) * s[k] + b[k]);
            stv(y, at / V, a);
        }
    }
}

/* Training-mode apply with the batch statistics: s = inv_std gamma. */
template <typename T, int V>
static __device__ void apply_rows(const void *x, size_t N, int C, const float *mean, const float *inv_std,
                                  const float *gamma, const float *beta, void *y)
{
    bn_rows w;
    if (!bn_rows_of(C, V, &w))
        return;
    float mu[V], s[V], b[V];
    for (int k = 0; k < V; k++) {
        int ch = w.cp * V + k;
        mu[k] = mean[ch], s[k] = inv_std[ch] * gamma[ch], b[k] = beta[ch];
    }
    affine_rows<T, V>(x, N, C, mu, s, b, y);
}

template <typename T>
static __global__ void apply_kernel(const void *x, size_t N, int C, const float *mean, const float *inv_std,
                                    const float *gamma, const float *beta, void *y, int vec)
{
    if (vec)
        apply_rows<T, AMDIM_PACK(T)>(x, N, C, mean, inv_std, gamma, beta, y);
    else
        apply_rows<T, 1>(x, N, C, mean, inv_std, gamma, beta, y);
}

/* Eval mode with the running statistics: s = gamma / sqrt(running var + eps). */
template <typename T, int V> static __device__ void eval_rows(const void *x, size_t N, int C, amdim_cuda_bn p, void *y)
{
    bn_rows w;
    if (!bn_rows_of(C, V, &w))
        return;
    float mu[V], s[V], b[V];
    for (int k = 0; k < V; k++) {
        int ch = w.cp * V + k;
        mu[k] = p.rmean[ch], s[k] = amdim_bn_inv_std(p.rvar[ch]) * p.gamma[ch], b[k] = p.beta[ch];
    }
    affine_rows<T, V>(x, N, C, mu, s, b, y);
}

template <typename T> static __global__ void eval_kernel(const void *x, size_t N, int C, amdim_cuda_bn p, void *y, int vec)
{
    if (vec)
        eval_rows<T, AMDIM_PACK(T)>(x, N, C, p, y);
    else
        eval_rows<T, 1>(x, N, C, p, y);
}

/* fin (C, 2) = (sdy, sdyx): parameter gradients */
static __global__ void param_grad_kernel(const double *fin, int C, amdim_cuda_bn p)
{
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= C)
        return;
    p.dgamma[ch] += (float)fin[2 * ch + 1];
    p.dbeta[ch] += (float)fin[2 * ch];
}

/* dx = scale (count dy - sdy - xhat sdyx) (amdim_bn_backward_element) as
 * dx = A dy + Bk (x - mean) + Ck with the channel's A = gamma inv_std,
 * Bk = -scale sdyx inv_std and Ck = -scale sdy computed once per thread
 * (in double, kept as float: two float FMAs per element, and few enough
 * registers for eight channels a thread). */
template <typename T, int V>
static __device__ void backward_rows(const void *x, const void *dy, size_t N, size_t count, int C, const float *gamma,
                                     const float *mean, const float *inv_std, const double *fin, void *dx)
{
    bn_rows w;
    if (!bn_rows_of(C, V, &w))
        return;
    float mu[V], A[V], Bk[V], Ck[V];
    for (int k = 0; k < V; k++) {
        int ch = w.cp * V + k;
        double scale = amdim_bn_backward_scale(gamma[ch], inv_std[ch], (double)count);
        mu[k] = mean[ch];
        A[k] = (float)(scale * (double)count);
        Bk[k] = (float)(-scale * fin[2 * ch + 1] * inv_std[ch]);
        Ck[k] = (float)(-scale * fin[2 * ch]);
    }
    for (size_t r = w.r0; r < N; r += w.step) {
        size_t at = r * C + (size_t)w.cp * V;
        if (V == 1) {
            st<T>(dx, at, fmaf(A[0], ld<T>(dy, at), fmaf(Bk[0], ld<T>(x, at) - mu[0], Ck[0])));
        } else {
            pack16<T> a = ldv<T>(x, at / V), g = ldv<T>(dy, at / V);
            for (int k = 0; k < V; k++)
                set_lane(g, k, fmaf(A[k], lane(g, k), fmaf(Bk[k], lane(a, k) - mu[k], Ck[k])));
            stv(dx, at / V, g);
        }
    }
}

template <typename T>
static __global__ void backward_kernel(const void *x, const void *dy, size_t N, size_t count, int C, const float *gamma,
                                       const float *mean, const float *inv_std, const double *fin, void *dx, int vec)
{
    if (vec)
        backward_rows<T, AMDIM_PACK(T)>(x, dy, N, count, C, gamma, mean, inv_std, fin, dx);
    else
        backward_rows<T, 1>(x, dy, N, count, C, gamma, mean, inv_std, fin, dx);
}

/* Packs apply (see bn_rows): C a multiple of the pack, the buffers aligned. */
static int rows_vec(const amdim_cuda_ctx *c, int C, const void *p, const void *q, const void *r = NULL)
{
    return C % (c->bf16 ? 8 : 4) == 0 && aligned16(p, q, r);
}

/* Blocks for the (rows, channel packs) grid: every pack of every row a
 * thread where the grid allows, and never fewer threads than packs. */
static unsigned rows_grid(int C, size_t N, int vec, const amdim_cuda_ctx *c)
{
    size_t npk = (size_t)C / (vec ? (c->bf16 ? 8 : 4) : 1);
    unsigned g = grid_for(N * npk), least = (unsigned)((npk + AMDIM_THREADS - 1) / AMDIM_THREADS);
    return g > least ? g : least;
}

static __global__ void channel_add_kernel(const double *fin, int C, float *out)
{
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch < C)
        out[ch] += (float)fin[2 * ch];
}

/* Synchronised BatchNorm: fin (C, 2) summed over the ranks, and the
 * count the statistics are over. */
static int sync_fin(const amdim_cuda_ctx *c, double *fin, int C)
{
    return c->bn_sync ? c->bn_sync(c->bn_sync_arg, fin, 2 * (size_t)C) : 0;
}

static size_t total_count(const amdim_cuda_ctx *c, size_t N) { return c->bn_sync ? N * (size_t)c->ranks : N; }

extern "C" int amdim_batchnorm_forward_train_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C,
                                            const amdim_cuda_bn *p, void *y, float *mean, float *inv_std,
                                            double *scratch)
{
    const char *op = "amdim_batchnorm_forward_train_cuda";
    size_t P = chunks(N), T = total_count(c, N);
    double *fin = scratch + P * 2 * C, *mean_d = fin + 2 * (size_t)C;
    int rc = reduce(c, x, NULL, N, C, MODE_SUM, NULL, NULL, NULL, scratch, op, "BN statistics");
    if (rc || (rc = sync_fin(c, fin, C)))
        return rc;
    LAUNCH(c, mean_kernel, (C + 127) / 128, 128, fin, T, C, mean_d);
    note(c, "BN statistics", 24.0 * C);
    if ((rc = launch_check(c, op)))
        return rc;
    if ((rc = reduce(c, x, NULL, N, C, MODE_VAR, mean_d, NULL, NULL, scratch, op, "BN statistics")) ||
        (rc = sync_fin(c, fin, C)))
        return rc;
    LAUNCH(c, train_stats_kernel, (C + 127) / 128, 128, mean_d, fin, T, C, *p, mean, inv_std);
    note(c, "BN statistics", 40.0 * C);
    if ((rc = launch_check(c, op)))
        return rc;
    size_t n = N * C;
    int vec = rows_vec(c, C, x, y);
    LAUNCH_ACT(c, apply_kernel, rows_grid(C, N, vec, c), AMDIM_THREADS, x, N, C, mean, inv_std, p->gamma, p->beta, y,
               vec);
    note(c, "BN apply", 2.0 * n * act_es(c) + 16.0 * C);
    return launch_check(c, op);
}

extern "C" int amdim_batchnorm_forward_eval_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C,
                                           const amdim_cuda_bn *p, void *y)
{
    size_t n = N * C;
    int vec = rows_vec(c, C, x, y);
    LAUNCH_ACT(c, eval_kernel, rows_grid(C, N, vec, c), AMDIM_THREADS, x, N, C, *p, y, vec);
    note(c, "BN apply", 2.0 * n * act_es(c) + 16.0 * C);
    return launch_check(c, "amdim_batchnorm_forward_eval_cuda");
}

extern "C" int amdim_batchnorm_backward_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C,
                                       const amdim_cuda_bn *p, const float *mean, const float *inv_std,
                                       const void *dy, void *dx, double *scratch)
{
    const char *op = "amdim_batchnorm_backward_cuda";
    double *fin = scratch + chunks(N) * 2 * C;
    int rc = reduce(c, x, dy, N, C, MODE_BWD, NULL, mean, inv_std, scratch, op, "BN backward sums");
    if (rc)
        return rc;
    LAUNCH(c, param_grad_kernel, (C + 127) / 128, 128, fin, C, *p); /* this rank's share */
    note(c, "BN backward sums", 32.0 * C);
    if ((rc = launch_check(c, op)) || (rc = sync_fin(c, fin, C)))
        return rc;
    size_t n = N * C;
    int vec = rows_vec(c, C, x, dy, dx);
    LAUNCH_ACT(c, backward_kernel, rows_grid(C, N, vec, c), AMDIM_THREADS, x, dy, N, total_count(c, N), C, p->gamma,
               mean, inv_std, fin, dx, vec);
    note(c, "BN backward", 3.0 * n * act_es(c) + 28.0 * C);
    return launch_check(c, op);
}

extern "C" int amdim_channel_sum_add_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C, float *out,
                                    double *scratch)
{
    const char *op = "amdim_channel_sum_add_cuda";
    int rc = reduce(c, x, NULL, N, C, MODE_SUM, NULL, NULL, NULL, scratch, op, "bias gradient sums");
    if (rc)
        return rc;
    LAUNCH(c, channel_add_kernel, (C + 127) / 128, 128, scratch + chunks(N) * 2 * C, C, out);
    note(c, "bias gradient sums", 24.0 * C);
    return launch_check(c, op);
}
