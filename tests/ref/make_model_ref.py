#!/usr/bin/python3
"""Writes tests/ref/model_ref_<name>.bin.gz: the PyTorch reference for the C
trainer (tests/test_trainer_parity.c).

The AMDIM model is built here from ../shared/SPEC.md sections 3-5, with the
parameter names of the authors' release (encoder.module.layer_list.0.conv.weight,
...). For a tiny configuration of each encoder size it stores: every
parameter and buffer, two input batches (normalised, NCHW), labels, the
random 5x5 source locations and the dropout masks, r1/r5/r7 of both views,
each loss term and the total, every parameter gradient, and the losses and
running statistics over 3 Adam steps. The 32 px configuration is also stored
with the Jensen-Shannon and Donsker-Varadhan objectives.

Run from the repository root:  /usr/bin/python3 tests/ref/make_model_ref.py
(Debian's python3-torch.)
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reffile import RefWriter  # noqa: E402

torch.set_default_dtype(torch.float64)  # the reference is computed in double


class MaybeBN2d(nn.Module):
    def __init__(self, n, use_bn):
        super().__init__()
        self.bn = nn.BatchNorm2d(n)
        self.use_bn = use_bn

    def forward(self, x):
        return self.bn(x) if self.use_bn else x


class Stem(nn.Module):
    """conv(k, s) + bias + ReLU; the 128 px stem reflect-pads by 2 first."""

    def __init__(self, cin, cout, k, s, pad):
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv2d(cin, cout, k, s, 0, bias=True)

    def forward(self, x):
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="reflect")
        return F.relu(self.conv(x))


class Res(nn.Module):
    """h = conv_k,s(x) -> [BN] -> ReLU -> conv1x1; shortcut = avgpool(k, s),
    zero-padded in channels; output h + shortcut, no ReLU after the sum."""

    def __init__(self, cin, cout, k, s, use_bn):
        super().__init__()
        self.cin, self.cout, self.k, self.s = cin, cout, k, s
        self.conv1 = nn.Conv2d(cin, cout, k, s, 0, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 1, 1, 0, bias=False)
        self.bn1 = MaybeBN2d(cout, use_bn)

    def forward(self, x):
        h = self.conv2(F.relu(self.bn1(self.conv1(x))))
        sc = F.avg_pool2d(x, self.k, self.s)
        if self.cout > self.cin:
            sc = F.pad(sc, (0, 0, 0, 0, 0, self.cout - self.cin))
        return h + sc


class Block(nn.Module):
    def __init__(self, cin, cout, k, s, depth, use_bn):
        super().__init__()
        units = [Res(cin, cout, k, s, use_bn)] + [Res(cout, cout, 1, 1, use_bn) for _ in range(depth - 1)]
        self.layer_list = nn.Sequential(*units)

    def forward(self, x):
        return self.layer_list(x)


class Head(nn.Module):
    """BN(conv1x1(ReLU([BN](conv1x1(x)))) + shortcut1x1_with_bias(x))"""

    def __init__(self, cin, n_rkhs, use_bn):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, n_rkhs, 1, bias=False)
        self.bn1 = MaybeBN2d(n_rkhs, use_bn)
        self.conv2 = nn.Conv2d(n_rkhs, n_rkhs, 1, bias=False)
        self.bn_out = MaybeBN2d(n_rkhs, True)
        self.shortcut = nn.Conv2d(cin, n_rkhs, 1, bias=True)

    def forward(self, x):
        return self.bn_out(self.conv2(F.relu(self.bn1(self.conv1(x)))) + self.shortcut(x))


class Encoder(nn.Module):
    def __init__(self, size, ndf, n_rkhs, depth, use_bn):
        super().__init__()
        m = 4 if size == 32 else 8
        if size == 32:
            layers = [Stem(3, ndf, 3, 1, 0), Res(ndf, ndf, 1, 1, use_bn)]
        elif size == 64:
            layers = [Stem(3, ndf, 3, 1, 0)]
        else:
            layers = [Stem(3, ndf, 5, 2, 2), Stem(ndf, ndf, 3, 1, 0)]
        if size == 32:
            layers += [Block(ndf, 2 * ndf, 4, 2, depth, use_bn), Block(2 * ndf, 4 * ndf, 2, 2, depth, use_bn)]
        else:
            layers += [Block(ndf, 2 * ndf, 4, 2, depth, use_bn), Block(2 * ndf, 4 * ndf, 4, 2, depth, use_bn),
                       Block(4 * ndf, 8 * ndf, 2, 2, depth, use_bn)]
        c = m * ndf
        layers += [MaybeBN2d(c, use_bn),                       # r7 source
                   Block(c, c, 3, 1, depth, use_bn),           # r5 source
                   Block(c, c, 3, 1, depth, use_bn),
                   Res(c, n_rkhs, 3, 1, use_bn),
                   MaybeBN2d(n_rkhs, True)]                    # r1
        self.layer_list = nn.ModuleList(layers)
        self.i7 = len(layers) - 5
        self.i5 = len(layers) - 4
        self.rkhs_block_5 = Head(c, n_rkhs, use_bn)
        self.rkhs_block_7 = Head(c, n_rkhs, use_bn)

    def forward(self, x):
        acts = []
        for layer in self.layer_list:
            x = layer(x)
            acts.append(x)
        return acts[-1], self.rkhs_block_5(acts[self.i5]), self.rkhs_block_7(acts[self.i7])


class Classifier(nn.Module):
    """The online probes; dropout takes explicit masks so C can replay them."""

    def __init__(self, n_in, n_classes, hidden):
        super().__init__()
        if hidden:
            self.block_forward = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(n_in, hidden, bias=False),
                                               nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.2),
                                               nn.Linear(hidden, n_classes, bias=True))
        else:
            self.block_forward = nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(n_in, n_classes, bias=True))
        self.hidden = hidden

    def forward(self, x, m_in=None, m_hid=None):
        b = self.block_forward
        if not self.hidden:
            return b[2](x)
        h = x * m_in / 0.8
        h = F.relu(b[3](b[2](h)))
        h = h * m_hid / 0.8
        return b[6](h)


class Evaluator(nn.Module):
    def __init__(self, n_rkhs, n_classes, hidden):
        super().__init__()
        self.block_glb_mlp = Classifier(n_rkhs, n_classes, hidden)
        self.block_glb_lin = Classifier(n_rkhs, n_classes, None)


class EncoderHolder(nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.module = enc


class Model(nn.Module):
    def __init__(self, size, ndf, n_rkhs, depth, use_bn, n_classes, hidden):
        super().__init__()
        self.encoder = EncoderHolder(Encoder(size, ndf, n_rkhs, depth, use_bn))
        self.evaluator = Evaluator(n_rkhs, n_classes, hidden)


def tanh_clip(x, c):
    return c * torch.tanh(x / c)


def scores(src, tgt, tclip):
    """src (B, C), tgt (B, C, H, W) -> clipped scores (B, B, L) and reg."""
    B, C = src.shape
    t = tgt.permute(1, 0, 2, 3).reshape(C, -1)
    s = (src @ t).reshape(B, B, -1) / math.sqrt(C)
    reg = 0.05 * (s ** 2).mean()
    return tanh_clip(s, tclip), reg


def direction_loss(src, tgt, tclip, objective):
    s, reg = scores(src, tgt, tclip)
    B, _, L = s.shape
    eye = torch.eye(B, dtype=torch.bool)
    pos = s[eye]                      # (B, L)
    neg = s[~eye].reshape(B, B - 1, L)
    if objective == "nce":
        negf = neg.reshape(B, -1)
        m = negf.max(dim=1, keepdim=True)[0]
        lse = torch.log(torch.exp(pos - m) + torch.exp(negf - m).sum(dim=1, keepdim=True))
        loss = -(pos - m - lse).mean()
    elif objective == "jsd":
        e_pos = math.log(2.0) - F.softplus(-pos)
        e_neg = F.softplus(-neg) + neg - math.log(2.0)
        loss = e_neg.mean() - e_pos.mean()
    else:  # dv: per source row
        negf = neg.reshape(B, -1)
        e_neg = torch.logsumexp(negf, dim=1) - math.log(negf.shape[1])
        e_pos = pos.mean(dim=1)
        loss = (e_neg - e_pos).mean()
    return loss, reg


def pick(r5, idx):
    """One 5x5 location per image: r5 (B, C, 5, 5), idx (B,) in 0..24."""
    B = r5.shape[0]
    return r5.reshape(B, r5.shape[1], 25)[torch.arange(B), :, idx]


def class_loss(logits, labels):
    valid = labels >= 0
    xent = F.cross_entropy(tanh_clip(logits, 10.0)[valid], labels[valid]) if valid.any() else logits.sum() * 0
    return xent + 1e-3 * (logits ** 2).mean()


def step_losses(model, x1, x2, labels, idx1, idx2, masks, tclip, objective):
    enc = model.encoder.module
    r1a, r5a, r7a = enc(x1)
    r1b, r5b, r7b = enc(x2)
    f1a, f1b = r1a.flatten(1), r1b.flatten(1)
    terms = {}
    regs = []
    for name, (sa, tb, sb, ta) in {"1t5": (f1a, r5b, f1b, r5a), "1t7": (f1a, r7b, f1b, r7a),
                                   "5t5": (pick(r5a, idx1), r5b, pick(r5b, idx2), r5a)}.items():
        l1, g1 = direction_loss(sa, tb, tclip, objective)
        l2, g2 = direction_loss(sb, ta, tclip, objective)
        terms[name] = 0.5 * (l1 + l2)
        regs += [g1, g2]
    terms["reg"] = 0.5 * sum(regs)
    feats = torch.cat([f1a, f1b]).detach()
    lab2 = torch.cat([labels, labels])
    ev = model.evaluator
    lgt_mlp = ev.block_glb_mlp(feats, masks[0], masks[1])
    lgt_lin = ev.block_glb_lin(feats)
    terms["cls_mlp"] = class_loss(lgt_mlp, lab2)
    terms["cls_lin"] = class_loss(lgt_lin, lab2)
    total = terms["1t5"] + terms["1t7"] + terms["5t5"] + terms["reg"] + terms["cls_mlp"] + terms["cls_lin"]
    return total, terms, (r1a, r5a, r7a, r1b, r5b, r7b), (lgt_mlp, lgt_lin)


def init_model(model, gen):
    """SPEC section 3 initialisation (draws from torch, stored in the file anyway)."""
    for name, m in model.named_modules():
        if isinstance(m, Res) or isinstance(m, Head):
            bound = 1.0 / math.sqrt(m.conv1.weight[0].numel())
            with torch.no_grad():
                m.conv1.weight.uniform_(-bound, bound, generator=gen)
                m.conv2.weight.zero_()
        if isinstance(m, Head):
            with torch.no_grad():
                w = m.shortcut.weight
                w.uniform_(-0.01, 0.01, generator=gen)
                for i in range(min(w.shape[0], w.shape[1])):
                    w[i, i, 0, 0] = 1.0
    # Zero second convolutions would make many gradients exactly zero; for a
    # stronger test perturb them (the C side loads these weights).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("conv2.weight"):
                p.uniform_(-0.05, 0.05, generator=gen)


CONFIGS = [
    # name, size, ndf, n_rkhs, depth, use_bn, batch, classes, hidden
    ("enc32", 32, 8, 32, 2, 0, 4, 5, 16),
    ("enc64", 64, 4, 40, 2, 1, 4, 5, 16),
    ("enc128", 128, 4, 32, 1, 0, 3, 4, 8),
]


def make(cfg, objective, out_dir):
    name, size, ndf, n_rkhs, depth, use_bn, B, n_classes, hidden = cfg
    gen = torch.Generator().manual_seed({"enc32": 11, "enc64": 22, "enc128": 33}[name] + {"nce": 0, "jsd": 1, "dv": 2}[objective])
    torch.manual_seed(7)
    model = Model(size, ndf, n_rkhs, depth, use_bn, n_classes, hidden)
    init_model(model, gen)
    model.train()
    tclip = 20.0
    ref = RefWriter()
    ref.add("config", np.array([size, ndf, n_rkhs, depth, use_bn, B, n_classes, hidden,
                                {"nce": 0, "jsd": 1, "dv": 2}[objective]], dtype=np.int32))
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
        total, terms, outs, logits = step_losses(model, x1, x2, labels, idx1, idx2, masks, tclip, objective)
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
        if k.endswith("running_mean") or k.endswith("running_var") or k.endswith("conv1.weight"):
            ref.add("final/" + k, v.numpy().astype(np.float64))
    path = os.path.join(out_dir, f"model_ref_{name}{'' if objective == 'nce' else '_' + objective}.bin.gz")
    ref.save(path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(ref.items)} tensors)")


def main():
    out_dir = os.path.dirname(os.path.abspath(__file__))
    for cfg in CONFIGS:
        make(cfg, "nce", out_dir)
    for objective in ("jsd", "dv"):
        make(CONFIGS[0], objective, out_dir)


if __name__ == "__main__":
    main()
