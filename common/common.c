#include "amdim_common.h"
#include "common_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *amdim_strerror(int status)
{
    switch (status) {
    case AMDIM_OK: return "success";
    case AMDIM_E_INVALID: return "invalid argument";
    case AMDIM_E_NOMEM: return "out of memory";
    case AMDIM_E_IO: return "I/O error";
    case AMDIM_E_CORRUPT: return "corrupt data";
    case AMDIM_E_TRUNCATED: return "truncated data";
    case AMDIM_E_UNSUPPORTED: return "unsupported";
    case AMDIM_E_TOO_LARGE: return "too large";
    case AMDIM_E_EXISTS: return "already exists";
    case AMDIM_E_NOT_FOUND: return "not found";
    case AMDIM_E_LMDB: return "LMDB error";
    case AMDIM_E_VERSION: return "unsupported format version";
    case AMDIM_E_CANCELLED: return "cancelled";
    case AMDIM_E_EMPTY: return "empty";
    case AMDIM_E_WORKER: return "loader worker failed";
    case AMDIM_E_PROTOCOL: return "protocol error";
    default: return "unknown status";
    }
}

int amdim_fail(char *buf, size_t n, int status, const char *fmt, ...)
{
    if (buf && n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, n, fmt, ap);
        va_end(ap);
    }
    return status;
}

void amdim_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "amdim: internal error: assertion %s failed at %s:%d\n", expr, file, line);
    abort();
}

double amdim_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int amdim_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

amdim_simd amdim_simd_detect(void)
{
    amdim_simd level = AMDIM_SIMD_SCALAR;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        level = AMDIM_SIMD_AVX2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi"))
            level = AMDIM_SIMD_AVX512;
    }
#endif
    const char *want = getenv("AMDIM_SIMD");
    if (want && strcmp(want, "scalar") == 0)
        return AMDIM_SIMD_SCALAR;
    if (want && strcmp(want, "avx2") == 0 && level > AMDIM_SIMD_AVX2)
        return AMDIM_SIMD_AVX2;
    return level;
}

const char *amdim_simd_name(amdim_simd level)
{
    return level == AMDIM_SIMD_AVX512 ? "avx512" : level == AMDIM_SIMD_AVX2 ? "avx2" : "scalar";
}

void amdim_progress_init(amdim_progress *p, void *stream, const char *label,
                         const char *unit, double interval)
{
    FILE *f = stream;
    p->stream = stream;
    p->label = label;
    p->unit = unit;
    p->is_tty = isatty(fileno(f));
    p->interval = interval > 0 ? interval : 5.0;
    p->start = p->last = amdim_now();
    p->drawn = 0;
}

static void format_eta(char *buf, size_t n, double seconds)
{
    if (seconds < 0 || seconds > 1e7) {
        snprintf(buf, n, "?");
        return;
    }
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, n, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else
        snprintf(buf, n, "%ldm%02lds", s / 60, s % 60);
}

void amdim_progress_update(amdim_progress *p, uint64_t done, uint64_t total)
{
    double now = amdim_now();
    double min_gap = p->is_tty ? 0.2 : p->interval;
    if (now - p->last < min_gap)
        return;
    p->last = now;
    double rate = done / (now - p->start > 1e-9 ? now - p->start : 1e-9);
    char eta[32] = "?";
    if (total && rate > 0)
        format_eta(eta, sizeof eta, (double)(total - (done < total ? done : total)) / rate);
    FILE *f = p->stream;
    if (p->is_tty) {
        fprintf(f, "\r\033[K%s: %llu/%llu %s  %.0f %s/s  ETA %s", p->label,
                (unsigned long long)done, (unsigned long long)total, p->unit, rate, p->unit, eta);
        p->drawn = 1;
    } else {
        fprintf(f, "%s: progress %llu/%llu %s, %.0f %s/s, ETA %s\n", p->label,
                (unsigned long long)done, (unsigned long long)total, p->unit, rate, p->unit, eta);
    }
    fflush(f);
}

void amdim_progress_clear(amdim_progress *p)
{
    if (p->is_tty && p->drawn) {
        fprintf((FILE *)p->stream, "\r\033[K");
        p->drawn = 0;
    }
}

void amdim_progress_finish(amdim_progress *p, uint64_t done)
{
    amdim_progress_clear(p);
    double dt = amdim_now() - p->start;
    fprintf((FILE *)p->stream, "%s: %llu %s in %.1f s (%.0f %s/s)\n", p->label,
            (unsigned long long)done, p->unit, dt, dt > 0 ? done / dt : 0.0, p->unit);
    fflush((FILE *)p->stream);
}

int amdim_cli_int(const char *prog, const char *name, const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "%s: %s must be an integer in %lld..%lld, got '%s'\nTry '%s --help'.\n", prog, name, lo, hi, s,
                prog);
        return -1;
    }
    *out = v;
    return 0;
}

int amdim_mem_parse_meminfo(const char *text, uint64_t *bytes)
{
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, "MemAvailable:", 13) != 0)
            continue;
        char *end;
        errno = 0;
        unsigned long long kb = strtoull(line + 13, &end, 10);
        while (*end == ' ')
            end++;
        if (errno || end == line + 13 || strncmp(end, "kB", 2) != 0 || kb > UINT64_MAX / 1024)
            return AMDIM_E_CORRUPT;
        *bytes = (uint64_t)kb * 1024;
        return AMDIM_OK;
    }
    return AMDIM_E_CORRUPT;
}

int amdim_mem_parse_cgroup(const char *text, int *version, char *path, size_t pathn)
{
    const char *v2 = NULL;
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        const char *c1 = strchr(line, ':');
        const char *eol = strchr(line, '\n');
        if (!eol)
            eol = line + strlen(line);
        if (!c1 || c1 > eol)
            continue;
        const char *c2 = memchr(c1 + 1, ':', (size_t)(eol - c1 - 1));
        if (!c2)
            continue;
        if (c2 == c1 + 1 && strncmp(line, "0:", 2) == 0) {
            v2 = c2 + 1;
            continue;
        }
        /* controller list "cpu,memory": look for a whole "memory" entry */
        for (const char *c = c1 + 1; c < c2;) {
            const char *comma = memchr(c, ',', (size_t)(c2 - c));
            const char *e = comma ? comma : c2;
            if (e - c == 6 && strncmp(c, "memory", 6) == 0) {
                size_t n = (size_t)(eol - c2 - 1);
                if (n + 1 > pathn)
                    return AMDIM_E_TOO_LARGE;
                memcpy(path, c2 + 1, n);
                path[n] = 0;
                *version = 1;
                return AMDIM_OK;
            }
            c = e + 1;
        }
    }
    if (!v2)
        return AMDIM_E_NOT_FOUND;
    const char *eol = strchr(v2, '\n');
    size_t n = eol ? (size_t)(eol - v2) : strlen(v2);
    if (n + 1 > pathn)
        return AMDIM_E_TOO_LARGE;
    memcpy(path, v2, n);
    path[n] = 0;
    *version = 2;
    return AMDIM_OK;
}

int amdim_mem_parse_value(const char *text, uint64_t *bytes, int *unlimited)
{
    *unlimited = 0;
    if (strncmp(text, "max", 3) == 0 && (text[3] == 0 || text[3] == '\n')) {
        *unlimited = 1;
        *bytes = UINT64_MAX;
        return AMDIM_OK;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || (*end && *end != '\n') || text[0] == '-')
        return AMDIM_E_CORRUPT;
    *bytes = v;
    *unlimited = v >= (1ull << 60);
    return AMDIM_OK;
}

void amdim_format_bytes(char *buf, size_t n, uint64_t b)
{
    if (b >= (1ull << 40))
        snprintf(buf, n, "%.1f TiB", (double)b / (double)(1ull << 40));
    else if (b >= (1ull << 30))
        snprintf(buf, n, "%.1f GiB", (double)b / (double)(1ull << 30));
    else
        snprintf(buf, n, "%.1f MiB", (double)b / (double)(1ull << 20));
}

int amdim_mem_available_with(amdim_mem_reader read, void *ctx, const char *cgroot, uint64_t *bytes, char *why,
                             size_t whyn)
{
    char buf[8192], cgpath[1024], dir[1400], file[1500], a[32], u[32];
    char ignored[256];
    if (!why || !whyn) {
        why = ignored;
        whyn = sizeof ignored;
    }
    uint64_t best = UINT64_MAX;
    int have = 0, st;
    const char *mem_err = "";

    st = read(ctx, "/proc/meminfo", buf, sizeof buf);
    if (st == 0 && amdim_mem_parse_meminfo(buf, &best) == 0) {
        have = 1;
        amdim_format_bytes(a, sizeof a, best);
        snprintf(why, whyn, "MemAvailable %s", a);
    } else {
        mem_err = st ? "/proc/meminfo cannot be read" : "/proc/meminfo has no valid MemAvailable line";
        st = st ? AMDIM_E_IO : AMDIM_E_CORRUPT;
    }

    int version = 0;
    if (read(ctx, "/proc/self/cgroup", buf, sizeof buf) == 0 &&
        amdim_mem_parse_cgroup(buf, &version, cgpath, sizeof cgpath) == 0) {
        const char *limit_name = version == 2 ? "memory.max" : "memory.limit_in_bytes";
        const char *usage_name = version == 2 ? "memory.current" : "memory.usage_in_bytes";
        /* A limit on any ancestor binds too, and inside a container the
         * leaf path may not exist under the mount: walk up to the root. */
        size_t len = strlen(cgpath);
        while (len > 0 && cgpath[len - 1] == '/')
            cgpath[--len] = 0;
        for (;;) {
            snprintf(dir, sizeof dir, "%s%s%s", cgroot, version == 1 ? "/memory" : "", cgpath);
            uint64_t limit, usage;
            int unlimited, dummy;
            snprintf(file, sizeof file, "%s/%s", dir, limit_name);
            if (read(ctx, file, buf, sizeof buf) == 0 && amdim_mem_parse_value(buf, &limit, &unlimited) == 0 &&
                !unlimited) {
                snprintf(file, sizeof file, "%s/%s", dir, usage_name);
                if (read(ctx, file, buf, sizeof buf) == 0 && amdim_mem_parse_value(buf, &usage, &dummy) == 0) {
                    uint64_t left = usage < limit ? limit - usage : 0;
                    if (!have || left < best) {
                        best = left;
                        have = 1;
                        amdim_format_bytes(a, sizeof a, limit);
                        amdim_format_bytes(u, sizeof u, usage);
                        snprintf(why, whyn, "cgroup %s %s, %s in use (%s)", limit_name, a, u, dir);
                    }
                }
            }
            char *slash = strrchr(cgpath, '/');
            if (!slash || !cgpath[0])
                break;
            *slash = 0;
        }
    }
    if (!have)
        return amdim_fail(why, whyn, st, "amdim_mem_available(): %s and no cgroup memory limit applies", mem_err);
    *bytes = best;
    return AMDIM_OK;
}

static int read_small_file(void *ctx, const char *path, char *buf, size_t n)
{
    (void)ctx;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return AMDIM_E_IO;
    size_t got = 0;
    while (got + 1 < n) {
        ssize_t r = read(fd, buf + got, n - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = 0;
    return AMDIM_OK;
}

int amdim_mem_available(uint64_t *bytes, char *why, size_t whyn)
{
    return amdim_mem_available_with(read_small_file, NULL, "/sys/fs/cgroup", bytes, why, whyn);
}
