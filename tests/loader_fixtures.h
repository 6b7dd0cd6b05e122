/* Datasets the loader tests run on, made with the packer. */
#ifndef AMDIM_LOADER_FIXTURES_H
#define AMDIM_LOADER_FIXTURES_H

#include <stdlib.h>
#include <string.h>

#include "amdim_pack.h"
#include "testutil.h"

/* A CIFAR-10-style raw dataset of n 32x32 records at `out`. */
static inline void fixture_raw(const char *out, int n)
{
    size_t rec = 3073;
    uint8_t *b = malloc(rec * (size_t)n);
    for (int i = 0; i < n; i++) {
        b[rec * i] = (uint8_t)(i % 10);
        test_pattern(b + rec * i + 1, 32, 32, 3, (unsigned)i); /* planes: any bytes will do */
    }
    char bin[4400];
    snprintf(bin, sizeof bin, "%s.bin", out);
    test_write_file(bin, b, rec * (size_t)n);
    free(b);
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_CIFAR10;
    o.src = bin;
    o.out = out;
    amdim_pack_summary s;
    char err[1024];
    REQUIRE(amdim_pack_run(&o, &s, err, sizeof err) == 0, "fixture: %s", err);
}

/* An imagefolder JPEG dataset of n images (about 80x60) at `out`. */
static inline void fixture_jpeg(const char *out, int n)
{
    char dir[4400], p[4500];
    snprintf(dir, sizeof dir, "%s.src", out);
    uint8_t *px = malloc(100 * 80 * 3);
    for (int i = 0; i < n; i++) {
        snprintf(p, sizeof p, "%s/c%d", dir, i % 3);
        test_mkdirs(p);
        int w = 70 + i % 30, h = 50 + (i * 7) % 30;
        test_pattern(px, w, h, 3, (unsigned)i);
        snprintf(p, sizeof p, "%s/c%d/%04d.jpg", dir, i % 3, i);
        test_write_jpeg(p, px, w, h, 3, 85);
    }
    free(px);
    amdim_pack_options o = {0};
    o.format = AMDIM_PACK_IMAGEFOLDER;
    o.src = dir;
    o.out = out;
    amdim_pack_summary s;
    char err[1024];
    REQUIRE(amdim_pack_run(&o, &s, err, sizeof err) == 0, "fixture: %s", err);
}

#endif
