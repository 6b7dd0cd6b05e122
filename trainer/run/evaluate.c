/* Evaluation, embedding and the mixture pictures (see amdim_run.h): all
 * walk a split in record order through the preset's test transform, one
 * batch at a time. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "amdim_augment.h"
#include "amdim_dataset.h"
#include "amdim_image.h"
#include "amdim_run.h"
#include "output_internal.h"

/* ---- the test-batch iterator ------------------------------------------------ */

typedef struct {
    amdim_dataset *ds;
    amdim_augmenter *aug;
    const char *path, *split;
    amdim_split_info info;
    int batch;
    size_t view;      /* bytes of one test view */
    uint8_t *images;  /* (batch, S, S, 3) */
    int32_t *labels;
    uint64_t next;    /* next record */
} test_batches;

static void test_batches_close(test_batches *t)
{
    free(t->images);
    free(t->labels);
    amdim_augment_destroy(t->aug);
    amdim_dataset_close(t->ds);
    memset(t, 0, sizeof *t);
}

static int test_batches_open(test_batches *t, const amdim_model *m, const char *path, const char *split,
                             const char *preset, int batch, char *err, size_t n)
{
    memset(t, 0, sizeof *t);
    t->path = path;
    t->split = split;
    t->batch = batch;
    char why[1024];
    int st = amdim_dataset_open(&t->ds, path, why, sizeof why);
    if (st)
        return amdim_fail(err, n, st, "%s", why);
    if ((st = amdim_dataset_split_info(t->ds, split, &t->info))) {
        amdim_fail(err, n, st, "%s", amdim_dataset_error(t->ds));
        test_batches_close(t);
        return st;
    }
    amdim_augment_config ac;
    if (amdim_augment_preset(preset, &ac) || ac.size != amdim_model_get_config(m)->encoder_size) {
        test_batches_close(t);
        return amdim_fail(err, n, AMDIM_E_INVALID, "preset %s does not make the %d px images the encoder takes", preset,
                          amdim_model_get_config(m)->encoder_size);
    }
    t->view = (size_t)ac.size * ac.size * 3;
    t->images = malloc(t->view * (size_t)batch);
    t->labels = malloc((size_t)batch * sizeof *t->labels);
    if (!t->images || !t->labels || (st = amdim_augment_create(&t->aug, &ac))) {
        test_batches_close(t);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for test batches of %d", batch);
    }
    return AMDIM_OK;
}

/* The next batch into t->images / t->labels: *count images (0 at the end). */
static int test_batches_next(test_batches *t, int *count, char *err, size_t n)
{
    int nb = 0;
    for (; t->next < t->info.records && nb < t->batch; t->next++, nb++) {
        amdim_record rec;
        int st = amdim_dataset_get(t->ds, t->split, t->next, &rec);
        if (st)
            return amdim_fail(err, n, st, "%s", amdim_dataset_error(t->ds));
        if ((st = amdim_augment_test_view(t->aug, &rec, t->images + (size_t)nb * t->view)))
            return amdim_fail(err, n, st, "%s split %s record %llu: %s", t->path, t->split,
                              (unsigned long long)t->next, amdim_augment_error(t->aug));
        t->labels[nb] = rec.label;
    }
    *count = nb;
    return AMDIM_OK;
}

static int argmax(const float *row, int k)
{
    int best = 0;
    for (int c = 1; c < k; c++)
        best = row[c] > row[best] ? c : best;
    return best;
}

/* ---- evaluation ---------------------------------------------------------------- */

int amdim_evaluate_dataset(amdim_model *m, const char *path, const char *split, const char *preset, int refresh,
                           int batch, amdim_eval_result *r, char *err, size_t n)
{
    memset(r, 0, sizeof *r);
    int K = amdim_model_get_config(m)->n_classes, st, nb;
    float *lm = malloc((size_t)batch * K * sizeof(float)), *ll = malloc((size_t)batch * K * sizeof(float));
    if (!lm || !ll) {
        free(lm);
        free(ll);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
    }
    test_batches t;
    /* pass 0: refresh BatchNorm statistics on the first `refresh` batches; pass 1: measure */
    uint64_t hit_m = 0, hit_l = 0, counted = 0;
    for (int pass = 0; pass < 2; pass++) {
        if ((st = test_batches_open(&t, m, path, split, preset, batch, err, n)))
            break;
        for (int b = 0; pass == 1 || b < refresh; b++) {
            if ((st = test_batches_next(&t, &nb, err, n)) || nb == 0)
                break;
            if (pass == 0) {
                if (nb >= 2 && (st = amdim_model_refresh_bn(m, t.images, nb))) {
                    amdim_fail(err, n, st, "%s", amdim_model_error(m));
                    break;
                }
                continue;
            }
            if ((st = amdim_model_evaluate(m, t.images, nb, NULL, lm, ll))) {
                amdim_fail(err, n, st, "%s", amdim_model_error(m));
                break;
            }
            for (int k = 0; k < nb; k++) {
                if (t.labels[k] < 0 || t.labels[k] >= K)
                    continue;
                hit_m += argmax(lm + (size_t)k * K, K) == t.labels[k];
                hit_l += argmax(ll + (size_t)k * K, K) == t.labels[k];
                counted++;
            }
        }
        test_batches_close(&t);
        if (st)
            break;
    }
    free(lm);
    free(ll);
    if (st)
        return st;
    r->images = counted;
    r->acc_mlp = counted ? (double)hit_m / counted : 0;
    r->acc_lin = counted ? (double)hit_l / counted : 0;
    if (counted == 0)
        return amdim_fail(err, n, AMDIM_E_EMPTY, "split %s of %s has no labelled records to evaluate on", split, path);
    return AMDIM_OK;
}

/* ---- embedding ------------------------------------------------------------------- */

int amdim_embed_dataset(amdim_model *m, const char *path, const char *split, const char *preset, int batch,
                        float **features, int32_t **labels, uint64_t *records, char *err, size_t n)
{
    *features = NULL;
    *labels = NULL;
    *records = 0;
    int R = amdim_model_get_config(m)->n_rkhs, st, nb;
    test_batches t;
    if ((st = test_batches_open(&t, m, path, split, preset, batch, err, n)))
        return st;
    uint64_t N = t.info.records;
    float *f = malloc((N ? N : 1) * (size_t)R * sizeof(float));
    int32_t *lab = malloc((N ? N : 1) * sizeof *lab);
    if (!f || !lab)
        st = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for %llu features", (unsigned long long)N);
    for (uint64_t i0 = 0; st == AMDIM_OK; i0 += (uint64_t)nb) {
        if ((st = test_batches_next(&t, &nb, err, n)) || nb == 0)
            break;
        memcpy(lab + i0, t.labels, (size_t)nb * sizeof *lab);
        if ((st = amdim_model_evaluate(m, t.images, nb, f + i0 * (uint64_t)R, NULL, NULL)))
            amdim_fail(err, n, st, "%s", amdim_model_error(m));
    }
    test_batches_close(&t);
    if (st) {
        free(f);
        free(lab);
        return st;
    }
    *features = f;
    *labels = lab;
    *records = N;
    return AMDIM_OK;
}

/* ---- mixture pictures -------------------------------------------------------------- */

/* 16 colours that stay apart (components 0..15). */
static const uint8_t palette[16][3] = {
    {230, 25, 75},  {60, 180, 75},  {255, 225, 25}, {0, 130, 200},  {245, 130, 48}, {145, 30, 180},
    {70, 240, 240}, {240, 50, 230}, {210, 245, 60}, {250, 190, 212}, {0, 128, 128}, {220, 190, 255},
    {170, 110, 40}, {255, 250, 200}, {128, 0, 0},   {0, 0, 128}};

int amdim_mixture_pictures(amdim_model *m, const char *path, const char *split, const char *preset, int count,
                           int batch, const char *png_path, char *err, size_t n)
{
    const amdim_model_config *cfg = amdim_model_get_config(m);
    if (cfg->mixtures < 2)
        return amdim_fail(err, n, AMDIM_E_INVALID, "the model has no mixtures (K = %d): nothing to picture",
                          cfg->mixtures);
    if (count < 1 || count > 1024 || batch < 2)
        return amdim_fail(err, n, AMDIM_E_INVALID, "pictures of 1..1024 images in batches of at least 2");
    int S = cfg->encoder_size, z = S >= 128 ? 1 : 128 / S, side = S * z, gap = 4, st, nb, drawn = 0;
    int width = 2 * side + 3 * gap, height = count * (side + gap) + gap;
    uint8_t *px = malloc((size_t)width * height * 3);
    int32_t *win = malloc((size_t)batch * 49 * sizeof *win);
    test_batches t;
    memset(&t, 0, sizeof t);
    if (!px || !win)
        st = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory for a %dx%d picture", width, height);
    else
        st = test_batches_open(&t, m, path, split, preset, batch, err, n);
    if (st == AMDIM_OK)
        memset(px, 255, (size_t)width * height * 3);
    while (st == AMDIM_OK && drawn < count) {
        if ((st = test_batches_next(&t, &nb, err, n)) || nb < 2)
            break; /* a last batch of one image has no negatives: not drawn */
        if ((st = amdim_model_mixture_assign(m, t.images, nb, win))) {
            amdim_fail(err, n, st, "%s", amdim_model_error(m));
            break;
        }
        for (int i = 0; i < nb && drawn < count; i++, drawn++) {
            int y0 = gap + drawn * (side + gap);
            const uint8_t *img = t.images + (size_t)i * S * S * 3;
            for (int y = 0; y < side; y++)
                for (int x = 0; x < side; x++) {
                    uint8_t *a = px + ((size_t)(y0 + y) * width + gap + x) * 3;
                    uint8_t *b = px + ((size_t)(y0 + y) * width + 2 * gap + side + x) * 3;
                    memcpy(a, img + ((size_t)(y / z) * S + x / z) * 3, 3);
                    memcpy(b, palette[win[(size_t)i * 49 + (y * 7 / side) * 7 + x * 7 / side] % 16], 3);
                }
        }
    }
    test_batches_close(&t);
    if (st == AMDIM_OK && drawn == 0)
        st = amdim_fail(err, n, AMDIM_E_EMPTY, "split %s of %s has fewer than 2 images", split, path);
    if (st == AMDIM_OK)
        st = amdim_png_write_rgb(png_path, px, width, drawn * (side + gap) + gap, err, n);
    free(px);
    free(win);
    return st;
}
