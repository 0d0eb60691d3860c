#!/usr/bin/env bash
# Time from a fresh clone to the first answered query, then a second `make serve`.
# Usage: bash benchmarks/fresh_setup.sh [GRPC_PORT]   (run from the repository root)
# Clones HEAD into a temporary folder, so nothing here is reused; serves on loopback
# only and stops the servers it started.
set -euo pipefail
port=${1:-28001}
repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
git clone -q "$repo" "$work/repo"
cd "$work/repo"
ask() { .venv/bin/python -m clients query "how do I copy a file in python" -k 3 --url "127.0.0.1:$port" > "$work/answer.txt" 2>/dev/null; }
serve() { make serve GRPC_PORT="$port" HTTP_PORT=$((port - 1)) METRICS_PORT=$((port + 1)) > "$work/serve-$1.log" 2>&1 & }
stop() { pkill -INT -f "model_repository serve --host 127.0.0.1 --grpc-port $port" || true; sleep 8; }
trap stop EXIT

for run in first second; do
  start=$(date +%s.%N)
  serve "$run"
  deadline=$(( $(date +%s) + 900 ))
  until ask; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "no answer within 900 s; see $work/serve-$run.log"; exit 1; }
    sleep 0.5
  done
  echo "$run make serve: first answer after $(echo "$(date +%s.%N) - $start" | bc) s"
  stop
done
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%F); answer:"
cat "$work/answer.txt"
