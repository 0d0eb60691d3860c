"""Student depth against what it keeps: dev nDCG@10 ratio to stage 1 (sweep.json) over the speed-up on
the serving engine (ONNX Runtime, one thread), one point per set and student depth. The speed-ups are the
ones `../student-speed-2026-12-03/speed.py` measured side by side for these shapes (1, 2 and 3 layers cut
from the stage-1 tower; speed depends on the shape, not on the weights).

    .venv/bin/python benchmarks/results/training-cpu-small-2026-12-07-depth/frontier.py
Writes frontier.png and frontier.md beside itself. A sweep candidate's depth is its run card's
student_layers; the speed shape it is matched with is named "student, N layer(s)" in speed.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from model_repository.runtime.provenance import pyplot, save_figure  # noqa: E402

KEEP, SPEEDUP = 0.95, 4.0


def main() -> None:
    sweep = json.loads((HERE / "sweep.json").read_text())
    speed = json.loads((HERE.parent / "student-speed-2026-12-03" / "speed.json").read_text())["speedup"]
    rows = []
    for label, c in sweep["candidates"].items():
        layers = c["shape"]["student_layers"]
        s = speed[f"student, {layers} layer{'s' if layers > 1 else ''} | onnxruntime"]
        rows.append((label, layers, min(s.values()), s["batch1_median_ms"], s["batch64_ms_per_query"], c["ratio"]))
    rows.sort(key=lambda r: r[1])
    rows.insert(0, ("stage 1 (6 layers)", 6, 1.0, 1.0, 1.0, {n: 1.0 for n in rows[0][5]}))  # itself, by definition
    sets = list(rows[0][5])
    lines = ["| student | speed-up b1 / b64 (ONNX Runtime, 1 thread) | " + " | ".join(sets) + " | worst |",
             "|---|---|" + "---|" * (len(sets) + 1)]
    for label, _, _, b1, b64, ratio in rows:
        lines.append(f"| {label} | {b1:.2f}x / {b64:.2f}x | " + " | ".join(f"{ratio[s]:.4f}" for s in sets)
                     + f" | {min(ratio.values()):.4f} |")
    (HERE / "frontier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    students = rows[1:]  # stage 1 is a point of its own: nothing was measured between 3 and 6 layers
    for s in sets:
        ax.plot([r[2] for r in students], [r[5][s] for r in students], "o-", label=s)
    ax.plot([1.0], [1.0], "k*", ms=9, label="stage 1 itself")
    for label, _, x, _, _, ratio in students:  # under its lowest point
        ax.annotate(label, (x, min(ratio.values())), textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    ax.axhline(KEEP, color="grey", ls="--", lw=1)
    ax.axvline(SPEEDUP, color="grey", ls=":", lw=1)
    ax.text(SPEEDUP, ax.get_ylim()[0], " 4x", fontsize=8, va="bottom")
    ax.set_xlabel("speed-up over stage 1 (min of batch 1 and 64; ONNX Runtime, 1 thread)", fontsize=9)
    ax.set_ylabel("dev nDCG@10, student / stage 1")
    ax.set_title("What a student cut from the stage-1 tower keeps, by depth (dev splits)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, HERE / "frontier.png", dpi=110)


if __name__ == "__main__":
    main()
