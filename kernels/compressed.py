"""Compressed indexes with exact rescoring: int8 or Matryoshka-truncated vectors find candidates,
the float16 vectors rank them.

- ``int8``: each row scaled by its own max |x| / 127 (4x smaller than float32, 2x than
  float16). Scores are the int8 dot product times the row's scale.
- ``matryoshka:<d>``: the first d dimensions, renormalised. Only models trained with
  a Matryoshka loss keep their quality under truncation; the recall cost says how much
  a given model loses.

``RescoringTopK`` asks the compressed search for ``max(k, rescore)`` candidates and
re-ranks them with the float16 vectors (float32 arithmetic, ties to the lower id), so
every returned score is exact; only a document the compressed search missed is lost.
The recall cost is measured by ``python -m benchmarks compression``.
"""
from __future__ import annotations

import numpy as np

from kernels.topk import TopK, rank_rows
from kernels.topk_chunked import ChunkedTopK

KINDS = ("none", "int8", "matryoshka")


def parse_compression(text: str) -> tuple[str, int]:
    """'none' | 'int8' | 'matryoshka:<dim>' -> (kind, dim or 0)."""
    kind, _, dim = text.partition(":")
    if kind not in KINDS or (kind == "matryoshka") != bool(dim) or (dim and not dim.isdigit()):
        raise ValueError(f"index compression must be 'none', 'int8' or 'matryoshka:<dim>'; got {text!r}")
    return kind, int(dim or 0)


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float -> int8 (N, D), float32 scales (N,) with x ~= q * scale[:, None]."""
    x = x.astype(np.float32)
    scale = np.abs(x).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8), scale.astype(np.float32)


def truncate(x: np.ndarray, dim: int) -> np.ndarray:
    """First ``dim`` dimensions, renormalised to unit length."""
    if not 1 <= dim <= x.shape[1]:
        raise ValueError(f"matryoshka dim must be in [1, {x.shape[1]}]; got {dim}")
    t = x[:, :dim].astype(np.float32)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)


class RescoringTopK(TopK):
    def __init__(self, full, kind: str, compressed: np.ndarray, scales: np.ndarray | None = None,
                 rescore: int = 200, xp=np):
        """``full``: the float16 vectors, an array or any row store indexed by an id array
        (the runtime's memory-mapped shards): only the candidates' rows are ever read."""
        super().__init__(full)
        self.full = np.ascontiguousarray(full, dtype=np.float16) if isinstance(full, np.ndarray) else full  # host side
        self.kind, self.rescore = kind, rescore
        self.approx_dim = compressed.shape[1]
        self.approx = ChunkedTopK(compressed, xp=xp, scales=scales)  # scales: int8 only
        self.xp = xp

    def _approx_queries(self, queries: np.ndarray) -> np.ndarray:
        return truncate(queries, self.approx_dim) if self.kind == "matryoshka" else queries

    def search(self, queries, k: int):
        self.check(queries, k)
        q = np.asarray(queries if self.xp is np else self.xp.asnumpy(queries), dtype=np.float32)
        kc = min(self.size, max(k, self.rescore))
        cand, _ = self.approx.search(self.xp.asarray(self._approx_queries(q)), kc)
        cand = np.asarray(cand if self.xp is np else self.xp.asnumpy(cand))  # (Q, kc)
        exact = np.einsum("qcd,qd->qc", self.full[cand].astype(np.float32), q)  # (Q, kc)
        return rank_rows(cand, exact, k)
