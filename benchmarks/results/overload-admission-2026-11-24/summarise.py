"""Median (min-max) over the rounds of each repository's overload verdict: python summarise.py > summary.md"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from overload_summary import spread  # noqa: E402


runs = {name: [json.loads(p.read_text(encoding="utf-8")) for p in sorted(HERE.glob(f"retrieve-{name}-r*.json"))]
        for name in ("default", "admission4-nice10", "admission8-nice10")}
commits = {r["git_commit"] for rs in runs.values() for r in rs}
assert len(commits) == 1 and not next(iter(commits)).endswith("-dirty"), commits
capacities = ", ".join(f"{r['capacity_rps']:.1f}" for r in runs["default"])
print(f"commit `{commits.pop()}`; capacity (req/s, default repository, per round): {capacities}\n")
print("| repository | admitted p99, worst 5 s storm window, ms | refusal p99 ms | admitted in the storm / capacity "
      "| other errors | p99 in the calm after, ms | verdict passed |")
print("|---|---|---|---|---|---|---|")
for name, rs in runs.items():
    v = [r["verdict"] for r in rs]
    refusal = [x["rejection_p99_ms"] for x in v if x["rejection_p99_ms"] is not None]
    print(f"| {name} | {spread([x['admitted_p99_worst_window_ms'] for x in v], '{:,.0f}')} | "
          f"{spread(refusal, '{:.2f}') if refusal else '– (none refused)'} | {spread([x['goodput_of_capacity'] for x in v], '{:.2f}')} | "
          f"{', '.join(str(sum(x['other_errors'].values())) for x in v)} | "
          f"{spread([x['recovered_p99_ms'] for x in v if x['recovered_p99_ms'] is not None] or [float('nan')])} | "
          f"{', '.join(str(x['passed']) for x in v)} |")
