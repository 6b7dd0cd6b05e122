"""Deep InfoMax (DIM) in PyTorch: an independent reading of docs/dim.md.

Written from the specification page (which carries the facts of the
authors' release, rdevon/DIM, with file:line citations), not from their
code and not from our C trainer. It is the reference that the C/CUDA
`--model dim` will be checked against; nothing here is fast.

What it defines (docs/dim.md section in brackets):
  - the 28 / 32 / 64 px encoders and their taps local, conv, fc, z   [§2]
  - the DIM(L) and DIM(G) mutual-information networks                 [§3]
  - the score tensor u[i, j, l] = <G_i, L_j,l>                         [§4]
  - the JSD, NCE (with the authors' -10 entries) and DV estimators   [§5]
  - prior matching: discriminator, its loss with the gradient
    penalty (the authors' last-row form and the all-rows form),
    the encoder's non-saturating term                                 [§6]
  - the combined losses of one step                                   [§7]
  - the classifier heads, the linear head, NDM                        [§9]

Tensor names follow the authors' modules (layers.layer0.conv.weight,
block_nonlinear.0.weight, ...), so that their state dicts line up.

Importing changes no global state. Run

    /usr/bin/python3 tests/ref/dim_ref.py --selftest

(Debian's python3-torch; the pyenv python3 on PATH has no torch.)
"""
import argparse
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

LOG2 = math.log(2.0)
NCE_MASK_VALUE = -10.0   # docs/dim.md §5.2: the L self entries of each NCE row
DV_AUTHORS_SHIFT = 100.0  # docs/dim.md §5.3: diagonal shift of the a668d10 DV
DV_AUTHORS_EPS = 1e-6     # docs/dim.md §5.3: epsilon inside the log of the a668d10 DV

# --------------------------------------------------------------------------------------
# Layer specifications (docs/dim.md §2.2). A spec is a dict:
#   {"kind": "conv", "out": C, "k": k, "s": s, "p": p, "bn": bool, "relu": bool}
#   {"kind": "flatten"}
#   {"kind": "linear", "out": n, "bn": bool, "relu": bool}
# A layer has a bias exactly when it has no BatchNorm (docs/dim.md §2.1).
# --------------------------------------------------------------------------------------


def _conv(out, k, s, p):
    return {"kind": "conv", "out": out, "k": k, "s": s, "p": p, "bn": True, "relu": True}


def _flatten():
    return {"kind": "flatten"}


def _linear(out, bn, relu):
    return {"kind": "linear", "out": out, "bn": bn, "relu": relu}


Z_UNITS = 64       # docs/dim.md §2.1: output_units
FC_UNITS = 1024
MI_UNITS = 2048    # docs/dim.md §3: mi_units

ENCODERS = {
    # size: input channels, layer specs (z appended by encoder_specs), tap indices
    28: dict(in_ch=1,
             layers=[_conv(64, 5, 2, 2), _conv(128, 5, 2, 2), _flatten(), _linear(FC_UNITS, True, True)],
             local=1, conv=1, fc=3),
    32: dict(in_ch=3,
             layers=[_conv(64, 4, 2, 1), _conv(128, 4, 2, 1), _conv(256, 4, 2, 1), _flatten(),
                     _linear(FC_UNITS, True, True)],
             local=1, conv=2, fc=4),
    64: dict(in_ch=3,
             layers=[_conv(64, 4, 2, 1), _conv(128, 4, 2, 1), _conv(256, 4, 2, 1), _conv(512, 4, 2, 1),
                     _flatten(), _linear(FC_UNITS, True, True)],
             local=2, conv=3, fc=5),
}


def encoder_specs(size, z_units=Z_UNITS):
    """The encoder's layer list with the representation layer appended:
    linear(z_units), bias, no BN, no activation (docs/dim.md §2.1)."""
    return [dict(l) for l in ENCODERS[size]["layers"]] + [_linear(z_units, False, False)]


class Dropout(nn.Module):
    """Inverted dropout; with `mask` set (a 0/1 tensor of the input's shape)
    that mask is used instead of a fresh draw, so that runs can be replayed."""

    def __init__(self, p):
        super().__init__()
        self.p = p
        self.mask = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if self.mask is not None:
            return x * self.mask.to(x.dtype) / (1.0 - self.p)
        return F.dropout(x, self.p, True)


class View(nn.Module):
    """Flatten NCHW to (N, C*H*W) in C, H, W order."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1)


def _shape_after(shape, spec):
    if spec["kind"] == "conv":
        c, h, w = shape
        k, s, p = spec["k"], spec["s"], spec["p"]
        return (spec["out"], (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
    if spec["kind"] == "flatten":
        return (math.prod(shape),)
    if spec["kind"] == "linear":
        return (spec["out"],)
    raise ValueError(spec)


class SpecNet(nn.Module):
    """A stack of blocks built from specs; block i is `layers.layer<i>`,
    with sub-modules flatten (a linear layer on a map flattens first), conv
    or fc, do, bn, act, in that order (docs/dim.md §2.1). A block of one
    module is that module itself, as in the authors' Convnet (so z's weight is
    `layers.layer5.weight` at 32 px). forward returns every block's output."""

    def __init__(self, in_shape, specs, dropout=None):
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.shapes = []
        blocks = []
        shape = self.in_shape
        for spec in specs:
            mods = []
            if spec["kind"] == "conv":
                if len(shape) != 3:
                    raise ValueError("conv needs a map")
                mods.append(("conv", nn.Conv2d(shape[0], spec["out"], spec["k"], spec["s"], spec["p"],
                                               bias=not spec["bn"])))
            elif spec["kind"] == "flatten":
                mods.append(("flatten", View()))
            elif spec["kind"] == "linear":
                if len(shape) == 3:
                    mods.append(("flatten", View()))
                    shape = (math.prod(shape),)
                mods.append(("fc", nn.Linear(shape[0], spec["out"], bias=spec.get("bias", not spec["bn"]))))
            shape = _shape_after(shape, spec)
            if spec.get("do"):
                mods.append(("do", Dropout(spec["do"])))
            if spec.get("bn"):
                mods.append(("bn", nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])))
            if spec.get("relu"):
                mods.append(("ReLU", nn.ReLU()))
            if len(mods) == 1:
                block = mods[0][1]
            else:
                block = nn.Sequential()
                for name, m in mods:
                    block.add_module(name, m)
            blocks.append(block)
            self.shapes.append(shape)
        self.layers = nn.Sequential()
        for i, b in enumerate(blocks):
            self.layers.add_module("layer{}".format(i), b)

    def forward(self, x):
        outs = []
        for b in self.layers:
            x = b(x)
            outs.append(x)
        return outs


class Encoder(nn.Module):
    """The authors' basic28x28 / basic32x32 / basic64x64 with z appended
    (docs/dim.md §2.2). forward returns (taps, outs): taps has local, conv,
    fc, z; outs is every block's output (index -1 is z)."""

    def __init__(self, size, z_units=Z_UNITS, in_ch=None):
        super().__init__()
        cfg = ENCODERS[size]
        self.size = size
        self.in_ch = cfg["in_ch"] if in_ch is None else in_ch
        self.specs = encoder_specs(size, z_units)
        self.local_idx, self.conv_idx, self.fc_idx = cfg["local"], cfg["conv"], cfg["fc"]
        self.net = SpecNet((self.in_ch, size, size), self.specs)

    @property
    def shapes(self):
        return self.net.shapes

    def forward(self, x):
        outs = self.net(x)
        taps = dict(local=outs[self.local_idx], conv=outs[self.conv_idx], fc=outs[self.fc_idx], z=outs[-1])
        return taps, outs


# --------------------------------------------------------------------------------------
# MI networks (docs/dim.md §3)
# --------------------------------------------------------------------------------------


class Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def init_shortcut_(weight):
    """U(-0.01, 0.01), then exactly 1 at (i, i) for every input channel i,
    when out >= in (docs/dim.md §3.1)."""
    out, cin = weight.shape[0], weight.shape[1]
    if out < cin:
        return
    with torch.no_grad():
        weight.uniform_(-0.01, 0.01)
        for i in range(cin):
            weight[(i, i) + (0,) * (weight.dim() - 2)] = 1.0


class MI1x1ConvNet(nn.Module):
    """out = LayerNorm_channels(block(x) + shortcut(x)) at every location;
    block = conv1x1 (no bias) -> BN2d -> ReLU -> conv1x1 (bias);
    shortcut = conv1x1 (no bias), identity-initialised (docs/dim.md §3.1)."""

    def __init__(self, cin, units):
        super().__init__()
        self.block_nonlinear = nn.Sequential(
            nn.Conv2d(cin, units, 1, 1, 0, bias=False),
            nn.BatchNorm2d(units),
            nn.ReLU(),
            nn.Conv2d(units, units, 1, 1, 0, bias=True),
        )
        self.block_ln = nn.Sequential(Permute(0, 2, 3, 1), nn.LayerNorm(units), Permute(0, 3, 1, 2))
        self.linear_shortcut = nn.Conv2d(cin, units, 1, 1, 0, bias=False)
        init_shortcut_(self.linear_shortcut.weight)

    def forward(self, x):
        return self.block_ln(self.block_nonlinear(x) + self.linear_shortcut(x))


class LocalDIMNets(nn.Module):
    """DIM(L): local_net on the M x M local map, global_net on z seen as a
    64 x 1 x 1 map. forward returns L (N, units, M*M) and G (N, units, 1)."""

    def __init__(self, encoder, units=MI_UNITS):
        super().__init__()
        c_local = encoder.shapes[encoder.local_idx][0]
        z_units = encoder.shapes[-1][0]
        self.local_net = MI1x1ConvNet(c_local, units)
        # z with `units` features would go through the identity (docs/dim.md §3.1)
        self.global_net = MI1x1ConvNet(z_units, units) if z_units != units else nn.Identity()

    def forward(self, taps):
        lmap = self.local_net(taps["local"])
        g = self.global_net(taps["z"][:, :, None, None])
        n, c = lmap.shape[:2]
        return lmap.reshape(n, c, -1), g.reshape(n, c, -1)


def global_dim_local_specs(encoder, units=MI_UNITS):
    """DIM(G)'s local network: the encoder's layer specs from index
    local_idx on (the layer that produced the local map, docs/dim.md §3.2),
    with the last one (z) replaced by linear(units), bias, no BN."""
    specs = [dict(s) for s in encoder.specs]
    specs[-1] = _linear(units, False, False)
    return specs[encoder.local_idx:]


class GlobalDIMNets(nn.Module):
    """DIM(G): local_net = copies of the encoder's layers on the local map
    ending in linear(units); global_net = linear(64 -> units) with bias.
    forward returns L (N, units, 1) and G (N, units, 1)."""

    def __init__(self, encoder, units=MI_UNITS):
        super().__init__()
        local_shape = encoder.shapes[encoder.local_idx]
        z_units = encoder.shapes[-1][0]
        self.local_net = SpecNet(local_shape, global_dim_local_specs(encoder, units))
        self.global_net = SpecNet((z_units,), [_linear(units, False, False)]) if z_units != units else None

    def forward(self, taps):
        lv = self.local_net(taps["local"])[-1]
        g = self.global_net(taps["z"])[-1] if self.global_net is not None else taps["z"]
        n, c = lv.shape
        return lv.reshape(n, c, 1), g.reshape(n, c, 1)


# --------------------------------------------------------------------------------------
# Scores and estimators (docs/dim.md §4, §5). u has shape (N, N, L):
# u[i, j, l] = <G_i, L_j,l>; positives are i == j. Every loss is to be minimised;
# the MI estimate is -loss (plus the constants noted on the page).
# --------------------------------------------------------------------------------------


def scores(lmap, g):
    """lmap (N, C, L), g (N, C, 1) -> u (N, N, L), a plain dot product:
    no 1/sqrt(C), no clip, no regulariser (docs/dim.md §4)."""
    return torch.einsum("ic,jcl->ijl", g[:, :, 0], lmap)


def _eye(n, like):
    return torch.eye(n, dtype=torch.bool, device=like.device)


def jsd_loss(u):
    """docs/dim.md §5.1: E_neg - E_pos with
    E_pos = mean over i of mean over l of (log 2 - softplus(-u_iil)),
    E_neg = mean over i != j of mean over l of (softplus(-u_ijl) + u_ijl - log 2).
    Locations are averaged first, then pairs, as the authors do."""
    n = u.shape[0]
    eye = _eye(n, u).to(u.dtype)
    e_pos = (LOG2 - F.softplus(-u)).mean(2)
    e_neg = (F.softplus(-u) + u - LOG2).mean(2)
    e_pos = (e_pos * eye).sum() / eye.sum()
    e_neg = (e_neg * (1 - eye)).sum() / (1 - eye).sum()
    return e_neg - e_pos


def nce_loss(u, mask_value=NCE_MASK_VALUE):
    """docs/dim.md §5.2: for every source i and location l the logits are
    u_iil, then u_ijl' for every j != i and every l', then `mask_value`
    repeated L times (the authors' own-image block, constant, no gradient);
    loss = -mean over (i, l) of the log-softmax of the first logit."""
    n, _, nl = u.shape
    eye = _eye(n, u)[:, :, None].expand(n, n, nl)
    neg = torch.where(eye, torch.full_like(u, mask_value), u)          # (N, N, L)
    neg = neg.reshape(n, 1, n * nl).expand(n, nl, n * nl)                # same row for each l
    pos = torch.diagonal(u, dim1=0, dim2=1).transpose(0, 1)[:, :, None]  # (N, L, 1): u[i, i, l]
    logits = torch.cat([pos, neg], dim=2)
    return -F.log_softmax(logits, dim=2)[:, :, 0].mean()


def dv_loss(u):
    """docs/dim.md §5.3, amdim's DV (decision D3): one log-sum-exp over all
    N (N - 1) L negative scores of the batch, normalised by their number:
    loss = LSE_neg - log(N (N - 1) L) - mean over (i, l) of u_iil."""
    n, _, nl = u.shape
    eye = _eye(n, u)[:, :, None].expand(n, n, nl)
    e_pos = torch.diagonal(u, dim1=0, dim2=1).mean()
    neg = u[~eye]
    e_neg = torch.logsumexp(neg, 0) - math.log(n * (n - 1) * nl)
    return e_neg - e_pos


def dv_loss_authors(u):
    """docs/dim.md §5.3, the authors' coherent DV (dim_losses.py@a668d10):
    the diagonal shifted by -100, umax = max over all of u (not detached),
    E_neg = log(sum over negatives of exp(u - umax) + 1e-6) + umax - log(N (N - 1)).
    Equals dv_loss + log L away from the extremes."""
    n, _, nl = u.shape
    eye = _eye(n, u)[:, :, None].expand(n, n, nl)
    e_pos = torch.diagonal(u, dim1=0, dim2=1).mean()
    shifted = u - DV_AUTHORS_SHIFT * eye.to(u.dtype)
    umax = shifted.max()
    s = (torch.exp(shifted - umax) * (~eye).to(u.dtype)).sum()
    e_neg = torch.log(s + DV_AUTHORS_EPS) + umax - math.log(n * (n - 1))
    return e_neg - e_pos


ESTIMATORS = dict(jsd=jsd_loss, nce=nce_loss, dv=dv_loss, dv_authors=dv_loss_authors)


# --------------------------------------------------------------------------------------
# Prior matching (docs/dim.md §6)
# --------------------------------------------------------------------------------------


def mlp_specs(hidden, out=1):
    """Linear + ReLU per hidden size, then linear(out); all with bias, no BN."""
    return [_linear(h, False, True) for h in hidden] + [_linear(out, False, False)]


class MLPCritic(nn.Module):
    """The discriminator of prior matching and the NDM network:
    64 -> 1000 -> 200 -> 1 with ReLU, all biased (docs/dim.md §6.2, §9.2)."""

    def __init__(self, d_in=Z_UNITS, hidden=(1000, 200)):
        super().__init__()
        self.net = SpecNet((d_in,), mlp_specs(hidden))

    def forward(self, x):
        return self.net(x)[-1]


def sample_prior(n, d=Z_UNITS, generator=None, dtype=torch.float32):
    """U[0, 1) per element, drawn afresh every batch (docs/dim.md §6.1)."""
    return torch.rand(n, d, generator=generator, dtype=dtype)


def gradient_penalty(disc, x, rows="last", amount=1.0):
    """docs/dim.md §6.3. rows="last": the authors' form, the squared input
    gradient of the last example's output only, divided by N;
    rows="all": the mean over rows of ||d D(x_n) / d x_n||^2.
    Built with create_graph, so its gradient reaches D's parameters."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = disc(x)
        sel = out[-1] if rows == "last" else out
        (g,) = torch.autograd.grad(sel.sum(), x, create_graph=True)
    return (g.reshape(g.shape[0], -1) ** 2).sum(1).mean() * amount


def discriminator_loss(disc, p, q, rows="last", gp_amount=1.0):
    """docs/dim.md §6.3: mean softplus(-D(p)) + mean softplus(D(q))
    + 0.5 (gp(p) + gp(q)); q = sigmoid(z) is detached by the caller's
    contract (it is detached here too). Returns (loss, parts)."""
    q = q.detach()
    dp, dq = disc(p), disc(q)
    e_pos = -F.softplus(-dp).mean()          # GAN positive expectation
    e_neg = F.softplus(dq).mean()            # GAN negative expectation, softplus(-q) + q
    gp = 0.5 * (gradient_penalty(disc, p, rows, gp_amount) + gradient_penalty(disc, q, rows, gp_amount))
    loss = -(e_pos - e_neg) + gp
    return loss, dict(gp=gp, e_p=dp.mean(), e_q=dq.mean(), gan=-(e_pos - e_neg))


def generator_loss(disc, q):
    """docs/dim.md §6.4: the non-saturating term mean softplus(-D(q)),
    q = sigmoid(z) not detached; the caller multiplies by gamma."""
    return F.softplus(-disc(q)).mean()


# --------------------------------------------------------------------------------------
# One step's losses (docs/dim.md §7)
# --------------------------------------------------------------------------------------


class DIM(nn.Module):
    """Encoder + the MI networks the weights ask for + the discriminator."""

    def __init__(self, size, alpha, beta, gamma, units=MI_UNITS, in_ch=None, disc_hidden=(1000, 200)):
        super().__init__()
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.encoder = Encoder(size, in_ch=in_ch)
        self.local_dim = LocalDIMNets(self.encoder, units) if beta > 0 else None
        self.global_dim = GlobalDIMNets(self.encoder, units) if alpha > 0 else None
        self.disc = MLPCritic(Z_UNITS, disc_hidden) if gamma > 0 else None

    def encoder_side(self):
        """Parameters that the encoder's Adam steps: the encoder and the MI
        nets (docs/dim.md §3.3)."""
        mods = [self.encoder, self.local_dim, self.global_dim]
        return [p for m in mods if m is not None for p in m.parameters()]

    def losses(self, x, estimator="jsd", prior=None, gp_rows="last"):
        """Returns a dict of the step's terms. `encoder` is
        alpha * global + beta * local + gamma * prior_gen; `discriminator` is
        D's loss on the same forward (q detached)."""
        est = ESTIMATORS[estimator]
        taps, outs = self.encoder(x)
        out = dict(taps=taps)
        total = x.new_zeros(())
        if self.global_dim is not None:
            lg, gg = self.global_dim(taps)
            out["u_global"] = scores(lg, gg)
            out["global"] = est(out["u_global"])
            total = total + self.alpha * out["global"]
        if self.local_dim is not None:
            ll, gl = self.local_dim(taps)
            out["u_local"] = scores(ll, gl)
            out["local"] = est(out["u_local"])
            total = total + self.beta * out["local"]
        if self.disc is not None:
            q = torch.sigmoid(taps["z"])
            if prior is None:
                prior = sample_prior(x.shape[0], Z_UNITS, dtype=x.dtype)
            out["prior_gen"] = generator_loss(self.disc, q)
            total = total + self.gamma * out["prior_gen"]
            d_loss, parts = discriminator_loss(self.disc, prior, q, gp_rows)
            out["discriminator"] = d_loss
            out.update({"d_" + k: v for k, v in parts.items()})
        out["encoder"] = total
        return out


# --------------------------------------------------------------------------------------
# Evaluations (docs/dim.md §9)
# --------------------------------------------------------------------------------------


class ClassifierHead(nn.Module):
    """linear(in -> 200, bias) -> Dropout(0.1) -> BN1d(200) -> ReLU ->
    linear(200 -> classes, bias); a map is flattened in C, H, W order first
    (docs/dim.md §9.1)."""

    def __init__(self, in_shape, n_classes, hidden=200, p_drop=0.1):
        super().__init__()
        # the hidden linear has a bias although BN follows (docs/dim.md §9.1)
        spec0 = dict(_linear(hidden, True, True), do=p_drop, bias=True)
        self.net = SpecNet(in_shape, [spec0, _linear(n_classes, False, False)])

    @property
    def dropout(self):
        return self.net.layers.layer0.do

    def forward(self, x):
        return self.net(x)[-1]


class LinearHead(nn.Module):
    """amdim's linear probe (ours, docs/dim.md §9.1): linear(in -> classes)."""

    def __init__(self, in_shape, n_classes):
        super().__init__()
        self.fc = nn.Linear(math.prod(in_shape), n_classes)

    def forward(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


def classifier_loss(logits, labels):
    """Mean cross-entropy over labelled rows (label -1 = unlabelled);
    None when no row is labelled (no loss, no update)."""
    keep = labels >= 0
    if not bool(keep.any()):
        return None
    return F.cross_entropy(logits[keep], labels[keep])


def random_permute(z, generator=None):
    """An independent random permutation of the batch for every dimension
    (docs/dim.md §9.2): z~[n, d] = z[perm_d[n], d]."""
    b = torch.rand(z.shape, generator=generator, dtype=torch.float64)
    idx = b.argsort(0)
    return torch.gather(z, 0, idx), idx


def ndm_losses(net, z, z_shuffled):
    """docs/dim.md §9.2. Training loss (KL measure):
    -(mean T(z) - mean exp(T(z~) - 1)); reported NDM (DV form):
    mean T(z) - (logsumexp_n T(z~_n) - log N). Inputs are detached."""
    tp, tq = net(z.detach()), net(z_shuffled.detach())
    train = -(tp.mean() - torch.exp(tq - 1.0).mean())
    report = tp.mean() - (torch.logsumexp(tq[:, 0], 0) - math.log(tq.shape[0]))
    return train, report


# --------------------------------------------------------------------------------------
# Self-test
# --------------------------------------------------------------------------------------


def n_params(m):
    return sum(p.numel() for p in m.parameters()) if m is not None else 0


class Checks:
    def __init__(self):
        self.n = 0
        self.failed = []

    def ok(self, cond, what):
        self.n += 1
        if not cond:
            self.failed.append(what)
            print("FAIL:", what)

    def close(self, a, b, what, tol=1e-10):
        a, b = float(a), float(b)
        self.ok(abs(a - b) <= tol * max(1.0, abs(b)), "{}: {} vs {}".format(what, a, b))


def nce_loop(u, mask_value=NCE_MASK_VALUE):
    """NCE written out term by term, for the self-test."""
    n, _, nl = u.shape
    total = 0.0
    for i in range(n):
        for l in range(nl):
            terms = [float(u[i, i, l])]
            for j in range(n):
                for lp in range(nl):
                    terms.append(mask_value if j == i else float(u[i, j, lp]))
            m = max(terms)
            lse = m + math.log(sum(math.exp(t - m) for t in terms))
            total += -(terms[0] - lse)
    return total / (n * nl)


def test_shapes(c, sizes, batch=4):
    expect = {
        28: dict(outs=[(64, 14, 14), (128, 7, 7), (6272,), (1024,), (64,)], M=7,
                 gl_local=[(128, 4, 4), (2048,), (1024,), (2048,)], conv=(128, 7, 7)),
        32: dict(outs=[(64, 16, 16), (128, 8, 8), (256, 4, 4), (4096,), (1024,), (64,)], M=8,
                 gl_local=[(128, 4, 4), (256, 2, 2), (1024,), (1024,), (2048,)], conv=(256, 4, 4)),
        64: dict(outs=[(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (8192,), (1024,), (64,)], M=8,
                 gl_local=[(256, 4, 4), (512, 2, 2), (2048,), (1024,), (2048,)], conv=(512, 4, 4)),
    }
    counts = {}
    for size in sizes:
        e = expect[size]
        torch.manual_seed(size)
        model = DIM(size, alpha=1.0, beta=1.0, gamma=0.1)
        model.train()
        x = torch.randn(batch, model.encoder.in_ch, size, size)
        out = model.losses(x, "jsd")
        taps, outs = model.encoder(x)
        c.ok([tuple(o.shape[1:]) for o in outs] == e["outs"], "{} px encoder outs {}".format(size, [tuple(o.shape) for o in outs]))
        c.ok(model.encoder.shapes == e["outs"], "{} px declared shapes".format(size))
        c.ok(tuple(taps["conv"].shape) == (batch,) + e["conv"], "{} px conv tap".format(size))
        c.ok(tuple(taps["local"].shape[2:]) == (e["M"], e["M"]), "{} px local M".format(size))
        c.ok(tuple(taps["fc"].shape) == (batch, 1024) and tuple(taps["z"].shape) == (batch, 64), "{} px fc, z".format(size))
        ll, gl = model.local_dim(taps)
        c.ok(tuple(ll.shape) == (batch, MI_UNITS, e["M"] ** 2) and tuple(gl.shape) == (batch, MI_UNITS, 1),
             "{} px DIM(L) embeddings {} {}".format(size, tuple(ll.shape), tuple(gl.shape)))
        c.ok(tuple(out["u_local"].shape) == (batch, batch, e["M"] ** 2), "{} px DIM(L) scores".format(size))
        lg, gg = model.global_dim(taps)
        c.ok(model.global_dim.local_net.shapes == e["gl_local"],
             "{} px DIM(G) local net shapes {}".format(size, model.global_dim.local_net.shapes))
        c.ok(tuple(lg.shape) == (batch, MI_UNITS, 1) and tuple(gg.shape) == (batch, MI_UNITS, 1), "{} px DIM(G) embeddings".format(size))
        c.ok(tuple(out["u_global"].shape) == (batch, batch, 1), "{} px DIM(G) scores".format(size))
        c.ok(tuple(model.disc(torch.sigmoid(taps["z"])).shape) == (batch, 1), "{} px discriminator output".format(size))
        for k in ("global", "local", "prior_gen", "discriminator", "encoder"):
            c.ok(out[k].dim() == 0 and bool(torch.isfinite(out[k])), "{} px {} finite scalar".format(size, k))
        # LayerNorm output: mean 0, biased variance 1 per location (affine at init)
        c.ok(float(ll.mean(1).abs().max()) < 1e-5 and float((ll.var(1, unbiased=False) - 1).abs().max()) < 1e-3,
             "{} px DIM(L) LayerNorm per location".format(size))
        heads = {}
        for tap in ("conv", "fc", "z"):
            h = ClassifierHead(tuple(taps[tap].shape[1:]), 10)
            lin = LinearHead(tuple(taps[tap].shape[1:]), 10)
            c.ok(tuple(h(taps[tap].detach()).shape) == (batch, 10) and tuple(lin(taps[tap].detach()).shape) == (batch, 10),
                 "{} px heads on {}".format(size, tap))
            heads[tap] = (h, lin)
        ndm = MLPCritic()
        c.ok(tuple(ndm(taps["z"].detach()).shape) == (batch, 1), "{} px NDM output".format(size))
        enc = model.encoder
        counts[size] = [
            ("encoder", n_params(enc)),
            ("  conv stack (to conv tap)", sum(n_params(enc.net.layers[i]) for i in range(enc.conv_idx + 1))),
            ("  fc layer", n_params(enc.net.layers[enc.fc_idx])),
            ("  z layer", n_params(enc.net.layers[-1])),
            ("DIM(L) local_net", n_params(model.local_dim.local_net)),
            ("DIM(L) global_net", n_params(model.local_dim.global_net)),
            ("DIM(G) local_net", n_params(model.global_dim.local_net)),
            ("DIM(G) global_net", n_params(model.global_dim.global_net)),
            ("discriminator", n_params(model.disc)),
            ("NDM network", n_params(ndm)),
        ] + [("classifier head on {}".format(t), n_params(heads[t][0])) for t in ("conv", "fc", "z")] \
          + [("linear head on {}".format(t), n_params(heads[t][1])) for t in ("conv", "fc", "z")]
    return counts


def test_init(c):
    torch.manual_seed(0)
    net = MI1x1ConvNet(128, 2048)
    w = net.linear_shortcut.weight[:, :, 0, 0]
    eye = torch.zeros_like(w, dtype=torch.bool)
    eye[torch.arange(128), torch.arange(128)] = True
    c.ok(bool((w[eye] == 1).all()) and float(w[~eye].abs().max()) <= 0.01, "shortcut init: 1 on (i, i), U(+-0.01) elsewhere")
    c.ok(net.block_nonlinear[0].bias is None and net.block_nonlinear[3].bias is not None
         and net.linear_shortcut.bias is None, "MI1x1ConvNet biases: conv1 none, conv2 yes, shortcut none")
    enc = Encoder(32)
    c.ok(enc.net.layers.layer0.conv.bias is None and enc.net.layers.layer4.fc.bias is None
         and enc.net.layers.layer5.bias is not None, "encoder biases: only where there is no BN (z)")
    names = set(n for n, _ in enc.named_parameters())
    c.ok({"net.layers.layer0.conv.weight", "net.layers.layer0.bn.weight", "net.layers.layer4.fc.weight",
          "net.layers.layer5.weight", "net.layers.layer5.bias"} <= names, "encoder tensor names")
    h = ClassifierHead((64,), 10)
    c.ok(h.net.layers.layer0.fc.bias is not None and isinstance(h.net.layers.layer0.do, Dropout)
         and list(h.net.layers.layer0._modules) == ["fc", "do", "bn", "ReLU"], "classifier head: fc(bias) do bn ReLU")


def test_estimators(c):
    d = torch.float64
    sp = lambda x: math.log1p(math.exp(x)) if x < 30 else x  # noqa: E731
    # JSD, 2 x 2, one location, by hand
    a, b, cc, dd = 1.0, -1.0, 0.5, 2.0
    u = torch.tensor([[a, b], [cc, dd]], dtype=d)[:, :, None]
    hand = (sp(-a) + sp(-dd)) / 2 + (sp(b) + sp(cc)) / 2 - 2 * LOG2
    c.close(jsd_loss(u), hand, "JSD 2x2 by hand", 1e-14)
    # JSD, plain means over all positive / negative scores (equal L per pair)
    torch.manual_seed(1)
    u = torch.randn(5, 5, 7, dtype=d) * 3
    eye = torch.eye(5, dtype=torch.bool)[:, :, None].expand(5, 5, 7)
    plain = F.softplus(-u[eye]).mean() + F.softplus(u[~eye]).mean() - 2 * LOG2
    c.close(jsd_loss(u), plain, "JSD = mean softplus(-pos) + mean softplus(neg) - 2 log 2", 1e-13)
    z = torch.zeros(4, 4, 9, dtype=d)
    c.close(jsd_loss(z), 0.0, "JSD at zero scores", 1e-15)
    sep = torch.full((4, 4, 9), -60.0, dtype=d)
    sep[torch.arange(4), torch.arange(4)] = 60.0
    c.close(jsd_loss(sep), -2 * LOG2, "JSD at perfect separation -> -2 log 2", 1e-12)
    # NCE
    n, nl = 4, 9
    c.close(nce_loss(z), math.log(1 + (n - 1) * nl + nl * math.exp(NCE_MASK_VALUE)),
            "NCE at zero scores = log(1 + (N-1)L + L e^-10)", 1e-13)
    s = 30.0
    sep = torch.full((n, n, nl), -1e4, dtype=d)
    sep[torch.arange(n), torch.arange(n)] = s
    c.close(nce_loss(sep), math.log1p(nl * math.exp(NCE_MASK_VALUE - s)),
            "NCE at separation = log(1 + L e^(-10-s)) -> 0", 1e-12)
    torch.manual_seed(2)
    u = torch.randn(3, 3, 4, dtype=d) * 2
    c.close(nce_loss(u), nce_loop(u), "NCE vectorised = term by term", 1e-12)
    ug = u.clone().requires_grad_(True)
    nce_loss(ug).backward()
    # each own-image score u[i, i, l] is a positive only (its L copies among the
    # negatives are the constant -10): d loss / d u_iil = -(1 - softmax_pos(i, l)) / (N L)
    nn_, ll_ = 3, 4
    worst = 0.0
    for i in range(nn_):
        den_neg = sum(math.exp(float(u[i, j, lp])) for j in range(nn_) if j != i for lp in range(ll_))
        for l in range(ll_):
            e = math.exp(float(u[i, i, l]))
            sm = e / (e + den_neg + ll_ * math.exp(NCE_MASK_VALUE))
            worst = max(worst, abs(float(ug.grad[i, i, l]) + (1 - sm) / (nn_ * ll_)))
    c.ok(worst < 1e-14, "NCE: gradient of own-image scores = -(1 - softmax_pos)/(N L) (max err {:.1e})".format(worst))
    # DV
    c.close(dv_loss(z), 0.0, "DV (amdim) at zero scores = 0", 1e-14)
    c.close(dv_loss_authors(z), math.log(n * (n - 1) * nl + DV_AUTHORS_EPS) - math.log(n * (n - 1)),
            "DV (authors) at zero scores = log L (+ eps)", 1e-13)
    torch.manual_seed(3)
    u = torch.randn(5, 5, 6, dtype=d)
    # the 1e-6 inside the log shifts the value by about 1e-6 / sum exp(neg - umax)
    c.close(dv_loss_authors(u) - dv_loss(u), math.log(6), "DV authors - amdim = log L", 1e-6)
    eye = torch.eye(5, dtype=torch.bool)[:, :, None].expand(5, 5, 6)
    naive = math.log(torch.exp(u[~eye]).mean()) - float(u[eye].mean())
    c.close(dv_loss(u), naive, "DV (amdim) = log mean exp(neg) - mean pos", 1e-12)
    sep = torch.full((n, n, nl), -1e4, dtype=d)
    sep[torch.arange(n), torch.arange(n)] = 500.0
    c.close(dv_loss_authors(sep), math.log(DV_AUTHORS_EPS) - DV_AUTHORS_SHIFT - math.log(n * (n - 1)),
            "DV (authors) floor at separation = log 1e-6 - 100 - log N(N-1)", 1e-12)
    c.ok(float(dv_loss(sep)) < -1e4, "DV (amdim) at separation unbounded below")


def _functional_mlp(params, x):
    """(W1, b1, W2, b2, ..., Wk, bk) ReLU MLP, ReLU after all but the last."""
    h = x
    k = len(params) // 2
    for i in range(k):
        h = F.linear(h, params[2 * i], params[2 * i + 1])
        if i < k - 1:
            h = F.relu(h)
    return h


class _FnCritic:
    def __init__(self, params):
        self.params = params

    def __call__(self, x):
        return _functional_mlp(self.params, x)


def test_prior(c):
    d = torch.float64
    torch.manual_seed(4)
    disc = MLPCritic(64).to(d)
    n = 6
    p, q = torch.rand(n, 64, dtype=d), torch.sigmoid(torch.randn(n, 64, dtype=d))
    # zero critic: GAN part = 2 log 2, generator = log 2
    zero = MLPCritic(64).to(d)
    with torch.no_grad():
        for prm in zero.parameters():
            prm.zero_()
    loss, parts = discriminator_loss(zero, p, q)
    c.close(parts["gan"], 2 * LOG2, "D loss of a zero critic = 2 log 2", 1e-14)
    c.close(parts["gp"], 0.0, "gp of a zero critic = 0", 1e-14)
    c.close(generator_loss(zero, q), LOG2, "generator term of a zero critic = log 2", 1e-14)
    # the authors' penalty: only the last row, divided by N
    xr = p.clone()
    rowgrads = []
    for r in range(n):
        xi = xr[r:r + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(disc(xi).sum(), xi)
        rowgrads.append(float((g ** 2).sum()))
    c.close(gradient_penalty(disc, xr, "last"), rowgrads[-1] / n, "gp(last) = ||grad D(x_{N-1})||^2 / N", 1e-12)
    c.close(gradient_penalty(disc, xr, "all"), sum(rowgrads) / n, "gp(all) = mean_n ||grad D(x_n)||^2", 1e-12)
    x2 = xr.clone()
    x2[:-1] = torch.rand(n - 1, 64, dtype=d)
    c.close(gradient_penalty(disc, x2, "last"), gradient_penalty(disc, xr, "last"), "gp(last) ignores rows 0..N-2", 1e-14)
    # closed form for a ReLU MLP: grad_x D = W1^T diag(m1) W2^T diag(m2) w3
    l0, l1, l2 = disc.net.layers.layer0.fc, disc.net.layers.layer1.fc, disc.net.layers.layer2
    x = xr[-1]
    m1 = (F.linear(x, l0.weight, l0.bias) > 0).to(d)
    m2 = (F.linear(F.relu(F.linear(x, l0.weight, l0.bias)), l1.weight, l1.bias) > 0).to(d)
    gx = l0.weight.t() @ (m1 * (l1.weight.t() @ (m2 * l2.weight[0])))
    c.close(float((gx ** 2).sum()) / n, gradient_penalty(disc, xr, "last"), "gp(last) = closed-form ReLU gradient", 1e-11)
    # the model's step: D's loss sees q detached; the generator term reaches the encoder only through D
    torch.manual_seed(5)
    model = DIM(28, alpha=0.0, beta=1.0, gamma=0.1, units=64).to(d)
    x = torch.randn(4, 1, 28, 28, dtype=d)
    out = model.losses(x, "jsd", prior=sample_prior(4, dtype=d))
    g_enc = torch.autograd.grad(out["discriminator"], model.encoder_side(), allow_unused=True)
    c.ok(all(g is None for g in g_enc), "D loss gives the encoder no gradient")
    c.ok(model.global_dim is None and model.local_dim is not None, "alpha = 0 builds no DIM(G) nets")


def test_gradchecks(c):
    d = torch.float64
    gc = lambda f, inputs, what: c.ok(torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4), what)  # noqa: E731
    torch.manual_seed(6)
    u = (torch.randn(3, 3, 4, dtype=d) * 2).requires_grad_(True)
    for name, f in ESTIMATORS.items():
        gc(f, (u,), "gradcheck {} on (3, 3, 4) scores".format(name))
    u1 = (torch.randn(4, 4, 1, dtype=d) * 2).requires_grad_(True)
    for name, f in ESTIMATORS.items():
        gc(f, (u1,), "gradcheck {} on (4, 4, 1) scores (DIM(G))".format(name))
    # scores through the embeddings
    lm = torch.randn(3, 5, 4, dtype=d, requires_grad=True)
    gg = torch.randn(3, 5, 1, dtype=d, requires_grad=True)
    gc(lambda a, b: nce_loss(scores(a, b)), (lm, gg), "gradcheck NCE through scores(L, G)")

    # small critic (5 -> 7 -> 6 -> 1) as a function of its parameters
    def small_params():
        shapes = [(7, 5), (7,), (6, 7), (6,), (1, 6), (1,)]
        return tuple((torch.randn(*s, dtype=d) * 0.7).requires_grad_(True) for s in shapes)

    params = small_params()
    p = torch.rand(6, 5, dtype=d)
    q = torch.sigmoid(torch.randn(6, 5, dtype=d))
    for rows in ("last", "all"):
        gc(lambda *w, rows=rows: discriminator_loss(_FnCritic(w), p, q, rows)[0], params,
           "gradcheck D loss with gp({}) w.r.t. D's parameters (double backprop)".format(rows))
        xg = p.clone().requires_grad_(True)

        def gp_of_x(xx, rows=rows):
            out = _functional_mlp(params, xx)
            sel = out[-1] if rows == "last" else out
            (g,) = torch.autograd.grad(sel.sum(), xx, create_graph=True)
            return (g ** 2).sum(1).mean()
        gc(gp_of_x, (xg,), "gradcheck gp({}) w.r.t. its input".format(rows))
    zq = torch.randn(6, 5, dtype=d, requires_grad=True)
    gc(lambda zz, *w: generator_loss(_FnCritic(w), torch.sigmoid(zz)), (zq,) + params,
       "gradcheck generator term w.r.t. z and D's parameters")
    # NDM with a fixed permutation
    zz = torch.randn(8, 5, dtype=d)
    zs, _ = random_permute(zz, torch.Generator().manual_seed(1))
    gc(lambda *w: ndm_losses(_FnCritic(w), zz, zs)[0], params, "gradcheck NDM training loss (KL form)")
    gc(lambda *w: ndm_losses(_FnCritic(w), zz, zs)[1], params, "gradcheck NDM report (DV form)")
    # classifier head: fixed dropout mask, BN in training mode
    head = ClassifierHead((5,), 3, hidden=4).to(d)
    head.train()
    head.dropout.mask = (torch.rand(6, 4, dtype=d) > 0.1).to(d)
    feats = torch.randn(6, 5, dtype=d, requires_grad=True)
    labels = torch.tensor([0, 2, -1, 1, 1, 0])
    gc(lambda f: classifier_loss(head(f), labels), (feats,), "gradcheck classifier head loss w.r.t. features")

    # parameters: functional form of the head
    w0, b0 = head.net.layers.layer0.fc.weight, head.net.layers.layer0.fc.bias
    bn = head.net.layers.layer0.bn
    w1, b1 = head.net.layers.layer1.weight, head.net.layers.layer1.bias
    mask = head.dropout.mask

    def head_fn(W0, B0, G, Bt, W1, B1):
        h = F.linear(feats.detach(), W0, B0) * mask / 0.9
        h = F.batch_norm(h, None, None, G, Bt, True, 0.0, bn.eps)
        return classifier_loss(F.linear(F.relu(h), W1, B1), labels)
    ws = tuple(t.detach().clone().requires_grad_(True) for t in (w0, b0, bn.weight, bn.bias, w1, b1))
    ref = classifier_loss(head(feats), labels)
    c.close(head_fn(*ws), ref, "classifier head = its functional form", 1e-12)
    gc(head_fn, ws, "gradcheck classifier head loss w.r.t. its parameters")
    lin = LinearHead((5,), 3).to(d)
    gc(lambda f: classifier_loss(lin(f), labels), (feats,), "gradcheck linear head loss")


def _directional(c, loss_fn, params, what, eps=1e-6):
    """Central difference of loss_fn along one random direction of `params`
    against the backward pass."""
    gen = torch.Generator().manual_seed(7)
    # each tensor's direction is scaled to the tensor's own size, so that the
    # step moves every pre-activation by a relative ~eps (few ReLU kinks crossed)
    vs = [torch.randn(p.shape, generator=gen, dtype=p.dtype) * max(float(p.detach().abs().mean()), 1e-3)
          for p in params]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    analytic = sum(float((g * v).sum()) for g, v in zip(grads, vs) if g is not None)
    with torch.no_grad():
        for p, v in zip(params, vs):
            p.add_(eps * v)
        fp = float(loss_fn())
        for p, v in zip(params, vs):
            p.sub_(2 * eps * v)
        fm = float(loss_fn())
        for p, v in zip(params, vs):
            p.add_(eps * v)
    numeric = (fp - fm) / (2 * eps)
    c.ok(abs(analytic - numeric) <= 1e-5 * max(1.0, abs(numeric)),
         "{}: analytic {:.10g} vs central difference {:.10g}".format(what, analytic, numeric))


def test_pipeline_gradients(c, sizes):
    """Finite differences through the whole step, per size (float64): the
    encoder loss along a direction of the input (gradcheck) and along a
    random direction of every parameter; D's loss along D's parameters."""
    d = torch.float64
    for size in sizes:
        for est in ("jsd", "nce", "dv"):
            torch.manual_seed(10 + size)
            model = DIM(size, alpha=1.0, beta=1.0, gamma=0.1, units=32).to(d)
            model.train()
            x0 = torch.randn(3, model.encoder.in_ch, size, size, dtype=d)
            prior = sample_prior(3, dtype=d)
            dirs = torch.randn((2,) + x0.shape, dtype=d)
            t = torch.zeros(2, dtype=d, requires_grad=True)

            def f_t(tt):
                return model.losses(x0 + torch.einsum("k,k...->...", tt, dirs), est, prior)["encoder"]
            c.ok(torch.autograd.gradcheck(f_t, (t,), eps=1e-6, atol=1e-6, rtol=1e-4),
                 "{} px {}: gradcheck of the encoder loss along 2 input directions".format(size, est))
            enc_params = model.encoder_side()
            _directional(c, lambda: model.losses(x0, est, prior)["encoder"], enc_params,
                         "{} px {}: encoder loss along a parameter direction".format(size, est))
        dparams = list(model.disc.parameters())
        _directional(c, lambda: model.losses(x0, "jsd", prior)["discriminator"], dparams,
                     "{} px: D loss (gp last row) along a D-parameter direction".format(size))


def selftest(sizes):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    c = Checks()
    counts = test_shapes(c, sizes)
    section = [("shapes", c.n)]
    print("parameter counts (MI units {}, z {}, 10 classes):".format(MI_UNITS, Z_UNITS))
    names = [n for n, _ in counts[sizes[0]]]
    print("  {:<32}".format("module") + "".join("{:>13}".format("{} px".format(s)) for s in sizes))
    for i, nm in enumerate(names):
        print("  {:<32}".format(nm) + "".join("{:>13,}".format(counts[s][i][1]) for s in sizes))
    for name, fn in (("initialisation and tensor names", test_init), ("estimators", test_estimators),
                     ("prior matching", test_prior), ("gradchecks of the losses", test_gradchecks),
                     ("finite differences through the step", lambda cc: test_pipeline_gradients(cc, sizes))):
        before = c.n
        fn(c)
        section.append((name, c.n - before))
    for name, k in section:
        print("  {:<40} {:>3} checks".format(name, k))
    if c.failed:
        print("selftest: {} of {} checks FAILED".format(len(c.failed), c.n))
        return 1
    print("selftest: all {} checks passed".format(c.n))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--selftest", action="store_true", help="run the self-test")
    ap.add_argument("--sizes", default="28,32,64", help="encoder sizes for the self-test")
    args = ap.parse_args(argv)
    if not args.selftest:
        ap.print_help()
        return 2
    return selftest([int(s) for s in args.sizes.split(",")])


if __name__ == "__main__":
    sys.exit(main())
