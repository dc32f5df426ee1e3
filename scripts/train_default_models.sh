#!/usr/bin/env bash
# Reproduce the default models from scratch: data, vlmkit-clip (two rounds), vlmkit-smol (connector fit, stage 2,
# the oracle stage, the MLP connector fit, a short stage on the whole mixture, the same at 64 visual tokens, and
# the end-to-end stages 3 and 3b, and stage 3c, which teaches the abstention on charts and words), then fp16 exports
# into weights/*.new. Safe to re-run: finished steps are skipped
# and an interrupted training run resumes from its latest checkpoint. Up to stage 2d, about 8 hours on 2 CPU cores;
# stages 3 and 3b took 15 minutes on one H100 and would take about a day and a half on 2 CPU cores (`vlmkit train`
# uses a GPU when there is one). Run it in the background:
#   nohup bash scripts/train_default_models.sh > train.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
V=${VLMKIT:-.venv/bin/vlmkit}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

make() {  # make NAME SPLIT OUT [args...]: generate once
  local name=$1 split=$2 out=$3; shift 3
  [ -f "$out/manifest.json" ] || $V data make "$name" --split "$split" --out "$out" --no-progress "$@"
}
train() {  # train RECIPE RUN_DIR: fresh, resumed, or skipped when finished
  local recipe=$1 run=$2
  if [ -f "$run/final/model.safetensors" ]; then echo "done: $run"; return; fi
  if [ -d "$run/checkpoints" ] && [ -n "$(ls -A "$run/checkpoints")" ]; then $V train "$recipe" --resume --no-progress
  else $V train "$recipe" --no-progress; fi
}

make fashion-mnist train data/fmnist/train --n 20000
make fashion-mnist val data/fmnist/val --n 1000
make fashion-mnist train data/fmnist-all/train
make shapes train data/shapes112/train --n 6000 --size 112
for s in shapes text charts; do make $s val data/$s/val --n 200 --size 224; done
make shapes train data/shapes/train --n 10000 --size 224
make text train data/text/train --n 8000 --size 224
make charts train data/charts/train --n 8000 --size 224
make easy-vqa train data/easy-vqa/train
make unsure train data/unsure-small/train --n 300 --seed 1

train recipes/vlmkit-clip.toml runs/vlmkit-clip
train recipes/vlmkit-clip-more.toml runs/vlmkit-clip-more
# stage 1: the connector fitted in closed form from the worlds' ground truth (minutes; see the script's docstring)
[ -f runs/vlmkit-smol-align/final/model.safetensors ] || .venv/bin/python scripts/fit_connector.py \
  recipes/vlmkit-smol-stage1.toml --out runs/vlmkit-smol-align/final --images 1500
train recipes/vlmkit-smol-stage2.toml runs/vlmkit-smol-stage2
# stage 2b: the adapters learn to bind colour to shape from ground-truth word tokens in the visual positions
[ -f data/shapes/train/binding.jsonl ] || .venv/bin/python scripts/make_binding_data.py data/shapes/train
if [ ! -f runs/vlmkit-smol-oracle/final/model.safetensors ]; then
  resume=$([ -d runs/vlmkit-smol-oracle/checkpoints ] && echo --resume || true)
  .venv/bin/python scripts/oracle_stage.py train recipes/vlmkit-smol-oracle.toml --worlds data/shapes/train data/shapes/val $resume
fi
# an MLP connector regressed onto the same targets (closer to them than stage 1's linear map), carrying those adapters
[ -f runs/vlmkit-smol-mlp/final/model.safetensors ] || .venv/bin/python scripts/fit_connector.py \
  recipes/vlmkit-smol-stage1.toml --set model.connector.hidden_dim=1024 --truth data/shapes/train/truth.jsonl \
  --images 5000 --adapters-from runs/vlmkit-smol-oracle/final --out runs/vlmkit-smol-mlp/final
# stage 2c: real tokens, the whole mixture (brings the abstention and easy-vqa back)
train recipes/vlmkit-smol-polish.toml runs/vlmkit-smol-polish
# 64 visual tokens: the MLP connector refitted for pixel shuffle r = 2 carrying stage 2c's adapters, then stage 2d
[ -f runs/vlmkit-smol-r2mlp/final/model.safetensors ] || .venv/bin/python scripts/fit_connector.py \
  recipes/vlmkit-smol-stage1.toml --set model.connector.scale_factor=2 --set model.connector.hidden_dim=1024 \
  --truth data/shapes/train/truth.jsonl --images 4000 --adapters-from runs/vlmkit-smol-polish/final \
  --out runs/vlmkit-smol-r2mlp/final
train recipes/vlmkit-smol-64.toml runs/vlmkit-smol-64
# stages 3 and 3b: tower, connector and adapters trained end to end on 40k fresh scenes (in shards, generated in parallel)
bash scripts/make_shape_shards.sh 8 5000 data/shapes-shards
train recipes/vlmkit-smol-e2e.toml runs/vlmkit-smol-e2e
train recipes/vlmkit-smol-e2e-more.toml runs/vlmkit-smol-e2e-more
# stage 3c: abstain on charts and words (not yet trained to read them) while the shape skills keep their share
make charts train data/charts400/train --n 400 --size 224
make text train data/text400/train --n 400 --size 224
for d in charts400 text400; do
  [ -f data/$d/train/abstain.jsonl ] || .venv/bin/python scripts/make_abstain_data.py data/$d/train
done
for k in counting spatial grounding; do
  [ -f data/shapes/train/$k.jsonl ] || .venv/bin/python scripts/make_${k}_data.py data/shapes/train
done
train recipes/vlmkit-smol-abstain-keep.toml runs/vlmkit-smol-abstain-keep
# stage 4: the box head (models/box_head.py), fitted on the finished model's own states; its other weights unchanged
[ -f data/shapes/val/boxes.jsonl ] || .venv/bin/python scripts/make_grounding_data.py data/shapes/val --eval --scenes 30
[ -f runs/vlmkit-smol-boxes/final/model.safetensors ] || .venv/bin/python scripts/fit_box_head.py \
  runs/vlmkit-smol-abstain-keep/final --train data/shapes/train/grounding.jsonl --images 3000 \
  --val data/shapes/val/boxes.jsonl --cache runs/box-head-cache --out runs/vlmkit-smol-boxes/final

for m in vlmkit-clip:vlmkit-clip-more vlmkit-smol:vlmkit-smol-boxes; do
  name=${m%%:*} run=runs/${m##*:}
  [ -f "weights/$name.new/model.safetensors" ] || $V export "$run/final" --out "weights/$name.new"
done
echo "exports in weights/*.new: compare them (vlmkit eval) before replacing weights/vlmkit-clip and weights/vlmkit-smol"
