#!/usr/bin/env python3
"""amdim.normalize: uint8 (B, H, W, 3) -> float32 (B, 3, H, W), contiguous,
(x / 255 - mean) / std with each preset's mean and std (augment/draw.c, the
preset of the view size by default), within float rounding of the formula;
channels_last on request; bad input refused."""
import torch

from common import amdim, check, finish

g = torch.Generator().manual_seed(0)
for preset, size in (("cifar", 32), ("stl10", 64), ("imagenet", 128)):
    x = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8, generator=g)
    mean, std = amdim.mean_std(preset)
    ref = (x.permute(0, 3, 1, 2).double() / 255 - torch.tensor(mean).double().view(1, 3, 1, 1)) / \
        torch.tensor(std).double().view(1, 3, 1, 1)
    y = amdim.normalize(x)
    check(y.shape == (3, 3, size, size) and y.dtype == torch.float32 and y.is_contiguous(),
          "%s: float32 NCHW, contiguous" % preset)
    err = (y.double() - ref).abs().max().item()
    check(err < 1e-5, "%s (the default for %d px): within %.1e of (x / 255 - mean) / std" % (preset, size, err))
    z = amdim.normalize(x, preset=preset, memory_format=torch.channels_last)
    check(z.is_contiguous(memory_format=torch.channels_last) and torch.equal(z, y), "%s: channels_last on request" % preset)
check(max(abs(a - b) for a, b in zip(amdim.mean_std("imagenet")[0] + amdim.mean_std("imagenet")[1],
                                       (0.485, 0.456, 0.406, 0.229, 0.224, 0.225))) < 1e-7,
      "imagenet's mean and std are the authors' (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)")
# Deep InfoMax's presets map 0..255 onto [-1, 1] (mean and std 0.5)
for preset in ("dim28", "dim32", "dim64", "dim-stl10"):
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2, 1).expand(1, 1, 2, 3).contiguous()
    y = amdim.normalize(x, preset=preset)
    check(abs(y.min().item() + 1) < 1e-6 and abs(y.max().item() - 1) < 1e-6, "%s: 0 -> -1, 255 -> 1" % preset)
for bad in (torch.zeros(2, 32, 32, 3), torch.zeros(2, 3, 32, 32, dtype=torch.uint8)):
    try:
        amdim.normalize(bad)
        check(False, "refuses %s %s" % (bad.dtype, tuple(bad.shape)))
    except ValueError:
        check(True, "refuses %s %s" % (bad.dtype, tuple(bad.shape)))
try:
    amdim.normalize(torch.zeros(1, 48, 48, 3, dtype=torch.uint8))
    check(False, "48 px views need preset=")
except ValueError as e:
    check("preset" in str(e), "48 px views need preset=: %s" % e)
finish()
