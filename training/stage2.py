"""Stage 2: distil the frozen stage-1 query tower into a small student encoder.

The student learns to reproduce the teacher's query embeddings on query text alone
(``w_mse * MSE + w_cos * (1 - cos)``). When the widths differ a linear projection is
added and saved with the student. With ``w_rank`` it also learns the teacher's ranking of
a pool (``losses.score_distill``): training documents embedded by the stage-1 doc tower, or
the teacher's own embeddings of distillation text (``rank_pool``).
The document tower and its index are untouched:
the student's queries search the stage-1 doc tower's index.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import random
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .common import Started, local_rows, lr_lambda, plot_curves, setup_distributed, started_now, wrap_ddp, write_run_card
from .config import Stage2Config
from .corpus import read_jsonl
from .data import read_pairs
from .losses import distill_loss, matryoshka, score_distill
from .tower_format import SPEC_FILE, TowerSpec
from .towers import Tower, TowerError, cached_embeddings, prune_ffn


def distillation_queries(train_file: Path, limit: int, seed: int, queries_file: Path | None = None,
                         drop: Sequence[str] = ()) -> tuple[list[str], dict[str, int]]:
    """-> (texts, count per source). Without ``queries_file``: the training pairs' queries.

    With it (JSONL ``{"query", "source"}``): the budget is shared by water-filling, from
    the smallest source up. Each source takes at most an equal share of what is left
    (in a seeded random order), so a small out-of-domain source is taken whole and
    never crowded out by a big one, and large sources split the rest evenly. The
    sources named in ``drop`` are left out first (each must be in the file).
    """
    if queries_file is None:
        by_source = {"training pairs": sorted({p.query for p in read_pairs(train_file)})}
    else:
        by_source = {}
        for row in read_jsonl(queries_file, {"query": str, "source": str}):
            by_source.setdefault(row["source"], []).append(row["query"])
    if unknown := [s for s in drop if s not in by_source]:
        raise TowerError(f"stage2.drop_sources names {unknown}, which the distillation text does not have; "
                         f"its sources: {sorted(by_source)}")
    by_source = {s: rows for s, rows in by_source.items() if s not in drop}
    if not by_source:
        raise TowerError(f"stage2.drop_sources {list(drop)} leaves no distillation text")
    rng = random.Random(seed)
    texts: list[str] = []
    counts: dict[str, int] = {}
    order = sorted(by_source, key=lambda s: (len(set(by_source[s])), s))
    for n, source in enumerate(order):
        rows = sorted(set(by_source[source]))
        rng.shuffle(rows)
        take = rows[: max(0, limit - len(texts)) // (len(order) - n)]
        texts += take
        counts[source] = len(take)
    rng.shuffle(texts)
    return texts, counts


def rank_pool(c: Stage2Config, teacher_dir: Path, train_file: Path, cache: Path | None,
              targets: torch.Tensor | None = None) -> torch.Tensor:
    """The score-distillation pool, (n, D) unit rows. ``rank_pool = "docs"``: ``rank_docs`` training
    positives (seeded draw) embedded by the stage-1 doc tower beside the query tower (``<stage1>/doc``).
    ``"queries"``: ``rank_docs`` of the teacher's own embeddings of the distillation text (``targets``),
    so that the pool spans every source of the mix, out-of-domain words included."""
    if c.rank_pool == "queries":
        rows = torch.from_numpy(np.random.default_rng(c.seed + 1).permutation(len(targets))[: c.rank_docs])
        return targets[rows]
    doc_dir = teacher_dir.parent / "doc"
    if not (doc_dir / SPEC_FILE).exists():
        raise TowerError(f"stage2.w_rank = {c.w_rank} needs the stage-1 doc tower beside the teacher; {doc_dir} is not a tower folder")
    docs = sorted({p.positive for p in read_pairs(train_file)})
    random.Random(c.seed).shuffle(docs)
    docs = docs[: c.rank_docs]
    tower = Tower.load(doc_dir, "stage2.rank_docs")
    emb = cached_embeddings(cache, doc_dir, "\x00".join(docs).encode(),
                            functools.partial(tower.encode, docs, 64, desc="stage-1 doc tower: ranking pool"))
    return torch.from_numpy(emb)


def batches(lengths: Sequence[int], batch_size: int, window: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of row indices into texts of ``lengths``, each row at most once a batch.

    ``window`` 1: every batch is a fresh random draw. ``window`` W: W batches are drawn at once
    (without replacement), sorted by length, cut into W batches of similar lengths and yielded in
    random order. Each text is as likely to be drawn as before; a batch is padded to its own
    longest text, so far fewer padding tokens are computed (random batches of the cpu-small mix
    pad 2.56x the real tokens, windows of 8 batches 1.50x, as measured in training)."""
    lengths = np.asarray(lengths)
    size = min(batch_size, len(lengths))
    draw = min(size * window, len(lengths)) // size * size
    while True:
        if window == 1:
            yield rng.choice(len(lengths), size=size, replace=False)
            continue
        rows = rng.choice(len(lengths), size=draw, replace=False)
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        cuts = rows.reshape(-1, size)
        yield from cuts[rng.permutation(len(cuts))]


def load_student(c: Stage2Config, teacher: Tower, teacher_dir: Path | None = None, texts: list[str] = ()) -> Tower:
    """``student = "teacher"``: start from the teacher's own weights (truncated by ``student_layers``).
    ``student_ffn`` then keeps that many feed-forward neurons a layer, the most important on ``texts``."""
    spec = TowerSpec(pooling=teacher.spec.pooling if c.student == "teacher" else "auto", max_tokens=c.max_query_tokens)
    source = teacher_dir if c.student == "teacher" else c.student
    if source is None:
        raise TowerError("stage2.student is 'teacher' but no teacher folder was given")
    student = Tower.load(source, "stage2.student", spec=spec, kernel=c.pool_kernel, layers=c.student_layers)
    if c.student_ffn:
        prune_ffn(student, c.student_ffn, list(texts)[: c.prune_texts], "stage2.student_ffn")
    if student.dim != teacher.dim:
        if c.projection == "none":
            raise TowerError(f"stage2.projection is 'none' but the student's dimension {student.dim} differs from the "
                             f"teacher's {teacher.dim}; set projection = 'auto' to add a linear projection")
        student.add_projection(teacher.dim)
    return student


@dataclasses.dataclass
class Distilled:
    """A trained student still in memory, with what its run card needs."""

    student: Tower
    metrics: dict
    curves: dict[str, list[float]]
    started: Started
    main: bool = True  # rank 0 (or a single process): the one that writes


def train(c: Stage2Config, teacher_dir: Path, train_file: Path, out: Path, cache: Path | None = None) -> dict:
    """Distil, then write the student, its loss curves and its run card under ``out``; -> the metrics."""
    return save(distill(c, teacher_dir, train_file, cache), c, teacher_dir, train_file, out)


def distill(c: Stage2Config, teacher_dir: Path, train_file: Path, cache: Path | None = None) -> Distilled:
    started = started_now()
    ctx = setup_distributed()
    torch.manual_seed(c.seed)
    teacher = Tower.load(teacher_dir, "stage2.teacher").to(ctx.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    queries, sources = distillation_queries(train_file, c.max_queries, c.seed, Path(c.queries) if c.queries else None,
                                            c.drop_sources)
    targets = torch.from_numpy(cached_embeddings(cache, teacher_dir, "\x00".join(queries).encode(),
                                                 functools.partial(teacher.encode, queries, 128, desc="teacher: query embeddings")))
    pool = rank_pool(c, teacher_dir, train_file, cache, targets).to(ctx.device) if c.w_rank else None
    student = load_student(c, teacher, teacher_dir, queries).to(ctx.device)
    student.train()
    if c.freeze_embeddings:
        student.model.get_input_embeddings().weight.requires_grad_(False)
    # fused: one kernel for the whole update (51 -> 8 ms a step for the 1-layer MiniLM student on 2 CPU cores)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=c.lr, weight_decay=0.01, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(c.warmup_steps, c.steps))
    # Under torchrun: every rank draws the same batches of batch_size x processes and trains on its share;
    # DDP averages the gradients, so N processes take the step one process takes on the whole batch.
    model = wrap_ddp(student, ctx)
    draws = batches([len(q) for q in queries], c.batch_size * ctx.world, c.length_window, np.random.default_rng(c.seed))
    curves: dict[str, list[float]] = {"loss": [], "mse": [], "1 - cos": []} | ({"rank KL": []} if c.w_rank else {})
    bar = tqdm(range(c.steps), desc="stage 2", unit="step", mininterval=2.0)
    tokens = np.zeros(2, dtype=np.int64)  # computed (padded) and real tokens
    computed_rows = 0  # by this process
    for _, drawn in zip(bar, draws):
        rows = local_rows(drawn, ctx)
        batch = {k: v.to(ctx.device) for k, v in student.tokenize([queries[i] for i in rows]).items()}
        tokens += (batch["attention_mask"].numel(), int(batch["attention_mask"].sum()))
        got, want = model(**batch), targets[rows].to(ctx.device)
        loss, parts = matryoshka(distill_loss, got, want, c.matryoshka, c.w_mse, c.w_cos)
        if pool is not None:
            kl = score_distill(got, want, pool, c.rank_temperature)
            parts["rank KL"] = float(kl.detach())
            loss = loss + c.w_rank * kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        computed_rows += len(rows)
        logged = {"loss": float(loss.detach()), "mse": parts["mse"], "1 - cos": parts["cos"], "rank KL": parts.get("rank KL")}
        logged = {name: logged[name] for name in curves}
        if dist.is_initialized():  # the curves show the whole batch's losses, as one process would: one all-reduce a step
            logged = dict(zip(logged, all_ranks_mean(list(logged.values()))))
        for name, value in logged.items():
            curves[name].append(value)
        bar.set_postfix(loss=f"{curves['loss'][-1]:.4f}", cos=f"{1 - curves['1 - cos'][-1]:.4f}")
    metrics = {"loss_first": curves["loss"][0], "loss_last": curves["loss"][-1],
               "mse_first10_mean": float(np.mean(curves["mse"][:10])), "mse_last10_mean": float(np.mean(curves["mse"][-10:])),
               "cos_last10_mean": float(1 - np.mean(curves["1 - cos"][-10:])),
               **({"rank_kl_first10_mean": float(np.mean(curves["rank KL"][:10])),
                   "rank_kl_last10_mean": float(np.mean(curves["rank KL"][-10:])), "rank_pool": len(pool)} if pool is not None else {}),
               "distillation_queries": len(queries), "distillation_sources": sources, "student_dim": student.dim,
               "processes": ctx.world, "rows_per_process_step": computed_rows / c.steps,
               "padded_tokens_per_real_token": float(tokens[0] / tokens[1]),
               "projection": list(student.spec.projection) if student.spec.projection else None,
               "student_parameters": sum(p.numel() for p in student.parameters()),
               "trained_parameters": sum(p.numel() for p in student.parameters() if p.requires_grad),
               "student_ffn": int(getattr(student.model.config, "intermediate_size", 0) or 0),
               "teacher_parameters": sum(p.numel() for p in teacher.parameters())}
    return Distilled(student, metrics, curves, started, ctx.main)


def all_ranks_mean(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def save(run: Distilled, c: Stage2Config, teacher_dir: Path, train_file: Path, out: Path) -> dict:
    """Under torchrun every rank holds the same student; rank 0 alone writes it, and no rank returns
    before it has (as stage 1 ends: a rank that leaves early tears its gloo threads down under the others)."""
    if run.main:
        _write(run, c, teacher_dir, train_file, out)
    if dist.is_initialized():
        dist.barrier()
    return run.metrics


def _write(run: Distilled, c: Stage2Config, teacher_dir: Path, train_file: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    run.student.save(out / "student")
    (out / "losses.json").write_text(json.dumps(run.curves) + "\n", encoding="utf-8")
    plot_curves(out / "loss.png", f"stage 2: distillation (w_mse={c.w_mse}, w_cos={c.w_cos}, w_rank={c.w_rank})", run.curves)
    inputs = {"train": train_file, "teacher_spec": teacher_dir / SPEC_FILE} | ({"queries": Path(c.queries)} if c.queries else {})
    write_run_card(out, "stage2", c, run.metrics, inputs, run.started,
                   {"teacher": str(teacher_dir)})
