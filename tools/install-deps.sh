#!/usr/bin/env bash
# Installs, from Debian packages, everything amdim needs to build, test and
# run its demo. Does nothing when all of it is already installed.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  clang                                   # fuzzers (tools/fuzz.sh, libFuzzer)
  libturbojpeg0-dev libjpeg62-turbo-dev   # JPEG decode/encode (libjpeg-turbo)
  liblmdb-dev lmdb-utils                  # the dataset file
  liburing-dev                            # loader reads
  libopenblas-dev                         # CPU trainer GEMMs
  libjansson-dev                          # checkpoints' safetensors header (JSON)
  libopenmpi-dev openmpi-bin              # data-parallel training (MPI) and its tests
  libpng-dev zlib1g-dev                   # PNG inputs/outputs, gzipped IDX
  dataset-fashion-mnist                   # the demo's real dataset
  python3-torch python3-numpy             # reference data, checkpoint check, PyTorch peer bench
  python3-venv python3-pip                # the Python package: pip install ./python in a venv (docs/python.md)
  python3-setuptools python3-wheel        # ... its build backend, offline (--no-build-isolation)
  python3-tqdm                            # ... its progress bar (tested when installed)
  python3-torchvision                     # ... bench/bench_python.py's DataLoader peer (with python3-pil)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
