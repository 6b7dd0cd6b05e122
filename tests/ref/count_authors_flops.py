#!/usr/bin/python3
"""Writes tests/ref/authors_flops.txt: the FLOPs (2 x multiply-adds) of one
training step of the authors' PyTorch AMDIM model (Philip-Bachman/amdim-
public), counted from the operations their code issues, for the configs
tests/test_flops.c compares amdim_model_step_flops against.

    count_authors_flops.py [--commit HASH] AUTHORS_DIR [OUT]

AUTHORS_DIR is a checkout of the authors' repository; their model.py and
costs.py are imported from there, unchanged (apex is stubbed, and on the CPU
their .cuda() calls are the identity and one "GPU" is counted). One step is
what their task_self_supervised.py does per batch: model(x1, x2,
class_only=False), the three NCE losses, the score regulariser and both
probes' cross-entropy on both views, then backward. A TorchDispatchMode
counts every convolution (forward, and each of input and weight gradient
its backward computes) and every mm / addmm / bmm, 2 x multiply-adds, and
returns zeros instead of computing them (only shapes matter). Element-wise
work is not counted, as amdim_model_step_flops does not count it.

The count is a polynomial of degree 2 in the batch B (convolutions and
probes are linear in B, the NCE score matrices B x B L): it is counted at
B = 2, 4 and 6 and the polynomial through those three points is evaluated
at each config's batch - exact, and what makes ImageNet-small at 480
countable on a CPU. Needs Debian's python3-torch.

Output: comment lines (#), then one line per config:
    <name> <encoder_size> <ndf> <n_rkhs> <n_depth> <n_classes> <batch> <flops>
"""
import contextlib
import os
import subprocess
import sys
import types

# name, encoder_size, ndf, n_rkhs, n_depth, n_classes, batch
CONFIGS = [
    ("tiny", 32, 16, 64, 1, 10, 32),  # bench_trainer --size 32 --ndf 16 --n-rkhs 64 --depth 1 --batch 32
    ("tiny-bn-64px", 64, 8, 64, 2, 10, 16),
    ("cifar-small", 32, 128, 1024, 10, 10, 480),
    ("stl10", 64, 192, 1536, 8, 10, 480),
    ("imagenet-small", 128, 192, 1536, 8, 1000, 480),
]


def stub_apex():
    apex = types.ModuleType("apex")
    fp16 = types.ModuleType("apex.fp16_utils")

    class FP16_Optimizer:  # only used in an isinstance test
        pass

    fp16.FP16_Optimizer = FP16_Optimizer
    apex.fp16_utils = fp16
    apex.amp = types.ModuleType("apex.amp")
    sys.modules.update({"apex": apex, "apex.fp16_utils": fp16, "apex.amp": apex.amp})


def authors_commit(authors_dir, given):
    if given:
        return given
    try:
        out = subprocess.run(["git", "-C", authors_dir, "log", "-1", "--format=%H %cd"],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def prod(xs):
    p = 1
    for x in xs:
        p *= int(x)
    return p


def main(argv):
    commit = None
    if len(argv) >= 2 and argv[0] == "--commit":
        commit, argv = argv[1], argv[2:]
    if len(argv) not in (1, 2):
        sys.exit(__doc__)
    authors_dir = os.path.abspath(argv[0])
    out_path = argv[1] if len(argv) == 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                           "authors_flops.txt")
    try:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:
        sys.exit("count_authors_flops: python3-torch is not installed")
    stub_apex()
    torch.Tensor.cuda = lambda self, *a, **k: self  # their costs.py: torch.eye(n).cuda()
    torch.cuda.device_count = lambda: 1
    sys.dont_write_bytecode = True  # leave AUTHORS_DIR as it is
    sys.path.insert(0, authors_dir)
    import model as authors_model  # their model.py (imports their costs.py)
    from costs import loss_xent

    aten = torch.ops.aten

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.flops = 0

        def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is aten.convolution.default:
                x, w = args[0], args[1]
                stride, padding, dilation, groups = args[3], args[4], args[5], args[8]
                assert groups == 1, "grouped convolution"
                out = [x.shape[0], w.shape[0]]
                for i in range(2):
                    k = dilation[i] * (w.shape[2 + i] - 1) + 1
                    out.append((x.shape[2 + i] + 2 * padding[i] - k) // stride[i] + 1)
                self.flops += 2 * prod(out) * prod(w.shape[1:])
                return torch.zeros(out, dtype=x.dtype)
            if func is aten.convolution_backward.default:
                gy, x, w, mask = args[0], args[1], args[2], args[10]
                assert args[9] == 1, "grouped convolution"
                conv = 2 * prod(gy.shape) * prod(w.shape[1:])
                self.flops += conv * (int(mask[0]) + int(mask[1]))
                return (torch.zeros(x.shape) if mask[0] else None, torch.zeros(w.shape) if mask[1] else None,
                        torch.zeros(w.shape[0]) if mask[2] else None)
            if func is aten.mm.default:
                a, b = args
                self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
                return torch.zeros(a.shape[0], b.shape[1], dtype=a.dtype)
            if func is aten.addmm.default:
                c, a, b = args[0], args[1], args[2]
                self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
                return torch.zeros(a.shape[0], b.shape[1], dtype=a.dtype)
            if func is aten.bmm.default:
                a, b = args
                self.flops += 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
                return torch.zeros(a.shape[0], a.shape[1], b.shape[2], dtype=a.dtype)
            return func(*args, **kwargs)

    def step_flops(m, size, classes, B):
        g = torch.Generator().manual_seed(B)
        x1 = torch.rand(B, 3, size, size, generator=g)
        x2 = torch.rand(B, 3, size, size, generator=g)
        labels = torch.randint(0, classes, (B,), generator=g)
        labels = torch.cat([labels, labels])
        m.zero_grad()
        counter = Count()
        with counter:
            res = m(x1=x1, x2=x2, class_only=False)  # as task_self_supervised.py's _train
            mlp, lin = res["class"]
            loss = res["g2l_1t5"] + res["g2l_1t7"] + res["g2l_5t5"] + res["lgt_reg"]
            loss = loss + loss_xent(mlp, labels) + loss_xent(lin, labels)
            loss.backward()
        return counter.flops

    torch.set_default_dtype(torch.float32)
    lines = [
        "# FLOPs (2 x multiply-adds) of one training step of the authors' AMDIM model, for",
        "# tests/test_flops.c. Generated by",
        "#   /usr/bin/python3 tests/ref/count_authors_flops.py%s AUTHORS_DIR" % (" --commit " + commit if commit else ""),
        "# with AUTHORS_DIR a checkout (git archive) of Philip-Bachman/amdim-public at commit",
        "#   %s," % authors_commit(authors_dir, commit),
        "# torch %s: convolutions (forward, input and weight gradients) and mm / addmm / bmm counted" % torch.__version__,
        "# at batch 2, 4, 6 and the quadratic in the batch through them evaluated at <batch>.",
        "# <name> <encoder_size> <ndf> <n_rkhs> <n_depth> <n_classes> <batch> <flops>",
    ]
    for name, size, ndf, rkhs, depth, classes, batch in CONFIGS:
        with contextlib.redirect_stdout(sys.stderr):  # their constructor prints
            m = authors_model.Model(ndf, classes, rkhs, tclip=20., n_depth=depth, encoder_size=size, use_bn=True)
        m.train()
        f = [step_flops(m, size, classes, b) for b in (2, 4, 6)]
        # Lagrange through (2, f0), (4, f1), (6, f2): exact for a quadratic
        B = batch
        total = (f[0] * (B - 4) * (B - 6) / 8 - f[1] * (B - 2) * (B - 6) / 4 + f[2] * (B - 2) * (B - 4) / 8)
        lines.append("%s %d %d %d %d %d %d %.0f" % (name, size, ndf, rkhs, depth, classes, batch, total))
        print("count_authors_flops: %s: %.4g GFLOP per step at batch %d" % (name, total / 1e9, batch), file=sys.stderr)
    with open(out_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("count_authors_flops: wrote %s" % out_path)


if __name__ == "__main__":
    main(sys.argv[1:])
