#!/usr/bin/env bash
# The main job on a small real dataset: installs what is needed, builds,
# packs Fashion-MNIST (Debian's dataset-fashion-mnist) into one LMDB file
# with a train and a test split, and prints its summary.
set -euo pipefail
cd "$(dirname "$0")/.."
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
build/amdim-pack --info "$out/fashion.lmdb"
