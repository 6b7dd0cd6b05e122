/* Drawing for the tools' pictures (amdim_image.h): a 3x5 bitmap font,
 * contact sheets of view pairs, and the checked PNG writer. */
#include "amdim_image.h"

#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 3x5 glyphs, rows top to bottom, 3 bits each (the most significant bit
 * of 15 is the top row's left pixel). */
static int glyph(char ch)
{
    static const char *chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789./-%";
    static const unsigned short bits[] = {
        0x2BED, 0x6BAE, 0x3923, 0x6B6E, 0x79A7, 0x79A4, 0x396B, 0x5BED, 0x7497, 0x126A, 0x5BAD, 0x4927, 0x5FED, 0x6B6D,
        0x2B6A, 0x6BA4, 0x2B73, 0x6BAD, 0x388E, 0x7492, 0x5B6F, 0x5B6A, 0x5BFD, 0x5AAD, 0x5AA4, 0x72A7, 0x7B6F, 0x2C97,
        0x73E7, 0x73CF, 0x5BC9, 0x79CF, 0x79EF, 0x7249, 0x7BEF, 0x7BCF, 0x0002, 0x12A4, 0x01C0, 0x4AA5};
    if (ch >= 'a' && ch <= 'z')
        ch = (char)(ch - 'a' + 'A');
    const char *p = strchr(chars, ch);
    return p && ch ? bits[p - chars] : 0;
}

void amdim_draw_text(uint8_t *rgb, int width, int height, int x, int y, const char *s, const uint8_t color[3],
                     int scale)
{
    for (; *s; s++, x += 4 * scale) {
        int g = glyph(*s);
        for (int r = 0; r < 5; r++)
            for (int k = 0; k < 3; k++) {
                if (!(g >> (14 - (r * 3 + k)) & 1))
                    continue;
                for (int dy = 0; dy < scale; dy++)
                    for (int dx = 0; dx < scale; dx++) {
                        int px = x + k * scale + dx, py = y + r * scale + dy;
                        if (px >= 0 && px < width && py >= 0 && py < height)
                            memcpy(rgb + ((size_t)py * width + px) * 3, color, 3);
                    }
            }
    }
}

int amdim_png_write_rgb(const char *path, const uint8_t *rgb, int width, int height, char *err, size_t n)
{
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = (png_uint_32)width;
    pi.height = (png_uint_32)height;
    pi.format = PNG_FORMAT_RGB;
    if (!png_image_write_to_file(&pi, path, 0, rgb, 0, NULL))
        return amdim_fail(err, n, AMDIM_E_IO, "writing %s: %s", path, pi.message);
    return AMDIM_OK;
}

/* ---- contact sheets ---------------------------------------------------------- */

enum { SHEET_COLS = 4 };

int amdim_sheet_init(amdim_sheet *s, int size, int max)
{
    memset(s, 0, sizeof *s);
    s->size = size;
    s->max = max;
    s->cell_w = 2 * size + 6;
    s->cell_h = size + 16;
    s->w = SHEET_COLS * s->cell_w;
    s->h = ((max + SHEET_COLS - 1) / SHEET_COLS) * s->cell_h;
    s->img = calloc((size_t)s->w * s->h * 3, 1);
    return s->img ? AMDIM_OK : AMDIM_E_NOMEM;
}

int amdim_sheet_add(amdim_sheet *s, const uint8_t *view1, const uint8_t *view2, int label)
{
    if (s->n >= s->max)
        return 0;
    static const uint8_t white[3] = {255, 255, 255};
    int col = s->n % SHEET_COLS, row = s->n / SHEET_COLS, S = s->size;
    int x0 = col * s->cell_w + 2, y0 = row * s->cell_h + 2;
    for (int y = 0; y < S; y++) {
        memcpy(s->img + ((size_t)(y0 + y) * s->w + x0) * 3, view1 + (size_t)y * S * 3, (size_t)S * 3);
        memcpy(s->img + ((size_t)(y0 + y) * s->w + x0 + S + 2) * 3, view2 + (size_t)y * S * 3, (size_t)S * 3);
    }
    char text[16];
    snprintf(text, sizeof text, "%d", label);
    amdim_draw_text(s->img, s->w, s->h, x0, y0 + S + 3, text, white, 2);
    s->n++;
    return 1;
}

int amdim_sheet_write(const amdim_sheet *s, const char *path, char *err, size_t n)
{
    if (s->n == 0)
        return amdim_fail(err, n, AMDIM_E_EMPTY, "%s: no pairs to draw", path);
    return amdim_png_write_rgb(path, s->img, s->w, ((s->n + SHEET_COLS - 1) / SHEET_COLS) * s->cell_h, err, n);
}

void amdim_sheet_free(amdim_sheet *s)
{
    free(s->img);
    memset(s, 0, sizeof *s);
}
