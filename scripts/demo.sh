#!/usr/bin/env bash
# The demo command: set up .venv, then run the whole pipeline on the embedded demo source.
#
#   1. start the demo HTTP server on 127.0.0.1 and write the demo source (synthetic shapes + rows
#      every filter must reject)
#   2. start a private Ray head (free ports, token auth) and `ray job submit` build_dataset to it
#   3. stage 2 on the same head: train the small dVAE (or reuse demo_out/stage2/dvae_demo.pt), train
#      the BPE tokenizer, encode the images into token shards
#   4. stage 3 on the same head: train the demo prior for a few CPU minutes (2 workers), logging
#      sample grids decoded by the dVAE; then sample.py writes demo_out/sample.png for one prompt
#   5. print the filter summary and the MLflow UI command; stop the server and the Ray head
#
# Everything lands in demo_out/ (override with DEMO_DIR) and MLflow in ./mlflow.db.
# DEMO_GOOD sets the number of good images (default 10000: the prior generalises to unseen two-object captions from
# them; at 1,600 steps 10,000 drew 96.6% of its samples fully right in scratch runs where 3,000 drew 94.0%, two-object
# captions 95.8% against 78.1%; docs/prior.md, "More images").
set -euo pipefail
. "$(dirname "$0")/env.sh"
DEMO=$(mkdir -p "${DEMO_DIR:-demo_out}" && cd "${DEMO_DIR:-demo_out}" && pwd)
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}
# Create the MLflow store once, before any concurrent writer (sqlite migrations race otherwise).
python -c "from common.tracking import ensure_experiment as e; [e(n) for n in ('build_dataset', 'train_dvae', 'encode_tokens', 'train_prior')]"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# 1. demo server + source ------------------------------------------------------------------------
mkdir -p "$DEMO/source/www"
rm -f "$DEMO/server.port"
# Reuse the previous run's port: the URLs in the source (and in a half-finished build's download
# lists) name it, so a resumed demo must serve the same addresses.
PORT=0
if [ -s "$DEMO/source/expected.json" ]; then
  PORT=$(python -c "import json, urllib.parse; print(urllib.parse.urlparse(json.load(open('$DEMO/source/expected.json'))['base_url']).port or 0)")
fi
start_server() {
  python orchestration/demo_server.py --root "$DEMO/source/www" --port "$1" --port-file "$DEMO/server.port" \
    > "$DEMO/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    [ -s "$DEMO/server.port" ] && return 0
    kill -0 "$server_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
if ! start_server "$PORT"; then
  echo "port $PORT is taken: serving on a new port (an unfinished earlier build would not find its URLs)"
  kill "$server_pid" 2>/dev/null || true
  start_server 0
fi
pids+=("$server_pid")
BASE_URL="http://127.0.0.1:$(cat "$DEMO/server.port")"
python orchestration/demo_source.py --out "$DEMO/source" --base-url "$BASE_URL" --n "${DEMO_GOOD:-10000}" > /dev/null
SOURCES=$(python -c "import json; print(' '.join('--source ' + s for s in json.load(open('$DEMO/source/expected.json'))['sources']))")

# 2. a private Ray head: every port free-chosen so it never collides with another cluster ---------
python -c "import secrets; print(secrets.token_hex(32))" > "$DEMO/ray_token"
chmod 600 "$DEMO/ray_token"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$DEMO/ray_token"
read -r GCS DASH AGENT AGENT_GRPC METRICS RUNTIME_ENV < <(python - <<'EOF'
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)
# --block: the head's processes live and die with this one process, so cleanup stops exactly
# the cluster this script started (`ray stop` would stop every Ray on the machine).
# A private temp dir too: a job's driver finds its cluster through <temp dir>/ray_current_cluster,
# which any other `ray start` on the machine would otherwise overwrite (the driver then dials that one).
RAY_TMP=$(mktemp -d /tmp/ray-demo-XXXXXX)   # short: Ray's socket paths live under it
# No drain at the end: on SIGTERM Ray 2.60 drains a node for up to 30 s (for Serve traffic, which this head has
# none of), and the demo waited those whole 30 s after its summary.
RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 ray start --head --block --node-ip-address 127.0.0.1 --port "$GCS" --num-cpus "${DEMO_CPUS:-2}" \
  --temp-dir "$RAY_TMP" --dashboard-host 127.0.0.1 --dashboard-port "$DASH" --dashboard-agent-listen-port "$AGENT" \
  --dashboard-agent-grpc-port "$AGENT_GRPC" --metrics-export-port "$METRICS" \
  --runtime-env-agent-port "$RUNTIME_ENV" --disable-usage-stats > "$DEMO/ray_head.log" 2>&1 &
pids+=($!)
export RAY_JOB_ADDRESS="http://127.0.0.1:$DASH"
# The job agent needs a few seconds after the head is up: probe quietly with a trivial job.
for _ in $(seq 90); do
  ray job submit --address "$RAY_JOB_ADDRESS" --no-wait -- true > /dev/null 2>&1 && break
  sleep 2
done
# The jobs' environment:
# - RAY_ADDRESS: Ray Train's PlacementGroupCleaner actor looks its cluster up with address "auto", which reads
#   /tmp/ray (not this head's private temp dir) and, with other Ray instances on the machine, dialled a foreign
#   one and printed a GCS-timeout traceback in the middle of the demo.
# - common.ray_cluster.console_env(): the console setting (quiet, or DALLE_RAY_DATA_VERBOSE=1) for every process
#   of a job, Ray Data's own SplitCoordinator actors included, which run no code of this project.
# - RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0: this head is one machine that nothing drains, so Ray Train's preemption
#   watcher has nothing to watch; it also printed an ERROR line at every training start (ray-project/ray#53727).
# - excludes: Ray 2.60's default working-dir excludes, named here so that it need not warn at every submit that
#   it now skips .git and .venv (RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES='' below: the list is ours, the same).
RUNTIME_ENV=$(python -c "
import json, sys
from common.ray_cluster import console_env
env = {'MLFLOW_TRACKING_URI': sys.argv[1], 'NO_ALBUMENTATIONS_UPDATE': '1', 'RAY_ADDRESS': sys.argv[2],
       'RAY_TRAIN_ENABLE_PREEMPTION_WATCHER': '0', **console_env()}
print(json.dumps({'env_vars': env, 'excludes': ['.git', '.venv', 'venv', '__pycache__']}))" "$MLFLOW_TRACKING_URI" "127.0.0.1:$GCS")
submit() {  # ray job submit; fails the demo unless the job succeeded
  local log="$DEMO/submit.log"
  RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES='' \
    ray job submit --address "$RAY_JOB_ADDRESS" --working-dir . --runtime-env-json "$RUNTIME_ENV" \
    -- "$@" 2>&1 | tee "$log"
  grep -q "succeeded" "$log"
}

# 3. stage 1: build_dataset ---------------------------------------------------------------------
# shellcheck disable=SC2086
submit python orchestration/build_dataset.py --config configs/demo.toml --output "$DEMO/dataset" $SOURCES

# 4. stage 2: dVAE (trained once, then reused), text tokenizer, token shards -------------------------
submit python orchestration/demo_stage2.py --dataset "$DEMO/dataset" --work "$DEMO/stage2"

# 5. stage 3: the prior, with sample grids decoded by the dVAE ---------------------------------------
submit python training/train_prior.py --config configs/prior_demo.toml --data.tokens "$DEMO/stage2/tokens" \
  --run.storage_path "$DEMO/ray_results" --train.dvae "$DEMO/stage2/dvae_demo.pt"
CKPT=$(find "$DEMO/ray_results/prior-demo" -name state.pt -printf '%T@ %h\n' | sort -n | tail -1 | cut -d' ' -f2)
PROMPT="a large red circle on a white background"
# The demo's sampling settings ([train] of configs/prior_demo.toml, chosen by measurement there).
read -r TEMPERATURE TOP_K < <(python -c "from bench.demo_quality import demo_sampling; print(*demo_sampling())")
python orchestration/sample_prior.py --checkpoint "$CKPT" --prompt "$PROMPT" --n 8 --out "$DEMO/sample.png" \
  --dvae "$DEMO/stage2/dvae_demo.pt" --temperature "$TEMPERATURE" --top-k "$TOP_K"

# 6. summary --------------------------------------------------------------------------------------
echo
echo "== Demo finished =="
echo "Dataset:        $DEMO/dataset   (filter report: $DEMO/dataset/report/filter_report.json)"
python -c "import json; from pipeline.report import summary_text; print(summary_text(json.load(open('$DEMO/dataset/report/filter_report.json'))))"
echo "Tokens:         $DEMO/stage2/tokens   (dVAE: $DEMO/stage2/dvae_demo.pt)"
echo "Prior:          $CKPT"
echo "Sample grid:    $DEMO/sample.png   (\"$PROMPT\", temperature $TEMPERATURE, top-k $TOP_K)"
echo
echo "Does the demo draw what its captions say? (scene classifier, bench/demo_quality.py)"
python bench/demo_quality.py "$DEMO" --json "$DEMO/quality.json"
echo
echo "Open the MLflow UI (experiments build_dataset, train_dvae, encode_tokens, train_prior):"
python -c "from common.tracking import ui_command; print('  ' + ui_command())"
