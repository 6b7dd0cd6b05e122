/* amdim common: status codes, error-message buffers and progress reporting.
 *
 * Every library function in amdim returns an int status: 0 (AMDIM_OK) on
 * success or a negative AMDIM_E_* code. Handles keep a detailed message that
 * explains the last failure; amdim_strerror() only names the code. */
#ifndef AMDIM_COMMON_H
#define AMDIM_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

enum {
    AMDIM_OK = 0,
    AMDIM_E_INVALID = -1,     /* bad argument or option value */
    AMDIM_E_NOMEM = -2,       /* allocation failed */
    AMDIM_E_IO = -3,          /* a system call failed (message has errno text) */
    AMDIM_E_CORRUPT = -4,     /* data is damaged: bad header, failed decode */
    AMDIM_E_TRUNCATED = -5,   /* data ends early */
    AMDIM_E_UNSUPPORTED = -6, /* well-formed but not something we handle */
    AMDIM_E_TOO_LARGE = -7,   /* exceeds a configured limit */
    AMDIM_E_EXISTS = -8,      /* refusing to overwrite */
    AMDIM_E_NOT_FOUND = -9,   /* named thing does not exist */
    AMDIM_E_LMDB = -10,       /* LMDB reported an error (message has mdb_strerror) */
    AMDIM_E_VERSION = -11,    /* on-disk format version we do not read */
    AMDIM_E_CANCELLED = -12,  /* stopped by a signal or a caller's request */
    AMDIM_E_EMPTY = -13,      /* input has no data at all */
    AMDIM_E_WORKER = -14,     /* a loader process failed or died (message names it) */
    AMDIM_E_PROTOCOL = -15,   /* the other end of a pipe or socket broke the protocol */
};

/* Short, static name of a status code ("corrupt data", ...). Never NULL. */
const char *amdim_strerror(int status);

/* Formats a message into buf (always NUL-terminated, truncated to fit) and
 * returns status, so error paths read `return amdim_fail(buf, n, AMDIM_E_IO, ...)`. */
int amdim_fail(char *buf, size_t n, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* amdim_fail into a handle h whose err member is a char array. */
#define AMDIM_FAIL_IN(h, status, ...) amdim_fail((h)->err, sizeof (h)->err, (status), __VA_ARGS__)
/* Returns from the calling function with the status of call when that is
 * not AMDIM_OK (the message is already where call put it). */
#define AMDIM_TRY(call)                  \
    do {                                 \
        int amdim_try_ = (call);         \
        if (amdim_try_ != AMDIM_OK)      \
            return amdim_try_;           \
    } while (0)

/* Invariants that only a bug can break (never input errors, which are
 * statuses with messages): checked in every build; on failure prints the
 * expression with its file and line to stderr and aborts. */
#define AMDIM_ASSERT(e) ((e) ? (void)0 : amdim_assert_fail(#e, __FILE__, __LINE__))
_Noreturn void amdim_assert_fail(const char *expr, const char *file, int line);

/* Monotonic clock in seconds. */
double amdim_now(void);

/* Number of online CPUs (at least 1). */
int amdim_cpu_count(void);

/* How much memory this process may still allocate: the smaller of
 * /proc/meminfo's MemAvailable and, for each memory cgroup from the
 * process's own up to the root of the hierarchy that has a limit, the
 * limit minus current usage (cgroup v2: memory.max and memory.current;
 * v1: memory.limit_in_bytes and memory.usage_in_bytes). On success returns
 * 0 with the figure in *bytes and, in `why` (may be NULL), the bound that
 * applied, e.g. "MemAvailable 21.3 GiB" or "cgroup memory.max 4.0 GiB,
 * 1.2 GiB in use (/sys/fs/cgroup/app)". Returns AMDIM_E_IO when neither
 * /proc/meminfo nor a cgroup limit can be read and AMDIM_E_CORRUPT when
 * /proc/meminfo has no MemAvailable line, with the reason in `why`. */
int amdim_mem_available(uint64_t *bytes, char *why, size_t whyn);

/* Writes a byte count for people: "1.5 TiB", "4.0 GiB" or "12.5 MiB". */
void amdim_format_bytes(char *buf, size_t n, uint64_t bytes);

/* SIMD instruction sets the CPU paths choose between at run time, each
 * including the ones below it: AVX2 with FMA (every AVX2 CPU has both);
 * AVX-512 F/BW/VL/DQ with VNNI and VBMI (Intel Ice Lake and later, AMD Zen 4
 * and later; Skylake-X and Cascade Lake, without VBMI, get AVX2). */
typedef enum { AMDIM_SIMD_SCALAR = 0, AMDIM_SIMD_AVX2 = 1, AMDIM_SIMD_AVX512 = 2 } amdim_simd;

/* The best level this CPU supports, capped by the environment variable
 * AMDIM_SIMD: "scalar" forces the plain C oracle, "avx2" stops below
 * AVX-512. Handles call this once when they are created and keep the
 * answer. */
amdim_simd amdim_simd_detect(void);
/* "scalar", "avx2" or "avx512". */
const char *amdim_simd_name(amdim_simd level);

/* For command-line tools: parses a whole decimal integer in [lo, hi]. On
 * failure prints "<prog>: <name> must be an integer in lo..hi, got 's'" and
 * a --help hint to stderr and returns -1; 0 otherwise. */
int amdim_cli_int(const char *prog, const char *name, const char *s, long long lo, long long hi, long long *out);

/* Progress reporting for long commands. On a terminal it redraws one line
 * (`label: done/total  rate/s  ETA`); otherwise it prints a plain line every
 * `interval` seconds. Writes to the FILE given at init (normally stderr). */
typedef struct {
    void *stream;      /* FILE * */
    const char *label; /* e.g. "amdim-pack" */
    const char *unit;  /* e.g. "images" */
    int is_tty;
    double interval;   /* seconds between plain lines */
    double start, last;
    int drawn;         /* a terminal line is on screen */
} amdim_progress;

void amdim_progress_init(amdim_progress *p, void *stream, const char *label,
                         const char *unit, double interval);
/* Reports `done` of `total` (total 0 = unknown). Cheap to call often. */
void amdim_progress_update(amdim_progress *p, uint64_t done, uint64_t total);
/* Clears the terminal line if one is drawn (call before printing other lines). */
void amdim_progress_clear(amdim_progress *p);
/* Prints the final line with the overall rate. */
void amdim_progress_finish(amdim_progress *p, uint64_t done);

#endif
