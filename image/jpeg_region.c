/* Partial, scaled JPEG decoding with libjpeg's own API (TurboJPEG 2.1 has
 * neither cropping nor row skipping): libjpeg-turbo's scaled IDCT,
 * jpeg_crop_scanline() for the columns, jpeg_skip_scanlines() for the rows
 * above the region, and an abort after the last row needed, so the entropy
 * data below the region is never decoded. */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#include "amdim_image.h"
#include "codec_internal.h"

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int truncated;      /* a "premature end" warning was issued */
    char warning[JMSG_LENGTH_MAX];
} region_error;

static void region_error_exit(j_common_ptr cinfo)
{
    region_error *e = (region_error *)cinfo->err;
    longjmp(e->jump, 1);
}

static void region_emit_message(j_common_ptr cinfo, int level)
{
    region_error *e = (region_error *)cinfo->err;
    if (level >= 0)
        return; /* trace messages */
    if (cinfo->err->msg_code == JWRN_JPEG_EOF)
        e->truncated = 1;
    if (!e->warning[0])
        cinfo->err->format_message(cinfo, e->warning);
}

/* Same guard as TurboJPEG's TJFLAG_LIMITSCANS: progressive files with
 * absurd scan counts are a denial-of-service vector. */
static void region_progress(j_common_ptr cinfo)
{
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->is_decompressor && d->progressive_mode && d->input_scan_number > 500) {
        longjmp(((region_error *)d->err)->jump, 2);
    }
}

static int floor_scaled(int v, int m) { return (int)(((long long)v * m) / 8); }
static int ceil_scaled(int v, int m) { return (int)(((long long)v * m + 7) / 8); }

int amdim_codec_decode_jpeg_region(amdim_codec *c, const uint8_t *data, size_t len, int scale_num,
                                   const int rect[4], amdim_image *out, amdim_jpeg_region *reg)
{
    char *err = amdim_codec_error_buffer(c);
    const size_t errn = AMDIM_CODEC_ERROR_SIZE;
    if (scale_num < 1 || scale_num > 8 || rect[2] <= 0 || rect[3] <= 0 || rect[0] < 0 || rect[1] < 0)
        return amdim_fail(err, errn, AMDIM_E_INVALID, "decode_jpeg_region(): bad scale %d/8 or region", scale_num);
    if (len == 0)
        return amdim_fail(err, errn, AMDIM_E_EMPTY, "decode_jpeg_region(): empty data");
    struct jpeg_decompress_struct cinfo;
    struct jpeg_progress_mgr progress = {.progress_monitor = region_progress};
    region_error jerr;
    memset(&jerr, 0, sizeof jerr);
    cinfo.err = jpeg_std_error(&jerr.pub);
    jerr.pub.error_exit = region_error_exit;
    jerr.pub.emit_message = region_emit_message;
    int st = AMDIM_OK;
    volatile int created = 0;
    int jumped = setjmp(jerr.jump);
    if (jumped) {
        char msg[JMSG_LENGTH_MAX];
        if (jumped == 2)
            snprintf(msg, sizeof msg, "progressive JPEG with more than 500 scans");
        else
            jerr.pub.format_message((j_common_ptr)&cinfo, msg);
        int code = strstr(msg, "Premature end") || strstr(msg, "premature end") ? AMDIM_E_TRUNCATED
                   : strstr(msg, "nsupported")                                 ? AMDIM_E_UNSUPPORTED
                                                                               : AMDIM_E_CORRUPT;
        st = amdim_fail(err, errn, code, "decode_jpeg_region(): %s", msg);
        goto cleanup;
    }
    jpeg_create_decompress(&cinfo);
    created = 1;
    cinfo.progress = &progress;
    jpeg_mem_src(&cinfo, data, (unsigned long)len);
    jpeg_read_header(&cinfo, TRUE);
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        st = amdim_fail(err, errn, AMDIM_E_UNSUPPORTED, "decode_jpeg_region(): CMYK/YCCK JPEG");
        goto cleanup;
    }
    const int W = (int)cinfo.image_width, H = (int)cinfo.image_height;
    if (rect[0] + rect[2] > W || rect[1] + rect[3] > H) {
        st = amdim_fail(err, errn, AMDIM_E_INVALID, "decode_jpeg_region(): region (%d, %d, %dx%d) outside the %dx%d image",
                        rect[0], rect[1], rect[2], rect[3], W, H);
        goto cleanup;
    }
    cinfo.out_color_space = JCS_RGB; /* grey is replicated */
    cinfo.scale_num = (unsigned)scale_num;
    cinfo.scale_denom = 8;
    jpeg_start_decompress(&cinfo);
    const int SW = (int)cinfo.output_width, SH = (int)cinfo.output_height;
    int sx0 = floor_scaled(rect[0], scale_num), sx1 = ceil_scaled(rect[0] + rect[2], scale_num);
    int sy0 = floor_scaled(rect[1], scale_num), sy1 = ceil_scaled(rect[1] + rect[3], scale_num);
    if (sx1 > SW)
        sx1 = SW;
    if (sy1 > SH)
        sy1 = SH;
    /* A cropped decode's edge columns are upsampled (fancy chroma
     * upsampling) as image edges, unlike the full decode's. One iMCU of margin
     * on each side keeps the requested columns identical to the full decode. */
    const int margin = (int)(cinfo.max_h_samp_factor * cinfo.min_DCT_scaled_size);
    int cx0 = sx0 - margin < 0 ? 0 : sx0 - margin, cx1 = sx1 + margin > SW ? SW : sx1 + margin;
    JDIMENSION xoff = (JDIMENSION)cx0, cw = (JDIMENSION)(cx1 - cx0);
    if (cx0 > 0 || cx1 < SW)
        jpeg_crop_scanline(&cinfo, &xoff, &cw); /* widened to iMCU boundaries */
    const int rows = sy1 - sy0;
    if (amdim_image_reserve(out, (int)cw, rows, 3)) {
        st = amdim_fail(err, errn, AMDIM_E_NOMEM, "decode_jpeg_region(): no memory for %ux%d", cw, rows);
        goto cleanup;
    }
    if (sy0 > 0 && jpeg_skip_scanlines(&cinfo, (JDIMENSION)sy0) != (JDIMENSION)sy0) {
        st = amdim_fail(err, errn, AMDIM_E_TRUNCATED, "decode_jpeg_region(): could not skip %d rows", sy0);
        goto cleanup;
    }
    while ((int)cinfo.output_scanline < sy1) {
        JSAMPROW row = out->pixels + (size_t)((int)cinfo.output_scanline - sy0) * cw * 3;
        if (jpeg_read_scanlines(&cinfo, &row, 1) != 1) {
            st = amdim_fail(err, errn, AMDIM_E_TRUNCATED, "decode_jpeg_region(): no data for row %u",
                            cinfo.output_scanline);
            goto cleanup;
        }
    }
    if (jerr.truncated) {
        st = amdim_fail(err, errn, AMDIM_E_TRUNCATED, "decode_jpeg_region(): %s", jerr.warning);
        goto cleanup;
    }
    reg->scale_num = scale_num;
    reg->full_width = W;
    reg->full_height = H;
    reg->scaled_width = SW;
    reg->scaled_height = SH;
    reg->x0 = (int)xoff;
    reg->y0 = sy0;
cleanup:
    if (created)
        jpeg_destroy_decompress(&cinfo); /* also aborts an unfinished decode */
    return st;
}
