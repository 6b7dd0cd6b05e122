/* amdim_dim: Deep InfoMax (docs/dim.md), the CPU reference of one training
 * step: the authors' basic 28 / 32 / 64 px encoder (§2), the DIM(L) and
 * DIM(G) MI networks (§3.1, §3.2), the score tensors (§4), the JSD, NCE
 * and DV estimators (§5, decisions D1-D3), prior matching (§6: the
 * discriminator on sigmoid(z), its GAN loss with the gradient penalty, the
 * generator term) and the encoder loss
 * alpha * global + beta * local + gamma * prior (§7.1), forward and
 * backward, and Adam.
 *
 * Not in this slice: z with mi_units features (the identity global net of
 * §3.1).
 *
 * Parameters live in one float block whose tensors are named as
 * tests/ref/dim_ref.py's state_dict (encoder.net.layers.layer0.conv.weight,
 * local_dim.local_net.block_nonlinear.0.weight, ...), in that order,
 * BatchNorm buffers included (num_batches_tracked as a float). Gradients
 * and Adam moments use blocks of the same size and offsets. */
#ifndef AMDIM_DIM_H
#define AMDIM_DIM_H

#include <stddef.h>
#include <stdint.h>

typedef enum { AMDIM_DIM_JSD = 0, AMDIM_DIM_NCE = 1, AMDIM_DIM_DV = 2 } amdim_dim_estimator;

typedef struct {
    int size;           /* 28, 32 or 64: basic28x28 / basic32x32 / basic64x64 */
    int in_ch;          /* input channels; 0 = the authors' (1 at 28 px, 3 otherwise) */
    int widths[4];      /* conv widths; 0 = the authors' (64, 128, 256, 512); tests shrink them */
    int fc_units;       /* 0 = 1024 */
    int z_units;        /* 0 = 64 */
    int mi_units;       /* C of the MI embeddings; 0 = 2048; must differ from z_units (no identity path) */
    float alpha;        /* DIM(G) weight, >= 0; 0 builds no DIM(G) nets (D8) */
    float beta;         /* DIM(L) weight, >= 0; 0 builds no DIM(L) nets; alpha + beta > 0 */
    float gamma;        /* prior-matching weight, >= 0; 0 builds no discriminator (D8) */
    int disc_hidden[2]; /* the discriminator's hidden widths; 0 = the authors' (1000, 200) */
    int gp_all;         /* gradient penalty: 0 = the authors' last row / N (D4), 1 = the mean over rows */
    int estimator;      /* amdim_dim_estimator */
    uint64_t seed;      /* initialisation: Philox (seed, AMDIM_STREAM_INIT, tensor index) */
} amdim_dim_config;

typedef struct {
    char name[96];
    int ndim; /* 0 for num_batches_tracked */
    int shape[4];
    size_t size;   /* elements */
    size_t offset; /* into the weight, gradient and moment blocks (floats) */
    int trainable; /* 0: a BatchNorm buffer */
    int disc;      /* 1: the discriminator's (its gradient is D's loss's, D5); 0: the encoder side */
} amdim_dim_tensor;

typedef struct {
    double encoder; /* alpha * global + beta * local + gamma * prior: what the encoder side minimises */
    double global;  /* the DIM(G) estimator's loss (0 when alpha = 0) */
    double local;   /* the DIM(L) estimator's loss (0 when beta = 0) */
    double prior;   /* the generator term mean softplus(-D(sigmoid z)) (0 when gamma = 0) */
    double disc;    /* D's loss: mean sp(-D(p)) + mean sp(D(q)) + gp (0 when gamma = 0) */
    double gp;      /* its penalty 0.5 (gp(p) + gp(q)) */
} amdim_dim_losses;

typedef struct {
    float lr, beta1, beta2, eps; /* docs/dim.md §7.3: 1e-4, 0.5, 0.999, 1e-8 */
} amdim_dim_adam;

typedef struct amdim_dim amdim_dim;

/* Builds the tensor table and the scratch of a step on `batch` images
 * (batch >= 2). Returns 0, AMDIM_E_INVALID (message in err), AMDIM_E_UNSUPPORTED
 * (mi_units = z_units) or AMDIM_E_NOMEM. *out is owned by the caller: amdim_dim_destroy. */
int amdim_dim_create(const amdim_dim_config *cfg, int batch, amdim_dim **out, char *err, size_t errlen);
/* Accepts NULL. */
void amdim_dim_destroy(amdim_dim *d);

int amdim_dim_tensor_count(const amdim_dim *d);
/* Tensor i (0 <= i < count); the pointer lives as long as d. */
const amdim_dim_tensor *amdim_dim_tensor_at(const amdim_dim *d, int i);
/* NULL if no tensor has that name. */
const amdim_dim_tensor *amdim_dim_tensor_find(const amdim_dim *d, const char *name);
/* Floats in the weight block (also the gradient and moment blocks). */
size_t amdim_dim_block_floats(const amdim_dim *d);

/* The authors' initialisation (docs/dim.md §2.1, §3.1): conv and linear
 * weights and biases U(+-1/sqrt(fan_in)); the MI shortcut U(-0.01, 0.01)
 * with 1 at (i, i) when out >= in; BN and LayerNorm weight 1, bias 0;
 * running mean 0, variance 1, count 0. Tensor i draws from Philox
 * (seed, AMDIM_STREAM_INIT, i). */
void amdim_dim_init_weights(const amdim_dim *d, float *weights);

/* One training step on x (batch, in_ch, size, size), NCHW float32, already
 * normalised, and with gamma > 0 the prior samples (batch, z_units)
 * (amdim_dim_draw_prior; ignored, may be NULL, when gamma = 0): forward in
 * training mode (BatchNorm batch statistics; the running statistics in
 * `weights` are updated as PyTorch does), the losses, and the gradients
 * written to grads (the block is overwritten; buffers' entries are 0):
 * losses->encoder's for the encoder side, losses->disc's for the
 * discriminator, both at the same parameters (D5). Returns 0,
 * AMDIM_E_INVALID (no prior given) or AMDIM_E_NOMEM; amdim_dim_error says why. */
int amdim_dim_step(amdim_dim *d, float *weights, const float *x, const float *prior, float *grads,
                   amdim_dim_losses *losses);

/* The prior samples of update `update`: U[0, 1) per element (docs/dim.md
 * §6.1), element k of the (batch, z_units) block from Philox word k of
 * (seed, AMDIM_STREAM_STEP, update). */
void amdim_dim_draw_prior(const amdim_dim *d, uint64_t seed, uint64_t update, float *prior);

/* The last step's DIM(L) scores u (batch, batch * L), row i, column
 * j * L + l = <global embedding of image i, local embedding of image j at
 * location l> (docs/dim.md §4), and DIM(G)'s (batch, batch); NULL where the
 * term is absent; valid until the next step or amdim_dim_destroy. */
const float *amdim_dim_scores_local(const amdim_dim *d);
const float *amdim_dim_scores_global(const amdim_dim *d);

/* Adam update number t (t >= 1) of every trainable tensor, as PyTorch's
 * Adam without weight decay (amdim_adam_element); m and v start zeroed.
 * The encoder side and D are stepped alike, each element with its own
 * moments, with the same hyperparameters (D5). */
void amdim_dim_adam_step(const amdim_dim *d, float *weights, const float *grads, float *m, float *v, long t,
                         const amdim_dim_adam *hp);

/* The last failure's message ("" if none). */
const char *amdim_dim_error(const amdim_dim *d);

/* ---- the classifier evaluation (docs/dim.md §2.3, §9.1, D13, D17) ---- */

/* The taps of §2.3, each after its block's ReLU: conv = the last conv
 * block's map flattened in C, H, W order; fc = the fc layer after BN and
 * ReLU; z = the representation. */
typedef enum { AMDIM_DIM_TAP_CONV = 0, AMDIM_DIM_TAP_FC = 1, AMDIM_DIM_TAP_Z = 2 } amdim_dim_tap;

/* Features per image of a tap (0 for an unknown tap). */
int amdim_dim_tap_units(const amdim_dim *d, int tap);

/* The frozen encoder (D17): a forward of n images x (n, in_ch, size, size),
 * 1 <= n <= batch, in evaluation mode (BatchNorm on the running statistics,
 * which stay as they are; no gradient), writing tap `tap` to out
 * (n, amdim_dim_tap_units). Overwrites the step's encoder buffers, so it
 * must not run between a step and its use of them (no caller does).
 * Returns 0, AMDIM_E_INVALID or AMDIM_E_NOMEM; amdim_dim_error says why. */
int amdim_dim_features(amdim_dim *d, const float *weights, const float *x, int n, int tap, float *out);

/* The heads on one tap: the authors' MLP, linear(in -> hidden, bias) ->
 * Dropout(p) -> BN1d(hidden) -> ReLU -> linear(hidden -> classes, bias),
 * and the linear head linear(in -> classes, bias) (ours, D13). Tensors
 * "mlp.net.layers.layer0.fc.weight" ... "linear.fc.bias" in one block as
 * amdim_dim's (BN buffers included). */
typedef struct {
    int in, hidden, classes; /* hidden: the authors' 200 */
    float dropout;           /* the authors' 0.1 */
    uint64_t seed;           /* init: Philox (seed, AMDIM_STREAM_PROBE_INIT, tensor index) */
} amdim_dim_heads_config;

typedef struct {
    double mlp, linear;                    /* mean cross-entropy over the labelled rows (0 if none) */
    int mlp_correct, linear_correct, labelled; /* argmax hits among the labelled rows */
} amdim_dim_head_stats;

typedef struct amdim_dim_heads amdim_dim_heads;

/* Up to `batch` rows a step. Returns 0, AMDIM_E_INVALID or AMDIM_E_NOMEM (message in err). */
int amdim_dim_heads_create(const amdim_dim_heads_config *cfg, int batch, amdim_dim_heads **out, char *err, size_t n);
void amdim_dim_heads_destroy(amdim_dim_heads *h); /* accepts NULL */
int amdim_dim_heads_tensor_count(const amdim_dim_heads *h);
const amdim_dim_tensor *amdim_dim_heads_tensor_at(const amdim_dim_heads *h, int i);
size_t amdim_dim_heads_floats(const amdim_dim_heads *h);
/* PyTorch's Linear rule, U(+-1/sqrt(fan_in)) for weights and biases; BN 1 / 0, running 0 / 1. */
void amdim_dim_heads_init(const amdim_dim_heads *h, float *w);
/* The dropout mask (n, hidden) of update `update`: element k keeps (1)
 * when Philox word k of (seed, AMDIM_STREAM_PROBE_STEP, update), as
 * U[0, 1), is >= p. */
void amdim_dim_heads_draw_mask(const amdim_dim_heads *h, uint64_t update, int n, float *mask);
/* One training step of both heads on features x (n, in), 2 <= n <= batch,
 * labels (n; outside [0, classes) = unlabelled) and mask: forward in
 * training mode (BN batch statistics, running statistics updated), the
 * losses and accuracies in s, the gradients in grads (overwritten; all 0
 * when no row is labelled). Returns 0, AMDIM_E_INVALID or AMDIM_E_NOMEM. */
int amdim_dim_heads_step(amdim_dim_heads *h, float *w, const float *x, int n, const int32_t *labels,
                         const float *mask, float *grads, amdim_dim_head_stats *s);
/* Evaluation mode (no dropout, BN running statistics): the argmax class
 * of each of n <= batch rows for each head. */
void amdim_dim_heads_predict(amdim_dim_heads *h, const float *w, const float *x, int n, int32_t *mlp,
                             int32_t *linear);
/* Adam on the heads' trainable tensors, as amdim_dim_adam_step. */
void amdim_dim_heads_adam_step(const amdim_dim_heads *h, float *w, const float *g, float *m, float *v, long t,
                               const amdim_dim_adam *hp);
/* The cross-entropy of §9.1: the mean over rows with a label in [0, k) of
 * -log softmax, no clip, no regulariser; dlogits (may be NULL) its
 * gradient; hits and labelled rows counted (either may be NULL). */
double amdim_dim_cross_entropy(const float *logits, int n, int k, const int32_t *labels, float *dlogits, int *correct,
                               int *labelled);

#endif
