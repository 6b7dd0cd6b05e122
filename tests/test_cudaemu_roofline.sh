#!/bin/sh
# bench_roofline walks a training step on the emulated device in a dry run
# and projects it: the launch list must be complete (every operation kind
# of the step present, the fused GEMMs among them) and its library FLOPs must agree with the model's
# own count (amdim_model_step_flops, checked against the authors' model by
# test_flops) within 3 % - the trace's GEMM and convolution shapes are the
# ones the step runs.
#   test_cudaemu_roofline.sh PATH/TO/bench_roofline
out=$("$1" --config cifar-small --batch 16) || { echo "$out"; echo "test_cudaemu_roofline: bench_roofline failed"; exit 1; }
echo "$out"
# the fused GEMMs (docs/cuda.md, "Fusions") are what the step runs: ReLU and mask, ReLU gradient,
# identity shortcut as C, the heads' shortcut bias; Adam is one launch
for op in GEMM convolution "relu backward" "shortcut (pool + add)" Adam "NCE rows" "classifier loss" total \
          "GEMM (+ ReLU, mask)" "GEMM (+ ReLU gradient)" "GEMM (+ shortcut)" "GEMM (+ bias)"; do
    echo "$out" | grep -q "^$op " || { echo "test_cudaemu_roofline: no '$op' line"; exit 1; }
done
echo "$out" | awk '/^# launch-list FLOPs \/ the model.s count:/ { r = $NF; found = 1 }
    END { if (!found) { print "test_cudaemu_roofline: no FLOP ratio"; exit 1 }
          if (r < 0.97 || r > 1.03) { print "test_cudaemu_roofline: launch-list FLOPs are " r " of the model count"; exit 1 } }' || exit 1
echo "$out" | grep -q "^Adam  *1 " || { echo "test_cudaemu_roofline: Adam is not one launch"; exit 1; }
echo "$out" | grep -q "^# projected on H100 SXM: [0-9.]* ms per step" || { echo "test_cudaemu_roofline: no projection"; exit 1; }
# with the fusions off (AMDIM_CUDA_FUSE=0) the same step runs unfused: no fused GEMM, more element-wise bytes
off=$(AMDIM_CUDA_FUSE=0 "$1" --config cifar-small --batch 16) || { echo "$off"; echo "test_cudaemu_roofline: bench_roofline (unfused) failed"; exit 1; }
if echo "$off" | grep -q "^GEMM (+ "; then echo "test_cudaemu_roofline: AMDIM_CUDA_FUSE=0 still fused"; exit 1; fi
ew() { echo "$1" | awk '/^# element-wise \(our kernels\):/ { print $5 }'; }
awk -v a="$(ew "$out")" -v b="$(ew "$off")" 'BEGIN { if (!(a > 0 && b > a)) { print "test_cudaemu_roofline: element-wise GB fused " a ", unfused " b; exit 1 }
    printf "element-wise GB per step: fused %s, unfused %s\n", a, b }' || exit 1
echo "test_cudaemu_roofline: ok"
