# Sourced by scripts/demo.sh and scripts/test.sh: set up .venv and the environment both need.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh
. .venv/bin/activate
export NO_ALBUMENTATIONS_UPDATE=1   # albumentations (via img2dataset) phones home on import otherwise
unset RAY_ADDRESS                   # never inherit a cluster address: start (and own) our own Ray
