/* Private to the packer: the state of one amdim_pack_run and what its three
 * files share. pack.c runs the phases and owns the output files, pack_items.c
 * verifies and converts items on a pool of threads, pack_lmdb.c writes them
 * and the split's metadata to LMDB. */
#ifndef AMDIM_PACK_INTERNAL_H
#define AMDIM_PACK_INTERNAL_H

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "amdim_pack.h"
#include "pack_source_internal.h"

/* One item's result, filled by a worker and consumed by the writer. */
typedef struct {
    uint64_t item;
    int skip; /* 1: left out, reason below */
    amdim_skip_reason reason;
    int fatal; /* the whole run must stop: detail says why */
    int warning, converted, resized, reencoded;
    char detail[320];
    uint8_t *rec; /* encoded record */
    size_t rec_len, rec_cap;
    int has_stats;
    uint64_t sum[3], sumsq[3], npix;
    uint32_t width, height;
    uint8_t channels, encoding;
    uint64_t bytes_in;
} amdim_pack_slot;

typedef struct amdim_packer amdim_packer;
typedef struct amdim_pack_worker amdim_pack_worker; /* a thread's buffers and codec: pack_items.c */

/* Threads that process one window of slots per amdim_pack_pool_start. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    int nthreads; /* threads started */
    int nworkers; /* worker states allocated */
    int finished, stop;
    uint64_t generation;
    pthread_t *tid;
    amdim_pack_worker *ws;
    amdim_pack_slot *slots;
    int nslots;
    atomic_int next;
    amdim_packer *pk;
} amdim_pack_pool;

struct amdim_packer {
    const amdim_pack_options *opt;
    int owns_split; /* amdim_pack_open_dbs made the split ours: a failure drops it */
    amdim_pack_source src;
    uint64_t max_pixels;
    /* output */
    char tmp_path[4200], report_tmp[4300];
    int in_place, out_fd;
    MDB_env *env;
    MDB_dbi dbi, meta;
    size_t mapsize;
    FILE *report;
    /* accounting, in source order */
    uint64_t next_key;
    amdim_pack_summary *sum;
    uint64_t csum[3], csumsq[3], cnpix;
    int stats_complete;
    int shape_set, channels;
    uint32_t width, height;
    int encoding; /* -1 mixed */
    char *err;
    size_t errlen;
};

/* ---- pack.c -------------------------------------------------------------- */

/* Tells the caller (a NOTE event) and the report file, once it is open. */
void amdim_pack_note(amdim_packer *pk, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- pack_items.c: the worker pool --------------------------------------- */

/* Starts nthreads workers, each with its own codec (and raw-item buffers for
 * raw sources). Returns 0 or AMDIM_E_NOMEM; either way the pool is then
 * released with amdim_pack_pool_destroy. */
int amdim_pack_pool_create(amdim_pack_pool *p, amdim_packer *pk, int nthreads);
/* Hands slots[0..n) (their `item` set) to the workers, which fill the rest. */
void amdim_pack_pool_start(amdim_pack_pool *p, amdim_pack_slot *slots, int n);
/* Waits until every slot of the last start is filled. */
void amdim_pack_pool_wait(amdim_pack_pool *p);
/* Stops and joins the threads and frees their state. */
void amdim_pack_pool_destroy(amdim_pack_pool *p);

/* ---- pack_lmdb.c: the LMDB writer ---------------------------------------- */

/* Creates pk->env on path (a new file, or an existing dataset of
 * existing_bytes) with a map of at least twice that. Statuses from LMDB
 * carry its message in pk->err (AMDIM_E_LMDB, or AMDIM_E_IO for I/O errors
 * and a full disk). */
int amdim_pack_env_open(amdim_packer *pk, const char *path, uint64_t existing_bytes);
/* Opens the meta and split databases, clearing a half-written split left by
 * a killed pack or (with force) the split being replaced. AMDIM_E_EXISTS when
 * another pack completed the split since exists_complete was decided. */
int amdim_pack_open_dbs(amdim_packer *pk, int exists_complete);
/* Appends the records of the slots not skipped, in order, in one
 * transaction. */
int amdim_pack_write_window(amdim_packer *pk, const amdim_pack_slot *slots, int n);
/* Writes the split's metadata ("<split>.records" last, which makes it
 * visible) and, for a new file, the dataset's. */
int amdim_pack_write_meta(amdim_packer *pk, int new_file);
/* Syncs and closes pk->env; on failure it stays open. */
int amdim_pack_env_sync_close(amdim_packer *pk);
/* Closes pk->env if open. After a failure (`failed`) in an existing dataset
 * it first drops the split this pack started, keeping pk->err as it is. */
void amdim_pack_env_close(amdim_packer *pk, int failed);

#endif
