#!/bin/bash
# Dev exploration at commit 3dce761: the default repository (encoder nice 10 then) against the same
# artifacts with encoder nice 19, 2 rounds, order swapped, at 3x the capacity the no-admission runs
# of ../ measured (67.2 req/s, their median). Run from /tmp/ovlx, copied here.
set -u
cd "$(dirname "$0")/../../../.."
OUT=benchmarks/results/overload-default-2026-11-24/nice-exploration
rm -rf /tmp/ovl-repo-n19 && PYTHONPATH=. .venv/bin/python benchmarks/results/pooling-step-2026-11-24/render.py /tmp/ovl-repo-n19 encoder_nice=19
. benchmarks/results/overload-one.sh  # one NAME REPO [overload args] (the helper these scripts shared, copied, when they ran)
for r in 1 2; do
  if [ $r -eq 1 ]; then order="n19 n10"; else order="n10 n19"; fi
  for n in $order; do
    repo=artifacts/model_repository; [ $n = n19 ] && repo=/tmp/ovl-repo-n19
    one $n-r$r $repo --seed $r --capacity-rps 67.2
  done
done
