#!/usr/bin/python3
"""Writes tests/ref/augment_ref.bin.gz, the torchvision/PIL reference for the
augmentation tests (tests/test_augment_parity.c, tests/test_augment_draws.c).

For a set of source images (generated ones, plus photographs from
scikit-image's data set: `apt-get install python3-torchvision python3-skimage`)
it stores, for fixed parameters, the output of every step of AMDIM's
augmentation as torchvision 0.14 + Pillow 9.4 compute it on PIL images:
decode, flip + crop + bicubic resize, each colour-jitter op, grey, the
composed view, the 32 px translate-with-reflect, and the test transforms.
It also stores histograms of torchvision's RandomResizedCrop draws.

Run from the repository root:  /usr/bin/python3 tests/ref/make_augment_ref.py
"""
import io
import math
import os
import sys

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reffile import RefWriter  # noqa: E402

BICUBIC = T.InterpolationMode.BICUBIC
PHOTO_DIR = "/usr/lib/python3/dist-packages/skimage/data"


def f32(x):
    """A Python float that is exactly representable in float32, as torch's
    uniform_() draws are; the C side stores factors as float."""
    return float(np.float32(x))


def synthetic(w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255.0 / max(w - 1, 1), y * 255.0 / max(h - 1, 1),
                     128 + 100 * np.sin(x / 7.0 + y / 11.0)], axis=-1)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def sources():
    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        im = Image.open(os.path.join(PHOTO_DIR, name + ".png")).convert("RGB")
        im.thumbnail((320, 320), Image.BICUBIC)
        out.append((name, im, "RGB"))
    out.append(("gradient", synthetic(131, 97, 1), "RGB"))
    out.append(("small", synthetic(50, 40, 2), "RGB"))      # smaller than the 64 px crop
    out.append(("grey", synthetic(90, 70, 3).convert("L"), "L"))
    out.append(("cmyk", synthetic(80, 60, 4).convert("CMYK"), "CMYK"))
    return out


def jpeg_bytes(im):
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def jitter(img, order, b, c, s, h):
    """ColorJitter.forward with given order and factors."""
    for fn in order:
        if fn == 0:
            img = F.adjust_brightness(img, b)
        elif fn == 1:
            img = F.adjust_contrast(img, c)
        elif fn == 2:
            img = F.adjust_saturation(img, s)
        elif fn == 3:
            img = F.adjust_hue(img, h)
    return img


def translate_with_reflect(img, dx, dy):
    """AMDIM's RandomTranslateWithReflect for a given shift: the image is
    surrounded by mirrored copies of itself (edge pixel not repeated), then
    cropped back to its size shifted by (dx, dy)."""
    xpad, ypad = abs(dx), abs(dy)
    w, h = img.size
    lr = img.transpose(Image.FLIP_LEFT_RIGHT)
    tb = img.transpose(Image.FLIP_TOP_BOTTOM)
    both = img.transpose(Image.ROTATE_180)
    canvas = Image.new("RGB", (w + 2 * xpad, h + 2 * ypad))
    canvas.paste(img, (xpad, ypad))
    canvas.paste(lr, (xpad + w - 1, ypad))
    canvas.paste(lr, (xpad - w + 1, ypad))
    canvas.paste(tb, (xpad, ypad + h - 1))
    canvas.paste(tb, (xpad, ypad - h + 1))
    for ox in (xpad - w + 1, xpad + w - 1):
        for oy in (ypad - h + 1, ypad + h - 1):
            canvas.paste(both, (ox, oy))
    return canvas.crop((xpad - dx, ypad - dy, xpad - dx + w, ypad - dy + h))


def arr(im):
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def main():
    out_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "augment_ref.bin.gz")
    ref = RefWriter()
    ref.add("versions", np.array([int(x) for x in torchvision.__version__.split("a")[0].split(".")[:3]]
                                 + [int(x) for x in Image.__version__.split(".")[:3]], dtype=np.int32))
    torch.manual_seed(1234)
    srcs = sources()
    ref.add("count", np.array([len(srcs)], dtype=np.int32))
    for k, (name, im, mode) in enumerate(srcs):
        p = f"src{k}"
        data = jpeg_bytes(im)
        decoded = Image.open(io.BytesIO(data)).convert("RGB")   # what ImageFolder's loader does
        W, H = decoded.size
        ref.add(p + "/jpeg", np.frombuffer(data, dtype=np.uint8))
        ref.add(p + "/decoded", arr(decoded))

        # flip + crop + bicubic resize
        boxes = [(0, 0, 0, W, H, 64), (1, W // 5, H // 7, max(1, W // 2), max(1, H // 3), 64),
                 (0, W // 3, H // 4, max(1, W // 3), max(1, H // 2), 128), (1, 0, 0, W, H, 32)]
        for _ in range(2):
            i, j, h, w = T.RandomResizedCrop.get_params(decoded, (0.3, 1.0), (0.7, 1.4))
            boxes.append((int(torch.rand(1) < 0.5), j, i, w, h, 64))
        for c, (flip, x, y, w, h, size) in enumerate(boxes):
            im2 = F.hflip(decoded) if flip else decoded
            res = F.resized_crop(im2, y, x, h, w, [size, size], BICUBIC)
            ref.add(f"{p}/crop{c}/params", np.array([flip, x, y, w, h, size], dtype=np.int32))
            ref.add(f"{p}/crop{c}/out", arr(res))

        # test transforms
        for resize, size in ((146, 128), (70, 64)):
            res = F.center_crop(F.resize(decoded, resize, BICUBIC), [size, size])
            ref.add(f"{p}/test{size}", arr(res))

        # each jitter op on one 64 px view
        base = F.resized_crop(decoded, 0, 0, H, W, [64, 64], BICUBIC)
        ref.add(p + "/base", arr(base))
        ops = {"brightness": (F.adjust_brightness, [0.6, 0.8137, 1.0, 1.2291, 1.4]),
               "contrast": (F.adjust_contrast, [0.6, 0.9012, 1.0, 1.1733, 1.4]),
               "saturation": (F.adjust_saturation, [0.6, 0.7521, 1.0, 1.3355, 1.4]),
               "hue": (F.adjust_hue, [-0.2, -0.1, -0.0371, 0.0, 0.0042, 0.0629, 0.1, 0.2])}
        for op, (fn, factors) in ops.items():
            for i, fac in enumerate(factors):
                fac = f32(fac)
                ref.add(f"{p}/{op}{i}/factor", np.array([fac], dtype=np.float32))
                ref.add(f"{p}/{op}{i}/out", arr(fn(base, fac)))
        ref.add(p + "/grey", arr(F.rgb_to_grayscale(base, num_output_channels=3)))

        # composed views: flip, crop, jitter in a drawn order, grey
        for v in range(4):
            flip = int(torch.rand(1) < 0.5)
            i, j, h, w = T.RandomResizedCrop.get_params(decoded, (0.3, 1.0), (0.7, 1.4))
            order = torch.randperm(4).tolist()
            b, c_, s = (f32(torch.empty(1).uniform_(0.6, 1.4).item()) for _ in range(3))
            hue = f32(torch.empty(1).uniform_(-0.1, 0.1).item())
            do_jitter = int(v != 1)
            grey = int(v == 2)
            im2 = F.hflip(decoded) if flip else decoded
            view = F.resized_crop(im2, i, j, h, w, [64, 64], BICUBIC)
            if do_jitter:
                view = jitter(view, order, b, c_, s, hue)
            if grey:
                view = F.rgb_to_grayscale(view, num_output_channels=3)
            ref.add(f"{p}/view{v}/params", np.array([flip, j, i, w, h, do_jitter, *order, b, c_, s, hue, grey],
                                                    dtype=np.float32))
            ref.add(f"{p}/view{v}/out", arr(view))

    # 32 px: translate with reflect, then jitter and grey
    cif = synthetic(32, 32, 9)
    ref.add("cifar/src", arr(cif))
    shifts = [(0, 0), (4, -4), (-3, 2), (1, 4), (-4, -4), (2, 0), (0, -1)]
    for i, (dx, dy) in enumerate(shifts):
        ref.add(f"cifar/shift{i}/params", np.array([dx, dy], dtype=np.int32))
        ref.add(f"cifar/shift{i}/out", arr(translate_with_reflect(cif, dx, dy)))
    for v in range(3):
        flip = v % 2
        dx, dy = shifts[v + 1]
        order = torch.randperm(4).tolist()
        b, c_, s = (f32(torch.empty(1).uniform_(0.6, 1.4).item()) for _ in range(3))
        hue = f32(torch.empty(1).uniform_(-0.2, 0.2).item())
        grey = int(v == 2)
        im2 = F.hflip(cif) if flip else cif
        view = jitter(translate_with_reflect(im2, dx, dy), order, b, c_, s, hue)
        if grey:
            view = F.rgb_to_grayscale(view, num_output_channels=3)
        ref.add(f"cifar/view{v}/params", np.array([flip, dx, dy, *order, b, c_, s, hue, grey], dtype=np.float32))
        ref.add(f"cifar/view{v}/out", arr(view))

    # Distribution of torchvision's RandomResizedCrop draws.
    sizes = [(500, 375), (64, 200), (96, 96)]
    for si, (W, H) in enumerate(sizes):
        img = Image.new("RGB", (W, H))
        n = 20000
        area = np.zeros(20, dtype=np.int32)
        aspect = np.zeros(20, dtype=np.int32)
        xpos = np.zeros(10, dtype=np.int32)
        lo, hi = math.log(0.5), math.log(2.0)
        for _ in range(n):
            i, j, h, w = T.RandomResizedCrop.get_params(img, (0.3, 1.0), (0.7, 1.4))
            area[min(19, int(20 * w * h / (W * H)))] += 1
            aspect[min(19, max(0, int(20 * (math.log(w / h) - lo) / (hi - lo))))] += 1
            if W > w:
                xpos[min(9, int(10 * j / (W - w + 1)))] += 1
        ref.add(f"dist{si}/size", np.array([W, H, n], dtype=np.int32))
        ref.add(f"dist{si}/area", area)
        ref.add(f"dist{si}/aspect", aspect)
        ref.add(f"dist{si}/xpos", xpos)
    ref.save(out_path)
    print(f"wrote {out_path} ({os.path.getsize(out_path)} bytes, {len(ref.items)} tensors)")


if __name__ == "__main__":
    main()
