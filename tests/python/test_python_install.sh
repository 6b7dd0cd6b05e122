#!/bin/sh
# `pip install ./python` as docs/python.md gives it, offline: a fresh venv that
# sees the system's PyTorch (--system-site-packages), the build backend from
# Debian's python3-setuptools / python3-wheel (--no-build-isolation, no index),
# CMake building libamdim_loader.so and amdim-load into a scratch directory;
# then, from outside the repository and without AMDIM_* variables, the
# installed package finds its native files and delivers one epoch.
#   test_python_install.sh PYTHON REPO DATA_MAKER
# Exit 77 (skip) without torch or without the venv module.
set -eu
py=$1 repo=$2
"$py" -c "import torch" 2>/dev/null || { echo "test_python_install: no torch in $py; skipping"; exit 77; }
"$py" -c "import ensurepip, venv" 2>/dev/null || { echo "test_python_install: no venv module (python3-venv); skipping"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m venv --system-site-packages "$tmp/venv"
# a copy of the package directory: the install writes build/ and *.egg-info beside setup.py
mkdir "$tmp/src"
cp -r "$repo/python" "$tmp/src/python"
rm -rf "$tmp/src/python/build" "$tmp/src/python/amdim.egg-info" "$tmp/src/python/amdim/_native"
# setup.py looks one directory up for the CMake project
for f in "$repo"/*; do
    case $(basename "$f") in python | build | build-*) ;; *) ln -s "$f" "$tmp/src/" ;; esac
done
env -u AMDIM_LIBRARY -u AMDIM_LOAD PIP_NO_INDEX=1 AMDIM_CMAKE_BUILD_DIR="$tmp/cmake" \
    "$tmp/venv/bin/python3" -m pip install --quiet --no-build-isolation "$tmp/src/python" || {
    echo "test_python_install: FAIL: pip install"; exit 1; }
cd "$tmp"
env -u AMDIM_LIBRARY -u AMDIM_LOAD -u PYTHONPATH "$tmp/venv/bin/python3" - "$3" <<'PY' || { echo "test_python_install: FAIL"; exit 1; }
import os, subprocess, sys
import amdim, amdim._lib as L
assert L.library_path().startswith(sys.prefix), L.library_path()
assert L.amdim_load_path().startswith(sys.prefix), L.amdim_load_path()
raw = bytearray()
for i in range(64):
    raw.append(i % 10)
    raw += bytes((i * 7 + j) % 251 for j in range(3072))
open("d.bin", "wb").write(raw)
subprocess.run([sys.argv[1], "-q", "cifar10", "d.bin", "d.lmdb"], check=True, stdout=subprocess.DEVNULL)
with amdim.Loader("d.lmdb", batch=16, workers=1, epochs=1, seed=1, log=False) as ld:
    n = sum(len(b) for b in ld)
assert n == 64, n
print("test_python_install: installed in a venv; %s and %s; one epoch of %d pairs" % (L.library_path(), L.amdim_load_path(), n))
PY
