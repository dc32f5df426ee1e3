#!/usr/bin/env bash
# Training scenes in shards, generated in parallel (one process per shard), each with the conversations that
# scripts/make_{binding,counting,spatial,grounding}_data.py derive from its ground truth. For a machine with many cores
# (recipes/vlmkit-smol-e2e.toml reads data/shapes-shards/*/ by glob). Shard k uses seed
# 100 + k, so shards never repeat a scene, and the generator keeps every seed inside the training split.
#   bash scripts/make_shape_shards.sh 8 5000 data/shapes-shards     # 40k scenes: about a minute on 16 cores
# PYTHON names the interpreter (default .venv/bin/python); a finished shard is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
shards=${1:?usage: make_shape_shards.sh SHARDS SCENES_PER_SHARD [OUT_ROOT]} n=${2:?scenes per shard} root=${3:-data/shapes-shards}
PY=${PYTHON:-.venv/bin/python}

shard() {
  local out=$root/s$1
  [ -f "$out/grounding.jsonl" ] && return
  rm -rf "$out"
  "$PY" -m vlmkit data make shapes --split train --n "$n" --seed $((100 + $1)) --size 224 --out "$out" --no-progress
  for kind in binding counting spatial grounding; do "$PY" "scripts/make_${kind}_data.py" "$out"; done
}
mkdir -p "$root"
pids=()
for k in $(seq 0 $((shards - 1))); do shard "$k" > "$root.s$k.log" 2>&1 & pids+=($!); done
status=0
for k in "${!pids[@]}"; do wait "${pids[$k]}" || { echo "shard $k failed: see $root.s$k.log" >&2; status=1; }; done
[ $status = 0 ] && echo "wrote $shards shards of $n scenes in $root"
exit $status
