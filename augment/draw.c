/* Presets and the random draws of AMDIM's transforms (torchvision rules). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amdim_augment.h"

int amdim_augment_preset(const char *name, amdim_augment_config *c)
{
    memset(c, 0, sizeof *c);
    c->scale[0] = 0.3f, c->scale[1] = 1.0f;
    c->ratio[0] = 0.7f, c->ratio[1] = 1.4f;
    c->translate = 4;
    c->p_translate = 0.8f;
    c->p_flip = 0.5f;
    c->p_jitter = 0.8f;
    c->brightness = c->contrast = c->saturation = 0.4f;
    c->p_grey = 0.25f;
    if (strcmp(name, "imagenet") == 0) {
        c->size = 128;
        c->crop_mode = AMDIM_CROP_RESIZED;
        c->hue = 0.1f;
        c->test_resize = 146;
        const float m[3] = {0.485f, 0.456f, 0.406f}, s[3] = {0.229f, 0.224f, 0.225f};
        memcpy(c->mean, m, sizeof m);
        memcpy(c->std, s, sizeof s);
    } else if (strcmp(name, "stl10") == 0) {
        c->size = 64;
        c->crop_mode = AMDIM_CROP_RESIZED;
        c->hue = 0.2f;
        c->test_resize = 70;
        const float m[3] = {0.43f, 0.42f, 0.39f}, s[3] = {0.27f, 0.26f, 0.27f};
        memcpy(c->mean, m, sizeof m);
        memcpy(c->std, s, sizeof s);
    } else if (strcmp(name, "cifar") == 0) {
        c->size = 32;
        c->crop_mode = AMDIM_CROP_TRANSLATE;
        c->hue = 0.2f;
        c->test_resize = 0;
        const float m[3] = {125.3f / 255, 123.0f / 255, 113.9f / 255};
        const float s[3] = {63.0f / 255, 62.1f / 255, 66.7f / 255};
        memcpy(c->mean, m, sizeof m);
        memcpy(c->std, s, sizeof s);
    } else if (strcmp(name, "dim28") == 0 || strcmp(name, "dim32") == 0 || strcmp(name, "dim64") == 0) {
        /* Deep InfoMax's data (docs/dim.md §8): the image itself at its native size (smaller ones
         * zero-padded, centred), no flip, jitter or grey, normalised to [-1, 1] */
        c->size = atoi(name + 3);
        c->crop_mode = AMDIM_CROP_TRANSLATE;
        c->translate = 0;
        c->p_translate = c->p_flip = c->p_jitter = c->p_grey = 0.0f;
        c->brightness = c->contrast = c->saturation = c->hue = 0.0f;
        c->test_resize = 0;
        for (int i = 0; i < 3; i++)
            c->mean[i] = c->std[i] = 0.5f;
    } else if (strcmp(name, "dim-stl10") == 0) {
        /* Deep InfoMax's STL-10 (docs/dim.md §8): Resize(64) and a flip, as a resized crop of the whole
         * image (scale and ratio 1: torchvision's rule then takes all of a square image) */
        c->size = 64;
        c->crop_mode = AMDIM_CROP_RESIZED;
        c->scale[0] = c->scale[1] = 1.0f;
        c->ratio[0] = c->ratio[1] = 1.0f;
        c->filter = AMDIM_FILTER_BILINEAR;
        c->p_jitter = c->p_grey = 0.0f;
        c->brightness = c->contrast = c->saturation = c->hue = 0.0f;
        c->test_resize = 64;
        for (int i = 0; i < 3; i++)
            c->mean[i] = c->std[i] = 0.5f;
    } else {
        return AMDIM_E_INVALID;
    }
    snprintf(c->name, sizeof c->name, "%s", name);
    return AMDIM_OK;
}

static int prob_ok(float p) { return p >= 0.0f && p <= 1.0f; }

int amdim_augment_config_check(const amdim_augment_config *c, char *err, size_t n)
{
    if (c->size < 1 || c->size > 4096)
        return amdim_fail(err, n, AMDIM_E_INVALID, "size %d is outside 1..4096", c->size);
    if (c->crop_mode != AMDIM_CROP_RESIZED && c->crop_mode != AMDIM_CROP_TRANSLATE)
        return amdim_fail(err, n, AMDIM_E_INVALID, "unknown crop mode %d", c->crop_mode);
    if (!(c->scale[0] > 0 && c->scale[0] <= c->scale[1] && c->scale[1] <= 1))
        return amdim_fail(err, n, AMDIM_E_INVALID, "crop scale range (%g, %g) must satisfy 0 < lo <= hi <= 1",
                          c->scale[0], c->scale[1]);
    if (c->filter != AMDIM_FILTER_BICUBIC && c->filter != AMDIM_FILTER_BILINEAR)
        return amdim_fail(err, n, AMDIM_E_INVALID, "unknown resize filter %d", c->filter);
    if (!(c->ratio[0] > 0 && c->ratio[0] <= c->ratio[1]))
        return amdim_fail(err, n, AMDIM_E_INVALID, "crop ratio range (%g, %g) must satisfy 0 < lo <= hi",
                          c->ratio[0], c->ratio[1]);
    if (c->translate < 0 || c->translate >= c->size)
        return amdim_fail(err, n, AMDIM_E_INVALID, "translation %d must be in 0..size-1", c->translate);
    if (!prob_ok(c->p_translate) || !prob_ok(c->p_flip) || !prob_ok(c->p_jitter) || !prob_ok(c->p_grey))
        return amdim_fail(err, n, AMDIM_E_INVALID, "probabilities must be in [0, 1]");
    if (!(c->brightness >= 0 && c->contrast >= 0 && c->saturation >= 0))
        return amdim_fail(err, n, AMDIM_E_INVALID, "brightness, contrast and saturation must be >= 0");
    if (!(c->hue >= 0 && c->hue <= 0.5f))
        return amdim_fail(err, n, AMDIM_E_INVALID, "hue %g must be in [0, 0.5]", c->hue);
    if (c->test_resize < 0 || (c->crop_mode == AMDIM_CROP_RESIZED && c->test_resize < c->size))
        return amdim_fail(err, n, AMDIM_E_INVALID, "test resize %d must be at least the size %d",
                          c->test_resize, c->size);
    for (int i = 0; i < 3; i++)
        if (!(c->std[i] > 0))
            return amdim_fail(err, n, AMDIM_E_INVALID, "normalisation std must be > 0");
    return AMDIM_OK;
}

void amdim_augment_draw_crop(const amdim_augment_config *cfg, int w, int h, amdim_rng *rng, int *x,
                             int *y, int *cw, int *ch)
{
    double area = (double)w * h;
    float log_lo = logf(cfg->ratio[0]), log_hi = logf(cfg->ratio[1]);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target = area * amdim_rng_uniform(rng, cfg->scale[0], cfg->scale[1]);
        double ar = exp(amdim_rng_uniform(rng, log_lo, log_hi));
        /* Python's round(): half to even, which nearbyint does by default. */
        int tw = (int)nearbyint(sqrt(target * ar));
        int th = (int)nearbyint(sqrt(target / ar));
        if (tw > 0 && tw <= w && th > 0 && th <= h) {
            *y = amdim_rng_int(rng, 0, h - th);
            *x = amdim_rng_int(rng, 0, w - tw);
            *cw = tw;
            *ch = th;
            return;
        }
    }
    /* Fallback: centre crop at the clamped aspect ratio. */
    double in_ratio = (double)w / h;
    int tw, th;
    if (in_ratio < cfg->ratio[0]) {
        tw = w;
        th = (int)nearbyint(tw / (double)cfg->ratio[0]);
    } else if (in_ratio > cfg->ratio[1]) {
        th = h;
        tw = (int)nearbyint(th * (double)cfg->ratio[1]);
    } else {
        tw = w;
        th = h;
    }
    *cw = tw;
    *ch = th;
    *y = (h - th) / 2;
    *x = (w - tw) / 2;
}

static void draw_view(const amdim_augment_config *cfg, int w, int h, amdim_rng *rng, amdim_view_params *v)
{
    memset(v, 0, sizeof *v);
    if (cfg->crop_mode == AMDIM_CROP_RESIZED) {
        amdim_augment_draw_crop(cfg, w, h, rng, &v->x, &v->y, &v->w, &v->h);
    } else {
        v->w = w;
        v->h = h;
        if (amdim_rng_uniform(rng, 0, 1) < cfg->p_translate) {
            v->dx = amdim_rng_int(rng, -cfg->translate, cfg->translate);
            v->dy = amdim_rng_int(rng, -cfg->translate, cfg->translate);
        }
    }
    v->jitter = amdim_rng_uniform(rng, 0, 1) < cfg->p_jitter;
    if (v->jitter) {
        /* torch.randperm(4), then the four factors. */
        uint8_t order[4] = {0, 1, 2, 3};
        for (int i = 3; i > 0; i--) {
            int j = amdim_rng_int(rng, 0, i);
            uint8_t t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        memcpy(v->order, order, 4);
        float lo;
        lo = 1 - cfg->brightness;
        v->brightness = amdim_rng_uniform(rng, lo > 0 ? lo : 0, 1 + cfg->brightness);
        lo = 1 - cfg->contrast;
        v->contrast = amdim_rng_uniform(rng, lo > 0 ? lo : 0, 1 + cfg->contrast);
        lo = 1 - cfg->saturation;
        v->saturation = amdim_rng_uniform(rng, lo > 0 ? lo : 0, 1 + cfg->saturation);
        v->hue = amdim_rng_uniform(rng, -cfg->hue, cfg->hue);
    } else {
        for (int i = 0; i < 4; i++)
            v->order[i] = (uint8_t)i;
        v->brightness = v->contrast = v->saturation = 1.0f;
        v->hue = 0.0f;
    }
    v->grey = amdim_rng_uniform(rng, 0, 1) < cfg->p_grey;
}

void amdim_augment_draw(const amdim_augment_config *cfg, int w, int h, amdim_rng *rng, amdim_pair_params *p)
{
    p->flip = amdim_rng_uniform(rng, 0, 1) < cfg->p_flip;
    draw_view(cfg, w, h, rng, &p->view[0]);
    draw_view(cfg, w, h, rng, &p->view[1]);
}
