/* Private to the trainer: the one checked writer of what amdim-train and
 * amdim-embed write besides checkpoints (metrics.jsonl, .npy outputs).
 * Every write, fsync and close is checked, and a failure names the file
 * and the cause (a full disk is "No space left on device"). */
#ifndef AMDIM_OUTPUT_H
#define AMDIM_OUTPUT_H

#include <stddef.h>

enum {
    /* A whole new file: a symbolic link is followed; an existing target
     * that is not a regular file (a device such as /dev/null, a FIFO) is
     * written in place; a regular file is written to TARGET.tmp.<pid> in
     * the target's own directory, fsynced and renamed over it (keeping an
     * existing file's mode), so a failed write leaves it as it was. */
    AMDIM_OUTPUT_REPLACE = 0,
    /* Lines added to a file (created if missing), each with one write. */
    AMDIM_OUTPUT_APPEND = 1,
};

typedef struct {
    int fd;            /* -1: closed */
    int mode;
    int regular;       /* fsync on close */
    char path[4200];   /* as given, for messages */
    char target[4200]; /* with symbolic links followed */
    char tmp[4300];    /* REPLACE of a regular file: the temporary name ("" otherwise) */
} amdim_output;

/* Returns 0 or AMDIM_E_IO / AMDIM_E_INVALID with the reason in err. */
int amdim_output_open(amdim_output *o, const char *path, int mode, char *err, size_t n);
int amdim_output_write(amdim_output *o, const void *data, size_t len, char *err, size_t n);
/* fsync (regular files), close and, for REPLACE, rename into place. On
 * failure the temporary file is removed. */
int amdim_output_close(amdim_output *o, char *err, size_t n);
/* Closes without keeping anything written to a temporary file (accepts a
 * closed output). */
void amdim_output_discard(amdim_output *o);

#endif
