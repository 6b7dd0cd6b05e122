/* Parity of the CPU trainer with PyTorch (tests/ref/make_model_ref.py):
 * parameter names and shapes equal the authors' state_dict; r1/r5/r7,
 * logits and every loss term (relative) and every parameter gradient
 * (absolute plus relative to |ref|) within the tolerances below; then 3
 * Adam steps (warm-up lr) with matching losses, weights and BatchNorm
 * running statistics. The output prints each worst error. A reference
 * with "mix" (K, tau, alpha, probe features) is a model with mixtures
 * (docs/mixtures.md); its mixture entropy is compared as a loss term.
 * Argument: a model_ref_*.bin.gz file. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_trainer.h"
#include "reffile.h"
#include "testutil.h"

/* Each tolerance is the worst error measured over the BLAS kernels users
 * have (OPENBLAS_CORETYPE Cooperlake, SkylakeX, Haswell, Sandybridge and
 * Nehalem, 1 and 2 threads) and the six references, times three, rounded
 * up to 1, 2 or 5 in its decade, and never below what the test used
 * before it was measured (kernels nobody measured keep that margin):
 * PyTorch and this trainer sum in different orders, and which order this
 * trainer uses depends on the CPU. */
#define TOL_OUT 1e-4               /* r1/r5/r7 and logits, relative to the tensor's largest value */
#define TOL_LOSS 1e-4              /* loss terms, relative (absolute for terms near 0) */
#define TOL_GRAD_ABS 2e-4          /* gradients: TOL_GRAD_ABS + TOL_GRAD_REL |ref| */
#define TOL_GRAD_REL 2e-3
#define TOL_FINAL_ABS 1e-5         /* after 3 Adam steps: TOL_FINAL_ABS + TOL_FINAL_REL |ref| */
#define TOL_FINAL_REL 1e-4

static double worst_out, worst_loss, worst_grad, worst_final;
static char worst_grad_name[200];

static void cmp_scaled(const char *what, const float *got, const ref_tensor *ref, double tol)
{
    double scale = 1e-12, err = 0;
    for (size_t i = 0; i < ref->count; i++) {
        double r = ref->dtype == REF_F32 ? ((const float *)ref->data)[i] : ((const double *)ref->data)[i];
        scale = fabs(r) > scale ? fabs(r) : scale;
    }
    for (size_t i = 0; i < ref->count; i++) {
        double r = ref->dtype == REF_F32 ? ((const float *)ref->data)[i] : ((const double *)ref->data)[i];
        double d = fabs(got[i] - r) / scale;
        err = d > err ? d : err;
    }
    CHECK(err <= tol, "%s: relative error %.3g > %.1g", what, err, tol);
    if (err > worst_out)
        worst_out = err;
}

static void cmp_loss(const char *what, double got, const ref_file *rf, const char *name)
{
    double r = ((const double *)ref_get(rf, name, REF_F64)->data)[0];
    double err = fabs(got - r) / (fabs(r) > 1e-12 ? fabs(r) : 1e-12);
    if (fabs(r) < 1e-6)
        err = fabs(got - r); /* a loss term that is ~0 (e.g. reg) */
    CHECK(err <= TOL_LOSS, "%s: %.8f vs PyTorch %.8f (relative %.3g, tolerance %.1g)", what, got, r, err, TOL_LOSS);
    if (err > worst_loss)
        worst_loss = err;
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: test_trainer_parity REFERENCE.bin.gz");
    ref_file rf;
    ref_load(&rf, argv[1]);
    const int32_t *cfgv = ref_get(&rf, "config", REF_I32)->data;
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, cfgv[0]);
    cfg.ndf = cfgv[1];
    cfg.n_rkhs = cfgv[2];
    cfg.n_depth = cfgv[3];
    cfg.use_bn = cfgv[4];
    int B = cfgv[5];
    cfg.n_classes = cfgv[6];
    cfg.mlp_hidden = cfgv[7];
    cfg.objective = cfgv[8];
    const ref_tensor *mix = ref_find(&rf, "mix");
    if (mix) {
        const double *mv = mix->data;
        cfg.mixtures = (int)mv[0];
        cfg.mix_tau = (float)mv[1];
        cfg.mix_entropy = (float)mv[2];
        cfg.probe_features = (int)mv[3];
    }
    static const char *objname[] = {"nce", "jsd", "dv"};
    printf("%d px encoder, ndf %d, n_rkhs %d, depth %d, use_bn %d, batch %d, objective %s, mixtures %d (tau %g, alpha %g, "
           "probes on %s)\n",
           cfg.encoder_size, cfg.ndf, cfg.n_rkhs, cfg.n_depth, cfg.use_bn, B, objname[cfg.objective], cfg.mixtures,
           cfg.mix_tau, cfg.mix_entropy, cfg.probe_features ? "mixture-mean" : "r1");
    amdim_model *m;
    char err[512];
    REQUIRE(amdim_model_create(&m, &cfg, err, sizeof err) == 0, "create: %s", err);

    /* Names and shapes: exactly the reference's state_dict. */
    int n = amdim_model_param_count(m), refparams = 0;
    for (int i = 0; i < rf.n; i++)
        refparams += strncmp(rf.t[i].name, "param/", 6) == 0;
    CHECK(n == refparams, "the model has %d tensors, the PyTorch state_dict %d", n, refparams);
    for (int i = 0; i < n; i++) {
        amdim_param p;
        amdim_model_param(m, i, &p);
        char name[256];
        snprintf(name, sizeof name, "param/%s", p.name);
        const ref_tensor *t = ref_find(&rf, name);
        CHECK(t, "PyTorch has no tensor %s", p.name);
        if (!t)
            continue;
        int same = t->ndim == p.ndim && t->count == p.size;
        for (int d = 0; same && d < p.ndim; d++)
            same = (int)t->dims[d] == p.shape[d];
        CHECK(same, "%s: shape differs from PyTorch's", p.name);
        if (!same)
            continue;
        for (size_t k = 0; k < p.size; k++)
            p.data[k] = t->dtype == REF_I32 ? (float)((const int32_t *)t->data)[k] : ((const float *)t->data)[k];
    }

    REQUIRE(amdim_model_push(m) == 0, "push: %s", amdim_model_error(m));
    amdim_step_stats st;
    float *logits = malloc((size_t)2 * B * cfg.n_classes * sizeof(float));
    for (int step = 0; step < 3; step++) {
        char name[256];
#define STEP(leaf) (snprintf(name, sizeof name, "step%d/%s", step, leaf), name)
        const float *x1 = ref_get(&rf, STEP("x1"), REF_F32)->data;
        const float *x2 = ref_get(&rf, STEP("x2"), REF_F32)->data;
        const int32_t *labels = ref_get(&rf, STEP("labels"), REF_I32)->data;
        const int32_t *src5 = ref_get(&rf, STEP("src5"), REF_I32)->data;
        const float *mi = ref_get(&rf, STEP("mask_in"), REF_F32)->data;
        const float *mh = ref_get(&rf, STEP("mask_hidden"), REF_F32)->data;
        REQUIRE(amdim_model_forward_backward(m, x1, x2, labels, B, src5, mi, mh, &st) == 0, "step: %s",
                amdim_model_error(m));
        char what[128];
        const struct {
            const char *key;
            double v;
        } terms[] = {{"1t5", st.nce_1t5}, {"1t7", st.nce_1t7}, {"5t5", st.nce_5t5}, {"reg", st.reg},
                     {"cls_mlp", st.cls_mlp}, {"cls_lin", st.cls_lin}, {"total", st.total},
                     {"mix_entropy", st.mix_entropy}};
        for (size_t k = 0; k < sizeof terms / sizeof *terms - !mix; k++) {
            char key[64];
            snprintf(key, sizeof key, "loss/%s", terms[k].key);
            snprintf(what, sizeof what, "step %d loss %s", step, terms[k].key);
            cmp_loss(what, terms[k].v, &rf, STEP(key));
        }
        if (step == 0) {
            float *buf = malloc((size_t)B * cfg.n_rkhs * 49 * sizeof(float));
            const char *outs[6] = {"r1_x1", "r5_x1", "r7_x1", "r1_x2", "r5_x2", "r7_x2"};
            const int which[3] = {1, 5, 7};
            for (int o = 0; o < 6; o++) {
                amdim_model_output(m, o / 3, which[o % 3], buf);
                snprintf(name, sizeof name, "out/%s", outs[o]);
                cmp_scaled(outs[o], buf, ref_get(&rf, name, REF_F32), TOL_OUT);
            }
            REQUIRE(amdim_model_logits(m, 0, logits) == 0, "logits");
            cmp_scaled("logits_mlp", logits, ref_get(&rf, "out/logits_mlp", REF_F32), TOL_OUT);
            REQUIRE(amdim_model_logits(m, 1, logits) == 0, "logits");
            cmp_scaled("logits_lin", logits, ref_get(&rf, "out/logits_lin", REF_F32), TOL_OUT);
            free(buf);
            REQUIRE(amdim_model_pull(m) == 0, "pull: %s", amdim_model_error(m));
            for (int i = 0; i < n; i++) {
                amdim_param p;
                amdim_model_param(m, i, &p);
                if (p.buffer)
                    continue;
                snprintf(name, sizeof name, "grad/%s", p.name);
                const ref_tensor *g = ref_get(&rf, name, REF_F64);
                double worst = 0;
                for (size_t k = 0; k < p.size; k++) {
                    double r = ((const double *)g->data)[k], d = fabs(p.grad[k] - r);
                    double rel = d / (TOL_GRAD_ABS + TOL_GRAD_REL * fabs(r));
                    worst = rel > worst ? rel : worst;
                }
                CHECK(worst <= 1.0, "gradient of %s: error %.2f x the tolerance %.1g + %.1g|ref|", p.name, worst,
                      TOL_GRAD_ABS, TOL_GRAD_REL);
                if (worst > worst_grad) {
                    worst_grad = worst;
                    snprintf(worst_grad_name, sizeof worst_grad_name, "%s", p.name);
                }
            }
        }
        REQUIRE(amdim_model_adam_step(m, 0) == 0, "adam: %s", amdim_model_error(m));
    }
    free(logits);
    REQUIRE(amdim_model_pull(m) == 0, "pull: %s", amdim_model_error(m));
    /* After 3 Adam steps: first-conv weights and running statistics. */
    for (int i = 0; i < rf.n; i++) {
        if (strncmp(rf.t[i].name, "final/", 6) != 0)
            continue;
        const char *pname = rf.t[i].name + 6;
        int k = amdim_model_find(m, pname);
        CHECK(k >= 0, "no tensor %s", pname);
        if (k < 0)
            continue;
        amdim_param p;
        amdim_model_param(m, k, &p);
        double worst = 0;
        for (size_t j = 0; j < p.size; j++) {
            double r = ((const double *)rf.t[i].data)[j];
            double rel = fabs(p.data[j] - r) / (TOL_FINAL_ABS + TOL_FINAL_REL * fabs(r));
            worst = rel > worst ? rel : worst;
        }
        CHECK(worst <= 1.0, "%s after 3 Adam steps: error %.2f x the tolerance %.1g + %.1g|ref|", pname, worst,
              TOL_FINAL_ABS, TOL_FINAL_REL);
        worst_final = worst > worst_final ? worst : worst_final;
    }
    printf("largest errors (tolerance): outputs %.2g (%.1g, relative to the tensor's scale), losses %.2g (%.1g, "
           "relative), gradients %.3f x the tolerance %.1g + %.1g|ref| (%s), after 3 Adam steps %.3f x the tolerance "
           "%.1g + %.1g|ref|\n",
           worst_out, TOL_OUT, worst_loss, TOL_LOSS, worst_grad, TOL_GRAD_ABS, TOL_GRAD_REL, worst_grad_name,
           worst_final, TOL_FINAL_ABS, TOL_FINAL_REL);
    amdim_model_destroy(m);
    ref_free(&rf);
    return test_finish("test_trainer_parity");
}
