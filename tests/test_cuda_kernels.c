/* Every CUDA kernel family against the CPU op it mirrors (label gpu; exits
 * 77 without a usable GPU). Fresh random inputs each case; device outputs
 * are poisoned (NaN bytes) or, for accumulating ops, filled with random
 * values before each run; fp32 results must agree within 1e-4 relative
 * (|gpu - cpu| <= 1e-4 max(|cpu|, 1e-2 max|cpu|)). Activations on the GPU
 * are NHWC, on the CPU CNHW: the test converts.
 * Then every family that reads or writes activations again with bf16
 * activations (ctx.bf16): the host inputs rounded to bf16 first, so the
 * CPU reference sees the values the GPU reads; each kernel computes in
 * float and rounds once, so its results must agree within 4e-3 relative
 * (one bf16 step, 2^-8, plus float noise), and the bf16 copies of the NCE
 * score gradients are exactly the float gradients rounded. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "backend_internal.h"
#include "nce_internal.h"
#include "ops_internal.h"
#include "kernels_internal.h"
#include "layout_internal.h"
#include "testutil.h"

static amdim_rng rng;
static char errbuf[512];
static amdim_cuda_ctx ctx = {.stream = 0, .err = errbuf, .errn = sizeof errbuf};

/* The activation type under test (ctx.bf16 the same). */
static int act16;
static double tol_rel(void) { return act16 ? 4e-3 : 1e-4; }

static float *hrand(size_t n, float lo, float hi)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    REQUIRE(p, "oom");
    for (size_t i = 0; i < n; i++)
        p[i] = amdim_rng_uniform(&rng, lo, hi);
    return p;
}

static void *dev(size_t bytes)
{
    void *p = NULL;
    REQUIRE(cudaMalloc(&p, bytes ? bytes : 1) == cudaSuccess, "cudaMalloc");
    REQUIRE(cudaMemset(p, 0xFF, bytes) == cudaSuccess, "poison"); /* NaN floats */
    return p;
}
static void *up(const void *h, size_t bytes)
{
    void *d = dev(bytes);
    REQUIRE(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice) == cudaSuccess, "upload");
    return d;
}
static float *down(const void *d, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof *h);
    REQUIRE(h && cudaDeviceSynchronize() == cudaSuccess, "sync: %s", cudaGetErrorString(cudaGetLastError()));
    REQUIRE(cudaMemcpy(h, d, n * sizeof *h, cudaMemcpyDeviceToHost) == cudaSuccess, "download");
    return h;
}

static void compare(const char *what, const float *gpu, const float *ref, size_t n)
{
    double big = 0, worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++)
        big = fmax(big, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) {
        double tol = tol_rel() * fmax(fabs(ref[i]), 1e-2 * big) + 1e-30;
        double e = isnan(gpu[i]) ? INFINITY : fabs(gpu[i] - ref[i]) / tol;
        if (e > worst)
            worst = e, at = i;
    }
    CHECK(worst <= 1.0, "%s: element %zu gpu %g cpu %g", what, at, n ? gpu[at] : 0.0, n ? ref[at] : 0.0);
}

static void compare_d(const char *what, double gpu, double ref)
{
    CHECK(fabs(gpu - ref) <= tol_rel() * fmax(fabs(ref), 1e-6), "%s: gpu %.9g cpu %.9g", what, gpu, ref);
}

/* (B, H*W, C) <-> (C, B, H*W) */
static float *to_cnhw(const float *x, int B, int HW, int C)
{
    float *y = malloc((size_t)B * HW * C * sizeof *y);
    for (int b = 0; b < B; b++)
        for (int p = 0; p < HW; p++)
            for (int c = 0; c < C; c++)
                y[((size_t)c * B + b) * HW + p] = x[((size_t)b * HW + p) * C + c];
    return y;
}
static float *to_nhwc(const float *x, int B, int HW, int C)
{
    float *y = malloc((size_t)B * HW * C * sizeof *y);
    for (int b = 0; b < B; b++)
        for (int p = 0; p < HW; p++)
            for (int c = 0; c < C; c++)
                y[((size_t)b * HW + p) * C + c] = x[((size_t)c * B + b) * HW + p];
    return y;
}

#define OK(call) REQUIRE((call) == 0, "%s", errbuf)

/* Random activations: rounded to bf16 when those are under test. */
static float *hact(size_t n, float lo, float hi)
{
    float *p = hrand(n, lo, hi);
    for (size_t i = 0; act16 && i < n; i++)
        p[i] = amdim_bf16_round(p[i]);
    return p;
}
/* n activations to / from the device in the type under test; deva: poisoned (0xffff is a bf16 NaN too). */
static void *upa(const float *h, size_t n)
{
    if (!act16)
        return up(h, n * 4);
    uint16_t *b = malloc((n ? n : 1) * 2);
    REQUIRE(b, "oom");
    for (size_t i = 0; i < n; i++)
        b[i] = amdim_bf16_bits(h[i]);
    void *d = up(b, n * 2);
    free(b);
    return d;
}
static void *deva(size_t n) { return dev(n * (act16 ? 2 : 4)); }
static float *downa(const void *d, size_t n)
{
    if (!act16)
        return down(d, n);
    uint16_t *b = malloc((n ? n : 1) * 2);
    float *h = malloc((n ? n : 1) * sizeof *h);
    REQUIRE(b && h && cudaDeviceSynchronize() == cudaSuccess, "sync: %s", cudaGetErrorString(cudaGetLastError()));
    REQUIRE(cudaMemcpy(b, d, n * 2, cudaMemcpyDeviceToHost) == cudaSuccess, "download");
    for (size_t i = 0; i < n; i++)
        h[i] = amdim_bf16_value(b[i]);
    free(b);
    return h;
}

/* cout: channels of the stored views (3; the bf16 mode's 8, the image's 3
 * then zeros); ldc: of the NHWC test views (>= C = 5, zeros past C).
 * Both paddings in both activation types. */
static void test_input(int cout, int ldc)
{
    int B = 3, S = 9, C = 5;
    size_t px = (size_t)B * S * S, n = px * 3, no = px * cout;
    uint8_t *u8 = malloc(n);
    for (size_t i = 0; i < n; i++)
        u8[i] = (uint8_t)amdim_rng_int(&rng, 0, 255);
    float scale[3] = {0.013f, 0.02f, 0.017f}, shift[3] = {1.9f, 2.1f, 1.7f}, *ref = malloc(no * sizeof *ref);
    for (size_t i = 0; i < no; i++) {
        size_t c = i % cout;
        ref[i] = c < 3 ? amdim_normalise_pixel(u8[i / cout * 3 + c], scale[c], shift[c]) : 0.0f;
    }
    uint8_t *du8 = up(u8, n);
    void *dy = deva(no);
    OK(amdim_normalise_u8_cuda(&ctx, du8, px, scale, shift, cout, dy));
    float *got = downa(dy, no);
    compare("normalise_u8", got, ref, no);
    /* NCHW float -> NHWC activations with ldc channels (zeros past C) */
    size_t m = (size_t)B * C * S * S, mp = (size_t)B * S * S * ldc;
    float *x = hact(m, -1, 1), *dx = up(x, m * 4), *db = dev(m * 4), *pref = calloc(mp, 4);
    void *dp = deva(mp), *dt = deva(m);
    OK(amdim_nchw_to_nhwc_cuda(&ctx, dx, B, C, S * S, ldc, dp));
    float *gp = downa(dp, mp);
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < S * S; p++)
                pref[((size_t)b * S * S + p) * ldc + c] = x[((size_t)b * C + c) * S * S + p];
    compare("nchw_to_nhwc (channels padded)", gp, pref, mp);
    free(gp), free(pref), cudaFree(dp);
    /* NCHW float <-> NHWC activations */
    OK(amdim_nchw_to_nhwc_cuda(&ctx, dx, B, C, S * S, C, dt));
    OK(amdim_nhwc_to_nchw_cuda(&ctx, dt, B, C, S * S, db));
    float *t = downa(dt, m), *back = down(db, m);
    /* activations -> float */
    float *df = dev(m * 4);
    OK(amdim_act_to_f32_cuda(&ctx, dt, m, df));
    float *flat = down(df, m);
    float *tref = malloc(m * 4);
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int p = 0; p < S * S; p++)
                tref[((size_t)b * S * S + p) * C + c] = x[((size_t)b * C + c) * S * S + p];
    compare("nchw_to_nhwc", t, tref, m);
    compare("nhwc_to_nchw", back, x, m);
    compare("act_to_f32", flat, tref, m);
    free(u8), free(ref), free(got), free(x), free(t), free(back), free(tref), free(flat);
    cudaFree(du8), cudaFree(dy), cudaFree(dx), cudaFree(dt), cudaFree(db), cudaFree(df);
}

static void test_pad(void)
{
    int B = 2, H = 7, C = 3, p = 2, Hp = H + 2 * p;
    size_t n = (size_t)B * H * H * C, np = (size_t)B * Hp * Hp * C;
    float *x = hact(n, -1, 1), *xc = to_cnhw(x, B, H * H, C), *yc = malloc(np * 4);
    amdim_cpu_reflect_pad_forward(xc, C, B, H, H, p, yc);
    float *ref = to_nhwc(yc, B, Hp * Hp, C);
    void *dx = upa(x, n), *dy = deva(np);
    OK(amdim_reflect_pad_forward_cuda(&ctx, dx, B, H, H, C, p, dy));
    float *got = downa(dy, np);
    compare("reflect_pad", got, ref, np);
    free(x), free(xc), free(yc), free(ref), free(got), cudaFree(dx), cudaFree(dy);
}

/* C = 19: single elements (and the packs' tails); C = 24: 16-byte packs in both types */
static void test_activation(size_t rows, int C)
{
    size_t n = rows * C;
    float *y = hact(n, -1, 1), *g = hact(n, -1, 1), *bias = hrand((size_t)C, -1, 1), *acc = hact(n, -1, 1);
    float *ry = malloc(n * 4), *rg = malloc(n * 4), *rb = malloc(n * 4), *radd = malloc(n * 4);
    memcpy(ry, y, n * 4);
    amdim_cpu_relu_forward(ry, n);
    memcpy(rg, g, n * 4);
    amdim_cpu_relu_backward(ry, rg, n);
    for (size_t i = 0; i < n; i++) {
        rb[i] = amdim_relu(y[i] + bias[i % C]);
        radd[i] = acc[i] + y[i];
    }
    void *dy = upa(y, n), *dg = upa(g, n), *db = upa(y, n), *dacc = upa(acc, n), *dy2 = upa(y, n);
    float *dbias = up(bias, (size_t)C * 4);
    OK(amdim_relu_forward_cuda(&ctx, dy, n));
    OK(amdim_relu_backward_cuda(&ctx, dy, dg, n));
    OK(amdim_bias_relu_forward_cuda(&ctx, db, dbias, rows, C));
    OK(amdim_add_cuda(&ctx, dacc, dy2, n));
    float *gy = downa(dy, n), *gg = downa(dg, n), *gb = downa(db, n), *ga = downa(dacc, n);
    compare("relu_forward", gy, ry, n);
    compare("relu_backward", gg, rg, n);
    compare("bias_relu_forward", gb, rb, n);
    compare("add", ga, radd, n);
    free(y), free(g), free(bias), free(acc), free(ry), free(rg), free(rb), free(radd);
    free(gy), free(gg), free(gb), free(ga);
    cudaFree(dy), cudaFree(dg), cudaFree(db), cudaFree(dacc), cudaFree(dy2), cudaFree(dbias);
}

/* cin 4, cout 7: one channel per thread; 16 and 24: 16-byte packs in both types */
static void test_avgpool(int k, int s, int cin, int cout)
{
    int B = 3, H = 9, Ho = (H - k) / s + 1;
    size_t nx = (size_t)B * H * H * cin, ny = (size_t)B * Ho * Ho * cout;
    float *x = hact(nx, -1, 1), *y0 = hact(ny, -1, 1), *dy = hact(ny, -1, 1), *dx0 = hact(nx, -1, 1);
    /* CPU: y = pool(x) padded; reference = y0 + that */
    float *xc = to_cnhw(x, B, H * H, cin), *yc = malloc(ny * 4);
    amdim_cpu_avgpool_pad_forward(xc, cin, B, H, H, k, s, cout, yc);
    float *pooled = to_nhwc(yc, B, Ho * Ho, cout), *ref = malloc(ny * 4);
    for (size_t i = 0; i < ny; i++)
        ref[i] = y0[i] + pooled[i];
    float *dyc = to_cnhw(dy, B, Ho * Ho, cout), *dxc = to_cnhw(dx0, B, H * H, cin);
    amdim_cpu_avgpool_pad_backward(dyc, cin, B, H, H, k, s, dxc);
    float *dref = to_nhwc(dxc, B, H * H, cin);
    void *d_x = upa(x, nx), *d_y = upa(y0, ny), *d_dy = upa(dy, ny), *d_dx = upa(dx0, nx);
    OK(amdim_avgpool_pad_forward_add_cuda(&ctx, d_x, B, H, H, cin, k, s, cout, d_y));
    OK(amdim_avgpool_pad_backward_add_cuda(&ctx, d_dy, B, H, H, cin, k, s, cout, d_dx));
    float *gy = downa(d_y, ny), *gdx = downa(d_dx, nx);
    compare("avgpool_pad_forward_add", gy, ref, ny);
    compare("avgpool_pad_backward_add", gdx, dref, nx);
    free(x), free(y0), free(dy), free(dx0), free(xc), free(yc), free(pooled), free(ref), free(dyc), free(dxc);
    free(dref), free(gy), free(gdx), cudaFree(d_x), cudaFree(d_y), cudaFree(d_dy), cudaFree(d_dx);
}

static void test_batchnorm(size_t N, int C)
{
    size_t n = N * C;
    float *x = hact(n, -2, 3), *dy = hact(n, -1, 1), *gamma = hrand((size_t)C, 0.5f, 1.5f),
          *beta = hrand((size_t)C, -0.5f, 0.5f), *rm = hrand((size_t)C, -0.1f, 0.1f),
          *rv = hrand((size_t)C, 0.5f, 1.5f), *dg = hrand((size_t)C, -1, 1), *dbt = hrand((size_t)C, -1, 1);
    float nbt = 3;
    /* CPU on copies of the buffers */
    float *crm = malloc(C * 4), *crv = malloc(C * 4), *cdg = malloc(C * 4), *cdb = malloc(C * 4), cnbt = nbt;
    memcpy(crm, rm, C * 4), memcpy(crv, rv, C * 4), memcpy(cdg, dg, C * 4), memcpy(cdb, dbt, C * 4);
    amdim_cpu_bn_params cp = {gamma, beta, crm, crv, &cnbt, cdg, cdb, NULL};
    float *ry = malloc(n * 4), *rmean = malloc(C * 4), *ristd = malloc(C * 4), *rdx = malloc(n * 4),
          *rey = malloc(n * 4);
    amdim_cpu_op_scratch scr = {0};
    REQUIRE(amdim_cpu_batchnorm1d_forward_train(x, (int)N, C, &cp, ry, rmean, ristd, &scr) == 0, "cpu bn");
    REQUIRE(amdim_cpu_batchnorm1d_backward(x, (int)N, C, &cp, rmean, ristd, dy, rdx, &scr) == 0, "cpu bn");
    amdim_cpu_batchnorm1d_forward_eval(x, (int)N, C, &cp, rey); /* with the updated running stats */
    amdim_cpu_op_scratch_free(&scr);
    amdim_cuda_bn gp = {up(gamma, C * 4), up(beta, C * 4), up(rm, C * 4), up(rv, C * 4), up(&nbt, 4),
                        up(dg, C * 4), up(dbt, C * 4)};
    void *d_x = upa(x, n), *d_dy = upa(dy, n), *d_y = deva(n), *d_dx = deva(n), *d_ey = deva(n);
    float *d_m = dev(C * 4), *d_i = dev(C * 4);
    double *s = dev(amdim_batchnorm_scratch_doubles(N, C) * sizeof(double));
    OK(amdim_batchnorm_forward_train_cuda(&ctx, d_x, N, C, &gp, d_y, d_m, d_i, s));
    OK(amdim_batchnorm_backward_cuda(&ctx, d_x, N, C, &gp, d_m, d_i, d_dy, d_dx, s));
    OK(amdim_batchnorm_forward_eval_cuda(&ctx, d_x, N, C, &gp, d_ey));
    float *gy = downa(d_y, n), *gm = down(d_m, C), *gi = down(d_i, C), *gdx = downa(d_dx, n), *gey = downa(d_ey, n),
          *grm = down(gp.rmean, C), *grv = down(gp.rvar, C), *gdg = down(gp.dgamma, C), *gdb = down(gp.dbeta, C),
          *gn = down(gp.nbt, 1);
    compare("batchnorm y", gy, ry, n);
    compare("batchnorm mean", gm, rmean, C);
    compare("batchnorm inv_std", gi, ristd, C);
    compare("batchnorm running_mean", grm, crm, C);
    compare("batchnorm running_var", grv, crv, C);
    compare("batchnorm dx", gdx, rdx, n);
    compare("batchnorm dgamma", gdg, cdg, C);
    compare("batchnorm dbeta", gdb, cdb, C);
    compare("batchnorm eval y", gey, rey, n);
    CHECK(gn[0] == cnbt, "num_batches_tracked %g vs %g", gn[0], cnbt);
    /* channel sums (bias gradients) */
    float *acc = hrand((size_t)C, -1, 1), *racc = malloc(C * 4), *d_acc = up(acc, C * 4);
    for (int c = 0; c < C; c++) {
        double t = 0;
        for (size_t r = 0; r < N; r++)
            t += x[r * C + c];
        racc[c] = acc[c] + (float)t;
    }
    OK(amdim_channel_sum_add_cuda(&ctx, d_x, N, C, d_acc, s));
    float *gacc = down(d_acc, C);
    compare("channel_sum_add", gacc, racc, C);
    free(x), free(dy), free(gamma), free(beta), free(rm), free(rv), free(dg), free(dbt), free(crm), free(crv);
    free(cdg), free(cdb), free(ry), free(rmean), free(ristd), free(rdx), free(rey), free(gy), free(gm), free(gi);
    free(gdx), free(gey), free(grm), free(grv), free(gdg), free(gdb), free(gn), free(acc), free(racc), free(gacc);
    cudaFree(d_x), cudaFree(d_dy), cudaFree(d_y), cudaFree(d_dx), cudaFree(d_ey), cudaFree(d_m), cudaFree(d_i);
    cudaFree(d_acc), cudaFree(s);
}

static void test_dropout(void)
{
    size_t n = 1001;
    float *x = hact(n, -1, 1), *mask = malloc(n * 4), *ref = malloc(n * 4);
    for (size_t i = 0; i < n; i++)
        mask[i] = amdim_rng_uniform(&rng, 0, 1) >= AMDIM_DROPOUT_P;
    amdim_cpu_dropout_forward(x, mask, AMDIM_DROPOUT_P, n, ref);
    void *dx = upa(x, n), *dy = deva(n);
    float *dm = up(mask, n * 4);
    OK(amdim_dropout_cuda(&ctx, dx, dm, n, dy));
    float *got = downa(dy, n);
    compare("dropout", got, ref, n);
    free(x), free(mask), free(ref), free(got);
}

/* ranks > 1: the rows are one rank's share of ranks x n rows, with
 * ranks x valid + 1 labelled rows in all (the means' divisors). */
static void test_classifier(int n, int K, int ranks)
{
    float *l = hrand((size_t)n * K, -15, 15), *ref = malloc((size_t)n * K * 4);
    int32_t *labels = malloc(n * sizeof *labels);
    int valid = 0, corr, lab;
    for (int i = 0; i < n; i++) {
        labels[i] = i % 5 == 3 ? -1 : amdim_rng_int(&rng, 0, K - 1);
        valid += labels[i] >= 0;
    }
    double n_all = (double)n * ranks, valid_all = ranks > 1 ? (double)valid * ranks + 1 : valid;
    double loss = amdim_cpu_classifier_loss_part(l, n, K, labels, ref, 0.75f, n_all, valid_all, &corr, &lab);
    float *dl = up(l, (size_t)n * K * 4), *dd = dev((size_t)n * K * 4);
    int32_t *dlab = up(labels, n * sizeof *labels);
    double *drows = dev(3 * (size_t)n * sizeof(double)), *rows = malloc(3 * (size_t)n * sizeof(double));
    double inv_valid = valid_all > 0 ? 1.0 / valid_all : 0.0, *dinv = up(&inv_valid, sizeof inv_valid);
    void *dda = act16 ? deva((size_t)n * K) : NULL; /* the bf16 copy for the GEMMs */
    OK(amdim_classifier_loss_cuda(&ctx, dl, n, n * ranks, K, dlab, dinv, 0.75f, dd, dda, drows));
    float *got = down(dd, (size_t)n * K);
    if (dda) { /* exactly the float gradient, rounded */
        float *ga = downa(dda, (size_t)n * K);
        size_t bad = 0;
        for (size_t i = 0; i < (size_t)n * K; i++)
            bad += ga[i] != amdim_bf16_round(got[i]);
        CHECK(bad == 0, "classifier dlogits_act: %zu of %zu differ from the rounded float gradient", bad,
              (size_t)n * K);
        free(ga), cudaFree(dda);
    }
    REQUIRE(cudaMemcpy(rows, drows, 3 * (size_t)n * sizeof(double), cudaMemcpyDeviceToHost) == cudaSuccess, "copy");
    double xent = 0, reg = 0;
    int hits = 0;
    for (int i = 0; i < n; i++)
        xent += rows[3 * i], reg += rows[3 * i + 1], hits += rows[3 * i + 2] > 0.5;
    compare("classifier dlogits", got, ref, (size_t)n * K);
    compare_d("classifier loss", xent / valid_all + AMDIM_CLS_REG * reg / (n_all * K), loss);
    CHECK(hits == corr, "classifier hits %d vs %d", hits, corr);
    free(l), free(ref), free(labels), free(rows), free(got);
}

/* A rank's share of the sources: images [first, first + Bs) of B against
 * all B L targets, every mean over the B images' counts, against
 * amdim_cpu_nce_direction_part (the data-parallel step's row work). */
static void test_nce_share(int objective, int B, int Bs, int first, int L, int R)
{
    size_t BL = (size_t)B * L, ns = (size_t)Bs * BL;
    float scale = 1.0f / sqrtf((float)R), tclip = 2.5f;
    float *src = hrand((size_t)Bs * R, -3, 3), *tgt = hrand(BL * R, -3, 3); /* rows (Bs, R), (BL, R) */
    float *srcT = malloc((size_t)Bs * R * 4), *tgtT = malloc(BL * R * 4), *dsT = calloc((size_t)Bs * R, 4),
          *dtT = calloc(BL * R, 4);
    for (int i = 0; i < Bs; i++)
        for (int c = 0; c < R; c++)
            srcT[(size_t)c * Bs + i] = src[(size_t)i * R + c];
    for (size_t j = 0; j < BL; j++)
        for (int c = 0; c < R; c++)
            tgtT[(size_t)c * BL + j] = tgt[j * R + c];
    double loss, reg;
    amdim_cpu_nce_scratch nsc = {0};
    REQUIRE(amdim_cpu_nce_direction_part(srcT, Bs, first, tgtT, R, B, L, tclip, objective, 0.7f, 0.3f, NULL, NULL, &loss,
                                   &reg, dsT, dtT, &nsc) == 0,
            "cpu nce part");
    amdim_cpu_nce_scratch_free(&nsc);
    float *S = malloc(ns * 4);
    for (int i = 0; i < Bs; i++)
        for (size_t j = 0; j < BL; j++) {
            double a = 0;
            for (int c = 0; c < R; c++)
                a += (double)src[(size_t)i * R + c] * tgt[j * R + c];
            S[(size_t)i * BL + j] = (float)(a * scale);
        }
    float *dS_ = up(S, ns * 4), *ddS = dev(ns * 4);
    double *drows = dev(2 * (size_t)Bs * sizeof(double)), *rows = malloc(2 * (size_t)Bs * sizeof(double));
    OK(amdim_nce_rows_cuda(&ctx, dS_, ddS, NULL, Bs, first, B, L, tclip, objective, 0.7f, 0.3f, drows));
    float *dS = down(ddS, ns);
    REQUIRE(cudaMemcpy(rows, drows, 2 * (size_t)Bs * sizeof(double), cudaMemcpyDeviceToHost) == cudaSuccess, "copy");
    double gl = 0, gs = 0;
    for (int i = 0; i < Bs; i++)
        gl += rows[2 * i], gs += rows[2 * i + 1];
    if (objective == AMDIM_OBJECTIVE_NCE)
        gl /= (double)BL;
    compare_d("nce share loss", gl, loss);
    compare_d("nce share reg", AMDIM_NCE_REG * gs / ((double)B * BL), reg);
    float *gsrc = malloc((size_t)Bs * R * 4), *rsrc = malloc((size_t)Bs * R * 4), *gtgt = malloc(BL * R * 4),
          *rtgt = malloc(BL * R * 4);
    for (int i = 0; i < Bs; i++)
        for (int c = 0; c < R; c++) {
            double a = 0;
            for (size_t j = 0; j < BL; j++)
                a += (double)dS[(size_t)i * BL + j] * tgt[j * R + c];
            gsrc[(size_t)i * R + c] = (float)(a * scale);
            rsrc[(size_t)i * R + c] = dsT[(size_t)c * Bs + i];
        }
    for (size_t j = 0; j < BL; j++)
        for (int c = 0; c < R; c++) {
            double a = 0;
            for (int i = 0; i < Bs; i++)
                a += (double)dS[(size_t)i * BL + j] * src[(size_t)i * R + c];
            gtgt[j * R + c] = (float)(a * scale);
            rtgt[j * R + c] = dtT[(size_t)c * BL + j];
        }
    compare("nce share dsrc", gsrc, rsrc, (size_t)Bs * R);
    compare("nce share dtgt", gtgt, rtgt, BL * R);
    cudaFree(dS_), cudaFree(ddS), cudaFree(drows);
    free(src), free(tgt), free(srcT), free(tgtT), free(dsT), free(dtT), free(S), free(rows), free(dS);
    free(gsrc), free(rsrc), free(gtgt), free(rtgt);
}

static void test_nce(int objective, int B, int L, int R)
{
    size_t BL = (size_t)B * L, n = (size_t)B * BL;
    float scale = 1.0f / sqrtf((float)R), tclip = 2.5f;
    float *src = hrand((size_t)B * R, -3, 3), *tgt = hrand(BL * R, -3, 3); /* rows (B, R), (BL, R) */
    /* CPU: columns */
    float *srcT = malloc((size_t)B * R * 4), *tgtT = malloc(BL * R * 4), *dsT = calloc((size_t)B * R, 4),
          *dtT = calloc(BL * R, 4);
    for (int i = 0; i < B; i++)
        for (int c = 0; c < R; c++)
            srcT[(size_t)c * B + i] = src[(size_t)i * R + c];
    for (size_t j = 0; j < BL; j++)
        for (int c = 0; c < R; c++)
            tgtT[(size_t)c * BL + j] = tgt[j * R + c];
    double loss, reg;
    amdim_cpu_nce_scratch ns = {0};
    REQUIRE(amdim_cpu_nce_direction(srcT, tgtT, R, B, L, tclip, objective, 0.7f, 0.3f, NULL, NULL, &loss, &reg, dsT, dtT, &ns) == 0,
            "cpu nce");
    amdim_cpu_nce_scratch_free(&ns);
    /* GPU row work on host-made scores, then the two gradient products on the host */
    float *S = malloc(n * 4);
    for (int i = 0; i < B; i++)
        for (size_t j = 0; j < BL; j++) {
            double a = 0;
            for (int c = 0; c < R; c++)
                a += (double)src[(size_t)i * R + c] * tgt[j * R + c];
            S[(size_t)i * BL + j] = (float)(a * scale);
        }
    float *dS_ = up(S, n * 4), *ddS = dev(n * 4);
    void *ddSa = act16 ? deva(n) : NULL; /* the bf16 copy for the GEMMs */
    double *drows = dev(2 * (size_t)B * sizeof(double)), *rows = malloc(2 * (size_t)B * sizeof(double));
    OK(amdim_nce_rows_cuda(&ctx, dS_, ddS, ddSa, B, 0, B, L, tclip, objective, 0.7f, 0.3f, drows));
    float *dS = down(ddS, n);
    if (ddSa) { /* exactly the float gradient, rounded */
        float *ga = downa(ddSa, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += ga[i] != amdim_bf16_round(dS[i]);
        CHECK(bad == 0, "nce dS_act: %zu of %zu differ from the rounded float gradient", bad, n);
        free(ga), cudaFree(ddSa);
    }
    REQUIRE(cudaMemcpy(rows, drows, 2 * (size_t)B * sizeof(double), cudaMemcpyDeviceToHost) == cudaSuccess, "copy");
    double gl = 0, gs = 0;
    for (int i = 0; i < B; i++)
        gl += rows[2 * i], gs += rows[2 * i + 1];
    if (objective == AMDIM_OBJECTIVE_NCE)
        gl /= (double)BL;
    compare_d("nce loss", gl, loss);
    compare_d("nce reg", AMDIM_NCE_REG * gs / (double)n, reg);
    float *gsrc = malloc((size_t)B * R * 4), *rsrc = malloc((size_t)B * R * 4), *gtgt = malloc(BL * R * 4),
          *rtgt = malloc(BL * R * 4);
    for (int i = 0; i < B; i++)
        for (int c = 0; c < R; c++) {
            double a = 0;
            for (size_t j = 0; j < BL; j++)
                a += (double)dS[(size_t)i * BL + j] * tgt[j * R + c];
            gsrc[(size_t)i * R + c] = (float)(a * scale);
            rsrc[(size_t)i * R + c] = dsT[(size_t)c * B + i];
        }
    for (size_t j = 0; j < BL; j++)
        for (int c = 0; c < R; c++) {
            double a = 0;
            for (int i = 0; i < B; i++)
                a += (double)dS[(size_t)i * BL + j] * src[(size_t)i * R + c];
            gtgt[j * R + c] = (float)(a * scale);
            rtgt[j * R + c] = dtT[(size_t)c * BL + j];
        }
    compare("nce dsrc", gsrc, rsrc, (size_t)B * R);
    compare("nce dtgt", gtgt, rtgt, BL * R);
    /* the 5x5 source gather / scatter */
    int32_t *idx = malloc(B * sizeof *idx);
    for (int i = 0; i < B; i++)
        idx[i] = amdim_rng_int(&rng, 0, 24);
    float *r5 = hact((size_t)B * 25 * R, -1, 1), *r5ref = malloc((size_t)B * 25 * R * 4), *gref = malloc(B * R * 4);
    memcpy(r5ref, r5, (size_t)B * 25 * R * 4);
    for (int i = 0; i < B; i++)
        for (int c = 0; c < R; c++) {
            gref[(size_t)i * R + c] = r5[((size_t)i * 25 + idx[i]) * R + c];
            r5ref[((size_t)i * 25 + idx[i]) * R + c] += act16 ? amdim_bf16_round(src[(size_t)i * R + c])
                                                              : src[(size_t)i * R + c];
        }
    int32_t *didx = up(idx, B * sizeof *idx);
    void *dr5 = upa(r5, (size_t)B * 25 * R), *dg = deva((size_t)B * R), *dsrc = upa(src, (size_t)B * R);
    OK(amdim_gather_rows_cuda(&ctx, dr5, didx, B, R, dg));
    OK(amdim_scatter_rows_add_cuda(&ctx, dsrc, didx, B, R, dr5));
    float *gg = downa(dg, (size_t)B * R), *gr5 = downa(dr5, (size_t)B * 25 * R);
    compare("gather_rows", gg, gref, (size_t)B * R);
    compare("scatter_rows_add", gr5, r5ref, (size_t)B * 25 * R);
    free(src), free(tgt), free(srcT), free(tgtT), free(dsT), free(dtT), free(S), free(rows), free(dS), free(gsrc);
    free(rsrc), free(gtgt), free(rtgt), free(idx), free(r5), free(r5ref), free(gref), free(gg), free(gr5);
}

static void test_layout(int O, int I, int K, int Ipad);

/* Adam in one launch over two tensors whose weights and gradients lie at
 * different offsets (a gap in the weights block, as a BatchNorm's running
 * statistics leave), the second over several chunks and a partial one. */
static void test_adam_layout(void)
{
    size_t n1 = 300, gap = 5, n2 = 2 * AMDIM_ADAM_CHUNK + 777, n = n1 + n2, nw = n + gap;
    float *w = hrand(nw, -1, 1), *g = hrand(n, -1, 1), *m = hrand(n, -0.1f, 0.1f), *v = hrand(n, 0, 0.01f);
    float *rw = malloc(nw * 4), *rm = malloc(n * 4), *rv = malloc(n * 4);
    amdim_adam_hparams h = {2e-4f, 2e-4f / (1 - 0.8f * 0.8f), sqrtf(1 - 0.999f * 0.999f), 0.8f, 0.999f, 1e-8f, 1e-5f};
    memcpy(rw, w, nw * 4), memcpy(rm, m, n * 4), memcpy(rv, v, n * 4);
    for (size_t i = 0; i < n; i++) {
        size_t wi = i < n1 ? i : i + gap;
        rw[wi] = amdim_adam_element(w[wi], g[i], &rm[i], &rv[i], &h);
    }
    amdim_adam_chunk ch[4] = {{0, 0, (uint32_t)n1, 0},
                              {n1 + gap, n1, AMDIM_ADAM_CHUNK, 0},
                              {n1 + gap + AMDIM_ADAM_CHUNK, n1 + AMDIM_ADAM_CHUNK, AMDIM_ADAM_CHUNK, 0},
                              {n1 + gap + 2 * AMDIM_ADAM_CHUNK, n1 + 2 * AMDIM_ADAM_CHUNK, 777, 0}};
    float *dw = up(w, nw * 4), *dg = up(g, n * 4), *dm = up(m, n * 4), *dv = up(v, n * 4);
    uint16_t *db = dev(nw * 2), *hb = malloc(nw * 2);
    amdim_adam_hparams *dh = up(&h, sizeof h); /* the kernel reads them from the device */
    amdim_adam_chunk *dch = up(ch, sizeof ch);
    OK(amdim_adam_cuda(&ctx, dw, dg, dm, dv, db, dch, 4, n, dh));
    float *gw = down(dw, nw), *gm = down(dm, n), *gv = down(dv, n);
    REQUIRE(cudaMemcpy(hb, db, nw * 2, cudaMemcpyDeviceToHost) == cudaSuccess, "copy");
    compare("adam w", gw, rw, nw);
    compare("adam m", gm, rm, n);
    compare("adam v", gv, rv, n);
    for (size_t i = 0; i < nw; i++) {
        if (i >= n1 && i < n1 + gap) /* not a chunk's: untouched */
            continue;
        uint32_t bits = (uint32_t)hb[i] << 16;
        float b;
        memcpy(&b, &bits, 4);
        CHECK(fabsf(b - gw[i]) <= 4e-3f * fabsf(gw[i]) + 1e-30f, "bf16 copy %zu: %g vs %g", i, b, gw[i]);
    }
    /* filters OIHW -> OHWI (input channels padded to Ipad with zeros, as
     * the bf16 mode's first layer; both in both types) -> added back */
    for (int Ipad = 3; Ipad <= 8; Ipad += 5)
        test_layout(5, 3, 4, Ipad);
    free(w), free(g), free(m), free(v), free(rw), free(rm), free(rv), free(hb), free(gw), free(gm), free(gv);
}

static void test_layout(int O, int I, int K, int Ipad)
{
    size_t fn = (size_t)O * I * K * K, fp = (size_t)O * Ipad * K * K;
    float *f = hrand(fn, -1, 1), *acc = hrand(fn, -1, 1), *ohwi = calloc(fp, 4), *racc = malloc(fn * 4);
    for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
            for (int y = 0; y < K; y++)
                for (int x = 0; x < K; x++) {
                    size_t a = amdim_oihw_index(o, i, y, x, I, K);
                    ohwi[amdim_ohwi_index(o, i, y, x, Ipad, K)] = f[a];
                    racc[a] = acc[a] + (act16 ? amdim_bf16_round(f[a]) : f[a]); /* the copy is what comes back */
                }
    float *df = up(f, fn * 4), *dacc = up(acc, fn * 4);
    void *dt = deva(fp); /* the OHWI copy in the activation type */
    OK(amdim_oihw_to_ohwi_cuda(&ctx, df, O, I, K, Ipad, dt));
    OK(amdim_ohwi_to_oihw_add_cuda(&ctx, dt, O, I, K, Ipad, dacc));
    float *gt = downa(dt, fp), *gacc = down(dacc, fn);
    compare("oihw_to_ohwi", gt, ohwi, fp);
    compare("ohwi_to_oihw_add", gacc, racc, fn);
    free(f), free(acc), free(ohwi), free(racc), free(gt), free(gacc);
    cudaFree(df), cudaFree(dacc), cudaFree(dt);
}

static void run_families(void);

int main(void)
{
    char why[256];
    if (!amdim_cuda_available(why, sizeof why)) {
        printf("test_cuda_kernels: skipped: %s\n", why);
        return TEST_SKIP;
    }
    amdim_rng_init(&rng, 7, 1, 0);
    for (act16 = 0; act16 < 2; act16++) {
        ctx.bf16 = act16;
        run_families();
    }
    return test_finish("test_cuda_kernels");
}

/* every family in the activation type act16 */
static void run_families(void)
{
    test_input(3, 5);
    test_input(8, 8);
    test_pad();
    test_activation(37, 19);
    test_activation(37, 24);
    for (int wide = 0; wide < 2; wide++) {
        test_avgpool(4, 2, wide ? 16 : 4, wide ? 24 : 7);
        test_avgpool(2, 2, wide ? 16 : 4, wide ? 24 : 7);
        test_avgpool(3, 1, wide ? 16 : 4, wide ? 24 : 7);
        test_avgpool(1, 1, wide ? 16 : 4, wide ? 24 : 7);
    }
    test_batchnorm(3, 5);
    test_batchnorm(1000, 37);
    test_batchnorm(70000, 70);
    test_batchnorm(513, 64); /* 16-byte packs of channels in both types */
    test_dropout();
    test_classifier(9, 10, 1);
    test_classifier(5, 1000, 1);
    test_classifier(9, 10, 3); /* a rank's share */
    for (int obj = 0; obj < 3; obj++) {
        test_nce(obj, 4, 25, 16);
        test_nce(obj, 7, 49, 8);
        test_nce_share(obj, 6, 2, 2, 25, 16); /* rank 1 of 3 */
        test_nce_share(obj, 8, 4, 4, 49, 8);  /* rank 1 of 2 */
    }
    test_adam_layout();
}
