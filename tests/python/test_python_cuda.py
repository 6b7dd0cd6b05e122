#!/usr/bin/env python3
"""device="cuda" (exit 77 where torch has no CUDA device): the rings are
page-locked, each batch arrives on the GPU through the side stream with
the same bytes as the CPU loader's views (the same digest, which the
delivery check takes from the ring before the copy), labels and records on
the device too; amdim.normalize on the device equals the CPU one."""
import torch

from common import SKIP, amdim, check, cifar_fixture, finish, tmpdir

if not torch.cuda.is_available():
    print("test_python_cuda: no CUDA device for torch (%s); skipping" % torch.__version__)
    raise SystemExit(SKIP)

d = tmpdir()
data = cifar_fixture(d, n=200)
kw = dict(batch=16, workers=2, epochs=2, seed=4, verify=True, log=False)
with amdim.Loader(data, **kw) as ld:
    cpu = [(b.view1.clone(), b.view2.clone(), b.labels.clone(), b.records.clone()) for b in ld]
    want = ld.delivery()["digest"]
with amdim.Loader(data, device="cuda", **kw) as ld:
    same, on_device, n = True, True, 0
    for b, (v1, v2, lab, rec) in zip(ld, cpu):
        on_device &= all(t.is_cuda for t in (b.view1, b.view2, b.labels, b.records))
        x = amdim.normalize(b.view1, device="cuda")
        torch.cuda.synchronize()
        same &= torch.equal(b.view1.cpu(), v1) and torch.equal(b.view2.cpu(), v2) and \
            torch.equal(b.labels.cpu(), lab) and torch.equal(b.records.cpu(), rec)
        same &= bool((x.cpu() - amdim.normalize(v1)).abs().max() < 1e-5)
        n += 1
    got = ld.delivery()["digest"]
check(n == len(cpu), "device=cuda: every batch (%d)" % n)
check(on_device, "views, labels and records are on the GPU")
check(same, "the same bytes as the CPU loader; normalize on the GPU equals the CPU's")
check(got == want, "the same digest")
finish()
