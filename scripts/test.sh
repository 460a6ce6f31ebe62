#!/usr/bin/env bash
# The test command: set up .venv (scripts/setup.sh) and run the whole test suite.
set -euo pipefail
. "$(dirname "$0")/env.sh"   # tests start their own isolated Ray instances
exec python -m pytest -q "$@"
