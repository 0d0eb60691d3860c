#!/bin/bash
# retrieve at 20 req/s, open loop, on the default index: the default repository (search stub at nice 0)
# against the same artifacts rendered --topk-nice 20 (the search's stub under SCHED_IDLE), nothing else
# changed (admission 8 rows in both). One compare round per run, 3 rounds, the order swapped each round;
# compare pins the server to core 0 and the generator to core 1 and sends >= 2,000 requests per round.
set -u
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/topk-nice-20rps-2026-12-02
rm -rf /tmp/cmp-idle && PYTHONPATH=. .venv/bin/python benchmarks/results/pooling-step-2026-11-24/render.py /tmp/cmp-idle topk_nice=20
for r in 1 2 3; do
  if [ $((r % 2)) = 1 ]; then order="default idle"; else order="idle default"; fi
  for v in $order; do
    if [ $v = default ]; then repo=artifacts/model_repository; else repo=/tmp/cmp-idle; fi
    .venv/bin/python -m benchmarks compare --model retrieve --systems triton --fixed-rps 20 --repeats 1 \
        --repository $repo --out $OUT/$v-r$r/compare-retrieve.json > $OUT/$v-r$r.log 2>&1
    echo "rc=$? $v-r$r $(date +%T)"
  done
done
