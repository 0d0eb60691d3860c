#!/bin/bash
# Dev exploration at commit 3dce761: the default repository (encoder nice 10 then) against the same
# artifacts with encoder nice 19, 2 rounds, order swapped, at 3x the capacity the no-admission runs
# of ../ measured (67.2 req/s, their median). Run from /tmp/ovlx, copied here.
set -u
cd "$(dirname "$0")/../../../.."
OUT=benchmarks/results/overload-default-2026-11-24/nice-exploration
rm -rf /tmp/ovl-repo-n19 && PYTHONPATH=. .venv/bin/python benchmarks/results/pooling-step-2026-11-24/render.py /tmp/ovl-repo-n19 encoder_nice=19
one() {
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
for r in 1 2; do
  if [ $r -eq 1 ]; then order="n19 n10"; else order="n10 n19"; fi
  for n in $order; do
    repo=artifacts/model_repository; [ $n = n19 ] && repo=/tmp/ovl-repo-n19
    one $n-r$r $repo --seed $r --capacity-rps 67.2
  done
done
