"""The Matryoshka A/B on the dev splits, as a table and a plot:
.venv/bin/python benchmarks/results/training-cpu-small-2026-11-24/matryoshka/render.py (PYTHONPATH=.)

Reads without/metrics.json and with/metrics.json (each a sweep's eval-dev: stage-1 towers and student rows),
writes matryoshka.md and matryoshka.png next to them.
"""
import json
from pathlib import Path

from model_repository.runtime.provenance import pyplot

HERE = Path(__file__).resolve().parent
RUNS = {"without": HERE / "without" / "metrics.json", "with Matryoshka": HERE / "with" / "metrics.json"}
ROWS = ("stage-1 towers", "student -> stage-1 doc index")

runs = {name: json.loads(path.read_text(encoding="utf-8")) for name, path in RUNS.items()}
sets = list(runs["without"]["sets"])
lines = ["| dev set | model | training | full-width nDCG@10 | change | recall@10 vs exact, 128 dims | 256 dims |",
         "|---|---|---|---|---|---|---|"]
for s in sets:
    for row in ROWS:
        base = runs["without"]["sets"][s]["rows"][row]["nDCG@10"]
        for name, run in runs.items():
            m = run["sets"][s]["rows"][row]
            change = "" if name == "without" else f"{m['nDCG@10'] / base - 1:+.2%}"
            t = m["R@10_vs_exact"]
            lines.append(f"| {s} | {row} | {name} | {m['nDCG@10']:.4f} | {change} | {t['matryoshka:128']:.3f} | {t['matryoshka:256']:.3f} |")
(HERE / "matryoshka.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
print("\n".join(lines))

plt = pyplot()
fig, axes = plt.subplots(1, len(ROWS), figsize=(11, 3.8), sharey=True)
for ax, row in zip(axes, ROWS):
    width = 0.8 / (2 * len(runs))
    for i, (name, run) in enumerate(runs.items()):
        for j, d in enumerate((128, 256)):
            values = [run["sets"][s]["rows"][row]["R@10_vs_exact"][f"matryoshka:{d}"] for s in sets]
            ax.bar([x + (2 * j + i) * width for x in range(len(sets))], values, width, label=f"{d} dims, {name}",
                   hatch="//" if name != "without" else None, color=f"C{j}", alpha=1.0 if name != "without" else 0.5)
    ax.set_xticks([x + 1.5 * width for x in range(len(sets))], sets, fontsize=8)
    ax.set_title(row, fontsize=9)
    ax.set_ylim(0, 1)
axes[0].set_ylabel("recall@10 of the truncated index\nagainst the exact full-width top 10")
axes[-1].legend(fontsize=7, loc="lower right")
fig.suptitle("Matryoshka training: truncated-index recall on the dev splits (cpu-small)", fontsize=10)
fig.tight_layout()
fig.savefig(HERE / "matryoshka.png", dpi=110)
