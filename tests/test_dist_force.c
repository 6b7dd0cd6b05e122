/* The data-parallel path at one rank: a model joined to a forced one-rank
 * group (test_single_rank_comm: the collectives are copies) against the
 * same model without a group, from one seed, on the same steps. Every
 * loss term and count of every step, and the weights, gradients and Adam
 * moments after them, must be bit for bit equal - which checks the
 * gather / scatter bookkeeping of the targets, the global counts and the
 * reductions wherever they can be checked without a second rank.
 *
 *   test_dist_force cpu   the CPU backend's collectives (no GPU needed)
 *   test_dist_force cuda  (ctest: test_cuda_dist, label gpu) the CUDA
 *                         backend with a one-rank NCCL communicator; 77
 *                         without a usable GPU or in a build without NCCL
 *
 * A table of configurations: BatchNorm off, on, and on with the group
 * synchronising it (--sync-bn: the statistics go through the collectives),
 * with the three
 * objectives on the CPU, with NCE in both precisions on CUDA (kept short
 * for tools/gpu-check.sh's test stage); the batch changes (4, 4, 2, 4: buffers made
 * again), the labelled count changes, and a classifier-phase step ends
 * each run. */
#include <stdlib.h>
#include <string.h>

#include "backend_internal.h"
#include "testutil.h"

#define S 32
#define BMAX 4
#define STEPS 4
#define VIEW (BMAX * S * S * 3)

static const int batch[STEPS + 1] = {4, 4, 2, 4, 4};
static uint8_t views[STEPS + 1][2][VIEW];
static int32_t labels[STEPS + 1][BMAX];

typedef struct {
    amdim_step_stats st[STEPS + 1];
    float *weights, *grads, *adam_m, *adam_v;
} outcome;

static void outcome_free(outcome *o) { free(o->weights), free(o->grads), free(o->adam_m), free(o->adam_v); }

/* The steps on a fresh model (with comm, or none), then its whole state. */
static int run(const amdim_model_config *cfg, amdim_device dev, int bf16, const amdim_comm *comm, outcome *o,
               char *why, size_t whyn)
{
    amdim_model *m;
    char err[512];
    REQUIRE(amdim_model_create_on(&m, cfg, dev, err, sizeof err) == 0, "%s", err);
    if (bf16)
        REQUIRE(amdim_model_set_precision(m, AMDIM_PRECISION_BF16) == 0, "%s", amdim_model_error(m));
    int rc = amdim_model_set_comm(m, comm);
    if (rc == AMDIM_E_UNSUPPORTED) { /* CUDA without NCCL */
        snprintf(why, whyn, "%s", amdim_model_error(m));
        amdim_model_destroy(m);
        return rc;
    }
    REQUIRE(rc == 0, "set_comm: %s", amdim_model_error(m));
    REQUIRE(amdim_model_bcast_state(m, 0) == 0, "bcast_state: %s", amdim_model_error(m));
    for (int k = 0; k < STEPS; k++) {
        REQUIRE(amdim_model_train_step(m, views[k][0], views[k][1], labels[k], batch[k], 0, &o->st[k]) == 0,
                "step %d: %s", k, amdim_model_error(m));
        REQUIRE(amdim_model_check_replicas(m) == 0, "check_replicas: %s", amdim_model_error(m));
    }
    amdim_model_freeze_encoder(m);
    REQUIRE(amdim_model_train_probes_step(m, views[STEPS][0], views[STEPS][1], labels[STEPS], batch[STEPS], 0,
                                          &o->st[STEPS]) == 0,
            "probe step: %s", amdim_model_error(m));
    REQUIRE(amdim_model_pull(m) == 0, "pull: %s", amdim_model_error(m));
    size_t ws = m->arch.weights_size * sizeof(float), gs = m->arch.grads_size * sizeof(float);
    o->weights = malloc(ws), o->grads = malloc(gs), o->adam_m = malloc(gs), o->adam_v = malloc(gs);
    REQUIRE(o->weights && o->grads && o->adam_m && o->adam_v, "out of memory");
    memcpy(o->weights, m->weights, ws), memcpy(o->grads, m->grads, gs);
    memcpy(o->adam_m, m->adam_m, gs), memcpy(o->adam_v, m->adam_v, gs);
    amdim_model_destroy(m);
    return 0;
}

static void same(const char *ctx, const char *what, const float *a, const float *b, size_t n)
{
    size_t i = 0;
    while (i < n && memcmp(&a[i], &b[i], sizeof *a) == 0)
        i++;
    CHECK(i == n, "%s: %s: element %zu of %zu: no group %.9g, one-rank group %.9g", ctx, what, i, n,
          i < n ? a[i] : 0.0, i < n ? b[i] : 0.0);
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 && strcmp(argv[1], "cuda") == 0 ? "test_cuda_dist" : "test_dist_force";
    amdim_device dev = AMDIM_DEVICE_CPU;
    char why[512];
    if (strcmp(name, "test_cuda_dist") == 0) {
        if (amdim_device_resolve("cuda", &dev, why, sizeof why)) {
            printf("%s: SKIP: %s\n", name, why);
            return TEST_SKIP;
        }
    }
    uint32_t x = 4242;
    for (int k = 0; k <= STEPS; k++) {
        for (int v = 0; v < 2; v++)
            for (int i = 0; i < VIEW; i++)
                views[k][v][i] = (uint8_t)((x = x * 1664525u + 1013904223u) >> 24);
        for (int i = 0; i < BMAX; i++) /* 1 to 3 of 4 labelled, varying */
            labels[k][i] = i <= k % 3 ? (i + 2 * k) % 10 : -1;
    }
    amdim_comm one;
    test_single_rank_comm(&one);
    int cuda = dev == AMDIM_DEVICE_CUDA, nprec = cuda ? 2 : 1, nobj = cuda ? 1 : 3, configs = 0;
    /* use_bn 2: BatchNorm in the encoder and the group synchronising it (--sync-bn) */
    for (int objective = 0; objective < nobj; objective++)
        for (int use_bn = 0; use_bn < 3; use_bn++)
            for (int bf16 = 0; bf16 < nprec; bf16++) {
                one.sync_bn = use_bn == 2;
                amdim_model_config cfg;
                amdim_model_config_default(&cfg, S);
                cfg.ndf = 8, cfg.n_rkhs = 32, cfg.n_depth = 2, cfg.use_bn = use_bn > 0, cfg.mlp_hidden = 16;
                cfg.objective = objective, cfg.seed = 11 + objective, cfg.warmup = 20;
                char ctx[96];
                snprintf(ctx, sizeof ctx, "%s objective %d use_bn %d%s %s", amdim_device_name(dev), objective,
                         use_bn > 0, use_bn == 2 ? " --sync-bn" : "", bf16 ? "bf16" : "fp32");
                outcome alone = {0}, group = {0};
                run(&cfg, dev, bf16, NULL, &alone, why, sizeof why);
                if (run(&cfg, dev, bf16, &one, &group, why, sizeof why)) {
                    printf("%s: SKIP: %s\n", name, why);
                    outcome_free(&alone);
                    return TEST_SKIP;
                }
                for (int k = 0; k <= STEPS; k++) {
                    const amdim_step_stats *a = &alone.st[k], *b = &group.st[k];
                    CHECK(memcmp(&a->nce_1t5, &b->nce_1t5, 8 * sizeof(double)) == 0,
                          "%s: step %d: losses %.17g vs %.17g (1t5 %.17g %.17g, reg %.17g %.17g, mlp %.17g %.17g)", ctx,
                          k, a->total, b->total, a->nce_1t5, b->nce_1t5, a->reg, b->reg, a->cls_mlp, b->cls_mlp);
                    CHECK(a->correct_mlp == b->correct_mlp && a->correct_lin == b->correct_lin &&
                              a->labelled == b->labelled,
                          "%s: step %d: counts", ctx, k);
                }
                amdim_model *shape;
                char err[512];
                REQUIRE(amdim_model_create(&shape, &cfg, err, sizeof err) == 0, "%s", err);
                size_t wn = shape->arch.weights_size, gn = shape->arch.grads_size;
                amdim_model_destroy(shape);
                same(ctx, "weights", alone.weights, group.weights, wn);
                same(ctx, "gradients", alone.grads, group.grads, gn);
                same(ctx, "adam m", alone.adam_m, group.adam_m, gn);
                same(ctx, "adam v", alone.adam_v, group.adam_v, gn);
                outcome_free(&alone);
                outcome_free(&group);
                configs++;
            }
    printf("%s: %d configurations of %d steps compared with and without a one-rank group\n", name, configs,
           STEPS + 1);
    return test_finish(name);
}
