/* Double-buffered input (amdim_model_stage_input, the *_staged steps), as
 * amdim_train_run drives it: two slots held at once, the source memory
 * overwritten as soon as stage_wait returned, unlabelled rows, the
 * classifier phase. Staged training equals amdim_model_train_step on the
 * same batches - bit for bit on the CPU; on CUDA (argument "cuda", label
 * gpu, exit 77 without a device) losses within 1e-5 relative and weights
 * within Adam's step bound (7 lr per update: a gradient that is zero in
 * exact arithmetic, like the bias before the heads' last BatchNorm, holds
 * rounding noise whose sign Adam turns into a full step), since the two
 * models may measure different cuDNN algorithms. Empty and bad slots are
 * AMDIM_E_INVALID. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_trainer.h"
#include "testutil.h"

#define B 8
#define S 32
#define VIEW (B * S * S * 3)

static uint8_t views[3][2][VIEW];
static int32_t labels[3][B];
static amdim_device dev;

static void compare(const char *what, const amdim_step_stats *a, const amdim_step_stats *b)
{
    const double *x = &a->nce_1t5, *y = &b->nce_1t5;
    for (int i = 0; i < 8; i++) {
        double tol = dev == AMDIM_DEVICE_CPU ? 0 : 1e-5 * fmax(fabs(y[i]), 1e-3);
        CHECK(fabs(x[i] - y[i]) <= tol, "%s: term %d staged %.17g plain %.17g", what, i, x[i], y[i]);
    }
    CHECK(a->correct_mlp == b->correct_mlp && a->correct_lin == b->correct_lin && a->labelled == b->labelled,
          "%s: counts", what);
}

static amdim_model *make(void)
{
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, S);
    cfg.ndf = 16, cfg.n_rkhs = 64, cfg.n_depth = 1, cfg.mlp_hidden = 32, cfg.warmup = 0, cfg.seed = 5;
    amdim_model *m;
    char err[512];
    REQUIRE(amdim_model_create_on(&m, &cfg, dev, err, sizeof err) == 0, "%s", err);
    return m;
}

int main(int argc, char **argv)
{
    dev = AMDIM_DEVICE_CPU;
    if (argc > 1 && strcmp(argv[1], "cuda") == 0) {
        char err[512];
        if (amdim_device_resolve("cuda", &dev, err, sizeof err)) {
            printf("test_model_staging: skipped: %s\n", err);
            return TEST_SKIP;
        }
    }
    uint32_t x = 12345;
    for (int k = 0; k < 3; k++) {
        for (int v = 0; v < 2; v++)
            for (int i = 0; i < VIEW; i++)
                views[k][v][i] = (uint8_t)((x = x * 1664525u + 1013904223u) >> 24);
        for (int i = 0; i < B; i++)
            labels[k][i] = (i + k) % 5 == 4 ? -1 : (i + k) % 10; /* some unlabelled */
    }
    amdim_model *a = make(), *b = make();
    amdim_step_stats sa[4], sb[4];
    for (int k = 0; k < 3; k++)
        REQUIRE(amdim_model_train_step(a, views[k][0], views[k][1], labels[k], B, 0, &sa[k]) == 0, "%s",
                amdim_model_error(a));

    /* the run loop's order: batch 0 staged and waited for, batch 1 staged into
     * the other slot, step 0, wait, step 1, ... with the sources reused at once */
    uint8_t src[2][VIEW];
    int32_t lab[B];
    memcpy(src, views[0], sizeof src);
    memcpy(lab, labels[0], sizeof lab);
    REQUIRE(amdim_model_stage_input(b, 0, src[0], src[1], lab, B) == 0, "%s", amdim_model_error(b));
    REQUIRE(amdim_model_stage_wait(b, 0) == 0, "%s", amdim_model_error(b));
    memset(src, 0xa5, sizeof src);
    memset(lab, 0, sizeof lab);
    for (int k = 1; k <= 3; k++) {
        int slot = (k - 1) % 2;
        if (k < 3) {
            memcpy(src, views[k], sizeof src);
            memcpy(lab, labels[k], sizeof lab);
            REQUIRE(amdim_model_stage_input(b, 1 - slot, src[0], src[1], lab, B) == 0, "%s", amdim_model_error(b));
        }
        REQUIRE(amdim_model_train_step_staged(b, slot, 0, &sb[k - 1]) == 0, "%s", amdim_model_error(b));
        if (k < 3) {
            REQUIRE(amdim_model_stage_wait(b, 1 - slot) == 0, "%s", amdim_model_error(b));
            memset(src, 0x5a, sizeof src);
            memset(lab, 0, sizeof lab);
        }
        char what[64];
        snprintf(what, sizeof what, "step %d", k);
        compare(what, &sb[k - 1], &sa[k - 1]);
    }
    CHECK(amdim_model_train_step_staged(b, 0, 0, &sb[3]) == AMDIM_E_INVALID, "a consumed slot must be empty");
    CHECK(amdim_model_stage_wait(b, 1) == AMDIM_E_INVALID, "wait on an empty slot");
    CHECK(amdim_model_stage_input(b, 2, src[0], src[1], lab, B) == AMDIM_E_INVALID, "slot 2");
    CHECK(amdim_model_train_step_staged(b, -1, 0, &sb[3]) == AMDIM_E_INVALID, "slot -1");

    /* the classifier phase, unlabelled batch included (labels NULL) */
    REQUIRE(amdim_model_reset_probes(a, 9) == 0 && amdim_model_reset_probes(b, 9) == 0, "reset_probes");
    REQUIRE(amdim_model_train_probes_step(a, views[1][0], views[1][1], labels[1], B, 0, &sa[3]) == 0, "%s",
            amdim_model_error(a));
    REQUIRE(amdim_model_stage_input(b, 1, views[1][0], views[1][1], labels[1], B) == 0, "%s", amdim_model_error(b));
    REQUIRE(amdim_model_train_probes_step_staged(b, 1, 0, &sb[3]) == 0, "%s", amdim_model_error(b));
    compare("probe step", &sb[3], &sa[3]);
    amdim_step_stats u;
    REQUIRE(amdim_model_stage_input(b, 0, views[2][0], views[2][1], NULL, B) == 0, "%s", amdim_model_error(b));
    REQUIRE(amdim_model_train_probes_step_staged(b, 0, 0, &u) == 0, "%s", amdim_model_error(b));
    CHECK(u.labelled == 0, "labels NULL: %d labelled", u.labelled);

    /* every tensor after the same updates */
    REQUIRE(amdim_model_pull(a) == 0 && amdim_model_pull(b) == 0, "pull");
    int32_t none[B];
    for (int i = 0; i < B; i++)
        none[i] = -1;
    REQUIRE(amdim_model_train_probes_step(a, views[2][0], views[2][1], none, B, 0, &u) == 0, "%s",
            amdim_model_error(a));
    REQUIRE(amdim_model_pull(a) == 0, "pull");
    for (int i = 0; i < amdim_model_param_count(a); i++) {
        amdim_param p, q;
        amdim_model_param(a, i, &p);
        amdim_model_param(b, i, &q);
        double worst = 0, bound = dev == AMDIM_DEVICE_CPU ? 0 : 5 * 7 * amdim_model_get_config(a)->lr;
        for (size_t j = 0; j < p.size; j++)
            worst = fmax(worst, isfinite(q.data[j]) ? fabs((double)p.data[j] - q.data[j]) : INFINITY);
        CHECK(worst <= bound, "%s: staged and plain differ by %g (bound %g)", p.name, worst, bound);
    }
    amdim_model_destroy(a);
    amdim_model_destroy(b);
    return test_finish(dev == AMDIM_DEVICE_CPU ? "test_model_staging" : "test_model_staging cuda");
}
