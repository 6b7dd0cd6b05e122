/* The process group on MPI (see amdim_parallel.h). Errors return (not abort)
 * so each becomes a message naming the collective; buffers larger than
 * an MPI count are moved in pieces. Every collective is timed, and a
 * watchdog thread ends this process when one has waited longer than the
 * timeout (a stopped or hung rank), so mpirun ends the job. */
#include "amdim_parallel.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mpi.h>

typedef struct {
    amdim_comm comm;
    MPI_Comm world;
    char err[MPI_MAX_ERROR_STRING + 128];
    /* time and bytes in collectives (this rank's sends) */
    double seconds;
    uint64_t bytes, calls;
    /* the watchdog: the collective under way (NULL: none) and since when */
    _Atomic(const char *) busy_call;
    _Atomic double busy_since;
    _Atomic double step_since; /* a training step under way since (0: none) */
    atomic_int hold;           /* waits expected (amdim_comm.watch, AMDIM_WATCH_HOLD) */
    double timeout;
    pthread_t watchdog;
    int watchdog_on;
    atomic_int stop;
} mpi_group;

static double mono_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void enter(mpi_group *d, const char *call)
{
    atomic_store(&d->busy_since, mono_now());
    atomic_store(&d->busy_call, call);
}

static void leave(mpi_group *d, size_t bytes)
{
    d->seconds += mono_now() - atomic_load(&d->busy_since);
    d->bytes += bytes;
    d->calls++;
    atomic_store(&d->busy_call, (const char *)NULL);
}

/* A collective that has waited past the timeout, or a training step that
 * has run that long (on a GPU a rank waits for a hung peer inside NCCL,
 * on the device, not in MPI): some rank is stopped, hung or gone without
 * MPI noticing. Say so and exit; mpirun then ends every rank (MPI_Abort
 * is not for a second thread under FUNNELED). */
static void *watchdog_main(void *arg)
{
    mpi_group *d = arg;
    while (!atomic_load(&d->stop)) {
        usleep(200000);
        if (atomic_load(&d->hold))
            continue;
        const char *call = atomic_load(&d->busy_call);
        double now = mono_now(), waited = now - atomic_load(&d->busy_since), step = atomic_load(&d->step_since);
        if ((call && waited > d->timeout) || (step > 0 && now - step > d->timeout)) {
            if (call && waited > d->timeout)
                fprintf(stderr, "amdim-train: rank %d of %d: %s has waited %.0f s for the other ranks", d->comm.rank,
                        d->comm.size, call, waited);
            else
                fprintf(stderr, "amdim-train: rank %d of %d: a training step has run for %.0f s", d->comm.rank,
                        d->comm.size, now - step);
            fprintf(stderr, " (AMDIM_COLLECTIVE_TIMEOUT=%g): a rank is stopped, hung or lost; ending this rank so that "
                            "the job ends\n",
                    d->timeout);
            fflush(stderr);
            _exit(1);
        }
    }
    return NULL;
}

static void dist_watch(void *ctx, int kind, int on)
{
    mpi_group *d = ctx;
    if (kind == AMDIM_WATCH_STEP)
        atomic_store(&d->step_since, on ? mono_now() : 0.0);
    else
        atomic_store(&d->hold, on);
}

/* Elements per MPI call: counts are int. */
#define DIST_PIECE ((size_t)1 << 30)

int amdim_parallel_built(void) { return 1; }

static int env_int(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return 0;
    char *end;
    long x = strtol(v, &end, 10);
    return *end || x < 1 || x > INT_MAX ? 0 : (int)x;
}

int amdim_parallel_launched_size(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "SLURM_NTASKS"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        int s = env_int(vars[i]);
        if (s)
            return s;
    }
    return 1;
}

static int fail(mpi_group *d, int rc, const char *call)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS)
        snprintf(s, sizeof s, "MPI error %d", rc);
    snprintf(d->err, sizeof d->err, "%s: %s", call, s);
    return AMDIM_E_IO;
}

static const char *group_error(void *ctx) { return ((mpi_group *)ctx)->err; }

static int allreduce(void *ctx, void *buf, size_t n, MPI_Datatype type, size_t elem)
{
    mpi_group *d = ctx;
    enter(d, "MPI_Allreduce");
    for (size_t at = 0; at < n; at += DIST_PIECE) {
        size_t k = n - at < DIST_PIECE ? n - at : DIST_PIECE;
        int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + at * elem, (int)k, type, MPI_SUM, d->world);
        if (rc != MPI_SUCCESS) {
            leave(d, 0);
            return fail(d, rc, "MPI_Allreduce");
        }
    }
    leave(d, n * elem);
    return AMDIM_OK;
}

static int allreduce_f32(void *ctx, float *buf, size_t n) { return allreduce(ctx, buf, n, MPI_FLOAT, sizeof *buf); }
static int allreduce_f64(void *ctx, double *buf, size_t n) { return allreduce(ctx, buf, n, MPI_DOUBLE, sizeof *buf); }

static int allgather_f32(void *ctx, const float *send, float *recv, size_t n)
{
    mpi_group *d = ctx;
    if (n > INT_MAX) {
        snprintf(d->err, sizeof d->err, "MPI_Allgather: %zu floats per rank is more than one call moves", n);
        return AMDIM_E_INVALID;
    }
    enter(d, "MPI_Allgather");
    int rc = MPI_Allgather(send, (int)n, MPI_FLOAT, recv, (int)n, MPI_FLOAT, d->world);
    leave(d, rc == MPI_SUCCESS ? n * sizeof(float) : 0);
    return rc == MPI_SUCCESS ? AMDIM_OK : fail(d, rc, "MPI_Allgather");
}

static int reduce_scatter_f32(void *ctx, const float *send, float *recv, size_t n)
{
    mpi_group *d = ctx;
    if (n > INT_MAX) {
        snprintf(d->err, sizeof d->err, "MPI_Reduce_scatter_block: %zu floats per rank is more than one call moves", n);
        return AMDIM_E_INVALID;
    }
    enter(d, "MPI_Reduce_scatter_block");
    int rc = MPI_Reduce_scatter_block(send, recv, (int)n, MPI_FLOAT, MPI_SUM, d->world);
    leave(d, rc == MPI_SUCCESS ? n * d->comm.size * sizeof(float) : 0);
    return rc == MPI_SUCCESS ? AMDIM_OK : fail(d, rc, "MPI_Reduce_scatter_block");
}

static int bcast_f32(void *ctx, float *buf, size_t n, int root)
{
    mpi_group *d = ctx;
    enter(d, "MPI_Bcast");
    for (size_t at = 0; at < n; at += DIST_PIECE) {
        size_t k = n - at < DIST_PIECE ? n - at : DIST_PIECE;
        int rc = MPI_Bcast(buf + at, (int)k, MPI_FLOAT, root, d->world);
        if (rc != MPI_SUCCESS) {
            leave(d, 0);
            return fail(d, rc, "MPI_Bcast");
        }
    }
    leave(d, n * sizeof(float));
    return AMDIM_OK;
}

int amdim_parallel_open(amdim_comm **out, int sync_bn, char *err, size_t n)
{
    *out = NULL;
    int inited = 0, provided = 0, rc;
    MPI_Initialized(&inited);
    if (!inited && (rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided)) != MPI_SUCCESS)
        return amdim_fail(err, n, AMDIM_E_IO, "MPI_Init_thread failed (%d)", rc);
    if (inited)
        MPI_Query_thread(&provided);
    /* only the main thread calls MPI; the watchdog thread never does */
    if (provided < MPI_THREAD_FUNNELED)
        return amdim_fail(err, n, AMDIM_E_UNSUPPORTED,
                          "this MPI provides thread level %d, below MPI_THREAD_FUNNELED (the trainer has other threads)",
                          provided);
    mpi_group *d = calloc(1, sizeof *d);
    if (!d)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    d->world = MPI_COMM_WORLD;
    MPI_Comm_set_errhandler(d->world, MPI_ERRORS_RETURN);
    MPI_Comm_rank(d->world, &d->comm.rank);
    MPI_Comm_size(d->world, &d->comm.size);
    d->comm.sync_bn = sync_bn;
    d->comm.ctx = d;
    d->comm.allreduce_f32 = allreduce_f32;
    d->comm.allreduce_f64 = allreduce_f64;
    d->comm.allgather_f32 = allgather_f32;
    d->comm.reduce_scatter_f32 = reduce_scatter_f32;
    d->comm.bcast_f32 = bcast_f32;
    d->comm.error = group_error;
    d->comm.watch = dist_watch;
    d->timeout = 900;
    const char *t = getenv("AMDIM_COLLECTIVE_TIMEOUT");
    if (t && *t) {
        char *end;
        d->timeout = strtod(t, &end);
        if (*end || !(d->timeout >= 0)) {
            free(d);
            return amdim_fail(err, n, AMDIM_E_INVALID, "AMDIM_COLLECTIVE_TIMEOUT=%s: give seconds (0: no watchdog)", t);
        }
    }
    if (d->timeout > 0) {
        if (pthread_create(&d->watchdog, NULL, watchdog_main, d) != 0) {
            free(d);
            return amdim_fail(err, n, AMDIM_E_IO, "cannot start the collective watchdog thread");
        }
        d->watchdog_on = 1;
    }
    *out = &d->comm;
    return AMDIM_OK;
}

void amdim_parallel_stats(const amdim_comm *c, double *seconds, uint64_t *bytes, uint64_t *calls)
{
    const mpi_group *d = c->ctx;
    *seconds = d->seconds, *bytes = d->bytes, *calls = d->calls;
}

void amdim_parallel_close(amdim_comm *c)
{
    if (!c)
        return;
    mpi_group *d = c->ctx;
    if (d->watchdog_on) {
        atomic_store(&d->stop, 1);
        pthread_join(d->watchdog, NULL);
    }
    MPI_Finalize();
    free(d);
}

void amdim_parallel_abort(amdim_comm *c, int code)
{
    fflush(stderr);
    MPI_Abort(c ? ((mpi_group *)c->ctx)->world : MPI_COMM_WORLD, code);
}
