#!/usr/bin/env bash
# Builds amdim and runs its test suite (CTest). GPU tests skip without a GPU.
#   tools/test.sh [extra ctest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
build=${AMDIM_BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${AMDIM_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" "$@"
