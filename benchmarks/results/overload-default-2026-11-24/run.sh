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
. benchmarks/results/overload-one.sh  # one NAME REPO [overload args] (the helper these scripts shared, copied, when they ran)
for r in 1 2 3; do
  one no-admission$TAG-r$r /tmp/ovl-repo-open --seed $r
  c=$(python3 -c "import json;print(json.load(open('$OUT/retrieve-no-admission$TAG-r$r.json'))['capacity_rps'])")
  one default$TAG-r$r artifacts/model_repository --seed $r --capacity-rps $c
done
