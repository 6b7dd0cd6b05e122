/* The delivery check (amdim_loader.h): what a consumer received against
 * what the seed dictates - every record once per epoch, every batch the
 * records it must hold - and a digest of everything delivered. */
#include "amdim_loader.h"

#include <stdlib.h>
#include <string.h>

struct amdim_delivery {
    amdim_loader *l;
    uint64_t records;
    size_t words;
    uint64_t *seen, *expect; /* records seen this epoch (bits); one batch's expected records */
    int64_t epoch;           /* the epoch being received, -1 before the first batch */
    uint64_t first_index, last_index;
    amdim_delivery_counts c;
};

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

amdim_delivery *amdim_delivery_new(amdim_loader *l)
{
    const amdim_loader_info *in = amdim_loader_get_info(l);
    amdim_delivery *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->l = l;
    d->records = in->records;
    d->words = (in->records + 63) / 64;
    d->seen = calloc(d->words ? d->words : 1, sizeof *d->seen);
    d->expect = malloc((in->batch ? in->batch : 1) * sizeof *d->expect);
    if (!d->seen || !d->expect) {
        amdim_delivery_free(d);
        return NULL;
    }
    d->epoch = -1;
    d->c.digest = 1469598103934665603ull;
    return d;
}

/* The epoch being received is over: which of its batches' records never came. */
static void close_epoch(amdim_delivery *d)
{
    if (d->epoch < 0)
        return;
    for (uint64_t bi = d->first_index; bi <= d->last_index; bi++) {
        uint32_t n = amdim_loader_expected_records(d->l, (uint64_t)d->epoch, bi, d->expect);
        for (uint32_t k = 0; k < n; k++)
            d->c.missing += !(d->seen[d->expect[k] / 64] >> (d->expect[k] % 64) & 1);
    }
    d->c.epochs++;
    memset(d->seen, 0, d->words * sizeof *d->seen);
}

uint64_t amdim_delivery_add(amdim_delivery *d, const amdim_batch *b)
{
    if ((int64_t)b->epoch != d->epoch) {
        close_epoch(d);
        d->epoch = (int64_t)b->epoch;
        d->first_index = b->index;
    }
    d->last_index = b->index;
    uint32_t n = amdim_loader_expected_records(d->l, b->epoch, b->index, d->expect);
    if (n != b->count || memcmp(d->expect, b->records, n * sizeof *d->expect) != 0)
        d->c.mismatched++;
    for (uint32_t k = 0; k < b->count; k++) {
        uint64_t r = b->records[k];
        if (r >= d->records) {
            d->c.mismatched++;
            continue;
        }
        d->c.duplicates += d->seen[r / 64] >> (r % 64) & 1;
        d->seen[r / 64] |= 1ull << (r % 64);
    }
    const amdim_loader_info *in = amdim_loader_get_info(d->l);
    size_t view = (size_t)in->size * in->size * 3;
    uint64_t h = fnv(1469598103934665603ull, &b->epoch, 8);
    h = fnv(h, &b->index, 8);
    h = fnv(h, b->labels, b->count * sizeof *b->labels);
    h = fnv(h, b->records, b->count * sizeof *b->records);
    h = fnv(h, b->view1, b->count * view);
    h = fnv(h, b->view2, b->count * view);
    d->c.digest = fnv(d->c.digest, &h, 8);
    d->c.pairs += b->count;
    d->c.batches++;
    return h;
}

amdim_delivery_counts amdim_delivery_finish(amdim_delivery *d)
{
    close_epoch(d);
    d->epoch = -1;
    return d->c;
}

void amdim_delivery_free(amdim_delivery *d)
{
    if (!d)
        return;
    free(d->seen);
    free(d->expect);
    free(d);
}
