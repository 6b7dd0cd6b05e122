/* CPU reference ops (see ops.h). Convolutions go through im2col + BLAS
 * sgemm on chunks of the batch; everything else is plain loops around the
 * per-element functions the CUDA kernels share (elementwise.h). */
#include "ops_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_common.h"
#include "elementwise_internal.h"

#define IM2COL_MAX_FLOATS (16u << 20) /* 64 MB of columns per chunk */

float *amdim_cpu_op_scratch_get(amdim_cpu_op_scratch *s, size_t floats)
{
    if (floats > s->cap) {
        free(s->p);
        s->p = malloc((floats ? floats : 1) * sizeof(float));
        s->cap = s->p ? floats : 0;
    }
    return s->p;
}

void amdim_cpu_op_scratch_free(amdim_cpu_op_scratch *s)
{
    free(s->p);
    s->p = NULL;
    s->cap = 0;
}

/* cols (cin*k*k, nc*ho*wo) for images n0 .. n0+nc-1 of x (cin, n, h, w). */
static void im2col(const float *x, int cin, int n, int h, int w, int k, int s, int n0, int nc, float *cols)
{
    int ho = (h - k) / s + 1, wo = (w - k) / s + 1;
    size_t plane = (size_t)h * w, ncols = (size_t)nc * ho * wo;
    for (int c = 0; c < cin; c++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                float *row = cols + ((size_t)(c * k + ky) * k + kx) * ncols;
                for (int i = 0; i < nc; i++) {
                    const float *src = x + ((size_t)c * n + n0 + i) * plane;
                    for (int oy = 0; oy < ho; oy++) {
                        const float *sr = src + (size_t)(oy * s + ky) * w + kx;
                        float *dr = row + ((size_t)i * ho + oy) * wo;
                        for (int ox = 0; ox < wo; ox++)
                            dr[ox] = sr[ox * s];
                    }
                }
            }
}

/* dx += scatter of dcols (the adjoint of im2col). */
static void col2im_add(const float *cols, int cin, int n, int h, int w, int k, int s, int n0, int nc, float *dx)
{
    int ho = (h - k) / s + 1, wo = (w - k) / s + 1;
    size_t plane = (size_t)h * w, ncols = (size_t)nc * ho * wo;
    for (int c = 0; c < cin; c++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                const float *row = cols + ((size_t)(c * k + ky) * k + kx) * ncols;
                for (int i = 0; i < nc; i++) {
                    float *dst = dx + ((size_t)c * n + n0 + i) * plane;
                    for (int oy = 0; oy < ho; oy++) {
                        float *dr = dst + (size_t)(oy * s + ky) * w + kx;
                        const float *sr = row + ((size_t)i * ho + oy) * wo;
                        for (int ox = 0; ox < wo; ox++)
                            dr[ox * s] += sr[ox];
                    }
                }
            }
}

static int chunk_images(int n, size_t K, size_t hwo)
{
    size_t per = K * hwo;
    size_t c = per ? IM2COL_MAX_FLOATS / per : (size_t)n;
    return c < 1 ? 1 : c > (size_t)n ? n : (int)c;
}

size_t amdim_cpu_conv2d_scratch_floats(int cin, int n, int h, int k, int s)
{
    if (k == 1 && s == 1)
        return 0; /* one GEMM on the activations */
    size_t K = (size_t)cin * k * k, ho = (size_t)(h - k) / s + 1, hwo = ho * ho;
    return 2 * K * (size_t)chunk_images(n, K, hwo) * hwo;
}

int amdim_cpu_conv2d_forward(const float *x, int cin, int n, int h, int w, const float *wt, const float *bias, int cout, int k,
                       int s, float *y, amdim_cpu_op_scratch *scr)
{
    int ho = (h - k) / s + 1, wo = (w - k) / s + 1;
    size_t hwo = (size_t)ho * wo, total = (size_t)n * hwo;
    if (k == 1 && s == 1) {
        /* (cout, cin) x (cin, n*h*w) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, (int)total, cin, 1.0f, wt, cin, x, (int)total,
                    0.0f, y, (int)total);
    } else {
        size_t K = (size_t)cin * k * k;
        int step = chunk_images(n, K, hwo);
        float *cols = amdim_cpu_op_scratch_get(scr, K * (size_t)step * hwo);
        if (!cols)
            return AMDIM_E_NOMEM;
        for (int n0 = 0; n0 < n; n0 += step) {
            int nc = n - n0 < step ? n - n0 : step;
            im2col(x, cin, n, h, w, k, s, n0, nc, cols);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cout, nc * (int)hwo, (int)K, 1.0f, wt, (int)K, cols,
                        nc * (int)hwo, 0.0f, y + (size_t)n0 * hwo, (int)total);
        }
    }
    if (bias)
        for (int c = 0; c < cout; c++) {
            float *p = y + (size_t)c * total, b = bias[c];
            for (size_t i = 0; i < total; i++)
                p[i] += b;
        }
    return AMDIM_OK;
}

int amdim_cpu_conv2d_backward(const float *x, int cin, int n, int h, int w, const float *wt, int cout, int k, int s,
                        const float *dy, float *dx, float *dw, float *dbias, amdim_cpu_op_scratch *scr)
{
    int ho = (h - k) / s + 1, wo = (w - k) / s + 1;
    size_t hwo = (size_t)ho * wo, total = (size_t)n * hwo;
    if (dbias)
        for (int c = 0; c < cout; c++) {
            const float *p = dy + (size_t)c * total;
            double acc = 0;
            for (size_t i = 0; i < total; i++)
                acc += p[i];
            dbias[c] += (float)acc;
        }
    if (k == 1 && s == 1) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, cout, cin, (int)total, 1.0f, dy, (int)total, x, (int)total,
                    1.0f, dw, cin);
        if (dx)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cin, (int)total, cout, 1.0f, wt, cin, dy, (int)total,
                        0.0f, dx, (int)total);
        return AMDIM_OK;
    }
    size_t K = (size_t)cin * k * k;
    int step = chunk_images(n, K, hwo);
    float *cols = amdim_cpu_op_scratch_get(scr, 2 * K * (size_t)step * hwo);
    if (!cols)
        return AMDIM_E_NOMEM;
    float *dcols = cols + K * (size_t)step * hwo;
    if (dx)
        memset(dx, 0, (size_t)cin * n * h * w * sizeof(float));
    for (int n0 = 0; n0 < n; n0 += step) {
        int nc = n - n0 < step ? n - n0 : step;
        int ncol = nc * (int)hwo;
        im2col(x, cin, n, h, w, k, s, n0, nc, cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, cout, (int)K, ncol, 1.0f, dy + (size_t)n0 * hwo,
                    (int)total, cols, ncol, 1.0f, dw, (int)K);
        if (dx) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, ncol, cout, 1.0f, wt, (int)K,
                        dy + (size_t)n0 * hwo, (int)total, 0.0f, dcols, ncol);
            col2im_add(dcols, cin, n, h, w, k, s, n0, nc, dx);
        }
    }
    return AMDIM_OK;
}

void amdim_cpu_reflect_pad_forward(const float *x, int c, int n, int h, int w, int p, float *y)
{
    int H = h + 2 * p, W = w + 2 * p;
    for (size_t plane = 0; plane < (size_t)c * n; plane++) {
        const float *src = x + plane * h * w;
        float *dst = y + plane * H * W;
        for (int yy = 0; yy < H; yy++) {
            int sy = amdim_reflect_index(yy - p, h);
            for (int xx = 0; xx < W; xx++)
                dst[yy * W + xx] = src[sy * w + amdim_reflect_index(xx - p, w)];
        }
    }
}

void amdim_cpu_relu_forward(float *y, size_t count)
{
    for (size_t i = 0; i < count; i++)
        y[i] = amdim_relu(y[i]);
}

void amdim_cpu_relu_backward(const float *y, float *dy, size_t count)
{
    for (size_t i = 0; i < count; i++)
        dy[i] = amdim_relu_grad(y[i], dy[i]);
}

void amdim_cpu_avgpool_pad_forward(const float *x, int cin, int n, int h, int w, int k, int s, int cout, float *y)
{
    int ho = (h - k) / s + 1, wo = (w - k) / s + 1;
    float inv = 1.0f / (float)(k * k);
    for (int c = 0; c < cin; c++)
        for (int i = 0; i < n; i++) {
            const float *src = x + ((size_t)c * n + i) * h * w;
            float *dst = y + ((size_t)c * n + i) * ho * wo;
            for (int oy = 0; oy < ho; oy++)
                for (int ox = 0; ox < wo; ox++) {
                    float acc = 0;
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++)
                            acc += src[(oy * s + ky) * w + ox * s + kx];
                    dst[oy * wo + ox] = acc * inv;
                }
        }
    memset(y + (size_t)cin * n * ho * wo, 0, (size_t)(cout - cin) * n * ho * wo * sizeof(float));
}

void amdim_cpu_avgpool_pad_backward(const float *dy, int cin, int n, int h, int w, int k, int s, float *dx)
{
    int ho = (h - k) / s + 1, wo = (w - k) / s + 1;
    float inv = 1.0f / (float)(k * k);
    for (int c = 0; c < cin; c++)
        for (int i = 0; i < n; i++) {
            const float *src = dy + ((size_t)c * n + i) * ho * wo;
            float *dst = dx + ((size_t)c * n + i) * h * w;
            for (int oy = 0; oy < ho; oy++)
                for (int ox = 0; ox < wo; ox++) {
                    float g = src[oy * wo + ox] * inv;
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++)
                            dst[(oy * s + ky) * w + ox * s + kx] += g;
                }
        }
}

/* Sums per channel, over ranks when p->sync asks for it. */
static int bn_sum_over_ranks(const amdim_cpu_bn_params *p, double *acc, size_t n)
{
    if (!p->sync || !p->sync->sync_bn) /* a forced one-rank group goes through it too */
        return AMDIM_OK;
    return p->sync->allreduce_f64(p->sync->ctx, acc, n);
}

static double bn_total(const amdim_cpu_bn_params *p, size_t count)
{
    int ranks = p->sync && p->sync->sync_bn ? p->sync->size : 1;
    return (double)count * ranks;
}

int amdim_cpu_batchnorm_forward_train(const float *x, int c, size_t count, const amdim_cpu_bn_params *p, float *y, float *mean,
                                float *inv_std)
{
    double *acc = malloc(2 * (size_t)c * sizeof *acc), total = bn_total(p, count);
    if (!acc)
        return AMDIM_E_NOMEM;
    int rc;
    for (int ch = 0; ch < c; ch++) {
        const float *xc = x + (size_t)ch * count;
        double m = 0;
        for (size_t i = 0; i < count; i++)
            m += xc[i];
        acc[ch] = m;
    }
    if ((rc = bn_sum_over_ranks(p, acc, (size_t)c)))
        goto out;
    for (int ch = 0; ch < c; ch++) {
        const float *xc = x + (size_t)ch * count;
        double m = acc[ch] / total, v = 0;
        for (size_t i = 0; i < count; i++)
            v += ((double)xc[i] - m) * ((double)xc[i] - m);
        acc[c + ch] = v;
    }
    if ((rc = bn_sum_over_ranks(p, acc + c, (size_t)c)))
        goto out;
    for (int ch = 0; ch < c; ch++) {
        const float *xc = x + (size_t)ch * count;
        double m = acc[ch] / total, v = acc[c + ch];
        double var = v / total;
        float is = amdim_bn_inv_std(var);
        mean[ch] = (float)m;
        inv_std[ch] = is;
        float g = p->gamma[ch], b = p->beta[ch], mf = (float)m;
        float *yc = y + (size_t)ch * count;
        for (size_t i = 0; i < count; i++)
            yc[i] = amdim_bn_apply(xc[i], mf, is, g, b);
        double unbiased = total > 1 ? v / (total - 1) : var;
        p->rmean[ch] = amdim_bn_running(p->rmean[ch], (float)m);
        p->rvar[ch] = amdim_bn_running(p->rvar[ch], (float)unbiased);
    }
    p->nbt[0] += 1;
out:
    free(acc);
    return rc;
}

void amdim_cpu_batchnorm_forward_eval(const float *x, int c, size_t count, const amdim_cpu_bn_params *p, float *y)
{
    for (int ch = 0; ch < c; ch++) {
        float is = amdim_bn_inv_std(p->rvar[ch]), g = p->gamma[ch], b = p->beta[ch], m = p->rmean[ch];
        const float *xc = x + (size_t)ch * count;
        float *yc = y + (size_t)ch * count;
        for (size_t i = 0; i < count; i++)
            yc[i] = amdim_bn_apply(xc[i], m, is, g, b);
    }
}

int amdim_cpu_batchnorm_backward(const float *x, int c, size_t count, const amdim_cpu_bn_params *p, const float *mean,
                           const float *inv_std, const float *dy, float *dx)
{
    double *acc = malloc(2 * (size_t)c * sizeof *acc), total = bn_total(p, count);
    if (!acc)
        return AMDIM_E_NOMEM;
    for (int ch = 0; ch < c; ch++) {
        const float *xc = x + (size_t)ch * count, *dyc = dy + (size_t)ch * count;
        float m = mean[ch], is = inv_std[ch];
        double sdy = 0, sdyx = 0;
        for (size_t i = 0; i < count; i++) {
            double xh = (double)(xc[i] - m) * is;
            sdy += dyc[i];
            sdyx += dyc[i] * xh;
        }
        p->dgamma[ch] += (float)sdyx; /* this rank's share */
        p->dbeta[ch] += (float)sdy;
        acc[ch] = sdy;
        acc[c + ch] = sdyx;
    }
    int rc = bn_sum_over_ranks(p, acc, 2 * (size_t)c);
    for (int ch = 0; ch < c && !rc; ch++) {
        const float *xc = x + (size_t)ch * count, *dyc = dy + (size_t)ch * count;
        float m = mean[ch], is = inv_std[ch], g = p->gamma[ch];
        float *dxc = dx + (size_t)ch * count;
        double scale = amdim_bn_backward_scale(g, is, total);
        for (size_t i = 0; i < count; i++)
            dxc[i] = amdim_bn_backward_element(xc[i], dyc[i], m, is, scale, total, acc[ch], acc[c + ch]);
    }
    free(acc);
    return rc;
}

void amdim_cpu_mixture_forward(const float *fT, int R, int B, int K, const float *w1, const float *b1, const float *w2,
                         const float *b2, float *h, float *mixT)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, B, R, 1.0f, w1, R, fT, B, 0.0f, h, B);
    for (int c = 0; c < R; c++)
        for (int i = 0; i < B; i++)
            h[(size_t)c * B + i] = amdim_relu(h[(size_t)c * B + i] + b1[c]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K * R, B, R, 1.0f, w2, R, h, B, 0.0f, mixT, B);
    for (int j = 0; j < K; j++)
        for (int c = 0; c < R; c++)
            for (int i = 0; i < B; i++)
                mixT[((size_t)j * R + c) * B + i] += b2[(size_t)j * R + c] + fT[(size_t)c * B + i];
}

int amdim_cpu_mixture_backward(const float *fT, const float *h, int R, int B, int K, const float *w1, const float *w2,
                         const float *dmixT, float *dfT, float *dw1, float *db1, float *dw2, float *db2,
                         amdim_cpu_op_scratch *scr)
{
    float *dh = amdim_cpu_op_scratch_get(scr, (size_t)R * B);
    if (!dh)
        return AMDIM_E_NOMEM;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, K * R, R, B, 1.0f, dmixT, B, h, B, 1.0f, dw2, R);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, B, K * R, 1.0f, w2, R, dmixT, B, 0.0f, dh, B);
    for (size_t r = 0; r < (size_t)K * R; r++) {
        double sum = 0;
        for (int i = 0; i < B; i++)
            sum += dmixT[r * B + i];
        db2[r] += (float)sum;
    }
    for (int c = 0; c < R; c++) {
        double sum = 0;
        for (int i = 0; i < B; i++) {
            size_t k = (size_t)c * B + i;
            dh[k] = amdim_relu_grad(h[k], dh[k]);
            sum += dh[k];
            for (int j = 0; j < K; j++) /* the residual connections */
                dfT[k] += dmixT[(size_t)j * R * B + k];
        }
        db1[c] += (float)sum;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, R, B, 1.0f, dh, B, fT, B, 1.0f, dw1, R);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, B, R, 1.0f, w1, R, dh, B, 1.0f, dfT, B);
    return AMDIM_OK;
}

void amdim_cpu_linear_forward(const float *x, int n, int in, const float *wt, const float *bias, int out, float *y)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, wt, in, 0.0f, y, out);
    if (bias)
        for (int i = 0; i < n; i++)
            for (int o = 0; o < out; o++)
                y[(size_t)i * out + o] += bias[o];
}

void amdim_cpu_linear_backward(const float *x, int n, int in, const float *wt, int out, const float *dy, float *dx, float *dw,
                     float *dbias)
{
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
    if (dbias)
        for (int o = 0; o < out; o++) {
            double acc = 0;
            for (int i = 0; i < n; i++)
                acc += dy[(size_t)i * out + o];
            dbias[o] += (float)acc;
        }
    if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, wt, in, 0.0f, dx, in);
}

static void transpose(const float *a, int rows, int cols, float *b)
{
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            b[(size_t)c * rows + r] = a[(size_t)r * cols + c];
}

int amdim_cpu_batchnorm1d_forward_train(const float *x, int n, int c, const amdim_cpu_bn_params *p, float *y, float *mean,
                                  float *inv_std, amdim_cpu_op_scratch *scr)
{
    float *t = amdim_cpu_op_scratch_get(scr, 2 * (size_t)n * c);
    if (!t)
        return AMDIM_E_NOMEM;
    transpose(x, n, c, t);
    int rc = amdim_cpu_batchnorm_forward_train(t, c, (size_t)n, p, t + (size_t)n * c, mean, inv_std);
    transpose(t + (size_t)n * c, c, n, y);
    return rc;
}

void amdim_cpu_batchnorm1d_forward_eval(const float *x, int n, int c, const amdim_cpu_bn_params *p, float *y)
{
    for (int i = 0; i < n; i++)
        for (int ch = 0; ch < c; ch++)
            y[(size_t)i * c + ch] =
                amdim_bn_apply(x[(size_t)i * c + ch], p->rmean[ch], amdim_bn_inv_std(p->rvar[ch]), p->gamma[ch], p->beta[ch]);
}

int amdim_cpu_batchnorm1d_backward(const float *x, int n, int c, const amdim_cpu_bn_params *p, const float *mean,
                             const float *inv_std, const float *dy, float *dx, amdim_cpu_op_scratch *scr)
{
    float *t = amdim_cpu_op_scratch_get(scr, 3 * (size_t)n * c);
    if (!t)
        return AMDIM_E_NOMEM;
    float *tdy = t + (size_t)n * c, *tdx = tdy + (size_t)n * c;
    transpose(x, n, c, t);
    transpose(dy, n, c, tdy);
    int rc = amdim_cpu_batchnorm_backward(t, c, (size_t)n, p, mean, inv_std, tdy, tdx);
    transpose(tdx, c, n, dx);
    return rc;
}

void amdim_cpu_dropout_forward(const float *x, const float *mask, float p, size_t count, float *y)
{
    AMDIM_ASSERT(p == AMDIM_DROPOUT_P);
    for (size_t i = 0; i < count; i++)
        y[i] = amdim_dropout(x[i], mask[i]);
}

void amdim_cpu_dropout_backward(const float *dy, const float *mask, float p, size_t count, float *dx)
{
    AMDIM_ASSERT(p == AMDIM_DROPOUT_P);
    for (size_t i = 0; i < count; i++)
        dx[i] = amdim_dropout(dy[i], mask[i]);
}

int amdim_cpu_count_labelled(const int32_t *labels, int n, int classes)
{
    int valid = 0;
    for (int i = 0; i < n; i++)
        valid += labels[i] >= 0 && labels[i] < classes;
    return valid;
}

double amdim_cpu_classifier_loss(const float *logits, int n, int classes, const int32_t *labels, float *dlogits, float scale,
                       int *correct, int *labelled)
{
    return amdim_cpu_classifier_loss_part(logits, n, classes, labels, dlogits, scale, n,
                                    amdim_cpu_count_labelled(labels, n, classes), correct, labelled);
}

double amdim_cpu_classifier_loss_part(const float *logits, int n, int classes, const int32_t *labels, float *dlogits,
                                float scale, double n_all, double valid_all, int *correct, int *labelled)
{
    int valid = amdim_cpu_count_labelled(labels, n, classes), hits = 0;
    double xent = 0, reg = 0;
    double inv_valid = valid_all > 0 ? 1.0 / valid_all : 0.0, inv_all = 1.0 / (n_all * classes);
    for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * classes;
        float *dl = dlogits ? dlogits + (size_t)i * classes : NULL;
        for (int k = 0; k < classes; k++) {
            reg += (double)l[k] * l[k];
            if (dl)
                dl[k] = (float)(scale * amdim_cls_reg_grad(l[k], inv_all));
        }
        int y = labels[i];
        if (y < 0 || y >= classes)
            continue; /* unlabelled */
        /* softmax cross-entropy on z = 10 tanh(l / 10) */
        double zmax = -1e30, sum = 0;
        int best = 0;
        for (int k = 0; k < classes; k++) {
            double z = amdim_cls_clip(l[k]);
            zmax = z > zmax ? z : zmax;
            best = l[k] > l[best] ? k : best;
        }
        hits += best == y;
        for (int k = 0; k < classes; k++)
            sum += exp(amdim_cls_clip(l[k]) - zmax);
        double lse = zmax + log(sum);
        xent += lse - amdim_cls_clip(l[y]);
        if (dl)
            for (int k = 0; k < classes; k++)
                dl[k] += (float)(scale * amdim_cls_xent_grad(l[k], lse, k == y, inv_valid));
    }
    if (correct)
        *correct = hits;
    if (labelled)
        *labelled = valid;
    return xent * inv_valid + AMDIM_CLS_REG * reg * inv_all;
}
