#!/bin/sh
# Keeps bench/torch_amdim.py (the PyTorch peer of our trainer) from rotting:
# one tiny training run on the CPU. Exit 77 (skip) when PyTorch is missing.
#   [AMDIM_PYTHON=python3] test_torch_amdim.sh PATH/TO/torch_amdim.py
py=${AMDIM_PYTHON:-/usr/bin/python3}   # Debian's python3-torch lives there
[ -x "$py" ] || py=python3
if ! "$py" -c "import torch" >/dev/null 2>&1; then
    echo "test_torch_amdim: python3-torch is not installed; skipping"
    exit 77
fi
out=$("$py" "$1" --config tiny --device cpu --mode eager --steps 2 --warmup 1 --ours 100) || {
    echo "$out"
    echo "test_torch_amdim: the bench failed"
    exit 1
}
echo "$out"
# the eager line: mode, pairs/s, step ms, peak (-), a finite loss, ratio
echo "$out" | grep -Eq '^eager +[0-9.]+ +[0-9.]+ +- +[0-9.]+ +[0-9.]+x$' || {
    echo "test_torch_amdim: no eager result line with a finite loss"
    exit 1
}
