/* JPEG (libjpeg-turbo's TurboJPEG API) and PNG (libpng's simplified API)
 * decoding, format sniffing and JPEG encoding. */
#include "amdim_image.h"
#include "codec_internal.h"

#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

struct amdim_codec {
    tjhandle dec, enc;
    unsigned char *jpeg_buf; /* tjAlloc'd encode buffer */
    unsigned long jpeg_cap;
    uint8_t *cmyk;           /* scratch for CMYK decodes */
    size_t cmyk_cap;
    char err[AMDIM_CODEC_ERROR_SIZE];
};

char *amdim_codec_error_buffer(amdim_codec *c) { return c->err; }

amdim_image_format amdim_image_sniff(const uint8_t *d, size_t n)
{
    if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF)
        return AMDIM_FORMAT_JPEG;
    if (n >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0)
        return AMDIM_FORMAT_PNG;
    if (n >= 6 && (memcmp(d, "GIF87a", 6) == 0 || memcmp(d, "GIF89a", 6) == 0))
        return AMDIM_FORMAT_GIF;
    if (n >= 2 && d[0] == 'B' && d[1] == 'M')
        return AMDIM_FORMAT_BMP;
    if (n >= 4 && (memcmp(d, "II*\0", 4) == 0 || memcmp(d, "MM\0*", 4) == 0))
        return AMDIM_FORMAT_TIFF;
    if (n >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0)
        return AMDIM_FORMAT_WEBP;
    if (n >= 2 && d[0] == 'P' && d[1] >= '1' && d[1] <= '6')
        return AMDIM_FORMAT_PNM;
    return AMDIM_FORMAT_UNKNOWN;
}

const char *amdim_image_format_name(amdim_image_format f)
{
    static const char *names[] = {"unknown", "JPEG", "PNG", "GIF", "BMP", "TIFF", "WebP", "PNM"};
    return (unsigned)f < sizeof names / sizeof names[0] ? names[f] : "unknown";
}

int amdim_image_reserve(amdim_image *img, int width, int height, int channels)
{
    if (width <= 0 || height <= 0 || channels <= 0)
        return AMDIM_E_INVALID;
    size_t need = (size_t)width * (size_t)height * (size_t)channels;
    if (need > img->capacity) {
        uint8_t *p = realloc(img->pixels, need);
        if (!p)
            return AMDIM_E_NOMEM;
        img->pixels = p;
        img->capacity = need;
    }
    img->width = width;
    img->height = height;
    img->channels = channels;
    return AMDIM_OK;
}

void amdim_image_free(amdim_image *img)
{
    if (!img)
        return;
    free(img->pixels);
    memset(img, 0, sizeof *img);
}

int amdim_codec_create(amdim_codec **out)
{
    *out = NULL;
    amdim_codec *c = calloc(1, sizeof *c);
    if (!c)
        return AMDIM_E_NOMEM;
    c->dec = tjInitDecompress();
    c->enc = tjInitCompress();
    if (!c->dec || !c->enc) {
        amdim_codec_destroy(c);
        return AMDIM_E_NOMEM;
    }
    *out = c;
    return AMDIM_OK;
}

void amdim_codec_destroy(amdim_codec *c)
{
    if (!c)
        return;
    if (c->dec)
        tjDestroy(c->dec);
    if (c->enc)
        tjDestroy(c->enc);
    tjFree(c->jpeg_buf);
    free(c->cmyk);
    free(c);
}

const char *amdim_codec_error(const amdim_codec *c)
{
    return c ? c->err : "no codec";
}

/* libjpeg reports a short file as "Premature end of JPEG file" (a warning
 * while decoding the scan) or as a fatal error while reading the header. */
static int jpeg_status_from_message(const char *msg)
{
    if (strstr(msg, "Premature end") || strstr(msg, "premature end"))
        return AMDIM_E_TRUNCATED;
    if (strstr(msg, "Unsupported") || strstr(msg, "unsupported"))
        return AMDIM_E_UNSUPPORTED;
    return AMDIM_E_CORRUPT;
}

/* Walks the JPEG markers before the first scan looking for an Adobe APP14
 * segment, which tells that CMYK data is stored inverted (as Photoshop writes
 * it and as PIL assumes). */
static int jpeg_has_adobe_marker(const uint8_t *d, size_t n)
{
    size_t i = 2;
    while (i + 4 <= n) {
        if (d[i] != 0xFF)
            return 0;
        uint8_t m = d[i + 1];
        if (m == 0xFF) {
            i++;
            continue;
        }
        if (m == 0xDA || m == 0xD9)
            return 0;
        size_t seg = ((size_t)d[i + 2] << 8) | d[i + 3];
        if (m == 0xEE && seg >= 7 && i + 4 + 5 <= n && memcmp(d + i + 4, "Adobe", 5) == 0)
            return 1;
        i += 2 + seg;
    }
    return 0;
}

/* libjpeg-turbo 2.1 leaves a decompressor that failed mid-header in a state
 * where the next tjDecompressHeader3() "succeeds" without setting the size
 * (the previous image's size comes back). A failed handle is therefore
 * replaced before it is used again. */
static int jpeg_fail(amdim_codec *c, const char *fn)
{
    const char *msg = tjGetErrorStr2(c->dec);
    int st = amdim_fail(c->err, sizeof c->err, jpeg_status_from_message(msg), "%s(): %s", fn, msg);
    tjhandle fresh = tjInitDecompress();
    if (fresh) {
        tjDestroy(c->dec);
        c->dec = fresh;
    }
    return st;
}

static int jpeg_probe(amdim_codec *c, const uint8_t *d, size_t n, int *w, int *h, int *subsamp,
                      int *cs)
{
    *w = *h = 0;
    if (tjDecompressHeader3(c->dec, d, (unsigned long)n, w, h, subsamp, cs) != 0)
        return jpeg_fail(c, "tjDecompressHeader3");
    if (*w <= 0 || *h <= 0)
        return amdim_fail(c->err, sizeof c->err, AMDIM_E_CORRUPT,
                          "tjDecompressHeader3(): image has size %dx%d", *w, *h);
    return AMDIM_OK;
}

static int png_probe(amdim_codec *c, png_image *pi, const uint8_t *d, size_t n)
{
    memset(pi, 0, sizeof *pi);
    pi->version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(pi, d, n)) {
        int st = strstr(pi->message, "EOF") || strstr(pi->message, "truncated") ||
                         strstr(pi->message, "Not enough")
                     ? AMDIM_E_TRUNCATED
                     : AMDIM_E_CORRUPT;
        amdim_fail(c->err, sizeof c->err, st, "png_image_begin_read_from_memory(): %s", pi->message);
        png_image_free(pi);
        return st;
    }
    return AMDIM_OK;
}

int amdim_codec_probe(amdim_codec *c, const uint8_t *d, size_t n, amdim_image_format *format,
                      int *width, int *height, int *channels)
{
    if (n == 0)
        return amdim_fail(c->err, sizeof c->err, AMDIM_E_EMPTY, "probe(): file is empty");
    amdim_image_format f = amdim_image_sniff(d, n);
    *format = f;
    if (f == AMDIM_FORMAT_JPEG) {
        int subsamp, cs;
        int st = jpeg_probe(c, d, n, width, height, &subsamp, &cs);
        if (st)
            return st;
        *channels = cs == TJCS_GRAY ? 1 : (cs == TJCS_CMYK || cs == TJCS_YCCK) ? 4 : 3;
        return AMDIM_OK;
    }
    if (f == AMDIM_FORMAT_PNG) {
        png_image pi;
        int st = png_probe(c, &pi, d, n);
        if (st)
            return st;
        *width = (int)pi.width;
        *height = (int)pi.height;
        *channels = PNG_IMAGE_PIXEL_CHANNELS(pi.format);
        png_image_free(&pi);
        return AMDIM_OK;
    }
    if (f == AMDIM_FORMAT_UNKNOWN)
        return amdim_fail(c->err, sizeof c->err, AMDIM_E_UNSUPPORTED,
                          "probe(): not an image file (starts with %02x %02x %02x %02x)", d[0],
                          n > 1 ? d[1] : 0, n > 2 ? d[2] : 0, n > 3 ? d[3] : 0);
    return amdim_fail(c->err, sizeof c->err, AMDIM_E_UNSUPPORTED,
                      "probe(): %s images are not supported (JPEG and PNG are)", amdim_image_format_name(f));
}

static int check_pixel_limit(amdim_codec *c, int w, int h, uint64_t max_pixels)
{
    if (max_pixels && (uint64_t)w * (uint64_t)h > max_pixels)
        return amdim_fail(c->err, sizeof c->err, AMDIM_E_TOO_LARGE,
                          "decode(): %dx%d = %llu pixels exceeds the limit of %llu", w, h,
                          (unsigned long long)((uint64_t)w * h), (unsigned long long)max_pixels);
    return AMDIM_OK;
}

/* PIL's MULDIV255: round(a * b / 255) for bytes, in integer arithmetic. */
static inline unsigned muldiv255(unsigned a, unsigned b)
{
    unsigned t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

static int decode_jpeg(amdim_codec *c, const uint8_t *d, size_t n, uint64_t max_pixels,
                       amdim_image *out, amdim_decode_info *info)
{
    int w, h, subsamp, cs;
    int st = jpeg_probe(c, d, n, &w, &h, &subsamp, &cs);
    if (st)
        return st;
    if ((st = check_pixel_limit(c, w, h, max_pixels)))
        return st;
    int cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
    info->src_channels = cs == TJCS_GRAY ? 1 : cmyk ? 4 : 3;
    info->is_cmyk = cmyk;
    if (amdim_image_reserve(out, w, h, 3))
        return amdim_fail(c->err, sizeof c->err, AMDIM_E_NOMEM, "decode(): no memory for %dx%d", w, h);
    uint8_t *dst = out->pixels;
    int pf = TJPF_RGB;
    if (cmyk) {
        size_t need = (size_t)w * h * 4;
        if (need > c->cmyk_cap) {
            uint8_t *p = realloc(c->cmyk, need);
            if (!p)
                return amdim_fail(c->err, sizeof c->err, AMDIM_E_NOMEM, "decode(): no memory");
            c->cmyk = p;
            c->cmyk_cap = need;
        }
        dst = c->cmyk;
        pf = TJPF_CMYK;
    }
    /* Progressive files with absurd scan counts are a known denial-of-service
     * vector; TJFLAG_LIMITSCANS rejects them. */
    if (tjDecompress2(c->dec, d, (unsigned long)n, dst, w, 0, h, pf, TJFLAG_LIMITSCANS) != 0) {
        const char *msg = tjGetErrorStr2(c->dec);
        if (tjGetErrorCode(c->dec) != TJERR_WARNING || jpeg_status_from_message(msg) == AMDIM_E_TRUNCATED)
            return jpeg_fail(c, "tjDecompress2");
        info->warning = 1;
        snprintf(info->warning_text, sizeof info->warning_text, "tjDecompress2(): %s", msg);
    }
    if (cmyk) {
        /* PIL: an Adobe marker means inverted CMYK ("CMYK;I"); then
         * R = (255-K) - (C*(255-K))/255 with PIL's rounding. */
        int inv = jpeg_has_adobe_marker(d, n);
        info->adobe_inverted = inv;
        size_t npx = (size_t)w * h;
        const uint8_t *s = c->cmyk;
        uint8_t *o = out->pixels;
        for (size_t i = 0; i < npx; i++, s += 4, o += 3) {
            unsigned cc = s[0], m = s[1], y = s[2], k = s[3];
            if (inv) {
                cc = 255 - cc;
                m = 255 - m;
                y = 255 - y;
                k = 255 - k;
            }
            unsigned nk = 255 - k;
            o[0] = (uint8_t)(nk - muldiv255(cc, nk));
            o[1] = (uint8_t)(nk - muldiv255(m, nk));
            o[2] = (uint8_t)(nk - muldiv255(y, nk));
        }
    }
    return AMDIM_OK;
}

static int decode_png(amdim_codec *c, const uint8_t *d, size_t n, uint64_t max_pixels,
                      amdim_image *out, amdim_decode_info *info)
{
    png_image pi;
    int st = png_probe(c, &pi, d, n);
    if (st)
        return st;
    int w = (int)pi.width, h = (int)pi.height;
    info->src_channels = PNG_IMAGE_PIXEL_CHANNELS(pi.format);
    if ((st = check_pixel_limit(c, w, h, max_pixels)) || w <= 0 || h <= 0) {
        png_image_free(&pi);
        return st ? st : amdim_fail(c->err, sizeof c->err, AMDIM_E_CORRUPT, "decode(): empty PNG");
    }
    /* Read as RGBA and drop alpha: PIL's convert("RGB") discards alpha
     * rather than compositing it. */
    pi.format = PNG_FORMAT_RGBA;
    size_t need = (size_t)w * h * 4;
    if (need > c->cmyk_cap) {
        uint8_t *p = realloc(c->cmyk, need);
        if (!p) {
            png_image_free(&pi);
            return amdim_fail(c->err, sizeof c->err, AMDIM_E_NOMEM, "decode(): no memory");
        }
        c->cmyk = p;
        c->cmyk_cap = need;
    }
    if (!png_image_finish_read(&pi, NULL, c->cmyk, 0, NULL)) {
        st = strstr(pi.message, "EOF") || strstr(pi.message, "Not enough") ? AMDIM_E_TRUNCATED
                                                                             : AMDIM_E_CORRUPT;
        amdim_fail(c->err, sizeof c->err, st, "png_image_finish_read(): %s", pi.message);
        png_image_free(&pi);
        return st;
    }
    if (pi.warning_or_error) {
        info->warning = 1;
        snprintf(info->warning_text, sizeof info->warning_text, "png_image_finish_read(): %s",
                 pi.message);
    }
    png_image_free(&pi);
    if (amdim_image_reserve(out, w, h, 3))
        return amdim_fail(c->err, sizeof c->err, AMDIM_E_NOMEM, "decode(): no memory");
    size_t npx = (size_t)w * h;
    for (size_t i = 0; i < npx; i++)
        memcpy(out->pixels + 3 * i, c->cmyk + 4 * i, 3);
    return AMDIM_OK;
}

int amdim_codec_decode_rgb(amdim_codec *c, const uint8_t *d, size_t n, uint64_t max_pixels,
                           amdim_image *out, amdim_decode_info *info)
{
    amdim_decode_info local;
    if (!info)
        info = &local;
    memset(info, 0, sizeof *info);
    c->err[0] = 0;
    if (n == 0)
        return amdim_fail(c->err, sizeof c->err, AMDIM_E_EMPTY, "decode(): file is empty");
    info->format = amdim_image_sniff(d, n);
    switch (info->format) {
    case AMDIM_FORMAT_JPEG: return decode_jpeg(c, d, n, max_pixels, out, info);
    case AMDIM_FORMAT_PNG: return decode_png(c, d, n, max_pixels, out, info);
    case AMDIM_FORMAT_UNKNOWN:
        return amdim_fail(c->err, sizeof c->err, AMDIM_E_UNSUPPORTED,
                          "decode(): not an image (unrecognised magic bytes %02x %02x %02x %02x)",
                          d[0], n > 1 ? d[1] : 0, n > 2 ? d[2] : 0, n > 3 ? d[3] : 0);
    default:
        return amdim_fail(c->err, sizeof c->err, AMDIM_E_UNSUPPORTED,
                          "decode(): %s images are not supported (JPEG and PNG are)",
                          amdim_image_format_name(info->format));
    }
}

int amdim_codec_encode_jpeg(amdim_codec *c, const uint8_t *px, int w, int h, int channels,
                            int quality, const uint8_t **jpeg, size_t *len)
{
    if ((channels != 1 && channels != 3) || w <= 0 || h <= 0 || quality < 1 || quality > 100)
        return amdim_fail(c->err, sizeof c->err, AMDIM_E_INVALID,
                          "encode(): bad arguments %dx%dx%d quality %d", w, h, channels, quality);
    int samp = channels == 1 ? TJSAMP_GRAY : TJSAMP_420;
    unsigned long cap = tjBufSize(w, h, samp);
    if (cap > c->jpeg_cap) {
        tjFree(c->jpeg_buf);
        c->jpeg_buf = tjAlloc((int)cap);
        c->jpeg_cap = c->jpeg_buf ? cap : 0;
        if (!c->jpeg_buf)
            return amdim_fail(c->err, sizeof c->err, AMDIM_E_NOMEM, "encode(): no memory");
    }
    unsigned long size = c->jpeg_cap;
    if (tjCompress2(c->enc, px, w, 0, h, channels == 1 ? TJPF_GRAY : TJPF_RGB, &c->jpeg_buf, &size,
                    samp, quality, TJFLAG_NOREALLOC) != 0)
        return amdim_fail(c->err, sizeof c->err, AMDIM_E_CORRUPT, "tjCompress2(): %s",
                          tjGetErrorStr2(c->enc));
    *jpeg = c->jpeg_buf;
    *len = size;
    return AMDIM_OK;
}
