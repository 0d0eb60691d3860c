"""The pipeline's steps, each one stage of a run: data, stage 1, stage 2, evaluation, the SmolLM2
conversion. ``python -m training`` and the sweep both call them."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from .config import ConfigError, RunConfig


def log(message: str) -> None:
    print(f"[training] {message}", file=sys.stderr, flush=True)


def data_step(c: RunConfig) -> Path:
    from . import debian

    d = c.data
    folder = Path(d.data_dir)
    sizes = (d.corpus_size, d.test_queries, d.faq_distractors, d.wordnet_queries)
    if d.build == "debian" and not debian.is_current(folder, *sizes):
        log(f"building the Debian demo data into {folder}")
        m = debian.build_all(folder, Path("artifacts/cache"), *sizes, accept_unpinned=d.accept_unpinned)
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
