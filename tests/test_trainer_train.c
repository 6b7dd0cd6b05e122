/* Training through the public API: uint8 view pairs made by the augmenter
 * from a small synthetic labelled set; the loss goes down, the same seed
 * gives bit-identical losses, the online probes learn the classes, and
 * evaluation runs in eval mode. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_augment.h"
#include "amdim_trainer.h"
#include "testutil.h"

#define N 64
#define BATCH 16
#define STEPS 40

static uint8_t images[N][32 * 32 * 3];
static int32_t labels[N];

static void make_data(void)
{
    for (int i = 0; i < N; i++) {
        labels[i] = i % 4;
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                /* class = orientation of a stripe pattern, plus noise */
                int v;
                switch (labels[i]) {
                case 0: v = (x / 4) % 2; break;
                case 1: v = (y / 4) % 2; break;
                case 2: v = ((x + y) / 4) % 2; break;
                default: v = ((x - y + 64) / 4) % 2; break;
                }
                for (int c = 0; c < 3; c++)
                    images[i][(y * 32 + x) * 3 + c] = (uint8_t)(v ? 200 - 30 * c : 40 + 20 * c) + (uint8_t)((i * 7 + x * 3 + y) % 9);
            }
    }
}

static void run(double *losses, double *acc_last)
{
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, 32);
    cfg.ndf = 8;
    cfg.n_rkhs = 32;
    cfg.n_depth = 1;
    cfg.n_classes = 4;
    cfg.mlp_hidden = 32;
    cfg.lr = 2e-3f;
    cfg.warmup = 5;
    cfg.seed = 3;
    amdim_model *m;
    char err[256];
    REQUIRE(amdim_model_create(&m, &cfg, err, sizeof err) == 0, "%s", err);
    amdim_augment_config ac;
    amdim_augment_preset("cifar", &ac);
    amdim_augmenter *aug;
    REQUIRE(amdim_augment_create(&aug, &ac) == 0, "augmenter");
    uint8_t *v1 = malloc(BATCH * 32 * 32 * 3), *v2 = malloc(BATCH * 32 * 32 * 3);
    int32_t lab[BATCH];
    int correct = 0, labelled = 0;
    for (int s = 0; s < STEPS; s++) {
        for (int b = 0; b < BATCH; b++) {
            int idx = (s * BATCH + b * 5) % N;
            amdim_record r = {.label = labels[idx], .aux_label = -1, .width = 32, .height = 32, .channels = 3,
                              .encoding = AMDIM_ENCODING_RAW, .payload = images[idx], .payload_size = 32 * 32 * 3};
            REQUIRE(amdim_augment_pair(aug, &r, 1, 0, (uint64_t)(s * BATCH + b), v1 + b * 3072, v2 + b * 3072, NULL) == 0,
                    "augment");
            lab[b] = b == 0 ? -1 : labels[idx];
        }
        amdim_step_stats st;
        REQUIRE(amdim_model_train_step(m, v1, v2, lab, BATCH, 0, &st) == 0, "step: %s", amdim_model_error(m));
        CHECK(isfinite(st.total), "loss not finite at step %d", s);
        losses[s] = st.total;
        if (s >= STEPS - 10) {
            correct += st.correct_lin;
            labelled += st.labelled;
        }
    }
    *acc_last = (double)correct / labelled;
    CHECK(amdim_model_updates(m) == STEPS, "updates %llu", (unsigned long long)amdim_model_updates(m));
    /* evaluation: eval-mode BatchNorm, finite features and logits */
    float feats[BATCH * 32], lm[BATCH * 4], ll[BATCH * 4];
    REQUIRE(amdim_model_evaluate(m, v1, BATCH, feats, lm, ll) == 0, "evaluate: %s", amdim_model_error(m));
    int finite = 1;
    for (int i = 0; i < BATCH * 32; i++)
        finite &= isfinite(feats[i]);
    CHECK(finite, "evaluation features not finite");
    /* evaluation must not move the running statistics */
    int k = amdim_model_find(m, "encoder.module.layer_list.8.bn.running_mean");
    REQUIRE(k >= 0, "running mean missing");
    amdim_param p;
    amdim_model_param(m, k, &p);
    REQUIRE(amdim_model_pull(m) == 0, "pull");
    float before = p.data[0];
    amdim_model_evaluate(m, v2, BATCH, feats, NULL, NULL);
    REQUIRE(amdim_model_pull(m) == 0, "pull");
    CHECK(p.data[0] == before, "evaluation changed running statistics");
    free(v1);
    free(v2);
    amdim_augment_destroy(aug);
    amdim_model_destroy(m);
}

int main(void)
{
    make_data();
    double a[STEPS], b[STEPS], acc_a, acc_b;
    run(a, &acc_a);
    run(b, &acc_b);
    CHECK(memcmp(a, b, sizeof a) == 0, "two runs with the same seed differ");
    double first = 0, last = 0;
    for (int i = 0; i < 5; i++) {
        first += a[i] / 5;
        last += a[STEPS - 5 + i] / 5;
    }
    printf("loss: first 5 steps %.4f, last 5 steps %.4f; linear probe accuracy over the last 10 steps %.2f\n", first,
           last, acc_a);
    CHECK(last < first - 0.3, "the loss did not go down: %.4f -> %.4f", first, last);
    CHECK(acc_a > 0.5, "the linear probe did not learn 4 stripe orientations: %.2f", acc_a);
    return test_finish("test_trainer_train");
}
