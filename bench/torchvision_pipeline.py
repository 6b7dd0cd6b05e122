#!/usr/bin/env python3
"""The torchvision/PIL AMDIM two-view pipeline on a JPEG tree, the peer that
bench_fastpath compares against: the AMDIM paper code's ImageNet transform
(docs/spec.md §3: shared flip; per view RandomResizedCrop(128, (0.3, 1), (0.7, 1.4)),
ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, RandomGrayscale(0.25), ToTensor)
applied to files already in memory, one process per --procs, no DataLoader
overhead. Prints one line: "torchvision <procs> <pairs/s>".

    torchvision_pipeline.py DIR [--procs N] [--seconds S] [--size 128]
"""
import argparse
import io
import multiprocessing as mp
import os
import random
import sys
import time


def files_under(root):
    out = []
    for d, _, names in sorted(os.walk(root)):
        for n in sorted(names):
            if n.lower().endswith((".jpg", ".jpeg")):
                with open(os.path.join(d, n), "rb") as f:
                    out.append(f.read())
    return out


def worker(args):
    blobs, size, seconds, seed = args
    import torch
    from PIL import Image
    from torchvision import transforms as T
    torch.set_num_threads(1)
    random.seed(seed)
    torch.manual_seed(seed)
    view = T.Compose([
        T.RandomResizedCrop(size, scale=(0.3, 1.0), ratio=(0.7, 1.4), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.25),
        T.ToTensor(),
    ])
    flip = T.RandomHorizontalFlip(p=0.5)
    def pair(b):
        img = flip(Image.open(io.BytesIO(b)).convert("RGB"))
        return view(img), view(img)
    for b in blobs[:20]:  # warm-up
        pair(b)
    done, t0 = 0, time.perf_counter()
    while True:
        for b in blobs:
            pair(b)
            done += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return done, dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--limit", type=int, default=400)
    a = ap.parse_args()
    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("torchvision unavailable (install python3-torchvision)", file=sys.stderr)
        sys.exit(77)
    blobs = files_under(a.dir)[: a.limit]
    if not blobs:
        sys.exit("no JPEGs under " + a.dir)
    with mp.Pool(a.procs) as pool:
        res = pool.map(worker, [(blobs, a.size, a.seconds, i) for i in range(a.procs)])
    rate = sum(n / dt for n, dt in res)
    print(f"torchvision {a.procs} {rate:.1f}")


if __name__ == "__main__":
    main()
