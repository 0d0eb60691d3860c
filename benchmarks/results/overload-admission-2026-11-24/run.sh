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
. benchmarks/results/overload-one.sh  # one NAME REPO [overload args] (the helper these scripts shared, copied, when they ran)
for r in 1 2 3; do
  one default-r$r artifacts/model_repository --seed $r
  c=$(python3 -c "import json;print(json.load(open('$OUT/retrieve-default-r$r.json'))['capacity_rps'])")
  if [ $((r % 2)) -eq 1 ]; then order="4 8"; else order="8 4"; fi
  for n in $order; do one admission$n-nice10-r$r /tmp/ovl-repo-adm$n --seed $r --capacity-rps $c; done
done
