/* Small helpers shared by the test programs: checks, temporary
 * directories, fixture writers and running the command-line tools. */
#ifndef AMDIM_TESTUTIL_H
#define AMDIM_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define TEST_SKIP 77

extern int test_failures;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
            test_failures++;                                                    \
        }                                                                       \
    } while (0)

/* Like CHECK but stops the test program. */
#define REQUIRE(cond, ...)                                                      \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: requirement failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

/* Prints "<name>: N checks failed" or "<name>: ok" and returns the exit code. */
int test_finish(const char *name);

/* Creates a fresh directory under $TMPDIR (or /tmp); removed by test_cleanup. */
const char *test_tmpdir(void);
void test_cleanup(void);
/* Returns "<tmpdir>/<rel>" in a static rotating buffer. */
const char *test_path(const char *rel);
void test_mkdirs(const char *path);
void test_write_file(const char *path, const void *data, size_t len);
/* Reads a whole file (malloc'd, NUL-terminated); NULL if missing. */
char *test_read_file(const char *path, size_t *len);
int test_exists(const char *path);

/* A deterministic test pattern: smooth gradients plus a little texture. */
void test_pattern(uint8_t *rgb, int w, int h, int channels, unsigned seed);
/* Writes a JPEG of the given pixels (channels 1 or 3; 4 = CMYK bytes). */
void test_write_jpeg(const char *path, const uint8_t *px, int w, int h, int channels, int quality);
/* Encodes a JPEG into a malloc'd buffer. */
uint8_t *test_encode_jpeg(const uint8_t *px, int w, int h, int channels, int quality, size_t *len);
void test_write_png(const char *path, const uint8_t *rgb, int w, int h);

/* Runs argv[0] with stdout and stderr captured into malloc'd strings.
 * Returns the raw wait status. */
int test_run(char *const argv[], char **out, char **err);

/* A CIFAR-10 style dataset at lmdb_path: 5 classes of stripe patterns,
 * 32x32 RGB, `train` and `test` records in splits of those names. */
void test_make_stripes(const char *lmdb_path, int train, int test);

/* A tiny 32 px model (ndf 4, n_rkhs 32, depth 1, MLP hidden 16) for
 * checkpoint tests; exits the test on failure. */
struct amdim_model;
struct amdim_model *test_tiny_model(int use_bn, uint64_t seed);

/* Random inputs of one training step for batch B <= 4 (the GPU parity
 * tests): normalised float views x1, x2 (B, 3, size, size), uint8 views u1,
 * u2 of the same size, labels (one unlabelled), 5x5 source locations (2B)
 * and 0/1 dropout masks (2B x R, 2B x hidden), drawn from rng. */
typedef struct {
    float *x1, *x2, *mask_in, *mask_hidden;
    uint8_t *u1, *u2;
    int32_t labels[4], src5[8];
} test_step_inputs;
void test_step_inputs_make(test_step_inputs *t, void *rng, int B, int size, int R, int hidden);
void test_step_inputs_free(test_step_inputs *t);

/* A one-rank process group (rank 0 of 1) with force set, so a model runs
 * its collective path at size 1: the collectives are copies (a sum over
 * one rank, a gather of one block, a broadcast from itself). Its steps
 * must equal those of a model without a group bit for bit. */
struct amdim_comm;
void test_single_rank_comm(struct amdim_comm *c);

#endif

/* `load_argv | peek_argv` with both processes in a new process group;
 * outputs go to files under the test directory. */
typedef struct {
    int load_pid, peek_pid, pgid;
    char load_err[512], peek_out[512], peek_err[512];
    int load_status, peek_status;
} test_pipeline;

void test_pipeline_start(test_pipeline *p, char *const load_argv[], char *const peek_argv[]);
/* If non-zero, the consumer runs with RLIMIT_FSIZE at this many bytes (a
 * "full disk" for its files) and SIGXFSZ ignored. */
extern unsigned long test_pipeline_consumer_fsize;
/* Waits for both; returns seconds waited. */
double test_pipeline_wait(test_pipeline *p);
/* Pid of loader worker w, read from the loader's stderr ("worker w pid N");
 * waits up to 10 s for it. -1 if it never appears. */
int test_pipeline_worker_pid(test_pipeline *p, int w);
/* Value of "key: " in a captured file, or NULL (static buffer). */
const char *test_file_value(const char *path, const char *key);
