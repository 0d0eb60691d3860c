"""p99 / p50 at 20 req/s per repository, median (min-max) of the rounds: python summarise.py > summary.md"""
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
print("| repository | p99 ms per round | p99 median (min–max) | p50 median | requests per round | failed | reconciled | commit |")
print("|---|---|---|---|---|---|---|---|")
for v, label in (("default", "default (search stub nice 0)"), ("idle", "`--topk-nice 20` (search stub SCHED_IDLE)")):
    rounds = [json.loads(p.read_text())["systems"]["triton"]["rounds"][0] | {"commit": json.loads(p.read_text())["git_commit"][:7]}
              for p in sorted(HERE.glob(f"{v}-r*/compare-retrieve.json"))]
    p99 = [r["fixed_rate_p99_ms"] for r in rounds]
    print(f"| {label} | {', '.join(f'{x:.1f}' for x in p99)} | {statistics.median(p99):.1f} ({min(p99):.1f}–{max(p99):.1f}) | "
          f"{statistics.median(r['fixed_rate_p50_ms'] for r in rounds):.1f} | {', '.join(str(r['fixed_rate_requests']) for r in rounds)} | "
          f"{', '.join(str(r['fixed_rate_failed']) for r in rounds)} | {', '.join(r['reconciliation'] for r in rounds)} | "
          f"{', '.join(sorted({r['commit'] for r in rounds}))} |")
