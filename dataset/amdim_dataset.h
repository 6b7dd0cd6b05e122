/* amdim dataset: the on-disk format of a packed dataset and its reader.
 *
 * A dataset is ONE LMDB file (opened with MDB_NOSUBDIR, no lock file) holding
 * named databases:
 *   "meta"    text values: "format_version", "<split>.records", ... (docs/dataset-format.md)
 *   "<split>" one record per image; key = record index as 8-byte big-endian
 *             (0 .. records-1, dense, in source order), value = record below.
 * A split exists once its "<split>.records" meta key is present: the packer
 * writes that key in its last transaction, so an interrupted pack leaves no
 * visible split.
 *
 * Record value, little-endian (AMDIM_RECORD_HEADER_SIZE bytes, then payload):
 *   off size field
 *     0  4   magic        "AMRC"
 *     4  2   version      AMDIM_RECORD_VERSION
 *     6  2   header_size  AMDIM_RECORD_HEADER_SIZE
 *     8  4   label        int32, -1 = unlabelled
 *    12  4   aux_label    int32, CIFAR-100 coarse label; -1 = none
 *    16  8   source_index uint64, position of the image in its source
 *    24  4   width        uint32
 *    28  4   height       uint32
 *    32  1   channels     1 (grey) or 3 (RGB)
 *    33  1   encoding     AMDIM_ENCODING_RAW (HWC uint8) or AMDIM_ENCODING_JPEG
 *    34  2   reserved     0
 *    36  4   payload_size uint32
 *    40  ... payload
 */
#ifndef AMDIM_DATASET_H
#define AMDIM_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_common.h"

#define AMDIM_DATASET_FORMAT_VERSION 1
#define AMDIM_RECORD_MAGIC 0x43524d41u /* "AMRC" read as little-endian */
#define AMDIM_RECORD_VERSION 1
#define AMDIM_RECORD_HEADER_SIZE 40
#define AMDIM_SPLIT_NAME_MAX 32

typedef enum {
    AMDIM_ENCODING_RAW = 0,  /* height*width*channels uint8, row-major HWC */
    AMDIM_ENCODING_JPEG = 1, /* a JPEG file's bytes */
} amdim_encoding;

/* A decoded record header plus a pointer to its payload (not owned). */
typedef struct {
    int32_t label;
    int32_t aux_label;
    uint64_t source_index;
    uint32_t width, height;
    uint8_t channels;
    uint8_t encoding;
    uint32_t payload_size;
    const uint8_t *payload;
} amdim_record;

/* Writes header and payload into dst (capacity cap). Returns 0,
 * AMDIM_E_INVALID (bad fields) or AMDIM_E_TOO_LARGE (cap too small);
 * *written gets the total size. */
int amdim_record_encode(const amdim_record *rec, uint8_t *dst, size_t cap, size_t *written);

/* Parses and validates a record value of `len` bytes. rec->payload points
 * into src. Returns 0, AMDIM_E_CORRUPT (bad magic or inconsistent sizes,
 * with a reason in err), AMDIM_E_TRUNCATED or AMDIM_E_VERSION. */
int amdim_record_decode(const void *src, size_t len, amdim_record *rec, char *err, size_t errlen);

/* Reader ----------------------------------------------------------------- */

typedef struct amdim_dataset amdim_dataset;

typedef struct {
    char name[AMDIM_SPLIT_NAME_MAX + 1];
    uint64_t records;
    int32_t classes;   /* number of classes (max label + 1), 0 if unlabelled */
    uint64_t skipped;  /* source items rejected at pack time */
    int channels;      /* 1 or 3; 0 if mixed */
    int encoding;      /* amdim_encoding; -1 if mixed */
    uint32_t width, height; /* 0 if the images differ in size */
    double mean[3], std[3]; /* per channel, 0..255 scale; NAN if not computed */
} amdim_split_info;

/* Opens a dataset read-only. Checks that it is an LMDB file with a meta
 * database and a format version this code reads. On failure *out is NULL
 * and `err` says why. Returns 0, AMDIM_E_NOT_FOUND, AMDIM_E_IO,
 * AMDIM_E_CORRUPT (not an amdim dataset), AMDIM_E_VERSION or AMDIM_E_LMDB. */
int amdim_dataset_open(amdim_dataset **out, const char *path, char *err, size_t errlen);
void amdim_dataset_close(amdim_dataset *ds); /* accepts NULL */
const char *amdim_dataset_error(const amdim_dataset *ds);

/* Number of complete splits and their names, sorted by name. The string is
 * owned by the dataset and valid until it is closed. */
int amdim_dataset_split_count(const amdim_dataset *ds);
const char *amdim_dataset_split_name(const amdim_dataset *ds, int i);

/* Fills info for a split. AMDIM_E_NOT_FOUND if there is no such split. */
int amdim_dataset_split_info(amdim_dataset *ds, const char *split, amdim_split_info *info);

/* Looks up a meta value by key, e.g. "train.class_names". The value is copied
 * into buf (NUL-terminated, truncated to n). AMDIM_E_NOT_FOUND if absent. */
int amdim_dataset_meta(amdim_dataset *ds, const char *key, char *buf, size_t n);

/* Calls fn(key, value, ctx) for every meta entry in key order. */
int amdim_dataset_meta_each(amdim_dataset *ds,
                            void (*fn)(const char *key, const char *value, void *ctx), void *ctx);

/* Reads record `index` of a split. rec->payload points into the memory map
 * and stays valid until the dataset is closed. Returns 0, AMDIM_E_NOT_FOUND,
 * AMDIM_E_CORRUPT (message names split and index) or AMDIM_E_LMDB. */
int amdim_dataset_get(amdim_dataset *ds, const char *split, uint64_t index, amdim_record *rec);

/* Raw value of a record: a pointer into the memory map plus its byte offset
 * from the start of the file (what the loader reads with io_uring). */
int amdim_dataset_locate(amdim_dataset *ds, const char *split, uint64_t index,
                         const void **value, size_t *len, uint64_t *file_offset);

/* Byte offset (from the start of the file) and length of every record of a
 * split, in index order, for readers that fetch values with their own I/O.
 * Checks that keys are dense (0..records-1) and values lie inside the file.
 * *offsets and *lengths are malloc'd (caller frees). Returns 0,
 * AMDIM_E_NOT_FOUND, AMDIM_E_CORRUPT (naming the record) or AMDIM_E_NOMEM. */
int amdim_dataset_index(amdim_dataset *ds, const char *split, uint64_t **offsets, uint32_t **lengths,
                        uint64_t *count);

/* Split names are 1..32 of [A-Za-z0-9_-] and not "meta". */
int amdim_split_name_valid(const char *name);

#endif
