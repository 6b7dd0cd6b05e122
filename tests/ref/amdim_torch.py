"""The AMDIM model and objective in PyTorch: our independent reading of
docs/spec.md §4-§7, with the parameter names of the authors'
release (encoder.module.layer_list.0.conv.weight, ...rkhs_block_5.bn_hid...).

Shared by make_model_ref.py (the float64 reference for the C trainer),
check_checkpoint.py (strict load of our checkpoints) and
bench/torch_amdim.py (the PyTorch peer benchmark). Importing it changes no
global state: the caller picks the default dtype and the device.

The NCE scores and losses are always computed in at least float32, also
under autocast (docs/spec.md §7.5).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _fp32(x):
    """bf16/fp16 -> float32; float32 and float64 (the reference) unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class MaybeBN2d(nn.Module):
    """A BatchNorm2d that always exists (so the state dict has it) but is
    applied only when use_bn is set."""

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
    """res(cin, cout, k, s) then depth-1 units res(cout, cout, 1, 1)."""

    def __init__(self, cin, cout, k, s, depth, use_bn):
        super().__init__()
        units = [Res(cin, cout, k, s, use_bn)] + [Res(cout, cout, 1, 1, use_bn) for _ in range(depth - 1)]
        self.layer_list = nn.Sequential(*units)

    def forward(self, x):
        return self.layer_list(x)


class Head(nn.Module):
    """Projection head: BN(conv1x1(ReLU([BN](conv1x1(x)))) + shortcut1x1_with_bias(x)).
    The optional hidden BatchNorm is bn_hid, as in the authors' release."""

    def __init__(self, cin, n_rkhs, use_bn):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, n_rkhs, 1, bias=False)
        self.bn_hid = MaybeBN2d(n_rkhs, use_bn)
        self.conv2 = nn.Conv2d(n_rkhs, n_rkhs, 1, bias=False)
        self.bn_out = MaybeBN2d(n_rkhs, True)
        self.shortcut = nn.Conv2d(cin, n_rkhs, 1, bias=True)

    def forward(self, x):
        return self.bn_out(self.conv2(F.relu(self.bn_hid(self.conv1(x)))) + self.shortcut(x))


class Encoder(nn.Module):
    """The 32/64/128 px encoders of docs/spec.md §4.2; forward gives (r1, r5, r7)."""

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
    """An online probe on r1: linear (hidden None) or the MLP of
    docs/spec.md §6.1. forward(x) uses the module's own dropout; forward(x, m_in,
    m_hid) applies given 0/1 keep masks instead (so C can replay them)."""

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
        if m_in is None:
            return b(x)
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
    """Stands in for DataParallel: the authors' names carry 'encoder.module.'."""

    def __init__(self, enc):
        super().__init__()
        self.module = enc


class Mixture(nn.Module):
    """The mixture function of docs/mixtures.md (ours; the authors released
    none): f (B, C) -> (K, B, C), component j = f + (fc2(ReLU(fc1(f))))_j,
    fc2's rows j C .. j C + C - 1 making component j."""

    def __init__(self, n_rkhs, k):
        super().__init__()
        self.k = k
        self.fc1 = nn.Linear(n_rkhs, n_rkhs)
        self.fc2 = nn.Linear(n_rkhs, k * n_rkhs)

    def forward(self, f):
        out = self.fc2(F.relu(self.fc1(f)))
        return f.unsqueeze(0) + out.reshape(f.shape[0], self.k, -1).permute(1, 0, 2)


class Model(nn.Module):
    """mixtures > 1 adds mixture.fc1 / mixture.fc2 between encoder and evaluator."""

    def __init__(self, size, ndf, n_rkhs, depth, use_bn, n_classes, hidden, mixtures=1):
        super().__init__()
        self.encoder = EncoderHolder(Encoder(size, ndf, n_rkhs, depth, use_bn))
        if mixtures > 1:
            self.mixture = Mixture(n_rkhs, mixtures)
        self.evaluator = Evaluator(n_rkhs, n_classes, hidden)


def init_weights(model, gen=None):
    """docs/spec.md §4.6 initialisation of the residual units and heads: first
    conv Kaiming-uniform (a = sqrt(5)), second conv zero, head shortcut
    identity on the first cin channels plus U(-0.01, 0.01)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (Res, Head)):
                bound = 1.0 / math.sqrt(m.conv1.weight[0].numel())
                m.conv1.weight.uniform_(-bound, bound, generator=gen)
                m.conv2.weight.zero_()
            if isinstance(m, Head):
                w = m.shortcut.weight
                w.uniform_(-0.01, 0.01, generator=gen)
                for i in range(min(w.shape[0], w.shape[1])):
                    w[i, i, 0, 0] = 1.0


def tanh_clip(x, c):
    return c * torch.tanh(x / c)


def scores(src, tgt, tclip):
    """src (B, C), tgt (B, C, H, W) -> clipped scores (B, B, L) and reg
    (taken before clipping)."""
    src, tgt = _fp32(src), _fp32(tgt)
    B, C = src.shape
    t = tgt.permute(1, 0, 2, 3).reshape(C, -1)
    s = (src @ t).reshape(B, B, -1) / math.sqrt(C)
    reg = 0.05 * (s ** 2).mean()
    return tanh_clip(s, tclip), reg


def direction_loss(src, tgt, tclip, objective):
    """One direction of one task: (loss, reg). objective nce, jsd or dv."""
    with torch.autocast(src.device.type, enabled=False):
        s, reg = scores(src, tgt, tclip)
        B, _, L = s.shape
        flat = s.reshape(B * B, L)
        pos = flat[::B + 1]                                     # (B, L): s[i, i]
        neg = flat[1:].reshape(B - 1, B + 1, L)[:, :B].reshape(B, B - 1, L)  # s[i, j != i], row-major
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


def mixture_direction_loss(src_mix, tgt, tclip, tau):
    """One direction with K mixture sources src_mix (K, B, C) against tgt
    (B, C, H, W), NCE only: s_j (B, L) = the log-softmax term of each
    component's positives; q = softmax_j(tau s_j), a constant (detached);
    loss = -mean_{i,l} sum_j q_j s_j; reg = the components' mean; and the
    mean entropy of q (reported, no gradient). Returns (loss, reg, entropy)."""
    ss, regs = [], []
    for j in range(src_mix.shape[0]):
        s, reg = scores(src_mix[j], tgt, tclip)
        B, _, L = s.shape
        flat = s.reshape(B * B, L)
        pos = flat[::B + 1]
        negf = flat[1:].reshape(B - 1, B + 1, L)[:, :B].reshape(B, -1)
        m = negf.max(dim=1, keepdim=True)[0]
        lse = torch.log(torch.exp(pos - m) + torch.exp(negf - m).sum(dim=1, keepdim=True))
        ss.append(pos - m - lse)
        regs.append(reg)
    s = torch.stack(ss)                                   # (K, B, L)
    q = torch.softmax(tau * s, dim=0).detach()
    entropy = -(q * torch.log(q)).sum(0).mean()
    return -(q * s).sum(0).mean(), sum(regs) / len(regs), entropy


def pick(r5, idx):
    """One 5x5 location per image: r5 (B, C, 5, 5), idx (B,) in 0..24 -> (B, C)."""
    B = r5.shape[0]
    return r5.reshape(B, r5.shape[1], 25)[torch.arange(B, device=r5.device), :, idx]


def class_loss(logits, labels):
    """Cross-entropy of 10 tanh(logits / 10) over labelled rows (label -1 is
    unlabelled; none labelled gives 0) plus 1e-3 mean(logits^2)."""
    logits = _fp32(logits)
    n = (labels >= 0).sum().clamp(min=1)
    xent = F.cross_entropy(tanh_clip(logits, 10.0), labels, ignore_index=-1, reduction="sum") / n
    return xent + 1e-3 * (logits ** 2).mean()


def step_losses(model, x1, x2, labels, idx1, idx2, masks=None, tclip=20.0, objective="nce", mix_tau=1.0,
                mix_entropy=1.0, probe_features="r1"):
    """One AMDIM training step's losses for views x1, x2 (normalised NCHW).
    idx1/idx2: the 5x5 source location per image; masks: (mask_in,
    mask_hidden) for the MLP probe's dropout, or None for random dropout.
    A model with mixtures gives the 1t5 / 1t7 directions K mixture sources
    (docs/mixtures.md): terms gain mix_entropy (the sum over those
    directions of 0.5 mean H(q)), and total = the terms - mix_entropy * alpha
    (no gradient). probe_features "mixture-mean": the probes read the mean of
    the mixture features instead of r1.
    Returns total, the terms, (r1, r5, r7 of x1, then of x2), (MLP, linear logits)."""
    enc = model.encoder.module
    r1a, r5a, r7a = enc(x1)
    r1b, r5b, r7b = enc(x2)
    f1a, f1b = r1a.flatten(1), r1b.flatten(1)
    mix = getattr(model, "mixture", None)
    terms = {}
    regs = []
    if mix is not None:
        ma, mb = mix(f1a), mix(f1b)
        entropy = 0.0
        for name, (tb, ta) in {"1t5": (r5b, r5a), "1t7": (r7b, r7a)}.items():
            l1, g1, h1 = mixture_direction_loss(ma, tb, tclip, mix_tau)
            l2, g2, h2 = mixture_direction_loss(mb, ta, tclip, mix_tau)
            terms[name] = 0.5 * (l1 + l2)
            regs += [g1, g2]
            entropy = entropy + 0.5 * (h1 + h2)
        pairs = {"5t5": (pick(r5a, idx1), r5b, pick(r5b, idx2), r5a)}
    else:
        pairs = {"1t5": (f1a, r5b, f1b, r5a), "1t7": (f1a, r7b, f1b, r7a),
                 "5t5": (pick(r5a, idx1), r5b, pick(r5b, idx2), r5a)}
    for name, (sa, tb, sb, ta) in pairs.items():
        l1, g1 = direction_loss(sa, tb, tclip, objective)
        l2, g2 = direction_loss(sb, ta, tclip, objective)
        terms[name] = 0.5 * (l1 + l2)
        regs += [g1, g2]
    terms["reg"] = 0.5 * sum(regs)
    if probe_features == "mixture-mean":
        feats = torch.cat([ma.mean(0), mb.mean(0)]).detach()
    else:
        feats = torch.cat([f1a, f1b]).detach()
    lab2 = torch.cat([labels, labels])
    ev = model.evaluator
    lgt_mlp = ev.block_glb_mlp(feats, *(masks or ()))
    lgt_lin = ev.block_glb_lin(feats)
    terms["cls_mlp"] = class_loss(lgt_mlp, lab2)
    terms["cls_lin"] = class_loss(lgt_lin, lab2)
    total = terms["1t5"] + terms["1t7"] + terms["5t5"] + terms["reg"] + terms["cls_mlp"] + terms["cls_lin"]
    if mix is not None:
        terms["mix_entropy"] = entropy.detach()
        total = total - mix_entropy * terms["mix_entropy"]
    return total, terms, (r1a, r5a, r7a, r1b, r5b, r7b), (lgt_mlp, lgt_lin)
