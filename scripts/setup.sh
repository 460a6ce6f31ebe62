#!/usr/bin/env bash
# Creates .venv with everything the project needs. Idempotent: a second run only re-checks.
# torch is installed first and pinned: an unpinned torch resolves to the newest CUDA build (GBs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q torch==2.13.0
  python -m pip install -q -e ".[dev]"
  # The official OpenAI dVAE package, only for the parity test: it pins old deps, so no-deps.
  python -m pip install -q --no-deps DALL-E==0.1
  rm -f .venv/.installed-*
  touch "$stamp"
fi
