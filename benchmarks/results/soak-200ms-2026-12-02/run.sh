#!/bin/bash
# Issue 14's check "no latency sample above 200 ms in a 60 s run at 50% of capacity", 3 runs per
# model, on the default repository (`make artifacts`). Server on CPU 0 (serve --cpus 0), generator
# on CPU 1. Each run: soak measures capacity (8 closed-loop callers, 20 s), then offers half of it,
# Poisson, for one 60 s window after a 10 s warm-up; the verdict judges the slowest sample.
set -u
cd "$(dirname "$0")/../../.."
OUT=benchmarks/results/soak-200ms-2026-12-02
for model in retrieve embed; do
  for r in 1 2 3; do
    port=$(( 18000 + RANDOM % 1000 ))
    .venv/bin/python -m model_repository serve --cpus 0 --grpc-port $port --http-port $((port+1)) --metrics-port $((port+2)) \
        --supervisor-metrics-port 0 --workdir /tmp/soak200-work > $OUT/server-$model-r$r.log 2>&1 &
    spid=$!
    for i in $(seq 120); do curl -sf localhost:$((port+1))/v2/health/ready >/dev/null && break; sleep 1; done
    .venv/bin/python -m benchmarks soak --grpc-url 127.0.0.1:$port --metrics-url http://127.0.0.1:$((port+2))/metrics \
        --model $model --generator-cpus 1 --windows 1 --window-s 60 --warmup 10 --out $OUT/soak-$model-r$r.json \
        > $OUT/soak-$model-r$r.log 2>&1
    echo "rc=$? $model r$r $(date +%T)"
    kill -INT $spid; wait $spid
  done
done
.venv/bin/python - <<'PY'
import json, statistics
from pathlib import Path
out = Path("benchmarks/results/soak-200ms-2026-12-02")
lines = ["| model | run | capacity req/s | offered req/s | requests | failed | p99 ms | slowest ms | <= 200 ms |", "|---|---|---|---|---|---|---|---|---|"]
for model in ("retrieve", "embed"):
    slowest = []
    for r in (1, 2, 3):
        d = json.loads((out / f"soak-{model}-r{r}.json").read_text())
        w = d["windows"][0]
        slowest.append(w["latency_ms"]["max"])
        lines.append(f"| {model} | {r} | {d['capacity_rps']:.1f} | {d['rate_rps']:.1f} | {w['issued']} | {w['failed']} | "
                     f"{w['latency_ms']['p99']:.1f} | {w['latency_ms']['max']:.1f} | {d['verdict']['max_latency_ok']} |")
    lines.append(f"| {model} | median | | | | | | {statistics.median(slowest):.1f} | |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
