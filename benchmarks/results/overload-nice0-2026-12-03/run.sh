#!/bin/bash
# Overload at 3x capacity with the new CPU default (both stubs at nice 0) against the old one (encoder
# stub nice 19, search stub SCHED_IDLE), 3 rounds, the two swapped each round. Capacity is measured each
# round on the same artifacts rendered with --admission-max-rows 0 (the probe's 8 closed-loop callers must
# not meet refusals). Server on CPU 1 (serve --cpus 1), generator on CPU 0. Same method as
# ../overload-ticket-2026-12-02/run.sh; the variants come from `python -m build variant`.
set -u
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/overload-nice0-2026-12-03
.venv/bin/python -m build variant --out /tmp/ovl-open --admission-max-rows 0
.venv/bin/python -m build variant --out /tmp/ovl-old --encoder-nice 19 --topk-nice 20
. benchmarks/results/overload-one.sh  # one NAME REPO [overload args]
for r in 1 2 3; do
  one no-admission-r$r /tmp/ovl-open --seed $r
  c=$(python3 -c "import json;print(json.load(open('$OUT/retrieve-no-admission-r$r.json'))['capacity_rps'])")
  if [ $((r % 2)) = 1 ]; then order="default old"; else order="old default"; fi
  for v in $order; do
    case $v in default) repo=artifacts/model_repository;; old) repo=/tmp/ovl-old;; esac
    one $v-r$r $repo --seed $r --capacity-rps $c
  done
done
