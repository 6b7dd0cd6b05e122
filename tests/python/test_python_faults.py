#!/usr/bin/env python3
"""Faults and lifetime: a worker killed mid-run raises amdim.LoaderError
naming the worker, its signal and the batch within 5 s, and leaves no
process behind; Ctrl-C (SIGINT to the process group, as a terminal sends
it, or to Python alone) and SIGKILL of the Python process end amdim-load
and its workers; close(), a with block and garbage collection end them
too; bad arguments and a file that is not a dataset fail clearly."""
import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

from common import amdim, check, children, cifar_fixture, finish, gone, tmpdir

d = tmpdir()
data = cifar_fixture(d, n=200)
kw = dict(batch=16, workers=2, epochs=1000, seed=1, log=False, slots=2)

# ---- a worker killed by SIGKILL -------------------------------------------
ld = amdim.Loader(data, **kw)
pid = ld.loader_pid
it = iter(ld)
for _ in range(3):
    next(it)
workers = children(pid)
check(len(workers) == 2, "amdim-load (pid %d) has 2 workers: %s" % (pid, workers))
os.kill(workers[1], signal.SIGKILL)
t0 = time.monotonic()
err = None
try:
    for _ in range(100000):
        next(it)
except amdim.LoaderError as e:
    err = e
dt = time.monotonic() - t0
check(err is not None and dt < 5.0, "a killed worker raises amdim.LoaderError within 5 s (%.2f s)" % dt)
if err is not None:
    print("  the error: %s" % err.message)
    check(err.status == "worker" and err.signal == 9 and err.worker is not None and err.batch is not None,
          "it names the worker (%s), signal %s and the batch (epoch %s batch %s)"
          % (err.worker, err.signal, err.epoch, err.batch))
check(ld.closed, "the Loader is closed after the fault")
check(gone([pid] + workers), "amdim-load and its workers are gone")

# ---- close(), with, garbage collection --------------------------------------
ld = amdim.Loader(data, **kw)
pid, workers = ld.loader_pid, None
next(iter(ld))
workers = children(pid)
ld.close()
ld.close()
check(gone([pid] + workers), "close() ends amdim-load and its workers (and a second close() is harmless)")
try:
    next(iter(ld))
    check(False, "iterating a closed Loader raises")
except amdim.LoaderError as e:
    check("closed" in str(e), "iterating a closed Loader raises: %s" % e)

with amdim.Loader(data, **kw) as ld:
    pid = ld.loader_pid
    next(iter(ld))
    workers = children(pid)
check(gone([pid] + workers), "leaving a with block ends them")

ld = amdim.Loader(data, **kw)
pid = ld.loader_pid
next(iter(ld))
workers = children(pid)
del ld
gc.collect()
check(gone([pid] + workers), "garbage collection of the Loader ends them")

# ---- Ctrl-C and a killed Python process -------------------------------------
child = textwrap.dedent("""
    import sys, time
    import amdim
    ld = amdim.Loader(sys.argv[1], batch=16, workers=2, epochs=1000, seed=1, log=False, slots=2)
    n = 0
    for b in ld:
        n += 1
        if n == 2:
            print(ld.loader_pid, flush=True)
        time.sleep(0.005)
""")


def run_child(how):
    p = subprocess.Popen([sys.executable, "-c", child, data], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)  # its own process group, like a terminal's job
    line = p.stdout.readline()
    if not line.strip():
        p.kill()
        print(p.stderr.read())
        return check(False, "%s: the child started" % how)
    pid = int(line)
    workers = children(pid)
    time.sleep(0.3)
    if how == "SIGINT to the process group":
        os.killpg(p.pid, signal.SIGINT)
    elif how == "SIGINT to Python":
        os.kill(p.pid, signal.SIGINT)
    else:
        os.kill(p.pid, signal.SIGKILL)
    try:
        _, errout = p.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        _, errout = p.communicate()
        return check(False, "%s: the Python process did not end within 10 s" % how)
    if how != "SIGKILL to Python":
        check("KeyboardInterrupt" in errout, "%s: Python stops with KeyboardInterrupt (exit %s)" % (how, p.returncode))
    check(len(workers) == 2 and gone([pid] + workers), "%s: amdim-load (pid %d) and its workers are gone" % (how, pid))


for how in ("SIGINT to the process group", "SIGINT to Python", "SIGKILL to Python"):
    run_child(how)

# ---- bad arguments, a file that is not a dataset -----------------------------
try:
    amdim.Loader(os.path.join(d, "nothing.lmdb"))
    check(False, "a missing dataset raises")
except FileNotFoundError as e:
    check(True, "a missing dataset raises FileNotFoundError: %s" % e)
try:
    amdim.Loader(data, decode="fast")
    check(False, "an unknown decode mode raises")
except ValueError as e:
    check(True, "an unknown decode mode raises ValueError: %s" % e)
bogus = os.path.join(d, "bogus.lmdb")
with open(bogus, "w") as f:
    f.write("not a dataset\n")
try:
    amdim.Loader(bogus, batch=16, workers=1, log=False)
    check(False, "a file that is not a dataset raises")
except amdim.LoaderError as e:
    check("amdim-load said" in str(e) and "bogus.lmdb" in str(e),
          "a file that is not a dataset raises LoaderError with amdim-load's reason: %s" % str(e).replace("\n", " | "))
r, w = os.pipe()
os.write(w, b"hello\n")
os.close(w)
try:
    amdim.Loader.attach(r, seed=1)
    check(False, "attaching to a pipe that is not amdim-load's raises")
except amdim.LoaderError as e:
    check("not amdim-load" in str(e), "attaching to a pipe that is not amdim-load's raises: %s" % e)
os.close(r)
finish()
