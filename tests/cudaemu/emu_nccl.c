/* CPU emulation of the NCCL calls the CUDA backend makes (the emulated-
 * device tests only). A collective is work on its stream like any other
 * (emu_device.h), and it is run, with the stream's earlier work, when
 * the call is made (or, inside ncclGroupStart / ncclGroupEnd, at the
 * group's end): every rank then runs its collectives in its call order,
 * as NCCL requires of the calls, and no rank's host waits in a
 * collective its peer's device has not reached. Collectives are not
 * captured into graphs here (refused with ncclInvalidUsage).
 * A communicator of one rank (a forced one-rank
 * process group, tests/test_dist_force) makes every collective a copy. In
 * a build with MPI, a communicator of all the MPI_COMM_WORLD ranks (one
 * emulated device per process, started by mpirun) moves the data over MPI
 * with NCCL's semantics: all-reduce (sum, or average = sum / ranks),
 * all-gather and reduce-scatter in rank order; bfloat16 sums are taken
 * in float over the ranks in rank order and rounded once, so every rank
 * gets the same bits. Other sizes are refused. */
#include <stdlib.h>
#include <string.h>

#include <nccl.h>
#ifdef AMDIM_CUDAEMU_MPI
#include <mpi.h>
#endif

#include "elementwise_internal.h" /* amdim_bf16_bits / amdim_bf16_value */
#include "emu_device.h"

struct ncclComm {
    int nranks, rank;
    ncclResult_t async; /* a collective that failed when it ran */
};

static const char *last = "";

static size_t type_size(ncclDataType_t t)
{
    switch (t) {
    case ncclInt8:
    case ncclUint8:
        return 1;
    case ncclFloat16:
    case ncclBfloat16:
        return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
        return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
        return 8;
    default:
        return 0;
    }
}

static ncclResult_t fail(const char *why)
{
    last = why;
    return ncclInvalidArgument;
}

/* The one rank's contribution is the result. */
static ncclResult_t copy(const void *send, void *recv, size_t count, ncclDataType_t t, ncclComm_t comm)
{
    size_t es = type_size(t);
    if (!comm || comm->nranks < 1)
        return fail("emulated NCCL: no communicator");
    if (!es)
        return fail("emulated NCCL: unsupported data type");
    if (count && send != recv)
        memmove(recv, send, count * es);
    return ncclSuccess;
}

enum { GATHER, SUM, AVG, SCATTER_SUM };

/* The collectives of a communicator of n > 1 ranks over MPI: every rank's
 * `count` elements (the whole buffer for SCATTER_SUM: n blocks of count)
 * gathered in rank order, then combined here in rank order - the same
 * arithmetic on every rank. */
static ncclResult_t over_mpi(const void *send, void *recv, size_t count, ncclDataType_t t, ncclComm_t comm, int what)
{
#ifdef AMDIM_CUDAEMU_MPI
    size_t es = type_size(t), n = (size_t)comm->nranks, contrib = what == SCATTER_SUM ? n * count : count;
    if (t != ncclFloat && t != ncclDouble && t != ncclBfloat16 && what != GATHER)
        return fail("emulated NCCL: reductions of float, double and bfloat16 only");
    if (contrib * es > (size_t)1 << 30)
        return fail("emulated NCCL: message too large");
    char *all = malloc(n * contrib * es + 1);
    if (!all)
        return ncclSystemError;
    if (MPI_Allgather(send, (int)(contrib * es), MPI_BYTE, all, (int)(contrib * es), MPI_BYTE, MPI_COMM_WORLD) !=
        MPI_SUCCESS) {
        free(all);
        return fail("emulated NCCL: MPI_Allgather failed");
    }
    if (what == GATHER) {
        memcpy(recv, all, n * count * es);
        free(all);
        return ncclSuccess;
    }
    size_t off = what == SCATTER_SUM ? (size_t)comm->rank * count : 0; /* this rank's block */
    for (size_t i = 0; i < count; i++) {
        double acc = 0;
        for (size_t r = 0; r < n; r++) {
            size_t k = r * contrib + off + i;
            acc += t == ncclDouble   ? ((const double *)(const void *)all)[k]
                   : t == ncclFloat ? (double)((const float *)(const void *)all)[k]
                                    : (double)amdim_bf16_value(((const uint16_t *)(const void *)all)[k]);
        }
        if (what == AVG)
            acc /= (double)n;
        if (t == ncclDouble)
            ((double *)recv)[i] = acc;
        else if (t == ncclFloat)
            ((float *)recv)[i] = (float)acc;
        else
            ((uint16_t *)recv)[i] = amdim_bf16_bits((float)acc);
    }
    free(all);
    return ncclSuccess;
#else
    (void)send, (void)recv, (void)count, (void)t, (void)comm, (void)what;
    return fail("emulated NCCL: more than one rank needs a build with MPI");
#endif
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
    memset(id, 0, sizeof *id);
    memcpy(id->internal, "amdim-emulated", 14);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank)
{
    (void)id;
    if (nranks > 1) { /* all of MPI_COMM_WORLD, in its rank order */
#ifdef AMDIM_CUDAEMU_MPI
        int on = 0, size = 0, me = -1;
        if (MPI_Initialized(&on) != MPI_SUCCESS || !on || MPI_Comm_size(MPI_COMM_WORLD, &size) != MPI_SUCCESS ||
            MPI_Comm_rank(MPI_COMM_WORLD, &me) != MPI_SUCCESS || size != nranks || me != rank)
            return fail("emulated NCCL: a communicator must be all of MPI_COMM_WORLD, in its rank order");
#else
        return fail("emulated NCCL: more than one rank needs a build with MPI");
#endif
    } else if (nranks != 1 || rank != 0) {
        return fail("emulated NCCL: bad size or rank");
    }
    *comm = calloc(1, sizeof **comm);
    if (!*comm)
        return ncclSystemError;
    (*comm)->nranks = nranks;
    (*comm)->rank = rank;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    free(comm);
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm)
{
    free(comm);
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async)
{
    if (!comm)
        return fail("emulated NCCL: no communicator");
    *async = comm->async;
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r)
{
    return r == ncclSuccess ? "no error" : r == ncclInvalidArgument ? "invalid argument (emulated)" : "error (emulated)";
}

const char *ncclGetLastError(ncclComm_t comm)
{
    (void)comm;
    return last;
}

typedef struct {
    const void *send;
    void *recv;
    size_t count, recv_count;
    ncclDataType_t t;
    ncclComm_t comm;
    int what; /* GATHER, SUM, AVG, SCATTER_SUM */
    cudaStream_t s;
} coll;

/* One rank: the copy, when the stream gets to it. */
static cudaError_t copy_run(void *arg)
{
    coll *c = arg;
    ncclResult_t r = copy(c->send, c->recv, c->count, c->t, c->comm);
    if (r != ncclSuccess && c->comm->async == ncclSuccess)
        c->comm->async = r; /* NCCL reports a failure on the device through ncclCommGetAsyncError */
    return cudaSuccess;
}

/* Over MPI: the exchanged result into the receive buffer, when the stream gets to it. */
typedef struct {
    void *recv;
    size_t bytes;
    char result[];
} delivery;

static cudaError_t deliver_run(void *arg)
{
    delivery *d = arg;
    memcpy(d->recv, d->result, d->bytes);
    return cudaSuccess;
}

static ncclResult_t launch(const coll *c, const char *name)
{
    if (c->comm->nranks == 1) {
        coll *w = malloc(sizeof *w);
        if (!w)
            return ncclSystemError;
        *w = *c;
        return emu_enqueue(c->s, name, copy_run, w, free) == cudaSuccess ? ncclSuccess
                                                                           : fail("emulated NCCL: the stream failed");
    }
    if (emu_stream_drain(c->s) != cudaSuccess) /* the send buffer as the stream would send it */
        return fail("emulated NCCL: the stream failed");
    size_t bytes = c->recv_count * type_size(c->t);
    delivery *d = malloc(sizeof *d + bytes + 1);
    if (!d)
        return ncclSystemError;
    d->recv = c->recv;
    d->bytes = bytes;
    ncclResult_t r = over_mpi(c->send, d->result, c->count, c->t, c->comm, c->what);
    if (r != ncclSuccess) {
        free(d);
        if (c->comm->async == ncclSuccess)
            c->comm->async = r;
        return ncclSuccess; /* as NCCL: the failure surfaces through ncclCommGetAsyncError */
    }
    return emu_enqueue(c->s, name, deliver_run, d, free) == cudaSuccess ? ncclSuccess
                                                                          : fail("emulated NCCL: the stream failed");
}

/* Inside ncclGroupStart / ncclGroupEnd: the calls to launch at the end, in order. */
static int group_depth;
static coll group_calls[64];
static const char *group_names[64];
static int group_n;

ncclResult_t ncclGroupStart(void)
{
    group_depth++;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void)
{
    if (group_depth <= 0)
        return fail("emulated NCCL: ncclGroupEnd without ncclGroupStart");
    if (--group_depth > 0)
        return ncclSuccess;
    ncclResult_t r = ncclSuccess;
    for (int i = 0; i < group_n && r == ncclSuccess; i++)
        r = launch(&group_calls[i], group_names[i]);
    group_n = 0;
    return r;
}

/* A collective on stream s: checked, then launched now or at the group's
 * end. recv_count: the elements written. */
static ncclResult_t collective(const void *send, void *recv, size_t count, size_t recv_count, ncclDataType_t t,
                               ncclComm_t comm, cudaStream_t s, int what, const char *name)
{
    size_t es = type_size(t);
    if (!comm || comm->nranks < 1)
        return fail("emulated NCCL: no communicator");
    if (!es)
        return fail("emulated NCCL: unsupported data type");
    size_t send_count = what == SCATTER_SUM ? count * (size_t)comm->nranks : count;
    if (count && (!emu_device_range(send, send_count * es) || !emu_device_range(recv, recv_count * es)))
        return fail("emulated NCCL: a buffer is not device memory of that size");
    if (emu_stream_capturing(s))
        return ncclInvalidUsage; /* not emulated */
    coll c = {send, recv, count, recv_count, t, comm, what, s};
    if (group_depth == 0)
        return launch(&c, name);
    if (group_n == (int)(sizeof group_calls / sizeof *group_calls))
        return fail("emulated NCCL: too many calls in one group");
    group_names[group_n] = name;
    group_calls[group_n++] = c;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t s)
{
    if (op != ncclSum && op != ncclAvg)
        return fail("emulated NCCL: unsupported reduction");
    return collective(send, recv, count, count, t, comm, s, op == ncclAvg ? AVG : SUM, "ncclAllReduce");
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t count, ncclDataType_t t, ncclComm_t comm,
                           cudaStream_t s)
{
    return collective(send, recv, count, comm ? count * (size_t)comm->nranks : 0, t, comm, s, GATHER,
                      "ncclAllGather");
}

ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t s)
{
    if (op != ncclSum)
        return fail("emulated NCCL: unsupported reduction");
    return collective(send, recv, count, count, t, comm, s, SCATTER_SUM, "ncclReduceScatter");
}
