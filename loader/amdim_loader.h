/* amdim loader: `amdim-load DATA.lmdb | CONSUMER`.
 *
 * The producer side (amdim_loader_serve, used by the amdim-load command) starts
 * N worker processes. Each owns one shared-memory ring (shm/amdim_ring.h),
 * reads its records with io_uring (pread if io_uring is unavailable),
 * makes both augmented views and publishes whole batches. Batch b of an
 * epoch holds positions [b*B, (b+1)*B) of that epoch's seeded permutation
 * and is made by worker b % N, so batches - their samples and pixels - do
 * not depend on the number of workers.
 *
 * The pipe (the loader's stdout) carries only text control lines:
 *   AMDIM-LOAD v=1 pid=.. socket=.. preset=.. size=.. batch=.. workers=..
 *              records=.. classes=.. batches=.. drop_last=.. seed=..
 *              epochs=.. start_epoch=.. start_batch=.. split=..
 *   EPOCH <e> produced               all batches of epoch e are in the rings
 *   RESPAWN worker=<w> signal=<s> epoch=<e> batch=<b>
 *   ERROR worker=<w> epoch=<e> batch=<b> <message>
 *   END batches=<n> pairs=<n>
 * The consumer connects to the abstract Unix socket named in the handshake
 * (its uid must match), sends "START [seed=S] [epoch=E] [batch=B]
 * [epochs=N]\n", and receives "OK ..." plus the rings' memfds (SCM_RIGHTS),
 * or "ERR <reason>". Nothing is created in the file system or /dev/shm.
 *
 * The consumer side is the small API at the end of this header. */
#ifndef AMDIM_LOADER_H
#define AMDIM_LOADER_H

#include <signal.h>
#include <stdint.h>

#include "amdim_augment.h"
#include "amdim_common.h"

#define AMDIM_LOAD_PROTOCOL_VERSION 1

/* ---- producer ----------------------------------------------------------- */

typedef enum {
    AMDIM_LOAD_DECODE_SCALED = 0, /* region decode at libjpeg's 1/2 or 1/4 scale when both crops allow (default) */
    AMDIM_LOAD_DECODE_REGION = 1, /* region decode at full scale: the oracle's bytes */
    AMDIM_LOAD_DECODE_FULL = 2    /* whole-image decode, as torchvision does */
} amdim_loader_decode;

typedef struct {
    const char *path;     /* DATA.lmdb */
    const char *split;    /* default "train" */
    const char *preset;   /* NULL: implied by the data (see amdim_loader_preset_for) */
    int workers;          /* >= 1 */
    int batch;            /* >= 1 */
    int slots;            /* ring slots per worker, >= 2 */
    int queue_depth;      /* io_uring reads in flight per worker */
    int64_t epochs;       /* default number of epochs (the consumer may change it) */
    uint64_t seed;        /* default seed (the consumer may change it) */
    int keep_last;        /* keep the final partial batch */
    /* Data parallelism: with shard_size N > 1 `batch` is the GLOBAL batch
     * (a multiple of N) and this loader makes only rank shard_rank's share
     * of each global batch, positions [rank B/N, (rank + 1) B/N) of it, so
     * global batch b holds the same records and views for any N.
     * shard_size 0 or 1: no sharding. */
    int shard_rank, shard_size;
    int respawn;          /* how many times a dead worker may be replaced */
    int no_uring;         /* force pread */
    int decode;           /* amdim_loader_decode: how JPEG records are decoded */
    double progress_interval; /* seconds between stderr reports; 0 = 10 */
    int out_fd;           /* control pipe (normally 1) */
    volatile sig_atomic_t *cancel;
} amdim_loader_serve_options;

/* Runs the loader until every epoch is produced, the consumer goes away,
 * or *cancel is set. Progress and errors go to stderr. Returns 0 when all
 * batches were produced, or a negative status with the reason in err. */
int amdim_loader_serve(const amdim_loader_serve_options *opt, char *err, size_t errlen);

/* Measures the whole loader (a consumer in this process drains batches)
 * for 1..max_workers workers, `seconds` each after a warm-up, stopping at
 * the first count that reaches `target` pairs/s (0: no target); then the
 * queue depths 4 and 64 and ring depths 2 and 6 at the chosen count.
 * Prints the table and a recommendation to stdout. Returns 0, or 1 when a
 * setting failed (its error is printed). */
int amdim_loader_tune(const amdim_loader_serve_options *opt, int max_workers, double seconds, double target);

/* The preset a split implies: raw images up to 32x32 -> "cifar", raw
 * 96x96 -> "stl10", anything else -> "imagenet". */
const char *amdim_loader_preset_for(int encoding, uint32_t width, uint32_t height);

/* Epoch order: the permutation of [0, records) used for epoch `epoch`
 * (Philox-seeded Fisher-Yates). perm has `records` entries. */
void amdim_loader_epoch_order(uint64_t seed, uint64_t epoch, uint64_t records, uint64_t *perm);

/* ---- consumer ----------------------------------------------------------- */

typedef struct {
    char preset[16];
    char split[40];
    uint32_t size, batch, workers;  /* batch: this consumer's share of a global batch */
    uint32_t shard_rank, shard_size; /* global batch = batch x shard_size (1 without sharding) */
    uint64_t records, batches_per_epoch;
    int32_t classes;
    int drop_last;
    uint64_t seed;
    uint64_t start_epoch, start_batch, epochs; /* as agreed at START */
    int loader_pid;
} amdim_loader_info;

/* What the consumer asks for; -1 (or has_seed 0) keeps the loader's value. */
typedef struct {
    int has_seed;
    uint64_t seed;
    int64_t start_epoch, start_batch, epochs;
} amdim_loader_request;

typedef struct {
    uint64_t epoch, index;  /* batch `index` of epoch `epoch` */
    uint32_t count;         /* samples (the batch size unless keep_last) */
    int last_in_epoch;
    const int32_t *labels;  /* [count] */
    const uint64_t *records;/* [count] record indices in the split */
    const uint8_t *view1;   /* (count, size, size, 3) uint8 */
    const uint8_t *view2;
    uint32_t ring;          /* which ring holds it */
} amdim_batch;

typedef struct amdim_loader amdim_loader;

/* Reads the handshake from fd (normally 0), connects, sends the request
 * and maps the rings. Returns 0 or a status with the reason in err.
 * The environment variable AMDIM_STALL_SECONDS (default 60; 0 = never)
 * bounds how long amdim_loader_next waits on a worker that makes no
 * progress before it fails with AMDIM_E_WORKER naming it. */
int amdim_loader_attach(amdim_loader **out, int fd, const amdim_loader_request *req, char *err,
                        size_t errlen);
const amdim_loader_info *amdim_loader_get_info(const amdim_loader *l);

/* Next batch in (epoch, index) order, borrowed until amdim_loader_release.
 * Returns 0, 1 when every requested epoch has been delivered, or
 * AMDIM_E_WORKER (a worker died, failed or stalled: the message names
 * it, its signal, error or state, and the batch it held), AMDIM_E_PROTOCOL (the loader
 * vanished) or AMDIM_E_CORRUPT (a slot header does not match, a label or
 * record index is out of range, or the ring was overwritten: the message
 * names the ring and its worker). labels and records point to copies the
 * loader owns and has checked; view1 and view2 point into the ring. */
int amdim_loader_next(amdim_loader *l, amdim_batch *b);
void amdim_loader_release(amdim_loader *l, amdim_batch *b);
/* Seconds spent inside amdim_loader_next waiting for data so far. */
double amdim_loader_wait_seconds(const amdim_loader *l);
/* Memory of ring i (for cudaHostRegister): base and size. */
void amdim_loader_ring_memory(const amdim_loader *l, uint32_t i, void **base, size_t *bytes);
/* Reads a shard "R/N" (0 <= R < N <= 65536) or "auto": the rank and size of
 * an MPI / PMIx / Slurm launch from the environment (OMPI_COMM_WORLD_RANK /
 * _SIZE, PMIX_RANK with OMPI_COMM_WORLD_SIZE, PMI_RANK / PMI_SIZE,
 * SLURM_PROCID / SLURM_NTASKS; none found: 0/1). AMDIM_E_INVALID with the
 * reason in err. */
int amdim_loader_parse_shard(const char *s, int *rank, int *size, char *err, size_t n);

/* The record indices batch (epoch, index) must hold, recomputed from the
 * seed; out has room for `batch` entries; returns the count. */
uint32_t amdim_loader_expected_records(amdim_loader *l, uint64_t epoch, uint64_t index, uint64_t *out);
const char *amdim_loader_error(const amdim_loader *l);

/* The delivery check (delivery.c; amdim-peek's): each batch received is
 * compared with what the seed dictates (amdim_loader_expected_records),
 * each record counted once per epoch, and everything delivered - epoch,
 * index, labels, records, both views - folded into an FNV-1a digest, so
 * two runs that delivered the same bytes have the same digest. */
typedef struct {
    uint64_t pairs, batches, epochs;
    uint64_t duplicates; /* records received twice in one epoch */
    uint64_t missing;    /* records of the epochs' received batches that never came */
    uint64_t mismatched; /* batches not as the seed dictates (and records out of range) */
    uint64_t digest;
} amdim_delivery_counts;
typedef struct amdim_delivery amdim_delivery;
/* NULL when out of memory. */
amdim_delivery *amdim_delivery_new(amdim_loader *l);
/* Counts batch b (before amdim_loader_release); returns the batch's own digest. */
uint64_t amdim_delivery_add(amdim_delivery *d, const amdim_batch *b);
/* Ends the epoch being received and returns the counts. */
amdim_delivery_counts amdim_delivery_finish(amdim_delivery *d);
void amdim_delivery_free(amdim_delivery *d);

/* Unmaps the rings and tells amdim-load the consumer is done: STOP (it
 * exits 0), or ABORT after amdim_loader_next failed (it exits 1).
 * Accepts NULL. */
void amdim_loader_close(amdim_loader *l);

#endif
