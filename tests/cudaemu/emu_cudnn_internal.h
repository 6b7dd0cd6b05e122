/* The cuDNN emulation's private header, shared by emu_cudnn.c (the
 * handle, descriptors, Find and the convolution calls) and emu_conv.c
 * (the descriptors checked into a geometry, the algorithms and their
 * arithmetic). */
#ifndef AMDIM_EMU_CUDNN_INTERNAL_H
#define AMDIM_EMU_CUDNN_INTERNAL_H

#include <stddef.h>

#include <cuda_runtime_api.h>
#include <cudnn.h>

struct cudnnTensorStruct {
    int set; /* cudnnSetTensor4dDescriptor succeeded */
    cudnnDataType_t type;
    cudnnTensorFormat_t format;
    int n, c, h, w;
};

struct cudnnFilterStruct {
    int set;
    cudnnDataType_t type;
    cudnnTensorFormat_t format;
    int k, c, r, s; /* output channels, input channels, height, width */
};

struct cudnnConvolutionStruct {
    int set;
    int pad_h, pad_w, u, v, dil_h, dil_w;
    cudnnConvolutionMode_t mode;
    cudnnDataType_t compute;
    cudnnMathType_t math;
};

/* Element strides of one 4-d array, by logical dimension: for tensors
 * (n, c, h, w), for filters (k, c, r, s). */
typedef struct {
    size_t n, c, h, w;
} strides4;

/* Everything a convolution needs, once the descriptors are checked. */
typedef struct {
    int n, c, h, w; /* input */
    int k, r, s;    /* filter: output channels, height, width */
    int p, q;       /* output height, width */
    int pad_h, pad_w, u, v, dil_h, dil_w;
    int flip; /* CUDNN_CONVOLUTION: the filter is used flipped */
    cudnnDataType_t type;
    cudnnMathType_t math;
    strides4 xs, ws, ys;
    size_t x_count, w_count, y_count;
} conv_geom;

/* ---- algorithms ---- */

enum { OP_FWD, OP_DATA, OP_FILTER };
/* How an algorithm sums one output's terms. */
enum { SUM_FMA, SUM_BLOCKED, SUM_EXACT, SUM_RANDOM };

typedef struct {
    int algo;
    int sum;         /* SUM_*: deterministic unless SUM_RANDOM */
    int tensor_core; /* the documented tensor-core algorithms */
    int ws_kind;     /* workspace: 0 none, 1 an index table, 2 an im2col / FFT copy */
    double rate;     /* relative speed before the timing noise */
} algo_info;

/* A convolution as recorded when the call is made. */
typedef struct {
    int op;
    conv_geom g;
    const algo_info *a;
    const void *in1, *in2; /* FWD: x, w; DATA: w, dy; FILTER: x, dy */
    void *out;
    float alpha, beta;
} conv_work;

/* The output dimensions of x convolved with w under cd, as documented for
 * cudnnGetConvolution2dForwardOutputDim (CUDNN_STATUS_BAD_PARAM for unset
 * descriptors or shapes that do not fit). */
cudnnStatus_t emu_conv_output_dims(const struct cudnnConvolutionStruct *cd, const struct cudnnTensorStruct *x,
                                   const struct cudnnFilterStruct *w, int *n, int *c, int *h, int *wo);
/* Checks x, w, y and cd for one convolution (forward or either backward:
 * x/dx, w/dw and y/dy have the same roles) and fills g. Shapes that do not
 * fit together are CUDNN_STATUS_BAD_PARAM; a data type combination other
 * than FLOAT_CONFIG or BFLOAT16_CONFIG is CUDNN_STATUS_NOT_SUPPORTED. */
cudnnStatus_t emu_conv_check(const struct cudnnTensorStruct *x, const struct cudnnFilterStruct *w,
                             const struct cudnnConvolutionStruct *cd, const struct cudnnTensorStruct *y, conv_geom *g);

/* Operation op's (OP_*) algorithms, *n of them. */
const algo_info *emu_algo_table(int op, int *n);
/* Operation op's algorithm algo, or NULL when it is not emulated. */
const algo_info *emu_algo_find(int op, int algo);
/* Whether m is one of the tensor-op math types. */
int emu_tensor_op_math(cudnnMathType_t m);
/* Whether algorithm a runs geometry g (its math type included): SUCCESS
 * or CUDNN_STATUS_NOT_SUPPORTED by the tensor-core rules (emu_conv.c). */
cudnnStatus_t emu_algo_supports(const algo_info *a, const conv_geom *g);
/* The workspace bytes algorithm a needs for g. */
size_t emu_algo_workspace(const algo_info *a, const conv_geom *g);

/* Runs a conv_work (arg) when its stream gets to it: the emu_work_fn of
 * every convolution; cudaErrorMemoryAllocation when out of memory. */
cudaError_t emu_conv_run(void *arg);

#endif
