#!/usr/bin/python3
"""Writes tests/ref/model_ref_<name>.bin.gz: the PyTorch reference for the C
trainer (tests/test_trainer_parity.c).

The AMDIM model is amdim_torch.py (docs/spec.md §4-§7, with
the parameter names of the authors' release), computed here in float64. For
a tiny configuration of each encoder size it stores: every parameter and
buffer, two input batches (normalised, NCHW), labels, the
random 5x5 source locations and the dropout masks, r1/r5/r7 of both views,
each loss term and the total, every parameter gradient, and the losses and
running statistics over 3 Adam steps. The 32 px configuration is also stored
with the Jensen-Shannon and Donsker-Varadhan objectives, and with K = 4
mixture-based representations (docs/mixtures.md: tau 1.5, alpha 0.5, the
probes on the mixture mean; "mix" holds K, tau, alpha, probe features).

Run from the repository root:  /usr/bin/python3 tests/ref/make_model_ref.py
(Debian's python3-torch.)
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from amdim_torch import Model, init_weights, step_losses  # noqa: E402
from reffile import RefWriter  # noqa: E402

torch.set_default_dtype(torch.float64)  # the reference is computed in double


def init_model(model, gen):
    """docs/spec.md §4.6 initialisation (draws from torch, stored in the file anyway)."""
    init_weights(model, gen)
    # Zero second convolutions (and the mixture's zero fc2) would make many
    # gradients exactly zero and the components equal; for a stronger test
    # perturb them (the C side loads these weights).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("conv2.weight"):
                p.uniform_(-0.05, 0.05, generator=gen)
            if name.startswith("mixture.fc2."):
                p.uniform_(-0.2, 0.2, generator=gen)


CONFIGS = [
    # name, size, ndf, n_rkhs, depth, use_bn, batch, classes, hidden
    ("enc32", 32, 8, 32, 2, 0, 4, 5, 16),
    ("enc64", 64, 4, 40, 2, 1, 4, 5, 16),
    ("enc128", 128, 4, 32, 1, 0, 3, 4, 8),
]


MIX4 = (4, 1.5, 0.5, "mixture-mean")  # K, tau, alpha, probe features


def make(cfg, objective, out_dir, mix=None):
    name, size, ndf, n_rkhs, depth, use_bn, B, n_classes, hidden = cfg
    gen = torch.Generator().manual_seed({"enc32": 11, "enc64": 22, "enc128": 33}[name] + {"nce": 0, "jsd": 1, "dv": 2}[objective]
                                        + (100 if mix else 0))
    torch.manual_seed(7)
    model = Model(size, ndf, n_rkhs, depth, use_bn, n_classes, hidden, mix[0] if mix else 1)
    init_model(model, gen)
    model.train()
    tclip = 20.0
    ref = RefWriter()
    ref.add("config", np.array([size, ndf, n_rkhs, depth, use_bn, B, n_classes, hidden,
                                {"nce": 0, "jsd": 1, "dv": 2}[objective]], dtype=np.int32))
    if mix:
        ref.add("mix", np.array([mix[0], mix[1], mix[2], mix[3] == "mixture-mean"], dtype=np.float64))
    mix_args = dict(mix_tau=mix[1], mix_entropy=mix[2], probe_features=mix[3]) if mix else {}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, v in state.items():
        arr = v.numpy()
        ref.add("param/" + k, arr.astype(np.int32) if arr.dtype == np.int64 else arr.astype(np.float32))
    # Work in float64 from the float32-rounded weights the C side will load.
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                v.copy_(v.float().double())
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.8, 0.999), eps=1e-8, weight_decay=1e-5)
    steps = 3
    for step in range(steps):
        # inputs on a 1/8 grid: exact in float32 and small once compressed
        x1 = (torch.randn(B, 3, size, size, generator=gen) * 8).round() / 8
        x2 = (torch.randn(B, 3, size, size, generator=gen) * 8).round() / 8
        labels = torch.randint(0, n_classes, (B,), generator=gen)
        labels[-1] = -1  # one unlabelled sample
        idx1 = torch.randint(0, 25, (B,), generator=gen)
        idx2 = torch.randint(0, 25, (B,), generator=gen)
        masks = ((torch.rand(2 * B, n_rkhs, generator=gen) > 0.2).double(),
                 (torch.rand(2 * B, hidden, generator=gen) > 0.2).double())
        p = f"step{step}/"
        ref.add(p + "x1", x1.numpy().astype(np.float32))
        ref.add(p + "x2", x2.numpy().astype(np.float32))
        ref.add(p + "labels", labels.numpy().astype(np.int32))
        ref.add(p + "src5", torch.cat([idx1, idx2]).numpy().astype(np.int32))
        ref.add(p + "mask_in", masks[0].numpy().astype(np.float32))
        ref.add(p + "mask_hidden", masks[1].numpy().astype(np.float32))
        # warm-up: update k uses lr * (k + 1) / 500
        for g in opt.param_groups:
            g["lr"] = 2e-4 * min(1.0, (step + 1) / 500.0)
        opt.zero_grad()
        total, terms, outs, logits = step_losses(model, x1, x2, labels, idx1, idx2, masks, tclip, objective, **mix_args)
        total.backward()
        for k, v in terms.items():
            ref.add(p + "loss/" + k, np.array([v.item()], dtype=np.float64))
        ref.add(p + "loss/total", np.array([total.item()], dtype=np.float64))
        if step == 0:
            for on, o in zip(["r1_x1", "r5_x1", "r7_x1", "r1_x2", "r5_x2", "r7_x2"], outs):
                ref.add("out/" + on, o.detach().numpy().astype(np.float32))
            ref.add("out/logits_mlp", logits[0].detach().numpy().astype(np.float32))
            ref.add("out/logits_lin", logits[1].detach().numpy().astype(np.float32))
            for k, prm in model.named_parameters():
                g = prm.grad if prm.grad is not None else torch.zeros_like(prm)
                ref.add("grad/" + k, g.numpy().astype(np.float64))
        opt.step()
    # state after the steps: weights and BN running statistics
    for k, v in model.state_dict().items():
        if k.endswith("running_mean") or k.endswith("running_var") or k.endswith("conv1.weight") or k.startswith("mixture."):
            ref.add("final/" + k, v.numpy().astype(np.float64))
    tail = ('' if objective == 'nce' else '_' + objective) + (f'_mix{mix[0]}' if mix else '')
    path = os.path.join(out_dir, f"model_ref_{name}{tail}.bin.gz")
    ref.save(path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(ref.items)} tensors)")


def main():
    out_dir = os.path.dirname(os.path.abspath(__file__))
    for cfg in CONFIGS:
        make(cfg, "nce", out_dir)
    for objective in ("jsd", "dv"):
        make(CONFIGS[0], objective, out_dir)
    make(CONFIGS[0], "nce", out_dir, MIX4)


if __name__ == "__main__":
    main()
