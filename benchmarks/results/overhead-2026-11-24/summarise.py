"""Median (min-max) over the rounds of each model's overhead figures: python summarise.py > summary.md"""
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


print("| model | rounds | calls matched per round | latency p50 ms | steps' compute p50 ms | overhead inside Triton, p50 ms "
      "| overhead client to client, p50 ms | overhead inside Triton, p99 ms |")
print("|---|---|---|---|---|---|---|---|")
for model in ("embed", "retrieve"):
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(HERE.glob(f"{model}-r*.json"))]
    if not runs:
        continue
    o = [r["all"]["overhead"] for r in runs]
    commits = {r["git_commit"] for r in runs}
    assert len(commits) == 1 and not commits.pop().endswith("-dirty"), "every round from one clean commit"
    print(f"| {model} | {len(runs)} | {', '.join(str(r['all']['calls']) for r in runs)} | "
          f"{spread([r['all']['latency_ms']['p50'] for r in runs])} | {spread([x['steps_compute']['p50_ms'] for x in o])} | "
          f"**{spread([x['ensemble']['p50_ms'] for x in o])}** | {spread([x['end_to_end']['p50_ms'] for x in o])} | "
          f"{spread([x['ensemble']['p99_ms'] for x in o])} |")
