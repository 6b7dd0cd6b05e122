/* CPU emulation of the NCCL calls the CUDA backend makes (the emulated-
 * device tests only): a communicator of exactly one rank, which is what
 * one emulated device can host - a forced one-rank process group
 * (tests/test_dist_force) takes the data-parallel code path with it. With
 * one rank every collective is a copy (sum, average, gather and scatter of
 * a single contribution); larger communicators are refused. */
#include <stdlib.h>
#include <string.h>

#include <nccl.h>

struct ncclComm {
    int nranks;
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
    if (!comm || comm->nranks != 1)
        return fail("emulated NCCL: no communicator");
    if (!es)
        return fail("emulated NCCL: unsupported data type");
    if (count && send != recv)
        memmove(recv, send, count * es);
    return ncclSuccess;
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
    if (nranks != 1 || rank != 0)
        return fail("emulated NCCL: one rank only");
    *comm = calloc(1, sizeof **comm);
    if (!*comm)
        return ncclSystemError;
    (*comm)->nranks = 1;
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
    if (op != ncclSum && op != ncclAvg && op != ncclMax && op != ncclMin && op != ncclProd)
        return fail("emulated NCCL: unsupported reduction");
    return copy(send, recv, count, t, comm);
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t count, ncclDataType_t t, ncclComm_t comm,
                           cudaStream_t s)
{
    (void)s;
    return copy(send, recv, count, t, comm);
}

ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t count, ncclDataType_t t, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t s)
{
    (void)s;
    if (op != ncclSum && op != ncclAvg)
        return fail("emulated NCCL: unsupported reduction");
    return copy(send, recv, count, t, comm);
}
