"""Choose a setting on the dev splits only: train each candidate, score it on every dev set.

    python -m training sweep --stage stage1 --try "plain:stage1.l2sp=0" --try "l2sp:stage1.l2sp=0.1"
    python -m training sweep --stage stage2 --teacher RUN/stage1 --try "debian:stage2.queries=''" ...

A candidate is a label and ``;``-separated ``--set`` overrides of the recipe. Stage 1
candidates are scored next to the off-the-shelf start; stage 2 candidates distil a
student from one stage-1 run and are scored against its document index. Nothing here
reads a test split. ``sweep.json`` records every candidate, its dev metrics, the rule
and the pick; ``sweep.png`` plots them. Run again into the same folder, a sweep keeps the
candidates it has already scored and adds the new ones.

The rules (the issue's targets, applied to dev):
- stage 1: among candidates at or above the start on every dev set and above it on
  Debian, the highest mean nDCG@10; if none qualifies, the largest worst-set margin.
- stage 2: speed is a hard constraint: only students that encode queries >= 4x faster
  than the stage-1 query tower at batch 1 and at batch 64 (measured side by side on dev
  queries) may be picked. Speed belongs to a student's shape, not to its training run, so
  candidates of one shape (same start, layers, feed-forward width, projection and parameter count) share one
  figure: the median of all their side-by-side timings (identical shapes measured 3.67x and
  4.17x alone, which split them on timing noise). Among them, the smallest whose worst-set nDCG@10 ratio to
  stage 1 is >= 0.95; if none keeps 95%, the highest worst-set ratio. If no student is
  fast enough, the fastest (of equally fast ones, the best worst-set ratio).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import evaluate
from .config import load
from .towers import resolve_model

KEEP = 0.95
SPEEDUP = 4.0


def parse_candidate(text: str) -> tuple[str, list[str]]:
    label, sep, rest = text.partition(":")
    if not sep or not label.strip():
        raise ValueError(f"--try takes LABEL:section.field=value[;...]; got {text!r}")
    return label.strip(), [o.strip() for o in rest.split(";") if o.strip()]


def pick_stage1(scores: dict[str, dict]) -> tuple[str, str]:
    def margins(label):
        return scores[label]["minus_start"]

    ok = [lab for lab in scores if min(margins(lab).values()) >= 0 and any(v > 0 for k, v in margins(lab).items() if "debian" in k)]
    if ok:
        best = max(ok, key=lambda lab: np.mean(list(scores[lab]["ndcg10"].values())))
        return best, "at or above the start on every dev set and above it on Debian; highest mean nDCG@10"
    best = max(scores, key=lambda lab: min(margins(lab).values()))
    return best, "no candidate reached the start on every dev set; largest worst-set margin"


def shape_key(entry: dict, label: str) -> str:
    """The student's shape (its speed's cause); a candidate without one is a shape of its own."""
    shape = entry.get("shape")
    return json.dumps(shape, sort_keys=True) if shape else f"label:{label}"


def speedup_by_shape(scores: dict[str, dict]) -> dict[str, dict]:
    """Per candidate, its shape's speed-up: the median of every timing of that shape, per batch size,
    with the timings it pools."""
    pooled: dict[str, list[dict]] = {}
    for label, entry in scores.items():
        pooled.setdefault(shape_key(entry, label), []).append(entry["speedup"])
    out = {}
    for label, entry in scores.items():
        runs = pooled[shape_key(entry, label)]
        out[label] = {b: float(np.median([r[b] for r in runs])) for b in ("batch1", "batch64")} | {"timings": len(runs)}
    return out


def pick_stage2(scores: dict[str, dict]) -> tuple[str, str]:
    by_shape = speedup_by_shape(scores)

    def speedup(lab):
        return min(by_shape[lab]["batch1"], by_shape[lab]["batch64"])

    def worst(lab):
        return min(scores[lab]["ratio"].values())

    fast = [lab for lab in scores if speedup(lab) >= SPEEDUP]
    if not fast:
        best = max(scores, key=lambda lab: (speedup(lab), worst(lab)))
        return best, f"no student was {SPEEDUP:g}x faster than stage 1 at batch 1 and 64; the fastest (of one shape: the best worst-set ratio)"
    ok = [lab for lab in fast if worst(lab) >= KEEP]
    if ok:
        best = min(ok, key=lambda lab: (scores[lab]["parameters"], -worst(lab)))
        return best, f"smallest student at >= {SPEEDUP:g}x keeping >= {KEEP:.0%} of stage 1 on every dev set"
    best = max(fast, key=worst)
    return best, f"no student at >= {SPEEDUP:g}x kept {KEEP:.0%} on every dev set; highest worst-set ratio among those at >= {SPEEDUP:g}x"


def run(recipe: str, base_overrides: list[str], stage: str, candidates: list[str], out: Path, teacher: Path | None = None) -> dict:
    from . import stage1, stage2
    from .steps import data_step, log

    out.mkdir(parents=True, exist_ok=True)
    cache = evaluate.EMBEDDING_CACHE
    scores: dict[str, dict] = {}
    previous = out / "sweep.json"
    if previous.exists():  # a sweep resumes: candidates already scored in this folder are kept
        summary = json.loads(previous.read_text(encoding="utf-8"))
        if summary["stage"] == stage and summary["base_overrides"] == base_overrides:
            scores = summary["candidates"]
    if stage == "stage2":
        c = load(recipe, base_overrides)
        for label in [lab for lab in scores if "shape" not in scores[lab]]:  # scored before shapes pooled their timings
            card = out / label / "stage2" / "run_card.json"
            if card.exists():
                scores[label]["shape"] = student_shape(json.loads(card.read_text(encoding="utf-8")))
        for label in [lab for lab in scores if "speedup" not in scores[lab]]:  # scored before speed was part of the rule
            scores[label]["speedup"] = student_speedup(teacher, out / label, c.eval.of_split("dev"), c.eval.latency_queries)
            log(f"sweep stage2 {label}: speed measured, {scores[label]['speedup']['batch1']:.2f}x at batch 1")
        if scores:
            summary = write(out, stage, recipe, base_overrides, teacher, scores)
    for text in candidates:
        label, overrides = parse_candidate(text)
        c = load(recipe, base_overrides + overrides)
        sets = c.eval.of_split("dev")  # a sweep scores dev sets only
        folder = out / label
        if label in scores:
            if scores[label]["overrides"] != overrides:
                raise ValueError(f"--try {label}: already scored in {previous} with {scores[label]['overrides']}; pick another label")
            log(f"sweep {stage} {label}: already scored, kept")
            continue
        started = time.monotonic()
        if stage == "stage1":
            stage1.train(c.stage1, data_step(c), folder / "stage1")
            baseline = str(resolve_model(c.eval.baseline, "eval.baseline"))
            rows = [evaluate.Row(evaluate.BASELINE, baseline, baseline),
                    evaluate.Row(evaluate.STAGE1, str(folder / "stage1" / "query"), str(folder / "stage1" / "doc"))]
        else:
            if teacher is None:
                raise ValueError("--teacher: a stage-2 sweep needs the stage-1 run folder (holding query/ and doc/)")
            stage2.train(c.stage2, teacher / "query", data_step(c), folder / "stage2", out / "teacher-embeddings")
            rows = [evaluate.Row(evaluate.STAGE1, str(teacher / "query"), str(teacher / "doc")),
                    evaluate.Row(evaluate.STUDENT, str(folder / "stage2" / "student"), str(teacher / "doc"))]
        results = evaluate.evaluate(rows, sets, c.eval.batch_size, 0, cache)
        evaluate.write(results, folder / "eval-dev")
        per_set = {name: s["rows"] for name, s in results["sets"].items()}
        entry = {"overrides": overrides, "wall_s": round(time.monotonic() - started, 1), "metrics": per_set}
        if stage == "stage1":
            entry["ndcg10"] = {n: r[evaluate.STAGE1]["nDCG@10"] for n, r in per_set.items()}
            entry["minus_start"] = results["ratios"]["ndcg10_stage1_minus_start"]
        else:
            entry["ndcg10"] = {n: r[evaluate.STUDENT]["nDCG@10"] for n, r in per_set.items()}
            entry["ratio"] = results["ratios"]["ndcg10_student_over_stage1"]
            card = json.loads((folder / "stage2" / "run_card.json").read_text())
            entry["parameters"] = card["metrics"]["student_parameters"]
            entry["shape"] = student_shape(card)
            entry["speedup"] = student_speedup(teacher, folder, sets, c.eval.latency_queries)
        scores[label] = entry
        log(f"sweep {stage} {label}: dev nDCG@10 {({k: round(v, 4) for k, v in entry['ndcg10'].items()})}")
        summary = write(out, stage, recipe, base_overrides, teacher, scores)  # after every candidate: a long sweep can stop early
    log(f"sweep {stage}: pick {summary['pick']!r} ({summary['rule']}) -> {out / 'sweep.json'}")
    return summary


def student_shape(card: dict) -> dict:
    """What sets a student's encoding speed, from its stage-2 run card."""
    config, metrics = card["config"], card["metrics"]
    shape = {"student": config["student"], "student_layers": config["student_layers"], "projection": metrics["projection"],
             "dim": metrics["student_dim"], "parameters": metrics["student_parameters"]}
    if config.get("student_ffn"):  # a pruned feed-forward (cards before the option had none)
        shape["student_ffn"] = config["student_ffn"]
    return shape


def student_speedup(teacher: Path, folder: Path, sets: list, queries: int) -> dict:
    """Stage-1 query tower vs student, side by side on the first dev set's queries:
    {"batch1": x, "batch64": x, "latency": each tower's figures}."""
    rows = [evaluate.Row(evaluate.STAGE1, str(teacher / "query"), str(teacher / "doc")),
            evaluate.Row(evaluate.STUDENT, str(folder / "stage2" / "student"), str(teacher / "doc"))]
    latency = evaluate.measure_latency(rows, sets[0], queries)
    r = evaluate.ratios({"sets": {}, "latency": latency})
    return {"batch1": r["speedup_batch1"], "batch64": r["speedup_batch64"], "latency": latency}


def write(out: Path, stage: str, recipe: str, base_overrides: list[str], teacher: Path | None, scores: dict) -> dict:
    best, rule = (pick_stage1 if stage == "stage1" else pick_stage2)(scores)
    summary = {"stage": stage, "recipe": recipe, "base_overrides": base_overrides, "teacher": str(teacher) if teacher else None,
               "split": "dev", "candidates": scores, "pick": best, "rule": rule}
    if stage == "stage2":
        summary["speedup_by_shape"] = speedup_by_shape(scores)  # what the rule compared with 4x
    (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot(summary, out / "sweep.png")
    return summary


def plot(summary: dict, path: Path) -> None:
    from model_repository.runtime.provenance import pyplot, save_figure

    plt = pyplot()
    labels = list(summary["candidates"])
    sets = list(summary["candidates"][labels[0]]["ndcg10"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(labels), 3.6))
    width = 0.8 / len(sets)
    for n, name in enumerate(sets):
        ax.bar(np.arange(len(labels)) + n * width, [summary["candidates"][lab]["ndcg10"][name] for lab in labels], width, label=name)
    ax.set_xticks(np.arange(len(labels)) + width * (len(sets) - 1) / 2, [lab + (" (pick)" if lab == summary["pick"] else "") for lab in labels])
    ax.set_ylabel("dev nDCG@10")
    ax.set_title(f"{summary['stage']} candidates on the dev splits", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
