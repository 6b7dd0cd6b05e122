/* Private to the CUDA backend: the convolutions that are not plain GEMMs
 * (k > 1 or stride > 1), on cuDNN. Activations NHWC, filters OHWI (cuDNN's
 * NHWC filter format; layout.h), no padding (the 128 px stem pads
 * explicitly), cross-correlation as PyTorch. Data float32 with FMA math
 * (no TF32: the parity path), or - amdim_conv_set_bf16, the bf16
 * precision mode - bfloat16 data, filters and filter gradients
 * (CUDNN_DATA_BFLOAT16) on the tensor cores with float accumulation (the
 * backend pads the image's 3 channels to 8 for them, plan.h). Algorithms are
 * chosen once per shape with cudnnFind*Ex (fastest deterministic one that
 * fits the workspace), cached in the handle with the math type cuDNN
 * measured them with. */
#ifndef AMDIM_CUDA_CONV_H
#define AMDIM_CUDA_CONV_H

#include <stddef.h>

#include <cuda_runtime_api.h>
#include <cudnn.h>

typedef struct {
    int n, cin, h, w, cout, k, s; /* input (n, h, w, cin), filter (cout, k, k, cin), stride s */
} amdim_conv_shape;

typedef struct amdim_conv_algos amdim_conv_algos;

typedef struct {
    cudnnHandle_t h;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    void *ws; /* the one workspace */
    size_t ws_size;
    amdim_conv_algos *cache;
    int ncache, cap;
    int bf16; /* 0: float data, CUDNN_FMA_MATH; 1: bfloat16 data, CUDNN_TENSOR_OP_MATH */
    char *err;
    size_t errn;
} amdim_conv;

/* Handle on stream s with a workspace of ws_bytes. 0 or AMDIM_E_* with
 * "call(): message" in err (kept by the handle for later calls).
 * amdim_conv_close accepts a handle whose open failed. */
int amdim_conv_open(amdim_conv *c, cudaStream_t s, size_t ws_bytes, char *err, size_t errn);
void amdim_conv_close(amdim_conv *c);
/* Data type of the convolutions from now on (0 float, 1 bfloat16); forgets
 * the chosen algorithms, measured again on next use. */
void amdim_conv_set_bf16(amdim_conv *c, int on);

/* y = conv(x, w); dx = the input gradient; dw = the filter gradient (all
 * overwritten: beta 0); every buffer in the handle's data type. */
int amdim_conv_forward(amdim_conv *c, const amdim_conv_shape *sh, const void *x, const void *w, void *y);
int amdim_conv_backward_data(amdim_conv *c, const amdim_conv_shape *sh, const void *w, const void *dy, void *dx);
int amdim_conv_backward_filter(amdim_conv *c, const amdim_conv_shape *sh, const void *x, const void *dy, void *dw);

/* The output (n, c, h, w) cuDNN computes for sh with float (bf16 0) or
 * bfloat16 descriptors; needs no GPU. */
int amdim_conv_output_dim(const amdim_conv_shape *sh, int bf16, int out[4], char *err, size_t errn);

#endif
