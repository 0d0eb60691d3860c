#!/bin/bash
# pooling in the encoder's stub (the new CPU default) against pool_normalize as a step of its own
cd /work/main
PYTHONPATH=. .venv/bin/python render.py /tmp/repo_encoder
PYTHONPATH=. .venv/bin/python render.py /tmp/repo_separate pooling_step=separate
for r in 0 1 2; do
  for m in embed retrieve; do
    if [ $((r % 2)) -eq 0 ]; then order="separate encoder"; else order="encoder separate"; fi
    for v in $order; do
      .venv/bin/python -m benchmarks tail --model $m --rate 20 --seconds 60 --seed $r --server-cpus 0 --generator-cpus 1 \
        --repository /tmp/repo_$v --out $m-$v-r$r.json > $m-$v-r$r.txt 2>&1
      echo "rc=$? $m $v r$r $(date +%T)"
    done
  done
done
