/* Private to the trainer: the AMDIM model described once, for every
 * backend. The description owns no activation memory and runs nothing: it
 * is the parameter table (state_dict order, each tensor with its role,
 * shape and offsets into one contiguous block per kind), the layer and
 * head list, the six NCE directions, the host initialisation, the
 * learning-rate schedule, the per-step random draws, and the stage names
 * and FLOP counts benchmarks report.
 *
 * Blocks (float32, host mirror in the model; a device copy per backend):
 *   weights  every tensor, buffers included (num_batches_tracked as a float count)
 *   grads, adam_m, adam_v  every tensor with has_grad, at its goffset
 * Offsets are multiples of AMDIM_TENSOR_ALIGN floats (64 bytes); the gaps
 * between tensors are zero and never read. */
#ifndef AMDIM_ARCH_H
#define AMDIM_ARCH_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_trainer.h"
#include "elementwise_internal.h"

#define AMDIM_TENSOR_ALIGN 16

/* SMALL: U(-0.01, 0.01) (the mixture's fc2 weight, see docs/mixtures.md) */
typedef enum { AMDIM_INIT_NONE, AMDIM_INIT_FAN_IN, AMDIM_INIT_ZERO, AMDIM_INIT_ONE, AMDIM_INIT_SHORTCUT,
               AMDIM_INIT_SMALL } amdim_init_kind;

typedef struct {
    char name[128];
    amdim_role role;
    int probe;             /* part of the online classifiers (evaluator.*) */
    int has_grad;          /* parameters (not buffers): gradient and Adam moments */
    int trainable;         /* has_grad and used (BatchNorm affine of a disabled BN is kept but frozen) */
    int ndim, shape[4];
    size_t size;           /* elements */
    size_t offset;         /* into the weights block */
    size_t goffset;        /* into grads / adam_m / adam_v (has_grad only) */
    amdim_init_kind init;
    int fan_in;            /* of the weight (for a bias: of its weight) */
} amdim_tensor;

/* A BatchNorm: tensor index of its weight; bias, running_mean, running_var
 * and num_batches_tracked follow in that order. on = 0: identity. */
typedef struct {
    int on, t;
} amdim_bn_ref;

typedef enum { AMDIM_LAYER_STEM, AMDIM_LAYER_RES, AMDIM_LAYER_BN } amdim_layer_kind;

/* Encoder layers, in order; activations are (C, B, H, W) on the CPU and
 * (B, H, W, C) on CUDA, the sizes below the same.
 *   STEM: [reflect pad] conv(k, s) + bias, ReLU
 *   RES:  conv_k,s (no bias) [BN] ReLU conv1x1 + avgpool(k, s) zero-padded cin -> cout
 *   BN:   [BN] (identity when off) */
typedef struct {
    amdim_layer_kind kind;
    int cin, cout, k, s, pad, hin, hout;
    int w1, b1, w2; /* tensor indices, -1 if none */
    amdim_bn_ref bn;
} amdim_layer;

/* Projection head on a 5x5 or 7x7 source: BN_out(conv1x1(ReLU([BN_hid](conv1x1(x)))) + shortcut(x)). */
typedef struct {
    int cin, cout, hw, src_layer;
    int w1, w2, ws, bs;
    amdim_bn_ref bn_hid, bn_out;
} amdim_head;

/* Online probes on r1 (n_rkhs): MLP = dropout, linear (no bias) -> hidden,
 * BN1d, ReLU, dropout, linear -> classes; linear = linear -> classes. */
typedef struct {
    int mlp_w1, mlp_w2, mlp_b2, lin_w, lin_b;
    amdim_bn_ref mlp_bn;
} amdim_probes;

/* The mixture function on r1 (mixtures > 1, docs/mixtures.md):
 * h = ReLU(fc1 f + b1) (n_rkhs), out = fc2 h + b2 (K x n_rkhs), and
 * component j's feature f + out_j. Tensor indices, -1 when K = 1. */
typedef struct {
    int w1, b1, w2, b2;
} amdim_mixture;

/* One NCE direction: sources of view src_view (r1, or one drawn location
 * of r5) against all L locations of feature tgt (5 or 7) of the other
 * view. Task 0 = 1t5, 1 = 1t7, 2 = 5t5; each direction weighs 0.5.
 * mixtures: the sources are the K mixture features of r1 (1t5, 1t7 when
 * K > 1), else 1. */
typedef struct {
    int task, src_view, src_feature, tgt_feature, L, mixtures;
} amdim_nce_direction;

enum { AMDIM_NCE_DIRECTIONS = 6, AMDIM_SRC5_LOCATIONS = 25 };

typedef struct {
    amdim_model_config cfg;
    amdim_tensor *tensors;
    int ntensors;
    size_t weights_size, grads_size; /* floats */
    amdim_layer *layers;
    int nlayers, i5, i7; /* i5 / i7: layers whose outputs are the 5x5 / 7x7 sources */
    amdim_head heads[2]; /* 0: rkhs_block_5, 1: rkhs_block_7 */
    amdim_mixture mix;
    amdim_probes probes;
    amdim_nce_direction dirs[AMDIM_NCE_DIRECTIONS];
} amdim_arch;

/* Describes the model of cfg (checked first). AMDIM_E_INVALID with the
 * reason, or AMDIM_E_NOMEM. amdim_arch_free accepts a zeroed arch. */
int amdim_arch_build(amdim_arch *a, const amdim_model_config *cfg, char *err, size_t n);
void amdim_arch_free(amdim_arch *a);

/* The initialisation (docs/spec.md §4.6) of every tensor into weights (PyTorch's
 * U(+-1/sqrt(fan_in)) for weights and biases, zero second convolutions,
 * identity-plus-noise head shortcuts, BN gamma 1, running var 1; the
 * mixture's fc2 weight U(+-0.01) and bias zero), drawn
 * from (seed, AMDIM_STREAM_INIT, tensor index). */
void amdim_arch_init_weights(const amdim_arch *a, float *weights);
/* The classifier phase: re-initialises the probes' tensors from
 * (seed, AMDIM_STREAM_PROBE_INIT, tensor index) and zeroes their moments. */
void amdim_arch_reset_probes(const amdim_arch *a, uint64_t seed, float *weights, float *adam_m, float *adam_v);

/* Learning rate of the next update: warm-up over cfg->warmup updates,
 * x lr_decay at each milestone epoch. */
float amdim_arch_learning_rate(const amdim_model_config *c, uint64_t updates, int epoch);
/* Adam hyper-parameters of update number updates + 1. */
void amdim_arch_adam_hparams(const amdim_model_config *c, uint64_t updates, int epoch, amdim_adam_hparams *h);

/* Random draws of one step for n rows (n = 2B in training: view 1 rows
 * then view 2 rows): src5 (n ints in 0..24, may be NULL) then the dropout
 * masks (n x n_rkhs, n x mlp_hidden; 0/1), read in that order from
 * (cfg->seed, stream, index). */
void amdim_arch_draw(const amdim_model_config *c, uint32_t stream, uint64_t index, int n, int32_t *src5,
                     float *mask_in, float *mask_hidden);

/* Stages for profiles: each layer, the two heads, the objective, the
 * probes. FLOPs (2 x multiply-adds) of a stage in one training step at
 * batch B, forward and backward: the layers and heads run on both views
 * (2B images; the first layer computes no input gradient), the objective
 * counts all six directions, the probes both views' rows. Their sum is
 * within 0.1 % of the count of the authors' PyTorch step
 * (tests/test_flops.c). */
int amdim_arch_stage_count(const amdim_arch *a);
void amdim_arch_stage_name(const amdim_arch *a, int stage, char *buf, size_t n);
void amdim_arch_stage_flops(const amdim_arch *a, int stage, int B, double *forward, double *backward);
/* The stages' forward and backward FLOPs summed: one training step at batch B. */
double amdim_arch_step_flops(const amdim_arch *a, int B);
enum { AMDIM_STAGE_HEAD5_OFFSET = 0, AMDIM_STAGE_HEAD7_OFFSET = 1, AMDIM_STAGE_OBJECTIVE_OFFSET = 2,
       AMDIM_STAGE_PROBES_OFFSET = 3 };

#endif
