#!/usr/bin/env python3
"""AMDIM trained in PyTorch on amdim's loader: the model and objective of
tests/ref/amdim_torch.py (the PyTorch model the C trainer is checked
against), the two views from amdim.Loader, Adam as the authors train.

    examples/torch_amdim.py DATA.lmdb [--batch 100] [--workers 1] [--epochs 1]
        [--steps N] [--ndf 32] [--n-rkhs 256] [--depth 1] [--device cpu|cuda]
        [--seed 7] [--save CKPT.pt] [--resume CKPT.pt]

Prints one line per 20 steps and, at the end, pairs/s and the fraction of
the time spent waiting for the loader. --save writes the model, optimiser
and loader state; --resume continues that run with exactly the next batch.
(Install the package first: docs/python.md; or run from a build with
PYTHONPATH=python AMDIM_LIBRARY=build/libamdim_loader.so AMDIM_LOAD=build/amdim-load.)"""
import argparse
import os
import sys
import time

import torch

import amdim

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
import amdim_torch as at  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("data")
ap.add_argument("--batch", type=int, default=100)
ap.add_argument("--workers", type=int, default=1)
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--steps", type=int, help="stop after N steps")
ap.add_argument("--ndf", type=int, default=32)
ap.add_argument("--n-rkhs", type=int, default=256)
ap.add_argument("--depth", type=int, default=1)
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
ap.add_argument("--seed", type=int, default=7)
ap.add_argument("--save")
ap.add_argument("--resume")
a = ap.parse_args()
dev = torch.device(a.device)
ckpt = torch.load(a.resume) if a.resume else None

loader = amdim.Loader(a.data, batch=a.batch, workers=a.workers, epochs=a.epochs, seed=a.seed,
                      device=dev if dev.type == "cuda" else None, state=ckpt and ckpt["loader"])
torch.manual_seed(a.seed)
model = at.Model(loader.size, a.ndf, a.n_rkhs, a.depth, 0, max(loader.classes, 1), 1024)
at.init_weights(model)
model = model.to(dev).train()
opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.8, 0.999), weight_decay=1e-5)
if ckpt:
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
print("# %r\n# torch %s on %s, %d torch threads" % (loader, torch.__version__, dev, torch.get_num_threads()))

steps, pairs, t0 = 0, 0, time.perf_counter()
for b in loader:                                   # the loop: views in, one AMDIM step
    x1 = amdim.normalize(b.view1, device=dev)      # float NCHW, the preset's mean / std
    x2 = amdim.normalize(b.view2, device=dev)
    idx = torch.randint(0, 25, (2, len(b)), device=dev)
    loss = at.step_losses(model, x1, x2, b.labels.to(dev), idx[0], idx[1])[0]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    steps, pairs = steps + 1, pairs + len(b)
    if steps % 20 == 0:
        print("epoch %d batch %4d  loss %.4f  %.1f pairs/s" % (b.epoch, b.index, loss.item(),
                                                               pairs / (time.perf_counter() - t0)))
    if a.steps and steps >= a.steps:
        break
dt = time.perf_counter() - t0
wait = loader.wait_seconds()
if a.save:
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "loader": loader.state_dict()}, a.save)
loader.close()
print("steps %d, %d pairs in %.1f s: %.1f pairs/s, %.1f%% of the time waiting for the loader, last loss %.4f"
      % (steps, pairs, dt, pairs / dt, 100 * wait / dt, loss.item() if steps else float("nan")))
