/* Private to the CUDA backend: the filter layout map. The host mirror and
 * the device master weights keep PyTorch's OIHW (out, in, kh, kw) so that
 * pull / push are one copy of the arch blocks; cuDNN convolves NHWC
 * activations with NHWC-format filters, i.e. OHWI ("KRSC": out, kh, kw, in).
 * Only k x k filters with k > 1 need the second copy: for k = 1 both
 * layouts are the same (out, in) matrix. */
#ifndef AMDIM_CUDA_LAYOUT_H
#define AMDIM_CUDA_LAYOUT_H

#include <stddef.h>

#include "amdim_philox.h" /* AMDIM_HD */

/* Element (o, i, y, x) of a square K x K filter with I inputs. */
AMDIM_HD size_t amdim_oihw_index(int o, int i, int y, int x, int I, int K)
{
    return (((size_t)o * I + i) * K + y) * K + x;
}
AMDIM_HD size_t amdim_ohwi_index(int o, int i, int y, int x, int I, int K)
{
    return (((size_t)o * K + y) * K + x) * I + i;
}

#endif
