#!/usr/bin/python3
"""Writes tests/ref/dim_ref_<name>.bin.gz: the PyTorch reference for the C
DIM step (tests/test_dim_parity.c, library trainer/dim/).

The model is tests/ref/dim_ref.py's DIM (docs/dim.md), computed here in
float64: each encoder with the authors' layer structure (docs/dim.md §2.2:
at 32 px conv 4/2/1 x3 with BN and ReLU, flatten, linear + BN + ReLU,
linear z 64) but reduced widths, and a reduced MI width; gamma 0 (no prior
matching) except in the _prior files. The files (CONFIGS below):
  enc32    DIM(L) only (alpha 0, beta 1), jsd, nce and dv, the Adam step
           and the full-size names
  enc32_g  DIM(G) only (alpha 1, beta 0), jsd, nce and dv
  enc28    both terms (alpha 0.5, beta 1), jsd
  enc64    both terms (alpha 0.5, beta 1), nce
  enc32_prior  DIM(L) with prior matching (gamma 0.1), nce, the authors'
           penalty on the last row (D4)
  enc28_prior  both terms with prior matching (gamma 1), jsd, the penalty
           over all rows
with a reduced discriminator (hidden 48, 24) where gamma > 0, and
  eval32   the encoder alone in evaluation mode (EVAL_CONFIGS): the
           classifier taps of docs/dim.md §2.3 (tests/test_dim_classifiers.c)
A step file holds:

  cfg                 int32 [batch, in_ch, size, fc, z, mi_units, w0, w1, w2, w3,
                      disc h1, disc h2, gp_all] (w3 = 0 below 64 px, w2 = 0 at
                      28 px; h1 = h2 = 0 without prior matching)
  ab                  float64 [alpha, beta, gamma]
  prior               float32 (N, 64), the prior samples (gamma > 0)
  x                   float32 (N, in_ch, size, size), NCHW
  w/<name>            float32, every state_dict entry (the step's start);
                      the float64 model runs on exactly these values
  u_local, u_global   float64 (N, N, L) and (N, N, 1), the scores of the
                      terms present (the same for every estimator)
  <est>/local, <est>/global, <est>/encoder      float64 scalars (the terms present)
  <est>/prior, <est>/disc, <est>/gp   float64 scalars (gamma > 0): the
                      generator term, D's loss and its penalty
  <est>/grad/<name>   float64, every parameter gradient: of the encoder loss
                      for the encoder side, of D's loss for D's (D5)
  <est>/after/<name>  float64, BatchNorm running statistics after the step
  adam/hp             float64 [lr, beta1, beta2, eps, step]
  adam/<name>         float64, each parameter after one torch Adam step
                      fed with jsd's gradients (the C test feeds the same)
  names/<size>        uint8, "name shape" lines of the full-size state_dict
                      with both terms and prior matching (mi_units 2048,
                      hidden 1000, 200) at 28, 32 and 64 px

eval32 holds cfg, ab, x and w/<name> as above (the running statistics
moved off 0 / 1, num_batches_tracked 5) and
  eval/conv, eval/fc, eval/z  float64 (N, features): the taps of the
                      encoder in evaluation mode (BN on the running
                      statistics), conv flattened in C, H, W order

Run from the repository root:  /usr/bin/python3 tests/ref/make_dim_ref.py [NAME...]
(Debian's python3-torch; no NAME: every file.)
"""
import contextlib
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dim_ref  # noqa: E402
from reffile import RefWriter  # noqa: E402

torch.set_default_dtype(torch.float64)

FC = 32                # the authors' 1024
MI_UNITS = 40          # the authors' 2048; != z (64), so global_net is an MI1x1ConvNet
ADAM = dict(lr=1e-3, betas=(0.5, 0.999), eps=1e-8)
DISC_HIDDEN = (48, 24)  # the authors' (1000, 200)
# name: size, batch, seed, conv widths (the authors' 64, 128, 256, 512), estimators, alpha, beta, gamma, gp rows
CONFIGS = {"enc32": (32, 6, 30, (8, 16, 32), ("jsd", "nce", "dv"), 0.0, 1.0, 0.0, None),
           "enc32_g": (32, 6, 31, (8, 16, 32), ("jsd", "nce", "dv"), 1.0, 0.0, 0.0, None),
           "enc28": (28, 6, 28, (8, 16), ("jsd",), 0.5, 1.0, 0.0, None),
           "enc64": (64, 4, 64, (4, 8, 16, 32), ("nce",), 0.5, 1.0, 0.0, None),
           "enc32_prior": (32, 6, 32, (8, 16, 32), ("nce",), 0.0, 1.0, 0.1, "last"),
           "enc28_prior": (28, 6, 29, (8, 16), ("jsd",), 0.5, 1.0, 1.0, "all")}
# name: size, batch, seed, conv widths; DIM(L) only (the taps need no MI network, the table has one)
EVAL_CONFIGS = {"eval32": (32, 4, 33, (8, 16, 32))}


@contextlib.contextmanager
def reduced(size, widths):
    """dim_ref has no width parameters: swap in the size's layer list with
    the authors' structure (kernel, stride, padding, taps) and smaller
    widths for the duration of the build."""
    saved = dim_ref.ENCODERS[size]
    layers = [dict(l) for l in saved["layers"]]
    convs = [l for l in layers if l["kind"] == "conv"]
    assert len(convs) == len(widths)
    for l, w in zip(convs, widths):
        l["out"] = w
    layers[-1]["out"] = FC
    dim_ref.ENCODERS[size] = dict(saved, layers=layers)
    try:
        yield
    finally:
        dim_ref.ENCODERS[size] = saved


def names_text(size):
    model = dim_ref.DIM(size, alpha=1.0, beta=1.0, gamma=1.0)
    lines = ["{} {}".format(k, "x".join(str(s) for s in v.shape)) for k, v in model.state_dict().items()]
    return np.frombuffer("\n".join(lines).encode(), dtype=np.uint8)


def f32(t):
    return t.detach().to(torch.float32).numpy()


def make(cname):
    size, batch, seed, widths, estimators, alpha, beta, gamma, gp_rows = CONFIGS[cname]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with reduced(size, widths):
        model = dim_ref.DIM(size, alpha=alpha, beta=beta, gamma=gamma, units=MI_UNITS, disc_hidden=DISC_HIDDEN)
    in_ch = model.encoder.in_ch
    model.train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # BN / LN affine parameters start at 1 and 0; move them so that
            # their gradients are tested away from the identity
            if p.dim() == 1 and (".bn." in name or "block_nonlinear.1." in name or "block_ln" in name):
                if name.endswith("weight"):
                    p.uniform_(0.5, 1.5, generator=gen)
                else:
                    p.uniform_(-0.2, 0.2, generator=gen)
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.to(torch.float32).to(torch.float64))  # the C side runs on these floats
    x = torch.randn(batch, in_ch, size, size, generator=gen).to(torch.float32).to(torch.float64)
    prior = dim_ref.sample_prior(batch, generator=gen, dtype=torch.float64).to(torch.float32).to(torch.float64)

    w = RefWriter()
    disc = list(DISC_HIDDEN) + [int(gp_rows == "all")] if gamma > 0 else [0, 0, 0]
    w.add("cfg", np.array([batch, in_ch, size, FC, dim_ref.Z_UNITS, MI_UNITS, *widths] + [0] * (4 - len(widths)) + disc,
                          dtype=np.int32))
    w.add("ab", np.array([alpha, beta, gamma]))
    if gamma > 0:
        w.add("prior", f32(prior))
    w.add("x", f32(x))
    for name, t in model.state_dict().items():
        w.add("w/" + name, f32(t.to(torch.float64)))
    params = dict(model.named_parameters())
    bufs = [k for k in model.state_dict() if k not in params]
    for est in estimators:
        m = copy.deepcopy(model)
        out = m.losses(x, est, prior=prior, gp_rows=gp_rows or "last")
        if est == estimators[0]:
            for term in ("u_local", "u_global"):
                if term in out:
                    w.add(term, out[term].detach().numpy())
        mp = dict(m.named_parameters())
        enc_side = set(id(p) for p in m.encoder_side())
        grads = torch.autograd.grad(out["encoder"], [p for p in mp.values() if id(p) in enc_side])
        if gamma > 0:  # D's tensors: the gradient of D's loss (D5); they come last in the state_dict
            grads = grads + torch.autograd.grad(out["discriminator"], list(m.disc.parameters()))
            for term, key in (("prior", "prior_gen"), ("disc", "discriminator"), ("gp", "d_gp")):
                w.add(est + "/" + term, np.float64(out[key].item()))
        for term in ("local", "global"):
            if term in out:
                w.add(est + "/" + term, np.float64(out[term].item()))
        w.add(est + "/encoder", np.float64(out["encoder"].item()))
        for (name, _), g in zip(mp.items(), grads):
            w.add("{}/grad/{}".format(est, name), g.numpy())
        sd = m.state_dict()
        for name in bufs:
            if sd[name].is_floating_point():
                w.add("{}/after/{}".format(est, name), sd[name].numpy())
        if est == "jsd" and cname == "enc32":
            plist = list(mp.values())
            for p, g in zip(plist, grads):
                p.grad = g.to(torch.float32).to(torch.float64)  # the C test feeds float32 gradients
            opt = torch.optim.Adam(plist, **ADAM)
            opt.step()
            w.add("adam/hp", np.array([ADAM["lr"], ADAM["betas"][0], ADAM["betas"][1], ADAM["eps"], 1.0]))
            for name, p in mp.items():
                w.add("adam/" + name, p.detach().numpy())
        print("{} {}: encoder loss {:.10f}".format(cname, est, out["encoder"].item()))
    if cname == "enc32":
        for s in (28, 32, 64):
            w.add("names/{}".format(s), names_text(s))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dim_ref_{}.bin.gz".format(cname))
    w.save(path)
    print("wrote", path, os.path.getsize(path), "bytes")


def make_eval(cname):
    """The encoder's taps in evaluation mode, with running statistics away
    from their initial 0 / 1 so that evaluation mode is what is tested."""
    size, batch, seed, widths = EVAL_CONFIGS[cname]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with reduced(size, widths):
        model = dim_ref.DIM(size, alpha=0.0, beta=1.0, gamma=0.0, units=MI_UNITS)
    in_ch = model.encoder.in_ch
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_mean") or (name.endswith("bias") and ".bn." in name):
                t.uniform_(-0.5, 0.5, generator=gen)
            elif name.endswith("running_var") or (name.endswith("weight") and ".bn." in name):
                t.uniform_(0.5, 2.0, generator=gen)
            elif name.endswith("num_batches_tracked"):
                t.fill_(5)
            if t.is_floating_point():
                t.copy_(t.to(torch.float32).to(torch.float64))
    x = torch.randn(batch, in_ch, size, size, generator=gen).to(torch.float32).to(torch.float64)
    w = RefWriter()
    w.add("cfg", np.array([batch, in_ch, size, FC, dim_ref.Z_UNITS, MI_UNITS, *widths] + [0] * (4 - len(widths)) +
                          [0, 0, 0], dtype=np.int32))
    w.add("ab", np.array([0.0, 1.0, 0.0]))
    w.add("x", f32(x))
    for name, t in model.state_dict().items():
        w.add("w/" + name, f32(t.to(torch.float64)))
    model.eval()
    with torch.no_grad():
        taps, _ = model.encoder(x)
    for tap in ("conv", "fc", "z"):
        w.add("eval/" + tap, taps[tap].reshape(batch, -1).numpy())
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dim_ref_{}.bin.gz".format(cname))
    w.save(path)
    print("wrote", path, os.path.getsize(path), "bytes")


def main():
    names = sys.argv[1:] or list(CONFIGS) + list(EVAL_CONFIGS)
    for cname in names:
        if cname in EVAL_CONFIGS:
            make_eval(cname)
        elif cname in CONFIGS:
            make(cname)
        else:
            sys.exit("make_dim_ref.py: no file {} (have {})".format(cname, ", ".join(list(CONFIGS) + list(EVAL_CONFIGS))))


if __name__ == "__main__":
    main()
