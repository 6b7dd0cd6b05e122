/* Decompression bombs and pathological images in the loader's augmenter:
 * a record whose header says 552x40 holding a JPEG whose SOF says
 * 65495x63447 is refused before anything is allocated (full, region and
 * scaled decodes, and the test view); a record header beyond the pixel limit
 * is refused; a 65500x3 JPEG's test view is refused instead of resized to
 * 3.2 million x 146 pixels. Each case runs in a child with its address
 * space limited to 1 GiB (not under AddressSanitizer, which reserves more),
 * so that an allocation for the bomb fails instead of taking the machine. */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "amdim_augment.h"
#include "testutil.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

enum { PAIR_FULL, PAIR_REGION, PAIR_SCALED, TEST_VIEW };
static const char *mode_name[] = {"pair (full decode)", "pair (region decode)", "pair (scaled decode)", "test view"};

/* Runs one augmenter call in a child; returns its status, the message in
 * err. */
static int run_case(const amdim_record *rec, int mode, double *seconds, char *err, size_t n)
{
    int fds[2];
    REQUIRE(pipe(fds) == 0, "pipe");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    REQUIRE(pid >= 0, "fork");
    if (pid == 0) {
        close(fds[0]);
        if (!UNDER_ASAN) { /* 1 GiB beyond what is mapped already (the CUDA and NCCL libraries are large) */
            unsigned long pages = 0;
            FILE *f = fopen("/proc/self/statm", "r");
            if (f && fscanf(f, "%lu", &pages) != 1)
                pages = 0;
            if (f)
                fclose(f);
            rlim_t lim = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + ((rlim_t)1 << 30);
            struct rlimit rl = {lim, lim};
            setrlimit(RLIMIT_AS, &rl);
        }
        amdim_augment_config cfg;
        amdim_augment_preset("imagenet", &cfg);
        amdim_augmenter *a;
        int st = amdim_augment_create(&a, &cfg);
        if (st == 0) {
            amdim_decode_options d = {.region = mode != PAIR_FULL,
                                      .scales = mode == PAIR_SCALED ? AMDIM_DECODE_SCALES_DEFAULT : 0};
            amdim_augment_set_decode(a, &d);
            size_t view = (size_t)cfg.size * cfg.size * 3;
            uint8_t *v1 = malloc(view), *v2 = malloc(view);
            st = mode == TEST_VIEW ? amdim_augment_test_view(a, rec, v1)
                                   : amdim_augment_pair(a, rec, 1, 0, 0, v1, v2, NULL);
        }
        const char *msg = a ? amdim_augment_error(a) : "cannot create the augmenter";
        (void)!write(fds[1], &st, sizeof st);
        (void)!write(fds[1], msg, strlen(msg) + 1);
        _exit(0);
    }
    close(fds[1]);
    int st = 1;
    memset(err, 0, n);
    if (read(fds[0], &st, sizeof st) != (ssize_t)sizeof st) {
        st = 1;
        snprintf(err, n, "child died");
    } else {
        ssize_t got = read(fds[0], err, n - 1);
        (void)got;
    }
    close(fds[0]);
    int ws;
    waitpid(pid, &ws, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (WIFSIGNALED(ws))
        snprintf(err, n, "child killed by signal %d", WTERMSIG(ws));
    return st;
}

/* Offset of the SOF0..SOF2 marker's height field in a JPEG, or 0. */
static size_t sof_offset(const uint8_t *j, size_t n)
{
    for (size_t i = 2; i + 9 < n; i++)
        if (j[i] == 0xFF && (j[i + 1] == 0xC0 || j[i + 1] == 0xC1 || j[i + 1] == 0xC2))
            return i + 5;
    return 0;
}

int main(void)
{
    char err[1024];
    double secs;
    /* The bomb: a real 552x40 JPEG whose SOF is rewritten to 65495x63447. */
    uint8_t *px = malloc(552 * 40 * 3);
    test_pattern(px, 552, 40, 3, 7);
    size_t jlen;
    uint8_t *jpeg = test_encode_jpeg(px, 552, 40, 3, 90, &jlen);
    free(px);
    size_t sof = sof_offset(jpeg, jlen);
    REQUIRE(sof, "no SOF in the test JPEG");
    jpeg[sof] = 63447 >> 8, jpeg[sof + 1] = 63447 & 255;     /* height */
    jpeg[sof + 2] = 65495 >> 8, jpeg[sof + 3] = 65495 & 255; /* width */
    amdim_record bomb = {.label = 0, .aux_label = -1, .width = 552, .height = 40, .channels = 3,
                         .encoding = AMDIM_ENCODING_JPEG, .payload = jpeg, .payload_size = (uint32_t)jlen};
    for (int mode = PAIR_FULL; mode <= TEST_VIEW; mode++) {
        int st = run_case(&bomb, mode, &secs, err, sizeof err);
        CHECK(st == AMDIM_E_CORRUPT && strstr(err, "65495x63447") && strstr(err, "552x40"),
              "bomb, %s: status %d: %s", mode_name[mode], st, err);
    }
    free(jpeg);

    /* A header beyond the pixel limit, whatever the payload holds. */
    uint8_t tiny[4] = {0xFF, 0xD8, 0xFF, 0xD9};
    amdim_record huge = {.label = 0, .aux_label = -1, .width = 1u << 20, .height = 1u << 20, .channels = 3,
                         .encoding = AMDIM_ENCODING_JPEG, .payload = tiny, .payload_size = sizeof tiny};
    for (int mode = PAIR_FULL; mode <= TEST_VIEW; mode++) {
        int st = run_case(&huge, mode, &secs, err, sizeof err);
        CHECK(st == AMDIM_E_TOO_LARGE && strstr(err, "more than the limit"), "huge header, %s: status %d: %s",
              mode_name[mode], st, err);
    }

    /* A strip: 65500x3, a valid 1-2 KB JPEG under the pixel limit. */
    px = malloc(65500 * 3 * 3);
    memset(px, 128, 65500 * 3 * 3);
    uint8_t *strip = test_encode_jpeg(px, 65500, 3, 3, 90, &jlen);
    free(px);
    amdim_record s = {.label = 0, .aux_label = -1, .width = 65500, .height = 3, .channels = 3,
                      .encoding = AMDIM_ENCODING_JPEG, .payload = strip, .payload_size = (uint32_t)jlen};
    int st = run_case(&s, TEST_VIEW, &secs, err, sizeof err);
    CHECK(st == AMDIM_E_TOO_LARGE && strstr(err, "aspect ratio") && secs < 5, "strip test view: status %d in %.1f s: %s",
          st, secs, err);
    /* Its training pair is cheap (crops of at most the image) and works. */
    st = run_case(&s, PAIR_FULL, &secs, err, sizeof err);
    CHECK(st == 0 && secs < 5, "strip pair: status %d in %.1f s: %s", st, secs, err);
    free(strip);
    return test_finish("test_fault_decode");
}
