#!/bin/bash
# Overload at 3x capacity once retrieve's admission ticket comes back after its search (not at pooling):
# the default repository (search stub at nice 0) against the same artifacts rendered with --topk-nice 20
# (the search's stub under SCHED_IDLE), 3 rounds, the two swapped each round. Capacity is measured each
# round on the same artifacts rendered with --admission-max-rows 0 (the probe's 8 closed-loop callers must
# not meet refusals). Server on CPU 1 (serve --cpus 1), generator on CPU 0. Same method as
# ../overload-default-2026-11-24/run.sh.
#
# The second set (SET=ab): the default against the default as the commit before the change (aa8eb96)
# renders it, its ticket given back at pooling (git worktree add /tmp/old aa8eb96; rendered repositories
# carry their own runtime), to tell the change from the machine's day.
set -u
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/overload-ticket-2026-12-02
R=benchmarks/results/pooling-step-2026-11-24/render.py
SET=${SET:-first}
rm -rf /tmp/ovl-open /tmp/ovl-idle
PYTHONPATH=. .venv/bin/python $R /tmp/ovl-open admission_max_rows=0
PYTHONPATH=. .venv/bin/python $R /tmp/ovl-idle topk_nice=20
if [ $SET = ab ]; then rm -rf /tmp/ovl-old; PYTHONPATH=/tmp/old .venv/bin/python $R /tmp/ovl-old; A=old; B=default; T=ab-; else A=default; B=idle; T=; fi
. benchmarks/results/overload-one.sh  # one NAME REPO [overload args] (the helper these scripts shared, copied, when they ran)
for r in 1 2 3; do
  one ${T}no-admission-r$r /tmp/ovl-open --seed $r
  c=$(python3 -c "import json;print(json.load(open('$OUT/retrieve-${T}no-admission-r$r.json'))['capacity_rps'])")
  if [ $((r % 2)) = 1 ]; then order="$A $B"; else order="$B $A"; fi
  for v in $order; do
    case $v in default) repo=artifacts/model_repository;; idle) repo=/tmp/ovl-idle;; old) repo=/tmp/ovl-old;; esac
    one ${T}topk-$v-r$r $repo --seed $r --capacity-rps $c
  done
done
