/* Enumerating the items of each source format, and reading raw items. */
#include "pack_source_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>


/* ---- growable arrays ---------------------------------------------------- */

static int arena_add(amdim_pack_source *src, const char *s, size_t len, int32_t label)
{
    if (src->arena_len + len + 1 > src->arena_cap) {
        size_t cap = src->arena_cap ? src->arena_cap * 2 : 1 << 16;
        while (cap < src->arena_len + len + 1)
            cap *= 2;
        char *p = realloc(src->arena, cap);
        if (!p)
            return AMDIM_FAIL_IN(src, AMDIM_E_NOMEM, "out of memory for the file list");
        src->arena = p;
        src->arena_cap = cap;
    }
    if (src->n == src->items_cap) {
        uint64_t cap = src->items_cap ? src->items_cap * 2 : 1024;
        size_t *po = realloc(src->path_off, cap * sizeof *po);
        if (po)
            src->path_off = po;
        int32_t *pl = po ? realloc(src->labels, cap * sizeof *pl) : NULL;
        if (!pl)
            return AMDIM_FAIL_IN(src, AMDIM_E_NOMEM, "out of memory for the file list");
        src->labels = pl;
        src->items_cap = cap;
    }
    memcpy(src->arena + src->arena_len, s, len);
    src->arena[src->arena_len + len] = 0;
    src->path_off[src->n] = src->arena_len;
    src->labels[src->n] = label;
    src->arena_len += len + 1;
    src->n++;
    return AMDIM_OK;
}

typedef struct {
    char **v;
    size_t n, cap;
} strvec;

static int strvec_push(strvec *sv, const char *s)
{
    if (sv->n == sv->cap) {
        size_t cap = sv->cap ? sv->cap * 2 : 64;
        char **p = realloc(sv->v, cap * sizeof *p);
        if (!p)
            return -1;
        sv->v = p;
        sv->cap = cap;
    }
    if (!(sv->v[sv->n] = strdup(s)))
        return -1;
    sv->n++;
    return 0;
}

static void strvec_free(strvec *sv)
{
    for (size_t i = 0; i < sv->n; i++)
        free(sv->v[i]);
    free(sv->v);
    memset(sv, 0, sizeof *sv);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- class names -------------------------------------------------------- */

static int read_lines(amdim_pack_source *src, const char *path, strvec *out)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return AMDIM_FAIL_IN(src, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open %s: %s", path,
                    strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int st = AMDIM_OK;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' '))
            line[--len] = 0;
        if (len == 0)
            continue;
        if (strvec_push(out, line)) {
            st = AMDIM_FAIL_IN(src, AMDIM_E_NOMEM, "out of memory");
            break;
        }
    }
    free(line);
    fclose(f);
    return st;
}

static int set_class_names(amdim_pack_source *src, strvec *names)
{
    src->class_names = names->v;
    src->nclasses = (int32_t)names->n;
    memset(names, 0, sizeof *names);
    return AMDIM_OK;
}

/* Loads the dataset's own class-name file from its directory if it is there
 * and names exactly `expected` classes; keeps none otherwise. */
static int maybe_class_names(amdim_pack_source *src, const char *dir, const char *file, int32_t expected)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    src->nclasses = expected;
    if (access(path, R_OK) != 0)
        return AMDIM_OK;
    strvec sv = {0};
    int st = read_lines(src, path, &sv);
    if (st == AMDIM_OK && (int32_t)sv.n == expected)
        set_class_names(src, &sv);
    strvec_free(&sv);
    return st;
}

/* ---- imagefolder -------------------------------------------------------- */

static int is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* torchvision's IMG_EXTENSIONS, compared case-insensitively. */
static int has_image_extension(const char *name)
{
    static const char *ext[] = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        size_t m = strlen(ext[i]);
        if (n >= m && strcasecmp(name + n - m, ext[i]) == 0)
            return 1;
    }
    return 0;
}

/* Collects `dir` and every directory below it (following links, like
 * os.walk(followlinks=True)). */
static int collect_dirs(amdim_pack_source *src, const char *dir, int depth, strvec *dirs)
{
    if (depth > 40)
        return AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "directories nested more than 40 deep under %s (a symlink loop?)", dir);
    if (strvec_push(dirs, dir))
        return AMDIM_FAIL_IN(src, AMDIM_E_NOMEM, "out of memory");
    struct dirent **ents;
    int n = scandir(dir, &ents, NULL, alphasort);
    if (n < 0)
        return AMDIM_FAIL_IN(src, AMDIM_E_IO, "cannot list directory %s: %s", dir, strerror(errno));
    int st = AMDIM_OK;
    char path[4096];
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        if (st == AMDIM_OK && strcmp(name, ".") && strcmp(name, "..")) {
            snprintf(path, sizeof path, "%s/%s", dir, name);
            if (is_dir(path))
                st = collect_dirs(src, path, depth + 1, dirs);
        }
        free(ents[i]);
    }
    free(ents);
    return st;
}

static int files_in_dir(amdim_pack_source *src, const char *dir, int32_t label)
{
    struct dirent **ents;
    int n = scandir(dir, &ents, NULL, NULL);
    if (n < 0)
        return AMDIM_FAIL_IN(src, AMDIM_E_IO, "cannot list directory %s: %s", dir, strerror(errno));
    strvec names = {0};
    int st = AMDIM_OK;
    char path[4096];
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        if (st == AMDIM_OK && strcmp(name, ".") && strcmp(name, "..")) {
            snprintf(path, sizeof path, "%s/%s", dir, name);
            if (!is_dir(path)) {
                if (!has_image_extension(name))
                    src->ignored++;
                else if (strvec_push(&names, name))
                    st = AMDIM_FAIL_IN(src, AMDIM_E_NOMEM, "out of memory");
            }
        }
        free(ents[i]);
    }
    free(ents);
    /* Python sorts str by code point, which is byte order for UTF-8. */
    if (names.n)
        qsort(names.v, names.n, sizeof *names.v, cmp_str);
    for (size_t i = 0; st == AMDIM_OK && i < names.n; i++) {
        int len = snprintf(path, sizeof path, "%s/%s", dir, names.v[i]);
        st = arena_add(src, path, (size_t)len, label);
    }
    strvec_free(&names);
    return st;
}

static int open_imagefolder(amdim_pack_source *src, const amdim_pack_options *opt)
{
    if (!is_dir(opt->src))
        return AMDIM_FAIL_IN(src, AMDIM_E_NOT_FOUND, "%s is not a directory (imagefolder wants SRC/<class>/<image>)", opt->src);
    struct dirent **ents;
    int n = scandir(opt->src, &ents, NULL, NULL);
    if (n < 0)
        return AMDIM_FAIL_IN(src, AMDIM_E_IO, "cannot list directory %s: %s", opt->src, strerror(errno));
    strvec classes = {0};
    int st = AMDIM_OK;
    char path[4096];
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        snprintf(path, sizeof path, "%s/%s", opt->src, name);
        if (st == AMDIM_OK && name[0] != '.' && is_dir(path) && strvec_push(&classes, name))
            st = AMDIM_FAIL_IN(src, AMDIM_E_NOMEM, "out of memory");
        free(ents[i]);
    }
    free(ents);
    if (classes.n)
        qsort(classes.v, classes.n, sizeof *classes.v, cmp_str);
    if (st == AMDIM_OK && classes.n == 0)
        st = AMDIM_FAIL_IN(src, AMDIM_E_EMPTY, "%s has no class sub-directories (imagefolder wants SRC/<class>/<image>)", opt->src);
    for (size_t c = 0; st == AMDIM_OK && c < classes.n; c++) {
        strvec dirs = {0};
        snprintf(path, sizeof path, "%s/%s", opt->src, classes.v[c]);
        st = collect_dirs(src, path, 0, &dirs);
        qsort(dirs.v, dirs.n, sizeof *dirs.v, cmp_str); /* sorted(os.walk(...)) */
        for (size_t d = 0; st == AMDIM_OK && d < dirs.n; d++)
            st = files_in_dir(src, dirs.v[d], (int32_t)c);
        strvec_free(&dirs);
    }
    if (st == AMDIM_OK)
        set_class_names(src, &classes);
    strvec_free(&classes);
    return st;
}

/* ---- list --------------------------------------------------------------- */

/* Whether a list path stays under its root, read lexically: not absolute,
 * and no ".." component climbs above where it started. (Symbolic links
 * under the root are followed as the file system has them.) */
static int path_inside_root(const char *p)
{
    if (p[0] == '/')
        return 0;
    long depth = 0;
    while (*p) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (--depth < 0)
                return 0;
        } else if (n > 0 && !(n == 1 && p[0] == '.')) {
            depth++;
        }
        p += n;
        while (*p == '/')
            p++;
    }
    return 1;
}

static int open_list(amdim_pack_source *src, const amdim_pack_options *opt)
{
    FILE *f = fopen(opt->src, "r");
    if (!f)
        return AMDIM_FAIL_IN(src, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open list file %s: %s",
                    opt->src, strerror(errno));
    char root[4096];
    if (opt->root) {
        snprintf(root, sizeof root, "%s", opt->root);
    } else {
        snprintf(root, sizeof root, "%s", opt->src);
        char *slash = strrchr(root, '/');
        if (slash)
            *slash = 0;
        else
            snprintf(root, sizeof root, ".");
    }
    if (!is_dir(root)) {
        fclose(f);
        return AMDIM_FAIL_IN(src, AMDIM_E_NOT_FOUND, "list root %s is not a directory", root);
    }
    char *line = NULL, path[8192];
    size_t cap = 0, lineno = 0;
    ssize_t len;
    int st = AMDIM_OK;
    int32_t maxlabel = -1;
    while (st == AMDIM_OK && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (memchr(line, 0, (size_t)len)) {
            st = AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "%s:%zu: line holds a NUL byte (is this a text file?)", opt->src, lineno);
            break;
        }
        while (len > 0 && isspace((unsigned char)line[len - 1]))
            line[--len] = 0;
        char *s = line;
        while (*s && isspace((unsigned char)*s))
            s++;
        if (*s == 0 || *s == '#')
            continue;
        char *sp = s + strlen(s);
        while (sp > s && !isspace((unsigned char)sp[-1]))
            sp--;
        char *end;
        errno = 0;
        long label = sp > s ? strtol(sp, &end, 10) : 0;
        if (sp == s || *end || errno || label < -1 || label > INT32_MAX - 1) {
            st = AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "%s:%zu: expected 'relative/path label' with an integer label >= -1, got '%s'",
                      opt->src, lineno, s);
            break;
        }
        char *pe = sp;
        while (pe > s && isspace((unsigned char)pe[-1]))
            pe--;
        *pe = 0;
        if (!opt->allow_outside_root && !path_inside_root(s)) {
            st = AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "%s:%zu: path '%s' is outside the list's root %s (give --allow-outside-root to allow it)",
                      opt->src, lineno, s, root);
            break;
        }
        int n = s[0] == '/' ? snprintf(path, sizeof path, "%s", s) : snprintf(path, sizeof path, "%s/%s", root, s);
        if (n >= (int)sizeof path) {
            st = AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "%s:%zu: path too long", opt->src, lineno);
            break;
        }
        if (label > maxlabel)
            maxlabel = (int32_t)label;
        st = arena_add(src, path, (size_t)n, (int32_t)label);
    }
    free(line);
    if (ferror(f) && st == AMDIM_OK)
        st = AMDIM_FAIL_IN(src, AMDIM_E_IO, "error reading %s", opt->src);
    fclose(f);
    src->nclasses = maxlabel + 1;
    return st;
}

/* ---- raw sources -------------------------------------------------------- */

static int add_raw_file(amdim_pack_source *src, const char *path, size_t header, size_t record, int required)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (!required && errno == ENOENT)
            return 1;
        return AMDIM_FAIL_IN(src, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open %s: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return AMDIM_FAIL_IN(src, AMDIM_E_IO, "%s is not a regular file", path);
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < header || (size - header) % record != 0 || size == header) {
        close(fd);
        return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "%s is %llu bytes, not a whole number of %zu-byte records (truncated or not this format?)",
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

static int open_cifar(amdim_pack_source *src, const amdim_pack_options *opt, int hundred)
{
    size_t rec = (hundred ? 2 : 1) + 3072;
    src->is_raw = 1;
    src->width = src->height = 32;
    src->channels = 3;
    int st;
    if (!is_dir(opt->src)) {
        st = add_raw_file(src, opt->src, 0, rec, 1);
    } else if (hundred) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.bin", opt->src, opt->split);
        st = add_raw_file(src, path, 0, rec, 1);
        if (st == AMDIM_OK)
            st = maybe_class_names(src, opt->src, opt->cifar100_coarse ? "coarse_label_names.txt" : "fine_label_names.txt",
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
            return AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "cifar10 directory sources have splits train and test, not %s (or give one .bin file)", opt->split);
        }
        if (st == AMDIM_OK)
            st = maybe_class_names(src, opt->src, "batches.meta.txt", 10);
    }
    if (st == AMDIM_OK && src->nclasses == 0)
        src->nclasses = hundred ? (opt->cifar100_coarse ? 20 : 100) : 10;
    return st;
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
        return AMDIM_FAIL_IN(src, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open %s: %s", path, strerror(errno));
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

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* IDX header: magic, then nd big-endian uint32 dimensions. */
static int idx_header(amdim_pack_source *src, const char *path, uint8_t hdr[20], size_t *got)
{
    gzFile gz = gzopen(path, "rb");
    if (!gz)
        return AMDIM_FAIL_IN(src, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open %s: %s", path, strerror(errno));
    int n = gzread(gz, hdr, 20);
    gzclose(gz);
    if (n < 0)
        return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "cannot read %s: not a readable (gzip) file", path);
    *got = (size_t)n;
    return AMDIM_OK;
}

static int open_idx(amdim_pack_source *src, const amdim_pack_options *opt)
{
    src->is_raw = 1;
    uint8_t m[20];
    size_t hlen = 0;
    int st = idx_header(src, opt->src, m, &hlen);
    if (st)
        return st;
    if (hlen < 4 || m[0] || m[1] || m[2] != 0x08 || (m[3] != 3 && m[3] != 4))
        return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "%s is not an IDX file of uint8 images (magic %02x%02x%02x%02x; want 00000803 or 00000804)",
                    opt->src, hlen > 0 ? m[0] : 0, hlen > 1 ? m[1] : 0, hlen > 2 ? m[2] : 0, hlen > 3 ? m[3] : 0);
    int nd = m[3];
    size_t header = 4 + 4 * (size_t)nd;
    if (hlen < header)
        return AMDIM_FAIL_IN(src, AMDIM_E_TRUNCATED, "%s: IDX header is truncated", opt->src);
    uint32_t count = be32(m + 4), rows = be32(m + 8), cols = be32(m + 12);
    uint32_t ch = nd == 4 ? be32(m + 16) : 1;
    if (!count || !rows || !cols || (ch != 1 && ch != 3) || rows > 65536 || cols > 65536)
        return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "%s: IDX dimensions %ux%ux%ux%u are not images (channels must be 1 or 3)",
                    opt->src, count, rows, cols, ch);
    /* rows*cols*ch fits (<= 3*2^32); count times it need not. */
    uint64_t rec = (uint64_t)rows * cols * ch, data_bytes;
    if (__builtin_mul_overflow((uint64_t)count, rec, &data_bytes) || data_bytes > ((uint64_t)1 << 34) - header)
        return AMDIM_FAIL_IN(src, AMDIM_E_TOO_LARGE, "%s: IDX header promises %u images of %ux%ux%u, more than 16 GiB (corrupt header?)",
                    opt->src, count, rows, cols, ch);
    size_t len;
    if ((st = slurp_gz(src, opt->src, header + data_bytes, &src->memory, &len)))
        return st;
    if (len != header + data_bytes)
        return AMDIM_FAIL_IN(src, len < header + data_bytes ? AMDIM_E_TRUNCATED : AMDIM_E_CORRUPT,
                    "%s: IDX header promises %u images of %llu bytes but the data holds %s%zu bytes",
                    opt->src, count, (unsigned long long)rec, len > header + data_bytes ? "more than " : "",
                    len - header - (len > header + data_bytes));
    src->n = count;
    src->record_bytes = rec;
    src->file_header = header;
    src->width = cols;
    src->height = rows;
    src->channels = ch;
    src->nfiles = 1;
    src->fd[0] = -1;
    src->file_name[0] = strdup(opt->src);
    src->first[0] = 0;
    src->first[1] = count;
    /* Labels: given, or found by the usual naming. */
    char guess[4096];
    const char *lpath = opt->labels;
    if (!lpath) {
        snprintf(guess, sizeof guess, "%s", opt->src);
        char *p = strstr(guess, "images-idx3");
        if (!p)
            p = strstr(guess, "images.idx3");
        if (p) {
            memcpy(p, "labels", 6);
            memcpy(p + 7, "idx1", 4);
            if (access(guess, R_OK) == 0)
                lpath = guess;
        }
    }
    if (!lpath)
        return AMDIM_FAIL_IN(src, AMDIM_E_NOT_FOUND, "%s: no labels file found next to it; give one with --labels", opt->src);
    uint8_t *lab;
    size_t llen;
    if ((st = slurp_gz(src, lpath, 8 + (uint64_t)count, &lab, &llen)))
        return st;
    src->raw_labels = lab;
    if (llen < 8 || lab[0] || lab[1] || lab[2] != 0x08 || lab[3] != 1)
        return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "%s is not an IDX label file (magic must be 00000801)", lpath);
    if (be32(lab + 4) != count || llen != 8 + (size_t)count)
        return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "%s holds %u labels (%s%zu bytes) but %s holds %u images", lpath,
                    be32(lab + 4), llen > 8 + (size_t)count ? "more than " : "",
                    llen > 8 + (size_t)count ? 8 + (size_t)count : llen, opt->src, count);
    int maxl = -1;
    for (uint32_t i = 0; i < count; i++)
        if (lab[8 + i] > maxl)
            maxl = lab[8 + i];
    src->nclasses = maxl + 1;
    return AMDIM_OK;
}

static int open_stl10(amdim_pack_source *src, const amdim_pack_options *opt)
{
    src->is_raw = 1;
    src->width = src->height = 96;
    src->channels = 3;
    size_t rec = 96 * 96 * 3;
    char xpath[4096], ypath[4096] = "";
    if (is_dir(opt->src)) {
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
    int st = add_raw_file(src, xpath, 0, rec, 1);
    if (st)
        return st;
    src->nclasses = 10;
    if (ypath[0]) {
        uint8_t *lab;
        size_t llen;
        if ((st = slurp_gz(src, ypath, src->n, &lab, &llen)))
            return st;
        src->raw_labels = lab;
        if (llen != src->n)
            return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "%s holds %s%zu labels but %s holds %llu images", ypath,
                        llen > src->n ? "more than " : "", llen > src->n ? (size_t)src->n : llen, xpath, (unsigned long long)src->n);
        for (size_t i = 0; i < llen; i++)
            if (lab[i] < 1 || lab[i] > 10)
                return AMDIM_FAIL_IN(src, AMDIM_E_CORRUPT, "%s: label %u of image %zu is outside 1..10", ypath, lab[i], i);
    }
    if (is_dir(opt->src))
        st = maybe_class_names(src, opt->src, "class_names.txt", 10);
    return st;
}

int amdim_pack_source_open(amdim_pack_source *src, const amdim_pack_options *opt)
{
    memset(src, 0, sizeof *src);
    for (int i = 0; i < PACK_MAX_FILES; i++)
        src->fd[i] = -1;
    int st;
    switch (opt->format) {
    case AMDIM_PACK_IMAGEFOLDER: st = open_imagefolder(src, opt); break;
    case AMDIM_PACK_LIST: st = open_list(src, opt); break;
    case AMDIM_PACK_CIFAR10: st = open_cifar(src, opt, 0); break;
    case AMDIM_PACK_CIFAR100: st = open_cifar(src, opt, 1); break;
    case AMDIM_PACK_STL10: st = open_stl10(src, opt); break;
    case AMDIM_PACK_IDX: st = open_idx(src, opt); break;
    default: st = AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "unknown format"); break;
    }
    if (st == AMDIM_OK && opt->class_names) {
        strvec sv = {0};
        st = read_lines(src, opt->class_names, &sv);
        if (st == AMDIM_OK && (int32_t)sv.n < src->nclasses)
            st = AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "%s names %zu classes but the labels need %d", opt->class_names,
                      sv.n, src->nclasses);
        if (st == AMDIM_OK) {
            for (int32_t i = 0; i < src->nclasses && src->class_names; i++)
                free(src->class_names[i]);
            free(src->class_names);
            set_class_names(src, &sv);
        }
        strvec_free(&sv);
    }
    if (st == AMDIM_OK && src->n == 0)
        st = AMDIM_FAIL_IN(src, AMDIM_E_EMPTY, "%s holds no images", opt->src);
    return st;
}

void amdim_pack_source_close(amdim_pack_source *src)
{
    free(src->arena);
    free(src->path_off);
    free(src->labels);
    for (int i = 0; i < src->nfiles; i++) {
        if (src->fd[i] >= 0)
            close(src->fd[i]);
        free(src->file_name[i]);
    }
    free(src->memory);
    free(src->raw_labels);
    if (src->class_names)
        for (int32_t i = 0; i < src->nclasses; i++)
            free(src->class_names[i]);
    free(src->class_names);
    memset(src, 0, sizeof *src);
}

static int file_of(const amdim_pack_source *src, uint64_t i)
{
    int k = 0;
    while (k + 1 < src->nfiles && i >= src->first[k + 1])
        k++;
    return k;
}

void amdim_pack_source_item_name(const amdim_pack_source *src, uint64_t i, char *buf, size_t n)
{
    if (!src->is_raw) {
        snprintf(buf, n, "%s", src->arena + src->path_off[i]);
        return;
    }
    int k = file_of(src, i);
    snprintf(buf, n, "%s record %llu", src->file_name[k], (unsigned long long)(i - src->first[k]));
}

int amdim_pack_source_read_raw(const amdim_pack_source *src, amdim_pack_format format, int coarse, uint64_t i,
                         uint8_t *buf, uint8_t *px, int32_t *label, int32_t *aux, char *err, size_t errlen)
{
    int k = file_of(src, i);
    uint64_t local = i - src->first[k];
    const uint8_t *rec;
    if (src->memory) {
        rec = src->memory + src->file_header + local * src->record_bytes;
    } else {
        off_t off = (off_t)(src->file_header + local * src->record_bytes);
        size_t got = 0;
        while (got < src->record_bytes) {
            ssize_t r = pread(src->fd[k], buf + got, src->record_bytes - got, off + (off_t)got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return amdim_fail(err, errlen, AMDIM_E_IO, "%s: reading record %llu failed: %s",
                                  src->file_name[k], (unsigned long long)local,
                                  r < 0 ? strerror(errno) : "unexpected end of file");
            got += (size_t)r;
        }
        rec = buf;
    }
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
    default:
        return amdim_fail(err, errlen, AMDIM_E_INVALID, "not a raw format");
    }
    return AMDIM_OK;
}
