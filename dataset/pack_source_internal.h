/* Private to the packer: the list of items a source yields. pack_source.c
 * implements the interface below and the file sources (imagefolder, list);
 * pack_source_raw.c the raw binary ones (CIFAR, STL-10, IDX). */
#ifndef AMDIM_PACK_SOURCE_H
#define AMDIM_PACK_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "amdim_pack.h"

#define PACK_MAX_FILES 8

typedef struct {
    int is_raw;
    uint64_t n;
    /* File sources: item i is the file at arena + path_off[i]. */
    char *arena;
    size_t arena_len, arena_cap;
    size_t *path_off;
    uint64_t items_cap; /* capacity of path_off and labels */
    int32_t *labels;
    /* Raw sources: item i is record_bytes at offset i*record_bytes (after
     * the file's header) of the file holding it. */
    int nfiles;
    int fd[PACK_MAX_FILES];
    char *file_name[PACK_MAX_FILES];
    uint64_t first[PACK_MAX_FILES + 1]; /* first item of each file; first[nfiles] = n */
    uint64_t file_header;               /* bytes before the first record */
    uint8_t *memory;                    /* idx: the whole decompressed image file */
    uint8_t *raw_labels;                /* stl10 / idx label bytes, NULL for unlabelled */
    size_t record_bytes;
    uint32_t width, height, channels;
    int32_t nclasses;
    char **class_names; /* nclasses entries or NULL */
    uint64_t ignored;   /* imagefolder: files without an image extension */
    char err[1024];
} amdim_pack_source;

/* Builds the item list. Returns 0 or a status with a message in src->err. */
int amdim_pack_source_open(amdim_pack_source *src, const amdim_pack_options *opt);
void amdim_pack_source_close(amdim_pack_source *src);

/* Reads raw item i into buf (record_bytes) and converts it to HWC pixels
 * (width*height*channels) in px, with its labels. AMDIM_E_IO or
 * AMDIM_E_CORRUPT (label out of range) with a message in err. */
int amdim_pack_source_read_raw(const amdim_pack_source *src, amdim_pack_format format, int coarse, uint64_t i,
                               uint8_t *buf, uint8_t *px, int32_t *label, int32_t *aux, char *err, size_t errlen);

/* Human-readable name of item i: its path, or "FILE record N". */
void amdim_pack_source_item_name(const amdim_pack_source *src, uint64_t i, char *buf, size_t n);

/* ---- between pack_source.c and pack_source_raw.c ------------------------- */

/* pack_source.c: whether path names a directory (following links). */
int amdim_pack_source_is_dir(const char *path);

/* pack_source.c: sets src->nclasses to `expected`, then loads the dataset's
 * own class-name file dir/file, one name a line, if it is there and names
 * exactly `expected` classes; keeps none otherwise. A status with a
 * message in src->err when the file is there but cannot be read. */
int amdim_pack_source_maybe_class_names(amdim_pack_source *src, const char *dir, const char *file, int32_t expected);

/* pack_source_raw.c: the raw sources' openers, which amdim_pack_source_open
 * calls on a fresh src (hundred: CIFAR-100, else CIFAR-10). Each returns 0
 * or a status with a message in src->err; the caller closes src either
 * way. */
int amdim_pack_source_open_cifar(amdim_pack_source *src, const amdim_pack_options *opt, int hundred);
int amdim_pack_source_open_stl10(amdim_pack_source *src, const amdim_pack_options *opt);
int amdim_pack_source_open_idx(amdim_pack_source *src, const amdim_pack_options *opt);

/* pack_source_raw.c: which of a raw source's files holds item i. */
int amdim_pack_source_file_of(const amdim_pack_source *src, uint64_t i);

#endif
