/* amdim trainer: the AMDIM model - encoder (32/64/128 px), projection
 * heads, NCE (and Deep InfoMax JSD/DV) objective, the two online
 * classifiers, Adam - described once (trainer/model/arch_internal.h) and run by a
 * backend: the CPU reference (trainer/model/cpu/) or CUDA (trainer/model/cuda/).
 *
 * Parameters carry the names of the authors' PyTorch release
 * (encoder.module.layer_list.0.conv.weight, ...), in their state_dict order,
 * with PyTorch's shapes and NCHW weight layout.
 *
 * The model keeps a host mirror of its state (weights, buffers, gradients,
 * Adam moments). With the CPU backend the mirror is the state itself; with
 * CUDA the state lives on the device, amdim_model_pull copies it into the
 * mirror and amdim_model_push copies the mirror back. amdim_param points
 * into the mirror. */
#ifndef AMDIM_TRAINER_H
#define AMDIM_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_common.h"

typedef enum { AMDIM_OBJECTIVE_NCE = 0, AMDIM_OBJECTIVE_JSD = 1, AMDIM_OBJECTIVE_DV = 2 } amdim_objective;

typedef struct {
    int encoder_size;        /* 32, 64 or 128 */
    int ndf, n_rkhs, n_depth;
    int use_bn;              /* BatchNorm inside residual units and heads */
    int n_classes;           /* online classifiers (<= 4096) */
    int mlp_hidden;          /* 1024 */
    float tclip;             /* 20 */
    int objective;           /* amdim_objective */
    /* Adam with L2 weight decay, linear warm-up, step decay at epochs */
    float lr, beta1, beta2, eps, weight_decay;
    int warmup;              /* updates */
    float lr_decay;          /* 0.2 */
    int milestones[8], n_milestones;
    float mean[3], std[3];   /* input normalisation, 0..1 scale */
    uint64_t seed;           /* initialisation and per-step draws */
    /* Mixture-based representations (docs/mixtures.md): K mixture
     * features of each r1 source of the 1t5 / 1t7 directions; 1 = off (the
     * plain model: no mixture tensors, the plain losses bit for bit). */
    int mixtures;            /* K, 1..16 (default 1) */
    float mix_tau;           /* assignment temperature: q = softmax_j(tau s_j) (default 1) */
    float mix_entropy;       /* alpha: weight of H(q) in the reported objective (default 1) */
    int probe_features;      /* what the probes read: 0 r1, 1 the mean of the K mixture features */
} amdim_model_config;

/* The defaults for an encoder size (docs/spec.md §4.7, §7): CIFAR-small-like ndf 128, n_rkhs 1024,
 * depth 10 at 32 px, 192/1536/8 otherwise; lr 2e-4, betas (0.8, 0.999),
 * eps 1e-8, wd 1e-5, warm-up 500, decay 0.2 at [250, 280]; no mixtures
 * (K 1, tau 1, alpha 1, probes on r1). */
void amdim_model_config_default(amdim_model_config *c, int encoder_size);
/* Returns 0 or AMDIM_E_INVALID with the reason. */
int amdim_model_config_check(const amdim_model_config *c, char *err, size_t n);

typedef struct amdim_model amdim_model;

typedef enum { AMDIM_DEVICE_CPU = 0, AMDIM_DEVICE_CUDA = 1 } amdim_device;

/* The one place a device name becomes a device: "cpu", "cuda", or "auto"
 * (CUDA when this build has a CUDA backend verified on a GPU and a GPU is
 * present, else the CPU; the present backend has not been verified yet, so
 * auto is the CPU and CUDA must be asked for by name). AMDIM_E_INVALID for another name; AMDIM_E_UNSUPPORTED for "cuda"
 * in a build without CUDA or on a machine without a usable GPU, with the
 * reason in err. */
int amdim_device_resolve(const char *name, amdim_device *out, char *err, size_t n);
const char *amdim_device_name(amdim_device d);

/* How a device computes; master weights, Adam moments, parameter
 * gradients and checkpoints are fp32 in both. FP32: fp32 throughout, no
 * TF32 (the CPU's only mode, and CUDA's parity mode). BF16 (CUDA only, its
 * default in amdim-train): activations and activation gradients stored as
 * bfloat16 (NHWC), convolutions on bf16 data (CUDNN_DATA_BFLOAT16) and
 * GEMMs on bf16 operands (bf16 copies of the weights, written by Adam),
 * tensor cores with fp32 accumulation; every kernel computes in fp32 /
 * fp64 and rounds only when it stores, and the NCE scores and their
 * log-softmax, clip and regulariser, BatchNorm statistics, logits and
 * losses stay fp32 / fp64 as in FP32. */
typedef enum { AMDIM_PRECISION_FP32 = 0, AMDIM_PRECISION_BF16 = 1 } amdim_precision;
/* "fp32" or "bf16"; AMDIM_E_INVALID with the reason otherwise. */
int amdim_precision_parse(const char *name, amdim_precision *out, char *err, size_t n);
const char *amdim_precision_name(amdim_precision p);

/* Creates the model on a device, initialised from cfg->seed. */
int amdim_model_create_on(amdim_model **out, const amdim_model_config *cfg, amdim_device device, char *err,
                          size_t errlen);
/* amdim_model_create_on(..., AMDIM_DEVICE_CPU, ...) */
int amdim_model_create(amdim_model **out, const amdim_model_config *cfg, char *err, size_t errlen);

/* Host memory a model of cfg needs, in bytes, known before any of it is
 * allocated. state: the host mirror amdim_model_create_on allocates
 * (weights and buffers, gradients, Adam's two moments). activations: the
 * input copies and draws of a training step at `batch` (per rank, in a
 * group of `ranks`; 0 or 1 for one process) and, on the CPU, the
 * activation buffers and scratch its backend allocates for that step, or
 * with training 0 for an evaluation batch (no objective); a CUDA
 * device's own memory is not counted. AMDIM_E_INVALID for a bad cfg or
 * batch. */
typedef struct {
    uint64_t state, activations;
} amdim_memory_need;
int amdim_model_memory_need(const amdim_model_config *cfg, amdim_device device, int batch, int ranks, int training,
                            amdim_memory_need *need, char *err, size_t n);
/* The check every entry point makes before creating a model (amdim-train
 * new, resumed and classifier runs, amdim-embed, amdim-viz): the need
 * against what this process may still allocate (amdim_mem_available:
 * MemAvailable and the cgroup's limit less its usage). AMDIM_E_TOO_LARGE
 * naming `what`, both figures and the bound that applies; 0 when it fits
 * or when neither figure can be read. */
int amdim_model_memory_check(const amdim_model_config *cfg, amdim_device device, int batch, int ranks, int training,
                             const char *what, char *err, size_t n);
void amdim_model_destroy(amdim_model *m); /* accepts NULL */
amdim_device amdim_model_device(const amdim_model *m);
/* Registers host memory that input views will be read from (the loader's
 * rings, page-aligned) with the device, so copies from it are DMA
 * (cudaHostRegister); a no-op on the CPU. Unregister before unmapping it. */
int amdim_model_register_host(amdim_model *m, void *base, size_t bytes);
void amdim_model_unregister_host(amdim_model *m, void *base);
/* The precision of the steps from now on (models start in FP32).
 * AMDIM_E_UNSUPPORTED for BF16 on the CPU. */
int amdim_model_set_precision(amdim_model *m, amdim_precision p);
amdim_precision amdim_model_precision(const amdim_model *m);
/* Threads the backend computes with on the CPU (BLAS), >= 1; the CUDA
 * backend ignores it. */
int amdim_model_set_threads(amdim_model *m, int threads);
/* Host mirror <-> device state (no-ops on the CPU). AMDIM_E_* with the
 * reason in amdim_model_error. */
int amdim_model_pull(amdim_model *m);
int amdim_model_push(amdim_model *m);
const amdim_model_config *amdim_model_get_config(const amdim_model *m);
const char *amdim_model_error(const amdim_model *m);
/* The library algorithms the model's backend chose so far, one per line
 * (CUDA: cuDNN's, per convolution shape; the whole process's table), in
 * buf; "" on the CPU. Returns the length it needed (as snprintf). */
size_t amdim_model_algorithms(const amdim_model *m, char *buf, size_t n);

/* The launch list (a roofline's input): with fn set, every kernel launch
 * and library call the backend makes is reported as it is made - a name
 * ("relu", "BN apply", "convolution", "GEMM", ...), the number of
 * launches (1), the bytes it moves to and from device memory (each array
 * it reads or writes counted once) and its FLOPs (0 for memory-bound
 * kernels). A step replayed from a CUDA graph makes no host calls: trace
 * an eager step (the first one, or with graphs off). NULL stops it. CUDA
 * only: AMDIM_E_UNSUPPORTED on the CPU. */
typedef void (*amdim_trace_fn)(void *arg, const char *op, int launches, double bytes, double flops);
int amdim_model_set_trace(amdim_model *m, amdim_trace_fn fn, void *arg);

/* Data parallelism: the process group a model's training steps
 * communicate over (parallel/amdim_parallel.h makes one on MPI). Every rank holds
 * the same model; a step's batch is this rank's share - positions
 * [rank B, rank B + B) - of a global batch of size x B (amdim-load
 * --shard). The objective is the global batch's: each rank's sources are
 * scored against every rank's targets (r5 and r7 all-gathered, their
 * gradients reduce-scattered back), probe losses are means over the global
 * batch, gradients are summed over ranks, so every rank applies the same
 * update. BatchNorm uses each rank's own statistics (as the authors'
 * multi-GPU runs; running statistics are averaged over ranks after each
 * step) or, with sync_bn, the global batch's - then a step of N ranks
 * computes what one process computes on the global batch, up to the order
 * of summation. Evaluation, BN refresh and embedding never communicate.
 * Every function returns 0 or a negative AMDIM_E_* with the reason from
 * error(ctx). All ranks must call them in the same order. */
typedef struct amdim_comm {
    int rank, size;
    int sync_bn;
    /* run the collective path even at size 1 (tests: a single-rank group
     * whose collectives are copies must give what no group gives, bit for
     * bit; on CUDA it makes a one-rank NCCL communicator) */
    int force;
    void *ctx;
    /* buf (n) = its sum over ranks, in place */
    int (*allreduce_f32)(void *ctx, float *buf, size_t n);
    int (*allreduce_f64)(void *ctx, double *buf, size_t n);
    /* recv (size, n) = every rank's send (n), in rank order */
    int (*allgather_f32)(void *ctx, const float *send, float *recv, size_t n);
    /* recv (n) = the sum over ranks of block `rank` of their send (size, n) */
    int (*reduce_scatter_f32)(void *ctx, const float *send, float *recv, size_t n);
    /* buf (n) = root's buf */
    int (*bcast_f32)(void *ctx, float *buf, size_t n, int root);
    const char *(*error)(void *ctx);
    /* Optional (NULL: none), for a watchdog: kind AMDIM_WATCH_STEP on = 1 /
     * 0 around each training step (a step that never ends is a hung rank),
     * AMDIM_WATCH_HOLD around a phase in which collectives may wait long
     * (rank 0 evaluating while the others wait for its statistics). */
    void (*watch)(void *ctx, int kind, int on);
} amdim_comm;

enum { AMDIM_WATCH_STEP = 0, AMDIM_WATCH_HOLD = 1 };

/* Joins the model to a process group (NULL, or size 1 without force: a
 * single process). The comm must outlive the model. The CPU backend
 * communicates through the comm's collectives; the CUDA backend (in a
 * build with NCCL) makes one NCCL communicator at its first step - the
 * id broadcast with bcast_f32 - and moves targets, gradients and running
 * statistics over it, the loss terms and counts over the comm.
 * AMDIM_E_UNSUPPORTED for mixtures (K > 1) and for CUDA in a build without
 * NCCL; AMDIM_E_INVALID for a bad
 * rank or a missing collective. */
int amdim_model_set_comm(amdim_model *m, const amdim_comm *comm);
/* Every rank's weights, running statistics and Adam state := root's. */
int amdim_model_bcast_state(amdim_model *m, int root);
/* AMDIM_E_INVALID, naming the rank, unless every rank's weights and
 * running statistics are bit for bit rank 0's (a collective). */
int amdim_model_check_replicas(amdim_model *m);

/* total = the loss terms - mix_entropy * alpha (the entropy bonus is
 * reported only: it carries no gradient, see docs/mixtures.md). */
typedef struct {
    double nce_1t5, nce_1t7, nce_5t5, reg, cls_mlp, cls_lin, total;
    double mix_entropy; /* sum over the mixture directions of 0.5 mean H(q); 0 when K = 1 */
    int correct_mlp, correct_lin, labelled; /* over both views */
} amdim_step_stats;

/* One training step on a batch of view pairs, uint8 (batch, size, size, 3)
 * each, normalised inside with the config's mean/std; labels -1 =
 * unlabelled. Draws the 5x5 source locations and dropout masks from the
 * (seed, step) stream, runs forward and backward, and applies Adam with
 * the learning rate for `epoch`. */
int amdim_model_train_step(amdim_model *m, const uint8_t *view1, const uint8_t *view2, const int32_t *labels,
                           int batch, int epoch, amdim_step_stats *stats);

/* Double-buffered input, for a loop that copies batch k+1 while step k
 * computes (amdim_train_run). amdim_model_stage_input starts copying a
 * batch's views (as amdim_model_train_step takes them) and labels (NULL:
 * unlabelled) into input slot 0 or 1 - on CUDA an asynchronous
 * host->device copy on a copy stream, DMA from memory registered with
 * amdim_model_register_host; on the CPU a host copy - and
 * amdim_model_stage_wait returns once that copy is complete, after which
 * the caller may release the source memory. A *_staged step consumes the
 * slot (it waits for the copy on the device itself, without blocking the
 * host), which may then be staged again. Results equal the unstaged step
 * on the same batch bit for bit. AMDIM_E_INVALID for a bad slot or an
 * empty one; AMDIM_E_NOMEM; device errors as AMDIM_E_IO. */
int amdim_model_stage_input(amdim_model *m, int slot, const uint8_t *view1, const uint8_t *view2,
                            const int32_t *labels, int batch);
int amdim_model_stage_wait(amdim_model *m, int slot);
int amdim_model_train_step_staged(amdim_model *m, int slot, int epoch, amdim_step_stats *stats);
int amdim_model_train_probes_step_staged(amdim_model *m, int slot, int epoch, amdim_step_stats *stats);

/* The pieces of a step, for tests: forward + backward (gradients are
 * zeroed first) from normalised float inputs in NCHW, with given source
 * locations (src5[0..B) for view 1 -> view 2, [B..2B) the other way) and
 * dropout masks (2B x n_rkhs and 2B x mlp_hidden, 0/1). In a process
 * group (amdim_model_set_comm) x1, x2 and labels are this rank's B images
 * and the draws are the global batch's (2 N B rows, as one process with
 * the global batch takes them); the stats are the global batch's. */
int amdim_model_forward_backward(amdim_model *m, const float *x1, const float *x2, const int32_t *labels, int batch,
                                 const int32_t *src5, const float *mask_in, const float *mask_hidden,
                                 amdim_step_stats *stats);
/* Adam update with the scheduled learning rate for `epoch`; counts updates. */
int amdim_model_adam_step(amdim_model *m, int epoch);
/* Learning rate the next update would use. */
float amdim_model_learning_rate(const amdim_model *m, int epoch);
uint64_t amdim_model_updates(const amdim_model *m);
/* Sets the update count (when restoring a checkpoint). */
void amdim_model_set_updates(amdim_model *m, uint64_t updates);

/* Outputs of the last forward, in NCHW: which = 1, 5 or 7; view 0 or 1.
 * r1 is (B, n_rkhs, 1, 1), r5 (B, n_rkhs, 5, 5), r7 (B, n_rkhs, 7, 7). */
int amdim_model_output(const amdim_model *m, int view, int which, float *out);
/* Copies the logits of the last training forward (2B rows x classes):
 * head 0 = MLP, 1 = linear. */
int amdim_model_logits(const amdim_model *m, int head, float *out);

/* Evaluation: the probes' features (B, n_rkhs) - r1, or the mean of the
 * mixture features with probe_features 1 - of uint8 NHWC images with
 * BatchNorm in eval mode, and the classifiers' logits (B, n_classes) each
 * (either may be NULL). */
int amdim_model_evaluate(amdim_model *m, const uint8_t *images, int batch, float *features, float *logits_mlp,
                         float *logits_lin);

/* Mixture pictures (paper Figure 2): for a batch of uint8 NHWC test images
 * (eval mode), the winning component argmax_j q(j | i, l) at each 7x7
 * location l of the 1t7 direction, with image i's own r1 mixture features
 * as sources and r7 of every image of the batch as positives and
 * negatives: q depends on the batch. winner: (batch, 49). Needs
 * mixtures > 1 (AMDIM_E_INVALID otherwise) and batch >= 2. */
int amdim_model_mixture_assign(amdim_model *m, const uint8_t *images, int batch, int32_t *winner);

/* Per-stage timing of training steps, for benchmarks (off by default).
 * Stages: each encoder layer, the two heads, the objective, the probes.
 * flops: multiply-adds x 2 of one step's forward (both views) and
 * backward passes of that stage. */
void amdim_model_profile(amdim_model *m, int on);
int amdim_model_profile_count(const amdim_model *m);
void amdim_model_profile_get(const amdim_model *m, int i, const char **name, double *forward_s, double *backward_s,
                             double *flops_forward, double *flops_backward);

/* FLOPs (2 x multiply-adds) of one training step at `batch`: forward of
 * both views, the objective, the probes and the backward pass (the
 * profile's stages summed; Adam not counted). What TFLOP/s figures divide. */
double amdim_model_step_flops(const amdim_model *m, int batch);

/* For benchmarks: the device's name, memory (bytes) and dense GEMM rates,
 * measured now - a square gemm_n^3 cublasGemmEx with bf16 inputs and fp32
 * accumulation, and one in fp32 without TF32 (the fp32 trainer's math) on
 * uniformly random operands - timed with CUDA events after a warm-up call;
 * and the card's dense bf16 peak from NVIDIA's datasheet figure for its
 * name (0 for a card the table does not know). AMDIM_E_UNSUPPORTED on the
 * CPU or in a build without CUDA; AMDIM_E_IO / AMDIM_E_NOMEM with the
 * failing call in err. */
typedef struct {
    char name[256];
    size_t memory;
    double bf16_tflops, fp32_tflops; /* measured */
    double peak_bf16_tflops;         /* datasheet, dense (no sparsity) */
} amdim_device_info;
/* The dense bf16 tensor-core peak in TFLOP/s of the CUDA device called
 * `name` (cudaDeviceProp.name) by NVIDIA's datasheets, or 0 if unknown. */
double amdim_cuda_peak_bf16_tflops(const char *name);
int amdim_device_probe(amdim_device d, int gemm_n, amdim_device_info *info, char *err, size_t n);
/* Device memory in use on the model's device (total - free, so the CUDA
 * context and every library's allocations count) and its total, in bytes.
 * The backend allocates its arenas before a step runs, so after one step
 * this is the run's peak. AMDIM_E_UNSUPPORTED on the CPU. */
int amdim_model_device_memory(amdim_model *m, size_t *used, size_t *total);

/* Evaluation support: a forward pass in training mode over uint8 images
 * (encoder and probes) that only refreshes the BatchNorm running
 * statistics, as the authors do before measuring test accuracy. */
int amdim_model_refresh_bn(amdim_model *m, const uint8_t *images, int batch);

/* The classifier-only phase: re-initialise both probes (and their Adam
 * state) from `seed`, then train only them on features of the frozen
 * encoder (BatchNorm in eval mode) with amdim_model_train_probes_step. */
int amdim_model_reset_probes(amdim_model *m, uint64_t seed);
/* Only the probes train from now on (set by reset_probes; for resuming). */
void amdim_model_freeze_encoder(amdim_model *m);
int amdim_model_train_probes_step(amdim_model *m, const uint8_t *view1, const uint8_t *view2, const int32_t *labels,
                                  int batch, int epoch, amdim_step_stats *stats);

/* What a tensor is: checkpoints, initialisation and the optimiser go by
 * this, never by name. */
typedef enum {
    AMDIM_ROLE_CONV_WEIGHT,   /* (cout, cin, k, k) */
    AMDIM_ROLE_LINEAR_WEIGHT, /* (out, in) */
    AMDIM_ROLE_BIAS,
    AMDIM_ROLE_BN_WEIGHT,
    AMDIM_ROLE_BN_BIAS,
    AMDIM_ROLE_BN_MEAN,       /* running statistics: buffers */
    AMDIM_ROLE_BN_VAR,
    AMDIM_ROLE_BN_COUNT,      /* num_batches_tracked: an int64 scalar in checkpoints */
} amdim_role;

/* Parameters and buffers in state_dict order; pointers into the host
 * mirror (pull first to read a device's state, push after writing). */
typedef struct {
    const char *name;
    amdim_role role;
    int probe;    /* the online classifiers (evaluator.*) */
    int ndim, shape[4];
    size_t size;
    float *data;  /* values (num_batches_tracked is stored as a float count) */
    float *grad;  /* NULL for buffers */
    float *adam_m, *adam_v;
    int buffer;   /* running statistics, num_batches_tracked */
    int used;     /* receives gradients (BatchNorm tensors are kept but unused where use_bn = 0) */
} amdim_param;

int amdim_model_param_count(const amdim_model *m);
void amdim_model_param(const amdim_model *m, int i, amdim_param *p);
/* Index of the named parameter, or -1. */
int amdim_model_find(const amdim_model *m, const char *name);

#endif
