"""Stage 1: a query tower and a document tower, untied copies of one checkpoint, trained with InfoNCE.

Launch with ``torchrun --nproc-per-node N -m training stage1 ...`` on several GPUs or
nodes; the same command without torchrun runs one process (the CPU included). The
in-batch negatives of each query are every document of the global micro-batch, on
every rank (``losses.gather_with_grad``); with ``hard_negatives = h`` each query also
brings h documents mined with the current towers.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .common import Dist, local_rows, lr_lambda, plot_curves, setup_distributed, started_now, wrap_ddp, write_run_card
from .config import Stage1Config
from .data import DataError, Pair, group_batches, length_windows, read_pairs
from .losses import info_nce, matryoshka, world_size
from .tower_format import TowerSpec
from .towers import Tower, apply_lora


class DualTowers(torch.nn.Module):
    def __init__(self, query: Tower, doc: Tower):
        super().__init__()
        self.query, self.doc = query, doc

    def forward(self, q: dict, d: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.query(**q), self.doc(**d)


def load_towers(c: Stage1Config) -> DualTowers:
    towers = []
    for max_tokens, prefix in ((c.max_query_tokens, c.query_prefix), (c.max_doc_tokens, c.doc_prefix)):
        spec = TowerSpec(pooling=c.pooling, max_tokens=max_tokens, prefix=prefix)
        tower = Tower.load(c.model, "stage1.model", spec=spec, kernel=c.pool_kernel)
        if c.lora_r:
            apply_lora(tower, c.lora_r, c.lora_alpha, c.lora_dropout)
        if c.gradient_checkpointing:
            tower.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        towers.append(tower)
    return DualTowers(*towers)


def mine_hard_negatives(towers: DualTowers, pairs: list[Pair], count: int, batch_size: int = 64) -> list[list[str]]:
    """For each pair, the ``count`` best-scoring documents of the pool that are not of its group."""
    docs = sorted({(p.group, p.positive) for p in pairs})
    doc_emb = towers.doc.encode([d for _, d in docs], batch_size, desc="mining: documents")
    q_emb = towers.query.encode([p.query for p in pairs], batch_size, desc="mining: queries")
    groups = np.array([g for g, _ in docs])
    mined = []
    for row, pair in enumerate(pairs):
        ranked = np.argsort(-(doc_emb @ q_emb[row]), kind="stable")
        picked = [docs[i][1] for i in ranked[: count + 64] if groups[i] != pair.group][:count]
        if len(picked) < count:
            raise DataError(f"stage1.hard_negatives: only {len(picked)} documents outside the group of pair {row}; "
                            f"need {count} (raise stage1.mine_pool)")
        mined.append(picked)
    return mined


def step_inputs(towers: DualTowers, pairs: list[Pair], rows: list[int], negatives: list[list[str]] | None, h: int, device):
    """Tokenized queries and documents [positives; negatives] for the given pair rows."""
    queries = [pairs[i].query for i in rows]
    docs = [pairs[i].positive for i in rows]
    if h:
        for i in rows:
            supplied = list(pairs[i].negatives) + (negatives[i] if negatives else [])
            docs.extend(supplied[:h])
    q = {k: v.to(device) for k, v in towers.query.tokenize(queries).items()}
    d = {k: v.to(device) for k, v in towers.doc.tokenize(docs).items()}
    return q, d


def compute_loss(model, towers: DualTowers, pairs, rows, negatives, c: Stage1Config, ctx: Dist,
                 doc_tokens: np.ndarray | None = None) -> torch.Tensor:
    """The step's loss; ``doc_tokens`` (computed, real), if given, counts the documents' padding."""
    q, d = step_inputs(towers, pairs, rows, negatives, c.hard_negatives, ctx.device)
    if doc_tokens is not None:
        doc_tokens += (d["attention_mask"].numel(), int(d["attention_mask"].sum()))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (c.bf16 and ctx.device.type == "cuda") else contextlib.nullcontext()
    with autocast:
        q_emb, d_emb = model(q, d)
    return matryoshka(info_nce, q_emb, d_emb, c.matryoshka, c.temperature)


class L2SP:
    """``weight * sum((w - w_start)^2)`` over the trainable weights (Li et al., 2018, "L2-SP"): the
    towers may move as far as the contrastive loss pays for, and no further, so that what
    the start knew out of domain is not traded away for in-domain gains."""

    def __init__(self, params: list[torch.nn.Parameter], weight: float):
        self.params, self.weight = params, weight
        self.start = [p.detach().clone() for p in params] if weight else []

    def __call__(self) -> torch.Tensor:
        if not self.weight:
            return torch.zeros(())
        return self.weight * sum(((p - p0) ** 2).sum() for p, p0 in zip(self.params, self.start))


def train(c: Stage1Config, train_file: Path, out: Path) -> dict:
    started = started_now()
    ctx = setup_distributed()
    if c.bf16 and ctx.device.type != "cuda":
        raise ValueError("stage1.bf16 needs a CUDA device; set bf16 = false on the CPU")
    torch.manual_seed(c.seed)
    random.seed(c.seed)
    pairs = read_pairs(train_file)
    if c.hard_negatives:
        key = lambda p: hashlib.sha256(f"{c.seed}|{p.query}|{p.positive}".encode()).hexdigest()
        pairs = sorted(pairs, key=key)[: c.mine_pool]  # the same pool on every rank
    towers = load_towers(c).to(ctx.device)
    model = wrap_ddp(towers, ctx)
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = L2SP(params, c.l2sp)
    optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=0.0 if c.l2sp else c.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(c.warmup_steps, c.steps))
    batches = length_windows(group_batches(pairs, c.batch_size * ctx.world, c.seed), [len(p.positive) for p in pairs],
                             [p.group for p in pairs], c.length_window, c.seed)
    negatives = None
    losses: list[float] = []
    penalties: list[float] = []
    doc_tokens = np.zeros(2, dtype=np.int64)  # computed (padded) and real document tokens, this rank
    towers.train()
    bar = tqdm(range(c.steps), desc="stage 1", unit="step", disable=not ctx.main, mininterval=2.0)
    for step in bar:
        if c.hard_negatives and (negatives is None or (c.mine_every and step % c.mine_every == 0)):
            holder = [mine_hard_negatives(towers, pairs, c.hard_negatives) if ctx.main else None]
            if ctx.world > 1:
                dist.broadcast_object_list(holder, src=0)
            negatives = holder[0]
            towers.train()
        total = 0.0
        for micro in range(c.grad_accum):
            rows = local_rows(next(batches), ctx)
            sync = model.no_sync() if (ctx.world > 1 and micro < c.grad_accum - 1) else contextlib.nullcontext()
            with sync:
                loss = compute_loss(model, towers, pairs, rows, negatives, c, ctx, doc_tokens) / c.grad_accum
                penalty = anchor() / c.grad_accum  # the same on every rank: DDP's average keeps it
                (loss * world_size() + penalty).backward()  # DDP averages over ranks; see losses.gather_with_grad
            total += float(loss.detach())
        penalties.append(float(penalty.detach()) * c.grad_accum)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)  # the global-batch loss, the same on every rank
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    metrics = {"loss_first": losses[0], "loss_last": losses[-1],
               "loss_first10_mean": float(np.mean(losses[:10])), "loss_last10_mean": float(np.mean(losses[-10:])),
               "steps": c.steps, "global_batch": c.batch_size * ctx.world * c.grad_accum, "processes": ctx.world,
               "l2sp_last": penalties[-1], "doc_padded_tokens_per_real_token": float(doc_tokens[0] / doc_tokens[1])}
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        towers.query.save(out / "query")
        towers.doc.save(out / "doc")
        (out / "losses.json").write_text(json.dumps(losses) + "\n", encoding="utf-8")
        curves = {"InfoNCE loss": losses} | ({"L2-SP penalty": penalties} if c.l2sp else {})
        plot_curves(out / "loss.png", f"stage 1: InfoNCE (global batch {metrics['global_batch']}, l2sp {c.l2sp:g})", curves)
        write_run_card(out, "stage1", c, metrics, {"train": train_file}, started)
    if dist.is_initialized():
        dist.barrier()
    return metrics
