/* Our checkpoints hold exactly the authors' state_dict: for each
 * configuration in tests/ref/authors_state_dict.txt (written by
 * dump_authors_state_dict.py from their Model), a checkpoint of our model
 * lists the same tensor names, in the same order, with the same dtypes and
 * shapes. The safetensors header is read with a small JSON reader here.
 *
 *     test_checkpoint_names AUTHORS_STATE_DICT.txt */
#include <stdlib.h>
#include <string.h>

#include "amdim_checkpoint.h"
#include "amdim_trainer.h"
#include "testutil.h"

#define MAX_T 1024

typedef struct {
    char name[160], dtype[8], shape[64]; /* shape "d0,d1,..." or "-" */
    long long bytes;                     /* data_offsets span (ours only) */
} tensor;

/* ---- a minimal JSON reader for the safetensors header ---- */

static const char *jp;
static int jbad;

static void ws(void)
{
    while (*jp == ' ' || *jp == '\t' || *jp == '\n' || *jp == '\r')
        jp++;
}

static int expect(char c)
{
    ws();
    if (*jp != c) {
        jbad = 1;
        return 0;
    }
    jp++;
    return 1;
}

/* Reads a string into out (escapes kept as the escaped character). */
static void jstring(char *out, size_t n)
{
    size_t k = 0;
    if (!expect('"'))
        return;
    while (*jp && *jp != '"') {
        if (*jp == '\\' && jp[1])
            jp++;
        if (k + 1 < n)
            out[k++] = *jp;
        jp++;
    }
    out[k] = 0;
    if (*jp != '"')
        jbad = 1;
    else
        jp++;
}

static void jskip(void)
{
    char tmp[256];
    ws();
    if (*jp == '"') {
        jstring(tmp, sizeof tmp);
    } else if (*jp == '{' || *jp == '[') {
        char close = *jp == '{' ? '}' : ']';
        jp++;
        ws();
        if (*jp == close) {
            jp++;
            return;
        }
        do {
            if (close == '}') {
                jstring(tmp, sizeof tmp);
                expect(':');
            }
            jskip();
            ws();
        } while (!jbad && *jp++ == ',');
        if (jp[-1] != close)
            jbad = 1;
    } else {
        const char *s = jp;
        while (*jp && !strchr(",]} \t\r\n", *jp))
            jp++;
        if (jp == s)
            jbad = 1;
    }
}

/* Reads an array of integers; returns the count. */
static int jints(long long *v, int max)
{
    int n = 0;
    if (!expect('['))
        return 0;
    ws();
    if (*jp == ']') {
        jp++;
        return 0;
    }
    do {
        ws();
        char *end;
        long long x = strtoll(jp, &end, 10);
        if (end == jp) {
            jbad = 1;
            return n;
        }
        jp = end;
        if (n < max)
            v[n++] = x;
        ws();
    } while (*jp++ == ',');
    if (jp[-1] != ']')
        jbad = 1;
    return n;
}

/* Parses the header of a safetensors file into t[]; returns the count or -1. */
static int read_header(const char *path, tensor *t)
{
    size_t len;
    char *buf = test_read_file(path, &len);
    unsigned long long hl = 0;
    for (int i = 0; buf && len >= 8 && i < 8; i++)
        hl |= (unsigned long long)(unsigned char)buf[i] << (8 * i);
    if (!buf || len < 8 || hl > len - 8) {
        free(buf);
        return -1;
    }
    buf[8 + hl] = 0; /* the header ends here; the data is not needed */
    jp = buf + 8;
    jbad = 0;
    int nt = 0;
    expect('{');
    do {
        char key[160];
        jstring(key, sizeof key);
        expect(':');
        if (strcmp(key, "__metadata__") == 0 || nt == MAX_T) {
            jskip();
        } else {
            tensor *e = &t[nt++];
            memset(e, 0, sizeof *e);
            snprintf(e->name, sizeof e->name, "%s", key);
            expect('{');
            do {
                char field[32];
                long long v[8];
                jstring(field, sizeof field);
                expect(':');
                if (strcmp(field, "dtype") == 0) {
                    jstring(e->dtype, sizeof e->dtype);
                } else if (strcmp(field, "shape") == 0) {
                    int nd = jints(v, 8);
                    strcpy(e->shape, nd ? "" : "-");
                    for (int d = 0; d < nd; d++)
                        snprintf(e->shape + strlen(e->shape), sizeof e->shape - strlen(e->shape), "%s%lld",
                                 d ? "," : "", v[d]);
                } else if (strcmp(field, "data_offsets") == 0) {
                    e->bytes = jints(v, 2) == 2 ? v[1] - v[0] : -1;
                } else {
                    jskip();
                }
                ws();
            } while (!jbad && *jp++ == ',');
            if (jp[-1] != '}')
                jbad = 1;
        }
        ws();
    } while (!jbad && *jp++ == ',');
    if (jp[-1] != '}')
        jbad = 1;
    free(buf);
    return jbad ? -1 : nt;
}

/* ---- comparison ---- */

static int find(const tensor *t, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(t[i].name, name) == 0)
            return i;
    return -1;
}

/* Bytes of a tensor from its dtype and shape; -1 if the dtype is unknown. */
static long long nbytes(const tensor *e)
{
    long long n = strcmp(e->dtype, "F32") == 0 ? 4 : strcmp(e->dtype, "I64") == 0 ? 8 : strcmp(e->dtype, "U8") == 0 ? 1 : -1;
    if (n < 0 || strcmp(e->shape, "-") == 0)
        return n;
    for (const char *s = e->shape; s; s = strchr(s, ',') ? strchr(s, ',') + 1 : NULL)
        n *= atoll(s);
    return n;
}

/* The name before `name` among the entries of a that b also has ("(start)" if none). */
static const char *prev_common(const tensor *a, int na, const tensor *b, int nb, const char *name)
{
    const char *prev = "(start)";
    for (int i = 0; i < na && strcmp(a[i].name, name) != 0; i++)
        if (find(b, nb, a[i].name) >= 0)
            prev = a[i].name;
    return prev;
}

static void compare(const char *label, const tensor *want, int nw, const tensor *got, int ng)
{
    for (int i = 0; i < nw; i++) {
        int j = find(got, ng, want[i].name);
        CHECK(j >= 0, "%s: missing %s", label, want[i].name);
        if (j < 0)
            continue;
        CHECK(strcmp(got[j].dtype, want[i].dtype) == 0, "%s: %s is %s, the authors' is %s", label, want[i].name,
              got[j].dtype, want[i].dtype);
        CHECK(strcmp(got[j].shape, want[i].shape) == 0, "%s: %s has shape [%s], the authors' [%s]", label,
              want[i].name, got[j].shape, want[i].shape);
        CHECK(got[j].bytes == nbytes(&got[j]), "%s: %s spans %lld bytes, its dtype and shape need %lld", label,
              want[i].name, got[j].bytes, nbytes(&got[j]));
        const char *pg = prev_common(got, ng, want, nw, want[i].name);
        const char *pw = prev_common(want, nw, got, ng, want[i].name);
        CHECK(strcmp(pg, pw) == 0, "%s: order: %s follows %s in the checkpoint, %s in the authors' state_dict", label,
              want[i].name, pg, pw);
    }
    for (int j = 0; j < ng; j++)
        CHECK(find(want, nw, got[j].name) >= 0, "%s: unexpected %s", label, got[j].name);
}

static void check_config(int size, int ndf, int n_rkhs, int depth, int n_classes, int use_bn, const tensor *want,
                         int nw, int index)
{
    char label[96], err[512], dir[600], path[4200];
    snprintf(label, sizeof label, "%d px ndf %d n_rkhs %d depth %d use_bn %d", size, ndf, n_rkhs, depth, use_bn);
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, size);
    cfg.ndf = ndf;
    cfg.n_rkhs = n_rkhs;
    cfg.n_depth = depth;
    cfg.n_classes = n_classes;
    cfg.use_bn = use_bn;
    amdim_model *m = NULL;
    REQUIRE(amdim_model_create(&m, &cfg, err, sizeof err) == 0, "%s: %s", label, err);
    snprintf(dir, sizeof dir, "%s/cfg%d", test_tmpdir(), index);
    test_mkdirs(dir);
    amdim_checkpoint_info info = {.epochs = -1, .max_steps = -1, .preset = "test"};
    REQUIRE(amdim_checkpoint_save(m, dir, &info, err, sizeof err) == 0, "%s: %s", label, err);
    REQUIRE(amdim_checkpoint_latest(dir, path, sizeof path) == 0, "%s: no checkpoint in %s", label, dir);
    static tensor got[MAX_T];
    int ng = read_header(path, got);
    CHECK(ng > 0, "%s: cannot parse the safetensors header of %s", label, path);
    if (ng > 0)
        compare(label, want, nw, got, ng);
    printf("%s: %d tensors in the authors' state_dict, %d in the checkpoint\n", label, nw, ng);
    amdim_model_destroy(m);
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: %s AUTHORS_STATE_DICT.txt", argv[0]);
    FILE *f = fopen(argv[1], "r");
    REQUIRE(f, "cannot open %s", argv[1]);
    static tensor want[MAX_T];
    int nw = 0, have = 0, configs = 0, c[6] = {0};
    char line[512];
    for (int more = 1; more;) {
        more = fgets(line, sizeof line, f) != NULL;
        if (more && (line[0] == '#' || line[0] == '\n'))
            continue;
        int nc[6] = {0};
        int is_config = more && sscanf(line, "config %d %d %d %d %d %d", &nc[0], &nc[1], &nc[2], &nc[3], &nc[4],
                                       &nc[5]) == 6;
        if (!more || is_config) { /* the previous configuration is complete */
            if (have)
                check_config(c[0], c[1], c[2], c[3], c[4], c[5], want, nw, configs++);
            memcpy(c, nc, sizeof c);
            have = is_config;
            nw = 0;
            continue;
        }
        REQUIRE(have && nw < MAX_T, "%s: unexpected line %s", argv[1], line);
        tensor *e = &want[nw++];
        REQUIRE(sscanf(line, "%159s %7s %63s", e->name, e->dtype, e->shape) == 3, "%s: bad line %s", argv[1], line);
    }
    fclose(f);
    CHECK(configs == 6, "%s holds %d configurations, expected 6", argv[1], configs);
    return test_finish("test_checkpoint_names");
}
