/* The packer's items: a pool of threads that verifies and converts each
 * item of a window into its encoded record (reading and fully decoding image
 * files, re-encoding CMYK, grey, PNG, shrunk or re-qualitied ones as RGB
 * JPEG, reading raw records) with its pixel statistics. */
#include "pack_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amdim_dataset.h"
#include "amdim_image.h"

#define MAX_FILE_BYTES (1ull << 30)
#define CONVERT_QUALITY 95

struct amdim_pack_worker {
    amdim_codec *codec;
    amdim_image img, small;
    amdim_scratch scratch;
    uint8_t *file;
    size_t file_cap;
    uint8_t *raw, *px;
};

/* An image file being processed: its bytes (in the worker's buffer) and
 * what the probe found. */
typedef struct {
    const char *path;
    const uint8_t *data;
    size_t n;
    amdim_image_format fmt;
    int w, h, c;
} file_item;

/* ---- slots --------------------------------------------------------------- */

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

static void skip_slot(amdim_pack_slot *s, amdim_skip_reason r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void skip_slot(amdim_pack_slot *s, amdim_skip_reason r, const char *fmt, ...)
{
    s->skip = 1;
    s->reason = r;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->detail, sizeof s->detail, fmt, ap);
    va_end(ap);
}

/* A failed probe or decode: the item is skipped when the status says it is
 * bad, and the run stops otherwise. */
static void codec_failed(amdim_pack_slot *s, int st, amdim_codec *codec, const char *path)
{
    amdim_skip_reason why;
    if (skip_from_status(st, &why)) {
        skip_slot(s, why, "%s", amdim_codec_error(codec));
    } else {
        s->fatal = 1;
        snprintf(s->detail, sizeof s->detail, "%s: %s", path, amdim_codec_error(codec));
    }
}

static int slot_record(amdim_pack_slot *s, const amdim_record *rec)
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
static void slot_stats(amdim_pack_slot *s, const uint8_t *px, size_t npix, int channels)
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

/* ---- image files --------------------------------------------------------- */

/* Reads a whole file into ws->file. Returns its size, or -1 with the slot
 * marked skipped. */
static ssize_t read_file(amdim_pack_worker *ws, amdim_pack_slot *s, const char *path)
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
        skip_slot(s, AMDIM_SKIP_TOO_LARGE, "file is %lld bytes, over the %llu-byte limit", (long long)sb.st_size,
                  MAX_FILE_BYTES);
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

/* Reads it->path and probes its format and size. Returns 0, or -1 with the
 * slot marked skipped or fatal. */
static int probe_file(amdim_packer *pk, amdim_pack_worker *ws, amdim_pack_slot *s, file_item *it)
{
    ssize_t n = read_file(ws, s, it->path);
    if (n < 0)
        return -1;
    s->bytes_in = (uint64_t)n;
    it->data = ws->file;
    it->n = (size_t)n;
    int st = amdim_codec_probe(ws->codec, it->data, it->n, &it->fmt, &it->w, &it->h, &it->c);
    if (st) {
        codec_failed(s, st, ws->codec, it->path);
        return -1;
    }
    if ((uint64_t)it->w * (uint64_t)it->h > pk->max_pixels) {
        skip_slot(s, AMDIM_SKIP_TOO_LARGE, "%dx%d = %llu pixels exceeds the limit of %llu", it->w, it->h,
                  (unsigned long long)it->w * it->h, (unsigned long long)pk->max_pixels);
        return -1;
    }
    return 0;
}

/* Fully decodes the file to RGB in ws->img (the verify), noting a decoder
 * warning or, for a `convert`, what it is converted from. Returns 0 or -1. */
static int decode_file(amdim_packer *pk, amdim_pack_worker *ws, amdim_pack_slot *s, const file_item *it, int convert)
{
    amdim_decode_info info;
    int st = amdim_codec_decode_rgb(ws->codec, it->data, it->n, pk->max_pixels, &ws->img, &info);
    if (st) {
        codec_failed(s, st, ws->codec, it->path);
        return -1;
    }
    if (info.warning) {
        s->warning = 1;
        snprintf(s->detail, sizeof s->detail, "%s", info.warning_text);
    }
    if (convert) {
        s->converted = 1;
        if (!s->warning)
            snprintf(s->detail, sizeof s->detail, "%s%s -> RGB JPEG",
                     info.is_cmyk ? "CMYK "
                     : it->c == 1 ? "greyscale "
                                  : "",
                     amdim_image_format_name(it->fmt));
    }
    return 0;
}

/* Shrinks ws->img so that its longer side is max_side, into ws->small.
 * Returns 0 or -1 (fatal). */
static int shrink_image(amdim_pack_worker *ws, amdim_pack_slot *s, const file_item *it, int max_side)
{
    int w = it->w, h = it->h;
    double scale = (double)max_side / (w > h ? w : h);
    int nw = (int)lround(w * scale), nh = (int)lround(h * scale);
    nw = nw < 1 ? 1 : nw;
    nh = nh < 1 ? 1 : nh;
    if (amdim_image_reserve(&ws->small, nw, nh, 3) ||
        amdim_resize_bicubic(ws->img.pixels, w, h, 3, 0, 0, w, h, ws->small.pixels, nw, nh, &ws->scratch)) {
        s->fatal = 1;
        snprintf(s->detail, sizeof s->detail, "out of memory resizing %s", it->path);
        return -1;
    }
    s->resized = 1;
    return 0;
}

/* Encodes pix as the record's RGB JPEG payload (in the codec's buffer).
 * Returns 0 or -1 (fatal). */
static int reencode_image(amdim_packer *pk, amdim_pack_worker *ws, amdim_pack_slot *s, const char *path,
                          const amdim_image *pix, amdim_record *rec)
{
    const uint8_t *jpeg;
    size_t jlen;
    int q = pk->opt->quality > 0 ? pk->opt->quality : CONVERT_QUALITY;
    int st = amdim_codec_encode_jpeg(ws->codec, pix->pixels, pix->width, pix->height, 3, q, &jpeg, &jlen);
    if (st) {
        s->fatal = 1;
        snprintf(s->detail, sizeof s->detail, "%s: %s", path, amdim_codec_error(ws->codec));
        return -1;
    }
    s->reencoded = 1;
    rec->payload = jpeg;
    rec->payload_size = (uint32_t)jlen;
    rec->width = (uint32_t)pix->width;
    rec->height = (uint32_t)pix->height;
    return 0;
}

/* An image file: stored as it is when it is an RGB JPEG that needs no
 * change, re-encoded otherwise. */
static void process_file(amdim_packer *pk, amdim_pack_worker *ws, amdim_pack_slot *s)
{
    const amdim_pack_options *opt = pk->opt;
    file_item it = {.path = pk->src.arena + pk->src.path_off[s->item]};
    if (probe_file(pk, ws, s, &it))
        return;
    int convert = it.fmt != AMDIM_FORMAT_JPEG || it.c != 3;
    int shrink = opt->max_side > 0 && (it.w > opt->max_side || it.h > opt->max_side);
    int reencode = convert || shrink || opt->quality > 0;
    int decode = reencode || !opt->no_verify;
    if (decode && decode_file(pk, ws, s, &it, convert))
        return;
    amdim_image *pix = &ws->img;
    if (shrink) {
        if (shrink_image(ws, s, &it, opt->max_side))
            return;
        pix = &ws->small;
    }
    amdim_record rec = {.label = pk->src.labels[s->item],
                        .aux_label = -1,
                        .source_index = s->item,
                        .channels = 3,
                        .encoding = AMDIM_ENCODING_JPEG};
    if (reencode) {
        if (reencode_image(pk, ws, s, it.path, pix, &rec))
            return;
    } else {
        rec.payload = it.data;
        rec.payload_size = (uint32_t)it.n;
        rec.width = (uint32_t)it.w;
        rec.height = (uint32_t)it.h;
    }
    if (decode)
        slot_stats(s, pix->pixels, (size_t)pix->width * pix->height, 3);
    slot_record(s, &rec);
}

/* ---- raw records --------------------------------------------------------- */

static void process_raw(amdim_packer *pk, amdim_pack_worker *ws, amdim_pack_slot *s)
{
    amdim_pack_source *src = &pk->src;
    int32_t label, aux;
    int st = amdim_pack_source_read_raw(src, pk->opt->format, pk->opt->cifar100_coarse, s->item, ws->raw, ws->px,
                                        &label, &aux, s->detail, sizeof s->detail);
    if (st) {
        s->fatal = 1;
        return;
    }
    size_t npix = (size_t)src->width * src->height;
    s->bytes_in = src->record_bytes;
    slot_stats(s, ws->px, npix, (int)src->channels);
    amdim_record rec = {.label = label,
                        .aux_label = aux,
                        .source_index = s->item,
                        .width = src->width,
                        .height = src->height,
                        .channels = (uint8_t)src->channels,
                        .encoding = AMDIM_ENCODING_RAW,
                        .payload = ws->px,
                        .payload_size = (uint32_t)(npix * src->channels)};
    slot_record(s, &rec);
}

static void process_slot(amdim_packer *pk, amdim_pack_worker *ws, amdim_pack_slot *s)
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

/* ---- thread pool --------------------------------------------------------- */

static void *worker_main(void *arg)
{
    void **a = arg;
    amdim_pack_pool *p = a[0];
    amdim_pack_worker *ws = a[1];
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
        amdim_pack_slot *slots = p->slots;
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

void amdim_pack_pool_start(amdim_pack_pool *p, amdim_pack_slot *slots, int n)
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

void amdim_pack_pool_wait(amdim_pack_pool *p)
{
    pthread_mutex_lock(&p->mu);
    while (p->finished < p->nthreads)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void worker_free(amdim_pack_worker *ws)
{
    amdim_codec_destroy(ws->codec);
    amdim_image_free(&ws->img);
    amdim_image_free(&ws->small);
    amdim_scratch_free(&ws->scratch);
    free(ws->file);
    free(ws->raw);
    free(ws->px);
}

int amdim_pack_pool_create(amdim_pack_pool *p, amdim_packer *pk, int nthreads)
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
    p->nworkers = nthreads;
    size_t rawb = pk->src.is_raw ? pk->src.record_bytes : 0;
    size_t pxb = pk->src.is_raw ? (size_t)pk->src.width * pk->src.height * pk->src.channels : 0;
    for (int i = 0; i < nthreads; i++) {
        amdim_pack_worker *ws = &p->ws[i];
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

void amdim_pack_pool_destroy(amdim_pack_pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++)
        pthread_join(p->tid[i], NULL);
    for (int i = 0; i < p->nworkers; i++)
        worker_free(&p->ws[i]);
    free(p->ws);
    free(p->tid);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
}
