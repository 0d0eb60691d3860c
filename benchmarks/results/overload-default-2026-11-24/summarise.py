"""Median (min-max) over the rounds of each run set's overload verdict: python summarise.py > summary.md"""
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


SETS = {"no-admission": "retrieve-no-admission-r*.json", "default (nice 10)": "retrieve-default-r*.json",
        "no-admission, second set": "retrieve-no-admission-nice19-r*.json", "default (nice 19)": "retrieve-default-nice19-r*.json",
        "dev: nice 10": "nice-exploration/retrieve-n10-r*.json", "dev: nice 19": "nice-exploration/retrieve-n19-r*.json"}
print("| run set | commit | capacity req/s | admitted p99, worst 5 s storm window, ms | refusal p50 / p99 ms "
      "| admitted in the storm / capacity | other errors | refused in the calm phases | verdict passed |")
print("|---|---|---|---|---|---|---|---|---|")
for name, pattern in SETS.items():
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(HERE.glob(pattern))]
    if not runs:
        continue
    commits = {r["git_commit"][:7] for r in runs}
    assert not any(c.endswith("-dirty") for c in (r["git_commit"] for r in runs)), commits
    v = [r["verdict"] for r in runs]
    refusal = [r["storm"]["rejected_ms"] for r in runs if r["storm"]["rejected_ms"]["p99"] is not None]
    # 5 s windows: calm 10 s, storm 30 s, calm 10 s
    calm = [sum(w["rejected"] for i, w in enumerate(r["windows"]) if i < 2 or i >= len(r["windows"]) - 2) for r in runs]
    print(f"| {name} | {', '.join(sorted(commits))} | {spread([r['capacity_rps'] for r in runs])} | "
          f"{spread([x['admitted_p99_worst_window_ms'] for x in v], '{:,.0f}')} | "
          + (f"{spread([x['p50'] for x in refusal], '{:.2f}')} / {spread([x['p99'] for x in refusal], '{:.2f}')} | " if refusal else "– | ")
          + f"{spread([x['goodput_of_capacity'] for x in v], '{:.2f}')} | "
          f"{', '.join(str(sum(x['other_errors'].values())) for x in v)} | {', '.join(map(str, calm))} | "
          f"{', '.join(str(x['passed']) for x in v)} |")
