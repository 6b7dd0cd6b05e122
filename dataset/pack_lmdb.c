/* The packer's LMDB writer: the environment (opened on the temporary file or
 * on the existing dataset), the split's databases, the records of each
 * window and the metadata, every write transaction committed through one
 * helper that grows the map when it is full. */
#include "pack_internal.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "amdim_dataset.h"

#define INITIAL_MAP_BYTES (256ull << 20)

/* Bytes free for us on the file system holding path; UINT64_MAX if unknown. */
static uint64_t free_bytes(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + 1 : 1, slash ? path : ".");
    struct statvfs vs;
    return statvfs(dir, &vs) == 0 ? (uint64_t)vs.f_bavail * vs.f_frsize : UINT64_MAX;
}

/* Turns LMDB's rc from call `what` into a status with a message naming the
 * file being written. */
static int lmdb_err(amdim_packer *pk, const char *what, int rc)
{
    const char *file = pk->in_place ? pk->opt->out : pk->tmp_path;
    /* LMDB turns a short write into EIO: on a full disk, say so. */
    if (rc == ENOSPC || (rc == EIO && free_bytes(file) < (1u << 20)))
        return amdim_fail(pk->err, pk->errlen, AMDIM_E_IO, "%s(): %s (writing %s; %llu bytes free there)", what,
                          strerror(ENOSPC), file, (unsigned long long)free_bytes(file));
    return amdim_fail(pk->err, pk->errlen, rc == EIO ? AMDIM_E_IO : AMDIM_E_LMDB, "%s(): %s (writing %s)", what,
                      mdb_strerror(rc), file);
}

int amdim_pack_env_open(amdim_packer *pk, const char *path, uint64_t existing_bytes)
{
    size_t mapsize = INITIAL_MAP_BYTES;
    while (mapsize < existing_bytes * 2)
        mapsize *= 2;
    int rc;
    if ((rc = mdb_env_create(&pk->env)) || (rc = mdb_env_set_maxdbs(pk->env, 256)) ||
        (rc = mdb_env_set_mapsize(pk->env, mapsize)))
        return lmdb_err(pk, "mdb_env_create", rc);
    /* NOLOCK: no lock file; concurrent writers are excluded with flock().
     * NOMETASYNC: data pages are synced at each commit, the meta page at the
     * next one, which keeps an existing dataset intact across a crash. */
    rc = mdb_env_open(pk->env, path, MDB_NOSUBDIR | MDB_NOLOCK | MDB_NOMETASYNC, 0644);
    if (rc)
        return lmdb_err(pk, "mdb_env_open", rc);
    pk->mapsize = mapsize;
    return AMDIM_OK;
}

int amdim_pack_env_sync_close(amdim_packer *pk)
{
    int rc = mdb_env_sync(pk->env, 1);
    if (rc)
        return lmdb_err(pk, "mdb_env_sync", rc);
    mdb_env_close(pk->env);
    pk->env = NULL;
    return AMDIM_OK;
}

/* ---- committing ---------------------------------------------------------- */

/* Puts a transaction's writes; returns 0 or an LMDB (or errno) code. */
typedef int (*txn_fill)(amdim_packer *pk, MDB_txn *txn, void *arg);

/* Runs fill in a write transaction and commits it. When the map is full
 * (in a put or at the commit) the transaction is aborted, the map doubled
 * and fill run again in a new one, so fill must depend only on its
 * arguments. Any other failure is reported as `what`. */
static int commit_or_grow(amdim_packer *pk, const char *what, txn_fill fill, void *arg)
{
    for (;;) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(pk->env, NULL, 0, &txn);
        if (rc)
            return lmdb_err(pk, "mdb_txn_begin", rc);
        rc = fill(pk, txn, arg);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc != MDB_MAP_FULL)
            return rc ? lmdb_err(pk, what, rc) : AMDIM_OK;
        size_t next = pk->mapsize * 2;
        if ((rc = mdb_env_set_mapsize(pk->env, next)))
            return lmdb_err(pk, "mdb_env_set_mapsize", rc);
        pk->mapsize = next;
    }
}

/* ---- the split's databases ----------------------------------------------- */

/* Removes split `name` (records and meta keys) in one transaction. */
static int drop_split(amdim_packer *pk, const char *name)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(pk->env, NULL, 0, &txn);
    if (rc)
        return lmdb_err(pk, "mdb_txn_begin", rc);
    MDB_dbi dbi;
    rc = mdb_dbi_open(txn, name, 0, &dbi);
    if (rc == 0)
        rc = mdb_drop(txn, dbi, 1);
    else if (rc == MDB_NOTFOUND)
        rc = 0;
    MDB_cursor *cur = NULL;
    if (rc == 0)
        rc = mdb_cursor_open(txn, pk->meta, &cur);
    size_t nl = strlen(name);
    MDB_val k, v;
    int crc = rc ? rc : mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    while (rc == 0 && crc == 0) {
        if (k.mv_size > nl && memcmp(k.mv_data, name, nl) == 0 && ((char *)k.mv_data)[nl] == '.')
            rc = mdb_cursor_del(cur, 0);
        if (rc == 0)
            crc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (cur)
        mdb_cursor_close(cur);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    return rc ? lmdb_err(pk, "dropping split", rc) : AMDIM_OK;
}

void amdim_pack_env_close(amdim_packer *pk, int failed)
{
    if (!pk->env)
        return;
    if (failed && pk->in_place && pk->owns_split) {
        /* Leave no half-written split behind in an existing dataset (never
         * one this pack did not start writing). Best effort: the message
         * stays the failure's own. */
        char *err = pk->err, scratch[512];
        size_t errlen = pk->errlen;
        pk->err = scratch;
        pk->errlen = sizeof scratch;
        drop_split(pk, pk->opt->split);
        pk->err = err;
        pk->errlen = errlen;
    }
    mdb_env_close(pk->env);
    pk->env = NULL;
}

int amdim_pack_open_dbs(amdim_packer *pk, int exists_complete)
{
    const char *sp = pk->opt->split;
    MDB_txn *txn;
    int rc = mdb_txn_begin(pk->env, NULL, 0, &txn);
    if (rc)
        return lmdb_err(pk, "mdb_txn_begin", rc);
    rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &pk->meta);
    /* Checked again under the lock: another pack may have completed this
     * split since the caller looked. */
    char key[AMDIM_SPLIT_NAME_MAX + 16];
    snprintf(key, sizeof key, "%s.records", sp);
    MDB_val k = {strlen(key), key}, v;
    if (rc == 0 && !exists_complete && mdb_get(txn, pk->meta, &k, &v) == 0) {
        mdb_txn_abort(txn);
        if (!pk->opt->force)
            return amdim_fail(pk->err, pk->errlen, AMDIM_E_EXISTS,
                              "%s already holds split %s, completed by another pack while this one started "
                              "(use --force to replace it)",
                              pk->opt->out, sp);
        exists_complete = 1;
        if ((rc = mdb_txn_begin(pk->env, NULL, 0, &txn)))
            return lmdb_err(pk, "mdb_txn_begin", rc);
        rc = mdb_dbi_open(txn, "meta", 0, &pk->meta);
    }
    MDB_dbi old;
    int leftover = rc == 0 && mdb_dbi_open(txn, sp, 0, &old) == 0;
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc)
        return lmdb_err(pk, "opening the meta database", rc);
    if (leftover) {
        if (exists_complete)
            amdim_pack_note(pk, "replacing split %s of %s (--force)", sp, pk->opt->out);
        else
            amdim_pack_note(pk, "clearing the half-written split %s left in %s by an interrupted pack", sp,
                            pk->opt->out);
        AMDIM_TRY(drop_split(pk, sp));
    }
    if ((rc = mdb_txn_begin(pk->env, NULL, 0, &txn)))
        return lmdb_err(pk, "mdb_txn_begin", rc);
    rc = mdb_dbi_open(txn, sp, MDB_CREATE, &pk->dbi);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    pk->owns_split = 1;
    return rc ? lmdb_err(pk, "creating the split database", rc) : AMDIM_OK;
}

/* ---- records ------------------------------------------------------------- */

typedef struct {
    const amdim_pack_slot *slots;
    int n;
    uint64_t next_key; /* after the window, once committed */
} window_txn;

/* Keys are 8-byte big-endian record numbers, so MDB_APPEND keeps them in
 * order. */
static int put_window(amdim_packer *pk, MDB_txn *txn, void *arg)
{
    window_txn *w = arg;
    uint64_t key = pk->next_key;
    int rc = 0;
    for (int i = 0; i < w->n && rc == 0; i++) {
        if (w->slots[i].skip)
            continue;
        uint8_t kb[8];
        for (int b = 0; b < 8; b++)
            kb[b] = (uint8_t)(key >> (56 - 8 * b));
        MDB_val k = {8, kb}, v = {w->slots[i].rec_len, w->slots[i].rec};
        rc = mdb_put(txn, pk->dbi, &k, &v, MDB_APPEND);
        key++;
    }
    w->next_key = key;
    return rc;
}

int amdim_pack_write_window(amdim_packer *pk, const amdim_pack_slot *slots, int n)
{
    window_txn w = {slots, n, 0};
    AMDIM_TRY(commit_or_grow(pk, "mdb_put/mdb_txn_commit", put_window, &w));
    pk->next_key = w.next_key;
    return AMDIM_OK;
}

/* ---- metadata ------------------------------------------------------------ */

static int meta_put(amdim_packer *pk, MDB_txn *txn, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Returns 0 or an LMDB (or errno) code, like mdb_put. */
static int meta_put(amdim_packer *pk, MDB_txn *txn, const char *key, const char *fmt, ...)
{
    char stack[1024], *val = stack;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(stack, sizeof stack, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof stack) {
        if (!(val = malloc((size_t)n + 1)))
            return ENOMEM;
        va_start(ap, fmt);
        vsnprintf(val, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    MDB_val k = {strlen(key), (void *)key}, v = {(size_t)n, val};
    int rc = mdb_put(txn, pk->meta, &k, &v, 0);
    if (val != stack)
        free(val);
    return rc;
}

typedef struct {
    int new_file;
    const char *class_names; /* joined with newlines, or NULL */
} meta_txn;

/* The split's statistics, if every record has them: "mean" and "std" per
 * channel. */
static int put_stats(amdim_packer *pk, MDB_txn *txn, char *key, size_t keylen)
{
    const char *sp = pk->opt->split;
    double m[3] = {0}, s[3] = {0};
    for (int c = 0; c < pk->channels; c++) {
        m[c] = (double)pk->csum[c] / (double)pk->cnpix;
        double var = (double)pk->csumsq[c] / (double)pk->cnpix - m[c] * m[c];
        s[c] = sqrt(var > 0 ? var : 0);
    }
    int rc;
    snprintf(key, keylen, "%s.mean", sp);
    if (pk->channels == 1)
        rc = meta_put(pk, txn, key, "%.4f", m[0]);
    else
        rc = meta_put(pk, txn, key, "%.4f %.4f %.4f", m[0], m[1], m[2]);
    if (rc)
        return rc;
    snprintf(key, keylen, "%s.std", sp);
    if (pk->channels == 1)
        return meta_put(pk, txn, key, "%.4f", s[0]);
    return meta_put(pk, txn, key, "%.4f %.4f %.4f", s[0], s[1], s[2]);
}

/* Every meta key, in the order of the original writer; "<split>.records"
 * last. */
static int put_meta(amdim_packer *pk, MDB_txn *txn, void *arg)
{
    const meta_txn *mt = arg;
    const amdim_pack_options *opt = pk->opt;
    const char *sp = opt->split;
    const amdim_pack_summary *sum = pk->sum;
    char key[128];
    int rc = 0;
#define PUT(field, ...)                                \
    do {                                               \
        snprintf(key, sizeof key, "%s.%s", sp, field); \
        if (rc == 0)                                   \
            rc = meta_put(pk, txn, key, __VA_ARGS__);  \
    } while (0)
    if (mt->new_file) {
        rc = meta_put(pk, txn, "format_version", "%d", AMDIM_DATASET_FORMAT_VERSION);
        if (rc == 0)
            rc = meta_put(pk, txn, "created_by", "amdim-pack");
    }
    PUT("classes", "%d", pk->src.nclasses);
    if (mt->class_names)
        PUT("class_names", "%s", mt->class_names);
    PUT("skipped", "%llu", (unsigned long long)sum->skipped);
    for (int r = 0; r < AMDIM_SKIP_REASONS; r++)
        if (sum->skipped_by[r]) {
            char f[64];
            snprintf(f, sizeof f, "skipped.%s", amdim_skip_reason_name((amdim_skip_reason)r));
            PUT(f, "%llu", (unsigned long long)sum->skipped_by[r]);
        }
    PUT("warnings", "%llu", (unsigned long long)sum->warnings);
    PUT("converted", "%llu", (unsigned long long)sum->converted);
    PUT("source_format", "%s", amdim_pack_format_name(opt->format));
    PUT("source", "%s", opt->src);
    PUT("channels", "%d", pk->channels);
    PUT("width", "%u", pk->width);
    PUT("height", "%u", pk->height);
    PUT("encoding", "%s",
        pk->encoding == AMDIM_ENCODING_RAW    ? "raw"
        : pk->encoding == AMDIM_ENCODING_JPEG ? "jpeg"
                                              : "mixed");
    PUT("bytes", "%llu", (unsigned long long)sum->bytes_out);
    if (rc == 0 && pk->stats_complete && pk->cnpix && pk->channels)
        rc = put_stats(pk, txn, key, sizeof key);
    PUT("options", "verify=%d max_side=%d quality=%d max_pixels=%llu%s", !opt->no_verify, opt->max_side, opt->quality,
        (unsigned long long)pk->max_pixels,
        opt->format == AMDIM_PACK_CIFAR100 ? (opt->cifar100_coarse ? " label=coarse" : " label=fine") : "");
    /* Written last: its presence is what makes the split visible. */
    PUT("records", "%llu", (unsigned long long)sum->records);
#undef PUT
    return rc;
}

/* The class names joined with newlines (malloc'd), or NULL when memory runs
 * out. */
static char *join_class_names(const amdim_pack_source *src)
{
    size_t len = 0;
    for (int32_t i = 0; i < src->nclasses; i++)
        len += strlen(src->class_names[i]) + 1;
    char *names = malloc(len + 1), *p = names;
    if (!names)
        return NULL;
    for (int32_t i = 0; i < src->nclasses; i++)
        p += sprintf(p, "%s%s", i ? "\n" : "", src->class_names[i]);
    return names;
}

int amdim_pack_write_meta(amdim_packer *pk, int new_file)
{
    meta_txn mt = {new_file, NULL};
    char *names = NULL;
    if (pk->src.class_names && !(mt.class_names = names = join_class_names(&pk->src)))
        return amdim_fail(pk->err, pk->errlen, AMDIM_E_NOMEM, "out of memory");
    int st = commit_or_grow(pk, "writing meta", put_meta, &mt);
    free(names);
    return st;
}
