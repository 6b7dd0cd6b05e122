/* Private to the loader: batch dealing and control-line helpers shared by
 * the producer and the consumer, and the producer's state shared by its
 * files (producer.c, handshake.c, supervise.c, worker.c). */
#ifndef AMDIM_LOADER_INTERNAL_H
#define AMDIM_LOADER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "amdim_dataset.h"
#include "amdim_loader.h"
#include "amdim_ring.h"

/* Batches per epoch for `records` samples in batches of `batch`. */
static inline uint64_t loader_batches(uint64_t records, uint32_t batch, int keep_last)
{
    return keep_last ? (records + batch - 1) / batch : records / batch;
}

/* Samples in batch b (the last one may be partial with keep_last). */
static inline uint32_t loader_batch_count(uint64_t records, uint32_t batch, uint64_t b)
{
    uint64_t left = records - b * batch;
    return left < batch ? (uint32_t)left : batch;
}

/* First position, in the epoch's permutation, of rank r's share of
 * global batch b (local batch B, N ranks). */
static inline uint64_t loader_shard_first(uint64_t b, uint32_t B, uint32_t N, uint32_t r)
{
    return b * (uint64_t)B * N + (uint64_t)r * B;
}

/* The k-th batch (k = 0, 1, ...) made by worker w of W, for a run that
 * starts at (e0, b0) and covers `epochs` epochs of nb batches. Returns 1
 * with *e, *b set, or 0 if the worker has no k-th batch. */
int amdim_loader_worker_batch(uint64_t e0, uint64_t b0, uint64_t epochs, uint64_t nb, uint32_t W, uint32_t w,
                        uint64_t k, uint64_t *e, uint64_t *b);

/* Words for a worker that makes no progress: its process state from
 * /proc/<pid>/stat ("stopped (SIGSTOP?)", "running", ...) and what its ring
 * says it was doing (AMDIM_PHASE_*: "in a read", "in a decode", ...). */
void amdim_loader_describe_worker(int pid, uint32_t phase, const char **state, const char **doing);

/* Seconds without progress after which a worker counts as stalled: the
 * variable `name`, else AMDIM_STALL_SECONDS, else 60; 0 = never. */
double amdim_loader_stall_seconds(const char *name);

/* Value of `key=` in a control line (up to the next space), copied into buf.
 * Returns 1 if found. */
int amdim_loader_kv(const char *line, const char *key, char *buf, size_t n);

/* Parses and checks amdim-load's handshake line ("AMDIM-LOAD v=... socket=...
 * ..."): every field present, in range and consistent (batches agree with
 * records, batch and drop_last). Fills *in (its START fields zero) and the
 * socket name. Returns 0, AMDIM_E_PROTOCOL or AMDIM_E_VERSION with the
 * reason in err. */
int amdim_loader_parse_hello(const char *line, amdim_loader_info *in, char *sockname, size_t sn, char *err, size_t n);

/* ---- the producer (amdim_loader_serve) ----------------------------------- */

/* Per-worker counters in anonymous shared memory (inherited by fork). */
typedef struct {
    _Atomic uint64_t pairs, io_wait_ns, slot_wait_ns;
    uint8_t pad[64 - 24];
} amdim_producer_stats;

/* One amdim_loader_serve run: set up by producer.c, agreed with the
 * consumer by handshake.c, its workers run by supervise.c (the parent) and
 * worker.c (each forked child, which inherits a copy). */
typedef struct {
    const amdim_loader_serve_options *opt;
    const char *split, *preset; /* resolved names (never NULL once set up) */
    amdim_dataset *ds;
    uint64_t *offsets;
    uint32_t *lengths;
    uint64_t records;
    int data_fd;
    amdim_augment_config aug;
    amdim_split_info info;
    uint64_t max_pixels; /* the packer's --max-pixels for this split; 0: default */
    uint32_t W, B;       /* B: this rank's share of a global batch of B x N */
    uint32_t R, N;       /* shard rank and size (0, 1 without sharding) */
    uint64_t nb;
    int use_uring;
    /* agreed with the consumer */
    uint64_t seed, e0, b0, epochs;
    amdim_ring *rings;
    amdim_producer_stats *stats;
    pid_t *pids;
    int *pidfds, *state, *respawns; /* state: 0 running, 1 finished, 2 failed */
    int listen_fd, conn_fd;
    pid_t parent;
    uint64_t oom_kills0;                   /* /proc/vmstat oom_kill when the workers started */
    uint64_t intruders, intruders_unshown; /* connections that were not the consumer */
    double intruders_t;                    /* when the last summary of them was printed */
    char sockname[64];
    char *err;
    size_t errlen;
} amdim_producer;

static inline uint64_t loader_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* handshake.c: the control pipe (opt->out_fd) and the consumer's socket. */

/* Writes one control line (fmt plus a newline, cut to 1023 bytes) to fd,
 * whole or not at all; returns 0, or -1 if the pipe or socket is gone. */
int amdim_loader_ctl_write(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Listens on a fresh abstract Unix socket (L->sockname, L->listen_fd).
 * Returns 0 or AMDIM_E_IO. */
int amdim_loader_listen(amdim_producer *L);
/* Writes the AMDIM-LOAD line to the control pipe. Returns 0, or
 * AMDIM_E_PROTOCOL when the consumer is gone. */
int amdim_loader_announce(amdim_producer *L);
/* Waits for the consumer's connection and START (refusing and logging, at
 * a bounded rate, any other connection), sets the agreed seed, e0, b0 and
 * epochs, sends OK with the rings' fds and closes the listening socket.
 * L->conn_fd is the consumer's connection from then on. Returns 0,
 * AMDIM_E_CANCELLED, AMDIM_E_IO, AMDIM_E_PROTOCOL or AMDIM_E_INVALID. */
int amdim_loader_handshake(amdim_producer *L);

/* supervise.c: the worker processes, seen from the parent. */

/* Forks the W workers (noting the OOM killer's count first). Returns 0 or
 * AMDIM_E_IO. */
int amdim_loader_start_workers(amdim_producer *L);
/* Watches the workers and the consumer until every worker has finished:
 * reaps, respawns (up to opt->respawn times each, when killed by a signal)
 * or reports the dead, and prints epoch marks, stalls and progress.
 * Returns 0, 1 when the consumer stopped deliberately (STOP) before the
 * end, or AMDIM_E_WORKER, AMDIM_E_PROTOCOL, AMDIM_E_CANCELLED, AMDIM_E_IO,
 * AMDIM_E_NOMEM. */
int amdim_loader_supervise(amdim_producer *L);
/* SIGKILLs and reaps every worker still running. */
void amdim_loader_kill_workers(amdim_producer *L);

/* worker.c: the body of worker process w (runs in the forked child; exits
 * 0 when its batches are made, 1 when the parent is gone, 3 on an error it
 * wrote into its ring). */
void amdim_loader_worker_main(amdim_producer *L, uint32_t w) __attribute__((noreturn));

#endif
