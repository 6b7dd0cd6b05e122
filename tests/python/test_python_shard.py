#!/usr/bin/env python3
"""Data parallel: 2 processes with shard "0/2" and "1/2" receive disjoint
halves of every global batch that together are exactly one unsharded
process's batch - the same records in the same order, the same view bytes
- and the same number of batches; shard="auto" takes rank and size from
torch.distributed when it is initialised (2 processes over gloo on the
loopback), else from the MPI / Slurm environment."""
import json
import os
import subprocess
import sys

from common import amdim, check, cifar_fixture, finish, tmpdir

d = tmpdir()
data = cifar_fixture(d, n=200)
B, E, SEED = 16, 2, 9

child = """
import hashlib, json, os, sys
import amdim
data, shard, out = sys.argv[1], sys.argv[2], sys.argv[3]
if shard == "ddp":
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="file://" + sys.argv[4], rank=int(sys.argv[5]), world_size=2)
    shard = "auto"
elif shard == "none":
    shard = None
res = []
with amdim.Loader(data, batch=%d, workers=2, epochs=%d, seed=%d, shard=shard, log=False) as ld:
    for b in ld:
        views = [hashlib.sha1(b.view1[k].numpy().tobytes() + b.view2[k].numpy().tobytes()).hexdigest()
                 for k in range(len(b))]
        res.append([b.epoch, b.index, b.records.tolist(), views])
    info = {"shard": ld.shard, "len": len(ld), "local_batch": ld.local_batch}
json.dump({"batches": res, "info": info}, open(out, "w"))
""" % (B, E, SEED)


def run(shards, ddp=False):
    outs, procs = [], []
    store = os.path.join(d, "store-%d" % len(os.listdir(d)))
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
    for r, shard in enumerate(shards):
        out = os.path.join(d, "out-%s-%d.json" % ("ddp" if ddp else shard.replace("/", "of"), r))
        args = [sys.executable, "-c", child, data, "ddp" if ddp else shard, out]
        if ddp:
            args += [store, str(r)]
        procs.append(subprocess.Popen(args, env=env))
        outs.append(out)
    ok = all(p.wait(timeout=120) == 0 for p in procs)
    return [json.load(open(o)) for o in outs] if ok else None


whole = run(["none"])[0]
check(whole["info"]["shard"] == [0, 1] and len(whole["batches"]) == E * whole["info"]["len"],
      "one process: %d batches of %d" % (len(whole["batches"]), B))
for label, ranks in (("shard 0/2, 1/2", run(["0/2", "1/2"])), ("torch.distributed, shard auto", run(["a", "b"], ddp=True))):
    if not check(ranks is not None, "%s: both processes ran" % label):
        continue
    r0, r1 = ranks
    check(r0["info"]["shard"] == [0, 2] and r1["info"]["shard"] == [1, 2] and r0["info"]["local_batch"] == B // 2,
          "%s: ranks 0 and 1 of 2, %d pairs each per batch" % (label, B // 2))
    check(len(r0["batches"]) == len(r1["batches"]) == len(whole["batches"]) and r0["info"]["len"] == whole["info"]["len"],
          "%s: every rank gets the same number of batches (%d)" % (label, len(r0["batches"])))
    same, disjoint = True, True
    for a, b, w in zip(r0["batches"], r1["batches"], whole["batches"]):
        disjoint &= not set(a[2]) & set(b[2])
        same &= a[:2] == b[:2] == w[:2] and a[2] + b[2] == w[2] and a[3] + b[3] == w[3]
    check(disjoint, "%s: the two shares of every batch are disjoint" % label)
    check(same, "%s: together they are the one process's batches: records, order and view bytes" % label)

os.environ.update(SLURM_PROCID="1", SLURM_NTASKS="3")
check(amdim.loader._resolve_shard("auto") == (1, 3), "shard auto without torch.distributed: Slurm's rank 1 of 3")
finish()
