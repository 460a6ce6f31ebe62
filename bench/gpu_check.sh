#!/usr/bin/env bash
# The GPU check of issue 12 (see bench/gpu_check.py): one JSON file of figures, under 8 minutes on one GPU.
#   bench/gpu_check.sh [OUT_JSON]        default: $OUT/gpu_check.json (or ./gpu_check.json)
#   bench/gpu_check.sh --cpu-smoke /tmp/check.json
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=()
if [[ "${1:-}" == "--cpu-smoke" ]]; then smoke=(--cpu-smoke); shift; fi
out="${1:-${OUT:-.}/gpu_check.json}"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python}" bench/gpu_check.py "${smoke[@]}" --out "$out"
