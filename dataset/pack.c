/* The packer: a pool of threads verifies and converts items window by
 * window while the calling thread writes the previous window to LMDB in
 * source order, so the output does not depend on the thread count. */
#include "amdim_pack.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "amdim_dataset.h"
#include "amdim_image.h"
#include "pack_source_internal.h"

#define DEFAULT_MAX_PIXELS 89478485ull /* PIL's decompression-bomb limit */
#define DEFAULT_WINDOW 512
#define MAX_FILE_BYTES (1ull << 30)
#define CONVERT_QUALITY 95
#define INITIAL_MAP_BYTES (256ull << 20)

static const char *format_names[] = {"imagefolder", "list", "cifar10", "cifar100", "stl10", "idx"};
static const char *skip_names[] = {"unreadable", "empty", "truncated", "corrupt", "unsupported", "too_large"};

int amdim_pack_format_parse(const char *s, amdim_pack_format *f)
{
    for (int i = 0; i < (int)(sizeof format_names / sizeof *format_names); i++)
        if (strcmp(s, format_names[i]) == 0) {
            *f = (amdim_pack_format)i;
            return AMDIM_OK;
        }
    return AMDIM_E_INVALID;
}

const char *amdim_pack_format_name(amdim_pack_format f)
{
    return (unsigned)f < sizeof format_names / sizeof *format_names ? format_names[f] : "?";
}

const char *amdim_skip_reason_name(amdim_skip_reason r)
{
    return (unsigned)r < AMDIM_SKIP_REASONS ? skip_names[r] : "?";
}

/* One item's result, filled by a worker and consumed by the writer. */
typedef struct {
    uint64_t item;
    int skip;     /* 1: left out, reason below */
    amdim_skip_reason reason;
    int fatal;    /* the whole run must stop: detail says why */
    int warning, converted, resized, reencoded;
    char detail[320];
    uint8_t *rec; /* encoded record */
    size_t rec_len, rec_cap;
    int has_stats;
    uint64_t sum[3], sumsq[3], npix;
    uint32_t width, height;
    uint8_t channels, encoding;
    uint64_t bytes_in;
} slot;

typedef struct {
    amdim_codec *codec;
    amdim_image img, small;
    amdim_scratch scratch;
    uint8_t *file;
    size_t file_cap;
    uint8_t *raw, *px;
} worker_state;

typedef struct packer packer;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    int nthreads, started, finished, stop;
    uint64_t generation;
    pthread_t *tid;
    worker_state *ws;
    slot *slots;
    int nslots;
    atomic_int next;
    packer *pk;
} pool;

struct packer {
    const amdim_pack_options *opt;
    int owns_split; /* open_dbs made the split ours: a failure drops it */
    amdim_pack_source src;
    uint64_t max_pixels;
    /* output */
    char tmp_path[4200], report_tmp[4300];
    int in_place, out_fd;
    MDB_env *env;
    MDB_dbi dbi, meta;
    size_t mapsize;
    FILE *report;
    /* accounting, in source order */
    uint64_t next_key;
    amdim_pack_summary *sum;
    uint64_t csum[3], csumsq[3], cnpix;
    int stats_complete;
    int shape_set, channels;
    uint32_t width, height;
    int encoding; /* -1 mixed */
    char *err;
    size_t errlen;
};

/* ---- item processing (worker threads) ----------------------------------- */

static int skip_from_status(int st, amdim_skip_reason *r)
{
    switch (st) {
    case AMDIM_E_EMPTY: *r = AMDIM_SKIP_EMPTY; return 1;
    case AMDIM_E_TRUNCATED: *r = AMDIM_SKIP_TRUNCATED; return 1;
    case AMDIM_E_CORRUPT: *r = AMDIM_SKIP_CORRUPT; return 1;
    case AMDIM_E_UNSUPPORTED: *r = AMDIM_SKIP_UNSUPPORTED; return 1;
    case AMDIM_E_TOO_LARGE: *r = AMDIM_SKIP_TOO_LARGE; return 1;
    default: return 0;
    }
}

static void skip_slot(slot *s, amdim_skip_reason r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void skip_slot(slot *s, amdim_skip_reason r, const char *fmt, ...)
{
    s->skip = 1;
    s->reason = r;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->detail, sizeof s->detail, fmt, ap);
    va_end(ap);
}

static int slot_record(slot *s, const amdim_record *rec)
{
    size_t need = AMDIM_RECORD_HEADER_SIZE + rec->payload_size;
    if (need > s->rec_cap) {
        uint8_t *p = realloc(s->rec, need);
        if (!p) {
            s->fatal = 1;
            snprintf(s->detail, sizeof s->detail, "out of memory");
            return AMDIM_E_NOMEM;
        }
        s->rec = p;
        s->rec_cap = need;
    }
    int st = amdim_record_encode(rec, s->rec, s->rec_cap, &s->rec_len);
    if (st) {
        s->fatal = 1;
        snprintf(s->detail, sizeof s->detail, "cannot encode record: %s", amdim_strerror(st));
    }
    s->width = rec->width;
    s->height = rec->height;
    s->channels = rec->channels;
    s->encoding = rec->encoding;
    return st;
}

/* Per-channel sums of values and squares, exact in integers (so the
 * dataset statistics do not depend on the thread count). The interleaved
 * bytes are summed in blocks of 48 (a multiple of the channel count and of
 * the vector width) into per-position 32-bit lanes that the compiler can
 * vectorise; lanes are folded into 64-bit channel totals before they could
 * overflow. */
#define STAT_BLOCK 48
#define STAT_FLUSH 4096 /* blocks; 4096 * 255^2 < 2^32 */
static void slot_stats(slot *s, const uint8_t *px, size_t npix, int channels)
{
    size_t n = npix * (size_t)channels;
    uint64_t sum[3] = {0}, sq[3] = {0};
    size_t i = 0;
    while (n - i >= STAT_BLOCK) {
        uint32_t a[STAT_BLOCK] = {0}, b[STAT_BLOCK] = {0};
        for (size_t blk = 0; blk < STAT_FLUSH && n - i >= STAT_BLOCK; blk++, i += STAT_BLOCK)
            for (int j = 0; j < STAT_BLOCK; j++) {
                uint32_t v = px[i + (size_t)j];
                a[j] += v;
                b[j] += v * v;
            }
        for (int j = 0; j < STAT_BLOCK; j++) {
            sum[j % channels] += a[j];
            sq[j % channels] += b[j];
        }
    }
    for (; i < n; i++) { /* the tail, which starts on a pixel boundary */
        uint64_t v = px[i];
        sum[i % (size_t)channels] += v;
        sq[i % (size_t)channels] += v * v;
    }
    s->has_stats = 1;
    s->npix = npix;
    for (int c = 0; c < channels; c++) {
        s->sum[c] = sum[c];
        s->sumsq[c] = sq[c];
    }
}

/* Reads a whole file into ws->file. Returns its size, or -1 with the slot
 * marked skipped. */
static ssize_t read_file(worker_state *ws, slot *s, const char *path)
{
    /* O_NONBLOCK: a FIFO in the tree must not hang the pack. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        skip_slot(s, AMDIM_SKIP_UNREADABLE, "open(): %s", strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        skip_slot(s, AMDIM_SKIP_UNREADABLE, "not a regular file");
        close(fd);
        return -1;
    }
    if ((uint64_t)sb.st_size > MAX_FILE_BYTES) {
        skip_slot(s, AMDIM_SKIP_TOO_LARGE, "file is %lld bytes, over the %llu-byte limit",
                  (long long)sb.st_size, MAX_FILE_BYTES);
        close(fd);
        return -1;
    }
    size_t size = (size_t)sb.st_size;
    if (size + 1 > ws->file_cap) {
        uint8_t *p = realloc(ws->file, size + 1);
        if (!p) {
            s->fatal = 1;
            snprintf(s->detail, sizeof s->detail, "out of memory reading %s", path);
            close(fd);
            return -1;
        }
        ws->file = p;
        ws->file_cap = size + 1;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, ws->file + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            skip_slot(s, AMDIM_SKIP_UNREADABLE, "read(): %s", r < 0 ? strerror(errno) : "file shrank while reading");
            close(fd);
            return -1;
        }
        got += (size_t)r;
    }
    close(fd);
    return (ssize_t)size;
}

static void process_file(packer *pk, worker_state *ws, slot *s)
{
    const amdim_pack_options *opt = pk->opt;
    const char *path = pk->src.arena + pk->src.path_off[s->item];
    ssize_t n = read_file(ws, s, path);
    if (n < 0)
        return;
    s->bytes_in = (uint64_t)n;
    const uint8_t *data = ws->file;
    amdim_image_format fmt;
    int w, h, c;
    int st = amdim_codec_probe(ws->codec, data, (size_t)n, &fmt, &w, &h, &c);
    amdim_skip_reason why;
    if (st) {
        if (skip_from_status(st, &why))
            skip_slot(s, why, "%s", amdim_codec_error(ws->codec));
        else {
            s->fatal = 1;
            snprintf(s->detail, sizeof s->detail, "%s: %s", path, amdim_codec_error(ws->codec));
        }
        return;
    }
    if ((uint64_t)w * (uint64_t)h > pk->max_pixels) {
        skip_slot(s, AMDIM_SKIP_TOO_LARGE, "%dx%d = %llu pixels exceeds the limit of %llu", w, h,
                  (unsigned long long)w * h, (unsigned long long)pk->max_pixels);
        return;
    }
    int convert = fmt != AMDIM_FORMAT_JPEG || c != 3;
    int shrink = opt->max_side > 0 && (w > opt->max_side || h > opt->max_side);
    int reencode = convert || shrink || opt->quality > 0;
    int decoded = 0;
    amdim_image *pix = &ws->img;
    if (reencode || !opt->no_verify) {
        amdim_decode_info info;
        st = amdim_codec_decode_rgb(ws->codec, data, (size_t)n, pk->max_pixels, &ws->img, &info);
        if (st) {
            if (skip_from_status(st, &why))
                skip_slot(s, why, "%s", amdim_codec_error(ws->codec));
            else {
                s->fatal = 1;
                snprintf(s->detail, sizeof s->detail, "%s: %s", path, amdim_codec_error(ws->codec));
            }
            return;
        }
        decoded = 1;
        if (info.warning) {
            s->warning = 1;
            snprintf(s->detail, sizeof s->detail, "%s", info.warning_text);
        }
        if (convert) {
            s->converted = 1;
            if (!s->warning)
                snprintf(s->detail, sizeof s->detail, "%s%s -> RGB JPEG",
                         info.is_cmyk ? "CMYK " : c == 1 ? "greyscale " : "",
                         amdim_image_format_name(fmt));
        }
    }
    if (shrink) {
        double scale = (double)opt->max_side / (w > h ? w : h);
        int nw = (int)lround(w * scale), nh = (int)lround(h * scale);
        nw = nw < 1 ? 1 : nw;
        nh = nh < 1 ? 1 : nh;
        if (amdim_image_reserve(&ws->small, nw, nh, 3) ||
            amdim_resize_bicubic(ws->img.pixels, w, h, 3, 0, 0, w, h, ws->small.pixels, nw, nh, &ws->scratch)) {
            s->fatal = 1;
            snprintf(s->detail, sizeof s->detail, "out of memory resizing %s", path);
            return;
        }
        pix = &ws->small;
        s->resized = 1;
    }
    amdim_record rec = {.label = pk->src.labels[s->item], .aux_label = -1, .source_index = s->item,
                        .channels = 3, .encoding = AMDIM_ENCODING_JPEG};
    if (reencode) {
        const uint8_t *jpeg;
        size_t jlen;
        int q = opt->quality > 0 ? opt->quality : CONVERT_QUALITY;
        st = amdim_codec_encode_jpeg(ws->codec, pix->pixels, pix->width, pix->height, 3, q, &jpeg, &jlen);
        if (st) {
            s->fatal = 1;
            snprintf(s->detail, sizeof s->detail, "%s: %s", path, amdim_codec_error(ws->codec));
            return;
        }
        s->reencoded = 1;
        rec.payload = jpeg;
        rec.payload_size = (uint32_t)jlen;
        rec.width = (uint32_t)pix->width;
        rec.height = (uint32_t)pix->height;
    } else {
        rec.payload = data;
        rec.payload_size = (uint32_t)n;
        rec.width = (uint32_t)w;
        rec.height = (uint32_t)h;
    }
    if (decoded)
        slot_stats(s, pix->pixels, (size_t)pix->width * pix->height, 3);
    slot_record(s, &rec);
}

static void process_raw(packer *pk, worker_state *ws, slot *s)
{
    amdim_pack_source *src = &pk->src;
    int32_t label, aux;
    int st = amdim_pack_source_read_raw(src, pk->opt->format, pk->opt->cifar100_coarse, s->item, ws->raw,
                                  ws->px, &label, &aux, s->detail, sizeof s->detail);
    if (st) {
        s->fatal = 1;
        return;
    }
    size_t npix = (size_t)src->width * src->height;
    s->bytes_in = src->record_bytes;
    slot_stats(s, ws->px, npix, (int)src->channels);
    amdim_record rec = {.label = label, .aux_label = aux, .source_index = s->item,
                        .width = src->width, .height = src->height,
                        .channels = (uint8_t)src->channels, .encoding = AMDIM_ENCODING_RAW,
                        .payload = ws->px, .payload_size = (uint32_t)(npix * src->channels)};
    slot_record(s, &rec);
}

static void process_slot(packer *pk, worker_state *ws, slot *s)
{
    s->skip = s->fatal = s->warning = s->converted = s->resized = s->reencoded = s->has_stats = 0;
    s->detail[0] = 0;
    s->rec_len = 0;
    s->bytes_in = 0;
    if (pk->opt->cancel && *pk->opt->cancel)
        return;
    if (pk->src.is_raw)
        process_raw(pk, ws, s);
    else
        process_file(pk, ws, s);
}

/* ---- thread pool -------------------------------------------------------- */

static void *worker_main(void *arg)
{
    void **a = arg;
    pool *p = a[0];
    worker_state *ws = a[1];
    free(arg);
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->stop && p->generation == seen)
            pthread_cond_wait(&p->go, &p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->generation;
        slot *slots = p->slots;
        int nslots = p->nslots;
        pthread_mutex_unlock(&p->mu);
        for (;;) {
            int i = atomic_fetch_add(&p->next, 1);
            if (i >= nslots)
                break;
            process_slot(p->pk, ws, &slots[i]);
        }
        pthread_mutex_lock(&p->mu);
        if (++p->finished == p->nthreads)
            pthread_cond_signal(&p->done);
        pthread_mutex_unlock(&p->mu);
    }
}

static void pool_start(pool *p, slot *slots, int n)
{
    pthread_mutex_lock(&p->mu);
    p->slots = slots;
    p->nslots = n;
    atomic_store(&p->next, 0);
    p->finished = 0;
    p->generation++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
}

static void pool_wait(pool *p)
{
    pthread_mutex_lock(&p->mu);
    while (p->finished < p->nthreads)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void worker_state_free(worker_state *ws)
{
    amdim_codec_destroy(ws->codec);
    amdim_image_free(&ws->img);
    amdim_image_free(&ws->small);
    amdim_scratch_free(&ws->scratch);
    free(ws->file);
    free(ws->raw);
    free(ws->px);
}

static int pool_create(pool *p, packer *pk, int nthreads)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->pk = pk;
    p->tid = calloc((size_t)nthreads, sizeof *p->tid);
    p->ws = calloc((size_t)nthreads, sizeof *p->ws);
    if (!p->tid || !p->ws)
        return AMDIM_E_NOMEM;
    size_t rawb = pk->src.is_raw ? pk->src.record_bytes : 0;
    size_t pxb = pk->src.is_raw ? (size_t)pk->src.width * pk->src.height * pk->src.channels : 0;
    for (int i = 0; i < nthreads; i++) {
        worker_state *ws = &p->ws[i];
        if (amdim_codec_create(&ws->codec))
            return AMDIM_E_NOMEM;
        if (rawb && (!(ws->raw = malloc(rawb)) || !(ws->px = malloc(pxb))))
            return AMDIM_E_NOMEM;
        void **arg = malloc(2 * sizeof *arg);
        if (!arg)
            return AMDIM_E_NOMEM;
        arg[0] = p;
        arg[1] = ws;
        if (pthread_create(&p->tid[i], NULL, worker_main, arg)) {
            free(arg);
            return AMDIM_E_NOMEM;
        }
        p->nthreads++;
    }
    return AMDIM_OK;
}

static void pool_destroy(pool *p, int nthreads)
{
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->tid[i], NULL);
    if (p->ws)
        for (int i = 0; i < nthreads; i++)
            worker_state_free(&p->ws[i]);
    free(p->ws);
    free(p->tid);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
}

/* ---- output ------------------------------------------------------------- */


/* Bytes free for us on the file system holding path; UINT64_MAX if unknown. */
static uint64_t free_bytes(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + 1 : 1, slash ? path : ".");
    struct statvfs vs;
    return statvfs(dir, &vs) == 0 ? (uint64_t)vs.f_bavail * vs.f_frsize : UINT64_MAX;
}

static int lmdb_err(packer *pk, const char *what, int rc)
{
    const char *file = pk->in_place ? pk->opt->out : pk->tmp_path;
    /* LMDB turns a short write into EIO: on a full disk, say so. */
    if (rc == ENOSPC || (rc == EIO && free_bytes(file) < (1u << 20)))
        return amdim_fail(pk->err, pk->errlen, AMDIM_E_IO, "%s(): %s (writing %s; %llu bytes free there)", what, strerror(ENOSPC), file,
                      (unsigned long long)free_bytes(file));
    return amdim_fail(pk->err, pk->errlen, rc == EIO ? AMDIM_E_IO : AMDIM_E_LMDB, "%s(): %s (writing %s)", what, mdb_strerror(rc), file);
}

static int meta_put(packer *pk, MDB_txn *txn, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int meta_put(packer *pk, MDB_txn *txn, const char *key, const char *fmt, ...)
{
    char stack[1024], *val = stack;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(stack, sizeof stack, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof stack) {
        if (!(val = malloc((size_t)n + 1)))
            return amdim_fail(pk->err, pk->errlen, AMDIM_E_NOMEM, "out of memory");
        va_start(ap, fmt);
        vsnprintf(val, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    MDB_val k = {strlen(key), (void *)key}, v = {(size_t)n, val};
    int rc = mdb_put(txn, pk->meta, &k, &v, 0);
    if (val != stack)
        free(val);
    return rc ? rc : 0;
}

static void emit(packer *pk, amdim_pack_event_kind kind, amdim_skip_reason reason, uint64_t item,
                 const char *path, const char *detail)
{
    if (pk->opt->on_event) {
        amdim_pack_event ev = {kind, reason, item, path, detail};
        pk->opt->on_event(&ev, pk->opt->ctx);
    }
}

static void note(packer *pk, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(packer *pk, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    emit(pk, AMDIM_PACK_EVENT_NOTE, 0, 0, NULL, buf);
    if (pk->report)
        fprintf(pk->report, "# note: %s\n", buf);
}

/* Removes "<base>.tmp.<pid>"-style leftovers of packs that were killed. */
static void remove_stale_temps(packer *pk, const char *out)
{
    char dir[4096], base[1024];
    const char *slash = strrchr(out, '/');
    if (slash) {
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - out), out);
        snprintf(base, sizeof base, "%s", slash + 1);
    } else {
        snprintf(dir, sizeof dir, ".");
        snprintf(base, sizeof base, "%s", out);
    }
    if (!dir[0])
        snprintf(dir, sizeof dir, "/");
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    size_t bl = strlen(base);
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, base, bl) != 0 || e->d_name[bl] != '.')
            continue;
        const char *t = strstr(e->d_name + bl, ".tmp.");
        if (!t)
            continue;
        char *end;
        long pid = strtol(t + 5, &end, 10);
        if (*end || pid <= 0 || pid == getpid())
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) == 0)
            note(pk, "removed %s, left by an interrupted pack (process %ld)", path, pid);
    }
    closedir(d);
}

static int env_open(packer *pk, const char *path, size_t mapsize)
{
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

static int grow_map(packer *pk)
{
    size_t next = pk->mapsize * 2;
    int rc = mdb_env_set_mapsize(pk->env, next);
    if (rc)
        return lmdb_err(pk, "mdb_env_set_mapsize", rc);
    pk->mapsize = next;
    return AMDIM_OK;
}

/* Writes the records of one window in one transaction, growing the map
 * and retrying when it is full. */
static int write_window(packer *pk, slot *slots, int n)
{
    for (;;) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(pk->env, NULL, 0, &txn);
        if (rc)
            return lmdb_err(pk, "mdb_txn_begin", rc);
        uint64_t key = pk->next_key;
        for (int i = 0; i < n && rc == 0; i++) {
            if (slots[i].skip)
                continue;
            uint8_t kb[8];
            for (int b = 0; b < 8; b++)
                kb[b] = (uint8_t)(key >> (56 - 8 * b));
            MDB_val k = {8, kb}, v = {slots[i].rec_len, slots[i].rec};
            rc = mdb_put(txn, pk->dbi, &k, &v, MDB_APPEND);
            key++;
        }
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc == MDB_MAP_FULL) {
            int st = grow_map(pk);
            if (st)
                return st;
            continue;
        }
        if (rc)
            return lmdb_err(pk, "mdb_put/mdb_txn_commit", rc);
        pk->next_key = key;
        return AMDIM_OK;
    }
}

/* Counts, reports and folds statistics of a written window, in order. */
static void account_window(packer *pk, slot *slots, int n)
{
    amdim_pack_summary *sum = pk->sum;
    char name[4200];
    for (int i = 0; i < n; i++) {
        slot *s = &slots[i];
        sum->items++;
        sum->bytes_in += s->bytes_in;
        if (s->skip || s->warning || s->converted)
            amdim_pack_source_item_name(&pk->src, s->item, name, sizeof name);
        if (s->skip) {
            sum->skipped++;
            sum->skipped_by[s->reason]++;
            emit(pk, AMDIM_PACK_EVENT_SKIP, s->reason, s->item, name, s->detail);
            fprintf(pk->report, "skipped\t%llu\t%s\t%s\t%s\n", (unsigned long long)s->item, name,
                    amdim_skip_reason_name(s->reason), s->detail);
            continue;
        }
        sum->records++;
        sum->bytes_out += s->rec_len;
        sum->resized += (uint64_t)s->resized;
        sum->reencoded += (uint64_t)s->reencoded;
        if (s->warning) {
            sum->warnings++;
            emit(pk, AMDIM_PACK_EVENT_WARNING, 0, s->item, name, s->detail);
            fprintf(pk->report, "warning\t%llu\t%s\tkept\t%s\n", (unsigned long long)s->item, name, s->detail);
        }
        if (s->converted) {
            sum->converted++;
            emit(pk, AMDIM_PACK_EVENT_CONVERT, 0, s->item, name, s->detail);
            fprintf(pk->report, "converted\t%llu\t%s\tkept\t%s\n", (unsigned long long)s->item, name, s->detail);
        }
        if (s->has_stats) {
            for (int c = 0; c < s->channels; c++) {
                pk->csum[c] += s->sum[c];
                pk->csumsq[c] += s->sumsq[c];
            }
            pk->cnpix += s->npix;
        } else {
            pk->stats_complete = 0;
        }
        if (!pk->shape_set) {
            pk->shape_set = 1;
            pk->channels = s->channels;
            pk->width = s->width;
            pk->height = s->height;
            pk->encoding = s->encoding;
        } else {
            if (pk->channels != s->channels)
                pk->channels = 0;
            if (pk->width != s->width || pk->height != s->height)
                pk->width = pk->height = 0;
            if (pk->encoding != s->encoding)
                pk->encoding = -1;
        }
        if (s->rec_cap > (8u << 20)) { /* do not keep rare huge buffers */
            free(s->rec);
            s->rec = NULL;
            s->rec_cap = 0;
        }
    }
}

static int write_meta(packer *pk, int new_file)
{
    const amdim_pack_options *opt = pk->opt;
    const char *sp = opt->split;
    amdim_pack_summary *sum = pk->sum;
    for (;;) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(pk->env, NULL, 0, &txn);
        if (rc)
            return lmdb_err(pk, "mdb_txn_begin", rc);
        char key[128];
#define PUT(field, ...)                                                  \
    do {                                                                 \
        snprintf(key, sizeof key, "%s.%s", sp, field);                   \
        if (rc == 0)                                                     \
            rc = meta_put(pk, txn, key, __VA_ARGS__);                    \
    } while (0)
        if (new_file) {
            rc = meta_put(pk, txn, "format_version", "%d", AMDIM_DATASET_FORMAT_VERSION);
            if (rc == 0)
                rc = meta_put(pk, txn, "created_by", "amdim-pack");
        }
        PUT("classes", "%d", pk->src.nclasses);
        if (pk->src.class_names) {
            size_t len = 0;
            for (int32_t i = 0; i < pk->src.nclasses; i++)
                len += strlen(pk->src.class_names[i]) + 1;
            char *names = malloc(len + 1), *p = names;
            if (!names) {
                mdb_txn_abort(txn);
                return amdim_fail(pk->err, pk->errlen, AMDIM_E_NOMEM, "out of memory");
            }
            for (int32_t i = 0; i < pk->src.nclasses; i++)
                p += sprintf(p, "%s%s", i ? "\n" : "", pk->src.class_names[i]);
            PUT("class_names", "%s", names);
            free(names);
        }
        PUT("skipped", "%llu", (unsigned long long)sum->skipped);
        for (int r = 0; r < AMDIM_SKIP_REASONS; r++)
            if (sum->skipped_by[r]) {
                char f[64];
                snprintf(f, sizeof f, "skipped.%s", skip_names[r]);
                PUT(f, "%llu", (unsigned long long)sum->skipped_by[r]);
            }
        PUT("warnings", "%llu", (unsigned long long)sum->warnings);
        PUT("converted", "%llu", (unsigned long long)sum->converted);
        PUT("source_format", "%s", amdim_pack_format_name(opt->format));
        PUT("source", "%s", opt->src);
        PUT("channels", "%d", pk->channels);
        PUT("width", "%u", pk->width);
        PUT("height", "%u", pk->height);
        PUT("encoding", "%s", pk->encoding == AMDIM_ENCODING_RAW ? "raw" : pk->encoding == AMDIM_ENCODING_JPEG ? "jpeg" : "mixed");
        PUT("bytes", "%llu", (unsigned long long)sum->bytes_out);
        if (pk->stats_complete && pk->cnpix && pk->channels) {
            double m[3] = {0}, s[3] = {0};
            for (int c = 0; c < pk->channels; c++) {
                m[c] = (double)pk->csum[c] / (double)pk->cnpix;
                double var = (double)pk->csumsq[c] / (double)pk->cnpix - m[c] * m[c];
                s[c] = sqrt(var > 0 ? var : 0);
            }
            if (pk->channels == 1) {
                PUT("mean", "%.4f", m[0]);
                PUT("std", "%.4f", s[0]);
            } else {
                PUT("mean", "%.4f %.4f %.4f", m[0], m[1], m[2]);
                PUT("std", "%.4f %.4f %.4f", s[0], s[1], s[2]);
            }
        }
        PUT("options", "verify=%d max_side=%d quality=%d max_pixels=%llu%s", !opt->no_verify,
            opt->max_side, opt->quality, (unsigned long long)pk->max_pixels,
            opt->format == AMDIM_PACK_CIFAR100 ? (opt->cifar100_coarse ? " label=coarse" : " label=fine") : "");
        /* Written last: its presence is what makes the split visible. */
        PUT("records", "%llu", (unsigned long long)sum->records);
#undef PUT
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc == MDB_MAP_FULL) {
            int st = grow_map(pk);
            if (st)
                return st;
            continue;
        }
        return rc ? lmdb_err(pk, "writing meta", rc) : AMDIM_OK;
    }
}

/* Removes split `name` (records and meta keys) in one transaction. */
static int drop_split(packer *pk, const char *name)
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

/* Opens the named databases, clearing a half-written split left by a
 * killed pack, or (with force) the split being replaced. */
static int open_dbs(packer *pk, int exists_complete)
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
                          "(use --force to replace it)", pk->opt->out, sp);
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
            note(pk, "replacing split %s of %s (--force)", sp, pk->opt->out);
        else
            note(pk, "clearing the half-written split %s left in %s by an interrupted pack", sp, pk->opt->out);
        int st = drop_split(pk, sp);
        if (st)
            return st;
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

static int fsync_dir_of(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path) ? (int)(slash - path) : 1, path);
    else
        snprintf(dir, sizeof dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int r = fsync(fd);
    close(fd);
    return r;
}

/* ---- the run ------------------------------------------------------------ */

int amdim_pack_run(const amdim_pack_options *opt_in, amdim_pack_summary *sum, char *err, size_t errlen)
{
    amdim_pack_options opt = *opt_in;
    if (!opt.split)
        opt.split = "train";
    memset(sum, 0, sizeof *sum);
    double t0 = amdim_now();
    packer pkv, *pk = &pkv;
    memset(pk, 0, sizeof *pk);
    pk->opt = &opt;
    pk->err = err;
    pk->errlen = errlen;
    pk->sum = sum;
    pk->out_fd = -1;
    pk->stats_complete = 1;
    pk->encoding = -1;
    pk->max_pixels = opt.max_pixels ? opt.max_pixels : DEFAULT_MAX_PIXELS;
    int nthreads = opt.threads > 0 ? opt.threads : amdim_cpu_count();
    int window = opt.window > 0 ? opt.window : DEFAULT_WINDOW;
    slot *slots = NULL;
    pool pl;
    int pool_made = 0, st = AMDIM_OK, new_file = 1, exists_complete = 0;

    if (!opt.src || !opt.out)
        return amdim_fail(err, errlen, AMDIM_E_INVALID, "source and output are required");
    if (!amdim_split_name_valid(opt.split))
        return amdim_fail(err, errlen, AMDIM_E_INVALID,
                          "bad split name '%s' (1-%d of A-Z a-z 0-9 _ -, not 'meta')", opt.split, AMDIM_SPLIT_NAME_MAX);
    if (opt.quality < 0 || opt.quality > 100 || opt.max_side < 0)
        return amdim_fail(err, errlen, AMDIM_E_INVALID, "quality must be 1..100 and max_side positive");
    if ((opt.max_side || opt.quality) && (opt.format != AMDIM_PACK_IMAGEFOLDER && opt.format != AMDIM_PACK_LIST))
        return amdim_fail(err, errlen, AMDIM_E_INVALID, "--max-side and --quality apply to JPEG sources (imagefolder, list); %s is stored as raw pixels",
                          amdim_pack_format_name(opt.format));

    /* Decide between a new file and adding a split to an existing one. */
    struct stat sb;
    if (stat(opt.out, &sb) == 0) {
        char why[512];
        amdim_dataset *ds = NULL;
        int ost = amdim_dataset_open(&ds, opt.out, why, sizeof why);
        if (ost == AMDIM_OK) {
            for (int i = 0; i < amdim_dataset_split_count(ds); i++)
                if (strcmp(amdim_dataset_split_name(ds, i), opt.split) == 0)
                    exists_complete = 1;
            amdim_dataset_close(ds);
            if (exists_complete && !opt.force)
                return amdim_fail(err, errlen, AMDIM_E_EXISTS,
                                  "%s already holds split %s (use --force to replace it, or --split to add another)",
                                  opt.out, opt.split);
            new_file = 0;
        } else if (!opt.force) {
            return amdim_fail(err, errlen, AMDIM_E_EXISTS,
                              "%s exists and is not a dataset this build can add to (%s); use --force to overwrite it",
                              opt.out, why);
        }
    }
    pk->in_place = !new_file;

    if ((st = amdim_pack_source_open(&pk->src, &opt))) {
        amdim_fail(err, errlen, st, "%s", pk->src.err);
        goto done;
    }
    sum->classes = pk->src.nclasses;

    /* Report next to the output. */
    snprintf(sum->report_path, sizeof sum->report_path, "%s.%s.report.txt", opt.out, opt.split);
    snprintf(pk->report_tmp, sizeof pk->report_tmp, "%s.tmp.%d", sum->report_path, (int)getpid());
    remove_stale_temps(pk, opt.out);
    if (!(pk->report = fopen(pk->report_tmp, "w"))) {
        st = amdim_fail(pk->err, pk->errlen, AMDIM_E_IO, "cannot create %s: %s", pk->report_tmp, strerror(errno));
        goto done;
    }
    fprintf(pk->report, "# amdim-pack report: split %s of %s\n# source: %s %s (%llu items)\n"
                        "# kind\tsource_index\tpath\treason\tdetail\n",
            opt.split, opt.out, amdim_pack_format_name(opt.format), opt.src, (unsigned long long)pk->src.n);
    if (pk->src.ignored)
        note(pk, "ignored %llu files without an image extension (torchvision's list)", (unsigned long long)pk->src.ignored);

    if (new_file) {
        snprintf(pk->tmp_path, sizeof pk->tmp_path, "%s.tmp.%d", opt.out, (int)getpid());
        unlink(pk->tmp_path);
        if ((st = env_open(pk, pk->tmp_path, INITIAL_MAP_BYTES)))
            goto done;
    } else {
        pk->out_fd = open(opt.out, O_RDONLY | O_CLOEXEC);
        if (pk->out_fd < 0 || flock(pk->out_fd, LOCK_EX | LOCK_NB) != 0) {
            st = amdim_fail(pk->err, pk->errlen, AMDIM_E_IO, "cannot lock %s: %s (is another amdim-pack writing it?)", opt.out,
                        strerror(errno));
            goto done;
        }
        size_t ms = INITIAL_MAP_BYTES;
        while (ms < (size_t)sb.st_size * 2)
            ms *= 2;
        if ((st = env_open(pk, opt.out, ms)))
            goto done;
    }
    if ((st = open_dbs(pk, exists_complete)))
        goto done;

    slots = calloc(2 * (size_t)window, sizeof *slots);
    if (!slots) {
        st = amdim_fail(pk->err, pk->errlen, AMDIM_E_NOMEM, "out of memory");
        goto done;
    }
    pool_made = 1;
    if (pool_create(&pl, pk, nthreads) != AMDIM_OK) {
        st = amdim_fail(pk->err, pk->errlen, AMDIM_E_NOMEM, "cannot start %d packing threads", nthreads);
        goto done;
    }

    /* Window k is processed while window k-1 is written. */
    uint64_t n = pk->src.n, next_item = 0;
    slot *cur = slots, *other = slots + window;
    int ncur = 0;
    for (; next_item < n && ncur < window; next_item++)
        cur[ncur++].item = next_item;
    pool_start(&pl, cur, ncur);
    while (ncur > 0) {
        pool_wait(&pl);
        if (opt.cancel && *opt.cancel) {
            st = amdim_fail(pk->err, pk->errlen, AMDIM_E_CANCELLED, "interrupted");
            goto done;
        }
        for (int i = 0; i < ncur; i++)
            if (cur[i].fatal) {
                st = amdim_fail(pk->err, pk->errlen, pk->src.is_raw ? AMDIM_E_CORRUPT : AMDIM_E_NOMEM, "%s", cur[i].detail);
                goto done;
            }
        int nother = 0;
        for (; next_item < n && nother < window; next_item++)
            other[nother++].item = next_item;
        if (nother)
            pool_start(&pl, other, nother);
        st = write_window(pk, cur, ncur);
        if (st) {
            if (nother)
                pool_wait(&pl);
            goto done;
        }
        account_window(pk, cur, ncur);
        if (opt.on_progress)
            opt.on_progress(sum->items, n, opt.ctx);
        slot *t = cur;
        cur = other;
        other = t;
        ncur = nother;
    }
    if (sum->records == 0) {
        st = amdim_fail(pk->err, pk->errlen, AMDIM_E_EMPTY, "none of the %llu items of %s could be packed (see %s)",
                    (unsigned long long)n, opt.src, sum->report_path);
        goto done;
    }
    if ((st = write_meta(pk, new_file)))
        goto done;
    int rc = mdb_env_sync(pk->env, 1);
    if (rc) {
        st = lmdb_err(pk, "mdb_env_sync", rc);
        goto done;
    }
    mdb_env_close(pk->env);
    pk->env = NULL;
    if (new_file) {
        /* RENAME_NOREPLACE unless forced: never clobber a file that
         * appeared while we were packing. */
        int r = opt.force ? rename(pk->tmp_path, opt.out)
                          : renameat2(AT_FDCWD, pk->tmp_path, AT_FDCWD, opt.out, RENAME_NOREPLACE);
        if (r != 0) {
            st = amdim_fail(pk->err, pk->errlen, errno == EEXIST ? AMDIM_E_EXISTS : AMDIM_E_IO, "cannot rename %s to %s: %s",
                        pk->tmp_path, opt.out, strerror(errno));
            goto done;
        }
        pk->tmp_path[0] = 0;
    }
    fprintf(pk->report, "# done: %llu records, %llu skipped, %llu warnings, %llu converted\n",
            (unsigned long long)sum->records, (unsigned long long)sum->skipped,
            (unsigned long long)sum->warnings, (unsigned long long)sum->converted);
    if (fflush(pk->report) != 0 || fsync(fileno(pk->report)) != 0 || fclose(pk->report) != 0) {
        pk->report = NULL;
        st = amdim_fail(pk->err, pk->errlen, AMDIM_E_IO, "cannot write %s: %s", pk->report_tmp, strerror(errno));
        goto done;
    }
    pk->report = NULL;
    if (rename(pk->report_tmp, sum->report_path) != 0) {
        st = amdim_fail(pk->err, pk->errlen, AMDIM_E_IO, "cannot rename %s: %s", pk->report_tmp, strerror(errno));
        goto done;
    }
    pk->report_tmp[0] = 0;
    fsync_dir_of(opt.out);

done:
    if (pool_made && slots) {
        pool_destroy(&pl, nthreads);
        for (int i = 0; i < 2 * window; i++)
            free(slots[i].rec);
    }
    free(slots);
    if (pk->env) {
        if (st && !new_file && pk->owns_split) {
            /* Leave no half-written split behind in an existing dataset
             * (never one this pack did not start writing). */
            drop_split(pk, opt.split);
        }
        mdb_env_close(pk->env);
    }
    if (pk->out_fd >= 0)
        close(pk->out_fd);
    if (pk->tmp_path[0])
        unlink(pk->tmp_path);
    if (pk->report)
        fclose(pk->report);
    if (pk->report_tmp[0])
        unlink(pk->report_tmp);
    amdim_pack_source_close(&pk->src);
    sum->seconds = amdim_now() - t0;
    return st;
}
