#!/usr/bin/env python3
"""The PyTorch peer of our trainer: one full AMDIM training step as the
authors train, timed. The model is tests/ref/amdim_torch.py (the one the C
trainer is checked against). Per step: two random uint8 NHWC views already
on the device are normalised there (as our trainer receives them), both go
through the encoder, the three NCE tasks 1t5, 1t7, 5t5 (both directions,
reg, tclip 20; scores in float32), both online probes on detached r1 of both
views (docs/spec.md §6.2 classifier loss), backward, and Adam (lr 2e-4, betas
0.8/0.999, weight decay 1e-5 as L2).

    torch_amdim.py [--config NAME[,NAME...]] [--batch B]
                   [--device cpu|cuda] [--mode eager|compile|both]
                   [--precision bf16|fp32] [--warmup N] [--steps N]
                   [--ours PAIRS_PER_S] [--csv]

bf16 = torch.autocast(bfloat16) with channels_last; fp32 = plain NCHW float32
(PyTorch's default TF32 settings). Defaults: cuda when available, bf16 on
cuda and fp32 on cpu, batch 480 (tiny: 16). Prints a '#' header, then one
line per mode: pairs/s, step ms, peak memory (cuda), the last step's loss
(a sanity check), and the ours/torch ratio when --ours is given.
"""
import argparse
import os
import sys
import time

try:
    import torch
except ImportError as e:  # the peer needs PyTorch; without it there is nothing to measure (77: skipped)
    print("torch_amdim: cannot import torch (%s)" % e)
    sys.exit(77)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
import amdim_torch as at  # noqa: E402

# name: size, ndf, n_rkhs, depth, classes
CONFIGS = {
    "cifar-small": (32, 128, 1024, 10, 10),
    "stl10": (64, 192, 1536, 8, 10),
    "imagenet-small": (128, 192, 1536, 8, 1000),
    "tiny": (32, 8, 32, 1, 10),
}
# per input size: mean, std (0..1 scale), docs/spec.md §3.7
NORM = {
    32: ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    64: ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27)),
    128: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
MLP_HIDDEN = 1024
TCLIP = 20.0


def run_mode(mode, cfg, a, dev):
    """Builds model and optimiser, runs warm-up + timed steps; returns
    (pairs/s, step ms, peak MiB or None, last loss), or a string saying why not."""
    size, ndf, n_rkhs, depth, classes = cfg
    if mode == "compile" and not hasattr(torch, "compile"):
        return f"torch.compile unavailable in torch {torch.__version__}"
    bf16 = a.precision == "bf16"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    torch.manual_seed(0)
    model = at.Model(size, ndf, n_rkhs, depth, 0, classes, MLP_HIDDEN)
    at.init_weights(model)
    model = model.to(dev, memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.8, 0.999), eps=1e-8, weight_decay=1e-5)
    mean = torch.tensor(NORM[size][0], device=dev).view(1, 3, 1, 1)
    std = torch.tensor(NORM[size][1], device=dev).view(1, 3, 1, 1)
    B = a.batch

    def loss_fn(v1, v2, labels, idx1, idx2):
        x1, x2 = (((v.permute(0, 3, 1, 2).float() / 255 - mean) / std).contiguous(memory_format=fmt) for v in (v1, v2))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            return at.step_losses(model, x1, x2, labels, idx1, idx2, None, TCLIP, "nce")[0]

    if mode == "compile":
        loss_fn = torch.compile(loss_fn)
    views = torch.randint(0, 256, (2, B, size, size, 3), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, classes, (B,), device=dev)

    def step():
        idx = torch.randint(0, 25, (2, B), device=dev)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(views[0], views[1], labels, idx[0], idx[1])
        loss.backward()
        opt.step()
        return loss

    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(a.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return B * a.steps / dt, 1e3 * dt / a.steps, peak, loss.item()


def main():
    ap = argparse.ArgumentParser(description="PyTorch AMDIM training-step benchmark (our trainer's peer)")
    ap.add_argument("--config", default="imagenet-small",
                    help="one or more of %s, comma-separated (one process: torch starts once)" % ", ".join(sorted(CONFIGS)))
    ap.add_argument("--batch", type=int, help="pairs per step (default 480, tiny: 16)")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="default cuda when available")
    ap.add_argument("--mode", choices=["eager", "compile", "both"], default="eager")
    ap.add_argument("--precision", choices=["bf16", "fp32"], help="default bf16 on cuda, fp32 on cpu")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--ours", type=float, help="our trainer's pairs/s: print ours/torch")
    ap.add_argument("--csv", action="store_true")
    a = ap.parse_args()
    names = a.config.split(",")
    for n in names:
        if n not in CONFIGS:
            sys.exit("torch_amdim: unknown config %s (known: %s)" % (n, ", ".join(sorted(CONFIGS))))
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.device == "cuda" and not torch.cuda.is_available():
        print("torch_amdim: CUDA is not available")
        sys.exit(77)
    a.precision = a.precision or ("bf16" if a.device == "cuda" else "fp32")
    if (a.batch is not None and a.batch < 2) or a.steps < 1 or a.warmup < 0:
        sys.exit("torch_amdim: batch >= 2, steps >= 1, warmup >= 0")
    batch_given = a.batch
    for n in names:
        a.config = n
        a.batch = batch_given or (16 if n == "tiny" else 480)
        run_config(a)
        sys.stdout.flush()


def run_config(a):
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(dev)
        tf32 = f", tf32 matmul {torch.backends.cuda.matmul.allow_tf32} conv {torch.backends.cudnn.allow_tf32}"
    else:
        name, tf32 = f"cpu, {torch.get_num_threads()} torch threads", ""
    cfg = CONFIGS[a.config]
    size, ndf, n_rkhs, depth, classes = cfg
    prec = "bf16 autocast + channels_last" if a.precision == "bf16" else "fp32" + tf32
    print(f"# torch {torch.__version__}, {name}")
    print(f"# config {a.config} ({size} px, ndf {ndf}, n_rkhs {n_rkhs}, depth {depth}, {classes} classes), "
          f"batch {a.batch}, {prec}, {a.warmup} warm-up + {a.steps} timed steps")
    if a.csv:
        print("mode,pairs_per_s,step_ms,peak_mib,last_loss,ours_over_torch")
    else:
        print(f"{'mode':<8} {'pairs/s':>10} {'step ms':>10} {'peak MiB':>10} {'last loss':>10} {'ours/torch':>11}")
    modes = ["eager", "compile"] if a.mode == "both" else [a.mode]
    for mode in modes:
        r = run_mode(mode, cfg, a, dev)
        if isinstance(r, str):
            print(f"# {mode}: {r}")
            continue
        rate, ms, peak, loss = r
        ratio = a.ours / rate if a.ours else None
        if a.csv:
            print(f"{mode},{rate:.2f},{ms:.3f},{'' if peak is None else f'{peak:.0f}'},{loss:.4f},"
                  f"{'' if ratio is None else f'{ratio:.3f}'}")
        else:
            print(f"{mode:<8} {rate:>10.1f} {ms:>10.2f} {'-' if peak is None else f'{peak:.0f}':>10} {loss:>10.4f} "
                  f"{'-' if ratio is None else f'{ratio:.2f}x':>11}")
        if dev.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
