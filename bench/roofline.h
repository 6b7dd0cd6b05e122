/* A training step's roofline: its launch list (amdim_model_set_trace),
 * summed per operation, and the time each part would take on a named card
 * under stated efficiencies - shared by bench_roofline (the list walked on
 * the emulated device, any machine) and bench_trainer --roofline (on a
 * GPU, beside the measured step).
 *
 * The model of a part's time: library calls (GEMMs, convolutions) take
 * max(FLOPs / (peak x eff_compute), bytes / (bandwidth x eff_memory));
 * our kernels, which are memory-bound, bytes / (bandwidth x eff_kernel);
 * every launch adds launch_us (a graph replay's gap between dependent
 * kernels). The efficiencies are assumptions, printed with the figures. */
#ifndef AMDIM_BENCH_ROOFLINE_H
#define AMDIM_BENCH_ROOFLINE_H

#include <stdio.h>

enum { ROOFLINE_MAX_OPS = 64 };

typedef struct {
    char op[48];
    long launches;
    double bytes, flops;
} roofline_op;

typedef struct {
    roofline_op ops[ROOFLINE_MAX_OPS];
    int n;
    long launches;
    double bytes, flops;
} roofline;

typedef struct {
    const char *name;
    double tflops;   /* dense bf16 tensor-core peak */
    double tbytes_s; /* memory bandwidth, TB/s */
} roofline_card;

/* NVIDIA's datasheets: H100 SXM 989.4 TFLOP/s dense bf16, 3.35 TB/s;
 * H200 989.4, 4.8 TB/s. */
extern const roofline_card roofline_cards[2];

typedef struct {
    double gemm;     /* GEMMs: of the bf16 peak */
    double conv;     /* cuDNN convolutions, forward and data gradient */
    double wgrad;    /* cuDNN filter gradients (deterministic algorithms) */
    double memory;   /* the libraries' memory traffic: of the bandwidth */
    double kernel;   /* our kernels: of the bandwidth */
    double launch_us;
} roofline_efficiency;

/* The stated defaults: GEMM 0.70, convolution 0.55, filter gradient 0.45,
 * library memory 0.90, our kernels 0.65 (scalar 2-byte loads and a modulo
 * per element), 1.5 us per launch. */
extern const roofline_efficiency roofline_default_efficiency;

/* amdim_trace_fn: sums one report into r (arg). */
void roofline_add(void *arg, const char *op, int launches, double bytes, double flops);
/* Whether op is a library call (GEMM, convolution) rather than our kernel. */
int roofline_is_library(const char *op);
/* The projected time of the whole list (seconds) on card. */
double roofline_seconds(const roofline *r, const roofline_card *card, const roofline_efficiency *e);
/* The table: per operation launches, GB, TFLOP and ms on each card; the
 * totals, the element-wise (our kernels') bytes, the launch count, and
 * the projected step time and MFU for step_flops (the model's count,
 * amdim_model_step_flops). measured_s > 0: the measured step beside it,
 * on the card named measured_on whose dense bf16 peak is measured_peak
 * TFLOP/s (0: unknown). */
void roofline_print(FILE *f, const roofline *r, const roofline_efficiency *e, double step_flops, double measured_s,
                    const char *measured_on, double measured_peak);

#endif
