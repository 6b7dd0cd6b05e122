"""amdim.normalize: uint8 views (B, H, W, 3) -> float NCHW with the AMDIM
mean and std, as the trainer computes it (x * scale - shift with
scale = 1 / (255 std), shift = mean / std; trainer/model/elementwise_internal.h)
in one elementwise kernel (torch.addcmul)."""
import torch

from . import _lib

_PRESETS = ("imagenet", "stl10", "cifar")
_cache = {}


def preset_for_size(size):
    """The preset whose views are size x size: 128 imagenet, 64 stl10, 32 cifar."""
    for name in _PRESETS:
        if _lib.preset_norm(name)[0] == size:
            return name
    raise ValueError("amdim: no preset makes %d px views (imagenet 128, stl10 64, cifar 32): pass preset=" % size)


def mean_std(preset):
    """(mean, std) of a preset on the 0..1 scale (augment/draw.c)."""
    _, mean, std = _lib.preset_norm(preset)
    return mean, std


def _coefficients(preset, device):
    key = (preset, str(device))
    c = _cache.get(key)
    if c is None:
        mean, std = mean_std(preset)
        m = torch.tensor(mean, dtype=torch.float32)
        s = torch.tensor(std, dtype=torch.float32)
        scale = (1.0 / (255.0 * s)).view(1, 3, 1, 1).to(device)
        shift = (-(m / s)).view(1, 3, 1, 1).to(device)
        c = _cache[key] = (scale, shift)
    return c


def normalize(x, device=None, preset=None, out=None, memory_format=torch.contiguous_format):
    """x: torch.uint8 (B, H, W, 3) (e.g. Batch.view1). Returns float32
    (B, 3, H, W) on `device` (default: x's), (x / 255 - mean) / std per
    channel with the preset's mean and std (default: the preset of x's size).
    A CPU x is copied to the device first (asynchronously when x is pinned,
    as device="cuda" loaders' views are not: they are already there)."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[3] != 3:
        raise ValueError("amdim.normalize: expected torch.uint8 (B, H, W, 3), got %s %s" % (x.dtype, tuple(x.shape)))
    dev = torch.device(device) if device is not None else x.device
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if x.device != dev:
        x = x.to(dev, non_blocking=True)
    scale, shift = _coefficients(preset or preset_for_size(x.shape[1]), dev)
    B, H, W, _ = x.shape
    if out is None:
        out = torch.empty((B, 3, H, W), dtype=torch.float32, device=dev, memory_format=memory_format)
    return torch.addcmul(shift, x.permute(0, 3, 1, 2), scale, out=out)
