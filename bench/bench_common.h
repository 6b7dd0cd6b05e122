/* Shared by the bench programs: the header line and a synthetic
 * ImageNet-like JPEG corpus. */
#ifndef AMDIM_BENCH_COMMON_H
#define AMDIM_BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Prints "# <name>: <cpu model>, N cores, <build type>, <date>". */
void bench_header(FILE *f, const char *name);

typedef struct {
    uint64_t files;
    uint64_t bytes;
    double mean_kb;
    int width, height;
} bench_corpus_stats;

/* Writes `count` JPEGs of w x h into dir/<class>/ (classes = 10). Content is
 * smooth shapes plus sensor-like noise, tuned so that quality 90 gives file
 * sizes near ImageNet's (~110 KB at 500x375). Deterministic. */
int bench_make_corpus(const char *dir, int count, int w, int h, int quality, bench_corpus_stats *st);
/* Images first .. first + count - 1 of that corpus (the same files), so
 * that several processes can write one corpus. */
int bench_make_corpus_range(const char *dir, int first, int count, int w, int h, int quality, bench_corpus_stats *st);

#include "amdim_dataset.h"
#include "amdim_image.h"

/* Records held in memory. */
typedef struct {
    amdim_record *rec;
    int n;
} bench_records;

void bench_add_record(bench_records *c, amdim_record r);
/* Adds every JPEG under dir (recursively, in name order) as a record. */
void bench_load_jpegs(bench_records *c, const char *dir, amdim_codec *codec);

#endif
