#!/usr/bin/env python3
"""Pairs/s through amdim.Loader's Python iterator beside the C consumer
(amdim-load | amdim-peek) on the same data, workers, batch and seed, and
beside torchvision's DataLoader making the same two views (the authors'
ImageNet transform: shared flip; per view RandomResizedCrop(128, (0.3, 1),
(0.7, 1.4), bicubic), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8,
RandomGrayscale(0.25); uint8 out, as ours) from the same JPEG files with
the same number of worker processes.

    bench/bench_python.py [--build BUILD] [--dir JPEG_TREE] [--images N]
                          [--workers 1[,2]] [--batch B] [--epochs E]
                          [--rounds R] [--tv-seconds S] [--csv]

Without --dir a synthetic ImageNet-like tree of N JPEGs (500x375, quality
90) is made with BUILD/bench/make_synth_corpus and packed with amdim-pack.
Each rate is pairs delivered / seconds from attach (or the DataLoader's
first request) to the last batch; amdim-peek and the Python loader run in
alternating rounds and their medians are compared. "python" only touches
the batch (labels, records, the two views as tensors); "python+digest"
also folds every byte into amdim-peek's FNV digest (amdim_delivery_add),
the work amdim-peek does per batch, so it is the like-for-like consumer.
Run with the package importable (PYTHONPATH=python AMDIM_LIBRARY=... or
installed) and Debian's python3 (python3-torch, python3-torchvision)."""
import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            model = m.group(1).strip() if m else model
    except OSError:
        pass
    return "%s, %d cores, Linux %s, Python %s, torch %s" % (model, os.cpu_count(), platform.release(),
                                                            platform.python_version(), torch.__version__)


def run_peek(build, data, workers, batch, epochs, seed):
    load = subprocess.Popen([os.path.join(build, "amdim-load"), "--workers", str(workers), "--batch", str(batch),
                             "--epochs", str(epochs), "--seed", str(seed), data], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    peek = subprocess.run([os.path.join(build, "amdim-peek")], stdin=load.stdout, capture_output=True, text=True)
    load.stdout.close()
    load.wait()
    kv = dict(line.split(": ", 1) for line in peek.stdout.splitlines() if ": " in line)
    if kv.get("missing") != "0" or kv.get("duplicates") != "0":
        sys.exit("bench_python: amdim-peek: %s %s" % (peek.stdout, peek.stderr))
    return float(kv["pairs_per_s"]), kv["digest"]


def run_python(data, workers, batch, epochs, seed, digest):
    import amdim
    ld = amdim.Loader(data, batch=batch, workers=workers, epochs=epochs, seed=seed, verify=digest, log=False)
    t0, pairs = time.perf_counter(), 0
    for b in ld:
        pairs += b.view1.shape[0]  # the views and labels are tensors already; nothing is copied
    dt = time.perf_counter() - t0
    d = "%016x" % ld.delivery()["digest"] if digest else None
    ld.close()
    return pairs / dt, d


class TwoViews:
    """The torchvision dataset: the JPEG files, two views each."""

    def __init__(self, files, size):
        self.files, self.size = files, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        from torchvision import transforms as T
        if not hasattr(self, "view"):
            self.view = T.Compose([
                T.RandomResizedCrop(self.size, scale=(0.3, 1.0), ratio=(0.7, 1.4),
                                    interpolation=T.InterpolationMode.BICUBIC),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.25),
                T.PILToTensor(),
            ])
            self.flip = T.RandomHorizontalFlip(p=0.5)
        with open(self.files[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        img = self.flip(img)
        return self.view(img), self.view(img), i % 10


def worker_init(_):
    torch.set_num_threads(1)


def run_torchvision(files, workers, batch, seconds, size=128):
    ds = TwoViews(files, size)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                     worker_init_fn=worker_init, prefetch_factor=2)
    t0, pairs = time.perf_counter(), 0
    for v1, v2, _ in dl:
        pairs += v1.shape[0]
        if time.perf_counter() - t0 >= seconds:
            break
    return pairs / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description="amdim.Loader vs amdim-peek vs torchvision's DataLoader")
    ap.add_argument("--build", default=os.path.join(REPO, "build"), help="the CMake build (amdim-load, amdim-peek)")
    ap.add_argument("--dir", help="a JPEG tree (DIR/<class>/<image>.jpg); default: a synthetic one")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", default="1")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tv-seconds", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--csv", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-python-")
    try:
        run(a, tmp)
    finally:
        shutil.rmtree(tmp, True)


def run(a, tmp):
    src = a.dir
    if not src:
        src = os.path.join(tmp, "jpeg")
        subprocess.run([os.path.join(a.build, "bench", "make_synth_corpus"), src, str(a.images)], check=True,
                       stdout=subprocess.DEVNULL)
    files = sorted(os.path.join(dp, n) for dp, _, ns in os.walk(src) for n in ns
                   if n.lower().endswith((".jpg", ".jpeg")))
    data = os.path.join(tmp, "data.lmdb")
    subprocess.run([os.path.join(a.build, "amdim-pack"), "-q", "imagefolder", src, data], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import torchvision
        tv = "torchvision %s" % torchvision.__version__
    except ImportError:
        tv = None
    print("# %s" % machine())
    print("# %d JPEGs from %s, batch %d, %d epochs, seed %d, %d alternating rounds (medians); %s"
          % (len(files), a.dir or "make_synth_corpus (500x375, q90)", a.batch, a.epochs, a.seed, a.rounds,
             tv or "torchvision NOT importable: its column is left out (apt-get install python3-torchvision)"))
    cols = ("workers", "amdim-peek", "python", "python+digest", "py/peek", "py+dig/peek", "torchvision",
            "ours/tv per core")
    print(",".join(cols) if a.csv else "%-7s %11s %10s %14s %8s %12s %12s %17s" % cols)
    for w in [int(x) for x in a.workers.split(",")]:
        peek_r, py_r, pyd_r = [], [], []
        for _ in range(a.rounds):
            r, dpeek = run_peek(a.build, data, w, a.batch, a.epochs, a.seed)
            peek_r.append(r)
            py_r.append(run_python(data, w, a.batch, a.epochs, a.seed, False)[0])
            r, dpy = run_python(data, w, a.batch, a.epochs, a.seed, True)
            pyd_r.append(r)
            if dpy != dpeek:
                sys.exit("bench_python: the Python loader's digest %s differs from amdim-peek's %s" % (dpy, dpeek))
        peek, py, pyd = (statistics.median(x) for x in (peek_r, py_r, pyd_r))
        tvr = run_torchvision(files, w, a.batch, a.tv_seconds) if tv else None
        row = (w, peek, py, pyd, py / peek, pyd / peek, tvr, py / tvr if tvr else None)
        if a.csv:
            print(",".join("" if v is None else ("%.3f" % v if isinstance(v, float) else str(v)) for v in row))
        else:
            print("%-7d %11.1f %10.1f %14.1f %7.3fx %11.3fx %12s %17s" % (
                w, peek, py, pyd, py / peek, pyd / peek, "-" if tvr is None else "%.1f" % tvr,
                "-" if tvr is None else "%.2fx" % (py / tvr)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
