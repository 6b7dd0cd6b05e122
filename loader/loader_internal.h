/* Private to the loader: batch dealing and control-line helpers shared by
 * the producer and the consumer. */
#ifndef AMDIM_LOADER_INTERNAL_H
#define AMDIM_LOADER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_loader.h"

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

#endif
