/* A fake same-user loader: any process of the user, or a loader worker
 * (the process that decodes untrusted JPEGs), has a running pipeline's ring
 * read-write. Here the test opens the ring through /proc/<worker>/fd as
 * such a process would and, once amdim-peek has attached, rewrites the
 * ring's geometry, tries to shrink it, corrupts the labels and the head of
 * published slots, and leaves an unterminated failure message. The
 * consumer must keep its own geometry (the run completes, the same batches
 * as an undisturbed run) or report an error naming the ring, never crash.
 * Arguments: amdim-load and amdim-peek binaries. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdim_ring.h"
#include "loader_fixtures.h"

static const char *load_bin, *peek_bin;

static int code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

/* Opens ring w read-write through the worker's descriptors, as any process
 * of the same user can, and maps it. Returns the fd, or -1. */
static int fake_open_ring(int pid, uint32_t w, uint8_t **map, size_t *bytes)
{
    char dir[64], link[256], path[384];
    snprintf(dir, sizeof dir, "/proc/%d/fd", pid);
    DIR *d = opendir(dir);
    if (!d && errno == EACCES) {
        printf("test_fault_ring: SKIP: %s cannot be read (%s)\n", dir, strerror(errno));
        exit(TEST_SKIP);
    }
    if (!d)
        return -1;
    int found = -1;
    struct dirent *e;
    while (found < 0 && (e = readdir(d))) {
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0)
            continue;
        link[n] = 0;
        if (strncmp(link, "/memfd:amdim-ring", 17) != 0)
            continue;
        int fd = open(path, O_RDWR | O_CLOEXEC);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) != 0) {
            if (fd >= 0)
                close(fd);
            continue;
        }
        uint8_t *p = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED && ((amdim_ring_header *)p)->ring_id == w) {
            *map = p;
            *bytes = (size_t)sb.st_size;
            found = fd;
        } else {
            if (p != MAP_FAILED)
                munmap(p, (size_t)sb.st_size);
            close(fd);
        }
    }
    closedir(d);
    return found;
}

/* Waits until amdim-peek has attached (its summary line is out). */
static int peek_attached(const test_pipeline *p)
{
    for (int i = 0; i < 1000; i++) {
        char *s = test_read_file(p->peek_err, NULL);
        int ok = s && strstr(s, "workers, seed");
        free(s);
        if (ok)
            return 1;
        usleep(10000);
    }
    return 0;
}

static int peek_done(test_pipeline *p)
{
    return waitpid(p->peek_pid, &p->peek_status, WNOHANG) == p->peek_pid;
}

typedef enum { SLOT_COUNT, SLOT_BYTES, OFF_VIEW1, SHRINK, LABELS, HEAD, MESSAGE } attack;

typedef struct {
    const char *name;
    attack what;
    int completes;      /* the run must complete as if nothing happened */
    const char *words;  /* else: peek fails with these words */
} config;

static const config configs[] = {
    {"slot_count set to 0", SLOT_COUNT, 1, NULL},
    {"slot_bytes set to 2^40", SLOT_BYTES, 1, NULL},
    {"off_view1 set to 2^40", OFF_VIEW1, 1, NULL},
    {"ftruncate to one page", SHRINK, 1, NULL},
    {"labels of published slots set to INT32_MAX", LABELS, 0, "label 2147483647, outside -1..9"},
    {"head moved 1000 slots ahead", HEAD, 0, "more than its 2 slots"},
    {"an unterminated failure message", MESSAGE, 0, "never arrived: AAAA"},
};

/* Longest run of 'A' in s. */
static size_t longest_a(const char *s)
{
    size_t best = 0, run = 0;
    for (; s && *s; s++) {
        run = *s == 'A' ? run + 1 : 0;
        if (run > best)
            best = run;
    }
    return best;
}

static void run_case(const config *c, const char *data, const char *ref_digest)
{
    char *la[] = {(char *)load_bin, "--workers", "1", "--batch", "10", "--epochs", "8", "--seed", "3",
                  "--slots", "2", (char *)data, NULL};
    char *pa[] = {(char *)peek_bin, "--delay-ms", "25", NULL};
    test_pipeline p;
    test_pipeline_start(&p, la, pa);
    int wpid = test_pipeline_worker_pid(&p, 0);
    REQUIRE(wpid > 0, "%s: no worker pid in the loader's output", c->name);
    REQUIRE(peek_attached(&p), "%s: amdim-peek did not attach", c->name);
    uint8_t *m = NULL;
    size_t bytes = 0;
    int fd = fake_open_ring(wpid, 0, &m, &bytes);
    REQUIRE(fd >= 0, "%s: cannot open ring 0 through /proc/%d/fd", c->name, wpid);
    amdim_ring_header *h = (amdim_ring_header *)m;
    uint64_t huge = 1ull << 40;
    int peek_reaped = 0;
    switch (c->what) {
    case SLOT_COUNT: h->slot_count = 0; break;
    case SLOT_BYTES: h->slot_bytes = huge; break;
    case OFF_VIEW1: h->off_view1 = huge; break;
    case SHRINK: {
        int rc = ftruncate(fd, 4096);
        CHECK(rc != 0 && errno == EPERM, "%s: the ring's memfd could be shrunk (rc %d: %s)", c->name, rc,
              strerror(errno));
        int seals = fcntl(fd, F_GET_SEALS);
        CHECK(seals >= 0 && (seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) ==
                                (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
              "%s: seals 0x%x", c->name, seals);
        break;
    }
    case LABELS: {
        /* The geometry the ring was made with (the header is intact here). */
        uint32_t n = h->slot_count;
        uint64_t sb = h->slot_bytes, ol = h->off_labels;
        uint32_t batch = h->batch;
        double t0 = amdim_now();
        while (amdim_now() - t0 < 5 && !(peek_reaped = peek_done(&p))) {
            for (uint32_t i = 0; i < n; i++)
                for (uint32_t k = 0; k < batch; k++) {
                    int32_t big = INT32_MAX;
                    memcpy(m + 4096 + i * sb + ol + 4 * k, &big, 4);
                }
            usleep(1000);
        }
        break;
    }
    case HEAD:
        /* Stopped first: the worker's next publish would store its own head. */
        kill(wpid, SIGSTOP);
        atomic_fetch_add(&h->head, 1000);
        break;
    case MESSAGE:
        /* Stop the worker, then claim it failed with a message that fills
         * the rest of the header page. */
        kill(wpid, SIGSTOP);
        memset(h->error, 'A', 4096 - offsetof(amdim_ring_header, error));
        atomic_store(&h->producer_state, AMDIM_PRODUCER_FAILED);
        atomic_fetch_add(&h->event, 1);
        break;
    }
    if (!peek_reaped)
        while (waitpid(p.peek_pid, &p.peek_status, 0) < 0 && errno == EINTR) {
        }
    if (c->what == MESSAGE || c->what == HEAD)
        kill(wpid, SIGCONT);
    waitpid(p.load_pid, &p.load_status, 0);
    munmap(m, bytes);
    close(fd);
    char *perr = test_read_file(p.peek_err, NULL), *lerr = test_read_file(p.load_err, NULL);
    int pc = code(p.peek_status), lc = code(p.load_status);
    CHECK(pc < 128 && lc < 128, "%s: peek exit %d, loader exit %d (a signal): %s / %s", c->name, pc, lc,
          perr ? perr : "", lerr ? lerr : "");
    if (c->completes) {
        const char *v = test_file_value(p.peek_out, "digest");
        CHECK(pc == 0 && lc == 0 && v && strcmp(v, ref_digest) == 0,
              "%s: peek exit %d, loader exit %d, digest %s (want %s): %s / %s", c->name, pc, lc, v ? v : "-",
              ref_digest, perr ? perr : "", lerr ? lerr : "");
    } else {
        CHECK(pc == 1 && perr && strstr(perr, c->words), "%s: peek exit %d, want 1 with '%s': %s", c->name, pc,
              c->words, perr ? perr : "");
        if (c->what != MESSAGE)
            CHECK(perr && strstr(perr, "ring 0 (worker pid"), "%s: the error does not name the ring: %s", c->name,
                  perr ? perr : "");
        CHECK(longest_a(perr) < AMDIM_RING_ERROR_MAX && longest_a(lerr) < AMDIM_RING_ERROR_MAX,
              "%s: a message of %zu / %zu bytes was read past the ring's error field", c->name, longest_a(perr),
              longest_a(lerr));
    }
    const char *failed = perr ? strstr(perr, "delivery failed") : NULL;
    printf("test_fault_ring: %s: peek exit %d, loader exit %d%s%.300s\n", c->name, pc, lc, failed ? ": " : "",
           failed ? failed : "");
    free(perr);
    free(lerr);
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 3, "usage: test_fault_ring AMDIM-LOAD AMDIM-PEEK");
    load_bin = argv[1];
    peek_bin = argv[2];
    char raw[4200];
    snprintf(raw, sizeof raw, "%s", test_path("raw.lmdb"));
    fixture_raw(raw, 100);

    /* The undisturbed run's digest. */
    char *la[] = {(char *)load_bin, "--workers", "1", "--batch", "10", "--epochs", "8", "--seed", "3",
                  "--slots", "2", raw, NULL};
    char *pa[] = {(char *)peek_bin, NULL};
    test_pipeline p;
    test_pipeline_start(&p, la, pa);
    test_pipeline_wait(&p);
    REQUIRE(code(p.peek_status) == 0 && code(p.load_status) == 0, "reference run failed");
    const char *v = test_file_value(p.peek_out, "digest");
    char ref[64];
    snprintf(ref, sizeof ref, "%s", v ? v : "?");

    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
        run_case(&configs[i], raw, ref);
    return test_finish("test_fault_ring");
}
