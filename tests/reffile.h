/* Reader for reference files written by tests/ref/reffile.py: named
 * tensors (uint8, int32, float32, float64) in a gzip stream. */
#ifndef AMDIM_REFFILE_H
#define AMDIM_REFFILE_H

#include <stddef.h>
#include <stdint.h>

enum { REF_U8 = 0, REF_I32 = 1, REF_F32 = 2, REF_F64 = 3 };

typedef struct {
    char *name;
    int dtype, ndim;
    uint32_t dims[8];
    size_t count; /* elements */
    void *data;
} ref_tensor;

typedef struct {
    ref_tensor *t;
    int n;
} ref_file;

/* Loads the file; exits the test with a message if it is missing or bad. */
void ref_load(ref_file *f, const char *path);
void ref_free(ref_file *f);
/* The tensor called `name`, checked to have the dtype; exits if absent. */
const ref_tensor *ref_get(const ref_file *f, const char *name, int dtype);
/* NULL if absent. */
const ref_tensor *ref_find(const ref_file *f, const char *name);

#endif
