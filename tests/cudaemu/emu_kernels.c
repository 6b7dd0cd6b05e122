/* CPU emulation of trainer/cuda/kernels.h for the emulated-device tests.
 *
 * Every kernel launcher of kernels.h (C linkage, same signatures) is a
 * LITERAL port of its kernel in trainer/cuda/<family>.cu: the same index
 * decoding, the same per-element functions (trainer/elementwise.h,
 * trainer/cuda/layout.h, trainer/cuda/bn_chunks.h), the same float / double
 * type for every intermediate, and block reductions emulated with the
 * kernels' thread mapping and fixed trees (launch.cuh: block_sum /
 * block_max over 256 threads; batchnorm.cu: (32 channels x 8 rows) blocks
 * over amdim_bn_chunks(N) chunks, then the finals in chunk order). The
 * emulated backend (backend_cuda.c against emulated CUDA libraries) is
 * compared with the independent CPU reference backend, so an index or
 * formula mistake in a kernel shows up here too: nothing is "fixed" or
 * simplified. "Device pointers" are host pointers (the emulated cudaMalloc
 * returns host memory); a launch runs synchronously on the calling thread.
 *
 * launch_check: 0, or AMDIM_CUDA_E_DEVICE with "op(): ..." in ctx->err for
 * a negative size (defensive), a zero pooling stride (a trap on the CPU),
 * or a launch whose grid would have zero blocks (CUDA refuses it with
 * cudaErrorInvalidConfiguration).
 *
 * Not used in real builds: those link the .cu kernels. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../trainer/cuda/bn_chunks.h"
#include "../../trainer/cuda/kernels.h"
#include "../../trainer/cuda/layout.h"

/* ---- launch.cuh ---- */

enum { EMU_THREADS = 256 }; /* AMDIM_THREADS, CLS_THREADS, NCE_THREADS */

/* ld<T> / st<T>: T = bf16 when the context says so. */
static float ld(const amdim_cuda_ctx *c, const void *p, size_t i)
{
    return c->bf16 ? amdim_bf16_value(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static void st(const amdim_cuda_ctx *c, void *p, size_t i, float v)
{
    if (c->bf16)
        ((uint16_t *)p)[i] = amdim_bf16_bits(v);
    else
        ((float *)p)[i] = v;
}

static int fail(const amdim_cuda_ctx *c, const char *op, const char *what)
{
    if (c->err && c->errn)
        snprintf(c->err, c->errn, "%s(): %s (emulated device)", op, what);
    return AMDIM_CUDA_E_DEVICE;
}

/* The defensive size check: 0, or the error if any of the nv values is negative. */
static int sizes(const amdim_cuda_ctx *c, const char *op, const int *v, int nv)
{
    for (int k = 0; k < nv; k++)
        if (v[k] < 0)
            return fail(c, op, "negative size");
    return 0;
}

/* A launch of `blocks` blocks: CUDA refuses a zero-block grid. */
static int grid_check(const amdim_cuda_ctx *c, const char *op, size_t blocks)
{
    return blocks ? 0 : fail(c, op, "invalid configuration argument (cudaErrorInvalidConfiguration)");
}

/* block_sum / block_max: the fixed tree over the 256 threads' values v
 * (overwritten, as the shared array). */
static double tree_sum(double *v)
{
    for (unsigned s = EMU_THREADS / 2; s > 0; s >>= 1)
        for (unsigned t = 0; t < s; t++)
            v[t] += v[t + s];
    return v[0];
}

static double tree_max(double *v)
{
    for (unsigned s = EMU_THREADS / 2; s > 0; s >>= 1)
        for (unsigned t = 0; t < s; t++)
            if (v[t + s] > v[t])
                v[t] = v[t + s];
    return v[0];
}

static void fill(double *v, double x)
{
    for (int t = 0; t < EMU_THREADS; t++)
        v[t] = x;
}

/* ---- input.cu ---- */

/* input.cu: normalise_u8_kernel */
int normalise_u8_cuda(const amdim_cuda_ctx *c, const uint8_t *x, size_t pixels, const float scale[3],
                      const float shift[3], int cout, void *y)
{
    const char *op = "normalise_u8_cuda";
    int rc = sizes(c, op, (const int[]){cout}, 1);
    if (rc)
        return rc;
    size_t n = pixels * (size_t)cout;
    float s0 = scale[0], s1 = scale[1], s2 = scale[2], h0 = shift[0], h1 = shift[1], h2 = shift[2];
    for (size_t i = 0; i < n; i++) {
        int ch = (int)(i % cout);
        size_t px = i / cout;
        float sc = ch == 0 ? s0 : ch == 1 ? s1 : s2, sh = ch == 0 ? h0 : ch == 1 ? h1 : h2;
        st(c, y, i, ch < 3 ? amdim_normalise_pixel(x[px * 3 + ch], sc, sh) : 0.0f);
    }
    return 0;
}

/* input.cu: to_nhwc_kernel */
int nchw_to_nhwc_cuda(const amdim_cuda_ctx *c, const float *x, int B, int C, int HW, int ldc, void *y)
{
    int rc = sizes(c, "nchw_to_nhwc_cuda", (const int[]){B, C, HW, ldc}, 4);
    if (rc)
        return rc;
    size_t n = (size_t)B * HW * ldc;
    for (size_t j = 0; j < n; j++) {
        size_t ch = j % ldc, r = j / ldc, p = r % HW, b = r / HW;
        st(c, y, j, ch < (size_t)C ? x[(b * C + ch) * HW + p] : 0.0f);
    }
    return 0;
}

/* input.cu: to_nchw_kernel */
int nhwc_to_nchw_cuda(const amdim_cuda_ctx *c, const void *x, int B, int C, int HW, float *y)
{
    int rc = sizes(c, "nhwc_to_nchw_cuda", (const int[]){B, C, HW}, 3);
    if (rc)
        return rc;
    size_t n = (size_t)B * C * HW;
    for (size_t i = 0; i < n; i++) {
        size_t b = i / ((size_t)C * HW), r = i % ((size_t)C * HW);
        size_t ch = r / HW, p = r % HW; /* i is the NCHW index (b, ch, p) */
        y[i] = ld(c, x, (b * HW + p) * C + ch);
    }
    return 0;
}

/* input.cu: to_f32_kernel */
int act_to_f32_cuda(const amdim_cuda_ctx *c, const void *x, size_t n, float *y)
{
    for (size_t i = 0; i < n; i++)
        y[i] = ld(c, x, i);
    return 0;
}

/* input.cu: to_bf16_kernel (either mode) */
int f32_to_bf16_cuda(const amdim_cuda_ctx *c, const float *x, size_t n, uint16_t *y)
{
    (void)c;
    for (size_t i = 0; i < n; i++)
        y[i] = amdim_bf16_bits(x[i]);
    return 0;
}

/* ---- pad.cu ---- */

/* pad.cu: reflect_pad_kernel */
int reflect_pad_forward_cuda(const amdim_cuda_ctx *c, const void *x, int B, int H, int W, int C, int p, void *y)
{
    int rc = sizes(c, "reflect_pad_forward_cuda", (const int[]){B, H, W, C, p}, 5);
    if (rc)
        return rc;
    int Hp = H + 2 * p, Wp = W + 2 * p;
    size_t n = (size_t)B * Hp * Wp * C;
    for (size_t i = 0; i < n; i++) {
        int ch = (int)(i % C);
        size_t r = i / C;
        int xx = (int)(r % Wp), yy = (int)(r / Wp % Hp);
        size_t b = r / ((size_t)Wp * Hp);
        int sy = amdim_reflect_index(yy - p, H), sx = amdim_reflect_index(xx - p, W);
        st(c, y, i, ld(c, x, ((b * H + sy) * W + sx) * C + ch));
    }
    return 0;
}

/* ---- activation.cu ---- */

/* activation.cu: relu_kernel */
int relu_forward_cuda(const amdim_cuda_ctx *c, void *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        st(c, y, i, amdim_relu(ld(c, y, i)));
    return 0;
}

/* activation.cu: relu_backward_kernel */
int relu_backward_cuda(const amdim_cuda_ctx *c, const void *y, void *dy, size_t n)
{
    for (size_t i = 0; i < n; i++)
        st(c, dy, i, amdim_relu_grad(ld(c, y, i), ld(c, dy, i)));
    return 0;
}

/* activation.cu: bias_kernel */
static void bias_kernel(const amdim_cuda_ctx *c, void *y, const float *bias, size_t n, int C, int relu)
{
    for (size_t i = 0; i < n; i++) {
        float v = ld(c, y, i) + bias[i % C];
        st(c, y, i, relu ? amdim_relu(v) : v);
    }
}

/* activation.cu: bias_kernel, relu = 1 */
int bias_relu_forward_cuda(const amdim_cuda_ctx *c, void *y, const float *bias, size_t rows, int C)
{
    int rc = sizes(c, "bias_relu_forward_cuda", (const int[]){C}, 1);
    if (rc)
        return rc;
    bias_kernel(c, y, bias, rows * C, C, 1);
    return 0;
}

/* activation.cu: bias_kernel, relu = 0 */
int bias_add_cuda(const amdim_cuda_ctx *c, void *y, const float *bias, size_t rows, int C)
{
    int rc = sizes(c, "bias_add_cuda", (const int[]){C}, 1);
    if (rc)
        return rc;
    bias_kernel(c, y, bias, rows * C, C, 0);
    return 0;
}

/* activation.cu: add_kernel */
int add_cuda(const amdim_cuda_ctx *c, void *y, const void *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        st(c, y, i, ld(c, y, i) + ld(c, x, i));
    return 0;
}

/* ---- avgpool.cu ---- */

/* 0, or the error for a negative size or a zero stride (the CPU would trap on the division). */
static int pool_args(const amdim_cuda_ctx *c, const char *op, int B, int H, int W, int cin, int k, int s, int cout)
{
    int rc = sizes(c, op, (const int[]){B, H, W, cin, k, s, cout}, 7);
    return rc ? rc : s == 0 ? fail(c, op, "zero stride") : 0;
}

/* avgpool.cu: avgpool_forward_kernel */
int avgpool_pad_forward_add_cuda(const amdim_cuda_ctx *c, const void *x, int B, int H, int W, int cin, int k, int s,
                                 int cout, void *y)
{
    int rc = pool_args(c, "avgpool_pad_forward_add_cuda", B, H, W, cin, k, s, cout);
    if (rc)
        return rc;
    int Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
    size_t n = (size_t)B * Ho * Wo * cin;
    float inv = 1.0f / (float)(k * k);
    for (size_t i = 0; i < n; i++) {
        int ch = (int)(i % cin);
        size_t r = i / cin;
        int ox = (int)(r % Wo), oy = (int)(r / Wo % Ho);
        size_t b = r / ((size_t)Wo * Ho);
        float acc = 0;
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++)
                acc += ld(c, x, ((b * H + oy * s + ky) * W + ox * s + kx) * cin + ch);
        size_t o = ((b * Ho + oy) * Wo + ox) * cout + ch;
        st(c, y, o, ld(c, y, o) + acc * inv);
    }
    return 0;
}

/* avgpool.cu: avgpool_backward_kernel */
int avgpool_pad_backward_add_cuda(const amdim_cuda_ctx *c, const void *dy, int B, int H, int W, int cin, int k,
                                  int s, int cout, void *dx)
{
    int rc = pool_args(c, "avgpool_pad_backward_add_cuda", B, H, W, cin, k, s, cout);
    if (rc)
        return rc;
    int Ho = (H - k) / s + 1, Wo = (W - k) / s + 1;
    size_t n = (size_t)B * H * W * cin;
    float inv = 1.0f / (float)(k * k);
    for (size_t i = 0; i < n; i++) {
        int ch = (int)(i % cin);
        size_t r = i / cin;
        int ix = (int)(r % W), iy = (int)(r / W % H);
        size_t b = r / ((size_t)W * H);
        /* outputs o with o*s <= i < o*s + k */
        int oy0 = iy - k + 1 > 0 ? (iy - k + 1 + s - 1) / s : 0, oy1 = iy / s < Ho - 1 ? iy / s : Ho - 1;
        int ox0 = ix - k + 1 > 0 ? (ix - k + 1 + s - 1) / s : 0, ox1 = ix / s < Wo - 1 ? ix / s : Wo - 1;
        float acc = ld(c, dx, i);
        for (int oy = oy0; oy <= oy1; oy++)
            for (int ox = ox0; ox <= ox1; ox++)
                acc += ld(c, dy, ((b * Ho + oy) * Wo + ox) * cout + ch) * inv;
        st(c, dx, i, acc);
    }
    return 0;
}

/* ---- batchnorm.cu ---- */

enum { BN_CH = 32, BN_ROWS = 8 };
enum { MODE_SUM, MODE_VAR, MODE_BWD };

/* batchnorm.cu: batchnorm_scratch_doubles */
size_t batchnorm_scratch_doubles(size_t N, int C) { return amdim_bn_scratch_doubles(N, C); }

/* batchnorm.cu: partials_kernel over the grid ((C + 31) / 32, P) of (32 x 8)
 * blocks: thread (tx, ty) of block (bx, p) sums rows r0 + ty, r0 + ty + 8, ...
 * of channel bx * 32 + tx; thread ty = 0 then adds lanes 1 .. 7 in order. */
static void partials_kernel(const amdim_cuda_ctx *c, const void *x, const void *dy, size_t N, int C, int mode,
                            const double *mean_d, const float *mean, const float *inv_std, double *partial)
{
    size_t P = amdim_bn_chunks(N), per = (N + P - 1) / P;
    unsigned gx = (unsigned)((C + BN_CH - 1) / BN_CH);
    for (unsigned bx = 0; bx < gx; bx++)
        for (size_t by = 0; by < P; by++) {
            size_t r0 = by * per, r1 = r0 + per < N ? r0 + per : N;
            double a[BN_ROWS][BN_CH], b[BN_ROWS][BN_CH];
            for (int ty = 0; ty < BN_ROWS; ty++)
                for (int tx = 0; tx < BN_CH; tx++) {
                    int ch = (int)bx * BN_CH + tx;
                    double sa = 0, sb = 0;
                    if (ch < C)
                        for (size_t r = r0 + ty; r < r1; r += BN_ROWS) {
                            float v = ld(c, x, r * C + ch);
                            if (mode == MODE_SUM) {
                                sa += v;
                            } else if (mode == MODE_VAR) {
                                double d = (double)v - mean_d[ch];
                                sa += d * d;
                            } else {
                                double g = ld(c, dy, r * C + ch), xh = (double)(v - mean[ch]) * inv_std[ch];
                                sa += g;
                                sb += g * xh;
                            }
                        }
                    a[ty][tx] = sa;
                    b[ty][tx] = sb;
                }
            for (int tx = 0; tx < BN_CH; tx++) {
                int ch = (int)bx * BN_CH + tx;
                if (ch >= C)
                    continue;
                double sa = a[0][tx], sb = b[0][tx];
                for (int k = 1; k < BN_ROWS; k++) {
                    sa += a[k][tx];
                    sb += b[k][tx];
                }
                partial[(by * (size_t)C + ch) * 2] = sa;
                partial[(by * (size_t)C + ch) * 2 + 1] = sb;
            }
        }
}

/* batchnorm.cu: finals_kernel: fin (C, 2) = sums of the P partials in order */
static void finals_kernel(const double *partial, size_t P, int C, double *fin)
{
    for (int ch = 0; ch < C; ch++) {
        double a = 0, b = 0;
        for (size_t p = 0; p < P; p++) {
            a += partial[(p * C + ch) * 2];
            b += partial[(p * C + ch) * 2 + 1];
        }
        fin[2 * ch] = a;
        fin[2 * ch + 1] = b;
    }
}

/* batchnorm.cu: reduce (partials, then finals at scratch + P * 2 * C) */
static int reduce(const amdim_cuda_ctx *c, const void *x, const void *dy, size_t N, int C, int mode,
                  const double *mean_d, const float *mean, const float *inv_std, double *scratch, const char *op)
{
    size_t P = amdim_bn_chunks(N);
    int rc = grid_check(c, op, (size_t)((C + BN_CH - 1) / BN_CH) * P);
    if (rc)
        return rc;
    partials_kernel(c, x, dy, N, C, mode, mean_d, mean, inv_std, scratch);
    if ((rc = grid_check(c, op, (size_t)(C + 127) / 128)))
        return rc;
    finals_kernel(scratch, P, C, scratch + P * 2 * C);
    return 0;
}

/* batchnorm.cu: sync_fin / total_count */
static int sync_fin(const amdim_cuda_ctx *c, double *fin, int C)
{
    return c->bn_sync ? c->bn_sync(c->bn_sync_arg, fin, 2 * (size_t)C) : 0;
}

static size_t total_count(const amdim_cuda_ctx *c, size_t N) { return c->bn_sync ? N * (size_t)c->ranks : N; }

/* batchnorm.cu: batchnorm_forward_train_cuda (reduce, mean_kernel, reduce,
 * train_stats_kernel, apply_kernel) */
int batchnorm_forward_train_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C, const amdim_cuda_bn *p,
                                 void *y, float *mean, float *inv_std, double *scratch)
{
    const char *op = "batchnorm_forward_train_cuda";
    int rc = sizes(c, op, (const int[]){C}, 1);
    if (rc)
        return rc;
    size_t P = amdim_bn_chunks(N), T = total_count(c, N);
    double *fin = scratch + P * 2 * C, *mean_d = fin + 2 * (size_t)C;
    rc = reduce(c, x, NULL, N, C, MODE_SUM, NULL, NULL, NULL, scratch, op);
    if (rc || (rc = sync_fin(c, fin, C)))
        return rc;
    /* mean_kernel */
    if ((rc = grid_check(c, op, (size_t)(C + 127) / 128)))
        return rc;
    for (int ch = 0; ch < C; ch++)
        mean_d[ch] = fin[2 * ch] / (double)T;
    if ((rc = reduce(c, x, NULL, N, C, MODE_VAR, mean_d, NULL, NULL, scratch, op)) || (rc = sync_fin(c, fin, C)))
        return rc;
    /* train_stats_kernel (N there is T here) */
    if ((rc = grid_check(c, op, (size_t)(C + 127) / 128)))
        return rc;
    amdim_cuda_bn q = *p;
    for (int ch = 0; ch < C; ch++) {
        double m = mean_d[ch], v = fin[2 * ch], var = v / (double)T;
        mean[ch] = (float)m;
        inv_std[ch] = amdim_bn_inv_std(var);
        double unbiased = T > 1 ? v / (double)(T - 1) : var;
        q.rmean[ch] = amdim_bn_running(q.rmean[ch], (float)m);
        q.rvar[ch] = amdim_bn_running(q.rvar[ch], (float)unbiased);
        if (ch == 0)
            q.nbt[0] += 1;
    }
    /* apply_kernel */
    size_t n = N * C;
    for (size_t i = 0; i < n; i++) {
        int ch = (int)(i % C);
        st(c, y, i, amdim_bn_apply(ld(c, x, i), mean[ch], inv_std[ch], p->gamma[ch], p->beta[ch]));
    }
    return 0;
}

/* batchnorm.cu: eval_kernel */
int batchnorm_forward_eval_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C, const amdim_cuda_bn *p,
                                void *y)
{
    int rc = sizes(c, "batchnorm_forward_eval_cuda", (const int[]){C}, 1);
    if (rc)
        return rc;
    amdim_cuda_bn q = *p;
    size_t n = N * C;
    for (size_t i = 0; i < n; i++) {
        int ch = (int)(i % C);
        st(c, y, i, amdim_bn_apply(ld(c, x, i), q.rmean[ch], amdim_bn_inv_std(q.rvar[ch]), q.gamma[ch], q.beta[ch]));
    }
    return 0;
}

/* batchnorm.cu: batchnorm_backward_cuda (reduce, param_grad_kernel on this
 * rank's sums, sync, backward_kernel with the total count) */
int batchnorm_backward_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C, const amdim_cuda_bn *p,
                            const float *mean, const float *inv_std, const void *dy, void *dx, double *scratch)
{
    const char *op = "batchnorm_backward_cuda";
    int rc = sizes(c, op, (const int[]){C}, 1);
    if (rc)
        return rc;
    double *fin = scratch + amdim_bn_chunks(N) * 2 * C;
    rc = reduce(c, x, dy, N, C, MODE_BWD, NULL, mean, inv_std, scratch, op);
    if (rc)
        return rc;
    /* param_grad_kernel: this rank's share */
    if ((rc = grid_check(c, op, (size_t)(C + 127) / 128)))
        return rc;
    amdim_cuda_bn q = *p;
    for (int ch = 0; ch < C; ch++) {
        q.dgamma[ch] += (float)fin[2 * ch + 1];
        q.dbeta[ch] += (float)fin[2 * ch];
    }
    if ((rc = sync_fin(c, fin, C)))
        return rc;
    /* backward_kernel (N there is total_count here) */
    size_t n = N * C, T = total_count(c, N);
    for (size_t i = 0; i < n; i++) {
        int ch = (int)(i % C);
        st(c, dx, i,
           amdim_bn_backward_element(ld(c, x, i), ld(c, dy, i), mean[ch], inv_std[ch],
                                     amdim_bn_backward_scale(p->gamma[ch], inv_std[ch], (double)T), (double)T,
                                     fin[2 * ch], fin[2 * ch + 1]));
    }
    return 0;
}

/* batchnorm.cu: channel_sum_add_cuda (reduce, channel_add_kernel) */
int channel_sum_add_cuda(const amdim_cuda_ctx *c, const void *x, size_t N, int C, float *out, double *scratch)
{
    const char *op = "channel_sum_add_cuda";
    int rc = sizes(c, op, (const int[]){C}, 1);
    if (rc)
        return rc;
    rc = reduce(c, x, NULL, N, C, MODE_SUM, NULL, NULL, NULL, scratch, op);
    if (rc)
        return rc;
    if ((rc = grid_check(c, op, (size_t)(C + 127) / 128)))
        return rc;
    const double *fin = scratch + amdim_bn_chunks(N) * 2 * C;
    for (int ch = 0; ch < C; ch++)
        out[ch] += (float)fin[2 * ch];
    return 0;
}

/* ---- dropout.cu ---- */

/* dropout.cu: dropout_kernel */
int dropout_cuda(const amdim_cuda_ctx *c, const void *x, const float *mask, size_t n, void *y)
{
    for (size_t i = 0; i < n; i++)
        st(c, y, i, amdim_dropout(ld(c, x, i), mask[i]));
    return 0;
}

/* ---- classifier.cu ---- */

/* classifier.cu: classifier_kernel, one block (256 threads: thread t takes
 * k = t, t + 256, ...) per row */
int classifier_loss_cuda(const amdim_cuda_ctx *c, const float *logits, int n, int n_all, int classes,
                         const int32_t *labels, const double *inv_valid_p, float scale, float *dlogits,
                         void *dlogits_act, double *rows)
{
    const char *op = "classifier_loss_cuda";
    int rc = sizes(c, op, (const int[]){n, n_all, classes}, 3);
    if (rc || (rc = grid_check(c, op, (size_t)n)))
        return rc;
    if (!c->bf16)
        dlogits_act = NULL; /* the float dlogits are the GEMMs' operand */
    double sh[EMU_THREADS];
    for (int i = 0; i < n; i++) {
        double inv_valid = *inv_valid_p;
        const float *l = logits + (size_t)i * classes;
        float *dl = dlogits ? dlogits + (size_t)i * classes : NULL;
        double inv_all = 1.0 / ((double)n_all * classes);
        fill(sh, 0);
        for (int k = 0; k < classes; k++) {
            sh[k % EMU_THREADS] += (double)l[k] * l[k];
            if (dl)
                dl[k] = (float)(scale * amdim_cls_reg_grad(l[k], inv_all));
        }
        double reg = tree_sum(sh);
        int y = labels[i];
        double xent = 0, hit = 0;
        if (y >= 0 && y < classes) {
            fill(sh, -1e30);
            for (int k = 0; k < classes; k++) {
                double z = amdim_cls_clip(l[k]), *zmax = &sh[k % EMU_THREADS];
                *zmax = z > *zmax ? z : *zmax;
            }
            double zmax = tree_max(sh);
            fill(sh, 0);
            for (int k = 0; k < classes; k++)
                sh[k % EMU_THREADS] += exp(amdim_cls_clip(l[k]) - zmax);
            double lse = zmax + log(tree_sum(sh));
            xent = lse - amdim_cls_clip(l[y]);
            { /* thread 0: argmax, first maximum (as the CPU op) */
                int best = 0;
                for (int k = 1; k < classes; k++)
                    best = l[k] > l[best] ? k : best;
                hit = best == y;
            }
            if (dl)
                for (int k = 0; k < classes; k++)
                    dl[k] += (float)(scale * amdim_cls_xent_grad(l[k], lse, k == y, inv_valid));
        }
        if (dl && dlogits_act) /* each thread converts the elements it wrote */
            for (int k = 0; k < classes; k++)
                st(c, dlogits_act, (size_t)i * classes + k, dl[k]);
        rows[3 * (size_t)i] = xent;
        rows[3 * (size_t)i + 1] = reg;
        rows[3 * (size_t)i + 2] = hit;
    }
    return 0;
}

/* ---- nce.cu ---- */

/* nce.cu: nce_rows_kernel, one block (256 threads: thread t takes k = t,
 * t + 256, ... and l = t, t + 256, ...) per source row si */
int nce_rows_cuda(const amdim_cuda_ctx *c, float *S, float *dS, void *dS_act, int Bs, int first, int B, int L,
                  float tclip, int objective, float wloss, float wreg, double *rows)
{
    const char *op = "nce_rows_cuda";
    int rc = sizes(c, op, (const int[]){Bs, first, B, L}, 4);
    if (rc || (rc = grid_check(c, op, (size_t)Bs)))
        return rc;
    if (!c->bf16)
        dS_act = NULL; /* the float dS is the GEMMs' operand */
    double sh[EMU_THREADS], sh2[EMU_THREADS];
    for (int si = 0; si < Bs; si++) {
        int i = first + si;
        size_t BL = (size_t)B * L, n = (size_t)B * BL, lo = (size_t)i * L, hi = lo + L; /* positives [lo, hi) */
        float *t = S + (size_t)si * BL, *g = dS + (size_t)si * BL;
        double sq, loss;
        fill(sh, 0);
        for (size_t k = 0; k < BL; k++) {
            float s = t[k];
            sh[k % EMU_THREADS] += (double)s * s;
            g[k] = (float)(wreg * AMDIM_NCE_REG * 2.0 * s / (double)n);
            t[k] = amdim_tanh_clip(s, tclip);
        }
        sq = tree_sum(sh);
        if (objective == AMDIM_CUDA_NCE) {
            double M, negsum, inv;
            fill(sh, -1e30);
            for (size_t k = 0; k < BL; k++)
                if ((k < lo || k >= hi) && t[k] > sh[k % EMU_THREADS])
                    sh[k % EMU_THREADS] = t[k];
            M = tree_max(sh);
            fill(sh, 0);
            for (size_t k = 0; k < BL; k++)
                if (k < lo || k >= hi)
                    sh[k % EMU_THREADS] += exp(t[k] - M);
            negsum = tree_sum(sh);
            fill(sh, 0);  /* loss */
            fill(sh2, 0); /* inv */
            for (int l = 0; l < L; l++) {
                double p = t[lo + l], ep = exp(p - M), den = ep + negsum;
                sh[l % EMU_THREADS] += -(p - M - log(den));
                sh2[l % EMU_THREADS] += 1.0 / den;
                double d = amdim_nce_pos_grad(ep / den, (double)BL, wloss);
                g[lo + l] += (float)(d * amdim_tanh_clip_grad(p, tclip));
            }
            loss = tree_sum(sh);
            inv = tree_sum(sh2);
            for (size_t k = 0; k < BL; k++)
                if (k < lo || k >= hi) {
                    double d = amdim_nce_neg_grad(t[k], M, inv, (double)BL, wloss);
                    g[k] += (float)(d * amdim_tanh_clip_grad(t[k], tclip));
                }
        } else if (objective == AMDIM_CUDA_JSD) {
            double npos = (double)BL, nneg = (double)B * (B - 1) * L;
            fill(sh, 0);
            for (size_t k = 0; k < BL; k++) {
                double x = t[k], d;
                if (k >= lo && k < hi) {
                    sh[k % EMU_THREADS] -= (log(2.0) - amdim_softplus(-x)) / npos;
                    d = -amdim_sigmoid(-x) / npos;
                } else {
                    sh[k % EMU_THREADS] += (amdim_softplus(-x) + x - log(2.0)) / nneg;
                    d = amdim_sigmoid(x) / nneg;
                }
                g[k] += (float)(wloss * d * amdim_tanh_clip_grad(x, tclip));
            }
            loss = tree_sum(sh);
        } else { /* DV */
            double M, sum, mpos, count = (double)(B - 1) * L;
            fill(sh, -1e30);
            for (size_t k = 0; k < BL; k++)
                if ((k < lo || k >= hi) && t[k] > sh[k % EMU_THREADS])
                    sh[k % EMU_THREADS] = t[k];
            M = tree_max(sh);
            fill(sh, 0);
            for (size_t k = 0; k < BL; k++)
                if (k < lo || k >= hi)
                    sh[k % EMU_THREADS] += exp(t[k] - M);
            sum = tree_sum(sh);
            fill(sh, 0);
            for (int l = 0; l < L; l++)
                sh[l % EMU_THREADS] += t[lo + l];
            mpos = tree_sum(sh) / L;
            double lse = M + log(sum);
            loss = (lse - log(count) - mpos) / B;
            for (size_t k = 0; k < BL; k++) {
                double d = k >= lo && k < hi ? -1.0 / L / B : exp(t[k] - lse) / B;
                g[k] += (float)(wloss * d * amdim_tanh_clip_grad(t[k], tclip));
            }
        }
        if (dS_act) /* after every write to g */
            for (size_t k = 0; k < BL; k++)
                st(c, dS_act, (size_t)si * BL + k, g[k]);
        rows[2 * (size_t)si] = loss;
        rows[2 * (size_t)si + 1] = sq;
    }
    return 0;
}

/* nce.cu: rows_kernel (gather: scatter = 0; scatter-add: scatter = 1) */
static void rows_kernel(const amdim_cuda_ctx *c, const void *a, const int32_t *idx, int B, int R, int scatter,
                        void *b)
{
    size_t n = (size_t)B * R;
    for (size_t j = 0; j < n; j++) {
        size_t i = j / R, ch = j % R, row = i * 25 + idx[i];
        if (scatter)
            st(c, b, row * R + ch, ld(c, b, row * R + ch) + ld(c, a, j));
        else
            st(c, b, j, ld(c, a, row * R + ch));
    }
}

/* nce.cu: rows_kernel, gather */
int gather_rows_cuda(const amdim_cuda_ctx *c, const void *r5, const int32_t *idx, int B, int R, void *src)
{
    int rc = sizes(c, "gather_rows_cuda", (const int[]){B, R}, 2);
    if (rc)
        return rc;
    rows_kernel(c, r5, idx, B, R, 0, src);
    return 0;
}

/* nce.cu: rows_kernel, scatter-add */
int scatter_rows_add_cuda(const amdim_cuda_ctx *c, const void *src, const int32_t *idx, int B, int R, void *r5)
{
    int rc = sizes(c, "scatter_rows_add_cuda", (const int[]){B, R}, 2);
    if (rc)
        return rc;
    rows_kernel(c, src, idx, B, R, 1, r5);
    return 0;
}

/* ---- adam.cu ---- */

/* adam.cu: adam_kernel (the hyper-parameters read when it runs) */
int adam_cuda(const amdim_cuda_ctx *c, float *w, const float *g, float *m, float *v, size_t n,
              const amdim_adam_hparams *hp, uint16_t *bf16)
{
    (void)c;
    amdim_adam_hparams h = *hp;
    for (size_t i = 0; i < n; i++) {
        float mi = m[i], vi = v[i];
        float nw = amdim_adam_element(w[i], g[i], &mi, &vi, &h);
        w[i] = nw;
        m[i] = mi;
        v[i] = vi;
        if (bf16)
            bf16[i] = amdim_bf16_bits(nw);
    }
    return 0;
}

/* ---- layout.cu ---- */

/* layout.cu: to_ohwi_kernel */
int oihw_to_ohwi_cuda(const amdim_cuda_ctx *c, const float *w, int O, int I, int K, int Ipad, void *out)
{
    int rc = sizes(c, "oihw_to_ohwi_cuda", (const int[]){O, I, K, Ipad}, 4);
    if (rc)
        return rc;
    size_t n = (size_t)O * Ipad * K * K;
    for (size_t j = 0; j < n; j++) {
        int i = (int)(j % Ipad), x = (int)(j / Ipad % K), y = (int)(j / ((size_t)Ipad * K) % K);
        int o = (int)(j / ((size_t)Ipad * K * K));
        st(c, out, j, i < I ? w[amdim_oihw_index(o, i, y, x, I, K)] : 0.0f);
    }
    return 0;
}

/* layout.cu: add_oihw_kernel */
int ohwi_to_oihw_add_cuda(const amdim_cuda_ctx *c, const void *w, int O, int I, int K, int Ipad, float *out)
{
    int rc = sizes(c, "ohwi_to_oihw_add_cuda", (const int[]){O, I, K, Ipad}, 4);
    if (rc)
        return rc;
    size_t n = (size_t)O * I * K * K;
    for (size_t j = 0; j < n; j++) {
        int x = (int)(j % K), y = (int)(j / K % K), i = (int)(j / ((size_t)K * K) % I);
        int o = (int)(j / ((size_t)K * K * I));
        out[amdim_oihw_index(o, i, y, x, I, K)] += ld(c, w, amdim_ohwi_index(o, i, y, x, Ipad, K));
    }
    return 0;
}
