#!/usr/bin/env python3
"""How far bf16 storage moves one AMDIM training step from fp32, on the
tiny configs test_cuda_bf16 runs (batch 4, its inputs' distributions, seeds 0..29), with
PyTorch's CPU autocast to bfloat16 as the stand-in for a bf16 trainer (the
convolutions and GEMMs on bf16 operands and outputs, the rest float). It
prints per config the worst over seeds of: each loss term's relative error,
the norm-wise relative error of r1 / r5 / r7 and of the logits, the
per-tensor gradient error beyond a floor of 3e-2 x the largest gradient
norm (relative to the tensor's norm), and the error of the whole gradient
vector. test_cuda_bf16's tolerances are about twice these (see its header):
bf16 noise is large here - without BatchNorm the heads normalise features
whose spread is small beside their rounding - so that test can only catch
a broken bf16 path (a wrong type or layout gives errors of order 1 or NaN),
not measure accuracy; test_cuda_kernels holds each kernel to one bf16 step.

    /usr/bin/python3 tests/ref/bf16_error.py     (Debian's python3-torch)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import amdim_torch as at  # noqa: E402

CONFIGS = [("32 px", 32, 8, 32, 2, 0), ("32 px, BatchNorm", 32, 8, 32, 2, 1), ("64 px", 64, 8, 64, 2, 0),
           ("128 px", 128, 8, 64, 1, 1)]  # name, size, ndf, n_rkhs, depth, use_bn (test_cuda_bf16's runs)


def step(m, inputs, bf16):
    x1, x2, lab, i1, i2, masks = inputs
    m.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        total, terms, outs, logits = at.step_losses(m, x1, x2, lab, i1, i2, masks=masks, tclip=20.0)
    total.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return ({k: float(v) for k, v in terms.items()}, [o.float().detach() for o in outs],
            [lg.float().detach() for lg in logits], grads)


def main():
    for name, size, ndf, rkhs, depth, bn in CONFIGS:
        worst = {}

        def upd(k, v):
            worst[k] = max(worst.get(k, 0.0), v)
        for seed in range(30):
            g = torch.Generator().manual_seed(seed)
            m = at.Model(size, ndf, rkhs, depth, bn, 10, 16)
            at.init_weights(m, g)
            B = 4
            # as tests/testutil.c's test_step_inputs_make: views U(-2, 2), labels 3 -1 7 0
            inputs = (torch.rand(B, 3, size, size, generator=g) * 4 - 2, torch.rand(B, 3, size, size, generator=g) * 4 - 2,
                      torch.tensor([3, -1, 7, 0]), torch.randint(0, 25, (B,), generator=g),
                      torch.randint(0, 25, (B,), generator=g),
                      ((torch.rand(2 * B, rkhs, generator=g) >= 0.2).float(),
                       (torch.rand(2 * B, 16, generator=g) >= 0.2).float()))
            t0, o0, l0, g0 = step(m, inputs, False)
            t1, o1, l1, g1 = step(m, inputs, True)
            for k in t0:
                upd("losses", abs(t1[k] - t0[k]) / max(abs(t0[k]), 1e-3))
            for a, b in zip(o0, o1):
                upd("outputs", float((a - b).norm() / a.norm()))
            for a, b in zip(l0, l1):
                upd("logits", float((a - b).norm() / a.norm()))
            largest = max(float(v.norm()) for v in g0.values())
            for n in g0:
                over = float((g1[n] - g0[n]).norm()) - 3e-2 * largest
                if over > 0:
                    upd("gradient tensors", over / max(float(g0[n].norm()), 1e-30))
            d = sum(float((g1[n] - g0[n]).norm()) ** 2 for n in g0) ** 0.5
            upd("whole gradient", d / sum(float(v.norm()) ** 2 for v in g0.values()) ** 0.5)
        print(f"{name:18s}" + "  ".join(f"{k} {v:.3g}" for k, v in sorted(worst.items())))


if __name__ == "__main__":
    main()
