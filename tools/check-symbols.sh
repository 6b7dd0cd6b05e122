#!/usr/bin/env bash
# One namespace (STYLE.md): every global symbol the project's libraries
# define starts with amdim_. Symbols the compiler makes itself (reserved
# names: __*, and DW.ref.* for C++ exception personalities in nvcc's host
# code) are allowed.
#   tools/check-symbols.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: check-symbols.sh BUILD_DIR}
libs=()
for name in common image dataset shm augment loader model dim run parallel cuda_kernels cuda_plan; do
    f=$build/libamdim_$name.a
    [ -e "$f" ] && libs+=("$f")
done
[ ${#libs[@]} -ge 8 ] || { echo "check-symbols: only ${#libs[@]} libraries in $build"; exit 1; }
bad=0
for f in "${libs[@]}"; do
    while read -r sym; do
        echo "check-symbols: $(basename "$f") defines $sym (not amdim_*)"
        bad=1
    done < <(nm -g --defined-only "$f" | awk 'NF == 3 { print $3 }' | grep -v -E '^(amdim_|__|DW\.ref\.)' | sort -u)
done
[ $bad = 0 ] && echo "check-symbols: ${#libs[@]} libraries, every global symbol amdim_*"
exit $bad
