#!/usr/bin/env bash
# The GPU machine's checks in one command: one shot, at most 9 minutes with
# the build, the most valuable results first, a summary that survives a kill.
#
#   tools/gpu-check.sh --package [DIR]   (here, where the Debian -dev packages are installed)
#       copies the headers and shared libraries the build needs (libjpeg-turbo,
#       LMDB, liburing, OpenBLAS, libpng, zlib, jansson, and pkg-config itself) into DIR
#       (default gpu-deps/, git-ignored, at most 64 MiB) with .pc files of its
#       own, so that it can travel with the tree (the device tool's `carry`).
#   tools/gpu-check.sh OUTDIR            (on the GPU machine)
#       builds against gpu-deps/ when present (else the system) and cuDNN and
#       NCCL from the toolkit or from PyTorch's nvidia-cudnn / nvidia-nccl
#       wheels, then runs, each stage time-bounded and none stopping the next:
#         1 build: only what the stages run (no emulated device, no fuzzers,
#           warnings not errors: a newer compiler must not cost the run)
#         2 ctest -L gpu, 4 at a time, 60 s per test: test_cuda_kernels,
#           test_cuda_model (fp32 parity), test_cuda_bf16, test_cuda_graphs,
#           test_model_staging_cuda, test_cuda_curve (200 steps CPU vs CUDA,
#           checkpoints across devices), test_cuda_dist (a forced one-rank
#           NCCL group; skips without NCCL); every test's output kept
#         3 bench_trainer --device cuda (bf16): one validated step, the GEMM
#           rates on random data, then ImageNet-small, CIFAR small, STL-10 at
#           batch 480 (2 warm-up steps outside the timing: algorithms, then
#           graph capture): pairs/s, TFLOP/s, MFU against the datasheet
#           peak and the measured GEMM rate, memory, stage table, the cuDNN
#           algorithm table
#         4 end to end: a synthetic 500x375 JPEG corpus made there, amdim-pack,
#           amdim-load --workers 15 --batch 480 | amdim-train --device cuda
#           (bf16) at ImageNet-small for 12 steps: pairs/s and data wait
#         5 bench/torch_amdim.py: the PyTorch peer on the three configs
#         6 compute-sanitizer memcheck of test_cuda_kernels and 7 racecheck of
#           test_cuda_model --quick, both limited to our kernels (skipped
#           cleanly when compute-sanitizer is absent)
#       and writes seven files (the device tool returns at most eight):
#       OUTDIR/summary.txt - the environment, then the stages, rewritten as
#       each stage starts (marked RUNNING) and ends, so a kill leaves every
#       result so far - and one log per stage: build, gpu-tests (every test's
#       full output), bench-trainer, e2e, torch-bench, sanitizer. cuDNN's own
#       warnings and errors (CUDNN_LOGLEVEL_DBG=2) go to stderr, so into the
#       log of the stage that caused them.
#
# A stage that finds no GPU (or no tool) is SKIPPED with the reason, so the
# script can be rehearsed on a machine without one (without a GPU the end-
# to-end stage makes and packs a 960-image corpus, then skips). The limits
# (seconds, each with a 5 s kill grace) add up to 8.5 minutes; override them
# with AMDIM_GC_LIMITS="build tests bench e2e torch memcheck racecheck"
# (default "150 80 90 70 50 35 35").
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

die() { echo "gpu-check: $*" >&2; exit 2; }

# ---- --package ----------------------------------------------------------------
package() {
    local dir=${1:-gpu-deps}
    rm -rf "$dir" && mkdir -p "$dir/include" "$dir/lib/pkgconfig" "$dir/bin" || die "cannot create $dir"
    dir=$(cd "$dir" && pwd)
    local arch
    arch=$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
    # headers
    local h
    for h in turbojpeg.h jpeglib.h jerror.h jmorecfg.h jpegint.h lmdb.h liburing.h liburing png.h pngconf.h \
             pnglibconf.h zlib.h zconf.h jansson.h jansson_config.h; do
        [ -e "/usr/include/$h" ] || die "/usr/include/$h missing: run tools/install-deps.sh first"
        cp -rL "/usr/include/$h" "$dir/include/"
    done
    cp -L "/usr/include/$arch/jconfig.h" "$dir/include/" || die "jconfig.h missing"
    local blas_inc
    blas_inc=$(pkg-config --variable=includedir openblas 2>/dev/null)
    [ -n "$blas_inc" ] || blas_inc=$(pkg-config --cflags-only-I openblas | sed 's/^-I//; s/ *$//')
    cp -L "$blas_inc"/cblas.h "$blas_inc"/openblas_config.h "$dir/include/" || die "cblas.h missing"
    # libraries: the real file under its soname, plus the unversioned link
    copy_lib() { # path of a .so (link) -> DIR/lib
        local real soname base
        real=$(readlink -f "$1")
        soname=$(objdump -p "$real" 2>/dev/null | awk '/SONAME/ {print $2}')
        [ -n "$soname" ] || soname=$(basename "$1")
        [ -e "$dir/lib/$soname" ] || cp -L "$real" "$dir/lib/$soname"
        base=${soname%%.so*}.so
        [ -e "$dir/lib/$base" ] || ln -s "$soname" "$dir/lib/$base"
        # runtime dependencies beyond glibc and the compiler runtime every machine has
        ldd "$real" 2>/dev/null | awk '/=> \// {print $3}' | while read -r dep; do
            case $(basename "$dep") in
            libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libgcc_s.so*|libstdc++.so*) ;;
            *) [ -e "$dir/lib/$(basename "$dep")" ] || cp -L "$dep" "$dir/lib/" ;;
            esac
        done
    }
    local libdir=/usr/lib/$arch name
    for name in turbojpeg jpeg lmdb uring png16 z jansson; do
        [ -e "$libdir/lib$name.so" ] || die "$libdir/lib$name.so missing: run tools/install-deps.sh first"
        copy_lib "$libdir/lib$name.so"
    done
    ln -sf libpng16.so "$dir/lib/libpng.so"
    copy_lib "$(pkg-config --variable=libdir openblas)/libopenblas.so"
    # pkg-config (pkgconf) itself and .pc files relative to their folder
    if command -v pkgconf >/dev/null; then
        cp -L "$(command -v pkgconf)" "$dir/bin/pkg-config"
        ldd "$(command -v pkgconf)" | awk '/libpkgconf/ {print $3}' | xargs -r -I{} cp -L {} "$dir/lib/"
    fi
    pc() { # name lib [extra cflags]
        cat >"$dir/lib/pkgconfig/$1.pc" <<EOF
prefix=\${pcfiledir}/../..
includedir=\${prefix}/include
libdir=\${prefix}/lib
Name: $1
Description: $1 (carried by tools/gpu-check.sh --package)
Version: $(pkg-config --modversion "$1" 2>/dev/null || echo 0)
Cflags: -I\${includedir}
Libs: -L\${libdir} -l$2
EOF
    }
    pc libturbojpeg turbojpeg
    pc libjpeg jpeg
    pc liburing uring
    pc openblas openblas
    pc libpng16 png16
    pc zlib z
    pc jansson jansson
    local size
    size=$(du -sbL "$dir" | awk '{print $1}')
    echo "gpu-check: packaged $(find "$dir" -type f | wc -l) files, $((size >> 20)) MiB, into $dir"
    [ "$size" -le $((64 << 20)) ] || die "$dir is over 64 MiB"
    echo "gpu-check: on the GPU machine: run(command='bash tools/gpu-check.sh \$OUT', carry=['$(basename "$dir")'])"
}

if [ "${1:-}" = "--package" ]; then
    package "${2:-gpu-deps}"
    exit $?
fi

# ---- the checks ------------------------------------------------------------------
skip() { echo "$1"; exit 77; } # each stage is its own process

# A wheel's lib/ + include/ (PyTorch's nvidia-cudnn-cu13, nvidia-nccl-cu13),
# linked under $root/$build/NAME with the unversioned library names the
# linker wants; prints that folder, or nothing.
wheel_dir() { # python module, name, library
    local w
    # a namespace package (nvidia.cudnn has no __init__.py) has no __file__: its path
    w=$(timeout 30 python3 -c "import $1; print(list($1.__path__)[0])" 2>/dev/null) || return 0
    [ -n "$w" ] && [ -d "$w/lib" ] && [ -d "$w/include" ] || return 0
    local d=$root/$build/$2
    mkdir -p "$d/lib"
    ln -sfn "$w/include" "$d/include"
    local f
    for f in "$w"/lib/lib"$3"*.so*; do
        [ -e "$f" ] || continue
        ln -sf "$f" "$d/lib/$(basename "$f")"
        ln -sf "$f" "$d/lib/$(basename "${f%%.so*}").so"
    done
    echo "$d"
}

# Environment of every stage: the carried dependencies, cuDNN and NCCL from
# the toolkit or the wheels, cuDNN's own log.
setup_env() {
    cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DAMDIM_WERROR=OFF -DAMDIM_BUILD_CUDAEMU=OFF
                -DAMDIM_GPU_TEST_TIMEOUT=60)
    command -v ninja >/dev/null && cmake_args+=(-G Ninja)
    if [ -d "$root/gpu-deps" ]; then
        deps=$root/gpu-deps
        export PKG_CONFIG_LIBDIR=$deps/lib/pkgconfig PKG_CONFIG_PATH=$deps/lib/pkgconfig
        [ -x "$deps/bin/pkg-config" ] && ! command -v pkg-config >/dev/null &&
            cmake_args+=(-DPKG_CONFIG_EXECUTABLE="$deps/bin/pkg-config")
        export LD_LIBRARY_PATH=$deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        cmake_args+=(-DCMAKE_PREFIX_PATH="$deps")
    fi
    if [ -z "${AMDIM_CUDNN_DIR:-}" ] && ! ls /usr/local/cuda/lib64/libcudnn.so* >/dev/null 2>&1; then
        local d
        d=$(wheel_dir nvidia.cudnn cudnn cudnn)
        [ -n "$d" ] && export AMDIM_CUDNN_DIR=$d LD_LIBRARY_PATH=$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
    if [ -z "${AMDIM_NCCL_DIR:-}" ] && ! ls /usr/local/cuda/lib64/libnccl.so* >/dev/null 2>&1; then
        local d
        d=$(wheel_dir nvidia.nccl nccl nccl)
        [ -n "$d" ] && export AMDIM_NCCL_DIR=$d LD_LIBRARY_PATH=$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
    # the libraries' own folders for the loader too: the wheels' real lib/
    # (their .so files find their siblings there), the other nvidia wheels
    # beside them, and the toolkit
    local d
    for d in "${AMDIM_CUDNN_DIR:-}" "${AMDIM_NCCL_DIR:-}"; do
        [ -n "$d" ] && [ -d "$d/lib" ] || continue
        local first real
        first=$(ls "$d"/lib/*.so* 2>/dev/null | head -1)
        [ -n "$first" ] || continue
        real=$(dirname "$(readlink -f "$first")")
        [ -d "$real" ] || continue
        LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$real
        local sib
        for sib in "$real"/../../*/lib; do
            [ -d "$sib" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(cd "$sib" && pwd)
        done
    done
    [ -d /usr/local/cuda/lib64 ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/local/cuda/lib64
    export LD_LIBRARY_PATH
    export CUDNN_LOGLEVEL_DBG=2 CUDNN_LOGDEST_DBG=stderr # cuDNN 9: warnings and errors, into the stage's log
}

# what the stages run, and nothing else
targets=(test_cuda_kernels test_cuda_model test_cuda_graphs test_cuda_bf16 test_cuda_curve test_dist_force
         test_model_staging bench_trainer make_synth_corpus amdim-pack amdim-load amdim-train)

# 1: build
build_all() {
    echo "gpu-deps: ${deps:-none}; cuDNN: ${AMDIM_CUDNN_DIR:-beside the toolkit}; NCCL: ${AMDIM_NCCL_DIR:-beside the toolkit}"
    cmake -S "$root" -B "$root/$build" "${cmake_args[@]}" || return 1
    cmake --build "$root/$build" -j "$jobs" --target "${targets[@]}" || return 1
    grep -E "^(LMDB_LIBRARY|PNG_LIBRARY_RELEASE|ZLIB_LIBRARY_RELEASE|CUDNN_LIBRARY|NCCL_LIBRARY|CMAKE_CUDA_COMPILER):" \
        "$root/$build/CMakeCache.txt"
    [ -e "$root/$build/tests/test_cuda_kernels" ] || { echo "no CUDA parts in this build (nvcc or cuDNN not found)"; return 1; }
}

# "is there a GPU": nvidia-smi lists one (the tests then decide for themselves)
gpu_probe() {
    local t=$root/$build/tests/test_cuda_kernels
    [ -x "$t" ] || { echo "not built"; return 1; }
    command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 || { echo "nvidia-smi -L failed or is missing"; return 1; }
    return 0
}

# 2: the gpu-labelled tests (they skip themselves without a device)
gpu_tests() {
    [ -x "$root/$build/tests/test_cuda_kernels" ] || skip "not built"
    local rc=0
    local full
    full=$(mktemp /tmp/amdim-ctest-XXXXXX.log) || return 1
    ctest --test-dir "$root/$build" -L gpu -j 4 --output-on-failure -O "$full" || rc=1
    why=$(gpu_probe) || { rm -f "$full"; skip "no GPU: the gpu tests ran and skipped ($why)"; }
    # with a GPU present, a test that skipped itself found no device: that is a failure
    # (test_cuda_dist alone may skip, when the build has no NCCL)
    local skipped
    local may_skip='^$'
    grep -q '^NCCL_LIBRARY:.*NOTFOUND' "$root/$build/CMakeCache.txt" && may_skip='test_cuda_dist'
    skipped=$(grep -E '\*\*\*Skipped|Not Run' "$full" | grep -v -E "$may_skip" || true)
    if [ -n "$skipped" ]; then
        echo "FAIL: nvidia-smi sees a GPU, yet these gpu tests skipped:"
        echo "$skipped"
        rc=1
    fi
    echo "== every test's full output (ctest -O)"
    cat "$full"
    rm -f "$full"
    return $rc
}

# 3: our trainer on the GPU
bench_ours() {
    local b=$root/$build/bench/bench_trainer
    [ -x "$b" ] || skip "bench_trainer not built"
    why=$(gpu_probe) || skip "no GPU ($why)"
    # validates against the CPU first, then ImageNet-small, CIFAR small, STL-10 at batch 480;
    # a failed validation is reported (exit 1) but the figures are still taken, marked UNVALIDATED
    "$b" --device cuda --precision bf16 --steps 3 --warmup 2 --continue-unvalidated
}

# 4: amdim-load | amdim-train --device cuda at ImageNet-small on a corpus made here
end_to_end() {
    local b=$root/$build t
    for t in bench/make_synth_corpus amdim-pack amdim-load amdim-train; do
        [ -x "$b/$t" ] || skip "$t not built"
    done
    local tmp steps=12 batch=480 batches=14 why gpu=1
    why=$(gpu_probe) || { gpu=0 batches=2; } # without a GPU: rehearse corpus and packing small, then skip
    tmp=$(mktemp -d /tmp/amdim-e2e-XXXXXX) || return 1
    trap 'rm -rf "$tmp"' EXIT
    # 14 batches: the 12 steps stay inside epoch 0 (no epoch-end checkpoint)
    "$b/bench/make_synth_corpus" --size 500x375 "$tmp/corpus" $((batch * batches)) || return 1
    "$b/amdim-pack" --progress-interval 60 imagefolder "$tmp/corpus" "$tmp/data.lmdb" >/dev/null || return 1
    rm -rf "$tmp/corpus"
    [ $gpu = 1 ] || skip "no GPU ($why); a corpus of $((batch * batches)) JPEGs was made and packed"
    # leave time to read the metrics whatever happens to the run
    local left=$(( ${AMDIM_GC_LIMIT:-70} - SECONDS - 8 ))
    [ "$left" -gt 10 ] || { echo "no time left for the run"; return 1; }
    timeout --kill-after=3 "$left" bash -c '"$1" --workers 15 --batch "$2" "$3" |
        "$4" --device cuda --precision bf16 --out "$5" --steps "$6" --log-every 4' _ \
        "$b/amdim-load" "$batch" "$tmp/data.lmdb" "$b/amdim-train" "$tmp/run" "$steps"
    local rc=$?
    [ -s "$tmp/run/metrics.jsonl" ] || { echo "no metrics.jsonl (amdim-train exit $rc)"; return 1; }
    echo "== metrics.jsonl (intervals of 4 steps; the first holds the warm-up)"
    awk -F'[,:}]' '/"kind":"train"/ {
            for (i = 1; i < NF; i++) {
                if ($i == "\"pairs_per_s\"") p = $(i + 1)
                if ($i == "\"data_wait\"") w = $(i + 1)
                if ($i == "\"steps\"") s = $(i + 1)
            }
            n++
            printf "interval %d: %d steps, %.1f pairs/s, data wait %.2f %%\n", n, s, p, 100 * w
            if (n > 1) { t += s / p; sw += w * s / p; ss += s }
        }
        END {
            if (ss) printf "E2E after warm-up: %.1f pairs/s, data wait %.2f %% (target <= 2 %%)\n", ss / t, 100 * sw / t
            else { print "E2E: no interval after the warm-up one"; exit 1 }
        }' "$tmp/run/metrics.jsonl" || return 1
    # the figures stand even when the final checkpoint (2.5 GB) outlived the time limit
    echo "amdim-load | amdim-train exit status $rc"
}

# 5: the PyTorch peer on the three published configs
bench_torch() {
    # one process (torch starts once); it exits 77 without torch or CUDA
    PYTHONUNBUFFERED=1 python3 "$root/bench/torch_amdim.py" --config imagenet-small,cifar-small,stl10 \
        --device cuda --warmup 2 --steps 5
    local rc=$?
    [ $rc = 77 ] && exit 77 # its last line says why: no torch, or no CUDA
    return $rc
}

# compute-sanitizer, limited to our kernels (cuBLAS's and cuDNN's run
# uninstrumented): every kernel of ours is named *_kernel, and kns= matches a
# substring of the kernel's name (--kernel-name in current releases, --filter
# in older ones)
sanitizer() {
    cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    [ -x "$cs" ] || skip "compute-sanitizer not found"
    local help
    help=$(timeout 30 "$cs" --help 2>&1)
    if grep -q -- '--kernel-name' <<<"$help"; then
        filter=(--kernel-name kns=_kernel)
    elif grep -q -- '--filter' <<<"$help"; then
        filter=(--filter kns=_kernel)
    else
        filter=()
    fi
}

# 6: memcheck of the kernel test
memcheck() {
    why=$(gpu_probe) || skip "no GPU ($why)"
    sanitizer
    "$cs" --tool memcheck --error-exitcode 1 "${filter[@]}" "$root/$build/tests/test_cuda_kernels"
}

# 7: racecheck (shared-memory hazards: the block reductions) on two steps of one tiny model
racecheck() {
    why=$(gpu_probe) || skip "no GPU ($why)"
    sanitizer
    local t=$root/$build/tests/test_cuda_model
    [ -x "$t" ] || skip "test_cuda_model not built"
    "$cs" --tool racecheck --error-exitcode 1 "${filter[@]}" "$t" --quick
}

# A stage runs as `timeout bash gpu-check.sh --stage FUNCTION OUTDIR`.
if [ "${1:-}" = "--stage" ]; then
    out=$3
    build=${AMDIM_GPU_BUILD_DIR:-build-gpu}
    jobs=$(nproc)
    deps=""
    setup_env
    "$2"
    exit $?
fi
[ $# -eq 1 ] && [ "${1#-}" = "$1" ] || { sed -n '2,47p' "$0"; exit 2; }

out=$1
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
summary=$out/summary.txt
done_lines=$(mktemp /tmp/amdim-gc-stages-XXXXXX) || die "mktemp"
env_lines=$(mktemp /tmp/amdim-gc-env-XXXXXX) || die "mktemp"
read -r lim_build lim_tests lim_bench lim_e2e lim_torch lim_memcheck lim_racecheck \
    <<<"${AMDIM_GC_LIMITS:-150 80 90 70 50 35 35}"
for log in build gpu-tests bench-trainer e2e torch-bench sanitizer; do
    : >"$out/$log.log"
done
started=$(date -u +%FT%TZ)

# summary.txt: the stages done, the one running (if any), the environment
write_summary() {
    {
        echo "gpu-check started $started on $(hostname); $(date -u +%FT%TZ) now"
        cat "$done_lines"
        if [ -n "${1:-}" ]; then
            printf '%-28s RUNNING since %s (limit %ss)\n' "$1" "$(date -u +%T)" "$2"
        fi
        echo
        echo "== environment"
        cat "$env_lines"
    } >"$summary.tmp" && mv "$summary.tmp" "$summary"
}

# stage NAME LIMIT_S LOG FUNCTION: runs FUNCTION under timeout, appends to LOG, records
# PASS / FAIL / SKIP (exit 77, the log's last line is the reason) / TIMEOUT.
stage() {
    local name=$1 limit=$2 log=$3
    shift 3
    local t0=$SECONDS rc
    write_summary "$name" "$limit"
    echo "== $name: $*" >>"$out/$log"
    AMDIM_GC_LIMIT=$limit timeout --kill-after=5 "$limit" bash "$root/tools/gpu-check.sh" --stage "$1" "$out" \
        >>"$out/$log" 2>&1
    rc=$?
    local dt=$((SECONDS - t0)) word detail=""
    case $rc in
    0) word=PASS ;;
    77) word=SKIP detail=$(tail -n 1 "$out/$log") ;;
    124|137) word=TIMEOUT detail="after ${limit}s" ;;
    *) word=FAIL detail="exit $rc" ;;
    esac
    printf '%-28s %-7s %4ds  [%s] %s\n' "$name" "$word" "$dt" "$log" "$detail" >>"$done_lines"
    write_summary
    echo "gpu-check: $name: $word $detail ($dt s)"
    return 0
}

# 0: environment (not a stage of its own: the end of summary.txt)
{
    date -u
    uname -a
    timeout 30 nvidia-smi 2>&1 || echo "nvidia-smi: not available (or did not answer in 30 s)"
    command -v nvcc && nvcc --version
    cmake --version | head -1
    command -v ninja && ninja --version
    command -v compute-sanitizer || echo "compute-sanitizer: not found"
    timeout 30 python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 |
        tail -1
} >"$env_lines" 2>&1
write_summary

stage "build" "$lim_build" build.log build_all
stage "ctest -L gpu" "$lim_tests" gpu-tests.log gpu_tests
stage "bench_trainer --device cuda" "$lim_bench" bench-trainer.log bench_ours
stage "end to end load | train" "$lim_e2e" e2e.log end_to_end
stage "torch_amdim.py (3 configs)" "$lim_torch" torch-bench.log bench_torch
stage "compute-sanitizer memcheck" "$lim_memcheck" sanitizer.log memcheck
stage "compute-sanitizer racecheck" "$lim_racecheck" sanitizer.log racecheck
# each log: its last 15 MiB at most (the device tool returns files up to 16 MiB)
for log in "$out"/*.log; do
    if [ "$(stat -c %s "$log")" -gt $((15 << 20)) ]; then
        tail -c $((15 << 20)) "$log" >"$log.tmp" && mv "$log.tmp" "$log"
    fi
done
rm -f "$done_lines" "$env_lines"

echo "gpu-check: summary in $summary"
cat "$summary"
