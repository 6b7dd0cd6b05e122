/* The raw-pixel baseline (see amdim_run.h): a linear softmax classifier
 * on standardised pixels, trained with Adam (the shared Adam element). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_dataset.h"
#include "amdim_loader.h"
#include "amdim_run.h"
#include "ops_internal.h"
#include "elementwise_internal.h"

/* Gradients (overwritten) of the mean softmax cross-entropy over rows with
 * a label, for logits = x W^T + b. */
static void linear_softmax_step(const float *x, const int32_t *y, int nb, int dim, int K, const float *w, const float *b,
                                float *gw, float *gb, float *logits, float *dl)
{
    amdim_cpu_linear_forward(x, nb, dim, w, b, K, logits);
    int valid = 0;
    for (int r = 0; r < nb; r++)
        valid += y[r] >= 0 && y[r] < K;
    for (int r = 0; r < nb; r++) {
        float *l = logits + (size_t)r * K, *d = dl + (size_t)r * K;
        if (y[r] < 0 || y[r] >= K) {
            memset(d, 0, (size_t)K * 4);
            continue;
        }
        double mx = -1e300, sum = 0;
        for (int c = 0; c < K; c++)
            mx = l[c] > mx ? l[c] : mx;
        for (int c = 0; c < K; c++)
            sum += exp(l[c] - mx);
        for (int c = 0; c < K; c++)
            d[c] = (float)((exp(l[c] - mx) / sum - (c == y[r])) / (valid ? valid : 1));
    }
    memset(gw, 0, (size_t)K * dim * 4);
    memset(gb, 0, (size_t)K * 4);
    amdim_cpu_linear_backward(x, nb, dim, w, K, dl, NULL, gw, gb);
}

static int load_raw(amdim_dataset *ds, const char *split, float **x, int32_t **y, uint64_t *n, int *dim, char *err,
                    size_t en)
{
    amdim_split_info info;
    int st = amdim_dataset_split_info(ds, split, &info);
    if (st)
        return amdim_fail(err, en, st, "%s", amdim_dataset_error(ds));
    if (info.encoding != AMDIM_ENCODING_RAW || !info.width || !info.channels)
        return amdim_fail(err, en, AMDIM_E_UNSUPPORTED, "split %s is not raw pixels of one size (the baseline reads raw datasets)", split);
    *dim = (int)(info.width * info.height * info.channels);
    *n = info.records;
    *x = malloc(info.records * (size_t)*dim * sizeof(float));
    *y = malloc(info.records * sizeof(int32_t));
    if (!*x || !*y)
        return amdim_fail(err, en, AMDIM_E_NOMEM, "out of memory");
    for (uint64_t i = 0; i < info.records; i++) {
        amdim_record r;
        if ((st = amdim_dataset_get(ds, split, i, &r)))
            return amdim_fail(err, en, st, "%s", amdim_dataset_error(ds));
        for (int k = 0; k < *dim; k++)
            (*x)[i * (size_t)*dim + k] = r.payload[k] / 255.0f;
        (*y)[i] = r.label;
    }
    return AMDIM_OK;
}

int amdim_raw_pixel_baseline(const char *path, const char *train_split, const char *test_split, int epochs,
                             uint64_t seed, double *test_acc, char *err, size_t n)
{
    amdim_dataset *ds;
    char why[1024];
    int st = amdim_dataset_open(&ds, path, why, sizeof why);
    if (st)
        return amdim_fail(err, n, st, "%s", why);
    float *xtr = NULL, *xte = NULL, *w = NULL, *b = NULL, *mw = NULL, *vw = NULL, *mb = NULL, *vb = NULL;
    float *logits = NULL, *dl = NULL, *gw = NULL, *gb = NULL;
    int32_t *ytr = NULL, *yte = NULL;
    uint64_t ntr, nte;
    int dim, dim2;
    if ((st = load_raw(ds, train_split, &xtr, &ytr, &ntr, &dim, err, n)) ||
        (st = load_raw(ds, test_split, &xte, &yte, &nte, &dim2, err, n)))
        goto done;
    if (dim != dim2) {
        st = amdim_fail(err, n, AMDIM_E_INVALID, "splits %s and %s have images of different sizes", train_split, test_split);
        goto done;
    }
    int K = 0;
    for (uint64_t i = 0; i < ntr; i++)
        K = ytr[i] + 1 > K ? ytr[i] + 1 : K;
    /* standardise each pixel position with training statistics */
    for (int k = 0; k < dim; k++) {
        double m = 0, v = 0;
        for (uint64_t i = 0; i < ntr; i++)
            m += xtr[i * (size_t)dim + k];
        m /= (double)ntr;
        for (uint64_t i = 0; i < ntr; i++) {
            double d = xtr[i * (size_t)dim + k] - m;
            v += d * d;
        }
        double sd = sqrt(v / (double)ntr) + 1e-3;
        for (uint64_t i = 0; i < ntr; i++)
            xtr[i * (size_t)dim + k] = (float)((xtr[i * (size_t)dim + k] - m) / sd);
        for (uint64_t i = 0; i < nte; i++)
            xte[i * (size_t)dim + k] = (float)((xte[i * (size_t)dim + k] - m) / sd);
    }
    const int B = 256;
    w = calloc((size_t)K * dim, 4), b = calloc((size_t)K, 4), mw = calloc((size_t)K * dim, 4), vw = calloc((size_t)K * dim, 4);
    mb = calloc((size_t)K, 4), vb = calloc((size_t)K, 4), gw = calloc((size_t)K * dim, 4), gb = calloc((size_t)K, 4);
    logits = malloc((size_t)B * K * 4), dl = malloc((size_t)B * K * 4);
    uint64_t *order = malloc(ntr * sizeof *order);
    float *xb = malloc((size_t)B * dim * 4);
    int32_t *yb = malloc((size_t)B * sizeof *yb);
    if (!w || !b || !mw || !vw || !mb || !vb || !gw || !gb || !logits || !dl || !order || !xb || !yb) {
        free(order), free(xb), free(yb);
        st = amdim_fail(err, n, AMDIM_E_NOMEM, "out of memory");
        goto done;
    }
    /* Adam (lr 1e-3, decayed x0.1 for the last third), plain softmax cross-entropy */
    uint64_t t = 0;
    for (int e = 0; e < epochs; e++) {
        amdim_loader_epoch_order(seed, (uint64_t)e, ntr, order);
        float lr = e >= epochs * 2 / 3 ? 1e-4f : 1e-3f;
        for (uint64_t i0 = 0; i0 + 1 < ntr; i0 += B) {
            int nb = ntr - i0 < (uint64_t)B ? (int)(ntr - i0) : B;
            for (int r = 0; r < nb; r++) {
                memcpy(xb + (size_t)r * dim, xtr + order[i0 + r] * (size_t)dim, (size_t)dim * 4);
                yb[r] = ytr[order[i0 + r]];
            }
            linear_softmax_step(xb, yb, nb, dim, K, w, b, gw, gb, logits, dl);
            t++;
            amdim_adam_hparams h = {.lr = lr, .step = (float)(lr / (1 - pow(0.9, (double)t))),
                                    .sqrt_bc2 = (float)sqrt(1 - pow(0.999, (double)t)), .beta1 = 0.9f,
                                    .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0};
            for (size_t k = 0; k < (size_t)K * dim; k++)
                w[k] = amdim_adam_element(w[k], gw[k], &mw[k], &vw[k], &h);
            for (int k = 0; k < K; k++)
                b[k] = amdim_adam_element(b[k], gb[k], &mb[k], &vb[k], &h);
        }
    }
    free(order);
    free(xb);
    free(yb);
    uint64_t hits = 0, counted = 0;
    for (uint64_t i = 0; i < nte; i++) {
        if (yte[i] < 0)
            continue;
        int best = 0;
        double bv = -1e300;
        for (int c = 0; c < K; c++) {
            double s = b[c];
            for (int k = 0; k < dim; k++)
                s += (double)w[(size_t)c * dim + k] * xte[i * (size_t)dim + k];
            if (s > bv) {
                bv = s;
                best = c;
            }
        }
        hits += best == yte[i];
        counted++;
    }
    *test_acc = counted ? (double)hits / counted : 0;
done:
    free(xtr), free(xte), free(ytr), free(yte), free(w), free(b), free(mw), free(vw), free(mb), free(vb);
    free(logits), free(dl), free(gw), free(gb);
    amdim_dataset_close(ds);
    return st;
}
