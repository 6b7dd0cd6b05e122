/* CPU emulation of the NCCL calls the CUDA backend makes (the emulated-
 * device tests only). A communicator of one rank (a forced one-rank
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

#include "elementwise.h" /* amdim_bf16_bits / amdim_bf16_value */

struct ncclComm {
    int nranks, rank;
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
    *async = ncclSuccess;
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

ncclResult_t ncclGroupStart(void) { return ncclSuccess; }
ncclResult_t ncclGroupEnd(void) { return ncclSuccess; }

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t s)
{
    (void)s;
    if (op != ncclSum && op != ncclAvg)
        return fail("emulated NCCL: unsupported reduction");
    if (comm && comm->nranks > 1)
        return over_mpi(send, recv, count, t, comm, op == ncclAvg ? AVG : SUM);
    return copy(send, recv, count, t, comm);
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t count, ncclDataType_t t, ncclComm_t comm,
                           cudaStream_t s)
{
    (void)s;
    if (comm && comm->nranks > 1)
        return over_mpi(send, recv, count, t, comm, GATHER);
    return copy(send, recv, count, t, comm);
}

ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t s)
{
    (void)s;
    if (op != ncclSum)
        return fail("emulated NCCL: unsupported reduction");
    if (comm && comm->nranks > 1)
        return over_mpi(send, recv, count, t, comm, SCATTER_SUM);
    return copy(send, recv, count, t, comm);
}
