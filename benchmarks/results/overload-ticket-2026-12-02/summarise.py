"""Median (min-max) over the rounds of each run set's overload verdict: python summarise.py > summary.md
(the columns of ../overload-default-2026-11-24/summarise.py, for this folder's run sets)."""
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETS = {"no admission (capacity probe)": "retrieve-no-admission-r*.json", "default (search stub nice 0)": "retrieve-topk-default-r*.json",
        "--topk-nice 20 (search stub SCHED_IDLE)": "retrieve-topk-idle-r*.json",
        "A/B: no admission (capacity probe)": "retrieve-ab-no-admission-r*.json",
        "A/B: default before the change (aa8eb96 render: ticket back at pooling)": "retrieve-ab-topk-old-r*.json",
        "A/B: default after the change (ticket back at the search)": "retrieve-ab-topk-default-r*.json"}


def spread(values, fmt="{:.1f}"):
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


print("| run set | commit | capacity req/s | admitted p99, worst 5 s storm window, ms | refusal p50 / p99 ms "
      "| admitted in the storm / capacity | other errors | refused in the calm phases | verdict passed |")
print("|---|---|---|---|---|---|---|---|---|")
for name, pattern in SETS.items():
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(HERE.glob(pattern))]
    if not runs:
        continue
    # topk-idle-r3 reads 7911fab-dirty: run.sh (this folder's script) was edited while it ran; no code was
    commits = sorted({r["git_commit"][:7] + ("-dirty" if r["git_commit"].endswith("-dirty") else "") for r in runs})
    v = [r["verdict"] for r in runs]
    refusal = [r["storm"]["rejected_ms"] for r in runs if r["storm"]["rejected_ms"]["p99"] is not None]
    calm = [sum(w["rejected"] for i, w in enumerate(r["windows"]) if i < 2 or i >= len(r["windows"]) - 2) for r in runs]
    print(f"| {name} | {', '.join(commits)} | {spread([r['capacity_rps'] for r in runs])} | "
          f"{spread([x['admitted_p99_worst_window_ms'] for x in v], '{:,.0f}')} | "
          + (f"{spread([x['p50'] for x in refusal], '{:.2f}')} / {spread([x['p99'] for x in refusal], '{:.2f}')} | " if refusal else "– | ")
          + f"{spread([x['goodput_of_capacity'] for x in v], '{:.2f}')} | "
          f"{', '.join(str(sum(x['other_errors'].values())) for x in v)} | {', '.join(map(str, calm))} | "
          f"{', '.join(str(x['passed']) for x in v)} |")
