#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/) with clang in build-fuzz/ and runs
# each for a bounded time, then every committed regression input.
#   tools/fuzz.sh [seconds per harness, default 20] [harness ...]
# New crashes are written to build-fuzz/crashes/<harness>/; once fixed, copy
# each into fuzz/regressions/<harness>/ (the replay_* CTests run them in
# every build). Longer runs for developers: tools/fuzz.sh 600 augment
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(record augment sources list checkpoint control)
build=${AMDIM_FUZZ_BUILD_DIR:-build-fuzz}
command -v clang >/dev/null || { echo "fuzz.sh: clang not found (apt-get install clang)" >&2; exit 77; }
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAMDIM_FUZZ=ON \
  -DAMDIM_ENABLE_CUDA=OFF >/dev/null
targets=()
for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
status=0
for h in "${harnesses[@]}"; do
  mkdir -p "$build/crashes/$h" "$build/corpus/$h"
  echo "== fuzz_$h: regressions =="
  regs=(fuzz/regressions/"$h"/*)
  if [ -e "${regs[0]}" ]; then
    if "$build/fuzz/fuzz_$h" -rss_limit_mb=2048 -timeout=10 "${regs[@]}" > "$build/regressions_$h.log" 2>&1; then
      echo "${#regs[@]} inputs ok"
    else
      status=1
      echo "fuzz_$h FAILED on a regression input:" >&2
      grep -E "ERROR|SUMMARY|runtime error|Running:" "$build/regressions_$h.log" | tail -n 5 >&2 || true
    fi
  fi
  echo "== fuzz_$h: ${secs} s =="
  # New inputs go to build-fuzz/corpus (the committed seeds stay small).
  dict=()
  [ -f "fuzz/$h.dict" ] && dict=(-dict="fuzz/$h.dict")
  if ! "$build/fuzz/fuzz_$h" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 "${dict[@]}" \
       -artifact_prefix="$build/crashes/$h/" -print_final_stats=1 \
       "$build/corpus/$h" "fuzz/corpus/$h" > "$build/fuzz_$h.log" 2>&1; then
    status=1
    echo "fuzz_$h FAILED; input(s) in $build/crashes/$h/:" >&2
    grep -E "ERROR|SUMMARY|runtime error" "$build/fuzz_$h.log" | head -n 5 >&2 || true
  fi
  grep -E "stat::number_of_executed_units|stat::new_units_added" "$build/fuzz_$h.log" | tr '\n' ' ' || true
  echo
done
exit $status
