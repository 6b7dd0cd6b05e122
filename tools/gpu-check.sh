#!/usr/bin/env bash
# The GPU machine's checks in one command.
#
#   tools/gpu-check.sh --package [DIR]   (here, where the Debian -dev packages are installed)
#       copies the headers and shared libraries the build needs (libjpeg-turbo,
#       LMDB, liburing, OpenBLAS, libpng, zlib, and pkg-config itself) into DIR
#       (default gpu-deps/, git-ignored, at most 64 MiB) with .pc files of its
#       own, so that it can travel with the tree (the device tool's `carry`).
#   tools/gpu-check.sh OUTDIR            (on the GPU machine)
#       builds against gpu-deps/ when present (else the system), then runs,
#       each stage time-bounded and none stopping the next:
#         1 build   2 ctest -L gpu   3 compute-sanitizer memcheck of one gpu test
#         4 bench_trainer --device cuda   5 bench/torch_amdim.py (3 configs)
#       and writes OUTDIR/summary.txt (one line per stage) plus at most 7 logs.
#
# A stage that finds no GPU (or no tool) is SKIPPED with the reason, so the
# script can be rehearsed on a machine without one. The limits (seconds) add
# up to under the device tool's 600 s per command; override them with
# AMDIM_GC_LIMITS="build tests memcheck bench torch" (default "200 90 90 60 90").
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
             pnglibconf.h zlib.h zconf.h; do
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
    for name in turbojpeg jpeg lmdb uring png16 z; do
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

# Environment of every stage: the carried dependencies, cuDNN from the
# toolkit or PyTorch's wheel.
setup_env() {
    cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
    command -v ninja >/dev/null && cmake_args+=(-G Ninja)
    if [ -d "$root/gpu-deps" ]; then
        deps=$root/gpu-deps
        export PKG_CONFIG_LIBDIR=$deps/lib/pkgconfig PKG_CONFIG_PATH=$deps/lib/pkgconfig
        [ -x "$deps/bin/pkg-config" ] && ! command -v pkg-config >/dev/null &&
            cmake_args+=(-DPKG_CONFIG_EXECUTABLE="$deps/bin/pkg-config")
        export LD_LIBRARY_PATH=$deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
        cmake_args+=(-DCMAKE_PREFIX_PATH="$deps")
        echo "gpu-check: dependencies from $deps"
    fi
    if [ -z "${AMDIM_CUDNN_DIR:-}" ] && ! ls /usr/local/cuda/lib64/libcudnn.so* >/dev/null 2>&1; then
        wheel=$(python3 -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))' 2>/dev/null || true)
        if [ -n "$wheel" ] && [ -d "$wheel/lib" ]; then
            # the wheel has libcudnn.so.9 only: give the linker the unversioned name
            mkdir -p "$root/$build/cudnn/lib"
            ln -sf "$wheel/include" "$root/$build/cudnn/include"
            for f in "$wheel"/lib/libcudnn*.so.*; do
                ln -sf "$f" "$root/$build/cudnn/lib/$(basename "$f")"
                ln -sf "$f" "$root/$build/cudnn/lib/$(basename "${f%%.so.*}").so"
            done
            export AMDIM_CUDNN_DIR=$root/$build/cudnn
            export LD_LIBRARY_PATH=$wheel/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
            echo "gpu-check: cuDNN from PyTorch's wheel at $wheel"
        fi
    fi
}

# 1: build
build_all() {
    cmake -S "$root" -B "$root/$build" "${cmake_args[@]}" || return 1
    cmake --build "$root/$build" -j "$jobs" || return 1
    grep -E "^(LMDB_LIBRARY|PNG_LIBRARY_RELEASE|ZLIB_LIBRARY_RELEASE|CUDNN_LIBRARY|CMAKE_CUDA_COMPILER):" \
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
    ctest --test-dir "$root/$build" -L gpu --output-on-failure || return 1
    why=$(gpu_probe) || skip "no GPU: the gpu tests ran and skipped ($why)"
}

# 3: compute-sanitizer on the kernel test
memcheck() {
    why=$(gpu_probe) || skip "no GPU ($why)"
    local cs
    cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    [ -x "$cs" ] || skip "compute-sanitizer not found"
    "$cs" --tool memcheck --error-exitcode 1 "$root/$build/tests/test_cuda_kernels"
}

# 4: our trainer on the GPU
bench_ours() {
    local b=$root/$build/bench/bench_trainer
    [ -x "$b" ] || skip "bench_trainer not built"
    "$b" --help | grep -q -- --device || skip "bench_trainer has no --device"
    why=$(gpu_probe) || skip "no GPU ($why)"
    "$b" --device cuda --batch 64 --steps 5 --warmup 2 &&
        "$b" --device cuda --size 64 --ndf 192 --n-rkhs 1536 --depth 8 --batch 64 --steps 3 --warmup 1 &&
        "$b" --device cuda --size 128 --ndf 192 --n-rkhs 1536 --depth 8 --batch 64 --steps 3 --warmup 1
}

# 5: the PyTorch peer on the three published configs
bench_torch() {
    python3 -c 'import torch' 2>/dev/null || skip "python3 cannot import torch"
    python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' ||
        skip "torch.cuda.is_available() is False"
    local cfg rc=0
    for cfg in cifar-small stl10 imagenet-small; do
        python3 "$root/bench/torch_amdim.py" --config "$cfg" --device cuda --warmup 2 --steps 5 || rc=1
    done
    return $rc
}


# A stage runs as `timeout bash gpu-check.sh --stage FUNCTION OUTDIR`.
if [ "${1:-}" = "--stage" ]; then
    out=$3
    build=${AMDIM_GPU_BUILD_DIR:-build-gpu}
    jobs=$(nproc)
    setup_env
    "$2"
    exit $?
fi
[ $# -eq 1 ] && [ "${1#-}" = "$1" ] || { sed -n '2,23p' "$0"; exit 2; }

out=$1
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
summary=$out/summary.txt
: >"$summary"
read -r lim_build lim_tests lim_memcheck lim_bench lim_torch <<<"${AMDIM_GC_LIMITS:-200 90 90 60 90}"

# stage NAME LIMIT_S LOG FUNCTION: runs FUNCTION under timeout, appends to LOG, records
# PASS / FAIL / SKIP (exit 77, the log's last line is the reason) / TIMEOUT.
stage() {
    local name=$1 limit=$2 log=$3
    shift 3
    local t0=$SECONDS rc
    echo "== $name: $*" >"$out/$log"
    timeout --kill-after=10 "$limit" bash "$root/tools/gpu-check.sh" --stage "$1" "$out" >>"$out/$log" 2>&1
    rc=$?
    local dt=$((SECONDS - t0)) word detail=""
    case $rc in
    0) word=PASS ;;
    77) word=SKIP detail=$(tail -n 1 "$out/$log") ;;
    124|137) word=TIMEOUT detail="after ${limit}s" ;;
    *) word=FAIL detail="exit $rc" ;;
    esac
    printf '%-28s %-7s %4ds  [%s] %s\n' "$name" "$word" "$dt" "$log" "$detail" >>"$summary"
    echo "gpu-check: $name: $word $detail ($dt s)"
    return 0
}

# 0: environment (not a stage of its own: into env.log)
{
    date -u
    uname -a
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    command -v nvcc && nvcc --version
    cmake --version | head -1
    command -v ninja && ninja --version
    command -v compute-sanitizer || echo "compute-sanitizer: not found"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1 | tail -1
} >"$out/env.log" 2>&1

stage "build" "$lim_build" build.log build_all
stage "ctest -L gpu" "$lim_tests" gpu-tests.log gpu_tests
stage "compute-sanitizer memcheck" "$lim_memcheck" memcheck.log memcheck
stage "bench_trainer --device cuda" "$lim_bench" bench-trainer.log bench_ours
stage "torch_amdim.py (3 configs)" "$lim_torch" torch-bench.log bench_torch

echo "gpu-check: summary in $summary"
cat "$summary"
