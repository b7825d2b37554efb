#!/usr/bin/env bash
# The main job on the embedded default: trains the tiny model on the shipped standard-library corpus
# (progress bar; checkpoints, metrics.jsonl, TensorBoard summaries and loss_curve.png in RUN_DIR), then
# prints sample generations. Re-running resumes (or, when finished, only generates).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh runtime  # requirements.txt only: no torch, transformers or pytest
RUN_DIR="${RUN_DIR:-runs/tiny_demo}"
VENV="${VENV:-.venv}"
start=$(date +%s)
"$VENV/bin/quark" train --gin_file=configs/runs/pretrain_tiny.gin --gin.MODEL_DIR="'$RUN_DIR'" "$@"
echo
echo "== samples from $RUN_DIR (temperature 0.8, top-p 0.95) =="
"$VENV/bin/quark" generate --model_dir="$RUN_DIR" --prompt "def fib(n):" --prompt "import os
" --prompt "class Stack:" --max_new_tokens 64 --temperature 0.8 --top_p 0.95 --seed 0
echo
echo "== outputs: $RUN_DIR/{metrics.jsonl,loss_curve.png,config.gin,checkpoints/,tensorboard/} ($(( $(date +%s) - start )) s) =="
