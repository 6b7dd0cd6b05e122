/* amdim pack: converts image datasets into one split of an amdim dataset
 * (see amdim_dataset.h for the format).
 *
 * Sources:
 *   imagefolder  SRC/<class>/.../<image>; classes are the sorted names of
 *                SRC's sub-directories (hidden ones ignored) and give the
 *                labels; images are walked like torchvision's ImageFolder, so
 *                source_index equals its sample index.
 *   list         SRC is a text file of "relative/path label" lines; paths
 *                are relative to `root` (default: the list file's directory).
 *   cifar10      the binary version: SRC is cifar-10-batches-bin/ (split
 *                "train" reads data_batch_1..5.bin, "test" test_batch.bin)
 *                or one .bin file.
 *   cifar100     cifar-100-binary/ (train.bin, test.bin) or one .bin file;
 *                label = fine label, aux_label = coarse (or swapped).
 *   stl10        stl10_binary/ (<split>_X.bin and <split>_y.bin; "unlabeled"
 *                has label -1) or one _X.bin file.
 *   idx          SRC is an MNIST-style IDX image file, gzipped or not; the
 *                labels file is `labels` or found by name (images-idx3 ->
 *                labels-idx1).
 * Images from files are fully decoded to verify them (unless verify = 0);
 * bad ones are skipped and reported. Raw sources are stored as raw pixels;
 * a malformed raw source fails the whole run. */
#ifndef AMDIM_PACK_H
#define AMDIM_PACK_H

#include <signal.h>
#include <stdint.h>

#include "amdim_common.h"

typedef enum {
    AMDIM_PACK_IMAGEFOLDER,
    AMDIM_PACK_LIST,
    AMDIM_PACK_CIFAR10,
    AMDIM_PACK_CIFAR100,
    AMDIM_PACK_STL10,
    AMDIM_PACK_IDX,
} amdim_pack_format;

/* Parses "imagefolder", "list", ... Returns 0 or AMDIM_E_INVALID. */
int amdim_pack_format_parse(const char *s, amdim_pack_format *f);
const char *amdim_pack_format_name(amdim_pack_format f);

/* Why an item was skipped. */
typedef enum {
    AMDIM_SKIP_UNREADABLE, /* open/read failed, or not a regular file */
    AMDIM_SKIP_EMPTY,
    AMDIM_SKIP_TRUNCATED,
    AMDIM_SKIP_CORRUPT,
    AMDIM_SKIP_UNSUPPORTED, /* not JPEG/PNG, or a JPEG variant we cannot decode */
    AMDIM_SKIP_TOO_LARGE,   /* over the pixel or file-size limit */
    AMDIM_SKIP_REASONS
} amdim_skip_reason;
const char *amdim_skip_reason_name(amdim_skip_reason r); /* "corrupt", ... */

/* Events reported while packing, in source order. */
typedef enum {
    AMDIM_PACK_EVENT_SKIP,    /* item left out; reason set */
    AMDIM_PACK_EVENT_WARNING, /* item kept, but its decoder warned */
    AMDIM_PACK_EVENT_CONVERT, /* item re-encoded as RGB JPEG (CMYK, grey, PNG) */
    AMDIM_PACK_EVENT_NOTE,    /* something the user should know (path may be NULL) */
} amdim_pack_event_kind;

typedef struct {
    amdim_pack_event_kind kind;
    amdim_skip_reason reason; /* for SKIP */
    uint64_t source_index;
    const char *path;   /* the source file (or "FILE record N" for raw sources) */
    const char *detail; /* e.g. "tjDecompress2(): Premature end of JPEG file" */
} amdim_pack_event;

typedef struct {
    amdim_pack_format format;
    const char *src;
    const char *out;
    const char *split;       /* default "train" */
    const char *root;        /* list: base directory of the paths */
    int allow_outside_root;  /* list: accept absolute paths and ".." above the root */
    const char *labels;      /* idx/stl10: labels file */
    const char *class_names; /* optional file, one class name per line */
    int cifar100_coarse;     /* label = coarse label, aux_label = fine */
    int threads;             /* 0: all cores */
    int max_side;            /* >0: shrink images whose longer side exceeds it */
    int quality;             /* >0: re-encode every JPEG at this quality */
    int no_verify;           /* only parse headers instead of full decodes */
    int force;               /* replace an existing split / output */
    uint64_t max_pixels;     /* 0: default (89,478,485, PIL's limit) */
    int window;              /* items per commit; 0: default */
    volatile sig_atomic_t *cancel; /* set non-zero (e.g. by a signal handler) to stop */
    void (*on_event)(const amdim_pack_event *ev, void *ctx);
    void (*on_progress)(uint64_t done, uint64_t total, void *ctx);
    void *ctx;
} amdim_pack_options;

typedef struct {
    uint64_t items;   /* source items considered */
    uint64_t records; /* records written */
    uint64_t skipped;
    uint64_t skipped_by[AMDIM_SKIP_REASONS];
    uint64_t warnings, converted, resized, reencoded;
    uint64_t bytes_in, bytes_out; /* source payload bytes read, record bytes written */
    int32_t classes;
    double seconds;
    char report_path[4200];
} amdim_pack_summary;

/* Packs opt->src into split opt->split of opt->out.
 * A new output is written under a temporary name and renamed into place on
 * success; a split added to an existing dataset becomes visible only in the
 * final transaction. Returns 0 or a negative status with the reason in err:
 * AMDIM_E_INVALID (options), AMDIM_E_EXISTS (output or split exists and
 * !force), AMDIM_E_NOT_FOUND / AMDIM_E_IO (source), AMDIM_E_CORRUPT (a raw
 * source is malformed), AMDIM_E_EMPTY (nothing to pack), AMDIM_E_LMDB,
 * AMDIM_E_CANCELLED. Skipped images are not errors: they are counted in
 * `summary` and reported through on_event and the report file. */
int amdim_pack_run(const amdim_pack_options *opt, amdim_pack_summary *summary, char *err,
                   size_t errlen);

#endif
