#!/usr/bin/env bash
# Data-parallel scaling on this machine: the same global batch on 1 and on
# 2 ranks (mpirun; --sync-bn, then per-rank BatchNorm; one compute thread
# per rank, one loader worker per rank), steps/s of each and rank 0's time
# in collectives; the single process also with every core for BLAS.
#   bench/dist_ranks.sh [DATA.lmdb (default demo/fashion.lmdb)] [steps (default 200)] [global batch (default 64)]
# Build first (cmake --build build); the demo makes demo/fashion.lmdb.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-demo/fashion.lmdb}
steps=${2:-200}
batch=${3:-64}
model=(--ndf 16 --n-rkhs 64 --n-depth 1 --log-every "$steps" --threads 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mpirun=(mpirun --allow-run-as-root --oversubscribe --mca btl self,vader --mca btl_vader_backing_directory "$tmp" --bind-to none --mca mpi_yield_when_idle 1)

rate() { # steps/s from the last step line: (steps - 1 warm-up line is not kept) -> pairs/s / batch
  grep -o '[0-9.]* pairs/s' "$1" | tail -1 | awk -v b="$batch" '{ printf "%.2f", $1 / b }'
}
build/amdim-load --workers 1 --batch "$batch" --seed 1 "$data" 2>/dev/null |
  build/amdim-train --out "$tmp/one" "${model[@]}" --steps "$steps" 2>"$tmp/one.log"
build/amdim-load --workers 1 --batch "$batch" --seed 1 "$data" 2>/dev/null |
  build/amdim-train --out "$tmp/one2" "${model[@]}" --threads "$(nproc)" --steps "$steps" 2>"$tmp/one2.log"
"${mpirun[@]}" -np 2 sh -c "build/amdim-load --workers 1 --batch $batch --seed 1 --shard auto $data 2>/dev/null |
  build/amdim-train --out $tmp/two ${model[*]} --steps $steps --sync-bn" 2>"$tmp/two.log"
"${mpirun[@]}" -np 2 sh -c "build/amdim-load --workers 1 --batch $batch --seed 1 --shard auto $data 2>/dev/null |
  build/amdim-train --out $tmp/twop ${model[*]} --steps $steps" 2>"$tmp/twop.log"
r1=$(rate "$tmp/one.log")
r12=$(rate "$tmp/one2.log")
r2=$(rate "$tmp/two.log")
rp=$(rate "$tmp/twop.log")
coll=$(grep -o 'rank 0 of 2: .*' "$tmp/two.log" | sed 's/^rank 0 of 2: //')
collp=$(grep -o 'rank 0 of 2: .*' "$tmp/twop.log" | sed 's/^rank 0 of 2: //')
echo "dist_ranks: $(nproc) cores, data $data, global batch $batch, $steps steps, model ${model[*]:0:6}"
echo "  1 rank : $r1 steps/s (1 compute thread); with $(nproc) threads $r12 steps/s"
echo "  2 ranks: $r2 steps/s (--sync-bn), speed-up $(awk -v a="$r2" -v b="$r1" 'BEGIN { printf "%.2f", a / b }')x"
echo "           rank 0: $coll"
echo "  2 ranks: $rp steps/s (per-rank BatchNorm), speed-up $(awk -v a="$rp" -v b="$r1" 'BEGIN { printf "%.2f", a / b }')x"
echo "           rank 0: $collp"
l1=$(grep '"kind":"train"' "$tmp/one/metrics.jsonl" | tail -1 | grep -o '"loss":[0-9.e+-]*')
l2=$(grep '"kind":"train"' "$tmp/two/metrics.jsonl" | tail -1 | grep -o '"loss":[0-9.e+-]*')
echo "  mean loss over the $steps steps: 1 rank $l1, 2 ranks (--sync-bn) $l2"
