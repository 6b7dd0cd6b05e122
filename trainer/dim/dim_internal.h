/* Private to trainer/dim: the model's description (tensor table, layer
 * shapes) and the step's buffers. dim.c builds it, dim_step.c runs it. */
#ifndef AMDIM_DIM_INTERNAL_H
#define AMDIM_DIM_INTERNAL_H

#include "amdim_dim.h"
#include "ops_internal.h"

#define AMDIM_DIM_MAX_CONV 4

typedef enum { DIM_INIT_FAN_IN, DIM_INIT_SHORTCUT, DIM_INIT_ONE, DIM_INIT_ZERO } amdim_dim_init_kind;

typedef struct {
    amdim_dim_tensor t;
    amdim_dim_init_kind init;
    int fan_in;
} amdim_dim_entry;

/* One conv block: zero padding, conv (no bias), BN2d, ReLU. Tensor w is the
 * weight; bn is the BatchNorm's weight, its bias, running_mean, running_var
 * and num_batches_tracked follow it in the table. */
typedef struct {
    int cin, cout, k, s, p, hin, hout;
    int w, bn;
    float *xpad, *pre, *act, *mean, *istd, *dact; /* (cin, N, hin+2p, hin+2p), (cout, N, hout, hout) x3, (cout) x2 */
} amdim_dim_conv;

/* A layer list of docs/dim.md §2.1: conv blocks on a CNHW map, flatten in
 * C, H, W order, linear + BN1d + ReLU, linear + bias. The encoder is one
 * (out = z) and so is DIM(G)'s local net (out = the MI embedding, §3.2). */
typedef struct {
    int nconv, flat, fc_units, out_units;
    amdim_dim_conv conv[AMDIM_DIM_MAX_CONV];
    int fc_w, fc_bn, out_w, out_b;
    const float *x;                                         /* the input map, set by the forward */
    float *flatx, *fcpre, *fcact, *fc_mean, *fc_istd, *out; /* (N, flat), (N, fc) x3, (fc) x2, (N, out) */
    float *dflat, *dfc, *dpad, *dcrop, *dx;                 /* dx: (cin, N, h, h), NULL = not wanted */
} amdim_dim_stack;

/* MI1x1ConvNet (docs/dim.md §3.1) on x (cin, cols):
 * out = LN(W3 ReLU(BN(W0 x)) + b3 + Ws x). */
typedef struct {
    int cin, units;
    size_t cols;
    int w0, bn, w3, b3, lnw, lnb, ws;
    float *h1pre, *h1, *bn_mean, *bn_istd, *sum, *out, *ln_mean, *ln_rstd; /* (units, cols), ... */
    float *dsum, *dh1, *dx;                                                /* (units, cols) x2, (cin, cols) */
} amdim_dim_mi;

/* The prior-matching discriminator (docs/dim.md §6.3): in -> h1 -> h2 -> 1,
 * ReLU, all biased. Rows 0..N-1 of each buffer hold D(q), rows N..2N-1
 * D(p): one forward over both. */
typedef struct {
    int in, h1, h2;
    int w1, b1, w2, b2, w3, b3;
    float *x, *a1, *a2, *o;      /* (2N, in), (2N, h1), (2N, h2), (2N) */
    float *do_, *da2, *da1, *dq; /* (2N), (2N, h2), (2N, h1), (N, in) */
    float *gv, *ga1, *ga2, *gt;  /* the penalty's per-row vectors: (in), (h1), (h2), (h1) */
    float *scratch_w;            /* throw-away parameter gradients of the generator pass */
} amdim_dim_disc;

struct amdim_dim {
    amdim_dim_config cfg;
    int batch, local_idx, L, has_local, has_global, has_prior;
    int adding_disc; /* while the table is built: new tensors are D's */
    amdim_dim_entry *tab;
    int ntab, cap;
    size_t floats;
    amdim_dim_stack enc;                         /* the encoder: image -> z */
    amdim_dim_mi local, global;                  /* DIM(L) (has_local) */
    amdim_dim_stack g_local;                     /* DIM(G) local net: local map -> (N, C) (has_global) */
    int g_w, g_b;                                /* DIM(G) global net: linear(z -> C) + bias */
    amdim_dim_disc disc;                         /* prior matching (has_prior) */
    float *xin, *zT, *dz, *dztmp;                /* (in_ch, N, H, W), (z, N), (N, z) x2 */
    float *u, *du;                               /* DIM(L) scores (N, N L) */
    float *g_out, *ug, *dug, *dg_out, *dg_local; /* DIM(G): (N, C), (N, N) x2, (N, C) x2 */
    double *ln_scratch;
    amdim_cpu_op_scratch scr;
    char err[256];
};

int amdim_dim_alloc_buffers(amdim_dim *d);
void amdim_dim_free_buffers(amdim_dim *d);

/* dim_prior.c: the discriminator's buffers, and the prior-matching term
 * of a step: from z (N, z) adds gamma * d prior / d z to dz, and D's loss's
 * gradient to D's tensors; fills losses->prior, disc, gp. */
int amdim_dim_prior_alloc(amdim_dim *d);
void amdim_dim_prior_free(amdim_dim *d);
int amdim_dim_prior_term(amdim_dim *d, float *w, float *g, const float *z, const float *prior, float *dz,
                         amdim_dim_losses *losses);

#endif
