/* The packer's sources, common part: amdim_pack_source_open's dispatch to
 * each format's opener, closing, item names, class-name files, and the
 * sources whose items are image files: imagefolder (a tree of class
 * directories) and list (Places205-style 'relative/path label' lines).
 * The raw binary formats (CIFAR, STL-10, IDX) are in pack_source_raw.c. */
#include "pack_source_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

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

/* path = dir/name, or AMDIM_E_INVALID when that does not fit (no path
 * that long opens; a cut one could name another file). */
static int join_path(amdim_pack_source *src, char *path, size_t n, const char *dir, const char *name)
{
    int len = snprintf(path, n, "%s/%s", dir, name);
    if (len < 0 || (size_t)len >= n)
        return AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "path too long (%d bytes): %s/%s", len, dir, name);
    return AMDIM_OK;
}

int amdim_pack_source_maybe_class_names(amdim_pack_source *src, const char *dir, const char *file, int32_t expected)
{
    char path[4096];
    AMDIM_TRY(join_path(src, path, sizeof path, dir, file));
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

int amdim_pack_source_is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* ---- imagefolder -------------------------------------------------------- */

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
        return AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "directories nested more than 40 deep under %s (a symlink loop?)",
                             dir);
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
        if (st == AMDIM_OK && strcmp(name, ".") && strcmp(name, "..") &&
            (st = join_path(src, path, sizeof path, dir, name)) == AMDIM_OK && amdim_pack_source_is_dir(path))
            st = collect_dirs(src, path, depth + 1, dirs);
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
        if (st == AMDIM_OK && strcmp(name, ".") && strcmp(name, "..") &&
            (st = join_path(src, path, sizeof path, dir, name)) == AMDIM_OK) {
            if (!amdim_pack_source_is_dir(path)) {
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
    for (size_t i = 0; st == AMDIM_OK && i < names.n; i++)
        if ((st = join_path(src, path, sizeof path, dir, names.v[i])) == AMDIM_OK)
            st = arena_add(src, path, strlen(path), label);
    strvec_free(&names);
    return st;
}

static int open_imagefolder(amdim_pack_source *src, const amdim_pack_options *opt)
{
    if (!amdim_pack_source_is_dir(opt->src))
        return AMDIM_FAIL_IN(src, AMDIM_E_NOT_FOUND, "%s is not a directory (imagefolder wants SRC/<class>/<image>)",
                             opt->src);
    struct dirent **ents;
    int n = scandir(opt->src, &ents, NULL, NULL);
    if (n < 0)
        return AMDIM_FAIL_IN(src, AMDIM_E_IO, "cannot list directory %s: %s", opt->src, strerror(errno));
    strvec classes = {0};
    int st = AMDIM_OK;
    char path[4096];
    for (int i = 0; i < n; i++) {
        const char *name = ents[i]->d_name;
        if (st == AMDIM_OK && name[0] != '.' && (st = join_path(src, path, sizeof path, opt->src, name)) == AMDIM_OK &&
            amdim_pack_source_is_dir(path) && strvec_push(&classes, name))
            st = AMDIM_FAIL_IN(src, AMDIM_E_NOMEM, "out of memory");
        free(ents[i]);
    }
    free(ents);
    if (classes.n)
        qsort(classes.v, classes.n, sizeof *classes.v, cmp_str);
    if (st == AMDIM_OK && classes.n == 0)
        st = AMDIM_FAIL_IN(src, AMDIM_E_EMPTY,
                           "%s has no class sub-directories (imagefolder wants SRC/<class>/<image>)", opt->src);
    for (size_t c = 0; st == AMDIM_OK && c < classes.n; c++) {
        strvec dirs = {0};
        if ((st = join_path(src, path, sizeof path, opt->src, classes.v[c])) == AMDIM_OK)
            st = collect_dirs(src, path, 0, &dirs);
        if (dirs.n)
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

/* The directory a list's paths are relative to, into root (n bytes): --root,
 * else the list file's own directory. */
static int list_root(amdim_pack_source *src, const amdim_pack_options *opt, char *root, size_t n)
{
    const char *from = opt->root ? opt->root : opt->src;
    if (strlen(from) >= n)
        return AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "path too long (%zu bytes): %s", strlen(from), from);
    if (opt->root) {
        snprintf(root, n, "%s", opt->root);
    } else {
        snprintf(root, n, "%s", opt->src);
        char *slash = strrchr(root, '/');
        if (slash == root)
            root[1] = 0; /* a list file directly in / */
        else if (slash)
            *slash = 0;
        else
            snprintf(root, n, ".");
    }
    if (!amdim_pack_source_is_dir(root))
        return AMDIM_FAIL_IN(src, AMDIM_E_NOT_FOUND, "list root %s is not a directory", root);
    return AMDIM_OK;
}

/* Splits line `lineno` (len bytes, as getline read it) in place into its
 * path and label: white space around the line goes, the label is its last
 * word and the path the rest. *path is NULL for a blank or '#' line. */
static int list_parse_line(amdim_pack_source *src, const char *list, size_t lineno, char *line, ssize_t len,
                           char **path, long *label)
{
    *path = NULL;
    if (memchr(line, 0, (size_t)len))
        return AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "%s:%zu: line holds a NUL byte (is this a text file?)", list,
                             lineno);
    while (len > 0 && isspace((unsigned char)line[len - 1]))
        line[--len] = 0;
    char *s = line;
    while (*s && isspace((unsigned char)*s))
        s++;
    if (*s == 0 || *s == '#')
        return AMDIM_OK;
    char *sp = s + strlen(s);
    while (sp > s && !isspace((unsigned char)sp[-1]))
        sp--;
    char *end;
    errno = 0;
    long l = sp > s ? strtol(sp, &end, 10) : 0;
    if (sp == s || *end || errno || l < -1 || l > INT32_MAX - 1)
        return AMDIM_FAIL_IN(src, AMDIM_E_INVALID,
                             "%s:%zu: expected 'relative/path label' with an integer label >= -1, got '%s'", list,
                             lineno, s);
    char *pe = sp;
    while (pe > s && isspace((unsigned char)pe[-1]))
        pe--;
    *pe = 0;
    *path = s;
    *label = l;
    return AMDIM_OK;
}

/* The file an entry's path s names, into path (n bytes, its length in *len):
 * s itself when absolute, else s under root. Paths that leave the root are
 * refused unless --allow-outside-root. */
static int list_item_path(amdim_pack_source *src, const amdim_pack_options *opt, size_t lineno, const char *s,
                          const char *root, char *path, size_t n, int *len)
{
    if (!opt->allow_outside_root && !path_inside_root(s))
        return AMDIM_FAIL_IN(src, AMDIM_E_INVALID,
                             "%s:%zu: path '%s' is outside the list's root %s (give --allow-outside-root to allow it)",
                             opt->src, lineno, s, root);
    int k = s[0] == '/' ? snprintf(path, n, "%s", s) : snprintf(path, n, "%s/%s", root, s);
    if (k >= (int)n)
        return AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "%s:%zu: path too long", opt->src, lineno);
    *len = k;
    return AMDIM_OK;
}

/* Adds an item per entry line of f; the classes are 0..the largest label. */
static int list_read(amdim_pack_source *src, const amdim_pack_options *opt, FILE *f, const char *root)
{
    char *line = NULL, path[8192];
    size_t cap = 0, lineno = 0;
    ssize_t len;
    int st = AMDIM_OK;
    int32_t maxlabel = -1;
    while (st == AMDIM_OK && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        char *s;
        long label = 0;
        int n = 0;
        st = list_parse_line(src, opt->src, lineno, line, len, &s, &label);
        if (st == AMDIM_OK && s)
            st = list_item_path(src, opt, lineno, s, root, path, sizeof path, &n);
        if (st == AMDIM_OK && s) {
            if (label > maxlabel)
                maxlabel = (int32_t)label;
            st = arena_add(src, path, (size_t)n, (int32_t)label);
        }
    }
    free(line);
    if (ferror(f) && st == AMDIM_OK)
        st = AMDIM_FAIL_IN(src, AMDIM_E_IO, "error reading %s", opt->src);
    src->nclasses = maxlabel + 1;
    return st;
}

static int open_list(amdim_pack_source *src, const amdim_pack_options *opt)
{
    FILE *f = fopen(opt->src, "r");
    if (!f)
        return AMDIM_FAIL_IN(src, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO, "cannot open list file %s: %s",
                             opt->src, strerror(errno));
    char root[4096];
    int st = list_root(src, opt, root, sizeof root);
    if (st == AMDIM_OK)
        st = list_read(src, opt, f, root);
    fclose(f);
    return st;
}

/* ---- the interface ------------------------------------------------------ */

/* --class-names: the file's names replace the source's own, and must cover
 * every label. */
static int use_class_names_file(amdim_pack_source *src, const char *path)
{
    strvec sv = {0};
    int st = read_lines(src, path, &sv);
    if (st == AMDIM_OK && (int32_t)sv.n < src->nclasses)
        st = AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "%s names %zu classes but the labels need %d", path, sv.n,
                           src->nclasses);
    if (st == AMDIM_OK) {
        for (int32_t i = 0; i < src->nclasses && src->class_names; i++)
            free(src->class_names[i]);
        free(src->class_names);
        set_class_names(src, &sv);
    }
    strvec_free(&sv);
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
    case AMDIM_PACK_CIFAR10: st = amdim_pack_source_open_cifar(src, opt, 0); break;
    case AMDIM_PACK_CIFAR100: st = amdim_pack_source_open_cifar(src, opt, 1); break;
    case AMDIM_PACK_STL10: st = amdim_pack_source_open_stl10(src, opt); break;
    case AMDIM_PACK_IDX: st = amdim_pack_source_open_idx(src, opt); break;
    default: st = AMDIM_FAIL_IN(src, AMDIM_E_INVALID, "unknown format"); break;
    }
    if (st == AMDIM_OK && opt->class_names)
        st = use_class_names_file(src, opt->class_names);
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

void amdim_pack_source_item_name(const amdim_pack_source *src, uint64_t i, char *buf, size_t n)
{
    if (!src->is_raw) {
        snprintf(buf, n, "%s", src->arena + src->path_off[i]);
        return;
    }
    int k = amdim_pack_source_file_of(src, i);
    snprintf(buf, n, "%s record %llu", src->file_name[k], (unsigned long long)(i - src->first[k]));
}
