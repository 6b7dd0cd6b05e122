/* Host-side planning of the CUDA backend, checked on the CPU (runs in
 * every build): the device memory plans of the three published encoders
 * (every buffer aligned, inside the arena, no two overlapping, each layer's
 * activation the size arch.h gives), the OIHW <-> OHWI filter maps, the
 * reduction chunks, the gradient buckets of a data-parallel step, and - in CUDA builds, without a GPU - that cuDNN's
 * output shape of every convolution it runs equals arch.h's layer size. */
#include <stdlib.h>
#include <string.h>

#include "backend_internal.h"
#include "bn_chunks_internal.h"
#include "layout_internal.h"
#include "plan_internal.h"
#ifdef AMDIM_HAVE_CUDA_BACKEND
#include "conv_internal.h"
#endif
#include "testutil.h"

static int cmp_extent(const void *a, const void *b)
{
    const size_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* The extent that starts at off: its size, or 0 when none does. */
static size_t extent_at(const amdim_cuda_plan *p, size_t off)
{
    for (size_t i = 0; i < p->nextents; i++)
        if (p->extents[i][0] == off)
            return p->extents[i][1];
    return 0;
}

/* ranks: 0 without a process group, else its size; es: bytes per
 * activation (4 float, 2 bfloat16). Every size below is in bytes: es per
 * activation or activation gradient, 4 per float statistic / score /
 * logit, whatever the activation type. */
static double check_plan(const char *name, const amdim_model_config *cfg, int B, int ranks, int es)
{
    amdim_arch a;
    char err[256];
    REQUIRE(amdim_arch_build(&a, cfg, err, sizeof err) == 0, "%s", err);
    amdim_cuda_plan p;
    REQUIRE(amdim_cuda_plan_build(&p, &a, B, ranks, es) == 0, "plan");
    CHECK(p.act_bytes == es, "%s: activation bytes", name);
    int S = cfg->encoder_size, R = cfg->n_rkhs, K = cfg->n_classes;
    /* each layer's output is the (B, hout, hout, cout) arch.h describes */
    for (int v = 0; v < 2; v++) {
        /* the views: 3 channels, 8 (zero-padded) with bf16 activations */
        CHECK(p.in_ch == (es == 2 ? 8 : 3), "%s: input channels", name);
        CHECK(extent_at(&p, p.x[v]) == (size_t)B * S * S * p.in_ch * es, "%s: view %d", name, v);
        for (int l = 0; l < a.nlayers; l++) {
            const amdim_layer *L = &a.layers[l];
            size_t outn = (size_t)B * L->hout * L->hout * L->cout * es;
            CHECK(extent_at(&p, p.layers[v][l].mean) == (size_t)L->cout * 4, "%s: layer %d statistics", name, l);
            CHECK(extent_at(&p, p.layers[v][l].out) == outn, "%s: layer %d output", name, l);
            if (L->kind == AMDIM_LAYER_RES) {
                /* h1 only before a BatchNorm; a ReLU bit-mask (a bit per element, rows of 128-bit
                 * multiples) only where a GEMM without BatchNorm writes r */
                const amdim_cuda_layer_plan *lp = &p.layers[v][l];
                size_t rows = (size_t)B * L->hout * L->hout, mask = rows * ((size_t)(L->cout + 127) / 128 * 16);
                CHECK(extent_at(&p, lp->r) == outn, "%s: layer %d r", name, l);
                CHECK(L->bn.on ? extent_at(&p, lp->h1) == outn : lp->h1 == AMDIM_CUDA_NONE, "%s: layer %d h1", name,
                      l);
                CHECK(!L->bn.on && !amdim_cuda_conv_uses_cudnn(L) ? extent_at(&p, lp->mask) == mask
                                                                   : lp->mask == AMDIM_CUDA_NONE,
                      "%s: layer %d ReLU mask", name, l);
            }
            if (l > 0)
                CHECK(L->hin == a.layers[l - 1].hout && L->cin == a.layers[l - 1].cout, "%s: layer %d chain", name, l);
        }
        CHECK(extent_at(&p, p.heads[v][0].out) == (size_t)B * 25 * R * es, "%s: r5", name);
        CHECK(extent_at(&p, p.heads[v][1].out) == (size_t)B * 49 * R * es, "%s: r7", name);
        CHECK(a.layers[a.nlayers - 1].hout == 1 && a.layers[a.nlayers - 1].cout == R, "%s: r1", name);
    }
    /* with N ranks: this rank's B sources against the N B images' targets,
     * gathered into (N B, hw, hw, R) buffers (rank r's block at row r B hw) */
    size_t Bg = (size_t)B * (ranks ? ranks : 1);
    CHECK(p.ranks == ranks, "%s: ranks", name);
    for (int v = 0; v < 2; v++)
        for (int f = 0; f < 2; f++) {
            size_t hw = f ? 49 : 25;
            if (!ranks) {
                CHECK(p.tg[v][f] == AMDIM_CUDA_NONE && p.dtg[v][f] == AMDIM_CUDA_NONE, "%s: targets without a group",
                      name);
                continue;
            }
            CHECK(extent_at(&p, p.tg[v][f]) == Bg * hw * R * es && extent_at(&p, p.dtg[v][f]) == Bg * hw * R * es,
                  "%s: %d ranks: global targets of view %d r%d", name, ranks, v, f ? 7 : 5);
            /* one rank's block is exactly its heads output */
            CHECK(extent_at(&p, p.heads[v][f].out) * (size_t)ranks == extent_at(&p, p.tg[v][f]),
                  "%s: %d ranks: rank blocks of view %d r%d", name, ranks, v, f ? 7 : 5);
        }
    /* scores and logits float in both modes; in the bf16 mode their
     * gradients also as activations for the GEMMs, in fp32 the same buffer */
    size_t ns = (size_t)B * Bg * 49, nl = 2 * (size_t)B * K;
    CHECK(extent_at(&p, p.scores) == ns * 4 && extent_at(&p, p.dscores) == ns * 4, "%s: scores", name);
    CHECK(extent_at(&p, p.logits[0]) == nl * 4 && extent_at(&p, p.dlogits) == nl * 4, "%s: logits", name);
    if (es == 4)
        CHECK(p.dscores_act == p.dscores && p.dlogits_act == p.dlogits, "%s: fp32 gradients are their own", name);
    else
        CHECK(extent_at(&p, p.dscores_act) == ns * 2 && extent_at(&p, p.dlogits_act) == nl * 2,
              "%s: bf16 copies of the score and logit gradients", name);
    CHECK(extent_at(&p, p.stats) == 8 * (size_t)(AMDIM_CUDA_STATS_CLS + 12) * B, "%s: stats", name);
    CHECK(p.maxact >= (size_t)B * 49 * R, "%s: maxact", name);
    /* the scratch stages maxact floats (features, NCHW outputs, NCHW inputs) */
    CHECK(extent_at(&p, p.scratch) >= p.maxact * 4 && p.maxact >= (size_t)B * S * S * 3, "%s: scratch", name);
    /* aligned, inside, disjoint */
    qsort(p.extents, p.nextents, sizeof *p.extents, cmp_extent);
    for (size_t i = 0; i < p.nextents; i++) {
        CHECK(p.extents[i][0] % 256 == 0, "%s: buffer %zu unaligned", name, i);
        CHECK(p.extents[i][0] + p.extents[i][1] <= p.total, "%s: buffer %zu outside", name, i);
        if (i)
            CHECK(p.extents[i - 1][0] + p.extents[i - 1][1] <= p.extents[i][0], "%s: buffers %zu and %zu overlap",
                  name, i - 1, i);
    }
    amdim_cuda_param_plan pp;
    REQUIRE(amdim_cuda_param_plan_build(&pp, &a) == 0, "param plan");
    size_t nohwi = 0;
    for (int i = 0; i < a.ntensors; i++)
        if (pp.ohwi[i] != AMDIM_CUDA_NONE) {
            nohwi++;
            /* the first layer's copy has room for 8 input channels (the bf16 mode's padding) */
            size_t need = a.tensors[i].size / a.tensors[i].shape[1] *
                          (i == a.layers[0].w1 && a.tensors[i].shape[1] < 8 ? 8 : a.tensors[i].shape[1]);
            CHECK(pp.ohwi[i] % 64 == 0 && pp.ohwi[i] + need <= pp.dw_ohwi, "%s: ohwi %d", name, i);
            CHECK(pp.dw_ohwi + need <= pp.total, "%s: filter gradient scratch for %d", name, i);
        }
    CHECK(pp.grads >= pp.weights + a.weights_size && pp.adam_v + a.grads_size <= pp.wbf, "%s: blocks", name);
    CHECK(pp.wbf % 64 == 0 && pp.wbf + (a.weights_size + 1) / 2 <= pp.total, "%s: bf16 weight copy", name);
    printf("%-22s B %3d N %d %s: %4zu buffers, activations %8.1f MiB, parameters %7.1f MiB (%zu cuDNN filters)\n",
           name, B, ranks, es == 2 ? "bf16" : "fp32", p.nextents, p.total / (double)(1 << 20),
           pp.total * 4.0 / (1 << 20), nohwi);
#ifdef AMDIM_HAVE_CUDA_BACKEND
    /* cuDNN's own shape arithmetic (no GPU needed) agrees with arch.h */
    for (int l = 0; l < a.nlayers; l++) {
        const amdim_layer *L = &a.layers[l];
        if (L->kind == AMDIM_LAYER_BN || !amdim_cuda_conv_uses_cudnn(L))
            continue;
        int h = L->hin + 2 * L->pad, out[4];
        amdim_conv_shape sh = {B, l ? L->cin : p.in_ch, h, h, L->cout, L->k, L->s};
        int rc = amdim_conv_output_dim(&sh, es == 2, out, err, sizeof err);
        CHECK(rc == 0, "%s", err);
        CHECK(rc || (out[0] == B && out[1] == L->cout && out[2] == L->hout && out[3] == L->hout),
              "%s: layer %d: cuDNN says (%d, %d, %d, %d), arch.h %d x %d", name, l, out[0], out[1], out[2], out[3],
              L->hout, L->cout);
    }
#endif
    double bytes = (double)p.total + 4.0 * (double)pp.total;
    amdim_cuda_param_plan_free(&pp);
    amdim_cuda_plan_free(&p);
    amdim_arch_free(&a);
    return bytes;
}

static void check_layout(int O, int I, int K)
{
    size_t n = (size_t)O * I * K * K;
    unsigned char *seen = calloc(n, 1);
    REQUIRE(seen, "oom");
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
            for (int y = 0; y < K; y++)
                for (int x = 0; x < K; x++) {
                    size_t a = amdim_oihw_index(o, i, y, x, I, K), b = amdim_ohwi_index(o, i, y, x, I, K);
                    CHECK(a < n && b < n, "index range");
                    if (b < n)
                        seen[b]++;
                    /* OIHW is PyTorch's contiguous order; OHWI has the input channel fastest */
                    CHECK(a == (size_t)((o * I + i) * K + y) * K + x, "oihw");
                    CHECK(b % I == (size_t)i && b / ((size_t)K * K * I) == (size_t)o, "ohwi");
                }
    for (size_t j = 0; j < n; j++)
        CHECK(seen[j] == 1, "OHWI map is not a bijection at %zu (%dx%dx%dx%d)", j, O, I, K, K);
    /* round trip of a tensor through both maps */
    float *w = malloc(n * sizeof *w), *t = malloc(n * sizeof *t), *back = calloc(n, sizeof *back);
    REQUIRE(w && t && back, "oom");
    for (size_t j = 0; j < n; j++)
        w[j] = (float)j;
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
            for (int y = 0; y < K; y++)
                for (int x = 0; x < K; x++)
                    t[amdim_ohwi_index(o, i, y, x, I, K)] = w[amdim_oihw_index(o, i, y, x, I, K)];
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
            for (int y = 0; y < K; y++)
                for (int x = 0; x < K; x++)
                    back[amdim_oihw_index(o, i, y, x, I, K)] = t[amdim_ohwi_index(o, i, y, x, I, K)];
    CHECK(memcmp(w, back, n * sizeof *w) == 0, "round trip %dx%dx%d", O, I, K);
    if (K == 1)
        CHECK(memcmp(w, t, n * sizeof *w) == 0, "1x1 filters must need no copy");
    free(w), free(t), free(back), free(seen);
}

static void check_chunks(void)
{
    size_t Ns[] = {1, 2, 255, 256, 257, 9000, 65536, 768800, 10000000};
    for (size_t k = 0; k < sizeof Ns / sizeof *Ns; k++) {
        size_t N = Ns[k], P = amdim_bn_chunks(N), per = (N + P - 1) / P;
        CHECK(P >= 1 && P <= AMDIM_BN_MAX_CHUNKS, "chunks of %zu", N);
        CHECK(per * P >= N && per * (P - 1) < N, "chunks of %zu cover the rows, none empty", N);
        CHECK(amdim_bn_scratch_doubles(N, 7) == (P + 1) * 14 + 7, "scratch of %zu", N);
    }
}

/* amdim_cuda_gemm_layout: the column-major problem it describes, computed
 * as cuBLAS / cuBLASLt define it (op of each stored operand), equals the
 * row-major GEMM it was made from, for every transpose and padded strides;
 * bad shapes are refused. */
static void check_gemm_layout(int ta, int tb, int M, int N, int K, int pad)
{
    int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
    double *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b), *c0 = malloc(nc * sizeof *c0),
           *want = malloc(nc * sizeof *want), *got = malloc(nc * sizeof *got);
    REQUIRE(a && b && c0 && want && got, "oom");
    for (size_t i = 0; i < na; i++)
        a[i] = (double)((i * 7 + 3) % 11) - 5;
    for (size_t i = 0; i < nb; i++)
        b[i] = (double)((i * 5 + 1) % 13) - 6;
    for (size_t i = 0; i < nc; i++)
        c0[i] = (double)(i % 9) - 4;
    double alpha = 0.5, beta = 2;
    memcpy(want, c0, nc * sizeof *c0);
    memcpy(got, c0, nc * sizeof *c0);
    for (int r = 0; r < M; r++) /* row-major, as cblas_sgemm(CblasRowMajor, ...) */
        for (int q = 0; q < N; q++) {
            double sum = 0;
            for (int p = 0; p < K; p++)
                sum += (ta ? a[(size_t)p * lda + r] : a[(size_t)r * lda + p]) *
                       (tb ? b[(size_t)q * ldb + p] : b[(size_t)p * ldb + q]);
            want[(size_t)r * ldc + q] = alpha * sum + beta * c0[(size_t)r * ldc + q];
        }
    amdim_cuda_gemm_layout l;
    REQUIRE(amdim_cuda_gemm_layout_make(&l, ta, tb, M, N, K, lda, ldb, ldc) == 0, "layout");
    /* the first operand is b, the second a, both column-major as stored */
    CHECK(l.trans1 ? l.cols1 == l.m && l.rows1 == l.k : l.rows1 == l.m && l.cols1 == l.k, "op(first) is m x k");
    CHECK(l.trans2 ? l.cols2 == l.k && l.rows2 == l.n : l.rows2 == l.k && l.cols2 == l.n, "op(second) is k x n");
    CHECK(l.rows_c == l.m && l.cols_c == l.n, "C is m x n");
    CHECK(l.ld1 >= l.rows1 && l.ld2 >= l.rows2 && l.ld_c >= l.rows_c, "leading dimensions");
    for (int i = 0; i < l.m; i++)
        for (int j = 0; j < l.n; j++) {
            double sum = 0;
            for (int p = 0; p < l.k; p++)
                sum += (l.trans1 ? b[i * (size_t)l.ld1 + p] : b[p * (size_t)l.ld1 + i]) *
                       (l.trans2 ? a[p * (size_t)l.ld2 + j] : a[j * (size_t)l.ld2 + p]);
            got[j * (size_t)l.ld_c + i] = alpha * sum + beta * c0[j * (size_t)l.ld_c + i];
        }
    CHECK(memcmp(got, want, nc * sizeof *got) == 0, "gemm layout ta %d tb %d %d x %d x %d pad %d", ta, tb, M, N, K,
          pad);
    free(a), free(b), free(c0), free(want), free(got);
}

static void check_gemm_layouts(void)
{
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int pad = 0; pad < 2; pad++) {
                check_gemm_layout(ta, tb, 3, 5, 4, pad);
                check_gemm_layout(ta, tb, 1, 7, 2, pad);
                check_gemm_layout(ta, tb, 6, 1, 1, pad);
            }
    /* the NCE score GEMMs of backend_cuda.c's objectives (B 4, L 25, R 8) */
    int B = 4, BL = 100, R = 8;
    check_gemm_layout(0, 1, B, BL, R, 0);  /* S = src tgt^T */
    check_gemm_layout(0, 0, B, R, BL, 0);  /* dsrc += dS tgt */
    check_gemm_layout(1, 0, BL, R, B, 0);  /* dtgt += dS^T src */
    amdim_cuda_gemm_layout l;
    CHECK(amdim_cuda_gemm_layout_make(&l, 0, 1, B, BL, R, R, R, BL) == 0, "S layout");
    CHECK(l.trans1 == 1 && l.trans2 == 0 && l.m == BL && l.n == B && l.k == R && l.rows1 == R && l.cols1 == BL &&
              l.ld1 == R && l.rows2 == R && l.cols2 == B && l.ld2 == R && l.ld_c == BL,
          "S: the column-major problem S^T (BL, B) = tgt^T-as-stored transposed times src");
    CHECK(amdim_cuda_gemm_layout_make(&l, 0, 0, 2, 3, 4, 3, 3, 3) == AMDIM_E_INVALID, "lda shorter than K");
    CHECK(amdim_cuda_gemm_layout_make(&l, 0, 1, 2, 3, 4, 4, 3, 3) == AMDIM_E_INVALID, "ldb shorter than K");
    CHECK(amdim_cuda_gemm_layout_make(&l, 0, 0, 2, 3, 4, 4, 3, 2) == AMDIM_E_INVALID, "ldc shorter than N");
    CHECK(amdim_cuda_gemm_layout_make(&l, 0, 0, 0, 3, 4, 4, 3, 3) == AMDIM_E_INVALID, "M 0");
}

/* The gradient buckets of a data-parallel step: one per backward unit,
 * disjoint, together the whole grads block from the first gradient on,
 * every gradient inside its own unit's range (each layer's, head's and the
 * probes' tensors contiguous); mixtures (a unit of their own) give none. */
static void check_buckets(const char *name, const amdim_model_config *cfg)
{
    amdim_arch a;
    char err[256];
    REQUIRE(amdim_arch_build(&a, cfg, err, sizeof err) == 0, "%s", err);
    int U = AMDIM_CUDA_BUCKETS(&a);
    size_t *lo = calloc((size_t)U, sizeof *lo), *hi = calloc((size_t)U, sizeof *hi);
    int n = amdim_cuda_grad_buckets(&a, lo, hi);
    if (cfg->mixtures > 1) {
        CHECK(n == 0, "%s with mixtures: %d buckets, expected none", name, n);
    } else {
        CHECK(n == U, "%s: %d buckets, expected %d", name, n, U);
        size_t first = SIZE_MAX, covered = 0;
        for (int u = 0; u < U; u++) {
            CHECK(lo[u] <= hi[u] && hi[u] <= a.grads_size, "%s: bucket %d [%zu, %zu)", name, u, lo[u], hi[u]);
            if (hi[u] > lo[u])
                first = lo[u] < first ? lo[u] : first, covered += hi[u] - lo[u];
            for (int v = 0; v < u; v++)
                CHECK(hi[u] <= lo[v] || hi[v] <= lo[u] || lo[u] == hi[u] || lo[v] == hi[v],
                      "%s: buckets %d and %d overlap", name, u, v);
        }
        CHECK(covered == a.grads_size - first, "%s: the buckets cover %zu of %zu floats", name, covered,
              a.grads_size - first);
        for (int i = 0; i < a.ntensors; i++) {
            const amdim_tensor *t = &a.tensors[i];
            int inside = 0;
            for (int u = 0; u < U && t->has_grad; u++)
                inside += t->goffset >= lo[u] && t->goffset + t->size <= hi[u];
            CHECK(!t->has_grad || inside == 1, "%s: %s lies in %d buckets", name, t->name, inside);
        }
        /* the first encoder layer's bucket starts at the first gradient; the probes' is the last */
        CHECK(lo[0] == first && hi[a.nlayers + 2] == a.grads_size, "%s: bucket order", name);
    }
    free(lo), free(hi);
    amdim_arch_free(&a);
}

int main(void)
{
    struct {
        const char *name;
        int size, ndf, n_rkhs, depth, batch;
    } cfgs[] = {
        {"CIFAR 128/1024/10", 32, 128, 1024, 10, 200},
        {"STL-10 192/1536/8", 64, 192, 1536, 8, 200},
        {"ImageNet 192/1536/8", 128, 192, 1536, 8, 480},
        {"tiny 32", 32, 8, 32, 2, 4},
        {"tiny 128", 128, 4, 32, 1, 3},
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof *cfgs; i++) {
        amdim_model_config c;
        amdim_model_config_default(&c, cfgs[i].size);
        c.ndf = cfgs[i].ndf;
        c.n_rkhs = cfgs[i].n_rkhs;
        c.n_depth = cfgs[i].depth;
        double bytes = check_plan(cfgs[i].name, &c, cfgs[i].batch, 0, 4);
        double bytes_bf16 = check_plan(cfgs[i].name, &c, cfgs[i].batch, 0, 2);
        /* bf16 halves the activations; floats (scores, statistics, parameters) stay */
        CHECK(cfgs[i].batch < 200 || bytes_bf16 < 0.6 * bytes, "%s: bf16 plan %.2f GB vs fp32 %.2f GB", cfgs[i].name, bytes_bf16 / 1e9,
              bytes / 1e9);
        for (int bn = 0; bn < 2; bn++) {
            c.use_bn = bn;
            check_buckets(cfgs[i].name, &c);
        }
        c.use_bn = 0;
        double bytes8 = 0, bytes8_bf16 = 0;
        for (int ranks = 1; ranks <= 8; ranks *= 2) { /* a process group: forced one rank, 2, 4, 8 */
            bytes8 = check_plan(cfgs[i].name, &c, cfgs[i].batch, ranks, 4);
            bytes8_bf16 = check_plan(cfgs[i].name, &c, cfgs[i].batch, ranks, 2);
        }
        /* the published ImageNet-small run (batch 480) fits an 80 GB card in
         * fp32, with the cuDNN workspace (256 MiB) and 1 GiB to spare */
        if (cfgs[i].size == 128 && cfgs[i].batch == 480) {
            CHECK(bytes + (256.0 + 1024.0) * (1 << 20) <= 80e9, "ImageNet-small at batch 480 needs %.1f GB", bytes / 1e9);
            /* the same global batch on 8 GPUs (60 each, the global batch's targets held too) */
            double shared = check_plan(cfgs[i].name, &c, 480 / 8, 8, 4);
            double shared_bf16 = check_plan(cfgs[i].name, &c, 480 / 8, 8, 2);
            CHECK(shared + (256.0 + 1024.0) * (1 << 20) <= 80e9, "ImageNet-small at 8 x 60 needs %.1f GB per GPU",
                  shared / 1e9);
            /* bf16: 8 x 480 fits an 80 GB card too */
            CHECK(bytes8_bf16 + (256.0 + 1024.0) * (1 << 20) <= 80e9, "ImageNet-small bf16 at 8 x 480 needs %.1f GB",
                  bytes8_bf16 / 1e9);
            printf("ImageNet-small plans (fp32 / bf16 activations): batch 480 on one GPU %.1f / %.1f GB; 8 GPUs x 60 "
                   "%.1f / %.1f GB each; 8 GPUs x 480 %.1f / %.1f GB each\n",
                   bytes / 1e9, bytes_bf16 / 1e9, shared / 1e9, shared_bf16 / 1e9, bytes8 / 1e9, bytes8_bf16 / 1e9);
        }
    }
    amdim_model_config mix;
    amdim_model_config_default(&mix, 32);
    mix.ndf = 8, mix.n_rkhs = 32, mix.n_depth = 1, mix.mixtures = 4;
    check_buckets("tiny 32, mixtures 4", &mix);
    int shapes[][3] = {{1, 1, 1}, {4, 3, 3}, {8, 5, 4}, {16, 7, 2}, {3, 2, 5}, {6, 4, 1}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        check_layout(shapes[i][0], shapes[i][1], shapes[i][2]);
    check_chunks();
    check_gemm_layouts();
#ifdef AMDIM_HAVE_CUDA_BACKEND
    /* without a usable GPU, --device cuda is a clear error and auto is the CPU */
    char why[256], err[512];
    amdim_device d;
    if (!amdim_cuda_available(why, sizeof why)) {
        CHECK(amdim_device_resolve("cuda", &d, err, sizeof err) == AMDIM_E_UNSUPPORTED && strstr(err, "no usable GPU"),
              "--device cuda without a GPU: %s", err);
        CHECK(amdim_device_resolve("auto", &d, err, sizeof err) == 0 && d == AMDIM_DEVICE_CPU, "auto");
        printf("no GPU here: %s\n", err);
    }
#endif
    return test_finish("test_cuda_plan");
}
