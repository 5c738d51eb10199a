#!/usr/bin/env bash
# One call on a lent GPU machine: train and score the whole search grid, then leave the studies JSON and the
# final models under $OUT (or ./gpu_out) to bring back. Every run resumes from its checkpoint if called again.
#   bash scripts/gpu_search.sh [grid file]        (default scripts/grids/gpu_quality.json: the quality question)
# Needs: python with the packages of requirements.txt, the Fashion-MNIST files (AMBIENT_FMNIST_DIR or
# /usr/share/datasets/fashion-mnist) and the MiniLM text model; the script checks them before it trains.
set -euo pipefail
cd "$(dirname "$0")/.."
GRID="${1:-scripts/grids/gpu_quality.json}"
OUT="${OUT:-gpu_out}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" - <<'PY'
import torch, diffusers, faiss  # noqa: F401
from ambient.data import load_fashion_mnist
from ambient.text import get_text_encoder
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
load_fashion_mnist("train"); get_text_encoder("all-MiniLM-L6-v2")
PY
JOBS="${JOBS:-$("$PY" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["runs"]))' "$GRID")}"
# All runs share the one GPU: each is a small UNet, so they train side by side.
"$PY" -m ambient grid "$GRID" --jobs "$JOBS" --threads 1
# the second way of scoring (the app's empty prompt), where the grid has a twin: it trains nothing
EMPTY="${GRID%.json}_empty_prompt.json"
[ -f "$EMPTY" ] && "$PY" -m ambient grid "$EMPTY" --no-train
mkdir -p "$OUT"
NAME="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["name"])' "$GRID")"
STUDIES="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("studies_dir", "studies"))' "$GRID")"
cp -r "$STUDIES/$NAME" "$OUT/studies"
[ -f "$EMPTY" ] && cp -r "$STUDIES/${NAME}_empty_prompt" "$OUT/studies_empty_prompt"
for run in runs/*/; do
  [ -d "$run/model" ] && mkdir -p "$OUT/models/$(basename "$run")" && cp -r "$run/model/." "$OUT/models/$(basename "$run")/"
done
echo "studies and models in $OUT"
