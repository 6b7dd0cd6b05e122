/* The packer's run: amdim_pack_run in its phases (check the options, open
 * the source, the report and the output, pack window by window, finish) and
 * the output files' lifecycle. A new dataset is written under a temporary
 * name and renamed into place; an existing one is locked and written in
 * place; the report is written under a temporary name too. A pool of threads
 * (pack_items.c) processes window k while this thread writes window k-1
 * (pack_lmdb.c) and accounts for it in source order, so the output does not
 * depend on the thread count. */
#include "pack_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amdim_dataset.h"

#define DEFAULT_MAX_PIXELS 89478485ull /* PIL's decompression-bomb limit */
#define DEFAULT_WINDOW 512

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

/* ---- events and the report ----------------------------------------------- */

static void emit(amdim_packer *pk, amdim_pack_event_kind kind, amdim_skip_reason reason, uint64_t item,
                 const char *path, const char *detail)
{
    if (pk->opt->on_event) {
        amdim_pack_event ev = {kind, reason, item, path, detail};
        pk->opt->on_event(&ev, pk->opt->ctx);
    }
}

void amdim_pack_note(amdim_packer *pk, const char *fmt, ...)
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

/* A skipped, warned or converted item, to the caller and as a report line
 * "<kind>\t<source_index>\t<path>\t<reason, or kept>\t<detail>". */
static void report_item(amdim_packer *pk, amdim_pack_event_kind kind, const amdim_pack_slot *s, const char *name)
{
    int skip = kind == AMDIM_PACK_EVENT_SKIP;
    const char *label = skip ? "skipped" : kind == AMDIM_PACK_EVENT_WARNING ? "warning" : "converted";
    emit(pk, kind, skip ? s->reason : 0, s->item, name, s->detail);
    fprintf(pk->report, "%s\t%llu\t%s\t%s\t%s\n", label, (unsigned long long)s->item, name,
            skip ? amdim_skip_reason_name(s->reason) : "kept", s->detail);
}

/* Opens the report under a temporary name next to the output and writes its
 * header. */
static int open_report(amdim_packer *pk)
{
    const amdim_pack_options *opt = pk->opt;
    amdim_pack_summary *sum = pk->sum;
    snprintf(sum->report_path, sizeof sum->report_path, "%s.%s.report.txt", opt->out, opt->split);
    snprintf(pk->report_tmp, sizeof pk->report_tmp, "%s.tmp.%d", sum->report_path, (int)getpid());
    if (!(pk->report = fopen(pk->report_tmp, "w")))
        return amdim_fail(pk->err, pk->errlen, AMDIM_E_IO, "cannot create %s: %s", pk->report_tmp, strerror(errno));
    fprintf(pk->report,
            "# amdim-pack report: split %s of %s\n# source: %s %s (%llu items)\n"
            "# kind\tsource_index\tpath\treason\tdetail\n",
            opt->split, opt->out, amdim_pack_format_name(opt->format), opt->src, (unsigned long long)pk->src.n);
    if (pk->src.ignored)
        amdim_pack_note(pk, "ignored %llu files without an image extension (torchvision's list)",
                        (unsigned long long)pk->src.ignored);
    return AMDIM_OK;
}

/* Ends the report with the totals and renames it into place. */
static int finish_report(amdim_packer *pk)
{
    const amdim_pack_summary *sum = pk->sum;
    fprintf(pk->report, "# done: %llu records, %llu skipped, %llu warnings, %llu converted\n",
            (unsigned long long)sum->records, (unsigned long long)sum->skipped, (unsigned long long)sum->warnings,
            (unsigned long long)sum->converted);
    if (fflush(pk->report) != 0 || fsync(fileno(pk->report)) != 0 || fclose(pk->report) != 0) {
        pk->report = NULL;
        return amdim_fail(pk->err, pk->errlen, AMDIM_E_IO, "cannot write %s: %s", pk->report_tmp, strerror(errno));
    }
    pk->report = NULL;
    if (rename(pk->report_tmp, sum->report_path) != 0)
        return amdim_fail(pk->err, pk->errlen, AMDIM_E_IO, "cannot rename %s: %s", pk->report_tmp, strerror(errno));
    pk->report_tmp[0] = 0;
    return AMDIM_OK;
}

/* ---- accounting ---------------------------------------------------------- */

/* Folds a written record's statistics and shape into the split's. */
static void fold_record(amdim_packer *pk, const amdim_pack_slot *s)
{
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
}

/* Counts, reports and folds statistics of a written window, in order. */
static void account_window(amdim_packer *pk, amdim_pack_slot *slots, int n)
{
    amdim_pack_summary *sum = pk->sum;
    char name[4200];
    for (int i = 0; i < n; i++) {
        amdim_pack_slot *s = &slots[i];
        sum->items++;
        sum->bytes_in += s->bytes_in;
        if (s->skip || s->warning || s->converted)
            amdim_pack_source_item_name(&pk->src, s->item, name, sizeof name);
        if (s->skip) {
            sum->skipped++;
            sum->skipped_by[s->reason]++;
            report_item(pk, AMDIM_PACK_EVENT_SKIP, s, name);
            continue;
        }
        sum->records++;
        sum->bytes_out += s->rec_len;
        sum->resized += (uint64_t)s->resized;
        sum->reencoded += (uint64_t)s->reencoded;
        if (s->warning) {
            sum->warnings++;
            report_item(pk, AMDIM_PACK_EVENT_WARNING, s, name);
        }
        if (s->converted) {
            sum->converted++;
            report_item(pk, AMDIM_PACK_EVENT_CONVERT, s, name);
        }
        fold_record(pk, s);
        if (s->rec_cap > (8u << 20)) { /* do not keep rare huge buffers */
            free(s->rec);
            s->rec = NULL;
            s->rec_cap = 0;
        }
    }
}

/* ---- the output file ----------------------------------------------------- */

/* Removes "<base>.tmp.<pid>"-style leftovers of packs that were killed. */
static void remove_stale_temps(amdim_packer *pk, const char *out)
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
            amdim_pack_note(pk, "removed %s, left by an interrupted pack (process %ld)", path, pid);
    }
    closedir(d);
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

/* Decides between a new file and adding a split to an existing dataset
 * (*in_place, with its size in *out_bytes); *exists_complete when that
 * already holds the split (allowed with force). */
static int probe_output(const amdim_pack_options *opt, int *in_place, int *exists_complete, uint64_t *out_bytes,
                        char *err, size_t errlen)
{
    struct stat sb;
    if (stat(opt->out, &sb) != 0)
        return AMDIM_OK;
    char why[512];
    amdim_dataset *ds = NULL;
    if (amdim_dataset_open(&ds, opt->out, why, sizeof why) != AMDIM_OK) {
        if (!opt->force)
            return amdim_fail(err, errlen, AMDIM_E_EXISTS,
                              "%s exists and is not a dataset this build can add to (%s); use --force to overwrite it",
                              opt->out, why);
        return AMDIM_OK;
    }
    for (int i = 0; i < amdim_dataset_split_count(ds); i++)
        if (strcmp(amdim_dataset_split_name(ds, i), opt->split) == 0)
            *exists_complete = 1;
    amdim_dataset_close(ds);
    if (*exists_complete && !opt->force)
        return amdim_fail(err, errlen, AMDIM_E_EXISTS,
                          "%s already holds split %s (use --force to replace it, or --split to add another)", opt->out,
                          opt->split);
    *in_place = 1;
    *out_bytes = (uint64_t)sb.st_size;
    return AMDIM_OK;
}

/* Opens the LMDB environment on a new temporary file, or on the existing
 * dataset under an exclusive lock, and the split's databases. */
static int open_output(amdim_packer *pk, int exists_complete, uint64_t out_bytes)
{
    const amdim_pack_options *opt = pk->opt;
    if (!pk->in_place) {
        snprintf(pk->tmp_path, sizeof pk->tmp_path, "%s.tmp.%d", opt->out, (int)getpid());
        unlink(pk->tmp_path);
        AMDIM_TRY(amdim_pack_env_open(pk, pk->tmp_path, 0));
    } else {
        pk->out_fd = open(opt->out, O_RDONLY | O_CLOEXEC);
        if (pk->out_fd < 0 || flock(pk->out_fd, LOCK_EX | LOCK_NB) != 0)
            return amdim_fail(pk->err, pk->errlen, AMDIM_E_IO, "cannot lock %s: %s (is another amdim-pack writing it?)",
                              opt->out, strerror(errno));
        AMDIM_TRY(amdim_pack_env_open(pk, opt->out, out_bytes));
    }
    return amdim_pack_open_dbs(pk, exists_complete);
}

/* Writes the metadata, syncs and closes the environment and renames a new
 * file into place. */
static int finish_output(amdim_packer *pk)
{
    const amdim_pack_options *opt = pk->opt;
    AMDIM_TRY(amdim_pack_write_meta(pk, !pk->in_place));
    AMDIM_TRY(amdim_pack_env_sync_close(pk));
    if (pk->in_place)
        return AMDIM_OK;
    /* RENAME_NOREPLACE unless forced: never clobber a file that appeared
     * while we were packing. */
    int r = opt->force ? rename(pk->tmp_path, opt->out)
                       : renameat2(AT_FDCWD, pk->tmp_path, AT_FDCWD, opt->out, RENAME_NOREPLACE);
    if (r != 0)
        return amdim_fail(pk->err, pk->errlen, errno == EEXIST ? AMDIM_E_EXISTS : AMDIM_E_IO,
                          "cannot rename %s to %s: %s", pk->tmp_path, opt->out, strerror(errno));
    pk->tmp_path[0] = 0;
    return AMDIM_OK;
}

/* Closes what is still open and removes what a failed run leaves: the
 * temporary files and a split this pack started in an existing dataset. */
static void release_output(amdim_packer *pk, int failed)
{
    amdim_pack_env_close(pk, failed);
    if (pk->out_fd >= 0)
        close(pk->out_fd);
    if (pk->tmp_path[0])
        unlink(pk->tmp_path);
    if (pk->report)
        fclose(pk->report);
    if (pk->report_tmp[0])
        unlink(pk->report_tmp);
}

/* ---- the run ------------------------------------------------------------- */

static int check_options(const amdim_pack_options *opt, char *err, size_t errlen)
{
    if (!opt->src || !opt->out)
        return amdim_fail(err, errlen, AMDIM_E_INVALID, "source and output are required");
    if (!amdim_split_name_valid(opt->split))
        return amdim_fail(err, errlen, AMDIM_E_INVALID, "bad split name '%s' (1-%d of A-Z a-z 0-9 _ -, not 'meta')",
                          opt->split, AMDIM_SPLIT_NAME_MAX);
    if (opt->quality < 0 || opt->quality > 100 || opt->max_side < 0)
        return amdim_fail(err, errlen, AMDIM_E_INVALID, "quality must be 1..100 and max_side positive");
    if ((opt->max_side || opt->quality) && (opt->format != AMDIM_PACK_IMAGEFOLDER && opt->format != AMDIM_PACK_LIST))
        return amdim_fail(err, errlen, AMDIM_E_INVALID,
                          "--max-side and --quality apply to JPEG sources (imagefolder, list); %s is stored as raw "
                          "pixels",
                          amdim_pack_format_name(opt->format));
    return AMDIM_OK;
}

/* Gives slots[0..) the next items, at most window of them; returns how many. */
static int fill_window(amdim_pack_slot *slots, int window, uint64_t n, uint64_t *next_item)
{
    int k = 0;
    for (; *next_item < n && k < window; ++*next_item)
        slots[k++].item = *next_item;
    return k;
}

/* Packs every item: window k is processed while window k-1 is written and
 * accounted for. slots holds two windows. */
static int pack_windows(amdim_packer *pk, amdim_pack_pool *pl, amdim_pack_slot *slots, int window)
{
    const amdim_pack_options *opt = pk->opt;
    uint64_t n = pk->src.n, next_item = 0;
    amdim_pack_slot *cur = slots, *other = slots + window;
    int ncur = fill_window(cur, window, n, &next_item);
    amdim_pack_pool_start(pl, cur, ncur);
    while (ncur > 0) {
        amdim_pack_pool_wait(pl);
        if (opt->cancel && *opt->cancel)
            return amdim_fail(pk->err, pk->errlen, AMDIM_E_CANCELLED, "interrupted");
        for (int i = 0; i < ncur; i++)
            if (cur[i].fatal)
                return amdim_fail(pk->err, pk->errlen, pk->src.is_raw ? AMDIM_E_CORRUPT : AMDIM_E_NOMEM, "%s",
                                  cur[i].detail);
        int nother = fill_window(other, window, n, &next_item);
        if (nother)
            amdim_pack_pool_start(pl, other, nother);
        int st = amdim_pack_write_window(pk, cur, ncur);
        if (st) {
            if (nother)
                amdim_pack_pool_wait(pl);
            return st;
        }
        account_window(pk, cur, ncur);
        if (opt->on_progress)
            opt->on_progress(pk->sum->items, n, opt->ctx);
        amdim_pack_slot *t = cur;
        cur = other;
        other = t;
        ncur = nother;
    }
    if (pk->sum->records == 0)
        return amdim_fail(pk->err, pk->errlen, AMDIM_E_EMPTY, "none of the %llu items of %s could be packed (see %s)",
                          (unsigned long long)n, opt->src, pk->sum->report_path);
    return AMDIM_OK;
}

static void packer_init(amdim_packer *pk, const amdim_pack_options *opt, amdim_pack_summary *sum, char *err,
                        size_t errlen)
{
    memset(pk, 0, sizeof *pk);
    pk->opt = opt;
    pk->err = err;
    pk->errlen = errlen;
    pk->sum = sum;
    pk->out_fd = -1;
    pk->stats_complete = 1;
    pk->encoding = -1;
    pk->max_pixels = opt->max_pixels ? opt->max_pixels : DEFAULT_MAX_PIXELS;
}

int amdim_pack_run(const amdim_pack_options *opt_in, amdim_pack_summary *sum, char *err, size_t errlen)
{
    amdim_pack_options opt = *opt_in;
    if (!opt.split)
        opt.split = "train";
    memset(sum, 0, sizeof *sum);
    double t0 = amdim_now();
    amdim_packer pkv, *pk = &pkv;
    packer_init(pk, &opt, sum, err, errlen);
    int nthreads = opt.threads > 0 ? opt.threads : amdim_cpu_count();
    int window = opt.window > 0 ? opt.window : DEFAULT_WINDOW;
    int exists_complete = 0;
    uint64_t out_bytes = 0;
    AMDIM_TRY(check_options(&opt, err, errlen));
    AMDIM_TRY(probe_output(&opt, &pk->in_place, &exists_complete, &out_bytes, err, errlen));

    amdim_pack_slot *slots = NULL;
    amdim_pack_pool pl;
    int pool_made = 0, st;
    if ((st = amdim_pack_source_open(&pk->src, &opt))) {
        amdim_fail(err, errlen, st, "%s", pk->src.err);
        goto done;
    }
    sum->classes = pk->src.nclasses;
    remove_stale_temps(pk, opt.out);
    if ((st = open_report(pk)) || (st = open_output(pk, exists_complete, out_bytes)))
        goto done;
    if (!(slots = calloc(2 * (size_t)window, sizeof *slots))) {
        st = amdim_fail(err, errlen, AMDIM_E_NOMEM, "out of memory");
        goto done;
    }
    pool_made = 1;
    if (amdim_pack_pool_create(&pl, pk, nthreads) != AMDIM_OK) {
        st = amdim_fail(err, errlen, AMDIM_E_NOMEM, "cannot start %d packing threads", nthreads);
        goto done;
    }
    if ((st = pack_windows(pk, &pl, slots, window)) || (st = finish_output(pk)) || (st = finish_report(pk)))
        goto done;
    fsync_dir_of(opt.out);

done:
    if (pool_made) {
        amdim_pack_pool_destroy(&pl);
        for (int i = 0; i < 2 * window; i++)
            free(slots[i].rec);
    }
    free(slots);
    release_output(pk, st != AMDIM_OK);
    amdim_pack_source_close(&pk->src);
    sum->seconds = amdim_now() - t0;
    return st;
}
