/* DIM's own ops (dim_ops_internal.h): zero padding, LayerNorm over
 * channels, and the estimators, all plain loops; sums in double. */
#include "dim_ops_internal.h"

#include <math.h>
#include <string.h>

#include "amdim_dim.h"

void amdim_dim_zero_pad_forward(const float *x, int c, int n, int h, int w, int p, float *y)
{
    int hp = h + 2 * p, wp = w + 2 * p;
    size_t plane = (size_t)hp * wp;
    memset(y, 0, (size_t)c * n * plane * sizeof *y);
    for (size_t img = 0; img < (size_t)c * n; img++)
        for (int r = 0; r < h; r++)
            memcpy(y + img * plane + (size_t)(r + p) * wp + p, x + (img * h + r) * w, (size_t)w * sizeof *x);
}

void amdim_dim_zero_pad_backward(const float *dy, int c, int n, int h, int w, int p, float *dx)
{
    int hp = h + 2 * p, wp = w + 2 * p;
    size_t plane = (size_t)hp * wp;
    for (size_t img = 0; img < (size_t)c * n; img++)
        for (int r = 0; r < h; r++)
            memcpy(dx + (img * h + r) * w, dy + img * plane + (size_t)(r + p) * wp + p, (size_t)w * sizeof *dx);
}

void amdim_dim_layernorm_forward(const float *x, int c, size_t cols, const float *gamma, const float *beta, float *y,
                                 float *mean, float *rstd)
{
    for (size_t j = 0; j < cols; j++) {
        double m = 0, v = 0;
        for (int ch = 0; ch < c; ch++)
            m += x[(size_t)ch * cols + j];
        m /= c;
        for (int ch = 0; ch < c; ch++) {
            double d = x[(size_t)ch * cols + j] - m;
            v += d * d;
        }
        mean[j] = (float)m;
        rstd[j] = (float)(1.0 / sqrt(v / c + AMDIM_DIM_LN_EPS));
    }
    for (int ch = 0; ch < c; ch++) {
        const float *xc = x + (size_t)ch * cols;
        float *yc = y + (size_t)ch * cols;
        for (size_t j = 0; j < cols; j++)
            yc[j] = (xc[j] - mean[j]) * rstd[j] * gamma[ch] + beta[ch];
    }
}

/* dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)) with g = dy * gamma. */
void amdim_dim_layernorm_backward(const float *x, int c, size_t cols, const float *gamma, const float *mean,
                                  const float *rstd, const float *dy, float *dx, float *dgamma, float *dbeta,
                                  double *scratch)
{
    double *sg = scratch, *sgx = scratch + cols;
    memset(scratch, 0, 2 * cols * sizeof *scratch);
    for (int ch = 0; ch < c; ch++) {
        const float *xc = x + (size_t)ch * cols, *dyc = dy + (size_t)ch * cols;
        double dg = 0, db = 0;
        for (size_t j = 0; j < cols; j++) {
            double xhat = ((double)xc[j] - mean[j]) * rstd[j], g = (double)dyc[j] * gamma[ch];
            dg += dyc[j] * xhat;
            db += dyc[j];
            sg[j] += g;
            sgx[j] += g * xhat;
        }
        dgamma[ch] += (float)dg;
        dbeta[ch] += (float)db;
    }
    for (int ch = 0; ch < c; ch++) {
        const float *xc = x + (size_t)ch * cols, *dyc = dy + (size_t)ch * cols;
        float *dxc = dx + (size_t)ch * cols;
        for (size_t j = 0; j < cols; j++) {
            double xhat = ((double)xc[j] - mean[j]) * rstd[j], g = (double)dyc[j] * gamma[ch];
            dxc[j] = (float)(rstd[j] * (g - sg[j] / c - xhat * sgx[j] / c));
        }
    }
}

static double softplus(double x) { return (x > 0 ? x : 0) + log1p(exp(-fabs(x))); }
static double sigmoid(double x) { return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)); }

/* §5.1: mean_pos sp(-u) + mean_neg sp(u) - 2 log 2. */
static double jsd(const float *u, int n, int l, float *du, double scale)
{
    size_t row = (size_t)n * l;
    double npos = (double)n * l, nneg = (double)n * (n - 1) * l, sp = 0, sn = 0;
    for (int i = 0; i < n; i++)
        for (size_t c = 0; c < row; c++) {
            double v = u[i * row + c];
            int pos = (int)(c / l) == i;
            if (pos)
                sp += softplus(-v);
            else
                sn += softplus(v);
            if (du)
                du[i * row + c] = (float)(scale * (pos ? -sigmoid(-v) / npos : sigmoid(v) / nneg));
        }
    return sp / npos + sn / nneg - 2 * log(2.0);
}

/* §5.2: row (i, k) = [u_iik] + every u_ijk' (j != i) + l entries of -10;
 * loss = -mean over (i, k) of its log-softmax at the positive. */
static double nce(const float *u, int n, int l, float *du, double scale)
{
    size_t row = (size_t)n * l;
    double loss = 0, w = scale / ((double)n * l);
    for (int i = 0; i < n; i++) {
        const float *ui = u + i * row;
        double mx = AMDIM_DIM_NCE_MASK, sneg = 0, sinv = 0;
        for (size_t c = 0; c < row; c++)
            mx = ui[c] > mx ? ui[c] : mx;
        for (size_t c = 0; c < row; c++)
            if ((int)(c / l) != i)
                sneg += exp(ui[c] - mx);
        sneg += l * exp(AMDIM_DIM_NCE_MASK - mx);
        for (int k = 0; k < l; k++) {
            double e = exp(ui[(size_t)i * l + k] - mx), den = e + sneg;
            loss -= (ui[(size_t)i * l + k] - mx) - log(den);
            sinv += 1 / den;
            if (du)
                du[i * row + (size_t)i * l + k] = (float)(-w * (1 - e / den));
        }
        if (du)
            for (size_t c = 0; c < row; c++)
                if ((int)(c / l) != i)
                    du[i * row + c] = (float)(w * exp(ui[c] - mx) * sinv);
    }
    return loss / ((double)n * l);
}

/* §5.3, amdim's form (D3): LSE over every negative - log(#neg) - mean_pos u. */
static double dv(const float *u, int n, int l, float *du, double scale)
{
    size_t row = (size_t)n * l;
    double npos = (double)n * l, nneg = (double)n * (n - 1) * l, mx = -INFINITY, s = 0, pos = 0;
    for (int i = 0; i < n; i++)
        for (size_t c = 0; c < row; c++)
            if ((int)(c / l) != i && u[i * row + c] > mx)
                mx = u[i * row + c];
    for (int i = 0; i < n; i++)
        for (size_t c = 0; c < row; c++) {
            if ((int)(c / l) != i)
                s += exp(u[i * row + c] - mx);
            else
                pos += u[i * row + c];
        }
    if (du)
        for (int i = 0; i < n; i++)
            for (size_t c = 0; c < row; c++)
                du[i * row + c] = (float)(scale * ((int)(c / l) != i ? exp(u[i * row + c] - mx) / s : -1 / npos));
    return mx + log(s) - log(nneg) - pos / npos;
}

double amdim_dim_estimator_loss(const float *u, int n, int l, int est, float *du, double scale)
{
    switch (est) {
    case AMDIM_DIM_JSD: return jsd(u, n, l, du, scale);
    case AMDIM_DIM_NCE: return nce(u, n, l, du, scale);
    case AMDIM_DIM_DV: return dv(u, n, l, du, scale);
    default: return NAN;
    }
}
