#!/bin/bash
# The ensemble overhead at p50, from Triton's per-request trace: three interleaved rounds of each model,
# server on core 0, generator on core 1, 20 requests/s Poisson, 60 s after a 5 s warm-up, default repository.
set -eu
cd "$(dirname "$0")/../../.."
out=benchmarks/results/overhead-2026-11-24
for r in 0 1 2; do
  if [ $((r % 2)) -eq 0 ]; then order="embed retrieve"; else order="retrieve embed"; fi
  for m in $order; do
    .venv/bin/python -m benchmarks tail --model $m --rate 20 --seconds 60 --server-cpus 0 --generator-cpus 1 \
      --seed $r --out $out/$m-r$r.json > $out/$m-r$r.md
    echo "r$r $m $(date +%T)"
  done
done
