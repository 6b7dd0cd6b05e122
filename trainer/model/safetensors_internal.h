/* Private to the trainer: the safetensors container (safetensors.c) that
 * checkpoints are written in. A file is an 8-byte little-endian header
 * length, a JSON header (tensor name -> {"dtype", "shape", "data_offsets"};
 * "__metadata__", a map of strings to strings), then the tensor data, at
 * offsets counted from the byte after the header. This layer knows the
 * container, not what a checkpoint holds (checkpoint.c). */
#ifndef AMDIM_SAFETENSORS_INTERNAL_H
#define AMDIM_SAFETENSORS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* What a reader accepts; longer or larger is AMDIM_E_CORRUPT. */
#define AMDIM_SAFETENSORS_MAX_HEADER (4u << 20) /* bytes of JSON: ours are 14-17 KB; jansson holds the tree */
#define AMDIM_SAFETENSORS_MAX_NAME 255           /* bytes of a tensor name */
#define AMDIM_SAFETENSORS_MAX_DTYPE 7            /* bytes of a dtype ("F32", "I64", "U8") */
#define AMDIM_SAFETENSORS_MAX_RANK 8             /* dimensions of a shape */
#define AMDIM_SAFETENSORS_MAX_META_KEY 63        /* bytes of a metadata key */
#define AMDIM_SAFETENSORS_MAX_META_VALUE 255     /* bytes of a metadata value */

/* One entry of the header's tensor table. */
typedef struct {
    char name[AMDIM_SAFETENSORS_MAX_NAME + 1];
    char dtype[AMDIM_SAFETENSORS_MAX_DTYPE + 1];
    int ndim;
    int64_t shape[AMDIM_SAFETENSORS_MAX_RANK]; /* each >= 0 */
    uint64_t begin, end;                       /* data_offsets: begin <= end <= the data's size */
} amdim_safetensors_tensor;

/* A parsed file: its tensor table and metadata, in header order. Fields
 * are read-only to callers. */
typedef struct {
    uint8_t *file;     /* the length and the header (a buffer: all of it) */
    size_t size;       /* of the whole file */
    int fd;            /* a file: open for reading its tensors; a buffer: -1 */
    uint64_t data_off; /* where the data starts: 8 + the header length */
    amdim_safetensors_tensor *t;
    int nt;
    char (*mk)[AMDIM_SAFETENSORS_MAX_META_KEY + 1], (*mv)[AMDIM_SAFETENSORS_MAX_META_VALUE + 1];
    int nm;
} amdim_safetensors_file;

/* Opens the regular file at path and parses its header, reading only the
 * length and the header; f->size is the file's size, which every tensor's
 * data_offsets are checked against. The tensors are read later with
 * amdim_safetensors_read_tensor, straight into their destination. The file
 * is opened without blocking: a FIFO or a device is refused, not waited on.
 * Returns 0 (close f with amdim_safetensors_close), or with f closed:
 * AMDIM_E_NOT_FOUND (no such file), AMDIM_E_IO, AMDIM_E_INVALID (not a
 * regular file), AMDIM_E_CORRUPT (a bad header length, JSON that is not
 * strict JSON - duplicate keys, trailing text, invalid UTF-8 included - or a
 * table outside the limits above), AMDIM_E_TRUNCATED (the header or a
 * tensor's data runs past the end of the file) or AMDIM_E_NOMEM, with a
 * message naming the file in err. */
int amdim_safetensors_open(amdim_safetensors_file *f, const char *path, char *err, size_t n);
/* The same on `size` bytes in memory (copied); `name` names them in
 * messages. */
int amdim_safetensors_open_buffer(amdim_safetensors_file *f, const uint8_t *data, size_t size, const char *name,
                                  char *err, size_t n);
/* Releases f (after a successful open; a zeroed f with fd -1 too). */
void amdim_safetensors_close(amdim_safetensors_file *f);

/* The metadata value under key, or NULL; valid until f is closed. */
const char *amdim_safetensors_meta(const amdim_safetensors_file *f, const char *key);
/* The tensor named `name`, or NULL; valid until f is closed. */
const amdim_safetensors_tensor *amdim_safetensors_find(const amdim_safetensors_file *f, const char *name);
/* Bytes of tensor data the file holds (its size after the header). */
uint64_t amdim_safetensors_data_size(const amdim_safetensors_file *f);

/* The first `len` bytes of t's data into dst (len <= its size, asserted).
 * AMDIM_E_IO "cannot read tensor <name> of <path>: <why>". */
int amdim_safetensors_read_tensor(const amdim_safetensors_file *f, const amdim_safetensors_tensor *t, void *dst,
                                  size_t len, const char *path, char *err, size_t n);
/* `len` bytes of the data from byte `at` of it into dst (inside the data,
 * asserted). AMDIM_E_IO "cannot read <path>: <why>". */
int amdim_safetensors_read_data(const amdim_safetensors_file *f, uint64_t at, void *dst, size_t len, const char *path,
                                char *err, size_t n);

/* ---- writing ---- */

/* One tensor to write: `bytes` raw bytes of data. */
typedef struct {
    const char *name;
    const char *dtype;
    int ndim;
    int64_t shape[AMDIM_SAFETENSORS_MAX_RANK];
    const void *data;
    size_t bytes;
} amdim_safetensors_out;

/* One metadata entry. */
typedef struct {
    const char *key, *value;
} amdim_safetensors_kv;

/* Writes a safetensors file at path: the header is
 * {"__metadata__":{"k":"v",...},"name":{"dtype":"..","shape":[..],
 * "data_offsets":[b,e]},...} with no spaces, entries in the order given,
 * the tensors' data back to back in that order, and the header padded
 * with spaces to a multiple of 8 bytes; the same input gives the same
 * bytes. It goes to "<path>.tmp.<pid>", is fsynced and renamed over path,
 * so path is either the old file or the whole new one; on failure the
 * temporary file is removed. The caller fsyncs the directory.
 * AMDIM_E_IO naming the file with errno's text, or AMDIM_E_NOMEM. */
int amdim_safetensors_write(const char *path, const amdim_safetensors_kv *meta, int nm,
                            const amdim_safetensors_out *t, int nt, char *err, size_t n);

#endif
