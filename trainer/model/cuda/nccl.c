/* The CUDA backend's data parallelism on NCCL (cuda_internal.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* ---- data parallelism ------------------------------------------------------------ */

/* With m->comm (N ranks; N > 1, or one forced rank) a training step moves
 * over NCCL, on the compute stream, in the step's order: the all-gather
 * of r5 and r7 of both views into the global target buffers (after the
 * forward), the reduce-scatter of their gradients into dr5 / dr7 (after
 * the objective); the gradients in buckets on the NCCL stream during the
 * last view's backward (plan.h: amdim_cuda_grad_buckets; one call at the
 * end if the table's layout did not allow buckets), then the average of
 * the BatchNorm running statistics, and the compute stream waits for all
 * of it before Adam. The classifier phase sums the whole block at the end.
 * The labelled count (before the
 * step) and the loss terms and counts (after it) are summed on the host
 * over m->comm. Steps with a group run eagerly (no CUDA graph): the host
 * collectives stay outside the device work and NCCL is never captured. */

/* The loss terms and counts summed over the ranks (each rank's are its
 * share of the global batch's means). */
int amdim_cuda_reduce_stats(amdim_model *m, amdim_step_stats *st)
{
    double v[9] = {st->nce_1t5, st->nce_1t7,     st->nce_5t5,     st->reg,     st->cls_mlp,
                   st->cls_lin, st->correct_mlp, st->correct_lin, st->labelled};
    int rc = m->comm->allreduce_f64(m->comm->ctx, v, 9);
    if (rc)
        return amdim_cuda_comm_fail(m, rc, "summing the loss terms");
    st->nce_1t5 = v[0], st->nce_1t7 = v[1], st->nce_5t5 = v[2], st->reg = v[3], st->cls_mlp = v[4];
    st->cls_lin = v[5], st->correct_mlp = (int)v[6], st->correct_lin = (int)v[7], st->labelled = (int)v[8];
    return AMDIM_OK;
}

#ifdef AMDIM_HAVE_NCCL
/* Running statistics of every BatchNorm (BN_MEAN, BN_VAR tensors). */
static int is_running_stat(const amdim_tensor *t)
{
    return t->role == AMDIM_ROLE_BN_MEAN || t->role == AMDIM_ROLE_BN_VAR;
}

/* A failed NCCL call, with NCCL's last error message (thread-local in
 * NCCL; the comm argument is unused, NULL before ncclCommInitRank). */
static int nccl_fail(amdim_model *m, ncclResult_t r, const char *call)
{
    const char *last = ncclGetLastError(cuda_of(m)->nccl);
    return AMDIM_MFAIL(m, AMDIM_E_IO, "rank %d of %d: %s(): %s%s%s", m->comm->rank, m->comm->size, call,
                       ncclGetErrorString(r), last && *last ? ": " : "", last && *last ? last : "");
}

/* 0, or nccl_fail for a failed NCCL call. */
static int nc(amdim_model *m, ncclResult_t r, const char *call)
{
    return r == ncclSuccess ? AMDIM_OK : nccl_fail(m, r, call);
}

/* Ends a group of NCCL calls; the first failure inside it (r, call) or
 * the group's own. */
static int nccl_group_end(amdim_model *m, ncclResult_t r, const char *call)
{
    ncclResult_t e = ncclGroupEnd();
    if (r != ncclSuccess)
        return nccl_fail(m, r, call);
    AMDIM_TRY(nc(m, e, "ncclGroupEnd"));
    return AMDIM_OK;
}

/* The gradient buckets (see amdim_cuda_state, plan.h). */
static int plan_buckets(amdim_model *m)
{
    amdim_cuda_state *c = m->bs;
    size_t U = (size_t)AMDIM_CUDA_BUCKETS(&m->arch);
    c->bucket_lo = calloc(U, sizeof *c->bucket_lo);
    c->bucket_hi = calloc(U, sizeof *c->bucket_hi);
    if (!c->bucket_lo || !c->bucket_hi)
        return AMDIM_MFAIL(m, AMDIM_E_NOMEM, "out of memory");
    c->buckets = amdim_cuda_grad_buckets(&m->arch, c->bucket_lo, c->bucket_hi);
    return AMDIM_OK;
}

/* Destroys the communicator (aborts it after an asynchronous error, when
 * a peer may never complete an operation). */
void amdim_cuda_nccl_close(amdim_cuda_state *c)
{
    /* after an asynchronous error first abort (a peer may never complete
     * an operation still queued on the NCCL stream), then wait */
    ncclResult_t async = ncclSuccess;
    int failed = c->nccl && (ncclCommGetAsyncError(c->nccl, &async) != ncclSuccess || async != ncclSuccess);
    if (failed)
        ncclCommAbort(c->nccl);
    if (c->nstream)
        cudaStreamSynchronize(c->nstream), cudaStreamDestroy(c->nstream);
    if (c->nev)
        cudaEventDestroy(c->nev);
    free(c->bucket_lo), free(c->bucket_hi);
    c->nstream = NULL, c->nev = NULL, c->bucket_lo = c->bucket_hi = NULL, c->buckets = 0;
    if (c->nccl && !failed)
        ncclCommDestroy(c->nccl);
    c->nccl = NULL;
    c->nccl_group = NULL;
}

/* The run's communicator over m->comm, made once (a collective of all
 * ranks, at their first step): rank 0's ncclGetUniqueId goes to every rank
 * through bcast_f32 - its 128 bytes as 32 floats, which the comm moves
 * unchanged - then ncclCommInitRank on the current device. */
int amdim_cuda_nccl_open(amdim_model *m)
{
    amdim_cuda_state *c = m->bs;
    const amdim_comm *g = m->comm;
    if (c->nccl && c->nccl_group == g)
        return AMDIM_OK;
    AMDIM_CU(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
    amdim_cuda_nccl_close(c); /* made for another group */
    ncclUniqueId id;
    float buf[(sizeof id + sizeof(float) - 1) / sizeof(float)];
    memset(&id, 0, sizeof id);
    memset(buf, 0, sizeof buf);
    if (g->rank == 0)
        AMDIM_TRY(nc(m, ncclGetUniqueId(&id), "ncclGetUniqueId"));
    memcpy(buf, &id, sizeof id);
    int rc = g->bcast_f32(g->ctx, buf, sizeof buf / sizeof *buf, 0);
    if (rc)
        return amdim_cuda_comm_fail(m, rc, "broadcasting the NCCL id");
    memcpy(&id, buf, sizeof id);
    ncclComm_t comm = NULL;
    AMDIM_TRY(nc(m, ncclCommInitRank(&comm, g->size, id, g->rank), "ncclCommInitRank"));
    c->nccl = comm;
    c->nccl_group = g;
    AMDIM_CU(cudaStreamCreateWithFlags(&c->nstream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags (NCCL)");
    AMDIM_CU(cudaEventCreateWithFlags(&c->nev, cudaEventDisableTiming), "cudaEventCreateWithFlags (NCCL)");
    return plan_buckets(m);
}

/* NCCL's type of the activations. */
static ncclDataType_t nccl_act(const amdim_model *m) { return cuda_of(m)->bf16 ? ncclBfloat16 : ncclFloat; }

/* r5 and r7 of both views, every rank's (B, hw, hw, R) block in rank
 * order, into tg (N B, hw, hw, R): the global batch's targets. Zeroes
 * their gradients dtg. */
int amdim_cuda_gather_targets(amdim_model *m, int B)
{
    amdim_cuda_state *c = m->bs;
    const amdim_cuda_plan *P = &c->plan;
    ncclResult_t r = ncclSuccess;
    AMDIM_TRY(nc(m, ncclGroupStart(), "ncclGroupStart"));
    for (int v = 0; v < 2 && r == ncclSuccess; v++)
        for (int f = 0; f < 2 && r == ncclSuccess; f++)
            r = ncclAllGather(act(m, P->heads[v][f].out), act(m, P->tg[v][f]),
                              (size_t)B * (f ? 49 : 25) * m->cfg.n_rkhs, nccl_act(m), c->nccl, c->stream);
    AMDIM_TRY(nccl_group_end(m, r, "ncclAllGather"));
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++)
            AMDIM_TRY(amdim_cuda_zero(m, act(m, P->dtg[v][f]),
                                      (size_t)B * P->ranks * (f ? 49 : 25) * m->cfg.n_rkhs * act_bytes(m)));
    return AMDIM_OK;
}

/* dr5 / dr7 of this rank's images = the ranks' sum of their gradients of
 * its block of the gathered targets (the drawn r5 sources' included; in
 * the bf16 mode a bf16 sum, as the activation gradients are bf16). */
int amdim_cuda_scatter_target_grads(amdim_model *m, int B)
{
    amdim_cuda_state *c = m->bs;
    const amdim_cuda_plan *P = &c->plan;
    ncclResult_t r = ncclSuccess;
    AMDIM_TRY(nc(m, ncclGroupStart(), "ncclGroupStart"));
    for (int v = 0; v < 2 && r == ncclSuccess; v++)
        for (int f = 0; f < 2 && r == ncclSuccess; f++)
            r = ncclReduceScatter(act(m, P->dtg[v][f]), act(m, f ? P->dr7[v] : P->dr5[v]),
                                  (size_t)B * (f ? 49 : 25) * m->cfg.n_rkhs, nccl_act(m), ncclSum, c->nccl, c->stream);
    return nccl_group_end(m, r, "ncclReduceScatter");
}

/* Unit u's backward is done (its last view's): its gradient bucket is
 * summed over the ranks on the NCCL stream while the compute stream goes
 * on with the units before it. */
int amdim_cuda_bucket_launch(amdim_model *m, int u)
{
    amdim_cuda_state *c = m->bs;
    if (!c->buckets || c->bucket_hi[u] <= c->bucket_lo[u])
        return AMDIM_OK;
    float *g = c->params + c->pp.grads + c->bucket_lo[u];
    AMDIM_CU(cudaEventRecord(c->nev, c->stream), "cudaEventRecord (gradient bucket)");
    AMDIM_CU(cudaStreamWaitEvent(c->nstream, c->nev, 0), "cudaStreamWaitEvent (gradient bucket)");
    AMDIM_TRY(nc(m, ncclAllReduce(g, g, c->bucket_hi[u] - c->bucket_lo[u], ncclFloat, ncclSum, c->nccl, c->nstream),
                 "ncclAllReduce (gradient bucket)"));
    return AMDIM_OK;
}

/* After a training step's backward: with buckets, the running statistics
 * averaged on the NCCL stream behind the buckets, and the compute stream
 * made to wait for all of it (Adam reads the sums); without, reduce_device. */
int amdim_cuda_reduce_device_tail(amdim_model *m)
{
    amdim_cuda_state *c = m->bs;
    if (!c->buckets)
        return amdim_cuda_reduce_device(m);
    ncclResult_t r = ncclSuccess;
    AMDIM_CU(cudaEventRecord(c->nev, c->stream), "cudaEventRecord (running statistics)");
    AMDIM_CU(cudaStreamWaitEvent(c->nstream, c->nev, 0), "cudaStreamWaitEvent (running statistics)");
    AMDIM_TRY(nc(m, ncclGroupStart(), "ncclGroupStart"));
    for (int i = 0; i < m->arch.ntensors && r == ncclSuccess; i++)
        if (is_running_stat(&m->arch.tensors[i]))
            r = ncclAllReduce(weight(m, i), weight(m, i), m->arch.tensors[i].size, ncclFloat, ncclAvg, c->nccl,
                              c->nstream);
    AMDIM_TRY(nccl_group_end(m, r, "ncclAllReduce (running statistics)"));
    AMDIM_CU(cudaEventRecord(c->nev, c->nstream), "cudaEventRecord (NCCL done)");
    AMDIM_CU(cudaStreamWaitEvent(c->stream, c->nev, 0), "cudaStreamWaitEvent (NCCL done)");
    return AMDIM_OK;
}

/* After the backward: the gradients summed over the ranks (so every rank
 * applies the same update) and, per-rank BatchNorm, the running
 * statistics averaged (ncclAvg, in fp32; the CPU averages in double). */
int amdim_cuda_reduce_device(amdim_model *m)
{
    amdim_cuda_state *c = m->bs;
    /* the classifier phase: the probes' gradients (the block's tail) and
     * running statistics only; the frozen encoder's do not move */
    size_t from = m->probes_only && c->buckets ? c->bucket_lo[m->arch.nlayers + 2] : 0;
    float *g = c->params + c->pp.grads + from;
    ncclResult_t r;
    AMDIM_TRY(nc(m, ncclGroupStart(), "ncclGroupStart"));
    r = ncclAllReduce(g, g, m->arch.grads_size - from, ncclFloat, ncclSum, c->nccl, c->stream);
    const char *call = "ncclAllReduce (gradients)";
    for (int i = 0; i < m->arch.ntensors && r == ncclSuccess; i++)
        if (is_running_stat(&m->arch.tensors[i]) && (!m->probes_only || m->arch.tensors[i].probe)) {
            r = ncclAllReduce(weight(m, i), weight(m, i), m->arch.tensors[i].size, ncclFloat, ncclAvg, c->nccl,
                              c->stream);
            call = "ncclAllReduce (running statistics)";
        }
    return nccl_group_end(m, r, call);
}

/* Synchronised BatchNorm (kernels.h: amdim_cuda_ctx.bn_sync): the
 * per-channel sums over the ranks, on the compute stream. */
static int nccl_bn_sync(void *arg, double *fin, size_t n)
{
    amdim_model *m = arg;
    AMDIM_TRY(nc(m, ncclAllReduce(fin, fin, n, ncclDouble, ncclSum, cuda_of(m)->nccl, cuda_of(m)->stream),
                 "ncclAllReduce (synchronised BatchNorm)"));
    return AMDIM_OK;
}

/* A training step of a group with --sync-bn: the BatchNorm kernels sum
 * their statistics over the ranks while `on`; never in evaluation. */
void amdim_cuda_bn_sync_set(amdim_model *m, int on)
{
    amdim_cuda_state *c = m->bs;
    on = on && m->comm && m->comm->sync_bn;
    c->ctx.bn_sync = on ? nccl_bn_sync : NULL;
    c->ctx.bn_sync_arg = on ? m : NULL;
    c->ctx.ranks = on ? m->comm->size : 1;
}

/* An asynchronous NCCL failure (a peer lost, a network error), once the
 * step's work is done. */
int amdim_cuda_nccl_check(amdim_model *m)
{
    ncclResult_t async = ncclSuccess;
    AMDIM_TRY(nc(m, ncclCommGetAsyncError(cuda_of(m)->nccl, &async), "ncclCommGetAsyncError"));
    AMDIM_TRY(nc(m, async, "ncclCommGetAsyncError (asynchronous)"));
    return AMDIM_OK;
}
#else
/* Without NCCL, amdim_model_set_comm refuses CUDA ranks: never reached. */
static int no_nccl(amdim_model *m)
{
    return AMDIM_MFAIL(m, AMDIM_E_UNSUPPORTED, "data-parallel CUDA ranks: this build has no NCCL");
}
int amdim_cuda_nccl_open(amdim_model *m) { return no_nccl(m); }
int amdim_cuda_gather_targets(amdim_model *m, int B)
{
    (void)B;
    return no_nccl(m);
}
int amdim_cuda_scatter_target_grads(amdim_model *m, int B)
{
    (void)B;
    return no_nccl(m);
}
int amdim_cuda_reduce_device(amdim_model *m) { return no_nccl(m); }
int amdim_cuda_reduce_device_tail(amdim_model *m) { return no_nccl(m); }
int amdim_cuda_bucket_launch(amdim_model *m, int u)
{
    (void)u;
    return no_nccl(m);
}
int amdim_cuda_nccl_check(amdim_model *m) { return no_nccl(m); }
void amdim_cuda_bn_sync_set(amdim_model *m, int on) { (void)m, (void)on; }
#endif
