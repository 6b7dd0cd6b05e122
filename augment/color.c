/* The per-view colour and geometry steps, written to give the same bytes
 * as PIL 9 / torchvision 0.14: ImageEnhance blends (float alpha, truncation,
 * clipping only when extrapolating), "L" conversion in 16-bit fixed point,
 * and the 8-bit HSV round trip of torchvision's adjust_hue. The C
 * expressions keep PIL's float/double mix on purpose. */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "amdim_augment.h"
#include "augment_internal.h"

/* Image.blend(degenerate, image, alpha) for one byte pair. */
static inline uint8_t blend(int a, int b, float alpha)
{
    float t = (float)a + alpha * (float)(b - a);
    if (alpha >= 0.0f && alpha <= 1.0f)
        return (uint8_t)t;
    return t <= 0.0f ? 0 : t >= 255.0f ? 255 : (uint8_t)t;
}

void amdim_blend_table(uint8_t table[256], int level, float f)
{
    for (int v = 0; v < 256; v++)
        table[v] = blend(level, v, f);
}

void amdim_adjust_brightness(uint8_t *p, size_t npix, float f)
{
    for (size_t i = 0; i < npix * 3; i++)
        p[i] = blend(0, p[i], f);
}

void amdim_adjust_contrast(uint8_t *p, size_t npix, float f)
{
    /* ImageStat mean of the "L" image, rounded as int(mean + 0.5). */
    uint64_t sum = 0;
    for (size_t i = 0; i < npix; i++)
        sum += amdim_grey_level(p + 3 * i);
    int mean = (int)((double)sum / (double)npix + 0.5);
    for (size_t i = 0; i < npix * 3; i++)
        p[i] = blend(mean, p[i], f);
}

void amdim_adjust_saturation(uint8_t *p, size_t npix, float f)
{
    for (size_t i = 0; i < npix; i++, p += 3) {
        int g = amdim_grey_level(p);
        p[0] = blend(g, p[0], f);
        p[1] = blend(g, p[1], f);
        p[2] = blend(g, p[2], f);
    }
}

static inline uint8_t clip8(int v) { return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v; }

/* PIL's rgb2hsv for one pixel (after Python's colorsys). */
static void rgb_to_hsv(const uint8_t *in, uint8_t *uh, uint8_t *us, uint8_t *uv)
{
    int r = in[0], g = in[1], b = in[2];
    int maxc = r > g ? (r > b ? r : b) : (g > b ? g : b);
    int minc = r < g ? (r < b ? r : b) : (g < b ? g : b);
    *uv = (uint8_t)maxc;
    if (minc == maxc) {
        *uh = 0;
        *us = 0;
        return;
    }
    float cr = (float)(maxc - minc);
    float s = cr / (float)maxc;
    float rc = ((float)(maxc - r)) / cr;
    float gc = ((float)(maxc - g)) / cr;
    float bc = ((float)(maxc - b)) / cr;
    float h;
    if (r == maxc)
        h = bc - gc;
    else if (g == maxc)
        h = 2.0 + rc - bc;
    else
        h = 4.0 + gc - rc;
    h = fmod((h / 6.0 + 1.0), 1.0);
    *uh = clip8((int)(h * 255.0));
    *us = clip8((int)(s * 255.0));
}

/* PIL's hsv2rgb for one pixel. */
static void hsv_to_rgb(uint8_t h, uint8_t s, uint8_t v, uint8_t *out)
{
    if (s == 0) {
        out[0] = out[1] = out[2] = v;
        return;
    }
    int i = (int)floor((float)h * 6.0 / 255.0);
    float f = (float)h * 6.0 / 255.0 - (float)i;
    float fs = ((float)s) / 255.0;
    int p = (int)round((float)v * (1.0 - fs));
    int q = (int)round((float)v * (1.0 - fs * f));
    int t = (int)round((float)v * (1.0 - fs * (1.0 - f)));
    uint8_t up = clip8(p), uq = clip8(q), ut = clip8(t);
    switch (i % 6) {
    case 0: out[0] = v, out[1] = ut, out[2] = up; break;
    case 1: out[0] = uq, out[1] = v, out[2] = up; break;
    case 2: out[0] = up, out[1] = v, out[2] = ut; break;
    case 3: out[0] = up, out[1] = uq, out[2] = v; break;
    case 4: out[0] = ut, out[1] = up, out[2] = v; break;
    default: out[0] = v, out[1] = up, out[2] = uq; break;
    }
}

static amdim_hsv_tables hsv_tables;

static void hsv_tables_build(void)
{
    static const int others[3][2] = {{1, 2}, {0, 2}, {0, 1}};
    for (int m = 0; m < 3; m++)
        for (int c = 0; c < 2; c++)
            for (int cr = 1; cr < 256; cr++)
                for (int d = 0; d <= cr; d++) {
                    uint8_t px[3], h, s, v;
                    px[m] = (uint8_t)cr;
                    px[others[m][c]] = 0;                /* the minimum */
                    px[others[m][1 - c]] = (uint8_t)(cr - d);
                    rgb_to_hsv(px, &h, &s, &v);
                    hsv_tables.hue[(2 * m + c) << 16 | cr << 8 | d] = h;
                }
}

const amdim_hsv_tables *amdim_hsv_tables_get(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, hsv_tables_build);
    return &hsv_tables;
}

void amdim_adjust_hue(uint8_t *p, size_t npix, float hue)
{
    /* np.uint8(hue_factor * 255): truncation toward zero, then modulo 256. */
    uint8_t shift = (uint8_t)(int)((double)hue * 255.0);
    for (size_t i = 0; i < npix; i++, p += 3) {
        uint8_t h, s, v;
        rgb_to_hsv(p, &h, &s, &v);
        hsv_to_rgb((uint8_t)(h + shift), s, v, p);
    }
}

void amdim_to_grey(uint8_t *p, size_t npix)
{
    for (size_t i = 0; i < npix; i++, p += 3)
        p[0] = p[1] = p[2] = amdim_grey_level(p);
}

void amdim_flip_horizontal(uint8_t *p, int w, int h)
{
    for (int y = 0; y < h; y++) {
        uint8_t *row = p + (size_t)y * w * 3;
        for (int x = 0; x < w / 2; x++) {
            uint8_t *a = row + 3 * x, *b = row + 3 * (w - 1 - x), t[3];
            memcpy(t, a, 3);
            memcpy(a, b, 3);
            memcpy(b, t, 3);
        }
    }
}

static inline int reflect(int i, int n)
{
    if (n == 1)
        return 0;
    while (i < 0 || i >= n)
        i = i < 0 ? -i : 2 * (n - 1) - i;
    return i;
}

void amdim_translate_reflect(const uint8_t *src, int w, int h, int dx, int dy, uint8_t *out)
{
    /* Columns whose source x - dx lies inside the image are one copy per row. */
    int lo = dx > 0 ? dx : 0, hi = dx < 0 ? w + dx : w;
    if (lo > hi)
        lo = hi = 0;
    for (int y = 0; y < h; y++) {
        const uint8_t *row = src + (size_t)reflect(y - dy, h) * w * 3;
        uint8_t *o = out + (size_t)y * w * 3;
        for (int x = 0; x < lo; x++)
            memcpy(o + (size_t)x * 3, row + (size_t)reflect(x - dx, w) * 3, 3);
        if (hi > lo)
            memcpy(o + (size_t)lo * 3, row + (size_t)(lo - dx) * 3, (size_t)(hi - lo) * 3);
        for (int x = hi > lo ? hi : lo; x < w; x++)
            memcpy(o + (size_t)x * 3, row + (size_t)reflect(x - dx, w) * 3, 3);
    }
}
