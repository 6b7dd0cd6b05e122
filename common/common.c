#include "amdim_common.h"

#include <errno.h>
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
