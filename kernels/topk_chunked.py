"""Exact top-k MIPS over an index scanned in chunks, for any k, on CuPy (GPU) or numpy (CPU).

One algorithm, written against an array module ``xp``, so that the CPU tests check the
very code the GPU runs (``xp=cupy``), ties included:

1. the first ``max(k, first_rows)`` index rows: one GEMM and a stable sort per query
   give the running top-k and its k-th score, the threshold;
2. every later chunk: one GEMM (cuBLAS through ``xp.matmul``) into a bounded (Q, C)
   score tile, then only the entries ``>=`` the row's threshold are kept (``nonzero``:
   a single pass; after the first chunks almost nothing passes);
3. kept candidates are merged with the running top-k by one segmented sort (row, score
   descending, id ascending) whenever they pile up, and at the end; the threshold
   rises with each merge. Using a stale, lower threshold only admits more candidates,
   so the answer stays exact.

How many candidates (the bound that keeps large k cheap): after ``seen`` rows the
threshold is the k-th best score of those rows, so a later row whose score is drawn
like theirs passes with probability at most ``k / seen``. Chunks therefore start small
and double (``C <= seen``, up to the tile), and candidates are merged once about ``k``
per query are pending: each chunk admits about ``k`` candidates per query at most, and
the whole scan about ``2 k (1 + ln(N / S))``, ``S`` the first block. (A fixed large first
chunk behind a 4,096-row seed let a quarter of the index through at k = 1000: 47k
candidates per query at N = 200k, against 8k now; ``tests/test_topk_chunked.py``.) The
GEMM is the same as for a full score matrix; what is added is one compare per score and
a few sorts of candidates.

No per-row full sort of N scores ever happens (CuPy's argpartition sorts fully for
k >= 1024; FAISS's GPU k-selection stops at k = 2048; neither limit applies here).
Scores are computed in float32 from the stored float16 index (upcast one chunk at a
time, TF32 off), so the result equals the float32 brute force up to summation order.

Memory: besides the index and the (Q, k) answer, every temporary (the score tile, the
float32 copy of a chunk, the pending candidates) is bounded by ``tile_bytes``, whatever
the query batch: a batch too large for a useful tile is searched in blocks of queries.
"""
from __future__ import annotations

import numpy as np

from kernels.topk import TopK


MIN_TILE_ROWS = 1024  # a query block is small enough that a tile holds at least this many index rows


class ChunkedTopK(TopK):
    def __init__(self, index, xp=np, tile_bytes: int = 256 << 20, first_rows: int = 4096, store_dtype=np.float16,
                 scales=None):
        """``scales``: per-row float32 factors of an int8 index (``index`` already quantized)."""
        super().__init__(index)
        if tile_bytes < 4 * self.dim:
            raise ValueError(f"tile_bytes must hold one float32 index row ({4 * self.dim} bytes); got {tile_bytes}")
        self.xp = xp
        self.index = xp.ascontiguousarray(xp.asarray(index, dtype=index.dtype if scales is not None else store_dtype))
        self.scales = None if scales is None else xp.asarray(scales, dtype=xp.float32)  # (N,)
        self.tile_bytes = tile_bytes
        self.first_rows = first_rows
        self.stats: dict = {}  # of the last search: candidates, merges, the largest single temporary in bytes

    def _note(self, nbytes: int) -> None:
        self.stats["max_temporary_bytes"] = max(self.stats.get("max_temporary_bytes", 0), int(nbytes))

    def _scores(self, q, start: int, stop: int):
        """(Q, stop - start) float32 scores; the chunk is upcast to float32 by itself, never the whole index."""
        rows = self.index[start:stop].astype(self.xp.float32)  # (C, D): C * D * 4 <= tile_bytes
        s = q @ rows.T  # (Q, D) @ (D, C) -> (Q, C)
        self._note(max(rows.nbytes, s.nbytes))
        return s if self.scales is None else s * self.scales[None, start:stop]

    def _argsort_desc(self, scores):
        if self.xp is np:
            return np.argsort(-scores, axis=1, kind="stable")
        return self.xp.argsort(-scores, axis=1)  # CuPy's sort is a stable radix sort

    def _merge(self, best_ids, best_scores, cand_rows, cand_ids, cand_scores, k: int):
        xp = self.xp
        q = best_ids.shape[0]
        rows = xp.concatenate([xp.repeat(xp.arange(q), k), *cand_rows])
        ids = xp.concatenate([best_ids.ravel(), *cand_ids])
        scores = xp.concatenate([best_scores.ravel(), *cand_scores])
        order = xp.lexsort(xp.stack([ids.astype(xp.float64), -scores.astype(xp.float64), rows.astype(xp.float64)]))
        rows, ids, scores = rows[order], ids[order], scores[order]
        starts = xp.searchsorted(rows, xp.arange(q))  # every row has at least its k current bests
        take = starts[:, None] + xp.arange(k)[None, :]
        self.stats["merges"] += 1
        return ids[take], scores[take]

    def search(self, queries, k: int):
        self.check(queries, k)
        xp = self.xp
        q = xp.ascontiguousarray(xp.asarray(queries, dtype=xp.float32))
        self.stats = {"candidates": 0, "merges": 0, "max_temporary_bytes": 0}
        block = max(1, self.tile_bytes // (4 * MIN_TILE_ROWS))  # queries per block
        if q.shape[0] <= block:
            return self._search(q, k)
        parts = [self._search(q[i : i + block], k) for i in range(0, q.shape[0], block)]
        return xp.concatenate([p[0] for p in parts]), xp.concatenate([p[1] for p in parts])

    def _search(self, q, k: int):
        xp = self.xp
        n_q = q.shape[0]
        tile_rows = max(1, self.tile_bytes // (4 * max(n_q, self.dim)))  # score tile and upcast chunk each fit
        first = min(self.size, max(k, min(self.first_rows, tile_rows)))
        s = self._scores(q, 0, first)
        order = self._argsort_desc(s)[:, :k]
        best_ids, best_scores = order.astype(xp.int64), xp.take_along_axis(s, order, axis=1)
        pending: tuple[list, list, list] = ([], [], [])
        pending_count = 0
        start = first
        while start < self.size:
            stop = min(self.size, start + min(tile_rows, max(start, MIN_TILE_ROWS)))  # chunks double up to the tile
            s = self._scores(q, start, stop)
            rows, cols = xp.nonzero(s >= best_scores[:, k - 1 : k])
            if rows.size:
                pending[0].append(rows)
                pending[1].append(cols.astype(xp.int64) + start)
                pending[2].append(s[rows, cols])
                pending_count += int(rows.size)
                self.stats["candidates"] += int(rows.size)
            if pending_count > n_q * k or pending_count * 20 > self.tile_bytes:  # 20 bytes a candidate
                best_ids, best_scores = self._merge(best_ids, best_scores, *pending, k)
                pending, pending_count = ([], [], []), 0
            start = stop
        if pending_count:
            best_ids, best_scores = self._merge(best_ids, best_scores, *pending, k)
        return best_ids, best_scores


def cupy_topk(index) -> ChunkedTopK:
    """The GPU implementation: the index moves to the current CUDA device once."""
    import cupy

    return ChunkedTopK(index, xp=cupy)
