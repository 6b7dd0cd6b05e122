#!/usr/bin/env python3
"""Resume: a Loader started with state= (Loader.state_dict() of a stopped
run) continues with exactly the next batch and delivers what the rest of an
uninterrupted run would have, byte for byte (per-batch digests), in the
middle of an epoch, at an epoch boundary, and through a JSON round trip of
the state; a state at the end gives no batches; a state of another batch
size is refused."""
import itertools
import json

from common import amdim, batches, check, cifar_fixture, finish, tmpdir

d = tmpdir()
data = cifar_fixture(d, n=200)
B, E, SEED = 16, 2, 5
kw = dict(batch=B, workers=2, epochs=E, seed=SEED, verify=True, log=False)
with amdim.Loader(data, **kw) as ld:
    full = batches(ld)
    final = ld.state_dict()
check(len(full) == 24, "the uninterrupted run: 24 batches")
check(final["epoch"] == E and final["batch"] == 0, "its final state is the end: %s" % final)

for stop in (7, 12, 17):  # mid epoch 0, the boundary, mid epoch 1
    with amdim.Loader(data, **kw) as ld:
        head = [(b.epoch, b.index, b.records.tolist(), b.digest) for b in itertools.islice(ld, stop)]
        state = json.loads(json.dumps(ld.state_dict()))  # what a checkpoint would hold
    e, i = full[stop][0], full[stop][1]
    check(state["epoch"] == e and state["batch"] == i and state["seed"] == SEED,
          "stopped after %d batches: the state points at epoch %d batch %d" % (stop, e, i))
    with amdim.Loader(data, state=state, **kw) as ld:
        check(ld.start == (e, i), "resumed at %s" % (ld.start,))
        tail = batches(ld)
    check(head + tail == full, "stopped after %d, resumed: the same %d batches, same bytes" % (stop, len(full)))

with amdim.Loader(data, batch=B, workers=1, verify=True, log=False, state=state) as ld:  # no epochs, no seed
    check(batches(ld) == full[17:], "without epochs= and seed= the state's are used")

with amdim.Loader(data, state=final, **kw) as ld:
    check(batches(ld) == [], "a state at the end of the run gives no batches")

# a break and a second loop over the same Loader continue too
with amdim.Loader(data, **kw) as ld:
    first = []
    for b in ld:
        first.append((b.epoch, b.index, b.records.tolist(), b.digest))
        if len(first) == 5:
            break
    rest = batches(ld)
check(first + rest == full, "iterating again after a break continues with the next batch")

try:
    amdim.Loader(data, state=final, batch=32, epochs=E, seed=SEED, log=False)
    check(False, "a state of batch 16 is refused for batch 32")
except ValueError as e:
    check("batch 16" in str(e), "a state of batch 16 is refused for batch 32: %s" % e)
finish()
