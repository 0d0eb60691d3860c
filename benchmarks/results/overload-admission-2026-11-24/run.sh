#!/bin/bash
# Overload at 3x capacity on today's default repository (3 python steps: tokenizer, query_encoder that
# pools, mips_topk; batch window 0) and on the same artifacts with admission 4 and 8 rows (+ encoder nice 10).
# Per round: capacity measured on the default repository, then both admission repositories at that
# capacity, their order swapped every round. Server on CPU 1 (serve --cpus 1), generator on CPU 0.
set -u
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/overload-admission-2026-11-24
for n in 4 8; do
  rm -rf /tmp/ovl-repo-adm$n
  PYTHONPATH=. .venv/bin/python benchmarks/results/pooling-step-2026-11-24/render.py /tmp/ovl-repo-adm$n \
      admission_max_rows=$n encoder_nice=10
done
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
  one default-r$r artifacts/model_repository --seed $r
  c=$(python3 -c "import json;print(json.load(open('$OUT/retrieve-default-r$r.json'))['capacity_rps'])")
  if [ $((r % 2)) -eq 1 ]; then order="4 8"; else order="8 4"; fi
  for n in $order; do one admission$n-nice10-r$r /tmp/ovl-repo-adm$n --seed $r --capacity-rps $c; done
done
