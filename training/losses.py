"""Losses, and the cross-device gather that lets in-batch negatives span every rank.

``info_nce``: each query of the global batch against every document of the global
batch (all ranks' positives and hard negatives); its own positive is the target.

``distill_loss``: ``w_mse * MSE + w_cos * (1 - cos)`` between student and teacher
embeddings. MSE is torch's mean over elements; on unit vectors it equals
``2 (1 - cos) / D``, so with normalised towers it acts as a rescaled cosine term.
The weights stay separate, as the method specifies.

``score_distill``: KL(teacher || student) between each query's softmax over its scores
against a fixed pool of document embeddings (the stage-1 doc tower's): the student is
taught the teacher's ranking of documents, which is what retrieval uses, and not only
the teacher's vector (the relevance-score distillation of TinyBERT/MarginMSE lineage,
listwise over the pool).

``matryoshka``: the same loss summed over nested prefixes of the embedding (the first
d dimensions, renormalised), full width included (Kusupati et al., 2022), so that an
index truncated to d dimensions (``kernels.compressed``, ``matryoshka:<d>``) keeps
its quality.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(n, D) on each rank -> (world * n, D) in rank order; this rank's rows keep their gradient.

    The other ranks' rows arrive without gradient. Every rank then computes the same
    global loss, back-propagates through its own rows only, and the caller scales the
    loss by the world size, because DDP averages gradients over ranks: the sum over
    ranks of each rank's own-row gradient is the global gradient (the scheme of
    Tevatron and sentence-transformers' gather). A collective inside backward (an
    autograd all_gather) would interleave with DDP's own gradient all-reduces; on gloo
    that gave wrong gradients here. Identity with one process.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def info_nce(queries: torch.Tensor, docs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Global-batch InfoNCE, the same value on every rank.

    Local (b, D) queries and local (b * (1 + h), D) docs laid out [positives; negatives];
    every rank holds the same b and h. Back-propagate ``loss * world_size()`` under DDP
    (see ``gather_with_grad``).
    """
    b, per_rank = queries.shape[0], docs.shape[0]
    all_q, all_d = gather_with_grad(queries), gather_with_grad(docs)
    rank_of = torch.arange(all_q.shape[0], device=queries.device) // b
    targets = rank_of * per_rank + torch.arange(all_q.shape[0], device=queries.device) % b
    logits = all_q.float() @ all_d.float().T / temperature  # (world * b, world * b * (1 + h))
    return F.cross_entropy(logits, targets)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, w_mse: float, w_cos: float) -> tuple[torch.Tensor, dict]:
    mse = F.mse_loss(student, teacher)
    cos = (1 - F.cosine_similarity(student, teacher, dim=1)).mean()
    return w_mse * mse + w_cos * cos, {"mse": float(mse.detach()), "cos": float(cos.detach())}


def score_distill(student: torch.Tensor, teacher: torch.Tensor, docs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over queries of KL(softmax(teacher @ docs.T / t) || softmax(student @ docs.T / t))."""
    target = F.log_softmax(teacher.float() @ docs.float().T / temperature, dim=1)
    got = F.log_softmax(student.float() @ docs.float().T / temperature, dim=1)
    return F.kl_div(got, target, log_target=True, reduction="batchmean")


def prefix(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The first ``dim`` dimensions, renormalised (the whole vector when dim >= its width)."""
    return x if dim >= x.shape[-1] else F.normalize(x[..., :dim], dim=-1)


def matryoshka(loss_fn, a: torch.Tensor, b: torch.Tensor, dims: list[int], *args):
    """``loss_fn(a, b, *args)`` at full width plus at every prefix in ``dims``, averaged.

    ``loss_fn`` returns a tensor or (tensor, parts); the parts returned are the full width's.
    """
    widths = [a.shape[-1]] + sorted({d for d in dims if d < a.shape[-1]}, reverse=True)
    outs = [loss_fn(prefix(a, d), prefix(b, d), *args) for d in widths]
    if isinstance(outs[0], tuple):
        return sum(o[0] for o in outs) / len(outs), outs[0][1]
    return sum(outs) / len(outs)
