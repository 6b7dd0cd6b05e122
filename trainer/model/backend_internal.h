/* Private to the trainer: the step-level interface every backend
 * implements, and the model object the backends share (redis's
 * ConnectionType in miniature). model.c owns the description, the host
 * mirror, the schedule, the draws and the counters; a backend owns its
 * activations and, on a device, the device copy of the state.
 *
 * Every function returns 0 or a negative AMDIM_E_* with the reason written
 * to m->err. Backends never call exit(). */
#ifndef AMDIM_BACKEND_H
#define AMDIM_BACKEND_H

#include "amdim_trainer.h"
#include "arch_internal.h"

/* A batch of view pairs: uint8 (B, S, S, 3) views normalised inside, or
 * (for tests) already normalised float (B, 3, S, S), or (staged > 0) the
 * uint8 views the backend's stage_input copied into input slot staged - 1. */
typedef struct {
    const uint8_t *u8[2];
    const float *f32[2];
    const int32_t *labels; /* B, -1 = unlabelled */
    int batch;
    int staged;
} amdim_step_input;

/* Host-drawn randomness of one step (amdim_arch_draw): src5 for rows
 * [0, B) (view 1 -> view 2) and [B, 2B) (the other way); dropout masks
 * for the probe rows. */
typedef struct {
    const int32_t *src5;
    const float *mask_in, *mask_hidden;
} amdim_step_draws;

/* An input slot of amdim_model_stage_input: the labels are always copied
 * here, the views too when the backend has no stage_input. */
typedef struct {
    int batch; /* 0: empty */
    int32_t *labels;
    uint8_t *views; /* host copies: view 1 then view 2, (batch, S, S, 3) each */
    size_t labels_cap, views_cap;
} amdim_input_slot;

typedef struct amdim_backend {
    const char *name;
    /* Allocates the backend state (m->bs) and takes the host mirror. */
    int (*open)(amdim_model *m);
    void (*close)(amdim_model *m); /* accepts a model whose open failed */
    /* Zeroes the gradients, runs both views forward (BatchNorm in training
     * mode), the objective over the six directions, the probes on r1 of
     * both views (gradient stopped), and the whole backward pass. */
    int (*forward_backward)(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d,
                            amdim_step_stats *st);
    /* The classifier phase: zeroes the gradients, encodes both views with
     * the frozen encoder in eval mode, probes forward and backward. */
    int (*probe_step)(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d, amdim_step_stats *st);
    /* Adam over the trainable tensors (only the probes' when probes_only). */
    int (*adam)(amdim_model *m, const amdim_adam_hparams *h, int probes_only);
    /* Eval mode: the probes' features (B, n_rkhs) and both probes' logits (B, classes); each may be NULL. */
    int (*evaluate)(amdim_model *m, const uint8_t *images, int batch, float *features, float *logits_mlp,
                    float *logits_lin);
    /* Training-mode forward of encoder and probes that only updates BatchNorm running statistics. */
    int (*refresh_bn)(amdim_model *m, const uint8_t *images, int batch, const amdim_step_draws *d);
    /* The last training forward's outputs, NCHW (see amdim_model_output), and logits. */
    int (*output)(const amdim_model *m, int view, int which, float *out);
    int (*logits)(const amdim_model *m, int head, float *out);
    /* Page-locks host memory the inputs will come from (the loader's rings)
     * so copies from it are DMA; NULL where there is nothing to gain. */
    int (*register_host)(amdim_model *m, void *base, size_t bytes);
    void (*unregister_host)(amdim_model *m, void *base);
    /* Starts copying uint8 views (batch, S, S, 3) each into input slot 0
     * or 1 and returns; stage_wait returns once that copy is complete (the
     * source may be released then). On CUDA the copy runs on the copy
     * stream, after the last step that read the slot, while the compute
     * stream works. NULL: model.c keeps host copies (the CPU). */
    int (*stage_input)(amdim_model *m, int slot, const uint8_t *view1, const uint8_t *view2, int batch);
    int (*stage_wait)(amdim_model *m, int slot);
    /* amdim_model_set_precision with bf16 0 or 1 (NULL: fp32 only). */
    int (*set_precision)(amdim_model *m, int bf16);
    /* amdim_model_mixture_assign (NULL: mixtures unsupported). */
    int (*mixture_assign)(amdim_model *m, const uint8_t *images, int batch, int32_t *winner);
    /* CPU threads for the backend's own compute (NULL: none to set). */
    int (*set_threads)(amdim_model *m, int threads);
    /* Device state <-> host mirror (NULL: the mirror is the state). */
    int (*pull)(amdim_model *m);
    int (*push)(amdim_model *m);
    /* The library algorithms chosen so far, as text (amdim_model_algorithms;
     * NULL: none to report). */
    size_t (*algorithms)(const amdim_model *m, char *buf, size_t n);
    /* The launch list (amdim_model_set_trace; NULL: not kept). */
    int (*set_trace)(amdim_model *m, amdim_trace_fn fn, void *arg);
} amdim_backend;

extern const amdim_backend amdim_backend_cpu;
/* The backend of device d in this build (backends.c), or NULL. */
const amdim_backend *amdim_backend_of(amdim_device d);
/* Bytes the CPU backend allocates for a training step at batch B (per
 * rank, in a group of `ranks`; 1 or 0: one process), or with training 0
 * for evaluation at batch B: activation buffers and the scratch its ops
 * grow to. */
size_t amdim_cpu_step_bytes(const amdim_arch *a, int B, int ranks, int training);
#ifdef AMDIM_HAVE_CUDA_BACKEND
extern const amdim_backend amdim_backend_cuda;
/* 1 when a CUDA device can be used, else 0 with the reason. */
int amdim_cuda_available(char *why, size_t n);
/* amdim_device_probe on CUDA (trainer/model/cuda/device_probe.c). */
int amdim_cuda_probe(int gemm_n, char *name, size_t name_n, size_t *memory, double *bf16_tflops,
                     double *fp32_tflops, char *err, size_t n);
/* Device memory in use (total - free, cudaMemGetInfo) and the total. */
int amdim_cuda_memory(size_t *used, size_t *total, char *err, size_t n);
#endif

struct amdim_model {
    amdim_model_config cfg;
    amdim_arch arch;
    float *weights, *grads, *adam_m, *adam_v; /* host mirror, arch.weights_size / grads_size floats */
    amdim_device device;
    amdim_precision precision;
    const amdim_backend *be;
    void *bs;            /* backend state */
    int batch;           /* batch of the last training forward (0: none yet) */
    uint64_t updates;    /* Adam updates */
    uint64_t steps;      /* forward passes in training mode (keys the BN-refresh draws) */
    int probes_only;     /* Adam skips the encoder */
    /* draws of the current step, grown to the batch */
    int32_t *src5;
    float *mask_in, *mask_hidden;
    int draws_rows;
    /* data parallelism (amdim_model_set_comm): the process group (NULL:
     * none; else size > 1 or forced), and this rank's rows of the global
     * batch's draws */
    const amdim_comm *comm;
    int32_t *src5_local;
    float *mask_in_local, *mask_hidden_local;
    int local_rows;
    amdim_input_slot input[2]; /* amdim_model_stage_input */
    /* profile per stage (amdim_arch_stage_*): seconds and FLOPs */
    int profile;
    double *prof_f, *prof_b, *prof_ff, *prof_fb;
    char (*prof_name)[96];
    char err[512];
};

/* For backends: adds a timed stage run of batch B (no-op unless profiling). */
void amdim_model_prof_add(amdim_model *m, int stage, int backward, double seconds, int B);

#define AMDIM_MFAIL(m, st, ...) amdim_fail((m)->err, sizeof (m)->err, (st), __VA_ARGS__)

#endif
