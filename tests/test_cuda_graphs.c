/* CUDA graphs of the training step (label gpu; exits 77 without a usable
 * GPU). One model, one starting state, the same steps twice: first with
 * AMDIM_CUDA_GRAPHS=0 (eager), then, from the restored state, with graphs;
 * every loss term, count, weight, gradient and Adam moment must be bit
 * identical. The steps are staged as amdim_train_run stages them (two
 * input slots alternating, the next batch copied while a step runs), the
 * batch size changes (4, 2, back to 4: the arena and the graph are made
 * again), the labelled count changes (the probes' 1 / labelled rows), the
 * learning rate warms up (Adam's hyper-parameters), BatchNorm is on (its
 * running statistics), and two classifier-phase steps follow (the probes-
 * only Adam graph). The graph counts show that graphs did run. */
#include <stdlib.h>
#include <string.h>

#include "backend_internal.h"
#include "backend_cuda_internal.h"
#include "testutil.h"

#define S 32
#define BMAX 4
#define STEPS 7
#define PROBE_STEPS 2
#define VIEW (BMAX * S * S * 3)

static const int batch[STEPS] = {4, 4, 4, 2, 2, 4, 4};
static uint8_t views[STEPS + PROBE_STEPS][2][VIEW];
static int32_t labels[STEPS + PROBE_STEPS][BMAX];

typedef struct {
    amdim_step_stats st[STEPS + PROBE_STEPS];
    float *weights, *grads, *adam_m, *adam_v;
} outcome;

/* The model's whole state into o (or, with restore, from o back into the model). */
static void state(amdim_model *m, outcome *o, int restore)
{
    size_t ws = m->arch.weights_size * sizeof(float), gs = m->arch.grads_size * sizeof(float);
    if (restore) {
        memcpy(m->weights, o->weights, ws), memcpy(m->grads, o->grads, gs);
        memcpy(m->adam_m, o->adam_m, gs), memcpy(m->adam_v, o->adam_v, gs);
        REQUIRE(amdim_model_push(m) == 0, "push: %s", amdim_model_error(m));
        return;
    }
    REQUIRE(amdim_model_pull(m) == 0, "pull: %s", amdim_model_error(m));
    o->weights = malloc(ws), o->grads = malloc(gs), o->adam_m = malloc(gs), o->adam_v = malloc(gs);
    REQUIRE(o->weights && o->grads && o->adam_m && o->adam_v, "out of memory");
    memcpy(o->weights, m->weights, ws), memcpy(o->grads, m->grads, gs);
    memcpy(o->adam_m, m->adam_m, gs), memcpy(o->adam_v, m->adam_v, gs);
}

/* The steps, staged as the run loop does: batch k+1 copied while step k runs. */
static void run_steps(amdim_model *m, outcome *o)
{
    REQUIRE(amdim_model_stage_input(m, 0, views[0][0], views[0][1], labels[0], batch[0]) == 0, "%s",
            amdim_model_error(m));
    REQUIRE(amdim_model_stage_wait(m, 0) == 0, "%s", amdim_model_error(m));
    for (int k = 0; k < STEPS; k++) {
        int slot = k % 2;
        if (k + 1 < STEPS)
            REQUIRE(amdim_model_stage_input(m, 1 - slot, views[k + 1][0], views[k + 1][1], labels[k + 1],
                                            batch[k + 1]) == 0,
                    "%s", amdim_model_error(m));
        REQUIRE(amdim_model_train_step_staged(m, slot, 0, &o->st[k]) == 0, "step %d: %s", k, amdim_model_error(m));
        if (k + 1 < STEPS)
            REQUIRE(amdim_model_stage_wait(m, 1 - slot) == 0, "%s", amdim_model_error(m));
    }
    amdim_model_freeze_encoder(m);
    for (int k = STEPS; k < STEPS + PROBE_STEPS; k++)
        REQUIRE(amdim_model_train_probes_step(m, views[k][0], views[k][1], labels[k], BMAX, 0, &o->st[k]) == 0,
                "probe step %d: %s", k, amdim_model_error(m));
    state(m, o, 0);
}

static void same(const char *what, const float *a, const float *b, size_t n)
{
    size_t i = 0;
    while (i < n && memcmp(&a[i], &b[i], sizeof *a) == 0)
        i++;
    CHECK(i == n, "%s: element %zu of %zu: eager %.9g graphs %.9g", what, i, n, i < n ? a[i] : 0.0,
          i < n ? b[i] : 0.0);
}

int main(void)
{
    char why[256];
    if (!amdim_cuda_available(why, sizeof why)) {
        printf("test_cuda_graphs: skipped: %s\n", why);
        return TEST_SKIP;
    }
    uint32_t x = 777;
    for (int k = 0; k < STEPS + PROBE_STEPS; k++) {
        for (int v = 0; v < 2; v++)
            for (int i = 0; i < VIEW; i++)
                views[k][v][i] = (uint8_t)((x = x * 1664525u + 1013904223u) >> 24);
        for (int i = 0; i < BMAX; i++) /* 1 to 3 of 4 labelled, varying */
            labels[k][i] = i <= k % 3 ? (i + k) % 10 : -1;
    }
    amdim_model_config cfg;
    amdim_model_config_default(&cfg, S);
    cfg.ndf = 8, cfg.n_rkhs = 32, cfg.n_depth = 2, cfg.use_bn = 1, cfg.mlp_hidden = 16, cfg.seed = 3;
    cfg.warmup = 20; /* the learning rate changes every update */
    amdim_model *m;
    char err[512];
    REQUIRE(amdim_model_create_on(&m, &cfg, AMDIM_DEVICE_CUDA, err, sizeof err) == 0, "%s", err);
    outcome start, eager, graphs;
    state(m, &start, 0);
    uint64_t updates = amdim_model_updates(m);
    unsigned long captures, launches;

    setenv("AMDIM_CUDA_GRAPHS", "0", 1);
    run_steps(m, &eager);
    amdim_cuda_graph_counts(m, &captures, &launches);
    CHECK(captures == 0 && launches == 0, "AMDIM_CUDA_GRAPHS=0: %lu captures, %lu launches", captures, launches);

    state(m, &start, 1);
    amdim_model_set_updates(m, updates);
    m->probes_only = 0; /* undo the freeze: the same steps again */
    setenv("AMDIM_CUDA_GRAPHS", "1", 1);
    run_steps(m, &graphs);
    amdim_cuda_graph_counts(m, &captures, &launches);
    /* Step graphs: captured at steps 0 (warm from the eager run), 4 (after
     * batch 2's eager warm-up at step 3) and 6 (batch 4 again), replayed at
     * 0, 1, 2, 4, 6; Adam: captured at the first update of each kind,
     * replayed at all 7 + 2. */
    CHECK(captures == 5 && launches == 14, "%lu captures (expected 5), %lu launches (expected 14)", captures,
          launches);

    for (int k = 0; k < STEPS + PROBE_STEPS; k++) {
        const amdim_step_stats *a = &eager.st[k], *b = &graphs.st[k];
        CHECK(memcmp(&a->nce_1t5, &b->nce_1t5, 8 * sizeof(double)) == 0, "step %d: losses eager %.17g graphs %.17g",
              k, a->total, b->total);
        CHECK(a->correct_mlp == b->correct_mlp && a->correct_lin == b->correct_lin && a->labelled == b->labelled,
              "step %d: counts", k);
    }
    size_t wn = m->arch.weights_size, gn = m->arch.grads_size;
    same("weights", eager.weights, graphs.weights, wn);
    same("gradients", eager.grads, graphs.grads, gn);
    same("adam m", eager.adam_m, graphs.adam_m, gn);
    same("adam v", eager.adam_v, graphs.adam_v, gn);
    /* and the steps did train: the state moved */
    CHECK(memcmp(start.weights, graphs.weights, wn * sizeof(float)) != 0, "the weights did not change");
    amdim_model_destroy(m);
    outcome *all[] = {&start, &eager, &graphs};
    for (int i = 0; i < 3; i++)
        free(all[i]->weights), free(all[i]->grads), free(all[i]->adam_m), free(all[i]->adam_v);
    return test_finish("test_cuda_graphs");
}
