/* The classifier evaluation's heads (docs/dim.md §9.1, D13) on a frozen
 * encoder's tap: the authors' MLP, linear(in -> 200, bias) -> Dropout(0.1)
 * -> BN1d(200) -> ReLU -> linear(200 -> classes), and amdim's linear
 * softmax head, both with the plain cross-entropy over labelled rows.
 * Forward, backward and Adam on trainer/model/cpu's ops. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_common.h"
#include "amdim_philox.h"
#include "dim_internal.h"
#include "elementwise_internal.h"

enum { H_W1, H_B1, H_BNW, H_BNB, H_BNM, H_BNV, H_BNN, H_W2, H_B2, H_LW, H_LB, H_COUNT };

static const char *const head_names[H_COUNT] = {"mlp.net.layers.layer0.fc.weight",
                                                "mlp.net.layers.layer0.fc.bias",
                                                "mlp.net.layers.layer0.bn.weight",
                                                "mlp.net.layers.layer0.bn.bias",
                                                "mlp.net.layers.layer0.bn.running_mean",
                                                "mlp.net.layers.layer0.bn.running_var",
                                                "mlp.net.layers.layer0.bn.num_batches_tracked",
                                                "mlp.net.layers.layer1.weight",
                                                "mlp.net.layers.layer1.bias",
                                                "linear.fc.weight",
                                                "linear.fc.bias"};

struct amdim_dim_heads {
    amdim_dim_heads_config cfg;
    int batch;
    amdim_dim_tensor tab[H_COUNT];
    int fan_in[H_COUNT];
    size_t floats;
    float *h, *mask, *hd, *hbn, *mean, *istd, *logits, *llogits, *dlog, *dllog, *dh, *dhd;
    amdim_cpu_op_scratch scr;
};

static void set_tensor(amdim_dim_heads *h, int i, int rows, int cols, int fan_in)
{
    amdim_dim_tensor *t = &h->tab[i];
    snprintf(t->name, sizeof t->name, "%s", head_names[i]);
    t->ndim = cols ? 2 : rows ? 1 : 0;
    t->shape[0] = rows, t->shape[1] = cols;
    t->size = (size_t)(rows ? rows : 1) * (cols ? cols : 1);
    t->offset = h->floats;
    t->trainable = i != H_BNM && i != H_BNV && i != H_BNN;
    h->fan_in[i] = fan_in;
    h->floats += (t->size + 15) / 16 * 16;
}

static void layout(amdim_dim_heads *h)
{
    int in = h->cfg.in, H = h->cfg.hidden, K = h->cfg.classes;
    set_tensor(h, H_W1, H, in, in), set_tensor(h, H_B1, H, 0, in);
    for (int i = H_BNW; i <= H_BNV; i++)
        set_tensor(h, i, H, 0, 0);
    set_tensor(h, H_BNN, 0, 0, 0);
    set_tensor(h, H_W2, K, H, H), set_tensor(h, H_B2, K, 0, H);
    set_tensor(h, H_LW, K, in, in), set_tensor(h, H_LB, K, 0, in);
}

static float *falloc(size_t n, int *failed)
{
    float *p = calloc(n ? n : 1, sizeof *p);
    *failed |= !p;
    return p;
}

int amdim_dim_heads_create(const amdim_dim_heads_config *cfg, int batch, amdim_dim_heads **out, char *err, size_t n)
{
    *out = NULL;
    if (cfg->in < 1 || cfg->hidden < 1 || cfg->classes < 2 || batch < 2 || !(cfg->dropout >= 0 && cfg->dropout < 1))
        return amdim_fail(err, n, AMDIM_E_INVALID,
                          "DIM heads: input %d, hidden %d, %d classes, batch %d, dropout %g: need positive widths, at "
                          "least 2 classes and 2 rows, dropout in [0, 1)",
                          cfg->in, cfg->hidden, cfg->classes, batch, cfg->dropout);
    amdim_dim_heads *h = calloc(1, sizeof *h);
    if (!h)
        return amdim_fail(err, n, AMDIM_E_NOMEM, "DIM heads: out of memory");
    h->cfg = *cfg, h->batch = batch;
    layout(h);
    int f = 0;
    size_t nh = (size_t)batch * cfg->hidden, nk = (size_t)batch * cfg->classes;
    h->h = falloc(nh, &f), h->mask = falloc(nh, &f), h->hd = falloc(nh, &f), h->hbn = falloc(nh, &f);
    h->dh = falloc(nh, &f), h->dhd = falloc(nh, &f);
    h->mean = falloc((size_t)cfg->hidden, &f), h->istd = falloc((size_t)cfg->hidden, &f);
    h->logits = falloc(nk, &f), h->llogits = falloc(nk, &f), h->dlog = falloc(nk, &f), h->dllog = falloc(nk, &f);
    if (f) {
        amdim_dim_heads_destroy(h);
        return amdim_fail(err, n, AMDIM_E_NOMEM, "DIM heads: out of memory for the buffers");
    }
    *out = h;
    return AMDIM_OK;
}

void amdim_dim_heads_destroy(amdim_dim_heads *h)
{
    if (!h)
        return;
    float *p[] = {h->h,    h->mask, h->hd,     h->hbn,     h->dh,   h->dhd,
                  h->mean, h->istd, h->logits, h->llogits, h->dlog, h->dllog};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        free(p[i]);
    amdim_cpu_op_scratch_free(&h->scr);
    free(h);
}

int amdim_dim_heads_tensor_count(const amdim_dim_heads *h) { return h ? H_COUNT : 0; }
const amdim_dim_tensor *amdim_dim_heads_tensor_at(const amdim_dim_heads *h, int i) { return &h->tab[i]; }
size_t amdim_dim_heads_floats(const amdim_dim_heads *h) { return h->floats; }

void amdim_dim_heads_init(const amdim_dim_heads *h, float *w)
{
    memset(w, 0, h->floats * sizeof *w);
    for (int i = 0; i < H_COUNT; i++) {
        const amdim_dim_tensor *t = &h->tab[i];
        float *p = w + t->offset;
        if (i == H_BNW || i == H_BNV)
            for (size_t k = 0; k < t->size; k++)
                p[k] = 1.0f;
        if (!h->fan_in[i])
            continue;
        amdim_rng rng; /* PyTorch's Linear: U(+-1/sqrt(fan_in)) for weight and bias */
        amdim_rng_init(&rng, h->cfg.seed, AMDIM_STREAM_PROBE_INIT, (uint64_t)i);
        float bound = 1.0f / sqrtf((float)h->fan_in[i]);
        for (size_t k = 0; k < t->size; k++)
            p[k] = amdim_rng_uniform(&rng, -bound, bound);
    }
}

static float *T(const amdim_dim_heads *h, const float *block, int i) { return (float *)block + h->tab[i].offset; }

static amdim_cpu_bn_params head_bn(const amdim_dim_heads *h, const float *w, float *g)
{
    amdim_cpu_bn_params p = {.gamma = T(h, w, H_BNW),
                             .beta = T(h, w, H_BNB),
                             .rmean = T(h, w, H_BNM),
                             .rvar = T(h, w, H_BNV),
                             .nbt = T(h, w, H_BNN),
                             .dgamma = g ? T(h, g, H_BNW) : NULL,
                             .dbeta = g ? T(h, g, H_BNB) : NULL};
    return p;
}

static int argmax(const float *row, int k)
{
    int best = 0;
    for (int j = 1; j < k; j++)
        if (row[j] > row[best])
            best = j;
    return best;
}

double amdim_dim_cross_entropy(const float *logits, int n, int k, const int32_t *labels, float *dlogits, int *correct,
                               int *labelled)
{
    int valid = 0, hits = 0;
    for (int i = 0; i < n; i++)
        valid += labels[i] >= 0 && labels[i] < k;
    double loss = 0;
    for (int i = 0; i < n; i++) {
        const float *row = logits + (size_t)i * k;
        float *drow = dlogits ? dlogits + (size_t)i * k : NULL;
        if (drow)
            memset(drow, 0, (size_t)k * sizeof *drow);
        if (labels[i] < 0 || labels[i] >= k)
            continue;
        double mx = row[argmax(row, k)], sum = 0;
        for (int j = 0; j < k; j++)
            sum += exp((double)row[j] - mx);
        loss += mx + log(sum) - row[labels[i]];
        hits += argmax(row, k) == labels[i];
        for (int j = 0; drow && j < k; j++)
            drow[j] = (float)((exp((double)row[j] - mx) / sum - (j == labels[i])) / valid);
    }
    if (correct)
        *correct = hits;
    if (labelled)
        *labelled = valid;
    return valid ? loss / valid : 0.0;
}

/* Inverted dropout with an explicit 0/1 mask, y = x mask / (1 - p); its
 * backward is the same map. trainer/model/cpu's dropout is fixed at AMDIM's
 * p = 0.2, the heads take the authors' 0.1. */
static void dropout_apply(const float *x, const float *mask, float p, size_t count, float *y)
{
    float keep = 1.0f / (1.0f - p);
    for (size_t k = 0; k < count; k++)
        y[k] = x[k] * mask[k] * keep;
}

/* The MLP's forward up to the logits; train: dropout with mask, BN batch statistics. */
static int mlp_forward(amdim_dim_heads *h, float *w, const float *x, int n, int train)
{
    int in = h->cfg.in, H = h->cfg.hidden;
    size_t nh = (size_t)n * H;
    amdim_cpu_linear_forward(x, n, in, T(h, w, H_W1), T(h, w, H_B1), H, h->h);
    amdim_cpu_bn_params bn = head_bn(h, w, NULL);
    if (train) {
        dropout_apply(h->h, h->mask, h->cfg.dropout, nh, h->hd);
        int rc = amdim_cpu_batchnorm1d_forward_train(h->hd, n, H, &bn, h->hbn, h->mean, h->istd, &h->scr);
        if (rc)
            return rc;
    } else
        amdim_cpu_batchnorm1d_forward_eval(h->h, n, H, &bn, h->hbn);
    amdim_cpu_relu_forward(h->hbn, nh);
    amdim_cpu_linear_forward(h->hbn, n, H, T(h, w, H_W2), T(h, w, H_B2), h->cfg.classes, h->logits);
    return AMDIM_OK;
}

static int mlp_backward(amdim_dim_heads *h, float *w, float *g, const float *x, int n)
{
    int in = h->cfg.in, H = h->cfg.hidden;
    size_t nh = (size_t)n * H;
    amdim_cpu_linear_backward(h->hbn, n, H, T(h, w, H_W2), h->cfg.classes, h->dlog, h->dh, T(h, g, H_W2),
                              T(h, g, H_B2));
    amdim_cpu_relu_backward(h->hbn, h->dh, nh);
    amdim_cpu_bn_params bn = head_bn(h, w, g);
    int rc = amdim_cpu_batchnorm1d_backward(h->hd, n, H, &bn, h->mean, h->istd, h->dh, h->dhd, &h->scr);
    if (rc)
        return rc;
    dropout_apply(h->dhd, h->mask, h->cfg.dropout, nh, h->dh);
    amdim_cpu_linear_backward(x, n, in, T(h, w, H_W1), H, h->dh, NULL, T(h, g, H_W1), T(h, g, H_B1));
    return AMDIM_OK;
}

void amdim_dim_heads_draw_mask(const amdim_dim_heads *h, uint64_t update, int n, float *mask)
{
    amdim_rng rng;
    amdim_rng_init(&rng, h->cfg.seed, AMDIM_STREAM_PROBE_STEP, update);
    for (size_t k = 0; k < (size_t)n * h->cfg.hidden; k++)
        mask[k] = amdim_rng_uniform(&rng, 0.0f, 1.0f) >= h->cfg.dropout ? 1.0f : 0.0f;
}

int amdim_dim_heads_step(amdim_dim_heads *h, float *w, const float *x, int n, const int32_t *labels, const float *mask,
                         float *grads, amdim_dim_head_stats *s)
{
    memset(s, 0, sizeof *s);
    memset(grads, 0, h->floats * sizeof *grads);
    if (n < 2 || n > h->batch)
        return AMDIM_E_INVALID;
    memcpy(h->mask, mask, (size_t)n * h->cfg.hidden * sizeof *h->mask);
    int rc = mlp_forward(h, w, x, n, 1), K = h->cfg.classes;
    if (rc)
        return rc;
    amdim_cpu_linear_forward(x, n, h->cfg.in, T(h, w, H_LW), T(h, w, H_LB), K, h->llogits);
    s->mlp = amdim_dim_cross_entropy(h->logits, n, K, labels, h->dlog, &s->mlp_correct, &s->labelled);
    s->linear = amdim_dim_cross_entropy(h->llogits, n, K, labels, h->dllog, &s->linear_correct, NULL);
    if (!s->labelled) /* §9.1: a batch without labelled rows adds no loss */
        return AMDIM_OK;
    amdim_cpu_linear_backward(x, n, h->cfg.in, T(h, w, H_LW), K, h->dllog, NULL, T(h, grads, H_LW), T(h, grads, H_LB));
    return mlp_backward(h, w, grads, x, n);
}

void amdim_dim_heads_predict(amdim_dim_heads *h, const float *w, const float *x, int n, int32_t *mlp, int32_t *linear)
{
    int K = h->cfg.classes;
    mlp_forward(h, (float *)w, x, n, 0); /* evaluation mode: no dropout, running statistics; cannot fail */
    amdim_cpu_linear_forward(x, n, h->cfg.in, T(h, w, H_LW), T(h, w, H_LB), K, h->llogits);
    for (int i = 0; i < n; i++) {
        mlp[i] = argmax(h->logits + (size_t)i * K, K);
        linear[i] = argmax(h->llogits + (size_t)i * K, K);
    }
}

void amdim_dim_heads_adam_step(const amdim_dim_heads *h, float *w, const float *g, float *m, float *v, long t,
                               const amdim_dim_adam *hp)
{
    amdim_adam_hparams a = {.lr = hp->lr, .beta1 = hp->beta1, .beta2 = hp->beta2, .eps = hp->eps};
    a.step = (float)(hp->lr / (1 - pow(hp->beta1, (double)t)));
    a.sqrt_bc2 = (float)sqrt(1 - pow(hp->beta2, (double)t));
    for (int i = 0; i < H_COUNT; i++) {
        const amdim_dim_tensor *tt = &h->tab[i];
        for (size_t k = tt->offset; tt->trainable && k < tt->offset + tt->size; k++)
            w[k] = amdim_adam_element(w[k], g[k], &m[k], &v[k], &a);
    }
}
