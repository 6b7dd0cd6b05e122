/* The checked writer of what amdim-train and amdim-embed write besides
 * checkpoints (output_internal.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amdim_common.h"
#include "output_internal.h"

/* path with its symbolic links followed into out: realpath for a target
 * that exists, else (a dangling link) the links' text, so the file is
 * created where the link points. */
static int follow_links(const char *path, char *out, size_t n, char *err, size_t en)
{
    char cur[4200], link[4200];
    snprintf(cur, sizeof cur, "%s", path);
    for (int depth = 0; depth < 40; depth++) {
        struct stat sb;
        if (lstat(cur, &sb) != 0 || !S_ISLNK(sb.st_mode)) {
            snprintf(out, n, "%s", cur);
            return AMDIM_OK;
        }
        char real[PATH_MAX];
        if (realpath(cur, real)) {
            snprintf(out, n, "%s", real);
            return AMDIM_OK;
        }
        ssize_t k = readlink(cur, link, sizeof link - 1);
        if (k < 0)
            return amdim_fail(err, en, AMDIM_E_IO, "cannot read the link %s: %s", cur, strerror(errno));
        link[k] = 0;
        const char *slash = strrchr(cur, '/');
        char next[8500];
        if (link[0] == '/' || !slash)
            snprintf(next, sizeof next, "%s", link);
        else
            snprintf(next, sizeof next, "%.*s/%s", (int)(slash - cur), cur, link);
        if (strlen(next) >= sizeof cur)
            return amdim_fail(err, en, AMDIM_E_INVALID, "%s: the path it links to is too long", path);
        memcpy(cur, next, strlen(next) + 1);
    }
    return amdim_fail(err, en, AMDIM_E_IO, "%s: too many levels of symbolic links", path);
}

int amdim_output_open(amdim_output *o, const char *path, int mode, char *err, size_t n)
{
    memset(o, 0, sizeof *o);
    o->fd = -1;
    o->mode = mode;
    snprintf(o->path, sizeof o->path, "%s", path);
    if (mode == AMDIM_OUTPUT_APPEND) {
        snprintf(o->target, sizeof o->target, "%s", path);
        if ((o->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644)) < 0)
            return amdim_fail(err, n, AMDIM_E_IO, "cannot open %s: %s", path, strerror(errno));
        struct stat sb;
        o->regular = fstat(o->fd, &sb) == 0 && S_ISREG(sb.st_mode);
        return AMDIM_OK;
    }
    int st = follow_links(path, o->target, sizeof o->target, err, n);
    if (st)
        return st;
    struct stat sb;
    int exists = stat(o->target, &sb) == 0;
    if (exists && S_ISDIR(sb.st_mode))
        return amdim_fail(err, n, AMDIM_E_INVALID, "%s is a directory", path);
    if (exists && !S_ISREG(sb.st_mode)) { /* a device or a FIFO: written as it is */
        if ((o->fd = open(o->target, O_WRONLY | O_CLOEXEC | O_NOCTTY)) < 0)
            return amdim_fail(err, n, AMDIM_E_IO, "cannot open %s: %s", path, strerror(errno));
        return AMDIM_OK;
    }
    o->regular = 1;
    snprintf(o->tmp, sizeof o->tmp, "%s.tmp.%d", o->target, (int)getpid());
    unlink(o->tmp); /* one a killed process of this pid left */
    if ((o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666)) < 0) {
        st = amdim_fail(err, n, AMDIM_E_IO, "cannot create %s: %s", o->tmp, strerror(errno));
        o->tmp[0] = 0;
        return st;
    }
    if (exists)
        (void)fchmod(o->fd, sb.st_mode & 07777); /* best effort: the file keeps its mode */
    return AMDIM_OK;
}

int amdim_output_write(amdim_output *o, const void *data, size_t len, char *err, size_t n)
{
    const char *p = data;
    while (len) {
        ssize_t w = write(o->fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return amdim_fail(err, n, AMDIM_E_IO, "writing %s failed: %s", o->path,
                              w < 0 ? strerror(errno) : "nothing written");
        p += w;
        len -= (size_t)w;
    }
    return AMDIM_OK;
}

int amdim_output_close(amdim_output *o, char *err, size_t n)
{
    if (o->fd < 0)
        return AMDIM_OK;
    int st = AMDIM_OK;
    if (o->regular && fsync(o->fd) != 0)
        st = amdim_fail(err, n, AMDIM_E_IO, "writing %s failed: fsync: %s", o->path, strerror(errno));
    if (close(o->fd) != 0 && st == AMDIM_OK)
        st = amdim_fail(err, n, AMDIM_E_IO, "writing %s failed: close: %s", o->path, strerror(errno));
    o->fd = -1;
    if (st == AMDIM_OK && o->tmp[0]) {
        if (rename(o->tmp, o->target) != 0)
            st = amdim_fail(err, n, AMDIM_E_IO, "cannot rename %s to %s: %s", o->tmp, o->target, strerror(errno));
        else { /* the rename itself, durable */
            char dir[4200] = ".";
            const char *slash = strrchr(o->target, '/');
            if (slash)
                snprintf(dir, sizeof dir, "%.*s", slash == o->target ? 1 : (int)(slash - o->target), o->target);
            int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                fsync(dfd);
                close(dfd);
            }
            o->tmp[0] = 0;
        }
    }
    if (st)
        amdim_output_discard(o);
    return st;
}

void amdim_output_discard(amdim_output *o)
{
    if (o->fd >= 0)
        close(o->fd);
    o->fd = -1;
    if (o->tmp[0])
        unlink(o->tmp);
    o->tmp[0] = 0;
}

int amdim_write_npy(const char *path, const char *dtype, const void *data, uint64_t rows, uint64_t cols, int two_d,
                    char *err, size_t n)
{
    char hdr[256];
    int len = two_d ? snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%llu, %llu), }", dtype,
                               (unsigned long long)rows, (unsigned long long)cols)
                    : snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%llu,), }", dtype,
                               (unsigned long long)rows);
    /* magic (6) + version (2) + length (2) + header, padded with spaces to 64 bytes, ending in \n */
    int total = 10 + len + 1;
    int pad = (64 - total % 64) % 64;
    memset(hdr + len, ' ', (size_t)pad);
    len += pad;
    hdr[len++] = '\n';
    uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(len & 255), (uint8_t)(len >> 8)};
    size_t bytes = (size_t)rows * (two_d ? cols : 1) * 4;
    amdim_output out;
    int st = amdim_output_open(&out, path, AMDIM_OUTPUT_REPLACE, err, n);
    if (st == AMDIM_OK && ((st = amdim_output_write(&out, pre, 10, err, n)) ||
                           (st = amdim_output_write(&out, hdr, (size_t)len, err, n)) ||
                           (st = amdim_output_write(&out, data, bytes, err, n))))
        amdim_output_discard(&out);
    return st ? st : amdim_output_close(&out, err, n);
}
