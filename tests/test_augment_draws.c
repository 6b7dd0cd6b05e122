/* The random draws: RandomResizedCrop area/aspect/position histograms
 * against torchvision's (from the reference file), jitter factor ranges
 * and uniformity, the 24 jitter orders, flip/jitter/grey/translate
 * frequencies, and the counter-based streams (same key -> same draws,
 * whichever augmenter makes them). Argument: the reference file. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_augment.h"
#include "reffile.h"
#include "testutil.h"

/* Two-sample chi-square statistic of equal-sized histograms. */
static double chi2_two(const int32_t *a, const int32_t *b, int n, int *df)
{
    double s = 0;
    *df = -1;
    for (int i = 0; i < n; i++)
        if (a[i] + b[i] > 0) {
            double d = (double)a[i] - b[i];
            s += d * d / ((double)a[i] + b[i]);
            (*df)++;
        }
    return s;
}

/* Chi-square against a uniform histogram. */
static double chi2_uniform(const int32_t *a, int n, int total)
{
    double e = (double)total / n, s = 0;
    for (int i = 0; i < n; i++)
        s += ((double)a[i] - e) * ((double)a[i] - e) / e;
    return s;
}

/* Upper 0.1 % point of chi-square with df degrees of freedom (Wilson-Hilferty). */
static double chi2_crit(int df)
{
    double z = 3.09, k = df;
    double t = 1 - 2 / (9 * k) + z * sqrt(2 / (9 * k));
    return k * t * t * t;
}

static void check_frequency(const char *what, int hits, int n, double p)
{
    double sd = sqrt(n * p * (1 - p));
    CHECK(fabs(hits - n * p) <= 5 * sd, "%s: %d of %d, expected %.0f +- %.0f", what, hits, n, n * p, 5 * sd);
    printf("%-28s %.4f (expected %.4f)\n", what, (double)hits / n, p);
}

int main(int argc, char **argv)
{
    REQUIRE(argc == 2, "usage: test_augment_draws REFERENCE.bin.gz");
    ref_file rf;
    ref_load(&rf, argv[1]);
    amdim_augment_config cfg;
    amdim_augment_preset("imagenet", &cfg);

    /* Crop geometry against torchvision, on the same image sizes. */
    char name[64];
    for (int si = 0;; si++) {
        snprintf(name, sizeof name, "dist%d/size", si);
        const ref_tensor *st = ref_find(&rf, name);
        if (!st)
            break;
        const int32_t *sz = st->data;
        int W = sz[0], H = sz[1], n = sz[2];
        int32_t area[20] = {0}, aspect[20] = {0}, xpos[10] = {0};
        double lo = log(0.5), hi = log(2.0);
        for (int i = 0; i < n; i++) {
            amdim_rng rng;
            amdim_rng_init(&rng, 42, 0, (uint64_t)i);
            int x, y, w, h;
            amdim_augment_draw_crop(&cfg, W, H, &rng, &x, &y, &w, &h);
            CHECK(x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= W && y + h <= H, "crop outside the image");
            int a = (int)(20.0 * w * h / ((double)W * H));
            area[a > 19 ? 19 : a]++;
            int r = (int)(20 * (log((double)w / h) - lo) / (hi - lo));
            aspect[r < 0 ? 0 : r > 19 ? 19 : r]++;
            if (W > w) {
                int xp = (int)(10.0 * x / (W - w + 1));
                xpos[xp > 9 ? 9 : xp]++;
            }
        }
        const struct {
            const char *what;
            int32_t *ours;
            int bins;
        } h[] = {{"area", area, 20}, {"aspect", aspect, 20}, {"xpos", xpos, 10}};
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "dist%d/%s", si, h[k].what);
            const ref_tensor *t = ref_get(&rf, name, REF_I32);
            int df;
            double c = chi2_two(h[k].ours, t->data, h[k].bins, &df);
            if (df <= 0)
                continue;
            printf("crop %-6s on %4dx%-4d chi2 %7.2f (df %2d, 0.1%% critical %.1f)\n", h[k].what, W, H, c, df, chi2_crit(df));
            CHECK(c < chi2_crit(df), "crop %s histogram on %dx%d differs from torchvision's: chi2 %.2f, df %d",
                  h[k].what, W, H, c, df);
        }
    }

    /* Pair draws: frequencies, factor ranges, orders. */
    const int n = 40000;
    int flips = 0, jit = 0, grey = 0, nviews = 0;
    int32_t orders[24] = {0}, fac_hist[4][10] = {{0}};
    double fac_sum[4] = {0};
    for (int i = 0; i < n; i++) {
        amdim_rng rng;
        amdim_rng_init(&rng, 7, 3, (uint64_t)i);
        amdim_pair_params p;
        amdim_augment_draw(&cfg, 400, 300, &rng, &p);
        flips += p.flip;
        for (int v = 0; v < 2; v++) {
            const amdim_view_params *vp = &p.view[v];
            nviews++;
            grey += vp->grey;
            if (!vp->jitter)
                continue;
            jit++;
            int seen = 0, code = 0;
            for (int k = 0; k < 4; k++) {
                seen |= 1 << vp->order[k];
                code = code * 4 + vp->order[k];
            }
            CHECK(seen == 15, "jitter order is not a permutation");
            /* index of the permutation among the 24 */
            static int perm_index[256];
            static int nperm;
            if (!perm_index[code])
                perm_index[code] = ++nperm;
            if (perm_index[code] <= 24)
                orders[perm_index[code] - 1]++;
            const float f[4] = {vp->brightness, vp->contrast, vp->saturation, vp->hue};
            const float lo[4] = {0.6f, 0.6f, 0.6f, -0.1f}, hi[4] = {1.4f, 1.4f, 1.4f, 0.1f};
            for (int k = 0; k < 4; k++) {
                CHECK(f[k] >= lo[k] && f[k] < hi[k], "factor %d = %f outside [%f, %f)", k, f[k], lo[k], hi[k]);
                int b = (int)(10 * (f[k] - lo[k]) / (hi[k] - lo[k]));
                fac_hist[k][b < 0 ? 0 : b > 9 ? 9 : b]++;
                fac_sum[k] += f[k];
            }
        }
    }
    check_frequency("flip", flips, n, cfg.p_flip);
    check_frequency("jitter", jit, nviews, cfg.p_jitter);
    check_frequency("grey", grey, nviews, cfg.p_grey);
    double co = chi2_uniform(orders, 24, jit);
    printf("jitter orders: chi2 %.2f vs uniform over 24 (critical %.1f)\n", co, chi2_crit(23));
    CHECK(co < chi2_crit(23), "jitter orders are not uniform: chi2 %.2f", co);
    static const char *fname[4] = {"brightness", "contrast", "saturation", "hue"};
    for (int k = 0; k < 4; k++) {
        double c = chi2_uniform(fac_hist[k], 10, jit);
        printf("%-10s factor: mean %.4f, chi2 %.2f vs uniform (critical %.1f)\n", fname[k], fac_sum[k] / jit, c, chi2_crit(9));
        CHECK(c < chi2_crit(9), "%s factor is not uniform: chi2 %.2f", fname[k], c);
    }

    /* 32 px: translation frequency and shifts uniform over [-4, 4]. */
    amdim_augment_config c32;
    amdim_augment_preset("cifar", &c32);
    int moved = 0;
    int32_t shift[9] = {0};
    for (int i = 0; i < n; i++) {
        amdim_rng rng;
        amdim_rng_init(&rng, 11, 0, (uint64_t)i);
        amdim_pair_params p;
        amdim_augment_draw(&c32, 32, 32, &rng, &p);
        const amdim_view_params *vp = &p.view[0];
        CHECK(vp->w == 32 && vp->h == 32 && abs(vp->dx) <= 4 && abs(vp->dy) <= 4, "translate params");
        shift[vp->dx + 4] += 1;
        moved += vp->dx != 0 || vp->dy != 0;
    }
    /* P(moved) = 0.8 * (1 - 1/81) */
    check_frequency("translate (non-zero shift)", moved, n, 0.8 * (1 - 1.0 / 81));
    /* dx histogram: 0.2 + 0.8/9 mass at 0, 0.8/9 elsewhere */
    double chi = 0;
    for (int i = 0; i < 9; i++) {
        double e = n * (0.8 / 9 + (i == 4 ? 0.2 : 0));
        chi += (shift[i] - e) * (shift[i] - e) / e;
    }
    printf("translate dx: chi2 %.2f (critical %.1f)\n", chi, chi2_crit(8));
    CHECK(chi < chi2_crit(8), "translation shifts are not uniform: chi2 %.2f", chi);

    /* Streams: a key gives the same draws every time; other keys differ. */
    amdim_rng a, b;
    amdim_rng_init(&a, 5, 1, 99);
    amdim_rng_init(&b, 5, 1, 99);
    int same = 1;
    for (int i = 0; i < 1000; i++)
        same &= amdim_rng_u32(&a) == amdim_rng_u32(&b);
    CHECK(same, "one key gave two streams");
    const uint64_t keys[3][3] = {{6, 1, 99}, {5, 2, 99}, {5, 1, 100}};
    for (int k = 0; k < 3; k++) {
        amdim_rng_init(&a, 5, 1, 99);
        amdim_rng_init(&b, keys[k][0], keys[k][1], keys[k][2]);
        int equal = 0;
        for (int i = 0; i < 64; i++)
            equal += amdim_rng_u32(&a) == amdim_rng_u32(&b);
        CHECK(equal < 3, "changing the %s did not change the stream", k == 0 ? "seed" : k == 1 ? "epoch" : "index");
    }
    /* Integer draws are unbiased over odd ranges. */
    int32_t dice[7] = {0};
    amdim_rng_init(&a, 1, 2, 3);
    for (int i = 0; i < 70000; i++)
        dice[amdim_rng_int(&a, 0, 6)]++;
    CHECK(chi2_uniform(dice, 7, 70000) < chi2_crit(6), "amdim_rng_int is biased");

    /* The same (seed, epoch, index) makes byte-identical pairs in
     * different augmenters (i.e. in different workers). */
    amdim_augmenter *x1, *x2;
    REQUIRE(amdim_augment_create(&x1, &cfg) == 0 && amdim_augment_create(&x2, &cfg) == 0, "create");
    const ref_tensor *dec = ref_get(&rf, "src0/decoded", REF_U8);
    amdim_record rec = {.label = 0, .aux_label = -1, .height = dec->dims[0], .width = dec->dims[1], .channels = 3,
                        .encoding = AMDIM_ENCODING_RAW, .payload = dec->data, .payload_size = (uint32_t)dec->count};
    size_t vb = 128 * 128 * 3;
    uint8_t *v[4];
    for (int i = 0; i < 4; i++)
        v[i] = malloc(vb);
    amdim_pair_params p1, p2;
    /* x2 makes another sample first, so its buffers hold other data. */
    REQUIRE(amdim_augment_pair(x2, &rec, 9, 4, 12, v[2], v[3], &p2) == 0, "pair");
    REQUIRE(amdim_augment_pair(x1, &rec, 9, 4, 17, v[0], v[1], &p1) == 0, "pair");
    REQUIRE(amdim_augment_pair(x2, &rec, 9, 4, 17, v[2], v[3], &p2) == 0, "pair");
    CHECK(memcmp(v[0], v[2], vb) == 0 && memcmp(v[1], v[3], vb) == 0 && memcmp(&p1, &p2, sizeof p1) == 0,
          "the same key made different pairs");
    CHECK(memcmp(v[0], v[1], vb) != 0, "the two views of a pair are identical");
    for (int i = 0; i < 4; i++)
        free(v[i]);
    amdim_augment_destroy(x1);
    amdim_augment_destroy(x2);
    ref_free(&rf);
    return test_finish("test_augment_draws");
}
