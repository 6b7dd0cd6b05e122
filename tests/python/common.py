"""Shared by the Python package's tests (tests/python/test_*.py, run by
CTest: tests/python.cmake): exit codes, the fixture dataset, the tools.

Environment (set by CTest): PYTHONPATH (the package in python/),
AMDIM_LIBRARY, AMDIM_LOAD, AMDIM_PACK, AMDIM_PEEK (the built files)."""
import atexit
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

SKIP = 77


def need_torch():
    try:
        import torch  # noqa: F401
    except ImportError as e:
        print("%s: cannot import torch (%s); skipping" % (os.path.basename(sys.argv[0]), e))
        sys.exit(SKIP)


need_torch()
import amdim  # noqa: E402

FAILURES = []


def check(cond, what):
    if cond:
        print("ok: " + what)
    else:
        print("FAIL: " + what)
        FAILURES.append(what)
    return cond


def finish():
    if FAILURES:
        print("%d check(s) failed" % len(FAILURES))
        sys.exit(1)
    print("all checks passed")
    sys.exit(0)


def tool(name):
    path = os.environ.get(name)
    if not path or not os.access(path, os.X_OK):
        print("%s is not set to an executable (run through CTest)" % name)
        sys.exit(1)
    return path


def tmpdir():
    """A scratch directory, removed at exit."""
    d = tempfile.mkdtemp(prefix="amdim-py-")
    atexit.register(shutil.rmtree, d, True)
    return d


def cifar_fixture(directory, n=200, seed=1):
    """A CIFAR-10-style raw split of n 32x32 records (label, then 3072 bytes),
    packed with amdim-pack. Returns the .lmdb path."""
    r = random.Random(seed)
    raw = bytearray()
    for i in range(n):
        raw.append(i % 10)
        raw += r.randbytes(3072)
    src = os.path.join(directory, "data.bin")
    with open(src, "wb") as f:
        f.write(raw)
    out = os.path.join(directory, "data.lmdb")
    subprocess.run([tool("AMDIM_PACK"), "-q", "--threads", "1", "cifar10", src, out], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def peek(data, *, batch, workers, epochs, seed, extra_load=(), extra_peek=()):
    """amdim-load | amdim-peek: its key: value lines as a dict."""
    load = [tool("AMDIM_LOAD"), "--batch", str(batch), "--workers", str(workers), "--epochs", str(epochs),
            "--seed", str(seed)] + list(extra_load) + [data]
    p1 = subprocess.Popen(load, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p2 = subprocess.run([tool("AMDIM_PEEK")] + list(extra_peek), stdin=p1.stdout, capture_output=True, text=True)
    p1.stdout.close()
    p1.wait()
    out = {}
    for line in p2.stdout.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            out[k] = v
    return out


def children(pid):
    """Pids whose parent is pid."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            kids.append(int(d))
    return kids


def alive(pid):
    """pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def gone(pids, timeout=5.0):
    """Waits until none of pids is alive; True if they all went."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def batches(loader):
    """[(epoch, index, records list, digest)] of everything the loader delivers."""
    return [(b.epoch, b.index, b.records.tolist(), b.digest) for b in loader]
