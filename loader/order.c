/* Epoch permutations and the dealing of batches to workers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_loader.h"
#include "amdim_ring.h"
#include "loader_internal.h"

void amdim_loader_epoch_order(uint64_t seed, uint64_t epoch, uint64_t records, uint64_t *perm)
{
    /* The permutation's stream uses index UINT64_MAX, which no record has,
     * so it never coincides with a sample's augmentation stream. */
    amdim_rng rng;
    amdim_rng_init(&rng, seed, (uint32_t)epoch, UINT64_MAX);
    for (uint64_t i = 0; i < records; i++)
        perm[i] = i;
    for (uint64_t i = records; i > 1; i--) {
        uint64_t j;
        if (i - 1 <= INT32_MAX) {
            j = (uint64_t)amdim_rng_int(&rng, 0, (int)(i - 1));
        } else { /* more than 2^31 records: 64-bit draw (tiny bias is irrelevant at this size) */
            uint64_t x = (uint64_t)amdim_rng_u32(&rng) << 32 | amdim_rng_u32(&rng);
            j = x % i;
        }
        uint64_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}

const char *amdim_loader_preset_for(int encoding, uint32_t width, uint32_t height)
{
    if (encoding == 0 && width && width <= 32 && height && height <= 32)
        return "cifar";
    if (encoding == 0 && width == 96 && height == 96)
        return "stl10";
    return "imagenet";
}

int amdim_loader_worker_batch(uint64_t e0, uint64_t b0, uint64_t epochs, uint64_t nb, uint32_t W, uint32_t w,
                        uint64_t k, uint64_t *e, uint64_t *b)
{
    for (uint64_t ep = e0; ep < e0 + epochs; ep++) {
        uint64_t first = ep == e0 ? b0 : 0;
        uint64_t start = first + (w + W - first % W) % W; /* first b >= first with b % W == w */
        if (start >= nb)
            continue;
        uint64_t count = (nb - start + W - 1) / W;
        if (k < count) {
            *e = ep;
            *b = start + k * W;
            return 1;
        }
        k -= count;
    }
    return 0;
}

int amdim_loader_kv(const char *line, const char *key, char *buf, size_t n)
{
    size_t kl = strlen(key);
    const char *p = line;
    while ((p = strstr(p, key)) != NULL) {
        if ((p == line || p[-1] == ' ') && p[kl] == '=') {
            p += kl + 1;
            size_t m = strcspn(p, " \n");
            if (m >= n)
                m = n - 1;
            memcpy(buf, p, m);
            buf[m] = 0;
            return 1;
        }
        p += kl;
    }
    return 0;
}

/* An environment variable holding a whole decimal number in [lo, hi]. */
static int env_int(const char *name, long lo, long hi, int *out)
{
    const char *v = getenv(name);
    char *end;
    if (!v || !*v)
        return 0;
    long x = strtol(v, &end, 10);
    if (*end || x < lo || x > hi)
        return 0;
    *out = (int)x;
    return 1;
}

int amdim_loader_parse_shard(const char *s, int *rank, int *size, char *err, size_t n)
{
    static const char *launchers[][2] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"},
                                         {"PMIX_RANK", "OMPI_COMM_WORLD_SIZE"},
                                         {"PMI_RANK", "PMI_SIZE"},
                                         {"SLURM_PROCID", "SLURM_NTASKS"}};
    int r = 0, z = 1;
    if (strcmp(s, "auto") == 0) {
        for (size_t i = 0; i < sizeof launchers / sizeof *launchers; i++)
            if (env_int(launchers[i][0], 0, 65535, &r) && env_int(launchers[i][1], 1, 65536, &z))
                break;
            else
                r = 0, z = 1;
    } else {
        char *end;
        long a = strtol(s, &end, 10), b = -1;
        if (end != s && *end == '/')
            b = strtol(end + 1, &end, 10);
        if (*end || a < 0 || b < 1 || b > 65536 || a >= b)
            return amdim_fail(err, n, AMDIM_E_INVALID, "--shard must be R/N with 0 <= R < N <= 65536, or auto, got '%s'", s);
        r = (int)a, z = (int)b;
    }
    if (r >= z)
        return amdim_fail(err, n, AMDIM_E_INVALID, "--shard auto: rank %d of %d from the environment", r, z);
    *rank = r;
    *size = z;
    return AMDIM_OK;
}

void amdim_loader_describe_worker(int pid, uint32_t phase, const char **state, const char **doing)
{
    char st = '?', path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = pid > 0 ? fopen(path, "r") : NULL;
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        const char *p = strrchr(buf, ')'); /* the name in parentheses may hold anything */
        st = p && p[1] == ' ' && p[2] ? p[2] : '?';
    }
    *doing = phase == AMDIM_PHASE_READ ? "in a read" : phase == AMDIM_PHASE_DECODE ? "in a decode"
           : phase == AMDIM_PHASE_SLOT ? "waiting for a free slot" : "starting";
    *state = st == 'T' || st == 't' ? "stopped (SIGSTOP?)" : st == 'D' ? "in uninterruptible I/O"
           : st == 'R' ? "running" : st == 'S' ? "sleeping" : st == 'Z' ? "a zombie" : "in an unknown state";
}

double amdim_loader_stall_seconds(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        v = getenv("AMDIM_STALL_SECONDS");
    double s = v && *v ? strtod(v, NULL) : 60.0;
    return s > 0 ? s : 0;
}
