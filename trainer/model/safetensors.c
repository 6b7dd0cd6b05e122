/* The safetensors container (safetensors_internal.h): reading a file's
 * header length, its JSON header (parsed strictly with jansson, then
 * checked against the limits and the file's size) and its tensors; and
 * writing a file, header in a fixed byte layout, atomically. What a
 * checkpoint puts in one is checkpoint.c's business. */
#include "safetensors_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amdim_common.h"

/* ---- the header's JSON ------------------------------------------------------ */

/* Strict JSON: a duplicate key is an error (not "the last one wins");
 * nothing but whitespace may follow the object (no JSON_DISABLE_EOF_CHECK);
 * no \u0000 in strings (no JSON_ALLOW_NUL: names are C strings); integers
 * stay integers (no JSON_DECODE_INT_AS_REAL). jansson also refuses invalid
 * UTF-8, comments, trailing commas, NaN, integers beyond 64 bits and
 * nesting deeper than JSON_PARSER_MAX_DEPTH. */
#define HEADER_JSON_FLAGS JSON_REJECT_DUPLICATES

static int malformed(const char *path, char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* AMDIM_E_CORRUPT "<path>: malformed safetensors header: <cause>". */
static int malformed(const char *path, char *err, size_t n, const char *fmt, ...)
{
    char cause[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cause, sizeof cause, fmt, ap);
    va_end(ap);
    return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: malformed safetensors header: %s", path, cause);
}

/* A JSON array of at most `max` integers >= 0 into out; *count gets how
 * many. 0, or -1 with the reason in why. */
static int dims(const json_t *a, int64_t *out, int max, int *count, char *why, size_t n)
{
    if (!json_is_array(a)) {
        snprintf(why, n, "not an array");
        return -1;
    }
    if (json_array_size(a) > (size_t)max) {
        snprintf(why, n, "%zu entries, more than %d", json_array_size(a), max);
        return -1;
    }
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) {
        /* json_int_t is long long: >= 0 bounds it to int64_t's range */
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            snprintf(why, n, "entry %zu is not an integer >= 0", i);
            return -1;
        }
        out[i] = (int64_t)json_integer_value(v);
    }
    *count = (int)json_array_size(a);
    return 0;
}

/* Fills t from the tensor entry `v` named `name`: exactly the fields dtype
 * (a string of 1..7 bytes), shape (up to 8 sizes) and data_offsets (two
 * offsets, begin <= end). */
static int parse_tensor(amdim_safetensors_tensor *t, const char *name, size_t name_len, const json_t *v,
                        const char *path, char *err, size_t n)
{
    if (name_len > AMDIM_SAFETENSORS_MAX_NAME)
        return malformed(path, err, n, "a tensor name of %zu bytes, more than %d", name_len,
                         AMDIM_SAFETENSORS_MAX_NAME);
    memset(t, 0, sizeof *t);
    memcpy(t->name, name, name_len);
    if (!json_is_object(v))
        return malformed(path, err, n, "tensor %s is not an object", name);
    const char *key;
    json_t *fv;
    json_object_foreach((json_t *)v, key, fv)
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 && strcmp(key, "data_offsets") != 0)
            return malformed(path, err, n, "tensor %s has an unknown field \"%s\"", name, key);
    const json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape"),
                 *of = json_object_get(v, "data_offsets");
    if (!dt || !sh || !of)
        return malformed(path, err, n, "tensor %s lacks %s", name, !dt ? "dtype" : !sh ? "shape" : "data_offsets");
    if (!json_is_string(dt) || json_string_length(dt) == 0 || json_string_length(dt) > AMDIM_SAFETENSORS_MAX_DTYPE)
        return malformed(path, err, n, "tensor %s: dtype is not a string of 1..%d bytes", name,
                         AMDIM_SAFETENSORS_MAX_DTYPE);
    memcpy(t->dtype, json_string_value(dt), json_string_length(dt));
    char why[96];
    if (dims(sh, t->shape, AMDIM_SAFETENSORS_MAX_RANK, &t->ndim, why, sizeof why))
        return malformed(path, err, n, "tensor %s: shape: %s", name, why);
    int64_t off[2];
    int k;
    if (dims(of, off, 2, &k, why, sizeof why))
        return malformed(path, err, n, "tensor %s: data_offsets: %s", name, why);
    if (k != 2)
        return malformed(path, err, n, "tensor %s: data_offsets has %d entries, not 2", name, k);
    if (off[1] < off[0])
        return malformed(path, err, n, "tensor %s: data_offsets end (%lld) before they begin (%lld)", name,
                         (long long)off[1], (long long)off[0]);
    t->begin = (uint64_t)off[0];
    t->end = (uint64_t)off[1];
    return AMDIM_OK;
}

/* The "__metadata__" object: string values only, keys of up to 63 bytes
 * and values of up to 255, into f->mk / f->mv. */
static int parse_metadata(amdim_safetensors_file *f, const json_t *m, const char *path, char *err, size_t n)
{
    AMDIM_ASSERT(!f->mk); /* one __metadata__: duplicate keys are refused */
    if (!json_is_object(m))
        return malformed(path, err, n, "__metadata__ is not an object");
    size_t count = json_object_size(m);
    f->mk = malloc((count ? count : 1) * sizeof *f->mk);
    f->mv = malloc((count ? count : 1) * sizeof *f->mv);
    if (!f->mk || !f->mv)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for the metadata of %s", path);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)m, key, v) {
        size_t kl = strlen(key);
        if (kl > AMDIM_SAFETENSORS_MAX_META_KEY)
            return malformed(path, err, n, "a metadata key of %zu bytes, more than %d", kl,
                             AMDIM_SAFETENSORS_MAX_META_KEY);
        if (!json_is_string(v))
            return malformed(path, err, n, "metadata %s is not a string", key);
        if (json_string_length(v) > AMDIM_SAFETENSORS_MAX_META_VALUE)
            return malformed(path, err, n, "metadata %s is %zu bytes, more than %d", key, json_string_length(v),
                             AMDIM_SAFETENSORS_MAX_META_VALUE);
        memcpy(f->mk[f->nm], key, kl + 1);
        memcpy(f->mv[f->nm], json_string_value(v), json_string_length(v) + 1);
        f->nm++;
    }
    return AMDIM_OK;
}

/* The root object: every entry but __metadata__ is a tensor, whose data
 * must lie inside the file (a header from a whole file whose data was cut
 * off is a truncated file, not a malformed one). */
static int parse_table(amdim_safetensors_file *f, const json_t *root, const char *path, char *err, size_t n)
{
    if (!json_is_object(root))
        return malformed(path, err, n, "not a JSON object");
    size_t count = json_object_size(root);
    if (!(f->t = malloc((count ? count : 1) * sizeof *f->t)))
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for the tensor table of %s", path);
    uint64_t have = f->size - f->data_off;
    const char *key;
    size_t kl;
    json_t *v;
    json_object_keylen_foreach((json_t *)root, key, kl, v) {
        if (strcmp(key, "__metadata__") == 0) {
            AMDIM_TRY(parse_metadata(f, v, path, err, n));
            continue;
        }
        amdim_safetensors_tensor *t = &f->t[f->nt];
        AMDIM_TRY(parse_tensor(t, key, kl, v, path, err, n));
        if (t->end > have)
            return amdim_fail(err, n, AMDIM_E_TRUNCATED,
                              "%s is a truncated file: tensor %s ends at byte %llu of the data, the file holds %llu",
                              path, t->name, (unsigned long long)t->end, (unsigned long long)have);
        f->nt++;
    }
    return AMDIM_OK;
}

static uint64_t header_length(const uint8_t *le)
{
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | le[i];
    return hl;
}

/* Parses the header in f->file (f->size is the file's size). Closes f on
 * failure. */
static int parse(amdim_safetensors_file *f, const char *path, char *err, size_t n)
{
    uint64_t hl = f->size >= 8 ? header_length(f->file) : 0;
    int st;
    if (f->size < 8 || hl > AMDIM_SAFETENSORS_MAX_HEADER) {
        st = amdim_fail(err, n, AMDIM_E_CORRUPT, "%s is not a safetensors file (bad header length)", path);
    } else if (hl > f->size - 8) {
        st = amdim_fail(err, n, AMDIM_E_TRUNCATED, "%s is a truncated file: its header is %llu bytes, the file %zu",
                        path, (unsigned long long)hl, f->size);
    } else {
        f->data_off = 8 + hl;
        json_error_t je;
        json_t *root = json_loadb((const char *)f->file + 8, (size_t)hl, HEADER_JSON_FLAGS, &je);
        if (!root && json_error_code(&je) == json_error_out_of_memory)
            st = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory parsing the header of %s", path);
        else if (!root)
            st = malformed(path, err, n, "%s at byte %d of the header", je.text, je.position);
        else
            st = parse_table(f, root, path, err, n);
        json_decref(root);
    }
    if (st)
        amdim_safetensors_close(f);
    return st;
}

/* ---- reading ------------------------------------------------------------------ */

void amdim_safetensors_close(amdim_safetensors_file *f)
{
    free(f->file);
    free(f->t);
    free(f->mk);
    free(f->mv);
    if (f->fd >= 0)
        close(f->fd);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

static const char *file_kind(mode_t m)
{
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) ? "a character device" : S_ISBLK(m) ? "a block device"
         : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

static int read_at(int fd, uint8_t *p, size_t len, off_t off)
{
    while (len) {
        ssize_t r = pread(fd, p, len, off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r == 0 ? (errno = EIO, -1) : -1;
        p += r, len -= (size_t)r, off += r;
    }
    return 0;
}

/* The bytes of fd (a regular file of `size` bytes) that parse needs: the
 * length and, where the length is sane, the header (else parse names what
 * is wrong from the first 8). */
static int read_header(amdim_safetensors_file *f, int fd, size_t size, const char *path, char *err, size_t n)
{
    size_t want = size < 8 ? size : 8;
    uint8_t le[8];
    if (size >= 8) {
        if (read_at(fd, le, 8, 0) != 0)
            return amdim_fail(err, n, AMDIM_E_IO, "cannot read %s: %s", path, strerror(errno));
        uint64_t hl = header_length(le);
        want = hl <= AMDIM_SAFETENSORS_MAX_HEADER && hl <= size - 8 ? 8 + (size_t)hl : 8;
    }
    if (!(f->file = malloc(want ? want : 1)))
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for the %zu bytes of %s", want, path);
    if (read_at(fd, f->file, want, 0) != 0)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot read %s: %s", path, strerror(errno));
    return AMDIM_OK;
}

int amdim_safetensors_open(amdim_safetensors_file *f, const char *path, char *err, size_t n)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return amdim_fail(err, n, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open %s: %s", path,
                          strerror(errno));
    struct stat sb;
    int st = AMDIM_OK;
    if (fstat(fd, &sb) != 0)
        st = amdim_fail(err, n, AMDIM_E_IO, "cannot stat %s: %s", path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        st = amdim_fail(err, n, AMDIM_E_INVALID, "%s is %s, not a checkpoint file", path, file_kind(sb.st_mode));
    else
        st = read_header(f, fd, (size_t)sb.st_size, path, err, n);
    if (st) {
        close(fd);
        amdim_safetensors_close(f);
        return st;
    }
    f->fd = fd;
    f->size = (size_t)sb.st_size;
    return parse(f, path, err, n);
}

int amdim_safetensors_open_buffer(amdim_safetensors_file *f, const uint8_t *data, size_t size, const char *name,
                                  char *err, size_t n)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (!(f->file = malloc(size ? size : 1)))
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    memcpy(f->file, data, size);
    f->size = size;
    return parse(f, name, err, n);
}

const char *amdim_safetensors_meta(const amdim_safetensors_file *f, const char *key)
{
    for (int i = 0; i < f->nm; i++)
        if (strcmp(f->mk[i], key) == 0)
            return f->mv[i];
    return NULL;
}

const amdim_safetensors_tensor *amdim_safetensors_find(const amdim_safetensors_file *f, const char *name)
{
    for (int i = 0; i < f->nt; i++)
        if (strcmp(f->t[i].name, name) == 0)
            return &f->t[i];
    return NULL;
}

uint64_t amdim_safetensors_data_size(const amdim_safetensors_file *f)
{
    return f->size - f->data_off;
}

/* len bytes from byte `at` of the data; -1 with errno on failure. */
static int read_data(const amdim_safetensors_file *f, uint64_t at, void *dst, size_t len)
{
    AMDIM_ASSERT(at <= f->size - f->data_off && len <= f->size - f->data_off - at);
    if (f->fd < 0) {
        memcpy(dst, f->file + f->data_off + at, len);
        return 0;
    }
    return read_at(f->fd, dst, len, (off_t)(f->data_off + at));
}

int amdim_safetensors_read_tensor(const amdim_safetensors_file *f, const amdim_safetensors_tensor *t, void *dst,
                                  size_t len, const char *path, char *err, size_t n)
{
    AMDIM_ASSERT(len <= t->end - t->begin);
    if (read_data(f, t->begin, dst, len) != 0)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot read tensor %s of %s: %s", t->name, path, strerror(errno));
    return AMDIM_OK;
}

int amdim_safetensors_read_data(const amdim_safetensors_file *f, uint64_t at, void *dst, size_t len, const char *path,
                                char *err, size_t n)
{
    if (read_data(f, at, dst, len) != 0)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot read %s: %s", path, strerror(errno));
    return AMDIM_OK;
}

/* ---- writing ------------------------------------------------------------------ */

/* A growable string; oom is set (and sticks) when an allocation fails. */
typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
}

/* s as a JSON string: '"' and '\\' escaped, control characters as \u00XX,
 * every other byte as it is (the names and values we write need no
 * escape: their bytes are unchanged). */
static void sb_string(sbuf *b, const char *s)
{
    sb_add(b, "\"");
    for (const char *p = s; *p;) {
        size_t plain = 0;
        while (p[plain] && p[plain] != '"' && p[plain] != '\\' && (unsigned char)p[plain] >= 0x20)
            plain++;
        sb_add(b, "%.*s", (int)plain, p);
        p += plain;
        if (*p == '"' || *p == '\\')
            sb_add(b, "\\%c", *p++);
        else if (*p)
            sb_add(b, "\\u%04x", (unsigned)(unsigned char)*p++);
    }
    sb_add(b, "\"");
}

/* The header: metadata, then each tensor with its offsets, padded with
 * spaces to a multiple of 8 bytes. */
static void header(sbuf *h, const amdim_safetensors_kv *meta, int nm, const amdim_safetensors_out *t, int nt)
{
    sb_add(h, "{");
    if (nm > 0) {
        sb_add(h, "\"__metadata__\":{");
        for (int i = 0; i < nm; i++) {
            sb_add(h, "%s", i ? "," : "");
            sb_string(h, meta[i].key);
            sb_add(h, ":");
            sb_string(h, meta[i].value);
        }
        sb_add(h, "}");
    }
    size_t off = 0;
    for (int i = 0; i < nt; i++) {
        sb_add(h, "%s", i || nm > 0 ? "," : "");
        sb_string(h, t[i].name);
        sb_add(h, ":{\"dtype\":");
        sb_string(h, t[i].dtype);
        sb_add(h, ",\"shape\":[");
        for (int d = 0; d < t[i].ndim; d++)
            sb_add(h, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        sb_add(h, "],\"data_offsets\":[%zu,%zu]}", off, off + t[i].bytes);
        off += t[i].bytes;
    }
    sb_add(h, "}");
    while (!h->oom && h->len % 8)
        sb_add(h, " ");
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The length, the header and the data into fd, fsynced and closed; 0 or
 * an errno value. */
static int write_file(int fd, const sbuf *h, const amdim_safetensors_out *t, int nt)
{
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)((uint64_t)h->len >> (8 * i));
    int bad = write_all(fd, le, 8) || write_all(fd, h->s, h->len);
    for (int i = 0; i < nt && !bad; i++)
        bad = write_all(fd, t[i].data, t[i].bytes);
    int e = bad ? errno : 0;
    if (!bad && fsync(fd) != 0)
        bad = 1, e = errno;
    if (close(fd) != 0 && !bad)
        bad = 1, e = errno;
    return bad ? (e ? e : EIO) : 0;
}

int amdim_safetensors_write(const char *path, const amdim_safetensors_kv *meta, int nm,
                            const amdim_safetensors_out *t, int nt, char *err, size_t n)
{
    sbuf h = {0};
    header(&h, meta, nm, t, nt);
    if (h.oom) {
        free(h.s);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(h.s);
        return amdim_fail(err, n, AMDIM_E_IO, "cannot create %s: %s", tmp, strerror(errno));
    }
    int e = write_file(fd, &h, t, nt);
    free(h.s);
    if (e) {
        unlink(tmp);
        return amdim_fail(err, n, AMDIM_E_IO, "writing %s failed: %s", path, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        unlink(tmp);
        return amdim_fail(err, n, AMDIM_E_IO, "cannot rename %s: %s", tmp, strerror(e));
    }
    return AMDIM_OK;
}
