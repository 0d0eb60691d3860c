"""The overload results folders' summary table: median (min-max) over the rounds of each run set's verdict.
Each folder's summarise.py names its run sets (label -> JSON glob) and calls ``table``."""
import json
import statistics
from pathlib import Path


def spread(values, fmt="{:.1f}"):
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def table(here: Path, sets: dict[str, str]) -> None:
    print("| run set | commit | capacity req/s | admitted p99, worst 5 s storm window, ms | refusal p50 / p99 ms "
          "| admitted in the storm / capacity | other errors | refused in the calm phases | verdict passed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, pattern in sets.items():
        runs = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(here.glob(pattern))]
        if not runs:
            continue
        commits = sorted({r["git_commit"][:7] + ("-dirty" if r["git_commit"].endswith("-dirty") else "") for r in runs})
        v = [r["verdict"] for r in runs]
        refusal = [r["storm"]["rejected_ms"] for r in runs if r["storm"]["rejected_ms"]["p99"] is not None]
        # 5 s windows: calm 10 s, storm 30 s, calm 10 s
        calm = [sum(w["rejected"] for i, w in enumerate(r["windows"]) if i < 2 or i >= len(r["windows"]) - 2) for r in runs]
        print(f"| {name} | {', '.join(commits)} | {spread([r['capacity_rps'] for r in runs])} | "
              f"{spread([x['admitted_p99_worst_window_ms'] for x in v], '{:,.0f}')} | "
              + (f"{spread([x['p50'] for x in refusal], '{:.2f}')} / {spread([x['p99'] for x in refusal], '{:.2f}')} | " if refusal else "– | ")
              + f"{spread([x['goodput_of_capacity'] for x in v], '{:.2f}')} | "
              f"{', '.join(str(sum(x['other_errors'].values())) for x in v)} | {', '.join(map(str, calm))} | "
              f"{', '.join(str(x['passed']) for x in v)} |")
