/* amdim ring: a single-producer / single-consumer ring of fixed-size batch
 * slots in shared memory (a memfd), shared by a loader worker process and
 * the trainer.
 *
 * Layout: one header page, then slot_count slots of slot_bytes each, every
 * slot page-aligned so the consumer can register the whole segment once as
 * pinned CUDA memory. A slot holds a slot header, int32 labels[batch],
 * uint64 record indices[batch], then view 1 and view 2 as uint8
 * (batch, height, width, 3).
 *
 * Publication: the producer fills slot (head % slot_count) and stores
 * head + 1 with release order; the consumer loads head with acquire order,
 * reads, and releases by storing tail + 1. Both sides wait on a futex when
 * there is nothing to do, announcing it in a flag, and the other side
 * issues the wake-up only when that flag is set. (The consumer sleeps on an
 * event counter that also changes with the producer's state, so a producer
 * that stops can never leave it asleep.) head and tail count slots
 * since creation (32 bits: 4 billion batches per ring).
 *
 * Every field of the header is validated by amdim_ring_attach before any
 * other is trusted, from a private copy that both sides use from then on:
 * every process that maps the ring (a loader worker decoding untrusted
 * JPEGs among them) can rewrite the header, so neither side reads geometry
 * from shared memory again, and the indices it does read there (head,
 * tail) are checked against the private copy. The memfd is sealed against
 * shrinking and growing, and attach refuses one that is not. */
#ifndef AMDIM_RING_H
#define AMDIM_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "amdim_common.h"

#define AMDIM_RING_MAGIC 0x474e5241u /* "ARNG" */
#define AMDIM_RING_VERSION 2u /* 2: producer pid, phase and progress */
#define AMDIM_SLOT_MAGIC 0x544c5341u /* "ASLT" */
#define AMDIM_RING_ERROR_MAX 512

/* What a producer is doing (amdim_ring_header.phase). */
enum { AMDIM_PHASE_START = 0, AMDIM_PHASE_SLOT = 1, AMDIM_PHASE_READ = 2, AMDIM_PHASE_DECODE = 3 };

/* Producer states. */
enum { AMDIM_PRODUCER_RUNNING = 0, AMDIM_PRODUCER_FINISHED = 1, AMDIM_PRODUCER_FAILED = 2 };

typedef struct {
    /* layout, written once by amdim_ring_create */
    uint32_t magic, version, header_bytes, slot_count;
    uint64_t slot_bytes, total_bytes;
    uint32_t batch, height, width, channels;
    uint64_t off_labels, off_indices, off_view1, off_view2; /* within a slot */
    uint32_t ring_id, ring_count;
    uint8_t pad0[128 - 80];
    /* producer side */
    _Atomic uint32_t head;
    _Atomic uint32_t producer_waiting;
    _Atomic uint32_t producer_state;
    _Atomic uint32_t event; /* bumped on every publish and state change; the consumer sleeps on it */
    /* what the producer is doing, for a consumer that has waited long:
     * its pid, AMDIM_PHASE_*, and a count bumped at every step */
    _Atomic int32_t producer_pid;
    _Atomic uint32_t phase;
    _Atomic uint32_t progress;
    uint8_t pad1[64 - 28];
    /* consumer side */
    _Atomic uint32_t tail;
    _Atomic uint32_t consumer_waiting;
    uint8_t pad2[64 - 8];
    /* why the producer failed (NUL-terminated), set before FAILED */
    char error[AMDIM_RING_ERROR_MAX];
} amdim_ring_header;

typedef struct {
    uint32_t magic;
    uint32_t count; /* samples in this batch (<= batch) */
    uint64_t epoch, batch_index;
    uint32_t ring_id, reserved;
    uint8_t pad[64 - 32];
} amdim_slot_header;

/* A ring's layout as created or as validated by attach. */
typedef struct {
    uint32_t slot_count, batch, height, width, channels, ring_id, ring_count;
    uint64_t slot_bytes, total_bytes;
    uint64_t off_labels, off_indices, off_view1, off_view2; /* within a slot */
} amdim_ring_layout;

/* A mapped ring (either side). */
typedef struct {
    int fd;
    amdim_ring_header *hdr; /* shared: only its atomics and error are used after create/attach */
    uint8_t *base;
    size_t bytes;
    uint32_t local; /* producer: next head; consumer: next tail */
    amdim_ring_layout geom; /* private: the only geometry used after create/attach */
} amdim_ring;

/* A slot as the producer fills it or the consumer reads it. */
typedef struct {
    amdim_slot_header *header;
    int32_t *labels;
    uint64_t *indices;
    uint8_t *view1, *view2; /* (batch, height, width, channels) */
} amdim_slot;

/* Bytes of one slot for the given geometry (page multiple). */
size_t amdim_ring_slot_bytes(uint32_t batch, uint32_t height, uint32_t width, uint32_t channels);
/* Bytes of a whole ring (header page and slot_count slots) for the geometry. */
uint64_t amdim_ring_total_bytes(uint32_t slot_count, uint32_t batch, uint32_t height, uint32_t width,
                                uint32_t channels);

/* Creates a ring in a new memfd (mode 0600, never in /dev/shm, sealed with
 * F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL once sized) and maps it.
 * Returns 0, AMDIM_E_INVALID, AMDIM_E_NOMEM or AMDIM_E_IO with err set. */
int amdim_ring_create(amdim_ring *r, uint32_t slot_count, uint32_t batch, uint32_t height,
                      uint32_t width, uint32_t channels, uint32_t ring_id, uint32_t ring_count,
                      char *err, size_t n);

/* Maps a ring received as a file descriptor (takes ownership of fd) after
 * checking its seals, its size and every header field, and keeps the
 * checked layout in r->geom. Returns 0, AMDIM_E_UNSUPPORTED (not sealed
 * against shrinking and growing: any process holding it could cut the
 * mapping short), AMDIM_E_CORRUPT (foreign or damaged header, with the
 * field named), AMDIM_E_TRUNCATED (segment smaller than its header says),
 * AMDIM_E_VERSION or AMDIM_E_IO. */
int amdim_ring_attach(amdim_ring *r, int fd, char *err, size_t n);

/* Unmaps and closes. Accepts a zeroed ring. */
void amdim_ring_close(amdim_ring *r);

/* Slot i (0 <= i < slot_count) as pointers into the mapping, from r->geom. */
void amdim_ring_slot(const amdim_ring *r, uint32_t i, amdim_slot *s);

/* Producer: waits until a slot is free and returns it (its index is
 * local % slot_count). timeout_ms < 0 waits forever. Returns 0, or 1 on
 * timeout (call again), or AMDIM_E_CANCELLED if *stop became non-zero. */
int amdim_ring_acquire(amdim_ring *r, amdim_slot *s, int timeout_ms, const volatile int *stop);
/* Producer: makes the acquired slot visible to the consumer. */
void amdim_ring_publish(amdim_ring *r);
/* Producer (or its supervisor): final state, with a message for FAILED.
 * Wakes a waiting consumer. */
void amdim_ring_set_state(amdim_ring *r, uint32_t state, const char *message);

/* Consumer: waits for the next published slot. Returns 0 with *s set,
 * 1 on timeout, 2 if the producer has stopped (finished or failed) and
 * every published slot has been consumed, or AMDIM_E_CORRUPT if the
 * shared head claims more published slots than the ring has. The slot's
 * header, labels and indices are shared memory: copy them before
 * checking them. */
int amdim_ring_next(amdim_ring *r, amdim_slot *s, int timeout_ms);
/* Consumer: hands the slot obtained by the last amdim_ring_next back. */
void amdim_ring_release(amdim_ring *r);

/* Copies the producer's failure message (shared memory, possibly without
 * its NUL) into buf: at most AMDIM_RING_ERROR_MAX - 1 bytes, control
 * characters replaced by '?', always NUL-terminated. */
void amdim_ring_get_error(const amdim_ring *r, char *buf, size_t n);

#endif
