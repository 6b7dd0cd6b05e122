/* Private to the CUDA backend: the convolutions that are not plain GEMMs
 * (k > 1 or stride > 1), on cuDNN. Activations NHWC, filters OHWI (cuDNN's
 * NHWC filter format; layout.h), no padding (the 128 px stem pads
 * explicitly), cross-correlation as PyTorch. Data float32 with FMA math
 * (no TF32: the parity path), or - amdim_conv_set_bf16, the bf16
 * precision mode - bfloat16 data, filters and filter gradients
 * (CUDNN_DATA_BFLOAT16) on the tensor cores with float accumulation (the
 * backend pads the image's 3 channels to 8 for them, plan.h).
 *
 * Algorithms: one choice per (device, operation, shape, data type,
 * workspace) for the whole process, in a table every handle shares, so
 * every model in a process convolves a shape the same way and rounds the
 * same. A shape's choice is measured once, with cudnnFind*Ex: the
 * deterministic algorithms that fit the workspace and keep the mode's math
 * (CUDNN_FMA_MATH for fp32; tensor-op or default for bf16), and of those
 * within AMDIM_CONV_TIE of the fastest the lowest-numbered algorithm
 * (tensor-op math before default for one algorithm listed twice) -
 * so that timing noise between two near-equal algorithms cannot flip the
 * choice from run to run. The ranks of a group take rank 0's choices
 * (amdim_conv_choice_set); only rank 0 measures. */
#ifndef AMDIM_CUDA_CONV_H
#define AMDIM_CUDA_CONV_H

#include <stddef.h>

#include <cuda_runtime_api.h>
#include <cudnn.h>

typedef struct {
    int n, cin, h, w, cout, k, s; /* input (n, h, w, cin), filter (cout, k, k, cin), stride s */
} amdim_conv_shape;

enum { AMDIM_CONV_FWD, AMDIM_CONV_DATA, AMDIM_CONV_FILTER, AMDIM_CONV_OPS };

/* Algorithms within this fraction of the fastest measured count as tied. */
#define AMDIM_CONV_TIE 0.05

typedef struct {
    cudnnHandle_t h;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    void *ws; /* the one workspace */
    size_t ws_size;
    int device;
    int bf16; /* 0: float data, CUDNN_FMA_MATH; 1: bfloat16 data, CUDNN_TENSOR_OP_MATH */
    char *err;
    size_t errn;
} amdim_conv;

/* Handle on stream s with a workspace of ws_bytes. 0 or AMDIM_E_* with
 * "call(): message" in err (kept by the handle for later calls).
 * amdim_conv_close accepts a handle whose open failed. */
int amdim_conv_open(amdim_conv *c, cudaStream_t s, size_t ws_bytes, char *err, size_t errn);
void amdim_conv_close(amdim_conv *c);
/* Data type of the convolutions from now on (0 float, 1 bfloat16). */
void amdim_conv_set_bf16(amdim_conv *c, int on);

/* Makes sure op on shape sh has its choice in the table, measuring it
 * with cudnnFind*Ex on these buffers when it has none (Find overwrites
 * the operation's output: y, dx or dw). in / w / out are the operation's
 * operands in the order the calls below take them. */
int amdim_conv_prepare(amdim_conv *c, int op, const amdim_conv_shape *sh, const void *a, const void *b, void *out);

/* y = conv(x, w); dx = the input gradient; dw = the filter gradient (all
 * overwritten: beta 0); every buffer in the handle's data type. A shape
 * without a choice is measured first (amdim_conv_prepare). Errors name
 * the operation and the shape. */
int amdim_conv_forward(amdim_conv *c, const amdim_conv_shape *sh, const void *x, const void *w, void *y);
int amdim_conv_backward_data(amdim_conv *c, const amdim_conv_shape *sh, const void *w, const void *dy, void *dx);
int amdim_conv_backward_filter(amdim_conv *c, const amdim_conv_shape *sh, const void *x, const void *dy, void *dw);

/* The table's choice for op on sh in c's data type and workspace: 1 and
 * *algo, *math (cudnnMathType_t); 0 when there is none. */
int amdim_conv_choice_get(const amdim_conv *c, int op, const amdim_conv_shape *sh, int *algo, int *math);
/* Sets (or replaces) that choice: the ranks of a group adopt rank 0's. */
int amdim_conv_choice_set(amdim_conv *c, int op, const amdim_conv_shape *sh, int algo, int math);

/* The table as text, one line per choice ("fwd bf16 (32, 30, 30, 8) k3
 * s1 -> 16: IMPLICIT_PRECOMP_GEMM tensor-op 0.123 ms of 3 measured"), in
 * the order the choices were made; "" when empty. Returns the length it
 * needed (as snprintf). */
size_t amdim_conv_table_text(char *buf, size_t n);
/* Forgets every choice (tests). */
void amdim_conv_table_clear(void);

/* The output (n, c, h, w) cuDNN computes for sh with float (bf16 0) or
 * bfloat16 descriptors; needs no GPU. */
int amdim_conv_output_dim(const amdim_conv_shape *sh, int bf16, int out[4], char *err, size_t errn);

#endif
