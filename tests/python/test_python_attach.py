#!/usr/bin/env python3
"""Attach mode through a real pipe: `amdim-load DATA | python3 -c ...
amdim.Loader.attach(sys.stdin, seed=S)` delivers what a Loader that starts
amdim-load itself delivers (the same digest), with the seed and epochs
the consumer asks for, and resumes from a state; amdim-load exits 0 after
the consumer's STOP."""
import json
import shlex
import subprocess
import sys

from common import amdim, check, cifar_fixture, finish, tmpdir, tool

d = tmpdir()
data = cifar_fixture(d, n=200)
B, SEED = 16, 3
with amdim.Loader(data, batch=B, workers=2, epochs=2, seed=SEED, verify=True, log=False) as ld:
    direct = [b.digest for b in ld]
    want = ld.delivery()["digest"]

child = """
import json, sys
import amdim
state = json.loads(sys.argv[1]) if len(sys.argv) > 1 else None
ld = amdim.Loader.attach(sys.stdin, seed=%d, epochs=2, state=state, verify=True)
digests = [b.digest for b in ld]
print(json.dumps({"digests": digests, "total": ld.delivery()["digest"], "start": ld.start, "seed": ld.seed}))
""" % SEED


def pipeline(state=None):
    # amdim-load's own default seed (0) and epochs (1): the consumer's request wins
    load = [tool("AMDIM_LOAD"), "--batch", str(B), "--workers", "1", data]
    py = [sys.executable, "-c", child] + ([json.dumps(state)] if state else [])
    cmd = "%s 2>/dev/null | %s; echo \"rc=${PIPESTATUS[0]},${PIPESTATUS[1]}\" >&2" % (
        " ".join(map(shlex.quote, load)), " ".join(map(shlex.quote, py)))
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    rcs = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "?"
    try:
        return json.loads(p.stdout), rcs
    except ValueError:
        print(p.stdout, p.stderr)
        return None, rcs


got, rcs = pipeline()
check(got is not None and got["digests"] == direct and got["total"] == want,
      "attached through a pipe: the same %d batches as amdim.Loader, digest %016x" % (len(direct), want))
check(got is not None and got["seed"] == SEED, "the consumer's seed was used")
check(rcs == "rc=0,0", "amdim-load and the consumer exit 0 (%s)" % rcs)

state = {"version": 1, "seed": SEED, "epoch": 1, "batch": 4, "epochs": 2, "batch_size": B}
got, rcs = pipeline(state)
check(got is not None and got["start"] == [1, 4] and got["digests"] == direct[12 + 4:],
      "attached with a state: resumes at epoch 1 batch 4 with the same bytes")
check(rcs == "rc=0,0", "exits 0 again (%s)" % rcs)
finish()
