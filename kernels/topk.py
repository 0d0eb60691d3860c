"""Exact top-k maximum inner product search (MIPS).

``TopK`` is the interface the ``mips_topk`` model serves through: built once from the
index at model load, then asked for the k best documents of a batch of queries.
``NumpyTopK`` serves the CPU and is the reference; ``kernels/topk_chunked.py``
implements the same interface chunk by chunk, on numpy or on the GPU through CuPy.

Results are sorted best first; equal scores are broken deterministically, lower id
first.
"""
from __future__ import annotations

import abc

import numpy as np


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}]; got {k}")


def mips_topk_reference(queries: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: full scores, full stable sort. (Q, D), (N, D) -> ids (Q, k) int64, scores (Q, k) float32."""
    _check_k(k, index.shape[0])
    scores = queries.astype(np.float32) @ index.astype(np.float32).T  # (Q, D) @ (D, N) -> (Q, N)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # stable: lower id wins a tie
    return order.astype(np.int64), np.take_along_axis(scores, order, axis=1)


class TopK(abc.ABC):
    """Exact top-k over a fixed index of N unit vectors of dimension D."""

    def __init__(self, index: np.ndarray):
        if index.ndim != 2 or index.shape[0] == 0:
            raise ValueError(f"index must be a non-empty (N, D) matrix; got shape {index.shape}")
        self.size, self.dim = index.shape

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) queries -> (ids (Q, k) int64, scores (Q, k) float32), best first."""

    def check(self, queries: np.ndarray, k: int) -> None:
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, {self.dim}); got shape {queries.shape}")
        _check_k(k, self.size)


class NumpyTopK(TopK):
    """CPU: one GEMM for the batch, argpartition, then an exact sort of the k survivors.

    Scores come from the faster BLAS for the batch's shape (``benchmarks topk-cpu``
    measures both side by side): one query goes through numpy's GEMV (OpenBLAS), a
    batch of two or more through torch's GEMM (MKL) on the same memory, when torch is
    installed. OpenBLAS's SGEMM with a handful of columns is the slow case: on a
    117,659 x 384 index, one core, 2 queries took 66 ms against 17 ms for one, so a
    batch cost more than the same queries one at a time; MKL scores 2 to 4 queries in
    about one query's time (~21 ms), since the scan of the index is shared. ``gemm``:
    "auto" (as above) or "numpy" (OpenBLAS for every batch).
    """

    GEMMS = ("auto", "numpy")

    def __init__(self, index: np.ndarray, gemm: str = "auto"):
        super().__init__(index)
        if gemm not in self.GEMMS:
            raise ValueError(f"gemm must be one of {list(self.GEMMS)}; got {gemm!r}")
        self.index = np.ascontiguousarray(index, dtype=np.float32)
        self.torch = None
        if gemm == "auto":
            try:
                import torch

                self.torch, self.index_t = torch, torch.from_numpy(self.index)  # shares the memory
            except ImportError:  # numpy alone: correct, slower for batches
                pass
        self.gemm = "numpy+torch" if self.torch else "numpy"

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """(Q, D) -> (Q, N) float32 inner products."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.torch is None or queries.shape[0] == 1:
            return queries @ self.index.T
        # (N, D) @ (D, Q): the orientation MKL scores fastest for a few columns; transposing back costs Q x N floats.
        scores = self.torch.mm(self.index_t, self.torch.from_numpy(queries).T).numpy()
        return np.ascontiguousarray(scores.T)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.check(queries, k)
        scores = self.scores(queries)  # (Q, N)
        if k < self.size:
            # Candidates: the k best, plus every entry tied with the k-th best, so that
            # the lower-id tie-break below sees all of them.
            kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # (Q, 1)
            rows, cols = np.nonzero(scores >= kth)
        else:
            rows, cols = np.indices(scores.shape).reshape(2, -1)
        order = np.lexsort((cols, -scores[rows, cols], rows))  # by row, score desc, id asc
        rows, cols = rows[order], cols[order]
        starts = np.searchsorted(rows, np.arange(scores.shape[0]))
        take = starts[:, None] + np.arange(k)[None, :]  # (Q, k)
        ids = cols[take].astype(np.int64)
        return ids, np.take_along_axis(scores, ids, axis=1)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists into the global top-k.

    ``parts``: one (ids (Q, k_i), scores (Q, k_i)) per shard, ids already global (shard
    offset added), each list sorted best first. Equal scores go to the lower id, as in
    a search over the whole index, so sharding never changes an answer.
    """
    if not parts:
        raise ValueError("merge_topk needs at least one shard's results")
    ids = np.concatenate([p[0] for p in parts], axis=1)  # (Q, sum k_i)
    scores = np.concatenate([p[1] for p in parts], axis=1).astype(np.float32)
    if not 1 <= k <= ids.shape[1]:
        raise ValueError(f"k must be in [1, {ids.shape[1]}]; got {k}")
    return rank_rows(ids, scores, k)


def rank_rows(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (score descending, then id ascending) of (Q, C) candidates."""
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(ids, order, axis=1).astype(np.int64), np.take_along_axis(scores, order, axis=1)
