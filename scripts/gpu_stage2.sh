#!/usr/bin/env bash
# Stage 2's GPU figures in one short run (docs/tokens.md, README "Not measured yet"): the openai encoder's
# images/s bare vs through the pipeline (fp16 trunk, compiled), and token agreement with fp32 per precision.
#   scripts/gpu_stage2.sh [DVAE_CHECKPOINT]      # default: random openai weights (agreement is then indicative)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD"
PY="${PYTHON:-python}"
DVAE=("${1:+--dvae}" "${1:-}")
[[ -z "${1:-}" ]] && DVAE=(--preset openai)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" bench/token_agreement.py "${DVAE[@]}" --images 128 --batch 64
"$PY" bench/bench_encode.py "${DVAE[@]}" --images 4096 --shards 8 --batch 128 --compile --repeats 1
