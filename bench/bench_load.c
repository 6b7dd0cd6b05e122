/* bench_load: pairs per second through `amdim-load | amdim-peek` for 1..N
 * workers on an ImageNet-like corpus, next to the decode-only rate of the
 * same images on one core, and the ring's own throughput with a trivial
 * producer (memset) and consumer.
 *
 *   bench_load [--images N] [--workers 1,2] [--batch B] [--epochs E]
 *              [--data DATA.lmdb] [--split S] [--csv]
 * amdim-load and amdim-peek are taken from the directory above this program
 * (the build directory). */
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "amdim_augment.h"
#include "amdim_dataset.h"
#include "amdim_pack.h"
#include "amdim_ring.h"
#include "bench_common.h"

static double decode_rate(const char *data, const char *split)
{
    char err[512];
    amdim_dataset *ds;
    if (amdim_dataset_open(&ds, data, err, sizeof err))
        return 0;
    amdim_split_info info;
    amdim_dataset_split_info(ds, split, &info);
    amdim_codec *c;
    amdim_codec_create(&c);
    amdim_image img = {0};
    uint64_t n = info.records < 400 ? info.records : 400;
    /* touch the records first so the timing is the decoder alone */
    for (uint64_t i = 0; i < n; i++) {
        amdim_record r;
        amdim_dataset_get(ds, split, i, &r);
        volatile uint8_t x = r.payload[r.payload_size / 2];
        (void)x;
    }
    double t0 = amdim_now();
    for (uint64_t i = 0; i < n; i++) {
        amdim_record r;
        amdim_dataset_get(ds, split, i, &r);
        if (r.encoding == AMDIM_ENCODING_JPEG)
            amdim_codec_decode_rgb(c, r.payload, r.payload_size, 0, &img, NULL);
    }
    double dt = amdim_now() - t0;
    amdim_image_free(&img);
    amdim_codec_destroy(c);
    amdim_dataset_close(ds);
    return n / dt;
}

/* Runs the pipeline and returns peek's pairs_per_s. */
static double pipeline(const char *dir, const char *data, const char *split, int workers, int batch, int epochs)
{
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "'%s/amdim-load' --split '%s' --workers %d --batch %d --epochs %d '%s' 2>/dev/null | '%s/amdim-peek' 2>/dev/null",
             dir, split, workers, batch, epochs, data, dir);
    FILE *f = popen(cmd, "r");
    if (!f)
        return 0;
    char line[256];
    double rate = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "pairs_per_s: ", 13) == 0)
            rate = atof(line + 13);
    pclose(f);
    return rate;
}

typedef struct {
    amdim_ring *ring;
    int slots;
    size_t bytes;
} ring_job;

static void *ring_producer(void *arg)
{
    ring_job *j = arg;
    for (int i = 0; i < j->slots; i++) {
        amdim_slot s;
        while (amdim_ring_acquire(j->ring, &s, 100, NULL) == 1) {
        }
        memset(s.view1, i & 255, j->bytes);
        memset(s.view2, i & 255, j->bytes);
        amdim_ring_publish(j->ring);
    }
    amdim_ring_set_state(j->ring, AMDIM_PRODUCER_FINISHED, NULL);
    return NULL;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"images", required_argument, NULL, 'n'}, {"workers", required_argument, NULL, 'w'},
        {"batch", required_argument, NULL, 'b'},  {"epochs", required_argument, NULL, 'e'},
        {"data", required_argument, NULL, 'd'},   {"split", required_argument, NULL, 's'},
        {"csv", no_argument, NULL, 'c'},          {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int images = 600, batch = 32, epochs = 2, csv = 0, c;
    const char *workers_arg = NULL, *data = NULL, *split = "train";
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'n': images = atoi(optarg); break;
        case 'w': workers_arg = optarg; break;
        case 'b': batch = atoi(optarg); break;
        case 'e': epochs = atoi(optarg); break;
        case 'd': data = optarg; break;
        case 's': split = optarg; break;
        case 'c': csv = 1; break;
        case 'h':
            printf("usage: bench_load [--images N] [--workers 1,2] [--batch B] [--epochs E] [--data DATA.lmdb] [--split S] [--csv]\n");
            return 0;
        default: return 2;
        }
    }
    char self[PATH_MAX], dir[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return fprintf(stderr, "bench_load: cannot find myself\n"), 1;
    self[n] = 0;
    snprintf(dir, sizeof dir, "%s", self);
    for (int k = 0; k < 2; k++)
        *strrchr(dir, '/') = 0; /* build/bench/bench_load -> build */
    int wl[64], nw = 0, cores = amdim_cpu_count();
    if (workers_arg) {
        char *s = strdup(workers_arg), *save, *t;
        for (t = strtok_r(s, ",", &save); t && nw < 64; t = strtok_r(NULL, ",", &save))
            wl[nw++] = atoi(t);
        free(s);
    } else {
        for (int w = 1; w <= cores; w++)
            wl[nw++] = w;
    }
    char tmp[] = "/tmp/amdim-bench-load-XXXXXX", path[4200], corpus[4200];
    if (!mkdtemp(tmp))
        return perror("mkdtemp"), 1;
    if (!data) {
        snprintf(corpus, sizeof corpus, "%s/corpus", tmp);
        snprintf(path, sizeof path, "%s/data.lmdb", tmp);
        bench_corpus_stats cs;
        fprintf(stderr, "bench_load: generating and packing %d synthetic 500x375 JPEGs...\n", images);
        if (bench_make_corpus(corpus, images, 500, 375, 90, &cs))
            return fprintf(stderr, "bench_load: corpus failed\n"), 1;
        amdim_pack_options o = {0};
        o.format = AMDIM_PACK_IMAGEFOLDER;
        o.src = corpus;
        o.out = path;
        amdim_pack_summary sum;
        char err[1024];
        if (amdim_pack_run(&o, &sum, err, sizeof err))
            return fprintf(stderr, "bench_load: pack failed: %s\n", err), 1;
        data = path;
    }
    bench_header(stdout, "bench_load");
    double dec = decode_rate(data, split);
    printf("# data: %s split %s; batch %d, %d epochs; decode-only floor %.0f images/s on one core\n", data, split, batch,
           epochs, dec);
    if (csv)
        printf("workers,pairs_per_s,per_worker,per_worker_vs_decode\n");
    else
        printf("%8s %12s %12s %24s\n", "workers", "pairs/s", "per worker", "per worker/decode-only");
    for (int i = 0; i < nw; i++) {
        double r = pipeline(dir, data, split, wl[i], batch, epochs);
        if (csv)
            printf("%d,%.1f,%.1f,%.3f\n", wl[i], r, r / wl[i], r / wl[i] / dec);
        else
            printf("%8d %12.0f %12.0f %24.2f\n", wl[i], r, r / wl[i], r / wl[i] / dec);
        fflush(stdout);
    }
    /* The ring alone: 128 px ImageNet batches of 64 pairs. */
    amdim_ring prod, cons;
    char err[256];
    if (amdim_ring_create(&prod, 3, 64, 128, 128, 3, 0, 1, err, sizeof err) ||
        amdim_ring_attach(&cons, dup(prod.fd), err, sizeof err))
        return fprintf(stderr, "bench_load: ring: %s\n", err), 1;
    ring_job job = {&prod, 400, (size_t)64 * 128 * 128 * 3};
    pthread_t th;
    double t0 = amdim_now();
    pthread_create(&th, NULL, ring_producer, &job);
    amdim_slot s;
    long got = 0, bad = 0;
    for (;;) {
        int rc = amdim_ring_next(&cons, &s, 1000);
        if (rc == 2)
            break;
        if (rc)
            continue;
        bad += s.view1[0] != s.view2[job.bytes - 1];
        amdim_ring_release(&cons);
        got++;
    }
    pthread_join(th, NULL);
    double dt = amdim_now() - t0;
    printf("# ring alone (memset producer, 3 slots of 64 pairs at 128 px = %.1f MB each): %.0f slots/s, %.2f GB/s%s\n",
           2.0 * job.bytes / 1e6, got / dt, got * 2.0 * job.bytes / dt / 1e9, bad ? " (DATA ERRORS)" : "");
    amdim_ring_close(&cons);
    amdim_ring_close(&prod);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_load: could not remove %s\n", tmp);
    return 0;
}
