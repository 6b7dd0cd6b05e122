#!/usr/bin/env python3
"""Reference resizes with Pillow's BILINEAR filter (torchvision's Resize
default, the Deep InfoMax STL-10 transform: docs/dim.md §8) for
tests/test_resize_bilinear.c: random images of several sizes, each resized
by Image.resize(size, Image.BILINEAR, box) - down, up, mixed, fractional
boxes, the copy case, one and three channels.

    /usr/bin/python3 tests/ref/make_resize_ref.py tests/ref/resize_bilinear_ref.bin.gz
"""
import sys

import numpy as np
from PIL import Image

from reffile import RefWriter

# (width, height, channels, box or None, out width, out height)
CASES = [
    (96, 96, 3, None, 64, 64),          # STL-10 for DIM: 96 -> 64
    (40, 30, 3, None, 17, 23),          # down in x, down in y
    (13, 11, 3, None, 50, 40),          # up
    (40, 30, 3, None, 64, 9),           # up in x, down in y
    (37, 29, 3, (2.5, 3.25, 30.5, 27.0), 20, 16),  # a fractional box
    (32, 32, 3, None, 32, 32),          # the copy Pillow makes at equal size
    (33, 45, 1, None, 20, 60),          # one channel ("L")
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "resize_bilinear_ref.bin.gz"
    rng = np.random.default_rng(20261208)
    w = RefWriter()
    w.add("cases", np.array(len(CASES), dtype=np.int32))
    for k, (sw, sh, c, box, dw, dh) in enumerate(CASES):
        shape = (sh, sw, c) if c > 1 else (sh, sw)
        src = rng.integers(0, 256, size=shape, dtype=np.uint8)
        img = Image.fromarray(src, "RGB" if c == 3 else "L")
        b = box if box is not None else (0.0, 0.0, float(sw), float(sh))
        dst = np.asarray(img.resize((dw, dh), Image.BILINEAR, box=b), dtype=np.uint8)
        w.add(f"case{k}.src", src.reshape(sh, sw, c))
        w.add(f"case{k}.box", np.array(b, dtype=np.float64))
        w.add(f"case{k}.dst", dst.reshape(dh, dw, c))
    w.save(out)
    print(f"make_resize_ref: {len(CASES)} cases -> {out} (Pillow {Image.__version__})")


if __name__ == "__main__":
    main()
