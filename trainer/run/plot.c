/* Renders a run's metrics.jsonl as a PNG: training losses (top) and probe
 * accuracies (bottom) over updates, labelled in the image module's 3x5 font. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_image.h"
#include "amdim_run.h"

#define W 960
#define H 720

typedef struct {
    uint8_t *px;
} canvas;

static void dot(canvas *c, int x, int y, const uint8_t *col)
{
    if (x >= 0 && x < W && y >= 0 && y < H)
        memcpy(c->px + ((size_t)y * W + x) * 3, col, 3);
}

static void text(canvas *c, int x, int y, const char *s, const uint8_t *col, int scale)
{
    amdim_draw_text(c->px, W, H, x, y, s, col, scale);
}

static void line(canvas *c, int x0, int y0, int x1, int y1, const uint8_t *col)
{
    int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, e = dx + dy;
    for (;;) {
        dot(c, x0, y0, col);
        dot(c, x0, y0 + 1, col);
        if (x0 == x1 && y0 == y1)
            break;
        int e2 = 2 * e;
        if (e2 >= dy) {
            e += dy;
            x0 += sx;
        }
        if (e2 <= dx) {
            e += dx;
            y0 += sy;
        }
    }
}

typedef struct {
    const char *key, *label;
    int eval;
    uint8_t col[3];
    double *x, *y;
    int n;
} series;

static double field(const char *line_, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line_, pat);
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

static void panel(canvas *c, int top, int bottom, series *s, int ns, double xmin, double xmax, const char *title,
                  int fixed01)
{
    const uint8_t grey[3] = {160, 160, 160}, black[3] = {0, 0, 0};
    int left = 90, right = W - 30;
    double ymin = 1e300, ymax = -1e300;
    for (int i = 0; i < ns; i++)
        for (int k = 0; k < s[i].n; k++)
            if (isfinite(s[i].y[k])) {
                ymin = s[i].y[k] < ymin ? s[i].y[k] : ymin;
                ymax = s[i].y[k] > ymax ? s[i].y[k] : ymax;
            }
    if (fixed01 || ymin > ymax) {
        ymin = 0;
        ymax = 1;
    }
    if (ymax - ymin < 1e-9)
        ymax = ymin + 1;
    double pad = (ymax - ymin) * 0.05;
    if (!fixed01) {
        ymin -= pad;
        ymax += pad;
    }
    text(c, left, top - 18, title, black, 3);
    line(c, left, bottom, right, bottom, black);
    line(c, left, top, left, bottom, black);
    char buf[32];
    for (int t = 0; t <= 4; t++) {
        int y = bottom - (bottom - top) * t / 4;
        double v = ymin + (ymax - ymin) * t / 4;
        for (int x = left; x < right; x += 6)
            dot(c, x, y, grey);
        snprintf(buf, sizeof buf, fabs(v) >= 100 ? "%.0f" : fabs(v) >= 10 ? "%.1f" : "%.2f", v);
        text(c, 8, y - 5, buf, black, 2);
        int x = left + (right - left) * t / 4;
        snprintf(buf, sizeof buf, "%.0f", xmin + (xmax - xmin) * t / 4);
        text(c, x - 10, bottom + 6, buf, black, 2);
    }
    for (int i = 0; i < ns; i++) {
        int px = -1, py = -1;
        for (int k = 0; k < s[i].n; k++) {
            if (!isfinite(s[i].y[k]))
                continue;
            int x = left + (int)((s[i].x[k] - xmin) / (xmax - xmin > 0 ? xmax - xmin : 1) * (right - left));
            int y = bottom - (int)((s[i].y[k] - ymin) / (ymax - ymin) * (bottom - top));
            if (px >= 0)
                line(c, px, py, x, y, s[i].col);
            if (s[i].eval)
                for (int d = -3; d <= 3; d++) {
                    dot(c, x + d, y, s[i].col);
                    dot(c, x, y + d, s[i].col);
                }
            px = x;
            py = y;
        }
        /* legend */
        int lx = left + 10 + (i % 3) * 280, ly = top + 8 + (i / 3) * 16;
        for (int k = 0; k < 20; k++)
            for (int d = 0; d < 3; d++)
                dot(c, lx + k, ly + 4 + d, s[i].col);
        text(c, lx + 26, ly, s[i].label, black, 2);
    }
}

int amdim_plot_metrics(const char *jsonl, const char *png_path, char *err, size_t n)
{
    FILE *f = fopen(jsonl, "r");
    if (!f)
        return amdim_fail(err, n, AMDIM_E_NOT_FOUND, "cannot open %s", jsonl);
    series loss[] = {{"loss", "TOTAL LOSS", 0, {0, 0, 0}, 0, 0, 0},   {"nce_1t5", "1T5", 0, {214, 39, 40}, 0, 0, 0},
                     {"nce_1t7", "1T7", 0, {31, 119, 180}, 0, 0, 0},  {"nce_5t5", "5T5", 0, {44, 160, 44}, 0, 0, 0},
                     {"reg", "REGULARISER", 0, {148, 103, 189}, 0, 0, 0}};
    series acc[] = {{"train_acc_lin", "TRAIN LINEAR", 0, {255, 127, 14}, 0, 0, 0},
                    {"train_acc_mlp", "TRAIN MLP", 0, {140, 86, 75}, 0, 0, 0},
                    {"test_acc_lin", "TEST LINEAR", 1, {214, 39, 40}, 0, 0, 0},
                    {"test_acc_mlp", "TEST MLP", 1, {31, 119, 180}, 0, 0, 0}};
    char line_[4096];
    double xmin = 1e300, xmax = -1e300;
    int rows = 0;
    while (fgets(line_, sizeof line_, f)) {
        int is_eval = strstr(line_, "\"kind\":\"eval\"") != NULL;
        double step = field(line_, "step");
        if (!isfinite(step))
            continue;
        rows++;
        xmin = step < xmin ? step : xmin;
        xmax = step > xmax ? step : xmax;
        series *groups[2] = {loss, acc};
        int counts[2] = {5, 4};
        for (int g = 0; g < 2; g++)
            for (int i = 0; i < counts[g]; i++) {
                series *s = &groups[g][i];
                if (s->eval != is_eval)
                    continue;
                double v = field(line_, s->key);
                if (!isfinite(v) || v < 0 - (g == 0 ? 1e300 : 0))
                    continue;
                s->x = realloc(s->x, (size_t)(s->n + 1) * sizeof *s->x);
                s->y = realloc(s->y, (size_t)(s->n + 1) * sizeof *s->y);
                s->x[s->n] = step;
                s->y[s->n++] = v;
            }
    }
    fclose(f);
    if (!rows)
        return amdim_fail(err, n, AMDIM_E_EMPTY, "%s has no metrics", jsonl);
    canvas c = {malloc((size_t)W * H * 3)};
    memset(c.px, 255, (size_t)W * H * 3);
    panel(&c, 50, 330, loss, 5, xmin, xmax, "LOSSES / UPDATES", 0);
    panel(&c, 410, 680, acc, 4, xmin, xmax, "PROBE ACCURACY / UPDATES", 1);
    int st = amdim_png_write_rgb(png_path, c.px, W, H, err, n);
    free(c.px);
    for (int i = 0; i < 5; i++)
        free(loss[i].x), free(loss[i].y);
    for (int i = 0; i < 4; i++)
        free(acc[i].x), free(acc[i].y);
    return st;
}
