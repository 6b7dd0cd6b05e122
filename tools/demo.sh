#!/usr/bin/env bash
# The main job on a small real dataset: installs what is needed, builds,
# packs Fashion-MNIST (Debian's dataset-fashion-mnist) into one LMDB file with
# a train and a test split, trains a small AMDIM encoder on the CPU for a few
# minutes through amdim-load | amdim-train, and prints the probes' test
# accuracies.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${AMDIM_DEMO_STEPS:-300}
echo "demo: installs packages, builds, packs Fashion-MNIST and trains for $steps steps on the CPU (a few minutes on 2 cores)"
bash tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"
src=/usr/share/datasets/fashion-mnist
out=${AMDIM_DEMO_DIR:-demo}
mkdir -p "$out"
names="$out/fashion-classes.txt"
printf '%s\n' T-shirt/top Trouser Pullover Dress Coat Sandal Shirt Sneaker Bag "Ankle boot" > "$names"
build/amdim-pack --force --split train --class-names "$names" idx "$src/train-images-idx3-ubyte.gz" "$out/fashion.lmdb" >/dev/null
build/amdim-pack --force --split test --class-names "$names" idx "$src/t10k-images-idx3-ubyte.gz" "$out/fashion.lmdb" >/dev/null
build/amdim-pack --info "$out/fashion.lmdb" | grep -E '^(records|classes|skipped|train.records|test.records):'
rm -rf "$out/run"
workers=$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))
build/amdim-load --workers "$workers" --batch 100 --seed 1 "$out/fashion.lmdb" 2>"$out/load.log" |
  build/amdim-train --out "$out/run" --ndf 16 --n-rkhs 64 --n-depth 1 --steps "$steps" --log-every 50 \
    --eval "$out/fashion.lmdb" --eval-refresh 10
build/amdim-plot "$out/run/metrics.jsonl" "$out/run/metrics.png"
grep '"kind":"eval"' "$out/run/metrics.jsonl" | tail -1 |
  sed -e 's/.*"test_acc_lin":\([0-9.]*\),"test_acc_mlp":\([0-9.]*\).*/demo: test accuracy after the run: linear probe \1, MLP probe \2/'
echo "demo: run directory $out/run (metrics.jsonl, metrics.png, checkpoints)"
