#!/bin/bash
# Overload at 3x capacity on the repository `make` renders now (admission 8 rows, encoder nice 10:
# the CPU defaults), 3 rounds. Capacity is measured each round on the same artifacts rendered with
# --admission-max-rows 0 (the probe's 8 closed-loop callers must not meet refusals), then the
# default repository takes 3x that. Server on CPU 1 (serve --cpus 1), generator on CPU 0.
set -u
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/overload-default-2026-11-24
TAG=${TAG:-}  # empty: the first set (commit 3dce761, encoder nice 10); TAG=-nice19: the set after the nice change
rm -rf /tmp/ovl-repo-open
PYTHONPATH=. .venv/bin/python benchmarks/results/pooling-step-2026-11-24/render.py /tmp/ovl-repo-open admission_max_rows=0
one() {  # NAME REPO [overload args]
  local name=$1 repo=$2; shift 2
  local port=$(( 18000 + RANDOM % 1000 ))
  .venv/bin/python -m model_repository serve --cpus 1 --repository "$repo" --grpc-port $port --http-port $((port+1)) \
      --metrics-port $((port+2)) --supervisor-metrics-port 0 --workdir /tmp/ovl-work-$name > $OUT/server-$name.log 2>&1 &
  local spid=$!
  for i in $(seq 120); do curl -sf localhost:$((port+1))/v2/health/ready >/dev/null && break; sleep 1; done
  .venv/bin/python -m benchmarks overload --grpc-url 127.0.0.1:$port --metrics-url http://127.0.0.1:$((port+2))/metrics \
      --slo-p99-ms 150 --generator-cpus 0 --out $OUT/retrieve-$name.json "$@" > $OUT/retrieve-$name.log 2>&1
  echo "rc=$? $name $(date +%T)"
  kill -INT $spid; wait $spid
}
for r in 1 2 3; do
  one no-admission$TAG-r$r /tmp/ovl-repo-open --seed $r
  c=$(python3 -c "import json;print(json.load(open('$OUT/retrieve-no-admission$TAG-r$r.json'))['capacity_rps'])")
  one default$TAG-r$r artifacts/model_repository --seed $r --capacity-rps $c
done
