/* Private to the image module: the codec's error buffer, shared by the
 * TurboJPEG/libpng code (codec.c) and the libjpeg region decoder. */
#ifndef AMDIM_CODEC_INTERNAL_H
#define AMDIM_CODEC_INTERNAL_H

#include "amdim_image.h"

#define AMDIM_CODEC_ERROR_SIZE 256

char *amdim_codec_error_buffer(amdim_codec *c);

#endif
