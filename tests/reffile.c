#include "reffile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "testutil.h"

static void read_exact(gzFile g, void *buf, size_t n, const char *path)
{
    uint8_t *p = buf;
    while (n) {
        unsigned chunk = n > (1u << 30) ? (1u << 30) : (unsigned)n;
        int r = gzread(g, p, chunk);
        REQUIRE(r > 0, "%s: truncated reference file", path);
        p += r;
        n -= (size_t)r;
    }
}

void ref_load(ref_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    gzFile g = gzopen(path, "rb");
    REQUIRE(g, "cannot open reference file %s (regenerate with tests/ref/*.py)", path);
    char magic[4];
    uint32_t hdr[2];
    read_exact(g, magic, 4, path);
    REQUIRE(memcmp(magic, "AMRF", 4) == 0, "%s: not a reference file", path);
    read_exact(g, hdr, 8, path);
    REQUIRE(hdr[0] == 1, "%s: reference format version %u, this test reads 1", path, hdr[0]);
    f->n = (int)hdr[1];
    f->t = calloc((size_t)f->n, sizeof *f->t);
    static const size_t esize[] = {1, 4, 4, 8};
    for (int i = 0; i < f->n; i++) {
        ref_tensor *t = &f->t[i];
        uint16_t nl;
        read_exact(g, &nl, 2, path);
        t->name = calloc(1, (size_t)nl + 1);
        read_exact(g, t->name, nl, path);
        uint8_t dn[2];
        read_exact(g, dn, 2, path);
        t->dtype = dn[0];
        t->ndim = dn[1];
        REQUIRE(t->dtype <= REF_F64 && t->ndim <= 8, "%s: bad tensor header for %s", path, t->name);
        read_exact(g, t->dims, 4 * (size_t)t->ndim, path);
        t->count = 1;
        for (int d = 0; d < t->ndim; d++)
            t->count *= t->dims[d];
        size_t bytes = t->count * esize[t->dtype];
        t->data = malloc(bytes ? bytes : 1);
        read_exact(g, t->data, bytes, path);
    }
    gzclose(g);
}

void ref_free(ref_file *f)
{
    for (int i = 0; i < f->n; i++) {
        free(f->t[i].name);
        free(f->t[i].data);
    }
    free(f->t);
    memset(f, 0, sizeof *f);
}

const ref_tensor *ref_find(const ref_file *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0)
            return &f->t[i];
    return NULL;
}

const ref_tensor *ref_get(const ref_file *f, const char *name, int dtype)
{
    const ref_tensor *t = ref_find(f, name);
    REQUIRE(t, "reference tensor %s is missing", name);
    REQUIRE(t->dtype == dtype, "reference tensor %s has dtype %d, want %d", name, t->dtype, dtype);
    return t;
}
