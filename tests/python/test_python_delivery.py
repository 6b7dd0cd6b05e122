#!/usr/bin/env python3
"""amdim.Loader delivers every record exactly once per epoch, over 2 epochs
with 1 and 2 workers, as zero-copy views of the ring slots, and the same
bytes as amdim-peek: the digest of everything delivered (amdim_delivery_add
on each batch, as amdim-peek computes it) equals amdim-peek's for the same
seed, for any worker count."""
import io
import sys

from common import amdim, check, cifar_fixture, finish, peek, tmpdir

import torch

d = tmpdir()
data = cifar_fixture(d, n=200)
B, E, SEED = 16, 2, 3
digests = {}
for workers in (1, 2):
    with amdim.Loader(data, batch=B, workers=workers, epochs=E, seed=SEED, verify=True, log=False) as ld:
        check(len(ld) == 200 // B, "workers %d: len() is the batches per epoch (%d)" % (workers, len(ld)))
        rings = [(base, base + n) for base, n, _ in ld._rings]
        seen = [set() for _ in range(E)]
        order, dup, shapes_ok, alias_ok, dtypes_ok = [], 0, True, True, True
        for b in ld:
            order.append((b.epoch, b.index))
            recs = b.records.tolist()
            dup += len(seen[b.epoch] & set(recs))
            seen[b.epoch] |= set(recs)
            shapes_ok &= b.view1.shape == (B, 32, 32, 3) and b.view2.shape == (B, 32, 32, 3) and b.labels.shape == (B,)
            dtypes_ok &= b.view1.dtype == torch.uint8 and b.labels.dtype == torch.int64 and b.records.dtype == torch.int64
            dtypes_ok &= bool(((b.labels >= 0) & (b.labels < 10)).all()) and bool((b.labels == b.records % 10).all())
            for v in (b.view1, b.view2):  # zero-copy: the tensors point into a ring
                p = v.data_ptr()
                alias_ok &= any(lo <= p and p + v.numel() <= hi for lo, hi in rings)
        counts = ld.delivery()
        check(order == [(e, i) for e in range(E) for i in range(len(ld))], "workers %d: (epoch, index) order" % workers)
        check(dup == 0 and all(len(s) == len(ld) * B for s in seen),
              "workers %d: every epoch holds %d distinct records, none twice" % (workers, len(ld) * B))
        check(shapes_ok and dtypes_ok, "workers %d: shapes (B, 32, 32, 3), uint8 views, int64 labels and records" % workers)
        check(alias_ok, "workers %d: view1 and view2 alias the ring memory" % workers)
        check(counts["duplicates"] == 0 and counts["missing"] == 0 and counts["mismatched"] == 0 and
              counts["batches"] == E * len(ld) and counts["epochs"] == E,
              "workers %d: the C delivery check agrees: %s" % (workers, counts))
        digests[workers] = counts["digest"]
    check(ld.closed, "workers %d: closed at the end of the with block" % workers)

ref = peek(data, batch=B, workers=2, epochs=E, seed=SEED)
check(ref.get("duplicates") == "0" and ref.get("missing") == "0", "amdim-peek ran: %s" % ref)
check(digests[1] == digests[2], "the digest does not depend on the worker count")
check("%016x" % digests[1] == ref.get("digest"),
      "the digest equals amdim-peek's: %016x vs %s" % (digests[1], ref.get("digest")))

# another seed gives other bytes
with amdim.Loader(data, batch=B, workers=2, epochs=1, seed=SEED + 1, verify=True, log=False) as ld:
    for _ in ld:
        pass
    check("%016x" % ld.delivery()["digest"] != ref.get("digest"), "another seed, another digest")

# the progress bar (tqdm), asked for: total batches, then done
try:
    import tqdm  # noqa: F401
    have_tqdm = True
except ImportError:
    have_tqdm = False
if have_tqdm:
    err, sys.stderr = sys.stderr, io.StringIO()
    try:
        with amdim.Loader(data, batch=B, workers=1, epochs=1, seed=SEED, progress=True, log=False) as ld:
            n = sum(1 for _ in ld)
        bar = sys.stderr.getvalue()
    finally:
        sys.stderr = err
    check(n == 12 and "12/12" in bar, "progress=True draws a tqdm bar to 12/12")
else:
    print("tqdm is not installed: the progress bar is not checked")
finish()
