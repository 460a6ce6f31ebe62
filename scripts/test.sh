#!/usr/bin/env bash
# The test command: set up .venv (scripts/setup.sh) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export NO_ALBUMENTATIONS_UPDATE=1
# Tests start their own isolated Ray instance; never inherit a cluster address.
unset RAY_ADDRESS
exec python -m pytest -q "$@"
