/* Mixture-based representations (docs/mixtures.md) at the model level,
 * for a tiny configuration of each encoder size:
 *   - K = 1 is the plain model: the same tensors, and with the mixture
 *     knobs (tau, alpha) changed the same losses and gradients bit for bit
 *     and the same checkpoint bytes;
 *   - K = 4 with fc2 zeroed (four equal components) gives
 *     the plain NCE terms, encoder gradients and r1 (within float summation
 *     order), an exactly uniform assignment (entropy 2 log 4), and the mean
 *     of the mixture features as the probes' features equals r1;
 *   - the pictures' assignment, the K = 1 refusal and the CUDA refusal.
 * (Finite differences: test_trainer_ops; PyTorch K = 4: test_trainer_parity_enc32_mix4.) */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_checkpoint.h"
#include "amdim_philox.h"
#include "amdim_trainer.h"
#include "testutil.h"

#define B 3

typedef struct {
    int size, ndf, n_rkhs, depth, use_bn;
} tiny;

static amdim_model *create(const tiny *t, int K, float tau, float alpha, int probe_features)
{
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, t->size);
    cfg.ndf = t->ndf;
    cfg.n_rkhs = t->n_rkhs;
    cfg.n_depth = t->depth;
    cfg.use_bn = t->use_bn;
    cfg.n_classes = 3;
    cfg.mlp_hidden = 8;
    cfg.seed = 5;
    cfg.mixtures = K;
    cfg.mix_tau = tau;
    cfg.mix_entropy = alpha;
    cfg.probe_features = probe_features;
    amdim_model *m;
    char err[512];
    REQUIRE(amdim_model_create(&m, &cfg, err, sizeof err) == 0, "create: %s", err);
    return m;
}

static float *inputs[2], *mask_in, *mask_hidden;
static int32_t labels[B] = {0, 2, -1}, src5[2 * B] = {3, 17, 24, 0, 12, 8};

static void step(amdim_model *m, amdim_step_stats *st)
{
    REQUIRE(amdim_model_forward_backward(m, inputs[0], inputs[1], labels, B, src5, mask_in, mask_hidden, st) == 0,
            "step: %s", amdim_model_error(m));
}

/* Largest |a - b| / (1e-6 + 1e-4 |b|) over the encoder's gradients (the
 * biases before a BatchNorm have a gradient of zero up to rounding). */
static double encoder_grad_error(const amdim_model *a, const amdim_model *b)
{
    double worst = 0;
    for (int i = 0; i < amdim_model_param_count(b); i++) {
        amdim_param p, q;
        amdim_model_param(b, i, &q);
        if (q.buffer || strncmp(q.name, "encoder.", 8) != 0)
            continue;
        amdim_model_param(a, amdim_model_find(a, q.name), &p);
        for (size_t k = 0; k < q.size; k++) {
            double err = fabs(p.grad[k] - q.grad[k]) / (1e-6 + 1e-4 * fabs(q.grad[k]));
            worst = err > worst ? err : worst;
        }
    }
    return worst;
}

static void test_size(const tiny *t)
{
    int S = t->size;
    size_t n = (size_t)B * 3 * S * S;
    amdim_rng rng;
    amdim_rng_init(&rng, 9, 1, (uint64_t)S);
    for (int v = 0; v < 2; v++) {
        inputs[v] = malloc(n * sizeof(float));
        for (size_t k = 0; k < n; k++)
            inputs[v][k] = amdim_rng_uniform(&rng, -2, 2);
    }
    mask_in = malloc((size_t)2 * B * t->n_rkhs * sizeof(float));
    mask_hidden = malloc((size_t)2 * B * 8 * sizeof(float));
    for (int k = 0; k < 2 * B * t->n_rkhs; k++)
        mask_in[k] = k % 5 != 0;
    for (int k = 0; k < 2 * B * 8; k++)
        mask_hidden[k] = k % 4 != 1;

    /* K = 1: the knobs are inert, the tensors are the plain model's */
    amdim_model *plain = create(t, 1, 1.0f, 1.0f, 0), *k1 = create(t, 1, 3.0f, 0.25f, 0);
    CHECK(amdim_model_param_count(plain) == amdim_model_param_count(k1), "K = 1 adds tensors");
    CHECK(amdim_model_find(k1, "mixture.fc1.weight") < 0, "K = 1 has mixture tensors");
    amdim_step_stats sp, s1;
    step(plain, &sp);
    step(k1, &s1);
    CHECK(memcmp(&sp, &s1, sizeof sp) == 0, "%d px: K = 1 losses differ from the plain model's (%.17g vs %.17g)", S,
          s1.total, sp.total);
    int differ = 0;
    for (int i = 0; i < amdim_model_param_count(plain); i++) {
        amdim_param p, q;
        amdim_model_param(plain, i, &p);
        amdim_model_param(k1, i, &q);
        differ += strcmp(p.name, q.name) != 0 || memcmp(p.data, q.data, p.size * 4) != 0 ||
                  (p.grad && memcmp(p.grad, q.grad, p.size * 4) != 0);
    }
    CHECK(differ == 0, "%d px: %d tensors or gradients differ between K = 1 and the plain model", S, differ);
    CHECK(sp.mix_entropy == 0, "plain model reports a mixture entropy %g", sp.mix_entropy);
    /* the same checkpoint bytes */
    char d1[4200], d2[4200], err[512];
    snprintf(d1, sizeof d1, "%s", test_path("plain"));
    snprintf(d2, sizeof d2, "%s", test_path("k1"));
    test_mkdirs(d1);
    test_mkdirs(d2);
    amdim_checkpoint_info ci = {.step = 0, .epochs = 1, .max_steps = -1, .preset = "cifar", .batch = B};
    REQUIRE(amdim_checkpoint_save(plain, d1, &ci, err, sizeof err) == 0, "%s", err);
    REQUIRE(amdim_checkpoint_save(k1, d2, &ci, err, sizeof err) == 0, "%s", err);
    const char *files[2] = {"ckpt-00000000.safetensors", "ckpt-00000000.optim.safetensors"};
    for (int f = 0; f < 2; f++) {
        char p1[4300], p2[4300];
        snprintf(p1, sizeof p1, "%s/%s", d1, files[f]);
        snprintf(p2, sizeof p2, "%s/%s", d2, files[f]);
        size_t l1, l2;
        char *b1 = test_read_file(p1, &l1), *b2 = test_read_file(p2, &l2);
        CHECK(b1 && b2 && l1 == l2 && memcmp(b1, b2, l1) == 0, "%d px: K = 1 %s differs from the plain model's", S,
              files[f]);
        CHECK(b1 && !strstr(b1 + 8, "mixtures"), "K = 1 checkpoint metadata names mixtures");
        free(b1);
        free(b2);
    }

    /* K = 4 with fc2 zeroed: four equal components (fc2 starts at U(+-0.01)
     * so that they do not stay equal) */
    amdim_model *k4 = create(t, 4, 2.0f, 0.5f, 1);
    amdim_param w2;
    amdim_model_param(k4, amdim_model_find(k4, "mixture.fc2.weight"), &w2);
    double w2max = 0;
    for (size_t k = 0; k < w2.size; k++)
        w2max = fabs(w2.data[k]) > w2max ? fabs(w2.data[k]) : w2max;
    CHECK(w2max > 0 && w2max <= 0.01, "fc2 starts at U(+-0.01), not within %g", w2max);
    memset(w2.data, 0, w2.size * sizeof(float));
    CHECK(amdim_model_param_count(k4) == amdim_model_param_count(plain) + 4, "K = 4: %d tensors, plain %d",
          amdim_model_param_count(k4), amdim_model_param_count(plain));
    amdim_step_stats s4;
    step(k4, &s4);
    double e[4] = {fabs(s4.nce_1t5 - sp.nce_1t5) / sp.nce_1t5, fabs(s4.nce_1t7 - sp.nce_1t7) / sp.nce_1t7,
                   fabs(s4.nce_5t5 - sp.nce_5t5) / sp.nce_5t5, fabs(s4.reg - sp.reg) / (sp.reg + 1e-12)};
    for (int k = 0; k < 4; k++)
        CHECK(e[k] < 1e-6, "%d px: K = 4 with fc2 zero: loss term %d differs from the plain one by %.3g (relative)", S,
              k, e[k]);
    CHECK(fabs(s4.mix_entropy - 2 * log(4.0)) < 1e-12, "%d px: equal components: entropy %.17g, want 2 log 4", S,
          s4.mix_entropy);
    CHECK(fabs(s4.total - (s4.nce_1t5 + s4.nce_1t7 + s4.nce_5t5 + s4.reg + s4.cls_mlp + s4.cls_lin -
                           0.5 * s4.mix_entropy)) < 1e-12,
          "total %.17g is not the terms - alpha H", s4.total);
    double ge = encoder_grad_error(k4, plain);
    CHECK(ge <= 1, "%d px: K = 4 with fc2 zero: encoder gradients differ by %.3g x the tolerance 1e-6 + 1e-4|plain|", S, ge);
    /* the probes read the mixture mean: equal to r1 here, bit for bit */
    uint8_t *img = malloc((size_t)B * S * S * 3);
    for (size_t k = 0; k < (size_t)B * S * S * 3; k++)
        img[k] = (uint8_t)(k * 37 % 251);
    float *fp = malloc((size_t)B * t->n_rkhs * 4), *f4 = malloc((size_t)B * t->n_rkhs * 4);
    REQUIRE(amdim_model_evaluate(plain, img, B, fp, NULL, NULL) == 0, "%s", amdim_model_error(plain));
    REQUIRE(amdim_model_evaluate(k4, img, B, f4, NULL, NULL) == 0, "%s", amdim_model_error(k4));
    CHECK(memcmp(fp, f4, (size_t)B * t->n_rkhs * 4) == 0, "%d px: mixture-mean features of equal components differ from r1", S);
    printf("%d px: K = 1 bit-identical; K = 4 (fc2 zero) loss terms within %.2g, encoder gradients within %.2g x tolerance, "
           "entropy %.6f\n",
           S, fmax(fmax(e[0], e[1]), fmax(e[2], e[3])), ge, s4.mix_entropy);

    /* pictures: winners in 0..K-1; none without mixtures */
    int32_t win[B * 49];
    for (size_t k = 0; k < w2.size; k++)
        w2.data[k] = amdim_rng_uniform(&rng, -0.3f, 0.3f);
    REQUIRE(amdim_model_mixture_assign(k4, img, B, win) == 0, "%s", amdim_model_error(k4));
    int ok = 1, seen[4] = {0};
    for (int k = 0; k < B * 49; k++) {
        ok &= win[k] >= 0 && win[k] < 4;
        if (win[k] >= 0 && win[k] < 4)
            seen[win[k]] = 1;
    }
    CHECK(ok && seen[0] + seen[1] + seen[2] + seen[3] >= 2, "winners out of range or all one component");
    CHECK(amdim_model_mixture_assign(plain, img, B, win) == AMDIM_E_INVALID, "K = 1 gave a mixture map");
    free(img), free(fp), free(f4);
    amdim_model_destroy(plain);
    amdim_model_destroy(k1);
    amdim_model_destroy(k4);
    free(inputs[0]), free(inputs[1]), free(mask_in), free(mask_hidden);
}

int main(void)
{
    static const tiny sizes[] = {{32, 8, 32, 1, 0}, {64, 4, 40, 1, 1}, {128, 4, 32, 1, 0}};
    for (int i = 0; i < 3; i++)
        test_size(&sizes[i]);
    /* the CUDA backend refuses K > 1, whatever this build has */
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, 32);
    cfg.ndf = 8, cfg.n_rkhs = 32, cfg.n_depth = 1, cfg.mixtures = 4;
    amdim_model *m = NULL;
    char err[512];
    CHECK(amdim_model_create_on(&m, &cfg, AMDIM_DEVICE_CUDA, err, sizeof err) == AMDIM_E_UNSUPPORTED && !m &&
              strstr(err, "mixtures") && strstr(err, "CUDA"),
          "CUDA with mixtures: %s", err);
    /* mixtures need the nce objective; mixture-mean probes need mixtures */
    cfg.objective = AMDIM_OBJECTIVE_JSD;
    CHECK(amdim_model_create(&m, &cfg, err, sizeof err) == AMDIM_E_INVALID && strstr(err, "nce"), "jsd with mixtures: %s", err);
    cfg.objective = AMDIM_OBJECTIVE_NCE, cfg.mixtures = 1, cfg.probe_features = 1;
    CHECK(amdim_model_create(&m, &cfg, err, sizeof err) == AMDIM_E_INVALID && strstr(err, "mixture-mean"),
          "mixture-mean without mixtures: %s", err);
    return test_finish("test_trainer_mixture");
}
