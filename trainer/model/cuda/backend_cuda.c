/* The CUDA backend (docs/cuda.md): its table, lifecycle and the
 * step-level functions of trainer/model/backend_internal.h, over the parts in
 * blas.c, graphs.c, encoder_cuda.c, objectives_cuda.c, nccl.c, staging.c
 * and device.c (cuda_internal.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

_Static_assert((int)AMDIM_CUDA_NCE == (int)AMDIM_OBJECTIVE_NCE && (int)AMDIM_CUDA_JSD == (int)AMDIM_OBJECTIVE_JSD &&
                   (int)AMDIM_CUDA_DV == (int)AMDIM_OBJECTIVE_DV,
               "kernels_internal.h objective codes");
_Static_assert((int)AMDIM_CUDA_E_DEVICE == (int)AMDIM_E_IO, "kernels_internal.h device status");

int amdim_cuda_fail(amdim_model *m, cudaError_t e, const char *call)
{
    return AMDIM_MFAIL(m, e == cudaErrorMemoryAllocation ? AMDIM_E_NOMEM : AMDIM_E_IO, "%s(): %s (%s)%s", call,
                       cudaGetErrorString(e), cudaGetErrorName(e), amdim_cuda_async_hint(e));
}

/* Waits for the stream: asynchronous failures become a status here. */
int amdim_cuda_finish(amdim_model *m)
{
    AMDIM_CU(cudaStreamSynchronize(cuda_of(m)->stream), "cudaStreamSynchronize");
    return AMDIM_OK;
}

/* A range in the activation arena lies inside one planned buffer (the
 * plan's extents): every copy and clear is checked, so a size in the wrong
 * unit (floats for bf16 activations) cannot spill into the next buffer
 * unnoticed. Pointers elsewhere (host, the parameter arena) pass. */
static void check_range(const amdim_model *m, const void *p, size_t bytes)
{
    const amdim_cuda_state *c = cuda_of(m);
    const char *a = c->act, *q = p;
    if (!a || q < a || q >= a + c->plan.total)
        return;
    size_t off = (size_t)(q - a);
    for (size_t i = 0; i < c->plan.nextents; i++)
        if (off >= c->plan.extents[i][0] && off + bytes <= c->plan.extents[i][0] + c->plan.extents[i][1])
            return;
    AMDIM_ASSERT(!"a copy or clear crosses the end of a planned activation buffer");
}

/* The launch list: kept in the kernels' context, which every launcher and
 * amdim_cuda_note read. */
static int cuda_set_trace(amdim_model *m, amdim_trace_fn fn, void *arg)
{
    cuda_of(m)->ctx.trace = fn;
    cuda_of(m)->ctx.trace_arg = arg;
    return AMDIM_OK;
}

void amdim_cuda_note(const amdim_model *m, const char *op, double bytes, double flops)
{
    const amdim_cuda_ctx *k = kctx(m);
    if (k->trace)
        k->trace(k->trace_arg, op, 1, bytes, flops);
}

int amdim_cuda_copy(amdim_model *m, void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    check_range(m, dst, bytes);
    check_range(m, src, bytes);
    AMDIM_CU(cudaMemcpyAsync(dst, src, bytes, kind, cuda_of(m)->stream), "cudaMemcpyAsync");
    amdim_cuda_note(m, kind == cudaMemcpyDeviceToDevice ? "copy" : "host copy",
                    kind == cudaMemcpyDeviceToDevice ? 2.0 * bytes : (double)bytes, 0);
    if (kind == cudaMemcpyDeviceToHost)
        return amdim_cuda_finish(m);
    return AMDIM_OK;
}

int amdim_cuda_zero(amdim_model *m, void *p, size_t bytes)
{
    check_range(m, p, bytes);
    AMDIM_CU(cudaMemsetAsync(p, 0, bytes, cuda_of(m)->stream), "cudaMemsetAsync");
    amdim_cuda_note(m, "zero", (double)bytes, 0);
    return AMDIM_OK;
}

double amdim_cuda_tick(amdim_model *m)
{
    if (!m->profile)
        return 0;
    cudaStreamSynchronize(cuda_of(m)->stream); /* an error resurfaces at the function's amdim_cuda_finish() */
    return amdim_now();
}
void amdim_cuda_prof(amdim_model *m, int stage, int backward, double t0, int B)
{
    if (m->profile) {
        cudaStreamSynchronize(cuda_of(m)->stream);
        amdim_model_prof_add(m, stage, backward, amdim_now() - t0, B);
    }
}

/* ---- the backend functions ----------------------------------------------------------- */

static int cuda_push(amdim_model *m);

/* fp32: float activations, FMA convolutions and pedantic fp32 GEMMs (the
 * CPU parity path); bf16: bfloat16 activations and operands, tensor cores
 * with fp32 accumulation (see the top of this file). A change of type
 * gives up the last step's outputs (the arena is rebuilt for the new
 * type at the next step) and rewrites the weights' compute copies. */
static int cuda_set_precision(amdim_model *m, int bf16)
{
    amdim_cuda_state *c = m->bs;
    bf16 = !!bf16;
    if (bf16) { /* bf16 tensor-core math and CUDNN_DATA_BFLOAT16 convolutions need sm_80 or later */
        int dev = 0, major = 0, minor = 0;
        AMDIM_CU(cudaGetDevice(&dev), "cudaGetDevice");
        AMDIM_CU(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
        AMDIM_CU(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
        if (major < 8)
            return AMDIM_MFAIL(
                m, AMDIM_E_UNSUPPORTED,
                "bf16: GPU %d has compute capability %d.%d; bf16 storage needs 8.0 or later (--precision fp32)", dev,
                major, minor);
    }
    cublasStatus_t st = cublasSetMathMode(c->blas, bf16 ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH);
    if (st != CUBLAS_STATUS_SUCCESS)
        return AMDIM_MFAIL(m, AMDIM_E_IO, "cublasSetMathMode(): %s", cublasGetStatusString(st));
    AMDIM_CU(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize"); /* nothing in flight reads the old types */
    if (bf16 != c->bf16)
        m->batch = 0;
    amdim_conv_set_bf16(&c->conv, bf16);
    if (bf16 != c->bf16)
        c->prepared_batch = c->synced_batch = 0;
    c->bf16 = bf16;
    c->ctx.bf16 = bf16;
    c->es = bf16 ? 2 : sizeof(float);
    /* other GEMM kernels and convolution algorithms: capture again after a warm-up */
    amdim_cuda_graph_drop(&c->fb_graph, &c->fb_warm);
    for (int i = 0; i < 2; i++)
        amdim_cuda_graph_drop(&c->adam_graph[i], &c->adam_warm[i]);
    AMDIM_TRY(amdim_cuda_refresh_copies(m));
    return amdim_cuda_finish(m);
}

static int adam_chunks_build(amdim_model *m, int probes_only);

static void cuda_close(amdim_model *m)
{
    amdim_cuda_state *c = m->bs;
    if (!c)
        return;
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    if (c->copy)
        cudaStreamSynchronize(c->copy);
    amdim_cuda_graph_drop(&c->fb_graph, &c->fb_warm);
    for (int i = 0; i < 2; i++)
        amdim_cuda_graph_drop(&c->adam_graph[i], &c->adam_warm[i]);
#ifdef AMDIM_HAVE_NCCL
    amdim_cuda_nccl_close(c);
#endif
    for (int i = 0; i < 2; i++) {
        cudaFree(c->input[i]);
        if (c->copied[i])
            cudaEventDestroy(c->copied[i]);
        if (c->consumed[i])
            cudaEventDestroy(c->consumed[i]);
    }
    cudaFree(c->act);
    cudaFree(c->params);
    cudaFree(c->adam_chunks[0]);
    cudaFree(c->adam_chunks[1]);
    amdim_conv_close(&c->conv);
    if (c->blas)
        cublasDestroy(c->blas);
    for (int i = 0; i < c->n_lt; i++)
        amdim_cuda_lt_plan_free(&c->lt_plans[i]);
    free(c->lt_plans);
    if (c->lt)
        cublasLtDestroy(c->lt);
    cudaFree(c->blas_ws);
    cudaFree(c->scalars);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    if (c->copy)
        cudaStreamDestroy(c->copy);
    amdim_cuda_plan_free(&c->plan);
    amdim_cuda_param_plan_free(&c->pp);
    free(c->stats);
    free(c->labels2);
    free(c);
    m->bs = NULL;
}

static int cuda_open(amdim_model *m)
{
    amdim_cuda_state *c = calloc(1, sizeof *c);
    if (!c)
        return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory");
    m->bs = c;
    c->ctx.err = m->err;
    c->ctx.errn = sizeof m->err;
    c->es = sizeof(float); /* fp32 until set_precision */
    const char *fuse = getenv("AMDIM_CUDA_FUSE");
    if (fuse && strcmp(fuse, "0") != 0 && strcmp(fuse, "1") != 0)
        return AMDIM_MFAIL(m, AMDIM_E_INVALID, "AMDIM_CUDA_FUSE=%s: expected 0 (no fused GEMMs) or 1 (the default)",
                           fuse);
    c->fuse = !(fuse && strcmp(fuse, "0") == 0);
    AMDIM_CU(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    c->ctx.stream = c->stream;
    AMDIM_CU(cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking), "cudaStreamCreateWithFlags (copy)");
    for (int i = 0; i < 2; i++) {
        AMDIM_CU(cudaEventCreateWithFlags(&c->copied[i], cudaEventDisableTiming), "cudaEventCreateWithFlags");
        AMDIM_CU(cudaEventCreateWithFlags(&c->consumed[i], cudaEventDisableTiming), "cudaEventCreateWithFlags");
    }
    cublasStatus_t bs = cublasCreate(&c->blas);
    if (bs == CUBLAS_STATUS_SUCCESS)
        bs = cublasSetStream(c->blas, c->stream);
    if (bs == CUBLAS_STATUS_SUCCESS) /* fp32 GEMMs stay fp32 (no TF32) */
        bs = cublasSetMathMode(c->blas, CUBLAS_PEDANTIC_MATH);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return AMDIM_MFAIL(m, AMDIM_E_IO, "cublasCreate(): %s", cublasGetStatusString(bs));
    /* after cublasSetStream (which resets it): eager and captured GEMMs see the same workspace */
    cudaError_t e = cudaMalloc(&c->blas_ws, BLAS_WORKSPACE_BYTES);
    if (e != cudaSuccess) {
        c->blas_ws = NULL;
        return amdim_cuda_fail(m, e, "cudaMalloc (cuBLAS workspace)");
    }
    bs = cublasSetWorkspace(c->blas, c->blas_ws, BLAS_WORKSPACE_BYTES);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return AMDIM_MFAIL(m, AMDIM_E_IO, "cublasSetWorkspace(): %s", cublasGetStatusString(bs));
    if ((bs = cublasLtCreate(&c->lt)) != CUBLAS_STATUS_SUCCESS) {
        c->lt = NULL;
        return AMDIM_MFAIL(m, AMDIM_E_IO, "cublasLtCreate(): %s", cublasLtGetStatusString(bs));
    }
    if ((e = cudaMalloc((void **)&c->scalars, sizeof *c->scalars)) != cudaSuccess) {
        c->scalars = NULL;
        return amdim_cuda_fail(m, e, "cudaMalloc (step scalars)");
    }
    AMDIM_TRY(amdim_conv_open(&c->conv, c->stream, CUDNN_WORKSPACE_BYTES, m->err, sizeof m->err));
    if (amdim_cuda_param_plan_build(&c->pp, &m->arch))
        return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory (parameter plan)");
    e = cudaMalloc((void **)&c->params, c->pp.total * sizeof(float));
    if (e != cudaSuccess) {
        c->params = NULL;
        return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "cudaMalloc(%zu MiB of parameters): %s", c->pp.total * sizeof(float) >> 20,
                           cudaGetErrorString(e));
    }
    AMDIM_TRY(adam_chunks_build(m, 0));
    AMDIM_TRY(adam_chunks_build(m, 1));
    return cuda_push(m);
}

/* A training step's device work once its inputs (x, labels, draws, device
 * scalars) are in place: gradients zeroed, both views forward, the
 * objective, the probes, both views backward. What the step's graph holds. */
static int forward_backward_body(amdim_model *m, int B)
{
    AMDIM_TRY(amdim_cuda_zero(m, cuda_of(m)->params + cuda_of(m)->pp.grads, m->arch.grads_size * sizeof(float)));
    for (int v = 0; v < 2; v++)
        AMDIM_TRY(amdim_cuda_encoder_forward(m, v, B, 1, 1));
    int stage = m->arch.nlayers + AMDIM_STAGE_OBJECTIVE_OFFSET, group = cuda_of(m)->plan.ranks > 0;
    double t0 = amdim_cuda_tick(m);
    if (group)
        AMDIM_TRY(amdim_cuda_gather_targets(m, B));
    AMDIM_TRY(amdim_cuda_objectives(m, B));
    if (group)
        AMDIM_TRY(amdim_cuda_scatter_target_grads(m, B));
    amdim_cuda_prof(m, stage, 0, t0, B);
    amdim_cuda_prof(m, stage, 1, amdim_now(), B); /* the backward FLOPs; its time is in the forward's */
    AMDIM_TRY(amdim_cuda_gather_r1(m, 0, B));
    AMDIM_TRY(amdim_cuda_gather_r1(m, 1, B));
    AMDIM_TRY(amdim_cuda_probes_train(m, B));
    if (group)
        AMDIM_TRY(amdim_cuda_bucket_launch(m, m->arch.nlayers + 2));
    for (int v = 0; v < 2; v++)
        AMDIM_TRY(amdim_cuda_encoder_backward(m, v, B, group && v == 1));
    return group ? amdim_cuda_reduce_device_tail(m) : AMDIM_OK;
}

/* Inputs first (eager: host copies, the staged slot's events), then the
 * body (a graph after the warm-up; eager with a group), then the
 * statistics to the host (summed over the group). */
static int cuda_forward_backward(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d,
                                 amdim_step_stats *st)
{
    amdim_cuda_state *c = m->bs;
    int B = in->batch, valid;
    double valid_all;
    AMDIM_TRY(amdim_cuda_ensure_buffers_for(m, B, 1));
    AMDIM_TRY(amdim_cuda_choose_convs(m, B, 1));
    if (m->comm)
        AMDIM_TRY(amdim_cuda_nccl_open(m));
    AMDIM_TRY(amdim_cuda_upload_step(m, B, 2 * B, in->labels, d, &valid, &valid_all));
    for (int v = 0; v < 2; v++)
        AMDIM_TRY(amdim_cuda_load_input(m, in, v));
    if (m->comm) {
        amdim_cuda_bn_sync_set(m, 1);
        int rc = forward_backward_body(m, B);
        amdim_cuda_bn_sync_set(m, 0);
        AMDIM_TRY(rc);
    } else
        AMDIM_TRY(amdim_cuda_graph_run(m, &c->fb_graph, &c->fb_warm, forward_backward_body, B));
    AMDIM_TRY(amdim_cuda_pull_stats(m));
    amdim_cuda_nce_stats(m, B, st);
    amdim_cuda_cls_stats(m, 2 * B, valid, valid_all, st);
    if (m->comm) {
        AMDIM_TRY(amdim_cuda_nccl_check(m));
        AMDIM_TRY(amdim_cuda_reduce_stats(m, st));
    }
    st->total = st->nce_1t5 + st->nce_1t7 + st->nce_5t5 + st->reg + st->cls_mlp + st->cls_lin;
    return AMDIM_OK;
}

static int cuda_probe_step(amdim_model *m, const amdim_step_input *in, const amdim_step_draws *d, amdim_step_stats *st)
{
    int B = in->batch, valid;
    double valid_all;
    AMDIM_TRY(amdim_cuda_ensure_buffers(m, B));
    AMDIM_TRY(amdim_cuda_choose_convs(m, B, 0));
    if (m->comm)
        AMDIM_TRY(amdim_cuda_nccl_open(m));
    AMDIM_TRY(amdim_cuda_zero(m, cuda_of(m)->params + cuda_of(m)->pp.grads, m->arch.grads_size * sizeof(float)));
    AMDIM_TRY(amdim_cuda_upload_step(m, B, 2 * B, in->labels, d, &valid, &valid_all));
    for (int v = 0; v < 2; v++) { /* frozen encoder: eval mode */
        AMDIM_TRY(amdim_cuda_load_input(m, in, v));
        AMDIM_TRY(amdim_cuda_encoder_forward(m, v, B, 0, 0));
        AMDIM_TRY(amdim_cuda_gather_r1(m, v, B));
    }
    amdim_cuda_bn_sync_set(m, 1); /* the probe MLP's BatchNorm */
    int rc = amdim_cuda_probes_train(m, B);
    amdim_cuda_bn_sync_set(m, 0);
    AMDIM_TRY(rc);
    if (m->comm)
        AMDIM_TRY(amdim_cuda_reduce_device(m));
    AMDIM_TRY(amdim_cuda_pull_stats(m));
    amdim_cuda_cls_stats(m, 2 * B, valid, valid_all, st);
    if (m->comm) {
        AMDIM_TRY(amdim_cuda_nccl_check(m));
        AMDIM_TRY(amdim_cuda_reduce_stats(m, st));
    }
    st->total = st->cls_mlp + st->cls_lin;
    return AMDIM_OK;
}

/* The chunks of one Adam launch (adam.cu) over the trainable tensors (the
 * probes' alone with probes_only), in device memory. */
static int adam_chunks_build(amdim_model *m, int probes_only)
{
    amdim_cuda_state *c = m->bs;
    size_t n = 0, elems = 0;
    for (int pass = 0; pass < 2; pass++) {
        amdim_adam_chunk *h = NULL;
        if (pass == 1 && !(h = malloc((n ? n : 1) * sizeof *h)))
            return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory (Adam chunks)");
        n = elems = 0;
        for (int i = 0; i < m->arch.ntensors; i++) {
            const amdim_tensor *t = &m->arch.tensors[i];
            if (!t->trainable || (probes_only && !t->probe))
                continue;
            for (size_t at = 0; at < t->size; at += AMDIM_ADAM_CHUNK, n++) {
                size_t len = t->size - at < AMDIM_ADAM_CHUNK ? t->size - at : AMDIM_ADAM_CHUNK;
                if (h)
                    h[n] = (amdim_adam_chunk){t->offset + at, t->goffset + at, (uint32_t)len, 0};
                elems += len;
            }
        }
        if (!h)
            continue;
        cudaError_t e = n ? cudaMalloc((void **)&c->adam_chunks[probes_only], n * sizeof *h) : cudaSuccess;
        if (e != cudaSuccess) {
            free(h);
            c->adam_chunks[probes_only] = NULL;
            return amdim_cuda_fail(m, e, "cudaMalloc (Adam chunks)");
        }
        /* on the compute stream, and finished before h goes: a pageable copy's DMA may still be
         * pending when cudaMemcpy returns, unordered with a non-blocking stream */
        int rc = n ? amdim_cuda_copy(m, c->adam_chunks[probes_only], h, n * sizeof *h, cudaMemcpyHostToDevice) : 0;
        if (!rc)
            rc = amdim_cuda_finish(m);
        free(h);
        if (rc)
            return rc;
    }
    c->n_adam_chunks[probes_only] = (uint32_t)n;
    c->adam_elems[probes_only] = elems;
    return AMDIM_OK;
}

/* Adam over the trainable tensors with the hyper-parameters in the device
 * scalars (one launch), then the cuDNN filters' OHWI copies. */
static int adam_body(amdim_model *m, int probes_only)
{
    amdim_cuda_state *c = m->bs;
    uint16_t *wbf = c->bf16 ? (uint16_t *)(void *)(c->params + c->pp.wbf) : NULL;
    AMDIM_TRY(amdim_adam_cuda(kctx(m), c->params + c->pp.weights, c->params + c->pp.grads, c->params + c->pp.adam_m,
                              c->params + c->pp.adam_v, wbf, c->adam_chunks[probes_only], c->n_adam_chunks[probes_only],
                              c->adam_elems[probes_only], &c->scalars->adam));
    for (int i = 0; i < m->arch.ntensors; i++) {
        const amdim_tensor *t = &m->arch.tensors[i];
        if (t->trainable && (!probes_only || t->probe))
            AMDIM_TRY(amdim_cuda_refresh_ohwi(m, i));
    }
    return AMDIM_OK;
}

static int cuda_adam(amdim_model *m, const amdim_adam_hparams *h, int probes_only)
{
    amdim_cuda_state *c = m->bs;
    int k = probes_only ? 1 : 0;
    AMDIM_TRY(amdim_cuda_copy(m, &c->scalars->adam, h, sizeof *h, cudaMemcpyHostToDevice));
    AMDIM_TRY(amdim_cuda_graph_run(m, &c->adam_graph[k], &c->adam_warm[k], adam_body, k));
    return amdim_cuda_finish(m);
}

static int cuda_evaluate(amdim_model *m, const uint8_t *images, int B, float *features, float *lm, float *ll)
{
    AMDIM_TRY(amdim_cuda_ensure_buffers(m, B));
    AMDIM_TRY(amdim_cuda_prepare_convs(m, B, 0));
    const amdim_cuda_plan *P = &cuda_of(m)->plan;
    int R = m->cfg.n_rkhs, K = m->cfg.n_classes;
    m->batch = 0; /* the training outputs are overwritten */
    AMDIM_TRY(amdim_cuda_load_u8(m, images, B, act(m, P->x[0])));
    AMDIM_TRY(amdim_cuda_encoder_forward(m, 0, B, 0, 0));
    AMDIM_TRY(amdim_cuda_gather_r1(m, 0, B));
    if (features) { /* as float, via the scratch */
        AMDIM_TRY(amdim_act_to_f32_cuda(kctx(m), act(m, P->feat), (size_t)B * R, act_f32(m, P->scratch)));
        AMDIM_TRY(
            amdim_cuda_copy(m, features, act(m, P->scratch), (size_t)B * R * sizeof(float), cudaMemcpyDeviceToHost));
    }
    if (lm || ll) {
        AMDIM_TRY(amdim_cuda_probes_forward(m, B, 0));
        if (lm)
            AMDIM_TRY(
                amdim_cuda_copy(m, lm, act(m, P->logits[0]), (size_t)B * K * sizeof(float), cudaMemcpyDeviceToHost));
        if (ll)
            AMDIM_TRY(
                amdim_cuda_copy(m, ll, act(m, P->logits[1]), (size_t)B * K * sizeof(float), cudaMemcpyDeviceToHost));
    }
    return amdim_cuda_finish(m);
}

static int cuda_refresh_bn(amdim_model *m, const uint8_t *images, int B, const amdim_step_draws *d)
{
    AMDIM_TRY(amdim_cuda_ensure_buffers(m, B));
    AMDIM_TRY(amdim_cuda_prepare_convs(m, B, 0));
    m->batch = 0;
    AMDIM_TRY(amdim_cuda_upload_step(m, B, B, NULL, d, NULL, NULL));
    AMDIM_TRY(amdim_cuda_load_u8(m, images, B, act(m, cuda_of(m)->plan.x[0])));
    AMDIM_TRY(amdim_cuda_encoder_forward(m, 0, B, 1, 1));
    AMDIM_TRY(amdim_cuda_gather_r1(m, 0, B));
    AMDIM_TRY(amdim_cuda_probes_forward(m, B, 1));
    return amdim_cuda_finish(m);
}

/* output / logits take a const model: only m->err and device scratch change. */
static int cuda_output(const amdim_model *cm, int view, int which, float *out)
{
    amdim_model *m = (amdim_model *)cm;
    const amdim_cuda_plan *P = &cuda_of(m)->plan;
    int B = m->batch, R = m->cfg.n_rkhs, hw = which == 1 ? 1 : which == 5 ? 25 : 49;
    const void *src =
        which == 1 ? act(m, P->layers[view][m->arch.nlayers - 1].out) : act(m, P->heads[view][which == 5 ? 0 : 1].out);
    float *t = act_f32(m, P->scratch); /* (B, R, hw) float: the NCHW the interface promises */
    AMDIM_TRY(amdim_nhwc_to_nchw_cuda(kctx(m), src, B, R, hw, t));
    return amdim_cuda_copy(m, out, t, (size_t)B * R * hw * sizeof(float), cudaMemcpyDeviceToHost);
}

static int cuda_logits(const amdim_model *cm, int head, float *out)
{
    amdim_model *m = (amdim_model *)cm;
    return amdim_cuda_copy(m, out, act(m, cuda_of(m)->plan.logits[head]),
                           (size_t)2 * m->batch * m->cfg.n_classes * sizeof(float), cudaMemcpyDeviceToHost);
}

static int cuda_pull(amdim_model *m)
{
    amdim_cuda_state *c = m->bs;
    size_t ws = m->arch.weights_size * sizeof(float), gs = m->arch.grads_size * sizeof(float);
    AMDIM_TRY(amdim_cuda_copy(m, m->weights, c->params + c->pp.weights, ws, cudaMemcpyDeviceToHost));
    AMDIM_TRY(amdim_cuda_copy(m, m->grads, c->params + c->pp.grads, gs, cudaMemcpyDeviceToHost));
    AMDIM_TRY(amdim_cuda_copy(m, m->adam_m, c->params + c->pp.adam_m, gs, cudaMemcpyDeviceToHost));
    return amdim_cuda_copy(m, m->adam_v, c->params + c->pp.adam_v, gs, cudaMemcpyDeviceToHost);
}

static int cuda_push(amdim_model *m)
{
    amdim_cuda_state *c = m->bs;
    size_t ws = m->arch.weights_size * sizeof(float), gs = m->arch.grads_size * sizeof(float);
    AMDIM_TRY(amdim_cuda_copy(m, c->params + c->pp.weights, m->weights, ws, cudaMemcpyHostToDevice));
    AMDIM_TRY(amdim_cuda_copy(m, c->params + c->pp.grads, m->grads, gs, cudaMemcpyHostToDevice));
    AMDIM_TRY(amdim_cuda_copy(m, c->params + c->pp.adam_m, m->adam_m, gs, cudaMemcpyHostToDevice));
    AMDIM_TRY(amdim_cuda_copy(m, c->params + c->pp.adam_v, m->adam_v, gs, cudaMemcpyHostToDevice));
    AMDIM_TRY(amdim_cuda_refresh_copies(m));
    return amdim_cuda_finish(m);
}

static size_t cuda_algorithms(const amdim_model *m, char *buf, size_t n)
{
    (void)m;
    return amdim_conv_table_text(buf, n);
}

const amdim_backend amdim_backend_cuda = {
    .name = "cuda",
    .open = cuda_open,
    .close = cuda_close,
    .forward_backward = cuda_forward_backward,
    .probe_step = cuda_probe_step,
    .adam = cuda_adam,
    .evaluate = cuda_evaluate,
    .refresh_bn = cuda_refresh_bn,
    .output = cuda_output,
    .logits = cuda_logits,
    .register_host = amdim_cuda_register_host,
    .unregister_host = amdim_cuda_unregister_host,
    .stage_input = amdim_cuda_stage_input,
    .stage_wait = amdim_cuda_stage_wait,
    .set_precision = cuda_set_precision,
    .pull = cuda_pull,
    .push = cuda_push,
    .algorithms = cuda_algorithms,
    .set_trace = cuda_set_trace,
};
