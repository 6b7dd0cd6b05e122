/* The C DIM step (trainer/dim) against the float64 PyTorch reference
 * tests/ref/dim_ref.py, through the files tests/ref/make_dim_ref.py writes:
 * an encoder with the authors' layers and reduced widths with DIM(L),
 * DIM(G) or both, one step per estimator in the file (make_dim_ref.py's
 * CONFIGS): the scores, the losses, every parameter gradient and the BatchNorm
 * running statistics; then (32 px) one Adam update fed with the reference's
 * gradients and the names and shapes of every tensor of the full-size model
 * at 28, 32 and 64 px against dim_ref.py's state_dict; and the
 * initialisation rules.
 *   test_dim_parity tests/ref/dim_ref_enc32.bin.gz */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_dim.h"
#include "reffile.h"
#include "testutil.h"

/* Tolerances: about 20x the worst error measured over the six files
 * (float32 against float64; OpenBLAS on x86-64): losses 3.3e-7 (relative,
 * absolute below 1), scores 1.8e-6 and gradients 5.6e-6 of the tensor's
 * largest |value|, running statistics 4.0e-7 of theirs, Adam 5.9e-5 of lr
 * (the float32 rounding of the updated weights). */
#define TOL_LOSS 7e-6
#define TOL_U 4e-5
#define TOL_GRAD 1.2e-4
#define TOL_STAT 1e-5
#define TOL_ADAM 1.2e-3

static const char *EST[3] = {"jsd", "nce", "dv"};
static double worst_loss, worst_u, worst_grad, worst_stat, worst_adam;
static char worst_grad_name[200];

/* max |got - ref| / max(max |ref|, floor) */
static double scaled_err(const float *got, const ref_tensor *r, double floor)
{
    const double *ref = r->data;
    double e = 0, s = floor;
    for (size_t i = 0; i < r->count; i++) {
        double d = fabs(got[i] - ref[i]);
        e = d > e ? d : e;
        s = fabs(ref[i]) > s ? fabs(ref[i]) : s;
    }
    return s > 0 ? e / s : e;
}

static amdim_dim *make(const ref_file *f, int est)
{
    const int32_t *c = ref_get(f, "cfg", REF_I32)->data;
    /* [batch, in_ch, size, fc, z, mi_units, w0, w1, w2, w3, disc h1, h2, gp_all]; [alpha, beta, gamma];
     * unused widths are 0, which means the authors' */
    const double *ab = ref_get(f, "ab", REF_F64)->data;
    amdim_dim_config cfg = {.size = c[2],
                            .in_ch = c[1],
                            .widths = {c[6], c[7], c[8], c[9]},
                            .fc_units = c[3],
                            .z_units = c[4],
                            .mi_units = c[5],
                            .alpha = (float)ab[0],
                            .beta = (float)ab[1],
                            .gamma = (float)ab[2],
                            .disc_hidden = {c[10], c[11]},
                            .gp_all = c[12],
                            .estimator = est,
                            .seed = 1};
    amdim_dim *d;
    char err[256];
    int rc = amdim_dim_create(&cfg, c[0], &d, err, sizeof err);
    REQUIRE(rc == 0, "amdim_dim_create: %s", err);
    return d;
}

/* The table equals the file's w/ entries, in order, and the weights come from them. */
static void load_weights(const ref_file *f, const amdim_dim *d, float *w)
{
    int k = 0;
    memset(w, 0, amdim_dim_block_floats(d) * sizeof *w);
    for (int i = 0; i < f->n; i++) {
        if (strncmp(f->t[i].name, "w/", 2))
            continue;
        REQUIRE(k < amdim_dim_tensor_count(d), "the reference has more tensors than the C table (%s)", f->t[i].name);
        const amdim_dim_tensor *t = amdim_dim_tensor_at(d, k++);
        CHECK(!strcmp(t->name, f->t[i].name + 2), "tensor %d: C %s, reference %s", k - 1, t->name, f->t[i].name + 2);
        CHECK(t->size == f->t[i].count && t->ndim == f->t[i].ndim, "%s: size %zu / %d dims vs %zu / %d", t->name,
              t->size, t->ndim, f->t[i].count, f->t[i].ndim);
        for (int j = 0; j < t->ndim && j < f->t[i].ndim; j++)
            CHECK(t->shape[j] == (int)f->t[i].dims[j], "%s: dim %d is %d, reference %u", t->name, j, t->shape[j],
                  f->t[i].dims[j]);
        if (t->size == f->t[i].count)
            memcpy(w + t->offset, f->t[i].data, t->size * sizeof *w);
    }
    CHECK(k == amdim_dim_tensor_count(d), "C table has %d tensors, reference %d", amdim_dim_tensor_count(d), k);
}

static void check_step(const ref_file *f, int est)
{
    amdim_dim *d = make(f, est);
    size_t nf = amdim_dim_block_floats(d);
    float *w = malloc(nf * sizeof *w), *g = malloc(nf * sizeof *g);
    REQUIRE(w && g, "out of memory");
    load_weights(f, d, w);
    amdim_dim_losses loss;
    const ref_tensor *prior = ref_find(f, "prior");
    int rc = amdim_dim_step(d, w, ref_get(f, "x", REF_F32)->data, prior ? prior->data : NULL, g, &loss);
    REQUIRE(rc == 0, "amdim_dim_step: %s", amdim_dim_error(d));
    char name[200];
    const char *term[5] = {"local", "global", "prior", "disc", "gp"};
    double got[5] = {loss.local, loss.global, loss.prior, loss.disc, loss.gp}, e;
    for (int k = 0; k < 5; k++) {
        snprintf(name, sizeof name, "%s/%s", EST[est], term[k]);
        const ref_tensor *rt = ref_find(f, name);
        if (!rt) {
            CHECK(got[k] == 0, "%s: %g, but the reference has no such term", name, got[k]);
            continue;
        }
        /* relative, but absolute below 1: a JSD near 0 is a difference of terms of order log 2 */
        double r = *(const double *)rt->data;
        e = fabs(got[k] - r) / fmax(fabs(r), 1);
        CHECK(e <= TOL_LOSS, "%s: %.10f vs PyTorch %.10f (error %.3g)", name, got[k], r, e);
        worst_loss = e > worst_loss ? e : worst_loss;
    }
    snprintf(name, sizeof name, "%s/encoder", EST[est]);
    double r = *(const double *)ref_get(f, name, REF_F64)->data;
    CHECK(fabs(loss.encoder - r) <= TOL_LOSS * fmax(fabs(r), 1), "%s: %.10f vs %.10f", name, loss.encoder, r);
    /* the scores do not depend on the estimator */
    const float *mine[2] = {amdim_dim_scores_local(d), amdim_dim_scores_global(d)};
    for (int k = 0; k < 2; k++) {
        snprintf(name, sizeof name, "u_%s", term[k]);
        const ref_tensor *rt = ref_find(f, name);
        CHECK(!rt == !mine[k], "%s: C has %s, the reference %s", name, mine[k] ? "it" : "none", rt ? "has" : "none");
        if (!rt || !mine[k])
            continue;
        e = scaled_err(mine[k], rt, 0);
        CHECK(e <= TOL_U, "scores %s: error %.3g of max |u|", name, e);
        worst_u = e > worst_u ? e : worst_u;
    }
    /* Each gradient's error is relative to its largest |value|, but at least
     * 1e-3 of the largest gradient of the step: under NCE every row of
     * d loss / d u sums to -L e^-10 sum_l 1/den_l (the -10 entries, §5.2), so
     * the local LayerNorm bias's gradient cancels to ~1e-7 of the others and
     * only its absolute float32 error can be measured. */
    double gmax = 0;
    for (int i = 0; i < f->n; i++) {
        snprintf(name, sizeof name, "%s/grad/", EST[est]);
        if (strncmp(f->t[i].name, name, strlen(name)))
            continue;
        for (size_t k = 0; k < f->t[i].count; k++)
            gmax = fmax(gmax, fabs(((const double *)f->t[i].data)[k]));
    }
    for (int i = 0; i < amdim_dim_tensor_count(d); i++) {
        const amdim_dim_tensor *t = amdim_dim_tensor_at(d, i);
        snprintf(name, sizeof name, "%s/%s/%s", EST[est], t->trainable ? "grad" : "after", t->name);
        const ref_tensor *rt = ref_find(f, name);
        if (!rt) {
            CHECK(!t->trainable || strstr(t->name, "num_batches"), "%s missing from the reference", name);
            continue;
        }
        e = scaled_err(t->trainable ? g + t->offset : w + t->offset, rt, t->trainable ? 1e-3 * gmax : 0);
        CHECK(e <= (t->trainable ? TOL_GRAD : TOL_STAT), "%s: error %.3g of its largest |value|", name, e);
        if (t->trainable && e > worst_grad) {
            worst_grad = e;
            snprintf(worst_grad_name, sizeof worst_grad_name, "%s", name);
        } else if (!t->trainable && e > worst_stat) {
            worst_stat = e;
        }
        if (strstr(t->name, "num_batches_tracked"))
            CHECK(w[t->offset] == 1.0f, "%s: %g after one step", t->name, w[t->offset]);
    }
    free(w);
    free(g);
    amdim_dim_destroy(d);
}

static void check_adam(const ref_file *f)
{
    amdim_dim *d = make(f, 0);
    size_t nf = amdim_dim_block_floats(d);
    float *w = malloc(nf * sizeof *w), *g = calloc(nf, sizeof *g);
    float *m = calloc(nf, sizeof *m), *v = calloc(nf, sizeof *v);
    REQUIRE(w && g && m && v, "out of memory");
    load_weights(f, d, w);
    const double *hp = ref_get(f, "adam/hp", REF_F64)->data;
    char name[200];
    for (int i = 0; i < amdim_dim_tensor_count(d); i++) {
        const amdim_dim_tensor *t = amdim_dim_tensor_at(d, i);
        snprintf(name, sizeof name, "jsd/grad/%s", t->name);
        const ref_tensor *rt = t->trainable ? ref_get(f, name, REF_F64) : NULL;
        for (size_t k = 0; rt && k < t->size; k++)
            g[t->offset + k] = (float)((const double *)rt->data)[k];
    }
    amdim_dim_adam a = {.lr = (float)hp[0], .beta1 = (float)hp[1], .beta2 = (float)hp[2], .eps = (float)hp[3]};
    amdim_dim_adam_step(d, w, g, m, v, 1, &a);
    for (int i = 0; i < amdim_dim_tensor_count(d); i++) {
        const amdim_dim_tensor *t = amdim_dim_tensor_at(d, i);
        if (!t->trainable)
            continue;
        snprintf(name, sizeof name, "adam/%s", t->name);
        const double *ref = ref_get(f, name, REF_F64)->data;
        double e = 0;
        for (size_t k = 0; k < t->size; k++)
            e = fmax(e, fabs(w[t->offset + k] - ref[k]) / hp[0]);
        CHECK(e <= TOL_ADAM, "%s after one Adam step: error %.3g x lr", t->name, e);
        worst_adam = e > worst_adam ? e : worst_adam;
    }
    free(w), free(g), free(m), free(v);
    amdim_dim_destroy(d);
}

/* Every tensor of the full-size model with both terms and prior matching at each size, against the
 * "name shape" lines of dim_ref.py's state_dict. */
static void check_names(const ref_file *f, int size)
{
    char key[32], err[256];
    snprintf(key, sizeof key, "names/%d", size);
    const ref_tensor *r = ref_get(f, key, REF_U8);
    char *text = malloc(r->count + 1);
    REQUIRE(text, "out of memory");
    memcpy(text, r->data, r->count);
    text[r->count] = 0;
    amdim_dim_config cfg = {.size = size, .alpha = 1, .beta = 1, .gamma = 1, .estimator = AMDIM_DIM_JSD};
    amdim_dim *d;
    REQUIRE(amdim_dim_create(&cfg, 2, &d, err, sizeof err) == 0, "amdim_dim_create(%d px): %s", size, err);
    int k = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), k++) {
        if (k >= amdim_dim_tensor_count(d)) {
            CHECK(0, "%d px: the reference has more tensors (%s)", size, line);
            break;
        }
        const amdim_dim_tensor *t = amdim_dim_tensor_at(d, k);
        char mine[160];
        int len = snprintf(mine, sizeof mine, "%s ", t->name);
        for (int j = 0; j < t->ndim; j++)
            len += snprintf(mine + len, sizeof mine - len, j ? "x%d" : "%d", t->shape[j]);
        CHECK(!strcmp(mine, line), "%d px tensor %d: C \"%s\", dim_ref.py \"%s\"", size, k, mine, line);
    }
    CHECK(k == amdim_dim_tensor_count(d), "%d px: %d tensors in C, %d in dim_ref.py", size, amdim_dim_tensor_count(d),
          k);
    printf("%d px: %d tensor names and shapes as dim_ref.py\n", size, k);
    amdim_dim_destroy(d);
    free(text);
}

/* docs/dim.md §2.1 and §3.1: the authors' initialisation, deterministic in the seed. */
static void check_init(const ref_file *f)
{
    amdim_dim *d = make(f, 0);
    size_t nf = amdim_dim_block_floats(d);
    float *a = malloc(nf * sizeof *a), *b = malloc(nf * sizeof *b);
    REQUIRE(a && b, "out of memory");
    amdim_dim_init_weights(d, a);
    amdim_dim_init_weights(d, b);
    CHECK(!memcmp(a, b, nf * sizeof *a), "initialisation is not deterministic");
    for (int i = 0; i < amdim_dim_tensor_count(d); i++) {
        const amdim_dim_tensor *t = amdim_dim_tensor_at(d, i);
        const float *p = a + t->offset;
        double lo = INFINITY, hi = -INFINITY;
        for (size_t k = 0; k < t->size; k++)
            lo = fmin(lo, p[k]), hi = fmax(hi, p[k]);
        const char *leaf = strrchr(t->name, '.') + 1;
        int bn_like = t->ndim == 1 &&
                      (strstr(t->name, ".bn.") || strstr(t->name, "block_nonlinear.1.") || strstr(t->name, "block_ln"));
        if (!strcmp(leaf, "running_var") || (bn_like && !strcmp(leaf, "weight")))
            CHECK(lo == 1 && hi == 1, "%s: [%g, %g], need 1", t->name, lo, hi);
        else if (bn_like || !strcmp(leaf, "running_mean") || !strcmp(leaf, "num_batches_tracked"))
            CHECK(lo == 0 && hi == 0, "%s: [%g, %g], need 0", t->name, lo, hi);
        else if (strstr(t->name, "linear_shortcut") && t->shape[0] >= t->shape[1]) {
            int ci = t->shape[1];
            for (size_t k = 0; k < t->size; k++) {
                int diag = (int)(k / ci) == (int)(k % ci);
                CHECK(diag ? p[k] == 1 : fabsf(p[k]) <= 0.01f, "%s[%zu] = %g", t->name, k, p[k]);
            }
        } else {
            const amdim_dim_tensor *wt = t->ndim == 1 ? amdim_dim_tensor_at(d, i - 1) : t; /* a bias: its weight's */
            int fan = (int)(wt->size / (size_t)wt->shape[0]);
            double bound = 1 / sqrt((double)fan);
            CHECK(lo >= -bound && hi < bound && (t->size < 16 || hi - lo > bound), "%s: [%g, %g] vs U(+-%g)", t->name,
                  lo, hi, bound);
        }
    }
    free(a), free(b);
    amdim_dim_destroy(d);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_dim_parity REF.bin.gz\n");
        return 2;
    }
    ref_file f;
    ref_load(&f, argv[1]);
    int size = ((const int32_t *)ref_get(&f, "cfg", REF_I32)->data)[2], steps = 0;
    for (int est = 0; est < 3; est++) {
        char key[32];
        snprintf(key, sizeof key, "%s/encoder", EST[est]);
        if (ref_find(&f, key)) {
            check_step(&f, est);
            steps++;
        }
    }
    REQUIRE(steps > 0, "the reference has no step");
    if (ref_find(&f, "adam/hp"))
        check_adam(&f);
    static const int sizes[3] = {28, 32, 64};
    if (ref_find(&f, "names/32"))
        for (int i = 0; i < 3; i++)
            check_names(&f, sizes[i]);
    check_init(&f);
    printf("%d px: %d estimator step%s against dim_ref.py\n", size, steps, steps > 1 ? "s" : "");
    printf("largest errors (tolerance): losses %.3g (%.2g relative, absolute below 1), scores %.3g (%.2g of max |u|), "
           "gradients %.3g "
           "(%.2g of max |grad|, %s), running statistics %.3g (%.2g)\n",
           worst_loss, TOL_LOSS, worst_u, TOL_U, worst_grad, TOL_GRAD, worst_grad_name, worst_stat, TOL_STAT);
    if (ref_find(&f, "adam/hp"))
        printf("one Adam update: largest error %.3g x lr (tolerance %.2g)\n", worst_adam, TOL_ADAM);
    ref_free(&f);
    return test_finish("test_dim_parity");
}
