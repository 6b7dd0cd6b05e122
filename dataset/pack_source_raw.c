/* The packer's raw binary sources: CIFAR-10 and CIFAR-100 (.bin batches),
 * STL-10 (_X.bin / _y.bin) and MNIST-style IDX (gzipped or not, with its
 * labels file), and reading one raw item back as HWC pixels. Each raw item
 * is a fixed-size record at a known offset of one of the source's files.
 * amdim_pack_source_open (pack_source.c) dispatches here. */
#include "pack_source_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ---- source files ------------------------------------------------------- */

static int add_raw_file(amdim_pack_source *src, const char *path, size_t header, size_t record, int required)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (!required && errno == ENOENT)
            return 1;
        return AMDIM_FAIL_IN(src, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open %s: %s", path,
                             strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return AMDIM_FAIL_IN(src, AMDIM_E_IO, "%s is not a regular file", path);
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < header || (size - header) % record != 0 || size == header) {
        close(fd);
        return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT,
                             "%s is %llu bytes, not a whole number of %zu-byte records (truncated or not this format?)",
                             path, (unsigned long long)size, record);
    }
    if (src->nfiles == PACK_MAX_FILES) {
        close(fd);
        return AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "too many source files");
    }
    int k = src->nfiles++;
    src->fd[k] = fd;
    src->file_name[k] = strdup(path);
    src->first[k] = src->n;
    src->n += (size - header) / record;
    src->first[k + 1] = src->n;
    src->record_bytes = record;
    src->file_header = header;
    return src->file_name[k] ? AMDIM_OK : AMDIM_FAIL_IN(src, AMDIM_E_NOMEM, "out of memory");
}

/* Reads a whole (optionally gzipped) file into memory, but never more than
 * max + 1 bytes: the callers know from a header how long the file must be,
 * and a file that inflates beyond that (a gzip bomb) must not take memory
 * in proportion to what it would inflate to. *len > max means "too long". */
static int slurp_gz(amdim_pack_source *src, const char *path, uint64_t max, uint8_t **data, size_t *len)
{
    if (max >= ((uint64_t)1 << 34))
        return AMDIM_FAIL_IN(src, AMDIM_E_TOO_LARGE, "%s: %llu bytes is too large to load (limit 16 GiB)", path,
                             (unsigned long long)max);
    size_t limit = (size_t)max + 1;
    gzFile gz = gzopen(path, "rb");
    if (!gz)
        return AMDIM_FAIL_IN(src, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open %s: %s", path,
                             strerror(errno));
    size_t cap = limit < ((size_t)1 << 20) ? limit : (size_t)1 << 20, n = 0;
    uint8_t *buf = malloc(cap);
    int st = buf ? AMDIM_OK : AMDIM_FAIL_IN(src, AMDIM_E_NOMEM, "out of memory");
    while (st == AMDIM_OK && n < limit) {
        if (n == cap) {
            size_t next = cap * 2 < limit ? cap * 2 : limit;
            uint8_t *p = realloc(buf, next);
            if (!p) {
                st = AMDIM_FAIL_IN(src, AMDIM_E_NOMEM, "%s is too large to load", path);
                break;
            }
            buf = p;
            cap = next;
        }
        size_t want = cap - n > (1u << 30) ? (1u << 30) : cap - n;
        int got = gzread(gz, buf + n, (unsigned)want);
        if (got < 0) {
            int zerr;
            const char *msg = gzerror(gz, &zerr);
            st = AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "cannot read %s: %s", path, msg);
        } else if (got == 0) {
            break;
        }
        n += (size_t)(got > 0 ? got : 0);
    }
    gzclose(gz);
    if (st) {
        free(buf);
        return st;
    }
    *data = buf;
    *len = n;
    return AMDIM_OK;
}

/* ---- CIFAR-10 / CIFAR-100 ----------------------------------------------- */

int amdim_pack_source_open_cifar(amdim_pack_source *src, const amdim_pack_options *opt, int hundred)
{
    size_t rec = (hundred ? 2 : 1) + 3072;
    src->is_raw = 1;
    src->width = src->height = 32;
    src->channels = 3;
    int st;
    if (!amdim_pack_source_is_dir(opt->src)) {
        st = add_raw_file(src, opt->src, 0, rec, 1);
    } else if (hundred) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.bin", opt->src, opt->split);
        st = add_raw_file(src, path, 0, rec, 1);
        if (st == AMDIM_OK)
            st = amdim_pack_source_maybe_class_names(
                src, opt->src, opt->cifar100_coarse ? "coarse_label_names.txt" : "fine_label_names.txt",
                opt->cifar100_coarse ? 20 : 100);
    } else {
        char path[4096];
        if (strcmp(opt->split, "test") == 0) {
            snprintf(path, sizeof path, "%s/test_batch.bin", opt->src);
            st = add_raw_file(src, path, 0, rec, 1);
        } else if (strcmp(opt->split, "train") == 0) {
            st = AMDIM_OK;
            for (int b = 1; b <= 5 && st == AMDIM_OK; b++) {
                snprintf(path, sizeof path, "%s/data_batch_%d.bin", opt->src, b);
                st = add_raw_file(src, path, 0, rec, 1);
            }
        } else {
            return AMDIM_FAIL_IN(src, AMDIM_E_INVALID,
                                 "cifar10 directory sources have splits train and test, not %s (or give one .bin file)",
                                 opt->split);
        }
        if (st == AMDIM_OK)
            st = amdim_pack_source_maybe_class_names(src, opt->src, "batches.meta.txt", 10);
    }
    if (st == AMDIM_OK && src->nclasses == 0)
        src->nclasses = hundred ? (opt->cifar100_coarse ? 20 : 100) : 10;
    return st;
}

/* ---- STL-10 ------------------------------------------------------------- */

int amdim_pack_source_open_stl10(amdim_pack_source *src, const amdim_pack_options *opt)
{
    src->is_raw = 1;
    src->width = src->height = 96;
    src->channels = 3;
    size_t rec = 96 * 96 * 3;
    char xpath[4096], ypath[4096] = "";
    if (amdim_pack_source_is_dir(opt->src)) {
        snprintf(xpath, sizeof xpath, "%s/%s_X.bin", opt->src, opt->split);
        if (strcmp(opt->split, "unlabeled") != 0)
            snprintf(ypath, sizeof ypath, "%s/%s_y.bin", opt->src, opt->split);
    } else {
        snprintf(xpath, sizeof xpath, "%s", opt->src);
        char *p = strstr(xpath, "_X.bin");
        if (p && !strstr(xpath, "unlabeled")) {
            snprintf(ypath, sizeof ypath, "%.*s_y.bin", (int)(p - xpath), xpath);
        }
    }
    if (opt->labels)
        snprintf(ypath, sizeof ypath, "%s", opt->labels);
    AMDIM_TRY(add_raw_file(src, xpath, 0, rec, 1));
    src->nclasses = 10;
    if (ypath[0]) {
        uint8_t *lab;
        size_t llen;
        AMDIM_TRY(slurp_gz(src, ypath, src->n, &lab, &llen));
        src->raw_labels = lab;
        if (llen != src->n)
            return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "%s holds %s%zu labels but %s holds %llu images", ypath,
                                 llen > src->n ? "more than " : "", llen > src->n ? (size_t)src->n : llen, xpath,
                                 (unsigned long long)src->n);
        for (size_t i = 0; i < llen; i++)
            if (lab[i] < 1 || lab[i] > 10)
                return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "%s: label %u of image %zu is outside 1..10", ypath, lab[i],
                                     i);
    }
    if (amdim_pack_source_is_dir(opt->src))
        return amdim_pack_source_maybe_class_names(src, opt->src, "class_names.txt", 10);
    return AMDIM_OK;
}

/* ---- IDX ---------------------------------------------------------------- */

/* What an IDX image file's header says. */
typedef struct {
    uint32_t count, rows, cols, channels;
    size_t header;       /* bytes before the first image: 16, or 20 with channels */
    uint64_t rec;        /* bytes per image */
    uint64_t data_bytes; /* count * rec */
} idx_shape;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* IDX header: magic, then nd big-endian uint32 dimensions. */
static int idx_header(amdim_pack_source *src, const char *path, uint8_t hdr[20], size_t *got)
{
    gzFile gz = gzopen(path, "rb");
    if (!gz)
        return AMDIM_FAIL_IN(src, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open %s: %s", path,
                             strerror(errno));
    int n = gzread(gz, hdr, 20);
    gzclose(gz);
    if (n < 0)
        return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "cannot read %s: not a readable (gzip) file", path);
    *got = (size_t)n;
    return AMDIM_OK;
}

/* Reads and checks the header of the image file at path: magic 00000803
 * (count, rows, cols) or 00000804 (and channels, 1 or 3). */
static int idx_parse_header(amdim_pack_source *src, const char *path, idx_shape *sh)
{
    uint8_t m[20];
    size_t hlen = 0;
    AMDIM_TRY(idx_header(src, path, m, &hlen));
    if (hlen < 4 || m[0] || m[1] || m[2] != 0x08 || (m[3] != 3 && m[3] != 4))
        return AMDIM_FAIL_IN(
            src, AMDIM_E_CORRUPT,
            "%s is not an IDX file of uint8 images (magic %02x%02x%02x%02x; want 00000803 or 00000804)", path,
            hlen > 0 ? m[0] : 0, hlen > 1 ? m[1] : 0, hlen > 2 ? m[2] : 0, hlen > 3 ? m[3] : 0);
    int nd = m[3];
    sh->header = 4 + 4 * (size_t)nd;
    if (hlen < sh->header)
        return AMDIM_FAIL_IN(src, AMDIM_E_TRUNCATED, "%s: IDX header is truncated", path);
    sh->count = be32(m + 4);
    sh->rows = be32(m + 8);
    sh->cols = be32(m + 12);
    sh->channels = nd == 4 ? be32(m + 16) : 1;
    if (!sh->count || !sh->rows || !sh->cols || (sh->channels != 1 && sh->channels != 3) || sh->rows > 65536 ||
        sh->cols > 65536)
        return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT,
                             "%s: IDX dimensions %ux%ux%ux%u are not images (channels must be 1 or 3)", path, sh->count,
                             sh->rows, sh->cols, sh->channels);
    return AMDIM_OK;
}

/* Sizes the images the header promises; with the header they must fit in
 * 16 GiB, the most slurp_gz loads. */
static int idx_check_size(amdim_pack_source *src, const char *path, idx_shape *sh)
{
    /* rows*cols*ch fits (<= 3*2^32); count times it need not. */
    sh->rec = (uint64_t)sh->rows * sh->cols * sh->channels;
    if (__builtin_mul_overflow((uint64_t)sh->count, sh->rec, &sh->data_bytes) ||
        sh->data_bytes > ((uint64_t)1 << 34) - sh->header)
        return AMDIM_FAIL_IN(src, AMDIM_E_TOO_LARGE,
                             "%s: IDX header promises %u images of %ux%ux%u, more than 16 GiB (corrupt header?)", path,
                             sh->count, sh->rows, sh->cols, sh->channels);
    return AMDIM_OK;
}

/* Loads the whole image file, which must be exactly as long as its header
 * says, into src->memory: one raw file of count records. */
static int idx_load_images(amdim_pack_source *src, const char *path, const idx_shape *sh)
{
    size_t len, want = sh->header + sh->data_bytes;
    AMDIM_TRY(slurp_gz(src, path, want, &src->memory, &len));
    if (len != want)
        return AMDIM_FAIL_IN(src, len < want ? AMDIM_E_TRUNCATED : AMDIM_E_CORRUPT,
                             "%s: IDX header promises %u images of %llu bytes but the data holds %s%zu bytes", path,
                             sh->count, (unsigned long long)sh->rec, len > want ? "more than " : "",
                             len - sh->header - (len > want));
    src->n = sh->count;
    src->record_bytes = sh->rec;
    src->file_header = sh->header;
    src->width = sh->cols;
    src->height = sh->rows;
    src->channels = sh->channels;
    src->nfiles = 1;
    src->fd[0] = -1;
    src->file_name[0] = strdup(path);
    src->first[0] = 0;
    src->first[1] = sh->count;
    return src->file_name[0] ? AMDIM_OK : AMDIM_FAIL_IN(src, AMDIM_E_NOMEM, "out of memory");
}

/* The labels file: --labels, else the images file's name with images-idx3
 * (or images.idx3) made labels-idx1 (labels.idx1) when that file is there,
 * written into guess (n bytes). NULL when there is none. */
static const char *idx_labels_path(const amdim_pack_options *opt, char *guess, size_t n)
{
    if (opt->labels)
        return opt->labels;
    snprintf(guess, n, "%s", opt->src);
    char *p = strstr(guess, "images-idx3");
    if (!p)
        p = strstr(guess, "images.idx3");
    if (!p)
        return NULL;
    memcpy(p, "labels", 6);
    memcpy(p + 7, "idx1", 4);
    return access(guess, R_OK) == 0 ? guess : NULL;
}

/* Loads the labels file into src->raw_labels: magic 00000801, then one byte
 * per image of `images` (count of them). The classes are 0..the largest. */
static int idx_load_labels(amdim_pack_source *src, const char *lpath, const char *images, uint32_t count)
{
    uint8_t *lab;
    size_t llen;
    AMDIM_TRY(slurp_gz(src, lpath, 8 + (uint64_t)count, &lab, &llen));
    src->raw_labels = lab;
    if (llen < 8 || lab[0] || lab[1] || lab[2] != 0x08 || lab[3] != 1)
        return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "%s is not an IDX label file (magic must be 00000801)", lpath);
    if (be32(lab + 4) != count || llen != 8 + (size_t)count)
        return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "%s holds %u labels (%s%zu bytes) but %s holds %u images", lpath,
                             be32(lab + 4), llen > 8 + (size_t)count ? "more than " : "",
                             llen > 8 + (size_t)count ? 8 + (size_t)count : llen, images, count);
    int maxl = -1;
    for (uint32_t i = 0; i < count; i++)
        if (lab[8 + i] > maxl)
            maxl = lab[8 + i];
    src->nclasses = maxl + 1;
    return AMDIM_OK;
}

int amdim_pack_source_open_idx(amdim_pack_source *src, const amdim_pack_options *opt)
{
    src->is_raw = 1;
    idx_shape sh = {0};
    AMDIM_TRY(idx_parse_header(src, opt->src, &sh));
    AMDIM_TRY(idx_check_size(src, opt->src, &sh));
    AMDIM_TRY(idx_load_images(src, opt->src, &sh));
    char guess[4096];
    const char *lpath = idx_labels_path(opt, guess, sizeof guess);
    if (!lpath)
        return AMDIM_FAIL_IN(src, AMDIM_E_NOT_FOUND, "%s: no labels file found next to it; give one with --labels",
                             opt->src);
    return idx_load_labels(src, lpath, opt->src, sh.count);
}

/* ---- reading items ------------------------------------------------------ */

int amdim_pack_source_file_of(const amdim_pack_source *src, uint64_t i)
{
    int k = 0;
    while (k + 1 < src->nfiles && i >= src->first[k + 1])
        k++;
    return k;
}

/* Points *rec at record `local` of file k: in memory where the whole file
 * is loaded, else read into buf. */
static int fetch_record(const amdim_pack_source *src, int k, uint64_t local, uint8_t *buf, const uint8_t **rec,
                        char *err, size_t errlen)
{
    if (src->memory) {
        *rec = src->memory + src->file_header + local * src->record_bytes;
        return AMDIM_OK;
    }
    off_t off = (off_t)(src->file_header + local * src->record_bytes);
    size_t got = 0;
    while (got < src->record_bytes) {
        ssize_t r = pread(src->fd[k], buf + got, src->record_bytes - got, off + (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return amdim_fail(err, errlen, AMDIM_E_IO, "%s: reading record %llu failed: %s", src->file_name[k],
                              (unsigned long long)local, r < 0 ? strerror(errno) : "unexpected end of file");
        got += (size_t)r;
    }
    *rec = buf;
    return AMDIM_OK;
}

int amdim_pack_source_read_raw(const amdim_pack_source *src, amdim_pack_format format, int coarse, uint64_t i,
                               uint8_t *buf, uint8_t *px, int32_t *label, int32_t *aux, char *err, size_t errlen)
{
    int k = amdim_pack_source_file_of(src, i);
    uint64_t local = i - src->first[k];
    const uint8_t *rec = NULL;
    AMDIM_TRY(fetch_record(src, k, local, buf, &rec, err, errlen));
    *aux = -1;
    switch (format) {
    case AMDIM_PACK_CIFAR10:
    case AMDIM_PACK_CIFAR100: {
        int hundred = format == AMDIM_PACK_CIFAR100;
        int fine = hundred ? rec[1] : rec[0], coarse_l = hundred ? rec[0] : -1;
        if (fine >= (hundred ? 100 : 10) || coarse_l >= 20)
            return amdim_fail(err, errlen, AMDIM_E_CORRUPT,
                              "%s record %llu has label %d, outside CIFAR-%d's classes (is this the right format?)",
                              src->file_name[k], (unsigned long long)local, fine, hundred ? 100 : 10);
        *label = hundred && coarse ? coarse_l : fine;
        *aux = hundred ? (coarse ? fine : coarse_l) : -1;
        const uint8_t *planes = rec + (hundred ? 2 : 1);
        for (int p = 0; p < 1024; p++)
            for (int c = 0; c < 3; c++)
                px[3 * p + c] = planes[1024 * c + p];
        break;
    }
    case AMDIM_PACK_STL10:
        /* Column-major per channel: value (y, x, c) is at c*96*96 + x*96 + y. */
        *label = src->raw_labels ? (int32_t)src->raw_labels[i] - 1 : -1;
        for (int y = 0; y < 96; y++)
            for (int x = 0; x < 96; x++)
                for (int c = 0; c < 3; c++)
                    px[(y * 96 + x) * 3 + c] = rec[c * 9216 + x * 96 + y];
        break;
    case AMDIM_PACK_IDX:
        *label = src->raw_labels ? src->raw_labels[8 + i] : -1;
        memcpy(px, rec, src->record_bytes);
        break;
    default: return amdim_fail(err, errlen, AMDIM_E_INVALID, "not a raw format");
    }
    return AMDIM_OK;
}
