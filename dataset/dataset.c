/* Record format and the read-only dataset handle. */
#include "amdim_dataset.h"

#include <errno.h>
#include <lmdb.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <fcntl.h>
#include <unistd.h>

static void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const uint8_t *p) { return get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

int amdim_record_encode(const amdim_record *r, uint8_t *dst, size_t cap, size_t *written)
{
    if (r->width == 0 || r->height == 0 || (r->channels != 1 && r->channels != 3) ||
        r->encoding > AMDIM_ENCODING_JPEG || r->label < -1 || r->aux_label < -1)
        return AMDIM_E_INVALID;
    if (r->encoding == AMDIM_ENCODING_RAW &&
        (uint64_t)r->width * r->height * r->channels != r->payload_size)
        return AMDIM_E_INVALID;
    size_t total = AMDIM_RECORD_HEADER_SIZE + (size_t)r->payload_size;
    if (written)
        *written = total;
    if (cap < total)
        return AMDIM_E_TOO_LARGE;
    memset(dst, 0, AMDIM_RECORD_HEADER_SIZE);
    put_u32(dst + 0, AMDIM_RECORD_MAGIC);
    put_u16(dst + 4, AMDIM_RECORD_VERSION);
    put_u16(dst + 6, AMDIM_RECORD_HEADER_SIZE);
    put_u32(dst + 8, (uint32_t)r->label);
    put_u32(dst + 12, (uint32_t)r->aux_label);
    put_u64(dst + 16, r->source_index);
    put_u32(dst + 24, r->width);
    put_u32(dst + 28, r->height);
    dst[32] = r->channels;
    dst[33] = r->encoding;
    put_u32(dst + 36, r->payload_size);
    memcpy(dst + AMDIM_RECORD_HEADER_SIZE, r->payload, r->payload_size);
    return AMDIM_OK;
}

int amdim_record_decode(const void *src, size_t len, amdim_record *r, char *err, size_t n)
{
    const uint8_t *p = src;
    if (len < 8)
        return amdim_fail(err, n, AMDIM_E_TRUNCATED, "record is %zu bytes, shorter than its header", len);
    if (get_u32(p) != AMDIM_RECORD_MAGIC)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "bad record magic 0x%08x", get_u32(p));
    uint16_t version = get_u16(p + 4), hsize = get_u16(p + 6);
    if (version != AMDIM_RECORD_VERSION)
        return amdim_fail(err, n, AMDIM_E_VERSION, "record version %u, this build reads %d", version,
                          AMDIM_RECORD_VERSION);
    if (hsize != AMDIM_RECORD_HEADER_SIZE)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "record header size %u, expected %d", hsize,
                          AMDIM_RECORD_HEADER_SIZE);
    if (len < AMDIM_RECORD_HEADER_SIZE)
        return amdim_fail(err, n, AMDIM_E_TRUNCATED, "record is %zu bytes, shorter than its header", len);
    r->label = (int32_t)get_u32(p + 8);
    r->aux_label = (int32_t)get_u32(p + 12);
    r->source_index = get_u64(p + 16);
    r->width = get_u32(p + 24);
    r->height = get_u32(p + 28);
    r->channels = p[32];
    r->encoding = p[33];
    r->payload_size = get_u32(p + 36);
    r->payload = p + AMDIM_RECORD_HEADER_SIZE;
    if (r->width == 0 || r->height == 0 || r->width > (1u << 20) || r->height > (1u << 20) ||
        (r->channels != 1 && r->channels != 3) || r->encoding > AMDIM_ENCODING_JPEG ||
        r->label < -1 || r->aux_label < -1)
        return amdim_fail(err, n, AMDIM_E_CORRUPT,
                          "record header has impossible fields (%ux%ux%u, encoding %u, label %d)",
                          r->width, r->height, r->channels, r->encoding, r->label);
    if ((uint64_t)len - AMDIM_RECORD_HEADER_SIZE != r->payload_size)
        return amdim_fail(err, n, len - AMDIM_RECORD_HEADER_SIZE < r->payload_size ? AMDIM_E_TRUNCATED : AMDIM_E_CORRUPT,
                          "record payload is %zu bytes, header says %u",
                          len - AMDIM_RECORD_HEADER_SIZE, r->payload_size);
    if (r->encoding == AMDIM_ENCODING_RAW &&
        (uint64_t)r->width * r->height * r->channels != r->payload_size)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "raw record of %ux%ux%u has %u payload bytes",
                          r->width, r->height, r->channels, r->payload_size);
    return AMDIM_OK;
}

int amdim_split_name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > AMDIM_SPLIT_NAME_MAX || strcmp(s, "meta") == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Reader ----------------------------------------------------------------- */

typedef struct {
    char name[AMDIM_SPLIT_NAME_MAX + 1];
    MDB_dbi dbi;
    int opened;
} split_entry;

struct amdim_dataset {
    MDB_env *env;
    MDB_txn *txn; /* one read transaction for the handle's lifetime */
    MDB_dbi meta;
    const uint8_t *map_base;
    split_entry *splits;
    int nsplits;
    char err[512];
    char path[4096];
};

static int lmdb_fail(amdim_dataset *ds, const char *what, int rc)
{
    return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_LMDB, "%s(): %s (%s)", what,
                      mdb_strerror(rc), ds->path);
}

/* LMDB does not expose where it mapped the file (me_mapaddr is only set
 * with MDB_FIXEDMAP), and file offsets of values are what the loader needs:
 * find our mapping of this inode in /proc/self/maps. NULL if not found. */
static const uint8_t *find_map_base(const struct stat *sb)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return NULL;
    char line[4096];
    const uint8_t *base = NULL;
    while (!base && fgets(line, sizeof line, f)) {
        unsigned long long start, end, offset, inode;
        unsigned dmaj, dmin;
        char perms[8];
        if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu", &start, &end, perms, &offset, &dmaj, &dmin, &inode) != 7)
            continue;
        if (inode == (unsigned long long)sb->st_ino && dmaj == major(sb->st_dev) && dmin == minor(sb->st_dev))
            base = (const uint8_t *)(uintptr_t)(start - offset);
    }
    fclose(f);
    return base;
}

/* LMDB maps the file and trusts its page numbers: a file cut short (an
 * interrupted copy, a full disk) turns a read of a missing page into SIGBUS
 * inside mdb_dbi_open or mdb_cursor_get. So read the two meta pages here
 * (lmdb's MDB_meta, 64-bit layout, host byte order: after the 16-byte page
 * header, magic u32 @16, version u32 @20, page size u32 @40 (mm_dbs[0].md_pad),
 * last page u64 @136, txnid u64 @144) and check that the file holds every
 * page the newer valid meta counts. Returns 0, AMDIM_E_TRUNCATED, or
 * AMDIM_E_CORRUPT / AMDIM_E_IO with a message naming the file. */
#define LMDB_MAGIC 0xBEEFC0DEu
#define LMDB_META_BYTES 152

static int lmdb_read_meta(int fd, uint64_t off, uint64_t *psize, uint64_t *last_pg, uint64_t *txnid)
{
    uint8_t m[LMDB_META_BYTES];
    if (pread(fd, m, sizeof m, (off_t)off) != (ssize_t)sizeof m)
        return -1;
    uint32_t magic, version, ps;
    memcpy(&magic, m + 16, 4);
    memcpy(&version, m + 20, 4);
    memcpy(&ps, m + 40, 4);
    memcpy(last_pg, m + 136, 8);
    memcpy(txnid, m + 144, 8);
    *psize = ps;
    return magic == LMDB_MAGIC && version == 1 && ps >= 256 && ps <= 65536 && (ps & (ps - 1)) == 0 ? 0 : -1;
}

static int lmdb_check_size(const char *path, uint64_t size, char *err, size_t n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return amdim_fail(err, n, AMDIM_E_IO, "cannot open %s: %s", path, strerror(errno));
    uint64_t ps0 = 0, last0 = 0, tx0 = 0, ps1 = 0, last1 = 0, tx1 = 0;
    int ok0 = lmdb_read_meta(fd, 0, &ps0, &last0, &tx0) == 0;
    int ok1 = ok0 && lmdb_read_meta(fd, ps0, &ps1, &last1, &tx1) == 0 && ps1 == ps0;
    close(fd);
    if (!ok0) /* a foreign file, or one cut inside its first page */
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s is not a readable LMDB file: no LMDB meta page at its start%s",
                          path, size < 4096 ? " (or a truncated file)" : "");
    if (size < 2 * ps0)
        return amdim_fail(err, n, AMDIM_E_TRUNCATED,
                          "%s is a truncated file: %llu bytes, shorter than LMDB's two %llu-byte meta pages", path,
                          (unsigned long long)size, (unsigned long long)ps0);
    uint64_t last = ok1 && tx1 > tx0 ? last1 : last0, need;
    if (__builtin_mul_overflow(last + 1, ps0, &need) || last == UINT64_MAX)
        return amdim_fail(err, n, AMDIM_E_CORRUPT, "%s: LMDB meta page names an impossible last page %llu", path,
                          (unsigned long long)last);
    if (size < need)
        return amdim_fail(err, n, AMDIM_E_TRUNCATED,
                          "%s is a truncated file: %llu bytes, but its LMDB meta page says it holds %llu pages "
                          "of %llu bytes (%llu bytes); was a copy cut short or the disk full?",
                          path, (unsigned long long)size, (unsigned long long)(last + 1), (unsigned long long)ps0,
                          (unsigned long long)need);
    return AMDIM_OK;
}

static int split_cmp(const void *a, const void *b)
{
    return strcmp(((const split_entry *)a)->name, ((const split_entry *)b)->name);
}

/* A regular file whose size an LMDB environment can have; the
 * environment opened read-only, its read transaction begun. */
static int open_env(amdim_dataset *ds, const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return amdim_fail(ds->err, sizeof ds->err, errno == ENOENT ? AMDIM_E_NOT_FOUND : AMDIM_E_IO,
                          "cannot open %s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_CORRUPT,
                          "%s is not a regular file (a packed dataset is one LMDB file)", path);
    AMDIM_TRY(lmdb_check_size(path, (uint64_t)sb.st_size, ds->err, sizeof ds->err));
    int rc;
    if ((rc = mdb_env_create(&ds->env)) || (rc = mdb_env_set_maxdbs(ds->env, 256)))
        return lmdb_fail(ds, "mdb_env_create", rc);
    rc = mdb_env_open(ds->env, path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK | MDB_NORDAHEAD, 0644);
    if (rc)
        return amdim_fail(ds->err, sizeof ds->err,
                          rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH ? AMDIM_E_CORRUPT : AMDIM_E_LMDB,
                          "%s is not a readable LMDB file: mdb_env_open(): %s", path, mdb_strerror(rc));
    ds->map_base = find_map_base(&sb);
    if ((rc = mdb_txn_begin(ds->env, NULL, MDB_RDONLY, &ds->txn)))
        return lmdb_fail(ds, "mdb_txn_begin", rc);
    return AMDIM_OK;
}

/* The meta database, and the format version this build reads. */
static int open_meta(amdim_dataset *ds, const char *path)
{
    int rc = mdb_dbi_open(ds->txn, "meta", 0, &ds->meta);
    if (rc)
        return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_CORRUPT,
                          "%s is an LMDB file but not an amdim dataset (no meta database: %s)", path,
                          mdb_strerror(rc));
    char version[32];
    if (amdim_dataset_meta(ds, "format_version", version, sizeof version))
        return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_CORRUPT, "%s has no format_version in its meta database",
                          path);
    if (atoi(version) != AMDIM_DATASET_FORMAT_VERSION)
        return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_VERSION,
                          "%s has dataset format version %s; this build reads version %d", path, version,
                          AMDIM_DATASET_FORMAT_VERSION);
    return AMDIM_OK;
}

/* The splits: every "<name>.records" key of the meta database, sorted. */
static int list_splits(amdim_dataset *ds)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(ds->txn, ds->meta, &cur);
    if (rc)
        return lmdb_fail(ds, "mdb_cursor_open", rc);
    MDB_val k, v;
    int st = AMDIM_OK;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && st == AMDIM_OK;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const char *key = k.mv_data;
        size_t kl = k.mv_size;
        if (!(kl > 8 && memcmp(key + kl - 8, ".records", 8) == 0 && kl - 8 <= AMDIM_SPLIT_NAME_MAX))
            continue;
        split_entry *p = realloc(ds->splits, (size_t)(ds->nsplits + 1) * sizeof *p);
        if (!p) {
            st = amdim_fail(ds->err, sizeof ds->err, AMDIM_E_NOMEM, "out of memory");
            break;
        }
        ds->splits = p;
        memset(&p[ds->nsplits], 0, sizeof *p);
        memcpy(p[ds->nsplits].name, key, kl - 8);
        ds->nsplits++;
    }
    mdb_cursor_close(cur);
    if (st == AMDIM_OK && ds->nsplits)
        qsort(ds->splits, (size_t)ds->nsplits, sizeof *ds->splits, split_cmp);
    return st;
}

int amdim_dataset_open(amdim_dataset **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    amdim_dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        return amdim_fail(err, errlen, AMDIM_E_NOMEM, "out of memory");
    snprintf(ds->path, sizeof ds->path, "%s", path);
    int st = open_env(ds, path);
    if (st == AMDIM_OK)
        st = open_meta(ds, path);
    if (st == AMDIM_OK)
        st = list_splits(ds);
    if (st) {
        if (err)
            snprintf(err, errlen, "%s", ds->err);
        amdim_dataset_close(ds);
        return st;
    }
    *out = ds;
    return AMDIM_OK;
}

void amdim_dataset_close(amdim_dataset *ds)
{
    if (!ds)
        return;
    if (ds->txn)
        mdb_txn_abort(ds->txn);
    if (ds->env)
        mdb_env_close(ds->env);
    free(ds->splits);
    free(ds);
}

const char *amdim_dataset_error(const amdim_dataset *ds) { return ds ? ds->err : "no dataset"; }

int amdim_dataset_split_count(const amdim_dataset *ds) { return ds->nsplits; }

const char *amdim_dataset_split_name(const amdim_dataset *ds, int i)
{
    return i >= 0 && i < ds->nsplits ? ds->splits[i].name : NULL;
}

int amdim_dataset_meta(amdim_dataset *ds, const char *key, char *buf, size_t n)
{
    MDB_val k = {strlen(key), (void *)key}, v;
    int rc = mdb_get(ds->txn, ds->meta, &k, &v);
    if (rc == MDB_NOTFOUND)
        return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_NOT_FOUND, "meta key %s not found", key);
    if (rc)
        return lmdb_fail(ds, "mdb_get", rc);
    if (n) {
        size_t m = v.mv_size < n - 1 ? v.mv_size : n - 1;
        memcpy(buf, v.mv_data, m);
        buf[m] = 0;
    }
    return AMDIM_OK;
}

int amdim_dataset_meta_each(amdim_dataset *ds, void (*fn)(const char *, const char *, void *), void *ctx)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(ds->txn, ds->meta, &cur);
    if (rc)
        return lmdb_fail(ds, "mdb_cursor_open", rc);
    MDB_val k, v;
    char *kb = NULL, *vb = NULL;
    int st = AMDIM_OK;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        char *nk = realloc(kb, k.mv_size + 1), *nv;
        if (nk)
            kb = nk;
        nv = nk ? realloc(vb, v.mv_size + 1) : NULL;
        if (!nv) {
            st = amdim_fail(ds->err, sizeof ds->err, AMDIM_E_NOMEM, "out of memory");
            break;
        }
        vb = nv;
        memcpy(kb, k.mv_data, k.mv_size);
        kb[k.mv_size] = 0;
        memcpy(vb, v.mv_data, v.mv_size);
        vb[v.mv_size] = 0;
        fn(kb, vb, ctx);
    }
    mdb_cursor_close(cur);
    free(kb);
    free(vb);
    return st;
}

static int split_dbi(amdim_dataset *ds, const char *split, MDB_dbi *dbi)
{
    for (int i = 0; i < ds->nsplits; i++) {
        split_entry *e = &ds->splits[i];
        if (strcmp(e->name, split) != 0)
            continue;
        if (!e->opened) {
            int rc = mdb_dbi_open(ds->txn, e->name, 0, &e->dbi);
            if (rc)
                return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_CORRUPT,
                                  "%s: split %s is listed in meta but its database cannot be opened: %s",
                                  ds->path, split, mdb_strerror(rc));
            e->opened = 1;
        }
        *dbi = e->dbi;
        return AMDIM_OK;
    }
    return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_NOT_FOUND, "%s has no split named %s",
                      ds->path, split);
}

static int meta_u64(amdim_dataset *ds, const char *split, const char *field, uint64_t *v)
{
    char key[96], buf[64];
    snprintf(key, sizeof key, "%s.%s", split, field);
    int st = amdim_dataset_meta(ds, key, buf, sizeof buf);
    if (st)
        return st;
    *v = strtoull(buf, NULL, 10);
    return AMDIM_OK;
}

static void meta_vec3(amdim_dataset *ds, const char *split, const char *field, double v[3])
{
    char key[96], buf[128];
    snprintf(key, sizeof key, "%s.%s", split, field);
    v[0] = v[1] = v[2] = NAN;
    if (amdim_dataset_meta(ds, key, buf, sizeof buf) == 0)
        sscanf(buf, "%lf %lf %lf", &v[0], &v[1], &v[2]);
}

int amdim_dataset_split_info(amdim_dataset *ds, const char *split, amdim_split_info *info)
{
    MDB_dbi dbi;
    int st = split_dbi(ds, split, &dbi);
    if (st)
        return st;
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", split);
    uint64_t v = 0;
    if ((st = meta_u64(ds, split, "records", &info->records)))
        return st;
    if (meta_u64(ds, split, "classes", &v) == 0)
        info->classes = (int32_t)v;
    if (meta_u64(ds, split, "skipped", &v) == 0)
        info->skipped = v;
    if (meta_u64(ds, split, "channels", &v) == 0)
        info->channels = (int)v;
    if (meta_u64(ds, split, "width", &v) == 0)
        info->width = (uint32_t)v;
    if (meta_u64(ds, split, "height", &v) == 0)
        info->height = (uint32_t)v;
    char key[96], buf[32];
    snprintf(key, sizeof key, "%s.encoding", split);
    info->encoding = -1;
    if (amdim_dataset_meta(ds, key, buf, sizeof buf) == 0)
        info->encoding = strcmp(buf, "raw") == 0 ? AMDIM_ENCODING_RAW : strcmp(buf, "jpeg") == 0 ? AMDIM_ENCODING_JPEG : -1;
    meta_vec3(ds, split, "mean", info->mean);
    meta_vec3(ds, split, "std", info->std);
    /* The meta count must agree with the database itself. */
    MDB_stat ms;
    int rc = mdb_stat(ds->txn, dbi, &ms);
    if (rc)
        return lmdb_fail(ds, "mdb_stat", rc);
    if (ms.ms_entries != info->records)
        return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_CORRUPT,
                          "%s: split %s holds %zu records but its meta says %llu", ds->path, split,
                          ms.ms_entries, (unsigned long long)info->records);
    /* The meta's one image size and encoding choose the preset: they must be
     * the records' own (checked on the first record). */
    if (info->records > 0 && (info->width || info->encoding >= 0)) {
        amdim_record r;
        if ((st = amdim_dataset_get(ds, split, 0, &r)))
            return st;
        if ((info->width && (r.width != info->width || r.height != info->height)) ||
            (info->encoding >= 0 && (int)r.encoding != info->encoding))
            return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_CORRUPT,
                              "%s: split %s's meta says %ux%u %s images, but record 0 is %ux%u %s", ds->path, split,
                              info->width, info->height, info->encoding == AMDIM_ENCODING_RAW ? "raw" : "jpeg",
                              r.width, r.height, r.encoding == AMDIM_ENCODING_RAW ? "raw" : "jpeg");
    }
    return AMDIM_OK;
}

int amdim_dataset_locate(amdim_dataset *ds, const char *split, uint64_t index, const void **value,
                         size_t *len, uint64_t *file_offset)
{
    MDB_dbi dbi;
    int st = split_dbi(ds, split, &dbi);
    if (st)
        return st;
    uint8_t kb[8];
    for (int i = 0; i < 8; i++)
        kb[i] = (uint8_t)(index >> (56 - 8 * i));
    MDB_val k = {8, kb}, v;
    int rc = mdb_get(ds->txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND)
        return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_NOT_FOUND, "%s: split %s has no record %llu",
                          ds->path, split, (unsigned long long)index);
    if (rc)
        return lmdb_fail(ds, "mdb_get", rc);
    *value = v.mv_data;
    *len = v.mv_size;
    if (file_offset)
        *file_offset = (uint64_t)((const uint8_t *)v.mv_data - ds->map_base);
    return AMDIM_OK;
}

int amdim_dataset_get(amdim_dataset *ds, const char *split, uint64_t index, amdim_record *rec)
{
    const void *val = NULL; /* set on success; initialised for -O3's -Wmaybe-uninitialized */
    size_t len = 0;
    int st = amdim_dataset_locate(ds, split, index, &val, &len, NULL);
    if (st)
        return st;
    char why[256];
    st = amdim_record_decode(val, len, rec, why, sizeof why);
    if (st)
        return amdim_fail(ds->err, sizeof ds->err, st, "%s: split %s record %llu: %s", ds->path,
                          split, (unsigned long long)index, why);
    return AMDIM_OK;
}

int amdim_dataset_index(amdim_dataset *ds, const char *split, uint64_t **offsets, uint32_t **lengths,
                        uint64_t *count)
{
    *offsets = NULL;
    *lengths = NULL;
    *count = 0;
    amdim_split_info info;
    int st = amdim_dataset_split_info(ds, split, &info);
    if (st)
        return st;
    MDB_dbi dbi;
    if ((st = split_dbi(ds, split, &dbi)))
        return st;
    struct stat sb;
    if (stat(ds->path, &sb) != 0)
        return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_IO, "stat %s: %s", ds->path, strerror(errno));
    if (!ds->map_base)
        return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_IO, "%s: cannot find where LMDB mapped the file", ds->path);
    uint64_t *off = malloc((info.records ? info.records : 1) * sizeof *off);
    uint32_t *len = malloc((info.records ? info.records : 1) * sizeof *len);
    if (!off || !len) {
        free(off);
        free(len);
        return amdim_fail(ds->err, sizeof ds->err, AMDIM_E_NOMEM, "out of memory for the index of %llu records",
                          (unsigned long long)info.records);
    }
    MDB_cursor *cur;
    int rc = mdb_cursor_open(ds->txn, dbi, &cur);
    if (rc) {
        free(off);
        free(len);
        return lmdb_fail(ds, "mdb_cursor_open", rc);
    }
    MDB_val k, v;
    uint64_t i = 0;
    st = AMDIM_OK;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && st == AMDIM_OK;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT), i++) {
        uint64_t key = 0;
        if (k.mv_size == 8)
            for (int b = 0; b < 8; b++)
                key = key << 8 | ((const uint8_t *)k.mv_data)[b];
        uint64_t o = (uint64_t)((const uint8_t *)v.mv_data - ds->map_base);
        if (k.mv_size != 8 || key != i || i >= info.records)
            st = amdim_fail(ds->err, sizeof ds->err, AMDIM_E_CORRUPT, "%s: split %s: record %llu has key %llu (keys must be 0..%llu)",
                            ds->path, split, (unsigned long long)i, (unsigned long long)key,
                            (unsigned long long)info.records - 1);
        else if (v.mv_size > UINT32_MAX || o + v.mv_size > (uint64_t)sb.st_size)
            st = amdim_fail(ds->err, sizeof ds->err, AMDIM_E_CORRUPT, "%s: split %s: record %llu lies outside the file",
                            ds->path, split, (unsigned long long)i);
        else {
            off[i] = o;
            len[i] = (uint32_t)v.mv_size;
        }
    }
    mdb_cursor_close(cur);
    if (st == AMDIM_OK && i != info.records)
        st = amdim_fail(ds->err, sizeof ds->err, AMDIM_E_CORRUPT, "%s: split %s holds %llu records, its meta says %llu",
                        ds->path, split, (unsigned long long)i, (unsigned long long)info.records);
    if (st) {
        free(off);
        free(len);
        return st;
    }
    *offsets = off;
    *lengths = len;
    *count = i;
    return AMDIM_OK;
}
