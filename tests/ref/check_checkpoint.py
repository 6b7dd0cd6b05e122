#!/usr/bin/python3
"""Loads an amdim checkpoint the way a PyTorch user would: reads the
safetensors file with a minimal reader written from the format's spec,
builds the AMDIM model of amdim_torch.py (the authors' parameter names)
plus the authors' g2l_loss.masks_r5 buffer, and calls
load_state_dict(strict=True). Then compares r1 of the images in a .npy file
with the features amdim-embed wrote for them.

    check_checkpoint.py CKPT.safetensors [IMAGES.npy FEATURES.npy]
Exit 0 ok, 1 mismatch, 77 when PyTorch is not installed.
"""
import json
import os
import struct
import sys

try:
    import numpy as np
    import torch
    import torch.nn as nn
except ImportError:
    print("check_checkpoint: python3-torch is not installed; skipping")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import amdim_torch as at  # noqa: E402


def read_safetensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F32": np.float32, "I64": np.int64, "U8": np.uint8}
    tensors = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        arr = np.frombuffer(data[8 + n + a:8 + n + b], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
        tensors[name] = torch.from_numpy(arr.copy())
    return tensors, meta


class G2L(nn.Module):
    """The authors' LossMultiNCE keeps its 5x5 location masks as a parameter."""

    def __init__(self):
        super().__init__()
        m = torch.zeros(25, 1, 5, 5, dtype=torch.uint8)
        for i in range(25):
            m[i, 0, i // 5, i % 5] = 1
        self.masks_r5 = nn.Parameter(m, requires_grad=False)


def main():
    torch.set_default_dtype(torch.float32)
    tensors, meta = read_safetensors(sys.argv[1])
    size, ndf, n_rkhs, depth = (int(meta[k]) for k in ("encoder_size", "ndf", "n_rkhs", "n_depth"))
    model = at.Model(size, ndf, n_rkhs, depth, int(meta["use_bn"]), int(meta["n_classes"]), int(meta["mlp_hidden"]))
    model.g2l_loss = G2L()
    model.load_state_dict(tensors, strict=True)
    print(f"check_checkpoint: load_state_dict(strict=True) accepted {len(tensors)} tensors "
          f"({size} px, ndf {ndf}, n_rkhs {n_rkhs}, depth {depth})")
    if len(sys.argv) == 4:
        images = torch.from_numpy(np.load(sys.argv[2]))      # (N, 3, S, S), normalised
        want = np.load(sys.argv[3])                           # (N, n_rkhs) from amdim-embed
        model.eval()
        with torch.no_grad():
            r1, _, _ = model.encoder.module(images)
        got = r1.flatten(1).numpy()
        err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
        print(f"check_checkpoint: r1 of {images.shape[0]} images vs amdim-embed: relative error {err:.2e}")
        if err > 1e-4:
            sys.exit(1)


if __name__ == "__main__":
    main()
